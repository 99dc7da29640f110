//! Where events come from: JSONL files (replay, simulate) and Kafka (the service).

pub mod file;
pub mod kafka;
pub mod task;
