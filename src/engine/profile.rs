//! Profile data (contact details and preferences), kept apart from the hot counters
//! because only emails need it.
//!
//! Suppression is monotone in event time: consent, unsubscribe and hard bounce each keep
//! the event time that set them, so an older event that arrives late (a CRM export, a
//! re-run ETL job) never overrides a newer one, and the outcome does not depend on the
//! arrival order. Ties go to the side that does not send.

use super::clock::Stamp;
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
    /// Marketing consent as last stated (by event time).
    pub consent: Option<bool>,
    /// Event time of the statement `consent` holds.
    pub consent_at: Option<Stamp>,
    /// Event time of the latest unsubscribe.
    pub unsubscribed_at: Option<Stamp>,
    /// Event time of the latest statement of the address.
    pub email_at: Option<Stamp>,
    /// Event time from which the current mailbox has been the address: a hard bounce
    /// before it was for another mailbox.
    pub mailbox_since: Option<Stamp>,
    /// Event time of the latest hard bounce.
    pub bounced_at: Option<Stamp>,
}

/// The mailbox an address names, for comparing: domains are case-insensitive and
/// virtually every provider treats the local part so too.
pub fn mailbox(addr: &str) -> String {
    addr.trim().to_lowercase()
}

impl Profile {
    /// Applies a profile event that happened at `at`.
    pub fn update(&mut self, u: ProfileUpdate, at: Stamp) {
        if let Some(email) = u.email {
            if self.email_at.is_none_or(|t| at >= t) {
                let same = self
                    .email
                    .as_deref()
                    .is_some_and(|e| mailbox(e) == mailbox(&email));
                if !same {
                    self.mailbox_since = Some(at);
                }
                self.email = Some(email.into());
                self.email_at = Some(at);
            } else if self
                .email
                .as_deref()
                .is_some_and(|e| mailbox(e) == mailbox(&email))
            {
                // An older statement of the same mailbox: it has been the address since then.
                self.mailbox_since = self.mailbox_since.map(|s| s.min(at));
            }
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
            let newer = match self.consent_at {
                None => true,
                Some(t) => at > t || (at == t && !consent),
            };
            if newer {
                self.consent = Some(consent);
                self.consent_at = Some(at);
            }
        }
    }

    /// Records an unsubscribe at `at`.
    pub fn unsubscribe(&mut self, at: Stamp) {
        self.unsubscribed_at = self.unsubscribed_at.max(Some(at));
    }

    /// Records a hard bounce at `at`.
    pub fn bounce(&mut self, at: Stamp) {
        self.bounced_at = self.bounced_at.max(Some(at));
    }

    /// Unsubscribed, unless a later opt-in (`marketing_consent: true`) undid it: opting
    /// in again is the customer's explicit wish.
    pub fn unsubscribed(&self) -> bool {
        self.unsubscribed_at.is_some_and(|u| {
            !(self.consent == Some(true) && self.consent_at.is_some_and(|c| c > u))
        })
    }

    /// The current mailbox hard-bounced (a bounce sticks to the mailbox, whatever its
    /// spelling; a new address starts clean).
    pub fn hard_bounced(&self) -> bool {
        self.bounced_at
            .is_some_and(|b| self.mailbox_since.is_none_or(|since| b >= since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: u32) -> Stamp {
        Stamp::from_raw(raw)
    }

    fn consent(v: bool) -> ProfileUpdate {
        ProfileUpdate {
            marketing_consent: Some(v),
            ..ProfileUpdate::default()
        }
    }

    fn email(a: &str) -> ProfileUpdate {
        ProfileUpdate {
            email: Some(a.into()),
            ..ProfileUpdate::default()
        }
    }

    #[test]
    fn a_late_opt_in_does_not_undo_a_newer_unsubscribe() {
        let mut p = Profile::default();
        p.update(consent(true), t(100));
        p.unsubscribe(t(300));
        p.update(consent(true), t(200)); // arrives last, happened before the unsubscribe
        assert!(p.unsubscribed());
        p.update(consent(true), t(400)); // a real, newer opt-in
        assert!(!p.unsubscribed());
    }

    #[test]
    fn consent_is_the_latest_statement_whatever_the_arrival_order() {
        let mut a = Profile::default();
        a.update(consent(false), t(300));
        a.update(consent(true), t(200));
        let mut b = Profile::default();
        b.update(consent(true), t(200));
        b.update(consent(false), t(300));
        assert_eq!(a.consent, Some(false));
        assert_eq!(a, b);
        let mut tie = Profile::default();
        tie.update(consent(false), t(5));
        tie.update(consent(true), t(5));
        assert_eq!(tie.consent, Some(false), "a tie does not send");
    }

    #[test]
    fn a_bounce_sticks_to_the_mailbox_not_its_spelling() {
        let mut p = Profile::default();
        p.update(email("Ana@Example.com"), t(100));
        p.bounce(t(300));
        p.update(email("ana@example.com"), t(200));
        assert!(p.hard_bounced(), "same mailbox, older statement");
        p.update(email("ANA@example.COM"), t(400));
        assert!(
            p.hard_bounced(),
            "same mailbox restated later: still bounced"
        );
        p.update(email("ana@other.example"), t(500));
        assert!(!p.hard_bounced(), "a new mailbox starts clean");
        p.update(email("ana@example.com"), t(450));
        assert_eq!(
            p.email.as_deref(),
            Some("ana@other.example"),
            "older address ignored"
        );
    }
}
