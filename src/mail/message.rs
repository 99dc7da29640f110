//! Building the MIME message of an alert: headers (deterministic Message-ID, Date,
//! List-Unsubscribe) and a multipart/alternative body, so the same alert always gives
//! the same bytes.

use std::time::{Duration, UNIX_EPOCH};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::template::{one_line, Rendered};
use crate::alert::Alert;
use crate::config::MailSettings;

/// Why a message could not be built (a permanent failure for this alert).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

fn mailbox(what: &str, name: &str, addr: &str) -> Result<Mailbox, BuildError> {
    let address = addr
        .trim()
        .parse()
        .map_err(|e| BuildError(format!("{what} address is not valid: {e}")))?;
    let name = one_line(name);
    Ok(Mailbox::new((!name.is_empty()).then_some(name), address))
}

/// Builds the email for `alert` (whose decision is `Email`) from its rendered parts.
pub fn build(alert: &Alert, rendered: &Rendered, s: &MailSettings) -> Result<Message, BuildError> {
    let m = alert
        .mail
        .as_deref()
        .ok_or_else(|| BuildError("alert carries no recipient".into()))?;
    let from: Mailbox = s
        .from
        .parse()
        .map_err(|e| BuildError(format!("smtp.from is not a valid mailbox: {e}")))?;
    let to = mailbox("recipient", &m.name, &m.email)?;
    let date = UNIX_EPOCH + Duration::from_secs(alert.at.unix().max(0) as u64);
    let mut b = Message::builder()
        .from(from)
        .to(to)
        .subject(one_line(&rendered.subject))
        .message_id(Some(format!(
            "<{}>",
            alert.message_id(&s.message_id_domain)
        )))
        .date(date);
    if !s.reply_to.is_empty() {
        let reply_to: Mailbox = s
            .reply_to
            .parse()
            .map_err(|e| BuildError(format!("smtp.reply_to is not a valid mailbox: {e}")))?;
        b = b.reply_to(reply_to);
    }
    if !s.unsubscribe_url.is_empty() {
        let url = one_line(&s.unsubscribe_url.replace("{alert_id}", &alert.alert_id));
        b = b
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_string(),
            ));
    }
    let body = MultiPart::alternative()
        .boundary(format!("churnwatch-{}", alert.alert_id))
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(rendered.text.clone()),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(rendered.html.clone()),
        );
    b.multipart(body)
        .map_err(|e| BuildError(format!("cannot build the message: {e}")))
}
