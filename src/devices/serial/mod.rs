//! Serial instruments: the line protocols of bedside devices read from an RS-232 port,
//! each turned into readings (and what the device says of its own state). Pure parsers;
//! the port handling lives with the agent.
pub mod astm;
pub mod masimo;
pub mod nonin;

use chrono::{DateTime, FixedOffset, NaiveTime};

use super::codes::{CodeMaps, MDC_SYSTEM};
use super::reading::{Coding, Reading, Status, Unit, Value};

/// One line of an instrument, read.
#[derive(Debug, Clone, Default)]
pub struct SerialLine {
    pub readings: Vec<Reading>,
    /// What the device reports about itself (sensor off, no sensor…): empty when well.
    pub faults: Vec<String>,
    /// The operator pressed the event button.
    pub event_marker: bool,
    /// Alarms the device signals.
    pub alarms: Vec<String>,
}

/// The time of a line: its own `HH:MM:SS` on the day the line was received, or the
/// receiving time.
pub fn line_time(clock: Option<&str>, received: DateTime<FixedOffset>) -> String {
    let time = clock
        .and_then(|c| NaiveTime::parse_from_str(c, "%H:%M:%S").ok())
        .and_then(|t| {
            received
                .date_naive()
                .and_time(t)
                .and_local_timezone(*received.offset())
                .single()
        })
        // A clock time well past the time received was printed before midnight.
        .map(|t| match t > received + chrono::Duration::hours(1) {
            true => t - chrono::Duration::days(1),
            false => t,
        })
        .unwrap_or(received);
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A numeric MDC reading (`code`, `unit` MDC codes), or data-absent when the device sent
/// dashes.
pub fn mdc_reading(code: &str, unit: &str, value: Option<&str>, time: &str) -> Reading {
    let maps = CodeMaps::get();
    let observation = maps.observation(code);
    let unit_code = maps.unit(unit);
    let value = match value {
        Some(value) => Value::Quantity {
            value: value.to_string(),
            unit: Some(Unit {
                source: Some(Coding {
                    system: MDC_SYSTEM.into(),
                    code: unit.into(),
                    display: unit_code.map(|u| u.reference.clone()),
                }),
                ucum: unit_code.map(|u| u.ucum.clone()),
                display: unit_code.map(|u| u.display.clone()),
            }),
        },
        None => Value::Absent("unknown".into()),
    };
    Reading {
        device: None,
        code: Coding {
            system: MDC_SYSTEM.into(),
            code: code.into(),
            display: observation.map(|o| o.reference.clone()),
        },
        path: None,
        value,
        time: Some(time.to_string()),
        status: Status::Preliminary,
        interpretation: Vec::new(),
        limits: None,
        test_data: false,
        components: Vec::new(),
        origin: None,
        category: None,
    }
}

/// A number as a device prints it (`097`, `03.50`): leading zeros gone, `None` for
/// dashes or anything that is not a number.
pub fn number(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('%');
    if text.is_empty() || text.contains('-') && text.trim_matches('-').is_empty() {
        return None;
    }
    let value: f64 = text.parse().ok().filter(|v: &f64| v.is_finite())?;
    // Keep the decimals the device printed.
    let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
    Some(format!("{value:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_times_before_midnight_are_yesterday() {
        let received = DateTime::parse_from_rfc3339("2026-11-24T00:00:30+01:00").unwrap();
        assert_eq!(
            line_time(Some("23:59:40"), received),
            "2026-11-23T23:59:40+01:00"
        );
        assert_eq!(
            line_time(Some("00:00:29"), received),
            "2026-11-24T00:00:29+01:00"
        );
        assert_eq!(line_time(None, received), "2026-11-24T00:00:30+01:00");
    }
}
