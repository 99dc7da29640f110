//! Unknown keys and values of the wrong type, every one of them, for `check`.

use super::admin::RawAdmin;
use super::delivery::RawDelivery;
use super::engine::{RawEngine, RawLoyal, RawRisk};
use super::kafka::RawKafka;
use super::metrics::RawMetrics;
use super::smtp::RawSmtp;
use super::state::RawState;
use super::templates::RawTemplates;
use super::values::Wait;
use crate::engine::rule::Rule;
use crate::engine::rules::RuleSpec;

/// Every unknown key and every value of the wrong type, so that `check` lists them all
/// at once: each section is read on its own, and after each problem the key at fault is
/// dropped (unknown) or set back to its default (bad value) before reading again.
pub(super) fn key_problems(merged: &config::Config) -> Vec<(String, String)> {
    let defaults = embedded_defaults();
    let mut out = Vec::new();
    unknown_sections(merged, &mut out);
    section::<String>(merged, &defaults, "clock", &mut out);
    section::<Wait>(merged, &defaults, "shutdown_grace", &mut out);
    section::<RawKafka>(merged, &defaults, "kafka", &mut out);
    section::<RawState>(merged, &defaults, "state", &mut out);
    section::<RawEngine>(merged, &defaults, "engine", &mut out);
    section::<RawRisk>(merged, &defaults, "risk", &mut out);
    section::<RawTemplates>(merged, &defaults, "templates", &mut out);
    section::<RawSmtp>(merged, &defaults, "smtp", &mut out);
    section::<RawAdmin>(merged, &defaults, "admin", &mut out);
    section::<RawDelivery>(merged, &defaults, "delivery", &mut out);
    section::<RawLoyal>(merged, &defaults, "loyal", &mut out);
    rule_sections(merged, &defaults, &mut out);
    unknown_rules(merged, &mut out);
    section::<RawMetrics>(merged, &defaults, "metrics", &mut out);
    out
}

/// The embedded defaults alone: a bad value is set back to its default to read on.
fn embedded_defaults() -> config::Config {
    config::Config::builder()
        .add_source(config::File::from_str(
            super::DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .unwrap_or_default()
}

/// Top-level keys that are no section: a typo there would otherwise be ignored.
fn unknown_sections(merged: &config::Config, out: &mut Vec<(String, String)>) {
    let known = super::SECTIONS;
    if let Ok(top) = merged
        .clone()
        .try_deserialize::<std::collections::BTreeMap<String, config::Value>>()
    {
        for key in top.keys().filter(|k| !known.contains(&k.as_str())) {
            out.push((key.clone(), "unknown key".to_string()));
        }
    }
}

/// Each rule's section, read as its own rule's type, from the one rule registry.
fn rule_sections(
    merged: &config::Config,
    defaults: &config::Config,
    out: &mut Vec<(String, String)>,
) {
    macro_rules! rule_sections {
        ($($variant:ident = $index:literal => $module:ident,)*) => {
            $(section::<<crate::engine::rules::$module::Spec as RuleSpec>::Raw>(
                merged,
                defaults,
                concat!("rules.", stringify!($module)),
                out,
            );)*
        };
    }
    crate::engine::rule::registry!(rule_sections);
}

/// Keys under `rules` that name no rule: a misspelled rule would otherwise never fire.
fn unknown_rules(merged: &config::Config, out: &mut Vec<(String, String)>) {
    if let Ok(rules) = merged.get::<std::collections::BTreeMap<String, config::Value>>("rules") {
        for key in rules.keys().filter(|k| Rule::from_name(k).is_none()) {
            out.push((format!("rules.{key}"), "unknown key".to_string()));
        }
    }
}

/// The problems of one section, read as `T`: one per key at fault, sorted by key.
fn section<T: serde::de::DeserializeOwned>(
    merged: &config::Config,
    defaults: &config::Config,
    name: &str,
    out: &mut Vec<(String, String)>,
) {
    let Ok(mut value) = merged.get::<config::Value>(name) else {
        return;
    };
    let mut seen = Vec::new();
    let first = out.len();
    loop {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(_) => break,
            Err(e) => e,
        };
        let fault = Fault::new(name, e);
        if seen.contains(&fault.key) {
            break;
        }
        seen.push(fault.key.clone());
        out.push((
            fault.key.clone(),
            if fault.unknown {
                "unknown key".into()
            } else {
                fault.message.clone()
            },
        ));
        match fault.without(&value, defaults, name) {
            Some(next) => value = next,
            None => break,
        }
    }
    // The walk meets a section's keys in hash order: sorted, `check` says the same
    // thing twice.
    out[first..].sort();
}

/// One problem the section's reader stopped at.
struct Fault {
    /// The dotted key `check` names, section included.
    key: String,
    /// The reader's message, without the key the config crate appends.
    message: String,
    /// Whether the key is unknown (rather than of the wrong type).
    unknown: bool,
    /// The key at fault: the unknown one, or the first of the path.
    field: String,
    /// The section's key to drop or reset so that reading can go on.
    top: String,
}

impl Fault {
    /// Reads the key and message out of the reader's error.
    fn new(name: &str, e: serde_path_to_error::Error<config::ConfigError>) -> Fault {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // The config crate appends the key the path already names.
        let message = message
            .split(" for key `")
            .next()
            .unwrap_or_default()
            .to_string();
        let unknown = message.starts_with("unknown field");
        let field = match (unknown, message.split('`').nth(1)) {
            (true, Some(f)) => f.to_string(),
            _ => path
                .split(['.', '['])
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        let top = match path.split(['.', '[']).next() {
            Some(t) if !t.is_empty() && t != "." => t.to_string(),
            _ => field.clone(),
        };
        let named = unknown && (path.is_empty() || path == ".");
        let key = [name, &path, if named { &field } else { "" }]
            .iter()
            .filter(|p| !p.is_empty() && **p != ".")
            .copied()
            .collect::<Vec<_>>()
            .join(".");
        Fault {
            key,
            message,
            unknown,
            field,
            top,
        }
    }

    /// The section with this fault gone (an unknown key dropped, a bad value set back
    /// to its default), or `None` when it cannot be taken out and the walk must stop.
    fn without(
        &self,
        value: &config::Value,
        defaults: &config::Config,
        name: &str,
    ) -> Option<config::Value> {
        let (Ok(mut table), false) = (value.clone().into_table(), self.top.is_empty()) else {
            return None;
        };
        match defaults.get::<config::Value>(&format!("{name}.{}", self.top)) {
            Ok(d) if !(self.unknown && self.top == self.field) => table.insert(self.top.clone(), d),
            _ => table.remove(&self.top),
        };
        Some(config::Value::new(None, table))
    }
}
