//! One task's partitions merged by event time (docs/design.md §4 Tasks).
//!
//! A task is partition `p` of every input topic (one *lane* per topic). Records are
//! taken in `occurred_at` order across the lanes (ties: the earlier topic in
//! `kafka.topics`, as `replay` breaks ties by file order), so the engine sees the same
//! sequence whatever the fetch timing. As in Kafka Streams (`max.task.idle.ms`, KIP-695),
//! a lane with nothing buffered always holds the task back while the broker has records
//! for it that are not fetched yet; once it is caught up it holds the task back at most
//! `kafka.max_task_idle`, waiting for producers. No I/O here: the Kafka adapter feeds it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::engine::clock::Stamp;
use crate::event::Event;

/// A parsed record waiting in its lane.
#[derive(Debug)]
pub struct Pending {
    /// Its offset in the partition.
    pub offset: i64,
    /// The event.
    pub event: Event,
}

#[derive(Debug, Default)]
struct Lane {
    buf: VecDeque<Pending>,
    /// Offset after the last record received (parsed or rejected).
    received: Option<i64>,
    /// The partition's end as last reported by the broker.
    high_watermark: Option<i64>,
    /// Where fetching started, when known (stored or committed offset).
    start: Option<i64>,
    /// Since when the lane has been empty and caught up.
    empty_since: Option<Instant>,
}

impl Lane {
    fn position(&self) -> Option<i64> {
        self.received.or(self.start)
    }

    /// Whether the broker is known to hold no record past what was received:
    /// `Some(true)` caught up, `Some(false)` records waiting, `None` not known yet.
    fn caught_up(&self) -> Option<bool> {
        match (self.high_watermark, self.position()) {
            (Some(h), Some(p)) => Some(p >= h),
            (Some(0), None) => Some(true),
            _ => None,
        }
    }
}

/// The merge of one task's lanes.
#[derive(Debug)]
pub struct TaskMerge {
    lanes: Vec<Lane>,
}

impl TaskMerge {
    /// A merge over `lanes` partitions (one per input topic).
    pub fn new(lanes: usize) -> TaskMerge {
        TaskMerge {
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
        }
    }

    /// Number of lanes.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Records buffered in every lane.
    pub fn buffered(&self) -> usize {
        self.lanes.iter().map(|l| l.buf.len()).sum()
    }

    /// Whether `lane` should stop fetching (`paused`: whether it has). Once the task holds
    /// `max` records, lanes with records waiting are paused; a lane with nothing buffered
    /// keeps fetching, since the merge may be waiting for it, so the task never stalls on
    /// its own pause. A paused lane resumes once it is empty or the task has drained to
    /// half of `max` (not at `max - 1`, which would pause and resume every round).
    pub fn hold(&self, lane: usize, paused: bool, max: usize) -> bool {
        if self.lanes[lane].buf.is_empty() {
            return false;
        }
        let n = self.buffered();
        if paused {
            n > max / 2
        } else {
            n >= max
        }
    }

    /// Fetching of `lane` starts at `offset` (drops whatever was buffered).
    pub fn start(&mut self, lane: usize, offset: Option<i64>) {
        let l = &mut self.lanes[lane];
        l.buf.clear();
        l.received = None;
        l.start = offset;
        l.empty_since = None;
    }

    /// A record at `offset` arrived on `lane` and was dealt with outside the merge (a
    /// reject): only the lane's position moves.
    pub fn skip(&mut self, lane: usize, offset: i64) {
        self.lanes[lane].received = Some(offset + 1);
    }

    /// A parsed record arrived on `lane`.
    pub fn push(&mut self, lane: usize, offset: i64, event: Event) {
        let l = &mut self.lanes[lane];
        l.received = Some(offset + 1);
        l.empty_since = None;
        l.buf.push_back(Pending { offset, event });
    }

    /// The broker reported `high` as the end of `lane`'s partition.
    pub fn set_high_watermark(&mut self, lane: usize, high: i64) {
        self.lanes[lane].high_watermark = (high >= 0).then_some(high);
    }

    /// The broker reported `low` as the start of `lane`'s partition: a lane started
    /// with no offset of its own (nothing committed) reads from there.
    pub fn set_low_watermark(&mut self, lane: usize, low: i64) {
        let l = &mut self.lanes[lane];
        if l.start.is_none() && low >= 0 {
            l.start = Some(low);
        }
    }

    /// True when every lane is empty and caught up with its partition.
    pub fn caught_up(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| l.buf.is_empty() && l.caught_up() == Some(true))
    }

    /// Records the broker holds beyond what this task has taken, where known.
    pub fn lag(&self) -> i64 {
        self.lanes
            .iter()
            .map(|l| match (l.high_watermark, self.committable_of(l)) {
                (Some(h), Some(p)) => (h - p).max(0),
                _ => 0,
            })
            .sum()
    }

    /// The next record in event-time order, or `None` while a lane must be waited for.
    pub fn next(&mut self, now: Instant, max_idle: Duration) -> Option<(usize, Pending)> {
        if self.lanes.iter().all(|l| l.buf.is_empty()) {
            // Nothing waits to be processed, so nothing is being held back: the idle
            // time counts from when a record has to wait for an empty lane.
            for l in &mut self.lanes {
                l.empty_since = None;
            }
            return None;
        }
        for l in &mut self.lanes {
            if !l.buf.is_empty() {
                continue;
            }
            match l.caught_up() {
                // Records on the broker not fetched yet: they may sort first. Nor is the
                // end known yet (just assigned, first fetch pending): as Kafka Streams
                // does (KIP-695), unknown lag is waited out, not counted as idle time,
                // or a slow first fetch after a restart would reorder the task.
                Some(false) | None => return None,
                // Caught up: wait a while for more.
                Some(true) => {
                    let since = *l.empty_since.get_or_insert(now);
                    if now.duration_since(since) < max_idle {
                        return None;
                    }
                }
            }
        }
        let mut best: Option<(usize, Stamp)> = None;
        for (i, l) in self.lanes.iter().enumerate() {
            if let Some(h) = l.buf.front() {
                if best.is_none_or(|(_, at)| h.event.at < at) {
                    best = Some((i, h.event.at));
                }
            }
        }
        let (i, _) = best?;
        let p = self.lanes[i].buf.pop_front()?;
        Some((i, p))
    }

    fn committable_of(&self, l: &Lane) -> Option<i64> {
        match l.buf.front() {
            Some(h) => Some(h.offset),
            None => l.position(),
        }
    }

    /// The offset to commit for `lane`: every record before it has had its effect.
    pub fn committable(&self, lane: usize) -> Option<i64> {
        self.committable_of(&self.lanes[lane])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event;

    fn ev(id: &str, at: &str) -> Event {
        let line = format!(
            r#"{{"event_id":"{id}","type":"complaint","customer_id":"c","occurred_at":"{at}"}}"#
        );
        event::parse(line.as_bytes()).expect("valid event")
    }

    const IDLE: Duration = Duration::from_secs(1);

    #[test]
    fn takes_the_earliest_head_and_breaks_ties_by_lane() {
        let mut m = TaskMerge::new(2);
        let now = Instant::now();
        m.push(0, 0, ev("a", "2025-01-02T00:00:00Z"));
        m.push(1, 0, ev("b", "2025-01-01T00:00:00Z"));
        m.push(1, 1, ev("c", "2025-01-02T00:00:00Z"));
        let order: Vec<(usize, i64)> = std::iter::from_fn(|| m.next(now, IDLE))
            .map(|(l, p)| (l, p.offset))
            .collect();
        assert_eq!(
            order,
            vec![(1, 0), (0, 0)],
            "lane 0 is empty and its end unknown"
        );
        m.set_high_watermark(0, 1);
        m.set_high_watermark(1, 2);
        assert!(!m.caught_up());
        assert!(
            m.next(now + IDLE, IDLE).is_none(),
            "idle time counts once lane 0 is known to be caught up"
        );
        let (lane, _) = m.next(now + IDLE * 2, IDLE).expect("idle time passed");
        assert_eq!(lane, 1);
        assert!(m.caught_up());
        assert_eq!(m.committable(0), Some(1));
        assert_eq!(m.committable(1), Some(2));
    }

    #[test]
    fn an_empty_lane_with_records_on_the_broker_holds_the_task_however_long() {
        let mut m = TaskMerge::new(2);
        let t0 = Instant::now();
        m.push(0, 5, ev("a", "2025-01-02T00:00:00Z"));
        m.start(1, Some(0));
        m.set_high_watermark(1, 3);
        assert!(
            m.next(t0, IDLE).is_none(),
            "lane 1 has records not yet fetched"
        );
        assert!(m.next(t0 + IDLE * 100, IDLE).is_none());
        m.push(1, 0, ev("b", "2025-01-01T00:00:00Z"));
        let (lane, p) = m
            .next(t0 + IDLE * 100, IDLE)
            .expect("both lanes have heads");
        assert_eq!((lane, p.offset), (1, 0));
    }

    #[test]
    fn an_empty_lane_that_is_caught_up_holds_the_task_at_most_the_idle_time() {
        let mut m = TaskMerge::new(2);
        let t0 = Instant::now();
        m.start(1, Some(7));
        m.set_high_watermark(1, 7);
        m.push(0, 0, ev("a", "2025-01-02T00:00:00Z"));
        assert!(m.next(t0, IDLE).is_none(), "waits for producers a while");
        assert!(m.next(t0 + IDLE / 2, IDLE).is_none());
        assert_eq!(m.next(t0 + IDLE, IDLE).map(|(l, _)| l), Some(0));
        assert_eq!(m.committable(1), Some(7));
        assert_eq!(m.committable(0), Some(1));
    }

    #[test]
    fn the_idle_time_counts_from_when_a_record_has_to_wait() {
        let mut m = TaskMerge::new(2);
        let t0 = Instant::now();
        m.set_high_watermark(0, 0);
        m.set_high_watermark(1, 0);
        assert!(m.next(t0, IDLE).is_none(), "nothing buffered");
        m.push(0, 0, ev("a", "2025-01-02T00:00:00Z"));
        let later = t0 + IDLE * 10;
        assert!(
            m.next(later, IDLE).is_none(),
            "lane 1 was idle, but nobody waited"
        );
        assert!(m.next(later + IDLE, IDLE).is_some());
    }

    #[test]
    fn a_fresh_lane_reads_from_the_low_watermark_so_its_records_are_waited_for() {
        let mut m = TaskMerge::new(2);
        let t0 = Instant::now();
        m.push(0, 0, ev("a", "2025-01-02T00:00:00Z"));
        m.set_high_watermark(1, 4);
        m.set_low_watermark(1, 0);
        assert!(m.next(t0 + IDLE * 10, IDLE).is_none());
        assert_eq!(m.committable(1), Some(0));
    }

    #[test]
    fn a_lane_whose_end_is_not_known_yet_holds_the_task_until_it_is() {
        let mut m = TaskMerge::new(2);
        let t0 = Instant::now();
        m.push(0, 0, ev("a", "2025-01-02T00:00:00Z"));
        m.start(1, Some(3));
        assert!(m.next(t0, IDLE).is_none());
        assert!(
            m.next(t0 + IDLE * 100, IDLE).is_none(),
            "a slow first fetch is not idle time"
        );
        // The first fetch reports the end: caught up, so the idle time now counts.
        m.set_high_watermark(1, 3);
        assert!(m.next(t0 + IDLE * 100, IDLE).is_none());
        assert!(m.next(t0 + IDLE * 101, IDLE).is_some());
    }

    #[test]
    fn committable_stops_at_the_first_record_not_yet_taken() {
        let mut m = TaskMerge::new(1);
        m.push(0, 10, ev("a", "2025-01-02T00:00:00Z"));
        m.skip(0, 11);
        m.push(0, 12, ev("b", "2025-01-03T00:00:00Z"));
        assert_eq!(m.committable(0), Some(10));
        m.set_high_watermark(0, 13);
        let now = Instant::now();
        assert!(m.next(now, IDLE).is_some());
        assert_eq!(m.committable(0), Some(12), "the reject at 11 is done");
        assert_eq!(m.lag(), 1);
        assert!(m.next(now, IDLE).is_some());
        assert_eq!(m.committable(0), Some(13));
        assert_eq!(m.lag(), 0);
    }

    #[test]
    fn lanes_with_records_pause_at_the_bound_and_an_empty_lane_never_does() {
        let mut m = TaskMerge::new(2);
        let t0 = Instant::now();
        m.set_high_watermark(1, 0);
        for i in 0..4 {
            m.push(0, i, ev(&format!("a{i}"), "2025-01-02T00:00:00Z"));
        }
        assert!(!m.hold(0, false, 5), "below the bound");
        m.push(0, 4, ev("a4", "2025-01-02T00:00:00Z"));
        assert!(m.hold(0, false, 5), "at the bound");
        assert!(
            !m.hold(1, false, 5),
            "the lane the task waits for keeps fetching"
        );
        assert!(m.hold(0, true, 5), "stays paused above half the bound");
        // Lane 1 stays caught up past the idle time: lane 0 drains.
        assert!(m.next(t0, IDLE).is_none());
        let mut taken = 0;
        while m.next(t0 + IDLE, IDLE).is_some() {
            taken += 1;
            if taken == 3 {
                assert!(!m.hold(0, true, 5), "half the bound: resumed");
            }
        }
        assert_eq!(taken, 5);
        assert!(!m.hold(0, true, 5), "empty: resumed");
    }

    #[test]
    fn a_restart_of_a_lane_drops_what_was_buffered() {
        let mut m = TaskMerge::new(1);
        m.push(0, 3, ev("a", "2025-01-02T00:00:00Z"));
        m.start(0, Some(3));
        assert_eq!(m.buffered(), 0);
        assert_eq!(m.committable(0), Some(3));
    }
}
