//! `[engine]`, `[risk]` and `[loyal]`: the engine's own sections (the rules' sections
//! are read by their modules under `engine/rules/`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::engine::clock::{Span, DAY};
use crate::engine::settings::{LoyalSettings, RiskSettings};
use crate::event::Limits;
use crate::problems::Problems;
use crate::secret::{self, Secret};

/// `[engine]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    /// See the defaults file.
    pub allowed_lateness: Span,
    /// See the defaults file.
    pub dedup_window: Span,
    /// See the defaults file.
    pub dedup_max_per_customer: usize,
    /// See the defaults file.
    pub max_future_skew: Span,
    /// See the defaults file.
    pub max_event_bytes: usize,
    /// See the defaults file.
    pub id_secret: String,
    /// See the defaults file.
    pub id_secret_file: PathBuf,
}

/// The `engine.id_secret` the defaults file ships: `run` refuses it.
pub const SHIPPED_ID_SECRET: &str = "churnwatch-default-id-secret";

impl RawEngine {
    /// Checks the section and reads the key of alert ids; the other values are read
    /// into the engine's settings and the input [`Limits`] by the caller.
    pub fn validate(&self, p: &mut Problems) -> Secret {
        p.when(self.id_secret.is_empty(), || {
            "engine.id_secret: must not be empty".into()
        });
        let id_secret = secret::read_key(
            "engine.id_secret",
            &self.id_secret,
            SHIPPED_ID_SECRET,
            &self.id_secret_file,
            p,
        );
        p.when(self.dedup_window.0 < DAY, || {
            "engine.dedup_window: must be at least 1d".into()
        });
        p.when(!(2..=65_536).contains(&self.dedup_max_per_customer), || {
            format!(
                "engine.dedup_max_per_customer: must be 2–65536, got {}",
                self.dedup_max_per_customer
            )
        });
        p.when(self.max_future_skew.0 > 30 * DAY, || {
            "engine.max_future_skew: must be at most 30d".into()
        });
        p.when(!(1024..=16 << 20).contains(&self.max_event_bytes), || {
            format!(
                "engine.max_event_bytes: must be 1024–16777216 bytes, got {}",
                self.max_event_bytes
            )
        });
        id_secret
    }

    /// The size and time limits every input record is checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_future_skew: self.max_future_skew.0,
        }
    }
}

/// `[risk]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    /// See the defaults file.
    pub dropout: f64,
    /// See the defaults file.
    pub prior_gap_days: f64,
    /// See the defaults file.
    pub prior_weight: f64,
    /// See the defaults file.
    pub dropout_concentration: f64,
    /// See the defaults file.
    pub at_risk: f64,
    /// See the defaults file.
    pub support_factor: f64,
    /// See the defaults file.
    pub support_memory: Span,
}

impl RawRisk {
    /// Checks the section and builds the churn_risk model's parameters.
    pub fn validate(&self, p: &mut Problems) -> RiskSettings {
        let r = self;
        p.when(!(r.dropout > 0.0 && r.dropout < 1.0), || {
            format!(
                "risk.dropout: must be between 0 and 1 (exclusive), got {}",
                r.dropout
            )
        });
        p.when(r.prior_gap_days < 0.5, || {
            format!(
                "risk.prior_gap_days: must be at least 0.5, got {}",
                r.prior_gap_days
            )
        });
        p.when(r.prior_weight <= 0.0, || {
            format!(
                "risk.prior_weight: must be positive, got {}",
                r.prior_weight
            )
        });
        p.when(r.dropout_concentration <= 0.0, || {
            format!(
                "risk.dropout_concentration: must be positive, got {}",
                r.dropout_concentration
            )
        });
        p.when(!(r.at_risk > 0.0 && r.at_risk < 1.0), || {
            format!(
                "risk.at_risk: must be between 0 and 1 (exclusive), got {}",
                r.at_risk
            )
        });
        p.when(r.support_factor < 1.0, || {
            format!("risk.support_factor: must be ≥ 1, got {}", r.support_factor)
        });
        RiskSettings {
            dropout: r.dropout,
            prior_gap_days: r.prior_gap_days,
            prior_weight: r.prior_weight,
            dropout_concentration: r.dropout_concentration,
            at_risk: r.at_risk,
            support_factor: r.support_factor,
            support_memory: r.support_memory.0,
        }
    }
}

/// `[loyal]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoyal {
    /// See the defaults file.
    pub min_purchases: u32,
    /// See the defaults file.
    pub min_tenure: Span,
}

impl RawLoyal {
    /// Checks the section and builds the loyal criteria.
    pub fn validate(&self, p: &mut Problems) -> LoyalSettings {
        p.when(self.min_purchases < 2, || {
            "loyal.min_purchases: must be at least 2".into()
        });
        LoyalSettings {
            min_purchases: self.min_purchases,
            min_tenure: self.min_tenure.0,
        }
    }
}
