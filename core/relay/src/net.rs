//! Networks in CIDR notation: the allow-list of client networks
//! ([`crate::RelayConfig::allowed_networks`]).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address and a prefix length (`10.0.0.0/8`, `2001:db8::/32`;
/// a bare address is the network of that address alone). An IPv4-mapped IPv6 address
/// (`::ffff:10.1.2.3`) is matched as the IPv4 address it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetworkError {
    /// The part before the `/` is no IP address.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("{0:?} is not a prefix length for this address (0-32 for IPv4, 0-128 for IPv6)")]
    Prefix(String),
    /// Bits are set after the prefix (`10.1.0.0/8`): probably a typo.
    #[error("{0} has bits set after its prefix length (did you mean {1}?)")]
    HostBits(String, String),
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        (all << (width - prefix)) & all
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl IpNetwork {
    /// The network of `addr` with the first `prefix` bits significant; `None` if `prefix` is
    /// too long for the address family or bits are set after it.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (value, width) = bits(addr);
        if prefix > width || value & !mask(prefix, width) != 0 {
            return None;
        }
        Some(Self { addr, prefix })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let (net, width) = bits(self.addr);
        let (value, ip_width) = bits(ip);
        width == ip_width && value & mask(self.prefix, width) == net
    }

    /// Whether `ip` is in one of `networks`; an empty list allows every address.
    pub fn allows(networks: &[IpNetwork], ip: IpAddr) -> bool {
        networks.is_empty() || networks.iter().any(|n| n.contains(ip))
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNetwork {
    type Err = IpNetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetworkError::Address(addr.to_string()))?;
        let width = bits(addr).1;
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= width)
                .ok_or_else(|| IpNetworkError::Prefix(p.to_string()))?,
        };
        Self::new(addr, prefix).ok_or_else(|| {
            let (value, width) = bits(addr);
            let net = value & mask(prefix, width);
            let fixed = match addr {
                IpAddr::V4(_) => IpAddr::V4((u32::try_from(net).unwrap_or(0)).into()),
                IpAddr::V6(_) => IpAddr::V6(net.into()),
            };
            IpNetworkError::HostBits(s.to_string(), format!("{fixed}/{prefix}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let ten = net("10.0.0.0/8");
        assert!(ten.contains("10.200.3.4".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        assert!(ten.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ten.contains("::1".parse().unwrap()));
        let doc = net("2001:db8::/32");
        assert!(doc.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!doc.contains("2001:db9::5".parse().unwrap()));
        assert!(!doc.contains("10.0.0.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        assert!(net("::/0").contains("2001:db8::1".parse().unwrap()));
        assert!(net("127.0.0.1").contains("127.0.0.1".parse().unwrap()));
        assert!(!net("127.0.0.1").contains("127.0.0.2".parse().unwrap()));
        assert!(net("::1").contains("::1".parse().unwrap()));
        assert_eq!(net("192.168.0.0/16").to_string(), "192.168.0.0/16");
        assert!(IpNetwork::allows(&[], "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bad_networks_are_refused_with_the_reason() {
        assert_eq!(
            "10.0.0/8".parse::<IpNetwork>(),
            Err(IpNetworkError::Address("10.0.0".into()))
        );
        assert_eq!(
            "10.0.0.0/33".parse::<IpNetwork>(),
            Err(IpNetworkError::Prefix("33".into()))
        );
        assert_eq!(
            "::/129".parse::<IpNetwork>(),
            Err(IpNetworkError::Prefix("129".into()))
        );
        assert_eq!(
            "10.0.0.0/x".parse::<IpNetwork>(),
            Err(IpNetworkError::Prefix("x".into()))
        );
        assert_eq!(
            "10.1.0.0/8".parse::<IpNetwork>(),
            Err(IpNetworkError::HostBits(
                "10.1.0.0/8".into(),
                "10.0.0.0/8".into()
            ))
        );
    }
}
