//! The QUIC driver (quinn + rustls): endpoints, connections, signaling streams and media
//! datagrams. Thin by design: protocol logic lives in the IO-free crates.
//!
//! Media travels in QUIC datagrams, signaling on one bidirectional stream per call. quinn's
//! `send_datagram` silently drops the *oldest* queued datagram when its send buffer is full;
//! [`PeerConnection::send_media`](crate::transport::PeerConnection::send_media) checks the buffer space first and refuses (and counts) the new
//! datagram instead, so no media is ever lost without a counter saying so.

mod no_ecn;
pub(crate) mod runtime;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

#[allow(unused_imports)]
pub use tls::{ALPN, LocalCertificate, cert_fingerprint};

/// Errors of the QUIC transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TLS configuration or certificate problem.
    #[error("tls: {0}")]
    Tls(String),
    /// Binding or using the UDP socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting to the peer failed.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer did not present exactly one certificate.
    #[error("peer presented no usable certificate")]
    NoPeerCertificate,
    /// The peer does not support datagrams, or this one is larger than the path allows.
    #[error("datagram of {len} bytes not sendable (max {max:?})")]
    DatagramTooLarge {
        /// Datagram length.
        len: usize,
        /// The largest datagram the connection takes now, if any.
        max: Option<usize>,
    },
    /// The datagram send buffer is full: this datagram was dropped (and counted).
    #[error("datagram send buffer full; datagram dropped")]
    DatagramBufferFull,
    /// Writing to or reading from the signaling stream failed.
    #[error("signaling stream: {0}")]
    Stream(String),
    /// An endpoint was created outside the async runtime it needs (a bug in the caller).
    #[error("no async runtime to run the endpoint on")]
    NoRuntime,
    /// The TLS session cannot export the channel binding.
    #[error("the TLS exporter is unavailable")]
    NoExporter,
}

/// How long the connection IDs are that an endpoint asks its peers to put in every packet
/// they send it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionIds {
    /// 8 random bytes (quinn's default): the peer's packets are recognised by their ID
    /// whatever address they come from, so one endpoint can hold any number of connections
    /// with one peer address, a connection survives NAT rebinding, and a server can route by
    /// ID. The default.
    #[default]
    Routable,
    /// None at all (zero-length): 8 bytes less in every packet the peer sends. The endpoint
    /// then tells its connections apart by the peer's address and port alone, which costs:
    ///
    /// - a connection does not survive the peer's address changing (a NAT rebinding its
    ///   port, a phone moving from Wi-Fi to mobile data): the peer's packets from the new
    ///   address match no connection and are dropped, and the call ends at the idle timeout;
    /// - the endpoint can hold only one connection per peer address: a second call between
    ///   the same two endpoints (two calls to one peer, or both dialing each other at once)
    ///   gets the first one's packets and fails.
    ///
    /// For a direct call between two fixed endpoints that never have two calls with each
    /// other; keep-alives (every 2 s by default) hold NAT bindings open meanwhile.
    ZeroLength,
}

/// Issues zero-length connection IDs (`ConnectionIds::ZeroLength`).
#[derive(Debug)]
struct ZeroLengthIds;

impl quinn::ConnectionIdGenerator for ZeroLengthIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&[])
    }

    fn cid_len(&self) -> usize {
        0
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Timing and buffer settings of a QUIC endpoint.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Interval of QUIC keep-alive pings (keeps NAT bindings and detects a vanished peer).
    pub keep_alive: Duration,
    /// A connection with no packets from the peer for this long is dead.
    pub idle_timeout: Duration,
    /// Bytes of outgoing datagrams quinn may queue. At 32 kbit/s Opus a 20 ms packet is about
    /// 100 bytes: 64 KiB is several seconds of media, so a full buffer means the path is stuck.
    pub datagram_send_buffer: usize,
    /// Bytes of received datagrams quinn holds until the call reads them.
    pub datagram_receive_buffer: usize,
    /// Connection IDs this endpoint asks peers to use (8 bytes by default; see
    /// `ConnectionIds` for what zero-length ones save and give up).
    pub connection_ids: ConnectionIds,
    /// Use ECN (RFC 3168): mark packets ECN-capable and report the marks received in every
    /// ACK (ACK_ECN frames, 3 counts). Off by default: the counts add 4 bytes (6 after 16 383
    /// packets) to the ACK that rides on nearly every media packet, while a 32 kbit/s voice stream gains little
    /// from early congestion signals (loss still drives quinn's congestion control).
    pub ecn: bool,
    /// Debugging only: write the TLS session secrets to the file named by the
    /// `SSLKEYLOGFILE` environment variable (NSS key log format), so that a packet capture
    /// can be decrypted (e.g. by Wireshark) down to the QUIC frames. Off by default. The
    /// secrets expose the QUIC layer only (signaling frames, and media still SFrame-encrypted
    /// end to end), but must never be enabled on a phone in use.
    pub tls_key_log: bool,
    /// How often this endpoint asks its peer to acknowledge (the QUIC ACK frequency extension,
    /// draft-ietf-quic-ack-frequency, as quinn implements it; a peer without the extension
    /// ignores it). `None`: the peer's own default (an ACK for every second packet, or after
    /// 25 ms). A talker sends 50 datagrams a second: acknowledged every second one, a silent
    /// peer sends 25 ACK-only packets a second, about 12 kbit/s.
    pub ack_frequency: Option<AckFrequency>,
}

/// What a QUIC endpoint asks its peer: acknowledge after this many ack-eliciting packets, or
/// after `max_delay` (quinn caps that at the greater of the path's RTT and 25 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckFrequency {
    /// Ack-eliciting packets the peer may receive before it must acknowledge (at least 1).
    pub packets: u32,
    /// Longest the peer may hold an acknowledgment back.
    pub max_delay: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            datagram_send_buffer: 64 * 1024,
            datagram_receive_buffer: 64 * 1024,
            connection_ids: ConnectionIds::default(),
            ecn: false,
            tls_key_log: false,
            ack_frequency: None,
        }
    }
}

impl TransportConfig {
    fn quinn(&self) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.idle_timeout)
                .map_err(|e| TransportError::Tls(format!("idle timeout: {e}")))?,
        ));
        t.datagram_send_buffer_size(self.datagram_send_buffer);
        t.datagram_receive_buffer_size(Some(self.datagram_receive_buffer));
        // A call uses one stream, for signaling, which the caller opens. A peer may open no
        // more, and what it sends on it is bounded: a signaling frame is at most 16 KiB, so
        // 64 KiB of stream window (128 KiB for the connection) lets several be in flight
        // while an unauthenticated peer cannot make us buffer megabytes (quinn's defaults
        // are 1.25 MB per stream and no connection limit).
        t.max_concurrent_bidi_streams(1u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.stream_receive_window((64u32 * 1024).into());
        t.receive_window((128u32 * 1024).into());
        if let Some(ack) = self.ack_frequency {
            let mut config = quinn::AckFrequencyConfig::default();
            config
                .ack_eliciting_threshold(ack.packets.saturating_sub(1).into())
                .max_ack_delay(Some(ack.max_delay));
            t.ack_frequency_config(Some(config));
        }
        Ok(t)
    }
}

impl TransportError {
    /// Whether the peer refused the connection outright (QUIC `CONNECTION_REFUSED`): it is
    /// there, but took no new connection (no place for another unauthenticated one, or it
    /// is shutting down).
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Self::Connection(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
        )
    }
}

/// A QUIC endpoint that can both accept and place connections.
#[derive(Debug, Clone)]
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    cert: Arc<LocalCertificate>,
    client_config: quinn::ClientConfig,
}

impl QuicEndpoint {
    /// Binds a UDP socket at `addr`.
    pub fn bind(
        addr: SocketAddr,
        cert: Arc<LocalCertificate>,
        config: &TransportConfig,
    ) -> Result<Self, TransportError> {
        let socket = std::net::UdpSocket::bind(addr)?;
        let runtime = runtime::PromptRuntime::current().ok_or(TransportError::NoRuntime)?;
        let socket = quinn::Runtime::wrap_udp_socket(&*runtime, socket)?;
        Self::with_socket(socket, cert, config)
    }

    /// Uses an existing socket abstraction (e.g. one that impairs traffic for tests).
    pub fn with_socket(
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        cert: Arc<LocalCertificate>,
        config: &TransportConfig,
    ) -> Result<Self, TransportError> {
        let transport = Arc::new(config.quinn()?);
        let server_crypto =
            QuicServerConfig::try_from(tls::server_config(&cert, config.tls_key_log)?)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_crypto =
            QuicClientConfig::try_from(tls::client_config(&cert, config.tls_key_log)?)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let runtime = runtime::PromptRuntime::current().ok_or(TransportError::NoRuntime)?;
        let socket: Arc<dyn quinn::AsyncUdpSocket> = if config.ecn {
            socket
        } else {
            Arc::new(no_ecn::NoEcn(socket))
        };
        let mut endpoint_config = quinn::EndpointConfig::default();
        if config.connection_ids == ConnectionIds::ZeroLength {
            endpoint_config.cid_generator(|| Box::new(ZeroLengthIds));
        }
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket,
            runtime,
        )?;
        Ok(Self {
            endpoint,
            cert,
            client_config,
        })
    }

    /// The local address the endpoint is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Fingerprint of this endpoint's TLS certificate.
    pub fn cert_fingerprint(&self) -> [u8; 32] {
        self.cert.fingerprint()
    }

    /// Connects to a listening peer (we are the QUIC client and the call's initiator).
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerConnection, TransportError> {
        let connecting =
            self.endpoint
                .connect_with(self.client_config.clone(), addr, "viska.invalid")?;
        let conn = connecting.await?;
        PeerConnection::new(conn, self.cert.fingerprint(), true)
    }

    /// Waits for the next incoming connection and its handshake; `None` once the endpoint is
    /// closed. A server should prefer [`accept_connecting`](Self::accept_connecting), which
    /// lets it run handshakes concurrently.
    pub async fn accept(&self) -> Option<Result<PeerConnection, TransportError>> {
        Some(self.accept_connecting().await?.1.await)
    }

    /// Waits for the next incoming connection attempt and returns its validated remote
    /// address and its handshake as a future, so that a stalled handshake holds up nobody
    /// else; dropping the future unpolled refuses the connection. A client whose address QUIC
    /// has not validated yet is first sent a Retry (address validation against spoofed
    /// floods), so the address returned is one the client can receive at.
    pub async fn accept_connecting(
        &self,
    ) -> Option<(
        SocketAddr,
        impl std::future::Future<Output = Result<PeerConnection, TransportError>> + use<>,
    )> {
        loop {
            let incoming = self.endpoint.accept().await?;
            if !incoming.remote_address_validated() {
                if let Err(e) = incoming.retry() {
                    tracing::debug!(error = %e, "retry not possible; dropping the attempt");
                }
                continue;
            }
            let fingerprint = self.cert.fingerprint();
            let from = incoming.remote_address();
            return Some((from, async move {
                let conn = incoming.await?;
                PeerConnection::new(conn, fingerprint, false)
            }));
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Testing: the QUIC client configuration this endpoint dials with (mutual TLS, ALPN
    /// `viska/1`), for tests that drive a client connection by hand.
    #[cfg(feature = "testing")]
    pub fn client_config(&self) -> quinn::ClientConfig {
        self.client_config.clone()
    }

    /// Resolves once every connection is closed and its close frames sent.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Counters of the datagram path of one connection.
#[derive(Debug, Default)]
pub struct DatagramCounters {
    sent: AtomicU64,
    dropped_buffer_full: AtomicU64,
    dropped_too_large: AtomicU64,
    received: AtomicU64,
}

/// A snapshot of [`DatagramCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Datagrams handed to quinn.
    pub sent: u64,
    /// Datagrams refused because the send buffer was full.
    pub dropped_buffer_full: u64,
    /// Datagrams refused because they exceed the path's datagram size.
    pub dropped_too_large: u64,
    /// Datagrams received.
    pub received: u64,
}

/// What one connection has put on the wire so far, all QUIC packets counted (handshake,
/// signaling stream, media datagrams, ACK-only packets, keep-alives), from quinn's own
/// connection statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WireCounters {
    /// UDP datagrams sent (each one or more coalesced QUIC packets).
    pub udp_datagrams_sent: u64,
    /// Bytes of UDP payload sent: the QUIC packets, without the UDP and IP headers.
    pub udp_bytes_sent: u64,
    /// ACK frames sent, whether alone in a packet or riding on another frame.
    pub ack_frames_sent: u64,
    /// DATAGRAM frames sent (media, one per media packet).
    pub datagram_frames_sent: u64,
    /// STREAM frames sent (signaling).
    pub stream_frames_sent: u64,
    /// PING frames sent (keep-alives).
    pub ping_frames_sent: u64,
}

impl WireCounters {
    /// IPv4 (20 bytes, no options) plus UDP (8 bytes) header per datagram.
    pub const IPV4_UDP_HEADER: u64 = 28;
    /// IPv6 (40 bytes, no extension headers) plus UDP (8 bytes) header per datagram.
    pub const IPV6_UDP_HEADER: u64 = 48;

    /// The counters from `earlier` to `self` (each saturating at 0).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            udp_datagrams_sent: self
                .udp_datagrams_sent
                .saturating_sub(earlier.udp_datagrams_sent),
            udp_bytes_sent: self.udp_bytes_sent.saturating_sub(earlier.udp_bytes_sent),
            ack_frames_sent: self.ack_frames_sent.saturating_sub(earlier.ack_frames_sent),
            datagram_frames_sent: self
                .datagram_frames_sent
                .saturating_sub(earlier.datagram_frames_sent),
            stream_frames_sent: self
                .stream_frames_sent
                .saturating_sub(earlier.stream_frames_sent),
            ping_frames_sent: self
                .ping_frames_sent
                .saturating_sub(earlier.ping_frames_sent),
        }
    }

    /// Bytes on the wire including an IP and UDP header of `ip_udp_header` bytes per datagram
    /// ([`Self::IPV4_UDP_HEADER`] or [`Self::IPV6_UDP_HEADER`]).
    pub fn wire_bytes(&self, ip_udp_header: u64) -> u64 {
        self.udp_bytes_sent
            .saturating_add(self.udp_datagrams_sent.saturating_mul(ip_udp_header))
    }

    fn from_quinn(stats: &quinn::ConnectionStats) -> Self {
        Self {
            udp_datagrams_sent: stats.udp_tx.datagrams,
            udp_bytes_sent: stats.udp_tx.bytes,
            ack_frames_sent: stats.frame_tx.acks,
            datagram_frames_sent: stats.frame_tx.datagram,
            stream_frames_sent: stats.frame_tx.stream,
            ping_frames_sent: stats.frame_tx.ping,
        }
    }
}

/// An established QUIC connection to a peer, with the certificate fingerprints both sides see.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    conn: quinn::Connection,
    local_cert: [u8; 32],
    peer_cert: [u8; 32],
    initiator: bool,
    counters: Arc<DatagramCounters>,
    /// One block that outgoing datagrams are cut from (quinn takes owned `Bytes`): once quinn
    /// has sent and dropped the earlier ones, the block is reused, so sending media does not
    /// allocate per datagram.
    send_arena: Arc<std::sync::Mutex<BytesMut>>,
}

/// Bytes of the block outgoing datagrams are cut from (a few hundred media datagrams).
const SEND_ARENA_BYTES: usize = 64 * 1024;

/// Copies `datagram` into the arena and cuts it off as owned `Bytes`.
fn cut_datagram(arena: &mut BytesMut, datagram: &[u8]) -> Bytes {
    if arena.capacity() < datagram.len() {
        // Takes the block back without allocating when every datagram cut from it is gone.
        arena.reserve(SEND_ARENA_BYTES);
    }
    arena.extend_from_slice(datagram);
    arena.split().freeze()
}

impl PeerConnection {
    fn new(
        conn: quinn::Connection,
        local_cert: [u8; 32],
        initiator: bool,
    ) -> Result<Self, TransportError> {
        let peer_cert = conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| match certs.as_slice() {
                // Exactly one self-signed certificate (the verifiers refuse chains already).
                [cert] => Some(cert_fingerprint(cert)),
                _ => None,
            })
            .ok_or(TransportError::NoPeerCertificate)?;
        Ok(Self {
            conn,
            local_cert,
            peer_cert,
            initiator,
            counters: Arc::default(),
            send_arena: Arc::new(std::sync::Mutex::new(BytesMut::with_capacity(
                SEND_ARENA_BYTES,
            ))),
        })
    }

    /// True if we placed this connection (QUIC client, call initiator).
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// SHA-256 of the certificate we presented.
    pub fn local_cert_fingerprint(&self) -> [u8; 32] {
        self.local_cert
    }

    /// SHA-256 of the certificate the peer presented, as we saw it.
    pub fn peer_cert_fingerprint(&self) -> [u8; 32] {
        self.peer_cert
    }

    /// The value that binds an end-to-end handshake to this TLS session:
    /// `TLS-Exporter("EXPORTER-Channel-Binding", "", 32)` (RFC 9266's `tls-exporter`). Both
    /// ends of one TLS session compute the same bytes; a TLS-terminating man in the middle
    /// holds two sessions and cannot make them agree.
    pub fn tls_exporter(&self) -> Result<[u8; 32], TransportError> {
        let mut out = [0u8; 32];
        self.conn
            .export_keying_material(&mut out, b"EXPORTER-Channel-Binding", b"")
            .map_err(|_| TransportError::NoExporter)?;
        Ok(out)
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Opens the call's signaling stream (initiator side).
    pub async fn open_signaling(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        Ok(self.conn.open_bi().await?)
    }

    /// Accepts the call's signaling stream (responder side).
    pub async fn accept_signaling(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        Ok(self.conn.accept_bi().await?)
    }

    /// Sends one media datagram. Never silently displaces queued media: when the send buffer
    /// cannot take it, the datagram is refused and counted.
    pub fn send_media(&self, datagram: &[u8]) -> Result<(), TransportError> {
        let max = self.conn.max_datagram_size();
        if max.is_none_or(|m| datagram.len() > m) {
            self.counters
                .dropped_too_large
                .fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::DatagramTooLarge {
                len: datagram.len(),
                max,
            });
        }
        if self.conn.datagram_send_buffer_space() < datagram.len() {
            self.counters
                .dropped_buffer_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::DatagramBufferFull);
        }
        let bytes = cut_datagram(&mut crate::lock(&self.send_arena), datagram);
        match self.conn.send_datagram(bytes) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(quinn::SendDatagramError::ConnectionLost(e)) => Err(e.into()),
            Err(e) => {
                self.counters
                    .dropped_too_large
                    .fetch_add(1, Ordering::Relaxed);
                Err(TransportError::Stream(e.to_string()))
            }
        }
    }

    /// Waits for the next media datagram.
    pub async fn recv_media(&self) -> Result<Bytes, TransportError> {
        let d = self.conn.read_datagram().await?;
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        Ok(d)
    }

    /// Datagram counters so far.
    pub fn datagram_stats(&self) -> DatagramStats {
        DatagramStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            dropped_buffer_full: self.counters.dropped_buffer_full.load(Ordering::Relaxed),
            dropped_too_large: self.counters.dropped_too_large.load(Ordering::Relaxed),
            received: self.counters.received.load(Ordering::Relaxed),
        }
    }

    /// What this connection has sent on the wire so far, every QUIC packet counted.
    pub fn wire_counters(&self) -> WireCounters {
        WireCounters::from_quinn(&self.conn.stats())
    }

    /// Closes the connection with an application reason.
    pub fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }
}

#[cfg(test)]
mod arena_tests {
    use super::*;

    #[test]
    fn datagrams_reuse_one_block_once_sent() {
        let mut arena = BytesMut::with_capacity(SEND_ARENA_BYTES);
        let first = cut_datagram(&mut arena, &[7u8; 100]);
        let block = first.as_ptr() as usize;
        drop(first);
        let in_block = |b: &Bytes| {
            let p = b.as_ptr() as usize;
            p >= block && p + b.len() <= block + SEND_ARENA_BYTES
        };
        // Thousands of datagrams, each dropped once "sent": all cut from the same block.
        for i in 0..10_000u32 {
            let payload = i.to_be_bytes().repeat(25);
            let d = cut_datagram(&mut arena, &payload);
            assert_eq!(&d[..], &payload[..]);
            assert!(in_block(&d), "datagram {i} left the block");
        }
        // While earlier datagrams are still held, a fresh block is used and nothing is
        // overwritten.
        let held: Vec<Bytes> = (0..2_000u32)
            .map(|i| cut_datagram(&mut arena, &i.to_be_bytes().repeat(25)))
            .collect();
        for (i, d) in (0..2_000u32).zip(&held) {
            assert_eq!(&d[..], &i.to_be_bytes().repeat(25)[..]);
        }
        assert!(held.iter().any(|d| !in_block(d)));
    }
}
