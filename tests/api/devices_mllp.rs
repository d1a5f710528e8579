//! Patient monitors send IHE PCD-01 (HL7 v2 ORU^R01) over MLLP: real TCP connections to
//! the server's listener, real ACKs, and the FHIR resources the messages become.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::helpers::*;

/// GE-style numeric vitals with device-describing rows (segments end with CR).
const GE_VITALS: &str = "MSH|^~\\&|VSP^080019FFFE1443EC^EUI-64|GE Healthcare|||20230309143900||ORU^R01^ORU_R01|0040971443EC|P|2.6|||NE|AL||UNICODE UTF-8|||PCD_DEC_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
PID|||3499999^^^PID^MR||KOKONOVA^TAMARA^^^^^L||19680309000000|\r\
PV1||E|X^^443EC\r\
OBR|1|080019FFFE1443EC20230309143900^VSP^080019FFFE1443EC^EUI-64|080019FFFE1443EC20230309143900^VSP^080019FFFE1443EC^EUI-64|182777000^monitoring of patient^SCT|||20230309143900\r\
OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X\r\
OBX|2||69798^MDC_DEV_ECG_VMD^MDC|1.5.0.0|||||||X\r\
OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC|1.5.1.1|68|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R|||||||080019FFFE1443EC^B40_GE\r\
OBX|4||69642^MDC_DEV_ANALY_SAT_O2_VMD^MDC|1.22.0.0|||||||X\r\
OBX|5|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.22.1.1|67|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||||||080019FFFE1443EC^B40_GE\r\
OBX|6|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.2|97|262688^MDC_DIM_PERCENT^MDC||L|||R|||||||080019FFFE1443EC^B40_GE\r\
OBX|7|NM|151562^MDC_RESP_RATE^MDC|1.20.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||||||080019FFFE1443EC^B40_GE\r\
OBX|8|NM|150344^MDC_TEMP^MDC|1.26.1.1|37.1|268192^MDC_DIM_DEGC^MDC|||||R|||||||080019FFFE1443EC^B40_GE\r";

/// Mindray-style spot check: NIBP members, DEMO data, per-row times, LF separators.
const MINDRAY_NIBP: &str = "MSH|^~\\&|MINDRAY_VS900^00A0370098006640^EUI-64||||20200212125541||ORU^R01^ORU_R01|13|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\n\
PID|||MRN-77^^^Hospital&1.2.3.4.5&ISO^MR||TEST^SR T3ST^^^^^L||19891023|M\n\
PV1||I|INTER^^1^1\n\
OBR|1|13^MINDRAY_VS900^00A0370098006640^EUI-64|13^MINDRAY_VS900^00A0370098006640^EUI-64|182777000^monitoring of patient^SCT|||20200212125541\n\
OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|100|262688^MDC_DIM_PERCENT^MDC||DEMO|||R|||20200212125541||||00A0370098006640^^00A0370098006640^EUI-64\n\
OBX|2|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.1.9.150301|166|266016^MDC_DIM_MMHG^MDC||H|||R|||20200212125008|||^APERIODIC\n\
OBX|3|NM|150303^MDC_PRESS_CUFF_MEAN^MDC|1.1.9.150303|122|266016^MDC_DIM_MMHG^MDC|||||R|||20200212125008|||^APERIODIC\n\
OBX|4|NM|150302^MDC_PRESS_CUFF_DIA^MDC|1.1.9.150302|100|266016^MDC_DIM_MMHG^MDC|||||R|||20200212125008|||^APERIODIC\n";

/// A personal-health gateway (Continua style): an MDS row `1`, a compound blood pressure
/// header `1.0.1` with its members, and a plain metric `1.0.0.1`.
const CONTINUA_BP: &str = "MSH|^~\\&|Cdog Health Ltd.^6CF049DB5F02^EUI-64||||20150118143000+0000||ORU^R01^ORU_R01|msgId0|T|2.6|||NE|AL|||||IHE PCD ORU-R012006^HL7^2.16.840.1.113883.9^HL7\r\
PID|||SSN3456789^^^&OEP^SSN||Doe^Jane||19910120082615.471+0100\r\
OBR|1|AB1234^Cdog Health Ltd.^6CF049DB5F02^EUI-64|AB1234^Cdog Health Ltd.^6CF049DB5F02^EUI-64|135840009^Blood pressure monitoring^SNOMED-CT|||20150118143000+0000|20150118143100+0000\r\
OBX|2||528391^MDC_DEV_SPEC_PROFILE_BP^MDC|1|||||||X|||20150118143000+0000||||0123456789ABCDEF^EUI-64\r\
OBX|3||150020^MDC_PRESS_BLD_NONINV^MDC|1.0.1|||||||X|||20150118143000+0000\r\
OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.0.1.1|140.5|266016^MDC_DIM_MMHG^MDC|||||R|||20150118143000+0000\r\
OBX|5|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.0.1.2|95.0|266016^MDC_DIM_MMHG^MDC|||||R|||20150118143000+0000\r\
OBX|6|NM|149546^MDC_PULS_RATE_NON_INV^MDC|1.0.0.1|75.5|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20150118143000+0000\r";

/// A gateway's ECG lead II waveform (500 Hz) with its attribute rows.
const WAVEFORM: &str = "MSH|^~\\&|GW^00A0370000000001^EUI-64|MINDRAY|||20240124131540+0800||ORU^R01^ORU_R01|W-1227|P|2.6\r\
PID|||3499999^^^PID^MR\r\
OBR|1||1227^GW^00A0370000000001^EUI-64|100001^CONTINUOUS WAVEFORM^99MNDRY|||20240124131539+0800\r\
OBX|1|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.7.6.131330|80^88^92^-4^0|266418^MDC_DIM_MILLI_VOLT^MDC\r\
OBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.7.6.131330.1|500|264640^MDC_DIM_HZ^MDC\r\
OBX|3|NM|2327^MDC_ATTR_NU_MSMT_RES^MDC|1.7.6.131330.2|0.001221|266418^MDC_DIM_MILLI_VOLT^MDC\r";

fn frame(text: &str) -> Vec<u8> {
    let mut bytes = vec![0x0b];
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&[0x1c, 0x0d]);
    bytes
}

/// Reads one MLLP frame (the ACK) from the stream.
async fn read_ack(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = received.windows(2).position(|w| w == [0x1c, 0x0d]) {
            let start = received
                .iter()
                .position(|b| *b == 0x0b)
                .expect("frame start");
            let text = String::from_utf8(received[start + 1..end].to_vec()).unwrap();
            return text;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an ACK within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection without an ACK");
        received.extend_from_slice(&buffer[..n]);
    }
}

async fn send(app: &TestApp, message: &str) -> Ack {
    let mut stream = TcpStream::connect(app.mllp_addr()).await.unwrap();
    stream.write_all(&frame(message)).await.unwrap();
    Ack::parse(&read_ack(&mut stream).await)
}

/// An ACK's MSA and ERR segments.
#[derive(Debug)]
struct Ack {
    text: String,
    code: String,
    control_id: String,
    errors: Vec<Vec<String>>,
}

impl Ack {
    fn parse(text: &str) -> Ack {
        let segments: Vec<Vec<String>> = text
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| s.split('|').map(str::to_string).collect())
            .collect();
        assert_eq!(segments[0][0], "MSH", "{text}");
        assert!(segments[0][8].starts_with("ACK"), "{text}");
        let msa = segments.iter().find(|s| s[0] == "MSA").expect("MSA");
        Ack {
            text: text.to_string(),
            code: msa[1].clone(),
            control_id: msa.get(2).cloned().unwrap_or_default(),
            errors: segments.iter().filter(|s| s[0] == "ERR").cloned().collect(),
        }
    }

    /// ERR-2, ERR-3 code and ERR-4 severity of each error.
    fn problems(&self) -> Vec<(String, String, String)> {
        self.errors
            .iter()
            .map(|e| {
                (
                    e.get(2).cloned().unwrap_or_default(),
                    e.get(3)
                        .and_then(|c| c.split('^').next().map(str::to_string))
                        .unwrap_or_default(),
                    e.get(4).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }
}

async fn search(app: &TestApp, query: &str) -> Vec<Value> {
    let bundle = json_with_status(app.get(query).await, 200).await;
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .filter(|r| r["resourceType"] != "OperationOutcome")
        .collect()
}

fn has_coding(concept: &Value, system: &str, code: &str) -> bool {
    concept["coding"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["system"] == system && c["code"] == code)
    })
}

/// The R4 vital-signs profile's rules (http://hl7.org/fhir/StructureDefinition/vitalsigns
/// and the specific profiles): what an Observation claiming it must have.
fn vital_signs_violations(observation: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let loinc = "http://loinc.org";
    let profile = observation["meta"]["profile"][0]
        .as_str()
        .unwrap_or_default();
    let required = [
        ("heartrate", "8867-4", &["/min"][..]),
        ("oxygensat", "2708-6", &["%"][..]),
        ("resprate", "9279-1", &["/min"][..]),
        ("bodytemp", "8310-5", &["Cel", "[degF]"][..]),
        ("bodyweight", "29463-7", &["kg", "g", "[lb_av]"][..]),
        ("bp", "85354-9", &[][..]),
    ];
    let Some((_, code, units)) = required
        .iter()
        .find(|(name, _, _)| profile == format!("http://hl7.org/fhir/StructureDefinition/{name}"))
    else {
        return vec![format!("no vital-signs profile claimed: {profile:?}")];
    };
    if !observation["category"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            has_coding(
                c,
                "http://terminology.hl7.org/CodeSystem/observation-category",
                "vital-signs",
            )
        })
    }) {
        problems.push("category vital-signs missing".into());
    }
    if !has_coding(&observation["code"], loinc, code) {
        problems.push(format!("code lacks LOINC {code}"));
    }
    if !observation["subject"]["reference"]
        .as_str()
        .is_some_and(|r| r.starts_with("Patient/"))
    {
        problems.push("subject must be a Patient".into());
    }
    let effective = observation["effectiveDateTime"]
        .as_str()
        .unwrap_or_default();
    if effective.len() < 10 {
        problems.push("effectiveDateTime must be precise to the day (vs-1)".into());
    }
    let quantity = &observation["valueQuantity"];
    if *code == "85354-9" {
        for component in ["8480-6", "8462-4"] {
            let found = observation["component"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| has_coding(&c["code"], loinc, component)));
            match found {
                Some(c)
                    if c["valueQuantity"]["code"] == "mm[Hg]"
                        && c["valueQuantity"]["system"] == "http://unitsofmeasure.org" => {}
                _ => problems.push(format!("bp component {component} in mm[Hg] missing")),
            }
        }
    } else if quantity.is_object() {
        if quantity["system"] != "http://unitsofmeasure.org"
            || !units.contains(&quantity["code"].as_str().unwrap_or_default())
        {
            problems.push(format!("valueQuantity must be UCUM {units:?}: {quantity}"));
        }
        if !quantity["value"].is_number() {
            problems.push("valueQuantity.value must be a number".into());
        }
    } else if observation["dataAbsentReason"].is_null() {
        problems.push("a value or a dataAbsentReason is required (vs-2)".into());
    }
    problems
}

async fn spawn_monitor_app(create_patients: bool) -> TestApp {
    spawn_app_with(|config| {
        config.mllp = Some("127.0.0.1:0".into());
        config.device_create_patients = create_patients;
    })
    .await
}

async fn a_patient(app: &TestApp, system: &str, value: &str) -> String {
    let created = app
        .create(
            &json!({"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}),
        )
        .await;
    created["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn numeric_vitals_become_vital_signs_observations_of_the_monitor_and_patient() {
    let app = spawn_monitor_app(false).await;
    let patient = a_patient(&app, "http://hospital.example/mrn", "3499999").await;
    let ack = send(&app, GE_VITALS).await;
    assert_eq!(ack.code, "AA", "{}", ack.text);
    assert_eq!(ack.control_id, "0040971443EC");

    // The monitor: one Device by its EUI-64, typed by its MDS row, serving the patient.
    let devices = search(
        &app,
        "Device?identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|08-00-19-FF-FE-14-43-EC",
    )
    .await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    let device = &devices[0];
    let device_id = device["id"].as_str().unwrap();
    assert_eq!(device["patient"]["reference"], format!("Patient/{patient}"));
    assert_eq!(
        device["type"]["coding"][0]["code"], "69965",
        "from the MDS row"
    );

    let observations = search(
        &app,
        &format!("Observation?subject=Patient/{patient}&_count=100"),
    )
    .await;
    assert_eq!(observations.len(), 5, "{observations:#?}");
    let by_mdc = |code: &str| {
        observations
            .iter()
            .find(|o| has_coding(&o["code"], "urn:iso:std:iso:11073:10101", code))
            .unwrap_or_else(|| panic!("no Observation with MDC {code}"))
            .clone()
    };
    let heart_rate = by_mdc("147842");
    assert!(has_coding(
        &heart_rate["code"],
        "http://loinc.org",
        "8867-4"
    ));
    assert_eq!(heart_rate["valueQuantity"]["value"], 68);
    assert_eq!(heart_rate["valueQuantity"]["code"], "/min");
    assert_eq!(heart_rate["effectiveDateTime"], "2023-03-09T14:39:00Z");
    assert_eq!(
        heart_rate["device"]["reference"],
        format!("Device/{device_id}")
    );
    assert_eq!(
        heart_rate["status"], "preliminary",
        "OBX-11 R: unverified device data"
    );
    assert_eq!(heart_rate["referenceRange"][0]["low"]["value"], 50);
    assert_eq!(heart_rate["referenceRange"][0]["high"]["value"], 120);
    let spo2 = by_mdc("150456");
    assert!(has_coding(&spo2["code"], "http://loinc.org", "2708-6"));
    assert!(has_coding(&spo2["code"], "http://loinc.org", "59408-5"));
    assert_eq!(spo2["interpretation"][0]["coding"][0]["code"], "L");
    for code in ["147842", "149530", "150456", "151562", "150344"] {
        let observation = by_mdc(code);
        assert_eq!(
            vital_signs_violations(&observation),
            Vec::<String>::new(),
            "{observation:#}"
        );
    }
    // A DeviceMetric per channel.
    let metrics = search(
        &app,
        &format!("DeviceMetric?source=Device/{device_id}&_count=100"),
    )
    .await;
    assert_eq!(metrics.len(), 5, "{metrics:#?}");
    assert!(metrics
        .iter()
        .all(|m| m["operationalStatus"] == "on" && m["category"] == "measurement"));
}

#[tokio::test]
async fn a_message_sent_twice_is_stored_once_and_acknowledged_again() {
    let app = spawn_monitor_app(false).await;
    let patient = a_patient(&app, "http://hospital.example/mrn", "3499999").await;
    assert_eq!(send(&app, GE_VITALS).await.code, "AA");
    let again = send(&app, GE_VITALS).await;
    assert_eq!(again.code, "AA", "{}", again.text);
    assert_eq!(again.control_id, "0040971443EC");
    let count = json_with_status(
        app.get(&format!(
            "Observation?subject=Patient/{patient}&_summary=count"
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(count["total"], 5);
    let devices = json_with_status(app.get("Device?_summary=count").await, 200).await;
    assert_eq!(devices["total"], 1);
    // The same new reading from several connections at once (a gateway retrying on
    // another connection): stored once, acknowledged on each.
    let resent = GE_VITALS.replace("|||20230309143900\r", "|||20230309144000\r");
    let sends: Vec<_> = (0..24).map(|_| send(&app, &resent)).collect();
    for ack in futures::future::join_all(sends).await {
        assert_eq!(ack.code, "AA", "{}", ack.text);
    }
    let count = json_with_status(
        app.get(&format!(
            "Observation?subject=Patient/{patient}&_summary=count"
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(count["total"], 5 + 5);
}

#[tokio::test]
async fn blood_pressure_members_become_one_panel_and_demo_data_is_labelled() {
    let app = spawn_monitor_app(false).await;
    let patient = a_patient(&app, "urn:oid:1.2.3.4.5", "MRN-77").await;
    let ack = send(&app, MINDRAY_NIBP).await;
    assert_eq!(ack.code, "AA", "{}", ack.text);
    let observations = search(&app, &format!("Observation?subject=Patient/{patient}")).await;
    assert_eq!(
        observations.len(),
        2,
        "SpO2 and one blood pressure: {observations:#?}"
    );
    let bp = observations
        .iter()
        .find(|o| has_coding(&o["code"], "http://loinc.org", "85354-9"))
        .expect("a blood pressure panel");
    assert_eq!(vital_signs_violations(bp), Vec::<String>::new(), "{bp:#}");
    assert_eq!(
        bp["effectiveDateTime"], "2020-02-12T12:50:08Z",
        "OBX-14, not OBR-7"
    );
    let component = |loinc: &str| {
        bp["component"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| has_coding(&c["code"], "http://loinc.org", loinc))
            .unwrap_or_else(|| panic!("component {loinc}"))
            .clone()
    };
    assert_eq!(component("8480-6")["valueQuantity"]["value"], 166);
    assert_eq!(
        component("8480-6")["interpretation"][0]["coding"][0]["code"],
        "H"
    );
    assert_eq!(component("8462-4")["valueQuantity"]["value"], 100);
    assert_eq!(component("8478-0")["valueQuantity"]["value"], 122);
    let spo2 = observations
        .iter()
        .find(|o| has_coding(&o["code"], "http://loinc.org", "2708-6"))
        .unwrap();
    assert_eq!(
        spo2["meta"]["security"][0]["code"], "HTEST",
        "DEMO data is labelled"
    );
    // Both from the device named by OBX-18 / MSH-3.
    let devices = search(&app, "Device").await;
    assert_eq!(devices.len(), 1, "{devices:#?}");
    assert_eq!(
        devices[0]["identifier"][0]["value"],
        "00-A0-37-00-98-00-66-40"
    );
}

#[tokio::test]
async fn a_personal_health_gateway_reports_its_cuff_as_the_device() {
    let app = spawn_monitor_app(false).await;
    let patient = a_patient(&app, "urn:oid:9.9", "SSN3456789").await;
    let ack = send(&app, CONTINUA_BP).await;
    assert_eq!(ack.code, "AA", "{}", ack.text);
    let observations = search(&app, &format!("Observation?subject=Patient/{patient}")).await;
    assert_eq!(observations.len(), 2, "{observations:#?}");
    let bp = observations
        .iter()
        .find(|o| has_coding(&o["code"], "http://loinc.org", "85354-9"))
        .expect("the blood pressure panel");
    assert_eq!(vital_signs_violations(bp), Vec::<String>::new(), "{bp:#}");
    assert_eq!(bp["component"][0]["valueQuantity"]["value"], 140.5);
    // The cuff (OBX-18 of the MDS row) measured them, not the gateway.
    let cuff = search(
        &app,
        "Device?identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|01-23-45-67-89-AB-CD-EF",
    )
    .await;
    assert_eq!(cuff.len(), 1);
    assert_eq!(cuff[0]["type"]["coding"][0]["code"], "528391");
    let cuff_ref = format!("Device/{}", cuff[0]["id"].as_str().unwrap());
    assert!(
        observations
            .iter()
            .all(|o| o["device"]["reference"] == cuff_ref.as_str()),
        "{observations:#?}"
    );
}

#[tokio::test]
async fn text_and_coded_values_are_kept_as_such() {
    let app = spawn_monitor_app(false).await;
    let patient = a_patient(&app, "http://hospital.example/mrn", "3499999").await;
    let message = GE_VITALS.replace("|0040971443EC|", "|TEXT-1|")
        + "OBX|9|ST|184327^MDC_ECG_STAT_RHY^MDC|1.5.1.2|Sinus \\T\\ regular||||||R|||||||080019FFFE1443EC^B40_GE\r\
           OBX|10|CWE|184330^MDC_ECG_PACED_BEAT^MDC|1.5.1.3|8454267^MDC_EVT_ECG_PACED^MDC||||||F|||||||080019FFFE1443EC^B40_GE\r\
           ZGE|1|vendor segment kept out of the way\r";
    let ack = send(&app, &message).await;
    assert_eq!(ack.code, "AA", "{}", ack.text);
    let rhythm = search(
        &app,
        &format!("Observation?subject=Patient/{patient}&code=urn:iso:std:iso:11073:10101|184327"),
    )
    .await;
    assert_eq!(rhythm.len(), 1);
    assert_eq!(
        rhythm[0]["valueString"], "Sinus & regular",
        "escapes decoded"
    );
    let paced = search(
        &app,
        &format!("Observation?subject=Patient/{patient}&code=urn:iso:std:iso:11073:10101|184330"),
    )
    .await;
    assert_eq!(paced.len(), 1);
    assert_eq!(paced[0]["status"], "final");
    assert_eq!(
        paced[0]["valueCodeableConcept"]["coding"][0]["code"],
        "8454267"
    );
    assert_eq!(
        paced[0]["valueCodeableConcept"]["coding"][0]["system"],
        "urn:iso:std:iso:11073:10101"
    );
    // A malformed segment makes the message unreadable: rejected, kept.
    let broken = GE_VITALS.replace("|0040971443EC|", "|BROKEN-1|") + "obx|11|NM\r";
    let ack = send(&app, &broken).await;
    assert_eq!(ack.code, "AR", "{}", ack.text);
    assert_eq!(ack.control_id, "BROKEN-1", "named even so");
}

#[tokio::test]
async fn waveforms_become_sampled_data() {
    let app = spawn_monitor_app(false).await;
    let patient = a_patient(&app, "http://hospital.example/mrn", "3499999").await;
    let ack = send(&app, WAVEFORM).await;
    assert_eq!(ack.code, "AA", "{}", ack.text);
    let observations = search(&app, &format!("Observation?subject=Patient/{patient}")).await;
    assert_eq!(
        observations.len(),
        1,
        "attribute rows are not readings: {observations:#?}"
    );
    let sampled = &observations[0]["valueSampledData"];
    assert_eq!(sampled["period"], 2.0);
    assert_eq!(sampled["factor"], 0.001221);
    assert_eq!(sampled["dimensions"], 1);
    assert_eq!(sampled["data"], "80 88 92 -4 0");
    assert_eq!(sampled["origin"]["code"], "mV");
    assert_eq!(
        observations[0]["effectiveDateTime"],
        "2024-01-24T13:15:39+08:00"
    );
}

#[tokio::test]
async fn bad_messages_get_negative_acks_and_are_kept_as_dead_letters_until_replayed() {
    let app = spawn_monitor_app(false).await;
    // Not HL7 at all.
    let ack = send(&app, "hello\rworld").await;
    assert_eq!(ack.code, "AR", "{}", ack.text);
    // A value that is not a number.
    let bad_number = GE_VITALS
        .replace("|0040971443EC|", "|BAD-NUMBER|")
        .replace("1.5.1.1|68|", "1.5.1.1|6x8|");
    let ack = send(&app, &bad_number).await;
    assert_eq!(ack.code, "AE", "{}", ack.text);
    assert_eq!(ack.control_id, "BAD-NUMBER");
    assert_eq!(
        ack.problems(),
        vec![("OBX^3^5".to_string(), "102".to_string(), "E".to_string())]
    );
    // An unsupported message type.
    let adt = GE_VITALS.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01");
    let ack = send(&app, &adt).await;
    assert_eq!(ack.code, "AR", "{}", ack.text);
    assert_eq!(ack.problems()[0].1, "200");
    // The patient is unknown (and the server does not create patients).
    let ack = send(&app, GE_VITALS).await;
    assert_eq!(ack.code, "AE", "{}", ack.text);
    assert_eq!(ack.problems()[0].0, "PID^1^3");
    assert!(ack.text.contains("3499999"), "{}", ack.text);
    let count = json_with_status(app.get("Observation?_summary=count").await, 200).await;
    assert_eq!(count["total"], 0, "nothing of a refused message is stored");

    // Every refused message is kept, with why.
    let response = app
        .client
        .get(app.root("/admin/dead-letters?status=pending"))
        .bearer_auth(app.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let letters: Value = response.json().await.unwrap();
    let letters = letters["deadLetters"].as_array().unwrap().clone();
    assert_eq!(letters.len(), 4, "{letters:#?}");
    let unknown_patient = &letters[0];
    assert_eq!(unknown_patient["adapter"], "mllp");
    assert_eq!(unknown_patient["payload"], GE_VITALS);
    assert_eq!(unknown_patient["problems"][0]["location"], "PID^1^3");
    // Dead letters are for administrators only.
    let reader = super::auth::token_for(&app, "system/Observation.rs").await;
    let response = app
        .client
        .get(app.root("/admin/dead-letters"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = app
        .client
        .get(app.root("/admin/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Once the patient exists, the replay stores the message.
    let replay = |id: &str| {
        app.client
            .post(app.root(&format!("/admin/dead-letters/{id}/replay")))
            .bearer_auth(app.token.as_deref().unwrap())
            .send()
    };
    let id = unknown_patient["id"].as_str().unwrap().to_string();
    let response = replay(&id).await.unwrap();
    assert_eq!(response.status(), 422, "still unknown");
    a_patient(&app, "http://hospital.example/mrn", "3499999").await;
    let response = replay(&id).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["created"], 5);
    let count = json_with_status(app.get("Observation?_summary=count").await, 200).await;
    assert_eq!(count["total"], 5);
    assert_eq!(replay(&id).await.unwrap().status(), 409);
    let response = app
        .client
        .get(app.root(&format!("/admin/dead-letters/{id}")))
        .bearer_auth(app.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    let letter: Value = response.json().await.unwrap();
    assert_eq!(letter["status"], "replayed");
    assert_eq!(letter["attempts"], 2);
}

#[tokio::test]
async fn unknown_codes_are_stored_with_a_warning_and_future_readings_are_refused() {
    let app = spawn_monitor_app(true).await;
    let unknown = GE_VITALS.replace(
        "151562^MDC_RESP_RATE^MDC|1.20.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC",
        "999999^MDC_SOMETHING_NEW^MDC|1.20.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC",
    );
    let ack = send(&app, &unknown).await;
    assert_eq!(ack.code, "AA", "{}", ack.text);
    assert_eq!(
        ack.problems(),
        vec![("OBX^7^3".to_string(), "103".to_string(), "W".to_string())]
    );
    let stored = search(&app, "Observation?code=urn:iso:std:iso:11073:10101|999999").await;
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0]["meta"]["profile"].is_null(),
        "no vital-signs claim"
    );
    assert!(stored[0]["category"].is_null());
    // The server created the patient it did not know.
    let patients = search(&app, "Patient?identifier=3499999").await;
    assert_eq!(patients.len(), 1);

    let tomorrow = (chrono::Utc::now() + chrono::Duration::hours(24))
        .format("%Y%m%d%H%M%S")
        .to_string();
    let future = GE_VITALS
        .replace("|0040971443EC|", "|FUTURE-1|")
        .replace("|||20230309143900\r", &format!("|||{tomorrow}\r"));
    let ack = send(&app, &future).await;
    assert_eq!(ack.code, "AE", "{}", ack.text);
    assert!(
        ack.text.contains("ahead of the server's clock"),
        "{}",
        ack.text
    );
}

#[tokio::test]
async fn framing_survives_garbage_split_writes_and_several_connections() {
    let app = spawn_monitor_app(true).await;
    let mut stream = TcpStream::connect(app.mllp_addr()).await.unwrap();
    // Noise before the frame, then one message split in three writes.
    let bytes = frame(GE_VITALS);
    stream.write_all(b"\r\n noise ").await.unwrap();
    for part in bytes.chunks(bytes.len() / 3 + 1) {
        stream.write_all(part).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(Ack::parse(&read_ack(&mut stream).await).code, "AA");
    // Two messages in one write: two ACKs, in order.
    let first = GE_VITALS.replace("|0040971443EC|", "|TWO-1|");
    let second = MINDRAY_NIBP.replace("|13|P|", "|TWO-2|P|");
    let mut both = frame(&first);
    both.extend(frame(&second));
    stream.write_all(&both).await.unwrap();
    assert_eq!(Ack::parse(&read_ack(&mut stream).await).control_id, "TWO-1");
    assert_eq!(Ack::parse(&read_ack(&mut stream).await).control_id, "TWO-2");
    // Several monitors at once.
    let mut tasks = Vec::new();
    for bed in 0..8 {
        let addr = app.mllp_addr();
        tasks.push(tokio::spawn(async move {
            let message = GE_VITALS
                .replace("3499999", &format!("BED-{bed}"))
                .replace("080019FFFE1443EC", &format!("080019FFFE1443{bed:02X}"))
                .replace("|0040971443EC|", &format!("|BED-{bed}|"));
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&frame(&message)).await.unwrap();
            Ack::parse(&read_ack(&mut stream).await)
        }));
    }
    for task in tasks {
        let ack = task.await.unwrap();
        assert_eq!(ack.code, "AA", "{}", ack.text);
    }
    let devices = json_with_status(app.get("Device?_summary=count").await, 200).await;
    assert_eq!(devices["total"], 1 + 1 + 8);
    // The adapter's figures.
    let metrics = app
        .client
        .get(app.root("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fhirgate_device_messages_total{adapter=\"mllp\",outcome=\"stored\"} 11"),
        "{metrics}"
    );
    assert!(metrics.contains("fhirgate_device_observations_total{adapter=\"mllp\"}"));
}
