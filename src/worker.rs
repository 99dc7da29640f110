//! `churnwatch run`: the service loop (SPEC §2, §4–§6).
//!
//! One thread polls the consumer, feeds each record to its task (partition `p` of every
//! input topic), applies the task's merged records to the task's own engine, and then
//! does the batch's effects: alerts to the alerts topic, rejects to the dead-letter
//! topic, emails to the transport. Only when every one of them is acknowledged are the
//! batch's offsets stored for the periodic commit: at-least-once, and a crash never
//! skips an effect. State lives in memory in this version; the position each task's
//! state has reached is kept so that a task given back after a rebalance continues
//! exactly where its state stands.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use crate::alert::{Alert, Decision};
use crate::config::{ClockMode, Config};
use crate::engine::clock::Stamp;
use crate::engine::{Engine, Snapshot};
use crate::event;
use crate::health::Health;
use crate::mail::mailer::FileMailer;
use crate::mail::template::Templates;
use crate::publisher::Publisher;
use crate::shutdown::Shutdown;
use crate::source::kafka::{self, Rebalanced, Shared, Start, TopicError, WorkerContext};
use crate::source::task::TaskMerge;

/// Options of `churnwatch run` beyond the config.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// At shutdown, write the state of every customer this worker holds (JSONL).
    pub export_customers: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Records consumed.
    pub records: u64,
    /// Records rejected to the dead-letter topic.
    pub rejected: u64,
    /// Records whose partition is not murmur2 of their key.
    pub misrouted: u64,
    /// Alerts published.
    pub alerts: u64,
    /// Emails written.
    pub emails: u64,
    /// From the first record taken to the last one done.
    pub busy: Duration,
    /// False when the grace period ran out with effects unacknowledged (their records
    /// are read again next time).
    pub clean: bool,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.busy.as_secs_f64();
        let rate = if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "consumed {} records ({} rejected to the dead-letter topic, {} misrouted) in {:.3}s from the first to the last: {:.0} records/s; {} alerts published, {} emails written",
            self.records, self.rejected, self.misrouted, secs, rate, self.alerts, self.emails
        )
    }
}

struct Task {
    engine: Engine,
    merge: TaskMerge,
}

/// Offsets a batch's effects cover: (task, lane, next offset).
type Covered = Vec<(i32, usize, i64)>;

/// More closed batches than this in flight and the loop waits for acknowledgements.
const MAX_UNSETTLED: usize = 16;

struct Worker<'a> {
    cfg: &'a Config,
    shutdown: &'a Shutdown,
    health: Arc<Health>,
    consumer: kafka::WorkerConsumer,
    publisher: Publisher<Covered>,
    shared: Arc<Mutex<Shared>>,
    topics: Vec<String>,
    topics_c: Vec<CString>,
    partitions: i32,
    tasks: BTreeMap<i32, Task>,
    /// Tasks revoked from this worker, kept in case they come back.
    parked: BTreeMap<i32, Task>,
    mailer: FileMailer<'a>,
    out: Outcome,
    first_record: Option<Instant>,
    last_done: Option<Instant>,
    misrouted_warned: bool,
}

/// Runs the service until `shutdown` is requested. Blocking: call it from a thread of
/// its own.
pub fn run(
    cfg: &Config,
    templates: &Templates,
    shutdown: &Shutdown,
    health: Arc<Health>,
    opts: &Options,
) -> anyhow::Result<Outcome> {
    if cfg.transport != "file" {
        bail!(
            "delivery.transport = \"{}\" is not available in this version of `run`; use \"file\" (emails as .eml in delivery.file_dir)",
            cfg.transport
        );
    }
    let k = &cfg.kafka;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let ctx = WorkerContext::new(k.topics.clone(), health.clone(), shared.clone());
    let consumer = kafka::consumer(k, ctx)?;
    let producer_cfg = kafka::producer_config(k);
    tracing::info!(config = %kafka::describe(&producer_cfg), "kafka producer");
    let publisher = Publisher::new(&producer_cfg)?;
    let partitions = loop {
        match kafka::check_topics(&consumer, k, Duration::from_secs(10)) {
            Ok(n) => break n,
            Err(TopicError::Invalid(problems)) => {
                bail!("cannot start: {}", problems.join("; "))
            }
            Err(e @ TopicError::Unreachable(_)) => {
                tracing::warn!(error = %e, "waiting for the Kafka cluster");
                if shutdown.requested() {
                    return Ok(Outcome {
                        clean: true,
                        ..Outcome::default()
                    });
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    let topic_refs: Vec<&str> = k.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(topics = ?k.topics, partitions, group = %k.group_id, "subscribed");
    let mailer = FileMailer::new(&cfg.mail, templates, &cfg.file_dir, true)?;
    let mut w = Worker {
        cfg,
        shutdown,
        health,
        consumer,
        publisher,
        shared,
        topics_c: k
            .topics
            .iter()
            .map(|t| CString::new(t.as_str()))
            .collect::<Result<_, _>>()
            .context("topic name contains a NUL byte")?,
        topics: k.topics.clone(),
        partitions,
        tasks: BTreeMap::new(),
        parked: BTreeMap::new(),
        mailer,
        out: Outcome::default(),
        first_record: None,
        last_done: None,
        misrouted_warned: false,
    };
    let clean = w.main_loop()?;
    w.out.clean = clean;
    w.finish(opts)?;
    Ok(w.out)
}

impl<'a> Worker<'a> {
    fn main_loop(&mut self) -> anyhow::Result<bool> {
        let mut alerts = Vec::new();
        let mut last_report = Instant::now();
        let mut reported_records = 0;
        while !self.shutdown.requested() {
            self.poll_batch()?;
            self.take_rebalances();
            let now = Instant::now();
            let wall = wall_stamp();
            let mut behind = 0;
            for (&p, task) in self.tasks.iter_mut() {
                for (lane, t) in self.topics_c.iter().enumerate() {
                    let (low, high) = kafka::cached_watermarks(&self.consumer, t, p);
                    task.merge.set_low_watermark(lane, low);
                    task.merge.set_high_watermark(lane, high);
                }
                while let Some((_, rec)) = task.merge.next(now, self.cfg.kafka.max_task_idle) {
                    task.engine.apply(rec.event, &mut alerts);
                }
                if task.merge.caught_up() {
                    if self.cfg.clock == ClockMode::Wall {
                        if let Some(w) = wall {
                            task.engine.advance(w, &mut alerts);
                        }
                    }
                } else {
                    behind += 1;
                }
            }
            self.health.set_catching_up(behind);
            self.publish(&mut alerts)?;
            let covered = self.covered();
            self.publisher.close(covered);
            self.store_settled();
            while self.publisher.unsettled() > MAX_UNSETTLED {
                if self.shutdown.expired() {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(1));
                self.store_settled();
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                let secs = last_report.elapsed().as_secs_f64();
                let lag: i64 = self.tasks.values().map(|t| t.merge.lag()).sum();
                tracing::info!(
                    records = self.out.records,
                    per_sec = ((self.out.records - reported_records) as f64 / secs).round(),
                    lag,
                    tasks = self.tasks.len(),
                    alerts = self.out.alerts,
                    "progress"
                );
                reported_records = self.out.records;
                last_report = Instant::now();
            }
        }
        Ok(self.settle_all())
    }

    /// Waits until every closed batch is settled and stored; false when the shutdown
    /// grace period ran out first.
    fn settle_all(&mut self) -> bool {
        loop {
            self.store_settled();
            if self.publisher.unsettled() == 0 {
                return true;
            }
            if self.shutdown.expired() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Polls up to one batch of records into their tasks; rejects go out at once.
    fn poll_batch(&mut self) -> anyhow::Result<()> {
        let mut timeout = Duration::from_millis(100);
        for _ in 0..self.cfg.kafka.max_batch {
            let msg = match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
            };
            timeout = Duration::ZERO;
            let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
            let Some(lane) = self.topics.iter().position(|t| t == topic) else {
                continue;
            };
            // Records fetched before a rebalance that dropped the task are read again.
            if !self.tasks.contains_key(&partition) {
                continue;
            }
            self.first_record.get_or_insert_with(Instant::now);
            self.out.records += 1;
            let payload = msg.payload().unwrap_or_default();
            let parsed = event::parse(payload);
            if let Some(key) = msg.key() {
                if kafka::partition_for(key, self.partitions) != partition {
                    self.out.misrouted += 1;
                    if !self.misrouted_warned {
                        self.misrouted_warned = true;
                        tracing::warn!(topic, partition, offset, "record's partition is not murmur2 of its key: its customer's events may be split across tasks (producers must use partitioner=murmur2_random); counted, further ones not logged");
                    }
                }
            }
            match parsed {
                Ok(ev) => {
                    if let Some(t) = self.tasks.get_mut(&partition) {
                        t.merge.push(lane, offset, ev);
                    }
                }
                Err(rej) => {
                    self.out.rejected += 1;
                    tracing::info!(topic, partition, offset, class = rej.class, reason = %rej.reason, "record rejected to the dead-letter topic");
                    let dead = dead_letter(&msg, rej.class, &rej.reason);
                    self.publisher.send(
                        &self.cfg.kafka.dlq_topic,
                        msg.key(),
                        payload,
                        Some(dead),
                    )?;
                    if let Some(t) = self.tasks.get_mut(&partition) {
                        t.merge.skip(lane, offset);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies what rebalances decided since the last look.
    fn take_rebalances(&mut self) {
        let events = std::mem::take(
            &mut self
                .shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .events,
        );
        for ev in events {
            match ev {
                Rebalanced::Revoked => {
                    // Batches in flight must settle first, so that the positions kept
                    // match the state kept (a lost grace period keeps them older:
                    // records are then read again, never skipped).
                    self.settle_all();
                    // Keep each task's engine: if the task comes back, its state continues
                    // from the stored positions. Buffered records are read again.
                    self.parked.append(&mut self.tasks);
                }
                Rebalanced::Assigned(starts) => {
                    for (p, start) in starts {
                        let lanes = self.topics.len();
                        let task = match start {
                            Start::Local(pos) => {
                                let mut t = self.parked.remove(&p).unwrap_or_else(|| Task {
                                    engine: Engine::new(Arc::new(self.cfg.engine.clone())),
                                    merge: TaskMerge::new(lanes),
                                });
                                for (lane, o) in pos.into_iter().enumerate() {
                                    t.merge.start(lane, o);
                                }
                                t
                            }
                            Start::Fresh => {
                                self.parked.remove(&p);
                                Task {
                                    engine: Engine::new(Arc::new(self.cfg.engine.clone())),
                                    merge: TaskMerge::new(lanes),
                                }
                            }
                        };
                        self.tasks.insert(p, task);
                    }
                }
            }
        }
    }

    fn publish(&mut self, alerts: &mut Vec<Alert>) -> anyhow::Result<()> {
        let domain = self.cfg.mail.message_id_domain.clone();
        let cfg: &'a Config = self.cfg;
        let topic = cfg.kafka.alerts_topic.as_str();
        for mut alert in alerts.drain(..) {
            if alert.decision == Decision::Email {
                self.mailer.deliver(&mut alert)?;
            }
            let json = alert.to_json(&domain);
            self.publisher.send(
                topic,
                Some(alert.customer_id.as_bytes()),
                json.as_bytes(),
                None,
            )?;
            self.out.alerts += 1;
        }
        self.mailer.flush()?;
        self.out.emails = self.mailer.written;
        Ok(())
    }

    /// What the records taken so far cover, per task and lane.
    fn covered(&self) -> Covered {
        let mut out = Vec::new();
        for (&p, task) in &self.tasks {
            for lane in 0..task.merge.lanes() {
                if let Some(o) = task.merge.committable(lane) {
                    out.push((p, lane, o));
                }
            }
        }
        out
    }

    /// Stores, for the periodic commit, the offsets of every settled batch: all the
    /// effects of the records before them are acknowledged.
    fn store_settled(&mut self) {
        let settled = self.publisher.settled();
        if settled.is_empty() {
            return;
        }
        let mut latest: BTreeMap<(i32, usize), i64> = BTreeMap::new();
        for covered in &settled {
            for &(p, lane, o) in covered {
                latest.insert((p, lane), o);
            }
        }
        let mut tpl = TopicPartitionList::new();
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let lanes = self.topics.len();
        for (&(p, lane), &o) in &latest {
            let pos = shared
                .positions
                .entry(p)
                .or_insert_with(|| vec![None; lanes]);
            if pos[lane] == Some(o) {
                continue;
            }
            pos[lane] = Some(o);
            if self.tasks.contains_key(&p) {
                if let Err(e) = tpl.add_partition_offset(&self.topics[lane], p, Offset::Offset(o)) {
                    tracing::warn!(error = %e, "offset not stored");
                }
            }
        }
        drop(shared);
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                tracing::warn!(error = %e, "storing offsets failed");
            }
        }
        self.last_done = Some(Instant::now());
    }

    fn finish(&mut self, opts: &Options) -> anyhow::Result<()> {
        if self.out.clean {
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e, "final commit"),
            }
        }
        self.out.busy = match (self.first_record, self.last_done) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => Duration::ZERO,
        };
        if let Some(path) = &opts.export_customers {
            let mut snaps: Vec<Snapshot> = self
                .tasks
                .values()
                .flat_map(|t| t.engine.snapshots_sorted())
                .collect();
            snaps.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
            crate::replay::write_snapshots(&snaps, path)?;
        }
        self.consumer.unsubscribe();
        Ok(())
    }
}

fn wall_stamp() -> Option<Stamp> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Stamp::from_unix(i64::try_from(secs).ok()?)
}

/// The dead-letter headers: where the record came from and why it was rejected, then the
/// record's own headers.
fn dead_letter(msg: &BorrowedMessage<'_>, class: &str, reason: &str) -> OwnedHeaders {
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: "churnwatch.source.topic",
            value: Some(msg.topic()),
        })
        .insert(Header {
            key: "churnwatch.source.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "churnwatch.source.offset",
            value: Some(&offset),
        })
        .insert(Header {
            key: "churnwatch.reject.class",
            value: Some(class),
        })
        .insert(Header {
            key: "churnwatch.reject.reason",
            value: Some(reason),
        });
    if let Some(orig) = msg.headers() {
        for hd in orig.iter() {
            h = h.insert(Header {
                key: hd.key,
                value: hd.value,
            });
        }
    }
    h
}
