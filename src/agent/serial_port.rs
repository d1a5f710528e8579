//! A serial instrument read through its RS-232 port (tokio-serial): the port opened with
//! the configured settings, its bytes handed to the protocol's parser, the readings
//! queued, and the port opened again after the device was unplugged (or switched off)
//! and plugged back. What the port and the device say of their state goes to [`Health`]
//! and, for faults, to the queue as DetectedIssues.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_serial::SerialPortBuilderExt;

use super::config::{Parity, Protocol};
use super::sink::Sink;
use crate::devices::codes::{CodeMaps, MDC_SYSTEM};
use crate::devices::reading::{Coding, DeviceId, DeviceInfo, DeviceMessage, PatientRef};
use crate::devices::serial::{astm, masimo, nonin, SerialLine};

/// Identifier system of instruments known by their serial number.
pub const SERIAL_NUMBER_SYSTEM: &str = "urn:fhirgate:device-serial";
/// Identifier system of instruments known only by the port they are plugged in.
pub const PORT_SYSTEM: &str = "urn:fhirgate:serial-port";

/// Longest line kept while waiting for its end (a device sending no line ends).
const MAX_LINE: usize = 4096;
/// Refused frames within a minute that make a checksum storm (a bad cable, wrong
/// settings).
const STORM: usize = 10;

#[derive(Debug, Clone)]
pub struct SerialSource {
    /// How the queue and the logs name this source (`serial:/dev/ttyUSB0`).
    pub name: String,
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
    pub protocol: Protocol,
    pub patient: Option<PatientRef>,
    pub device_serial: Option<String>,
}

/// Reads the source until shutdown, reconnecting as long as it takes.
pub async fn run(source: SerialSource, sink: Sink, mut shutdown: watch::Receiver<bool>) {
    let mut reader = Reader::new(&source, sink);
    let mut wait = Duration::from_millis(250);
    let mut was_open = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match open(&source) {
            Ok(port) => {
                tracing::info!(port = %source.port, "serial port open");
                wait = Duration::from_millis(250);
                was_open = true;
                reader.connected().await;
                let why = reader.read(port, &mut shutdown).await;
                if *shutdown.borrow() {
                    return;
                }
                tracing::warn!(port = %source.port, "serial port lost: {why}");
                reader.disconnected(&why).await;
            }
            Err(e) => {
                if was_open {
                    tracing::warn!(port = %source.port, "cannot open the serial port: {e}");
                    reader.unavailable(&e.to_string());
                    was_open = false;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

fn open(source: &SerialSource) -> tokio_serial::Result<tokio_serial::SerialStream> {
    tokio_serial::new(&source.port, source.baud)
        .parity(match source.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .data_bits(match source.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .stop_bits(match source.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        })
        .open_native_async()
}

/// The state of one source across reconnections.
struct Reader {
    source: SerialSource,
    sink: Sink,
    device: DeviceInfo,
    line: Vec<u8>,
    astm: astm::Receiver,
    /// The faults and alarms the device reports now (a change is recorded).
    faults: BTreeSet<String>,
    alarms: BTreeSet<String>,
    refused: Vec<Instant>,
    storm: bool,
}

impl Reader {
    fn new(source: &SerialSource, sink: Sink) -> Reader {
        Reader {
            device: device_info(source, source.device_serial.as_deref()),
            source: source.clone(),
            sink,
            line: Vec::new(),
            astm: astm::Receiver::new(),
            faults: BTreeSet::new(),
            alarms: BTreeSet::new(),
            refused: Vec::new(),
            storm: false,
        }
    }

    fn set_status(&self, status: &str, detail: Option<&str>) {
        self.sink
            .health
            .set(&self.device, self.source.patient.as_ref(), status, detail);
    }

    async fn connected(&mut self) {
        self.line.clear();
        self.astm = astm::Receiver::new();
        self.faults.clear();
        self.alarms.clear();
        self.set_status("online", None);
    }

    async fn disconnected(&mut self, why: &str) {
        let detail = format!("serial port {} disconnected: {why}", self.source.port);
        self.set_status("hw-discon", Some(&detail));
        self.fault("hw-discon", &detail, &now()).await;
    }

    fn unavailable(&self, why: &str) {
        let detail = format!("serial port {} cannot be opened: {why}", self.source.port);
        self.set_status("hw-discon", Some(&detail));
    }

    async fn fault(&self, code: &str, detail: &str, time: &str) {
        self.sink
            .fault(
                &self.source.name,
                &self.device,
                self.source.patient.as_ref(),
                code,
                detail,
                time,
            )
            .await;
    }

    /// Reads until the port fails or the agent stops; why it stopped.
    async fn read(
        &mut self,
        mut port: tokio_serial::SerialStream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> String {
        let mut chunk = [0u8; 4096];
        loop {
            let read = tokio::select! {
                read = port.read(&mut chunk) => read,
                _ = shutdown.changed() => return "the agent stops".into(),
            };
            let bytes = match read {
                Ok(0) => return "end of stream".into(),
                Ok(n) => &chunk[..n],
                Err(e) => return e.to_string(),
            };
            let replies = self.bytes(bytes).await;
            if !replies.is_empty() {
                if let Err(e) = port.write_all(&replies).await {
                    return e.to_string();
                }
            }
        }
    }

    /// Handles bytes from the port; what to write back (ASTM's ACK/NAK).
    async fn bytes(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self.source.protocol {
            Protocol::Astm => self.astm_bytes(bytes).await,
            Protocol::Nonin | Protocol::Masimo => {
                for &byte in bytes {
                    if byte == b'\n' || byte == b'\r' {
                        let line = String::from_utf8_lossy(&self.line).trim().to_string();
                        self.line.clear();
                        if !line.is_empty() {
                            self.text_line(&line).await;
                        }
                    } else if self.line.len() < MAX_LINE {
                        self.line.push(byte);
                    } else {
                        // No line end for too long: noise, not a line.
                        tracing::debug!(port = %self.source.port, "overlong line dropped");
                        self.line.clear();
                    }
                }
                Vec::new()
            }
        }
    }

    async fn text_line(&mut self, line: &str) {
        let received = received();
        let parsed = match self.source.protocol {
            Protocol::Nonin => nonin::parse(line, received),
            _ => {
                if let Some(serial) = masimo_serial(line) {
                    if self.source.device_serial.is_none() && self.device.identifier.value != serial
                    {
                        self.device = device_info(&self.source, Some(&serial));
                        self.set_status("online", None);
                    }
                }
                masimo::parse(line, received)
            }
        };
        let Some(parsed) = parsed else {
            tracing::debug!(port = %self.source.port, "line without data: {line:?}");
            return;
        };
        self.device_state(&parsed, &received.to_rfc3339()).await;
        if parsed.readings.is_empty() {
            return;
        }
        let readings = parsed
            .readings
            .into_iter()
            .map(|mut reading| {
                reading.device = Some(self.device.key.clone());
                reading
            })
            .collect();
        let message = DeviceMessage {
            patient: None,
            devices: vec![self.device.clone()],
            readings,
        };
        self.sink
            .readings(&self.source.name, &message, self.source.patient.as_ref())
            .await;
    }

    /// Faults and alarms the device reports: a change is recorded, and the device's
    /// status follows (a sensor off the patient is `transduc-discon`).
    async fn device_state(&mut self, line: &SerialLine, time: &str) {
        let faults: BTreeSet<String> = line.faults.iter().cloned().collect();
        let alarms: BTreeSet<String> = line.alarms.iter().cloned().collect();
        for fault in faults.difference(&self.faults) {
            self.fault(&slug(fault), &format!("the device reports: {fault}"), time)
                .await;
        }
        for alarm in alarms.difference(&self.alarms) {
            self.fault(
                "alarm",
                &format!("the device signals an alarm: {alarm}"),
                time,
            )
            .await;
        }
        if faults != self.faults {
            let detail = faults.iter().cloned().collect::<Vec<_>>().join(", ");
            match faults.iter().any(|f| f.contains("sensor")) {
                true => self.set_status("transduc-discon", Some(&detail)),
                false if !faults.is_empty() => self.set_status("not-ready", Some(&detail)),
                false => self.set_status("online", None),
            }
        }
        self.faults = faults;
        self.alarms = alarms;
    }

    async fn astm_bytes(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut replies = Vec::new();
        for output in self.astm.push(bytes) {
            match output {
                astm::Output::Reply(byte) => replies.push(byte),
                astm::Output::Refused(why) => {
                    tracing::warn!(port = %self.source.port, "ASTM frame refused: {why}");
                    self.refused_frame().await;
                }
                astm::Output::Message(records) => {
                    match astm::message(&records, self.source.device_serial.as_deref()) {
                        Ok(message) => {
                            if let Some(analyser) = message.devices.first() {
                                if analyser.identifier != self.device.identifier {
                                    self.device = analyser.clone();
                                }
                            }
                            if self.storm {
                                self.storm = false;
                                self.set_status("online", None);
                            }
                            self.sink
                                .readings(&self.source.name, &message, self.source.patient.as_ref())
                                .await;
                        }
                        Err(why) => {
                            tracing::warn!(port = %self.source.port, "ASTM transmission not understood: {why}");
                            self.fault(
                                "bad-message",
                                &format!(
                                    "the analyser sent a transmission that cannot be read: {why}"
                                ),
                                &now(),
                            )
                            .await;
                        }
                    }
                }
            }
        }
        replies
    }

    /// Many refused frames in a short time: the line is bad (cable, settings, noise).
    async fn refused_frame(&mut self) {
        let now_instant = Instant::now();
        self.refused
            .retain(|t| now_instant.duration_since(*t) < Duration::from_secs(60));
        self.refused.push(now_instant);
        if self.refused.len() >= STORM && !self.storm {
            self.storm = true;
            let detail = format!(
                "{} frames with a bad checksum or frame number within a minute on {}",
                self.refused.len(),
                self.source.port
            );
            self.set_status("not-ready", Some(&detail));
            self.fault("checksum-storm", &detail, &now()).await;
        }
    }
}

/// The device of a source: known by its serial number, else by the port it is on.
fn device_info(source: &SerialSource, serial: Option<&str>) -> DeviceInfo {
    let maps = CodeMaps::get();
    let (kind, model) = match source.protocol {
        Protocol::Nonin => (Some("69642"), Some("Nonin pulse oximeter")),
        Protocol::Masimo => (Some("69642"), Some("Masimo Radical-7")),
        Protocol::Astm => (None, None),
    };
    let identifier = match serial {
        Some(serial) => DeviceId {
            system: SERIAL_NUMBER_SYSTEM.into(),
            value: serial.to_string(),
        },
        None => DeviceId {
            system: PORT_SYSTEM.into(),
            value: format!("{}:{}", host_name(), source.port),
        },
    };
    DeviceInfo {
        key: "serial-device".into(),
        identifier,
        kind: kind.map(|code| Coding {
            system: MDC_SYSTEM.into(),
            code: code.into(),
            display: maps.device(code).map(|d| d.display.clone()),
        }),
        manufacturer: model.and_then(|m| m.split(' ').next()).map(str::to_string),
        model: model.map(str::to_string),
        serial_number: serial.map(str::to_string),
        ..DeviceInfo::default()
    }
}

fn masimo_serial(line: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("SN="))
        .filter(|s| !s.is_empty() && !s.starts_with('-'))
        .map(str::to_string)
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".into())
}

/// `sensor off patient` → `sensor-off-patient`.
fn slug(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join("-")
}

/// Now in the agent machine's zone: instruments print their local clock time.
fn received() -> DateTime<FixedOffset> {
    chrono::Local::now().fixed_offset()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_serials() {
        assert_eq!(slug("sensor off patient"), "sensor-off-patient");
        assert_eq!(
            masimo_serial("03/01/24 09:56:12 SN=0000012345 SPO2=097%").as_deref(),
            Some("0000012345")
        );
        assert_eq!(masimo_serial("SN=---- SPO2=097%"), None);
    }
}
