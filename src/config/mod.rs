//! Configuration: the serde layer (defaults file, operator file, environment) and the
//! validation that turns it into settings the rest of the code can trust.
//!
//! Each section has its module: its shape as written (`Raw…`, unknown keys refused) and
//! a `validate` that checks it into the settings of the code that uses it, pushing every
//! problem into one [`Problems`] so that `check` reports them all at once. The rules'
//! sections live with the rules (`engine/rules/`). [`Config`] is the result; what a
//! reload may change while running is [`Config::live`], the rest is
//! [`Config::restart_only`] (docs/design.md §14 Hot reload).

mod admin;
mod delivery;
mod engine;
mod env;
mod kafka;
mod keys;
mod metrics;
mod smtp;
mod state;
mod templates;
mod values;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::rule::Rule;
use crate::engine::rules::RuleSpec;
use crate::engine::settings::Settings;
use crate::problems::Problems;

pub use delivery::Transport;
pub use kafka::KafkaSettings;
pub use state::StateSettings;
pub use values::{ClientValue, Wait};
// The mail adapters own their settings; they are named here too, where a reader of the
// configuration looks for them.
pub use crate::mail::settings::{MailSettings, Secret, SendSettings, SmtpSettings, TlsMode};

/// The defaults, embedded so `replay` runs with no file at hand.
pub const DEFAULT_TOML: &str = include_str!("../../config/churnwatch.toml");

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "CHURNWATCH_CONFIG";

/// Default config path.
pub const DEFAULT_PATH: &str = "config/churnwatch.toml";

/// The top-level keys and sections in the order of the defaults file; `check` lists
/// problems in this order (the rules' sections in the registry's order).
const SECTIONS: [&str; 13] = [
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

macro_rules! declare_raw_rules {
    ($($variant:ident = $index:literal => $module:ident,)*) => {
        /// `[rules.*]`: one section per rule, as its module reads it.
        #[derive(Clone, Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawRules {
            $(
                #[doc = concat!("`[rules.", stringify!($module), "]`")]
                pub $module: <crate::engine::rules::$module::Spec as RuleSpec>::Raw,
            )*
        }
    };
}
crate::engine::rule::registry!(declare_raw_rules);

/// The whole file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `wall` or `event`.
    pub clock: String,
    /// How long `run` may take to finish in-flight work after SIGTERM.
    pub shutdown_grace: Wait,
    /// `[kafka]`
    pub kafka: kafka::RawKafka,
    /// `[state]`
    pub state: state::RawState,
    /// `[engine]`
    pub engine: engine::RawEngine,
    /// `[risk]`
    pub risk: engine::RawRisk,
    /// `[templates]`
    pub templates: templates::RawTemplates,
    /// `[smtp]`
    pub smtp: smtp::RawSmtp,
    /// `[admin]`
    pub admin: admin::RawAdmin,
    /// `[delivery]`
    pub delivery: delivery::RawDelivery,
    /// `[loyal]`
    pub loyal: engine::RawLoyal,
    /// `[rules.*]`
    pub rules: RawRules,
    /// `[metrics]`
    pub metrics: metrics::RawMetrics,
}

/// Where the event-time clock comes from in service mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockMode {
    /// Wall time.
    Wall,
    /// Event time.
    Event,
}

impl ClockMode {
    fn validate(raw: &str, p: &mut Problems) -> ClockMode {
        match raw {
            "wall" => ClockMode::Wall,
            "event" => ClockMode::Event,
            other => {
                p.push(format!(
                    "clock: must be \"wall\" or \"event\", got `{other}`"
                ));
                ClockMode::Wall
            }
        }
    }
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
    /// Where emails go.
    pub transport: Transport,
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
    /// The bearer token that unlocks personal data at the admin endpoint (None: never).
    pub admin_token: Option<Secret>,
    /// Period of the customer retention rate, whole days.
    pub crr_days: u16,
    /// Size and time limits every input record is checked against.
    pub limits: crate::event::Limits,
    /// The secrets `run` refuses to start with (the shipped defaults, placeholders, keys
    /// too short), one line each; the other commands run with them.
    pub weak_secrets: Vec<String>,
}

/// What a config reload changes while the service runs: thresholds and guards (the
/// engines' settings), templates and mail settings, the CRR period.
#[derive(Clone, Debug)]
pub struct Live {
    /// The engines' settings (shared by every task's engine).
    pub engine: std::sync::Arc<Settings>,
    /// Rendering and headers.
    pub mail: MailSettings,
    /// Period of the customer retention rate, whole days.
    pub crr_days: u16,
}

/// What takes effect only at a restart: a reload that changes any of it says so and
/// keeps the running value. Each field is the key an operator would change.
#[derive(Debug)]
pub struct RestartOnly<'a> {
    clock: &'a ClockMode,
    shutdown_grace: &'a std::time::Duration,
    kafka: &'a KafkaSettings,
    state: &'a StateSettings,
    transport: &'a Transport,
    file_dir: &'a PathBuf,
    smtp: &'a SmtpSettings,
    send: &'a SendSettings,
    admin_listen: &'a Option<std::net::SocketAddr>,
    admin_token: &'a Option<Secret>,
    limits: &'a crate::event::Limits,
}

impl RestartOnly<'_> {
    /// The keys (as an operator writes them) whose values differ from `running`.
    pub fn changed(&self, running: &RestartOnly<'_>) -> Vec<&'static str> {
        let pairs = [
            ("clock", self.clock != running.clock),
            (
                "shutdown_grace",
                self.shutdown_grace != running.shutdown_grace,
            ),
            ("kafka", self.kafka != running.kafka),
            ("state", self.state != running.state),
            ("delivery.transport", self.transport != running.transport),
            ("delivery.file_dir", self.file_dir != running.file_dir),
            ("smtp", self.smtp != running.smtp),
            (
                "delivery.quiet_hours/default_timezone/rate_limit",
                self.send != running.send,
            ),
            ("admin.listen", self.admin_listen != running.admin_listen),
            ("admin.token", self.admin_token != running.admin_token),
            (
                "engine.max_future_skew/max_event_bytes",
                self.limits != running.limits,
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, differ)| *differ)
            .map(|(key, _)| key)
            .collect()
    }
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
    builder = env::apply_env(builder, env)?;
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
            let mut problems = keys::key_problems(&merged);
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

/// Checks every section and builds the validated [`Config`]; every problem is reported.
pub fn validate(raw: RawConfig, path: Option<PathBuf>) -> Result<Config, ConfigError> {
    let mut p = Problems::new();
    let clock = ClockMode::validate(&raw.clock, &mut p);
    let kafka = raw.kafka.validate(&mut p);
    let state = raw.state.validate(&mut p);
    let id_secret = raw.engine.validate(&mut p);
    let risk = raw.risk.validate(&mut p);
    let mail = raw.templates.validate(&raw.smtp, &mut p);
    let smtp_used = raw.delivery.transport() == Some(Transport::Smtp);
    let smtp = raw.smtp.validate(smtp_used, &mut p);
    let admin = raw.admin.validate(&mut p);
    let delivery = raw.delivery.validate(&raw.templates.default_locale, &mut p);
    let loyal = raw.loyal.validate(&mut p);
    let crr_days = raw.metrics.validate(&mut p);
    macro_rules! build_settings {
        ($($variant:ident = $index:literal => $module:ident,)*) => {
            Settings {
                allowed_lateness: raw.engine.allowed_lateness.0,
                dedup_window: raw.engine.dedup_window.0,
                dedup_max_per_customer: raw.engine.dedup_max_per_customer,
                retention: raw.state.retention.0,
                id_key: crate::alert::IdKey::new(id_secret.expose().as_bytes()),
                offer_key: crate::alert::IdKey::new(delivery.offer_secret.expose().as_bytes()),
                risk,
                loyal,
                $($module: crate::engine::rules::$module::Spec::validate(
                    &raw.rules.$module,
                    concat!("rules.", stringify!($module)),
                    &mut p,
                ),)*
                delivery: delivery.guards,
            }
        };
    }
    let engine = crate::engine::rule::registry!(build_settings);
    // A customer must outlive every rule's horizon, or a sequence would be cut short.
    let longest = engine.winback.longest_sequence();
    p.when(engine.retention <= longest, || format!(
        "state.retention: must be longer than the longest win-back sequence ({} of inactivity plus the last step), got {}",
        crate::engine::clock::format_duration(longest),
        crate::engine::clock::format_duration(engine.retention)
    ));
    if !p.is_empty() {
        let where_ = path
            .as_ref()
            .map(|x| x.display().to_string())
            .unwrap_or_else(|| "embedded defaults".into());
        let mut lines = p.into_lines();
        group_by_section(&mut lines);
        return Err(ConfigError::Invalid(
            lines
                .into_iter()
                .map(|m| format!("{where_}: {m}"))
                .collect(),
        ));
    }
    let weak_secrets = weak_secrets(&[
        (
            "engine.id_secret",
            Some(&id_secret),
            Some(engine::SHIPPED_ID_SECRET),
            true,
        ),
        (
            "delivery.offer_secret",
            Some(&delivery.offer_secret),
            Some(delivery::SHIPPED_OFFER_SECRET),
            true,
        ),
        ("admin.token", admin.token.as_ref(), None, true),
        ("smtp.password", smtp.password.as_ref(), None, false),
        (
            "kafka.sasl_password",
            kafka.sasl_password.as_ref(),
            None,
            false,
        ),
    ]);
    Ok(Config {
        path,
        clock,
        shutdown_grace: raw.shutdown_grace.0,
        kafka,
        state,
        transport: delivery.transport,
        file_dir: delivery.file_dir,
        engine,
        mail,
        smtp,
        send: delivery.send,
        admin_listen: admin.listen,
        admin_token: admin.token,
        crr_days,
        limits: raw.engine.limits(),
        weak_secrets,
    })
}

/// One secret `run` checks: its key, its value when set, the value the defaults file
/// ships for it (if any), and whether churnwatch signs or checks with it (a key held to
/// a length, unlike a password someone else issued).
type SecretCheck<'a> = (&'static str, Option<&'a Secret>, Option<&'static str>, bool);

/// The secrets `run` refuses, one line each naming the key and why (never the value).
fn weak_secrets(secrets: &[SecretCheck<'_>]) -> Vec<String> {
    secrets
        .iter()
        .filter_map(|&(key, value, shipped, is_key)| {
            let why = crate::secret::weakness(value?.expose(), shipped, is_key)?;
            let env = crate::secret::env_var(key);
            Some(format!(
                "{key}: {why}; set your own{} in a file named by {key}_file or in {env}",
                if is_key { ", 32 bytes or more," } else { "" }
            ))
        })
        .collect()
}

/// Orders problems by the section their key is in (file order), keeping the order of
/// the checks within a section, so an operator reads them as the file is laid out.
fn group_by_section(problems: &mut [String]) {
    let rank = |m: &String| {
        let key = m.split([':', ',', ' ', '[']).next().unwrap_or_default();
        let mut parts = key.split('.');
        let section = parts.next().unwrap_or_default();
        let index = SECTIONS
            .iter()
            .position(|s| *s == section)
            .unwrap_or(SECTIONS.len());
        let rule = match section {
            "rules" => parts
                .next()
                .and_then(Rule::from_name)
                .map_or(Rule::COUNT, Rule::index),
            _ => 0,
        };
        (index, rule)
    };
    problems.sort_by_key(rank);
}

impl Config {
    /// What a reload of this configuration changes in a running service.
    pub fn live(&self) -> Live {
        Live {
            engine: std::sync::Arc::new(self.engine.clone()),
            mail: self.mail.clone(),
            crr_days: self.crr_days,
        }
    }

    /// What takes effect only at a restart.
    pub fn restart_only(&self) -> RestartOnly<'_> {
        RestartOnly {
            clock: &self.clock,
            shutdown_grace: &self.shutdown_grace,
            kafka: &self.kafka,
            state: &self.state,
            transport: &self.transport,
            file_dir: &self.file_dir,
            smtp: &self.smtp,
            send: &self.send,
            admin_listen: &self.admin_listen,
            admin_token: &self.admin_token,
            limits: &self.limits,
        }
    }

    /// The keys of `self` that differ from `running` but take effect only at a
    /// restart (docs/design.md §14 Hot reload).
    pub fn restart_only_changes(&self, running: &Config) -> Vec<&'static str> {
        self.restart_only().changed(&running.restart_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Config {
        load_with_env(None, Vec::<(String, String)>::new()).expect("the defaults are valid")
    }

    #[test]
    fn a_live_change_is_not_reported_as_waiting_for_a_restart() {
        let running = defaults();
        let mut new = running.clone();
        new.engine.risk.at_risk = 0.9;
        new.mail.shop_name = "Another shop".into();
        new.crr_days = 30;
        assert!(new.restart_only_changes(&running).is_empty());
        assert_eq!(new.live().engine.risk.at_risk, 0.9);
    }

    #[test]
    fn each_restart_only_change_is_named_by_its_key() {
        let running = defaults();
        let mut new = running.clone();
        new.smtp.password = Some(Secret::new("a new password"));
        new.transport = Transport::Smtp;
        new.kafka.max_batch += 1;
        new.limits.max_event_bytes += 1;
        assert_eq!(
            new.restart_only_changes(&running),
            [
                "kafka",
                "delivery.transport",
                "smtp",
                "engine.max_future_skew/max_event_bytes"
            ]
        );
    }
}
