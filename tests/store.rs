//! docs/design.md §8 Checkpoint and outbox: the embedded store. An engine checkpointed and restored over and over decides
//! exactly what one that never stopped decides; outbox entries survive a reopen until
//! removed; a store in use, damaged or from another format is a clear error, never an
//! empty start; `inspect` explains a stored customer and redacts contact data.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use churnwatch::changelog::Cursor;
use churnwatch::engine::clock::Stamp;
use churnwatch::engine::Engine;
use churnwatch::outbox::{Email, Entry};
use churnwatch::store::{Mirror, StoreError, TaskStore};
use churnwatch::{config, event, Alert, Config};

#[path = "../benches/support/gen.rs"]
mod gen;

/// The defaults with a short retention, so that customers also expire in two years.
fn cfg() -> Config {
    config::load_with_env(
        None,
        [(
            "CHURNWATCH__STATE__RETENTION".to_string(),
            "250d".to_string(),
        )],
    )
    .expect("config")
}

fn lines() -> Vec<String> {
    let mut v = gen::lines(30_000, 2_000, 11);
    // Erasures among them: the store must forget those customers too.
    for (i, l) in v.iter_mut().enumerate().filter(|(i, _)| i % 2_003 == 1_000) {
        let t: serde_json::Value = serde_json::from_str(l).expect("json");
        *l = format!(
            r#"{{"event_id":"erase-{i}","type":"customer_erased","customer_id":{},"occurred_at":{}}}"#,
            t["customer_id"], t["occurred_at"]
        );
    }
    v
}

fn json(alerts: &[Alert], c: &Config) -> Vec<String> {
    alerts
        .iter()
        .map(|a| a.to_json(&c.mail.message_id_domain))
        .collect()
}

/// An engine fed all of `input` without a stop, finished at `until`, and its alerts.
fn never_stopped(
    settings: &Arc<churnwatch::engine::settings::Settings>,
    input: &[String],
    until: Stamp,
) -> (Engine, Vec<Alert>) {
    let mut straight = Engine::new(settings.clone());
    let mut want = Vec::new();
    for l in input {
        straight.apply(event::parse(l.as_bytes()).expect("event"), &mut want);
    }
    straight.finish(until, &mut want);
    (straight, want)
}

/// The same alerts, customers, counters, population statistics and timers.
fn assert_decides_alike(got: (&Engine, &[Alert]), want: (&Engine, &[Alert]), c: &Config) {
    let ((engine, got), (straight, want)) = (got, want);
    assert_eq!(json(got, c), json(want, c), "alerts");
    assert_eq!(engine.snapshots_sorted(), straight.snapshots_sorted());
    assert_eq!(engine.stats(), straight.stats());
    assert_eq!(engine.population(), straight.population());
    assert_eq!(engine.len(), straight.len());
    assert_eq!(engine.pending_timers(), straight.pending_timers());
}

#[test]
fn an_engine_restored_from_its_checkpoints_decides_like_one_that_never_stopped() {
    let c = cfg();
    let settings = Arc::new(c.engine.clone());
    let until = Stamp::parse_rfc3339("2027-03-01T00:00:00Z").expect("until");
    let input = lines();

    let (straight, want) = never_stopped(&settings, &input, until);
    assert!(straight.stats().expired > 0, "retention must be exercised");
    assert!(straight.stats().erased > 0, "erasure must be exercised");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = Engine::new(settings.clone());
    let mut got = Vec::new();
    let mut restores = 0;
    for chunk in input.chunks(997) {
        for l in chunk {
            engine.apply(event::parse(l.as_bytes()).expect("event"), &mut got);
        }
        {
            let st = TaskStore::open(dir.path(), 3).expect("open");
            st.checkpoint(&mut engine, &BTreeMap::new(), (&[], 0), None)
                .expect("checkpoint");
        }
        // Forget everything in memory: continue from what the file holds.
        let st = TaskStore::open(dir.path(), 3).expect("reopen");
        engine = st
            .load(settings.clone())
            .expect("load")
            .expect("state")
            .engine;
        restores += 1;
    }
    engine.finish(until, &mut got);
    assert!(restores > 25);
    assert_decides_alike((&engine, &got), (&straight, &want), &c);
}

#[test]
fn a_store_restored_under_new_thresholds_decides_like_a_live_reload() {
    let old = cfg();
    let new = config::load_with_env(
        None,
        [
            (
                "CHURNWATCH__STATE__RETENTION".to_string(),
                "250d".to_string(),
            ),
            (
                "CHURNWATCH__RULES__WINBACK__MULTIPLIER".to_string(),
                "1.5".to_string(),
            ),
            ("CHURNWATCH__RISK__AT_RISK".to_string(), "0.4".to_string()),
        ],
    )
    .expect("config");
    assert_ne!(old.engine.fingerprint(), new.engine.fingerprint());
    let until = Stamp::parse_rfc3339("2027-03-01T00:00:00Z").expect("until");
    let input = lines();
    let (first, rest) = input.split_at(input.len() / 2);

    // Reference: the new thresholds swapped in while running.
    let mut live = Engine::new(Arc::new(old.engine.clone()));
    let mut want = Vec::new();
    for l in first {
        live.apply(event::parse(l.as_bytes()).expect("event"), &mut want);
    }
    live.set_settings(Arc::new(new.engine.clone()));
    for l in rest {
        live.apply(event::parse(l.as_bytes()).expect("event"), &mut want);
    }
    live.finish(until, &mut want);

    // A restart with the new config in between.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = Engine::new(Arc::new(old.engine.clone()));
    let mut got = Vec::new();
    for l in first {
        engine.apply(event::parse(l.as_bytes()).expect("event"), &mut got);
    }
    let st = TaskStore::open(dir.path(), 0).expect("open");
    st.checkpoint(&mut engine, &BTreeMap::new(), (&[], 0), None)
        .expect("checkpoint");
    let mut engine = st
        .load(Arc::new(new.engine.clone()))
        .expect("load")
        .expect("state")
        .engine;
    assert!(engine.has_changes(), "moved due times are saved next time");
    for l in rest {
        engine.apply(event::parse(l.as_bytes()).expect("event"), &mut got);
    }
    engine.finish(until, &mut got);
    let (g, w) = (json(&got, &new), json(&want, &new));
    if let Some(i) = (0..g.len().min(w.len())).find(|&i| g[i] != w[i]) {
        panic!(
            "alerts differ from #{i} of {} / {}:\n{}\n{}",
            g.len(),
            w.len(),
            g[i],
            w[i]
        );
    }
    assert_eq!(g.len(), w.len(), "alerts");
    assert_eq!(engine.snapshots_sorted(), live.snapshots_sorted());
}

fn email(n: u32) -> Entry {
    Entry::Email(Email {
        message_id: format!("id{n}@example.com"),
        alert_id: format!("id{n}"),
        customer_id: "c-1".into(),
        locale: "en".into(),
        to: "c-1@example.com".into(),
        timezone: "Asia/Riyadh".into(),
        message: Ok(b"Subject: hi\r\n\r\nhello".to_vec()),
    })
}

#[test]
fn outbox_entries_and_offsets_survive_a_reopen_until_removed() {
    let c = cfg();
    let settings = Arc::new(c.engine.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let offsets: BTreeMap<String, i64> =
        [("shop.purchases".into(), 42), ("shop.support".into(), 7)]
            .into_iter()
            .collect();
    {
        let st = TaskStore::open(dir.path(), 0).expect("open");
        assert!(st.offsets().expect("offsets").is_none(), "new store");
        let mut e = Engine::new(settings.clone());
        let entries = vec![
            Entry::Alert {
                key: "c-1".into(),
                payload: "{}".into(),
            },
            email(1),
            Entry::DeadLetter {
                key: None,
                payload: b"not json".to_vec(),
                headers: vec![("churnwatch.reject.class".into(), Some(b"json".to_vec()))],
            },
        ];
        st.checkpoint(&mut e, &offsets, (&entries, 10), None)
            .expect("checkpoint");
        st.mark_done([11], None).expect("mark");
    }
    let st = TaskStore::open(dir.path(), 0).expect("reopen");
    assert_eq!(st.offsets().expect("offsets"), Some(offsets.clone()));
    let loaded = st.load(settings.clone()).expect("load").expect("state");
    let numbers: Vec<u64> = loaded.pending.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![10, 12], "entry 11 was removed");
    assert_eq!(loaded.next_entry, 13, "numbers never repeat");
    assert!(matches!(loaded.pending[1].1, Entry::DeadLetter { .. }));
    // The next checkpoint numbers on.
    let mut e = loaded.engine;
    st.checkpoint(&mut e, &offsets, (&[email(2)], loaded.next_entry), None)
        .expect("checkpoint");
    st.mark_done([10, 12], None).expect("mark");
    drop(st);
    let st = TaskStore::open(dir.path(), 0).expect("reopen");
    let loaded = st.load(settings).expect("load").expect("state");
    assert_eq!(
        loaded.pending.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![13]
    );
    assert_eq!(loaded.pending[0].1, email(2));
}

#[test]
fn a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _held = TaskStore::open(dir.path(), 1).expect("open");
    let err = TaskStore::open(dir.path(), 1)
        .err()
        .expect("second open refused");
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("task-1.redb"), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    // `inspect` beside a running worker is told so, instead of reading a moving file.
    let err = TaskStore::open_read_only(dir.path(), 1)
        .err()
        .expect("read-only open refused while a writer holds it");
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
}

/// Writes a store with some customers and returns its file.
fn written_store(dir: &Path) -> std::path::PathBuf {
    let c = cfg();
    let mut e = Engine::new(Arc::new(c.engine.clone()));
    let mut out = Vec::new();
    for l in gen::lines(5_000, 500, 3) {
        e.apply(event::parse(l.as_bytes()).expect("event"), &mut out);
    }
    let st = TaskStore::open(dir, 0).expect("open");
    st.checkpoint(&mut e, &BTreeMap::new(), (&[], 0), None)
        .expect("checkpoint");
    st.path().to_path_buf()
}

#[test]
fn a_damaged_store_is_an_error_naming_the_file_not_an_empty_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = written_store(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    // Flip bytes in the middle of the file: inside committed pages.
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("write");
    let settings = Arc::new(cfg().engine.clone());
    let result = TaskStore::open(dir.path(), 0).and_then(|st| st.load(settings));
    match result {
        Err(e) => assert!(e.to_string().contains("task-0.redb"), "{e}"),
        Ok(loaded) => panic!(
            "a damaged store loaded ({} customers)",
            loaded.map_or(0, |l| l.engine.len())
        ),
    }

    // Not a store at all.
    std::fs::write(
        &path,
        b"this is not a redb file, just some text long enough",
    )
    .expect("w");
    let err = TaskStore::open(dir.path(), 0).err().expect("refused");
    assert!(err.to_string().contains("task-0.redb"), "{err}");
}

#[test]
fn inspect_explains_a_stored_customer_and_redacts_contact_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        [
            r#"{"event_id":"p","type":"customer_profile","customer_id":"c-9","occurred_at":"2026-01-01T00:00:00Z","email":"jane@example.com","name":"Jane Doe","marketing_consent":true}"#,
            r#"{"event_id":"b1","type":"purchase","customer_id":"c-9","occurred_at":"2026-01-02T00:00:00Z","order_id":"o1","amount":"10.00","currency":"USD"}"#,
            r#"{"event_id":"b2","type":"purchase","customer_id":"c-9","occurred_at":"2026-02-02T00:00:00Z","order_id":"o2","amount":"12.50","currency":"USD"}"#,
        ]
        .join("\n"),
    )
    .expect("events");
    let bin = env!("CARGO_BIN_EXE_churnwatch");
    let clean = |c: &mut Command| {
        c.current_dir(env!("CARGO_MANIFEST_DIR"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CHURNWATCH") {
                c.env_remove(k);
            }
        }
    };
    let mut replay = Command::new(bin);
    clean(&mut replay);
    let export = dir.path().join("export.jsonl");
    let st = replay
        .args(["replay", "--until", "2026-06-01T00:00:00Z", "--events"])
        .arg(&events)
        .arg("--outbox")
        .arg(&out)
        .arg("--export-customers")
        .arg(&export)
        .status()
        .expect("replay");
    assert!(st.success());

    let inspect = |personal: bool| {
        let mut c = Command::new(bin);
        clean(&mut c);
        c.args(["inspect", "c-9", "--state"]).arg(out.join("state"));
        if personal {
            c.arg("--personal");
        }
        let o = c.output().expect("inspect");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    let v = inspect(false);
    let exported: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&export).expect("export").trim())
            .expect("export json");
    assert_eq!(
        v["customer"], exported,
        "inspect shows what replay exported"
    );
    assert_eq!(v["customer"]["purchases"], 2);
    assert_eq!(v["profile"]["email"], "j•••@example.com");
    assert_eq!(v["profile"]["name"], "J•••");
    assert!(!v.to_string().contains("jane@"), "{v}");
    let p = inspect(true);
    assert_eq!(p["profile"]["email"], "jane@example.com");
    assert_eq!(p["profile"]["name"], "Jane Doe");

    let mut missing = Command::new(bin);
    clean(&mut missing);
    let o = missing
        .args(["inspect", "nobody", "--state"])
        .arg(out.join("state"))
        .output()
        .expect("inspect");
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no customer"));
}

#[test]
fn a_customer_silent_for_the_retention_horizon_is_dropped_from_memory_and_store() {
    let c = cfg(); // retention 250 days
    let settings = Arc::new(c.engine.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = |id: &str, who: &str, at: &str| {
        event::parse(
            format!(r#"{{"event_id":"{id}","type":"purchase","customer_id":"{who}","occurred_at":"{at}","order_id":"{id}","amount":"5.00","currency":"USD"}}"#)
                .as_bytes(),
        )
        .expect("event")
    };
    let mut e = Engine::new(settings.clone());
    let mut out = Vec::new();
    e.apply(ev("a1", "quiet", "2025-01-01T00:00:00Z"), &mut out);
    e.apply(ev("b1", "busy", "2025-01-01T00:00:00Z"), &mut out);
    let st = TaskStore::open(dir.path(), 0).expect("open");
    st.checkpoint(&mut e, &BTreeMap::new(), (&[], 0), None)
        .expect("checkpoint");
    assert!(st
        .inspect(settings.clone(), "quiet")
        .expect("inspect")
        .is_some());

    // "busy" keeps buying; "quiet" says nothing for 250 days and more.
    e.apply(ev("b2", "busy", "2025-06-01T00:00:00Z"), &mut out);
    // Due at 250 days (2025-09-08); like any timer of a silent customer it fires once
    // the clock is `allowed_lateness` (1 day) past it.
    e.apply(ev("b3", "busy", "2025-09-08T00:00:00Z"), &mut out);
    assert!(
        e.snapshot("quiet").is_some(),
        "250 days, lateness not yet passed: kept"
    );
    e.apply(ev("b4", "busy", "2025-09-09T12:00:00Z"), &mut out);
    assert!(e.snapshot("quiet").is_none(), "past 250 days: dropped");
    assert!(e.snapshot("busy").is_some());
    assert_eq!(e.stats().expired, 1);
    st.checkpoint(&mut e, &BTreeMap::new(), (&[], 0), None)
        .expect("checkpoint");
    assert!(
        st.inspect(settings.clone(), "quiet")
            .expect("inspect")
            .is_none(),
        "deleted from the store at the next checkpoint"
    );
    // A later event starts the customer afresh.
    e.apply(ev("a2", "quiet", "2025-09-10T00:00:00Z"), &mut out);
    assert_eq!(e.snapshot("quiet").map(|s| s.purchases), Some(1));
}

/// A changelog as a compacted topic keeps it: the latest record per key, in the order
/// of those latest records (tombstones kept, as Kafka keeps them for a while).
fn compacted(log: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut last = BTreeMap::new();
    for (i, (k, _)) in log.iter().enumerate() {
        last.insert(k.clone(), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| log[i].clone()).collect()
}

fn restore_from(st: &TaskStore, log: &[(Vec<u8>, Option<Vec<u8>>)]) {
    use churnwatch::changelog::{Change, Key};
    let changes: Vec<Change> = log
        .iter()
        .map(|(k, v)| Change {
            key: Key::decode(k).expect("a row key"),
            value: v.clone(),
        })
        .collect();
    let mut r = st.restore().expect("restore");
    for batch in changes.chunks(500) {
        r.apply(batch).expect("apply");
    }
    assert_eq!(r.finish().expect("finish"), changes.len() as u64);
}

/// docs/design.md §16 State follows tasks: the changelog of a store's writes, compacted
/// and replayed into another replica's store (holding stale content of its own), gives
/// an engine that decides exactly like the original, and the same outbox.
#[test]
fn a_store_rebuilt_from_its_compacted_changelog_decides_like_the_original() {
    let c = cfg();
    let settings = Arc::new(c.engine.clone());
    let until = Stamp::parse_rfc3339("2027-03-01T00:00:00Z").expect("until");
    let input = lines();

    let (straight, want) = never_stopped(&settings, &input, until);

    let here = tempfile::tempdir().expect("tempdir");
    let there = tempfile::tempdir().expect("tempdir");
    let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut engine = Engine::new(settings.clone());
    let mut got = Vec::new();
    let mut next = 0u64;
    let mut offsets = BTreeMap::new();
    // The other replica's store holds something stale, which the restore must replace.
    {
        let other = TaskStore::open(there.path(), 0).expect("open");
        let mut e = Engine::new(settings.clone());
        for l in &input[..500] {
            e.apply(event::parse(l.as_bytes()).expect("event"), &mut Vec::new());
        }
        other
            .checkpoint(&mut e, &BTreeMap::new(), (&[email(99)], 1_000_000), None)
            .expect("stale");
    }
    for (round, chunk) in input.chunks(1_499).enumerate() {
        for l in chunk {
            engine.apply(event::parse(l.as_bytes()).expect("event"), &mut got);
        }
        offsets.insert("t".to_string(), (round as i64 + 1) * 1_499);
        let st = TaskStore::open(here.path(), 0).expect("open");
        let entries = [email(round as u32 * 2), email(round as u32 * 2 + 1)];
        let mut m = Mirror::new(cursor(0, 0, Some(0)));
        st.checkpoint(&mut engine, &offsets, (&entries, next), Some(&mut m))
            .expect("checkpoint");
        // One entry sent, one failing transiently and waiting.
        st.mark_done([next], Some(&mut m)).expect("mark");
        st.note_first_failures(&[(next + 1, 1_700_000_000 + round as i64)], Some(&mut m))
            .expect("failure");
        if round > 0 {
            st.mark_done([next - 1], Some(&mut m)).expect("mark");
        }
        next += 2;
        log.extend(m.changes.into_iter().map(|ch| (ch.key.encode(), ch.value)));
        if round % 5 == 4 {
            // The task moves: the other replica rebuilds from the compacted changelog
            // and continues from that.
            let log = compacted(&log);
            let other = TaskStore::open(there.path(), 0).expect("open");
            restore_from(&other, &log);
            let mine = st.load(settings.clone()).expect("load").expect("state");
            let moved = other.load(settings.clone()).expect("load").expect("state");
            assert_eq!(moved.offsets, mine.offsets);
            assert_eq!(moved.next_entry, mine.next_entry);
            assert_eq!(moved.pending, mine.pending);
            assert_eq!(
                other.first_failures().expect("failures"),
                st.first_failures().expect("failures")
            );
            engine = moved.engine;
        }
    }
    engine.finish(until, &mut got);
    assert_decides_alike((&engine, &got), (&straight, &want), &c);
}

/// docs/design.md §16 "Carrying on": each mirrored write keeps, in the same
/// transaction, the changelog position its state will have; the position is the
/// store's own (no state row, not in a full copy) and goes when a restore replaces the
/// state.
#[test]
fn a_mirrored_write_keeps_its_changelog_position_beside_the_state_and_an_unmirrored_one_or_a_restore_drops_it(
) {
    use churnwatch::changelog::Position;
    let c = cfg();
    let settings = Arc::new(c.engine.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let st = TaskStore::open(dir.path(), 0).expect("open");
    assert_eq!(st.position().expect("position"), None);
    let mut engine = Engine::new(settings);
    for l in &lines()[..200] {
        engine.apply(event::parse(l.as_bytes()).expect("event"), &mut Vec::new());
    }
    let mut m = Mirror::new(cursor(7, 3, Some(40)));
    st.checkpoint(
        &mut engine,
        &BTreeMap::new(),
        (&[email(1)], 0),
        Some(&mut m),
    )
    .expect("checkpoint");
    let want = Position {
        epoch: 7,
        seq: 4,
        verified_to: Some(40),
        verified_seq: 3,
    };
    assert_eq!(st.position().expect("position"), Some(want));
    // A write that changes nothing keeps the position as it was.
    let mut m = Mirror::new(cursor(7, 4, Some(52)));
    st.note_first_failures(&[(99, 1)], Some(&mut m))
        .expect("nothing pending as 99");
    assert!(m.changes.is_empty());
    assert_eq!(st.position().expect("position"), Some(want));
    // Unverified (another writer seen): kept as such, so no carrying on from it.
    let mut m = Mirror::new(cursor(7, 4, None));
    st.mark_done([0], Some(&mut m)).expect("mark");
    assert_eq!(
        st.position()
            .expect("position")
            .map(|p| (p.seq, p.verified_to)),
        Some((5, None))
    );
    let rows = st.rows().expect("rows");
    let mut copied = 0;
    st.for_each_row(1000, |batch| {
        copied += batch.len() as u64;
        Ok(())
    })
    .expect("copy");
    assert_eq!(copied, rows, "the position is no state row");
    // A row changed without a mirror (a task this worker no longer runs): the store
    // no longer matches the changelog, so the position goes.
    let mut m = Mirror::new(cursor(7, 5, Some(60)));
    st.checkpoint(
        &mut engine,
        &BTreeMap::new(),
        (&[email(2)], 1),
        Some(&mut m),
    )
    .expect("checkpoint");
    assert!(st.position().expect("position").is_some());
    st.mark_done([1], None).expect("mark");
    assert_eq!(st.position().expect("position"), None);
    // One that changes nothing leaves it alone.
    st.set_position(want).expect("set");
    st.mark_done([1], None).expect("mark again");
    assert_eq!(st.position().expect("position"), Some(want));
    let r = st.restore().expect("restore");
    r.finish().expect("finish");
    assert_eq!(
        st.position().expect("position"),
        None,
        "a restored state has no position until its copy is written"
    );
}

/// Where a writer stands: epoch, last marker, verified offset.
fn cursor(epoch: u64, seq: u64, verified_to: Option<i64>) -> Cursor {
    Cursor {
        epoch,
        seq,
        verified_to,
    }
}
