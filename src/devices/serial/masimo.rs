//! Masimo Radical-7 (and Rad-8/Rad-57) ASCII serial output, one line per period:
//! `MM/DD/YY HH:MM:SS SN=… SPO2=097% BPM=072 PI=03.50% … ALARM=0000 EXC=000000`, with
//! dashes for a parameter that is not available. `EXC` is a hexadecimal bit field of
//! exceptions (sensor off, no sensor, low perfusion…), `ALARM` one of active alarms.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone};

use super::{mdc_reading, number, SerialLine};

const SPO2: &str = "150456";
const PULSE_RATE: &str = "149530";
const PERFUSION_INDEX: &str = "150488";
const PERCENT: &str = "262688";
const PER_MINUTE: &str = "264864";

/// The exception bits (Masimo trend and serial formats).
const EXCEPTIONS: [(u32, &str); 9] = [
    (0x001, "no sensor"),
    (0x002, "defective sensor"),
    (0x004, "low perfusion"),
    (0x008, "pulse search"),
    (0x010, "interference"),
    (0x020, "sensor off patient"),
    (0x040, "ambient light"),
    (0x080, "unrecognized sensor"),
    (0x400, "low signal IQ"),
];

/// Reads one line; `None` for lines without data. The line's own date and time are used
/// (in the zone of `received`), else the time it was received.
pub fn parse(line: &str, received: DateTime<FixedOffset>) -> Option<SerialLine> {
    let mut fields: Vec<(&str, &str)> = Vec::new();
    let mut date = None;
    let mut clock = None;
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some(pair) => fields.push(pair),
            None if word.len() == 8 && word.as_bytes().get(2) == Some(&b'/') => date = Some(word),
            None if word.len() == 8 && word.as_bytes().get(2) == Some(&b':') => clock = Some(word),
            None => {}
        }
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let spo2 = field("SPO2")?;
    let time = match (date, clock) {
        (Some(date), Some(clock)) => {
            NaiveDateTime::parse_from_str(&format!("{date} {clock}"), "%m/%d/%y %H:%M:%S")
                .ok()
                .and_then(|t| received.offset().from_local_datetime(&t).single())
                .unwrap_or(received)
        }
        _ => received,
    }
    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let pulse = field("BPM").or_else(|| field("PR"));
    let mut readings = vec![
        mdc_reading(SPO2, PERCENT, number(spo2).as_deref(), &time),
        mdc_reading(
            PULSE_RATE,
            PER_MINUTE,
            pulse.and_then(number).as_deref(),
            &time,
        ),
    ];
    if let Some(pi) = field("PI") {
        readings.push(mdc_reading(
            PERFUSION_INDEX,
            PERCENT,
            number(pi).as_deref(),
            &time,
        ));
    }
    let exceptions = field("EXC")
        .map(|text| text.split(':').next().unwrap_or_default())
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .unwrap_or(0);
    let faults = EXCEPTIONS
        .iter()
        .filter(|(bit, _)| exceptions & bit != 0)
        .map(|(_, what)| what.to_string())
        .collect();
    let alarm_bits = field("ALARM")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .unwrap_or(0);
    let alarms = (0..32)
        .filter(|bit| alarm_bits & (1 << bit) != 0)
        .map(|bit| format!("alarm bit {bit}"))
        .collect();
    Some(SerialLine {
        readings,
        faults,
        event_marker: false,
        alarms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::reading::Value;

    fn received() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2024-03-01T09:56:20+00:00").unwrap()
    }

    #[test]
    fn lines_become_spo2_pulse_rate_and_perfusion_index() {
        let line = parse(
            "03/01/24 09:56:12 SN=0000012345 SPO2=097% BPM=069 PI=04.69% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000800",
            received(),
        )
        .unwrap();
        assert_eq!(line.readings.len(), 3);
        match &line.readings[2].value {
            Value::Quantity { value, unit } => {
                assert_eq!(value, "4.69");
                assert_eq!(unit.as_ref().unwrap().ucum.as_deref(), Some("%"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            line.readings[0].time.as_deref(),
            Some("2024-03-01T09:56:12Z")
        );
        assert!(line.faults.is_empty(), "0x800 is Masimo SET, not a fault");
        assert!(line.alarms.is_empty());
    }

    #[test]
    fn exceptions_and_alarms_are_reported() {
        let line = parse(
            "03/01/24 09:56:10 SN=0000012345 SPO2=---% BPM=--- PI=--.--% ALARM=0001 EXC=000828",
            received(),
        )
        .unwrap();
        assert!(matches!(line.readings[0].value, Value::Absent(_)));
        assert_eq!(line.faults, vec!["pulse search", "sensor off patient"]);
        assert_eq!(line.alarms, vec!["alarm bit 0"]);
        // The trend format's names.
        let line = parse(
            "09/21/08 09:56:14 SpO2=096 PR=074 PI=02.28 EXC=C00:LowSigIQ,SET",
            received(),
        )
        .unwrap();
        assert_eq!(line.faults, vec!["low signal IQ"]);
        assert!(parse("Masimo Radical-7 V7.8", received()).is_none());
    }
}
