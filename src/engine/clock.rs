//! Event time as the engine sees it: compact instants and durations in seconds.
//!
//! Instants are stored as seconds since 2000-01-01T00:00:00Z in a `NonZeroU32`, so an
//! `Option<Stamp>` costs four bytes of per-customer state and covers 2000..2136.

use std::num::NonZeroU32;

/// Seconds between the Unix epoch and 2000-01-01T00:00:00Z.
const EPOCH_2000: i64 = 946_684_800;

/// Seconds in one day, the unit most thresholds are written in.
pub const DAY: u32 = 86_400;

/// A length of event time in seconds.
pub type Secs = u32;

/// An instant of event time, one-second resolution, after 2000-01-01T00:00:00Z.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Stamp(NonZeroU32);

impl Stamp {
    /// The earliest representable instant, 2000-01-01T00:00:01Z.
    pub const MIN: Stamp = Stamp(NonZeroU32::MIN);
    /// The latest representable instant (early 2136).
    pub const MAX: Stamp = Stamp(NonZeroU32::MAX);

    /// Converts Unix seconds; `None` outside the supported range.
    pub fn from_unix(secs: i64) -> Option<Stamp> {
        let rel = secs.checked_sub(EPOCH_2000)?;
        let rel = u32::try_from(rel).ok()?;
        NonZeroU32::new(rel).map(Stamp)
    }

    /// Builds a stamp from the raw seconds-since-2000 value (0 is clamped to `MIN`).
    pub fn from_raw(raw: u32) -> Stamp {
        Stamp(NonZeroU32::new(raw).unwrap_or(NonZeroU32::MIN))
    }

    /// Seconds since 2000-01-01T00:00:00Z.
    pub fn raw(self) -> u32 {
        self.0.get()
    }

    /// Unix seconds.
    pub fn unix(self) -> i64 {
        i64::from(self.0.get()) + EPOCH_2000
    }

    /// Whole days since 2000-01-01, used for day-granular bookkeeping.
    pub fn day(self) -> u16 {
        u16::try_from(self.0.get() / DAY).unwrap_or(u16::MAX)
    }

    /// This instant plus `d`, saturating at `MAX`.
    pub fn plus(self, d: Secs) -> Stamp {
        Stamp::from_raw(self.0.get().saturating_add(d))
    }

    /// This instant minus `d`, saturating at `MIN`.
    pub fn minus(self, d: Secs) -> Stamp {
        Stamp::from_raw(self.0.get().saturating_sub(d))
    }

    /// Seconds from `earlier` to `self` (0 when `earlier` is later).
    pub fn since(self, earlier: Stamp) -> Secs {
        self.0.get().saturating_sub(earlier.0.get())
    }

    /// Fractional days from `earlier` to `self` (0 when `earlier` is later).
    pub fn days_since(self, earlier: Stamp) -> f64 {
        f64::from(self.since(earlier)) / f64::from(DAY)
    }

    /// Parses an RFC 3339 timestamp that carries an offset (`Z` or `±hh:mm`).
    pub fn parse_rfc3339(s: &str) -> Result<Stamp, String> {
        if let Some(unix) = fast_rfc3339(s.as_bytes()) {
            return Stamp::from_unix(unix).ok_or_else(|| {
                "outside the supported range: after 2000-01-01T00:00:00Z, before 2136-02-07"
                    .to_string()
            });
        }
        let ts: jiff::Timestamp = s
            .parse()
            .map_err(|e: jiff::Error| format!("not an RFC 3339 timestamp with offset: {e}"))?;
        Stamp::from_unix(ts.as_second()).ok_or_else(|| {
            "outside the supported range: after 2000-01-01T00:00:00Z, before 2136-02-07".to_string()
        })
    }

    /// Formats as RFC 3339 UTC with second precision (`2025-03-01T10:00:00Z`).
    pub fn to_rfc3339(self) -> String {
        let secs = self.unix();
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    /// The same calendar instant `years` years later (UTC; 29 Feb maps to 28 Feb).
    pub fn plus_years(self, years: u8) -> Stamp {
        let secs = self.unix();
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let y = y + i64::from(years);
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let d = if m == 2 && d == 29 && !leap { 28 } else { d };
        Stamp::from_unix(days_from_civil(y, m, d) * 86_400 + rem).unwrap_or(Stamp::MAX)
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, checked strictly; anything
/// else (or anything doubtful) goes to jiff's full parser. Parsing dominates the cost of
/// an event, and this shape is nearly every event.
fn fast_rfc3339(b: &[u8]) -> Option<i64> {
    fn num(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &rest[1 + digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = num(&[*h1, *h2])?;
            let m = num(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    if day > month_days[(month - 1) as usize] {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Parses a human duration such as `"60d"`, `"48h"` or `"90 days"` into seconds.
pub fn parse_duration(s: &str) -> Result<Secs, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like \"60d\" or \"48h\": {e}"))?;
    u32::try_from(d.as_secs()).map_err(|_| format!("`{s}` is longer than 136 years"))
}

/// A duration as the config file writes it (`"60d"`, `"48h"`), read into whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Secs);

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

/// Formats seconds back into the shortest human form used in the config (`"14d"`).
pub fn format_duration(secs: Secs) -> String {
    if secs.is_multiple_of(DAY) {
        format!("{}d", secs / DAY)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_to_the_same_instant() {
        let a = Stamp::parse_rfc3339("2025-03-01T13:00:00+03:00").unwrap();
        let b = Stamp::parse_rfc3339("2025-03-01T10:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_rfc3339(), "2025-03-01T10:00:00Z");
    }

    #[test]
    fn fast_path_agrees_with_jiff() {
        for s in [
            "2025-03-01T10:00:00Z",
            "2024-02-29T23:59:59+05:30",
            "2026-12-31T00:00:00.123456-08:00",
            "2000-01-01T00:00:01Z",
            "2100-03-01T12:00:00+00:00",
            "2025-07-15t08:09:10z",
        ] {
            let jiff: jiff::Timestamp = s.parse().unwrap();
            assert_eq!(fast_rfc3339(s.as_bytes()), Some(jiff.as_second()), "{s}");
        }
        // doubtful shapes are left to jiff (which may accept or reject them)
        for s in [
            "2025-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-03-01T10:00:00",
            "2025-03-01 10:00:00Z",
            "2025-03-01T24:00:00Z",
        ] {
            assert_eq!(fast_rfc3339(s.as_bytes()), None, "{s}");
        }
        assert!(Stamp::parse_rfc3339("2025-02-29T00:00:00Z").is_err());
    }

    #[test]
    fn rejects_missing_offset_and_out_of_range() {
        assert!(Stamp::parse_rfc3339("2025-03-01T10:00:00").is_err());
        assert!(Stamp::parse_rfc3339("1999-12-31T23:59:59Z").is_err());
        assert!(Stamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn formatting_agrees_with_jiff() {
        let mut t = Stamp::MIN;
        while t < Stamp::from_raw(4_000_000_000) {
            let jiff = jiff::Timestamp::from_second(t.unix()).unwrap();
            assert_eq!(
                t.to_rfc3339(),
                jiff.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
            );
            t = t.plus(7_919_993);
        }
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("60d").unwrap(), 60 * DAY);
        assert_eq!(parse_duration("48h").unwrap(), 48 * 3600);
        assert_eq!(format_duration(14 * DAY), "14d");
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn plus_years_agrees_with_jiff() {
        let mut t = Stamp::MIN;
        while t < Stamp::from_raw(3_000_000_000) {
            for n in [1u8, 2, 4, 7] {
                let ts = jiff::Timestamp::from_second(t.unix()).unwrap();
                let z = ts
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .checked_add(jiff::Span::new().years(i64::from(n)))
                    .unwrap();
                assert_eq!(
                    t.plus_years(n).unix(),
                    z.timestamp().as_second(),
                    "{t:?} + {n}"
                );
            }
            t = t.plus(5_356_801);
        }
    }

    #[test]
    fn years_follow_the_calendar() {
        let a = Stamp::parse_rfc3339("2024-02-29T12:00:00Z").unwrap();
        assert_eq!(a.plus_years(1).to_rfc3339(), "2025-02-28T12:00:00Z");
        let b = Stamp::parse_rfc3339("2025-06-15T08:30:00Z").unwrap();
        assert_eq!(b.plus_years(2).to_rfc3339(), "2027-06-15T08:30:00Z");
    }
}
