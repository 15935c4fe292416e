//! A limit on the log lines about connections refused or cut off before authenticating.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line a second for refused and cut-off connections, with how many were
/// left out in between.
#[derive(Default)]
pub(crate) struct LogLimit {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// Whether to log now, and how many were left out since the last line.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if s.0
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            s.1 += 1;
            return None;
        }
        s.0 = Some(now);
        Some(std::mem::take(&mut s.1))
    }
}
