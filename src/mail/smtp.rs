//! The SMTP transport (docs/design.md §10 Sender): lettre's async pooled transport on tokio, built from
//! `[smtp]`, and how its outcomes are told apart (transient, to retry; permanent, to
//! record).

use std::time::Duration;

use anyhow::Context as _;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::settings::{SmtpSettings, TlsMode};

/// The pooled transport to the relay.
pub type Pool = AsyncSmtpTransport<Tokio1Executor>;

/// Builds the pooled transport. Nothing connects yet: the first send does.
pub fn transport(s: &SmtpSettings) -> anyhow::Result<Pool> {
    let tls = match s.tls {
        TlsMode::None => Tls::None,
        mode => {
            let mut params = TlsParameters::builder(s.host.clone());
            if let Some(ca) = &s.ca_file {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("smtp.ca_file: cannot read {}", ca.display()))?;
                let cert = Certificate::from_pem(&pem).with_context(|| {
                    format!("smtp.ca_file: {} is not a PEM certificate", ca.display())
                })?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build().context("smtp: cannot set up TLS")?;
            if mode == TlsMode::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut b = Pool::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(s.timeout))
        .pool_config(
            PoolConfig::new()
                .max_size(s.pool_size)
                .idle_timeout(Duration::from_secs(60)),
        );
    if !s.username.is_empty() {
        if let Some(pw) = &s.password {
            b = b.credentials(Credentials::new(
                s.username.clone(),
                pw.expose().to_string(),
            ));
        }
    }
    Ok(b.build())
}

/// Why a send did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 4xx reply, connection error, timeout: try again later.
    Transient(String),
    /// 5xx reply: the server refused this email for good.
    Permanent(String),
}

/// Reply codes that refuse churnwatch's authentication, not the email (RFC 4954): a
/// wrong password must not fail every email for good, so these are retried like an
/// outage until the operator fixes the credentials.
const AUTH_CODES: [&str; 4] = ["530", "534", "535", "538"];

/// Sorts a lettre error. Only a 5xx reply about the email is permanent: everything else
/// (4xx, refused or dropped connections, TLS handshakes, timeouts, refused
/// authentication) may pass, so it is retried.
pub fn classify(e: &lettre::transport::smtp::Error) -> Failure {
    let text = describe(e);
    let auth = e
        .status()
        .is_some_and(|c| AUTH_CODES.contains(&c.to_string().as_str()));
    if auth {
        tracing::error!(reply = %text, "the SMTP relay refused authentication: check smtp.username and the password; emails wait in the outbox");
    }
    if e.is_permanent() && !auth {
        Failure::Permanent(text)
    } else {
        Failure::Transient(text)
    }
}

/// The error with its causes, one line (lettre's own text never holds credentials).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        // lettre's messages often repeat their cause already.
        let more = inner.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        src = inner.source();
    }
    crate::mail::template::one_line(&s)
}

/// The server's reply as one line: `250 2.0.0 Ok: queued as …`.
pub fn reply_text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    crate::mail::template::one_line(&format!("{} {}", r.code(), lines.join(" ")))
}

/// The message with its `Date` header set to `at` (docs/design.md §10 Sender: the send time over SMTP; the
/// stored message carries the decision's time).
pub fn with_date(message: &[u8], at: jiff::Timestamp) -> Vec<u8> {
    let head_end = find(message, b"\r\n\r\n").unwrap_or(message.len());
    let head = &message[..head_end];
    let start = if head.starts_with(b"Date: ") {
        Some(0)
    } else {
        find(head, b"\r\nDate: ").map(|i| i + 2)
    };
    let Some(start) = start else {
        return message.to_vec();
    };
    let end = find(&message[start..], b"\r\n").map_or(message.len(), |i| start + i);
    let date =
        jiff::fmt::rfc2822::to_string(&at.to_zoned(jiff::tz::TimeZone::UTC)).unwrap_or_default();
    let mut out = Vec::with_capacity(message.len() + 8);
    out.extend_from_slice(&message[..start]);
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(&message[end..]);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_replaced_in_the_header_only() {
        let msg = b"From: a@b\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nSubject: x\r\n\r\nDate: body stays\r\n";
        let at: jiff::Timestamp = "2026-12-01T09:30:00Z".parse().unwrap();
        let out = String::from_utf8(with_date(msg, at)).unwrap();
        assert!(out.contains("\r\nDate: Tue, 1 Dec 2026 09:30:00 +0000\r\nSubject: x"));
        assert!(out.ends_with("\r\n\r\nDate: body stays\r\n"));
        assert_eq!(out.matches("Date: ").count(), 2);
    }
}
