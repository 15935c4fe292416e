//! Group calls on a virtual clock: MLS members as the key source of real sessions (codec,
//! SFrame, jitter buffers, playout), a delivery service that orders commits and says when an
//! epoch may be switched to, and an SFU that forwards ciphertext to the current members only.
//! Audio flows both ways while devices join and leave; nothing sleeps.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_e2ee::identity::IdentityKeyPair;
use viska_group::{Commit, Epoch, GroupConfig, GroupEvent, GroupMember, GroupOutput};
use viska_netem::{Impairment, ImpairmentConfig, LossModel};
use viska_session::{AudioStatus, GroupSessionConfig, Input, Output, Request, Session};

const MS: Duration = Duration::from_millis(1);
/// One way, device to relay or relay to device, for handshake and media alike.
const HOP: Duration = Duration::from_millis(10);

/// Handshake messages reach device `d` this much later than media (a slow device, a busy
/// path): frames of a new epoch can outrun its commit.
fn lag(d: usize) -> Duration {
    Duration::from_millis(25 * d as u64)
}

enum Msg {
    /// An MLS message (commit or Welcome) from the delivery service.
    Mls(Vec<u8>),
    /// The verdict on this device's commit.
    Verdict(bool),
    /// Every member holds this epoch.
    Switch(Epoch),
}

enum ToRelay {
    Commit(usize, Commit, Option<usize>, Option<usize>),
    Ready(usize, Epoch),
}

struct Device {
    member: GroupMember,
    session: Option<Session>,
    deadline: Option<Instant>,
    samples: u64,
    hz: f64,
    heard: u64,
    joined_epochs: Vec<Epoch>,
    codes: BTreeMap<Epoch, String>,
    events: Vec<GroupEvent>,
    security: Vec<(Instant, String)>,
}

/// The delivery service and SFU of the test: one total order of commits (the first for an
/// epoch wins), readiness per epoch, forwarding to the current members.
#[derive(Default)]
struct Relay {
    epoch: u64,
    members: BTreeSet<usize>,
    ready: BTreeMap<u64, BTreeSet<usize>>,
    switched: BTreeSet<u64>,
    refused: u64,
}

struct Conference {
    now: Instant,
    devices: Vec<Device>,
    relay: Relay,
    inbox: Vec<(Instant, usize, Msg)>,
    to_relay: Vec<(Instant, ToRelay)>,
    media: Vec<Vec<Impairment<Vec<u8>>>>,
    forwarded: u64,
}

fn frame_samples() -> usize {
    960
}

impl Conference {
    fn new(n: usize, path: ImpairmentConfig) -> Self {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let devices = (0..n)
            .map(|i| Device {
                member: GroupMember::new(
                    IdentityKeyPair::generate(&mut rng),
                    GroupConfig::default(),
                )
                .unwrap(),
                session: None,
                deadline: None,
                samples: 0,
                hz: 300.0 + 150.0 * i as f64,
                heard: 0,
                joined_epochs: Vec::new(),
                codes: BTreeMap::new(),
                events: Vec::new(),
                security: Vec::new(),
            })
            .collect();
        let media = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        let mut config = path.clone();
                        config.delay = 2 * HOP;
                        config.seed = (i * 31 + j) as u64 + 1;
                        Impairment::new(config).unwrap()
                    })
                    .collect()
            })
            .collect();
        Self {
            now,
            devices,
            relay: Relay::default(),
            inbox: Vec::new(),
            to_relay: Vec::new(),
            media,
            forwarded: 0,
        }
    }

    fn open_session(&mut self, d: usize) {
        let now = self.now;
        let session = Session::group(GroupSessionConfig::default(), now).unwrap();
        self.devices[d].session = Some(session);
        self.drive(d);
    }

    /// Device 0 starts the call alone.
    fn start(&mut self) {
        let now = self.now;
        self.devices[0].member.create(now, b"conference").unwrap();
        self.relay.members.insert(0);
        self.open_session(0);
        self.pump_member(0);
    }

    fn add(&mut self, by: usize, joiner: usize) {
        let package = self.devices[joiner].member.key_package(false).unwrap();
        let commit = self.devices[by].member.add(&[package]).unwrap();
        self.to_relay.push((
            self.now + HOP,
            ToRelay::Commit(by, commit, Some(joiner), None),
        ));
    }

    fn remove(&mut self, by: usize, leaver: usize) {
        let participant = self.devices[leaver].member.own_participant().unwrap();
        let commit = self.devices[by].member.remove(&[participant]).unwrap();
        self.to_relay.push((
            self.now + HOP,
            ToRelay::Commit(by, commit, None, Some(leaver)),
        ));
    }

    fn relay_receive(&mut self, message: ToRelay) {
        let now = self.now;
        match message {
            ToRelay::Commit(by, commit, joiner, leaver) => {
                if commit.epoch.0 != self.relay.epoch {
                    self.relay.refused += 1;
                    self.inbox.push((now + HOP, by, Msg::Verdict(false)));
                    return;
                }
                self.relay.epoch += 1;
                for &m in &self.relay.members {
                    if m != by {
                        self.inbox
                            .push((now + HOP + lag(m), m, Msg::Mls(commit.commit.clone())));
                    }
                }
                self.inbox.push((now + HOP, by, Msg::Verdict(true)));
                if let Some(j) = joiner {
                    let welcome = commit.welcome.clone().unwrap();
                    self.inbox.push((now + HOP + lag(j), j, Msg::Mls(welcome)));
                    self.relay.members.insert(j);
                }
                if let Some(l) = leaver {
                    // Forwarding to and from the removed device stops at once.
                    self.relay.members.remove(&l);
                }
                self.maybe_switch(self.relay.epoch);
            }
            ToRelay::Ready(d, epoch) => {
                self.relay.ready.entry(epoch.0).or_default().insert(d);
                self.maybe_switch(epoch.0);
            }
        }
    }

    fn maybe_switch(&mut self, epoch: u64) {
        if epoch != self.relay.epoch || self.relay.switched.contains(&epoch) {
            return;
        }
        let ready = self.relay.ready.get(&epoch).cloned().unwrap_or_default();
        if self.relay.members.is_subset(&ready) {
            self.relay.switched.insert(epoch);
            for &m in &self.relay.members {
                self.inbox
                    .push((self.now + HOP, m, Msg::Switch(Epoch(epoch))));
            }
        }
    }

    fn deliver(&mut self, d: usize, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Mls(bytes) => {
                let joining = self.devices[d].member.epoch().is_none();
                self.devices[d].member.handle_message(now, &bytes).unwrap();
                if joining {
                    self.open_session(d);
                }
            }
            Msg::Verdict(true) => self.devices[d].member.commit_accepted(now).unwrap(),
            Msg::Verdict(false) => self.devices[d].member.commit_refused().unwrap(),
            Msg::Switch(epoch) => self.devices[d].member.switch(now, epoch),
        }
        self.pump_member(d);
    }

    /// Moves the member's outputs to its session and the relay.
    fn pump_member(&mut self, d: usize) {
        let now = self.now;
        while let Some(out) = self.devices[d].member.poll_output() {
            match out {
                GroupOutput::Keys(update) => {
                    if let Some(session) = self.devices[d].session.as_mut() {
                        session.handle_input(Input::Keys(now, update)).unwrap();
                    }
                }
                GroupOutput::Ready(epoch) => {
                    self.to_relay.push((now + HOP, ToRelay::Ready(d, epoch)));
                }
                GroupOutput::Event(event) => {
                    if let GroupEvent::Epoch {
                        epoch,
                        verification_code,
                    } = &event
                    {
                        self.devices[d].joined_epochs.push(*epoch);
                        self.devices[d]
                            .codes
                            .insert(*epoch, verification_code.clone());
                    }
                    if let (GroupEvent::Removed, Some(s)) =
                        (&event, self.devices[d].session.as_mut())
                    {
                        let _ = s.handle_input(Input::Command(now, viska_call::Command::Hangup));
                    }
                    self.devices[d].events.push(event);
                }
                _ => {}
            }
        }
        self.drive(d);
    }

    /// Drains the session's outputs.
    fn drive(&mut self, d: usize) {
        let now = self.now;
        let members = self.relay.members.clone();
        let dev = &mut self.devices[d];
        let Some(session) = dev.session.as_mut() else {
            return;
        };
        let mut pcm: Option<Vec<i16>> = None;
        loop {
            if let Some(frame) = pcm.take() {
                let _ = session.handle_input(Input::Captured(now, &frame));
                continue;
            }
            match session.poll_output() {
                Output::Datagram(bytes) if members.contains(&d) => {
                    for &to in members.iter().filter(|&&to| to != d) {
                        self.media[d][to].submit(now, bytes.to_vec());
                        self.forwarded += 1;
                    }
                }
                Output::Capture => {
                    let n = frame_samples();
                    let start = dev.samples;
                    dev.samples += n as u64;
                    let hz = dev.hz;
                    pcm = Some(
                        (0..n as u64)
                            .map(|k| {
                                let t = (start + k) as f64 / 48_000.0;
                                (6000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
                            })
                            .collect(),
                    );
                }
                Output::Play(_) => dev.heard += 1,
                Output::Event(event) => {
                    if matches!(event, viska_session::SessionEvent::Security(_)) {
                        dev.security.push((now, format!("{event:?}")));
                    }
                }
                Output::Request(Request::OpenAudio { .. }) => {
                    let _ = session.handle_input(Input::Audio(
                        now,
                        AudioStatus::Opened {
                            source_clocked: true,
                        },
                    ));
                }
                Output::Timeout(at) => {
                    dev.deadline = Some(at.max(now));
                    return;
                }
                _ => {}
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            let mut next = end + Duration::from_nanos(1);
            for d in &self.devices {
                if let (Some(at), true) = (
                    d.deadline,
                    d.session.as_ref().is_some_and(|s| !s.is_ended()),
                ) {
                    next = next.min(at);
                }
                if let Some(at) = d.member.next_timeout() {
                    next = next.min(at);
                }
            }
            for (at, _, _) in &self.inbox {
                next = next.min(*at);
            }
            for (at, _) in &self.to_relay {
                next = next.min(*at);
            }
            for row in &self.media {
                for m in row {
                    if let Some(at) = m.next_deadline() {
                        next = next.min(at);
                    }
                }
            }
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            // The relay, in arrival order.
            let mut due: Vec<_> = Vec::new();
            let mut i = 0;
            while i < self.to_relay.len() {
                if self.to_relay[i].0 <= now {
                    due.push(self.to_relay.remove(i).1);
                } else {
                    i += 1;
                }
            }
            for m in due {
                self.relay_receive(m);
            }
            let mut i = 0;
            while i < self.inbox.len() {
                if self.inbox[i].0 <= now {
                    let (_, d, msg) = self.inbox.remove(i);
                    self.deliver(d, msg);
                } else {
                    i += 1;
                }
            }
            let n = self.devices.len();
            for from in 0..n {
                for to in 0..n {
                    while let Some(datagram) = self.media[from][to].poll_deliver(now) {
                        if let Some(s) = self.devices[to].session.as_mut() {
                            let _ = s.handle_input(Input::Datagram(now, &datagram));
                            self.drive(to);
                        }
                    }
                }
            }
            for d in 0..n {
                if self.devices[d]
                    .member
                    .next_timeout()
                    .is_some_and(|at| at <= now)
                {
                    self.devices[d].member.handle_timeout(now);
                    self.pump_member(d);
                }
                let due = self.devices[d].deadline.is_some_and(|at| at <= now);
                if due {
                    if let Some(s) = self.devices[d].session.as_mut() {
                        let _ = s.handle_input(Input::Timeout(now));
                    }
                    self.drive(d);
                }
            }
        }
        self.now = end;
    }

    fn in_call(&self) -> Vec<usize> {
        self.relay.members.iter().copied().collect()
    }
}

/// Three devices stay in the call throughout; three more join and leave in turn, 20 changes
/// in all, while everyone sends a tone.
fn churn(path: ImpairmentConfig) -> Conference {
    churn_with(6, 3, 20, path)
}

/// `hosts` devices stay in the call throughout, the other `devices - hosts` join and leave in
/// turn, `changes` commits in all, 400 ms apart, while everyone sends a tone.
fn churn_with(devices: usize, hosts: usize, changes: usize, path: ImpairmentConfig) -> Conference {
    let mut c = Conference::new(devices, path);
    c.start();
    for h in 1..hosts {
        c.add(h - 1, h);
        c.run_for(300 * MS);
    }
    c.run_for(200 * MS);
    let guests = devices - hosts;
    let mut round = 0usize;
    while round < changes {
        let guest = hosts + round % guests;
        let host = round % hosts;
        if c.relay.members.contains(&guest) {
            c.remove(host, guest);
        } else {
            // A device that left comes back as a new member with a fresh key package.
            if c.devices[guest].member.epoch().is_none() && c.devices[guest].session.is_some() {
                c.devices[guest].session = None;
            }
            c.add(host, guest);
        }
        round += 1;
        c.run_for(400 * MS);
    }
    c.run_for(2000 * MS);
    c
}

#[test]
fn twenty_joins_and_leaves_lose_no_frame_and_decrypt_every_one() {
    let c = churn(ImpairmentConfig::default());
    assert_eq!(c.relay.refused, 0);
    assert!(c.relay.epoch >= 22, "epochs: {}", c.relay.epoch);
    for (i, d) in c.devices.iter().enumerate() {
        let Some(s) = d.session.as_ref() else {
            continue;
        };
        let k = s.counters();
        assert_eq!(
            k.decrypt_failures, 0,
            "device {i}: {k:?} {:?} {:?}",
            d.security, d.events
        );
        assert_eq!(k.playout.lost, 0, "device {i} lost frames: {:?}", k.playout);
        assert_eq!(
            k.playout.concealed, 0,
            "device {i} concealed: {:?}",
            k.playout
        );
        assert!(k.frames_received > 0, "device {i} heard nothing");
    }
    // The three hosts were there all along: each heard the others without a gap, and sent
    // every frame of the call.
    for i in 0..3 {
        let s = c.devices[i].session.as_ref().unwrap();
        let k = s.counters();
        assert!(k.frames_sent > 200, "device {i} sent {}", k.frames_sent);
        assert_eq!(k.frames_refused, 0);
    }
    // Everyone in the call agrees on the roster and the verification code.
    let members = c.in_call();
    let code = c.devices[members[0]].member.verification_code();
    assert!(code.is_some());
    for &m in &members {
        assert_eq!(c.devices[m].member.verification_code(), code, "device {m}");
        assert_eq!(
            c.devices[m].member.roster().len(),
            members.len(),
            "device {m}"
        );
        assert_eq!(
            c.devices[m].member.sending_epoch(),
            c.devices[m].member.epoch()
        );
    }
}

#[test]
fn with_five_percent_loss_nothing_fails_to_decrypt_beyond_the_loss() {
    let path = ImpairmentConfig {
        loss: LossModel::random_percent(5.0).unwrap(),
        ..ImpairmentConfig::default()
    };
    let c = churn(path);
    let dropped: u64 = c.media.iter().flatten().map(|m| m.stats().dropped).sum();
    assert!(dropped > 100, "the path dropped {dropped}");
    let mut lost = 0;
    for (i, d) in c.devices.iter().enumerate() {
        let Some(s) = d.session.as_ref() else {
            continue;
        };
        let k = s.counters();
        assert_eq!(k.decrypt_failures, 0, "device {i}: {k:?}");
        lost += k.playout.lost;
    }
    assert!(lost <= dropped, "lost {lost} of {dropped} dropped");
}

#[test]
fn a_hundred_transitions_in_a_ten_member_call_lose_nothing() {
    // Seven stay, three come and go: a hundred epochs with audio flowing (the figure
    // docs/performance.md reports).
    let c = churn_with(10, 7, 100, ImpairmentConfig::default());
    assert!(c.relay.epoch >= 106, "epochs: {}", c.relay.epoch);
    let (mut lost, mut failures, mut received) = (0, 0, 0);
    for d in &c.devices {
        let Some(s) = d.session.as_ref() else {
            continue;
        };
        let k = s.counters();
        lost += k.playout.lost + k.playout.concealed;
        failures += k.decrypt_failures;
        received += k.frames_received;
    }
    println!(
        "100 transitions, 10 members: {received} frames received, {lost} lost or concealed, {failures} undecryptable"
    );
    assert_eq!((lost, failures), (0, 0));
    assert!(received > 10_000);
}
