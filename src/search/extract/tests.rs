//! Extraction tests on realistic resources, asserting the exact entries per parameter.

use super::*;
use serde_json::json;

fn entries(resource: &Value, code: &str) -> Vec<IndexEntry> {
    extract(resource)
        .into_iter()
        .filter(|e| e.param() == code)
        .collect()
}

fn p(code: &str) -> Arc<str> {
    Arc::from(code)
}

fn o(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn tok(param: &str, system: Option<&str>, code: Option<&str>, display: Option<&str>) -> IndexEntry {
    IndexEntry::Token {
        param: p(param),
        system: system.map(String::from),
        code: code.map(String::from),
        display: display.map(String::from),
        type_system: None,
        type_code: None,
    }
}

fn reference(
    param: &str,
    ty: Option<&str>,
    id: Option<&str>,
    ver: Option<&str>,
    url: &str,
) -> IndexEntry {
    IndexEntry::Reference {
        param: p(param),
        target_type: ty.map(String::from),
        target_id: id.map(String::from),
        version: ver.map(String::from),
        url: url.to_string(),
    }
}

fn string(param: &str, normalized: &str, exact: &str) -> IndexEntry {
    IndexEntry::String {
        param: p(param),
        normalized: normalized.to_string(),
        exact: exact.to_string(),
    }
}

fn date(param: &str, low: i64, high: i64) -> IndexEntry {
    IndexEntry::Date {
        param: p(param),
        low,
        high,
    }
}

fn qty(param: &str, value: f64, low: f64, high: f64, code: &str, unit: &str) -> IndexEntry {
    IndexEntry::Quantity {
        param: p(param),
        value: Some(value),
        low,
        high,
        system: o("http://unitsofmeasure.org"),
        code: o(code),
        unit: o(unit),
    }
}

const SEC: i64 = 1_000_000;

fn blood_pressure() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "bp-1",
        "meta": {
            "lastUpdated": "2024-03-05T10:15:30.123+01:00",
            "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"],
            "tag": [{"system": "http://example.org/tags", "code": "device-upload"}]
        },
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:6f1c3b0e-1d5b-4c8f-9a57-2b9c1e0f4d11"}],
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}],
            "text": "Blood pressure"
        },
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2024-03-05T09:30:00Z",
        "performer": [{"reference": "urn:uuid:0b7a9e50-7c55-4b5e-9f3c-3c1d8f7e2a10"}],
        "device": {"reference": "Device/d1/_history/2"},
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic"}]},
                "valueQuantity": {"value": 80.5, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
            }
        ]
    })
}

#[test]
fn observation_blood_pressure() {
    let obs = blood_pressure();
    assert_eq!(
        entries(&obs, "code"),
        [
            tok(
                "code",
                Some("http://loinc.org"),
                Some("85354-9"),
                Some("Blood pressure panel")
            ),
            tok("code", None, None, Some("Blood pressure")),
        ]
    );
    assert_eq!(
        entries(&obs, "category"),
        [tok(
            "category",
            Some("http://terminology.hl7.org/CodeSystem/observation-category"),
            Some("vital-signs"),
            Some("Vital Signs")
        )]
    );
    assert_eq!(
        entries(&obs, "status"),
        [tok(
            "status",
            Some("http://hl7.org/fhir/observation-status"),
            Some("final"),
            None
        )]
    );
    assert_eq!(entries(&obs, "_id"), [tok("_id", None, Some("bp-1"), None)]);
    assert_eq!(
        entries(&obs, "identifier"),
        [tok(
            "identifier",
            Some("urn:ietf:rfc:3986"),
            Some("urn:uuid:6f1c3b0e-1d5b-4c8f-9a57-2b9c1e0f4d11"),
            None
        )]
    );
    assert_eq!(
        entries(&obs, "_tag"),
        [tok(
            "_tag",
            Some("http://example.org/tags"),
            Some("device-upload"),
            None
        )]
    );
    assert_eq!(
        entries(&obs, "_profile"),
        [IndexEntry::Uri {
            param: p("_profile"),
            value: "http://hl7.org/fhir/StructureDefinition/vitalsigns".into()
        }]
    );
    // 10:15:30.123+01:00 = 09:15:30.123Z, millisecond precision.
    let t = 1_709_630_130 * SEC + 123_000;
    assert_eq!(
        entries(&obs, "_lastUpdated"),
        [date("_lastUpdated", t, t + 999)]
    );
    let t = 1_709_631_000 * SEC;
    assert_eq!(entries(&obs, "date"), [date("date", t, t + SEC - 1)]);
    assert_eq!(
        entries(&obs, "subject"),
        [reference(
            "subject",
            Some("Patient"),
            Some("p1"),
            None,
            "Patient/p1"
        )]
    );
    assert_eq!(
        entries(&obs, "patient"),
        [reference(
            "patient",
            Some("Patient"),
            Some("p1"),
            None,
            "Patient/p1"
        )]
    );
    assert_eq!(
        entries(&obs, "encounter"),
        [reference(
            "encounter",
            Some("Encounter"),
            Some("e1"),
            None,
            "Encounter/e1"
        )]
    );
    assert_eq!(
        entries(&obs, "device"),
        [reference(
            "device",
            Some("Device"),
            Some("d1"),
            Some("2"),
            "Device/d1/_history/2"
        )]
    );
    assert_eq!(
        entries(&obs, "performer"),
        [reference(
            "performer",
            None,
            None,
            None,
            "urn:uuid:0b7a9e50-7c55-4b5e-9f3c-3c1d8f7e2a10"
        )]
    );
    assert!(entries(&obs, "value-quantity").is_empty());
    assert!(entries(&obs, "focus").is_empty());
    let sys = qty(
        "component-value-quantity",
        120.0,
        119.5,
        120.5,
        "mm[Hg]",
        "mmHg",
    );
    let dia = qty(
        "component-value-quantity",
        80.5,
        80.45,
        80.55,
        "mm[Hg]",
        "mmHg",
    );
    assert_eq!(
        entries(&obs, "component-value-quantity"),
        [sys.clone(), dia.clone()]
    );
    assert_eq!(
        entries(&obs, "component-code"),
        [
            tok(
                "component-code",
                Some("http://loinc.org"),
                Some("8480-6"),
                Some("Systolic")
            ),
            tok(
                "component-code",
                Some("http://loinc.org"),
                Some("8462-4"),
                Some("Diastolic")
            ),
        ]
    );
    // Composite: one entry per component, code and value from the same component.
    let comp = |code: &str, display: &str, value: f64, low: f64, high: f64| IndexEntry::Composite {
        param: p("component-code-value-quantity"),
        components: vec![
            tok(
                "component-code-value-quantity",
                Some("http://loinc.org"),
                Some(code),
                Some(display),
            ),
            qty(
                "component-code-value-quantity",
                value,
                low,
                high,
                "mm[Hg]",
                "mmHg",
            ),
        ],
    };
    assert_eq!(
        entries(&obs, "component-code-value-quantity"),
        [
            comp("8480-6", "Systolic", 120.0, 119.5, 120.5),
            comp("8462-4", "Diastolic", 80.5, 80.45, 80.55)
        ]
    );
    // combo-*: the panel itself has no value, so only the components combine.
    assert_eq!(entries(&obs, "combo-code-value-quantity").len(), 2);
    assert_eq!(entries(&obs, "combo-code").len(), 4);
    assert_eq!(entries(&obs, "combo-value-quantity").len(), 2);
}

#[test]
fn observation_value_and_period() {
    let obs = json!({
        "resourceType": "Observation", "id": "hr", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "https://fhir.example.org/r4/Patient/p9", "identifier": {"system": "urn:mrn", "value": "M-1"}},
        "effectivePeriod": {"start": "2024-03-05T09:00:00+01:00", "end": "2024-03-05"},
        "valueQuantity": {"value": 72.50, "comparator": ">", "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    // Parsed from text, `72.50` keeps its two decimals (json! would make it 72.5).
    let mut obs = obs;
    obs["valueQuantity"]["value"] = serde_json::from_str("72.50").unwrap();
    let start = 1_709_625_600 * SEC; // 08:00Z
    let end = 1_709_596_800 * SEC + 86_400 * SEC - 1; // end of 2024-03-05 UTC
    assert_eq!(entries(&obs, "date"), [date("date", start, end)]);
    assert_eq!(
        entries(&obs, "value-quantity"),
        [IndexEntry::Quantity {
            param: p("value-quantity"),
            value: Some(72.5),
            low: 72.495,
            high: f64::MAX,
            system: o("http://unitsofmeasure.org"),
            code: o("/min"),
            unit: o("beats/minute"),
        }]
    );
    assert_eq!(
        entries(&obs, "subject"),
        [
            reference(
                "subject",
                Some("Patient"),
                Some("p9"),
                None,
                "https://fhir.example.org/r4/Patient/p9"
            ),
            IndexEntry::ReferenceIdentifier {
                param: p("subject"),
                system: o("urn:mrn"),
                code: o("M-1")
            },
        ]
    );
    assert_eq!(
        entries(&obs, "code-value-quantity"),
        [IndexEntry::Composite {
            param: p("code-value-quantity"),
            components: vec![
                tok(
                    "code-value-quantity",
                    Some("http://loinc.org"),
                    Some("8867-4"),
                    None
                ),
                IndexEntry::Quantity {
                    param: p("code-value-quantity"),
                    value: Some(72.5),
                    low: 72.495,
                    high: f64::MAX,
                    system: o("http://unitsofmeasure.org"),
                    code: o("/min"),
                    unit: o("beats/minute"),
                }
            ]
        }]
    );
    let s =
        json!({"resourceType": "Observation", "valueString": "Ça  va\tBIEN", "valueBoolean": true});
    assert_eq!(
        entries(&s, "value-string"),
        [string("value-string", "ca va bien", "Ça  va\tBIEN")]
    );
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"
        }],
        "active": true,
        "name": [
            {"use": "official", "family": "Müller-Lüdenscheidt", "given": ["Zoë", "Anne"], "prefix": ["Dr."]},
            {"use": "nickname", "text": "Zo"}
        ],
        "telecom": [
            {"system": "phone", "value": "+49 30 1234567", "use": "home"},
            {"system": "email", "value": "zoe@example.org"}
        ],
        "gender": "female",
        "birthDate": "1974-12",
        "address": [{
            "line": ["Hauptstraße 1", "Hinterhaus"], "city": "Köln", "postalCode": "50667", "country": "DE"
        }],
        "generalPractitioner": [{"reference": "Practitioner/gp"}],
        "managingOrganization": {"reference": "Organization/1"}
    })
}

#[test]
fn patient_entries() {
    let pat = patient();
    assert_eq!(
        entries(&pat, "name"),
        [
            string("name", "muller-ludenscheidt", "Müller-Lüdenscheidt"),
            string("name", "zoe", "Zoë"),
            string("name", "anne", "Anne"),
            string("name", "dr.", "Dr."),
            string("name", "zo", "Zo"),
        ]
    );
    assert_eq!(
        entries(&pat, "family"),
        [string(
            "family",
            "muller-ludenscheidt",
            "Müller-Lüdenscheidt"
        )]
    );
    assert_eq!(
        entries(&pat, "given"),
        [
            string("given", "zoe", "Zoë"),
            string("given", "anne", "Anne")
        ]
    );
    assert_eq!(
        entries(&pat, "address"),
        [
            string("address", "hauptstrasse 1", "Hauptstraße 1"),
            string("address", "hinterhaus", "Hinterhaus"),
            string("address", "koln", "Köln"),
            string("address", "50667", "50667"),
            string("address", "de", "DE"),
        ]
    );
    assert_eq!(
        entries(&pat, "address-city"),
        [string("address-city", "koln", "Köln")]
    );
    assert_eq!(
        entries(&pat, "identifier"),
        [IndexEntry::Token {
            param: p("identifier"),
            system: o("urn:oid:1.2.36.146.595.217.0.1"),
            code: o("12345"),
            display: None,
            type_system: o("http://terminology.hl7.org/CodeSystem/v2-0203"),
            type_code: o("MR"),
        }]
    );
    assert_eq!(
        entries(&pat, "phone"),
        [tok("phone", None, Some("+49 30 1234567"), None)]
    );
    assert_eq!(
        entries(&pat, "email"),
        [tok("email", None, Some("zoe@example.org"), None)]
    );
    assert_eq!(entries(&pat, "telecom").len(), 2);
    assert_eq!(
        entries(&pat, "gender"),
        [tok(
            "gender",
            Some("http://hl7.org/fhir/administrative-gender"),
            Some("female"),
            None
        )]
    );
    assert_eq!(
        entries(&pat, "active"),
        [tok("active", None, Some("true"), None)]
    );
    // Not deceased: the expression yields `false`.
    assert_eq!(
        entries(&pat, "deceased"),
        [tok("deceased", None, Some("false"), None)]
    );
    assert!(entries(&pat, "death-date").is_empty());
    // Month precision: the whole of December 1974.
    assert_eq!(
        entries(&pat, "birthdate"),
        [date("birthdate", 155_088_000 * SEC, 157_766_400 * SEC - 1)]
    );
    assert_eq!(
        entries(&pat, "general-practitioner"),
        [reference(
            "general-practitioner",
            Some("Practitioner"),
            Some("gp"),
            None,
            "Practitioner/gp"
        )]
    );
    assert_eq!(
        entries(&pat, "organization"),
        [reference(
            "organization",
            Some("Organization"),
            Some("1"),
            None,
            "Organization/1"
        )]
    );
    let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-02-29T23:59:59-05:00"});
    assert_eq!(
        entries(&dead, "deceased"),
        [tok("deceased", None, Some("true"), None)]
    );
    let t = 1_583_038_799 * SEC; // 2020-03-01T04:59:59Z
    assert_eq!(
        entries(&dead, "death-date"),
        [date("death-date", t, t + SEC - 1)]
    );
}

#[test]
fn device_entries() {
    let dev = json!({
        "resourceType": "Device",
        "id": "d1",
        "identifier": [{"system": "http://acme.example.org/serial", "value": "SN-0042"}],
        "udiCarrier": [{"deviceIdentifier": "09504000059118", "carrierHRF": "(01)09504000059118(17)141120"}],
        "status": "active",
        "manufacturer": "Acme Devices",
        "deviceName": [{"name": "Acme Pulse Oximeter", "type": "manufacturer-name"}],
        "modelNumber": "PX-100",
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "448703006", "display": "Pulse oximeter"}]},
        "patient": {"reference": "Patient/p1"},
        "owner": {"reference": "Organization/o1"},
        "url": "http://device.example.org/px100"
    });
    assert_eq!(
        entries(&dev, "device-name"),
        [
            string("device-name", "acme pulse oximeter", "Acme Pulse Oximeter"),
            string("device-name", "pulse oximeter", "Pulse oximeter"),
        ]
    );
    assert_eq!(
        entries(&dev, "manufacturer"),
        [string("manufacturer", "acme devices", "Acme Devices")]
    );
    assert_eq!(
        entries(&dev, "model"),
        [string("model", "px-100", "PX-100")]
    );
    assert_eq!(
        entries(&dev, "udi-di"),
        [string("udi-di", "09504000059118", "09504000059118")]
    );
    assert_eq!(
        entries(&dev, "type"),
        [tok(
            "type",
            Some("http://snomed.info/sct"),
            Some("448703006"),
            Some("Pulse oximeter")
        )]
    );
    assert_eq!(
        entries(&dev, "status"),
        [tok(
            "status",
            Some("http://hl7.org/fhir/device-status"),
            Some("active"),
            None
        )]
    );
    assert_eq!(
        entries(&dev, "identifier"),
        [tok(
            "identifier",
            Some("http://acme.example.org/serial"),
            Some("SN-0042"),
            None
        )]
    );
    assert_eq!(
        entries(&dev, "patient"),
        [reference(
            "patient",
            Some("Patient"),
            Some("p1"),
            None,
            "Patient/p1"
        )]
    );
    assert_eq!(
        entries(&dev, "organization"),
        [reference(
            "organization",
            Some("Organization"),
            Some("o1"),
            None,
            "Organization/o1"
        )]
    );
    assert_eq!(
        entries(&dev, "url"),
        [IndexEntry::Uri {
            param: p("url"),
            value: "http://device.example.org/px100".into()
        }]
    );
}

#[test]
fn encounter_entries() {
    let enc = json!({
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "participant": [{"individual": {"reference": "Practitioner/dr"}}],
        "period": {"start": "2024-03-05T10:00:00Z"},
        "length": {"value": 90, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
        "location": [{"location": {"reference": "Location/1"}, "period": {"start": "2024-03", "end": "2024-03"}}]
    });
    let start = 1_709_632_800 * SEC;
    assert_eq!(entries(&enc, "date"), [date("date", start, i64::MAX)]);
    assert_eq!(
        entries(&enc, "location-period"),
        [date(
            "location-period",
            1_709_251_200 * SEC,
            1_711_929_600 * SEC - 1
        )]
    );
    assert_eq!(
        entries(&enc, "class"),
        [tok(
            "class",
            Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"),
            Some("AMB"),
            None
        )]
    );
    assert_eq!(
        entries(&enc, "practitioner"),
        [reference(
            "practitioner",
            Some("Practitioner"),
            Some("dr"),
            None,
            "Practitioner/dr"
        )]
    );
    assert_eq!(
        entries(&enc, "patient"),
        [reference(
            "patient",
            Some("Patient"),
            Some("p1"),
            None,
            "Patient/p1"
        )]
    );
    assert_eq!(
        entries(&enc, "length"),
        [qty("length", 90.0, 89.5, 90.5, "min", "min")]
    );
}

#[test]
fn other_types() {
    // Timing events, Money, Range, canonical with version, contained reference.
    let mr = json!({
        "resourceType": "ServiceRequest",
        "contained": [{"resourceType": "Patient", "id": "pt"}],
        "subject": {"reference": "#pt"},
        "occurrenceTiming": {"event": ["2024-03-05", "2024-03-01"]},
        "instantiatesCanonical": ["http://example.org/PlanDefinition/pd|1.2"]
    });
    assert_eq!(
        entries(&mr, "occurrence"),
        [date(
            "occurrence",
            1_709_251_200 * SEC,
            1_709_596_800 * SEC + 86_400 * SEC - 1
        )]
    );
    assert_eq!(
        entries(&mr, "subject"),
        [reference("subject", Some("Patient"), None, None, "#pt")]
    );
    assert_eq!(
        entries(&mr, "patient"),
        [reference("patient", Some("Patient"), None, None, "#pt")]
    );
    assert_eq!(
        entries(&mr, "instantiates-canonical"),
        [reference(
            "instantiates-canonical",
            None,
            None,
            Some("1.2"),
            "http://example.org/PlanDefinition/pd"
        )]
    );
    let ci = json!({"resourceType": "ChargeItem", "priceOverride": {"value": 12.5, "currency": "EUR"}, "factorOverride": 0.8});
    assert_eq!(
        entries(&ci, "price-override"),
        [IndexEntry::Quantity {
            param: p("price-override"),
            value: Some(12.5),
            low: 12.45,
            high: 12.55,
            system: o("urn:iso:std:iso:4217"),
            code: o("EUR"),
            unit: None,
        }]
    );
    match entries(&ci, "factor-override").as_slice() {
        [IndexEntry::Number {
            value, low, high, ..
        }] => {
            assert_eq!(*value, 0.8);
            assert!((low - 0.75).abs() < 1e-12 && (high - 0.85).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }
    let cond = json!({"resourceType": "Condition", "onsetRange": {"low": {"value": 2, "unit": "a"}, "high": {"value": 5, "unit": "a"}}});
    match entries(&cond, "onset-age").as_slice() {
        [IndexEntry::Quantity {
            value: None,
            low,
            high,
            unit,
            ..
        }] => {
            assert_eq!((*low, *high, unit.as_deref()), (1.5, 5.5, Some("a")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dates_and_numbers() {
    assert_eq!(
        parse_date_range("2024"),
        Some((1_704_067_200 * SEC, 1_735_689_600 * SEC - 1))
    );
    assert_eq!(parse_date_range("2024-02-30"), None);
    assert_eq!(parse_date_range("2024-13"), None);
    assert_eq!(parse_date_range("20240301"), None);
    assert_eq!(parse_date_range("2024-03-01T25:00:00Z"), None);
    assert_eq!(parse_date_range("garbage"), None);
    assert_eq!(parse_date_range(""), None);
    assert_eq!(
        parse_date_range("2024-03-01T10:00:00.5Z").map(|r| r.1 - r.0),
        Some(99_999)
    );
    assert!(parse_date_range("-0001").is_none());
    let (v, lo, hi) = number(&serde_json::from_str("1.50e2").unwrap()).unwrap();
    assert_eq!((v, lo, hi), (150.0, 149.5, 150.5));
    let (v, lo, hi) = number(&json!(100)).unwrap();
    assert_eq!((v, lo, hi), (100.0, 99.5, 100.5));
    assert_eq!(normalize("  Ærøskøbing\n ŁÓDŹ "), "aeroskobing lodz");
}

#[test]
fn never_panics_on_odd_input() {
    for r in [
        json!({}),
        json!([]),
        json!({"resourceType": 5}),
        json!({"resourceType": "Unknown", "x": 1}),
        json!({"resourceType": "Observation", "code": "x", "valueQuantity": {"value": "NaN"},
               "effectiveDateTime": 12, "subject": {"reference": ""}, "component": [null, 1, {"code": []}],
               "meta": {"lastUpdated": "9999-99-99"}}),
        json!({"resourceType": "Patient", "name": [{"given": [null, 5, "x"]}], "birthDate": "0000",
               "telecom": {"system": "email"}, "deceasedBoolean": "yes"}),
    ] {
        let _ = extract(&r);
    }
}

/// Extracts every official R4 example (when the package is unpacked at the usual place) as
/// a no-panic check, and prints counts and time.
#[test]
fn official_examples() {
    let dir = std::path::Path::new("/tmp/npm/ex/package");
    let Ok(read) = std::fs::read_dir(dir) else {
        eprintln!("skipped: {} absent", dir.display());
        return;
    };
    let (mut files, mut total) = (0usize, 0usize);
    let mut elapsed = std::time::Duration::ZERO;
    for entry in read.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("resourceType").is_none() {
            continue;
        }
        let t = std::time::Instant::now();
        total += extract(&v).len();
        elapsed += t.elapsed();
        files += 1;
    }
    eprintln!("official examples: {files} resources, {total} entries, extraction {elapsed:?}");
    assert!(files == 0 || total > files);
}
