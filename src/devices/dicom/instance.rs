//! One DICOM instance, reduced to the attributes the server maps to FHIR.
//!
//! Instances arrive as Part-10 files (`POST /ingest/dicom`, the agent's watched folder)
//! or as the bare data set of a C-STORE (the SCP). Both are read with dicom-object only
//! up to the pixel data: the server never stores pixels, so it never holds them in
//! memory either. [`strip_pixel_data`] lets the agent upload small files for the same
//! reason.

use std::io::Read;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};

/// SOP classes whose content tree is walked for dose values: X-Ray Radiation Dose SR
/// (which carries the CT Radiation Dose report, TID 10011) and its enhanced form.
pub const DOSE_SR_CLASSES: [&str; 2] = [
    "1.2.840.10008.5.1.4.1.1.88.67",
    "1.2.840.10008.5.1.4.1.1.88.76",
];

/// The first tag not kept: everything from group 7FE0 on is pixel data in one form or
/// another (pixel data, float and double float pixel data), followed at most by
/// signatures and padding, none of which the server maps.
const FIRST_UNREAD: Tag = Tag(0x7FE0, 0x0000);

/// Why bytes are not an instance the server can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DicomError {
    /// Not DICOM at all (no `DICM` prefix).
    #[error("{0}")]
    NotDicom(String),
    /// DICOM, but it cannot be parsed (truncated, malformed, an unknown transfer syntax).
    #[error("{0}")]
    Unreadable(String),
    /// Parsed, but an attribute every instance must have is missing.
    #[error("{0}")]
    Incomplete(String),
}

/// A coded concept of a DICOM code sequence item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Code {
    pub value: String,
    /// Coding scheme designator (`DCM`, `SCT`, `UCUM`…).
    pub scheme: String,
    pub meaning: Option<String>,
}

/// A person name (PN), its alphabetic form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonName {
    pub family: Option<String>,
    pub given: Vec<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
}

impl PersonName {
    /// `Family^Given^Middle^Prefix^Suffix`; ideographic and phonetic groups (after `=`)
    /// are left out.
    pub fn parse(text: &str) -> Option<PersonName> {
        let alphabetic = text.split('=').next().unwrap_or_default();
        let part = |i: usize| {
            alphabetic
                .split('^')
                .nth(i)
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
        };
        let name = PersonName {
            family: part(0),
            given: [part(1), part(2)].into_iter().flatten().collect(),
            prefix: part(3),
            suffix: part(4),
        };
        (name.family.is_some() || !name.given.is_empty()).then_some(name)
    }

    /// As a person reads it: `Dr. John A. Smith Jr.`.
    pub fn display(&self) -> String {
        self.prefix
            .iter()
            .chain(self.given.iter())
            .chain(self.family.iter())
            .chain(self.suffix.iter())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A DICOM date with its optional time and UTC offset, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct When {
    /// `YYYYMMDD`.
    pub date: String,
    /// `HHMMSS.FFFFFF` or a shorter form.
    pub time: Option<String>,
    /// `+HHMM`/`-HHMM`: Timezone Offset From UTC (0008,0201).
    pub offset: Option<String>,
}

/// The patient module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patient {
    /// Patient ID (0010,0020).
    pub id: Option<String>,
    /// Issuer of Patient ID (0010,0021): a local name, an OID or a URI.
    pub issuer: Option<String>,
    /// The issuer's Universal Entity ID and its type (`ISO`, `URI`…), from the Issuer of
    /// Patient ID Qualifiers Sequence (0010,0024).
    pub universal_issuer: Option<(String, String)>,
    pub name: Option<PersonName>,
    /// Patient's Birth Date, `YYYYMMDD`.
    pub birth_date: Option<String>,
    /// Patient's Sex: `M`, `F` or `O`.
    pub sex: Option<String>,
}

/// The equipment that made the instance (General Equipment module).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Equipment {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub station_name: Option<String>,
    pub software_versions: Vec<String>,
    pub institution: Option<String>,
}

/// A dose value of a radiation dose report (or of a CT image's header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoseMeasure {
    /// The concept (DCM 113830 Mean CTDIvol, 113838 DLP, 113813 CT Dose Length Product
    /// Total).
    pub concept: Code,
    /// A FHIR decimal, as precise as the source.
    pub value: String,
    /// The UCUM unit code.
    pub unit: String,
    /// The number (from 1) of the CT Acquisition the value belongs to, in the report's
    /// order; `None` for accumulated values and image attributes.
    pub acquisition: Option<usize>,
    /// The acquisition's protocol (DCM 125203), when the report names it.
    pub protocol: Option<String>,
}

/// What the server maps of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub transfer_syntax: String,
    pub modality: Option<String>,
    pub instance_number: Option<i64>,
    pub series_number: Option<i64>,
    pub study_description: Option<String>,
    pub series_description: Option<String>,
    pub study_id: Option<String>,
    pub study_time: Option<When>,
    pub series_time: Option<When>,
    /// When this instance's data were acquired (or, failing that, its content made).
    pub acquired: Option<When>,
    pub accession_number: Option<String>,
    pub referring_physician: Option<PersonName>,
    pub patient: Patient,
    pub equipment: Equipment,
    /// Body Part Examined (0018,0015), a DICOM defined term such as `CHEST`.
    pub body_part: Option<String>,
    /// The first item of the Anatomic Region Sequence (0008,2218).
    pub anatomic_region: Option<Code>,
    pub number_of_frames: Option<i64>,
    /// Dose values: from a dose report's content tree, or a CT image's CTDIvol (0018,9345).
    pub dose: Vec<DoseMeasure>,
}

/// Reads a Part-10 file (with or without its 128-byte preamble).
pub fn read_part10(bytes: &[u8]) -> Result<Instance, DicomError> {
    check_part10(bytes)?;
    let object = OpenFileOptions::new()
        .read_until(FIRST_UNREAD)
        .from_reader(bytes)
        .map_err(|e| {
            DicomError::Unreadable(format!("the DICOM file cannot be read: {}", chain(&e)))
        })?;
    let transfer_syntax = uid(object.meta().transfer_syntax());
    let class_from_meta = uid(object.meta().media_storage_sop_class_uid());
    let instance_from_meta = uid(object.meta().media_storage_sop_instance_uid());
    Instance::of(
        &object,
        transfer_syntax,
        Some(class_from_meta),
        Some(instance_from_meta),
    )
}

/// Reads the data set of a C-STORE, encoded in the presentation context's transfer
/// syntax; the command's affected SOP class and instance stand in for the file meta.
pub fn read_dataset(
    bytes: &[u8],
    transfer_syntax: &str,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<Instance, DicomError> {
    // A file meta group in front of the data set lets the same reader (which stops
    // before the pixel data) read it as it reads a file.
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax)
        .build()
        .map_err(|e| {
            DicomError::Unreadable(format!("the C-STORE cannot be read: {}", chain(&e)))
        })?;
    let mut head = b"DICM".to_vec();
    meta.write(&mut head).map_err(|e| {
        DicomError::Unreadable(format!("the C-STORE cannot be read: {}", chain(&e)))
    })?;
    let object = OpenFileOptions::new()
        .read_until(FIRST_UNREAD)
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(head.as_slice().chain(bytes))
        .map_err(|e| {
            DicomError::Unreadable(format!(
                "the C-STORE data set cannot be read: {}",
                chain(&e)
            ))
        })?;
    Instance::of(
        &object,
        uid(transfer_syntax),
        Some(uid(sop_class_uid)),
        Some(uid(sop_instance_uid)),
    )
}

/// A C-STORE data set as a Part-10 file (preamble, `DICM`, file meta from the command's
/// SOP class and instance and the presentation context's transfer syntax): what the
/// agent forwards of an instance it received.
pub fn part10_from_dataset(
    bytes: &[u8],
    transfer_syntax: &str,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<Vec<u8>, DicomError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax)
        .build()
        .map_err(|e| {
            DicomError::Unreadable(format!(
                "the C-STORE cannot be written as a file: {}",
                chain(&e)
            ))
        })?;
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    meta.write(&mut file).map_err(|e| {
        DicomError::Unreadable(format!(
            "the C-STORE cannot be written as a file: {}",
            chain(&e)
        ))
    })?;
    file.extend_from_slice(bytes);
    Ok(file)
}

/// The same Part-10 file without its pixel data (group 7FE0 and what follows it, and
/// overlay bitmaps), re-encoded in its own transfer syntax: what the server maps, at a
/// fraction of the size.
pub fn strip_pixel_data(bytes: &[u8]) -> Result<Vec<u8>, DicomError> {
    check_part10(bytes)?;
    let mut object = OpenFileOptions::new()
        .read_until(FIRST_UNREAD)
        .from_reader(bytes)
        .map_err(|e| {
            DicomError::Unreadable(format!("the DICOM file cannot be read: {}", chain(&e)))
        })?;
    // Overlay Data (60xx,3000): bitmaps drawn over the image, pixel data too.
    object.retain(|element| {
        let tag = element.header().tag;
        !(tag.group() & 0xFF00 == 0x6000 && tag.element() == 0x3000)
    });
    let mut out = Vec::with_capacity(bytes.len().min(64 * 1024));
    object.write_all(&mut out).map_err(|e| {
        DicomError::Unreadable(format!(
            "the DICOM file cannot be written again without its pixel data: {}",
            chain(&e)
        ))
    })?;
    Ok(out)
}

/// A Part-10 file starts with `DICM`, after a 128-byte preamble or (as some tools write
/// them) right away.
fn check_part10(bytes: &[u8]) -> Result<(), DicomError> {
    let preamble = bytes.len() >= 132 && &bytes[128..132] == b"DICM";
    if preamble || bytes.starts_with(b"DICM") {
        return Ok(());
    }
    Err(DicomError::NotDicom(format!(
        "the {} bytes are not a DICOM Part-10 file: a file starts with a 128-byte preamble \
         and \"DICM\", then the file meta information (send the instance as written by the \
         modality or a DICOM toolkit, not a bare data set or an image export)",
        bytes.len()
    )))
}

/// An error with its causes, so the client learns what dicom-rs found wrong.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// A UID without its padding.
fn uid(text: &str) -> String {
    text.trim_end_matches(['\0', ' ']).trim().to_string()
}

fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = object.get(tag)?;
    let value = element.to_str().ok()?;
    let value = value.trim_end_matches('\0').trim();
    (!value.is_empty()).then(|| value.to_string())
}

fn texts(object: &InMemDicomObject, tag: Tag) -> Vec<String> {
    object
        .get(tag)
        .and_then(|e| e.to_multi_str().ok().map(|values| values.to_vec()))
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.trim_end_matches('\0').trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn integer(object: &InMemDicomObject, tag: Tag) -> Option<i64> {
    text(object, tag)?
        .parse::<f64>()
        .ok()
        .and_then(|n| (n.fract() == 0.0 && n.abs() < 1e15).then_some(n as i64))
}

fn items(object: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    object.get(tag).and_then(|e| e.items()).unwrap_or_default()
}

fn when(object: &InMemDicomObject, date: Tag, time: Tag, offset: &Option<String>) -> Option<When> {
    let date = text(object, date)?;
    Some(When {
        date,
        // ACR-NEMA style `HH:MM:SS` is still seen.
        time: text(object, time).map(|t| t.replace(':', "")),
        offset: offset.clone(),
    })
}

fn code(item: &InMemDicomObject) -> Option<Code> {
    Some(Code {
        value: text(item, tags::CODE_VALUE)
            .or_else(|| text(item, tags::LONG_CODE_VALUE))
            .or_else(|| text(item, tags::URN_CODE_VALUE))?,
        scheme: text(item, tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default(),
        meaning: text(item, tags::CODE_MEANING),
    })
}

/// A DS or FD value as a FHIR decimal (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`):
/// the text itself when it is one (keeping its precision), else the number re-written.
pub fn decimal(text: &str) -> Option<String> {
    let text = text.trim();
    let number: f64 = text.parse().ok()?;
    if !number.is_finite() {
        return None;
    }
    let body = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let fhir = digits(whole)
        && (whole == "0" || !whole.starts_with('0'))
        && fraction.is_none_or(digits)
        && exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    Some(if fhir {
        text.to_string()
    } else {
        number.to_string()
    })
}

impl Instance {
    fn of(
        object: &InMemDicomObject,
        transfer_syntax: String,
        class_from_meta: Option<String>,
        instance_from_meta: Option<String>,
    ) -> Result<Instance, DicomError> {
        let required = |tag: Tag, name: &str, fallback: Option<String>| {
            text(object, tag)
                .map(|v| uid(&v))
                .or(fallback.filter(|v| !v.is_empty()))
                .ok_or_else(|| {
                    DicomError::Incomplete(format!(
                        "the instance has no {name} ({:04X},{:04X}); every DICOM instance needs one",
                        tag.group(),
                        tag.element()
                    ))
                })
        };
        let sop_class_uid = required(tags::SOP_CLASS_UID, "SOPClassUID", class_from_meta)?;
        let sop_instance_uid =
            required(tags::SOP_INSTANCE_UID, "SOPInstanceUID", instance_from_meta)?;
        let study_instance_uid = required(tags::STUDY_INSTANCE_UID, "StudyInstanceUID", None)?;
        let series_instance_uid = required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID", None)?;
        let offset = text(object, tags::TIMEZONE_OFFSET_FROM_UTC);
        let universal_issuer = items(object, tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE)
            .first()
            .and_then(|item| {
                Some((
                    text(item, tags::UNIVERSAL_ENTITY_ID)?,
                    text(item, tags::UNIVERSAL_ENTITY_ID_TYPE).unwrap_or_default(),
                ))
            });
        let acquired = when(
            object,
            tags::ACQUISITION_DATE,
            tags::ACQUISITION_TIME,
            &offset,
        )
        .or_else(|| {
            // AcquisitionDateTime (DT) carries its own offset when it has one.
            let dt = text(object, tags::ACQUISITION_DATE_TIME)?;
            let split = dt.find(['+', '-']).unwrap_or(dt.len());
            let (body, zone) = dt.split_at(split);
            (body.len() >= 8).then(|| When {
                date: body[..8].to_string(),
                time: (body.len() > 8).then(|| body[8..].to_string()),
                offset: if zone.is_empty() {
                    offset.clone()
                } else {
                    Some(zone.to_string())
                },
            })
        })
        .or_else(|| when(object, tags::CONTENT_DATE, tags::CONTENT_TIME, &offset));
        let mut instance = Instance {
            sop_class_uid,
            sop_instance_uid,
            study_instance_uid,
            series_instance_uid,
            transfer_syntax,
            modality: text(object, tags::MODALITY),
            instance_number: integer(object, tags::INSTANCE_NUMBER),
            series_number: integer(object, tags::SERIES_NUMBER),
            study_description: text(object, tags::STUDY_DESCRIPTION),
            series_description: text(object, tags::SERIES_DESCRIPTION),
            study_id: text(object, tags::STUDY_ID),
            study_time: when(object, tags::STUDY_DATE, tags::STUDY_TIME, &offset),
            series_time: when(object, tags::SERIES_DATE, tags::SERIES_TIME, &offset),
            acquired,
            accession_number: text(object, tags::ACCESSION_NUMBER),
            referring_physician: text(object, tags::REFERRING_PHYSICIAN_NAME)
                .and_then(|n| PersonName::parse(&n)),
            patient: Patient {
                id: text(object, tags::PATIENT_ID),
                issuer: text(object, tags::ISSUER_OF_PATIENT_ID),
                universal_issuer,
                name: text(object, tags::PATIENT_NAME).and_then(|n| PersonName::parse(&n)),
                birth_date: text(object, tags::PATIENT_BIRTH_DATE),
                sex: text(object, tags::PATIENT_SEX),
            },
            equipment: Equipment {
                manufacturer: text(object, tags::MANUFACTURER),
                model: text(object, tags::MANUFACTURER_MODEL_NAME),
                serial_number: text(object, tags::DEVICE_SERIAL_NUMBER),
                station_name: text(object, tags::STATION_NAME),
                software_versions: texts(object, tags::SOFTWARE_VERSIONS),
                institution: text(object, tags::INSTITUTION_NAME),
            },
            body_part: text(object, tags::BODY_PART_EXAMINED),
            anatomic_region: items(object, tags::ANATOMIC_REGION_SEQUENCE)
                .first()
                .and_then(code),
            number_of_frames: integer(object, tags::NUMBER_OF_FRAMES),
            dose: Vec::new(),
        };
        if DOSE_SR_CLASSES.contains(&instance.sop_class_uid.as_str()) {
            let mut walk = DoseWalk::default();
            walk.items(items(object, tags::CONTENT_SEQUENCE), None);
            instance.dose = walk.found;
        } else if let Some(ctdi) = object
            .get(tags::CTD_IVOL)
            .and_then(|e| e.to_float64().ok())
            .and_then(|v| decimal(&v.to_string()))
        {
            // A CT image states the CTDIvol of its acquisition (Enhanced CT keeps it in
            // per-frame sequences, not read here).
            instance.dose.push(DoseMeasure {
                concept: Code {
                    value: "113830".into(),
                    scheme: "DCM".into(),
                    meaning: Some("Mean CTDIvol".into()),
                },
                value: ctdi,
                unit: "mGy".into(),
                acquisition: None,
                protocol: None,
            });
        }
        Ok(instance)
    }
}

/// The dose concepts read from a report, with the UCUM unit each is expected in.
pub const DOSE_CONCEPTS: [(&str, &str, &str); 3] = [
    ("113830", "Mean CTDIvol", "mGy"),
    ("113838", "DLP", "mGy.cm"),
    ("113813", "CT Dose Length Product Total", "mGy.cm"),
];

/// A walk of an SR content tree (TID 10011 CT Radiation Dose): each CT Acquisition
/// container (DCM 113819) numbers the values found under it.
#[derive(Default)]
struct DoseWalk {
    acquisitions: usize,
    found: Vec<DoseMeasure>,
}

/// The acquisition a value belongs to: its number and protocol.
#[derive(Clone)]
struct Acquisition {
    number: usize,
    protocol: Option<String>,
}

impl DoseWalk {
    fn items(&mut self, items: &[InMemDicomObject], acquisition: Option<&Acquisition>) {
        for item in items {
            let concept = items_of(item, tags::CONCEPT_NAME_CODE_SEQUENCE)
                .first()
                .and_then(code);
            let value_type = text(item, tags::VALUE_TYPE).unwrap_or_default();
            let is = |value: &str| {
                concept
                    .as_ref()
                    .is_some_and(|c| c.value == value && c.scheme == "DCM")
            };
            if value_type == "CONTAINER" && is("113819") {
                self.acquisitions += 1;
                let children = items_of(item, tags::CONTENT_SEQUENCE);
                let protocol = children.iter().find_map(|child| {
                    let name = items_of(child, tags::CONCEPT_NAME_CODE_SEQUENCE)
                        .first()
                        .and_then(code)?;
                    (name.value == "125203" && name.scheme == "DCM")
                        .then(|| text(child, tags::TEXT_VALUE))
                        .flatten()
                });
                let this = Acquisition {
                    number: self.acquisitions,
                    protocol,
                };
                self.items(children, Some(&this));
                continue;
            }
            if value_type == "NUM" {
                if let Some((code, meaning, unit)) =
                    DOSE_CONCEPTS.iter().find(|(code, _, _)| is(code))
                {
                    if let Some(measure) = self.measure(item, code, meaning, unit, acquisition) {
                        self.found.push(measure);
                    }
                }
            }
            self.items(items_of(item, tags::CONTENT_SEQUENCE), acquisition);
        }
    }

    fn measure(
        &self,
        item: &InMemDicomObject,
        code: &str,
        meaning: &str,
        expected_unit: &str,
        acquisition: Option<&Acquisition>,
    ) -> Option<DoseMeasure> {
        let measured = items_of(item, tags::MEASURED_VALUE_SEQUENCE).first()?;
        let value = decimal(&text(measured, tags::NUMERIC_VALUE)?)?;
        // The report's own unit when it is UCUM (the standard says it is); the concept's
        // usual unit otherwise.
        let unit = items_of(measured, tags::MEASUREMENT_UNITS_CODE_SEQUENCE)
            .first()
            .and_then(code_of_unit)
            .unwrap_or_else(|| expected_unit.to_string());
        Some(DoseMeasure {
            concept: Code {
                value: code.into(),
                scheme: "DCM".into(),
                meaning: Some(meaning.into()),
            },
            value,
            unit,
            acquisition: acquisition.map(|a| a.number),
            protocol: acquisition.and_then(|a| a.protocol.clone()),
        })
    }
}

fn code_of_unit(item: &InMemDicomObject) -> Option<String> {
    let unit = code(item)?;
    (unit.scheme == "UCUM").then_some(unit.value)
}

fn items_of(object: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    items(object, tag)
}

#[cfg(test)]
pub(crate) mod samples {
    //! DICOM objects built in code for the tests: a CT image and a CT dose report.
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    pub const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
    pub const SERIES: &str = "1.2.826.0.1.3680043.8.498.1.1";

    fn put(object: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: &str) {
        object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    }

    fn common(object: &mut InMemDicomObject, class: &str, instance: &str, series: &str) {
        put(object, tags::SOP_CLASS_UID, VR::UI, class);
        put(object, tags::SOP_INSTANCE_UID, VR::UI, instance);
        put(object, tags::STUDY_INSTANCE_UID, VR::UI, STUDY);
        put(object, tags::SERIES_INSTANCE_UID, VR::UI, series);
        put(object, tags::PATIENT_ID, VR::LO, "MRN-42");
        put(object, tags::ISSUER_OF_PATIENT_ID, VR::LO, "1.2.3.4.5");
        put(object, tags::PATIENT_NAME, VR::PN, "Doe^Jane^Q");
        put(object, tags::PATIENT_BIRTH_DATE, VR::DA, "19700215");
        put(object, tags::PATIENT_SEX, VR::CS, "F");
        put(object, tags::STUDY_DATE, VR::DA, "20240301");
        put(object, tags::STUDY_TIME, VR::TM, "101500");
        put(object, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0100");
        put(object, tags::ACCESSION_NUMBER, VR::SH, "ACC-1001");
        put(
            object,
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            "House^Gregory^^Dr.",
        );
        put(object, tags::STUDY_DESCRIPTION, VR::LO, "CT CHEST");
        put(object, tags::MANUFACTURER, VR::LO, "Acme Imaging");
        put(object, tags::MANUFACTURER_MODEL_NAME, VR::LO, "Scanner 64");
        put(object, tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-0042");
        put(object, tags::STATION_NAME, VR::SH, "CT-ROOM-1");
        object.put(DataElement::new(
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            PrimitiveValue::Strs(["VA40".to_string(), "SP2".to_string()].into()),
        ));
    }

    /// A CT image with CTDIvol and 4×4 pixels.
    pub fn ct_image(instance: &str, series: &str, number: i32) -> InMemDicomObject {
        let mut object = InMemDicomObject::new_empty();
        common(&mut object, uids::CT_IMAGE_STORAGE, instance, series);
        put(&mut object, tags::MODALITY, VR::CS, "CT");
        put(&mut object, tags::SERIES_NUMBER, VR::IS, "2");
        put(
            &mut object,
            tags::INSTANCE_NUMBER,
            VR::IS,
            &number.to_string(),
        );
        put(&mut object, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
        put(&mut object, tags::ACQUISITION_DATE, VR::DA, "20240301");
        put(&mut object, tags::ACQUISITION_TIME, VR::TM, "101733.5");
        object.put(DataElement::new(
            tags::CTD_IVOL,
            VR::FD,
            PrimitiveValue::from(12.5_f64),
        ));
        object.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(4_u16),
        ));
        object.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(4_u16),
        ));
        object.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![7_u8; 32]),
        ));
        object
    }

    fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(elements)
    }

    fn concept(code: &str, scheme: &str, meaning: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![item(vec![
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(code)),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from(scheme),
                ),
                DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
            ])]),
        )
    }

    fn num(code: &str, meaning: &str, value: &str, unit: &str) -> InMemDicomObject {
        item(vec![
            DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("NUM")),
            concept(code, "DCM", meaning),
            DataElement::new(
                tags::MEASURED_VALUE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![item(vec![
                    DataElement::new(tags::NUMERIC_VALUE, VR::DS, PrimitiveValue::from(value)),
                    DataElement::new(
                        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                        VR::SQ,
                        DataSetSequence::from(vec![item(vec![
                            DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(unit)),
                            DataElement::new(
                                tags::CODING_SCHEME_DESIGNATOR,
                                VR::SH,
                                PrimitiveValue::from("UCUM"),
                            ),
                        ])]),
                    ),
                ])]),
            ),
        ])
    }

    fn container(code: &str, meaning: &str, children: Vec<InMemDicomObject>) -> InMemDicomObject {
        item(vec![
            DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("CONTAINER")),
            concept(code, "DCM", meaning),
            DataElement::new(
                tags::CONTENT_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(children),
            ),
        ])
    }

    /// A CT Radiation Dose report: two acquisitions (CTDIvol and DLP each) and the total.
    pub fn dose_report(instance: &str, series: &str) -> InMemDicomObject {
        let mut object = InMemDicomObject::new_empty();
        common(
            &mut object,
            uids::X_RAY_RADIATION_DOSE_SR_STORAGE,
            instance,
            series,
        );
        put(&mut object, tags::MODALITY, VR::CS, "SR");
        put(&mut object, tags::SERIES_NUMBER, VR::IS, "999");
        put(&mut object, tags::INSTANCE_NUMBER, VR::IS, "1");
        put(&mut object, tags::CONTENT_DATE, VR::DA, "20240301");
        put(&mut object, tags::CONTENT_TIME, VR::TM, "103000");
        put(&mut object, tags::VALUE_TYPE, VR::CS, "CONTAINER");
        let protocol = item(vec![
            DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("TEXT")),
            concept("125203", "DCM", "Acquisition Protocol"),
            DataElement::new(
                tags::TEXT_VALUE,
                VR::UT,
                PrimitiveValue::from("Thorax routine"),
            ),
        ]);
        let acquisition = |ctdi: &str, dlp: &str| {
            container(
                "113819",
                "CT Acquisition",
                vec![
                    protocol.clone(),
                    container(
                        "113829",
                        "CT Dose",
                        vec![
                            num("113830", "Mean CTDIvol", ctdi, "mGy"),
                            num("113838", "DLP", dlp, "mGy.cm"),
                        ],
                    ),
                ],
            )
        };
        object.put(concept("113701", "DCM", "X-Ray Radiation Dose Report"));
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
                acquisition("8.2", "162.30"),
            ]),
        ));
        object
    }

    /// The object as a Part-10 file in the given transfer syntax.
    pub fn part10(object: InMemDicomObject, transfer_syntax: &str) -> Vec<u8> {
        let class = object
            .get(tags::SOP_CLASS_UID)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.to_string())
            .unwrap_or_default();
        let instance = object
            .get(tags::SOP_INSTANCE_UID)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.to_string())
            .unwrap_or_default();
        let file = object.with_exact_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(class)
                .media_storage_sop_instance_uid(instance)
                .transfer_syntax(transfer_syntax)
                .build()
                .unwrap(),
        );
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).unwrap();
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;
    use dicom_dictionary_std::uids;

    #[test]
    fn a_ct_image_is_read_up_to_its_pixel_data() {
        let bytes = part10(
            ct_image("1.2.3.1", SERIES, 7),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        );
        let instance = read_part10(&bytes).unwrap();
        assert_eq!(instance.sop_class_uid, uids::CT_IMAGE_STORAGE);
        assert_eq!(instance.sop_instance_uid, "1.2.3.1");
        assert_eq!(instance.study_instance_uid, STUDY);
        assert_eq!(instance.series_instance_uid, SERIES);
        assert_eq!(instance.modality.as_deref(), Some("CT"));
        assert_eq!(instance.instance_number, Some(7));
        assert_eq!(instance.series_number, Some(2));
        assert_eq!(instance.patient.id.as_deref(), Some("MRN-42"));
        assert_eq!(
            instance.patient.name.as_ref().unwrap().display(),
            "Jane Q Doe"
        );
        assert_eq!(
            instance.referring_physician.as_ref().unwrap().display(),
            "Dr. Gregory House"
        );
        assert_eq!(
            instance.equipment.software_versions,
            vec!["VA40".to_string(), "SP2".to_string()]
        );
        assert_eq!(
            instance.study_time,
            Some(When {
                date: "20240301".into(),
                time: Some("101500".into()),
                offset: Some("+0100".into())
            })
        );
        assert_eq!(instance.dose.len(), 1);
        assert_eq!(instance.dose[0].value, "12.5");
        assert_eq!(instance.dose[0].unit, "mGy");
    }

    #[test]
    fn implicit_little_endian_reads_the_same() {
        let explicit = read_part10(&part10(
            ct_image("1.2.3.1", SERIES, 7),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ))
        .unwrap();
        let implicit = read_part10(&part10(
            ct_image("1.2.3.1", SERIES, 7),
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
        ))
        .unwrap();
        assert_eq!(
            Instance {
                transfer_syntax: String::new(),
                ..explicit
            },
            Instance {
                transfer_syntax: String::new(),
                ..implicit
            }
        );
    }

    #[test]
    fn a_dose_report_yields_each_acquisition_and_the_total() {
        let bytes = part10(
            dose_report("1.2.3.9", "1.2.3.99"),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        );
        let instance = read_part10(&bytes).unwrap();
        let found: Vec<(&str, &str, &str, Option<usize>)> = instance
            .dose
            .iter()
            .map(|d| {
                (
                    d.concept.value.as_str(),
                    d.value.as_str(),
                    d.unit.as_str(),
                    d.acquisition,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("113813", "612.40", "mGy.cm", None),
                ("113830", "12.50", "mGy", Some(1)),
                ("113838", "450.10", "mGy.cm", Some(1)),
                ("113830", "8.2", "mGy", Some(2)),
                ("113838", "162.30", "mGy.cm", Some(2)),
            ]
        );
        assert_eq!(instance.dose[1].protocol.as_deref(), Some("Thorax routine"));
    }

    #[test]
    fn bytes_that_are_not_dicom_are_named_as_such() {
        let error = read_part10(b"hello, this is not an image").unwrap_err();
        assert!(matches!(error, DicomError::NotDicom(_)), "{error:?}");
        assert!(error.to_string().contains("not a DICOM Part-10 file"));
        let mut truncated = part10(
            ct_image("1.2.3.1", SERIES, 7),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        );
        truncated.truncate(200);
        let error = read_part10(&truncated).unwrap_err();
        assert!(matches!(error, DicomError::Unreadable(_)), "{error:?}");
    }

    #[test]
    fn stripping_keeps_everything_but_the_pixels() {
        let bytes = part10(
            ct_image("1.2.3.1", SERIES, 7),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        );
        let stripped = strip_pixel_data(&bytes).unwrap();
        assert!(
            stripped.len() < bytes.len() - 32,
            "{} vs {}",
            stripped.len(),
            bytes.len()
        );
        assert_eq!(
            read_part10(&stripped).unwrap(),
            read_part10(&bytes).unwrap()
        );
        let full = dicom_object::from_reader(stripped.as_slice()).unwrap();
        assert!(full.get(dicom_dictionary_std::tags::PIXEL_DATA).is_none());
        assert!(strip_pixel_data(b"garbage").is_err());
    }

    #[test]
    fn a_c_store_data_set_reads_like_a_file() {
        let object = ct_image("1.2.3.1", SERIES, 7);
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut data = Vec::new();
        object.write_dataset_with_ts(&mut data, &ts).unwrap();
        let instance = read_dataset(
            &data,
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::CT_IMAGE_STORAGE,
            "1.2.3.1",
        )
        .unwrap();
        assert_eq!(instance.sop_instance_uid, "1.2.3.1");
        assert_eq!(instance.patient.id.as_deref(), Some("MRN-42"));
        assert!(read_dataset(
            b"\x01\x02",
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::CT_IMAGE_STORAGE,
            "1"
        )
        .is_err());
    }

    #[test]
    fn other_transfer_syntaxes_read_the_same() {
        let reference = read_part10(&part10(
            ct_image("1.2.3.1", SERIES, 7),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ))
        .unwrap();
        // Explicit VR Big Endian is retired, yet older modalities still send it.
        let big_endian = "1.2.840.10008.1.2.2";
        for ts in [big_endian, uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN] {
            let instance = read_part10(&part10(ct_image("1.2.3.1", SERIES, 7), ts))
                .unwrap_or_else(|e| panic!("{ts}: {e}"));
            assert_eq!(instance.transfer_syntax, ts);
            assert_eq!(
                Instance {
                    transfer_syntax: String::new(),
                    ..instance
                },
                Instance {
                    transfer_syntax: String::new(),
                    ..reference.clone()
                },
                "{ts}"
            );
        }
        // JPEG Baseline: encapsulated pixel data this server has no codec for, and needs
        // none (it reads the attributes, then strips the fragments).
        let mut compressed = ct_image("1.2.3.1", SERIES, 7);
        compressed.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::PIXEL_DATA,
            dicom_core::VR::OB,
            dicom_core::value::PixelFragmentSequence::new_fragments(vec![vec![
                0xFF, 0xD8, 0xFF, 0xD9,
            ]]),
        ));
        let bytes = part10(compressed, uids::JPEG_BASELINE8_BIT);
        let instance = read_part10(&bytes).unwrap();
        assert_eq!(instance.sop_instance_uid, "1.2.3.1");
        let stripped = strip_pixel_data(&bytes).unwrap();
        assert!(stripped.len() < bytes.len());
        assert_eq!(read_part10(&stripped).unwrap(), instance);
    }

    #[test]
    fn decimals_keep_their_text_when_fhir_allows_it() {
        assert_eq!(decimal("12.50").as_deref(), Some("12.50"));
        assert_eq!(decimal(" 8.2 ").as_deref(), Some("8.2"));
        assert_eq!(decimal("+1.5E+01").as_deref(), Some("15"));
        assert_eq!(decimal("012.5").as_deref(), Some("12.5"));
        assert_eq!(decimal("abc"), None);
        assert_eq!(decimal("NaN"), None);
    }
}
