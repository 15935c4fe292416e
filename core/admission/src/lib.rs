//! Admission of connections whose peer is not authenticated yet: how many may do handshake
//! work at once ([`Places`]) and how fast one source may start new ones ([`RateLimiter`]).
//!
//! An accepting phone and a relay both do TLS and handshake work for a connection before they
//! know whose it is. Both bound that work the same way, with this crate:
//!
//! - **Places**: at most a total number of such connections at once, and a share of them per
//!   source. A newcomer to a full table takes back the oldest place of the biggest holder; a
//!   source already at its share is refused (it would only take back its own place).
//! - **Rate**: a token bucket per source, so a source cannot open and abandon connections as
//!   fast as it likes within its share, each costing a TLS handshake.
//!
//! # Sources
//!
//! A source is an IPv4 address (an IPv4-mapped IPv6 address counts as that IPv4 address), or
//! an IPv6 prefix counted at three levels: a /64 (one host usually holds a whole /64) has the
//! per-source allowance, its /56 twice it and its /48 three times it, so one site with a /48
//! cannot pose as 65,536 sources. The caller must have validated the address first (QUIC's
//! Retry round trip), so that a source cannot be forged.
//!
//! Both parts are driven by the caller: [`RateLimiter`] does no IO and reads no clock (the
//! caller passes `now` in); [`Places`] is shared between connection tasks and only signals,
//! through [`Place::taken_back`], that a connection must be closed.

#![forbid(unsafe_code)]

mod places;
mod rate;

use std::net::IpAddr;

pub use places::{Place, Places, SourceFull, Taking};
pub use rate::{RateConfig, RateLimited, RateLimiter};

/// A source at one level: a prefix and its length (the same bits at /56 and /48 are two
/// different sources).
pub(crate) type Source = (IpAddr, u8);

/// The allowance of each level, as a multiple of the per-source allowance: /64, /56, /48.
pub(crate) const LEVEL_SHARE: [usize; 3] = [1, 2, 3];

/// The sources a connection from `addr` is counted under, most specific first, and how many
/// of them there are: the address itself for IPv4, the /64, /56 and /48 for IPv6.
pub(crate) fn sources_of(addr: IpAddr) -> ([Source; 3], usize) {
    match addr {
        IpAddr::V4(_) => ([(addr, 32); 3], 1),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ([(IpAddr::V4(v4), 32); 3], 1),
            None => {
                let bits = u128::from(v6);
                let prefix = |len: u8| {
                    let masked = bits & !(u128::MAX >> u32::from(len));
                    (IpAddr::V6(masked.into()), len)
                };
                ([prefix(64), prefix(56), prefix(48)], 3)
            }
        },
    }
}

/// The one source `addr` belongs to for limits that count a single level: the IPv4 address
/// (an IPv4-mapped IPv6 address counts as IPv4), or the IPv6 /64 (one host's, or one link's,
/// addresses).
pub fn source_key(addr: IpAddr) -> IpAddr {
    sources_of(addr).0[0].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
        assert_eq!(source_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        let (sources, levels) = sources_of(ip("2001:db8:1:2ff:aaaa::1"));
        assert_eq!(levels, 3);
        assert_eq!(
            sources,
            [
                (ip("2001:db8:1:2ff::"), 64),
                (ip("2001:db8:1:200::"), 56),
                (ip("2001:db8:1::"), 48)
            ]
        );
        assert_eq!(sources_of(ip("::ffff:192.0.2.7")).1, 1);
    }
}
