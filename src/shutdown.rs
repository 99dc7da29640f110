//! Graceful shutdown: the first SIGTERM/SIGINT asks the worker to stop fetching and
//! finish the batch in hand; the grace period bounds how long that may take.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A stop request shared between the signal handler and the worker.
#[derive(Debug, Default)]
pub struct Shutdown {
    requested: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl Shutdown {
    /// Nothing requested yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks the worker to stop; it has `grace` to finish.
    pub fn request(&self, grace: Duration) {
        let mut d = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        if d.is_none() {
            *d = Some(Instant::now() + grace);
        }
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Whether the grace period has run out.
    pub fn expired(&self) -> bool {
        self.deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|d| Instant::now() >= d)
    }

    /// Time left in the grace period (None while no stop was asked for).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}
