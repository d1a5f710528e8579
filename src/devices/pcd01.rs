//! IHE PCD-01 (HL7 v2.6 ORU^R01) messages from patient monitors to normalised readings.
//!
//! - PID-3 names the patient (an OID assigning authority becomes the identifier system).
//! - OBR-7 is the time of the OBX rows under it that carry no OBX-14 (MSH-7 before any OBR).
//! - OBX-3 is the MDC code, OBX-4 the metric's place in the device (`MDS.VMD.CHANNEL.METRIC`),
//!   OBX-2 the value type (NM → quantity, ST/TX → text, CWE/CE → code, NA → waveform),
//!   OBX-6 the MDC unit (→ UCUM), OBX-7 the alarm limits, OBX-8 abnormal flags and
//!   measurement status, OBX-11 the result status, OBX-14 the time, OBX-18 the equipment
//!   identifier (EUI-64).
//! - Device-describing rows (no value, status `X`, an MDC device code) describe the device.
//! - Systolic, diastolic and mean of a blood pressure (measured together) become one panel.
//! - A waveform's sample rate and resolution come from its attribute rows (`…METRIC.1`).
//!
//! What cannot be read is a [`Problem`] with its HL7 location (`OBX^4^5`), returned to the
//! sender in the ACK; codes the maps do not know are stored with their MDC code and
//! reported as warnings.

use std::collections::HashMap;

use chrono::FixedOffset;

use super::codes::{CodeMaps, MDC_SYSTEM};
use super::hl7::{Field, Message, Segment};
use super::hl7time;
use super::mapping::interpretation;
use super::reading::{
    Coding, DeviceId, DeviceInfo, DeviceMessage, PatientRef, Reading, Status, Unit, Value,
};

/// A problem with a message, as an HL7 ACK reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// HL7 table 0357 error code (101 required field missing, 102 data type error, 103
    /// table value not found, 200 unsupported message type, 207 application error…).
    pub code: u16,
    /// `SEG^occurrence^field` (ERR-2), when it is one place.
    pub location: Option<String>,
    pub text: String,
}

impl Problem {
    pub fn new(code: u16, location: Option<String>, text: impl Into<String>) -> Problem {
        Problem {
            code,
            location,
            text: text.into(),
        }
    }
}

/// How zone-less times are read.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub zone: FixedOffset,
}

/// A message read: its readings and what was only worth a warning.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub message: DeviceMessage,
    pub warnings: Vec<Problem>,
}

/// Reads an ORU^R01 message. `Err` is the reason to refuse it (AR for a message this
/// adapter does not take, AE for one whose content is wrong), with every problem found.
pub fn read(message: &Message, settings: Settings) -> Result<Parsed, (bool, Vec<Problem>)> {
    let (kind, event) = message.message_type();
    if kind != "ORU" || !matches!(event.as_str(), "R01" | "W01") {
        return Err((
            true,
            vec![Problem::new(
                200,
                Some("MSH^1^9".into()),
                format!(
                    "message type {kind}^{event} is not supported: send IHE PCD-01 ORU^R01 observation reports"
                ),
            )],
        ));
    }
    let mut reader = Reader {
        settings,
        problems: Vec::new(),
        warnings: Vec::new(),
        devices: Vec::new(),
        occurrences: HashMap::new(),
    };
    let result = reader.read(message);
    if !reader.problems.is_empty() {
        return Err((false, reader.problems));
    }
    Ok(Parsed {
        message: result,
        warnings: reader.warnings,
    })
}

struct Reader {
    settings: Settings,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    devices: Vec<DeviceInfo>,
    /// Occurrences of each segment name so far (ERR-2 counts per name).
    occurrences: HashMap<String, usize>,
}

/// A waveform's attributes from its attribute rows: sample rate (Hz), resolution and the
/// resolution's unit.
type Waveform = (Option<f64>, Option<f64>, Option<Unit>);

/// An OBX row once read.
struct Row {
    code: Coding,
    path: Option<String>,
    value_type: String,
    values: Vec<String>,
    text: String,
    unit: Option<Unit>,
    limits: Option<(Option<String>, Option<String>)>,
    flags: Vec<String>,
    status: String,
    time: Option<String>,
    equipment: Option<DeviceId>,
    location: String,
}

impl Reader {
    fn read(&mut self, message: &Message) -> DeviceMessage {
        let msh = message.segments().first();
        let mut group_time = msh.and_then(|msh| self.time(msh, 7, "MSH^1^7"));
        // The sending application's EUI-64 (MSH-3.2): the gateway, or the monitor itself.
        let gateway = msh.and_then(|msh| {
            let field = msh.field(3);
            (field.component(3) == "EUI-64")
                .then(|| DeviceId::eui64(&field.component(2)))
                .flatten()
        });
        let mut patient = None;
        let mut rows: Vec<Row> = Vec::new();
        let mut row_times: Vec<Option<String>> = Vec::new();
        for segment in message.segments() {
            let occurrence = {
                let count = self.occurrences.entry(segment.name.clone()).or_insert(0);
                *count += 1;
                *count
            };
            match segment.name.as_str() {
                "PID" => patient = self.patient(segment, occurrence),
                "OBR" => {
                    if let Some(time) = self.time(segment, 7, &format!("OBR^{occurrence}^7")) {
                        group_time = Some(time);
                    }
                }
                "OBX" => {
                    if let Some(row) = self.row(segment, occurrence) {
                        row_times.push(row.time.clone().or_else(|| group_time.clone()));
                        rows.push(row);
                    }
                }
                _ => {}
            }
        }
        let mut readings = self.readings(rows, row_times, gateway.as_ref());
        if let Some(gateway) = gateway {
            self.device_for(&gateway);
            // Readings without equipment of their own are the gateway's (the monitor's).
            for reading in readings.iter_mut().filter(|r| r.device.is_none()) {
                reading.device = Some(gateway.value.clone());
            }
        }
        DeviceMessage {
            patient,
            devices: std::mem::take(&mut self.devices),
            readings,
        }
    }

    fn time(&mut self, segment: &Segment, field: usize, location: &str) -> Option<String> {
        let text = segment.field(field).component(1);
        if text.is_empty() {
            return None;
        }
        match hl7time::parse(&text, self.settings.zone) {
            Ok(time) => Some(time.text),
            Err(why) => {
                self.problems
                    .push(Problem::new(102, Some(location.into()), why));
                None
            }
        }
    }

    fn patient(&mut self, pid: &Segment, occurrence: usize) -> Option<PatientRef> {
        for repetition in pid.field(3).repetitions() {
            let value = repetition.component(1);
            if value.is_empty() {
                continue;
            }
            // CX.4 assigning authority (HD): namespace & universal id & its type.
            let universal = repetition.subcomponent(4, 2);
            let universal_type = repetition.subcomponent(4, 3);
            let system = (!universal.is_empty() && universal_type.eq_ignore_ascii_case("ISO"))
                .then(|| format!("urn:oid:{universal}"))
                .or_else(|| {
                    (universal.starts_with("http://") || universal.starts_with("https://"))
                        .then(|| universal.clone())
                });
            return Some(PatientRef::Identifier { system, value });
        }
        if pid.field(3).is_empty() {
            None
        } else {
            self.problems.push(Problem::new(
                101,
                Some(format!("PID^{occurrence}^3")),
                "PID-3 has no identifier value (CX.1)",
            ));
            None
        }
    }

    fn row(&mut self, obx: &Segment, occurrence: usize) -> Option<Row> {
        let location = |field: usize| format!("OBX^{occurrence}^{field}");
        let code_field = obx.field(3);
        let code = code_field.component(1);
        if code.is_empty() {
            self.problems.push(Problem::new(
                101,
                Some(location(3)),
                "OBX-3 has no code: each row needs its MDC code, e.g. 150456^MDC_PULS_OXIM_SAT_O2^MDC",
            ));
            return None;
        }
        let code = coding(code_field);
        let time = self.time(obx, 14, &location(14));
        let unit = unit(obx.field(6));
        let limits = {
            let range = obx.field(7).text();
            let range = range.trim();
            (!range.is_empty()).then(|| match range.split_once('-') {
                Some((low, high)) => (
                    Some(low.trim().to_string()).filter(|s| !s.is_empty()),
                    Some(high.trim().to_string()).filter(|s| !s.is_empty()),
                ),
                None => (Some(range.to_string()), None),
            })
        };
        let flags: Vec<String> = obx
            .field(8)
            .repetitions()
            .iter()
            .map(|r| r.component(1))
            .filter(|f| !f.is_empty())
            .collect();
        let equipment = obx
            .field(18)
            .repetitions()
            .iter()
            .find_map(|r| DeviceId::eui64(&r.component(1)));
        let path = Some(obx.field(4).text()).filter(|p| !p.is_empty());
        Some(Row {
            code,
            path,
            value_type: obx.field(2).component(1),
            values: obx.field(5).components(),
            text: obx.field(5).text(),
            unit,
            limits,
            flags,
            status: obx.field(11).component(1),
            time,
            equipment,
            location: location(5),
        })
    }

    /// The device an equipment identifier names (added to the message once).
    fn device_for(&mut self, id: &DeviceId) -> String {
        if !self.devices.iter().any(|d| d.identifier == *id) {
            self.devices.push(DeviceInfo {
                key: id.value.clone(),
                identifier: id.clone(),
                ..DeviceInfo::default()
            });
        }
        id.value.clone()
    }

    fn readings(
        &mut self,
        rows: Vec<Row>,
        times: Vec<Option<String>>,
        gateway: Option<&DeviceId>,
    ) -> Vec<Reading> {
        let maps = CodeMaps::get();
        // Device rows: their place → their device type (and equipment, if they name it).
        let mut device_rows: Vec<(String, Coding, Option<DeviceId>)> = Vec::new();
        // Waveform attributes: metric place → (sample rate Hz, resolution, its unit).
        let mut attributes: HashMap<String, Waveform> = HashMap::new();
        let mut metrics: Vec<(Row, Option<String>)> = Vec::new();
        for (row, time) in rows.into_iter().zip(times) {
            let reference = row.code.display.clone().unwrap_or_default();
            let is_attribute = reference.starts_with("MDC_ATTR_")
                || row
                    .path
                    .as_deref()
                    .is_some_and(|p| p.split('.').count() > 4);
            if is_attribute {
                if let Some(parent) = row.path.as_deref().and_then(|p| p.rsplit_once('.')) {
                    let entry = attributes.entry(parent.0.to_string()).or_default();
                    let number = row
                        .values
                        .first()
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    if reference.contains("SAMP_RATE") {
                        entry.0 = number;
                    } else if reference.contains("MSMT_RES") {
                        entry.1 = number;
                        entry.2 = row.unit.clone();
                    }
                }
                continue;
            }
            let no_value = row.text.trim().is_empty();
            let is_device_row = no_value
                && (row.status == "X" || row.value_type.is_empty())
                && maps.panel(&row.code.code).is_none()
                && (maps.device(&row.code.code).is_some()
                    || row
                        .path
                        .as_deref()
                        .is_none_or(|p| p == "1" || p.split('.').skip(1).all(|part| part == "0"))
                    || row.path.as_deref().is_some_and(|p| p.ends_with(".0")));
            if is_device_row {
                if let Some(path) = &row.path {
                    device_rows.push((path.clone(), row.code.clone(), row.equipment.clone()));
                }
                if let Some(equipment) = &row.equipment {
                    self.device_for(equipment);
                }
                continue;
            }
            // A compound header (`150020` with no value): its members follow.
            if no_value && maps.panel(&row.code.code).is_some() {
                continue;
            }
            metrics.push((row, time));
        }
        // An MDS row (`1.0.0.0`, or `1` from PHD gateways) gives the monitor's type.
        for (place, code, equipment) in &device_rows {
            let mds = place == "1"
                || place.split('.').skip(1).all(|part| part == "0") && place.contains('.');
            let Some(target) = equipment.as_ref().or(gateway) else {
                continue;
            };
            if !mds {
                continue;
            }
            self.device_for(target);
            if let Some(device) = self
                .devices
                .iter_mut()
                .find(|d| d.identifier == *target && d.kind.is_none())
            {
                device.kind = Some(code.clone());
            }
        }
        // The device of a metric: its own OBX-18, else the nearest device row above it
        // that names equipment, else the gateway's.
        let mut readings: Vec<Reading> = Vec::new();
        for (row, time) in metrics {
            let equipment = row.equipment.clone().or_else(|| {
                let path = row.path.as_deref()?;
                device_rows
                    .iter()
                    .filter(|(place, _, id)| id.is_some() && is_above(place, path))
                    .max_by_key(|(place, _, _)| place.trim_end_matches(".0").len())
                    .and_then(|(_, _, id)| id.clone())
            });
            let device = equipment
                .as_ref()
                .map(|id| self.device_for(id))
                .or_else(|| gateway.map(|g| g.value.clone()));
            let value = self.value(&row, &attributes);
            if row.code.system == MDC_SYSTEM
                && maps.observation(&row.code.code).is_none()
                && maps.panel_of(&row.code.code).is_none()
            {
                self.warnings.push(Problem::new(
                    103,
                    Some(row.location.replace("^5", "^3")),
                    format!(
                        "MDC code {} ({}) has no LOINC mapping here: stored with its MDC code only",
                        row.code.code,
                        row.code.display.as_deref().unwrap_or("no reference id")
                    ),
                ));
            }
            let mut test_data = false;
            let mut interpretations = Vec::new();
            let mut absent = None;
            for flag in &row.flags {
                match flag.as_str() {
                    "TEST" | "DEMO" => test_data = true,
                    "INV" => absent = Some("error"),
                    "NAV" => absent = Some("not-performed"),
                    "BUSY" => absent = Some("temp-unknown"),
                    "OFF" => absent = Some("asked-declined"),
                    "NI" => absent = Some("unknown"),
                    other => {
                        if let Some(coding) = interpretation(other) {
                            interpretations.push(coding);
                        }
                    }
                }
            }
            let value = match (absent, value) {
                (Some(reason), Value::Quantity { .. } | Value::Absent(_)) => {
                    Value::Absent(reason.into())
                }
                (_, value) => value,
            };
            let status = match row.status.as_str() {
                "F" => Status::Final,
                "C" => Status::Corrected,
                "X" => Status::Cancelled,
                "D" | "W" => Status::EnteredInError,
                // R (unverified device data), P, empty: not yet validated by a clinician.
                _ => Status::Preliminary,
            };
            readings.push(Reading {
                device,
                code: row.code,
                path: row.path,
                value,
                time,
                status,
                interpretation: interpretations,
                limits: row.limits,
                test_data,
                components: Vec::new(),
                origin: Some(row.location.trim_end_matches("^5").to_string()),
                category: None,
            });
        }
        group_panels(readings)
    }

    fn value(&mut self, row: &Row, attributes: &HashMap<String, Waveform>) -> Value {
        let text = row.text.trim();
        match row.value_type.as_str() {
            _ if text.is_empty() => Value::Absent("unknown".into()),
            "NM" | "SN" => {
                let number = text.trim_start_matches('+');
                if number.parse::<f64>().is_ok_and(f64::is_finite) && !number.contains(['e', 'E']) {
                    let number = match number.strip_prefix('.') {
                        Some(rest) => format!("0.{rest}"),
                        None => number.to_string(),
                    };
                    Value::Quantity {
                        value: number,
                        unit: row.unit.clone(),
                    }
                } else {
                    self.problems.push(Problem::new(
                        102,
                        Some(row.location.clone()),
                        format!("OBX-5 {text:?} is not a number, but OBX-2 says NM"),
                    ));
                    Value::Absent("error".into())
                }
            }
            "NA" | "MA" => {
                let samples: Vec<String> = row
                    .values
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if let Some(bad) = samples.iter().find(|s| s.parse::<f64>().is_err()) {
                    self.problems.push(Problem::new(
                        102,
                        Some(row.location.clone()),
                        format!("waveform sample {bad:?} is not a number"),
                    ));
                }
                let (rate, resolution, resolution_unit) = row
                    .path
                    .as_ref()
                    .and_then(|p| attributes.get(p))
                    .cloned()
                    .unwrap_or_default();
                let Some(rate) = rate.filter(|r| *r > 0.0) else {
                    self.problems.push(Problem::new(
                        101,
                        Some(row.location.clone()),
                        "a waveform (NA) needs its sample rate: an MDC_ATTR_SAMP_RATE row at OBX-4 <metric>.1",
                    ));
                    return Value::Absent("error".into());
                };
                Value::Samples {
                    period_ms: 1000.0 / rate,
                    factor: resolution,
                    unit: resolution_unit.or_else(|| row.unit.clone()),
                    data: samples,
                }
            }
            "CWE" | "CE" | "CNE" | "CF" => {
                let code = row.values.first().cloned().unwrap_or_default();
                let display = row.values.get(1).cloned().filter(|d| !d.is_empty());
                let system = row.values.get(2).cloned().unwrap_or_default();
                Value::Coded(Coding {
                    system: coding_system(&system),
                    code,
                    display,
                })
            }
            "ST" | "TX" | "FT" | "" => Value::Text(text.to_string()),
            other => {
                self.problems.push(Problem::new(
                    102,
                    Some(row.location.replace("^5", "^2")),
                    format!("OBX-2 value type {other:?} is not supported (NM, ST, TX, CWE, NA)"),
                ));
                Value::Absent("unsupported".into())
            }
        }
    }
}

/// Whether the device row at `place` (`1.5.0.0`, `1`) contains the metric at `path`.
fn is_above(place: &str, path: &str) -> bool {
    let prefix: Vec<&str> = place
        .split('.')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .skip_while(|p| *p == "0")
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let parts: Vec<&str> = path.split('.').collect();
    prefix.len() < parts.len() && parts.starts_with(&prefix)
}

/// OBX-3 as a coding: MDC codes in the FHIR MDC system, others under their HL7 system.
fn coding(field: Field<'_>) -> Coding {
    let code = field.component(1);
    let reference = field.component(2);
    let system = field.component(3);
    Coding {
        system: coding_system(&system),
        code,
        display: Some(reference).filter(|r| !r.is_empty()),
    }
}

fn coding_system(hl7_system: &str) -> String {
    match hl7_system {
        "MDC" | "" => MDC_SYSTEM.into(),
        "LN" | "LOINC" => super::codes::LOINC_SYSTEM.into(),
        "SCT" | "SNOMED-CT" => "http://snomed.info/sct".into(),
        "UCUM" => super::codes::UCUM_SYSTEM.into(),
        other => format!("urn:fhirgate:hl7v2-coding-system:{other}"),
    }
}

/// OBX-6 as a unit: MDC unit codes map to UCUM.
fn unit(field: Field<'_>) -> Option<Unit> {
    if field.is_empty() {
        return None;
    }
    let code = field.component(1);
    let reference = field.component(2);
    let system = field.component(3);
    let maps = CodeMaps::get();
    if system == "UCUM" {
        return Some(Unit {
            source: None,
            ucum: Some(code.clone()),
            display: Some(if reference.is_empty() {
                code
            } else {
                reference
            }),
        });
    }
    let mapped = maps.unit(&code).or_else(|| maps.ucum(&reference));
    Some(Unit {
        source: Some(Coding {
            system: MDC_SYSTEM.into(),
            code: code.clone(),
            display: Some(reference.clone()).filter(|r| !r.is_empty()),
        }),
        ucum: mapped.map(|u| u.ucum.clone()),
        display: mapped
            .map(|u| u.display.clone())
            .or_else(|| Some(reference).filter(|r| !r.is_empty()))
            .or(Some(code).filter(|c| !c.is_empty())),
    })
}

/// Blood-pressure members measured together (same device, time and channel) become one
/// panel reading with them as components, in the order systolic, diastolic, mean.
fn group_panels(readings: Vec<Reading>) -> Vec<Reading> {
    let maps = CodeMaps::get();
    let mut out: Vec<Reading> = Vec::new();
    // Panel key → index in `out`.
    let mut panels: HashMap<(Option<String>, Option<String>, String, String), usize> =
        HashMap::new();
    for reading in readings {
        let Some((panel_code, panel, _)) = maps.panel_of(&reading.code.code) else {
            out.push(reading);
            continue;
        };
        let channel = reading
            .path
            .as_deref()
            .and_then(|p| p.rsplit_once('.'))
            .map(|(channel, _)| channel.to_string())
            .unwrap_or_default();
        let key = (
            reading.device.clone(),
            reading.time.clone(),
            channel.clone(),
            panel_code.to_string(),
        );
        let index = *panels.entry(key).or_insert_with(|| {
            out.push(Reading {
                device: reading.device.clone(),
                code: Coding {
                    system: MDC_SYSTEM.into(),
                    code: panel_code.to_string(),
                    display: Some(panel.reference.clone()),
                },
                path: Some(channel),
                value: Value::None,
                time: reading.time.clone(),
                status: reading.status,
                interpretation: Vec::new(),
                limits: None,
                test_data: reading.test_data,
                components: Vec::new(),
                origin: reading.origin.clone(),
                category: None,
            });
            out.len() - 1
        });
        let panel_reading = &mut out[index];
        panel_reading.test_data |= reading.test_data;
        panel_reading.components.push(reading);
    }
    for reading in &mut out {
        reading.components.sort_by_key(|c| c.code.code.clone());
    }
    out
}
