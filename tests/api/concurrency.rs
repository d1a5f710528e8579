//! Concurrent writes share commits (group commit); each must still succeed or fail on
//! its own, and conditional creates must never duplicate.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use super::helpers::*;

#[tokio::test]
async fn concurrent_conditional_creates_make_one_resource() {
    let app = spawn_app().await;
    let requests = (0..40).map(|_| {
        app.request(Method::POST, "Patient")
            .header("content-type", FHIR_JSON)
            .header(
                "if-none-exist",
                "identifier=http://hospital.example/mrn|SAME",
            )
            .body(patient("SAME").to_string())
            .send()
    });
    let responses = join_all(requests).await;
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        let status = response.status().as_u16();
        assert!(status == 201 || status == 200, "status {status}");
        if status == 201 {
            created += 1;
        }
        let body: Value = response.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1, "exactly one create");
    assert_eq!(ids.len(), 1, "every response names the same Patient");
    let search = json_with_status(
        app.get("Patient?identifier=http://hospital.example/mrn|SAME")
            .await,
        200,
    )
    .await;
    assert_eq!(search["total"], 1);
}

#[tokio::test]
async fn failures_in_a_shared_commit_do_not_affect_the_others() {
    let app = spawn_app().await;
    let app = &app;
    let target = app.create(&patient("T")).await;
    let target_id = target["id"].as_str().unwrap().to_string();

    let creates = (0..30).map(|i| {
        let body = heart_rate("Patient/x", i);
        async move { app.post("Observation", &body).await }
    });
    let stale_updates = (0..10).map(|_| {
        app.request(Method::PUT, &format!("Patient/{target_id}"))
            .header("content-type", FHIR_JSON)
            .header("if-match", "W/\"5\"")
            .body(target.to_string())
            .send()
    });
    let failing_transactions = (0..10).map(|i| {
        let bundle = json!({
                "resourceType": "Bundle", "type": "transaction",
                "entry": [
                    {"resource": heart_rate("Patient/tx", 1000 + i), "request": {"method": "POST", "url": "Observation"}},
                    {"resource": target.clone(), "request": {"method": "PUT", "url": format!("Patient/{target_id}"), "ifMatch": "W/\"9\""}}
                ]
        });
        async move { app.post("", &bundle).await }
    });
    let (creates, stale, transactions) = tokio::join!(
        join_all(creates),
        join_all(stale_updates),
        join_all(failing_transactions)
    );
    for response in creates {
        assert_eq!(response.status(), 201);
    }
    for response in stale {
        assert_eq!(response.unwrap().status(), 412);
    }
    for response in transactions {
        assert_eq!(response.status(), 412);
    }
    let observations = json_with_status(app.get("Observation?_count=100").await, 200).await;
    assert_eq!(
        observations["total"], 30,
        "no Observation of a failed transaction"
    );
    let patient = json_with_status(app.get(&format!("Patient/{target_id}")).await, 200).await;
    assert_eq!(patient["meta"]["versionId"], "1");
}
