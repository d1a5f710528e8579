//! The OpenAPI document is generated from the routes and kept in openapi/openapi.json.

use super::helpers::*;

#[tokio::test]
async fn served_document_matches_the_committed_file() {
    let app = spawn_app().await;
    let served = app
        .client
        .get(app.root("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served: serde_json::Value = served.json().await.unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json exists"),
    )
    .unwrap();
    // Compared without printing both documents: they are long.
    assert!(
        served == committed,
        "openapi/openapi.json is out of date: run `cargo run -- openapi > openapi/openapi.json`"
    );
    for path in [
        "/fhir/metadata",
        "/fhir",
        "/fhir/{type}",
        "/fhir/{type}/{id}",
        "/fhir/{type}/{id}/_history/{vid}",
        "/fhir/{type}/$validate",
        "/fhir/_history",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} is documented");
    }
}

#[test]
fn cli_prints_the_committed_document() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .arg("openapi")
        .output()
        .expect("run fhirgate openapi");
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout) == committed,
        "openapi/openapi.json differs from `fhirgate openapi`; regenerate it"
    );
}

#[tokio::test]
async fn swagger_ui_is_served_offline() {
    let app = spawn_app().await;
    let response = app.client.get(app.root("/docs/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("swagger"), "{html}");
    let health = app.client.get(app.root("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.root("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
