//! Answering the group (docs/design.md §11 Restart). The consumer's rebalance callback
//! only forwards what the group did; here, right after the `poll` that served it, the
//! worker decides (it owns the stores whose positions decide) and answers: `assign`
//! with the positions it chose, or, on revoke, checkpoint, settle, commit, `unassign`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::tasks::TakenOver;
use super::Worker;
use crate::source::kafka::{self, Rebalanced, Start};

impl Worker<'_> {
    /// Answers every rebalance forwarded since the last look, in order.
    pub(super) fn take_rebalances(&mut self) -> anyhow::Result<()> {
        for ev in self.input.rebalances.take() {
            match ev {
                Rebalanced::Revoked => self.revoke()?,
                Rebalanced::Assigned(partitions) => self.assign(&partitions)?,
            }
        }
        Ok(())
    }

    /// Checkpoint first, let what it handed over settle and commit its offsets while the
    /// partitions are still ours, so the group shows the next owner where this worker's
    /// state stands; then give them up. What is parked is exactly what the store holds
    /// (a lost grace period leaves entries in the outbox: handed over again, never lost).
    fn revoke(&mut self) -> anyhow::Result<()> {
        self.health.set_tasks(0, 0);
        // Held after a pause, a revoke is how the group says it moved on without us,
        // whatever librdkafka calls it: nothing more of these tasks may leave.
        if self.pause.held()
            || (self.tasks.has_changelog() && self.input.consumer.assignment_lost())
        {
            return self.drop_lost();
        }
        self.checkpoint_all()?;
        self.settle_all()?;
        match self.input.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "commit on revoke failed"),
        }
        self.effects.withdraw(&self.tasks);
        self.effects
            .take_reports(&self.tasks, &mut self.tally.out)?;
        kafka::unassign(&self.input.consumer);
        // Resumed only once given up: a partition resumed while still assigned would be
        // fetched again (perhaps from a topic just deleted).
        let resume = self.tasks.park_all();
        self.input
            .pause_resume(&rdkafka::TopicPartitionList::new(), &resume);
        self.set_paused_gauge();
        Ok(())
    }

    /// The group took the tasks away without asking (this worker missed its session
    /// timeout: paused, cut off): another member may own them already, so nothing more
    /// of them is checkpointed, handed over or committed. They are dropped, not parked;
    /// their next owner starts from the last checkpoint (restored from the changelog,
    /// or this worker's own store) (docs/design.md §16 State follows tasks).
    fn drop_lost(&mut self) -> anyhow::Result<()> {
        tracing::warn!(
            tasks = ?self.tasks.running.keys().collect::<Vec<_>>(),
            "tasks lost (this worker was out of the group too long): dropped without a checkpoint; their next owner starts from their last checkpoint"
        );
        self.hold.kept.clear();
        self.effects.withdraw(&self.tasks);
        kafka::unassign(&self.input.consumer);
        let resume = self.tasks.drop_all();
        self.input
            .pause_resume(&rdkafka::TopicPartitionList::new(), &resume);
        self.set_paused_gauge();
        Ok(())
    }

    /// Decides where each assigned task starts, or refuses it, and answers the group
    /// with that assignment; then starts the tasks and claims the fresh ones.
    fn assign(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        // An assignment is the group's word: this member owns exactly these now.
        if self.pause.held() {
            tracing::info!("the group answered after the pause with a new assignment");
            self.lift_hold()?;
        }
        if self.tasks.has_changelog() {
            return self.assign_from_changelog(partitions);
        }
        let timeout = Duration::from_secs(10);
        let (consumer, topics) = (&self.input.consumer, &self.input.topics);
        let committed = kafka::committed_lanes(consumer, topics, partitions, timeout)
            .inspect_err(|e| tracing::error!(error = %e, "cannot read the group's committed offsets; tasks without local state are refused until the next rebalance"))
            .ok();
        let tasks: BTreeSet<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let decided = self.tasks.decide(&tasks, committed.as_ref(), |task, c| {
            kafka::nothing_processed(consumer, topics, task, c, timeout)
        });
        kafka::assign(consumer, topics, partitions, &decided.accepted);
        for task in &decided.refused {
            tracing::error!(
                task,
                "task refused: its partitions have committed offsets but this worker has no state for them (state is restored from a changelog only in a later version); it stays unprocessed and the worker not ready"
            );
        }
        tracing::info!(
            tasks = ?decided.accepted.keys().collect::<Vec<_>>(),
            refused = ?decided.refused,
            "tasks assigned"
        );
        self.health
            .set_tasks(decided.accepted.len(), decided.refused.len());
        for (p, start) in decided.accepted {
            self.start_task(p, start)?;
        }
        Ok(())
    }

    /// With a changelog: each assigned task is taken over from it (claimed, restored,
    /// copied under this worker's epoch) before any of its input is read; one the
    /// changelog has no state for starts fresh only if nobody processed it, else it is
    /// refused — the changelog topic was deleted or lost records (docs/design.md §16).
    fn assign_from_changelog(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(10);
        let settings = self.live.engine().clone();
        let tasks: BTreeSet<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let mut accepted = BTreeMap::new();
        let mut refused = BTreeSet::new();
        let (mut handovers, mut fresh) = (Vec::new(), Vec::new());
        let mut committed = None;
        let resend = self.effects.sender().is_some();
        for &p in &tasks {
            match self
                .tasks
                .take_over(p, settings.clone(), &self.health, resend)
            {
                Ok(TakenOver::State(pos, left)) => {
                    accepted.insert(p, Start::Local(pos));
                    handovers.extend(left);
                }
                Ok(TakenOver::Nothing(epoch)) => {
                    let (consumer, topics) = (&self.input.consumer, &self.input.topics);
                    let c = committed.get_or_insert_with(|| {
                        kafka::committed_lanes(consumer, topics, partitions, timeout)
                            .inspect_err(|e| tracing::error!(error = %e, "cannot read the group's committed offsets"))
                            .ok()
                    });
                    let lanes = c.as_ref().map(|c| {
                        c.get(&p)
                            .cloned()
                            .unwrap_or_else(|| vec![None; topics.len()])
                    });
                    let unprocessed = lanes.as_ref().is_some_and(|l| {
                        l.iter().all(Option::is_none)
                            || kafka::nothing_processed(consumer, topics, p, l, timeout)
                    });
                    if unprocessed {
                        accepted.insert(p, Start::Fresh);
                        fresh.push((p, epoch));
                    } else {
                        tracing::error!(
                            task = p,
                            "task refused: the changelog has no state for it, but the group has committed offsets for its partitions (was the changelog topic deleted or recreated?); it stays unprocessed and the worker not ready"
                        );
                        refused.insert(p);
                    }
                }
                Err(e) => {
                    tracing::error!(task = p, error = %format!("{e:#}"), "task refused: it cannot be restored from the changelog; it stays unprocessed and the worker not ready");
                    refused.insert(p);
                }
            }
        }
        kafka::assign(
            &self.input.consumer,
            &self.input.topics,
            partitions,
            &accepted,
        );
        tracing::info!(
            tasks = ?accepted.keys().collect::<Vec<_>>(),
            refused = ?refused,
            "tasks assigned"
        );
        self.health.set_tasks(accepted.len(), refused.len());
        for h in handovers {
            self.effects
                .hand_over(&self.tasks, h, &mut self.tally.out)?;
        }
        for (p, epoch) in fresh {
            let lows = self.input.low_watermarks(p)?;
            self.tasks.start_fresh(p, settings.clone(), &lows);
            self.tasks.set_epoch(p, epoch);
            self.claim(p)?;
        }
        Ok(())
    }

    /// Starts an accepted task: from its local state (handing over what its outbox still
    /// holds), or fresh and then claimed.
    fn start_task(&mut self, p: i32, start: Start) -> anyhow::Result<()> {
        let settings = self.live.engine().clone();
        match start {
            Start::Local(pos) => {
                let resend = self.effects.sender().is_some();
                if let Some(h) = self.tasks.start_local(p, pos, settings, resend)? {
                    self.effects
                        .hand_over(&self.tasks, h, &mut self.tally.out)?;
                }
                Ok(())
            }
            Start::Fresh => {
                let lows = self.input.low_watermarks(p)?;
                self.tasks.start_fresh(p, settings, &lows);
                self.claim(p)
            }
        }
    }

    /// Claims a task nobody has processed: its first checkpoint (empty state, starting
    /// offsets) is committed to the store, then those offsets to the group, before
    /// anything is read. From then on another worker given the task sees committed
    /// offsets and refuses it unless it holds the state (docs/design.md §11 Restart),
    /// instead of starting it afresh a second time.
    fn claim(&mut self, p: i32) -> anyhow::Result<()> {
        self.checkpoint(p)?;
        let offsets = self.tasks.claimed_offsets(p);
        let commit: Vec<(&str, i32, i64)> = offsets
            .iter()
            .map(|(t, p, o)| (t.as_str(), *p, *o))
            .collect();
        kafka::commit_now(&self.input.consumer, &commit)
            .with_context(|| format!("task {p}: cannot commit its starting offsets"))?;
        tracing::info!(task = p, offsets = ?commit, "new task claimed");
        Ok(())
    }

    /// From now on the callback answers rebalances itself; one forwarded and not yet
    /// answered is answered with nothing (the group would wait for it forever).
    pub(super) fn stop_answering(&mut self) {
        for ev in self.input.rebalances.close() {
            if let Rebalanced::Assigned(_) = ev {
                kafka::assign_nothing(&self.input.consumer);
            }
        }
    }
}
