//! A task store's writes as changelog records (docs/design.md §16 State follows tasks):
//! every row a store transaction puts or deletes becomes one keyed record, so that the
//! latest record per key — what a compacted topic keeps — is the store's content, and a
//! replica given the task without current local state can rebuild its store from it.
//!
//! Pure: the records are bytes; producing and reading them is the worker's job.

use std::fmt;

/// A row of a task store, named as the changelog keys it: one key per row, so that
/// compaction keeps exactly the rows' latest values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A customer's record (table `customers`).
    Customer(String),
    /// A store-wide value (table `meta`: header, offsets, outbox counter).
    Meta(String),
    /// An outbox entry (table `outbox`).
    Outbox(u64),
    /// When an email entry first failed transiently (table `first_failure`).
    FirstFailure(u64),
}

/// One row written (Some bytes) or deleted (None, a tombstone in the changelog).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The row.
    pub key: Key,
    /// Its new value, or None when the row is deleted.
    pub value: Option<Vec<u8>>,
}

/// A changelog record key that names no store row (written by something else, or
/// damaged): restoring stops rather than build a store that silently lacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey {
    /// Its length, the only thing said about it (a key may hold a customer id).
    pub len: usize,
}

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a changelog record key of {} bytes names no state row",
            self.len
        )
    }
}

impl std::error::Error for BadKey {}

const CUSTOMER: u8 = b'c';
const META: u8 = b'm';
const OUTBOX: u8 = b'o';
const FIRST_FAILURE: u8 = b'f';

impl Key {
    /// The record key: a tag byte, then the id (UTF-8) or the number (big-endian, so
    /// keys of one table sort by number).
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body): (u8, Vec<u8>) = match self {
            Key::Customer(id) => (CUSTOMER, id.as_bytes().to_vec()),
            Key::Meta(name) => (META, name.as_bytes().to_vec()),
            Key::Outbox(n) => (OUTBOX, n.to_be_bytes().to_vec()),
            Key::FirstFailure(n) => (FIRST_FAILURE, n.to_be_bytes().to_vec()),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(&body);
        out
    }

    /// The row a record key names.
    pub fn decode(bytes: &[u8]) -> Result<Key, BadKey> {
        let bad = || BadKey { len: bytes.len() };
        let (&tag, body) = bytes.split_first().ok_or_else(bad)?;
        let text = || {
            std::str::from_utf8(body)
                .map(str::to_string)
                .map_err(|_| bad())
        };
        let number = || {
            <[u8; 8]>::try_from(body)
                .map(u64::from_be_bytes)
                .map_err(|_| bad())
        };
        match tag {
            CUSTOMER if !body.is_empty() => text().map(Key::Customer),
            META if !body.is_empty() => text().map(Key::Meta),
            OUTBOX => number().map(Key::Outbox),
            FIRST_FAILURE => number().map(Key::FirstFailure),
            _ => Err(bad()),
        }
    }
}

impl Change {
    /// A row written.
    pub fn put(key: Key, value: impl Into<Vec<u8>>) -> Change {
        Change {
            key,
            value: Some(value.into()),
        }
    }

    /// A row deleted.
    pub fn delete(key: Key) -> Change {
        Change { key, value: None }
    }
}

/// The topic a group's changelog lives in when `kafka.changelog_topic` is not set:
/// named after the group, as Kafka Streams names its changelogs after the application.
pub fn default_topic(group_id: &str) -> String {
    format!("{group_id}-state-changelog")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reads_back_as_itself() {
        for key in [
            Key::Customer("c-1".into()),
            Key::Customer("ümlaut".into()),
            Key::Meta("header".into()),
            Key::Outbox(0),
            Key::Outbox(u64::MAX),
            Key::FirstFailure(7),
        ] {
            assert_eq!(Key::decode(&key.encode()), Ok(key));
        }
    }

    #[test]
    fn outbox_keys_sort_by_number() {
        assert!(Key::Outbox(2).encode() < Key::Outbox(10).encode());
        assert!(Key::Outbox(255).encode() < Key::Outbox(256).encode());
    }

    #[test]
    fn keys_naming_no_row_are_refused_without_quoting_them() {
        for bad in [
            &b""[..],
            b"c",
            b"m",
            b"o123",
            b"x-anything",
            &[b'c', 0xff, 0xfe],
        ] {
            let e = Key::decode(bad).expect_err("not a row");
            assert_eq!(e.len, bad.len());
            assert!(!e.to_string().contains("anything"));
        }
    }
}
