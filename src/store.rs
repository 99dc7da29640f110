//! The embedded store (docs/design.md §8 Checkpoint and outbox): one redb file per task (`task-<p>.redb` in
//! `state.dir`), so a task's state is one unit that can later move between replicas.
//!
//! A checkpoint is one write transaction, synced before it returns: the customers that
//! changed (and the ids dropped) since the last one, the engine header, the input offsets
//! that state reflects, and the effects it decided as numbered outbox entries. Entries
//! are removed once acknowledged, a batch at a time and synced too, so the window in
//! which a crash hands an effect over again is one batch's acknowledgement.
//!
//! redb verifies page checksums when it opens a file (integrity check on), so a damaged
//! file is an error naming it — never an empty start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Builder, Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::changelog::{Change, Cursor, Key, Position};
use crate::engine::checkpoint::{Header, Record, RestoreError};
use crate::engine::settings::Settings;
use crate::engine::Engine;
use crate::outbox::Entry;

const CUSTOMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("customers");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Per email entry, when its first transient SMTP failure happened (Unix seconds): kept
/// here so that `smtp.max_retry_age` counts across restarts.
const FIRST_FAILURE: TableDefinition<u64, i64> = TableDefinition::new("first_failure");
/// Where the task's changelog stood when the state last changed (local only: neither
/// mirrored nor counted as a state row; docs/design.md §16 "Carrying on").
const POSITION: TableDefinition<&str, &[u8]> = TableDefinition::new("changelog_position");

const HEADER: &str = "header";
const OFFSETS: &str = "offsets";
const NEXT_ENTRY: &str = "next_entry";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (a running worker) has the file open.
    #[error("{path}: in use by another churnwatch process (stop it, or ask it through its admin endpoint)")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// redb refused or failed (damaged file, I/O error, full disk).
    #[error("{path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What redb said.
        source: redb::Error,
    },
    /// The file opened, but its contents do not make a valid state.
    #[error("{path}: damaged state: {source}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: RestoreError,
    },
    /// A write through a handle opened to read.
    #[error("{path}: opened read-only")]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// Listing or creating the folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

enum Handle {
    Write(Database),
    Read(ReadOnlyDatabase),
}

/// One task's store.
pub struct TaskStore {
    handle: Handle,
    path: PathBuf,
}

/// A store being rebuilt from a changelog ([`TaskStore::restore`]).
pub struct Restore<'a> {
    store: &'a TaskStore,
    tx: Option<redb::WriteTransaction>,
    rows: u64,
}

impl Restore<'_> {
    /// Applies changelog records, in changelog order (a later one for the same row
    /// replaces it, a tombstone deletes it). Give them a batch at a time: each call
    /// opens the tables once.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let st = self.store;
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let e = |x: redb::Error| st.err(x);
        let mut c = tx.open_table(CUSTOMERS).map_err(|x| e(x.into()))?;
        let mut m = tx.open_table(META).map_err(|x| e(x.into()))?;
        let mut o = tx.open_table(OUTBOX).map_err(|x| e(x.into()))?;
        let mut f = tx.open_table(FIRST_FAILURE).map_err(|x| e(x.into()))?;
        for change in changes {
            let value = change.value.as_deref();
            match &change.key {
                Key::Customer(id) => match value {
                    Some(v) => c.insert(id.as_str(), v).map(drop),
                    None => c.remove(id.as_str()).map(drop),
                },
                Key::Meta(name) => match value {
                    Some(v) => m.insert(name.as_str(), v).map(drop),
                    None => m.remove(name.as_str()).map(drop),
                },
                Key::Outbox(n) => match value {
                    Some(v) => o.insert(*n, v).map(drop),
                    None => o.remove(*n).map(drop),
                },
                Key::FirstFailure(n) => match value {
                    Some(v) => {
                        let at = <[u8; 8]>::try_from(v)
                            .map(i64::from_le_bytes)
                            .map_err(|_| {
                                st.damaged(RestoreError::Decode {
                                    what: "a first-failure time in the changelog".into(),
                                    error: format!("{} bytes", v.len()),
                                })
                            })?;
                        f.insert(*n, at).map(drop)
                    }
                    None => f.remove(*n).map(drop),
                },
            }
            .map_err(|x| e(x.into()))?;
            self.rows += 1;
        }
        Ok(())
    }

    /// Forgets everything applied so far (a newer claim took over).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        let st = self.store;
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        clear_tables(st, tx)
    }

    /// Commits the rebuilt store, synced; returns the records applied.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        let st = self.store;
        if let Some(tx) = self.tx.take() {
            tx.commit().map_err(|e| st.err(e))?;
        }
        Ok(self.rows)
    }
}

/// Empties every table of `st` within `tx`.
fn clear_tables(st: &TaskStore, tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut c = tx.open_table(CUSTOMERS).map_err(|e| st.err(e))?;
    c.retain(|_, _| false).map_err(|e| st.err(e))?;
    let mut m = tx.open_table(META).map_err(|e| st.err(e))?;
    m.retain(|_, _| false).map_err(|e| st.err(e))?;
    let mut o = tx.open_table(OUTBOX).map_err(|e| st.err(e))?;
    o.retain(|_, _| false).map_err(|e| st.err(e))?;
    let mut f = tx.open_table(FIRST_FAILURE).map_err(|e| st.err(e))?;
    f.retain(|_, _| false).map_err(|e| st.err(e))?;
    let mut p = tx.open_table(POSITION).map_err(|e| st.err(e))?;
    p.retain(|_, _| false).map_err(|e| st.err(e))?;
    Ok(())
}

/// A task's state as loaded at start.
pub struct Loaded {
    /// The engine, as of the last checkpoint.
    pub engine: Engine,
    /// Per input topic, the next offset to read.
    pub offsets: BTreeMap<String, i64>,
    /// Outbox entries not yet acknowledged, in decision order.
    pub pending: Vec<(u64, Entry)>,
    /// The number the next outbox entry gets.
    pub next_entry: u64,
}

/// What [`TaskStore::inspect`] finds about one customer.
pub struct Found {
    /// An engine holding just this customer (plus the task's header), for snapshots.
    pub engine: Engine,
    /// The customer's record as stored.
    pub record: Record,
    /// Outbox entries of this customer not yet acknowledged.
    pub pending: Vec<(u64, Entry)>,
}

/// A checkpoint's engine header, offsets and outbox counter.
type Stored = (Header, BTreeMap<String, i64>, u64);

/// What a store transaction mirrored to a changelog collects and keeps: the rows it
/// wrote or deleted, and — when there are any — the changelog position its state will
/// have once they are written under the next marker (docs/design.md §16).
#[derive(Debug)]
pub struct Mirror {
    /// Every row written or deleted, in order.
    pub changes: Vec<Change>,
    /// Where the writer stands in its epoch before this transaction.
    pub at: Cursor,
}

impl Mirror {
    /// An empty mirror of a transaction written from `at`.
    pub fn new(at: Cursor) -> Mirror {
        Mirror {
            changes: Vec::new(),
            at,
        }
    }
}

/// Records `m`'s position in `tx` when the transaction changed a row; a change that
/// is not mirrored (`m` None and `changed`: a task this worker no longer runs, or no
/// changelog) forgets the position, since the store then differs from the changelog.
fn keep_position(
    st: &TaskStore,
    tx: &redb::WriteTransaction,
    m: Option<&Mirror>,
    changed: bool,
) -> Result<(), StoreError> {
    match m {
        Some(m) if !m.changes.is_empty() => {
            let mut t = tx.open_table(POSITION).map_err(|e| st.err(e))?;
            t.insert(POSITION_KEY, m.at.next_position().encode().as_slice())
                .map_err(|e| st.err(e))?;
        }
        None if changed => {
            let mut t = tx.open_table(POSITION).map_err(|e| st.err(e))?;
            t.remove(POSITION_KEY).map_err(|e| st.err(e))?;
        }
        _ => {}
    }
    Ok(())
}

const POSITION_KEY: &str = "position";

/// The file of task `task` in `dir`.
pub fn task_path(dir: &Path, task: i32) -> PathBuf {
    dir.join(format!("task-{task}.redb"))
}

/// Tasks that have a store file in `dir` (none when the folder does not exist).
pub fn tasks_in(dir: &Path) -> Result<Vec<i32>, StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out: Vec<i32> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("task-")?
                .strip_suffix(".redb")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

impl TaskStore {
    /// Opens (or creates) task `task`'s store in `dir` for writing; checks its integrity.
    pub fn open(dir: &Path, task: i32) -> Result<TaskStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = task_path(dir, task);
        let db = Builder::new()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| db_error(&path, e.into()))?;
        Ok(TaskStore {
            handle: Handle::Write(db),
            path,
        })
    }

    /// Opens an existing store to read it (refused while a worker holds it).
    pub fn open_read_only(dir: &Path, task: i32) -> Result<TaskStore, StoreError> {
        let path = task_path(dir, task);
        let db = Builder::new()
            .open_read_only(&path)
            .map_err(|e| db_error(&path, e.into()))?;
        Ok(TaskStore {
            handle: Handle::Read(db),
            path,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        db_error(&self.path, e.into())
    }

    fn damaged(&self, source: RestoreError) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            source,
        }
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.handle {
            Handle::Write(db) => db.begin_read(),
            Handle::Read(db) => db.begin_read(),
        }
        .map_err(|e| self.err(e))
    }

    fn db(&self) -> Result<&Database, StoreError> {
        match &self.handle {
            Handle::Write(db) => Ok(db),
            Handle::Read(_) => Err(StoreError::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    fn meta(&self, tx: &ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let v = t.get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn header_and_offsets(&self, tx: &ReadTransaction) -> Result<Option<Stored>, StoreError> {
        let Some(h) = self.meta(tx, HEADER)? else {
            return Ok(None);
        };
        let header = Header::decode(&h).map_err(|e| self.damaged(e))?;
        let offsets = match self.meta(tx, OFFSETS)? {
            Some(b) => postcard::from_bytes(&b).map_err(|e| {
                self.damaged(RestoreError::Decode {
                    what: "the stored offsets".into(),
                    error: e.to_string(),
                })
            })?,
            None => BTreeMap::new(),
        };
        let next = match self.meta(tx, NEXT_ENTRY)? {
            Some(b) => u64::from_le_bytes(b.as_slice().try_into().map_err(|_| {
                self.damaged(RestoreError::Decode {
                    what: "the outbox counter".into(),
                    error: format!("{} bytes", b.len()),
                })
            })?),
            None => 0,
        };
        Ok(Some((header, offsets, next)))
    }

    /// The offsets of the last checkpoint (None: never checkpointed).
    pub fn offsets(&self) -> Result<Option<BTreeMap<String, i64>>, StoreError> {
        let tx = self.read()?;
        Ok(self.header_and_offsets(&tx)?.map(|(_, o, _)| o))
    }

    fn pending(
        &self,
        tx: &ReadTransaction,
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<Vec<(u64, Entry)>, StoreError> {
        let t = match tx.open_table(OUTBOX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let entry = Entry::decode(v.value()).map_err(|e| {
                self.damaged(RestoreError::Decode {
                    what: format!("outbox entry {}", k.value()),
                    error: e.to_string(),
                })
            })?;
            if keep(&entry) {
                out.push((k.value(), entry));
            }
        }
        Ok(out)
    }

    /// One outbox entry, if it is not done yet.
    pub fn entry(&self, n: u64) -> Result<Option<Entry>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(OUTBOX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(v) = t.get(n).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        Entry::decode(v.value()).map(Some).map_err(|e| {
            self.damaged(RestoreError::Decode {
                what: format!("outbox entry {n}"),
                error: e.to_string(),
            })
        })
    }

    /// The outbox entries not yet done, in order.
    pub fn outbox(&self) -> Result<Vec<(u64, Entry)>, StoreError> {
        let tx = self.read()?;
        self.pending(&tx, |_| true)
    }

    /// Loads the task's engine, offsets and pending outbox (None: never checkpointed).
    pub fn load(&self, settings: Arc<Settings>) -> Result<Option<Loaded>, StoreError> {
        let tx = self.read()?;
        let Some((header, offsets, next_entry)) = self.header_and_offsets(&tx)? else {
            return Ok(None);
        };
        let engine = match tx.open_table(CUSTOMERS) {
            Ok(t) => {
                let iter = t.iter().map_err(|e| self.err(e))?;
                let format = header.format;
                Engine::restore(
                    settings,
                    header,
                    iter.map(|item| -> Result<(Box<str>, Record), StoreError> {
                        let (k, v) = item.map_err(|e| self.err(e))?;
                        let id = k.value();
                        let r =
                            Record::decode(id, v.value(), format).map_err(|e| self.damaged(e))?;
                        Ok((Box::from(id), r))
                    }),
                )
                .map_err(|e| e.at(&self.path))?
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Engine::restore(
                settings,
                header,
                std::iter::empty::<Result<_, StoreError>>(),
            )
            .map_err(|e| e.at(&self.path))?,
            Err(e) => return Err(self.err(e)),
        };
        let pending = self.pending(&tx, |_| true)?;
        Ok(Some(Loaded {
            engine,
            offsets,
            pending,
            next_entry,
        }))
    }

    /// One customer as stored, with an engine around it for explaining (None: unknown).
    pub fn inspect(&self, settings: Arc<Settings>, id: &str) -> Result<Option<Found>, StoreError> {
        let tx = self.read()?;
        let Some((header, _, _)) = self.header_and_offsets(&tx)? else {
            return Ok(None);
        };
        let t = match tx.open_table(CUSTOMERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(v) = t.get(id).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let record = Record::decode(id, v.value(), header.format).map_err(|e| self.damaged(e))?;
        // Only this customer's slot is filled: the rest count as free.
        let mut h = header;
        h.free = (0..h.slots).filter(|s| *s != record.slot).collect();
        let engine = Engine::restore(
            settings,
            h,
            std::iter::once(Ok::<_, StoreError>((Box::from(id), record.clone()))),
        )
        .map_err(|e| e.at(&self.path))?;
        let pending = self.pending(&tx, |e| e.customer_key() == Some(id.as_bytes()))?;
        Ok(Some(Found {
            engine,
            record,
            pending,
        }))
    }

    /// Commits a checkpoint: the engine's changes and header, `offsets`, and `entries`
    /// numbered from `first_entry`. Synced to disk before it returns; only then does the
    /// engine forget its changes.
    /// `mirror`, when given, receives every row written or deleted (for the changelog).
    pub fn checkpoint(
        &self,
        engine: &mut Engine,
        offsets: &BTreeMap<String, i64>,
        (entries, first_entry): (&[Entry], u64),
        mut mirror: Option<&mut Mirror>,
    ) -> Result<(), StoreError> {
        let mut note = |c: Change| {
            if let Some(m) = mirror.as_deref_mut() {
                m.changes.push(c);
            }
        };
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut c = tx.open_table(CUSTOMERS).map_err(|e| self.err(e))?;
            for id in engine.removed_since_checkpoint() {
                c.remove(&**id).map_err(|e| self.err(e))?;
                note(Change::delete(Key::Customer(id.to_string())));
            }
            for (id, bytes) in engine.changed_since_checkpoint() {
                c.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
                note(Change::put(Key::Customer(id.to_string()), bytes));
            }
            let mut m = tx.open_table(META).map_err(|e| self.err(e))?;
            let next = first_entry + entries.len() as u64;
            let meta = [
                (HEADER, engine.header().encode()),
                (OFFSETS, postcard::to_allocvec(offsets).unwrap_or_default()),
                (NEXT_ENTRY, next.to_le_bytes().to_vec()),
            ];
            for (key, value) in meta {
                m.insert(key, value.as_slice()).map_err(|e| self.err(e))?;
                note(Change::put(Key::Meta(key.to_string()), value));
            }
            let mut o = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
            for (i, entry) in entries.iter().enumerate() {
                let n = first_entry + i as u64;
                let bytes = entry.encode();
                o.insert(n, bytes.as_slice()).map_err(|e| self.err(e))?;
                note(Change::put(Key::Outbox(n), bytes));
            }
        }
        keep_position(self, &tx, mirror.as_deref(), true)?;
        tx.commit().map_err(|e| self.err(e))?;
        engine.checkpoint_done();
        Ok(())
    }

    /// Removes acknowledged outbox entries, synced: after a crash only entries whose
    /// effect was acknowledged since the last call are handed over again.
    /// `mirror`, when given, receives the rows deleted (for the changelog).
    pub fn mark_done(
        &self,
        entries: impl IntoIterator<Item = u64>,
        mut mirror: Option<&mut Mirror>,
    ) -> Result<(), StoreError> {
        let mut changed = false;
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut o = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
            let mut f = tx.open_table(FIRST_FAILURE).map_err(|e| self.err(e))?;
            for n in entries {
                changed |= o.remove(n).map_err(|e| self.err(e))?.is_some();
                changed |= f.remove(n).map_err(|e| self.err(e))?.is_some();
                // Also when already gone here: a removal retried because the changelog
                // write failed must still reach the changelog.
                if let Some(m) = mirror.as_deref_mut() {
                    m.changes.push(Change::delete(Key::Outbox(n)));
                    m.changes.push(Change::delete(Key::FirstFailure(n)));
                }
            }
        }
        keep_position(self, &tx, mirror.as_deref(), changed)?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Stores when each email entry first failed transiently (Unix seconds), keeping a
    /// time already stored: `smtp.max_retry_age` counts from the first failure ever.
    /// `mirror`, when given, receives the rows written (for the changelog).
    pub fn note_first_failures(
        &self,
        entries: &[(u64, i64)],
        mut mirror: Option<&mut Mirror>,
    ) -> Result<(), StoreError> {
        let mut changed = false;
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let o = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
            let mut f = tx.open_table(FIRST_FAILURE).map_err(|e| self.err(e))?;
            for &(n, at) in entries {
                // An entry already finished (reports can cross) gets no orphan row.
                let known = f.get(n).map_err(|e| self.err(e))?.is_some();
                let pending = o.get(n).map_err(|e| self.err(e))?.is_some();
                if !known && pending {
                    f.insert(n, at).map_err(|e| self.err(e))?;
                    changed = true;
                    if let Some(m) = mirror.as_deref_mut() {
                        m.changes
                            .push(Change::put(Key::FirstFailure(n), at.to_le_bytes()));
                    }
                }
            }
        }
        keep_position(self, &tx, mirror.as_deref(), changed)?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Where the task's changelog stood when this store's state last changed (None:
    /// not known — no changelog, or the state was just replaced by a restore).
    pub fn position(&self) -> Result<Option<Position>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(POSITION) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let got = t.get(POSITION_KEY).map_err(|e| self.err(e))?;
        Ok(got.and_then(|v| Position::decode(v.value())))
    }

    /// Keeps `at` as the changelog's position of the state as it stands (after a full
    /// copy under a new epoch), synced.
    pub fn set_position(&self, at: Position) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(POSITION).map_err(|e| self.err(e))?;
            t.insert(POSITION_KEY, at.encode().as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Outbox entries the store holds (decided effects not yet done).
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        match tx.open_table(OUTBOX) {
            Ok(t) => t.len().map_err(|e| self.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Rows the store holds, over every table (what a changelog marker records).
    pub fn rows(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let mut n = 0;
        macro_rules! count {
            ($t:expr) => {
                match tx.open_table($t) {
                    Ok(t) => n += t.len().map_err(|e| self.err(e))?,
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(self.err(e)),
                }
            };
        }
        count!(CUSTOMERS);
        count!(META);
        count!(OUTBOX);
        count!(FIRST_FAILURE);
        Ok(n)
    }

    /// Every row of the store as changelog changes, `batch` at a time (a full copy of
    /// the state for a new owner's epoch).
    pub fn for_each_row(
        &self,
        batch: usize,
        mut f: impl FnMut(Vec<Change>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let tx = self.read()?;
        let mut out = Vec::with_capacity(batch);
        let mut flush = |out: &mut Vec<Change>, force: bool| -> anyhow::Result<()> {
            if out.len() >= batch || (force && !out.is_empty()) {
                f(std::mem::take(out))?;
            }
            Ok(())
        };
        macro_rules! rows {
            ($t:expr, $key:expr, $value:expr) => {
                match tx.open_table($t) {
                    Ok(t) => {
                        for item in t.iter().map_err(|e| self.err(e))? {
                            let (k, v) = item.map_err(|e| self.err(e))?;
                            out.push(Change::put($key(k.value()), $value(v.value())));
                            flush(&mut out, false)?;
                        }
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(self.err(e).into()),
                }
            };
        }
        rows!(
            CUSTOMERS,
            |k: &str| Key::Customer(k.to_string()),
            |v: &[u8]| v.to_vec()
        );
        rows!(META, |k: &str| Key::Meta(k.to_string()), |v: &[u8]| v
            .to_vec());
        rows!(OUTBOX, Key::Outbox, |v: &[u8]| v.to_vec());
        rows!(FIRST_FAILURE, Key::FirstFailure, |v: i64| v
            .to_le_bytes()
            .to_vec());
        flush(&mut out, true)
    }

    /// Starts replacing this store's whole content by a changelog's (a task arriving
    /// without current local state): nothing of the old content survives, and nothing
    /// of the new is visible until [`Restore::finish`] commits it, synced.
    pub fn restore(&self) -> Result<Restore<'_>, StoreError> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        clear_tables(self, &tx)?;
        Ok(Restore {
            store: self,
            tx: Some(tx),
            rows: 0,
        })
    }

    /// When each unfinished email entry first failed transiently (Unix seconds).
    pub fn first_failures(&self) -> Result<BTreeMap<u64, i64>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(FIRST_FAILURE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = BTreeMap::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.insert(k.value(), v.value());
        }
        Ok(out)
    }
}

fn db_error(path: &Path, e: redb::Error) -> StoreError {
    match e {
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_path_buf(),
        },
        source => StoreError::Db {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl From<RestoreError> for StoreError {
    /// The path is filled in by [`StoreError::at`].
    fn from(source: RestoreError) -> StoreError {
        StoreError::Damaged {
            path: PathBuf::new(),
            source,
        }
    }
}

impl StoreError {
    /// The file or folder it concerns.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::InUse { path }
            | StoreError::Db { path, .. }
            | StoreError::Damaged { path, .. }
            | StoreError::ReadOnly { path }
            | StoreError::Io { path, .. } => path,
        }
    }

    /// The I/O error behind it, if any (redb's error does not expose it as a source).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Db {
                source: redb::Error::Io(e),
                ..
            }
            | StoreError::Io { source: e, .. } => Some(e),
            _ => None,
        }
    }

    /// Names `path` where the error came without one.
    fn at(self, path: &Path) -> StoreError {
        match self {
            StoreError::Damaged { path: p, source } if p.as_os_str().is_empty() => {
                StoreError::Damaged {
                    path: path.to_path_buf(),
                    source,
                }
            }
            other => other,
        }
    }
}
