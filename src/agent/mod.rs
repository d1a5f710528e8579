//! The edge agent (`fhirgate agent --config agent.toml`): runs next to devices, reads
//! them ([`serial_port`] for RS-232 instruments, [`folders`] for files they drop), turns
//! what they measure into FHIR with the server's own mapping ([`bundle`]), keeps it in a
//! durable local queue ([`queue`]) and uploads it ([`upload`]) as transaction Bundles with
//! SMART backend-services credentials ([`credentials`]). The devices' state goes to the
//! server as heartbeats ([`health`]).
pub mod bundle;
pub mod config;
pub mod credentials;
pub mod dicom_scp;
pub mod folders;
pub mod health;
pub mod queue;
pub mod serial_port;
pub mod sink;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use config::{AgentConfig, SourceConfig};
use credentials::Credentials;
use folders::{Folder, FolderKind};
use health::Health;
use queue::Queue;
use serial_port::SerialSource;
use sink::Sink;

/// A running agent.
pub struct RunningAgent {
    pub health: Health,
    pub queue: Arc<Queue>,
    /// The addresses of its DICOM sources (in the order of the configuration).
    pub dicom_addrs: Vec<std::net::SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Starts the agent: the queue opened (what an earlier run left is uploaded first), the
/// sources read, the uploader and the heartbeats running.
pub async fn start(config: AgentConfig) -> Result<RunningAgent, String> {
    let queue = Arc::new(
        Queue::open(&config.queue, config.max_queue_bytes())
            .await
            .map_err(|e| format!("queue {}: {e}", config.queue.display()))?,
    );
    let credentials = match &config.auth {
        Some(auth) => Some(Arc::new(
            Credentials::load(auth).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let server = config.server.trim_end_matches('/').to_string();
    let (stop, shutdown) = watch::channel(false);
    let health = Health::default();
    let sink = Sink {
        queue: queue.clone(),
        pushed: Arc::new(Notify::new()),
        health: health.clone(),
    };
    let mut tasks = JoinSet::new();
    let mut dicom_addrs = Vec::new();
    for (index, source) in config.sources.iter().enumerate() {
        match source {
            SourceConfig::Serial {
                port,
                baud,
                protocol,
                parity,
                data_bits,
                stop_bits,
                patient,
                device_serial,
            } => {
                let source = SerialSource {
                    name: format!("serial:{port}"),
                    port: port.clone(),
                    baud: *baud,
                    parity: *parity,
                    data_bits: *data_bits,
                    stop_bits: *stop_bits,
                    protocol: *protocol,
                    patient: patient
                        .as_deref()
                        .map(config::patient_ref)
                        .transpose()
                        .map_err(|e| format!("source[{index}]: {e}"))?,
                    device_serial: device_serial.clone(),
                };
                tasks.spawn(serial_port::run(source, sink.clone(), shutdown.clone()));
            }
            SourceConfig::Dicom { listen, ae_title } => {
                let ae_title = ae_title
                    .as_deref()
                    .unwrap_or(crate::devices::dicom::scp::AE_TITLE)
                    .trim();
                let destination = dicom_scp::AgentDicom {
                    name: format!("dicom:{listen}"),
                    sink: sink.clone(),
                };
                let listener =
                    crate::devices::dicom::scp::DicomListener::start(listen, ae_title, destination)
                        .await
                        .map_err(|e| format!("source[{index}]: cannot listen on {listen}: {e}"))?;
                dicom_addrs.push(listener.addr);
                let mut stopping = shutdown.clone();
                tasks.spawn(async move {
                    let _ = stopping.changed().await;
                    listener.stop().await;
                });
            }
            SourceConfig::Hl7Folder { path } | SourceConfig::DicomFolder { path } => {
                let kind = match source {
                    SourceConfig::Hl7Folder { .. } => FolderKind::Hl7,
                    _ => FolderKind::Dicom,
                };
                if !path.is_dir() {
                    return Err(format!(
                        "source[{index}]: {} is not a folder",
                        path.display()
                    ));
                }
                let folder = Folder {
                    name: format!("folder:{}", path.display()),
                    path: path.clone(),
                    kind,
                };
                tasks.spawn(folders::run(folder, sink.clone(), shutdown.clone()));
            }
        }
    }
    let uploader = upload::Uploader {
        http: http.clone(),
        server: server.clone(),
        credentials: credentials.clone(),
        queue: queue.clone(),
        pushed: sink.pushed.clone(),
    };
    tasks.spawn(uploader.run(shutdown.clone()));
    let sender = health::Sender {
        http,
        server,
        credentials,
        health: health.clone(),
        interval: Duration::from_secs(config.heartbeat_seconds.unwrap_or(30).max(1)),
    };
    tasks.spawn(sender.run(shutdown));
    Ok(RunningAgent {
        health,
        queue,
        dicom_addrs,
        stop,
        tasks,
    })
}

impl RunningAgent {
    /// Stops reading and uploading; what is queued stays for the next run.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// `fhirgate agent`: runs until interrupted (SIGINT, or SIGTERM from a service manager).
pub async fn run(config: AgentConfig) -> Result<(), String> {
    let agent = start(config).await?;
    tracing::info!("agent running");
    crate::server::shutdown_signal().await;
    tracing::info!("agent stopping; queued readings stay for the next run");
    agent.stop().await;
    Ok(())
}
