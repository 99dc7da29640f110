//! Restoring a task from the changelog (README "State follows tasks", "Performance"):
//! a store of N customers (1 million when benching) is written to a changelog topic on
//! a local tansu as a new owner's full copy, then read back into an empty store the way
//! a replica taking the task over does it; beside it, the local restart of the same
//! store (loading it) as the baseline, and the restart of the copy's writer after one
//! more checkpoint, which carries its epoch on after checking the changelog's tail.
//! Prints records/s and seconds of each step.
//!
//! `cargo bench --bench restore` (uses `CHURNWATCH_TEST_KAFKA` if set, else starts
//! tansu like the kafka bench); `CUSTOMERS` sets N. Under `cargo test` it does nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use churnwatch::changelog::{self, Apply, Position, Restored, Restorer, Tail};
use churnwatch::config;
use churnwatch::source::changelog::ChangelogTopic;
use churnwatch::store::TaskStore;

#[path = "support/broker.rs"]
mod broker;
#[path = "support/gen.rs"]
mod gen;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let customers: u64 = std::env::var("CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let broker = broker::broker();
    let tag = std::process::id();
    let cfg = config::load_with_env(
        None,
        [
            (
                "CHURNWATCH__KAFKA__BOOTSTRAP_SERVERS".to_string(),
                broker.addr.clone(),
            ),
            (
                "CHURNWATCH__KAFKA__GROUP_ID".to_string(),
                format!("bench-restore-{tag}"),
            ),
        ],
    )
    .expect("config");
    let settings = Arc::new(cfg.engine.clone());

    let mut engine = gen::engine_of(customers, settings.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let st = TaskStore::open(dir.path(), 0).expect("open");
    st.checkpoint(&mut engine, &BTreeMap::new(), (&[], 0), None)
        .expect("checkpoint");
    let held = engine.len();
    drop(engine);
    let rows = st.rows().expect("rows");
    println!("restore: {held} customers, {rows} store rows");

    // The baseline: a restart with the store on local disk.
    let t = Instant::now();
    let loaded = st
        .load(settings.clone())
        .expect("load")
        .expect("state")
        .engine;
    let local = t.elapsed().as_secs_f64();
    assert_eq!(loaded.len(), held);
    drop(loaded);
    println!("restore/local_load: {held} customers in {local:.2} s");

    // The full copy a new owner writes: claim, rows in batches of 5,000 with a marker.
    let topic = format!("bench-changelog-{tag}");
    let log = ChangelogTopic::new(&cfg.kafka, &topic).expect("changelog clients");
    log.ensure(1).expect("changelog topic");
    let t = Instant::now();
    let epoch = log
        .write(0, &[changelog::claim(1, None, "bench")])
        .expect("claim")[0] as u64;
    let (mut written, mut seq) = (0u64, 0u64);
    let mut verified = Some(epoch as i64);
    st.for_each_row(5_000, |batch| {
        written += batch.len() as u64;
        seq += 1;
        let mut records: Vec<changelog::Record> =
            batch.iter().map(|c| changelog::row(epoch, c)).collect();
        records.push(changelog::marker(
            epoch,
            changelog::Marker {
                seq,
                rows,
                complete: written == rows,
            },
        ));
        verified = changelog::verified_after(verified, &log.write(0, &records)?);
        Ok(())
    })
    .expect("copy");
    let write = t.elapsed().as_secs_f64();
    println!(
        "restore/changelog_write: {written} rows in {write:.2} s = {:.0} records/s",
        written as f64 / write
    );

    // One more checkpoint by the same owner (a batch of its rows written again), then
    // its restart: a continuing claim, the tail since the position checked, the load.
    let at = Position {
        epoch,
        seq: seq + 1,
        verified_to: verified,
        verified_seq: seq,
    };
    let mut again = Vec::new();
    st.for_each_row(5_000, |batch| {
        if again.is_empty() {
            again = batch;
        }
        Ok(())
    })
    .expect("rows");
    let mut records: Vec<changelog::Record> =
        again.iter().map(|c| changelog::row(epoch, c)).collect();
    records.push(changelog::marker(
        epoch,
        changelog::Marker {
            seq: seq + 1,
            rows,
            complete: true,
        },
    ));
    log.write(0, &records).expect("checkpoint");
    let t = Instant::now();
    let end = log
        .write(0, &[changelog::claim(3, Some(epoch), "bench restart")])
        .expect("continuing claim")[0];
    let mut tail = Tail::new(at, end).expect("verified copy");
    let checked = log
        .read(0, tail.from(), end, |offset, key, value| {
            tail.feed(offset, changelog::read(offset, key, value)?);
            Ok(())
        })
        .expect("tail");
    tail.finish().expect("the local state is the latest");
    let loaded = st
        .load(settings.clone())
        .expect("load")
        .expect("state")
        .engine;
    let carried = t.elapsed().as_secs_f64();
    assert_eq!(loaded.len(), held);
    drop(loaded);
    println!(
        "restore/carry_on: {checked} tail records checked, with the load {carried:.2} s = {:.2}x the local restart",
        carried / local.max(1e-9)
    );

    // What a replica taking the task over does: read up to its claim, rebuild, load.
    let claim = log
        .write(0, &[changelog::claim(2, None, "bench restorer")])
        .expect("claim")[0];
    let other = tempfile::tempdir().expect("tempdir");
    let target = TaskStore::open(other.path(), 0).expect("open");
    let t = Instant::now();
    let mut r = Restorer::new(claim);
    let mut w = target.restore().expect("restore");
    let read = log
        .read(0, 0, claim, |offset, key, value| {
            match r.feed(offset, changelog::read(offset, key, value)?) {
                Apply::Nothing => {}
                Apply::Clear => w.clear()?,
                Apply::Rows(rows) => w.apply(&rows)?,
            }
            Ok(())
        })
        .expect("read");
    assert!(matches!(r.finish(), Restored::State { .. }));
    w.finish().expect("commit");
    let rebuilt = t.elapsed().as_secs_f64();
    let restored = target.load(settings).expect("load").expect("state").engine;
    let total_secs = t.elapsed().as_secs_f64();
    assert_eq!(restored.len(), held, "every customer restored");
    println!(
        "restore/from_changelog: {read} records read and applied in {rebuilt:.2} s = {:.0} records/s; with the load {total_secs:.2} s = {:.1}x the local restart",
        read as f64 / rebuilt,
        total_secs / local.max(1e-9)
    );
}
