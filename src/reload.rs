//! Hot reload (docs/design.md §14 Hot reload): SIGHUP or a change under the config file's folder or the
//! templates folder asks the worker to read its config again. The request waits until
//! the files have been quiet for a moment, so an editor's or a ConfigMap's several
//! writes become one reload, and a half-written file is not read.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

/// How long the files must be quiet before a requested reload happens.
pub const SETTLE: Duration = Duration::from_millis(300);

/// A pending reload request, shared by the signal handler, the file watcher and the
/// worker loop.
#[derive(Debug, Default)]
pub struct Reload {
    requested: Mutex<Option<Instant>>,
}

impl Reload {
    /// Asks for a reload (again: the quiet period starts over).
    pub fn request(&self) {
        *self
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Whether a reload is due now; taking it clears the request.
    pub fn take_due(&self) -> bool {
        let mut r = self
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *r {
            Some(t) if t.elapsed() >= SETTLE => {
                *r = None;
                true
            }
            _ => false,
        }
    }
}

/// Watches the folder of `config` (Kubernetes swaps a ConfigMap's files through a
/// symlink in that folder, so the file itself is not enough) and `templates`
/// recursively; any change requests a reload. The watcher stops when dropped.
pub fn watch(
    config: Option<&Path>,
    templates: &Path,
    reload: std::sync::Arc<Reload>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads alone (access events) change nothing.
        if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            reload.request();
        }
    })?;
    if let Some(c) = config {
        let folder = c
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        w.watch(&folder, RecursiveMode::NonRecursive)?;
    }
    w.watch(templates, RecursiveMode::Recursive)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_due_once_after_the_files_settle() {
        let r = Reload::default();
        assert!(!r.take_due());
        r.request();
        assert!(!r.take_due(), "not before the quiet period");
        std::thread::sleep(SETTLE + Duration::from_millis(20));
        assert!(r.take_due());
        assert!(!r.take_due(), "taken once");
    }
}
