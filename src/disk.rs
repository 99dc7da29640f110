//! Disk faults (README, "Durability"): a full or read-only volume must stop the worker
//! with one clear error, never turn into a loop that sends emails again.
//!
//! Two parts: telling a fault apart from other errors ([`fault`]), and a small reserve
//! file in `state.dir` that is given back on a fault, so that the outbox removals of
//! emails the relay already accepted can still be written before the worker stops.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// An I/O error on a named file (the send log), so a fault can say where it happened.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PathError {
    /// The file.
    pub path: PathBuf,
    /// What the system said.
    pub source: std::io::Error,
}

/// A volume that cannot take writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// `true`: no space (or quota); `false`: mounted read-only.
    pub full: bool,
    /// Where the write failed, when known.
    pub path: Option<PathBuf>,
    /// The system's words, with the errno (`No space left on device (os error 28)`).
    pub error: String,
}

impl Fault {
    /// The one line the worker logs when it stops: what, the errno, where.
    pub fn line(&self, state_dir: &Path) -> String {
        let path = self.path.as_deref().unwrap_or(state_dir);
        let volume = if path.starts_with(state_dir) {
            "state volume"
        } else {
            "volume"
        };
        let what = if self.full { "full" } else { "read-only" };
        format!(
            "{volume} {what} ({}) at {}: stopping",
            self.error,
            path.display()
        )
    }
}

/// Whether an I/O error means the volume takes no more writes.
fn kind_of(e: &std::io::Error) -> Option<bool> {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some(true),
        ErrorKind::ReadOnlyFilesystem => Some(false),
        _ => None,
    }
}

/// The disk fault behind `err`, if that is what it is. Looks through the whole chain:
/// redb's errors hide their I/O error from `source()`, so store errors are asked directly.
pub fn fault(err: &anyhow::Error) -> Option<Fault> {
    for cause in err.chain() {
        let (path, io) = if let Some(p) = cause.downcast_ref::<PathError>() {
            (Some(p.path.clone()), Some(&p.source))
        } else if let Some(s) = cause.downcast_ref::<StoreError>() {
            (Some(s.path().to_path_buf()), s.io_error())
        } else {
            (None, cause.downcast_ref::<std::io::Error>())
        };
        if let Some(io) = io {
            if let Some(full) = kind_of(io) {
                return Some(Fault {
                    full,
                    path,
                    error: io.to_string(),
                });
            }
        }
    }
    None
}

/// The reserve's size: room for the outbox removals (a few B-tree pages per task, and a
/// store reopened after redb latched the failure) once the volume filled up.
pub const RESERVE_BYTES: usize = 1 << 20;

/// The file holding the reserve in `state.dir`.
pub fn reserve_path(state_dir: &Path) -> PathBuf {
    state_dir.join("disk-reserve")
}

/// Space set aside on the state volume, given back when it fills up.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    held: bool,
}

impl Reserve {
    /// Writes (or rewrites) the reserve with real bytes, synced: a sparse file would
    /// hold no space. Fails on a volume that is already full or read-only, which is
    /// the point: nothing is handed over then.
    pub fn take(state_dir: &Path, bytes: usize) -> Result<Reserve, PathError> {
        let path = reserve_path(state_dir);
        let at = |source| PathError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(|source| PathError {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let written = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&vec![0u8; bytes])?;
            f.sync_all()
        });
        if let Err(e) = written {
            // Half a reserve would only take the space it was meant to keep.
            let _ = std::fs::remove_file(&path);
            return Err(at(e));
        }
        Ok(Reserve { path, held: true })
    }

    /// Frees the space for the last writes before stopping.
    pub fn release(&mut self) {
        if self.held {
            self.held = false;
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::debug!(error = %e, "disk reserve not removed");
            }
        }
    }

    /// Whether the space is still set aside.
    pub fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    #[test]
    fn full_and_read_only_volumes_are_faults_other_errors_are_not() {
        let e = anyhow::Error::new(PathError {
            path: "/st/sends.jsonl".into(),
            source: std::io::Error::from_raw_os_error(28),
        })
        .context("recording a send");
        let f = fault(&e).expect("ENOSPC is a fault");
        assert!(f.full);
        assert_eq!(
            f.line(Path::new("/st")),
            "state volume full (No space left on device (os error 28)) at /st/sends.jsonl: stopping"
        );
        let ro = anyhow::Error::new(std::io::Error::from_raw_os_error(30));
        let f = fault(&ro).expect("EROFS is a fault");
        assert!(!f.full);
        assert!(f
            .line(Path::new("/st"))
            .starts_with("state volume read-only (Read-only file system (os error 30)) at /st:"));
        assert!(fault(&anyhow::Error::new(io(std::io::ErrorKind::NotFound))).is_none());
        assert!(fault(&anyhow::anyhow!("no space left, but only in words")).is_none());
    }

    #[test]
    fn a_store_error_from_redb_is_seen_through() {
        let e = StoreError::Db {
            path: "/st/task-0.redb".into(),
            source: redb::Error::Io(std::io::Error::from_raw_os_error(28)),
        };
        let f = fault(&anyhow::Error::new(e).context("checkpoint")).expect("fault");
        assert_eq!(f.path.as_deref(), Some(Path::new("/st/task-0.redb")));
    }

    #[test]
    fn the_reserve_holds_real_bytes_and_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reserve::take(dir.path(), 4096).unwrap();
        let meta = std::fs::metadata(reserve_path(dir.path())).unwrap();
        assert_eq!(meta.len(), 4096);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 4096, "sparse reserve");
        r.release();
        assert!(!r.held());
        assert!(!reserve_path(dir.path()).exists());
    }
}
