//! Input events (docs/design.md §3 Input): JSON → [`Event`], or a [`Reject`] saying which field was wrong.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::clock::Stamp;

/// Longest accepted `customer_id`, in bytes.
pub const MAX_CUSTOMER_ID: usize = 128;

/// Longest accepted `event_id`, `order_id` or `ticket_id`, in bytes (ticket ids are kept
/// in hot state while the ticket is open, so they must stay small).
pub const MAX_ID: usize = 256;

/// Most categories a purchase may name.
pub const MAX_CATEGORIES: usize = 32;

/// Longest accepted category name, in bytes.
pub const MAX_CATEGORY: usize = 128;

/// Longest accepted `name`, in bytes (it reaches the `To:` header).
pub const MAX_NAME: usize = 256;

/// Longest accepted `email`, in bytes (RFC 5321 allows 254 in a path).
pub const MAX_EMAIL: usize = 254;

/// Longest reject reason, in bytes: reasons go to logs and dead-letter headers.
pub const MAX_REASON: usize = 300;

/// Limits applied to every input record before and after parsing, the same in every
/// mode (`run`, `replay`, `simulate`): see the README's "Input" section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest record (a Kafka value or a JSONL line without its newline), in bytes.
    pub max_event_bytes: usize,
    /// How far past the wall clock an event's `occurred_at` may be, in seconds.
    pub max_future_skew: crate::engine::clock::Secs,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_event_bytes: 64 * 1024,
            max_future_skew: 3600,
        }
    }
}

impl Limits {
    /// The `too_large` reject of a record of `len` bytes, if it is longer than allowed.
    pub fn check_size(&self, len: usize) -> Result<(), Reject> {
        if len > self.max_event_bytes {
            return Err(Reject::new(
                "too_large",
                format!(
                    "record is {len} bytes, longer than engine.max_event_bytes ({})",
                    self.max_event_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The `future_timestamp` reject of an event later than `now` plus the allowed skew:
    /// one such event must never move a task's clock (it would expire every other
    /// customer and mark every pending email stale).
    pub fn check_time(&self, ev: &Event, now: Stamp) -> Result<(), Reject> {
        let ceiling = now.plus(self.max_future_skew);
        if ev.at > ceiling {
            return Err(Reject::new(
                "future_timestamp",
                format!(
                    "field `occurred_at` ({}) is later than the wall clock plus \
                     engine.max_future_skew ({})",
                    ev.at.to_rfc3339(),
                    ceiling.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }

    /// Parses one record under these limits, with `now` the wall clock.
    pub fn parse(&self, bytes: &[u8], now: Stamp) -> Result<Event, Reject> {
        self.check_size(bytes.len())?;
        let ev = parse(bytes)?;
        self.check_time(&ev, now)?;
        Ok(ev)
    }
}

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

/// Every event type, in the order of the README event table (used for summaries and metrics).
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
    /// A reject of `class`; the reason is cut to [`MAX_REASON`] bytes.
    pub fn new(class: &'static str, reason: impl Into<String>) -> Reject {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON - '…'.len_utf8();
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        Reject { class, reason }
    }
}

/// Fields whose values are personal data: never quoted in a reason.
const PERSONAL: [&str; 2] = ["email", "name"];

/// A value as shown in a reason: at most 40 characters, control characters escaped, so
/// a reason stays one short line whatever the input.
fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 40 {
            out.push('…');
            break;
        }
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Bidirectional formatting characters (embeddings, overrides, isolates and marks): in
/// an id they make two different ids look alike, in a header they reorder what is shown.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}') || is_bidi_override(c)
}

/// Bidi embeddings, overrides and isolates: unlike the marks, never needed in a name.
fn is_bidi_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks a field: at most `max` bytes, and no character that `bad` names (the value is
/// not quoted: it may be personal data).
fn clean(field: &str, s: &str, max: usize, bad: fn(char) -> bool) -> Result<(), Reject> {
    if s.len() > max {
        return Err(Reject::new(
            "invalid_value",
            format!(
                "field `{field}` is {} bytes, longer than the limit of {max}",
                s.len()
            ),
        ));
    }
    // Printable ASCII (nearly every value) needs no character decoding.
    let plain = s.bytes().all(|b| (0x20..0x7F).contains(&b));
    if !plain && s.chars().any(bad) {
        return Err(Reject::new(
            "invalid_value",
            format!("field `{field}` contains a control character or a bidi override"),
        ));
    }
    Ok(())
}

/// Checks an identifier: no control characters or bidi controls, at most `max` bytes.
fn clean_id(field: &str, s: &str, max: usize) -> Result<(), Reject> {
    clean(field, s, max, |c| c.is_control() || is_bidi_control(c))
}

/// A display name as kept: line breaks, tabs and other controls become one space, bidi
/// embeddings, overrides and isolates are dropped (marks such as U+200F stay: Arabic
/// names use them), and it is cut to [`MAX_NAME`] bytes. A name is shown, not matched,
/// so a producer's stray tab costs the customer nothing, and the profile's other fields
/// still count.
pub fn neutral_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_NAME));
    for word in s
        .chars()
        .filter(|c| !is_bidi_override(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
    {
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + word.len() > MAX_NAME {
            break;
        }
        if sep == 1 {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Checks an address: no control characters and no bidi embeddings, overrides or
/// isolates, at most `max` bytes.
fn clean_text(field: &str, s: &str, max: usize) -> Result<(), Reject> {
    clean(field, s, max, |c| c.is_control() || is_bidi_override(c))
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
    describe_field("", raw)
}

/// The JSON kind of a value and, unless `field` is personal data, its first characters.
fn describe_field(field: &str, raw: &RawValue) -> String {
    let s = raw.get();
    let kind = match s.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    if PERSONAL.contains(&field) {
        return kind.to_string();
    }
    format!("{kind} ({})", shown(s))
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
            return Reject::new(class, json_error(&e));
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
                        describe_field(name, raw)
                    ),
                );
            }
        }
    }
    Reject::new("wrong_type", json_error(&fallback))
}

/// A JSON error without the value serde quotes for data errors (it may be personal).
fn json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => format!(
            "invalid event: a field has the wrong type or value (line {} column {})",
            e.line(),
            e.column()
        ),
        _ => format!("invalid JSON: {e}"),
    }
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
            format!(
                "field `currency`: `{}` is not an ISO 4217 currency code",
                shown(&code)
            ),
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
            format!(
                "field `amount` ({}) {why} for {}",
                shown(&text),
                currency.code()
            ),
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
            Reject::new("invalid_json", json_error(&e))
        }
    })?;
    build(wire)
}

/// The typed wire shape as an event: the fields every event has, checked in the order
/// a producer reads the reasons, then the part its `type` names.
fn build(mut w: Wire<'_>) -> Result<Event, Reject> {
    let event_id = required("event_id", w.event_id.take())?;
    let type_name = required("type", w.kind.take())?;
    let customer_id = required("customer_id", w.customer_id.take())?;
    clean_ids(&event_id, &customer_id, &w)?;
    let at = occurred_at(w.occurred_at.take())?;
    let kind = kind(&type_name, w)?;
    Ok(Event {
        id_hash: hash_event_id(&event_id),
        customer_id: customer_id.into(),
        at,
        kind,
    })
}

/// Every id of the event, before its type is looked at: a bad id is refused whatever
/// the event says.
fn clean_ids(event_id: &str, customer_id: &str, w: &Wire<'_>) -> Result<(), Reject> {
    clean_id("event_id", event_id, MAX_ID)?;
    clean_id("customer_id", customer_id, MAX_CUSTOMER_ID)?;
    for (field, id) in [("order_id", &w.order_id), ("ticket_id", &w.ticket_id)] {
        if let Some(id) = id {
            clean_id(field, id, MAX_ID)?;
        }
    }
    Ok(())
}

/// The event time, the clock every rule runs on (docs/design.md §5 Clock).
fn occurred_at(value: Option<Cow<'_, str>>) -> Result<Stamp, Reject> {
    let occurred_at = required("occurred_at", value)?;
    Stamp::parse_rfc3339(&occurred_at).map_err(|why| {
        Reject::new(
            "invalid_timestamp",
            format!("field `occurred_at` (`{}`): {why}", shown(&occurred_at)),
        )
    })
}

/// The type-specific part: each type reads only its own fields.
fn kind(type_name: &str, w: Wire<'_>) -> Result<EventKind, Reject> {
    Ok(match type_name {
        "purchase" => purchase(w)?,
        "refund" => {
            required("order_id", w.order_id)?;
            EventKind::Refund {
                amount: amount(w.amount, w.currency)?,
            }
        }
        "support_ticket_opened" => EventKind::TicketOpened {
            severity: severity(w.severity.as_deref())?,
            ticket_id: required("ticket_id", w.ticket_id)?.into(),
        },
        "support_ticket_closed" => EventKind::TicketClosed {
            ticket_id: required("ticket_id", w.ticket_id)?.into(),
            resolved: w.resolved.unwrap_or(true),
        },
        "complaint" => EventKind::Complaint {
            ticket_id: w.ticket_id.map(Into::into),
        },
        "satisfaction" => EventKind::Satisfaction {
            score: score(w.score)?,
            ticket_id: w.ticket_id.map(Into::into),
        },
        "customer_profile" => profile(w)?,
        "email_unsubscribed" => EventKind::Unsubscribed,
        "email_bounced" => EventKind::Bounced {
            hard: hard_bounce(w.bounce_kind)?,
        },
        "customer_erased" => EventKind::Erased,
        other => {
            return Err(Reject::new(
                "unknown_type",
                format!("unknown event type `{}`", shown(other)),
            ));
        }
    })
}

/// A purchase: its categories are bounded (README "Input: limits and reject classes")
/// before the amount is read.
fn purchase(w: Wire<'_>) -> Result<EventKind, Reject> {
    required("order_id", w.order_id)?;
    let categories = w.categories.unwrap_or_default();
    if categories.len() > MAX_CATEGORIES {
        return Err(Reject::new(
            "invalid_value",
            format!(
                "field `categories` has {} entries, more than the limit of {MAX_CATEGORIES}",
                categories.len()
            ),
        ));
    }
    for c in &categories {
        clean_id("categories", c, MAX_CATEGORY)?;
    }
    Ok(EventKind::Purchase {
        amount: amount(w.amount, w.currency)?,
        categories: categories.into_iter().map(Into::into).collect(),
    })
}

/// A ticket's severity; absent means `normal`, so producers that do not rate tickets
/// need not say so.
fn severity(value: Option<&str>) -> Result<Severity, Reject> {
    match value {
        None | Some("normal") => Ok(Severity::Normal),
        Some("low") => Ok(Severity::Low),
        Some("high") => Ok(Severity::High),
        Some(other) => Err(Reject::new(
            "invalid_value",
            format!(
                "field `severity` must be low, normal or high, got `{}`",
                shown(other)
            ),
        )),
    }
}

/// A survey score, 1..=5 as a JSON integer: `"5"` is refused for its value, not its type.
fn score(raw: Option<&RawValue>) -> Result<u8, Reject> {
    let raw = raw
        .filter(|r| r.get() != "null")
        .ok_or_else(|| Reject::new("missing_field", "missing field `score`"))?;
    raw.get()
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
        })
}

/// A profile update: the address, zone and locale are checked because they reach
/// headers and rendering; the name is neutralised instead (README "Input").
fn profile(w: Wire<'_>) -> Result<EventKind, Reject> {
    if let Some(email) = &w.email {
        clean_text("email", email, MAX_EMAIL)?;
    }
    if let Some(tz) = &w.timezone {
        check_timezone(tz)?;
    }
    if let Some(l) = &w.locale {
        check_locale(l)?;
    }
    Ok(EventKind::Profile(ProfileUpdate {
        email: w.email.map(Cow::into_owned),
        name: w.name.map(|n| neutral_name(&n)),
        locale: w.locale.map(Cow::into_owned),
        timezone: w.timezone.map(Cow::into_owned),
        marketing_consent: w.marketing_consent,
    }))
}

/// A zone the quiet hours can be computed in; the length bound keeps the lookup cheap.
fn check_timezone(tz: &str) -> Result<(), Reject> {
    if tz.len() > 64 || jiff::tz::TimeZone::get(tz).is_err() {
        return Err(Reject::new(
            "invalid_value",
            format!("field `timezone`: `{}` is not an IANA time zone", shown(tz)),
        ));
    }
    Ok(())
}

/// The shape of a BCP 47 tag (not the registry): enough for the template fallback
/// `en-GB` → `en` to work.
fn check_locale(l: &str) -> Result<(), Reject> {
    let ok = !l.is_empty()
        && l.len() <= 35
        && l.split('-')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        return Err(Reject::new(
            "invalid_value",
            format!(
                "field `locale`: `{}` is not a BCP 47 tag like `en-GB`",
                shown(l)
            ),
        ));
    }
    Ok(())
}

/// Whether a bounce is hard: only a hard one suppresses the mailbox.
fn hard_bounce(kind: Option<Cow<'_, str>>) -> Result<bool, Reject> {
    let kind = required("kind", kind)?;
    match &*kind {
        "hard" => Ok(true),
        "soft" => Ok(false),
        other => Err(Reject::new(
            "invalid_value",
            format!("field `kind` must be hard or soft, got `{}`", shown(other)),
        )),
    }
}
