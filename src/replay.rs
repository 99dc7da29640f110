//! `churnwatch replay`: the whole pipeline over JSONL files, effects into a folder.
//!
//! Each run starts from empty state and replaces the earlier results in the output
//! folder: `*.eml`, `alerts.jsonl`, `sends.jsonl`, `rejects.jsonl`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::alert::{Alert, Decision};
use crate::config::Config;
use crate::engine::clock::Stamp;
use crate::engine::rule::Rule;
use crate::engine::stage::Stage;
use crate::engine::{Applied, Engine, Stats};
use crate::event::Reject;
use crate::event::EVENT_TYPES;
use crate::mail::mailer::FileMailer;
use crate::mail::template::Templates;
use crate::progress::Progress;
use crate::source::file::{FileSource, Record};
use crate::store::TaskStore;

/// What to replay and where to.
#[derive(Clone, Debug)]
pub struct Options {
    /// Input files, merged by event time.
    pub events: Vec<PathBuf>,
    /// Output folder.
    pub outbox: PathBuf,
    /// Advance the clock to this instant after the last event.
    pub until: Option<Stamp>,
    /// Write every customer's final state here (JSONL, sorted by id).
    pub export_customers: Option<PathBuf>,
    /// Records read and applied between output flushes (never changes decisions).
    pub batch_size: usize,
    /// Render and write emails (false: decisions only, as `simulate` will).
    pub write_emails: bool,
    /// Write the final state into `<outbox>/state` (the store `run` uses, readable by
    /// `inspect --state`).
    pub write_state: bool,
}

impl Options {
    /// Defaults for the given input files.
    pub fn new(events: Vec<PathBuf>) -> Options {
        Options {
            events,
            outbox: PathBuf::from("outbox"),
            until: None,
            export_customers: None,
            batch_size: 4096,
            write_emails: true,
            write_state: true,
        }
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Records read (lines that were not blank).
    pub records: u64,
    /// Engine counters.
    pub stats: Stats,
    /// Rejected lines by class.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Emails written as .eml.
    pub emails_written: u64,
    /// Emails that could not be built (bad address, template error).
    pub emails_failed: u64,
    /// Customers tracked at the end, per stage.
    pub stages: [u64; 7],
    /// The clock at the end.
    pub clock: Option<Stamp>,
    /// Wall time taken.
    pub elapsed: Duration,
    /// The output folder.
    pub outbox: PathBuf,
}

impl Summary {
    /// Total rejects.
    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "replayed {} records in {:.2}s ({:.0} records/s); clock at {}",
            self.records,
            secs,
            self.records as f64 / secs,
            self.clock
                .map(Stamp::to_rfc3339)
                .unwrap_or_else(|| "-".into())
        )?;
        writeln!(f, "\nevents by type")?;
        for (i, name) in EVENT_TYPES.iter().enumerate() {
            writeln!(f, "  {name:<24}{:>9}", self.stats.events[i])?;
        }
        writeln!(
            f,
            "  {:<24}{:>9}",
            "duplicates (ignored)", self.stats.duplicates
        )?;
        writeln!(f, "  {:<24}{:>9}", "late (no alerts)", self.stats.late)?;
        writeln!(
            f,
            "\nrejected lines: {} (see rejects.jsonl)",
            self.rejected()
        )?;
        for (class, n) in &self.rejects {
            writeln!(f, "  {class:<24}{n:>9}")?;
        }
        writeln!(f, "\nalerts by rule and decision")?;
        for rule in Rule::ALL {
            writeln!(
                f,
                "  {:<24}{:>9}",
                rule.name(),
                self.stats.alerts[rule.index()]
            )?;
            for ((r, d), n) in &self.stats.decisions {
                if *r == rule {
                    writeln!(f, "    {:<22}{n:>9}", d.label())?;
                }
            }
        }
        let [emailed, holdout] = self.stats.winback_touched;
        let [conv_e, conv_h] = self.stats.winback_converted;
        let rate = |c: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                100.0 * c as f64 / n as f64
            }
        };
        writeln!(
            f,
            "\nwin-back conversion: emailed {conv_e}/{emailed} ({:.1}%), holdout {conv_h}/{holdout} ({:.1}%)",
            rate(conv_e, emailed),
            rate(conv_h, holdout)
        )?;
        writeln!(f, "\ncustomers by stage")?;
        for s in Stage::ALL {
            writeln!(f, "  {:<24}{:>9}", s.name(), self.stages[s as usize])?;
        }
        writeln!(
            f,
            "\nemails written: {} into {}{}",
            self.emails_written,
            self.outbox.display(),
            if self.emails_failed > 0 {
                format!(
                    " ({} could not be built, see sends.jsonl)",
                    self.emails_failed
                )
            } else {
                String::new()
            }
        )
    }
}

#[derive(Serialize)]
struct RejectLine<'a> {
    file: String,
    line: u64,
    raw: &'a str,
    /// Hex of the original bytes when the line is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
    class: &'static str,
    reason: &'a str,
}

/// Removes the results of an earlier replay (only files replay itself writes).
fn clear_outbox(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = name.ends_with(".eml")
            || name.ends_with(".eml.tmp")
            || matches!(name, "alerts.jsonl" | "rejects.jsonl" | "sends.jsonl");
        if ours && path.is_file() {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let state = dir.join("state");
    for task in crate::store::tasks_in(&state)? {
        let path = crate::store::task_path(&state, task);
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

struct Sink<'a> {
    cfg: &'a Config,
    mailer: Option<FileMailer<'a>>,
    alerts: BufWriter<File>,
}

impl Sink<'_> {
    fn flush_alerts(&mut self, alerts: &mut Vec<Alert>) -> anyhow::Result<()> {
        let domain = &self.cfg.mail.message_id_domain;
        for mut alert in alerts.drain(..) {
            if alert.decision == Decision::Email {
                if let Some(m) = &mut self.mailer {
                    m.deliver(&mut alert)?;
                }
            }
            writeln!(self.alerts, "{}", alert.to_json(domain))?;
        }
        Ok(())
    }
}

/// Runs a replay; `templates` must be loaded from `cfg` (None: write no emails).
pub fn run(cfg: &Config, templates: Option<&Templates>, opts: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    // Open the inputs first: a mistyped path must not destroy the previous results.
    let mut source = FileSource::open(&opts.events, cfg.limits)?;
    clear_outbox(&opts.outbox)?;
    let create = |name: &str| -> anyhow::Result<BufWriter<File>> {
        let p = opts.outbox.join(name);
        Ok(BufWriter::new(File::create(&p).with_context(|| {
            format!("cannot create {}", p.display())
        })?))
    };
    let mut rejects_out = create("rejects.jsonl")?;
    let mailer = match templates.filter(|_| opts.write_emails) {
        Some(t) => Some(FileMailer::new(
            &cfg.mail,
            t,
            &opts.outbox,
            false,
            u64::MAX,
        )?),
        None => {
            create("sends.jsonl")?;
            None
        }
    };
    let mut sink = Sink {
        cfg,
        mailer,
        alerts: create("alerts.jsonl")?,
    };
    let mut summary = Summary {
        outbox: opts.outbox.clone(),
        ..Summary::default()
    };
    let run = drive(
        cfg,
        &mut source,
        opts.until,
        opts.batch_size,
        |alerts| sink.flush_alerts(alerts),
        |source, rec, rej| {
            let line = RejectLine {
                file: source.path(rec.file).display().to_string(),
                line: rec.line,
                raw: &rec.raw,
                raw_hex: rec.raw_bytes.as_deref().map(hex::encode),
                class: rej.class,
                reason: &rej.reason,
            };
            serde_json::to_writer(&mut rejects_out, &line)?;
            rejects_out.write_all(b"\n")?;
            Ok(())
        },
    )?;
    let mut engine = run.engine;
    summary.records = run.records;
    summary.rejects = run.rejects;
    sink.alerts.flush()?;
    if let Some(m) = &mut sink.mailer {
        m.flush()?;
    }
    rejects_out.flush()?;
    if let Some(path) = &opts.export_customers {
        export_customers(&engine, path)?;
    }
    if opts.write_state {
        let dir = opts.outbox.join("state");
        TaskStore::open(&dir, 0)?.checkpoint(&mut engine, &Default::default(), (&[], 0), None)?;
    }
    summary.stats = engine.stats().clone();
    summary.emails_written = sink.mailer.as_ref().map_or(0, |m| m.written);
    summary.emails_failed = sink.mailer.as_ref().map_or(0, |m| m.failed);
    summary.stages = engine.stage_counts();
    summary.clock = engine.clock();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// What [`drive`] leaves: the engine at the end and what was read.
pub(crate) struct Driven {
    pub engine: Engine,
    pub records: u64,
    pub rejects: BTreeMap<&'static str, u64>,
}

/// The engine over the input files, shared by `replay` and `simulate` so that the two
/// decide alike: every record in merged order, then the clock to `until`. Alerts go to
/// `on_alerts` after each batch, rejected lines to `on_reject` as they come.
pub(crate) fn drive(
    cfg: &Config,
    source: &mut FileSource,
    until: Option<Stamp>,
    batch_size: usize,
    mut on_alerts: impl FnMut(&mut Vec<Alert>) -> anyhow::Result<()>,
    mut on_reject: impl FnMut(&FileSource, &Record, &Reject) -> anyhow::Result<()>,
) -> anyhow::Result<Driven> {
    let mut engine = Engine::new(Arc::new(cfg.engine.clone()));
    let (mut records, mut rejects) = (0u64, BTreeMap::new());
    let mut alerts = Vec::new();
    let batch = batch_size.max(1);
    let mut progress = Progress::new();
    let mut done = false;
    while !done {
        for _ in 0..batch {
            let Some(rec) = source.next_record()? else {
                done = true;
                break;
            };
            records += 1;
            match rec.parsed {
                Ok(ev) => {
                    let _: Applied = engine.apply(ev, &mut alerts);
                }
                Err(ref rej) => {
                    *rejects.entry(rej.class).or_default() += 1;
                    on_reject(source, &rec, rej)?;
                }
            }
        }
        on_alerts(&mut alerts)?;
        progress.tick(records, source.fraction_read());
    }
    if let Some(until) = until {
        engine.finish(until, &mut alerts);
        on_alerts(&mut alerts)?;
    }
    progress.finish();
    Ok(Driven {
        engine,
        records,
        rejects,
    })
}

/// Writes every customer's snapshot as JSONL, sorted by customer id.
pub fn export_customers(engine: &Engine, path: &Path) -> anyhow::Result<()> {
    write_snapshots(&engine.snapshots_sorted(), path)
}

/// Writes snapshots as JSONL in the order given.
pub fn write_snapshots(snaps: &[crate::engine::Snapshot], path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let mut out = BufWriter::new(
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for snap in snaps {
        serde_json::to_writer(&mut out, snap)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
