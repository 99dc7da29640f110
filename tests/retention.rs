//! docs/design.md §6 State and rules customer retention rate: the engine's running counts and daily marks give the
//! same CRR as counting every customer's stage at the period's start and end.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use churnwatch::engine::stage::Stage;
use churnwatch::engine::{Applied, Engine};
use churnwatch::event::{parse, EventKind};

fn retained(e: &Engine) -> u64 {
    let n = e.stage_counts();
    Stage::ALL
        .iter()
        .filter(|s| !matches!(s, Stage::Prospect | Stage::Lapsed))
        .map(|s| n[*s as usize])
        .sum()
}

#[test]
fn the_crr_equals_a_count_of_stages_at_the_start_and_end_of_every_period() {
    let cfg = churnwatch::config::load_with_env(None, Vec::new()).expect("defaults");
    let mut e = Engine::new(Arc::new(cfg.engine.clone()));
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/events.jsonl"
    ))
    .expect("the example");
    // Counted independently: stages by a scan at each day's start, and first purchases
    // by customer (an erased customer who buys again is new again).
    let mut at_day_start: HashMap<u16, (u64, u64)> = HashMap::new();
    let mut bought: BTreeSet<String> = BTreeSet::new();
    let mut new_total = 0u64;
    let mut out = Vec::new();
    let mut checked = 0;
    for line in text.lines() {
        let Ok(ev) = parse(line.as_bytes()) else {
            continue;
        };
        let day = ev.at.day();
        let new_day = e.clock().is_none_or(|c| day > c.day());
        if new_day {
            at_day_start.insert(day, (retained(&e), new_total));
        }
        let id = ev.customer_id.to_string();
        let purchase = matches!(ev.kind, EventKind::Purchase { .. });
        let erased = ev.kind == EventKind::Erased;
        let applied = e.apply(ev, &mut out);
        if erased {
            bought.remove(&id);
        } else if purchase
            && matches!(applied, Applied::Applied | Applied::Late)
            && bought.insert(id)
        {
            new_total += 1;
        }
        out.clear();
        if !new_day {
            continue;
        }
        let today = e.clock().expect("a clock").day();
        for period in [30u16, 90, 365] {
            let Some(&(start, new_then)) = today
                .checked_sub(period)
                .and_then(|d| (0..=d).rev().find_map(|x| at_day_start.get(&x)))
            else {
                continue;
            };
            let crr = e.retention(period).expect("marks reach back");
            assert_eq!(
                (crr.start, crr.end, crr.new),
                (start, retained(&e), new_total - new_then),
                "day {today}, period {period}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1_000, "{checked}");
}
