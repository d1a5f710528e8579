//! batch and transaction Bundles at POST /fhir.

use base64::Engine;
use serde_json::{json, Value};

use super::helpers::*;

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn transaction_resolves_urn_uuid_references() {
    let app = spawn_app().await;
    let patient_url = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a";
    let device_url = "urn:uuid:88f151c0-a954-468a-bdd5-0e8e8e0a1a11";
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": device_url,
             "resource": {"resourceType": "Device", "serialNumber": "SN-1", "patient": {"reference": patient_url}},
             "request": {"method": "POST", "url": "Device"}},
            {"fullUrl": patient_url, "resource": patient("TX1"),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": patient_url},
                "device": {"reference": device_url},
                "valueQuantity": {"value": 61, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let response = json_with_status(app.post("", &bundle).await, 200).await;
    assert_eq!(response["type"], "transaction-response");
    let results = entries(&response);
    assert_eq!(
        results.len(),
        3,
        "one response entry per request entry, in order"
    );
    for result in &results {
        assert_eq!(result["response"]["status"], "201 Created");
    }
    let location = |i: usize| {
        results[i]["response"]["location"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(location(0).starts_with("Device/"));
    assert!(location(1).starts_with("Patient/"));
    let patient_ref = location(1).split("/_history").next().unwrap().to_string();
    let device_ref = location(0).split("/_history").next().unwrap().to_string();

    let observation = json_with_status(
        app.get(location(2).split("/_history").next().unwrap())
            .await,
        200,
    )
    .await;
    assert_eq!(observation["subject"]["reference"], patient_ref.as_str());
    assert_eq!(observation["device"]["reference"], device_ref.as_str());
    let device = json_with_status(app.get(&device_ref).await, 200).await;
    assert_eq!(device["patient"]["reference"], patient_ref.as_str());
}

#[tokio::test]
async fn transaction_is_all_or_nothing() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": patient("ATOM1"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "not-a-status",
                          "code": {"text": "x"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let body = json_with_status(app.post("", &bundle).await, 400).await;
    let text = outcome_text(&body);
    assert!(text.contains("Bundle.entry[1]"), "{text}");
    assert!(outcome_expressions(&body)
        .iter()
        .any(|e| e.starts_with("Bundle.entry[1]")));

    // A failure discovered while writing (a stale ifMatch) also undoes earlier entries.
    let existing = app.create(&patient("ATOM2")).await;
    let id = existing["id"].as_str().unwrap();
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": patient("ATOM3"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": existing, "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"9\""}}
        ]
    });
    json_with_status(app.post("", &bundle).await, 412).await;

    let history = json_with_status(app.get("Patient/_history").await, 200).await;
    assert_eq!(
        entries(&history).len(),
        1,
        "only the separately created Patient exists"
    );
}

#[tokio::test]
async fn transaction_processes_delete_post_put_get_in_that_order() {
    let app = spawn_app().await;
    let doomed = app.create(&patient("ORD1")).await;
    let doomed_id = doomed["id"].as_str().unwrap();
    let mut put = patient("ORD2");
    put["id"] = json!("ordered-put");
    // Listed in reverse order: the GET must still see the PUT, and the DELETE happens
    // before anything else.
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/ordered-put"}},
            {"resource": put, "request": {"method": "PUT", "url": "Patient/ordered-put"}},
            {"resource": patient("ORD3"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": format!("Patient/{doomed_id}")}}
        ]
    });
    let response = json_with_status(app.post("", &bundle).await, 200).await;
    let results = entries(&response);
    assert_eq!(results[0]["response"]["status"], "200 OK");
    assert_eq!(results[0]["resource"]["identifier"][0]["value"], "ORD2");
    assert_eq!(results[1]["response"]["status"], "201 Created");
    assert_eq!(results[2]["response"]["status"], "201 Created");
    assert_eq!(results[3]["response"]["status"], "204 No Content");
    json_with_status(app.get(&format!("Patient/{doomed_id}")).await, 410).await;

    let history = json_with_status(app.get("_history?_count=10").await, 200).await;
    let methods: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .take(3)
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, vec!["PUT", "POST", "DELETE"], "newest first");
}

#[tokio::test]
async fn transaction_rejects_two_entries_for_one_resource() {
    let app = spawn_app().await;
    let mut a = patient("DUP");
    a["id"] = json!("dup");
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": a.clone(), "request": {"method": "PUT", "url": "Patient/dup"}},
            {"request": {"method": "DELETE", "url": "Patient/dup"}}
        ]
    });
    let body = json_with_status(app.post("", &bundle).await, 400).await;
    assert!(outcome_text(&body).contains("Patient/dup"));
}

#[tokio::test]
async fn batch_reports_each_entry_on_its_own() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": patient("B1"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"request": {"method": "FETCH", "url": "Patient"}},
            {"resource": patient("B2"), "request": {"method": "POST", "url": "Patient"}}
        ]
    });
    let response = json_with_status(app.post("", &bundle).await, 200).await;
    assert_eq!(response["type"], "batch-response");
    let results = entries(&response);
    let statuses: Vec<&str> = results
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec![
            "201 Created",
            "400 Bad Request",
            "404 Not Found",
            "400 Bad Request",
            "201 Created"
        ]
    );
    assert_eq!(
        results[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert!(results[1]["response"]["outcome"]
        .to_string()
        .contains("robot"));
    let history = json_with_status(app.get("Patient/_history").await, 200).await;
    assert_eq!(entries(&history).len(), 2);
}

#[tokio::test]
async fn bundle_patch_entries_carry_a_binary_json_patch() {
    let app = spawn_app().await;
    let created = app.create(&heart_rate("Patient/p", 90)).await;
    let id = created["id"].as_str().unwrap();
    let patch = json!([{"op": "replace", "path": "/status", "value": "corrected"}]);
    let data = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{
            "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
            "request": {"method": "PATCH", "url": format!("Observation/{id}")}
        }]
    });
    let response = json_with_status(app.post("", &bundle).await, 200).await;
    assert_eq!(entries(&response)[0]["response"]["status"], "200 OK");
    let stored = json_with_status(app.get(&format!("Observation/{id}")).await, 200).await;
    assert_eq!(stored["status"], "corrected");
}

#[tokio::test]
async fn only_batch_and_transaction_bundles_are_processed() {
    let app = spawn_app().await;
    let body = json_with_status(
        app.post("", &json!({"resourceType": "Bundle", "type": "collection"}))
            .await,
        400,
    )
    .await;
    assert!(outcome_text(&body).contains("collection"));
    json_with_status(app.post("", &patient("NOPE")).await, 400).await;
    let empty = json_with_status(
        app.post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(empty["type"], "transaction-response");
}
