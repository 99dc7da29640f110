//! Memory per customer at 1 million customers (README "Performance": ≤ 128 bytes of hot state, not
//! counting the key, the profile and the timer index; 10M customers with 16-byte ids in
//! 2 GiB RSS). Prints its figures.
//!
//! `cargo bench --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use churnwatch::config;
use churnwatch::engine::customer::Customer;
use churnwatch::engine::Engine;
use churnwatch::event;

#[path = "support/gen.rs"]
mod gen;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        LIVE.fetch_add(n, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this runs as a quick smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let customers: u64 = std::env::var("CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 10_000 });
    let settings = match config::load_with_env(None, Vec::new()) {
        Ok(cfg) => Arc::new(cfg.engine),
        Err(e) => panic!("default config must load: {e}"),
    };
    let before = LIVE.load(Ordering::Relaxed);
    let mut engine = Engine::new(settings);
    let mut out = Vec::new();
    // Three events per customer on average, generated in chunks so the input's own
    // memory does not count.
    let total = (customers * 3) as usize;
    let chunk = 300_000;
    let mut done = 0;
    let mut seed = 11;
    let parts = total.div_ceil(chunk) as u64;
    while done < total {
        let n = chunk.min(total - done);
        for l in gen::lines_part(n, customers, seed, seed - 11, parts) {
            if let Ok(ev) = event::parse(l.as_bytes()) {
                engine.apply(ev, &mut out);
            }
            out.clear();
        }
        done += n;
        seed += 1;
    }
    out.shrink_to_fit();
    let heap = LIVE.load(Ordering::Relaxed) - before;
    let n = engine.len();
    let hot = engine.hot_state_bytes();
    println!("customers                         {n}");
    println!(
        "hot state per customer            {:.1} bytes (size_of::<Customer>() = {}, plus open tickets)",
        hot as f64 / n as f64,
        std::mem::size_of::<Customer>()
    );
    println!(
        "whole engine heap per customer    {:.1} bytes (keys, index, profiles, timers included)",
        heap as f64 / n as f64
    );
    println!(
        "pending timers                    {}",
        engine.pending_timers()
    );
    println!(
        "process RSS                       {:.1} MiB",
        rss_kib() as f64 / 1024.0
    );
    drop(engine);
    dedup_memory(&settings_for_dedup());
}

fn settings_for_dedup() -> Arc<churnwatch::engine::settings::Settings> {
    match config::load_with_env(None, Vec::new()) {
        Ok(cfg) => Arc::new(cfg.engine),
        Err(e) => panic!("default config must load: {e}"),
    }
}

/// Heap per event id remembered beyond the two inline ones: the same customers with 2
/// and with 2 + `extra` events each inside the dedup window, the difference divided by
/// the extra ids.
fn dedup_memory(settings: &Arc<churnwatch::engine::settings::Settings>) {
    let customers = 20_000u32;
    let extra = 30u32;
    let heap_with = |per: u32| -> usize {
        let before = LIVE.load(Ordering::Relaxed);
        let mut engine = Engine::new(settings.clone());
        let mut out = Vec::new();
        for k in 0..per {
            for c in 0..customers {
                let line = format!(
                    r#"{{"event_id":"e{c}-{k}","type":"complaint","customer_id":"c{c:08}","occurred_at":"2026-03-0{}T{:02}:{:02}:00Z"}}"#,
                    1 + k / 24 % 7,
                    k % 24,
                    c % 60
                );
                if let Ok(ev) = event::parse(line.as_bytes()) {
                    engine.apply(ev, &mut out);
                }
                out.clear();
            }
        }
        assert_eq!(engine.stats().duplicates, 0);
        let heap = LIVE.load(Ordering::Relaxed) - before;
        drop(engine);
        heap
    };
    let base = heap_with(2);
    let more = heap_with(2 + extra);
    let ids = f64::from(customers) * f64::from(extra);
    println!(
        "dedup: heap per event id in the window beyond two per customer  {:.1} bytes ({} customers × {} ids)",
        (more as f64 - base as f64) / ids,
        customers,
        extra
    );
}
