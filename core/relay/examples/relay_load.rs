//! What forwarding group-call media costs the relay, against a bare quinn forwarder with the
//! same topology, in one run: CPU per forwarded datagram, loss, and memory per participant,
//! over a sweep of participant counts.
//!
//! ```sh
//! cargo run --release -p viska-relay --example relay_load [SECS] [REPS] [PARTICIPANTS...]
//! ```
//!
//! Defaults: 5 s measured per run, 3 runs of each server per size, sizes 10 50 100 150 200 250
//! 300 400 500 600; the sweep stops after the first size whose median relay loss is above
//! 0.5 %.
//!
//! Each run starts the server in a child process (this example, `serve relay` or `serve quinn`)
//! so that its CPU time (utime + stime) and RSS can be read from `/proc/<pid>` apart from the
//! simulated devices, which run here:
//!
//! - `relay`: a [`viska_relay::Relay`] on loopback with a fresh data directory. Every device is
//!   a real QUIC connection that authenticates like a phone (signature over the exporter and
//!   the nonce). In each call of five, the first device sends `CreateCall` and one `Commit`
//!   adding the other four (placeholder commit and Welcome bytes: the relay does not parse
//!   them); each added device is a member once its Welcome arrives.
//! - `quinn`: a bare quinn server with the same TLS and transport settings that groups the
//!   connections in fives as they arrive and sends every datagram it reads (the same `Bytes`)
//!   to the other four. No authentication, no state, no routing.
//!
//! Then every device sends one datagram each 20 ms: route, an SFrame header with the KID of its
//! leaf at epoch 1 (`leaf << 3 | 1`, `docs/protocol-group.md`) and a 2-byte counter, and 90
//! bytes of payload. Loss is `1 - received / (sent × 4)`; the CPU per forwarded datagram is the
//! server's CPU time over the measured window divided by the datagram copies it handed to quinn
//! in that window. Relay and quinn runs alternate so they share the machine's noise; the
//! summary lines give medians. Memory per participant is the server's RSS with every device in
//! its call, less its RSS before the first connection, over the participants.
//!
//! The devices run in this process on the same machine: what they spend (reported as
//! `clients`) is CPU the server does not get.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use viska_e2ee::identity::IdentityKeyPair;
use viska_proto::relay::{
    AUTH_EXPORTER_LABEL, CallRef, RELAY_ALPN, RelayDecoder, RelayMessage, auth_transcript,
    encode_route,
};
use viska_relay::{Relay, RelayConfig};
use viska_sframe::{KeyId, SframeHeader};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

const CALL_SIZE: usize = 5;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
const PAYLOAD: usize = 90;
const WARMUP: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_millis(500);
const GUARD: Duration = Duration::from_secs(60);
/// Calls set up at once.
const SETUP_CONCURRENCY: usize = 8;
/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;
/// The relay's defaults, which the bare server copies.
const DATAGRAM_BUFFER: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn err(what: impl Into<String>) -> Error {
    what.into().into()
}

async fn guard<T>(what: &str, f: impl Future<Output = T>) -> Res<T> {
    tokio::time::timeout(GUARD, f)
        .await
        .map_err(|_| err(format!("timed out waiting for {what}")))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("serve") {
        let mode = args.get(1).map(String::as_str).unwrap_or("relay");
        return runtime.block_on(serve(mode == "quinn"));
    }
    let secs: u64 = args.first().map_or(Ok(5), |s| s.parse())?;
    let reps: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let mut sizes: Vec<usize> = args
        .iter()
        .skip(2)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = vec![10, 50, 100, 150, 200, 250, 300, 400, 500, 600];
    }
    runtime.block_on(drive(Duration::from_secs(secs), reps.max(1), &sizes))
}

// ---------------------------------------------------------------------------------------------
// The servers (child process).

/// Runs one server until stdin closes; answers each `stats` line on stdin with its counters.
async fn serve(bare: bool) -> Res<()> {
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if lines_tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    if bare {
        let forwarded = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (endpoint, fingerprint) = bare_endpoint()?;
        println!("ready {} {}", endpoint.local_addr()?, to_hex(&fingerprint));
        tokio::spawn(bare_forwarder(
            endpoint.clone(),
            Arc::clone(&forwarded),
            Arc::clone(&failed),
        ));
        while lines.recv().await.is_some() {
            let f = forwarded.load(Ordering::Relaxed);
            let x = failed.load(Ordering::Relaxed);
            println!("stats {f} {x} 0 0 0 0");
        }
        endpoint.close(0u32.into(), b"done");
    } else {
        let dir = tempfile::tempdir()?;
        let mut config = RelayConfig::new("127.0.0.1:0".parse()?, dir.path().to_path_buf());
        config.db_key = Some(viska_relay::DbKey::generate());
        // Every simulated device comes from the one loopback address: the per-source bound on
        // unauthenticated connections would refuse them.
        config.max_unauthenticated_per_source = config.max_unauthenticated;
        // Nor may the per-source handshake rate: hundreds of devices connect from it at once.
        config.handshake_rate.burst = 100_000;
        config.handshake_rate.per_second = 100_000;
        let relay = Relay::start(config).await?;
        println!(
            "ready {} {}",
            relay.local_addr(),
            to_hex(&relay.fingerprint())
        );
        while lines.recv().await.is_some() {
            let s = relay.stats();
            println!(
                "stats {} {} {} {} {} {}",
                s.datagrams_forwarded,
                s.dropped_slow_receiver,
                s.dropped_malformed,
                s.dropped_not_member,
                s.dropped_before_join,
                s.dropped_no_route
            );
        }
        relay.shutdown().await;
    }
    Ok(())
}

/// A quinn server with the relay's TLS (self-signed certificate, TLS 1.3, its ALPN) and
/// transport settings.
fn bare_endpoint() -> Res<(quinn::Endpoint, [u8; 32])> {
    let certified = rcgen::generate_simple_self_signed(vec!["viska-relay.invalid".into()])?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let fingerprint: [u8; 32] = Sha256::digest(&cert).into();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![RELAY_ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(IDLE_TIMEOUT)?));
    transport.datagram_send_buffer_size(DATAGRAM_BUFFER);
    transport.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    Ok((endpoint, fingerprint))
}

/// Groups connections in fives as their handshakes complete; each datagram goes to the other
/// four of its group.
async fn bare_forwarder(
    endpoint: quinn::Endpoint,
    forwarded: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<quinn::Connection>();
    let grouper = tokio::spawn(async move {
        // The five devices of a call share one client socket: group by it, as the relay's
        // calls do, so both servers send each datagram's copies to the same sockets.
        let mut forming: HashMap<SocketAddr, Vec<quinn::Connection>> = HashMap::new();
        while let Some(conn) = rx.recv().await {
            let group = forming.entry(conn.remote_address()).or_default();
            group.push(conn);
            if group.len() < CALL_SIZE {
                continue;
            }
            let members = Arc::new(std::mem::take(group));
            for i in 0..CALL_SIZE {
                let members = Arc::clone(&members);
                let forwarded = Arc::clone(&forwarded);
                let failed = Arc::clone(&failed);
                tokio::spawn(async move {
                    let Some(me) = members.get(i) else { return };
                    while let Ok(datagram) = me.read_datagram().await {
                        for (j, other) in members.iter().enumerate() {
                            if j == i {
                                continue;
                            }
                            if other.send_datagram(datagram.clone()).is_ok() {
                                forwarded.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        }
    });
    while let Some(incoming) = endpoint.accept().await {
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                let _ = tx.send(conn);
            }
        });
    }
    grouper.abort();
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Res<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return Err(err("bad fingerprint"));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(|| err("hex"))?, 16)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| err("stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Res<u64> {
        Ok(fields
            .get(n - 3)
            .ok_or_else(|| err("stat field"))?
            .parse()?)
    };
    Ok((field(14)? + field(15)?) as f64 / TICKS_PER_SECOND)
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| err("VmRSS"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| err("VmRSS value"))?
        .parse()?)
}

/// The machine's (busy, total) jiffies from `/proc/stat`.
fn machine_jiffies() -> Res<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or_else(|| err("/proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Datagrams the kernel dropped at the UDP socket bound to `port` (full receive buffer).
fn socket_drops(port: u16) -> Res<u64> {
    let table = std::fs::read_to_string("/proc/net/udp")?;
    let local = format!(":{port:04X}");
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1).is_some_and(|a| a.ends_with(&local)) {
            return Ok(fields.last().ok_or_else(|| err("drops"))?.parse()?);
        }
    }
    Ok(0)
}

/// The kernel's count of UDP datagrams dropped for a full socket receive buffer (all sockets).
fn udp_rcvbuf_errors() -> Res<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().ok_or_else(|| err("Udp names"))?,
        udp.next().ok_or_else(|| err("Udp values"))?,
    );
    let at = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .ok_or_else(|| err("RcvbufErrors"))?;
    Ok(values
        .split_whitespace()
        .nth(at)
        .ok_or_else(|| err("RcvbufErrors value"))?
        .parse()?)
}

// ---------------------------------------------------------------------------------------------
// The devices (this process).

/// A server child process.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    fingerprint: [u8; 32],
}

impl Server {
    fn start(bare: bool) -> Res<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", if bare { "quinn" } else { "relay" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().ok_or_else(|| err("stdout"))?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ready") {
            return Err(err(format!("server said {line:?}")));
        }
        let addr = words.next().ok_or_else(|| err("address"))?.parse()?;
        let fingerprint = from_hex(words.next().ok_or_else(|| err("fingerprint"))?)?;
        Ok(Self {
            child,
            stdin,
            stdout,
            addr,
            fingerprint,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's counters: forwarded, then its drops (relay: slow receiver, malformed, not
    /// a member, before join, no route; quinn: refused sends).
    fn stats(&mut self) -> Res<Vec<u64>> {
        let stdin = self.stdin.as_mut().ok_or_else(|| err("stdin closed"))?;
        writeln!(stdin, "stats")?;
        stdin.flush()?;
        let mut line = String::new();
        tokio::task::block_in_place(|| self.stdout.read_line(&mut line))?;
        line.split_whitespace()
            .skip(1)
            .map(|w| w.parse().map_err(Error::from))
            .collect()
    }

    async fn stop(mut self) -> Res<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Accepts the server's certificate only if its SHA-256 is the pinned one.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity).into();
        if intermediates.is_empty() && seen == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One client endpoint (one UDP socket) for the five devices of a call.
fn client_endpoint(fingerprint: [u8; 32]) -> Res<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        fingerprint,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider) as Arc<CryptoProvider>)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
    tls.alpn_protocols = vec![RELAY_ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(IDLE_TIMEOUT)?));
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A device's connection, ready to send media.
struct Member {
    conn: quinn::Connection,
    route: u32,
    leaf: u64,
    /// The control stream: dropping it would finish it, and the relay closes the connection.
    _control: Option<Control>,
}

/// The control stream the relay opened.
struct Control {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: RelayDecoder,
}

impl Control {
    async fn send(&mut self, m: &RelayMessage) -> Res<()> {
        self.send.write_all(&m.encode()?).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Res<RelayMessage> {
        let mut buf = [0u8; 4096];
        guard("a control message", async {
            loop {
                if let Some(m) = self.decoder.next_message()? {
                    return Ok(m);
                }
                match self.recv.read(&mut buf).await? {
                    Some(n) => self.decoder.push(buf.get(..n).unwrap_or_default()),
                    None => return Err(err("the relay closed the control stream")),
                }
            }
        })
        .await?
    }
}

/// Connects and authenticates one device: the challenge, `Auth`, `AuthOk`.
async fn login(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Res<(quinn::Connection, Control, IdentityKeyPair)> {
    let conn = guard(
        "the handshake",
        endpoint.connect(addr, "viska-relay.invalid")?,
    )
    .await??;
    let (send, recv) = guard("the control stream", conn.accept_bi()).await??;
    let mut control = Control {
        send,
        recv,
        decoder: RelayDecoder::new(),
    };
    let RelayMessage::Challenge { nonce } = control.recv().await? else {
        return Err(err("expected a challenge"));
    };
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, AUTH_EXPORTER_LABEL, b"")
        .map_err(|_| err("exporter"))?;
    let id = IdentityKeyPair::generate(&mut rand::rng());
    let signature = id.sign(&auth_transcript(&exporter, &nonce));
    control
        .send(&RelayMessage::Auth {
            identity: id.public().to_bytes(),
            signature,
        })
        .await?;
    match control.recv().await? {
        RelayMessage::AuthOk => Ok((conn, control, id)),
        other => Err(err(format!("expected AuthOk, got {other:?}"))),
    }
}

/// Five devices through the relay: the first opens a call and adds the other four in one
/// commit; each is a member once its Welcome arrives.
async fn relay_call(endpoint: quinn::Endpoint, addr: SocketAddr) -> Res<Vec<Member>> {
    let mut devices = Vec::with_capacity(CALL_SIZE);
    for _ in 0..CALL_SIZE {
        devices.push(login(&endpoint, addr).await?);
    }
    let mut call = [0u8; 16];
    rand::RngExt::fill(&mut rand::rng(), &mut call);
    let call = CallRef(call);
    let added = devices
        .iter()
        .skip(1)
        .map(|(_, _, id)| id.public().to_bytes())
        .collect();
    let (_, creator, _) = devices.first_mut().ok_or_else(|| err("no creator"))?;
    creator.send(&RelayMessage::CreateCall { call }).await?;
    let route = match creator.recv().await? {
        RelayMessage::CallOpened { route, .. } => route,
        other => return Err(err(format!("expected CallOpened, got {other:?}"))),
    };
    creator
        .send(&RelayMessage::Commit {
            call,
            epoch: 0,
            commit: b"placeholder commit".to_vec(),
            welcome: Some(b"placeholder welcome".to_vec()),
            added,
            removed: vec![],
        })
        .await?;
    match creator.recv().await? {
        RelayMessage::CommitResult { accepted: true, .. } => {}
        other => return Err(err(format!("expected the commit accepted, got {other:?}"))),
    }
    let mut members = Vec::with_capacity(CALL_SIZE);
    for (leaf, (conn, mut control, _)) in devices.into_iter().enumerate() {
        if leaf > 0 {
            match control.recv().await? {
                RelayMessage::Welcome { epoch: 1, .. } => {}
                other => return Err(err(format!("expected a Welcome, got {other:?}"))),
            }
        }
        members.push(Member {
            conn,
            route,
            leaf: leaf as u64,
            _control: Some(control),
        });
    }
    Ok(members)
}

/// Five devices connected to the bare server (which groups them as they arrive).
async fn bare_call(endpoint: quinn::Endpoint, addr: SocketAddr) -> Res<Vec<Member>> {
    let mut members = Vec::with_capacity(CALL_SIZE);
    for leaf in 0..CALL_SIZE as u64 {
        let conn = guard(
            "the handshake",
            endpoint.connect(addr, "viska-relay.invalid")?,
        )
        .await??;
        members.push(Member {
            conn,
            route: 0,
            leaf,
            _control: None,
        });
    }
    Ok(members)
}

/// A media datagram: route, SFrame header (KID of `leaf` at epoch 1, counter), payload.
fn media(route: u32, leaf: u64, ctr: u64) -> Res<Bytes> {
    let mut out = Vec::with_capacity(4 + 17 + PAYLOAD);
    encode_route(route, &mut out)?;
    let header = SframeHeader {
        kid: KeyId(leaf << 3 | 1),
        ctr,
    };
    let mut h = [0u8; 17];
    let n = header.encode(&mut h)?;
    out.extend_from_slice(h.get(..n).unwrap_or_default());
    out.resize(out.len() + PAYLOAD, 0x5a);
    Ok(Bytes::from(out))
}

#[derive(Clone, Copy, Debug, Default)]
struct RunResult {
    /// Server CPU µs per forwarded datagram copy.
    cpu_us: f64,
    /// Server CPU, in cores, over the window.
    server_cores: f64,
    /// This process's CPU (the devices), in cores.
    client_cores: f64,
    /// The whole machine's busy share over the window (0..1).
    machine_busy: f64,
    loss: f64,
    /// Server RSS growth per participant, KiB.
    kib_per_participant: f64,
    /// Server RSS with everyone connected, KiB.
    rss_kib: u64,
    /// Server-side drops over the run.
    drops: u64,
    /// UDP datagrams the kernel dropped for full receive buffers over the run (any socket).
    udp_drops: u64,
    /// Of those, at the server's socket.
    server_socket_drops: u64,
    setup_secs: f64,
}

async fn run(bare: bool, n: usize, window: Duration) -> Res<RunResult> {
    let mut server = Server::start(bare)?;
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(pid)?;
    let udp0 = udp_rcvbuf_errors()?;
    let port = server.addr.port();
    let socket0 = socket_drops(port)?;
    let setup = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let mut calls = tokio::task::JoinSet::new();
    let mut endpoints = Vec::new();
    for _ in 0..n / CALL_SIZE {
        let endpoint = client_endpoint(server.fingerprint)?;
        endpoints.push(endpoint.clone());
        let addr = server.addr;
        let semaphore = Arc::clone(&semaphore);
        calls.spawn(async move {
            let _permit = semaphore.acquire().await?;
            if bare {
                bare_call(endpoint, addr).await
            } else {
                relay_call(endpoint, addr).await
            }
        });
    }
    let mut members = Vec::with_capacity(n);
    while let Some(call) = calls.join_next().await {
        members.extend(call??);
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_loaded = rss_kib(pid)?;

    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, m) in members.iter().enumerate() {
        let conn = m.conn.clone();
        let received = Arc::clone(&received);
        tasks.spawn(async move {
            while conn.read_datagram().await.is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), Error>(())
        });
        let conn = m.conn.clone();
        let (route, leaf) = (m.route, m.leaf);
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        // Spread the senders over the 20 ms.
        let phase = FRAME_INTERVAL * (i as u32 % 20) / 20;
        tasks.spawn(async move {
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(FRAME_INTERVAL);
            let mut ctr = 256u64;
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                sent.fetch_add(1, Ordering::Relaxed);
                let _ = conn.send_datagram(media(route, leaf, ctr)?);
                ctr += 1;
            }
        });
    }
    tokio::time::sleep(WARMUP).await;
    let before = server.stats()?;
    let (cpu0, own0, mach0, t0) = (
        cpu_seconds(pid)?,
        cpu_seconds(std::process::id())?,
        machine_jiffies()?,
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let after = server.stats()?;
    let (cpu1, own1, mach1, wall) = (
        cpu_seconds(pid)?,
        cpu_seconds(std::process::id())?,
        machine_jiffies()?,
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(DRAIN).await;
    let end = server.stats()?;
    let udp_drops = udp_rcvbuf_errors()? - udp0;
    let server_socket_drops = socket_drops(port)? - socket0;
    let sent = sent.load(Ordering::Relaxed);
    let received = received.load(Ordering::Relaxed);
    for m in &members {
        m.conn.close(0u32.into(), b"done");
    }
    for e in &endpoints {
        e.close(0u32.into(), b"done");
    }
    tasks.abort_all();
    drop(members);
    server.stop().await?;

    let forwarded = after.first().copied().unwrap_or(0) - before.first().copied().unwrap_or(0);
    let expected = sent as f64 * (CALL_SIZE - 1) as f64;
    Ok(RunResult {
        cpu_us: (cpu1 - cpu0) * 1e6 / forwarded.max(1) as f64,
        server_cores: (cpu1 - cpu0) / wall,
        client_cores: (own1 - own0) / wall,
        machine_busy: (mach1.0 - mach0.0) as f64 / (mach1.1 - mach0.1).max(1) as f64,
        loss: if expected > 0.0 {
            (1.0 - received as f64 / expected).max(0.0)
        } else {
            0.0
        },
        kib_per_participant: rss_loaded.saturating_sub(rss_idle) as f64 / n.max(1) as f64,
        rss_kib: rss_loaded,
        drops: end.iter().skip(1).sum(),
        udp_drops,
        server_socket_drops,
        setup_secs,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn print_run(name: &str, n: usize, r: &RunResult) {
    println!(
        "run {name:5} n={n:4} cpu/dgram={:6.2}us server={:.2} cores clients={:.2} cores machine={:3.0}% loss={:.3}% drops={} udp-drops={} (server socket {}) rss={} KiB mem/participant={:.1} KiB setup={:.1}s",
        r.cpu_us,
        r.server_cores,
        r.client_cores,
        r.machine_busy * 100.0,
        r.loss * 100.0,
        r.drops,
        r.udp_drops,
        r.server_socket_drops,
        r.rss_kib,
        r.kib_per_participant,
        r.setup_secs,
    );
}

async fn drive(window: Duration, reps: usize, sizes: &[usize]) -> Res<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "relay_load: {} s measured per run, {reps} runs of each server per size, calls of {CALL_SIZE}, one {}-byte payload each {} ms; load average before: {}",
        window.as_secs(),
        PAYLOAD,
        FRAME_INTERVAL.as_millis(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for &n in sizes {
        let n = n.div_ceil(CALL_SIZE) * CALL_SIZE;
        let (mut relay, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let r = run(false, n, window).await?;
            print_run("relay", n, &r);
            relay.push(r);
            let b = run(true, n, window).await?;
            print_run("quinn", n, &b);
            bare.push(b);
        }
        let m = |v: &[RunResult], f: fn(&RunResult) -> f64| median(v.iter().map(f).collect());
        let (rc, bc) = (m(&relay, |r| r.cpu_us), m(&bare, |r| r.cpu_us));
        let relay_loss = m(&relay, |r| r.loss);
        println!(
            "summary n={n} relay: {rc:.2} us/dgram, {:.2} cores, loss {:.3}%, {:.1} KiB/participant | quinn: {bc:.2} us/dgram, {:.2} cores, loss {:.3}%, {:.1} KiB/participant | ratio {:.2} | clients {:.2} cores, machine {:.0}% busy",
            m(&relay, |r| r.server_cores),
            relay_loss * 100.0,
            m(&relay, |r| r.kib_per_participant),
            m(&bare, |r| r.server_cores),
            m(&bare, |r| r.loss) * 100.0,
            m(&bare, |r| r.kib_per_participant),
            rc / bc.max(f64::MIN_POSITIVE),
            m(&relay, |r| r.client_cores),
            m(&relay, |r| r.machine_busy) * 100.0,
        );
        if relay_loss > 0.005 {
            println!("stop: the relay's median loss at {n} participants is above 0.5 %");
            break;
        }
    }
    Ok(())
}
