//! README "Input: limits and reject classes": input events. Every rejection has a class (for metrics) and a reason that
//! names the offending field; every valid shape parses into the right [`EventKind`].

use churnwatch::engine::clock::Stamp;
use churnwatch::event::{parse, Amount, Event, EventKind, ProfileUpdate, Reject, Severity};

// ---------------------------------------------------------------------------------------
// helpers

/// A JSON object with the four common fields plus `extra` (a JSON fragment without braces).
fn ev(kind: &str, extra: &str) -> String {
    let mut s = format!(
        r#"{{"event_id":"e-1","type":"{kind}","customer_id":"c1","occurred_at":"2025-03-01T10:00:00Z""#
    );
    if !extra.is_empty() {
        s.push(',');
        s.push_str(extra);
    }
    s.push('}');
    s
}

fn purchase(amount: &str, currency: &str) -> String {
    ev(
        "purchase",
        &format!(r#""order_id":"o1","amount":{amount},"currency":"{currency}""#),
    )
}

fn ok(json: &str) -> Event {
    match parse(json.as_bytes()) {
        Ok(e) => e,
        Err(r) => panic!("expected {json} to parse, got {}: {}", r.class, r.reason),
    }
}

fn rejected(json: impl AsRef<[u8]>) -> Reject {
    let bytes = json.as_ref();
    match parse(bytes) {
        Ok(e) => panic!(
            "expected {} to be rejected, parsed as {e:?}",
            String::from_utf8_lossy(bytes)
        ),
        Err(r) => r,
    }
}

/// Asserts the class and that the reason names `field` (as `` `field` ``).
fn assert_reject(json: impl AsRef<[u8]>, class: &str, field: &str) -> Reject {
    let r = rejected(json.as_ref());
    assert_eq!(
        r.class,
        class,
        "wrong class for {}: reason was {:?}",
        String::from_utf8_lossy(json.as_ref()),
        r.reason
    );
    let quoted = format!("`{field}`");
    assert!(
        r.reason.contains(&quoted),
        "reason {:?} does not name field {quoted}",
        r.reason
    );
    r
}

fn amount_of(json: &str) -> Amount {
    match ok(json).kind {
        EventKind::Purchase { amount, .. } | EventKind::Refund { amount } => amount,
        other => panic!("not a money event: {other:?}"),
    }
}

fn stamp(s: &str) -> Stamp {
    Stamp::parse_rfc3339(s).unwrap()
}

// ISO 4217 numeric codes.
const USD: u16 = 840;
const KWD: u16 = 414;
const JPY: u16 = 392;
const EUR: u16 = 978;

// ---------------------------------------------------------------------------------------
// not JSON / not an object

#[test]
fn not_json_is_invalid_json() {
    for bad in ["hello", "", "   ", "{event_id: 1}", "{'a': 1}", "}"] {
        let r = rejected(bad);
        assert_eq!(r.class, "invalid_json", "{bad:?}: {}", r.reason);
        assert!(!r.reason.is_empty());
    }
}

#[test]
fn truncated_json_is_invalid_json() {
    let full = purchase("\"12.50\"", "USD");
    for cut in [1, 10, full.len() / 2, full.len() - 1] {
        let r = rejected(&full[..cut]);
        assert_eq!(r.class, "invalid_json", "cut at {cut}: {}", r.reason);
        assert!(r.reason.contains("JSON"), "{}", r.reason);
    }
}

#[test]
fn json_that_is_not_an_object_is_rejected() {
    for bad in ["[1,2]", "42", "\"purchase\"", "null", "true", "  [ ]  "] {
        let r = rejected(bad);
        assert_eq!(r.class, "invalid_json", "{bad}: {}", r.reason);
        assert!(r.reason.contains("object"), "{bad}: {}", r.reason);
    }
}

#[test]
fn invalid_utf8_is_rejected_with_its_offset() {
    let mut bytes = ev("email_unsubscribed", "").into_bytes();
    // Replace a byte inside the customer id "c1" with a lone continuation byte.
    let pos = bytes
        .windows(4)
        .position(|w| w == b"\"c1\"")
        .expect("customer id in fixture")
        + 1;
    bytes[pos] = 0xff;
    let r = rejected(&bytes);
    assert_eq!(r.class, "invalid_json", "{}", r.reason);
    assert!(r.reason.contains("UTF-8"), "{}", r.reason);
    assert!(
        r.reason.contains(&pos.to_string()),
        "offset {pos} not in {}",
        r.reason
    );

    // A truncated multi-byte sequence (first two bytes of a three-byte char).
    let r = rejected(b"{\"event_id\":\"\xe2\x82\"}");
    assert_eq!(r.class, "invalid_json");
}

// ---------------------------------------------------------------------------------------
// required common fields

#[test]
fn each_missing_common_field_is_named() {
    let fields = [
        ("event_id", r#""event_id":"e-1""#),
        ("type", r#""type":"email_unsubscribed""#),
        ("customer_id", r#""customer_id":"c1""#),
        ("occurred_at", r#""occurred_at":"2025-03-01T10:00:00Z""#),
    ];
    for (missing, _) in fields {
        let body: Vec<&str> = fields
            .iter()
            .filter(|(f, _)| *f != missing)
            .map(|(_, kv)| *kv)
            .collect();
        let json = format!("{{{}}}", body.join(","));
        assert_reject(&json, "missing_field", missing);
        // null counts as absent
        let json = format!("{{{},\"{missing}\":null}}", body.join(","));
        assert_reject(&json, "missing_field", missing);
    }
    // The empty object names the first required field.
    assert_reject("{}", "missing_field", "event_id");
}

#[test]
fn empty_strings_count_as_missing() {
    for field in ["event_id", "type", "customer_id", "occurred_at"] {
        let json = ev("email_unsubscribed", "").replacen(
            &format!(r#""{field}":""#),
            &format!(r#""{field}":"", "was_{field}":""#),
            1,
        );
        let r = assert_reject(&json, "missing_field", field);
        assert!(r.reason.contains("empty"), "{}", r.reason);
    }
    // Type-specific required strings too.
    assert_reject(
        ev("purchase", r#""order_id":"","amount":"1","currency":"USD""#),
        "missing_field",
        "order_id",
    );
    assert_reject(
        ev("support_ticket_opened", r#""ticket_id":"""#),
        "missing_field",
        "ticket_id",
    );
    assert_reject(ev("email_bounced", r#""kind":"""#), "missing_field", "kind");
}

#[test]
fn type_specific_required_fields_are_named() {
    assert_reject(
        ev("purchase", r#""amount":"1","currency":"USD""#),
        "missing_field",
        "order_id",
    );
    assert_reject(
        ev("purchase", r#""order_id":"o","currency":"USD""#),
        "missing_field",
        "amount",
    );
    assert_reject(
        ev("purchase", r#""order_id":"o","amount":"1""#),
        "missing_field",
        "currency",
    );
    assert_reject(
        ev("refund", r#""amount":"1","currency":"USD""#),
        "missing_field",
        "order_id",
    );
    assert_reject(
        ev("refund", r#""order_id":"o","amount":null,"currency":"USD""#),
        "missing_field",
        "amount",
    );
    assert_reject(
        ev("support_ticket_opened", ""),
        "missing_field",
        "ticket_id",
    );
    assert_reject(
        ev("support_ticket_closed", ""),
        "missing_field",
        "ticket_id",
    );
    assert_reject(ev("satisfaction", ""), "missing_field", "score");
    assert_reject(ev("email_bounced", ""), "missing_field", "kind");
}

// ---------------------------------------------------------------------------------------
// wrong JSON types

#[test]
fn wrong_json_types_are_named() {
    // customer_id as a number: the reason names the field and shows the value.
    let json = r#"{"event_id":"e","type":"complaint","customer_id":632,"occurred_at":"2025-03-01T10:00:00Z"}"#;
    let r = assert_reject(json, "wrong_type", "customer_id");
    assert!(r.reason.contains("632"), "{}", r.reason);
    assert!(r.reason.contains("number"), "{}", r.reason);

    let json = r#"{"event_id":123,"type":"complaint","customer_id":"c","occurred_at":"2025-03-01T10:00:00Z"}"#;
    assert_reject(json, "wrong_type", "event_id");
    let json = r#"{"event_id":"e","type":["purchase"],"customer_id":"c","occurred_at":"2025-03-01T10:00:00Z"}"#;
    assert_reject(json, "wrong_type", "type");
    let json = r#"{"event_id":"e","type":"complaint","customer_id":"c","occurred_at":1744858410}"#;
    assert_reject(json, "wrong_type", "occurred_at");
    let json = r#"{"event_id":"e","type":"complaint","customer_id":{"id":"c"},"occurred_at":"2025-03-01T10:00:00Z"}"#;
    assert_reject(json, "wrong_type", "customer_id");

    // Optional fields, when present, must have the right type as well.
    assert_reject(
        ev("complaint", r#""ticket_id":7"#),
        "wrong_type",
        "ticket_id",
    );
    assert_reject(
        ev(
            "support_ticket_closed",
            r#""ticket_id":"t","resolved":"yes""#,
        ),
        "wrong_type",
        "resolved",
    );
    assert_reject(
        ev("customer_profile", r#""marketing_consent":"true""#),
        "wrong_type",
        "marketing_consent",
    );
    assert_reject(
        ev("customer_profile", r#""email":["a@b.c"]"#),
        "wrong_type",
        "email",
    );
    assert_reject(
        ev(
            "purchase",
            r#""order_id":"o","amount":"1","currency":"USD","categories":"books""#,
        ),
        "wrong_type",
        "categories",
    );
    assert_reject(
        ev(
            "purchase",
            r#""order_id":"o","amount":"1","currency":"USD","categories":[1,2]"#,
        ),
        "wrong_type",
        "categories",
    );
    assert_reject(
        ev(
            "purchase",
            r#""order_id":"o","amount":true,"currency":"USD""#,
        ),
        "wrong_type",
        "amount",
    );
    assert_reject(
        ev(
            "purchase",
            r#""order_id":"o","amount":{"v":1},"currency":"USD""#,
        ),
        "wrong_type",
        "amount",
    );
    assert_reject(
        ev("purchase", r#""order_id":"o","amount":"1","currency":840"#),
        "wrong_type",
        "currency",
    );
}

// ---------------------------------------------------------------------------------------
// type

#[test]
fn unknown_type_is_named() {
    let r = rejected(ev("wishlist_added", ""));
    assert_eq!(r.class, "unknown_type");
    assert!(r.reason.contains("`wishlist_added`"), "{}", r.reason);
    // Types are case-sensitive.
    assert_eq!(
        rejected(ev(
            "Purchase",
            r#""order_id":"o","amount":"1","currency":"USD""#
        ))
        .class,
        "unknown_type"
    );
    // A very long type is shown shortened, not echoed in full.
    let long = "x".repeat(5000);
    let r = rejected(ev(&long, ""));
    assert_eq!(r.class, "unknown_type");
    assert!(r.reason.len() < 300, "reason is {} bytes", r.reason.len());
}

// ---------------------------------------------------------------------------------------
// timestamps

#[test]
fn bad_timestamps_are_invalid_timestamp_naming_occurred_at() {
    for bad in [
        "2025-03-01T10:00:00",  // no offset
        "2025-03-01 10:00:00",  // no offset either
        "2025-13-45T00:00:00Z", // impossible date
        "2025-02-30T10:00:00Z", // 30 February
        "2025-03-01T25:00:00Z", // hour 25
        "yesterday",
        "1999-12-31T23:59:59Z", // before 2000
        "1970-01-01T00:00:00Z",
        "2025-03-01", // a date only
    ] {
        let json = ev("email_unsubscribed", "").replace("2025-03-01T10:00:00Z", bad);
        let r = assert_reject(&json, "invalid_timestamp", "occurred_at");
        assert!(
            r.reason.contains(bad),
            "reason {:?} does not show {bad:?}",
            r.reason
        );
    }
}

#[test]
fn offsets_are_converted_to_the_same_instant() {
    let utc = ok(&ev("email_unsubscribed", ""));
    for same in [
        "2025-03-01T13:00:00+03:00",
        "2025-03-01T05:30:00-04:30",
        "2025-03-01T10:00:00+00:00",
        "2025-03-01T10:00:00.000Z",
    ] {
        let e = ok(&ev("email_unsubscribed", "").replace("2025-03-01T10:00:00Z", same));
        assert_eq!(e.at, utc.at, "{same}");
    }
    assert_eq!(utc.at, stamp("2025-03-01T10:00:00Z"));
    assert_eq!(utc.at.to_rfc3339(), "2025-03-01T10:00:00Z");
    // and a different instant stays different
    let e =
        ok(&ev("email_unsubscribed", "")
            .replace("2025-03-01T10:00:00Z", "2025-03-01T10:00:00+03:00"));
    assert_eq!(e.at.to_rfc3339(), "2025-03-01T07:00:00Z");
}

/// The clock module documents its range as "2000-01-01 .. 2136-01-01" and the reject
/// reason says the same, but the first second of that range is refused.
#[test]
fn the_range_starts_just_after_2000_and_says_so() {
    let first =
        ok(&ev("email_unsubscribed", "").replace("2025-03-01T10:00:00Z", "2000-01-01T00:00:01Z"));
    assert_eq!(first.at.to_rfc3339(), "2000-01-01T00:00:01Z");
    let r = parse(
        ev("email_unsubscribed", "")
            .replace("2025-03-01T10:00:00Z", "2000-01-01T00:00:00Z")
            .as_bytes(),
    )
    .expect_err("the epoch itself is outside the range");
    assert!(
        r.reason.contains("after 2000-01-01T00:00:00Z"),
        "{}",
        r.reason
    );
}

// ---------------------------------------------------------------------------------------
// customer_id length (bytes, not characters)

#[test]
fn customer_id_longer_than_128_bytes_is_rejected() {
    let at_limit = "c".repeat(128);
    let e = ok(&ev("email_unsubscribed", "").replace("\"c1\"", &format!("\"{at_limit}\"")));
    assert_eq!(&*e.customer_id, at_limit.as_str());

    let over = "c".repeat(129);
    let r = assert_reject(
        ev("email_unsubscribed", "").replace("\"c1\"", &format!("\"{over}\"")),
        "invalid_value",
        "customer_id",
    );
    assert!(r.reason.contains("129"), "{}", r.reason);
    assert!(r.reason.contains("128"), "{}", r.reason);
}

#[test]
fn customer_id_limit_counts_utf8_bytes() {
    // 'ع' is 2 bytes in UTF-8: 70 chars = 140 bytes (rejected), 64 chars = 128 (accepted).
    let seventy: String = "ع".repeat(70);
    assert_eq!(seventy.len(), 140);
    let r = assert_reject(
        ev("email_unsubscribed", "").replace("\"c1\"", &format!("\"{seventy}\"")),
        "invalid_value",
        "customer_id",
    );
    assert!(r.reason.contains("140"), "{}", r.reason);

    let sixty_four: String = "ع".repeat(64);
    assert_eq!(sixty_four.len(), 128);
    let e = ok(&ev("email_unsubscribed", "").replace("\"c1\"", &format!("\"{sixty_four}\"")));
    assert_eq!(&*e.customer_id, sixty_four.as_str());

    // The limit applies to the decoded id, so JSON escapes do not inflate it.
    let escaped = "\\u0639".repeat(64);
    let e = ok(&ev("email_unsubscribed", "").replace("\"c1\"", &format!("\"{escaped}\"")));
    assert_eq!(&*e.customer_id, sixty_four.as_str());
}

// ---------------------------------------------------------------------------------------
// money

#[test]
fn negative_amounts_are_rejected() {
    for a in ["\"-5.00\"", "-12.5", "-1", "\"-0.01\""] {
        let r = assert_reject(purchase(a, "USD"), "invalid_value", "amount");
        assert!(r.reason.contains("non-negative"), "{a}: {}", r.reason);
    }
    assert_reject(
        ev("refund", r#""order_id":"o","amount":"-3","currency":"EUR""#),
        "invalid_value",
        "amount",
    );
}

#[test]
fn non_numeric_amounts_are_rejected() {
    for a in [
        "\"ten\"",
        "\"12,50\"",
        "\"\"",
        "\"1.2.3\"",
        "\"12.\"",
        "\"$12\"",
        "\"1 000\"",
    ] {
        let r = assert_reject(purchase(a, "USD"), "invalid_value", "amount");
        // The reason shows the value as sent.
        let shown = a.trim_matches('"');
        assert!(r.reason.contains(shown), "{a}: {}", r.reason);
    }
}

#[test]
fn decimals_follow_the_currency_exponent() {
    // USD has 2 decimals
    let r = assert_reject(purchase("\"1.234\"", "USD"), "invalid_value", "amount");
    assert!(r.reason.contains("2 decimal"), "{}", r.reason);
    assert!(r.reason.contains("USD"), "{}", r.reason);
    assert_eq!(
        amount_of(&purchase("\"1.230\"", "USD")),
        Amount {
            minor: 123,
            currency: USD
        }
    );
    assert_eq!(
        amount_of(&purchase("\"19.99\"", "USD")),
        Amount {
            minor: 1999,
            currency: USD
        }
    );
    assert_eq!(
        amount_of(&purchase("\"0\"", "USD")),
        Amount {
            minor: 0,
            currency: USD
        }
    );
    assert_eq!(
        amount_of(&purchase("\"7\"", "USD")),
        Amount {
            minor: 700,
            currency: USD
        }
    );
    // JSON numbers are read from their text, not through f64
    assert_eq!(
        amount_of(&purchase("42.5", "USD")),
        Amount {
            minor: 4250,
            currency: USD
        }
    );
    assert_eq!(
        amount_of(&purchase("0.29", "USD")),
        Amount {
            minor: 29,
            currency: USD
        }
    );
    assert_eq!(
        amount_of(&purchase("1500", "USD")),
        Amount {
            minor: 150000,
            currency: USD
        }
    );
    // KWD has 3
    assert_eq!(
        amount_of(&purchase("\"12.500\"", "KWD")),
        Amount {
            minor: 12500,
            currency: KWD
        }
    );
    assert_eq!(
        amount_of(&purchase("\"0.005\"", "KWD")),
        Amount {
            minor: 5,
            currency: KWD
        }
    );
    assert_reject(purchase("\"0.0005\"", "KWD"), "invalid_value", "amount");
    // JPY has none
    assert_eq!(
        amount_of(&purchase("\"1500\"", "JPY")),
        Amount {
            minor: 1500,
            currency: JPY
        }
    );
    assert_eq!(
        amount_of(&purchase("1500", "JPY")),
        Amount {
            minor: 1500,
            currency: JPY
        }
    );
    let r = assert_reject(purchase("\"1500.5\"", "JPY"), "invalid_value", "amount");
    assert!(r.reason.contains("JPY"), "{}", r.reason);
    // refunds use the same rules
    assert_eq!(
        amount_of(&ev(
            "refund",
            r#""order_id":"o","amount":"3.10","currency":"EUR""#
        )),
        Amount {
            minor: 310,
            currency: EUR
        }
    );
}

#[test]
fn absurdly_large_amounts_are_rejected_not_wrapped() {
    let r = assert_reject(
        purchase("\"99999999999999999999\"", "USD"),
        "invalid_value",
        "amount",
    );
    assert!(r.reason.contains("large"), "{}", r.reason);
    // The largest that fits in i64 minor units is still accepted.
    assert_eq!(
        amount_of(&purchase("\"92233720368547758.07\"", "USD")).minor,
        i64::MAX
    );
    assert_reject(
        purchase("\"92233720368547758.08\"", "USD"),
        "invalid_value",
        "amount",
    );
}

#[test]
fn unknown_currencies_are_rejected() {
    for c in ["DOLLARS", "US$", "XYZ", "usd", "€"] {
        let r = assert_reject(purchase("\"1.00\"", c), "invalid_value", "currency");
        assert!(r.reason.contains(c), "{c}: {}", r.reason);
        assert!(r.reason.contains("ISO 4217"), "{}", r.reason);
    }
}

// ---------------------------------------------------------------------------------------
// enumerations and ranges

#[test]
fn satisfaction_score_must_be_an_integer_from_1_to_5() {
    for s in ["0", "6", "7", "-1", "3.5", "256", "true"] {
        assert_reject(
            ev("satisfaction", &format!(r#""score":{s}"#)),
            "invalid_value",
            "score",
        );
    }
    // A string "5" is the wrong JSON type: rejected, naming the field and showing it is a string.
    let r = rejected(ev("satisfaction", r#""score":"5""#));
    assert!(
        matches!(r.class, "invalid_value" | "wrong_type"),
        "class {}",
        r.class
    );
    assert!(
        r.reason.contains("`score`") && r.reason.contains("string"),
        "{}",
        r.reason
    );
    for s in 1..=5u8 {
        match ok(&ev("satisfaction", &format!(r#""score":{s}"#))).kind {
            EventKind::Satisfaction { score, ticket_id } => {
                assert_eq!(score, s);
                assert_eq!(ticket_id, None);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn severity_must_be_low_normal_or_high() {
    for s in ["urgent", "critical", "HIGH", ""] {
        let r = assert_reject(
            ev(
                "support_ticket_opened",
                &format!(r#""ticket_id":"t","severity":"{s}""#),
            ),
            "invalid_value",
            "severity",
        );
        assert!(r.reason.contains(&format!("`{s}`")), "{}", r.reason);
    }
    for (s, want) in [
        ("low", Severity::Low),
        ("normal", Severity::Normal),
        ("high", Severity::High),
    ] {
        match ok(&ev(
            "support_ticket_opened",
            &format!(r#""ticket_id":"t","severity":"{s}""#),
        ))
        .kind
        {
            EventKind::TicketOpened { severity, .. } => assert_eq!(severity, want),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bounce_kind_must_be_hard_or_soft() {
    for k in ["medium", "temporary", "Hard"] {
        let r = assert_reject(
            ev("email_bounced", &format!(r#""kind":"{k}""#)),
            "invalid_value",
            "kind",
        );
        assert!(r.reason.contains(k), "{}", r.reason);
    }
    assert_reject(ev("email_bounced", r#""kind":true"#), "wrong_type", "kind");
    assert_eq!(
        ok(&ev("email_bounced", r#""kind":"hard""#)).kind,
        EventKind::Bounced { hard: true }
    );
    assert_eq!(
        ok(&ev("email_bounced", r#""kind":"soft""#)).kind,
        EventKind::Bounced { hard: false }
    );
}

#[test]
fn timezone_must_be_iana() {
    for tz in ["Mars/Olympus_Mons", "GMT+25", "Europe/Londn", "not a zone"] {
        let r = assert_reject(
            ev("customer_profile", &format!(r#""timezone":"{tz}""#)),
            "invalid_value",
            "timezone",
        );
        assert!(r.reason.contains(tz), "{}", r.reason);
    }
    for tz in ["Asia/Dubai", "Europe/London", "America/New_York", "UTC"] {
        match ok(&ev("customer_profile", &format!(r#""timezone":"{tz}""#))).kind {
            EventKind::Profile(p) => assert_eq!(p.timezone.as_deref(), Some(tz)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn locale_must_be_bcp47() {
    for l in [
        "english!",
        "en_GB",
        "en--GB",
        "-en",
        "en-",
        "",
        "a-verylongsubtag",
        "ar SA",
    ] {
        let r = rejected(ev("customer_profile", &format!(r#""locale":"{l}""#)));
        assert_eq!(r.class, "invalid_value", "{l:?}: {}", r.reason);
        assert!(r.reason.contains("`locale`"), "{}", r.reason);
    }
    for l in ["ar", "en-GB", "ar-SA", "zh-Hant-TW", "fr"] {
        match ok(&ev("customer_profile", &format!(r#""locale":"{l}""#))).kind {
            EventKind::Profile(p) => assert_eq!(p.locale.as_deref(), Some(l)),
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// valid events of every type

#[test]
fn valid_events_of_every_type_parse() {
    let e = ok(&ev(
        "purchase",
        r#""order_id":"o1","amount":"19.99","currency":"USD","categories":["books","toys"]"#,
    ));
    assert_eq!(&*e.customer_id, "c1");
    assert_eq!(e.at, stamp("2025-03-01T10:00:00Z"));
    assert_eq!(
        e.kind,
        EventKind::Purchase {
            amount: Amount {
                minor: 1999,
                currency: USD
            },
            categories: vec!["books".into(), "toys".into()],
        }
    );
    assert_eq!(e.kind.type_name(), "purchase");

    assert_eq!(
        ok(&ev(
            "refund",
            r#""order_id":"o1","amount":5,"currency":"USD""#
        ))
        .kind,
        EventKind::Refund {
            amount: Amount {
                minor: 500,
                currency: USD
            }
        }
    );
    assert_eq!(
        ok(&ev(
            "support_ticket_opened",
            r#""ticket_id":"t1","subject":"broken""#
        ))
        .kind,
        EventKind::TicketOpened {
            ticket_id: "t1".into(),
            severity: Severity::Normal
        }
    );
    assert_eq!(
        ok(&ev("support_ticket_closed", r#""ticket_id":"t1""#)).kind,
        EventKind::TicketClosed {
            ticket_id: "t1".into(),
            resolved: true
        }
    );
    assert_eq!(
        ok(&ev(
            "support_ticket_closed",
            r#""ticket_id":"t1","resolved":false"#
        ))
        .kind,
        EventKind::TicketClosed {
            ticket_id: "t1".into(),
            resolved: false
        }
    );
    assert_eq!(
        ok(&ev("complaint", r#""text":"late again""#)).kind,
        EventKind::Complaint { ticket_id: None }
    );
    assert_eq!(
        ok(&ev("complaint", r#""ticket_id":"t9""#)).kind,
        EventKind::Complaint {
            ticket_id: Some("t9".into())
        }
    );
    assert_eq!(
        ok(&ev("satisfaction", r#""score":2,"ticket_id":"t1""#)).kind,
        EventKind::Satisfaction {
            score: 2,
            ticket_id: Some("t1".into())
        }
    );
    assert_eq!(
        ok(&ev(
            "customer_profile",
            r#""email":"a@example.com","name":"Ali","locale":"ar","timezone":"Asia/Riyadh","marketing_consent":true"#
        ))
        .kind,
        EventKind::Profile(ProfileUpdate {
            email: Some("a@example.com".into()),
            name: Some("Ali".into()),
            locale: Some("ar".into()),
            timezone: Some("Asia/Riyadh".into()),
            marketing_consent: Some(true),
        })
    );
    assert_eq!(
        ok(&ev("customer_profile", "")).kind,
        EventKind::Profile(ProfileUpdate::default())
    );
    assert_eq!(
        ok(&ev("email_unsubscribed", r#""reason":"too many""#)).kind,
        EventKind::Unsubscribed
    );
    assert_eq!(
        ok(&ev("email_bounced", r#""kind":"hard""#)).kind,
        EventKind::Bounced { hard: true }
    );
    assert_eq!(ok(&ev("customer_erased", "")).kind, EventKind::Erased);
}

#[test]
fn null_optional_fields_are_absent() {
    assert_eq!(
        ok(&ev(
            "purchase",
            r#""order_id":"o","amount":"1","currency":"USD","categories":null"#
        ))
        .kind,
        EventKind::Purchase {
            amount: Amount {
                minor: 100,
                currency: USD
            },
            categories: vec![]
        }
    );
    assert_eq!(
        ok(&ev(
            "support_ticket_opened",
            r#""ticket_id":"t","severity":null"#
        ))
        .kind,
        EventKind::TicketOpened {
            ticket_id: "t".into(),
            severity: Severity::Normal
        }
    );
    assert_eq!(
        ok(&ev(
            "support_ticket_closed",
            r#""ticket_id":"t","resolved":null"#
        ))
        .kind,
        EventKind::TicketClosed {
            ticket_id: "t".into(),
            resolved: true
        }
    );
    assert_eq!(
        ok(&ev("complaint", r#""ticket_id":null"#)).kind,
        EventKind::Complaint { ticket_id: None }
    );
    assert_eq!(
        ok(&ev(
            "customer_profile",
            r#""email":null,"name":null,"locale":null,"timezone":null,"marketing_consent":null"#
        ))
        .kind,
        EventKind::Profile(ProfileUpdate::default())
    );
}

#[test]
fn unknown_extra_fields_are_ignored() {
    let plain = ok(&purchase("\"2.00\"", "USD"));
    let extra = ok(&ev(
        "purchase",
        r#""order_id":"o1","amount":"2.00","currency":"USD","channel":"web","meta":{"a":[1,{"b":null}]},"v":2,"score":"irrelevant""#,
    ));
    assert_eq!(plain, extra);
    // Field order and whitespace do not matter either.
    let reordered = ok(r#"
        { "currency" : "USD", "amount" : "2.00", "order_id" : "o1",
          "occurred_at" : "2025-03-01T10:00:00Z", "customer_id" : "c1",
          "type" : "purchase", "event_id" : "e-1" }
    "#);
    assert_eq!(plain, reordered);
}

#[test]
fn event_id_hash_is_stable_and_distinguishes_ids() {
    let a = ok(&ev("email_unsubscribed", ""));
    let b = ok(&ev("email_unsubscribed", ""));
    assert_eq!(a.id_hash, b.id_hash);
    let c = ok(&ev("email_unsubscribed", "").replace("\"e-1\"", "\"e-2\""));
    assert_ne!(a.id_hash, c.id_hash);
    assert_eq!(a.id_hash, churnwatch::event::hash_event_id("e-1"));
}

#[test]
fn escaped_strings_are_decoded() {
    let e = ok(
        r#"{"event_id":"e","type":"customer_profile","customer_id":"c\"1\\","occurred_at":"2025-03-01T10:00:00Z","name":"Zo\u00e9 \"Z\""}"#,
    );
    assert_eq!(&*e.customer_id, "c\"1\\");
    match e.kind {
        EventKind::Profile(p) => assert_eq!(p.name.as_deref(), Some("Zoé \"Z\"")),
        other => panic!("{other:?}"),
    }
}

/// Every line of the bundled example either parses or is rejected with a reason; none
/// panics, and the count of rejects matches what the example generator planted.
#[test]
fn bundled_example_has_34_rejects_and_every_reason_names_something() {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/events.jsonl"
    ))
    .unwrap();
    let mut rejects = 0;
    let mut parsed = 0;
    for line in text
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
    {
        match parse(line) {
            Ok(_) => parsed += 1,
            Err(r) => {
                rejects += 1;
                assert!(
                    [
                        "invalid_json",
                        "wrong_type",
                        "missing_field",
                        "invalid_value",
                        "invalid_timestamp",
                        "unknown_type"
                    ]
                    .contains(&r.class),
                    "unexpected class {}",
                    r.class
                );
                assert!(r.reason.len() >= 10, "terse reason {:?}", r.reason);
            }
        }
    }
    assert_eq!(rejects, 34);
    assert!(parsed > 40_000, "{parsed}");
}
