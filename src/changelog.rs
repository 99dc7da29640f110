//! A task store's writes as changelog records, and how a replica rebuilds the store
//! from them (docs/design.md §16 State follows tasks).
//!
//! Every row a store transaction puts or deletes becomes one keyed record, so that the
//! latest record per key — what a compacted topic keeps — is the store's content. Three
//! kinds of record share a task's partition:
//!
//! - a **claim**, written by a replica taking the task; its offset is the *epoch* of
//!   everything that replica writes after it;
//! - **rows**, keyed by epoch and store row;
//! - a **marker** per epoch, written after each checkpoint's rows: the checkpoint's
//!   number, how many rows the store holds, and whether the epoch's first full copy of
//!   the state is complete.
//!
//! A restorer follows the latest claim and applies its rows only up to its last marker,
//! so a checkpoint is all or nothing, a writer that lost the task (a zombie) writes
//! under an older epoch that nobody follows any more, and compaction never removes a
//! value a restorer needs: rows of different epochs never share a key.
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

/// Tags of the three kinds of changelog record (the first key byte).
const ROW: u8 = b'r';
const CLAIM: u8 = b'C';
const MARKER: u8 = b'M';

/// What a marker says about its epoch after one checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The checkpoint's number in this epoch (from 1).
    pub seq: u64,
    /// Rows the store holds after it: a restore that ends with fewer has lost some.
    pub rows: u64,
    /// The epoch's full copy of the state is complete: from here on the epoch can be
    /// restored (before, its claim's predecessor is still the state).
    pub complete: bool,
}

impl Marker {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17);
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(&self.rows.to_le_bytes());
        v.push(u8::from(self.complete));
        v
    }

    fn decode(b: &[u8]) -> Option<Marker> {
        if b.len() != 17 {
            return None;
        }
        let seq = u64::from_le_bytes(b[0..8].try_into().ok()?);
        let rows = u64::from_le_bytes(b[8..16].try_into().ok()?);
        Some(Marker {
            seq,
            rows,
            complete: b[16] == 1,
        })
    }
}

/// One changelog record: key and value (None: a tombstone).
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// The claim a replica writes when it takes a task. `nonce` makes its key unique, so
/// compaction keeps every claim until it is cleaned up; `continues` names the epoch it
/// carries on (its own, after a restart with current state) instead of starting one.
pub fn claim(nonce: u64, continues: Option<u64>, who: &str) -> Record {
    let mut key = vec![CLAIM];
    key.extend_from_slice(&nonce.to_be_bytes());
    let mut value = continues.unwrap_or(u64::MAX).to_be_bytes().to_vec();
    value.extend_from_slice(who.as_bytes());
    (key, Some(value))
}

/// A store row written under `epoch`.
pub fn row(epoch: u64, change: &Change) -> Record {
    let mut key = Vec::with_capacity(9 + 16);
    key.push(ROW);
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(&change.key.encode());
    (key, change.value.clone())
}

/// The marker of `epoch` after a checkpoint (one key per epoch: compaction keeps the last).
pub fn marker(epoch: u64, m: Marker) -> Record {
    let mut key = vec![MARKER];
    key.extend_from_slice(&epoch.to_be_bytes());
    (key, Some(m.encode()))
}

/// A record as read: what kind it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A claim; `continues` the epoch it carries on, if any.
    Claim {
        /// The epoch this claim carries on (None: it starts one at its own offset).
        continues: Option<u64>,
    },
    /// A row of `epoch`.
    Row {
        /// Its epoch.
        epoch: u64,
        /// The store row and its value.
        change: Change,
    },
    /// The marker of `epoch`.
    Marker {
        /// Its epoch.
        epoch: u64,
        /// What it says.
        marker: Marker,
    },
    /// A tombstone of a claim or marker (cleaning up): nothing to restore.
    Cleared,
}

/// What a record is; an error names only its offset and size.
pub fn read(offset: i64, key: &[u8], value: Option<&[u8]>) -> Result<Read, BadRecord> {
    let bad = |what: &'static str| BadRecord {
        offset,
        len: key.len(),
        what,
    };
    let (&tag, rest) = key.split_first().ok_or(bad("an empty key"))?;
    let epoch = || {
        rest.get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    match tag {
        CLAIM if rest.len() == 8 => match value {
            None => Ok(Read::Cleared),
            Some(v) => {
                let c = v
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or(bad("a claim without its epoch"))?;
                Ok(Read::Claim {
                    continues: (c != u64::MAX).then_some(c),
                })
            }
        },
        MARKER if rest.len() == 8 => match value {
            None => Ok(Read::Cleared),
            Some(v) => Ok(Read::Marker {
                epoch: epoch().ok_or(bad("a marker key"))?,
                marker: Marker::decode(v).ok_or(bad("a marker value"))?,
            }),
        },
        ROW if rest.len() > 8 => {
            let key = Key::decode(&rest[8..]).map_err(|_| bad("a row key"))?;
            Ok(Read::Row {
                epoch: epoch().ok_or(bad("a row key"))?,
                change: Change {
                    key,
                    value: value.map(<[u8]>::to_vec),
                },
            })
        }
        _ => Err(bad("a key of no known kind")),
    }
}

/// A changelog record that is not one churnwatch writes: restoring stops (the task is
/// refused) rather than build a store that silently lacks something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("changelog record at offset {offset} ({len}-byte key): not {what} churnwatch writes")]
pub struct BadRecord {
    /// Where it is.
    pub offset: i64,
    /// Its key's length (a key may hold a customer id, so it is not quoted).
    pub len: usize,
    /// What it failed to be.
    pub what: &'static str,
}

/// What the store being rebuilt must do after a record was read.
#[derive(Debug, PartialEq, Eq)]
pub enum Apply {
    /// Nothing (a row waiting for its marker, a zombie's record, a duplicate).
    Nothing,
    /// Forget everything applied so far: a newer claim took over.
    Clear,
    /// Apply these rows, in order: a marker made them part of a checkpoint.
    Rows(Vec<Change>),
}

/// How a restore read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// The state of `epoch` after its checkpoint `marker` is what was applied.
    State {
        /// The epoch restored.
        epoch: u64,
        /// Its last checkpoint's marker.
        marker: Marker,
    },
    /// No claim at all: the task never had state.
    Nothing,
    /// The latest claim never completed a full copy (its writer stopped while making
    /// it): read again up to `before` (that claim's offset), which follows the one
    /// before.
    ReadAgain {
        /// Read only records before this offset.
        before: i64,
    },
}

/// The restore of one task from its changelog partition, fed its records in offset
/// order (docs/design.md §16 State follows tasks).
#[derive(Debug)]
pub struct Restorer {
    before: i64,
    last_offset: i64,
    /// The epoch followed: the latest claim's (or the epoch it continues).
    follow: Option<u64>,
    /// Rows of the followed epoch since its last marker.
    waiting: Vec<Change>,
    committed: Option<Marker>,
}

impl Restorer {
    /// A restore reading records before offset `before` (a claim of the reader's own,
    /// or the end of the partition).
    pub fn new(before: i64) -> Restorer {
        Restorer {
            before,
            last_offset: -1,
            follow: None,
            waiting: Vec::new(),
            committed: None,
        }
    }

    /// Takes the record at `offset`. Records at or past `before`, and records read a
    /// second time (a broker may return some again), change nothing.
    pub fn feed(&mut self, offset: i64, record: Read) -> Apply {
        if offset >= self.before || offset <= self.last_offset {
            return Apply::Nothing;
        }
        self.last_offset = offset;
        match record {
            Read::Claim { continues } => {
                let epoch = match continues {
                    // A restart carrying on its own epoch: nothing changes hands. One
                    // carrying on an epoch that is no longer the latest was mistaken (its
                    // writer finds that out by reading up to it, and claims anew).
                    Some(_) => return Apply::Nothing,
                    None => offset as u64,
                };
                self.follow = Some(epoch);
                self.waiting.clear();
                self.committed = None;
                Apply::Clear
            }
            Read::Row { epoch, change } if Some(epoch) == self.follow => {
                self.waiting.push(change);
                Apply::Nothing
            }
            Read::Marker { epoch, marker } if Some(epoch) == self.follow => {
                self.committed = Some(marker);
                Apply::Rows(std::mem::take(&mut self.waiting))
            }
            // Another epoch's record: an older owner still writing (a zombie), or left
            // over from before the claim followed.
            Read::Row { .. } | Read::Marker { .. } | Read::Cleared => Apply::Nothing,
        }
    }

    /// How the read ended, once every record before `before` was fed.
    pub fn finish(self) -> Restored {
        match (self.follow, self.committed) {
            (None, _) => Restored::Nothing,
            (Some(epoch), Some(marker)) if marker.complete => Restored::State { epoch, marker },
            (Some(epoch), _) => Restored::ReadAgain {
                before: epoch as i64,
            },
        }
    }
}

/// Where a task's changelog stood when its store last changed, as the writer knows it:
/// kept in the store beside the state (never mirrored), so that a replica given the
/// task back can tell whether its own state is still the latest without reading the
/// whole partition (docs/design.md §16 "Carrying on").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The epoch the store's state was written under.
    pub epoch: u64,
    /// The number of the epoch's marker that matches the store's state.
    pub seq: u64,
    /// The offset up to which the partition is known to hold nothing but this
    /// writer's records since its claim (None: something else was seen, or a write
    /// came back out of order; then only a full restore is trusted).
    pub verified_to: Option<i64>,
    /// The number of the last marker at or before `verified_to`.
    pub verified_seq: u64,
}

impl Position {
    /// Its bytes in the store.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.epoch.to_le_bytes());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(&self.verified_to.unwrap_or(i64::MIN).to_le_bytes());
        v.extend_from_slice(&self.verified_seq.to_le_bytes());
        v
    }

    /// A position from its bytes (None: not one).
    pub fn decode(b: &[u8]) -> Option<Position> {
        let word = |i: usize| -> Option<[u8; 8]> { b.get(i * 8..i * 8 + 8)?.try_into().ok() };
        if b.len() != 32 {
            return None;
        }
        let verified = i64::from_le_bytes(word(2)?);
        Some(Position {
            epoch: u64::from_le_bytes(word(0)?),
            seq: u64::from_le_bytes(word(1)?),
            verified_to: (verified != i64::MIN).then_some(verified),
            verified_seq: u64::from_le_bytes(word(3)?),
        })
    }
}

/// How far a writer has got in its epoch: what the next mirrored store transaction
/// starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The epoch: the offset of the claim that started it.
    pub epoch: u64,
    /// The number of its last marker.
    pub seq: u64,
    /// Where the partition is verified to (see [`Position::verified_to`]).
    pub verified_to: Option<i64>,
}

impl Cursor {
    /// The position a store keeps for a transaction whose rows get the next marker.
    pub fn next_position(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.seq + 1,
            verified_to: self.verified_to,
            verified_seq: self.seq,
        }
    }
}

/// Where the partition is verified to after this writer's records landed at `offsets`
/// (in order): only if they follow `verified` without a gap, since a gap is somebody
/// else's record — possibly a newer claim.
pub fn verified_after(verified: Option<i64>, offsets: &[i64]) -> Option<i64> {
    offsets
        .iter()
        .try_fold(verified?, |v, &o| (o == v + 1).then_some(o))
}

/// The check that a task's local state is still its changelog's latest: the records
/// from just after [`Position::verified_to`] up to the reader's own continuing claim
/// must all be the same epoch's, without a gap, and end with the marker the store
/// matches. Anything else — another replica's claim or records, a gap (compaction, a
/// record not returned), a marker the store does not have — and the task is restored
/// in full instead.
#[derive(Debug)]
pub struct Tail {
    at: Position,
    next: i64,
    before: i64,
    last_seq: u64,
    /// Rows of the epoch read since its last marker: a checkpoint whose mirror never
    /// finished, which the local state may not hold.
    unfinished: bool,
    broken: Option<&'static str>,
}

impl Tail {
    /// The check of `at` against records before `before` (the continuing claim's
    /// offset); None when `at` was never verified.
    pub fn new(at: Position, before: i64) -> Option<Tail> {
        Some(Tail {
            at,
            next: at.verified_to? + 1,
            before,
            last_seq: at.verified_seq,
            unfinished: false,
            broken: None,
        })
    }

    /// The first offset to read.
    pub fn from(&self) -> i64 {
        self.next
    }

    /// Takes the record at `offset` (in offset order; a record read twice is ignored).
    pub fn feed(&mut self, offset: i64, record: Read) {
        if self.broken.is_some() || offset >= self.before || offset < self.next {
            return;
        }
        if offset != self.next {
            self.broken = Some("a gap in the changelog after this replica's last record");
            return;
        }
        self.next = offset + 1;
        let epoch = self.at.epoch;
        match record {
            Read::Row { epoch: e, .. } if e == epoch => self.unfinished = true,
            Read::Marker { epoch: e, marker } if e == epoch => {
                self.last_seq = marker.seq;
                self.unfinished = false;
            }
            Read::Claim { continues } if continues == Some(epoch) => {}
            _ => self.broken = Some("another replica wrote to the changelog since"),
        }
    }

    /// Ok when the local state is the latest; else why not.
    pub fn finish(self) -> Result<(), &'static str> {
        if let Some(why) = self.broken {
            return Err(why);
        }
        if self.next != self.before {
            return Err("the changelog ended before this replica's claim");
        }
        if self.last_seq != self.at.seq {
            return Err("the local state and the changelog's last checkpoint differ");
        }
        if self.unfinished {
            return Err("a checkpoint after the local state's was written in part");
        }
        Ok(())
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

    use std::collections::BTreeMap;

    fn put(id: &str, v: &str) -> Change {
        Change::put(Key::Customer(id.into()), v.as_bytes())
    }

    fn done(seq: u64, rows: u64) -> Marker {
        Marker {
            seq,
            rows,
            complete: true,
        }
    }

    /// Feeds `log` (offset = position) through `read` and a restorer as the worker
    /// does, applying to a map as the store would.
    fn restore(log: &[Record], before: i64) -> (Restored, BTreeMap<Key, Vec<u8>>) {
        let mut r = Restorer::new(before);
        let mut store = BTreeMap::new();
        for (offset, (k, v)) in log.iter().enumerate() {
            let rec = read(offset as i64, k, v.as_deref()).expect("a churnwatch record");
            match r.feed(offset as i64, rec) {
                Apply::Nothing => {}
                Apply::Clear => store.clear(),
                Apply::Rows(rows) => {
                    for c in rows {
                        match c.value {
                            Some(v) => store.insert(c.key, v),
                            None => store.remove(&c.key),
                        };
                    }
                }
            }
        }
        (r.finish(), store)
    }

    fn ids(store: &BTreeMap<Key, Vec<u8>>) -> Vec<(String, String)> {
        store
            .iter()
            .map(|(k, v)| {
                let Key::Customer(id) = k else {
                    panic!("{k:?}")
                };
                (id.clone(), String::from_utf8_lossy(v).to_string())
            })
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_checkpoint_counts_only_once_its_marker_is_written() {
        let log = vec![
            claim(1, None, "a"),
            row(0, &put("c1", "v1")),
            marker(0, done(1, 1)),
            row(0, &put("c1", "v2")),
            row(0, &put("c2", "v1")),
        ];
        let (end, store) = restore(&log, i64::MAX);
        assert_eq!(
            end,
            Restored::State {
                epoch: 0,
                marker: done(1, 1)
            }
        );
        assert_eq!(
            ids(&store),
            pairs(&[("c1", "v1")]),
            "the unfinished one is not applied"
        );
    }

    #[test]
    fn a_zombie_writing_after_a_newer_claim_is_ignored() {
        let log = vec![
            claim(1, None, "a"),
            row(0, &put("c1", "a1")),
            marker(0, done(1, 1)),
            claim(2, None, "b"), // offset 3: epoch 3
            row(0, &put("c1", "zombie")),
            marker(0, done(2, 1)),
            row(3, &put("c1", "a1")),
            row(3, &put("c2", "b1")),
            marker(3, done(1, 2)),
            row(0, &put("c3", "zombie")),
            marker(0, done(3, 2)),
        ];
        let (end, store) = restore(&log, i64::MAX);
        assert_eq!(
            end,
            Restored::State {
                epoch: 3,
                marker: done(1, 2)
            }
        );
        assert_eq!(ids(&store), pairs(&[("c1", "a1"), ("c2", "b1")]));
    }

    #[test]
    fn a_claim_that_never_completed_its_copy_sends_the_restorer_to_the_one_before() {
        let log = vec![
            claim(1, None, "a"),
            row(0, &put("c1", "a1")),
            marker(0, done(1, 1)),
            claim(2, None, "b"), // offset 3
            row(3, &put("c1", "a1")),
            marker(
                3,
                Marker {
                    seq: 1,
                    rows: 1,
                    complete: false,
                },
            ),
        ];
        let (end, _) = restore(&log, i64::MAX);
        assert_eq!(end, Restored::ReadAgain { before: 3 });
        let (end, store) = restore(&log, 3);
        assert_eq!(
            end,
            Restored::State {
                epoch: 0,
                marker: done(1, 1)
            }
        );
        assert_eq!(ids(&store), pairs(&[("c1", "a1")]));
        assert_eq!(restore(&[], i64::MAX).0, Restored::Nothing);
    }

    #[test]
    fn records_read_twice_or_past_the_end_change_nothing() {
        let mut r = Restorer::new(3);
        let (k, v) = claim(1, None, "a");
        assert_eq!(
            r.feed(0, read(0, &k, v.as_deref()).expect("claim")),
            Apply::Clear
        );
        let (k, v) = row(0, &put("c1", "v"));
        assert_eq!(
            r.feed(1, read(1, &k, v.as_deref()).expect("row")),
            Apply::Nothing
        );
        let (mk, mv) = marker(0, done(1, 1));
        let rows = r.feed(2, read(2, &mk, mv.as_deref()).expect("marker"));
        assert_eq!(rows, Apply::Rows(vec![put("c1", "v")]));
        // The same marker again (tansu returns some records twice), then one past the end.
        assert_eq!(
            r.feed(2, read(2, &mk, mv.as_deref()).expect("marker")),
            Apply::Nothing
        );
        assert_eq!(
            r.feed(1, read(1, &k, v.as_deref()).expect("row")),
            Apply::Nothing
        );
        let (ck, cv) = claim(9, None, "late");
        assert_eq!(
            r.feed(3, read(3, &ck, cv.as_deref()).expect("claim")),
            Apply::Nothing
        );
    }

    #[test]
    fn a_restart_carrying_on_its_epoch_keeps_it() {
        let log = vec![
            claim(1, None, "a"),
            row(0, &put("c1", "a1")),
            marker(0, done(1, 1)),
            claim(2, Some(0), "a again"),
            row(0, &put("c2", "a2")),
            marker(0, done(2, 2)),
        ];
        let (end, store) = restore(&log, i64::MAX);
        assert_eq!(
            end,
            Restored::State {
                epoch: 0,
                marker: done(2, 2)
            }
        );
        assert_eq!(ids(&store), pairs(&[("c1", "a1"), ("c2", "a2")]));
    }

    /// Feeds `log` from `at`'s next offset up to `before` through a tail check.
    fn tail(log: &[Record], at: Position, before: i64) -> Result<(), &'static str> {
        let mut t = Tail::new(at, before).expect("verified");
        for (offset, (k, v)) in log.iter().enumerate().skip(t.from() as usize) {
            t.feed(
                offset as i64,
                read(offset as i64, k, v.as_deref()).expect("ours"),
            );
        }
        t.finish()
    }

    fn at(seq: u64, verified_to: i64, verified_seq: u64) -> Position {
        Position {
            epoch: 0,
            seq,
            verified_to: Some(verified_to),
            verified_seq,
        }
    }

    /// The log of epoch 0 after two checkpoints, then a continuing claim (offset 5).
    fn carried() -> Vec<Record> {
        vec![
            claim(1, None, "a"),
            row(0, &put("c1", "a1")),
            marker(0, done(1, 1)),
            row(0, &put("c2", "a2")),
            marker(0, done(2, 2)),
            claim(2, Some(0), "a again"),
        ]
    }

    #[test]
    fn local_state_is_current_when_only_its_own_epoch_follows_up_to_its_marker() {
        // The store wrote checkpoint 2 knowing the partition up to offset 2.
        assert_eq!(tail(&carried(), at(2, 2, 1), 5), Ok(()));
        // Written by a full copy that ended at offset 4: nothing after it but the claim.
        assert_eq!(tail(&carried(), at(2, 4, 2), 5), Ok(()));
        // Its own earlier continuing claims are no one else's.
        let mut log = carried();
        log.push(claim(3, Some(0), "a, third start"));
        assert_eq!(tail(&log, at(2, 2, 1), 6), Ok(()));
    }

    #[test]
    fn local_state_is_not_current_after_a_foreign_claim_a_gap_or_another_marker() {
        // The store is ahead: its checkpoint 2 never reached the changelog.
        let mut log = carried();
        log.truncate(3);
        log.push(claim(2, Some(0), "a again"));
        assert!(tail(&log, at(2, 2, 1), 4).is_err());
        // The store is behind (an old copy of the volume): marker 2 is not its state.
        assert!(tail(&carried(), at(1, 0, 0), 5).is_err());
        // Another replica claimed the task in between.
        let mut log = carried();
        log.insert(3, claim(9, None, "b"));
        assert!(tail(&log, at(2, 2, 1), 6).is_err());
        // A zombie of an older epoch wrote in between: not ours, so not trusted.
        let mut log = carried();
        log.insert(3, row(7, &put("c9", "z")));
        assert!(tail(&log, at(2, 2, 1), 6).is_err());
        // A record not returned (or compacted away) hides what it was.
        let mut t = Tail::new(at(2, 2, 1), 5).expect("verified");
        let log = carried();
        for offset in [4, 3] {
            let (k, v) = &log[offset];
            t.feed(
                offset as i64,
                read(offset as i64, k, v.as_deref()).expect("ours"),
            );
        }
        assert!(t.finish().is_err());
        // The read ended early.
        let mut t = Tail::new(at(2, 2, 1), 5).expect("verified");
        let (k, v) = &carried()[3];
        t.feed(3, read(3, k, v.as_deref()).expect("ours"));
        assert!(t.finish().is_err());
        // Rows of a later checkpoint whose marker never came (an old copy of a
        // volume whose next checkpoint was half-mirrored): not what the store holds.
        let mut log = carried();
        log.insert(5, row(0, &put("c3", "a3")));
        assert!(tail(&log, at(2, 2, 1), 6).is_err());
        // Never verified: no check at all.
        let mut p = at(2, 2, 1);
        p.verified_to = None;
        assert!(Tail::new(p, 5).is_none());
    }

    #[test]
    fn records_read_twice_do_not_break_a_tail() {
        let log = carried();
        let mut t = Tail::new(at(2, 2, 1), 5).expect("verified");
        for offset in [3, 4, 3, 4] {
            let (k, v) = &log[offset];
            t.feed(
                offset as i64,
                read(offset as i64, k, v.as_deref()).expect("ours"),
            );
        }
        assert_eq!(t.finish(), Ok(()));
    }

    #[test]
    fn the_verified_offset_moves_only_over_a_run_without_gaps() {
        assert_eq!(verified_after(Some(4), &[5, 6, 7]), Some(7));
        assert_eq!(verified_after(Some(4), &[]), Some(4));
        assert_eq!(
            verified_after(Some(4), &[6, 7]),
            None,
            "offset 5 is someone's"
        );
        assert_eq!(verified_after(Some(4), &[5, 7]), None);
        assert_eq!(verified_after(None, &[5]), None, "once lost, lost");
    }

    #[test]
    fn a_position_reads_back_as_itself() {
        for p in [
            at(3, 17, 2),
            Position {
                verified_to: None,
                ..at(1, 0, 0)
            },
        ] {
            assert_eq!(Position::decode(&p.encode()), Some(p));
        }
        assert_eq!(Position::decode(b"short"), None);
    }

    #[test]
    fn records_churnwatch_does_not_write_are_refused_by_offset_and_size() {
        for (k, v) in [
            (&b""[..], Some(&b"x"[..])),
            (b"zzz", None),
            (b"M\x00", Some(b"1")),
            (b"r\x00\x00\x00\x00\x00\x00\x00\x00x-secret", Some(b"1")),
        ] {
            let e = read(42, k, v).expect_err("not ours");
            assert_eq!((e.offset, e.len), (42, k.len()));
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

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
