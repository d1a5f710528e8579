//! JSON telemetry templates (in the spirit of Azure MedTech's device and FHIR destination
//! templates): TOML files in `fhir-profiles/mappings/` saying where in a device's JSON
//! payload the device id, patient, time and values are (JSONPath, RFC 9535), and what
//! each value is (code, UCUM unit, category). A value may be calculated (`scale`,
//! `offset`: a unit conversion); a time may be RFC 3339 or epoch seconds or milliseconds;
//! an array of high-rate samples becomes one Observation with SampledData per period.
//!
//! A text starting with `$` is a JSONPath into the payload; any other text is a literal.
//!
//! ```toml
//! description = "Wrist-worn heart rate and SpO2"
//! each = "$.readings[*]"            # optional: several messages in one payload
//! [device]
//! id = "$.deviceId"
//! kind = "serial"                   # serial | mac | eui64
//! system = "urn:example:watch-serial"
//! [patient]
//! identifier = "$.patientId"
//! system = "http://hospital.example/mrn"
//! [time]
//! path = "$.timestamp"
//! format = "epoch-millis"           # rfc3339 | epoch-seconds | epoch-millis
//! [[values]]
//! path = "$.heartRate"
//! code = { code = "147842" }        # MDC by default: LOINC, category, profile from the maps
//! unit = "/min"
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_json_path::JsonPath;

use super::codes::MDC_SYSTEM;
use super::pcd01::Problem;
use super::reading::{
    Coding, DeviceId, DeviceInfo, DeviceMessage, PatientRef, Reading, Status, Unit, Value,
};

/// The templates shipped with the server.
const SHIPPED: [(&str, &str); 2] = [
    (
        "smartwatch",
        include_str!("../../fhir-profiles/mappings/smartwatch.toml"),
    ),
    (
        "bp-cuff",
        include_str!("../../fhir-profiles/mappings/bp-cuff.toml"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub description: Option<String>,
    /// Each match is one message (a batch of readings in one payload).
    pub each: Option<String>,
    pub device: DeviceTemplate,
    pub patient: Option<PatientTemplate>,
    pub time: TimeTemplate,
    #[serde(default)]
    pub values: Vec<ValueTemplate>,
    #[serde(default)]
    pub panels: Vec<PanelTemplate>,
    #[serde(default)]
    pub series: Vec<SeriesTemplate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdKind {
    Serial,
    Mac,
    Eui64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTemplate {
    pub id: String,
    pub kind: IdKind,
    /// The identifier system of serial numbers.
    pub system: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    /// The device type (MDC by default).
    #[serde(rename = "type")]
    pub kind_code: Option<CodeTemplate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientTemplate {
    /// The patient's business identifier (with `system`)…
    pub identifier: Option<String>,
    pub system: Option<String>,
    /// …or the logical id of a Patient on this server.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TimeFormat {
    #[default]
    Rfc3339,
    EpochSeconds,
    EpochMillis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeTemplate {
    pub path: String,
    #[serde(default)]
    pub format: TimeFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeTemplate {
    #[serde(default = "mdc")]
    pub system: String,
    pub code: String,
    pub display: Option<String>,
}

fn mdc() -> String {
    MDC_SYSTEM.to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueTemplate {
    pub path: String,
    pub code: CodeTemplate,
    /// UCUM code of the value (after `scale` and `offset`).
    pub unit: Option<String>,
    pub unit_display: Option<String>,
    /// `value = raw × scale + offset` (e.g. °F to °C: scale 0.5556, offset -17.7778).
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// The category when the code maps do not give one (`activity`, `laboratory`).
    pub category: Option<String>,
    /// A time of its own (else the message's).
    pub time: Option<TimeTemplate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelTemplate {
    pub code: CodeTemplate,
    pub components: Vec<ValueTemplate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesTemplate {
    /// An array of numbers.
    pub path: String,
    pub code: CodeTemplate,
    pub unit: Option<String>,
    /// Milliseconds between samples: a number, or a JSONPath to one.
    pub interval_ms: toml::Value,
    /// Samples are grouped into one Observation per this many seconds (default: all of
    /// the payload's samples in one).
    pub period_seconds: Option<f64>,
    pub category: Option<String>,
}

/// The templates by name: the shipped ones, then those of a directory (which may replace
/// them).
#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_name: HashMap<String, Template>,
}

impl Templates {
    pub fn load(directory: Option<&Path>) -> Result<Templates, String> {
        let mut by_name = HashMap::new();
        for (name, text) in SHIPPED {
            by_name.insert(name.to_string(), parse(name, text)?);
        }
        if let Some(directory) = directory {
            let entries = std::fs::read_dir(directory).map_err(|e| {
                format!("cannot read the templates in {}: {e}", directory.display())
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                    continue;
                }
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                by_name.insert(name.clone(), parse(&name, &text)?);
            }
        }
        Ok(Templates { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}

/// Parses a template, checking every JSONPath in it.
pub fn parse(name: &str, text: &str) -> Result<Template, String> {
    let template: Template = toml::from_str(text).map_err(|e| format!("template {name}: {e}"))?;
    let mut paths: Vec<&str> = vec![&template.device.id, &template.time.path];
    paths.extend(template.each.as_deref());
    for value in template
        .values
        .iter()
        .chain(template.panels.iter().flat_map(|p| p.components.iter()))
    {
        paths.push(&value.path);
        paths.extend(value.time.as_ref().map(|t| t.path.as_str()));
    }
    paths.extend(template.series.iter().map(|s| s.path.as_str()));
    for path in paths.into_iter().filter(|p| p.starts_with('$')) {
        JsonPath::parse(path)
            .map_err(|e| format!("template {name}: {path:?} is not JSONPath: {e}"))?;
    }
    Ok(template)
}

/// Applies a template to a payload: one device message per `each` match.
pub fn apply(template: &Template, payload: &Json) -> Result<Vec<DeviceMessage>, Vec<Problem>> {
    let units: Vec<&Json> = match &template.each {
        Some(each) => query(payload, each),
        None => vec![payload],
    };
    if units.is_empty() {
        return Err(vec![problem(
            template.each.as_deref(),
            "the payload has nothing at this path",
        )]);
    }
    let mut messages = Vec::new();
    let mut problems = Vec::new();
    for unit in units {
        let mut reader = Reader {
            payload: unit,
            problems: Vec::new(),
        };
        let message = reader.message(template);
        if reader.problems.is_empty() {
            messages.push(message);
        } else {
            problems.extend(reader.problems);
        }
    }
    match problems.is_empty() {
        true => Ok(messages),
        false => Err(problems),
    }
}

fn problem(location: Option<&str>, text: impl Into<String>) -> Problem {
    Problem::new(207, location.map(str::to_string), text)
}

fn query<'a>(payload: &'a Json, path: &str) -> Vec<&'a Json> {
    JsonPath::parse(path)
        .map(|p| p.query(payload).all())
        .unwrap_or_default()
}

struct Reader<'a> {
    payload: &'a Json,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// The text at a path (or the literal), if any.
    fn text(&mut self, source: &str, required: bool) -> Option<String> {
        if !source.starts_with('$') {
            return Some(source.to_string());
        }
        let found = query(self.payload, source)
            .into_iter()
            .next()
            .and_then(|v| match v {
                Json::String(s) => Some(s.clone()),
                Json::Number(n) => Some(n.to_string()),
                Json::Bool(b) => Some(b.to_string()),
                _ => None,
            });
        if found.is_none() && required {
            self.problems.push(problem(
                Some(source),
                "the payload has no text or number here",
            ));
        }
        found
    }

    fn number(&mut self, source: &str) -> Option<f64> {
        let text = self.text(source, false)?;
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Some(n),
            _ => {
                self.problems
                    .push(problem(Some(source), format!("{text:?} is not a number")));
                None
            }
        }
    }

    fn time(&mut self, template: &TimeTemplate) -> Option<String> {
        let text = self.text(&template.path, true)?;
        let bad = |why: &str| problem(Some(&template.path), format!("{text:?} {why}"));
        let parsed = match template.format {
            TimeFormat::Rfc3339 => chrono::DateTime::parse_from_rfc3339(&text)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .map_err(|_| bad("is not an RFC 3339 time such as 2024-03-01T10:00:00Z")),
            TimeFormat::EpochSeconds | TimeFormat::EpochMillis => {
                let number = text.parse::<f64>().ok().filter(|n| n.is_finite());
                let micros = number.map(|n| match template.format {
                    TimeFormat::EpochSeconds => (n * 1e6) as i64,
                    _ => (n * 1e3) as i64,
                });
                micros
                    .and_then(chrono::DateTime::from_timestamp_micros)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                    .ok_or_else(|| bad("is not an epoch time"))
            }
        };
        match parsed {
            Ok(time) => Some(time),
            Err(problem) => {
                self.problems.push(problem);
                None
            }
        }
    }

    fn message(&mut self, template: &Template) -> DeviceMessage {
        let device = self.device(&template.device);
        let patient = template.patient.as_ref().and_then(|p| self.patient(p));
        let time = self.time(&template.time);
        let key = device.as_ref().map(|d| d.key.clone());
        let mut readings = Vec::new();
        for value in &template.values {
            if let Some(reading) = self.value(value, key.clone(), time.clone()) {
                readings.push(reading);
            }
        }
        for panel in &template.panels {
            let components: Vec<Reading> = panel
                .components
                .iter()
                .filter_map(|c| self.value(c, key.clone(), time.clone()))
                .collect();
            if components.is_empty() {
                continue;
            }
            readings.push(Reading {
                device: key.clone(),
                code: coding(&panel.code),
                path: None,
                value: Value::None,
                time: time.clone(),
                status: Status::Final,
                interpretation: Vec::new(),
                limits: None,
                test_data: false,
                components,
                origin: None,
                category: None,
            });
        }
        for series in &template.series {
            readings.extend(self.series(series, key.clone(), time.as_deref()));
        }
        DeviceMessage {
            patient,
            devices: device.into_iter().collect(),
            readings,
        }
    }

    fn device(&mut self, template: &DeviceTemplate) -> Option<DeviceInfo> {
        let raw = self.text(&template.id, true)?;
        let identifier = match template.kind {
            IdKind::Eui64 => DeviceId::eui64(&raw),
            IdKind::Mac => DeviceId::mac(&raw),
            IdKind::Serial => Some(DeviceId {
                system: template
                    .system
                    .clone()
                    .unwrap_or_else(|| "urn:fhirgate:device-serial".into()),
                value: raw.clone(),
            }),
        };
        let Some(identifier) = identifier else {
            self.problems.push(problem(
                Some(&template.id),
                format!("{raw:?} is not a {:?} device identifier", template.kind),
            ));
            return None;
        };
        Some(DeviceInfo {
            key: identifier.value.clone(),
            serial_number: (template.kind == IdKind::Serial).then(|| raw.clone()),
            manufacturer: template
                .manufacturer
                .as_deref()
                .and_then(|m| self.text(m, false)),
            model: template.model.as_deref().and_then(|m| self.text(m, false)),
            version: template
                .version
                .as_deref()
                .and_then(|m| self.text(m, false)),
            kind: template.kind_code.as_ref().map(coding),
            identifier,
            parent: None,
        })
    }

    fn patient(&mut self, template: &PatientTemplate) -> Option<PatientRef> {
        if let Some(id) = template.id.as_deref().and_then(|p| self.text(p, true)) {
            return Some(PatientRef::Id(id));
        }
        let value = template
            .identifier
            .as_deref()
            .and_then(|p| self.text(p, true))?;
        Some(PatientRef::Identifier {
            system: template.system.clone(),
            value,
        })
    }

    fn value(
        &mut self,
        template: &ValueTemplate,
        device: Option<String>,
        time: Option<String>,
    ) -> Option<Reading> {
        // A value the payload does not carry is simply not measured this time.
        query(self.payload, &template.path).first()?;
        let raw = self.number(&template.path)?;
        let value = raw * template.scale.unwrap_or(1.0) + template.offset.unwrap_or(0.0);
        let time = match &template.time {
            Some(own) => self.time(own),
            None => time,
        };
        let text = if template.scale.is_some() || template.offset.is_some() {
            // Calculated: a sensible number of decimals, not float noise.
            let rounded = (value * 1e4).round() / 1e4;
            rounded.to_string()
        } else {
            query(self.payload, &template.path)
                .first()
                .map(|v| v.to_string())
                .unwrap_or_else(|| value.to_string())
        };
        Some(Reading {
            device,
            code: coding(&template.code),
            path: None,
            value: Value::Quantity {
                value: text,
                unit: template.unit.as_ref().map(|ucum| Unit {
                    source: None,
                    ucum: Some(ucum.clone()),
                    display: template.unit_display.clone().or(Some(ucum.clone())),
                }),
            },
            time,
            status: Status::Final,
            interpretation: Vec::new(),
            limits: None,
            test_data: false,
            components: Vec::new(),
            origin: Some(template.path.clone()),
            category: template.category.clone(),
        })
    }

    fn series(
        &mut self,
        template: &SeriesTemplate,
        device: Option<String>,
        start: Option<&str>,
    ) -> Vec<Reading> {
        let Some(Json::Array(samples)) = query(self.payload, &template.path).first().copied()
        else {
            return Vec::new();
        };
        let mut data = Vec::with_capacity(samples.len());
        for sample in samples {
            match sample.as_f64() {
                Some(n) if n.is_finite() => data.push(sample.to_string()),
                _ => {
                    self.problems.push(problem(
                        Some(&template.path),
                        format!("sample {sample} is not a number"),
                    ));
                    return Vec::new();
                }
            }
        }
        let interval = match &template.interval_ms {
            toml::Value::Float(f) => Some(*f),
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::String(path) => self.number(path),
            _ => None,
        };
        let Some(interval) = interval.filter(|i| *i > 0.0) else {
            self.problems.push(problem(
                Some(&template.path),
                "the series needs a positive interval_ms",
            ));
            return Vec::new();
        };
        let Some(start) = start.and_then(crate::store::time::parse_fhir_instant) else {
            return Vec::new();
        };
        let per_group = template
            .period_seconds
            .map(|p| ((p * 1000.0 / interval).floor() as usize).max(1))
            .unwrap_or(data.len().max(1));
        data.chunks(per_group)
            .enumerate()
            .map(|(index, chunk)| {
                let offset_micros = (index * per_group) as f64 * interval * 1000.0;
                let time = crate::store::time::instant(start + offset_micros as i64);
                Reading {
                    device: device.clone(),
                    code: coding(&template.code),
                    path: None,
                    value: Value::Samples {
                        period_ms: interval,
                        factor: None,
                        unit: template.unit.as_ref().map(|ucum| Unit {
                            source: None,
                            ucum: Some(ucum.clone()),
                            display: Some(ucum.clone()),
                        }),
                        data: chunk.to_vec(),
                    },
                    time: Some(time),
                    status: Status::Final,
                    interpretation: Vec::new(),
                    limits: None,
                    test_data: false,
                    components: Vec::new(),
                    origin: Some(template.path.clone()),
                    category: template.category.clone(),
                }
            })
            .collect()
    }
}

fn coding(template: &CodeTemplate) -> Coding {
    Coding {
        system: template.system.clone(),
        code: template.code.clone(),
        display: template.display.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shipped_templates_load_and_read_their_payloads() {
        let templates = Templates::load(None).unwrap();
        assert_eq!(templates.names(), vec!["bp-cuff", "smartwatch"]);
        let watch = templates.get("smartwatch").unwrap();
        let messages = apply(
            watch,
            &json!({
                "deviceId": "SW-1234", "patientId": "MRN-1", "timestamp": 1709287200000_i64,
                "heartRate": 72, "spo2": 97, "steps": 1200, "temperatureF": 98.6,
                "ppg": {"intervalMs": 40, "samples": [1, 2, 3, 4, 5]}
            }),
        )
        .unwrap();
        assert_eq!(messages.len(), 1);
        let message = &messages[0];
        assert_eq!(message.devices[0].identifier.value, "SW-1234");
        let by_code = |code: &str| {
            message
                .readings
                .iter()
                .find(|r| r.code.code == code)
                .unwrap_or_else(|| panic!("{code}"))
        };
        assert_eq!(
            by_code("147842").time.as_deref(),
            Some("2024-03-01T10:00:00Z")
        );
        match &by_code("150364").value {
            Value::Quantity { value, unit } => {
                assert_eq!(value, "37");
                assert_eq!(unit.as_ref().unwrap().ucum.as_deref(), Some("Cel"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(by_code("55423-8").category.as_deref(), Some("activity"));
        let problems = apply(watch, &json!({"deviceId": "SW-1", "timestamp": "x"})).unwrap_err();
        let locations: Vec<Option<&str>> = problems.iter().map(|p| p.location.as_deref()).collect();
        assert!(locations.contains(&Some("$.timestamp")), "{problems:?}");
        assert!(locations.contains(&Some("$.patientId")), "{problems:?}");
    }

    #[test]
    fn broken_templates_are_refused_with_the_reason() {
        assert!(parse("x", "description = 1")
            .unwrap_err()
            .contains("template x"));
        let bad_path = r#"
            [device]
            id = "$..[?"
            kind = "serial"
            [time]
            path = "$.t"
        "#;
        assert!(parse("x", bad_path).unwrap_err().contains("not JSONPath"));
    }
}
