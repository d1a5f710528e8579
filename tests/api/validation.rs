//! Validation on every write, and $validate.

use serde_json::json;

use super::helpers::*;

#[tokio::test]
async fn invalid_resources_are_rejected_with_every_problem_located() {
    let app = spawn_app().await;
    let observation = json!({
        "resourceType": "Observation",
        "status": "done",
        "valueQuantity": {"value": "72"},
        "valueString": "also",
        "effectiveDateTime": "2024-13-45",
        "colour": "red"
    });
    let body = json_with_status(app.post("Observation", &observation).await, 400).await;
    let expressions = outcome_expressions(&body);
    for expected in [
        "Observation.code",
        "Observation.status",
        "Observation.valueQuantity.value",
        "Observation.effectiveDateTime",
        "Observation.colour",
    ] {
        assert!(
            expressions.iter().any(|e| e == expected),
            "no issue at {expected}: {body}"
        );
    }
    assert!(body["issue"].as_array().unwrap().len() >= 6, "{body}");
    let history = json_with_status(app.get("Observation/_history").await, 200).await;
    assert!(history.get("entry").is_none(), "nothing was stored");
}

#[tokio::test]
async fn cardinality_and_json_types_are_checked() {
    let app = spawn_app().await;
    let patient = json!({
        "resourceType": "Patient",
        "gender": ["male"],
        "name": {"family": "Single"},
        "active": "true"
    });
    let body = json_with_status(app.post("Patient", &patient).await, 400).await;
    let expressions = outcome_expressions(&body);
    for expected in ["Patient.gender", "Patient.name", "Patient.active"] {
        assert!(
            expressions.iter().any(|e| e == expected),
            "{expected}: {body}"
        );
    }
}

#[tokio::test]
async fn validate_operation_reports_without_storing() {
    let app = spawn_app().await;
    let invalid = json!({"resourceType": "Observation", "status": "final"});
    let body = json_with_status(app.post("Observation/$validate", &invalid).await, 200).await;
    assert_eq!(body["issue"][0]["severity"], "error");
    assert!(
        outcome_expressions(&body).contains(&"Observation.code".to_string()),
        "{body}"
    );

    let valid = heart_rate("Patient/x", 60);
    let body = json_with_status(app.post("Observation/$validate", &valid).await, 200).await;
    assert_eq!(body["issue"][0]["severity"], "information");

    let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": invalid}]});
    let body = json_with_status(app.post("Observation/$validate", &parameters).await, 200).await;
    assert_eq!(body["issue"][0]["severity"], "error");

    let history = json_with_status(app.get("_history").await, 200).await;
    assert!(history.get("entry").is_none());
}
