//! One round of deciding (docs/design.md §2 Path of one event, §5 Clock): each running
//! task's merged records through its engine, its clock moved by the wall clock once
//! caught up, and what the engine decided turned into pending outbox entries.

use std::time::Instant;

use rdkafka::topic_partition_list::TopicPartitionList;

use super::settings::Live;
use super::tasks::Task;
use super::Worker;
use crate::alert::{Alert, Decision};
use crate::config::ClockMode;
use crate::engine::clock::Stamp;
use crate::event::EventKind;
use crate::mail::mailer;
use crate::mail::sender::Sender;
use crate::metrics::Metrics;
use crate::observe::AlertDecided;
use crate::outbox::Entry;

impl Worker<'_> {
    /// Applies what every running task's merge releases, moves caught-up tasks' clocks
    /// to the wall clock, pauses or resumes partitions at the buffer bound, and updates
    /// readiness and gauges.
    pub(super) fn apply_tasks(&mut self) {
        // Sampled right after intake, where the buffers peak.
        let buffered: usize = self
            .tasks
            .running
            .values()
            .map(|t| t.merge.buffered())
            .sum();
        self.metrics.buffered.set(buffered as i64);
        let kafka = self.startup.kafka();
        let now = Instant::now();
        let wall = (self.startup.clock() == ClockMode::Wall)
            .then(wall_stamp)
            .flatten();
        // While an input topic is missing every task waits for it: taking the other
        // topics' records alone would order them before its records, should it be
        // recreated and refilled.
        let held = self.input.topic_missing();
        let sender = self.effects.sender();
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut alerts = Vec::new();
        let mut behind = 0;
        for (&p, task) in self.tasks.running.iter_mut() {
            self.input.refresh_watermarks(p, &mut task.merge);
            if !held {
                while let Some((_, rec)) = task.merge.next(now, kafka.max_task_idle) {
                    apply_event(task, rec.event, sender, &mut alerts);
                }
            }
            // A task waiting for one partition (idle, or its topic deleted) would
            // otherwise buffer the others' records without end.
            for (lane, topic) in self.input.topics.iter().enumerate() {
                let hold = task
                    .merge
                    .hold(lane, task.paused[lane], kafka.max_buffered_records);
                if hold != task.paused[lane] {
                    task.paused[lane] = hold;
                    let list = if hold { &mut pause } else { &mut resume };
                    list.add_partition(topic, p);
                }
            }
            if !held && task.merge.caught_up() {
                if let Some(w) = wall {
                    task.engine.advance(w, &mut alerts);
                }
            } else {
                behind += 1;
            }
            pend_alerts(task, &mut alerts, &self.live, &self.metrics);
        }
        self.input.pause_resume(&pause, &resume);
        self.set_paused_gauge();
        self.health.set_catching_up(behind);
        self.tasks.set_gauges();
    }

    /// Counts the partitions this worker has paused.
    pub(super) fn set_paused_gauge(&self) {
        let paused: usize = self
            .tasks
            .running
            .values()
            .map(|t| t.paused.iter().filter(|p| **p).count())
            .sum();
        self.metrics.paused.set(paused as i64);
    }
}

/// Applies one event to its task's engine. An event that makes a customer unreachable
/// also tells the sender, whose waiting emails for them (quiet hours, retries) must not
/// go (docs/design.md §10 Sender); only a change from reachable is told, so the sender
/// scans its queue rarely.
fn apply_event(
    task: &mut Task,
    event: crate::event::Event,
    sender: Option<&Sender>,
    alerts: &mut Vec<Alert>,
) {
    let reach = sender.filter(|_| {
        matches!(
            event.kind,
            EventKind::Unsubscribed
                | EventKind::Bounced { hard: true }
                | EventKind::Erased
                | EventKind::Profile(_)
        )
    });
    let watch = reach
        .filter(|_| task.engine.suppression(&event.customer_id).is_none())
        .map(|s| (s, event.customer_id.clone()));
    task.engine.apply(event, alerts);
    if let Some((s, id)) = watch {
        if let Some(why) = task.engine.suppression(&id) {
            s.suppress(&id, why.name());
        }
    }
}

/// Turns what the engine decided into the task's pending entries, in decision order: an
/// alert decided `email` is rendered now (with the live mail settings and templates),
/// so the outbox holds exactly the bytes that will be sent.
fn pend_alerts(task: &mut Task, alerts: &mut Vec<Alert>, live: &Live<'_>, metrics: &Metrics) {
    let domain = live.mail().message_id_domain.as_str();
    for mut alert in alerts.drain(..) {
        AlertDecided {
            rule: alert.rule,
            decision: alert.decision,
        }
        .emit(metrics);
        if alert.decision == Decision::Email {
            let email = mailer::render(live.mail(), live.templates(), &mut alert);
            task.pending.push(Entry::Email(email));
        }
        task.pending.push(Entry::Alert {
            key: alert.customer_id.to_string(),
            payload: alert.to_json(domain),
        });
    }
}

/// The wall clock as a stamp, for `clock = "wall"`.
fn wall_stamp() -> Option<Stamp> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Stamp::from_unix(i64::try_from(secs).ok()?)
}
