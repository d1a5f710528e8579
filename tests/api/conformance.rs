//! Every official R4 example resource (npm package hl7.fhir.r4.examples 4.0.1) that is
//! valid is accepted by update-as-create and read back unchanged apart from `meta`.
//! `.ci/run` fetches the package; point FHIRGATE_R4_EXAMPLES at its `package` folder.

use std::path::PathBuf;

use serde_json::Value;

use super::helpers::*;

/// Examples the specification itself gets wrong, with the reason.
const KNOWN_INVALID: &[(&str, &str)] = &[
    (
        "ImplementationGuide-fhir.json",
        "ImplementationGuide.name and .status (1..1) are missing",
    ),
    (
        "ig-r4.json",
        "ImplementationGuide.name and .status (1..1) are missing",
    ),
    (
        "Questionnaire-qs1.json",
        "nested Questionnaire.item entries have no linkId (1..1)",
    ),
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "the id has 67 characters; ids are at most 64",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "SearchParameter.base (1..*) is missing",
    ),
];

fn examples_dir() -> Option<PathBuf> {
    let dir = std::env::var("FHIRGATE_R4_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/r4-examples/package"
            ))
        });
    dir.is_dir().then_some(dir)
}

/// Elements the server sets whatever the client sends, with the value it stores:
/// `Subscription.status` is the server's (a new subscription is `requested`).
/// Elements the server sets whatever the client sent: a Subscription's `status` and
/// `error` follow its delivery (the examples' endpoints cannot be reached from here).
const SERVER_OWNED: &[(&str, &str)] = &[("Subscription", "status"), ("Subscription", "error")];

/// JSON equality, except that a number written in exponent form (`1E-22`) equals the
/// same value in positional form: PostgreSQL's JSONB prints numbers positionally. A
/// plain decimal must keep its exact text, so lost precision (`1.50` → `1.5`) is caught.
fn same_content(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.to_string(), y.to_string());
            x == y
                || ((x.contains(['e', 'E']) || y.contains(['e', 'E']))
                    && decimal_value(&x) == decimal_value(&y))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_content(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_content(v, w)))
        }
        _ => a == b,
    }
}

/// A decimal's exact value as (negative, significant digits, exponent of the last digit).
fn decimal_value(text: &str) -> (bool, String, i64) {
    let negative = text.starts_with('-');
    let text = text.trim_start_matches(['-', '+']);
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let mut exponent = exponent - fraction.len() as i64;
    let trimmed_end = digits.trim_end_matches('0');
    exponent += (digits.len() - trimmed_end.len()) as i64;
    let significant = trimmed_end.trim_start_matches('0').to_string();
    (negative && !significant.is_empty(), significant, exponent)
}

#[test]
fn decimal_values_compare_exactly() {
    assert_eq!(
        decimal_value("1E-22"),
        decimal_value("0.0000000000000000000001")
    );
    assert_eq!(decimal_value("-1.0E+3"), decimal_value("-1000"));
    assert_ne!(decimal_value("1.5"), decimal_value("1.05"));
    let a: Value = serde_json::from_str("{\"v\": 1.50}").unwrap();
    let b: Value = serde_json::from_str("{\"v\": 1.5}").unwrap();
    assert!(!same_content(&a, &b), "precision loss is a difference");
}

fn without_meta(mut resource: Value) -> Value {
    if let Some(object) = resource.as_object_mut() {
        object.remove("meta");
    }
    resource
}

#[tokio::test]
async fn official_examples_round_trip() {
    let Some(dir) = examples_dir() else {
        eprintln!(
            "SKIPPED official_examples_round_trip: the R4 examples are not present \
             (set FHIRGATE_R4_EXAMPLES or run .ci/run, which fetches hl7.fhir.r4.examples)"
        );
        return;
    };
    // Bundle-resources.json is 35 MB, above the default body limit of 16 MiB.
    let app = spawn_app_with(|config| config.max_body_bytes = 64 * 1024 * 1024).await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Ok(resource) = serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap())
        else {
            continue;
        };
        let (Some(resource_type), Some(id)) = (
            resource["resourceType"].as_str().map(str::to_string),
            resource["id"].as_str().map(str::to_string),
        ) else {
            continue;
        };
        if name == "package.json" || name.starts_with('.') {
            continue;
        }
        if resource_type == "AuditEvent" {
            // The audit trail is the server's own (append-only): clients cannot store
            // AuditEvents, so these examples cannot round-trip.
            let response = app.put(&format!("{resource_type}/{id}"), &resource).await;
            if response.status().is_success() {
                failures.push(format!("{name}: a client stored an AuditEvent"));
            }
            continue;
        }
        let known = KNOWN_INVALID.iter().any(|(file, _)| *file == name);
        let response = app.put(&format!("{resource_type}/{id}"), &resource).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if known {
            if status < 300 {
                failures.push(format!("{name}: listed as invalid but accepted"));
            }
            continue;
        }
        if status != 201 && status != 200 {
            failures.push(format!("{name}: {status} {}", body["issue"]));
            continue;
        }
        let read: Value = app
            .get(&format!("{resource_type}/{id}"))
            .await
            .json()
            .await
            .unwrap();
        let mut expected = without_meta(resource.clone());
        let mut read = without_meta(read);
        for (_, element) in SERVER_OWNED.iter().filter(|(t, _)| *t == resource_type) {
            for side in [&mut expected, &mut read] {
                if let Some(object) = side.as_object_mut() {
                    object.remove(*element);
                }
            }
        }
        if !same_content(&read, &expected) {
            failures.push(format!("{name}: read back differs"));
        }
        checked += 1;
    }
    eprintln!(
        "official examples: {checked} round-tripped, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 4000, "only {checked} examples checked");
}
