//! The relay's configuration file (TOML; `viska-relay --config FILE`). Every key is optional;
//! a command-line flag overrides the file's value, the file the built-in default. An unknown
//! key, a value of the wrong type or a network that does not parse is an error naming the
//! key and its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use viska_relay::IpNetwork;

/// The whole file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// The data directory.
    pub(crate) data_dir: Option<PathBuf>,
    /// The database key's file (64 hex digits, owner-only), outside the data directory.
    pub(crate) db_key_file: Option<PathBuf>,
    /// UDP addresses to listen on: one (`bind = "[::]:4433"`) or a list
    /// (`bind = ["0.0.0.0:4433", "[::]:4433"]`), the first printed as the relay's address.
    #[serde(default, deserialize_with = "binds")]
    pub(crate) bind: Option<Vec<SocketAddr>>,
    /// `open` or `required`.
    pub(crate) accounts: Option<AccountsSetting>,
    /// `text` or `json`.
    pub(crate) log_format: Option<LogFormat>,
    /// Which clients may connect.
    #[serde(default)]
    pub(crate) network: NetworkSection,
    /// Bounds and timers.
    #[serde(default)]
    pub(crate) limits: LimitsSection,
    /// The certificate to present.
    pub(crate) tls: Option<TlsSection>,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub(crate) metrics: MetricsSection,
}

/// `[network]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkSection {
    /// CIDR networks devices may connect from (none: every address).
    #[serde(default, deserialize_with = "networks")]
    pub(crate) allowed: Vec<IpNetwork>,
}

/// `[limits]`: the same as the flags of the same names.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub(crate) hold_secs: Option<u64>,
    pub(crate) auth_secs: Option<u64>,
    pub(crate) max_unauthenticated: Option<usize>,
    pub(crate) max_unauthenticated_per_source: Option<usize>,
    pub(crate) recheck_ms: Option<u64>,
    pub(crate) idle_secs: Option<u64>,
    pub(crate) max_held: Option<usize>,
    pub(crate) max_login_attempts: Option<u32>,
    /// New connections one source may start at once (`RelayConfig::handshake_rate`).
    pub(crate) handshake_burst: Option<u32>,
    /// New connections a second one source may start once its burst is spent.
    pub(crate) handshakes_per_second: Option<u32>,
}

/// `[tls]`: both paths, or the section left out.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// The certificate (X.509 DER).
    pub(crate) cert: PathBuf,
    /// Its private key (PKCS#8 DER).
    pub(crate) key: PathBuf,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsSection {
    /// TCP address of `GET /metrics` (none: not served).
    pub(crate) bind: Option<SocketAddr>,
}

/// `accounts = "open" | "required"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AccountsSetting {
    Open,
    Required,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (timestamp, level, target, fields).
    Json,
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNetwork>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| t.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// `bind`: one address or a non-empty list of them.
fn binds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<SocketAddr>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    let addrs = match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(list) => list,
    };
    if addrs.is_empty() {
        return Err(serde::de::Error::custom(
            "`bind` needs at least one address",
        ));
    }
    Ok(Some(addrs))
}

/// Parses the text of a configuration file; the error names the file, the key and its line.
pub(crate) fn parse(text: &str, origin: &Path) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| format!("{}: {e}", origin.display()))
}

/// Reads and parses a configuration file.
pub(crate) fn load(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the configuration {}: {e}", path.display()))?;
    parse(&text, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<FileConfig, String> {
        parse(text, Path::new("relay.toml"))
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse_str(
            r#"
data_dir = "/var/lib/viska-relay"
db_key_file = "/etc/viska-relay/db-key"
bind = "[::]:4433"
accounts = "required"
log_format = "json"

[network]
allowed = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

[limits]
hold_secs = 20
auth_secs = 3
max_unauthenticated = 100
max_unauthenticated_per_source = 4
recheck_ms = 500
idle_secs = 15
max_held = 128
max_login_attempts = 2
handshake_burst = 64
handshakes_per_second = 16

[tls]
cert = "/etc/viska/cert.der"
key = "/etc/viska/key.der"

[metrics]
bind = "127.0.0.1:9464"
"#,
        )
        .unwrap();
        assert_eq!(c.bind, Some(vec!["[::]:4433".parse().unwrap()]));
        assert_eq!(
            c.db_key_file,
            Some(PathBuf::from("/etc/viska-relay/db-key"))
        );
        assert_eq!(c.accounts, Some(AccountsSetting::Required));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert_eq!(c.network.allowed.len(), 3);
        assert_eq!(c.network.allowed[1].to_string(), "2001:db8::/32");
        assert_eq!(c.limits.hold_secs, Some(20));
        assert_eq!(c.limits.max_login_attempts, Some(2));
        assert_eq!(
            (c.limits.handshake_burst, c.limits.handshakes_per_second),
            (Some(64), Some(16))
        );
        assert_eq!(c.tls.unwrap().key, PathBuf::from("/etc/viska/key.der"));
        assert_eq!(c.metrics.bind, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_str("").unwrap(), FileConfig::default());
    }

    #[test]
    fn bind_takes_one_address_or_a_list() {
        let c = parse_str("bind = [\"0.0.0.0:4433\", \"[::1]:4434\"]\n").unwrap();
        assert_eq!(
            c.bind,
            Some(vec![
                "0.0.0.0:4433".parse().unwrap(),
                "[::1]:4434".parse().unwrap()
            ])
        );
        let e = parse_str("bind = []\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("at least one"), "{e}");
        let e = parse_str("bind = [\"0.0.0.0:4433\", \"nowhere\"]\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = parse_str("bind = \"0.0.0.0:4433\"\n\n[limits]\nhold_secs = 5\nhold_seconds = 9\n")
            .unwrap_err();
        assert!(e.starts_with("relay.toml: "), "{e}");
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("unknown field `hold_seconds`"), "{e}");
        let e = parse_str("bnd = \"0.0.0.0:4433\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("`bnd`"), "{e}");
    }

    #[test]
    fn a_bad_network_or_value_is_named_with_its_line() {
        let e =
            parse_str("[network]\nallowed = [\"10.0.0.0/8\",\n  \"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.contains("line 2") || e.contains("line 3"), "{e}");
        assert!(e.contains("\"33\" is not a prefix length"), "{e}");
        let e = parse_str("[network]\nallowed = [\"10.1.0.0/8\"]\n").unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
        let e = parse_str("\n[limits]\nhold_secs = \"ten\"\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        let e = parse_str("accounts = \"closed\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("closed"), "{e}");
        let e = parse_str("[tls]\ncert = \"c.der\"\n").unwrap_err();
        assert!(e.contains("missing field `key`"), "{e}");
    }
}
