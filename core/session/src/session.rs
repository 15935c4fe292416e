//! The session: one call's signaling, keys and media as one state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use viska_call::{
    Call, CallConfig, CallEvent, CallState, CallStats, Command, EndReason, Input as CallInput,
    Output as CallOutput, Reason, Role, SecurityEvent, Trust,
};
use viska_e2ee::direct::Sas;
use viska_e2ee::identity::PublicIdentity;
use viska_e2ee::keys::{Epoch, KeyUpdate, ParticipantId, SframeKey};
use viska_media::codec::OpusConfig;
use viska_media::jitter::JitterConfig;
use viska_media::playout::JitterStats;
use viska_proto::{CallId, DtmfEvent, FrameDecoder, MediaParams, ProtoError, SuiteId};
use viska_sframe::{CipherSuite, SendKey, SframeHeader};

use crate::MAX_DATAGRAM;
use crate::clock::FrameClock;
use crate::control::{Control, GroupControl};
use crate::error::{MediaError, SessionError};
use crate::sender::MediaSender;
use crate::stream::{Stream, StreamCounters};

/// How far ahead of its time a periodic job may run when the session is woken anyway: the
/// playout of a frame that has already arrived, and the capture from a source without a clock
/// of its own (a file). Meeting two deadlines in one wake-up saves the driver's thread a trip
/// through the scheduler; an early playout is of a frame already here, an early read of a file
/// passes at most this much variation in send times on to the peer's jitter buffer.
pub const EARLY_WINDOW: Duration = Duration::from_millis(5);

/// How long after the expected arrival of the next frame the playout clock ticks. The next
/// frame normally arrives first and its arrival plays the one before (see [`EARLY_WINDOW`]),
/// so the playout deadline itself wakes the driver mostly for late or missing frames, which then
/// play this much later than on an exact clock (as does the very first frame).
pub const LATE_MARGIN: Duration = Duration::from_millis(2);

/// How long a callee whose source has no clock of its own waits, once media may flow, for the
/// caller's first frame before it starts capture on a clock of its own. Captured in step with
/// the caller's frames, one wake-up serves receive, playout and capture.
pub const FOLLOW_WAIT: Duration = Duration::from_millis(200);

/// How often statistics are published (and a reception report sent while receiving).
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Reception reports (one a second) whose worst loss sizes the encoder's FEC.
const LOSS_REPORTS_KEPT: usize = 3;

/// The most FEC is sized for, percent.
const MAX_FEC_LOSS_PCT: u16 = 30;

/// Everything a session is set up with. Check it with [`SessionConfig::validate`] (done by
/// [`Session::new`]).
#[derive(Debug)]
pub struct SessionConfig {
    /// The call: role, identity, the TLS session binding, suites, trust, timers, and (for a
    /// caller) the media parameters it proposes.
    pub call: CallConfig,
    /// Codec settings; a callee takes frame duration and bitrate from the caller's `Invite`.
    pub opus: OpusConfig,
    /// Jitter buffer bounds of every participant's stream.
    pub jitter: JitterConfig,
    /// Produce the recording mix ([`Output::Record`]: what was sent and what was heard).
    pub record: bool,
}

impl SessionConfig {
    /// A configuration with default codec and jitter settings around `call`.
    pub fn new(call: CallConfig) -> Self {
        Self {
            call,
            opus: OpusConfig::default(),
            jitter: JitterConfig::default(),
            record: false,
        }
    }

    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<(), SessionError> {
        self.call.validate()?;
        if !self.opus.frame.is_played() {
            return Err(SessionError::InvalidConfig(format!(
                "{} ms frames: a version-1 phone sends and plays 10 and 20 ms frames",
                self.opus.frame.millis()
            )));
        }
        self.opus
            .validate()
            .map_err(|e| SessionError::InvalidConfig(e.to_string()))?;
        self.jitter
            .validate()
            .map_err(|e| SessionError::InvalidConfig(e.to_string()))?;
        Ok(())
    }
}

/// Everything a group call's session is set up with ([`Session::group`]).
#[derive(Debug, Clone)]
pub struct GroupSessionConfig {
    /// Codec settings: frame duration and bitrate are the call's.
    pub opus: OpusConfig,
    /// Jitter buffer bounds of every participant's stream.
    pub jitter: JitterConfig,
    /// The SFrame suite the group's keys are for.
    pub suite: CipherSuite,
    /// Produce the recording mix.
    pub record: bool,
}

impl Default for GroupSessionConfig {
    fn default() -> Self {
        Self {
            opus: OpusConfig::default(),
            jitter: JitterConfig::default(),
            suite: CipherSuite::AesCtr128HmacSha256_80,
            record: false,
        }
    }
}

impl GroupSessionConfig {
    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<(), SessionError> {
        if !self.opus.frame.is_played() {
            return Err(SessionError::InvalidConfig(format!(
                "{} ms frames: a version-1 phone sends and plays 10 and 20 ms frames",
                self.opus.frame.millis()
            )));
        }
        self.opus
            .validate()
            .map_err(|e| SessionError::InvalidConfig(e.to_string()))?;
        self.jitter
            .validate()
            .map_err(|e| SessionError::InvalidConfig(e.to_string()))
    }
}

/// The driver's answer to [`Request::Admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The phone takes the call: it may ring.
    Admit,
    /// The phone cannot take another call: refuse it as busy (the caller is told, nothing is
    /// revealed, no audio is opened).
    Busy,
}

/// The driver's answer to [`Request::OpenAudio`], and later changes of the audio end points.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AudioStatus {
    /// The end points are open. `source_clocked`: the capture side keeps time of its own (a
    /// sound device, an application pushing captured PCM), so a frame is read only when it is
    /// due; otherwise (a file, silence) a frame may be read early or in step with the peer.
    Opened {
        /// Whether the source has a clock of its own.
        source_clocked: bool,
    },
    /// The end points could not be opened: the call ends with reason `Error` (a ringing
    /// callee stops ringing and refuses the call with that reason; one not yet ringing never
    /// rings).
    Failed,
    /// The capture side was switched to another kind of source.
    SourceChanged {
        /// Whether the new source has a clock of its own.
        source_clocked: bool,
    },
}

/// Everything that drives a session. Every input carries the current time; the session never
/// reads a clock.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// Time passed: run what is due.
    Timeout(Instant),
    /// Bytes arrived on the signaling stream, in any chunking.
    Signaling(Instant, &'a [u8]),
    /// A media datagram arrived.
    Datagram(Instant, &'a [u8]),
    /// The application asks for something.
    Command(Instant, Command),
    /// The frame of captured audio asked for by [`Output::Capture`] (48 kHz mono,
    /// [`Session::frame_samples`] samples).
    Captured(Instant, &'a [i16]),
    /// Keys from a key source outside the session (MLS). The direct handshake's keys enter by
    /// themselves, through the same path.
    Keys(Instant, KeyUpdate),
    /// The answer to [`Request::Admit`].
    Admission(Instant, Admission),
    /// The answer to [`Request::OpenAudio`], or a change of the audio end points.
    Audio(Instant, AudioStatus),
    /// The transport refused the datagram of the last [`Output::Datagram`] (send buffer full,
    /// too large for the path): it is counted as refused rather than sent.
    DatagramRefused(Instant),
    /// The transport's own round-trip estimate, used until the call has measured one.
    TransportRtt(Instant, Duration),
    /// The transport under the call is gone (connection lost or refused, signaling stream
    /// closed): the call ends with this reason.
    Closed(Instant, EndReason),
}

/// Something the driver must do and answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// A caller has authenticated (its keys are ready): may the phone take another call? Answer
    /// with [`Input::Admission`] before anything else: signaling waits for it.
    Admit {
        /// The caller's identity.
        peer: PublicIdentity,
        /// How far it is trusted.
        trust: Trust,
    },
    /// Open the audio end points for frames of `frame_samples` samples (48 kHz mono), and a
    /// recording with `opus` if one is configured; answer with [`Input::Audio`]. Media waits
    /// for the answer, signaling does not.
    OpenAudio {
        /// Samples per frame.
        frame_samples: usize,
        /// The codec settings of the call (for a recording encoder).
        opus: OpusConfig,
    },
}

/// Something the application should know. Its `Debug` output leaves out the SAS, the DTMF
/// keys and the bytes of call data (their length is shown).
#[derive(Clone)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The call moved to a new state.
    StateChanged(CallState),
    /// The end-to-end keys are established; the SAS can be shown.
    KeysReady {
        /// The peer's authenticated identity.
        peer: PublicIdentity,
        /// How far it is trusted.
        trust: Trust,
        /// The short authentication string.
        sas: Sas,
        /// The SFrame suite of the call.
        suite: CipherSuite,
    },
    /// An incoming call rings (callee).
    Incoming {
        /// The call's id from the invitation.
        call_id: CallId,
        /// The caller's identity.
        peer: PublicIdentity,
        /// How far it is trusted.
        trust: Trust,
    },
    /// Whether media flows now (answer, hold, resume, mute).
    MediaDirection {
        /// Audio is captured and sent.
        send: bool,
        /// Audio is received and played.
        receive: bool,
    },
    /// A participant pressed a DTMF key.
    Dtmf {
        /// Who.
        participant: ParticipantId,
        /// The key.
        event: DtmfEvent,
        /// How long it was held, in milliseconds.
        duration_ms: u16,
    },
    /// A participant sent opaque call data.
    Data {
        /// Who.
        participant: ParticipantId,
        /// The data.
        data: Vec<u8>,
    },
    /// A participant muted or unmuted its microphone.
    PeerMuted {
        /// Who.
        participant: ParticipantId,
        /// Muted now.
        muted: bool,
    },
    /// A participant put the call on hold or took it off.
    PeerHold {
        /// Who.
        participant: ParticipantId,
        /// On hold now.
        on_hold: bool,
    },
    /// Something security-relevant happened.
    Security(SecurityEvent),
    /// The trust in the peer's identity changed (the user verified it).
    TrustChanged(Trust),
    /// Statistics, once a [`STATS_INTERVAL`] and once more when the call ends.
    Stats(CallStats),
}

impl std::fmt::Debug for SessionEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = format_args!("***");
        match self {
            Self::StateChanged(state) => f.debug_tuple("StateChanged").field(state).finish(),
            Self::KeysReady {
                peer, trust, suite, ..
            } => f
                .debug_struct("KeysReady")
                .field("peer", peer)
                .field("trust", trust)
                .field("sas", &hidden)
                .field("suite", suite)
                .finish(),
            Self::Incoming {
                call_id,
                peer,
                trust,
            } => f
                .debug_struct("Incoming")
                .field("call_id", call_id)
                .field("peer", peer)
                .field("trust", trust)
                .finish(),
            Self::MediaDirection { send, receive } => f
                .debug_struct("MediaDirection")
                .field("send", send)
                .field("receive", receive)
                .finish(),
            Self::Dtmf {
                participant,
                duration_ms,
                ..
            } => f
                .debug_struct("Dtmf")
                .field("participant", participant)
                .field("event", &hidden)
                .field("duration_ms", duration_ms)
                .finish(),
            Self::Data { participant, data } => f
                .debug_struct("Data")
                .field("participant", participant)
                .field("len", &data.len())
                .finish_non_exhaustive(),
            Self::PeerMuted { participant, muted } => f
                .debug_struct("PeerMuted")
                .field("participant", participant)
                .field("muted", muted)
                .finish(),
            Self::PeerHold {
                participant,
                on_hold,
            } => f
                .debug_struct("PeerHold")
                .field("participant", participant)
                .field("on_hold", on_hold)
                .finish(),
            Self::Security(event) => f.debug_tuple("Security").field(event).finish(),
            Self::TrustChanged(trust) => f.debug_tuple("TrustChanged").field(trust).finish(),
            Self::Stats(stats) => f.debug_tuple("Stats").field(stats).finish(),
        }
    }
}

/// What the session produces. Drain [`Session::poll_output`] until it returns
/// [`Output::Timeout`]; then wait for input or that instant.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<'a> {
    /// Send this media datagram now.
    Datagram(&'a [u8]),
    /// Write these bytes on the signaling stream, in order.
    Signaling(&'a [u8]),
    /// Read one frame from the capture source now and pass it as [`Input::Captured`].
    Capture,
    /// Play this frame (what every participant said, mixed).
    Play(&'a [i16]),
    /// Write this frame to the recording (what was sent mixed with what was heard).
    Record(&'a [i16]),
    /// Do this and answer it.
    Request(Request),
    /// Tell the application.
    Event(SessionEvent),
    /// Nothing more until this instant (or the next input): then pass [`Input::Timeout`].
    Timeout(Instant),
}

/// Counters of one session's media path. With one remote participant they are its stream's;
/// with several, sums (and the worst jitter and delay).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MediaCounters {
    /// Frames encoded, protected and accepted by the transport.
    pub frames_sent: u64,
    /// Protected frames the transport refused (send buffer full, datagram too large); they are
    /// not in `frames_sent`.
    pub frames_refused: u64,
    /// Frame periods in which nothing was sent (mute, hold, DTX silence, before the answer).
    pub frames_skipped: u64,
    /// Of `frames_sent`, comfort-noise updates sent in DTX silence (media flag D).
    pub comfort_noise_sent: u64,
    /// Media bytes (whole datagrams) sent.
    pub bytes_sent: u64,
    /// Opus payload bytes sent (to compute the overhead).
    pub opus_bytes_sent: u64,
    /// Datagrams that authenticated and parsed.
    pub frames_received: u64,
    /// Datagrams that failed authentication or had an unknown key id.
    pub decrypt_failures: u64,
    /// Datagrams rejected as replays (duplicate or older than the replay window).
    pub replays_rejected: u64,
    /// Datagrams whose SFrame header or decrypted payload was malformed.
    pub malformed: u64,
    /// Authenticated datagrams the jitter buffer refused (late, duplicate, oversized).
    pub refused_by_buffer: u64,
    /// Datagrams that arrived before the media opened, or before any participant's receive
    /// keys were installed (dropped).
    pub early: u64,
    /// Datagrams under a key no participant's stream holds, in a call of several (dropped;
    /// with one peer they count as that peer's decrypt failures).
    pub unattributed: u64,
    /// [`Output::Capture`] requests not answered with a frame of the right size before the
    /// next was due (each such period is a pause to the peer).
    pub captures_missed: u64,
    /// The loss (percent) the encoder's in-band FEC is sized for, from the peer's reports.
    pub fec_expected_loss_pct: u8,
    /// Playout counters (loss, concealment, FEC, delays).
    pub playout: JitterStats,
}

/// Signaling frames the session received and did not act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalingCounters {
    /// Frames whose body did not decode (dropped; the stream goes on).
    pub malformed: u64,
    /// Messages that decoded but were refused in the call's state.
    pub refused: u64,
    /// Frames of a message type this version does not know (skipped).
    pub skipped_unknown: u64,
}

/// Which media output is ready (decided before the borrow that hands it out).
#[derive(Clone, Copy)]
enum Ready {
    Datagram(usize),
    Play,
    Record,
    Capture,
}

/// What the session queued for the driver, in order.
#[derive(Debug)]
enum Queued {
    Signaling(Vec<u8>),
    Request(Request),
    Event(SessionEvent),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdmissionState {
    /// A caller, or a callee not yet authenticated.
    NotAsked,
    /// Asked; signaling waits for the answer.
    Asked,
    Admitted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AudioState {
    NotRequested,
    Requested,
    Ready,
    Failed,
}

/// The media keys the key source handed out before the media opened.
#[derive(Debug, Default)]
struct PendingKeys {
    send: Option<(Epoch, CipherSuite, SendKey)>,
    receive: Vec<(ParticipantId, Epoch, CipherSuite, SframeKey)>,
}

/// The open media path.
struct Media {
    opus: OpusConfig,
    jitter: JitterConfig,
    frame_samples: usize,
    sender: Option<MediaSender>,
    streams: Vec<Stream>,
    /// What the streams of participants who left counted (kept in the call's totals).
    departed: (StreamCounters, Option<JitterStats>),
    /// When the next frame is captured (running once the audio is open).
    capture: FrameClock,
    /// When the next frame is played.
    playout: FrameClock,
    playout_aligned: bool,
    /// A callee whose source has no clock of its own captures in step with the caller's
    /// frames; true until its capture clock has started.
    follows_peer: bool,
    source_clocked: bool,
    started: bool,
    /// [`Output::Capture`] is due to be emitted / was emitted and awaits [`Input::Captured`].
    capture_wanted: bool,
    capture_pending: bool,
    /// A playout that waits for the capture (a clocked source's frame goes out first).
    playout_deferred: Option<Instant>,
    datagram: Vec<u8>,
    datagram_len: Option<usize>,
    last_datagram_len: usize,
    mix: Vec<i16>,
    scratch: Vec<i16>,
    play_ready: bool,
    record: Option<Vec<i16>>,
    record_ready: bool,
    /// The last captured frame and whether it was sent (for the recording's mix).
    captured: Vec<i16>,
    sent_last_frame: bool,
    /// Capture requests that went unanswered, or were answered with a wrong-sized frame.
    captures_missed: u64,
    /// Loss (percent) in the peer's last reception reports, oldest first.
    recent_loss: [u8; LOSS_REPORTS_KEPT],
    /// When the media opened, and the Opus bytes sent at the last statistics report.
    opened: Instant,
    last_rate: Option<(Instant, u64)>,
}

/// One call's signaling, keys and media for any number of remote participants, without IO.
///
/// Inputs carry the time; outputs are drained until [`Output::Timeout`]. The session owns the
/// call state machine, its key source, one media sender and one receiving stream per
/// participant (SFrame, jitter buffer, decoder), the mix of what is heard, the capture and
/// playout clocks, hold and mute, FEC sized from reception reports, and the statistics. See
/// the [crate documentation](crate) for the driver loop.
pub struct Session {
    call: Control,
    opus: OpusConfig,
    jitter: JitterConfig,
    record: bool,
    decoder: FrameDecoder,
    queue: VecDeque<Queued>,
    /// The front signaling frame handed out by the last `poll_output` (kept until the next).
    sent_signaling: Option<Vec<u8>>,
    admission: AdmissionState,
    audio: AudioState,
    /// The media parameters to open with: the caller's own, the callee's from the Invite.
    params: Option<MediaParams>,
    /// A callee that was invited and waits for admission and audio to ring.
    ring_pending: bool,
    keys: PendingKeys,
    media: Option<Media>,
    direction: (bool, bool),
    remote_hold: bool,
    call_deadline: Instant,
    next_stats: Instant,
    transport_rtt: Option<Duration>,
    signaling: SignalingCounters,
    /// Datagrams that came before the media opened, and under a key no stream holds in a
    /// call of several participants (dropped).
    early: u64,
    unattributed: u64,
    /// Opus payload rate over the last statistics interval.
    send_rate: u32,
    /// The participant and frame index of the last datagram accepted.
    last_received: Option<(ParticipantId, u64)>,
    last_now: Instant,
    ended_reported: bool,
}

/// The call's state and the media's counters: no key, SAS, audio or pending signaling.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.call.role())
            .field("state", &self.call.state())
            .field("direction", &self.direction)
            .field("media", &self.media)
            .field("signaling", &self.signaling)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("frame_samples", &self.frame_samples)
            .field("started", &self.started)
            .field("sender", &self.sender)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session in the call's `Idle` state (a caller then takes [`Command::Dial`]). The
    /// handshake's randomness is drawn from `rng` here.
    pub fn new<R: CryptoRng + ?Sized>(
        config: SessionConfig,
        now: Instant,
        rng: &mut R,
    ) -> Result<Self, SessionError> {
        config.validate()?;
        let call = Control::Direct(Box::new(Call::new(config.call, now, rng)?));
        let session = Self::with_control(call, config.opus, config.jitter, config.record, now);
        Ok(session)
    }

    /// The session of a group call: active from the start, its keys from the group's key
    /// source ([`Input::Keys`]: one receiving stream per participant the keys name), its
    /// membership and signaling with the group's delivery service. It asks for the audio end
    /// points at once ([`Request::OpenAudio`]) and sends from the first send key on; hold,
    /// mute and hang-up are [`Input::Command`]s as in a direct call.
    pub fn group(config: GroupSessionConfig, now: Instant) -> Result<Self, SessionError> {
        config.validate()?;
        let media = MediaParams {
            frame: config.opus.frame,
            bitrate_bps: config.opus.bitrate_bps,
            suite: SuiteId(config.suite.id()),
        };
        let call = Control::Group(GroupControl::new(now, media));
        let mut session = Self::with_control(call, config.opus, config.jitter, config.record, now);
        session.params = Some(media);
        session.request_audio();
        Ok(session)
    }

    fn with_control(
        call: Control,
        opus: OpusConfig,
        jitter: JitterConfig,
        record: bool,
        now: Instant,
    ) -> Self {
        let mut session = Self {
            call,
            opus,
            jitter,
            record,
            decoder: FrameDecoder::new(),
            queue: VecDeque::new(),
            sent_signaling: None,
            admission: AdmissionState::NotAsked,
            audio: AudioState::NotRequested,
            params: None,
            ring_pending: false,
            keys: PendingKeys::default(),
            media: None,
            direction: (false, false),
            remote_hold: false,
            call_deadline: now,
            next_stats: now + STATS_INTERVAL,
            transport_rtt: None,
            signaling: SignalingCounters::default(),
            early: 0,
            unattributed: 0,
            send_rate: 0,
            last_received: None,
            last_now: now,
            ended_reported: false,
        };
        session.drain_call(now);
        session
    }

    // ----- what the driver and the application can read -----

    /// Caller or callee.
    pub fn role(&self) -> Role {
        self.call.role()
    }

    /// The call's state.
    pub fn state(&self) -> CallState {
        self.call.state()
    }

    /// Whether the call is over (nothing more will be produced but what is queued).
    pub fn is_ended(&self) -> bool {
        self.call.state().is_ended()
    }

    /// The call's id: a caller's from the start, a callee's once the invitation arrived.
    pub fn call_id(&self) -> Option<CallId> {
        self.call.call_id()
    }

    /// The peer's authenticated identity, once known.
    pub fn peer(&self) -> Option<&PublicIdentity> {
        self.call.peer()
    }

    /// How far the peer is trusted, once authenticated.
    pub fn trust(&self) -> Option<Trust> {
        self.call.trust()
    }

    /// The SAS, once the keys are ready.
    pub fn sas(&self) -> Option<Sas> {
        self.call.sas()
    }

    /// The underlying direct-call state machine (none in a group call).
    pub fn call(&self) -> Option<&Call> {
        self.call.call()
    }

    /// Whether this is a group call's session ([`Session::group`]).
    pub fn is_group(&self) -> bool {
        self.call.is_group()
    }

    /// Samples per frame of the open media (48 kHz mono), once it is open.
    pub fn frame_samples(&self) -> Option<usize> {
        self.media.as_ref().map(|m| m.frame_samples)
    }

    /// The participants whose streams are open.
    pub fn participants(&self) -> Vec<ParticipantId> {
        self.media
            .as_ref()
            .map(|m| m.streams.iter().map(|s| s.participant).collect())
            .unwrap_or_default()
    }

    /// Signaling frames received and not acted on.
    pub fn signaling_counters(&self) -> SignalingCounters {
        let mut counters = self.signaling;
        counters.skipped_unknown = self.decoder.skipped_unknown();
        counters
    }

    /// The index the next captured frame gets (the SFrame counter of its datagram).
    pub fn next_frame_index(&self) -> Option<u64> {
        self.media
            .as_ref()
            .and_then(|m| m.sender.as_ref())
            .map(MediaSender::next_index)
    }

    /// The sender's index of the frame `participant`'s stream played last, and how long after
    /// the start of its period it starts to be heard; `None` if that period played no frame
    /// of theirs.
    pub fn last_played(&self, participant: ParticipantId) -> Option<(u64, Duration)> {
        self.stream(participant).and_then(|s| s.last_played)
    }

    fn stream(&self, participant: ParticipantId) -> Option<&Stream> {
        self.media
            .as_ref()
            .and_then(|m| m.streams.iter().find(|s| s.participant == participant))
    }

    /// Media counters so far (all participants).
    pub fn counters(&self) -> MediaCounters {
        let Some(m) = self.media.as_ref() else {
            return MediaCounters::default();
        };
        let mut c = MediaCounters::default();
        if let Some(sender) = &m.sender {
            let s = sender.counters;
            c.frames_sent = s.frames_sent;
            c.frames_refused = s.frames_refused;
            c.frames_skipped = s.frames_skipped;
            c.comfort_noise_sent = s.comfort_noise_sent;
            c.bytes_sent = s.bytes_sent;
            c.opus_bytes_sent = s.opus_bytes_sent;
            c.fec_expected_loss_pct = sender.expected_loss_pct;
        } else {
            c.fec_expected_loss_pct = m.opus.expected_loss_pct;
        }
        let mut totals = m.departed.0;
        let mut playout = m.departed.1.clone();
        for stream in &m.streams {
            totals.add(&stream.counters);
            let p = stream.playout_stats();
            match playout.as_mut() {
                Some(total) => total.merge(&p),
                None => playout = Some(p),
            }
        }
        c.frames_received = totals.frames_received;
        c.decrypt_failures = totals.decrypt_failures;
        c.replays_rejected = totals.replays_rejected;
        c.malformed = totals.malformed;
        c.refused_by_buffer = totals.refused_by_buffer;
        c.playout = playout.unwrap_or_default();
        c.early = self.early;
        c.unattributed = self.unattributed;
        c.captures_missed = m.captures_missed;
        c
    }

    /// How loud `participant` was in the last frame played: the RMS relative to full scale,
    /// 0 (silent, or not heard: on hold) to 1. Who is speaking, for the application's roster.
    pub fn participant_level(&self, participant: ParticipantId) -> Option<f32> {
        self.stream(participant).map(|s| s.level)
    }

    /// Playout counters of one participant's stream (loss, concealment, delays); its
    /// decryption and replay counts are summed into [`Session::counters`].
    pub fn participant_counters(&self, participant: ParticipantId) -> Option<JitterStats> {
        self.stream(participant).map(Stream::playout_stats)
    }

    /// The participant and sender's frame index of the last datagram accepted.
    pub fn last_received(&self) -> Option<(ParticipantId, u64)> {
        self.last_received
    }

    /// The statistics the application is given: the call's (RTT, control failures) with the
    /// media counters.
    pub fn stats(&self) -> CallStats {
        let mut stats = self.call.stats();
        if stats.rtt_ms.is_none() {
            stats.rtt_ms = self.transport_rtt.map(|rtt| rtt.as_secs_f64() * 1000.0);
        }
        let counters = self.counters();
        stats.packets_sent = counters.frames_sent;
        stats.packets_received = counters.frames_received;
        stats.packets_lost = counters.playout.lost;
        stats.packets_late = counters.playout.late;
        stats.jitter_ms = counters.playout.jitter.as_secs_f64() * 1000.0;
        stats.decrypt_failures += counters.decrypt_failures;
        stats.concealed_frames = counters.playout.concealed;
        stats.fec_recovered = counters.playout.fec_recovered;
        stats.dred_recovered = counters.playout.dred_recovered;
        stats.send_bitrate_bps = self.send_rate;
        stats
    }

    // ----- input -----

    /// Feeds one input. An error leaves the session usable: see [`SessionError`].
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), SessionError> {
        let was_asked = self.admission == AdmissionState::Asked;
        let result = match input {
            Input::Timeout(now) => {
                let now = self.advance(now);
                // Most wake-ups are the media clocks'; the call's own timers are seconds apart.
                if now >= self.call_deadline {
                    self.call
                        .handle_input(CallInput::Timeout(now))
                        .map_err(Into::into)
                } else {
                    Ok(())
                }
            }
            Input::Signaling(now, bytes) => {
                let now = self.advance(now);
                self.decoder.push(bytes);
                self.read_signaling(now);
                Ok(())
            }
            Input::Datagram(now, bytes) => {
                let now = self.advance(now);
                self.receive_datagram(now, bytes)
            }
            Input::Command(now, command) => {
                let now = self.advance(now);
                self.call
                    .handle_input(CallInput::Command(now, command))
                    .map_err(Into::into)
            }
            Input::Captured(now, pcm) => {
                self.advance(now);
                self.captured(pcm)
            }
            Input::Keys(now, update) => {
                self.advance(now);
                self.install_keys(update);
                Ok(())
            }
            Input::Admission(now, admission) => {
                let now = self.advance(now);
                self.admitted(now, admission)
            }
            Input::Audio(now, status) => {
                let now = self.advance(now);
                self.audio_status(now, status)
            }
            Input::DatagramRefused(now) => {
                self.advance(now);
                // The refusal is of the last datagram polled, once.
                if let Some(m) = self.media.as_mut() {
                    let len = std::mem::take(&mut m.last_datagram_len);
                    if let (Some(sender), true) = (m.sender.as_mut(), len > 0) {
                        sender.refused(len);
                    }
                }
                Ok(())
            }
            Input::TransportRtt(now, rtt) => {
                self.advance(now);
                self.transport_rtt = Some(rtt);
                Ok(())
            }
            Input::Closed(now, reason) => {
                let now = self.advance(now);
                self.call
                    .handle_input(CallInput::Closed(now, reason))
                    .map_err(Into::into)
            }
        };
        let now = self.last_now;
        self.drain_call(now);
        // Signaling held back for an admission may go on now.
        if was_asked && self.admission != AdmissionState::Asked {
            self.read_signaling(now);
        }
        self.run_due(now);
        result
    }

    /// The next output; after the last one, [`Output::Timeout`] with the next instant at which
    /// [`Input::Timeout`] must be fed.
    pub fn poll_output(&mut self) -> Output<'_> {
        self.sent_signaling = None;
        let next = self.media.as_mut().and_then(|m| {
            if let Some(len) = m.datagram_len.take() {
                m.last_datagram_len = len;
                return Some(Ready::Datagram(len));
            }
            None
        });
        if let Some(Ready::Datagram(len)) = next {
            let datagram = self
                .media
                .as_ref()
                .map(|m| &m.datagram[..])
                .unwrap_or_default();
            return Output::Datagram(datagram.get(..len).unwrap_or_default());
        }
        match self.queue.pop_front() {
            Some(Queued::Signaling(bytes)) => {
                let bytes = self.sent_signaling.insert(bytes);
                return Output::Signaling(bytes);
            }
            Some(Queued::Request(request)) => return Output::Request(request),
            Some(Queued::Event(event)) => return Output::Event(event),
            None => {}
        }
        let next = self.media.as_mut().and_then(|m| {
            if std::mem::take(&mut m.play_ready) {
                Some(Ready::Play)
            } else if std::mem::take(&mut m.record_ready) && m.record.is_some() {
                Some(Ready::Record)
            } else if std::mem::take(&mut m.capture_wanted) {
                m.capture_pending = true;
                Some(Ready::Capture)
            } else {
                None
            }
        });
        match (next, self.media.as_ref()) {
            (Some(Ready::Play), Some(m)) => Output::Play(&m.mix),
            (Some(Ready::Record), Some(m)) => {
                Output::Record(m.record.as_deref().unwrap_or_default())
            }
            (Some(Ready::Capture), _) => Output::Capture,
            _ => Output::Timeout(self.next_deadline()),
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut next = if self.is_ended() {
            self.call_deadline
        } else {
            self.call_deadline.min(self.next_stats)
        };
        if let Some(m) = self
            .media
            .as_ref()
            .filter(|m| m.started && !self.is_ended())
        {
            for clock in [m.capture.next(), m.playout.next()].into_iter().flatten() {
                next = next.min(clock);
            }
        }
        next.max(self.last_now)
    }

    /// Time never goes backwards inside the session, whatever the driver passes.
    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    // ----- signaling -----

    /// Decodes signaling a message at a time: the call reacts to each (and the session to what
    /// it produces) before the next is looked at. Stops while an admission is asked.
    fn read_signaling(&mut self, now: Instant) {
        while self.admission != AdmissionState::Asked && !self.is_ended() {
            match self.decoder.next_message() {
                Ok(Some(message)) => {
                    if let Err(e) = self.call.handle_input(CallInput::Signal(now, message)) {
                        tracing::debug!(error = %e, "signal refused");
                        self.signaling.refused += 1;
                    }
                    self.drain_call(now);
                }
                Ok(None) => return,
                Err(e) if matches!(e, ProtoError::StreamFailed) || self.decoder.has_failed() => {
                    // The framing itself broke: the stream cannot be resynchronised, and
                    // without signaling the call cannot be controlled or hung up.
                    tracing::warn!("signaling framing broken; ending the call");
                    let _ = self
                        .call
                        .handle_input(CallInput::Closed(now, EndReason::ProtocolError));
                    self.drain_call(now);
                    return;
                }
                Err(e) => {
                    // Only the body was bad: dropped and counted, the stream goes on.
                    tracing::debug!(error = %e, "malformed signaling frame");
                    self.signaling.malformed += 1;
                }
            }
        }
    }

    /// Moves everything the call produced into the session's queue, reacting to what concerns
    /// the media.
    fn drain_call(&mut self, now: Instant) {
        loop {
            match self.call.poll_output() {
                CallOutput::Transmit(message) => match message.to_frame() {
                    Ok(bytes) => self.queue.push_back(Queued::Signaling(bytes)),
                    Err(e) => tracing::error!(error = %e, "unencodable message"),
                },
                CallOutput::Keys(update) => self.install_keys(update),
                CallOutput::Event(event) => self.on_call_event(now, event),
                CallOutput::Timeout(at) => {
                    self.call_deadline = at;
                    break;
                }
            }
        }
        if self.is_ended() && !self.ended_reported {
            self.ended_reported = true;
            self.stop_media();
            let stats = self.stats();
            self.event(SessionEvent::Stats(stats));
        }
    }

    fn event(&mut self, event: SessionEvent) {
        self.queue.push_back(Queued::Event(event));
    }

    fn on_call_event(&mut self, now: Instant, event: CallEvent) {
        match event {
            CallEvent::StateChanged(state) => {
                if let CallState::Active { remote_hold, .. } = state {
                    if remote_hold != self.remote_hold {
                        self.remote_hold = remote_hold;
                        self.event(SessionEvent::PeerHold {
                            participant: ParticipantId::DIRECT_PEER,
                            on_hold: remote_hold,
                        });
                    }
                }
                self.event(SessionEvent::StateChanged(state));
            }
            CallEvent::KeysReady {
                peer,
                trust,
                sas,
                suite,
            } => {
                self.event(SessionEvent::KeysReady {
                    peer,
                    trust,
                    sas,
                    suite,
                });
                match self.call.role() {
                    Role::Caller => {
                        self.params = Some(self.call.media());
                        self.request_audio();
                    }
                    _ => {
                        // Before the Invite is looked at: a busy phone refuses at once.
                        self.admission = AdmissionState::Asked;
                        self.queue
                            .push_back(Queued::Request(Request::Admit { peer, trust }));
                    }
                }
            }
            CallEvent::Invited { media, .. } => {
                self.params = Some(media);
                self.ring_pending = true;
                if self.admission == AdmissionState::Admitted {
                    self.ring(now);
                }
            }
            CallEvent::Incoming {
                call_id,
                peer,
                trust,
                ..
            } => self.event(SessionEvent::Incoming {
                call_id,
                peer,
                trust,
            }),
            CallEvent::MediaDirection { send, receive } => {
                self.direction = (send, receive);
                self.event(SessionEvent::MediaDirection { send, receive });
            }
            CallEvent::Dtmf { event, duration_ms } => self.event(SessionEvent::Dtmf {
                participant: ParticipantId::DIRECT_PEER,
                event,
                duration_ms,
            }),
            CallEvent::Data(data) => self.event(SessionEvent::Data {
                participant: ParticipantId::DIRECT_PEER,
                data,
            }),
            CallEvent::RemoteMute(muted) => self.event(SessionEvent::PeerMuted {
                participant: ParticipantId::DIRECT_PEER,
                muted,
            }),
            CallEvent::ReceptionReport { loss_permille, .. } => self.size_fec(loss_permille),
            CallEvent::Security(event) => self.event(SessionEvent::Security(event)),
            CallEvent::TrustChanged(trust) => self.event(SessionEvent::TrustChanged(trust)),
            _ => {}
        }
    }

    /// FEC sized to the loss the peer sees: nothing spent on a clean path. One second holds only
    /// 50 frames, so a 10 % path reads anywhere from 2 % to 20 % per report: the worst of the
    /// last few reports is what FEC must cover.
    fn size_fec(&mut self, loss_permille: u16) {
        let Some(m) = self.media.as_mut() else {
            return;
        };
        let pct = u8::try_from(loss_permille.div_ceil(10).min(MAX_FEC_LOSS_PCT))
            .unwrap_or(MAX_FEC_LOSS_PCT as u8);
        m.recent_loss.rotate_left(1);
        if let Some(last) = m.recent_loss.last_mut() {
            *last = pct;
        }
        let pct = m.recent_loss.iter().copied().max().unwrap_or(pct);
        if let Some(sender) = m.sender.as_mut() {
            if let Err(e) = sender.set_expected_loss(pct) {
                tracing::debug!(error = %e, "expected loss not applied");
            }
        }
    }

    fn admitted(&mut self, now: Instant, admission: Admission) -> Result<(), SessionError> {
        if self.admission != AdmissionState::Asked {
            return Err(SessionError::Unexpected("an admission"));
        }
        match admission {
            Admission::Admit => {
                self.admission = AdmissionState::Admitted;
                if self.ring_pending {
                    self.ring(now);
                }
                Ok(())
            }
            _ => {
                self.admission = AdmissionState::NotAsked;
                self.call
                    .handle_input(CallInput::Command(now, Command::Busy))
                    .map_err(Into::into)
            }
        }
    }

    /// An admitted, invited callee rings at once (its user is told, then the last handshake
    /// message leaves) and opens its audio meanwhile: a sound device can take a hundred
    /// milliseconds to open, which the caller's ring-back does not wait for. Audio that fails
    /// to open ends the ringing call with reason `Error`.
    fn ring(&mut self, now: Instant) {
        self.ring_pending = false;
        if self.is_ended() {
            return;
        }
        if let Err(e) = self
            .call
            .handle_input(CallInput::Command(now, Command::Ring))
        {
            tracing::debug!(error = %e, "ring refused");
        }
        // After the ring's messages, so that the driver writes them first.
        self.drain_call(now);
        self.request_audio();
    }

    // ----- keys -----

    /// The key-source seam: keys from the direct handshake or from outside.
    fn install_keys(&mut self, update: KeyUpdate) {
        match update {
            KeyUpdate::Send { epoch, suite, key } => match self.media.as_mut() {
                Some(m) => match m.sender.as_mut() {
                    Some(sender) => {
                        if let Err(e) = sender.rekey(key) {
                            tracing::warn!(error = %e, "send key refused; the old key stays");
                        }
                    }
                    None => match MediaSender::new(&m.opus, suite, key) {
                        Ok(sender) => m.sender = Some(sender),
                        Err(e) => tracing::warn!(error = %e, "media sender not created"),
                    },
                },
                None => self.keys.send = Some((epoch, suite, key)),
            },
            KeyUpdate::Receive {
                participant,
                epoch,
                suite,
                key,
            } => match self.media.as_mut() {
                Some(m) => add_receive_key(m, participant, epoch, suite, &key),
                None => self.keys.receive.push((participant, epoch, suite, key)),
            },
            KeyUpdate::RetireBefore { epoch } => {
                if let Some(m) = self.media.as_mut() {
                    for stream in &mut m.streams {
                        stream.retire_before(epoch);
                    }
                }
                self.keys.receive.retain(|(_, e, _, _)| *e >= epoch);
            }
            KeyUpdate::Remove { participant } => {
                if let Some(m) = self.media.as_mut() {
                    // What the stream counted stays in the call's totals.
                    for stream in m.streams.iter().filter(|s| s.participant == participant) {
                        m.departed.0.add(&stream.counters);
                        let p = stream.playout_stats();
                        match m.departed.1.as_mut() {
                            Some(total) => total.merge(&p),
                            None => m.departed.1 = Some(p),
                        }
                    }
                    m.streams.retain(|s| s.participant != participant);
                }
                self.keys.receive.retain(|(p, _, _, _)| *p != participant);
            }
            _ => {}
        }
    }

    // ----- audio and media -----

    /// Asks the driver for the audio end points. The media path itself (codec, jitter
    /// buffers) is built when they are open, in a later turn: building it costs about half a
    /// millisecond, which the ring and the caller's keys do not wait for.
    fn request_audio(&mut self) {
        if self.audio != AudioState::NotRequested {
            return;
        }
        let Some(opus) = self.media_opus() else {
            return;
        };
        self.audio = AudioState::Requested;
        self.queue.push_back(Queued::Request(Request::OpenAudio {
            frame_samples: opus.frame_samples(),
            opus,
        }));
    }

    /// The codec settings of the call: this end's, with the frame duration and bitrate the
    /// call's media parameters fix.
    fn media_opus(&self) -> Option<OpusConfig> {
        let params = self.params?;
        Some(OpusConfig {
            // The call refuses an Invite for frames this phone cannot play (40, 60 ms).
            frame: params.frame,
            bitrate_bps: params.bitrate_bps,
            ..self.opus
        })
    }

    fn open_media(&mut self, now: Instant, opus: OpusConfig) -> Result<(), MediaError> {
        let keys = std::mem::take(&mut self.keys);
        // A group call opens its audio before the first key arrives: a member alone in the
        // call has no one to receive, and keys come as the group forms.
        if !self.call.is_group() && keys.send.is_none() && keys.receive.is_empty() {
            return Err(MediaError::Config("no media keys".into()));
        }
        let frame_samples = opus.frame_samples();
        let period = opus.frame.duration();
        let mut media = Media {
            opus,
            jitter: self.jitter.clone(),
            frame_samples,
            sender: None,
            streams: Vec::new(),
            departed: (StreamCounters::default(), None),
            capture: FrameClock::new(period),
            playout: FrameClock::new(period),
            playout_aligned: false,
            follows_peer: false,
            source_clocked: true,
            started: false,
            capture_wanted: false,
            capture_pending: false,
            playout_deferred: None,
            datagram: vec![0; MAX_DATAGRAM],
            datagram_len: None,
            last_datagram_len: 0,
            mix: vec![0; frame_samples],
            scratch: vec![0; frame_samples],
            play_ready: false,
            record: self.record.then(|| vec![0; frame_samples]),
            record_ready: false,
            captured: vec![0; frame_samples],
            sent_last_frame: false,
            captures_missed: 0,
            recent_loss: [0; LOSS_REPORTS_KEPT],
            opened: now,
            last_rate: None,
        };
        if let Some((_, suite, key)) = keys.send {
            media.sender = Some(MediaSender::new(&opus, suite, key)?);
        }
        for (participant, epoch, suite, key) in keys.receive {
            add_receive_key(&mut media, participant, epoch, suite, &key);
        }
        self.media = Some(media);
        Ok(())
    }

    fn audio_status(&mut self, now: Instant, status: AudioStatus) -> Result<(), SessionError> {
        match status {
            AudioStatus::Opened { source_clocked } => {
                if self.audio != AudioState::Requested {
                    return Err(SessionError::Unexpected("opened audio"));
                }
                let opened = match self.media_opus() {
                    Some(opus) => self.open_media(now, opus),
                    None => Err(MediaError::Config("no media parameters".into())),
                };
                if let Err(e) = opened {
                    tracing::error!(error = %e, "media could not be set up; ending the call");
                    self.audio = AudioState::Failed;
                    if !self.is_ended() {
                        self.call
                            .handle_input(CallInput::Command(now, Command::Abort(Reason::Error)))?;
                    }
                    return Err(e.into());
                }
                self.audio = AudioState::Ready;
                let role = self.call.role();
                if let Some(m) = self.media.as_mut() {
                    m.started = !self.call.state().is_ended();
                    m.source_clocked = source_clocked;
                    m.follows_peer = role == Role::Callee && !source_clocked;
                    if !m.follows_peer {
                        m.capture.start_at(now);
                    }
                    m.playout.start_at(now);
                    m.opened = now;
                }
                Ok(())
            }
            AudioStatus::Failed => {
                self.audio = AudioState::Failed;
                self.ring_pending = false;
                self.stop_media();
                if self.is_ended() {
                    return Ok(());
                }
                self.call
                    .handle_input(CallInput::Command(now, Command::Abort(Reason::Error)))
                    .map_err(Into::into)
            }
            AudioStatus::SourceChanged { source_clocked } => {
                if let Some(m) = self.media.as_mut() {
                    m.source_clocked = source_clocked;
                    if source_clocked && m.follows_peer {
                        // A device keeps its own time and must be drained from now on.
                        m.follows_peer = false;
                        if m.started && !m.capture.is_running() {
                            m.capture.start_at(now);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn stop_media(&mut self) {
        if let Some(m) = self.media.as_mut() {
            m.started = false;
            m.capture_wanted = false;
            m.capture_pending = false;
            m.playout_deferred = None;
        }
    }

    fn receive_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<(), SessionError> {
        let Some(m) = self.media.as_mut().filter(|m| !m.streams.is_empty()) else {
            // Before the media opened, or before any participant's keys: nothing can read it.
            self.early += 1;
            return Ok(());
        };
        // The clear SFrame header names the key, hence the participant. In a direct call
        // every frame can only be the peer's (or an injection on their path, counted against
        // their stream): nothing to look up. In a group call a frame under a key no stream
        // holds (an epoch before this member joined, a member already gone) is unattributed.
        let group = self.call.is_group();
        let kid = if m.streams.len() == 1 && !group {
            None
        } else {
            SframeHeader::decode(datagram).ok().map(|(h, _)| h.kid)
        };
        let index = match kid.and_then(|kid| m.streams.iter().position(|s| s.has_key(kid))) {
            Some(i) => i,
            None if m.streams.len() == 1 && !group => 0,
            None => {
                self.unattributed += 1;
                return Err(MediaError::Sframe(viska_sframe::SframeError::UnknownKeyId(
                    kid.unwrap_or(viska_sframe::KeyId(u64::MAX)),
                ))
                .into());
            }
        };
        let Some(stream) = m.streams.get_mut(index) else {
            return Ok(());
        };
        match stream.receive(now, datagram) {
            Ok(_index) => {
                if !m.playout_aligned && m.started {
                    // Play out in step with the sender: the first frame plays one start delay
                    // after it arrived, and every later one a frame period after that
                    // (normally at the next frame's arrival, see LATE_MARGIN).
                    m.playout_aligned = true;
                    m.playout.start_at(now + m.jitter.start_delay + LATE_MARGIN);
                    if m.follows_peer {
                        // Capture now and then at each of the caller's frames: one wake-up for
                        // both directions.
                        m.follows_peer = false;
                        m.capture.start_at(now + LATE_MARGIN);
                    }
                }
                self.last_received = Some((stream.participant, _index));
                Ok(())
            }
            Err((reason, error)) => {
                let participant = stream.participant;
                if let Some(count) = stream.rejections.record(now, reason) {
                    self.event(SessionEvent::Security(SecurityEvent::MediaRejected {
                        participant,
                        reason,
                        count,
                    }));
                }
                Err(error.into())
            }
        }
    }

    fn captured(&mut self, pcm: &[i16]) -> Result<(), SessionError> {
        let (send, _) = self.direction;
        let Some(m) = self.media.as_mut().filter(|m| m.capture_pending) else {
            return Err(SessionError::Unexpected("captured audio"));
        };
        m.capture_pending = false;
        if pcm.len() != m.frame_samples {
            // Not what was asked for: the period is a pause, and the playout held back for
            // this capture goes now.
            capture_missed(m, self.direction.1);
            return Err(SessionError::Unexpected("a frame of another size"));
        }
        if m.record.is_some() {
            // Kept for the recording's mix only.
            m.captured.copy_from_slice(pcm);
        }
        m.sent_last_frame = send;
        if send {
            if let Some(sender) = m.sender.as_mut() {
                match sender.send(pcm, &mut m.datagram) {
                    Ok(len) => m.datagram_len = len,
                    Err(e) => tracing::warn!(error = %e, "media frame not sent"),
                }
            }
        } else {
            skip(m);
        }
        if let Some(deadline) = m.playout_deferred.take() {
            play(m, deadline, self.direction.1);
        }
        Ok(())
    }

    /// Runs the media jobs that are due, or nearly due and cheap to meet in this wake-up, and
    /// the statistics.
    fn run_due(&mut self, now: Instant) {
        let direction = self.direction;
        let ended = self.is_ended();
        if let Some(m) = self.media.as_mut().filter(|m| m.started && !ended) {
            if m.capture_pending && m.capture.due(now, Duration::ZERO) {
                // The driver has not answered the last capture request and the next is due:
                // that period was a pause (else the session would wait on it forever, and
                // the playout held back for it with it).
                m.capture_pending = false;
                capture_missed(m, direction.1);
            }
            if m.follows_peer && !m.capture.is_running() && (direction.0 || direction.1) {
                // Media may flow: wait a little for the caller's first frame to set the pace.
                m.capture.start_at(now + FOLLOW_WAIT);
            }
            let clocked = m.source_clocked;
            let capture_due = !m.capture_pending
                && m.capture.due(
                    now,
                    if clocked {
                        Duration::ZERO
                    } else {
                        EARLY_WINDOW
                    },
                );
            let ready = m.streams.iter().any(Stream::next_ready);
            let playout_due = m.playout_deferred.is_none()
                && m.playout
                    .due(now, if ready { EARLY_WINDOW } else { Duration::ZERO });
            // The jitter buffer decides for the deadline the frame is played for, also when it
            // is played early: an early pop must not read as a shallower buffer.
            let play_for = m.playout.next().map_or(now, |due| due.max(now));
            if capture_due {
                let skipped = m.capture.advance(now);
                if skipped > 0 {
                    // The frame index keeps to the clock: the periods the driver missed are a
                    // pause to the peer (the next packets carry the marker).
                    tracing::warn!(skipped, "media stalled; capture skipped ahead");
                    if let Some(sender) = m.sender.as_mut() {
                        if let Err(e) = sender.skip_frames(skipped) {
                            tracing::warn!(error = %e, "media counter exhausted");
                        }
                    }
                }
                m.follows_peer = false;
                // A source with a clock of its own (a device) is read at every tick its clock
                // runs, on hold, muted and before the answer too, and what is not sent is
                // thrown away: left unread it would back up, and the first frames sent after
                // the answer or the resume would be audio from the ringing or the hold. A file
                // has no clock: it pauses while nothing flows, and plays on after.
                if direction.0 || direction.1 || clocked {
                    m.capture_wanted = true;
                } else {
                    m.sent_last_frame = false;
                    m.captured.fill(0);
                    skip(m);
                }
            }
            if playout_due {
                let skipped = m.playout.advance(now);
                if skipped > 0 {
                    // Not played in a burst: the jitter buffer finds itself that much deeper
                    // and sheds the delay as it does after any stall.
                    tracing::warn!(skipped, "media stalled; playout skipped ahead");
                }
                if capture_due && clocked && m.capture_wanted {
                    // Audio captured on a clock has waited since its last sample: it goes
                    // first, the decode after.
                    m.playout_deferred = Some(play_for);
                } else {
                    play(m, play_for, direction.1);
                }
            }
        }
        // After the call ended, its final statistics were the last.
        if now >= self.next_stats && !ended {
            self.next_stats = now + STATS_INTERVAL;
            self.publish_stats(now);
        }
    }

    fn publish_stats(&mut self, now: Instant) {
        let mut report = None;
        if let Some(m) = self.media.as_mut().filter(|m| m.started) {
            // What was sent since the last report (the first: since the media opened), as a
            // rate: 0 on hold or muted.
            let bytes = m.sender.as_ref().map_or(0, |s| s.counters.opus_bytes_sent);
            let (at, before) = m.last_rate.unwrap_or((m.opened, 0));
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let bits = bytes.saturating_sub(before) as f64 * 8.0;
                // Saturating float-to-int conversion; a rate above 4 Gbit/s is not a call.
                self.send_rate = (bits / secs).round() as u32;
            }
            m.last_rate = Some((now, bytes));
            if self.direction.1 {
                report = reception_report(m);
            }
        }
        let stats = self.stats();
        self.event(SessionEvent::Stats(stats));
        if let Some((loss_permille, jitter_ms)) = report {
            let command = Command::SendReceptionReport {
                loss_permille,
                jitter_ms,
            };
            if let Err(e) = self.call.handle_input(CallInput::Command(now, command)) {
                tracing::debug!(error = %e, "reception report not sent");
            }
            self.drain_call(now);
        }
    }
}

fn add_receive_key(
    m: &mut Media,
    participant: ParticipantId,
    epoch: Epoch,
    suite: CipherSuite,
    key: &SframeKey,
) {
    let position = m.streams.iter().position(|s| s.participant == participant);
    let index = match position {
        Some(i) => i,
        None => match Stream::new(participant, suite, &m.opus, &m.jitter) {
            Ok(stream) => {
                m.streams.push(stream);
                m.streams.len() - 1
            }
            Err(e) => {
                tracing::warn!(error = %e, %participant, "stream not created");
                return;
            }
        },
    };
    if let Some(stream) = m.streams.get_mut(index) {
        if let Err(e) = stream.add_key(epoch, key) {
            tracing::warn!(error = %e, %participant, "receive key refused");
        }
    }
}

/// A capture request that got no frame: the period is a pause, and the playout held back for
/// it goes now.
fn capture_missed(m: &mut Media, receive: bool) {
    m.captures_missed += 1;
    m.sent_last_frame = false;
    skip(m);
    if let Some(deadline) = m.playout_deferred.take() {
        play(m, deadline, receive);
    }
}

/// One frame period of the sender in which nothing is sent.
fn skip(m: &mut Media) {
    if let Some(sender) = m.sender.as_mut() {
        if let Err(e) = sender.skip_frame() {
            tracing::warn!(error = %e, "media counter exhausted");
        }
    }
}

/// Plays one frame: every stream's next frame, mixed (silence when nothing is received), and
/// the recording's mix.
fn play(m: &mut Media, deadline: Instant, receive: bool) {
    m.mix.fill(0);
    if receive {
        for stream in &mut m.streams {
            match stream.pull(deadline, &mut m.scratch) {
                Ok(_) => {
                    let mut energy = 0f64;
                    for (mix, &sample) in m.mix.iter_mut().zip(m.scratch.iter()) {
                        *mix = mix.saturating_add(sample);
                        energy += f64::from(sample) * f64::from(sample);
                    }
                    let rms = (energy / m.scratch.len().max(1) as f64).sqrt();
                    stream.level = (rms / f64::from(i16::MAX)) as f32;
                }
                Err(e) => tracing::warn!(error = %e, "playout failed"),
            }
        }
    } else {
        for stream in &mut m.streams {
            stream.last_played = None;
            stream.level = 0.0;
        }
    }
    m.play_ready = true;
    if let Some(record) = m.record.as_mut() {
        // The recording is the conversation: what was sent mixed with what was heard.
        let send = m.sent_last_frame;
        for ((rec, &local), &remote) in record.iter_mut().zip(m.captured.iter()).zip(m.mix.iter()) {
            *rec = if send {
                local.saturating_add(remote)
            } else {
                remote
            };
        }
        m.record_ready = true;
    }
}

/// The reception report for the interval since the previous one; none when no frame was due in
/// it (the peer muted, held or paused in DTX): "0 % loss" would then switch off the peer's FEC
/// just before it talks again, on a path that may still be lossy.
fn reception_report(m: &mut Media) -> Option<(u16, u16)> {
    let (mut lost, mut received, mut jitter) = (0u64, 0u64, Duration::ZERO);
    for stream in &mut m.streams {
        let p = stream.playout_stats();
        // Comfort-noise updates are not the speech FEC protects: an interval of DTX silence
        // (a few updates, nothing lost) must not read as a clean path.
        let speech = p.received.saturating_sub(p.received_dtx);
        lost += p.lost.saturating_sub(stream.reported.0);
        received += speech.saturating_sub(stream.reported.1);
        stream.reported = (p.lost, speech);
        jitter = jitter.max(p.jitter);
    }
    let expected = lost + received;
    let loss_permille = (lost * 1000).checked_div(expected)?;
    Some((
        u16::try_from(loss_permille).unwrap_or(1000),
        u16::try_from(jitter.as_millis()).unwrap_or(u16::MAX),
    ))
}
