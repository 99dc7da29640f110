//! churn_risk: the probability that a customer has stopped buying (README "churn_risk").
//!
//! The model is the modified BG/NBD of the customer-base literature (Batislam et al.
//! 2007), which needs only what hot state already holds: repeat purchases `x`, the time
//! from first to last purchase `t_x`, and the days `e` since the last purchase. While
//! alive, a customer buys as a Poisson process; purchase rates vary across customers as a
//! gamma distribution with shape `r` (`risk.prior_weight`) and a mean gap learned from the
//! population; after each purchase a customer may silently drop out, with a probability
//! that varies across customers as a beta distribution (mean `risk.dropout`, concentration
//! `c` = `risk.dropout_concentration`, i.e. `a = dropout·c`, `b = (1 − dropout)·c`):
//!
//! ```text
//! g           = (r · population_gap + t_x) / (r + x)      typical gap, days
//! odds(left)  = a / (b + x) · (1 + e / (g · (r + x)))^(r + x) · support_factor
//! churn_risk  = odds / (1 + odds)
//! ```
//!
//! Risk starts at the drop-out probability right after a purchase, rises with silence,
//! faster for customers whose rhythm is short and more slowly for customers who came back
//! many times. The population gap is frozen into the customer at each purchase, so a
//! decision never depends on other customers' later events. A recent complaint, low score
//! or missed SLA multiplies the odds by `risk.support_factor`. Every input is reported
//! next to the value.

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
    /// Typical gap between purchases `g`, days.
    pub typical_gap_days: f64,
    /// Purchases after the first.
    pub repeat_purchases: u32,
    /// Odds of having dropped out right after the last purchase, a / (b + x).
    pub dropout_odds: f64,
    /// Odds multiplier for recent bad support (1 when none).
    pub support_factor: f64,
    /// ln(odds of having left): the same ranking as `value`, without the floating-point
    /// saturation at 1.0 for long-gone customers (used to rank in evaluations).
    pub log_odds: f64,
}

/// Population statistics learned online per task, checkpointed with its state.
///
/// The population gap is customer-time observed over repeat purchases made:
/// Σ (now − first purchase) / Σ repeat purchases. Counting every buyer's whole observed
/// time (one-time buyers included) avoids the bias of averaging observed gaps, which
/// frequent buyers dominate.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Population {
    /// Customers with at least one purchase.
    pub buyers: u64,
    /// Sum of their first-purchase instants, days since 2000.
    pub first_days_sum: f64,
    /// Purchases after each customer's first.
    pub repeats: u64,
}

fn days(t: Stamp) -> f64 {
    f64::from(t.raw()) / f64::from(DAY)
}

impl Population {
    /// A first purchase at `t` (replacing `previous` when an earlier one arrived late).
    pub fn observe_first(&mut self, t: Stamp, previous: Option<Stamp>) {
        match previous {
            None => self.buyers += 1,
            Some(p) => {
                self.first_days_sum -= days(p);
                self.repeats += 1;
            }
        }
        self.first_days_sum += days(t);
    }

    /// A purchase after the customer's first.
    pub fn observe_repeat(&mut self) {
        self.repeats += 1;
    }

    /// The population's typical gap at `now`, shrunk towards the configured prior while
    /// little is known.
    pub fn typical_gap_days(&self, now: Stamp, s: &RiskSettings) -> f64 {
        // The prior counts as 20 repeat purchases so the first customers don't swing it.
        const PRIOR_REPEATS: f64 = 20.0;
        let observed = (self.buyers as f64 * days(now) - self.first_days_sum).max(0.0);
        (s.prior_gap_days * PRIOR_REPEATS + observed) / (PRIOR_REPEATS + self.repeats as f64)
    }
}

fn repeat(c: &Customer) -> f64 {
    f64::from(c.purchases.saturating_sub(1))
}

/// The customer's mean gap shrunk towards the population gap frozen at their last
/// purchase: `(k · population_gap + t_x) / (k + x)`, days.
pub fn shrunk_gap_days(c: &Customer, k: f64) -> f64 {
    let t_x = match (c.first_purchase, c.last_purchase) {
        (Some(f), Some(l)) => l.days_since(f),
        _ => 0.0,
    };
    let pop = f64::from(c.population_gap_days);
    let x = repeat(c);
    if k + x <= 0.0 {
        return pop.max(0.5);
    }
    ((k * pop + t_x) / (k + x)).max(0.5)
}

/// The risk model's typical gap `g` (shrunk with `risk.prior_weight`), days.
pub fn typical_gap_days(c: &Customer, s: &RiskSettings) -> f64 {
    shrunk_gap_days(c, s.prior_weight)
}

/// Odds of having dropped out right after the last purchase: a / (b + x).
fn dropout_odds(c: &Customer, s: &RiskSettings) -> f64 {
    let a = s.dropout * s.dropout_concentration;
    let b = (1.0 - s.dropout) * s.dropout_concentration;
    a / (b + repeat(c))
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
    let g = typical_gap_days(c, s);
    let n = s.prior_weight + repeat(c);
    let factor = support_factor(c, now, s);
    let odds0 = dropout_odds(c, s);
    let log_odds = odds0.ln() + n * (recency_days / (g * n)).ln_1p() + factor.ln();
    let value = (1.0 / (1.0 + (-log_odds).exp())).clamp(0.0, 1.0);
    Some(Risk {
        value,
        as_of: now,
        recency_days,
        typical_gap_days: g,
        repeat_purchases: c.purchases.saturating_sub(1),
        dropout_odds: odds0,
        support_factor: factor,
        log_odds,
    })
}

/// How long after the last purchase churn_risk reaches `risk.at_risk` (support aside).
pub fn at_risk_after(c: &Customer, s: &RiskSettings) -> Secs {
    let g = typical_gap_days(c, s);
    let n = s.prior_weight + repeat(c);
    let target = (s.at_risk / (1.0 - s.at_risk)).ln() - dropout_odds(c, s).ln();
    if target <= 0.0 {
        return 0;
    }
    let days = g * n * (target / n).exp_m1();
    (days * f64::from(DAY)).ceil().min(f64::from(u32::MAX)) as Secs
}

/// [`at_risk_after`] in whole hours, rounded up (saturating at about 7.5 years).
pub fn at_risk_hours(c: &Customer, s: &RiskSettings) -> u16 {
    u16::try_from(at_risk_after(c, s).div_ceil(3600)).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RiskSettings {
        RiskSettings {
            dropout: 0.3,
            dropout_concentration: 2.5,
            prior_gap_days: 45.0,
            prior_weight: 1.0,
            at_risk: 0.5,
            support_factor: 2.0,
            support_memory: 90 * DAY,
        }
    }

    /// A customer whose purchases came every `gap` days, population gap the same.
    fn customer(last: Stamp, purchases: u32, gap: f32) -> Customer {
        Customer {
            first_purchase: Some(last.minus((purchases - 1) * (gap * DAY as f32) as u32)),
            last_purchase: Some(last),
            purchases,
            population_gap_days: gap,
            ..Customer::default()
        }
    }

    #[test]
    fn starts_at_the_dropout_odds_and_rises_with_recency() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let c = customer(t0, 1, 10.0);
        let r0 = churn_risk(&c, t0, &s).unwrap().value;
        // a / (b + 0) = 0.75 / 1.75 → risk 0.3 right after a first purchase
        assert!((r0 - 0.3).abs() < 1e-9, "{r0}");
        let r1 = churn_risk(&c, t0.plus(20 * DAY), &s).unwrap().value;
        let r2 = churn_risk(&c, t0.plus(40 * DAY), &s).unwrap().value;
        assert!(r0 < r1 && r1 < r2 && r2 <= 1.0);
    }

    #[test]
    fn a_short_rhythm_is_riskier_at_the_same_recency() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let weekly = churn_risk(&customer(t0, 5, 7.0), t0.plus(30 * DAY), &s).unwrap();
        let quarterly = churn_risk(&customer(t0, 5, 90.0), t0.plus(30 * DAY), &s).unwrap();
        assert!(weekly.value > quarterly.value);
    }

    #[test]
    fn many_returns_lower_the_dropout_odds() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let few = churn_risk(&customer(t0, 2, 20.0), t0, &s).unwrap();
        let many = churn_risk(&customer(t0, 30, 20.0), t0, &s).unwrap();
        assert!(many.value < few.value);
    }

    #[test]
    fn typical_gap_shrinks_towards_the_population() {
        let t0 = Stamp::from_raw(800_000_000);
        let mut c = customer(t0, 1, 45.0);
        assert!((shrunk_gap_days(&c, 1.0) - 45.0).abs() < 1e-4);
        // 5 repeat purchases over 50 days: (1·45 + 50) / (1 + 5) ≈ 15.8
        c.purchases = 6;
        c.first_purchase = Some(t0.minus(50 * DAY));
        assert!((shrunk_gap_days(&c, 1.0) - 95.0 / 6.0).abs() < 1e-4);
        // more prior weight, closer to the population
        assert!(shrunk_gap_days(&c, 10.0) > shrunk_gap_days(&c, 1.0));
    }

    #[test]
    fn population_gap_counts_one_time_buyers_time() {
        let s = settings();
        let mut p = Population::default();
        let t0 = Stamp::from_raw(800_000_000);
        // two buyers from t0, one came back once: 2 × 100 days observed over 1 repeat
        p.observe_first(t0, None);
        p.observe_first(t0, None);
        p.observe_repeat();
        let now = t0.plus(100 * DAY);
        let expect = (45.0 * 20.0 + 200.0) / 21.0;
        assert!((p.typical_gap_days(now, &s) - expect).abs() < 1e-9);
    }

    #[test]
    fn bad_support_raises_risk() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let mut c = customer(t0, 4, 20.0);
        let before = churn_risk(&c, t0.plus(10 * DAY), &s).unwrap().value;
        c.last_bad_support = Some(t0.plus(5 * DAY));
        let after = churn_risk(&c, t0.plus(10 * DAY), &s).unwrap().value;
        assert!(after > before);
    }

    #[test]
    fn at_risk_crossing_matches_the_formula() {
        let s = settings();
        let t0 = Stamp::from_raw(800_000_000);
        let c = customer(t0, 6, 12.0);
        let e = at_risk_after(&c, &s);
        let at = churn_risk(&c, t0.plus(e), &s).unwrap().value;
        let before = churn_risk(&c, t0.plus(e - 3600), &s).unwrap().value;
        assert!(at >= 0.5 && before < 0.5, "at {at} before {before}");
    }

    #[test]
    fn no_purchase_no_risk() {
        assert!(churn_risk(&Customer::default(), Stamp::MIN, &settings()).is_none());
    }
}
