//! README "Operating churnwatch": `churnwatch replay` end to end, on the bundled example events, through
//! the debug binary: exit code, summary, alerts.jsonl shape, .eml files per rule and
//! locale, rejects, customer export, determinism, batch-size independence, and how the
//! output folder is replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

use serde_json::Value;

const UNTIL: &str = "2026-11-01T00:00:00Z";
const EXAMPLE: &str = "examples/events.jsonl";
const RULES: [&str; 5] = [
    "winback",
    "frequency_drop",
    "support_recovery",
    "thank_you",
    "welcome_back",
];
const DOMAIN: &str = "churnwatch.shop.example.com";

// ---------------------------------------------------------------------------------------
// running the binary

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn churnwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnwatch"));
    c.current_dir(manifest_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("CHURNWATCH") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// Everything a replay left behind, read into memory (so temp folders can go at once).
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    alerts: String,
    sends: String,
    rejects: String,
    export: Option<String>,
    /// `.eml` file name → bytes
    emls: BTreeMap<String, Vec<u8>>,
    /// every other entry of the output folder
    others: BTreeSet<String>,
}

fn read_outbox(
    out: &Path,
) -> (
    String,
    String,
    String,
    BTreeMap<String, Vec<u8>>,
    BTreeSet<String>,
) {
    let read = |n: &str| fs::read_to_string(out.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    let mut emls = BTreeMap::new();
    let mut others = BTreeSet::new();
    for e in fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".eml") {
            emls.insert(name, fs::read(e.path()).unwrap());
        } else {
            others.insert(name);
        }
    }
    (
        read("alerts.jsonl"),
        read("sends.jsonl"),
        read("rejects.jsonl"),
        emls,
        others,
    )
}

/// Starts `replay` into `out` with `events` and extra arguments.
fn spawn_replay(
    out: &Path,
    events: &[&Path],
    extra: &[&str],
    export: Option<&Path>,
) -> std::process::Child {
    let mut cmd = churnwatch();
    cmd.arg("replay").arg("--events");
    for e in events {
        cmd.arg(e);
    }
    cmd.arg("--outbox").arg(out).args(extra);
    if let Some(x) = export {
        cmd.arg("--export-customers").arg(x);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run churnwatch")
}

/// Waits for a replay started by [`spawn_replay`] and reads what it wrote.
fn finish_replay(child: std::process::Child, out: &Path, export: Option<&Path>) -> Output {
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "replay failed ({}):\n{stdout}\n{stderr}",
        o.status
    );
    let (alerts, sends, rejects, emls, others) = read_outbox(out);
    Output {
        status: o.status,
        stdout,
        stderr,
        alerts,
        sends,
        rejects,
        export: export.map(|x| fs::read_to_string(x).unwrap()),
        emls,
        others,
    }
}

/// Runs `replay` into `out` with `events` and extra arguments.
fn replay_into(out: &Path, events: &[&Path], extra: &[&str], export: Option<&Path>) -> Output {
    finish_replay(spawn_replay(out, events, extra, export), out, export)
}

/// Runs `replay` into a fresh temporary folder, with the customer export.
fn replay(events: &[&Path], extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outbox");
    let export = dir.path().join("customers.jsonl");
    replay_into(&out, events, extra, Some(&export))
}

/// The bundled example, replayed once with `--until` and the export (shared by the tests).
fn full() -> &'static Output {
    static FULL: OnceLock<Output> = OnceLock::new();
    FULL.get_or_init(|| replay(&[Path::new(EXAMPLE)], &["--until", UNTIL]))
}

/// The first `n` lines of the example as a file in `dir`.
fn prefix(dir: &Path, n: usize) -> PathBuf {
    let mut s = String::new();
    for line in example_text().lines().take(n) {
        s.push_str(line);
        s.push('\n');
    }
    let p = dir.join(format!("first-{n}.jsonl"));
    fs::write(&p, s).unwrap();
    p
}

fn example_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| fs::read_to_string(manifest_dir().join(EXAMPLE)).unwrap())
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1))
        })
        .collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("`{k}` is not a string in {v}"))
}

/// The raw JSON text of a top-level number field in one line (to count its decimals).
fn raw_number<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap();
    let tok = &rest[..end];
    (tok != "null").then_some(tok)
}

fn decimals(num: &str) -> usize {
    num.split_once('.').map(|(_, f)| f.len()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// MIME helpers (enough for lettre's output)

fn split_head(msg: &str) -> (&str, &str) {
    msg.split_once("\r\n\r\n").expect("header/body separator")
}

fn header_value(head: &str, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let mut current: Option<String> = None;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(c) = current.as_mut() {
                c.push_str(line);
            }
            continue;
        }
        if let Some(c) = current.take() {
            out = Some(c);
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case(name) {
                current = Some(v.trim().to_string());
            }
        }
    }
    out.or(current)
}

fn decode_qp(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if b[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn decode_b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in chunk {
            n = (n << 6) | if c == b'=' { 0 } else { val(c) };
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

/// The decoded `text/plain` and `text/html` parts of a multipart/alternative message.
fn parts(msg: &str) -> BTreeMap<String, String> {
    let (head, body) = split_head(msg);
    let ct = header_value(head, "Content-Type").expect("Content-Type");
    assert!(ct.starts_with("multipart/alternative"), "{ct}");
    let boundary = ct
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_string();
    let mut out = BTreeMap::new();
    for part in body.split(&format!("--{boundary}")) {
        let Some((ph, pb)) = part.trim_start_matches("\r\n").split_once("\r\n\r\n") else {
            continue;
        };
        let Some(pct) = header_value(ph, "Content-Type") else {
            continue;
        };
        let kind = pct.split(';').next().unwrap().trim().to_string();
        let pb = pb.strip_suffix("\r\n").unwrap_or(pb);
        let decoded = match header_value(ph, "Content-Transfer-Encoding").as_deref() {
            Some("quoted-printable") => decode_qp(pb),
            Some("base64") => decode_b64(pb),
            _ => pb.as_bytes().to_vec(),
        };
        out.insert(kind, String::from_utf8(decoded).expect("UTF-8 part"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// the full example

#[test]
fn full_replay_exits_0_and_the_summary_names_every_rule() {
    let o = full();
    assert!(o.status.success());
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    let alerts = jsonl(&o.alerts);
    for rule in RULES {
        let line = o
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(rule))
            .unwrap_or_else(|| panic!("summary does not mention {rule}:\n{}", o.stdout));
        let n: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let in_file = alerts.iter().filter(|a| s(a, "rule") == rule).count();
        assert_eq!(n, in_file, "summary count for {rule} vs alerts.jsonl");
    }
    assert!(o.stdout.contains("rejected lines: 34"), "{}", o.stdout);
    assert!(
        o.stdout.contains(&format!("clock at {UNTIL}")),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains(&format!("emails written: {} into", o.emls.len())),
        "{}",
        o.stdout
    );
}

#[test]
fn full_replay_alerts_have_the_spec_shape() {
    let o = full();
    let mut rules_seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let until = UNTIL;
    for (i, line) in o.alerts.lines().enumerate() {
        let a: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let obj = a.as_object().unwrap();
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = [
            "v",
            "alert_id",
            "customer_id",
            "rule",
            "step",
            "episode",
            "at",
            "stage_from",
            "stage_to",
            "churn_risk",
            "inputs",
            "delivery",
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, want, "line {}", i + 1);
        assert_eq!(a["v"], 1);
        let id = s(&a, "alert_id");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(ids.insert(id.to_string()), "alert_id {id} twice");
        let cust = s(&a, "customer_id");
        assert!(!cust.is_empty() && !id.contains(cust));
        let rule = s(&a, "rule");
        assert!(RULES.contains(&rule), "{rule}");
        rules_seen.insert(rule.to_string());
        assert!(a["step"].is_u64());
        if rule == "winback" {
            assert!(a["step"].as_u64().unwrap() < 3, "{line}");
        }
        assert!(!s(&a, "episode").is_empty());
        let at = s(&a, "at");
        assert!(
            at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
            "at {at}"
        );
        assert!(at <= until, "alert at {at} after --until");
        for k in ["stage_from", "stage_to"] {
            assert!(
                ["prospect", "new", "active", "loyal", "at_risk", "lapsed", "won_back"]
                    .contains(&s(&a, k)),
                "{k} in {line}"
            );
        }
        match raw_number(line, "churn_risk") {
            Some(tok) => {
                let x: f64 = tok.parse().unwrap();
                assert!((0.0..=1.0).contains(&x), "churn_risk {tok}");
                assert!(
                    decimals(tok) <= 4,
                    "churn_risk {tok} has more than 4 decimals"
                );
            }
            None => assert!(a["churn_risk"].is_null()),
        }
        let inputs = a["inputs"].as_object().expect("inputs is an object");
        assert!(!inputs.is_empty(), "no inputs in {line}");
        for (k, v) in inputs {
            if let Some(f) = v.as_f64() {
                let tok = v.to_string();
                assert!(f.is_finite() && decimals(&tok) <= 4, "input {k} = {tok}");
            }
        }
        let d = a["delivery"].as_object().unwrap();
        let dkeys: BTreeSet<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            dkeys,
            ["decision", "locale", "message_id", "template"]
                .into_iter()
                .collect()
        );
        let decision = d["decision"].as_str().unwrap();
        let ok = matches!(
            decision,
            "email" | "holdout" | "cooldown" | "capped" | "stale"
        ) || decision.strip_prefix("suppressed:").is_some_and(|r| {
            ["no_address", "no_consent", "unsubscribed", "hard_bounce"].contains(&r)
        });
        assert!(ok, "decision {decision}");
        if decision == "email" {
            assert_eq!(
                d["message_id"].as_str().unwrap(),
                format!("<{id}@{DOMAIN}>")
            );
            assert!(
                ["en", "ar"].contains(&d["locale"].as_str().unwrap()),
                "{line}"
            );
        } else {
            assert!(d["message_id"].is_null(), "{line}");
        }
        assert!(!d["template"].as_str().unwrap().is_empty());
    }
    assert_eq!(rules_seen.len(), 5, "{rules_seen:?}");
}

#[test]
fn full_replay_writes_an_english_and_an_arabic_email_for_every_rule() {
    let o = full();
    let alerts: BTreeMap<String, Value> = jsonl(&o.alerts)
        .into_iter()
        .map(|a| (s(&a, "alert_id").to_string(), a))
        .collect();
    let emailed: BTreeSet<&str> = alerts
        .values()
        .filter(|a| a["delivery"]["decision"] == "email")
        .map(|a| s(a, "alert_id"))
        .collect();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut files = BTreeSet::new();
    for send in jsonl(&o.sends) {
        assert_eq!(s(&send, "status"), "written", "{send}");
        let id = s(&send, "alert_id");
        let alert = &alerts[id];
        assert!(emailed.contains(id));
        let locale = s(&send, "locale");
        assert_eq!(alert["delivery"]["locale"].as_str().unwrap(), locale);
        let file = s(&send, "file");
        assert_eq!(file, format!("{id}@{DOMAIN}.eml"));
        assert_eq!(s(&send, "message_id"), format!("<{id}@{DOMAIN}>"));
        files.insert(file.to_string());

        // The file is there, carries that Message-ID, and its HTML is in that language.
        let bytes = o.emls.get(file).unwrap_or_else(|| panic!("{file} missing"));
        let msg = std::str::from_utf8(bytes).unwrap();
        let (head, _) = split_head(msg);
        assert_eq!(
            header_value(head, "Message-ID").unwrap(),
            format!("<{id}@{DOMAIN}>")
        );
        assert!(header_value(head, "Date").is_some());
        assert!(header_value(head, "Bcc").is_none());
        let p = parts(msg);
        let html = &p["text/html"];
        let text = &p["text/plain"];
        let has_arabic = |s: &str| s.chars().any(|c| ('\u{0600}'..='\u{06FF}').contains(&c));
        match locale {
            "ar" => {
                assert!(html.contains(r#"<html dir="rtl" lang="ar">"#), "{file}");
                assert!(has_arabic(text), "{file}: Arabic text part is not Arabic");
            }
            "en" => {
                // (the text may still hold an Arabic customer name)
                assert!(html.contains(r#"<html lang="en">"#), "{file}");
                assert!(!html.contains(r#"dir="rtl""#), "{file}");
                assert!(text.contains("Example Shop"), "{file}");
            }
            other => panic!("locale {other}"),
        }
        seen.insert((s(alert, "rule").to_string(), locale.to_string()));
    }
    for rule in RULES {
        for locale in ["en", "ar"] {
            assert!(
                seen.contains(&(rule.to_string(), locale.to_string())),
                "no {locale} email for {rule}"
            );
        }
    }
    // Every email decision was written, and nothing else is in the folder.
    assert_eq!(files.len(), emailed.len());
    assert_eq!(files, o.emls.keys().cloned().collect::<BTreeSet<_>>());
    assert_eq!(
        o.others,
        ["alerts.jsonl", "rejects.jsonl", "sends.jsonl", "state"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn full_replay_rejects_34_lines_with_their_location_and_reason() {
    let o = full();
    let source: Vec<&str> = example_text().lines().collect();
    let rejects = jsonl(&o.rejects);
    assert_eq!(rejects.len(), 34);
    let mut last_line = 0;
    for r in &rejects {
        assert_eq!(s(r, "file"), EXAMPLE);
        let line = r["line"].as_u64().expect("line number") as usize;
        assert!(line > last_line, "rejects in file order");
        last_line = line;
        // `raw` is exactly that line of the file.
        assert_eq!(s(r, "raw"), source[line - 1], "line {line}");
        assert!(!s(r, "class").is_empty());
        assert!(s(r, "reason").len() > 8, "{r}");
        // The same record, re-parsed, gives the same verdict.
        let again = churnwatch::event::parse(source[line - 1].as_bytes()).unwrap_err();
        assert_eq!(s(r, "reason"), again.reason);
        assert_eq!(s(r, "class"), again.class);
    }
}

#[test]
fn full_replay_exports_every_customer_sorted_without_personal_data() {
    let o = full();
    let text = o.export.as_ref().unwrap();
    let rows = jsonl(text);
    assert!(rows.len() > 2000, "{}", rows.len());
    let ids: Vec<&str> = rows.iter().map(|r| s(r, "customer_id")).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "one line per customer, sorted by customer_id");
    // Matches the customers-by-stage total in the summary.
    let staged: usize = o
        .stdout
        .split("customers by stage")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .sum();
    assert_eq!(staged, rows.len());
    for (r, line) in rows.iter().zip(text.lines()) {
        let obj = r.as_object().unwrap();
        for k in ["customer_id", "stage", "churn_risk", "as_of"] {
            assert!(obj.contains_key(k), "no `{k}` in {line}");
        }
        for k in ["email", "name"] {
            assert!(!obj.contains_key(k), "`{k}` exported: {line}");
        }
        assert!(
            !line.contains('@'),
            "an address leaked into the export: {line}"
        );
        assert_eq!(s(r, "as_of"), UNTIL);
        match raw_number(line, "churn_risk") {
            Some(tok) => {
                assert!(decimals(tok) <= 4, "{tok}");
                let x: f64 = tok.parse().unwrap();
                assert!((0.0..=1.0).contains(&x));
                assert!(r["purchases"].as_u64().unwrap() > 0);
            }
            None => assert_eq!(s(r, "stage"), "prospect", "{line}"),
        }
    }
    // No profile name from the input shows up either.
    let names: BTreeSet<&str> = example_text()
        .lines()
        .filter_map(|l| l.split_once("\"name\":\"")?.1.split_once('"'))
        .map(|(n, _)| n)
        .filter(|n| n.len() > 5 && !n.contains('\\'))
        .collect();
    assert!(names.len() > 100);
    fn strings<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a str)>, key: &'a str) {
        match v {
            Value::String(s) => out.push((key, s)),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out, key)),
            Value::Object(o) => o.iter().for_each(|(k, x)| strings(x, out, k)),
            _ => {}
        }
    }
    let mut values = Vec::new();
    for r in &rows {
        strings(r, &mut values, "");
    }
    assert!(values.len() > rows.len());
    for (key, v) in values {
        assert!(!matches!(key, "email" | "name"), "`{key}` exported");
        assert!(!names.contains(v), "name {v:?} exported as `{key}`");
    }
}

#[test]
fn full_replay_forgets_erased_customers() {
    let o = full();
    let mut erased_at: BTreeMap<String, String> = BTreeMap::new();
    let mut last_type: BTreeMap<String, String> = BTreeMap::new();
    for l in example_text().lines() {
        let Ok(ev) = churnwatch::event::parse(l.as_bytes()) else {
            continue;
        };
        last_type.insert(ev.customer_id.to_string(), ev.kind.type_name().to_string());
        if ev.kind.type_name() == "customer_erased" {
            erased_at.insert(ev.customer_id.to_string(), ev.at.to_rfc3339());
        }
    }
    assert!(!erased_at.is_empty());
    let exported: BTreeSet<String> = jsonl(o.export.as_ref().unwrap())
        .iter()
        .map(|r| s(r, "customer_id").to_string())
        .collect();
    let alerts = jsonl(&o.alerts);
    for (c, at) in &erased_at {
        if last_type[c] == "customer_erased" {
            assert!(!exported.contains(c), "erased customer {c} exported");
        }
        for a in alerts.iter().filter(|a| s(a, "customer_id") == c) {
            assert!(
                s(a, "at") <= at.as_str(),
                "alert for {c} after erasure at {at}: {a}"
            );
        }
    }
}

#[test]
fn full_replay_twice_is_byte_identical() {
    // Start the second run first so that it overlaps with the shared one.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outbox");
    let export = dir.path().join("customers.jsonl");
    let child = spawn_replay(
        &out,
        &[Path::new(EXAMPLE)],
        &["--until", UNTIL],
        Some(&export),
    );
    let first = full();
    let second = finish_replay(child, &out, Some(&export));
    assert!(
        first.alerts == second.alerts,
        "alerts.jsonl differs between runs"
    );
    assert!(
        first.sends == second.sends,
        "sends.jsonl differs between runs"
    );
    assert!(
        first.rejects == second.rejects,
        "rejects.jsonl differs between runs"
    );
    assert!(
        first.export == second.export,
        "customer export differs between runs"
    );
    assert_eq!(
        first.emls.keys().collect::<Vec<_>>(),
        second.emls.keys().collect::<Vec<_>>(),
        "different .eml files"
    );
    for (name, bytes) in &first.emls {
        assert!(*bytes == second.emls[name], "{name} differs between runs");
    }
}

// ---------------------------------------------------------------------------------------
// smaller inputs

#[test]
fn batch_size_does_not_change_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = prefix(dir.path(), 8000);
    let until = ["--until", "2025-06-01T00:00:00Z"];
    let one = replay(&[&input], &[&until[..], &["--batch-size", "1"]].concat());
    let big = replay(
        &[&input],
        &[&until[..], &["--batch-size", "100000"]].concat(),
    );
    assert!(
        jsonl(&one.alerts).len() > 100,
        "prefix too small to mean anything"
    );
    assert!(
        one.alerts == big.alerts,
        "alerts.jsonl depends on the batch size"
    );
    assert!(
        one.sends == big.sends,
        "sends.jsonl depends on the batch size"
    );
    assert!(one.rejects == big.rejects);
    assert!(one.export == big.export, "export depends on the batch size");
    assert!(one.emls == big.emls, ".eml files depend on the batch size");
}

#[test]
fn a_second_replay_replaces_the_earlier_results_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outbox");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("old@x.eml"), "stale").unwrap();
    fs::write(out.join(".old@x.eml.tmp"), "half-written").unwrap();
    fs::write(out.join("notes.txt"), "keep me").unwrap();
    fs::write(out.join("alerts.jsonl"), "not from this run\n").unwrap();
    fs::create_dir_all(out.join("archive")).unwrap();
    fs::write(out.join("archive").join("kept.eml"), "mine").unwrap();

    let big = prefix(dir.path(), 4000);
    let first = replay_into(&out, &[&big], &["--until", "2025-06-01T00:00:00Z"], None);
    assert!(!first.emls.contains_key("old@x.eml"), "stale .eml survived");
    assert!(!out.join(".old@x.eml.tmp").exists());
    assert_eq!(
        fs::read_to_string(out.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        fs::read_to_string(out.join("archive").join("kept.eml")).unwrap(),
        "mine"
    );
    assert!(!first.alerts.contains("not from this run"));
    assert!(first.emls.len() > 20, "{}", first.emls.len());

    // A smaller second run leaves only its own emails.
    let small = prefix(dir.path(), 1000);
    let second = replay_into(&out, &[&small], &[], None);
    let sent: BTreeSet<String> = jsonl(&second.sends)
        .iter()
        .map(|x| s(x, "file").to_string())
        .collect();
    assert!(second.emls.len() < first.emls.len());
    assert_eq!(second.emls.keys().cloned().collect::<BTreeSet<_>>(), sent);
    assert!(second.others.contains("notes.txt") && second.others.contains("archive"));
    // and it equals a replay of the same input into a fresh folder
    let fresh = replay(&[&small], &[]);
    assert!(second.alerts == fresh.alerts);
    assert!(second.emls == fresh.emls);
}

#[test]
fn a_missing_events_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-events.jsonl");
    for events in [
        vec![missing.clone()],
        vec![manifest_dir().join(EXAMPLE), missing.clone()],
    ] {
        let o = churnwatch()
            .arg("replay")
            .arg("--events")
            .args(&events)
            .arg("--outbox")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "exit 0 with a missing input");
        assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
        assert!(stderr.to_lowercase().contains("no such file"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn replay_needs_events_and_a_valid_until() {
    let o = churnwatch().arg("replay").output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--events"));
    let dir = tempfile::tempdir().unwrap();
    let o = churnwatch()
        .args([
            "replay",
            "--events",
            EXAMPLE,
            "--until",
            "next tuesday",
            "--outbox",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("next tuesday"));
    assert!(
        !dir.path().join("alerts.jsonl").exists(),
        "bad arguments must not touch the folder"
    );
}

/// README "Commands": replay "writes into the output folder, whose earlier replay results it
/// replaces" — a run that cannot even open its input has no results to replace them with.
#[test]
fn a_failed_replay_keeps_the_earlier_results() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outbox");
    let input = prefix(dir.path(), 3000);
    let good = replay_into(&out, &[&input], &["--until", "2025-06-01T00:00:00Z"], None);
    assert!(!good.emls.is_empty());
    let o = churnwatch()
        .arg("replay")
        .arg("--events")
        .arg(dir.path().join("typo.jsonl"))
        .arg("--outbox")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let (alerts, _, _, emls, _) = read_outbox(&out);
    assert!(
        alerts == good.alerts,
        "alerts.jsonl of the earlier run was replaced ({} bytes now, {} before)",
        alerts.len(),
        good.alerts.len()
    );
    assert_eq!(
        emls.len(),
        good.emls.len(),
        "earlier .eml files were deleted"
    );
}

#[test]
fn messy_input_lines_are_rejected_one_by_one_and_never_stop_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("messy.jsonl");
    let mut bytes = Vec::new();
    // 1: a valid profile
    bytes.extend_from_slice(br#"{"event_id":"p1","type":"customer_profile","customer_id":"c1","occurred_at":"2025-01-01T00:00:00Z","email":"c1@example.com","marketing_consent":true}"#);
    bytes.extend_from_slice(b"\n");
    // 2: blank (skipped, still counted as a line)
    bytes.extend_from_slice(b"   \n");
    // 3: invalid UTF-8
    bytes.extend_from_slice(b"{\"event_id\":\"x\xff\xfe\"}\n");
    // 4: a valid purchase with a CRLF ending
    bytes.extend_from_slice(br#"{"event_id":"o1","type":"purchase","customer_id":"c1","occurred_at":"2025-01-02T00:00:00Z","order_id":"o1","amount":"5","currency":"USD"}"#);
    bytes.extend_from_slice(b"\r\n");
    // 5: JSON, not an object
    bytes.extend_from_slice(b"[1,2]\n");
    // 6: truncated, and no final newline
    bytes.extend_from_slice(br#"{"event_id":"o2","type":"purchase""#);
    fs::write(&input, &bytes).unwrap();

    let o = replay(&[&input], &[]);
    assert!(o.stdout.contains("replayed 5 records"), "{}", o.stdout);
    assert!(o.stdout.contains("rejected lines: 3"), "{}", o.stdout);
    let rejects = jsonl(&o.rejects);
    let lines: Vec<u64> = rejects
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 5, 6]);
    assert!(
        rejects.iter().all(|r| s(r, "class") == "invalid_json"),
        "{rejects:?}"
    );
    assert_eq!(s(&rejects[1], "raw"), "[1,2]");
    assert_eq!(
        s(&rejects[2], "raw"),
        r#"{"event_id":"o2","type":"purchase""#
    );
    assert!(s(&rejects[0], "raw").starts_with("{\"event_id\":\"x"));
    assert!(s(&rejects[0], "reason").contains("UTF-8"));
    for r in &rejects {
        assert_eq!(s(r, "file"), input.display().to_string());
    }
    // The valid purchase counted (the customer is `new` with one purchase).
    let export = jsonl(o.export.as_ref().unwrap());
    assert_eq!(export.len(), 1);
    assert_eq!(s(&export[0], "stage"), "new");
    assert_eq!(export[0]["purchases"], 1);
}

// ---------------------------------------------------------------------------------------
// simulate: the same decisions as replay, nothing written

/// `simulate` over the example with extra arguments, run from an empty folder (paths
/// made absolute) so that anything it wrote would show; returns stdout.
fn simulate(extra: &[&str], config: Option<&Path>) -> String {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = churnwatch();
    cmd.current_dir(cwd.path())
        .arg("simulate")
        .arg("--events")
        .arg(manifest_dir().join(EXAMPLE))
        .args(["--until", UNTIL])
        .arg("--config")
        .arg(config.map_or_else(
            || manifest_dir().join("config/churnwatch.toml"),
            Path::to_path_buf,
        ))
        .args(extra)
        .env(
            "CHURNWATCH__TEMPLATES__DIR",
            manifest_dir().join("templates"),
        );
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "simulate failed:\n{stdout}\n{stderr}");
    // Not a terminal: no progress line, no noise.
    assert!(stderr.trim().is_empty(), "{stderr}");
    let left: Vec<_> = fs::read_dir(cwd.path()).unwrap().collect();
    assert!(left.is_empty(), "simulate wrote {left:?}");
    stdout
}

/// Per rule: (alerts, decisions by label, emails written) of a replay.
fn replay_by_rule(o: &Output) -> BTreeMap<String, (u64, BTreeMap<String, u64>, u64)> {
    let mut by: BTreeMap<String, (u64, BTreeMap<String, u64>, u64)> = BTreeMap::new();
    for a in jsonl(&o.alerts) {
        let e = by.entry(s(&a, "rule").to_string()).or_default();
        e.0 += 1;
        *e.1.entry(a["delivery"]["decision"].as_str().unwrap().to_string())
            .or_default() += 1;
        if let Some(id) = a["delivery"]["message_id"].as_str() {
            let name = format!("{}.eml", id.trim_matches(['<', '>']));
            if o.emls.contains_key(&name) {
                e.2 += 1;
            }
        }
    }
    by
}

fn simulated_by_rule(report: &Value) -> BTreeMap<String, (u64, BTreeMap<String, u64>, u64)> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["alerts"].as_u64() > Some(0))
        .map(|r| {
            let decisions = r["decisions"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect();
            (
                s(r, "rule").to_string(),
                (
                    r["alerts"].as_u64().unwrap(),
                    decisions,
                    r["emails"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn simulate_reports_exactly_what_replay_sends_and_writes_nothing() {
    let o = full();
    let report: Value = serde_json::from_str(&simulate(&["--format", "json"], None)).unwrap();
    let want = replay_by_rule(o);
    assert_eq!(want.len(), RULES.len(), "every rule fires in the example");
    assert!(
        want.values().all(|(_, _, emails)| *emails > 0),
        "file names did not match: {want:?}"
    );
    assert_eq!(simulated_by_rule(&report), want);
    assert_eq!(report["emails"].as_u64(), Some(o.emls.len() as u64));
    assert_eq!(report["records"].as_u64(), Some(45_815));
    let rejects: u64 = report["rejects"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(rejects, jsonl(&o.rejects).len() as u64);
    // The conversion line of replay's summary, from simulate's numbers.
    let w = &report["winback"];
    let line = format!(
        "win-back conversion: emailed {}/{}",
        w["emailed_converted"], w["emailed"]
    );
    assert!(o.stdout.contains(&line), "{line} not in\n{}", o.stdout);
    for (stage, n) in report["stages"].as_object().unwrap() {
        let row = o
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage.as_str()))
            .unwrap_or_else(|| panic!("no {stage} in the summary"));
        assert!(row.ends_with(&format!(" {n}")), "{row} vs {n}");
    }
    let crr = report["crr_percent"].as_f64().expect("a CRR over 90 days");
    assert!((0.0..=100.0).contains(&crr), "{crr}");
    // Samples carry the numbers that fired them.
    let winback = &report["rules"][0];
    assert_eq!(s(winback, "rule"), "winback");
    let sample = &winback["samples"][0];
    assert!(sample["inputs"]["threshold_days"].is_number(), "{sample}");
    assert!(
        sample["inputs"]["days_since_last_purchase"].is_number(),
        "{sample}"
    );
}

#[test]
fn simulate_compare_shows_what_a_threshold_change_would_do() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.toml");
    fs::write(&b, "[rules.winback]\nmultiplier = 2.0\n").unwrap();
    let replay_b = {
        let mut c = churnwatch();
        let out = dir.path().join("outbox-b");
        c.arg("--config")
            .arg(&b)
            .arg("replay")
            .arg("--events")
            .arg(EXAMPLE)
            .args(["--until", UNTIL])
            .arg("--outbox")
            .arg(&out);
        let st = c.output().unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let (alerts, sends, rejects, emls, others) = read_outbox(&out);
        Output {
            status: st.status,
            stdout: String::from_utf8_lossy(&st.stdout).into_owned(),
            stderr: String::new(),
            alerts,
            sends,
            rejects,
            export: None,
            emls,
            others,
        }
    };
    let (a, bb) = (replay_by_rule(full()), replay_by_rule(&replay_b));
    let json: Value = serde_json::from_str(&simulate(
        &["--format", "json", "--compare", b.to_str().unwrap()],
        None,
    ))
    .unwrap();
    assert_eq!(simulated_by_rule(&json["a"]), a);
    assert_eq!(simulated_by_rule(&json["b"]), bb);
    let changes = json["changes"].as_object().unwrap();
    let alerts_change = bb["winback"].0 as f64 - a["winback"].0 as f64;
    let emails_change = bb["winback"].2 as f64 - a["winback"].2 as f64;
    assert!(
        alerts_change > 0.0,
        "a lower multiplier fires more win-backs"
    );
    assert_eq!(changes["winback alerts"].as_f64(), Some(alerts_change));
    assert_eq!(changes["winback emails"].as_f64(), Some(emails_change));
    let total = replay_b.emls.len() as f64 - full().emls.len() as f64;
    assert_eq!(changes["emails in all"].as_f64(), Some(total));
    // Unchanged figures are not listed as changes.
    assert!(!changes.contains_key("customers prospect"), "{changes:?}");

    let table = simulate(&["--compare", b.to_str().unwrap()], None);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("winback alerts"))
        .unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[2..],
        [
            a["winback"].0.to_string(),
            bb["winback"].0.to_string(),
            format!("+{alerts_change}")
        ],
        "{table}"
    );
    assert!(table.contains(&b.display().to_string()), "{table}");
}

#[test]
fn preview_renders_a_template_for_the_sample_or_a_stored_customer() {
    let o = churnwatch()
        .args(["preview", "--template", "winback_offer", "--locale", "ar"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("Locale: ar"), "{text}");
    assert!(text.contains("COMEBACK10"), "the step's offer code: {text}");
    assert!(text.contains("Sample <Customer> & Co"), "{text}");

    // A real customer from a replay's store: their name, address and numbers.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outbox");
    replay_into(&out, &[Path::new(EXAMPLE)], &["--until", UNTIL], None);
    let export = full().export.as_deref().unwrap();
    let id = jsonl(export)
        .iter()
        .find(|c| c["purchases"].as_u64() > Some(3) && s(c, "stage") == "loyal")
        .map(|c| s(c, "customer_id").to_string())
        .unwrap();
    let html = dir.path().join("preview.html");
    let o = churnwatch()
        .args([
            "preview",
            "--template",
            "thank_you_milestone",
            "--customer",
            &id,
        ])
        .arg("--state")
        .arg(out.join("state"))
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let profile = example_text()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["customer_id"].as_str() == Some(id.as_str())
                && v["type"].as_str() == Some("customer_profile")
                && v["email"].is_string()
        })
        .expect("a profile with an address");
    let email = profile["email"].as_str().unwrap();
    assert!(text.contains(&format!("To: {email}")), "{text}");
    assert!(!text.contains("Sample"), "{text}");
    let html = fs::read_to_string(&html).unwrap();
    assert!(html.contains("<html") || html.contains("<p"), "{html}");

    let o = churnwatch()
        .args([
            "preview",
            "--template",
            "winback_gentle",
            "--customer",
            "nobody",
        ])
        .arg("--state")
        .arg(out.join("state"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let o = churnwatch()
        .args(["preview", "--template", "no_such_template"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no template `no_such_template`"));
}
