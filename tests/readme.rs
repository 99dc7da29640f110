//! README "Operating churnwatch" against the code: the config reference lists every key
//! of `config/churnwatch.toml` (no more, no fewer) with the default written there, and
//! the metrics list names every metric family the worker serves at `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use churnwatch::metrics::Metrics;
use serde_json::Value;

/// Tables passed through to librdkafka: one row each, whatever they hold.
const PASS_THROUGH: [&str; 3] = ["kafka.client", "kafka.consumer", "kafka.producer"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The lines under the heading `title` (any level), up to the next heading.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = text.lines();
    let found = lines
        .by_ref()
        .any(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == title);
    assert!(found, "README.md has no heading `{title}`");
    lines.take_while(|l| !l.starts_with('#')).collect()
}

/// The cells of a table row, trimmed (`\|` inside a cell is not a separator).
fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|').trim_end_matches('|');
    row.replace("\\|", "\u{0}")
        .split('|')
        .map(|c| c.replace('\u{0}', "|").trim().to_string())
        .collect()
}

/// A cell's text without the backticks around it.
fn code(cell: &str) -> &str {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or(cell)
}

/// Rows of the table in README section `title` whose first cell starts with `` `prefix``.
fn rows(readme: &str, title: &str, prefix: &str) -> Vec<Vec<String>> {
    let start = format!("| `{prefix}");
    section(readme, title)
        .into_iter()
        .filter(|l| l.starts_with(&start))
        .map(cells)
        .collect()
}

/// Every dotted key of `v`: tables recursed, arrays and the pass-through tables leaves.
fn keys(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() && !PASS_THROUGH.contains(&prefix) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

#[test]
fn config_reference_lists_every_key_with_its_default() {
    let path = root().join("config/churnwatch.toml");
    let toml: Value = config::Config::builder()
        .add_source(config::File::new(
            path.to_str().expect("a UTF-8 path"),
            config::FileFormat::Toml,
        ))
        .build()
        .expect("config/churnwatch.toml parses")
        .try_deserialize()
        .expect("config/churnwatch.toml as JSON");
    let mut want = BTreeMap::new();
    keys("", &toml, &mut want);
    for t in PASS_THROUGH {
        assert!(want.contains_key(t), "config/churnwatch.toml has no [{t}]");
    }

    let readme = read("README.md");
    let table = rows(&readme, "Config reference", "");
    let mut have: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut twice = Vec::new();
    for row in table {
        assert!(
            row.len() >= 4,
            "config reference row without 4 cells: {row:?}"
        );
        let key = code(&row[0]).to_string();
        if have.insert(key.clone(), row).is_some() {
            twice.push(key);
        }
    }
    let want_keys: BTreeSet<&String> = want.keys().collect();
    let have_keys: BTreeSet<&String> = have.keys().collect();
    let missing: Vec<_> = want_keys.difference(&have_keys).collect();
    let extra: Vec<_> = have_keys.difference(&want_keys).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && twice.is_empty(),
        "README config reference vs config/churnwatch.toml:\n  missing (in the toml, not in the README): {missing:?}\n  extra (in the README, not in the toml): {extra:?}\n  listed twice: {twice:?}"
    );

    let mut wrong = Vec::new();
    for (key, value) in &want {
        let row = &have[key];
        let live = row[2].trim_end_matches(['¹', '²', '³']);
        if !matches!(live, "yes" | "restart") {
            wrong.push(format!("{key}: live? is `{}`, not yes or restart", row[2]));
        }
        let simple =
            is_scalar(value) || matches!(value, Value::Array(a) if a.iter().all(is_scalar));
        if !simple {
            continue;
        }
        let cell = code(&row[1]);
        match serde_json::from_str::<Value>(cell) {
            Ok(v) if v == *value => {}
            _ => wrong.push(format!("{key}: README default `{cell}`, toml {value}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "README config reference rows that disagree with config/churnwatch.toml:\n  {}",
        wrong.join("\n  ")
    );
}

/// Families in the OpenMetrics text: name → type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

/// Names given to `registry.register(` in src/metrics.rs, prefixed, so that a family
/// this test does not touch (an empty family renders nothing) is still required.
fn registered_in_source() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    src.split("registry.register(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix('"')?;
            let name = &rest[..rest.find('"')?];
            Some(format!("churnwatch_{name}"))
        })
        .collect()
}

#[test]
fn metrics_list_names_every_family_served() {
    let m = Metrics::new();
    // Labelled families render only once they have a series.
    Metrics::inc(&m.rejects, &[("class", "invalid_json")]);
    Metrics::inc(&m.alerts, &[("rule", "winback"), ("decision", "email")]);
    Metrics::inc(&m.emails, &[("outcome", "sent")]);
    Metrics::inc(
        &m.emails_suppressed,
        &[("reason", "no_consent"), ("at", "decision")],
    );
    m.set_outcomes(None, [1, 1], [0, 0]);
    let served = families(&m.render());
    assert!(
        served.len() >= 10,
        "too few families in /metrics: {served:?}"
    );

    let readme = read("README.md");
    let listed: BTreeMap<String, String> = rows(&readme, "Metrics", "churnwatch_")
        .into_iter()
        .map(|row| {
            let name = code(&row[0]);
            let name = name.split('{').next().unwrap_or(name).to_string();
            (name, row.get(1).cloned().unwrap_or_default())
        })
        .collect();

    let mut missing = Vec::new();
    let mut wrong_type = Vec::new();
    let mut expected = BTreeSet::new();
    for (family, kind) in &served {
        let name = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.clone()
        };
        match listed.get(&name) {
            None => missing.push(format!("{name} ({kind})")),
            Some(t) if t != kind => wrong_type.push(format!("{name}: README `{t}`, served {kind}")),
            Some(_) => {}
        }
        expected.insert(name);
    }
    for family in registered_in_source() {
        let total = format!("{family}_total");
        if !expected.contains(&family) && !expected.contains(&total) {
            if !listed.contains_key(&family) && !listed.contains_key(&total) {
                missing.push(format!("{family} (registered in src/metrics.rs)"));
            }
            expected.insert(family);
            expected.insert(total);
        }
    }
    let extra: Vec<_> = listed.keys().filter(|n| !expected.contains(*n)).collect();
    assert!(
        missing.is_empty() && wrong_type.is_empty() && extra.is_empty(),
        "README metrics list vs /metrics:\n  missing: {missing:?}\n  wrong type: {wrong_type:?}\n  extra (not served): {extra:?}"
    );
}
