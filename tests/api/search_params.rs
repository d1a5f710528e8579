//! Search parameter types and modifiers beyond the basics: composite parameters, token
//! `:of-type`/`:in`/`:not-in`/`:text`, uri `:above`/`:below`, string `:text`, reference
//! `:missing`, the meta parameters, and the prefixes of numbers, quantities and dates.
//! Every expected result set is worked out by hand from the fixtures next to it.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::helpers::*;

/// A server with labelled fixtures: searches answer with the labels of what they found.
struct Fixtures {
    app: TestApp,
    labels: HashMap<String, String>,
}

impl Fixtures {
    async fn new() -> Fixtures {
        Fixtures {
            app: spawn_app().await,
            labels: HashMap::new(),
        }
    }

    /// Creates `resource` and remembers its id under `label`.
    async fn add(&mut self, label: &str, resource: Value) -> Value {
        let created = self.app.create(&resource).await;
        let id = created["id"].as_str().expect("id").to_string();
        self.labels.insert(id, label.to_string());
        created
    }

    fn query(resource_type: &str, params: &[(&str, &str)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in params {
            query.append_pair(name, value);
        }
        format!("{resource_type}?{}", query.finish())
    }

    /// The labels of the matches of `resource_type?params`, sorted. Fails on an outcome
    /// entry: no parameter may be ignored.
    async fn find(&self, resource_type: &str, params: &[(&str, &str)]) -> Vec<String> {
        let query = Self::query(resource_type, params);
        let bundle = json_with_status(self.app.get(&query).await, 200).await;
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        assert!(
            entries.iter().all(|e| e["search"]["mode"] != "outcome"),
            "{query}: {bundle}"
        );
        let mut found: Vec<String> = entries
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| {
                let id = e["resource"]["id"].as_str().unwrap_or_default();
                self.labels
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("unlabelled {id}"))
            })
            .collect();
        found.sort();
        found
    }

    /// Asserts that `resource_type?name=value` finds exactly `expected`.
    async fn expect(&self, resource_type: &str, name: &str, value: &str, expected: &[&str]) {
        self.expect_all(resource_type, &[(name, value)], expected)
            .await;
    }

    async fn expect_all(&self, resource_type: &str, params: &[(&str, &str)], expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(
            self.find(resource_type, params).await,
            expected,
            "{}",
            Self::query(resource_type, params)
        );
    }

    /// Asserts a 400 whose OperationOutcome mentions `needle`, and returns its text.
    async fn refused(&self, resource_type: &str, name: &str, value: &str, needle: &str) -> String {
        let query = Self::query(resource_type, &[(name, value)]);
        let body = json_with_status(self.app.get(&query).await, 400).await;
        let text = outcome_text(&body);
        assert!(text.contains(needle), "{query}: {text}");
        text
    }
}

fn id(resource: &Value) -> &str {
    resource["id"].as_str().expect("id")
}

fn loinc(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": "http://loinc.org", "code": code, "display": display}]})
}

fn mmhg(value: f64) -> Value {
    json!({"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"})
}

fn site(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]})
}

/// A blood-pressure panel: the panel has no value, its components do.
fn blood_pressure(patient: &str, systolic: f64, diastolic: f64, arm: (&str, &str)) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": loinc("85354-9", "Blood pressure panel with all children optional"),
        "subject": {"reference": patient},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "component": [
            {"code": loinc("8480-6", "Systolic blood pressure"), "valueQuantity": mmhg(systolic)},
            {"code": loinc("8462-4", "Diastolic blood pressure"), "valueQuantity": mmhg(diastolic)},
            {"code": loinc("41904-4", "Blood pressure measurement site"),
             "valueCodeableConcept": site(arm.0, arm.1)}
        ]
    })
}

#[tokio::test]
async fn composite_parameters_match_components_together() {
    let mut f = Fixtures::new().await;
    let p1 = f.add("p1", patient("C1")).await;
    let p2 = f.add("p2", patient("C2")).await;
    let p1_ref = format!("Patient/{}", id(&p1));
    let p2_ref = format!("Patient/{}", id(&p2));
    // Systolic 150 on the right arm.
    let bp_high = f
        .add(
            "bp_high",
            blood_pressure(&p1_ref, 150.0, 90.0, ("368209003", "Right arm")),
        )
        .await;
    // Some component is coded 8480-6 and some component is above 100, but not the same
    // one: systolic 95, diastolic 105.
    f.add(
        "bp_crossed",
        blood_pressure(&p2_ref, 95.0, 105.0, ("368208006", "Left arm")),
    )
    .await;
    f.add("hr_normal", heart_rate(&p1_ref, 72)).await;
    let hr_fast = f.add("hr_fast", heart_rate(&p2_ref, 120)).await;
    f.add(
        "smoking",
        json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}],
                     "text": "Tobacco smoking status"},
            "valueCodeableConcept": site("449868002", "Smokes tobacco daily")
        }),
    )
    .await;
    f.add(
        "birth",
        json!({
            "resourceType": "Observation", "status": "final",
            "code": loinc("21112-8", "Birth date"),
            "valueDateTime": "2024-03-01"
        }),
    )
    .await;

    let ccvq = "component-code-value-quantity";
    f.expect(
        "Observation",
        ccvq,
        "http://loinc.org|8480-6$gt100",
        &["bp_high"],
    )
    .await;
    f.expect(
        "Observation",
        ccvq,
        "http://loinc.org|8462-4$gt100",
        &["bp_crossed"],
    )
    .await;
    f.expect("Observation", ccvq, "8480-6$lt100", &["bp_crossed"])
        .await;
    f.expect(
        "Observation",
        ccvq,
        "http://loinc.org|8480-6$gt100,http://loinc.org|8462-4$gt100",
        &["bp_crossed", "bp_high"],
    )
    .await;
    // Repeated parameters: both must hold, each on its own component.
    f.expect_all(
        "Observation",
        &[
            (ccvq, "http://loinc.org|8480-6$gt100"),
            (ccvq, "http://loinc.org|8462-4$lt100"),
        ],
        &["bp_high"],
    )
    .await;
    // The quantity part takes system and unit too.
    f.expect(
        "Observation",
        ccvq,
        "http://loinc.org|8480-6$150|http://unitsofmeasure.org|mm[Hg]",
        &["bp_high"],
    )
    .await;
    f.expect(
        "Observation",
        ccvq,
        "http://loinc.org|8480-6$150|http://unitsofmeasure.org|/min",
        &[],
    )
    .await;

    // code-value-quantity is the Observation's own code and value: a panel has none.
    let cvq = "code-value-quantity";
    f.expect(
        "Observation",
        cvq,
        "http://loinc.org|8867-4$gt100",
        &["hr_fast"],
    )
    .await;
    f.expect(
        "Observation",
        cvq,
        "http://loinc.org|8867-4$72",
        &["hr_normal"],
    )
    .await;
    f.expect("Observation", cvq, "http://loinc.org|8480-6$gt100", &[])
        .await;
    // combo-: the Observation's or a component's code with its value.
    let combo = "combo-code-value-quantity";
    f.expect(
        "Observation",
        combo,
        "http://loinc.org|8480-6$gt100",
        &["bp_high"],
    )
    .await;
    f.expect(
        "Observation",
        combo,
        "http://loinc.org|8867-4$gt100,http://loinc.org|8480-6$gt100",
        &["bp_high", "hr_fast"],
    )
    .await;

    // Concept values, on components and on the Observation.
    let cccv = "component-code-value-concept";
    f.expect(
        "Observation",
        cccv,
        "http://loinc.org|41904-4$http://snomed.info/sct|368209003",
        &["bp_high"],
    )
    .await;
    f.expect(
        "Observation",
        cccv,
        "http://loinc.org|41904-4$368208006",
        &["bp_crossed"],
    )
    .await;
    f.expect(
        "Observation",
        cccv,
        "http://loinc.org|8480-6$http://snomed.info/sct|368209003",
        &[],
    )
    .await;
    f.expect(
        "Observation",
        "code-value-concept",
        "http://loinc.org|72166-2$http://snomed.info/sct|449868002",
        &["smoking"],
    )
    .await;
    f.expect(
        "Observation",
        "code-value-concept",
        "http://loinc.org|72166-2$http://snomed.info/sct|8517006",
        &[],
    )
    .await;
    // Date values.
    let cvd = "code-value-date";
    f.expect(
        "Observation",
        cvd,
        "http://loinc.org|21112-8$ge2024-01-01",
        &["birth"],
    )
    .await;
    f.expect(
        "Observation",
        cvd,
        "http://loinc.org|21112-8$lt2024-01-01",
        &[],
    )
    .await;
    f.expect(
        "Observation",
        cvd,
        "http://loinc.org|8867-4$ge2024-01-01",
        &[],
    )
    .await;

    // :missing is the only modifier of composites.
    f.expect(
        "Observation",
        "code-value-quantity:missing",
        "false",
        &["hr_fast", "hr_normal"],
    )
    .await;
    f.expect(
        "Observation",
        "code-value-quantity:missing",
        "true",
        &["birth", "bp_crossed", "bp_high", "smoking"],
    )
    .await;

    // Composites inside reverse chaining.
    f.expect(
        "Patient",
        "_has:Observation:subject:component-code-value-quantity",
        "http://loinc.org|8480-6$gt100",
        &["p1"],
    )
    .await;

    // Updates and deletions rewrite the composite rows.
    let mut slower = hr_fast.clone();
    slower["valueQuantity"]["value"] = json!(80);
    json_with_status(
        f.app
            .put(&format!("Observation/{}", id(&hr_fast)), &slower)
            .await,
        200,
    )
    .await;
    f.expect("Observation", cvq, "http://loinc.org|8867-4$gt100", &[])
        .await;
    f.expect(
        "Observation",
        cvq,
        "http://loinc.org|8867-4$80",
        &["hr_fast"],
    )
    .await;
    f.app.delete(&format!("Observation/{}", id(&bp_high))).await;
    f.expect("Observation", ccvq, "http://loinc.org|8480-6$gt100", &[])
        .await;

    // Malformed values say what a value looks like.
    f.refused(
        "Observation",
        ccvq,
        "http://loinc.org|8480-6",
        "2 parts separated by $",
    )
    .await;
    f.refused("Observation", ccvq, "8480-6$gt100$x", "2 parts")
        .await;
    f.refused("Observation", ccvq, "8480-6$", "part 2").await;
    f.refused("Observation", ccvq, "8480-6$high", "not a number")
        .await;
    f.refused(
        "Observation",
        "component-code-value-quantity:not",
        "8480-6$1",
        "only :missing",
    )
    .await;
}

#[tokio::test]
async fn token_of_type_in_not_in_and_text() {
    let mut f = Fixtures::new().await;
    let typed = |code: &str, system: &str| {
        let mut p = patient("12345");
        p["identifier"] = json!([{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]},
            "system": system, "value": "12345"
        }]);
        p
    };
    f.add("p_mr", typed("MR", "http://hospital.example/mrn"))
        .await;
    f.add("p_dl", typed("DL", "http://dmv.example/licence"))
        .await;
    let mut plain = patient("12345");
    plain["identifier"] = json!([{"system": "http://clinic.example/id", "value": "12345"}]);
    f.add("p_plain", plain).await;

    f.expect(
        "Patient",
        "identifier",
        "12345",
        &["p_dl", "p_mr", "p_plain"],
    )
    .await;
    let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
    f.expect(
        "Patient",
        "identifier:of-type",
        &format!("{v2}|MR|12345"),
        &["p_mr"],
    )
    .await;
    f.expect(
        "Patient",
        "identifier:of-type",
        &format!("{v2}|DL|12345"),
        &["p_dl"],
    )
    .await;
    f.expect(
        "Patient",
        "identifier:of-type",
        &format!("{v2}|MR|99999"),
        &[],
    )
    .await;
    f.refused("Patient", "identifier:of-type", "MR|12345", "all three")
        .await;

    // Observations: three vital signs (one coded in French), two of them without a
    // category, and a social-history one.
    f.add("o_hr", heart_rate("Patient/x", 72)).await;
    let mut bp = blood_pressure("Patient/x", 120.0, 80.0, ("368209003", "Right arm"));
    bp["status"] = json!("preliminary");
    f.add("o_bp", bp).await;
    f.add(
        "o_smoke",
        json!({
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}], "text": "Tobacco smoking status"}
        }),
    )
    .await;
    f.add(
        "o_temp",
        json!({
            "resourceType": "Observation", "status": "amended",
            "code": loinc("8310-5", "Température  corporelle"),
            "valueQuantity": {"value": 37.2, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}
        }),
    )
    .await;

    // :in / :not-in with value sets the server can expand.
    let vitals = "http://hl7.org/fhir/ValueSet/observation-vitalsignresult";
    f.expect(
        "Observation",
        "code:in",
        vitals,
        &["o_bp", "o_hr", "o_temp"],
    )
    .await;
    f.expect("Observation", "code:not-in", vitals, &["o_smoke"])
        .await;
    f.expect(
        "Observation",
        "category:in",
        "http://hl7.org/fhir/ValueSet/observation-category",
        &["o_hr", "o_smoke"],
    )
    .await;
    // `status` is a code: indexed with the implicit system of its value set.
    f.expect(
        "Observation",
        "status:in",
        "http://hl7.org/fhir/ValueSet/observation-status",
        &["o_bp", "o_hr", "o_smoke", "o_temp"],
    )
    .await;
    f.expect(
        "Observation",
        "status:not-in",
        "http://hl7.org/fhir/ValueSet/observation-status",
        &[],
    )
    .await;
    // Value sets over LOINC (no enumeration without a terminology server) and unknown
    // ones are refused, never answered with an empty result.
    f.refused(
        "Observation",
        "code:in",
        "http://hl7.org/fhir/ValueSet/observation-codes",
        "cannot be expanded",
    )
    .await;
    f.refused(
        "Observation",
        "code:in",
        "http://example.org/fhir/ValueSet/unknown",
        "cannot be expanded",
    )
    .await;

    // :text: words starting words of Coding.display or CodeableConcept.text, ignoring
    // case and accents.
    f.expect("Observation", "code:text", "heart", &["o_hr"])
        .await;
    f.expect("Observation", "code:text", "RATE", &["o_hr"])
        .await;
    f.expect("Observation", "code:text", "blood press", &["o_bp"])
        .await;
    f.expect("Observation", "code:text", "panel blood", &["o_bp"])
        .await;
    f.expect("Observation", "code:text", "smoking", &["o_smoke"])
        .await;
    f.expect("Observation", "code:text", "temperature corp", &["o_temp"])
        .await;
    f.expect("Observation", "code:text", "art", &[]).await;
    f.expect(
        "Observation",
        "code:text",
        "heart,tobacco",
        &["o_hr", "o_smoke"],
    )
    .await;

    f.expect(
        "Observation",
        "code:not",
        "http://loinc.org|8867-4",
        &["o_bp", "o_smoke", "o_temp"],
    )
    .await;
    // Subsumption needs a terminology server: refused, with what to do instead.
    f.refused(
        "Observation",
        "code:below",
        "http://loinc.org|8867-4",
        "terminology server",
    )
    .await;
    f.refused(
        "Observation",
        "code:above",
        "http://loinc.org|8867-4",
        ":in",
    )
    .await;
}

#[tokio::test]
async fn uri_above_below_and_meta_parameters() {
    let mut f = Fixtures::new().await;
    let value_set = |url: &str| json!({"resourceType": "ValueSet", "url": url, "status": "active"});
    f.add("vs_123", value_set("http://acme.org/fhir/ValueSet/123"))
        .await;
    f.add("vs_456", value_set("http://acme.org/fhir/ValueSet/456"))
        .await;
    f.add("vs_root", value_set("http://acme.org/fhir")).await;
    f.add("vs_other", value_set("http://other.org/fhir/ValueSet/123"))
        .await;
    f.add("vs_oid", value_set("urn:oid:1.2.3.4.5")).await;

    f.expect(
        "ValueSet",
        "url",
        "http://acme.org/fhir/ValueSet/123",
        &["vs_123"],
    )
    .await;
    f.expect(
        "ValueSet",
        "url:below",
        "http://acme.org/fhir/",
        &["vs_123", "vs_456"],
    )
    .await;
    f.expect(
        "ValueSet",
        "url:above",
        "http://acme.org/fhir/ValueSet/123/_history/5",
        &["vs_123", "vs_root"],
    )
    .await;
    f.expect("ValueSet", "url", "urn:oid:1.2.3.4.5", &["vs_oid"])
        .await;
    f.refused("ValueSet", "url:below", "urn:oid:1.2", "not to URNs")
        .await;

    // _tag, _security (tokens), _profile and _source (uris) from Resource.meta.
    let mut tagged = patient("M1");
    tagged["meta"] = json!({
        "profile": ["http://example.org/fhir/StructureDefinition/device-patient"],
        "tag": [{"system": "http://example.org/tags", "code": "device-data", "display": "From a device"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "source": "http://gateway.example/agent-7#x1"
    });
    f.add("m1", tagged).await;
    let mut manual = patient("M2");
    manual["meta"] = json!({
        "profile": ["http://example.org/fhir/StructureDefinition/other-patient"],
        "tag": [{"system": "http://example.org/tags", "code": "manual-entry"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}],
        "source": "http://ehr.example/import"
    });
    f.add("m2", manual).await;
    f.add("m3", patient("M3")).await;

    f.expect(
        "Patient",
        "_tag",
        "http://example.org/tags|device-data",
        &["m1"],
    )
    .await;
    f.expect("Patient", "_tag", "manual-entry", &["m2"]).await;
    f.expect(
        "Patient",
        "_tag:not",
        "http://example.org/tags|device-data",
        &["m2", "m3"],
    )
    .await;
    f.expect("Patient", "_tag:text", "device", &["m1"]).await;
    f.expect("Patient", "_tag:missing", "true", &["m3"]).await;
    f.expect(
        "Patient",
        "_security",
        "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R",
        &["m1"],
    )
    .await;
    f.expect(
        "Patient",
        "_profile",
        "http://example.org/fhir/StructureDefinition/device-patient",
        &["m1"],
    )
    .await;
    f.expect(
        "Patient",
        "_profile:below",
        "http://example.org/fhir/",
        &["m1", "m2"],
    )
    .await;
    f.expect(
        "Patient",
        "_source",
        "http://gateway.example/agent-7#x1",
        &["m1"],
    )
    .await;
    f.expect(
        "Patient",
        "_source:below",
        "http://gateway.example/",
        &["m1"],
    )
    .await;
    f.expect("Patient", "_source:missing", "true", &["m3"])
        .await;
}

#[tokio::test]
async fn string_text_and_reference_missing() {
    let mut f = Fixtures::new().await;
    f.add("peter", patient("S1")).await; // Peter James Chalmers
    let mut anna = patient("S2");
    anna["name"] = json!([{"family": "Østergård", "given": ["Anna", "Maria"]}]);
    f.add("anna", anna).await;

    // Words start words of the parameter's values, in any order, any case, no accents.
    f.expect("Patient", "name:text", "peter chalm", &["peter"])
        .await;
    f.expect("Patient", "name:text", "Chalmers PETER", &["peter"])
        .await;
    f.expect("Patient", "name:text", "ostergard maria", &["anna"])
        .await;
    f.expect("Patient", "name:text", "ames", &[]).await;
    f.expect("Patient", "name:text", "peter anna", &[]).await;
    f.expect("Patient", "name:text", "anna,james", &["anna", "peter"])
        .await;
    f.expect("Patient", "name:contains", "ames", &["peter"])
        .await;

    // Reference :missing: a reference given only by identifier is present.
    f.add("o_ref", heart_rate("Patient/x", 70)).await;
    let mut by_identifier = heart_rate("Patient/x", 71);
    by_identifier["subject"] =
        json!({"identifier": {"system": "http://hospital.example/mrn", "value": "S9"}});
    f.add("o_ident", by_identifier).await;
    let mut no_subject = heart_rate("Patient/x", 72);
    no_subject.as_object_mut().unwrap().remove("subject");
    f.add("o_none", no_subject).await;

    f.expect("Observation", "subject:missing", "true", &["o_none"])
        .await;
    f.expect(
        "Observation",
        "subject:missing",
        "false",
        &["o_ident", "o_ref"],
    )
    .await;
    f.expect(
        "Observation",
        "subject:identifier",
        "http://hospital.example/mrn|S9",
        &["o_ident"],
    )
    .await;
    f.refused("Observation", "subject:missing", "maybe", "true or false")
        .await;
}

#[tokio::test]
async fn number_prefixes_follow_the_specification() {
    let mut f = Fixtures::new().await;
    for (label, probability) in [
        ("r75", "0.75"),
        ("r80", "0.8"),
        ("r84", "0.84"),
        ("r85", "0.85"),
        ("r90", "0.9"),
    ] {
        let body = format!(
            r#"{{"resourceType": "RiskAssessment", "status": "final",
                "subject": {{"reference": "Patient/x"}},
                "prediction": [{{"probabilityDecimal": {probability}}}]}}"#
        );
        f.add(label, serde_json::from_str(&body).unwrap()).await;
    }
    let p = "probability";
    // `0.8` stands for 0.75 ≤ x < 0.85; `0.80` for 0.795 ≤ x < 0.805; `8e-1` like 0.8.
    f.expect("RiskAssessment", p, "0.8", &["r75", "r80", "r84"])
        .await;
    f.expect("RiskAssessment", p, "0.80", &["r80"]).await;
    f.expect("RiskAssessment", p, "8e-1", &["r75", "r80", "r84"])
        .await;
    f.expect("RiskAssessment", p, "ne0.8", &["r85", "r90"])
        .await;
    // Comparisons use the exact value.
    f.expect("RiskAssessment", p, "gt0.8", &["r84", "r85", "r90"])
        .await;
    f.expect("RiskAssessment", p, "ge0.8", &["r80", "r84", "r85", "r90"])
        .await;
    f.expect("RiskAssessment", p, "lt0.8", &["r75"]).await;
    f.expect("RiskAssessment", p, "le0.8", &["r75", "r80"])
        .await;
    f.expect("RiskAssessment", p, "sa0.8", &["r84", "r85", "r90"])
        .await;
    f.expect("RiskAssessment", p, "eb0.8", &["r75"]).await;
    // ap: ±10% of the value: 0.72..0.88, and 0.81..0.99.
    f.expect("RiskAssessment", p, "ap0.8", &["r75", "r80", "r84", "r85"])
        .await;
    f.expect("RiskAssessment", p, "ap0.9", &["r84", "r85", "r90"])
        .await;
    f.expect_all(
        "RiskAssessment",
        &[(p, "ge0.8"), (p, "lt0.85")],
        &["r80", "r84"],
    )
    .await;
    f.refused("RiskAssessment", p, "inf", "not a number").await;
    f.refused("RiskAssessment", p, "gt", "not a number").await;
}

#[tokio::test]
async fn quantity_prefixes_on_values_and_ranges() {
    let mut f = Fixtures::new().await;
    // Single values (one with a comparator: "at most 100").
    for (label, value) in [
        ("q99.4", "99.4"),
        ("q99.5", "99.5"),
        ("q100", "100"),
        ("q100.4", "100.4"),
        ("q100.5", "100.5"),
        ("q111", "111"),
    ] {
        let mut hr = heart_rate("Patient/x", 0);
        hr["valueQuantity"]["value"] = serde_json::from_str(value).unwrap();
        f.add(label, hr).await;
    }
    let mut at_most = heart_rate("Patient/x", 100);
    at_most["valueQuantity"]["comparator"] = json!("<=");
    f.add("q<=100", at_most).await;

    let vq = "value-quantity";
    // 100 stands for 99.5 ≤ x < 100.5.
    f.expect("Observation", vq, "100", &["q100", "q100.4", "q99.5"])
        .await;
    f.expect(
        "Observation",
        vq,
        "ne100",
        &["q100.5", "q111", "q99.4", "q<=100"],
    )
    .await;
    f.expect("Observation", vq, "gt100", &["q100.4", "q100.5", "q111"])
        .await;
    f.expect(
        "Observation",
        vq,
        "ge100",
        &["q100", "q100.4", "q100.5", "q111", "q<=100"],
    )
    .await;
    f.expect("Observation", vq, "lt100", &["q99.4", "q99.5", "q<=100"])
        .await;
    f.expect(
        "Observation",
        vq,
        "le100",
        &["q100", "q99.4", "q99.5", "q<=100"],
    )
    .await;
    f.expect("Observation", vq, "lt50", &["q<=100"]).await;
    // sa / eb: the whole stored range after / before the value.
    f.expect("Observation", vq, "sa100", &["q100.4", "q100.5", "q111"])
        .await;
    f.expect("Observation", vq, "eb100", &["q99.4", "q99.5"])
        .await;
    // ap100: 90..110.
    f.expect(
        "Observation",
        vq,
        "ap100",
        &["q100", "q100.4", "q100.5", "q99.4", "q99.5", "q<=100"],
    )
    .await;
    f.expect(
        "Observation",
        vq,
        "100|http://unitsofmeasure.org|/min",
        &["q100", "q100.4", "q99.5"],
    )
    .await;
    f.expect("Observation", vq, "100||/min", &["q100", "q100.4", "q99.5"])
        .await;
    f.expect(
        "Observation",
        vq,
        "100|http://unitsofmeasure.org|mm[Hg]",
        &[],
    )
    .await;

    // Ranges: Condition.onset as Age or Range.
    let condition = |onset: (&str, Value)| {
        let mut c = json!({"resourceType": "Condition", "subject": {"reference": "Patient/x"}});
        c[onset.0] = onset.1;
        c
    };
    let years = |v: i64| json!({"value": v, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"});
    f.add("age35", condition(("onsetAge", years(35)))).await;
    f.add("age15", condition(("onsetAge", years(15)))).await;
    f.add(
        "range10-20",
        condition(("onsetRange", json!({"low": years(10), "high": years(20)}))),
    )
    .await;
    f.add(
        "range30-",
        condition(("onsetRange", json!({"low": years(30)}))),
    )
    .await;
    // Stored: 35, 15, 9.5..20.5, 29.5..∞.
    let oa = "onset-age";
    f.expect("Condition", oa, "15", &["age15"]).await;
    f.expect(
        "Condition",
        oa,
        "ne15",
        &["age35", "range10-20", "range30-"],
    )
    .await;
    f.expect(
        "Condition",
        oa,
        "gt18",
        &["age35", "range10-20", "range30-"],
    )
    .await;
    f.expect("Condition", oa, "sa18", &["age35", "range30-"])
        .await;
    f.expect("Condition", oa, "lt12", &["range10-20"]).await;
    f.expect("Condition", oa, "eb25", &["age15", "range10-20"])
        .await;
    f.expect("Condition", oa, "le10", &["range10-20"]).await;
    f.expect("Condition", oa, "ge35", &["age35", "range30-"])
        .await;
    // ap16: 14.4..17.6 overlaps 15 and 9.5..20.5.
    f.expect("Condition", oa, "ap16", &["age15", "range10-20"])
        .await;
    f.expect(
        "Condition",
        oa,
        "15|http://unitsofmeasure.org|a",
        &["age15"],
    )
    .await;
    f.expect("Condition", oa, "15|http://unitsofmeasure.org|mo", &[])
        .await;
}

#[tokio::test]
async fn date_prefixes_on_instants_and_periods() {
    let mut f = Fixtures::new().await;
    let observation = |effective: (&str, Value)| {
        let mut o = heart_rate("Patient/x", 70);
        o.as_object_mut().unwrap().remove("effectiveDateTime");
        o[effective.0] = effective.1;
        o
    };
    // The examples of R4 search ("date"), plus one far from them.
    f.add(
        "day-jan14",
        observation(("effectiveDateTime", json!("2013-01-14"))),
    )
    .await;
    f.add(
        "from-jan21",
        observation(("effectivePeriod", json!({"start": "2013-01-21"}))),
    )
    .await;
    f.add(
        "from-mar15",
        observation(("effectivePeriod", json!({"start": "2013-03-15"}))),
    )
    .await;
    f.add(
        "until-jan21",
        observation(("effectivePeriod", json!({"end": "2013-01-21"}))),
    )
    .await;
    f.add(
        "mar14-noon",
        observation(("effectiveDateTime", json!("2013-03-14T12:00:00Z"))),
    )
    .await;
    f.add(
        "day-2016",
        observation(("effectiveDateTime", json!("2016-06-15"))),
    )
    .await;

    let all = [
        "day-2016",
        "day-jan14",
        "from-jan21",
        "from-mar15",
        "mar14-noon",
        "until-jan21",
    ];
    let but =
        |excluded: &str| -> Vec<&str> { all.iter().copied().filter(|l| *l != excluded).collect() };
    f.expect("Observation", "date", "2013-01-14", &["day-jan14"])
        .await;
    f.expect("Observation", "date", "ne2013-01-14", &but("day-jan14"))
        .await;
    f.expect(
        "Observation",
        "date",
        "lt2013-01-14T10:00:00Z",
        &["day-jan14", "until-jan21"],
    )
    .await;
    f.expect(
        "Observation",
        "date",
        "gt2013-03-14",
        &["day-2016", "from-jan21", "from-mar15"],
    )
    .await;
    f.expect(
        "Observation",
        "date",
        "ge2013-03-14",
        &["day-2016", "from-jan21", "from-mar15", "mar14-noon"],
    )
    .await;
    f.expect(
        "Observation",
        "date",
        "lt2013-03-14",
        &["day-jan14", "from-jan21", "until-jan21"],
    )
    .await;
    f.expect(
        "Observation",
        "date",
        "le2013-03-14",
        &["day-jan14", "from-jan21", "mar14-noon", "until-jan21"],
    )
    .await;
    // sa: starts after the day; eb: ends before it.
    f.expect(
        "Observation",
        "date",
        "sa2013-03-14",
        &["day-2016", "from-mar15"],
    )
    .await;
    f.expect(
        "Observation",
        "date",
        "eb2013-03-14",
        &["day-jan14", "until-jan21"],
    )
    .await;
    // ap: widened by 10% of the time between now and the value (about 1.4 years for
    // 2013-03-14 and 1 year for 2016-06-01 while now is in the 2020s).
    f.expect("Observation", "date", "ap2013-03-14", &but("day-2016"))
        .await;
    f.expect(
        "Observation",
        "date",
        "ap2016-06-01",
        &["day-2016", "from-jan21", "from-mar15"],
    )
    .await;
    f.refused("Observation", "date", "xx2013", "not a date")
        .await;
}

#[tokio::test]
async fn unsupported_parameters_are_refused_with_the_reason() {
    let f = Fixtures::new().await;
    f.refused("Location", "near", "42.25|-83.69|10|km", "geographic")
        .await;
    f.refused("Patient", "_content", "cancer", "full-text")
        .await;
    f.refused("Patient", "_text", "cancer", "full-text").await;
    f.refused("Patient", "name:above", "x", "supported: :missing, :exact")
        .await;
    f.refused("Observation", "subject:below", "Patient/1", "not supported")
        .await;
    f.refused(
        "Observation",
        "value-quantity:text",
        "5",
        ":text is not supported",
    )
    .await;
}
