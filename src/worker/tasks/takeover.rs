//! Taking a task over from the changelog (docs/design.md §16 State follows tasks):
//! carry on from the local state when the changelog has nothing newer; else claim it
//! (the claim's offset is this worker's epoch), restore the latest complete state
//! written before the claim, write a full copy of it under the new epoch, then clear
//! what older epochs left. Nothing of the task's input is read before that.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};

use super::{open_store, Tasks};
use crate::changelog::{self, Apply, Cursor, Position, Restored, Restorer, Tail};
use crate::engine::settings::Settings;
use crate::health::Health;
use crate::worker::HandOver;

/// Rows per changelog write of a full copy (each followed by a marker, so a restorer
/// holds at most this many rows waiting).
const COPY_BATCH: usize = 5_000;

/// What taking a task over found.
pub(in crate::worker) enum TakenOver {
    /// Its state, carried on or restored and written under this worker's epoch: the
    /// task is running from these per-lane offsets, and its outbox left-overs are to be
    /// handed over.
    State(Vec<Option<i64>>, Option<HandOver>),
    /// The changelog holds no state for it (its store is now empty): the caller decides
    /// whether it may start fresh. The epoch to write under once it does.
    Nothing(u64),
}

impl Tasks {
    /// Takes task `p` over from the changelog: carried on from its local state, or
    /// claimed, restored, copied, cleaned up. `health` shows the restore's progress at
    /// `/readyz`; `resend_emails` as [`Tasks::start_local`].
    pub(in crate::worker) fn take_over(
        &mut self,
        p: i32,
        settings: Arc<Settings>,
        health: &Health,
        resend_emails: bool,
    ) -> anyhow::Result<TakenOver> {
        if let Some(carried) = self.carry_on(p, settings.clone(), health, resend_emails)? {
            return Ok(carried);
        }
        let log = self.changelog.as_ref().context("no changelog configured")?;
        let started = Instant::now();
        let epoch = log.write(p, &[changelog::claim(nonce(p), None, &who())])?[0];
        let epoch = u64::try_from(epoch).context("a negative claim offset")?;
        self.running.remove(&p);
        self.parked.remove(&p);
        self.positions.remove(&p);
        let st = open_store(&mut self.stores, &self.dir, p)?;
        let metrics = &self.metrics;
        // Every key read: once this epoch has its full copy, older ones are garbage.
        let mut old: HashSet<Vec<u8>> = HashSet::new();
        let mut before = epoch as i64;
        let (end, records) = loop {
            let mut r = Restorer::new(before);
            let mut w = st.restore()?;
            let records = log.read(p, 0, before, |offset, key, value| {
                if value.is_some() {
                    old.insert(key.to_vec());
                } else {
                    old.remove(key);
                }
                health.set_restoring(p, Some((offset + 1, epoch as i64)));
                metrics.restore_remaining.set(epoch as i64 - offset - 1);
                match r.feed(offset, changelog::read(offset, key, value)?) {
                    Apply::Nothing => {}
                    Apply::Clear => w.clear()?,
                    Apply::Rows(rows) => w.apply(&rows)?,
                }
                Ok(())
            })?;
            match r.finish() {
                // The newest claim never completed its copy: the state is the one before
                // it. The restore so far is dropped (not committed).
                Restored::ReadAgain { before: b } => before = b,
                end => {
                    w.finish()?;
                    break (end, records);
                }
            }
        };
        health.set_restoring(p, None);
        metrics.restore_remaining.set(0);
        let from = match end {
            Restored::Nothing => {
                tracing::info!(
                    task = p,
                    epoch,
                    records,
                    "changelog: no state for this task"
                );
                return Ok(TakenOver::Nothing(epoch));
            }
            Restored::State {
                epoch: from,
                marker,
            } => {
                let have = st.rows()?;
                if have != marker.rows {
                    bail!(
                        "task {p}: the changelog's last checkpoint (epoch {from}, number {}) has {} rows but {have} were found: some were removed (compacted before the task was restored?); refusing rather than start with part of its state",
                        marker.seq,
                        marker.rows
                    );
                }
                from
            }
            Restored::ReadAgain { .. } => unreachable!("read again above"),
        };
        // The full copy under this worker's epoch, then the old epochs' records cleared.
        let mut copied = 0u64;
        let mut seq = 0;
        let mut verified = Some(epoch as i64);
        let total = st.rows()?;
        st.for_each_row(COPY_BATCH, |rows| {
            copied += rows.len() as u64;
            seq += 1;
            let mut records: Vec<changelog::Record> =
                rows.iter().map(|c| changelog::row(epoch, c)).collect();
            let marker = changelog::Marker {
                seq,
                rows: total,
                complete: copied == total,
            };
            records.push(changelog::marker(epoch, marker));
            verified = changelog::verified_after(verified, &log.write(p, &records)?);
            Ok(())
        })?;
        let old: Vec<changelog::Record> = old.into_iter().map(|k| (k, None)).collect();
        for chunk in old.chunks(COPY_BATCH) {
            verified = changelog::verified_after(verified, &log.write(p, chunk)?);
        }
        // From here the local state can carry the epoch on (see `carry_on`).
        st.set_position(Position {
            epoch,
            seq,
            verified_to: verified,
            verified_seq: seq,
        })?;
        let (mut task, left) = self.load(p, settings)?;
        task.epoch = Some(Cell::new(Cursor {
            epoch,
            seq,
            verified_to: verified,
        }));
        let pos = task.checkpointed.clone();
        for (lane, o) in pos.iter().enumerate() {
            task.merge.start(lane, *o);
        }
        tracing::info!(
            task = p,
            epoch,
            from_epoch = from,
            records,
            rows = total,
            cleared = old.len(),
            secs = started.elapsed().as_secs_f64(),
            "task restored from the changelog"
        );
        self.positions.insert(p, pos.clone());
        self.running.insert(p, task);
        Ok(TakenOver::State(pos, Some(left)))
    }

    /// Starts task `p` from its local state, carrying its epoch on, when the changelog
    /// holds nothing newer (docs/design.md §16 "Carrying on"): a continuing claim marks
    /// the partition's end, and every record between the last one this store knows to
    /// be its own and that claim must be of the same epoch, without a gap, and end with
    /// the marker the store matches. None: a full take-over is needed.
    fn carry_on(
        &mut self,
        p: i32,
        settings: Arc<Settings>,
        health: &Health,
        resend_emails: bool,
    ) -> anyhow::Result<Option<TakenOver>> {
        let Some(pos) = self.positions.get(&p).cloned() else {
            return Ok(None);
        };
        let log = self.changelog.as_ref().context("no changelog configured")?;
        let st = open_store(&mut self.stores, &self.dir, p)?;
        let Some(at) = st.position()? else {
            return Ok(None);
        };
        if at.verified_to.is_none() {
            tracing::info!(
                task = p,
                "local state: its changelog position was never verified; restoring in full"
            );
            return Ok(None);
        }
        let started = Instant::now();
        let end = log.write(p, &[changelog::claim(nonce(p), Some(at.epoch), &who())])?[0];
        let Some(mut tail) = Tail::new(at, end) else {
            return Ok(None);
        };
        let records = log.read(p, tail.from(), end, |offset, key, value| {
            health.set_restoring(p, Some((offset + 1, end)));
            tail.feed(offset, changelog::read(offset, key, value)?);
            Ok(())
        })?;
        health.set_restoring(p, None);
        if let Err(why) = tail.finish() {
            tracing::info!(
                task = p,
                epoch = at.epoch,
                records,
                why,
                "local state is not the changelog's latest; restoring in full"
            );
            return Ok(None);
        }
        let left = self.start_local(p, pos.clone(), settings, resend_emails)?;
        if let Some(t) = self.running.get_mut(&p) {
            t.epoch = Some(Cell::new(Cursor {
                epoch: at.epoch,
                seq: at.seq,
                verified_to: Some(end),
            }));
        }
        tracing::info!(
            task = p,
            epoch = at.epoch,
            records,
            secs = started.elapsed().as_secs_f64(),
            "task carried on from its local state (the changelog holds nothing newer)"
        );
        Ok(Some(TakenOver::State(pos, left)))
    }

    /// Marks fresh task `p` (just started) as written under `epoch`: its first
    /// checkpoint is the epoch's full copy.
    pub(in crate::worker) fn set_epoch(&mut self, p: i32, epoch: u64) {
        if let Some(t) = self.running.get_mut(&p) {
            t.epoch = Some(Cell::new(Cursor {
                epoch,
                seq: 0,
                verified_to: Some(epoch as i64),
            }));
        }
    }
}

/// What makes this worker's claim key unique among every replica's.
fn nonce(p: i32) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{}/{}/{p}/{nanos}", who(), std::process::id());
    xxhash_rust::xxh3::xxh3_64(seed.as_bytes())
}

/// This replica, as its claims name it (for whoever reads the topic).
fn who() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("pid {}", std::process::id()))
}
