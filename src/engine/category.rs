//! Favourite categories: a few purchase counts per customer, by interned category id, so
//! a customer who only ever bought costs a few bytes here and no profile at all.
//!
//! The per-task table of names is bounded ([`MAX_NAMES`]) and cannot be filled by one
//! customer or by junk: a customer holds at most three ids, each id counts the customers
//! holding it, and when the table is full a new name takes the id of a name nobody holds.
//! Only when every id is held does a new name go uncounted (an "other" bucket), so one
//! customer's favourites are never lost because of someone else.

use hashbrown::HashMap;

/// Most categories counted per customer; the rarest makes room for a new one.
const SLOTS: usize = 3;

/// Most distinct category names a task keeps (names are at most 128 bytes, so the table
/// stays under 256 KiB in every checkpoint).
pub const MAX_NAMES: usize = 2048;

/// Category names interned to small ids (a shop has few categories).
#[derive(Clone, Debug, Default)]
pub struct Interner {
    ids: HashMap<Box<str>, u16>,
    names: Vec<Box<str>>,
    /// Customers whose top categories hold each id.
    holders: Vec<u32>,
    /// Ids nobody holds, reusable for a new name once the table is full.
    unheld: Vec<u16>,
    listed: Vec<bool>,
}

impl Interner {
    /// A table of `names` by id (a checkpoint's), with nobody holding any yet: restore
    /// calls [`Interner::hold_all`] for every customer's categories.
    pub fn from_names(names: &[Box<str>]) -> Interner {
        let mut t = Interner::default();
        for name in names.iter().take(MAX_NAMES) {
            let id = t.names.len() as u16;
            t.names.push(name.clone());
            t.ids.insert(name.clone(), id);
            t.holders.push(0);
            t.listed.push(false);
        }
        t
    }

    /// The id of `name`, assigning one when new (`None` when the table is full and every
    /// name in it is held by some customer).
    pub fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(&id) = self.ids.get(name) {
            return Some(id);
        }
        let id = if self.names.len() < MAX_NAMES {
            let id = self.names.len() as u16;
            self.names.push(name.into());
            self.holders.push(0);
            self.listed.push(false);
            self.unhold_later(id);
            id
        } else {
            let id = loop {
                let id = self.unheld.pop()?;
                self.listed[usize::from(id)] = false;
                if self.holders[usize::from(id)] == 0 {
                    break id;
                }
            };
            let old = std::mem::replace(&mut self.names[usize::from(id)], name.into());
            self.ids.remove(&old);
            self.unhold_later(id);
            id
        };
        self.ids.insert(name.into(), id);
        Some(id)
    }

    fn unhold_later(&mut self, id: u16) {
        if !std::mem::replace(&mut self.listed[usize::from(id)], true) {
            self.unheld.push(id);
        }
    }

    /// Records what [`TopCategories::count`] changed: an id newly held, one let go.
    pub fn track(&mut self, held: Option<u16>, released: Option<u16>) {
        if let Some(h) = held.and_then(|id| self.holders.get_mut(usize::from(id))) {
            *h += 1;
        }
        if let Some(id) = released {
            self.let_go(id);
        }
    }

    fn let_go(&mut self, id: u16) {
        if let Some(h) = self.holders.get_mut(usize::from(id)) {
            *h = h.saturating_sub(1);
            if *h == 0 {
                self.unhold_later(id);
            }
        }
    }

    /// A customer's categories are gone (erased or expired).
    pub fn release(&mut self, top: &TopCategories) {
        for id in top.ids() {
            self.let_go(id);
        }
    }

    /// A restored customer holds these categories.
    pub fn hold_all(&mut self, top: &TopCategories) {
        for id in top.ids() {
            if let Some(h) = self.holders.get_mut(usize::from(id)) {
                *h += 1;
            }
        }
    }

    /// Lists every id nobody holds as reusable (after [`Interner::hold_all`] on restore).
    pub fn list_unheld(&mut self) {
        for id in 0..self.names.len() as u16 {
            if self.holders[usize::from(id)] == 0 {
                self.unhold_later(id);
            }
        }
    }

    /// Every interned name, by id (what a checkpoint stores).
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// The name of an id.
    pub fn name(&self, id: u16) -> Option<&str> {
        self.names.get(usize::from(id)).map(|n| &**n)
    }
}

/// Purchase counts of up to three categories: (id + 1, count); id 0 marks an empty slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopCategories([(u16, u16); SLOTS]);

impl TopCategories {
    /// Counts one purchase in category `id`; returns the id newly held, if any, and the
    /// id it replaced, if any (for the table's holder counts).
    pub fn count(&mut self, id: u16) -> (Option<u16>, Option<u16>) {
        let key = id.saturating_add(1);
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = slot.1.saturating_add(1);
        } else if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == 0) {
            *slot = (key, 1);
            return (Some(id), None);
        } else if let Some(rarest) = self.0.iter_mut().min_by_key(|(_, n)| *n) {
            // A one-off purchase replaces another one-off; established favourites stay.
            if rarest.1 == 1 {
                let old = rarest.0 - 1;
                *rarest = (key, 1);
                return (Some(id), Some(old));
            }
        }
        (None, None)
    }

    /// The ids held.
    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().filter(|(k, _)| *k != 0).map(|(k, _)| k - 1)
    }

    /// The most bought category (ties: the lower id, i.e. the one the engine saw first).
    pub fn favourite(&self) -> Option<u16> {
        self.0
            .iter()
            .filter(|(k, _)| *k != 0)
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(k, _)| k - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favourite_is_the_most_bought() {
        let mut names = Interner::default();
        let books = names.intern("books").unwrap();
        let toys = names.intern("toys").unwrap();
        assert_eq!(names.intern("books"), Some(books));
        let mut t = TopCategories::default();
        assert_eq!(t.favourite(), None);
        t.count(toys);
        t.count(books);
        assert_eq!(
            t.favourite(),
            Some(books),
            "tie: the lower id (interned first)"
        );
        t.count(books);
        assert_eq!(t.favourite().and_then(|f| names.name(f)), Some("books"));
    }

    #[test]
    fn a_full_table_reuses_names_nobody_holds_and_keeps_held_ones() {
        let mut names = Interner::default();
        let mut real = TopCategories::default();
        let books = names.intern("books").unwrap();
        let (h, r) = real.count(books);
        names.track(h, r);
        // One customer floods the table with junk: it holds at most three at a time.
        let mut junk = TopCategories::default();
        for k in 0..10 * MAX_NAMES {
            let Some(id) = names.intern(&format!("junk-{k}")) else {
                panic!("table full after {k} junk names");
            };
            let (h, r) = junk.count(id);
            names.track(h, r);
        }
        assert!(names.names().len() <= MAX_NAMES);
        assert_eq!(
            names.name(books),
            Some("books"),
            "a held name is never reused"
        );
        // Another customer's new category still gets in.
        let toys = names.intern("toys").expect("room for a real category");
        assert_eq!(names.name(toys), Some("toys"));
        // The junk customer is erased: its three ids become reusable too.
        names.release(&junk);
        assert_eq!(names.holders.iter().filter(|&&h| h > 0).count(), 1);
    }

    #[test]
    fn established_favourites_survive_one_offs() {
        let mut t = TopCategories::default();
        for _ in 0..5 {
            t.count(7);
        }
        t.count(1);
        t.count(2);
        t.count(3); // replaces a one-off, not category 7
        t.count(4);
        assert_eq!(t.favourite(), Some(7));
    }
}
