//! The engine's validated settings: plain data built from the config file, no I/O.

use super::clock::Secs;
use super::rule::Rule;

/// Width of one activity bucket: windows of `frequency_drop` are whole buckets.
pub const BUCKET_SECS: Secs = 30 * super::clock::DAY;

/// Number of activity buckets kept per customer (the current one included).
pub const BUCKETS: usize = 16;

/// Most emails the per-customer cap can count (the cap keeps this many send days).
pub const MAX_CAP: u8 = 4;

/// Everything the engine needs to decide, already checked for consistency.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Events later than this behind the clock update counters but trigger no alert.
    pub allowed_lateness: Secs,
    /// Horizon within which a repeated `event_id` counts once.
    pub dedup_window: Secs,
    /// Most event ids remembered per customer within the window.
    pub dedup_max_per_customer: usize,
    /// A customer with no event for this long is dropped (bounded state).
    pub retention: Secs,
    /// Key of the keyed hash that makes alert ids.
    pub id_key: crate::alert::IdKey,
    /// Key of per-customer offer codes (`{code}` in an offer code).
    pub offer_key: crate::alert::IdKey,
    /// The churn_risk model.
    pub risk: RiskSettings,
    /// Loyal promotion criteria (shared by the stage model and `thank_you`).
    pub loyal: LoyalSettings,
    /// `winback` rule.
    pub winback: WinbackSettings,
    /// `frequency_drop` rule.
    pub frequency_drop: FrequencyDropSettings,
    /// `support_recovery` rule.
    pub support_recovery: SupportSettings,
    /// `thank_you` rule.
    pub thank_you: ThankYouSettings,
    /// `welcome_back` rule.
    pub welcome_back: WelcomeBackSettings,
    /// Guards decided on event time.
    pub delivery: DeliverySettings,
}

impl Settings {
    /// A hash of every setting (the id secret aside), so that a checkpoint can tell
    /// whether it was written under the same thresholds.
    pub fn fingerprint(&self) -> u64 {
        // Debug output covers every field; the id key prints as a placeholder (alert ids
        // do not affect state). The version is part of it: a new build may derive due
        // times differently from the same settings.
        let text = format!("{} {self:?}", env!("CARGO_PKG_VERSION"));
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }
}

/// Parameters of the churn_risk model (see `engine::risk`).
#[derive(Clone, Debug)]
pub struct RiskSettings {
    /// Mean probability that a customer silently stops buying after a purchase.
    pub dropout: f64,
    /// How alike customers' drop-out probabilities are (beta prior a + b; lower = more varied).
    pub dropout_concentration: f64,
    /// Typical gap between purchases assumed before the population has taught one, days.
    pub prior_gap_days: f64,
    /// How many gaps' worth of weight the population gap gets against a customer's own
    /// (the shape `r` of the gamma prior on purchase rates).
    pub prior_weight: f64,
    /// churn_risk at which a buying customer becomes `at_risk`.
    pub at_risk: f64,
    /// Odds multiplier applied while a bad support experience is recent.
    pub support_factor: f64,
    /// How long a complaint, low score or missed SLA counts as recent.
    pub support_memory: Secs,
}

/// When a customer is promoted to `loyal`.
#[derive(Clone, Debug)]
pub struct LoyalSettings {
    /// At least this many purchases …
    pub min_purchases: u32,
    /// … over at least this long since the first one.
    pub min_tenure: Secs,
}

/// How the inactivity threshold of `winback` is chosen.
#[derive(Clone, Debug)]
pub enum WinbackMode {
    /// The same threshold for everyone.
    Fixed {
        /// No purchase for this long.
        inactive_after: Secs,
    },
    /// A multiple of the customer's own typical gap, bounded.
    Adaptive {
        /// Threshold = multiplier × typical gap.
        multiplier: f64,
        /// Lower bound.
        min: Secs,
        /// Upper bound.
        max: Secs,
    },
}

/// One step of a sequence: when, and which template.
#[derive(Clone, Debug)]
pub struct Step {
    /// Delay after the sequence starts.
    pub after: Secs,
    /// Template name.
    pub template: String,
    /// Offer code handed to the template ("" for none).
    pub offer_code: String,
}

/// `winback` settings.
#[derive(Clone, Debug)]
pub struct WinbackSettings {
    /// Emit alerts (the stage model runs regardless).
    pub enabled: bool,
    /// Threshold mode.
    pub mode: WinbackMode,
    /// Weight of the population gap in the adaptive typical gap, in gaps.
    pub prior_weight: f64,
    /// Sequence steps, `after` strictly increasing from the first.
    pub steps: Vec<Step>,
    /// No new sequence within this long of the previous one.
    pub cooldown: Secs,
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

/// `support_recovery` settings.
#[derive(Clone, Debug)]
pub struct SupportSettings {
    /// Emit alerts.
    pub enabled: bool,
    /// A satisfaction score at or below this fires.
    pub max_score: u8,
    /// A ticket open longer than this fires.
    pub sla: Secs,
    /// Template name.
    pub template: String,
    /// Offer code ("" for none).
    pub offer_code: String,
    /// Minimum time between alerts.
    pub cooldown: Secs,
}

/// `thank_you` settings.
#[derive(Clone, Debug)]
pub struct ThankYouSettings {
    /// Emit alerts.
    pub enabled: bool,
    /// Purchase counts that earn a thank-you, ascending.
    pub milestones: Vec<u32>,
    /// Thank on promotion to loyal.
    pub on_loyal: bool,
    /// Thank loyal customers on the anniversary of their first purchase.
    pub anniversary: bool,
    /// Template for milestones.
    pub milestone_template: String,
    /// Template for the loyal promotion.
    pub loyal_template: String,
    /// Template for anniversaries.
    pub anniversary_template: String,
    /// Minimum time between alerts.
    pub cooldown: Secs,
}

/// `welcome_back` settings.
#[derive(Clone, Debug)]
pub struct WelcomeBackSettings {
    /// Emit alerts.
    pub enabled: bool,
    /// A purchase this soon after a win-back email counts as a conversion.
    pub attribution_window: Secs,
    /// Template name.
    pub template: String,
    /// Offer code ("" for none).
    pub offer_code: String,
    /// Minimum time between alerts.
    pub cooldown: Secs,
}

/// Guards the engine decides on event time (docs/design.md §7 Decisions).
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// Share of customers (0..=100, two decimals) kept out of emails to measure lift.
    pub holdout_percent: f64,
    /// Rules the holdout applies to.
    pub holdout_rules: [bool; Rule::COUNT],
    /// Salt of the holdout hash.
    pub holdout_salt: String,
    /// At most this many emails per customer per `window` (1..=4).
    pub max_emails: u8,
    /// Cap window, whole days.
    pub window_days: u16,
    /// Emails decided longer than this before the clock are `stale`.
    pub max_decision_age: Secs,
    /// Without an explicit `marketing_consent = true`, suppress.
    pub require_consent: bool,
    /// Locale for customers without one.
    pub default_locale: String,
}

impl Settings {
    /// The cooldown of a rule.
    pub fn cooldown(&self, rule: Rule) -> Secs {
        match rule {
            Rule::Winback => self.winback.cooldown,
            Rule::FrequencyDrop => self.frequency_drop.cooldown,
            Rule::SupportRecovery => self.support_recovery.cooldown,
            Rule::ThankYou => self.thank_you.cooldown,
            Rule::WelcomeBack => self.welcome_back.cooldown,
        }
    }

    /// The rule and offer code of the rule (or win-back step) that sends `template`.
    pub fn offer_code_for(&self, template: &str) -> Option<(Rule, &str)> {
        let w = self
            .winback
            .steps
            .iter()
            .find(|s| s.template == template)
            .map(|s| (Rule::Winback, s.offer_code.as_str()));
        w.or_else(|| {
            [
                (
                    Rule::FrequencyDrop,
                    &self.frequency_drop.template,
                    &self.frequency_drop.offer_code,
                ),
                (
                    Rule::SupportRecovery,
                    &self.support_recovery.template,
                    &self.support_recovery.offer_code,
                ),
                (
                    Rule::WelcomeBack,
                    &self.welcome_back.template,
                    &self.welcome_back.offer_code,
                ),
            ]
            .into_iter()
            .find(|(_, t, _)| t.as_str() == template)
            .map(|(r, _, o)| (r, o.as_str()))
        })
    }

    /// Every template name the rules use, sorted, without repeats.
    pub fn template_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .winback
            .steps
            .iter()
            .map(|s| s.template.as_str())
            .collect();
        v.extend([
            self.frequency_drop.template.as_str(),
            self.support_recovery.template.as_str(),
            self.thank_you.milestone_template.as_str(),
            self.thank_you.loyal_template.as_str(),
            self.thank_you.anniversary_template.as_str(),
            self.welcome_back.template.as_str(),
        ]);
        v.sort_unstable();
        v.dedup();
        v
    }
}
