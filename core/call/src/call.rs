//! The call state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::debug;
use viska_e2ee::direct::{
    DirectHandshake, HandshakeConfig, HandshakeStep, Reveal, Sas, SessionKeys,
};
use viska_e2ee::identity::PublicIdentity;
use viska_e2ee::keys::{Epoch, KeyUpdate, ParticipantId};
use viska_e2ee::rand_core::CryptoRng;
use viska_proto::control::{DEFAULT_DTMF_DURATION_MS, DEFAULT_DTMF_VOLUME};
use viska_proto::signal::{local_hello, negotiate_version};
use viska_proto::{
    CallId, ControlMessage, DtmfEvent, Features, MediaParams, Message, ProtoError, Reason, SuiteId,
};
use viska_sframe::{CipherSuite, ReplayConfig, SframeReceiver, SframeSender};

use crate::config::{CallConfig, PeerDirectory, Standing};
use crate::error::CallError;
use crate::state::{
    CallEvent, CallState, Command, EndReason, HandshakeStage, Input, Output, Role, SecurityEvent,
    Side, Trust,
};
use crate::stats::CallStats;

/// SFrame metadata (authenticated, not sent) of every encrypted control message: it keeps a
/// control frame from being accepted anywhere else even if keys were ever shared.
pub const CONTROL_AAD: &[u8] = b"viska control v1";

/// How far ahead `poll_output` reports a timeout when no timer is armed. (A deadline too far
/// in the future to represent as an `Instant` is treated as no deadline at all.)
const IDLE_WAKEUP: Duration = Duration::from_secs(3600);

/// One end of a 1:1 call. See the crate documentation for the driver loop.
#[derive(Debug)]
pub struct Call {
    role: Role,
    state: CallState,
    media: MediaParams,
    accepted_suites: Vec<CipherSuite>,
    expected_peer: Option<PublicIdentity>,
    verified_peers: Vec<PublicIdentity>,
    directory: Option<std::sync::Arc<dyn PeerDirectory>>,
    features: Features,
    ring_timeout: Duration,
    setup_timeout: Duration,
    keepalive_interval: Duration,

    handshake: Option<DirectHandshake>,
    /// How far the handshake got, while it runs: reported if the peer abandons it.
    handshake_stage: Option<HandshakeStage>,
    /// The callee's message 4, held until it rings (its application is told first).
    reveal: Option<Reveal>,
    /// Whether the callee reported [`CallEvent::Invited`] and waits for [`Command::Ring`].
    invited: bool,
    first_flight: Option<Vec<u8>>,
    call_id: Option<CallId>,
    peer_hello_seen: bool,
    wire_version: Option<u8>,
    peer_features: Features,
    invite: Option<MediaParams>,

    keys_ready: bool,
    /// The cipher suite the direct handshake selected: media and control use it, and the
    /// Invite must name it.
    suite: Option<CipherSuite>,
    peer: Option<PublicIdentity>,
    trust: Option<Trust>,
    sas: Option<Sas>,
    control_tx: Option<SframeSender>,
    control_rx: Option<SframeReceiver>,

    setup_deadline: Option<Instant>,
    ring_deadline: Option<Instant>,
    ping_deadline: Option<Instant>,
    outstanding_ping: Option<(u64, Instant)>,
    next_ping_value: u64,
    srtt: Option<Duration>,

    last_direction: Option<(bool, bool)>,
    remote_muted: bool,
    decrypt_failures: u64,
    last_now: Instant,
    outputs: VecDeque<Output>,
}

impl Call {
    /// A call in `Idle`. A caller's handshake keys are drawn from `rng` here; a callee's too, so
    /// that no randomness is needed later.
    pub fn new<R: CryptoRng + ?Sized>(
        config: CallConfig,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, CallError> {
        config.validate()?;
        let handshake_config = HandshakeConfig {
            identity: config.identity,
            suites: config.suites.clone(),
            binding: config.binding,
            // Trust is judged here, so that a changed key is reported rather than refused.
            expected_peer: None,
        };
        let (handshake, first_flight, call_id, setup_deadline) = match config.role {
            Role::Caller => {
                let (handshake, msg1) = DirectHandshake::initiate(handshake_config, rng)
                    .map_err(CallError::Handshake)?;
                let id = config.call_id.unwrap_or_else(|| {
                    let mut id = [0u8; CallId::LEN];
                    rng.fill_bytes(&mut id);
                    CallId(id)
                });
                (handshake, Some(msg1), Some(id), None)
            }
            Role::Callee => {
                let handshake = DirectHandshake::respond(handshake_config, rng)
                    .map_err(CallError::Handshake)?;
                (handshake, None, None, now.checked_add(config.setup_timeout))
            }
        };
        Ok(Self {
            role: config.role,
            state: CallState::Idle,
            media: config.media,
            accepted_suites: config.suites,
            expected_peer: config.expected_peer,
            verified_peers: config.verified_peers,
            directory: config.directory,
            features: config.features,
            ring_timeout: config.ring_timeout,
            setup_timeout: config.setup_timeout,
            keepalive_interval: config.keepalive_interval,
            handshake: Some(handshake),
            handshake_stage: None,
            reveal: None,
            invited: false,
            first_flight,
            call_id,
            peer_hello_seen: false,
            wire_version: None,
            peer_features: Features::NONE,
            invite: None,
            suite: None,
            keys_ready: false,
            peer: None,
            trust: None,
            sas: None,
            control_tx: None,
            control_rx: None,
            setup_deadline,
            ring_deadline: None,
            ping_deadline: None,
            outstanding_ping: None,
            next_ping_value: 1,
            srtt: None,
            last_direction: None,
            remote_muted: false,
            decrypt_failures: 0,
            last_now: now,
            outputs: VecDeque::new(),
        })
    }

    /// Caller or callee.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> CallState {
        self.state
    }

    /// The call's id: a caller's from the start, a callee's once the invitation arrived.
    pub fn call_id(&self) -> Option<CallId> {
        self.call_id
    }

    /// The peer's authenticated identity, once the handshake completed.
    pub fn peer(&self) -> Option<&PublicIdentity> {
        self.peer.as_ref()
    }

    /// How far the peer is trusted, once the handshake completed.
    pub fn trust(&self) -> Option<Trust> {
        self.trust
    }

    /// The short authentication string both ends display, once the handshake completed.
    pub fn sas(&self) -> Option<Sas> {
        self.sas
    }

    /// The media parameters in force (the caller's proposal, as accepted by the callee).
    pub fn media(&self) -> MediaParams {
        self.media
    }

    /// The wire version agreed with the peer, once its `Hello` arrived.
    pub fn wire_version(&self) -> Option<u8> {
        self.wire_version
    }

    /// The optional capabilities both ends announced.
    pub fn common_features(&self) -> Features {
        self.features.intersection(self.peer_features)
    }

    /// Whether the peer said it muted its microphone.
    pub fn remote_muted(&self) -> bool {
        self.remote_muted
    }

    /// What the state machine measured: control-plane decrypt failures and RTT. The media
    /// driver adds its packet counters to the returned value.
    pub fn stats(&self) -> CallStats {
        CallStats {
            decrypt_failures: self.decrypt_failures,
            rtt_ms: self.srtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
            bitrate_bps: self.media.bitrate_bps,
            ..CallStats::default()
        }
    }

    /// Feeds one input. Commands invalid in the current state are refused with an error and
    /// change nothing; see [`CallError`] for the signaling cases.
    pub fn handle_input(&mut self, input: Input) -> Result<(), CallError> {
        match input {
            Input::Timeout(now) => {
                let now = self.advance(now);
                self.on_timeout(now);
                Ok(())
            }
            Input::Signal(now, message) => {
                let now = self.advance(now);
                self.on_message(now, message)
            }
            Input::Command(now, command) => {
                let now = self.advance(now);
                self.on_command(now, command)
            }
            Input::Closed(now, reason) => {
                self.advance(now);
                if !self.state.is_ended() {
                    self.end(reason);
                }
                Ok(())
            }
        }
    }

    /// The next output; after the last transmit or event, `Output::Timeout` with the next
    /// instant at which `Input::Timeout` must be fed.
    pub fn poll_output(&mut self) -> Output {
        if let Some(output) = self.outputs.pop_front() {
            return output;
        }
        let next = [self.setup_deadline, self.ring_deadline, self.ping_deadline]
            .into_iter()
            .flatten()
            .min();
        Output::Timeout(
            next.or_else(|| self.last_now.checked_add(IDLE_WAKEUP))
                .unwrap_or(self.last_now),
        )
    }

    /// Time never goes backwards inside the machine, whatever the driver passes.
    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    // ----- timers -----

    fn on_timeout(&mut self, now: Instant) {
        if self.state.is_ended() {
            return;
        }
        if self.setup_deadline.is_some_and(|at| at <= now) {
            self.transmit(Message::Hangup {
                reason: Reason::Timeout,
            });
            self.end(EndReason::SetupTimeout);
            return;
        }
        if self.ring_deadline.is_some_and(|at| at <= now) {
            match self.role {
                Role::Caller => self.transmit(Message::Cancel),
                Role::Callee => self.transmit(Message::Reject {
                    reason: Reason::Timeout,
                }),
            }
            self.end(EndReason::NoAnswer);
            return;
        }
        if self.ping_deadline.is_some_and(|at| at <= now) {
            let value = self.next_ping_value;
            self.next_ping_value = self.next_ping_value.wrapping_add(1);
            self.outstanding_ping = Some((value, now));
            self.transmit(Message::Ping(value));
            self.ping_deadline = now.checked_add(self.keepalive_interval);
        }
    }

    // ----- application commands -----

    fn on_command(&mut self, now: Instant, command: Command) -> Result<(), CallError> {
        let invalid = |state| CallError::InvalidCommand {
            command: command.name(),
            state,
        };
        match (&command, self.state, self.role) {
            (Command::Dial, CallState::Idle, Role::Caller) => {
                let msg1 = self.first_flight.take().ok_or(invalid(self.state))?;
                self.transmit(local_hello(self.features));
                self.transmit(Message::Handshake(msg1));
                self.setup_deadline = now.checked_add(self.setup_timeout);
                self.set_state(CallState::Handshaking);
                Ok(())
            }
            (Command::Ring, CallState::Handshaking, Role::Callee) if self.invited => {
                self.start_ringing(now);
                Ok(())
            }
            (Command::Answer, CallState::Ringing, Role::Callee) => {
                self.transmit(Message::Accept);
                self.activate(now);
                Ok(())
            }
            (
                Command::Reject,
                CallState::Idle | CallState::Handshaking | CallState::Ringing,
                Role::Callee,
            ) => {
                self.transmit(Message::Reject {
                    reason: Reason::Declined,
                });
                self.end(EndReason::Rejected {
                    by: Side::Local,
                    reason: Reason::Declined,
                });
                Ok(())
            }
            (
                Command::Busy,
                CallState::Idle | CallState::Handshaking | CallState::Ringing,
                Role::Callee,
            ) => {
                self.transmit(Message::Busy);
                self.end(EndReason::Busy { by: Side::Local });
                Ok(())
            }
            (Command::Hangup | Command::Abort(_), CallState::Ended(_), _) => {
                Err(invalid(self.state))
            }
            (Command::Hangup | Command::Abort(_), CallState::Idle, Role::Caller) => {
                self.end(EndReason::Cancelled { by: Side::Local });
                Ok(())
            }
            (Command::Hangup | Command::Abort(_), CallState::Active { .. }, _) => {
                let reason = abort_reason(&command, Reason::Normal);
                self.transmit(Message::Hangup { reason });
                self.end(EndReason::Hangup {
                    by: Side::Local,
                    reason,
                });
                Ok(())
            }
            (Command::Hangup | Command::Abort(_), _, Role::Caller) => {
                self.transmit(Message::Cancel);
                self.end(EndReason::Cancelled { by: Side::Local });
                Ok(())
            }
            (Command::Hangup | Command::Abort(_), _, Role::Callee) => {
                let reason = abort_reason(&command, Reason::Declined);
                self.transmit(Message::Reject { reason });
                self.end(EndReason::Rejected {
                    by: Side::Local,
                    reason,
                });
                Ok(())
            }
            (
                Command::Hold,
                CallState::Active {
                    local_hold: false,
                    remote_hold,
                    muted,
                },
                _,
            ) => {
                self.send_control(&ControlMessage::Hold)?;
                self.set_state(CallState::Active {
                    local_hold: true,
                    remote_hold,
                    muted,
                });
                Ok(())
            }
            (
                Command::Resume,
                CallState::Active {
                    local_hold: true,
                    remote_hold,
                    muted,
                },
                _,
            ) => {
                self.send_control(&ControlMessage::Resume)?;
                self.set_state(CallState::Active {
                    local_hold: false,
                    remote_hold,
                    muted,
                });
                Ok(())
            }
            (
                Command::Mute(mute),
                CallState::Active {
                    local_hold,
                    remote_hold,
                    ..
                },
                _,
            ) => {
                self.send_control(&ControlMessage::Mute(*mute))?;
                self.set_state(CallState::Active {
                    local_hold,
                    remote_hold,
                    muted: *mute,
                });
                Ok(())
            }
            (
                Command::SendDtmf(digits)
                | Command::SendDtmfTones {
                    digits,
                    duration_ms: _,
                },
                CallState::Active { .. },
                _,
            ) => {
                let duration_ms = match command {
                    Command::SendDtmfTones { duration_ms, .. } => duration_ms,
                    _ => DEFAULT_DTMF_DURATION_MS,
                };
                // Checked before anything is sent: a bad command sends nothing at all.
                let control = |event| ControlMessage::Dtmf {
                    event,
                    duration_ms,
                    volume: DEFAULT_DTMF_VOLUME,
                };
                let events = DtmfEvent::parse_digits(digits).map_err(CallError::InvalidControl)?;
                if let Some(first) = events.first() {
                    // Encoding checks the fields (a zero duration is malformed on the wire).
                    control(*first)
                        .to_bytes()
                        .map_err(CallError::InvalidControl)?;
                }
                for event in events {
                    self.send_control(&control(event))?;
                }
                Ok(())
            }
            (
                Command::SendReceptionReport {
                    loss_permille,
                    jitter_ms,
                },
                CallState::Active { .. },
                _,
            ) => self.send_control(&ControlMessage::ReceptionReport {
                loss_permille: (*loss_permille).min(1000),
                jitter_ms: *jitter_ms,
            }),
            (Command::SendData(data), state, _) if self.keys_ready && !state.is_ended() => {
                self.send_control(&ControlMessage::CallData(data.clone()))
            }
            (Command::MarkVerified, state, _) if self.keys_ready && !state.is_ended() => {
                if self.trust != Some(Trust::Verified) {
                    if let (Some(directory), Some(peer)) = (&self.directory, &self.peer) {
                        directory.verified(peer);
                    }
                    self.trust = Some(Trust::Verified);
                    self.event(CallEvent::TrustChanged(Trust::Verified));
                }
                Ok(())
            }
            (_, state, _) => Err(invalid(state)),
        }
    }

    // ----- signaling from the peer -----

    fn on_message(&mut self, now: Instant, message: Message) -> Result<(), CallError> {
        if self.state.is_ended() {
            // Messages crossing our own end on the wire are normal.
            debug!(message = message.name(), "ignored after the call ended");
            return Ok(());
        }
        let unexpected = CallError::UnexpectedMessage {
            message: message.name(),
            state: self.state,
        };
        let pre_answer = matches!(
            self.state,
            CallState::Idle | CallState::Handshaking | CallState::Ringing | CallState::Alerting
        );
        match message {
            Message::Hello {
                min_version,
                max_version,
                features,
            } => self.on_hello(min_version, max_version, features, unexpected),
            Message::Handshake(bytes) => self.on_handshake(&bytes, unexpected),
            Message::Invite { call_id, media } => self.on_invite(call_id, media, unexpected),
            Message::Ringing => {
                if self.role != Role::Caller
                    || self.state != CallState::Handshaking
                    || !self.keys_ready
                {
                    return Err(unexpected);
                }
                self.setup_deadline = None;
                self.ring_deadline = now.checked_add(self.ring_timeout);
                self.set_state(CallState::Alerting);
                Ok(())
            }
            Message::Accept => {
                let answerable = matches!(self.state, CallState::Handshaking | CallState::Alerting);
                if self.role != Role::Caller || !answerable || !self.keys_ready {
                    return Err(unexpected);
                }
                self.activate(now);
                Ok(())
            }
            Message::Reject { reason } if self.role == Role::Caller && pre_answer => {
                // The callee's ring timer ran out first: the same outcome as ours running out.
                self.end(if reason == Reason::Timeout {
                    EndReason::NoAnswer
                } else {
                    EndReason::Rejected {
                        by: Side::Remote,
                        reason,
                    }
                });
                Ok(())
            }
            Message::Busy if self.role == Role::Caller && pre_answer => {
                self.end(EndReason::Busy { by: Side::Remote });
                Ok(())
            }
            Message::Cancel if self.role == Role::Callee && pre_answer => {
                self.end(EndReason::Cancelled { by: Side::Remote });
                Ok(())
            }
            Message::Hangup { reason } => {
                self.end(EndReason::Hangup {
                    by: Side::Remote,
                    reason,
                });
                Ok(())
            }
            // Before the keys there is nothing to decrypt with: a peer that has not
            // authenticated gets a refusal (counted by the driver), not a security event for
            // the application per frame.
            Message::Encrypted(_) if self.control_rx.is_none() => Err(unexpected),
            Message::Encrypted(frame) => {
                self.on_encrypted(&frame);
                Ok(())
            }
            Message::Ping(value) => {
                self.transmit(Message::Pong(value));
                Ok(())
            }
            Message::Pong(value) => {
                if let Some((sent_value, sent_at)) = self.outstanding_ping
                    && sent_value == value
                {
                    self.outstanding_ping = None;
                    let sample = now.saturating_duration_since(sent_at);
                    // RFC 6298 smoothing: srtt = 7/8 srtt + 1/8 sample.
                    self.srtt = Some(match self.srtt {
                        None => sample,
                        Some(srtt) => srtt.saturating_mul(7).saturating_add(sample) / 8,
                    });
                }
                Ok(())
            }
            _ => Err(unexpected),
        }
    }

    fn on_hello(
        &mut self,
        min_version: u8,
        max_version: u8,
        features: Features,
        unexpected: CallError,
    ) -> Result<(), CallError> {
        if self.peer_hello_seen {
            return Err(unexpected);
        }
        let caller_waiting = self.role == Role::Caller && self.state == CallState::Handshaking;
        let callee_fresh = self.role == Role::Callee && self.state == CallState::Idle;
        if !(caller_waiting || callee_fresh) {
            return Err(unexpected);
        }
        self.peer_hello_seen = true;
        match negotiate_version(min_version, max_version) {
            Ok(version) => {
                self.wire_version = Some(version);
                self.peer_features = features;
                let local = local_hello(self.features);
                // Both Hellos, initiator's first, enter the handshake's signed transcript: a
                // man in the middle who narrows a version range or strips a feature makes a
                // signature fail (docs/protocol-handshake.md §3.7).
                let peer = Message::Hello {
                    min_version,
                    max_version,
                    features,
                };
                let (initiator, responder) = match self.role {
                    Role::Caller => (&local, &peer),
                    _ => (&peer, &local),
                };
                let mut prologue = hello_prologue(initiator);
                prologue.extend_from_slice(&hello_prologue(responder));
                if let Some(handshake) = self.handshake.as_mut() {
                    handshake.bind_prologue(&prologue);
                }
                if self.role == Role::Callee {
                    self.transmit(local);
                    self.set_state(CallState::Handshaking);
                }
                Ok(())
            }
            Err(error) => {
                self.transmit(Message::Hangup {
                    reason: Reason::Unsupported,
                });
                self.end(EndReason::ProtocolError);
                Err(CallError::VersionMismatch(error))
            }
        }
    }

    fn on_handshake(&mut self, bytes: &[u8], unexpected: CallError) -> Result<(), CallError> {
        if self.keys_ready || !self.peer_hello_seen || self.state != CallState::Handshaking {
            return Err(unexpected);
        }
        let Some(handshake) = self.handshake.as_mut() else {
            return Err(unexpected);
        };
        match handshake.handle_message(bytes) {
            Ok(HandshakeStep::Send(reply)) => {
                self.transmit(Message::Handshake(reply));
                match self.role {
                    Role::Caller => {
                        self.handshake_stage = Some(HandshakeStage::AfterMessage3);
                        // The Invite follows message 3 at once: the suite is chosen (message
                        // 2), and the callee rings only once it has both.
                        if let (Some(call_id), Some(suite)) = (
                            self.call_id,
                            self.handshake.as_ref().and_then(|h| h.negotiated_suite()),
                        ) {
                            self.media.suite = SuiteId(suite.id());
                            self.transmit(Message::Invite {
                                call_id,
                                media: self.media,
                            });
                        }
                    }
                    _ => self.handshake_stage = Some(HandshakeStage::AfterMessage2),
                }
                Ok(())
            }
            Ok(HandshakeStep::CompleteWithReveal(keys, reveal)) => {
                self.reveal = Some(reveal);
                self.on_keys(keys)
            }
            Ok(HandshakeStep::Complete(keys)) => self.on_keys(keys),
            Err(error) => {
                self.handshake_stage = None;
                self.event(CallEvent::Security(SecurityEvent::HandshakeFailed(
                    error.clone(),
                )));
                self.transmit(Message::Hangup {
                    reason: Reason::Security,
                });
                self.end(EndReason::HandshakeFailed);
                Err(CallError::Handshake(error))
            }
        }
    }

    fn on_keys(&mut self, keys: SessionKeys) -> Result<(), CallError> {
        self.handshake = None;
        self.handshake_stage = None;
        let SessionKeys {
            suite,
            media_send,
            media_recv,
            control_send,
            control_recv,
            sas,
            peer,
            ..
        } = keys;
        let control = SframeSender::from_key(suite, control_send).and_then(|sender| {
            let mut receiver = SframeReceiver::new(suite, ReplayConfig::default())?;
            receiver.add_key(control_recv.key_id, &control_recv.base_key)?;
            Ok((sender, receiver))
        });
        let (sender, receiver) = match control {
            Ok(pair) => pair,
            Err(error) => {
                self.transmit(Message::Hangup {
                    reason: Reason::Error,
                });
                self.end(EndReason::HandshakeFailed);
                return Err(CallError::Sframe(error));
            }
        };
        self.control_tx = Some(sender);
        self.control_rx = Some(receiver);
        self.keys_ready = true;
        self.suite = Some(suite);

        let standing = match (&self.expected_peer, &self.directory) {
            (Some(expected), _) if *expected == peer => Standing::Verified,
            (Some(expected), _) => Standing::KeyChanged { pinned: *expected },
            (None, Some(directory)) => directory.standing(&peer),
            (None, None) if self.verified_peers.contains(&peer) => Standing::Verified,
            (None, None) => Standing::Unverified,
        };
        let trust = match standing {
            Standing::Verified => Trust::Verified,
            Standing::KeyChanged { pinned } => {
                self.event(CallEvent::Security(SecurityEvent::KeyChanged {
                    expected: pinned.fingerprint(),
                    actual: peer.fingerprint(),
                }));
                Trust::KeyChanged
            }
            _ => Trust::Unverified,
        };
        self.trust = Some(trust);
        self.sas = Some(sas);
        self.peer = Some(peer);
        // The media keys leave through the key-source seam, the rest as an event.
        let epoch = Epoch(0);
        self.outputs.push_back(Output::Keys(KeyUpdate::Send {
            epoch,
            suite,
            key: media_send,
        }));
        self.outputs.push_back(Output::Keys(KeyUpdate::Receive {
            participant: ParticipantId::DIRECT_PEER,
            epoch,
            suite,
            key: media_recv,
        }));
        self.event(CallEvent::KeysReady {
            peer,
            trust,
            sas,
            suite,
        });
        if self.role == Role::Callee && self.invite.is_some() {
            return self.invited();
        }
        Ok(())
    }

    fn on_invite(
        &mut self,
        call_id: CallId,
        media: MediaParams,
        unexpected: CallError,
    ) -> Result<(), CallError> {
        let early = matches!(self.state, CallState::Idle | CallState::Handshaking);
        if self.role != Role::Callee || self.invite.is_some() || !early || !self.peer_hello_seen {
            return Err(unexpected);
        }
        let suite_ok = CipherSuite::from_id(media.suite.0)
            .is_some_and(|suite| self.accepted_suites.contains(&suite));
        if !suite_ok {
            return Err(self.refuse_media("cipher suite"));
        }
        if !media.frame.is_played() {
            return Err(self.refuse_media("frame duration"));
        }
        // The callee's encoder takes the caller's bitrate: it must be one Opus accepts.
        if !MediaParams::BITRATE_BPS.contains(&media.bitrate_bps) {
            return Err(self.refuse_media("bitrate"));
        }
        self.call_id = Some(call_id);
        self.media = media;
        self.invite = Some(media);
        if self.keys_ready {
            return self.invited();
        }
        Ok(())
    }

    /// Refuses the caller's media parameters: `Reject(Unsupported)`, and the call ends.
    fn refuse_media(&mut self, what: &'static str) -> CallError {
        self.transmit(Message::Reject {
            reason: Reason::Unsupported,
        });
        self.end(EndReason::Rejected {
            by: Side::Local,
            reason: Reason::Unsupported,
        });
        CallError::UnsupportedMedia(what)
    }

    fn on_encrypted(&mut self, frame: &[u8]) {
        let Some(receiver) = self.control_rx.as_mut() else {
            return;
        };
        let mut plain = vec![0u8; frame.len()];
        let len = match receiver.unprotect(CONTROL_AAD, frame, &mut plain) {
            Ok(unprotected) => unprotected.len,
            Err(error) => {
                debug!(%error, "control frame rejected");
                self.count_decrypt_failure();
                return;
            }
        };
        let message = match plain.get(..len).map(ControlMessage::decode) {
            Some(Ok(message)) => message,
            Some(Err(ProtoError::UnknownControlType { message_type })) => {
                debug!(message_type, "unknown control message ignored");
                return;
            }
            Some(Err(error)) => {
                self.event(CallEvent::Security(SecurityEvent::MalformedControl(error)));
                return;
            }
            None => return,
        };
        self.on_control(message);
    }

    fn on_control(&mut self, message: ControlMessage) {
        match message {
            ControlMessage::Dtmf {
                event, duration_ms, ..
            } => self.event(CallEvent::Dtmf { event, duration_ms }),
            ControlMessage::CallData(data) => self.event(CallEvent::Data(data)),
            ControlMessage::Hold | ControlMessage::Resume => {
                let hold = message == ControlMessage::Hold;
                if let CallState::Active {
                    local_hold,
                    remote_hold,
                    muted,
                } = self.state
                    && remote_hold != hold
                {
                    self.set_state(CallState::Active {
                        local_hold,
                        remote_hold: hold,
                        muted,
                    });
                }
            }
            ControlMessage::Mute(muted) => {
                self.remote_muted = muted;
                self.event(CallEvent::RemoteMute(muted));
            }
            ControlMessage::ReceptionReport {
                loss_permille,
                jitter_ms,
            } => self.event(CallEvent::ReceptionReport {
                loss_permille,
                jitter_ms,
            }),
            _ => {}
        }
    }

    fn count_decrypt_failure(&mut self) {
        self.decrypt_failures = self.decrypt_failures.saturating_add(1);
        self.event(CallEvent::Security(SecurityEvent::ControlDecryptFailed {
            failures: self.decrypt_failures,
        }));
    }

    // ----- helpers -----

    fn send_control(&mut self, message: &ControlMessage) -> Result<(), CallError> {
        let plain = message.to_bytes().map_err(CallError::InvalidControl)?;
        let Some(sender) = self.control_tx.as_mut() else {
            return Err(CallError::InvalidCommand {
                command: "send control message",
                state: self.state,
            });
        };
        let mut frame = vec![0u8; sender.protected_len(plain.len())];
        let len = sender
            .protect(CONTROL_AAD, &plain, &mut frame)
            .map_err(CallError::Sframe)?;
        frame.truncate(len);
        self.transmit(Message::Encrypted(frame));
        Ok(())
    }

    /// A callee with keys and a valid Invite: reports it and waits for [`Command::Ring`].
    fn invited(&mut self) -> Result<(), CallError> {
        let (Some(call_id), Some(peer), Some(trust), Some(media), Some(suite)) =
            (self.call_id, self.peer, self.trust, self.invite, self.suite)
        else {
            return Ok(());
        };
        if media.suite != SuiteId(suite.id()) {
            // Media is protected with the handshake's suite; an Invite naming another one
            // comes from a peer that does not follow the protocol.
            return Err(self.refuse_media("cipher suite differs from the handshake's"));
        }
        self.invited = true;
        self.event(CallEvent::Invited {
            call_id,
            peer,
            trust,
            media,
        });
        Ok(())
    }

    /// Rings: the application hears of the call (state and `Incoming`) before message 4
    /// leaves, which lets the caller compute the SAS; then `Ringing`.
    fn start_ringing(&mut self, now: Instant) {
        let (Some(call_id), Some(peer), Some(trust), Some(media)) =
            (self.call_id, self.peer, self.trust, self.invite)
        else {
            return;
        };
        self.invited = false;
        self.setup_deadline = None;
        self.ring_deadline = now.checked_add(self.ring_timeout);
        self.set_state(CallState::Ringing);
        self.event(CallEvent::Incoming {
            call_id,
            peer,
            trust,
            media,
        });
        if let Some(reveal) = self.reveal.take() {
            self.transmit(Message::Handshake(reveal.into_bytes()));
        }
        self.transmit(Message::Ringing);
    }

    fn activate(&mut self, now: Instant) {
        self.setup_deadline = None;
        self.ring_deadline = None;
        self.ping_deadline = now.checked_add(self.keepalive_interval);
        self.set_state(CallState::Active {
            local_hold: false,
            remote_hold: false,
            muted: false,
        });
    }

    fn end(&mut self, reason: EndReason) {
        // Ended before the keys with the peer's answer outstanding, and not because the peer
        // refused or this end gave up: the peer abandoned the handshake.
        if let Some(stage) = self.handshake_stage.take() {
            let event = match reason {
                EndReason::Hangup {
                    by: Side::Remote,
                    reason: Reason::Security,
                } => Some(SecurityEvent::HandshakeRefusedByPeer),
                EndReason::SetupTimeout
                | EndReason::ConnectionLost
                | EndReason::ProtocolError
                | EndReason::Cancelled { by: Side::Remote }
                | EndReason::Hangup {
                    by: Side::Remote, ..
                } => Some(SecurityEvent::HandshakeAbandoned { stage }),
                // The peer refused the call (busy, rejected) or this end gave up.
                _ => None,
            };
            if let Some(event) = event {
                self.event(CallEvent::Security(event));
            }
        }
        self.reveal = None;
        self.invited = false;
        self.setup_deadline = None;
        self.ring_deadline = None;
        self.ping_deadline = None;
        self.outstanding_ping = None;
        self.handshake = None;
        self.set_state(CallState::Ended(reason));
    }

    fn set_state(&mut self, state: CallState) {
        if self.state == state {
            return;
        }
        self.state = state;
        self.event(CallEvent::StateChanged(state));
        let direction = match state {
            CallState::Active {
                local_hold,
                remote_hold,
                muted,
            } => {
                let flowing = !local_hold && !remote_hold;
                Some((flowing && !muted, flowing))
            }
            CallState::Ended(_) if self.last_direction.is_some() => Some((false, false)),
            _ => None,
        };
        if let Some(direction) = direction
            && self.last_direction != Some(direction)
        {
            self.last_direction = Some(direction);
            self.event(CallEvent::MediaDirection {
                send: direction.0,
                receive: direction.1,
            });
        }
    }

    fn transmit(&mut self, message: Message) {
        self.outputs.push_back(Output::Transmit(message));
    }

    fn event(&mut self, event: CallEvent) {
        self.outputs.push_back(Output::Event(event));
    }
}

/// A `Hello`'s part of the handshake prologue: `u8 min || u8 max || u32 features`.
fn hello_prologue(hello: &Message) -> Vec<u8> {
    match hello {
        Message::Hello {
            min_version,
            max_version,
            features,
        } => {
            let mut out = vec![*min_version, *max_version];
            out.extend_from_slice(&features.0.to_be_bytes());
            out
        }
        _ => Vec::new(),
    }
}

/// The reason an ending command gives the peer: its own for `Abort`, `default` for `Hangup`.
fn abort_reason(command: &Command, default: Reason) -> Reason {
    match command {
        Command::Abort(reason) => *reason,
        _ => default,
    }
}
