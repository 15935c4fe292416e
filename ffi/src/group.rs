//! Group calls through a relay: one MLS group per call, media routed by the relay as
//! ciphertext.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use viska::group::{self as core_group, CallRef, GroupCallEvent, GroupCallSnapshot};

use crate::call::Call;
use crate::error::{ListenerError, ViskaError};
use crate::identity::{Identity, PeerIdentity, public_identity};
use crate::phone::{AppEnds, AudioSetup, audio_factory, parse_addr};
use crate::types::Trust;

/// Where a group phone connects, as who, with what audio.
#[derive(uniffi::Record)]
pub struct GroupSettings {
    /// The relay's address (`ip:port`).
    pub relay: String,
    /// The relay's certificate fingerprint as it prints on start (64 hex digits; spaces and
    /// colons are ignored).
    pub relay_fingerprint: String,
    /// This device's identity.
    pub identity: Arc<Identity>,
    /// Where the calls' audio comes from and goes to; none by default.
    #[uniffi(default = None)]
    pub audio: Option<AudioSetup>,
    /// Public keys (32 bytes each) the user verified: shown as verified in rosters.
    #[uniffi(default = [])]
    pub verified_peers: Vec<Vec<u8>>,
    /// The account to log in as when the relay admits registered devices only and this
    /// device is not registered yet (the login registers it; later connections need only
    /// the device's key).
    #[uniffi(default = None)]
    pub login: Option<RelayLogin>,
    /// The device's key store: the phone records the calls it is in (and whether the user
    /// accepted them) and, after a restart, asks to be put back into them. `identity` should
    /// be the store's.
    #[uniffi(default = None)]
    pub store: Option<Arc<crate::store::KeyStore>>,
}

/// An account login for a relay with accounts: name, password and the current one-time code
/// of the account's authenticator (TOTP). The password is wiped once used.
#[derive(uniffi::Record)]
pub struct RelayLogin {
    /// The account name.
    pub account: String,
    /// Its password.
    pub password: String,
    /// The authenticator's current 6-digit code.
    pub code: String,
}

impl std::fmt::Debug for RelayLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLogin")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// A member of a group call, as this device sees it.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct GroupParticipant {
    /// Its participant id in the call.
    pub participant: u32,
    /// Its identity.
    pub identity: PeerIdentity,
    /// How far the user trusts it.
    pub trust: Trust,
    /// How loud it was in the last frame played (0 to 1): who is speaking.
    pub level: f32,
    /// Frames received from it.
    pub frames_received: u64,
    /// Whether it is this device.
    pub is_me: bool,
}

/// What a group call looks like from this device.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct GroupCallInfo {
    /// The call (32 hex digits).
    pub call: String,
    /// The group's epoch.
    pub epoch: Option<u64>,
    /// The epoch this device sends under.
    pub sending_epoch: Option<u64>,
    /// The epoch's verification code, the same at every member: compare it to verify.
    pub verification_code: Option<String>,
    /// The members, this device included.
    pub participants: Vec<GroupParticipant>,
    /// Members not verified: what every participant is warned of.
    pub unverified: u32,
    /// Group messages refused (forged, stale...).
    pub group_failures: u64,
    /// Times this device lost step with the group and was added back.
    pub rejoins: u64,
    /// Times this device took the call up from its key store after a restart, in the same
    /// group, without being added back.
    pub resumes: u64,
    /// Whether the call was taken (created here, or accepted); until then nothing is sent or
    /// played.
    pub accepted: bool,
    /// Whether this device left or was removed.
    pub ended: bool,
}

impl From<&GroupCallSnapshot> for GroupCallInfo {
    fn from(s: &GroupCallSnapshot) -> Self {
        let participants = s
            .roster
            .iter()
            .map(|(p, id)| GroupParticipant {
                participant: p.0,
                identity: PeerIdentity::from(id),
                trust: s
                    .trust
                    .get(p)
                    .copied()
                    .map_or(Trust::Unverified, Into::into),
                level: s.levels.get(p).copied().unwrap_or(0.0),
                frames_received: s.received.get(p).copied().unwrap_or(0),
                is_me: s.me == Some(*p),
            })
            .collect();
        Self {
            call: call_hex(s.call),
            epoch: s.epoch,
            sending_epoch: s.sending_epoch,
            verification_code: s.verification_code.clone(),
            participants,
            unverified: u32::try_from(s.unverified).unwrap_or(u32::MAX),
            group_failures: s.group_failures,
            rejoins: s.rejoins,
            resumes: s.resumes,
            accepted: s.accepted,
            ended: s.ended,
        }
    }
}

fn call_hex(call: CallRef) -> String {
    hex::encode(call.0)
}

fn parse_call(call: &str) -> Result<CallRef, ViskaError> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(call, &mut id)
        .map_err(|_| ViskaError::invalid(format!("not a call id (32 hex digits): {call:?}")))?;
    Ok(CallRef(id))
}

/// A group call event.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum GroupEvent {
    /// This device is in the call (it created it, or was added; accept it to take it).
    Joined {
        /// The call.
        call: String,
    },
    /// A device joined (also each member already there when this device joins).
    ParticipantJoined {
        /// The call.
        call: String,
        /// Its participant id.
        participant: u32,
        /// Its identity.
        identity: PeerIdentity,
        /// How far the user trusts it.
        trust: Trust,
    },
    /// A device left.
    ParticipantLeft {
        /// The call.
        call: String,
        /// Its participant id.
        participant: u32,
        /// Its identity.
        identity: PeerIdentity,
    },
    /// The group moved to a new epoch: its verification code changed.
    Epoch {
        /// The call.
        call: String,
        /// The epoch.
        epoch: u64,
        /// The code every member shows now.
        verification_code: String,
    },
    /// A group message was refused (forged, stale, not for this device): a security event.
    Failure {
        /// The call.
        call: String,
        /// Why.
        detail: String,
    },
    /// Media of a participant was refused; rate-limited, `count` is the running total.
    MediaRejected {
        /// The call.
        call: String,
        /// Whose frames.
        participant: u32,
        /// Why.
        reason: String,
        /// Refused for this reason so far.
        count: u64,
    },
    /// This device is no longer in the call.
    Ended {
        /// The call.
        call: String,
    },
    /// The connection to the relay was lost; the phone reconnects by itself and its calls
    /// carry on once it is back.
    RelayDisconnected,
    /// The phone is connected to the relay again, after `attempts` attempts; media resumes.
    RelayReconnected {
        /// Connection attempts it took, this one included.
        attempts: u32,
    },
}

impl GroupEvent {
    fn from_core(e: GroupCallEvent) -> Option<Self> {
        Some(match e {
            GroupCallEvent::Joined { call } => Self::Joined {
                call: call_hex(call),
            },
            GroupCallEvent::ParticipantJoined {
                call,
                participant,
                identity,
                trust,
            } => Self::ParticipantJoined {
                call: call_hex(call),
                participant: participant.0,
                identity: PeerIdentity::from(&identity),
                trust: trust.into(),
            },
            GroupCallEvent::ParticipantLeft {
                call,
                participant,
                identity,
            } => Self::ParticipantLeft {
                call: call_hex(call),
                participant: participant.0,
                identity: PeerIdentity::from(&identity),
            },
            GroupCallEvent::Epoch {
                call,
                epoch,
                verification_code,
            } => Self::Epoch {
                call: call_hex(call),
                epoch,
                verification_code,
            },
            GroupCallEvent::Failure { call, reason } => Self::Failure {
                call: call_hex(call),
                detail: format!("{reason:?}"),
            },
            GroupCallEvent::MediaRejected {
                call,
                participant,
                reason,
                count,
            } => Self::MediaRejected {
                call: call_hex(call),
                participant: participant.0,
                reason: format!("{reason:?}"),
                count,
            },
            GroupCallEvent::Ended { call } => Self::Ended {
                call: call_hex(call),
            },
            GroupCallEvent::RelayDisconnected => Self::RelayDisconnected,
            GroupCallEvent::RelayReconnected { attempts } => Self::RelayReconnected { attempts },
            _ => return None,
        })
    }
}

/// Receives a group phone's events. Called on the group phone's dispatcher thread
/// (`vk-group-events`), one at a time, never while a lock of the library is held; it must
/// not block. An error it returns (an exception it throws) is logged and counted.
#[uniffi::export(foreign)]
pub trait GroupListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: GroupEvent) -> Result<(), ListenerError>;
}

struct GroupAdapter {
    app: Arc<dyn GroupListener>,
    failures: Arc<AtomicU64>,
}

impl core_group::GroupListener for GroupAdapter {
    fn event(&self, event: GroupCallEvent) {
        let Some(event) = GroupEvent::from_core(event) else {
            return;
        };
        if let Err(e) = self.app.on_event(event) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "a group listener failed; the phone goes on");
        }
    }
}

/// A device connected to a relay, in any number of group calls. Closing it (Kotlin
/// `close()`, Swift and Python when the last reference goes, or [`shutdown`](Self::shutdown))
/// leaves its calls and disconnects.
#[derive(uniffi::Object)]
pub struct GroupPhone {
    phone: RwLock<Option<core_group::GroupPhone>>,
    app: Option<AppEnds>,
    failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for GroupPhone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPhone").finish_non_exhaustive()
    }
}

impl GroupPhone {
    fn with<T>(
        &self,
        f: impl FnOnce(&core_group::GroupPhone) -> Result<T, ViskaError>,
    ) -> Result<T, ViskaError> {
        let guard = self
            .phone
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_ref() {
            Some(phone) => f(phone),
            None => Err(ViskaError::Closed),
        }
    }
}

#[uniffi::export]
impl GroupPhone {
    /// Connects to the relay, pins its certificate, authenticates and publishes key
    /// packages; returns once the relay accepted the device (blocks the calling thread for
    /// that long).
    #[uniffi::constructor]
    pub fn connect(settings: GroupSettings) -> Result<Arc<Self>, ViskaError> {
        let relay = parse_addr(&settings.relay)?;
        let digits: String = settings
            .relay_fingerprint
            .chars()
            .filter(|c| !matches!(c, ' ' | ':'))
            .collect();
        let mut relay_fingerprint = [0u8; 32];
        hex::decode_to_slice(&digits, &mut relay_fingerprint).map_err(|_| {
            ViskaError::invalid("the relay fingerprint must be 64 hex digits (32 bytes)")
        })?;
        let verified_peers = settings
            .verified_peers
            .iter()
            .map(|k| public_identity(k))
            .collect::<Result<Vec<_>, _>>()?;
        let (audio, app) = audio_factory(settings.audio.unwrap_or(AudioSetup::None))?;
        let config = core_group::GroupPhoneConfig {
            relay,
            relay_fingerprint,
            identity: settings.identity.key.clone(),
            audio,
            session: viska::session::GroupSessionConfig::default(),
            group: core_group::GroupConfig::default(),
            verified_peers,
        };
        let login = settings.login.map(|login| core_group::RelayLogin {
            account: login.account,
            password: zeroize::Zeroizing::new(login.password),
            code: login.code,
        });
        let phone = match (settings.store, login) {
            (Some(store), login) => {
                core_group::GroupPhone::connect_with_store(config, store.store.clone(), login)?
            }
            (None, None) => core_group::GroupPhone::connect(config)?,
            (None, Some(login)) => core_group::GroupPhone::connect_with_login(config, login)?,
        };
        Ok(Arc::new(Self {
            phone: RwLock::new(Some(phone)),
            app,
            failures: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// This device's identity.
    pub fn identity(&self) -> Result<PeerIdentity, ViskaError> {
        self.with(|p| Ok(PeerIdentity::from(&p.identity())))
    }

    /// Registers the listener, replacing any previous one.
    pub fn set_listener(&self, listener: Arc<dyn GroupListener>) -> Result<(), ViskaError> {
        let adapter = Arc::new(GroupAdapter {
            app: listener,
            failures: Arc::clone(&self.failures),
        });
        self.with(|p| {
            p.set_listener(adapter);
            Ok(())
        })
    }

    /// Opens a new call on the relay with this device as its only member; returns its id.
    pub fn create_call(&self) -> Result<String, ViskaError> {
        self.with(|p| Ok(call_hex(p.create_call()?)))
    }

    /// Adds the device with this public key to the call (it is held until it accepts).
    pub fn add(&self, call: String, public_key: Vec<u8>) -> Result<(), ViskaError> {
        let (call, id) = (parse_call(&call)?, public_identity(&public_key)?);
        self.with(|p| Ok(p.add(call, id)?))
    }

    /// Takes a call this device was added to: from now on it sends and plays audio.
    pub fn accept(&self, call: String) -> Result<(), ViskaError> {
        let call = parse_call(&call)?;
        self.with(|p| Ok(p.accept(call)?))
    }

    /// Removes the device with this public key from the call.
    pub fn remove(&self, call: String, public_key: Vec<u8>) -> Result<(), ViskaError> {
        let (call, id) = (parse_call(&call)?, public_identity(&public_key)?);
        self.with(|p| Ok(p.remove(call, id)?))
    }

    /// Leaves the call.
    pub fn leave(&self, call: String) -> Result<(), ViskaError> {
        let call = parse_call(&call)?;
        self.with(|p| Ok(p.leave(call)?))
    }

    /// Every call this device is in.
    pub fn calls(&self) -> Result<Vec<GroupCallInfo>, ViskaError> {
        self.with(|p| Ok(p.calls().iter().map(GroupCallInfo::from).collect()))
    }

    /// One call, if this device is in it.
    pub fn info(&self, call: String) -> Result<Option<GroupCallInfo>, ViskaError> {
        let call = parse_call(&call)?;
        self.with(|p| Ok(p.snapshot(call).as_ref().map(GroupCallInfo::from)))
    }

    /// Blocks until the call has `members` members, every one of whom this device has heard
    /// and all sending under the group's epoch, or `timeout_ms` passed; returns whether it
    /// got there. Not from a listener.
    pub fn wait_heard(
        &self,
        call: String,
        members: u32,
        timeout_ms: u32,
    ) -> Result<bool, ViskaError> {
        let call = parse_call(&call)?;
        let members = usize::try_from(members).unwrap_or(usize::MAX);
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        self.with(|p| {
            Ok(p.wait_for(timeout, |calls| {
                calls.get(&call).is_some_and(|c| {
                    !c.ended
                        && c.roster.len() == members
                        && c.sending_epoch == c.epoch
                        && c.roster.keys().all(|id| {
                            c.me == Some(*id) || c.received.get(id).is_some_and(|&n| n > 0)
                        })
                })
            }))
        })
    }

    /// Moves a direct call into a new group call with the direct call's peer and `others`
    /// (public keys) added; returns the new call's id. The peer takes it with
    /// [`handover`](Self::handover).
    pub fn escalate(&self, direct: Arc<Call>, others: Vec<Vec<u8>>) -> Result<String, ViskaError> {
        let others = others
            .iter()
            .map(|k| public_identity(k))
            .collect::<Result<Vec<_>, _>>()?;
        self.with(|p| Ok(call_hex(p.escalate(direct.handle(), &others)?)))
    }

    /// The peer's side of [`escalate`](Self::escalate): accepts the group call, waits (up to
    /// `timeout_ms`) until the direct call's peer is heard in it, then hangs up the direct
    /// call. Blocks: not from a listener.
    pub fn handover(
        &self,
        direct: Arc<Call>,
        call: String,
        timeout_ms: u32,
    ) -> Result<(), ViskaError> {
        let call = parse_call(&call)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        self.with(|p| Ok(p.handover(direct.handle(), call, timeout)?))
    }

    /// App-fed audio: pushes captured samples to every call (see [`AudioSetup::App`]).
    pub fn push_audio(&self, samples: Vec<i16>) -> Result<(), ViskaError> {
        AppEnds::push(self.app.as_ref(), &samples)
    }

    /// App-fed audio: `count` samples to play, every call mixed.
    pub fn pull_audio(&self, count: u32) -> Result<Vec<i16>, ViskaError> {
        AppEnds::pull(self.app.as_ref(), count)
    }

    /// Listener calls that returned an error or threw, so far.
    pub fn listener_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Leaves every call and disconnects from the relay (blocks until done). Later calls
    /// fail with [`ViskaError::Closed`].
    pub fn shutdown(&self) {
        let phone = self
            .phone
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(phone) = phone {
            phone.close();
        }
    }
}
