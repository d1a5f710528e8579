//! Normalised device data: what every protocol parser produces and the FHIR mapping
//! consumes. A [`DeviceMessage`] is one unit of work (one HL7 message, one JSON payload)
//! and is stored in one transaction: all of it or none of it.

use serde::{Deserialize, Serialize};

/// One message from a device or gateway, protocol details gone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceMessage {
    /// The patient the readings are about, when the message says.
    pub patient: Option<PatientRef>,
    /// The devices the message describes; readings refer to them by `key`.
    pub devices: Vec<DeviceInfo>,
    pub readings: Vec<Reading>,
}

/// How a message names its patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatientRef {
    /// A business identifier (`system|value`); the system may be unknown.
    Identifier {
        system: Option<String>,
        value: String,
    },
    /// The logical id of a Patient on this server.
    Id(String),
}

/// A device: a monitor, a module of it, a wearable, a cuff.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// How readings and child devices of this message refer to it.
    pub key: String,
    /// Its equipment identifier (EUI-64, serial number or MAC).
    pub identifier: DeviceId,
    /// MDC (or other) device type.
    pub kind: Option<Coding>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub serial_number: Option<String>,
    /// The `key` of the device this one is part of (a module of a monitor).
    pub parent: Option<String>,
}

/// An equipment identifier, normalised so that the same device is found again whichever
/// message names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceId {
    pub system: String,
    pub value: String,
}

/// The identifier system of IEEE EUI-64 device identifiers (Personal Health Device IG).
pub const EUI64_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
/// MAC addresses (RFC 7042 EUI-48).
pub const MAC_SYSTEM: &str = "urn:ietf:rfc:7042";

impl DeviceId {
    /// An EUI-64 as the PHD IG writes it: upper-case hex bytes joined by dashes
    /// (`00-A0-37-00-98-00-7A-80`), from 16 hex digits with or without separators.
    pub fn eui64(text: &str) -> Option<DeviceId> {
        let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let separators_only = text
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '-' | ':' | ' '));
        if hex.len() != 16 || !separators_only {
            return None;
        }
        Some(DeviceId {
            system: EUI64_SYSTEM.into(),
            value: pairs(&hex.to_ascii_uppercase()),
        })
    }

    /// A MAC address (EUI-48), normalised the same way.
    pub fn mac(text: &str) -> Option<DeviceId> {
        let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (hex.len() == 12).then(|| DeviceId {
            system: MAC_SYSTEM.into(),
            value: pairs(&hex.to_ascii_uppercase()),
        })
    }
}

fn pairs(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A code with its system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
    pub display: Option<String>,
}

/// One measurement (or a panel of them, such as a blood pressure).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reading {
    /// The `key` of the measuring device.
    pub device: Option<String>,
    /// The code as the device sent it (MDC for PCD-01; the template's for JSON).
    pub code: Coding,
    /// Where the metric sits in the device (PCD-01 OBX-4 `MDS.VMD.CHANNEL.METRIC`): the
    /// same code may be measured on several channels.
    pub path: Option<String>,
    pub value: Value,
    /// The device's time of the measurement, as FHIR dateTime text with its offset.
    pub time: Option<String>,
    pub status: Status,
    /// HL7 v3 ObservationInterpretation codes (N, L, H, LL, HH, A…).
    pub interpretation: Vec<Coding>,
    /// Alarm limits set on the device (PCD-01 OBX-7), as low and high in the value's unit.
    pub limits: Option<(Option<String>, Option<String>)>,
    /// Test or demonstration data (PCD-01 OBX-8 `TEST`/`DEMO`): kept, labelled HTEST.
    pub test_data: bool,
    /// A panel's members (systolic, diastolic, mean of a blood pressure).
    pub components: Vec<Reading>,
    /// Where the reading came from in its message (`OBX^3`, `$.heartRate`), for errors.
    #[serde(default)]
    pub origin: Option<String>,
    /// The Observation category when the code maps do not give one (a template's).
    #[serde(default)]
    pub category: Option<String>,
}

/// A reading's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    /// A number as sent (its text keeps its precision) with its unit.
    Quantity {
        value: String,
        unit: Option<Unit>,
    },
    Text(String),
    Coded(Coding),
    /// A waveform: samples at a fixed period.
    Samples {
        /// Milliseconds between samples.
        period_ms: f64,
        /// Scale of a sample in `unit` (`value = origin + factor × sample`).
        factor: Option<f64>,
        unit: Option<Unit>,
        data: Vec<String>,
    },
    /// No value, with the reason (a FHIR data-absent-reason code).
    Absent(String),
    /// A panel: the values are in the components.
    None,
}

/// A unit: the device's code, and UCUM when it is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// The device's own unit code (MDC) or text.
    pub source: Option<Coding>,
    /// UCUM code, when the unit maps to one.
    pub ucum: Option<String>,
    /// Human-readable unit.
    pub display: Option<String>,
}

/// FHIR `Observation.status` of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Final,
    Preliminary,
    Amended,
    Corrected,
    Cancelled,
    EnteredInError,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::Final => "final",
            Status::Preliminary => "preliminary",
            Status::Amended => "amended",
            Status::Corrected => "corrected",
            Status::Cancelled => "cancelled",
            Status::EnteredInError => "entered-in-error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equipment_identifiers_are_normalised() {
        let id = DeviceId::eui64("00A0370098007A80").unwrap();
        assert_eq!(id.value, "00-A0-37-00-98-00-7A-80");
        assert_eq!(DeviceId::eui64("00-a0-37-00-98-00-7a-80").unwrap(), id);
        assert!(DeviceId::eui64("00A0370098007A8").is_none());
        assert!(DeviceId::eui64("B40_GE0000000000").is_none());
        assert_eq!(
            DeviceId::mac("aa:bb:cc:dd:ee:ff").unwrap().value,
            "AA-BB-CC-DD-EE-FF"
        );
    }
}
