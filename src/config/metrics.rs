//! `[metrics]`: the period of the customer retention rate.

use serde::Deserialize;

use crate::engine::clock::{format_duration, Span, DAY};
use crate::engine::retention::MAX_PERIOD_DAYS;
use crate::problems::Problems;

/// `[metrics]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// See the defaults file.
    pub crr_period: Span,
}

impl RawMetrics {
    /// The CRR period in whole days.
    pub fn validate(&self, p: &mut Problems) -> u16 {
        let crr = self.crr_period.0;
        let days = crr / DAY;
        p.when(
            crr == 0 || !crr.is_multiple_of(DAY) || days > u32::from(MAX_PERIOD_DAYS),
            || {
                format!(
                    "metrics.crr_period: must be whole days from 1d to {MAX_PERIOD_DAYS}d, got {}",
                    format_duration(crr)
                )
            },
        );
        u16::try_from(days).unwrap_or(MAX_PERIOD_DAYS)
    }
}
