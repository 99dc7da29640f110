//! The worker's readiness as the admin endpoint will report it (`/readyz`, README "Admin endpoint and logs"):
//! connected to Kafka, every input topic there, tasks assigned and none refused, caught
//! up enough to decide.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Shared readiness state; every change of connection is logged once.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    assigned: AtomicBool,
    tasks: AtomicUsize,
    refused: AtomicUsize,
    catching_up: AtomicUsize,
    /// Why the worker stopped for good (a full or read-only state volume).
    stopped: Mutex<Option<String>>,
    /// Input topics the cluster no longer knows (deleted while running).
    missing_topics: Mutex<Vec<String>>,
    /// Why the cluster turns the worker away (a TLS certificate, a refused login),
    /// until it connects.
    refused_by_kafka: Mutex<Option<String>>,
    /// Tasks being restored from the changelog: (offset read up to, offset to reach).
    restoring: Mutex<std::collections::BTreeMap<i32, (i64, i64)>>,
}

impl Health {
    /// A fresh state: not connected, nothing assigned.
    pub fn new() -> Health {
        Health::default()
    }

    /// Whether a broker is reachable.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Records the connection state (from client statistics and errors).
    pub fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        if up {
            self.set_refused_by_kafka(None);
        }
        if was != up {
            if up {
                tracing::info!("kafka connected");
            } else {
                tracing::warn!("kafka disconnected: not ready; reconnecting");
            }
        }
    }

    /// Records an assignment: `running` tasks started, `refused` refused.
    pub fn set_tasks(&self, running: usize, refused: usize) {
        self.assigned.store(true, Ordering::Relaxed);
        self.tasks.store(running, Ordering::Relaxed);
        self.refused.store(refused, Ordering::Relaxed);
    }

    /// Records how many running tasks have not caught up with their partitions.
    pub fn set_catching_up(&self, tasks: usize) {
        self.catching_up.store(tasks, Ordering::Relaxed);
    }

    /// The worker stopped and will not resume in this process (e.g. a full volume):
    /// not ready from now on, saying why.
    pub fn set_stopped(&self, why: &str) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_string());
    }

    /// Why the worker stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records why the cluster turns the worker away (None: it no longer does); true
    /// when that differs from before, so the finder logs each cause once.
    pub fn set_refused_by_kafka(&self, why: Option<String>) -> bool {
        let mut was = self
            .refused_by_kafka
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = *was != why;
        *was = why;
        changed
    }

    /// Records how far the restore of task `task` from the changelog has read (None:
    /// it ended).
    pub fn set_restoring(&self, task: i32, progress: Option<(i64, i64)>) {
        let mut r = self
            .restoring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match progress {
            Some(p) => r.insert(task, p),
            None => r.remove(&task),
        };
    }

    /// Records which input topics are missing from the cluster (empty: none).
    pub fn set_missing_topics(&self, topics: Vec<String>) {
        *self
            .missing_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = topics;
    }

    /// Tasks running.
    pub fn tasks(&self) -> usize {
        self.tasks.load(Ordering::Relaxed)
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let mut why = Vec::new();
        if let Some(s) = self.stopped() {
            why.push(format!("worker stopped: {s}"));
        }
        if !self.connected() {
            match &*self
                .refused_by_kafka
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
            {
                Some(cause) => why.push(format!("not connected to Kafka: {cause}")),
                None => why.push("not connected to Kafka".to_string()),
            }
        }
        if !self.assigned.load(Ordering::Relaxed) {
            why.push("no partition assignment yet".to_string());
        }
        for t in self
            .missing_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            why.push(format!("input topic {t} is missing"));
        }
        let refused = self.refused.load(Ordering::Relaxed);
        if refused > 0 {
            why.push(format!(
                "{refused} task(s) refused: processed elsewhere, and no state here or in a changelog to start from (the log says which)"
            ));
        }
        for (task, (at, of)) in self
            .restoring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            why.push(format!(
                "task {task} restoring from the changelog (offset {at} of {of})"
            ));
        }
        let behind = self.catching_up.load(Ordering::Relaxed);
        if behind > 0 {
            why.push(format!("{behind} task(s) catching up"));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_connected_assigned_and_caught_up() {
        let h = Health::new();
        assert!(h.readiness().is_err());
        h.set_connected(true);
        assert!(h.readiness().unwrap_err().contains("assignment"));
        h.set_tasks(2, 0);
        assert!(h.readiness().is_ok());
        h.set_catching_up(1);
        assert!(h.readiness().unwrap_err().contains("catching up"));
        h.set_catching_up(0);
        h.set_tasks(1, 1);
        assert!(h.readiness().unwrap_err().contains("refused"));
        h.set_tasks(2, 0);
        h.set_missing_topics(vec!["shop.support".into()]);
        assert_eq!(
            h.readiness().unwrap_err(),
            "input topic shop.support is missing"
        );
        h.set_missing_topics(Vec::new());
        assert!(h.readiness().is_ok());
        h.set_restoring(3, Some((120, 500)));
        assert_eq!(
            h.readiness().unwrap_err(),
            "task 3 restoring from the changelog (offset 120 of 500)"
        );
        h.set_restoring(3, None);
        assert!(h.readiness().is_ok());
        h.set_connected(false);
        assert!(h.readiness().unwrap_err().contains("not connected"));
        h.set_refused_by_kafka(Some("authentication refused".into()));
        assert!(h
            .readiness()
            .unwrap_err()
            .contains("not connected to Kafka: authentication refused"));
        // Connecting forgets the refusal: a later disconnect has no stale cause.
        h.set_connected(true);
        h.set_connected(false);
        assert!(!h.readiness().unwrap_err().contains("refused"));
        h.set_connected(true);
        h.set_stopped("state volume full (…) at /st: stopping");
        assert!(h
            .readiness()
            .unwrap_err()
            .contains("worker stopped: state volume full"));
    }
}
