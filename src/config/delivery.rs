//! `[delivery]`: where emails go, the guards decided on event time (holdout, cap,
//! consent, staleness) and the sender's pacing (quiet hours, rate).

use std::path::PathBuf;

use serde::Deserialize;

use crate::engine::clock::{Span, DAY};
use crate::engine::customer::MAX_CAP;
use crate::engine::rule::Rule;
use crate::engine::settings::DeliverySettings;
use crate::mail::quiet_hours::QuietHours;
use crate::mail::settings::SendSettings;
use crate::problems::Problems;
use crate::secret::{self, Secret};

/// `[delivery]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// See the defaults file.
    pub transport: String,
    /// See the defaults file.
    pub file_dir: PathBuf,
    /// See the defaults file.
    pub holdout_percent: f64,
    /// See the defaults file.
    pub holdout_rules: Vec<String>,
    /// See the defaults file.
    pub holdout_salt: String,
    /// See the defaults file.
    pub max_emails: u8,
    /// See the defaults file.
    pub window: Span,
    /// See the defaults file.
    pub max_decision_age: Span,
    /// See the defaults file.
    pub require_consent: bool,
    /// See the defaults file.
    pub quiet_hours: String,
    /// See the defaults file.
    pub default_timezone: String,
    /// See the defaults file.
    pub rate_limit: u32,
    /// See the defaults file.
    pub offer_secret: String,
    /// See the defaults file.
    pub offer_secret_file: PathBuf,
}

/// The `delivery.offer_secret` the defaults file ships: `run` refuses it.
pub const SHIPPED_OFFER_SECRET: &str = "churnwatch-default-offer-secret";

/// How `run` hands emails over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `.eml` files in `delivery.file_dir` (a pickup folder, or for inspection).
    File,
    /// The SMTP relay of `[smtp]`.
    Smtp,
}

impl Transport {
    /// The name the config file uses.
    pub fn name(self) -> &'static str {
        match self {
            Transport::File => "file",
            Transport::Smtp => "smtp",
        }
    }
}

impl PartialEq<&str> for Transport {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// The section's validated parts, each for the code that uses it.
pub struct Delivery {
    /// Where emails go.
    pub transport: Transport,
    /// Folder of `.eml` files when the transport is `file`.
    pub file_dir: PathBuf,
    /// The guards the engine decides on event time.
    pub guards: DeliverySettings,
    /// The sender's pacing.
    pub send: SendSettings,
    /// The key of offer codes.
    pub offer_secret: Secret,
}

impl RawDelivery {
    /// The transport named, if it is one.
    pub fn transport(&self) -> Option<Transport> {
        match self.transport.as_str() {
            "file" => Some(Transport::File),
            "smtp" => Some(Transport::Smtp),
            _ => None,
        }
    }

    /// Checks the section and builds its parts (`default_locale` comes from
    /// `[templates]`).
    pub fn validate(&self, default_locale: &str, p: &mut Problems) -> Delivery {
        let d = self;
        let transport = d.transport().unwrap_or_else(|| {
            p.push(format!(
                "delivery.transport: must be \"file\" or \"smtp\", got `{}`",
                d.transport
            ));
            Transport::File
        });
        p.when(!(0.0..=100.0).contains(&d.holdout_percent), || {
            format!(
                "delivery.holdout_percent: must be 0–100, got {}",
                d.holdout_percent
            )
        });
        let mut holdout_rules = [false; Rule::COUNT];
        for name in d
            .holdout_rules
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            match Rule::from_name(name) {
                Some(rule) => holdout_rules[rule.index()] = true,
                None => p.push(format!("delivery.holdout_rules: unknown rule `{name}`")),
            }
        }
        p.when(d.max_emails == 0 || d.max_emails > MAX_CAP, || {
            format!(
                "delivery.max_emails: must be 1–{MAX_CAP} (0 would never send), got {}",
                d.max_emails
            )
        });
        p.when(d.window.0 < DAY || !d.window.0.is_multiple_of(DAY), || {
            "delivery.window: must be a whole number of days, at least 1d".to_string()
        });
        let send = self.send(p);
        let offer_secret = secret::read_key(
            "delivery.offer_secret",
            &d.offer_secret,
            SHIPPED_OFFER_SECRET,
            &d.offer_secret_file,
            p,
        );
        Delivery {
            offer_secret,
            transport,
            file_dir: d.file_dir.clone(),
            guards: DeliverySettings {
                holdout_percent: d.holdout_percent,
                holdout_rules,
                holdout_salt: d.holdout_salt.clone(),
                max_emails: d.max_emails,
                window_days: u16::try_from(d.window.0 / DAY).unwrap_or(u16::MAX),
                max_decision_age: d.max_decision_age.0,
                require_consent: d.require_consent,
                default_locale: default_locale.to_string(),
            },
            send,
        }
    }

    fn send(&self, p: &mut Problems) -> SendSettings {
        let quiet_hours = QuietHours::parse(&self.quiet_hours).unwrap_or_else(|e| {
            p.push(format!("delivery.quiet_hours: {e}"));
            None
        });
        let default_timezone = jiff::tz::db()
            .get(&self.default_timezone)
            .unwrap_or_else(|e| {
                p.push(format!(
                    "delivery.default_timezone: `{}` is not an IANA time zone: {e}",
                    self.default_timezone
                ));
                jiff::tz::TimeZone::UTC
            });
        SendSettings {
            quiet_hours,
            default_timezone,
            rate_limit: self.rate_limit,
        }
    }
}
