//! Turns an alert decided as `email` into a message, and records what became of each
//! email in `sends.jsonl`; the file mailer hands messages to the file transport. Shared
//! by `replay` and `run`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::alert::Alert;
use crate::config::MailSettings;
use crate::mail::message;
use crate::mail::template::Templates;
use crate::mail::transport::FileTransport;
use crate::outbox::Email;

/// One line of `sends.jsonl`: what became of an email (SPEC §5 send results).
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

/// The `sends.jsonl` file of send results.
pub struct SendLog {
    out: BufWriter<File>,
}

impl SendLog {
    /// Opens `path`; `append` keeps earlier records (service mode), else it starts empty.
    pub fn open(path: &Path, append: bool) -> anyhow::Result<SendLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(SendLog {
            out: BufWriter::new(file),
        })
    }

    /// Appends one record.
    pub fn record(&mut self, line: &SendLine<'_>) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }

    /// Writes buffered records out.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
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
    /// A mailer writing into `dir`; `append` keeps earlier send records (service mode).
    pub fn new(
        mail: &'a MailSettings,
        templates: &'a Templates,
        dir: &Path,
        append: bool,
    ) -> anyhow::Result<FileMailer<'a>> {
        let transport =
            FileTransport::new(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let sends = SendLog::open(&dir.join("sends.jsonl"), append)?;
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

    /// Hands a rendered email to the file transport and records the result. Idempotent
    /// by Message-ID: a file already there (written before a crash) is not written again
    /// and is recorded as `already_written`. Returns the status recorded (`written`,
    /// `already_written`, `failed`); only an I/O error is an error.
    pub fn write(&mut self, email: &Email) -> anyhow::Result<&'static str> {
        let (status, file, reason) = match &email.message {
            Ok(bytes) => {
                let (path, fresh) = self.transport.write_once(&email.message_id, bytes)?;
                let status = if fresh {
                    self.written += 1;
                    "written"
                } else {
                    self.already_written += 1;
                    "already_written"
                };
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                (status, name, None)
            }
            Err(reason) => {
                self.failed += 1;
                tracing::warn!(alert_id = %email.alert_id, %reason, "email not written");
                ("failed", None, Some(reason.clone()))
            }
        };
        self.sends.record(&SendLine {
            alert_id: &email.alert_id,
            message_id: format!("<{}>", email.message_id),
            status,
            file,
            reason,
            locale: &email.locale,
            ..SendLine::default()
        })?;
        Ok(status)
    }

    /// Renders and writes the alert's email at once (replay: no outbox in between).
    pub fn deliver(&mut self, alert: &mut Alert) -> anyhow::Result<()> {
        let email = self.render(alert);
        self.write(&email).map(|_| ())
    }

    /// Flushes the send records.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.sends.flush()
    }
}
