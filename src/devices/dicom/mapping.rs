//! A DICOM instance as FHIR: the modality as a `Device`, the `Patient`, the
//! `ImagingStudy` the instance belongs to (merged into the study's current version as
//! more instances of it arrive) and the dose `Observation`s of CT dose reports and CT
//! images.
//!
//! Everything is plain JSON, validated and stored by the repository like any other
//! write ([`super::store`]). Identifiers are deterministic: the same instance sent twice
//! finds the same Device, Patient, study entry and Observations again.

use chrono::FixedOffset;
use serde_json::{json, Map, Value as Json};

use super::instance::{DoseMeasure, Instance, PersonName, When};
use crate::devices::reading::{DeviceId, PatientRef};

/// DICOM's own code system (modalities, dose concepts).
pub const DCM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// Study, series, instance UIDs as FHIR identifiers (`urn:oid:…` values).
pub const DICOM_UID_SYSTEM: &str = "urn:dicom:uid";
/// Imaging equipment: manufacturer, model and serial number (or station name).
pub const DEVICE_ID_SYSTEM: &str = "http://fhirgate.dev/fhir/identifier/dicom-device";
/// Dose Observations: the SOP instance, the concept and the acquisition.
pub const DOSE_ID_SYSTEM: &str = "http://fhirgate.dev/fhir/identifier/dicom-dose";
const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";
const SNOMED_SYSTEM: &str = "http://snomed.info/sct";
const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const IDENTIFIER_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// The resources an instance refers to, once found or created: logical ids (or, for a
/// transaction Bundle, references already).
#[derive(Debug, Clone, Copy)]
pub struct Refs<'a> {
    pub patient: &'a str,
    pub device: Option<&'a str>,
    pub study: Option<&'a str>,
}

/// `Type/id` for a logical id; a reference (`urn:uuid:…`, `Type?criteria`, `Type/id`) as
/// it is.
fn reference(resource_type: &str, id: &str) -> Json {
    let reference = if id.contains(['/', ':', '?']) {
        id.to_string()
    } else {
        format!("{resource_type}/{id}")
    };
    json!({ "reference": reference })
}

/// The study's identifier value: `urn:oid:<StudyInstanceUID>`.
pub fn study_identifier(instance: &Instance) -> String {
    format!("urn:oid:{}", instance.study_instance_uid)
}

/// A DICOM date and time as a FHIR dateTime; times without an offset are read in
/// `zone`. `None` for what is not a valid date.
pub fn fhir_time(when: &When, zone: FixedOffset) -> Option<String> {
    let mut text = when.date.clone();
    if let Some(time) = &when.time {
        text.push_str(time);
    }
    if let Some(offset) = &when.offset {
        text.push_str(offset);
    }
    crate::devices::hl7time::parse(&text, zone)
        .ok()
        .map(|t| t.text)
}

/// The patient's identifier: Patient ID with its issuer as the system when the issuer
/// is an OID or a URI (as PID-3 is read for HL7 messages); a local issuer name is no
/// system, so the value alone identifies the patient.
pub fn patient_identifier(instance: &Instance) -> Option<PatientRef> {
    let value = instance.patient.id.clone()?;
    let universal = instance
        .patient
        .universal_issuer
        .as_ref()
        .and_then(|(id, kind)| match kind.as_str() {
            "ISO" if is_oid(id) => Some(format!("urn:oid:{id}")),
            "URI" | "URL" if id.contains(':') => Some(id.clone()),
            _ => None,
        });
    let system = universal.or_else(|| {
        let issuer = instance.patient.issuer.as_deref()?;
        if is_oid(issuer) {
            Some(format!("urn:oid:{issuer}"))
        } else if ["http://", "https://", "urn:"]
            .iter()
            .any(|p| issuer.starts_with(p))
        {
            Some(issuer.to_string())
        } else {
            None
        }
    });
    Some(PatientRef::Identifier { system, value })
}

fn is_oid(text: &str) -> bool {
    text.contains('.')
        && text
            .split('.')
            .all(|arc| !arc.is_empty() && arc.chars().all(|c| c.is_ascii_digit()))
}

/// The Patient to create when no Patient has the instance's identifier.
pub fn patient(instance: &Instance) -> Option<Json> {
    let PatientRef::Identifier { system, value } = patient_identifier(instance)? else {
        return None;
    };
    let mut identifier = Map::new();
    if let Some(system) = system {
        identifier.insert("system".into(), json!(system));
    }
    identifier.insert("value".into(), json!(value));
    if let Some(issuer) = &instance.patient.issuer {
        identifier.insert("assigner".into(), json!({ "display": issuer }));
    }
    let mut patient = Map::new();
    patient.insert("resourceType".into(), json!("Patient"));
    patient.insert("identifier".into(), json!([identifier]));
    patient.insert("active".into(), json!(true));
    if let Some(name) = &instance.patient.name {
        patient.insert("name".into(), json!([human_name(name)]));
    }
    let gender = match instance.patient.sex.as_deref() {
        Some("M") => Some("male"),
        Some("F") => Some("female"),
        Some("O") => Some("other"),
        _ => None,
    };
    if let Some(gender) = gender {
        patient.insert("gender".into(), json!(gender));
    }
    if let Some(date) = instance.patient.birth_date.as_deref().and_then(fhir_date) {
        patient.insert("birthDate".into(), json!(date));
    }
    Some(Json::Object(patient))
}

fn human_name(name: &PersonName) -> Json {
    let mut json = Map::new();
    json.insert("text".into(), json!(name.display()));
    if let Some(family) = &name.family {
        json.insert("family".into(), json!(family));
    }
    if !name.given.is_empty() {
        json.insert("given".into(), json!(name.given));
    }
    if let Some(prefix) = &name.prefix {
        json.insert("prefix".into(), json!([prefix]));
    }
    if let Some(suffix) = &name.suffix {
        json.insert("suffix".into(), json!([suffix]));
    }
    Json::Object(json)
}

/// `YYYYMMDD` as a FHIR date.
fn fhir_date(text: &str) -> Option<String> {
    chrono::NaiveDate::parse_from_str(text.trim(), "%Y%m%d")
        .ok()
        .map(|d| d.format("%Y-%m-%d").to_string())
}

/// The equipment's identifier: manufacturer, model and serial number (the station name
/// when the serial number is missing); `None` when the instance names neither.
pub fn device_identifier(instance: &Instance) -> Option<DeviceId> {
    let equipment = &instance.equipment;
    let unit = match (&equipment.serial_number, &equipment.station_name) {
        (Some(serial), _) => serial.clone(),
        (None, Some(station)) => format!("station:{station}"),
        (None, None) => return None,
    };
    let value = [
        equipment
            .manufacturer
            .as_deref()
            .unwrap_or("unknown manufacturer"),
        equipment.model.as_deref().unwrap_or("unknown model"),
        &unit,
    ]
    .join("/");
    Some(DeviceId {
        system: DEVICE_ID_SYSTEM.into(),
        value,
    })
}

/// The display of a modality code (DICOM CID 29 and the modalities seen most).
fn modality_display(code: &str) -> Option<&'static str> {
    Some(match code {
        "CT" => "Computed Tomography",
        "MR" => "Magnetic Resonance",
        "CR" => "Computed Radiography",
        "DX" => "Digital Radiography",
        "MG" => "Mammography",
        "US" => "Ultrasound",
        "NM" => "Nuclear Medicine",
        "PT" => "Positron emission tomography",
        "XA" => "X-Ray Angiography",
        "RF" => "Radio Fluoroscopy",
        "IO" => "Intra-oral Radiography",
        "PX" => "Panoramic X-Ray",
        "OT" => "Other",
        "SR" => "SR Document",
        "KO" => "Key Object Selection",
        "PR" => "Presentation State",
        "SEG" => "Segmentation",
        "RTDOSE" => "Radiotherapy Dose",
        "RTPLAN" => "Radiotherapy Plan",
        "RTSTRUCT" => "Radiotherapy Structure Set",
        "RTIMAGE" => "Radiotherapy Image",
        "ECG" => "Electrocardiography",
        "XC" => "External-camera Photography",
        "OP" => "Ophthalmic Photography",
        "OPT" => "Ophthalmic Tomography",
        "SM" => "Slide Microscopy",
        "DOC" => "Document",
        _ => return None,
    })
}

fn modality_coding(code: &str) -> Json {
    let mut coding = json!({ "system": DCM_SYSTEM, "code": code });
    if let Some(display) = modality_display(code) {
        coding["display"] = json!(display);
    }
    coding
}

/// The modality as a Device: its identifier, make, model, serial number, station name,
/// software versions and type.
pub fn device(instance: &Instance) -> Option<Json> {
    let identifier = device_identifier(instance)?;
    let equipment = &instance.equipment;
    let mut device = Map::new();
    device.insert("resourceType".into(), json!("Device"));
    device.insert(
        "identifier".into(),
        json!([{ "system": identifier.system, "value": identifier.value }]),
    );
    device.insert("status".into(), json!("active"));
    if let Some(manufacturer) = &equipment.manufacturer {
        device.insert("manufacturer".into(), json!(manufacturer));
    }
    if let Some(serial) = &equipment.serial_number {
        device.insert("serialNumber".into(), json!(serial));
    }
    let mut names = Vec::new();
    if let Some(station) = &equipment.station_name {
        names.push(json!({ "name": station, "type": "user-friendly-name" }));
    }
    if let Some(model) = &equipment.model {
        names.push(json!({ "name": model, "type": "model-name" }));
    }
    if !names.is_empty() {
        device.insert("deviceName".into(), Json::Array(names));
    }
    if let Some(model) = &equipment.model {
        device.insert("modelNumber".into(), json!(model));
    }
    // An SR or a presentation state is made by the modality, but says nothing of its
    // type; only image modalities type the device.
    if let Some(modality) = instance
        .modality
        .as_deref()
        .filter(|m| !matches!(*m, "SR" | "KO" | "PR" | "DOC" | "OT"))
    {
        let mut kind = json!({ "coding": [modality_coding(modality)] });
        if let Some(display) = modality_display(modality) {
            kind["text"] = json!(format!("{display} modality"));
        }
        device.insert("type".into(), kind);
    }
    if !equipment.software_versions.is_empty() {
        let versions: Vec<Json> = equipment
            .software_versions
            .iter()
            .map(|v| json!({ "type": { "text": "software" }, "value": v }))
            .collect();
        device.insert("version".into(), Json::Array(versions));
    }
    if let Some(institution) = &equipment.institution {
        device.insert("owner".into(), json!({ "display": institution }));
    }
    Some(Json::Object(device))
}

/// Body Part Examined terms with their SNOMED CT concepts (DICOM CID 4031).
fn body_part_snomed(term: &str) -> Option<(&'static str, &'static str)> {
    Some(match term {
        "HEAD" => ("69536005", "Head structure"),
        "BRAIN" => ("12738006", "Brain structure"),
        "NECK" => ("45048000", "Neck structure"),
        "CHEST" => ("51185008", "Thoracic structure"),
        "ABDOMEN" => ("113345001", "Abdominal structure"),
        "PELVIS" => ("12921003", "Pelvic structure"),
        "HEART" => ("80891009", "Heart structure"),
        "BREAST" => ("76752008", "Breast structure"),
        "KNEE" => ("72696002", "Knee region structure"),
        _ => return None,
    })
}

/// The series' body site: the Anatomic Region Sequence when it holds a SNOMED CT code,
/// else the Body Part Examined term (coded when it is a common one).
fn body_site(instance: &Instance) -> Option<Json> {
    if let Some(region) = instance
        .anatomic_region
        .as_ref()
        .filter(|c| matches!(c.scheme.as_str(), "SCT" | "SRT"))
    {
        let mut coding = json!({ "system": SNOMED_SYSTEM, "code": region.value });
        if let Some(meaning) = &region.meaning {
            coding["display"] = json!(meaning);
        }
        return Some(coding);
    }
    let term = instance.body_part.as_deref()?;
    Some(match body_part_snomed(term) {
        Some((code, display)) => {
            json!({ "system": SNOMED_SYSTEM, "code": code, "display": display })
        }
        None => json!({ "display": term }),
    })
}

/// An unsignedInt: DICOM IS values can be negative or huge, FHIR's cannot.
fn unsigned(number: Option<i64>) -> Option<Json> {
    number
        .filter(|n| (0..=i64::from(i32::MAX)).contains(n))
        .map(Json::from)
}

fn series_of(instance: &Instance, refs: &Refs, zone: FixedOffset) -> Json {
    let mut series = Map::new();
    series.insert("uid".into(), json!(instance.series_instance_uid));
    if let Some(number) = unsigned(instance.series_number) {
        series.insert("number".into(), number);
    }
    series.insert(
        "modality".into(),
        modality_coding(instance.modality.as_deref().unwrap_or("OT")),
    );
    if let Some(description) = &instance.series_description {
        series.insert("description".into(), json!(description));
    }
    series.insert("numberOfInstances".into(), json!(0));
    if let Some(site) = body_site(instance) {
        series.insert("bodySite".into(), site);
    }
    if let Some(started) = instance
        .series_time
        .as_ref()
        .and_then(|w| fhir_time(w, zone))
    {
        series.insert("started".into(), json!(started));
    }
    if let Some(device) = refs.device {
        series.insert(
            "performer".into(),
            json!([{ "actor": reference("Device", device) }]),
        );
    }
    series.insert("instance".into(), json!([]));
    Json::Object(series)
}

fn instance_entry(instance: &Instance) -> Json {
    let mut entry = Map::new();
    entry.insert("uid".into(), json!(instance.sop_instance_uid));
    entry.insert(
        "sopClass".into(),
        json!({ "system": "urn:ietf:rfc:3986", "code": format!("urn:oid:{}", instance.sop_class_uid) }),
    );
    if let Some(number) = unsigned(instance.instance_number) {
        entry.insert("number".into(), number);
    }
    Json::Object(entry)
}

/// Inserts `value` under `key` unless the object has it already.
fn fill(object: &mut Map<String, Json>, key: &str, value: Option<Json>) {
    if let Some(value) = value {
        if !object.contains_key(key) {
            object.insert(key.into(), value);
        }
    }
}

/// The ImagingStudy with the instance in it: `existing` (the study's current version)
/// with the instance's series and instance added when absent, missing study details
/// filled in and the counts and modality list recomputed; a new study when `existing`
/// is `None`. What is there already is kept, so the same instance merged twice changes
/// nothing, and instances arriving in any order give the same study.
pub fn merge(existing: Option<&Json>, instance: &Instance, refs: &Refs, zone: FixedOffset) -> Json {
    let mut study = match existing {
        Some(Json::Object(existing)) => existing.clone(),
        _ => {
            let mut study = Map::new();
            study.insert("resourceType".into(), json!("ImagingStudy"));
            study
        }
    };
    // Identifiers: the Study Instance UID, then the accession number.
    let mut identifiers = match study.remove("identifier") {
        Some(Json::Array(list)) => list,
        _ => Vec::new(),
    };
    let uid = study_identifier(instance);
    if !identifiers
        .iter()
        .any(|i| i["system"] == DICOM_UID_SYSTEM && i["value"] == uid.as_str())
    {
        identifiers.push(json!({ "system": DICOM_UID_SYSTEM, "value": uid }));
    }
    if let Some(accession) = &instance.accession_number {
        let is_accession = |i: &Json| {
            i["type"]["coding"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["code"] == "ACSN"))
        };
        if !identifiers.iter().any(is_accession) {
            identifiers.push(json!({
                "use": "usual",
                "type": { "coding": [{ "system": IDENTIFIER_TYPE_SYSTEM, "code": "ACSN", "display": "Accession ID" }] },
                "value": accession,
            }));
        }
    }
    // Re-inserted at its place for a new study (after resourceType), at the end of an
    // existing one (where it was is not kept by remove, and order does not matter).
    study.insert("identifier".into(), Json::Array(identifiers));
    fill(&mut study, "status", Some(json!("available")));
    fill(&mut study, "modality", Some(json!([])));
    fill(
        &mut study,
        "subject",
        Some(reference("Patient", refs.patient)),
    );
    fill(
        &mut study,
        "started",
        instance
            .study_time
            .as_ref()
            .and_then(|w| fhir_time(w, zone))
            .map(Json::from),
    );
    fill(
        &mut study,
        "referrer",
        instance
            .referring_physician
            .as_ref()
            .map(|n| json!({ "display": n.display() })),
    );
    fill(&mut study, "numberOfSeries", Some(json!(0)));
    fill(&mut study, "numberOfInstances", Some(json!(0)));
    fill(
        &mut study,
        "description",
        instance.study_description.clone().map(Json::from),
    );
    // The series and the instance.
    let mut series_list = match study.remove("series") {
        Some(Json::Array(list)) => list,
        _ => Vec::new(),
    };
    let at = match series_list
        .iter()
        .position(|s| s["uid"] == instance.series_instance_uid.as_str())
    {
        Some(at) => at,
        None => {
            series_list.push(series_of(instance, refs, zone));
            series_list.len() - 1
        }
    };
    if let Some(series) = series_list[at].as_object_mut() {
        // Details an earlier instance of the series did not carry.
        if let Json::Object(fresh) = series_of(instance, refs, zone) {
            for (key, value) in fresh {
                if key != "instance" {
                    fill(series, &key, Some(value));
                }
            }
        }
        let instances = series.entry("instance").or_insert_with(|| json!([]));
        if let Some(list) = instances.as_array_mut() {
            if !list
                .iter()
                .any(|i| i["uid"] == instance.sop_instance_uid.as_str())
            {
                list.push(instance_entry(instance));
            }
            list.sort_by_key(order);
        }
    }
    series_list.sort_by_key(order);
    // Counts and modalities from what the study now holds.
    let mut total = 0;
    let mut modalities: Vec<Json> = Vec::new();
    for series in &mut series_list {
        let count = series["instance"].as_array().map_or(0, Vec::len);
        total += count;
        series["numberOfInstances"] = json!(count);
        let modality = &series["modality"];
        if !modality.is_null() && !modalities.iter().any(|m| m["code"] == modality["code"]) {
            modalities.push(modality.clone());
        }
    }
    study.insert("modality".into(), Json::Array(modalities));
    study.insert("numberOfSeries".into(), json!(series_list.len()));
    study.insert("numberOfInstances".into(), json!(total));
    study.insert("series".into(), Json::Array(series_list));
    Json::Object(study)
}

/// Series and instances sort by number, then UID (those without a number last).
fn order(entry: &Json) -> (u64, String) {
    (
        entry["number"].as_u64().unwrap_or(u64::MAX),
        entry["uid"].as_str().unwrap_or_default().to_string(),
    )
}

/// The deterministic identifier of a dose value: the SOP instance, the concept and (in a
/// report) the acquisition.
pub fn dose_identifier(instance: &Instance, measure: &DoseMeasure) -> String {
    match measure.acquisition {
        Some(n) => format!(
            "{}-{}-{n}",
            instance.sop_instance_uid, measure.concept.value
        ),
        None => format!("{}-{}", instance.sop_instance_uid, measure.concept.value),
    }
}

/// The dose Observations of an instance, each with its identifier (in
/// [`DOSE_ID_SYSTEM`]).
pub fn dose_observations(
    instance: &Instance,
    refs: &Refs,
    zone: FixedOffset,
) -> Vec<(String, Json)> {
    let effective = instance
        .acquired
        .as_ref()
        .or(instance.series_time.as_ref())
        .or(instance.study_time.as_ref())
        .and_then(|w| fhir_time(w, zone));
    let from_report = super::instance::DOSE_SR_CLASSES.contains(&instance.sop_class_uid.as_str());
    instance
        .dose
        .iter()
        .map(|measure| {
            let identifier = dose_identifier(instance, measure);
            let mut observation = Map::new();
            observation.insert("resourceType".into(), json!("Observation"));
            observation.insert(
                "identifier".into(),
                json!([{ "system": DOSE_ID_SYSTEM, "value": identifier }]),
            );
            if let Some(study) = refs.study {
                observation.insert("partOf".into(), json!([reference("ImagingStudy", study)]));
            }
            observation.insert("status".into(), json!("final"));
            observation.insert(
                "category".into(),
                json!([{ "coding": [{ "system": CATEGORY_SYSTEM, "code": "imaging", "display": "Imaging" }] }]),
            );
            let mut coding = json!({ "system": DCM_SYSTEM, "code": measure.concept.value });
            if let Some(meaning) = &measure.concept.meaning {
                coding["display"] = json!(meaning);
            }
            let mut code = json!({ "coding": [coding] });
            if let Some(meaning) = &measure.concept.meaning {
                code["text"] = json!(meaning);
            }
            observation.insert("code".into(), code);
            observation.insert("subject".into(), reference("Patient", refs.patient));
            if let Some(effective) = &effective {
                observation.insert("effectiveDateTime".into(), json!(effective));
            }
            // The decimal keeps the source's text (arbitrary precision numbers).
            let value: Json = serde_json::from_str(&measure.value).unwrap_or(Json::Null);
            observation.insert(
                "valueQuantity".into(),
                json!({ "value": value, "unit": measure.unit, "system": UCUM_SYSTEM, "code": measure.unit }),
            );
            let source = if from_report {
                match (measure.acquisition, &measure.protocol) {
                    (Some(n), Some(protocol)) => {
                        format!("CT acquisition {n} ({protocol}) of the radiation dose report")
                    }
                    (Some(n), None) => format!("CT acquisition {n} of the radiation dose report"),
                    (None, _) => "accumulated dose of the radiation dose report".to_string(),
                }
            } else {
                "CTDIvol (0018,9345) of the CT image".to_string()
            };
            observation.insert(
                "note".into(),
                json!([{ "text": format!("{source}, SOP instance {}", instance.sop_instance_uid) }]),
            );
            if let Some(device) = refs.device {
                observation.insert("device".into(), reference("Device", device));
            }
            if let Some(study) = refs.study {
                observation.insert(
                    "derivedFrom".into(),
                    json!([reference("ImagingStudy", study)]),
                );
            }
            (identifier, Json::Object(observation))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::instance::samples::*;
    use super::super::instance::{read_part10, Instance};
    use super::*;
    use dicom_dictionary_std::uids;

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    fn ct(instance: &str, series: &str, number: i32) -> Instance {
        read_part10(&part10(
            ct_image(instance, series, number),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ))
        .unwrap()
    }

    const REFS: Refs = Refs {
        patient: "p1",
        device: Some("d1"),
        study: Some("s1"),
    };

    fn check(resource: &Json) {
        let resource_type = resource["resourceType"].as_str().unwrap().to_string();
        crate::fhir::resource::ValidResource::parse(resource.clone(), Some(&resource_type))
            .unwrap_or_else(|e| panic!("invalid {resource_type}: {e}\n{resource:#}"));
    }

    #[test]
    fn a_first_instance_makes_the_study() {
        let study = merge(None, &ct("1.2.3.1", SERIES, 1), &REFS, utc());
        check(&study);
        assert_eq!(study["identifier"][0]["system"], DICOM_UID_SYSTEM);
        assert_eq!(study["identifier"][0]["value"], format!("urn:oid:{STUDY}"));
        assert_eq!(study["identifier"][1]["type"]["coding"][0]["code"], "ACSN");
        assert_eq!(study["identifier"][1]["value"], "ACC-1001");
        assert_eq!(study["status"], "available");
        assert_eq!(study["subject"]["reference"], "Patient/p1");
        assert_eq!(study["started"], "2024-03-01T10:15:00+01:00");
        assert_eq!(study["referrer"]["display"], "Dr. Gregory House");
        assert_eq!(
            study["modality"],
            json!([{"system": DCM_SYSTEM, "code": "CT", "display": "Computed Tomography"}])
        );
        assert_eq!(study["numberOfSeries"], 1);
        assert_eq!(study["numberOfInstances"], 1);
        let series = &study["series"][0];
        assert_eq!(series["uid"], SERIES);
        assert_eq!(series["number"], 2);
        assert_eq!(series["bodySite"]["code"], "51185008");
        assert_eq!(series["performer"][0]["actor"]["reference"], "Device/d1");
        assert_eq!(series["instance"][0]["uid"], "1.2.3.1");
        assert_eq!(
            series["instance"][0]["sopClass"],
            json!({"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"})
        );
        assert_eq!(series["instance"][0]["number"], 1);
    }

    #[test]
    fn merging_adds_instances_and_series_once() {
        let first = merge(None, &ct("1.2.3.2", SERIES, 2), &REFS, utc());
        let second = merge(Some(&first), &ct("1.2.3.1", SERIES, 1), &REFS, utc());
        assert_eq!(second["numberOfInstances"], 2);
        assert_eq!(second["series"][0]["numberOfInstances"], 2);
        // Ordered by number whatever the arrival order.
        assert_eq!(second["series"][0]["instance"][0]["uid"], "1.2.3.1");
        let again = merge(Some(&second), &ct("1.2.3.1", SERIES, 1), &REFS, utc());
        assert_eq!(again, second, "the same instance twice changes nothing");
        let report = read_part10(&part10(
            dose_report("1.2.3.9", "1.2.3.99"),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ))
        .unwrap();
        let third = merge(Some(&again), &report, &REFS, utc());
        check(&third);
        assert_eq!(third["numberOfSeries"], 2);
        assert_eq!(third["numberOfInstances"], 3);
        let codes: Vec<&str> = third["modality"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, vec!["CT", "SR"]);
        // Any arrival order gives the same study.
        let other_way = merge(
            Some(&merge(
                Some(&merge(None, &report, &REFS, utc())),
                &ct("1.2.3.1", SERIES, 1),
                &REFS,
                utc(),
            )),
            &ct("1.2.3.2", SERIES, 2),
            &REFS,
            utc(),
        );
        assert_eq!(other_way["series"], third["series"]);
        assert_eq!(other_way["numberOfInstances"], 3);
    }

    #[test]
    fn the_modality_becomes_a_device() {
        let instance = ct("1.2.3.1", SERIES, 1);
        let device = device(&instance).unwrap();
        check(&device);
        assert_eq!(device["identifier"][0]["system"], DEVICE_ID_SYSTEM);
        assert_eq!(
            device["identifier"][0]["value"],
            "Acme Imaging/Scanner 64/SN-0042"
        );
        assert_eq!(device["manufacturer"], "Acme Imaging");
        assert_eq!(device["serialNumber"], "SN-0042");
        assert_eq!(device["modelNumber"], "Scanner 64");
        assert_eq!(
            device["deviceName"][0],
            json!({"name": "CT-ROOM-1", "type": "user-friendly-name"})
        );
        assert_eq!(device["type"]["coding"][0]["code"], "CT");
        assert_eq!(device["version"][0]["value"], "VA40");
        assert_eq!(device["version"][1]["value"], "SP2");
        let mut anonymous = instance.clone();
        anonymous.equipment.serial_number = None;
        anonymous.equipment.station_name = None;
        assert!(device_identifier(&anonymous).is_none());
    }

    #[test]
    fn the_patient_is_identified_by_id_and_issuer() {
        let instance = ct("1.2.3.1", SERIES, 1);
        assert_eq!(
            patient_identifier(&instance),
            Some(PatientRef::Identifier {
                system: Some("urn:oid:1.2.3.4.5".into()),
                value: "MRN-42".into()
            })
        );
        let patient = patient(&instance).unwrap();
        check(&patient);
        assert_eq!(patient["name"][0]["family"], "Doe");
        assert_eq!(patient["name"][0]["given"], json!(["Jane", "Q"]));
        assert_eq!(patient["gender"], "female");
        assert_eq!(patient["birthDate"], "1970-02-15");
        let mut local = instance.clone();
        local.patient.issuer = Some("HOSPITAL A".into());
        assert_eq!(
            patient_identifier(&local),
            Some(PatientRef::Identifier {
                system: None,
                value: "MRN-42".into()
            })
        );
    }

    #[test]
    fn dose_values_become_observations() {
        let image = ct("1.2.3.1", SERIES, 1);
        let from_image = dose_observations(&image, &REFS, utc());
        assert_eq!(from_image.len(), 1);
        let (identifier, observation) = &from_image[0];
        check(observation);
        assert_eq!(identifier, "1.2.3.1-113830");
        assert_eq!(observation["code"]["coding"][0]["system"], DCM_SYSTEM);
        assert_eq!(observation["valueQuantity"]["value"], json!(12.5));
        assert_eq!(observation["valueQuantity"]["code"], "mGy");
        assert_eq!(observation["category"][0]["coding"][0]["code"], "imaging");
        assert_eq!(observation["partOf"][0]["reference"], "ImagingStudy/s1");
        assert_eq!(
            observation["effectiveDateTime"],
            "2024-03-01T10:17:33.5+01:00"
        );
        let report = read_part10(&part10(
            dose_report("1.2.3.9", "1.2.3.99"),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ))
        .unwrap();
        let from_report = dose_observations(&report, &REFS, utc());
        let summary: Vec<(String, String, String)> = from_report
            .iter()
            .map(|(id, o)| {
                check(o);
                (
                    id.clone(),
                    o["valueQuantity"]["value"].to_string(),
                    o["valueQuantity"]["unit"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "1.2.3.9-113813".to_string(),
                    "612.40".to_string(),
                    "mGy.cm".to_string()
                ),
                (
                    "1.2.3.9-113830-1".to_string(),
                    "12.50".to_string(),
                    "mGy".to_string()
                ),
                (
                    "1.2.3.9-113838-1".to_string(),
                    "450.10".to_string(),
                    "mGy.cm".to_string()
                ),
                (
                    "1.2.3.9-113830-2".to_string(),
                    "8.2".to_string(),
                    "mGy".to_string()
                ),
                (
                    "1.2.3.9-113838-2".to_string(),
                    "162.30".to_string(),
                    "mGy.cm".to_string()
                ),
            ]
        );
    }

    #[test]
    fn times_without_an_offset_are_read_in_the_configured_zone() {
        let when = When {
            date: "20240301".into(),
            time: Some("0930".into()),
            offset: None,
        };
        let zone = FixedOffset::east_opt(2 * 3600).unwrap();
        assert_eq!(
            fhir_time(&when, zone).as_deref(),
            Some("2024-03-01T09:30:00+02:00")
        );
        let date_only = When {
            date: "20240301".into(),
            time: None,
            offset: None,
        };
        assert_eq!(fhir_time(&date_only, zone).as_deref(), Some("2024-03-01"));
        let bad = When {
            date: "2024".into(),
            time: Some("xx".into()),
            offset: None,
        };
        assert_eq!(fhir_time(&bad, zone), None);
    }
}
