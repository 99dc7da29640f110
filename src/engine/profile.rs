//! Profile data (contact details and preferences), kept apart from the hot counters
//! because only emails need it.

use crate::event::ProfileUpdate;

/// What is known about how to reach a customer.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
}
