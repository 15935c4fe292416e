//! Two calls wired together on a virtual clock: every transition of the call state machine.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_call::{
    Call, CallConfig, CallError, CallEvent, CallState, Command, DtmfEvent, EndReason,
    HandshakeStage, Input, Message, Output, PeerDirectory, Reason, Role, SecurityEvent, Side,
    Standing, Trust,
};
use viska_e2ee::direct::{ChannelBinding, HandshakeError};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_e2ee::keys::KeyUpdate;
use viska_proto::{FrameDecoder, FrameDuration, MediaParams, SuiteId};
use viska_sframe::CipherSuite;

const CALLER: usize = 0;
const CALLEE: usize = 1;

struct Peer {
    call: Call,
    events: Vec<CallEvent>,
    sent: Vec<Message>,
    /// Events and sent messages in the order the call produced them.
    trace: Vec<Trace>,
    /// Media keys the call handed out (the key-source seam).
    keys: Vec<KeyUpdate>,
    /// Ring as soon as invited (a driver that takes every call and has audio at once).
    auto_ring: bool,
    errors: Vec<CallError>,
    next_timeout: Instant,
    decoder: FrameDecoder,
}

/// What the network does to a message in flight; `None` drops it.
type Tamper = Box<dyn FnMut(usize, Message) -> Option<Message>>;

struct Harness {
    now: Instant,
    latency: Duration,
    peers: [Peer; 2],
    /// (delivery time, receiving peer, encoded frame)
    in_flight: VecDeque<(Instant, usize, Vec<u8>)>,
    tamper: Option<Tamper>,
    identities: [PublicIdentity; 2],
}

fn binding() -> ChannelBinding {
    ChannelBinding {
        tls_exporter: [7; 32],
    }
}

fn identity(seed: u64) -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut StdRng::seed_from_u64(seed))
}

impl Harness {
    fn new() -> Self {
        Self::with(|_, _| {})
    }

    /// `adjust(role, config)` edits each side's configuration before the calls are created.
    fn with(adjust: impl Fn(Role, &mut CallConfig)) -> Self {
        let now = Instant::now();
        let caller_id = identity(1);
        let callee_id = identity(2);
        let identities = [caller_id.public(), callee_id.public()];
        let mut caller_config = CallConfig::new(Role::Caller, caller_id, binding());
        let mut callee_config = CallConfig::new(Role::Callee, callee_id, binding());
        adjust(Role::Caller, &mut caller_config);
        adjust(Role::Callee, &mut callee_config);
        let mut rng = StdRng::seed_from_u64(42);
        let mut peer = |config| {
            let call = Call::new(config, now, &mut rng).unwrap();
            Peer {
                call,
                events: Vec::new(),
                sent: Vec::new(),
                trace: Vec::new(),
                keys: Vec::new(),
                auto_ring: true,
                errors: Vec::new(),
                next_timeout: now,
                decoder: FrameDecoder::new(),
            }
        };
        let caller = peer(caller_config);
        let callee = peer(callee_config);
        let mut harness = Self {
            now,
            latency: Duration::from_millis(20),
            peers: [caller, callee],
            in_flight: VecDeque::new(),
            tamper: None,
            identities,
        };
        harness.drain(CALLER);
        harness.drain(CALLEE);
        harness
    }

    fn drain(&mut self, i: usize) {
        let mut ring = false;
        loop {
            match self.peers[i].call.poll_output() {
                Output::Transmit(message) => {
                    self.peers[i].trace.push(Trace::Sent(message.name()));
                    self.peers[i].sent.push(message.clone());
                    let message = match self.tamper.as_mut() {
                        Some(tamper) => tamper(i, message),
                        None => Some(message),
                    };
                    if let Some(message) = message {
                        let frame = message.to_frame().unwrap();
                        self.in_flight
                            .push_back((self.now + self.latency, 1 - i, frame));
                    }
                }
                Output::Event(event) => {
                    ring |= matches!(event, CallEvent::Invited { .. }) && self.peers[i].auto_ring;
                    self.peers[i].trace.push(Trace::Event(event_name(&event)));
                    self.peers[i].events.push(event);
                }
                Output::Keys(update) => self.peers[i].keys.push(update),
                Output::Timeout(at) => {
                    self.peers[i].next_timeout = at;
                    if std::mem::take(&mut ring) {
                        self.peers[i]
                            .call
                            .handle_input(Input::Command(self.now, Command::Ring))
                            .unwrap();
                        continue;
                    }
                    return;
                }
            }
        }
    }

    fn command(&mut self, i: usize, command: Command) -> Result<(), CallError> {
        let result = self.peers[i]
            .call
            .handle_input(Input::Command(self.now, command));
        self.drain(i);
        result
    }

    fn signal(&mut self, i: usize, message: Message) -> Result<(), CallError> {
        let result = self.peers[i]
            .call
            .handle_input(Input::Signal(self.now, message));
        self.drain(i);
        result
    }

    /// Runs the virtual clock for `duration`, delivering messages and firing timers in order.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            let next_delivery = self.in_flight.front().map(|(at, _, _)| *at);
            let next_timer = self.peers.iter().map(|p| p.next_timeout).min();
            let Some(next) = [next_delivery, next_timer].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            while let Some((at, to, _)) = self.in_flight.front() {
                if *at > self.now {
                    break;
                }
                let to = *to;
                let (_, _, frame) = self.in_flight.pop_front().unwrap();
                self.peers[to].decoder.push(&frame);
                while let Some(message) = self.peers[to].decoder.next_message().unwrap() {
                    if let Err(error) = self.signal(to, message) {
                        self.peers[to].errors.push(error);
                    }
                }
            }
            for i in [CALLER, CALLEE] {
                if self.peers[i].next_timeout <= self.now {
                    self.peers[i]
                        .call
                        .handle_input(Input::Timeout(self.now))
                        .unwrap();
                    self.drain(i);
                }
            }
        }
        self.now = end;
    }

    fn settle(&mut self) {
        self.run_for(Duration::from_secs(1));
    }

    fn state(&self, i: usize) -> CallState {
        self.peers[i].call.state()
    }

    /// Dial and let the callee ring.
    fn ringing() -> Self {
        let mut h = Self::new();
        h.command(CALLER, Command::Dial).unwrap();
        h.settle();
        assert_eq!(h.state(CALLER), CallState::Alerting);
        assert_eq!(h.state(CALLEE), CallState::Ringing);
        h
    }

    fn active() -> Self {
        let mut h = Self::ringing();
        h.command(CALLEE, Command::Answer).unwrap();
        h.settle();
        for i in [CALLER, CALLEE] {
            assert_eq!(h.state(i), ACTIVE);
        }
        h
    }

    fn take_events(&mut self, i: usize) -> Vec<CallEvent> {
        std::mem::take(&mut self.peers[i].events)
    }
}

/// One entry of a call's output, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trace {
    Event(&'static str),
    Sent(&'static str),
}

fn event_name(event: &CallEvent) -> &'static str {
    match event {
        CallEvent::StateChanged(_) => "StateChanged",
        CallEvent::KeysReady { .. } => "KeysReady",
        CallEvent::Invited { .. } => "Invited",
        CallEvent::Incoming { .. } => "Incoming",
        CallEvent::Security(_) => "Security",
        _ => "other",
    }
}

const ACTIVE: CallState = CallState::Active {
    local_hold: false,
    remote_hold: false,
    muted: false,
};

fn position(events: &[CallEvent], pred: impl Fn(&CallEvent) -> bool) -> Option<usize> {
    events.iter().position(pred)
}

fn media_directions(events: &[CallEvent]) -> Vec<(bool, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            CallEvent::MediaDirection { send, receive } => Some((*send, *receive)),
            _ => None,
        })
        .collect()
}

#[test]
fn answered_call_reaches_active_with_equal_sas() {
    let mut h = Harness::ringing();
    let callee_events = h.take_events(CALLEE);
    let keys_at = position(&callee_events, |e| matches!(e, CallEvent::KeysReady { .. })).unwrap();
    let ringing_at = position(&callee_events, |e| {
        matches!(e, CallEvent::StateChanged(CallState::Ringing))
    })
    .unwrap();
    assert!(keys_at < ringing_at, "keys are ready before ringing");
    let incoming = callee_events
        .iter()
        .find_map(|e| match e {
            CallEvent::Incoming {
                peer,
                trust,
                call_id,
                ..
            } => Some((*peer, *trust, *call_id)),
            _ => None,
        })
        .unwrap();
    assert_eq!(incoming.0, h.identities[CALLER]);
    assert_eq!(incoming.1, Trust::Unverified);
    assert_eq!(Some(incoming.2), h.peers[CALLER].call.call_id());
    assert_eq!(
        h.peers[CALLEE].call.call_id(),
        h.peers[CALLER].call.call_id()
    );
    assert!(
        h.take_events(CALLER)
            .iter()
            .any(|e| matches!(e, CallEvent::KeysReady { .. }))
    );

    h.command(CALLEE, Command::Answer).unwrap();
    h.settle();
    assert_eq!(h.state(CALLER), ACTIVE);
    assert_eq!(h.state(CALLEE), ACTIVE);
    let caller_sas = h.peers[CALLER].call.sas().unwrap();
    let callee_sas = h.peers[CALLEE].call.sas().unwrap();
    assert_eq!(caller_sas, callee_sas);
    assert_eq!(caller_sas.to_string(), callee_sas.to_string());
    assert_eq!(h.peers[CALLER].call.peer(), Some(&h.identities[CALLEE]));
    for i in [CALLER, CALLEE] {
        assert_eq!(media_directions(&h.take_events(i)), vec![(true, true)]);
        assert!(h.peers[i].errors.is_empty(), "{:?}", h.peers[i].errors);
        assert_eq!(h.peers[i].call.wire_version(), Some(1));
    }
    // The caller's first flight is Hello then the first handshake message.
    assert!(matches!(h.peers[CALLER].sent[0], Message::Hello { .. }));
    assert!(matches!(h.peers[CALLER].sent[1], Message::Handshake(_)));
}

#[test]
fn pinned_peer_is_verified_and_a_different_key_is_reported() {
    let caller_public = identity(1).public();
    let stranger = identity(99).public();
    let mut h = Harness::with(|role, config| match role {
        Role::Caller => config.expected_peer = Some(stranger),
        _ => config.expected_peer = Some(caller_public),
    });
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert_eq!(h.peers[CALLEE].call.trust(), Some(Trust::Verified));
    assert!(h.peers[CALLEE].events.iter().any(|e| matches!(
        e,
        CallEvent::Incoming {
            trust: Trust::Verified,
            ..
        }
    )));
    // The caller expected someone else: told, not silently connected.
    assert_eq!(h.peers[CALLER].call.trust(), Some(Trust::KeyChanged));
    let expected_fp = stranger.fingerprint();
    let actual_fp = h.identities[CALLEE].fingerprint();
    assert!(h.peers[CALLER].events.iter().any(|e| matches!(
        e,
        CallEvent::Security(SecurityEvent::KeyChanged { expected, actual })
            if *expected == expected_fp && *actual == actual_fp
    )));
}

/// A directory that answers from a fixed table and records what the call told it.
#[derive(Debug, Default)]
struct Directory {
    standing: std::sync::Mutex<Vec<(PublicIdentity, Standing)>>,
    asked: std::sync::Mutex<Vec<PublicIdentity>>,
    verified: std::sync::Mutex<Vec<PublicIdentity>>,
}

impl PeerDirectory for Directory {
    fn standing(&self, peer: &PublicIdentity) -> Standing {
        self.asked.lock().unwrap().push(*peer);
        self.standing
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == peer)
            .map_or(Standing::Unverified, |(_, s)| *s)
    }

    fn verified(&self, peer: &PublicIdentity) {
        self.verified.lock().unwrap().push(*peer);
    }
}

#[test]
fn the_directory_decides_trust_reports_a_changed_key_and_learns_of_verification() {
    let old_callee = identity(77).public();
    let callee_public = identity(2).public();
    let caller_dir = std::sync::Arc::new(Directory::default());
    caller_dir
        .standing
        .lock()
        .unwrap()
        .push((callee_public, Standing::KeyChanged { pinned: old_callee }));
    let callee_dir = std::sync::Arc::new(Directory::default());
    let (cd, ed) = (caller_dir.clone(), callee_dir.clone());
    let mut h = Harness::with(move |role, config| {
        // The directory overrides the plain list of verified peers.
        config.verified_peers = vec![identity(1).public(), identity(2).public()];
        config.directory = Some(match role {
            Role::Caller => cd.clone(),
            _ => ed.clone(),
        });
    });
    assert_eq!(h.identities[CALLEE], callee_public);
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert_eq!(h.peers[CALLER].call.trust(), Some(Trust::KeyChanged));
    assert!(h.peers[CALLER].events.iter().any(|e| matches!(
        e,
        CallEvent::Security(SecurityEvent::KeyChanged { expected, actual })
            if *expected == old_callee.fingerprint() && *actual == callee_public.fingerprint()
    )));
    assert_eq!(h.peers[CALLEE].call.trust(), Some(Trust::Unverified));
    assert_eq!(*caller_dir.asked.lock().unwrap(), vec![callee_public]);
    assert_eq!(
        *callee_dir.asked.lock().unwrap(),
        vec![identity(1).public()]
    );
    // The user compares the SAS and verifies: the directory is told, once.
    h.command(CALLER, Command::MarkVerified).unwrap();
    h.command(CALLER, Command::MarkVerified).unwrap();
    assert_eq!(h.peers[CALLER].call.trust(), Some(Trust::Verified));
    assert_eq!(*caller_dir.verified.lock().unwrap(), vec![callee_public]);
    assert!(callee_dir.verified.lock().unwrap().is_empty());
}

#[test]
fn a_peer_the_user_verified_is_trusted_now_and_in_later_calls() {
    // Before the keys there is nothing to verify.
    let mut h = Harness::new();
    assert!(h.command(CALLER, Command::MarkVerified).is_err());
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert_eq!(h.peers[CALLER].call.trust(), Some(Trust::Unverified));
    h.take_events(CALLER);
    // The users compared the SAS: the caller marks the callee verified.
    h.command(CALLER, Command::MarkVerified).unwrap();
    assert_eq!(h.peers[CALLER].call.trust(), Some(Trust::Verified));
    assert_eq!(
        h.peers[CALLEE].call.trust(),
        Some(Trust::Unverified),
        "one end's choice"
    );
    let events = h.take_events(CALLER);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, CallEvent::TrustChanged(Trust::Verified)))
            .count(),
        1
    );
    // Marking again changes nothing and says nothing.
    h.command(CALLER, Command::MarkVerified).unwrap();
    assert!(h.take_events(CALLER).is_empty());

    // A later call: the caller remembers the callee's identity as verified, the callee
    // (who did not verify) knows the caller only as unverified, and a third identity is not
    // trusted for being in someone's list.
    let callee_public = h.identities[CALLEE];
    let mut later = Harness::with(|role, config| {
        if role == Role::Caller {
            config.verified_peers = vec![identity(42).public(), callee_public];
        }
    });
    later.command(CALLER, Command::Dial).unwrap();
    later.settle();
    assert_eq!(later.peers[CALLER].call.trust(), Some(Trust::Verified));
    assert_eq!(later.peers[CALLEE].call.trust(), Some(Trust::Unverified));
    let mut other = Harness::with(|role, config| {
        if role == Role::Caller {
            config.verified_peers = vec![identity(42).public()];
        }
    });
    other.command(CALLER, Command::Dial).unwrap();
    other.settle();
    assert_eq!(other.peers[CALLER].call.trust(), Some(Trust::Unverified));
}

#[test]
fn callee_rejects() {
    let mut h = Harness::ringing();
    h.command(CALLEE, Command::Reject).unwrap();
    h.settle();
    let rejected = |by| {
        CallState::Ended(EndReason::Rejected {
            by,
            reason: Reason::Declined,
        })
    };
    assert_eq!(h.state(CALLER), rejected(Side::Remote));
    assert_eq!(h.state(CALLEE), rejected(Side::Local));
}

#[test]
fn callee_is_busy() {
    let mut h = Harness::ringing();
    h.command(CALLEE, Command::Busy).unwrap();
    h.settle();
    assert_eq!(
        h.state(CALLER),
        CallState::Ended(EndReason::Busy { by: Side::Remote })
    );
    assert_eq!(
        h.state(CALLEE),
        CallState::Ended(EndReason::Busy { by: Side::Local })
    );
}

#[test]
fn caller_cancels_before_answer() {
    let mut h = Harness::ringing();
    h.command(CALLER, Command::Hangup).unwrap();
    assert_eq!(h.peers[CALLER].sent.last(), Some(&Message::Cancel));
    h.settle();
    assert_eq!(
        h.state(CALLER),
        CallState::Ended(EndReason::Cancelled { by: Side::Local })
    );
    assert_eq!(
        h.state(CALLEE),
        CallState::Ended(EndReason::Cancelled { by: Side::Remote })
    );
}

#[test]
fn nobody_answers() {
    let mut h = Harness::ringing();
    h.run_for(Duration::from_secs(58));
    assert_eq!(h.state(CALLEE), CallState::Ringing);
    assert_eq!(h.state(CALLER), CallState::Alerting);
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.state(CALLER), CallState::Ended(EndReason::NoAnswer));
    assert_eq!(h.state(CALLEE), CallState::Ended(EndReason::NoAnswer));
}

#[test]
fn ring_timeout_is_configurable() {
    let mut h = Harness::with(|_, config| config.ring_timeout = Duration::from_secs(5));
    h.command(CALLER, Command::Dial).unwrap();
    h.run_for(Duration::from_secs(4));
    assert_eq!(h.state(CALLEE), CallState::Ringing);
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.state(CALLEE), CallState::Ended(EndReason::NoAnswer));
}

#[test]
fn setup_times_out_when_the_callee_never_answers_the_handshake() {
    let mut h = Harness::new();
    h.tamper = Some(Box::new(|from, m| (from != CALLER).then_some(m)));
    h.command(CALLER, Command::Dial).unwrap();
    h.run_for(Duration::from_millis(9_900));
    assert_eq!(h.state(CALLER), CallState::Handshaking);
    h.run_for(Duration::from_millis(200));
    assert_eq!(h.state(CALLER), CallState::Ended(EndReason::SetupTimeout));
    assert_eq!(
        h.peers[CALLER].sent.last(),
        Some(&Message::Hangup {
            reason: Reason::Timeout
        })
    );
    // The callee never heard anything and times out on its own.
    assert_eq!(h.state(CALLEE), CallState::Ended(EndReason::SetupTimeout));
}

#[test]
fn setup_time_excludes_ring_time() {
    let mut h = Harness::ringing();
    h.run_for(Duration::from_secs(30));
    assert_eq!(h.state(CALLER), CallState::Alerting);
    assert_eq!(h.state(CALLEE), CallState::Ringing);
}

#[test]
fn either_side_hangs_up() {
    for who in [CALLER, CALLEE] {
        let mut h = Harness::active();
        h.command(who, Command::Hangup).unwrap();
        h.settle();
        let ended = |by| {
            CallState::Ended(EndReason::Hangup {
                by,
                reason: Reason::Normal,
            })
        };
        assert_eq!(h.state(who), ended(Side::Local));
        assert_eq!(h.state(1 - who), ended(Side::Remote));
        for i in [CALLER, CALLEE] {
            assert_eq!(
                media_directions(&h.take_events(i)).last(),
                Some(&(false, false))
            );
        }
        // Ended is final.
        assert!(matches!(
            h.command(who, Command::Hangup),
            Err(CallError::InvalidCommand { .. })
        ));
    }
}

#[test]
fn abort_tells_the_peer_why() {
    // An answered call: the reason travels in Hangup and stays in both end states.
    for who in [CALLER, CALLEE] {
        let mut h = Harness::active();
        h.command(who, Command::Abort(Reason::Error)).unwrap();
        h.settle();
        let ended = |by| {
            CallState::Ended(EndReason::Hangup {
                by,
                reason: Reason::Error,
            })
        };
        assert_eq!(h.state(who), ended(Side::Local));
        assert_eq!(h.state(1 - who), ended(Side::Remote));
    }
    // A ringing callee that cannot take the call refuses it with the reason.
    let mut h = Harness::ringing();
    h.command(CALLEE, Command::Abort(Reason::Error)).unwrap();
    h.settle();
    let rejected = |by| {
        CallState::Ended(EndReason::Rejected {
            by,
            reason: Reason::Error,
        })
    };
    assert_eq!(h.state(CALLEE), rejected(Side::Local));
    assert_eq!(h.state(CALLER), rejected(Side::Remote));
    // A caller that gives up before the answer cancels.
    let mut h = Harness::ringing();
    h.command(CALLER, Command::Abort(Reason::Error)).unwrap();
    h.settle();
    assert_eq!(
        h.state(CALLER),
        CallState::Ended(EndReason::Cancelled { by: Side::Local })
    );
    assert_eq!(
        h.state(CALLEE),
        CallState::Ended(EndReason::Cancelled { by: Side::Remote })
    );
    assert!(matches!(
        h.command(CALLER, Command::Abort(Reason::Error)),
        Err(CallError::InvalidCommand { .. })
    ));
}

#[test]
fn hold_and_resume_from_either_side() {
    for who in [CALLER, CALLEE] {
        let other = 1 - who;
        let mut h = Harness::active();
        h.take_events(CALLER);
        h.take_events(CALLEE);
        h.command(who, Command::Hold).unwrap();
        h.settle();
        assert_eq!(
            h.state(who),
            CallState::Active {
                local_hold: true,
                remote_hold: false,
                muted: false
            }
        );
        assert_eq!(
            h.state(other),
            CallState::Active {
                local_hold: false,
                remote_hold: true,
                muted: false
            }
        );
        assert!(matches!(
            h.peers[who].sent.last(),
            Some(Message::Encrypted(_))
        ));
        assert!(matches!(
            h.command(who, Command::Hold),
            Err(CallError::InvalidCommand { .. })
        ));
        h.command(who, Command::Resume).unwrap();
        h.settle();
        assert_eq!(h.state(who), ACTIVE);
        assert_eq!(h.state(other), ACTIVE);
        for i in [CALLER, CALLEE] {
            assert_eq!(
                media_directions(&h.take_events(i)),
                vec![(false, false), (true, true)]
            );
        }
        assert!(matches!(
            h.command(who, Command::Resume),
            Err(CallError::InvalidCommand { .. })
        ));
    }
}

#[test]
fn both_sides_hold_and_media_resumes_only_when_both_resume() {
    let mut h = Harness::active();
    h.command(CALLER, Command::Hold).unwrap();
    h.command(CALLEE, Command::Hold).unwrap();
    h.settle();
    let both = CallState::Active {
        local_hold: true,
        remote_hold: true,
        muted: false,
    };
    assert_eq!(h.state(CALLER), both);
    assert_eq!(h.state(CALLEE), both);
    h.command(CALLER, Command::Resume).unwrap();
    h.settle();
    h.take_events(CALLER);
    assert_eq!(
        h.state(CALLER),
        CallState::Active {
            local_hold: false,
            remote_hold: true,
            muted: false
        }
    );
    h.command(CALLEE, Command::Resume).unwrap();
    h.settle();
    assert_eq!(h.state(CALLER), ACTIVE);
    assert_eq!(media_directions(&h.take_events(CALLER)), vec![(true, true)]);
}

#[test]
fn mute_stops_sending_and_informs_the_peer() {
    let mut h = Harness::active();
    h.take_events(CALLER);
    h.take_events(CALLEE);
    h.command(CALLER, Command::Mute(true)).unwrap();
    h.settle();
    assert_eq!(
        h.state(CALLER),
        CallState::Active {
            local_hold: false,
            remote_hold: false,
            muted: true
        }
    );
    assert_eq!(
        media_directions(&h.take_events(CALLER)),
        vec![(false, true)]
    );
    assert!(
        h.take_events(CALLEE)
            .iter()
            .any(|e| matches!(e, CallEvent::RemoteMute(true)))
    );
    assert!(h.peers[CALLEE].call.remote_muted());
    assert_eq!(h.state(CALLEE), ACTIVE, "mute is local only");
    h.command(CALLER, Command::Mute(false)).unwrap();
    h.settle();
    assert_eq!(media_directions(&h.take_events(CALLER)), vec![(true, true)]);
    assert!(!h.peers[CALLEE].call.remote_muted());
}

fn received_dtmf(events: &[CallEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            CallEvent::Dtmf { event, .. } => Some(event.to_char()),
            _ => None,
        })
        .collect()
}

#[test]
fn dtmf_is_delivered_end_to_end_encrypted() {
    let mut h = Harness::active();
    let sent_before = h.peers[CALLER].sent.len();
    h.command(CALLER, Command::SendDtmf("12#*A9".into()))
        .unwrap();
    let new = &h.peers[CALLER].sent[sent_before..];
    assert_eq!(new.len(), 6, "one message per digit");
    assert!(new.iter().all(|m| matches!(m, Message::Encrypted(_))));
    h.settle();
    assert_eq!(received_dtmf(&h.peers[CALLEE].events), "12#*A9");
    assert!(h.peers[CALLEE].events.iter().any(|e| matches!(
        e,
        CallEvent::Dtmf {
            event: DtmfEvent::Digit1,
            duration_ms: 100
        }
    )));

    // An invalid string sends nothing at all.
    let sent_before = h.peers[CALLER].sent.len();
    assert!(matches!(
        h.command(CALLER, Command::SendDtmf("12x".into())),
        Err(CallError::InvalidControl(_))
    ));
    assert_eq!(h.peers[CALLER].sent.len(), sent_before);

    // A long press: the key's whole duration travels in its one message.
    h.take_events(CALLEE);
    h.command(
        CALLER,
        Command::SendDtmfTones {
            digits: "#0".into(),
            duration_ms: 2000,
        },
    )
    .unwrap();
    h.settle();
    let tones: Vec<(char, u16)> = h
        .take_events(CALLEE)
        .iter()
        .filter_map(|e| match e {
            CallEvent::Dtmf { event, duration_ms } => Some((event.to_char(), *duration_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(tones, vec![('#', 2000), ('0', 2000)]);
    // A zero duration is malformed on the wire: refused, nothing sent.
    let sent_before = h.peers[CALLER].sent.len();
    assert!(matches!(
        h.command(
            CALLER,
            Command::SendDtmfTones {
                digits: "1".into(),
                duration_ms: 0
            }
        ),
        Err(CallError::InvalidControl(_))
    ));
    assert_eq!(h.peers[CALLER].sent.len(), sent_before);
}

#[test]
fn call_data_is_delivered_end_to_end_encrypted() {
    let mut h = Harness::active();
    let payload = b"{\"ticket\":\"INC-4711\",\"queue\":\"billing\"}".to_vec();
    h.command(CALLEE, Command::SendData(payload.clone()))
        .unwrap();
    let Some(Message::Encrypted(frame)) = h.peers[CALLEE].sent.last().cloned() else {
        panic!("call data must go out encrypted");
    };
    assert!(
        !frame.windows(8).any(|w| payload.windows(8).any(|p| p == w)),
        "plaintext visible on the wire"
    );
    h.settle();
    assert!(
        h.peers[CALLER]
            .events
            .iter()
            .any(|e| matches!(e, CallEvent::Data(d) if *d == payload))
    );
    // Oversize data is refused.
    assert!(matches!(
        h.command(CALLEE, Command::SendData(vec![0; 4097])),
        Err(CallError::InvalidControl(_))
    ));
}

#[test]
fn reception_reports_reach_the_peer_encrypted() {
    let mut h = Harness::active();
    h.command(
        CALLEE,
        Command::SendReceptionReport {
            loss_permille: 97,
            jitter_ms: 12,
        },
    )
    .unwrap();
    assert!(matches!(
        h.peers[CALLEE].sent.last(),
        Some(Message::Encrypted(_))
    ));
    h.settle();
    assert!(h.peers[CALLER].events.iter().any(|e| matches!(
        e,
        CallEvent::ReceptionReport {
            loss_permille: 97,
            jitter_ms: 12
        }
    )));
}

#[test]
fn reception_reports_need_an_answered_call() {
    let mut h = Harness::ringing();
    let sent_before = h.peers[CALLEE].sent.len();
    assert!(matches!(
        h.command(
            CALLEE,
            Command::SendReceptionReport {
                loss_permille: 0,
                jitter_ms: 0
            }
        ),
        Err(CallError::InvalidCommand { .. })
    ));
    assert_eq!(h.peers[CALLEE].sent.len(), sent_before);
}

#[test]
fn call_data_works_while_ringing() {
    let mut h = Harness::ringing();
    h.command(CALLER, Command::SendData(b"crm:42".to_vec()))
        .unwrap();
    h.settle();
    assert!(
        h.peers[CALLEE]
            .events
            .iter()
            .any(|e| matches!(e, CallEvent::Data(d) if d == b"crm:42"))
    );
}

#[test]
fn tampered_and_replayed_control_messages_are_counted_and_the_call_goes_on() {
    let mut h = Harness::active();
    let mut flip_next = true;
    h.tamper = Some(Box::new(move |_, message| match message {
        Message::Encrypted(mut frame) if flip_next => {
            flip_next = false;
            if let Some(last) = frame.last_mut() {
                *last ^= 0x01;
            }
            Some(Message::Encrypted(frame))
        }
        other => Some(other),
    }));
    h.command(CALLER, Command::SendDtmf("5".into())).unwrap();
    h.settle();
    assert!(received_dtmf(&h.peers[CALLEE].events).is_empty());
    assert!(h.peers[CALLEE].events.iter().any(|e| matches!(
        e,
        CallEvent::Security(SecurityEvent::ControlDecryptFailed { failures: 1 })
    )));
    assert_eq!(h.peers[CALLEE].call.stats().decrypt_failures, 1);
    assert_eq!(h.state(CALLEE), ACTIVE);

    h.command(CALLER, Command::SendDtmf("7".into())).unwrap();
    h.settle();
    assert_eq!(received_dtmf(&h.peers[CALLEE].events), "7");

    // Replaying the authentic frame is rejected too.
    let Some(Message::Encrypted(frame)) = h.peers[CALLER].sent.last().cloned() else {
        panic!("DTMF must go out encrypted");
    };
    h.signal(CALLEE, Message::Encrypted(frame)).unwrap();
    assert_eq!(received_dtmf(&h.peers[CALLEE].events), "7");
    assert_eq!(h.peers[CALLEE].call.stats().decrypt_failures, 2);

    // Garbage is counted, never fatal.
    h.signal(CALLEE, Message::Encrypted(vec![])).unwrap();
    h.signal(CALLEE, Message::Encrypted(vec![0xff; 40]))
        .unwrap();
    assert_eq!(h.peers[CALLEE].call.stats().decrypt_failures, 4);
    assert_eq!(h.state(CALLEE), ACTIVE);
}

#[test]
fn invalid_commands_are_typed_errors_and_change_nothing() {
    let mut h = Harness::new();
    let invalid = |r: Result<(), CallError>| matches!(r, Err(CallError::InvalidCommand { .. }));
    assert!(invalid(h.command(CALLER, Command::Answer)));
    assert!(invalid(h.command(CALLEE, Command::Dial)));
    assert!(invalid(h.command(CALLER, Command::Hold)));
    assert!(invalid(h.command(CALLER, Command::SendDtmf("1".into()))));
    assert!(invalid(h.command(CALLER, Command::SendData(vec![1]))));
    assert!(invalid(h.command(CALLER, Command::Reject)));
    assert_eq!(h.state(CALLER), CallState::Idle);
    assert!(h.peers[CALLER].sent.is_empty());

    h.command(CALLER, Command::Dial).unwrap();
    assert!(invalid(h.command(CALLER, Command::Dial)));
    assert!(
        invalid(h.command(CALLEE, Command::Answer)),
        "not ringing yet"
    );
    h.settle();
    assert!(invalid(h.command(CALLER, Command::Answer)));
    assert!(invalid(h.command(CALLER, Command::Mute(true))));
    h.command(CALLEE, Command::Answer).unwrap();
    assert!(invalid(h.command(CALLEE, Command::Answer)));
    assert!(invalid(h.command(CALLEE, Command::Busy)));
}

#[test]
fn out_of_order_signals_are_refused_without_effect() {
    let mut h = Harness::active();
    for message in [
        Message::Accept,
        Message::Ringing,
        Message::Busy,
        Message::Cancel,
        Message::Handshake(vec![1, 2, 3]),
    ] {
        assert!(matches!(
            h.signal(CALLER, message),
            Err(CallError::UnexpectedMessage { .. })
        ));
    }
    assert_eq!(h.state(CALLER), ACTIVE);
}

#[test]
fn ping_measures_rtt() {
    let mut h = Harness::active();
    assert_eq!(h.peers[CALLER].call.stats().rtt_ms, None);
    h.run_for(Duration::from_secs(6));
    for i in [CALLER, CALLEE] {
        let rtt = h.peers[i].call.stats().rtt_ms.unwrap();
        assert!((rtt - 40.0).abs() < 1.0, "rtt {rtt} ms with 20 ms each way");
    }
}

#[test]
fn unsupported_wire_version_ends_the_call() {
    let mut h = Harness::new();
    let result = h.signal(
        CALLEE,
        Message::Hello {
            min_version: 2,
            max_version: 3,
            features: viska_proto::Features::NONE,
        },
    );
    assert!(matches!(result, Err(CallError::VersionMismatch(_))));
    assert_eq!(h.state(CALLEE), CallState::Ended(EndReason::ProtocolError));
    assert_eq!(
        h.peers[CALLEE].sent.last(),
        Some(&Message::Hangup {
            reason: Reason::Unsupported
        })
    );
}

#[test]
fn a_tampered_handshake_fails_the_call() {
    let mut h = Harness::new();
    h.tamper = Some(Box::new(|from, message| match message {
        Message::Handshake(mut bytes) if from == CALLEE => {
            if let Some(last) = bytes.last_mut() {
                *last ^= 0x80;
            }
            Some(Message::Handshake(bytes))
        }
        other => Some(other),
    }));
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert_eq!(
        h.state(CALLER),
        CallState::Ended(EndReason::HandshakeFailed)
    );
    assert!(matches!(
        h.peers[CALLER].errors.as_slice(),
        [CallError::Handshake(_)]
    ));
    assert!(matches!(
        h.state(CALLEE),
        CallState::Ended(EndReason::Hangup {
            by: Side::Remote,
            reason: Reason::Security
        })
    ));
}

#[test]
fn different_channel_bindings_fail_the_handshake() {
    let mut h = Harness::with(|role, config| {
        if role == Role::Callee {
            config.binding.tls_exporter = [9; 32];
        }
    });
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    // The caller checks the callee's signature over a transcript with another TLS session.
    assert_eq!(
        h.state(CALLER),
        CallState::Ended(EndReason::HandshakeFailed)
    );
    assert_eq!(
        h.state(CALLEE),
        CallState::Ended(EndReason::Hangup {
            by: Side::Remote,
            reason: Reason::Security
        })
    );
    for peer in &h.peers {
        assert!(peer.call.sas().is_none());
        assert!(
            !peer
                .events
                .iter()
                .any(|e| matches!(e, CallEvent::KeysReady { .. }))
        );
    }
}

/// The handshake picks the suite (the callee's only one here); the caller's Invite names that
/// suite rather than the first of its own list, and the call rings.
#[test]
fn the_invite_names_the_suite_the_handshake_chose() {
    let mut h = Harness::with(|role, config| {
        if role == Role::Callee {
            config.suites = vec![CipherSuite::Aes128GcmSha256];
        } else {
            config.media.suite = SuiteId(CipherSuite::ChaCha20Poly1305Sha256.id());
        }
    });
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert_eq!(h.state(CALLEE), CallState::Ringing);
    let invite_suite = h.peers[CALLER].sent.iter().find_map(|m| match m {
        Message::Invite { media, .. } => Some(media.suite),
        _ => None,
    });
    assert_eq!(
        invite_suite,
        Some(SuiteId(CipherSuite::Aes128GcmSha256.id()))
    );
}

/// An Invite that rewrites one media field in flight, and the ending both sides see.
fn invite_rewritten(rewrite: fn(&mut MediaParams)) -> Harness {
    let mut h = Harness::new();
    h.tamper = Some(Box::new(move |_, message| match message {
        Message::Invite { call_id, mut media } => {
            rewrite(&mut media);
            Some(Message::Invite { call_id, media })
        }
        other => Some(other),
    }));
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert_eq!(
        h.state(CALLEE),
        CallState::Ended(EndReason::Rejected {
            by: Side::Local,
            reason: Reason::Unsupported
        })
    );
    assert_eq!(
        h.state(CALLER),
        CallState::Ended(EndReason::Rejected {
            by: Side::Remote,
            reason: Reason::Unsupported
        })
    );
    assert!(
        h.peers[CALLEE]
            .errors
            .iter()
            .any(|e| matches!(e, CallError::UnsupportedMedia(_))),
        "{:?}",
        h.peers[CALLEE].errors
    );
    h
}

/// Both accept both suites and the handshake picks ChaCha20-Poly1305; an Invite naming
/// AES-GCM does not match what media would use, and the callee refuses it.
#[test]
fn an_invite_naming_another_suite_than_the_handshake_is_rejected() {
    invite_rewritten(|media| media.suite = SuiteId(CipherSuite::Aes128GcmSha256.id()));
}

/// A v1 phone plays 10 and 20 ms frames; an Invite for 40 or 60 ms is refused.
#[test]
fn an_invite_for_frames_longer_than_20_ms_is_rejected() {
    invite_rewritten(|media| media.frame = FrameDuration::Ms40);
    invite_rewritten(|media| media.frame = FrameDuration::Ms60);
}

/// A bitrate Opus does not accept cannot set up the callee's encoder: refused at the Invite.
#[test]
fn an_invite_with_a_bitrate_opus_does_not_take_is_rejected() {
    invite_rewritten(|media| media.bitrate_bps = 0);
    invite_rewritten(|media| media.bitrate_bps = 5_999);
    invite_rewritten(|media| media.bitrate_bps = 510_001);
}

/// A suite neither side could use with the handshake's keys: the callee's list does not hold
/// the Invite's suite.
#[test]
fn an_invite_naming_a_suite_the_callee_does_not_accept_is_rejected() {
    invite_rewritten(|media| media.suite = SuiteId(0x0002));
}

/// Encrypted control frames before the keys exist come from a peer that has not
/// authenticated: refused as unexpected, with no security event for the application.
#[test]
fn encrypted_frames_before_the_keys_are_refused_without_events() {
    let mut h = Harness::new();
    for _ in 0..100 {
        assert!(matches!(
            h.signal(CALLEE, Message::Encrypted(vec![0x5a; 40])),
            Err(CallError::UnexpectedMessage { .. })
        ));
    }
    let events = h.take_events(CALLEE);
    assert!(
        !events.iter().any(|e| matches!(e, CallEvent::Security(_))),
        "{events:?}"
    );
    // The call itself is untouched: it still completes.
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert_eq!(h.state(CALLEE), CallState::Ringing);
}

#[test]
fn invalid_configs_are_refused() {
    let mut rng = StdRng::seed_from_u64(5);
    let now = Instant::now();
    let mut config = CallConfig::new(Role::Caller, identity(3), binding());
    config.suites.clear();
    assert!(matches!(
        Call::new(config, now, &mut rng),
        Err(CallError::InvalidConfig(_))
    ));
    let mut config = CallConfig::new(Role::Caller, identity(3), binding());
    config.setup_timeout = Duration::ZERO;
    assert!(matches!(
        Call::new(config, now, &mut rng),
        Err(CallError::InvalidConfig(_))
    ));
    let mut config = CallConfig::new(Role::Caller, identity(3), binding());
    config.media.suite = SuiteId(0x0002);
    assert!(matches!(
        Call::new(config, now, &mut rng),
        Err(CallError::InvalidConfig(_))
    ));
}

// ----- an active attacker: the SAS cannot be ground, every attempt is seen -----

/// The callee's application hears of the call (it rings) before the last handshake message
/// leaves, and only that message lets the caller compute the SAS.
#[test]
fn the_callee_rings_before_the_caller_can_compute_the_sas() {
    let mut h = Harness::new();
    h.peers[CALLEE].auto_ring = false;
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    // Invited but not yet rung: message 4 is held, so the caller has no keys and no SAS.
    assert!(
        h.peers[CALLEE]
            .events
            .iter()
            .any(|e| matches!(e, CallEvent::Invited { .. }))
    );
    assert!(
        h.peers[CALLEE].call.sas().is_some(),
        "the callee has its SAS"
    );
    assert_eq!(h.peers[CALLER].call.sas(), None);
    assert!(
        !h.peers[CALLER]
            .events
            .iter()
            .any(|e| matches!(e, CallEvent::KeysReady { .. }))
    );
    assert!(
        h.peers[CALLER].keys.is_empty(),
        "no media keys before message 4"
    );
    let handshakes = |h: &Harness| {
        h.peers[CALLEE]
            .sent
            .iter()
            .filter(|m| matches!(m, Message::Handshake(_)))
            .count()
    };
    assert_eq!(handshakes(&h), 1, "only message 2 so far");

    h.command(CALLEE, Command::Ring).unwrap();
    h.settle();
    assert_eq!(handshakes(&h), 2);
    let trace = &h.peers[CALLEE].trace;
    let told = trace
        .iter()
        .position(|t| *t == Trace::Event("Incoming"))
        .unwrap();
    let reveal = trace
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == Trace::Sent("Handshake"))
        .map(|(at, _)| at)
        .nth(1)
        .unwrap();
    assert!(
        told < reveal,
        "the application is told before message 4: {trace:?}"
    );
    assert_eq!(h.peers[CALLER].call.sas(), h.peers[CALLEE].call.sas());
    assert_eq!(h.state(CALLER), CallState::Alerting);
    // Each side got one send key and one receive key for its peer, through the seam.
    for i in [CALLER, CALLEE] {
        let sends = h.peers[i]
            .keys
            .iter()
            .filter(|k| matches!(k, KeyUpdate::Send { .. }))
            .count();
        let receives = h.peers[i]
            .keys
            .iter()
            .filter(|k| matches!(k, KeyUpdate::Receive { .. }))
            .count();
        assert_eq!((sends, receives), (1, 1));
    }
}

/// A callee that refuses the call before telling its user (busy) never reveals its nonce: the
/// caller, or an attacker in its place, learns nothing about the SAS.
#[test]
fn a_busy_callee_never_reveals_its_sas_nonce() {
    let mut h = Harness::new();
    h.peers[CALLEE].auto_ring = false;
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    h.command(CALLEE, Command::Busy).unwrap();
    h.settle();
    assert_eq!(
        h.state(CALLER),
        CallState::Ended(EndReason::Busy { by: Side::Remote })
    );
    assert_eq!(h.peers[CALLER].call.sas(), None);
    assert_eq!(
        h.peers[CALLEE]
            .sent
            .iter()
            .filter(|m| matches!(m, Message::Handshake(_)))
            .count(),
        1
    );
    // A refusal is not an abandoned handshake.
    assert!(
        !h.peers[CALLER]
            .events
            .iter()
            .any(|e| matches!(e, CallEvent::Security(_)))
    );
}

#[test]
fn a_handshake_abandoned_after_message_2_is_a_security_event() {
    let mut h = Harness::new();
    let mut caller_handshakes = 0;
    // The caller's message 3 never arrives (a prober that gives up, or an attacker who did not
    // like what it saw).
    h.tamper = Some(Box::new(move |from, message| match (from, &message) {
        (CALLER, Message::Handshake(_)) => {
            caller_handshakes += 1;
            (caller_handshakes == 1).then_some(message)
        }
        _ => Some(message),
    }));
    h.command(CALLER, Command::Dial).unwrap();
    h.run_for(Duration::from_secs(11));
    assert_eq!(h.state(CALLEE), CallState::Ended(EndReason::SetupTimeout));
    assert!(h.peers[CALLEE].events.iter().any(|e| matches!(
        e,
        CallEvent::Security(SecurityEvent::HandshakeAbandoned {
            stage: HandshakeStage::AfterMessage2
        })
    )));
}

#[test]
fn a_failed_handshake_is_a_security_event_naming_the_check() {
    let mut h = Harness::with(|role, config| {
        if role == Role::Callee {
            config.binding.tls_exporter = [9; 32];
        }
    });
    h.command(CALLER, Command::Dial).unwrap();
    h.settle();
    assert!(h.peers[CALLER].events.iter().any(|e| matches!(
        e,
        CallEvent::Security(SecurityEvent::HandshakeFailed(HandshakeError::BadSignature))
    )));
    // The callee cannot check the binding itself (the caller's signature would come in
    // message 3, which never came); it learns that the caller's check failed.
    assert!(h.peers[CALLEE].events.iter().any(|e| matches!(
        e,
        CallEvent::Security(SecurityEvent::HandshakeRefusedByPeer)
    )));
}

/// Feeds `from`'s output into `to` until both are quiet; returns whether `to` ended.
fn pump(from: &mut Call, from_log: &mut Vec<CallEvent>, to: &mut Call, now: Instant) {
    let mut decoder = FrameDecoder::new();
    loop {
        match from.poll_output() {
            Output::Transmit(message) => {
                decoder.push(&message.to_frame().unwrap());
                while let Some(message) = decoder.next_message().unwrap() {
                    let _ = to.handle_input(Input::Signal(now, message));
                }
            }
            Output::Event(event) => from_log.push(event),
            Output::Keys(_) => {}
            Output::Timeout(_) => return,
        }
    }
}

/// Runs two calls against each other until neither has anything to say.
fn exchange(
    a: &mut Call,
    a_log: &mut Vec<CallEvent>,
    b: &mut Call,
    b_log: &mut Vec<CallEvent>,
    now: Instant,
) {
    for _ in 0..16 {
        pump(a, a_log, b, now);
        pump(b, b_log, a, now);
        // A callee rings as soon as it may (a phone that takes the call).
        if b_log.iter().any(|e| matches!(e, CallEvent::Invited { .. }))
            && b.state() == CallState::Handshaking
        {
            b.handle_input(Input::Command(now, Command::Ring)).unwrap();
        }
    }
}

/// Mallory relays Alice's call to Bob as two handshakes under her own identity, and tries again
/// towards Bob until the two SAS values match. Every attempt in which she learns Bob's SAS is a
/// call Bob's phone announced before she learned it; and an attempt she abandons earlier is a
/// security event at Bob. None of it lets her steer the value: over many attempts Bob's SAS
/// takes many values.
#[test]
fn a_man_in_the_middle_rings_the_callee_for_every_sas_guess() {
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(7);
    let mallory = identity(66);
    let new_call = |role, id: IdentityKeyPair, rng: &mut StdRng| {
        Call::new(CallConfig::new(role, id, binding()), now, rng).unwrap()
    };
    // Alice's leg: Mallory answers as a callee and learns Alice's SAS after message 3.
    let mut alice = new_call(Role::Caller, identity(1), &mut rng);
    let mut mallory_a = new_call(Role::Callee, mallory.clone(), &mut rng);
    let (mut alice_log, mut mallory_a_log) = (Vec::new(), Vec::new());
    alice
        .handle_input(Input::Command(now, Command::Dial))
        .unwrap();
    exchange(
        &mut alice,
        &mut alice_log,
        &mut mallory_a,
        &mut mallory_a_log,
        now,
    );
    let target = mallory_a.sas().unwrap();

    let mut sas_values = std::collections::HashSet::new();
    let attempts = 40;
    for attempt in 0..attempts {
        let mut mallory_b = new_call(Role::Caller, mallory.clone(), &mut rng);
        let mut bob = new_call(Role::Callee, identity(2), &mut rng);
        let (mut mallory_b_log, mut bob_log) = (Vec::new(), Vec::new());
        mallory_b
            .handle_input(Input::Command(now, Command::Dial))
            .unwrap();
        if attempt % 4 == 3 {
            // Sometimes she gives up after message 2: she has learned nothing, Bob is told.
            pump(&mut mallory_b, &mut mallory_b_log, &mut bob, now);
            pump(&mut bob, &mut bob_log, &mut mallory_b, now);
            assert_eq!(mallory_b.sas(), None);
            // Message 3 is never sent; Bob's setup timer runs out.
            while !matches!(mallory_b.poll_output(), Output::Timeout(_)) {}
            let later = now + Duration::from_secs(11);
            bob.handle_input(Input::Timeout(later)).unwrap();
            loop {
                match bob.poll_output() {
                    Output::Event(event) => bob_log.push(event),
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            assert!(bob_log.iter().any(|e| matches!(
                e,
                CallEvent::Security(SecurityEvent::HandshakeAbandoned { .. })
            )));
            continue;
        }
        exchange(
            &mut mallory_b,
            &mut mallory_b_log,
            &mut bob,
            &mut bob_log,
            now,
        );
        let sas = mallory_b.sas().expect("Mallory completed the handshake");
        assert!(
            bob_log
                .iter()
                .any(|e| matches!(e, CallEvent::Incoming { .. })),
            "attempt {attempt}: Bob's phone rang before Mallory knew his SAS"
        );
        assert_eq!(bob.state(), CallState::Ringing);
        sas_values.insert(sas.value());
        if sas == target {
            break;
        }
        // No match: she cancels and tries again; Bob sees a missed call.
        mallory_b
            .handle_input(Input::Command(now, Command::Hangup))
            .unwrap();
        pump(&mut mallory_b, &mut mallory_b_log, &mut bob, now);
        assert_eq!(
            bob.state(),
            CallState::Ended(EndReason::Cancelled { by: Side::Remote })
        );
    }
    // 30 completed attempts, 30 different values (a repeat has probability below 10^-3).
    assert!(
        sas_values.len() >= 29,
        "{} distinct values",
        sas_values.len()
    );
}
