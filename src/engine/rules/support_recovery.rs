//! `support_recovery`: a complaint, a low satisfaction score, or a ticket open past its
//! SLA → apology. The step number names the trigger so each gets its own alert id.

use serde::Deserialize;

use crate::alert::Inputs;
use crate::engine::clock::{Secs, Span, Stamp, DAY};
use crate::engine::customer::{Customer, OpenTicket, MAX_OPEN_TICKETS};
use crate::engine::guards::{emit, Candidate};
use crate::engine::rule::Rule;
use crate::engine::settings::Settings;
use crate::engine::Ctx;
use crate::event::EventKind;
use super::Incoming;
use crate::problems::Problems;

/// `[rules.support_recovery]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub max_score: u8,
    /// See the defaults file.
    pub sla: Span,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    pub offer_code: String,
    /// See the defaults file.
    pub cooldown: Span,
}

/// `support_recovery` settings.
#[derive(Clone, Debug)]
pub struct SupportSettings {
    /// Emit alerts.
    pub enabled: bool,
    /// A satisfaction score at or below this fires.
    pub max_score: u8,
    /// A ticket open longer than this fires.
    pub sla: Secs,
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
    type Settings = SupportSettings;

    fn validate(sr: &Raw, key: &str, p: &mut Problems) -> SupportSettings {
        p.when(!(1..=5).contains(&sr.max_score), || {
            format!("{key}.max_score: must be 1–5, got {}", sr.max_score)
        });
        p.when(sr.sla.0 == 0, || format!("{key}.sla: must be positive"));
        p.template_name(&format!("{key}.template"), &sr.template);
        SupportSettings {
            enabled: sr.enabled,
            max_score: sr.max_score,
            sla: sr.sla.0,
            template: sr.template.clone(),
            offer_code: sr.offer_code.clone(),
            cooldown: sr.cooldown.0,
        }
    }

    fn cooldown(s: &SupportSettings) -> Secs {
        s.cooldown
    }

    fn sends(s: &SupportSettings) -> Vec<(&str, Option<&str>)> {
        vec![(&s.template, Some(&s.offer_code))]
    }

    const TIMER: Option<super::Timer> = Some(super::Timer {
        name: "support_sla",
        rank: 0,
    });

    /// When the oldest open ticket without an alert passes its SLA.
    fn next_due(s: &Settings, c: &Customer) -> Option<Stamp> {
        c.open_tickets()
            .iter()
            .filter(|o| !o.sla_fired)
            .map(|o| o.opened.plus(s.support_recovery.sla))
            .min()
    }

    /// Decides SLA alerts for tickets due at `due`.
    fn fire(ctx: &mut Ctx<'_>, due: Stamp) {
        let sla = ctx.s.support_recovery.sla;
        let overdue: Vec<(Box<str>, Stamp)> = ctx
            .c
            .open_tickets()
            .iter()
            .filter(|o| !o.sla_fired && o.opened.plus(sla) <= due)
            .map(|o| (o.id.clone(), o.opened))
            .collect();
        for (id, opened) in overdue {
            let at = opened.plus(sla);
            let inputs = Inputs::default()
                .text("trigger", "sla")
                .real("open_days", f64::from(at.since(opened)) / f64::from(DAY))
                .real("sla_days", f64::from(sla) / f64::from(DAY));
            raise(ctx, at, STEP_SLA, Some(&id), 0, inputs);
            // Disabled rule: still mark it so the timer does not fire again.
            if let Some(o) = ctx
                .c
                .tickets
                .as_deref_mut()
                .and_then(|v| v.iter_mut().find(|o| o.id == id))
            {
                o.sla_fired = true;
            }
        }
    }

    fn on_event(ctx: &mut Ctx<'_>, ev: &Incoming<'_>) {
        match ev.kind {
            EventKind::TicketOpened { ticket_id, .. } => on_opened(ctx.c, ev.at, ticket_id),
            EventKind::TicketClosed { ticket_id, .. } => on_closed(ctx.c, ticket_id),
            EventKind::Complaint { ticket_id } => {
                on_complaint(ctx, ev.at, ticket_id.as_deref(), ev.id_hash)
            }
            EventKind::Satisfaction { score, ticket_id } => {
                on_score(ctx, ev.at, *score, ticket_id.as_deref(), ev.id_hash)
            }
            _ => {}
        }
    }
}

/// Step for a complaint.
pub const STEP_COMPLAINT: u8 = 0;
/// Step for a low satisfaction score.
pub const STEP_LOW_SCORE: u8 = 1;
/// Step for a ticket over SLA.
pub const STEP_SLA: u8 = 2;

fn episode(ticket: Option<&str>, id_hash: u64) -> String {
    match ticket {
        Some(t) => format!("ticket:{t}"),
        None => format!("event:{id_hash:016x}"),
    }
}

fn raise(
    ctx: &mut Ctx<'_>,
    at: Stamp,
    step: u8,
    ticket: Option<&str>,
    id_hash: u64,
    inputs: Inputs,
) {
    ctx.c.last_bad_support = Some(at);
    let s = ctx.s;
    if !s.support_recovery.enabled {
        return;
    }
    // One apology per ticket: a later trigger for a ticket already handled is noted only.
    if let Some(t) = ticket {
        if let Some(open) = ctx
            .c
            .tickets
            .as_deref_mut()
            .and_then(|v| v.iter_mut().find(|o| &*o.id == t))
        {
            if open.sla_fired {
                return;
            }
            open.sla_fired = true;
        }
    }
    let from = ctx.c.stage;
    emit(
        ctx,
        Candidate {
            rule: Rule::SupportRecovery,
            step,
            episode: episode(ticket, id_hash),
            at,
            stage_from: from,
            template: &s.support_recovery.template,
            offer_code: &s.support_recovery.offer_code,
            inputs,
            milestone: 0,
            years: 0,
            ticket_id: ticket,
            continues_episode: false,
        },
    );
}

/// A complaint arrived.
fn on_complaint(ctx: &mut Ctx<'_>, at: Stamp, ticket: Option<&str>, id_hash: u64) {
    let inputs = Inputs::default().text("trigger", "complaint");
    raise(ctx, at, STEP_COMPLAINT, ticket, id_hash, inputs);
}

/// A satisfaction score arrived.
fn on_score(
    ctx: &mut Ctx<'_>,
    at: Stamp,
    score: u8,
    ticket: Option<&str>,
    id_hash: u64,
) {
    ctx.c.last_score = score;
    let max = ctx.s.support_recovery.max_score;
    if score > max {
        return;
    }
    let inputs = Inputs::default()
        .text("trigger", "low_score")
        .int("score", score)
        .int("max_score", max);
    raise(ctx, at, STEP_LOW_SCORE, ticket, id_hash, inputs);
}

/// A ticket was opened (the oldest is forgotten beyond eight).
fn on_opened(c: &mut Customer, at: Stamp, ticket: &str) {
    // Most customers have one open ticket at a time: start with room for exactly one.
    let list = c
        .tickets
        .get_or_insert_with(|| Box::new(Vec::with_capacity(1)));
    if list.iter().any(|o| &*o.id == ticket) {
        return;
    }
    if list.len() >= MAX_OPEN_TICKETS {
        list.remove(0);
    }
    list.push(OpenTicket {
        id: ticket.into(),
        opened: at,
        sla_fired: false,
    });
}

/// A ticket was closed.
fn on_closed(c: &mut Customer, ticket: &str) {
    if let Some(list) = c.tickets.as_deref_mut() {
        list.retain(|o| &*o.id != ticket);
        if list.is_empty() {
            c.tickets = None;
        }
    }
}


