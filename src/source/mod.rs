//! Where events come from: JSONL files (replay, simulate) and Kafka (the service).

pub mod changelog;
pub mod file;
pub mod kafka;
pub mod task;
pub mod tls_check;
pub mod token;

/// The wall clock as a [`Stamp`](crate::engine::clock::Stamp): the ceiling of event time
/// (`engine.max_future_skew`) is measured from it in every mode.
pub fn wall_now() -> crate::engine::clock::Stamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::engine::clock::Stamp::from_unix(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(crate::engine::clock::Stamp::MAX)
}
