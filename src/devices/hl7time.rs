//! HL7 v2 DTM times (`YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`) as FHIR `dateTime` text.
//!
//! Device clocks often send local time without an offset; such times are read in the
//! configured zone (a fixed offset such as `+01:00`, UTC by default), and the offset is
//! written out so the stored time is unambiguous.

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

/// A parsed time: the FHIR text and the instant it starts at (microseconds since the
/// epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTime {
    pub text: String,
    pub micros: i64,
}

/// Parses an offset such as `+01:00`, `-0500`, `Z` or `UTC`.
pub fn parse_offset(text: &str) -> Option<FixedOffset> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    if hours > 14 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// Parses an HL7 DTM; `zone` applies when the text has no offset.
pub fn parse(text: &str, zone: FixedOffset) -> Result<DeviceTime, String> {
    let text = text.trim();
    let (body, offset) = match text.find(['+', '-']) {
        Some(at) => {
            let offset = parse_offset(&text[at..])
                .ok_or_else(|| format!("{text:?} has a malformed offset (want +HHMM or -HHMM)"))?;
            (&text[..at], Some(offset))
        }
        None => (text, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((digits, fraction)) => (digits, Some(fraction)),
        // Some monitors send milliseconds without the dot (`…143900123+0800`).
        None if (15..=18).contains(&body.len()) && body.is_char_boundary(14) => {
            (&body[..14], Some(&body[14..]))
        }
        None => (body, None),
    };
    let bad = || format!("{text:?} is not an HL7 time (YYYYMMDDHHMMSS[.SSSS][+ZZZZ])");
    if !digits.chars().all(|c| c.is_ascii_digit())
        || !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14)
        || fraction.is_some_and(|f| {
            digits.len() != 14
                || f.is_empty()
                || f.len() > 6
                || !f.chars().all(|c| c.is_ascii_digit())
        })
    {
        return Err(bad());
    }
    let number = |from: usize, to: usize| -> u32 { digits[from..to].parse().unwrap_or(0) };
    let year = number(0, 4) as i32;
    let month = if digits.len() >= 6 { number(4, 6) } else { 1 };
    let day = if digits.len() >= 8 { number(6, 8) } else { 1 };
    let date = NaiveDate::from_ymd_opt(year, month, day).ok_or_else(bad)?;
    if digits.len() < 10 {
        // A date without a time: FHIR keeps the precision, the instant is its start.
        let text = match digits.len() {
            4 => format!("{year:04}"),
            6 => format!("{year:04}-{month:02}"),
            _ => format!("{year:04}-{month:02}-{day:02}"),
        };
        let start = date.and_time(NaiveTime::MIN);
        let micros = offset
            .unwrap_or(zone)
            .from_local_datetime(&start)
            .single()
            .map(|t| t.timestamp_micros())
            .ok_or_else(bad)?;
        return Ok(DeviceTime { text, micros });
    }
    let hour = number(8, 10);
    let minute = if digits.len() >= 12 {
        number(10, 12)
    } else {
        0
    };
    let second = if digits.len() >= 14 {
        number(12, 14)
    } else {
        0
    };
    let micro = fraction.map_or(0, |f| format!("{f:0<6}").parse::<u32>().unwrap_or(0));
    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micro).ok_or_else(bad)?;
    let local = NaiveDateTime::new(date, time);
    let zone = offset.unwrap_or(zone);
    let at = zone.from_local_datetime(&local).single().ok_or_else(bad)?;
    let seconds = match fraction {
        Some(f) => format!("{second:02}.{f}"),
        None => format!("{second:02}"),
    };
    let offset_text = if zone.local_minus_utc() == 0 {
        "Z".to_string()
    } else {
        let total = zone.local_minus_utc();
        let sign = if total < 0 { '-' } else { '+' };
        let total = total.abs();
        format!("{sign}{:02}:{:02}", total / 3600, (total % 3600) / 60)
    };
    Ok(DeviceTime {
        text: format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{seconds}{offset_text}"),
        micros: at.timestamp_micros(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    #[test]
    fn hl7_times_become_fhir_date_times() {
        assert_eq!(
            parse("20230309143900", utc()).unwrap().text,
            "2023-03-09T14:39:00Z"
        );
        assert_eq!(
            parse("20150118143000+0000", utc()).unwrap().text,
            "2015-01-18T14:30:00Z"
        );
        assert_eq!(
            parse("20260124131539000+0800", utc()).unwrap().text,
            "2026-01-24T13:15:39.000+08:00",
            "milliseconds without the dot"
        );
        assert_eq!(
            parse("20191206113415.1234+0530", utc()).unwrap().text,
            "2019-12-06T11:34:15.1234+05:30"
        );
        let zoned = parse("202303091439", parse_offset("+01:00").unwrap()).unwrap();
        assert_eq!(zoned.text, "2023-03-09T14:39:00+01:00");
        assert_eq!(zoned.micros, parse("20230309133900", utc()).unwrap().micros);
        assert_eq!(parse("20230309", utc()).unwrap().text, "2023-03-09");
        for bad in [
            "2023-03-09",
            "20231309",
            "2023030914390",
            "x",
            "",
            "20230309143900+99",
        ] {
            assert!(parse(bad, utc()).is_err(), "{bad}");
        }
        assert_eq!(parse_offset("-0500").unwrap().local_minus_utc(), -5 * 3600);
        assert!(parse_offset("0500").is_none());
    }
}
