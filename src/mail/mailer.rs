//! Turns an alert decided as `email` into a message, and records what became of each
//! email in `sends.jsonl`; the file mailer hands messages to the file transport. Shared
//! by `replay` and `run`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::settings::MailSettings;
use crate::alert::Alert;
use crate::disk::PathError;
use crate::mail::message;
use crate::mail::template::Templates;
use crate::mail::transport::FileTransport;
use crate::outbox::Email;

/// One line of `sends.jsonl`: what became of an email (README "Email delivery (SMTP)" send results).
#[derive(Serialize, Default)]
pub struct SendLine<'a> {
    /// When it was recorded (RFC 3339, UTC; absent in replay, whose clock is event time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The alert.
    pub alert_id: &'a str,
    /// `<Message-ID>`.
    pub message_id: String,
    /// `written`, `already_written`, `sent`, `deferred`, `retrying`, `failed`, `suppressed`.
    pub status: &'static str,
    /// The `.eml` file (file transport).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The server's reply or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Deferred or retried until (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Transient failures so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The locale it was rendered in.
    pub locale: &'a str,
}

/// The `sends.jsonl` file of send results, rotated to `sends.jsonl.1` (one old file
/// kept) once it would pass its size bound, so it cannot fill the volume it is on.
pub struct SendLog {
    out: BufWriter<File>,
    path: PathBuf,
    /// Bytes in the current file (buffered ones included).
    size: u64,
    /// Rotate before a record would take the file past this.
    max_bytes: u64,
}

impl SendLog {
    /// Opens `path`; `append` keeps earlier records (service mode), else it starts empty.
    /// `max_bytes` bounds the file (`u64::MAX`: never rotated, as in replay).
    pub fn open(path: &Path, append: bool, max_bytes: u64) -> anyhow::Result<SendLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = Self::open_file(path, append)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(SendLog {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            size,
            max_bytes,
        })
    }

    fn open_file(path: &Path, append: bool) -> Result<File, PathError> {
        OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|source| PathError {
                path: path.to_path_buf(),
                source,
            })
    }

    fn at(&self, source: std::io::Error) -> PathError {
        PathError {
            path: self.path.clone(),
            source,
        }
    }

    /// The rotated file: `sends.jsonl.1`.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    /// Appends one record, rotating first when it would pass the bound.
    pub fn record(&mut self, line: &SendLine<'_>) -> Result<(), PathError> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| self.at(e.into()))?;
        bytes.push(b'\n');
        if self.size > 0 && self.size.saturating_add(bytes.len() as u64) > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&bytes).map_err(|e| self.at(e))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Moves the current file to `sends.jsonl.1` (replacing the older one) and starts
    /// an empty one.
    fn rotate(&mut self) -> Result<(), PathError> {
        self.out.flush().map_err(|e| self.at(e))?;
        std::fs::rename(&self.path, Self::rotated_path(&self.path)).map_err(|e| self.at(e))?;
        self.out = BufWriter::new(Self::open_file(&self.path, true)?);
        self.size = 0;
        Ok(())
    }

    /// Writes buffered records out.
    pub fn flush(&mut self) -> Result<(), PathError> {
        self.out.flush().map_err(|e| self.at(e))
    }
}

/// Renders the alert's email (or says why it cannot be built) and sets the locale
/// actually used on the alert. Pure: nothing is written.
pub fn render(mail: &MailSettings, t: &Templates, alert: &mut Alert) -> Email {
    let message_id = alert.message_id(&mail.message_id_domain);
    let requested = alert
        .mail
        .as_ref()
        .map(|m| m.locale.clone())
        .unwrap_or_default();
    if let Some(l) = t.resolve_locale(&alert.template, &requested) {
        alert.locale = l;
    }
    let message = alert
        .mail
        .as_deref()
        .ok_or_else(|| "alert carries no recipient".to_string())
        .and_then(|m| t.render(&alert.template, m, &alert.alert_id))
        .and_then(|r| message::build(alert, &r, mail).map_err(|e| e.0))
        .map(|msg| msg.formatted());
    let (to, timezone) = alert
        .mail
        .as_deref()
        .map(|m| (m.email.trim().to_string(), m.timezone.clone()))
        .unwrap_or_default();
    Email {
        message_id,
        alert_id: alert.alert_id.clone(),
        customer_id: alert.customer_id.to_string(),
        locale: alert.locale.clone(),
        to,
        timezone,
        message,
    }
}

/// What the file transport did with one email, for its `sends.jsonl` line.
#[derive(Clone, Debug)]
pub struct Written {
    /// `Written`, `AlreadyWritten` or `Failed`.
    pub outcome: super::EmailOutcome,
    /// The `.eml` file name.
    pub file: Option<String>,
    /// Why it could not be built.
    pub reason: Option<String>,
}

/// Renders emails and writes them as `.eml` files, with a send record for each.
pub struct FileMailer<'a> {
    mail: &'a MailSettings,
    templates: &'a Templates,
    transport: FileTransport,
    sends: SendLog,
    /// Emails written.
    pub written: u64,
    /// Emails found already written (handed over again after a crash).
    pub already_written: u64,
    /// Emails that could not be built (bad address, template error).
    pub failed: u64,
}

impl<'a> FileMailer<'a> {
    /// A mailer writing into `dir`. Service mode (`durable`) keeps earlier send records,
    /// bounds `sends.jsonl` by `max_log_bytes` and syncs each `.eml` before its outbox
    /// entry may be removed; replay starts both afresh and syncs nothing.
    pub fn new(
        mail: &'a MailSettings,
        templates: &'a Templates,
        dir: &Path,
        durable: bool,
        max_log_bytes: u64,
    ) -> anyhow::Result<FileMailer<'a>> {
        let transport = FileTransport::new(dir, durable)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let sends = SendLog::open(&dir.join("sends.jsonl"), durable, max_log_bytes)?;
        Ok(FileMailer {
            mail,
            templates,
            transport,
            sends,
            written: 0,
            already_written: 0,
            failed: 0,
        })
    }

    /// Renders the alert's email; see [`render`].
    pub fn render(&self, alert: &mut Alert) -> Email {
        render(self.mail, self.templates, alert)
    }

    /// Hands a rendered email to the file transport. Idempotent by Message-ID: a file
    /// already there (written before a crash) is not written again (`already_written`).
    /// Only an I/O error is an error. In service mode the file is durable only after
    /// [`FileMailer::sync`]; record the result with [`FileMailer::log`] after that.
    pub fn write(&mut self, email: &Email) -> anyhow::Result<Written> {
        Ok(match &email.message {
            Ok(bytes) => {
                let (path, fresh) = self
                    .transport
                    .write_once(&email.message_id, bytes)
                    .map_err(|source| PathError {
                        path: self.transport.path_of(&email.message_id),
                        source,
                    })?;
                let outcome = if fresh {
                    self.written += 1;
                    super::EmailOutcome::Written
                } else {
                    self.already_written += 1;
                    super::EmailOutcome::AlreadyWritten
                };
                let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
                Written {
                    outcome,
                    file,
                    reason: None,
                }
            }
            Err(reason) => {
                self.failed += 1;
                tracing::warn!(alert_id = %email.alert_id, %reason, "email not written");
                Written {
                    outcome: super::EmailOutcome::Failed,
                    file: None,
                    reason: Some(reason.clone()),
                }
            }
        })
    }

    /// Makes every `.eml` written since the last call durable (each file, then the
    /// folder), so the outbox entries behind them may be removed.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.transport.sync().map_err(|source| {
            PathError {
                path: self.transport.dir().to_path_buf(),
                source,
            }
            .into()
        })
    }

    /// Records what became of an email in `sends.jsonl`.
    pub fn log(&mut self, email: &Email, w: &Written) -> Result<(), PathError> {
        self.sends.record(&SendLine {
            alert_id: &email.alert_id,
            message_id: format!("<{}>", email.message_id),
            status: w.outcome.label(),
            file: w.file.clone(),
            reason: w.reason.clone(),
            locale: &email.locale,
            ..SendLine::default()
        })
    }

    /// Renders and writes the alert's email at once (replay: no outbox in between).
    pub fn deliver(&mut self, alert: &mut Alert) -> anyhow::Result<()> {
        let email = self.render(alert);
        let w = self.write(&email)?;
        self.sync()?;
        self.log(&email, &w)?;
        Ok(())
    }

    /// Flushes the send records.
    pub fn flush(&mut self) -> Result<(), PathError> {
        self.sends.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> SendLine<'static> {
        SendLine {
            alert_id: "a",
            message_id: format!("<{n:08}@x>"),
            status: "sent",
            locale: "en",
            ..SendLine::default()
        }
    }

    fn ids(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["message_id"].to_string()
            })
            .collect()
    }

    #[test]
    fn the_send_log_rotates_before_passing_its_bound_and_keeps_the_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sends.jsonl");
        let max = 4096;
        let mut log = SendLog::open(&path, true, max).unwrap();
        let n = 200; // about 15 KB of records: several rotations
        for i in 0..n {
            log.record(&line(i)).unwrap();
            log.flush().unwrap();
            let size = std::fs::metadata(&path).unwrap().len();
            assert!(size <= max, "sends.jsonl is {size} bytes after record {i}");
        }
        let old = SendLog::rotated_path(&path);
        assert!(std::fs::metadata(&old).unwrap().len() <= max);
        // The newest records, in order, across the rotated and the current file.
        let mut all = ids(&old);
        all.extend(ids(&path));
        let want: Vec<String> = (n - all.len()..n)
            .map(|i| format!("\"<{i:08}@x>\""))
            .collect();
        assert_eq!(all, want);
        assert!(all.len() > 40, "{}", all.len());
        // Reopened (a restart), it counts what is there and keeps the bound.
        drop(log);
        let mut log = SendLog::open(&path, true, max).unwrap();
        for i in n..n + 30 {
            log.record(&line(i)).unwrap();
        }
        log.flush().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= max);
    }
}
