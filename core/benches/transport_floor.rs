//! The CPU floor of "one small datagram each way every 20 ms" on this machine, below any
//! transport protocol: two endpoints on loopback, each on its own thread, each sending one
//! 96-byte UDP datagram (the size of a Viska media packet) per frame period and receiving the
//! other's. Measured three times: with blocking std sockets (one `sendto` and a `recvfrom`
//! per period, a wake-up for each), with blocking sockets and one wake-up per period (one side
//! answers what it receives, the other sends on its clock and drains its socket then: the
//! least a process can do), and with tokio sockets on a current-thread runtime (what an async
//! endpoint adds: epoll, the timer wheel, task wake-ups).
//!
//! `viska-phone demo --measure-cpu` measures the same with Viska's QUIC transport
//! (`transport_floor_cpu_ms`) and with the whole call; docs/performance.md sets the three side
//! by side against the codec's own CPU.
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

/// The same on a current-thread tokio runtime: an interval and the socket in one `select!`.
fn tokio_endpoint(socket: UdpSocket, peer: SocketAddr, seconds: u64) -> (Duration, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        socket.set_nonblocking(true).expect("nonblocking");
        let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
        let mut buf = [0u8; 1500];
        let mut tick = tokio::time::interval(PERIOD);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t0 = thread_cpu();
        let start = Instant::now();
        let mut received = 0;
        while start.elapsed() < Duration::from_secs(seconds) {
            tokio::select! {
                _ = tick.tick() => {
                    socket.send_to(&PAYLOAD, peer).await.expect("send");
                }
                r = socket.recv_from(&mut buf) => {
                    r.expect("recv");
                    received += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        (thread_cpu() - t0, received)
    })
}

/// What an endpoint thread does: its socket, the peer's address, the seconds to run; returns
/// its CPU time and the datagrams it received.
type Endpoint = fn(UdpSocket, SocketAddr, u64) -> (Duration, u64);

fn pair(label: &str, seconds: u64, endpoint_a: Endpoint, endpoint_b: Endpoint) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (addr_a, addr_b) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let tb = std::thread::spawn(move || endpoint_b(b, addr_a, seconds));
    let ta = std::thread::spawn(move || endpoint_a(a, addr_b, seconds));
    let (cpu_a, got_a) = ta.join().expect("endpoint a");
    let (cpu_b, got_b) = tb.join().expect("endpoint b");
    let periods = seconds as f64 * 1000.0 / PERIOD.as_millis() as f64;
    let per_frame = (cpu_a + cpu_b).as_secs_f64() * 1e6 / periods / 2.0;
    println!(
        "{label}: both endpoints {:.1} ms of CPU in {seconds} s ({got_a} and {got_b} datagrams \
         received); {per_frame:.1} us per endpoint per 20 ms frame",
        (cpu_a + cpu_b).as_secs_f64() * 1000.0
    );
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
}
