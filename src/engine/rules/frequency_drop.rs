//! `frequency_drop`: purchases in the recent window well below what the customer's own
//! baseline predicts — a ratio test and a Poisson lower-tail test, checked at each
//! 30-day bucket boundary.

use serde::Deserialize;

use crate::alert::Inputs;
use crate::engine::clock::{format_duration, Secs, Span, Stamp};
use crate::engine::customer::{flag, Buckets, Customer, BUCKETS, BUCKET_SECS};
use crate::engine::guards::{emit, Candidate};
use crate::engine::rule::Rule;
use crate::engine::settings::Settings;
use crate::engine::stage::{Cause, Stage};
use crate::engine::Ctx;
use crate::problems::Problems;

/// `[rules.frequency_drop]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub recent_window: Span,
    /// See the defaults file.
    pub baseline_window: Span,
    /// See the defaults file.
    pub max_ratio: f64,
    /// See the defaults file.
    pub significance: f64,
    /// See the defaults file.
    pub min_baseline_purchases: u32,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    pub offer_code: String,
    /// See the defaults file.
    pub cooldown: Span,
}

/// `frequency_drop` settings.
#[derive(Clone, Debug)]
pub struct FrequencyDropSettings {
    /// Emit alerts.
    pub enabled: bool,
    /// Recent window in buckets.
    pub recent_buckets: u8,
    /// Baseline window in buckets (just before the recent one).
    pub baseline_buckets: u8,
    /// Fire only when recent / expected is below this.
    pub max_ratio: f64,
    /// … and the Poisson lower tail P(X ≤ recent) is below this.
    pub significance: f64,
    /// Only for customers with at least this many purchases in the baseline window.
    pub min_baseline_purchases: u32,
    /// Template name.
    pub template: String,
    /// Offer code ("" for none).
    pub offer_code: String,
    /// Minimum time between alerts.
    pub cooldown: Secs,
}

/// The rule's entry in the registry.
pub struct Spec;

impl super::RuleSpec for Spec {
    type Raw = Raw;
    type Settings = FrequencyDropSettings;

    fn validate(f: &Raw, key: &str, p: &mut Problems) -> FrequencyDropSettings {
        let recent_buckets = window_buckets(p, &format!("{key}.recent_window"), f.recent_window);
        let baseline_buckets =
            window_buckets(p, &format!("{key}.baseline_window"), f.baseline_window);
        p.when(
            usize::from(recent_buckets) + usize::from(baseline_buckets) >= BUCKETS,
            || {
                format!(
                    "{key}: recent_window + baseline_window must be at most {}d",
                    (BUCKETS - 1) * 30
                )
            },
        );
        p.when(!(f.max_ratio > 0.0 && f.max_ratio <= 1.0), || {
            format!("{key}.max_ratio: must be in (0, 1], got {}", f.max_ratio)
        });
        p.when(!(f.significance > 0.0 && f.significance < 1.0), || {
            format!("{key}.significance: must be in (0, 1), got {}", f.significance)
        });
        p.when(f.min_baseline_purchases == 0, || {
            format!("{key}.min_baseline_purchases: must be at least 1")
        });
        p.template_name(&format!("{key}.template"), &f.template);
        FrequencyDropSettings {
            enabled: f.enabled,
            recent_buckets,
            baseline_buckets,
            max_ratio: f.max_ratio,
            significance: f.significance,
            min_baseline_purchases: f.min_baseline_purchases,
            template: f.template.clone(),
            offer_code: f.offer_code.clone(),
            cooldown: f.cooldown.0,
        }
    }

    fn cooldown(s: &FrequencyDropSettings) -> Secs {
        s.cooldown
    }

    fn sends(s: &FrequencyDropSettings) -> Vec<(&str, Option<&str>)> {
        vec![(&s.template, Some(&s.offer_code))]
    }

    const TIMER: Option<super::Timer> = Some(super::Timer {
        name: "frequency_drop_check",
        rank: 2,
    });

    /// The next bucket boundary at which to test, while a drop is still possible.
    fn next_due(s: &Settings, c: &Customer) -> Option<Stamp> {
        let f = &s.frequency_drop;
        if !f.enabled || c.purchases == 0 || c.has(flag::DROP_FIRED) {
            return None;
        }
        if c.buckets.total() < f.min_baseline_purchases {
            return None;
        }
        Some(Buckets::start(c.buckets.head.saturating_add(1)))
    }

    /// Tests at the boundary `due`; on a drop, moves a buying customer to `at_risk`.
    fn fire(ctx: &mut Ctx<'_>, due: Stamp) {
        let s = ctx.s;
        let b = Buckets::index(due);
        ctx.c.buckets.roll_to(b);
        let t = test(&s.frequency_drop, &ctx.c.buckets, b);
        if !t.fires {
            return;
        }
        ctx.c.set(flag::DROP_FIRED, true);
        let from = ctx.c.stage;
        if from.is_buying() {
            ctx.c.move_to(Stage::AtRisk, Cause::FrequencyDrop, due);
        }
        let f = &s.frequency_drop;
        let inputs = Inputs::default()
            .int("recent_purchases", t.recent)
            .int("baseline_purchases", t.baseline)
            .real("expected_recent", t.expected)
            .real("ratio", t.ratio)
            .real("p_value", t.p_value)
            .int("recent_days", u32::from(f.recent_buckets) * 30)
            .int("baseline_days", u32::from(f.baseline_buckets) * 30);
        emit(
            ctx,
            Candidate {
                rule: Rule::FrequencyDrop,
                step: 0,
                episode: super::purchase_episode(ctx.c.last_purchase),
                at: due,
                stage_from: from,
                template: &f.template,
                offer_code: &f.offer_code,
                inputs,
                milestone: 0,
                years: 0,
                ticket_id: None,
                continues_episode: false,
            },
        );
    }
}

/// A window as a number of whole 30-day buckets (activity is counted per bucket).
fn window_buckets(p: &mut Problems, key: &str, d: Span) -> u8 {
    if d.0 == 0 || !d.0.is_multiple_of(BUCKET_SECS) {
        p.push(format!(
            "{key}: must be a positive multiple of 30d (activity is counted in 30-day buckets), got {}",
            format_duration(d.0)
        ));
        return 1;
    }
    u8::try_from(d.0 / BUCKET_SECS).unwrap_or(u8::MAX)
}

/// P(X ≤ k) for X ~ Poisson(mean).
pub fn poisson_cdf(k: u32, mean: f64) -> f64 {
    if mean <= 0.0 {
        return 1.0;
    }
    let mut term = (-mean).exp();
    let mut sum = term;
    for i in 1..=k {
        term *= mean / f64::from(i);
        sum += term;
    }
    sum.min(1.0)
}

/// The test at bucket boundary `b` (the start of bucket `b`).
#[derive(Clone, Debug, PartialEq)]
pub struct DropTest {
    /// Purchases in the recent window.
    pub recent: u32,
    /// Purchases in the baseline window.
    pub baseline: u32,
    /// Recent purchases the baseline rate predicts.
    pub expected: f64,
    /// recent / expected.
    pub ratio: f64,
    /// P(X ≤ recent) under the baseline rate (1 when the cheaper tests already fail).
    pub p_value: f64,
    /// Whether both tests pass (and the baseline is large enough).
    pub fires: bool,
}

/// Runs the test on the buckets complete before bucket `b`.
pub fn test(f: &FrequencyDropSettings, buckets: &Buckets, b: u16) -> DropTest {
    let r = u16::from(f.recent_buckets);
    let l = u16::from(f.baseline_buckets);
    let recent = buckets.sum(b.saturating_sub(r), b);
    let baseline = buckets.sum(b.saturating_sub(r + l), b.saturating_sub(r));
    let expected = f64::from(baseline) * f64::from(r) / f64::from(l);
    let ratio = if expected > 0.0 {
        f64::from(recent) / expected
    } else {
        1.0
    };
    // The tail probability is only worth computing when the cheap tests pass.
    let candidate = baseline >= f.min_baseline_purchases && ratio < f.max_ratio;
    let p_value = if candidate {
        poisson_cdf(recent, expected)
    } else {
        1.0
    };
    let fires = candidate && p_value < f.significance;
    DropTest {
        recent,
        baseline,
        expected,
        ratio,
        p_value,
        fires,
    }
}



#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_tail_matches_known_values() {
        // P(X ≤ 0 | 3) = e^-3, P(X ≤ 2 | 3) = 0.42319
        assert!((poisson_cdf(0, 3.0) - (-3.0f64).exp()).abs() < 1e-12);
        assert!((poisson_cdf(2, 3.0) - 0.423_190_081_5).abs() < 1e-9);
        assert_eq!(poisson_cdf(5, 0.0), 1.0);
    }
}
