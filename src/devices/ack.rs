//! HL7 v2 acknowledgements (original mode): `MSA-1` AA when the message is stored, AE
//! when its content is wrong, AR when it is not a message this server takes; one ERR
//! segment per problem (ERR-2 location, ERR-3 HL7 table 0357 code, ERR-4 severity, ERR-8
//! what to fix). Sent only after the data is committed, so an AA means stored.

use super::hl7::{escape, Delimiters, Message};
use super::pcd01::Problem;

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    Accepted,
    Error,
    Rejected,
}

impl AckCode {
    pub fn code(self) -> &'static str {
        match self {
            AckCode::Accepted => "AA",
            AckCode::Error => "AE",
            AckCode::Rejected => "AR",
        }
    }
}

/// What the ACK answers: the received message's header, when it could be read.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub delimiters: Delimiters,
    pub sending_application: String,
    pub sending_facility: String,
    pub control_id: String,
    pub version: String,
    pub event: String,
}

impl Received {
    pub fn of(message: &Message) -> Received {
        let msh = message.segments().first();
        let raw = |n: usize| {
            msh.map(|s| s.field(n).raw().to_string())
                .unwrap_or_default()
        };
        Received {
            delimiters: message.delimiters.clone(),
            sending_application: raw(3),
            sending_facility: raw(4),
            control_id: message.control_id(),
            version: message.version(),
            event: message.message_type().1,
        }
    }
}

/// The ACK text (segments ended by `\r`).
pub fn ack(
    received: &Received,
    code: AckCode,
    errors: &[Problem],
    warnings: &[Problem],
    now: &str,
    control_id: &str,
) -> String {
    let d = &received.delimiters;
    let (f, c) = (d.field, d.component);
    let encoding = format!(
        "{}{}{}{}",
        d.component, d.repetition, d.escape, d.subcomponent
    );
    let event = if received.event.is_empty() {
        "R01"
    } else {
        &received.event
    };
    let version = if received.version.is_empty() {
        "2.6"
    } else {
        &received.version
    };
    let mut text = format!(
        "MSH{f}{encoding}{f}FHIRGATE{f}FHIRGATE{f}{}{f}{}{f}{now}{f}{f}ACK{c}{event}{c}ACK{f}{}{f}P{f}{version}\r",
        received.sending_application,
        received.sending_facility,
        escape(control_id, d),
    );
    text.push_str(&format!(
        "MSA{f}{}{f}{}\r",
        code.code(),
        escape(&received.control_id, d)
    ));
    let severities = errors
        .iter()
        .map(|p| (p, "E"))
        .chain(warnings.iter().map(|p| (p, "W")));
    for (problem, severity) in severities {
        let location = problem
            .location
            .as_deref()
            .map(|l| l.replace('^', &c.to_string()))
            .unwrap_or_default();
        text.push_str(&format!(
            "ERR{f}{f}{location}{f}{}{c}{}{c}HL70357{f}{severity}{f}{f}{f}{f}{}\r",
            problem.code,
            table_0357(problem.code),
            escape(&problem.text, d),
        ));
    }
    text
}

fn table_0357(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        _ => "Application internal error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_echo_the_control_id_and_report_each_problem() {
        let received = Received {
            delimiters: Delimiters::default(),
            sending_application: "VSP^080019FFFE1443EC^EUI-64".into(),
            sending_facility: "GE Healthcare".into(),
            control_id: "0040971443EC".into(),
            version: "2.6".into(),
            event: "R01".into(),
        };
        let text = ack(
            &received,
            AckCode::Error,
            &[Problem::new(
                102,
                Some("OBX^3^5".into()),
                "OBX-5 \"x|y\" is not a number",
            )],
            &[],
            "20260101000000",
            "A1",
        );
        let segments: Vec<&str> = text.split('\r').filter(|s| !s.is_empty()).collect();
        assert_eq!(segments.len(), 3);
        assert!(segments[0].starts_with(
            "MSH|^~\\&|FHIRGATE|FHIRGATE|VSP^080019FFFE1443EC^EUI-64|GE Healthcare|20260101000000||ACK^R01^ACK|A1|P|2.6"
        ));
        assert_eq!(segments[1], "MSA|AE|0040971443EC");
        assert_eq!(
            segments[2],
            "ERR||OBX^3^5|102^Data type error^HL70357|E||||OBX-5 \"x\\F\\y\" is not a number"
        );
    }
}
