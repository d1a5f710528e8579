//! Subscription delivery as a subscriber sees it: a real HTTP endpoint on a loopback
//! port (allowed with `--outbound-allow 127.0.0.1`) receives handshakes, heartbeats and
//! event notifications; retries, the error state, re-activation, `$status`, `$events`,
//! restarts and a second instance sharing the database.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::helpers::*;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const TOPICS: &str = "http://fhirgate.dev/fhir/SubscriptionTopic/";

async fn spawn_delivering_app() -> TestApp {
    spawn_app_with(|config| config.outbound_allow = vec!["127.0.0.1".into()]).await
}

fn subscription(endpoint: &str, topic: &str, filters: &[&str], payload: &str) -> Value {
    let mut body = json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}backport-subscription")]},
        "status": "requested",
        "reason": "device data for the EHR",
        "criteria": format!("{TOPICS}{topic}"),
        "_criteria": {"extension": filters.iter().map(|f| json!({
            "url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f
        })).collect::<Vec<_>>()},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{
                "url": format!("{BACKPORT}backport-payload-content"), "valueCode": payload
            }]}
        }
    });
    if filters.is_empty() {
        body.as_object_mut().unwrap().remove("_criteria");
    }
    body
}

/// Creates a subscription and returns its id.
async fn subscribe(app: &TestApp, subscription: &Value) -> String {
    app.create(subscription).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the stored Subscription has `status`, and returns it.
async fn wait_for_status(app: &TestApp, id: &str, status: &str, seconds: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let stored = json_with_status(app.get(&format!("Subscription/{id}")).await, 200).await;
        if stored["status"] == status {
            return stored;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Subscription/{id} did not become {status} within {seconds}s: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event_notifications(received: &[Received]) -> Vec<Received> {
    received
        .iter()
        .filter(|r| r.kind() == "event-notification")
        .cloned()
        .collect()
}

/// Every event number delivered (accepted by the receiver), in arrival order.
fn delivered_numbers(received: &[Received]) -> Vec<i64> {
    received
        .iter()
        .filter(|r| r.kind() == "event-notification" && (200..300).contains(&r.answered))
        .flat_map(|r| r.event_numbers())
        .collect()
}

#[tokio::test]
async fn a_handshake_activates_and_each_payload_type_is_delivered() {
    let app = spawn_delivering_app().await;
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];
    let mut ids = Vec::new();
    for (receiver, payload) in receivers.iter().zip(["empty", "id-only", "full-resource"]) {
        let body = subscription(
            &receiver.url,
            "observation",
            &["Observation?patient=Patient/p1"],
            payload,
        );
        let created = app.create(&body).await;
        assert_eq!(created["status"], "requested");
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    for (receiver, id) in receivers.iter().zip(&ids) {
        let received = receiver.wait_until(10, |r| !r.is_empty()).await;
        let handshake = &received[0];
        assert_eq!(handshake.kind(), "handshake");
        assert_eq!(handshake.headers["content-type"], "application/fhir+json");
        assert_eq!(handshake.body["type"], "history");
        assert_eq!(
            handshake.parameter("subscription")["valueReference"]["reference"],
            format!("{}/Subscription/{id}", app.base)
        );
        assert_eq!(
            handshake.parameter("topic")["valueCanonical"],
            format!("{TOPICS}observation")
        );
        wait_for_status(&app, id, "active", 10).await;
    }

    let mine = app.create(&heart_rate("Patient/p1", 72)).await;
    app.create(&heart_rate("Patient/p2", 90)).await; // filtered out
    let observation_id = mine["id"].as_str().unwrap();
    for (receiver, payload) in receivers.iter().zip(["empty", "id-only", "full-resource"]) {
        let received = receiver
            .wait_until(10, |r| !event_notifications(r).is_empty())
            .await;
        let notification = &event_notifications(&received)[0];
        assert_eq!(notification.event_numbers(), vec![1], "{payload}");
        assert_eq!(
            notification.parameter("events-since-subscription-start")["valueString"],
            "1"
        );
        let event = notification.parameter("notification-event");
        let entries = notification.body["entry"].as_array().unwrap();
        match payload {
            "empty" => {
                assert_eq!(entries.len(), 1, "only the status");
                assert!(event["part"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["name"] != "focus"));
            }
            "id-only" => {
                assert_eq!(entries.len(), 2);
                assert!(entries[1].get("resource").is_none());
                assert_eq!(
                    event["part"][2]["valueReference"]["reference"],
                    format!("{}/Observation/{observation_id}/_history/1", app.base)
                );
            }
            _ => {
                assert_eq!(entries[1]["resource"]["id"], observation_id);
                assert_eq!(entries[1]["resource"]["valueQuantity"]["value"], 72);
                assert_eq!(entries[1]["request"]["method"], "POST");
            }
        }
    }
    // Only the one Observation of p1 was sent, once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for receiver in &receivers {
        assert_eq!(delivered_numbers(&receiver.received()), vec![1]);
    }

    // A deleted subscription gets nothing more; the others go on.
    let response = app.delete(&format!("Subscription/{}", ids[0])).await;
    assert_eq!(response.status(), 204);
    app.create(&heart_rate("Patient/p1", 73)).await;
    receivers[1]
        .wait_until(10, |r| delivered_numbers(r) == vec![1, 2])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivered_numbers(&receivers[0].received()), vec![1]);
}

#[tokio::test]
async fn topics_filters_and_classic_criteria_decide_what_is_sent() {
    let app = spawn_delivering_app().await;
    let receiver = Receiver::start().await;
    // Classic R4 criteria with a range the server checks against the stored row.
    let mut classic = subscription(&receiver.url, "observation", &[], "id-only");
    classic["criteria"] = json!("Observation?code=http://loinc.org|8867-4&value-quantity=gt100");
    classic.as_object_mut().unwrap().remove("_criteria");
    let classic_id = subscribe(&app, &classic).await;
    let devices = Receiver::start().await;
    let device_status = subscribe(
        &app,
        &subscription(&devices.url, "device-status", &[], "full-resource"),
    )
    .await;
    wait_for_status(&app, &classic_id, "active", 10).await;
    wait_for_status(&app, &device_status, "active", 10).await;

    app.create(&heart_rate("Patient/p1", 80)).await; // not above 100
    let fast = app.create(&heart_rate("Patient/p1", 130)).await;
    let received = receiver
        .wait_until(10, |r| !event_notifications(r).is_empty())
        .await;
    let focus = &event_notifications(&received)[0].parameter("notification-event")["part"][2];
    assert_eq!(
        focus["valueReference"]["reference"],
        format!(
            "{}/Observation/{}/_history/1",
            app.base,
            fast["id"].as_str().unwrap()
        )
    );
    assert!(
        event_notifications(&received)[0]
            .parameter("topic")
            .is_null(),
        "classic criteria have no topic"
    );

    // Device status: created, then a change of status; a change of anything else is not.
    let mut device = app
        .create(&json!({"resourceType": "Device", "status": "active"}))
        .await;
    let device_id = device["id"].as_str().unwrap().to_string();
    device["lotNumber"] = json!("L-1");
    json_with_status(app.put(&format!("Device/{device_id}"), &device).await, 200).await;
    device["status"] = json!("inactive");
    json_with_status(app.put(&format!("Device/{device_id}"), &device).await, 200).await;
    let received = devices
        .wait_until(10, |r| delivered_numbers(r).len() >= 2)
        .await;
    let notifications = event_notifications(&received);
    let statuses: Vec<Value> = notifications
        .iter()
        .flat_map(|n| n.body["entry"].as_array().unwrap()[1..].to_vec())
        .map(|e| e["resource"]["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("active"), json!("inactive")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivered_numbers(&devices.received()), vec![1, 2]);
    assert_eq!(delivered_numbers(&receiver.received()), vec![1]);
}

#[tokio::test]
async fn heartbeats_headers_and_signatures() {
    let app = spawn_delivering_app().await;
    let receiver = Receiver::start().await;
    let mut body = subscription(&receiver.url, "observation", &[], "empty");
    body["channel"]["header"] = json!(["Authorization: Bearer ehr-token-123"]);
    body["channel"]["extension"] = json!([
        {"url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": 1},
        {"url": "http://fhirgate.dev/fhir/StructureDefinition/subscription-signing-secret",
         "valueString": "a-shared-secret-of-the-ehr"}
    ]);
    let created = app.create(&body).await;
    let text = created.to_string();
    assert!(
        !text.contains("a-shared-secret"),
        "the secret is never read back: {text}"
    );
    assert!(text.contains("subscription-signed"), "{text}");
    let id = created["id"].as_str().unwrap().to_string();
    wait_for_status(&app, &id, "active", 10).await;

    let received = receiver
        .wait_until(10, |r| {
            r.iter().filter(|n| n.kind() == "heartbeat").count() >= 2
        })
        .await;
    let heartbeats: Vec<&Received> = received
        .iter()
        .filter(|n| n.kind() == "heartbeat")
        .collect();
    let gap = heartbeats[1].at - heartbeats[0].at;
    assert!(
        gap >= Duration::from_millis(800),
        "a heartbeat each period, not more often: {gap:?}"
    );
    for notification in &received {
        assert_eq!(
            notification.headers["authorization"],
            "Bearer ehr-token-123"
        );
        // X-Fhirgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
        let header = notification.headers["x-fhirgate-signature"]
            .to_str()
            .unwrap()
            .to_string();
        let (t, v1) = header
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .expect("t=…,v1=…");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"a-shared-secret-of-the-ehr");
        let expected: String =
            ring::hmac::sign(&key, format!("{t}.{}", notification.raw).as_bytes())
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        assert_eq!(v1, expected);
    }
}

#[tokio::test]
async fn retries_reach_a_receiver_that_was_down_in_order_without_duplicates() {
    let app = spawn_delivering_app().await;
    let mut receiver = Receiver::start().await;
    let id = subscribe(
        &app,
        &subscription(&receiver.url, "observation", &[], "id-only"),
    )
    .await;
    wait_for_status(&app, &id, "active", 10).await;

    // Down hard (connection refused), then answering 503: events pile up meanwhile.
    receiver.go_down().await;
    for value in 0..5 {
        app.create(&heart_rate("Patient/p1", 60 + value)).await;
    }
    let failed = wait_for_status(&app, &id, "error", 10).await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("connect"),
        "Subscription.error says why: {failed}"
    );
    receiver.come_back().await;
    receiver.answer(503);
    receiver
        .wait_until(10, |r| r.iter().any(|n| n.answered == 503))
        .await;
    for value in 5..10 {
        app.create(&heart_rate("Patient/p1", 60 + value)).await;
    }
    let status = json_with_status(app.get(&format!("Subscription/{id}/$status")).await, 200).await;
    assert_eq!(status["type"], "searchset");
    let parameters = &status["entry"][0]["resource"];
    assert_eq!(parameters["resourceType"], "Parameters");
    let error = parameters["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "error")
        .expect("the last error");
    assert!(
        error["valueCodeableConcept"]["text"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{error}"
    );

    receiver.answer(200);
    let received = receiver
        .wait_until(20, |r| delivered_numbers(r).len() >= 10)
        .await;
    assert_eq!(delivered_numbers(&received), (1..=10).collect::<Vec<_>>());
    wait_for_status(&app, &id, "active", 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        delivered_numbers(&receiver.received()),
        (1..=10).collect::<Vec<_>>(),
        "no duplicates"
    );
}

#[tokio::test]
async fn past_the_retry_horizon_it_stays_in_error_until_reactivated() {
    let app = spawn_app_with(|config| {
        config.outbound_allow = vec!["127.0.0.1".into()];
        config.subscription_retry_horizon = Duration::from_secs(1);
    })
    .await;
    let receiver = Receiver::start().await;
    let id = subscribe(
        &app,
        &subscription(&receiver.url, "observation", &[], "id-only"),
    )
    .await;
    wait_for_status(&app, &id, "active", 10).await;
    receiver.answer(500);
    app.create(&heart_rate("Patient/p1", 70)).await;
    let stored = wait_for_status(&app, &id, "error", 10).await;
    assert!(
        stored["error"].as_str().unwrap().contains("500"),
        "{stored}"
    );
    // Retries stop once the horizon has passed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = receiver.received().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.received().len(),
        attempts,
        "no retries after the horizon"
    );
    // Events still get numbers while it is in error.
    app.create(&heart_rate("Patient/p1", 71)).await;

    // The client asks for it again: a new handshake, then the events it missed.
    receiver.answer(200);
    let mut stored = json_with_status(app.get(&format!("Subscription/{id}")).await, 200).await;
    stored["status"] = json!("requested");
    let updated =
        json_with_status(app.put(&format!("Subscription/{id}"), &stored).await, 200).await;
    assert_eq!(updated["status"], "requested");
    let received = receiver
        .wait_until(10, |r| delivered_numbers(r) == vec![1, 2])
        .await;
    let last_handshake = received
        .iter()
        .rposition(|r| r.kind() == "handshake")
        .unwrap();
    let first_delivery = received
        .iter()
        .position(|r| r.kind() == "event-notification" && r.answered == 200)
        .unwrap();
    assert!(last_handshake < first_delivery, "the handshake comes first");
    let active = wait_for_status(&app, &id, "active", 10).await;
    assert!(active.get("error").is_none(), "{active}");
}

#[tokio::test]
async fn events_can_be_replayed_by_number() {
    let app = spawn_delivering_app().await;
    let receiver = Receiver::start().await;
    let id = subscribe(
        &app,
        &subscription(
            &receiver.url,
            "observation",
            &["Observation?patient=p1"],
            "id-only",
        ),
    )
    .await;
    let mut created = Vec::new();
    for value in 0..4 {
        created.push(app.create(&heart_rate("Patient/p1", 60 + value)).await);
    }
    receiver
        .wait_until(10, |r| delivered_numbers(r).len() == 4)
        .await;
    let replay = json_with_status(
        app.get(&format!(
            "Subscription/{id}/$events?eventsSinceNumber=2&eventsUntilNumber=3&content=full-resource"
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(replay["type"], "history");
    let parameters = &replay["entry"][0]["resource"]["parameter"];
    let kind = parameters
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "type")
        .unwrap();
    assert_eq!(kind["valueCode"], "query-event");
    let entries = replay["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1]["resource"]["id"], created[1]["id"]);
    assert_eq!(entries[2]["resource"]["id"], created[2]["id"]);

    let all = json_with_status(app.get(&format!("Subscription/{id}/$events")).await, 200).await;
    assert_eq!(
        all["entry"].as_array().unwrap().len(),
        5,
        "status + 4 id-only entries"
    );
    let bad = json_with_status(
        app.get(&format!("Subscription/{id}/$events?eventsSinceNumber=two"))
            .await,
        400,
    )
    .await;
    assert!(outcome_text(&bad).contains("eventsSinceNumber"));
    json_with_status(app.get("Subscription/nope/$events").await, 404).await;
    let many = json_with_status(app.get(&format!("Subscription/$status?id={id}")).await, 200).await;
    assert_eq!(many["total"], 1);
    // Instance operations of other types still work next to these.
    let validated = app
        .request(Method::POST, &format!("Subscription/{id}/$validate"))
        .header("content-type", FHIR_JSON)
        .body(
            json_with_status(app.get(&format!("Subscription/{id}")).await, 200)
                .await
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(validated.status(), 200);
}

#[tokio::test]
async fn undelivered_events_survive_a_restart() {
    let mut app = spawn_delivering_app().await;
    let mut receiver = Receiver::start().await;
    let id = subscribe(
        &app,
        &subscription(&receiver.url, "observation", &[], "id-only"),
    )
    .await;
    wait_for_status(&app, &id, "active", 10).await;
    receiver.go_down().await;
    for value in 0..3 {
        app.create(&heart_rate("Patient/p1", 60 + value)).await;
    }
    wait_for_status(&app, &id, "error", 10).await;
    app.restart().await;
    receiver.come_back().await;
    let received = receiver
        .wait_until(20, |r| delivered_numbers(r).len() >= 3)
        .await;
    assert_eq!(delivered_numbers(&received), vec![1, 2, 3]);
}

#[tokio::test]
async fn endpoints_the_operator_did_not_allow_are_refused() {
    let app = spawn_app().await; // nothing allowed
    for (endpoint, says) in [
        ("http://127.0.0.1:9/hook", "https"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.0.0.7/hook", "private"),
        ("https://localhost/hook", "localhost"),
        ("ftp://ehr.example.org/hook", "scheme"),
    ] {
        let body = json_with_status(
            app.post(
                "Subscription",
                &subscription(endpoint, "observation", &[], "empty"),
            )
            .await,
            422,
        )
        .await;
        assert!(outcome_text(&body).contains(says), "{endpoint}: {body}");
        assert!(outcome_expressions(&body).contains(&"Subscription.channel.endpoint".to_string()));
    }
}

#[tokio::test]
async fn metrics_count_deliveries_and_the_queue() {
    let app = spawn_delivering_app().await;
    let receiver = Receiver::start().await;
    let id = subscribe(
        &app,
        &subscription(&receiver.url, "observation", &[], "empty"),
    )
    .await;
    wait_for_status(&app, &id, "active", 10).await;
    app.create(&heart_rate("Patient/p1", 60)).await;
    receiver
        .wait_until(10, |r| delivered_numbers(r).len() == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app.client.get(app.root("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for line in [
        "fhirgate_subscription_notifications_total{kind=\"handshake\",outcome=\"delivered\"} 1",
        "fhirgate_subscription_notifications_total{kind=\"event-notification\",outcome=\"delivered\"} 1",
        "fhirgate_subscription_events_delivered_total 1",
        "fhirgate_subscription_delivery_latency_seconds_count 1",
        "fhirgate_subscription_queue_depth 0",
        "fhirgate_subscriptions{status=\"active\"} 1",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

/// Leases held per instance (subscription_state.owner), read straight from the database.
async fn lease_owners(app: &TestApp) -> Vec<Option<String>> {
    use sea_orm::ConnectionTrait;
    let db = fhirgate::db::connect(&app.database_url).await.unwrap();
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT owner FROM subscription_state ORDER BY subscription_id",
        ))
        .await
        .unwrap();
    let owners = rows
        .iter()
        .map(|r| r.try_get::<Option<String>>("", "owner").unwrap())
        .collect();
    let _ = db.close().await;
    owners
}

#[tokio::test]
async fn two_instances_on_postgresql_deliver_each_event_once_and_take_over() {
    let mut app = spawn_app_with(|config| {
        config.outbound_allow = vec!["127.0.0.1".into()];
        config.delivery_lease = Duration::from_secs(3);
    })
    .await;
    if !app.is_postgres() {
        eprintln!("skipped: several instances share a PostgreSQL database (set FHIRGATE_TEST_DATABASE_URL)");
        return;
    }
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];
    let mut ids = Vec::new();
    for receiver in &receivers {
        ids.push(
            subscribe(
                &app,
                &subscription(&receiver.url, "observation", &[], "id-only"),
            )
            .await,
        );
    }
    for id in &ids {
        wait_for_status(&app, id, "active", 10).await;
    }
    let second = app.another_instance().await;
    let second_base = second.base_url();
    // A token names the server it is for: the second instance (another port here; one
    // public base URL behind a load balancer in production) gets its own.
    let second_token = super::auth::token_from(
        second_base.trim_end_matches("/fhir"),
        &app.database_url,
        "system/*.cruds",
    )
    .await;
    let token_for = |base: &str| {
        if base == second_base {
            second_token.clone()
        } else {
            app.token.clone().unwrap_or_default()
        }
    };

    // Normal operation: writes through both instances, each event delivered once, in order.
    for value in 0..20 {
        let base = if value % 2 == 0 {
            &app.base
        } else {
            &second_base
        };
        let response = app
            .client
            .post(format!("{base}/Observation"))
            .bearer_auth(token_for(base))
            .header("content-type", FHIR_JSON)
            .body(heart_rate("Patient/p1", 60 + value).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    for receiver in &receivers {
        receiver
            .wait_until(20, |r| delivered_numbers(r).len() >= 20)
            .await;
    }

    // The first instance dies holding leases while the receivers fail; the second takes
    // its subscriptions over once the leases run out.
    for receiver in &receivers {
        receiver.answer(503);
    }
    for value in 20..25 {
        let response = app
            .client
            .post(format!("{second_base}/Observation"))
            .bearer_auth(&second_token)
            .header("content-type", FHIR_JSON)
            .body(heart_rate("Patient/p1", 60 + value).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    for receiver in &receivers {
        receiver
            .wait_until(10, |r| r.iter().any(|n| n.answered == 503))
            .await;
    }
    let owners = lease_owners(&app).await;
    assert!(owners.iter().all(Option::is_some), "{owners:?}");
    app.crash().await;
    for receiver in &receivers {
        receiver.answer(200);
    }
    for value in 25..30 {
        let response = app
            .client
            .post(format!("{second_base}/Observation"))
            .bearer_auth(&second_token)
            .header("content-type", FHIR_JSON)
            .body(heart_rate("Patient/p1", 60 + value).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    for receiver in &receivers {
        let received = receiver
            .wait_until(30, |r| delivered_numbers(r).len() >= 30)
            .await;
        assert_eq!(delivered_numbers(&received), (1..=30).collect::<Vec<_>>());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for receiver in &receivers {
        assert_eq!(
            delivered_numbers(&receiver.received()),
            (1..=30).collect::<Vec<_>>(),
            "no event delivered twice"
        );
    }
    second.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_clients_bind_with_a_token_and_receive_handshake_events_and_heartbeats() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app().await;
    let mut body = subscription(
        "",
        "observation",
        &["Observation?patient=p1"],
        "full-resource",
    );
    body["channel"] = json!({
        "type": "websocket",
        "payload": "application/fhir+json",
        "_payload": {"extension": [{
            "url": format!("{BACKPORT}backport-payload-content"), "valueCode": "full-resource"
        }]},
        "extension": [{"url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": 1}]
    });
    let id = subscribe(&app, &body).await;
    let rest_hook = subscribe(
        &app,
        &subscription("https://ehr.example.org/hook", "observation", &[], "empty"),
    )
    .await;
    let refused = json_with_status(
        app.post(
            &format!("Subscription/{rest_hook}/$get-ws-binding-token"),
            &json!({}),
        )
        .await,
        422,
    )
    .await;
    assert!(outcome_text(&refused).contains("websocket"));

    let token = json_with_status(
        app.post(
            &format!("Subscription/{id}/$get-ws-binding-token"),
            &json!({}),
        )
        .await,
        200,
    )
    .await;
    let value = |name: &str| {
        token["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let url = value("websocket-url")["valueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("ws://"), "{url}");
    assert_eq!(value("subscription")["valueString"], id.as_str());
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();

    async fn next_bundle(
        socket: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
                  + Unpin),
    ) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a message within 10s")
                .expect("open")
                .expect("message");
            if let Message::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }
    fn kind(bundle: &Value) -> String {
        bundle["entry"][0]["resource"]["parameter"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "type"))
            .and_then(|p| p["valueCode"].as_str())
            .unwrap_or("(none)")
            .to_string()
    }

    socket
        .send(Message::Text("bind-with-token: wrong".into()))
        .await
        .unwrap();
    let error = next_bundle(&mut socket).await;
    assert_eq!(error["resourceType"], "OperationOutcome");
    assert!(error.to_string().contains("unknown binding token"));

    let token_text = value("token")["valueString"].as_str().unwrap().to_string();
    socket
        .send(Message::Text(
            format!("bind-with-token: {token_text}").into(),
        ))
        .await
        .unwrap();
    let handshake = next_bundle(&mut socket).await;
    assert_eq!(kind(&handshake), "handshake");
    wait_for_status(&app, &id, "active", 10).await;

    let observation = app.create(&heart_rate("Patient/p1", 77)).await;
    app.create(&heart_rate("Patient/p2", 78)).await;
    let notification = loop {
        let bundle = next_bundle(&mut socket).await;
        if kind(&bundle) == "event-notification" {
            break bundle;
        }
        assert_eq!(kind(&bundle), "heartbeat");
    };
    assert_eq!(
        notification["entry"][1]["resource"]["id"],
        observation["id"]
    );
    let heartbeat = loop {
        let bundle = next_bundle(&mut socket).await;
        assert_ne!(
            kind(&bundle),
            "event-notification",
            "only p1's Observation: {bundle}"
        );
        if kind(&bundle) == "heartbeat" {
            break bundle;
        }
    };
    assert_eq!(heartbeat["type"], "history");
    let status = json_with_status(app.get(&format!("Subscription/{id}/$status")).await, 200).await;
    assert!(
        status.to_string().contains("\"valueString\":\"1\""),
        "{status}"
    );
}

#[tokio::test]
async fn a_subscription_ends_at_its_end_time() {
    let app = spawn_delivering_app().await;
    let receiver = Receiver::start().await;
    let mut body = subscription(&receiver.url, "observation", &[], "id-only");
    let end = chrono::Utc::now() + chrono::Duration::seconds(3);
    body["end"] = json!(end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let id = subscribe(&app, &body).await;
    wait_for_status(&app, &id, "active", 10).await;
    app.create(&heart_rate("Patient/p1", 60)).await;
    receiver
        .wait_until(10, |r| delivered_numbers(r) == vec![1])
        .await;
    let ended = wait_for_status(&app, &id, "off", 10).await;
    assert_eq!(ended["end"], body["end"]);
    app.create(&heart_rate("Patient/p1", 61)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        delivered_numbers(&receiver.received()),
        vec![1],
        "nothing after the end"
    );
    let status = json_with_status(app.get(&format!("Subscription/{id}/$status")).await, 200).await;
    assert!(
        status.to_string().contains("\"valueCode\":\"off\""),
        "{status}"
    );
}

#[tokio::test]
async fn delivered_events_are_pruned_after_the_retention_and_undelivered_ones_kept() {
    let app = spawn_app_with(|config| {
        config.outbound_allow = vec!["127.0.0.1".into()];
        config.subscription_event_retention = Duration::from_secs(2);
    })
    .await;
    let mut receiver = Receiver::start().await;
    let id = subscribe(
        &app,
        &subscription(&receiver.url, "observation", &[], "id-only"),
    )
    .await;
    wait_for_status(&app, &id, "active", 10).await;
    app.create(&heart_rate("Patient/p1", 60)).await;
    receiver
        .wait_until(10, |r| delivered_numbers(r) == vec![1])
        .await;
    receiver.go_down().await;
    app.create(&heart_rate("Patient/p1", 61)).await;
    wait_for_status(&app, &id, "error", 10).await;

    let numbers = |bundle: &Value| -> Vec<String> {
        bundle["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "notification-event")
            .map(|p| p["part"][0]["valueString"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let replay =
            json_with_status(app.get(&format!("Subscription/{id}/$events")).await, 200).await;
        if numbers(&replay) == vec!["2"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "event 1 (delivered) should be pruned and event 2 (undelivered) kept: {:?}",
            numbers(&replay)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver.come_back().await;
    let received = receiver
        .wait_until(20, |r| delivered_numbers(r) == vec![1, 2])
        .await;
    assert_eq!(delivered_numbers(&received), vec![1, 2]);
    let status = json_with_status(app.get(&format!("Subscription/{id}/$status")).await, 200).await;
    assert!(
        status.to_string().contains("\"valueString\":\"2\""),
        "numbers go on: {status}"
    );
}

#[tokio::test]
async fn a_killed_server_process_is_taken_over_by_another() {
    use super::cli::{fhirgate, serve, temp_dir};

    // The test database (its in-process server is stopped at once; the two instances are
    // `fhirgate serve` processes).
    let mut app = spawn_app().await;
    if !app.is_postgres() {
        eprintln!("skipped: several instances share a PostgreSQL database (set FHIRGATE_TEST_DATABASE_URL)");
        return;
    }
    app.crash().await;
    let dir = temp_dir("takeover");
    let instance = || {
        let mut command = fhirgate(&dir);
        command.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &app.database_url,
            "--outbound-allow",
            "127.0.0.1",
            "--delivery-lease",
            "2s",
            "--auth",
            "off",
        ]);
        serve(command)
    };
    let (mut first, first_addr) = instance();
    let first_base = format!("http://{first_addr}/fhir");
    let receiver = Receiver::start().await;
    let client = reqwest::Client::new();
    let post = |base: String, body: Value| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("{base}/{}", body["resourceType"].as_str().unwrap()))
                .header("content-type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()
        }
    };
    post(
        first_base.clone(),
        subscription(&receiver.url, "observation", &[], "id-only"),
    )
    .await;
    receiver.wait_until(20, |r| !r.is_empty()).await;
    // The receiver fails: the first instance holds the lease and keeps retrying.
    receiver.answer(503);
    for value in 0..3 {
        post(first_base.clone(), heart_rate("Patient/p1", 60 + value)).await;
    }
    receiver
        .wait_until(20, |r| r.iter().filter(|n| n.answered == 503).count() >= 2)
        .await;
    let (mut second, second_addr) = instance();
    let second_base = format!("http://{second_addr}/fhir");

    let owners = lease_owners(&app).await;
    assert!(
        owners[0].is_some(),
        "the first instance holds the lease: {owners:?}"
    );
    // kill -9: no lease handed back, no goodbye.
    first.kill().unwrap();
    let _ = first.wait();
    receiver.answer(200);
    for value in 3..6 {
        post(second_base.clone(), heart_rate("Patient/p1", 60 + value)).await;
    }
    let received = receiver
        .wait_until(30, |r| delivered_numbers(r).len() >= 6)
        .await;
    assert_eq!(delivered_numbers(&received), (1..=6).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        delivered_numbers(&receiver.received()),
        (1..=6).collect::<Vec<_>>(),
        "each event once"
    );
    let _ = second.kill();
    let _ = second.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn device_heartbeats_notify_the_device_status_topic_only_on_a_change() {
    let app = spawn_delivering_app().await;
    let maintenance = Receiver::start().await;
    let id = subscribe(
        &app,
        &subscription(&maintenance.url, "device-status", &[], "full-resource"),
    )
    .await;
    wait_for_status(&app, &id, "active", 10).await;
    let heartbeat = |status: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "device", "resource": {"resourceType": "Device",
                "identifier": [{"system": "urn:fhirgate:device-serial", "value": "PUMP-9"}]}},
            {"name": "status", "valueCode": status},
        ]})
    };
    for status in ["online", "online", "online", "hw-discon", "hw-discon"] {
        json_with_status(app.post("Device/$heartbeat", &heartbeat(status)).await, 200).await;
    }
    let received = maintenance
        .wait_until(10, |r| delivered_numbers(r).len() >= 2)
        .await;
    let reasons: Vec<Value> = event_notifications(&received)
        .iter()
        .flat_map(|n| n.body["entry"].as_array().unwrap()[1..].to_vec())
        .map(|e| e["resource"]["statusReason"][0]["coding"][0]["code"].clone())
        .collect();
    assert_eq!(reasons, vec![json!("online"), json!("hw-discon")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivered_numbers(&maintenance.received()), vec![1, 2]);
}
