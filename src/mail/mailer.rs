//! Turns an alert decided as `email` into a message and hands it to the file transport,
//! recording one send result per email (`sends.jsonl`). Shared by `replay` and `run`.

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

#[derive(Serialize)]
struct SendLine<'a> {
    alert_id: &'a str,
    message_id: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    locale: &'a str,
}

/// Renders emails and writes them as `.eml` files, with a send record for each.
pub struct FileMailer<'a> {
    mail: &'a MailSettings,
    templates: &'a Templates,
    transport: FileTransport,
    sends: BufWriter<File>,
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
        let path = dir.join("sends.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(FileMailer {
            mail,
            templates,
            transport,
            sends: BufWriter::new(file),
            written: 0,
            already_written: 0,
            failed: 0,
        })
    }

    /// Renders the alert's email (or says why it cannot be built) and sets the locale
    /// actually used. Pure: nothing is written yet.
    pub fn render(&self, alert: &mut Alert) -> Email {
        let t = self.templates;
        let message_id = alert.message_id(&self.mail.message_id_domain);
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
            .and_then(|r| message::build(alert, &r, self.mail).map_err(|e| e.0))
            .map(|msg| msg.formatted());
        Email {
            message_id,
            alert_id: alert.alert_id.clone(),
            customer_id: alert.customer_id.to_string(),
            locale: alert.locale.clone(),
            message,
        }
    }

    /// Hands a rendered email to the file transport and records the result. Idempotent
    /// by Message-ID: a file already there (written before a crash) is not written again
    /// and is recorded as `already_written`. Only an I/O error is returned.
    pub fn write(&mut self, email: &Email) -> anyhow::Result<()> {
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
        let line = SendLine {
            alert_id: &email.alert_id,
            message_id: format!("<{}>", email.message_id),
            status,
            file,
            reason,
            locale: &email.locale,
        };
        serde_json::to_writer(&mut self.sends, &line)?;
        self.sends.write_all(b"\n")?;
        Ok(())
    }

    /// Renders and writes the alert's email at once (replay: no outbox in between).
    pub fn deliver(&mut self, alert: &mut Alert) -> anyhow::Result<()> {
        let email = self.render(alert);
        self.write(&email)
    }

    /// Flushes the send records.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.sends.flush()
    }
}
