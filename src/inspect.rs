//! `churnwatch inspect CUSTOMER_ID`: one customer's state read from the store and
//! explained — stage and why, churn_risk with its inputs, pending timers, the latest
//! emails and alerts, and what the outbox still holds for them. Contact data is redacted
//! unless asked for.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use crate::engine::clock::{Stamp, DAY};
use crate::engine::rule::Rule;
use crate::engine::settings::Settings;
use crate::outbox::Entry;
use crate::store::{self, StoreError, TaskStore};

/// Masks an address as `j•••@example.com`, a name as `J•••`.
fn redact(s: &str) -> String {
    let (local, domain) = s.split_once('@').unwrap_or((s, ""));
    let first: String = local.chars().take(1).collect();
    if domain.is_empty() {
        format!("{first}•••")
    } else {
        format!("{first}•••@{domain}")
    }
}

#[derive(Serialize)]
struct Pending {
    entry: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

/// Looks `id` up in every task store under `dir`; None when no store knows it.
pub fn inspect(
    settings: &Settings,
    dir: &Path,
    id: &str,
    personal: bool,
) -> Result<Option<Value>, StoreError> {
    first_store(dir, |task, st| {
        in_store(st, task, Arc::new(settings.clone()), id, personal)
    })
}

/// The first answer `f` gives over the task stores under `dir`, each opened read-only.
/// A store a running worker holds cannot be read: that is the error only if no other
/// store answers.
pub fn first_store<T>(
    dir: &Path,
    mut f: impl FnMut(i32, &TaskStore) -> Result<Option<T>, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut in_use = None;
    for task in store::tasks_in(dir)? {
        let st = match TaskStore::open_read_only(dir, task) {
            Ok(st) => st,
            Err(e @ StoreError::InUse { .. }) => {
                in_use.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(v) = f(task, &st)? {
            return Ok(Some(v));
        }
    }
    match in_use {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Explains `id` from one task's store (the worker answers `GET /customers/{id}` with
/// its own open stores, as of its last checkpoint).
pub fn in_store(
    st: &TaskStore,
    task: i32,
    settings: Arc<Settings>,
    id: &str,
    personal: bool,
) -> Result<Option<Value>, StoreError> {
    {
        let Some(found) = st.inspect(settings, id)? else {
            return Ok(None);
        };
        let c = &found.record.customer;
        let profile = found.record.profile.as_ref().map(|p| {
            let show = |v: &Option<Box<str>>| {
                v.as_deref()
                    .map(|s| if personal { s.to_string() } else { redact(s) })
            };
            json!({
                "email": show(&p.email),
                "name": show(&p.name),
                "locale": p.locale.as_deref(),
                "timezone": p.timezone.as_deref(),
                "marketing_consent": p.consent,
                "unsubscribed": p.unsubscribed(),
                "hard_bounced": p.hard_bounced(),
            })
        });
        let mut days: Vec<u16> = c.email_days.iter().copied().filter(|d| *d != 0).collect();
        days.sort_unstable_by(|a, b| b.cmp(a));
        let last_emails: Vec<String> = days
            .into_iter()
            .map(|d| date(Stamp::from_raw(u32::from(d) * DAY)))
            .collect();
        let last_alerts: serde_json::Map<String, Value> = Rule::ALL
            .iter()
            .filter_map(|r| {
                c.rule_last[r.index()].map(|t| (r.name().to_string(), json!(t.to_rfc3339())))
            })
            .collect();
        let pending: Vec<Pending> = found
            .pending
            .iter()
            .map(|(n, e)| match e {
                Entry::Alert { .. } => Pending {
                    entry: *n,
                    kind: "alert",
                    message_id: None,
                },
                Entry::DeadLetter { .. } => Pending {
                    entry: *n,
                    kind: "dead_letter",
                    message_id: None,
                },
                Entry::Email(m) => Pending {
                    entry: *n,
                    kind: "email",
                    message_id: Some(format!("<{}>", m.message_id)),
                },
            })
            .collect();
        Ok(Some(json!({
            "task": task,
            "store": st.path().display().to_string(),
            "customer": found.engine.snapshot(id),
            "last_seen": c.last_seen.map(Stamp::to_rfc3339),
            "profile": profile,
            "last_email_days": last_emails,
            "last_alert_by_rule": last_alerts,
            "pending_in_outbox": pending,
        })))
    }
}

fn date(t: Stamp) -> String {
    t.to_rfc3339().chars().take(10).collect()
}
