//! Effects after their checkpoint (docs/design.md §9 Effects, §10 Sender): handing
//! outbox entries over (alerts and dead letters to the publisher, emails to the file
//! transport or the SMTP sender), removing them once done, and recording what became of
//! each email.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};

use super::tasks::Tasks;
use super::{HandOver, Outcome};
use crate::alert::Suppression;
use crate::disk;
use crate::mail::mailer::{FileMailer, SendLine, SendLog, Written};
use crate::mail::sender::{Job, Report, Sender, Status};
use crate::metrics::Metrics;
use crate::observe::{
    AlertPublished, EmailHeldBack, EmailRefused, EmailReported, EmailWritten, Observed,
    RecordDropped, Refusal,
};
use crate::outbox::{Email, Entry};
use crate::publisher::{Publisher, QueueError};

/// Where emails go: written as files at once, or sent over SMTP by the sender thread.
pub(super) enum Delivery<'a> {
    /// `.eml` files, written and synced at hand-over.
    File(FileMailer<'a>),
    /// The SMTP sender thread, and `sends.jsonl` for what it reports.
    Smtp { sender: Sender, log: SendLog },
}

/// What a settled batch of hand-overs completes: the outbox entries to remove and the
/// checkpoint offsets that may now be committed to the group.
#[derive(Debug)]
pub(super) struct Covered {
    task: i32,
    entries: Vec<u64>,
    offsets: Vec<(usize, i64)>,
}

/// What one hand-over did at once, finished after the `.eml` files are synced.
#[derive(Default)]
struct Handed {
    /// Entries in the publisher's batch.
    published: Vec<u64>,
    /// Entries done at once: emails the transport has, records Kafka refuses outright.
    done_now: Vec<u64>,
    /// Their send-log lines, written only once the entries are removed.
    written: Vec<(Email, Written)>,
    refusals: Vec<(Email, Refusal)>,
}

/// The effects part of the worker: the publisher, the email delivery, and the entries
/// waiting for either.
pub(super) struct Effects<'a> {
    publisher: Publisher<Covered>,
    delivery: Delivery<'a>,
    /// Emails (task, outbox entry) left in the store while the sender holds
    /// `smtp.queue_limit`; handed over, in order, as it drains.
    held_back: VecDeque<(i32, u64)>,
    /// Per task, finished email entries not yet removed from its outbox (a removal that
    /// failed is retried once the reserve is freed, before the worker stops).
    unmarked: BTreeMap<i32, Vec<u64>>,
    alerts_topic: String,
    dlq_topic: String,
    queue_limit: usize,
    metrics: Arc<Metrics>,
}

impl<'a> Effects<'a> {
    /// `topics` are the (alerts, dead-letter) topics; `queue_limit` is `smtp.queue_limit`.
    pub(super) fn new(
        publisher: Publisher<Covered>,
        delivery: Delivery<'a>,
        (alerts_topic, dlq_topic): (&str, &str),
        queue_limit: usize,
        metrics: Arc<Metrics>,
    ) -> Effects<'a> {
        Effects {
            publisher,
            delivery,
            held_back: VecDeque::new(),
            unmarked: BTreeMap::new(),
            alerts_topic: alerts_topic.to_string(),
            dlq_topic: dlq_topic.to_string(),
            queue_limit,
            metrics,
        }
    }

    /// The SMTP sender, if emails go over SMTP.
    pub(super) fn sender(&self) -> Option<&Sender> {
        match &self.delivery {
            Delivery::Smtp { sender, .. } => Some(sender),
            Delivery::File(_) => None,
        }
    }

    /// Batches closed and not settled yet.
    pub(super) fn unsettled(&self) -> usize {
        self.publisher.unsettled()
    }

    /// Hands outbox entries to Kafka and the mail transport, as one batch that settles
    /// once the broker acknowledged its records.
    pub(super) fn hand_over(
        &mut self,
        tasks: &Tasks,
        h: HandOver,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        let HandOver {
            task: p,
            entries,
            offsets,
        } = h;
        let smtp_emails =
            self.sender().is_some() && entries.iter().any(|(_, e)| matches!(e, Entry::Email(_)));
        let failures = match tasks.store(p).filter(|_| smtp_emails) {
            Some(st) => st.first_failures()?,
            None => BTreeMap::new(),
        };
        let blocked = self.blocked(tasks, p, &entries);
        let mut handed = Handed::default();
        for (n, entry) in entries {
            match entry {
                Entry::Email(email) => {
                    let refusal = match (&email.message, blocked.get(&n)) {
                        (Err(reason), _) => Some(Refusal::Unbuildable(reason.clone())),
                        (Ok(_), Some(why)) => Some(Refusal::Suppressed(why.name())),
                        (Ok(_), None) => None,
                    };
                    let first = first_failure(&failures, n);
                    self.deliver((p, n), email, refusal, first, &mut handed, out)?;
                }
                other => self.publish(n, other, &mut handed, out)?,
            }
        }
        let Handed {
            published,
            done_now,
            written,
            refusals,
        } = handed;
        self.finish_hand_over(tasks, p, done_now, written, refusals, out)?;
        self.publisher.close(Covered {
            task: p,
            entries: published,
            offsets,
        });
        Ok(())
    }

    /// Queues an alert or a dead letter into the open batch.
    fn publish(
        &mut self,
        n: u64,
        entry: Entry,
        handed: &mut Handed,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        let sent = match &entry {
            Entry::Alert { key, payload } => self.publisher.send(
                &self.alerts_topic,
                Some(key.as_bytes()),
                payload.as_bytes(),
                None,
            ),
            Entry::DeadLetter {
                key,
                payload,
                headers,
            } => {
                let mut h = OwnedHeaders::new();
                for (name, value) in headers {
                    h = h.insert(Header {
                        key: name,
                        value: value.as_deref(),
                    });
                }
                self.publisher
                    .send(&self.dlq_topic, key.as_deref(), payload, Some(h))
            }
            Entry::Email(_) => return Ok(()),
        };
        if refused(sent, n, &self.metrics, out, &mut handed.done_now)? {
            return Ok(());
        }
        if matches!(entry, Entry::Alert { .. }) {
            AlertPublished.emit(&self.metrics, out);
        }
        handed.published.push(n);
        Ok(())
    }

    /// Writes an email (file transport), or hands it to the sender unless it is refused
    /// or the sender is full (then it waits in the store: `held_back`).
    fn deliver(
        &mut self,
        (p, n): (i32, u64),
        email: Email,
        refusal: Option<Refusal>,
        first_failure: Option<jiff::Timestamp>,
        handed: &mut Handed,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        match &mut self.delivery {
            Delivery::File(m) => {
                let w = m.write(&email)?;
                EmailWritten { outcome: w.outcome }.emit(&self.metrics, out);
                handed.written.push((email, w));
                handed.done_now.push(n);
            }
            Delivery::Smtp { sender, .. } => match refusal {
                Some(r) => {
                    handed.refusals.push((email, r));
                    handed.done_now.push(n);
                }
                None if sender.held() >= self.queue_limit || !self.held_back.is_empty() => {
                    // It stays in the store; `refill` hands it over later.
                    self.held_back.push_back((p, n));
                    EmailHeldBack.emit(&self.metrics, out);
                }
                None => sender.send(Job {
                    task: p,
                    entry: n,
                    first_failure,
                    email,
                }),
            },
        }
        Ok(())
    }

    /// The end of a hand-over: `.eml` files synced, entries done at once removed, then
    /// their send-log lines.
    fn finish_hand_over(
        &mut self,
        tasks: &Tasks,
        p: i32,
        done_now: Vec<u64>,
        written: Vec<(Email, Written)>,
        refusals: Vec<(Email, Refusal)>,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        // The .eml files are on disk for good (synced) before their entries go.
        if let Delivery::File(m) = &mut self.delivery {
            m.sync()?;
        }
        // An email is done once the transport has it: mark it now, not with the batch's
        // broker acknowledgements, so that the window in which a crash could hand it
        // over again is this one write (README, "Durability"). Before the send log: a
        // log line that cannot be written must not keep a delivered email in the outbox.
        self.mark_done(tasks, p, done_now)?;
        match &mut self.delivery {
            Delivery::File(m) => {
                for (email, w) in &written {
                    m.log(email, w)?;
                }
                m.flush()?;
            }
            Delivery::Smtp { log, .. } => {
                for (email, refusal) in refusals {
                    record_refusal(log, out, &self.metrics, &email, refusal)?;
                }
                log.flush()?;
            }
        }
        Ok(())
    }

    /// The emails among `entries` that must not go out now, and why: their customer has
    /// unsubscribed, bounced, withdrawn consent or been erased since the decision
    /// (docs/design.md §10 Sender). Only the SMTP sender checks again; the file
    /// transport writes what was decided.
    fn blocked(
        &self,
        tasks: &Tasks,
        p: i32,
        entries: &[(u64, Entry)],
    ) -> BTreeMap<u64, Suppression> {
        let (Some(_), Some(engine)) = (self.sender(), tasks.engine(p)) else {
            return BTreeMap::new();
        };
        entries
            .iter()
            .filter_map(|(n, e)| match e {
                Entry::Email(m) => engine.suppression(&m.customer_id).map(|why| (*n, why)),
                _ => None,
            })
            .collect()
    }

    /// Removes finished entries from task `p`'s outbox, synced. They are remembered until
    /// that succeeds, so that after a disk fault they can still be removed once the
    /// reserve is freed ([`Effects::after_fault`]).
    fn mark_done(&mut self, tasks: &Tasks, p: i32, entries: Vec<u64>) -> anyhow::Result<()> {
        let list = self.unmarked.entry(p).or_default();
        list.extend(entries);
        tasks.mark_done(p, list)?;
        self.unmarked.remove(&p);
        Ok(())
    }

    /// Removes the outbox entries of every settled batch and returns, per (task, lane),
    /// the latest checkpoint offset they complete (to be stored for the group commit);
    /// None when nothing settled.
    pub(super) fn settled(
        &mut self,
        tasks: &Tasks,
    ) -> anyhow::Result<Option<BTreeMap<(i32, usize), i64>>> {
        let settled = self.publisher.settled();
        if settled.is_empty() {
            return Ok(None);
        }
        let mut latest = BTreeMap::new();
        for c in &settled {
            tasks.mark_done(c.task, &c.entries)?;
            for &(lane, o) in &c.offsets {
                latest.insert((c.task, lane), o);
            }
        }
        Ok(Some(latest))
    }

    /// Removes the outbox entries of emails the sender reports finished (sent, failed
    /// for good, expired, suppressed), stores first failures, then records every report.
    /// Removal comes first and is synced: a send log that cannot be written must never
    /// leave a sent email in the outbox, to be sent again after a restart.
    pub(super) fn take_reports(&mut self, tasks: &Tasks, out: &mut Outcome) -> anyhow::Result<()> {
        let Delivery::Smtp { sender, .. } = &self.delivery else {
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
            self.mark_done(tasks, p, entries)?;
        }
        for (p, entries) in failing {
            tasks.note_first_failures(p, &entries)?;
        }
        if let Delivery::Smtp { log, .. } = &mut self.delivery {
            for r in &reports {
                record_report(log, r, out, &self.metrics)?;
            }
            log.flush()?;
        }
        Ok(())
    }

    /// Hands held-back emails to the sender, in order, while it has room; each is read
    /// from its store and checked for suppression again.
    pub(super) fn refill(&mut self, tasks: &Tasks, out: &mut Outcome) -> anyhow::Result<()> {
        let Delivery::Smtp { sender, .. } = &self.delivery else {
            return Ok(());
        };
        let mut done: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
        let mut refused = Vec::new();
        let mut failures: BTreeMap<i32, BTreeMap<u64, i64>> = BTreeMap::new();
        while sender.held() < self.queue_limit {
            let Some((p, n)) = self.held_back.pop_front() else {
                break;
            };
            let (Some(engine), Some(st)) = (tasks.engine(p), tasks.store(p)) else {
                continue;
            };
            let Some(Entry::Email(email)) = st.entry(n)? else {
                continue;
            };
            if let Some(why) = engine.suppression(&email.customer_id) {
                refused.push((email, Refusal::Suppressed(why.name())));
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
            self.mark_done(tasks, p, entries)?;
        }
        if let Delivery::Smtp { log, .. } = &mut self.delivery {
            for (email, refusal) in refused {
                record_refusal(log, out, &self.metrics, &email, refusal)?;
            }
            log.flush()?;
        }
        Ok(())
    }

    /// On revoke: emails waiting in the sender stay in the outbox for the next owner;
    /// those in flight finish here, so none is sent by both. Held-back emails are in the
    /// outbox of tasks that are leaving.
    pub(super) fn withdraw(&mut self, tasks: &Tasks) {
        if let Delivery::Smtp { sender, .. } = &self.delivery {
            for p in tasks.running.keys() {
                sender.withdraw(*p);
            }
        }
        self.held_back.clear();
    }

    /// Stops the sender: emails in flight get `grace`; waiting ones stay in the outbox
    /// for the next start.
    pub(super) fn stop_sender(&mut self, grace: Duration) {
        if let Delivery::Smtp { sender, .. } = &mut self.delivery {
            sender.stop(grace);
        }
    }

    /// After a disk fault, with the reserve freed: stops the sender within `grace`,
    /// removes the outbox entries of every finished email (reopening a store that redb
    /// closed after its failed write), then writes their send-log lines if there is room.
    /// Returns how many finished emails could not be removed.
    pub(super) fn after_fault(
        &mut self,
        tasks: &mut Tasks,
        grace: Duration,
        out: &mut Outcome,
    ) -> usize {
        let mut reports = Vec::new();
        if let Delivery::Smtp { sender, .. } = &mut self.delivery {
            sender.stop(grace);
            reports = sender.reports();
            for r in reports.iter().filter(|r| r.status.is_final()) {
                self.unmarked.entry(r.task).or_default().push(r.entry);
            }
        }
        let mut left = 0;
        for (p, entries) in std::mem::take(&mut self.unmarked) {
            if !tasks.mark_done_reopening(p, &entries) {
                left += entries.len();
            }
        }
        // Their send-log lines, if there is room for them now; the removals above are
        // what matters.
        if let Delivery::Smtp { log, .. } = &mut self.delivery {
            for r in &reports {
                if record_report(log, r, out, &self.metrics).is_err() {
                    break;
                }
            }
            let _ = log.flush();
        }
        left
    }
}

/// When entry `n` first failed transiently, from its store's record.
fn first_failure(failures: &BTreeMap<u64, i64>, n: u64) -> Option<jiff::Timestamp> {
    failures
        .get(&n)
        .and_then(|s| jiff::Timestamp::from_second(*s).ok())
}

/// Whether a record was refused for good (too large for the broker): logged, counted and
/// done, so that it cannot stop the worker at every restart. Other errors pass on.
fn refused(
    sent: Result<(), QueueError>,
    entry: u64,
    metrics: &Metrics,
    out: &mut Outcome,
    done: &mut Vec<u64>,
) -> anyhow::Result<bool> {
    match sent {
        Ok(()) => Ok(false),
        Err(e) if e.is_permanent() => {
            RecordDropped { entry, error: &e }.emit(metrics, out);
            done.push(entry);
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Records an email that is not sent at all: it could not be built (`failed`) or its
/// customer is no longer reachable (`suppressed`).
fn record_refusal(
    log: &mut SendLog,
    out: &mut Outcome,
    metrics: &Metrics,
    email: &Email,
    refusal: Refusal,
) -> Result<(), disk::PathError> {
    EmailRefused {
        alert_id: &email.alert_id,
        refusal: &refusal,
    }
    .emit(metrics, out);
    let status = refusal.outcome().label();
    let reason = match refusal {
        Refusal::Unbuildable(reason) => reason,
        Refusal::Suppressed(why) => why.to_string(),
    };
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

/// What a sender report is written as in `sends.jsonl`: (status, reason, until, attempt).
type ReportLine = (&'static str, Option<String>, Option<String>, Option<u32>);

/// A report's send-log fields.
fn report_line(status: &Status) -> ReportLine {
    match status {
        Status::Sent(reply) => ("sent", Some(reply.clone()), None, None),
        Status::Failed(reply) => ("failed", Some(reply.clone()), None, None),
        Status::Suppressed(why) => ("suppressed", Some((*why).to_string()), None, None),
        Status::Deferred(t) => (
            "deferred",
            Some("quiet hours".into()),
            Some(t.to_string()),
            None,
        ),
        Status::Expired { attempts, reason } => (
            "failed",
            Some(format!("expired: {reason}")),
            None,
            Some(*attempts),
        ),
        Status::Retrying {
            attempt,
            reason,
            next,
            ..
        } => (
            "retrying",
            Some(reason.clone()),
            Some(next.to_string()),
            Some(*attempt),
        ),
    }
}

/// Writes one sender report to `sends.jsonl` and counts it.
fn record_report(
    log: &mut SendLog,
    r: &Report,
    out: &mut Outcome,
    metrics: &Metrics,
) -> Result<(), disk::PathError> {
    EmailReported {
        alert_id: &r.alert_id,
        status: &r.status,
    }
    .emit(metrics, out);
    let (status, reason, until, attempt) = report_line(&r.status);
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
