//! Guards decided on event time (docs/design.md §7 Decisions), in order: suppression, holdout, cooldown,
//! cap, staleness. Each outcome is recorded in the alert and counted.

use sha2::{Digest, Sha256};

use super::clock::Stamp;
use super::customer::Customer;
use super::rule::Rule;
use super::settings::{DeliverySettings, Settings};
use super::stage::Stage;
use super::Ctx;
use crate::alert::{alert_id, Alert, Decision, Inputs, MailContext, Suppression};
use crate::engine::profile::Profile;

/// A rule's proposal, before guards.
pub(crate) struct Candidate<'t> {
    pub rule: Rule,
    pub step: u8,
    pub episode: String,
    pub at: Stamp,
    pub stage_from: Stage,
    pub template: &'t str,
    pub offer_code: &'t str,
    pub inputs: Inputs,
    pub milestone: u32,
    pub years: u32,
    pub ticket_id: Option<&'t str>,
    /// Later steps of a started sequence are not subject to the rule's cooldown.
    pub continues_episode: bool,
}

/// Whether a customer falls in the holdout group: SHA-256(salt ‖ customer id), first
/// eight bytes big-endian, modulo 10 000, below `holdout_percent` × 100.
pub fn in_holdout(d: &DeliverySettings, customer_id: &str) -> bool {
    if d.holdout_percent <= 0.0 {
        return false;
    }
    let mut h = Sha256::new();
    h.update(d.holdout_salt.as_bytes());
    h.update(customer_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bucket = u64::from_be_bytes(first) % 10_000;
    (bucket as f64) < d.holdout_percent * 100.0
}

/// Why the profile forbids email, if it does.
pub fn suppression(d: &DeliverySettings, p: Option<&Profile>) -> Option<Suppression> {
    let Some(p) = p else {
        return Some(Suppression::NoAddress);
    };
    if p.email.as_deref().is_none_or(str::is_empty) {
        return Some(Suppression::NoAddress);
    }
    match p.consent {
        Some(false) => return Some(Suppression::NoConsent),
        None if d.require_consent => return Some(Suppression::NoConsent),
        _ => {}
    }
    if p.unsubscribed() {
        return Some(Suppression::Unsubscribed);
    }
    if p.hard_bounced() {
        return Some(Suppression::HardBounce);
    }
    None
}

fn decide(s: &Settings, ctx: &Ctx<'_>, cand: &Candidate<'_>) -> Decision {
    let d = &s.delivery;
    let c = &*ctx.c;
    if let Some(why) = suppression(d, ctx.profile()) {
        return Decision::Suppressed(why);
    }
    if d.holdout_rules[cand.rule.index()] && in_holdout(d, ctx.id) {
        return Decision::Holdout;
    }
    if !cand.continues_episode {
        let cooldown = s.cooldown(cand.rule);
        if c.rule_last[cand.rule.index()].is_some_and(|l| cand.at.since(l) < cooldown) {
            return Decision::Cooldown;
        }
    }
    if c.emails_within(cand.at.day(), d.window_days) >= usize::from(d.max_emails) {
        return Decision::Capped;
    }
    if ctx.clock.since(cand.at) > d.max_decision_age {
        return Decision::Stale;
    }
    Decision::Email
}

/// Customer-supplied text without control characters or bidi controls.
fn plain(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !crate::event::is_bidi_control(*c))
        .collect()
}

/// What every email says about its customer at `at` (the rule's own values empty):
/// shared by decided emails and `preview --customer`.
pub(crate) fn contact(
    p: Option<&Profile>,
    c: &Customer,
    favourite: Option<&str>,
    at: Stamp,
) -> MailContext {
    let text = |v: Option<&str>| v.unwrap_or("").to_string();
    // Customer-supplied text reaches both parts and the headers: whatever an older
    // version let into the store, no control character or bidi control gets out.
    let plain = |v: Option<&str>| plain(v.unwrap_or(""));
    MailContext {
        email: text(p.and_then(|p| p.email.as_deref())),
        name: plain(p.and_then(|p| p.name.as_deref())),
        locale: text(p.and_then(|p| p.locale.as_deref())),
        days_since_last_purchase: c.days_since_purchase(at),
        purchase_count: c.purchases,
        favourite_category: plain(favourite),
        timezone: text(p.and_then(|p| p.timezone.as_deref())),
        ..MailContext::default()
    }
}

/// Applies the guards to a candidate, records the alert, and returns its decision
/// (`None` when the event was too late to trigger alerts).
pub(crate) fn emit(ctx: &mut Ctx<'_>, cand: Candidate<'_>) -> Option<Decision> {
    if ctx.quiet {
        return None;
    }
    let s = ctx.s;
    let decision = decide(s, ctx, &cand);
    let profile = ctx.profile();
    let favourite = ctx.favourite_category();
    let c = &mut *ctx.c;
    if !cand.continues_episode && decision != Decision::Cooldown {
        c.rule_last[cand.rule.index()] = Some(cand.at);
    }
    let mail = if decision == Decision::Email {
        c.record_email(cand.at.day());
        Some(Box::new(MailContext {
            offer_code: crate::alert::offer_code(&s.offer_key, cand.offer_code, ctx.id, cand.rule),
            milestone: cand.milestone,
            years: cand.years,
            ticket_id: plain(cand.ticket_id.unwrap_or("")),
            ..contact(profile, c, favourite, cand.at)
        }))
    } else {
        None
    };
    let locale = profile
        .and_then(|p| p.locale.as_deref())
        .unwrap_or(&s.delivery.default_locale)
        .to_string();
    let alert = Alert {
        alert_id: alert_id(&s.id_key, ctx.id, cand.rule, &cand.episode, cand.step),
        customer_id: ctx.id.into(),
        rule: cand.rule,
        step: cand.step,
        episode: cand.episode,
        at: cand.at,
        stage_from: cand.stage_from,
        stage_to: c.stage,
        churn_risk: super::risk::churn_risk(c, cand.at, &s.risk).map(|r| r.value),
        inputs: cand.inputs,
        decision,
        template: cand.template.to_string(),
        locale,
        mail,
    };
    ctx.stats.record_alert(&alert);
    ctx.out.push(alert);
    Some(decision)
}
