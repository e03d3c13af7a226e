//! Budget windows: calendar periods in the configured time zone.
//!
//! A window starts on the calendar boundary that contains the instant: the start of the minute
//! or hour, midnight for a day, Monday midnight for a week (ISO 8601), midnight of the 1st for a
//! month. Boundaries are computed in the time zone, so a day in Europe/Paris is 23 or 25 hours
//! long across a daylight-saving change and still resets at local midnight. Where the clock goes
//! back, a repeated local hour is two hour windows (one per occurrence); where it goes back by
//! half an hour (Lord Howe Island), the partly repeated hour is one 90-minute window. Windows
//! always tile time: each instant lies in exactly one, and the next starts where it ends.

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan, ZonedDateTime as Zoned};

use crate::config::BudgetWindow;

/// One window: `[start_ms, end_ms)` in ms since the epoch; `end_ms` is `None` for `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    pub start_ms: i64,
    pub end_ms: Option<i64>,
}

/// The window of `window` containing `now_ms`.
pub fn window_span(window: BudgetWindow, now_ms: i64, zone: &TimeZone) -> WindowSpan {
    let total = WindowSpan {
        start_ms: 0,
        end_ms: None,
    };
    if window == BudgetWindow::Total {
        return total;
    }
    let Ok(now) = Timestamp::from_millisecond(now_ms) else {
        return total;
    };
    let bounds = match window {
        BudgetWindow::Minute | BudgetWindow::Hour => clock_bounds(window, now, zone),
        _ => calendar_bounds(window, &now.to_zoned_datetime(zone.clone())),
    };
    match bounds {
        Ok((start, end)) => WindowSpan {
            start_ms: start.as_millisecond(),
            end_ms: Some(end.as_millisecond()),
        },
        // Only at the edges of jiff's range (years -9999 and 9999).
        Err(_) => total,
    }
}

/// Days, weeks and months: from local midnight to local midnight.
fn calendar_bounds(
    window: BudgetWindow,
    local: &Zoned,
) -> Result<(Timestamp, Timestamp), jiff::Error> {
    let (start, end) = match window {
        BudgetWindow::Week => {
            let back = i64::from(local.weekday().to_monday_zero_offset());
            let start = local
                .start_of_day()?
                .checked_sub(back.days())?
                .start_of_day()?;
            let end = start.checked_add(7.days())?.start_of_day()?;
            (start, end)
        }
        BudgetWindow::Month => {
            let start = local.first_of_month()?.start_of_day()?;
            let end = local.last_of_month()?.tomorrow()?.start_of_day()?;
            (start, end)
        }
        _ => {
            let start = local.start_of_day()?;
            let end = start.tomorrow()?.start_of_day()?;
            (start, end)
        }
    };
    Ok((start.timestamp(), end.timestamp()))
}

/// Minutes and hours of the local clock. A window starts when the clock reads a whole minute
/// (hour), or jumps over one; where a wall-clock time occurs twice (the clock went back), each
/// occurrence starts its own window, and where the clock goes back by less than an hour (Lord
/// Howe Island's 30 minutes) the hour that partly repeats is one longer window.
fn clock_bounds(
    window: BudgetWindow,
    now: Timestamp,
    zone: &TimeZone,
) -> Result<(Timestamp, Timestamp), jiff::Error> {
    let unit = if window == BudgetWindow::Minute {
        1.minute()
    } else {
        1.hour()
    };
    let start = clock_floor(window, now, zone)?;
    let mut end = start;
    // Real clock changes need one or two steps; the bound only guards against odd zones.
    for _ in 0..8 {
        let mark = clock_mark(window, zone.to_datetime(end))?;
        let mut next = end.checked_add(unit)?;
        for candidate in [mark, mark.checked_add(unit)?] {
            if let Some(at) = occurrences(zone, candidate)?
                .into_iter()
                .flatten()
                .find(|t| *t > end)
            {
                next = next.min(at);
            }
        }
        end = next;
        if clock_floor(window, end, zone)? != start {
            break;
        }
    }
    Ok((start, end))
}

/// The local wall-clock time truncated to the minute or the hour.
fn clock_mark(window: BudgetWindow, local: DateTime) -> Result<DateTime, jiff::Error> {
    let with = local.with().second(0).subsec_nanosecond(0);
    match window {
        BudgetWindow::Minute => with.build(),
        _ => with.minute(0).build(),
    }
}

/// When the window containing `at` started: the last instant at or before `at` at which the
/// clock read (or jumped over) `at`'s whole minute or hour.
fn clock_floor(
    window: BudgetWindow,
    at: Timestamp,
    zone: &TimeZone,
) -> Result<Timestamp, jiff::Error> {
    let mark = clock_mark(window, zone.to_datetime(at))?;
    let latest = occurrences(zone, mark)?
        .into_iter()
        .flatten()
        .filter(|t| *t <= at)
        .max();
    match latest {
        Some(start) => Ok(start),
        // Not reached with real zones; `at`'s own offset is then the best guess.
        None => Ok(zone.to_offset(at).to_timestamp(mark)?.min(at)),
    }
}

/// The instants at which the clock reads `local`, earliest first: one, two when the clock went
/// back over it, or, when the clock jumped over it, the instant of the jump.
fn occurrences(zone: &TimeZone, local: DateTime) -> Result<[Option<Timestamp>; 2], jiff::Error> {
    Ok(match zone.to_ambiguous_timestamp(local).offset() {
        AmbiguousOffset::Unambiguous { offset } => [Some(offset.to_timestamp(local)?), None],
        // `local` read with the offset before the jump is the instant of the jump.
        AmbiguousOffset::Gap { before, .. } => [Some(before.to_timestamp(local)?), None],
        AmbiguousOffset::Fold { before, after } => [
            Some(before.to_timestamp(local)?),
            Some(after.to_timestamp(local)?),
        ],
    })
}

/// `ms` since the epoch as RFC 3339 in UTC, e.g. `2026-12-01T00:00:00Z`.
pub fn rfc3339_utc(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn span(window: BudgetWindow, now: &str, zone: &str) -> (String, String) {
        let zone = TimeZone::get(zone).unwrap();
        let span = window_span(window, ms(now), &zone);
        (
            rfc3339_utc(span.start_ms),
            span.end_ms.map(rfc3339_utc).unwrap_or_default(),
        )
    }

    #[test]
    fn utc_windows_start_on_calendar_boundaries() {
        let now = "2026-11-25T13:47:12.345Z";
        let cases = [
            (
                BudgetWindow::Minute,
                "2026-11-25T13:47:00Z",
                "2026-11-25T13:48:00Z",
            ),
            (
                BudgetWindow::Hour,
                "2026-11-25T13:00:00Z",
                "2026-11-25T14:00:00Z",
            ),
            (
                BudgetWindow::Day,
                "2026-11-25T00:00:00Z",
                "2026-11-26T00:00:00Z",
            ),
            // 2026-11-25 is a Wednesday.
            (
                BudgetWindow::Week,
                "2026-11-23T00:00:00Z",
                "2026-11-30T00:00:00Z",
            ),
            (
                BudgetWindow::Month,
                "2026-11-01T00:00:00Z",
                "2026-12-01T00:00:00Z",
            ),
        ];
        for (window, start, end) in cases {
            assert_eq!(
                span(window, now, "UTC"),
                (start.to_string(), end.to_string()),
                "{window:?}"
            );
        }
        let total = window_span(BudgetWindow::Total, ms(now), &TimeZone::UTC);
        assert_eq!(total.end_ms, None);
    }

    #[test]
    fn calendar_windows_follow_the_time_zone() {
        // 23:30 UTC on Nov 30 is already December 1st in Paris (UTC+1).
        assert_eq!(
            span(BudgetWindow::Month, "2026-11-30T23:30:00Z", "Europe/Paris"),
            ("2026-11-30T23:00:00Z".into(), "2026-12-31T23:00:00Z".into())
        );
        // India is UTC+5:30: local hours start at half past UTC hours.
        assert_eq!(
            span(BudgetWindow::Hour, "2026-11-25T10:10:00Z", "Asia/Kolkata"),
            ("2026-11-25T09:30:00Z".into(), "2026-11-25T10:30:00Z".into())
        );
        // New York's week starts Monday midnight local time (UTC-5 in November).
        assert_eq!(
            span(
                BudgetWindow::Week,
                "2026-11-30T03:00:00Z",
                "America/New_York"
            ),
            ("2026-11-23T05:00:00Z".into(), "2026-11-30T05:00:00Z".into())
        );
    }

    #[test]
    fn days_across_daylight_saving_changes_are_23_or_25_hours() {
        // Europe/Paris leaves summer time on 2026-10-25: that day has 25 hours.
        let (start, end) = span(BudgetWindow::Day, "2026-10-25T12:00:00Z", "Europe/Paris");
        assert_eq!(start, "2026-10-24T22:00:00Z");
        assert_eq!(end, "2026-10-25T23:00:00Z");
        // And enters it on 2026-03-29: 23 hours.
        let (start, end) = span(BudgetWindow::Day, "2026-03-29T12:00:00Z", "Europe/Paris");
        assert_eq!(start, "2026-03-28T23:00:00Z");
        assert_eq!(end, "2026-03-29T22:00:00Z");
    }

    #[test]
    fn a_repeated_local_hour_is_two_windows() {
        // New York leaves summer time on 2026-11-01 at 02:00 EDT: 01:00-02:00 happens twice.
        // Each occurrence is its own hour window and contains its instant.
        assert_eq!(
            span(
                BudgetWindow::Hour,
                "2026-11-01T05:30:00Z",
                "America/New_York"
            ),
            ("2026-11-01T05:00:00Z".into(), "2026-11-01T06:00:00Z".into())
        );
        assert_eq!(
            span(
                BudgetWindow::Hour,
                "2026-11-01T06:30:00Z",
                "America/New_York"
            ),
            ("2026-11-01T06:00:00Z".into(), "2026-11-01T07:00:00Z".into())
        );
        assert_eq!(
            span(
                BudgetWindow::Minute,
                "2026-11-01T06:30:30Z",
                "America/New_York"
            ),
            ("2026-11-01T06:30:00Z".into(), "2026-11-01T06:31:00Z".into())
        );
        // That day has 25 hours.
        assert_eq!(
            span(
                BudgetWindow::Day,
                "2026-11-01T12:00:00Z",
                "America/New_York"
            ),
            ("2026-11-01T04:00:00Z".into(), "2026-11-02T05:00:00Z".into())
        );
    }

    #[test]
    fn every_instant_lies_in_its_window() {
        let zones = [
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
        ];
        let windows = [
            BudgetWindow::Minute,
            BudgetWindow::Hour,
            BudgetWindow::Day,
            BudgetWindow::Week,
            BudgetWindow::Month,
        ];
        let start = ms("2026-01-01T00:00:00Z");
        for zone in zones {
            let tz = TimeZone::get(zone).unwrap();
            // Every 7 hours 13 minutes through the year: crosses every DST change.
            let mut now = start;
            while now < start + 366 * 86_400_000 {
                for window in windows {
                    let span = window_span(window, now, &tz);
                    let end = span.end_ms.expect("calendar windows end");
                    assert!(span.start_ms <= now && now < end, "{zone} {window:?} {now}");
                    // The next window starts where this one ends.
                    assert_eq!(
                        window_span(window, end, &tz).start_ms,
                        end,
                        "{zone} {window:?}"
                    );
                }
                now += 26_000_000;
            }
        }
    }

    #[test]
    fn half_hour_clock_changes_make_longer_and_shorter_hours() {
        let zone = "Australia/Lord_Howe";
        // 2026-04-05 02:00 (+11) goes back to 01:30 (+10:30): local 01:00 to 02:00 lasts 90
        // minutes, one window on both sides of the change.
        for now in ["2026-04-04T14:10:00Z", "2026-04-04T15:10:00Z"] {
            assert_eq!(
                span(BudgetWindow::Hour, now, zone),
                ("2026-04-04T14:00:00Z".into(), "2026-04-04T15:30:00Z".into()),
                "{now}"
            );
        }
        // 2026-10-04 02:00 (+10:30) jumps to 02:30 (+11): the hour from the jump is 30 minutes.
        assert_eq!(
            span(BudgetWindow::Hour, "2026-10-03T15:10:00Z", zone),
            ("2026-10-03T14:30:00Z".into(), "2026-10-03T15:30:00Z".into())
        );
        assert_eq!(
            span(BudgetWindow::Hour, "2026-10-03T15:40:00Z", zone),
            ("2026-10-03T15:30:00Z".into(), "2026-10-03T16:00:00Z".into())
        );
        // Minute by minute around every change, windows tile time without gaps or overlaps.
        for (zone, around) in [
            ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
            ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
            ("America/New_York", "2026-11-01T06:00:00Z"),
            ("America/New_York", "2026-03-08T07:00:00Z"),
        ] {
            let tz = TimeZone::get(zone).unwrap();
            let mut now = ms(around) - 3 * 3_600_000;
            while now < ms(around) + 3 * 3_600_000 {
                for window in [BudgetWindow::Minute, BudgetWindow::Hour] {
                    let span = window_span(window, now, &tz);
                    let end = span.end_ms.unwrap();
                    assert!(span.start_ms <= now && now < end, "{zone} {window:?} {now}");
                    assert_eq!(
                        window_span(window, end, &tz).start_ms,
                        end,
                        "{zone} {window:?}"
                    );
                    assert_eq!(window_span(window, end - 1, &tz), span, "{zone} {window:?}");
                }
                now += 60_000;
            }
        }
    }

    #[test]
    fn rfc3339_is_utc_with_seconds() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(ms("2026-12-01T00:00:00.999Z")),
            "2026-12-01T00:00:00Z"
        );
        assert_eq!(rfc3339_utc(i64::MAX), "");
    }

    #[test]
    fn the_last_instant_of_a_window_belongs_to_it_and_the_next_starts_fresh() {
        let zone = TimeZone::UTC;
        let end = ms("2026-12-01T00:00:00Z");
        let before = window_span(BudgetWindow::Month, end - 1, &zone);
        let after = window_span(BudgetWindow::Month, end, &zone);
        assert_eq!(before.end_ms, Some(end));
        assert_eq!(after.start_ms, end);
    }
}
