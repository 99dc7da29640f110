//! Producing alerts and dead letters without waiting on each one: every record belongs
//! to a batch, and a batch is *settled* once the broker acknowledged all its records.
//! The worker stores a batch's input offsets only when it is settled and every earlier
//! batch is too, so processing the next batch overlaps the broker's round trips while a
//! crash can still never skip an effect (docs/design.md §12 Guarantees).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};

/// A record that failed and must be sent again.
#[derive(Debug)]
pub struct Failed {
    /// The batch it belongs to.
    pub batch: usize,
    /// The record as it was.
    pub message: OwnedMessage,
    /// Why it failed.
    pub error: String,
}

#[derive(Debug, Default)]
struct Acks {
    acked: BTreeMap<usize, usize>,
    failed: Vec<Failed>,
}

/// Counts acknowledgements per batch.
#[derive(Debug, Default)]
pub struct AckContext {
    acks: Mutex<Acks>,
    token_file: Option<std::path::PathBuf>,
}

impl ClientContext for AckContext {
    // Asked only when sasl.mechanisms is OAUTHBEARER.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        crate::source::kafka::oauth_token(self.token_file.as_deref())
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::source::kafka::forward_log(level, fac, log_message);
    }

    // The consumer reports connection and login failures (and /readyz has them from
    // there); the producer meets the same brokers, so its copies are only for debugging.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::AllBrokersDown | Code::Authentication | Code::BrokerTransportFailure) => {
                tracing::debug!(error = %error, reason, "kafka producer error")
            }
            _ => tracing::warn!(error = %error, reason, "kafka producer error"),
        }
    }

    // The consumer's statistics carry what is watched (connection, lag); the producer's
    // would only flood the log once a second.
    fn stats(&self, _: rdkafka::Statistics) {}
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        let mut a = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => *a.acked.entry(batch).or_default() += 1,
            Err((e, m)) => a.failed.push(Failed {
                batch,
                message: m.detach(),
                error: e.to_string(),
            }),
        }
    }
}

/// A batch whose records are in flight, and what to do once they are all acknowledged.
#[derive(Debug)]
pub struct Batch<T> {
    id: usize,
    sent: usize,
    /// Carried to the caller when the batch settles (e.g. offsets to store).
    pub then: T,
}

/// The producer with its batch ledger.
pub struct Publisher<T> {
    producer: ThreadedProducer<AckContext>,
    open: usize,
    sent_open: usize,
    pending: VecDeque<Batch<T>>,
}

/// Why a record could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("cannot queue a record for {topic}: {error}")]
pub struct QueueError {
    topic: String,
    error: String,
    code: Option<rdkafka::error::RDKafkaErrorCode>,
}

impl QueueError {
    /// The record itself is refused (too large): sending it again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.code,
            Some(rdkafka::error::RDKafkaErrorCode::MessageSizeTooLarge)
        )
    }
}

impl<T> Publisher<T> {
    /// A publisher over a producer built from `cfg`; `token_file` is
    /// `kafka.oauthbearer_token_file`, if set.
    pub fn new(
        cfg: &ClientConfig,
        token_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Publisher<T>> {
        let ctx = AckContext {
            token_file: token_file.map(std::path::Path::to_path_buf),
            ..AckContext::default()
        };
        let producer: ThreadedProducer<AckContext> = cfg.create_with_context(ctx)?;
        if let Some(path) = token_file {
            crate::source::token::set_first(producer.client(), path);
        }
        Ok(Publisher {
            producer,
            open: 0,
            sent_open: 0,
            pending: VecDeque::new(),
        })
    }

    /// Queues a record into the open batch. A full local queue is waited out.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), QueueError> {
        let batch = self.open;
        self.enqueue(topic, key, payload, headers, batch)?;
        self.sent_open += 1;
        Ok(())
    }

    fn enqueue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        batch: usize,
    ) -> Result<(), QueueError> {
        let mut waited = Duration::ZERO;
        loop {
            let mut rec = BaseRecord::with_opaque_to(topic, batch).payload(payload);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            if let Some(h) = headers.clone() {
                rec = rec.headers(h);
            }
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::error::RDKafkaErrorCode::QueueFull)
                        && waited < Duration::from_secs(600) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                    waited += Duration::from_millis(5);
                }
                Err((e, _)) => {
                    return Err(QueueError {
                        topic: topic.to_string(),
                        error: e.to_string(),
                        code: e.rdkafka_error_code(),
                    })
                }
            }
        }
    }

    /// Closes the open batch; `then` is handed back once all its records are acknowledged.
    pub fn close(&mut self, then: T) {
        self.pending.push_back(Batch {
            id: self.open,
            sent: self.sent_open,
            then,
        });
        self.open += 1;
        self.sent_open = 0;
    }

    /// Batches closed and not settled yet.
    pub fn unsettled(&self) -> usize {
        self.pending.len()
    }

    /// Sends failed records again, then returns the leading batches that are settled,
    /// in order. Never blocks.
    pub fn settled(&mut self) -> Vec<T> {
        let (failed, acked) = {
            let mut a = self
                .producer
                .context()
                .acks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (std::mem::take(&mut a.failed), a.acked.clone())
        };
        for f in failed {
            tracing::warn!(topic = f.message.topic(), error = %f.error, "delivery failed; sending again");
            let headers = f.message.headers().cloned();
            if let Err(e) = self.enqueue(
                f.message.topic(),
                f.message.key(),
                f.message.payload().unwrap_or_default(),
                headers,
                f.batch,
            ) {
                tracing::error!(error = %e, "cannot send again; the batch stays unsettled");
            }
        }
        let mut out = Vec::new();
        while let Some(b) = self.pending.front() {
            if acked.get(&b.id).copied().unwrap_or(0) < b.sent {
                break;
            }
            if let Some(b) = self.pending.pop_front() {
                self.producer
                    .context()
                    .acks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .acked
                    .remove(&b.id);
                out.push(b.then);
            }
        }
        out
    }

    /// Waits for the producer's queue to drain (at most `timeout`).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush");
        }
    }
}
