//! The async runtime quinn runs on: tokio, with timers that leave no wake-up behind when they
//! are moved later.
//!
//! Tokio moves a pending timer to a *later* deadline lazily: the entry stays where it was and
//! the thread still wakes at the old deadline, only to find nothing due and file it again.
//! quinn moves its connection timer later all the time (each packet sent or acknowledged
//! pushes loss detection and idle deadlines back), so on a call such moves woke each phone's
//! thread about once more per frame for nothing (counted: 3.9 and 3.1 wake-ups per 20 ms
//! frame on the two ends of a demo call before, 2.3 and 1.3 with this and the call loop's own
//! coalescing). A timer moved later is replaced instead, which takes the old deadline out of
//! the timer wheel. Fewer wake-ups matter most on battery-powered devices.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::time::Sleep;

/// quinn's tokio runtime with [`PromptTimer`]s.
#[derive(Debug)]
pub(crate) struct PromptRuntime;

impl PromptRuntime {
    /// The runtime, if this thread runs inside a tokio runtime (quinn spawns its drivers
    /// there).
    pub(crate) fn current() -> Option<Arc<Self>> {
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| Arc::new(Self))
    }
}

impl quinn::Runtime for PromptRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        Box::pin(PromptTimer::new(at))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        quinn::TokioRuntime.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

/// A tokio timer that, moved to a later deadline, is replaced rather than extended (see the
/// module documentation); moved earlier, it is reset as usual.
pub(crate) struct PromptTimer {
    sleep: Pin<Box<Sleep>>,
}

impl PromptTimer {
    /// A timer due at `at`.
    pub(crate) fn new(at: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at.into())),
        }
    }

    /// Moves the deadline to `at`.
    pub(crate) fn set(&mut self, at: Instant) {
        move_timer(self.sleep.as_mut(), at);
    }

    /// Ready once the deadline has passed.
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

/// Moves `timer` to `at` without leaving a wake-up behind at its old deadline: a later
/// deadline gets a fresh timer in the same place (the old one leaves the timer wheel as it is
/// dropped), an earlier one a reset (tokio re-files it at once).
pub(crate) fn move_timer(mut timer: Pin<&mut Sleep>, at: Instant) {
    let at = tokio::time::Instant::from_std(at);
    if at > timer.deadline() {
        timer.set(tokio::time::sleep_until(at));
    } else {
        timer.reset(at);
    }
}

impl fmt::Debug for PromptTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptTimer")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

impl quinn::AsyncTimer for PromptTimer {
    fn reset(self: Pin<&mut Self>, at: Instant) {
        self.get_mut().set(at);
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_due(cx)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    /// Times the calling thread has blocked so far (voluntary context switches).
    fn blocked_count() -> u64 {
        std::fs::read_to_string("/proc/thread-self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Runs a timer due in 5 ms, moves it to 40 ms, waits for it on a current-thread runtime
    /// and returns how many times the thread blocked meanwhile.
    fn wakeups_for(prompt: bool) -> u64 {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let start = Instant::now();
                let before = blocked_count();
                if prompt {
                    let mut timer = PromptTimer::new(start + Duration::from_millis(5));
                    poll_fn(|cx| {
                        let _ = timer.poll_due(cx);
                        Poll::Ready(())
                    })
                    .await;
                    timer.set(start + Duration::from_millis(40));
                    poll_fn(|cx| timer.poll_due(cx)).await;
                } else {
                    let mut sleep = Box::pin(tokio::time::sleep_until(
                        (start + Duration::from_millis(5)).into(),
                    ));
                    poll_fn(|cx| {
                        let _ = sleep.as_mut().poll(cx);
                        Poll::Ready(())
                    })
                    .await;
                    sleep
                        .as_mut()
                        .reset((start + Duration::from_millis(40)).into());
                    sleep.await;
                }
                assert!(start.elapsed() >= Duration::from_millis(40));
                blocked_count() - before
            })
        })
        .join()
        .expect("timer thread")
    }

    #[test]
    fn a_timer_moved_later_wakes_the_thread_less_than_tokio_alone() {
        // tokio's own reset leaves a wake-up at the old deadline; ours does not. Both can
        // get one more where the wait crosses one of tokio's 64 ms timer-wheel blocks, and
        // tokio's can lose its extra one if the thread is held up past the old deadline (a
        // busy machine), so a few attempts are allowed; one clean comparison must show it.
        let attempts: Vec<(u64, u64)> = (0..5)
            .map(|_| (wakeups_for(false), wakeups_for(true)))
            .collect();
        assert!(
            attempts
                .iter()
                .any(|&(tokio_alone, ours)| ours >= 1 && ours < tokio_alone),
            "wake-ups (tokio alone, ours) per attempt: {attempts:?}"
        );
        assert!(
            attempts.iter().all(|&(_, ours)| ours <= 2),
            "ours never wakes at the old deadline: {attempts:?}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_timer_moved_earlier_fires_at_the_new_deadline() {
        let start = Instant::now();
        let mut timer = PromptTimer::new(start + Duration::from_secs(60));
        poll_fn(|cx| {
            let _ = timer.poll_due(cx);
            Poll::Ready(())
        })
        .await;
        timer.set(start + Duration::from_millis(10));
        poll_fn(|cx| timer.poll_due(cx)).await;
        let waited = tokio::time::Instant::now().into_std() - start;
        assert!(waited >= Duration::from_millis(10) && waited < Duration::from_secs(1));
    }
}
