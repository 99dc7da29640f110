//! Timers on event time: each customer has at most one entry in an ordered index, at
//! the earliest of its pending due times, so firing never scans all customers.

use std::collections::BTreeSet;

use super::clock::Stamp;
use super::customer::Customer;
use super::rules::{frequency_drop, support_recovery, thank_you, winback};
use super::settings::Settings;

/// What a due time is for. The order breaks ties between kinds due at the same instant.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// A ticket passes its SLA.
    Sla,
    /// churn_risk reaches `risk.at_risk`.
    AtRisk,
    /// A bucket boundary to test for a frequency drop.
    FrequencyDrop,
    /// The next win-back step.
    Winback,
    /// A loyal customer's anniversary.
    Anniversary,
    /// No event for `state.retention`: the customer is dropped.
    Expire,
}

impl TimerKind {
    /// The kind's name for `inspect` and exports.
    pub fn name(self) -> &'static str {
        match self {
            TimerKind::Sla => "support_sla",
            TimerKind::AtRisk => "at_risk",
            TimerKind::FrequencyDrop => "frequency_drop_check",
            TimerKind::Winback => "winback_step",
            TimerKind::Anniversary => "anniversary",
            TimerKind::Expire => "expire",
        }
    }
}

/// When a buying customer's churn_risk reaches the at-risk line.
fn at_risk_due(c: &Customer) -> Option<Stamp> {
    if !c.stage.is_buying() {
        return None;
    }
    let last = c.last_purchase?;
    Some(last.plus(u32::from(c.at_risk_hours) * 3600))
}

fn candidates(s: &Settings, c: &Customer) -> [(Option<Stamp>, TimerKind); 6] {
    [
        (support_recovery::next_due(s, c), TimerKind::Sla),
        (at_risk_due(c), TimerKind::AtRisk),
        (frequency_drop::next_due(s, c), TimerKind::FrequencyDrop),
        (winback::next_due(s, c), TimerKind::Winback),
        (thank_you::next_due(s, c), TimerKind::Anniversary),
        (c.last_seen.map(|t| t.plus(s.retention)), TimerKind::Expire),
    ]
}

/// Every pending due time of a customer, earliest first (for `inspect` and exports).
pub fn pending(s: &Settings, c: &Customer) -> Vec<(Stamp, TimerKind)> {
    let mut v: Vec<(Stamp, TimerKind)> = candidates(s, c)
        .into_iter()
        .filter_map(|(d, k)| d.map(|d| (d, k)))
        .collect();
    v.sort();
    v
}

/// The earliest pending due time of a customer.
pub fn next(s: &Settings, c: &Customer) -> Option<(Stamp, TimerKind)> {
    candidates(s, c)
        .into_iter()
        .filter_map(|(d, k)| d.map(|d| (d, k)))
        .min()
}

/// The ordered index of (due, customer slot).
#[derive(Clone, Debug, Default)]
pub struct TimerIndex {
    set: BTreeSet<(Stamp, u32)>,
}

impl TimerIndex {
    /// Moves a customer's entry from `old` to `new`.
    pub fn reschedule(&mut self, slot: u32, old: Option<Stamp>, new: Option<Stamp>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            self.set.remove(&(o, slot));
        }
        if let Some(n) = new {
            self.set.insert((n, slot));
        }
    }

    /// An index of the given (due, slot) entries, built in one pass.
    pub fn from_entries(mut entries: Vec<(Stamp, u32)>) -> TimerIndex {
        // Sorted input lets the set be built in bulk rather than by repeated inserts.
        entries.sort_unstable();
        TimerIndex {
            set: entries.into_iter().collect(),
        }
    }

    /// Removes and returns the earliest entry due at or before `limit`.
    pub fn pop_due(&mut self, limit: Stamp) -> Option<(Stamp, u32)> {
        let first = *self.set.first()?;
        if first.0 <= limit {
            self.set.pop_first()
        } else {
            None
        }
    }

    /// Number of customers with a pending timer.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}
