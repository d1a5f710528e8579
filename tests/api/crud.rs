//! create, read, vread, update, patch, delete and the HTTP headers around them.

use reqwest::Method;
use serde_json::json;

use super::helpers::*;

#[tokio::test]
async fn create_assigns_id_version_and_returns_location_and_etag() {
    let app = spawn_app().await;
    let mut observation = heart_rate("Patient/p1", 72);
    observation["id"] = json!("client-chosen");
    let response = app.post("Observation", &observation).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/fhir+json"));
    assert!(response.headers().contains_key("last-modified"));
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_ne!(id, "client-chosen", "the server assigns ids on create");
    assert_eq!(
        location,
        format!("{}/Observation/{id}/_history/1", app.base)
    );
    assert_eq!(etag, "W/\"1\"");
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["valueQuantity"]["value"], 72);

    let read = json_with_status(app.get(&format!("Observation/{id}")).await, 200).await;
    assert_eq!(read, body, "read returns what create stored");
}

#[tokio::test]
async fn decimal_precision_is_kept() {
    let app = spawn_app().await;
    let mut observation = heart_rate("Patient/p1", 0);
    observation["valueQuantity"]["value"] = serde_json::from_str("36.50").unwrap();
    let created = app.create(&observation).await;
    let response = app
        .get(&format!("Observation/{}", created["id"].as_str().unwrap()))
        .await;
    let text = response.text().await.unwrap();
    assert!(text.contains("\"value\":36.50"), "{text}");
}

#[tokio::test]
async fn update_creates_new_versions_and_vread_returns_each() {
    let app = spawn_app().await;
    let created = app.create(&patient("A1")).await;
    let id = created["id"].as_str().unwrap().to_string();

    let mut changed = created.clone();
    changed["gender"] = json!("female");
    let response = app.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let updated: serde_json::Value = response.json().await.unwrap();
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["gender"], "female");

    let v1 = json_with_status(app.get(&format!("Patient/{id}/_history/1")).await, 200).await;
    assert_eq!(v1["gender"], "male");
    let v2 = json_with_status(app.get(&format!("Patient/{id}/_history/2")).await, 200).await;
    assert_eq!(v2["gender"], "female");
    let missing = json_with_status(app.get(&format!("Patient/{id}/_history/3")).await, 404).await;
    assert!(outcome_text(&missing).contains("no version 3"));
}

#[tokio::test]
async fn update_as_create_uses_the_client_id() {
    let app = spawn_app().await;
    let mut resource = patient("B1");
    resource["id"] = json!("device-patient-7");
    let response = app.put("Patient/device-patient-7", &resource).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["location"],
        format!("{}/Patient/device-patient-7/_history/1", app.base).as_str()
    );
    let read = json_with_status(app.get("Patient/device-patient-7").await, 200).await;
    assert_eq!(read["identifier"][0]["value"], "B1");
}

#[tokio::test]
async fn update_rejects_a_missing_or_different_body_id() {
    let app = spawn_app().await;
    let body = json_with_status(app.put("Patient/abc", &patient("C1")).await, 400).await;
    assert!(outcome_text(&body).contains("no id"), "{body}");
    let mut other = patient("C1");
    other["id"] = json!("xyz");
    let body = json_with_status(app.put("Patient/abc", &other).await, 400).await;
    assert!(outcome_text(&body).contains("does not match"), "{body}");
    assert_eq!(outcome_expressions(&body), vec!["Patient.id"]);
}

#[tokio::test]
async fn delete_writes_a_tombstone_then_read_is_gone() {
    let app = spawn_app().await;
    let created = app.create(&patient("D1")).await;
    let id = created["id"].as_str().unwrap().to_string();

    let response = app.delete(&format!("Patient/{id}")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["etag"], "W/\"2\"");

    let gone = json_with_status(app.get(&format!("Patient/{id}")).await, 410).await;
    assert!(outcome_text(&gone).contains("deleted"));
    // Older versions stay readable; the deletion itself is a version.
    json_with_status(app.get(&format!("Patient/{id}/_history/1")).await, 200).await;
    json_with_status(app.get(&format!("Patient/{id}/_history/2")).await, 410).await;
    // Deleting again changes nothing.
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status(), 204);
    let history = json_with_status(app.get(&format!("Patient/{id}/_history")).await, 200).await;
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);
    // A resource that never existed.
    json_with_status(app.delete("Patient/never-was").await, 404).await;

    // Updating a deleted resource brings it back as a new version.
    let mut again = created.clone();
    again["gender"] = json!("other");
    let response = app.put(&format!("Patient/{id}"), &again).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "W/\"3\"");
}

#[tokio::test]
async fn if_match_guards_against_lost_updates() {
    let app = spawn_app().await;
    let created = app.create(&patient("E1")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("Patient/{id}");

    let stale = app
        .request(Method::PUT, &path)
        .header("content-type", FHIR_JSON)
        .header("if-match", "W/\"7\"")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    let body = json_with_status(stale, 412).await;
    assert!(
        outcome_text(&body).contains("current version is 1"),
        "{body}"
    );

    let fresh = app
        .request(Method::PUT, &path)
        .header("content-type", FHIR_JSON)
        .header("if-match", "W/\"1\"")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);

    let stale_delete = app
        .request(Method::DELETE, &path)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale_delete.status(), 412);

    let malformed = app
        .request(Method::PUT, &path)
        .header("content-type", FHIR_JSON)
        .header("if-match", "version one")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    json_with_status(malformed, 400).await;
}

#[tokio::test]
async fn conditional_read_headers_give_304() {
    let app = spawn_app().await;
    let created = app.create(&patient("F1")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    let response = app.get(&path).await;
    let last_modified = response.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();

    let same = app
        .request(Method::GET, &path)
        .header("if-none-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 304);
    assert_eq!(same.headers()["etag"], "W/\"1\"");
    assert!(same.text().await.unwrap().is_empty());

    let other = app
        .request(Method::GET, &path)
        .header("if-none-match", "W/\"0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    let not_modified = app
        .request(Method::GET, &path)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);

    let modified = app
        .request(Method::GET, &path)
        .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(modified.status(), 200);
}

#[tokio::test]
async fn prefer_return_shapes_the_response() {
    let app = spawn_app().await;
    let minimal = app
        .request(Method::POST, "Patient")
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=minimal")
        .body(patient("G1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert!(minimal.headers().contains_key("etag"));
    assert!(minimal.text().await.unwrap().is_empty());

    let outcome = app
        .request(Method::POST, "Patient")
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=OperationOutcome")
        .body(patient("G2").to_string())
        .send()
        .await
        .unwrap();
    let body = json_with_status(outcome, 201).await;
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["severity"], "information");

    let representation = app
        .request(Method::POST, "Patient")
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=representation")
        .body(patient("G3").to_string())
        .send()
        .await
        .unwrap();
    let body = json_with_status(representation, 201).await;
    assert_eq!(body["resourceType"], "Patient");
}

#[tokio::test]
async fn summary_and_elements_return_marked_subsets() {
    let app = spawn_app().await;
    let mut resource = patient("H1");
    resource["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter</div>"});
    resource["photo"] = json!([{"contentType": "image/png", "data": "iVBORw0KGgo="}]);
    let created = app.create(&resource).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    let summary = json_with_status(app.get(&format!("{path}?_summary=true")).await, 200).await;
    assert_eq!(
        summary["name"], created["name"],
        "name is a summary element"
    );
    assert!(
        summary.get("photo").is_none(),
        "photo is not in the summary"
    );
    assert!(summary.get("text").is_none());
    assert_eq!(summary["meta"]["tag"][0]["code"], "SUBSETTED");

    let elements = json_with_status(app.get(&format!("{path}?_elements=gender")).await, 200).await;
    assert_eq!(elements["gender"], "male");
    assert!(elements.get("name").is_none());
    assert!(elements.get("birthDate").is_none());
    assert_eq!(elements["id"], created["id"]);
    assert_eq!(elements["meta"]["tag"][0]["code"], "SUBSETTED");

    let data = json_with_status(app.get(&format!("{path}?_summary=data")).await, 200).await;
    assert!(data.get("text").is_none());
    assert!(data.get("photo").is_some());

    let text = json_with_status(app.get(&format!("{path}?_summary=text")).await, 200).await;
    assert!(text.get("text").is_some());
    assert!(text.get("name").is_none());

    json_with_status(app.get(&format!("{path}?_summary=maybe")).await, 400).await;
}

#[tokio::test]
async fn json_patch_updates_a_resource() {
    let app = spawn_app().await;
    let created = app.create(&heart_rate("Patient/p1", 80)).await;
    let path = format!("Observation/{}", created["id"].as_str().unwrap());
    let patch = |body: serde_json::Value, content_type: &'static str| {
        app.request(Method::PATCH, &path)
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
    };

    let response = patch(
        json!([{"op": "replace", "path": "/status", "value": "amended"},
               {"op": "replace", "path": "/valueQuantity/value", "value": 81}]),
        "application/json-patch+json",
    )
    .await
    .unwrap();
    let body = json_with_status(response, 200).await;
    assert_eq!(body["status"], "amended");
    assert_eq!(body["valueQuantity"]["value"], 81);
    assert_eq!(body["meta"]["versionId"], "2");

    // A patch that cannot be applied.
    let response = patch(
        json!([{"op": "test", "path": "/status", "value": "final"}]),
        "application/json-patch+json",
    )
    .await
    .unwrap();
    json_with_status(response, 422).await;

    // A patch whose result is not a valid Observation.
    let response = patch(
        json!([{"op": "replace", "path": "/status", "value": "sort-of-final"}]),
        "application/json-patch+json",
    )
    .await
    .unwrap();
    let body = json_with_status(response, 422).await;
    assert!(outcome_text(&body).contains("sort-of-final"), "{body}");

    // Not a JSON Patch media type.
    let response = patch(json!([]), "text/plain").await.unwrap();
    json_with_status(response, 415).await;

    // Malformed patch document.
    let response = patch(json!({"op": "replace"}), "application/json-patch+json")
        .await
        .unwrap();
    json_with_status(response, 400).await;

    let stored = json_with_status(app.get(&path).await, 200).await;
    assert_eq!(
        stored["meta"]["versionId"], "2",
        "failed patches change nothing"
    );

    let missing = app
        .request(Method::PATCH, "Observation/nope")
        .header("content-type", "application/json-patch+json")
        .body("[]")
        .send()
        .await
        .unwrap();
    json_with_status(missing, 404).await;
}

#[tokio::test]
async fn stored_versions_survive_a_restart() {
    let mut app = spawn_app().await;
    let created = app.create(&patient("R1")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut changed = created.clone();
    changed["gender"] = json!("female");
    json_with_status(app.put(&format!("Patient/{id}"), &changed).await, 200).await;

    app.restart().await;
    let read = json_with_status(app.get(&format!("Patient/{id}")).await, 200).await;
    assert_eq!(read["gender"], "female");
    assert_eq!(read["meta"]["versionId"], "2");
    let v1 = json_with_status(app.get(&format!("Patient/{id}/_history/1")).await, 200).await;
    assert_eq!(v1["gender"], "male");
}
