//! `winback`: no purchase for too long → a sequence of steps that stops on purchase.

use serde::Deserialize;

use crate::alert::{Decision, Inputs};
use crate::engine::clock::{format_duration, Secs, Span, Stamp, DAY};
use crate::engine::customer::{flag, Customer};
use crate::engine::guards::{emit, Candidate};
use crate::engine::rule::Rule;
use crate::engine::settings::Settings;
use crate::engine::stage::{Cause, Stage};
use crate::engine::Ctx;
use crate::problems::Problems;

/// `[rules.winback]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub mode: String,
    /// See the defaults file.
    pub inactive_after: Span,
    /// See the defaults file.
    pub multiplier: f64,
    /// See the defaults file.
    pub prior_weight: f64,
    /// See the defaults file.
    pub min: Span,
    /// See the defaults file.
    pub max: Span,
    /// See the defaults file.
    pub cooldown: Span,
    /// See the defaults file.
    pub steps: Vec<RawStep>,
}

/// One `rules.winback.steps` entry as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// See the defaults file.
    pub after: Span,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    #[serde(default)]
    pub offer_code: String,
}

/// How the inactivity threshold of `winback` is chosen.
#[derive(Clone, Debug)]
pub enum WinbackMode {
    /// The same threshold for everyone.
    Fixed {
        /// No purchase for this long.
        inactive_after: Secs,
    },
    /// A multiple of the customer's own typical gap, bounded.
    Adaptive {
        /// Threshold = multiplier × typical gap.
        multiplier: f64,
        /// Lower bound.
        min: Secs,
        /// Upper bound.
        max: Secs,
    },
}

/// One step of a sequence: when, and which template.
#[derive(Clone, Debug)]
pub struct Step {
    /// Delay after the sequence starts.
    pub after: Secs,
    /// Template name.
    pub template: String,
    /// Offer code handed to the template ("" for none).
    pub offer_code: String,
}

/// `winback` settings.
#[derive(Clone, Debug)]
pub struct WinbackSettings {
    /// Emit alerts (the stage model runs regardless).
    pub enabled: bool,
    /// Threshold mode.
    pub mode: WinbackMode,
    /// Weight of the population gap in the adaptive typical gap, in gaps.
    pub prior_weight: f64,
    /// Sequence steps, `after` strictly increasing from the first.
    pub steps: Vec<Step>,
    /// No new sequence within this long of the previous one.
    pub cooldown: Secs,
}

impl WinbackSettings {
    /// The longest a sequence can run from the last purchase: the longest inactivity
    /// threshold plus the last step (customers must be kept at least this long).
    pub fn longest_sequence(&self) -> Secs {
        let inactive = match &self.mode {
            WinbackMode::Fixed { inactive_after } => *inactive_after,
            WinbackMode::Adaptive { max, .. } => *max,
        };
        inactive.saturating_add(self.steps.iter().map(|s| s.after).max().unwrap_or(0))
    }
}

/// Most steps a sequence may have (the step number is stored in a few bits).
const MAX_STEPS: usize = 8;

/// The rule's entry in the registry.
pub struct Spec;

impl super::RuleSpec for Spec {
    type Raw = Raw;
    type Settings = WinbackSettings;

    fn validate(w: &Raw, key: &str, p: &mut Problems) -> WinbackSettings {
        let mode = mode(w, key, p);
        p.when(w.steps.is_empty(), || {
            format!("{key}.steps: at least one step is needed")
        });
        p.when(w.steps.len() > MAX_STEPS, || {
            format!("{key}.steps: at most {MAX_STEPS} steps")
        });
        for (i, pair) in w.steps.windows(2).enumerate() {
            p.when(pair[1].after.0 <= pair[0].after.0, || {
                format!(
                    "{key}.steps[{}].after: must come after step {i} ({} ≤ {})",
                    i + 1,
                    format_duration(pair[1].after.0),
                    format_duration(pair[0].after.0)
                )
            });
        }
        for (i, s) in w.steps.iter().enumerate() {
            p.template_name(&format!("{key}.steps[{i}].template"), &s.template);
        }
        WinbackSettings {
            enabled: w.enabled,
            mode,
            prior_weight: w.prior_weight,
            steps: w
                .steps
                .iter()
                .map(|s| Step {
                    after: s.after.0,
                    template: s.template.clone(),
                    offer_code: s.offer_code.clone(),
                })
                .collect(),
            cooldown: w.cooldown.0,
        }
    }

    fn cooldown(s: &WinbackSettings) -> Secs {
        s.cooldown
    }

    fn sends(s: &WinbackSettings) -> Vec<(&str, Option<&str>)> {
        s.steps
            .iter()
            .map(|s| (s.template.as_str(), Some(s.offer_code.as_str())))
            .collect()
    }

    const TIMER: Option<super::Timer> = Some(super::Timer {
        name: "winback_step",
        rank: 3,
    });

    /// When the next step of the sequence is due, if any.
    fn next_due(s: &Settings, c: &Customer) -> Option<Stamp> {
        let last = c.last_purchase?;
        let step = s.winback.steps.get(usize::from(c.winback_step))?;
        Some(last.plus(threshold(s, c)).plus(step.after))
    }

    /// Decides the due step at `due`: the first step also moves the customer to `lapsed`.
    fn fire(ctx: &mut Ctx<'_>, due: Stamp) {
        let s = ctx.s;
        let k = ctx.c.winback_step;
        let Some(step) = s.winback.steps.get(usize::from(k)) else {
            return;
        };
        let from = ctx.c.stage;
        if k == 0 {
            ctx.c.move_to(Stage::Lapsed, Cause::Inactivity, due);
            ctx.c.set(flag::WINBACK_MUTED, false);
        }
        ctx.c.winback_step = k + 1;
        if !s.winback.enabled || ctx.c.has(flag::WINBACK_MUTED) {
            return;
        }
        let inputs = Inputs::default()
            .int("days_since_last_purchase", ctx.c.days_since_purchase(due))
            .real(
                "threshold_days",
                f64::from(threshold(s, ctx.c)) / f64::from(DAY),
            )
            .real("typical_gap_days", typical_gap_days(s, ctx.c))
            .int("purchases", ctx.c.purchases)
            .text(
                "mode",
                match s.winback.mode {
                    WinbackMode::Fixed { .. } => "fixed",
                    WinbackMode::Adaptive { .. } => "adaptive",
                },
            );
        let decision = emit(
            ctx,
            Candidate {
                rule: Rule::Winback,
                step: k,
                episode: super::purchase_episode(ctx.c.last_purchase),
                at: due,
                stage_from: from,
                template: &step.template,
                offer_code: &step.offer_code,
                inputs,
                milestone: 0,
                years: 0,
                ticket_id: None,
                continues_episode: k > 0,
            },
        );
        match decision {
            Some(Decision::Cooldown) => {
                // A sequence that may not start stays silent to its end.
                ctx.c.set(flag::WINBACK_MUTED, true);
            }
            Some(d @ (Decision::Email | Decision::Holdout)) => {
                if ctx.c.winback_touch.is_none() {
                    ctx.stats.winback_touched[usize::from(d == Decision::Holdout)] += 1;
                }
                ctx.c.winback_touch = Some(due);
                ctx.c.set(flag::TOUCH_HOLDOUT, d == Decision::Holdout);
            }
            _ => {}
        }
    }
}

/// The threshold mode and the checks of the keys it uses.
fn mode(w: &Raw, key: &str, p: &mut Problems) -> WinbackMode {
    let fixed = WinbackMode::Fixed {
        inactive_after: w.inactive_after.0,
    };
    match w.mode.as_str() {
        "fixed" => {
            p.when(w.inactive_after.0 == 0, || {
                format!("{key}.inactive_after: must be positive")
            });
            fixed
        }
        "adaptive" => {
            p.when(w.multiplier <= 0.0, || {
                format!("{key}.multiplier: must be positive, got {}", w.multiplier)
            });
            p.when(w.prior_weight < 0.0, || {
                format!("{key}.prior_weight: must be ≥ 0, got {}", w.prior_weight)
            });
            p.when(w.min.0 > w.max.0, || {
                format!("{key}.min: must not exceed {key}.max")
            });
            WinbackMode::Adaptive {
                multiplier: w.multiplier,
                min: w.min.0,
                max: w.max.0,
            }
        }
        other => {
            p.push(format!(
                "{key}.mode: must be \"fixed\" or \"adaptive\", got `{other}`"
            ));
            fixed
        }
    }
}

/// The customer's own mean gap between purchases, with the population gap weighing in
/// as `rules.winback.prior_weight` gaps for customers with few purchases, days.
pub fn typical_gap_days(s: &Settings, c: &Customer) -> f64 {
    crate::engine::risk::shrunk_gap_days(c, s.winback.prior_weight)
}

/// The inactivity after which a customer counts as lapsed (fixed, or adaptive to rhythm).
pub fn threshold(s: &Settings, c: &Customer) -> Secs {
    match s.winback.mode {
        WinbackMode::Fixed { inactive_after } => inactive_after,
        WinbackMode::Adaptive {
            multiplier,
            min,
            max,
        } => {
            let secs = multiplier * typical_gap_days(s, c) * f64::from(DAY);
            (secs.min(f64::from(u32::MAX)) as Secs).clamp(min, max)
        }
    }
}


