//! History at instance, type and system level: order, _since, _count and paging.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::helpers::*;

#[tokio::test]
async fn instance_history_lists_every_version_newest_first() {
    let app = spawn_app().await;
    let created = app.create(&patient("H1")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut changed = created.clone();
    changed["gender"] = json!("female");
    json_with_status(app.put(&format!("Patient/{id}"), &changed).await, 200).await;
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status(), 204);

    let bundle = json_with_status(app.get(&format!("Patient/{id}/_history")).await, 200).await;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    let entries = bundle["entry"].as_array().unwrap();
    let methods: Vec<&str> = entries
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);
    assert!(
        entries[0].get("resource").is_none(),
        "a deletion has no resource"
    );
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");
    assert_eq!(entries[1]["resource"]["gender"], "female");
    assert_eq!(entries[2]["resource"]["meta"]["versionId"], "1");
    assert_eq!(
        entries[2]["fullUrl"],
        format!("{}/Patient/{id}", app.base).as_str()
    );

    json_with_status(app.get("Patient/unknown/_history").await, 404).await;
}

#[tokio::test]
async fn type_and_system_history_cover_their_scope() {
    let app = spawn_app().await;
    app.create(&patient("S1")).await;
    app.create(&heart_rate("Patient/x", 70)).await;
    app.create(&heart_rate("Patient/x", 71)).await;

    let observations = json_with_status(app.get("Observation/_history").await, 200).await;
    let entries = observations["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|e| e["resource"]["resourceType"] == "Observation"));
    assert_eq!(
        entries[0]["resource"]["valueQuantity"]["value"], 71,
        "newest first"
    );

    let system = json_with_status(app.get("_history").await, 200).await;
    assert_eq!(system["entry"].as_array().unwrap().len(), 3);

    let empty = json_with_status(app.get("Device/_history").await, 200).await;
    assert!(empty.get("entry").is_none(), "no empty arrays in FHIR JSON");
}

#[tokio::test]
async fn since_filters_by_last_updated() {
    let app = spawn_app().await;
    let first = app.create(&patient("T1")).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = app.create(&patient("T2")).await;
    let since = second["meta"]["lastUpdated"].as_str().unwrap();

    let bundle = json_with_status(
        app.get(&format!(
            "Patient/_history?_since={}",
            since.replace('+', "%2B")
        ))
        .await,
        200,
    )
    .await;
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![second["id"].as_str().unwrap()]);
    assert_ne!(ids[0], first["id"].as_str().unwrap());

    let body = json_with_status(app.get("Patient/_history?_since=yesterday").await, 400).await;
    assert!(outcome_text(&body).contains("_since"));
}

#[tokio::test]
async fn paging_is_stable_while_writes_happen() {
    let app = spawn_app().await;
    let mut created = HashSet::new();
    for i in 0..7 {
        let body = app.create(&heart_rate("Patient/p", i)).await;
        created.insert(body["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut next = Some(app.url("Observation/_history?_count=3"));
    let mut pages = 0;
    while let Some(url) = next.take() {
        let page = json_with_status(app.get(&url).await, 200).await;
        pages += 1;
        for entry in page["entry"].as_array().cloned().unwrap_or_default() {
            seen.push(entry["resource"]["id"].as_str().unwrap().to_string());
        }
        // A write between pages must neither shift nor repeat entries.
        if pages == 1 {
            app.create(&heart_rate("Patient/p", 99)).await;
        }
        next = link(&page, "next");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);

    json_with_status(app.get("Observation/_history?_count=many").await, 400).await;
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}
