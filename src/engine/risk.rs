//! churn_risk: the probability that a customer has stopped buying (SPEC §3).
//!
//! The model is the "buy till you die" story of the customer-base literature (Pareto/NBD,
//! BG/NBD) reduced to what fits in hot state. While alive, a customer buys as a Poisson
//! process whose mean gap is their *typical gap* `g`; after any purchase they may silently
//! drop out with probability `p` (`risk.dropout`). Having seen no purchase for `e` days,
//! Bayes gives
//!
//! ```text
//! odds(alive) = (1 − p) / p · exp(−e / g) / support_factor
//! churn_risk  = 1 / (1 + odds(alive))
//! ```
//!
//! so risk starts at `p` right after a purchase and rises faster for customers whose
//! rhythm is short. `g` blends the customer's own moving-average gap with the population
//! gap learned by the engine (a gamma-style prior worth `risk.prior_weight` gaps), fixed at
//! each purchase so that decisions never depend on other customers' later events. A recent
//! complaint, low score or missed SLA multiplies the odds of having left by
//! `risk.support_factor`. Every input is reported next to the value.

use super::clock::{Secs, Stamp, DAY};
use super::customer::Customer;
use super::settings::RiskSettings;

/// A churn_risk value with the inputs that produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Risk {
    /// Probability in [0, 1] that the customer has stopped buying.
    pub value: f64,
    /// The instant it was computed for.
    pub as_of: Stamp,
    /// Days since the last purchase at `as_of`.
    pub recency_days: f64,
    /// Typical gap between purchases, days.
    pub typical_gap_days: f64,
    /// Purchases so far.
    pub purchases: u32,
    /// Odds multiplier for recent bad support (1 when none).
    pub support_factor: f64,
}

/// Population statistics learned online per task, checkpointed with its state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Population {
    /// Gaps between consecutive purchases observed.
    pub gaps: u64,
    /// Sum of those gaps, days.
    pub gap_days_sum: f64,
}

impl Population {
    /// Records one observed gap.
    pub fn observe_gap(&mut self, days: f64) {
        self.gaps += 1;
        self.gap_days_sum += days;
    }

    /// The population's typical gap, shrunk towards the configured prior when little is known.
    pub fn typical_gap_days(&self, s: &RiskSettings) -> f64 {
        // The prior counts as 20 observed gaps so the first few customers don't swing it.
        const PRIOR_GAPS: f64 = 20.0;
        (s.prior_gap_days * PRIOR_GAPS + self.gap_days_sum) / (PRIOR_GAPS + self.gaps as f64)
    }
}

/// The customer's typical gap after a purchase: own average shrunk towards the population.
pub fn typical_gap_days(c: &Customer, population_gap: f64, s: &RiskSettings) -> f64 {
    let own_gaps = f64::from(c.purchases.saturating_sub(1));
    let own = f64::from(c.gap_avg_days);
    let g = (s.prior_weight * population_gap + own_gaps * own) / (s.prior_weight + own_gaps);
    g.max(0.5)
}

/// The multiplier on the odds of having left for recent bad support at `now`.
pub fn support_factor(c: &Customer, now: Stamp, s: &RiskSettings) -> f64 {
    let recent = c
        .last_bad_support
        .is_some_and(|b| b <= now && now.since(b) <= s.support_memory);
    if recent {
        s.support_factor
    } else {
        1.0
    }
}

/// churn_risk of a customer at `now`; `None` for customers who never purchased.
pub fn churn_risk(c: &Customer, now: Stamp, s: &RiskSettings) -> Option<Risk> {
    let last = c.last_purchase?;
    let recency_days = now.days_since(last);
    let g = f64::from(c.typical_gap_days).max(0.5);
    let factor = support_factor(c, now, s);
    let p = s.dropout;
    let odds_alive = (1.0 - p) / p * (-recency_days / g).exp() / factor;
    let value = (1.0 / (1.0 + odds_alive)).clamp(0.0, 1.0);
    Some(Risk {
        value,
        as_of: now,
        recency_days,
        typical_gap_days: g,
        purchases: c.purchases,
        support_factor: factor,
    })
}

/// How long after the last purchase churn_risk reaches `risk.at_risk` (support aside).
pub fn at_risk_after(typical_gap_days: f64, s: &RiskSettings) -> Secs {
    let p = s.dropout;
    let r = s.at_risk;
    let x = (1.0 - p) / p * r / (1.0 - r);
    if x <= 1.0 {
        return 0;
    }
    let days = typical_gap_days.max(0.5) * x.ln();
    (days * f64::from(DAY)).min(f64::from(u32::MAX)) as Secs
}

/// Rounds to four decimals, the precision alerts and exports carry.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RiskSettings {
        RiskSettings {
            dropout: 0.1,
            prior_gap_days: 45.0,
            prior_weight: 2.0,
            gap_smoothing: 0.3,
            at_risk: 0.5,
            support_factor: 2.0,
            support_memory: 90 * DAY,
        }
    }

    fn customer(last: Stamp, gap: f32) -> Customer {
        Customer {
            last_purchase: Some(last),
            purchases: 5,
            typical_gap_days: gap,
            ..Customer::default()
        }
    }

    #[test]
    fn starts_at_dropout_and_rises_with_recency() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let c = customer(t0, 10.0);
        let r0 = churn_risk(&c, t0, &s).unwrap().value;
        assert!((r0 - 0.1).abs() < 1e-9);
        let r1 = churn_risk(&c, t0.plus(20 * DAY), &s).unwrap().value;
        let r2 = churn_risk(&c, t0.plus(40 * DAY), &s).unwrap().value;
        assert!(r0 < r1 && r1 < r2 && r2 <= 1.0);
    }

    #[test]
    fn a_short_rhythm_is_riskier_at_the_same_recency() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let weekly = churn_risk(&customer(t0, 7.0), t0.plus(30 * DAY), &s).unwrap();
        let quarterly = churn_risk(&customer(t0, 90.0), t0.plus(30 * DAY), &s).unwrap();
        assert!(weekly.value > quarterly.value);
    }

    #[test]
    fn bad_support_raises_risk() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let mut c = customer(t0, 20.0);
        let before = churn_risk(&c, t0.plus(10 * DAY), &s).unwrap().value;
        c.last_bad_support = Some(t0.plus(5 * DAY));
        let after = churn_risk(&c, t0.plus(10 * DAY), &s).unwrap().value;
        assert!(after > before);
    }

    #[test]
    fn at_risk_crossing_matches_the_formula() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let c = customer(t0, 12.0);
        let e = at_risk_after(12.0, &s);
        let at = churn_risk(&c, t0.plus(e), &s).unwrap().value;
        let before = churn_risk(&c, t0.plus(e - 3600), &s).unwrap().value;
        assert!(at >= 0.4999 && before < 0.5, "at {at} before {before}");
    }

    #[test]
    fn no_purchase_no_risk() {
        assert!(churn_risk(&Customer::default(), Stamp::MIN, &settings()).is_none());
    }
}
