//! Readings to FHIR: `Observation` (vital signs per the R4 profiles where the code maps to
//! LOINC and the unit to UCUM), `Device` per equipment identifier and `DeviceMetric` per
//! channel. The same mapping serves every protocol.
//!
//! Each Observation carries a deterministic identifier made of the device, the code, the
//! metric's place in the device and the device's time (PHD style): the same reading sent
//! twice has the same identifier, and is stored once.

use serde_json::{json, Map, Value as Json};

use super::codes::{CodeMaps, LOINC_SYSTEM, MDC_SYSTEM, UCUM_SYSTEM};
use super::reading::{Coding, DeviceId, DeviceInfo, Reading, Status, Unit, Value};

/// The identifier system of the Observations made from device readings.
pub const OBSERVATION_ID_SYSTEM: &str = "http://fhirgate.dev/fhir/identifier/device-observation";
/// The identifier system of DeviceMetrics (a device's channel).
pub const METRIC_ID_SYSTEM: &str = "http://fhirgate.dev/fhir/identifier/device-metric";
/// The identifier system of device faults (DetectedIssue): from the agent, and the
/// server's own "device offline".
pub const FAULT_ID_SYSTEM: &str = "http://fhirgate.dev/fhir/identifier/device-fault";
/// The codes of device faults (`hw-discon`, `checksum-storm`, `offline`…).
pub const FAULT_CODE_SYSTEM: &str = "http://fhirgate.dev/fhir/CodeSystem/device-fault";
const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const DATA_ABSENT_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";

/// A reference to `id`: a logical id of this server (`Patient/123`), or, as the agent
/// builds transaction Bundles, a reference already (`urn:uuid:…`, a conditional
/// `Patient?identifier=…`). Logical ids never hold `/`, `:` or `?`, so the two are told
/// apart by those.
fn reference(resource_type: &str, id: &str) -> String {
    if id.contains(['/', ':', '?']) {
        id.to_string()
    } else {
        format!("{resource_type}/{id}")
    }
}

/// The resolved references of one message: logical ids, or references (see [`reference`]).
pub struct Resolved<'a> {
    pub patient: Option<&'a str>,
    /// Device key → (logical id, identifier).
    pub devices: &'a std::collections::HashMap<String, (String, DeviceId)>,
}

/// The Observation of a reading.
pub fn observation(reading: &Reading, resolved: &Resolved) -> Json {
    let maps = CodeMaps::get();
    let device = reading
        .device
        .as_ref()
        .and_then(|key| resolved.devices.get(key));
    let mut resource = Map::new();
    resource.insert("resourceType".into(), json!("Observation"));
    let (code, category, profile) = describe(&reading.code, !reading.components.is_empty());
    let category = category.or_else(|| reading.category.clone());
    let mut meta = Map::new();
    if reading.test_data {
        meta.insert(
            "security".into(),
            json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test health data"}]),
        );
    }
    let conforms = profile.is_some()
        && resolved.patient.is_some()
        && reading.time.is_some()
        && vital_value_conforms(reading, maps);
    if let (true, Some(profile)) = (conforms, &profile) {
        meta.insert("profile".into(), json!([profile]));
    }
    if !meta.is_empty() {
        resource.insert("meta".into(), Json::Object(meta));
    }
    resource.insert(
        "identifier".into(),
        json!([{"system": OBSERVATION_ID_SYSTEM, "value": identifier(reading, device.map(|d| &d.1))}]),
    );
    resource.insert("status".into(), json!(reading.status.code()));
    if let Some(category) = category {
        resource.insert(
            "category".into(),
            json!([{"coding": [{"system": CATEGORY_SYSTEM, "code": category, "display": category_display(&category)}]}]),
        );
    }
    resource.insert("code".into(), code);
    if let Some(patient) = resolved.patient {
        resource.insert(
            "subject".into(),
            json!({"reference": reference("Patient", patient)}),
        );
    }
    if let Some(time) = &reading.time {
        resource.insert("effectiveDateTime".into(), json!(time));
    }
    insert_value(&mut resource, &reading.value, reading.status);
    if !reading.interpretation.is_empty() {
        let codings: Vec<Json> = reading.interpretation.iter().map(coding).collect();
        resource.insert("interpretation".into(), json!([{"coding": codings}]));
    }
    if let Some(range) = reference_range(reading) {
        resource.insert("referenceRange".into(), json!([range]));
    }
    if let Some((id, _)) = device {
        resource.insert(
            "device".into(),
            json!({"reference": reference("Device", id)}),
        );
    }
    if !reading.components.is_empty() {
        let components: Vec<Json> = reading
            .components
            .iter()
            .map(|member| {
                let mut component = Map::new();
                component.insert("code".into(), describe(&member.code, false).0);
                insert_value(&mut component, &member.value, member.status);
                if !member.interpretation.is_empty() {
                    let codings: Vec<Json> = member.interpretation.iter().map(coding).collect();
                    component.insert("interpretation".into(), json!([{"coding": codings}]));
                }
                Json::Object(component)
            })
            .collect();
        resource.insert("component".into(), Json::Array(components));
    }
    Json::Object(resource)
}

/// The deterministic identifier of a reading: device, code, place in the device and the
/// device's time, joined by dashes.
pub fn identifier(reading: &Reading, device: Option<&DeviceId>) -> String {
    let device = device.map_or("no-device", |d| d.value.as_str());
    let path = reading.path.as_deref().unwrap_or("-");
    let time: String = reading
        .time
        .as_deref()
        .unwrap_or("no-time")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .collect();
    format!("{device}-{}-{path}-{time}", reading.code.code)
}

/// The code (MDC with its LOINC equivalents), category and vital-signs profile of a
/// device code.
fn describe(source: &Coding, panel: bool) -> (Json, Option<String>, Option<String>) {
    let maps = CodeMaps::get();
    let mut codings = vec![coding(source)];
    let mut text = source.display.clone();
    let mut category = None;
    let mut profile = None;
    if source.system == MDC_SYSTEM {
        let (loinc, display, mapped_category, mapped_profile) = match (
            panel.then(|| maps.panel(&source.code)).flatten(),
            maps.observation(&source.code),
            maps.panel_of(&source.code),
        ) {
            (Some(p), _, _) => (&p.loinc, &p.display, &p.category, &p.profile),
            (None, Some(o), _) => (&o.loinc, &o.display, &o.category, &o.profile),
            (None, None, Some((_, _, member))) => (&member.loinc, &member.display, &None, &None),
            (None, None, None) => {
                return (json!({"coding": codings, "text": text}), None, None);
            }
        };
        for loinc in loinc {
            codings.push(
                json!({"system": LOINC_SYSTEM, "code": loinc.code, "display": loinc.display}),
            );
        }
        text = Some(display.clone());
        category = mapped_category.clone();
        profile = mapped_profile.clone();
    }
    let mut code = json!({"coding": codings});
    if let Some(text) = text {
        code["text"] = json!(text);
    }
    (code, category, profile)
}

fn category_display(code: &str) -> &str {
    match code {
        "vital-signs" => "Vital Signs",
        "laboratory" => "Laboratory",
        "activity" => "Activity",
        other => other,
    }
}

fn coding(coding: &Coding) -> Json {
    let mut json = json!({"system": coding.system, "code": coding.code});
    if let Some(display) = &coding.display {
        json["display"] = json!(display);
    }
    json
}

/// Whether the value meets the vital-signs profile of its code: a UCUM quantity in one
/// of the profile's units (or a panel whose members all have values).
fn vital_value_conforms(reading: &Reading, maps: &CodeMaps) -> bool {
    if !reading.components.is_empty() {
        return reading.components.iter().all(|c| {
            matches!(&c.value, Value::Quantity { unit: Some(Unit { ucum: Some(u), .. }), .. } if u == "mm[Hg]")
                || matches!(c.value, Value::Absent(_))
        });
    }
    match &reading.value {
        Value::Quantity {
            unit: Some(Unit {
                ucum: Some(ucum), ..
            }),
            ..
        } => maps
            .observation(&reading.code.code)
            .is_some_and(|o| o.units.is_empty() || o.units.contains(ucum)),
        Value::Absent(_) => true,
        _ => false,
    }
}

fn quantity(value: &str, unit: Option<&Unit>) -> Json {
    // The text as sent keeps its precision; FHIR decimals are JSON numbers.
    let number: Json = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
    let mut quantity = json!({"value": number});
    if let Some(unit) = unit {
        if let Some(display) = unit.display.as_ref().or(unit.ucum.as_ref()) {
            quantity["unit"] = json!(display);
        }
        match (&unit.ucum, &unit.source) {
            (Some(ucum), _) => {
                quantity["system"] = json!(UCUM_SYSTEM);
                quantity["code"] = json!(ucum);
            }
            (None, Some(source)) => {
                quantity["system"] = json!(source.system);
                quantity["code"] = json!(source.code);
            }
            (None, None) => {}
        }
    }
    quantity
}

fn insert_value(resource: &mut Map<String, Json>, value: &Value, status: Status) {
    match value {
        Value::Quantity { value, unit } => {
            resource.insert("valueQuantity".into(), quantity(value, unit.as_ref()));
        }
        Value::Text(text) => {
            resource.insert("valueString".into(), json!(text));
        }
        Value::Coded(code) => {
            resource.insert(
                "valueCodeableConcept".into(),
                json!({"coding": [coding(code)]}),
            );
        }
        Value::Samples {
            period_ms,
            factor,
            unit,
            data,
        } => {
            let mut origin = quantity("0", unit.as_ref());
            if origin.get("unit").is_none() {
                origin = json!({"value": 0});
            }
            let mut sampled = json!({
                "origin": origin,
                "period": period_ms,
                "dimensions": 1,
                "data": data.join(" "),
            });
            if let Some(factor) = factor {
                sampled["factor"] = json!(factor);
            }
            resource.insert("valueSampledData".into(), sampled);
        }
        Value::Absent(reason) => {
            resource.insert(
                "dataAbsentReason".into(),
                json!({"coding": [{"system": DATA_ABSENT_SYSTEM, "code": reason}]}),
            );
        }
        Value::None => {
            if status == Status::Cancelled {
                resource.insert(
                    "dataAbsentReason".into(),
                    json!({"coding": [{"system": DATA_ABSENT_SYSTEM, "code": "unknown"}]}),
                );
            }
        }
    }
}

fn reference_range(reading: &Reading) -> Option<Json> {
    let (low, high) = reading.limits.as_ref()?;
    let unit = match &reading.value {
        Value::Quantity { unit, .. } => unit.as_ref(),
        _ => None,
    };
    let mut range = Map::new();
    for (name, bound) in [("low", low), ("high", high)] {
        if let Some(bound) = bound
            .as_deref()
            .filter(|b| serde_json::from_str::<f64>(b).is_ok())
        {
            range.insert(name.into(), quantity(bound, unit));
        }
    }
    if range.is_empty() {
        return None;
    }
    range.insert("text".into(), json!("alarm limits set on the device"));
    Some(Json::Object(range))
}

/// The interpretation coding of an HL7 abnormal flag (v2 table 0078 → v3
/// ObservationInterpretation), when it is one.
pub fn interpretation(flag: &str) -> Option<Coding> {
    let display = match flag {
        "N" => "Normal",
        "L" => "Low",
        "H" => "High",
        "LL" => "Critical low",
        "HH" => "Critical high",
        "A" => "Abnormal",
        "AA" => "Critical abnormal",
        "<" => "Off scale low",
        ">" => "Off scale high",
        _ => return None,
    };
    Some(Coding {
        system: INTERPRETATION_SYSTEM.into(),
        code: flag.into(),
        display: Some(display.into()),
    })
}

/// The Device resource for a device of a message.
pub fn device(info: &DeviceInfo, patient: Option<&str>, parent: Option<&str>) -> Json {
    let mut resource = json!({
        "resourceType": "Device",
        "identifier": [{"system": info.identifier.system, "value": info.identifier.value}],
        "status": "active",
    });
    if let Some(manufacturer) = &info.manufacturer {
        resource["manufacturer"] = json!(manufacturer);
    }
    if let Some(model) = &info.model {
        resource["modelNumber"] = json!(model);
    }
    if let Some(serial) = &info.serial_number {
        resource["serialNumber"] = json!(serial);
    }
    if let Some(version) = &info.version {
        resource["version"] = json!([{"value": version}]);
    }
    if let Some(kind) = &info.kind {
        let mut code = json!({"coding": [coding(kind)]});
        if let Some(display) = &kind.display {
            code["text"] = json!(display);
        }
        resource["type"] = code;
    }
    if let Some(patient) = patient {
        resource["patient"] = json!({"reference": reference("Patient", patient)});
    }
    if let Some(parent) = parent {
        resource["parent"] = json!({"reference": reference("Device", parent)});
    }
    resource
}

/// The identifier of the DeviceMetric of a reading's channel.
pub fn metric_identifier(reading: &Reading, device: &DeviceId) -> String {
    format!(
        "{}-{}-{}",
        device.value,
        reading.code.code,
        reading.path.as_deref().unwrap_or("-")
    )
}

/// The DeviceMetric of a reading's channel: what the device measures there, in which unit.
pub fn device_metric(reading: &Reading, device_id: &str, device: &DeviceId) -> Json {
    let mut metric = json!({
        "resourceType": "DeviceMetric",
        "identifier": [{"system": METRIC_ID_SYSTEM, "value": metric_identifier(reading, device)}],
        "type": describe(&reading.code, !reading.components.is_empty()).0,
        "source": {"reference": reference("Device", device_id)},
        "operationalStatus": "on",
        "category": "measurement",
    });
    let unit = match &reading.value {
        Value::Quantity { unit, .. } | Value::Samples { unit, .. } => unit.as_ref(),
        _ => None,
    };
    if let Some(unit) = unit {
        let mut codings = Vec::new();
        if let Some(source) = &unit.source {
            codings.push(coding(source));
        }
        if let Some(ucum) = &unit.ucum {
            codings.push(json!({"system": UCUM_SYSTEM, "code": ucum}));
        }
        if !codings.is_empty() {
            metric["unit"] = json!({"coding": codings});
        }
    }
    metric
}
