//! Favourite categories: a few purchase counts per customer, by interned category id, so
//! a customer who only ever bought costs a few bytes here and no profile at all.

use hashbrown::HashMap;

/// Most categories counted per customer; the rarest makes room for a new one.
const SLOTS: usize = 3;

/// Category names interned to small ids (a shop has few categories).
#[derive(Clone, Debug, Default)]
pub struct Interner {
    ids: HashMap<Box<str>, u16>,
    names: Vec<Box<str>>,
}

impl Interner {
    /// The id of `name`, assigning the next one (`None` past 65,535 distinct names).
    pub fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(&id) = self.ids.get(name) {
            return Some(id);
        }
        let id = u16::try_from(self.names.len()).ok()?;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        Some(id)
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
    /// Counts one purchase in category `id`.
    pub fn count(&mut self, id: u16) {
        let key = id.saturating_add(1);
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = slot.1.saturating_add(1);
        } else if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == 0) {
            *slot = (key, 1);
        } else if let Some(rarest) = self.0.iter_mut().min_by_key(|(_, n)| *n) {
            // A one-off purchase replaces another one-off; established favourites stay.
            if rarest.1 == 1 {
                *rarest = (key, 1);
            }
        }
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
