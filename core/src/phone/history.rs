//! The phone's use of its key store: call history written off the media runtime.
//!
//! Every write to the store is a durable SQLite transaction (an fsync), which must not stall
//! the runtime thread that carries every call's media. So they run in order on one thread of
//! the phone's own, `vk-<name>-store`; a call's later writes follow its first one.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use viska_call::{CallState, Trust};
use viska_e2ee::identity::PublicIdentity;
use viska_proto::CallId;
use viska_store::{CallDirection, Store};

type Job = Box<dyn FnOnce(&Store) + Send>;

/// The thread that writes to the store, in order. It stops when the phone and every call
/// that logs through it are gone, after the writes already queued.
#[derive(Clone)]
pub(super) struct StoreWriter {
    jobs: mpsc::Sender<Job>,
}

impl StoreWriter {
    pub(super) fn start(name: &str, store: Store) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("vk-{name}-store"))
            .spawn(move || {
                for job in rx {
                    job(&store);
                }
            })?;
        Ok(Self { jobs })
    }

    fn run(&self, job: impl FnOnce(&Store) + Send + 'static) {
        // The thread only stops once every sender is gone: a send cannot fail while `self`
        // lives, unless a job panicked and took the thread down; then history stops.
        if self.jobs.send(Box::new(job)).is_err() {
            tracing::warn!("the store's writer thread is gone: call history not recorded");
        }
    }
}

/// One call's entry in the store's history.
pub(super) struct CallLog {
    writer: StoreWriter,
    row: Arc<OnceLock<i64>>,
}

impl CallLog {
    pub(super) fn start(
        writer: &StoreWriter,
        direction: CallDirection,
        handle: Option<String>,
    ) -> Self {
        let row = Arc::new(OnceLock::new());
        let slot = Arc::clone(&row);
        writer.run(
            move |store| match store.call_started(direction, handle.as_deref(), None) {
                Ok(id) => {
                    let _ = slot.set(id);
                }
                Err(error) => tracing::warn!(%error, "call history: the call was not recorded"),
            },
        );
        Self {
            writer: writer.clone(),
            row,
        }
    }

    fn with_row(
        &self,
        what: &'static str,
        job: impl FnOnce(&Store, i64) -> Result<(), viska_store::StoreError> + Send + 'static,
    ) {
        let row = Arc::clone(&self.row);
        self.writer.run(move |store| {
            // Runs after the call's first write (one thread, in order): no row means it failed.
            if let Some(&id) = row.get()
                && let Err(error) = job(store, id)
            {
                tracing::warn!(%error, what, "call history not updated");
            }
        });
    }

    pub(super) fn keys(&self, call_id: CallId, peer: PublicIdentity, trust: Trust) {
        self.with_row("keys", move |store, id| {
            store.call_keys(id, &call_id.0, &peer, trust)
        });
    }

    pub(super) fn trust(&self, trust: Trust) {
        self.with_row("trust", move |store, id| store.call_trust(id, trust));
    }

    /// Follows the call's state: answered, ended (the first of each counts).
    pub(super) fn state(&self, state: &CallState) {
        match state {
            CallState::Active { .. } => self.with_row("answered", |s, id| s.call_answered(id)),
            CallState::Ended(reason) => {
                let reason = format!("{reason:?}");
                self.with_row("ended", move |s, id| s.call_ended(id, &reason));
            }
            _ => {}
        }
    }
}
