//! The changelog topic on the cluster (docs/design.md §16 State follows tasks): made
//! when missing and refused with the wrong shape, a task's records written (and waited
//! for) and read back. What the records mean is `crate::changelog`'s.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};

use crate::changelog::Record;
use crate::config::KafkaSettings;
use crate::source::kafka;

/// How long the cleaner must leave a changelog record alone (7 days): a checkpoint
/// whose writer stopped half-way can hide an older value of the same row from
/// compaction only once it is older than this, and the next owner rewrites the whole
/// state long before (docs/design.md §16).
pub const MIN_COMPACTION_LAG_MS: &str = "604800000";

/// How long a write or a read may go without progress before the task is given up.
const STALL: Duration = Duration::from_secs(60);

/// The context of the changelog's clients: log lines and OAUTHBEARER tokens as the
/// worker's, and the producer's delivery reports.
#[derive(Default)]
pub struct ChangelogContext {
    token_file: Option<PathBuf>,
    /// The number of the write in progress, and per record of it: its offset, or why
    /// it failed.
    delivered: Mutex<(usize, Vec<Delivered>)>,
}

/// One record's delivery report: its offset, or why it failed (None: none yet).
type Delivered = Option<Result<i64, String>>;

/// A record's delivery opaque: its write's number (low 32 bits) and its index in the
/// write, so that a late report of a write given up never fills another's slot.
fn opaque(write: usize, i: usize) -> usize {
    ((write & 0xffff_ffff) << 32) | (i & 0xffff_ffff)
}

impl ClientContext for ChangelogContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        kafka::oauth_token(self.token_file.as_deref())
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka::forward_log(level, fac, log_message);
    }

    // The worker's consumer reports connection failures; these clients meet the same
    // brokers.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "kafka changelog client error");
    }

    fn stats(&self, _: rdkafka::Statistics) {}
}

impl ProducerContext for ChangelogContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let got = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        let mut d = self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (write, i) = (tag >> 32, tag & 0xffff_ffff);
        if write != (d.0 & 0xffff_ffff) {
            return;
        }
        if let Some(slot) = d.1.get_mut(i) {
            *slot = Some(got);
        }
    }
}

impl ConsumerContext for ChangelogContext {}

/// The changelog topic and the clients that write and read it.
pub struct ChangelogTopic {
    topic: String,
    producer: BaseProducer<ChangelogContext>,
    reader: ClientConfig,
    admin: ClientConfig,
    token_file: Option<PathBuf>,
}

impl ChangelogTopic {
    /// Clients for `topic` with the worker's connection settings.
    pub fn new(k: &KafkaSettings, topic: &str) -> anyhow::Result<ChangelogTopic> {
        let mut producer_cfg = kafka::producer_config(k);
        // Retries never reorder or repeat a record: the restorer relies on the order.
        producer_cfg.set("enable.idempotence", "true");
        let ctx = ChangelogContext {
            token_file: k.oauthbearer_token_file.clone(),
            ..ChangelogContext::default()
        };
        let producer: BaseProducer<ChangelogContext> = producer_cfg.create_with_context(ctx)?;
        if let Some(path) = &k.oauthbearer_token_file {
            crate::source::token::set_first(producer.client(), path);
        }
        let mut reader = kafka::consumer_config(k);
        // A reader of one partition by assignment: it never joins or commits to its
        // group (librdkafka wants one named to assign at all).
        reader.set("group.id", format!("{}-restore", k.group_id));
        reader.set("enable.auto.commit", "false");
        reader.set("auto.offset.reset", "earliest");
        Ok(ChangelogTopic {
            topic: topic.to_string(),
            producer,
            reader,
            admin: kafka::producer_config(k),
            token_file: k.oauthbearer_token_file.clone(),
        })
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.topic
    }

    /// Creates the topic when missing (one partition per task, compacted); an existing
    /// one must have `partitions` partitions and a compacting cleanup policy.
    pub fn ensure(&self, partitions: i32) -> anyhow::Result<()> {
        let ctx = ChangelogContext {
            token_file: self.token_file.clone(),
            ..ChangelogContext::default()
        };
        let admin: AdminClient<ChangelogContext> = self.admin.create_with_context(ctx)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let found = || -> anyhow::Result<Option<i32>> {
            let md = admin
                .inner()
                .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
                .context("cannot read the changelog topic's metadata")?;
            Ok(md
                .topics()
                .iter()
                .find(|t| {
                    t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty()
                })
                .map(|t| t.partitions().len() as i32))
        };
        let t = &self.topic;
        let mut shape = found()?;
        if shape.is_none() {
            let new = NewTopic::new(t, partitions, TopicReplication::Fixed(-1))
                .set("cleanup.policy", "compact")
                .set("min.compaction.lag.ms", MIN_COMPACTION_LAG_MS);
            let res = rt.block_on(admin.create_topics([&new], &opts))?;
            let mut exists = false;
            for r in res {
                match r {
                    Ok(_) => {}
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => exists = true,
                    Err((name, e)) => bail!("cannot create the changelog topic {name}: {e}"),
                }
            }
            if !exists {
                tracing::info!(topic = %t, partitions, "changelog topic created");
                return Ok(());
            }
            // Another replica created it a moment ago: its shape is checked like any
            // existing topic's, once the metadata shows it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while shape.is_none() {
                if Instant::now() > deadline {
                    bail!("the changelog topic {t} exists but its metadata shows no partitions");
                }
                std::thread::sleep(Duration::from_millis(200));
                shape = found()?;
            }
        }
        let Some(n) = shape else {
            bail!("the changelog topic {t} was not found after it was created");
        };
        if n != partitions {
            bail!(
                "the changelog topic {t} has {n} partitions but there are {partitions} tasks (kafka.changelog_topic; it needs one partition per task)"
            );
        }
        let res = rt.block_on(admin.describe_configs([&ResourceSpecifier::Topic(t)], &opts))?;
        for r in res {
            let policy = r
                .ok()
                .and_then(|c| c.get("cleanup.policy").and_then(|e| e.value.clone()));
            match policy {
                Some(p) if p.split(',').any(|v| v.trim() == "compact") => {}
                Some(p) => bail!(
                    "the changelog topic {t} has cleanup.policy={p}; it needs compact (old state would be deleted by time, not replaced by newer)"
                ),
                None => tracing::warn!(topic = %t, "cannot read the changelog topic's cleanup.policy; assuming compact"),
            }
        }
        Ok(())
    }

    /// Writes `records` to partition `p` in order and waits until the cluster has them
    /// all (acks=all); returns their offsets.
    pub fn write(&self, p: i32, records: &[Record]) -> anyhow::Result<Vec<i64>> {
        let write = {
            let mut d = self
                .producer
                .context()
                .delivered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            d.0 = d.0.wrapping_add(1);
            d.1.clear();
            d.1.resize(records.len(), None);
            d.0
        };
        for (i, (key, value)) in records.iter().enumerate() {
            let mut rec: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.topic, opaque(write, i))
                    .partition(p)
                    .key(key);
            if let Some(v) = value {
                rec = rec.payload(v);
            }
            let mut rec = Some(rec);
            while let Some(r) = rec.take() {
                match self.producer.send(r) {
                    Ok(()) => {}
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        self.producer.poll(Duration::from_millis(5));
                        rec = Some(r);
                    }
                    Err((e, _)) => bail!("cannot queue a changelog record for task {p}: {e}"),
                }
            }
        }
        let started = Instant::now();
        loop {
            self.producer.poll(Duration::from_millis(2));
            let d = self
                .producer
                .context()
                .delivered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(Err(e)) = d.1.iter().flatten().find(|r| r.is_err()) {
                bail!("the changelog of task {p} was not written: {e}");
            }
            if d.1.iter().all(Option::is_some) {
                return Ok(d
                    .1
                    .iter()
                    .flatten()
                    .filter_map(|r| r.clone().ok())
                    .collect());
            }
            drop(d);
            if started.elapsed() > STALL {
                bail!(
                    "the changelog of task {p} was not written within {}s",
                    STALL.as_secs()
                );
            }
        }
    }

    /// Reads partition `p` from offset `from` (0: its start) up to (not including)
    /// offset `before`, handing each record to `take` in order; progress is logged
    /// every 10 s.
    pub fn read(
        &self,
        p: i32,
        from: i64,
        before: i64,
        mut take: impl FnMut(i64, &[u8], Option<&[u8]>) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let ctx = ChangelogContext {
            token_file: self.token_file.clone(),
            ..ChangelogContext::default()
        };
        let consumer: BaseConsumer<ChangelogContext> = self.reader.create_with_context(ctx)?;
        if let Some(path) = &self.token_file {
            crate::source::token::set_first(consumer.client(), path);
        }
        let mut tpl = TopicPartitionList::new();
        let start = match from {
            0 => Offset::Beginning,
            o => Offset::Offset(o),
        };
        tpl.add_partition_offset(&self.topic, p, start)?;
        consumer.assign(&tpl)?;
        let (mut read, mut last) = (0u64, from - 1);
        let (mut progressed, mut logged) = (Instant::now(), Instant::now());
        while last + 1 < before {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    progressed = Instant::now();
                    if m.offset() >= before {
                        break;
                    }
                    take(m.offset(), m.key().unwrap_or_default(), m.payload())?;
                    last = last.max(m.offset());
                    read += 1;
                }
                Some(Err(e)) => tracing::warn!(task = p, error = %e, "reading the changelog"),
                None => {}
            }
            if progressed.elapsed() > STALL {
                bail!(
                    "task {p}: the changelog topic {} gave nothing for {}s at offset {} of {before}",
                    self.topic,
                    STALL.as_secs(),
                    last + 1
                );
            }
            if logged.elapsed() > Duration::from_secs(10) {
                tracing::info!(task = p, offset = last + 1, of = before, "restoring");
                logged = Instant::now();
            }
        }
        Ok(read)
    }
}
