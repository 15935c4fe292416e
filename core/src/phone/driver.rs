//! The async driver of one call: moves bytes between the QUIC connection and the IO-free
//! [`viska_call::Call`] and [`MediaSession`], and paces the media clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::Sleep;
use viska_call::{
    Call, CallConfig, CallEvent, CallState, Command, EndReason, Input, Output, Role, Trust,
};
use viska_e2ee::direct::ChannelBinding;
use viska_e2ee::identity::PublicIdentity;
use viska_e2ee::keys::{KeyUpdate, SframeKey};
use viska_media::audio::{AudioIoError, AudioSink, AudioSource};
use viska_media::background::BackgroundSink;
use viska_media::codec::{FrameDuration, OpusConfig};
use viska_media::ogg::OggOpusWriter;
use viska_proto::{FrameDecoder, MediaParams, ProtoError, Reason, SuiteId};
use viska_sframe::{CipherSuite, SendKey};

use super::audio::{DiscardSink, SilenceSource};
use super::media::{MAX_DATAGRAM, MediaSession};
use super::places::Place;
use super::{
    AudioDirection, AudioEvent, CallHandle, CallShared, CallerInfo, DriverCommand, Injection,
    MissedCall, PhoneInner, dispatch_audio, dispatch_event,
};
use crate::transport::runtime::move_timer;
use crate::transport::{PeerConnection, QuicEndpoint};

/// How far ahead of its time a periodic job may run when the call's thread is awake anyway:
/// the playout of a frame that has already arrived, and the capture from a source without a
/// clock of its own (a file). Meeting two deadlines in one wake-up saves the thread a trip
/// through the kernel's scheduler and, on a battery-powered device, lets the CPU stay longer
/// in its deeper idle states. An early playout is of a frame already here; an early read of
/// a file passes up to this much variation in send times on to the peer's jitter buffer.
const EARLY_WINDOW: Duration = Duration::from_millis(5);

/// How long after the expected arrival of the next frame the playout clock ticks. The next
/// frame normally arrives first and its arrival plays the one before (see [`EARLY_WINDOW`]),
/// so the playout timer itself wakes the thread mostly for late or missing frames, which then
/// play this much later than on an exact clock (as does the very first frame).
const LATE_MARGIN: Duration = Duration::from_millis(2);

/// How long a callee whose source has no clock of its own waits, once media may flow, for
/// the caller's first frame before it starts capture on a clock of its own. Captured in step
/// with the caller's frames, one wake-up serves receive, playout and capture. The phase is
/// taken once: if the two ends' clocks drift a few milliseconds apart (minutes at tens of
/// ppm), the wake-ups come apart again; the audio is not affected.
const FOLLOW_WAIT: Duration = Duration::from_millis(200);

/// How many missed periods a [`FrameClock`] catches up one by one before it skips ahead.
const MAX_CATCH_UP: u32 = 3;

/// A periodic deadline (capture or playout), kept apart from its timer so that a wake-up for
/// another reason can meet it early and the timer is re-armed only when it moves.
#[derive(Debug)]
struct FrameClock {
    /// When the job is next due; `None` while the clock is stopped.
    next: Option<Instant>,
    period: Duration,
    /// The deadline the timer was last set to.
    armed: Option<Instant>,
}

impl FrameClock {
    fn new(period: Duration, first: Option<Instant>) -> Self {
        Self {
            next: first,
            period,
            armed: None,
        }
    }

    fn start_at(&mut self, at: Instant) {
        self.next = Some(at);
    }

    fn is_running(&self) -> bool {
        self.next.is_some()
    }

    /// Whether the job is due at `now`, or within `early` of it.
    fn due(&self, now: Instant, early: Duration) -> bool {
        self.next.is_some_and(|next| next <= now + early)
    }

    /// One period later. A clock that fell a little behind (a thread woken a few
    /// milliseconds late) stays behind and is due again at once, so those periods are caught
    /// up one by one. One more than [`MAX_CATCH_UP`] periods behind (a stalled or frozen
    /// thread, a blocking listener) skips to the first deadline after `now` and returns how
    /// many periods it skipped: running them in a burst would send the peer a train of frames
    /// it has already given up on.
    fn advance(&mut self, now: Instant) -> u64 {
        let Some(next) = self.next.as_mut() else {
            return 0;
        };
        *next += self.period;
        if *next > now {
            return 0;
        }
        let overdue = now.duration_since(*next).as_nanos() / self.period.as_nanos().max(1) + 1;
        if overdue <= u128::from(MAX_CATCH_UP) {
            return 0;
        }
        let skipped = u32::try_from(overdue).unwrap_or(u32::MAX);
        *next += self.period.saturating_mul(skipped);
        u64::from(skipped)
    }

    /// Points `timer` at the next deadline if it moved since the last call.
    fn arm(&mut self, timer: std::pin::Pin<&mut Sleep>) {
        if let Some(next) = self.next {
            if self.armed != Some(next) {
                move_timer(timer, next);
                self.armed = Some(next);
            }
        }
    }

    /// The timer fired. tokio rounds deadlines up, so the job is due now and its deadline
    /// moves on; should it not, the next [`FrameClock::arm`] registers the timer afresh
    /// rather than leave a spent one, which would be ready at every poll.
    fn fired(&mut self) {
        self.armed = None;
    }
}

/// Accepts connections and runs each as an incoming call.
pub(super) async fn accept_loop(inner: Arc<PhoneInner>, ep: QuicEndpoint) {
    while let Some((from, connecting)) = ep.accept_connecting().await {
        // A place among the connections whose caller is not known yet, held until the caller
        // is authenticated (see `places`).
        let slot = match inner.places.take(from.ip()) {
            Ok(place) => place,
            Err(why) => {
                // Dropping the attempt refuses it (QUIC CONNECTION_REFUSED).
                tracing::debug!(?why, %from, "no place for another unauthenticated connection; refused");
                continue;
            }
        };
        // Each handshake runs in its own task: a peer that stalls mid-handshake delays nobody.
        let inner = inner.clone();
        tokio::spawn(async move {
            match connecting.await {
                Ok(conn) => {
                    let (handle, commands) = CallHandle::new();
                    let call = CallSetup {
                        role: Role::Callee,
                        started: Instant::now(),
                        unauthenticated: Some(slot),
                        expected_peer: None,
                    };
                    run_call(inner, conn, handle, commands, call).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "incoming connection failed");
                    if let Some(l) = listener(&inner) {
                        l.security_event(format!("incoming connection failed: {e}"));
                    }
                }
            }
        });
    }
}

fn listener(inner: &PhoneInner) -> Option<Arc<dyn super::PhoneListener>> {
    inner
        .listener
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Connects to `addr` and runs the call as its caller.
pub(super) async fn place_call(
    inner: Arc<PhoneInner>,
    ep: QuicEndpoint,
    addr: SocketAddr,
    shared: Arc<CallShared>,
    mut commands: mpsc::UnboundedReceiver<DriverCommand>,
    expected_peer: Option<PublicIdentity>,
) {
    let dialed = Instant::now();
    let handle = CallHandle { shared };
    set_state(&handle.shared, CallState::Handshaking);
    let connecting = ep.connect(addr);
    tokio::pin!(connecting);
    // The application may give up while QUIC is still connecting (an address that does not
    // answer takes the whole idle timeout to fail).
    let connected = loop {
        tokio::select! {
            c = &mut connecting => break c,
            cmd = commands.recv() => match cmd {
                Some(DriverCommand::Call(Command::Hangup | Command::Abort(_))) => {
                    end(&handle.shared, EndReason::Cancelled { by: viska_call::Side::Local });
                    return;
                }
                Some(DriverCommand::SwitchDevice { direction, .. }) => {
                    let error = "the call's audio has not started".to_owned();
                    dispatch_audio(&handle.shared, AudioEvent::SwitchFailed { direction, error });
                }
                // Nothing else is accepted before the call is connected.
                Some(_) | None => {}
            },
        }
    };
    match connected {
        Ok(conn) => {
            // Admitted by `Phone::call` already.
            let call = CallSetup {
                role: Role::Caller,
                started: dialed,
                unauthenticated: None,
                expected_peer,
            };
            run_call(inner, conn, handle, commands, call).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, %addr, "call could not connect");
            let why = if e.is_refused() {
                EndReason::ConnectionRefused
            } else {
                EndReason::ConnectionLost
            };
            end(&handle.shared, why);
        }
    }
}

fn set_state(shared: &CallShared, state: CallState) {
    let changed = {
        let mut snap = shared.snapshot();
        let changed = snap.state != state;
        snap.state = state;
        changed
    };
    if changed {
        dispatch_event(shared, &CallEvent::StateChanged(state));
    }
}

fn end(shared: &CallShared, reason: EndReason) {
    set_state(shared, CallState::Ended(reason));
    shared.ended.send_replace(true);
}

/// The period of a frame with these codec settings.
fn frame_period(opus: &OpusConfig) -> Duration {
    Duration::from_millis(u64::from(opus.frame.millis()))
}

fn opus_for(params: &MediaParams, base: &OpusConfig) -> OpusConfig {
    OpusConfig {
        frame: match params.frame.millis() {
            10 => FrameDuration::Ms10,
            _ => FrameDuration::Ms20,
        },
        bitrate_bps: params.bitrate_bps,
        ..*base
    }
}

/// Reception reports (one a second) whose worst loss sizes the encoder's FEC.
const LOSS_REPORTS_KEPT: usize = 3;

/// Whether the phone takes an incoming call or refuses it as busy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admission {
    Admitted,
    Busy,
}

/// How a call came to be.
struct CallSetup {
    role: Role,
    /// When the call was dialed (caller) or its connection accepted (callee).
    started: Instant,
    /// An incoming call's place among the connections not yet authenticated, given up when
    /// its keys are ready (and it is admitted or refused as busy).
    unauthenticated: Option<Place>,
    /// The identity the application expects the peer to have (an outgoing call to a known
    /// contact): decides whether the call is verified or the key changed.
    expected_peer: Option<PublicIdentity>,
}

struct MediaEnds {
    /// When the media opened (the start of the first send-rate interval).
    opened: Instant,
    /// The SFrame key id of what we send and of what we receive (latency probe keys).
    send_stream: u64,
    recv_stream: u64,
    /// The last datagram sent, kept for replay injection tests.
    last_sent: Vec<u8>,
    /// Tamper injection tests: corrupt this many of the next datagrams.
    tamper_next: u32,
    /// Whether the playout clock has been aligned to the first received frame.
    playout_aligned: bool,
    /// When the next frame is captured and sent.
    capture: FrameClock,
    /// When the next frame is played. Its phase follows the first received frame (a device
    /// would impose its own clock through its ring buffer instead).
    playout: FrameClock,
    /// A callee whose source has no clock of its own captures in step with the caller's
    /// frames; true until its capture clock has started.
    follows_peer: bool,
    /// Whether the last capture period sent audio (for the recording's mix).
    sent_last_frame: bool,
    /// Playout counters at the last reception report: (lost, received).
    reported: (u64, u64),
    /// Loss (percent) in the peer's last reception reports, oldest first.
    recent_loss: [u8; LOSS_REPORTS_KEPT],
    /// Device switches under way, (input, output): the real end point is away on a blocking
    /// thread meanwhile and a stand-in (silence, discard) takes its place.
    switching: (bool, bool),
    session: MediaSession,
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    /// The call recording, encoded and written on its own thread.
    recorder: Option<BackgroundSink>,
    mix: Vec<i16>,
}

async fn run_call(
    inner: Arc<PhoneInner>,
    conn: PeerConnection,
    handle: CallHandle,
    mut commands: mpsc::UnboundedReceiver<DriverCommand>,
    setup: CallSetup,
) {
    let CallSetup {
        role,
        started,
        mut unauthenticated,
        expected_peer,
    } = setup;
    // A caller was admitted when it dialed; a callee is once it is authenticated (keys ready).
    let mut admission = Admission::Admitted;
    let shared = handle.shared.clone();
    let config = &inner.config;
    let tls_exporter = match conn.tls_exporter() {
        Ok(value) => value,
        Err(e) => {
            tracing::error!(error = %e, "no channel binding");
            end(&shared, EndReason::ProtocolError);
            conn.close("no channel binding");
            return;
        }
    };
    let mut call_config = CallConfig::new(
        role,
        config.identity.clone(),
        ChannelBinding { tls_exporter },
    );
    call_config.suites = config.suites.clone();
    call_config.ring_timeout = config.ring_timeout;
    call_config.expected_peer = expected_peer;
    call_config.verified_peers = super::lock(&inner.verified).clone();
    if let Some(first) = config.suites.first() {
        call_config.media.suite = SuiteId(first.id());
    }
    call_config.media.bitrate_bps = config.opus.bitrate_bps;
    call_config.media.frame = match config.opus.frame {
        FrameDuration::Ms10 => viska_proto::FrameDuration::Ms10,
        _ => viska_proto::FrameDuration::Ms20,
    };
    let mut call = match Call::new(call_config, Instant::now(), &mut rand::rng()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "call configuration refused");
            end(&shared, EndReason::ProtocolError);
            conn.close("configuration");
            return;
        }
    };

    // A peer that connects but never opens the signaling stream is dropped after the setup
    // timeout (keep-alives would otherwise hold the connection forever).
    let streams = tokio::time::timeout(viska_call::DEFAULT_SETUP_TIMEOUT, async {
        if role == Role::Caller {
            conn.open_signaling().await
        } else {
            conn.accept_signaling().await
        }
    })
    .await;
    let (send, mut recv) = match streams {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "signaling stream failed");
            conn.close("no signaling");
            end(&shared, EndReason::ConnectionLost);
            return;
        }
        Err(_) => {
            tracing::warn!("no signaling stream within the setup timeout");
            conn.close("setup timeout");
            end(&shared, EndReason::SetupTimeout);
            return;
        }
    };

    if role == Role::Caller {
        if let Err(e) = call.handle_input(Input::Command(Instant::now(), Command::Dial)) {
            tracing::error!(error = %e, "dial refused");
        }
    }
    // Signaling leaves through its own task, so a peer that stops reading (QUIC flow control)
    // never stalls media, timers or commands here.
    let (signaling, writer) = spawn_signaling_writer(send);

    let mut decoder = FrameDecoder::new();
    // Unknown frames the decoder skipped, as last copied to the snapshot.
    let mut skipped_reported = 0;
    let mut read_buf = vec![0u8; 4096];
    let mut datagram = vec![0u8; MAX_DATAGRAM];
    let mut media: Option<MediaEnds> = None;
    // The media keys from the call's key source, kept until the media opens (the caller's at
    // its keys, the callee's once invited).
    let mut pending_keys = PendingKeys::default();
    let mut direction = (false, false);
    // One timer for the state machine's deadlines, moved only when the deadline changes (a
    // new timer per loop turn would register and cancel one per packet).
    let call_timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(call_timer);
    let mut armed_for: Option<Instant> = None;
    // The media clocks' timers (their deadlines live in `MediaEnds`).
    let capture_timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(capture_timer);
    let playout_timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(playout_timer);
    let mut pcm_in: Vec<i16> = Vec::new();
    let mut pcm_out: Vec<i16> = Vec::new();
    let mut last_stats = Instant::now();
    // (when, Opus bytes sent) at the last statistics report, for the send rate.
    let mut last_sent: Option<(Instant, u64)> = None;
    let mut stream_open = true;
    // Whether the connection still carries media (false once quinn reports it gone).
    let mut connected = true;
    let (switch_done, mut switched) = mpsc::unbounded_channel::<SwitchDone>();
    // Set when the call ends outside the state machine (connection or stream lost).
    let mut lost: Option<EndReason> = None;

    loop {
        // Drain the state machine's output.
        loop {
            match call.poll_output() {
                Output::Transmit(msg) => {
                    let bytes = match msg.to_frame() {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(error = %e, "unencodable message");
                            continue;
                        }
                    };
                    match signaling.try_send(bytes) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The peer has not read its stream for a long while (QUIC flow
                            // control holds the writer): it cannot be told anything any more.
                            tracing::warn!("peer stopped reading signaling; ending the call");
                            lost.get_or_insert(EndReason::ConnectionLost);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            tracing::warn!("signaling writer gone");
                        }
                    }
                }
                Output::Keys(update) => pending_keys.install(update),
                Output::Event(event) => {
                    if let (CallEvent::KeysReady { .. }, Role::Callee) = (&event, role) {
                        // Over the limit the call is refused as busy, after authentication:
                        // the caller learns why, the application sees who it missed.
                        admission = if inner.admit(&shared) {
                            Admission::Admitted
                        } else {
                            Admission::Busy
                        };
                        // Authenticated: its place among the unknown connections is free.
                        drop(unauthenticated.take());
                    }
                    let follow_up = handle_event(
                        &inner,
                        &handle,
                        &conn,
                        &call,
                        &event,
                        (started, admission),
                        &mut media,
                        &mut pending_keys,
                        &mut direction,
                        (&mut pcm_in, &mut pcm_out),
                    )
                    .await;
                    dispatch_event(&shared, &event);
                    if let Some(cmd) = follow_up {
                        if let Err(e) = call.handle_input(Input::Command(Instant::now(), cmd)) {
                            tracing::debug!(error = %e, "follow-up command refused");
                        }
                    }
                }
                Output::Timeout(t) => {
                    if armed_for != Some(t) {
                        move_timer(call_timer.as_mut(), t);
                        armed_for = Some(t);
                    }
                    break;
                }
            }
        }
        if call.state().is_ended() || lost.is_some() {
            break;
        }
        // One received signaling message a turn: the events and replies it causes are dealt
        // with (above) before the next is looked at, so the driver acts on each in the state
        // it left. (A callee found busy at its keys refuses before the Invite behind them in
        // the same read can make it ring.)
        let next = decoder.next_message();
        if decoder.skipped_unknown() != skipped_reported {
            skipped_reported = decoder.skipped_unknown();
            shared.snapshot().signaling.skipped_unknown = skipped_reported;
        }
        match next {
            Ok(Some(msg)) => {
                if let Err(e) = call.handle_input(Input::Signal(Instant::now(), msg)) {
                    tracing::debug!(error = %e, "signal refused");
                    shared.snapshot().signaling.refused += 1;
                }
                continue;
            }
            Ok(None) => {}
            Err(ProtoError::StreamFailed) => {
                // The framing itself broke (reported, and counted, the turn before): the
                // stream cannot be resynchronised, and without signaling the call cannot be
                // controlled or hung up.
                tracing::warn!("signaling framing broken; ending the call");
                lost = Some(EndReason::ProtocolError);
                break;
            }
            Err(e) => {
                // A frame that did not decode. If only its body was bad, it is dropped and the
                // stream goes on (docs/protocol-wire.md); if its framing was, the next turn
                // says so.
                tracing::debug!(error = %e, "malformed signaling frame");
                shared.snapshot().signaling.malformed += 1;
                continue;
            }
        }
        if let Some(m) = media.as_mut() {
            if m.follows_peer && m.source.has_own_clock() {
                // The source was switched to a device while waiting for the caller: a device
                // keeps its own time and must be drained from now on.
                m.follows_peer = false;
                if !m.capture.is_running() {
                    m.capture.start_at(Instant::now());
                }
            }
            if m.follows_peer && !m.capture.is_running() && (direction.0 || direction.1) {
                // Media may flow: wait a little for the caller's first frame to set the pace.
                m.capture.start_at(Instant::now() + FOLLOW_WAIT);
            }
            m.capture.arm(capture_timer.as_mut());
            m.playout.arm(playout_timer.as_mut());
        }
        let capture_running = media.as_ref().is_some_and(|m| m.capture.is_running());
        let playout_running = media.as_ref().is_some_and(|m| m.playout.is_running());

        tokio::select! {
            // Media first when several are ready: a datagram waiting behind a decode or an
            // encode is latency added to every frame.
            biased;
            d = conn.recv_media(), if connected => {
                match d {
                    Ok(d) => {
                        if let Some(m) = media.as_mut() {
                            let now = Instant::now();
                            match m.session.receive(now, &d) {
                                Ok(index) => {
                                    if !m.playout_aligned {
                                        // Play out in step with the sender: the first frame
                                        // plays one start delay after it arrived, and every
                                        // later one a frame period after that (normally at
                                        // the next frame's arrival, see LATE_MARGIN).
                                        m.playout_aligned = true;
                                        m.playout.start_at(
                                            now + inner.config.jitter.start_delay + LATE_MARGIN,
                                        );
                                        if m.follows_peer {
                                            // Capture now and then at each of the caller's
                                            // frames: one wake-up for both directions.
                                            m.follows_peer = false;
                                            m.capture.start_at(now + LATE_MARGIN);
                                        }
                                    }
                                    if let Some(p) = &config.latency_probe {
                                        p.frame_arrived(m.recv_stream, index, now);
                                    }
                                }
                                Err(e) => tracing::debug!(error = %e, "media datagram rejected"),
                            }
                        }
                    }
                    Err(_) if stream_open => {
                        // Connection gone: the peer vanished, closed, or timed out. What it
                        // wrote on the signaling stream before closing (a Busy, a Hangup) may
                        // still wait there unread: the stream is read to its end first, and
                        // reports the loss itself.
                        connected = false;
                    }
                    Err(_) => {
                        if !call.state().is_ended() {
                            lost = Some(EndReason::ConnectionLost);
                        }
                        break;
                    }
                }
            }
            read = recv.read(&mut read_buf), if stream_open => {
                match read {
                    // Decoded at the top of the loop, a message a turn.
                    Ok(Some(n)) => decoder.push(read_buf.get(..n).unwrap_or_default()),
                    // The peer finished its stream without hanging up.
                    Ok(None) => stream_open = false,
                    // The connection itself failed (closed, reset, timed out).
                    Err(_) => {
                        if !call.state().is_ended() {
                            lost = Some(EndReason::ConnectionLost);
                        }
                        break;
                    }
                }
                if !stream_open && !call.state().is_ended() {
                    // Without signaling the call cannot be controlled or hung up: end it.
                    lost = Some(EndReason::ProtocolError);
                    break;
                }
            }
            cmd = commands.recv() => {
                match cmd {
                    Some(DriverCommand::Call(cmd)) => {
                        if let Err(e) = call.handle_input(Input::Command(Instant::now(), cmd)) {
                            tracing::debug!(error = %e, "command refused");
                        }
                    }
                    Some(DriverCommand::Inject(Injection::TamperNext)) => {
                        if let Some(m) = media.as_mut() {
                            m.tamper_next += 1;
                        }
                    }
                    Some(DriverCommand::Inject(Injection::RawSignal(bytes))) => {
                        let sent = signaling.try_send(bytes);
                        if sent.is_err() {
                            tracing::debug!("injected signaling not sent");
                        }
                    }
                    Some(DriverCommand::Inject(injection)) => {
                        inject(&conn, media.as_ref(), injection);
                    }
                    Some(DriverCommand::SwitchDevice { direction, device }) => {
                        let started = match media.as_mut() {
                            Some(m) => start_switch(m, direction, device, &switch_done),
                            None => Err("the call's audio has not started".to_owned()),
                        };
                        if let Err(error) = started {
                            dispatch_audio(&shared, AudioEvent::SwitchFailed { direction, error });
                        }
                    }
                    None => {
                        // Every handle dropped: keep running until the call ends.
                    }
                }
            }
            () = &mut capture_timer, if capture_running => {
                if let Some(m) = media.as_mut() {
                    m.capture.fired();
                }
            }
            () = &mut playout_timer, if playout_running => {
                if let Some(m) = media.as_mut() {
                    m.playout.fired();
                }
            }
            Some(done) = switched.recv() => {
                if let Some((direction, Err(error))) = media.as_mut().map(|m| m.finish_switch(done)) {
                    dispatch_audio(&shared, AudioEvent::SwitchFailed { direction, error: error.to_string() });
                }
            }
            () = &mut call_timer, if armed_for.is_some() => {
                armed_for = None;
                let _ = call.handle_input(Input::Timeout(Instant::now()));
            }
        }

        // The media jobs that are due, or nearly due and cheap to meet in this wake-up (none
        // once the call has ended in this turn).
        let now = Instant::now();
        let live = !call.state().is_ended() && lost.is_none();
        if let Some(m) = media.as_mut().filter(|_| live) {
            let clocked = m.source.has_own_clock();
            let capture_due = m.capture.due(
                now,
                if clocked {
                    Duration::ZERO
                } else {
                    EARLY_WINDOW
                },
            );
            let playout_due = m.playout.due(
                now,
                if m.session.next_frame_ready() {
                    EARLY_WINDOW
                } else {
                    Duration::ZERO
                },
            );
            if capture_due {
                let skipped = m.capture.advance(now);
                if skipped > 0 {
                    // The frame index keeps to the clock: the periods the thread missed are
                    // a pause to the peer (the next packets carry the marker).
                    tracing::warn!(skipped, "media thread stalled; capture skipped ahead");
                    if let Err(e) = m.session.skip_frames(skipped) {
                        tracing::warn!(error = %e, "media counter exhausted");
                    }
                }
                m.follows_peer = false;
            }
            // The jitter buffer decides for the deadline the frame is played for, also when it
            // is played early: an early pop must not read as a shallower buffer (it would keep
            // more delay than it needs, about 10 ms more under 30 ms of jitter).
            let play_for = m.playout.next.map_or(now, |due| due.max(now));
            if playout_due {
                let skipped = m.playout.advance(now);
                if skipped > 0 {
                    // Not played in a burst: the jitter buffer finds itself that much deeper
                    // and sheds the delay as it does after any stall.
                    tracing::warn!(skipped, "media thread stalled; playout skipped ahead");
                }
            }
            // Audio captured on a clock has been waiting since its last sample: it goes first,
            // and quinn's driver puts it on the wire before a decode holds the thread for a few
            // hundred microseconds. A source without a clock is read when it is needed, after
            // playout: its frame's age starts at the read, so the order delays nobody.
            for step in 0..2 {
                if capture_due && (step == 0) == clocked {
                    capture_tick(&inner, &conn, m, direction, &mut pcm_in, &mut datagram);
                }
                if playout_due && (step == 0) != clocked {
                    if capture_due && step == 1 {
                        tokio::task::yield_now().await;
                    }
                    playout_tick(&inner, m, (direction.1, play_for), &pcm_in, &mut pcm_out);
                }
            }
            // What the devices reported meanwhile (lost, switched), after their jobs ran.
            if capture_due {
                while let Some(ev) = m.source.device_event() {
                    dispatch_device_event(&shared, AudioDirection::Input, ev);
                }
            }
            if playout_due {
                while let Some(ev) = m.sink.device_event() {
                    dispatch_device_event(&shared, AudioDirection::Output, ev);
                }
            }
        }
        if now.duration_since(last_stats) >= Duration::from_secs(1) {
            last_stats = now;
            publish_stats(&shared, &call, &conn, media.as_ref(), &mut last_sent);
            if let (Some(m), true) = (media.as_mut(), direction.1) {
                if let Some(report) = m.reception_report() {
                    if let Err(e) = call.handle_input(Input::Command(Instant::now(), report)) {
                        tracing::debug!(error = %e, "reception report not sent");
                    }
                }
            }
        }
    }

    if let Some(reason) = lost {
        set_state(&shared, CallState::Ended(reason));
    }
    publish_stats(&shared, &call, &conn, media.as_ref(), &mut last_sent);
    if let Some(m) = media.as_mut() {
        // A device switch under way has the real end point: wait for it (bounded), so the
        // sink below is the one that gets finished.
        while m.switching != (false, false) {
            match tokio::time::timeout(SWITCH_PATIENCE, switched.recv()).await {
                Ok(Some(done)) => {
                    if let (direction, Err(e)) = m.finish_switch(done) {
                        let error = e.to_string();
                        dispatch_audio(&shared, AudioEvent::SwitchFailed { direction, error });
                    }
                }
                _ => break,
            }
        }
        // Finishing a file (the last of its buffered audio, the header or final page) may wait
        // for a slow disk: never on the runtime thread, where other calls run too.
        let sink = std::mem::replace(&mut m.sink, Box::new(DiscardSink));
        let recorder = m.recorder.take();
        let finished = tokio::task::spawn_blocking(move || finish_files(sink, recorder)).await;
        if finished.is_err() {
            tracing::warn!("finishing the call's audio files failed");
        }
    }
    // The writer finishes the stream once the last frame is written; closing the connection
    // before the peer has it would lose the hangup, so wait (bounded) for its acknowledgement.
    drop(signaling);
    if tokio::time::timeout(SIGNALING_DRAIN, writer).await.is_err() {
        tracing::debug!("final signaling not acknowledged in time");
    }
    conn.close("call ended");
    shared.ended.send_replace(true);
}

/// Frames a file written in the background may fall behind (2 s at 20 ms) before frames are
/// dropped rather than the call waiting for the disk.
pub(super) const FILE_BUFFER_FRAMES: usize = 100;

/// Signaling frames that may wait for a peer that does not read its stream before the call is
/// ended (a call sends a few per second at most).
const SIGNALING_QUEUE: usize = 64;

/// How long a call's end waits for its last signaling frames to be acknowledged.
const SIGNALING_DRAIN: Duration = Duration::from_millis(500);

/// Starts the task that writes signaling frames in order; dropping the sender finishes the
/// stream, and the task ends once the peer has acknowledged everything (or stopped reading).
fn spawn_signaling_writer(
    mut send: quinn::SendStream,
) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(SIGNALING_QUEUE);
    let task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if let Err(e) = send.write_all(&bytes).await {
                tracing::warn!(error = %e, "signaling write failed");
                return;
            }
        }
        if send.finish().is_ok() {
            let _ = send.stopped().await;
        }
    });
    (tx, task)
}

/// Applies a call event to the driver's state; returns a command the call must take next
/// (ending it when its audio cannot start, refusing it when the phone is busy).
#[allow(clippy::too_many_arguments)]
async fn handle_event(
    inner: &PhoneInner,
    handle: &CallHandle,
    conn: &PeerConnection,
    call: &Call,
    event: &CallEvent,
    (started, admission): (Instant, Admission),
    media: &mut Option<MediaEnds>,
    pending_keys: &mut PendingKeys,
    direction: &mut (bool, bool),
    pcm: (&mut Vec<i16>, &mut Vec<i16>),
) -> Option<Command> {
    let shared = &handle.shared;
    match event {
        CallEvent::StateChanged(state) => {
            // `ended` is raised only once teardown is complete (end of `run_call`), so a
            // waiter sees final counters and finished files.
            shared.snapshot().state = *state;
        }
        CallEvent::KeysReady {
            peer,
            trust,
            sas,
            suite,
        } => {
            {
                let mut snap = shared.snapshot();
                snap.sas = Some(sas.to_string());
                snap.peer = Some(*peer);
                snap.trust = Some(*trust);
                snap.suite = Some(*suite);
                snap.setup_time = Some(started.elapsed());
            }
            if admission == Admission::Busy {
                // Refused as soon as the caller is known, before it rings (the Invite is
                // not looked at): no audio device is opened for it.
                if let Some(l) = listener(inner) {
                    let caller = CallerInfo {
                        identity: *peer,
                        trust: *trust,
                        remote_addr: conn.remote_addr(),
                    };
                    l.missed_call(caller, MissedCall::Busy);
                }
                return Some(Command::Busy);
            }
            if call.role() == Role::Callee {
                // The caller's Invite, which carries the media parameters, comes with the
                // caller's last handshake message: the callee's media waits for it.
                return None;
            }
            return open_media(
                inner,
                handle,
                conn,
                call,
                pending_keys,
                &call.media(),
                media,
                pcm,
            )
            .await;
        }
        CallEvent::Invited { media: params, .. } => {
            // Its audio opens before it rings: a call whose audio cannot start never rings.
            if let Some(abort) =
                open_media(inner, handle, conn, call, pending_keys, params, media, pcm).await
            {
                return Some(abort);
            }
            return Some(Command::Ring);
        }
        CallEvent::Incoming { peer, trust, .. } => {
            shared.snapshot().peer = Some(*peer);
            if call.state().is_ended() {
                return None;
            }
            let caller = CallerInfo {
                identity: *peer,
                trust: *trust,
                remote_addr: conn.remote_addr(),
            };
            if let Some(l) = listener(inner) {
                l.incoming_call(handle.clone(), caller);
            }
        }
        CallEvent::MediaDirection { send, receive } => *direction = (*send, *receive),
        CallEvent::ReceptionReport { loss_permille, .. } => {
            if let Some(m) = media.as_mut() {
                // FEC sized to the loss the peer sees: nothing spent on a clean path. One
                // second holds only 50 frames, so a 10 % path reads anywhere from 2 % to 20 %
                // per report: the worst of the last few reports is what FEC must cover.
                let pct = u8::try_from(loss_permille.div_ceil(10).min(30)).unwrap_or(30);
                m.recent_loss.rotate_left(1);
                if let Some(last) = m.recent_loss.last_mut() {
                    *last = pct;
                }
                let pct = m.recent_loss.iter().copied().max().unwrap_or(pct);
                if let Err(e) = m.session.set_expected_loss(pct) {
                    tracing::debug!(error = %e, "expected loss not applied");
                }
            }
        }
        CallEvent::TrustChanged(trust) => {
            shared.snapshot().trust = Some(*trust);
            if let (Trust::Verified, Some(peer)) = (trust, call.peer()) {
                // Remembered for this phone's later calls with the same identity.
                let mut verified = super::lock(&inner.verified);
                if !verified.contains(peer) {
                    verified.push(*peer);
                }
            }
        }
        _ => {}
    }
    None
}

/// Opens the call's media with the agreed `params`: the SFrame session, the codec, the audio
/// end points and the recorder. On failure the application is told and the call must end
/// (the returned command).
///
/// The audio end points are opened on a blocking thread (a sound device can take a hundred
/// milliseconds or more, a WAV file is read and resampled whole): this call waits for them,
/// the phone's other calls, on the same runtime thread, go on meanwhile.
#[allow(clippy::too_many_arguments)]
async fn open_media(
    inner: &PhoneInner,
    handle: &CallHandle,
    conn: &PeerConnection,
    call: &Call,
    keys: &mut PendingKeys,
    params: &MediaParams,
    media: &mut Option<MediaEnds>,
    (pcm_in, pcm_out): (&mut Vec<i16>, &mut Vec<i16>),
) -> Option<Command> {
    let shared = &handle.shared;
    let opus = opus_for(params, &inner.config.opus);
    let frame_samples = opus.frame_samples();
    let Some((suite, send, recv)) = keys.take() else {
        tracing::error!("media keys missing");
        return Some(Command::Abort(Reason::Error));
    };
    let (send_stream, recv_stream) = (send.key_id().0, recv.key_id.0);
    let session = MediaSession::new(suite, send, &recv, &opus, &inner.config.jitter);
    let audio = Arc::clone(&inner.config.audio);
    let (source, sink) = tokio::task::spawn_blocking(move || {
        (
            audio.open_source(frame_samples),
            audio.open_sink(frame_samples),
        )
    })
    .await
    .unwrap_or_else(|e| {
        let failed = || AudioIoError::Device(format!("opening audio failed: {e}"));
        (Err(failed()), Err(failed()))
    });
    match (session, source, sink) {
        (Ok(session), Ok(source), Ok(sink)) => {
            let follows_peer = call.role() == Role::Callee && !source.has_own_clock();
            *pcm_in = vec![0; session.frame_samples()];
            *pcm_out = vec![0; session.frame_samples()];
            let recorder = inner.config.recording.as_ref().and_then(|path| {
                OggOpusWriter::create(path, &opus)
                    .map_err(|e| AudioIoError::File(e.to_string()))
                    .and_then(|w| {
                        BackgroundSink::spawn(
                            "viska-record",
                            Box::new(w),
                            frame_samples,
                            FILE_BUFFER_FRAMES,
                        )
                    })
                    .map_err(|e| tracing::warn!(error = %e, "recording not started"))
                    .ok()
            });
            *media = Some(MediaEnds {
                opened: Instant::now(),
                send_stream,
                recv_stream,
                last_sent: Vec::with_capacity(MAX_DATAGRAM),
                tamper_next: 0,
                playout_aligned: false,
                capture: FrameClock::new(frame_period(&opus), (!follows_peer).then(Instant::now)),
                playout: FrameClock::new(frame_period(&opus), Some(Instant::now())),
                follows_peer,
                sent_last_frame: false,
                reported: (0, 0),
                recent_loss: [0; LOSS_REPORTS_KEPT],
                switching: (false, false),
                mix: vec![0; session.frame_samples()],
                session,
                source,
                sink,
                recorder,
            });
            None
        }
        (s, src, snk) => {
            let error = [
                s.err().map(|e| format!("media: {e}")),
                src.err().map(|e| format!("input: {e}")),
                snk.err().map(|e| format!("output: {e}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            tracing::error!(%error, "media could not start; ending the call");
            if call.role() == Role::Callee {
                // Before it rings: nobody holds a handle to this call yet.
                if let Some(l) = listener(inner) {
                    let caller = CallerInfo {
                        identity: call
                            .peer()
                            .copied()
                            .unwrap_or_else(|| inner.config.identity.public()),
                        trust: call.trust().unwrap_or(Trust::Unverified),
                        remote_addr: conn.remote_addr(),
                    };
                    l.missed_call(caller, MissedCall::AudioFailed { error });
                }
            } else {
                dispatch_audio(shared, AudioEvent::StartFailed { error });
            }
            Some(Command::Abort(Reason::Error))
        }
    }
}

/// The media keys the call's key source handed out, until the media opens.
#[derive(Default)]
struct PendingKeys {
    send: Option<(CipherSuite, SendKey)>,
    recv: Option<SframeKey>,
}

impl PendingKeys {
    fn install(&mut self, update: KeyUpdate) {
        match update {
            KeyUpdate::Send { suite, key, .. } => self.send = Some((suite, key)),
            KeyUpdate::Receive { key, .. } => self.recv = Some(key),
            _ => {}
        }
    }

    /// The keys, once: the send key moves into the media session.
    fn take(&mut self) -> Option<(CipherSuite, SendKey, SframeKey)> {
        let (suite, send) = self.send.take()?;
        let recv = self.recv.take()?;
        Some((suite, send, recv))
    }
}

/// A device switch that ran on a blocking thread, handing its end point back.
enum SwitchDone {
    Input(Box<dyn AudioSource>, Result<(), AudioIoError>),
    Output(Box<dyn AudioSink>, Result<(), AudioIoError>),
}

/// How long the end of a call waits for a device switch under way.
const SWITCH_PATIENCE: Duration = Duration::from_secs(2);

/// Hands the end point to a blocking thread to open the new device there (opening a device
/// can take a hundred milliseconds or more, which would stall media and signaling here); a
/// stand-in takes its place until [`MediaEnds::finish_switch`].
fn start_switch(
    m: &mut MediaEnds,
    direction: AudioDirection,
    device: Option<String>,
    done: &mpsc::UnboundedSender<SwitchDone>,
) -> Result<(), String> {
    let done = done.clone();
    match direction {
        AudioDirection::Input => {
            if m.switching.0 {
                return Err("an input switch is already under way".into());
            }
            m.switching.0 = true;
            let mut source = std::mem::replace(&mut m.source, Box::new(SilenceSource));
            tokio::task::spawn_blocking(move || {
                let result = source.change_device(device.as_deref());
                let _ = done.send(SwitchDone::Input(source, result));
            });
        }
        AudioDirection::Output => {
            if m.switching.1 {
                return Err("an output switch is already under way".into());
            }
            m.switching.1 = true;
            let mut sink = std::mem::replace(&mut m.sink, Box::new(DiscardSink));
            tokio::task::spawn_blocking(move || {
                let result = sink.change_device(device.as_deref());
                let _ = done.send(SwitchDone::Output(sink, result));
            });
        }
    }
    Ok(())
}

impl MediaEnds {
    /// Puts a switched end point back in place. Success is reported by the device itself
    /// (`Switched`) at the next frame it moves; the result is returned for failures.
    fn finish_switch(&mut self, done: SwitchDone) -> (AudioDirection, Result<(), AudioIoError>) {
        match done {
            SwitchDone::Input(source, result) => {
                self.source = source;
                self.switching.0 = false;
                (AudioDirection::Input, result)
            }
            SwitchDone::Output(sink, result) => {
                self.sink = sink;
                self.switching.1 = false;
                (AudioDirection::Output, result)
            }
        }
    }

    /// The reception report for the interval since the previous one; none when no frame was
    /// due in it (the peer muted, held or paused in DTX): "0 % loss" would then switch off
    /// the peer's FEC just before it talks again, on a path that may still be lossy.
    fn reception_report(&mut self) -> Option<Command> {
        let p = self.session.counters().playout;
        let lost = p.lost.saturating_sub(self.reported.0);
        let received = p.received.saturating_sub(self.reported.1);
        self.reported = (p.lost, p.received);
        let expected = lost + received;
        let loss_permille = (lost * 1000).checked_div(expected)?;
        Some(Command::SendReceptionReport {
            loss_permille: u16::try_from(loss_permille).unwrap_or(1000),
            jitter_ms: u16::try_from(p.jitter.as_millis()).unwrap_or(u16::MAX),
        })
    }
}

/// Tells the call's listener about a device event that concerns it.
fn dispatch_device_event(
    shared: &CallShared,
    direction: AudioDirection,
    event: viska_media::audio::DeviceEvent,
) {
    if let Some(ev) = AudioEvent::from_device(direction, event) {
        dispatch_audio(shared, ev);
    }
}

fn capture_tick(
    inner: &PhoneInner,
    conn: &PeerConnection,
    m: &mut MediaEnds,
    (send, receive): (bool, bool),
    pcm_in: &mut [i16],
    datagram: &mut [u8],
) {
    let frame = m.capture.period;
    let now = Instant::now();
    // A source with a clock of its own (a device) is read at every tick its clock runs, on
    // hold, muted and before the answer too, and what is not sent is thrown away: left
    // unread, it would back up and the first frames sent after the answer or the resume
    // would be audio from the start of the ringing or the hold, which the user never meant
    // to send. A file has no clock: it pauses while nothing flows, and plays on after.
    if !(send || receive || m.source.has_own_clock()) {
        pcm_in.fill(0);
    } else if let Err(e) = m.source.read_frame(pcm_in) {
        tracing::debug!(error = %e, "audio source failed; sending silence");
        pcm_in.fill(0);
    }
    if !(send || receive) {
        pcm_in.fill(0);
    }
    m.sent_last_frame = send;
    if !send {
        if let Err(e) = m.session.skip_frame() {
            tracing::warn!(error = %e, "media counter exhausted");
        }
        return;
    }
    let sent = m
        .session
        .encode_frame(pcm_in)
        .and_then(|index| match index {
            Some(index) => {
                if let Some(p) = inner.config.latency_probe.as_deref() {
                    // The frame's first sample was captured one frame period before it was read;
                    // once encoded it is ready for what Viska adds: protection and transport.
                    p.frame_ready(
                        m.send_stream,
                        index,
                        now.checked_sub(frame).unwrap_or(now),
                        Instant::now(),
                    );
                }
                Ok((index, Some(m.session.protect_encoded(datagram)?)))
            }
            None => Ok((0, None)),
        });
    match sent {
        Ok((_, Some(len))) => {
            if m.tamper_next > 0 {
                m.tamper_next -= 1;
                // Past the SFrame header: a ciphertext bit.
                if let Some(b) = datagram.get_mut(len.saturating_sub(20)) {
                    *b ^= 0x01;
                }
            }
            let d = datagram.get(..len).unwrap_or_default();
            if let Err(e) = conn.send_media(d) {
                tracing::debug!(error = %e, "media datagram not sent");
                let opus_len = m.session.last_opus_len();
                m.session.record_refused(len, opus_len);
            }
            m.last_sent.clear();
            m.last_sent.extend_from_slice(d);
        }
        Ok((_, None)) => {}
        Err(e) => tracing::warn!(error = %e, "media frame not sent"),
    }
}

/// Plays one frame: `(receive, deadline)` says whether the peer's audio is played at all and
/// for which playout deadline (the jitter buffer's clock; the frame may go out a little
/// earlier).
fn playout_tick(
    inner: &PhoneInner,
    m: &mut MediaEnds,
    (receive, deadline): (bool, Instant),
    pcm_in: &[i16],
    pcm_out: &mut [i16],
) {
    if receive {
        match m.session.play_frame(deadline, pcm_out) {
            Ok(played) => {
                if let (Some(p), Some(index)) =
                    (inner.config.latency_probe.as_deref(), played.frame_index)
                {
                    p.frame_played(m.recv_stream, index, Instant::now() + played.starts_after);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "playout failed");
                pcm_out.fill(0);
            }
        }
    } else {
        pcm_out.fill(0);
    }
    if let Err(e) = m.sink.write_frame(pcm_out) {
        // A sink that fails (a full disk under the WAV output) is not tried every frame; what
        // it holds is finished off the runtime thread.
        tracing::warn!(error = %e, "audio sink failed; discarding what is heard from now on");
        let failed = std::mem::replace(&mut m.sink, Box::new(DiscardSink));
        tokio::task::spawn_blocking(move || finish_files(failed, None));
    }
    if let Some(rec) = m.recorder.as_mut() {
        // The recording is the conversation: what was sent mixed with what was heard.
        let send = m.sent_last_frame;
        for ((mix, &local), &remote) in m.mix.iter_mut().zip(pcm_in.iter()).zip(pcm_out.iter()) {
            *mix = if send {
                local.saturating_add(remote)
            } else {
                remote
            };
        }
        if let Err(e) = rec.write_frame(&m.mix) {
            tracing::warn!(error = %e, "recording failed; stopped");
            let failed = m.recorder.take();
            tokio::task::spawn_blocking(move || drop(failed));
        }
    }
}

/// Finishes a call's audio sink and recording (blocking: run it off the runtime thread).
fn finish_files(mut sink: Box<dyn AudioSink>, recorder: Option<BackgroundSink>) {
    if let Err(e) = sink.finish() {
        tracing::warn!(error = %e, "finishing the audio sink failed");
    }
    if let Some(mut rec) = recorder {
        if let Err(e) = rec.finish() {
            tracing::warn!(error = %e, "finishing the recording failed");
        }
    }
}

fn publish_stats(
    shared: &CallShared,
    call: &Call,
    conn: &PeerConnection,
    media: Option<&MediaEnds>,
    last_sent: &mut Option<(Instant, u64)>,
) {
    let mut stats = call.stats();
    if stats.rtt_ms.is_none() {
        stats.rtt_ms = Some(conn.rtt().as_secs_f64() * 1000.0);
    }
    let counters = media.map(|m| m.session.counters()).unwrap_or_default();
    stats.packets_sent = counters.frames_sent;
    stats.packets_received = counters.frames_received;
    stats.packets_lost = counters.playout.lost;
    stats.packets_late = counters.playout.late;
    // What was sent since the last report (the first: since the media opened), as a rate:
    // 0 on hold or muted.
    let now = Instant::now();
    let since = last_sent.or_else(|| media.map(|m| (m.opened, 0)));
    if let Some((at, bytes)) = since {
        let secs = now.saturating_duration_since(at).as_secs_f64();
        if secs > 0.0 {
            let bits = counters.opus_bytes_sent.saturating_sub(bytes) as f64 * 8.0;
            // Saturating float-to-int conversion; a rate above 4 Gbit/s is not a call.
            stats.send_bitrate_bps = (bits / secs).round() as u32;
        }
    }
    if media.is_some() {
        *last_sent = Some((now, counters.opus_bytes_sent));
    }
    stats.jitter_ms = counters.playout.jitter.as_secs_f64() * 1000.0;
    stats.decrypt_failures += counters.decrypt_failures;
    stats.concealed_frames = counters.playout.concealed;
    stats.fec_recovered = counters.playout.fec_recovered;
    {
        let mut snap = shared.snapshot();
        snap.stats = stats.clone();
        snap.media = counters;
    }
    if let Some(l) = shared.listener() {
        l.stats(stats);
    }
}

fn inject(conn: &PeerConnection, media: Option<&MediaEnds>, injection: Injection) {
    let last = media.map(|m| m.last_sent.clone()).unwrap_or_default();
    let bytes = match injection {
        Injection::Raw(bytes) => bytes,
        Injection::ReplayLast => last,
        // Handled on the send path and the signaling stream.
        Injection::TamperNext | Injection::RawSignal(_) => return,
    };
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = conn.send_media(&bytes) {
        tracing::debug!(error = %e, "injected datagram not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_clock_is_due_on_time_or_within_the_early_window_and_keeps_its_phase() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut clock = FrameClock::new(ms(20), None);
        assert!(!clock.is_running());
        assert!(
            !clock.due(t0 + ms(1000), EARLY_WINDOW),
            "a stopped clock is never due"
        );
        clock.start_at(t0 + ms(10));
        assert!(
            !clock.due(t0, EARLY_WINDOW),
            "10 ms ahead is outside the window"
        );
        assert!(
            clock.due(t0 + ms(6), EARLY_WINDOW),
            "4 ms ahead is inside it"
        );
        assert!(
            !clock.due(t0 + ms(6), Duration::ZERO),
            "not due yet without a window"
        );
        assert!(clock.due(t0 + ms(10), Duration::ZERO));
        // Met early: the next deadline is a period after the nominal one, not after `now`.
        assert_eq!(clock.advance(t0 + ms(10)), 0);
        assert_eq!(clock.next, Some(t0 + ms(30)));
        // A clock left a little behind stays due until every missed period is caught up.
        let late = t0 + ms(75);
        let mut caught_up = 0;
        while clock.due(late, Duration::ZERO) {
            assert_eq!(clock.advance(late), 0);
            caught_up += 1;
        }
        assert_eq!(caught_up, 3, "30, 50 and 70 ms were missed");
        assert_eq!(clock.next, Some(t0 + ms(90)));
        // Far behind (a thread stalled for a second), it runs once and skips the rest.
        let stalled = t0 + ms(1_095);
        assert!(clock.due(stalled, Duration::ZERO));
        // Due were 90, 110, ..., 1090 ms: 51 periods; this tick runs one, 50 are skipped.
        assert_eq!(clock.advance(stalled), 50);
        assert_eq!(clock.next, Some(t0 + ms(1_110)));
        assert!(!clock.due(stalled, Duration::ZERO));
    }
}
