//! Conditional create, update, delete and conditional references.

use reqwest::Method;
use serde_json::{json, Value};

use super::helpers::*;

const MRN: &str = "identifier=http://hospital.example/mrn|";

async fn create_if_none_exist(
    app: &TestApp,
    resource: &Value,
    criteria: &str,
) -> reqwest::Response {
    app.request(Method::POST, "Patient")
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", criteria)
        .body(resource.to_string())
        .send()
        .await
        .unwrap()
}

async fn count(app: &TestApp, resource_type: &str) -> usize {
    let history = json_with_status(
        app.get(&format!("{resource_type}/_history?_count=1000"))
            .await,
        200,
    )
    .await;
    history["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["request"]["method"] == "POST")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn conditional_create_does_not_duplicate() {
    let app = spawn_app().await;
    let first = create_if_none_exist(&app, &patient("M1"), &format!("{MRN}M1")).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    let again = create_if_none_exist(&app, &patient("M1"), &format!("{MRN}M1")).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(count(&app, "Patient").await, 1);

    // Two resources share an identifier: the criteria are ambiguous.
    app.create(&patient("M2")).await;
    app.create(&patient("M2")).await;
    let ambiguous = create_if_none_exist(&app, &patient("M2"), &format!("{MRN}M2")).await;
    let body = json_with_status(ambiguous, 412).await;
    assert_eq!(body["issue"][0]["code"], "multiple-matches");
}

#[tokio::test]
async fn conditional_update_updates_the_match_or_creates() {
    let app = spawn_app().await;
    let created = app.create(&patient("U1")).await;
    let mut changed = patient("U1");
    changed["gender"] = json!("female");
    let response = app.put(&format!("Patient?{MRN}U1"), &changed).await;
    let body = json_with_status(response, 200).await;
    assert_eq!(body["id"], created["id"]);
    assert_eq!(body["meta"]["versionId"], "2");

    let response = app.put(&format!("Patient?{MRN}U2"), &patient("U2")).await;
    json_with_status(response, 201).await;

    app.create(&patient("U3")).await;
    app.create(&patient("U3")).await;
    json_with_status(
        app.put(&format!("Patient?{MRN}U3"), &patient("U3")).await,
        412,
    )
    .await;
}

#[tokio::test]
async fn conditional_delete_removes_the_match() {
    let app = spawn_app().await;
    let created = app.create(&patient("X1")).await;
    assert_eq!(app.delete(&format!("Patient?{MRN}X1")).await.status(), 204);
    json_with_status(
        app.get(&format!("Patient/{}", created["id"].as_str().unwrap()))
            .await,
        410,
    )
    .await;
    // Nothing matches any more: nothing to do.
    assert_eq!(app.delete(&format!("Patient?{MRN}X1")).await.status(), 204);
    app.create(&patient("X2")).await;
    app.create(&patient("X2")).await;
    json_with_status(app.delete(&format!("Patient?{MRN}X2")).await, 412).await;
}

#[tokio::test]
async fn transaction_conditional_create_and_references() {
    let app = spawn_app().await;
    let existing = app.create(&patient("R1")).await;
    let patient_url = "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0";
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": patient_url, "resource": patient("R1"),
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("{MRN}R1")}},
            {"resource": heart_rate(patient_url, 77),
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": heart_rate(&format!("Patient?{MRN}R1"), 78),
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let response = json_with_status(app.post("", &bundle).await, 200).await;
    let results = response["entry"].as_array().unwrap();
    assert_eq!(
        results[0]["response"]["status"], "200 OK",
        "matched, not created"
    );
    let expected = format!("Patient/{}", existing["id"].as_str().unwrap());
    for i in [1, 2] {
        let location = results[i]["response"]["location"].as_str().unwrap();
        let observation = json_with_status(
            app.get(location.split("/_history").next().unwrap()).await,
            200,
        )
        .await;
        assert_eq!(observation["subject"]["reference"], expected.as_str());
    }
    assert_eq!(count(&app, "Patient").await, 1);

    // A conditional reference that matches nothing fails the whole transaction.
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"resource": heart_rate(&format!("Patient?{MRN}NOBODY"), 1),
                   "request": {"method": "POST", "url": "Observation"}}]
    });
    json_with_status(app.post("", &bundle).await, 412).await;
}
