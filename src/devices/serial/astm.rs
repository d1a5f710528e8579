//! Laboratory analysers: ASTM E1381 (the low level: ENQ/ACK/EOT handshake, numbered
//! frames with checksums) and ASTM E1394 / CLSI LIS2-A2 (the records: H header, P
//! patient, O order, R result, L terminator) into laboratory readings.
//!
//! The receiver answers ENQ with ACK, each good frame with ACK and a frame with a wrong
//! checksum or number with NAK (the analyser sends it again); at EOT the records received
//! are one message.

use super::super::reading::{
    Coding, DeviceId, DeviceInfo, DeviceMessage, PatientRef, Reading, Status, Unit, Value,
};

pub const ENQ: u8 = 0x05;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;
pub const EOT: u8 = 0x04;
pub const STX: u8 = 0x02;
pub const ETX: u8 = 0x03;
pub const ETB: u8 = 0x17;

/// What the receiver does with what arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A byte to send back (ACK or NAK).
    Reply(u8),
    /// A complete transmission: its records, in order.
    Message(Vec<String>),
    /// A frame was refused (a wrong checksum or frame number): why.
    Refused(String),
}

/// Longest frame accepted (E1381 allows 240 characters of text; some analysers send more).
const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Receiver {
    /// Between ENQ and EOT.
    open: bool,
    /// The frame being received (from STX).
    frame: Option<Vec<u8>>,
    /// Text of the record being assembled across intermediate (ETB) frames.
    record: String,
    records: Vec<String>,
    /// The frame number expected next (1 to 7, then 0).
    expected: u8,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver::default()
    }

    /// Feeds bytes from the port; returns the replies to send and the messages completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Output> {
        let mut out = Vec::new();
        for &byte in bytes {
            if let Some(frame) = self.frame.as_mut() {
                frame.push(byte);
                // A frame ends with <CR><LF> after its end mark and two checksum digits.
                let done = frame.len() >= 6
                    && frame.ends_with(b"\r\n")
                    && matches!(frame.get(frame.len() - 5), Some(&ETX) | Some(&ETB));
                if done {
                    let frame = self.frame.take().unwrap_or_default();
                    out.extend(self.frame_done(&frame));
                } else if frame.len() > MAX_FRAME {
                    self.frame = None;
                    out.push(Output::Refused(format!(
                        "a frame longer than {MAX_FRAME} bytes"
                    )));
                    out.push(Output::Reply(NAK));
                }
                continue;
            }
            match byte {
                ENQ => {
                    self.open = true;
                    self.expected = 1;
                    self.record.clear();
                    self.records.clear();
                    out.push(Output::Reply(ACK));
                }
                STX if self.open => self.frame = Some(Vec::with_capacity(256)),
                EOT if self.open => {
                    self.open = false;
                    if !self.record.is_empty() {
                        let record = std::mem::take(&mut self.record);
                        self.records.push(record);
                    }
                    let records = std::mem::take(&mut self.records);
                    if !records.is_empty() {
                        out.push(Output::Message(records));
                    }
                }
                // Line noise between frames is ignored.
                _ => {}
            }
        }
        out
    }

    /// A frame from STX (exclusive) to CR LF (inclusive): `FN text ETX|ETB C1 C2 CR LF`.
    fn frame_done(&mut self, frame: &[u8]) -> Vec<Output> {
        let end = frame.len() - 5;
        let body = &frame[..=end];
        let checksum = &frame[end + 1..end + 3];
        let sum = body.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
        let expected = format!("{sum:02X}");
        if !checksum.eq_ignore_ascii_case(expected.as_bytes()) {
            return vec![
                Output::Refused(format!(
                    "checksum {} where the frame sums to {expected}",
                    String::from_utf8_lossy(checksum)
                )),
                Output::Reply(NAK),
            ];
        }
        let number = body
            .first()
            .and_then(|d| (*d as char).to_digit(10))
            .map(|d| d as u8);
        let Some(number) = number.filter(|n| *n < 8) else {
            return vec![
                Output::Refused("a frame without its number".into()),
                Output::Reply(NAK),
            ];
        };
        if number != self.expected {
            // The previous frame again (our ACK was lost): acknowledge, keep nothing new.
            if number == (self.expected + 7) % 8 {
                return vec![Output::Reply(ACK)];
            }
            return vec![
                Output::Refused(format!("frame {number} where {} was due", self.expected)),
                Output::Reply(NAK),
            ];
        }
        self.expected = (self.expected + 1) % 8;
        let text = String::from_utf8_lossy(&body[1..body.len() - 1]).into_owned();
        self.record.push_str(&text);
        if body.last() == Some(&ETX) || self.record.ends_with('\r') {
            // A frame ends a record at ETX; records within a frame are split by CR.
            for record in std::mem::take(&mut self.record).split('\r') {
                if !record.is_empty() {
                    self.records.push(record.to_string());
                }
            }
        }
        vec![Output::Reply(ACK)]
    }
}

/// A frame as an analyser sends it (for tests and simulators).
pub fn frame(number: u8, text: &str, last: bool) -> Vec<u8> {
    let mut body = vec![b'0' + number % 8];
    body.extend_from_slice(text.as_bytes());
    body.push(if last { ETX } else { ETB });
    let sum = body.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
    let mut bytes = vec![STX];
    bytes.extend(body);
    bytes.extend(format!("{sum:02X}\r\n").as_bytes());
    bytes
}

/// The records of a transmission as a device message: the analyser (H-5) as the device,
/// the patient (P-3, else P-4), and each R record a laboratory reading.
pub fn message(records: &[String], analyser_serial: Option<&str>) -> Result<DeviceMessage, String> {
    let header = records
        .iter()
        .find(|r| r.starts_with('H'))
        .ok_or("the transmission has no H (header) record")?;
    // H|\^& : field, repeat, component and escape delimiters.
    let delimiters: Vec<char> = header.chars().skip(1).take(4).collect();
    let (field, component) = match delimiters.as_slice() {
        [field, _repeat, component, _escape] => (*field, *component),
        _ => return Err("the H record does not declare its delimiters (H|\\^&)".into()),
    };
    let fields =
        |record: &str| -> Vec<String> { record.split(field).map(str::to_string).collect() };
    let components =
        |text: &str| -> Vec<String> { text.split(component).map(str::to_string).collect() };
    let header_fields = fields(header);
    let sender = components(header_fields.get(4).map(String::as_str).unwrap_or_default());
    let analyser = sender
        .first()
        .cloned()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "analyser".into());
    let serial = analyser_serial
        .map(str::to_string)
        .or_else(|| sender.get(2).cloned().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| analyser.clone());
    let device = DeviceInfo {
        key: serial.clone(),
        identifier: DeviceId {
            system: "urn:fhirgate:analyser-serial".into(),
            value: serial.clone(),
        },
        model: Some(analyser.clone()),
        version: sender.get(1).cloned().filter(|s| !s.is_empty()),
        serial_number: Some(serial.clone()),
        ..DeviceInfo::default()
    };
    let mut patient = None;
    let mut readings = Vec::new();
    for record in records {
        let f = fields(record);
        match f.first().map(String::as_str) {
            Some("P") => {
                let id = f
                    .get(3)
                    .filter(|s| !s.is_empty())
                    .or_else(|| f.get(4).filter(|s| !s.is_empty()));
                patient = id.map(|value| PatientRef::Identifier {
                    system: None,
                    value: components(value).first().cloned().unwrap_or_default(),
                });
            }
            Some("R") => {
                let test = components(f.get(2).map(String::as_str).unwrap_or_default());
                // Universal test id: ^^^local code^name.
                let code = test.get(3).or(test.first()).cloned().unwrap_or_default();
                if code.is_empty() {
                    return Err(format!("R record {record:?} names no test (R-3)"));
                }
                let value_text = f.get(3).cloned().unwrap_or_default();
                let units = f.get(4).cloned().filter(|u| !u.is_empty());
                let value = match super::number(&value_text) {
                    Some(number) => Value::Quantity {
                        value: number,
                        unit: units.map(|u| Unit {
                            source: None,
                            ucum: Some(u.clone()),
                            display: Some(u),
                        }),
                    },
                    None if value_text.trim().is_empty() => Value::Absent("unknown".into()),
                    None => Value::Text(value_text.clone()),
                };
                let limits =
                    f.get(5)
                        .filter(|r| !r.is_empty())
                        .map(|range| match range.split_once('-') {
                            Some((low, high)) => {
                                (Some(low.trim().to_string()), Some(high.trim().to_string()))
                            }
                            None => (Some(range.clone()), None),
                        });
                let interpretation = f
                    .get(6)
                    .and_then(|flag| super::super::mapping::interpretation(flag))
                    .into_iter()
                    .collect();
                let status = match f.get(8).map(String::as_str) {
                    Some("C") => Status::Corrected,
                    Some("P") | Some("I") => Status::Preliminary,
                    Some("X") => Status::Cancelled,
                    _ => Status::Final,
                };
                let time = f
                    .get(12)
                    .filter(|t| !t.is_empty())
                    .and_then(|t| {
                        super::super::hl7time::parse(t, chrono::FixedOffset::east_opt(0)?).ok()
                    })
                    .map(|t| t.text);
                readings.push(Reading {
                    device: Some(serial.clone()),
                    code: Coding {
                        system: format!("urn:fhirgate:astm-test:{analyser}"),
                        code,
                        display: test.get(4).cloned().filter(|n| !n.is_empty()),
                    },
                    path: f.get(1).cloned(),
                    value,
                    time,
                    status,
                    interpretation,
                    limits,
                    test_data: false,
                    components: Vec::new(),
                    origin: Some(format!("R|{}", f.get(1).cloned().unwrap_or_default())),
                    category: Some("laboratory".into()),
                });
            }
            _ => {}
        }
    }
    Ok(DeviceMessage {
        patient,
        devices: vec![device],
        readings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmission(records: &[&str]) -> Vec<u8> {
        let mut bytes = vec![ENQ];
        for (i, record) in records.iter().enumerate() {
            bytes.extend(frame((i + 1) as u8, &format!("{record}\r"), true));
        }
        bytes.push(EOT);
        bytes
    }

    const RECORDS: [&str; 5] = [
        "H|\\^&|||Chem-1^2.3^SN4711|||||||P|1|20240301120000",
        "P|1||MRN-1||Doe^John",
        "O|1|S-123||^^^GLU",
        "R|1|^^^GLU^Glucose|5.6|mmol/L|3.9-6.1|N||F||||20240301120500",
        "L|1|N",
    ];

    #[test]
    fn a_transmission_is_acknowledged_frame_by_frame_and_read() {
        let mut receiver = Receiver::new();
        let out = receiver.push(&transmission(&RECORDS));
        let replies = out.iter().filter(|o| **o == Output::Reply(ACK)).count();
        assert_eq!(replies, 1 + RECORDS.len());
        let Some(Output::Message(records)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(records.len(), 5);
        let message = message(records, None).unwrap();
        assert_eq!(message.devices[0].identifier.value, "SN4711");
        assert_eq!(
            message.patient,
            Some(PatientRef::Identifier {
                system: None,
                value: "MRN-1".into()
            })
        );
        let glucose = &message.readings[0];
        assert_eq!(glucose.code.code, "GLU");
        assert_eq!(glucose.category.as_deref(), Some("laboratory"));
        assert_eq!(glucose.time.as_deref(), Some("2024-03-01T12:05:00Z"));
        assert!(matches!(&glucose.value, Value::Quantity { value, .. } if value == "5.6"));
    }

    #[test]
    fn bad_checksums_and_numbers_get_a_nak_and_the_frame_again_is_taken() {
        let mut receiver = Receiver::new();
        assert_eq!(receiver.push(&[ENQ]), vec![Output::Reply(ACK)]);
        let mut bad = frame(1, "H|\\^&|||Chem-1\r", true);
        let at = bad.len() - 4;
        bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
        let out = receiver.push(&bad);
        assert!(matches!(out[0], Output::Refused(_)));
        assert_eq!(out[1], Output::Reply(NAK));
        // Sent again, right: accepted.
        assert_eq!(
            receiver.push(&frame(1, "H|\\^&|||Chem-1\r", true)),
            vec![Output::Reply(ACK)]
        );
        // The same frame once more (our ACK lost): acknowledged, not kept twice.
        assert_eq!(
            receiver.push(&frame(1, "H|\\^&|||Chem-1\r", true)),
            vec![Output::Reply(ACK)]
        );
        // A frame out of order.
        let out = receiver.push(&frame(5, "L|1\r", true));
        assert_eq!(out.last(), Some(&Output::Reply(NAK)));
        // A record split over an intermediate frame.
        assert_eq!(
            receiver.push(&frame(2, "R|1|^^^GLU|5", false)),
            vec![Output::Reply(ACK)]
        );
        assert_eq!(
            receiver.push(&frame(3, ".6|mmol/L\r", true)),
            vec![Output::Reply(ACK)]
        );
        let out = receiver.push(&[b'x', EOT]);
        assert_eq!(
            out,
            vec![Output::Message(vec![
                "H|\\^&|||Chem-1".to_string(),
                "R|1|^^^GLU|5.6|mmol/L".to_string()
            ])]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut receiver = Receiver::new();
        for bytes in [
            &[STX, ETX, b'\r', b'\n'][..],
            &[ENQ, STX, ETX, 0, 0, b'\r', b'\n'],
            &[0xff; 300],
            &[ENQ, STX, b'9', ETX, b'0', b'0', b'\r', b'\n'],
        ] {
            let _ = receiver.push(bytes);
        }
        assert!(message(&["X|1".to_string()], None).is_err());
    }
}
