//! A `patient/` token reaches only its patient's compartment, through every path a FHIR
//! client has: read, search, `_include`, `_revinclude`, chains, `_has`, history, `$lastn`,
//! batch and transaction Bundles, writes and subscriptions; and every interaction is
//! audited. The data is set up so that each path would leak if it were not limited: the
//! patient's Observation refers to another patient's Encounter, and another patient's
//! Observation refers to this patient's Encounter.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::auth::{assertion, claims, ec_key, register, request_token, token_for};
use super::helpers::*;

const TOPICS: &str = "http://fhirgate.dev/fhir/SubscriptionTopic/";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// A token of a client bound to `patient`.
async fn patient_token(app: &TestApp, client: &str, patient: &str, scopes: &str) -> String {
    let key = ec_key("k");
    register(app, client, &[&key], scopes, Some(patient)).await;
    let (status, body, _) = request_token(
        app,
        &assertion(&key, &claims(client, &app.root("/auth/token"), 60)),
        scopes,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["patient"], patient);
    body["access_token"].as_str().unwrap().to_string()
}

/// A request with `token`: status and JSON body.
async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", FHIR_JSON)
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `Type/id` of every resource in a Bundle, in order (outcomes left out).
fn references(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["resource"]["resourceType"] != "OperationOutcome")
                .filter_map(|e| {
                    Some(format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str()?,
                        e["resource"]["id"].as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(mut references: Vec<String>) -> Vec<String> {
    references.sort();
    references.dedup();
    references
}

fn encounter(id: &str, patient: &str, status: &str) -> Value {
    json!({
        "resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
        "subject": {"reference": format!("Patient/{patient}")}
    })
}

#[tokio::test]
async fn a_patient_token_reaches_only_its_patients_compartment_through_every_path() {
    let app = spawn_app_with(|config| config.outbound_allow = vec!["127.0.0.1".into()]).await;
    // The server's own token (system/*.cruds) sets the scene.
    for id in ["p-42", "p-7"] {
        let mut body = patient(id);
        body["id"] = json!(id);
        json_with_status(app.put(&format!("Patient/{id}"), &body).await, 201).await;
    }
    json_with_status(
        app.put("Encounter/e-42", &encounter("e-42", "p-42", "in-progress"))
            .await,
        201,
    )
    .await;
    json_with_status(
        app.put("Encounter/e-7", &encounter("e-7", "p-7", "finished"))
            .await,
        201,
    )
    .await;
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "dr-1", "name": [{"family": "Careful"}]});
    json_with_status(app.put("Practitioner/dr-1", &practitioner).await, 201).await;
    let mut mine = heart_rate("Patient/p-42", 70);
    mine["encounter"] = json!({"reference": "Encounter/e-7"});
    mine["performer"] = json!([{"reference": "Practitioner/dr-1"}]);
    let mine = app.create(&mine).await;
    let mut theirs = heart_rate("Patient/p-7", 80);
    theirs["encounter"] = json!({"reference": "Encounter/e-42"});
    let theirs = app.create(&theirs).await;
    let mine_id = mine["id"].as_str().unwrap().to_string();
    let theirs_id = theirs["id"].as_str().unwrap().to_string();
    let mine_ref = format!("Observation/{mine_id}");
    let theirs_ref = format!("Observation/{theirs_id}");

    let token = patient_token(&app, "home-app", "p-42", "patient/*.cruds").await;
    let get = |path: String| {
        let (app, token) = (&app, token.clone());
        async move { call(app, &token, Method::GET, &path, None).await }
    };

    // Read.
    for (path, status) in [
        (mine_ref.clone(), 200),
        (theirs_ref.clone(), 403),
        ("Patient/p-42".to_string(), 200),
        ("Patient/p-7".to_string(), 403),
        ("Encounter/e-42".to_string(), 200),
        ("Encounter/e-7".to_string(), 403),
        ("Practitioner/dr-1".to_string(), 403),
        (format!("{theirs_ref}/_history/1"), 403),
        ("Observation/no-such-id".to_string(), 403),
    ] {
        let (got, body) = get(path.clone()).await;
        assert_eq!(got, status, "GET {path}: {body}");
        if status == 403 {
            assert!(
                outcome_text(&body).contains("Patient/p-42's compartment")
                    || outcome_text(&body).contains("do not grant"),
                "{path}: {body}"
            );
        }
    }

    // Search, includes, chains and _has: each would reach another patient's data.
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("Observation", vec![mine_ref.clone()]),
        ("Observation?subject=Patient/p-7", vec![]),
        ("Observation?code=8867-4", vec![mine_ref.clone()]),
        ("Encounter", vec!["Encounter/e-42".into()]),
        ("Patient", vec!["Patient/p-42".into()]),
        // Its Observation refers to e-7, which is another patient's: not included.
        (
            "Observation?_include=Observation:encounter",
            vec![mine_ref.clone()],
        ),
        (
            "Observation?_include=Observation:subject",
            vec![mine_ref.clone(), "Patient/p-42".into()],
        ),
        (
            "Observation?_include=Observation:performer",
            vec![mine_ref.clone()],
        ),
        (
            "Observation?_include=*",
            vec![mine_ref.clone(), "Patient/p-42".into()],
        ),
        // Another patient's Observation refers to e-42: not revincluded.
        (
            "Encounter?_revinclude=Observation:encounter",
            vec!["Encounter/e-42".into()],
        ),
        (
            "Patient?_revinclude=Observation:subject",
            vec!["Patient/p-42".into(), mine_ref.clone()],
        ),
        // e-7 is finished, but the token cannot see it: the chain cannot tell.
        ("Observation?encounter.status=finished", vec![]),
        (
            "Observation?subject:Patient.name=Chalmers",
            vec![mine_ref.clone()],
        ),
        ("Observation?performer:Practitioner.name=Careful", vec![]),
        // Only another patient's Observation refers to e-42 with that code.
        ("Encounter?_has:Observation:encounter:code=8867-4", vec![]),
        (
            "Patient?_has:Observation:subject:code=8867-4",
            vec!["Patient/p-42".into()],
        ),
        ("Patient/p-7/Observation", vec![]),
        ("Patient/p-42/Observation", vec![mine_ref.clone()]),
        (
            "?_id=e-7,e-42,p-7,p-42",
            vec!["Encounter/e-42".into(), "Patient/p-42".into()],
        ),
        (
            "?_type=Observation,Encounter",
            vec!["Encounter/e-42".into(), mine_ref.clone()],
        ),
        (
            "Observation/$lastn?patient=Patient/p-42&category=vital-signs",
            vec![mine_ref.clone()],
        ),
        (
            "Observation/$lastn?patient=Patient/p-7&category=vital-signs",
            vec![],
        ),
    ];
    for (path, expected) in cases {
        let (status, bundle) = get(path.to_string()).await;
        assert_eq!(status, 200, "{path}: {bundle}");
        assert_eq!(
            sorted(references(&bundle)),
            sorted(expected),
            "{path}: {bundle}"
        );
    }
    // The same chains and _has do match for a token that sees everything.
    let (_, everything) = call(
        &app,
        app.token.as_deref().unwrap(),
        Method::GET,
        "Observation?encounter.status=finished",
        None,
    )
    .await;
    assert_eq!(references(&everything), vec![mine_ref.clone()]);
    let (_, everything) = call(
        &app,
        app.token.as_deref().unwrap(),
        Method::GET,
        "Encounter?_has:Observation:encounter:code=8867-4",
        None,
    )
    .await;
    assert_eq!(
        sorted(references(&everything)),
        vec!["Encounter/e-42".to_string(), "Encounter/e-7".to_string()]
    );

    // History: the patient's resources only.
    let (status, history) = get("Observation/_history".into()).await;
    assert_eq!(
        (status, references(&history)),
        (200, vec![mine_ref.clone()])
    );
    let (status, history) = get("_history".into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        sorted(references(&history)),
        sorted(vec![
            mine_ref.clone(),
            "Encounter/e-42".into(),
            "Patient/p-42".into()
        ])
    );
    assert_eq!(get(format!("{theirs_ref}/_history")).await.0, 403);
    assert_eq!(get(format!("{mine_ref}/_history")).await.0, 200);

    // Batch: each entry on its own.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": mine_ref}},
        {"request": {"method": "GET", "url": theirs_ref}},
        {"request": {"method": "GET", "url": "Observation?code=8867-4"}},
        {"resource": heart_rate("Patient/p-7", 90), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (status, response) = call(&app, &token, Method::POST, "", Some(&batch)).await;
    assert_eq!(status, 200, "{response}");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert!(statuses[0].starts_with("200"), "{response}");
    assert!(statuses[1].starts_with("403"), "{response}");
    assert!(statuses[2].starts_with("200"), "{response}");
    assert!(statuses[3].starts_with("403"), "{response}");
    let searched = &response["entry"][2]["resource"];
    assert_eq!(searched["total"], 1, "{response}");
    // A transaction with one entry outside the compartment is refused as a whole.
    let transaction =
        |entries: Value| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let (status, body) = call(
        &app,
        &token,
        Method::POST,
        "",
        Some(&transaction(json!([
            {"resource": heart_rate("Patient/p-42", 71), "request": {"method": "POST", "url": "Observation"}},
            {"resource": heart_rate("Patient/p-7", 91), "request": {"method": "POST", "url": "Observation"}}
        ]))),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        outcome_expressions(&body)
            .iter()
            .any(|e| e.starts_with("Bundle.entry[1]")),
        "{body}"
    );
    let (status, body) = call(
        &app,
        &token,
        Method::POST,
        "",
        Some(&transaction(json!([
            {"resource": heart_rate("Patient/p-42", 72), "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "DELETE", "url": theirs_ref}}
        ]))),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (_, all) = call(
        &app,
        app.token.as_deref().unwrap(),
        Method::GET,
        "Observation?_summary=count",
        None,
    )
    .await;
    assert_eq!(
        all["total"], 2,
        "nothing of the refused Bundles was stored: {all}"
    );
    let (status, body) = call(
        &app,
        &token,
        Method::POST,
        "",
        Some(&transaction(json!([
            {"resource": heart_rate("Patient/p-42", 73), "request": {"method": "POST", "url": "Observation"}}
        ]))),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Writes: another patient's data is neither changed nor deleted, and nothing is
    // written into another patient's compartment.
    let mut moved = mine.clone();
    moved["subject"] = json!({"reference": "Patient/p-7"});
    let (status, body) = call(&app, &token, Method::PUT, &mine_ref, Some(&moved)).await;
    assert_eq!(status, 403, "{body}");
    let mut takeover = theirs.clone();
    takeover["subject"] = json!({"reference": "Patient/p-42"});
    assert_eq!(
        call(&app, &token, Method::PUT, &theirs_ref, Some(&takeover))
            .await
            .0,
        403
    );
    let patch = app
        .client
        .patch(app.url(&theirs_ref))
        .bearer_auth(&token)
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/status", "value": "amended"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 403);
    assert_eq!(
        call(&app, &token, Method::DELETE, &theirs_ref, None)
            .await
            .0,
        403
    );
    let (status, stored) = call(
        &app,
        app.token.as_deref().unwrap(),
        Method::GET,
        &theirs_ref,
        None,
    )
    .await;
    assert_eq!((status, &stored["meta"]["versionId"]), (200, &json!("1")));
    // A conditional delete matches only what the token sees.
    let (status, _) = call(
        &app,
        &token,
        Method::DELETE,
        "Observation?code=8867-4&value-quantity=70",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, theirs_now) = call(
        &app,
        app.token.as_deref().unwrap(),
        Method::GET,
        &theirs_ref,
        None,
    )
    .await;
    assert_eq!(theirs_now["id"], theirs_id.as_str());

    // Subscriptions: the owner receives only its patient's events, whatever the filter.
    let receiver = Receiver::start().await;
    let subscription = |filter: Option<&str>| {
        let mut body = json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "home monitoring",
            "criteria": format!("{TOPICS}observation"),
            "channel": {
                "type": "rest-hook",
                "endpoint": receiver.url,
                "payload": "application/fhir+json",
                "_payload": {"extension": [{
                    "url": format!("{BACKPORT}backport-payload-content"), "valueCode": "full-resource"
                }]}
            }
        });
        if let Some(filter) = filter {
            body["_criteria"] = json!({"extension": [{
                "url": format!("{BACKPORT}backport-filter-criteria"), "valueString": filter
            }]});
        }
        body
    };
    let (status, everything_sub) = call(
        &app,
        &token,
        Method::POST,
        "Subscription",
        Some(&subscription(None)),
    )
    .await;
    assert_eq!(status, 201, "{everything_sub}");
    let (status, nosy_sub) = call(
        &app,
        &token,
        Method::POST,
        "Subscription",
        Some(&subscription(Some("Observation?patient=Patient/p-7"))),
    )
    .await;
    assert_eq!(status, 201, "{nosy_sub}");
    let everything_id = everything_sub["id"].as_str().unwrap().to_string();
    let nosy_id = nosy_sub["id"].as_str().unwrap().to_string();
    // Its own subscriptions are the ones it reads; a subscription about data it cannot
    // read at all is refused.
    let (status, own) = get("Subscription".into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        sorted(references(&own)),
        sorted(vec![
            format!("Subscription/{everything_id}"),
            format!("Subscription/{nosy_id}")
        ])
    );
    let mut about_practitioners = subscription(None);
    about_practitioners["criteria"] = json!("Practitioner?name=Careful");
    let (status, body) = call(
        &app,
        &token,
        Method::POST,
        "Subscription",
        Some(&about_practitioners),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Another client's subscription (to an endpoint of its own).
    let elsewhere = Receiver::start().await;
    let others = app
        .create(&json!({"resourceType": "Subscription", "status": "requested", "reason": "x",
            "criteria": "Observation?code=8867-4", "channel": {"type": "rest-hook", "endpoint": elsewhere.url}}))
        .await;
    assert_eq!(
        get(format!("Subscription/{}", others["id"].as_str().unwrap()))
            .await
            .0,
        403
    );
    receiver
        .wait_until(10, |r| {
            r.iter().filter(|n| n.kind() == "handshake").count() == 2
        })
        .await;
    for subscription in [&everything_id, &nosy_id] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while get(format!("Subscription/{subscription}")).await.1["status"] != "active" {
            assert!(
                std::time::Instant::now() < deadline,
                "{subscription} not active"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let others_reading = app.create(&heart_rate("Patient/p-7", 81)).await;
    let own_reading = app.create(&heart_rate("Patient/p-42", 74)).await;
    let received = receiver
        .wait_until(10, |r| r.iter().any(|n| n.kind() == "event-notification"))
        .await;
    // Let anything else that would arrive arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = if received.len() < receiver.received().len() {
        receiver.received()
    } else {
        received
    };
    let notified: Vec<String> = received
        .iter()
        .filter(|n| n.kind() == "event-notification")
        .flat_map(|n| {
            n.body["entry"]
                .as_array()
                .unwrap()
                .iter()
                .skip(1)
                .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        notified,
        vec![own_reading["id"].as_str().unwrap().to_string()],
        "only its patient's reading, on the unfiltered subscription only"
    );
    assert!(!received
        .iter()
        .any(|n| n.raw.contains(others_reading["id"].as_str().unwrap())));
    // A subscriber that may read everything is notified of both readings.
    elsewhere
        .wait_until(10, |r| {
            r.iter().flat_map(|n| n.event_numbers()).collect::<Vec<_>>() == vec![1, 2]
        })
        .await;
    // $events leaves out what the owner may not read too.
    let (status, events) = get(format!("Subscription/{nosy_id}/$events")).await;
    assert_eq!(status, 200, "{events}");
    assert!(
        !events
            .to_string()
            .contains(others_reading["id"].as_str().unwrap()),
        "{events}"
    );

    // Audit: every interaction of the token is recorded with its client and patient.
    let auditor = token_for(&app, "system/AuditEvent.rs").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, trail) = call(&app, &auditor, Method::GET, "AuditEvent?_count=1000", None).await;
        let events: Vec<Value> = trail["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e["resource"].clone())
            .filter(|e| e.to_string().contains("home-app"))
            .collect();
        let refused_read = events.iter().any(|e| {
            e["outcome"] == "4"
                && e.to_string().contains(&theirs_ref)
                && e.to_string().contains("Patient/p-42")
        });
        let interactions: std::collections::BTreeSet<&str> = events
            .iter()
            .filter(|e| e.to_string().contains("Patient/p-42"))
            .filter_map(|e| e["subtype"][0]["code"].as_str())
            .collect();
        let every_kind = [
            "read",
            "vread",
            "search-type",
            "search-system",
            "history-type",
            "history-system",
            "history-instance",
            "transaction",
            "create",
            "update",
            "patch",
            "delete",
            "operation",
        ]
        .iter()
        .all(|kind| interactions.contains(kind));
        if refused_read && every_kind {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the patient token's interactions were not all audited ({interactions:?}): {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
