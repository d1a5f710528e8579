//! Test harness: `spawn_app()` starts the server on port 0 with a fresh database and
//! returns typed request helpers.

use std::path::PathBuf;

use fhirgate::config::ServeConfig;
use fhirgate::server::{self, RunningServer};
use reqwest::{Method, Response};
use serde_json::{json, Value};

pub const FHIR_JSON: &str = "application/fhir+json";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The access token `request` sends (`system/*.cruds`), when auth is on.
    pub token: Option<String>,
    pub database_url: String,
    config: ServeConfig,
    server: Option<RunningServer>,
    database: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after letting the test adjust its configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestApp {
    // RUST_LOG=… shows the servers' logs with a test's output.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let database = TestDatabase::create().await;
    let mut config = ServeConfig::for_database(&database.url);
    // Every suite runs with authentication on, as a client allowed everything.
    config.auth = fhirgate::config::AuthMode::Smart;
    adjust(&mut config);
    let server = server::start(config.clone()).await.expect("server starts");
    let mut app = TestApp {
        base: server.base_url(),
        client: reqwest::Client::new(),
        token: None,
        database_url: database.url.clone(),
        config,
        server: Some(server),
        database,
    };
    app.renew_token().await;
    app
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else if path.is_empty() || path.starts_with('?') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// The server root (for /openapi.json, /docs, /healthz).
    pub fn root(&self, path: &str) -> String {
        format!("{}{}", self.base.trim_end_matches("/fhir"), path)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Gets a token (`system/*.cruds`) from the running server, when auth is on: a token
    /// names the server it is for, so a restarted server on another port needs a new one.
    pub async fn renew_token(&mut self) {
        self.token = if self.config.auth == fhirgate::config::AuthMode::Smart {
            Some(
                super::auth::token_from(
                    self.root("").as_str(),
                    &self.database_url,
                    "system/*.cruds",
                )
                .await,
            )
        } else {
            None
        };
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::PUT, path, body).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path)
            .send()
            .await
            .expect("DELETE")
    }

    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.request(method, path)
            .header("content-type", FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Creates a resource and returns the stored body (asserting 201).
    pub async fn create(&self, resource: &Value) -> Value {
        let resource_type = resource["resourceType"].as_str().expect("resourceType");
        let response = self.post(resource_type, resource).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json body");
        assert_eq!(status, 201, "create failed: {body}");
        body
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("server stops");
        }
        let server = server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.base = server.base_url();
        self.server = Some(server);
        self.renew_token().await;
    }

    /// Starts the server again (after `crash`) on the address it had, as an operator
    /// restarting it would: clients configured with its URL reach it again.
    pub async fn start_again_at_same_address(&mut self) {
        let address = self
            .base
            .trim_start_matches("http://")
            .trim_end_matches("/fhir")
            .to_string();
        let mut config = self.config.clone();
        config.listen = address;
        let server = server::start(config).await.expect("server starts again");
        self.base = server.base_url();
        self.server = Some(server);
        self.renew_token().await;
    }

    /// Starts another server instance on the same database and configuration.
    pub async fn another_instance(&self) -> RunningServer {
        server::start(self.config.clone())
            .await
            .expect("second instance starts")
    }

    /// Stops the server as a crash would, without starting another.
    pub async fn crash(&mut self) {
        if let Some(server) = self.server.take() {
            server.crash().await;
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }

    /// The address of the DICOM C-STORE SCP (the test must have set `config.dicom`).
    pub fn dicom_addr(&self) -> std::net::SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.dicom_addr)
            .expect("the server runs a DICOM SCP")
    }

    /// The address of the MLLP listener (the test must have set `config.mllp`).
    pub fn mllp_addr(&self) -> std::net::SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.mllp_addr)
            .expect("the server runs an MLLP listener")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the server before its database goes away.
        self.server.take();
        self.database.cleanup();
    }
}

/// Reads a JSON body, asserting the status first (with the body in the message).
pub async fn json_with_status(response: Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    assert_eq!(actual, status, "unexpected status; body: {text}");
    body
}

/// Asserts an OperationOutcome and returns its issues' diagnostics joined by newlines.
pub fn outcome_text(body: &Value) -> String {
    assert_eq!(
        body["resourceType"], "OperationOutcome",
        "not an OperationOutcome: {body}"
    );
    body["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// All `expression` values of an OperationOutcome.
pub fn outcome_expressions(body: &Value) -> Vec<String> {
    body["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn heart_rate(patient: &str, value: i64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

pub fn patient(mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://hospital.example/mrn", "value": mrn}],
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25"
    })
}

/// A database for one test: a temporary SQLite file, or a new PostgreSQL database on the
/// server named by FHIRGATE_TEST_DATABASE_URL.
struct TestDatabase {
    url: String,
    sqlite_dir: Option<PathBuf>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    async fn create() -> TestDatabase {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        match std::env::var("FHIRGATE_TEST_DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let name = format!("fhirgate_test_{unique}");
                let admin = fhirgate::db::connect(&admin_url)
                    .await
                    .expect("connect to FHIRGATE_TEST_DATABASE_URL");
                use sea_orm::ConnectionTrait;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                let _ = admin.close().await;
                let url = replace_database_name(&admin_url, &name);
                TestDatabase {
                    url,
                    sqlite_dir: None,
                    postgres: Some((admin_url, name)),
                }
            }
            _ => {
                let dir = std::env::temp_dir().join(format!("fhirgate-test-{unique}"));
                let url = format!("sqlite://{}/fhirgate.db", dir.display());
                TestDatabase {
                    url,
                    sqlite_dir: Some(dir),
                    postgres: None,
                }
            }
        }
    }

    fn cleanup(&mut self) {
        if let Some(dir) = self.sqlite_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin_url, name)) = self.postgres.take() {
            // Drop runs outside async context; a short-lived runtime on its own thread
            // drops the database (FORCE ends the stopped server's pooled connections).
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    use sea_orm::ConnectionTrait;
                    if let Ok(admin) = fhirgate::db::connect(&admin_url).await {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

fn replace_database_name(url: &str, name: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let prefix = match without_query.rfind('/') {
        Some(slash) if slash > "postgres://".len() => &without_query[..slash],
        _ => without_query,
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

/// A subscriber's endpoint: a real HTTP server on a loopback port that records every
/// notification, answering with a status the test sets (or not at all while stopped).
pub struct Receiver {
    pub url: String,
    addr: std::net::SocketAddr,
    shared: std::sync::Arc<ReceiverShared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Default)]
struct ReceiverShared {
    received: std::sync::Mutex<Vec<Received>>,
    status: std::sync::atomic::AtomicU16,
    arrived: tokio::sync::Notify,
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub raw: String,
    /// The status the receiver answered with.
    pub answered: u16,
    pub at: std::time::Instant,
}

impl Received {
    /// The status Parameters' `type` (handshake, heartbeat, event-notification).
    pub fn kind(&self) -> String {
        self.parameter("type")["valueCode"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn parameter(&self, name: &str) -> Value {
        self.body["entry"][0]["resource"]["parameter"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The event numbers this notification carries.
    pub fn event_numbers(&self) -> Vec<i64> {
        self.body["entry"][0]["resource"]["parameter"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["name"] == "notification-event")
                    .filter_map(|p| p["part"][0]["valueString"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::bind("127.0.0.1:0".parse().unwrap(), Default::default()).await
    }

    async fn bind(addr: std::net::SocketAddr, shared: std::sync::Arc<ReceiverShared>) -> Receiver {
        use axum::routing::post;
        shared
            .status
            .compare_exchange(
                0,
                200,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .ok();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let state = shared.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let answered = state.status.load(std::sync::atomic::Ordering::SeqCst);
                    let mut map = reqwest::header::HeaderMap::new();
                    for (name, value) in headers.iter() {
                        if let (Ok(n), Ok(v)) = (
                            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
                            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
                        ) {
                            map.append(n, v);
                        }
                    }
                    state.received.lock().unwrap().push(Received {
                        headers: map,
                        body: serde_json::from_str(&body).unwrap_or(Value::Null),
                        raw: body,
                        answered,
                        at: std::time::Instant::now(),
                    });
                    state.arrived.notify_waiters();
                    axum::http::StatusCode::from_u16(answered).unwrap()
                }
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// Answers every notification from now on with `status`.
    pub fn answer(&self, status: u16) {
        self.shared
            .status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops listening: notifications fail with a refused connection.
    pub async fn go_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    /// Listens again on the same port.
    pub async fn come_back(&mut self) {
        let again = Receiver::bind(self.addr, self.shared.clone()).await;
        *self = again;
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received (up to `seconds`), then returns it.
    pub async fn wait_until(
        &self,
        seconds: u64,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let arrived = self.shared.arrived.notified();
            let received = self.received();
            if done(&received) {
                return received;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                panic!(
                    "the receiver did not get what was expected within {seconds}s; it got: {:#?}",
                    received
                        .iter()
                        .map(|r| (r.kind(), r.event_numbers(), r.answered))
                        .collect::<Vec<_>>()
                );
            }
            let _ = tokio::time::timeout(left.min(std::time::Duration::from_millis(200)), arrived)
                .await;
        }
    }
}
