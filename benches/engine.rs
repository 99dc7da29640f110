//! Engine throughput (README "Performance": ≥ 1,000,000 events/s on one core): parse alone, and
//! parse + state + rules + timers over generated events, no I/O.
//!
//! `cargo bench --bench engine`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use churnwatch::config;
use churnwatch::engine::Engine;
use churnwatch::event;

#[path = "support/gen.rs"]
mod gen;

const EVENTS: usize = 200_000;
const CUSTOMERS: u64 = 20_000;

fn bench(c: &mut Criterion) {
    let lines = gen::lines(EVENTS, CUSTOMERS, 7);
    let settings = match config::load_with_env(None, Vec::new()) {
        Ok(cfg) => Arc::new(cfg.engine),
        Err(e) => panic!("default config must load: {e}"),
    };
    {
        // The mix matters: every alert costs an HMAC and a few strings.
        let mut engine = Engine::new(Arc::clone(&settings));
        let mut out = Vec::new();
        for l in &lines {
            if let Ok(ev) = event::parse(l.as_bytes()) {
                engine.apply(ev, &mut out);
            }
        }
        eprintln!(
            "mix: {EVENTS} events, {CUSTOMERS} customers, {} alerts ({:.3} per event), {} emails",
            out.len(),
            out.len() as f64 / EVENTS as f64,
            engine.stats().emails()
        );
    }
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(event::parse(l.as_bytes()));
            }
        })
    });
    g.bench_function("parse_apply", |b| {
        b.iter_batched(
            || Engine::new(Arc::clone(&settings)),
            |mut engine| {
                let mut out = Vec::new();
                for l in &lines {
                    if let Ok(ev) = event::parse(l.as_bytes()) {
                        engine.apply(ev, &mut out);
                    }
                    out.clear();
                }
                engine
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
