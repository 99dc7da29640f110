//! What the service does that an operator sees, one struct per kind of happening. Each
//! one logs itself and counts itself — its Prometheus series (README "Metrics") and the
//! run's summary ([`Outcome`], the line `run` prints at exit) — in this one place, so a
//! log line, a metric and the summary cannot disagree (vector's `internal_events`).
//!
//! The worker emits them: `event.emit(&metrics, &mut outcome)` (or `emit(&metrics)` for
//! the few that are not part of the summary).

use std::time::Duration;

use crate::alert::Decision;
use crate::engine::rule::Rule;
use crate::mail::sender::Status;
use crate::mail::EmailOutcome;
use crate::metrics::Metrics;

/// A happening that is logged and counted.
pub trait Observed {
    /// Logs it, and counts it in `metrics` and in the run's summary.
    fn emit(self, metrics: &Metrics, out: &mut Outcome);
}

/// What a run did: the exit summary, counted only by the events of this module.
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

/// A record taken from an input partition.
pub struct RecordTaken;

impl Observed for RecordTaken {
    fn emit(self, metrics: &Metrics, out: &mut Outcome) {
        out.records += 1;
        metrics.records.inc();
    }
}

/// A record whose partition is not murmur2 of its customer id.
pub struct RecordMisrouted<'a> {
    /// Where it was read.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

impl Observed for RecordMisrouted<'_> {
    fn emit(self, metrics: &Metrics, out: &mut Outcome) {
        // One line says what is wrong; every record is counted.
        if out.misrouted == 0 {
            let RecordMisrouted {
                topic,
                partition,
                offset,
            } = self;
            tracing::warn!(topic, partition, offset, "record's partition is not murmur2 of its customer id (its key, or the payload's when the key is null): its customer's events may be split across tasks (producers must use partitioner=murmur2_random); counted, further ones not logged");
        }
        out.misrouted += 1;
        metrics.misrouted.inc();
    }
}

/// A record rejected to the dead-letter topic.
pub struct RecordRejected<'a> {
    /// Where it was read.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The reject class (README "Input: limits and reject classes").
    pub class: &'static str,
    /// Why, without personal data.
    pub reason: &'a str,
}

impl Observed for RecordRejected<'_> {
    fn emit(self, metrics: &Metrics, out: &mut Outcome) {
        let RecordRejected {
            topic,
            partition,
            offset,
            class,
            reason,
        } = self;
        out.rejected += 1;
        Metrics::inc(&metrics.rejects, &[("class", class)]);
        tracing::info!(
            topic,
            partition,
            offset,
            class,
            reason,
            "record rejected to the dead-letter topic"
        );
    }
}

/// An alert the engine decided, with its guard decision.
pub struct AlertDecided {
    /// Its rule.
    pub rule: Rule,
    /// What the guards decided.
    pub decision: Decision,
}

impl AlertDecided {
    /// Counts it (alerts are logged as their JSON lines, and summed by the engine).
    pub fn emit(self, metrics: &Metrics) {
        metrics.alert(self.rule, self.decision);
        if let Decision::Suppressed(why) = self.decision {
            Metrics::inc(
                &metrics.emails_suppressed,
                &[("reason", why.name()), ("at", "decision")],
            );
        }
    }
}

/// An alert handed to the producer.
pub struct AlertPublished;

impl Observed for AlertPublished {
    fn emit(self, _: &Metrics, out: &mut Outcome) {
        out.alerts += 1;
    }
}

/// An alert or dead letter the producer refused for good (too large for the broker).
pub struct RecordDropped<'a> {
    /// Its outbox entry.
    pub entry: u64,
    /// The producer's error.
    pub error: &'a dyn std::fmt::Display,
}

impl Observed for RecordDropped<'_> {
    fn emit(self, _: &Metrics, out: &mut Outcome) {
        tracing::error!(error = %self.error, entry = self.entry, "record refused by the producer; dropped");
        out.dropped += 1;
    }
}

/// A checkpoint committed to a task's store.
pub struct CheckpointCommitted;

impl Observed for CheckpointCommitted {
    fn emit(self, metrics: &Metrics, out: &mut Outcome) {
        out.checkpoints += 1;
        metrics.checkpoints.inc();
    }
}

/// Counts one email's fate: the `emails` series, the summary, and for a suppression at
/// send time the `emails_suppressed` series.
fn count_email(
    outcome: EmailOutcome,
    suppressed: Option<&str>,
    metrics: &Metrics,
    out: &mut Outcome,
) {
    Metrics::inc(&metrics.emails, &[("outcome", outcome.label())]);
    match outcome {
        EmailOutcome::Sent | EmailOutcome::Written => out.emails += 1,
        EmailOutcome::AlreadyWritten => out.emails_again += 1,
        EmailOutcome::Failed => out.emails_failed += 1,
        EmailOutcome::Expired => {
            out.emails_failed += 1;
            out.emails_expired += 1;
        }
        EmailOutcome::Suppressed => out.emails_suppressed += 1,
        EmailOutcome::Deferred => out.emails_deferred += 1,
        EmailOutcome::Retried => out.emails_retried += 1,
    }
    if let Some(why) = suppressed {
        Metrics::inc(
            &metrics.emails_suppressed,
            &[("reason", why), ("at", "send")],
        );
    }
}

/// An email the file transport wrote (or found written, or could not build).
pub struct EmailWritten {
    /// `Written`, `AlreadyWritten` or `Failed`.
    pub outcome: EmailOutcome,
}

impl Observed for EmailWritten {
    fn emit(self, metrics: &Metrics, out: &mut Outcome) {
        count_email(self.outcome, None, metrics, out);
    }
}

/// Why an email is not sent at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its message could not be built (bad address, template error): `failed`.
    Unbuildable(String),
    /// Its customer is no longer reachable: `suppressed`, and why.
    Suppressed(&'static str),
}

impl Refusal {
    /// What it counts as (its label is also the `sends.jsonl` status).
    pub fn outcome(&self) -> EmailOutcome {
        match self {
            Refusal::Unbuildable(_) => EmailOutcome::Failed,
            Refusal::Suppressed(_) => EmailOutcome::Suppressed,
        }
    }
}

/// An email not sent at all: it could not be built, or its customer can no longer be
/// reached (checked again before sending).
pub struct EmailRefused<'a> {
    /// Its alert.
    pub alert_id: &'a str,
    /// Why.
    pub refusal: &'a Refusal,
}

impl Observed for EmailRefused<'_> {
    fn emit(self, metrics: &Metrics, out: &mut Outcome) {
        let suppressed = match self.refusal {
            Refusal::Unbuildable(reason) => {
                tracing::warn!(alert_id = %self.alert_id, %reason, "email not built");
                None
            }
            Refusal::Suppressed(why) => Some(*why),
        };
        count_email(self.refusal.outcome(), suppressed, metrics, out);
    }
}

/// The SMTP sender's report on one attempt.
pub struct EmailReported<'a> {
    /// Its alert.
    pub alert_id: &'a str,
    /// What happened.
    pub status: &'a Status,
}

impl Observed for EmailReported<'_> {
    fn emit(self, metrics: &Metrics, out: &mut Outcome) {
        let alert_id = self.alert_id;
        let (outcome, suppressed) = match self.status {
            Status::Sent(_) => (EmailOutcome::Sent, None),
            Status::Failed(_) => {
                tracing::warn!(%alert_id, "email refused for good by the relay (5xx); recorded in sends.jsonl");
                (EmailOutcome::Failed, None)
            }
            Status::Suppressed(why) => (EmailOutcome::Suppressed, Some(*why)),
            Status::Deferred(_) => (EmailOutcome::Deferred, None),
            Status::Expired { attempts, .. } => {
                tracing::warn!(%alert_id, attempts, "email still not accepted after smtp.max_retry_age; recorded as failed (expired)");
                (EmailOutcome::Expired, None)
            }
            Status::Retrying { attempt, next, .. } => {
                tracing::info!(%alert_id, attempt, %next, "email not accepted yet; will retry");
                (EmailOutcome::Retried, None)
            }
        };
        count_email(outcome, suppressed, metrics, out);
    }
}

/// An email left in the store while the sender holds `smtp.queue_limit`.
pub struct EmailHeldBack;

impl Observed for EmailHeldBack {
    fn emit(self, _: &Metrics, out: &mut Outcome) {
        out.emails_held_back += 1;
    }
}

/// The result of a config reload.
pub enum Reloaded<'a> {
    /// The new settings are in force; `restart_only` lists what waits for a restart.
    Applied {
        /// Keys changed in the file that take effect only at a restart.
        restart_only: &'a [&'static str],
    },
    /// The file or templates did not validate; the running config stays.
    Refused {
        /// What is wrong, one problem after another.
        problems: &'a str,
    },
}

impl Reloaded<'_> {
    /// Logs and counts it (a reload is not part of the run's summary).
    pub fn emit(self, metrics: &Metrics) {
        match self {
            Reloaded::Applied { restart_only } => {
                if !restart_only.is_empty() {
                    tracing::warn!(keys = ?restart_only, "config reload: these settings change only at a restart; the running values stay until then");
                }
                Metrics::inc(&metrics.reloads, &[("result", "applied")]);
                tracing::info!(
                    "config reloaded: thresholds, guards and templates in force from the next decision"
                );
            }
            Reloaded::Refused { problems } => {
                Metrics::inc(&metrics.reloads, &[("result", "refused")]);
                tracing::error!(problems = %problems, "config reload refused; the running config stays in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one series in the exposition text, 0 when it is absent.
    fn series(metrics: &Metrics, line_start: &str) -> u64 {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn an_expired_email_counts_as_failed_and_expired_in_the_summary_and_the_series() {
        let m = Metrics::default();
        let mut out = Outcome::default();
        let status = Status::Expired {
            attempts: 3,
            reason: "451 busy".into(),
        };
        EmailReported {
            alert_id: "a1",
            status: &status,
        }
        .emit(&m, &mut out);
        assert_eq!((out.emails_failed, out.emails_expired), (1, 1));
        assert_eq!(
            series(&m, "churnwatch_emails_total{outcome=\"expired\"}"),
            1
        );
        assert_eq!(series(&m, "churnwatch_emails_total{outcome=\"failed\"}"), 0);
    }

    #[test]
    fn a_suppression_at_send_time_counts_its_reason_once() {
        let m = Metrics::default();
        let mut out = Outcome::default();
        for _ in 0..2 {
            EmailRefused {
                alert_id: "a1",
                refusal: &Refusal::Suppressed("unsubscribed"),
            }
            .emit(&m, &mut out);
        }
        assert_eq!(out.emails_suppressed, 2);
        assert_eq!(
            series(
                &m,
                "churnwatch_emails_suppressed_total{reason=\"unsubscribed\",at=\"send\"}"
            ),
            2
        );
    }

    #[test]
    fn every_misrouted_record_is_counted() {
        let m = Metrics::default();
        let mut out = Outcome::default();
        for offset in 0..3 {
            RecordMisrouted {
                topic: "t",
                partition: 0,
                offset,
            }
            .emit(&m, &mut out);
        }
        assert_eq!(out.misrouted, 3);
        assert_eq!(series(&m, "churnwatch_misrouted_records_total"), 3);
    }
}
