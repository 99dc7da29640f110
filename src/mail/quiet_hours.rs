//! Quiet hours (docs/design.md §10 Sender): a daily window of local time in which no email is sent. An
//! email that falls in it is deferred to the window's end in the customer's own time
//! zone, never dropped.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A daily window `start`–`end` of local wall-clock time; it may run past midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    start: Time,
    end: Time,
}

fn parse_time(s: &str) -> Result<Time, String> {
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not HH:MM"))?;
    let h: i8 = h.parse().map_err(|_| format!("`{s}` is not HH:MM"))?;
    let m: i8 = m.parse().map_err(|_| format!("`{s}` is not HH:MM"))?;
    if h == 24 && m == 0 {
        // 24:00 is the end of the day; as a time of day it is midnight.
        return Ok(Time::midnight());
    }
    Time::new(h, m, 0, 0).map_err(|_| format!("`{s}` is not a time of day (00:00–23:59)"))
}

impl QuietHours {
    /// Parses `"HH:MM-HH:MM"` (e.g. `"21:00-08:00"`); `""` means no quiet hours. A window
    /// that never opens (start equal to end) is refused.
    pub fn parse(s: &str) -> Result<Option<QuietHours>, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not HH:MM-HH:MM (e.g. \"21:00-08:00\")"))?;
        let (start, end) = (parse_time(a)?, parse_time(b)?);
        if start == end {
            return Err(format!(
                "`{s}` covers the whole day: emails would never be sent (use \"\" for no quiet hours)"
            ));
        }
        Ok(Some(QuietHours { start, end }))
    }

    fn contains(&self, t: Time) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// When an email may go out: `None` if `now` is outside the window in `tz`,
    /// otherwise the instant the window ends there. Across a DST change the end is the
    /// local time as the clock shows it that day (a skipped time moves later).
    pub fn defer_until(&self, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = now.to_zoned(tz.clone());
        if !self.contains(local.time()) {
            return None;
        }
        let today = local.date();
        let day = if local.time() < self.end {
            today
        } else {
            today.checked_add(1.day()).ok()?
        };
        let end = day.to_datetime(self.end).to_zoned(tz.clone()).ok()?;
        Some(end.timestamp())
    }
}

/// The time zone of a customer: their IANA name if it is known, else `fallback`.
pub fn zone(name: &str, fallback: &TimeZone) -> TimeZone {
    if name.is_empty() {
        return fallback.clone();
    }
    jiff::tz::db()
        .get(name)
        .unwrap_or_else(|_| fallback.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn window_past_midnight() {
        let q = QuietHours::parse("21:00-08:00").unwrap().unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(q.defer_until(ts("2026-05-01T12:00:00Z"), &utc), None);
        assert_eq!(q.defer_until(ts("2026-05-01T08:00:00Z"), &utc), None);
        assert_eq!(
            q.defer_until(ts("2026-05-01T21:00:00Z"), &utc),
            Some(ts("2026-05-02T08:00:00Z"))
        );
        assert_eq!(
            q.defer_until(ts("2026-05-02T03:10:00Z"), &utc),
            Some(ts("2026-05-02T08:00:00Z"))
        );
    }

    #[test]
    fn window_within_a_day() {
        let q = QuietHours::parse("12:00-14:00").unwrap().unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(q.defer_until(ts("2026-05-01T11:59:00Z"), &utc), None);
        assert_eq!(
            q.defer_until(ts("2026-05-01T13:00:00Z"), &utc),
            Some(ts("2026-05-01T14:00:00Z"))
        );
    }

    #[test]
    fn customer_time_zone_decides() {
        let q = QuietHours::parse("21:00-08:00").unwrap().unwrap();
        let riyadh = zone("Asia/Riyadh", &TimeZone::UTC);
        // 19:00 UTC is 22:00 in Riyadh (UTC+3): quiet until 08:00 local = 05:00 UTC.
        assert_eq!(
            q.defer_until(ts("2026-05-01T19:00:00Z"), &riyadh),
            Some(ts("2026-05-02T05:00:00Z"))
        );
        assert_eq!(
            q.defer_until(ts("2026-05-01T19:00:00Z"), &TimeZone::UTC),
            None
        );
        // An unknown zone falls back.
        assert_eq!(zone("Mars/Olympus", &TimeZone::UTC), TimeZone::UTC);
    }

    #[test]
    fn across_a_dst_change() {
        let q = QuietHours::parse("21:00-08:00").unwrap().unwrap();
        let ny = zone("America/New_York", &TimeZone::UTC);
        // 2026-03-08 is the spring-forward night in New York: 23:00 EST on the 7th is
        // 04:00 UTC; the window ends at 08:00 EDT (UTC−4) = 12:00 UTC, not 13:00.
        assert_eq!(
            q.defer_until(ts("2026-03-08T04:00:00Z"), &ny),
            Some(ts("2026-03-08T12:00:00Z"))
        );
        // Autumn back (2026-11-01): 08:00 EST = 13:00 UTC.
        assert_eq!(
            q.defer_until(ts("2026-11-01T04:30:00Z"), &ny),
            Some(ts("2026-11-01T13:00:00Z"))
        );
        // A window ending in the skipped hour (02:30 does not exist on 03-08) ends at
        // the first time that does.
        let q = QuietHours::parse("01:00-02:30").unwrap().unwrap();
        let until = q.defer_until(ts("2026-03-08T06:30:00Z"), &ny).unwrap();
        assert_eq!(until, ts("2026-03-08T07:30:00Z"));
    }

    #[test]
    fn bad_windows_are_refused() {
        assert_eq!(QuietHours::parse("").unwrap(), None);
        assert!(QuietHours::parse("08:00-08:00")
            .unwrap_err()
            .contains("whole day"));
        assert!(QuietHours::parse("00:00-24:00")
            .unwrap_err()
            .contains("whole day"));
        assert!(QuietHours::parse("25:00-08:00").is_err());
        assert!(QuietHours::parse("9pm").is_err());
    }
}
