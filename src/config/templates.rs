//! `[templates]`: the template folder, the fallback locale and what every email links to.

use std::path::PathBuf;

use serde::Deserialize;

use super::smtp::RawSmtp;
use crate::mail::settings::MailSettings;
use crate::problems::Problems;

/// `[templates]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    /// See the defaults file.
    pub dir: PathBuf,
    /// See the defaults file.
    pub default_locale: String,
    /// See the defaults file.
    pub shop_name: String,
    /// See the defaults file.
    pub feedback_url: String,
    /// See the defaults file.
    pub unsubscribe_url: String,
}

impl RawTemplates {
    /// Checks the section and builds the rendering settings, with the headers that
    /// `[smtp]` names (checked there).
    pub fn validate(&self, smtp: &RawSmtp, p: &mut Problems) -> MailSettings {
        p.when(self.default_locale.is_empty(), || {
            "templates.default_locale: must not be empty".to_string()
        });
        MailSettings {
            templates_dir: self.dir.clone(),
            default_locale: self.default_locale.clone(),
            shop_name: self.shop_name.clone(),
            feedback_url: self.feedback_url.clone(),
            unsubscribe_url: self.unsubscribe_url.clone(),
            from: smtp.from.clone(),
            reply_to: smtp.reply_to.clone(),
            message_id_domain: smtp.message_id_domain.clone(),
        }
    }
}
