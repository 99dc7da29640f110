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
//!
//! The worker is split by job: `input` (the consumer: records into tasks, pauses,
//! topic checks), `tasks` (assignment decisions, restore, claim, checkpoint), `apply`
//! (records through the engines into pending entries), `effects` (hand-over, settling,
//! sender reports), `rebalance` (answering the group), and `settings` (what a reload
//! changes, `Live`, against what only a restart does, `Startup`).

mod apply;
mod effects;
mod input;
mod rebalance;
mod settings;
mod tasks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{CommitMode, Consumer};

use self::effects::{Delivery, Effects};
use self::input::Input;
use self::settings::{Live, Startup};
use self::tasks::Tasks;
use crate::config::{Config, KafkaSettings, Transport};
use crate::disk;
use crate::health::Health;
use crate::mail::mailer::{FileMailer, SendLog};
use crate::mail::sender::Sender;
use crate::mail::template::Templates;
use crate::metrics::Metrics;
use crate::outbox::Entry;
use crate::pause::PauseWatch;
use crate::publisher::Publisher;
use crate::secret::Secret;
use crate::shutdown::Shutdown;
use crate::source::changelog::ChangelogTopic;
use crate::source::kafka::{self, TopicError, WorkerContext};

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

/// What a run did (counted by the events of `crate::observe`).
pub use crate::observe::Outcome;

/// Numbered outbox entries of one task, durable and ready to be handed over, with the
/// lane offsets their checkpoint reached (stored for the group once they settle).
struct HandOver {
    task: i32,
    entries: Vec<(u64, Entry)>,
    offsets: Vec<(usize, i64)>,
}

impl HandOver {
    /// Entries of `task` to hand over; `offsets` (lane, offset) are stored once they settle.
    fn new(task: i32, entries: Vec<(u64, Entry)>, offsets: Vec<(usize, i64)>) -> HandOver {
        HandOver {
            task,
            entries,
            offsets,
        }
    }
}

/// Pending effects across tasks past which a checkpoint is taken early (bounds memory).
const MAX_PENDING: usize = 50_000;

/// More closed batches than this in flight and the loop waits for acknowledgements.
const MAX_UNSETTLED: usize = 16;

/// What the run did so far, and when its records were first taken and last done.
#[derive(Default)]
struct Tally {
    /// The counts the summary line reports.
    out: Outcome,
    /// When the first record was taken, and the last effect settled: the busy span.
    first_record: Option<Instant>,
    last_done: Option<Instant>,
}

/// The worker, split by job; each part owns what its job changes, so borrows split along
/// the parts.
struct Worker<'a> {
    /// Restart-only settings: fixed for the life of the worker.
    startup: Startup<'a>,
    /// What a reload changes: the only source of engine and mail settings and templates.
    live: Live<'a>,
    reload: Arc<crate::reload::Reload>,
    queries: Arc<crate::admin::Queries>,
    metrics: Arc<Metrics>,
    shutdown: &'a Shutdown,
    health: Arc<Health>,
    input: Input,
    tasks: Tasks,
    effects: Effects<'a>,
    tally: Tally,
    last_checkpoint: Instant,
    /// Space on the state volume given back on a disk fault.
    reserve: disk::Reserve,
    /// Whether this process was paused and may no longer own its tasks.
    pause: PauseWatch,
    /// While held after a pause: when the hold ends if the group has not taken the
    /// tasks away meanwhile, and the hand-overs it kept back.
    hold: Hold,
}

/// What a hold after a pause keeps (docs/design.md §16 State follows tasks, "Zombies").
#[derive(Default)]
struct Hold {
    /// The hold's end, once the loop has seen it begin.
    until: Option<Instant>,
    /// How long a hold lasts without word from the group: a session timeout and two
    /// heartbeats, by which the heartbeat thread has learnt whether the group expelled
    /// this member.
    window: Duration,
    /// Checkpoints made durable while held: handed over once the hold is lifted.
    kept: Vec<HandOver>,
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
        .map_err(|e| stopped(cfg, &health, anyhow::Error::new(e)))?;
    // Every part takes its restart-only values from here, once.
    let startup = Startup::new(cfg);
    let Some(Connected {
        k,
        consumer,
        rebalances,
        publisher,
        partitions,
    }) = connect(startup.kafka(), &health, shutdown)?
    else {
        return Ok(Outcome {
            clean: true,
            ..Outcome::default()
        });
    };
    let k = &k;
    // A pause of a third of the session timeout cannot have cost the membership yet
    // (the heartbeat thread also runs every third of it or more often).
    let (session, heartbeat) = kafka::group_timing(k);
    let pause = PauseWatch::start(session / 3)?;
    // The positions of every task this worker has state for decide, on assignment,
    // which tasks it may run and from where (docs/design.md §11 Restart).
    let changelog = match &k.changelog_topic {
        Some(topic) => {
            let log = ChangelogTopic::new(k, topic)?;
            log.ensure(partitions)
                .with_context(|| format!("cannot start: changelog topic {topic}"))?;
            Some(log)
        }
        None => None,
    };
    let tasks = Tasks::open(
        &startup.state().dir,
        &k.topics,
        opts.metrics.clone(),
        changelog,
    )?;
    let topic_refs: Vec<&str> = k.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(topics = ?k.topics, partitions, group = %k.group_id, "subscribed");
    let effects = Effects::new(
        publisher,
        delivery(cfg, templates, &pause)?,
        (&k.alerts_topic, &k.dlq_topic),
        startup.smtp_queue_limit(),
        opts.metrics.clone(),
    );
    let input = Input::new(
        (consumer, rebalances),
        &k.topics,
        (partitions, k.max_batch),
        startup.limits(),
        (health.clone(), opts.metrics.clone()),
    )?;
    let mut w = Worker {
        startup,
        live: Live::new(cfg, templates),
        reload: opts.reload.clone(),
        queries: opts.queries.clone(),
        metrics: opts.metrics.clone(),
        shutdown,
        health,
        input,
        tasks,
        effects,
        tally: Tally::default(),
        last_checkpoint: Instant::now(),
        reserve,
        pause,
        hold: Hold {
            window: session + 2 * heartbeat,
            ..Hold::default()
        },
    };
    let clean = match w.main_loop() {
        Ok(clean) => clean,
        Err(e) => return Err(w.fail(e)),
    };
    w.tally.out.clean = clean;
    w.finish(opts)?;
    Ok(w.tally.out)
}

/// The Kafka clients, made once the cluster answers with the topics the worker needs.
struct Connected {
    /// The settings they were made with (the SASL password as last read).
    k: KafkaSettings,
    consumer: kafka::WorkerConsumer,
    rebalances: kafka::Rebalances,
    publisher: Publisher<effects::Covered>,
    /// Partitions of each input topic.
    partitions: i32,
}

/// Makes the Kafka clients and waits until the cluster answers; makes them again with
/// `kafka.sasl_password_file`'s new content when that changes meanwhile (librdkafka
/// reads `sasl.password` only when a client is made). None when shutdown came first.
fn connect(
    k: &KafkaSettings,
    health: &Arc<Health>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Connected>> {
    let mut k = k.clone();
    loop {
        let (ctx, rebalances) =
            WorkerContext::new(health.clone(), k.oauthbearer_token_file.clone());
        let consumer = kafka::consumer(&k, ctx)?;
        let producer_cfg = kafka::producer_config(&k);
        tracing::info!(config = %kafka::describe(&producer_cfg), "kafka producer");
        let publisher = Publisher::new(&producer_cfg, k.oauthbearer_token_file.as_deref())?;
        match wait_for_topics(&consumer, &k, health, shutdown)? {
            Waited::Ready(partitions) => {
                return Ok(Some(Connected {
                    k,
                    consumer,
                    rebalances,
                    publisher,
                    partitions,
                }))
            }
            Waited::Shutdown => return Ok(None),
            Waited::NewPassword(password) => {
                tracing::info!(
                    "kafka: kafka.sasl_password_file changed; connecting again with the new password"
                );
                k.sasl_password = Some(password);
            }
        }
    }
}

/// How waiting for the cluster ended.
enum Waited {
    /// It answered: the input partition count.
    Ready(i32),
    /// Shutdown was requested first.
    Shutdown,
    /// `kafka.sasl_password_file` holds another password than the clients have.
    NewPassword(Secret),
}

/// Checks the topics until the cluster answers, saying why it does not meanwhile.
fn wait_for_topics(
    consumer: &kafka::WorkerConsumer,
    k: &KafkaSettings,
    health: &Health,
    shutdown: &Shutdown,
) -> anyhow::Result<Waited> {
    let mut told = Vec::new();
    let mut unreadable = None;
    loop {
        match kafka::check_topics(consumer, k, Duration::from_secs(10)) {
            Ok(n) => return Ok(Waited::Ready(n)),
            Err(TopicError::Invalid(problems)) => {
                bail!("cannot start: {}", problems.join("; "))
            }
            Err(e @ TopicError::Unreachable(_)) => {
                tracing::warn!(error = %e, "waiting for the Kafka cluster");
                // Until subscribed, only polling hands the context librdkafka's errors
                // (a refused login) and OAUTHBEARER token requests; it also paces retries.
                let until = Instant::now() + Duration::from_secs(2);
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    let _ = consumer.poll(left);
                }
                // librdkafka says only "certificate verify failed"; say which failure.
                let causes = crate::source::tls_check::explain_failures(&kafka::consumer_config(k));
                if causes != told {
                    for cause in &causes {
                        tracing::error!(cause = %cause, "kafka: a broker's TLS certificate is refused");
                    }
                    if !causes.is_empty() {
                        health.set_refused_by_kafka(Some(format!(
                            "TLS certificate refused: {}",
                            causes.join("; ")
                        )));
                    }
                    told = causes;
                }
                match k.reread_sasl_password() {
                    Some(Ok(now)) if Some(&now) != k.sasl_password.as_ref() => {
                        return Ok(Waited::NewPassword(now))
                    }
                    Some(Err(e)) if unreadable.as_ref() != Some(&e) => {
                        tracing::error!(error = %e, "kafka: cannot read the SASL password again");
                        unreadable = Some(e);
                    }
                    _ => {}
                }
                if shutdown.requested() {
                    return Ok(Waited::Shutdown);
                }
            }
        }
    }
}

/// The email delivery `delivery.transport` names, started.
fn delivery<'a>(
    cfg: &'a Config,
    templates: &'a Templates,
    pause: &PauseWatch,
) -> anyhow::Result<Delivery<'a>> {
    if cfg.transport == Transport::File {
        return Ok(Delivery::File(FileMailer::new(
            &cfg.mail,
            templates,
            &cfg.file_dir,
            true,
            cfg.state.sends_log_max_bytes,
        )?));
    }
    let from: lettre::message::Mailbox = cfg
        .mail
        .from
        .parse()
        .with_context(|| format!("smtp.from `{}` is not a mailbox", cfg.mail.from))?;
    let sender = Sender::start(&cfg.smtp, &cfg.send, from.email, pause.clone())?;
    tracing::info!(host = %cfg.smtp.host, port = cfg.smtp.port, tls = ?cfg.smtp.tls, pool = cfg.smtp.pool_size, "sending emails over SMTP");
    Ok(Delivery::Smtp {
        sender,
        log: SendLog::open(
            &cfg.state.dir.join("sends.jsonl"),
            true,
            cfg.state.sends_log_max_bytes,
        )?,
    })
}

/// When the loop last logged its progress, and the record count then.
struct ProgressLog {
    at: Instant,
    records: u64,
}

impl<'a> Worker<'a> {
    /// The loop: each round is these steps, in this order. Returns false when the
    /// shutdown grace period ran out with effects unacknowledged.
    fn main_loop(&mut self) -> anyhow::Result<bool> {
        let mut progress = ProgressLog {
            at: Instant::now(),
            records: 0,
        };
        while !self.shutdown.requested() {
            self.reload_if_due();
            self.tasks.answer(&self.queries, self.live.engine());
            self.input.poll_batch(&mut self.tasks, &mut self.tally);
            self.take_rebalances()?;
            self.input.check_topics();
            self.apply_tasks();
            if self.holding()? {
                continue;
            }
            self.checkpoint_if_due()?;
            self.settle_effects()?;
            if !self.wait_for_acknowledgements()? {
                return Ok(false);
            }
            self.log_progress(&mut progress);
        }
        if self.pause.held() {
            // Perhaps no longer the owner: leave the tasks as the last checkpoint has them.
            return Ok(false);
        }
        self.checkpoint_all()?;
        self.settle_all()
    }

    /// Whether the worker is held after a pause (docs/design.md §16, "Zombies"): then it
    /// polls and applies, and the group's answer comes as a revoke (the tasks are
    /// dropped, see [`Worker::revoke`]) or an assignment, but nothing is checkpointed,
    /// handed over, stored or committed. A hold that outlasts its window with no such
    /// answer is lifted: the membership held.
    fn holding(&mut self) -> anyhow::Result<bool> {
        if !self.pause.held() {
            return Ok(false);
        }
        let window = self.hold.window;
        let until = *self.hold.until.get_or_insert_with(|| {
            tracing::info!(
                wait_secs = window.as_secs_f64(),
                "held after a pause: waiting for the Kafka group to say whether this worker still owns its tasks"
            );
            Instant::now() + window
        });
        if Instant::now() < until {
            return Ok(true);
        }
        tracing::info!("the group kept this worker's tasks through the pause: carrying on");
        self.lift_hold()?;
        Ok(false)
    }

    /// Ends a hold: what it kept back is handed over.
    fn lift_hold(&mut self) -> anyhow::Result<()> {
        self.pause.lift();
        self.hold.until = None;
        for h in std::mem::take(&mut self.hold.kept) {
            self.effects
                .hand_over(&self.tasks, h, &mut self.tally.out)?;
        }
        Ok(())
    }

    /// Takes a requested reload (docs/design.md §14 Hot reload): new engine settings go
    /// to every running and parked task.
    fn reload_if_due(&mut self) {
        if !self.reload.take_due() {
            return;
        }
        if let Some(engine) = self.live.reload(&self.startup, &self.metrics) {
            self.tasks.set_settings(&engine);
        }
    }

    /// A checkpoint of every task that moved, every `state.checkpoint_interval` or at
    /// once when too many effects wait.
    fn checkpoint_if_due(&mut self) -> anyhow::Result<()> {
        if self.tasks.pending() >= MAX_PENDING
            || self.last_checkpoint.elapsed() >= self.startup.state().checkpoint_interval
        {
            self.checkpoint_all()?;
        }
        Ok(())
    }

    /// Settled batches removed and their offsets stored, sender reports recorded,
    /// held-back emails handed to the sender as it has room.
    fn settle_effects(&mut self) -> anyhow::Result<()> {
        self.store_settled()?;
        self.effects
            .take_reports(&self.tasks, &mut self.tally.out)?;
        self.effects.refill(&self.tasks, &mut self.tally.out)
    }

    /// With too many batches in flight, waits for acknowledgements; false when the
    /// shutdown grace period ran out first.
    fn wait_for_acknowledgements(&mut self) -> anyhow::Result<bool> {
        while self.effects.unsettled() > MAX_UNSETTLED {
            if self.shutdown.expired() {
                return Ok(false);
            }
            if !self.pause.may_act() {
                // Paused meanwhile: the loop holds (nothing is stored until it ends).
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(1));
            self.store_settled()?;
        }
        Ok(true)
    }

    /// Every 10 s, one progress line.
    fn log_progress(&self, last: &mut ProgressLog) {
        if last.at.elapsed() < Duration::from_secs(10) {
            return;
        }
        let secs = last.at.elapsed().as_secs_f64();
        let out = &self.tally.out;
        tracing::info!(
            records = out.records,
            per_sec = ((out.records - last.records) as f64 / secs).round(),
            lag = self.tasks.lag(),
            tasks = self.tasks.running.len(),
            alerts = out.alerts,
            "progress"
        );
        last.records = out.records;
        last.at = Instant::now();
    }

    /// Waits until every closed batch is settled and stored; false when the shutdown
    /// grace period ran out first.
    fn settle_all(&mut self) -> anyhow::Result<bool> {
        loop {
            self.store_settled()?;
            self.effects
                .take_reports(&self.tasks, &mut self.tally.out)?;
            if self.effects.unsettled() == 0 {
                return Ok(true);
            }
            // Paused meanwhile: what is unsettled stays in the outbox.
            if self.shutdown.expired() || self.pause.held() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the outbox entries of every settled batch and stores its checkpoint's
    /// offsets for the periodic group commit.
    fn store_settled(&mut self) -> anyhow::Result<()> {
        if !self.pause.may_act() {
            return Ok(());
        }
        let Some(latest) = self.effects.settled(&self.tasks)? else {
            return Ok(());
        };
        let running = &self.tasks.running;
        self.input
            .store_offsets(&latest, |p| running.contains_key(&p));
        self.tally.last_done = Some(Instant::now());
        Ok(())
    }

    /// Commits a checkpoint of every task that moved, then hands its effects over.
    fn checkpoint_all(&mut self) -> anyhow::Result<()> {
        let ps: Vec<i32> = self.tasks.running.keys().copied().collect();
        for p in ps {
            self.checkpoint(p)?;
        }
        self.tasks.set_outcome_metrics(self.live.crr_days());
        self.tasks.set_outbox_gauge();
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// One task's checkpoint, then the hand-over of what it made durable.
    fn checkpoint(&mut self, p: i32) -> anyhow::Result<()> {
        match self.tasks.checkpoint(p, &mut self.tally.out)? {
            // A pause began during the checkpoint: its effects wait for the hold's end.
            Some(h) if !self.pause.may_act() => {
                self.hold.kept.push(h);
                Ok(())
            }
            Some(h) => self.effects.hand_over(&self.tasks, h, &mut self.tally.out),
            None => Ok(()),
        }
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
        let grace = self.startup.shutdown_grace();
        let left = self
            .effects
            .after_fault(&mut self.tasks, grace, &mut self.tally.out);
        // Leave the group now: another replica may take the tasks.
        self.leave_group();
        let line = stopped_line(&self.startup.state().dir, &e, left);
        self.health.set_stopped(&line);
        anyhow::Error::new(Stopped(line))
    }

    /// Gives up the group membership at once: no loop is left to answer a revoke, which
    /// would otherwise block the consumer's close.
    fn leave_group(&mut self) {
        self.stop_answering();
        self.input.consumer.unsubscribe();
    }

    /// After a clean or graceless stop: the sender stopped, its last reports recorded,
    /// the final commit if clean, the export, and the group left.
    fn finish(&mut self, opts: &Options) -> anyhow::Result<()> {
        // Emails in flight get what is left of the grace period; waiting ones stay in
        // the outbox for the next start.
        let grace = self.shutdown.remaining().unwrap_or(Duration::from_secs(5));
        self.effects.stop_sender(grace);
        self.effects
            .take_reports(&self.tasks, &mut self.tally.out)?;
        self.stop_answering();
        if self.tally.out.clean {
            if let Err(e) = self.input.consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "final commit");
            }
        }
        self.tally.out.busy = match (self.tally.first_record, self.tally.last_done) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => Duration::ZERO,
        };
        if let Some(path) = &opts.export_customers {
            crate::replay::write_snapshots(&self.tasks.snapshots(), path)?;
        }
        self.input.consumer.unsubscribe();
        Ok(())
    }
}

/// The worker stopped for good: a full or read-only volume, already logged (one line)
/// and shown at `/readyz`. `main` keeps serving until SIGTERM instead of exiting into a
/// restart loop.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);

/// Turns a disk fault into [`Stopped`] (logging its one line and setting not-ready);
/// other errors pass.
fn stopped(cfg: &Config, health: &Health, e: anyhow::Error) -> anyhow::Error {
    if disk::fault(&e).is_none() {
        return e;
    }
    let line = stopped_line(&cfg.state.dir, &e, 0);
    health.set_stopped(&line);
    anyhow::Error::new(Stopped(line))
}

/// Logs the one line of a disk fault `e` and returns it; `unmarked` counts sent emails
/// whose outbox removal failed anyway.
fn stopped_line(dir: &std::path::Path, e: &anyhow::Error, unmarked: usize) -> String {
    let line = disk::fault(e).map_or_else(|| e.to_string(), |f| f.line(dir));
    if unmarked > 0 {
        let n = unmarked;
        tracing::error!(error = %format!("{e:#}"), unmarked = n, "{line} ({n} finished emails could not be removed from the outbox and go again after a restart)");
    } else {
        tracing::error!(error = %format!("{e:#}"), "{line}");
    }
    line
}
