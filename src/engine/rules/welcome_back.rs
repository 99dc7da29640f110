//! `welcome_back`: a lapsed customer, or one recently sent a win-back, buys again.

use serde::Deserialize;

use crate::alert::Inputs;
use crate::engine::clock::{Secs, Span, Stamp, DAY};
use crate::engine::customer::flag;
use crate::engine::guards::{emit, Candidate};
use crate::engine::rule::Rule;
use crate::engine::stage::{Cause, Stage};
use crate::engine::Ctx;
use crate::event::EventKind;
use super::Incoming;
use crate::problems::Problems;

/// `[rules.welcome_back]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub attribution_window: Span,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    pub offer_code: String,
    /// See the defaults file.
    pub cooldown: Span,
}

/// `welcome_back` settings.
#[derive(Clone, Debug)]
pub struct WelcomeBackSettings {
    /// Emit alerts.
    pub enabled: bool,
    /// A purchase this soon after a win-back email counts as a conversion.
    pub attribution_window: Secs,
    /// Template name.
    pub template: String,
    /// Offer code ("" for none).
    pub offer_code: String,
    /// Minimum time between alerts.
    pub cooldown: Secs,
}

/// The rule's entry in the registry.
pub struct Spec;

impl super::RuleSpec for Spec {
    type Raw = Raw;
    type Settings = WelcomeBackSettings;

    fn validate(wb: &Raw, key: &str, p: &mut Problems) -> WelcomeBackSettings {
        p.template_name(&format!("{key}.template"), &wb.template);
        WelcomeBackSettings {
            enabled: wb.enabled,
            attribution_window: wb.attribution_window.0,
            template: wb.template.clone(),
            offer_code: wb.offer_code.clone(),
            cooldown: wb.cooldown.0,
        }
    }

    fn cooldown(s: &WelcomeBackSettings) -> Secs {
        s.cooldown
    }

    fn sends(s: &WelcomeBackSettings) -> Vec<(&str, Option<&str>)> {
        vec![(&s.template, Some(&s.offer_code))]
    }

    fn before_event(ctx: &mut Ctx<'_>, ev: &Incoming<'_>) {
        if let EventKind::Purchase { .. } = ev.kind {
            on_purchase(ctx, ev.at);
        }
    }
}

/// A purchase at `t`, before counters change: a lapsed customer comes back (stage →
/// `won_back`), and a recent win-back touch is counted as converted.
fn on_purchase(ctx: &mut Ctx<'_>, t: Stamp) {
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
        return;
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
}
