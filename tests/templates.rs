//! README "Configuration": templates (en + ar for every rule, RTL Arabic HTML, locale fallback, escaping)
//! and the MIME message built from them (Message-ID, no header injection, alternative parts).

use std::fs;
use std::path::{Path, PathBuf};

use churnwatch::alert::{Alert, Decision, Inputs, MailContext};
use churnwatch::config::{load_with_env, Config, MailSettings};
use churnwatch::engine::clock::Stamp;
use churnwatch::engine::rule::Rule;
use churnwatch::engine::stage::Stage;
use churnwatch::mail::message;
use churnwatch::mail::template::{Rendered, Templates};

// ---------------------------------------------------------------------------------------
// helpers

const ALERT_ID: &str = "0123456789abcdef0123456789abcdef";

fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

fn config() -> Config {
    let mut c = load_with_env(None, Vec::new()).expect("defaults load");
    c.mail.templates_dir = templates_dir();
    c
}

fn settings() -> MailSettings {
    config().mail
}

fn load(s: &MailSettings) -> Templates {
    match Templates::load(s) {
        Ok(t) => t,
        Err(p) => panic!("templates do not load:\n{}", p.join("\n")),
    }
}

fn default_templates() -> Templates {
    load(&settings())
}

fn used_template_names() -> Vec<String> {
    config()
        .engine
        .template_names()
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn ctx(locale: &str, name: &str) -> MailContext {
    MailContext {
        email: "layla@example.com".into(),
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

fn render(t: &Templates, name: &str, m: &MailContext) -> Rendered {
    t.render(name, m, ALERT_ID)
        .unwrap_or_else(|e| panic!("{name} ({}) does not render: {e}", m.locale))
}

/// The opening `<html …>` tag of a document.
fn html_tag(html: &str) -> &str {
    let start = html.find("<html").expect("an <html> element");
    let end = start + html[start..].find('>').unwrap();
    &html[start..=end]
}

fn has_arabic(s: &str) -> bool {
    s.chars().any(|c| ('\u{0600}'..='\u{06FF}').contains(&c))
}

/// HTML-escaped like minijinja does, with and without escaping '/'.
fn escaped_forms(s: &str) -> [String; 2] {
    let base = s
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;");
    [base.replace('/', "&#x2f;"), base]
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A private copy of the bundled templates, to break on purpose.
fn scratch_templates() -> (tempfile::TempDir, MailSettings) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("templates");
    copy_dir(&templates_dir(), &root);
    let mut s = settings();
    s.templates_dir = root;
    (dir, s)
}

fn alert(m: MailContext, template: &str) -> Alert {
    Alert {
        alert_id: ALERT_ID.into(),
        customer_id: "c000042".into(),
        rule: Rule::Winback,
        step: 0,
        episode: "purchase:2025-01-01".into(),
        at: Stamp::parse_rfc3339("2025-03-01T10:00:00Z").unwrap(),
        stage_from: Stage::AtRisk,
        stage_to: Stage::Lapsed,
        churn_risk: Some(0.8123),
        inputs: Inputs::default().int("days_inactive", 75),
        decision: Decision::Email,
        template: template.into(),
        locale: m.locale.clone(),
        mail: Some(Box::new(m)),
    }
}

fn build(m: MailContext, s: &MailSettings) -> (String, lettre::Message) {
    let t = load(s);
    let a = alert(m, "winback_gentle");
    let r = t
        .render(&a.template, a.mail.as_deref().unwrap(), &a.alert_id)
        .unwrap();
    let msg = message::build(&a, &r, s).expect("message builds");
    (
        String::from_utf8(msg.formatted()).expect("message is ASCII/UTF-8"),
        msg,
    )
}

/// Header block of a formatted message, unfolded: (name, value) pairs.
fn headers(formatted: &str) -> Vec<(String, String)> {
    let head = formatted.split("\r\n\r\n").next().unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            out.last_mut()
                .expect("continuation after a header")
                .1
                .push_str(line);
        } else {
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header line: {line:?}"));
            out.push((k.to_string(), v.trim().to_string()));
        }
    }
    out
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------
// the bundled templates

#[test]
fn every_used_template_renders_in_en_and_ar() {
    let t = default_templates();
    let names = used_template_names();
    assert!(names.len() >= 9, "{names:?}");
    for name in &names {
        let mut have: Vec<&str> = t.locales(name).collect();
        have.sort_unstable();
        assert!(
            have.contains(&"en") && have.contains(&"ar"),
            "{name}: {have:?}"
        );
        for locale in ["en", "ar"] {
            for m in [
                ctx(locale, "Layla Haddad"),
                MailContext {
                    locale: locale.into(),
                    ..MailContext::default()
                },
            ] {
                let r = render(&t, name, &m);
                assert_eq!(r.locale, locale);
                assert!(
                    !r.subject.trim().is_empty(),
                    "{name}/{locale}: empty subject"
                );
                assert!(
                    !r.subject.contains(['\r', '\n']),
                    "{name}/{locale}: subject {:?}",
                    r.subject
                );
                assert!(
                    r.text.trim().len() > 20,
                    "{name}/{locale}: text {:?}",
                    r.text
                );
                assert!(r.html.contains("</html>"), "{name}/{locale}: html");
                for part in [&r.subject, &r.text, &r.html] {
                    assert!(
                        !part.contains("{{") && !part.contains("{%"),
                        "{name}/{locale}: {part}"
                    );
                }
                assert!(r.text.contains("Example Shop") || r.subject.contains("Example Shop"));
                // The language of the content matches the locale.
                assert_eq!(
                    has_arabic(&r.text),
                    locale == "ar",
                    "{name}/{locale} text language"
                );
                assert_eq!(
                    has_arabic(&r.subject),
                    locale == "ar",
                    "{name}/{locale} subject language"
                );
            }
        }
    }
    assert_eq!(
        t.check(&names.iter().map(String::as_str).collect::<Vec<_>>()),
        Vec::<String>::new()
    );
}

#[test]
fn arabic_html_is_rtl_and_english_is_ltr() {
    let t = default_templates();
    for name in used_template_names() {
        let ar = render(&t, &name, &ctx("ar", "ليلى"));
        let tag = html_tag(&ar.html);
        assert!(tag.contains(r#"dir="rtl""#), "{name}/ar: {tag}");
        assert!(tag.contains(r#"lang="ar""#), "{name}/ar: {tag}");
        let en = render(&t, &name, &ctx("en", "Layla"));
        let tag = html_tag(&en.html);
        assert!(tag.contains(r#"lang="en""#), "{name}/en: {tag}");
        assert!(!en.html.contains(r#"dir="rtl""#), "{name}/en is marked rtl");
    }
}

#[test]
fn every_variable_a_template_prints_gets_its_value() {
    let mut s = settings();
    s.unsubscribe_url = "https://shop.example.com/unsub?id={alert_id}&x=1".into();
    let t = load(&s);
    let m = ctx("en", "Layla Haddad");
    let values = [
        ("shop_name", "Example Shop".to_string()),
        ("customer_name", m.name.clone()),
        ("favourite_category", m.favourite_category.clone()),
        ("offer_code", m.offer_code.clone()),
        ("feedback_url", s.feedback_url.clone()),
        (
            "unsubscribe_url",
            format!("https://shop.example.com/unsub?id={ALERT_ID}&x=1"),
        ),
        ("milestone", m.milestone.to_string()),
        ("years", m.years.to_string()),
        ("ticket_id", m.ticket_id.clone()),
    ];
    let mut checked = 0;
    for name in used_template_names() {
        for locale in ["en", "ar"] {
            let mut m = m.clone();
            m.locale = locale.into();
            let r = render(&t, &name, &m);
            for (part, out) in [
                ("subject.txt", &r.subject),
                ("text.txt", &r.text),
                ("html", &r.html),
            ] {
                let src = fs::read_to_string(
                    templates_dir().join(&name).join(format!("{locale}.{part}")),
                )
                .unwrap();
                for (var, value) in &values {
                    if !src.contains(&format!("{{{{ {var} }}}}")) {
                        continue;
                    }
                    checked += 1;
                    let found = if part == "html" {
                        escaped_forms(value)
                            .iter()
                            .any(|v| out.contains(v.as_str()))
                    } else {
                        out.contains(value.as_str())
                    };
                    assert!(
                        found,
                        "{name}/{locale}.{part}: `{var}` = {value:?} missing from\n{out}"
                    );
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} substitutions checked");
}

#[test]
fn no_unsubscribe_text_without_an_unsubscribe_url() {
    let s = settings();
    assert!(
        s.unsubscribe_url.is_empty(),
        "default has no unsubscribe URL"
    );
    let t = load(&s);
    for name in used_template_names() {
        let r = render(&t, &name, &ctx("en", "Layla"));
        assert!(
            !r.text.to_lowercase().contains("unsubscribe"),
            "{name}: {}",
            r.text
        );
    }
}

// ---------------------------------------------------------------------------------------
// locale fallback

#[test]
fn locale_fallback() {
    let t = default_templates();
    let cases = [
        ("en", "en"),
        ("en-GB", "en"),
        ("en_US", "en"),
        ("EN-gb", "en"),
        ("fr", "en"),
        ("fr-CA", "en"),
        ("", "en"),
        ("ar", "ar"),
        ("ar-SA", "ar"),
        ("AR-EG", "ar"),
    ];
    for (asked, want) in cases {
        assert_eq!(
            t.resolve_locale("winback_gentle", asked).as_deref(),
            Some(want),
            "requested {asked:?}"
        );
        let r = render(&t, "winback_gentle", &ctx(asked, "Layla"));
        assert_eq!(r.locale, want, "rendered for {asked:?}");
        assert_eq!(has_arabic(&r.text), want == "ar");
    }
    assert_eq!(t.resolve_locale("no_such_template", "en"), None);
    let e = t
        .render("no_such_template", &ctx("en", "x"), ALERT_ID)
        .unwrap_err();
    assert!(e.contains("no_such_template"), "{e}");
}

#[test]
fn the_default_locale_is_configurable() {
    let mut s = settings();
    s.default_locale = "ar".into();
    let t = load(&s);
    assert_eq!(
        t.resolve_locale("welcome_back", "fr").as_deref(),
        Some("ar")
    );
    assert_eq!(
        t.resolve_locale("welcome_back", "en-GB").as_deref(),
        Some("en")
    );
}

// ---------------------------------------------------------------------------------------
// escaping

#[test]
fn customer_data_is_escaped_in_html_only() {
    let t = default_templates();
    let name = "Tom <b>&</b> \"Jerry\"";
    for locale in ["en", "ar"] {
        let r = render(&t, "winback_gentle", &ctx(locale, name));
        assert!(!r.html.contains("<b>"), "{locale}: raw markup in HTML");
        assert!(
            r.html.contains("Tom &lt;b&gt;&amp;&lt;"),
            "{locale}: {}",
            r.html
        );
        assert!(r.html.contains("&quot;Jerry&quot;"), "{locale}");
        assert!(
            r.text.contains(name),
            "{locale}: text must not be escaped: {}",
            r.text
        );
        assert!(
            !r.text.contains("&lt;") && !r.text.contains("&amp;"),
            "{locale}"
        );
        assert!(
            r.subject.contains(name),
            "{locale}: subject {:?}",
            r.subject
        );
    }
    // Other customer-derived values are escaped too.
    let mut m = ctx("en", "Layla");
    m.favourite_category = "<script>alert(1)</script>".into();
    let r = render(&t, "winback_gentle", &m);
    assert!(!r.html.contains("<script>"), "{}", r.html);
    assert!(r.text.contains("<script>alert(1)</script>"));
}

#[test]
fn line_breaks_in_the_name_never_reach_the_subject() {
    let t = default_templates();
    for name in used_template_names() {
        for locale in ["en", "ar"] {
            let r = render(&t, &name, &ctx(locale, "Eve\r\nBcc: x@evil.example"));
            assert!(
                !r.subject.contains(['\r', '\n']),
                "{name}/{locale}: {:?}",
                r.subject
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// the MIME message

#[test]
fn a_name_with_crlf_cannot_inject_headers() {
    let s = settings();
    for locale in ["en", "ar"] {
        for name in [
            "Eve\r\nBcc: x@evil.example",
            "Eve\nBcc: x@evil.example",
            "Eve\rBcc: x@evil.example",
            "Eve\r\n\r\nBcc: x@evil.example",
        ] {
            let (formatted, msg) = build(ctx(locale, name), &s);
            for line in formatted.split("\r\n").chain(formatted.split('\n')) {
                assert!(
                    !line.to_ascii_lowercase().starts_with("bcc:"),
                    "injected line {line:?} in\n{formatted}"
                );
            }
            assert!(msg.headers().get_raw("Bcc").is_none());
            let h = headers(&formatted);
            let names: Vec<String> = h.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
            for k in &names {
                assert!(
                    [
                        "from",
                        "to",
                        "subject",
                        "message-id",
                        "date",
                        "mime-version",
                        "content-type"
                    ]
                    .contains(&k.as_str()),
                    "unexpected header {k:?} in\n{formatted}"
                );
            }
            assert_eq!(header(&h, "To").len(), 1);
            assert!(
                header(&h, "To")[0].contains("<layla@example.com>"),
                "{:?}",
                header(&h, "To")
            );
            // The envelope has the one recipient.
            let to: Vec<String> = msg.envelope().to().iter().map(|a| a.to_string()).collect();
            assert_eq!(to, ["layla@example.com"]);
        }
    }
}

#[test]
fn an_address_with_crlf_is_refused_not_sent() {
    let s = settings();
    let t = load(&s);
    let mut m = ctx("en", "Eve");
    m.email = "eve@example.com\r\nBcc: x@evil.example".into();
    let a = alert(m, "winback_gentle");
    let r = t
        .render(&a.template, a.mail.as_deref().unwrap(), &a.alert_id)
        .unwrap();
    let e = message::build(&a, &r, &s).unwrap_err();
    assert!(e.to_string().contains("recipient"), "{e}");

    let mut a = a;
    a.mail = None;
    assert!(message::build(&a, &r, &s).is_err());
}

#[test]
fn message_id_date_and_parts() {
    let s = settings();
    let (formatted, _) = build(ctx("en", "Layla"), &s);
    let h = headers(&formatted);
    assert_eq!(
        header(&h, "Message-ID"),
        [format!("<{ALERT_ID}@churnwatch.shop.example.com>").as_str()]
    );
    // Date is the alert's event time.
    assert_eq!(header(&h, "Date"), ["Sat, 01 Mar 2025 10:00:00 +0000"]);
    assert_eq!(
        header(&h, "From"),
        [r#""Example Shop" <care@shop.example.com>"#]
    );
    assert!(header(&h, "Reply-To").is_empty());
    let ct = header(&h, "Content-Type");
    assert_eq!(ct.len(), 1);
    assert!(ct[0].starts_with("multipart/alternative"), "{ct:?}");
    let boundary = ct[0]
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"')
        .to_string();
    let body = formatted.split_once("\r\n\r\n").unwrap().1;
    let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
    // preamble, text, html, closing "--"
    assert_eq!(parts.len(), 4, "{body}");
    assert!(
        parts[1].contains("Content-Type: text/plain; charset=utf-8"),
        "{}",
        parts[1]
    );
    assert!(
        parts[2].contains("Content-Type: text/html; charset=utf-8"),
        "{}",
        parts[2]
    );
    assert!(parts[3].starts_with("--"), "closing delimiter");
    assert!(!formatted.contains("List-Unsubscribe"), "no URL configured");
}

#[test]
fn list_unsubscribe_headers_when_a_url_is_configured() {
    let mut s = settings();
    s.unsubscribe_url = "https://shop.example.com/unsubscribe/{alert_id}".into();
    s.reply_to = "Care <care@shop.example.com>".into();
    let (formatted, _) = build(ctx("en", "Layla"), &s);
    let h = headers(&formatted);
    assert_eq!(
        header(&h, "List-Unsubscribe"),
        [format!("<https://shop.example.com/unsubscribe/{ALERT_ID}>").as_str()]
    );
    assert_eq!(
        header(&h, "List-Unsubscribe-Post"),
        ["List-Unsubscribe=One-Click"]
    );
    assert_eq!(header(&h, "Reply-To"), ["Care <care@shop.example.com>"]);
}

#[test]
fn the_same_alert_always_gives_the_same_bytes() {
    let s = settings();
    for locale in ["en", "ar"] {
        let (a, _) = build(ctx(locale, "ليلى حداد"), &s);
        let (b, _) = build(ctx(locale, "ليلى حداد"), &s);
        assert_eq!(a, b);
    }
}

#[test]
fn an_arabic_name_and_subject_are_encoded_not_raw() {
    let s = settings();
    let (formatted, _) = build(ctx("ar", "ليلى حداد"), &s);
    let head = formatted.split("\r\n\r\n").next().unwrap();
    assert!(head.is_ascii(), "headers must be 7-bit:\n{head}");
    let h = headers(&formatted);
    assert!(
        header(&h, "Subject")[0].contains("=?utf-8?"),
        "{:?}",
        header(&h, "Subject")
    );
}

// ---------------------------------------------------------------------------------------
// broken template sets

#[test]
fn a_misspelled_variable_fails_check_naming_the_file() {
    let (_dir, s) = scratch_templates();
    let file = s.templates_dir.join("winback_gentle").join("en.text.txt");
    let src = fs::read_to_string(&file).unwrap();
    fs::write(&file, src.replacen("{{ shop_name }}", "{{ shop_nmae }}", 1)).unwrap();
    let t = load(&s);
    let names = used_template_names();
    let problems = t.check(&names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains(&file.display().to_string()),
        "{}",
        problems[0]
    );
    assert!(problems[0].contains("undefined"), "{}", problems[0]);
}

#[test]
fn a_misspelled_variable_in_a_condition_fails_check_too() {
    let (_dir, s) = scratch_templates();
    let file = s.templates_dir.join("thank_you_loyal").join("ar.html");
    let src = fs::read_to_string(&file).unwrap();
    assert!(src.contains("{% if customer_name %}"));
    fs::write(
        &file,
        src.replace("{% if customer_name %}", "{% if customer_nam %}"),
    )
    .unwrap();
    let t = load(&s);
    let problems = t.check(&["thank_you_loyal"]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&file.display().to_string())),
        "{problems:#?}"
    );
}

#[test]
fn a_template_without_arabic_fails_check_naming_it() {
    let (_dir, s) = scratch_templates();
    let folder = s.templates_dir.join("winback_offer");
    for part in ["subject.txt", "text.txt", "html"] {
        fs::remove_file(folder.join(format!("ar.{part}"))).unwrap();
    }
    let t = load(&s);
    let names = used_template_names();
    let problems = t.check(&names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("winback_offer"), "{}", problems[0]);
    assert!(problems[0].contains("`ar`"), "{}", problems[0]);
}

#[test]
fn a_missing_part_fails_load_naming_it() {
    let (_dir, s) = scratch_templates();
    let folder = s.templates_dir.join("welcome_back");
    fs::remove_file(folder.join("en.html")).unwrap();
    let problems = Templates::load(&s).err().expect("load must fail");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("en.html"), "{}", problems[0]);
    assert!(
        problems[0].contains(&folder.display().to_string()),
        "{}",
        problems[0]
    );
}

#[test]
fn a_syntax_error_fails_load_naming_the_file() {
    let (_dir, s) = scratch_templates();
    let file = s
        .templates_dir
        .join("support_apology")
        .join("en.subject.txt");
    fs::write(&file, "{% if customer_name %}Sorry").unwrap();
    let problems = Templates::load(&s).err().expect("load must fail");
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&file.display().to_string())),
        "{problems:#?}"
    );
}

#[test]
fn a_template_the_config_uses_but_that_does_not_exist_fails_check() {
    let t = default_templates();
    let problems = t.check(&["winback_gentle", "welcome_home"]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("welcome_home"), "{}", problems[0]);
}

#[test]
fn a_missing_templates_folder_is_named() {
    let mut s = settings();
    s.templates_dir = PathBuf::from("/nonexistent/churnwatch-templates");
    let problems = Templates::load(&s).err().expect("load must fail");
    assert!(
        problems[0].contains("/nonexistent/churnwatch-templates"),
        "{problems:?}"
    );
}

#[test]
fn several_broken_files_are_all_reported() {
    let (_dir, s) = scratch_templates();
    fs::remove_file(s.templates_dir.join("welcome_back").join("ar.text.txt")).unwrap();
    fs::remove_file(
        s.templates_dir
            .join("frequency_drop")
            .join("en.subject.txt"),
    )
    .unwrap();
    let problems = Templates::load(&s).err().expect("load must fail");
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|p| p.contains("welcome_back") && p.contains("ar.text.txt")));
    assert!(problems
        .iter()
        .any(|p| p.contains("frequency_drop") && p.contains("en.subject.txt")));
}
#[test]
fn a_name_that_looks_like_addresses_adds_no_recipient() {
    let s = settings();
    for name in [
        "Eve <eve@evil.example>, Mallory",
        "x@evil.example",
        "a\"b, <c@evil.example>",
        "back\\slash; d@evil.example",
    ] {
        let (formatted, msg) = build(ctx("en", name), &s);
        let to: Vec<String> = msg.envelope().to().iter().map(|a| a.to_string()).collect();
        assert_eq!(to, ["layla@example.com"], "{name:?}");
        let h = headers(&formatted);
        let to_header = header(&h, "To");
        assert_eq!(to_header.len(), 1);
        assert!(
            to_header[0].ends_with("<layla@example.com>"),
            "{to_header:?}"
        );
        assert!(header(&h, "Cc").is_empty());
    }
}
