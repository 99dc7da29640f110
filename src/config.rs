//! Configuration: the serde layer (defaults file, operator file, environment) and the
//! validation step that turns it into settings the rest of the code can trust.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::clock::{parse_duration, Secs, DAY};
use crate::engine::retention::MAX_PERIOD_DAYS;
use crate::engine::rule::Rule;
use crate::engine::settings::{
    DeliverySettings, FrequencyDropSettings, LoyalSettings, RiskSettings, Settings, Step,
    SupportSettings, ThankYouSettings, WelcomeBackSettings, WinbackMode, WinbackSettings, BUCKETS,
    BUCKET_SECS, MAX_CAP,
};

/// The defaults, embedded so `replay` runs with no file at hand.
pub const DEFAULT_TOML: &str = include_str!("../config/churnwatch.toml");

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "CHURNWATCH_CONFIG";

/// Default config path.
pub const DEFAULT_PATH: &str = "config/churnwatch.toml";

/// A configuration problem, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error("{0}")]
    Load(String),
    /// A key is unknown or has the wrong type.
    #[error("{key}: {message}")]
    Key {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Several problems at once (one per line).
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A duration written humanly in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub Secs);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration for the service's own timing (sub-second allowed: `"500ms"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait(pub std::time::Duration);

impl<'de> Deserialize<'de> for Wait {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Wait).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration like \"500ms\" or \"30s\": {e}"
            ))
        })
    }
}

/// A librdkafka property value as written in TOML or the environment.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ClientValue {
    /// A nested table: its keys are joined to the parent's with `.`.
    Table(std::collections::BTreeMap<String, ClientValue>),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `wall` or `event`.
    pub clock: String,
    /// How long `run` may take to finish in-flight work after SIGTERM.
    pub shutdown_grace: Wait,
    /// `[kafka]`
    pub kafka: RawKafka,
    /// `[state]`
    pub state: RawState,
    /// `[engine]`
    pub engine: RawEngine,
    /// `[risk]`
    pub risk: RawRisk,
    /// `[templates]`
    pub templates: RawTemplates,
    /// `[smtp]`
    pub smtp: RawSmtp,
    /// `[admin]`
    pub admin: RawAdmin,
    /// `[delivery]`
    pub delivery: RawDelivery,
    /// `[loyal]`
    pub loyal: RawLoyal,
    /// `[rules.*]`
    pub rules: RawRules,
    /// `[metrics]`
    pub metrics: RawMetrics,
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// See the defaults file.
    pub crr_period: Duration,
}

/// `[kafka]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// See the defaults file.
    pub bootstrap_servers: String,
    /// See the defaults file.
    pub group_id: String,
    /// See the defaults file.
    pub topics: Vec<String>,
    /// See the defaults file.
    pub dlq_topic: String,
    /// See the defaults file.
    pub alerts_topic: String,
    /// See the defaults file.
    pub max_task_idle: Wait,
    /// See the defaults file.
    pub commit_interval: Wait,
    /// See the defaults file.
    pub max_batch: usize,
    /// See the defaults file.
    pub max_buffered_records: usize,
    /// librdkafka properties for every client.
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, ClientValue>,
    /// librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer: std::collections::BTreeMap<String, ClientValue>,
    /// librdkafka properties for the producer only.
    #[serde(default)]
    pub producer: std::collections::BTreeMap<String, ClientValue>,
}

/// `[state]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// See the defaults file.
    pub dir: PathBuf,
    /// See the defaults file.
    pub checkpoint_interval: Wait,
    /// See the defaults file.
    pub retention: Duration,
    /// See the defaults file.
    pub sends_log_max_bytes: u64,
}

/// `[engine]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    /// See the defaults file.
    pub allowed_lateness: Duration,
    /// See the defaults file.
    pub dedup_window: Duration,
    /// See the defaults file.
    pub dedup_max_per_customer: usize,
    /// See the defaults file.
    pub max_future_skew: Duration,
    /// See the defaults file.
    pub max_event_bytes: usize,
    /// See the defaults file.
    pub id_secret: String,
}

/// `[risk]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    /// See the defaults file.
    pub dropout: f64,
    /// See the defaults file.
    pub prior_gap_days: f64,
    /// See the defaults file.
    pub prior_weight: f64,
    /// See the defaults file.
    pub dropout_concentration: f64,
    /// See the defaults file.
    pub at_risk: f64,
    /// See the defaults file.
    pub support_factor: f64,
    /// See the defaults file.
    pub support_memory: Duration,
}

/// `[templates]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    /// See the defaults file.
    pub dir: PathBuf,
    /// See the defaults file.
    pub default_locale: String,
    /// See the defaults file.
    pub shop_name: String,
    /// See the defaults file.
    pub feedback_url: String,
    /// See the defaults file.
    pub unsubscribe_url: String,
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// See the defaults file.
    pub listen: String,
}

/// `[smtp]`
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
    pub timeout: Duration,
    /// See the defaults file.
    pub pool_size: u32,
    /// See the defaults file.
    pub retry_initial: Duration,
    /// See the defaults file.
    pub retry_max: Duration,
    /// See the defaults file.
    pub max_retry_age: Duration,
    /// See the defaults file.
    pub queue_limit: usize,
    /// See the defaults file.
    pub from: String,
    /// See the defaults file.
    pub reply_to: String,
    /// See the defaults file.
    pub message_id_domain: String,
}

/// `[delivery]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// See the defaults file.
    pub transport: String,
    /// See the defaults file.
    pub file_dir: PathBuf,
    /// See the defaults file.
    pub holdout_percent: f64,
    /// See the defaults file.
    pub holdout_rules: Vec<String>,
    /// See the defaults file.
    pub holdout_salt: String,
    /// See the defaults file.
    pub max_emails: u8,
    /// See the defaults file.
    pub window: Duration,
    /// See the defaults file.
    pub max_decision_age: Duration,
    /// See the defaults file.
    pub require_consent: bool,
    /// See the defaults file.
    pub quiet_hours: String,
    /// See the defaults file.
    pub default_timezone: String,
    /// See the defaults file.
    pub rate_limit: u32,
    /// See the defaults file.
    pub offer_secret: String,
}

/// `[loyal]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoyal {
    /// See the defaults file.
    pub min_purchases: u32,
    /// See the defaults file.
    pub min_tenure: Duration,
}

/// `[rules]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// `[rules.winback]`
    pub winback: RawWinback,
    /// `[rules.frequency_drop]`
    pub frequency_drop: RawFrequencyDrop,
    /// `[rules.support_recovery]`
    pub support_recovery: RawSupport,
    /// `[rules.thank_you]`
    pub thank_you: RawThankYou,
    /// `[rules.welcome_back]`
    pub welcome_back: RawWelcomeBack,
}

/// `[rules.winback]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWinback {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub mode: String,
    /// See the defaults file.
    pub inactive_after: Duration,
    /// See the defaults file.
    pub multiplier: f64,
    /// See the defaults file.
    pub prior_weight: f64,
    /// See the defaults file.
    pub min: Duration,
    /// See the defaults file.
    pub max: Duration,
    /// See the defaults file.
    pub cooldown: Duration,
    /// See the defaults file.
    pub steps: Vec<RawStep>,
}

/// One `rules.winback.steps` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// See the defaults file.
    pub after: Duration,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    #[serde(default)]
    pub offer_code: String,
}

/// `[rules.frequency_drop]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrequencyDrop {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub recent_window: Duration,
    /// See the defaults file.
    pub baseline_window: Duration,
    /// See the defaults file.
    pub max_ratio: f64,
    /// See the defaults file.
    pub significance: f64,
    /// See the defaults file.
    pub min_baseline_purchases: u32,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    pub offer_code: String,
    /// See the defaults file.
    pub cooldown: Duration,
}

/// `[rules.support_recovery]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupport {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub max_score: u8,
    /// See the defaults file.
    pub sla: Duration,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    pub offer_code: String,
    /// See the defaults file.
    pub cooldown: Duration,
}

/// `[rules.thank_you]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThankYou {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub milestones: Vec<u32>,
    /// See the defaults file.
    pub on_loyal: bool,
    /// See the defaults file.
    pub anniversary: bool,
    /// See the defaults file.
    pub milestone_template: String,
    /// See the defaults file.
    pub loyal_template: String,
    /// See the defaults file.
    pub anniversary_template: String,
    /// See the defaults file.
    pub cooldown: Duration,
}

/// `[rules.welcome_back]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWelcomeBack {
    /// See the defaults file.
    pub enabled: bool,
    /// See the defaults file.
    pub attribution_window: Duration,
    /// See the defaults file.
    pub template: String,
    /// See the defaults file.
    pub offer_code: String,
    /// See the defaults file.
    pub cooldown: Duration,
}

/// Where the event-time clock comes from in service mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockMode {
    /// Wall time.
    Wall,
    /// Event time.
    Event,
}

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

/// Kafka settings of the service (README "Running the service (Kafka)", README "Config reference").
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `host:port,…`
    pub bootstrap_servers: String,
    /// Consumer group.
    pub group_id: String,
    /// Input topics; partition `p` of each forms task `p`.
    pub topics: Vec<String>,
    /// Where rejected records go.
    pub dlq_topic: String,
    /// Where alerts go.
    pub alerts_topic: String,
    /// How long a task waits for an empty partition that is not caught up.
    pub max_task_idle: std::time::Duration,
    /// How often processed offsets are committed.
    pub commit_interval: std::time::Duration,
    /// Records taken per batch before effects are flushed.
    pub max_batch: usize,
    /// Records a task may hold in memory before its partitions are paused.
    pub max_buffered_records: usize,
    /// librdkafka properties for every client (flattened, dotted keys).
    pub client: Vec<(String, String)>,
    /// librdkafka properties for the consumer only.
    pub consumer: Vec<(String, String)>,
    /// librdkafka properties for the producer only.
    pub producer: Vec<(String, String)>,
}

/// Flattens a `kafka.client`-style table into librdkafka's dotted properties.
fn flatten_client(
    prefix: &str,
    table: &std::collections::BTreeMap<String, ClientValue>,
    out: &mut Vec<(String, String)>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            ClientValue::Table(t) => flatten_client(&key, t, out),
            ClientValue::Bool(b) => out.push((key, b.to_string())),
            ClientValue::Int(i) => out.push((key, i.to_string())),
            ClientValue::Float(f) => out.push((key, f.to_string())),
            ClientValue::Text(s) => out.push((key, s.clone())),
        }
    }
}

/// A secret (the SMTP password): its Debug output is a placeholder, so it cannot reach a
/// log line or an error through `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value, for the one place that needs it (SMTP authentication).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

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
#[derive(Clone, Debug)]
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
    /// Connect and per-command timeout.
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
#[derive(Clone, Debug)]
pub struct SendSettings {
    /// Local-time window with no sends, if any.
    pub quiet_hours: Option<crate::mail::quiet_hours::QuietHours>,
    /// Time zone of customers whose own is unknown.
    pub default_timezone: jiff::tz::TimeZone,
    /// Emails per second at most, across the worker (0: no limit).
    pub rate_limit: u32,
}

/// Reads and checks the SMTP settings; problems are pushed, never the password.
fn smtp_settings(raw: &RawSmtp, smtp_used: bool, p: &mut Vec<String>) -> SmtpSettings {
    let tls = match raw.tls.as_str() {
        "none" => TlsMode::None,
        "starttls" => TlsMode::StartTls,
        "tls" => TlsMode::Tls,
        other => {
            p.push(format!(
                "smtp.tls: must be \"none\", \"starttls\" or \"tls\", got `{other}`"
            ));
            TlsMode::StartTls
        }
    };
    let port = match (raw.port, tls) {
        (0, TlsMode::None) => 25,
        (0, TlsMode::StartTls) => 587,
        (0, TlsMode::Tls) => 465,
        (n, _) => n,
    };
    let from_env = raw.password.clone().filter(|s| !s.is_empty());
    let from_file = if raw.password_file.as_os_str().is_empty() {
        None
    } else {
        match std::fs::read_to_string(&raw.password_file) {
            Ok(s) => Some(s.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => {
                p.push(format!(
                    "smtp.password_file: cannot read {}: {e}",
                    raw.password_file.display()
                ));
                None
            }
        }
    };
    if from_env.is_some() && from_file.is_some() {
        p.push("smtp.password_file: a password is also set in CHURNWATCH__SMTP__PASSWORD; set only one".into());
    }
    let password = from_env.or(from_file).map(Secret);
    if smtp_used {
        if raw.host.trim().is_empty() {
            p.push("smtp.host: must name the relay when delivery.transport = \"smtp\"".into());
        }
        if !raw.username.is_empty() && password.is_none() {
            p.push("smtp.username: is set but no password is (CHURNWATCH__SMTP__PASSWORD or smtp.password_file)".into());
        }
    }
    if raw.pool_size == 0 {
        p.push("smtp.pool_size: must be at least 1".into());
    }
    if raw.queue_limit < raw.pool_size as usize {
        p.push("smtp.queue_limit: must be at least smtp.pool_size".into());
    }
    if !raw.ca_file.as_os_str().is_empty() {
        if let Err(e) = std::fs::metadata(&raw.ca_file) {
            p.push(format!(
                "smtp.ca_file: cannot read {}: {e}",
                raw.ca_file.display()
            ));
        }
    }
    if raw.timeout.0 == 0 {
        p.push("smtp.timeout: must be positive".into());
    }
    if raw.retry_initial.0 == 0 || raw.retry_max.0 < raw.retry_initial.0 {
        p.push(
            "smtp.retry_initial, smtp.retry_max: must be positive, retry_max ≥ retry_initial"
                .into(),
        );
    }
    if raw.max_retry_age.0 == 0 {
        p.push("smtp.max_retry_age: must be positive (e.g. \"5d\")".into());
    }
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

fn send_settings(d: &RawDelivery, p: &mut Vec<String>) -> SendSettings {
    let quiet_hours =
        crate::mail::quiet_hours::QuietHours::parse(&d.quiet_hours).unwrap_or_else(|e| {
            p.push(format!("delivery.quiet_hours: {e}"));
            None
        });
    let default_timezone = jiff::tz::db().get(&d.default_timezone).unwrap_or_else(|e| {
        p.push(format!(
            "delivery.default_timezone: `{}` is not an IANA time zone: {e}",
            d.default_timezone
        ));
        jiff::tz::TimeZone::UTC
    });
    SendSettings {
        quiet_hours,
        default_timezone,
        rate_limit: d.rate_limit,
    }
}

/// The smallest bound of `sends.jsonl`: below a few records it would rotate at every line.
const MIN_SENDS_LOG_BYTES: u64 = 4096;

/// Where and how often `run` makes its state durable (docs/design.md §8 Checkpoint and outbox).
#[derive(Clone, Debug)]
pub struct StateSettings {
    /// Folder of the embedded store (one file per task).
    pub dir: PathBuf,
    /// How often each task's changes, offsets and decided effects are committed.
    pub checkpoint_interval: std::time::Duration,
    /// `sends.jsonl` is rotated to `sends.jsonl.1` before it would pass this.
    pub sends_log_max_bytes: u64,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was loaded from (None: defaults only).
    pub path: Option<PathBuf>,
    /// Service-mode clock.
    pub clock: ClockMode,
    /// How long `run` may take to finish after SIGTERM.
    pub shutdown_grace: std::time::Duration,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// The durable store.
    pub state: StateSettings,
    /// `file` or `smtp`.
    pub transport: String,
    /// Folder for `.eml` files when the transport is `file` (service mode).
    pub file_dir: PathBuf,
    /// The engine's settings.
    pub engine: Settings,
    /// Rendering and headers.
    pub mail: MailSettings,
    /// The SMTP relay.
    pub smtp: SmtpSettings,
    /// Quiet hours and rate limit.
    pub send: SendSettings,
    /// Address of the HTTP admin endpoint (None: off).
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Period of the customer retention rate, whole days.
    pub crr_days: u16,
    /// Size and time limits every input record is checked against.
    pub limits: crate::event::Limits,
}

/// Loads defaults, then `path` (when given or present at the default location), then
/// `CHURNWATCH__…` environment variables, and validates the result.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with an explicit environment (for tests).
pub fn load_with_env(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let explicit = path
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
    let file = match explicit {
        Some(p) => Some(p),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    };
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(p) = &file {
        if !p.exists() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                p.display()
            )));
        }
        builder = builder.add_source(
            config::File::from(p.as_path())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("CHURNWATCH__"))
        .collect();
    let from_env = !env.is_empty();
    builder = apply_env(builder, env)?;
    let mut where_ = file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "embedded defaults".into());
    if from_env {
        // The value at fault may come from either; both are named.
        where_.push_str(" + CHURNWATCH__ environment");
    }
    let merged = builder
        .build()
        .map_err(|e| ConfigError::Load(format!("{where_}: {e}")))?;
    let raw: RawConfig = match serde_path_to_error::deserialize(merged.clone()) {
        Ok(raw) => raw,
        Err(e) => {
            let mut problems = key_problems(&merged);
            if problems.is_empty() {
                problems.push((e.path().to_string(), e.into_inner().to_string()));
            }
            let mut errors: Vec<ConfigError> = problems
                .into_iter()
                .map(|(key, message)| ConfigError::Key {
                    key: format!("{where_}: {key}"),
                    message,
                })
                .collect();
            return Err(match errors.len() {
                1 => errors.remove(0),
                _ => ConfigError::Invalid(errors.iter().map(ToString::to_string).collect()),
            });
        }
    };
    validate(raw, file)
}

/// Every unknown key and every value of the wrong type, so that `check` lists them all
/// at once: each section is read on its own, and after each problem the key at fault is
/// dropped (unknown) or set back to its default (bad value) before reading again.
fn key_problems(merged: &config::Config) -> Vec<(String, String)> {
    fn section<T: serde::de::DeserializeOwned>(
        merged: &config::Config,
        defaults: &config::Config,
        name: &str,
        out: &mut Vec<(String, String)>,
    ) {
        let Ok(mut value) = merged.get::<config::Value>(name) else {
            return;
        };
        let mut seen = Vec::new();
        let first = out.len();
        loop {
            let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(_) => break,
                Err(e) => e,
            };
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // The config crate appends the key the path already names.
            let message = message
                .split(" for key `")
                .next()
                .unwrap_or_default()
                .to_string();
            let unknown = message.starts_with("unknown field");
            let field = match (unknown, message.split('`').nth(1)) {
                (true, Some(f)) => f.to_string(),
                _ => path
                    .split(['.', '['])
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            let top = match path.split(['.', '[']).next() {
                Some(t) if !t.is_empty() && t != "." => t.to_string(),
                _ => field.clone(),
            };
            let named = unknown && (path.is_empty() || path == ".");
            let key = [name, &path, if named { &field } else { "" }]
                .iter()
                .filter(|p| !p.is_empty() && **p != ".")
                .copied()
                .collect::<Vec<_>>()
                .join(".");
            if seen.contains(&key) {
                break;
            }
            seen.push(key.clone());
            out.push((
                key,
                if unknown {
                    "unknown key".into()
                } else {
                    message
                },
            ));
            let (Ok(mut table), false) = (value.clone().into_table(), top.is_empty()) else {
                break;
            };
            match defaults.get::<config::Value>(&format!("{name}.{top}")) {
                Ok(d) if !(unknown && top == field) => table.insert(top, d),
                _ => table.remove(&top),
            };
            value = config::Value::new(None, table);
        }
        // The walk meets a section's keys in hash order: sorted, `check` says the same
        // thing twice.
        out[first..].sort();
    }
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .unwrap_or_default();
    let mut out = Vec::new();
    let known = [
        "clock",
        "shutdown_grace",
        "kafka",
        "state",
        "engine",
        "risk",
        "templates",
        "smtp",
        "admin",
        "delivery",
        "loyal",
        "rules",
        "metrics",
    ];
    if let Ok(top) = merged
        .clone()
        .try_deserialize::<std::collections::BTreeMap<String, config::Value>>()
    {
        for key in top.keys().filter(|k| !known.contains(&k.as_str())) {
            out.push((key.clone(), "unknown key".to_string()));
        }
    }
    section::<String>(merged, &defaults, "clock", &mut out);
    section::<Wait>(merged, &defaults, "shutdown_grace", &mut out);
    section::<RawKafka>(merged, &defaults, "kafka", &mut out);
    section::<RawState>(merged, &defaults, "state", &mut out);
    section::<RawEngine>(merged, &defaults, "engine", &mut out);
    section::<RawRisk>(merged, &defaults, "risk", &mut out);
    section::<RawTemplates>(merged, &defaults, "templates", &mut out);
    section::<RawSmtp>(merged, &defaults, "smtp", &mut out);
    section::<RawAdmin>(merged, &defaults, "admin", &mut out);
    section::<RawDelivery>(merged, &defaults, "delivery", &mut out);
    section::<RawLoyal>(merged, &defaults, "loyal", &mut out);
    section::<RawWinback>(merged, &defaults, "rules.winback", &mut out);
    section::<RawFrequencyDrop>(merged, &defaults, "rules.frequency_drop", &mut out);
    section::<RawSupport>(merged, &defaults, "rules.support_recovery", &mut out);
    section::<RawThankYou>(merged, &defaults, "rules.thank_you", &mut out);
    section::<RawWelcomeBack>(merged, &defaults, "rules.welcome_back", &mut out);
    if let Ok(rules) = merged.get::<std::collections::BTreeMap<String, config::Value>>("rules") {
        for key in rules.keys().filter(|k| {
            ![
                "winback",
                "frequency_drop",
                "support_recovery",
                "thank_you",
                "welcome_back",
            ]
            .contains(&k.as_str())
        }) {
            out.push((format!("rules.{key}"), "unknown key".to_string()));
        }
    }
    section::<RawMetrics>(merged, &defaults, "metrics", &mut out);
    out
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 3] = [
    "delivery.holdout_rules",
    "kafka.topics",
    "rules.thank_you.milestones",
];

/// Applies `CHURNWATCH__SECTION__KEY=value` variables as overrides. Values stay text
/// (serde converts them where a number or bool is wanted), so a secret like `0012345`
/// is kept verbatim; list keys are split on commas and trimmed.
fn apply_env(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("CHURNWATCH__")?;
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            Some((key, v))
        })
        .collect();
    vars.sort();
    for (key, value) in vars {
        let result = if LIST_KEYS.contains(&key.as_str()) {
            let items: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            builder.set_override(key.as_str(), items)
        } else {
            builder.set_override(key.as_str(), value)
        };
        builder = result.map_err(|e| ConfigError::Key {
            key: format!("CHURNWATCH__ environment: {key}"),
            message: e.to_string(),
        })?;
    }
    Ok(builder)
}

fn template_name(problems: &mut Vec<String>, key: &str, name: &str) {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        problems.push(format!(
            "{key}: template name `{name}` must be letters, digits, '_' or '-'"
        ));
    }
}

fn window_buckets(problems: &mut Vec<String>, key: &str, d: Duration) -> u8 {
    if d.0 == 0 || !d.0.is_multiple_of(BUCKET_SECS) {
        problems.push(format!(
            "{key}: must be a positive multiple of 30d (activity is counted in 30-day buckets), got {}",
            crate::engine::clock::format_duration(d.0)
        ));
        return 1;
    }
    u8::try_from(d.0 / BUCKET_SECS).unwrap_or(u8::MAX)
}

/// The sections in the order of the defaults file: `check` lists problems in this order.
const SECTIONS: [&str; 17] = [
    "clock",
    "shutdown_grace",
    "kafka",
    "state",
    "engine",
    "risk",
    "templates",
    "smtp",
    "admin",
    "delivery",
    "loyal",
    "rules.winback",
    "rules.frequency_drop",
    "rules.support_recovery",
    "rules.thank_you",
    "rules.welcome_back",
    "metrics",
];

/// Orders problems by the section their key is in (file order), keeping the order of
/// the checks within a section, so an operator reads them as the file is laid out.
fn group_by_section(problems: &mut [String]) {
    let rank = |m: &String| {
        let key = m.split([':', ',', ' ']).next().unwrap_or_default();
        SECTIONS
            .iter()
            .position(|s| {
                key == *s || key.starts_with(&format!("{s}.")) || key.starts_with(&format!("{s}["))
            })
            .unwrap_or(SECTIONS.len())
    };
    problems.sort_by_key(rank);
}

/// Checks consistency and builds the validated [`Config`]; every problem is reported.
pub fn validate(raw: RawConfig, path: Option<PathBuf>) -> Result<Config, ConfigError> {
    let mut p = Vec::new();
    let clock = match raw.clock.as_str() {
        "wall" => ClockMode::Wall,
        "event" => ClockMode::Event,
        other => {
            p.push(format!(
                "clock: must be \"wall\" or \"event\", got `{other}`"
            ));
            ClockMode::Wall
        }
    };
    let k = &raw.kafka;
    if k.bootstrap_servers.trim().is_empty() {
        p.push("kafka.bootstrap_servers: must name at least one host:port".into());
    }
    if k.group_id.trim().is_empty() {
        p.push("kafka.group_id: must not be empty".into());
    }
    if k.topics.is_empty() {
        p.push("kafka.topics: must name at least one input topic".into());
    }
    for (i, t) in k.topics.iter().enumerate() {
        if t.trim().is_empty() {
            p.push("kafka.topics: a topic name is empty".into());
        } else if k.topics[..i].contains(t) {
            p.push(format!("kafka.topics: `{t}` is listed twice"));
        }
    }
    for (key, t) in [
        ("kafka.dlq_topic", &k.dlq_topic),
        ("kafka.alerts_topic", &k.alerts_topic),
    ] {
        if t.trim().is_empty() {
            p.push(format!("{key}: must not be empty"));
        } else if k.topics.contains(t) {
            p.push(format!(
                "{key}: `{t}` is also an input topic (the worker would read its own output)"
            ));
        }
    }
    if k.dlq_topic == k.alerts_topic {
        p.push("kafka.dlq_topic and kafka.alerts_topic: must differ".into());
    }
    if k.max_batch == 0 {
        p.push("kafka.max_batch: must be at least 1".into());
    }
    if k.max_buffered_records == 0 {
        p.push("kafka.max_buffered_records: must be at least 1".into());
    }
    if k.commit_interval.0.is_zero() {
        p.push("kafka.commit_interval: must be positive".into());
    }
    let mut client = Vec::new();
    flatten_client("", &k.client, &mut client);
    let mut consumer = Vec::new();
    flatten_client("", &k.consumer, &mut consumer);
    let mut producer = Vec::new();
    flatten_client("", &k.producer, &mut producer);
    for (key, _) in client.iter().chain(&consumer).chain(&producer) {
        if matches!(
            key.as_str(),
            "bootstrap.servers" | "group.id" | "enable.auto.offset.store" | "enable.auto.commit"
        ) {
            p.push(format!(
                "kafka.client: `{key}` is set by churnwatch itself (use kafka.bootstrap_servers / kafka.group_id; offsets are stored only after effects)"
            ));
        }
    }
    if !matches!(raw.delivery.transport.as_str(), "file" | "smtp") {
        p.push(format!(
            "delivery.transport: must be \"file\" or \"smtp\", got `{}`",
            raw.delivery.transport
        ));
    }
    let r = &raw.risk;
    if !(r.dropout > 0.0 && r.dropout < 1.0) {
        p.push(format!(
            "risk.dropout: must be between 0 and 1 (exclusive), got {}",
            r.dropout
        ));
    }
    if r.prior_gap_days < 0.5 {
        p.push(format!(
            "risk.prior_gap_days: must be at least 0.5, got {}",
            r.prior_gap_days
        ));
    }
    if r.prior_weight <= 0.0 {
        p.push(format!(
            "risk.prior_weight: must be positive, got {}",
            r.prior_weight
        ));
    }
    if r.dropout_concentration <= 0.0 {
        p.push(format!(
            "risk.dropout_concentration: must be positive, got {}",
            r.dropout_concentration
        ));
    }
    if !(r.at_risk > 0.0 && r.at_risk < 1.0) {
        p.push(format!(
            "risk.at_risk: must be between 0 and 1 (exclusive), got {}",
            r.at_risk
        ));
    }
    if r.support_factor < 1.0 {
        p.push(format!(
            "risk.support_factor: must be ≥ 1, got {}",
            r.support_factor
        ));
    }
    let d = &raw.delivery;
    if !(0.0..=100.0).contains(&d.holdout_percent) {
        p.push(format!(
            "delivery.holdout_percent: must be 0–100, got {}",
            d.holdout_percent
        ));
    }
    let mut holdout_rules = [false; Rule::COUNT];
    for name in d
        .holdout_rules
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        match Rule::from_name(name) {
            Some(rule) => holdout_rules[rule.index()] = true,
            None => p.push(format!("delivery.holdout_rules: unknown rule `{name}`")),
        }
    }
    if d.max_emails == 0 || d.max_emails > MAX_CAP {
        p.push(format!(
            "delivery.max_emails: must be 1–{MAX_CAP} (0 would never send), got {}",
            d.max_emails
        ));
    }
    if d.window.0 < DAY || !d.window.0.is_multiple_of(DAY) {
        p.push("delivery.window: must be a whole number of days, at least 1d".to_string());
    }
    if raw.engine.id_secret.is_empty() {
        p.push("engine.id_secret: must not be empty".to_string());
    }
    if raw.engine.dedup_window.0 < DAY {
        p.push("engine.dedup_window: must be at least 1d".to_string());
    }
    if !(2..=65_536).contains(&raw.engine.dedup_max_per_customer) {
        p.push(format!(
            "engine.dedup_max_per_customer: must be 2–65536, got {}",
            raw.engine.dedup_max_per_customer
        ));
    }
    if raw.engine.max_future_skew.0 > 30 * DAY {
        p.push("engine.max_future_skew: must be at most 30d".to_string());
    }
    if !(1024..=16 << 20).contains(&raw.engine.max_event_bytes) {
        p.push(format!(
            "engine.max_event_bytes: must be 1024–16777216 bytes, got {}",
            raw.engine.max_event_bytes
        ));
    }
    let w = &raw.rules.winback;
    let mode = match w.mode.as_str() {
        "fixed" => {
            if w.inactive_after.0 == 0 {
                p.push("rules.winback.inactive_after: must be positive".to_string());
            }
            WinbackMode::Fixed {
                inactive_after: w.inactive_after.0,
            }
        }
        "adaptive" => {
            if w.multiplier <= 0.0 {
                p.push(format!(
                    "rules.winback.multiplier: must be positive, got {}",
                    w.multiplier
                ));
            }
            if w.prior_weight < 0.0 {
                p.push(format!(
                    "rules.winback.prior_weight: must be ≥ 0, got {}",
                    w.prior_weight
                ));
            }
            if w.min.0 > w.max.0 {
                p.push("rules.winback.min: must not exceed rules.winback.max".to_string());
            }
            WinbackMode::Adaptive {
                multiplier: w.multiplier,
                min: w.min.0,
                max: w.max.0,
            }
        }
        other => {
            p.push(format!(
                "rules.winback.mode: must be \"fixed\" or \"adaptive\", got `{other}`"
            ));
            WinbackMode::Fixed {
                inactive_after: w.inactive_after.0,
            }
        }
    };
    if w.steps.is_empty() {
        p.push("rules.winback.steps: at least one step is needed".to_string());
    }
    let st = &raw.state;
    if st.dir.as_os_str().is_empty() {
        p.push("state.dir: must name a folder".to_string());
    }
    if st.checkpoint_interval.0.is_zero() {
        p.push("state.checkpoint_interval: must be positive".to_string());
    }
    if st.sends_log_max_bytes < MIN_SENDS_LOG_BYTES {
        p.push(format!(
            "state.sends_log_max_bytes: must be at least {MIN_SENDS_LOG_BYTES} (a few records), got {}",
            st.sends_log_max_bytes
        ));
    }
    // A customer must outlive every rule's horizon, or a sequence would be cut short.
    let inactive = match &mode {
        WinbackMode::Fixed { inactive_after } => *inactive_after,
        WinbackMode::Adaptive { max, .. } => *max,
    };
    let longest = inactive.saturating_add(w.steps.iter().map(|s| s.after.0).max().unwrap_or(0));
    if st.retention.0 <= longest {
        p.push(format!(
            "state.retention: must be longer than the longest win-back sequence ({} of inactivity plus the last step), got {}",
            crate::engine::clock::format_duration(longest),
            crate::engine::clock::format_duration(st.retention.0)
        ));
    }
    if w.steps.len() > 8 {
        p.push("rules.winback.steps: at most 8 steps".to_string());
    }
    for (i, pair) in w.steps.windows(2).enumerate() {
        if pair[1].after.0 <= pair[0].after.0 {
            p.push(format!(
                "rules.winback.steps[{}].after: must come after step {} ({} ≤ {})",
                i + 1,
                i,
                crate::engine::clock::format_duration(pair[1].after.0),
                crate::engine::clock::format_duration(pair[0].after.0)
            ));
        }
    }
    for (i, s) in w.steps.iter().enumerate() {
        template_name(
            &mut p,
            &format!("rules.winback.steps[{i}].template"),
            &s.template,
        );
    }
    let f = &raw.rules.frequency_drop;
    let recent_buckets = window_buckets(
        &mut p,
        "rules.frequency_drop.recent_window",
        f.recent_window,
    );
    let baseline_buckets = window_buckets(
        &mut p,
        "rules.frequency_drop.baseline_window",
        f.baseline_window,
    );
    if usize::from(recent_buckets) + usize::from(baseline_buckets) >= BUCKETS {
        p.push(format!(
            "rules.frequency_drop: recent_window + baseline_window must be at most {}d",
            (BUCKETS - 1) * 30
        ));
    }
    if !(f.max_ratio > 0.0 && f.max_ratio <= 1.0) {
        p.push(format!(
            "rules.frequency_drop.max_ratio: must be in (0, 1], got {}",
            f.max_ratio
        ));
    }
    if !(f.significance > 0.0 && f.significance < 1.0) {
        p.push(format!(
            "rules.frequency_drop.significance: must be in (0, 1), got {}",
            f.significance
        ));
    }
    if f.min_baseline_purchases == 0 {
        p.push("rules.frequency_drop.min_baseline_purchases: must be at least 1".to_string());
    }
    template_name(&mut p, "rules.frequency_drop.template", &f.template);
    let sr = &raw.rules.support_recovery;
    if !(1..=5).contains(&sr.max_score) {
        p.push(format!(
            "rules.support_recovery.max_score: must be 1–5, got {}",
            sr.max_score
        ));
    }
    if sr.sla.0 == 0 {
        p.push("rules.support_recovery.sla: must be positive".to_string());
    }
    template_name(&mut p, "rules.support_recovery.template", &sr.template);
    let ty = &raw.rules.thank_you;
    if ty.milestones.windows(2).any(|m| m[1] <= m[0]) || ty.milestones.contains(&0) {
        p.push("rules.thank_you.milestones: must be positive and strictly ascending".to_string());
    }
    template_name(
        &mut p,
        "rules.thank_you.milestone_template",
        &ty.milestone_template,
    );
    template_name(&mut p, "rules.thank_you.loyal_template", &ty.loyal_template);
    template_name(
        &mut p,
        "rules.thank_you.anniversary_template",
        &ty.anniversary_template,
    );
    let wb = &raw.rules.welcome_back;
    template_name(&mut p, "rules.welcome_back.template", &wb.template);
    if raw.loyal.min_purchases < 2 {
        p.push("loyal.min_purchases: must be at least 2".to_string());
    }
    if raw.smtp.message_id_domain.is_empty()
        || !raw
            .smtp
            .message_id_domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        p.push(format!(
            "smtp.message_id_domain: must be a domain name, got `{}`",
            raw.smtp.message_id_domain
        ));
    }
    let smtp = smtp_settings(&raw.smtp, raw.delivery.transport == "smtp", &mut p);
    let admin_listen = if raw.admin.listen.trim().is_empty() {
        None
    } else {
        match raw.admin.listen.trim().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                p.push(format!(
                    "admin.listen: must be an address such as \"127.0.0.1:9464\" (or \"\" for none), got `{}`",
                    raw.admin.listen
                ));
                None
            }
        }
    };
    let send = send_settings(&raw.delivery, &mut p);
    let crr = raw.metrics.crr_period.0;
    let crr_days = crr / DAY;
    if crr == 0 || !crr.is_multiple_of(DAY) || crr_days > u32::from(MAX_PERIOD_DAYS) {
        p.push(format!(
            "metrics.crr_period: must be whole days from 1d to {MAX_PERIOD_DAYS}d, got {}",
            crate::engine::clock::format_duration(crr)
        ));
    }
    if raw.templates.default_locale.is_empty() {
        p.push("templates.default_locale: must not be empty".to_string());
    }
    if !p.is_empty() {
        group_by_section(&mut p);
        let where_ = path
            .as_ref()
            .map(|x| x.display().to_string())
            .unwrap_or_else(|| "embedded defaults".into());
        return Err(ConfigError::Invalid(
            p.into_iter().map(|m| format!("{where_}: {m}")).collect(),
        ));
    }
    let engine = Settings {
        allowed_lateness: raw.engine.allowed_lateness.0,
        dedup_window: raw.engine.dedup_window.0,
        dedup_max_per_customer: raw.engine.dedup_max_per_customer,
        retention: raw.state.retention.0,
        id_key: crate::alert::IdKey::new(raw.engine.id_secret.as_bytes()),
        offer_key: crate::alert::IdKey::new(raw.delivery.offer_secret.as_bytes()),
        risk: RiskSettings {
            dropout: r.dropout,
            prior_gap_days: r.prior_gap_days,
            prior_weight: r.prior_weight,
            dropout_concentration: r.dropout_concentration,
            at_risk: r.at_risk,
            support_factor: r.support_factor,
            support_memory: r.support_memory.0,
        },
        loyal: LoyalSettings {
            min_purchases: raw.loyal.min_purchases,
            min_tenure: raw.loyal.min_tenure.0,
        },
        winback: WinbackSettings {
            enabled: w.enabled,
            mode,
            prior_weight: w.prior_weight,
            steps: w
                .steps
                .iter()
                .map(|s| Step {
                    after: s.after.0,
                    template: s.template.clone(),
                    offer_code: s.offer_code.clone(),
                })
                .collect(),
            cooldown: w.cooldown.0,
        },
        frequency_drop: FrequencyDropSettings {
            enabled: f.enabled,
            recent_buckets,
            baseline_buckets,
            max_ratio: f.max_ratio,
            significance: f.significance,
            min_baseline_purchases: f.min_baseline_purchases,
            template: f.template.clone(),
            offer_code: f.offer_code.clone(),
            cooldown: f.cooldown.0,
        },
        support_recovery: SupportSettings {
            enabled: sr.enabled,
            max_score: sr.max_score,
            sla: sr.sla.0,
            template: sr.template.clone(),
            offer_code: sr.offer_code.clone(),
            cooldown: sr.cooldown.0,
        },
        thank_you: ThankYouSettings {
            enabled: ty.enabled,
            milestones: ty.milestones.clone(),
            on_loyal: ty.on_loyal,
            anniversary: ty.anniversary,
            milestone_template: ty.milestone_template.clone(),
            loyal_template: ty.loyal_template.clone(),
            anniversary_template: ty.anniversary_template.clone(),
            cooldown: ty.cooldown.0,
        },
        welcome_back: WelcomeBackSettings {
            enabled: wb.enabled,
            attribution_window: wb.attribution_window.0,
            template: wb.template.clone(),
            offer_code: wb.offer_code.clone(),
            cooldown: wb.cooldown.0,
        },
        delivery: DeliverySettings {
            holdout_percent: d.holdout_percent,
            holdout_rules,
            holdout_salt: d.holdout_salt.clone(),
            max_emails: d.max_emails,
            window_days: u16::try_from(d.window.0 / DAY).unwrap_or(u16::MAX),
            max_decision_age: d.max_decision_age.0,
            require_consent: d.require_consent,
            default_locale: raw.templates.default_locale.clone(),
        },
    };
    Ok(Config {
        path,
        clock,
        shutdown_grace: raw.shutdown_grace.0,
        kafka: KafkaSettings {
            bootstrap_servers: k.bootstrap_servers.clone(),
            group_id: k.group_id.clone(),
            topics: k.topics.clone(),
            dlq_topic: k.dlq_topic.clone(),
            alerts_topic: k.alerts_topic.clone(),
            max_task_idle: k.max_task_idle.0,
            commit_interval: k.commit_interval.0,
            max_batch: k.max_batch,
            max_buffered_records: k.max_buffered_records,
            client,
            consumer,
            producer,
        },
        state: StateSettings {
            dir: raw.state.dir.clone(),
            checkpoint_interval: raw.state.checkpoint_interval.0,
            sends_log_max_bytes: raw.state.sends_log_max_bytes,
        },
        transport: raw.delivery.transport,
        file_dir: raw.delivery.file_dir,
        engine,
        mail: MailSettings {
            templates_dir: raw.templates.dir,
            default_locale: raw.templates.default_locale,
            shop_name: raw.templates.shop_name,
            feedback_url: raw.templates.feedback_url,
            unsubscribe_url: raw.templates.unsubscribe_url,
            from: raw.smtp.from,
            reply_to: raw.smtp.reply_to,
            message_id_domain: raw.smtp.message_id_domain,
        },
        smtp,
        send,
        admin_listen,
        crr_days: u16::try_from(crr_days).unwrap_or(MAX_PERIOD_DAYS),
        limits: crate::event::Limits {
            max_event_bytes: raw.engine.max_event_bytes,
            max_future_skew: raw.engine.max_future_skew.0,
        },
    })
}

impl Config {
    /// The tables of `self` that differ from `running` but take effect only at a
    /// restart (docs/design.md §14 Hot reload: thresholds, guards, templates and mail settings reload live;
    /// Kafka, the store, the transport, the relay, the sender's pacing and the admin
    /// address do not).
    pub fn restart_only_changes(&self, running: &Config) -> Vec<&'static str> {
        let differ =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let mut keys = Vec::new();
        let pairs: [(&'static str, &dyn std::fmt::Debug, &dyn std::fmt::Debug); 10] = [
            ("clock", &self.clock, &running.clock),
            (
                "shutdown_grace",
                &self.shutdown_grace,
                &running.shutdown_grace,
            ),
            ("kafka", &self.kafka, &running.kafka),
            ("state", &self.state, &running.state),
            ("delivery.transport", &self.transport, &running.transport),
            ("delivery.file_dir", &self.file_dir, &running.file_dir),
            ("smtp", &self.smtp, &running.smtp),
            (
                "delivery.quiet_hours/default_timezone/rate_limit",
                &self.send,
                &running.send,
            ),
            ("admin.listen", &self.admin_listen, &running.admin_listen),
            (
                "engine.max_future_skew/max_event_bytes",
                &self.limits,
                &running.limits,
            ),
        ];
        for (key, a, b) in pairs {
            if differ(a, b) {
                keys.push(key);
            }
        }
        keys
    }
}
