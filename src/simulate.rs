//! `churnwatch simulate`: the whole pipeline over JSONL files as a dry run under a given
//! config. It decides exactly as `replay` does (same driver), renders every email it
//! would send to find the ones that cannot be built, and reports per rule how many
//! alerts and emails, what each guard held back, how many would wait for quiet hours and
//! a sample of customers with the numbers that fired. It writes and sends nothing.
//! With `--compare`, two configs over the same input side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::alert::{Alert, Decision};
use crate::config::Config;
use crate::engine::clock::Stamp;
use crate::engine::retention::Crr;
use crate::engine::rule::Rule;
use crate::engine::stage::Stage;
use crate::event::EVENT_TYPES;
use crate::mail::mailer;
use crate::mail::quiet_hours;
use crate::mail::template::Templates;
use crate::replay::drive;
use crate::source::file::FileSource;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Input files, merged by event time.
    pub events: Vec<PathBuf>,
    /// Advance the clock to this instant after the last event.
    pub until: Option<Stamp>,
    /// Customers shown per rule.
    pub samples: usize,
}

/// One customer an alert fired for, with the numbers behind it.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The customer.
    pub customer_id: String,
    /// When it fired (event time).
    pub at: String,
    /// Step of a win-back sequence (0 for other rules).
    pub step: u8,
    /// The guards' decision.
    pub decision: String,
    /// Stage before and after.
    pub stage: String,
    /// churn_risk at the time, if known.
    pub churn_risk: Option<f64>,
    /// The rule's inputs (thresholds and the customer's numbers).
    pub inputs: serde_json::Value,
}

/// One rule's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RuleReport {
    /// The rule.
    pub rule: &'static str,
    /// Alerts fired.
    pub alerts: u64,
    /// Emails that would be sent (decision `email` and the message builds).
    pub emails: u64,
    /// Alerts by guard decision (`email`, `holdout`, `suppressed:<reason>`, `cooldown`,
    /// `capped`, `stale`).
    pub decisions: BTreeMap<String, u64>,
    /// Of the emails, those decided inside the customer's quiet hours (they would wait
    /// for the window's end).
    pub quiet_hours_deferred: u64,
    /// The first customers it fired for.
    pub samples: Vec<Sample>,
}

/// Win-back emails against the holdout group.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Conversion {
    /// Customers emailed by a win-back sequence.
    pub emailed: u64,
    /// Of those, customers who bought within the attribution window.
    pub emailed_converted: u64,
    /// Customers in the holdout group a sequence would have emailed.
    pub holdout: u64,
    /// Of those, customers who bought anyway.
    pub holdout_converted: u64,
}

/// What a simulation found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The config simulated.
    pub config: String,
    /// Records read.
    pub records: u64,
    /// Valid events applied, by type.
    pub events: BTreeMap<&'static str, u64>,
    /// Rejected lines, by class.
    pub rejects: BTreeMap<&'static str, u64>,
    /// The clock at the end.
    pub clock: Option<String>,
    /// Per rule, in the spec's order.
    pub rules: Vec<RuleReport>,
    /// Emails in all.
    pub emails: u64,
    /// Emails that could not be built (no address, template error).
    pub emails_failed: u64,
    /// Customers by stage at the end.
    pub stages: BTreeMap<&'static str, u64>,
    /// Win-back conversion.
    pub winback: Conversion,
    /// Customer retention rate over `metrics.crr_period` at the end, if a whole period
    /// was seen.
    pub crr: Option<Crr>,
    /// The same, in percent.
    pub crr_percent: Option<f64>,
}

/// Runs the pipeline over `opts.events` under `cfg` and reports; nothing is written.
pub fn run(cfg: &Config, templates: &Templates, opts: &Options) -> anyhow::Result<Report> {
    let mut source = FileSource::open(&opts.events, cfg.limits)?;
    let mut rules: Vec<RuleReport> = Rule::ALL
        .iter()
        .map(|r| RuleReport {
            rule: r.name(),
            ..RuleReport::default()
        })
        .collect();
    let (mut emails, mut failed) = (0u64, 0u64);
    let domain = cfg.mail.message_id_domain.clone();
    let mut on_alerts = |alerts: &mut Vec<Alert>| -> anyhow::Result<()> {
        for mut alert in alerts.drain(..) {
            let r = &mut rules[alert.rule.index()];
            r.alerts += 1;
            *r.decisions.entry(alert.decision.label()).or_default() += 1;
            if alert.decision == Decision::Email {
                let email = mailer::render(&cfg.mail, templates, &mut alert);
                if email.message.is_ok() {
                    r.emails += 1;
                    emails += 1;
                    if in_quiet_hours(cfg, &alert, &email.timezone) {
                        r.quiet_hours_deferred += 1;
                    }
                } else {
                    failed += 1;
                }
            }
            if r.samples.len() < opts.samples
                && !r
                    .samples
                    .iter()
                    .any(|s| *s.customer_id == *alert.customer_id)
            {
                r.samples.push(sample(&alert, &domain));
            }
        }
        Ok(())
    };
    let run = drive(
        cfg,
        &mut source,
        opts.until,
        4096,
        &mut on_alerts,
        |_, _, _| Ok(()),
    )?;
    let e = &run.engine;
    let st = e.stats();
    let crr = e.retention(cfg.crr_days);
    Ok(Report {
        config: cfg
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "embedded defaults".into()),
        records: run.records,
        events: EVENT_TYPES.iter().copied().zip(st.events).collect(),
        rejects: run.rejects,
        clock: e.clock().map(Stamp::to_rfc3339),
        rules,
        emails,
        emails_failed: failed,
        stages: Stage::ALL
            .iter()
            .map(|s| s.name())
            .zip(e.stage_counts())
            .collect(),
        winback: Conversion {
            emailed: st.winback_touched[0],
            emailed_converted: st.winback_converted[0],
            holdout: st.winback_touched[1],
            holdout_converted: st.winback_converted[1],
        },
        crr,
        crr_percent: crr.and_then(|c| c.percent()),
    })
}

/// Whether an email decided at the alert's time falls in the customer's quiet hours.
fn in_quiet_hours(cfg: &Config, alert: &Alert, timezone: &str) -> bool {
    let Some(q) = &cfg.send.quiet_hours else {
        return false;
    };
    let Ok(at) = jiff::Timestamp::from_second(alert.at.unix()) else {
        return false;
    };
    let tz = quiet_hours::zone(timezone, &cfg.send.default_timezone);
    q.defer_until(at, &tz).is_some()
}

fn sample(alert: &Alert, domain: &str) -> Sample {
    let wire: serde_json::Value =
        serde_json::from_str(&alert.to_json(domain)).unwrap_or(serde_json::Value::Null);
    Sample {
        customer_id: alert.customer_id.to_string(),
        at: alert.at.to_rfc3339(),
        step: alert.step,
        decision: alert.decision.label(),
        stage: format!("{} → {}", alert.stage_from.name(), alert.stage_to.name()),
        churn_risk: alert.churn_risk.map(crate::alert::round4),
        inputs: wire["inputs"].clone(),
    }
}

impl Report {
    /// The figures an operator compares, as (label, value) in display order.
    pub fn rows(&self) -> Vec<(String, Option<f64>)> {
        let mut rows = Vec::new();
        let mut push = |label: String, v: Option<f64>| rows.push((label, v));
        for r in &self.rules {
            push(format!("{} alerts", r.rule), Some(r.alerts as f64));
            push(format!("{} emails", r.rule), Some(r.emails as f64));
            for (d, n) in &r.decisions {
                if d != "email" {
                    push(format!("{}   {d}", r.rule), Some(*n as f64));
                }
            }
            if r.quiet_hours_deferred > 0 {
                push(
                    format!("{}   quiet hours (deferred)", r.rule),
                    Some(r.quiet_hours_deferred as f64),
                );
            }
        }
        push("emails in all".into(), Some(self.emails as f64));
        push(
            "emails not buildable".into(),
            Some(self.emails_failed as f64),
        );
        let w = &self.winback;
        for (group, n, k) in [
            ("emailed", w.emailed, w.emailed_converted),
            ("holdout", w.holdout, w.holdout_converted),
        ] {
            push(format!("win-back {group}"), Some(n as f64));
            push(format!("win-back {group}, converted"), Some(k as f64));
            push(format!("win-back {group}, conversion %"), rate(k, n));
        }
        push("retention rate (CRR) %".into(), self.crr_percent);
        for s in Stage::ALL {
            let n = self.stages.get(s.name()).copied().unwrap_or(0);
            push(format!("customers {}", s.name()), Some(n as f64));
        }
        rows
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let events: u64 = self.events.values().sum();
        let rejects: u64 = self.rejects.values().sum();
        let _ = writeln!(
            out,
            "simulated {} records ({events} events, {rejects} rejected) under {}; clock at {}; nothing was sent",
            self.records,
            self.config,
            self.clock.as_deref().unwrap_or("-")
        );
        let _ = writeln!(out);
        for (label, v) in self.rows() {
            let _ = writeln!(out, "  {label:<40}{:>12}", number(v));
        }
        for r in self.rules.iter().filter(|r| !r.samples.is_empty()) {
            let _ = writeln!(out, "\n{} — first customers:", r.rule);
            for s in &r.samples {
                let _ = writeln!(
                    out,
                    "  {} at {} step {}: {} ({}{}); {}",
                    s.customer_id,
                    s.at,
                    s.step,
                    s.decision,
                    s.stage,
                    s.churn_risk
                        .map(|c| format!(", churn_risk {c}"))
                        .unwrap_or_default(),
                    inputs_text(&s.inputs)
                );
            }
        }
        out
    }
}

/// Two reports side by side, with the change from the first to the second.
pub fn compare_table(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "simulated {} records under two configs; nothing was sent",
        a.records
    );
    let _ = writeln!(out, "  A = {}\n  B = {}\n", a.config, b.config);
    let _ = writeln!(out, "  {:<40}{:>12}{:>12}{:>12}", "", "A", "B", "B − A");
    for (label, va, vb) in compare_rows(a, b) {
        let change = match (va, vb) {
            (Some(x), Some(y)) if (y - x).abs() > 1e-9 => signed(y - x),
            (Some(_), Some(_)) => String::new(),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            out,
            "  {label:<40}{:>12}{:>12}{change:>12}",
            number(va),
            number(vb)
        );
    }
    out
}

/// Rows of both reports, matched by label (a row only one has counts 0 in the other).
pub fn compare_rows(a: &Report, b: &Report) -> Vec<(String, Option<f64>, Option<f64>)> {
    let (ra, rb) = (a.rows(), b.rows());
    let mut labels: Vec<String> = ra.iter().map(|(l, _)| l.clone()).collect();
    for (l, _) in &rb {
        if !labels.contains(l) {
            // Keep a new guard row next to its rule's other rows.
            let rule = l.split(' ').next().unwrap_or_default();
            let at = labels
                .iter()
                .rposition(|x| x.split(' ').next() == Some(rule))
                .map_or(labels.len(), |i| i + 1);
            labels.insert(at, l.clone());
        }
    }
    let find = |rows: &[(String, Option<f64>)], l: &str, counted: bool| {
        rows.iter()
            .find(|(x, _)| x == l)
            .map(|(_, v)| *v)
            .unwrap_or(if counted { Some(0.0) } else { None })
    };
    labels
        .into_iter()
        .map(|l| {
            let counted = !l.contains('%');
            let va = find(&ra, &l, counted);
            let vb = find(&rb, &l, counted);
            (l, va, vb)
        })
        .collect()
}

/// The JSON of a comparison: both reports and the changes.
pub fn compare_json(a: &Report, b: &Report) -> serde_json::Value {
    let changes: serde_json::Map<String, serde_json::Value> = compare_rows(a, b)
        .into_iter()
        .filter_map(|(l, va, vb)| {
            let d = vb? - va?;
            (d.abs() > 1e-9).then(|| (l.trim().to_string(), serde_json::json!(d)))
        })
        .collect();
    serde_json::json!({ "a": a, "b": b, "changes": changes })
}

fn rate(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| 100.0 * n as f64 / of as f64)
}

fn number(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn signed(d: f64) -> String {
    if d > 0.0 {
        format!("+{}", number(Some(d)))
    } else {
        number(Some(d))
    }
}

fn inputs_text(v: &serde_json::Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
