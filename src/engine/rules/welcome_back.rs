//! `welcome_back`: a lapsed customer, or one recently sent a win-back, buys again.

use crate::alert::Inputs;
use crate::engine::clock::{Stamp, DAY};
use crate::engine::customer::flag;
use crate::engine::guards::{emit, Candidate};
use crate::engine::rule::Rule;
use crate::engine::stage::{Cause, Stage};
use crate::engine::Ctx;

/// Called for a purchase at `t` before counters change; returns true when the customer
/// came back (stage → `won_back`).
pub(crate) fn on_purchase(ctx: &mut Ctx<'_>, t: Stamp) -> bool {
    let s = ctx.s;
    let was_lapsed = ctx.c.stage == Stage::Lapsed;
    let touch = ctx
        .c
        .winback_touch
        .filter(|&w| w <= t && t.since(w) <= s.welcome_back.attribution_window);
    let holdout = ctx.c.has(flag::TOUCH_HOLDOUT);
    if touch.is_some() {
        ctx.stats.winback_converted[usize::from(holdout)] += 1;
    }
    if ctx.c.winback_touch.is_some() {
        // Attribution is counted once per touch.
        ctx.c.winback_touch = None;
    }
    let emailed = touch.is_some() && !holdout;
    if !was_lapsed && !emailed {
        return false;
    }
    let from = ctx.c.stage;
    if was_lapsed {
        ctx.c.move_to(Stage::WonBack, Cause::Returned, t);
    }
    if s.welcome_back.enabled {
        let inputs = Inputs::default()
            .int("days_since_last_purchase", ctx.c.days_since_purchase(t))
            .int("purchases", ctx.c.purchases + 1)
            .int(
                "days_since_winback",
                touch.map(|w| i64::from(t.since(w) / DAY)).unwrap_or(-1),
            )
            .text("was", if was_lapsed { "lapsed" } else { "emailed" });
        emit(
            ctx,
            Candidate {
                rule: Rule::WelcomeBack,
                step: 0,
                episode: super::purchase_episode(Some(t)),
                at: t,
                stage_from: from,
                template: &s.welcome_back.template,
                offer_code: &s.welcome_back.offer_code,
                inputs,
                milestone: 0,
                years: 0,
                ticket_id: None,
                continues_episode: false,
            },
        );
    }
    was_lapsed
}
