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
use crate::mail::outbox::FileOutbox;
use crate::mail::template::Templates;

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
    outbox: FileOutbox,
    sends: BufWriter<File>,
    /// Emails written.
    pub written: u64,
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
        let outbox =
            FileOutbox::new(dir).with_context(|| format!("cannot create {}", dir.display()))?;
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
            outbox,
            sends: BufWriter::new(file),
            written: 0,
            failed: 0,
        })
    }

    /// Renders and writes the alert's email; sets the locale actually used. An email
    /// that cannot be built is recorded as failed (an I/O error is returned).
    pub fn deliver(&mut self, alert: &mut Alert) -> anyhow::Result<()> {
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
        let built = alert
            .mail
            .as_deref()
            .ok_or_else(|| "alert carries no recipient".to_string())
            .and_then(|m| t.render(&alert.template, m, &alert.alert_id))
            .and_then(|r| message::build(alert, &r, self.mail).map_err(|e| e.0));
        let line = match built {
            Ok(msg) => {
                let path = self.outbox.write(&message_id, &msg)?;
                self.written += 1;
                SendLine {
                    alert_id: &alert.alert_id,
                    message_id: format!("<{message_id}>"),
                    status: "written",
                    file: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    reason: None,
                    locale: &alert.locale,
                }
            }
            Err(reason) => {
                self.failed += 1;
                tracing::warn!(alert_id = %alert.alert_id, %reason, "email not written");
                SendLine {
                    alert_id: &alert.alert_id,
                    message_id: format!("<{message_id}>"),
                    status: "failed",
                    file: None,
                    reason: Some(reason),
                    locale: &alert.locale,
                }
            }
        };
        serde_json::to_writer(&mut self.sends, &line)?;
        self.sends.write_all(b"\n")?;
        Ok(())
    }

    /// Flushes the send records.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.sends.flush()
    }
}
