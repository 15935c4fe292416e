//! The phone's event queue and the dispatcher thread that calls the application's listeners.
//!
//! Drivers push events without blocking (a short lock, no allocation beyond the event); one
//! thread per phone (`vk-<name>-ev`) pops them in order and calls the listeners, outside every
//! lock of the library. A listener that blocks delays only later events, never a call's media;
//! a listener that panics is caught and logged, and the events after it are still delivered.
//!
//! The queue is bounded: past [`EventQueue::SOFT_LIMIT`] events waiting (a listener that
//! blocks for a long time), statistics are dropped; past [`EventQueue::HARD_LIMIT`], every
//! event but a state change, a call's keys (its SAS) or an incoming call is; both are counted. A call's state changes
//! and keys are never dropped, so an application always sees its calls end; and while the queue is past
//! the hard limit, or before the application has set a phone listener, the phone rings for no
//! new call (it is refused as busy), so what is never dropped stays bounded by the calls the
//! phone runs.
//!
//! A call's events that arrive before the application set its listener are kept (up to
//! [`EARLY_EVENTS`] of them besides its states) and given to the listener when it is set, in
//! their order among the call's state changes.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use viska_call::{CallState, Trust};
use viska_proto::CallId;

use super::{CallListener, CallUpdate, PhoneEvent, PhoneListener, lock};

/// One entry of the queue.
pub(super) enum Item {
    Phone(PhoneEvent),
    Call {
        /// The phone's own key for the call.
        key: u64,
        id: CallId,
        update: CallUpdate,
    },
    SetPhoneListener(Arc<dyn PhoneListener>),
    SetCallListener {
        key: u64,
        id: CallId,
        listener: Arc<dyn CallListener>,
        /// The call, for a listener set after it was torn down: it gets the final state.
        call: Arc<super::CallShared>,
    },
    /// The call is torn down: its entry goes once what was queued before is delivered.
    CallGone {
        key: u64,
    },
    /// The phone is closed: the last item.
    Closed,
}

impl Item {
    fn is_droppable(&self, hard: bool) -> bool {
        match self {
            Item::Call {
                update: CallUpdate::Stats(_),
                ..
            } => true,
            Item::Call {
                update: CallUpdate::StateChanged(_) | CallUpdate::KeysReady { .. },
                ..
            } => false,
            Item::Call { .. }
            | Item::Phone(PhoneEvent::Security { .. } | PhoneEvent::MissedCall { .. }) => hard,
            _ => false,
        }
    }
}

/// A call's events (besides state changes, keys and statistics) kept for a listener not yet
/// set; later ones are dropped and counted.
pub(super) const EARLY_EVENTS: usize = 64;

/// What the dispatcher knows of a call: what it has delivered (so a listener set later gets
/// exactly that, never something newer than what follows it in the queue).
#[derive(Default)]
struct CallView {
    listener: Option<Arc<dyn CallListener>>,
    state: Option<CallState>,
    keys: Option<(String, Trust)>,
    /// Until a listener is set: the call's events in order, with its state changes between
    /// them (consecutive state changes kept as the last one).
    early: Vec<CallUpdate>,
    /// Events (not state changes) in `early`.
    early_events: usize,
}

impl CallView {
    /// Keeps `update` for a listener set later. Returns false when it was dropped.
    fn keep(&mut self, update: CallUpdate) -> bool {
        match update {
            CallUpdate::StateChanged(_) => {
                if let Some(last @ CallUpdate::StateChanged(_)) = self.early.last_mut() {
                    *last = update;
                } else {
                    self.early.push(update);
                }
            }
            // Summarised in `keys`, or of no use later.
            CallUpdate::KeysReady { .. } | CallUpdate::TrustChanged(_) | CallUpdate::Stats(_) => {}
            _ if self.early_events < EARLY_EVENTS => {
                self.early_events += 1;
                self.early.push(update);
            }
            _ => return false,
        }
        true
    }
}

/// The queue shared by the drivers (producers) and the dispatcher thread (consumer).
pub(super) struct EventQueue {
    items: Mutex<VecDeque<Item>>,
    ready: Condvar,
    dropped: AtomicU64,
    panics: AtomicU64,
    /// Set when a phone listener is queued: from then on an incoming call has someone to
    /// ring.
    phone_listener: AtomicBool,
    /// Set when the dispatcher delivered `Closed` and stopped.
    done: Mutex<bool>,
    done_signal: Condvar,
}

impl EventQueue {
    /// Waiting events past which statistics are dropped.
    pub(super) const SOFT_LIMIT: usize = 1024;
    /// Waiting events past which everything but state changes, keys, incoming calls and the
    /// queue's own control items is dropped (and no new call rings).
    pub(super) const HARD_LIMIT: usize = 8192;

    /// Starts the dispatcher thread of a phone called `name`.
    pub(super) fn start(name: &str) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Self {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            phone_listener: AtomicBool::new(false),
            done: Mutex::new(false),
            done_signal: Condvar::new(),
        });
        let consumer = Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!("vk-{name}-ev"))
            .spawn(move || consumer.run())?;
        Ok(queue)
    }

    /// Queues an item; never blocks for longer than a short lock.
    pub(super) fn push(&self, item: Item) {
        let mut items = lock(&self.items);
        if matches!(item, Item::SetPhoneListener(_)) {
            self.phone_listener.store(true, Ordering::Release);
        }
        let len = items.len();
        if (len >= Self::SOFT_LIMIT && item.is_droppable(false))
            || (len >= Self::HARD_LIMIT && item.is_droppable(true))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        items.push_back(item);
        drop(items);
        self.ready.notify_one();
    }

    /// Whether a new incoming call may ring: a phone listener is set (queued before anything
    /// the call will push) and the queue is below its hard limit.
    pub(super) fn can_ring(&self) -> bool {
        self.phone_listener.load(Ordering::Acquire) && lock(&self.items).len() < Self::HARD_LIMIT
    }

    /// Events dropped because the queue was full, or kept too long for a call's listener.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Listener calls that panicked (caught).
    pub(super) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Waits until the dispatcher has delivered the phone's `Closed` event.
    pub(super) fn wait_done(&self, timeout: Duration) -> bool {
        let done = lock(&self.done);
        let (done, _) = self
            .done_signal
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *done
    }

    fn pop(&self) -> Item {
        let mut items = lock(&self.items);
        loop {
            if let Some(item) = items.pop_front() {
                return item;
            }
            items = self
                .ready
                .wait(items)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn run(&self) {
        let mut phone: Option<Arc<dyn PhoneListener>> = None;
        let mut calls: HashMap<u64, CallView> = HashMap::new();
        loop {
            match self.pop() {
                Item::Phone(event) => {
                    if let Some(listener) = phone.as_ref() {
                        self.guarded(|| listener.on_event(event));
                    }
                }
                Item::Call { key, id, update } => {
                    let view = calls.entry(key).or_default();
                    match &update {
                        CallUpdate::StateChanged(state) => view.state = Some(*state),
                        CallUpdate::KeysReady { sas, trust } => {
                            view.keys = Some((sas.clone(), *trust));
                        }
                        CallUpdate::TrustChanged(trust) => {
                            if let Some((_, t)) = view.keys.as_mut() {
                                *t = *trust;
                            }
                        }
                        _ => {}
                    }
                    if let Some(listener) = view.listener.clone() {
                        self.guarded(|| listener.on_event(id, update));
                    } else if !view.keep(update) {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Item::SetPhoneListener(listener) => phone = Some(listener),
                Item::SetCallListener {
                    key,
                    id,
                    listener,
                    call,
                } => {
                    if !calls.contains_key(&key) && call.is_torn_down() {
                        // Its events are all delivered and its entry gone: the final state
                        // is what there is to tell.
                        let (state, sas, trust) = {
                            let snap = call.snapshot();
                            (snap.state, snap.sas.clone(), snap.trust)
                        };
                        if let (Some(sas), Some(trust)) = (sas, trust) {
                            self.guarded(|| {
                                listener.on_event(id, CallUpdate::KeysReady { sas, trust })
                            });
                        }
                        self.guarded(|| listener.on_event(id, CallUpdate::StateChanged(state)));
                        continue;
                    }
                    let view = calls.entry(key).or_default();
                    view.listener = Some(Arc::clone(&listener));
                    // What was delivered so far, through the same queue: nothing queued after
                    // this can be older.
                    if let Some((sas, trust)) = view.keys.clone() {
                        self.guarded(|| {
                            listener.on_event(id, CallUpdate::KeysReady { sas, trust })
                        });
                    }
                    let early = std::mem::take(&mut view.early);
                    view.early_events = 0;
                    if early.is_empty() {
                        if let Some(state) = view.state.filter(|s| *s != CallState::Idle) {
                            self.guarded(|| listener.on_event(id, CallUpdate::StateChanged(state)));
                        }
                    }
                    for update in early {
                        if matches!(update, CallUpdate::StateChanged(CallState::Idle)) {
                            continue;
                        }
                        self.guarded(|| listener.on_event(id, update));
                    }
                }
                Item::CallGone { key } => {
                    calls.remove(&key);
                }
                Item::Closed => {
                    if let Some(listener) = phone.take() {
                        self.guarded(|| listener.on_event(PhoneEvent::Closed));
                    }
                    *lock(&self.done) = true;
                    self.done_signal.notify_all();
                    return;
                }
            }
        }
    }

    /// Runs one listener call; a panic is caught, counted and logged.
    fn guarded(&self, f: impl FnOnce()) {
        if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
            self.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!("a listener panicked; the event was dropped and the phone goes on");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use viska_call::CallState;
    use viska_e2ee::keys::ParticipantId;

    use super::*;
    use crate::phone::CallHandle;

    const WAIT: Duration = Duration::from_secs(10);
    const ACTIVE: CallState = CallState::Active {
        local_hold: false,
        remote_hold: false,
        muted: false,
    };
    const HELD: CallState = CallState::Active {
        local_hold: true,
        remote_hold: false,
        muted: false,
    };

    fn update(queue: &EventQueue, handle: &CallHandle, update: CallUpdate) {
        queue.push(Item::Call {
            key: handle.shared.key,
            id: handle.id(),
            update,
        });
    }

    fn data(byte: u8) -> CallUpdate {
        CallUpdate::Data {
            participant: ParticipantId(1),
            data: vec![byte],
        }
    }

    /// What a listener saw, as short names.
    fn describe(update: &CallUpdate) -> String {
        match update {
            CallUpdate::StateChanged(HELD) => "Held".into(),
            CallUpdate::StateChanged(state) => format!("{state:?}"),
            CallUpdate::KeysReady { trust, .. } => format!("keys {trust:?}"),
            CallUpdate::Data { data, .. } => format!("data {}", data[0]),
            other => format!("{other:?}"),
        }
    }

    fn collector() -> (Arc<dyn CallListener>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let listener = move |_: CallId, u: CallUpdate| {
            let _ = lock(&tx).send(describe(&u));
        };
        (Arc::new(listener), rx)
    }

    #[test]
    fn events_before_the_call_listener_reach_it_in_order_among_the_states() {
        let queue = EventQueue::start("early").expect("start");
        let (handle, _commands) = CallHandle::new(&queue);
        update(
            &queue,
            &handle,
            CallUpdate::StateChanged(CallState::Handshaking),
        );
        update(
            &queue,
            &handle,
            CallUpdate::KeysReady {
                sas: "123 456".into(),
                trust: Trust::Unverified,
            },
        );
        update(
            &queue,
            &handle,
            CallUpdate::StateChanged(CallState::Ringing),
        );
        update(&queue, &handle, data(1));
        update(&queue, &handle, CallUpdate::Stats(Default::default()));
        update(&queue, &handle, data(2));
        update(&queue, &handle, CallUpdate::TrustChanged(Trust::Verified));
        update(&queue, &handle, CallUpdate::StateChanged(ACTIVE));
        update(&queue, &handle, CallUpdate::StateChanged(HELD));
        update(&queue, &handle, data(3));
        let (listener, seen) = collector();
        handle.set_listener(listener);
        update(&queue, &handle, data(4));
        let got: Vec<String> = (0..7)
            .map(|_| seen.recv_timeout(WAIT).expect("event"))
            .collect();
        assert_eq!(
            got,
            [
                "keys Verified",
                "Ringing",
                "data 1",
                "data 2",
                "Held",
                "data 3",
                "data 4"
            ]
        );
        assert!(seen.recv_timeout(Duration::from_millis(50)).is_err());
        assert_eq!(queue.dropped(), 0);
    }

    #[test]
    fn early_events_past_the_bound_are_dropped_and_counted_but_states_are_kept() {
        let queue = EventQueue::start("early-bound").expect("start");
        let (handle, _commands) = CallHandle::new(&queue);
        for i in 0..EARLY_EVENTS + 6 {
            update(&queue, &handle, data(i as u8));
        }
        update(&queue, &handle, CallUpdate::StateChanged(HELD));
        let (listener, seen) = collector();
        handle.set_listener(listener);
        let got: Vec<String> = (0..=EARLY_EVENTS)
            .map(|_| seen.recv_timeout(WAIT).expect("event"))
            .collect();
        assert_eq!(got.first().map(String::as_str), Some("data 0"));
        assert_eq!(
            got.get(EARLY_EVENTS - 1),
            Some(&format!("data {}", EARLY_EVENTS - 1))
        );
        assert_eq!(got.last().map(String::as_str), Some("Held"));
        assert_eq!(queue.dropped(), 6);
    }

    #[test]
    fn no_call_rings_before_a_phone_listener_or_past_the_hard_limit() {
        let queue = EventQueue::start("ring").expect("start");
        assert!(!queue.can_ring(), "no phone listener yet");
        queue.push(Item::SetPhoneListener(Arc::new(|_: PhoneEvent| {})));
        assert!(queue.can_ring());
        // A call listener that blocks holds the dispatcher while the queue fills.
        let (handle, _commands) = CallHandle::new(&queue);
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Mutex::new(blocked);
        let (entered_tx, entered) = mpsc::channel();
        let entered_tx = Mutex::new(entered_tx);
        handle.set_listener(Arc::new(move |_: CallId, _: CallUpdate| {
            let _ = lock(&entered_tx).send(());
            let _ = lock(&blocked).recv();
        }));
        update(&queue, &handle, data(0));
        entered.recv_timeout(WAIT).expect("the listener runs");
        for _ in 0..EventQueue::HARD_LIMIT {
            update(&queue, &handle, CallUpdate::StateChanged(HELD));
        }
        assert!(!queue.can_ring(), "the queue is full");
        // Droppable events are dropped now; state changes are not.
        update(&queue, &handle, data(1));
        assert_eq!(queue.dropped(), 1);
        drop(release);
        let deadline = std::time::Instant::now() + WAIT;
        while !queue.can_ring() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(queue.can_ring(), "the queue drained");
    }
}
