//! Configuration problems, collected rather than returned one at a time, so that
//! `check` reports every problem of a file at once (each section's validation pushes
//! into the same collector).

/// The problems found so far, each one line `key: what is wrong`.
#[derive(Debug, Default)]
pub struct Problems {
    lines: Vec<String>,
}

impl Problems {
    /// An empty collector.
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records one problem, written `key: what is wrong`.
    pub fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// Records `line` when `bad` (the condition is the problem, written as the check
    /// reads: `p.when(n == 0, …)`).
    pub fn when(&mut self, bad: bool, line: impl FnOnce() -> String) {
        if bad {
            self.lines.push(line());
        }
    }

    /// A template name must be a plain file name (it names a folder of `templates/`).
    pub fn template_name(&mut self, key: &str, name: &str) {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        self.when(!ok, || {
            format!("{key}: template name `{name}` must be letters, digits, '_' or '-'")
        });
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The problems, in the order they were found.
    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}
