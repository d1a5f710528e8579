//! Nonin pulse oximeters' real-time ASCII output (once a second, CR/LF):
//! `[HH:MM:SS ]SPO2=XXX HR=YYY[ F][ B][*]`, with `---` for a value the oximeter does not
//! have, `*` for an event the operator marked, `F` for fast-responding values and `B`
//! for a breath (CO2 models). Header lines (model, date) are skipped.

use chrono::{DateTime, FixedOffset};

use super::{line_time, mdc_reading, number, SerialLine};

/// MDC codes: SpO2, pulse rate (pulse oximeter), percent, beats per minute.
const SPO2: &str = "150456";
const PULSE_RATE: &str = "149530";
const PERCENT: &str = "262688";
const PER_MINUTE: &str = "264864";

/// Reads one line; `None` for lines that carry no data (headers, blank lines).
pub fn parse(line: &str, received: DateTime<FixedOffset>) -> Option<SerialLine> {
    let line = line.trim();
    let mut clock = None;
    let mut spo2 = None;
    let mut pulse = None;
    let mut seen = false;
    let mut event_marker = false;
    for word in line.split_whitespace() {
        let word = match word.strip_suffix('*') {
            Some(rest) => {
                event_marker = true;
                rest
            }
            None => word,
        };
        match word.split_once('=') {
            Some(("SPO2", value)) => {
                seen = true;
                spo2 = number(value);
            }
            Some(("HR", value)) => {
                seen = true;
                pulse = number(value);
            }
            _ if word.len() == 8 && word.as_bytes().get(2) == Some(&b':') => clock = Some(word),
            _ => {}
        }
    }
    if !seen {
        return None;
    }
    let time = line_time(clock, received);
    let mut faults = Vec::new();
    if spo2.is_none() && pulse.is_none() {
        // Dashes for both: the sensor is off the patient or not connected.
        faults.push("no data from the oximeter (sensor off or disconnected)".to_string());
    }
    Some(SerialLine {
        readings: vec![
            mdc_reading(SPO2, PERCENT, spo2.as_deref(), &time),
            mdc_reading(PULSE_RATE, PER_MINUTE, pulse.as_deref(), &time),
        ],
        faults,
        event_marker,
        alarms: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::reading::Value;

    fn received() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2024-03-01T14:02:35+01:00").unwrap()
    }

    fn quantity(value: &Value) -> Option<(&str, Option<&str>)> {
        match value {
            Value::Quantity { value, unit } => Some((
                value.as_str(),
                unit.as_ref().and_then(|u| u.ucum.as_deref()),
            )),
            _ => None,
        }
    }

    #[test]
    fn lines_become_spo2_and_pulse_rate() {
        let line = parse("14:02:31 SPO2=097 HR=072", received()).unwrap();
        assert_eq!(line.readings[0].code.code, "150456");
        assert_eq!(quantity(&line.readings[0].value), Some(("97", Some("%"))));
        assert_eq!(
            quantity(&line.readings[1].value),
            Some(("72", Some("/min")))
        );
        assert_eq!(
            line.readings[0].time.as_deref(),
            Some("2024-03-01T14:02:31+01:00")
        );
        assert!(line.faults.is_empty() && !line.event_marker);
        // Without a clock: the time it was received.
        let line = parse("SPO2=095 HR=101 F*", received()).unwrap();
        assert_eq!(
            line.readings[0].time.as_deref(),
            Some("2024-03-01T14:02:35+01:00")
        );
        assert!(line.event_marker);
    }

    #[test]
    fn dashes_are_absent_values_and_a_fault() {
        let line = parse("14:02:32 SPO2=--- HR=---", received()).unwrap();
        assert!(matches!(line.readings[0].value, Value::Absent(_)));
        assert_eq!(line.faults.len(), 1);
        let line = parse("SPO2=096 HR=---", received()).unwrap();
        assert!(line.faults.is_empty());
        assert!(matches!(line.readings[1].value, Value::Absent(_)));
    }

    #[test]
    fn headers_and_garbage_carry_no_data() {
        assert!(parse("Nonin 9847 V1.2 03/01/24 14:00:00", received()).is_none());
        assert!(parse("", received()).is_none());
        assert!(parse("\u{0}\u{ff}SPO", received()).is_none());
        let line = parse("SPO2=1x7 HR=072", received()).unwrap();
        assert!(matches!(line.readings[0].value, Value::Absent(_)));
    }
}
