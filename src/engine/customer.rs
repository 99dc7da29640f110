//! Per-customer hot state (docs/design.md §6 State and rules), kept small on purpose: see the size test below.

use super::clock::{Secs, Stamp, DAY};
use super::rule::Rule;
use super::stage::{Cause, Stage};

/// Width of one activity bucket: windows of `frequency_drop` are whole buckets.
pub const BUCKET_SECS: Secs = 30 * DAY;

/// Number of activity buckets kept per customer (the current one included).
pub const BUCKETS: usize = 16;

/// Most emails the per-customer cap can count (the cap keeps this many send days).
pub const MAX_CAP: u8 = 4;

/// Most open tickets tracked per customer; older ones are forgotten first.
pub const MAX_OPEN_TICKETS: usize = 8;

/// Bit flags packed into one byte.
pub mod flag {
    /// Promoted to loyal at least once (a recovering customer returns to `loyal`).
    pub const LOYAL: u8 = 1;
    /// `frequency_drop` fired since the last purchase.
    pub const DROP_FIRED: u8 = 2;
    /// The current win-back sequence was stopped by cooldown.
    pub const WINBACK_MUTED: u8 = 4;
    /// The last win-back touch was a holdout (no email).
    pub const TOUCH_HOLDOUT: u8 = 8;
    /// More event ids than the inline two are remembered (see `engine::dedup`).
    pub const DEDUP_SPILL: u8 = 16;
}

/// Purchase counts per 30-day bucket of absolute event time, as a ring.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Buckets {
    /// Absolute index of the newest bucket held (bucket = seconds since 2000 / width).
    pub head: u16,
    counts: [u8; BUCKETS],
}

impl Buckets {
    /// The absolute bucket holding `t`.
    pub fn index(t: Stamp) -> u16 {
        u16::try_from(t.raw() / BUCKET_SECS).unwrap_or(u16::MAX)
    }

    /// The instant bucket `i` starts.
    pub fn start(i: u16) -> Stamp {
        Stamp::from_raw(u32::from(i) * BUCKET_SECS)
    }

    /// Moves the ring forward so that `i` is the newest bucket (never backwards).
    pub fn roll_to(&mut self, i: u16) {
        if i <= self.head {
            return;
        }
        let steps = usize::from(i - self.head);
        if steps >= BUCKETS {
            self.counts = [0; BUCKETS];
        } else {
            for k in 1..=steps {
                self.counts[(usize::from(self.head) + k) % BUCKETS] = 0;
            }
        }
        self.head = i;
    }

    /// Counts one purchase at `t` (too old for the ring: ignored).
    pub fn add(&mut self, t: Stamp) {
        let i = Buckets::index(t);
        self.roll_to(i);
        if self.head - i < BUCKETS as u16 {
            let slot = &mut self.counts[usize::from(i) % BUCKETS];
            *slot = slot.saturating_add(1);
        }
    }

    /// Purchases in bucket `i` (0 when outside the ring).
    pub fn get(&self, i: u16) -> u32 {
        if i > self.head || self.head - i >= BUCKETS as u16 {
            0
        } else {
            u32::from(self.counts[usize::from(i) % BUCKETS])
        }
    }

    /// Purchases in buckets `from..to` (absolute, `to` exclusive).
    pub fn sum(&self, from: u16, to: u16) -> u32 {
        (from..to).map(|i| self.get(i)).sum()
    }

    /// Purchases anywhere in the ring.
    pub fn total(&self) -> u32 {
        self.counts.iter().map(|&c| u32::from(c)).sum()
    }
}

/// A support ticket that is still open.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenTicket {
    /// Ticket id as the shop knows it.
    pub id: Box<str>,
    /// When it was opened.
    pub opened: Stamp,
    /// The SLA alert for it has been decided.
    pub sla_fired: bool,
}

/// Everything the rules need to know about one customer, in ~128 bytes.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Customer {
    /// First purchase.
    pub first_purchase: Option<Stamp>,
    /// Latest purchase (by event time).
    pub last_purchase: Option<Stamp>,
    /// When the current stage was entered.
    pub stage_since: Option<Stamp>,
    /// Latest complaint, low score or missed SLA.
    pub last_bad_support: Option<Stamp>,
    /// Latest win-back email or holdout decision (for welcome_back attribution).
    pub winback_touch: Option<Stamp>,
    /// Latest event of this customer (any type): retention counts from here.
    pub last_seen: Option<Stamp>,
    /// When this customer's next timer is due (mirrors the engine's timer index).
    pub due: Option<Stamp>,
    /// Number of purchases.
    pub purchases: u32,
    /// Spend in minor units of `currency`, refunds subtracted.
    pub spend_minor: i64,
    /// ISO 4217 numeric code of the first purchase's currency; others are not summed.
    pub currency: u16,
    /// The population's typical gap when the last purchase was recorded, days: fixed
    /// then, so later events of other customers never change this customer's decisions.
    pub population_gap_days: f32,
    /// Last decided alert per rule that started an episode (for cooldowns).
    pub rule_last: [Option<Stamp>; Rule::COUNT],
    /// Days (since 2000) of the latest emails, for the per-customer cap.
    pub email_days: [u16; MAX_CAP as usize],
    /// Purchases per 30-day bucket.
    pub buckets: Buckets,
    /// Recent event ids (the first two; more spill beside the hot state).
    pub dedup: super::dedup::Dedup,
    /// Open tickets (boxed: most customers have none).
    pub tickets: Option<Box<Vec<OpenTicket>>>,
    /// Hours after the last purchase at which churn_risk reaches `risk.at_risk` (support
    /// aside), computed when the inputs change so timers need no logarithms.
    pub at_risk_hours: u16,
    /// Current stage.
    pub stage: Stage,
    /// Why the current stage.
    pub cause: Cause,
    /// Next win-back step to decide (0 = sequence not started).
    pub winback_step: u8,
    /// Anniversaries already thanked (years since the first purchase).
    pub anniversaries: u8,
    /// Last satisfaction score (0 = none).
    pub last_score: u8,
    /// See [`flag`].
    pub flags: u8,
}

impl Customer {
    /// Whether a [`flag`] bit is set.
    pub fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    /// Sets or clears a [`flag`] bit.
    pub fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
    }

    /// Moves to `stage` for `cause` at `at`; returns the previous stage.
    pub fn move_to(&mut self, stage: Stage, cause: Cause, at: Stamp) -> Stage {
        let from = self.stage;
        if from != stage {
            self.stage = stage;
            self.cause = cause;
            self.stage_since = Some(at);
        }
        from
    }

    /// Open tickets as a slice.
    pub fn open_tickets(&self) -> &[OpenTicket] {
        self.tickets.as_deref().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Emails counted by the cap within `window_days` before `day`.
    pub fn emails_within(&self, day: u16, window_days: u16) -> usize {
        self.email_days
            .iter()
            .filter(|&&d| d != 0 && d.saturating_add(window_days) > day)
            .count()
    }

    /// Records an email decided on `day` for the cap (replacing the oldest).
    pub fn record_email(&mut self, day: u16) {
        if let Some(slot) = self.email_days.iter_mut().min() {
            *slot = day.max(1);
        }
    }

    /// Whole days since the last purchase at `now` (0 without purchases).
    pub fn days_since_purchase(&self, now: Stamp) -> u32 {
        self.last_purchase.map(|l| now.since(l) / DAY).unwrap_or(0)
    }

    /// The tenure at `now`: time since the first purchase.
    pub fn tenure(&self, now: Stamp) -> Secs {
        self.first_purchase.map(|f| now.since(f)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_state_fits_the_budget() {
        // README "Performance": ≤ 128 bytes of hot state per customer (key, profile, timers apart).
        assert!(
            std::mem::size_of::<Customer>() <= 128,
            "Customer is {} bytes",
            std::mem::size_of::<Customer>()
        );
    }

    #[test]
    fn buckets_roll_and_forget() {
        let mut b = Buckets::default();
        let t0 = Stamp::from_raw(BUCKET_SECS * 100 + 5);
        b.add(t0);
        b.add(t0);
        assert_eq!(b.get(100), 2);
        b.roll_to(110);
        assert_eq!(b.get(100), 2, "still inside the ring");
        assert_eq!(b.sum(100, 111), 2);
        b.roll_to(116);
        assert_eq!(b.get(100), 0, "fell out of the 16-bucket ring");
        assert_eq!(b.total(), 0);
        // too old for the ring: ignored, not wrapped onto a newer bucket
        b.add(t0);
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn cap_counts_within_window() {
        let mut c = Customer::default();
        c.record_email(100);
        c.record_email(110);
        assert_eq!(c.emails_within(115, 30), 2);
        assert_eq!(c.emails_within(135, 30), 1);
        assert_eq!(c.emails_within(200, 30), 0);
    }
}
