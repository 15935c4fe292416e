//! What the relay knows: devices (their connection and their queue of control messages),
//! calls (route, epoch, members, readiness) and, for the media path, one read-mostly routing
//! table per call. Everything here is synchronous: the state lock is never held across an
//! await, and database writes are queued to the database thread under the lock, so they are
//! applied in the order the state changed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use sha2::Digest as _;
use tokio::sync::{Notify, oneshot, watch};
use viska_proto::relay::{RelayErrorCode, RelayMessage, decode_route};
use viska_sframe::SframeHeader;

use crate::accounts::{DeviceStatus, Role};
use crate::audit::{AuditEvent, Checkpointer, hex};
use crate::db::{self, CommitRecord, Op, Stored};
use crate::replay::{CallCounters, Reuse};
use crate::throttle::Throttle;
use crate::{AccountsMode, CallRef, Counters, DeviceKey, RelayConfig, RelayError, bump};

/// Application close codes of relay connections.
pub(crate) mod close {
    /// The relay is shutting down.
    pub(crate) const SHUTDOWN: u32 = 0;
    /// Authentication failed.
    pub(crate) const UNAUTHENTICATED: u32 = 1;
    /// A newer connection of the same identity replaced this one.
    pub(crate) const REPLACED: u32 = 2;
    /// The control stream broke (framing, or it was closed).
    pub(crate) const PROTOCOL: u32 = 3;
    /// The device did not take its control messages: it is gone from its calls.
    pub(crate) const TOO_SLOW: u32 = 4;
    /// Protocol version 1 on a relay that admits registered devices only, and this one is not.
    pub(crate) const LOGIN_REQUIRED: u32 = 5;
    /// The device was revoked or its account disabled.
    pub(crate) const REVOKED: u32 = 6;
}

/// The account a connected device is registered to.
pub(crate) type Account = (String, Role);

/// Login failures per account name and per source.
pub(crate) struct Throttles {
    pub(crate) account: Throttle<String>,
    pub(crate) source: Throttle<std::net::IpAddr>,
}

/// Epochs a KID tells apart (its low three bits are the epoch's).
pub(crate) const EPOCHS_NAMED: u64 = 8;

/// Largest route (a QUIC varint of at most 4 bytes).
const MAX_ROUTE: u32 = 0x3fff_ffff;

/// State shared by every task of a relay.
pub(crate) struct Shared {
    state: Mutex<State>,
    routes: RwLock<HashMap<u32, Arc<RouteTable>>>,
    pub(crate) stats: Counters,
    pub(crate) config: RelayConfig,
    /// Connections not authenticated yet.
    pub(crate) places: Arc<viska_admission::Places>,
    /// How fast each source may start new connections.
    pub(crate) handshake_rate: Mutex<viska_admission::RateLimiter>,
    /// Rate limit of the log lines about them.
    pub(crate) places_log: crate::log_limit::LogLimit,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Login failures.
    pub(crate) throttles: Mutex<Throttles>,
    /// Password verifications at once (each takes Argon2's memory and a core for a while).
    pub(crate) verifications: tokio::sync::Semaphore,
}

/// The members of one call that media is forwarded to (those connected now).
struct RouteTable {
    epoch: u64,
    targets: Vec<Target>,
    /// The call this table is of (a route is reused once its call ended).
    incarnation: u64,
    /// Its senders' SFrame counters, carried over from one table of the call to the next.
    counters: Arc<Mutex<CallCounters>>,
}

struct Target {
    device: DeviceKey,
    conn_id: u64,
    conn: quinn::Connection,
    join_epoch: u64,
}

struct State {
    calls: HashMap<CallRef, Call>,
    routes_used: BTreeMap<u32, CallRef>,
    devices: HashMap<DeviceKey, Device>,
    overflowed: Vec<DeviceKey>,
    /// Devices the command line revoked or disabled since the start: refused even if their
    /// authentication looked them up just before the change.
    refused_keys: HashSet<DeviceKey>,
    db: Option<mpsc::Sender<Op>>,
    next_id: u64,
}

struct Call {
    route: u32,
    epoch: u64,
    /// Members and the epoch each joined at.
    members: HashMap<DeviceKey, u64>,
    /// Members that said Ready for `epoch`.
    ready: HashSet<DeviceKey>,
    /// The last epoch Switch was sent for.
    switched: Option<u64>,
    /// A commit for `epoch` is being stored.
    pending: bool,
    /// SHA-256 of the commit that moved the call into `epoch` (`CallStatus`).
    last_commit: Option<[u8; 32]>,
    /// Distinguishes this call from an earlier one with the same id.
    incarnation: u64,
    /// Former members gone past the hold time or with a full queue (not left): one that comes
    /// back may ask to be added back (`Rejoin`). Stored (table `gone`), so it outlives a
    /// relay restart.
    gone: HashSet<DeviceKey>,
}

#[derive(Default)]
struct Device {
    queue: VecDeque<RelayMessage>,
    conn: Option<Live>,
    calls: HashSet<CallRef>,
    /// Changes at every connect and disconnect: a hold timer armed for an older value is void.
    generation: u64,
    /// The account of its current connection (relays that require accounts).
    account: Option<Account>,
    /// Revoked (or its account disabled) while connected: what it still sends is ignored.
    refused: bool,
}

impl Device {
    /// Who this device is in the audit log.
    fn actor(&self, key: &DeviceKey) -> String {
        match &self.account {
            Some((user, _)) => user.clone(),
            None => device_actor(key),
        }
    }
}

/// `device:<key hex>`: a device without an account in the audit log.
pub(crate) fn device_actor(key: &DeviceKey) -> String {
    format!("device:{}", hex(key))
}

struct Live {
    id: u64,
    conn: quinn::Connection,
    wake: Arc<Notify>,
}

/// The outcome of the first half of a commit.
enum Begin {
    /// Answered already (refused or an error).
    Done,
    /// Being stored: the database answers on this channel.
    Storing(u64, oneshot::Receiver<Result<(), RelayError>>),
}

impl Shared {
    pub(crate) fn new(config: RelayConfig, db: mpsc::Sender<Op>, stored: Stored) -> Arc<Self> {
        let (shutdown, _) = watch::channel(false);
        let mut state = State {
            calls: HashMap::new(),
            routes_used: BTreeMap::new(),
            devices: HashMap::new(),
            overflowed: Vec::new(),
            refused_keys: HashSet::new(),
            db: Some(db),
            next_id: 0,
        };
        for (identity, messages) in stored.held {
            let device = state.devices.entry(identity).or_default();
            let skip = messages.len().saturating_sub(config.max_held);
            device.queue.extend(messages.into_iter().skip(skip));
        }
        for (call_ref, c) in stored.calls {
            state.next_id += 1;
            state.routes_used.insert(c.route, call_ref);
            for (m, _) in &c.members {
                state.devices.entry(*m).or_default().calls.insert(call_ref);
            }
            state.calls.insert(
                call_ref,
                Call {
                    route: c.route,
                    epoch: c.epoch,
                    members: c.members.into_iter().collect(),
                    ready: HashSet::new(),
                    switched: None,
                    pending: false,
                    last_commit: c.last_commit,
                    incarnation: state.next_id,
                    gone: c.gone.into_iter().collect(),
                },
            );
        }
        let shared = Arc::new(Self {
            state: Mutex::new(state),
            routes: RwLock::new(HashMap::new()),
            stats: Counters::default(),
            places: viska_admission::Places::new(
                config.max_unauthenticated,
                config.max_unauthenticated_per_source,
            ),
            handshake_rate: Mutex::new(viska_admission::RateLimiter::new(config.handshake_rate)),
            places_log: crate::log_limit::LogLimit::default(),
            throttles: Mutex::new(Throttles {
                account: Throttle::new(config.account_throttle, 100_000),
                source: Throttle::new(config.source_throttle, 100_000),
            }),
            verifications: tokio::sync::Semaphore::new(2),
            config,
            shutdown,
        });
        // Nobody is connected after a start: every member has the hold time to come back.
        let st = shared.lock();
        let members: Vec<(DeviceKey, u64)> =
            st.devices.iter().map(|(k, d)| (*k, d.generation)).collect();
        for (k, generation) in members {
            arm_hold(&shared, k, generation);
        }
        let calls: Vec<CallRef> = st.calls.keys().copied().collect();
        for c in calls {
            st.rebuild(&shared, &c);
        }
        drop(st);
        shared
    }

    /// Active calls and their members, now.
    pub(crate) fn call_counts(&self) -> (usize, usize) {
        let st = self.lock();
        let members = st.calls.values().map(|c| c.members.len()).sum();
        (st.calls.len(), members)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops database writes: the database thread ends after those already queued.
    pub(crate) fn close_database(&self) {
        self.lock().db = None;
    }

    /// An authenticated connection of `identity`: it replaces any earlier one, gets `AuthOk`
    /// and then the messages held for it. Returns the connection's id.
    pub(crate) fn register(
        self: &Arc<Self>,
        identity: DeviceKey,
        conn: quinn::Connection,
        wake: Arc<Notify>,
        account: Option<Account>,
    ) -> u64 {
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        if st.refused_keys.contains(&identity) {
            // Revoked (or disabled) between its lookup and now.
            conn.close(close::REVOKED.into(), b"revoked");
            return id;
        }
        let device = st.devices.entry(identity).or_default();
        if let Some(old) = device.conn.take() {
            old.conn
                .close(close::REPLACED.into(), b"replaced by a newer connection");
            self.stats
                .online
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(device = %short(&identity), "connection replaced");
        }
        let had_held = device.conn.is_none() && !device.queue.is_empty();
        device.conn = Some(Live { id, conn, wake });
        device.generation = id;
        device.account = account;
        device.refused = false;
        device.queue.push_front(RelayMessage::AuthOk);
        bump(&self.stats.online);
        if let Some(live) = &device.conn {
            live.wake.notify_one();
        }
        let calls: Vec<CallRef> = device.calls.iter().copied().collect();
        if had_held {
            // Being delivered now: no longer held.
            st.db(Op::Held {
                identity,
                messages: Vec::new(),
            });
        }
        for c in &calls {
            st.rebuild(self, c);
        }
        // Calls it was taken out of while away: it hears so (again, if the message held for
        // it was lost with a relay restart) and may ask to be added back.
        let out_of: Vec<CallRef> = st
            .calls
            .iter()
            .filter(|(_, call)| call.gone.contains(&identity))
            .map(|(c, _)| *c)
            .collect();
        for c in out_of {
            let held = st.devices.get(&identity).is_some_and(|d| {
                d.queue
                    .iter()
                    .any(|m| matches!(m, RelayMessage::Removed { call } if *call == c))
            });
            if !held {
                st.push(self, &identity, RelayMessage::Removed { call: c });
            }
        }
        // After the held messages: where each of its calls stands, so that a device that
        // lost a message with its previous connection (a commit, or its own commit's verdict)
        // finds out now. Not for a call whose next commit is being stored: its outcome follows.
        for c in calls {
            let Some(status) = st.calls.get(&c).filter(|call| !call.pending).map(|call| {
                RelayMessage::CallStatus {
                    call: c,
                    epoch: call.epoch,
                    last_commit: call.last_commit,
                }
            }) else {
                continue;
            };
            st.push(self, &identity, status);
        }
        st.settle(self);
        id
    }

    /// The connection `conn_id` of `identity` closed: its calls keep it for the hold time.
    pub(crate) fn unregister(self: &Arc<Self>, identity: DeviceKey, conn_id: u64) {
        let mut st = self.lock();
        st.next_id += 1;
        let generation = st.next_id;
        let Some(device) = st.devices.get_mut(&identity) else {
            return;
        };
        if device.conn.as_ref().is_none_or(|l| l.id != conn_id) {
            return;
        }
        device.conn = None;
        device.generation = generation;
        self.stats
            .online
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let calls: Vec<CallRef> = device.calls.iter().copied().collect();
        st.store_held(&identity);
        if !calls.is_empty() {
            arm_hold(self, identity, generation);
        }
        for c in calls {
            st.rebuild(self, &c);
        }
        st.forget_if_idle(&identity);
    }

    /// The next control message for connection `conn_id` of `identity`, if it is current.
    pub(crate) fn pop(&self, identity: &DeviceKey, conn_id: u64) -> Option<RelayMessage> {
        let mut st = self.lock();
        let device = st.devices.get_mut(identity)?;
        if device.conn.as_ref().is_none_or(|l| l.id != conn_id) {
            return None;
        }
        device.queue.pop_front()
    }

    /// Answers `me` with `message` (after what it was sent before).
    pub(crate) fn reply(self: &Arc<Self>, me: &DeviceKey, message: RelayMessage) {
        let mut st = self.lock();
        st.push(self, me, message);
        st.settle(self);
    }

    /// Queues a database operation (in state order).
    pub(crate) fn db(&self, op: Op) {
        if let Some(db) = &self.lock().db {
            let _ = db.send(op);
        }
    }

    /// Records a security event (after the state changes queued before it).
    pub(crate) fn audit(&self, event: AuditEvent) {
        self.db(Op::Audit { event });
    }

    /// Sends `op` to the database thread and waits for its answer.
    pub(crate) async fn ask<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, RelayError>>) -> Op,
    ) -> Result<T, RelayError> {
        let (reply, rx) = oneshot::channel();
        self.db(op(reply));
        rx.await.map_err(|_| RelayError::DatabaseStopped)?
    }

    /// The account of `me`'s connection, and whether what it sends is to be ignored.
    fn account_of(&self, me: &DeviceKey) -> (Option<Account>, bool) {
        let st = self.lock();
        match st.devices.get(me) {
            Some(d) => (d.account.clone(), d.refused),
            None => (None, false),
        }
    }

    /// Whether the relay checks roles (it requires accounts).
    fn checks_roles(&self) -> bool {
        self.config.accounts == AccountsMode::Required
    }

    /// The running relay's answer to a device the command line changed: a new role applies
    /// at once; a revoked device, or one whose account was disabled, is disconnected and
    /// taken out of its calls (the others hear `MemberGone`).
    pub(crate) fn recheck(self: &Arc<Self>, key: DeviceKey, status: DeviceStatus) {
        let mut st = self.lock();
        bump(&self.stats.rechecked);
        if matches!(status, DeviceStatus::Revoked | DeviceStatus::Disabled) {
            st.refused_keys.insert(key);
        } else {
            st.refused_keys.remove(&key);
        }
        match status {
            DeviceStatus::Registered { user, role } => {
                if let Some(d) = st.devices.get_mut(&key)
                    && d.conn.is_some()
                    && self.checks_roles()
                {
                    tracing::info!(device = %short(&key), %user, %role, "account changed");
                    d.account = Some((user, role));
                }
            }
            DeviceStatus::Unknown => {}
            DeviceStatus::Revoked | DeviceStatus::Disabled => {
                let reason = if status == DeviceStatus::Revoked {
                    "revoked"
                } else {
                    "account disabled"
                };
                st.evict(self, &key, reason);
                st.settle(self);
            }
        }
    }

    /// An emergency rekey of `call` asked for from the command line: every member is asked
    /// (`Rekey`) to commit an update at the call's current epoch; the first commit wins as
    /// always, so the call moves on by one epoch with fresh keys.
    pub(crate) fn rekey(self: &Arc<Self>, call_ref: CallRef) {
        let mut st = self.lock();
        let Some(call) = st.calls.get(&call_ref) else {
            tracing::info!(call = %short(&call_ref.0), "rekey asked for a call that is not active");
            return;
        };
        let epoch = call.epoch;
        let members: Vec<DeviceKey> = call.members.keys().copied().collect();
        bump(&self.stats.rekeys);
        tracing::info!(call = %short(&call_ref.0), epoch, members = members.len(), "emergency rekey: members asked to commit new keys");
        for m in &members {
            st.push(
                self,
                m,
                RelayMessage::Rekey {
                    call: call_ref,
                    epoch,
                },
            );
        }
        st.db(Op::Audit {
            event: AuditEvent::new("call_rekey_sent", "relay", hex(&call_ref.0), "")
                .with(serde_json::json!({ "epoch": epoch, "members": members.len() })),
        });
        st.settle(self);
    }

    /// Whether `me` (with `account`) may make the membership change of a commit, given the
    /// accounts of the devices it names; `Err` is the first refused device.
    fn may_commit(
        &self,
        me: &DeviceKey,
        account: &Account,
        call_ref: &CallRef,
        added: &[DeviceKey],
        removed: &[DeviceKey],
        accounts: &HashMap<DeviceKey, Option<Account>>,
    ) -> Result<(), (&'static str, DeviceKey)> {
        let (my_user, my_role) = account;
        for a in added {
            match accounts.get(a).cloned().flatten() {
                Some((_, role)) if my_role.may_add(role) => {}
                Some(_) => return Err(("adding a device of a higher role", *a)),
                None => return Err(("adding a device that is not registered", *a)),
            }
        }
        let st = self.lock();
        let members = st.calls.get(call_ref).map(|c| &c.members);
        for r in removed {
            let current = members.is_some_and(|m| m.contains_key(r)) && r != me;
            if !current {
                // Taking out a device that left (or itself): the group's own housekeeping.
                continue;
            }
            match accounts.get(r).cloned().flatten() {
                Some((user, _)) if &user == my_user => {}
                Some((_, role)) if my_role.may_remove(role) => {}
                None => {}
                Some(_) => return Err(("removing a member of another account", *r)),
            }
        }
        Ok(())
    }

    /// One control message from the authenticated device `me`.
    pub(crate) async fn handle(self: &Arc<Self>, me: DeviceKey, message: RelayMessage) {
        let (account, refused) = self.account_of(&me);
        if refused || (self.checks_roles() && account.is_none()) {
            return;
        }
        if let (
            RelayMessage::Commit {
                call,
                added,
                removed,
                ..
            },
            true,
            Some(account),
        ) = (&message, self.checks_roles(), &account)
        {
            let keys: Vec<DeviceKey> = added.iter().chain(removed.iter()).copied().collect();
            let accounts = match self.ask(|reply| Op::Roles { keys, reply }).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "looking up roles failed");
                    HashMap::new()
                }
            };
            if let Err((why, who)) = self.may_commit(&me, account, call, added, removed, &accounts)
            {
                bump(&self.stats.forbidden);
                tracing::info!(device = %short(&me), user = %account.0, why, "commit forbidden");
                self.audit(
                    AuditEvent::new("forbidden", account.0.clone(), hex(&who), "")
                        .with(serde_json::json!({ "call": hex(&call.0), "why": why })),
                );
                self.reply(
                    &me,
                    RelayMessage::Error {
                        code: RelayErrorCode::Forbidden,
                        call: Some(*call),
                    },
                );
                return;
            }
        }
        match message {
            RelayMessage::PublishKeyPackages {
                packages,
                last_resort,
            } => {
                let (reply, rx) = oneshot::channel();
                self.db(Op::Publish {
                    identity: me,
                    packages,
                    last_resort,
                    reply,
                });
                if !matches!(rx.await, Ok(Ok(()))) {
                    tracing::error!(device = %short(&me), "storing key packages failed");
                    self.reply(
                        &me,
                        RelayMessage::Error {
                            code: RelayErrorCode::BadRequest,
                            call: None,
                        },
                    );
                }
            }
            RelayMessage::FetchKeyPackage { request, identity } => {
                let (reply, rx) = oneshot::channel();
                self.db(Op::Fetch { identity, reply });
                let package = match rx.await {
                    Ok(Ok(p)) => p,
                    _ => {
                        tracing::error!("fetching a key package failed");
                        None
                    }
                };
                if package.is_none() {
                    bump(&self.stats.key_packages_missing);
                }
                self.reply(
                    &me,
                    RelayMessage::KeyPackage {
                        request,
                        identity,
                        package,
                    },
                );
            }
            RelayMessage::CreateCall { call } => {
                let mut st = self.lock();
                st.create_call(self, me, call);
                st.settle(self);
            }
            RelayMessage::Commit {
                call,
                epoch,
                commit,
                welcome,
                added,
                removed,
            } => {
                let begin = {
                    let mut st = self.lock();
                    let b =
                        st.begin_commit(self, me, call, epoch, &commit, &welcome, &added, &removed);
                    st.settle(self);
                    b
                };
                let Begin::Storing(incarnation, rx) = begin else {
                    return;
                };
                let stored = matches!(rx.await, Ok(Ok(())));
                let mut st = self.lock();
                st.finish_commit(
                    self,
                    me,
                    call,
                    incarnation,
                    epoch,
                    stored,
                    commit,
                    welcome,
                    added,
                    removed,
                );
                st.settle(self);
            }
            RelayMessage::Ready { call, epoch } => {
                let mut st = self.lock();
                st.ready(self, me, call, epoch);
                st.settle(self);
            }
            RelayMessage::Leave { call } => {
                let mut st = self.lock();
                st.leave(self, me, call);
                st.settle(self);
            }
            RelayMessage::Rejoin { call } => {
                let mut st = self.lock();
                st.rejoin(self, me, call);
                st.settle(self);
            }
            other => {
                bump(&self.stats.bad_frames);
                tracing::debug!(device = %short(&me), message = ?other, "message out of place");
                self.reply(
                    &me,
                    RelayMessage::Error {
                        code: RelayErrorCode::BadRequest,
                        call: None,
                    },
                );
            }
        }
    }

    /// One media datagram from connection `from`: forwarded, the same buffer, to every other
    /// member of its call that may receive it, or dropped and counted.
    pub(crate) fn forward(&self, from: u64, datagram: Bytes) {
        let Ok((route, frame)) = decode_route(&datagram) else {
            bump(&self.stats.malformed);
            return;
        };
        let Ok((header, _)) = SframeHeader::decode(frame) else {
            bump(&self.stats.malformed);
            return;
        };
        let table = {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            routes.get(&route).cloned()
        };
        let Some(table) = table else {
            bump(&self.stats.no_route);
            return;
        };
        let Some(sender) = table.targets.iter().find(|t| t.conn_id == from) else {
            bump(&self.stats.not_member);
            return;
        };
        let Some(frame_epoch) = frame_epoch(table.epoch, header.kid.0) else {
            bump(&self.stats.malformed);
            return;
        };
        let checked = table
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(
                &sender.device,
                header.kid.0,
                frame_epoch,
                header.ctr,
                table.epoch,
            );
        if let Err(why) = checked {
            bump(match why {
                Reuse::Repeat => &self.stats.counter_repeat,
                Reuse::TooOld => &self.stats.counter_too_old,
                Reuse::TooManyKeys => &self.stats.counter_too_many_keys,
            });
            tracing::debug!(
                kid = header.kid.0,
                ctr = header.ctr,
                ?why,
                "SFrame counter refused"
            );
            return;
        }
        for t in table.targets.iter().filter(|t| t.conn_id != from) {
            if frame_epoch < t.join_epoch {
                bump(&self.stats.before_join);
                continue;
            }
            if t.conn.datagram_send_buffer_space() < datagram.len()
                || t.conn.send_datagram(datagram.clone()).is_err()
            {
                bump(&self.stats.slow);
                continue;
            }
            bump(&self.stats.forwarded);
        }
    }
}

/// The epoch of a frame whose KID ends in `kid & 7`, in a call at `current`: the largest epoch
/// not after `current` with that remainder (none if the call has not reached one).
pub(crate) fn frame_epoch(current: u64, kid: u64) -> Option<u64> {
    let back = current.wrapping_sub(kid & (EPOCHS_NAMED - 1)) & (EPOCHS_NAMED - 1);
    current.checked_sub(back)
}

/// After the hold time, a device still disconnected since `generation` is gone from its calls.
fn arm_hold(shared: &Arc<Shared>, identity: DeviceKey, generation: u64) {
    let shared = Arc::clone(shared);
    let mut stop = shared.shutdown.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(shared.config.hold_time) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut st = shared.lock();
        let current = st
            .devices
            .get(&identity)
            .is_some_and(|d| d.conn.is_none() && d.generation == generation);
        if current {
            tracing::info!(device = %short(&identity), "hold time over: gone from its calls");
            st.gone(&shared, &identity);
            st.settle(&shared);
            st.forget_if_idle(&identity);
        }
    });
}

/// The first bytes of a key, for logs.
pub(crate) fn short(key: &[u8]) -> String {
    key.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

impl State {
    fn db(&self, op: Op) {
        if let Some(db) = &self.db {
            let _ = db.send(op);
        }
    }

    /// Queues `message` for `to`; past the bound the oldest goes and `to` is gone.
    fn push(&mut self, shared: &Shared, to: &DeviceKey, message: RelayMessage) {
        let device = self.devices.entry(*to).or_default();
        if device.queue.len() >= shared.config.max_held {
            device.queue.pop_front();
            if !self.overflowed.contains(to) {
                self.overflowed.push(*to);
            }
        }
        device.queue.push_back(message);
        match &device.conn {
            Some(live) => live.wake.notify_one(),
            None => self.store_held(to),
        }
    }

    /// Stores the queue of `identity`, not connected, so that it outlives a relay restart
    /// (what only its current connection needs, `AuthOk` and `CallStatus`, is left out).
    /// Nothing for a connected device: its queue is being written to its stream.
    fn store_held(&self, identity: &DeviceKey) {
        let Some(device) = self.devices.get(identity).filter(|d| d.conn.is_none()) else {
            return;
        };
        let messages = device
            .queue
            .iter()
            .filter(|m| !matches!(m, RelayMessage::AuthOk | RelayMessage::CallStatus { .. }))
            .filter_map(|m| m.encode().ok())
            .collect();
        self.db(Op::Held {
            identity: *identity,
            messages,
        });
    }

    /// Devices whose queue overflowed are gone from their calls (they lost messages): their
    /// queue is replaced by `Removed` for each call, and a live connection is closed.
    fn settle(&mut self, shared: &Arc<Shared>) {
        while let Some(id) = self.overflowed.pop() {
            tracing::warn!(device = %short(&id), "held message queue full: gone from its calls");
            let calls: Vec<CallRef> = match self.devices.get_mut(&id) {
                Some(d) => {
                    d.queue.clear();
                    d.calls.iter().copied().collect()
                }
                None => continue,
            };
            for c in calls {
                self.depart(shared, &c, &id, true, "queue overflow");
                self.mark_gone(&c, &id);
                if let Some(d) = self.devices.get_mut(&id) {
                    d.queue.push_back(RelayMessage::Removed { call: c });
                }
            }
            self.store_held(&id);
            if let Some(live) = self.devices.get(&id).and_then(|d| d.conn.as_ref()) {
                live.conn
                    .close(close::TOO_SLOW.into(), b"control messages not taken");
            }
        }
    }

    /// A revoked device, or one of a disabled account: its connection is closed, it is out of
    /// its calls (the others hear `MemberGone`), and nothing is held for it.
    fn evict(&mut self, shared: &Arc<Shared>, key: &DeviceKey, reason: &'static str) {
        let Some(device) = self.devices.get_mut(key) else {
            return;
        };
        device.queue.clear();
        device.refused = true;
        let actor = device.actor(key);
        let calls: Vec<CallRef> = device.calls.iter().copied().collect();
        let live = device.conn.as_ref().map(|l| l.conn.clone());
        bump(&shared.stats.evicted);
        tracing::info!(device = %short(key), reason, calls = calls.len(), "device refused now: disconnected");
        for c in calls {
            self.depart(shared, &c, key, true, "revoked or disabled");
        }
        if let Some(d) = self.devices.get_mut(key) {
            d.queue.clear();
        }
        self.store_held(key);
        self.db(Op::Audit {
            event: AuditEvent::new("device_disconnect", actor, hex(key), "")
                .with(serde_json::json!({ "reason": reason })),
        });
        if let Some(conn) = live {
            conn.close(close::REVOKED.into(), reason.as_bytes());
        }
        self.forget_if_idle(key);
    }

    /// Drops the entry of a device that holds nothing.
    fn forget_if_idle(&mut self, identity: &DeviceKey) {
        if self
            .devices
            .get(identity)
            .is_some_and(|d| d.conn.is_none() && d.calls.is_empty() && d.queue.is_empty())
        {
            self.devices.remove(identity);
        }
    }

    /// Rebuilds the routing table of `call` (or removes it if the call ended).
    fn rebuild(&self, shared: &Shared, call_ref: &CallRef) {
        let Some(call) = self.calls.get(call_ref) else {
            return;
        };
        let targets = call
            .members
            .iter()
            .filter_map(|(m, join)| {
                let live = self.devices.get(m)?.conn.as_ref()?;
                Some(Target {
                    device: *m,
                    conn_id: live.id,
                    conn: live.conn.clone(),
                    join_epoch: *join,
                })
            })
            .collect();
        let mut routes = shared.routes.write().unwrap_or_else(|e| e.into_inner());
        let counters = routes
            .get(&call.route)
            .filter(|t| t.incarnation == call.incarnation)
            .map(|t| Arc::clone(&t.counters))
            .unwrap_or_default();
        let table = Arc::new(RouteTable {
            epoch: call.epoch,
            targets,
            incarnation: call.incarnation,
            counters,
        });
        routes.insert(call.route, table);
    }

    fn error(&mut self, shared: &Shared, to: &DeviceKey, code: RelayErrorCode, call: CallRef) {
        self.push(
            shared,
            to,
            RelayMessage::Error {
                code,
                call: Some(call),
            },
        );
    }

    fn create_call(&mut self, shared: &Arc<Shared>, me: DeviceKey, call_ref: CallRef) {
        if self.calls.contains_key(&call_ref) {
            return self.error(shared, &me, RelayErrorCode::CallExists, call_ref);
        }
        // The smallest free route: most calls get a one-byte routing prefix.
        let mut route = 0u32;
        for used in self.routes_used.keys() {
            if *used != route {
                break;
            }
            route += 1;
        }
        if route > MAX_ROUTE {
            return self.error(shared, &me, RelayErrorCode::BadRequest, call_ref);
        }
        self.next_id += 1;
        self.calls.insert(
            call_ref,
            Call {
                route,
                epoch: 0,
                members: HashMap::from([(me, 0)]),
                ready: HashSet::new(),
                switched: None,
                pending: false,
                last_commit: None,
                incarnation: self.next_id,
                gone: HashSet::new(),
            },
        );
        self.routes_used.insert(route, call_ref);
        self.devices.entry(me).or_default().calls.insert(call_ref);
        self.db(Op::CreateCall {
            call: call_ref,
            route,
            member: me,
        });
        let actor = self
            .devices
            .get(&me)
            .map_or_else(|| device_actor(&me), |d| d.actor(&me));
        self.db(Op::Audit {
            event: AuditEvent::new("call_join", actor, hex(&me), "")
                .with(serde_json::json!({ "call": hex(&call_ref.0), "how": "created" })),
        });
        tracing::info!(call = %short(&call_ref.0), route, "call opened");
        self.push(
            shared,
            &me,
            RelayMessage::CallOpened {
                call: call_ref,
                route,
                epoch: 0,
            },
        );
        self.rebuild(shared, &call_ref);
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_commit(
        &mut self,
        shared: &Arc<Shared>,
        me: DeviceKey,
        call_ref: CallRef,
        epoch: u64,
        commit: &[u8],
        welcome: &Option<Vec<u8>>,
        added: &[DeviceKey],
        removed: &[DeviceKey],
    ) -> Begin {
        let Some(call) = self.calls.get_mut(&call_ref) else {
            self.error(shared, &me, RelayErrorCode::NoSuchCall, call_ref);
            return Begin::Done;
        };
        if !call.members.contains_key(&me) {
            self.error(shared, &me, RelayErrorCode::NotMember, call_ref);
            return Begin::Done;
        }
        let mut seen = HashSet::new();
        let well_formed = (added.is_empty() || welcome.is_some())
            && added
                .iter()
                .all(|a| !call.members.contains_key(a) && seen.insert(*a))
            && removed.iter().all(|r| seen.insert(*r));
        if !well_formed {
            bump(&shared.stats.bad_frames);
            self.error(shared, &me, RelayErrorCode::BadRequest, call_ref);
            return Begin::Done;
        }
        if epoch != call.epoch || call.pending || epoch == u64::MAX {
            bump(&shared.stats.refused);
            tracing::debug!(call = %short(&call_ref.0), epoch, "commit refused");
            self.push(
                shared,
                &me,
                RelayMessage::CommitResult {
                    call: call_ref,
                    epoch,
                    accepted: false,
                },
            );
            return Begin::Done;
        }
        call.pending = true;
        let incarnation = call.incarnation;
        let (reply, rx) = oneshot::channel();
        self.db(Op::Commit {
            record: CommitRecord {
                call: call_ref,
                epoch,
                message: commit.to_vec(),
                added: added.to_vec(),
                removed: removed.to_vec(),
            },
            reply,
        });
        Begin::Storing(incarnation, rx)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_commit(
        &mut self,
        shared: &Arc<Shared>,
        me: DeviceKey,
        call_ref: CallRef,
        incarnation: u64,
        epoch: u64,
        stored: bool,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        added: Vec<DeviceKey>,
        removed: Vec<DeviceKey>,
    ) {
        let refuse = |st: &mut Self| {
            bump(&shared.stats.refused);
            st.push(
                shared,
                &me,
                RelayMessage::CommitResult {
                    call: call_ref,
                    epoch,
                    accepted: false,
                },
            );
        };
        let Some(call) = self
            .calls
            .get_mut(&call_ref)
            .filter(|c| c.incarnation == incarnation)
        else {
            return refuse(self);
        };
        call.pending = false;
        if !stored {
            tracing::error!(call = %short(&call_ref.0), epoch, "storing a commit failed");
            return refuse(self);
        }
        let old_members: Vec<DeviceKey> = call.members.keys().copied().collect();
        let next = epoch + 1;
        call.epoch = next;
        call.last_commit = Some(sha2::Sha256::digest(&commit).into());
        call.ready.clear();
        let route = call.route;
        for r in &removed {
            if call.members.remove(r).is_some()
                && let Some(d) = self.devices.get_mut(r)
            {
                d.calls.remove(&call_ref);
            }
        }
        let Some(call) = self.calls.get_mut(&call_ref) else {
            return;
        };
        for a in &added {
            call.members.insert(*a, next);
            call.gone.remove(a);
        }
        bump(&shared.stats.accepted);
        tracing::info!(
            call = %short(&call_ref.0),
            epoch = next,
            added = added.len(),
            removed = removed.len(),
            "commit accepted"
        );
        // The removed members stop receiving media at once.
        self.rebuild(shared, &call_ref);
        let actor = self
            .devices
            .get(&me)
            .map_or_else(|| device_actor(&me), |d| d.actor(&me));
        for (kind, keys) in [("call_join", &added), ("call_leave", &removed)] {
            for k in keys
                .iter()
                .filter(|k| kind == "call_join" || old_members.contains(k))
            {
                self.db(Op::Audit {
                    event: AuditEvent::new(kind, actor.clone(), hex(k), "").with(
                        serde_json::json!({ "call": hex(&call_ref.0), "how": "commit", "epoch": next }),
                    ),
                });
            }
        }
        for m in old_members.iter().filter(|m| **m != me) {
            self.push(
                shared,
                m,
                RelayMessage::Handshake {
                    call: call_ref,
                    epoch,
                    message: commit.clone(),
                },
            );
        }
        for r in &removed {
            if old_members.contains(r) {
                self.push(shared, r, RelayMessage::Removed { call: call_ref });
            }
        }
        self.push(
            shared,
            &me,
            RelayMessage::CommitResult {
                call: call_ref,
                epoch,
                accepted: true,
            },
        );
        let welcome = welcome.unwrap_or_default();
        for a in &added {
            let device = self.devices.entry(*a).or_default();
            device.calls.insert(call_ref);
            if device.conn.is_none() {
                let generation = device.generation;
                arm_hold(shared, *a, generation);
            }
            self.push(
                shared,
                a,
                RelayMessage::Welcome {
                    call: call_ref,
                    route,
                    epoch: next,
                    welcome: welcome.clone(),
                },
            );
        }
        for r in &removed {
            self.forget_if_idle(r);
        }
        if self
            .calls
            .get(&call_ref)
            .is_some_and(|c| c.members.is_empty())
        {
            self.end_call(shared, &call_ref);
        }
    }

    fn ready(&mut self, shared: &Arc<Shared>, me: DeviceKey, call_ref: CallRef, epoch: u64) {
        let Some(call) = self.calls.get_mut(&call_ref) else {
            return self.error(shared, &me, RelayErrorCode::NoSuchCall, call_ref);
        };
        if !call.members.contains_key(&me) {
            return self.error(shared, &me, RelayErrorCode::NotMember, call_ref);
        }
        // A Ready for another epoch is late (or early) and changes nothing.
        if epoch == call.epoch {
            call.ready.insert(me);
            self.check_switch(shared, &call_ref);
        }
    }

    /// Sends `Switch` once every member of the call's epoch is ready for it.
    fn check_switch(&mut self, shared: &Shared, call_ref: &CallRef) {
        let Some(call) = self.calls.get_mut(call_ref) else {
            return;
        };
        if call.members.is_empty()
            || call.switched == Some(call.epoch)
            || !call.members.keys().all(|m| call.ready.contains(m))
        {
            return;
        }
        call.switched = Some(call.epoch);
        let epoch = call.epoch;
        let members: Vec<DeviceKey> = call.members.keys().copied().collect();
        tracing::debug!(call = %short(&call_ref.0), epoch, "switch");
        for m in &members {
            self.push(
                shared,
                m,
                RelayMessage::Switch {
                    call: *call_ref,
                    epoch,
                },
            );
        }
    }

    fn leave(&mut self, shared: &Arc<Shared>, me: DeviceKey, call_ref: CallRef) {
        let Some(call) = self.calls.get(&call_ref) else {
            return self.error(shared, &me, RelayErrorCode::NoSuchCall, call_ref);
        };
        if !call.members.contains_key(&me) {
            return self.error(shared, &me, RelayErrorCode::NotMember, call_ref);
        }
        tracing::info!(call = %short(&call_ref.0), device = %short(&me), "left");
        self.depart(shared, &call_ref, &me, true, "left");
    }

    /// A member that lost track of the group: out of forwarding at once, like a leave, and the
    /// others are asked to add it back (`Readd`) rather than told it is gone.
    fn rejoin(&mut self, shared: &Arc<Shared>, me: DeviceKey, call_ref: CallRef) {
        let Some(call) = self.calls.get(&call_ref) else {
            return self.error(shared, &me, RelayErrorCode::NoSuchCall, call_ref);
        };
        if !call.members.contains_key(&me) {
            // A member gone past the hold time that came back: the others are asked to add it
            // back (they do only if it was in their group).
            let came_back = self
                .calls
                .get_mut(&call_ref)
                .is_some_and(|c| c.gone.remove(&me));
            if !came_back {
                return self.error(shared, &me, RelayErrorCode::NotMember, call_ref);
            }
            self.db(Op::Back {
                call: call_ref,
                identity: me,
            });
            tracing::info!(call = %short(&call_ref.0), device = %short(&me), "came back; asks to be added back");
            let members: Vec<DeviceKey> = self
                .calls
                .get(&call_ref)
                .map(|c| c.members.keys().copied().collect())
                .unwrap_or_default();
            for m in &members {
                self.push(
                    shared,
                    m,
                    RelayMessage::Readd {
                        call: call_ref,
                        identity: me,
                    },
                );
            }
            return;
        }
        tracing::info!(call = %short(&call_ref.0), device = %short(&me), "asks to be added back");
        self.depart(shared, &call_ref, &me, false, "rejoin");
        let remaining: Vec<DeviceKey> = self
            .calls
            .get(&call_ref)
            .map(|c| c.members.keys().copied().collect())
            .unwrap_or_default();
        for m in &remaining {
            self.push(
                shared,
                m,
                RelayMessage::Readd {
                    call: call_ref,
                    identity: me,
                },
            );
        }
    }

    /// `identity` (disconnected past the hold time) is no longer a member of any of its
    /// calls; `Removed` for each is held for it, should it come back.
    fn gone(&mut self, shared: &Arc<Shared>, identity: &DeviceKey) {
        let calls: Vec<CallRef> = self
            .devices
            .get(identity)
            .map(|d| d.calls.iter().copied().collect())
            .unwrap_or_default();
        for c in calls {
            self.depart(shared, &c, identity, true, "hold time over");
            self.mark_gone(&c, identity);
            self.push(shared, identity, RelayMessage::Removed { call: c });
        }
    }

    /// Records that `identity`, just taken out of `call_ref` (not by leaving), may ask back.
    /// Nothing when that ended the call.
    fn mark_gone(&mut self, call_ref: &CallRef, identity: &DeviceKey) {
        if let Some(call) = self.calls.get_mut(call_ref)
            && call.gone.insert(*identity)
        {
            self.db(Op::Gone {
                call: *call_ref,
                identity: *identity,
            });
        }
    }

    /// Takes `identity` out of `call_ref` (forwarding stops at once); the others hear
    /// `MemberGone`; the last one out ends the call.
    fn depart(
        &mut self,
        shared: &Shared,
        call_ref: &CallRef,
        identity: &DeviceKey,
        notify: bool,
        how: &'static str,
    ) {
        if let Some(d) = self.devices.get_mut(identity) {
            d.calls.remove(call_ref);
        }
        let Some(call) = self.calls.get_mut(call_ref) else {
            return;
        };
        if call.members.remove(identity).is_none() {
            return;
        }
        call.ready.remove(identity);
        let remaining: Vec<DeviceKey> = call.members.keys().copied().collect();
        self.db(Op::RemoveMember {
            call: *call_ref,
            identity: *identity,
        });
        let actor = self
            .devices
            .get(identity)
            .map_or_else(|| device_actor(identity), |d| d.actor(identity));
        self.db(Op::Audit {
            event: AuditEvent::new("call_leave", actor, hex(identity), "")
                .with(serde_json::json!({ "call": hex(&call_ref.0), "how": how })),
        });
        if remaining.is_empty() {
            return self.end_call(shared, call_ref);
        }
        self.rebuild(shared, call_ref);
        if notify {
            for m in &remaining {
                self.push(
                    shared,
                    m,
                    RelayMessage::MemberGone {
                        call: *call_ref,
                        identity: *identity,
                    },
                );
            }
        }
        self.check_switch(shared, call_ref);
    }

    /// The call has no member left: its route is free again.
    fn end_call(&mut self, shared: &Shared, call_ref: &CallRef) {
        let Some(call) = self.calls.remove(call_ref) else {
            return;
        };
        for m in call.members.keys() {
            if let Some(d) = self.devices.get_mut(m) {
                d.calls.remove(call_ref);
            }
        }
        self.routes_used.remove(&call.route);
        shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&call.route);
        self.db(Op::EndCall { call: *call_ref });
        tracing::info!(call = %short(&call_ref.0), route = call.route, "call ended");
    }
}

/// Starts the database thread on an opened database.
pub(crate) fn spawn_database(
    conn: rusqlite::Connection,
    checkpoints: Checkpointer,
) -> Result<(mpsc::Sender<Op>, std::thread::JoinHandle<()>), RelayError> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("viska-relay-db".into())
        .spawn(move || db::run(conn, checkpoints, rx))?;
    Ok((tx, thread))
}

#[cfg(test)]
mod tests {
    use super::frame_epoch;

    #[test]
    fn frame_epochs_are_the_latest_with_the_kid_remainder() {
        assert_eq!(frame_epoch(0, 0), Some(0));
        assert_eq!(frame_epoch(0, 1), None, "an epoch the call has not reached");
        assert_eq!(frame_epoch(9, 41), Some(9), "leaf 5 at epoch 9");
        assert_eq!(frame_epoch(9, 40), Some(8));
        assert_eq!(frame_epoch(9, 2), Some(2));
        assert_eq!(frame_epoch(16, 8191), Some(15));
    }
}
