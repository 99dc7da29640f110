//! README "Secrets": `run` refuses the shipped keys, placeholders and short keys (exit 2,
//! naming the keys, quoting no value); `check` names them without failing; the other
//! commands run with the defaults; a secret read from its `*_file` key is the same
//! secret as from the environment.

use std::path::Path;
use std::process::{Command, Output};

fn churnwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnwatch"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHURNWATCH") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    // Nothing here may reach a broker: a `run` that got past its checks would wait for
    // one, so it gets none that answers (the test fails on its timeout instead).
    c.env("CHURNWATCH__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("CHURNWATCH__ADMIN__LISTEN", "");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const GOOD_ID: &str = "8c1f4e2a9b7d6c5e3f0a1b2c3d4e5f60718293a4b5c6d7e8";
const GOOD_OFFER: &str = "1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a697887";

#[test]
fn run_refuses_the_shipped_keys_naming_them_and_exits_2() {
    let o = churnwatch().arg("run").output().expect("run");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("engine.id_secret: is the default shipped with churnwatch"),
        "{err}"
    );
    assert!(
        err.contains("delivery.offer_secret: is the default shipped with churnwatch"),
        "{err}"
    );
    assert!(
        err.contains("engine.id_secret_file"),
        "names the way out: {err}"
    );
    assert!(
        !err.contains("churnwatch-default-id-secret")
            && !err.contains("churnwatch-default-offer-secret"),
        "quotes a value: {err}"
    );
}

#[test]
fn run_refuses_placeholders_and_short_keys_and_says_which_is_which() {
    let o = churnwatch()
        .arg("run")
        .env(
            "CHURNWATCH__ENGINE__ID_SECRET",
            "change-me-to-a-long-random-string",
        )
        .env("CHURNWATCH__DELIVERY__OFFER_SECRET", "9f8e7d6c5b4a")
        .env("CHURNWATCH__SMTP__PASSWORD", "CHANGE_ME")
        .env(
            "CHURNWATCH__KAFKA__CLIENT__SASL__PASSWORD",
            "your-password-here",
        )
        .env("CHURNWATCH__ADMIN__TOKEN", GOOD_ID)
        .output()
        .expect("run");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(
        lines[0].starts_with("engine.id_secret: is a placeholder"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("delivery.offer_secret: is shorter than 32 bytes"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("smtp.password: is a placeholder"),
        "{err}"
    );
    assert!(
        lines[3].starts_with("kafka.sasl_password: is a placeholder")
            && lines[3].ends_with(
                "kafka.sasl_password_file or in CHURNWATCH__KAFKA__CLIENT__SASL__PASSWORD"
            ),
        "names the variable that sets it: {err}"
    );
    for value in [
        "change-me-to-a-long",
        "9f8e7d6c5b4a",
        "CHANGE_ME",
        "your-password-here",
        GOOD_ID,
    ] {
        assert!(!err.contains(value), "quotes {value}: {err}");
    }
}

#[test]
fn check_names_the_secrets_run_would_refuse_but_passes() {
    let o = churnwatch().arg("check").output().expect("check");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("note: `run` refuses"), "{err}");
    assert!(err.contains("engine.id_secret:"), "{err}");

    let o = churnwatch()
        .arg("check")
        .env("CHURNWATCH__ENGINE__ID_SECRET", GOOD_ID)
        .env("CHURNWATCH__DELIVERY__OFFER_SECRET", GOOD_OFFER)
        .output()
        .expect("check");
    assert!(o.status.success());
    assert!(!stderr(&o).contains("refuses"), "{}", stderr(&o));
}

/// The alert ids and emails of a replay of the bundled example under `env`.
fn replay_alerts(dir: &Path, env: &[(&str, &str)]) -> String {
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let o = churnwatch()
        .args(["replay", "--events", "examples/events.jsonl", "--outbox"])
        .arg(&out)
        .args(["--until", "2026-11-01T00:00:00Z"])
        .envs(env.iter().copied())
        .output()
        .expect("replay");
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read_to_string(out.join("alerts.jsonl")).expect("alerts")
}

#[test]
fn a_key_from_its_file_is_the_key_from_the_environment_and_replay_runs_with_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = replay_alerts(dir.path(), &[]);
    assert!(shipped.contains("alert_id"));
    let from_env = replay_alerts(
        dir.path(),
        &[
            ("CHURNWATCH__ENGINE__ID_SECRET", GOOD_ID),
            ("CHURNWATCH__DELIVERY__OFFER_SECRET", GOOD_OFFER),
        ],
    );
    assert_ne!(from_env, shipped, "the key changes every alert id");
    let id_file = dir.path().join("id-secret");
    let offer_file = dir.path().join("offer-secret");
    // A trailing newline (what `echo` and editors write) is not part of the secret.
    std::fs::write(&id_file, format!("{GOOD_ID}\n")).expect("write");
    std::fs::write(&offer_file, GOOD_OFFER).expect("write");
    let id_path = id_file.display().to_string();
    let offer_path = offer_file.display().to_string();
    let from_files = replay_alerts(
        dir.path(),
        &[
            ("CHURNWATCH__ENGINE__ID_SECRET_FILE", &id_path),
            ("CHURNWATCH__DELIVERY__OFFER_SECRET_FILE", &offer_path),
        ],
    );
    assert_eq!(from_files, from_env);

    // Files and environment for one secret: refused, quoting neither.
    let o = churnwatch()
        .arg("check")
        .env("CHURNWATCH__ENGINE__ID_SECRET_FILE", &id_path)
        .env("CHURNWATCH__ENGINE__ID_SECRET", GOOD_OFFER)
        .output()
        .expect("check");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("engine.id_secret_file: engine.id_secret is also set"),
        "{err}"
    );
    assert!(!err.contains(GOOD_ID) && !err.contains(GOOD_OFFER), "{err}");

    // A key file that cannot be read stops every command, `run` or not.
    let o = churnwatch()
        .arg("check")
        .env(
            "CHURNWATCH__DELIVERY__OFFER_SECRET_FILE",
            "/nonexistent/offer",
        )
        .output()
        .expect("check");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("delivery.offer_secret_file: cannot read /nonexistent/offer"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn keys_from_files_let_run_past_its_secret_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = dir.path().join("id");
    let offer_file = dir.path().join("offer");
    std::fs::write(&id_file, GOOD_ID).expect("write");
    std::fs::write(&offer_file, GOOD_OFFER).expect("write");
    // With good keys `run` goes on to the broker, which is not there: it keeps trying
    // (a service waits for its cluster), so the test stops it once it has started.
    let log = dir.path().join("log");
    let mut child = churnwatch()
        .arg("run")
        .env("CHURNWATCH__ENGINE__ID_SECRET_FILE", &id_file)
        .env("CHURNWATCH__DELIVERY__OFFER_SECRET_FILE", &offer_file)
        .env("CHURNWATCH__STATE__DIR", dir.path().join("state"))
        .env("CHURNWATCH__DELIVERY__FILE_DIR", dir.path().join("mail"))
        .env("CHURNWATCH_LOG_FORMAT", "human")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("run");
    let started = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("run exited ({status}):\n{text}");
        }
        if text.contains("kafka consumer") {
            break text;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "run did not start:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(!text.contains("refuses"), "{text}");
    assert!(
        !text.contains(GOOD_ID) && !text.contains(GOOD_OFFER),
        "{text}"
    );
}
