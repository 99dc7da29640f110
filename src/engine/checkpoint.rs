//! The engine's durable form: what a checkpoint holds (a header and one record per
//! customer changed since the last one) and how an engine is rebuilt from it.
//!
//! Pure: bytes in, bytes out. The store (`crate::store`) decides where they go. Slots
//! and the free list are kept as they were, so a restored engine is the same engine —
//! not merely an equivalent one — and decides exactly what the uninterrupted one would.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::category::TopCategories;
use super::clock::Stamp;
use super::customer::Customer;
use super::profile::Profile;
use super::retention::Retention;
use super::risk::{self, Population};
use super::settings::Settings;
use super::{id_hash, mark, timers, Engine, Slot, Stats};

/// Version of the encoding below; a store written by another version is refused.
/// 2: outbox emails carry their envelope recipient and time zone (SMTP sender).
/// 3: the header holds retention counts (read from format 2 too, see [`Header::decode`]).
/// 4: profiles keep the event time of consent, unsubscribe, address and bounce; records
/// hold the event ids beyond the inline two (format 3 records are read too, see
/// [`Record::decode`]).
pub const FORMAT: u32 = 4;

/// Everything of an engine that is not per customer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// The event-time clock.
    pub clock: Option<Stamp>,
    /// Learned population statistics (docs/design.md §8 Checkpoint and outbox: checkpointed with the task).
    pub population: Population,
    /// Counters so far.
    pub stats: Stats,
    /// Interned category names, by id.
    pub categories: Vec<Box<str>>,
    /// Length of the slot table.
    pub slots: u32,
    /// Free slots, in reuse order.
    pub free: Vec<u32>,
    /// [`Settings::fingerprint`] of the writer: when it matches, stored due times and
    /// derived values are used as they are (a fast restart).
    pub settings: u64,
    /// Retention counts and daily marks (format 3). Kept last: a format-2 header is
    /// this encoding without it, which is how [`Header::decode`] upgrades one.
    pub retention: Retention,
}

#[derive(Serialize)]
struct RecordRef<'a> {
    slot: u32,
    customer: &'a Customer,
    profile: Option<&'a Profile>,
    categories: Option<&'a TopCategories>,
    event_ids: Option<&'a Vec<u64>>,
}

/// One customer as stored: hot state, profile, favourite categories and event ids.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Record {
    /// Slot in the engine's table.
    pub slot: u32,
    /// Hot state.
    pub customer: Customer,
    /// Contact data, if any.
    pub profile: Option<Profile>,
    /// Category counts, if any.
    pub categories: Option<TopCategories>,
    /// Event ids remembered beyond the inline two, if any (format 4).
    pub event_ids: Option<Vec<u64>>,
}

/// A format-3 profile: suppression flags without the event times that set them.
#[derive(Deserialize)]
struct ProfileV3 {
    email: Option<Box<str>>,
    name: Option<Box<str>>,
    locale: Option<Box<str>>,
    timezone: Option<Box<str>>,
    consent: Option<bool>,
    unsubscribed: bool,
    hard_bounced: bool,
}

/// A format-3 record.
#[derive(Deserialize)]
struct RecordV3 {
    slot: u32,
    customer: Customer,
    profile: Option<ProfileV3>,
    categories: Option<TopCategories>,
}

impl RecordV3 {
    /// What format 3 knew, dated at the customer's latest event: every flag was set at or
    /// before it, so a later event can change it and an older one cannot.
    fn upgrade(self) -> Record {
        let at = self.customer.last_seen;
        let profile = self.profile.map(|p| Profile {
            consent_at: p.consent.and(at),
            email_at: p.email.as_ref().and(at),
            mailbox_since: None,
            unsubscribed_at: if p.unsubscribed {
                at.or(Some(Stamp::MIN))
            } else {
                None
            },
            bounced_at: if p.hard_bounced {
                at.or(Some(Stamp::MIN))
            } else {
                None
            },
            email: p.email,
            name: p.name,
            locale: p.locale,
            timezone: p.timezone,
            consent: p.consent,
        });
        Record {
            slot: self.slot,
            customer: self.customer,
            profile,
            categories: self.categories,
            event_ids: None,
        }
    }
}

/// Why stored state cannot be turned back into an engine.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Bytes that do not decode.
    #[error("cannot decode {what}: {error}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoder's message.
        error: String,
    },
    /// Written by another version of churnwatch.
    #[error("state format {found} is not the format {FORMAT} this version reads")]
    Format {
        /// The format found.
        found: u32,
    },
    /// Records that contradict the header.
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain structs into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and checks the format version; `format` keeps the version found, which
    /// [`Record::decode`] needs. A format-2 header (no retention counts) is upgraded:
    /// postcard encodes fields in order with no framing, so appending an empty
    /// [`Retention`] makes it a format-3 encoding; the restore recounts it. Format 3 and
    /// 4 headers are alike.
    pub fn decode(bytes: &[u8]) -> Result<Header, RestoreError> {
        let bad = |e: postcard::Error| RestoreError::Decode {
            what: "the state header".into(),
            error: e.to_string(),
        };
        let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(bad)?;
        let h: Header = match format {
            3 | FORMAT => postcard::from_bytes(bytes).map_err(bad)?,
            2 => {
                let mut upgraded = bytes.to_vec();
                upgraded.extend(postcard::to_allocvec(&Retention::default()).map_err(bad)?);
                postcard::from_bytes(&upgraded).map_err(bad)?
            }
            found => return Err(RestoreError::Format { found }),
        };
        Ok(h)
    }
}

impl Record {
    /// Decodes the record of customer `id`, written in `format` (the header's).
    pub fn decode(id: &str, bytes: &[u8], format: u32) -> Result<Record, RestoreError> {
        let bad = |e: postcard::Error| RestoreError::Decode {
            what: format!("the state of customer {id:?}"),
            error: e.to_string(),
        };
        if format < FORMAT {
            return postcard::from_bytes::<RecordV3>(bytes)
                .map(RecordV3::upgrade)
                .map_err(bad);
        }
        postcard::from_bytes(bytes).map_err(bad)
    }
}

impl Engine {
    /// The engine-wide part of a checkpoint.
    pub fn header(&self) -> Header {
        Header {
            format: FORMAT,
            clock: self.clock,
            population: self.population.clone(),
            stats: self.stats.clone(),
            categories: self.category_names.names().to_vec(),
            slots: self.slots.len() as u32,
            free: self.free.clone(),
            settings: self.settings.fingerprint(),
            retention: self.retention.clone(),
        }
    }

    /// Whether anything changed since the last checkpoint.
    pub fn has_changes(&self) -> bool {
        self.clock != self.checkpointed_clock
            || !self.removed.is_empty()
            || self.dirty.iter().any(|w| *w != 0)
    }

    /// Ids dropped (erased or expired) since the last checkpoint.
    pub fn removed_since_checkpoint(&self) -> &[Box<str>] {
        &self.removed
    }

    /// Customers changed since the last checkpoint, encoded: (id, record bytes).
    pub fn changed_since_checkpoint(&self) -> impl Iterator<Item = (&str, Vec<u8>)> + '_ {
        self.dirty.iter().enumerate().flat_map(move |(w, &bits)| {
            (0..64u32)
                .filter(move |b| bits & (1 << b) != 0)
                .filter_map(move |b| {
                    let slot = w as u32 * 64 + b;
                    let s = self.slots.get(slot as usize)?;
                    if s.id.is_empty() {
                        return None;
                    }
                    Some((&*s.id, self.encode_slot(slot)))
                })
        })
    }

    fn encode_slot(&self, slot: u32) -> Vec<u8> {
        let r = RecordRef {
            slot,
            customer: &self.slots[slot as usize].c,
            profile: self.profiles.get(&slot),
            categories: self.categories.get(&slot),
            event_ids: self.event_ids.get(&slot),
        };
        postcard::to_allocvec(&r).unwrap_or_default()
    }

    /// The checkpoint holding the changes is durable: start counting anew.
    pub fn checkpoint_done(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.removed.clear();
        self.checkpointed_clock = self.clock;
    }

    /// Rebuilds an engine from a header and every customer record. Timers and derived
    /// values are recomputed under `settings` (which may differ from the writer's); a
    /// customer whose derived values moved counts as changed for the next checkpoint.
    pub fn restore<E>(
        settings: Arc<Settings>,
        header: Header,
        records: impl IntoIterator<Item = Result<(Box<str>, Record), E>>,
    ) -> Result<Engine, E>
    where
        E: From<RestoreError>,
    {
        // Records of an older format are rewritten by the next checkpoint, all of them:
        // the header it writes says the current format.
        let upgrade = header.format < FORMAT;
        let written_under = header.settings;
        let mut e = Engine::new(settings);
        let free = e.read_header(header)?;
        for item in records {
            let (id, r) = item?;
            e.place_record(id, r, &free)?;
        }
        let filled = e.check_slot_count()?;
        let same_settings = written_under == e.settings.fingerprint();
        e.rebuild_indexes(filled, upgrade, same_settings);
        e.recount_retention();
        Ok(e)
    }

    /// Takes the engine-wide state and an empty slot table from the header; returns
    /// which slots are free, for the records to be checked against.
    fn read_header(&mut self, header: Header) -> Result<Vec<bool>, RestoreError> {
        self.clock = header.clock;
        self.checkpointed_clock = header.clock;
        self.population = header.population;
        self.stats = header.stats;
        self.category_names = super::category::Interner::from_names(&header.categories);
        self.slots = (0..header.slots)
            .map(|_| Slot {
                id: Box::from(""),
                c: Customer::default(),
            })
            .collect();
        let free = free_slots(&header.free, self.slots.len())?;
        self.free = header.free;
        self.retention = header.retention;
        Ok(free)
    }

    /// Puts one record in its slot; a slot out of range, free or already taken means
    /// the store contradicts itself, and guessing would lose a customer.
    fn place_record(&mut self, id: Box<str>, r: Record, free: &[bool]) -> Result<(), RestoreError> {
        let slots = self.slots.len();
        let Some(slot) = self.slots.get_mut(r.slot as usize) else {
            return Err(RestoreError::Inconsistent(format!(
                "customer {id:?} in slot {} of {slots}",
                r.slot
            )));
        };
        if !slot.id.is_empty() || id.is_empty() || free[r.slot as usize] {
            return Err(RestoreError::Inconsistent(format!(
                "slot {} held twice, free, or by an empty id",
                r.slot
            )));
        }
        slot.id = id;
        slot.c = r.customer;
        if let Some(p) = r.profile {
            self.profiles.insert(r.slot, p);
        }
        if let Some(c) = r.categories {
            self.category_names.hold_all(&c);
            self.categories.insert(r.slot, c);
        }
        if let Some(ids) = r.event_ids.filter(|ids| !ids.is_empty()) {
            self.event_ids.insert(r.slot, ids);
        }
        Ok(())
    }

    /// Every slot must be held or free, not both and not neither; the customers held.
    fn check_slot_count(&self) -> Result<usize, RestoreError> {
        let filled = self.slots.iter().filter(|s| !s.id.is_empty()).count();
        if filled + self.free.len() != self.slots.len() {
            return Err(RestoreError::Inconsistent(format!(
                "{} slots, {} customers and {} free",
                self.slots.len(),
                filled,
                self.free.len()
            )));
        }
        Ok(filled)
    }

    /// The id index and the timer index are not stored: built again from the slots,
    /// re-deriving what the settings decide when they changed.
    fn rebuild_indexes(&mut self, filled: usize, upgrade: bool, same_settings: bool) {
        self.index.reserve(filled, |_| 0);
        let mut due_entries = Vec::with_capacity(filled);
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].id.is_empty() {
                continue;
            }
            let slots = &self.slots;
            self.index
                .insert_unique(id_hash(&slots[slot as usize].id), slot, |&k| {
                    id_hash(&slots[k as usize].id)
                });
            if upgrade {
                mark(&mut self.dirty, slot);
            }
            if !same_settings && self.rederive(slot) {
                mark(&mut self.dirty, slot);
            }
            if let Some(d) = self.slots[slot as usize].c.due {
                due_entries.push((d, slot));
            }
        }
        self.timers = timers::TimerIndex::from_entries(due_entries);
        self.category_names.list_unheld();
    }

    /// Other thresholds: derives again what depends on them, and says whether it moved.
    fn rederive(&mut self, slot: u32) -> bool {
        let s = &mut self.slots[slot as usize];
        let (old_hours, old_due) = (s.c.at_risk_hours, s.c.due);
        // Set at each purchase from purchase history only (as `record_purchase` does).
        if s.c.purchases > 0 {
            s.c.at_risk_hours = risk::at_risk_hours(&s.c, &self.settings.risk);
        }
        // After the hours: the at-risk timer is derived from them.
        s.c.due = timers::next(&self.settings, &s.c).map(|(d, _)| d);
        old_hours != s.c.at_risk_hours || old_due != s.c.due
    }

    /// The retained count from the stages themselves: the stored one may predate this
    /// bookkeeping (a format-2 header has none).
    fn recount_retention(&mut self) {
        let retained = self
            .slots
            .iter()
            .filter(|s| !s.id.is_empty() && super::retention::counts(s.c.stage))
            .count();
        self.retention.recount(retained as u64);
    }
}

/// Marks of the free slots: each must be in range and listed once, as a slot reused by
/// mistake would overwrite a live customer.
fn free_slots(free: &[u32], slots: usize) -> Result<Vec<bool>, RestoreError> {
    let mut seen = vec![false; slots];
    for &f in free {
        match seen.get_mut(f as usize) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(RestoreError::Inconsistent(format!(
                    "free slot {f} out of range or listed twice"
                )))
            }
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_2_header_is_upgraded_and_others_are_refused() {
        let cfg = crate::config::load_with_env(None, Vec::new()).expect("the defaults are valid");
        let mut e = Engine::new(Arc::new(cfg.engine));
        let mut out = Vec::new();
        e.advance(
            Stamp::parse_rfc3339("2026-03-01T00:00:00Z").expect("a stamp"),
            &mut out,
        );
        let mut h = e.header();
        h.retention = Retention::default();
        let mut v2 = h.encode();
        // What format 2 wrote: the same fields without the trailing retention counts.
        let tail = postcard::to_allocvec(&Retention::default()).expect("encodes");
        v2.truncate(v2.len() - tail.len());
        assert_eq!(v2[0], FORMAT as u8);
        v2[0] = 2;
        assert_eq!(
            Header::decode(&v2).expect("format 2 is read"),
            Header { format: 2, ..h }
        );
        v2[0] = 1;
        assert!(matches!(
            Header::decode(&v2),
            Err(RestoreError::Format { found: 1 })
        ));
    }

    #[test]
    fn a_free_list_out_of_range_or_with_a_slot_twice_is_refused() {
        let marks = free_slots(&[2, 0], 3).expect("distinct slots in range");
        assert_eq!(marks, [true, false, true]);
        for free in [&[3][..], &[1, 1][..]] {
            let Err(RestoreError::Inconsistent(why)) = free_slots(free, 3) else {
                panic!("{free:?} must be refused");
            };
            assert!(why.contains("out of range or listed twice"), "{why}");
        }
    }

    #[test]
    fn a_format_3_record_keeps_its_suppression_dated_at_the_latest_event() {
        #[derive(Serialize)]
        struct P3 {
            email: Option<Box<str>>,
            name: Option<Box<str>>,
            locale: Option<Box<str>>,
            timezone: Option<Box<str>>,
            consent: Option<bool>,
            unsubscribed: bool,
            hard_bounced: bool,
        }
        #[derive(Serialize)]
        struct R3 {
            slot: u32,
            customer: Customer,
            profile: Option<P3>,
            categories: Option<TopCategories>,
        }
        let seen = Stamp::from_raw(1_000_000);
        let customer = Customer {
            last_seen: Some(seen),
            ..Customer::default()
        };
        let bytes = postcard::to_allocvec(&R3 {
            slot: 7,
            customer,
            profile: Some(P3 {
                email: Some("a@example.com".into()),
                name: None,
                locale: None,
                timezone: None,
                consent: Some(true),
                unsubscribed: true,
                hard_bounced: true,
            }),
            categories: None,
        })
        .expect("encodes");
        assert!(
            Record::decode("c", &bytes, FORMAT).is_err(),
            "not a format 4 record"
        );
        let r = Record::decode("c", &bytes, 3).expect("format 3 is read");
        assert_eq!(r.slot, 7);
        let mut p = r.profile.expect("profile kept");
        assert!(p.unsubscribed() && p.hard_bounced());
        // An older opt-in does not undo it; a newer one does.
        let opt_in = |at| {
            let mut q = p.clone();
            q.update(
                crate::event::ProfileUpdate {
                    marketing_consent: Some(true),
                    ..Default::default()
                },
                at,
            );
            q.unsubscribed()
        };
        assert!(opt_in(seen.minus(60)));
        assert!(!opt_in(seen.plus(60)));
        p.update(
            crate::event::ProfileUpdate {
                email: Some("new@example.com".into()),
                ..Default::default()
            },
            seen.plus(60),
        );
        assert!(!p.hard_bounced(), "a new mailbox starts clean");
    }
}
