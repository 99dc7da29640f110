//! Profile data (contact details, preferences, favourite categories), kept apart from
//! the hot counters because only emails need it.

use crate::event::ProfileUpdate;

/// Most categories remembered per customer for the favourite.
const MAX_CATEGORIES: usize = 6;

/// What is known about how to reach a customer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Email address.
    pub email: Option<Box<str>>,
    /// Display name.
    pub name: Option<Box<str>>,
    /// BCP 47 locale.
    pub locale: Option<Box<str>>,
    /// IANA time zone.
    pub timezone: Option<Box<str>>,
    /// Marketing consent as last stated.
    pub consent: Option<bool>,
    /// Unsubscribed from email.
    pub unsubscribed: bool,
    /// The address hard-bounced.
    pub hard_bounced: bool,
    /// Purchase counts per category (a handful, the rarest forgotten first).
    pub categories: Vec<(Box<str>, u32)>,
}

impl Profile {
    /// Applies a profile event; a new address clears an earlier hard bounce.
    pub fn update(&mut self, u: ProfileUpdate) {
        if let Some(email) = u.email {
            if self.email.as_deref() != Some(email.as_str()) {
                self.hard_bounced = false;
            }
            self.email = Some(email.into());
        }
        if let Some(name) = u.name {
            self.name = Some(name.into());
        }
        if let Some(locale) = u.locale {
            self.locale = Some(locale.into());
        }
        if let Some(tz) = u.timezone {
            self.timezone = Some(tz.into());
        }
        if let Some(consent) = u.marketing_consent {
            self.consent = Some(consent);
            if consent {
                // Opting in again is the customer's explicit wish.
                self.unsubscribed = false;
            }
        }
    }

    /// Counts the categories of one purchase.
    pub fn count_categories(&mut self, categories: &[Box<str>]) {
        for cat in categories {
            if let Some(entry) = self.categories.iter_mut().find(|(c, _)| c == cat) {
                entry.1 += 1;
            } else if self.categories.len() < MAX_CATEGORIES {
                self.categories.push((cat.clone(), 1));
            } else if let Some(rarest) = self.categories.iter_mut().min_by_key(|(_, n)| *n) {
                if rarest.1 == 1 {
                    *rarest = (cat.clone(), 1);
                }
            }
        }
    }

    /// The most bought category (ties: alphabetical), if any.
    pub fn favourite_category(&self) -> Option<&str> {
        self.categories
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(c, _)| &**c)
    }
}
