//! The `notify` scenario: write-to-receipt latency of subscription notifications.
//!
//! Starts its own rest-hook receiver on a loopback port, creates `--subscriptions`
//! topic-based subscriptions (one patient each, payload `id-only`) pointing at it, waits
//! for their handshakes, then writes Observations at `--rate` per second (open loop:
//! a write is started on schedule whatever the previous ones do) for `--seconds`, spread
//! over the subscribed patients. The latency of an Observation runs from the moment its
//! POST is sent to the moment the receiver gets the notification naming it. The server
//! must allow the receiver's address (`--outbound-allow 127.0.0.1`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

#[derive(Default)]
struct Receipts {
    /// Observation id → when its notification arrived (every arrival).
    events: Mutex<HashMap<String, Vec<Instant>>>,
    handshakes: AtomicU64,
    notifications: AtomicU64,
}

pub struct Settings {
    pub base: String,
    pub subscriptions: u64,
    pub rate: u64,
    pub seconds: u64,
    pub max_in_flight: usize,
    pub token: Option<String>,
}

pub async fn run(client: &reqwest::Client, settings: &Settings) -> Value {
    let receipts = Arc::new(Receipts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver port");
    let receiver = listener.local_addr().expect("receiver address");
    let state = receipts.clone();
    let app = axum::Router::new().route(
        "/hook/{n}",
        axum::routing::post(move |body: String| {
            let state = state.clone();
            async move {
                let arrived = Instant::now();
                record(&state, &body, arrived);
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    for n in 0..settings.subscriptions {
        let subscription = json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "notification latency benchmark",
            "criteria": "http://fhirgate.dev/fhir/SubscriptionTopic/observation",
            "_criteria": {"extension": [{
                "url": format!("{BACKPORT}backport-filter-criteria"),
                "valueString": format!("Observation?patient=Patient/notify-p{n}")
            }]},
            "channel": {
                "type": "rest-hook",
                "endpoint": format!("http://{receiver}/hook/{n}"),
                "payload": "application/fhir+json",
                "_payload": {"extension": [{
                    "url": format!("{BACKPORT}backport-payload-content"), "valueCode": "id-only"
                }]}
            }
        });
        let response = authorised(
            client.post(format!("{}/Subscription", settings.base)),
            settings,
        )
        .header("content-type", "application/fhir+json")
        .body(subscription.to_string())
        .send()
        .await
        .expect("create subscription");
        assert!(
            response.status().is_success(),
            "cannot create a subscription: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while receipts.handshakes.load(Ordering::Relaxed) < settings.subscriptions {
        assert!(
            Instant::now() < deadline,
            "only {} of {} handshakes arrived; does the server allow 127.0.0.1 (--outbound-allow)?",
            receipts.handshakes.load(Ordering::Relaxed),
            settings.subscriptions
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the subscriptions become active before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sent: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight));
    let mut ticker =
        tokio::time::interval(Duration::from_nanos(1_000_000_000 / settings.rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = settings.rate * settings.seconds;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for k in 0..total {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let patient = k % settings.subscriptions;
        let body = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/notify-p{patient}")},
            "effectiveDateTime": "2024-03-01T10:00:00Z",
            "valueQuantity": {"value": 60 + (k % 40), "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        })
        .to_string();
        let request = authorised(
            client.post(format!("{}/Observation", settings.base)),
            settings,
        )
        .header("content-type", "application/fhir+json")
        .body(body);
        let (sent, errors) = (sent.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let result = request.send().await;
            drop(permit);
            match result {
                Ok(response) if response.status().as_u16() == 201 => {
                    let created: Value = response.json().await.unwrap_or_default();
                    if let Some(id) = created["id"].as_str() {
                        sent.lock().unwrap().push((id.to_string(), at));
                    }
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let writing = started.elapsed().as_secs_f64();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    // Wait for the stragglers (at most 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = receipts.events.lock().unwrap().len();
        if received >= sent.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = receipts.events.lock().unwrap();
    let mut latencies: Vec<f64> = Vec::with_capacity(sent.len());
    let mut missing = 0;
    let mut duplicates = 0;
    for (id, at) in &sent {
        match events.get(id) {
            Some(arrivals) => {
                duplicates += arrivals.len() - 1;
                latencies.push(arrivals[0].saturating_duration_since(*at).as_secs_f64() * 1000.0);
            }
            None => missing += 1,
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    json!({
        "scenario": "notify",
        "subscriptions": settings.subscriptions,
        "target_rate": settings.rate,
        "written": sent.len(),
        "write_rate": sent.len() as f64 / writing,
        "write_errors": errors.load(Ordering::Relaxed),
        "skipped_over_in_flight_limit": skipped.load(Ordering::Relaxed),
        "notified": latencies.len(),
        "missing": missing,
        "duplicates": duplicates,
        "notifications": receipts.notifications.load(Ordering::Relaxed),
        "p50_ms": pct(50.0), "p95_ms": pct(95.0), "p99_ms": pct(99.0), "max_ms": pct(100.0)
    })
}

fn authorised(request: reqwest::RequestBuilder, settings: &Settings) -> reqwest::RequestBuilder {
    match &settings.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Notes a notification: a handshake, or the Observations its events name.
fn record(receipts: &Receipts, body: &str, arrived: Instant) {
    let Ok(bundle) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let parameters = bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let kind = parameters
        .iter()
        .find(|p| p["name"] == "type")
        .and_then(|p| p["valueCode"].as_str())
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "handshake" => {
            receipts.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        "event-notification" => {
            receipts.notifications.fetch_add(1, Ordering::Relaxed);
            let mut events = receipts.events.lock().unwrap();
            for event in parameters
                .iter()
                .filter(|p| p["name"] == "notification-event")
            {
                for part in event["part"].as_array().into_iter().flatten() {
                    if part["name"] == "focus" {
                        // …/Observation/{id}/_history/{version}
                        let reference = part["valueReference"]["reference"]
                            .as_str()
                            .unwrap_or_default();
                        let mut segments = reference.rsplit('/');
                        let _version = segments.next();
                        let _history = segments.next();
                        if let Some(id) = segments.next() {
                            events.entry(id.to_string()).or_default().push(arrived);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}
