//! Measures how well churn_risk ranks the customers who really stop buying.
//!
//! Splits a purchase history at a cut-off: every event before it goes through the engine,
//! every customer who has purchased is scored at the cut-off, and the label is whether
//! they made no purchase within the horizon after it. Reports ROC AUC for churn_risk next
//! to the plain days-since-last-purchase ranking on the same split.
//!
//! ```text
//! cargo run --release --example evaluate -- --events examples/events.jsonl \
//!     --cutoff 2026-05-01T00:00:00Z --horizon 180d
//! ```

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use churnwatch::config;
use churnwatch::engine::clock::{parse_duration, Stamp};
use churnwatch::engine::Engine;
use churnwatch::event::EventKind;
use churnwatch::source::file::FileSource;

/// Evaluate churn_risk's ranking against recency on a history split at a cut-off.
#[derive(Parser)]
struct Args {
    /// Event files (JSONL).
    #[arg(long, required = true, num_args = 1..)]
    events: Vec<PathBuf>,
    /// Cut-off instant (RFC 3339).
    #[arg(long, value_parser = Stamp::parse_rfc3339)]
    cutoff: Stamp,
    /// Horizon after the cut-off in which a purchase means "still buying".
    #[arg(long, default_value = "180d", value_parser = parse_duration)]
    horizon: u32,
    /// Config file (default: embedded defaults / config/churnwatch.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// ROC AUC of `scores` for `labels` (true = positive), ties counted half (Mann–Whitney).
fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = config::load(args.config.as_deref())?;
    let mut engine = Engine::new(Arc::new(cfg.engine.clone()));
    let mut source = FileSource::open(&args.events, cfg.limits)?;
    let end = args.cutoff.plus(args.horizon);
    let mut alerts = Vec::new();
    let mut bought_after: HashSet<Box<str>> = HashSet::new();
    let mut scored: Option<HashMap<String, (f64, f64)>> = None;
    while let Some(rec) = source.next_record()? {
        let Ok(ev) = rec.parsed else { continue };
        if ev.at < args.cutoff {
            engine.apply(ev, &mut alerts);
            alerts.clear();
            continue;
        }
        if scored.is_none() {
            engine.finish(args.cutoff, &mut alerts);
            scored = Some(score(&engine, args.cutoff));
        }
        if ev.at <= end && matches!(ev.kind, EventKind::Purchase { .. }) {
            bought_after.insert(ev.customer_id);
        }
    }
    let scored = match scored {
        Some(s) => s,
        None => {
            engine.finish(args.cutoff, &mut alerts);
            score(&engine, args.cutoff)
        }
    };
    let mut ids: Vec<&String> = scored.keys().collect();
    ids.sort();
    let labels: Vec<bool> = ids
        .iter()
        .map(|id| !bought_after.contains(id.as_str()))
        .collect();
    let risk: Vec<f64> = ids.iter().map(|id| scored[*id].0).collect();
    let recency: Vec<f64> = ids.iter().map(|id| scored[*id].1).collect();
    let churned = labels.iter().filter(|&&l| l).count();
    println!(
        "cut-off {} horizon {}d: {} customers scored, {} ({:.1}%) made no purchase in the horizon",
        args.cutoff.to_rfc3339(),
        args.horizon / 86_400,
        ids.len(),
        churned,
        100.0 * churned as f64 / ids.len().max(1) as f64
    );
    println!(
        "ROC AUC churn_risk                 {:.4}",
        auc(&risk, &labels)
    );
    println!(
        "ROC AUC days since last purchase   {:.4}",
        auc(&recency, &labels)
    );
    Ok(())
}

/// (churn_risk ranking score, days since last purchase) of every customer who purchased.
fn score(engine: &Engine, cutoff: Stamp) -> HashMap<String, (f64, f64)> {
    let mut out = HashMap::new();
    for id in engine.customer_ids() {
        if let Some(r) = engine.risk(id) {
            debug_assert_eq!(r.as_of, cutoff);
            out.insert(id.to_string(), (r.log_odds, r.recency_days));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::auc;

    #[test]
    fn auc_of_perfect_random_and_reversed_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
    }
}
