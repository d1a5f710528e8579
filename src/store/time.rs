//! Server time for `meta.lastUpdated`: microseconds since the Unix epoch, strictly
//! increasing within the process so that versions written one after another never share
//! a timestamp.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};

static LAST: AtomicI64 = AtomicI64::new(0);

pub fn now_micros() -> i64 {
    let now = Utc::now().timestamp_micros();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// FHIR `instant` text with millisecond precision, e.g. `2026-11-24T01:02:03.123Z`.
pub fn instant(micros: i64) -> String {
    datetime(micros).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// HTTP date for `Last-Modified`, e.g. `Tue, 24 Nov 2026 01:02:03 GMT`.
pub fn http_date(micros: i64) -> String {
    datetime(micros)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

pub fn parse_http_date(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc2822(text)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
}

fn datetime(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Parses a FHIR instant/dateTime (`2024-03-01`, `2024-03-01T10:00:00Z`, `2024`) as the
/// earliest microsecond it can mean. Partial dates without a zone are taken as UTC.
pub fn parse_fhir_instant(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    let padded = match text.len() {
        4 => format!("{text}-01-01T00:00:00Z"),
        7 => format!("{text}-01T00:00:00Z"),
        10 => format!("{text}T00:00:00Z"),
        _ => return None,
    };
    DateTime::parse_from_rfc3339(&padded)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_go_up() {
        let a = now_micros();
        let b = now_micros();
        assert!(b > a);
    }

    #[test]
    fn formats_and_parses() {
        let t = parse_fhir_instant("2024-03-01T10:00:00.5Z").unwrap();
        assert_eq!(instant(t), "2024-03-01T10:00:00.500Z");
        assert_eq!(
            parse_fhir_instant("2024-03"),
            parse_fhir_instant("2024-03-01T00:00:00Z")
        );
        assert_eq!(http_date(t), "Fri, 01 Mar 2024 10:00:00 GMT");
        assert_eq!(
            parse_http_date("Fri, 01 Mar 2024 10:00:00 GMT"),
            parse_fhir_instant("2024-03-01T10:00:00Z")
        );
        assert_eq!(parse_fhir_instant("yesterday"), None);
    }
}
