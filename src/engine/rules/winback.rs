//! `winback`: no purchase for too long → a sequence of steps that stops on purchase.

use crate::alert::{Decision, Inputs};
use crate::engine::clock::{Secs, Stamp, DAY};
use crate::engine::customer::{flag, Customer};
use crate::engine::guards::{emit, Candidate};
use crate::engine::rule::Rule;
use crate::engine::settings::{Settings, WinbackMode};
use crate::engine::stage::{Cause, Stage};
use crate::engine::Ctx;

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

/// When the next step of the sequence is due, if any.
pub fn next_due(s: &Settings, c: &Customer) -> Option<Stamp> {
    let last = c.last_purchase?;
    let step = s.winback.steps.get(usize::from(c.winback_step))?;
    Some(last.plus(threshold(s, c)).plus(step.after))
}

/// Decides the due step at `due`: the first step also moves the customer to `lapsed`.
pub(crate) fn fire(ctx: &mut Ctx<'_>, due: Stamp) {
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
