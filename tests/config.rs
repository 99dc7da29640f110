//! README "Configuration" configuration: embedded defaults, then a file, then `CHURNWATCH__…`
//! environment variables; unknown keys and invalid thresholds are errors that name the key.

use std::io::Write;
use std::process::Command;

use churnwatch::config::{load_with_env, Config, ConfigError};
use churnwatch::engine::clock::DAY;
use churnwatch::engine::rule::Rule;
use churnwatch::engine::settings::WinbackMode;

// ---------------------------------------------------------------------------------------
// helpers

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A temporary TOML file holding `text`.
fn toml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("churnwatch-test-")
        .suffix(".toml")
        .tempfile()
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

fn load_text(text: &str) -> Result<Config, ConfigError> {
    let f = toml(text);
    load_with_env(Some(f.path()), no_env())
}

fn load_ok(text: &str) -> Config {
    match load_text(text) {
        Ok(c) => c,
        Err(e) => panic!("expected config to load, got:\n{e}\n--- config ---\n{text}"),
    }
}

/// Loads `text`, expects an error and returns its message (and the path it was loaded from).
fn load_err(text: &str) -> (String, String) {
    let f = toml(text);
    let path = f.path().display().to_string();
    match load_with_env(Some(f.path()), no_env()) {
        Ok(_) => panic!("expected an error for config:\n{text}"),
        Err(e) => (e.to_string(), path),
    }
}

fn defaults() -> Config {
    load_with_env(None, no_env()).expect("defaults load")
}

fn defaults_with_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_with_env(None, env(pairs))
}

fn holdout_rules(c: &Config) -> Vec<&'static str> {
    Rule::ALL
        .into_iter()
        .filter(|r| c.engine.delivery.holdout_rules[r.index()])
        .map(Rule::name)
        .collect()
}

// ---------------------------------------------------------------------------------------
// defaults

#[test]
fn defaults_load_and_validate() {
    let c = defaults();
    let s = &c.engine;
    assert_eq!(c.transport, "file");
    assert_eq!(s.allowed_lateness, DAY);
    assert_eq!(s.dedup_window, 7 * DAY);
    assert!(s.winback.enabled);
    match s.winback.mode {
        WinbackMode::Adaptive {
            multiplier,
            min,
            max,
        } => {
            assert_eq!(multiplier, 3.0);
            assert_eq!(min, 30 * DAY);
            assert_eq!(max, 180 * DAY);
        }
        ref other => panic!("default winback mode is adaptive, got {other:?}"),
    }
    let steps: Vec<(u32, &str, &str)> = s
        .winback
        .steps
        .iter()
        .map(|st| (st.after / DAY, st.template.as_str(), st.offer_code.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            (0, "winback_gentle", ""),
            (14, "winback_offer", "COMEBACK10"),
            (30, "winback_last", "")
        ]
    );
    assert_eq!(s.frequency_drop.recent_buckets, 3);
    assert_eq!(s.frequency_drop.baseline_buckets, 12);
    assert_eq!(s.support_recovery.sla, 72 * 3600);
    assert_eq!(s.thank_you.milestones, [5, 10, 25, 50]);
    assert_eq!(s.delivery.holdout_percent, 10.0);
    assert_eq!(holdout_rules(&c), ["winback", "frequency_drop"]);
    assert_eq!(s.delivery.max_emails, 2);
    assert_eq!(s.delivery.window_days, 30);
    assert_eq!(c.mail.default_locale, "en");
    assert_eq!(c.mail.message_id_domain, "churnwatch.shop.example.com");
    assert_eq!(
        s.template_names(),
        [
            "frequency_drop",
            "support_apology",
            "thank_you_anniversary",
            "thank_you_loyal",
            "thank_you_milestone",
            "welcome_back",
            "winback_gentle",
            "winback_last",
            "winback_offer"
        ]
    );
}

#[test]
fn the_embedded_defaults_equal_the_shipped_file() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/churnwatch.toml"
    ))
    .unwrap();
    assert_eq!(churnwatch::config::DEFAULT_TOML, shipped);
    // An empty operator file changes nothing.
    let c = load_ok("");
    assert_eq!(
        format!("{:?}", c.engine),
        format!("{:?}", defaults().engine)
    );
}

#[test]
fn a_file_overrides_only_what_it_sets() {
    let c = load_ok(
        r#"
clock = "event"
[rules.winback]
mode = "fixed"
inactive_after = "45d"
[delivery]
max_emails = 3
"#,
    );
    assert_eq!(c.clock, churnwatch::config::ClockMode::Event);
    match c.engine.winback.mode {
        WinbackMode::Fixed { inactive_after } => assert_eq!(inactive_after, 45 * DAY),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(c.engine.delivery.max_emails, 3);
    // untouched keys keep their defaults
    assert_eq!(c.engine.delivery.window_days, 30);
    assert_eq!(c.engine.winback.steps.len(), 3);
    assert!(c.path.is_some());
}

// ---------------------------------------------------------------------------------------
// unknown keys and bad values name the key

#[test]
fn unknown_key_in_a_rule_is_named_with_its_path() {
    let (msg, path) = load_err("[rules.winback]\nfoo = 1\n");
    assert!(msg.contains("foo"), "{msg}");
    assert!(
        msg.contains("rules.winback"),
        "error does not give the key's table: {msg}"
    );
    assert!(
        msg.contains(&path),
        "error does not name the file {path}: {msg}"
    );
}

#[test]
fn unknown_top_level_key_is_named() {
    let (msg, _) = load_err("colck = \"event\"\n");
    assert!(msg.contains("colck"), "{msg}");
}

#[test]
fn misspelled_section_is_named() {
    let (msg, path) = load_err("[rules.winbak]\nenabled = false\n");
    assert!(msg.contains("winbak"), "{msg}");
    assert!(msg.contains(&path), "{msg}");
    let (msg, _) = load_err("[delivry]\nmax_emails = 1\n");
    assert!(msg.contains("delivry"), "{msg}");
}

#[test]
fn unknown_key_inside_a_winback_step_is_named() {
    let (msg, _) = load_err(
        r#"
[rules.winback]
steps = [ { after = "0d", template = "winback_gentle", ofer_code = "X" } ]
"#,
    );
    assert!(msg.contains("ofer_code"), "{msg}");
    assert!(msg.contains("steps"), "{msg}");
}

#[test]
fn bad_duration_names_the_key_and_value() {
    let (msg, _) = load_err("[rules.winback]\ninactive_after = \"sixty days\"\n");
    assert!(msg.contains("inactive_after"), "{msg}");
    assert!(msg.contains("rules.winback"), "{msg}");
    assert!(msg.contains("sixty days"), "{msg}");

    let (msg, _) = load_err("[engine]\ndedup_window = 7\n");
    assert!(msg.contains("dedup_window"), "{msg}");
}

#[test]
fn wrong_type_names_the_key() {
    let (msg, _) = load_err("[delivery]\nmax_emails = \"two\"\n");
    assert!(msg.contains("delivery.max_emails"), "{msg}");
    let (msg, _) = load_err("[rules.thank_you]\nenabled = \"maybe\"\n");
    assert!(msg.contains("rules.thank_you.enabled"), "{msg}");
}

#[test]
fn broken_toml_names_the_file() {
    let (msg, path) = load_err("[rules.winback\nenabled = true\n");
    assert!(msg.contains(&path), "{msg}");
}

// ---------------------------------------------------------------------------------------
// environment

#[test]
fn env_overrides_a_float() {
    let c = defaults_with_env(&[("CHURNWATCH__RULES__WINBACK__MULTIPLIER", "2.5")]).unwrap();
    match c.engine.winback.mode {
        WinbackMode::Adaptive { multiplier, .. } => assert_eq!(multiplier, 2.5),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn env_overrides_the_file() {
    let f = toml("[rules.winback]\nmultiplier = 4.0\n[delivery]\nmax_emails = 3\n");
    let c = load_with_env(
        Some(f.path()),
        env(&[("CHURNWATCH__RULES__WINBACK__MULTIPLIER", "2.5")]),
    )
    .unwrap();
    match c.engine.winback.mode {
        WinbackMode::Adaptive { multiplier, .. } => assert_eq!(multiplier, 2.5),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(
        c.engine.delivery.max_emails, 3,
        "the file's other keys still apply"
    );
}

#[test]
fn env_sets_durations_strings_and_booleans() {
    let c = defaults_with_env(&[
        ("CHURNWATCH__RULES__SUPPORT_RECOVERY__SLA", "48h"),
        ("CHURNWATCH__ENGINE__ID_SECRET", "s3cret"),
        ("CHURNWATCH__RULES__THANK_YOU__ENABLED", "false"),
        ("CHURNWATCH__SMTP__MESSAGE_ID_DOMAIN", "mail.example.org"),
    ])
    .unwrap();
    assert_eq!(c.engine.support_recovery.sla, 48 * 3600);
    assert_eq!(id_with(&c, "x"), id_with_secret(b"s3cret", "x"));
    assert!(!c.engine.thank_you.enabled);
    assert_eq!(c.mail.message_id_domain, "mail.example.org");
}

/// The alert id the config's key gives for a fixed alert.
fn id_with(c: &churnwatch::Config, customer: &str) -> String {
    churnwatch::alert::alert_id(
        &c.engine.id_key,
        customer,
        churnwatch::engine::rule::Rule::Winback,
        "e",
        0,
    )
}

/// The alert id a given secret gives for the same alert.
fn id_with_secret(secret: &[u8], customer: &str) -> String {
    let key = churnwatch::alert::IdKey::new(secret);
    churnwatch::alert::alert_id(
        &key,
        customer,
        churnwatch::engine::rule::Rule::Winback,
        "e",
        0,
    )
}

/// String keys set from the environment must arrive verbatim: a secret or salt that
/// happens to look like a number must not be re-formatted (that silently changes every
/// alert id / the holdout groups, and a password like "0123" would stop working).
#[test]
fn env_numeric_looking_strings_stay_verbatim() {
    for v in ["0012345", "1e3", "1.50", "+5", "12345678901234567890"] {
        let c = defaults_with_env(&[
            ("CHURNWATCH__ENGINE__ID_SECRET", v),
            ("CHURNWATCH__DELIVERY__HOLDOUT_SALT", v),
        ])
        .unwrap();
        assert_eq!(
            id_with(&c, "x"),
            id_with_secret(v.as_bytes(), "x"),
            "engine.id_secret"
        );
        assert_eq!(c.engine.delivery.holdout_salt, v, "delivery.holdout_salt");
    }
}

#[test]
fn env_list_holdout_rules() {
    let c = defaults_with_env(&[("CHURNWATCH__DELIVERY__HOLDOUT_RULES", "winback")]).unwrap();
    assert_eq!(holdout_rules(&c), ["winback"]);
    let c = defaults_with_env(&[(
        "CHURNWATCH__DELIVERY__HOLDOUT_RULES",
        "support_recovery,thank_you",
    )])
    .unwrap();
    assert_eq!(holdout_rules(&c), ["support_recovery", "thank_you"]);
    let e =
        defaults_with_env(&[("CHURNWATCH__DELIVERY__HOLDOUT_RULES", "winback,nope")]).unwrap_err();
    assert!(e.to_string().contains("delivery.holdout_rules"), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn env_list_milestones() {
    let c = defaults_with_env(&[("CHURNWATCH__RULES__THANK_YOU__MILESTONES", "3,7")]).unwrap();
    assert_eq!(c.engine.thank_you.milestones, [3, 7]);
}

#[test]
fn env_unknown_key_is_named() {
    let e = defaults_with_env(&[("CHURNWATCH__RULES__WINBACK__MULTIPLYER", "2")]).unwrap_err();
    assert!(e.to_string().contains("multiplyer"), "{e}");
}

#[test]
fn env_bad_value_is_refused() {
    let e = defaults_with_env(&[("CHURNWATCH__DELIVERY__MAX_EMAILS", "0")]).unwrap_err();
    assert!(e.to_string().contains("delivery.max_emails"), "{e}");
    let e = defaults_with_env(&[("CHURNWATCH__RULES__WINBACK__MIN", "a while")]).unwrap_err();
    assert!(e.to_string().contains("rules.winback.min"), "{e}");
}

#[test]
fn other_environment_variables_are_ignored() {
    let c = load_with_env(
        None,
        env(&[
            ("CHURNWATCH_LOG", "debug"),
            ("PATH", "/usr/bin"),
            ("RULES__WINBACK__MULTIPLIER", "9"),
        ]),
    )
    .unwrap();
    match c.engine.winback.mode {
        WinbackMode::Adaptive { multiplier, .. } => assert_eq!(multiplier, 3.0),
        ref other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// lists from a file replace the defaults

#[test]
fn a_shorter_step_list_replaces_the_default_steps() {
    let c = load_ok(
        r#"
[rules.winback]
steps = [ { after = "0d", template = "winback_last" } ]
"#,
    );
    let names: Vec<&str> = c
        .engine
        .winback
        .steps
        .iter()
        .map(|s| s.template.as_str())
        .collect();
    assert_eq!(names, ["winback_last"]);
}

#[test]
fn a_shorter_milestone_list_replaces_the_default() {
    let c = load_ok("[rules.thank_you]\nmilestones = [3]\n");
    assert_eq!(c.engine.thank_you.milestones, [3]);
}

#[test]
fn an_empty_holdout_rule_list_turns_holdout_off() {
    let c = load_ok("[delivery]\nholdout_rules = []\n");
    assert_eq!(holdout_rules(&c), Vec::<&str>::new());
}

// ---------------------------------------------------------------------------------------
// validation: each problem names its key

fn assert_invalid(text: &str, key: &str) -> String {
    let (msg, path) = load_err(text);
    let line = msg
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no line names `{key}`:\n{msg}"));
    assert!(
        line.contains(&path),
        "line does not name the file {path}: {line}"
    );
    msg
}

#[test]
fn winback_steps_must_be_increasing() {
    let msg = assert_invalid(
        r#"
[rules.winback]
steps = [
  { after = "0d", template = "winback_gentle" },
  { after = "30d", template = "winback_offer" },
  { after = "14d", template = "winback_last" },
]
"#,
        "rules.winback.steps[2].after",
    );
    assert!(msg.contains("14d") && msg.contains("30d"), "{msg}");
    assert_invalid(
        r#"
[rules.winback]
steps = [
  { after = "7d", template = "winback_gentle" },
  { after = "7d", template = "winback_offer" },
]
"#,
        "rules.winback.steps[1].after",
    );
}

#[test]
fn winback_needs_at_least_one_step() {
    assert_invalid("[rules.winback]\nsteps = []\n", "rules.winback.steps");
}

#[test]
fn max_emails_zero_is_refused() {
    assert_invalid("[delivery]\nmax_emails = 0\n", "delivery.max_emails");
    assert_invalid("[delivery]\nmax_emails = 9\n", "delivery.max_emails");
    // out of u8 range is still named
    let (msg, _) = load_err("[delivery]\nmax_emails = 300\n");
    assert!(msg.contains("delivery.max_emails"), "{msg}");
}

#[test]
fn holdout_percent_over_100_is_refused() {
    let msg = assert_invalid(
        "[delivery]\nholdout_percent = 150\n",
        "delivery.holdout_percent",
    );
    assert!(msg.contains("150"), "{msg}");
    assert_invalid(
        "[delivery]\nholdout_percent = -1.0\n",
        "delivery.holdout_percent",
    );
    // the edges are allowed
    assert_eq!(
        load_ok("[delivery]\nholdout_percent = 0\n")
            .engine
            .delivery
            .holdout_percent,
        0.0
    );
    assert_eq!(
        load_ok("[delivery]\nholdout_percent = 100\n")
            .engine
            .delivery
            .holdout_percent,
        100.0
    );
}

#[test]
fn frequency_drop_windows_must_be_multiples_of_30_days() {
    let msg = assert_invalid(
        "[rules.frequency_drop]\nrecent_window = \"45d\"\n",
        "rules.frequency_drop.recent_window",
    );
    assert!(msg.contains("30d"), "{msg}");
    assert_invalid(
        "[rules.frequency_drop]\nbaseline_window = \"365d\"\n",
        "rules.frequency_drop.baseline_window",
    );
    assert_invalid(
        "[rules.frequency_drop]\nrecent_window = \"0d\"\n",
        "rules.frequency_drop.recent_window",
    );
    // too long together
    assert_invalid(
        "[rules.frequency_drop]\nrecent_window = \"180d\"\nbaseline_window = \"360d\"\n",
        "rules.frequency_drop",
    );
    let c =
        load_ok("[rules.frequency_drop]\nrecent_window = \"60d\"\nbaseline_window = \"180d\"\n");
    assert_eq!(c.engine.frequency_drop.recent_buckets, 2);
    assert_eq!(c.engine.frequency_drop.baseline_buckets, 6);
}

#[test]
fn adaptive_min_above_max_is_refused() {
    let msg = assert_invalid(
        "[rules.winback]\nmode = \"adaptive\"\nmin = \"200d\"\nmax = \"100d\"\n",
        "rules.winback.min",
    );
    assert!(msg.contains("rules.winback.max"), "{msg}");
}

#[test]
fn unknown_holdout_rule_is_refused() {
    let msg = assert_invalid(
        "[delivery]\nholdout_rules = [\"winback\", \"win_back\"]\n",
        "delivery.holdout_rules",
    );
    assert!(msg.contains("win_back"), "{msg}");
}

#[test]
fn dropout_outside_0_1_is_refused() {
    let msg = assert_invalid("[risk]\ndropout = 1.5\n", "risk.dropout");
    assert!(msg.contains("1.5"), "{msg}");
    assert_invalid("[risk]\ndropout = 0.0\n", "risk.dropout");
}

#[test]
fn other_invalid_values_are_named() {
    assert_invalid("clock = \"sundial\"\n", "clock");
    assert_invalid("[delivery]\ntransport = \"pigeon\"\n", "delivery.transport");
    assert_invalid(
        "[rules.winback]\nmode = \"sometimes\"\n",
        "rules.winback.mode",
    );
    assert_invalid(
        "[rules.support_recovery]\nmax_score = 6\n",
        "rules.support_recovery.max_score",
    );
    assert_invalid(
        "[rules.thank_you]\nmilestones = [10, 5]\n",
        "rules.thank_you.milestones",
    );
    assert_invalid(
        "[rules.welcome_back]\ntemplate = \"../etc/passwd\"\n",
        "rules.welcome_back.template",
    );
    assert_invalid(
        "[smtp]\nmessage_id_domain = \"bad domain>\"\n",
        "smtp.message_id_domain",
    );
    assert_invalid("[engine]\nid_secret = \"\"\n", "engine.id_secret");
    assert_invalid("[delivery]\nwindow = \"36h\"\n", "delivery.window");
    assert_invalid(
        "[kafka]\nmax_buffered_records = 0\n",
        "kafka.max_buffered_records",
    );
}

#[test]
fn several_problems_are_reported_together_one_per_line() {
    let (msg, path) = load_err(
        r#"
[risk]
dropout = 1.5
[delivery]
max_emails = 0
holdout_percent = 150
holdout_rules = ["nobody"]
[rules.frequency_drop]
recent_window = "45d"
"#,
    );
    let lines: Vec<&str> = msg.lines().collect();
    for key in [
        "risk.dropout",
        "delivery.max_emails",
        "delivery.holdout_percent",
        "delivery.holdout_rules",
        "rules.frequency_drop.recent_window",
    ] {
        let n = lines.iter().filter(|l| l.contains(key)).count();
        assert_eq!(n, 1, "`{key}` should be on exactly one line:\n{msg}");
    }
    assert_eq!(lines.len(), 5, "one line per problem:\n{msg}");
    assert!(lines.iter().all(|l| l.contains(&path)), "{msg}");
}

// ---------------------------------------------------------------------------------------
// explicit path

#[test]
fn a_missing_explicit_config_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = load_with_env(Some(&missing), no_env()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// `churnwatch check`

fn churnwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnwatch"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    // The tests decide the config; nothing from the caller's environment leaks in.
    for (k, _) in std::env::vars() {
        if k.starts_with("CHURNWATCH") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_passes_on_the_defaults() {
    let out = churnwatch().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    let folders = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert!(
        stdout.contains(&format!("{folders} templates OK")),
        "{stdout}"
    );

    // and with the shipped file given explicitly
    let out = churnwatch()
        .args(["check", "--config", "config/churnwatch.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_fails_with_a_message_on_a_broken_config() {
    let f = toml("[delivery]\nholdout_percent = 150\nmax_emails = 0\n");
    let out = churnwatch()
        .arg("check")
        .arg("--config")
        .arg(f.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted a broken config");
    assert!(stderr.contains("delivery.holdout_percent"), "{stderr}");
    assert!(stderr.contains("delivery.max_emails"), "{stderr}");
    assert!(stderr.contains(&f.path().display().to_string()), "{stderr}");
}

#[test]
fn check_fails_on_an_unknown_key_and_on_a_missing_file() {
    let f = toml("[rules.winback]\nfoo = 1\n");
    let out = churnwatch()
        .arg("check")
        .arg("--config")
        .arg(f.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("foo"));

    let out = churnwatch()
        .args(["check", "--config", "/nonexistent/churnwatch.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/churnwatch.toml"));
}

#[test]
fn check_honours_the_environment() {
    let out = churnwatch()
        .arg("check")
        .env("CHURNWATCH__RISK__DROPOUT", "1.5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("risk.dropout"));

    let f = toml("[delivery]\nmax_emails = 0\n");
    let out = churnwatch()
        .arg("check")
        .env("CHURNWATCH_CONFIG", f.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "CHURNWATCH_CONFIG was not read");
    assert!(String::from_utf8_lossy(&out.stderr).contains("delivery.max_emails"));
}

#[test]
fn check_fails_when_a_template_the_config_uses_is_missing() {
    let f = toml("[rules.welcome_back]\ntemplate = \"welcome_home\"\n");
    let out = churnwatch()
        .arg("check")
        .arg("--config")
        .arg(f.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("welcome_home"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// [kafka]

#[test]
fn kafka_defaults_are_the_spec_names() {
    let k = defaults().kafka;
    assert_eq!(k.group_id, "churnwatch");
    assert_eq!(k.topics, vec!["shop.purchases", "shop.support"]);
    assert_eq!(k.dlq_topic, "churnwatch.dlq");
    assert_eq!(k.alerts_topic, "churnwatch.alerts");
    assert!(k.client.is_empty());
}

#[test]
fn kafka_client_tables_flatten_to_dotted_librdkafka_properties() {
    let c = load_ok(
        r#"
[kafka]
topics = ["a", "b"]
[kafka.client]
security.protocol = "SASL_SSL"
"ssl.ca.location" = "/etc/ca.pem"
socket.keepalive.enable = true
[kafka.consumer]
fetch.min.bytes = 1024
"#,
    );
    let mut client = c.kafka.client.clone();
    client.sort();
    assert_eq!(
        client,
        vec![
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("socket.keepalive.enable".to_string(), "true".to_string()),
            ("ssl.ca.location".to_string(), "/etc/ca.pem".to_string()),
        ]
    );
    assert_eq!(
        c.kafka.consumer,
        vec![("fetch.min.bytes".to_string(), "1024".to_string())]
    );
    assert_eq!(c.kafka.topics, vec!["a", "b"]);
}

#[test]
fn kafka_secrets_and_topics_come_from_the_environment() {
    let c = defaults_with_env(&[
        ("CHURNWATCH__KAFKA__CLIENT__SASL__PASSWORD", "s3cr3t"),
        ("CHURNWATCH__KAFKA__TOPICS", "orders, tickets"),
        ("CHURNWATCH__KAFKA__MAX_TASK_IDLE", "250ms"),
    ])
    .expect("valid");
    // Kept as a secret (no Debug text shows it), set on both clients.
    assert!(!c.kafka.client.iter().any(|(k, _)| k == "sasl.password"));
    assert!(!format!("{:?}", c.kafka).contains("s3cr3t"));
    for cfg in [
        churnwatch::source::kafka::consumer_config(&c.kafka),
        churnwatch::source::kafka::producer_config(&c.kafka),
    ] {
        assert_eq!(cfg.get("sasl.password"), Some("s3cr3t"));
        assert!(!churnwatch::source::kafka::describe(&cfg).contains("s3cr3t"));
    }
    assert_eq!(c.kafka.topics, vec!["orders", "tickets"]);
    assert_eq!(c.kafka.max_task_idle, std::time::Duration::from_millis(250));
}

#[test]
fn kafka_topic_mistakes_are_errors_naming_the_key() {
    let (msg, _) = load_err("[kafka]\ndlq_topic = \"shop.purchases\"\n");
    assert!(msg.contains("kafka.dlq_topic"), "{msg}");
    let (msg, _) = load_err("[kafka]\ntopics = [\"a\", \"a\"]\n");
    assert!(msg.contains("listed twice"), "{msg}");
    let (msg, _) = load_err("[kafka]\ntopics = []\n");
    assert!(msg.contains("kafka.topics"), "{msg}");
    let (msg, _) = load_err("[kafka.client]\n\"group.id\" = \"x\"\n");
    assert!(msg.contains("group.id"), "{msg}");
    let (msg, _) = load_err("[kafka]\nbootstrap = \"x\"\n");
    assert!(msg.contains("bootstrap"), "{msg}");
    let (msg, _) = load_err("[kafka]\nmax_task_idle = \"soon\"\n");
    assert!(msg.contains("soon"), "{msg}");
}

#[test]
fn state_settings_load_from_file_and_env_and_are_checked() {
    let d = defaults();
    assert_eq!(d.state.dir, std::path::PathBuf::from("state"));
    assert_eq!(
        d.state.checkpoint_interval,
        std::time::Duration::from_secs(1)
    );
    assert_eq!(d.engine.retention, 1095 * DAY);

    let c = load_ok("[state]\ndir = \"/var/lib/churnwatch\"\ncheckpoint_interval = \"250ms\"\nretention = \"400d\"\n");
    assert_eq!(c.state.dir, std::path::PathBuf::from("/var/lib/churnwatch"));
    assert_eq!(
        c.state.checkpoint_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.engine.retention, 400 * DAY);
    let c = defaults_with_env(&[("CHURNWATCH__STATE__DIR", "/data/cw")]).expect("env");
    assert_eq!(c.state.dir, std::path::PathBuf::from("/data/cw"));

    // A retention shorter than a win-back sequence would cut sequences short.
    let (msg, _) = load_err("[state]\nretention = \"90d\"\n");
    assert!(msg.contains("state.retention"), "{msg}");
    assert!(msg.contains("win-back"), "{msg}");
    let (msg, _) = load_err("[state]\ncheckpoint_interval = \"0s\"\n");
    assert!(msg.contains("state.checkpoint_interval"), "{msg}");
    let (msg, _) = load_err("[state]\npath = \"x\"\n");
    assert!(msg.contains("path"), "{msg}");
}

#[test]
fn smtp_and_send_settings_from_file_and_environment() {
    let f = toml(
        "[smtp]\nhost = \"relay.example.com\"\ntls = \"tls\"\npool_size = 8\n[delivery]\ntransport = \"smtp\"\nquiet_hours = \"22:30-07:15\"\ndefault_timezone = \"Asia/Riyadh\"\nrate_limit = 50\n",
    );
    let c = load_with_env(Some(f.path()), no_env()).expect("loads");
    assert_eq!(c.smtp.host, "relay.example.com");
    assert_eq!(c.smtp.tls, churnwatch::config::TlsMode::Tls);
    assert_eq!(c.smtp.port, 465, "the port follows tls when 0");
    assert_eq!(c.smtp.pool_size, 8);
    assert_eq!(c.send.rate_limit, 50);
    assert_eq!(
        c.send.default_timezone,
        jiff::tz::TimeZone::get("Asia/Riyadh").unwrap()
    );
    assert!(c.send.quiet_hours.is_some());
    let c = load_with_env(
        None,
        env(&[
            ("CHURNWATCH__SMTP__TLS", "starttls"),
            ("CHURNWATCH__SMTP__USERNAME", "cw"),
            ("CHURNWATCH__SMTP__PASSWORD", "pw-from-env-123"),
            ("CHURNWATCH__DELIVERY__QUIET_HOURS", ""),
        ]),
    )
    .expect("loads");
    assert_eq!(c.smtp.port, 587);
    assert_eq!(
        c.smtp.password.as_ref().map(|p| p.expose()),
        Some("pw-from-env-123")
    );
    assert!(c.send.quiet_hours.is_none());
    assert!(
        !format!("{c:?}").contains("pw-from-env-123"),
        "the password is never printed"
    );
}

#[test]
fn bad_smtp_and_send_settings_are_refused_by_key_and_never_show_the_password() {
    for (text, key) in [
        ("[smtp]\ntls = \"ssl\"\n", "smtp.tls"),
        ("[smtp]\npool_size = 0\n", "smtp.pool_size"),
        (
            "[smtp]\nretry_initial = \"2h\"\nretry_max = \"1h\"\n",
            "smtp.retry_max",
        ),
        ("[smtp]\nmax_retry_age = \"0s\"\n", "smtp.max_retry_age"),
        (
            "[smtp]\nmax_retry_age = \"five days\"\n",
            "smtp.max_retry_age",
        ),
        ("[smtp]\nmax_retry_age = 5\n", "smtp.max_retry_age"),
        (
            "[state]\nsends_log_max_bytes = 100\n",
            "state.sends_log_max_bytes",
        ),
        (
            "[state]\nsends_log_max_bytes = \"64MiB\"\n",
            "state.sends_log_max_bytes",
        ),
        (
            "[delivery]\nquiet_hours = \"08:00-08:00\"\n",
            "delivery.quiet_hours",
        ),
        (
            "[delivery]\nquiet_hours = \"late\"\n",
            "delivery.quiet_hours",
        ),
        (
            "[delivery]\ndefault_timezone = \"Mars/Olympus\"\n",
            "delivery.default_timezone",
        ),
        (
            "[delivery]\ntransport = \"smtp\"\n[smtp]\nusername = \"cw\"\n",
            "smtp.username",
        ),
        (
            "[smtp]\npassword_file = \"/nonexistent/churnwatch-secret\"\n",
            "smtp.password_file",
        ),
        ("[smtp]\nhost = \"relay\"\nfrom_name = \"x\"\n", "from_name"),
        (
            "[smtp]\nca_file = \"/nonexistent/ca.pem\"\n",
            "smtp.ca_file",
        ),
    ] {
        let (e, path) = load_err(text);
        assert!(e.contains(key), "{text}: {e}");
        assert!(e.contains(&path), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "file-secret-456\n").unwrap();
    let f = toml(&format!(
        "[smtp]\npassword_file = \"{}\"\n",
        secret.display()
    ));
    let e = load_with_env(
        Some(f.path()),
        env(&[("CHURNWATCH__SMTP__PASSWORD", "env-secret-789")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("set only one"), "{e}");
    assert!(
        !e.contains("file-secret-456") && !e.contains("env-secret-789"),
        "{e}"
    );
}

/// `check`'s stderr lines after the first (`error: …`), and whether it failed.
fn check_problems(config: &std::path::Path, envs: &[(&str, &str)]) -> Vec<String> {
    let out = churnwatch()
        .args(["check", "--config"])
        .arg(config)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "check accepted it:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr.lines().skip(1).map(String::from).collect()
}

#[test]
fn check_lists_every_config_problem_on_its_own_line_with_file_and_key() {
    // Keys and types: everything wrong at once, not the first problem only.
    let f = toml(
        "colour = \"blue\"\n\
         [kafka]\nmax_batch = \"lots\"\nbogus = 1\n\
         [engine]\nallowed_lateness = \"1 fortnight\"\n\
         [rules.winback]\ncooldown = \"-3d\"\n\
         [rules.nonsense]\nx = 1\n",
    );
    let file = f.path().display().to_string();
    let lines = check_problems(f.path(), &[]);
    let expected = [
        ("colour", "unknown key"),
        ("kafka.max_batch", "expected an integer"),
        ("kafka.bogus", "unknown key"),
        ("engine.allowed_lateness", "not a duration"),
        ("rules.winback.cooldown", "not a duration"),
        ("rules.nonsense", "unknown key"),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (key, what) in expected {
        let prefix = format!("{file}: {key}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "no line `{prefix}…{what}…` in {lines:#?}"
        );
    }

    // Thresholds that cannot work, each named by key.
    let f = toml(
        "[delivery]\nmax_emails = 0\nquiet_hours = \"08:00-08:00\"\nholdout_percent = 150\n\
         [rules.winback]\nsteps = [ { after = \"0d\", template = \"winback_gentle\" }, { after = \"0d\", template = \"winback_offer\" } ]\n\
         [rules.frequency_drop]\nrecent_window = \"45d\"\n\
         [metrics]\ncrr_period = \"1000d\"\n",
    );
    let file = f.path().display().to_string();
    let lines = check_problems(f.path(), &[]);
    let keys = [
        "delivery.max_emails",
        "delivery.quiet_hours",
        "delivery.holdout_percent",
        "rules.winback.steps[1].after",
        "rules.frequency_drop.recent_window",
        "metrics.crr_period",
    ];
    assert_eq!(lines.len(), keys.len(), "{lines:#?}");
    for key in keys {
        let prefix = format!("{file}: {key}: ");
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)),
            "no line for {key} in {lines:#?}"
        );
    }

    // A bad value from the environment says so.
    let f = toml("");
    let lines = check_problems(f.path(), &[("CHURNWATCH__KAFKA__MAX_BATCH", "x")]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("CHURNWATCH__ environment: kafka.max_batch: "),
        "{lines:#?}"
    );
}

#[test]
fn check_renders_every_template_and_lists_each_broken_one_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    for folder in std::fs::read_dir(&src).unwrap() {
        let folder = folder.unwrap().path();
        let name = folder.file_name().unwrap();
        std::fs::create_dir_all(t.join(name)).unwrap();
        for f in std::fs::read_dir(&folder).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, t.join(name).join(f.file_name().unwrap())).unwrap();
        }
    }
    let write = |rel: &str, text: &str| std::fs::write(t.join(rel), text).unwrap();
    write("winback_gentle/en.text.txt", "Hello {{ name ");
    write("winback_offer/ar.subject.txt", "{{ no_such_value }}");
    write("thank_you_loyal/en.html", "{% for x in %}");
    std::fs::remove_file(t.join("welcome_back/en.html")).unwrap();
    std::fs::remove_dir_all(t.join("support_apology")).unwrap();
    for part in ["subject.txt", "text.txt", "html"] {
        std::fs::remove_file(t.join(format!("frequency_drop/ar.{part}"))).unwrap();
    }
    write("winback_last/en.txt", "stray");
    let f = toml(&format!(
        "[templates]\ndir = {:?}\n",
        t.display().to_string()
    ));
    let lines = check_problems(f.path(), &[]);
    let t = t.display().to_string();
    let expected = [
        format!("{t}/winback_gentle/en.text.txt: syntax error"),
        format!("{t}/winback_offer/ar.subject.txt: undefined value"),
        format!("{t}/thank_you_loyal/en.html: syntax error"),
        format!("{t}/welcome_back/: missing en.html"),
        format!(
            "{t}/support_apology: template `support_apology` used by the config does not exist"
        ),
        format!("{t}/frequency_drop: template `frequency_drop` lacks locale `ar`"),
        format!("{t}/winback_last/en.txt: not a template part"),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for e in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(e.as_str())),
            "no line `{e}…` in {lines:#?}"
        );
    }
}
