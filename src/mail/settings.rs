//! What the mail adapters run with: rendering and headers, the relay, the sender's
//! pacing. Plain data; `config` builds it from the file (so `mail/` never reads the
//! whole configuration).

use std::path::PathBuf;

/// Email rendering settings.
#[derive(Clone, Debug)]
pub struct MailSettings {
    /// Template folder.
    pub templates_dir: PathBuf,
    /// Fallback locale.
    pub default_locale: String,
    /// Shop name.
    pub shop_name: String,
    /// Feedback link.
    pub feedback_url: String,
    /// Unsubscribe link template (`{alert_id}` placeholder), "" for none.
    pub unsubscribe_url: String,
    /// From header.
    pub from: String,
    /// Reply-To header ("" for none).
    pub reply_to: String,
    /// Message-ID domain.
    pub message_id_domain: String,
}

pub use crate::secret::Secret;

/// How the connection to the relay is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain SMTP (a local relay on loopback or in the same pod).
    None,
    /// Plain connection upgraded with STARTTLS, which is required.
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

/// The SMTP relay (README "Email delivery (SMTP)", README "Config reference").
#[derive(Clone, Debug, PartialEq)]
pub struct SmtpSettings {
    /// Relay host name (also the name its certificate must carry).
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Connection security.
    pub tls: TlsMode,
    /// User name for AUTH ("" for none).
    pub username: String,
    /// Password for AUTH, from the environment or `password_file`.
    pub password: Option<Secret>,
    /// Extra root certificate (PEM) for a relay with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Timeout for opening a connection (with EHLO, STARTTLS, AUTH) and for each transaction.
    pub timeout: std::time::Duration,
    /// Connections kept open to the relay (and emails in flight at once).
    pub pool_size: u32,
    /// First retry delay after a transient failure …
    pub retry_initial: std::time::Duration,
    /// … doubling up to this.
    pub retry_max: std::time::Duration,
    /// Past this since its first transient failure, an email fails as `expired`.
    pub max_retry_age: std::time::Duration,
    /// Emails the sender holds at once; more wait in the outbox on disk.
    pub queue_limit: usize,
}

/// What the sender applies when it schedules an email (docs/design.md §10 Sender).
#[derive(Clone, Debug, PartialEq)]
pub struct SendSettings {
    /// Local-time window with no sends, if any.
    pub quiet_hours: Option<crate::mail::quiet_hours::QuietHours>,
    /// Time zone of customers whose own is unknown.
    pub default_timezone: jiff::tz::TimeZone,
    /// Emails per second at most, across the worker (0: no limit).
    pub rate_limit: u32,
}
