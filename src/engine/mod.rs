//! The pure churn engine: events in, decisions out. No I/O, no wall clock, no async —
//! `replay`, `simulate`, `run` and the benchmarks all drive this same struct.
//!
//! Two entry points: [`Engine::apply`] for one event, and [`Engine::advance`] /
//! [`Engine::finish`] to move the event-time clock and fire due timers.

pub mod category;
pub mod checkpoint;
pub mod clock;
pub mod customer;
pub mod dedup;
pub mod guards;
pub mod profile;
pub mod retention;
pub mod risk;
pub mod rule;
pub mod rules;
pub mod settings;
pub mod stage;
pub mod timers;

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::{HashMap, HashTable};
use serde::Serialize;

use crate::alert::{Alert, Decision};
use crate::event::{Event, EventKind, EVENT_TYPES};
use clock::{Stamp, DAY};
use customer::{flag, Customer};
use profile::Profile;
use risk::Population;
use rule::Rule;
use rules::{frequency_drop, winback};
use settings::Settings;
use stage::{Cause, Stage};
use timers::{TimerIndex, TimerKind};

/// A purchase moves a customer to `new`, `active` or back to `loyal`, unless it brought
/// them back from `lapsed` (then they are `won_back`) or they are loyal already.
fn stage_after_purchase(ctx: &mut Ctx<'_>, t: Stamp, returned: bool) {
    if returned || ctx.c.stage == Stage::Loyal {
        return;
    }
    let base = if ctx.c.has(flag::LOYAL) {
        Stage::Loyal
    } else if ctx.c.purchases == 1 {
        Stage::New
    } else {
        Stage::Active
    };
    ctx.c.move_to(base, Cause::Purchase, t);
}

/// What happened to an applied event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied, rules ran.
    Applied,
    /// Applied to counters only: later than `allowed_lateness` behind the clock.
    Late,
    /// Same `event_id` seen recently for this customer: ignored.
    Duplicate,
    /// The customer was erased.
    Erased,
}

/// Counters of what the engine saw and decided.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Applied events per type, in [`EVENT_TYPES`] order.
    pub events: [u64; EVENT_TYPES.len()],
    /// Events ignored as duplicates.
    pub duplicates: u64,
    /// Events applied too late to trigger alerts.
    pub late: u64,
    /// Alerts per rule.
    pub alerts: [u64; Rule::COUNT],
    /// Alerts per (rule, decision).
    pub decisions: BTreeMap<(Rule, Decision), u64>,
    /// Win-back sequences that touched a customer: [emailed, holdout].
    pub winback_touched: [u64; 2],
    /// Of those, customers who bought within the attribution window: [emailed, holdout].
    pub winback_converted: [u64; 2],
    /// Customers erased.
    pub erased: u64,
    /// Customers dropped after `state.retention` without an event.
    pub expired: u64,
}

impl Stats {
    pub(crate) fn record_alert(&mut self, a: &Alert) {
        self.alerts[a.rule.index()] += 1;
        *self.decisions.entry((a.rule, a.decision)).or_default() += 1;
    }

    /// Alerts whose decision is `Email`.
    pub fn emails(&self) -> u64 {
        self.decisions
            .iter()
            .filter(|((_, d), _)| *d == Decision::Email)
            .map(|(_, n)| n)
            .sum()
    }
}

/// What a rule sees while deciding about one customer.
pub struct Ctx<'a> {
    pub(crate) s: &'a Settings,
    pub(crate) id: &'a str,
    pub(crate) c: &'a mut Customer,
    /// Looked up only when an alert needs it (most timer work does not).
    profiles: &'a HashMap<u32, Profile>,
    categories: &'a HashMap<u32, category::TopCategories>,
    category_names: &'a category::Interner,
    slot: u32,
    pub(crate) clock: Stamp,
    /// A late event: update state, emit nothing.
    pub(crate) quiet: bool,
    pub(crate) out: &'a mut Vec<Alert>,
    pub(crate) stats: &'a mut Stats,
}

impl<'a> Ctx<'a> {
    /// The customer's profile, if any.
    pub fn profile(&self) -> Option<&'a Profile> {
        self.profiles.get(&self.slot)
    }

    /// The customer's most bought category, if any.
    pub fn favourite_category(&self) -> Option<&'a str> {
        let id = self.categories.get(&self.slot)?.favourite()?;
        self.category_names.name(id)
    }
}

struct Slot {
    id: Box<str>,
    c: Customer,
}

/// The per-task churn engine.
pub struct Engine {
    settings: Arc<Settings>,
    index: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    profiles: HashMap<u32, Profile>,
    categories: HashMap<u32, category::TopCategories>,
    category_names: category::Interner,
    /// Event ids beyond the two inline ones, per slot flagged `DEDUP_SPILL`.
    event_ids: HashMap<u32, Vec<u64>>,
    /// Ids forgotten early to stay within `dedup_max_per_customer` (since start).
    dedup_evicted: u64,
    timers: TimerIndex,
    clock: Option<Stamp>,
    population: Population,
    stats: Stats,
    /// Retained customers and their daily marks, for the CRR.
    retention: retention::Retention,
    /// Slots changed since the last checkpoint (one bit each).
    dirty: Vec<u64>,
    /// Ids dropped since the last checkpoint.
    removed: Vec<Box<str>>,
    /// The clock as of the last checkpoint (a moved clock alone is a change too).
    checkpointed_clock: Option<Stamp>,
}

/// Sets `slot`'s bit in a dirty set.
fn mark(dirty: &mut Vec<u64>, slot: u32) {
    let (word, bit) = ((slot / 64) as usize, slot % 64);
    if word >= dirty.len() {
        dirty.resize(word + 1, 0);
    }
    dirty[word] |= 1 << bit;
}

fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl Engine {
    /// An empty engine.
    pub fn new(settings: Arc<Settings>) -> Engine {
        Engine {
            settings,
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            profiles: HashMap::new(),
            categories: HashMap::new(),
            category_names: category::Interner::default(),
            event_ids: HashMap::new(),
            dedup_evicted: 0,
            timers: TimerIndex::default(),
            clock: None,
            population: Population::default(),
            stats: Stats::default(),
            retention: retention::Retention::default(),
            dirty: Vec::new(),
            removed: Vec::new(),
            checkpointed_clock: None,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// Swaps in new settings (hot reload); pending timers are re-derived lazily as
    /// customers change, and at once for customers whose next due time moved earlier.
    pub fn set_settings(&mut self, settings: Arc<Settings>) {
        self.settings = settings;
        for slot in 0..self.slots.len() as u32 {
            if !self.slots[slot as usize].id.is_empty() {
                let c = &mut self.slots[slot as usize].c;
                c.at_risk_hours = risk::at_risk_hours(c, &self.settings.risk);
                self.reschedule(slot);
            }
        }
    }

    /// The event-time clock (greatest event time applied, or where it was advanced to).
    pub fn clock(&self) -> Option<Stamp> {
        self.clock
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What an email to `customer_id` would say about them now (`preview --customer`).
    pub fn mail_context(&self, customer_id: &str) -> Option<crate::alert::MailContext> {
        let slot = self.find(customer_id)?;
        let favourite = self
            .categories
            .get(&slot)
            .and_then(|c| c.favourite())
            .and_then(|id| self.category_names.name(id));
        Some(guards::contact(
            self.profiles.get(&slot),
            &self.slots[slot as usize].c,
            favourite,
            self.clock.unwrap_or(Stamp::MIN),
        ))
    }

    /// The CRR numbers over the `period_days` before the clock's day (docs/design.md §6 State and rules); `None`
    /// until the engine has seen that much time.
    pub fn retention(&self, period_days: u16) -> Option<retention::Crr> {
        self.retention.over(self.clock?.day(), period_days)
    }

    /// Population statistics learned so far.
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// Customers tracked.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no customer is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Customers with a pending timer.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    fn find(&self, id: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(id_hash(id), |&s| &*slots[s as usize].id == id)
            .copied()
    }

    fn find_or_create(&mut self, id: &str) -> u32 {
        if let Some(s) = self.find(id) {
            return s;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Slot {
                    id: id.into(),
                    c: Customer::default(),
                };
                s
            }
            None => {
                self.slots.push(Slot {
                    id: id.into(),
                    c: Customer::default(),
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(id_hash(id), slot, |&s| id_hash(&slots[s as usize].id));
        slot
    }

    fn mark(&mut self, slot: u32) {
        mark(&mut self.dirty, slot);
    }

    /// Drops a customer's state, profile and timers; its slot is reused.
    fn drop_slot(&mut self, slot: u32) {
        let id = std::mem::take(&mut self.slots[slot as usize].id);
        if let Ok(entry) = self.index.find_entry(id_hash(&id), |&s| s == slot) {
            entry.remove();
        }
        let due = self.slots[slot as usize].c.due;
        self.retention.removed(self.slots[slot as usize].c.stage);
        self.timers.reschedule(slot, due, None);
        self.profiles.remove(&slot);
        if let Some(top) = self.categories.remove(&slot) {
            self.category_names.release(&top);
        }
        self.event_ids.remove(&slot);
        self.slots[slot as usize].c = Customer::default();
        self.free.push(slot);
        if let Some(w) = self.dirty.get_mut((slot / 64) as usize) {
            *w &= !(1 << (slot % 64));
        }
        self.removed.push(id);
    }

    fn erase(&mut self, id: &str) {
        if let Some(slot) = self.find(id) {
            self.drop_slot(slot);
            self.stats.erased += 1;
        }
    }

    fn reschedule(&mut self, slot: u32) {
        self.mark(slot);
        let c = &mut self.slots[slot as usize].c;
        let new = timers::next(&self.settings, c).map(|(d, _)| d);
        self.timers.reschedule(slot, c.due, new);
        c.due = new;
    }

    /// Runs `f` with a rule context for one customer.
    fn with_ctx<R>(
        &mut self,
        slot: u32,
        quiet: bool,
        out: &mut Vec<Alert>,
        f: impl FnOnce(&mut Ctx<'_>) -> R,
    ) -> R {
        let s = &mut self.slots[slot as usize];
        let mut ctx = Ctx {
            s: &self.settings,
            id: &s.id,
            c: &mut s.c,
            profiles: &self.profiles,
            categories: &self.categories,
            category_names: &self.category_names,
            slot,
            clock: self.clock.unwrap_or(Stamp::MIN),
            quiet,
            out,
            stats: &mut self.stats,
        };
        let before = ctx.c.stage;
        let r = f(&mut ctx);
        self.retention.change(before, s.c.stage);
        r
    }

    /// Fires one customer's timers due at or before `limit`, in due order.
    fn fire_customer(&mut self, slot: u32, limit: Stamp, out: &mut Vec<Alert>) {
        // Each handler moves its own due time forward; the bound guards against a bug
        // turning into a hang.
        for _ in 0..10_000 {
            let Some((due, kind)) = timers::next(&self.settings, &self.slots[slot as usize].c)
            else {
                break;
            };
            if due > limit {
                break;
            }
            self.with_ctx(slot, false, out, |ctx| match kind {
                TimerKind::Rule(rule) => rules::fire(rule, ctx, due),
                TimerKind::AtRisk => {
                    ctx.c.move_to(Stage::AtRisk, Cause::RiskCrossed, due);
                }
                TimerKind::Expire => {}
            });
            if kind == TimerKind::Expire {
                self.drop_slot(slot);
                self.stats.expired += 1;
                return;
            }
        }
        self.reschedule(slot);
    }

    /// Fires every timer due at or before `limit`, earliest first.
    fn fire_until(&mut self, limit: Stamp, out: &mut Vec<Alert>) {
        while let Some((_, slot)) = self.timers.pop_due(limit) {
            self.slots[slot as usize].c.due = None;
            self.fire_customer(slot, limit, out);
        }
    }

    /// Moves the clock to at least `to` and fires timers due by `clock − allowed_lateness`.
    pub fn advance(&mut self, to: Stamp, out: &mut Vec<Alert>) {
        let clock = self.clock.map_or(to, |c| c.max(to));
        self.clock = Some(clock);
        self.retention.tick(clock.day());
        let limit = clock.minus(self.settings.allowed_lateness);
        self.fire_until(limit, out);
    }

    /// End of input: moves the clock to `until` and fires every timer due by then
    /// (no lateness to wait for once nothing more can arrive).
    pub fn finish(&mut self, until: Stamp, out: &mut Vec<Alert>) {
        let clock = self.clock.map_or(until, |c| c.max(until));
        self.clock = Some(clock);
        self.retention.tick(clock.day());
        self.fire_until(until, out);
    }

    /// Applies one event: the clock moves, due timers fire (this customer's up to the
    /// event's time first), then the event updates state and the rules decide.
    pub fn apply(&mut self, ev: Event, out: &mut Vec<Alert>) -> Applied {
        let t = ev.at;
        self.advance(t, out);
        let clock = self.clock.unwrap_or(t);
        let type_index = EVENT_TYPES
            .iter()
            .position(|n| *n == ev.kind.type_name())
            .unwrap_or(0);
        if ev.kind == EventKind::Erased {
            self.erase(&ev.customer_id);
            self.stats.events[type_index] += 1;
            return Applied::Erased;
        }
        let slot = self.find_or_create(&ev.customer_id);
        if self.seen_before(slot, ev.id_hash, clock) {
            self.stats.duplicates += 1;
            return Applied::Duplicate;
        }
        self.stats.events[type_index] += 1;
        if self.slots[slot as usize].c.due.is_some_and(|d| d <= t) {
            self.fire_customer(slot, t, out);
            if self.slots[slot as usize].id.is_empty() {
                // Expired just before this event, which starts the customer afresh.
                self.stats.events[type_index] -= 1;
                return self.apply(ev, out);
            }
        }
        let c = &mut self.slots[slot as usize].c;
        c.last_seen = c.last_seen.max(Some(t));
        let quiet = clock.since(t) > self.settings.allowed_lateness;
        if quiet {
            self.stats.late += 1;
        }
        let incoming = rules::Incoming {
            kind: &ev.kind,
            at: t,
            id_hash: ev.id_hash,
            returned: matches!(ev.kind, EventKind::Purchase { .. })
                && self.slots[slot as usize].c.stage == Stage::Lapsed,
        };
        self.with_ctx(slot, quiet, out, |ctx| rules::before_event(ctx, &incoming));
        self.take_in(slot, &ev.kind, t);
        self.with_ctx(slot, quiet, out, |ctx| {
            if let EventKind::Purchase { .. } = incoming.kind {
                stage_after_purchase(ctx, t, incoming.returned);
            }
            rules::on_event(ctx, &incoming);
        });
        if let EventKind::Profile(update) = ev.kind {
            self.profiles.entry(slot).or_default().update(update, t);
        }
        self.reschedule(slot);
        // A late event can leave this customer with a timer already overdue; decide it
        // now, at this clock, so the next call (or batch boundary) cannot change it.
        let limit = clock.minus(self.settings.allowed_lateness);
        self.fire_until(limit, out);
        if quiet {
            Applied::Late
        } else {
            Applied::Applied
        }
    }

    /// Updates the customer's counters, categories and suppressions with an event (what
    /// the rules then see; a profile update is taken in after them, by value).
    fn take_in(&mut self, slot: u32, kind: &EventKind, t: Stamp) {
        match kind {
            EventKind::Purchase { amount, categories } => {
                self.record_purchase(slot, t, *amount);
                for name in categories {
                    if let Some(id) = self.category_names.intern(name) {
                        let top = self.categories.entry(slot).or_default();
                        let (held, released) = top.count(id);
                        self.category_names.track(held, released);
                    }
                }
            }
            EventKind::Refund { amount } => {
                let c = &mut self.slots[slot as usize].c;
                if c.currency == amount.currency {
                    c.spend_minor = c.spend_minor.saturating_sub(amount.minor);
                }
            }
            EventKind::Unsubscribed => {
                self.profiles.entry(slot).or_default().unsubscribe(t);
            }
            EventKind::Bounced { hard: true } => {
                self.profiles.entry(slot).or_default().bounce(t);
            }
            _ => {}
        }
    }

    /// Whether the event id was already seen for this customer within the dedup window;
    /// remembers it if not.
    fn seen_before(&mut self, slot: u32, id_hash: u64, clock: Stamp) -> bool {
        let window_days = u16::try_from(self.settings.dedup_window / DAY)
            .unwrap_or(u16::MAX)
            .max(1);
        let c = &mut self.slots[slot as usize].c;
        let mut spill = if c.has(flag::DEDUP_SPILL) {
            self.event_ids.remove(&slot).unwrap_or_default()
        } else {
            Vec::new()
        };
        let seen = dedup::record(
            &mut c.dedup,
            &mut spill,
            id_hash,
            clock.day(),
            window_days,
            self.settings.dedup_max_per_customer,
        );
        c.set(flag::DEDUP_SPILL, !spill.is_empty());
        if !spill.is_empty() {
            self.event_ids.insert(slot, spill);
        }
        match seen {
            dedup::Seen::Duplicate => true,
            dedup::Seen::New { evicted } => {
                self.dedup_evicted += u64::from(evicted);
                false
            }
        }
    }

    /// Event ids forgotten early to stay within `engine.dedup_max_per_customer`.
    pub fn dedup_evicted(&self) -> u64 {
        self.dedup_evicted
    }

    fn record_purchase(&mut self, slot: u32, t: Stamp, amount: crate::event::Amount) {
        let s = &self.settings;
        let c = &mut self.slots[slot as usize].c;
        let prev_last = c.last_purchase;
        if c.first_purchase.is_none() {
            self.retention.first_purchase();
        }
        match c.first_purchase {
            None => self.population.observe_first(t, None),
            Some(f) if t < f => self.population.observe_first(t, Some(f)),
            Some(_) => self.population.observe_repeat(),
        }
        if c.first_purchase.is_none_or(|f| t < f) {
            c.first_purchase = Some(t);
        }
        c.purchases = c.purchases.saturating_add(1);
        if c.currency == 0 {
            c.currency = amount.currency;
        }
        if c.currency == amount.currency {
            c.spend_minor = c.spend_minor.saturating_add(amount.minor);
        }
        c.buckets.add(t);
        if prev_last.is_none_or(|l| t >= l) {
            // A new latest purchase starts new inactivity and drop episodes.
            c.last_purchase = Some(t);
            c.winback_step = 0;
            c.set(flag::DROP_FIRED | flag::WINBACK_MUTED, false);
        }
        c.population_gap_days = self.population.typical_gap_days(t, &s.risk) as f32;
        c.at_risk_hours = risk::at_risk_hours(c, &s.risk);
    }

    /// Why the customer may not be emailed now, if so (docs/design.md §10 Sender: suppression is checked
    /// again at send time). A customer the engine does not know was erased.
    pub fn suppression(&self, customer_id: &str) -> Option<crate::alert::Suppression> {
        let Some(slot) = self.find(customer_id) else {
            return Some(crate::alert::Suppression::Erased);
        };
        guards::suppression(&self.settings.delivery, self.profiles.get(&slot))
    }

    /// A customer's state, explained, as of the clock.
    pub fn snapshot(&self, customer_id: &str) -> Option<Snapshot> {
        self.find(customer_id).map(|slot| self.snapshot_slot(slot))
    }

    fn snapshot_slot(&self, slot: u32) -> Snapshot {
        let s = &self.settings;
        let Slot { id, c } = &self.slots[slot as usize];
        let as_of = self.clock.unwrap_or(Stamp::MIN);
        let risk = risk::churn_risk(c, as_of, &s.risk);
        let b = customer::Buckets::index(as_of);
        let drop = frequency_drop::test(&s.frequency_drop, &c.buckets, b.saturating_add(1));
        Snapshot {
            customer_id: id.to_string(),
            stage: c.stage.name(),
            stage_since: c.stage_since.map(Stamp::to_rfc3339),
            stage_cause: c.cause.explain(),
            churn_risk: risk.as_ref().map(|r| crate::alert::round4(r.value)),
            as_of: as_of.to_rfc3339(),
            risk_inputs: risk.as_ref().map(|r| RiskInputs {
                recency_days: crate::alert::round4(r.recency_days),
                typical_gap_days: crate::alert::round4(r.typical_gap_days),
                support_factor: r.support_factor,
                repeat_purchases: r.repeat_purchases,
                dropout_odds: crate::alert::round4(r.dropout_odds),
            }),
            purchases: c.purchases,
            first_purchase: c.first_purchase.map(Stamp::to_rfc3339),
            last_purchase: c.last_purchase.map(Stamp::to_rfc3339),
            days_since_last_purchase: c.last_purchase.map(|_| c.days_since_purchase(as_of)),
            spend_minor: c.spend_minor,
            currency: iso_currency::Currency::from_numeric(c.currency).map(|cur| cur.code()),
            recent_purchases: drop.recent,
            baseline_purchases: drop.baseline,
            winback_threshold_days: c.last_purchase.map(|_| winback::threshold(s, c) / DAY),
            winback_steps_done: c.winback_step,
            loyal: c.has(flag::LOYAL),
            open_tickets: c.open_tickets().len(),
            last_satisfaction: (c.last_score > 0).then_some(c.last_score),
            pending_timers: timers::pending(s, c)
                .into_iter()
                .map(|(d, k)| PendingTimer {
                    kind: k.name(),
                    due: d.to_rfc3339(),
                })
                .collect(),
        }
    }

    /// A customer's churn_risk at the clock, with its inputs.
    pub fn risk(&self, customer_id: &str) -> Option<risk::Risk> {
        let slot = self.find(customer_id)?;
        let as_of = self.clock?;
        risk::churn_risk(&self.slots[slot as usize].c, as_of, &self.settings.risk)
    }

    /// Ids of every tracked customer (unordered).
    pub fn customer_ids(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .filter(|s| !s.id.is_empty())
            .map(|s| &*s.id)
    }

    /// Every customer's snapshot, sorted by customer id.
    pub fn snapshots_sorted(&self) -> Vec<Snapshot> {
        let mut slots: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&s| !self.slots[s as usize].id.is_empty())
            .collect();
        slots.sort_by(|a, b| self.slots[*a as usize].id.cmp(&self.slots[*b as usize].id));
        slots.into_iter().map(|s| self.snapshot_slot(s)).collect()
    }

    /// Bytes of hot state: every customer's fixed part plus the open tickets it owns.
    /// (Keys, profiles and the timer index are counted apart, as README "Performance" does.)
    pub fn hot_state_bytes(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !s.id.is_empty())
            .map(|s| {
                let tickets = s.c.tickets.as_deref().map_or(0, |v| {
                    std::mem::size_of::<Vec<customer::OpenTicket>>()
                        + v.capacity() * std::mem::size_of::<customer::OpenTicket>()
                        + v.iter().map(|t| t.id.len()).sum::<usize>()
                });
                std::mem::size_of::<Customer>() + tickets
            })
            .sum()
    }

    /// Customers per stage, in [`Stage::ALL`] order.
    pub fn stage_counts(&self) -> [u64; 7] {
        let mut n = [0u64; 7];
        for s in self.slots.iter().filter(|s| !s.id.is_empty()) {
            n[s.c.stage as usize] += 1;
        }
        n
    }
}

/// The inputs churn_risk was computed from.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RiskInputs {
    /// Days since the last purchase.
    pub recency_days: f64,
    /// Typical gap between purchases, days.
    pub typical_gap_days: f64,
    /// Odds multiplier for recent bad support.
    pub support_factor: f64,
    /// Purchases after the first.
    pub repeat_purchases: u32,
    /// Odds of having dropped out right after the last purchase.
    pub dropout_odds: f64,
}

/// A pending timer of a customer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PendingTimer {
    /// What it is for.
    pub kind: &'static str,
    /// When it is due.
    pub due: String,
}

/// One customer's state, explained; no email or name (safe for analysts).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Snapshot {
    /// Customer id.
    pub customer_id: String,
    /// Current stage.
    pub stage: &'static str,
    /// Since when.
    pub stage_since: Option<String>,
    /// Why.
    pub stage_cause: &'static str,
    /// churn_risk at `as_of` (null without purchases).
    pub churn_risk: Option<f64>,
    /// The instant this snapshot describes (the engine clock).
    pub as_of: String,
    /// What churn_risk was computed from.
    pub risk_inputs: Option<RiskInputs>,
    /// Purchases.
    pub purchases: u32,
    /// First purchase.
    pub first_purchase: Option<String>,
    /// Last purchase.
    pub last_purchase: Option<String>,
    /// Whole days since the last purchase.
    pub days_since_last_purchase: Option<u32>,
    /// Spend in minor units of `currency`, refunds subtracted.
    pub spend_minor: i64,
    /// ISO 4217 code of the spend.
    pub currency: Option<&'static str>,
    /// Purchases in the frequency_drop recent window ending now.
    pub recent_purchases: u32,
    /// Purchases in the baseline window before it.
    pub baseline_purchases: u32,
    /// The customer's win-back inactivity threshold, days.
    pub winback_threshold_days: Option<u32>,
    /// Win-back steps decided in the current episode.
    pub winback_steps_done: u8,
    /// Promoted to loyal at some point.
    pub loyal: bool,
    /// Open support tickets.
    pub open_tickets: usize,
    /// Last satisfaction score.
    pub last_satisfaction: Option<u8>,
    /// Pending timers, earliest first.
    pub pending_timers: Vec<PendingTimer>,
}
