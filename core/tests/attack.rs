//! A genuine caller gets through while an attacker does what it can against a listening phone
//! on loopback, from five source addresses (127.0.0.2 to 127.0.0.6):
//!
//! * 100 fresh identities (20 per source) each dial and let the call ring, and dial again
//!   as soon as a call ends: they fill every call the phone takes with ringing calls;
//! * from every source, QUIC connections that complete address validation and then stall in
//!   the TLS handshake (the client never sends its Finished) keep every place for
//!   unauthenticated connections taken.
//!
//! The genuine caller, a contact the callee verified before, calls from 127.0.0.7 five times
//! during the attack and must reach `Alerting` (the callee rings) every time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto as qp;
use viska::call::{CallState, Trust};
use viska::phone::{CallerInfo, MissedCall, generate_identity};
use viska::{CallHandle, Phone, PhoneConfig, PhoneEvent};

const SOURCES: u8 = 5;
const IDENTITIES_PER_SOURCE: usize = 20;
const GENUINE_CALLS: usize = 5;

fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// QUIC connections from one source that pass the Retry and then stop: the server holds each
/// in its TLS handshake, waiting for a Finished that never comes.
struct Staller {
    socket: UdpSocket,
    endpoint: qp::Endpoint,
    config: qp::ClientConfig,
    victim: SocketAddr,
    connections: Vec<(qp::ConnectionHandle, qp::Connection, bool)>,
}

impl Staller {
    fn new(ip: IpAddr, victim: SocketAddr, config: qp::ClientConfig) -> Self {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("staller socket");
        socket.set_nonblocking(true).expect("nonblocking");
        let endpoint =
            qp::Endpoint::new(Arc::new(qp::EndpointConfig::default()), None, false, None);
        Self {
            socket,
            endpoint,
            config,
            victim,
            connections: Vec::new(),
        }
    }

    /// Starts one more stalled connection.
    fn open(&mut self) {
        let now = Instant::now();
        if let Ok((handle, conn)) =
            self.endpoint
                .connect(now, self.config.clone(), self.victim, "viska.invalid")
        {
            self.connections.push((handle, conn, false));
        }
        // Old attempts are forgotten: the server has long dropped them.
        if self.connections.len() > 64 {
            self.connections.drain(..32);
        }
    }

    /// Sends what the connections have to send; feeds them the Retry, and nothing after it.
    fn pump(&mut self) {
        let now = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let data = BytesMut::from(&buf[..n]);
            let mut response = Vec::new();
            if let Some(qp::DatagramEvent::ConnectionEvent(handle, event)) =
                self.endpoint
                    .handle(now, self.victim, None, None, data, &mut response)
            {
                if let Some((_, conn, retried)) =
                    self.connections.iter_mut().find(|(h, _, _)| *h == handle)
                {
                    // The first packet back is the Retry: taken, so the attempt passes
                    // address validation. The server's handshake flight after it is ignored.
                    if !*retried {
                        *retried = true;
                        conn.handle_event(event);
                    }
                }
            }
        }
        for (_, conn, _) in &mut self.connections {
            let mut out = Vec::new();
            while let Some(transmit) = conn.poll_transmit(now, 1, &mut out) {
                let _ = self
                    .socket
                    .send_to(&out[..transmit.size], transmit.destination);
                out.clear();
            }
        }
    }
}

#[derive(Default)]
struct VictimLog {
    incoming: Mutex<Vec<(CallHandle, CallerInfo)>>,
    missed: Mutex<Vec<(CallerInfo, MissedCall)>>,
}

impl VictimLog {
    /// Sets `victim`'s listener to one that logs incoming and missed calls.
    fn listen(victim: &Phone) -> Arc<Self> {
        let log = Arc::new(Self::default());
        let seen = Arc::clone(&log);
        victim.set_listener(Arc::new(move |event: PhoneEvent| match event {
            PhoneEvent::IncomingCall { call, caller } => {
                seen.incoming.lock().expect("lock").push((call, caller));
            }
            PhoneEvent::MissedCall { caller, why } => {
                seen.missed.lock().expect("lock").push((caller, why))
            }
            _ => {}
        }));
        log
    }
}

#[test]
fn a_genuine_caller_rings_through_five_sources_and_a_hundred_fresh_identities() {
    let genuine_identity = generate_identity();
    let genuine_public = genuine_identity.public();
    let victim = Phone::new(
        PhoneConfig::builder("victim", generate_identity())
            .verified_peers(vec![genuine_public])
            // The places alone are under test: the stallers may start handshakes at any rate.
            .handshake_rate(u32::MAX, u32::MAX)
            .build()
            .expect("config"),
    )
    .expect("victim");
    let log = VictimLog::listen(&victim);
    let addr = victim
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // The ringing flood: each source's identities dial, let it ring, and dial again.
    for s in 0..SOURCES {
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let phones: Vec<Phone> = (0..IDENTITIES_PER_SOURCE)
                .map(|i| {
                    let phone = Phone::new(
                        PhoneConfig::builder(format!("a{s}-{i}"), generate_identity())
                            .build()
                            .expect("config"),
                    )
                    .expect("attacker");
                    // Listening, so its calls leave from this source address.
                    phone
                        .listen(SocketAddr::new(source(2 + s), 0))
                        .expect("attacker socket");
                    phone
                })
                .collect();
            let mut calls: Vec<Option<CallHandle>> = phones.iter().map(|_| None).collect();
            while !stop.load(Ordering::Relaxed) {
                for (phone, call) in phones.iter().zip(calls.iter_mut()) {
                    if call.as_ref().is_none_or(CallHandle::is_ended) {
                        *call = phone.call(addr).ok();
                    }
                }
                // Each identity dials again at most once a second: on a 2-core machine the
                // attackers share the victim's CPU, and a flood of handshakes would test the
                // machine, not the admission rules.
                std::thread::sleep(Duration::from_millis(1000));
            }
            drop(calls);
            for phone in phones {
                phone.close();
            }
        }));
    }
    // The TLS stall from every source: four attempts each at once, one more every 50 ms.
    let client_config = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _enter = runtime.enter();
        let cert = Arc::new(viska::transport::LocalCertificate::generate().expect("cert"));
        viska::transport::QuicEndpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            cert,
            &viska::TransportConfig::default(),
        )
        .expect("endpoint")
        .client_config()
    };
    {
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let mut stallers: Vec<Staller> = (0..SOURCES)
                .map(|s| Staller::new(source(2 + s), addr, client_config.clone()))
                .collect();
            for staller in &mut stallers {
                for _ in 0..4 {
                    staller.open();
                }
            }
            let mut last_open = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if last_open.elapsed() >= Duration::from_millis(50) {
                    last_open = Instant::now();
                    for staller in &mut stallers {
                        staller.open();
                    }
                }
                for staller in &mut stallers {
                    staller.pump();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }

    // The attack in full: every call the victim takes rings for an attacker.
    let deadline = Instant::now() + Duration::from_secs(30);
    while victim.calls().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(victim.calls().len(), 4, "the attackers fill the phone");

    let genuine = Phone::new(
        PhoneConfig::builder("genuine", genuine_identity)
            .build()
            .expect("config"),
    )
    .expect("genuine");
    genuine
        .listen(SocketAddr::new(source(7), 0))
        .expect("genuine socket");
    let (tx, rx) = mpsc::channel();
    for attempt in 0..GENUINE_CALLS {
        let call = genuine.call(addr).expect("dial");
        let reached = call.wait_for(Duration::from_secs(15), |s| {
            matches!(s, CallState::Alerting) || s.is_ended()
        });
        assert_eq!(
            reached,
            CallState::Alerting,
            "attempt {attempt}: the genuine caller was kept out ({:?})",
            victim.refused_connections()
        );
        // The victim's listener hears of it on its own thread, shortly.
        let rang = || {
            log.incoming
                .lock()
                .expect("lock")
                .iter()
                .filter(|(_, c)| c.identity == genuine_public && c.trust == Trust::Verified)
                .count()
        };
        let heard = Instant::now() + Duration::from_secs(5);
        while rang() < attempt + 1 && Instant::now() < heard {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            rang(),
            attempt + 1,
            "the victim's phone rang for the genuine caller"
        );
        // The call the genuine caller displaced is listed until its refusal has ended it (the
        // user might have answered it in that moment); beyond that, never more calls than
        // the phone takes.
        let settled = Instant::now() + Duration::from_secs(5);
        while victim.calls().len() > 4 && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            victim.calls().len() <= 4,
            "never more calls than the phone takes"
        );
        call.hangup().expect("hangup");
        assert!(call.wait_ended(Duration::from_secs(10)));
        let _ = tx.send(attempt);
        // Let the attackers take the place back before the next attempt.
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(rx);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("attacker thread");
    }
    let refused = victim.refused_connections();
    // The attack was real: places were fought over (taken back from the biggest holders and
    // refused to sources at their share).
    assert!(refused.places_taken_back > 0, "{refused:?}");
    assert!(refused.source_places_taken > 0, "{refused:?}");
    let missed = log.missed.lock().expect("lock");
    assert!(
        missed.iter().any(|(_, why)| matches!(
            why,
            MissedCall::Busy | MissedCall::DisplacedByVerifiedCaller
        )),
        "attackers were refused or displaced"
    );
    assert!(missed.iter().all(|(c, _)| c.identity != genuine_public));
    drop(missed);
    genuine.close();
    victim.close();
}

/// A verified caller takes the place of a ringing call of an unverified one.
#[test]
fn a_verified_caller_displaces_a_ringing_unverified_call() {
    let genuine_identity = generate_identity();
    let genuine_public = genuine_identity.public();
    let victim = Phone::new(
        PhoneConfig::builder("victim1", generate_identity())
            .verified_peers(vec![genuine_public])
            .max_calls(1)
            .build()
            .expect("config"),
    )
    .expect("victim");
    let log = VictimLog::listen(&victim);
    let addr = victim
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let stranger = Phone::new(
        PhoneConfig::builder("stranger", generate_identity())
            .build()
            .expect("c"),
    )
    .expect("p");
    let first = stranger.call(addr).expect("dial");
    assert_eq!(
        first.wait_for(Duration::from_secs(10), |s| matches!(
            s,
            CallState::Alerting
        ) || s.is_ended()),
        CallState::Alerting
    );
    let genuine = Phone::new(
        PhoneConfig::builder("genuine1", genuine_identity)
            .build()
            .expect("c"),
    )
    .expect("p");
    let call = genuine.call(addr).expect("dial");
    let reached = call.wait_for(Duration::from_secs(10), |s| {
        matches!(s, CallState::Alerting) || s.is_ended()
    });
    assert_eq!(reached, CallState::Alerting, "{:?}", call.snapshot());
    assert!(first.wait_ended(Duration::from_secs(5)));
    assert_eq!(
        first.state(),
        CallState::Ended(viska::call::EndReason::Busy {
            by: viska::call::Side::Remote
        })
    );
    // The missed call is reported by the displaced call's own driver, through the dispatcher.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let displaced = || {
        log.missed
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, why)| *why == MissedCall::DisplacedByVerifiedCaller)
    };
    while !displaced() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(displaced());
    assert_eq!(log.missed.lock().expect("lock").len(), 1);
}

/// A connection that stalls in its TLS handshake loses its place after the TLS deadline, and
/// the application hears of it with the source address.
#[test]
fn a_stalled_tls_handshake_is_cut_off_at_the_deadline_and_reported() {
    let victim = Phone::new(
        PhoneConfig::builder("victim2", generate_identity())
            .tls_deadline(Duration::from_millis(500))
            .build()
            .expect("config"),
    )
    .expect("victim");
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    victim.set_listener(Arc::new(move |event: PhoneEvent| {
        if let PhoneEvent::Security { source, event, .. } = event {
            let _ = tx.lock().expect("lock").send((source, event));
        }
    }));
    let addr = victim
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let client_config = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _enter = runtime.enter();
        let cert = Arc::new(viska::transport::LocalCertificate::generate().expect("cert"));
        viska::transport::QuicEndpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            cert,
            &viska::TransportConfig::default(),
        )
        .expect("endpoint")
        .client_config()
    };
    let mut staller = Staller::new(source(9), addr, client_config);
    staller.open();
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        staller.pump();
        if let Ok(report) = rx.try_recv() {
            break Some(report);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (from, event) = report.expect("a security event");
    assert_eq!(from.ip(), source(9));
    assert_eq!(
        event,
        viska::call::SecurityEvent::TransportHandshakeTimedOut
    );
    assert_eq!(victim.refused_connections().tls_timeouts, 1);
    victim.close();
}

/// A connection that completes TLS and then never opens its signaling stream holds a place
/// among the unknown connections; a caller who needs that place takes it back, and the silent
/// connection is closed then, not when its setup timeout runs out.
#[test]
fn a_silent_connection_loses_its_place_to_a_caller_and_is_closed() {
    let victim = Phone::new(
        PhoneConfig::builder("victim3", generate_identity())
            .max_handshakes(4)
            .max_handshakes_per_source(4)
            .build()
            .expect("config"),
    )
    .expect("victim");
    victim.set_listener(Arc::new(|_: PhoneEvent| {}));
    let addr = victim
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (endpoint, silent) = runtime.block_on(async {
        let cert = Arc::new(viska::transport::LocalCertificate::generate().expect("cert"));
        let endpoint = viska::transport::QuicEndpoint::bind(
            SocketAddr::new(source(2), 0),
            cert,
            &viska::TransportConfig::default(),
        )
        .expect("endpoint");
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(endpoint.connect(addr).await.expect("TLS completes"));
        }
        (endpoint, silent)
    });
    let oldest = silent.first().expect("four").clone();
    let closed = runtime.spawn(async move { oldest.closed().await });

    let caller = Phone::new(
        PhoneConfig::builder("caller3", generate_identity())
            .build()
            .expect("config"),
    )
    .expect("caller");
    caller
        .listen(SocketAddr::new(source(7), 0))
        .expect("caller socket");
    let call = caller.call(addr).expect("dial");
    let reached = call.wait_for(Duration::from_secs(10), |s| {
        matches!(s, CallState::Alerting) || s.is_ended()
    });
    assert_eq!(
        reached,
        CallState::Alerting,
        "{:?}",
        victim.refused_connections()
    );
    assert_eq!(victim.refused_connections().places_taken_back, 1);
    let why = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), closed).await })
        .expect("the silent connection is closed")
        .expect("task");
    match why {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(&close.reason[..], b"place taken back", "{close:?}");
        }
        other => panic!("closed otherwise: {other:?}"),
    }
    call.hangup().expect("hangup");
    drop(silent);
    drop(endpoint);
    caller.close();
    victim.close();
}
