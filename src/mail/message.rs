//! Building the MIME message of an alert: headers (deterministic Message-ID, Date,
//! List-Unsubscribe) and a multipart/alternative body, so the same alert always gives
//! the same bytes.

use std::time::{Duration, UNIX_EPOCH};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::settings::MailSettings;
use super::template::{one_line, Rendered};
use crate::alert::Alert;

/// Why a message could not be built (a permanent failure for this alert).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// Longest display name in `To:`, in characters: with the address, the header stays
/// well within RFC 5322's 998 bytes per line.
const MAX_DISPLAY_NAME: usize = 128;

/// Longest subject, in characters (lettre folds encoded subjects; a plain ASCII one
/// must stay within a line on its own).
const MAX_SUBJECT: usize = 400;

fn cut(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s,
    }
}

fn mailbox(what: &str, name: &str, addr: &str) -> Result<Mailbox, BuildError> {
    let address = addr
        .trim()
        .parse()
        .map_err(|e| BuildError(format!("{what} address is not valid: {e}")))?;
    let name = cut(one_line(name), MAX_DISPLAY_NAME);
    Ok(Mailbox::new((!name.is_empty()).then_some(name), address))
}

/// The `To:` header of a display name that contains an encoded word (`=?…?=`): lettre
/// would put it in quotes, which some mail clients decode anyway, so a customer could
/// name themselves `=?utf-8?b?…?=` and be shown something else. Encoded as RFC 2047
/// words itself, it can only ever be shown as typed.
fn encoded_to(to: &Mailbox) -> Option<HeaderValue> {
    let name = to.name.as_deref().filter(|n| n.contains("=?"))?;
    let mut encoded = String::new();
    {
        let mut w = email_encoding::headers::writer::EmailWriter::new(&mut encoded, 4, 0, false);
        email_encoding::headers::rfc2047::encode(name, &mut w).ok()?;
    }
    encoded.push_str(&format!(" <{}>", to.email));
    Some(HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str("To"),
        format!("{name} <{}>", to.email),
        encoded,
    ))
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
    let envelope = lettre::address::Envelope::new(Some(from.email.clone()), vec![to.email.clone()])
        .map_err(|e| BuildError(format!("cannot build the envelope: {e}")))?;
    let raw_to = encoded_to(&to);
    let mut b = Message::builder()
        .from(from)
        .to(to)
        .envelope(envelope)
        .subject(cut(one_line(&rendered.subject), MAX_SUBJECT))
        .message_id(Some(format!(
            "<{}>",
            alert.message_id(&s.message_id_domain)
        )))
        .date(date);
    if let Some(to) = raw_to {
        b = b.raw_header(to);
    }
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
