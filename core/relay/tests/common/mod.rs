//! The harness of the relay tests: a minimal device written here (quinn and the codec), the
//! pinned-certificate verifier, and helpers that wait on messages, never sleeping.

#![allow(dead_code, unused_imports, clippy::unwrap_used, missing_docs)]

pub(crate) use std::future::Future;
pub(crate) use std::net::SocketAddr;
pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration;

pub(crate) use bytes::Bytes;
pub(crate) use quinn::crypto::rustls::QuicClientConfig;
pub(crate) use rustls::DigitallySignedStruct;
pub(crate) use rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
pub(crate) use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
pub(crate) use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
pub(crate) use sha2::{Digest, Sha256};
pub(crate) use viska_e2ee::identity::IdentityKeyPair;
pub(crate) use viska_proto::relay::{
    AUTH_EXPORTER_LABEL, CallRef, DeviceKey, RELAY_ALPN, RelayDecoder, RelayErrorCode,
    RelayMessage, auth_transcript, encode_route,
};
pub(crate) use viska_relay::{Relay, RelayConfig, RelayHandle, RelayStats};
pub(crate) use viska_sframe::{KeyId, SframeHeader};

pub(crate) const GUARD: Duration = Duration::from_secs(10);

pub(crate) async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits until the relay's counters satisfy `cond` (yielding, never sleeping).
pub(crate) async fn until(relay: &RelayHandle, what: &str, cond: impl Fn(&RelayStats) -> bool) {
    guard(what, async {
        while !cond(&relay.stats()) {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Accepts the relay's certificate only if its SHA-256 is the pinned one.
#[derive(Debug)]
pub(crate) struct Pinned {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
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

/// A QUIC connection to the relay, the control stream the relay opened, and the challenge.
pub(crate) struct Link {
    pub(crate) _endpoint: quinn::Endpoint,
    pub(crate) conn: quinn::Connection,
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    pub(crate) decoder: RelayDecoder,
    pub(crate) nonce: [u8; 32],
}

pub(crate) async fn connect(addr: SocketAddr, fingerprint: [u8; 32]) -> Result<Link, String> {
    connect_from("127.0.0.1", addr, fingerprint).await
}

/// A connection from the loopback address `local` (any of 127/8 on Linux: another source).
pub(crate) async fn connect_from(
    local: &str,
    addr: SocketAddr,
    fingerprint: [u8; 32],
) -> Result<Link, String> {
    connect_with(local, addr, fingerprint, &[RELAY_ALPN]).await
}

/// A connection from `local` offering the ALPNs `alpns`.
pub(crate) async fn connect_with(
    local: &str,
    addr: SocketAddr,
    fingerprint: [u8; 32],
    alpns: &[&[u8]],
) -> Result<Link, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        fingerprint,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider) as Arc<CryptoProvider>)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(local.parse().unwrap(), 0)).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(addr, "viska-relay.invalid")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let mut link = Link {
        _endpoint: endpoint,
        conn,
        send,
        recv,
        decoder: RelayDecoder::new(),
        nonce: [0; 32],
    };
    let RelayMessage::Challenge { nonce } = link.recv().await else {
        panic!("expected a challenge");
    };
    link.nonce = nonce;
    Ok(link)
}

impl Link {
    pub(crate) fn exporter(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.conn
            .export_keying_material(&mut out, AUTH_EXPORTER_LABEL, b"")
            .unwrap();
        out
    }

    pub(crate) async fn send(&mut self, m: &RelayMessage) {
        self.send.write_all(&m.encode().unwrap()).await.unwrap();
    }

    pub(crate) async fn try_recv(&mut self) -> Option<RelayMessage> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.next_message().unwrap() {
                return Some(m);
            }
            match self.recv.read(&mut buf).await {
                Ok(Some(n)) => self.decoder.push(&buf[..n]),
                _ => return None,
            }
        }
    }

    pub(crate) async fn recv(&mut self) -> RelayMessage {
        guard("a control message", self.try_recv())
            .await
            .expect("the relay closed the control stream")
    }
}

/// An authenticated device.
pub(crate) struct Device {
    pub(crate) link: Link,
    pub(crate) id: IdentityKeyPair,
}

pub(crate) fn identity() -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut rand::rng())
}

impl Device {
    pub(crate) async fn login(relay: &RelayHandle, id: IdentityKeyPair) -> Self {
        Self::login_from("127.0.0.1", relay, id).await
    }

    pub(crate) async fn login_from(local: &str, relay: &RelayHandle, id: IdentityKeyPair) -> Self {
        Self::login_at(local, relay.local_addr(), relay, id).await
    }

    /// Logs in at the relay's address `addr` (one of [`RelayHandle::local_addrs`]).
    pub(crate) async fn login_at(
        local: &str,
        addr: SocketAddr,
        relay: &RelayHandle,
        id: IdentityKeyPair,
    ) -> Self {
        let mut link = connect_from(local, addr, relay.fingerprint())
            .await
            .unwrap();
        let signature = id.sign(&auth_transcript(&link.exporter(), &link.nonce));
        link.send(&RelayMessage::Auth {
            identity: id.public().to_bytes(),
            signature,
        })
        .await;
        assert_eq!(link.recv().await, RelayMessage::AuthOk);
        Self { link, id }
    }

    pub(crate) async fn new(relay: &RelayHandle) -> Self {
        Self::login(relay, identity()).await
    }

    pub(crate) fn key(&self) -> DeviceKey {
        self.id.public().to_bytes()
    }

    pub(crate) async fn send(&mut self, m: RelayMessage) {
        self.link.send(&m).await;
    }

    pub(crate) async fn recv(&mut self) -> RelayMessage {
        self.link.recv().await
    }

    /// A round trip: everything this device sent before is handled once this returns.
    pub(crate) async fn sync(&mut self) {
        self.send(RelayMessage::FetchKeyPackage {
            request: 0xffff_ffff,
            identity: [0xee; 32],
        })
        .await;
        assert_eq!(
            self.recv().await,
            RelayMessage::KeyPackage {
                request: 0xffff_ffff,
                identity: [0xee; 32],
                package: None
            }
        );
    }

    pub(crate) async fn datagram(&self) -> Bytes {
        guard("a datagram", self.link.conn.read_datagram())
            .await
            .unwrap()
    }

    pub(crate) fn send_datagram(&self, d: &[u8]) {
        self.link
            .conn
            .send_datagram(Bytes::copy_from_slice(d))
            .unwrap();
    }
}

/// The database key of every data directory of this test process (random per run).
pub(crate) fn db_key() -> viska_relay::DbKey {
    static KEY: std::sync::OnceLock<viska_relay::DbKey> = std::sync::OnceLock::new();
    KEY.get_or_init(viska_relay::DbKey::generate).clone()
}

/// The data directory's database opened directly, as SQLCipher with [`db_key`] (the raw key
/// and the file's own salt, its first 16 bytes).
#[allow(dead_code)]
pub(crate) fn open_db(dir: &std::path::Path) -> rusqlite::Connection {
    let path = dir.join(viska_relay::DB_FILE);
    let salt: String = std::fs::read(&path).unwrap()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let key = db_key().to_hex();
    conn.execute_batch(&format!("PRAGMA key = \"x'{}{salt}'\";", key.as_str()))
        .unwrap();
    conn
}

pub(crate) async fn start(dir: &std::path::Path) -> RelayHandle {
    start_with(dir, |_| {}).await
}

pub(crate) async fn start_with(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut RelayConfig),
) -> RelayHandle {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.db_key = Some(db_key());
    tweak(&mut config);
    Relay::start(config).await.unwrap()
}

/// A media datagram: route, an SFrame header (KID, CTR), and a fake ciphertext.
pub(crate) fn media(route: u32, kid: u64, ctr: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_route(route, &mut out).unwrap();
    let header = SframeHeader {
        kid: KeyId(kid),
        ctr,
    };
    let mut h = [0u8; 17];
    let n = header.encode(&mut h).unwrap();
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(body);
    out
}

/// `creator` opens `call`; returns its route.
pub(crate) async fn open_call(creator: &mut Device, call: CallRef) -> u32 {
    creator.send(RelayMessage::CreateCall { call }).await;
    match creator.recv().await {
        RelayMessage::CallOpened {
            call: c,
            route,
            epoch: 0,
        } if c == call => route,
        other => panic!("expected CallOpened, got {other:?}"),
    }
}

/// `by` commits at `epoch` adding `added`, and every added device takes its Welcome.
pub(crate) async fn add(by: &mut Device, call: CallRef, epoch: u64, added: &mut [&mut Device]) {
    let keys = added.iter().map(|d| d.key()).collect();
    by.send(RelayMessage::Commit {
        call,
        epoch,
        commit: format!("add at {epoch}").into_bytes(),
        welcome: Some(b"welcome".to_vec()),
        added: keys,
        removed: vec![],
    })
    .await;
    assert_eq!(
        by.recv().await,
        RelayMessage::CommitResult {
            call,
            epoch,
            accepted: true
        }
    );
    for d in added.iter_mut() {
        match d.recv().await {
            RelayMessage::Welcome {
                call: c,
                epoch: e,
                welcome,
                ..
            } => {
                assert_eq!((c, e, &welcome[..]), (call, epoch + 1, &b"welcome"[..]));
            }
            other => panic!("expected a Welcome, got {other:?}"),
        }
    }
}

/// The close code of a connection the relay closed.
pub(crate) async fn closed_with(conn: &quinn::Connection) -> u64 {
    match guard("the relay closing the connection", conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
        other => panic!("closed otherwise: {other}"),
    }
}
