//! The edge agent end to end: serial instruments through pseudo-terminal pairs (the agent
//! opens one end with tokio-serial, the test writes the device's bytes to the other),
//! watched folders, uploads with SMART backend-services credentials, store-and-forward
//! across a server that is stopped and restarted and an agent that is restarted, device
//! health (heartbeats, faults, offline detection).

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fhirgate::agent::config::AgentConfig;
use fhirgate::agent::RunningAgent;
use fhirgate::devices::serial::astm;
use serde_json::{json, Value};

use super::auth::{ec_key, register_in};
use super::cli::temp_dir;
use super::helpers::*;

/// The device's end of a pseudo-terminal pair (the master). The agent opens the other
/// end through a symlink, as it would open /dev/serial/by-id/…; plugging the device in
/// again makes a new pair and points the link at it.
struct SerialDevice {
    master: std::fs::File,
    /// Held open so that the line stays raw while the agent (re)opens its end.
    _slave: std::fs::File,
}

impl SerialDevice {
    fn plug(link: &Path) -> SerialDevice {
        // SAFETY: plain libc calls on a descriptor this function owns; the name buffer
        // is large enough for any /dev/pts path and ptsname_r NUL-terminates it.
        let (master, path) = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
            let path = std::ffi::CStr::from_ptr(name.as_ptr())
                .to_str()
                .unwrap()
                .to_string();
            (std::fs::File::from_raw_fd(fd), path)
        };
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .unwrap();
        // SAFETY: termios is plain data filled in by tcgetattr.
        unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut termios), 0);
            libc::cfmakeraw(&mut termios);
            assert_eq!(
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios),
                0
            );
        }
        let fresh = link.with_extension("new");
        let _ = std::fs::remove_file(&fresh);
        std::os::unix::fs::symlink(&path, &fresh).unwrap();
        std::fs::rename(&fresh, link).unwrap();
        SerialDevice {
            master,
            _slave: slave,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
        self.master.flush().unwrap();
    }

    fn line(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes());
    }

    /// The next byte the agent writes back, if one comes within 10 s.
    fn reply(&mut self) -> Option<u8> {
        let fd = self.master.as_raw_fd();
        tokio::task::block_in_place(|| {
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
            if ready != 1 {
                return None;
            }
            let mut byte = [0u8; 1];
            match self.master.read(&mut byte) {
                Ok(1) => Some(byte[0]),
                _ => None,
            }
        })
    }
}

/// A client registered for the agent, its key written where its `[auth]` table says.
pub(super) async fn agent_auth(app: &TestApp, dir: &Path) -> String {
    let key = ec_key("agent-key");
    let client = format!("agent-{}", uuid::Uuid::new_v4().simple());
    register_in(
        &app.database_url,
        &client,
        &[&key],
        fhirgate::agent::credentials::DEFAULT_SCOPE,
        None,
    )
    .await;
    let key_path = dir.join("agent-key.pem");
    std::fs::write(&key_path, &key.pem).unwrap();
    format!(
        "[auth]\nclient_id = \"{client}\"\nkid = \"agent-key\"\nprivate_key = \"{}\"\ntoken_url = \"{}\"\n",
        key_path.display(),
        app.root("/auth/token")
    )
}

pub(super) fn agent_config(app: &TestApp, dir: &Path, auth: &str, sources: &str) -> AgentConfig {
    let text = format!(
        "server = \"{}\"\nqueue = \"{}\"\nheartbeat_seconds = 1\n{auth}\n{sources}",
        app.base,
        dir.join("queue.db").display()
    );
    AgentConfig::parse(&text).expect("agent config")
}

fn serial_source(link: &Path, protocol: &str, extra: &str) -> String {
    format!(
        "[[source]]\nkind = \"serial\"\nport = \"{}\"\nbaud = 9600\nprotocol = \"{protocol}\"\n{extra}\n",
        link.display()
    )
}

async fn start_agent(config: AgentConfig) -> RunningAgent {
    fhirgate::agent::start(config).await.expect("agent starts")
}

/// Polls `probe` until it gives a value (30 s at most).
pub(super) async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn search(app: &TestApp, query: &str) -> Vec<Value> {
    let body = json_with_status(app.get(query).await, 200).await;
    body["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

/// The Device with this identifier, once it has this status reason.
async fn device_in_state(app: &TestApp, identifier: &str, reason: &str) -> Value {
    eventually(&format!("Device {identifier} {reason}"), || async {
        search(app, &format!("Device?identifier={identifier}"))
            .await
            .into_iter()
            .find(|d| d["statusReason"][0]["coding"][0]["code"] == reason)
    })
    .await
}

/// `count` resources found by `query`, once there are (and no more).
async fn exactly(app: &TestApp, query: &str, count: usize) -> Vec<Value> {
    let found = eventually(&format!("{count} of {query}"), || async {
        let found = search(app, query).await;
        (found.len() >= count).then_some(found)
    })
    .await;
    assert_eq!(found.len(), count, "{query}: {found:#?}");
    found
}

fn local_clock(seconds_ago: i64) -> String {
    (chrono::Local::now() - chrono::Duration::seconds(seconds_ago))
        .format("%H:%M:%S")
        .to_string()
}

fn code_of(observation: &Value) -> String {
    observation["code"]["coding"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn patient_id(app: &TestApp, mrn: &str) -> String {
    app.create(&patient(mrn)).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonin_readings_arrive_despite_garbage_and_missing_values() {
    let app = spawn_app().await;
    let dir = temp_dir("agent-nonin");
    let link = dir.join("ttyNONIN");
    let mut device = SerialDevice::plug(&link);
    let patient = patient_id(&app, "AG-1").await;
    let auth = agent_auth(&app, &dir).await;
    let agent = start_agent(agent_config(
        &app,
        &dir,
        &auth,
        &serial_source(
            &link,
            "nonin",
            &format!("patient = \"Patient/{patient}\"\ndevice_serial = \"NONIN-501\""),
        ),
    ))
    .await;
    let identifier = "urn:fhirgate:device-serial|NONIN-501";
    let online = device_in_state(&app, identifier, "online").await;
    assert_eq!(online["status"], "active");
    assert_eq!(online["type"]["coding"][0]["code"], "69642");

    device.line(&format!("{} SPO2=097 HR=072", local_clock(30)));
    // Line noise between two readings: dropped, the next line still read.
    device.send(b"\x00\xff\xfe#@!garbage\x07\r\n\xff\xff");
    device.line(&format!("{} SPO2=--- HR=065", local_clock(20)));
    device.line(&format!("{} SPO2=095 HR=070", local_clock(10)));

    let observations = exactly(
        &app,
        &format!("Observation?patient=Patient/{patient}&_count=50"),
        6,
    )
    .await;
    let spo2: Vec<&Value> = observations
        .iter()
        .filter(|o| code_of(o) == "150456")
        .collect();
    let mut values: Vec<String> = spo2
        .iter()
        .map(|o| {
            o["valueQuantity"]["value"]
                .as_f64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| o["dataAbsentReason"]["coding"][0]["code"].to_string())
        })
        .collect();
    values.sort();
    assert_eq!(values.len(), 3, "{values:?}");
    assert!(values.contains(&"97".to_string()), "{values:?}");
    assert!(values.contains(&"95".to_string()), "{values:?}");
    let device_ref = format!("Device/{}", online["id"].as_str().unwrap());
    assert!(
        observations
            .iter()
            .all(|o| o["device"]["reference"] == device_ref.as_str()),
        "{device_ref}: {observations:#?}"
    );
    // Everything confirmed is gone from the queue.
    eventually("an empty queue", || async {
        (agent.queue.count().await.unwrap() == 0).then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masimo_alarms_and_exceptions_become_faults_and_device_status() {
    let app = spawn_app().await;
    let dir = temp_dir("agent-masimo");
    let link = dir.join("ttyMASIMO");
    let mut device = SerialDevice::plug(&link);
    let patient = patient_id(&app, "AG-2").await;
    let auth = agent_auth(&app, &dir).await;
    let agent = start_agent(agent_config(
        &app,
        &dir,
        &auth,
        &serial_source(&link, "masimo", &format!("patient = \"Patient/{patient}\"")),
    ))
    .await;
    device.line("03/01/24 09:56:12 SN=0000012345 SPO2=097% BPM=069 PI=04.69% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000000");
    let identifier = "urn:fhirgate:device-serial|0000012345";
    device_in_state(&app, identifier, "online").await;
    let observations = exactly(
        &app,
        &format!("Observation?patient=Patient/{patient}&_count=50"),
        3,
    )
    .await;
    let pi = observations
        .iter()
        .find(|o| o["valueQuantity"]["value"] == json!(4.69))
        .expect("perfusion index");
    assert_eq!(pi["valueQuantity"]["code"], "%");

    // The sensor comes off the finger and an alarm sounds.
    device
        .line("03/01/24 09:56:14 SN=0000012345 SPO2=---% BPM=--- PI=--.--% ALARM=0001 EXC=000828");
    let disconnected = device_in_state(&app, identifier, "transduc-discon").await;
    assert_eq!(disconnected["status"], "active");
    let text = disconnected["statusReason"][0]["text"].as_str().unwrap();
    assert!(text.contains("sensor off patient"), "{text}");
    let device_id = disconnected["id"].as_str().unwrap().to_string();
    let issues = eventually("fault DetectedIssues", || async {
        let issues = search(
            &app,
            &format!("DetectedIssue?implicated=Device/{device_id}&_count=50"),
        )
        .await;
        (issues.len() >= 3).then_some(issues)
    })
    .await;
    let codes: Vec<&str> = issues
        .iter()
        .map(|i| i["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"sensor-off-patient"), "{codes:?}");
    assert!(codes.contains(&"pulse-search"), "{codes:?}");
    assert!(codes.contains(&"alarm"), "{codes:?}");
    assert!(issues
        .iter()
        .all(|i| i["patient"]["reference"] == format!("Patient/{patient}").as_str()));
    // The DeviceMetrics of the device follow: its sensor is off.
    let metrics = search(&app, &format!("DeviceMetric?source=Device/{device_id}")).await;
    assert!(!metrics.is_empty());
    assert!(
        metrics.iter().all(|m| m["operationalStatus"] == "off"),
        "{metrics:#?}"
    );

    // Back on the finger.
    device
        .line("03/01/24 09:56:20 SN=0000012345 SPO2=098% BPM=070 PI=04.10% ALARM=0000 EXC=000000");
    device_in_state(&app, identifier, "online").await;
    agent.stop().await;
}

fn astm_frames(records: &[&str]) -> Vec<Vec<u8>> {
    records
        .iter()
        .enumerate()
        .map(|(index, record)| astm::frame((index + 1) as u8, &format!("{record}\r"), true))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn astm_analyser_results_arrive_with_handshake_checksums_and_storms() {
    let app = spawn_app().await;
    let dir = temp_dir("agent-astm");
    let link = dir.join("ttyLAB");
    let mut analyser = SerialDevice::plug(&link);
    let mut mrn = patient("MRN-ASTM-1");
    mrn["identifier"][0]["system"] = json!("http://hospital.example/mrn");
    let patient = app.create(&mrn).await["id"].as_str().unwrap().to_string();
    let auth = agent_auth(&app, &dir).await;
    let agent = start_agent(agent_config(
        &app,
        &dir,
        &auth,
        &serial_source(
            &link,
            "astm",
            "patient = \"http://hospital.example/mrn|MRN-ASTM-1\"",
        ),
    ))
    .await;
    // Wait until the agent has the port (its first heartbeat), then transmit.
    eventually("the agent on the port", || async {
        search(&app, "Device?status=active")
            .await
            .into_iter()
            .find(|d| d["statusReason"][0]["coding"][0]["code"] == "online")
    })
    .await;

    analyser.send(&[astm::ENQ]);
    assert_eq!(analyser.reply(), Some(astm::ACK));
    let frames = astm_frames(&[
        "H|\\^&|||Chem-1^2.3^SN4711|||||||P|1|20240301120000",
        "P|1||MRN-1||Doe^John",
        "O|1|S-123||^^^GLU",
        "R|1|^^^GLU^Glucose|5.6|mmol/L|3.9-6.1|N||F||||20240301120500",
        "L|1|N",
    ]);
    for (index, frame) in frames.iter().enumerate() {
        if index == 1 {
            // A frame damaged on the line is refused; the analyser sends it again.
            let mut damaged = frame.clone();
            damaged[4] ^= 0x20;
            analyser.send(&damaged);
            assert_eq!(analyser.reply(), Some(astm::NAK), "damaged frame");
        }
        analyser.send(frame);
        assert_eq!(analyser.reply(), Some(astm::ACK), "frame {index}");
    }
    analyser.send(&[astm::EOT]);

    let results = exactly(
        &app,
        &format!("Observation?patient=Patient/{patient}&category=laboratory"),
        1,
    )
    .await;
    let glucose = &results[0];
    assert_eq!(glucose["valueQuantity"]["value"], json!(5.6));
    assert_eq!(glucose["valueQuantity"]["unit"], "mmol/L");
    let device_ref = glucose["device"]["reference"].as_str().unwrap().to_string();
    let analyser_device = json_with_status(app.get(&device_ref).await, 200).await;
    let serials = analyser_device["identifier"].to_string();
    assert!(serials.contains("SN4711"), "{analyser_device}");

    // A bad line: frame after frame with a bad checksum.
    analyser.send(&[astm::ENQ]);
    assert_eq!(analyser.reply(), Some(astm::ACK));
    for _ in 0..10 {
        let mut damaged = astm::frame(1, "H|\\^&|||Chem-1\r", true);
        let last = damaged.len() - 3;
        damaged[last] = b'Z';
        analyser.send(&damaged);
        assert_eq!(analyser.reply(), Some(astm::NAK));
    }
    analyser.send(&[astm::EOT]);
    let storm = eventually("the checksum storm", || async {
        search(
            &app,
            &format!("DetectedIssue?implicated={device_ref}&_count=50"),
        )
        .await
        .into_iter()
        .find(|i| i["code"]["coding"][0]["code"] == "checksum-storm")
    })
    .await;
    assert!(storm["detail"].as_str().unwrap().contains("bad checksum"));
    let device_id = device_ref.trim_start_matches("Device/").to_string();
    eventually("the analyser not ready", || async {
        let device = json_with_status(app.get(&device_ref).await, 200).await;
        (device["statusReason"][0]["coding"][0]["code"] == "not-ready").then_some(())
    })
    .await;
    let health = json_with_status(app.get(&format!("Device/{device_id}/$health")).await, 200).await;
    assert!(health.to_string().contains("not-ready"), "{health}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_instrument_is_reported_and_read_again_when_plugged_back() {
    let app = spawn_app().await;
    let dir = temp_dir("agent-replug");
    let link = dir.join("ttyUSB-ox");
    let mut device = SerialDevice::plug(&link);
    let patient = patient_id(&app, "AG-3").await;
    let auth = agent_auth(&app, &dir).await;
    let agent = start_agent(agent_config(
        &app,
        &dir,
        &auth,
        &serial_source(
            &link,
            "nonin",
            &format!("patient = \"Patient/{patient}\"\ndevice_serial = \"NONIN-777\""),
        ),
    ))
    .await;
    let identifier = "urn:fhirgate:device-serial|NONIN-777";
    device_in_state(&app, identifier, "online").await;
    device.line(&format!("{} SPO2=097 HR=072", local_clock(40)));
    exactly(&app, &format!("Observation?patient=Patient/{patient}"), 2).await;

    drop(device);
    let unplugged = device_in_state(&app, identifier, "hw-discon").await;
    assert_eq!(unplugged["status"], "inactive");
    let device_id = unplugged["id"].as_str().unwrap().to_string();
    let faults = eventually("the disconnection fault", || async {
        let found = search(
            &app,
            &format!("DetectedIssue?implicated=Device/{device_id}"),
        )
        .await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(faults[0]["code"]["coding"][0]["code"], "hw-discon");

    let mut device = SerialDevice::plug(&link);
    device_in_state(&app, identifier, "online").await;
    device.line(&format!("{} SPO2=096 HR=071", local_clock(5)));
    exactly(&app, &format!("Observation?patient=Patient/{patient}"), 4).await;
    // The Device kept its identity: one Device, several versions.
    assert_eq!(
        search(&app, &format!("Device?identifier={identifier}"))
            .await
            .len(),
        1
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_survive_a_stopped_server_and_a_restarted_agent_exactly_once() {
    let mut app = spawn_app().await;
    let dir = temp_dir("agent-forward");
    let link = dir.join("ttyS-forward");
    let mut device = SerialDevice::plug(&link);
    let patient = patient_id(&app, "AG-4").await;
    let auth = agent_auth(&app, &dir).await;
    let config = agent_config(
        &app,
        &dir,
        &auth,
        &serial_source(
            &link,
            "nonin",
            &format!("patient = \"Patient/{patient}\"\ndevice_serial = \"NONIN-900\""),
        ),
    );
    let agent = start_agent(config.clone()).await;
    device_in_state(&app, "urn:fhirgate:device-serial|NONIN-900", "online").await;
    device.line(&format!("{} SPO2=099 HR=060", local_clock(100)));
    exactly(&app, &format!("Observation?patient=Patient/{patient}"), 2).await;

    // The server goes away; the instrument keeps measuring.
    app.crash().await;
    for seconds_ago in [90, 80, 70] {
        device.line(&format!("{} SPO2=098 HR=061", local_clock(seconds_ago)));
    }
    eventually("three readings queued", || async {
        (agent.queue.count().await.unwrap() == 3).then_some(())
    })
    .await;
    // A copy of the queue as it is now: uploaded again later, as after a crash of the
    // agent between the server's commit and its answer.
    agent.stop().await;
    let copy = dir.join("queue-copy.db");
    std::fs::copy(dir.join("queue.db"), &copy).unwrap();
    // The agent restarts while the server is still down, queues more, and stops again.
    let agent = start_agent(config.clone()).await;
    device.line(&format!("{} SPO2=097 HR=062", local_clock(60)));
    eventually("four readings queued", || async {
        (agent.queue.count().await.unwrap() == 4).then_some(())
    })
    .await;

    app.start_again_at_same_address().await;
    let observations = exactly(
        &app,
        &format!("Observation?patient=Patient/{patient}&_count=50"),
        10,
    )
    .await;
    eventually("an empty queue", || async {
        (agent.queue.count().await.unwrap() == 0).then_some(())
    })
    .await;
    agent.stop().await;

    // The copy is uploaded too: nothing new is stored.
    let mut replay = config.clone();
    replay.queue = copy;
    replay.sources.clear();
    let again = start_agent(replay).await;
    eventually("the copy uploaded", || async {
        (again.queue.count().await.unwrap() == 0).then_some(())
    })
    .await;
    again.stop().await;
    let after = search(
        &app,
        &format!("Observation?patient=Patient/{patient}&_count=50"),
    )
    .await;
    assert_eq!(after.len(), observations.len());
    let mut identifiers: Vec<String> = after
        .iter()
        .map(|o| o["identifier"][0]["value"].as_str().unwrap().to_string())
        .collect();
    identifiers.sort();
    identifiers.dedup();
    assert_eq!(identifiers.len(), 10, "every reading stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_is_marked_offline_and_back_online_with_its_next_heartbeat() {
    let app = spawn_app_with(|c| c.device_offline_after = Duration::from_secs(2)).await;
    let dir = temp_dir("agent-offline");
    let link = dir.join("ttyS-offline");
    let _device = SerialDevice::plug(&link);
    let auth = agent_auth(&app, &dir).await;
    let config = agent_config(
        &app,
        &dir,
        &auth,
        &serial_source(&link, "nonin", "device_serial = \"NONIN-OFF\""),
    );
    let agent = start_agent(config.clone()).await;
    let identifier = "urn:fhirgate:device-serial|NONIN-OFF";
    let online = device_in_state(&app, identifier, "online").await;
    let device_id = online["id"].as_str().unwrap().to_string();
    // Heartbeats every second keep it online past the silence allowed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let health = json_with_status(app.get(&format!("Device/{device_id}/$health")).await, 200).await;
    assert_eq!(
        parameter(&health, "online")["valueBoolean"],
        true,
        "{health}"
    );
    assert_eq!(parameter(&health, "statusReason")["valueCode"], "online");

    // The gateway loses power.
    agent.stop().await;
    let offline = device_in_state(&app, identifier, "offline").await;
    assert_eq!(offline["status"], "inactive");
    let health = json_with_status(app.get(&format!("Device/{device_id}/$health")).await, 200).await;
    assert_eq!(
        parameter(&health, "online")["valueBoolean"],
        false,
        "{health}"
    );
    assert!(parameter(&health, "lastSeen")["valueInstant"].is_string());
    let fleet = json_with_status(app.get("Device/$health?offline=true").await, 200).await;
    assert!(fleet.to_string().contains(&device_id), "{fleet}");
    let issues = search(
        &app,
        &format!("DetectedIssue?implicated=Device/{device_id}"),
    )
    .await;
    assert_eq!(issues.len(), 1, "one offline fault: {issues:#?}");
    assert_eq!(issues[0]["code"]["coding"][0]["code"], "offline");

    let agent = start_agent(config).await;
    device_in_state(&app, identifier, "online").await;
    agent.stop().await;
    let history =
        json_with_status(app.get(&format!("Device/{device_id}/_history")).await, 200).await;
    // created online, offline, online again (no version per heartbeat).
    assert_eq!(history["entry"].as_array().unwrap().len(), 3, "{history}");
}

fn parameter(parameters: &Value, name: &str) -> Value {
    parameters["parameter"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn heartbeat(serial: &str, status: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "device", "resource": {"resourceType": "Device",
            "identifier": [{"system": "urn:fhirgate:device-serial", "value": serial}],
            "manufacturer": "Acme"}},
        {"name": "status", "valueCode": status},
    ]})
}

#[tokio::test]
async fn heartbeats_write_the_device_only_when_its_state_changes() {
    let app = spawn_app().await;
    let first = json_with_status(
        app.post("Device/$heartbeat", &heartbeat("HB-1", "online"))
            .await,
        200,
    )
    .await;
    assert_eq!(parameter(&first, "created")["valueBoolean"], true);
    let device = parameter(&first, "device")["valueReference"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let again = json_with_status(
        app.post("Device/$heartbeat", &heartbeat("HB-1", "online"))
            .await,
        200,
    )
    .await;
    assert_eq!(parameter(&again, "changed")["valueBoolean"], false);
    let stored = json_with_status(app.get(&device).await, 200).await;
    assert_eq!(stored["meta"]["versionId"], "1");
    assert_eq!(stored["manufacturer"], "Acme");

    // A metric's calibration and a new state.
    let mut body = heartbeat("HB-1", "standby");
    body["parameter"].as_array_mut().unwrap().push(json!({"name": "metric", "part": [
        {"name": "type", "valueCoding": {"system": "urn:iso:std:iso:11073:10101", "code": "150456"}},
        {"name": "calibrationType", "valueCode": "two-point"},
        {"name": "calibrationState", "valueCode": "calibrated"},
        {"name": "calibrationTime", "valueInstant": "2026-11-20T08:00:00Z"}
    ]}));
    let changed = json_with_status(app.post("Device/$heartbeat", &body).await, 200).await;
    assert_eq!(parameter(&changed, "changed")["valueBoolean"], true);
    let stored = json_with_status(app.get(&device).await, 200).await;
    assert_eq!(stored["meta"]["versionId"], "2");
    assert_eq!(stored["statusReason"][0]["coding"][0]["code"], "standby");
    let metrics = search(&app, &format!("DeviceMetric?source={device}")).await;
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0]["calibration"][0]["state"], "calibrated");
    assert_eq!(metrics[0]["calibration"][0]["type"], "two-point");
    assert_eq!(metrics[0]["type"]["coding"][0]["code"], "150456");

    // Bad heartbeats say what is wrong and where.
    let response = app
        .post("Device/$heartbeat", &heartbeat("HB-1", "exploded"))
        .await;
    let outcome = json_with_status(response, 400).await;
    assert!(
        outcome_text(&outcome).contains("device-status-reason"),
        "{outcome}"
    );
    assert!(
        outcome_expressions(&outcome)[0].contains("valueCode"),
        "{outcome}"
    );
    let mut nameless = heartbeat("HB-1", "online");
    nameless["parameter"][0]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("identifier");
    let outcome = json_with_status(app.post("Device/$heartbeat", &nameless).await, 400).await;
    assert!(outcome_text(&outcome).contains("identifier"), "{outcome}");
    let outcome = json_with_status(
        app.post("Device/$heartbeat", &json!({"resourceType": "Device"}))
            .await,
        400,
    )
    .await;
    assert!(outcome_text(&outcome).contains("Parameters"), "{outcome}");

    // Only a token that may write Devices reports their state.
    let reader =
        super::auth::token_from(&app.root(""), &app.database_url, "system/Device.rs").await;
    let response = app
        .client
        .post(app.url("Device/$heartbeat"))
        .bearer_auth(&reader)
        .header("content-type", FHIR_JSON)
        .body(heartbeat("HB-1", "off").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = app
        .client
        .get(app.url(&format!("{device}/$health")))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .client
        .get(app.url(&format!("{device}/$health")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_files_dropped_in_a_folder_are_uploaded_and_filed() {
    let app = spawn_app().await;
    let dir = temp_dir("agent-hl7");
    let drop = dir.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let mut mrn = patient("3499999");
    mrn["identifier"][0]["system"] = json!("PID");
    app.create(&mrn).await;
    let auth = agent_auth(&app, &dir).await;
    let agent = start_agent(agent_config(
        &app,
        &dir,
        &auth,
        &format!(
            "[[source]]\nkind = \"hl7-folder\"\npath = \"{}\"\n",
            drop.display()
        ),
    ))
    .await;
    let message = "MSH|^~\\&|VSP^080019FFFE1443EC^EUI-64|GE Healthcare|||20230309143900||ORU^R01^ORU_R01|0040971443EC|P|2.6\r\
PID|||3499999^^^PID^MR||KOKONOVA^TAMARA\r\
OBR|1|A^VSP|A^VSP|182777000^monitoring of patient^SCT|||20230309143900\r\
OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.2|97|262688^MDC_DIM_PERCENT^MDC|||||R|||20230309143900\r\
OBX|2|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.22.1.1|67|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20230309143900\r";
    std::fs::write(drop.join("vitals.hl7"), message).unwrap();
    std::fs::write(drop.join("broken.hl7"), "this is not HL7").unwrap();
    let observations = exactly(
        &app,
        "Observation?code=urn:iso:std:iso:11073:10101|150456",
        1,
    )
    .await;
    assert_eq!(observations[0]["valueQuantity"]["value"], json!(97));
    let done: PathBuf = drop.join(".done").join("vitals.hl7");
    eventually("the file filed as done", || async {
        done.exists().then_some(())
    })
    .await;
    let failed = drop.join(".failed").join("broken.hl7");
    eventually("the broken file set aside", || async {
        failed.exists().then_some(())
    })
    .await;
    let why = std::fs::read_to_string(drop.join(".failed").join("broken.hl7.error")).unwrap();
    assert!(!why.is_empty());
    agent.stop().await;
}
