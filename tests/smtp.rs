//! docs/design.md §10 Sender, §12 Guarantees against a real SMTP server on loopback (aiosmtpd, run by
//! `tests/support/smtp_server.py` with the Python that `scripts/test` prepares, path in
//! `CHURNWATCH_TEST_PYTHON`). The server parses what it accepts with Python's own MIME
//! parser, so these tests read the emails as a mail client would.
//!
//! Covered: every template's email arrives in English and Arabic with its recipient,
//! subject, both parts and headers; the Date is the send time; 451 then 250 delivers
//! once; 550 is recorded as permanent and not retried; a relay that is down for a while
//! gets every email once it is back; customer data cannot inject a header and arrives
//! escaped in HTML; quiet hours defer and an unsubscribe that arrives meanwhile wins;
//! AUTH over STARTTLS with a private CA; the password never shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use churnwatch::alert::{Alert, Decision, Inputs, MailContext};
use churnwatch::config::{load_with_env, Config};
use churnwatch::engine::clock::Stamp;
use churnwatch::engine::rule::Rule;
use churnwatch::engine::stage::Stage;
use churnwatch::mail::mailer;
use churnwatch::mail::sender::{Job, Report, Sender, Status};
use churnwatch::mail::template::Templates;
use churnwatch::outbox::Email;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// the server

#[path = "support/smtp_server.rs"]
mod smtp_server;
use smtp_server::{free_port, Server};

// ---------------------------------------------------------------------------------------
// churnwatch's side

fn config(port: u16, extra: &[(&str, &str)]) -> Config {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut env: Vec<(String, String)> = [
        ("CHURNWATCH__DELIVERY__TRANSPORT", "smtp"),
        ("CHURNWATCH__SMTP__HOST", "127.0.0.1"),
        ("CHURNWATCH__SMTP__TLS", "none"),
        ("CHURNWATCH__SMTP__RETRY_INITIAL", "1s"),
        ("CHURNWATCH__SMTP__RETRY_MAX", "2s"),
        ("CHURNWATCH__SMTP__TIMEOUT", "5s"),
        ("CHURNWATCH__DELIVERY__QUIET_HOURS", ""),
        ("CHURNWATCH__DELIVERY__RATE_LIMIT", "0"),
        (
            "CHURNWATCH__TEMPLATES__UNSUBSCRIBE_URL",
            "https://shop.example.com/unsubscribe?a={alert_id}",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("CHURNWATCH__SMTP__PORT".into(), port.to_string()));
    env.push((
        "CHURNWATCH__TEMPLATES__DIR".into(),
        templates.display().to_string(),
    ));
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    load_with_env(None, env).unwrap_or_else(|e| panic!("config: {e}"))
}

fn start(cfg: &Config) -> Sender {
    let from: lettre::message::Mailbox = cfg.mail.from.parse().unwrap();
    Sender::start(
        &cfg.smtp,
        &cfg.send,
        from.email,
        churnwatch::pause::PauseWatch::never(),
    )
    .expect("sender starts")
}

fn mail_ctx(email: &str, name: &str, locale: &str) -> MailContext {
    MailContext {
        email: email.into(),
        name: name.into(),
        locale: locale.into(),
        days_since_last_purchase: 75,
        purchase_count: 10,
        favourite_category: "books".into(),
        offer_code: "COMEBACK10".into(),
        milestone: 10,
        years: 2,
        ticket_id: "T-77".into(),
        timezone: String::new(),
    }
}

/// An alert decided as `email`, as the engine emits it.
fn alert(n: usize, rule: Rule, template: &str, m: MailContext) -> Alert {
    Alert {
        alert_id: format!("{n:032x}"),
        customer_id: format!("c{n:06}").into(),
        rule,
        step: 0,
        episode: "purchase:2025-01-01".into(),
        at: Stamp::parse_rfc3339("2025-03-01T10:00:00Z").unwrap(),
        stage_from: Stage::AtRisk,
        stage_to: Stage::Lapsed,
        churn_risk: Some(0.8123),
        inputs: Inputs::default(),
        decision: Decision::Email,
        template: template.into(),
        locale: m.locale.clone(),
        mail: Some(Box::new(m)),
    }
}

fn email(cfg: &Config, t: &Templates, n: usize, to: &str) -> Email {
    let mut a = alert(
        n,
        Rule::Winback,
        "winback_gentle",
        mail_ctx(to, "Layla", "en"),
    );
    mailer::render(&cfg.mail, t, &mut a)
}

fn templates(cfg: &Config) -> Templates {
    Templates::load(&cfg.mail).unwrap_or_else(|p| panic!("{}", p.join("\n")))
}

/// Collects reports until every listed entry has a final one (or panics after `limit`).
fn finals(sender: &Sender, entries: usize, limit: Duration) -> Vec<Report> {
    let started = Instant::now();
    let mut all = Vec::new();
    loop {
        all.extend(sender.reports());
        let done = all.iter().filter(|r| r.status.is_final()).count();
        if done >= entries {
            return all;
        }
        assert!(
            started.elapsed() < limit,
            "{done} of {entries} emails finished after {limit:?}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn job(n: usize, email: Email) -> Job {
    Job {
        task: 0,
        entry: n as u64,
        email,
        first_failure: None,
    }
}

fn header<'a>(m: &'a Value, name: &str) -> Vec<&'a str> {
    m["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

fn has_arabic(s: &str) -> bool {
    s.chars().any(|c| ('\u{0600}'..='\u{06FF}').contains(&c))
}

// ---------------------------------------------------------------------------------------
// tests

#[test]
fn every_rules_email_arrives_in_english_and_arabic_with_its_parts_and_headers() {
    let server = Server::start(&[]);
    let cfg = config(server.port, &[]);
    let t = templates(&cfg);
    let mut sender = start(&cfg);
    let rules: BTreeMap<&str, Rule> = [
        ("winback_gentle", Rule::Winback),
        ("winback_offer", Rule::Winback),
        ("winback_last", Rule::Winback),
        ("frequency_drop", Rule::FrequencyDrop),
        ("support_apology", Rule::SupportRecovery),
        ("thank_you_milestone", Rule::ThankYou),
        ("thank_you_loyal", Rule::ThankYou),
        ("thank_you_anniversary", Rule::ThankYou),
        ("welcome_back", Rule::WelcomeBack),
    ]
    .into_iter()
    .collect();
    let mut used = cfg.engine.template_names();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, rules.keys().copied().collect::<Vec<_>>());
    let mut sent = BTreeMap::new();
    let before = jiff::Timestamp::now();
    for (i, (template, rule)) in rules.iter().enumerate() {
        for (j, (locale, name)) in [("en", "Layla Haddad"), ("ar", "ليلى حداد")]
            .iter()
            .enumerate()
        {
            let n = i * 2 + j + 1;
            let to = format!("{template}.{locale}@example.com");
            let mut a = alert(n, *rule, template, mail_ctx(&to, name, locale));
            let m = a.mail.as_deref().unwrap().clone();
            let rendered = t.render(template, &m, &a.alert_id).unwrap();
            let e = mailer::render(&cfg.mail, &t, &mut a);
            assert_eq!(e.locale, *locale);
            sent.insert(format!("<{}>", e.message_id), (to, *locale, rendered));
            sender.send(job(n, e));
        }
    }
    let reports = finals(&sender, sent.len(), Duration::from_secs(60));
    assert!(
        reports
            .iter()
            .all(|r| matches!(&r.status, Status::Sent(reply) if reply.starts_with("250"))),
        "{reports:#?}"
    );
    sender.stop(Duration::from_secs(5));
    let got = server.received();
    assert_eq!(got.len(), sent.len(), "each email arrives once");
    for m in &got {
        let mid = m["message_id"].as_str().unwrap();
        let (to, locale, r) = sent.get(mid).unwrap_or_else(|| panic!("unexpected {mid}"));
        assert_eq!(m["rcpt_tos"], serde_json::json!([to]), "{mid}");
        assert_eq!(m["mail_from"], "care@shop.example.com");
        assert!(
            m["to"].as_str().unwrap().contains(to.as_str()),
            "{mid}: To {}",
            m["to"]
        );
        assert_eq!(m["subject"].as_str().unwrap(), r.subject, "{mid}");
        assert_eq!(m["content_type"], "multipart/alternative");
        let text = &m["parts"]["text/plain"];
        let html = &m["parts"]["text/html"];
        assert_eq!(text["charset"], "utf-8");
        assert_eq!(html["charset"], "utf-8");
        // SMTP carries lines ended by CRLF; the templates end them by LF.
        let body = |v: &Value| v["body"].as_str().unwrap().replace("\r\n", "\n");
        assert_eq!(body(text).trim_end(), r.text.trim_end(), "{mid}");
        assert_eq!(body(html).trim_end(), r.html.trim_end(), "{mid}");
        let html = html["body"].as_str().unwrap();
        if *locale == "ar" {
            assert!(has_arabic(m["subject"].as_str().unwrap()), "{mid}: subject");
            assert!(
                html.contains(r#"dir="rtl""#) && html.contains(r#"lang="ar""#),
                "{mid}"
            );
            assert!(
                m["to"].as_str().unwrap().contains("ليلى حداد"),
                "{mid}: {}",
                m["to"]
            );
        } else {
            assert!(!has_arabic(m["subject"].as_str().unwrap()));
        }
        let alert_id = mid.trim_matches(['<', '>']).split('@').next().unwrap();
        assert_eq!(
            header(m, "List-Unsubscribe"),
            vec![format!("<https://shop.example.com/unsubscribe?a={alert_id}>").as_str()]
        );
        assert_eq!(
            header(m, "List-Unsubscribe-Post"),
            vec!["List-Unsubscribe=One-Click"]
        );
        // Date is the send time, not the decision's (2025-03-01).
        let date = header(m, "Date");
        assert_eq!(date.len(), 1, "{mid}");
        let at = jiff::fmt::rfc2822::parse(date[0]).unwrap().timestamp();
        assert!(
            at >= before
                .checked_sub(jiff::SignedDuration::from_secs(2))
                .unwrap(),
            "{mid}: Date {}",
            date[0]
        );
    }
}

#[test]
fn a_451_then_250_delivers_each_email_once() {
    let server = Server::start(&["--transient", "1"]);
    let cfg = config(server.port, &[]);
    let t = templates(&cfg);
    let sender = start(&cfg);
    for n in 1..=3 {
        sender.send(job(n, email(&cfg, &t, n, &format!("c{n}@example.com"))));
    }
    let reports = finals(&sender, 3, Duration::from_secs(60));
    for n in 1..=3u64 {
        let mine: Vec<&Status> = reports
            .iter()
            .filter(|r| r.entry == n)
            .map(|r| &r.status)
            .collect();
        assert!(
            matches!(mine[0], Status::Retrying { attempt: 1, reason, .. } if reason.contains("451")),
            "{mine:?}"
        );
        assert!(matches!(mine.last().unwrap(), Status::Sent(_)), "{mine:?}");
    }
    let got = server.received();
    assert_eq!(got.len(), 3);
    let attempts = server.attempts();
    assert_eq!(attempts.iter().filter(|a| a["code"] == 451).count(), 3);
    assert_eq!(attempts.iter().filter(|a| a["code"] == 250).count(), 3);
    assert_eq!(sender.held(), 0);
}

/// `smtp.max_retry_age`: a relay answering 451 forever. The email is tried until that
/// age after its first failure (the last try at the age, not a retry_max later), then
/// reported expired (final) and gone from the sender's queue; a first failure handed in
/// from the store (a restart) counts from then, not from the new start.
#[test]
fn retries_end_as_expired_at_max_retry_age() {
    let server = Server::start(&["--transient", "1000000"]);
    let cfg = config(server.port, &[("CHURNWATCH__SMTP__MAX_RETRY_AGE", "3s")]);
    let t = templates(&cfg);
    let sender = start(&cfg);
    let started = jiff::Timestamp::now();
    sender.send(job(1, email(&cfg, &t, 1, "c1@example.com")));
    // Failing for 2 of its 3 seconds already before this process.
    let mut again = job(2, email(&cfg, &t, 2, "c2@example.com"));
    again.first_failure = Some(started - jiff::SignedDuration::from_secs(2));
    sender.send(again);
    let reports = finals(&sender, 2, Duration::from_secs(30));
    let finished = |n: u64| {
        let r: Vec<&Status> = reports
            .iter()
            .filter(|r| r.entry == n)
            .map(|r| &r.status)
            .collect();
        let since = r.iter().find_map(|s| match s {
            Status::Retrying { since, .. } => Some(*since),
            _ => None,
        });
        (r.last().copied().cloned(), since, r.len())
    };
    let (last, since, _) = finished(1);
    assert!(
        matches!(&last, Some(Status::Expired { attempts, reason }) if *attempts >= 3 && reason.contains("451")),
        "{last:?}"
    );
    assert!(since.is_some_and(|s| s.duration_since(started).as_secs_f64().abs() < 1.0));
    let (last, since, _) = finished(2);
    assert!(matches!(last, Some(Status::Expired { .. })), "{last:?}");
    assert_eq!(since, Some(started - jiff::SignedDuration::from_secs(2)));
    // Both within a second of their age (retry_max is 2s: without the clamp the last try
    // could come up to 2s late), and none of them accepted.
    let elapsed = jiff::Timestamp::now().duration_since(started).as_secs_f64();
    assert!(elapsed < 4.5, "{elapsed}");
    assert!(server.received().is_empty());
    let tries = server.attempts().len();
    assert_eq!(sender.held(), 0, "expired emails leave the sender's queue");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.attempts().len(), tries, "tried again after expiring");
}

#[test]
fn a_550_is_recorded_as_permanent_and_not_retried() {
    let server = Server::start(&["--reject", "gone@"]);
    let cfg = config(server.port, &[]);
    let t = templates(&cfg);
    let sender = start(&cfg);
    sender.send(job(1, email(&cfg, &t, 1, "gone@example.com")));
    sender.send(job(2, email(&cfg, &t, 2, "here@example.com")));
    let reports = finals(&sender, 2, Duration::from_secs(30));
    let status = |n: u64| {
        reports
            .iter()
            .filter(|r| r.entry == n)
            .map(|r| r.status.clone())
            .collect::<Vec<_>>()
    };
    let gone = status(1);
    assert_eq!(gone.len(), 1, "no retry: {gone:?}");
    assert!(
        matches!(&gone[0], Status::Failed(reply) if reply.contains("550") && reply.contains("rejected")),
        "{gone:?}"
    );
    assert!(matches!(status(2).as_slice(), [Status::Sent(_)]));
    // Give a wrong retry the time to happen: the 550 is never tried again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        server
            .attempts()
            .iter()
            .filter(|a| a["code"] == 550)
            .count(),
        1
    );
    assert_eq!(server.received().len(), 1);
}

#[test]
fn a_relay_down_for_a_while_gets_every_email_once_it_is_back() {
    let port = free_port();
    let cfg = config(port, &[]);
    let t = templates(&cfg);
    let sender = start(&cfg);
    for n in 1..=5 {
        sender.send(job(n, email(&cfg, &t, n, &format!("c{n}@example.com"))));
    }
    // Every email fails to connect at least twice before the relay starts.
    let started = Instant::now();
    let mut reports = Vec::new();
    loop {
        reports.extend(sender.reports());
        let retried = (1..=5u64)
            .filter(|n| {
                reports.iter().any(|r| {
                    r.entry == *n && matches!(r.status, Status::Retrying { attempt: 2, .. })
                })
            })
            .count();
        if retried == 5 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{reports:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reports.iter().all(|r| !r.status.is_final()), "{reports:#?}");
    assert_eq!(sender.held(), 5);
    let server = Server::start_on(port, &[]);
    let more = finals(&sender, 5, Duration::from_secs(30));
    assert!(more
        .iter()
        .filter(|r| r.status.is_final())
        .all(|r| matches!(r.status, Status::Sent(_))));
    let got = server.received();
    let mut ids: Vec<&str> = got
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (5, 5), "each email once");
}

#[test]
fn customer_data_cannot_inject_a_header_and_is_escaped_in_html() {
    let server = Server::start(&[]);
    let cfg = config(server.port, &[]);
    let t = templates(&cfg);
    let sender = start(&cfg);
    let name = "Eve\r\nBcc: victim@example.net\r\n<b>bold</b> & \"co\"";
    let mut a = alert(
        1,
        Rule::Winback,
        "winback_gentle",
        mail_ctx("eve@example.com", name, "en"),
    );
    sender.send(job(1, mailer::render(&cfg.mail, &t, &mut a)));
    finals(&sender, 1, Duration::from_secs(30));
    let got = server.received();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(header(m, "Bcc").is_empty(), "{:?}", m["headers"]);
    assert_eq!(m["rcpt_tos"], serde_json::json!(["eve@example.com"]));
    let to = header(m, "To");
    assert_eq!(to.len(), 1);
    assert!(!to[0].contains(['\r', '\n']), "{to:?}");
    let html = m["parts"]["text/html"]["body"].as_str().unwrap();
    assert!(!html.contains("<b>bold</b>"), "{html}");
    assert!(html.contains("&lt;b&gt;bold&lt;"), "{html}");
}

/// Quiet hours from an hour ago to an hour ahead in Riyadh time, whatever the hour of the
/// test run.
fn quiet_now_in_riyadh() -> String {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Asia/Riyadh").unwrap());
    let hour = jiff::SignedDuration::from_mins(60);
    let (from, to) = (
        now.checked_sub(hour).unwrap(),
        now.checked_add(hour).unwrap(),
    );
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        from.hour(),
        from.minute(),
        to.hour(),
        to.minute()
    )
}

/// Rebalance: withdrawing a task drops its waiting emails without a final report (they
/// stay in its outbox for the next owner), keeps other tasks' emails, and sends nothing.
#[test]
fn withdrawing_a_task_gives_up_its_waiting_emails_and_keeps_the_others() {
    let server = Server::start(&[]);
    let window = quiet_now_in_riyadh();
    let cfg = config(
        server.port,
        &[("CHURNWATCH__DELIVERY__QUIET_HOURS", &window)],
    );
    let t = templates(&cfg);
    let sender = start(&cfg);
    for (task, n) in [(0, 1), (0, 2), (1, 3)] {
        let mut e = email(&cfg, &t, n, &format!("c{n}@example.com"));
        e.timezone = "Asia/Riyadh".into();
        sender.send(Job {
            task,
            entry: n as u64,
            email: e,
            first_failure: None,
        });
    }
    let started = Instant::now();
    let mut reports = Vec::new();
    while reports.len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "{reports:#?}");
        std::thread::sleep(Duration::from_millis(20));
        reports.extend(sender.reports());
    }
    assert!(
        reports
            .iter()
            .all(|r| matches!(r.status, Status::Deferred(_))),
        "{reports:#?}"
    );
    assert_eq!(sender.held(), 3);
    sender.withdraw(0);
    assert_eq!(sender.held(), 1, "task 1's email is still held");
    assert!(sender.reports().iter().all(|r| !r.status.is_final()));
    // The remaining one is task 1's: a suppression of task 0's customers finds nothing.
    sender.suppress("c000001", "unsubscribed");
    sender.suppress("c000003", "unsubscribed");
    let reports = finals(&sender, 1, Duration::from_secs(10));
    let finished: Vec<u64> = reports
        .iter()
        .filter(|r| r.status.is_final())
        .map(|r| r.entry)
        .collect();
    assert_eq!(finished, vec![3]);
    assert!(server.received().is_empty());
}

#[test]
fn quiet_hours_defer_and_an_unsubscribe_meanwhile_wins() {
    let server = Server::start(&[]);
    let window = quiet_now_in_riyadh();
    let cfg = config(
        server.port,
        &[("CHURNWATCH__DELIVERY__QUIET_HOURS", &window)],
    );
    let t = templates(&cfg);
    let sender = start(&cfg);
    let mut quiet = email(&cfg, &t, 1, "riyadh@example.com");
    quiet.timezone = "Asia/Riyadh".into();
    // Eight hours west of Riyadh the window is not open... unless the window is wide;
    // it is two hours, so America/Sao_Paulo (UTC−3, six hours behind) is outside it.
    let mut open = email(&cfg, &t, 2, "saopaulo@example.com");
    open.timezone = "America/Sao_Paulo".into();
    sender.send(job(1, quiet));
    sender.send(job(2, open));
    let started = Instant::now();
    let mut reports = Vec::new();
    while !(reports.iter().any(|r: &Report| r.entry == 1)
        && reports
            .iter()
            .any(|r: &Report| r.entry == 2 && r.status.is_final()))
    {
        assert!(started.elapsed() < Duration::from_secs(30), "{reports:#?}");
        std::thread::sleep(Duration::from_millis(20));
        reports.extend(sender.reports());
    }
    let deferred = reports.iter().find(|r| r.entry == 1).unwrap();
    let Status::Deferred(until) = deferred.status else {
        panic!("{deferred:?}");
    };
    let wait = until.duration_since(jiff::Timestamp::now());
    assert!(
        wait > jiff::SignedDuration::from_mins(55) && wait <= jiff::SignedDuration::from_mins(61),
        "{until}"
    );
    assert_eq!(
        server.received().len(),
        1,
        "only the email outside quiet hours went"
    );
    assert_eq!(sender.held(), 1);
    // The customer unsubscribes while their email waits: it is dropped, as suppressed.
    sender.suppress("c000001", "unsubscribed");
    let reports = finals(&sender, 1, Duration::from_secs(10));
    assert!(
        reports
            .iter()
            .any(|r| r.entry == 1 && r.status == Status::Suppressed("unsubscribed")),
        "{reports:#?}"
    );
    assert_eq!(sender.held(), 0);
    assert_eq!(server.received().len(), 1);
}

#[test]
fn the_rate_limit_spaces_sends() {
    let server = Server::start(&[]);
    let cfg = config(server.port, &[("CHURNWATCH__DELIVERY__RATE_LIMIT", "5")]);
    let t = templates(&cfg);
    let sender = start(&cfg);
    let started = Instant::now();
    for n in 1..=15 {
        sender.send(job(n, email(&cfg, &t, n, &format!("c{n}@example.com"))));
    }
    finals(&sender, 15, Duration::from_secs(30));
    // 15 emails at 5/s with a burst of 5: at least two seconds. (A lower bound is what
    // the limit promises; no upper bound is asserted.)
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.received().len(), 15);
}

/// A private CA and a certificate for `localhost` signed by it: (CA, cert, key).
fn openssl_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let st = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=churnwatch test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "cert.csr",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[test]
fn auth_over_starttls_with_a_private_ca_and_the_password_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = openssl_cert(dir.path());
    let server = Server::start(&[
        "--auth",
        "churnwatch:s3cret-pw",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, "s3cret-pw\n").unwrap();
    let tls = [
        ("CHURNWATCH__SMTP__HOST", "localhost"),
        ("CHURNWATCH__SMTP__TLS", "starttls"),
        ("CHURNWATCH__SMTP__USERNAME", "churnwatch"),
        ("CHURNWATCH__SMTP__CA_FILE", ca.to_str().unwrap()),
    ];
    let mut extra = tls.to_vec();
    extra.push(("CHURNWATCH__SMTP__PASSWORD_FILE", pw_file.to_str().unwrap()));
    let cfg = config(server.port, &extra);
    assert!(!format!("{cfg:?}").contains("s3cret-pw"));
    let t = templates(&cfg);
    let sender = start(&cfg);
    sender.send(job(1, email(&cfg, &t, 1, "tls@example.com")));
    let reports = finals(&sender, 1, Duration::from_secs(30));
    assert!(
        matches!(reports.last().unwrap().status, Status::Sent(_)),
        "{reports:#?}"
    );
    assert_eq!(server.received().len(), 1);

    // A wrong password (from the environment this time) is the relay refusing us, not
    // the email: it is retried (535), never recorded as failed, and neither the report
    // nor the config shows the password.
    let mut extra = tls.to_vec();
    extra.push(("CHURNWATCH__SMTP__PASSWORD", "wrong-pw-xyz"));
    let cfg = config(server.port, &extra);
    assert!(!format!("{cfg:?}").contains("wrong-pw-xyz"));
    let sender = start(&cfg);
    sender.send(job(2, email(&cfg, &t, 2, "tls@example.com")));
    let first = first_report(&sender, "wrong password");
    let text = format!("{first:?}");
    assert!(
        matches!(&first.status, Status::Retrying { reason, .. } if reason.contains("535")),
        "{text}"
    );
    assert!(!text.contains("wrong-pw-xyz"), "{text}");
    assert_eq!(server.received().len(), 1);

    // Without the CA the relay's certificate is not trusted: transient (an operator
    // fixes the trust store and the email goes), and never sent in clear text.
    let cfg = config(server.port, &tls[..2]);
    let sender = start(&cfg);
    sender.send(job(3, email(&cfg, &t, 3, "tls@example.com")));
    let first = first_report(&sender, "no CA");
    assert!(
        matches!(&first.status, Status::Retrying { .. }),
        "{first:#?}"
    );
    assert_eq!(server.received().len(), 1);
}

/// `smtp.tls = "tls"` (TLS from the first byte, port 465): each email arrives over a
/// relay with a private CA, the second on the connection the first opened.
#[test]
fn implicit_tls_delivers_over_a_private_ca_and_reuses_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = openssl_cert(dir.path());
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--implicit-tls",
    ]);
    let cfg = config(
        server.port,
        &[
            ("CHURNWATCH__SMTP__HOST", "localhost"),
            ("CHURNWATCH__SMTP__TLS", "tls"),
            ("CHURNWATCH__SMTP__POOL_SIZE", "1"),
            ("CHURNWATCH__SMTP__CA_FILE", ca.to_str().unwrap()),
        ],
    );
    let t = templates(&cfg);
    let sender = start(&cfg);
    sender.send(job(1, email(&cfg, &t, 1, "tls1@example.com")));
    sender.send(job(2, email(&cfg, &t, 2, "tls2@example.com")));
    let reports = finals(&sender, 2, Duration::from_secs(30));
    assert!(
        reports.iter().all(|r| matches!(r.status, Status::Sent(_))),
        "{reports:#?}"
    );
    let peers: Vec<String> = server
        .received()
        .iter()
        .map(|m| m["peer"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0], peers[1], "one connection for both");
}

/// A connection the relay dropped while it sat idle in the pool is checked (NOOP after
/// 2 s idle) and replaced before the next email, which goes out on its first try
/// instead of failing on the dead connection and waiting for a retry.
#[test]
fn a_connection_the_relay_dropped_while_idle_is_replaced_before_the_next_email() {
    let server = Server::start(&[]);
    let port = server.port;
    let cfg = config(port, &[("CHURNWATCH__SMTP__POOL_SIZE", "1")]);
    let t = templates(&cfg);
    let sender = start(&cfg);
    sender.send(job(1, email(&cfg, &t, 1, "idle1@example.com")));
    let first = finals(&sender, 1, Duration::from_secs(30));
    assert!(
        matches!(first.last().unwrap().status, Status::Sent(_)),
        "{first:#?}"
    );
    // The relay restarts: the pooled connection is dead.
    drop(server);
    let server = Server::start_on(port, &[]);
    std::thread::sleep(Duration::from_secs(3));
    sender.send(job(2, email(&cfg, &t, 2, "idle2@example.com")));
    let reports = finals(&sender, 1, Duration::from_secs(30));
    assert!(
        reports.iter().all(|r| matches!(r.status, Status::Sent(_))),
        "{reports:#?}"
    );
    assert_eq!(server.received().len(), 1);
}

fn first_report(sender: &Sender, what: &str) -> Report {
    let started = Instant::now();
    loop {
        if let Some(r) = sender.reports().into_iter().next() {
            return r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: no report"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
