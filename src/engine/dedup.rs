//! Redelivered events count once: every `event_id` a customer had within
//! `engine.dedup_window` is remembered, for bursts and whole re-sent batches alike.
//!
//! Most customers have at most two events in a window, so two ids live inline in the
//! hot state; the rest spill into a per-customer list the engine keeps beside it (and
//! checkpoints with the customer). Each id costs 8 bytes: 48 bits of its hash and the
//! day the engine first saw it (its clock's day), from which it expires. The list is
//! bounded by `engine.dedup_max_per_customer`; past it the oldest id is forgotten.

/// Bits of an entry that hold the id's hash; the low 16 hold the day it was first seen.
const KEY: u64 = !0xFFFF;

/// Two recent event ids, inline in the hot state (0 = empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dedup([u64; 2]);

/// What [`record`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A new id, now remembered; `evicted` when the oldest had to be forgotten for it.
    New {
        /// An older id was forgotten to stay within the bound.
        evicted: bool,
    },
    /// Seen within the window: the event is a redelivery.
    Duplicate,
}

fn fresh(e: u64, today: u16, window_days: u16) -> bool {
    e != 0 && (e as u16).saturating_add(window_days) >= today
}

/// Looks `id_hash` up among a customer's ids fresh at `today` and remembers it if new.
/// `spill` holds the ids beyond the inline two (empty for most customers), oldest first.
pub fn record(
    inline: &mut Dedup,
    spill: &mut Vec<u64>,
    id_hash: u64,
    today: u16,
    window_days: u16,
    max: usize,
) -> Seen {
    let key = id_hash & KEY;
    let known = |e: &u64| fresh(*e, today, window_days) && e & KEY == key;
    if inline.0.iter().any(known) || spill.iter().any(known) {
        return Seen::Duplicate;
    }
    spill.retain(|&e| fresh(e, today, window_days));
    let entry = key | u64::from(today.max(1));
    match inline
        .0
        .iter_mut()
        .find(|e| !fresh(**e, today, window_days))
    {
        Some(free) => *free = entry,
        None => spill.push(entry),
    }
    let evicted = inline.0.len() + spill.len() > max.max(2);
    if evicted {
        spill.remove(0);
    }
    // Most spills hold one or two ids for a few days: exact capacity keeps them at 8
    // bytes each (a Vec would reserve four); long lists may keep slack for speed.
    if spill.len() <= 8 || spill.capacity() > 2 * spill.len() {
        spill.shrink_to_fit();
    }
    Seen::New { evicted }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(k: u64) -> u64 {
        k << 20
    }

    #[test]
    fn every_id_in_the_window_counts_once() {
        let (mut d, mut s) = (Dedup::default(), Vec::new());
        for k in 1..=50 {
            assert_eq!(
                record(&mut d, &mut s, id(k), 100, 7, 1024),
                Seen::New { evicted: false }
            );
        }
        for k in (1..=50).rev() {
            assert_eq!(
                record(&mut d, &mut s, id(k), 103, 7, 1024),
                Seen::Duplicate,
                "id {k}"
            );
        }
        assert_eq!(s.len(), 48, "two inline, the rest spilled");
    }

    #[test]
    fn ids_expire_after_the_window_and_their_room_is_reused() {
        let (mut d, mut s) = (Dedup::default(), Vec::new());
        for k in 1..=5 {
            record(&mut d, &mut s, id(k), 100, 7, 1024);
        }
        assert_eq!(
            record(&mut d, &mut s, id(1), 107, 7, 1024),
            Seen::Duplicate,
            "day 7: inside"
        );
        assert_eq!(
            record(&mut d, &mut s, id(1), 108, 7, 1024),
            Seen::New { evicted: false },
            "day 8: expired"
        );
        assert!(s.is_empty(), "expired spill pruned: {s:?}");
    }

    #[test]
    fn the_bound_forgets_the_oldest() {
        let (mut d, mut s) = (Dedup::default(), Vec::new());
        for k in 1..=4 {
            assert_eq!(
                record(&mut d, &mut s, id(k), 100 + k as u16, 30, 4),
                Seen::New { evicted: false }
            );
        }
        assert_eq!(
            record(&mut d, &mut s, id(5), 110, 30, 4),
            Seen::New { evicted: true }
        );
        assert_eq!(d.0.len() + s.len(), 4);
        // inline ids 1 and 2 stay; the oldest spilled one (3) was forgotten
        assert_eq!(
            record(&mut d, &mut s, id(3), 110, 30, 4),
            Seen::New { evicted: true }
        );
        assert_eq!(record(&mut d, &mut s, id(1), 110, 30, 4), Seen::Duplicate);
    }
}
