//! The durable store (docs/design.md §8 Checkpoint and outbox, README "Performance"): checkpoint cost, bytes on disk per customer, restart
//! time with 1 million customers (≤ 2 s), and replay throughput with durable state
//! (≥ 300,000 events/s) against the same replay without it. Prints its figures.
//!
//! `cargo bench --bench store` (under `cargo test` it runs small, as a smoke test).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use churnwatch::config;
use churnwatch::event;
use churnwatch::mail::template::Templates;
use churnwatch::replay;
use churnwatch::store::TaskStore;

#[path = "support/gen.rs"]
mod gen;

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let customers: u64 = std::env::var("CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 5_000 });
    let cfg = config::load_with_env(None, Vec::new()).expect("default config must load");
    let settings = Arc::new(cfg.engine.clone());
    let dir = tempfile::tempdir().expect("tempdir");

    let mut engine = gen::engine_of(customers, settings.clone());
    let mut out = Vec::new();
    let held = engine.len();
    println!("store: {held} customers");

    let st = TaskStore::open(dir.path(), 0).expect("open");
    let t = Instant::now();
    st.checkpoint(&mut engine, &BTreeMap::new(), (&[], 0), None)
        .expect("checkpoint");
    let full = t.elapsed();
    let bytes = std::fs::metadata(st.path()).map(|m| m.len()).unwrap_or(0);
    println!(
        "store/checkpoint_all: {held} customers in {:.3} s; file {:.1} MiB = {:.0} bytes per customer",
        full.as_secs_f64(),
        bytes as f64 / 1_048_576.0,
        bytes as f64 / held as f64
    );

    // A second of traffic at the engine's pace touches a few thousand customers.
    for l in gen::lines(10_000, customers, 99) {
        if let Ok(ev) = event::parse(l.as_bytes()) {
            engine.apply(ev, &mut out);
        }
        out.clear();
    }
    let changed = engine.changed_since_checkpoint().count();
    let held = engine.len();
    let t = Instant::now();
    st.checkpoint(&mut engine, &BTreeMap::new(), (&[], 0), None)
        .expect("checkpoint");
    println!(
        "store/checkpoint_changed: {changed} changed customers in {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    drop(st);
    drop(engine);

    // Restart: open (with its integrity check) and load every customer.
    let t = Instant::now();
    let st = TaskStore::open(dir.path(), 0).expect("reopen");
    let opened = t.elapsed();
    let loaded = st.load(settings).expect("load").expect("state");
    let restart = t.elapsed();
    assert_eq!(loaded.engine.len(), held);
    println!(
        "store/restart: {held} customers ready in {:.3} s (open and integrity check {:.3} s) [target ≤ 2 s at 1M]",
        restart.as_secs_f64(),
        opened.as_secs_f64()
    );
    drop(loaded);
    drop(st);

    // Replay end to end, with and without writing the durable state.
    let events = dir.path().join("events.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&events).expect("events"));
        for l in gen::lines(customers as usize, customers / 10 + 100, 5) {
            writeln!(f, "{l}").expect("write");
        }
    }
    let templates = Templates::load(&cfg.mail).expect("templates");
    for (write_emails, write_state) in [(false, false), (false, true), (true, true)] {
        let opts = replay::Options {
            outbox: dir.path().join(format!("out-{write_emails}-{write_state}")),
            write_emails,
            write_state,
            ..replay::Options::new(vec![events.clone()])
        };
        let t = Instant::now();
        let summary = replay::run(&cfg, Some(&templates), &opts).expect("replay");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "store/replay ({}, {}): {} events in {secs:.3} s = {:.0} events/s, {} .eml files [target ≥ 300,000 with state]",
            if write_state { "with durable state" } else { "without state" },
            if write_emails { "emails written" } else { "decisions only" },
            summary.records,
            summary.records as f64 / secs,
            summary.emails_written
        );
    }
}
