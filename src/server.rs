//! Starting and stopping the server: database, migrations, HTTP listener, graceful
//! shutdown (in-flight requests finish on SIGINT/SIGTERM).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::config::ServeConfig;
use crate::db;
use crate::fhir::definitions::Definitions;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::subscriptions::delivery::{self, DeliveryHandle};
use crate::subscriptions::registry::Registry;

/// A server running in this process (used by `serve` and by the integration tests).
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The MLLP listener's address, when one runs (`--mllp`).
    pub mllp_addr: Option<SocketAddr>,
    /// The DICOM C-STORE SCP's address, when one runs (`--dicom`).
    pub dicom_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    delivery: Option<DeliveryHandle>,
    mllp: Option<crate::devices::mllp_listener::MllpListener>,
    dicom: Option<crate::devices::dicom::scp::DicomListener>,
    mqtt: Option<crate::devices::mqtt::MqttSubscriber>,
    /// The watch for silent devices, and how to stop it.
    offline_watch: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
}

impl RunningServer {
    /// The FHIR base URL, e.g. `http://127.0.0.1:8080/fhir`.
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// Stops accepting connections, waits for in-flight requests to finish, then stops
    /// the subscription delivery (handing its work to other instances).
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(mllp) = self.mllp.take() {
            mllp.stop().await;
        }
        if let Some(dicom) = self.dicom.take() {
            dicom.stop().await;
        }
        if let Some(mqtt) = self.mqtt.take() {
            mqtt.stop().await;
        }
        if let Some((stop, task)) = self.offline_watch.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = self.task.await.unwrap_or(Ok(()));
        if let Some(delivery) = self.delivery.take() {
            delivery.stop().await;
        }
        served
    }

    /// Stops the subscription delivery as a crash would: nothing handed over, leases
    /// left to run out (for tests of the takeover by another instance).
    pub async fn crash(mut self) {
        if let Some(mllp) = self.mllp.take() {
            mllp.stop().await;
        }
        if let Some(dicom) = self.dicom.take() {
            dicom.stop().await;
        }
        if let Some(mqtt) = self.mqtt.take() {
            mqtt.stop().await;
        }
        if let Some((stop, task)) = self.offline_watch.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(delivery) = self.delivery.take() {
            delivery.abandon();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    /// Runs until the process is asked to stop (SIGINT or SIGTERM).
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        self.stop().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Connects, migrates and starts serving HTTP on `config.listen` (port 0 picks a free one).
pub async fn start(config: ServeConfig) -> Result<RunningServer, StartError> {
    // Load the R4 definitions before accepting requests, not on the first one.
    let definitions = tokio::task::spawn_blocking(Definitions::get);
    let connection = db::connect(&config.database_url).await?;
    db::migrate(&connection).await?;
    crate::store::search_parameters::reload(&connection, true)
        .await
        .map_err(|e| StartError::Database(sea_orm::DbErr::Custom(e.to_string())))?;
    let _ = definitions.await;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen.clone(),
                source,
            })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    // Checked when the configuration was resolved; an embedded caller gets the error here.
    let policy = crate::outbound::OutboundPolicy::parse(&config.outbound_allow)
        .map_err(|e| StartError::Database(sea_orm::DbErr::Custom(e)))?;
    let subscriptions = Arc::new(Registry::new(policy.clone()));
    let policy_for_auth = policy.clone();
    let external_idp = config.external_idp.clone();
    let instance = subscriptions.instance.clone();
    let store = Store::open(connection, &config.database_url, subscriptions).await?;
    let metrics = Arc::new(Metrics::default());
    let signing_keys = crate::auth::keys::load_or_create(store.connection())
        .await
        .map_err(|e| StartError::Database(sea_orm::DbErr::Custom(e.message())))?;
    let delivery = delivery::start(
        store.clone(),
        delivery::Settings {
            base_url: config
                .base_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}/fhir")),
            instance,
            retry_horizon: config.subscription_retry_horizon,
            lease: config.delivery_lease,
            poll: std::time::Duration::from_secs(1),
            policy,
            retention: config.subscription_event_retention,
        },
        metrics.clone(),
    );
    let hl7 = crate::devices::hl7_pipeline::Hl7Adapter {
        store: store.clone(),
        metrics: metrics.clone(),
        ingest: crate::devices::ingest::Settings {
            create_patients: config.device_create_patients,
            future_tolerance: config.device_future_tolerance,
        },
        pcd01: crate::devices::pcd01::Settings {
            zone: config.device_time_zone,
        },
    };
    let templates = crate::devices::template::Templates::load(config.device_templates.as_deref())
        .map_err(StartError::Config)?;
    let json_adapter = crate::devices::json_pipeline::JsonAdapter {
        store: store.clone(),
        metrics: metrics.clone(),
        ingest: hl7.ingest.clone(),
        templates: Arc::new(templates),
    };
    let mqtt = match &config.mqtt {
        Some(url) => Some(
            crate::devices::mqtt::MqttSubscriber::start(
                url,
                &config.mqtt_topic_prefix,
                &store.subscriptions().instance,
                json_adapter.clone(),
            )
            .map_err(StartError::Config)?,
        ),
        None => None,
    };
    let mllp = match &config.mllp {
        Some(address) => {
            let adapter = hl7.clone();
            Some(
                crate::devices::mllp_listener::MllpListener::start(address, adapter)
                    .await
                    .map_err(|source| StartError::Listen {
                        addr: address.clone(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    let (stop_offline_watch, offline_stopped) = tokio::sync::watch::channel(false);
    let offline_watch =
        crate::devices::offline::start(store.clone(), config.device_offline_after, offline_stopped);
    let dicom_adapter = crate::devices::dicom::DicomAdapter {
        store: store.clone(),
        metrics: metrics.clone(),
        settings: crate::devices::dicom::store::Settings {
            zone: config.device_time_zone,
        },
    };
    let dicom = match &config.dicom {
        Some(address) => Some(
            crate::devices::dicom::scp::DicomListener::start(
                address,
                crate::devices::dicom::scp::AE_TITLE,
                dicom_adapter.clone(),
            )
            .await
            .map_err(|source| StartError::Listen {
                addr: address.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let auditor = crate::auth::audit::Auditor::start(store.clone());
    let state = AppState {
        store,
        config: Arc::new(config),
        capability: Arc::new(api::metadata::capability_statement()),
        metrics,
        audit: auditor,
        hl7,
        json: json_adapter,
        dicom: dicom_adapter,
        auth: Arc::new(
            crate::auth::token::TokenService::new(signing_keys, policy_for_auth)
                .with_external(external_idp),
        ),
    };
    let app = api::app(state);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Responses go out as soon as they are written (no Nagle delay).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningServer {
        addr,
        mllp_addr: mllp.as_ref().map(|m| m.addr),
        dicom_addr: dicom.as_ref().map(|d| d.addr),
        stop: Some(stop),
        task,
        delivery: Some(delivery),
        mllp,
        dicom,
        mqtt,
        offline_watch: Some((stop_offline_watch, offline_watch)),
    })
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
