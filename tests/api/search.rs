//! Type-level search on the index written with every version (the basis conditional
//! interactions use).

use reqwest::Method;
use serde_json::{json, Value};

use super::helpers::*;

fn ids(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn search(app: &TestApp, query: &str) -> Value {
    json_with_status(app.get(query).await, 200).await
}

#[tokio::test]
async fn token_string_reference_date_and_quantity_parameters() {
    let app = spawn_app().await;
    let peter = app.create(&patient("P1")).await;
    let mut anna = patient("P2");
    anna["name"] = json!([{"family": "Østergård", "given": ["Anna"]}]);
    anna["gender"] = json!("female");
    anna["birthDate"] = json!("1990-06-15");
    let anna = app.create(&anna).await;
    let peter_ref = format!("Patient/{}", peter["id"].as_str().unwrap());
    let mut hr = heart_rate(&peter_ref, 72);
    hr["effectiveDateTime"] = json!("2024-03-01T10:00:00Z");
    let hr = app.create(&hr).await;
    let mut hr2 = heart_rate(&format!("Patient/{}", anna["id"].as_str().unwrap()), 110);
    hr2["effectiveDateTime"] = json!("2024-03-02T10:00:00Z");
    let hr2 = app.create(&hr2).await;
    let id = |r: &Value| r["id"].as_str().unwrap().to_string();

    assert_eq!(
        ids(&search(&app, "Patient?identifier=http://hospital.example/mrn|P1").await),
        vec![id(&peter)]
    );
    assert_eq!(
        ids(&search(&app, "Patient?identifier=P2").await),
        vec![id(&anna)]
    );
    assert_eq!(
        ids(&search(&app, "Patient?gender=female").await),
        vec![id(&anna)]
    );
    // String search: case- and accent-insensitive prefix; :exact is exact.
    assert_eq!(
        ids(&search(&app, "Patient?family=oster").await),
        vec![id(&anna)]
    );
    assert!(ids(&search(&app, "Patient?family:exact=oster").await).is_empty());
    assert_eq!(
        ids(&search(&app, "Patient?family:exact=Østergård").await),
        vec![id(&anna)]
    );
    // Dates with implicit ranges and prefixes.
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=1990").await),
        vec![id(&anna)]
    );
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=lt1980-01-01").await),
        vec![id(&peter)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?date=2024-03-01").await),
        vec![id(&hr)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?date=ge2024-03-02").await),
        vec![id(&hr2)]
    );
    // References.
    assert_eq!(
        ids(&search(&app, &format!("Observation?subject={peter_ref}")).await),
        vec![id(&hr)]
    );
    assert_eq!(
        ids(&search(&app, &format!("Observation?patient={}", id(&peter))).await),
        vec![id(&hr)]
    );
    // Quantities: 72 matches 71.5..72.5; prefixes compare values.
    assert_eq!(
        ids(&search(&app, "Observation?value-quantity=72").await),
        vec![id(&hr)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?value-quantity=gt100").await),
        vec![id(&hr2)]
    );
    assert_eq!(
        ids(&search(
            &app,
            "Observation?value-quantity=gt50|http://unitsofmeasure.org|/min"
        )
        .await)
        .len(),
        2
    );
    // Several values: OR; several parameters: AND.
    assert_eq!(
        ids(&search(&app, "Patient?identifier=P1,P2").await).len(),
        2
    );
    assert_eq!(
        ids(&search(&app, "Patient?identifier=P1,P2&gender=female").await),
        vec![id(&anna)]
    );
    // :missing and :not.
    assert!(ids(&search(&app, "Patient?birthdate:missing=true").await).is_empty());
    assert_eq!(
        ids(&search(&app, "Patient?gender:not=female").await),
        vec![id(&peter)]
    );
    // _id and _lastUpdated.
    assert_eq!(
        ids(&search(&app, &format!("Patient?_id={}", id(&anna))).await),
        vec![id(&anna)]
    );
    assert_eq!(
        ids(&search(&app, "Patient?_lastUpdated=gt2000-01-01").await).len(),
        2
    );
}

#[tokio::test]
async fn deleted_and_updated_resources_are_searched_by_their_current_version() {
    let app = spawn_app().await;
    let created = app.create(&patient("OLD")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut changed = created.clone();
    changed["identifier"][0]["value"] = json!("NEW");
    json_with_status(app.put(&format!("Patient/{id}"), &changed).await, 200).await;
    assert!(ids(&search(&app, "Patient?identifier=OLD").await).is_empty());
    assert_eq!(
        ids(&search(&app, "Patient?identifier=NEW").await),
        vec![id.clone()]
    );
    app.delete(&format!("Patient/{id}")).await;
    assert!(ids(&search(&app, "Patient?identifier=NEW").await).is_empty());
}

#[tokio::test]
async fn paging_and_total() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create(&heart_rate("Patient/p", i)).await;
    }
    let first = search(&app, "Observation?_count=2&_total=accurate").await;
    assert_eq!(first["total"], 5);
    let mut seen = ids(&first);
    let mut next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_string());
    while let Some(url) = next {
        let page = search(&app, &url).await;
        seen.extend(ids(&page));
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
    let count = search(&app, "Observation?_summary=count").await;
    assert_eq!(count["total"], 5);
    assert!(count.get("entry").is_none());
}

#[tokio::test]
async fn unknown_parameters_are_reported_or_refused() {
    let app = spawn_app().await;
    app.create(&patient("U1")).await;
    let lenient = search(&app, "Patient?colour=red&identifier=U1").await;
    assert_eq!(ids(&lenient).len(), 1);
    let self_link = lenient["link"][0]["url"].as_str().unwrap();
    assert!(!self_link.contains("colour"), "{self_link}");
    let outcome = lenient["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry reports the ignored parameter");
    assert!(outcome["resource"].to_string().contains("colour"));

    let strict = app
        .request(Method::GET, "Patient?colour=red")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    let body = json_with_status(strict, 400).await;
    assert!(outcome_text(&body).contains("colour"));

    // A known parameter with a malformed value is always an error (found by fuzzing:
    // a multi-byte character right after the first byte).
    json_with_status(app.get("Binary?_lastUpdated=j%C2%8E%C3%84g%1F").await, 400).await;
    json_with_status(app.get("Patient?birthdate=yesterday").await, 400).await;
    json_with_status(app.get("Observation?value-quantity=lots").await, 400).await;
    let many: Vec<String> = (0..600).map(|i| format!("id{i}")).collect();
    let body = json_with_status(
        app.get(&format!("Patient?_id={}", many.join(","))).await,
        400,
    )
    .await;
    assert!(outcome_text(&body).contains("at most 500"));

    let form = app
        .request(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("identifier=U1")
        .send()
        .await
        .unwrap();
    assert_eq!(ids(&json_with_status(form, 200).await).len(), 1);
}

#[tokio::test]
async fn transaction_conditional_update_and_delete_entries() {
    let app = spawn_app().await;
    let existing = app.create(&patient("CU1")).await;
    let doomed = app.create(&patient("CD1")).await;
    let mut update = patient("CU1");
    update["gender"] = json!("female");
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": update, "request": {"method": "PUT", "url": "Patient?identifier=http://hospital.example/mrn|CU1"}},
            {"resource": patient("CU2"), "request": {"method": "PUT", "url": "Patient?identifier=http://hospital.example/mrn|CU2"}},
            {"request": {"method": "DELETE", "url": "Patient?identifier=http://hospital.example/mrn|CD1"}}
        ]
    });
    let response = json_with_status(app.post("", &bundle).await, 200).await;
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["200 OK", "201 Created", "204 No Content"]);
    let updated = json_with_status(
        app.get(&format!("Patient/{}", existing["id"].as_str().unwrap()))
            .await,
        200,
    )
    .await;
    assert_eq!(updated["gender"], "female");
    json_with_status(
        app.get(&format!("Patient/{}", doomed["id"].as_str().unwrap()))
            .await,
        410,
    )
    .await;
    assert_eq!(ids(&search(&app, "Patient?identifier=CU2").await).len(), 1);
}

#[tokio::test]
async fn chained_parameters_and_reverse_chaining() {
    let app = spawn_app().await;
    let mut org = json!({"resourceType": "Organization", "name": "Ward 3 Cardiology"});
    org = app.create(&org).await;
    let org_ref = format!("Organization/{}", org["id"].as_str().unwrap());
    let mut peter = patient("CH1");
    peter["managingOrganization"] = json!({"reference": org_ref});
    let peter = app.create(&peter).await;
    let mut anna = patient("CH2");
    anna["name"] = json!([{"family": "Berg", "given": ["Anna"]}]);
    let anna = app.create(&anna).await;
    let peter_ref = format!("Patient/{}", peter["id"].as_str().unwrap());
    let anna_ref = format!("Patient/{}", anna["id"].as_str().unwrap());
    let peter_hr = app.create(&heart_rate(&peter_ref, 70)).await;
    let anna_hr = app.create(&heart_rate(&anna_ref, 120)).await;
    let id = |r: &Value| r["id"].as_str().unwrap().to_string();

    // One level, with and without the type modifier.
    assert_eq!(
        ids(&search(&app, "Observation?subject:Patient.family=chalmers").await),
        vec![id(&peter_hr)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?subject.family=berg").await),
        vec![id(&anna_hr)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?patient.identifier=CH2").await),
        vec![id(&anna_hr)]
    );
    // Two levels.
    assert_eq!(
        ids(&search(&app, "Observation?subject:Patient.organization.name=ward").await),
        vec![id(&peter_hr)]
    );
    // Reverse chaining: patients with a fast heart rate.
    assert_eq!(
        ids(&search(
            &app,
            "Patient?_has:Observation:patient:value-quantity=gt100"
        )
        .await),
        vec![id(&anna)]
    );
    assert_eq!(
        ids(&search(
            &app,
            "Patient?_has:Observation:subject:code=http://loinc.org|8867-4"
        )
        .await)
        .len(),
        2
    );
    // Nested: organizations that manage a patient with a heart-rate Observation of 70.
    assert_eq!(
        ids(&search(
            &app,
            "Organization?_has:Patient:organization:_has:Observation:patient:value-quantity=70"
        )
        .await),
        vec![id(&org)]
    );
    // A deleted source no longer counts.
    app.delete(&format!("Observation/{}", id(&anna_hr))).await;
    assert!(ids(&search(
        &app,
        "Patient?_has:Observation:patient:value-quantity=gt100"
    )
    .await)
    .is_empty());

    // Errors name what is wrong.
    let body = json_with_status(app.get("Observation?status.name=x").await, 400).await;
    assert!(outcome_text(&body).contains("not a reference"), "{body}");
    let body = json_with_status(app.get("Observation?subject:Device.family=x").await, 400).await;
    assert!(outcome_text(&body).contains("family"), "{body}");
    let body = json_with_status(app.get("Patient?_has:Observation:patient").await, 400).await;
    assert!(
        outcome_text(&body).contains("_has:Type:reference:parameter"),
        "{body}"
    );
}

fn included(bundle: &Value) -> Vec<String> {
    let mut refs: Vec<String> = bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    refs.sort();
    refs
}

#[tokio::test]
async fn include_and_revinclude() {
    let app = spawn_app().await;
    let org = app
        .create(&json!({"resourceType": "Organization", "name": "Ward 3"}))
        .await;
    let org_ref = format!("Organization/{}", org["id"].as_str().unwrap());
    let mut p = patient("INC1");
    p["managingOrganization"] = json!({"reference": org_ref});
    let p = app.create(&p).await;
    let patient_ref = format!("Patient/{}", p["id"].as_str().unwrap());
    let device = app
        .create(&json!({"resourceType": "Device", "serialNumber": "SN-9"}))
        .await;
    let device_ref = format!("Device/{}", device["id"].as_str().unwrap());
    let mut first = heart_rate(&patient_ref, 70);
    first["device"] = json!({"reference": device_ref});
    let first = app.create(&first).await;
    let second = app.create(&heart_rate(&patient_ref, 71)).await;
    let obs = |r: &Value| format!("Observation/{}", r["id"].as_str().unwrap());

    let bundle = search(&app, "Observation?_include=Observation:subject").await;
    assert_eq!(ids(&bundle).len(), 2);
    assert_eq!(
        included(&bundle),
        vec![patient_ref.clone()],
        "each included once"
    );
    assert_eq!(bundle["total"], 2, "included resources are not counted");

    let bundle = search(&app, "Observation?_include=Observation:*").await;
    let mut expected = vec![device_ref.clone(), patient_ref.clone()];
    expected.sort();
    assert_eq!(included(&bundle), expected);

    // Only the targets of the named type.
    let bundle = search(&app, "Observation?_include=Observation:subject:Group").await;
    assert!(included(&bundle).is_empty());

    // :iterate follows the included Patient to its Organization.
    let bundle = search(
        &app,
        "Observation?_include=Observation:subject&_include:iterate=Patient:organization",
    )
    .await;
    let mut expected = vec![org_ref.clone(), patient_ref.clone()];
    expected.sort();
    assert_eq!(included(&bundle), expected);

    let bundle = search(
        &app,
        &format!(
            "Patient?_id={}&_revinclude=Observation:subject",
            p["id"].as_str().unwrap()
        ),
    )
    .await;
    let mut expected = vec![obs(&first), obs(&second)];
    expected.sort();
    assert_eq!(included(&bundle), expected);

    let bundle = search(
        &app,
        &format!(
            "Organization?_id={}&_revinclude=Patient:organization&_revinclude:iterate=Observation:patient",
            org["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        included(&bundle).len(),
        3,
        "the Patient and both Observations"
    );

    // A deleted resource is not included.
    app.delete(&format!("Observation/{}", second["id"].as_str().unwrap()))
        .await;
    let bundle = search(
        &app,
        &format!(
            "Patient?_id={}&_revinclude=Observation:subject",
            p["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(included(&bundle), vec![obs(&first)]);

    let body = json_with_status(
        app.get("Observation?_include=Observation:status").await,
        400,
    )
    .await;
    assert!(outcome_text(&body).contains("not a reference"), "{body}");
}

/// Ids of the matches in page order (not sorted).
fn ordered_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn next_link(bundle: &Value) -> Option<String> {
    link_of(bundle, "next")
}

fn link_of(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

#[tokio::test]
async fn previous_links_walk_back_through_the_same_pages() {
    let app = spawn_app().await;
    for (value, date) in [
        (80, Some("2024-03-03T10:00:00Z")),
        (60, Some("2024-03-05T10:00:00Z")),
        (90, None),
        (70, Some("2024-03-04T10:00:00Z")),
        (75, Some("2024-03-03T10:00:00Z")),
        (65, None),
        (85, Some("2024-03-01T10:00:00Z")),
    ] {
        let mut observation = heart_rate("Patient/p", value);
        match date {
            Some(date) => observation["effectiveDateTime"] = json!(date),
            None => {
                observation
                    .as_object_mut()
                    .unwrap()
                    .remove("effectiveDateTime");
            }
        }
        app.create(&observation).await;
    }
    // Equal dates, missing dates (last in both directions) and plain id order.
    for sort in ["-date", "date", "-value-quantity,date", ""] {
        let first = format!("Observation?patient=Patient/p&_count=2&_sort={sort}");
        let mut forward: Vec<Vec<String>> = Vec::new();
        let mut url = Some(first.clone());
        let mut last = Value::Null;
        while let Some(next) = url {
            let page = search(&app, &next).await;
            assert_eq!(
                link_of(&page, "previous").is_some(),
                !forward.is_empty(),
                "{sort}: only the first page has no previous link"
            );
            forward.push(ordered_ids(&page));
            url = next_link(&page);
            last = page;
        }
        assert_eq!(forward.len(), 4, "{sort}: 7 matches in pages of 2");
        let everything = ordered_ids(&search(&app, &format!("{first}&_count=10")).await);
        assert_eq!(forward.concat(), everything, "{sort}");

        let mut backward: Vec<Vec<String>> = vec![ordered_ids(&last)];
        let mut url = link_of(&last, "previous");
        while let Some(previous) = url {
            let page = search(&app, &previous).await;
            assert!(
                next_link(&page).is_some(),
                "{sort}: a page before has a next link"
            );
            backward.push(ordered_ids(&page));
            url = link_of(&page, "previous");
        }
        backward.reverse();
        assert_eq!(backward, forward, "{sort}: the same pages, walking back");
    }
}

#[tokio::test]
async fn sort_orders_results_and_pages_stay_stable() {
    let app = spawn_app().await;
    // Values and dates chosen so every order is different from creation order.
    let fixtures = [
        (80, "2024-03-03T10:00:00Z"),
        (60, "2024-03-05T10:00:00Z"),
        (90, "2024-03-01T10:00:00Z"),
        (70, "2024-03-04T10:00:00Z"),
        (75, "2024-03-02T10:00:00Z"),
    ];
    let mut by_value = Vec::new();
    for (value, date) in fixtures {
        let mut observation = heart_rate("Patient/s", value);
        observation["effectiveDateTime"] = json!(date);
        let created = app.create(&observation).await;
        by_value.push((value, date, created["id"].as_str().unwrap().to_string()));
    }
    // One Observation without a date sorts last in both directions.
    let mut undated = heart_rate("Patient/s", 65);
    undated.as_object_mut().unwrap().remove("effectiveDateTime");
    let undated = app.create(&undated).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut ascending_dates = by_value.clone();
    ascending_dates.sort_by_key(|(_, date, _)| *date);
    let mut expected: Vec<String> = ascending_dates
        .iter()
        .map(|(_, _, id)| id.clone())
        .collect();
    expected.push(undated.clone());
    assert_eq!(
        ordered_ids(&search(&app, "Observation?_sort=date").await),
        expected
    );

    let mut expected: Vec<String> = ascending_dates
        .iter()
        .rev()
        .map(|(_, _, id)| id.clone())
        .collect();
    expected.push(undated.clone());
    assert_eq!(
        ordered_ids(&search(&app, "Observation?_sort=-date").await),
        expected
    );

    let mut descending_values = by_value.clone();
    descending_values.push((65, "", undated.clone()));
    descending_values.sort_by_key(|(value, _, _)| std::cmp::Reverse(*value));
    let expected: Vec<String> = descending_values
        .iter()
        .map(|(_, _, id)| id.clone())
        .collect();
    assert_eq!(
        ordered_ids(&search(&app, "Observation?_sort=-value-quantity").await),
        expected
    );

    // Paging through a sorted search with writes in between: no repeats, nothing lost.
    let mut seen = Vec::new();
    let mut next = Some("Observation?_sort=-value-quantity&_count=2".to_string());
    let mut pages = 0;
    while let Some(url) = next {
        let page = search(&app, &url).await;
        seen.extend(ordered_ids(&page));
        if pages == 0 {
            // A new highest value lands before the cursor and must not shift later pages.
            app.create(&heart_rate("Patient/s", 150)).await;
        }
        pages += 1;
        next = next_link(&page);
    }
    assert_eq!(
        seen, expected,
        "pages continue exactly where the last one ended"
    );

    let body = json_with_status(app.get("Observation?_sort=colour").await, 400).await;
    assert!(outcome_text(&body).contains("colour"));
    let body = json_with_status(app.get("Observation?_sort=date&_cursor=garbage").await, 400).await;
    assert!(outcome_text(&body).contains("cursor"));
}

#[tokio::test]
async fn compartment_and_system_search() {
    let app = spawn_app().await;
    let peter = app.create(&patient("CMP1")).await;
    let anna = app.create(&patient("CMP2")).await;
    let peter_id = peter["id"].as_str().unwrap().to_string();
    let peter_ref = format!("Patient/{peter_id}");
    let hr = app.create(&heart_rate(&peter_ref, 70)).await;
    let fast = app.create(&heart_rate(&peter_ref, 130)).await;
    app.create(&heart_rate(
        &format!("Patient/{}", anna["id"].as_str().unwrap()),
        80,
    ))
    .await;
    let encounter = app
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": peter_ref}}))
        .await;
    let id = |r: &Value| r["id"].as_str().unwrap().to_string();
    let mut both = vec![id(&hr), id(&fast)];
    both.sort();

    assert_eq!(
        ids(&search(&app, &format!("Patient/{peter_id}/Observation")).await),
        both
    );
    assert_eq!(
        ids(&search(
            &app,
            &format!("Patient/{peter_id}/Observation?value-quantity=gt100")
        )
        .await),
        vec![id(&fast)]
    );
    assert_eq!(
        ids(&search(&app, &format!("Patient/{peter_id}/Encounter")).await),
        vec![id(&encounter)]
    );
    // The patient is in its own compartment.
    assert_eq!(
        ids(&search(&app, &format!("Patient/{peter_id}/Patient")).await),
        vec![peter_id.clone()]
    );
    let page = search(&app, &format!("Patient/{peter_id}/Observation?_count=1")).await;
    let next = page["link"][1]["url"].as_str().unwrap();
    assert!(
        next.contains(&format!("/Patient/{peter_id}/Observation?")),
        "{next}"
    );
    json_with_status(app.get("Observation/x/Patient").await, 404).await;

    // System search over listed types, with parameters that each type knows.
    let bundle = search(
        &app,
        &format!("?_type=Observation,Encounter&subject={peter_ref}"),
    )
    .await;
    let mut expected = vec![id(&hr), id(&fast), id(&encounter)];
    expected.sort();
    assert_eq!(ids(&bundle), expected);
    let bundle = search(&app, "?_type=Patient&identifier=CMP2").await;
    assert_eq!(ids(&bundle), vec![id(&anna)]);
    let bundle = search(&app, &format!("?_id={peter_id}")).await;
    assert_eq!(ids(&bundle), vec![peter_id.clone()]);
    assert_eq!(search(&app, "?_summary=count").await["total"], 6);
    // Without _type, a type-specific parameter is unknown: reported, or refused when strict.
    let lenient = search(&app, "?identifier=CMP2").await;
    assert!(lenient
        .to_string()
        .contains("ignored search parameters: identifier"));
    let strict = app
        .request(Method::GET, "?identifier=CMP2")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    json_with_status(strict, 400).await;
    json_with_status(app.get("?_type=Nothing").await, 400).await;
}

#[tokio::test]
async fn custom_search_parameters_work_after_reindex() {
    let app = spawn_app().await;
    let mut device = json!({"resourceType": "Device", "serialNumber": "SN-OLD",
        "modelNumber": "OXI-100"});
    let old = app.create(&device).await;
    // Device has no official search parameter on modelNumber.
    json_with_status(
        app.request(Method::GET, "Device?model-number-custom=OXI-100")
            .header("prefer", "handling=strict")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;

    let parameter = json!({
        "resourceType": "SearchParameter",
        "url": "http://fhirgate.example/SearchParameter/device-model-number-custom",
        "name": "DeviceModelNumber",
        "status": "active",
        "description": "Device.modelNumber",
        "code": "model-number-custom",
        "base": ["Device"],
        "type": "token",
        "expression": "Device.modelNumber"
    });
    app.create(&parameter).await;

    // Written after the parameter exists: indexed at once.
    device["serialNumber"] = json!("SN-NEW");
    let new = app.create(&device).await;
    let found = search(&app, "Device?model-number-custom=OXI-100").await;
    assert_eq!(ids(&found), vec![new["id"].as_str().unwrap().to_string()]);

    // $reindex brings the older Device in.
    let result = json_with_status(app.post("Device/$reindex", &json!({})).await, 200).await;
    assert_eq!(result["parameter"][0]["valueInteger"], 2);
    let found = search(&app, "Device?model-number-custom=OXI-100").await;
    let mut expected = vec![
        old["id"].as_str().unwrap().to_string(),
        new["id"].as_str().unwrap().to_string(),
    ];
    expected.sort();
    assert_eq!(ids(&found), expected);

    // An active SearchParameter that cannot work is refused.
    let mut broken = parameter.clone();
    broken["code"] = json!("broken-custom");
    broken["expression"] = json!("Device.modelNumber.where(");
    let body = json_with_status(app.post("SearchParameter", &broken).await, 400).await;
    assert!(
        outcome_expressions(&body).contains(&"SearchParameter.expression".to_string()),
        "{body}"
    );
}

#[tokio::test]
async fn observation_combo_parameters_cover_value_and_components() {
    let app = spawn_app().await;
    let hr = app.create(&heart_rate("Patient/c", 72)).await;
    let bp = app
        .create(&json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/c"},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        }))
        .await;
    let id = |r: &Value| r["id"].as_str().unwrap().to_string();
    let mut both = vec![id(&hr), id(&bp)];
    both.sort();

    assert_eq!(
        ids(&search(&app, "Observation?combo-code=http://loinc.org|8867-4").await),
        vec![id(&hr)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?combo-code=http://loinc.org|8480-6").await),
        vec![id(&bp)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?combo-value-quantity=gt100").await),
        vec![id(&bp)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?combo-value-quantity=72").await),
        vec![id(&hr)]
    );
    assert_eq!(
        ids(&search(&app, "Observation?combo-value-quantity=lt90").await),
        both
    );
    assert_eq!(
        ids(&search(
            &app,
            "Observation?combo-code-value-quantity=http://loinc.org|8462-4$80"
        )
        .await),
        vec![id(&bp)]
    );
    // Negative forms: neither the Observation's own nor a component's value may match.
    assert_eq!(
        ids(&search(&app, "Observation?combo-code:not=http://loinc.org|8480-6").await),
        vec![id(&hr)]
    );
    assert!(ids(&search(&app, "Observation?combo-value-quantity:missing=true").await).is_empty());
}

/// Total of a search, from `_summary=count`.
async fn count(app: &TestApp, query: &str) -> i64 {
    let separator = if query.contains('?') { '&' } else { '?' };
    search(app, &format!("{query}{separator}_summary=count")).await["total"]
        .as_i64()
        .unwrap()
}

/// A search starts from its most selective condition and tests the others per resource;
/// every kind of condition must give the same answer in either role, and a search driven
/// by index entries alone must still see deletions and count each resource once.
#[tokio::test]
async fn every_kind_of_condition_drives_or_filters_alike() {
    let app = spawn_app().await;
    let peter = app.create(&patient("P1")).await;
    let mut anna = patient("P2");
    anna["name"] = json!([{"family": "Østergård", "given": ["Anna"]}]);
    let anna = app.create(&anna).await;
    let device = app
        .create(&json!({"resourceType": "Device", "identifier": [{"value": "D1"}]}))
        .await;
    let id = |r: &Value| r["id"].as_str().unwrap().to_string();
    let (peter_ref, anna_ref) = (
        format!("Patient/{}", id(&peter)),
        format!("Patient/{}", id(&anna)),
    );
    let device_ref = format!("Device/{}", id(&device));

    let mut o1 = heart_rate(&peter_ref, 72);
    o1["device"] = json!({"reference": device_ref});
    // The same code in a second system: two index rows match code=8867-4.
    o1["code"]["coding"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": "urn:oid:1.2.3", "code": "8867-4"}));
    let o1 = app.create(&o1).await;
    let mut o2 = heart_rate(&peter_ref, 110);
    o2["effectiveDateTime"] = json!("2024-03-02T10:00:00Z");
    let o2 = app.create(&o2).await;
    let o3 = app
        .create(&json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": peter_ref},
            "effectiveDateTime": "2024-03-01T11:00:00Z",
            "component": [{
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
            }]
        }))
        .await;
    let mut o4 = heart_rate(&anna_ref, 80);
    o4["device"] = json!({"reference": device_ref});
    let o4 = app.create(&o4).await;
    let (o1, o2, o3, o4) = (id(&o1), id(&o2), id(&o3), id(&o4));
    let peter_q = format!("patient={peter_ref}");
    let peter_id = id(&peter);

    let cases: Vec<(String, Vec<&String>)> = vec![
        // Token, date, quantity, composite as the probe of a reference.
        (format!("Observation?{peter_q}&code=8867-4"), vec![&o1, &o2]),
        (format!("Observation?code=8867-4&{peter_q}"), vec![&o1, &o2]),
        (format!("Observation?{peter_q}&date=ge2024-03-02"), vec![&o2]),
        (format!("Observation?{peter_q}&value-quantity=gt100"), vec![&o2]),
        (
            format!("Observation?{peter_q}&component-code-value-quantity=http://loinc.org|8480-6$gt100"),
            vec![&o3],
        ),
        (
            format!("Observation?patient={anna_ref}&component-code-value-quantity=http://loinc.org|8480-6$gt100"),
            vec![],
        ),
        // Chains and _has as probes, and as drivers.
        (
            format!("Observation?device={device_ref}&subject:Patient.name=anna"),
            vec![&o4],
        ),
        ("Observation?subject:Patient.name=anna".to_string(), vec![&o4]),
        (
            "Patient?identifier=P1&_has:Observation:patient:code=8867-4".to_string(),
            vec![&peter_id],
        ),
        (
            "Patient?identifier=P2&_has:Observation:patient:value-quantity=gt100".to_string(),
            vec![],
        ),
        (
            "Patient?_has:Observation:patient:value-quantity=gt100".to_string(),
            vec![&peter_id],
        ),
        // Negations and :missing filter; alone, nothing drives.
        (format!("Observation?{peter_q}&device:missing=true"), vec![&o2, &o3]),
        (format!("Observation?{peter_q}&device:missing=false"), vec![&o1]),
        (format!("Observation?{peter_q}&code:not=8867-4"), vec![&o3]),
        ("Observation?code:not=8867-4".to_string(), vec![&o3]),
        ("Patient?name:contains=halm&gender=male".to_string(), vec![&peter_id]),
        // _id drives; _lastUpdated reads the resource row.
        (format!("Observation?_id={o1},{o4}&{peter_q}"), vec![&o1]),
        (
            "Observation?code=8867-4&_lastUpdated=ge2000-01-01".to_string(),
            vec![&o1, &o2, &o4],
        ),
        // A compartment is a condition like the others.
        (format!("{peter_ref}/Observation?code=8867-4"), vec![&o1, &o2]),
        (format!("{peter_ref}/Observation"), vec![&o1, &o2, &o3]),
    ];
    for (query, expected) in &cases {
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(ids(&search(&app, query).await), expected, "{query}");
        assert_eq!(count(&app, query).await, expected.len() as i64, "{query}");
    }
    // Sorted by a column of the resource row, driven by a reference.
    assert_eq!(
        ordered_ids(&search(&app, &format!("Observation?{peter_q}&_sort=-_lastUpdated")).await),
        vec![o3.clone(), o2.clone(), o1.clone()]
    );

    // Deleted resources leave the index: gone from searches driven by it alone.
    assert_eq!(app.delete(&format!("Observation/{o2}")).await.status(), 204);
    assert_eq!(
        ids(&search(&app, &format!("Observation?{peter_q}")).await),
        {
            let mut v = vec![o1.clone(), o3.clone()];
            v.sort();
            v
        }
    );
    assert_eq!(count(&app, "Observation?code=8867-4").await, 2);
    assert_eq!(count(&app, &format!("{peter_ref}/Observation")).await, 2);
}
