//! Every error is an OperationOutcome with the right status and a useful message.

use reqwest::Method;
use serde_json::json;

use super::helpers::*;

#[tokio::test]
async fn unknown_type_and_id_are_404() {
    let app = spawn_app().await;
    let body = json_with_status(app.get("Observatoin/1").await, 404).await;
    assert!(outcome_text(&body).contains("Observatoin"));
    let body = json_with_status(app.get("Observation/nope").await, 404).await;
    assert!(outcome_text(&body).contains("Observation/nope"));
    let body = json_with_status(app.get("no/such/path/here/at/all").await, 404).await;
    assert_eq!(body["resourceType"], "OperationOutcome");
    let body = json_with_status(app.get("Observation/bad%20id!").await, 400).await;
    assert!(outcome_text(&body).contains("not a valid resource id"));
}

#[tokio::test]
async fn wrong_method_is_405() {
    let app = spawn_app().await;
    let response = app
        .request(Method::DELETE, "metadata")
        .send()
        .await
        .unwrap();
    let body = json_with_status(response, 405).await;
    assert!(outcome_text(&body).contains("DELETE"));
    let response = app
        .request(Method::POST, "Patient/123")
        .send()
        .await
        .unwrap();
    json_with_status(response, 405).await;
}

#[tokio::test]
async fn unsupported_media_types() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+xml")
        .body("<Patient xmlns=\"http://hl7.org/fhir\"/>")
        .send()
        .await
        .unwrap();
    let body = json_with_status(response, 415).await;
    assert!(outcome_text(&body).contains("xml"));

    let response = app
        .request(Method::GET, "metadata")
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    json_with_status(response, 406).await;
    json_with_status(app.get("metadata?_format=xml").await, 406).await;
    json_with_status(app.get("metadata?_format=json").await, 200).await;
    let response = app
        .request(Method::GET, "metadata")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    json_with_status(response, 200).await;
}

#[tokio::test]
async fn malformed_json_is_400_with_position() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", FHIR_JSON)
        .body("{\"resourceType\": \"Patient\",\n \"gender\": }")
        .send()
        .await
        .unwrap();
    let body = json_with_status(response, 400).await;
    assert!(outcome_text(&body).contains("line 2"), "{body}");

    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", FHIR_JSON)
        .send()
        .await
        .unwrap();
    let body = json_with_status(response, 400).await;
    assert!(outcome_text(&body).contains("empty"));

    let body = json_with_status(app.post("Patient", &json!([1, 2])).await, 400).await;
    assert_eq!(body["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn body_too_large_is_413() {
    let app = spawn_app_with(|config| config.max_body_bytes = 10_000).await;
    let mut resource = patient("BIG");
    resource["name"][0]["text"] = json!("x".repeat(20_000));
    let body = json_with_status(app.post("Patient", &resource).await, 413).await;
    assert!(outcome_text(&body).contains("10000 bytes"), "{body}");
}

#[tokio::test]
async fn resource_type_must_match_the_url() {
    let app = spawn_app().await;
    let body = json_with_status(app.post("Observation", &patient("X")).await, 400).await;
    assert!(
        outcome_text(&body).contains("URL is for Observation"),
        "{body}"
    );
}
