//! The file transport (`replay`, and `run` with `delivery.transport = "file"`): each
//! email becomes `<Message-ID>.eml` in a folder, written atomically (temporary file, then
//! rename).
//!
//! lettre's own `FileTransport` names files by a random UUID; SPEC §5 wants them named by
//! the deterministic Message-ID, so this writes lettre's formatted bytes itself.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes messages as `.eml` files into one folder.
pub struct FileTransport {
    dir: PathBuf,
}

impl FileTransport {
    /// A transport writing into `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<FileTransport> {
        fs::create_dir_all(dir)?;
        Ok(FileTransport {
            dir: dir.to_path_buf(),
        })
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
    pub fn write_once(&self, message_id: &str, bytes: &[u8]) -> std::io::Result<(PathBuf, bool)> {
        let path = self.path_of(message_id);
        if path.exists() {
            return Ok((path, false));
        }
        write_atomically(&path, bytes)?;
        Ok((path, true))
    }
}

/// A temporary file, then a rename: a reader never sees half a message.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(&tmp, path)
}
