//! Faulty and hostile input never costs state and never mails someone who opted out
//! (README "Input: limits and reject classes"): each problem a real producer causes by
//! mistake, through the debug binary's `replay` (and `preview` over its store).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const UNTIL: &str = "2026-10-01T00:00:00Z";

fn churnwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnwatch"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHURNWATCH") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// What one replay left: stdout, alerts, rejects, the customer export, `.eml` names.
struct Run {
    stdout: String,
    alerts: Vec<Value>,
    rejects: Vec<Value>,
    rejects_bytes: u64,
    customers: Vec<Value>,
    emails: Vec<String>,
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn replay_in(dir: &Path, lines: &[String]) -> Run {
    let events = dir.join("events.jsonl");
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(&events, text).expect("write events");
    let out = dir.join("out");
    let export = dir.join("customers.jsonl");
    let o = churnwatch()
        .args(["replay", "--events"])
        .arg(&events)
        .arg("--outbox")
        .arg(&out)
        .args(["--until", UNTIL, "--export-customers"])
        .arg(&export)
        .output()
        .expect("run churnwatch");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "replay failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let read = |name: &str| fs::read_to_string(out.join(name)).expect("an output file");
    let mut emails: Vec<String> = fs::read_dir(&out)
        .expect("outbox")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    emails.sort();
    Run {
        stdout,
        alerts: jsonl(&read("alerts.jsonl")),
        rejects: jsonl(&read("rejects.jsonl")),
        rejects_bytes: fs::metadata(out.join("rejects.jsonl")).map_or(0, |m| m.len()),
        customers: jsonl(&fs::read_to_string(&export).expect("export")),
        emails,
    }
}

fn replay(lines: &[String]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    replay_in(dir.path(), lines)
}

fn purchase(id: &str, customer: &str, at: &str, categories: &[&str]) -> String {
    serde_json::json!({
        "event_id": id, "type": "purchase", "customer_id": customer, "occurred_at": at,
        "order_id": format!("o-{id}"), "amount": "10.00", "currency": "USD",
        "categories": categories,
    })
    .to_string()
}

fn profile(id: &str, customer: &str, at: &str, email: &str, consent: bool) -> String {
    serde_json::json!({
        "event_id": id, "type": "customer_profile", "customer_id": customer,
        "occurred_at": at, "email": email, "name": "Ana", "marketing_consent": consent,
    })
    .to_string()
}

fn simple(id: &str, kind: &str, customer: &str, at: &str, extra: Value) -> String {
    let mut v = serde_json::json!({
        "event_id": id, "type": kind, "customer_id": customer, "occurred_at": at,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v.to_string()
}

/// A small shop: a few customers buying through the first half of 2026, so that
/// win-backs, milestones and stages all happen by `UNTIL`.
fn shop() -> Vec<String> {
    let mut lines = Vec::new();
    for c in 1..=6 {
        let cust = format!("c{c}");
        lines.push(profile(
            &format!("p{c}"),
            &cust,
            "2026-01-01T08:00:00Z",
            &format!("{cust}@example.com"),
            true,
        ));
        for k in 0..(c + 3) {
            let at = format!("2026-0{}-{:02}T10:00:00Z", 1 + k % 6, 2 + c * 3);
            lines.push(purchase(&format!("e{c}-{k}"), &cust, &at, &["books"]));
        }
    }
    lines.sort_by_key(|l| {
        serde_json::from_str::<Value>(l).expect("json")["occurred_at"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    lines
}

fn classes(run: &Run) -> Vec<&str> {
    run.rejects
        .iter()
        .map(|r| r["class"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn one_event_from_the_far_future_is_rejected_and_moves_no_clock() {
    let clean = replay(&shop());
    assert!(!clean.alerts.is_empty(), "the shop fires alerts");
    let mut hostile = shop();
    // A producer sending milliseconds as seconds, a typo in the year.
    hostile.insert(3, purchase("far", "c9", "2135-06-01T00:00:00Z", &["books"]));
    let run = replay(&hostile);
    assert_eq!(classes(&run), ["future_timestamp"]);
    let reason = run.rejects[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("engine.max_future_skew"), "{reason}");
    // Nobody expired, nothing went stale: every decision and every customer as without it.
    assert_eq!(run.alerts, clean.alerts);
    assert_eq!(run.customers, clean.customers);
    assert_eq!(run.emails, clean.emails);
    assert!(
        run.stdout.contains(&format!("clock at {UNTIL}")),
        "{}",
        run.stdout
    );
}

fn decisions<'a>(run: &'a Run, customer: &str, rule: &str) -> Vec<&'a str> {
    run.alerts
        .iter()
        .filter(|a| a["customer_id"] == customer && a["rule"] == rule)
        .map(|a| a["delivery"]["decision"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn a_late_profile_undoes_neither_an_unsubscribe_nor_a_hard_bounce() {
    let complaint =
        |id: &str, c: &str| simple(id, "complaint", c, "2026-02-01T10:00:00Z", Value::Null);
    let lines = vec![
        // u: consent at t1, unsubscribed at t3, then a CRM export dated t2 arrives.
        profile("u1", "u", "2026-01-01T00:00:00Z", "u@example.com", true),
        simple(
            "u3",
            "email_unsubscribed",
            "u",
            "2026-01-01T12:00:00Z",
            Value::Null,
        ),
        profile("u2", "u", "2026-01-01T06:00:00Z", "u@example.com", true),
        complaint("u4", "u"),
        // b: a hard bounce, then an older profile spelling the address in other case.
        profile("b1", "b", "2026-01-01T00:00:00Z", "Ana.B@Example.com", true),
        simple(
            "b3",
            "email_bounced",
            "b",
            "2026-01-01T12:00:00Z",
            serde_json::json!({"kind": "hard"}),
        ),
        profile("b2", "b", "2026-01-01T06:00:00Z", "ana.b@example.com", true),
        complaint("b4", "b"),
        // n: the same late profile without an unsubscribe: this one is emailed.
        profile("n1", "n", "2026-01-01T00:00:00Z", "n@example.com", true),
        profile("n2", "n", "2026-01-01T06:00:00Z", "n@example.com", true),
        complaint("n4", "n"),
        // v: a new opt-in after the unsubscribe is the customer's wish: emailed.
        profile("v1", "v", "2026-01-01T00:00:00Z", "v@example.com", true),
        simple(
            "v3",
            "email_unsubscribed",
            "v",
            "2026-01-01T06:00:00Z",
            Value::Null,
        ),
        profile("v2", "v", "2026-01-01T12:00:00Z", "v@example.com", true),
        complaint("v4", "v"),
    ];
    let run = replay(&lines);
    assert_eq!(
        decisions(&run, "u", "support_recovery"),
        ["suppressed:unsubscribed"]
    );
    assert_eq!(
        decisions(&run, "b", "support_recovery"),
        ["suppressed:hard_bounce"]
    );
    assert_eq!(decisions(&run, "n", "support_recovery"), ["email"]);
    assert_eq!(decisions(&run, "v", "support_recovery"), ["email"]);
    assert_eq!(run.emails.len(), 2, "{:?}", run.emails);
}

fn customer<'a>(run: &'a Run, id: &str) -> &'a Value {
    run.customers
        .iter()
        .find(|c| c["customer_id"] == id)
        .expect("customer exported")
}

#[test]
fn a_whole_batch_delivered_again_counts_once() {
    let batch: Vec<String> = (1..=5)
        .map(|k| {
            purchase(
                &format!("x{k}"),
                "r",
                &format!("2026-03-0{k}T10:00:00Z"),
                &[],
            )
        })
        .collect();
    let once = replay(&batch);
    // An ETL job run twice, then a producer retrying the last three in reverse order.
    let mut again = batch.clone();
    again.extend(batch.iter().cloned());
    again.extend(batch.iter().rev().take(3).cloned());
    let run = replay(&again);
    assert_eq!(customer(&run, "r")["purchases"], 5);
    assert_eq!(customer(&run, "r")["spend_minor"], 5000);
    assert_eq!(run.customers, once.customers);
    assert_eq!(run.alerts, once.alerts);
    let duplicates = run
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("duplicates (ignored)"))
        .map(str::trim);
    assert_eq!(duplicates, Some("8"), "{}", run.stdout);
}

#[test]
fn an_oversized_line_is_rejected_without_being_kept_and_the_next_one_counts() {
    let mut lines = shop();
    // 20 MB of one line: far over engine.max_event_bytes.
    let huge = format!(
        r#"{{"event_id":"big","type":"purchase","customer_id":"c1","occurred_at":"{}"}}"#,
        "9".repeat(20 << 20)
    );
    lines.insert(2, huge);
    // 60 KB of timestamp: under the size limit, so parsed; the reason stays short.
    let long_time = simple("lt", "purchase", "c2", &"7".repeat(60_000), Value::Null);
    lines.insert(3, long_time);
    lines.push(purchase("after", "z", "2026-06-30T10:00:00Z", &[]));
    let run = replay(&lines);
    assert_eq!(classes(&run), ["too_large", "invalid_timestamp"]);
    let raw = run.rejects[0]["raw"].as_str().unwrap_or_default();
    assert!(raw.len() <= 1024, "{} bytes of evidence kept", raw.len());
    assert!(raw.starts_with(r#"{"event_id":"big""#), "{raw:.60}");
    for r in &run.rejects {
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(reason.len() <= 300, "reason of {} bytes", reason.len());
    }
    assert!(
        run.rejects_bytes < 200_000,
        "rejects.jsonl is {} bytes",
        run.rejects_bytes
    );
    assert_eq!(customer(&run, "z")["purchases"], 1, "the line after counts");
}

#[test]
fn reasons_never_quote_an_email_or_a_name() {
    let lines = vec![
        simple(
            "p1",
            "customer_profile",
            "c1",
            "2026-01-01T00:00:00Z",
            serde_json::json!({"email": ["secret.person@example.com"]}),
        ),
        simple(
            "p2",
            "customer_profile",
            "c2",
            "2026-01-01T00:00:00Z",
            serde_json::json!({"name": {"first": "Secretname"}}),
        ),
        simple(
            "p3",
            "customer_profile",
            "c3",
            "2026-01-01T00:00:00Z",
            serde_json::json!({"email": 12345678}),
        ),
    ];
    let run = replay(&lines);
    assert_eq!(classes(&run), ["wrong_type", "wrong_type", "wrong_type"]);
    for r in &run.rejects {
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("field `"), "names the field: {reason}");
        for secret in ["secret.person", "Secretname", "12345678"] {
            assert!(!reason.contains(secret), "{reason}");
        }
    }
}

#[test]
fn ids_with_control_or_bidi_characters_are_rejected_and_names_neutralised() {
    let lines = vec![
        purchase("i1", "c\n1", "2026-01-01T00:00:00Z", &[]),
        purchase("i2", "c\u{0}2", "2026-01-01T00:00:00Z", &[]),
        purchase("i3", "c\u{202E}3", "2026-01-01T00:00:00Z", &[]),
        simple("i4", "support_ticket_opened", "c4", "2026-01-01T00:00:00Z", serde_json::json!({"ticket_id": "T-1\r\nBcc: x@example.com"})),
        purchase("i5\t", "c5", "2026-01-01T00:00:00Z", &[]),
        purchase("i6", "c6", "2026-01-01T00:00:00Z", &["toys\r\n"]),
        serde_json::json!({"event_id": "i7", "type": "purchase", "customer_id": "c7",
            "occurred_at": "2026-01-01T00:00:00Z", "order_id": "o\u{2066}7", "amount": "1", "currency": "USD"}).to_string(),
    ];
    let run = replay(&lines);
    assert_eq!(classes(&run), ["invalid_value"; 7]);
    for (r, field) in run.rejects.iter().zip([
        "customer_id",
        "customer_id",
        "customer_id",
        "ticket_id",
        "event_id",
        "categories",
        "order_id",
    ]) {
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(&format!("`{field}`")), "{reason}");
    }
    assert!(run.customers.is_empty(), "{:?}", run.customers);
}

/// The headers of an `.eml` file, unfolded.
fn headers(eml: &str) -> Vec<String> {
    let head = eml.split("\r\n\r\n").next().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push_str(line);
            }
        } else {
            out.push(line.to_string());
        }
    }
    out
}

#[test]
fn a_name_cannot_forge_headers_or_reorder_what_is_shown() {
    let name = |c: &str, n: &str| {
        simple(
            &format!("p-{c}"),
            "customer_profile",
            c,
            "2026-01-01T00:00:00Z",
            serde_json::json!({
                "email": format!("{c}@example.com"), "marketing_consent": true, "name": n,
            }),
        )
    };
    let lines = vec![
        name("w", "=?utf-8?b?U2hvcCBTdXBwb3J0?="),
        name("x", "Eve\u{202E}gnp.exe\r\nBcc: attacker@example.com"),
        name("y", &"Long ".repeat(300)),
        simple("w1", "complaint", "w", "2026-01-02T00:00:00Z", Value::Null),
        simple("x1", "complaint", "x", "2026-01-02T00:00:00Z", Value::Null),
        simple("y1", "complaint", "y", "2026-01-02T00:00:00Z", Value::Null),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let run = replay_in(dir.path(), &lines);
    assert_eq!(run.emails.len(), 3, "{:?} {:?}", run.emails, run.rejects);
    for file in &run.emails {
        let eml = fs::read_to_string(dir.path().join("out").join(file)).expect("eml");
        for line in eml.split("\r\n") {
            assert!(line.len() <= 998, "a line of {} bytes", line.len());
        }
        let hs = headers(&eml);
        let to = hs
            .iter()
            .find(|h| h.starts_with("To: "))
            .expect("a To header");
        assert!(
            !to.contains("=?utf-8?b?U2hvcCBTdXBwb3J0?="),
            "passed raw: {to}"
        );
        assert!(!hs.iter().any(|h| h.starts_with("Bcc")), "{hs:?}");
        assert!(!eml.contains('\u{202E}'), "bidi override in {file}");
        if to.contains("w@example.com") {
            assert!(to.starts_with("To: =?utf-8?b?"), "encoded: {to}");
        }
    }
}

#[test]
fn one_customers_junk_categories_never_crowd_out_anothers_favourite() {
    let mut lines = Vec::new();
    lines.push(profile(
        "pa",
        "a",
        "2026-01-01T00:00:00Z",
        "a@example.com",
        true,
    ));
    lines.push(purchase("a0", "a", "2026-01-01T01:00:00Z", &["books"]));
    lines.push(purchase("a1", "a", "2026-01-01T02:00:00Z", &["books"]));
    // 70,000 unique names from one customer, 32 per purchase.
    for k in 0..2200 {
        let names: Vec<String> = (0..32).map(|j| format!("junk-{k}-{j}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        lines.push(purchase(
            &format!("j{k}"),
            "junk",
            "2026-01-02T00:00:00Z",
            &refs,
        ));
    }
    // Another customer's first purchase in a new category, after the flood.
    lines.push(profile(
        "pb",
        "b",
        "2026-01-03T00:00:00Z",
        "b@example.com",
        true,
    ));
    lines.push(purchase("b0", "b", "2026-01-03T01:00:00Z", &["garden"]));
    let dir = tempfile::tempdir().expect("tempdir");
    let run = replay_in(dir.path(), &lines);
    assert!(run.rejects.is_empty());
    let store = dir.path().join("out/state/task-0.redb");
    let size = fs::metadata(&store).expect("store").len();
    assert!(size < 4 << 20, "store of {size} bytes");
    for (c, category) in [("a", "books"), ("b", "garden")] {
        let o = churnwatch()
            .args([
                "preview",
                "--template",
                "winback_gentle",
                "--customer",
                c,
                "--state",
            ])
            .arg(dir.path().join("out/state"))
            .output()
            .expect("preview");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            text.contains(&format!("Our {category} collection")),
            "{c}: {text}"
        );
    }
}
