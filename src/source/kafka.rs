//! Kafka as the event source (docs/design.md §4 Tasks, §11 Restart): client settings, the
//! consumer context that forwards rebalances to the worker, what the worker needs to
//! answer them (the group's committed offsets, the assignment call), topic checks and
//! partitioning. Which task starts, and from where, is the worker's decision
//! (`worker::tasks`): it owns the stores whose offsets decide it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Statistics};

use crate::config::KafkaSettings;
use crate::event::{self, Event, Reject};
use crate::health::Health;
use crate::source::token;

/// The properties librdkafka itself marks sensitive (`_RK_SENSITIVE` in its
/// `rdkafka_conf.c`, 2.12), but `sasl.username`: an operator debugging a login needs
/// to see which user was tried, and a user name alone opens nothing.
const SECRET_PROPERTIES: [&str; 12] = [
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
];

/// Name endings that mark a secret in properties the list does not know (a newer
/// librdkafka, a plugin's own properties).
const SECRET_SUFFIXES: [&str; 7] = [
    "password",
    "passphrase",
    "secret",
    "token",
    ".pem",
    ".config",
    "_key",
];

/// Properties whose values are never logged: the explicit list, then the suffix rules.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_PROPERTIES.contains(&k.as_str()) || SECRET_SUFFIXES.iter().any(|s| k.ends_with(s))
}

/// Churnwatch's defaults, then the operator's `kafka.client`, then `own` (the
/// client-specific table). Keys churnwatch must own (`group.id`, offset storing) are
/// refused by config validation, so the operator cannot override them here.
fn client_config(
    k: &KafkaSettings,
    defaults: &[(&str, String)],
    own: &[(String, String)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers);
    // Connection state and lag come from the statistics callback.
    c.set("statistics.interval.ms", "1000");
    for (key, value) in defaults {
        c.set(*key, value);
    }
    for (key, value) in k.client.iter().chain(own) {
        c.set(key, value);
    }
    if let Some(password) = &k.sasl_password {
        c.set("sasl.password", password.expose());
    }
    if k.oauthbearer_token_file.is_some() && c.get("sasl.mechanisms").is_none() {
        c.set("sasl.mechanisms", "OAUTHBEARER");
    }
    // librdkafka's own default CA store is the one its OpenSSL was built with, which a
    // statically linked OpenSSL does not have: "probe" finds the system bundle
    // (/etc/ssl/certs/… on Debian), as a dynamically linked client would.
    let tls = c
        .get("security.protocol")
        .is_some_and(|p| p.eq_ignore_ascii_case("ssl") || p.eq_ignore_ascii_case("sasl_ssl"));
    if tls && c.get("ssl.ca.location").is_none() && c.get("ssl.ca.pem").is_none() {
        c.set("ssl.ca.location", "probe");
    }
    c
}

/// The librdkafka settings of the consumer, as they will be applied.
pub fn consumer_config(k: &KafkaSettings) -> ClientConfig {
    let defaults = [
        ("group.id", k.group_id.clone()),
        // Range assignment gives one member partition p of every co-partitioned topic.
        ("partition.assignment.strategy", "range".into()),
        ("auto.offset.reset", "earliest".into()),
        // The worker stores a record's offset once its effects are done; the periodic
        // commit only sends what was stored.
        ("enable.auto.commit", "true".into()),
        ("enable.auto.offset.store", "false".into()),
        (
            "auto.commit.interval.ms",
            k.commit_interval.as_millis().to_string(),
        ),
        ("enable.partition.eof", "false".into()),
    ];
    client_config(k, &defaults, &k.consumer)
}

/// The group's session timeout and heartbeat interval, as the consumer will use them
/// (librdkafka's defaults, 45 s and 3 s, unless `kafka.consumer` sets them).
pub fn group_timing(k: &KafkaSettings) -> (Duration, Duration) {
    let c = consumer_config(k);
    let ms = |key: &str, default: u64| {
        c.get(key)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::from_millis(default), Duration::from_millis)
    };
    (
        ms("session.timeout.ms", 45_000),
        ms("heartbeat.interval.ms", 3_000),
    )
}

/// The librdkafka settings of the producer of alerts and dead letters.
pub fn producer_config(k: &KafkaSettings) -> ClientConfig {
    let defaults = [
        ("acks", "all".to_string()),
        ("linger.ms", "5".into()),
        // Records stay queued through a broker outage; the worker decides when to give
        // up (shutdown grace), and then does not store the offsets they came from.
        ("message.timeout.ms", "0".into()),
    ];
    client_config(k, &defaults, &k.producer)
}

/// The settings with secret values masked, for logs.
pub fn describe(c: &ClientConfig) -> String {
    let mut pairs: Vec<String> = c
        .config_map()
        .iter()
        .map(|(k, v)| {
            if is_secret(k) {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    pairs.sort();
    pairs.join(" ")
}

/// The Java client's murmur2 hash, with which co-partitioned producers place keys.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java default partitioner picks for `key`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Reject class of a record whose key is not its payload's `customer_id`.
pub const KEY_MISMATCH: &str = "key_mismatch";

/// Reject class of a record whose value is null or empty.
pub const EMPTY_VALUE: &str = "empty_value";

/// One input record as the Kafka adapter judges it.
#[derive(Debug)]
pub struct Checked {
    /// The event, or why the record goes to the dead-letter topic.
    pub event: Result<Event, Reject>,
    /// The record's partition is not murmur2 of its key (of its payload's `customer_id`
    /// when the key is null), so its customer's events may be split across tasks.
    pub misrouted: bool,
}

/// Parses a record's value and checks what only Kafka has: the key must be the
/// payload's `customer_id` (README, "Running the service"), else the event could land in
/// another customer's task; a null key is taken from the payload. Reasons quote neither
/// the key nor the id. The size and time limits are those of every mode (README "Input:
/// limits and reject classes"), with `now` the wall clock.
pub fn check_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    (partition, partitions): (i32, i32),
    limits: &event::Limits,
    now: crate::engine::clock::Stamp,
) -> Checked {
    let misrouted_by = |k: &[u8]| partition_for(k, partitions) != partition;
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Checked {
            event: Err(Reject {
                class: EMPTY_VALUE,
                reason: "record value is null or empty".into(),
            }),
            misrouted: key.is_some_and(misrouted_by),
        };
    };
    let parsed = limits.parse(value, now);
    let misrouted = match (key, &parsed) {
        (Some(k), _) => misrouted_by(k),
        (None, Ok(ev)) => misrouted_by(ev.customer_id.as_bytes()),
        (None, Err(_)) => false,
    };
    let event = parsed.and_then(|ev| match key {
        Some(k) if k != ev.customer_id.as_bytes() => Err(Reject {
            class: KEY_MISMATCH,
            reason: "record key differs from field `customer_id`".into(),
        }),
        _ => Ok(ev),
    });
    Checked { event, misrouted }
}

/// Where a task's lanes start after an assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// From the offsets this worker's state has reached (per lane; None: group start).
    Local(Vec<Option<i64>>),
    /// No one has processed this task yet: from the group's start (committed or earliest).
    Fresh,
}

/// A rebalance as the consumer's callback forwards it to the worker. The callback
/// decides nothing: librdkafka keeps the group waiting until the worker answers with
/// [`assign`] or [`unassign`] (docs/design.md §11 Restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalanced {
    /// The group gave this member these (topic, partition)s; none is read until the
    /// worker has decided where each task starts and assigned them.
    Assigned(Vec<(String, i32)>),
    /// Every partition was revoked (eager protocol): buffered records are dropped.
    Revoked,
}

/// The worker's end of the rebalance hand-off: what the callback forwarded, and the
/// switch that makes the callback answer by itself once no loop is left to.
#[derive(Debug)]
pub struct Rebalances {
    rx: mpsc::Receiver<Rebalanced>,
    closing: Arc<AtomicBool>,
}

impl Rebalances {
    /// The rebalances forwarded since the last call, oldest first.
    pub fn take(&self) -> Vec<Rebalanced> {
        self.rx.try_iter().collect()
    }

    /// No loop will answer from now on: the callback gives up a revoked assignment at
    /// once, and a new one is not taken. The returned rebalances were forwarded but not
    /// answered yet; the caller answers them ([`assign_nothing`]) so that the group
    /// does not wait for them.
    pub fn close(&self) -> Vec<Rebalanced> {
        self.closing.store(true, Ordering::SeqCst);
        self.take()
    }
}

/// Gives up the assignment (the end of a revoke), logging a failure.
pub fn unassign<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    if let Err(e) = consumer.unassign() {
        tracing::error!(error = %e, "unassign failed");
    }
}

/// Answers an assignment by taking none of it (nobody is left to read it).
pub fn assign_nothing<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    if let Err(e) = consumer.assign(&TopicPartitionList::new()) {
        tracing::error!(error = %e, "empty assignment failed");
    }
}

/// Assigns `partitions` of the tasks in `starts`, each lane from its task's start (a
/// fresh lane, or one without a local offset, from the group's committed offset or the
/// earliest); the partitions of other tasks are not read.
pub fn assign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    partitions: &[(String, i32)],
    starts: &BTreeMap<i32, Start>,
) {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        let Some(start) = starts.get(p) else {
            continue;
        };
        let lane = topics.iter().position(|t| t == topic);
        let offset = match (start, lane) {
            (Start::Local(pos), Some(lane)) => pos
                .get(lane)
                .copied()
                .flatten()
                .map_or(Offset::Invalid, Offset::Offset),
            _ => Offset::Invalid,
        };
        if let Err(err) = tpl.add_partition_offset(topic, *p, offset) {
            tracing::error!(error = %err, topic, partition = p, "cannot add partition to assignment");
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "assignment failed");
    }
}

/// The group's committed offset of every lane of the tasks in `partitions`, per task
/// (None: nothing committed for that lane).
pub fn committed_lanes<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    partitions: &[(String, i32)],
    timeout: Duration,
) -> Result<BTreeMap<i32, Vec<Option<i64>>>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut by_task: BTreeMap<i32, Vec<Option<i64>>> = BTreeMap::new();
    for (_, p) in partitions {
        by_task
            .entry(*p)
            .or_insert_with(|| vec![None; topics.len()]);
    }
    for e in committed.elements() {
        let lane = topics.iter().position(|t| t == e.topic());
        if let (Some(lane), Offset::Offset(o)) = (lane, e.offset()) {
            if let Some(v) = by_task.get_mut(&e.partition()) {
                v[lane] = Some(o);
            }
        }
    }
    Ok(by_task)
}

/// Whether every lane's committed offset (if any) is at or before the start of its
/// partition: what a worker claiming a new task commits before reading it.
pub fn nothing_processed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    task: i32,
    committed: &[Option<i64>],
    timeout: Duration,
) -> bool {
    committed.iter().zip(topics).all(|(c, topic)| match c {
        None => true,
        Some(c) => match consumer.fetch_watermarks(topic, task, timeout) {
            Ok((low, _)) => *c <= low,
            Err(e) => {
                tracing::warn!(error = %e, topic, task, "cannot read where the partition starts");
                false
            }
        },
    })
}

/// Commits `offsets` (topic, partition, next offset) to the group and waits for the
/// broker's answer.
pub fn commit_now<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &[(&str, i32, i64)],
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for &(t, p, o) in offsets {
        tpl.add_partition_offset(t, p, Offset::Offset(o))?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
}

/// The consumer's context: forwards rebalances to the worker, watches statistics and
/// client errors for health.
///
/// With a `BaseConsumer` the rebalance callback runs inside `poll` on the worker's own
/// thread, so it cannot wait for the worker to answer: it forwards the rebalance and
/// returns, and the worker answers (`assign`, `unassign`) right after that `poll`,
/// while librdkafka holds the group waiting for the call.
pub struct WorkerContext {
    health: Arc<Health>,
    forward: mpsc::Sender<Rebalanced>,
    closing: Arc<AtomicBool>,
    token_file: Option<PathBuf>,
}

impl WorkerContext {
    /// A context and the worker's end of its rebalance hand-off.
    /// `token_file`: `kafka.oauthbearer_token_file`, if set.
    pub fn new(health: Arc<Health>, token_file: Option<PathBuf>) -> (WorkerContext, Rebalances) {
        let (forward, rx) = mpsc::channel();
        let closing = Arc::new(AtomicBool::new(false));
        let ctx = WorkerContext {
            health,
            forward,
            closing: closing.clone(),
            token_file,
        };
        (ctx, Rebalances { rx, closing })
    }

    /// Hands `ev` to the worker; false when no worker will answer it.
    fn forward(&self, ev: Rebalanced) -> bool {
        !self.closing.load(Ordering::SeqCst) && self.forward.send(ev).is_ok()
    }
}

/// A librdkafka log line as a tracing event at its level (target `librdkafka`), for
/// every client the worker makes.
pub fn forward_log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{log_message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
    }
}

/// A librdkafka error text without its varying "(after 10ms in state AUTH_REQ)" tail,
/// so repeats of one cause compare equal.
fn without_timing(reason: &str) -> &str {
    match reason.rfind(" (after ") {
        Some(i) if reason.ends_with(')') => &reason[..i],
        _ => reason,
    }
}

/// The OAUTHBEARER token of `token_file`, for a client context asked for one; a failure
/// is logged here (librdkafka retries in a few seconds).
pub fn oauth_token(
    token_file: Option<&Path>,
) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
    let path = token_file
        .ok_or("sasl.mechanisms is OAUTHBEARER, but kafka.oauthbearer_token_file is not set")?;
    token::from_file(path, token::now_ms()).map_err(|e| {
        tracing::error!(error = %e, "kafka: no OAUTHBEARER token");
        e.into()
    })
}

impl ClientContext for WorkerContext {
    // Asked only when sasl.mechanisms is OAUTHBEARER.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.token_file.as_deref())
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        self.health.set_connected(up);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                // Logged once as "kafka disconnected", not once per retry.
                self.health.set_connected(false);
                tracing::debug!(error = %error, reason, "kafka client error");
                return;
            }
            Some(RDKafkaErrorCode::Authentication) => {
                // librdkafka retries every few seconds with the same cause: say it once
                // per cause, and tell /readyz.
                let cause = without_timing(reason);
                if self
                    .health
                    .set_refused_by_kafka(Some(format!("authentication refused: {cause}")))
                {
                    tracing::error!(
                        cause,
                        "kafka: the cluster refused the worker's login (check sasl.username and kafka.sasl_password_file)"
                    );
                }
                return;
            }
            _ => {}
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for WorkerContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                if !self.forward(Rebalanced::Assigned(partitions)) {
                    assign_nothing(base_consumer);
                }
            }
            other => {
                if other != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!(error = ?other, "rebalance error");
                }
                tracing::info!("tasks revoked");
                // The worker checkpoints, commits and only then unassigns: the group
                // waits for that call, so the next owner of a task sees offsets that
                // match the state this worker keeps for it. With no loop left (it
                // already checkpointed and committed), give them up at once.
                if !self.forward(Rebalanced::Revoked) {
                    unassign(base_consumer);
                }
            }
        }
    }
}

/// The consumer type the worker uses.
pub type WorkerConsumer = BaseConsumer<WorkerContext>;

/// Builds the consumer.
pub fn consumer(k: &KafkaSettings, ctx: WorkerContext) -> anyhow::Result<WorkerConsumer> {
    let cfg = consumer_config(k);
    tracing::info!(config = %describe(&cfg), "kafka consumer");
    let consumer: WorkerConsumer = cfg.create_with_context(ctx)?;
    if let Some(path) = &k.oauthbearer_token_file {
        token::set_first(consumer.client(), path);
    }
    Ok(consumer)
}

/// The broker's cached (low, high) watermarks of a partition, from its last fetch
/// response (−1 when not known yet). Unlike ListOffsets this costs no request.
pub fn cached_watermarks(consumer: &WorkerConsumer, topic: &CString, partition: i32) -> (i64, i64) {
    let mut low: i64 = -1;
    let mut high: i64 = -1;
    // SAFETY: the client pointer is valid for the consumer's lifetime, `topic` is a
    // NUL-terminated string that outlives the call, and the out-pointers are local.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        (low, high)
    } else {
        (-1, -1)
    }
}

/// Checks the topics the worker needs and returns the input partition count.
pub fn check_topics(
    consumer: &WorkerConsumer,
    k: &KafkaSettings,
    timeout: Duration,
) -> Result<i32, TopicError> {
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| TopicError::Unreachable(e.to_string()))?;
    let count = |name: &str| -> Option<i32> {
        md.topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
    };
    let mut problems = Vec::new();
    let mut counts = Vec::new();
    for t in &k.topics {
        match count(t) {
            Some(n) => counts.push((t.clone(), n)),
            None => problems.push(format!("input topic `{t}` does not exist (kafka.topics)")),
        }
    }
    for (key, t) in [
        ("kafka.dlq_topic", &k.dlq_topic),
        ("kafka.alerts_topic", &k.alerts_topic),
    ] {
        if count(t).is_none() {
            problems.push(format!("output topic `{t}` does not exist ({key})"));
        }
    }
    if let Some((_, first)) = counts.first() {
        if counts.iter().any(|(_, n)| n != first) {
            problems.push(format!(
                "input topics are not co-partitioned (equal partition counts needed): {}",
                counts
                    .iter()
                    .map(|(t, n)| format!("{t}={n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(counts.first().map_or(0, |(_, n)| *n))
    } else {
        Err(TopicError::Invalid(problems))
    }
}

/// The input topics among `topics` the cluster does not know (deleted while running):
/// one metadata request per topic, so a large cluster's other topics are not listed.
pub fn missing_topics(
    consumer: &WorkerConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let mut missing = Vec::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), timeout)?;
        let known = md.topics().iter().find(|m| m.name() == t).is_some_and(|m| {
            // Other errors (a leader election) are passing, not a missing topic.
            m.error() != Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                && !m.partitions().is_empty()
        });
        if !known {
            missing.push(t.clone());
        }
    }
    Ok(missing)
}

/// Why the topics cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The cluster did not answer (retry).
    #[error("cannot reach the Kafka cluster: {0}")]
    Unreachable(String),
    /// Topics are missing or not co-partitioned (an operator must fix this).
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_of_one_cause_compare_equal_without_their_timing() {
        let a = "sasl_ssl://localhost:1/bootstrap: SASL authentication error: SASL SCRAM authentication failed: broker responded with invalid-proof (after 10ms in state AUTH_REQ)";
        let b = a.replace("10ms", "3ms");
        assert_eq!(without_timing(a), without_timing(&b));
        assert!(without_timing(a).ends_with("invalid-proof"));
        assert_eq!(without_timing("no timing here"), "no timing here");
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Vectors from Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn partition_is_non_negative_and_in_range() {
        for i in 0..1000 {
            let key = format!("customer-{i}");
            let p = partition_for(key.as_bytes(), 7);
            assert!((0..7).contains(&p));
        }
    }

    fn complaint(customer: &str) -> Vec<u8> {
        format!(r#"{{"event_id":"e1","type":"complaint","customer_id":"{customer}","occurred_at":"2025-01-01T00:00:00Z"}}"#).into_bytes()
    }

    #[test]
    fn a_key_that_is_not_the_customer_id_is_its_own_reject_quoting_neither() {
        let home = partition_for(b"alice-7", 4);
        let c = check_record(
            Some(b"bob-3"),
            Some(&complaint("alice-7")),
            (home, 4),
            &event::Limits::default(),
            crate::source::wall_now(),
        );
        let rej = c.event.expect_err("mismatch");
        assert_eq!(rej.class, KEY_MISMATCH);
        assert_eq!(rej.reason, "record key differs from field `customer_id`");
        let ok = check_record(
            Some(b"alice-7"),
            Some(&complaint("alice-7")),
            (home, 4),
            &event::Limits::default(),
            crate::source::wall_now(),
        );
        assert!(ok.event.is_ok() && !ok.misrouted);
        // The payload's id after unescaping is what the key is compared with.
        let escaped = complaint(r"alice-7");
        assert!(check_record(
            Some(b"alice-7"),
            Some(&escaped),
            (home, 4),
            &event::Limits::default(),
            crate::source::wall_now()
        )
        .event
        .is_ok());
    }

    #[test]
    fn a_null_key_is_routed_by_the_payload_and_a_missing_value_is_rejected() {
        let home = partition_for(b"carol", 3);
        let c = check_record(
            None,
            Some(&complaint("carol")),
            (home, 3),
            &event::Limits::default(),
            crate::source::wall_now(),
        );
        assert!(c.event.is_ok() && !c.misrouted);
        let c = check_record(
            None,
            Some(&complaint("carol")),
            ((home + 1) % 3, 3),
            &event::Limits::default(),
            crate::source::wall_now(),
        );
        assert!(c.event.is_ok() && c.misrouted, "routed by the payload's id");
        for value in [None, Some(&b""[..])] {
            let c = check_record(
                Some(b"carol"),
                value,
                (home, 3),
                &event::Limits::default(),
                crate::source::wall_now(),
            );
            assert_eq!(c.event.expect_err("empty").class, EMPTY_VALUE);
        }
        // A bad payload with no key cannot be routed: not counted as misrouted.
        let c = check_record(
            None,
            Some(b"{oops"),
            ((home + 1) % 3, 3),
            &event::Limits::default(),
            crate::source::wall_now(),
        );
        assert!(c.event.is_err() && !c.misrouted);
    }

    /// Every property the vendored librdkafka marks `_RK_SENSITIVE`, read from its source
    /// (found through `cargo metadata`), so that an upgrade that adds one fails here.
    fn librdkafka_sensitive_properties() -> Vec<String> {
        // Only the host's crates: a fresh cache holds no other platform's, and
        // `--offline` would fail on them.
        let rustc = std::process::Command::new("rustc")
            .arg("-vV")
            .output()
            .expect("rustc -vV");
        let rustc = String::from_utf8_lossy(&rustc.stdout).into_owned();
        let host = rustc
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .expect("rustc names the host");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked", "--offline"])
            .args(["--filter-platform", host])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
        let manifest = meta["packages"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "rdkafka-sys"))
            .and_then(|p| p["manifest_path"].as_str())
            .expect("rdkafka-sys is a dependency");
        let conf = std::path::Path::new(manifest).with_file_name("librdkafka/src/rdkafka_conf.c");
        let text = std::fs::read_to_string(&conf).expect("librdkafka's rdkafka_conf.c");
        text.split("_RK_SENSITIVE")
            .skip(1)
            .filter_map(|after| after.split('"').nth(1).map(str::to_string))
            .filter(|name| {
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            })
            .collect()
    }

    #[test]
    fn every_property_librdkafka_calls_sensitive_is_masked() {
        let names = librdkafka_sensitive_properties();
        assert!(
            names.len() >= 10,
            "too few found, the parse broke: {names:?}"
        );
        for name in names.iter().filter(|n| *n != "sasl.username") {
            assert!(
                is_secret(name),
                "`{name}` is sensitive in librdkafka but would be logged"
            );
        }
        // Unknown names are caught by their endings.
        for name in [
            "sasl.aws.secret",
            "ssl.truststore.password",
            "my.plugin.token",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in [
            "sasl.mechanism",
            "security.protocol",
            "ssl.endpoint.identification.algorithm",
        ] {
            assert!(!is_secret(name), "{name}");
        }
    }

    #[test]
    fn secrets_are_masked_in_descriptions() {
        let mut c = ClientConfig::new();
        c.set("sasl.password", "hunter2");
        c.set("sasl.username", "cw");
        let d = describe(&c);
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("sasl.username=cw"));
    }

    #[test]
    fn operator_properties_pass_through_but_offset_storing_stays_manual() {
        let cfg = crate::config::load_with_env(
            None,
            [
                (
                    "CHURNWATCH__KAFKA__CLIENT__SECURITY__PROTOCOL".to_string(),
                    "SASL_SSL".to_string(),
                ),
                (
                    "CHURNWATCH__KAFKA__CONSUMER__SESSION__TIMEOUT__MS".to_string(),
                    "6000".to_string(),
                ),
            ],
        )
        .expect("config");
        let c = consumer_config(&cfg.kafka);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(
            group_timing(&cfg.kafka),
            (Duration::from_secs(6), Duration::from_secs(3)),
            "the pause watch times its hold by what the consumer really uses"
        );
        let p = producer_config(&cfg.kafka);
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("session.timeout.ms"), None);
    }
}
