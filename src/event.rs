//! Input events (SPEC §2): JSON → [`Event`], or a [`Reject`] saying which field was wrong.

use std::borrow::Cow;

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

/// The wire shape: every known field kept raw so each can be checked with its own message.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    occurred_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
    #[serde(borrow, default)]
    currency: Option<&'a RawValue>,
    #[serde(borrow, default)]
    categories: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ticket_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    severity: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resolved: Option<&'a RawValue>,
    #[serde(borrow, default)]
    score: Option<&'a RawValue>,
    #[serde(borrow, default)]
    email: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    locale: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timezone: Option<&'a RawValue>,
    #[serde(borrow, default)]
    marketing_consent: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "kind")]
    kind_field: Option<&'a RawValue>,
}

/// Treats JSON `null` like an absent field, as producers commonly emit both.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
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

fn string<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, Reject> {
    if let Ok(s) = serde_json::from_str::<&'a str>(raw.get()) {
        return Ok(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(raw.get())
        .map(Cow::Owned)
        .map_err(|_| {
            Reject::new(
                "wrong_type",
                format!("field `{field}` must be a string, got {}", describe(raw)),
            )
        })
}

fn required<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, Reject> {
    let raw = present(raw)
        .ok_or_else(|| Reject::new("missing_field", format!("missing field `{field}`")))?;
    let s = string(field, raw)?;
    if s.is_empty() {
        return Err(Reject::new(
            "missing_field",
            format!("field `{field}` is empty"),
        ));
    }
    Ok(s)
}

fn optional<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, Reject> {
    present(raw).map(|r| string(field, r)).transpose()
}

fn boolean(field: &str, raw: Option<&RawValue>) -> Result<Option<bool>, Reject> {
    let Some(raw) = present(raw) else {
        return Ok(None);
    };
    match raw.get() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        _ => Err(Reject::new(
            "wrong_type",
            format!(
                "field `{field}` must be true or false, got {}",
                describe(raw)
            ),
        )),
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

fn amount(wire: &Wire<'_>) -> Result<Amount, Reject> {
    let code = required("currency", wire.currency)?;
    let currency = iso_currency::Currency::from_code(&code).ok_or_else(|| {
        Reject::new(
            "invalid_value",
            format!("field `currency`: `{code}` is not an ISO 4217 currency code"),
        )
    })?;
    let exp = u32::from(currency.exponent().unwrap_or(0));
    let raw = present(wire.amount)
        .ok_or_else(|| Reject::new("missing_field", "missing field `amount`"))?;
    let text: Cow<'_, str> = match raw.get().as_bytes().first() {
        Some(b'"') => string("amount", raw)?,
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

fn categories(raw: Option<&RawValue>) -> Result<Vec<Box<str>>, Reject> {
    let Some(raw) = present(raw) else {
        return Ok(Vec::new());
    };
    let list: Vec<Cow<'_, str>> = serde_json::from_str(raw.get()).map_err(|_| {
        Reject::new(
            "wrong_type",
            format!(
                "field `categories` must be an array of strings, got {}",
                describe(raw)
            ),
        )
    })?;
    Ok(list.into_iter().map(|c| c.into()).collect())
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
        let class = if e.is_data() {
            "wrong_type"
        } else {
            "invalid_json"
        };
        Reject::new(class, format!("invalid JSON: {e}"))
    })?;
    let event_id = required("event_id", wire.event_id)?;
    let type_name = required("type", wire.kind)?;
    let customer_id = required("customer_id", wire.customer_id)?;
    if customer_id.len() > MAX_CUSTOMER_ID {
        return Err(Reject::new(
            "invalid_value",
            format!(
                "field `customer_id` is {} bytes, longer than the limit of {MAX_CUSTOMER_ID}",
                customer_id.len()
            ),
        ));
    }
    let occurred_at = required("occurred_at", wire.occurred_at)?;
    let at = Stamp::parse_rfc3339(&occurred_at).map_err(|why| {
        Reject::new(
            "invalid_timestamp",
            format!("field `occurred_at` (`{occurred_at}`): {why}"),
        )
    })?;
    let kind = match &*type_name {
        "purchase" => {
            required("order_id", wire.order_id)?;
            EventKind::Purchase {
                amount: amount(&wire)?,
                categories: categories(wire.categories)?,
            }
        }
        "refund" => {
            required("order_id", wire.order_id)?;
            EventKind::Refund {
                amount: amount(&wire)?,
            }
        }
        "support_ticket_opened" => {
            let severity = match optional("severity", wire.severity)?.as_deref() {
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
                ticket_id: required("ticket_id", wire.ticket_id)?.into(),
                severity,
            }
        }
        "support_ticket_closed" => EventKind::TicketClosed {
            ticket_id: required("ticket_id", wire.ticket_id)?.into(),
            resolved: boolean("resolved", wire.resolved)?.unwrap_or(true),
        },
        "complaint" => EventKind::Complaint {
            ticket_id: optional("ticket_id", wire.ticket_id)?.map(Into::into),
        },
        "satisfaction" => {
            let raw = present(wire.score)
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
                ticket_id: optional("ticket_id", wire.ticket_id)?.map(Into::into),
            }
        }
        "customer_profile" => {
            let timezone = optional("timezone", wire.timezone)?.map(Cow::into_owned);
            if let Some(tz) = &timezone {
                if jiff::tz::TimeZone::get(tz).is_err() {
                    return Err(Reject::new(
                        "invalid_value",
                        format!("field `timezone`: `{tz}` is not an IANA time zone"),
                    ));
                }
            }
            let locale = optional("locale", wire.locale)?.map(Cow::into_owned);
            if let Some(l) = &locale {
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
                email: optional("email", wire.email)?.map(Cow::into_owned),
                name: optional("name", wire.name)?.map(Cow::into_owned),
                locale,
                timezone,
                marketing_consent: boolean("marketing_consent", wire.marketing_consent)?,
            })
        }
        "email_unsubscribed" => EventKind::Unsubscribed,
        "email_bounced" => {
            let kind = required("kind", wire.kind_field)?;
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
