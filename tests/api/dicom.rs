//! Imaging devices: DICOM instances built here (CT images with pixel data, a CT Radiation
//! Dose report) sent to the server's C-STORE SCP over real associations and to
//! `POST /ingest/dicom`, and the FHIR resources they become.

use std::time::Duration;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::association::ClientAssociationOptions;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType, Pdu,
};
use serde_json::Value;

use super::helpers::*;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const DEVICE: &str = "Acme Imaging/Scanner 64/SN-0042";

type Association = AsyncClientAssociation<tokio::net::TcpStream>;

/// UIDs of one test's study, so tests never share one.
struct Study {
    root: String,
}

impl Study {
    fn new() -> Study {
        let n = uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000;
        Study {
            root: format!("1.2.826.0.1.3680043.8.498.{n}"),
        }
    }
    fn uid(&self) -> String {
        format!("{}.1", self.root)
    }
    fn series(&self, n: u32) -> String {
        format!("{}.2.{n}", self.root)
    }
    fn instance(&self, series: u32, n: u32) -> String {
        format!("{}.3.{series}.{n}", self.root)
    }
    fn criteria(&self) -> String {
        format!(
            "ImagingStudy?identifier=urn:dicom:uid|urn:oid:{}",
            self.uid()
        )
    }
}

fn put(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

/// The modules every instance of the study shares: patient, study, equipment.
fn common(study: &Study, class: &str, series: u32, instance: u32) -> InMemDicomObject {
    let mut object = InMemDicomObject::new_empty();
    put(&mut object, tags::SOP_CLASS_UID, VR::UI, class);
    put(
        &mut object,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        &study.instance(series, instance),
    );
    put(&mut object, tags::STUDY_INSTANCE_UID, VR::UI, &study.uid());
    put(
        &mut object,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &study.series(series),
    );
    put(
        &mut object,
        tags::SERIES_NUMBER,
        VR::IS,
        &series.to_string(),
    );
    put(
        &mut object,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &instance.to_string(),
    );
    put(&mut object, tags::PATIENT_ID, VR::LO, "MRN-7001");
    put(
        &mut object,
        tags::ISSUER_OF_PATIENT_ID,
        VR::LO,
        "2.16.840.1.113883.19.5",
    );
    put(&mut object, tags::PATIENT_NAME, VR::PN, "Doe^Jane");
    put(&mut object, tags::PATIENT_BIRTH_DATE, VR::DA, "19700215");
    put(&mut object, tags::PATIENT_SEX, VR::CS, "F");
    put(&mut object, tags::STUDY_DATE, VR::DA, "20240301");
    put(&mut object, tags::STUDY_TIME, VR::TM, "101500");
    put(&mut object, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0100");
    put(&mut object, tags::ACCESSION_NUMBER, VR::SH, "ACC-1001");
    put(
        &mut object,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        "House^Gregory^^Dr.",
    );
    put(&mut object, tags::STUDY_DESCRIPTION, VR::LO, "CT CHEST");
    put(&mut object, tags::MANUFACTURER, VR::LO, "Acme Imaging");
    put(
        &mut object,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        "Scanner 64",
    );
    put(&mut object, tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-0042");
    put(&mut object, tags::STATION_NAME, VR::SH, "CT-ROOM-1");
    object.put(DataElement::new(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs(["VA40".to_string(), "SP2".to_string()].into()),
    ));
    object
}

/// A CT image of 64×64 16-bit pixels (8 KiB: several P-DATA fragments) with its CTDIvol.
fn ct_image(study: &Study, series: u32, instance: u32, ctdi: f64) -> InMemDicomObject {
    let mut object = common(study, uids::CT_IMAGE_STORAGE, series, instance);
    put(&mut object, tags::MODALITY, VR::CS, "CT");
    put(&mut object, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
    put(
        &mut object,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &format!("Series {series}"),
    );
    put(&mut object, tags::ACQUISITION_DATE, VR::DA, "20240301");
    put(&mut object, tags::ACQUISITION_TIME, VR::TM, "101733");
    object.put(DataElement::new(
        tags::CTD_IVOL,
        VR::FD,
        PrimitiveValue::from(ctdi),
    ));
    object.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(64_u16),
    ));
    object.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(64_u16),
    ));
    object.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(16_u16),
    ));
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(
            (0..64 * 64 * 2)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
    ));
    object
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn concept(code: &str, meaning: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![item(vec![
            DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(code)),
            DataElement::new(
                tags::CODING_SCHEME_DESIGNATOR,
                VR::SH,
                PrimitiveValue::from("DCM"),
            ),
            DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
        ])]),
    )
}

fn num(code: &str, meaning: &str, value: &str, unit: &str) -> InMemDicomObject {
    let units = item(vec![
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(unit)),
        DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from("UCUM"),
        ),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(unit)),
    ]);
    item(vec![
        DataElement::new(
            tags::RELATIONSHIP_TYPE,
            VR::CS,
            PrimitiveValue::from("CONTAINS"),
        ),
        DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("NUM")),
        concept(code, meaning),
        DataElement::new(
            tags::MEASURED_VALUE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![item(vec![
                DataElement::new(
                    tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                    VR::SQ,
                    DataSetSequence::from(vec![units]),
                ),
                DataElement::new(tags::NUMERIC_VALUE, VR::DS, PrimitiveValue::from(value)),
            ])]),
        ),
    ])
}

fn container(code: &str, meaning: &str, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    item(vec![
        DataElement::new(
            tags::RELATIONSHIP_TYPE,
            VR::CS,
            PrimitiveValue::from("CONTAINS"),
        ),
        DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("CONTAINER")),
        concept(code, meaning),
        DataElement::new(
            tags::CONTENT_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(children),
        ),
    ])
}

/// A CT Radiation Dose report (TID 10011): the accumulated total DLP and two CT
/// acquisitions, each with its CTDIvol and DLP.
fn dose_report(study: &Study, series: u32) -> InMemDicomObject {
    let mut object = common(study, uids::X_RAY_RADIATION_DOSE_SR_STORAGE, series, 1);
    put(&mut object, tags::MODALITY, VR::CS, "SR");
    put(&mut object, tags::CONTENT_DATE, VR::DA, "20240301");
    put(&mut object, tags::CONTENT_TIME, VR::TM, "103000");
    put(&mut object, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    object.put(concept("113701", "X-Ray Radiation Dose Report"));
    let acquisition = |ctdi: &str, dlp: &str| {
        container(
            "113819",
            "CT Acquisition",
            vec![container(
                "113829",
                "CT Dose",
                vec![
                    num("113830", "Mean CTDIvol", ctdi, "mGy"),
                    num("113838", "DLP", dlp, "mGy.cm"),
                ],
            )],
        )
    };
    object.put(DataElement::new(
        tags::CONTENT_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![
            container(
                "113811",
                "CT Accumulated Dose Data",
                vec![num(
                    "113813",
                    "CT Dose Length Product Total",
                    "612.40",
                    "mGy.cm",
                )],
            ),
            acquisition("12.50", "450.10"),
            acquisition("8.20", "162.30"),
        ]),
    ));
    object
}

fn text_of(object: &InMemDicomObject, tag: Tag) -> String {
    object
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches('\0').to_string())
        .unwrap_or_default()
}

/// The object as a Part-10 file (Explicit VR Little Endian).
fn part10(object: &InMemDicomObject) -> Vec<u8> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(text_of(object, tags::SOP_CLASS_UID))
        .media_storage_sop_instance_uid(text_of(object, tags::SOP_INSTANCE_UID))
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    let mut bytes = Vec::new();
    object
        .clone()
        .with_exact_meta(meta)
        .write_all(&mut bytes)
        .unwrap();
    bytes
}

/// An association to the server's SCP proposing Verification, CT Image Storage (Explicit
/// VR LE) and X-Ray Radiation Dose SR Storage (Implicit VR LE).
async fn connect(app: &TestApp, called: &str) -> Result<Association, dicom_ul::association::Error> {
    connect_to(app.dicom_addr(), called).await
}

/// [`connect`] to any SCP (the agent's).
async fn connect_to(
    address: std::net::SocketAddr,
    called: &str,
) -> Result<Association, dicom_ul::association::Error> {
    ClientAssociationOptions::new()
        .calling_ae_title("TEST-CT")
        .called_ae_title(called)
        .with_presentation_context(uids::VERIFICATION, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])
        .with_presentation_context(
            uids::CT_IMAGE_STORAGE,
            vec![uids::EXPLICIT_VR_LITTLE_ENDIAN],
        )
        .with_presentation_context(
            uids::X_RAY_RADIATION_DOSE_SR_STORAGE,
            vec![uids::IMPLICIT_VR_LITTLE_ENDIAN],
        )
        .read_timeout(Duration::from_secs(30))
        .establish_async(address)
        .await
}

fn command(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
    let command = InMemDicomObject::command_from_element_iter(elements);
    let mut bytes = Vec::new();
    command
        .write_dataset_with_ts(
            &mut bytes,
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
    bytes
}

/// Reads the next DIMSE response: its status and error comment.
async fn response(association: &mut Association) -> (u16, String) {
    let pdu = tokio::time::timeout(Duration::from_secs(30), association.receive())
        .await
        .expect("a response within 30 s")
        .expect("a response PDU");
    let Pdu::PData { data } = pdu else {
        panic!("expected P-DATA, got {pdu:?}");
    };
    assert_eq!(data[0].value_type, PDataValueType::Command);
    let command = InMemDicomObject::read_dataset_with_ts(
        data[0].data.as_slice(),
        &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    let status = command.get(tags::STATUS).unwrap().to_int::<u16>().unwrap();
    (status, text_of(&command, tags::ERROR_COMMENT))
}

fn context_of(association: &Association, class: &str) -> (u8, String) {
    let pc = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.abstract_syntax == class)
        .unwrap_or_else(|| panic!("no presentation context for {class}"));
    (pc.id, pc.transfer_syntax.clone())
}

/// Sends `data` (a data set, or anything) as a C-STORE of `class`/`instance` in 4 KiB
/// fragments and returns the response's status and comment.
async fn c_store_bytes(
    association: &mut Association,
    class: &str,
    instance: &str,
    data: Vec<u8>,
) -> (u16, String) {
    let (context, _) = context_of(association, class);
    let command = command(vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(class),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(0x0001_u16),
        ),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(7_u16)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0_u16)),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0000_u16),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance),
        ),
    ]);
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .await
        .unwrap();
    let chunks: Vec<&[u8]> = data.chunks(4096).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        association
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: context,
                    value_type: PDataValueType::Data,
                    is_last: i + 1 == chunks.len(),
                    data: chunk.to_vec(),
                }],
            })
            .await
            .unwrap();
    }
    response(association).await
}

/// A C-STORE of `object` in the transfer syntax its presentation context was given.
async fn c_store(association: &mut Association, object: &InMemDicomObject) -> (u16, String) {
    let class = text_of(object, tags::SOP_CLASS_UID);
    let instance = text_of(object, tags::SOP_INSTANCE_UID);
    let (_, transfer_syntax) = context_of(association, &class);
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(&transfer_syntax)
        .expect("a known transfer syntax");
    let mut data = Vec::new();
    object.write_dataset_with_ts(&mut data, ts).unwrap();
    c_store_bytes(association, &class, &instance, data).await
}

async fn c_echo(association: &mut Association) -> (u16, String) {
    let (context, _) = context_of(association, uids::VERIFICATION);
    let command = command(vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::VERIFICATION),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(0x0030_u16),
        ),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1_u16)),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0101_u16),
        ),
    ]);
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .await
        .unwrap();
    response(association).await
}

/// Sends every object on one association, asserting success, then releases it.
async fn send_all(app: &TestApp, objects: &[InMemDicomObject]) {
    let mut association = connect(app, "FHIRGATE")
        .await
        .expect("association accepted");
    for object in objects {
        let (status, comment) = c_store(&mut association, object).await;
        assert_eq!(status, 0x0000, "C-STORE failed: {comment}");
    }
    association.release().await.expect("released");
}

async fn search(app: &TestApp, query: &str) -> Vec<Value> {
    let bundle = json_with_status(app.get(query).await, 200).await;
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

async fn the_study(app: &TestApp, study: &Study) -> Value {
    let found = search(app, &study.criteria()).await;
    assert_eq!(found.len(), 1, "one ImagingStudy per study: {found:#?}");
    found[0].clone()
}

async fn spawn_dicom_app() -> TestApp {
    spawn_app_with(|config| config.dicom = Some("127.0.0.1:0".into())).await
}

fn dicom_post(app: &TestApp, bytes: Vec<u8>, content_type: &str) -> reqwest::RequestBuilder {
    let request = app
        .client
        .post(app.root("/ingest/dicom"))
        .header("Content-Type", content_type)
        .body(bytes);
    match &app.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

#[tokio::test]
async fn instances_sent_by_c_store_become_an_imaging_study_with_its_device_patient_and_doses() {
    let app = spawn_dicom_app().await;
    let study = Study::new();
    let mut association = connect(&app, "FHIRGATE")
        .await
        .expect("association accepted");
    assert_eq!(c_echo(&mut association).await.0, 0x0000, "C-ECHO succeeds");
    let first = ct_image(&study, 2, 1, 12.5);
    let other_series = ct_image(&study, 3, 1, 8.25);
    let report = dose_report(&study, 999);
    for object in [&first, &other_series, &report] {
        let (status, comment) = c_store(&mut association, object).await;
        assert_eq!(status, 0x0000, "C-STORE failed: {comment}");
    }
    association.release().await.expect("released");

    // The study: its UID and accession number, patient, start, referrer, series, counts.
    let imaging = the_study(&app, &study).await;
    assert_eq!(imaging["status"], "available");
    let identifiers = imaging["identifier"].as_array().unwrap();
    assert!(identifiers.iter().any(
        |i| i["system"] == "urn:dicom:uid" && i["value"] == format!("urn:oid:{}", study.uid())
    ));
    let accession = identifiers
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "ACSN")
        .expect("the accession number");
    assert_eq!(accession["value"], "ACC-1001");
    assert_eq!(imaging["started"], "2024-03-01T10:15:00+01:00");
    assert_eq!(imaging["referrer"]["display"], "Dr. Gregory House");
    assert_eq!(imaging["description"], "CT CHEST");
    assert_eq!(imaging["numberOfSeries"], 3);
    assert_eq!(imaging["numberOfInstances"], 3);
    let modalities: Vec<&str> = imaging["modality"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["system"], DCM);
            m["code"].as_str().unwrap()
        })
        .collect();
    assert_eq!(modalities, vec!["CT", "SR"]);
    let series = imaging["series"].as_array().unwrap();
    assert_eq!(series[0]["uid"], study.series(2));
    assert_eq!(series[0]["number"], 2);
    assert_eq!(series[0]["modality"]["code"], "CT");
    assert_eq!(series[0]["bodySite"]["code"], "51185008");
    assert_eq!(series[0]["numberOfInstances"], 1);
    assert_eq!(series[0]["instance"][0]["uid"], study.instance(2, 1));
    assert_eq!(series[0]["instance"][0]["number"], 1);
    assert_eq!(
        series[0]["instance"][0]["sopClass"],
        serde_json::json!({"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"})
    );
    assert_eq!(series[1]["uid"], study.series(3));
    assert_eq!(series[2]["modality"]["code"], "SR");

    // The patient, found again by its identifier.
    let subject = imaging["subject"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let patients = search(
        &app,
        "Patient?identifier=urn:oid:2.16.840.1.113883.19.5|MRN-7001",
    )
    .await;
    assert_eq!(patients.len(), 1);
    assert_eq!(
        subject,
        format!("Patient/{}", patients[0]["id"].as_str().unwrap())
    );
    assert_eq!(patients[0]["name"][0]["family"], "Doe");
    assert_eq!(patients[0]["birthDate"], "1970-02-15");
    assert_eq!(patients[0]["gender"], "female");

    // The modality.
    let devices = search(
        &app,
        &format!(
            "Device?identifier=http://fhirgate.dev/fhir/identifier/dicom-device|{}",
            urlencode(DEVICE)
        ),
    )
    .await;
    assert_eq!(devices.len(), 1, "{devices:#?}");
    let device = &devices[0];
    assert_eq!(device["manufacturer"], "Acme Imaging");
    assert_eq!(device["modelNumber"], "Scanner 64");
    assert_eq!(device["serialNumber"], "SN-0042");
    assert_eq!(device["deviceName"][0]["name"], "CT-ROOM-1");
    assert_eq!(device["type"]["coding"][0]["system"], DCM);
    assert_eq!(device["type"]["coding"][0]["code"], "CT");
    let versions: Vec<&str> = device["version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["VA40", "SP2"]);
    let device_ref = format!("Device/{}", device["id"].as_str().unwrap());
    assert_eq!(series[0]["performer"][0]["actor"]["reference"], device_ref);

    // Dose: CTDIvol of each CT image, and the report's acquisitions and total.
    let study_ref = format!("ImagingStudy/{}", imaging["id"].as_str().unwrap());
    let doses = search(&app, &format!("Observation?part-of={study_ref}&_count=50")).await;
    let mut found: Vec<(String, String, String)> = doses
        .iter()
        .map(|o| {
            assert_eq!(o["status"], "final");
            assert_eq!(o["code"]["coding"][0]["system"], DCM);
            assert_eq!(o["category"][0]["coding"][0]["code"], "imaging");
            assert_eq!(o["subject"]["reference"], subject.as_str());
            assert_eq!(o["device"]["reference"], device_ref.as_str());
            assert_eq!(o["valueQuantity"]["system"], "http://unitsofmeasure.org");
            (
                o["code"]["coding"][0]["code"].as_str().unwrap().to_string(),
                o["valueQuantity"]["value"].to_string(),
                o["valueQuantity"]["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let expected: Vec<(String, String, String)> = [
        ("113813", "612.40", "mGy.cm"),
        ("113830", "12.5", "mGy"),
        ("113830", "12.50", "mGy"),
        ("113830", "8.20", "mGy"),
        ("113830", "8.25", "mGy"),
        ("113838", "162.30", "mGy.cm"),
        ("113838", "450.10", "mGy.cm"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(found, expected);

    // Counted like the other adapters.
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
        metrics.contains("fhirgate_device_messages_total{adapter=\"dicom\",outcome=\"stored\"} 3"),
        "{metrics}"
    );
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn the_same_instance_twice_stores_nothing_new() {
    let app = spawn_dicom_app().await;
    let study = Study::new();
    let image = ct_image(&study, 2, 1, 12.5);
    send_all(&app, std::slice::from_ref(&image)).await;
    let before = the_study(&app, &study).await;
    assert_eq!(before["meta"]["versionId"], "1");
    send_all(&app, std::slice::from_ref(&image)).await;
    // And once more through HTTP, as the agent would.
    let answer = json_with_status(
        dicom_post(&app, part10(&image), "application/dicom")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(answer["studyCreated"], false);
    assert_eq!(answer["studyUpdated"], false);
    assert_eq!(answer["observationsCreated"], 0);
    let after = the_study(&app, &study).await;
    assert_eq!(after["meta"]["versionId"], "1", "no new version: {after:#}");
    assert_eq!(after["numberOfInstances"], 1);
    let study_ref = format!("ImagingStudy/{}", after["id"].as_str().unwrap());
    let doses = search(&app, &format!("Observation?part-of={study_ref}")).await;
    assert_eq!(doses.len(), 1);
    // A second instance is a new version with both.
    send_all(&app, &[ct_image(&study, 2, 2, 12.5)]).await;
    let grown = the_study(&app, &study).await;
    assert_eq!(grown["meta"]["versionId"], "2");
    assert_eq!(grown["numberOfInstances"], 2);
    assert_eq!(grown["series"][0]["numberOfInstances"], 2);
    let history = json_with_status(
        app.get(&format!(
            "ImagingStudy/{}/_history",
            grown["id"].as_str().unwrap()
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_association_called_to_another_ae_title_is_rejected() {
    let app = spawn_dicom_app().await;
    let refused = connect(&app, "SOMEONE-ELSE").await;
    match refused {
        Err(dicom_ul::association::Error::Rejected { association_rj, .. }) => {
            assert_eq!(
                association_rj.source,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::CalledAETitleNotRecognized
                )
            );
        }
        Err(other) => panic!("expected an A-ASSOCIATE-RJ, got {other:?}"),
        Ok(_) => panic!("an association to another AE title was accepted"),
    }
    // The right AE title still works.
    let mut association = connect(&app, "FHIRGATE").await.expect("accepted");
    assert_eq!(c_echo(&mut association).await.0, 0x0000);
    association.release().await.unwrap();
}

#[tokio::test]
async fn bad_instances_get_a_failure_status_a_detected_issue_and_the_scp_goes_on() {
    let app = spawn_dicom_app().await;
    let study = Study::new();
    let mut association = connect(&app, "FHIRGATE").await.expect("accepted");
    let (status, _) = c_store(&mut association, &ct_image(&study, 2, 1, 12.5)).await;
    assert_eq!(status, 0x0000);

    // Garbage where the data set should be: a failure, and the association goes on.
    let garbage = (0..3000).map(|i| (i * 37 % 256) as u8).collect::<Vec<u8>>();
    let (status, comment) = c_store_bytes(
        &mut association,
        uids::CT_IMAGE_STORAGE,
        &study.instance(2, 50),
        garbage,
    )
    .await;
    assert!(
        (0xA700..=0xCFFF).contains(&status),
        "a failure status, not {status:#06x} ({comment})"
    );
    assert!(!comment.is_empty(), "the failure says why");

    // An instance without a Patient ID cannot be filed: refused, with the reason.
    let mut anonymous = ct_image(&study, 2, 51, 12.5);
    anonymous.remove_element(tags::PATIENT_ID);
    let (status, comment) = c_store(&mut association, &anonymous).await;
    assert_eq!(status, 0xC000, "{comment}");
    assert!(comment.contains("Patient ID"), "{comment}");

    // The association still stores what is right.
    let (status, comment) = c_store(&mut association, &ct_image(&study, 2, 2, 12.5)).await;
    assert_eq!(status, 0x0000, "{comment}");
    association.release().await.unwrap();
    // And new associations are served.
    send_all(&app, &[ct_image(&study, 2, 3, 12.5)]).await;
    assert_eq!(the_study(&app, &study).await["numberOfInstances"], 3);

    // Both faults are on the modality's Device.
    let devices = search(
        &app,
        &format!(
            "Device?identifier=http://fhirgate.dev/fhir/identifier/dicom-device|{}",
            urlencode(DEVICE)
        ),
    )
    .await;
    let device_ref = format!("Device/{}", devices[0]["id"].as_str().unwrap());
    let issues = search(&app, &format!("DetectedIssue?implicated={device_ref}")).await;
    let mut codes: Vec<&str> = issues
        .iter()
        .map(|i| i["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec!["dicom-instance-refused", "dicom-instance-unreadable"],
        "{issues:#?}"
    );
    assert!(issues
        .iter()
        .all(|i| i["author"]["reference"] == device_ref.as_str()));
}

#[tokio::test]
async fn a_peer_that_aborts_in_the_middle_of_an_instance_leaves_a_detected_issue() {
    let app = spawn_dicom_app().await;
    let study = Study::new();
    // An association that simply aborts after its instances lost nothing.
    let mut association = connect(&app, "FHIRGATE").await.expect("accepted");
    let (status, _) = c_store(&mut association, &ct_image(&study, 2, 1, 12.5)).await;
    assert_eq!(status, 0x0000);
    association.abort().await.unwrap();
    // One that aborts with an instance half sent lost it.
    let mut association = connect(&app, "FHIRGATE").await.expect("accepted");
    let (status, _) = c_store(&mut association, &ct_image(&study, 2, 2, 12.5)).await;
    assert_eq!(status, 0x0000);
    let cut_off = study.instance(2, 3);
    let (context, _) = context_of(&association, uids::CT_IMAGE_STORAGE);
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command(vec![
                    DataElement::new(
                        tags::AFFECTED_SOP_CLASS_UID,
                        VR::UI,
                        PrimitiveValue::from(uids::CT_IMAGE_STORAGE),
                    ),
                    DataElement::new(
                        tags::COMMAND_FIELD,
                        VR::US,
                        PrimitiveValue::from(0x0001_u16),
                    ),
                    DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(9_u16)),
                    DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0_u16)),
                    DataElement::new(
                        tags::COMMAND_DATA_SET_TYPE,
                        VR::US,
                        PrimitiveValue::from(0x0000_u16),
                    ),
                    DataElement::new(
                        tags::AFFECTED_SOP_INSTANCE_UID,
                        VR::UI,
                        PrimitiveValue::from(cut_off.as_str()),
                    ),
                ]),
            }],
        })
        .await
        .unwrap();
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: PDataValueType::Data,
                is_last: false,
                data: vec![0x08, 0x00, 0x05, 0x00],
            }],
        })
        .await
        .unwrap();
    association.abort().await.unwrap();
    let device = search(
        &app,
        &format!(
            "Device?identifier=http://fhirgate.dev/fhir/identifier/dicom-device|{}",
            urlencode(DEVICE)
        ),
    )
    .await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Recorded once the association has ended, asynchronously.
    let mut issues = Vec::new();
    for _ in 0..50 {
        issues = search(&app, &format!("DetectedIssue?implicated=Device/{device}")).await;
        if !issues.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(
        issues[0]["code"]["coding"][0]["code"],
        "dicom-association-aborted"
    );
    assert!(
        issues[0]["detail"].as_str().unwrap().contains(&cut_off),
        "{:#}",
        issues[0]
    );
    // The server keeps serving.
    send_all(&app, &[ct_image(&study, 2, 3, 12.5)]).await;
    assert_eq!(the_study(&app, &study).await["numberOfInstances"], 3);
}

#[tokio::test]
async fn instances_of_one_study_sent_at_once_end_up_in_one_study() {
    let app = spawn_dicom_app().await;
    let study = std::sync::Arc::new(Study::new());
    let mut tasks = Vec::new();
    for series in 1..=3u32 {
        let objects: Vec<InMemDicomObject> = (1..=4)
            .map(|n| ct_image(&study, series, n, 10.0 + f64::from(n)))
            .collect();
        let addr = app.dicom_addr();
        tasks.push(tokio::spawn(async move {
            let mut association = ClientAssociationOptions::new()
                .calling_ae_title("TEST-CT")
                .called_ae_title("FHIRGATE")
                .with_presentation_context(
                    uids::CT_IMAGE_STORAGE,
                    vec![uids::EXPLICIT_VR_LITTLE_ENDIAN],
                )
                .establish_async(addr)
                .await
                .unwrap();
            for object in &objects {
                let (status, comment) = c_store(&mut association, object).await;
                assert_eq!(status, 0, "{comment}");
            }
            association.release().await.unwrap();
        }));
    }
    // And the same study through HTTP at the same time.
    for n in 1..=4u32 {
        let request = dicom_post(
            &app,
            part10(&ct_image(&study, 4, n, 9.0)),
            "application/dicom",
        );
        tasks.push(tokio::spawn(async move {
            let status = request.send().await.unwrap().status().as_u16();
            assert!(status == 200 || status == 201, "{status}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let imaging = the_study(&app, &study).await;
    assert_eq!(imaging["numberOfSeries"], 4);
    assert_eq!(imaging["numberOfInstances"], 16);
    for series in imaging["series"].as_array().unwrap() {
        assert_eq!(
            series["instance"].as_array().unwrap().len(),
            4,
            "{series:#}"
        );
    }
    assert_eq!(search(&app, "Patient?identifier=MRN-7001").await.len(), 1);
    assert_eq!(search(&app, "Device?manufacturer=Acme").await.len(), 1);
}

#[tokio::test]
async fn several_servers_on_one_database_merge_one_study() {
    let app = spawn_dicom_app().await;
    if !app.is_postgres() {
        // One SQLite file is served by one server; several servers share PostgreSQL.
        return;
    }
    let other = app.another_instance().await;
    let study = std::sync::Arc::new(Study::new());
    let mut tasks = Vec::new();
    for (series, addr) in [
        (1u32, app.dicom_addr()),
        (2, other.dicom_addr.unwrap()),
        (3, app.dicom_addr()),
        (4, other.dicom_addr.unwrap()),
    ] {
        let objects: Vec<InMemDicomObject> =
            (1..=3).map(|n| ct_image(&study, series, n, 7.5)).collect();
        tasks.push(tokio::spawn(async move {
            let mut association = ClientAssociationOptions::new()
                .calling_ae_title("TEST-CT")
                .called_ae_title("FHIRGATE")
                .with_presentation_context(
                    uids::CT_IMAGE_STORAGE,
                    vec![uids::EXPLICIT_VR_LITTLE_ENDIAN],
                )
                .establish_async(addr)
                .await
                .unwrap();
            for object in &objects {
                let (status, comment) = c_store(&mut association, object).await;
                assert_eq!(status, 0, "{comment}");
            }
            association.release().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    other.stop().await.unwrap();
    let imaging = the_study(&app, &study).await;
    assert_eq!(imaging["numberOfSeries"], 4);
    assert_eq!(imaging["numberOfInstances"], 12);
    assert_eq!(search(&app, "Patient?identifier=MRN-7001").await.len(), 1);
    assert_eq!(search(&app, "Device?manufacturer=Acme").await.len(), 1);
}

#[tokio::test]
async fn ingest_dicom_takes_part10_files_and_refuses_what_is_not() {
    let app = spawn_dicom_app().await;
    let study = Study::new();
    let file = part10(&ct_image(&study, 2, 1, 12.5));
    let created = json_with_status(
        dicom_post(&app, file.clone(), "application/dicom")
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    assert_eq!(created["studyCreated"], true);
    let imaging = the_study(&app, &study).await;
    assert_eq!(
        created["imagingStudy"],
        format!("ImagingStudy/{}", imaging["id"].as_str().unwrap())
    );
    assert_eq!(created["observations"].as_array().unwrap().len(), 1);
    assert!(created["device"].as_str().unwrap().starts_with("Device/"));

    // A file whose pixel data the agent stripped adds its instance like any other.
    let stripped =
        fhirgate::devices::dicom::strip_pixel_data(&part10(&ct_image(&study, 2, 2, 12.5))).unwrap();
    assert!(stripped.len() < file.len() - 8000);
    let added = json_with_status(
        dicom_post(&app, stripped, "application/dicom")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(added["studyUpdated"], true);
    assert_eq!(the_study(&app, &study).await["numberOfInstances"], 2);

    // Not DICOM: 400 with an OperationOutcome that says so.
    let refused = json_with_status(
        dicom_post(
            &app,
            b"<html>not an image</html>".to_vec(),
            "application/dicom",
        )
        .send()
        .await
        .unwrap(),
        400,
    )
    .await;
    assert!(
        outcome_text(&refused).contains("not a DICOM Part-10 file"),
        "{refused}"
    );
    // Truncated DICOM: 400 too.
    let refused = json_with_status(
        dicom_post(&app, file[..300].to_vec(), "application/dicom")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        outcome_text(&refused).contains("cannot be read"),
        "{refused}"
    );
    // Another media type: 415.
    let refused = json_with_status(
        dicom_post(&app, file.clone(), "application/octet-stream")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    assert!(
        outcome_text(&refused).contains("application/dicom"),
        "{refused}"
    );
    // DICOM that cannot become FHIR: 422 naming what is missing.
    let mut anonymous = ct_image(&study, 2, 3, 12.5);
    anonymous.remove_element(tags::PATIENT_ID);
    let refused = json_with_status(
        dicom_post(&app, part10(&anonymous), "application/dicom")
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert!(
        outcome_text(&refused).contains("Patient ID (0010,0020)"),
        "{refused}"
    );
}

#[tokio::test]
async fn ingest_dicom_needs_a_token_that_may_write_imaging_studies() {
    let app = spawn_dicom_app().await;
    let study = Study::new();
    let file = part10(&ct_image(&study, 2, 1, 12.5));
    let unauthenticated = app
        .client
        .post(app.root("/ingest/dicom"))
        .header("Content-Type", "application/dicom")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let observations_only =
        super::auth::token_from(&app.root(""), &app.database_url, "system/Observation.cru").await;
    let refused = app
        .client
        .post(app.root("/ingest/dicom"))
        .header("Content-Type", "application/dicom")
        .bearer_auth(observations_only)
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // The agent's scopes: read patients, write studies, devices and observations.
    let agent = super::auth::token_from(
        &app.root(""),
        &app.database_url,
        "system/ImagingStudy.cru system/Device.cru system/Observation.cru system/Patient.cru",
    )
    .await;
    let stored = app
        .client
        .post(app.root("/ingest/dicom"))
        .header("Content-Type", "application/dicom")
        .bearer_auth(&agent)
        .body(file)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{}", stored.text().await.unwrap());
    // Without Patient.c it can add instances of patients the server knows.
    let reader = super::auth::token_from(
        &app.root(""),
        &app.database_url,
        "system/ImagingStudy.cru system/Device.cru system/Observation.cru system/Patient.rs",
    )
    .await;
    let added = app
        .client
        .post(app.root("/ingest/dicom"))
        .header("Content-Type", "application/dicom")
        .bearer_auth(&reader)
        .body(part10(&ct_image(&study, 2, 2, 12.5)))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200, "{}", added.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_forwards_instances_from_its_scp_and_its_folder_without_pixel_data() {
    let app = spawn_app().await;
    let dir = super::cli::temp_dir("agent-dicom");
    let drop = dir.join("dicom-drop");
    std::fs::create_dir_all(&drop).unwrap();
    let auth = super::agent::agent_auth(&app, &dir).await;
    let config = super::agent::agent_config(
        &app,
        &dir,
        &auth,
        &format!(
            "[[source]]\nkind = \"dicom\"\nlisten = \"127.0.0.1:0\"\nae_title = \"GATEWAY-CT\"\n\n\
             [[source]]\nkind = \"dicom-folder\"\npath = \"{}\"\n",
            drop.display()
        ),
    );
    let agent = fhirgate::agent::start(config).await.expect("agent starts");
    let study = Study::new();

    // The modality sends an image to the agent's SCP, under the agent's AE title.
    assert!(connect_to(agent.dicom_addrs[0], "FHIRGATE").await.is_err());
    let mut association = connect_to(agent.dicom_addrs[0], "GATEWAY-CT")
        .await
        .expect("association accepted");
    let (status, comment) = c_store(&mut association, &ct_image(&study, 1, 1, 12.5)).await;
    assert_eq!(status, 0x0000, "{comment}");
    association.release().await.expect("released");
    // A dose report is dropped in the watched folder, with something that is not DICOM.
    std::fs::write(drop.join("dose.dcm"), part10(&dose_report(&study, 2))).unwrap();
    std::fs::write(drop.join("junk.dcm"), b"not a DICOM file").unwrap();

    let imaging = super::agent::eventually("the study with both series", || async {
        search(&app, &study.criteria()).await.into_iter().find(|s| {
            s["series"]
                .as_array()
                .is_some_and(|series| series.len() == 2)
        })
    })
    .await;
    assert_eq!(imaging["numberOfInstances"], 2);
    let study_id = imaging["id"].as_str().unwrap().to_string();
    let doses = search(
        &app,
        &format!("Observation?part-of=ImagingStudy/{study_id}&_count=50"),
    )
    .await;
    let codes: Vec<&str> = doses
        .iter()
        .filter_map(|o| o["code"]["coding"][0]["code"].as_str())
        .collect();
    assert!(codes.contains(&"113813"), "total DLP: {codes:?}");
    assert!(codes.contains(&"113830"), "CTDIvol: {codes:?}");
    super::agent::eventually("the files filed", || async {
        (drop.join(".done/dose.dcm").exists() && drop.join(".failed/junk.dcm").exists())
            .then_some(())
    })
    .await;
    let why = std::fs::read_to_string(drop.join(".failed/junk.dcm.error")).unwrap();
    assert!(why.contains("not a DICOM Part-10 file"), "{why}");
    agent.stop().await;
}
