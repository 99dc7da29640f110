//! Input events (SPEC §2): JSON → [`Event`], or a [`Reject`] saying which field was wrong.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::clock::Stamp;

/// Longest accepted `customer_id`, in bytes.
pub const MAX_CUSTOMER_ID: usize = 128;

/// One validated input event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// 64-bit hash of `event_id` (stable across processes), for de-duplication.
    pub id_hash: u64,
    /// The customer the event is about (the Kafka record key).
    pub customer_id: Box<str>,
    /// When it happened (event time).
    pub at: Stamp,
    /// What happened.
    pub kind: EventKind,
}

/// A money amount in integer minor units of its currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount {
    /// Minor units (cents for USD, fils for KWD, yen for JPY).
    pub minor: i64,
    /// ISO 4217 numeric code.
    pub currency: u16,
}

/// Severity of a support ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// `low`
    Low,
    /// `normal` (the default)
    Normal,
    /// `high`
    High,
}

/// Profile fields; `None` leaves the stored value unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileUpdate {
    /// Email address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// BCP 47 locale such as `ar` or `en-GB`.
    pub locale: Option<String>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// Whether marketing email is allowed.
    pub marketing_consent: Option<bool>,
}

/// The type-specific part of an event.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// An order was placed.
    Purchase {
        /// Order amount.
        amount: Amount,
        /// Product categories of the order.
        categories: Vec<Box<str>>,
    },
    /// Money went back to the customer.
    Refund {
        /// Refunded amount.
        amount: Amount,
    },
    /// A support ticket was opened.
    TicketOpened {
        /// Ticket id.
        ticket_id: Box<str>,
        /// Severity (default `normal`).
        severity: Severity,
    },
    /// A support ticket was closed.
    TicketClosed {
        /// Ticket id.
        ticket_id: Box<str>,
        /// Whether the problem was solved (default true).
        resolved: bool,
    },
    /// The customer complained.
    Complaint {
        /// The ticket it belongs to, if any.
        ticket_id: Option<Box<str>>,
    },
    /// A satisfaction survey answer.
    Satisfaction {
        /// Score 1..=5.
        score: u8,
        /// The ticket it rates, if any.
        ticket_id: Option<Box<str>>,
    },
    /// Contact data and preferences.
    Profile(ProfileUpdate),
    /// The customer unsubscribed from email.
    Unsubscribed,
    /// An email to the customer bounced.
    Bounced {
        /// `true` for a hard (permanent) bounce.
        hard: bool,
    },
    /// Right to erasure: forget the customer.
    Erased,
}

impl EventKind {
    /// The `type` string of this kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Purchase { .. } => "purchase",
            EventKind::Refund { .. } => "refund",
            EventKind::TicketOpened { .. } => "support_ticket_opened",
            EventKind::TicketClosed { .. } => "support_ticket_closed",
            EventKind::Complaint { .. } => "complaint",
            EventKind::Satisfaction { .. } => "satisfaction",
            EventKind::Profile(_) => "customer_profile",
            EventKind::Unsubscribed => "email_unsubscribed",
            EventKind::Bounced { .. } => "email_bounced",
            EventKind::Erased => "customer_erased",
        }
    }
}

/// Every event type, in SPEC order (used for summaries and metrics).
pub const EVENT_TYPES: [&str; 10] = [
    "purchase",
    "refund",
    "support_ticket_opened",
    "support_ticket_closed",
    "complaint",
    "satisfaction",
    "customer_profile",
    "email_unsubscribed",
    "email_bounced",
    "customer_erased",
];

/// Why an input record was rejected; the text is meant for a human.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Reject {
    /// Short machine-friendly class (`invalid_json`, `missing_field`, …) for metrics.
    pub class: &'static str,
    /// Which field, what was wrong.
    pub reason: String,
}

impl Reject {
    fn new(class: &'static str, reason: impl Into<String>) -> Reject {
        Reject {
            class,
            reason: reason.into(),
        }
    }
}

/// The wire shape of the fast path: every known field typed, strings borrowed from the
/// input when they hold no escapes. Unknown fields are skipped.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type", deserialize_with = "opt_cow")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    occurred_at: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    order_id: Option<Cow<'a, str>>,
    /// A decimal string or a number: kept raw and read by [`amount`].
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    categories: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    ticket_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    severity: Option<Cow<'a, str>>,
    #[serde(default)]
    resolved: Option<bool>,
    /// Kept raw so that `"5"` gets a message about the value, not a type.
    #[serde(borrow, default)]
    score: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    locale: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    timezone: Option<Cow<'a, str>>,
    #[serde(default)]
    marketing_consent: Option<bool>,
    #[serde(borrow, default, rename = "kind", deserialize_with = "opt_cow")]
    bounce_kind: Option<Cow<'a, str>>,
}

/// Deserializes an optional string borrowing from the input when it has no escapes
/// (serde's own `Option<Cow<str>>` always copies).
fn opt_cow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Str;
    impl<'de> serde::de::Visitor<'de> for Str {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Str).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

/// The expected JSON kind of each known field, for explaining a type error.
const FIELD_KINDS: [(&str, Kind); 18] = [
    ("event_id", Kind::Str),
    ("type", Kind::Str),
    ("customer_id", Kind::Str),
    ("occurred_at", Kind::Str),
    ("order_id", Kind::Str),
    ("amount", Kind::StrOrNumber),
    ("currency", Kind::Str),
    ("categories", Kind::StrList),
    ("ticket_id", Kind::Str),
    ("severity", Kind::Str),
    ("resolved", Kind::Bool),
    ("score", Kind::Any),
    ("email", Kind::Str),
    ("name", Kind::Str),
    ("locale", Kind::Str),
    ("timezone", Kind::Str),
    ("marketing_consent", Kind::Bool),
    ("kind", Kind::Str),
];

#[derive(Clone, Copy)]
enum Kind {
    Str,
    StrOrNumber,
    StrList,
    Bool,
    Any,
}

impl Kind {
    fn accepts(self, raw: &RawValue) -> bool {
        let first = raw.get().as_bytes().first().copied();
        match self {
            Kind::Any => true,
            _ if raw.get() == "null" => true,
            Kind::Str => first == Some(b'"'),
            Kind::StrOrNumber => matches!(first, Some(b'"' | b'-' | b'0'..=b'9')),
            Kind::Bool => matches!(raw.get(), "true" | "false"),
            Kind::StrList => serde_json::from_str::<Vec<Cow<'_, str>>>(raw.get()).is_ok(),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::StrOrNumber => "a decimal string or number",
            Kind::StrList => "an array of strings",
            Kind::Bool => "true or false",
            Kind::Any => "a JSON value",
        }
    }
}

fn describe(raw: &RawValue) -> String {
    let s = raw.get();
    let kind = match s.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    let mut shown: String = s.chars().take(40).collect();
    if shown.len() < s.len() {
        shown.push('…');
    }
    format!("{kind} ({shown})")
}

/// Explains why the typed parse failed: the slow path, taken only for bad input.
fn diagnose(text: &str, fallback: serde_json::Error) -> Reject {
    let fields: BTreeMap<&str, &RawValue> = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let class = if e.is_data() {
                "wrong_type"
            } else {
                "invalid_json"
            };
            return Reject::new(class, format!("invalid JSON: {e}"));
        }
    };
    for (name, kind) in FIELD_KINDS {
        if let Some(raw) = fields.get(name) {
            if !kind.accepts(raw) {
                return Reject::new(
                    "wrong_type",
                    format!(
                        "field `{name}` must be {}, got {}",
                        kind.expected(),
                        describe(raw)
                    ),
                );
            }
        }
    }
    Reject::new("wrong_type", format!("invalid event: {fallback}"))
}

fn required<'a>(field: &str, value: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, Reject> {
    match value {
        None => Err(Reject::new(
            "missing_field",
            format!("missing field `{field}`"),
        )),
        Some(s) if s.is_empty() => Err(Reject::new(
            "missing_field",
            format!("field `{field}` is empty"),
        )),
        Some(s) => Ok(s),
    }
}

/// Parses a plain decimal (`"19.99"`, `42.5`, `1500`) into minor units with `exp` decimals.
fn parse_minor(text: &str, exp: u32) -> Result<i64, String> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be a non-negative decimal like \"19.99\"".into());
    }
    if text.contains('.') && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit())) {
        return Err("must be a non-negative decimal like \"19.99\"".into());
    }
    let exp_us = exp as usize;
    let (kept, extra) = if frac.len() > exp_us {
        frac.split_at(exp_us)
    } else {
        (frac, "")
    };
    if extra.bytes().any(|b| b != b'0') {
        return Err(format!("has more than {exp} decimal places"));
    }
    let mut minor: i64 = 0;
    let digits = int
        .bytes()
        .chain(kept.bytes())
        .chain(std::iter::repeat_n(b'0', exp_us - kept.len()));
    for b in digits {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or_else(|| "is too large".to_string())?;
    }
    Ok(minor)
}

fn amount(raw: Option<&RawValue>, currency: Option<Cow<'_, str>>) -> Result<Amount, Reject> {
    let code = required("currency", currency)?;
    let currency = iso_currency::Currency::from_code(&code).ok_or_else(|| {
        Reject::new(
            "invalid_value",
            format!("field `currency`: `{code}` is not an ISO 4217 currency code"),
        )
    })?;
    let exp = u32::from(currency.exponent().unwrap_or(0));
    let raw = raw
        .filter(|r| r.get() != "null")
        .ok_or_else(|| Reject::new("missing_field", "missing field `amount`"))?;
    let text: Cow<'_, str> = match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str(raw.get()).map_err(|_| {
            Reject::new(
                "wrong_type",
                format!(
                    "field `amount` must be a decimal string or number, got {}",
                    describe(raw)
                ),
            )
        })?,
        Some(b'-' | b'0'..=b'9') => Cow::Borrowed(raw.get()),
        _ => {
            return Err(Reject::new(
                "wrong_type",
                format!(
                    "field `amount` must be a decimal string or number, got {}",
                    describe(raw)
                ),
            ))
        }
    };
    let minor = parse_minor(text.trim(), exp).map_err(|why| {
        Reject::new(
            "invalid_value",
            format!("field `amount` ({text}) {why} for {}", currency.code()),
        )
    })?;
    Ok(Amount {
        minor,
        currency: currency.numeric(),
    })
}

/// Stable 64-bit hash of an event id (xxh3, seedless, so it survives restarts).
pub fn hash_event_id(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// Parses one input record (a Kafka value or a JSONL line) into an [`Event`].
pub fn parse(bytes: &[u8]) -> Result<Event, Reject> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Reject::new(
            "invalid_json",
            format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })?;
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        return Err(Reject::new("invalid_json", "not a JSON object"));
    }
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            diagnose(text, e)
        } else {
            Reject::new("invalid_json", format!("invalid JSON: {e}"))
        }
    })?;
    build(wire)
}

fn build(w: Wire<'_>) -> Result<Event, Reject> {
    let event_id = required("event_id", w.event_id)?;
    let type_name = required("type", w.kind)?;
    let customer_id = required("customer_id", w.customer_id)?;
    if customer_id.len() > MAX_CUSTOMER_ID {
        return Err(Reject::new(
            "invalid_value",
            format!(
                "field `customer_id` is {} bytes, longer than the limit of {MAX_CUSTOMER_ID}",
                customer_id.len()
            ),
        ));
    }
    let occurred_at = required("occurred_at", w.occurred_at)?;
    let at = Stamp::parse_rfc3339(&occurred_at).map_err(|why| {
        Reject::new(
            "invalid_timestamp",
            format!("field `occurred_at` (`{occurred_at}`): {why}"),
        )
    })?;
    let kind = match &*type_name {
        "purchase" => {
            required("order_id", w.order_id)?;
            EventKind::Purchase {
                amount: amount(w.amount, w.currency)?,
                categories: w
                    .categories
                    .unwrap_or_default()
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            }
        }
        "refund" => {
            required("order_id", w.order_id)?;
            EventKind::Refund {
                amount: amount(w.amount, w.currency)?,
            }
        }
        "support_ticket_opened" => {
            let severity = match w.severity.as_deref() {
                None | Some("normal") => Severity::Normal,
                Some("low") => Severity::Low,
                Some("high") => Severity::High,
                Some(other) => {
                    return Err(Reject::new(
                        "invalid_value",
                        format!("field `severity` must be low, normal or high, got `{other}`"),
                    ))
                }
            };
            EventKind::TicketOpened {
                ticket_id: required("ticket_id", w.ticket_id)?.into(),
                severity,
            }
        }
        "support_ticket_closed" => EventKind::TicketClosed {
            ticket_id: required("ticket_id", w.ticket_id)?.into(),
            resolved: w.resolved.unwrap_or(true),
        },
        "complaint" => EventKind::Complaint {
            ticket_id: w.ticket_id.map(Into::into),
        },
        "satisfaction" => {
            let raw = w
                .score
                .filter(|r| r.get() != "null")
                .ok_or_else(|| Reject::new("missing_field", "missing field `score`"))?;
            let score = raw
                .get()
                .parse::<u8>()
                .ok()
                .filter(|s| (1..=5).contains(s))
                .ok_or_else(|| {
                    Reject::new(
                        "invalid_value",
                        format!(
                            "field `score` must be an integer 1..5, got {}",
                            describe(raw)
                        ),
                    )
                })?;
            EventKind::Satisfaction {
                score,
                ticket_id: w.ticket_id.map(Into::into),
            }
        }
        "customer_profile" => {
            if let Some(tz) = &w.timezone {
                if jiff::tz::TimeZone::get(tz).is_err() {
                    return Err(Reject::new(
                        "invalid_value",
                        format!("field `timezone`: `{tz}` is not an IANA time zone"),
                    ));
                }
            }
            if let Some(l) = &w.locale {
                let ok = !l.is_empty()
                    && l.len() <= 35
                    && l.split('-').all(|p| {
                        !p.is_empty()
                            && p.len() <= 8
                            && p.bytes().all(|b| b.is_ascii_alphanumeric())
                    });
                if !ok {
                    return Err(Reject::new(
                        "invalid_value",
                        format!("field `locale`: `{l}` is not a BCP 47 tag like `en-GB`"),
                    ));
                }
            }
            EventKind::Profile(ProfileUpdate {
                email: w.email.map(Cow::into_owned),
                name: w.name.map(Cow::into_owned),
                locale: w.locale.map(Cow::into_owned),
                timezone: w.timezone.map(Cow::into_owned),
                marketing_consent: w.marketing_consent,
            })
        }
        "email_unsubscribed" => EventKind::Unsubscribed,
        "email_bounced" => {
            let kind = required("kind", w.bounce_kind)?;
            let hard = match &*kind {
                "hard" => true,
                "soft" => false,
                other => {
                    return Err(Reject::new(
                        "invalid_value",
                        format!("field `kind` must be hard or soft, got `{other}`"),
                    ))
                }
            };
            EventKind::Bounced { hard }
        }
        "customer_erased" => EventKind::Erased,
        other => {
            let mut shown: String = other.chars().take(60).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(Reject::new(
                "unknown_type",
                format!("unknown event type `{shown}`"),
            ));
        }
    };
    Ok(Event {
        id_hash: hash_event_id(&event_id),
        customer_id: customer_id.into(),
        at,
        kind,
    })
}
