//! Times on the command line: RFC 3339 (`2026-11-24T10:00:00Z`, `...+02:00`, fractions of a
//! second) or a duration before now (`90s`, `30m`, `1h`, `2d`, `1w`), as Unix milliseconds.
//! Written here rather than pulling in a date crate for one parser.

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "expected an RFC 3339 time (2026-11-24T10:00:00Z) or a duration before now (90s, 30m, \
         1h, 2d)"
    )]
    Unrecognised,
    #[error("{field} {value} is out of range")]
    OutOfRange { field: &'static str, value: u32 },
    #[error("the duration is too long")]
    TooLong,
}

/// The (year, month, day) of `days` since the Unix epoch (Howard Hinnant's
/// civil_from_days), for writing times as well as reading them.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32, d as u32)
}

/// `2026-11-24T10:00:00.123Z` of Unix milliseconds.
pub fn rfc3339_of_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// Milliseconds since the Unix epoch of `s`, relative durations counted back from `now_ms`.
pub fn parse_at(s: &str, now_ms: i64) -> Result<i64, TimeError> {
    let s = s.trim();
    if let Some(ago) = relative_ms(s)? {
        return Ok(now_ms - ago);
    }
    rfc3339_ms(s)
}

/// `90s`, `30m`, `1h`, `2d`, `1w` in milliseconds; `None` when `s` is not of that shape.
fn relative_ms(s: &str) -> Result<Option<i64>, TimeError> {
    let Some(unit) = s.chars().last() else {
        return Ok(None);
    };
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let per: i64 = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return Ok(None),
    };
    let n: i64 = digits.parse().map_err(|_| TimeError::TooLong)?;
    n.checked_mul(per).map(Some).ok_or(TimeError::TooLong)
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian; Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A cursor over the ASCII bytes of an RFC 3339 string.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Result<u32, TimeError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(TimeError::Unrecognised)?;
        if !head.iter().all(u8::is_ascii_digit) {
            return Err(TimeError::Unrecognised);
        }
        self.0 = rest;
        Ok(head.iter().fold(0, |v, b| v * 10 + u32::from(b - b'0')))
    }

    fn byte(&mut self, allowed: &[u8]) -> Result<u8, TimeError> {
        match self.0.split_first() {
            Some((b, rest)) if allowed.contains(b) => {
                self.0 = rest;
                Ok(*b)
            }
            _ => Err(TimeError::Unrecognised),
        }
    }
}

fn in_range(field: &'static str, value: u32, lo: u32, hi: u32) -> Result<u32, TimeError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(TimeError::OutOfRange { field, value })
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff...](Z|±HH:MM)`; `t`, `z` and a space for `T` are accepted too.
fn rfc3339_ms(s: &str) -> Result<i64, TimeError> {
    let mut c = Cursor(s.as_bytes());
    let year = c.digits(4)?;
    c.byte(b"-")?;
    let month = in_range("month", c.digits(2)?, 1, 12)?;
    c.byte(b"-")?;
    let day = c.digits(2)?;
    in_range("day", day, 1, days_in_month(i64::from(year), month))?;
    c.byte(b"Tt ")?;
    let hour = in_range("hour", c.digits(2)?, 0, 23)?;
    c.byte(b":")?;
    let minute = in_range("minute", c.digits(2)?, 0, 59)?;
    c.byte(b":")?;
    // 60: a leap second, counted as the next second.
    let second = in_range("second", c.digits(2)?, 0, 60)?;
    let mut millis = 0i64;
    if c.byte(b".").is_ok() {
        let mut scale = 100;
        let mut any = false;
        while let Ok(d) = c.digits(1) {
            millis += i64::from(d) * scale;
            scale /= 10;
            any = true;
        }
        if !any {
            return Err(TimeError::Unrecognised);
        }
    }
    let offset_s = match c.byte(b"Zz+-")? {
        b'Z' | b'z' => 0,
        sign => {
            let h = in_range("offset hour", c.digits(2)?, 0, 23)?;
            c.byte(b":")?;
            let m = in_range("offset minute", c.digits(2)?, 0, 59)?;
            let off = i64::from(h * 3600 + m * 60);
            if sign == b'-' { -off } else { off }
        }
    };
    if !c.0.is_empty() {
        return Err(TimeError::Unrecognised);
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_s;
    Ok(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_agrees_with_the_epoch_and_with_offsets() {
        assert_eq!(parse_at("1970-01-01T00:00:00Z", 0), Ok(0));
        // date -u -d 2026-11-24T10:00:00Z +%s
        assert_eq!(parse_at("2026-11-24T10:00:00Z", 0), Ok(1_795_514_400_000));
        assert_eq!(
            parse_at("2026-11-24T12:00:00+02:00", 0),
            parse_at("2026-11-24T10:00:00Z", 0)
        );
        assert_eq!(
            parse_at("2026-11-24 04:30:00.25-05:30", 0),
            Ok(1_795_514_400_250)
        );
        assert_eq!(parse_at("2024-02-29t00:00:00z", 0), Ok(1_709_164_800_000));
        assert_eq!(parse_at("1969-12-31T23:59:59.999Z", 0), Ok(-1));
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_at("90s", now), Ok(now - 90_000));
        assert_eq!(parse_at("30m", now), Ok(now - 1_800_000));
        assert_eq!(parse_at("1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_at("2d", now), Ok(now - 172_800_000));
        assert_eq!(parse_at("1w", now), Ok(now - 604_800_000));
        assert_eq!(parse_at("0s", now), Ok(now));
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "1x",
            "h",
            "-1h",
            "1.5h",
            "2026-11-24",
            "2026-11-24T10:00:00",
            "2026-11-24T10:00Z",
            "2026-11-24T10:00:00.Z",
            "2026-11-24T10:00:00Zjunk",
            "2026-11-24T10:00:00+0200",
            "99999999999999999999d",
        ] {
            assert!(parse_at(bad, 0).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_at("2025-02-29T00:00:00Z", 0),
            Err(TimeError::OutOfRange {
                field: "day",
                value: 29
            })
        );
        assert_eq!(
            parse_at("2026-13-01T00:00:00Z", 0),
            Err(TimeError::OutOfRange {
                field: "month",
                value: 13
            })
        );
        assert!(parse_at("2026-11-24T24:00:00Z", 0).is_err());
    }
}
