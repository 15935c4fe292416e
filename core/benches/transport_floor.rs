//! The CPU floor of "one small datagram each way every 20 ms" on this machine, below any
//! transport protocol: two endpoints on loopback, each on its own thread, each sending one
//! 96-byte UDP datagram (the size of a Viska media packet) per frame period and receiving the
//! other's. Measured three times: with blocking std sockets (one `sendto` and a `recvfrom`
//! per period, a wake-up for each), with blocking sockets and one wake-up per period (one side
//! answers what it receives, the other sends on its clock and drains its socket then: the
//! least a process can do), and with tokio sockets on a current-thread runtime (what an async
//! endpoint adds: epoll, the timer wheel, task wake-ups). Last, the same with Viska's QUIC
//! transport (media datagrams on a quinn connection, one tokio runtime per endpoint).
//!
//! `viska-phone demo --measure-cpu` measures that last one too (`transport_floor_cpu_ms`), and
//! the whole call; docs/performance.md sets them side by side against the codec's own CPU.
//!
//! ```text
//! cargo bench -p viska --bench transport_floor [-- SECONDS]
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(20);
const PAYLOAD: [u8; 96] = [0x5a; 96];

/// CPU time of the calling thread so far (Linux schedstat; updated when it sleeps).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat field");
    Duration::from_nanos(ns)
}

/// Runs `step` until `seconds` are over, counting what it returns (datagrams received), and
/// measures the thread's CPU time over that span.
fn metered(seconds: u64, mut step: impl FnMut() -> u64) -> (Duration, u64) {
    std::thread::sleep(Duration::from_millis(1));
    let t0 = thread_cpu();
    let start = Instant::now();
    let mut received = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        received += step();
    }
    std::thread::sleep(Duration::from_millis(1));
    (thread_cpu() - t0, received)
}

/// Sends one datagram per period to `peer` and receives until `seconds` are over, blocking in
/// `recvfrom` with a timeout until the next send. Returns (CPU, datagrams received).
fn blocking_endpoint(socket: UdpSocket, peer: SocketAddr, seconds: u64) -> (Duration, u64) {
    let mut buf = [0u8; 1500];
    let mut next = Instant::now();
    metered(seconds, || {
        let now = Instant::now();
        if now >= next {
            socket.send_to(&PAYLOAD, peer).expect("send");
            next += PERIOD;
            return 0;
        }
        socket.set_read_timeout(Some(next - now)).expect("timeout");
        u64::from(socket.recv_from(&mut buf).is_ok())
    })
}

/// The least that keeps one datagram a frame flowing each way: the endpoint that did not open
/// sends when it receives (one blocking `recvfrom` and one `sendto` per period, one wake-up),
/// the way a phone whose frame clock is aligned to the peer's arrivals could run, if it took
/// the peer's frames only at its own frame tick. The opener keeps a timer.
fn echo_endpoint(socket: UdpSocket, peer: SocketAddr, seconds: u64) -> (Duration, u64) {
    let mut buf = [0u8; 1500];
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    metered(seconds, || {
        if socket.recv_from(&mut buf).is_err() {
            return 0;
        }
        socket.send_to(&PAYLOAD, peer).expect("send");
        1
    })
}

/// The opener of the echo pair: sends on its frame clock and takes the answers in the same
/// wake-up as its next send (nonblocking), so it too wakes once per period.
fn ticking_endpoint(socket: UdpSocket, peer: SocketAddr, seconds: u64) -> (Duration, u64) {
    let mut buf = [0u8; 1500];
    socket.set_nonblocking(true).expect("nonblocking");
    let mut next = Instant::now();
    metered(seconds, || {
        let mut received = 0;
        while socket.recv_from(&mut buf).is_ok() {
            received += 1;
        }
        socket.send_to(&PAYLOAD, peer).expect("send");
        next += PERIOD;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        received
    })
}

/// Runs `body` to completion on a new current-thread tokio runtime.
fn on_runtime<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body)
}

/// The async endpoints' loop: `send` on a 20 ms interval and `recv` whenever it completes,
/// in one `select!`, until `seconds` are over. Returns (CPU, datagrams received).
async fn paced<S, R>(
    seconds: u64,
    mut send: impl FnMut() -> S,
    mut recv: impl FnMut() -> R,
) -> (Duration, u64)
where
    S: std::future::Future<Output = ()>,
    R: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let t0 = thread_cpu();
    let start = Instant::now();
    let mut received = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::select! {
            _ = tick.tick() => send().await,
            () = recv() => received += 1,
        }
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    (thread_cpu() - t0, received)
}

/// The same on a current-thread tokio runtime: an interval and the socket in one `select!`.
fn tokio_endpoint(socket: UdpSocket, peer: SocketAddr, seconds: u64) -> (Duration, u64) {
    on_runtime(async move {
        socket.set_nonblocking(true).expect("nonblocking");
        let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
        let socket = &socket;
        paced(
            seconds,
            || async move {
                socket.send_to(&PAYLOAD, peer).await.expect("send");
            },
            || async move {
                let mut buf = [0u8; 1500];
                socket.recv_from(&mut buf).await.expect("recv");
            },
        )
        .await
    })
}

/// What an endpoint thread does: its socket, the peer's address, the seconds to run; returns
/// its CPU time and the datagrams it received.
type Endpoint = fn(UdpSocket, SocketAddr, u64) -> (Duration, u64);

/// Viska's QUIC transport, both endpoints on their own current-thread runtimes: one datagram
/// of `PAYLOAD`'s size each way per period, the way `viska-phone demo --measure-cpu` measures
/// `transport_floor_cpu_ms`.
fn quic_pair(seconds: u64) {
    use std::sync::Arc;
    use viska::transport::{LocalCertificate, QuicEndpoint, TransportConfig};
    let endpoint = |peer: Option<SocketAddr>, addr_tx: std::sync::mpsc::Sender<SocketAddr>| {
        std::thread::spawn(move || {
            on_runtime(async move {
                let endpoint = QuicEndpoint::bind(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    Arc::new(LocalCertificate::generate().expect("certificate")),
                    &TransportConfig::default(),
                )
                .expect("endpoint");
                let conn = match peer {
                    Some(peer) => endpoint.connect(peer).await.expect("connect"),
                    None => {
                        addr_tx
                            .send(endpoint.local_addr().expect("addr"))
                            .expect("send addr");
                        endpoint.accept().await.expect("accept").expect("handshake")
                    }
                };
                let conn = &conn;
                let measured = paced(
                    seconds,
                    || async move { conn.send_media(&PAYLOAD).expect("send") },
                    || async move {
                        conn.recv_media().await.expect("recv");
                    },
                )
                .await;
                conn.close("measured");
                measured
            })
        })
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = endpoint(None, addr_tx.clone());
    let addr = addr_rx.recv().expect("server address");
    let client = endpoint(Some(addr), addr_tx);
    let (cpu_a, got_a) = server.join().expect("server");
    let (cpu_b, got_b) = client.join().expect("client");
    report("Viska QUIC transport", seconds, cpu_a + cpu_b, got_a, got_b);
}

fn report(label: &str, seconds: u64, cpu: Duration, got_a: u64, got_b: u64) {
    let periods = seconds as f64 * 1000.0 / PERIOD.as_millis() as f64;
    let per_frame = cpu.as_secs_f64() * 1e6 / periods / 2.0;
    println!(
        "{label}: both endpoints {:.1} ms of CPU in {seconds} s ({got_a} and {got_b} datagrams \
         received); {per_frame:.1} us per endpoint per 20 ms frame",
        cpu.as_secs_f64() * 1000.0
    );
}

fn pair(label: &str, seconds: u64, endpoint_a: Endpoint, endpoint_b: Endpoint) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (addr_a, addr_b) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let tb = std::thread::spawn(move || endpoint_b(b, addr_a, seconds));
    let ta = std::thread::spawn(move || endpoint_a(a, addr_b, seconds));
    let (cpu_a, got_a) = ta.join().expect("endpoint a");
    let (cpu_b, got_b) = tb.join().expect("endpoint b");
    report(label, seconds, cpu_a + cpu_b, got_a, got_b);
}

fn main() {
    // `cargo bench` passes `--bench`; a plain number is the duration.
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(10);
    pair(
        "blocking std UDP",
        seconds,
        blocking_endpoint,
        blocking_endpoint,
    );
    pair(
        "blocking std UDP, one wake-up per period (echo)",
        seconds,
        ticking_endpoint,
        echo_endpoint,
    );
    pair(
        "tokio UDP (current-thread runtime)",
        seconds,
        tokio_endpoint,
        tokio_endpoint,
    );
    quic_pair(seconds);
}
