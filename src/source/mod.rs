//! Where events come from: JSONL files (replay, simulate); Kafka comes later.

pub mod file;
