//! Group calls through a Viska relay: one long-lived QUIC connection per device to the relay
//! (`docs/protocol-relay.md`), one MLS group per call as its key source (`viska-group`,
//! `docs/protocol-group.md`) and one [`Session::group`] per call for its media.
//!
//! A [`GroupPhone`] connects out to the relay (so it works behind NAT), pins the relay's
//! certificate fingerprint, proves its identity key, publishes key packages, and then creates
//! calls, adds devices to them, joins the calls it is added to, and leaves. The relay routes
//! ciphertext and orders the group's commits; it never holds a key.
//!
//! A lost connection to the relay does not end the calls: the phone reconnects with back-off
//! (100 ms doubling to 5 s), authenticates again and resumes them, from the messages the relay
//! held within its hold time, or by being added back past it
//! ([`GroupCallEvent::RelayDisconnected`], [`GroupCallEvent::RelayReconnected`];
//! `docs/protocol-relay.md` §7).
//!
//! The driver is thin, as the direct call's is: one task per device moves relay messages to
//! the members, datagrams to the sessions, and the sessions' frames to the audio end points;
//! the policy is in the session and the member.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_group::{GroupMember, GroupOutput, ParticipantId};
use viska_media::audio::{AudioSink, AudioSource};
use viska_proto::relay::{
    AUTH_EXPORTER_LABEL, DeviceKey, RelayDecoder, RelayErrorCode, RelayMessage, auth_transcript,
    decode_route, encode_route,
};
use viska_session::{
    AudioStatus, GroupSessionConfig, Input, MediaCounters, Output, Request, Session,
};

pub use viska_call::Trust;
pub use viska_group::{GroupConfig, GroupEvent, GroupFailure};
pub use viska_proto::relay::CallRef;

use crate::group_memberships as memberships;
pub use crate::group_memberships::recorded as recorded_membership;
use crate::phone::AudioFactory;
use crate::transport::TransportError;
use crate::transport::runtime::PromptRuntime;

/// One-use key packages a device keeps published on the relay.
const KEY_PACKAGES: usize = 8;

/// A device being added that has no key package on the relay yet (its phone is starting, its
/// packages are on their way) is asked for again this many times, after 200 ms doubling.
const FETCH_RETRIES: u32 = 5;

/// The wait before the first fetch retry.
const FETCH_RETRY_FIRST: Duration = Duration::from_millis(200);

/// How often the calls' snapshots follow their media counters (roster and membership changes
/// are published at once).
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

/// How long a request the relay answers (opening a call) may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a group phone connects, as who, with what audio.
pub struct GroupPhoneConfig {
    /// The relay's address.
    pub relay: SocketAddr,
    /// The relay's certificate fingerprint (SHA-256 of its DER), as it prints on start.
    pub relay_fingerprint: [u8; 32],
    /// This device's identity key: it signs the relay's challenge and the device's MLS
    /// messages.
    pub identity: IdentityKeyPair,
    /// The audio end points of each call.
    pub audio: Arc<dyn AudioFactory>,
    /// Codec and jitter settings of each call's session.
    pub session: GroupSessionConfig,
    /// Epoch transition timers of each call's group.
    pub group: GroupConfig,
    /// Identities the user verified (compared the verification code or a safety number):
    /// shown as [`Trust::Verified`] in rosters and events, everyone else as
    /// [`Trust::Unverified`].
    pub verified_peers: Vec<PublicIdentity>,
}

/// An account on a relay that admits registered devices only: given to
/// [`GroupPhone::connect_with_login`] once, to register this device's key to the account.
/// Later connections authenticate with the key alone.
#[derive(Clone)]
pub struct RelayLogin {
    /// The account name.
    pub account: String,
    /// Its password (wiped on drop, never printed).
    pub password: zeroize::Zeroizing<String>,
    /// The current one-time code of its authenticator (TOTP, 6 digits).
    pub code: String,
}

impl std::fmt::Debug for RelayLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLogin")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// Something a group phone's application should know, delivered to its [`GroupListener`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GroupCallEvent {
    /// This device is in `call` (it created it, or was added).
    Joined {
        /// The call.
        call: CallRef,
    },
    /// A device joined the call (also each member already there, when this device joins).
    ParticipantJoined {
        /// The call.
        call: CallRef,
        /// Its participant id.
        participant: ParticipantId,
        /// Its identity.
        identity: PublicIdentity,
        /// How far the user trusts it: an unverified member is flagged to everyone.
        trust: Trust,
    },
    /// A device left the call.
    ParticipantLeft {
        /// The call.
        call: CallRef,
        /// Its participant id.
        participant: ParticipantId,
        /// Its identity.
        identity: PublicIdentity,
    },
    /// The call's group moved to a new epoch: its verification code changed.
    Epoch {
        /// The call.
        call: CallRef,
        /// The epoch.
        epoch: u64,
        /// The code every member shows in this epoch.
        verification_code: String,
    },
    /// A group message was refused (forged, stale, not for this device): a security event.
    Failure {
        /// The call.
        call: CallRef,
        /// Why.
        reason: GroupFailure,
    },
    /// Media of a participant was refused (forged, replayed, under a key this device does not
    /// hold): rate-limited, `count` is the running total for that reason. What "I can't hear
    /// Bob" is traced to.
    MediaRejected {
        /// The call.
        call: CallRef,
        /// Whose frames.
        participant: ParticipantId,
        /// Why.
        reason: viska_call::MediaRejection,
        /// Refused for this reason so far.
        count: u64,
    },
    /// This device is no longer in the call (it left or was removed).
    Ended {
        /// The call.
        call: CallRef,
    },
    /// The connection to the relay was lost (relay restart, network drop). The calls are
    /// kept, their media goes nowhere, and the phone reconnects with back-off (100 ms doubling
    /// to 5 s).
    RelayDisconnected,
    /// The phone is connected and authenticated to the relay again, after `attempts`
    /// attempts: the messages the relay held follow, media resumes, and a call this device
    /// lost step with (a message lost with the connection, or the hold time passed) is
    /// recovered by being added back.
    RelayReconnected {
        /// Connection attempts it took, this one included.
        attempts: u32,
    },
}

/// Receives a group phone's events. Called on the phone's own dispatcher thread, one event at
/// a time, never while a lock of the library is held; it must not block. A listener that
/// panics is logged and the phone goes on.
pub trait GroupListener: Send + Sync {
    /// One event.
    fn event(&self, event: GroupCallEvent);
}

enum Dispatch {
    Listener(Arc<dyn GroupListener>),
    Event(GroupCallEvent),
}

/// The dispatcher thread: events in order, to the listener set at the time.
fn spawn_dispatcher() -> Result<std::sync::mpsc::Sender<Dispatch>, std::io::Error> {
    let (tx, rx) = std::sync::mpsc::channel::<Dispatch>();
    std::thread::Builder::new()
        .name("vk-group-events".into())
        .spawn(move || {
            let mut listener: Option<Arc<dyn GroupListener>> = None;
            for item in rx {
                match item {
                    Dispatch::Listener(l) => listener = Some(l),
                    Dispatch::Event(event) => {
                        if let Some(l) = &listener {
                            let l = Arc::clone(l);
                            let run = std::panic::AssertUnwindSafe(move || l.event(event));
                            if std::panic::catch_unwind(run).is_err() {
                                tracing::warn!("a group listener panicked; events go on");
                            }
                        }
                    }
                }
            }
        })?;
    Ok(tx)
}

impl std::fmt::Debug for GroupPhoneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPhoneConfig")
            .field("relay", &self.relay)
            .field("identity", &self.identity.public().fingerprint())
            .finish_non_exhaustive()
    }
}

/// Errors of a group phone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupPhoneError {
    /// The connection to the relay failed or was lost.
    #[error("relay connection: {0}")]
    Transport(#[from] TransportError),
    /// The relay refused a request.
    #[error("the relay refused: {0:?}")]
    Refused(RelayErrorCode),
    /// The relay admits registered devices only and this one is not: connect with
    /// [`GroupPhone::connect_with_login`].
    #[error("the relay requires a login (account, password, one-time code)")]
    LoginRequired,
    /// The login was refused (the relay does not say which part was wrong); a new attempt can
    /// succeed after `retry_after_secs` (0: at once).
    #[error("login refused (retry after {retry_after_secs} s)")]
    LoginFailed {
        /// Seconds of lock-out left.
        retry_after_secs: u32,
    },
    /// The relay broke the protocol.
    #[error("relay protocol: {0}")]
    Protocol(String),
    /// The MLS group refused an operation.
    #[error(transparent)]
    Group(#[from] viska_group::GroupError),
    /// No such call on this phone.
    #[error("no such call")]
    NoSuchCall,
    /// The direct call cannot be moved: it has no authenticated peer, or it could not be hung
    /// up.
    #[error("direct call: {0}")]
    Direct(String),
    /// The phone is closed.
    #[error("the group phone is closed")]
    Closed,
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
}

/// What a group call looks like from this device, updated as it changes.
#[derive(Debug, Clone)]
pub struct GroupCallSnapshot {
    /// The call.
    pub call: CallRef,
    /// The group's epoch (merged) and the one this device sends under.
    pub epoch: Option<u64>,
    /// The epoch this device sends under.
    pub sending_epoch: Option<u64>,
    /// The epoch's verification code, identical at every member.
    pub verification_code: Option<String>,
    /// The members and their identities, this device included.
    pub roster: BTreeMap<ParticipantId, PublicIdentity>,
    /// This device's participant id.
    pub me: Option<ParticipantId>,
    /// The session's media counters (all participants' streams summed).
    pub media: MediaCounters,
    /// Frames received per participant.
    pub received: BTreeMap<ParticipantId, u64>,
    /// How loud each participant was in the last frame played (RMS relative to full scale,
    /// 0 to 1): who is speaking.
    pub levels: BTreeMap<ParticipantId, f32>,
    /// Epoch changes seen.
    pub epochs_seen: u64,
    /// Group messages refused (forged, stale, undecryptable...).
    pub group_failures: u64,
    /// How far the user trusts each member (this device is [`Trust::Verified`]).
    pub trust: BTreeMap<ParticipantId, Trust>,
    /// Members not verified: what every participant is warned of.
    pub unverified: usize,
    /// Media refused per participant and reason (running totals, as last reported).
    pub rejected: HashMap<(ParticipantId, viska_call::MediaRejection), u64>,
    /// Times this device lost step with the group and was added back.
    pub rejoins: u64,
    /// Times this device took the call up from its key store after a restart, in the same
    /// group, without being added back ([`GroupPhone::connect_with_store`]).
    pub resumes: u64,
    /// Whether the call was taken: one this device created, or one it was added to and
    /// [`GroupPhone::accept`]ed. Until then it is held: nothing captured is sent and nothing
    /// received is played.
    pub accepted: bool,
    /// Whether this device left or was removed.
    pub ended: bool,
}

impl GroupCallSnapshot {
    fn new(call: CallRef) -> Self {
        Self {
            call,
            epoch: None,
            sending_epoch: None,
            verification_code: None,
            roster: BTreeMap::new(),
            me: None,
            media: MediaCounters::default(),
            received: BTreeMap::new(),
            levels: BTreeMap::new(),
            epochs_seen: 0,
            group_failures: 0,
            trust: BTreeMap::new(),
            unverified: 0,
            rejoins: 0,
            resumes: 0,
            rejected: HashMap::new(),
            accepted: false,
            ended: false,
        }
    }
}

#[derive(Default)]
struct Shared {
    calls: Mutex<BTreeMap<CallRef, GroupCallSnapshot>>,
    changed: Condvar,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Command {
    Create(
        CallRef,
        std::sync::mpsc::Sender<Result<(), GroupPhoneError>>,
    ),
    Add(CallRef, DeviceKey),
    Remove(CallRef, DeviceKey),
    Leave(CallRef),
    Accept(CallRef),
    /// Testing: drop the next group message from the relay (as if it were lost).
    #[cfg(feature = "testing")]
    DropNextHandshake,
    /// Testing: drop the next commit verdict from the relay, and the connection with it (a
    /// verdict lost with a breaking connection).
    #[cfg(feature = "testing")]
    DropNextVerdict,
    /// Testing: send these bytes as a media frame of the call (after its route).
    #[cfg(feature = "testing")]
    Inject(CallRef, Vec<u8>),
    /// Testing: close the relay connection, and do not reconnect until `ResumeRelay`.
    #[cfg(feature = "testing")]
    DropRelay,
    /// Testing: reconnect to the relay now.
    #[cfg(feature = "testing")]
    ResumeRelay,
    Close,
}

/// A device connected to a relay, in any number of group calls.
pub struct GroupPhone {
    identity: PublicIdentity,
    events: std::sync::mpsc::Sender<Dispatch>,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for GroupPhone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPhone")
            .field("identity", &self.identity.fingerprint())
            .finish_non_exhaustive()
    }
}

impl GroupPhone {
    /// Connects to the relay, pins its certificate, authenticates and publishes key packages;
    /// returns once the relay accepted the device.
    pub fn connect(config: GroupPhoneConfig) -> Result<Self, GroupPhoneError> {
        Self::connect_inner(config, None, None)
    }

    /// [`GroupPhone::connect`] (with `login` as [`GroupPhone::connect_with_login`] when
    /// given) for a device with a key store: the group calls it joins are recorded in
    /// `store`, with their MLS state, each MLS operation in one transaction. The calls it was
    /// in when it last stopped (it crashed, was killed, or was restarted) it takes up again:
    /// it loads each group at the epoch it last merged, hears the others at once (the messages
    /// the relay held for it bring it up to date) and commits an update of its own leaf, so
    /// that it sends again only under a new epoch's keys, never under a key whose counters it
    /// used before it stopped ([`GroupCallSnapshot::resumes`]). Where that cannot be done (no
    /// stored group, a commit it missed, the relay's hold time passed) it says it lost step
    /// (`Rejoin`) and the others take it out and add it back into a new epoch
    /// ([`GroupCallSnapshot::rejoins`]). A call its user had accepted goes on at once,
    /// without asking again; one not accepted yet stays held. See docs/security.md.
    pub fn connect_with_store(
        config: GroupPhoneConfig,
        store: viska_store::Store,
        login: Option<RelayLogin>,
    ) -> Result<Self, GroupPhoneError> {
        Self::connect_inner(config, login, Some(store))
    }

    /// [`GroupPhone::connect`] to a relay that admits registered devices only: if this
    /// device is not registered yet, it logs in as `login`'s account (which registers it), and
    /// from then on authenticates with its key alone.
    pub fn connect_with_login(
        config: GroupPhoneConfig,
        login: RelayLogin,
    ) -> Result<Self, GroupPhoneError> {
        Self::connect_inner(config, Some(login), None)
    }

    fn connect_inner(
        config: GroupPhoneConfig,
        login: Option<RelayLogin>,
        store: Option<viska_store::Store>,
    ) -> Result<Self, GroupPhoneError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("vk-group")
            .build()
            .map_err(TransportError::Io)?;
        let identity = config.identity.public();
        let shared = Arc::new(Shared::default());
        let events = spawn_dispatcher().map_err(TransportError::Io)?;
        let task_events = events.clone();
        let (commands, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vk-group".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match Device::connect(config, login, store, task_shared.clone(), task_events)
                        .await
                    {
                        Ok(device) => {
                            let _ = ready_tx.send(Ok(()));
                            device.run(rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                    task_shared.closed.store(true, Ordering::SeqCst);
                    task_shared.changed.notify_all();
                });
            })
            .map_err(TransportError::Io)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                identity,
                events,
                commands,
                shared,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(GroupPhoneError::Closed),
        }
    }

    /// This device's identity.
    pub fn identity(&self) -> PublicIdentity {
        self.identity
    }

    /// Sets the listener of this phone's events, replacing any previous one; events before
    /// it was set are not replayed (the snapshots hold the state).
    pub fn set_listener(&self, listener: Arc<dyn GroupListener>) {
        let _ = self.events.send(Dispatch::Listener(listener));
    }

    /// Opens a new call with this device alone in it; add others with [`GroupPhone::add`].
    pub fn create_call(&self) -> Result<CallRef, GroupPhoneError> {
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let call = CallRef(id);
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Command::Create(call, tx))?;
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(result) => result.map(|()| call),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(GroupPhoneError::Timeout),
            Err(_) => Err(GroupPhoneError::Closed),
        }
    }

    /// Adds the device `identity` to `call` (its key package is fetched from the relay). The
    /// change shows in the call's roster once the relay ordered the commit.
    pub fn add(&self, call: CallRef, identity: PublicIdentity) -> Result<(), GroupPhoneError> {
        self.send(Command::Add(call, identity.to_bytes()))
    }

    /// Takes a call this device was added to ([`GroupCallEvent::Joined`]): until then the
    /// call is held, so that nobody can add a device to a call and hear its microphone
    /// without its user's consent.
    pub fn accept(&self, call: CallRef) -> Result<(), GroupPhoneError> {
        self.send(Command::Accept(call))
    }

    /// Removes the device `identity` from `call`.
    pub fn remove(&self, call: CallRef, identity: PublicIdentity) -> Result<(), GroupPhoneError> {
        self.send(Command::Remove(call, identity.to_bytes()))
    }

    /// Leaves `call`: the relay stops forwarding to this device at once and a remaining
    /// member commits its removal.
    pub fn leave(&self, call: CallRef) -> Result<(), GroupPhoneError> {
        self.send(Command::Leave(call))
    }

    /// The calls this device is in (or was, until it left).
    pub fn calls(&self) -> Vec<GroupCallSnapshot> {
        lock(&self.shared.calls).values().cloned().collect()
    }

    /// One call's snapshot.
    pub fn snapshot(&self, call: CallRef) -> Option<GroupCallSnapshot> {
        lock(&self.shared.calls).get(&call).cloned()
    }

    /// Waits until `done` holds for this device's calls, or `timeout` passes; returns whether
    /// it held.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&BTreeMap<CallRef, GroupCallSnapshot>) -> bool,
    ) -> bool {
        let end = Instant::now() + timeout;
        let mut calls = lock(&self.shared.calls);
        loop {
            if done(&calls) {
                return true;
            }
            let now = Instant::now();
            if now >= end || self.shared.closed.load(Ordering::SeqCst) {
                return false;
            }
            calls = self
                .shared
                .changed
                .wait_timeout(calls, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn send(&self, command: Command) -> Result<(), GroupPhoneError> {
        self.commands
            .send(command)
            .map_err(|_| GroupPhoneError::Closed)
    }

    /// Turns a running direct call into a conference: opens a group call on the relay, adds
    /// the direct call's peer (the identity its handshake authenticated: a device's identity
    /// key is also its group identity) and `others`. The direct call goes on until
    /// [`GroupPhone::handover`] ends it; the peer's side calls `handover` too when the group
    /// call with this device reaches it ([`GroupCallEvent::Joined`]).
    pub fn escalate(
        &self,
        direct: &crate::CallHandle,
        others: &[PublicIdentity],
    ) -> Result<CallRef, GroupPhoneError> {
        let peer = direct
            .snapshot()
            .peer
            .ok_or_else(|| GroupPhoneError::Direct("no authenticated peer".into()))?;
        let call = self.create_call()?;
        self.add(call, peer)?;
        for other in others {
            self.add(call, *other)?;
        }
        Ok(call)
    }

    /// Moves from a direct call to the group call `call` without a gap: waits until this
    /// device hears the direct call's peer in the group call (its frames are being received
    /// and played), then hangs up the direct call. Until then both carry audio; after it only
    /// the group call does. Gives up after `timeout`, leaving the direct call as it was.
    pub fn handover(
        &self,
        direct: &crate::CallHandle,
        call: CallRef,
        timeout: Duration,
    ) -> Result<(), GroupPhoneError> {
        let peer = direct
            .snapshot()
            .peer
            .ok_or_else(|| GroupPhoneError::Direct("no authenticated peer".into()))?;
        // Moving the call is the user's consent to the group call.
        self.accept(call)?;
        let heard = self.wait_for(timeout, |calls| {
            calls.get(&call).is_some_and(|c| {
                !c.ended
                    && c.sending_epoch == c.epoch
                    && c.roster
                        .iter()
                        .any(|(p, id)| *id == peer && c.received.get(p).is_some_and(|&n| n > 0))
            })
        });
        if !heard {
            return Err(GroupPhoneError::Timeout);
        }
        match direct.hangup() {
            Ok(()) => Ok(()),
            // The peer handed over first and its hang-up ended the call: done as well.
            // (Its handle may learn of the end a moment after its driver refused the hang-up.)
            Err(_) if direct.wait_ended(Duration::from_secs(2)) => Ok(()),
            Err(e) => Err(GroupPhoneError::Direct(e.to_string())),
        }
    }

    /// Testing: the next group message from the relay is dropped, as if lost (this device
    /// then falls out of step with its group and must be added back).
    #[cfg(feature = "testing")]
    pub fn drop_next_handshake(&self) -> Result<(), GroupPhoneError> {
        self.send(Command::DropNextHandshake)
    }

    /// Testing: the next verdict on a commit of this device is lost, together with the
    /// connection it came on (the device reconnects as after any loss).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn drop_next_verdict(&self) -> Result<(), GroupPhoneError> {
        self.send(Command::DropNextVerdict)
    }

    /// Testing: sends `frame` to the relay as a media frame of `call` (a forgery, a replay).
    #[cfg(feature = "testing")]
    pub fn inject(&self, call: CallRef, frame: Vec<u8>) -> Result<(), GroupPhoneError> {
        self.send(Command::Inject(call, frame))
    }

    /// Testing: closes the connection to the relay (as a network drop would) and holds back
    /// reconnecting until [`GroupPhone::reconnect_relay`].
    #[cfg(feature = "testing")]
    pub fn drop_relay_connection(&self) -> Result<(), GroupPhoneError> {
        self.send(Command::DropRelay)
    }

    /// Testing: reconnects to the relay now (after [`GroupPhone::drop_relay_connection`]).
    #[cfg(feature = "testing")]
    pub fn reconnect_relay(&self) -> Result<(), GroupPhoneError> {
        self.send(Command::ResumeRelay)
    }

    /// Leaves every call and closes the connection.
    pub fn close(mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupPhone {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A membership change this device is committing.
#[derive(Clone, Copy)]
enum Change {
    Add(DeviceKey),
    Remove(DeviceKey),
}

impl Change {
    fn command(self, call: CallRef) -> Command {
        match self {
            Self::Add(id) => Command::Add(call, id),
            Self::Remove(id) => Command::Remove(call, id),
        }
    }
}

/// A member of one call's group, its MLS state in the device's store (or an in-memory one).
type Member = GroupMember<viska_store::Store>;

/// How long a member resumed from its store waits, after its update was refused, for the
/// commit that won the epoch before it asks to be added back: the winner was lost with the
/// connection of its earlier run.
const RESUME_WAIT: Duration = Duration::from_secs(3);

/// A call taken up from the store after a restart, until the member sends again.
#[derive(Debug, Clone, Copy, Default)]
struct Resume {
    /// Its update was refused at this epoch and nothing moved the group on since: it waits
    /// for the winner until the instant, then asks to be added back.
    refused: Option<(u64, Instant)>,
}

/// Commits an update of our own leaf in `ctx`'s group (a new epoch whose keys nobody used
/// yet): queues the commit in `out` and marks the call committing. `what` names the reason
/// in the log when openmls refuses. Returns whether a commit went out.
fn commit_update(
    call: CallRef,
    ctx: &mut CallCtx,
    out: &mut Vec<RelayMessage>,
    what: &'static str,
) -> bool {
    match ctx.member.update() {
        Ok(commit) => {
            ctx.committing = true;
            ctx.in_flight = None;
            out.push(RelayMessage::Commit {
                call,
                epoch: commit.epoch.0,
                commit: commit.commit,
                welcome: None,
                added: Vec::new(),
                removed: Vec::new(),
            });
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, what, "update not committed");
            false
        }
    }
}

/// One call on this device.
struct CallCtx {
    member: Member,
    session: Session,
    route: u32,
    source: Option<Box<dyn AudioSource>>,
    sink: Option<Box<dyn AudioSink>>,
    pcm: Vec<i16>,
    deadline: Instant,
    /// A commit of ours waits for the relay's verdict.
    committing: bool,
    /// Adds and removes waiting for our pending commit to be decided.
    queued: VecDeque<Command>,
    /// What our pending commit does: tried again if another commit wins the epoch.
    in_flight: Option<Change>,
    /// The user took the call (a call this device was added to waits, held, until then).
    accepted: bool,
    /// Devices the relay says are gone (or asked to be added back) that are still in the
    /// roster: the first member not among them commits their removal, whenever the group
    /// changes, until none is left (a remover that leaves itself is replaced by the next).
    departed: std::collections::BTreeSet<DeviceKey>,
    /// Devices to add back once removed (they lost step with the group).
    readd: std::collections::BTreeSet<DeviceKey>,
    /// Members the relay said were gone: one that comes back may be added back (`Readd`).
    former: std::collections::BTreeSet<DeviceKey>,
    /// Taken up from the store after a restart, not sending yet.
    resume: Option<Resume>,
    /// Our pending commit as written to the relay: its SHA-256 and the connection it went on.
    commit_sent: Option<([u8; 32], u64)>,
    snapshot: GroupCallSnapshot,
}

/// A reconnection attempt under way.
type Attempt = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Link, GroupPhoneError>>>>;

struct Device {
    config: GroupPhoneConfig,
    /// The authenticated connection to the relay; none while reconnecting.
    link: Option<Link>,
    /// A reconnection under way.
    attempt: Option<Attempt>,
    /// When the next reconnection starts (while there is neither a link nor an attempt).
    next_attempt: Option<Instant>,
    /// The wait before the next attempt after this one fails.
    backoff: Duration,
    /// Failed attempts since the connection was lost.
    attempts: u32,
    /// Control messages made while there was no link: sent, in order, once there is one.
    unsent: Vec<RelayMessage>,
    /// Testing: reconnection held back until asked.
    #[cfg(feature = "testing")]
    paused: bool,
    /// The member whose key packages are published: it becomes the member of the next call
    /// this device is added to.
    lobby: Member,
    calls: HashMap<CallRef, CallCtx>,
    routes: HashMap<u32, CallRef>,
    /// Creations waiting for `CallOpened`.
    creating: HashMap<CallRef, (Member, std::sync::mpsc::Sender<Result<(), GroupPhoneError>>)>,
    /// Key-package fetches: request id -> the call and device to add.
    fetching: HashMap<u32, (CallRef, DeviceKey)>,
    /// Fetches answered with no package, to be asked again at the instant.
    refetch: Vec<(Instant, CallRef, DeviceKey)>,
    /// How often each of those was asked already.
    fetch_tries: HashMap<(CallRef, DeviceKey), u32>,
    next_request: u32,
    shared: Arc<Shared>,
    events: std::sync::mpsc::Sender<Dispatch>,
    out: Vec<u8>,
    /// Calls this device asked to be added back to, with how often.
    rejoins: HashMap<CallRef, u64>,
    /// Of those, the calls the user had not accepted yet: added back, they stay held.
    rejoins_held: std::collections::HashSet<CallRef>,
    /// When the snapshots are next rebuilt for media alone.
    next_snapshot: Instant,
    /// Where the calls this device is in are recorded, if it has a store.
    store: Option<viska_store::Store>,
    /// Where its members' MLS state is: the store, or one in memory.
    mls: viska_store::Store,
    /// The connection to the relay now: one more at every reconnection. A commit written on
    /// an earlier one may have lost its verdict with it (`CallStatus`).
    link_gen: u64,
    #[cfg(feature = "testing")]
    drop_next_handshake: bool,
    #[cfg(feature = "testing")]
    drop_next_verdict: bool,
}

fn io_error(e: impl std::fmt::Display) -> GroupPhoneError {
    GroupPhoneError::Protocol(e.to_string())
}

/// First wait before reconnecting to the relay; it doubles after every failed attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long one connection attempt (QUIC handshake, challenge, `Auth`) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// QUIC keep-alive towards the relay.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A relay that sends nothing for this long is taken for lost (and reconnected to): well
/// within the relay's hold time (30 s by default), so a device that lost its network comes
/// back as the same member.
const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most control messages kept while there is no link; beyond that the oldest go (the calls
/// then find themselves out of step and rejoin).
const MAX_UNSENT: usize = 1024;

/// One authenticated connection to the relay.
struct Link {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: RelayDecoder,
}

impl Link {
    /// Connects (a fresh UDP socket each time: the network may have changed), pins the
    /// relay's certificate and authenticates.
    async fn dial(
        relay: SocketAddr,
        fingerprint: [u8; 32],
        identity: IdentityKeyPair,
        login: Option<RelayLogin>,
    ) -> Result<Self, GroupPhoneError> {
        let runtime = PromptRuntime::current().ok_or(TransportError::NoRuntime)?;
        let bind: SocketAddr = if relay.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = std::net::UdpSocket::bind(bind).map_err(TransportError::Io)?;
        let socket =
            quinn::Runtime::wrap_udp_socket(&*runtime, socket).map_err(TransportError::Io)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            runtime,
        )
        .map_err(TransportError::Io)?;
        let tls = crate::transport::tls::relay_client_config(fingerprint)?;
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        transport.max_idle_timeout(
            quinn::IdleTimeout::try_from(RELAY_IDLE_TIMEOUT)
                .map_err(|e| TransportError::Tls(e.to_string()))
                .ok(),
        );
        client.transport_config(Arc::new(transport));
        let conn = endpoint
            .connect_with(client, relay, "viska-relay.invalid")
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .await
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        // The relay opens the control stream and speaks first (its challenge).
        let (send, recv) = conn.accept_bi().await.map_err(io_error)?;
        let mut link = Self {
            endpoint,
            conn,
            send,
            recv,
            decoder: RelayDecoder::new(),
        };
        link.authenticate(&identity, login.as_ref()).await?;
        Ok(link)
    }

    /// [`Link::dial`] within [`DIAL_TIMEOUT`].
    async fn dial_bounded(
        relay: SocketAddr,
        fingerprint: [u8; 32],
        identity: IdentityKeyPair,
        login: Option<RelayLogin>,
    ) -> Result<Self, GroupPhoneError> {
        tokio::time::timeout(
            DIAL_TIMEOUT,
            Self::dial(relay, fingerprint, identity, login),
        )
        .await
        .unwrap_or(Err(GroupPhoneError::Timeout))
    }

    async fn read_message(&mut self) -> Result<RelayMessage, GroupPhoneError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.next_message().map_err(io_error)? {
                return Ok(m);
            }
            match self.recv.read(&mut buf).await.map_err(io_error)? {
                Some(n) => self.decoder.push(&buf[..n]),
                None => return Err(GroupPhoneError::Protocol("relay closed the stream".into())),
            }
        }
    }

    async fn write(&mut self, message: &RelayMessage) -> Result<(), GroupPhoneError> {
        let frame = message.encode().map_err(io_error)?;
        self.send.write_all(&frame).await.map_err(io_error)
    }

    async fn authenticate(
        &mut self,
        identity: &IdentityKeyPair,
        login: Option<&RelayLogin>,
    ) -> Result<(), GroupPhoneError> {
        let RelayMessage::Challenge { nonce } = self.read_message().await? else {
            return Err(GroupPhoneError::Protocol("expected a challenge".into()));
        };
        let mut exporter = [0u8; 32];
        self.conn
            .export_keying_material(&mut exporter, AUTH_EXPORTER_LABEL, b"")
            .map_err(|_| GroupPhoneError::Protocol("no TLS exporter".into()))?;
        let signature = identity.sign(&auth_transcript(&exporter, &nonce));
        let auth = RelayMessage::Auth {
            identity: identity.public().to_bytes(),
            signature,
        };
        self.write(&auth).await?;
        let mut answer = self.read_message().await?;
        if answer == RelayMessage::LoginRequired {
            let login = login.ok_or(GroupPhoneError::LoginRequired)?;
            self.write(&RelayMessage::Login {
                account: login.account.clone(),
                password: login.password.clone(),
                code: login.code.clone(),
            })
            .await?;
            answer = self.read_message().await?;
        }
        match answer {
            RelayMessage::AuthOk => Ok(()),
            RelayMessage::LoginFailed { retry_after_secs } => {
                Err(GroupPhoneError::LoginFailed { retry_after_secs })
            }
            RelayMessage::Error {
                code: RelayErrorCode::LoginRequired,
                ..
            } => Err(GroupPhoneError::LoginRequired),
            RelayMessage::Error { code, .. } => Err(GroupPhoneError::Refused(code)),
            other => Err(GroupPhoneError::Protocol(format!(
                "expected AuthOk, got {other:?}"
            ))),
        }
    }
}

/// Reads from the link, or waits forever without one.
async fn read_link(
    link: &mut Option<Link>,
    buf: &mut [u8],
) -> Result<Option<usize>, quinn::ReadError> {
    match link.as_mut() {
        Some(link) => link.recv.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The reconnection attempt's outcome, or waits forever without one.
async fn run_attempt(attempt: &mut Option<Attempt>) -> Result<Link, GroupPhoneError> {
    match attempt.as_mut() {
        Some(a) => a.await,
        None => std::future::pending().await,
    }
}

/// A datagram from the connection, or waits forever without one.
async fn read_datagram(conn: Option<&quinn::Connection>) -> Result<Bytes, quinn::ConnectionError> {
    match conn {
        Some(c) => c.read_datagram().await,
        None => std::future::pending().await,
    }
}

impl Device {
    async fn connect(
        config: GroupPhoneConfig,
        login: Option<RelayLogin>,
        store: Option<viska_store::Store>,
        shared: Arc<Shared>,
        events: std::sync::mpsc::Sender<Dispatch>,
    ) -> Result<Self, GroupPhoneError> {
        // The login serves the first connection only: it registers the device, whose key
        // alone authenticates it from then on.
        let link = Link::dial_bounded(
            config.relay,
            config.relay_fingerprint,
            config.identity.clone(),
            login,
        )
        .await?;
        let mls = match &store {
            Some(store) => store.clone(),
            None => viska_store::Store::in_memory().map_err(|e| {
                GroupPhoneError::Group(viska_group::GroupError::Storage(e.to_string()))
            })?,
        };
        let lobby =
            GroupMember::with_storage(config.identity.clone(), config.group.clone(), mls.clone())?;
        let mut device = Self {
            config,
            link: Some(link),
            attempt: None,
            next_attempt: None,
            backoff: BACKOFF_MIN,
            attempts: 0,
            unsent: Vec::new(),
            #[cfg(feature = "testing")]
            paused: false,
            lobby,
            calls: HashMap::new(),
            routes: HashMap::new(),
            creating: HashMap::new(),
            fetching: HashMap::new(),
            refetch: Vec::new(),
            fetch_tries: HashMap::new(),
            next_request: 1,
            shared,
            events,
            out: Vec::new(),
            rejoins: HashMap::new(),
            rejoins_held: std::collections::HashSet::new(),
            next_snapshot: Instant::now(),
            store,
            mls,
            link_gen: 1,
            #[cfg(feature = "testing")]
            drop_next_handshake: false,
            #[cfg(feature = "testing")]
            drop_next_verdict: false,
        };
        device.publish().await?;
        Ok(device)
    }

    async fn write(&mut self, message: &RelayMessage) -> Result<(), GroupPhoneError> {
        match self.link.as_mut() {
            Some(link) => link.write(message).await,
            None => Err(GroupPhoneError::Protocol("not connected".into())),
        }
    }

    /// Messages the link's decoder holds already (they came with the bytes before them).
    fn drain_decoder(&mut self, out: &mut Vec<RelayMessage>) -> bool {
        let mut messages = Vec::new();
        let mut broken = false;
        if let Some(link) = self.link.as_mut() {
            loop {
                match link.decoder.next_message() {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => break,
                    Err(e) if link.decoder.has_failed() => {
                        tracing::warn!(error = %e, "relay stream broken");
                        broken = true;
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "relay message refused"),
                }
            }
        }
        for m in messages {
            self.on_message(m, out);
        }
        !broken
    }

    /// The connection to the relay is gone: the calls stay (their media goes nowhere) and a
    /// reconnection is due after the back-off.
    fn lose_link(&mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        link.conn.close(0u32.into(), b"lost");
        self.fetching_lost();
        self.backoff = BACKOFF_MIN;
        self.attempts = 0;
        self.next_attempt = Some(Instant::now() + self.backoff);
        tracing::warn!("relay connection lost; reconnecting");
        let _ = self
            .events
            .send(Dispatch::Event(GroupCallEvent::RelayDisconnected));
    }

    /// Key-package requests in flight on a lost connection are asked again on the next one
    /// (their answers may be lost with it; a duplicate answer is ignored).
    fn fetching_lost(&mut self) {
        for (request, (_, identity)) in &self.fetching {
            self.unsent.push(RelayMessage::FetchKeyPackage {
                request: *request,
                identity: *identity,
            });
        }
    }

    /// Starts a reconnection attempt if one is due.
    fn maybe_attempt(&mut self, now: Instant) {
        #[cfg(feature = "testing")]
        if self.paused {
            return;
        }
        if self.link.is_some() || self.attempt.is_some() {
            return;
        }
        if self.next_attempt.is_some_and(|at| at <= now) {
            self.next_attempt = None;
            self.attempt = Some(Box::pin(Link::dial_bounded(
                self.config.relay,
                self.config.relay_fingerprint,
                self.config.identity.clone(),
                None,
            )));
        }
    }

    /// A reconnection attempt ended.
    fn attempted(&mut self, result: Result<Link, GroupPhoneError>, out: &mut Vec<RelayMessage>) {
        self.attempt = None;
        match result {
            Ok(link) => {
                tracing::info!(attempts = self.attempts + 1, "relay reconnected");
                self.link = Some(link);
                self.link_gen += 1;
                let attempts = std::mem::take(&mut self.attempts) + 1;
                self.backoff = BACKOFF_MIN;
                let _ = self
                    .events
                    .send(Dispatch::Event(GroupCallEvent::RelayReconnected {
                        attempts,
                    }));
                // What was made offline goes first, then what the relay held for this device
                // (already in the decoder) is taken.
                out.append(&mut self.unsent);
                if !self.drain_decoder(out) {
                    self.lose_link();
                }
            }
            Err(e) => {
                self.attempts += 1;
                tracing::debug!(error = %e, attempts = self.attempts, "relay reconnection failed");
                self.next_attempt = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Sends `outgoing` on the link, or keeps it for the next one.
    async fn flush(&mut self, outgoing: Vec<RelayMessage>) {
        let mut rest = outgoing.into_iter();
        if self.link.is_some() {
            for m in rest.by_ref() {
                if let Err(e) = self.write(&m).await {
                    tracing::warn!(error = %e, "relay write failed");
                    self.unsent.push(m);
                    self.lose_link();
                    break;
                }
                if let RelayMessage::Commit { call, commit, .. } = &m {
                    if let Some(ctx) = self.calls.get_mut(call) {
                        ctx.commit_sent = Some((Sha256::digest(commit).into(), self.link_gen));
                    }
                }
            }
        }
        self.unsent.extend(rest);
        if self.unsent.len() > MAX_UNSENT {
            let excess = self.unsent.len() - MAX_UNSENT;
            self.unsent.drain(..excess);
        }
    }

    /// Publishes a fresh set of key packages from the lobby member (replacing those held).
    async fn publish(&mut self) -> Result<(), GroupPhoneError> {
        let mut packages = Vec::with_capacity(KEY_PACKAGES);
        for _ in 0..KEY_PACKAGES {
            packages.push(self.lobby.key_package(false)?);
        }
        let last_resort = Some(self.lobby.key_package(true)?);
        self.write(&RelayMessage::PublishKeyPackages {
            packages,
            last_resort,
        })
        .await
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 16 * 1024];
        // Held messages that came with the AuthOk.
        let mut first = Vec::new();
        // Read before them: a call the relay took this device out of while it was away (its
        // held `Removed`) is still asked back into.
        let recorded = self
            .store
            .as_ref()
            .map(memberships::load)
            .unwrap_or_default();
        // Calls whose MLS state the store holds are taken up before the held messages, which
        // bring them up to the group's epoch; the others are asked back into below.
        let recorded = self.resume_stored(recorded);
        if !self.drain_decoder(&mut first) {
            self.lose_link();
        }
        self.resume_recorded(recorded, &mut first);
        self.pump_all(&mut first, true);
        self.flush(first).await;
        loop {
            let mut deadline = self
                .calls
                .values()
                .flat_map(|c| {
                    [
                        Some(c.deadline),
                        c.member.next_timeout(),
                        c.resume.and_then(|r| r.refused).map(|(_, at)| at),
                    ]
                })
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            if let Some(at) = self.refetch.iter().map(|r| r.0).min() {
                deadline = deadline.min(at);
            }
            if self.link.is_none() && self.attempt.is_none() {
                if let Some(at) = self.next_attempt {
                    deadline = deadline.min(at);
                }
            }
            let conn = self.link.as_ref().map(|l| l.conn.clone());
            let mut outgoing: Vec<RelayMessage> = Vec::new();
            // Media alone (datagrams, frame timers) does not rebuild the snapshots each time.
            let mut changed = true;
            tokio::select! {
                read = read_link(&mut self.link, &mut buf) => match read {
                    Ok(Some(n)) => {
                        if let Some(link) = self.link.as_mut() {
                            link.decoder.push(&buf[..n]);
                        }
                        if !self.drain_decoder(&mut outgoing) {
                            self.lose_link();
                        }
                    }
                    Ok(None) | Err(_) => self.lose_link(),
                },
                datagram = read_datagram(conn.as_ref()) => match datagram {
                    Ok(d) => {
                        changed = false;
                        self.on_datagram(&d);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "relay connection closed");
                        self.lose_link();
                    }
                },
                result = run_attempt(&mut self.attempt) => self.attempted(result, &mut outgoing),
                command = commands.recv() => match command {
                    Some(Command::Close) | None => {
                        for call in self.calls.keys().copied().collect::<Vec<_>>() {
                            self.forget_membership(&call);
                            outgoing.push(RelayMessage::Leave { call });
                        }
                        if let Some(link) = self.link.as_mut() {
                            for m in &outgoing {
                                let _ = link.write(m).await;
                            }
                            let _ = link.send.finish();
                            // The leaves reach the relay before the connection goes (closing
                            // discards what is not delivered yet).
                            let _ =
                                tokio::time::timeout(Duration::from_secs(2), link.send.stopped())
                                    .await;
                        }
                        self.shutdown().await;
                        // Left: their groups' state goes from the store.
                        for (_, ctx) in self.calls.drain() {
                            ctx.member.discard();
                        }
                        return;
                    }
                    Some(command) => self.on_command(command, &mut outgoing),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    changed = false;
                    for ctx in self.calls.values_mut() {
                        if ctx.member.next_timeout().is_some_and(|t| t <= now) {
                            ctx.member.handle_timeout(now);
                            changed = true;
                        }
                        if ctx.deadline <= now {
                            let _ = ctx.session.handle_input(Input::Timeout(now));
                        }
                    }
                    // A resumed member that waited in vain for the commit that beat its
                    // update: it missed it, and asks to be added back.
                    let stuck: Vec<CallRef> = self
                        .calls
                        .iter()
                        .filter(|(_, c)| {
                            c.resume.and_then(|r| r.refused).is_some_and(|(epoch, at)| {
                                at <= now && c.member.epoch().map(|e| e.0) == Some(epoch)
                            })
                        })
                        .map(|(call, _)| *call)
                        .collect();
                    for call in stuck {
                        changed = true;
                        self.rejoin(call, &mut outgoing);
                    }
                    self.refetch_due(now, &mut outgoing);
                    self.maybe_attempt(now);
                }
            }
            self.pump_all(&mut outgoing, changed);
            self.flush(outgoing).await;
        }
    }

    async fn shutdown(&mut self) {
        for ctx in self.calls.values_mut() {
            if let Some(sink) = ctx.sink.as_mut() {
                let _ = sink.finish();
            }
            ctx.snapshot.ended = true;
        }
        self.publish_snapshots();
        if let Some(link) = self.link.take() {
            link.conn.close(0u32.into(), b"bye");
            let _ = tokio::time::timeout(Duration::from_secs(1), link.endpoint.wait_idle()).await;
        }
    }

    fn on_command(&mut self, command: Command, outgoing: &mut Vec<RelayMessage>) {
        match command {
            Command::Create(call, reply) => {
                let member = match self.new_member() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return;
                    }
                };
                self.creating.insert(call, (member, reply));
                outgoing.push(RelayMessage::CreateCall { call });
            }
            Command::Add(call, identity) => {
                let Some(ctx) = self.calls.get_mut(&call) else {
                    return;
                };
                if ctx.committing {
                    ctx.queued.push_back(Command::Add(call, identity));
                    return;
                }
                let request = self.next_request;
                self.next_request = self.next_request.wrapping_add(1);
                self.fetching.insert(request, (call, identity));
                ctx.committing = true;
                ctx.in_flight = Some(Change::Add(identity));
                outgoing.push(RelayMessage::FetchKeyPackage { request, identity });
            }
            Command::Remove(call, identity) => self.commit_removal(call, identity, outgoing),
            Command::Accept(call) => {
                if let Some(ctx) = self.calls.get_mut(&call) {
                    if !ctx.accepted {
                        ctx.accepted = true;
                        ctx.snapshot.accepted = true;
                        if let Some(store) = &self.store {
                            memberships::record(store, &call, true, ctx.route);
                        }
                        let now = Instant::now();
                        let _ = ctx
                            .session
                            .handle_input(Input::Command(now, viska_call::Command::Resume));
                    }
                }
            }
            Command::Leave(call) => {
                self.end_call(call);
                outgoing.push(RelayMessage::Leave { call });
            }
            #[cfg(feature = "testing")]
            Command::DropNextHandshake => self.drop_next_handshake = true,
            #[cfg(feature = "testing")]
            Command::DropNextVerdict => self.drop_next_verdict = true,
            #[cfg(feature = "testing")]
            Command::Inject(call, frame) => {
                if let Some(ctx) = self.calls.get(&call) {
                    let mut datagram = Vec::new();
                    if encode_route(ctx.route, &mut datagram).is_ok() {
                        datagram.extend_from_slice(&frame);
                        if let Some(link) = &self.link {
                            let _ = link.conn.send_datagram(Bytes::from(datagram));
                        }
                    }
                }
            }
            #[cfg(feature = "testing")]
            Command::DropRelay => {
                self.lose_link();
                self.paused = true;
            }
            #[cfg(feature = "testing")]
            Command::ResumeRelay => {
                self.paused = false;
                self.next_attempt = Some(Instant::now());
                self.maybe_attempt(Instant::now());
            }
            Command::Close => {}
        }
    }

    /// This device lost step with `call`'s group: it asks the relay to take it out and have
    /// it added back, and forgets the call until its new Welcome.
    fn rejoin(&mut self, call: CallRef, out: &mut Vec<RelayMessage>) {
        let Some(mut ctx) = self.take_call(call) else {
            return;
        };
        tracing::warn!("out of step with a group call; asking to be added back");
        // What the member reported on its way out (a forged commit, a missed one) still
        // reaches the application.
        while let Some(output) = ctx.member.poll_output() {
            if let GroupOutput::Event(GroupEvent::Failure { reason }) = output {
                ctx.snapshot.group_failures += 1;
                let _ = self
                    .events
                    .send(Dispatch::Event(GroupCallEvent::Failure { call, reason }));
            }
        }
        ctx.snapshot.rejoins += 1;
        self.rejoins.insert(call, ctx.snapshot.rejoins);
        if ctx.accepted {
            self.rejoins_held.remove(&call);
        } else {
            self.rejoins_held.insert(call);
        }
        self.publish_one(&ctx.snapshot);
        // Its stored group is of no use any more: the Welcome brings the new one.
        ctx.member.discard();
        out.push(RelayMessage::Rejoin { call });
    }

    /// Takes up the recorded calls whose group the store holds ([`GroupMember::resume`]):
    /// the device hears them again at once and commits an update (`sweep`) to send again
    /// under a new epoch. Returns the others.
    fn resume_stored(
        &mut self,
        recorded: Vec<memberships::Membership>,
    ) -> Vec<memberships::Membership> {
        let now = Instant::now();
        let mut rest = Vec::new();
        for m in recorded {
            let Some(route) = m.route else {
                rest.push(m);
                continue;
            };
            let mut member = match self.new_member() {
                Ok(member) => member,
                Err(e) => {
                    tracing::warn!(error = %e, "no member to resume a call");
                    rest.push(m);
                    continue;
                }
            };
            match member.resume(now, &m.call.0) {
                Ok(true) => {}
                Ok(false) => {
                    rest.push(m);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a stored group did not load; asking back in");
                    member.discard();
                    rest.push(m);
                    continue;
                }
            }
            tracing::info!(
                accepted = m.accepted,
                "in a group call before the restart; resuming it from the store"
            );
            if let Err(e) = self.open_call(m.call, route, member, m.accepted) {
                tracing::warn!(error = %e, "a resumed call was not opened");
                continue;
            }
            if let Some(ctx) = self.calls.get_mut(&m.call) {
                ctx.resume = Some(Resume::default());
                ctx.snapshot.resumes += 1;
            }
        }
        rest
    }

    /// The calls the store says this device was in when it last stopped, and that it holds
    /// nothing of now (a restart): it asks to be added back to each, like a member that lost
    /// step. One its user had accepted goes on once added back; one not accepted stays held.
    fn resume_recorded(
        &mut self,
        recorded: Vec<memberships::Membership>,
        out: &mut Vec<RelayMessage>,
    ) {
        for m in recorded {
            if self.calls.contains_key(&m.call) || self.rejoins.contains_key(&m.call) {
                continue;
            }
            tracing::info!(
                accepted = m.accepted,
                "in a group call before the restart; asking to be added back"
            );
            self.rejoins.insert(m.call, 1);
            if !m.accepted {
                self.rejoins_held.insert(m.call);
            }
            out.push(RelayMessage::Rejoin { call: m.call });
        }
    }

    /// Removes the store's record of `call` (this device is out of it).
    fn forget_membership(&self, call: &CallRef) {
        if let Some(store) = &self.store {
            memberships::forget(store, call);
        }
    }

    /// The relay refused to have this device added back to `call`: it is out.
    fn rejoin_refused(&mut self, call: CallRef) {
        self.forget_membership(&call);
        self.rejoins.remove(&call);
        self.rejoins_held.remove(&call);
        let snapshot = lock(&self.shared.calls).get(&call).cloned();
        if let Some(mut snapshot) = snapshot.filter(|s| !s.ended) {
            snapshot.ended = true;
            let _ = self
                .events
                .send(Dispatch::Event(GroupCallEvent::Ended { call }));
            self.publish_one(&snapshot);
        }
    }

    /// Takes `call` off this device: its route, its session hung up, its recording flushed.
    fn take_call(&mut self, call: CallRef) -> Option<CallCtx> {
        let mut ctx = self.calls.remove(&call)?;
        self.routes.remove(&ctx.route);
        let _ = ctx
            .session
            .handle_input(Input::Command(Instant::now(), viska_call::Command::Hangup));
        if let Some(sink) = ctx.sink.as_mut() {
            let _ = sink.finish();
        }
        Some(ctx)
    }

    /// This device is out of `call` (it left, or was removed): the application is told.
    fn end_call(&mut self, call: CallRef) {
        // A call this device is out of is never taken back without its user: a Welcome into
        // it later is held like any other.
        self.rejoins.remove(&call);
        self.rejoins_held.remove(&call);
        self.forget_membership(&call);
        if let Some(mut ctx) = self.take_call(call) {
            ctx.snapshot.ended = true;
            let _ = self
                .events
                .send(Dispatch::Event(GroupCallEvent::Ended { call }));
            self.publish_one(&ctx.snapshot);
            ctx.member.discard();
        }
    }

    fn publish_one(&self, snapshot: &GroupCallSnapshot) {
        lock(&self.shared.calls).insert(snapshot.call, snapshot.clone());
        self.shared.changed.notify_all();
    }

    /// Departed members still in the roster are removed, and devices that asked to be added
    /// back are added once out: by the first member that is not departed, one commit at a
    /// time, again after every change until nothing is left to do.
    fn sweep(&mut self, call: CallRef, out: &mut Vec<RelayMessage>) {
        let Some(ctx) = self.calls.get_mut(&call) else {
            return;
        };
        if ctx.committing {
            return;
        }
        if ctx.resume.is_some() {
            if !ctx.member.resumed_silent() {
                // A new epoch gave it a send key: it sends again once the call switches.
                ctx.resume = None;
            } else {
                let epoch = ctx.member.epoch().map(|e| e.0);
                let waiting = ctx
                    .resume
                    .and_then(|r| r.refused)
                    .is_some_and(|(at, _)| Some(at) == epoch);
                // Its own update moves the group to an epoch with keys it never used.
                if !waiting && commit_update(call, ctx, out, "resumed call's update") {
                    ctx.resume = Some(Resume::default());
                }
                return;
            }
        }
        let roster = ctx.member.roster();
        let present = |id: &DeviceKey| roster.values().any(|r| r.to_bytes() == *id);
        ctx.departed.retain(|id| present(id));
        // Added back (by whoever did it) and not departed again: done.
        let departed = &ctx.departed;
        ctx.readd.retain(|id| !present(id) || departed.contains(id));
        let me = ctx.member.own_participant();
        let remover = roster
            .iter()
            .find(|(_, id)| !ctx.departed.contains(&id.to_bytes()))
            .map(|(p, _)| *p);
        if me.is_none() || me != remover {
            return;
        }
        if let Some(id) = ctx.departed.iter().next().copied() {
            self.commit_removal(call, id, out);
        } else if let Some(id) = ctx.readd.iter().find(|id| !present(id)).copied() {
            ctx.readd.remove(&id);
            self.on_command(Command::Add(call, id), out);
        }
    }

    /// Our pending change is decided (or could not be made): run the queued ones until one is
    /// committing. A change whose commit lost the epoch (`retry`) goes first again.
    fn commit_done(&mut self, call: CallRef, retry: bool, out: &mut Vec<RelayMessage>) {
        let Some(ctx) = self.calls.get_mut(&call) else {
            return;
        };
        ctx.committing = false;
        if let (true, Some(change)) = (retry, ctx.in_flight.take()) {
            ctx.queued.push_front(change.command(call));
        }
        ctx.in_flight = None;
        loop {
            let Some(ctx) = self.calls.get_mut(&call) else {
                return;
            };
            if ctx.committing {
                return;
            }
            let Some(next) = ctx.queued.pop_front() else {
                return;
            };
            self.on_command(next, out);
        }
    }

    fn commit_removal(&mut self, call: CallRef, identity: DeviceKey, out: &mut Vec<RelayMessage>) {
        let Some(ctx) = self.calls.get_mut(&call) else {
            return;
        };
        if ctx.committing {
            ctx.queued.push_back(Command::Remove(call, identity));
            return;
        }
        let leaves: Vec<ParticipantId> = ctx
            .member
            .roster()
            .iter()
            .filter(|(_, id)| id.to_bytes() == identity)
            .map(|(p, _)| *p)
            .collect();
        if leaves.is_empty() {
            return;
        }
        match ctx.member.remove(&leaves) {
            Ok(commit) => {
                ctx.committing = true;
                ctx.in_flight = Some(Change::Remove(identity));
                out.push(RelayMessage::Commit {
                    call,
                    epoch: commit.epoch.0,
                    commit: commit.commit,
                    welcome: commit.welcome,
                    added: Vec::new(),
                    removed: vec![identity],
                });
            }
            Err(e) => tracing::warn!(error = %e, "removal not committed"),
        }
    }

    /// Fetches whose retry is due are asked again.
    fn refetch_due(&mut self, now: Instant, out: &mut Vec<RelayMessage>) {
        let (due, later) = std::mem::take(&mut self.refetch)
            .into_iter()
            .partition(|r| r.0 <= now);
        self.refetch = later;
        for (_, call, identity) in due {
            if !self.calls.contains_key(&call) {
                self.fetch_tries.remove(&(call, identity));
                continue;
            }
            let request = self.next_request;
            self.next_request = self.next_request.wrapping_add(1);
            self.fetching.insert(request, (call, identity));
            out.push(RelayMessage::FetchKeyPackage { request, identity });
        }
    }

    /// Where the relay says `call` stands, after the messages it held for this device
    /// (protocol-relay.md §4.7): a commit of ours written on an earlier connection whose
    /// verdict never came is settled by it, and a member behind the call's epoch (it lost a
    /// commit with an earlier connection) asks to be added back at once.
    fn call_status(
        &mut self,
        call: CallRef,
        epoch: u64,
        last_commit: Option<[u8; 32]>,
        out: &mut Vec<RelayMessage>,
    ) {
        let now = Instant::now();
        let link_gen = self.link_gen;
        let Some(ctx) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(mine) = ctx.member.epoch().map(|e| e.0) else {
            return;
        };
        let lost_verdict = ctx
            .commit_sent
            .filter(|(_, sent_on)| ctx.committing && *sent_on < link_gen)
            .map(|(hash, _)| hash);
        if let Some(hash) = lost_verdict {
            ctx.commit_sent = None;
            if epoch == mine.saturating_add(1) && last_commit == Some(hash) {
                tracing::info!("a commit's verdict was lost; the relay's order has it accepted");
                if let Err(e) = ctx.member.commit_accepted(now) {
                    tracing::warn!(error = %e, "commit verdict not applied");
                }
                self.commit_done(call, false, out);
                return;
            }
            if let Err(e) = ctx.member.commit_refused() {
                tracing::warn!(error = %e, "commit verdict not applied");
            }
            if epoch == mine {
                // It never reached the relay (or lost to a commit that failed to be stored):
                // made again.
                tracing::info!("a commit was lost with the connection; committing again");
                self.commit_done(call, true, out);
                return;
            }
        }
        if epoch > mine {
            tracing::warn!(
                mine,
                epoch,
                "behind the call's epoch after reconnecting; asking to be added back"
            );
            self.rejoin(call, out);
        } else if epoch < mine {
            tracing::warn!(mine, epoch, "ahead of the relay's epoch for a call");
        }
    }

    /// The relay asks for an emergency rekey of `call` (protocol-relay.md §4.6): a member
    /// still at `epoch` with no commit of its own pending commits an update. One that lost the
    /// epoch to another member's commit does not try again: that commit gave the fresh keys.
    fn rekey(&mut self, call: CallRef, epoch: u64, out: &mut Vec<RelayMessage>) {
        let Some(ctx) = self.calls.get_mut(&call) else {
            return;
        };
        if ctx.committing || ctx.member.epoch().map(|e| e.0) != Some(epoch) {
            return;
        }
        if commit_update(call, ctx, out, "emergency rekey") {
            tracing::info!(epoch, "emergency rekey: committing an update");
        }
    }

    fn on_message(&mut self, message: RelayMessage, out: &mut Vec<RelayMessage>) {
        let now = Instant::now();
        match message {
            RelayMessage::CallOpened { call, route, .. } => {
                if let Some((mut member, reply)) = self.creating.remove(&call) {
                    let result = member
                        .create(now, &call.0)
                        .map_err(GroupPhoneError::from)
                        .and_then(|()| self.open_call(call, route, member, true));
                    let _ = reply.send(result);
                }
            }
            RelayMessage::KeyPackage {
                request, package, ..
            } => {
                let Some((call, identity)) = self.fetching.remove(&request) else {
                    return;
                };
                // None yet: a device whose phone just started may not have published its
                // packages when they are asked for. Asked again, with back-off.
                if package.is_none() && self.calls.contains_key(&call) {
                    let tries = self.fetch_tries.entry((call, identity)).or_insert(0);
                    if *tries < FETCH_RETRIES {
                        let wait = FETCH_RETRY_FIRST * 2u32.pow(*tries);
                        *tries += 1;
                        tracing::debug!(tries = *tries, "no key package yet; asking again");
                        self.refetch.push((now + wait, call, identity));
                        return;
                    }
                }
                self.fetch_tries.remove(&(call, identity));
                let Some(ctx) = self.calls.get_mut(&call) else {
                    return;
                };
                // The package must be the requested device's: a relay answering with one of
                // its own is refused.
                let commit = package
                    .ok_or(GroupPhoneError::Refused(RelayErrorCode::NoKeyPackage))
                    .and_then(|p| {
                        let expected = PublicIdentity::from_bytes(&identity)
                            .map_err(|e| GroupPhoneError::Protocol(e.to_string()))?;
                        ctx.member
                            .add_expecting(&[p], &[expected])
                            .map_err(Into::into)
                    });
                match commit {
                    Ok(commit) => out.push(RelayMessage::Commit {
                        call,
                        epoch: commit.epoch.0,
                        commit: commit.commit,
                        welcome: commit.welcome,
                        added: vec![identity],
                        removed: Vec::new(),
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "device not added");
                        self.commit_done(call, false, out);
                    }
                }
            }
            RelayMessage::CommitResult { call, accepted, .. } => {
                #[cfg(feature = "testing")]
                if std::mem::take(&mut self.drop_next_verdict) {
                    self.lose_link();
                    return;
                }
                let Some(ctx) = self.calls.get_mut(&call) else {
                    return;
                };
                ctx.commit_sent = None;
                let result = if accepted {
                    ctx.member.commit_accepted(now)
                } else {
                    ctx.member.commit_refused()
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "commit verdict not applied");
                }
                // A resumed member's update lost the epoch: the winner comes next as a
                // Handshake, unless it went with the connection of the earlier run.
                if let Some(resume) = ctx.resume.as_mut().filter(|_| !accepted) {
                    if ctx.member.resumed_silent() {
                        resume.refused = ctx.member.epoch().map(|e| (e.0, now + RESUME_WAIT));
                    }
                }
                // Another commit won the epoch: ours is made again on top of it.
                self.commit_done(call, !accepted, out);
            }
            RelayMessage::Handshake { call, message, .. } => {
                #[cfg(feature = "testing")]
                if std::mem::take(&mut self.drop_next_handshake) {
                    return;
                }
                let lost = match self.calls.get_mut(&call) {
                    Some(ctx) => match ctx.member.handle_message(now, &message) {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::warn!(error = %e, "group message refused");
                            // The relay ordered it for everyone: a member that cannot take it
                            // (missed an earlier one, or holds a state the others left) is out
                            // of step. A replay of an old one is only stale.
                            !matches!(e, viska_group::GroupError::StaleEpoch { .. })
                        }
                    },
                    None => false,
                };
                if lost {
                    self.rejoin(call, out);
                }
            }
            RelayMessage::Welcome {
                call,
                route,
                welcome,
                ..
            } => {
                if self.calls.contains_key(&call) {
                    return;
                }
                let fresh = match self.new_member() {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "no member for the next call");
                        return;
                    }
                };
                let mut member = std::mem::replace(&mut self.lobby, fresh);
                member.expect_group(&call.0);
                if let Err(e) = member.handle_message(now, &welcome) {
                    tracing::warn!(error = %e, "welcome refused");
                    // The lobby keeps its keys (its packages are still on the relay), and the
                    // relay drops this device from a call it cannot join.
                    self.lobby = member;
                    if self.rejoins.remove(&call).is_some() {
                        self.rejoins_held.remove(&call);
                        self.forget_membership(&call);
                    }
                    out.push(RelayMessage::Leave { call });
                    let _ = self.events.send(Dispatch::Event(GroupCallEvent::Failure {
                        call,
                        reason: GroupFailure::Undecryptable,
                    }));
                    return;
                }
                // A device added back after losing step was in the call already: it goes on.
                let rejoined =
                    self.rejoins.contains_key(&call) && !self.rejoins_held.contains(&call);
                if let Err(e) = self.open_call(call, route, member, rejoined) {
                    tracing::warn!(error = %e, "call not opened");
                    return;
                }
                // The lobby's packages went with it: publish the new lobby's.
                let mut packages = Vec::with_capacity(KEY_PACKAGES);
                for _ in 0..KEY_PACKAGES {
                    match self.lobby.key_package(false) {
                        Ok(p) => packages.push(p),
                        Err(e) => tracing::warn!(error = %e, "key package not made"),
                    }
                }
                out.push(RelayMessage::PublishKeyPackages {
                    packages,
                    last_resort: self.lobby.key_package(true).ok(),
                });
            }
            RelayMessage::Switch { call, epoch } => {
                let behind = match self.calls.get_mut(&call) {
                    Some(ctx) => {
                        ctx.member.switch(now, viska_group::Epoch(epoch));
                        // Everyone holds an epoch this member never saw: it missed a commit.
                        ctx.member.epoch().is_some_and(|e| e.0 < epoch)
                    }
                    None => false,
                };
                if behind {
                    self.rejoin(call, out);
                }
            }
            RelayMessage::Readd { call, identity } => {
                // Only a device in the roster is taken back in (the relay cannot bring in
                // another): it is removed, then added from a fresh key package (`sweep`).
                // A member the relay said was gone, and that this member's group removed, is
                // added back too (it came back after the hold time): still never a device that
                // was not in the group.
                if let Some(ctx) = self.calls.get_mut(&call) {
                    if ctx
                        .member
                        .roster()
                        .values()
                        .any(|id| id.to_bytes() == identity)
                    {
                        ctx.departed.insert(identity);
                        ctx.readd.insert(identity);
                    } else if ctx.former.contains(&identity) {
                        ctx.readd.insert(identity);
                    }
                }
            }
            RelayMessage::Rekey { call, epoch } => self.rekey(call, epoch, out),
            RelayMessage::CallStatus {
                call,
                epoch,
                last_commit,
            } => self.call_status(call, epoch, last_commit, out),
            RelayMessage::MemberGone { call, identity } => {
                // Removed by whoever is first among those still here (`sweep`).
                if let Some(ctx) = self.calls.get_mut(&call) {
                    if ctx
                        .member
                        .roster()
                        .values()
                        .any(|id| id.to_bytes() == identity)
                    {
                        ctx.former.insert(identity);
                    }
                    ctx.departed.insert(identity);
                }
            }
            RelayMessage::Removed { call } => {
                // Removed without a commit removing this member (it would have left its group
                // on the commit): the relay took it for gone (the hold time passed while it
                // was away, or its held messages overflowed). It asks to be added back; the
                // relay refuses if it was not gone but removed.
                let gone = self
                    .calls
                    .get(&call)
                    .is_some_and(|ctx| ctx.member.epoch().is_some());
                if gone {
                    tracing::info!("gone from a group call while away; asking to be added back");
                    self.rejoin(call, out);
                } else {
                    self.end_call(call);
                }
            }
            RelayMessage::Error { code, call } => {
                tracing::warn!(?code, "relay refused a request");
                if let Some(call) = call {
                    // A call resumed from the store that ended, or that this device was
                    // taken out of, while it was away.
                    if matches!(code, RelayErrorCode::NotMember | RelayErrorCode::NoSuchCall)
                        && self.calls.get(&call).is_some_and(|c| c.resume.is_some())
                    {
                        self.end_call(call);
                        return;
                    }
                    // A rejoin the relay refused (the call ended, or this device was removed):
                    // out of the call.
                    if !self.calls.contains_key(&call)
                        && self.rejoins.contains_key(&call)
                        && matches!(code, RelayErrorCode::NotMember | RelayErrorCode::NoSuchCall)
                    {
                        self.rejoin_refused(call);
                    }
                    if let Some((_, reply)) = self.creating.remove(&call) {
                        let _ = reply.send(Err(GroupPhoneError::Refused(code)));
                    }
                    let pending = self.calls.get_mut(&call).is_some_and(|ctx| {
                        let pending = ctx.committing;
                        if pending {
                            let _ = ctx.member.commit_refused();
                        }
                        pending
                    });
                    if pending {
                        self.commit_done(call, false, out);
                    }
                }
            }
            other => tracing::debug!(message = ?other, "unexpected relay message"),
        }
    }

    /// A call this device is now in; `accepted` for one it created, held until
    /// [`GroupPhone::accept`] for one it was added to.
    fn open_call(
        &mut self,
        call: CallRef,
        route: u32,
        member: Member,
        accepted: bool,
    ) -> Result<(), GroupPhoneError> {
        let now = Instant::now();
        let mut session = Session::group(self.config.session.clone(), now)
            .map_err(|e| GroupPhoneError::Protocol(e.to_string()))?;
        if !accepted {
            session
                .handle_input(Input::Command(now, viska_call::Command::Hold))
                .map_err(|e| GroupPhoneError::Protocol(e.to_string()))?;
        }
        let ctx = CallCtx {
            member,
            session,
            route,
            source: None,
            sink: None,
            pcm: Vec::new(),
            deadline: now,
            committing: false,
            queued: VecDeque::new(),
            in_flight: None,
            accepted,
            departed: std::collections::BTreeSet::new(),
            readd: std::collections::BTreeSet::new(),
            former: std::collections::BTreeSet::new(),
            resume: None,
            commit_sent: None,
            snapshot: GroupCallSnapshot {
                rejoins: self.rejoins.get(&call).copied().unwrap_or(0),
                accepted,
                ..GroupCallSnapshot::new(call)
            },
        };
        self.calls.insert(call, ctx);
        self.routes.insert(route, call);
        if let Some(store) = &self.store {
            memberships::record(store, &call, accepted, route);
        }
        let _ = self
            .events
            .send(Dispatch::Event(GroupCallEvent::Joined { call }));
        Ok(())
    }

    /// A member in no group yet, its MLS state in this device's store.
    fn new_member(&self) -> Result<Member, viska_group::GroupError> {
        GroupMember::with_storage(
            self.config.identity.clone(),
            self.config.group.clone(),
            self.mls.clone(),
        )
    }

    fn on_datagram(&mut self, datagram: &Bytes) {
        let Ok((route, frame)) = decode_route(datagram) else {
            return;
        };
        let Some(call) = self.routes.get(&route) else {
            return;
        };
        if let Some(ctx) = self.calls.get_mut(call) {
            let _ = ctx
                .session
                .handle_input(Input::Datagram(Instant::now(), frame));
        }
    }

    /// Moves every call's member outputs into its session and the relay, then drains the
    /// sessions.
    /// `changed`: something besides media happened (a relay message, a command), so the
    /// snapshots are rebuilt now; otherwise at most every [`SNAPSHOT_INTERVAL`], not for
    /// every datagram.
    fn pump_all(&mut self, out: &mut Vec<RelayMessage>, changed: bool) {
        for call in self.calls.keys().copied().collect::<Vec<_>>() {
            self.sweep(call, out);
        }
        let now = Instant::now();
        let refresh = changed || now >= self.next_snapshot;
        let audio = Arc::clone(&self.config.audio);
        let conn = self.link.as_ref().map(|l| l.conn.clone());
        for (call, ctx) in self.calls.iter_mut() {
            while let Some(output) = ctx.member.poll_output() {
                match output {
                    GroupOutput::Keys(update) => {
                        if let Err(e) = ctx.session.handle_input(Input::Keys(now, update)) {
                            tracing::warn!(error = %e, "keys refused");
                        }
                    }
                    GroupOutput::Ready(epoch) => out.push(RelayMessage::Ready {
                        call: *call,
                        epoch: epoch.0,
                    }),
                    GroupOutput::Event(event) => {
                        let call = *call;
                        let out = match event {
                            GroupEvent::Epoch {
                                epoch,
                                verification_code,
                            } => {
                                ctx.snapshot.epochs_seen += 1;
                                Some(GroupCallEvent::Epoch {
                                    call,
                                    epoch: epoch.0,
                                    verification_code,
                                })
                            }
                            GroupEvent::Failure { reason } => {
                                ctx.snapshot.group_failures += 1;
                                Some(GroupCallEvent::Failure { call, reason })
                            }
                            GroupEvent::Joined {
                                participant,
                                identity,
                            } => Some(GroupCallEvent::ParticipantJoined {
                                call,
                                participant,
                                identity,
                                trust: trust_of(&self.config.verified_peers, &identity),
                            }),
                            GroupEvent::Left {
                                participant,
                                identity,
                            } => Some(GroupCallEvent::ParticipantLeft {
                                call,
                                participant,
                                identity,
                            }),
                            _ => None,
                        };
                        if let Some(event) = out {
                            let _ = self.events.send(Dispatch::Event(event));
                        }
                    }
                    _ => {}
                }
            }
            for (participant, reason, count) in
                drain_session(ctx, conn.as_ref(), &*audio, now, &mut self.out)
            {
                ctx.snapshot.rejected.insert((participant, reason), count);
                let _ = self
                    .events
                    .send(Dispatch::Event(GroupCallEvent::MediaRejected {
                        call: *call,
                        participant,
                        reason,
                        count,
                    }));
            }
            if !refresh {
                continue;
            }
            let s = &mut ctx.snapshot;
            s.epoch = ctx.member.epoch().map(|e| e.0);
            s.sending_epoch = ctx.member.sending_epoch().map(|e| e.0);
            s.verification_code = ctx.member.verification_code();
            s.roster = ctx.member.roster().clone();
            s.me = ctx.member.own_participant();
            s.media = ctx.session.counters();
            s.trust = s
                .roster
                .iter()
                .map(|(p, id)| {
                    let trust = if Some(*p) == s.me {
                        Trust::Verified
                    } else {
                        trust_of(&self.config.verified_peers, id)
                    };
                    (*p, trust)
                })
                .collect();
            s.unverified = s.trust.values().filter(|t| **t != Trust::Verified).count();
            s.received = s
                .roster
                .keys()
                .filter_map(|p| {
                    ctx.session
                        .participant_counters(*p)
                        .map(|c| (*p, c.received))
                })
                .collect();
            s.levels = s
                .roster
                .keys()
                .filter_map(|p| ctx.session.participant_level(*p).map(|l| (*p, l)))
                .collect();
        }
        if refresh {
            self.next_snapshot = now + SNAPSHOT_INTERVAL;
            self.publish_snapshots();
        }
    }

    fn publish_snapshots(&self) {
        let mut calls = lock(&self.shared.calls);
        for (call, ctx) in &self.calls {
            calls.insert(*call, ctx.snapshot.clone());
        }
        drop(calls);
        self.shared.changed.notify_all();
    }
}

/// Drains one call's session: datagrams to the relay with the call's route, capture and
/// playout through the audio end points, audio opened when asked. Returns the media
/// rejections the session reported.
fn drain_session(
    ctx: &mut CallCtx,
    conn: Option<&quinn::Connection>,
    audio: &dyn AudioFactory,
    now: Instant,
    scratch: &mut Vec<u8>,
) -> Vec<(ParticipantId, viska_call::MediaRejection, u64)> {
    let mut rejected = Vec::new();
    loop {
        match ctx.session.poll_output() {
            Output::Datagram(bytes) => {
                scratch.clear();
                if encode_route(ctx.route, scratch).is_err() {
                    continue;
                }
                scratch.extend_from_slice(bytes);
                // Without a connection (reconnecting) the frame goes nowhere, refused.
                let sent =
                    conn.is_some_and(|c| c.send_datagram(Bytes::copy_from_slice(scratch)).is_ok());
                if !sent {
                    let _ = ctx.session.handle_input(Input::DatagramRefused(now));
                }
            }
            Output::Capture => {
                let samples = ctx.session.frame_samples().unwrap_or(0);
                ctx.pcm.resize(samples, 0);
                if let Some(source) = ctx.source.as_mut() {
                    if source.read_frame(&mut ctx.pcm).is_err() {
                        ctx.pcm.fill(0);
                    }
                }
                let pcm = std::mem::take(&mut ctx.pcm);
                let _ = ctx.session.handle_input(Input::Captured(now, &pcm));
                ctx.pcm = pcm;
            }
            Output::Play(pcm) => {
                if let Some(sink) = ctx.sink.as_mut() {
                    let _ = sink.write_frame(pcm);
                }
            }
            Output::Request(Request::OpenAudio { frame_samples, .. }) => {
                let status = match (
                    audio.open_source(frame_samples),
                    audio.open_sink(frame_samples),
                ) {
                    (Ok(source), Ok(sink)) => {
                        let clocked = source.has_own_clock();
                        ctx.source = Some(source);
                        ctx.sink = Some(sink);
                        AudioStatus::Opened {
                            source_clocked: clocked,
                        }
                    }
                    _ => AudioStatus::Failed,
                };
                let _ = ctx.session.handle_input(Input::Audio(now, status));
            }
            Output::Event(viska_session::SessionEvent::Security(
                viska_call::SecurityEvent::MediaRejected {
                    participant,
                    reason,
                    count,
                },
            )) => rejected.push((participant, reason, count)),
            Output::Timeout(at) => {
                ctx.deadline = at;
                return rejected;
            }
            _ => {}
        }
    }
}

fn trust_of(verified: &[PublicIdentity], identity: &PublicIdentity) -> Trust {
    if verified.contains(identity) {
        Trust::Verified
    } else {
        Trust::Unverified
    }
}
