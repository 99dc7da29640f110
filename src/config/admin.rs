//! `[admin]`: the HTTP admin endpoint's address and the token that unlocks personal data.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::problems::Problems;
use crate::secret::{self, Secret};

/// `[admin]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// See the defaults file.
    pub listen: String,
    /// From the environment only (`CHURNWATCH__ADMIN__TOKEN`); never in the file.
    #[serde(default)]
    pub token: Option<String>,
    /// See the defaults file.
    pub token_file: PathBuf,
}

/// The admin endpoint's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminSettings {
    /// The address to listen on (None: no endpoint).
    pub listen: Option<SocketAddr>,
    /// The bearer token personal data needs (None: personal data is always redacted).
    pub token: Option<Secret>,
}

impl RawAdmin {
    /// Checks the section and reads the token.
    pub fn validate(&self, p: &mut Problems) -> AdminSettings {
        let token = secret::Source {
            key: "admin.token",
            inline: self.token.as_deref(),
            file: &self.token_file,
        }
        .read(p);
        let listen = self.listen.trim();
        let listen = if listen.is_empty() {
            None
        } else {
            match listen.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    p.push(format!(
                        "admin.listen: must be an address such as \"127.0.0.1:9464\" (or \"\" for none), got `{}`",
                        self.listen
                    ));
                    None
                }
            }
        };
        AdminSettings { listen, token }
    }
}
