//! The phone's event queue and the dispatcher thread that calls the application's listeners.
//!
//! Drivers push events without blocking (a short lock, no allocation beyond the event); one
//! thread per phone (`vk-<name>-ev`) pops them in order and calls the listeners, outside every
//! lock of the library. A listener that blocks delays only later events, never a call's media;
//! a listener that panics is caught and logged, and the events after it are still delivered.
//!
//! The queue is bounded: past [`EventQueue::SOFT_LIMIT`] events waiting (a listener that
//! blocks for a long time), statistics are dropped; past [`EventQueue::HARD_LIMIT`], every
//! event but a state change is; both are counted. A call's state changes are never dropped, so
//! an application always sees its calls end.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
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
                update: CallUpdate::StateChanged(_),
                ..
            } => false,
            Item::Call { .. } | Item::Phone(PhoneEvent::Security { .. }) => hard,
            _ => false,
        }
    }
}

/// What the dispatcher knows of a call: what it has delivered (so a listener set later gets
/// exactly that, never something newer than what follows it in the queue).
#[derive(Default)]
struct CallView {
    listener: Option<Arc<dyn CallListener>>,
    state: Option<CallState>,
    keys: Option<(String, Trust)>,
}

/// The queue shared by the drivers (producers) and the dispatcher thread (consumer).
pub(super) struct EventQueue {
    items: Mutex<VecDeque<Item>>,
    ready: Condvar,
    dropped: AtomicU64,
    panics: AtomicU64,
    /// Set when the dispatcher delivered `Closed` and stopped.
    done: Mutex<bool>,
    done_signal: Condvar,
}

impl EventQueue {
    /// Waiting events past which statistics are dropped.
    pub(super) const SOFT_LIMIT: usize = 1024;
    /// Waiting events past which everything but state changes is dropped.
    pub(super) const HARD_LIMIT: usize = 8192;

    /// Starts the dispatcher thread of a phone called `name`.
    pub(super) fn start(name: &str) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Self {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            panics: AtomicU64::new(0),
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

    /// Events dropped because the queue was full.
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
                    if let Some(state) = view.state.filter(|s| *s != CallState::Idle) {
                        self.guarded(|| listener.on_event(id, CallUpdate::StateChanged(state)));
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
