//! Noticing that this whole process was stopped — SIGSTOP, a frozen VM, a starved
//! container — so that it does not act as the owner of tasks the group may have given
//! to another replica meanwhile (docs/design.md §16 State follows tasks, "Zombies").
//!
//! A watchdog thread ticks every few hundred milliseconds. A process that is stopped
//! stops every thread, Kafka's heartbeat thread included; when it runs again, the
//! watchdog finds a gap between its ticks far longer than its period and marks the
//! process *held*. Until the worker lifts the hold (the group answered: tasks lost, or
//! a session timeout passed without that answer), no email is sent and nothing is
//! checkpointed, handed over or committed. The sender also refuses while the last tick
//! is stale, which covers the instant after the process resumed and before the
//! watchdog ran.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared view of whether this process may act as the owner of its tasks right now.
#[derive(Clone)]
pub struct PauseWatch {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the tick times count from.
    origin: Instant,
    /// The watchdog's last tick, in ms since `origin`.
    last_tick: AtomicU64,
    /// A pause was seen and the worker has not lifted it yet.
    held: AtomicBool,
    /// A gap longer than this between ticks is a pause.
    threshold: Duration,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn threshold_ms(&self) -> u64 {
        u64::try_from(self.threshold.as_millis()).unwrap_or(u64::MAX)
    }

    /// One watchdog tick at `now` (ms since `origin`).
    fn tick(&self, now: u64) {
        let gap = now.saturating_sub(self.last_tick.load(Ordering::SeqCst));
        if gap > self.threshold_ms() {
            // Held before the tick is fresh again: whoever sees the fresh tick also
            // sees the hold.
            self.held.store(true, Ordering::SeqCst);
            tracing::warn!(
                paused_secs = gap as f64 / 1000.0,
                "this process was stopped (paused, frozen or starved): emails, checkpoints and commits are held until the Kafka group says whether this worker still owns its tasks"
            );
        }
        self.last_tick.store(now, Ordering::SeqCst);
    }
}

impl PauseWatch {
    /// Starts the watchdog: a gap of more than `threshold` between its ticks is a pause.
    pub fn start(threshold: Duration) -> std::io::Result<PauseWatch> {
        let inner = Arc::new(Inner {
            origin: Instant::now(),
            last_tick: AtomicU64::new(0),
            held: AtomicBool::new(false),
            threshold,
        });
        // Ten ticks per threshold: a busy machine delays a tick a little, never by
        // the threshold, unless it is so starved that holding back is right anyway.
        let period = (threshold / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("churnwatch-pause-watch".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                // Ends when the last handle is gone.
                let Some(inner) = weak.upgrade() else { return };
                inner.tick(inner.now_ms());
            })?;
        Ok(PauseWatch { inner })
    }

    /// Whether the process may act as the owner of its tasks: no hold, and the watchdog
    /// ticked recently (a stale tick means the process just resumed from a pause the
    /// watchdog has not yet seen).
    pub fn may_act(&self) -> bool {
        let i = &self.inner;
        if i.held.load(Ordering::SeqCst) {
            return false;
        }
        let gap = i
            .now_ms()
            .saturating_sub(i.last_tick.load(Ordering::SeqCst));
        gap <= i.threshold_ms()
    }

    /// Whether a pause was seen and not yet lifted.
    pub fn held(&self) -> bool {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// Lifts the hold: the worker knows again which tasks it owns.
    pub fn lift(&self) {
        self.inner.held.store(false, Ordering::SeqCst);
    }

    /// A watch that never holds (tests and tools without a group).
    pub fn never() -> PauseWatch {
        PauseWatch {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                last_tick: AtomicU64::new(u64::MAX),
                held: AtomicBool::new(false),
                threshold: Duration::MAX,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_may_act() {
        let w = PauseWatch::start(Duration::from_millis(200)).expect("watch");
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(50));
            assert!(w.may_act());
        }
        assert!(!w.held());
    }

    #[test]
    fn a_stale_tick_refuses_at_once_and_a_gap_holds_until_lifted() {
        // No watchdog thread: the test plays its ticks.
        let i = Inner {
            origin: Instant::now(),
            last_tick: AtomicU64::new(1_000),
            held: AtomicBool::new(false),
            threshold: Duration::from_millis(200),
        };
        let w = PauseWatch { inner: Arc::new(i) };
        w.inner.tick(1_150);
        assert!(!w.held(), "a late tick within the threshold is no pause");
        // Right after a pause, before the watchdog ran: the last tick is long ago.
        std::thread::sleep(Duration::from_millis(300));
        w.inner
            .last_tick
            .store(w.inner.now_ms().saturating_sub(5_000), Ordering::SeqCst);
        assert!(!w.may_act(), "a stale tick must refuse");
        w.inner.tick(w.inner.now_ms());
        assert!(w.held(), "the gap holds");
        assert!(!w.may_act(), "a fresh tick does not lift the hold");
        w.lift();
        assert!(w.may_act());
    }

    #[test]
    fn never_never_holds() {
        let w = PauseWatch::never();
        assert!(w.may_act());
        assert!(!w.held());
    }
}
