//! Subscriptions as a client writes them: what is refused at creation, and the status the
//! server keeps.

use reqwest::Method;
use serde_json::{json, Value};

use super::helpers::*;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const OBSERVATION_TOPIC: &str = "http://fhirgate.dev/fhir/SubscriptionTopic/observation";

fn topic_subscription(topic: &str, filter: &str, payload: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}backport-subscription")]},
        "status": "active",
        "reason": "heart rates for the ward",
        "criteria": topic,
        "_criteria": {"extension": [{
            "url": format!("{BACKPORT}backport-filter-criteria"), "valueString": filter
        }]},
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://ehr.example.org/fhir-hook",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{
                "url": format!("{BACKPORT}backport-payload-content"), "valueCode": payload
            }]}
        }
    })
}

#[tokio::test]
async fn the_server_owns_the_status() {
    let app = spawn_app_with(|config| config.outbound_allow = vec!["127.0.0.1".into()]).await;
    let receiver = Receiver::start().await;
    let mut body = topic_subscription(
        OBSERVATION_TOPIC,
        "Observation?patient=Patient/1",
        "id-only",
    );
    body["channel"]["endpoint"] = json!(receiver.url);
    let created = json_with_status(app.post("Subscription", &body).await, 201).await;
    assert_eq!(
        created["status"], "requested",
        "a new subscription is requested, whatever the client sent"
    );
    let id = created["id"].as_str().unwrap().to_string();
    receiver.wait_until(10, |r| !r.is_empty()).await;
    let active = wait_until_status(&app, &id, "active").await;

    // A client cannot set error or active; it can switch it off and ask for it again.
    let mut update = active.clone();
    update["status"] = json!("error");
    update["error"] = json!("forged by the client");
    let stored = json_with_status(app.put(&format!("Subscription/{id}"), &update).await, 200).await;
    assert_eq!(stored["status"], "active");
    assert!(
        stored.get("error").is_none(),
        "Subscription.error is the server's: {stored}"
    );
    update["status"] = json!("off");
    let stored = json_with_status(app.put(&format!("Subscription/{id}"), &update).await, 200).await;
    assert_eq!(stored["status"], "off");
    let patch = json!([{"op": "replace", "path": "/status", "value": "error"}]);
    let response = app
        .request(Method::PATCH, &format!("Subscription/{id}"))
        .header("Content-Type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json_with_status(response, 200).await["status"], "off");
    // Asking for it again (as active or requested) means a new handshake.
    let patch = json!([{"op": "replace", "path": "/status", "value": "active"}]);
    let response = app
        .request(Method::PATCH, &format!("Subscription/{id}"))
        .header("Content-Type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json_with_status(response, 200).await["status"], "requested");
    receiver
        .wait_until(10, |r| {
            r.iter().filter(|n| n.kind() == "handshake").count() == 2
        })
        .await;
    wait_until_status(&app, &id, "active").await;
}

async fn wait_until_status(app: &TestApp, id: &str, status: &str) -> Value {
    for _ in 0..200 {
        let stored = json_with_status(app.get(&format!("Subscription/{id}")).await, 200).await;
        if stored["status"] == status {
            return stored;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("Subscription/{id} did not become {status}");
}

#[tokio::test]
async fn unsupported_requests_are_refused_at_creation() {
    let app = spawn_app().await;
    let mut email = topic_subscription(OBSERVATION_TOPIC, "Observation?patient=Patient/1", "empty");
    email["channel"]["type"] = json!("email");
    let mut no_endpoint = topic_subscription(OBSERVATION_TOPIC, "Observation?code=8867-4", "empty");
    no_endpoint["channel"]
        .as_object_mut()
        .unwrap()
        .remove("endpoint");
    let mut classic = topic_subscription(OBSERVATION_TOPIC, "Observation?code=8867-4", "empty");
    classic["criteria"] = json!("Observation?colour=red");
    classic.as_object_mut().unwrap().remove("_criteria");
    for (subscription, status, says, at) in [
        (
            topic_subscription(
                "http://example.org/topic",
                "Observation?patient=Patient/1",
                "empty",
            ),
            422,
            OBSERVATION_TOPIC,
            "Subscription.criteria",
        ),
        (
            topic_subscription(OBSERVATION_TOPIC, "Observation?status=final", "empty"),
            422,
            "Observation.status",
            "Subscription.criteria.extension[0]",
        ),
        (
            topic_subscription(OBSERVATION_TOPIC, "Observation?code=", "empty"),
            422,
            "not a valid search",
            "Subscription.criteria.extension[0]",
        ),
        (
            topic_subscription(
                OBSERVATION_TOPIC,
                "Observation?patient=Patient/1",
                "everything",
            ),
            400,
            "payload content",
            "Subscription.channel.payload.extension",
        ),
        (email, 400, "email", "Subscription.channel.type"),
        (
            no_endpoint,
            400,
            "endpoint",
            "Subscription.channel.endpoint",
        ),
        (classic, 422, "colour", "Subscription.criteria"),
    ] {
        let body = json_with_status(app.post("Subscription", &subscription).await, status).await;
        assert!(
            outcome_text(&body).contains(says),
            "{says}: {}",
            outcome_text(&body)
        );
        assert!(
            outcome_expressions(&body).contains(&at.to_string()),
            "{at}: {body}"
        );
    }
    // Nothing was stored.
    let bundle = json_with_status(app.get("Subscription?_summary=count").await, 200).await;
    assert_eq!(bundle["total"], 0);
}

#[tokio::test]
async fn topics_are_discoverable() {
    let app = spawn_app().await;
    let statement = json_with_status(app.get("metadata").await, 200).await;
    assert!(statement["instantiates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u
            .as_str()
            .unwrap()
            .contains("backport-subscription-server-r4")));
    let subscription = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Subscription")
        .unwrap();
    let topics: Vec<&str> = subscription["extension"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["url"]
                .as_str()
                .unwrap()
                .ends_with("capabilitystatement-subscriptiontopic-canonical")
        })
        .map(|e| e["valueCanonical"].as_str().unwrap())
        .collect();
    assert_eq!(topics.len(), 5);
    assert!(topics.contains(&OBSERVATION_TOPIC));
    let operations: Vec<&str> = subscription["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for name in ["status", "events", "get-ws-binding-token"] {
        assert!(operations.contains(&name), "{operations:?}");
    }

    let listed = json_with_status(app.get("SubscriptionTopic").await, 200).await;
    assert_eq!(listed["total"], 5);
    let observation = json_with_status(app.get("SubscriptionTopic/observation").await, 200).await;
    assert_eq!(observation["url"], OBSERVATION_TOPIC);
    let filters: Vec<&str> = observation["canFilterBy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filterParameter"].as_str().unwrap())
        .collect();
    assert_eq!(filters, vec!["patient", "code", "category", "device"]);
    let missing = json_with_status(app.get("SubscriptionTopic/nope").await, 404).await;
    assert!(outcome_text(&missing).contains("SubscriptionTopic"));
}
