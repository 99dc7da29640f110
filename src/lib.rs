//! churnwatch: an event-driven churn-alert worker.
//!
//! Purchase and support events go in; per-customer state, stages, churn_risk and alerts
//! come out; alerts that pass the guards become short emails rendered from templates.
//! The pure [`engine`] decides; [`source`] (files, Kafka), [`mail`], [`replay`] and
//! [`worker`] (the service) are the adapters around it.

#![warn(missing_docs)]

pub mod admin;
pub mod alert;
pub mod changelog;
pub mod config;
pub mod disk;
pub mod engine;
pub mod event;
pub mod health;
pub mod inspect;
pub mod mail;
pub mod metrics;
pub mod observe;
pub mod outbox;
pub mod pause;
pub mod preview;
pub mod problems;
pub mod progress;
pub mod publisher;
pub mod reload;
pub mod replay;
pub mod secret;
pub mod shutdown;
pub mod simulate;
pub mod source;
pub mod store;
pub mod worker;

pub use alert::{Alert, Decision};
pub use config::Config;
pub use engine::Engine;
pub use event::{Event, Reject};
