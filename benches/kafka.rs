//! Kafka path throughput (README "Performance": the worker reaches ≥ 90% of what a plain consumer of
//! the same broker reaches on the same topics in the same run).
//!
//! Produces N generated events to fresh co-partitioned topics on a local tansu broker,
//! then measures, from the first record to the last, (1) a plain rdkafka consumer that
//! only reads every record and (2) `churnwatch run` doing its whole job (parse, engine,
//! alerts and dead letters produced and acknowledged, offsets stored and committed).
//!
//! `cargo bench --bench kafka` (uses `CHURNWATCH_TEST_KAFKA` if set, else starts tansu
//! from `TANSU_BIN` or `~/.cache/churnwatch/tansu-0.6.0/bin/tansu`);
//! `CHURNWATCH_BENCH_EVENTS` sets N (default 300000). With `CHURNWATCH_TEST_PYTHON`
//! set it also runs the worker with emails over SMTP to a local aiosmtpd (no rate
//! limit, no quiet hours): its consumption beside the plain consumer, and how many
//! emails the relay had accepted when consumption was done (the rest wait in the
//! outbox).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

#[path = "support/broker.rs"]
mod broker;
#[path = "support/gen.rs"]
mod gen;
#[path = "../tests/support/smtp_server.rs"]
mod smtp_server;

use broker::broker;

const PARTITIONS: i32 = 2;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("CHURNWATCH_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let broker = broker();
    let tag = std::process::id();
    let purchases = format!("bench-purchases-{tag}");
    let support = format!("bench-support-{tag}");
    let (dlq, alerts) = (format!("bench-dlq-{tag}"), format!("bench-alerts-{tag}"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let topics = [
        NewTopic::new(&purchases, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&support, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&alerts, PARTITIONS, TopicReplication::Fixed(1)),
    ];
    for r in rt
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics")
    {
        r.expect("topic");
    }

    let lines = gen::lines(n, (n as u64 / 10).max(100), 7);
    let started = Instant::now();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    for line in &lines {
        let key = line
            .split("\"customer_id\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let topic = if line.contains("\"type\":\"purchase\"") || line.contains("customer_profile") {
            &purchases
        } else {
            &support
        };
        loop {
            match producer.send(BaseRecord::to(topic).key(key).payload(line.as_str())) {
                Ok(()) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    println!(
        "produced {n} events to {purchases}/{support} ({PARTITIONS} partitions each) in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // 1. A plain consumer in its own group: read every record, touch its bytes.
    let plain: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", format!("bench-plain-{tag}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    plain
        .subscribe(&[purchases.as_str(), support.as_str()])
        .expect("subscribe");
    let mut seen = 0usize;
    let mut bytes = 0usize;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(m)) = plain.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    let plain_secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let plain_rate = seen as f64 / plain_secs.max(1e-9);
    println!("plain consumer: {seen} records ({bytes} bytes) in {plain_secs:.2}s = {plain_rate:.0} records/s");
    drop(plain);

    // 2. The worker doing its whole job, with and without the changelog (README
    // "State follows tasks"), each from the start of the same topics, in the order
    // with, without, without, with: a later run finds a fuller broker, so the order
    // must not favour either.
    let topics = (
        purchases.as_str(),
        support.as_str(),
        dlq.as_str(),
        alerts.as_str(),
    );
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for (run, changelog) in [true, false, false, true].into_iter().enumerate() {
        let (rate, summary) = worker_rate(&broker.addr, topics, n, (run, changelog), &[]);
        let label = if changelog {
            "worker"
        } else {
            "worker without changelog"
        };
        println!("{label}: {}", summary.trim());
        if changelog {
            with.push(rate);
        } else {
            without.push(rate);
        }
    }
    if std::env::var_os("CHURNWATCH_TEST_PYTHON").is_some() {
        let server = smtp_server::Server::start(&[]);
        let smtp = [
            ("CHURNWATCH__DELIVERY__TRANSPORT", "smtp".to_string()),
            ("CHURNWATCH__SMTP__HOST", "127.0.0.1".to_string()),
            ("CHURNWATCH__SMTP__PORT", server.port.to_string()),
            ("CHURNWATCH__SMTP__TLS", "none".to_string()),
            ("CHURNWATCH__DELIVERY__QUIET_HOURS", String::new()),
            ("CHURNWATCH__DELIVERY__RATE_LIMIT", "0".to_string()),
            ("CHURNWATCH__SHUTDOWN_GRACE", "2s".to_string()),
        ];
        let (rate, summary) = worker_rate(&broker.addr, topics, n, (4, true), &smtp);
        println!("worker over SMTP: {}", summary.trim());
        println!(
            "worker over SMTP / plain consumer = {:.0}%; the relay had accepted {} emails when consumption was done",
            100.0 * rate / plain_rate.max(1e-9),
            server.received().len()
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (with, without) = (mean(&with), mean(&without));
    println!(
        "worker / plain consumer = {:.0}% (target ≥ 90%); without the changelog {:.0}%; the changelog costs {:.0}% of the worker's rate (means of two runs each)",
        100.0 * with / plain_rate.max(1e-9),
        100.0 * without / plain_rate.max(1e-9),
        100.0 * (1.0 - with / without.max(1e-9))
    );
}

/// Runs `churnwatch run` over `topics` (purchases, support, dlq, alerts) until its group
/// has committed the end of every partition; its records/s and exit summary.
fn worker_rate(
    addr: &str,
    topics: (&str, &str, &str, &str),
    n: usize,
    (run, changelog): (usize, bool),
    env: &[(&str, String)],
) -> (f64, String) {
    let (purchases, support, dlq, alerts) = topics;
    let tag = std::process::id();
    let dir = tempfile::tempdir().expect("tempdir");
    let group = format!("bench-worker-{tag}-{run}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_churnwatch"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CHURNWATCH__KAFKA__BOOTSTRAP_SERVERS", addr)
        .env("CHURNWATCH__KAFKA__GROUP_ID", &group)
        .env(
            "CHURNWATCH__KAFKA__TOPICS",
            format!("{purchases},{support}"),
        )
        .env("CHURNWATCH__KAFKA__DLQ_TOPIC", dlq)
        .env("CHURNWATCH__KAFKA__ALERTS_TOPIC", alerts)
        .env("CHURNWATCH__KAFKA__CHANGELOG", changelog.to_string())
        .env("CHURNWATCH__CLOCK", "event")
        .env("CHURNWATCH__ADMIN__LISTEN", "")
        .env("CHURNWATCH__DELIVERY__FILE_DIR", dir.path())
        .env("CHURNWATCH__STATE__DIR", dir.path().join("state"))
        .env("RUST_LOG", "warn")
        // `run` refuses the shipped keys.
        .env(
            "CHURNWATCH__ENGINE__ID_SECRET",
            "kafka-bench-id-key-6b1f0c3e9a27d4f8b5c0e1a2",
        )
        .env(
            "CHURNWATCH__DELIVERY__OFFER_SECRET",
            "kafka-bench-offer-key-93d2a7c4e0b1f6a5d8c3b2e1",
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("run")
        .stdout(Stdio::piped())
        .spawn()
        .expect("churnwatch run");
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", &group)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for t in [purchases, support] {
        for p in 0..PARTITIONS {
            tpl.add_partition(t, p);
        }
    }
    let ends: BTreeMap<(String, i32), i64> = tpl
        .elements()
        .iter()
        .map(|e| {
            let (_, hi) = reader
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                .unwrap_or((0, 0));
            ((e.topic().to_string(), e.partition()), hi)
        })
        .collect();
    let total: i64 = ends.values().sum();
    loop {
        let done = reader
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .map(|c| {
                c.elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum::<i64>()
            })
            .unwrap_or(0);
        // tansu's ListOffsets can fall short of the log end by a batch: accept n.
        if done >= total.max(n as i64) || done >= n as i64 {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("worker exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("worker output");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let worker_rate: f64 = summary
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    (worker_rate, summary)
}
