//! `[smtp]`: the relay, its security and credentials, retries and the headers' domain.

use std::path::PathBuf;

use serde::Deserialize;

use crate::engine::clock::Span;
use crate::mail::settings::{SmtpSettings, TlsMode};
use crate::problems::Problems;
use crate::secret::{self, Secret};

/// `[smtp]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// See the defaults file.
    pub host: String,
    /// See the defaults file.
    pub port: u16,
    /// See the defaults file.
    pub tls: String,
    /// See the defaults file.
    pub username: String,
    /// From the environment only (`CHURNWATCH__SMTP__PASSWORD`); never in the file.
    #[serde(default)]
    pub password: Option<String>,
    /// See the defaults file.
    pub password_file: PathBuf,
    /// See the defaults file.
    pub ca_file: PathBuf,
    /// See the defaults file.
    pub timeout: Span,
    /// See the defaults file.
    pub pool_size: u32,
    /// See the defaults file.
    pub retry_initial: Span,
    /// See the defaults file.
    pub retry_max: Span,
    /// See the defaults file.
    pub max_retry_age: Span,
    /// See the defaults file.
    pub queue_limit: usize,
    /// See the defaults file.
    pub from: String,
    /// See the defaults file.
    pub reply_to: String,
    /// See the defaults file.
    pub message_id_domain: String,
}

impl RawSmtp {
    /// Checks the section and builds the relay's settings; `smtp_used` (the transport
    /// is `smtp`) makes the host and credentials required. Problems never quote the
    /// password.
    pub fn validate(&self, smtp_used: bool, p: &mut Problems) -> SmtpSettings {
        let raw = self;
        p.when(
            raw.message_id_domain.is_empty()
                || !raw
                    .message_id_domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
            || {
                format!(
                    "smtp.message_id_domain: must be a domain name, got `{}`",
                    raw.message_id_domain
                )
            },
        );
        let tls = self.tls_mode(p);
        let port = match (raw.port, tls) {
            (0, TlsMode::None) => 25,
            (0, TlsMode::StartTls) => 587,
            (0, TlsMode::Tls) => 465,
            (n, _) => n,
        };
        let password = self.password(p);
        if smtp_used {
            p.when(raw.host.trim().is_empty(), || {
                "smtp.host: must name the relay when delivery.transport = \"smtp\"".into()
            });
            p.when(!raw.username.is_empty() && password.is_none(), || {
                "smtp.username: is set but no password is (CHURNWATCH__SMTP__PASSWORD or smtp.password_file)".into()
            });
        }
        p.when(raw.pool_size == 0, || {
            "smtp.pool_size: must be at least 1".into()
        });
        p.when(raw.queue_limit < raw.pool_size as usize, || {
            "smtp.queue_limit: must be at least smtp.pool_size".into()
        });
        if !raw.ca_file.as_os_str().is_empty() {
            if let Err(e) = std::fs::metadata(&raw.ca_file) {
                p.push(format!(
                    "smtp.ca_file: cannot read {}: {e}",
                    raw.ca_file.display()
                ));
            }
        }
        p.when(raw.timeout.0 == 0, || {
            "smtp.timeout: must be positive".into()
        });
        p.when(
            raw.retry_initial.0 == 0 || raw.retry_max.0 < raw.retry_initial.0,
            || {
                "smtp.retry_initial, smtp.retry_max: must be positive, retry_max ≥ retry_initial"
                    .into()
            },
        );
        p.when(raw.max_retry_age.0 == 0, || {
            "smtp.max_retry_age: must be positive (e.g. \"5d\")".into()
        });
        let secs = |n: u32| std::time::Duration::from_secs(u64::from(n));
        SmtpSettings {
            host: raw.host.trim().to_string(),
            port,
            tls,
            username: raw.username.clone(),
            password,
            ca_file: (!raw.ca_file.as_os_str().is_empty()).then(|| raw.ca_file.clone()),
            timeout: secs(raw.timeout.0),
            pool_size: raw.pool_size,
            retry_initial: secs(raw.retry_initial.0),
            retry_max: secs(raw.retry_max.0),
            max_retry_age: secs(raw.max_retry_age.0),
            queue_limit: raw.queue_limit,
        }
    }

    fn tls_mode(&self, p: &mut Problems) -> TlsMode {
        match self.tls.as_str() {
            "none" => TlsMode::None,
            "starttls" => TlsMode::StartTls,
            "tls" => TlsMode::Tls,
            other => {
                p.push(format!(
                    "smtp.tls: must be \"none\", \"starttls\" or \"tls\", got `{other}`"
                ));
                TlsMode::StartTls
            }
        }
    }

    /// The password from the environment or `password_file` (one of them at most).
    fn password(&self, p: &mut Problems) -> Option<Secret> {
        secret::Source {
            key: "smtp.password",
            inline: self.password.as_deref(),
            file: &self.password_file,
        }
        .read(p)
    }
}
