//! The outbox (docs/design.md §8 Checkpoint and outbox): effects the engine decided, stored in the same atomic write as
//! the state that decided them, and handed to Kafka or the mail transport only after
//! that write is durable. An entry is removed once its effect is acknowledged; after a
//! crash, whatever is left is handed over again — at-least-once, with stable ids.
//!
//! (Not the `--outbox` folder of file mode, which is where `.eml` files land.)

use serde::{Deserialize, Serialize};

/// One decided effect waiting to be handed over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// An alert for the alerts topic: the docs/design.md §7 Decisions JSON, keyed by customer id.
    Alert {
        /// Record key (the customer id).
        key: String,
        /// The alert's JSON line.
        payload: String,
    },
    /// A rejected input record for the dead-letter topic.
    DeadLetter {
        /// The original record key.
        key: Option<Vec<u8>>,
        /// The original bytes.
        payload: Vec<u8>,
        /// Source position and reason, then the record's own headers.
        headers: Vec<(String, Option<Vec<u8>>)>,
    },
    /// An email, rendered when it was decided.
    Email(Email),
}

/// A rendered email (or why it could not be rendered), named by its Message-ID.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Email {
    /// Message-ID without angle brackets: `<alert_id>@<domain>`.
    pub message_id: String,
    /// The alert it belongs to.
    pub alert_id: String,
    /// The recipient customer.
    pub customer_id: String,
    /// The locale it was rendered in.
    pub locale: String,
    /// Envelope recipient.
    pub to: String,
    /// The customer's IANA time zone ("" when unknown), for quiet hours.
    pub timezone: String,
    /// The RFC 5322 message, or the reason it could not be built (recorded as failed).
    pub message: Result<Vec<u8>, String>,
}

impl Entry {
    /// Encodes the entry for the store.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes an entry read from the store.
    pub fn decode(bytes: &[u8]) -> Result<Entry, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The customer this entry concerns, where it says.
    pub fn customer_key(&self) -> Option<&[u8]> {
        match self {
            Entry::Alert { key, .. } => Some(key.as_bytes()),
            Entry::DeadLetter { key, .. } => key.as_deref(),
            Entry::Email(e) => Some(e.customer_id.as_bytes()),
        }
    }
}
