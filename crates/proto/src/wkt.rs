//! Time as Sentia keeps it — Unix milliseconds in storage, Unix seconds in tokens, protobuf
//! Timestamp/Duration on the wire — and the one place that converts between them. Values
//! callers send are checked here: outside the ranges the types define, or absurd for the
//! field, they are refused with a message naming the field and the accepted range — never
//! clamped or wrapped silently.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current time in Unix milliseconds: how every service stores timestamps.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Current time in Unix seconds: how tokens (JWT `iat`/`exp`) and webhook signatures count.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

/// A Unix-millisecond time as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A Unix time in seconds as `YYYY-MM-DDTHH:MM:SSZ`: how reports and file names show time.
pub fn utc(unix_seconds: i64) -> String {
    let (days, secs) = (
        unix_seconds.div_euclid(86_400),
        unix_seconds.rem_euclid(86_400),
    );
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 of a civil date (month 1-12; Howard Hinnant's algorithm, the
/// inverse of what [`utc`] does). Days past a month's end roll over, so callers that must
/// refuse them check the round trip.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads what [`utc`] writes (`YYYY-MM-DDTHH:MM:SSZ`), or a bare date (`YYYY-MM-DD`, midnight
/// UTC): how people give a time on the command line. None for anything else.
pub fn parse_utc(text: &str) -> Option<i64> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let num = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (year, month, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() || !(1..=12).contains(&month) {
        return None;
    }
    let (h, m, sec) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let mut t = t.split(':');
            let hms = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
            if t.next().is_some() {
                return None;
            }
            hms
        }
    };
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
    // A day the month does not have (2026-02-30) does not survive the round trip.
    (utc(seconds).get(..10) == Some(date)).then_some(seconds)
}

/// 9999-12-31T23:59:59Z, the last second a protobuf Timestamp may hold.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A span for messages: whole days, hours, minutes or seconds.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        return format!("{:.3}s", d.as_secs_f64());
    }
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Milliseconds since the epoch of `t`, which must lie between 1970-01-01T00:00:00Z and
/// 9999-12-31T23:59:59Z with nanos in 0..1e9.
pub fn timestamp_ms(field: &str, t: &prost_types::Timestamp) -> Result<i64, String> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(format!(
            "{field}.nanos must be 0 to 999999999 (got {})",
            t.nanos
        ));
    }
    if !(0..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds) {
        return Err(format!(
            "{field} must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z (got {} s \
             since the epoch)",
            t.seconds
        ));
    }
    Ok(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// `d` as a std Duration, which must be non-negative, with nanos in 0..1e9, and within
/// `min..=max` (both named in the message).
pub fn duration(
    field: &str,
    d: &prost_types::Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    if !(0..1_000_000_000).contains(&d.nanos) {
        return Err(format!(
            "{field}.nanos must be 0 to 999999999 (got {})",
            d.nanos
        ));
    }
    let out_of_range = || {
        format!(
            "{field} must be between {} and {} (got {} s)",
            human(min),
            human(max),
            d.seconds
        )
    };
    let Ok(seconds) = u64::try_from(d.seconds) else {
        return Err(out_of_range());
    };
    let v = Duration::new(seconds, d.nanos as u32);
    if v < min || v > max {
        return Err(out_of_range());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_utc_reads_what_utc_writes_and_refuses_the_rest() {
        for secs in [0, 951_782_400, 1_780_000_000, MAX_TIMESTAMP_SECONDS] {
            assert_eq!(parse_utc(&utc(secs)), Some(secs), "{}", utc(secs));
        }
        assert_eq!(parse_utc("2000-02-29"), Some(951_782_400));
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-1-01",
            "2026-01-01T24:00:00Z",
            "2026-01-01T10:00:00",
            "2026-01-01 10:00:00Z",
            "tomorrow",
            "",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    fn ts(seconds: i64, nanos: i32) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos }
    }

    fn dur(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn timestamps_outside_the_well_known_range_are_named() {
        assert_eq!(timestamp_ms("t", &ts(1, 5_000_000)), Ok(1005));
        assert_eq!(
            timestamp_ms("t", &ts(MAX_TIMESTAMP_SECONDS, 0)),
            Ok(MAX_TIMESTAMP_SECONDS * 1000)
        );
        for (t, needle) in [
            (ts(1, -1), "t.nanos"),
            (ts(1, 1_000_000_000), "t.nanos"),
            (ts(-1, 0), "1970"),
            (ts(MAX_TIMESTAMP_SECONDS + 1, 0), "9999"),
            (ts(i64::MAX, 0), "9999"),
        ] {
            let e = timestamp_ms("t", &t).unwrap_err();
            assert!(e.contains(needle), "{t:?}: {e}");
        }
    }

    #[test]
    fn durations_outside_their_field_range_are_named_with_the_range() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3650 * 86_400));
        assert_eq!(
            duration("frequency", &dur(3600, 0), min, max),
            Ok(Duration::from_secs(3600))
        );
        let e = duration("frequency", &dur(1 << 62, 0), min, max).unwrap_err();
        assert!(e.contains("between 1m and 3650d"), "{e}");
        assert!(duration("frequency", &dur(-5, 0), min, max).is_err());
        assert!(
            duration("frequency", &dur(3600, -1), min, max)
                .unwrap_err()
                .contains("nanos")
        );
        assert!(duration("frequency", &dur(30, 0), min, max).is_err());
    }
}
