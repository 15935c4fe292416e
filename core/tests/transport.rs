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

/// With either kind of connection ID, one listener holds two callers apart (zero-length IDs:
/// by their addresses) and each gets back exactly what it sent; the wire counters count
/// every media datagram and the bytes that carried them.
#[tokio::test]
async fn both_connection_id_kinds_keep_two_callers_apart() {
    use viska::transport::ConnectionIds;
    for ids in [ConnectionIds::ZeroLength, ConnectionIds::Routable] {
        let config = TransportConfig {
            connection_ids: ids,
            ..TransportConfig::default()
        };
        let bind = || {
            let cert = Arc::new(LocalCertificate::generate().expect("cert"));
            QuicEndpoint::bind("127.0.0.1:0".parse().expect("addr"), cert, &config).expect("bind")
        };
        let server = bind();
        let addr = server.local_addr().expect("addr");
        let accept = tokio::spawn({
            let server = server.clone();
            async move {
                let a = server.accept().await.expect("incoming").expect("accept");
                let b = server.accept().await.expect("incoming").expect("accept");
                (a, b)
            }
        });
        let (one, two) = (bind(), bind());
        let c1 = one.connect(addr).await.expect("connect one");
        let c2 = two.connect(addr).await.expect("connect two");
        let (s1, s2) = accept.await.expect("join");
        // Echo: whatever a server-side connection receives goes back on it.
        for s in [s1, s2] {
            tokio::spawn(async move {
                while let Ok(d) = s.recv_media().await {
                    let _ = s.send_media(&d);
                }
            });
        }
        let before = c1.wire_counters();
        for i in 0..20u8 {
            c1.send_media(&[i; 100]).expect("send one");
            c2.send_media(&[i ^ 0xff; 60]).expect("send two");
        }
        for i in 0..20u8 {
            assert_eq!(
                &c1.recv_media().await.expect("one")[..],
                &[i; 100][..],
                "{ids:?}"
            );
            assert_eq!(
                &c2.recv_media().await.expect("two")[..],
                &[i ^ 0xff; 60][..],
                "{ids:?}"
            );
        }
        let sent = c1.wire_counters().since(&before);
        assert!(sent.datagram_frames_sent >= 20, "{ids:?}: {sent:?}");
        assert!(sent.udp_datagrams_sent >= 1, "{ids:?}: {sent:?}");
        // Each media datagram's 100 bytes went out in some UDP datagram, with QUIC around it.
        assert!(sent.udp_bytes_sent > 20 * 100, "{ids:?}: {sent:?}");
        assert_eq!(
            sent.wire_bytes(viska::transport::WireCounters::IPV4_UDP_HEADER),
            sent.udp_bytes_sent + 28 * sent.udp_datagrams_sent
        );
    }
}
