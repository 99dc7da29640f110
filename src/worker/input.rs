//! The consumer side of the worker (docs/design.md §2 Path of one event, §4 Tasks):
//! polling records into their tasks, the partitions' watermarks and pauses, offsets
//! stored for the group commit, and the check that every input topic still exists.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::tasks::Tasks;
use super::Tally;
use crate::event::Limits;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::observe::{Observed, RecordMisrouted, RecordRejected, RecordTaken};
use crate::outbox::Entry;
use crate::source::kafka::{self, Rebalances, WorkerConsumer};
use crate::source::task::TaskMerge;

/// How often the loop asks the cluster whether every input topic still exists.
const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Soonest a consumer error naming an unknown topic triggers another check.
const TOPIC_CHECK_MIN_GAP: Duration = Duration::from_secs(1);

/// The consumer and what reading from it needs.
pub(super) struct Input {
    pub(super) consumer: WorkerConsumer,
    /// What the consumer's rebalance callback forwarded; the worker answers each.
    pub(super) rebalances: Rebalances,
    pub(super) topics: Vec<String>,
    topics_c: Vec<CString>,
    max_batch: usize,
    router: Router,
    watch: TopicWatch,
}

/// Routes a polled record into its task: lane, counts, the record checks, rejects.
struct Router {
    topics: Vec<String>,
    partitions: i32,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// Whether every input topic still exists, asked now and then.
struct TopicWatch {
    /// Input topics the cluster did not know at the last check.
    missing: Vec<String>,
    /// When the topics were last checked, and whether a consumer error asks for a check.
    checked: Instant,
    due: bool,
    health: Arc<Health>,
}

impl Input {
    /// The consumer of `topics` (with `partitions` each), reading at most `max_batch`
    /// records per poll round.
    pub(super) fn new(
        (consumer, rebalances): (WorkerConsumer, Rebalances),
        topics: &[String],
        (partitions, max_batch): (i32, usize),
        limits: &Limits,
        (health, metrics): (Arc<Health>, Arc<Metrics>),
    ) -> anyhow::Result<Input> {
        Ok(Input {
            consumer,
            rebalances,
            topics: topics.to_vec(),
            topics_c: topics
                .iter()
                .map(|t| CString::new(t.as_str()))
                .collect::<Result<_, _>>()
                .context("topic name contains a NUL byte")?,
            max_batch,
            router: Router {
                topics: topics.to_vec(),
                partitions,
                limits: *limits,
                metrics,
            },
            watch: TopicWatch {
                missing: Vec::new(),
                checked: Instant::now(),
                due: false,
                health,
            },
        })
    }

    /// Whether an input topic is missing: every task then waits for it (docs/design.md
    /// §4 Tasks).
    pub(super) fn topic_missing(&self) -> bool {
        !self.watch.missing.is_empty()
    }

    /// Polls up to one batch of records into their tasks; rejects become pending dead
    /// letters at once.
    pub(super) fn poll_batch(&mut self, tasks: &mut Tasks, tally: &mut Tally) {
        let mut timeout = Duration::from_millis(100);
        for _ in 0..self.max_batch {
            let msg = match self.consumer.poll(timeout) {
                // Also a poll that served a rebalance: it returns no record, so the loop
                // answers the rebalance before reading on.
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::UnknownTopic
                                | RDKafkaErrorCode::UnknownTopicId
                        )
                    ) {
                        self.watch.due = true;
                    }
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
            };
            timeout = Duration::ZERO;
            self.router.take(&msg, tasks, tally);
        }
    }

    /// Tells a task's merge its partitions' watermarks, as of their last fetch.
    pub(super) fn refresh_watermarks(&self, p: i32, merge: &mut TaskMerge) {
        for (lane, t) in self.topics_c.iter().enumerate() {
            let (low, high) = kafka::cached_watermarks(&self.consumer, t, p);
            merge.set_low_watermark(lane, low);
            merge.set_high_watermark(lane, high);
        }
    }

    /// Pauses and resumes partitions as the tasks' buffers decided.
    pub(super) fn pause_resume(&self, pause: &TopicPartitionList, resume: &TopicPartitionList) {
        if pause.count() > 0 {
            tracing::debug!(partitions = ?pause.to_topic_map().keys().collect::<Vec<_>>(), "pause");
            if let Err(e) = self.consumer.pause(pause) {
                tracing::warn!(error = %e, "cannot pause partitions");
            }
        }
        if resume.count() > 0 {
            tracing::debug!(partitions = ?resume.to_topic_map().keys().collect::<Vec<_>>(), "resume");
            if let Err(e) = self.consumer.resume(resume) {
                tracing::warn!(error = %e, "cannot resume partitions");
            }
        }
    }

    /// Stores settled checkpoint offsets, per (task, lane), for the periodic group
    /// commit; only for tasks still running here.
    pub(super) fn store_offsets(
        &self,
        latest: &BTreeMap<(i32, usize), i64>,
        running: impl Fn(i32) -> bool,
    ) {
        let mut tpl = TopicPartitionList::new();
        for (&(p, lane), &o) in latest {
            if running(p) {
                if let Err(e) = tpl.add_partition_offset(&self.topics[lane], p, Offset::Offset(o)) {
                    tracing::warn!(error = %e, "offset not stored");
                }
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                tracing::warn!(error = %e, "storing offsets failed");
            }
        }
    }

    /// Where each input topic's partition `p` starts (its low watermark), asked of the
    /// broker: where a fresh task starts and what its claim commits.
    pub(super) fn low_watermarks(&self, p: i32) -> anyhow::Result<Vec<i64>> {
        self.topics
            .iter()
            .map(|topic| {
                let (low, _) = self
                    .consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .with_context(|| format!("task {p}: cannot read where {topic} starts"))?;
                Ok(low)
            })
            .collect()
    }

    /// Asks the cluster, every `TOPIC_CHECK_INTERVAL` or soon after a consumer error
    /// about an unknown topic, whether every input topic still exists. A deleted one
    /// holds its tasks (their other partitions pause at the buffer bound), so it is
    /// logged once at error and keeps the worker not ready until it is back: the other
    /// topics' state is not moved on without it, in case it is recreated and refilled.
    pub(super) fn check_topics(&mut self) {
        let w = &mut self.watch;
        let since = w.checked.elapsed();
        let due = since >= TOPIC_CHECK_INTERVAL || (w.due && since >= TOPIC_CHECK_MIN_GAP);
        // While disconnected the request could only time out, stalling the loop.
        if !due || !w.health.connected() {
            return;
        }
        w.checked = Instant::now();
        w.due = false;
        let missing =
            match kafka::missing_topics(&self.consumer, &self.topics, Duration::from_secs(5)) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check that the input topics exist");
                    return;
                }
            };
        for t in missing.iter().filter(|t| !w.missing.contains(t)) {
            tracing::error!(topic = %t, "input topic {t} is missing (deleted?): the tasks reading it wait, their other partitions are paused at kafka.max_buffered_records, and the worker is not ready until it is back");
        }
        for t in w.missing.iter().filter(|t| !missing.contains(t)) {
            tracing::info!(topic = %t, "input topic {t} is back");
        }
        w.health.set_missing_topics(missing.clone());
        w.missing = missing;
    }
}

impl Router {
    /// Parses one record into its task's merge; a reject becomes a pending dead letter.
    fn take<M: Message>(&mut self, msg: &M, tasks: &mut Tasks, tally: &mut Tally) {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(lane) = self.topics.iter().position(|t| t == topic) else {
            return;
        };
        // Records fetched before a rebalance that dropped the task are read again.
        let Some(task) = tasks.running.get_mut(&partition) else {
            return;
        };
        tally.first_record.get_or_insert_with(Instant::now);
        RecordTaken.emit(&self.metrics, &mut tally.out);
        let checked = kafka::check_record(
            msg.key(),
            msg.payload(),
            (partition, self.partitions),
            &self.limits,
            crate::source::wall_now(),
        );
        if checked.misrouted {
            RecordMisrouted {
                topic,
                partition,
                offset,
            }
            .emit(&self.metrics, &mut tally.out);
        }
        match checked.event {
            Ok(ev) => {
                self.metrics.event(ev.kind.type_name());
                task.merge.push(lane, offset, ev)
            }
            Err(rej) => {
                RecordRejected {
                    topic,
                    partition,
                    offset,
                    class: rej.class,
                    reason: &rej.reason,
                }
                .emit(&self.metrics, &mut tally.out);
                task.pending.push(Entry::DeadLetter {
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                    headers: dead_letter_headers(msg, rej.class, &rej.reason),
                });
                task.merge.skip(lane, offset);
            }
        }
    }
}

/// The dead-letter headers: where the record came from and why it was rejected, then the
/// record's own headers.
fn dead_letter_headers<M: Message>(
    msg: &M,
    class: &str,
    reason: &str,
) -> Vec<(String, Option<Vec<u8>>)> {
    let own = |k: &str, v: &str| (k.to_string(), Some(v.as_bytes().to_vec()));
    let mut h = vec![
        own("churnwatch.source.topic", msg.topic()),
        own("churnwatch.source.partition", &msg.partition().to_string()),
        own("churnwatch.source.offset", &msg.offset().to_string()),
        own("churnwatch.reject.class", class),
        own("churnwatch.reject.reason", reason),
    ];
    if let Some(orig) = msg.headers() {
        for hd in orig.iter() {
            h.push((hd.key.to_string(), hd.value.map(<[u8]>::to_vec)));
        }
    }
    h
}
