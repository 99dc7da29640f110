//! `thank_you`: purchase-count milestones, promotion to loyal, and the yearly
//! anniversary of a loyal customer's first purchase.

use serde::Deserialize;

use crate::alert::Inputs;
use crate::engine::clock::{Secs, Span, Stamp, DAY};
use crate::engine::customer::{flag, Customer};
use crate::engine::guards::{emit, Candidate};
use crate::engine::rule::Rule;
use crate::engine::settings::Settings;
use crate::engine::stage::{Cause, Stage};
use crate::engine::Ctx;
use crate::event::EventKind;
use super::Incoming;
use crate::problems::Problems;

/// `[rules.thank_you]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub milestones: Vec<u32>,
    /// See the defaults file.
    pub on_loyal: bool,
    /// See the defaults file.
    pub anniversary: bool,
    /// See the defaults file.
    pub milestone_template: String,
    /// See the defaults file.
    pub loyal_template: String,
    /// See the defaults file.
    pub anniversary_template: String,
    /// See the defaults file.
    pub cooldown: Span,
}

/// `thank_you` settings.
#[derive(Clone, Debug)]
pub struct ThankYouSettings {
    /// Emit alerts.
    pub enabled: bool,
    /// Purchase counts that earn a thank-you, ascending.
    pub milestones: Vec<u32>,
    /// Thank on promotion to loyal.
    pub on_loyal: bool,
    /// Thank loyal customers on the anniversary of their first purchase.
    pub anniversary: bool,
    /// Template for milestones.
    pub milestone_template: String,
    /// Template for the loyal promotion.
    pub loyal_template: String,
    /// Template for anniversaries.
    pub anniversary_template: String,
    /// Minimum time between alerts.
    pub cooldown: Secs,
}

/// The rule's entry in the registry.
pub struct Spec;

impl super::RuleSpec for Spec {
    type Raw = Raw;
    type Settings = ThankYouSettings;

    fn validate(ty: &Raw, key: &str, p: &mut Problems) -> ThankYouSettings {
        p.when(
            ty.milestones.windows(2).any(|m| m[1] <= m[0]) || ty.milestones.contains(&0),
            || format!("{key}.milestones: must be positive and strictly ascending"),
        );
        p.template_name(&format!("{key}.milestone_template"), &ty.milestone_template);
        p.template_name(&format!("{key}.loyal_template"), &ty.loyal_template);
        p.template_name(
            &format!("{key}.anniversary_template"),
            &ty.anniversary_template,
        );
        ThankYouSettings {
            enabled: ty.enabled,
            milestones: ty.milestones.clone(),
            on_loyal: ty.on_loyal,
            anniversary: ty.anniversary,
            milestone_template: ty.milestone_template.clone(),
            loyal_template: ty.loyal_template.clone(),
            anniversary_template: ty.anniversary_template.clone(),
            cooldown: ty.cooldown.0,
        }
    }

    fn cooldown(s: &ThankYouSettings) -> Secs {
        s.cooldown
    }

    fn sends(s: &ThankYouSettings) -> Vec<(&str, Option<&str>)> {
        // Thanks carry no offer.
        vec![
            (&s.milestone_template, None),
            (&s.loyal_template, None),
            (&s.anniversary_template, None),
        ]
    }

    const TIMER: Option<super::Timer> = Some(super::Timer {
        name: "anniversary",
        rank: 4,
    });

    /// The next anniversary of a loyal customer's first purchase.
    fn next_due(s: &Settings, c: &Customer) -> Option<Stamp> {
        if !(s.thank_you.enabled && s.thank_you.anniversary && c.has(flag::LOYAL)) {
            return None;
        }
        let first = c.first_purchase?;
        if c.anniversaries == u8::MAX {
            return None;
        }
        Some(first.plus_years(c.anniversaries + 1))
    }

    /// Thanks a customer who is `loyal` on the anniversary due at `due`.
    fn fire(ctx: &mut Ctx<'_>, due: Stamp) {
        ctx.c.anniversaries = ctx.c.anniversaries.saturating_add(1);
        if ctx.c.stage != Stage::Loyal {
            return;
        }
        let s = ctx.s;
        let years = ctx.c.anniversaries;
        let from = ctx.c.stage;
        emit(
            ctx,
            Candidate {
                rule: Rule::ThankYou,
                step: 0,
                episode: format!("anniversary:{years}"),
                at: due,
                stage_from: from,
                template: &s.thank_you.anniversary_template,
                offer_code: "",
                inputs: Inputs::default()
                    .int("years", years)
                    .int("purchases", ctx.c.purchases),
                milestone: 0,
                years: u32::from(years),
                ticket_id: None,
                continues_episode: false,
            },
        );
    }

    fn on_event(ctx: &mut Ctx<'_>, ev: &Incoming<'_>) {
        if let EventKind::Purchase { .. } = ev.kind {
            on_purchase(ctx, ev.at, ev.returned);
        }
    }
}

/// Whether the customer meets the loyal criteria at `t`.
pub fn meets_loyal(s: &Settings, c: &Customer, t: Stamp) -> bool {
    c.purchases >= s.loyal.min_purchases && c.tenure(t) >= s.loyal.min_tenure
}

/// Whole years from `first` to `t` on the calendar.
fn years_between(first: Stamp, t: Stamp) -> u8 {
    let mut n = 0u8;
    while n < u8::MAX && first.plus_years(n + 1) <= t {
        n += 1;
    }
    n
}

/// Called after a purchase at `t` updated the counters (`returned`: it was a comeback).
fn on_purchase(ctx: &mut Ctx<'_>, t: Stamp, returned: bool) {
    let s = ctx.s;
    let ty = &s.thank_you;
    let n = ctx.c.purchases;
    if ty.enabled && ty.milestones.contains(&n) {
        let from = ctx.c.stage;
        emit(
            ctx,
            Candidate {
                rule: Rule::ThankYou,
                step: 0,
                episode: format!("milestone:{n}"),
                at: t,
                stage_from: from,
                template: &ty.milestone_template,
                offer_code: "",
                inputs: Inputs::default().int("purchases", n).int("milestone", n),
                milestone: n,
                years: 0,
                ticket_id: None,
                continues_episode: false,
            },
        );
    }
    if ctx.c.has(flag::LOYAL) || returned || !meets_loyal(s, ctx.c, t) {
        return;
    }
    ctx.c.set(flag::LOYAL, true);
    if let Some(first) = ctx.c.first_purchase {
        // Anniversaries already past at promotion are not thanked retroactively.
        ctx.c.anniversaries = years_between(first, t);
    }
    let from = ctx.c.move_to(Stage::Loyal, Cause::LoyalPromotion, t);
    if ty.enabled && ty.on_loyal {
        let tenure_days = ctx.c.tenure(t) / DAY;
        emit(
            ctx,
            Candidate {
                rule: Rule::ThankYou,
                step: 0,
                episode: "loyal".to_string(),
                at: t,
                stage_from: from,
                template: &ty.loyal_template,
                offer_code: "",
                inputs: Inputs::default()
                    .int("purchases", n)
                    .int("tenure_days", tenure_days)
                    .int("min_purchases", s.loyal.min_purchases)
                    .int("min_tenure_days", s.loyal.min_tenure / DAY),
                milestone: 0,
                years: 0,
                ticket_id: None,
                continues_episode: false,
            },
        );
    }
}


