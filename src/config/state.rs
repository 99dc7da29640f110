//! `[state]`: where and how often `run` makes its state durable.

use std::path::PathBuf;

use serde::Deserialize;

use super::values::Wait;
use crate::engine::clock::Span;
use crate::problems::Problems;

/// `[state]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// See the defaults file.
    pub dir: PathBuf,
    /// See the defaults file.
    pub checkpoint_interval: Wait,
    /// See the defaults file.
    pub retention: Span,
    /// See the defaults file.
    pub sends_log_max_bytes: u64,
}

/// The smallest bound of `sends.jsonl`: below a few records it would rotate at every line.
const MIN_SENDS_LOG_BYTES: u64 = 4096;

/// Where and how often `run` makes its state durable (docs/design.md §8 Checkpoint and outbox).
#[derive(Clone, Debug, PartialEq)]
pub struct StateSettings {
    /// Folder of the embedded store (one file per task).
    pub dir: PathBuf,
    /// How often each task's changes, offsets and decided effects are committed.
    pub checkpoint_interval: std::time::Duration,
    /// `sends.jsonl` is rotated to `sends.jsonl.1` before it would pass this.
    pub sends_log_max_bytes: u64,
}

impl RawState {
    /// Checks the section and builds its settings (`retention` goes to the engine, and
    /// is checked against the rules by the caller).
    pub fn validate(&self, p: &mut Problems) -> StateSettings {
        p.when(self.dir.as_os_str().is_empty(), || {
            "state.dir: must name a folder".into()
        });
        p.when(self.checkpoint_interval.0.is_zero(), || {
            "state.checkpoint_interval: must be positive".into()
        });
        p.when(self.sends_log_max_bytes < MIN_SENDS_LOG_BYTES, || format!(
            "state.sends_log_max_bytes: must be at least {MIN_SENDS_LOG_BYTES} (a few records), got {}",
            self.sends_log_max_bytes
        ));
        StateSettings {
            dir: self.dir.clone(),
            checkpoint_interval: self.checkpoint_interval.0,
            sends_log_max_bytes: self.sends_log_max_bytes,
        }
    }
}
