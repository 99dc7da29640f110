//! The file transport of `replay`: each email becomes `<Message-ID>.eml` in the output
//! folder, written atomically (temporary file, then rename).
//!
//! lettre's own `FileTransport` names files by a random UUID; SPEC §5 wants them named by
//! the deterministic Message-ID, so this writes lettre's formatted bytes itself.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lettre::Message;

/// Writes messages as `.eml` files into one folder.
pub struct FileOutbox {
    dir: PathBuf,
}

impl FileOutbox {
    /// A transport writing into `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<FileOutbox> {
        fs::create_dir_all(dir)?;
        Ok(FileOutbox {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes `msg` as `<message_id>.eml`; returns the file's path.
    pub fn write(&self, message_id: &str, msg: &Message) -> std::io::Result<PathBuf> {
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
        let path = self.dir.join(format!("{safe}.eml"));
        let tmp = self.dir.join(format!(".{safe}.eml.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&msg.formatted())?;
        drop(f);
        fs::rename(&tmp, &path)?;
        Ok(path)
    }
}
