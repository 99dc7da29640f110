//! The sender (docs/design.md §10 Sender): takes emails the outbox handed over and sends them through
//! the SMTP pool on a thread of its own, applying what is decided at send time: quiet
//! hours in the customer's time zone (deferred, not dropped), the global rate limit,
//! retries of transient failures with capped exponential backoff, and a suppression that
//! arrives while an email waits (it wins).
//!
//! It keeps nothing durable: every email it holds is still an outbox entry, removed only
//! when a [`Report`] says it is finished (sent, failed for good, suppressed). So a restart
//! hands waiting and retrying emails over again; none is lost.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lettre::address::Envelope;
use lettre::Address;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::settings::{SendSettings, SmtpSettings};
use super::smtp::{self, Failure, Pool};
use crate::outbox::Email;
use crate::pause::PauseWatch;

/// One email to send: its outbox entry and the message.
#[derive(Clone, Debug)]
pub struct Job {
    /// The task whose outbox holds it.
    pub task: i32,
    /// Its outbox entry number.
    pub entry: u64,
    /// The email (its message is `Ok`: unbuildable ones never reach the sender).
    pub email: Email,
    /// When it first failed transiently, as stored with its outbox entry (None: never).
    pub first_failure: Option<jiff::Timestamp>,
}

/// What happened to an email.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Accepted by the relay, with its reply. Final.
    Sent(String),
    /// Refused for good (5xx), with the reply. Final.
    Failed(String),
    /// A suppression arrived while it waited. Final.
    Suppressed(&'static str),
    /// In quiet hours: waits until then (RFC 3339). Not final.
    Deferred(jiff::Timestamp),
    /// Transient failure number `attempt`; tried again at the given time. Not final.
    Retrying {
        /// Failures so far (in this process).
        attempt: u32,
        /// What went wrong.
        reason: String,
        /// Next try.
        next: jiff::Timestamp,
        /// The first transient failure ever (stored, so the age survives restarts).
        since: jiff::Timestamp,
    },
    /// Still failing transiently `smtp.max_retry_age` after its first failure: given up,
    /// like an MTA bouncing after days in its queue. Final.
    Expired {
        /// Failures in this process.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
}

impl Status {
    /// Whether the outbox entry is finished.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Status::Sent(_) | Status::Failed(_) | Status::Suppressed(_) | Status::Expired { .. }
        )
    }
}

/// The sender's account of one email.
#[derive(Clone, Debug)]
pub struct Report {
    /// The task of its outbox entry.
    pub task: i32,
    /// The entry number.
    pub entry: u64,
    /// Its alert.
    pub alert_id: String,
    /// Its Message-ID (without brackets).
    pub message_id: String,
    /// The locale it was rendered in.
    pub locale: String,
    /// What happened.
    pub status: Status,
}

enum Command {
    Send(Job),
    Suppress(String, &'static str),
    Withdraw(i32, std::sync::mpsc::Sender<()>),
    Stop(Duration),
}

/// Handle of the sender thread.
pub struct Sender {
    commands: mpsc::UnboundedSender<Command>,
    reports: std::sync::mpsc::Receiver<Report>,
    held: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Delay before try `attempt + 1` after `attempt` failures: `initial` doubling up to `max`,
/// then spread over its upper half by a hash of the Message-ID, so that emails that
/// failed together do not come back together (deterministic, for repeatable tests).
pub fn backoff(initial: Duration, max: Duration, attempt: u32, message_id: &str) -> Duration {
    let doubled = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let base = doubled.min(max);
    let spread = xxhash_rust::xxh3::xxh3_64(format!("{message_id}/{attempt}").as_bytes());
    let frac = (spread % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + 0.5 * frac)
}

impl Sender {
    /// Starts the sender thread with its pool to the relay. `from` is the envelope sender;
    /// no email starts while `pause` refuses (this process may no longer own its tasks).
    pub fn start(
        smtp: &SmtpSettings,
        send: &SendSettings,
        from: Address,
        pause: PauseWatch,
    ) -> anyhow::Result<Sender> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let pool = smtp::transport(smtp)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (report_tx, reports) = std::sync::mpsc::channel();
        let held = Arc::new(AtomicUsize::new(0));
        let core = Core {
            pool: Arc::new(pool),
            from,
            send: send.clone(),
            smtp: smtp.clone(),
            limiter: NonZeroU32::new(send.rate_limit)
                .map(|r| Arc::new(RateLimiter::direct(Quota::per_second(r)))),
            reports: report_tx,
            held: held.clone(),
            queue: BTreeMap::new(),
            seq: 0,
            pause,
        };
        let thread = std::thread::Builder::new()
            .name("churnwatch-sender".into())
            .spawn(move || runtime.block_on(core.run(rx)))?;
        Ok(Sender {
            commands,
            reports,
            held,
            thread: Some(thread),
        })
    }

    /// Queues an email.
    pub fn send(&self, job: Job) {
        self.held.fetch_add(1, Ordering::Relaxed);
        if self.commands.send(Command::Send(job)).is_err() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A customer became unreachable (unsubscribed, bounced, erased, consent withdrawn):
    /// their waiting emails are dropped and reported as suppressed.
    pub fn suppress(&self, customer_id: &str, reason: &'static str) {
        let _ = self
            .commands
            .send(Command::Suppress(customer_id.to_string(), reason));
    }

    /// Gives a task back (rebalance): its waiting emails are dropped, unreported (they
    /// stay in its outbox for the next owner), and this returns once its emails in
    /// flight are finished and reported.
    pub fn withdraw(&self, task: i32) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.commands.send(Command::Withdraw(task, tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Reports since the last call.
    pub fn reports(&self) -> Vec<Report> {
        self.reports.try_iter().collect()
    }

    /// Emails held (waiting, in flight, or queued to the thread).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Stops: waiting emails are left (in the outbox), emails in flight get up to `grace`
    /// to finish. Reports of what finished are still readable with [`Sender::reports`].
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.commands.send(Command::Stop(grace));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

struct Waiting {
    job: Job,
    failures: u32,
    /// First transient failure (stored or seen here), from which the age counts.
    since: Option<jiff::Timestamp>,
}

type Outcome = (Waiting, Result<String, Failure>);

struct Core {
    pool: Arc<Pool>,
    from: Address,
    send: SendSettings,
    smtp: SmtpSettings,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    reports: std::sync::mpsc::Sender<Report>,
    held: Arc<AtomicUsize>,
    /// Emails waiting for their time, by due instant (then arrival).
    queue: BTreeMap<(Instant, u64), Waiting>,
    seq: u64,
    /// Refuses after this process was paused, until the worker knows its tasks again.
    pause: PauseWatch,
}

impl Core {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut inflight: JoinSet<Outcome> = JoinSet::new();
        let slots = self.smtp.pool_size as usize;
        // Tell the operator at once whether the relay answers; emails wait either way.
        let probe = self.pool.clone();
        let (host, port) = (self.smtp.host.clone(), self.smtp.port);
        tokio::spawn(async move {
            match probe.test_connection().await {
                Ok(true) => tracing::info!(%host, port, "SMTP relay reachable"),
                Ok(false) => {
                    tracing::warn!(%host, port, "SMTP relay did not answer NOOP; emails wait and are retried")
                }
                Err(Failure::Transient(e) | Failure::Permanent(e)) => {
                    tracing::warn!(%host, port, error = %e, "SMTP relay not reachable; emails wait and are retried")
                }
            }
        });
        loop {
            self.dispatch(&mut inflight, slots);
            let mut next_due = self.queue.keys().next().map(|k| k.0);
            if next_due.is_some() && !self.pause.may_act() {
                // Held: look again shortly (the hold is lifted, or the task withdrawn).
                next_due = Some(Instant::now() + Duration::from_millis(100));
            }
            let can_start = inflight.len() < slots && next_due.is_some();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Send(job)) => {
                        let since = job.first_failure;
                        self.wait(Waiting { job, failures: 0, since }, Instant::now())
                    }
                    Some(Command::Suppress(id, reason)) => self.suppress(&id, reason),
                    Some(Command::Withdraw(task, done)) => {
                        self.withdraw(task, &mut inflight).await;
                        let _ = done.send(());
                    }
                    Some(Command::Stop(grace)) => {
                        self.stop(&mut inflight, grace).await;
                        return;
                    }
                    None => {
                        self.stop(&mut inflight, Duration::ZERO).await;
                        return;
                    }
                },
                Some(res) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(outcome) = res {
                        self.finish(outcome);
                    }
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if can_start => {}
            }
        }
    }

    fn wait(&mut self, w: Waiting, at: Instant) {
        self.seq += 1;
        self.queue.insert((at, self.seq), w);
    }

    fn report(&self, job: &Job, status: Status) {
        if status.is_final() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = self.reports.send(Report {
            task: job.task,
            entry: job.entry,
            alert_id: job.email.alert_id.clone(),
            message_id: job.email.message_id.clone(),
            locale: job.email.locale.clone(),
            status,
        });
    }

    /// Starts every due email there is a connection and a rate-limit slot for.
    fn dispatch(&mut self, inflight: &mut JoinSet<Outcome>, slots: usize) {
        // Checked before each email: the residual window is a pause that begins between
        // this check and the email's transmission (docs/design.md §16, "Zombies").
        while inflight.len() < slots && self.pause.may_act() {
            let now = Instant::now();
            let Some(entry) = self.queue.first_entry() else {
                return;
            };
            if entry.key().0 > now {
                return;
            }
            let w = entry.remove();
            if let Some(q) = &self.send.quiet_hours {
                let tz =
                    super::quiet_hours::zone(&w.job.email.timezone, &self.send.default_timezone);
                let wall = jiff::Timestamp::now();
                if let Some(until) = q.defer_until(wall, &tz) {
                    let wait = Duration::try_from(until.duration_since(wall)).unwrap_or_default();
                    self.report(&w.job, Status::Deferred(until));
                    self.wait(w, now + wait);
                    continue;
                }
            }
            if let Some(l) = &self.limiter {
                if let Err(not_until) = l.check() {
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ));
                    self.wait(w, now + wait.max(Duration::from_millis(1)));
                    return;
                }
            }
            let pool = self.pool.clone();
            let from = self.from.clone();
            inflight.spawn(async move {
                let result = attempt(&pool, from, &w.job.email).await;
                (w, result)
            });
        }
    }

    fn finish(&mut self, (mut w, result): Outcome) {
        match result {
            Ok(reply) => self.report(&w.job, Status::Sent(reply)),
            Err(Failure::Permanent(reply)) => {
                self.report(&w.job, Status::Failed(reply));
            }
            Err(Failure::Transient(reason)) => {
                w.failures += 1;
                let now = jiff::Timestamp::now();
                let since = *w.since.get_or_insert(now);
                let age = Duration::try_from(now.duration_since(since)).unwrap_or_default();
                let left = self.smtp.max_retry_age.saturating_sub(age);
                if left.is_zero() {
                    self.report(
                        &w.job,
                        Status::Expired {
                            attempts: w.failures,
                            reason,
                        },
                    );
                    return;
                }
                // The last try falls at the age itself, not up to retry_max after it.
                let delay = backoff(
                    self.smtp.retry_initial,
                    self.smtp.retry_max,
                    w.failures,
                    &w.job.email.message_id,
                )
                .min(left);
                let next = now
                    .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or_default())
                    .unwrap_or(now);
                self.report(
                    &w.job,
                    Status::Retrying {
                        attempt: w.failures,
                        reason,
                        next,
                        since,
                    },
                );
                self.wait(w, Instant::now() + delay);
            }
        }
    }

    fn suppress(&mut self, customer_id: &str, reason: &'static str) {
        let keys: Vec<(Instant, u64)> = self
            .queue
            .iter()
            .filter(|(_, w)| w.job.email.customer_id == customer_id)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(w) = self.queue.remove(&k) {
                self.report(&w.job, Status::Suppressed(reason));
            }
        }
    }

    async fn withdraw(&mut self, task: i32, inflight: &mut JoinSet<Outcome>) {
        // Emails in flight cannot be called back: wait for them (the SMTP timeout bounds
        // this) and report them, so the outbox of the task is exact when it leaves.
        while let Some(res) = inflight.join_next().await {
            if let Ok(outcome) = res {
                self.finish(outcome);
            }
        }
        let before = self.queue.len();
        self.queue.retain(|_, w| w.job.task != task);
        self.held
            .fetch_sub(before - self.queue.len(), Ordering::Relaxed);
    }

    async fn stop(&mut self, inflight: &mut JoinSet<Outcome>, grace: Duration) {
        let deadline = Instant::now() + grace;
        while !inflight.is_empty() {
            match tokio::time::timeout_at(deadline, inflight.join_next()).await {
                Ok(Some(Ok(outcome))) => self.finish(outcome),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        inflight.abort_all();
    }
}

/// One try: the message with its send-time Date, to the customer's address.
async fn attempt(pool: &Pool, from: Address, email: &Email) -> Result<String, Failure> {
    let bytes = match &email.message {
        Ok(b) => b,
        Err(reason) => return Err(Failure::Permanent(reason.clone())),
    };
    let to: Address = email
        .to
        .parse()
        .map_err(|e| Failure::Permanent(format!("recipient address is not valid: {e}")))?;
    let envelope = Envelope::new(Some(from), vec![to])
        .map_err(|e| Failure::Permanent(format!("cannot build the envelope: {e}")))?;
    let message = smtp::with_date(bytes, jiff::Timestamp::now());
    pool.send_raw(&envelope, &message)
        .await
        .map(|resp| smtp::reply_text(&resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_its_upper_half() {
        let (i, m) = (Duration::from_secs(30), Duration::from_secs(3600));
        for attempt in 1..30 {
            let d = backoff(i, m, attempt, "x@y");
            let base = (i * (1 << (attempt - 1).min(20))).min(m);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(i, m, 1, "a@y") != backoff(i, m, 1, "b@y"));
        assert_eq!(backoff(i, m, 3, "a@y"), backoff(i, m, 3, "a@y"));
    }
}
