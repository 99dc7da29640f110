//! `[admin]`: the HTTP admin endpoint's address.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::problems::Problems;

/// `[admin]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// See the defaults file.
    pub listen: String,
}

impl RawAdmin {
    /// The address to listen on (None: no endpoint).
    pub fn validate(&self, p: &mut Problems) -> Option<SocketAddr> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return None;
        }
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
    }
}
