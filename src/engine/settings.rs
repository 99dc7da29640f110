//! The engine's validated settings: plain data built from the config file, no I/O.

use super::clock::Secs;
use super::rule::Rule;
use super::rules::RuleSpec;

/// The win-back threshold mode, where callers tuning settings by hand look for it.
pub use super::rules::winback::WinbackMode;

macro_rules! declare_settings {
    ($($variant:ident = $index:literal => $module:ident,)*) => {
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
            $(
                #[doc = concat!("`", stringify!($module), "` rule.")]
                pub $module: <super::rules::$module::Spec as RuleSpec>::Settings,
            )*
            /// Guards decided on event time.
            pub delivery: DeliverySettings,
        }

        impl Settings {
            /// The cooldown of a rule.
            pub fn cooldown(&self, rule: Rule) -> Secs {
                match rule {
                    $(Rule::$variant => super::rules::$module::Spec::cooldown(&self.$module),)*
                }
            }

            /// The rule and offer code of the rule (or win-back step) that sends `template`.
            pub fn offer_code_for(&self, template: &str) -> Option<(Rule, &str)> {
                None$(.or_else(|| {
                    super::rules::$module::Spec::sends(&self.$module)
                        .into_iter()
                        .find(|(t, code)| *t == template && code.is_some())
                        .and_then(|(_, code)| code)
                        .map(|code| (Rule::$variant, code))
                }))*
            }

            /// Every template name the rules use, sorted, without repeats.
            pub fn template_names(&self) -> Vec<&str> {
                let mut v: Vec<&str> = Vec::new();
                $(v.extend(
                    super::rules::$module::Spec::sends(&self.$module)
                        .into_iter()
                        .map(|(t, _)| t),
                );)*
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    };
}
super::rule::registry!(declare_settings);

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
