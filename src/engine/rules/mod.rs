//! The five rules of docs/design.md §6 State and rules, one module each. Each exposes what it reacts to (events or
//! a due timer) and, for timer-driven rules, when it is next due.

pub mod frequency_drop;
pub mod support_recovery;
pub mod thank_you;
pub mod welcome_back;
pub mod winback;

use super::clock::Stamp;

/// The purchase an inactivity or drop episode is counted from.
pub(crate) fn purchase_episode(last: Option<Stamp>) -> String {
    match last {
        Some(t) => format!("purchase@{}", t.to_rfc3339()),
        None => "purchase@none".to_string(),
    }
}
