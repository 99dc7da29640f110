//! The SMTP transport (docs/design.md §10 Sender): a small pool of lettre SMTP
//! connections on tokio, built from `[smtp]`, and how its outcomes are told apart
//! (transient, to retry; permanent, to record).
//!
//! The pool is churnwatch's own because lettre 0.11.23 never sets `TCP_NODELAY`: it
//! writes a message and its final `.` in two writes, and Nagle's algorithm holds the
//! second until the relay's delayed ACK, about 40 ms per email and connection. So the
//! pool opens the TCP connection itself, with `TCP_NODELAY`, and hands it to lettre's
//! `AsyncSmtpConnection` (greeting, EHLO, STARTTLS, AUTH and the transaction stay
//! lettre's). Implicit TLS (`smtp.tls = "tls"`) is connected by lettre, which must do
//! the TLS handshake before the greeting, so it keeps the stall.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use super::settings::{SmtpSettings, TlsMode};

/// A connection unused for longer than this is closed instead of reused (relays drop
/// idle clients; lettre's pool used the same minute).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection idle for longer than this is checked with NOOP before it is reused:
/// one used a moment ago is known to work, and a check per email would cost a round
/// trip each.
const CHECK_AFTER: Duration = Duration::from_secs(2);

/// The relay's connections: up to `smtp.pool_size` kept open between sends (the
/// sender never runs more sends at once than that).
pub struct Pool {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    timeout: Duration,
    max_idle: usize,
    hello: ClientId,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// How a connection is secured (`smtp.tls`), with its TLS parameters.
enum Security {
    /// Plain SMTP.
    Plain,
    /// Plain, then STARTTLS, which the relay must offer.
    StartTls(TlsParameters),
    /// TLS from the first byte.
    Implicit(TlsParameters),
}

/// Builds the pool. Nothing connects yet: the first send does.
pub fn transport(s: &SmtpSettings) -> anyhow::Result<Pool> {
    let security = match s.tls {
        TlsMode::None => Security::Plain,
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
                Security::Implicit(params)
            } else {
                Security::StartTls(params)
            }
        }
    };
    let credentials = match (&s.password, s.username.is_empty()) {
        (Some(pw), false) => Some(Credentials::new(
            s.username.clone(),
            pw.expose().to_string(),
        )),
        _ => None,
    };
    Ok(Pool {
        host: s.host.clone(),
        port: s.port,
        security,
        credentials,
        timeout: s.timeout,
        max_idle: s.pool_size as usize,
        hello: ClientId::default(),
        idle: Mutex::new(Vec::new()),
    })
}

impl Pool {
    /// Sends `message` in one SMTP transaction on a pooled connection.
    pub async fn send_raw(&self, envelope: &Envelope, message: &[u8]) -> Result<Response, Failure> {
        let mut conn = self.checkout().await?;
        let sent = tokio::time::timeout(self.timeout, conn.send(envelope, message)).await;
        match sent {
            Ok(Ok(resp)) => {
                self.give_back(conn);
                Ok(resp)
            }
            Ok(Err(e)) => {
                // A refused transaction leaves the connection usable; lettre marks it
                // broken when it is not.
                self.give_back(conn);
                Err(classify(&e))
            }
            Err(_) => Err(Failure::Transient(format!(
                "no answer from the relay within {}s",
                self.timeout.as_secs()
            ))),
        }
    }

    /// Whether the relay answers NOOP, on a connection of its own: the check runs beside
    /// the first sends, which must not lose their pooled connection to it.
    pub async fn test_connection(&self) -> Result<bool, Failure> {
        let mut conn = self.connect().await?;
        Ok(tokio::time::timeout(self.timeout, conn.test_connected()).await == Ok(true))
    }

    /// An open connection: an idle one that still works, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, Failure> {
        loop {
            let next = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            let Some((mut conn, since)) = next else {
                return self.connect().await;
            };
            // A connection given up is dropped, not QUIT: the relay may be gone, and a
            // QUIT could wait for an answer that never comes.
            let idle = since.elapsed();
            if idle > IDLE_TIMEOUT || conn.has_broken() {
                continue;
            }
            if idle > CHECK_AFTER {
                let check = tokio::time::timeout(self.timeout, conn.test_connected()).await;
                if check != Ok(true) {
                    continue;
                }
            }
            return Ok(conn);
        }
    }

    fn give_back(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push((conn, Instant::now()));
            }
        }
    }

    /// A new connection: TCP with `TCP_NODELAY` (or lettre's own for implicit TLS),
    /// greeting and EHLO, STARTTLS when configured, AUTH when credentials are set.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let timeout = self.timeout;
        let transient = |what: &str, e: &dyn std::error::Error| {
            Failure::Transient(format!(
                "{what} {}:{}: {}",
                self.host,
                self.port,
                describe(e)
            ))
        };
        let opened = async {
            let mut conn = match &self.security {
                Security::Implicit(params) => AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(timeout),
                    &self.hello,
                    Some(params.clone()),
                    None,
                )
                .await
                .map_err(|e| classify(&e))?,
                _ => {
                    let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                        .await
                        .map_err(|e| transient("cannot connect to", &e))?;
                    tcp.set_nodelay(true)
                        .map_err(|e| transient("cannot set TCP_NODELAY on", &e))?;
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                        .await
                        .map_err(|e| classify(&e))?
                }
            };
            if let Security::StartTls(params) = &self.security {
                if !conn.can_starttls() {
                    return Err(Failure::Transient(
                        "the relay does not offer STARTTLS, which smtp.tls = \"starttls\" requires"
                            .into(),
                    ));
                }
                conn.starttls(params.clone(), &self.hello)
                    .await
                    .map_err(|e| classify(&e))?;
            }
            if let Some(c) = &self.credentials {
                conn.auth(DEFAULT_MECHANISMS, c)
                    .await
                    .map_err(|e| classify(&e))?;
            }
            Ok(conn)
        };
        match tokio::time::timeout(timeout, opened).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Transient(format!(
                "no connection to {}:{} within {}s",
                self.host,
                self.port,
                timeout.as_secs()
            ))),
        }
    }
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
