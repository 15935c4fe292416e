//! The QUIC side: the endpoint, and per connection the authentication, the control stream's
//! reader and writer, and the datagram reader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use tokio::sync::Notify;
use viska_e2ee::identity::PublicIdentity;
use viska_proto::relay::{
    AUTH_EXPORTER_LABEL, RELAY_ALPN, RelayDecoder, RelayErrorCode, RelayMessage, auth_transcript,
};

use crate::places::{Place, SourceFull};
use crate::state::{Shared, close, short, spawn_database};
use crate::{DeviceKey, RelayConfig, RelayError, RelayHandle, bump, cert, db};

/// Bytes of received datagrams quinn holds per connection until the relay forwards them.
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// Bytes read from the control stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A running relay's parts.
pub(crate) struct Running {
    pub(crate) local_addr: SocketAddr,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    accept: tokio::task::JoinHandle<()>,
    db_thread: std::thread::JoinHandle<()>,
}

impl Running {
    pub(crate) async fn shutdown(self) {
        let _ = self.shared.shutdown.send(true);
        self.accept.abort();
        self.endpoint
            .close(close::SHUTDOWN.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
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
    tls.alpn_protocols = vec![RELAY_ALPN.to_vec()];
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
    let (identity, database, calls) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let identity = cert::load_or_generate(&dir)?;
        let (database, calls) = db::open(&dir)?;
        Ok::<_, RelayError>((identity, database, calls))
    })
    .await
    .map_err(|e| RelayError::Task(e.to_string()))??;
    let fingerprint = identity.fingerprint();
    let socket = bind_socket(config.bind)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config(&identity, &config)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let local_addr = endpoint.local_addr()?;
    let (db_tx, db_thread) = spawn_database(database)?;
    let loaded = calls.len();
    let shared = Shared::new(config, db_tx, calls);
    let accept = tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared)));
    tracing::info!(%local_addr, calls = loaded, "relay listening");
    Ok(RelayHandle {
        inner: Running {
            local_addr,
            fingerprint,
            shared,
            endpoint,
            accept,
            db_thread,
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

/// Why a connection's authentication failed.
#[derive(Debug)]
enum AuthFailure {
    /// The stream or connection failed: nothing to answer.
    Transport,
    /// Refused: `Error{Unauthenticated}` goes back before the close.
    Refused(&'static str, quinn::SendStream),
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
    let alpn_ok = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .is_some_and(|d| d.protocol.as_deref() == Some(RELAY_ALPN));
    if !alpn_ok {
        bump(&shared.stats.auth_failures);
        conn.close(
            close::UNAUTHENTICATED.into(),
            b"ALPN viska-relay/1 required",
        );
        return;
    }
    let mut decoder = RelayDecoder::new();
    let auth = bounded(deadline, &place, authenticate(&shared, &conn, &mut decoder)).await;
    // Authenticated or not, this connection no longer waits for a place's worth of work.
    drop(place);
    let (identity, send, recv) = match auth {
        Ok(Ok(ok)) => ok,
        Ok(Err(AuthFailure::Refused(why, mut send))) => {
            bump(&shared.stats.auth_failures);
            tracing::info!(remote = %conn.remote_address(), why, "authentication refused");
            let refusal = RelayMessage::Error {
                code: RelayErrorCode::Unauthenticated,
                call: None,
            };
            if let Ok(frame) = refusal.encode() {
                let _ = send.write_all(&frame).await;
            }
            let _ = send.finish();
            // Let the refusal arrive before the close (bounded).
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            conn.close(close::UNAUTHENTICATED.into(), b"unauthenticated");
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
    let conn_id = shared.register(identity, conn.clone(), Arc::clone(&wake));
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

/// The control stream and the challenge on it, then exactly one `Auth` with a valid signature over this connection's
/// exporter and the nonce, from an admitted identity.
async fn authenticate(
    shared: &Shared,
    conn: &quinn::Connection,
    decoder: &mut RelayDecoder,
) -> Result<(DeviceKey, quinn::SendStream, quinn::RecvStream), AuthFailure> {
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
    let mut buf = vec![0u8; READ_CHUNK];
    let first = loop {
        match decoder.next_message() {
            Ok(Some(m)) => break m,
            Ok(None) => {}
            Err(_) => return Err(AuthFailure::Refused("malformed frame", send)),
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => decoder.push(&buf[..n]),
            Ok(None) | Err(_) => return Err(AuthFailure::Transport),
        }
    };
    let RelayMessage::Auth {
        identity,
        signature,
    } = first
    else {
        bump(&shared.stats.bad_frames);
        return Err(AuthFailure::Refused("a message before Auth", send));
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
        return Err(AuthFailure::Refused("bad signature", send));
    }
    if !shared.config.admission.admit(&identity) {
        return Err(AuthFailure::Refused("identity not admitted", send));
    }
    Ok((identity, send, recv))
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
