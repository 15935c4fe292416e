//! The async driver of one call: moves bytes between the QUIC connection and the IO-free
//! [`Session`], and frames between the session and the audio end points. No policy lives here:
//! one clock read per wake-up, the session says what to do and when to wake again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use viska_call::{CallConfig, CallState, Command, EndReason, Role, SecurityEvent, Trust};
use viska_e2ee::direct::ChannelBinding;
use viska_e2ee::identity::PublicIdentity;
use viska_proto::CallId;
use viska_session::{
    Admission, AudioStatus, Input, Output, Request, Session, SessionConfig, SessionError,
    SessionEvent,
};

use super::admission::Decision;
use super::audio::{AudioEnds, AudioJob, open_ends};
use super::events::Item;
use super::{
    AudioDirection, AudioEvent, CallHandle, CallShared, CallUpdate, CallerInfo, DriverCommand,
    MissedCall, PhoneError, PhoneEvent, PhoneInner, SHUTDOWN_GRACE, lock,
};
use crate::transport::runtime::move_timer;
use crate::transport::{PeerConnection, QuicEndpoint};
use viska_admission::Place;

/// Signaling bytes that may wait for a peer that does not read its stream before the call is
/// ended: sixteen of the largest frames, beyond the 64 KiB the stream's flow control already
/// holds (a call sends a few small frames per second; an application may send a burst of
/// call data or DTMF at once).
const SIGNALING_BUDGET: usize = 16 * (viska_proto::signal::MAX_BODY_LEN + 16);

/// The call's end of its signaling writer: frames go in order, and the bytes not yet handed
/// to QUIC are bounded by [`SIGNALING_BUDGET`].
pub(super) struct SignalingQueue {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<AtomicUsize>,
}

impl SignalingQueue {
    /// Queues one frame; false when it cannot go: the budget is spent (the peer stopped
    /// reading), or the writer has stopped (a write failed: the peer stopped the stream, or
    /// the connection is gone). Either way the peer can be told nothing more.
    pub(super) fn send(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        if self.pending.load(Ordering::Acquire) + len > SIGNALING_BUDGET {
            return false;
        }
        self.pending.fetch_add(len, Ordering::AcqRel);
        if self.frames.send(bytes).is_err() {
            self.pending.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// How long a call's end waits for its last signaling frames to be acknowledged.
const SIGNALING_DRAIN: Duration = Duration::from_millis(500);

/// How a call came to be.
pub(super) struct Setup {
    role: Role,
    /// When the call was dialed (caller) or its connection accepted (callee).
    started: Instant,
    /// An incoming call's place among the connections not yet authenticated, given up once
    /// its caller is authenticated.
    place: Option<Place>,
    /// The identity the application expects the peer to have (a call to a known contact).
    expected_peer: Option<PublicIdentity>,
    /// The contact the application called, by its handle (trust from the key store).
    contact: Option<String>,
    /// A caller's call id (the callee learns it from the Invite).
    call_id: Option<CallId>,
}

impl Setup {
    pub(super) fn outgoing(
        shared: &CallShared,
        expected_peer: Option<PublicIdentity>,
        contact: Option<String>,
    ) -> Self {
        let mut id = [0u8; CallId::LEN];
        rand::RngExt::fill(&mut rand::rng(), &mut id);
        let call_id = CallId(id);
        let _ = shared.id.set(call_id);
        shared.snapshot().call_id = call_id;
        Self {
            role: Role::Caller,
            started: Instant::now(),
            place: None,
            expected_peer,
            contact,
            call_id: Some(call_id),
        }
    }
}

/// Accepts connections and runs each as an incoming call.
pub(super) async fn accept_loop(inner: Arc<PhoneInner>, ep: QuicEndpoint) {
    while let Some((from, connecting)) = ep.accept_connecting().await {
        if inner.is_closing() {
            continue; // dropping the attempt refuses it
        }
        // A place among the connections whose caller is not known yet (see `handshakes`).
        let place = match inner.handshakes.admit(Instant::now(), from.ip()) {
            Ok(place) => place,
            Err(why) => {
                tracing::debug!(%from, ?why, "refused before TLS");
                continue;
            }
        };
        // Each handshake runs in its own task: a peer that stalls mid-handshake delays nobody.
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let deadline = inner.config.tls_deadline;
            let connected = tokio::select! {
                c = tokio::time::timeout(deadline, connecting) => c,
                () = place.taken_back() => return,
            };
            match connected {
                Ok(Ok(conn)) => {
                    let (handle, commands) = CallHandle::new(&inner.events);
                    let setup = Setup {
                        role: Role::Callee,
                        started: Instant::now(),
                        place: Some(place),
                        expected_peer: None,
                        contact: None,
                        call_id: None,
                    };
                    run_call(inner, conn, handle.shared, commands, setup).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %from, "incoming connection failed");
                    inner.security_event(from, SecurityEvent::TransportHandshakeFailed);
                }
                Err(_) => {
                    inner.handshakes.tls_timed_out();
                    inner.security_event(from, SecurityEvent::TransportHandshakeTimedOut);
                }
            }
        });
    }
}

/// Connects to `addr` and runs the call as its caller.
pub(super) async fn place_call(
    inner: Arc<PhoneInner>,
    ep: QuicEndpoint,
    addr: SocketAddr,
    shared: Arc<CallShared>,
    mut commands: mpsc::UnboundedReceiver<DriverCommand>,
    setup: Setup,
) {
    set_state(&shared, CallState::Handshaking);
    let connecting = ep.connect(addr);
    tokio::pin!(connecting);
    // The application may give up while QUIC is still connecting (an address that does not
    // answer takes the whole idle timeout to fail).
    let connected = loop {
        tokio::select! {
            c = &mut connecting => break c,
            Some(cmd) = commands.recv() => match cmd {
                DriverCommand::Call(Command::Hangup | Command::Abort(_)) => {
                    return end(&shared, EndReason::Cancelled { by: viska_call::Side::Local });
                }
                DriverCommand::SwitchDevice { direction, .. } => {
                    let error = "the call's audio has not started".to_owned();
                    shared.notify(CallUpdate::Audio(AudioEvent::SwitchFailed { direction, error }));
                }
                _ => {}
            },
        }
    };
    match connected {
        Ok(conn) => run_call(inner, conn, shared, commands, setup).await,
        Err(e) => {
            tracing::warn!(error = %e, %addr, "call could not connect");
            let why = if e.is_refused() {
                EndReason::ConnectionRefused
            } else {
                EndReason::ConnectionLost
            };
            end(&shared, why);
        }
    }
}

fn set_state(shared: &CallShared, state: CallState) {
    let changed = std::mem::replace(&mut shared.snapshot().state, state) != state;
    if changed {
        shared.notify(CallUpdate::StateChanged(state));
    }
}

/// Ends a call that never had a session (it did not connect).
fn end(shared: &CallShared, reason: EndReason) {
    set_state(shared, CallState::Ended(reason));
    shared.finish();
}

/// Everything one call's loop holds besides the session.
struct Call {
    inner: Arc<PhoneInner>,
    shared: Arc<CallShared>,
    conn: PeerConnection,
    setup: Setup,
    signaling: SignalingQueue,
    ends: AudioEnds,
    jobs: mpsc::UnboundedSender<AudioJob>,
    /// Set when the signaling writer cannot keep up (the peer stopped reading).
    stuck: bool,
    #[cfg(feature = "testing")]
    hooks: super::audio::TestHooks,
}

/// Why the loop woke.
enum Wake {
    Datagram(bytes::Bytes),
    Signaling(usize),
    Command(DriverCommand),
    Job(AudioJob),
    Closed(EndReason),
    Timeout,
    Nothing,
}

async fn run_call(
    inner: Arc<PhoneInner>,
    conn: PeerConnection,
    shared: Arc<CallShared>,
    mut commands: mpsc::UnboundedReceiver<DriverCommand>,
    setup: Setup,
) {
    let mut session = match new_session(&inner, &conn, &setup) {
        Ok(session) => session,
        Err(e) => {
            tracing::error!(error = %e, "call could not start");
            conn.close("configuration");
            return end(&shared, EndReason::ProtocolError);
        }
    };
    // A peer that connects but never opens the signaling stream is dropped after the setup
    // timeout (keep-alives would otherwise hold the connection forever), or as soon as its
    // place among the unknown connections is taken back.
    let opening = tokio::time::timeout(viska_call::DEFAULT_SETUP_TIMEOUT, async {
        match setup.role {
            Role::Caller => conn.open_signaling().await,
            _ => conn.accept_signaling().await,
        }
    });
    let streams = tokio::select! {
        s = opening => s,
        () = taken_back(setup.place.as_ref()) => {
            conn.close("place taken back");
            return end(&shared, EndReason::ConnectionRefused);
        }
    };
    let Ok(Ok((send, mut recv))) = streams else {
        conn.close("no signaling");
        return end(&shared, EndReason::SetupTimeout);
    };
    let (signaling, writer) = spawn_signaling_writer(send);
    let (jobs, mut done) = mpsc::unbounded_channel();
    let mut call = Call {
        #[cfg(feature = "testing")]
        hooks: super::audio::TestHooks::new(&inner.config.testing, setup.role),
        inner,
        shared,
        conn,
        setup,
        signaling,
        ends: AudioEnds::default(),
        jobs,
        stuck: false,
    };
    if call.setup.role == Role::Caller {
        let _ = session.handle_input(Input::Command(Instant::now(), Command::Dial));
    }
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let mut read_buf = vec![0u8; 4096];
    let (mut connected, mut stream_open) = (true, true);
    let mut now = Instant::now();
    loop {
        let deadline = call.drain(&mut session, now).await;
        if session.is_ended() {
            break;
        }
        if armed != Some(deadline) {
            move_timer(timer.as_mut(), deadline);
            armed = Some(deadline);
        }
        let place = call.setup.place.as_ref();
        let input = tokio::select! {
            // Media first when several are ready: a datagram waiting behind a decode is
            // latency added to every frame.
            biased;
            d = call.conn.recv_media(), if connected => match d {
                Ok(d) => Wake::Datagram(d),
                // What the peer wrote on the stream before it closed (a Busy, a Hangup) may
                // still wait there unread: the stream is read to its end first.
                Err(_) => { connected = false; Wake::Nothing }
            },
            read = recv.read(&mut read_buf), if stream_open => match read {
                Ok(Some(n)) => Wake::Signaling(n),
                Ok(None) => { stream_open = false; Wake::Closed(EndReason::ProtocolError) }
                Err(_) => { stream_open = false; Wake::Closed(EndReason::ConnectionLost) }
            },
            Some(cmd) = commands.recv() => Wake::Command(cmd),
            Some(job) = done.recv() => Wake::Job(job),
            () = taken_back(place) => Wake::Closed(EndReason::ConnectionRefused),
            () = &mut timer => { armed = None; Wake::Timeout }
        };
        now = Instant::now();
        let result = match input {
            Wake::Datagram(d) => {
                let result = session.handle_input(Input::Datagram(now, &d));
                #[cfg(feature = "testing")]
                if result.is_ok() {
                    call.hooks.arrived(&session, now);
                }
                result
            }
            Wake::Signaling(n) => {
                let bytes = read_buf.get(..n).unwrap_or_default();
                session.handle_input(Input::Signaling(now, bytes))
            }
            Wake::Command(DriverCommand::Call(cmd)) => {
                session.handle_input(Input::Command(now, cmd))
            }
            Wake::Command(DriverCommand::Displaced) => call.displaced(&mut session, now),
            Wake::Command(DriverCommand::SwitchDevice { direction, device }) => {
                call.switch(direction, device);
                Ok(())
            }
            #[cfg(feature = "testing")]
            Wake::Command(DriverCommand::Inject(injection)) => {
                call.hooks.inject(&call.conn, &call.signaling, injection);
                Ok(())
            }
            Wake::Job(job) => call.job(&mut session, job, now),
            Wake::Closed(reason) => session.handle_input(Input::Closed(now, reason)),
            Wake::Timeout => session.handle_input(Input::Timeout(now)),
            Wake::Nothing => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "input refused");
        }
        if call.stuck {
            let _ = session.handle_input(Input::Closed(now, EndReason::ConnectionLost));
        }
    }
    call.drain(&mut session, Instant::now()).await;
    call.teardown(writer, &mut done).await;
}

fn new_session(
    inner: &PhoneInner,
    conn: &PeerConnection,
    setup: &Setup,
) -> Result<Session, PhoneError> {
    let config = &inner.config;
    let binding = ChannelBinding {
        tls_exporter: conn.tls_exporter()?,
    };
    let mut call = CallConfig::new(setup.role, config.identity.clone(), binding);
    call.suites = config.suites.clone();
    call.ring_timeout = config.ring_timeout;
    call.expected_peer = setup.expected_peer;
    call.verified_peers = lock(&inner.verified).clone();
    call.directory = config.store.as_ref().map(|store| {
        Arc::new(store.directory(setup.contact.as_deref())) as Arc<dyn viska_call::PeerDirectory>
    });
    call.call_id = setup.call_id;
    if let Some(first) = config.suites.first() {
        call.media.suite = viska_proto::SuiteId(first.id());
    }
    call.media.bitrate_bps = config.opus.bitrate_bps;
    call.media.frame = config.opus.frame;
    let session = SessionConfig {
        call,
        opus: config.opus,
        jitter: config.jitter.clone(),
        record: config.recording.is_some(),
    };
    Ok(Session::new(session, Instant::now(), &mut rand::rng())?)
}

impl Call {
    /// Does what the session produced; returns when it wants to be woken next.
    async fn drain(&mut self, session: &mut Session, now: Instant) -> Instant {
        let mut sent_media = false;
        loop {
            let mut refused = false;
            match session.poll_output() {
                Output::Datagram(bytes) => {
                    refused = !self.send_datagram(bytes);
                    sent_media = true;
                }
                Output::Signaling(bytes) if !self.signaling.send(bytes.to_vec()) => {
                    // The peer has not read its stream for a long while (QUIC flow control
                    // holds the writer), or the stream failed: it cannot be told anything
                    // any more.
                    tracing::warn!("signaling cannot reach the peer; ending the call");
                    self.stuck = true;
                }
                Output::Signaling(_) => {}
                Output::Capture => {
                    let pcm = self.ends.capture();
                    let _ = session.handle_input(Input::Captured(now, pcm));
                    #[cfg(feature = "testing")]
                    self.hooks.captured(session, now);
                }
                Output::Play(pcm) => {
                    if std::mem::take(&mut sent_media) {
                        // The datagram just queued goes on the wire before the decode's output
                        // is written (quinn's driver runs now).
                        tokio::task::yield_now().await;
                    }
                    self.ends.play(pcm);
                    #[cfg(feature = "testing")]
                    self.hooks.played(session);
                }
                Output::Record(pcm) => self.ends.record(pcm),
                Output::Request(request) => self.request(session, request, now),
                Output::Event(event) => self.event(session, event, now),
                Output::Timeout(at) => {
                    // What the devices reported meanwhile (a device lost or switched).
                    self.ends.device_events(&self.shared);
                    return at;
                }
                _ => {}
            }
            if refused {
                let _ = session.handle_input(Input::DatagramRefused(now));
            }
        }
    }

    fn send_datagram(&mut self, bytes: &[u8]) -> bool {
        #[cfg(feature = "testing")]
        let sending = self.hooks.sending(bytes);
        #[cfg(feature = "testing")]
        let bytes: &[u8] = &sending;
        match self.conn.send_media(bytes) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "media datagram not sent");
                false
            }
        }
    }

    fn caller_info(&self, session: &Session) -> Option<CallerInfo> {
        Some(CallerInfo {
            identity: *session.peer()?,
            trust: session.trust().unwrap_or(Trust::Unverified),
            remote_addr: self.conn.remote_addr(),
        })
    }

    /// A verified caller took this call's place while it rang (or was about to): it is
    /// refused as busy and reported missed. A call the user answered before this arrived goes
    /// on (the phone then runs one call over its limit until one ends).
    fn displaced(&mut self, session: &mut Session, now: Instant) -> Result<(), SessionError> {
        if !matches!(
            session.state(),
            CallState::Idle | CallState::Handshaking | CallState::Ringing
        ) {
            return Ok(());
        }
        session.handle_input(Input::Command(now, Command::Busy))?;
        if let Some(caller) = self.caller_info(session) {
            self.inner.events.push(Item::Phone(PhoneEvent::MissedCall {
                caller,
                why: MissedCall::DisplacedByVerifiedCaller,
            }));
        }
        Ok(())
    }

    fn request(&mut self, session: &mut Session, request: Request, now: Instant) {
        match request {
            Request::Admit { peer, trust } => {
                // Authenticated: its place among the unknown connections is free.
                self.setup.place = None;
                let source = self.conn.remote_addr();
                // With no listener to ring, or one so far behind that its queue is full, the
                // call is refused rather than queued.
                let decision = if self.inner.events.can_ring() {
                    self.inner
                        .admission
                        .admit_incoming(&self.shared, source.ip(), peer, trust)
                } else {
                    Decision::Busy
                };
                let admission = match decision {
                    Decision::Admit => Admission::Admit,
                    Decision::AdmitInPlaceOf(other) => {
                        // Its own driver refuses it, unless the user answered it first.
                        let _ = other.commands.send(DriverCommand::Displaced);
                        Admission::Admit
                    }
                    Decision::Busy => {
                        // Refused as soon as the caller is known, before it rings: no audio
                        // is opened for it, nothing of its SAS is revealed.
                        let caller = CallerInfo {
                            identity: peer,
                            trust,
                            remote_addr: source,
                        };
                        self.inner.events.push(Item::Phone(PhoneEvent::MissedCall {
                            caller,
                            why: MissedCall::Busy,
                        }));
                        Admission::Busy
                    }
                };
                let _ = session.handle_input(Input::Admission(now, admission));
            }
            Request::OpenAudio {
                frame_samples,
                opus,
            } => {
                // Opening a sound device can take a hundred milliseconds or more, a WAV file
                // is read whole: never on this thread, where other calls' media runs.
                let audio = Arc::clone(&self.inner.config.audio);
                let recording = self.inner.config.recording.clone();
                let jobs = self.jobs.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = jobs.send(open_ends(&*audio, frame_samples, &opus, recording));
                });
            }
            _ => {}
        }
    }

    fn job(
        &mut self,
        session: &mut Session,
        job: AudioJob,
        now: Instant,
    ) -> Result<(), SessionError> {
        match job {
            AudioJob::Opened(ends) => {
                let source_clocked = ends.source_clocked();
                self.ends.install(ends);
                session.handle_input(Input::Audio(now, AudioStatus::Opened { source_clocked }))
            }
            AudioJob::Failed(error) => {
                tracing::error!(%error, "audio could not start; ending the call");
                if let (Role::Callee, Some(caller)) = (session.role(), self.caller_info(session)) {
                    self.inner.events.push(Item::Phone(PhoneEvent::MissedCall {
                        caller,
                        why: MissedCall::AudioFailed {
                            error: error.clone(),
                        },
                    }));
                }
                self.shared
                    .notify(CallUpdate::Audio(AudioEvent::StartFailed { error }));
                session.handle_input(Input::Audio(now, AudioStatus::Failed))
            }
            AudioJob::Switched(done) => {
                if let Some(event) = self.ends.finish_switch(done) {
                    self.shared.notify(CallUpdate::Audio(event));
                }
                let source_clocked = self.ends.source_clocked();
                session.handle_input(Input::Audio(
                    now,
                    AudioStatus::SourceChanged { source_clocked },
                ))
            }
        }
    }

    fn switch(&mut self, direction: AudioDirection, device: Option<String>) {
        if let Err(error) = self.ends.start_switch(direction, device, &self.jobs) {
            self.shared
                .notify(CallUpdate::Audio(AudioEvent::SwitchFailed {
                    direction,
                    error,
                }));
        }
    }

    /// Applies a session event to the snapshot and tells the application.
    fn event(&mut self, session: &mut Session, event: SessionEvent, now: Instant) {
        let shared = &self.shared;
        // Before an incoming call rings, nobody holds its handle: its security events are the
        // phone's, with the caller's address.
        let visible = shared.id.get().is_some();
        let update = match event {
            SessionEvent::StateChanged(state) => {
                // `ended` is raised only once teardown is complete, so a waiter sees final
                // counters and finished files.
                shared.snapshot().state = state;
                CallUpdate::StateChanged(state)
            }
            SessionEvent::KeysReady {
                peer,
                trust,
                sas,
                suite,
            } => {
                let sas = sas.to_string();
                let mut snap = shared.snapshot();
                snap.sas = Some(sas.clone());
                snap.peer = Some(peer);
                snap.trust = Some(trust);
                snap.suite = Some(suite);
                snap.setup_time = Some(self.setup.started.elapsed());
                drop(snap);
                if let (Some(log), Some(id)) = (shared.log.get(), shared.id.get()) {
                    log.keys(*id, peer, trust);
                }
                CallUpdate::KeysReady { sas, trust }
            }
            SessionEvent::Incoming {
                call_id,
                peer,
                trust,
            } => {
                let _ = shared.id.set(call_id);
                if let Some(writer) = &self.inner.store_writer {
                    let log = super::history::CallLog::start(
                        writer,
                        viska_store::CallDirection::Incoming,
                        None,
                    );
                    log.keys(call_id, peer, trust);
                    let _ = shared.log.set(log);
                }
                let (state, sas) = {
                    let mut snap = shared.snapshot();
                    snap.call_id = call_id;
                    (snap.state, snap.sas.clone())
                };
                // Visible from now on: what happened before it rang (its keys, its state) is
                // queued first, so a listener set in `IncomingCall` gets it replayed.
                if let Some(sas) = sas {
                    shared.notify(CallUpdate::KeysReady { sas, trust });
                }
                shared.notify(CallUpdate::StateChanged(state));
                let caller = CallerInfo {
                    identity: peer,
                    trust,
                    remote_addr: self.conn.remote_addr(),
                };
                let call = CallHandle {
                    shared: Arc::clone(shared),
                };
                self.inner
                    .events
                    .push(Item::Phone(PhoneEvent::IncomingCall { call, caller }));
                return;
            }
            SessionEvent::TrustChanged(trust) => {
                shared.snapshot().trust = Some(trust);
                if let (Trust::Verified, Some(peer)) = (trust, session.peer()) {
                    // Remembered for this phone's later calls with the same identity.
                    let mut verified = lock(&self.inner.verified);
                    if !verified.contains(peer) {
                        verified.push(*peer);
                    }
                }
                CallUpdate::TrustChanged(trust)
            }
            SessionEvent::Stats(stats) => {
                {
                    let mut snap = shared.snapshot();
                    snap.stats = stats.clone();
                    snap.media = session.counters();
                    snap.signaling = session.signaling_counters();
                    snap.wire = self.conn.wire_counters();
                }
                let _ = session.handle_input(Input::TransportRtt(now, self.conn.rtt()));
                CallUpdate::Stats(stats)
            }
            SessionEvent::Security(event) if !visible => {
                self.inner.security_event(self.conn.remote_addr(), event);
                return;
            }
            SessionEvent::Security(event) => CallUpdate::Security(event),
            SessionEvent::Dtmf {
                participant,
                event,
                duration_ms,
            } => CallUpdate::Dtmf {
                participant,
                event,
                duration_ms,
            },
            SessionEvent::Data { participant, data } => CallUpdate::Data { participant, data },
            SessionEvent::PeerMuted { participant, muted } => {
                CallUpdate::PeerMuted { participant, muted }
            }
            SessionEvent::PeerHold {
                participant,
                on_hold,
            } => CallUpdate::PeerHold {
                participant,
                on_hold,
            },
            _ => return,
        };
        if visible {
            shared.notify(update);
        }
    }

    async fn teardown(
        mut self,
        writer: tokio::task::JoinHandle<()>,
        done: &mut mpsc::UnboundedReceiver<AudioJob>,
    ) {
        // A device switch under way has the real end point: wait for it (bounded), then
        // finish files (the last buffered audio, headers) off this thread.
        self.ends.finish(done).await;
        // The writer finishes the stream once the last frame is written; closing the
        // connection before the peer has it would lose the hangup: wait (bounded) for it.
        drop(self.signaling);
        if tokio::time::timeout(SIGNALING_DRAIN, writer).await.is_err() {
            tracing::debug!("final signaling not acknowledged in time");
        }
        self.conn.close("call ended");
        self.shared.finish();
    }
}

/// Resolves when an incoming call's place among the unknown connections is taken back; never
/// for a call without one.
async fn taken_back(place: Option<&Place>) {
    match place {
        Some(p) => p.taken_back().await,
        None => std::future::pending().await,
    }
}

/// Starts the task that writes signaling frames in order; dropping the sender finishes the
/// stream, and the task ends once the peer has acknowledged everything (or stopped reading).
fn spawn_signaling_writer(
    mut send: quinn::SendStream,
) -> (SignalingQueue, tokio::task::JoinHandle<()>) {
    let (frames, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let pending = Arc::new(AtomicUsize::new(0));
    let written = Arc::clone(&pending);
    let task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if let Err(e) = send.write_all(&bytes).await {
                tracing::warn!(error = %e, "signaling write failed");
                return;
            }
            written.fetch_sub(bytes.len(), Ordering::AcqRel);
        }
        if send.finish().is_ok() {
            let _ = send.stopped().await;
        }
    });
    (SignalingQueue { frames, pending }, task)
}

/// Hangs up every call of a closing phone and waits (bounded) for their teardown, then
/// closes the phone's endpoints.
pub(super) async fn close_calls(inner: &PhoneInner) {
    let calls = inner.admission.calls();
    for call in &calls {
        let _ = call.commands.send(DriverCommand::Call(Command::Hangup));
    }
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for call in calls {
        let mut ended = call.ended.subscribe();
        let _ = tokio::time::timeout_at(deadline, ended.wait_for(|e| *e)).await;
    }
    let endpoints: Vec<_> = lock(&inner.endpoints).drain(..).collect();
    for ep in &endpoints {
        ep.close();
    }
    for ep in &endpoints {
        let _ = tokio::time::timeout(Duration::from_millis(200), ep.wait_idle()).await;
    }
}

/// Asks for real-time priority for the current thread (the one carrying media), as audio
/// applications do; where the system refuses (no privilege, no `RLIMIT_RTPRIO`), the thread
/// runs at normal priority and that is logged once.
pub(super) fn raise_priority() {
    match audio_thread_priority::promote_current_thread_to_real_time(960, 48_000) {
        Ok(handle) => {
            tracing::debug!("media thread runs at real-time priority");
            // Kept for the thread's life (dropping it may demote the thread on some systems).
            Box::leak(Box::new(handle));
        }
        Err(e) => tracing::info!(error = %e, "media thread runs at normal priority"),
    }
}
