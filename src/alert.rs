//! Alerts: the decision records of docs/design.md §7 Decisions, their ids and their JSON shape.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use sha2::Sha256;

use crate::engine::clock::Stamp;
use crate::engine::rule::Rule;
use crate::engine::stage::Stage;

/// Rounds to four decimals, the precision alerts and exports carry.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// A number (or label) that triggered an alert, as reported in `inputs`.
#[derive(Clone, Debug, PartialEq)]
pub enum Num {
    /// An integer.
    Int(i64),
    /// A real number, reported to four decimals.
    Real(f64),
    /// A label such as the trigger kind.
    Text(&'static str),
}

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Num::Int(i) => s.serialize_i64(*i),
            Num::Real(x) => s.serialize_f64(round4(*x)),
            Num::Text(t) => s.serialize_str(t),
        }
    }
}

/// The inputs of an alert in a fixed order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs(pub Vec<(&'static str, Num)>);

impl Inputs {
    /// Adds an integer input.
    pub fn int(mut self, k: &'static str, v: impl Into<i64>) -> Self {
        self.0.push((k, Num::Int(v.into())));
        self
    }
    /// Adds a real input.
    pub fn real(mut self, k: &'static str, v: f64) -> Self {
        self.0.push((k, Num::Real(v)));
        self
    }
    /// Adds a label.
    pub fn text(mut self, k: &'static str, v: &'static str) -> Self {
        self.0.push((k, Num::Text(v)));
        self
    }
    /// Looks an input up by name.
    pub fn get(&self, k: &str) -> Option<&Num> {
        self.0.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }
}

impl Serialize for Inputs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Why an alert leads to no email.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Suppression {
    /// No email address known.
    NoAddress,
    /// No marketing consent.
    NoConsent,
    /// The customer unsubscribed.
    Unsubscribed,
    /// The address hard-bounced.
    HardBounce,
    /// The customer was erased (send time only: an erased customer has no alerts).
    Erased,
}

impl Suppression {
    /// The reason as written in `suppressed:<reason>`.
    pub fn name(self) -> &'static str {
        match self {
            Suppression::NoAddress => "no_address",
            Suppression::NoConsent => "no_consent",
            Suppression::Unsubscribed => "unsubscribed",
            Suppression::HardBounce => "hard_bounce",
            Suppression::Erased => "erased",
        }
    }
}

/// What the engine decided to do about an alert (docs/design.md §7 Decisions guards).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Decision {
    /// Send the email.
    Email,
    /// In the holdout group: recorded, no email.
    Holdout,
    /// Suppressed for a reason.
    Suppressed(Suppression),
    /// Same rule too recently.
    Cooldown,
    /// Too many emails to this customer in the window.
    Capped,
    /// Decided too long before the clock to be worth sending.
    Stale,
}

impl Decision {
    /// The decision as written in alerts and summaries.
    pub fn label(self) -> String {
        match self {
            Decision::Email => "email".into(),
            Decision::Holdout => "holdout".into(),
            Decision::Suppressed(r) => format!("suppressed:{}", r.name()),
            Decision::Cooldown => "cooldown".into(),
            Decision::Capped => "capped".into(),
            Decision::Stale => "stale".into(),
        }
    }
}

/// What a template needs to address one customer, captured when the email is decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MailContext {
    /// Recipient address.
    pub email: String,
    /// Recipient name ("" when unknown).
    pub name: String,
    /// The customer's locale ("" when unknown: the default applies).
    pub locale: String,
    /// Days since the last purchase at decision time.
    pub days_since_last_purchase: u32,
    /// Purchases so far.
    pub purchase_count: u32,
    /// Most bought category ("" when unknown).
    pub favourite_category: String,
    /// Offer code of the rule/step ("" for none).
    pub offer_code: String,
    /// Milestone reached (thank_you), 0 otherwise.
    pub milestone: u32,
    /// Years since the first purchase (anniversary), 0 otherwise.
    pub years: u32,
    /// Ticket concerned (support_recovery), "" otherwise.
    pub ticket_id: String,
    /// The customer's IANA time zone ("" when unknown), for quiet hours.
    pub timezone: String,
}

/// One decision record.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Keyed hash of customer, rule, episode and step.
    pub alert_id: String,
    /// The customer.
    pub customer_id: Box<str>,
    /// The rule that fired.
    pub rule: Rule,
    /// Step within a sequence (trigger kind for support_recovery), 0 otherwise.
    pub step: u8,
    /// What the alert is about (see docs/design.md §7 Decisions "Episode").
    pub episode: String,
    /// Event time the decision is made for.
    pub at: Stamp,
    /// Stage before the decision.
    pub stage_from: Stage,
    /// Stage after it.
    pub stage_to: Stage,
    /// churn_risk at `at` (None for customers who never purchased).
    pub churn_risk: Option<f64>,
    /// The numbers that triggered it.
    pub inputs: Inputs,
    /// The guard outcome.
    pub decision: Decision,
    /// Template the email uses.
    pub template: String,
    /// Locale the email is rendered in (resolved by the mailer; the request until then).
    pub locale: String,
    /// Recipient data when the decision is `Email`.
    pub mail: Option<Box<MailContext>>,
}

/// The keyed hash behind alert ids, prepared once from the secret.
#[derive(Clone)]
pub struct IdKey(Hmac<Sha256>);

impl IdKey {
    /// Prepares the key (HMAC accepts keys of any length).
    pub fn new(secret: &[u8]) -> IdKey {
        // new_from_slice cannot fail for HMAC; the fallback only avoids a panic path.
        IdKey(
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
                .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default())),
        )
    }
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(…)")
    }
}

/// Letters of per-customer offer codes: base 32 without 0/O and 1/I, which read alike.
const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Expands an offer code: `{code}` becomes 8 characters of
/// HMAC-SHA256(key, len ‖ customer_id ‖ len ‖ rule) (its first 40 bits in
/// [`CODE_ALPHABET`]), the same for a customer and rule every time and not guessable
/// without the key. A code without `{code}` is static and returned as it is.
pub fn offer_code(key: &IdKey, code: &str, customer_id: &str, rule: Rule) -> String {
    if !code.contains("{code}") {
        return code.to_string();
    }
    let mut mac = key.0.clone();
    for part in [customer_id.as_bytes(), rule.name().as_bytes()] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    let mut bits = digest[..5]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut out = [0u8; 8];
    for c in out.iter_mut().rev() {
        *c = CODE_ALPHABET[(bits & 31) as usize];
        bits >>= 5;
    }
    code.replace("{code}", std::str::from_utf8(&out).unwrap_or_default())
}

/// Computes an alert id: hex of HMAC-SHA256(secret, customer ‖ rule ‖ episode ‖ step).
pub fn alert_id(key: &IdKey, customer_id: &str, rule: Rule, episode: &str, step: u8) -> String {
    let mut mac = key.0.clone();
    for part in [
        customer_id.as_bytes(),
        rule.name().as_bytes(),
        episode.as_bytes(),
    ] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.update(&[step]);
    hex::encode(&mac.finalize().into_bytes()[..16])
}

impl Alert {
    /// The Message-ID of this alert's email (without angle brackets).
    pub fn message_id(&self, domain: &str) -> String {
        format!("{}@{}", self.alert_id, domain)
    }

    /// The alert as one JSON line (docs/design.md §7 Decisions shape), without the trailing newline.
    pub fn to_json(&self, message_id_domain: &str) -> String {
        #[derive(Serialize)]
        struct Delivery<'a> {
            decision: String,
            message_id: Option<String>,
            template: &'a str,
            locale: &'a str,
        }
        #[derive(Serialize)]
        struct Wire<'a> {
            v: u8,
            alert_id: &'a str,
            customer_id: &'a str,
            rule: &'static str,
            step: u8,
            episode: &'a str,
            at: String,
            stage_from: &'static str,
            stage_to: &'static str,
            churn_risk: Option<f64>,
            inputs: &'a Inputs,
            delivery: Delivery<'a>,
        }
        let wire = Wire {
            v: 1,
            alert_id: &self.alert_id,
            customer_id: &self.customer_id,
            rule: self.rule.name(),
            step: self.step,
            episode: &self.episode,
            at: self.at.to_rfc3339(),
            stage_from: self.stage_from.name(),
            stage_to: self.stage_to.name(),
            churn_risk: self.churn_risk.map(round4),
            inputs: &self.inputs,
            delivery: Delivery {
                decision: self.decision.label(),
                message_id: (self.decision == Decision::Email)
                    .then(|| format!("<{}>", self.message_id(message_id_domain))),
                template: &self.template,
                locale: &self.locale,
            },
        };
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_codes_are_per_customer_keyed_and_static_codes_stay() {
        let k = IdKey::new(b"offer");
        assert_eq!(
            offer_code(&k, "SORRY5", "c1", Rule::SupportRecovery),
            "SORRY5"
        );
        let a = offer_code(&k, "BACK-{code}", "c1", Rule::Winback);
        assert_eq!(a.len(), "BACK-".len() + 8);
        assert!(a["BACK-".len()..]
            .bytes()
            .all(|b| CODE_ALPHABET.contains(&b)));
        assert_eq!(a, offer_code(&k, "BACK-{code}", "c1", Rule::Winback));
        assert_ne!(a, offer_code(&k, "BACK-{code}", "c2", Rule::Winback));
        assert_ne!(a, offer_code(&k, "BACK-{code}", "c1", Rule::FrequencyDrop));
        assert_ne!(
            a,
            offer_code(&IdKey::new(b"other"), "BACK-{code}", "c1", Rule::Winback)
        );
    }

    #[test]
    fn ids_are_stable_keyed_and_distinct() {
        let a = alert_id(&IdKey::new(b"k1"), "c1", Rule::Winback, "purchase@x", 0);
        assert_eq!(
            a,
            alert_id(&IdKey::new(b"k1"), "c1", Rule::Winback, "purchase@x", 0)
        );
        assert_eq!(a.len(), 32);
        assert!(!a.contains("c1"));
        assert_ne!(
            a,
            alert_id(&IdKey::new(b"k2"), "c1", Rule::Winback, "purchase@x", 0)
        );
        assert_ne!(
            a,
            alert_id(&IdKey::new(b"k1"), "c1", Rule::Winback, "purchase@x", 1)
        );
        assert_ne!(
            a,
            alert_id(&IdKey::new(b"k1"), "c1", Rule::ThankYou, "purchase@x", 0)
        );
        // length-prefixing keeps field boundaries: ("c1","x") ≠ ("c","1x")
        assert_ne!(
            alert_id(&IdKey::new(b"k"), "c1", Rule::Winback, "x", 0),
            alert_id(&IdKey::new(b"k"), "c", Rule::Winback, "1x", 0)
        );
    }
}
