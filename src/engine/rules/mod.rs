//! The rules (docs/design.md §6 State and rules), one module each. A rule's module owns
//! everything about it: its `[rules.NAME]` section as read from the file, the validated
//! settings and their checks, when its timers are due, and what it does on an event or a
//! due timer. `engine::rule::registry!` is the one list of rules: adding a rule is its module plus
//! one line there (CONTRIBUTING.md "Adding a rule").

use serde::de::DeserializeOwned;

use super::clock::{Secs, Stamp};
use crate::problems::Problems;

macro_rules! declare_modules {
    ($($variant:ident = $index:literal => $module:ident,)*) => {
        $(pub mod $module;)*
    };
}
super::rule::registry!(declare_modules);

/// What the registry needs of every rule: its config section, how that section is
/// checked, and what the guards and templates need to know of it.
pub trait RuleSpec {
    /// The `[rules.NAME]` section as written (serde layer; unknown keys refused).
    type Raw: DeserializeOwned + Clone + std::fmt::Debug;
    /// The validated settings the engine runs with.
    type Settings: Clone + std::fmt::Debug;
    /// Checks the section (`key` is `rules.NAME`) and builds the settings; every
    /// problem goes to `p` so that `check` lists them all.
    fn validate(raw: &Self::Raw, key: &str, p: &mut Problems) -> Self::Settings;
    /// No new alert of the rule for a customer within this long of the previous one.
    fn cooldown(s: &Self::Settings) -> Secs;
    /// Every template the rule may send.
    fn templates(s: &Self::Settings) -> Vec<&str>;
    /// The offer code sent with `template`, when the rule sends it with one.
    fn offer_code<'s>(s: &'s Self::Settings, template: &str) -> Option<&'s str>;
}

/// The purchase an inactivity or drop episode is counted from.
pub(crate) fn purchase_episode(last: Option<Stamp>) -> String {
    match last {
        Some(t) => format!("purchase@{}", t.to_rfc3339()),
        None => "purchase@none".to_string(),
    }
}
