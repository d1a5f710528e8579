//! A device message as the entries of a transaction Bundle, built with the server's own
//! mapping ([`crate::devices::mapping`]) so that a reading reaches the same FHIR whether
//! it came through the agent or straight to the server.
//!
//! Every entry is a conditional create on a deterministic identifier, with a `fullUrl`
//! derived from that identifier: a message uploaded twice (the agent crashed between the
//! server's answer and removing it from its queue) creates nothing the second time, and
//! the same Device named by several queued messages is one entry of a merged Bundle.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value as Json};
use uuid::Uuid;

use crate::devices::mapping::{self, Resolved, METRIC_ID_SYSTEM, OBSERVATION_ID_SYSTEM};
use crate::devices::reading::{DeviceId, DeviceInfo, DeviceMessage, PatientRef};

pub use crate::devices::mapping::{FAULT_CODE_SYSTEM, FAULT_ID_SYSTEM};

/// The same `fullUrl` for the same resource, from whichever message or agent.
fn full_url(resource_type: &str, system: &str, value: &str) -> String {
    let name = format!("{resource_type}|{system}|{value}");
    format!(
        "urn:uuid:{}",
        Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
    )
}

fn token(system: &str, value: &str) -> String {
    form_urlencoded::byte_serialize(format!("{system}|{value}").as_bytes()).collect()
}

/// A conditional create entry: created unless a resource has the identifier.
fn create_entry(resource_type: &str, system: &str, value: &str, resource: Json) -> Json {
    json!({
        "fullUrl": full_url(resource_type, system, value),
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource_type,
            "ifNoneExist": format!("identifier={}", token(system, value)),
        }
    })
}

/// The reference to a patient inside a transaction: its id, or a conditional reference
/// the server resolves by identifier.
pub fn patient_reference(patient: &PatientRef) -> String {
    match patient {
        PatientRef::Id(id) => format!("Patient/{id}"),
        PatientRef::Identifier { system, value } => {
            let criteria = match system {
                Some(system) => token(system, value),
                None => form_urlencoded::byte_serialize(value.as_bytes()).collect(),
            };
            format!("Patient?identifier={criteria}")
        }
    }
}

/// The `fullUrl` of a device's entry (what the message's resources refer to it by).
pub fn device_url(device: &DeviceId) -> String {
    full_url("Device", &device.system, &device.value)
}

/// The entry that creates a device unless it exists.
pub fn device_entry(info: &DeviceInfo, patient: Option<&str>, parent: Option<&str>) -> Json {
    create_entry(
        "Device",
        &info.identifier.system,
        &info.identifier.value,
        mapping::device(info, patient, parent),
    )
}

/// The entries of a message: its devices, a DeviceMetric per channel and its
/// Observations. `patient` (the source's configured patient) overrides the message's.
pub fn message_entries(message: &DeviceMessage, patient: Option<&PatientRef>) -> Vec<Json> {
    let patient = patient.or(message.patient.as_ref()).map(patient_reference);
    let mut entries = Vec::new();
    let urls: HashMap<String, (String, DeviceId)> = message
        .devices
        .iter()
        .map(|info| {
            (
                info.key.clone(),
                (device_url(&info.identifier), info.identifier.clone()),
            )
        })
        .collect();
    for info in &message.devices {
        let parent = info
            .parent
            .as_ref()
            .and_then(|key| urls.get(key))
            .map(|d| d.0.as_str());
        entries.push(device_entry(info, patient.as_deref(), parent));
    }
    let mut metrics = HashSet::new();
    for reading in &message.readings {
        let Some((url, device)) = reading.device.as_ref().and_then(|k| urls.get(k)) else {
            continue;
        };
        let identifier = mapping::metric_identifier(reading, device);
        if metrics.insert(identifier.clone()) {
            entries.push(create_entry(
                "DeviceMetric",
                METRIC_ID_SYSTEM,
                &identifier,
                mapping::device_metric(reading, url, device),
            ));
        }
    }
    let resolved = Resolved {
        patient: patient.as_deref(),
        devices: &urls,
    };
    for reading in &message.readings {
        let device = reading
            .device
            .as_ref()
            .and_then(|k| urls.get(k))
            .map(|d| &d.1);
        let identifier = mapping::identifier(reading, device);
        entries.push(create_entry(
            "Observation",
            OBSERVATION_ID_SYSTEM,
            &identifier,
            mapping::observation(reading, &resolved),
        ));
    }
    entries
}

/// A fault a device reported or the agent saw (a port unplugged, a checksum storm, an
/// exception bit): a DetectedIssue authored by and implicating the device. R4's Flag
/// cannot have a Device as its subject, DetectedIssue names it as author.
pub struct Fault<'a> {
    pub device: &'a DeviceInfo,
    /// A short code (`hw-discon`, `sensor-off`, `checksum-storm`…).
    pub code: &'a str,
    /// What happened, for the engineer reading it.
    pub detail: &'a str,
    /// When (FHIR dateTime).
    pub time: &'a str,
    pub patient: Option<&'a PatientRef>,
}

pub fn fault_entries(fault: &Fault) -> Vec<Json> {
    let patient = fault.patient.map(patient_reference);
    let device = device_url(&fault.device.identifier);
    let identifier = format!(
        "{}-{}-{}",
        fault.device.identifier.value, fault.code, fault.time
    );
    let mut issue = json!({
        "resourceType": "DetectedIssue",
        "identifier": [{"system": FAULT_ID_SYSTEM, "value": identifier}],
        "status": "final",
        "code": {
            "coding": [{"system": FAULT_CODE_SYSTEM, "code": fault.code}],
            "text": fault.detail,
        },
        "severity": "moderate",
        "identifiedDateTime": fault.time,
        "author": {"reference": device},
        "implicated": [{"reference": device}],
        "detail": fault.detail,
    });
    if let Some(patient) = &patient {
        issue["patient"] = json!({"reference": patient});
    }
    vec![
        device_entry(fault.device, patient.as_deref(), None),
        create_entry("DetectedIssue", FAULT_ID_SYSTEM, &identifier, issue),
    ]
}

/// One transaction Bundle of the entries of several queued items; an entry that several
/// carry (the same Device) is sent once.
pub fn transaction<'a>(items: impl IntoIterator<Item = &'a Vec<Json>>) -> Json {
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for entry in items.into_iter().flatten() {
        let url = entry["fullUrl"].as_str().unwrap_or_default().to_string();
        if seen.insert(url) {
            entries.push(entry.clone());
        }
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::serial::nonin;

    fn message() -> DeviceMessage {
        let received = chrono::DateTime::parse_from_rfc3339("2026-03-01T14:02:40+01:00").unwrap();
        let line = nonin::parse("14:02:31 SPO2=097 HR=072", received).unwrap();
        let device = DeviceInfo {
            key: "oximeter".into(),
            identifier: DeviceId {
                system: "urn:example:serial".into(),
                value: "N-1".into(),
            },
            ..DeviceInfo::default()
        };
        DeviceMessage {
            patient: None,
            devices: vec![device],
            readings: line
                .readings
                .into_iter()
                .map(|mut r| {
                    r.device = Some("oximeter".into());
                    r
                })
                .collect(),
        }
    }

    #[test]
    fn entries_refer_to_each_other_and_are_conditional() {
        let patient = PatientRef::Identifier {
            system: Some("http://hospital.example/mrn".into()),
            value: "12 3".into(),
        };
        let entries = message_entries(&message(), Some(&patient));
        // Device, one metric per channel (SpO2, pulse), two Observations.
        assert_eq!(entries.len(), 5, "{entries:#?}");
        let device_url = entries[0]["fullUrl"].as_str().unwrap();
        assert!(device_url.starts_with("urn:uuid:"));
        let observation = &entries[3];
        assert_eq!(observation["resource"]["device"]["reference"], device_url);
        assert_eq!(
            observation["resource"]["subject"]["reference"],
            "Patient?identifier=http%3A%2F%2Fhospital.example%2Fmrn%7C12+3"
        );
        assert_eq!(entries[1]["resource"]["source"]["reference"], device_url);
        for entry in &entries {
            assert_eq!(entry["request"]["method"], "POST");
            assert!(entry["request"]["ifNoneExist"]
                .as_str()
                .unwrap()
                .starts_with("identifier="));
        }
        // The same message gives the same entries (and so nothing new on the server).
        assert_eq!(entries, message_entries(&message(), Some(&patient)));
    }

    #[test]
    fn merged_items_carry_a_device_once() {
        let first = message_entries(&message(), None);
        let mut later = message();
        later.readings[0].time = Some("2026-03-01T14:02:32+01:00".into());
        let second = message_entries(&later, None);
        let bundle = transaction([&first, &second]);
        let entries = bundle["entry"].as_array().unwrap();
        let devices = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Device")
            .count();
        assert_eq!(devices, 1);
        // Two SpO2 readings at different times, one pulse reading sent twice.
        let observations = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .count();
        assert_eq!(observations, 3);
    }
}
