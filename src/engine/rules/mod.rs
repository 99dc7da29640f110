//! The rules (docs/design.md §6 State and rules), one module each. A rule's module owns
//! everything about it: its `[rules.NAME]` section as read from the file, the validated
//! settings and their checks, when its timers are due, and what it does on an event or a
//! due timer. `engine::rule::registry!` is the one list of rules: adding a rule is its
//! module plus one line there (CONTRIBUTING.md, "A new rule").

use serde::de::DeserializeOwned;

use super::clock::{Secs, Stamp};
use super::customer::Customer;
use super::rule::Rule;
use super::settings::Settings;
use super::Ctx;
use crate::event::EventKind;
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
    /// Every template the rule may send, with the offer code it goes with (None for a
    /// template sent without one): the template check and `preview` both read this.
    fn sends(s: &Self::Settings) -> Vec<(&str, Option<&str>)>;

    /// The rule's timer, if it has one.
    const TIMER: Option<Timer> = None;
    /// When the rule's timer is next due for this customer.
    fn next_due(_s: &Settings, _c: &Customer) -> Option<Stamp> {
        None
    }
    /// Decides at the rule's due timer (and moves its due time on).
    fn fire(_ctx: &mut Ctx<'_>, _due: Stamp) {}
    /// Sees an event before the engine updates the customer's counters with it.
    fn before_event(_ctx: &mut Ctx<'_>, _ev: &Incoming<'_>) {}
    /// Sees an event after the counters and the stage took it in.
    fn on_event(_ctx: &mut Ctx<'_>, _ev: &Incoming<'_>) {}
}

/// A rule's timer: its name in `inspect` and exports, and its place among the timers of
/// a customer due at the same instant.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// Name in `inspect` and exports.
    pub name: &'static str,
    /// Lower goes first among timers due at the same instant (the at-risk move is
    /// [`AT_RISK_RANK`]); a rule's decisions depend on what fired before them.
    pub rank: u8,
}

/// Where the at-risk move stands among timers due at the same instant: after a ticket's
/// SLA, before every other rule.
pub const AT_RISK_RANK: u8 = 1;

/// An applied event as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'e> {
    /// What happened.
    pub kind: &'e EventKind,
    /// When (event time).
    pub at: Stamp,
    /// Hash of the event id (names an episode when nothing else does).
    pub id_hash: u64,
    /// A purchase that brings a lapsed customer back.
    pub returned: bool,
}

macro_rules! declare_dispatch {
    ($($variant:ident = $index:literal => $module:ident,)*) => {
        /// Every rule's look at an event before the counters change, in registry order.
        pub(crate) fn before_event(ctx: &mut Ctx<'_>, ev: &Incoming<'_>) {
            $($module::Spec::before_event(ctx, ev);)*
        }

        /// Every rule's look at an event after the counters changed, in registry order.
        pub(crate) fn on_event(ctx: &mut Ctx<'_>, ev: &Incoming<'_>) {
            $($module::Spec::on_event(ctx, ev);)*
        }

        /// The rule's timer, if it has one.
        pub fn timer(rule: Rule) -> Option<Timer> {
            match rule {
                $(Rule::$variant => <$module::Spec as RuleSpec>::TIMER,)*
            }
        }

        /// When the rule's timer is next due for `c`.
        pub(crate) fn next_due(rule: Rule, s: &Settings, c: &Customer) -> Option<Stamp> {
            match rule {
                $(Rule::$variant => $module::Spec::next_due(s, c),)*
            }
        }

        /// Decides at the rule's due timer.
        pub(crate) fn fire(rule: Rule, ctx: &mut Ctx<'_>, due: Stamp) {
            match rule {
                $(Rule::$variant => $module::Spec::fire(ctx, due),)*
            }
        }
    };
}
super::rule::registry!(declare_dispatch);

/// The purchase an inactivity or drop episode is counted from.
pub(crate) fn purchase_episode(last: Option<Stamp>) -> String {
    match last {
        Some(t) => format!("purchase@{}", t.to_rfc3339()),
        None => "purchase@none".to_string(),
    }
}
