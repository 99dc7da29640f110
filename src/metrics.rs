//! The worker's Prometheus metrics (README "Metrics"), kept with `prometheus-client` and served
//! by the admin endpoint at `/metrics` in the OpenMetrics text format.

use std::sync::{Mutex, PoisonError};

use hashbrown::HashMap;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::alert::Decision;
use crate::engine::retention::Crr;
use crate::engine::rule::Rule;
use crate::event::EVENT_TYPES;

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the worker exports; cheap to update from the loop thread.
pub struct Metrics {
    registry: Registry,
    /// Records consumed.
    pub records: Counter,
    /// Valid events taken, by `type`.
    pub events: Family<Labels, Counter>,
    /// Rejected records, by `class` (the parser's classes, and the Kafka adapter's
    /// `key_mismatch` and `empty_value`).
    pub rejects: Family<Labels, Counter>,
    /// Alerts decided, by `rule` and guard `decision`.
    pub alerts: Family<Labels, Counter>,
    /// What became of emails, by `outcome` (`sent`, `written`, `failed`, `expired`,
    /// `suppressed`, `deferred`, `retried`).
    pub emails: Family<Labels, Counter>,
    /// Records on the broker not yet taken, over the worker's tasks.
    pub lag: Gauge,
    /// Records whose partition is not murmur2 of their customer id.
    pub misrouted: Counter,
    /// Records fetched and waiting in the tasks' merges, over the worker's tasks.
    pub buffered: Gauge,
    /// Input partitions paused because their task holds `kafka.max_buffered_records`.
    pub paused: Gauge,
    /// Customers held in state.
    pub customers: Gauge,
    /// Event ids forgotten early to stay within `engine.dedup_max_per_customer`.
    pub dedup_evicted: Gauge,
    /// Tasks running.
    pub tasks: Gauge,
    /// Checkpoints committed.
    pub checkpoints: Counter,
    /// Changelog offsets still to read by the tasks being restored here.
    pub restore_remaining: Gauge,
    /// Outbox entries waiting in the stores of the running tasks (decided, not yet
    /// delivered or acknowledged).
    pub outbox: Gauge,
    /// Emails not sent because the customer cannot be reached, by `reason` and `at`
    /// (`decision`: the guard at event time; `send`: checked again before sending).
    pub emails_suppressed: Family<Labels, Counter>,
    /// Customer retention rate over `metrics.crr_period`, percent (NaN until the worker
    /// has seen a whole period with customers at its start).
    pub retention_rate: Gauge<f64, AtomicU64>,
    /// Customers a win-back sequence reached, by `group` (`emailed`, `holdout`).
    pub winback_customers: Family<Labels, Gauge>,
    /// Of those, customers who bought again within the attribution window, by `group`.
    pub winback_converted: Family<Labels, Gauge>,
    /// converted / customers, by `group`: the emails' effect is emailed − holdout.
    pub winback_conversion: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Config reloads, by `result` (`applied`, `refused`).
    pub reloads: Family<Labels, Counter>,
    /// The `events` series of each type, in [`EVENT_TYPES`] order: counting an event is
    /// one atomic add, with no label built on the per-event path.
    by_type: Vec<Counter>,
    /// The `alerts` series met so far, by rule and decision, for the same reason.
    by_alert: Mutex<HashMap<(Rule, Decision), Counter>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// All metrics at zero, registered under the `churnwatch_` prefix.
    pub fn new() -> Metrics {
        let mut m = Metrics::unregistered();
        // Registration order is the order of `/metrics`: the groups keep it.
        m.register_flow();
        m.register_intake();
        m.register_state();
        m.register_outcomes();
        m.register_reloads();
        m.by_type = m.event_series();
        m
    }

    /// Every metric at zero, none registered yet.
    fn unregistered() -> Metrics {
        Metrics {
            records: Counter::default(),
            events: Family::default(),
            rejects: Family::default(),
            alerts: Family::default(),
            emails: Family::default(),
            lag: Gauge::default(),
            misrouted: Counter::default(),
            buffered: Gauge::default(),
            paused: Gauge::default(),
            customers: Gauge::default(),
            dedup_evicted: Gauge::default(),
            tasks: Gauge::default(),
            checkpoints: Counter::default(),
            restore_remaining: Gauge::default(),
            outbox: Gauge::default(),
            emails_suppressed: Family::default(),
            retention_rate: Gauge::default(),
            winback_customers: Family::default(),
            winback_converted: Family::default(),
            winback_conversion: Family::default(),
            reloads: Family::default(),
            registry: Registry::with_prefix("churnwatch"),
            by_type: Vec::new(),
            by_alert: Mutex::new(HashMap::new()),
        }
    }

    /// What passes through, end to end: records in, events and rejects, alerts, emails.
    fn register_flow(&mut self) {
        let r = &mut self.registry;
        r.register(
            "records",
            "Records consumed from the input topics",
            self.records.clone(),
        );
        r.register("events", "Valid events taken, by type", self.events.clone());
        r.register(
            "rejects",
            "Records rejected to the dead-letter destination, by class",
            self.rejects.clone(),
        );
        r.register(
            "alerts",
            "Alerts decided, by rule and guard decision",
            self.alerts.clone(),
        );
        r.register(
            "emails",
            "What became of emails, by outcome (sent, written, failed, expired, suppressed, deferred, retried)",
            self.emails.clone(),
        );
    }

    /// How the Kafka intake keeps up: lag, misrouting, buffering, back-pressure.
    fn register_intake(&mut self) {
        let r = &mut self.registry;
        r.register(
            "consumer_lag",
            "Records on the broker not yet taken, over this worker's tasks",
            self.lag.clone(),
        );
        r.register(
            "misrouted_records",
            "Records whose partition is not murmur2 of their customer id (key, or payload when the key is null)",
            self.misrouted.clone(),
        );
        r.register(
            "buffered_records",
            "Records fetched and waiting in this worker's tasks to be taken in event-time order",
            self.buffered.clone(),
        );
        r.register(
            "paused_partitions",
            "Input partitions paused because their task holds kafka.max_buffered_records",
            self.paused.clone(),
        );
    }

    /// What the worker holds and how often it is made durable.
    fn register_state(&mut self) {
        let r = &mut self.registry;
        r.register(
            "customers",
            "Customers held in state",
            self.customers.clone(),
        );
        r.register(
            "dedup_evicted",
            "Event ids forgotten early to stay within engine.dedup_max_per_customer, over this worker's tasks since they started here",
            self.dedup_evicted.clone(),
        );
        r.register("tasks", "Tasks running in this worker", self.tasks.clone());
        r.register(
            "checkpoints",
            "Checkpoints committed to the state store",
            self.checkpoints.clone(),
        );
        r.register(
            "restore_remaining",
            "Changelog records still to read by the tasks being restored in this worker",
            self.restore_remaining.clone(),
        );
        r.register(
            "outbox_entries",
            "Outbox entries waiting in the running tasks' stores: decided, not yet delivered or acknowledged",
            self.outbox.clone(),
        );
    }

    /// Who the emails could not reach and what the ones sent achieved.
    fn register_outcomes(&mut self) {
        let r = &mut self.registry;
        r.register(
            "emails_suppressed",
            "Emails not sent because the customer cannot be reached, by reason and where (decision, send)",
            self.emails_suppressed.clone(),
        );
        self.retention_rate.set(f64::NAN);
        r.register(
            "retention_rate_percent",
            "Customer retention rate over metrics.crr_period, percent",
            self.retention_rate.clone(),
        );
        r.register(
            "winback_customers",
            "Customers a win-back sequence reached, by group (emailed, holdout)",
            self.winback_customers.clone(),
        );
        r.register(
            "winback_converted",
            "Of those, customers who bought again within the attribution window, by group",
            self.winback_converted.clone(),
        );
        r.register(
            "winback_conversion_ratio",
            "Win-back conversion (converted / customers), by group",
            self.winback_conversion.clone(),
        );
    }

    /// Config reloads, both results shown from the start so a refusal is a rise, not a
    /// new series.
    fn register_reloads(&mut self) {
        for result in ["applied", "refused"] {
            let _ = self
                .reloads
                .get_or_create(&vec![("result", result.to_string())]);
        }
        self.registry.register(
            "config_reloads",
            "Config reloads (SIGHUP or a changed file), by result (applied, refused)",
            self.reloads.clone(),
        );
    }

    /// The `events` series of every type, made now so counting one needs no label.
    fn event_series(&self) -> Vec<Counter> {
        EVENT_TYPES
            .iter()
            .map(|t| {
                self.events
                    .get_or_create(&vec![("type", (*t).to_string())])
                    .clone()
            })
            .collect()
    }

    /// Counts one valid event of type `type_name` (one of [`EVENT_TYPES`]).
    pub fn event(&self, type_name: &str) {
        if let Some(c) = EVENT_TYPES
            .iter()
            .position(|t| *t == type_name)
            .and_then(|i| self.by_type.get(i))
        {
            c.inc();
        }
    }

    /// Counts one alert of `rule` with guard `decision`.
    pub fn alert(&self, rule: Rule, decision: Decision) {
        let mut cache = self.by_alert.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .entry((rule, decision))
            .or_insert_with(|| {
                self.alerts
                    .get_or_create(&vec![
                        ("rule", rule.name().to_string()),
                        ("decision", decision.label()),
                    ])
                    .clone()
            })
            .inc();
    }

    /// Counts one in the series of `family` with these labels.
    pub fn inc(family: &Family<Labels, Counter>, labels: &[(&'static str, &str)]) {
        let key: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
        family.get_or_create(&key).inc();
    }

    /// Sets the retention and win-back gauges from the sums over this worker's tasks.
    pub fn set_outcomes(&self, crr: Option<Crr>, touched: [u64; 2], converted: [u64; 2]) {
        self.retention_rate
            .set(crr.and_then(|c| c.percent()).unwrap_or(f64::NAN));
        for (i, group) in ["emailed", "holdout"].into_iter().enumerate() {
            let key = vec![("group", group.to_string())];
            self.winback_customers
                .get_or_create(&key)
                .set(touched[i] as i64);
            self.winback_converted
                .get_or_create(&key)
                .set(converted[i] as i64);
            let ratio = if touched[i] == 0 {
                f64::NAN
            } else {
                converted[i] as f64 / touched[i] as f64
            };
            self.winback_conversion.get_or_create(&key).set(ratio);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels_and_gauges() {
        let m = Metrics::new();
        m.records.inc_by(3);
        m.event("purchase");
        m.event("purchase");
        m.event("no_such_type");
        m.alert(Rule::Winback, Decision::Email);
        m.lag.set(7);
        let text = m.render();
        assert!(text.contains("churnwatch_records_total 3"), "{text}");
        assert!(
            text.contains(r#"churnwatch_events_total{type="purchase"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"churnwatch_alerts_total{rule="winback",decision="email"} 1"#),
            "{text}"
        );
        assert!(text.contains("churnwatch_consumer_lag 7"), "{text}");
        // Every event type has its series from the start, at zero until counted.
        assert!(
            text.contains(r#"churnwatch_events_total{type="refund"} 0"#),
            "{text}"
        );
        assert!(!text.contains("no_such_type"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
