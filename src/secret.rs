//! Secrets: a value that cannot reach a log line, where each one comes from (a `*_file`
//! key or the environment, never both), and the rule `run` holds them to (README
//! "Secrets").

use std::path::Path;

use crate::problems::Problems;

/// A secret value: its Debug output is a placeholder, so it cannot reach a log line or
/// an error through `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value, for the one place that needs it (a key, an authentication).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The fewest bytes a key churnwatch itself signs or checks with may have: 32 random
/// bytes are what `openssl rand -hex 32` prints half of, and what HMAC-SHA256 can use.
pub const MIN_KEY_BYTES: usize = 32;

/// Words that mark a value as a stand-in someone forgot to replace, compared with the
/// value lowercased and stripped to letters and digits (`change-me`, `CHANGE_ME`, …).
const PLACEHOLDER_WORDS: [&str; 9] = [
    "changeme",
    "replaceme",
    "placeholder",
    "example",
    "yoursecret",
    "yourpassword",
    "secrethere",
    "passwordhere",
    "setme",
];

/// Values that are placeholders however they are written, compared the same way.
const PLACEHOLDER_VALUES: [&str; 6] = ["secret", "password", "token", "test", "todo", "default"];

/// What is wrong with a secret for `run`, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weakness {
    /// It is the value the defaults file ships (anyone with the repository knows it).
    ShippedDefault,
    /// It is a stand-in (`change-me`, `password`, one repeated character, …).
    Placeholder,
    /// It is shorter than [`MIN_KEY_BYTES`].
    TooShort,
}

impl std::fmt::Display for Weakness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Weakness::ShippedDefault => "is the default shipped with churnwatch",
            Weakness::Placeholder => "is a placeholder",
            Weakness::TooShort => "is shorter than 32 bytes",
        })
    }
}

/// Whether `value` is a stand-in rather than a secret.
pub fn is_placeholder(value: &str) -> bool {
    let folded: String = value
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    let mut chars = folded.chars();
    let one_char = chars.next().is_some_and(|c| chars.all(|d| d == c));
    folded.is_empty()
        || one_char
        || PLACEHOLDER_VALUES.contains(&folded.as_str())
        || PLACEHOLDER_WORDS.iter().any(|w| folded.contains(w))
}

/// Why `run` must not use `value`: the shipped default, a placeholder, or (for a key
/// churnwatch itself signs with, `key`) too short. Credentials issued by someone else
/// (a relay's or a cluster's password) are not held to a length: their length is not
/// the operator's to choose.
pub fn weakness(value: &str, shipped: Option<&str>, key: bool) -> Option<Weakness> {
    if shipped == Some(value) {
        Some(Weakness::ShippedDefault)
    } else if is_placeholder(value) {
        Some(Weakness::Placeholder)
    } else if key && value.len() < MIN_KEY_BYTES {
        Some(Weakness::TooShort)
    } else {
        None
    }
}

/// The environment variable that sets `key` (`smtp.password` → `CHURNWATCH__SMTP__PASSWORD`).
pub fn env_var(key: &str) -> String {
    // The SASL password is librdkafka's `sasl.password`, set through `[kafka.client]`.
    let key = match key {
        "kafka.sasl_password" => "kafka.client.sasl.password",
        other => other,
    };
    format!(
        "CHURNWATCH__{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

/// One secret as the config writes it: `inline` (the file's or the environment's value)
/// or the contents of `file`, one of them at most.
pub struct Source<'a> {
    /// The key of the inline value, as `check` names it (`smtp.password`).
    pub key: &'a str,
    /// The inline value, if any (the shipped default counts as none).
    pub inline: Option<&'a str>,
    /// The `*_file` key's path ("" for none).
    pub file: &'a Path,
}

/// A key the defaults file ships a value for (`engine.id_secret`): that value counts as
/// unset, so a `*_file` may replace it, and stays the key when nothing else is set.
pub fn read_key(key: &str, value: &str, shipped: &str, file: &Path, p: &mut Problems) -> Secret {
    Source {
        key,
        inline: Some(value).filter(|v| *v != shipped),
        file,
    }
    .read(p)
    .unwrap_or_else(|| Secret::new(value))
}

impl Source<'_> {
    /// The secret, read from its file when one is named (a trailing newline, which
    /// `echo` and editors add, is not part of it); problems never quote the value.
    pub fn read(&self, p: &mut Problems) -> Option<Secret> {
        let inline = self.inline.filter(|s| !s.is_empty());
        if self.file.as_os_str().is_empty() {
            return inline.map(Secret::new);
        }
        p.when(inline.is_some(), || {
            format!(
                "{}_file: {} is also set (in the file or {}); set only one",
                self.key,
                self.key,
                env_var(self.key)
            )
        });
        match std::fs::read_to_string(self.file) {
            Ok(s) => {
                let s = s.trim_end_matches(['\r', '\n']);
                p.when(s.is_empty(), || {
                    format!("{}_file: {} is empty", self.key, self.file.display())
                });
                Some(Secret::new(s))
            }
            Err(e) => {
                p.push(format!(
                    "{}_file: cannot read {}: {}",
                    self.key,
                    self.file.display(),
                    e
                ));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised_however_they_are_written() {
        for v in [
            "change-me",
            "CHANGE_ME",
            "change-me-to-a-long-random-string",
            "replace me with the real one",
            "password",
            "Secret",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "<your-secret>",
            "",
            "----",
        ] {
            assert!(is_placeholder(v), "{v:?} should be a placeholder");
        }
        for v in [
            "4f6b0c1e9a7d2b3c5e8f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d",
            "correct horse battery staple",
            "Tr0ub4dor&3",
        ] {
            assert!(!is_placeholder(v), "{v:?} is not a placeholder");
        }
    }

    #[test]
    fn a_key_is_refused_when_default_placeholder_or_short_a_password_only_when_default_or_placeholder(
    ) {
        let long = "4f6b0c1e9a7d2b3c5e8f0a1b2c3d4e5f";
        assert_eq!(
            weakness(long, Some(long), true),
            Some(Weakness::ShippedDefault)
        );
        assert_eq!(
            weakness("change-me", None, false),
            Some(Weakness::Placeholder)
        );
        assert_eq!(weakness(&long[..31], None, true), Some(Weakness::TooShort));
        assert_eq!(weakness(long, None, true), None);
        assert_eq!(weakness("Tr0ub4dor&3", None, false), None);
    }

    #[test]
    fn each_secret_names_the_variable_that_sets_it() {
        assert_eq!(env_var("engine.id_secret"), "CHURNWATCH__ENGINE__ID_SECRET");
        assert_eq!(
            env_var("kafka.sasl_password"),
            "CHURNWATCH__KAFKA__CLIENT__SASL__PASSWORD"
        );
    }

    #[test]
    fn a_secret_comes_from_its_file_or_inline_never_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s");
        std::fs::write(&file, "from-the-file\n").expect("write");
        let src = |inline, file| Source {
            key: "engine.id_secret",
            inline,
            file,
        };
        let mut p = Problems::new();
        let s = src(None, &file).read(&mut p);
        assert_eq!(s.as_ref().map(Secret::expose), Some("from-the-file"));
        assert!(p.is_empty());
        let s = src(Some("inline"), Path::new("")).read(&mut p);
        assert_eq!(s.as_ref().map(Secret::expose), Some("inline"));
        assert!(p.is_empty());

        let s = src(Some("inline-secret-value"), &file).read(&mut p);
        assert!(s.is_some());
        let lines = p.into_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("engine.id_secret_file: "), "{lines:?}");
        assert!(!lines[0].contains("inline-secret-value"), "{lines:?}");

        let mut p = Problems::new();
        let missing = dir.path().join("missing");
        assert!(src(None, &missing).read(&mut p).is_none());
        let lines = p.into_lines();
        assert!(lines[0].contains("cannot read"), "{lines:?}");
    }
}
