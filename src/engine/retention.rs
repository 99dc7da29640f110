//! Customer retention rate (docs/design.md §6 State and rules): CRR = (customers at end − new customers in the
//! period) / customers at start × 100, where a customer has purchased and is not
//! `lapsed`. Kept as a running count plus one mark per event-time day, so the rate over
//! any period up to [`MAX_PERIOD_DAYS`] is a lookup rather than a scan of every customer.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::stage::Stage;

/// The longest CRR period the marks cover (`metrics.crr_period` is checked against it).
pub const MAX_PERIOD_DAYS: u16 = 400;

/// The counts at the start of one day.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    day: u16,
    retained: u64,
    new_total: u64,
}

/// Running retention counts of one engine, checkpointed with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Customers now counted as retained (purchased, not lapsed).
    retained: u64,
    /// First purchases seen so far: the difference between two marks is the number of
    /// new customers between them.
    new_total: u64,
    /// Counts at the start of each day the clock entered, oldest first.
    marks: VecDeque<Mark>,
}

/// The three numbers of one CRR; summed over tasks before the rate is taken.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Crr {
    /// Retained customers at the start of the period.
    pub start: u64,
    /// Retained customers now.
    pub end: u64,
    /// Customers whose first purchase fell in the period.
    pub new: u64,
}

impl Crr {
    /// The rate in percent; `None` while no customer was retained at the start.
    pub fn percent(&self) -> Option<f64> {
        (self.start > 0).then(|| (self.end as f64 - self.new as f64) / self.start as f64 * 100.0)
    }

    /// Adds another task's numbers.
    pub fn add(&mut self, other: Crr) {
        self.start += other.start;
        self.end += other.end;
        self.new += other.new;
    }
}

/// Whether a customer in `stage` counts as retained.
pub fn counts(stage: Stage) -> bool {
    !matches!(stage, Stage::Prospect | Stage::Lapsed)
}

impl Retention {
    /// A customer moved from one stage to another.
    pub fn change(&mut self, from: Stage, to: Stage) {
        match (counts(from), counts(to)) {
            (false, true) => self.retained += 1,
            (true, false) => self.retained = self.retained.saturating_sub(1),
            _ => {}
        }
    }

    /// A customer in `stage` was erased or expired.
    pub fn removed(&mut self, stage: Stage) {
        self.change(stage, Stage::Prospect);
    }

    /// A customer made their first purchase.
    pub fn first_purchase(&mut self) {
        self.new_total += 1;
    }

    /// Sets the retained count from the stages themselves (after a restore, where the
    /// stored count may predate this bookkeeping).
    pub fn recount(&mut self, retained: u64) {
        self.retained = retained;
    }

    /// The clock entered `day`: mark the counts at its start once, and forget marks no
    /// period can reach.
    pub fn tick(&mut self, day: u16) {
        if self.marks.back().is_some_and(|m| m.day >= day) {
            return;
        }
        self.marks.push_back(Mark {
            day,
            retained: self.retained,
            new_total: self.new_total,
        });
        let horizon = day.saturating_sub(MAX_PERIOD_DAYS);
        // The newest mark at or before the horizon is still needed as a period's start.
        while self.marks.len() > 1 && self.marks[1].day <= horizon {
            self.marks.pop_front();
        }
    }

    /// The CRR numbers over the `period_days` before `today`; `None` while the marks do
    /// not reach back that far.
    pub fn over(&self, today: u16, period_days: u16) -> Option<Crr> {
        let start_day = today.checked_sub(period_days)?;
        let start = self.marks.iter().rev().find(|m| m.day <= start_day)?;
        Some(Crr {
            start: start.retained,
            end: self.retained,
            new: self.new_total - start.new_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_formula_over_the_period() {
        let mut r = Retention::default();
        r.tick(10);
        for _ in 0..4 {
            r.first_purchase();
            r.change(Stage::Prospect, Stage::New);
        }
        r.tick(11);
        // Day 20: one of the four lapses, two new customers arrive.
        r.tick(20);
        r.change(Stage::Active, Stage::Lapsed);
        for _ in 0..2 {
            r.first_purchase();
            r.change(Stage::Prospect, Stage::New);
        }
        assert_eq!(r.over(15, 10), None, "marks do not reach day 5");
        let crr = r.over(21, 10).expect("a mark at day 11");
        assert_eq!(
            crr,
            Crr {
                start: 4,
                end: 5,
                new: 2
            }
        );
        assert_eq!(crr.percent(), Some(75.0));
        // The mark of day 10 predates every purchase: no one to retain.
        assert_eq!(r.over(20, 10).and_then(|c| c.percent()), None);
    }

    #[test]
    fn erasures_leave_the_count_and_old_marks_are_forgotten() {
        let mut r = Retention::default();
        r.tick(0);
        r.change(Stage::Prospect, Stage::Active);
        r.removed(Stage::Active);
        r.removed(Stage::Prospect);
        assert_eq!(r.retained, 0);
        for d in 1..=1000 {
            r.tick(d);
        }
        assert!(r.marks.len() <= usize::from(MAX_PERIOD_DAYS) + 1);
        assert!(r.over(1000, MAX_PERIOD_DAYS).is_some());
    }
}
