//! `agent.toml`: where the agent uploads, where it queues, how it authenticates, and the
//! sources it reads.
//!
//! ```toml
//! server = "https://fhir.hospital.example/fhir"
//! queue = "/var/lib/fhirgate-agent/queue.db"
//! max_queue_bytes = 1073741824        # optional, 1 GiB by default
//!
//! [auth]                              # optional: SMART backend services
//! client_id = "ward-7-gateway"
//! kid = "gateway-key-1"               # the key's id in the client's registered JWKS
//! private_key = "/etc/fhirgate-agent/key.pem"
//! token_url = "https://fhir.hospital.example/auth/token"
//!
//! [[source]]
//! kind = "serial"
//! port = "/dev/ttyUSB0"
//! baud = 9600
//! protocol = "nonin"                  # nonin | masimo | astm
//! patient = "Patient/p-42"            # or an identifier: "http://hospital.example/mrn|123"
//!
//! [[source]]
//! kind = "dicom-folder"
//! path = "/srv/dicom-drop"
//!
//! [[source]]
//! kind = "dicom"                      # a C-STORE SCP for the modality
//! listen = "0.0.0.0:11112"
//! ae_title = "FHIRGATE"               # optional
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::devices::reading::PatientRef;

pub const DEFAULT_MAX_QUEUE_BYTES: i64 = 1 << 30;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The FHIR base of the server.
    pub server: String,
    /// The store-and-forward queue file.
    pub queue: PathBuf,
    pub max_queue_bytes: Option<i64>,
    /// How often the state of each device is sent to the server, in seconds [default: 30].
    pub heartbeat_seconds: Option<u64>,
    pub auth: Option<AuthConfig>,
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub client_id: String,
    /// The `kid` of the key in the JWKS registered for the client.
    pub kid: String,
    /// The PEM private key the client's assertions are signed with.
    pub private_key: PathBuf,
    pub token_url: String,
    /// Scopes to ask for [default: `credentials::DEFAULT_SCOPE`, writing and searching
    /// Observation, Device, DeviceMetric, DetectedIssue, ImagingStudy; reading Patient].
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Nonin,
    Masimo,
    Astm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    Serial {
        port: String,
        baud: u32,
        protocol: Protocol,
        #[serde(default)]
        parity: Parity,
        #[serde(default = "eight")]
        data_bits: u8,
        #[serde(default = "one")]
        stop_bits: u8,
        patient: Option<String>,
        /// The instrument's serial number, when the protocol does not say it.
        device_serial: Option<String>,
    },
    DicomFolder {
        path: PathBuf,
    },
    /// A C-STORE SCP the modality sends to.
    Dicom {
        /// Where to listen, e.g. `0.0.0.0:11112`.
        listen: String,
        /// The AE title the modality calls [default: FHIRGATE].
        ae_title: Option<String>,
    },
    Hl7Folder {
        path: PathBuf,
    },
}

fn eight() -> u8 {
    8
}

fn one() -> u8 {
    1
}

impl AgentConfig {
    /// Reads and checks a configuration file; the error says what to fix and where.
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if !(config.server.starts_with("http://") || config.server.starts_with("https://")) {
            return Err(format!(
                "server {:?} must be the FHIR base URL, e.g. https://fhir.example.org/fhir",
                config.server
            ));
        }
        if config.max_queue_bytes.is_some_and(|b| b <= 0) {
            return Err("max_queue_bytes must be positive".into());
        }
        for (index, source) in config.sources.iter().enumerate() {
            if let SourceConfig::Dicom {
                ae_title: Some(title),
                ..
            } = source
            {
                // An AE title is 1 to 16 characters of the default repertoire, no backslash.
                let valid = !title.trim().is_empty()
                    && title.len() <= 16
                    && title.chars().all(|c| (' '..='~').contains(&c) && c != '\\');
                if !valid {
                    return Err(format!(
                        "source[{index}]: ae_title {title:?} must be 1 to 16 printable ASCII characters"
                    ));
                }
            }
            if let SourceConfig::Serial {
                data_bits,
                stop_bits,
                baud,
                patient,
                ..
            } = source
            {
                let at = format!("source[{index}]");
                if !(5..=8).contains(data_bits) {
                    return Err(format!("{at}: data_bits must be 5 to 8, not {data_bits}"));
                }
                if !matches!(stop_bits, 1 | 2) {
                    return Err(format!("{at}: stop_bits must be 1 or 2, not {stop_bits}"));
                }
                if *baud == 0 {
                    return Err(format!("{at}: baud must be positive"));
                }
                if let Some(patient) = patient {
                    patient_ref(patient).map_err(|e| format!("{at}: {e}"))?;
                }
            }
        }
        Ok(config)
    }

    pub fn max_queue_bytes(&self) -> i64 {
        self.max_queue_bytes.unwrap_or(DEFAULT_MAX_QUEUE_BYTES)
    }
}

/// A source's `patient`: `Patient/ID` or an identifier `system|value`.
pub fn patient_ref(text: &str) -> Result<PatientRef, String> {
    if let Some(id) = text.strip_prefix("Patient/") {
        if crate::fhir::resource::is_valid_id(id) {
            return Ok(PatientRef::Id(id.to_string()));
        }
    } else if let Some((system, value)) = text.split_once('|') {
        if !value.is_empty() {
            return Ok(PatientRef::Identifier {
                system: Some(system.to_string()).filter(|s| !s.is_empty()),
                value: value.to_string(),
            });
        }
    }
    Err(format!(
        "patient {text:?} must be Patient/<id> or an identifier system|value"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        server = "https://fhir.hospital.example/fhir"
        queue = "/var/lib/fhirgate-agent/queue.db"

        [auth]
        client_id = "ward-7-gateway"
        kid = "k1"
        private_key = "/etc/fhirgate-agent/key.pem"
        token_url = "https://fhir.hospital.example/auth/token"

        [[source]]
        kind = "serial"
        port = "/dev/ttyUSB0"
        baud = 9600
        protocol = "nonin"
        patient = "Patient/p-42"

        [[source]]
        kind = "serial"
        port = "/dev/ttyS1"
        baud = 9600
        protocol = "astm"
        parity = "even"
        data_bits = 7

        [[source]]
        kind = "dicom-folder"
        path = "/srv/dicom-drop"
    "#;

    #[test]
    fn the_example_reads() {
        let config = AgentConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.sources.len(), 3);
        assert_eq!(config.max_queue_bytes(), DEFAULT_MAX_QUEUE_BYTES);
        match &config.sources[1] {
            SourceConfig::Serial {
                protocol,
                parity,
                data_bits,
                stop_bits,
                ..
            } => {
                assert_eq!(*protocol, Protocol::Astm);
                assert_eq!(*parity, Parity::Even);
                assert_eq!((*data_bits, *stop_bits), (7, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            config.sources[2],
            SourceConfig::DicomFolder { .. }
        ));
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |text: &str| AgentConfig::parse(text).unwrap_err();
        assert!(bad("queue = \"q.db\"").contains("server"));
        assert!(bad("server = \"fhir.example\"\nqueue = \"q.db\"").contains("FHIR base URL"));
        let serial = |extra: &str| {
            format!(
                "server = \"http://x/fhir\"\nqueue = \"q\"\n[[source]]\nkind = \"serial\"\nport = \"/dev/ttyS0\"\nbaud = 9600\nprotocol = \"nonin\"\n{extra}"
            )
        };
        assert!(bad(&serial("data_bits = 9")).contains("source[0]: data_bits"));
        assert!(bad(&serial("patient = \"p-42\"")).contains("Patient/<id>"));
        assert!(bad(&serial("speed = 1")).contains("speed"));
        assert!(bad(&serial("").replace("nonin", "philips")).contains("philips"));
        assert_eq!(
            patient_ref("http://hospital.example/mrn|123").unwrap(),
            PatientRef::Identifier {
                system: Some("http://hospital.example/mrn".into()),
                value: "123".into()
            }
        );
    }

    #[test]
    fn the_readme_example_is_a_valid_configuration() {
        // The operator copies it: it must stay true.
        let readme = include_str!("../../README.md");
        let start = readme
            .find("# agent.toml\n")
            .expect("README has the agent.toml example");
        let example = &readme[start..];
        let example = &example[..example.find("```").expect("end of the example")];
        let config = AgentConfig::parse(example).unwrap();
        assert_eq!(config.sources.len(), 6);
        assert!(config.auth.is_some());
    }
}
