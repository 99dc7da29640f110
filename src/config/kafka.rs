//! `[kafka]`: the cluster, the group, the topics and librdkafka's own properties.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::values::{ClientValue, Wait};
use crate::problems::Problems;
use crate::secret::{self, Secret};

/// `[kafka]` as written.
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
    /// See the defaults file.
    pub changelog_topic: String,
    /// See the defaults file.
    pub changelog: bool,
    /// See the defaults file.
    pub sasl_password_file: PathBuf,
    /// See the defaults file.
    pub oauthbearer_token_file: PathBuf,
    /// librdkafka properties for every client.
    #[serde(default)]
    pub client: BTreeMap<String, ClientValue>,
    /// librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer: BTreeMap<String, ClientValue>,
    /// librdkafka properties for the producer only.
    #[serde(default)]
    pub producer: BTreeMap<String, ClientValue>,
}

/// Kafka settings of the service (README "Running the service (Kafka)", README "Config reference").
#[derive(Clone, Debug, PartialEq)]
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
    /// The compacted topic each task's store is mirrored to (None: no changelog).
    pub changelog_topic: Option<String>,
    /// librdkafka's `sasl.password`, from `sasl_password_file` or `kafka.client`.
    pub sasl_password: Option<Secret>,
    /// `kafka.sasl_password_file`, if set: read again while the cluster refuses the
    /// worker, so a fixed or rotated password is taken without a restart.
    pub sasl_password_file: Option<PathBuf>,
    /// The OAUTHBEARER token's file, read again before each token expires.
    pub oauthbearer_token_file: Option<PathBuf>,
    /// librdkafka properties for every client (flattened, dotted keys; `sasl.password`
    /// is taken out into [`KafkaSettings::sasl_password`]).
    pub client: Vec<(String, String)>,
    /// librdkafka properties for the consumer only.
    pub consumer: Vec<(String, String)>,
    /// librdkafka properties for the producer only.
    pub producer: Vec<(String, String)>,
}

/// Properties churnwatch sets itself: offsets are stored only after effects.
const OWN_PROPERTIES: [&str; 4] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
];

impl RawKafka {
    /// Checks the section and builds its settings.
    pub fn validate(&self, p: &mut Problems) -> KafkaSettings {
        let k = self;
        p.when(k.bootstrap_servers.trim().is_empty(), || {
            "kafka.bootstrap_servers: must name at least one host:port".into()
        });
        p.when(k.group_id.trim().is_empty(), || {
            "kafka.group_id: must not be empty".into()
        });
        p.when(k.topics.is_empty(), || {
            "kafka.topics: must name at least one input topic".into()
        });
        for (i, t) in k.topics.iter().enumerate() {
            if t.trim().is_empty() {
                p.push("kafka.topics: a topic name is empty");
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
        let changelog_topic = k.changelog.then(|| {
            let t = k.changelog_topic.trim();
            if t.is_empty() {
                crate::changelog::default_topic(&k.group_id)
            } else {
                t.to_string()
            }
        });
        if let Some(t) = &changelog_topic {
            p.when(
                k.topics.contains(t) || *t == k.dlq_topic || *t == k.alerts_topic,
                || {
                    format!(
                        "kafka.changelog_topic: `{t}` is also an input or output topic; the changelog needs a topic of its own"
                    )
                },
            );
        }
        p.when(k.dlq_topic == k.alerts_topic, || {
            "kafka.dlq_topic and kafka.alerts_topic: must differ".into()
        });
        p.when(k.max_batch == 0, || {
            "kafka.max_batch: must be at least 1".into()
        });
        p.when(k.max_buffered_records == 0, || {
            "kafka.max_buffered_records: must be at least 1".into()
        });
        p.when(k.commit_interval.0.is_zero(), || {
            "kafka.commit_interval: must be positive".into()
        });
        let mut client = flatten(&k.client);
        let inline = client
            .iter()
            .position(|(key, _)| key == "sasl.password")
            .map(|i| client.remove(i).1);
        let sasl_password = secret::Source {
            key: "kafka.sasl_password",
            inline: inline.as_deref(),
            file: &k.sasl_password_file,
        }
        .read(p);
        let consumer = flatten(&k.consumer);
        let producer = flatten(&k.producer);
        let oauthbearer_token_file = (!k.oauthbearer_token_file.as_os_str().is_empty())
            .then(|| k.oauthbearer_token_file.clone());
        if oauthbearer_token_file.is_some() {
            let mechanism = client
                .iter()
                .find(|(key, _)| key == "sasl.mechanisms" || key == "sasl.mechanism");
            p.when(mechanism.is_some_and(|(_, m)| m != "OAUTHBEARER"), || {
                "kafka.oauthbearer_token_file: set, but kafka.client's sasl.mechanisms is not \"OAUTHBEARER\"".into()
            });
            p.when(client.iter().any(|(key, _)| key.starts_with("sasl.oauthbearer.")), || {
                "kafka.oauthbearer_token_file: set together with kafka.client's sasl.oauthbearer.* (librdkafka's own token source); use one".into()
            });
        }
        for (key, _) in client.iter().chain(&consumer).chain(&producer) {
            p.when(OWN_PROPERTIES.contains(&key.as_str()), || format!(
                "kafka.client: `{key}` is set by churnwatch itself (use kafka.bootstrap_servers / kafka.group_id; offsets are stored only after effects)"
            ));
        }
        KafkaSettings {
            bootstrap_servers: k.bootstrap_servers.clone(),
            group_id: k.group_id.clone(),
            topics: k.topics.clone(),
            dlq_topic: k.dlq_topic.clone(),
            alerts_topic: k.alerts_topic.clone(),
            max_task_idle: k.max_task_idle.0,
            commit_interval: k.commit_interval.0,
            max_batch: k.max_batch,
            max_buffered_records: k.max_buffered_records,
            changelog_topic,
            sasl_password,
            sasl_password_file: (!k.sasl_password_file.as_os_str().is_empty())
                .then(|| k.sasl_password_file.clone()),
            oauthbearer_token_file,
            client,
            consumer,
            producer,
        }
    }
}

impl KafkaSettings {
    /// `kafka.sasl_password_file` read again: None when no file is configured, an
    /// error (never quoting the file's content) when it cannot be read or is empty.
    pub fn reread_sasl_password(&self) -> Option<Result<Secret, String>> {
        let file = self.sasl_password_file.as_deref()?;
        let mut p = Problems::new();
        let read = secret::Source {
            key: "kafka.sasl_password",
            inline: None,
            file,
        }
        .read(&mut p);
        Some(match read {
            Some(s) if p.is_empty() => Ok(s),
            _ => Err(p.into_lines().join("; ")),
        })
    }
}

/// A `kafka.client`-style table as librdkafka's dotted properties.
fn flatten(table: &BTreeMap<String, ClientValue>) -> Vec<(String, String)> {
    fn walk(prefix: &str, table: &BTreeMap<String, ClientValue>, out: &mut Vec<(String, String)>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                ClientValue::Table(t) => walk(&key, t, out),
                ClientValue::Bool(b) => out.push((key, b.to_string())),
                ClientValue::Int(i) => out.push((key, i.to_string())),
                ClientValue::Float(f) => out.push((key, f.to_string())),
                ClientValue::Text(s) => out.push((key, s.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}
