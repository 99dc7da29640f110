//! The file transport (`replay`, and `run` with `delivery.transport = "file"`): each
//! email becomes `<Message-ID>.eml` in a folder, written atomically (temporary file, then
//! rename).
//!
//! In `run` the transport is durable: the temporary files of a hand-over are synced, then
//! renamed, then the folder is synced, all before their outbox entries are removed — so
//! a power cut cannot lose an `.eml` whose entry is gone. Batching per hand-over lets the
//! file system write the batch together instead of one flush per email.
//!
//! lettre's own `FileTransport` names files by a random UUID; docs/design.md §7 Decisions wants them named by
//! the deterministic Message-ID, so this writes lettre's formatted bytes itself.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes messages as `.eml` files into one folder.
pub struct FileTransport {
    dir: PathBuf,
    durable: bool,
    /// Durable mode: temporary files written, not yet synced and renamed into place.
    unsynced: Vec<(fs::File, PathBuf, PathBuf)>,
    /// The final paths of `unsynced`, for the look-up of every write.
    pending: std::collections::HashSet<PathBuf>,
}

impl FileTransport {
    /// A transport writing into `dir` (created if missing); `durable` (service mode)
    /// puts files in place only in [`FileTransport::sync`].
    pub fn new(dir: &Path, durable: bool) -> std::io::Result<FileTransport> {
        fs::create_dir_all(dir)?;
        Ok(FileTransport {
            dir: dir.to_path_buf(),
            durable,
            unsynced: Vec::new(),
            pending: Default::default(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Durable mode: flushes the file system holding every file written since the last
    /// call (one `syncfs`), renames each into place, then syncs the folder (which makes
    /// the renames durable). Only after this
    /// may their outbox entries go. Nothing to do otherwise.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        // One syncfs for the whole hand-over: an fdatasync per file waits for one
        // journal commit each, which made writing .eml files the service's bottleneck.
        let folder = fs::File::open(&self.dir)?;
        rustix::fs::syncfs(&folder)?;
        self.pending.clear();
        for (f, tmp, path) in std::mem::take(&mut self.unsynced) {
            drop(f);
            fs::rename(&tmp, &path)?;
        }
        folder.sync_all()
    }

    /// The file a Message-ID is written to.
    pub fn path_of(&self, message_id: &str) -> PathBuf {
        let safe: String = message_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.eml"))
    }

    /// Writes `bytes` as `<message_id>.eml` unless that file exists already; returns the
    /// path and whether it was written now.
    pub fn write_once(
        &mut self,
        message_id: &str,
        bytes: &[u8],
    ) -> std::io::Result<(PathBuf, bool)> {
        let path = self.path_of(message_id);
        // Written already, or earlier in this hand-over and not yet renamed into place
        // (the same email handed over twice: a second temporary file would be renamed
        // away from under the first).
        if self.pending.contains(&path) || path.exists() {
            return Ok((path, false));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // A temporary file, then a rename: a reader never sees half a message.
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes).map(|()| f));
        let f = match written {
            Ok(f) => f,
            Err(e) => {
                // A full disk leaves no half file behind to take space.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if self.durable {
            self.pending.insert(path.clone());
            self.unsynced.push((f, tmp, path.clone()));
        } else {
            drop(f);
            fs::rename(&tmp, &path)?;
        }
        Ok((path, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_email_twice_in_one_hand_over_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = FileTransport::new(dir.path(), true).unwrap();
        assert!(t.write_once("a@x", b"hello").unwrap().1);
        // Handed over again before the sync (an entry restored after a crash): a
        // second temporary file would be renamed away from under the first.
        assert!(!t.write_once("a@x", b"hello").unwrap().1);
        t.sync().expect("one rename per file");
        assert_eq!(fs::read(t.path_of("a@x")).unwrap(), b"hello");
    }

    #[test]
    fn durable_files_are_in_place_only_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = FileTransport::new(dir.path(), true).unwrap();
        let (path, fresh) = t.write_once("a@x", b"hello").unwrap();
        assert!(fresh);
        // Not under its name before it is synced: a crash now leaves only a .tmp file,
        // and the outbox entry (not yet removed) writes it again.
        assert!(!path.exists());
        t.sync().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert!(t.unsynced.is_empty());
        assert!(!t.write_once("a@x", b"again").unwrap().1);
        // Replay's transport puts files in place at once.
        let mut r = FileTransport::new(&dir.path().join("r"), false).unwrap();
        let (p, _) = r.write_once("b@x", b"now").unwrap();
        assert!(p.exists());
    }

    /// The sync itself, watched from outside with strace: each file's data is flushed
    /// before its rename, and the folder after the renames. Runs this test binary's
    /// `durable_write_for_strace` under strace; fails loudly when strace is missing.
    #[test]
    fn each_file_is_flushed_before_its_rename_and_the_folder_after() {
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let out = std::process::Command::new("strace")
            // One file per thread: no call split across lines by another thread's.
            .args([
                "-ff",
                "-qq",
                "-e",
                "trace=fdatasync,fsync,syncfs,rename,renameat,renameat2,openat",
            ])
            .arg("-o")
            .arg(&trace)
            .arg(&exe)
            .args([
                "--exact",
                "mail::transport::tests::durable_write_for_strace",
                "--ignored",
                "--test-threads=1",
            ])
            .env("CHURNWATCH_STRACE_DIR", dir.path().join("mail"))
            .output()
            .unwrap_or_else(|e| panic!("strace is needed for this test and did not start: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The writing thread's trace: the one that opened the files.
        let trace = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("trace."))
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .find(|t| t.contains(".eml.tmp"))
            .expect("a traced thread wrote the files");
        let calls: Vec<&str> = trace
            .lines()
            .filter(|l| l.contains("/mail") || l.contains("sync"))
            .map(|l| l.trim())
            .collect();
        // fd of each opened file or folder, by name.
        let fd_of = |name: &str| -> Option<String> {
            calls.iter().find_map(|l| {
                (l.starts_with("openat(") && l.contains(name) && !l.contains("ENOENT"))
                    .then(|| l.rsplit("= ").next().unwrap_or("").trim().to_string())
            })
        };
        let pos = |pred: &dyn Fn(&str) -> bool| calls.iter().position(|l| pred(l));
        let mut last_rename = 0;
        for id in ["one@x", "two@x"] {
            let fd = fd_of(&format!("{id}.eml.tmp")).expect("tmp file opened");
            // Its own fdatasync, or a syncfs of its file system after it was opened.
            let opened = pos(&|l| l.starts_with("openat(") && l.contains(&format!("{id}.eml.tmp")))
                .expect("tmp file opened");
            let synced = pos(&|l| l.contains(&format!("fdatasync({fd})")))
                .or_else(|| {
                    calls
                        .iter()
                        .skip(opened)
                        .position(|l| l.starts_with("syncfs("))
                        .map(|i| i + opened)
                })
                .unwrap_or_else(|| panic!("{id} never synced:\n{}", calls.join("\n")));
            let renamed = pos(&|l| l.contains("rename") && l.contains(&format!("{id}.eml\"")))
                .unwrap_or_else(|| panic!("{id} never renamed:\n{}", calls.join("\n")));
            assert!(synced < renamed, "{}", calls.join("\n"));
            last_rename = last_rename.max(renamed);
        }
        // The folder's fd: its last opening (the one the sync uses).
        let folder = calls
            .iter()
            .rev()
            .filter(|l| l.contains("openat(") && l.contains("/mail\""))
            .find_map(|l| Some(l.rsplit("= ").next()?.trim().to_string()))
            .expect("folder opened");
        let dir_synced = pos(&|l| l.contains(&format!("fsync({folder})"))).expect("folder synced");
        assert!(dir_synced > last_rename, "{}", calls.join("\n"));
    }

    /// The traced side of the test above (ignored unless run by it).
    #[test]
    #[ignore = "run under strace by each_file_is_flushed_before_its_rename_and_the_folder_after"]
    fn durable_write_for_strace() {
        let dir = PathBuf::from(std::env::var("CHURNWATCH_STRACE_DIR").unwrap());
        let mut t = FileTransport::new(&dir, true).unwrap();
        t.write_once("one@x", b"1").unwrap();
        t.write_once("two@x", b"2").unwrap();
        t.sync().unwrap();
    }
}
