//! Sustained sends/s through the SMTP pool (docs/design.md §10 Sender) to a real SMTP server on loopback
//! (aiosmtpd via `tests/support/smtp_server.py`, Python from `CHURNWATCH_TEST_PYTHON`),
//! for several pool sizes, beside Python's `smtplib` sending the same messages on one
//! connection to a server of its own in the same run (the baseline). Prints sends/s
//! and, per connection, the ratio to the baseline.
//!
//! `cargo bench --bench smtp` (under `cargo test` it runs small, as a smoke test). The
//! server is single-threaded Python and parses every message it accepts, so the figure
//! is a floor for a production relay, not churnwatch's ceiling, and a larger pool
//! soon meets the server's one core.

use std::time::{Duration, Instant};

use churnwatch::alert::{Alert, Decision, Inputs, MailContext};
use churnwatch::config::load_with_env;
use churnwatch::engine::clock::Stamp;
use churnwatch::engine::rule::Rule;
use churnwatch::engine::stage::Stage;
use churnwatch::mail::mailer;
use churnwatch::mail::sender::{Job, Sender};
use churnwatch::mail::template::Templates;

#[path = "../tests/support/smtp_server.rs"]
mod smtp_server;

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    if std::env::var_os("CHURNWATCH_TEST_PYTHON").is_none() {
        println!("smtp bench: CHURNWATCH_TEST_PYTHON is not set (scripts/test sets it); skipped");
        return;
    }
    let n: usize = std::env::var("EMAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 3000 } else { 50 });
    let pools: &[u32] = if benching { &[1, 4, 8] } else { &[4] };
    let templates_dir = format!("{}/templates", env!("CARGO_MANIFEST_DIR"));
    for &pool in pools {
        let server = smtp_server::Server::start(&[]);
        let port = server.port.to_string();
        let pool_s = pool.to_string();
        let env: Vec<(String, String)> = [
            ("CHURNWATCH__DELIVERY__TRANSPORT", "smtp"),
            ("CHURNWATCH__SMTP__HOST", "127.0.0.1"),
            ("CHURNWATCH__SMTP__PORT", port.as_str()),
            ("CHURNWATCH__SMTP__TLS", "none"),
            ("CHURNWATCH__SMTP__POOL_SIZE", pool_s.as_str()),
            ("CHURNWATCH__DELIVERY__QUIET_HOURS", ""),
            ("CHURNWATCH__DELIVERY__RATE_LIMIT", "0"),
            ("CHURNWATCH__TEMPLATES__DIR", templates_dir.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cfg = load_with_env(None, env).expect("config");
        let t = Templates::load(&cfg.mail).expect("templates");
        let emails: Vec<_> = (0..n)
            .map(|i| {
                let mut a = Alert {
                    alert_id: format!("{i:032x}"),
                    customer_id: format!("c{i:07}").into(),
                    rule: Rule::Winback,
                    step: 0,
                    episode: "e".into(),
                    at: Stamp::parse_rfc3339("2026-01-01T00:00:00Z").expect("stamp"),
                    stage_from: Stage::AtRisk,
                    stage_to: Stage::Lapsed,
                    churn_risk: None,
                    inputs: Inputs::default(),
                    decision: Decision::Email,
                    template: "winback_gentle".into(),
                    locale: "en".into(),
                    mail: Some(Box::new(MailContext {
                        email: format!("c{i}@example.com"),
                        name: "Layla".into(),
                        locale: if i % 2 == 0 { "en" } else { "ar" }.into(),
                        ..MailContext::default()
                    })),
                };
                mailer::render(&cfg.mail, &t, &mut a)
            })
            .collect();
        let from: lettre::message::Mailbox = cfg.mail.from.parse().expect("from");
        let baseline = smtplib_rate(&emails, from.email.as_ref());
        let mut sender = Sender::start(
            &cfg.smtp,
            &cfg.send,
            from.email,
            churnwatch::pause::PauseWatch::never(),
        )
        .expect("sender");
        let started = Instant::now();
        for (i, email) in emails.into_iter().enumerate() {
            sender.send(Job {
                task: 0,
                entry: i as u64,
                email,
                first_failure: None,
            });
        }
        let mut sent = 0;
        while sent < n {
            sent += sender
                .reports()
                .iter()
                .filter(|r| r.status.is_final())
                .count();
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "stuck at {sent}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = started.elapsed().as_secs_f64();
        sender.stop(Duration::from_secs(5));
        assert_eq!(server.received().len(), n, "every email arrived");
        let rate = n as f64 / secs;
        println!(
            "smtp: {n} emails, pool {pool}: {secs:.2} s, {rate:.0} sends/s; smtplib on one connection {baseline:.0} sends/s; per connection {:.2}x smtplib",
            rate / f64::from(pool) / baseline
        );
    }
}

/// Sends/s of Python's `smtplib` sending `emails` on one connection to a fresh test
/// server: what one connection of a plain client achieves on this machine.
fn smtplib_rate(emails: &[churnwatch::outbox::Email], from: &str) -> f64 {
    let server = smtp_server::Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, e) in emails.iter().enumerate() {
        let bytes = e.message.as_ref().expect("rendered");
        std::fs::write(dir.path().join(format!("{i:07}.eml")), bytes).expect("write");
        std::fs::write(dir.path().join(format!("{i:07}.to")), &e.to).expect("write");
    }
    let script = r#"
import os, smtplib, sys, time
d, port, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = sorted(n[:-4] for n in os.listdir(d) if n.endswith(".eml"))
msgs = [(open(os.path.join(d, n + ".to")).read(), open(os.path.join(d, n + ".eml"), "rb").read()) for n in names]
s = smtplib.SMTP("127.0.0.1", port)
t = time.perf_counter()
for to, m in msgs:
    s.sendmail(sender, [to], m)
secs = time.perf_counter() - t
s.quit()
print(len(msgs) / secs)
"#;
    let out = std::process::Command::new(smtp_server::python())
        .args(["-c", script])
        .arg(dir.path())
        .arg(server.port.to_string())
        .arg(from)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server.received().len(),
        emails.len(),
        "smtplib sent them all"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a rate")
}
