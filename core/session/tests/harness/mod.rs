//! Sessions wired together on a virtual clock: signaling over an ordered link with latency,
//! media datagrams through the IO-free impairment model, audio from generated tones, and the
//! driver's answers (admission, audio opening) given by the harness. Nothing sleeps.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::f64::consts::PI;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_call::{CallConfig, CallState, Command, Role};
use viska_e2ee::direct::ChannelBinding;
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_netem::{Impairment, ImpairmentConfig};
use viska_session::{
    Admission, AudioStatus, Input, Output, Request, Session, SessionConfig, SessionEvent,
};

pub const SAMPLE_RATE: f64 = 48_000.0;
pub const MS: Duration = Duration::from_millis(1);

/// Where a peer's captured audio comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Silence,
    /// A sine of this frequency and amplitude.
    Tone {
        hz: f64,
        amplitude: f64,
    },
    /// A tone that pauses: `on` frames of tone, then `off` frames of silence.
    Bursts {
        hz: f64,
        on: u64,
        off: u64,
    },
}

/// How a faulty driver answers the session's capture requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFault {
    /// Never answers.
    Unanswered,
    /// Answers with half a frame.
    WrongSize,
}

pub struct Peer {
    pub name: &'static str,
    pub session: Session,
    pub identity: PublicIdentity,
    pub events: Vec<SessionEvent>,
    /// The call peer: where signaling and (by default) datagrams go.
    pub peer: usize,
    /// Extra receivers of this peer's datagrams (as a relay would fan them out).
    pub fanout: Vec<usize>,
    pub source: Source,
    /// Whether the source keeps its own clock (a device) or not (a file).
    pub clocked: bool,
    /// The driver answers capture requests wrongly while this is set.
    pub capture_fault: Option<CaptureFault>,
    pub admit: Admission,
    /// How long opening audio takes, virtual time; `None`: it fails.
    pub audio_delay: Option<Duration>,
    audio_answer: Option<Instant>,
    /// Captured samples handed to the session so far.
    pub samples_captured: u64,
    pub captures: u64,
    /// What the session played, and what it recorded.
    pub heard: Vec<i16>,
    pub recorded: Vec<i16>,
    pub datagrams_sent: u64,
    /// Bytes of those datagrams (the SFrame frames the session emitted).
    pub datagram_bytes_sent: u64,
    /// Signaling frames written (copies), for inspection.
    pub signaling_sent: Vec<Vec<u8>>,
    /// Outputs in order, by kind: "event:…", "signaling", "request:…".
    pub trace: Vec<String>,
    deadline: Instant,
    /// The same deadline on the peer's own clock.
    deadline_local: Instant,
    /// No input at all reaches the peer until then (a stalled driver thread).
    pub stalled_until: Option<Instant>,
    /// The peer's clock runs this many parts per million fast (negative: slow).
    pub drift_ppm: f64,
    origin: Instant,
}

struct Link {
    latency: Duration,
    signaling: VecDeque<(Instant, usize, Vec<u8>)>,
}

pub struct Net {
    pub now: Instant,
    origin: Instant,
    pub peers: Vec<Peer>,
    link: Link,
    /// Media from peer i to peer j.
    media: Vec<Vec<Impairment<Vec<u8>>>>,
    rng: StdRng,
}

pub fn identity(seed: u64) -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut StdRng::seed_from_u64(seed))
}

fn binding(pair: u64) -> ChannelBinding {
    ChannelBinding {
        tls_exporter: [pair as u8; 32],
    }
}

impl Net {
    /// Two peers, 0 calling 1, on a clean 10 ms path.
    pub fn pair() -> Self {
        Self::with(2, |_, _| {})
    }

    /// `pairs * 2` peers; peer 2k calls peer 2k+1. `adjust(i, config)` edits each config.
    pub fn with(peers: usize, adjust: impl Fn(usize, &mut SessionConfig)) -> Self {
        let origin = Instant::now();
        let mut rng = StdRng::seed_from_u64(42);
        let names = ["alice", "bob", "carol", "dave", "erin", "frank"];
        let peers = (0..peers)
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::Caller
                } else {
                    Role::Callee
                };
                let id = identity(i as u64 + 1);
                let public = id.public();
                let mut config =
                    SessionConfig::new(CallConfig::new(role, id, binding(i as u64 / 2 + 1)));
                adjust(i, &mut config);
                let session = Session::new(config, origin, &mut rng).unwrap();
                Peer {
                    name: names[i % names.len()],
                    session,
                    identity: public,
                    events: Vec::new(),
                    peer: i ^ 1,
                    fanout: Vec::new(),
                    source: Source::Tone {
                        hz: 300.0 + 200.0 * i as f64,
                        amplitude: 6000.0,
                    },
                    clocked: true,
                    capture_fault: None,
                    admit: Admission::Admit,
                    audio_delay: Some(Duration::ZERO),
                    audio_answer: None,
                    samples_captured: 0,
                    captures: 0,
                    heard: Vec::new(),
                    recorded: Vec::new(),
                    datagrams_sent: 0,
                    datagram_bytes_sent: 0,
                    signaling_sent: Vec::new(),
                    trace: Vec::new(),
                    deadline: origin,
                    deadline_local: origin,
                    stalled_until: None,
                    drift_ppm: 0.0,
                    origin,
                }
            })
            .collect::<Vec<_>>();
        let n = peers.len();
        let media = (0..n)
            .map(|_| {
                (0..n)
                    .map(|_| {
                        Impairment::new(ImpairmentConfig {
                            delay: 10 * MS,
                            ..ImpairmentConfig::default()
                        })
                        .unwrap()
                    })
                    .collect()
            })
            .collect();
        let mut net = Self {
            now: origin,
            origin,
            peers,
            link: Link {
                latency: 10 * MS,
                signaling: VecDeque::new(),
            },
            media,
            rng,
        };
        for i in 0..n {
            net.drain(i);
        }
        net
    }

    /// Impairs the media path from `from` to `to` from now on.
    pub fn impair(&mut self, from: usize, to: usize, config: ImpairmentConfig) {
        self.media[from][to].set_config(config).unwrap();
    }

    /// The local time of peer `i` at global time `t`.
    fn local(&self, i: usize, t: Instant) -> Instant {
        let p = &self.peers[i];
        let elapsed = t.saturating_duration_since(p.origin).as_secs_f64();
        p.origin + Duration::from_secs_f64(elapsed * (1.0 + p.drift_ppm * 1e-6))
    }

    /// The global time at which peer `i`'s clock reads `local`.
    fn global(&self, i: usize, local: Instant) -> Instant {
        let p = &self.peers[i];
        let elapsed = local.saturating_duration_since(p.origin).as_secs_f64();
        p.origin + Duration::from_secs_f64(elapsed / (1.0 + p.drift_ppm * 1e-6))
    }

    pub fn input(&mut self, i: usize, make: impl FnOnce(Instant) -> Input<'static>) {
        let local = self.local(i, self.now);
        let _ = self.peers[i].session.handle_input(make(local));
        self.drain(i);
    }

    pub fn command(
        &mut self,
        i: usize,
        command: Command,
    ) -> Result<(), viska_session::SessionError> {
        let local = self.local(i, self.now);
        let result = self.peers[i]
            .session
            .handle_input(Input::Command(local, command));
        self.drain(i);
        result
    }

    /// Hands peer `i` this datagram as if it came from the network.
    pub fn inject(&mut self, i: usize, datagram: &[u8]) -> Result<(), viska_session::SessionError> {
        let local = self.local(i, self.now);
        let result = self.peers[i]
            .session
            .handle_input(Input::Datagram(local, datagram));
        self.drain(i);
        result
    }

    fn drain(&mut self, i: usize) {
        let now = self.now;
        let local = self.local(i, now);
        let peer = &mut self.peers[i];
        let mut captured: Option<Vec<i16>> = None;
        loop {
            if let Some(pcm) = captured.take() {
                let _ = peer.session.handle_input(Input::Captured(local, &pcm));
                continue;
            }
            match peer.session.poll_output() {
                Output::Datagram(bytes) => {
                    peer.datagrams_sent += 1;
                    peer.datagram_bytes_sent += bytes.len() as u64;
                    let bytes = bytes.to_vec();
                    let targets = std::iter::once(peer.peer).chain(peer.fanout.iter().copied());
                    for to in targets.collect::<Vec<_>>() {
                        self.media[i][to].submit(now, bytes.clone());
                    }
                }
                Output::Signaling(bytes) => {
                    peer.trace.push("signaling".into());
                    peer.signaling_sent.push(bytes.to_vec());
                    self.link.signaling.push_back((
                        now + self.link.latency,
                        peer.peer,
                        bytes.to_vec(),
                    ));
                }
                Output::Capture if peer.capture_fault == Some(CaptureFault::Unanswered) => {}
                Output::Capture if peer.capture_fault == Some(CaptureFault::WrongSize) => {
                    let samples = peer.session.frame_samples().unwrap();
                    captured = Some(vec![0; samples / 2]);
                }
                Output::Capture => {
                    peer.captures += 1;
                    let samples = peer.session.frame_samples().unwrap();
                    let start = peer.samples_captured;
                    peer.samples_captured += samples as u64;
                    captured = Some(generate(peer.source, start, samples));
                }
                Output::Play(pcm) => peer.heard.extend_from_slice(pcm),
                Output::Record(pcm) => peer.recorded.extend_from_slice(pcm),
                Output::Request(Request::Admit { .. }) => {
                    peer.trace.push("request:admit".into());
                    let admit = peer.admit;
                    let _ = peer.session.handle_input(Input::Admission(local, admit));
                }
                Output::Request(Request::OpenAudio { .. }) => {
                    peer.trace.push("request:audio".into());
                    match peer.audio_delay {
                        Some(delay) if delay.is_zero() => {
                            let clocked = peer.clocked;
                            let _ = peer.session.handle_input(Input::Audio(
                                local,
                                AudioStatus::Opened {
                                    source_clocked: clocked,
                                },
                            ));
                        }
                        Some(delay) => peer.audio_answer = Some(now + delay),
                        None => {
                            let _ = peer
                                .session
                                .handle_input(Input::Audio(local, AudioStatus::Failed));
                        }
                    }
                }
                Output::Event(event) => {
                    peer.trace.push(format!("event:{}", event_name(&event)));
                    peer.events.push(event);
                }
                Output::Timeout(at) => {
                    peer.deadline_local = at;
                    let global = {
                        let elapsed = at.saturating_duration_since(peer.origin).as_secs_f64();
                        peer.origin
                            + Duration::from_secs_f64(elapsed / (1.0 + peer.drift_ppm * 1e-6))
                    };
                    peer.deadline = global.max(now);
                    return;
                }
                _ => {}
            }
        }
    }

    /// Runs the virtual clock for `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        let mut stuck = 0u32;
        loop {
            // Nothing reaches a stalled peer before it wakes.
            let wake = |p: &Peer, at: Instant| p.stalled_until.map_or(at, |t| at.max(t));
            let mut next = end + Duration::from_nanos(1);
            for p in &self.peers {
                next = next.min(wake(p, p.deadline));
                if let Some(at) = p.audio_answer {
                    next = next.min(wake(p, at));
                }
            }
            for (at, to, _) in &self.link.signaling {
                next = next.min(wake(&self.peers[*to], *at));
            }
            for row in &self.media {
                for (to, m) in row.iter().enumerate() {
                    if let Some(at) = m.next_deadline() {
                        next = next.min(wake(&self.peers[to], at));
                    }
                }
            }
            if next > end {
                break;
            }
            // A session that keeps asking to be woken at the same instant makes no progress.
            stuck = if next <= self.now { stuck + 1 } else { 0 };
            if stuck >= 1000 {
                let deadlines: Vec<_> = self
                    .peers
                    .iter()
                    .map(|p| {
                        (
                            p.name,
                            p.deadline.checked_duration_since(self.now),
                            p.stalled_until.is_some(),
                            p.audio_answer.is_some(),
                        )
                    })
                    .collect();
                panic!(
                    "no progress at {:?}: peers {deadlines:?}, signaling {:?}",
                    self.now - self.origin,
                    self.link
                        .signaling
                        .front()
                        .map(|(at, to, _)| (at.checked_duration_since(self.now), *to))
                );
            }
            self.now = self.now.max(next);
            let now = self.now;
            for p in &mut self.peers {
                if p.stalled_until.is_some_and(|t| t <= now) {
                    p.stalled_until = None;
                }
            }
            let stalled = |p: &Peer| p.stalled_until.is_some_and(|t| t > now);
            // Signaling in order.
            while let Some((at, to, _)) = self.link.signaling.front() {
                if *at > now || stalled(&self.peers[*to]) {
                    break;
                }
                let (_, to, bytes) = self.link.signaling.pop_front().unwrap();
                let local = self.local(to, now);
                let _ = self.peers[to]
                    .session
                    .handle_input(Input::Signaling(local, &bytes));
                self.drain(to);
            }
            // Media.
            let n = self.peers.len();
            for from in 0..n {
                for to in 0..n {
                    if stalled(&self.peers[to]) {
                        continue;
                    }
                    while let Some(d) = self.media[from][to].poll_deliver(now) {
                        let local = self.local(to, now);
                        let _ = self.peers[to]
                            .session
                            .handle_input(Input::Datagram(local, &d));
                        self.drain(to);
                    }
                }
            }
            for i in 0..n {
                if stalled(&self.peers[i]) {
                    continue;
                }
                if self.peers[i].audio_answer.is_some_and(|at| at <= now) {
                    self.peers[i].audio_answer = None;
                    let clocked = self.peers[i].clocked;
                    self.input(i, |t| {
                        Input::Audio(
                            t,
                            AudioStatus::Opened {
                                source_clocked: clocked,
                            },
                        )
                    });
                }
                if self.peers[i].deadline <= now {
                    // Never earlier than the deadline on the peer's clock (rounding).
                    let local = self.local(i, now).max(self.peers[i].deadline_local);
                    let _ = self.peers[i].session.handle_input(Input::Timeout(local));
                    self.drain(i);
                }
            }
        }
        self.now = end;
    }

    pub fn state(&self, i: usize) -> CallState {
        self.peers[i].session.state()
    }

    /// Dials from every caller and lets every callee ring.
    pub fn ring(&mut self) {
        for i in (0..self.peers.len()).step_by(2) {
            self.command(i, Command::Dial).unwrap();
        }
        self.run_for(Duration::from_millis(500));
    }

    /// Dials, answers, and lets the call settle into `Active`.
    pub fn answer(&mut self) {
        self.ring();
        for i in (1..self.peers.len()).step_by(2) {
            assert_eq!(self.state(i), CallState::Ringing, "{}", self.peers[i].name);
            self.command(i, Command::Answer).unwrap();
        }
        self.run_for(Duration::from_millis(500));
        for i in 0..self.peers.len() {
            assert!(
                matches!(self.state(i), CallState::Active { .. }),
                "{}: {:?}",
                self.peers[i].name,
                self.state(i)
            );
        }
    }

    pub fn events(&self, i: usize) -> &[SessionEvent] {
        &self.peers[i].events
    }
}

pub fn event_name(event: &SessionEvent) -> &'static str {
    match event {
        SessionEvent::StateChanged(_) => "StateChanged",
        SessionEvent::KeysReady { .. } => "KeysReady",
        SessionEvent::Incoming { .. } => "Incoming",
        SessionEvent::MediaDirection { .. } => "MediaDirection",
        SessionEvent::Dtmf { .. } => "Dtmf",
        SessionEvent::Data { .. } => "Data",
        SessionEvent::PeerMuted { .. } => "PeerMuted",
        SessionEvent::PeerHold { .. } => "PeerHold",
        SessionEvent::Security(_) => "Security",
        SessionEvent::TrustChanged(_) => "TrustChanged",
        SessionEvent::Stats(_) => "Stats",
        _ => "other",
    }
}

/// `samples` samples of `source` starting at sample `start` of its stream.
pub fn generate(source: Source, start: u64, samples: usize) -> Vec<i16> {
    (0..samples as u64)
        .map(|k| {
            let n = start + k;
            let tone = |hz: f64, amplitude: f64| {
                (amplitude * (2.0 * PI * hz * n as f64 / SAMPLE_RATE).sin()) as i16
            };
            match source {
                Source::Silence => 0,
                Source::Tone { hz, amplitude } => tone(hz, amplitude),
                Source::Bursts { hz, on, off } => {
                    let frame = n / 960;
                    if frame % (on + off) < on {
                        tone(hz, 6000.0)
                    } else {
                        0
                    }
                }
            }
        })
        .collect()
}

/// The power of `hz` in `pcm` (Goertzel), normalised to the amplitude of a pure sine.
pub fn tone_level(pcm: &[i16], hz: f64) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let w = 2.0 * PI * hz / SAMPLE_RATE;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.sqrt() / pcm.len() as f64
}

pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    (pcm.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
}

pub fn frames(n: u32) -> Duration {
    20 * MS * n
}
