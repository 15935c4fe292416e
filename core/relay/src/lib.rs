//! The Viska relay: the selective forwarding unit and MLS delivery service of group calls
//! (`docs/protocol-relay.md`, `docs/operations.md`).
//!
//! A relay routes ciphertext and orders handshake messages; it never holds a media or group
//! key. Devices connect over QUIC (ALPN [`viska_proto::relay::RELAY_ALPN`]), pin the relay's
//! self-signed certificate by its SHA-256 ([`RelayHandle::fingerprint`]) and authenticate
//! in-band with their identity key, bound to the TLS session by the exporter. Then the relay:
//!
//! - stores and hands out key packages (one-use, and a reusable last-resort one);
//! - keeps, per call, one total order of MLS commits: **the first valid commit for an epoch
//!   wins**, is stored in SQLite before anyone hears of it, and goes to every other member;
//!   the Welcome goes to the added devices (held until they connect);
//! - tells all members to switch their send key once every member holds the new epoch;
//! - forwards each media datagram (`route || SFrame frame`) to the call's other members,
//!   without copying it and without ever queueing for a slow receiver.
//!
//! With [`AccountsMode::Required`] it admits only devices registered to an account (a device
//! registers once by logging in with the account's password and TOTP code, protocol version
//! 2), checks every commit against the account's [`Role`], and acts at once on revocations and
//! account changes made from the command line ([`admin`]). Security events go to a
//! hash-chained audit log with signed checkpoints ([`AuditEvent`], [`AuditProblem`]).
//!
//! For operations: connections from outside [`RelayConfig::allowed_networks`] are refused
//! before any TLS work; [`RelayConfig::metrics_bind`] serves the counters ([`RelayStats`]) in
//! the Prometheus text format at `GET /metrics`; an emergency rekey of a call
//! ([`admin::Admin::rekey_call`]) asks its members to commit new keys within
//! [`RelayConfig::recheck_interval`].
//!
//! ```no_run
//! # async fn run() -> Result<(), viska_relay::RelayError> {
//! let config = viska_relay::RelayConfig::new("0.0.0.0:4433".parse().unwrap(), "relay-data".into());
//! let relay = viska_relay::Relay::start(config).await?;
//! println!("fingerprint {:02x?}", relay.fingerprint());
//! relay.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod accounts;
pub mod admin;
mod audit;
pub mod backup;
mod cert;
mod conn;
mod db;
mod log_limit;
mod metrics;
pub mod net;
mod replay;
mod state;
pub mod storage;
mod throttle;
pub mod totp;

pub use accounts::{DeviceStatus, MAX_NAME, Role, UnknownRole, normalize_name};
pub use audit::{AUDIT_KEY_FILE, AuditEvent, AuditProblem, AuditReport, AuditRow, CHECKPOINT_FILE};
pub use net::{IpNetwork, IpNetworkError};
pub use storage::{DbKey, DbKeyError};
pub use throttle::ThrottlePolicy;
/// The per-source handshake rate limit's settings ([`RelayConfig::handshake_rate`]).
pub use viska_admission::RateConfig;

/// File of the relay's database in its data directory.
pub const DB_FILE: &str = db::DB_FILE;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use viska_proto::relay::{CallRef, DeviceKey};

/// Errors of starting or running a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Reading or writing the data directory, or binding the UDP socket, failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The certificate in the data directory is unusable, or generating one failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The TLS or QUIC configuration was refused.
    #[error("tls: {0}")]
    Tls(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The database holds something this relay cannot read (a corrupt or foreign file).
    #[error("database content: {0}")]
    Corrupt(String),
    /// The database thread has stopped (the relay is shutting down).
    #[error("the database thread has stopped")]
    DatabaseStopped,
    /// A background task failed to run.
    #[error("task: {0}")]
    Task(String),
    /// Neither a database key ([`RelayConfig::db_key`]) nor
    /// [`RelayConfig::insecure_unencrypted_db`] was given.
    #[error(
        "no database key: give --db-key-file, VISKA_RELAY_DB_KEY or the systemd credential viska-relay-db-key (or --insecure-unencrypted-db)"
    )]
    NoDatabaseKey,
    /// The database key does not open the database (nothing was written to it).
    #[error("database key does not match the database")]
    WrongDatabaseKey,
    /// A key was given but the database is plaintext: encrypt it once first.
    #[error(
        "the database {0} is not encrypted: run `viska-relay --data-dir DIR db encrypt` with the key options once (relay stopped)"
    )]
    DatabaseNotEncrypted(PathBuf),
    /// The database is encrypted and no key was given.
    #[error("the database {0} is encrypted: give its key")]
    DatabaseEncrypted(PathBuf),
    /// The data directory is in use in a way that excludes this operation.
    #[error("data directory busy: {0}")]
    DataDirBusy(String),
}

/// Decides whether an authenticated identity may use the relay, before (and besides) the
/// accounts ([`AccountsMode`]) and revocations of the data directory; [`AllowAll`] admits
/// every identity that proved its key.
pub trait Admission: Send + Sync + 'static {
    /// Whether `identity` (which has just proved it holds the key) may log in.
    fn admit(&self, identity: &DeviceKey) -> bool;
}

/// Admits every authenticated identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Admission for AllowAll {
    fn admit(&self, _identity: &DeviceKey) -> bool {
        true
    }
}

/// Which devices a relay admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AccountsMode {
    /// Every device that proves its key (and passes [`RelayConfig::admission`]), except
    /// revoked ones; roles are not checked.
    #[default]
    Open,
    /// Only devices registered to an enabled account: an unregistered device logs in (account,
    /// password, TOTP code) on a protocol version 2 connection, and every operation is checked
    /// against the account's role (`docs/protocol-relay.md` §9).
    Required,
}

/// How a relay runs.
#[derive(Clone)]
pub struct RelayConfig {
    /// UDP address to listen on.
    pub bind: SocketAddr,
    /// More UDP addresses to listen on, served by the same relay as `bind` (another
    /// interface, or IPv4 beside an IPv6-only address): a device may connect to any of them
    /// and is in the same calls. Empty by default.
    pub also_bind: Vec<SocketAddr>,
    /// Where the certificate, its key and the database live (created if missing).
    pub data_dir: PathBuf,
    /// How long a device whose connection closed stays a member of its calls (with its
    /// control messages held) before it is gone.
    pub hold_time: Duration,
    /// Most control messages held for one identity; beyond that the oldest go and the device
    /// is treated as gone from its calls.
    pub max_held: usize,
    /// A connection that has not authenticated within this time after its first packet
    /// (QUIC handshake, challenge and `Auth` together) is closed.
    pub auth_timeout: Duration,
    /// Most connections that have not authenticated yet, from all sources together. When all
    /// are taken, a newcomer takes back the oldest place of the source holding the most.
    pub max_unauthenticated: usize,
    /// Most connections that have not authenticated yet from one source: an IPv4 address
    /// (an IPv4-mapped IPv6 address counts as IPv4) or an IPv6 /64, with twice as many for
    /// its /56 and three times for its /48 (one site cannot pose as 65,536 sources). A
    /// newcomer from a source (at any of those levels) holding that many is refused.
    pub max_unauthenticated_per_source: usize,
    /// How fast one source may start new connections (after QUIC's address validation,
    /// before TLS): a token bucket per IPv4 address or IPv6 /64 (twice for its /56, three
    /// times for its /48), with a bounded number of sources tracked. A connection beyond it
    /// is refused before TLS and counted in [`RelayStats::refused_rate_limited`].
    pub handshake_rate: RateConfig,
    /// Bytes of outgoing datagrams quinn may queue per connection; a forwarded datagram that
    /// does not fit is dropped (and counted), never queued behind.
    pub datagram_send_buffer: usize,
    /// A connection with no packet from its device for this long is closed.
    pub idle_timeout: Duration,
    /// Who may log in.
    pub admission: Arc<dyn Admission>,
    /// Whether devices must be registered to an account.
    pub accounts: AccountsMode,
    /// How often the relay looks for devices the command line revoked, disabled or changed
    /// the role of (in the database's queue of devices to check again).
    pub recheck_interval: Duration,
    /// Lock-out of login failures per account name (known or not).
    pub account_throttle: ThrottlePolicy,
    /// Lock-out of login failures per source (IPv4 address or IPv6 /64).
    pub source_throttle: ThrottlePolicy,
    /// Login attempts allowed on one connection before it is closed.
    pub max_login_attempts: u32,
    /// The networks devices may connect from; a connection from anywhere else is refused
    /// before any TLS work (and counted, [`RelayStats::refused_network`]). Empty: every
    /// address.
    pub allowed_networks: Vec<IpNetwork>,
    /// The certificate and its private key to present, instead of the self-signed pair the
    /// relay generates in its data directory.
    pub certificate: Option<CertificateFiles>,
    /// Where to serve the counters in the Prometheus text format (`GET /metrics`, plain HTTP);
    /// none: not served.
    pub metrics_bind: Option<SocketAddr>,
    /// The key of the database (SQLCipher), kept outside the data directory. Without one the
    /// relay refuses to start ([`RelayError::NoDatabaseKey`]) unless
    /// [`RelayConfig::insecure_unencrypted_db`] is set.
    pub db_key: Option<DbKey>,
    /// Runs on a plaintext database when no key is given (warned about at start, and
    /// `viska_relay_database_encrypted 0` in the metrics). For tests and migrations only.
    pub insecure_unencrypted_db: bool,
}

/// A certificate and its private key, each a DER file (the certificate as X.509 DER, the key
/// as PKCS#8 DER), as the relay writes its own self-signed pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (keep it readable by the relay's user only).
    pub key: PathBuf,
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field("hold_time", &self.hold_time)
            .field("max_held", &self.max_held)
            .field("auth_timeout", &self.auth_timeout)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .field(
                "max_unauthenticated_per_source",
                &self.max_unauthenticated_per_source,
            )
            .field("handshake_rate", &self.handshake_rate)
            .field("datagram_send_buffer", &self.datagram_send_buffer)
            .field("idle_timeout", &self.idle_timeout)
            .field("accounts", &self.accounts)
            .field("recheck_interval", &self.recheck_interval)
            .field("account_throttle", &self.account_throttle)
            .field("source_throttle", &self.source_throttle)
            .field("max_login_attempts", &self.max_login_attempts)
            .field("allowed_networks", &self.allowed_networks)
            .field("certificate", &self.certificate)
            .field("metrics_bind", &self.metrics_bind)
            .field("db_key", &self.db_key)
            .field("insecure_unencrypted_db", &self.insecure_unencrypted_db)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    /// A configuration with the defaults: hold time 30 s, 256 held messages per identity,
    /// 5 s to authenticate, at most 512 connections not authenticated yet (16 per source),
    /// 64 KiB datagram send buffer, 30 s idle timeout, every identity admitted (open mode),
    /// revocations noticed within 1 s, lock-outs [`ThrottlePolicy::ACCOUNT`] and
    /// [`ThrottlePolicy::SOURCE`], 3 login attempts per connection, devices from every
    /// network, the self-signed certificate of the data directory, no metrics endpoint, and no
    /// database key (set [`RelayConfig::db_key`]: without it the relay does not start).
    pub fn new(bind: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            bind,
            also_bind: Vec::new(),
            data_dir,
            hold_time: Duration::from_secs(30),
            max_held: 256,
            auth_timeout: Duration::from_secs(5),
            max_unauthenticated: 512,
            max_unauthenticated_per_source: 16,
            // More than a phone's: after a restart, a whole office behind one NAT reconnects.
            handshake_rate: RateConfig {
                burst: 32,
                per_second: 8,
                ..RateConfig::default()
            },
            datagram_send_buffer: 64 * 1024,
            idle_timeout: Duration::from_secs(30),
            admission: Arc::new(AllowAll),
            accounts: AccountsMode::Open,
            recheck_interval: Duration::from_secs(1),
            account_throttle: ThrottlePolicy::ACCOUNT,
            source_throttle: ThrottlePolicy::SOURCE,
            max_login_attempts: 3,
            allowed_networks: Vec::new(),
            certificate: None,
            metrics_bind: None,
            db_key: None,
            insecure_unencrypted_db: false,
        }
    }
}

/// A snapshot of a relay's counters (all since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Datagram copies sent to receivers (one datagram to three members counts three).
    pub datagrams_forwarded: u64,
    /// Datagrams dropped: their route names no active call.
    pub dropped_no_route: u64,
    /// Datagrams dropped: the sender is not a forwarding member of the call.
    pub dropped_not_member: u64,
    /// Datagrams dropped: no routing prefix, no SFrame header that parses, or an epoch the
    /// call has not reached.
    pub dropped_malformed: u64,
    /// Datagram copies not sent to one receiver: its send buffer was full or it refused it.
    pub dropped_slow_receiver: u64,
    /// Datagram copies not sent to one receiver: the frame's epoch is before the one it
    /// joined at.
    pub dropped_before_join: u64,
    /// Datagrams dropped: their SFrame counter was seen already from the same sender under the
    /// same key (KID and epoch): a replay, or a sender reusing a counter.
    pub dropped_counter_repeat: u64,
    /// Datagrams dropped: their SFrame counter is more than the replay window below the
    /// highest one seen from the same sender under the same key.
    pub dropped_counter_too_old: u64,
    /// Datagrams dropped: their sender already showed more keys (KID and epoch) than a real
    /// sender has, so the new one's counters could not be tracked.
    pub dropped_counter_too_many_keys: u64,
    /// Commits accepted (each moved its call one epoch on).
    pub commits_accepted: u64,
    /// Commits refused (stale epoch, or another commit for the epoch won).
    pub commits_refused: u64,
    /// Key-package fetches answered with none: the device has published none (not yet, or
    /// all its one-use packages went and it has no last-resort one).
    pub key_packages_missing: u64,
    /// QUIC connections accepted.
    pub connections: u64,
    /// Connections that authenticated.
    pub authenticated: u64,
    /// Connections whose authentication failed (bad signature, wrong message, refused
    /// identity, wrong ALPN, timeout).
    pub auth_failures: u64,
    /// Of those, connections closed because they had not authenticated within
    /// [`RelayConfig::auth_timeout`].
    pub auth_timeouts: u64,
    /// Connections refused before their handshake: their source already held
    /// [`RelayConfig::max_unauthenticated_per_source`] connections not authenticated yet.
    pub refused_source_full: u64,
    /// Connections refused before their handshake: their source started new connections
    /// faster than [`RelayConfig::handshake_rate`] allows.
    pub refused_rate_limited: u64,
    /// Connections refused before their handshake: their address is in none of
    /// [`RelayConfig::allowed_networks`].
    pub refused_network: u64,
    /// Connections not authenticated yet closed to make room for a newcomer (all
    /// [`RelayConfig::max_unauthenticated`] places were taken).
    pub unauthenticated_taken_back: u64,
    /// Connections (and handshakes) not authenticated yet, now.
    pub unauthenticated: u64,
    /// Devices connected and authenticated now.
    pub devices_online: u64,
    /// Control frames that did not decode or were not allowed (each answered or closed).
    pub bad_frames: u64,
    /// Devices registered by a successful login.
    pub logins: u64,
    /// Logins refused (wrong name, password or code, disabled account, a reused code).
    pub login_failures: u64,
    /// Login attempts refused unchecked because the account name or the source was locked.
    pub login_locked: u64,
    /// Requests refused by the role matrix.
    pub forbidden: u64,
    /// Devices disconnected and taken out of their calls because they were revoked or their
    /// account disabled.
    pub evicted: u64,
    /// Password verifications made: one per login attempt not locked out, unknown accounts
    /// included (verified against a hash nobody knows, so they cost the same).
    pub password_checks: u64,
    /// Devices checked again after a change from the command line (revoked, account disabled
    /// or enabled, role changed).
    pub rechecked: u64,
    /// Lock-outs begun (an account name or a source locked after repeated login failures).
    pub lockouts: u64,
    /// Emergency rekeys of calls asked for from the command line and passed to the calls'
    /// members.
    pub rekeys: u64,
    /// Active calls, now.
    pub calls: u64,
    /// Members of active calls (connected or within their hold time), now.
    pub members: u64,
    /// 1 if the database is encrypted at rest ([`RelayConfig::db_key`]), 0 if the relay runs
    /// on a plaintext one ([`RelayConfig::insecure_unencrypted_db`]).
    pub database_encrypted: u64,
}

impl RelayStats {
    /// Datagrams dropped by the SFrame counter check, for every reason: zero on a relay whose
    /// senders never reused a counter under a key and nobody replayed their frames.
    pub fn counter_reuse_dropped(&self) -> u64 {
        self.dropped_counter_repeat
            + self.dropped_counter_too_old
            + self.dropped_counter_too_many_keys
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) forwarded: AtomicU64,
    pub(crate) no_route: AtomicU64,
    pub(crate) not_member: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) slow: AtomicU64,
    pub(crate) before_join: AtomicU64,
    pub(crate) counter_repeat: AtomicU64,
    pub(crate) counter_too_old: AtomicU64,
    pub(crate) counter_too_many_keys: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) key_packages_missing: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) authenticated: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) auth_timeouts: AtomicU64,
    pub(crate) refused_source_full: AtomicU64,
    pub(crate) taken_back: AtomicU64,
    pub(crate) refused_rate_limited: AtomicU64,
    pub(crate) online: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) logins: AtomicU64,
    pub(crate) login_failures: AtomicU64,
    pub(crate) login_locked: AtomicU64,
    pub(crate) forbidden: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) password_checks: AtomicU64,
    pub(crate) rechecked: AtomicU64,
    pub(crate) refused_network: AtomicU64,
    pub(crate) lockouts: AtomicU64,
    pub(crate) rekeys: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self, unauthenticated: usize, (calls, members): (usize, usize)) -> RelayStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            datagrams_forwarded: g(&self.forwarded),
            dropped_no_route: g(&self.no_route),
            dropped_not_member: g(&self.not_member),
            dropped_malformed: g(&self.malformed),
            dropped_slow_receiver: g(&self.slow),
            dropped_before_join: g(&self.before_join),
            dropped_counter_repeat: g(&self.counter_repeat),
            dropped_counter_too_old: g(&self.counter_too_old),
            dropped_counter_too_many_keys: g(&self.counter_too_many_keys),
            commits_accepted: g(&self.accepted),
            commits_refused: g(&self.refused),
            key_packages_missing: g(&self.key_packages_missing),
            connections: g(&self.connections),
            authenticated: g(&self.authenticated),
            auth_failures: g(&self.auth_failures),
            auth_timeouts: g(&self.auth_timeouts),
            refused_source_full: g(&self.refused_source_full),
            unauthenticated_taken_back: g(&self.taken_back),
            refused_rate_limited: g(&self.refused_rate_limited),
            unauthenticated: unauthenticated as u64,
            devices_online: g(&self.online),
            bad_frames: g(&self.bad_frames),
            logins: g(&self.logins),
            login_failures: g(&self.login_failures),
            login_locked: g(&self.login_locked),
            forbidden: g(&self.forbidden),
            evicted: g(&self.evicted),
            password_checks: g(&self.password_checks),
            rechecked: g(&self.rechecked),
            refused_network: g(&self.refused_network),
            lockouts: g(&self.lockouts),
            rekeys: g(&self.rekeys),
            calls: calls as u64,
            members: members as u64,
            database_encrypted: 0,
        }
    }
}

/// Starts relays.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Opens (or creates) the data directory, loads or generates the certificate, loads the
    /// active calls and their epochs from the database, and starts listening. Must be called
    /// inside a tokio runtime.
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        conn::start(config).await
    }
}

/// A running relay.
pub struct RelayHandle {
    inner: conn::Running,
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// The UDP address the relay listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Every UDP address the relay listens on: [`RelayHandle::local_addr`] first, then those of
    /// [`RelayConfig::also_bind`] in order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.local_addrs
    }

    /// SHA-256 of the relay's certificate (DER): what devices pin. Stable across restarts on
    /// the same data directory.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.inner.fingerprint
    }

    /// The counters now.
    pub fn stats(&self) -> RelayStats {
        Self::stats_of(&self.inner.shared)
    }

    pub(crate) fn stats_of(shared: &state::Shared) -> RelayStats {
        let mut stats = shared
            .stats
            .snapshot(shared.places.held(), shared.call_counts());
        stats.database_encrypted = u64::from(shared.config.db_key.is_some());
        stats
    }

    /// Where the metrics endpoint listens ([`RelayConfig::metrics_bind`], with the port the
    /// system chose for port 0), if it is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr
    }

    /// Closes every connection, stops listening and closes the database (after the writes
    /// already queued).
    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}
