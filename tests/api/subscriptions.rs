//! Subscriptions as a client writes them: what is refused at creation, and the status the
//! server keeps. (Delivery is being built.)

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
    let app = spawn_app().await;
    let created = json_with_status(
        app.post(
            "Subscription",
            &topic_subscription(
                OBSERVATION_TOPIC,
                "Observation?patient=Patient/1",
                "id-only",
            ),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(
        created["status"], "requested",
        "a new subscription is requested"
    );
    let id = created["id"].as_str().unwrap().to_string();

    // A client cannot make it active; it can switch it off and ask for it again.
    let mut update = created.clone();
    update["status"] = json!("active");
    let stored = json_with_status(app.put(&format!("Subscription/{id}"), &update).await, 200).await;
    assert_eq!(stored["status"], "requested");
    update["status"] = json!("off");
    let stored = json_with_status(app.put(&format!("Subscription/{id}"), &update).await, 200).await;
    assert_eq!(stored["status"], "off");
    let patch = json!([{"op": "replace", "path": "/status", "value": "active"}]);
    let response = app
        .request(Method::PATCH, &format!("Subscription/{id}"))
        .header("Content-Type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json_with_status(response, 200).await["status"], "off");
    update["status"] = json!("requested");
    let stored = json_with_status(app.put(&format!("Subscription/{id}"), &update).await, 200).await;
    assert_eq!(stored["status"], "requested");
    let read = json_with_status(app.get(&format!("Subscription/{id}")).await, 200).await;
    assert_eq!(read["status"], "requested");
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
