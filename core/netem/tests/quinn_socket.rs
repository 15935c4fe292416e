//! Two quinn endpoints on loopback talking through impaired sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::rustls::RootCertStore;
use quinn::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use quinn::{ClientConfig, Connection, Endpoint, EndpointConfig, ServerConfig, TokioRuntime};
use viska_netem::{ImpairedSocket, ImpairmentConfig, LossModel, SocketError, bind_impaired};

const DATAGRAMS: u32 = 1000;
/// Large enough that quinn puts one datagram in each UDP packet, so packet loss is
/// datagram loss.
const DATAGRAM_SIZE: usize = 1000;

struct Pair {
    client_socket: Arc<ImpairedSocket>,
    server_socket: Arc<ImpairedSocket>,
    client_connection: Connection,
    server_connection: Connection,
    _endpoints: (Endpoint, Endpoint),
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Connects a client and a server whose sockets impair their own sends as configured.
async fn connect(client: ImpairmentConfig, server: ImpairmentConfig) -> Pair {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server_config = ServerConfig::with_single_cert(vec![cert.clone()], key).expect("server");
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("root");
    let client_config = ClientConfig::with_root_certificates(Arc::new(roots)).expect("client");

    let server_socket = ImpairedSocket::bind(loopback(), server).expect("bind server");
    let server_addr = quinn::AsyncUdpSocket::local_addr(server_socket.as_ref()).expect("addr");
    let server_endpoint = Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        Some(server_config),
        server_socket.clone(),
        Arc::new(TokioRuntime),
    )
    .expect("server endpoint");
    let client_socket = ImpairedSocket::bind(loopback(), client).expect("bind client");
    let mut client_endpoint = Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        None,
        client_socket.clone(),
        Arc::new(TokioRuntime),
    )
    .expect("client endpoint");
    client_endpoint.set_default_client_config(client_config);

    let accepting = tokio::spawn({
        let server_endpoint = server_endpoint.clone();
        async move {
            let incoming = server_endpoint.accept().await.expect("incoming");
            incoming.await.expect("server handshake")
        }
    });
    let client_connection = client_endpoint
        .connect(server_addr, "localhost")
        .expect("connect")
        .await
        .expect("client handshake");
    let server_connection = accepting.await.expect("accept task");
    Pair {
        client_socket,
        server_socket,
        client_connection,
        server_connection,
        _endpoints: (client_endpoint, server_endpoint),
    }
}

/// Sends [`DATAGRAMS`] numbered datagrams from client to server and returns how many
/// distinct ones arrived (waiting until none has arrived for a while).
///
/// The sender paces itself (5 datagrams a millisecond, at most 40 Mbit/s): unpaced, a
/// debug build's receiver falls behind and the kernel drops datagrams at its socket
/// buffer even with no impairment at all, which is not the loss under test.
async fn exchange_datagrams(pair: &Pair) -> usize {
    let receiver = pair.server_connection.clone();
    let receiving = tokio::spawn(async move {
        let mut seen = vec![false; DATAGRAMS as usize];
        while let Ok(Ok(datagram)) =
            tokio::time::timeout(Duration::from_millis(500), receiver.read_datagram()).await
        {
            let number = datagram
                .get(..4)
                .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                .map(u32::from_be_bytes)
                .expect("numbered datagram");
            if let Some(slot) = seen.get_mut(number as usize) {
                *slot = true;
            }
        }
        seen.iter().filter(|got| **got).count()
    });
    for number in 0..DATAGRAMS {
        let mut datagram = vec![0u8; DATAGRAM_SIZE];
        datagram[..4].copy_from_slice(&number.to_be_bytes());
        pair.client_connection
            .send_datagram_wait(datagram.into())
            .await
            .expect("send datagram");
        if number % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    receiving.await.expect("receiver task")
}

fn lossy(p: f64, seed: u64) -> ImpairmentConfig {
    ImpairmentConfig {
        loss: LossModel::Random { p },
        seed,
        ..ImpairmentConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_impairment_every_datagram_arrives() {
    let pair = tokio::time::timeout(Duration::from_secs(8), async {
        let pair = connect(ImpairmentConfig::default(), ImpairmentConfig::default()).await;
        let received = exchange_datagrams(&pair).await;
        assert_eq!(
            received,
            DATAGRAMS as usize,
            "client {:#?}",
            pair.client_connection.stats()
        );
        pair
    })
    .await
    .expect("in time");
    let stats = pair.client_socket.stats();
    assert_eq!(stats.impairment.dropped, 0);
    assert_eq!(stats.impairment.delivered, stats.impairment.submitted);
    assert_eq!(stats.send_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_loses_about_ten_percent_of_datagrams() {
    let pair = tokio::time::timeout(Duration::from_secs(8), async {
        // Handshake on a clean link, then turn loss on, so a lost handshake packet
        // does not cost a one-second retransmission timeout.
        let pair = connect(ImpairmentConfig::default(), ImpairmentConfig::default()).await;
        pair.client_socket
            .set_config(lossy(0.1, 17))
            .expect("valid config");
        let received = exchange_datagrams(&pair).await;
        (pair, received)
    })
    .await
    .expect("in time");
    let (pair, received) = pair;
    let lost_share = 1.0 - received as f64 / f64::from(DATAGRAMS);
    eprintln!("10 % loss: {received} of {DATAGRAMS} datagrams received");
    // Binomial standard deviation for 1000 datagrams is about 0.0095.
    assert!(
        (lost_share - 0.1).abs() < 0.04,
        "received {received} of {DATAGRAMS}"
    );
    let stats = pair.client_socket.stats().impairment;
    assert!(stats.dropped > 0);
    let model_loss = stats.dropped as f64 / stats.submitted as f64;
    assert!((model_loss - 0.1).abs() < 0.04, "model dropped {stats:?}");
    // The server's socket was not impaired.
    assert_eq!(pair.server_socket.stats().impairment.dropped, 0);
}

#[tokio::test]
async fn delay_shows_in_round_trip_time() {
    let delayed = |ms, seed| ImpairmentConfig {
        delay: Duration::from_millis(ms),
        seed,
        ..ImpairmentConfig::default()
    };
    let (baseline, impaired) = tokio::time::timeout(Duration::from_secs(8), async {
        let clean = connect(ImpairmentConfig::default(), ImpairmentConfig::default()).await;
        let baseline = ping(&clean).await;
        let slow = connect(delayed(30, 1), delayed(20, 2)).await;
        let impaired = ping(&slow).await;
        (baseline, impaired)
    })
    .await
    .expect("in time");
    eprintln!("RTT without delay {baseline:?}, with 30 ms + 20 ms delay {impaired:?}");
    // 30 ms out plus 20 ms back: never less. The bound above only catches a delay applied
    // twice (100 ms more); it is loose so that a loaded machine's scheduling cannot fail it.
    assert!(
        impaired >= Duration::from_millis(50),
        "impaired {impaired:?}, baseline {baseline:?}"
    );
    assert!(
        impaired < baseline + Duration::from_millis(100),
        "impaired {impaired:?}, baseline {baseline:?}"
    );
}

/// Exchanges a few round trips on a stream so the RTT estimate settles, then reads it.
async fn ping(pair: &Pair) -> Duration {
    let server = pair.server_connection.clone();
    let echo = tokio::spawn(async move {
        let (mut send, mut recv) = server.accept_bi().await.expect("accept stream");
        let mut byte = [0u8; 1];
        while recv.read_exact(&mut byte).await.is_ok() {
            send.write_all(&byte).await.expect("echo");
        }
    });
    let (mut send, mut recv) = pair.client_connection.open_bi().await.expect("open stream");
    let mut byte = [0u8; 1];
    for round in 0..10u8 {
        send.write_all(&[round]).await.expect("write");
        recv.read_exact(&mut byte).await.expect("read");
        assert_eq!(byte, [round]);
    }
    send.finish().expect("finish");
    echo.await.expect("echo task");
    pair.client_connection.rtt()
}

#[tokio::test]
async fn bind_refuses_invalid_configuration() {
    let invalid = lossy(1.5, 0);
    assert!(matches!(
        ImpairedSocket::bind(loopback(), invalid.clone()),
        Err(SocketError::Config(_))
    ));
    let as_io = bind_impaired(loopback(), invalid).expect_err("invalid");
    assert_eq!(as_io.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        as_io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<viska_netem::ConfigError>())
            .is_some()
    );
}

#[test]
fn bind_outside_tokio_is_an_error() {
    assert!(matches!(
        ImpairedSocket::bind(loopback(), ImpairmentConfig::default()),
        Err(SocketError::NoRuntime)
    ));
}

/// Receives one datagram on `receiver`, with a deadline.
async fn receive(receiver: &tokio::net::UdpSocket) -> Vec<u8> {
    let mut buffer = vec![0u8; 2048];
    let len = tokio::time::timeout(Duration::from_secs(2), receiver.recv(&mut buffer))
        .await
        .expect("datagram in time")
        .expect("receive");
    buffer.truncate(len);
    buffer
}

fn transmit_to(destination: SocketAddr, contents: &[u8]) -> quinn::udp::Transmit<'_> {
    quinn::udp::Transmit {
        destination,
        ecn: None,
        contents,
        segment_size: None,
        src_ip: None,
    }
}

#[tokio::test]
async fn delayed_datagrams_leave_later_even_after_the_socket_is_dropped() {
    use quinn::AsyncUdpSocket;

    let receiver = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
    let destination = receiver.local_addr().expect("addr");
    let socket = ImpairedSocket::bind(
        loopback(),
        ImpairmentConfig {
            delay: Duration::from_millis(80),
            ..ImpairmentConfig::default()
        },
    )
    .expect("bind impaired");
    let sent_at = tokio::time::Instant::now();
    socket
        .try_send(&transmit_to(destination, b"late"))
        .expect("accepted");
    // The datagram is in flight inside the model; dropping the socket must not lose it.
    drop(socket);
    assert_eq!(receive(&receiver).await, b"late");
    let elapsed = sent_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(80) && elapsed < Duration::from_millis(500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn segmented_transmit_is_split_into_datagrams() {
    use quinn::AsyncUdpSocket;

    let receiver = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
    let destination = receiver.local_addr().expect("addr");
    let socket = ImpairedSocket::bind(loopback(), ImpairmentConfig::default()).expect("bind");
    assert_eq!(socket.max_transmit_segments(), 1);
    let contents: Vec<u8> = (0..=249u8).collect();
    let transmit = quinn::udp::Transmit {
        segment_size: Some(100),
        ..transmit_to(destination, &contents)
    };
    socket.try_send(&transmit).expect("accepted");
    for expected in contents.chunks(100) {
        assert_eq!(receive(&receiver).await, expected);
    }
    let stats = socket.stats().impairment;
    assert_eq!((stats.submitted, stats.delivered), (3, 3));
}
