//! The tasks this worker runs and their lifecycle (docs/design.md §4 Tasks, §8
//! Checkpoint and outbox, §11 Restart): which assigned task may start and from where,
//! restoring one (parked, or loaded from its store), claiming a fresh one, and each
//! task's checkpoint. The worker owns the stores, so it alone decides: the consumer's
//! rebalance callback only forwards the assignment.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use rdkafka::topic_partition_list::TopicPartitionList;

mod takeover;

pub(super) use self::takeover::TakenOver;
use super::HandOver;
use super::Outcome;
use crate::changelog::{self, Cursor};
use crate::engine::settings::Settings;
use crate::engine::{Engine, Snapshot};
use crate::metrics::Metrics;
use crate::observe::{CheckpointCommitted, Observed};
use crate::outbox::Entry;
use crate::source::changelog::ChangelogTopic;
use crate::source::kafka::Start;
use crate::source::task::TaskMerge;
use crate::store::{self, Mirror, TaskStore};

/// One running (or parked) task: its engine, its merge of lanes, and what it decided
/// since its last checkpoint.
pub(super) struct Task {
    /// The task's own engine (its customers, clock and population statistics).
    pub(super) engine: Engine,
    /// Its lanes' records, released in event-time order.
    pub(super) merge: TaskMerge,
    /// Effects decided since the last checkpoint, in decision order.
    pub(super) pending: Vec<Entry>,
    /// Number of the next outbox entry.
    next_entry: u64,
    /// Per lane, the offsets of the last checkpoint.
    checkpointed: Vec<Option<i64>>,
    /// Per lane, whether its partition is paused (the task holds too many records).
    pub(super) paused: Vec<bool>,
    /// Where this worker stands in the changelog epoch it writes the task under (None:
    /// no changelog). A cell: mirroring happens through a shared borrow of the tasks.
    epoch: Option<Cell<Cursor>>,
}

impl Task {
    /// A mirror for the task's next store transaction (None: no changelog).
    fn mirror(&self) -> Option<Mirror> {
        self.epoch.as_ref().map(|c| Mirror::new(c.get()))
    }
}

impl Task {
    /// A task over `lanes` input topics, nothing decided yet.
    fn new(engine: Engine, lanes: usize) -> Task {
        Task {
            engine,
            merge: TaskMerge::new(lanes),
            pending: Vec::new(),
            next_entry: 0,
            checkpointed: vec![None; lanes],
            paused: vec![false; lanes],
            epoch: None,
        }
    }
}

/// What an assignment decided: the tasks that start and from where, and those refused.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Decided {
    /// The tasks that start, and from where.
    pub(super) accepted: BTreeMap<i32, Start>,
    /// The tasks not assigned: someone processed them and this worker has no state.
    pub(super) refused: BTreeSet<i32>,
}

/// Every task this worker holds: running, parked, and their stores.
pub(super) struct Tasks {
    /// The tasks assigned to this worker and started.
    pub(super) running: BTreeMap<i32, Task>,
    /// Tasks revoked from this worker, kept in case they come back (their state is
    /// that of their last checkpoint).
    parked: BTreeMap<i32, Task>,
    /// Every task store this worker has opened (kept open: they are locked files).
    stores: BTreeMap<i32, TaskStore>,
    /// Per task this worker has state for, the offset each lane's state has reached
    /// (its last checkpoint): what decides whether and where an assigned task starts.
    positions: BTreeMap<i32, Vec<Option<i64>>>,
    topics: Vec<String>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Where every store write is mirrored (None: `kafka.changelog = false`).
    changelog: Option<ChangelogTopic>,
}

impl Tasks {
    /// Opens every task store in `dir` and reads the positions their state reached.
    pub(super) fn open(
        dir: &Path,
        topics: &[String],
        metrics: Arc<Metrics>,
        changelog: Option<ChangelogTopic>,
    ) -> anyhow::Result<Tasks> {
        let mut stores = BTreeMap::new();
        let mut positions = BTreeMap::new();
        for p in store::tasks_in(dir)? {
            let st = TaskStore::open(dir, p)?;
            if let Some(offsets) = st.offsets()? {
                let lanes = topics.iter().map(|t| offsets.get(t).copied()).collect();
                tracing::info!(task = p, offsets = ?offsets, store = %st.path().display(), "state found");
                positions.insert(p, lanes);
            }
            stores.insert(p, st);
        }
        Ok(Tasks {
            running: BTreeMap::new(),
            parked: BTreeMap::new(),
            stores,
            positions,
            topics: topics.to_vec(),
            dir: dir.to_path_buf(),
            metrics,
            changelog,
        })
    }

    /// Whether store writes are mirrored to a changelog (and tasks taken over from it).
    pub(super) fn has_changelog(&self) -> bool {
        self.changelog.is_some()
    }

    /// The store of task `p`, if this worker has opened it.
    pub(super) fn store(&self, p: i32) -> Option<&TaskStore> {
        self.stores.get(&p)
    }

    /// The engine of running task `p`.
    pub(super) fn engine(&self, p: i32) -> Option<&Engine> {
        self.running.get(&p).map(|t| &t.engine)
    }

    /// Decides, for every task of an assignment, whether it starts and from where.
    /// `committed` holds the group's offsets per task (None when they could not be
    /// read: then no task can be told safe and all are refused); `nothing_processed`
    /// asks the broker whether a task's committed offsets are only a claim.
    pub(super) fn decide(
        &self,
        tasks: &BTreeSet<i32>,
        committed: Option<&BTreeMap<i32, Vec<Option<i64>>>>,
        nothing_processed: impl Fn(i32, &[Option<i64>]) -> bool,
    ) -> Decided {
        let none = vec![None; self.topics.len()];
        let mut d = Decided::default();
        for &task in tasks {
            let c = committed.and_then(|c| c.get(&task)).unwrap_or(&none);
            let start = decide_start(self.positions.get(&task), c, || nothing_processed(task, c));
            match start {
                // Without the group's offsets neither "nobody processed it" nor "nobody
                // moved it past our state" can be told.
                Some(s) if committed.is_some() => {
                    d.accepted.insert(task, s);
                }
                _ => {
                    d.refused.insert(task);
                }
            }
        }
        d
    }

    /// A task nobody has processed, reading each lane from `starts` (the partitions'
    /// low watermarks: what the claim stores and commits). Replaces a parked one.
    pub(super) fn start_fresh(&mut self, p: i32, settings: Arc<Settings>, starts: &[i64]) {
        self.parked.remove(&p);
        let mut task = Task::new(Engine::new(settings), self.topics.len());
        for (lane, low) in starts.iter().enumerate() {
            task.merge.start(lane, Some(*low));
        }
        self.running.insert(p, task);
    }

    /// Starts task `p` from its local state at `pos`: the parked engine (its emails are
    /// re-read from the outbox when `resend_emails`: they left the sender on revoke), or
    /// the store's last checkpoint (whose outbox left-overs are handed over first).
    pub(super) fn start_local(
        &mut self,
        p: i32,
        pos: Vec<Option<i64>>,
        settings: Arc<Settings>,
        resend_emails: bool,
    ) -> anyhow::Result<Option<HandOver>> {
        let (mut task, again) = match self.parked.remove(&p) {
            Some(t) => {
                let again = match self.stores.get(&p).filter(|_| resend_emails) {
                    Some(st) => {
                        let emails: Vec<(u64, Entry)> = st
                            .outbox()?
                            .into_iter()
                            .filter(|(_, e)| matches!(e, Entry::Email(_)))
                            .collect();
                        Some(HandOver::new(p, emails, Vec::new()))
                    }
                    None => None,
                };
                (t, again)
            }
            None => {
                let (t, left) = self.load(p, settings)?;
                (t, Some(left))
            }
        };
        for (lane, o) in pos.into_iter().enumerate() {
            task.merge.start(lane, o);
        }
        self.running.insert(p, task);
        Ok(again)
    }

    /// Task `p` as its store last checkpointed it, and what its outbox still holds.
    fn load(&mut self, p: i32, settings: Arc<Settings>) -> anyhow::Result<(Task, HandOver)> {
        let st = open_store(&mut self.stores, &self.dir, p)?;
        let started = Instant::now();
        let loaded = st
            .load(settings)?
            .with_context(|| format!("task {p}: its store has no checkpoint"))?;
        tracing::info!(
            task = p,
            customers = loaded.engine.len(),
            pending = loaded.pending.len(),
            secs = started.elapsed().as_secs_f64(),
            "state loaded"
        );
        let mut t = Task::new(loaded.engine, self.topics.len());
        t.next_entry = loaded.next_entry;
        t.checkpointed = self
            .topics
            .iter()
            .map(|topic| loaded.offsets.get(topic).copied())
            .collect();
        // What the outbox still holds was decided before the crash: finish it. Once that
        // settles, the group commit catches up with the store even if no new record
        // arrives.
        let offsets = lane_offsets(&t.checkpointed);
        Ok((t, HandOver::new(p, loaded.pending, offsets)))
    }

    /// The offsets a claim of task `p` commits: those of its first checkpoint.
    pub(super) fn claimed_offsets(&self, p: i32) -> Vec<(String, i32, i64)> {
        let Some(task) = self.running.get(&p) else {
            return Vec::new();
        };
        lane_offsets(&task.checkpointed)
            .into_iter()
            .map(|(lane, o)| (self.topics[lane].clone(), p, o))
            .collect()
    }

    /// One task's checkpoint (docs/design.md §8 Checkpoint and outbox): state changes,
    /// offsets and decided effects in one durable write. Returns the entries it made
    /// durable, to be handed over only now; None when the task did not move.
    pub(super) fn checkpoint(
        &mut self,
        p: i32,
        out: &mut Outcome,
    ) -> anyhow::Result<Option<HandOver>> {
        let Some(task) = self.running.get_mut(&p) else {
            return Ok(None);
        };
        let lanes: Vec<Option<i64>> = (0..task.merge.lanes())
            .map(|l| task.merge.committable(l).or(task.checkpointed[l]))
            .collect();
        if !task.engine.has_changes() && task.pending.is_empty() && lanes == task.checkpointed {
            return Ok(None);
        }
        let offsets: BTreeMap<String, i64> = lanes
            .iter()
            .enumerate()
            .filter_map(|(l, o)| o.map(|o| (self.topics[l].clone(), o)))
            .collect();
        let st = open_store(&mut self.stores, &self.dir, p)?;
        let first = task.next_entry;
        let mut m = task.mirror();
        st.checkpoint(&mut task.engine, &offsets, (&task.pending, first), m.as_mut())
            .with_context(|| format!("checkpoint of task {p} failed; stopping so that a restart resumes from the last good one"))?;
        // Effects leave only once the changelog has the checkpoint that decided them:
        // a replica taking the task over restores it and would decide them again.
        mirror(self.changelog.as_ref(), st, task, p, m)?;
        CheckpointCommitted.emit(&self.metrics, out);
        let entries = std::mem::take(&mut task.pending);
        task.next_entry = first + entries.len() as u64;
        task.checkpointed = lanes.clone();
        self.positions.insert(p, lanes.clone());
        let numbered: Vec<(u64, Entry)> = (first..).zip(entries).collect();
        Ok(Some(HandOver::new(p, numbered, lane_offsets(&lanes))))
    }

    /// Every running task is revoked: kept parked as of its last checkpoint. Returns the
    /// partitions this worker had paused, to be resumed once given up (librdkafka keeps
    /// an application's pause across assignments).
    pub(super) fn park_all(&mut self) -> TopicPartitionList {
        let mut resume = TopicPartitionList::new();
        for (&p, task) in self.running.iter_mut() {
            for (lane, paused) in task.paused.iter_mut().enumerate() {
                if std::mem::take(paused) {
                    resume.add_partition(&self.topics[lane], p);
                }
            }
        }
        self.parked.append(&mut self.running);
        resume
    }

    /// Every running task is dropped (lost to the group): what it decided since its
    /// last checkpoint is forgotten; its store still holds that checkpoint, so the
    /// task can start from it when given back (after the usual checks: the group's
    /// offsets, or the changelog). Returns the partitions to resume, as
    /// [`Tasks::park_all`].
    pub(super) fn drop_all(&mut self) -> TopicPartitionList {
        let resume = self.park_all();
        let lost: Vec<i32> = self.parked.keys().copied().collect();
        for p in lost {
            self.parked.remove(&p);
            let stored = self.stores.get(&p).map(TaskStore::offsets);
            match stored {
                Some(Ok(Some(offsets))) => {
                    let lanes = self
                        .topics
                        .iter()
                        .map(|t| offsets.get(t).copied())
                        .collect();
                    self.positions.insert(p, lanes);
                }
                Some(Err(e)) => {
                    tracing::warn!(task = p, error = %e, "cannot read the dropped task's stored offsets; it is treated as having no state");
                    self.positions.remove(&p);
                }
                _ => {
                    self.positions.remove(&p);
                }
            }
        }
        resume
    }

    /// New engine settings (a reload) for every running and parked task.
    pub(super) fn set_settings(&mut self, settings: &Arc<Settings>) {
        for t in self.running.values_mut().chain(self.parked.values_mut()) {
            t.engine.set_settings(settings.clone());
        }
    }

    /// Answers `GET /customers/{id}` from the stores of the running tasks (as of their
    /// last checkpoint, the same view `inspect` has of a stopped worker).
    pub(super) fn answer(&self, queries: &crate::admin::Queries, settings: &Arc<Settings>) {
        for q in queries.take() {
            let mut answer = Ok(None);
            for p in self.running.keys() {
                let Some(st) = self.stores.get(p) else {
                    continue;
                };
                match crate::inspect::in_store(st, *p, settings.clone(), &q.id, q.personal) {
                    Ok(None) => continue,
                    Ok(Some(v)) => answer = Ok(Some(v)),
                    Err(e) => answer = Err(e.to_string()),
                }
                break;
            }
            // The asker may have given up; nothing to do then.
            let _ = q.reply.send(answer);
        }
    }

    /// CRR and win-back conversion over the running tasks (sums of each task's
    /// numbers, so the rate is the whole population's, not an average of tasks).
    pub(super) fn set_outcome_metrics(&self, crr_days: u16) {
        let mut crr: Option<crate::engine::retention::Crr> = None;
        let (mut touched, mut converted) = ([0u64; 2], [0u64; 2]);
        let evicted: u64 = self
            .running
            .values()
            .map(|t| t.engine.dedup_evicted())
            .sum();
        self.metrics
            .dedup_evicted
            .set(i64::try_from(evicted).unwrap_or(i64::MAX));
        for t in self.running.values() {
            if let Some(c) = t.engine.retention(crr_days) {
                crr.get_or_insert_default().add(c);
            }
            let st = t.engine.stats();
            for i in 0..2 {
                touched[i] += st.winback_touched[i];
                converted[i] += st.winback_converted[i];
            }
        }
        self.metrics.set_outcomes(crr, touched, converted);
    }

    /// Gauges of the running tasks: lag, customers, tasks.
    pub(super) fn set_gauges(&self) {
        let lag: i64 = self.running.values().map(|t| t.merge.lag()).sum();
        self.metrics.lag.set(lag);
        let customers: usize = self.running.values().map(|t| t.engine.len()).sum();
        self.metrics.customers.set(customers as i64);
        self.metrics.tasks.set(self.running.len() as i64);
    }

    /// The outbox gauge: entries waiting in the running tasks' stores (a store that
    /// cannot be read counts nothing; the next checkpoint reports its error).
    pub(super) fn set_outbox_gauge(&self) {
        let waiting: u64 = self
            .running
            .keys()
            .filter_map(|p| self.stores.get(p))
            .filter_map(|st| st.outbox_len().ok())
            .sum();
        self.metrics.outbox.set(waiting as i64);
    }

    /// Effects decided and not yet checkpointed, across the running tasks.
    pub(super) fn pending(&self) -> usize {
        self.running.values().map(|t| t.pending.len()).sum()
    }

    /// Records the broker holds beyond what the running tasks have taken.
    pub(super) fn lag(&self) -> i64 {
        self.running.values().map(|t| t.merge.lag()).sum()
    }

    /// Every running task's customers, sorted by id.
    pub(super) fn snapshots(&self) -> Vec<Snapshot> {
        let mut snaps: Vec<Snapshot> = self
            .running
            .values()
            .flat_map(|t| t.engine.snapshots_sorted())
            .collect();
        snaps.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        snaps
    }

    /// Removes finished entries from task `p`'s outbox, synced, and from its changelog.
    pub(super) fn mark_done(&self, p: i32, entries: &[u64]) -> anyhow::Result<()> {
        let Some(st) = self.stores.get(&p).filter(|_| !entries.is_empty()) else {
            return Ok(());
        };
        let task = self.task(p);
        let mut m = task.and_then(Task::mirror);
        st.mark_done(entries.iter().copied(), m.as_mut())?;
        match task {
            Some(t) => mirror(self.changelog.as_ref(), st, t, p, m),
            None => Ok(()),
        }
    }

    /// Stores when email entries of task `p` first failed, and mirrors that.
    pub(super) fn note_first_failures(&self, p: i32, entries: &[(u64, i64)]) -> anyhow::Result<()> {
        let Some(st) = self.stores.get(&p) else {
            return Ok(());
        };
        let task = self.task(p);
        let mut m = task.and_then(Task::mirror);
        st.note_first_failures(entries, m.as_mut())?;
        match task {
            Some(t) => mirror(self.changelog.as_ref(), st, t, p, m),
            None => Ok(()),
        }
    }

    /// Task `p`, running or parked.
    fn task(&self, p: i32) -> Option<&Task> {
        self.running.get(&p).or_else(|| self.parked.get(&p))
    }

    /// [`Tasks::mark_done`] after a disk fault: redb refuses every write after a failed
    /// one until the file is reopened, so a store whose removal fails is reopened and
    /// tried once more. False when the entries could not be removed.
    pub(super) fn mark_done_reopening(&mut self, p: i32, entries: &[u64]) -> bool {
        if self.mark_done(p, entries).is_ok() {
            return true;
        }
        self.stores.remove(&p);
        match TaskStore::open(&self.dir, p) {
            Ok(st) => {
                self.stores.insert(p, st);
                self.mark_done(p, entries).is_ok()
            }
            Err(_) => false,
        }
    }
}

/// Writes a store transaction's rows (`m`) of task `p` to the changelog under the
/// task's epoch, then a marker, and waits for both (docs/design.md §16). Where they
/// landed tells how far the partition is known to hold only this worker's records.
fn mirror(
    log: Option<&ChangelogTopic>,
    st: &TaskStore,
    task: &Task,
    p: i32,
    m: Option<Mirror>,
) -> anyhow::Result<()> {
    let (Some(log), Some(cursor), Some(m)) = (log, &task.epoch, m) else {
        return Ok(());
    };
    if m.changes.is_empty() {
        return Ok(());
    }
    let at = m.at;
    let mut records: Vec<changelog::Record> = m
        .changes
        .iter()
        .map(|c| changelog::row(at.epoch, c))
        .collect();
    let marker = changelog::Marker {
        seq: at.seq + 1,
        rows: st.rows()?,
        complete: true,
    };
    records.push(changelog::marker(at.epoch, marker));
    let offsets = log.write(p, &records)
        .with_context(|| format!("task {p}: cannot write its changelog; stopping so that the next owner restores the last checkpoint it has"))?;
    let verified = changelog::verified_after(at.verified_to, &offsets);
    if verified.is_none() && at.verified_to.is_some() {
        tracing::warn!(
            task = p,
            epoch = at.epoch,
            "changelog: another writer's records landed between this worker's; the task's next assignment restores it in full"
        );
    }
    cursor.set(Cursor {
        seq: marker.seq,
        verified_to: verified,
        ..at
    });
    Ok(())
}

/// The task store of `p`, opened on first use (kept open: the file stays locked).
fn open_store<'s>(
    stores: &'s mut BTreeMap<i32, TaskStore>,
    dir: &Path,
    p: i32,
) -> Result<&'s TaskStore, store::StoreError> {
    match stores.entry(p) {
        std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::btree_map::Entry::Vacant(v) => Ok(v.insert(TaskStore::open(dir, p)?)),
    }
}

/// Where a task assigned to this worker starts, or None when it must be refused
/// (docs/design.md §11 Restart): from its local state (`local`, per lane the offset that
/// state has reached) unless the group has `committed` a lane beyond it — someone else
/// moved the task on; with no local state, fresh only if `nothing_processed` (nothing
/// committed, or only a claim at the partitions' start), since a task someone processed
/// is never started empty.
fn decide_start(
    local: Option<&Vec<Option<i64>>>,
    committed: &[Option<i64>],
    nothing_processed: impl FnOnce() -> bool,
) -> Option<Start> {
    match local {
        Some(local) => {
            let moved_on = local.iter().zip(committed).any(|(l, c)| match c {
                Some(c) => l.is_none_or(|l| *c > l),
                None => false,
            });
            (!moved_on).then(|| Start::Local(local.clone()))
        }
        None => nothing_processed().then_some(Start::Fresh),
    }
}

/// (lane, offset) for every lane whose offset is known.
pub(super) fn lane_offsets(lanes: &[Option<i64>]) -> Vec<(usize, i64)> {
    lanes
        .iter()
        .enumerate()
        .filter_map(|(l, o)| o.map(|o| (l, o)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_state_starts_where_it_stands_unless_the_group_moved_past_it() {
        let local = vec![Some(10), None];
        let never = || panic!("not asked when there is local state");
        assert_eq!(
            decide_start(Some(&local), &[Some(10), None], never),
            Some(Start::Local(local.clone()))
        );
        assert_eq!(decide_start(Some(&local), &[Some(11), None], never), None);
        assert_eq!(
            decide_start(Some(&local), &[None, Some(0)], never),
            None,
            "a lane this state never read, committed by someone"
        );
    }

    #[test]
    fn without_the_groups_offsets_every_task_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let topics = ["shop.purchases".to_string()];
        let tasks = Tasks::open(dir.path(), &topics, Arc::default(), None).expect("tasks");
        let assigned: BTreeSet<i32> = [0, 1].into();
        let d = tasks.decide(&assigned, None, |_, _| true);
        assert!(d.accepted.is_empty());
        assert_eq!(d.refused, assigned);
        let committed: BTreeMap<i32, Vec<Option<i64>>> =
            [(0, vec![None]), (1, vec![Some(5)])].into();
        let d = tasks.decide(&assigned, Some(&committed), |_, c| {
            c.iter().all(Option::is_none)
        });
        assert_eq!(d.accepted, [(0, Start::Fresh)].into());
        assert_eq!(d.refused, [1].into());
    }

    #[test]
    fn without_local_state_only_an_unprocessed_task_starts_fresh() {
        assert_eq!(decide_start(None, &[None], || true), Some(Start::Fresh));
        assert_eq!(decide_start(None, &[Some(5)], || false), None);
    }
}
