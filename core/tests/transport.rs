//! The QUIC transport over real loopback sockets.

use std::sync::Arc;

use viska::transport::{LocalCertificate, QuicEndpoint, TransportConfig, TransportError};

fn endpoint() -> QuicEndpoint {
    let cert = Arc::new(LocalCertificate::generate().expect("cert"));
    QuicEndpoint::bind(
        "127.0.0.1:0".parse().expect("addr"),
        cert,
        &TransportConfig::default(),
    )
    .expect("bind")
}

#[tokio::test]
async fn mutual_tls_fingerprints_and_datagrams() {
    let server = endpoint();
    let client = endpoint();
    let addr = server.local_addr().expect("addr");
    let accept = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.expect("incoming").expect("accept") }
    });
    let c = client.connect(addr).await.expect("connect");
    let s = accept.await.expect("join");

    // Each side sees the other's real certificate: the bindings agree.
    assert_eq!(c.peer_cert_fingerprint(), server.cert_fingerprint());
    assert_eq!(s.peer_cert_fingerprint(), client.cert_fingerprint());
    // Both ends of one TLS session export the same channel binding.
    assert_eq!(
        c.tls_exporter().expect("exporter"),
        s.tls_exporter().expect("exporter")
    );
    assert!(c.is_initiator() && !s.is_initiator());

    for i in 0..10u8 {
        c.send_media(&[i; 100]).expect("send");
    }
    for i in 0..10u8 {
        let d = s.recv_media().await.expect("recv");
        assert_eq!(&d[..], &[i; 100][..]);
    }
    assert_eq!(c.datagram_stats().sent, 10);
    assert_eq!(s.datagram_stats().received, 10);

    // Oversized datagrams are refused and counted, never silently dropped.
    let err = c.send_media(&vec![0u8; 4000]).expect_err("too large");
    assert!(matches!(err, TransportError::DatagramTooLarge { .. }));
    assert_eq!(c.datagram_stats().dropped_too_large, 1);
}

#[tokio::test]
async fn full_datagram_buffer_refuses_and_counts() {
    let server = endpoint();
    let cert = Arc::new(LocalCertificate::generate().expect("cert"));
    let config = TransportConfig {
        datagram_send_buffer: 1000,
        ..TransportConfig::default()
    };
    let client =
        QuicEndpoint::bind("127.0.0.1:0".parse().expect("addr"), cert, &config).expect("bind");
    let addr = server.local_addr().expect("addr");
    let accept = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.expect("incoming").expect("accept") }
    });
    let c = client.connect(addr).await.expect("connect");
    let _s = accept.await.expect("join");
    // Without yielding to the runtime nothing is transmitted: the 1000-byte buffer fills.
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(e) = c.send_media(&[7u8; 300]) {
            assert!(matches!(e, TransportError::DatagramBufferFull));
            refused += 1;
        }
    }
    let stats = c.datagram_stats();
    assert!(refused > 0, "buffer never filled");
    assert_eq!(stats.dropped_buffer_full, refused);
    assert_eq!(stats.sent + stats.dropped_buffer_full, 20);
}
