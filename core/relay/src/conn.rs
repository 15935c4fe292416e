//! The QUIC side: the endpoint, and per connection the authentication, the control stream's
//! reader and writer, and the datagram reader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use tokio::sync::Notify;
use viska_admission::{Place, SourceFull, source_key};
use viska_e2ee::identity::PublicIdentity;
use viska_passwords::HashParams;
use viska_proto::relay::{
    AUTH_EXPORTER_LABEL, RELAY_ALPN, RELAY_ALPN_V2, RelayDecoder, RelayErrorCode, RelayMessage,
    auth_transcript,
};
use zeroize::Zeroizing;

use crate::accounts::{self, DeviceStatus, Registered, normalize_name};
use crate::audit::{AuditEvent, Checkpointer, hex};
use crate::db::Op;
use crate::state::{Account, Shared, close, device_actor, short, spawn_database};
use crate::{
    AccountsMode, DeviceKey, IpNetwork, RelayConfig, RelayError, RelayHandle, bump, cert, db,
};

/// Bytes of received datagrams quinn holds per connection until the relay forwards them.
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// Bytes read from the control stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A running relay's parts.
pub(crate) struct Running {
    pub(crate) local_addr: SocketAddr,
    /// Every address listened on, `local_addr` first.
    pub(crate) local_addrs: Vec<SocketAddr>,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) shared: Arc<Shared>,
    /// One endpoint per address listened on.
    endpoints: Vec<quinn::Endpoint>,
    accepts: Vec<tokio::task::JoinHandle<()>>,
    rechecks: tokio::task::JoinHandle<()>,
    metrics: Option<tokio::task::JoinHandle<()>>,
    db_thread: std::thread::JoinHandle<()>,
    /// The shared lock on the data directory, held while the relay runs.
    _lock: crate::storage::DirLock,
}

impl Running {
    pub(crate) async fn shutdown(self) {
        let _ = self.shared.shutdown.send(true);
        for accept in &self.accepts {
            accept.abort();
        }
        self.rechecks.abort();
        if let Some(m) = &self.metrics {
            m.abort();
        }
        for endpoint in &self.endpoints {
            endpoint.close(close::SHUTDOWN.into(), b"relay shutting down");
        }
        // All are closed already: waiting for each in turn waits for the slowest.
        let idle = async {
            for endpoint in &self.endpoints {
                endpoint.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
        self.shared.close_database();
        let thread = self.db_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        tracing::info!("relay stopped");
    }
}

fn tls_error(e: impl std::fmt::Display) -> RelayError {
    RelayError::Tls(e.to_string())
}

fn server_config(
    identity: &cert::Identity,
    config: &RelayConfig,
) -> Result<quinn::ServerConfig, RelayError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key())
        .map_err(tls_error)?;
    // The highest version first: rustls picks the first of these the device offers.
    tls.alpn_protocols = vec![RELAY_ALPN_V2.to_vec(), RELAY_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(tls_error)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(config.idle_timeout).map_err(tls_error)?,
    ));
    transport.datagram_send_buffer_size(config.datagram_send_buffer);
    transport.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    // One control stream, opened by the relay; the device may open none.
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    Ok(server)
}

pub(crate) async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
    let dir = config.data_dir.clone();
    let certificate = config.certificate.clone();
    let key = config.db_key.clone();
    if key.is_none() {
        if !config.insecure_unencrypted_db {
            return Err(RelayError::NoDatabaseKey);
        }
        tracing::warn!(
            "INSECURE: the database is not encrypted at rest (--insecure-unencrypted-db): \
             password hashes and TOTP secrets are readable by whoever reads the data directory"
        );
    }
    let (lock, identity, database, stored, checkpoints, (last_recheck, last_rekey)) =
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let lock = crate::storage::DirLock::shared(&dir)?;
            // The database first: a wrong key fails before anything is generated.
            let (database, stored) = db::open(&dir, key.as_ref())?;
            let identity = match &certificate {
                Some(files) => cert::load_files(&files.cert, &files.key)?,
                None => cert::load_or_generate(&dir)?,
            };
            let checkpoints = Checkpointer::open(&dir)?;
            let last = (
                accounts::last_recheck(&database)?,
                accounts::last_rekey(&database)?,
            );
            Ok::<_, RelayError>((lock, identity, database, stored, checkpoints, last))
        })
        .await
        .map_err(|e| RelayError::Task(e.to_string()))??;
    let fingerprint = identity.fingerprint();
    if config.accounts == AccountsMode::Required {
        // The hash unknown accounts are verified against, made now rather than at the first
        // such login (which would then take longer than the others).
        tokio::task::spawn_blocking(|| {
            viska_passwords::dummy_hash();
        })
        .await
        .map_err(|e| RelayError::Task(e.to_string()))?;
    }
    // Every address is bound before anything runs: one that cannot be fails the start.
    let server = server_config(&identity, &config)?;
    let mut endpoints = Vec::with_capacity(1 + config.also_bind.len());
    let mut local_addrs = Vec::with_capacity(endpoints.capacity());
    for addr in std::iter::once(config.bind).chain(config.also_bind.iter().copied()) {
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server.clone()),
            bind_socket(addr)?,
            Arc::new(quinn::TokioRuntime),
        )?;
        local_addrs.push(endpoint.local_addr()?);
        endpoints.push(endpoint);
    }
    let local_addr = local_addrs[0];
    let (db_tx, db_thread) = spawn_database(database, checkpoints)?;
    let loaded = stored.calls.len();
    let shared = Shared::new(config, db_tx, stored);
    let accepts = endpoints
        .iter()
        .map(|endpoint| tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared))))
        .collect();
    let rechecks = tokio::spawn(recheck_loop(Arc::clone(&shared), last_recheck, last_rekey));
    let (metrics, metrics_addr) = match shared.config.metrics_bind {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            tracing::info!(%bound, "metrics served at /metrics");
            (
                Some(tokio::spawn(crate::metrics::serve(
                    listener,
                    Arc::clone(&shared),
                ))),
                Some(bound),
            )
        }
        None => (None, None),
    };
    for addr in &local_addrs {
        tracing::info!(local_addr = %addr, calls = loaded, "relay listening");
    }
    Ok(RelayHandle {
        inner: Running {
            local_addr,
            local_addrs,
            fingerprint,
            metrics_addr,
            shared,
            endpoints,
            accepts,
            rechecks,
            metrics,
            db_thread,
            _lock: lock,
        },
    })
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        // Address validation first (a Retry round trip): the source a place is counted under
        // is then one the device can receive at, not a forged one.
        if !incoming.remote_address_validated() {
            if let Err(e) = incoming.retry() {
                tracing::debug!(error = %e, "retry not possible; dropping the attempt");
            }
            continue;
        }
        let remote = incoming.remote_address();
        if !IpNetwork::allows(&shared.config.allowed_networks, remote.ip()) {
            bump(&shared.stats.refused_network);
            limited_log(&shared, remote, "refused: not from an allowed network");
            incoming.refuse();
            continue;
        }
        let rate = shared
            .handshake_rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(std::time::Instant::now(), remote.ip());
        if rate.is_err() {
            bump(&shared.stats.refused_rate_limited);
            limited_log(
                &shared,
                remote,
                "refused: its source starts connections too fast",
            );
            incoming.refuse();
            continue;
        }
        let place = match shared.places.take(remote.ip()) {
            Ok(taking) => {
                if taking.took_back {
                    bump(&shared.stats.taken_back);
                    limited_log(
                        &shared,
                        remote,
                        "all unauthenticated places taken: the oldest of the biggest holder closed",
                    );
                }
                taking.place
            }
            Err(SourceFull) => {
                bump(&shared.stats.refused_source_full);
                limited_log(
                    &shared,
                    remote,
                    "refused: its source holds its share of unauthenticated connections",
                );
                incoming.refuse();
                continue;
            }
        };
        bump(&shared.stats.connections);
        let shared = Arc::clone(&shared);
        tokio::spawn(serve(shared, incoming, place));
    }
}

/// One line at most a second about connections refused or cut off before authenticating.
fn limited_log(shared: &Shared, remote: SocketAddr, what: &'static str) {
    if let Some(left_out) = shared.places_log.allow() {
        tracing::info!(%remote, left_out, "{what}");
    }
}

/// Looks for devices the command line asked the relay to check again (revoked, account
/// disabled, role changed) and calls it asked to rekey, every
/// [`RelayConfig::recheck_interval`].
async fn recheck_loop(shared: Arc<Shared>, mut after: i64, mut rekeys_after: i64) {
    let mut tick = tokio::time::interval(shared.config.recheck_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match shared.ask(|reply| Op::Rechecks { after, reply }).await {
            Ok(list) => {
                for (seq, key, status) in list {
                    after = seq;
                    shared.recheck(key, status);
                }
            }
            Err(RelayError::DatabaseStopped) => return,
            Err(e) => tracing::error!(error = %e, "reading the devices to check again failed"),
        }
        match shared
            .ask(|reply| Op::Rekeys {
                after: rekeys_after,
                reply,
            })
            .await
        {
            Ok(list) => {
                for (seq, call) in list {
                    rekeys_after = seq;
                    shared.rekey(call);
                }
            }
            Err(RelayError::DatabaseStopped) => return,
            Err(e) => tracing::error!(error = %e, "reading the calls to rekey failed"),
        }
    }
}

/// Why a connection's authentication failed.
#[derive(Debug)]
enum AuthFailure {
    /// The stream or connection failed: nothing to answer.
    Transport,
    /// Refused: `Error{code}` goes back before the close with `close`.
    Refused {
        why: &'static str,
        send: quinn::SendStream,
        code: RelayErrorCode,
        close: u32,
    },
}

impl AuthFailure {
    fn unauthenticated(why: &'static str, send: quinn::SendStream) -> Self {
        Self::Refused {
            why,
            send,
            code: RelayErrorCode::Unauthenticated,
            close: close::UNAUTHENTICATED,
        }
    }
}

/// Waits for `f`, unless the deadline passes or the place is taken back first.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    place: &Place,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Cut> {
    tokio::select! {
        v = f => Ok(v),
        () = tokio::time::sleep_until(deadline) => Err(Cut::Timeout),
        () = place.taken_back() => Err(Cut::TakenBack),
    }
}

/// Why a connection was closed before it authenticated, not by its own doing.
#[derive(Clone, Copy, Debug)]
enum Cut {
    Timeout,
    TakenBack,
}

async fn serve(shared: Arc<Shared>, incoming: quinn::Incoming, place: Place) {
    let deadline = tokio::time::Instant::now() + shared.config.auth_timeout;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    // Dropping the handshake closes its connection.
    let conn = match bounded(deadline, &place, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(cut) => {
            count_cut(&shared, cut);
            return;
        }
    };
    let version = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| match d.protocol.as_deref() {
            Some(RELAY_ALPN) => Some(1u8),
            Some(RELAY_ALPN_V2) => Some(2u8),
            _ => None,
        });
    let Some(version) = version else {
        bump(&shared.stats.auth_failures);
        conn.close(
            close::UNAUTHENTICATED.into(),
            b"ALPN viska-relay/2 or viska-relay/1 required",
        );
        return;
    };
    let mut decoder = RelayDecoder::new();
    let auth = bounded(
        deadline,
        &place,
        authenticate(&shared, &conn, &mut decoder, version),
    )
    .await;
    // Authenticated or not, this connection no longer waits for a place's worth of work.
    drop(place);
    let (identity, send, recv, account) = match auth {
        Ok(Ok(ok)) => ok,
        Ok(Err(AuthFailure::Refused {
            why,
            mut send,
            code,
            close,
        })) => {
            bump(&shared.stats.auth_failures);
            tracing::info!(remote = %conn.remote_address(), why, "authentication refused");
            let refusal = RelayMessage::Error { code, call: None };
            if let Ok(frame) = refusal.encode() {
                let _ = send.write_all(&frame).await;
            }
            let _ = send.finish();
            // Let the refusal arrive before the close (bounded).
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            conn.close(close.into(), why.as_bytes());
            return;
        }
        Ok(Err(AuthFailure::Transport)) => {
            bump(&shared.stats.auth_failures);
            conn.close(close::UNAUTHENTICATED.into(), b"unauthenticated");
            return;
        }
        Err(cut) => {
            count_cut(&shared, cut);
            let why: &[u8] = match cut {
                Cut::Timeout => b"authentication timed out",
                Cut::TakenBack => b"too many unauthenticated connections",
            };
            conn.close(close::UNAUTHENTICATED.into(), why);
            return;
        }
    };
    bump(&shared.stats.authenticated);
    tracing::info!(device = %short(&identity), remote = %conn.remote_address(), "authenticated");
    let wake = Arc::new(Notify::new());
    let conn_id = shared.register(identity, conn.clone(), Arc::clone(&wake), account);
    let writer = tokio::spawn(write_loop(
        Arc::clone(&shared),
        identity,
        conn_id,
        send,
        wake,
        conn.clone(),
    ));
    let datagrams = tokio::spawn(datagram_loop(Arc::clone(&shared), conn_id, conn.clone()));
    read_loop(&shared, identity, &conn, recv, decoder).await;
    shared.unregister(identity, conn_id);
    writer.abort();
    datagrams.abort();
    tracing::info!(device = %short(&identity), "disconnected");
}

fn count_cut(shared: &Shared, cut: Cut) {
    match cut {
        Cut::Timeout => {
            bump(&shared.stats.auth_failures);
            bump(&shared.stats.auth_timeouts);
            tracing::debug!("a connection did not authenticate in time");
        }
        // Counted and logged when the place was taken.
        Cut::TakenBack => {}
    }
}

/// What a successful authentication gives: the device, its control stream, its account.
type Authenticated = (
    DeviceKey,
    quinn::SendStream,
    quinn::RecvStream,
    Option<Account>,
);

/// The next message of the control stream.
async fn next_message(
    recv: &mut quinn::RecvStream,
    decoder: &mut RelayDecoder,
) -> Result<Result<RelayMessage, ()>, AuthFailure> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match decoder.next_message() {
            Ok(Some(m)) => return Ok(Ok(m)),
            Ok(None) => {}
            Err(_) => return Ok(Err(())),
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => decoder.push(&buf[..n]),
            Ok(None) | Err(_) => return Err(AuthFailure::Transport),
        }
    }
}

/// The control stream and the challenge on it, then exactly one `Auth` with a valid signature
/// over this connection's exporter and the nonce, from an admitted identity that is not
/// revoked; on a relay that requires accounts, from a registered device or one that logs in.
async fn authenticate(
    shared: &Shared,
    conn: &quinn::Connection,
    decoder: &mut RelayDecoder,
    version: u8,
) -> Result<Authenticated, AuthFailure> {
    // The relay opens the control stream: a QUIC stream the device opened would stay
    // invisible to the relay until the device wrote on it, and the device has nothing to
    // say before the challenge.
    let (mut send, mut recv) = conn.open_bi().await.map_err(|_| AuthFailure::Transport)?;
    let mut nonce = [0u8; 32];
    rand::RngExt::fill(&mut rand::rng(), &mut nonce);
    let challenge = RelayMessage::Challenge { nonce }
        .encode()
        .map_err(|_| AuthFailure::Transport)?;
    send.write_all(&challenge)
        .await
        .map_err(|_| AuthFailure::Transport)?;
    let Ok(first) = next_message(&mut recv, decoder).await? else {
        return Err(AuthFailure::unauthenticated("malformed frame", send));
    };
    let RelayMessage::Auth {
        identity,
        signature,
    } = first
    else {
        bump(&shared.stats.bad_frames);
        return Err(AuthFailure::unauthenticated("a message before Auth", send));
    };
    let mut exporter = [0u8; 32];
    if conn
        .export_keying_material(&mut exporter, AUTH_EXPORTER_LABEL, b"")
        .is_err()
    {
        return Err(AuthFailure::Transport);
    }
    let transcript = auth_transcript(&exporter, &nonce);
    let verified = PublicIdentity::from_bytes(&identity)
        .and_then(|key| key.verify(&transcript, &signature))
        .is_ok();
    if !verified {
        return Err(AuthFailure::unauthenticated("bad signature", send));
    }
    if !shared.config.admission.admit(&identity) {
        return Err(AuthFailure::unauthenticated("identity not admitted", send));
    }
    let remote = conn.remote_address();
    let source = remote.ip().to_string();
    let status = match shared
        .ask(|reply| Op::DeviceStatus {
            key: identity,
            reply,
        })
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "looking up a device failed");
            return Err(AuthFailure::unauthenticated("database", send));
        }
    };
    let required = shared.config.accounts == AccountsMode::Required;
    let refuse = |why: &'static str, send, code, close| {
        shared.audit(
            AuditEvent::new(
                "auth_refused",
                device_actor(&identity),
                hex(&identity),
                source.clone(),
            )
            .with(serde_json::json!({ "why": why })),
        );
        Err(AuthFailure::Refused {
            why,
            send,
            code,
            close,
        })
    };
    match status {
        DeviceStatus::Revoked => {
            return refuse(
                "device revoked",
                send,
                RelayErrorCode::Revoked,
                close::REVOKED,
            );
        }
        DeviceStatus::Disabled => {
            return refuse(
                "account disabled",
                send,
                RelayErrorCode::Revoked,
                close::REVOKED,
            );
        }
        DeviceStatus::Registered { user, role } => {
            shared.audit(
                AuditEvent::new("device_auth", user.clone(), hex(&identity), source)
                    .with(serde_json::json!({ "role": role.as_str(), "protocol": version })),
            );
            let account = required.then_some((user, role));
            return Ok((identity, send, recv, account));
        }
        DeviceStatus::Unknown if !required => {
            shared.audit(
                AuditEvent::new(
                    "device_auth",
                    device_actor(&identity),
                    hex(&identity),
                    source,
                )
                .with(serde_json::json!({ "protocol": version })),
            );
            return Ok((identity, send, recv, None));
        }
        DeviceStatus::Unknown => {}
    }
    if version < 2 {
        return refuse(
            "login required (protocol version 1 cannot log in)",
            send,
            RelayErrorCode::LoginRequired,
            close::LOGIN_REQUIRED,
        );
    }
    write(&mut send, &RelayMessage::LoginRequired).await?;
    for _ in 0..shared.config.max_login_attempts.max(1) {
        let message = match next_message(&mut recv, decoder).await? {
            Ok(m) => m,
            Err(()) => return Err(AuthFailure::unauthenticated("malformed frame", send)),
        };
        let RelayMessage::Login {
            account,
            password,
            code,
        } = message
        else {
            bump(&shared.stats.bad_frames);
            return Err(AuthFailure::unauthenticated(
                "a message other than Login",
                send,
            ));
        };
        match login(shared, identity, remote.ip(), account, password, code).await {
            Ok(account) => return Ok((identity, send, recv, Some(account))),
            Err(retry_after_secs) => {
                write(&mut send, &RelayMessage::LoginFailed { retry_after_secs }).await?;
            }
        }
    }
    Err(AuthFailure::unauthenticated("too many failed logins", send))
}

async fn write(send: &mut quinn::SendStream, message: &RelayMessage) -> Result<(), AuthFailure> {
    let frame = message.encode().map_err(|_| AuthFailure::Transport)?;
    send.write_all(&frame)
        .await
        .map_err(|_| AuthFailure::Transport)
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stored hash made with other parameters than [`HashParams::LOGIN`] (older, or weaker) is
/// replaced by one made now from the password that just logged in.
async fn rehash_if_weaker(shared: &Shared, user: &str, old: &str, password: Zeroizing<String>) {
    if !viska_passwords::needs_rehash(old, HashParams::LOGIN) {
        return;
    }
    let new = tokio::task::spawn_blocking(move || {
        viska_passwords::hash_password(&password, HashParams::LOGIN)
    })
    .await;
    if let Ok(Ok(new)) = new {
        shared.db(Op::Rehash {
            user: user.to_string(),
            old: old.to_string(),
            new,
        });
        tracing::info!(%user, "password hash renewed with the current parameters");
    }
}

/// Seconds to wait, rounded up (a lock of 1.2 s is 2 s).
fn ceil_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX)
}

/// One login attempt of `identity` from `remote`: on success the device is registered to the
/// account. A failure says nothing of why (unknown account, wrong password or code, disabled
/// account, a code used already cost the same and answer the same); it returns the seconds
/// until the account name or source may try again (0 while failures are free).
async fn login(
    shared: &Shared,
    identity: DeviceKey,
    remote: std::net::IpAddr,
    account: String,
    password: Zeroizing<String>,
    code: String,
) -> Result<Account, u32> {
    let name = normalize_name(&account);
    let name_key = name.clone().unwrap_or_else(|| account.to_lowercase());
    let source = source_key(remote);
    let now = std::time::Instant::now();
    let locked = {
        let t = shared.throttles.lock().unwrap_or_else(|e| e.into_inner());
        t.account
            .locked(&name_key, now)
            .max(t.source.locked(&source, now))
    };
    let event = |kind: &str, details: serde_json::Value| {
        AuditEvent::new(kind, name_key.clone(), hex(&identity), remote.to_string()).with(details)
    };
    if let Some(wait) = locked {
        bump(&shared.stats.login_locked);
        shared.audit(event(
            "login_locked",
            serde_json::json!({ "retry_after_secs": ceil_secs(wait) }),
        ));
        return Err(ceil_secs(wait));
    }
    let record = match &name {
        Some(n) => shared
            .ask(|reply| Op::User {
                name: n.clone(),
                reply,
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "looking up an account failed");
                None
            }),
        None => None,
    };
    // An unknown account costs one verification too, against a hash nobody knows.
    let hash = record.as_ref().map_or_else(
        || viska_passwords::dummy_hash().to_string(),
        |r| r.hash.clone(),
    );
    // Kept for a rehash after a successful login (never before: its cost would tell a right
    // password from a wrong one to someone without the code).
    let kept = password.clone();
    let password_ok = {
        let _permit = shared.verifications.acquire().await;
        bump(&shared.stats.password_checks);
        tokio::task::spawn_blocking(move || {
            viska_passwords::verify_password(&password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    };
    let unix = unix_secs();
    let outcome = match &record {
        None => Err("unknown account"),
        Some(r) if r.disabled => Err("account disabled"),
        Some(_) if !password_ok => Err("wrong password"),
        Some(r) => match &r.totp {
            None => Err("no TOTP secret enrolled"),
            Some(secret) => secret
                .verify(&code, unix, r.last_step)
                .ok_or("wrong or used one-time code"),
        },
    };
    let failure = match (outcome, record) {
        (Ok(step), Some(r)) => {
            let registered = shared
                .ask(|reply| Op::Register {
                    user: r.name.clone(),
                    key: identity,
                    step,
                    audit: event(
                        "login",
                        serde_json::json!({ "role": r.role.as_str(), "device": "registered" }),
                    ),
                    reply,
                })
                .await;
            match registered {
                Ok(Registered::Yes) => {
                    bump(&shared.stats.logins);
                    shared
                        .throttles
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .account
                        .clear(&name_key);
                    tracing::info!(device = %short(&identity), user = %r.name, "logged in: device registered");
                    rehash_if_weaker(shared, &r.name, &r.hash, kept).await;
                    return Ok((r.name, r.role));
                }
                Ok(Registered::StepTaken) => "one-time code used already",
                Ok(Registered::KeyTaken) => "device key registered to another account or revoked",
                Err(e) => {
                    tracing::error!(error = %e, "registering a device failed");
                    "database"
                }
            }
        }
        (Err(why), _) => why,
        (Ok(_), None) => "unknown account",
    };
    bump(&shared.stats.login_failures);
    let lock = {
        let mut t = shared.throttles.lock().unwrap_or_else(|e| e.into_inner());
        let a = t.account.fail(&name_key, now);
        let s = t.source.fail(&source, now);
        a.max(s)
    };
    shared.audit(event("login_failed", serde_json::json!({ "why": failure })));
    tracing::info!(device = %short(&identity), %remote, "login failed");
    match lock {
        Some(lock) => {
            bump(&shared.stats.lockouts);
            shared.audit(event(
                "lockout",
                serde_json::json!({ "secs": ceil_secs(lock) }),
            ));
            Err(ceil_secs(lock))
        }
        None => Err(0),
    }
}

/// Control messages from the device, handled in order, until the stream ends or breaks.
async fn read_loop(
    shared: &Arc<Shared>,
    identity: DeviceKey,
    conn: &quinn::Connection,
    mut recv: quinn::RecvStream,
    mut decoder: RelayDecoder,
) {
    loop {
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => shared.handle(identity, message).await,
                Ok(None) => break,
                Err(e) => {
                    bump(&shared.stats.bad_frames);
                    if decoder.has_failed() {
                        tracing::info!(device = %short(&identity), error = %e, "control stream broken");
                        conn.close(close::PROTOCOL.into(), b"control stream framing");
                        return;
                    }
                    tracing::debug!(device = %short(&identity), error = %e, "bad control frame");
                    shared.reply(
                        &identity,
                        RelayMessage::Error {
                            code: RelayErrorCode::BadRequest,
                            call: None,
                        },
                    );
                }
            }
        }
        // quinn's own buffers, not one of ours per connection: an idle device costs no read
        // buffer of the relay's.
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes),
            Ok(None) => {
                conn.close(close::PROTOCOL.into(), b"control stream finished");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Writes the device's queued control messages, in order, while this connection is its
/// current one.
async fn write_loop(
    shared: Arc<Shared>,
    identity: DeviceKey,
    conn_id: u64,
    mut send: quinn::SendStream,
    wake: Arc<Notify>,
    conn: quinn::Connection,
) {
    loop {
        tokio::select! {
            () = wake.notified() => {}
            _ = conn.closed() => return,
        }
        while let Some(message) = shared.pop(&identity, conn_id) {
            match message.encode() {
                Ok(frame) => {
                    if send.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a control message does not encode"),
            }
        }
    }
}

async fn datagram_loop(shared: Arc<Shared>, conn_id: u64, conn: quinn::Connection) {
    while let Ok(datagram) = conn.read_datagram().await {
        shared.forward(conn_id, datagram);
    }
}

/// The UDP receive buffer the relay asks for: every member's datagrams arrive on this one
/// socket, and under load the kernel drops what does not fit (the system default, about
/// 208 KiB, is what loses packets first). The kernel caps the request at
/// `net.core.rmem_max` (docs/operations.md).
const RECV_BUFFER: usize = 4 << 20;

fn bind_socket(addr: std::net::SocketAddr) -> Result<std::net::UdpSocket, RelayError> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    if let Err(e) = state.set_recv_buffer_size((&socket).into(), RECV_BUFFER) {
        tracing::warn!(error = %e, "UDP receive buffer not raised");
    }
    let granted = state.recv_buffer_size((&socket).into()).unwrap_or(0);
    if granted < RECV_BUFFER {
        tracing::info!(
            granted,
            wanted = RECV_BUFFER,
            "UDP receive buffer capped by the system (raise net.core.rmem_max)"
        );
    }
    Ok(socket)
}
