//! `churnwatch run`: the service loop (docs/design.md §2 Path of one event).
//!
//! One thread polls the consumer, feeds each record to its task (partition `p` of every
//! input topic) and applies the task's merged records to the task's own engine. What
//! the engine decides (alerts, emails) and the rejects (dead letters) wait in the task's
//! pending list. Every `state.checkpoint_interval` each task that moved commits one
//! checkpoint to its store: changed customers, the offsets that state reflects, and the
//! pending effects as outbox entries. Only then are the effects handed over (alerts and
//! dead letters to Kafka, emails to the transport); once they are acknowledged the
//! entries are removed and the checkpoint's offsets stored for the group commit.
//!
//! So state is exactly-once (a restarted worker loads its store and seeks each task to
//! the stored offsets, whatever the group committed) and effects at-least-once with
//! stable ids: a crash re-hands what the outbox still holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use crate::alert::{Decision, Suppression};
use crate::config::{ClockMode, Config};
use crate::disk;
use crate::engine::clock::Stamp;
use crate::engine::settings::Settings;
use crate::engine::{Engine, Snapshot};
use crate::event::EventKind;
use crate::health::Health;
use crate::mail::mailer::{self, FileMailer, SendLine, SendLog};
use crate::mail::sender::{Job, Report, Sender, Status};
use crate::mail::template::Templates;
use crate::metrics::Metrics;
use crate::outbox::Entry;
use crate::publisher::Publisher;
use crate::shutdown::Shutdown;
use crate::source::kafka::{self, Rebalanced, Rebalances, Start, TopicError, WorkerContext};
use crate::source::task::TaskMerge;
use crate::store::{self, TaskStore};

/// Options of `churnwatch run` beyond the config.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// At shutdown, write the state of every customer this worker holds (JSONL).
    pub export_customers: Option<PathBuf>,
    /// Where the worker counts what it does (served at `/metrics`).
    pub metrics: Arc<Metrics>,
    /// Set by SIGHUP and the file watcher: read the config again (docs/design.md §14 Hot reload).
    pub reload: Arc<crate::reload::Reload>,
    /// `GET /customers/{id}` questions, answered from this worker's stores.
    pub queries: Arc<crate::admin::Queries>,
}

/// What a config reload changes while running: thresholds and guards (the engines'
/// settings), templates and mail settings, the CRR period.
struct Live {
    engine: Arc<Settings>,
    mail: crate::config::MailSettings,
    /// None until a reload: the templates the worker started with are used.
    templates: Option<Templates>,
    crr_days: u16,
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
    /// Emails written (file transport) or accepted by the relay (SMTP).
    pub emails: u64,
    /// Emails found already written when handed over again after a crash.
    pub emails_again: u64,
    /// Emails failed for good (unbuildable, a 5xx reply, or expired).
    pub emails_failed: u64,
    /// Of those, emails still failing transiently at `smtp.max_retry_age`.
    pub emails_expired: u64,
    /// Emails suppressed at send time (an unsubscribe, bounce or erasure came first).
    pub emails_suppressed: u64,
    /// Times an email was deferred by quiet hours.
    pub emails_deferred: u64,
    /// Transient failures retried.
    pub emails_retried: u64,
    /// Emails that waited in the store for room in the sender (`smtp.queue_limit`).
    pub emails_held_back: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Alerts or dead letters the producer refused for good (too large).
    pub dropped: u64,
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
            "consumed {} records ({} rejected to the dead-letter topic, {} misrouted) in {:.3}s from the first to the last: {:.0} records/s; {} alerts published, {} emails delivered ({} found already written, {} failed ({} expired), {} suppressed at send time, {} deferrals, {} retries, {} held back for room in the sender), {} records too large dropped; {} checkpoints",
            self.records, self.rejected, self.misrouted, secs, rate, self.alerts, self.emails, self.emails_again, self.emails_failed, self.emails_expired, self.emails_suppressed, self.emails_deferred, self.emails_retried, self.emails_held_back, self.dropped, self.checkpoints
        )
    }
}

struct Task {
    engine: Engine,
    merge: TaskMerge,
    /// Effects decided since the last checkpoint, in decision order.
    pending: Vec<Entry>,
    /// Number of the next outbox entry.
    next_entry: u64,
    /// Per lane, the offsets of the last checkpoint.
    checkpointed: Vec<Option<i64>>,
    /// Per lane, whether its partition is paused (the task holds too many records).
    paused: Vec<bool>,
}

/// What a settled batch of hand-overs completes: the outbox entries to remove and the
/// checkpoint offsets that may now be committed to the group.
#[derive(Debug)]
struct Covered {
    task: i32,
    entries: Vec<u64>,
    offsets: Vec<(usize, i64)>,
}

/// Pending effects across tasks past which a checkpoint is taken early (bounds memory).
const MAX_PENDING: usize = 50_000;

/// More closed batches than this in flight and the loop waits for acknowledgements.
const MAX_UNSETTLED: usize = 16;

/// How often the loop asks the cluster whether every input topic still exists.
const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Soonest a consumer error naming an unknown topic triggers another check.
const TOPIC_CHECK_MIN_GAP: Duration = Duration::from_secs(1);

/// Where emails go: written as files at once, or sent over SMTP by the sender thread.
enum Delivery<'a> {
    File(FileMailer<'a>),
    Smtp { sender: Sender, log: SendLog },
}

struct Worker<'a> {
    cfg: &'a Config,
    live: Live,
    reload: Arc<crate::reload::Reload>,
    queries: Arc<crate::admin::Queries>,
    metrics: Arc<Metrics>,
    templates: &'a Templates,
    shutdown: &'a Shutdown,
    health: Arc<Health>,
    consumer: kafka::WorkerConsumer,
    publisher: Publisher<Covered>,
    /// What the consumer's rebalance callback forwarded; the worker answers each.
    rebalances: Rebalances,
    /// Per task this worker has state for, the offset each lane's state has reached
    /// (its last checkpoint): what decides, on assignment, whether and where it starts.
    positions: BTreeMap<i32, Vec<Option<i64>>>,
    topics: Vec<String>,
    topics_c: Vec<CString>,
    partitions: i32,
    tasks: BTreeMap<i32, Task>,
    /// Tasks revoked from this worker, kept in case they come back (their state is
    /// that of their last checkpoint).
    parked: BTreeMap<i32, Task>,
    /// Every task store this worker has opened (kept open: they are locked files).
    stores: BTreeMap<i32, TaskStore>,
    last_checkpoint: Instant,
    delivery: Delivery<'a>,
    /// Emails (task, outbox entry) left in the store while the sender holds
    /// `smtp.queue_limit`; handed over, in order, as it drains.
    held_back: VecDeque<(i32, u64)>,
    out: Outcome,
    first_record: Option<Instant>,
    last_done: Option<Instant>,
    misrouted_warned: bool,
    /// Space on the state volume given back on a disk fault.
    reserve: disk::Reserve,
    /// Per task, finished email entries not yet removed from its outbox (a removal that
    /// failed is retried once the reserve is freed, before the worker stops).
    unmarked: BTreeMap<i32, Vec<u64>>,
    /// Input topics the cluster did not know at the last check.
    missing_topics: Vec<String>,
    /// When the topics were last checked, and whether a consumer error asks for a check.
    topics_checked: Instant,
    topic_check_due: bool,
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
    // Space for the last outbox removals should the volume fill up; a volume that is
    // full or read-only already stops the worker here, before anything is handed over.
    let reserve = disk::Reserve::take(&cfg.state.dir, disk::RESERVE_BYTES)
        .map_err(|e| stopped(cfg, &health, anyhow::Error::new(e), None))?;
    let k = &cfg.kafka;
    let (ctx, rebalances) = WorkerContext::new(health.clone());
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
    // The positions of every task this worker has state for decide, on assignment,
    // which tasks it may run and from where (docs/design.md §11 Restart).
    let mut stores = BTreeMap::new();
    let mut positions = BTreeMap::new();
    for p in store::tasks_in(&cfg.state.dir)? {
        let st = TaskStore::open(&cfg.state.dir, p)?;
        if let Some(offsets) = st.offsets()? {
            let lanes = k.topics.iter().map(|t| offsets.get(t).copied()).collect();
            tracing::info!(task = p, offsets = ?offsets, store = %st.path().display(), "state found");
            positions.insert(p, lanes);
        }
        stores.insert(p, st);
    }
    let topic_refs: Vec<&str> = k.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(topics = ?k.topics, partitions, group = %k.group_id, "subscribed");
    let delivery = if cfg.transport == "smtp" {
        let from: lettre::message::Mailbox = cfg
            .mail
            .from
            .parse()
            .with_context(|| format!("smtp.from `{}` is not a mailbox", cfg.mail.from))?;
        let sender = Sender::start(&cfg.smtp, &cfg.send, from.email)?;
        tracing::info!(host = %cfg.smtp.host, port = cfg.smtp.port, tls = ?cfg.smtp.tls, pool = cfg.smtp.pool_size, "sending emails over SMTP");
        Delivery::Smtp {
            sender,
            log: SendLog::open(
                &cfg.state.dir.join("sends.jsonl"),
                true,
                cfg.state.sends_log_max_bytes,
            )?,
        }
    } else {
        Delivery::File(FileMailer::new(
            &cfg.mail,
            templates,
            &cfg.file_dir,
            true,
            cfg.state.sends_log_max_bytes,
        )?)
    };
    let mut w = Worker {
        cfg,
        live: Live {
            engine: Arc::new(cfg.engine.clone()),
            mail: cfg.mail.clone(),
            templates: None,
            crr_days: cfg.crr_days,
        },
        reload: opts.reload.clone(),
        queries: opts.queries.clone(),
        metrics: opts.metrics.clone(),
        templates,
        shutdown,
        health,
        consumer,
        publisher,
        rebalances,
        positions,
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
        stores,
        last_checkpoint: Instant::now(),
        delivery,
        held_back: VecDeque::new(),
        out: Outcome::default(),
        first_record: None,
        last_done: None,
        misrouted_warned: false,
        reserve,
        unmarked: BTreeMap::new(),
        missing_topics: Vec::new(),
        topics_checked: Instant::now(),
        topic_check_due: false,
    };
    let clean = match w.main_loop() {
        Ok(clean) => clean,
        Err(e) => return Err(w.fail(e)),
    };
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
            if self.reload.take_due() {
                self.reload_config();
            }
            self.answer_queries();
            self.poll_batch()?;
            self.take_rebalances()?;
            self.check_topics();
            // Sampled right after intake, where the buffers peak.
            let buffered: usize = self.tasks.values().map(|t| t.merge.buffered()).sum();
            self.metrics.buffered.set(buffered as i64);
            let now = Instant::now();
            let wall = wall_stamp();
            let mut behind = 0;
            let domain = self.live.mail.message_id_domain.as_str();
            let templates = self.live.templates.as_ref().unwrap_or(self.templates);
            let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
            let held = !self.missing_topics.is_empty();
            for (&p, task) in self.tasks.iter_mut() {
                for (lane, t) in self.topics_c.iter().enumerate() {
                    let (low, high) = kafka::cached_watermarks(&self.consumer, t, p);
                    task.merge.set_low_watermark(lane, low);
                    task.merge.set_high_watermark(lane, high);
                }
                let sender = match &self.delivery {
                    Delivery::Smtp { sender, .. } => Some(sender),
                    Delivery::File(_) => None,
                };
                // While an input topic is missing every task waits for it: taking the
                // other topics' records alone would order them before its records, should
                // it be recreated and refilled.
                while let Some((_, rec)) = if held {
                    None
                } else {
                    task.merge.next(now, self.cfg.kafka.max_task_idle)
                } {
                    // An event that makes a customer unreachable: their emails waiting in
                    // the sender (quiet hours, retries) must not go (docs/design.md §10 Sender). Only a
                    // change from reachable is told, so the sender scans its queue rarely.
                    let reach = sender.filter(|_| {
                        matches!(
                            rec.event.kind,
                            EventKind::Unsubscribed
                                | EventKind::Bounced { hard: true }
                                | EventKind::Erased
                                | EventKind::Profile(_)
                        )
                    });
                    let watch = reach
                        .filter(|_| task.engine.suppression(&rec.event.customer_id).is_none())
                        .map(|s| (s, rec.event.customer_id.clone()));
                    task.engine.apply(rec.event, &mut alerts);
                    if let Some((s, id)) = watch {
                        if let Some(why) = task.engine.suppression(&id) {
                            s.suppress(&id, why.name());
                        }
                    }
                }
                // A task waiting for one partition (idle, or its topic deleted) would
                // otherwise buffer the others' records without end.
                for (lane, topic) in self.topics.iter().enumerate() {
                    let hold = task.merge.hold(
                        lane,
                        task.paused[lane],
                        self.cfg.kafka.max_buffered_records,
                    );
                    if hold != task.paused[lane] {
                        task.paused[lane] = hold;
                        let list = if hold { &mut pause } else { &mut resume };
                        list.add_partition(topic, p);
                    }
                }
                if !held && task.merge.caught_up() {
                    if self.cfg.clock == ClockMode::Wall {
                        if let Some(w) = wall {
                            task.engine.advance(w, &mut alerts);
                        }
                    }
                } else {
                    behind += 1;
                }
                for mut alert in alerts.drain(..) {
                    self.metrics.alert(alert.rule, alert.decision);
                    if let Decision::Suppressed(why) = alert.decision {
                        Metrics::inc(
                            &self.metrics.emails_suppressed,
                            &[("reason", why.name()), ("at", "decision")],
                        );
                    }
                    if alert.decision == Decision::Email {
                        let email = mailer::render(&self.live.mail, templates, &mut alert);
                        task.pending.push(Entry::Email(email));
                    }
                    task.pending.push(Entry::Alert {
                        key: alert.customer_id.to_string(),
                        payload: alert.to_json(domain),
                    });
                }
            }
            self.apply_pauses(&pause, &resume);
            self.health.set_catching_up(behind);
            let lag: i64 = self.tasks.values().map(|t| t.merge.lag()).sum();
            self.metrics.lag.set(lag);
            let customers: usize = self.tasks.values().map(|t| t.engine.len()).sum();
            self.metrics.customers.set(customers as i64);
            self.metrics.tasks.set(self.tasks.len() as i64);
            let pending: usize = self.tasks.values().map(|t| t.pending.len()).sum();
            if pending >= MAX_PENDING
                || self.last_checkpoint.elapsed() >= self.cfg.state.checkpoint_interval
            {
                self.checkpoint_all()?;
            }
            self.store_settled()?;
            self.take_reports()?;
            self.refill()?;
            while self.publisher.unsettled() > MAX_UNSETTLED {
                if self.shutdown.expired() {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(1));
                self.store_settled()?;
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
        self.checkpoint_all()?;
        self.settle_all()
    }

    /// Waits until every closed batch is settled and stored; false when the shutdown
    /// grace period ran out first.
    fn settle_all(&mut self) -> anyhow::Result<bool> {
        loop {
            self.store_settled()?;
            self.take_reports()?;
            if self.publisher.unsettled() == 0 {
                return Ok(true);
            }
            if self.shutdown.expired() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Commits a checkpoint of every task that moved, then hands its effects over.
    /// Answers `GET /customers/{id}` from the stores of the tasks this worker holds (as
    /// of their last checkpoint, the same view `inspect` has of a stopped worker).
    fn answer_queries(&mut self) {
        for q in self.queries.take() {
            let mut answer = Ok(None);
            for p in self.tasks.keys() {
                let Some(st) = self.stores.get(p) else {
                    continue;
                };
                match crate::inspect::in_store(st, *p, self.live.engine.clone(), &q.id, q.personal)
                {
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

    /// Reads the config file and templates again and swaps in what may change live; a
    /// config or template that does not validate is refused and the running one stays.
    fn reload_config(&mut self) {
        let refuse = |metrics: &Metrics, why: String| {
            Metrics::inc(&metrics.reloads, &[("result", "refused")]);
            tracing::error!(problems = %why, "config reload refused; the running config stays in force");
        };
        let new = match crate::config::load(self.cfg.path.as_deref()) {
            Ok(c) => c,
            Err(e) => return refuse(&self.metrics, e.to_string()),
        };
        let templates = match Templates::load(&new.mail) {
            Ok(t) => t,
            Err(problems) => return refuse(&self.metrics, problems.join("; ")),
        };
        let problems = templates.check(&new.engine.template_names());
        if !problems.is_empty() {
            return refuse(&self.metrics, problems.join("; "));
        }
        let fixed = new.restart_only_changes(self.cfg);
        if !fixed.is_empty() {
            tracing::warn!(keys = ?fixed, "config reload: these settings change only at a restart; the running values stay until then");
        }
        let engine = Arc::new(new.engine.clone());
        for t in self.tasks.values_mut().chain(self.parked.values_mut()) {
            t.engine.set_settings(engine.clone());
        }
        self.live = Live {
            engine,
            mail: new.mail.clone(),
            templates: Some(templates),
            crr_days: new.crr_days,
        };
        Metrics::inc(&self.metrics.reloads, &[("result", "applied")]);
        tracing::info!(
            "config reloaded: thresholds, guards and templates in force from the next decision"
        );
    }

    /// CRR and win-back conversion over this worker's tasks (sums of each task's
    /// numbers, so the rate is the whole population's, not an average of tasks).
    fn set_outcome_metrics(&self) {
        let mut crr: Option<crate::engine::retention::Crr> = None;
        let (mut touched, mut converted) = ([0u64; 2], [0u64; 2]);
        let evicted: u64 = self.tasks.values().map(|t| t.engine.dedup_evicted()).sum();
        self.metrics
            .dedup_evicted
            .set(i64::try_from(evicted).unwrap_or(i64::MAX));
        for t in self.tasks.values() {
            if let Some(c) = t.engine.retention(self.live.crr_days) {
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

    fn checkpoint_all(&mut self) -> anyhow::Result<()> {
        let ps: Vec<i32> = self.tasks.keys().copied().collect();
        for p in ps {
            self.checkpoint(p)?;
        }
        self.set_outcome_metrics();
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// One task's checkpoint (docs/design.md §8 Checkpoint and outbox): state changes, offsets and decided effects in
    /// one durable write; only then are the effects handed over.
    fn checkpoint(&mut self, p: i32) -> anyhow::Result<()> {
        let Some(task) = self.tasks.get_mut(&p) else {
            return Ok(());
        };
        let lanes: Vec<Option<i64>> = (0..task.merge.lanes())
            .map(|l| task.merge.committable(l).or(task.checkpointed[l]))
            .collect();
        if !task.engine.has_changes() && task.pending.is_empty() && lanes == task.checkpointed {
            return Ok(());
        }
        let offsets: BTreeMap<String, i64> = lanes
            .iter()
            .enumerate()
            .filter_map(|(l, o)| o.map(|o| (self.topics[l].clone(), o)))
            .collect();
        let st = open_store(&mut self.stores, &self.cfg.state.dir, p)?;
        let first = task.next_entry;
        st.checkpoint(&mut task.engine, &offsets, &task.pending, first)
            .with_context(|| format!("checkpoint of task {p} failed; stopping so that a restart resumes from the last good one"))?;
        self.out.checkpoints += 1;
        self.metrics.checkpoints.inc();
        let entries = std::mem::take(&mut task.pending);
        task.next_entry = first + entries.len() as u64;
        task.checkpointed = lanes.clone();
        self.positions.insert(p, lanes.clone());
        let numbered: Vec<(u64, Entry)> = (first..).zip(entries).collect();
        let blocked = blocked(&self.delivery, &task.engine, &numbered);
        self.hand_over(p, numbered, &blocked, lane_offsets(&lanes))
    }

    /// Hands outbox entries to Kafka and the mail transport, as one batch that settles
    /// once the broker acknowledged its records.
    fn hand_over(
        &mut self,
        p: i32,
        entries: Vec<(u64, Entry)>,
        blocked: &BTreeMap<u64, Suppression>,
        offsets: Vec<(usize, i64)>,
    ) -> anyhow::Result<()> {
        let k = &self.cfg.kafka;
        let mut numbers = Vec::with_capacity(entries.len());
        // Entries done at once: emails the transport has, records Kafka refuses outright.
        let mut done_now = Vec::new();
        // Their send-log lines, written only once the entries are removed.
        let mut written = Vec::new();
        let mut refusals = Vec::new();
        let smtp_emails = matches!(self.delivery, Delivery::Smtp { .. })
            && entries.iter().any(|(_, e)| matches!(e, Entry::Email(_)));
        let failures = match self.stores.get(&p).filter(|_| smtp_emails) {
            Some(st) => st.first_failures()?,
            None => BTreeMap::new(),
        };
        for (n, entry) in entries {
            match entry {
                Entry::Alert { key, payload } => {
                    let sent = self.publisher.send(
                        &k.alerts_topic,
                        Some(key.as_bytes()),
                        payload.as_bytes(),
                        None,
                    );
                    if refused(sent, n, &mut self.out, &mut done_now)? {
                        continue;
                    }
                    self.out.alerts += 1;
                    numbers.push(n);
                }
                Entry::DeadLetter {
                    key,
                    payload,
                    headers,
                } => {
                    let mut h = OwnedHeaders::new();
                    for (name, value) in &headers {
                        h = h.insert(Header {
                            key: name,
                            value: value.as_deref(),
                        });
                    }
                    let sent = self
                        .publisher
                        .send(&k.dlq_topic, key.as_deref(), &payload, Some(h));
                    if refused(sent, n, &mut self.out, &mut done_now)? {
                        continue;
                    }
                    numbers.push(n);
                }
                Entry::Email(email) => match &mut self.delivery {
                    Delivery::File(m) => {
                        let w = m.write(&email)?;
                        Metrics::inc(&self.metrics.emails, &[("outcome", w.status)]);
                        written.push((email, w));
                        done_now.push(n);
                    }
                    Delivery::Smtp { sender, .. } => {
                        let refusal = match (&email.message, blocked.get(&n)) {
                            (Err(reason), _) => Some(("failed", reason.clone())),
                            (Ok(_), Some(why)) => Some(("suppressed", why.name().to_string())),
                            (Ok(_), None) => None,
                        };
                        let Some((status, reason)) = refusal else {
                            if sender.held() >= self.cfg.smtp.queue_limit
                                || !self.held_back.is_empty()
                            {
                                // It stays in the store; `refill` hands it over later.
                                self.held_back.push_back((p, n));
                                self.out.emails_held_back += 1;
                            } else {
                                sender.send(Job {
                                    task: p,
                                    entry: n,
                                    first_failure: first_failure(&failures, n),
                                    email,
                                });
                            }
                            continue;
                        };
                        refusals.push((email, status, reason));
                        done_now.push(n);
                    }
                },
            }
        }
        // The .eml files are on disk for good (synced) before their entries go.
        if let Delivery::File(m) = &mut self.delivery {
            m.sync()?;
        }
        // An email is done once the transport has it: mark it now, not with the batch's
        // broker acknowledgements, so that the window in which a crash could hand it
        // over again is this one write (README, "Durability"). Before the send log: a
        // log line that cannot be written must not keep a delivered email in the outbox.
        mark_done(&self.stores, &mut self.unmarked, p, done_now)?;
        match &mut self.delivery {
            Delivery::File(m) => {
                for (email, w) in &written {
                    m.log(email, w)?;
                }
                m.flush()?;
                self.out.emails = m.written;
                self.out.emails_again = m.already_written;
                self.out.emails_failed = m.failed;
            }
            Delivery::Smtp { log, .. } => {
                for (email, status, reason) in refusals {
                    record_refusal(log, &mut self.out, &self.metrics, &email, status, reason)?;
                }
                log.flush()?;
            }
        }
        self.publisher.close(Covered {
            task: p,
            entries: numbers,
            offsets,
        });
        Ok(())
    }

    /// Pauses and resumes partitions as the tasks' buffers decided, and counts the
    /// paused ones.
    fn apply_pauses(&self, pause: &TopicPartitionList, resume: &TopicPartitionList) {
        for (list, what) in [(pause, "pause"), (resume, "resume")] {
            if list.count() == 0 {
                continue;
            }
            tracing::debug!(partitions = ?list.to_topic_map().keys().collect::<Vec<_>>(), "{what}");
            let done = if what == "pause" {
                self.consumer.pause(list)
            } else {
                self.consumer.resume(list)
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "cannot {what} partitions");
            }
        }
        let paused: usize = self
            .tasks
            .values()
            .map(|t| t.paused.iter().filter(|p| **p).count())
            .sum();
        self.metrics.paused.set(paused as i64);
    }

    /// Resumes every partition this worker paused, once they are given up: librdkafka
    /// keeps an application's pause across assignments, and a partition resumed while
    /// still assigned would be fetched again (perhaps from a topic just deleted).
    fn resume_all(&mut self) {
        let mut resume = TopicPartitionList::new();
        for (&p, task) in self.tasks.iter_mut() {
            for (lane, paused) in task.paused.iter_mut().enumerate() {
                if std::mem::take(paused) {
                    resume.add_partition(&self.topics[lane], p);
                }
            }
        }
        self.apply_pauses(&TopicPartitionList::new(), &resume);
    }

    /// Asks the cluster, every `TOPIC_CHECK_INTERVAL` or soon after a consumer error
    /// about an unknown topic, whether every input topic still exists. A deleted one
    /// holds its tasks (their other partitions pause at the buffer bound), so it is
    /// logged once at error and keeps the worker not ready until it is back: the other
    /// topics' state is not moved on without it, in case it is recreated and refilled.
    fn check_topics(&mut self) {
        let since = self.topics_checked.elapsed();
        let due =
            since >= TOPIC_CHECK_INTERVAL || (self.topic_check_due && since >= TOPIC_CHECK_MIN_GAP);
        // While disconnected the request could only time out, stalling the loop.
        if !due || !self.health.connected() {
            return;
        }
        self.topics_checked = Instant::now();
        self.topic_check_due = false;
        let missing =
            match kafka::missing_topics(&self.consumer, &self.topics, Duration::from_secs(5)) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check that the input topics exist");
                    return;
                }
            };
        for t in missing.iter().filter(|t| !self.missing_topics.contains(t)) {
            tracing::error!(topic = %t, "input topic {t} is missing (deleted?): the tasks reading it wait, their other partitions are paused at kafka.max_buffered_records, and the worker is not ready until it is back");
        }
        for t in self.missing_topics.iter().filter(|t| !missing.contains(t)) {
            tracing::info!(topic = %t, "input topic {t} is back");
        }
        self.health.set_missing_topics(missing.clone());
        self.missing_topics = missing;
    }

    /// Polls up to one batch of records into their tasks; rejects go out at once.
    fn poll_batch(&mut self) -> anyhow::Result<()> {
        let mut timeout = Duration::from_millis(100);
        for _ in 0..self.cfg.kafka.max_batch {
            let msg = match self.consumer.poll(timeout) {
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
                        self.topic_check_due = true;
                    }
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
            };
            timeout = Duration::ZERO;
            // A poll that serves a rebalance returns no record (rdkafka's poll stops at
            // the event), so the loop applies it before a newly assigned task's first
            // record arrives.
            Intake {
                metrics: &self.metrics,
                tasks: &mut self.tasks,
                out: &mut self.out,
                topics: &self.topics,
                partitions: self.partitions,
                limits: &self.cfg.limits,
                misrouted_warned: &mut self.misrouted_warned,
                first_record: &mut self.first_record,
            }
            .take(&msg);
        }
        Ok(())
    }

    /// Applies what rebalances decided since the last look.
    fn take_rebalances(&mut self) -> anyhow::Result<()> {
        for ev in self.rebalances.take() {
            match ev {
                Rebalanced::Revoked => {
                    self.health.set_tasks(0, 0);
                    // Checkpoint first, let what it handed over settle and commit its
                    // offsets while the partitions are still ours, so the group shows
                    // the next owner where this worker's state stands; then give them
                    // up. What is parked is exactly what the store holds (a lost grace
                    // period leaves entries in the outbox: handed over again, never lost).
                    self.checkpoint_all()?;
                    self.settle_all()?;
                    match self.consumer.commit_consumer_state(CommitMode::Sync) {
                        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                        Err(e) => tracing::warn!(error = %e, "commit on revoke failed"),
                    }
                    // Emails waiting in the sender stay in the outbox for the next owner;
                    // those in flight finish here, so none is sent by both.
                    if let Delivery::Smtp { sender, .. } = &self.delivery {
                        for p in self.tasks.keys() {
                            sender.withdraw(*p);
                        }
                    }
                    self.take_reports()?;
                    // Held-back emails are in the outbox of tasks that are leaving.
                    self.held_back.clear();
                    kafka::unassign(&self.consumer);
                    self.resume_all();
                    self.parked.append(&mut self.tasks);
                }
                Rebalanced::Assigned(partitions) => self.assign(&partitions)?,
            }
        }
        Ok(())
    }

    /// Decides where each assigned task starts, or refuses it, and answers the group
    /// with the assignment; then starts the tasks and claims the fresh ones.
    fn assign(&mut self, partitions: &[(String, i32)]) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(10);
        let committed = kafka::committed_lanes(&self.consumer, &self.topics, partitions, timeout);
        let lookup_ok = committed.is_ok();
        let committed = committed.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the group's committed offsets; tasks without local state are refused until the next rebalance");
            let tasks: BTreeSet<i32> = partitions.iter().map(|(_, p)| *p).collect();
            tasks.into_iter().map(|p| (p, vec![None; self.topics.len()])).collect()
        });
        let mut accepted = BTreeMap::new();
        let mut refused = BTreeSet::new();
        for (task, committed) in &committed {
            let start = decide_start(self.positions.get(task), committed, || {
                kafka::nothing_processed(&self.consumer, &self.topics, *task, committed, timeout)
            });
            match start {
                // Without the group's offsets neither "nobody processed it" nor "nobody
                // moved it past our state" can be told.
                Some(s) if lookup_ok => {
                    accepted.insert(*task, s);
                }
                _ => {
                    refused.insert(*task);
                }
            }
        }
        kafka::assign(&self.consumer, &self.topics, partitions, &accepted);
        for task in &refused {
            tracing::error!(
                task,
                "task refused: its partitions have committed offsets but this worker has no state for them (state is restored from a changelog only in a later version); it stays unprocessed and the worker not ready"
            );
        }
        tracing::info!(
            tasks = ?accepted.keys().collect::<Vec<_>>(),
            refused = ?refused,
            "tasks assigned"
        );
        self.health.set_tasks(accepted.len(), refused.len());
        for (p, start) in accepted {
            let fresh = start == Start::Fresh;
            let task = self.start_task(p, start)?;
            self.tasks.insert(p, task);
            if fresh {
                self.claim(p)?;
            }
        }
        Ok(())
    }

    /// A task as assigned: its parked engine, its store's state, or a fresh one.
    fn start_task(&mut self, p: i32, start: Start) -> anyhow::Result<Task> {
        let lanes = self.topics.len();
        let fresh = |engine: Engine| Task {
            engine,
            merge: TaskMerge::new(lanes),
            pending: Vec::new(),
            next_entry: 0,
            checkpointed: vec![None; lanes],
            paused: vec![false; lanes],
        };
        let pos = match start {
            Start::Local(pos) => pos,
            Start::Fresh => {
                self.parked.remove(&p);
                let mut task = fresh(Engine::new(self.live.engine.clone()));
                // Where each partition starts: what the claim stores and commits.
                for (lane, topic) in self.topics.iter().enumerate() {
                    let (low, _) = self
                        .consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .with_context(|| format!("task {p}: cannot read where {topic} starts"))?;
                    task.merge.start(lane, Some(low));
                }
                return Ok(task);
            }
        };
        let mut task = match self.parked.remove(&p) {
            Some(t) => {
                // Its emails left the sender when it was revoked; they are still in
                // its outbox.
                if matches!(self.delivery, Delivery::Smtp { .. }) {
                    if let Some(st) = self.stores.get(&p) {
                        let emails: Vec<(u64, Entry)> = st
                            .outbox()?
                            .into_iter()
                            .filter(|(_, e)| matches!(e, Entry::Email(_)))
                            .collect();
                        let blocked = blocked(&self.delivery, &t.engine, &emails);
                        self.hand_over(p, emails, &blocked, Vec::new())?;
                    }
                }
                t
            }
            None => {
                let st = open_store(&mut self.stores, &self.cfg.state.dir, p)?;
                let started = Instant::now();
                let loaded = st
                    .load(self.live.engine.clone())?
                    .with_context(|| format!("task {p}: its store has no checkpoint"))?;
                tracing::info!(
                    task = p,
                    customers = loaded.engine.len(),
                    pending = loaded.pending.len(),
                    secs = started.elapsed().as_secs_f64(),
                    "state loaded"
                );
                let mut t = fresh(loaded.engine);
                t.next_entry = loaded.next_entry;
                t.checkpointed = self
                    .topics
                    .iter()
                    .map(|topic| loaded.offsets.get(topic).copied())
                    .collect();
                // What the outbox still holds was decided before the crash: finish it.
                // Once that settles, the group commit catches up with the store even if
                // no new record arrives.
                let offsets = lane_offsets(&t.checkpointed);
                let blocked = blocked(&self.delivery, &t.engine, &loaded.pending);
                self.hand_over(p, loaded.pending, &blocked, offsets)?;
                t
            }
        };
        for (lane, o) in pos.into_iter().enumerate() {
            task.merge.start(lane, o);
        }
        Ok(task)
    }

    /// Claims a task nobody has processed: its first checkpoint (empty state, starting
    /// offsets) is committed to the store, then those offsets to the group, before
    /// anything is read. From then on another worker given the task sees committed
    /// offsets and refuses it unless it holds the state (docs/design.md §11 Restart), instead of starting
    /// it afresh a second time.
    fn claim(&mut self, p: i32) -> anyhow::Result<()> {
        self.checkpoint(p)?;
        let Some(task) = self.tasks.get(&p) else {
            return Ok(());
        };
        let commit: Vec<(&str, i32, i64)> = lane_offsets(&task.checkpointed)
            .into_iter()
            .map(|(lane, o)| (self.topics[lane].as_str(), p, o))
            .collect();
        kafka::commit_now(&self.consumer, &commit)
            .with_context(|| format!("task {p}: cannot commit its starting offsets"))?;
        tracing::info!(task = p, offsets = ?commit, "new task claimed");
        Ok(())
    }

    /// Removes the outbox entries of emails the sender reports finished (sent, failed
    /// for good, expired, suppressed), stores first failures, then records every report.
    /// Removal comes first and is synced: a send log that cannot be written must never
    /// leave a sent email in the outbox, to be sent again after a restart.
    fn take_reports(&mut self) -> anyhow::Result<()> {
        let Delivery::Smtp { sender, log } = &mut self.delivery else {
            return Ok(());
        };
        let reports = sender.reports();
        if reports.is_empty() {
            return Ok(());
        }
        let mut done: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
        let mut failing: BTreeMap<i32, Vec<(u64, i64)>> = BTreeMap::new();
        for r in &reports {
            match &r.status {
                s if s.is_final() => done.entry(r.task).or_default().push(r.entry),
                Status::Retrying {
                    attempt: 1, since, ..
                } => failing
                    .entry(r.task)
                    .or_default()
                    .push((r.entry, since.as_second())),
                _ => {}
            }
        }
        for (p, entries) in done {
            mark_done(&self.stores, &mut self.unmarked, p, entries)?;
        }
        for (p, entries) in failing {
            if let Some(st) = self.stores.get(&p) {
                st.note_first_failures(&entries)?;
            }
        }
        for r in &reports {
            record_report(log, r, &mut self.out, &self.metrics)?;
        }
        log.flush()?;
        Ok(())
    }

    /// Hands held-back emails to the sender, in order, while it has room; each is read
    /// from its store and checked for suppression again.
    fn refill(&mut self) -> anyhow::Result<()> {
        let Delivery::Smtp { sender, log } = &mut self.delivery else {
            return Ok(());
        };
        let mut done: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
        let mut refused = Vec::new();
        let mut failures: BTreeMap<i32, BTreeMap<u64, i64>> = BTreeMap::new();
        while sender.held() < self.cfg.smtp.queue_limit {
            let Some((p, n)) = self.held_back.pop_front() else {
                break;
            };
            let (Some(task), Some(st)) = (self.tasks.get(&p), self.stores.get(&p)) else {
                continue;
            };
            let Some(Entry::Email(email)) = st.entry(n)? else {
                continue;
            };
            if let Some(why) = task.engine.suppression(&email.customer_id) {
                refused.push((email, why.name()));
                done.entry(p).or_default().push(n);
                continue;
            }
            let first = match failures.entry(p) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(st.first_failures()?),
            };
            sender.send(Job {
                task: p,
                entry: n,
                first_failure: first_failure(first, n),
                email,
            });
        }
        for (p, entries) in done {
            mark_done(&self.stores, &mut self.unmarked, p, entries)?;
        }
        for (email, why) in refused {
            record_refusal(
                log,
                &mut self.out,
                &self.metrics,
                &email,
                "suppressed",
                why.to_string(),
            )?;
        }
        log.flush()?;
        Ok(())
    }

    /// Removes the outbox entries of every settled batch and stores its checkpoint's
    /// offsets for the periodic group commit.
    fn store_settled(&mut self) -> anyhow::Result<()> {
        let settled = self.publisher.settled();
        if settled.is_empty() {
            return Ok(());
        }
        let mut latest: BTreeMap<(i32, usize), i64> = BTreeMap::new();
        for c in &settled {
            if let Some(st) = self.stores.get(&c.task) {
                if !c.entries.is_empty() {
                    st.mark_done(c.entries.iter().copied())?;
                }
            }
            for &(lane, o) in &c.offsets {
                latest.insert((c.task, lane), o);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (&(p, lane), &o) in &latest {
            if self.tasks.contains_key(&p) {
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
        self.last_done = Some(Instant::now());
        Ok(())
    }

    /// The loop failed. On a disk fault: no new send starts, emails in flight finish,
    /// the reserve is freed and the outbox removals of every finished email are written
    /// (reopening a store that redb closed after its failed write) — so a restart sends
    /// none of them again — then one error line, and not ready.
    fn fail(&mut self, e: anyhow::Error) -> anyhow::Error {
        if disk::fault(&e).is_none() {
            // Leave the group before the consumer is dropped: with no loop left to
            // answer a rebalance, its close would wait for one forever and the error
            // would never be reported.
            self.leave_group();
            return e;
        }
        self.reserve.release();
        let mut reports = Vec::new();
        if let Delivery::Smtp { sender, .. } = &mut self.delivery {
            sender.stop(self.cfg.shutdown_grace);
            reports = sender.reports();
            for r in reports.iter().filter(|r| r.status.is_final()) {
                self.unmarked.entry(r.task).or_default().push(r.entry);
            }
        }
        let mut left = 0;
        for (p, entries) in std::mem::take(&mut self.unmarked) {
            let first = self
                .stores
                .get(&p)
                .map(|st| st.mark_done(entries.iter().copied()));
            if matches!(first, Some(Err(_))) {
                // redb refuses every write after a failed one until the file is reopened.
                self.stores.remove(&p);
                let again = TaskStore::open(&self.cfg.state.dir, p)
                    .and_then(|st| st.mark_done(entries.iter().copied()).map(|()| st));
                match again {
                    Ok(st) => {
                        self.stores.insert(p, st);
                    }
                    Err(_) => left += entries.len(),
                }
            }
        }
        // Their send-log lines, if there is room for them now; the removals above are
        // what matters.
        if let Delivery::Smtp { log, .. } = &mut self.delivery {
            for r in &reports {
                if record_report(log, r, &mut self.out, &self.metrics).is_err() {
                    break;
                }
            }
            let _ = log.flush();
        }
        // Leave the group now: another replica may take the tasks.
        self.leave_group();
        stopped(self.cfg, &self.health, e, Some(left))
    }

    /// Gives up the group membership at once: no loop is left to answer a revoke, which
    /// would otherwise block the consumer's close.
    fn leave_group(&mut self) {
        self.stop_answering();
        self.consumer.unsubscribe();
    }

    /// From now on the callback answers rebalances itself; one forwarded and not yet
    /// answered is answered with nothing (the group would wait for it forever).
    fn stop_answering(&mut self) {
        for ev in self.rebalances.close() {
            if let Rebalanced::Assigned(_) = ev {
                kafka::assign_nothing(&self.consumer);
            }
        }
    }

    fn finish(&mut self, opts: &Options) -> anyhow::Result<()> {
        if let Delivery::Smtp { sender, .. } = &mut self.delivery {
            // Emails in flight get what is left of the grace period; waiting ones stay
            // in the outbox for the next start.
            let grace = self.shutdown.remaining().unwrap_or(Duration::from_secs(5));
            sender.stop(grace);
        }
        self.take_reports()?;
        self.stop_answering();
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

/// The task store of `p`, opened on first use (kept open: the file stays locked).
fn open_store<'s>(
    stores: &'s mut BTreeMap<i32, TaskStore>,
    dir: &std::path::Path,
    p: i32,
) -> Result<&'s TaskStore, store::StoreError> {
    match stores.entry(p) {
        std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::btree_map::Entry::Vacant(v) => Ok(v.insert(TaskStore::open(dir, p)?)),
    }
}

/// Removes finished entries from task `p`'s outbox, synced. They are remembered until
/// that succeeds, so that after a disk fault they can still be removed once the reserve
/// is freed ([`Worker::fail`]).
fn mark_done(
    stores: &BTreeMap<i32, TaskStore>,
    unmarked: &mut BTreeMap<i32, Vec<u64>>,
    p: i32,
    entries: Vec<u64>,
) -> Result<(), store::StoreError> {
    let list = unmarked.entry(p).or_default();
    list.extend(entries);
    if let (Some(st), false) = (stores.get(&p), list.is_empty()) {
        st.mark_done(list.iter().copied())?;
    }
    unmarked.remove(&p);
    Ok(())
}

/// When entry `n` first failed transiently, from its store's record.
fn first_failure(failures: &BTreeMap<u64, i64>, n: u64) -> Option<jiff::Timestamp> {
    failures
        .get(&n)
        .and_then(|s| jiff::Timestamp::from_second(*s).ok())
}

/// The worker stopped for good: a full or read-only volume, already logged (one line)
/// and shown at `/readyz`. `main` keeps serving until SIGTERM instead of exiting into a
/// restart loop.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);

/// Turns a disk fault into [`Stopped`] (logging its one line and setting not-ready);
/// other errors pass. `unmarked` counts sent emails whose outbox removal failed anyway.
fn stopped(
    cfg: &Config,
    health: &Health,
    e: anyhow::Error,
    unmarked: Option<usize>,
) -> anyhow::Error {
    let Some(fault) = disk::fault(&e) else {
        return e;
    };
    let line = fault.line(&cfg.state.dir);
    match unmarked {
        Some(n) if n > 0 => {
            tracing::error!(error = %format!("{e:#}"), unmarked = n, "{line} ({n} finished emails could not be removed from the outbox and go again after a restart)")
        }
        _ => tracing::error!(error = %format!("{e:#}"), "{line}"),
    }
    health.set_stopped(&line);
    anyhow::Error::new(Stopped(line))
}

/// The emails among `entries` that must not go out now, and why: their customer has
/// unsubscribed, bounced, withdrawn consent or been erased since the decision (docs/design.md §10 Sender).
/// Only the SMTP sender checks again; the file transport writes what was decided.
fn blocked(
    delivery: &Delivery<'_>,
    engine: &Engine,
    entries: &[(u64, Entry)],
) -> BTreeMap<u64, Suppression> {
    if matches!(delivery, Delivery::File(_)) {
        return BTreeMap::new();
    }
    entries
        .iter()
        .filter_map(|(n, e)| match e {
            Entry::Email(m) => engine.suppression(&m.customer_id).map(|why| (*n, why)),
            _ => None,
        })
        .collect()
}

/// Records an email that is not sent at all: it could not be built (`failed`) or its
/// customer is no longer reachable (`suppressed`).
fn record_refusal(
    log: &mut SendLog,
    out: &mut Outcome,
    metrics: &Metrics,
    email: &crate::outbox::Email,
    status: &'static str,
    reason: String,
) -> Result<(), disk::PathError> {
    Metrics::inc(&metrics.emails, &[("outcome", status)]);
    if status == "failed" {
        out.emails_failed += 1;
        tracing::warn!(alert_id = %email.alert_id, %reason, "email not built");
    } else {
        out.emails_suppressed += 1;
        Metrics::inc(
            &metrics.emails_suppressed,
            &[("reason", &reason), ("at", "send")],
        );
    }
    log.record(&SendLine {
        at: Some(jiff::Timestamp::now().to_string()),
        alert_id: &email.alert_id,
        message_id: format!("<{}>", email.message_id),
        status,
        reason: Some(reason),
        locale: &email.locale,
        ..SendLine::default()
    })
}

/// Writes one sender report to `sends.jsonl` and counts it.
fn record_report(
    log: &mut SendLog,
    r: &Report,
    out: &mut Outcome,
    metrics: &Metrics,
) -> Result<(), disk::PathError> {
    let (status, reason, until, attempt) = match &r.status {
        Status::Sent(reply) => {
            out.emails += 1;
            ("sent", Some(reply.clone()), None, None)
        }
        Status::Failed(reply) => {
            out.emails_failed += 1;
            ("failed", Some(reply.clone()), None, None)
        }
        Status::Suppressed(why) => {
            out.emails_suppressed += 1;
            Metrics::inc(
                &metrics.emails_suppressed,
                &[("reason", why), ("at", "send")],
            );
            ("suppressed", Some((*why).to_string()), None, None)
        }
        Status::Deferred(t) => {
            out.emails_deferred += 1;
            (
                "deferred",
                Some("quiet hours".into()),
                Some(t.to_string()),
                None,
            )
        }
        Status::Expired { attempts, reason } => {
            out.emails_failed += 1;
            out.emails_expired += 1;
            (
                "failed",
                Some(format!("expired: {reason}")),
                None,
                Some(*attempts),
            )
        }
        Status::Retrying {
            attempt,
            reason,
            next,
            ..
        } => {
            out.emails_retried += 1;
            (
                "retrying",
                Some(reason.clone()),
                Some(next.to_string()),
                Some(*attempt),
            )
        }
    };
    let outcome = match &r.status {
        Status::Retrying { .. } => "retried",
        Status::Expired { .. } => "expired",
        _ => status,
    };
    Metrics::inc(&metrics.emails, &[("outcome", outcome)]);
    log.record(&SendLine {
        at: Some(jiff::Timestamp::now().to_string()),
        alert_id: &r.alert_id,
        message_id: format!("<{}>", r.message_id),
        status,
        reason,
        until,
        attempt,
        locale: &r.locale,
        ..SendLine::default()
    })
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
fn lane_offsets(lanes: &[Option<i64>]) -> Vec<(usize, i64)> {
    lanes
        .iter()
        .enumerate()
        .filter_map(|(l, o)| o.map(|o| (l, o)))
        .collect()
}

/// Whether a record was refused for good (too large for the broker): logged, counted and
/// done, so that it cannot stop the worker at every restart. Other errors pass on.
fn refused(
    sent: Result<(), crate::publisher::QueueError>,
    entry: u64,
    out: &mut Outcome,
    done: &mut Vec<u64>,
) -> anyhow::Result<bool> {
    match sent {
        Ok(()) => Ok(false),
        Err(e) if e.is_permanent() => {
            tracing::error!(error = %e, entry, "record refused by the producer; dropped");
            out.dropped += 1;
            done.push(entry);
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Routes polled records into their tasks. Borrows what taking a record needs and not
/// the consumer, which the record borrows.
struct Intake<'w> {
    metrics: &'w Metrics,
    tasks: &'w mut BTreeMap<i32, Task>,
    out: &'w mut Outcome,
    topics: &'w [String],
    partitions: i32,
    limits: &'w crate::event::Limits,
    misrouted_warned: &'w mut bool,
    first_record: &'w mut Option<Instant>,
}

impl Intake<'_> {
    /// Parses one record into its task's merge; a reject becomes a pending dead letter.
    fn take<M: Message>(self, msg: &M) {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(lane) = self.topics.iter().position(|t| t == topic) else {
            return;
        };
        // Records fetched before a rebalance that dropped the task are read again.
        let Some(task) = self.tasks.get_mut(&partition) else {
            return;
        };
        self.first_record.get_or_insert_with(Instant::now);
        self.out.records += 1;
        self.metrics.records.inc();
        let checked = kafka::check_record(
            msg.key(),
            msg.payload(),
            (partition, self.partitions),
            self.limits,
            crate::source::wall_now(),
        );
        if checked.misrouted {
            self.out.misrouted += 1;
            self.metrics.misrouted.inc();
            if !*self.misrouted_warned {
                *self.misrouted_warned = true;
                tracing::warn!(topic, partition, offset, "record's partition is not murmur2 of its customer id (its key, or the payload's when the key is null): its customer's events may be split across tasks (producers must use partitioner=murmur2_random); counted, further ones not logged");
            }
        }
        match checked.event {
            Ok(ev) => {
                self.metrics.event(ev.kind.type_name());
                task.merge.push(lane, offset, ev)
            }
            Err(rej) => {
                self.out.rejected += 1;
                Metrics::inc(&self.metrics.rejects, &[("class", rej.class)]);
                tracing::info!(topic, partition, offset, class = rej.class, reason = %rej.reason, "record rejected to the dead-letter topic");
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

fn wall_stamp() -> Option<Stamp> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Stamp::from_unix(i64::try_from(secs).ok()?)
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
