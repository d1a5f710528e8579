//! `Observation/$lastn` and `Observation/$stats` (R4 OperationDefinitions Observation-lastn
//! and Observation-stats), with the expected results worked out by hand.

use reqwest::Method;
use serde_json::{json, Value};

use super::helpers::*;

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const STATS: &str = "http://terminology.hl7.org/CodeSystem/observation-statistics";
const HR: (&str, &str) = ("8867-4", "Heart rate");
const SPO2: (&str, &str) = ("2708-6", "Oxygen saturation in Arterial blood");
const TEMP: (&str, &str) = ("8310-5", "Body temperature");
const GLUCOSE: (&str, &str) = ("2339-0", "Glucose [Mass/volume] in Blood");

/// An Observation with a LOINC code, a UCUM quantity and an effective time.
fn observation(
    patient: &str,
    (code, display): (&str, &str),
    value: f64,
    unit: &str,
    when: &str,
) -> Value {
    let category = if code == GLUCOSE.0 {
        "laboratory"
    } else {
        "vital-signs"
    };
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}
    })
}

fn day(n: u32) -> String {
    format!("2024-03-{n:02}T10:00:00Z")
}

async fn create(app: &TestApp, resource: Value) -> String {
    app.create(&resource).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    json_with_status(app.get(path).await, 200).await
}

/// The ids of the match entries, in bundle order.
fn ids(bundle: &Value) -> Vec<String> {
    assert_eq!(bundle["resourceType"], "Bundle", "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn strings(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Alice: heart rate 60, 70, 80, 90 on March 1–4, SpO2 97 and 95 on March 1 and 3,
/// temperature 37.2 on March 2, glucose on March 5. Bob: heart rate 100 and 110 on March 1–2.
struct Fixture {
    hr: Vec<String>,
    spo2: Vec<String>,
    temp: String,
    glucose: String,
    bob_hr: Vec<String>,
}

async fn fixture(app: &TestApp) -> Fixture {
    let mut hr = Vec::new();
    for (i, value) in [60.0, 70.0, 80.0, 90.0].into_iter().enumerate() {
        hr.push(
            create(
                app,
                observation("alice", HR, value, "/min", &day(i as u32 + 1)),
            )
            .await,
        );
    }
    let spo2 = vec![
        create(app, observation("alice", SPO2, 97.0, "%", &day(1))).await,
        create(app, observation("alice", SPO2, 95.0, "%", &day(3))).await,
    ];
    let temp = create(app, observation("alice", TEMP, 37.2, "Cel", &day(2))).await;
    let glucose = create(app, observation("alice", GLUCOSE, 95.0, "mg/dL", &day(5))).await;
    let bob_hr = vec![
        create(app, observation("bob", HR, 100.0, "/min", &day(1))).await,
        create(app, observation("bob", HR, 110.0, "/min", &day(2))).await,
    ];
    Fixture {
        hr,
        spo2,
        temp,
        glucose,
        bob_hr,
    }
}

// ---------------------------------------------------------------------------------------
// $lastn
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn lastn_returns_the_newest_observation_per_code_by_default() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&category=vital-signs",
    )
    .await;
    assert_eq!(
        sorted(ids(&bundle)),
        sorted(strings(&[&f.hr[3], &f.spo2[1], &f.temp]))
    );
    assert_eq!(bundle["total"], 3);
    let entry = &bundle["entry"][0];
    assert_eq!(entry["search"]["mode"], "match");
    assert_eq!(
        entry["fullUrl"],
        format!(
            "{}/Observation/{}",
            app.base,
            entry["resource"]["id"].as_str().unwrap()
        )
    );
    let self_link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("/Observation/$lastn?"), "{self_link}");
    assert!(self_link.contains("category=vital-signs"), "{self_link}");

    // A code narrows to one group; subject works as well as patient.
    let bundle = get_ok(
        &app,
        "Observation/$lastn?subject=Patient/bob&code=http://loinc.org|8867-4",
    )
    .await;
    assert_eq!(ids(&bundle), vec![f.bob_hr[1].clone()]);

    // No match: an empty searchset, no error.
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/nobody&category=vital-signs",
    )
    .await;
    assert!(ids(&bundle).is_empty());
    assert_eq!(bundle["total"], 0);
}

#[tokio::test]
async fn lastn_groups_per_patient() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice,Patient/bob&code=http://loinc.org|8867-4",
    )
    .await;
    assert_eq!(
        sorted(ids(&bundle)),
        sorted(strings(&[&f.hr[3], &f.bob_hr[1]])),
        "the newest heart rate of each patient"
    );
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=alice,bob&code=8867-4&max=2",
    )
    .await;
    assert_eq!(
        sorted(ids(&bundle)),
        sorted(strings(&[&f.hr[3], &f.hr[2], &f.bob_hr[0], &f.bob_hr[1]]))
    );
}

#[tokio::test]
async fn lastn_max_returns_the_newest_first_and_keeps_ties() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&category=vital-signs&max=3",
    )
    .await;
    let found = ids(&bundle);
    assert_eq!(found.len(), 6, "3 heart rates, 2 SpO2, 1 temperature");
    let heart_rates: Vec<String> = found
        .iter()
        .filter(|id| f.hr.contains(id))
        .cloned()
        .collect();
    assert_eq!(
        heart_rates,
        vec![f.hr[3].clone(), f.hr[2].clone(), f.hr[1].clone()],
        "newest first"
    );
    assert_eq!(
        sorted(found.clone()),
        sorted(strings(&[
            &f.hr[3], &f.hr[2], &f.hr[1], &f.spo2[0], &f.spo2[1], &f.temp
        ]))
    );

    // A second heart rate at the same time as the 3rd newest: both are returned.
    let tie = create(&app, observation("alice", HR, 75.0, "/min", &day(2))).await;
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&code=http://loinc.org|8867-4&max=3",
    )
    .await;
    let found = ids(&bundle);
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(&found[..2], &[f.hr[3].clone(), f.hr[2].clone()]);
    assert_eq!(
        sorted(found[2..].to_vec()),
        sorted(vec![f.hr[1].clone(), tie])
    );
}

#[tokio::test]
async fn lastn_filters_by_category_date_and_other_parameters() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&category=laboratory&max=5",
    )
    .await;
    assert_eq!(ids(&bundle), vec![f.glucose.clone()]);

    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&category=vital-signs&date=le2024-03-02",
    )
    .await;
    assert_eq!(
        sorted(ids(&bundle)),
        sorted(strings(&[&f.hr[1], &f.spo2[0], &f.temp]))
    );

    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&category=vital-signs&value-quantity=ne90&code=8867-4,2708-6",
    )
    .await;
    assert_eq!(
        sorted(ids(&bundle)),
        sorted(strings(&[&f.hr[2], &f.spo2[1]])),
        "heart rate 90 is filtered out, so 80 is the newest"
    );

    // _summary and _elements shape the entries.
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&code=8310-5&_elements=valueQuantity",
    )
    .await;
    let resource = &bundle["entry"][0]["resource"];
    assert_eq!(resource["valueQuantity"]["value"], 37.2);
    assert!(resource.get("subject").is_none(), "{resource}");
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/alice&category=vital-signs&_summary=count",
    )
    .await;
    assert_eq!(bundle["total"], 3);
    assert!(bundle.get("entry").is_none());
}

#[tokio::test]
async fn lastn_sees_only_current_versions() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    // The newest heart rate is moved back in time by an update…
    let mut moved = get_ok(&app, &format!("Observation/{}", f.hr[3])).await;
    moved["effectiveDateTime"] = json!("2024-02-28T10:00:00Z");
    json_with_status(
        app.put(&format!("Observation/{}", f.hr[3]), &moved).await,
        200,
    )
    .await;
    let query = "Observation/$lastn?patient=Patient/alice&code=8867-4";
    assert_eq!(ids(&get_ok(&app, query).await), vec![f.hr[2].clone()]);
    // …and the next newest is deleted.
    assert_eq!(
        app.delete(&format!("Observation/{}", f.hr[2]))
            .await
            .status(),
        204
    );
    assert_eq!(ids(&get_ok(&app, query).await), vec![f.hr[1].clone()]);
    // The updated Observation is returned in its current version.
    let bundle = get_ok(&app, &format!("{query}&max=10")).await;
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let last = entries.last().unwrap();
    assert_eq!(last["resource"]["id"], f.hr[3].as_str());
    assert_eq!(last["resource"]["meta"]["versionId"], "2");
}

#[tokio::test]
async fn lastn_groups_translations_and_text_codes() {
    let app = spawn_app().await;
    let mdc = json!({"system": "urn:iso:std:iso:11073:10101", "code": "147842", "display": "MDC_ECG_HEART_RATE"});
    // a: LOINC only (newest), b: MDC only, c: both, oldest. c makes LOINC and MDC one code.
    let a = create(&app, observation("p", HR, 70.0, "/min", &day(3))).await;
    let mut b = observation("p", HR, 71.0, "/min", &day(2));
    b["code"] = json!({"coding": [mdc.clone()]});
    let b = create(&app, b).await;
    let query = "Observation/$lastn?patient=Patient/p&category=vital-signs";
    assert_eq!(
        sorted(ids(&get_ok(&app, query).await)),
        sorted(vec![a.clone(), b.clone()]),
        "two codes, two groups"
    );
    let mut c = observation("p", HR, 72.0, "/min", &day(1));
    c["code"]["coding"]
        .as_array_mut()
        .unwrap()
        .push(mdc.clone());
    let c = create(&app, c).await;
    assert_eq!(
        ids(&get_ok(&app, query).await),
        vec![a.clone()],
        "translations are one code"
    );
    assert_eq!(
        ids(&get_ok(&app, &format!("{query}&max=3")).await),
        vec![a, b, c]
    );

    // Text-only codes group by their exact text.
    for (text, when) in [("Pain score", 1), ("Pain score", 2), ("pain score", 3)] {
        let mut pain = observation("q", HR, 3.0, "{score}", &day(when));
        pain["code"] = json!({"text": text});
        create(&app, pain).await;
    }
    let bundle = get_ok(
        &app,
        "Observation/$lastn?patient=Patient/q&category=vital-signs",
    )
    .await;
    let dates: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["effectiveDateTime"].as_str().unwrap())
        .collect();
    assert_eq!(
        sorted(dates.iter().map(|d| d.to_string()).collect()),
        vec![day(2), day(3)]
    );
}

#[tokio::test]
async fn lastn_by_post_with_a_form_or_parameters() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let form = app
        .request(Method::POST, "Observation/$lastn")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("patient=Patient%2Falice&code=http%3A%2F%2Floinc.org%7C8867-4&max=2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ids(&json_with_status(form, 200).await),
        vec![f.hr[3].clone(), f.hr[2].clone()]
    );
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/alice"}},
        {"name": "code", "valueCoding": {"system": LOINC, "code": "8867-4"}},
        {"name": "max", "valuePositiveInt": 2}
    ]});
    let bundle = json_with_status(app.post("Observation/$lastn", &parameters).await, 200).await;
    assert_eq!(ids(&bundle), vec![f.hr[3].clone(), f.hr[2].clone()]);
}

#[tokio::test]
async fn lastn_errors_name_the_parameter_to_fix() {
    let app = spawn_app().await;
    fixture(&app).await;
    let cases = [
        ("Observation/$lastn?category=vital-signs", "patient"),
        ("Observation/$lastn?patient=Patient/alice", "category"),
        (
            "Observation/$lastn?patient=Patient/alice&category=vital-signs&max=0",
            "max",
        ),
        (
            "Observation/$lastn?patient=Patient/alice&category=vital-signs&max=three",
            "max",
        ),
        (
            "Observation/$lastn?patient=Patient/alice&category=vital-signs&date=yesterday",
            "date",
        ),
        (
            "Observation/$lastn?patient=Patient/alice&category=vital-signs&_include=Observation:subject",
            "_include",
        ),
    ];
    for (query, needle) in cases {
        let body = json_with_status(app.get(query).await, 400).await;
        let text = outcome_text(&body);
        assert!(text.contains(needle), "{query}: {text}");
    }
    // Unknown parameters: reported in an outcome entry, or refused under strict handling.
    let query = "Observation/$lastn?patient=Patient/alice&category=vital-signs&colour=red";
    let bundle = get_ok(&app, query).await;
    assert_eq!(ids(&bundle).len(), 3);
    let outcome = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry");
    assert!(outcome["resource"].to_string().contains("colour"));
    let strict = app
        .request(Method::GET, query)
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert!(outcome_text(&json_with_status(strict, 400).await).contains("colour"));
    // A body that is not Parameters.
    let body = json_with_status(app.post("Observation/$lastn", &patient("X")).await, 400).await;
    assert!(outcome_text(&body).contains("Parameters"));
}

#[tokio::test]
async fn operation_routes_leave_the_other_observation_routes_alone() {
    let app = spawn_app().await;
    let id = create(&app, observation("alice", HR, 60.0, "/min", &day(1))).await;
    get_ok(&app, &format!("Observation/{id}")).await;
    let check = json_with_status(
        app.post(
            "Observation/$validate",
            &observation("alice", HR, 60.0, "/min", &day(1)),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(check["resourceType"], "OperationOutcome");
    let put = app
        .put(
            "Observation/$lastn",
            &observation("alice", HR, 1.0, "/min", &day(1)),
        )
        .await;
    assert_eq!(put.status(), 405);

    let statement = get_ok(&app, "metadata").await;
    let observation_type = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap()
        .clone();
    let operations: Vec<(String, String)> = observation_type["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["definition"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, definition) in [
        (
            "lastn",
            "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
        ),
        (
            "stats",
            "http://hl7.org/fhir/OperationDefinition/Observation-stats",
        ),
    ] {
        assert!(
            operations.contains(&(name.to_string(), definition.to_string())),
            "{operations:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// $stats
// ---------------------------------------------------------------------------------------

/// The `statistics` Observations of a $stats response.
fn statistics(response: &Value) -> Vec<Value> {
    assert_eq!(response["resourceType"], "Parameters", "{response}");
    response["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "statistics")
        .map(|p| p["resource"].clone())
        .collect()
}

fn sources(response: &Value) -> Vec<String> {
    response["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "source")
        .map(|p| p["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn components<'a>(observation: &'a Value, code: &str) -> Vec<&'a Value> {
    observation["component"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["code"]["coding"][0]["system"] == STATS && c["code"]["coding"][0]["code"] == code
        })
        .collect()
}

fn component<'a>(observation: &'a Value, code: &str) -> &'a Value {
    let found = components(observation, code);
    assert_eq!(found.len(), 1, "one {code} component in {observation}");
    found[0]
}

fn number(observation: &Value, code: &str) -> f64 {
    component(observation, code)["valueQuantity"]["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{code} has no valueQuantity: {observation}"))
}

fn count(observation: &Value, code: &str) -> i64 {
    component(observation, code)["valueInteger"]
        .as_i64()
        .unwrap_or_else(|| panic!("{code} has no valueInteger: {observation}"))
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-6,
        "{what}: {actual} is not {expected}"
    );
}

fn code_of(observation: &Value) -> String {
    observation["code"]["coding"][0]["code"]
        .as_str()
        .unwrap()
        .to_string()
}

const ALL_STATISTICS: &str = "average,maximum,minimum,count,total-count,median,std-dev,sum,variance,20-percent,80-percent,4-lower,4-upper,4-dev,5-1,5-2,5-3,5-4,skew,kurtosis,regression";

#[tokio::test]
async fn stats_computes_every_statistic() {
    let app = spawn_app().await;
    fixture(&app).await;
    let response = get_ok(
        &app,
        &format!(
            "Observation/$stats?subject=Patient/alice&code=8867-4&system=http://loinc.org\
             &period=2024-03-01/2024-03-04&statistic={ALL_STATISTICS}"
        ),
    )
    .await;
    let found = statistics(&response);
    assert_eq!(found.len(), 1, "one Observation per code");
    let hr = &found[0];
    assert_eq!(hr["resourceType"], "Observation");
    assert_eq!(hr["status"], "final");
    assert_eq!(hr["code"]["coding"][0]["system"], LOINC);
    assert_eq!(hr["code"]["coding"][0]["code"], "8867-4");
    assert_eq!(hr["code"]["coding"][0]["display"], "Heart rate");
    assert_eq!(hr["subject"]["reference"], "Patient/alice");
    assert_eq!(hr["effectivePeriod"]["start"], "2024-03-01T00:00:00.000Z");
    assert_eq!(hr["effectivePeriod"]["end"], "2024-03-04T23:59:59.999Z");

    // Heart rates 60, 70, 80, 90 (Bob's 100 and 110 are another subject).
    assert_eq!(count(hr, "count"), 4);
    assert_eq!(count(hr, "total-count"), 4);
    assert_close(number(hr, "average"), 75.0, "average");
    assert_close(number(hr, "maximum"), 90.0, "maximum");
    assert_close(number(hr, "minimum"), 60.0, "minimum");
    assert_close(number(hr, "median"), 75.0, "median");
    assert_close(number(hr, "sum"), 300.0, "sum");
    // Sample variance: (15² + 5² + 5² + 15²) / (4 − 1) = 500/3.
    assert_close(number(hr, "variance"), 500.0 / 3.0, "variance");
    assert_close(number(hr, "std-dev"), (500.0f64 / 3.0).sqrt(), "std-dev");
    // Percentiles at rank (n − 1)·p between the sorted values: 20% → rank 0.6 → 66, …
    assert_close(number(hr, "20-percent"), 66.0, "20-percent");
    assert_close(number(hr, "80-percent"), 84.0, "80-percent");
    assert_close(number(hr, "4-lower"), 67.5, "4-lower");
    assert_close(number(hr, "4-upper"), 82.5, "4-upper");
    assert_close(number(hr, "4-dev"), 7.5, "4-dev: (Q3 − Q1) / 2");
    assert_close(number(hr, "5-1"), 66.0, "5-1");
    assert_close(number(hr, "5-2"), 72.0, "5-2");
    assert_close(number(hr, "5-3"), 78.0, "5-3");
    assert_close(number(hr, "5-4"), 84.0, "5-4");
    assert_close(number(hr, "skew"), 0.0, "symmetric values have no skew");
    // Sample excess kurtosis: 4·5/(3·2·1) · Σd⁴/s⁴ − 3·3²/(2·1) = 20/6 · 3.69 − 13.5.
    assert_close(number(hr, "kurtosis"), -1.2, "kurtosis");

    // Units: the values' unit, squared for the variance, 1 for skew and kurtosis.
    let average = &component(hr, "average")["valueQuantity"];
    assert_eq!(average["system"], UCUM);
    assert_eq!(average["code"], "/min");
    assert_eq!(
        component(hr, "average")["code"]["coding"][0]["display"],
        "Average"
    );
    assert_eq!(
        component(hr, "variance")["valueQuantity"]["code"],
        "(1/min).(1/min)"
    );
    assert_eq!(component(hr, "kurtosis")["valueQuantity"]["code"], "1");

    // Regression: +10/min per day from 60 at March 1 10:00, i.e. 10/24 per hour and
    // 60 − 10·10/24 at the period start (March 1 00:00).
    let regression = components(hr, "regression");
    assert_eq!(regression.len(), 2, "gradient and intercept");
    let gradient = &regression[0]["valueRatio"];
    assert_close(
        gradient["numerator"]["value"].as_f64().unwrap(),
        10.0 / 24.0,
        "gradient",
    );
    assert_eq!(gradient["numerator"]["code"], "/min");
    assert_eq!(gradient["denominator"]["code"], "h");
    assert!(regression[0]["code"]["text"]
        .as_str()
        .unwrap()
        .contains("gradient"));
    assert_close(
        regression[1]["valueQuantity"]["value"].as_f64().unwrap(),
        60.0 - 100.0 / 24.0,
        "intercept",
    );
    assert!(regression[1]["code"]["text"]
        .as_str()
        .unwrap()
        .contains("2024-03-01T00:00:00.000Z"));

    // Components follow the order of the statistic parameter.
    let order: Vec<&str> = hr["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(order[..3], ["average", "maximum", "minimum"]);
}

#[tokio::test]
async fn stats_for_several_codes_and_undefined_statistics() {
    let app = spawn_app().await;
    fixture(&app).await;
    let response = get_ok(
        &app,
        "Observation/$stats?patient=alice&coding=http://loinc.org|2708-6\
         &coding=http://loinc.org|8310-5&code=http://loinc.org|2339-0&code=http://loinc.org|9279-1\
         &statistic=average,std-dev,skew,count,max",
    )
    .await;
    let found = statistics(&response);
    let codes: Vec<String> = found.iter().map(code_of).collect();
    assert_eq!(codes, vec!["2708-6", "8310-5", "2339-0", "9279-1"]);
    let spo2 = &found[0];
    assert_eq!(spo2["subject"]["reference"], "Patient/alice");
    assert_close(number(spo2, "average"), 96.0, "SpO2 average");
    assert_close(number(spo2, "std-dev"), 2.0f64.sqrt(), "SpO2 std-dev");
    assert_close(number(spo2, "maximum"), 97.0, "max is maximum");
    // Without a period the Observation covers the values' own times.
    assert_eq!(spo2["effectivePeriod"]["start"], "2024-03-01T10:00:00.000Z");
    assert_eq!(spo2["effectivePeriod"]["end"], "2024-03-03T10:00:00.000Z");
    // Two values have no skew; one value has no standard deviation.
    let skew = component(spo2, "skew");
    assert!(skew.get("valueQuantity").is_none());
    assert_eq!(
        skew["dataAbsentReason"]["coding"][0]["code"],
        "not-applicable"
    );
    let temp = &found[1];
    assert_close(number(temp, "average"), 37.2, "temperature");
    assert_eq!(component(temp, "average")["valueQuantity"]["code"], "Cel");
    assert!(component(temp, "std-dev").get("dataAbsentReason").is_some());
    // A code without Observations: count 0, the rest absent.
    let respiratory = &found[3];
    assert_eq!(count(respiratory, "count"), 0);
    assert!(component(respiratory, "average")
        .get("dataAbsentReason")
        .is_some());
    assert!(respiratory.get("effectivePeriod").is_none());
}

#[tokio::test]
async fn stats_counts_current_valid_observations_of_the_subject_in_the_window() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    // Entered in error: excluded. Deleted: excluded. Updated: its current value counts.
    let mut wrong = observation("alice", HR, 500.0, "/min", &day(2));
    wrong["status"] = json!("entered-in-error");
    create(&app, wrong).await;
    let doomed = create(&app, observation("alice", HR, 400.0, "/min", &day(3))).await;
    assert_eq!(
        app.delete(&format!("Observation/{doomed}")).await.status(),
        204
    );
    let mut changed = get_ok(&app, &format!("Observation/{}", f.hr[0])).await;
    changed["valueQuantity"]["value"] = json!(50);
    json_with_status(
        app.put(&format!("Observation/{}", f.hr[0]), &changed).await,
        200,
    )
    .await;
    // No UCUM quantity: in total-count, not in the statistics.
    let mut no_ucum = observation("alice", HR, 65.0, "/min", &day(4));
    no_ucum["valueQuantity"] = json!({"value": 65, "unit": "beats per minute"});
    create(&app, no_ucum).await;
    let mut comparator = observation("alice", HR, 30.0, "/min", &day(4));
    comparator["valueQuantity"]["comparator"] = json!("<");
    create(&app, comparator).await;

    let query = "Observation/$stats?subject=Patient/alice&coding=http://loinc.org|8867-4&statistic=count,total-count,sum,minimum";
    let hr = &statistics(&get_ok(&app, query).await)[0];
    assert_eq!(count(hr, "count"), 4);
    assert_eq!(count(hr, "total-count"), 6);
    assert_close(number(hr, "sum"), 50.0 + 70.0 + 80.0 + 90.0, "sum");
    assert_close(number(hr, "minimum"), 50.0, "the updated value");
    let note = hr["note"][0]["text"].as_str().unwrap();
    assert!(note.contains("2 of the 6"), "{note}");

    // A period: only March 2–3.
    let hr = &statistics(&get_ok(&app, &format!("{query}&period=2024-03-02/2024-03-03")).await)[0];
    assert_eq!(count(hr, "count"), 2);
    assert_close(number(hr, "sum"), 150.0, "70 + 80");
    // An open-ended period.
    let hr = &statistics(&get_ok(&app, &format!("{query}&period=2024-03-04/")).await)[0];
    assert_eq!(count(hr, "count"), 1);

    // A duration: the last hours up to now.
    let now = chrono::Utc::now();
    let recent = |minutes: i64| {
        (now - chrono::Duration::minutes(minutes))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    create(&app, observation("carol", HR, 61.0, "/min", &recent(30))).await;
    create(&app, observation("carol", HR, 63.0, "/min", &recent(90))).await;
    create(&app, observation("carol", HR, 99.0, "/min", &recent(600))).await;
    let carol = "Observation/$stats?subject=Patient/carol&coding=http://loinc.org|8867-4&statistic=count,average";
    let hr = &statistics(&get_ok(&app, &format!("{carol}&duration=2")).await)[0];
    assert_eq!(count(hr, "count"), 2);
    assert_close(number(hr, "average"), 62.0, "the last 2 hours");
    let hr = &statistics(&get_ok(&app, &format!("{carol}&duration=0.75")).await)[0];
    assert_eq!(count(hr, "count"), 1);
}

#[tokio::test]
async fn stats_include_returns_the_source_observations() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let query =
        "Observation/$stats?subject=Patient/alice&coding=http://loinc.org|8867-4&statistic=count";
    let response = get_ok(&app, &format!("{query}&include=true")).await;
    assert_eq!(sources(&response), f.hr, "oldest first");
    let response = get_ok(&app, &format!("{query}&include=true&limit=2")).await;
    assert_eq!(
        sources(&response),
        vec![f.hr[0].clone(), f.hr[3].clone()],
        "spread over the time"
    );
    let response = get_ok(&app, &format!("{query}&limit=2")).await;
    assert!(sources(&response).is_empty(), "limit alone is ignored");
    let response = get_ok(&app, &format!("{query}&include=false")).await;
    assert!(sources(&response).is_empty());
}

#[tokio::test]
async fn stats_evaluate_panel_components_and_members() {
    let app = spawn_app().await;
    let panel = |systolic: f64, diastolic: f64, when: &str| {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
            "subject": {"reference": "Patient/alice"},
            "effectiveDateTime": when,
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]},
                 "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]},
                 "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}
            ]
        })
    };
    create(&app, panel(120.0, 80.0, &day(1))).await;
    create(&app, panel(130.0, 90.0, &day(2))).await;
    create(&app, panel(140.0, 70.0, &day(3))).await;

    // The panel code: statistics for each of its measurements.
    let response = get_ok(
        &app,
        "Observation/$stats?subject=Patient/alice&coding=http://loinc.org|85354-9&statistic=average,count",
    )
    .await;
    let found = statistics(&response);
    let codes: Vec<String> = found.iter().map(code_of).collect();
    assert_eq!(codes, vec!["8480-6", "8462-4"]);
    assert_close(number(&found[0], "average"), 130.0, "systolic");
    assert_close(number(&found[1], "average"), 80.0, "diastolic");
    assert_eq!(count(&found[1], "count"), 3);
    assert_eq!(
        component(&found[0], "average")["valueQuantity"]["code"],
        "mm[Hg]"
    );
    assert_eq!(
        found[0]["code"]["coding"][0]["display"],
        "Systolic blood pressure"
    );

    // A component code directly.
    let response = get_ok(
        &app,
        "Observation/$stats?subject=Patient/alice&code=8480-6&system=http://loinc.org&statistic=maximum",
    )
    .await;
    let found = statistics(&response);
    assert_eq!(found.len(), 1);
    assert_close(number(&found[0], "maximum"), 140.0, "systolic maximum");

    // A panel with hasMember Observations.
    let hr1 = create(&app, observation("alice", HR, 60.0, "/min", &day(1))).await;
    let hr2 = create(&app, observation("alice", HR, 80.0, "/min", &day(2))).await;
    let spo2 = create(&app, observation("alice", SPO2, 98.0, "%", &day(2))).await;
    create(
        &app,
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85353-1", "display": "Vital signs panel"}]},
            "subject": {"reference": "Patient/alice"},
            "effectiveDateTime": day(2),
            "hasMember": [
                {"reference": format!("Observation/{hr1}")},
                {"reference": format!("Observation/{hr2}")},
                {"reference": format!("Observation/{spo2}")}
            ]
        }),
    )
    .await;
    let response = get_ok(
        &app,
        "Observation/$stats?subject=Patient/alice&coding=http://loinc.org|85353-1&statistic=average&include=true",
    )
    .await;
    let found = statistics(&response);
    let codes: Vec<String> = found.iter().map(code_of).collect();
    assert_eq!(codes, vec!["8867-4", "2708-6"]);
    assert_close(number(&found[0], "average"), 70.0, "heart rate members");
    assert_close(number(&found[1], "average"), 98.0, "SpO2 member");
    assert_eq!(sorted(sources(&response)), sorted(vec![hr1, hr2, spo2]));
}

#[tokio::test]
async fn stats_report_each_unit_separately() {
    let app = spawn_app().await;
    create(&app, observation("alice", TEMP, 37.0, "Cel", &day(1))).await;
    create(&app, observation("alice", TEMP, 38.0, "Cel", &day(2))).await;
    create(&app, observation("alice", TEMP, 99.5, "[degF]", &day(3))).await;
    let response = get_ok(
        &app,
        "Observation/$stats?subject=Patient/alice&coding=http://loinc.org|8310-5&statistic=average,count,total-count,variance",
    )
    .await;
    let found = statistics(&response);
    assert_eq!(found.len(), 2, "one statistics Observation per unit");
    assert_close(number(&found[0], "average"), 37.5, "Celsius");
    assert_eq!(count(&found[0], "count"), 2);
    assert_eq!(count(&found[0], "total-count"), 3);
    assert_eq!(
        component(&found[0], "average")["valueQuantity"]["code"],
        "Cel"
    );
    // Celsius cannot be squared in UCUM: the variance carries a unit text only.
    let variance = &component(&found[0], "variance")["valueQuantity"];
    assert_close(variance["value"].as_f64().unwrap(), 0.5, "variance");
    assert!(variance.get("code").is_none());
    assert_close(number(&found[1], "average"), 99.5, "Fahrenheit");
    assert_eq!(
        component(&found[1], "average")["valueQuantity"]["code"],
        "[degF]"
    );
    let notes = found[0]["note"].to_string();
    assert!(notes.contains("2 units"), "{notes}");
}

#[tokio::test]
async fn stats_by_post_with_parameters() {
    let app = spawn_app().await;
    fixture(&app).await;
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueUri": "Patient/alice"},
        {"name": "coding", "valueCoding": {"system": LOINC, "code": "8867-4"}},
        {"name": "period", "valuePeriod": {"start": "2024-03-02", "end": "2024-03-04"}},
        {"name": "statistic", "valueCode": "average"},
        {"name": "statistic", "valueCode": "count"},
        {"name": "include", "valueBoolean": true},
        {"name": "limit", "valuePositiveInt": 10}
    ]});
    let response = json_with_status(app.post("Observation/$stats", &parameters).await, 200).await;
    let hr = &statistics(&response)[0];
    assert_eq!(count(hr, "count"), 3);
    assert_close(number(hr, "average"), 80.0, "70, 80, 90");
    assert_eq!(sources(&response).len(), 3);

    let form = app
        .request(Method::POST, "Observation/$stats")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("subject=Patient%2Falice&coding=http%3A%2F%2Floinc.org%7C8867-4&statistic=sum")
        .send()
        .await
        .unwrap();
    let hr = &statistics(&json_with_status(form, 200).await)[0];
    assert_close(number(hr, "sum"), 300.0, "sum");
}

#[tokio::test]
async fn stats_errors_name_the_parameter_to_fix() {
    let app = spawn_app().await;
    let base = "Observation/$stats?subject=Patient/alice&coding=http://loinc.org|8867-4";
    let cases = [
        (
            "Observation/$stats?coding=http://loinc.org|8867-4&statistic=count".to_string(),
            "subject",
        ),
        (
            "Observation/$stats?subject=Patient/alice&statistic=count".to_string(),
            "code",
        ),
        (base.to_string(), "statistic"),
        (format!("{base}&statistic=mean"), "\"mean\""),
        (format!("{base}&statistic=average,mode"), "total-count"),
        (
            "Observation/$stats?subject=Patient/alice&code=8867-4&statistic=count".to_string(),
            "system",
        ),
        (format!("{base}&statistic=count&coding=8867-4"), "coding"),
        (
            format!("{base}&statistic=count&duration=1&period=2024-03-01/2024-03-02"),
            "duration or period",
        ),
        (format!("{base}&statistic=count&duration=soon"), "duration"),
        (format!("{base}&statistic=count&duration=-1"), "duration"),
        (
            format!("{base}&statistic=count&period=2024-03-01"),
            "period",
        ),
        (
            format!("{base}&statistic=count&period=2024-03-05/2024-03-01"),
            "period",
        ),
        (
            format!("{base}&statistic=count&period=march/april"),
            "period",
        ),
        (format!("{base}&statistic=count&include=yes"), "include"),
        (
            format!("{base}&statistic=count&include=true&limit=0"),
            "limit",
        ),
        (format!("{base}&statistic=count&colour=red"), "colour"),
        (
            format!("{base}&statistic=count&patient=Patient/bob"),
            "one subject",
        ),
    ];
    for (query, needle) in cases {
        let body = json_with_status(app.get(&query).await, 400).await;
        let text = outcome_text(&body);
        assert!(text.contains(needle), "{query}: {text}");
    }
    let body = json_with_status(
        app.post(
            "Observation/$stats",
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "subject", "valueUri": "Patient/alice"},
                {"name": "coding", "valueCoding": {"code": "8867-4"}},
                {"name": "statistic", "valueCode": "count"}
            ]}),
        )
        .await,
        400,
    )
    .await;
    assert!(outcome_text(&body).contains("coding"));
    let body = json_with_status(
        app.request(Method::POST, "Observation/$stats")
            .header("content-type", "application/fhir+json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(outcome_text(&body).contains("JSON"));
}
