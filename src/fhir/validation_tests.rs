//! Tests of `crate::fhir::validation` (kept in their own file because of their size).

use super::*;
use serde_json::json;

/// Validates and returns `(expression, diagnostics)` of every issue.
fn issues(resource: Value) -> Vec<(String, String)> {
    validate(&resource)
        .into_iter()
        .map(|i| (i.expression.join(","), i.diagnostics))
        .collect()
}

/// Asserts that validation reports exactly one issue, at `expression`, whose message
/// contains `needle`; returns the issue.
#[track_caller]
fn one_issue(resource: Value, expression: &str, needle: &str) -> Issue {
    let found = validate(&resource);
    assert_eq!(found.len(), 1, "expected one issue, got {found:#?}");
    let issue = found.into_iter().next().unwrap();
    assert_eq!(issue.expression, vec![expression.to_string()], "{issue:#?}");
    assert!(
        issue.diagnostics.contains(needle),
        "message {:?} lacks {needle:?}",
        issue.diagnostics
    );
    issue
}

#[track_caller]
fn valid(resource: Value) {
    let found = validate(&resource);
    assert!(found.is_empty(), "expected no issues, got {found:#?}");
}

// ---------------------------------------------------------------------------------------
// Valid resources
// ---------------------------------------------------------------------------------------

fn vital_signs_observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "bp-1",
        "meta": {
            "versionId": "1",
            "lastUpdated": "2024-05-01T10:00:00.123+02:00",
            "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]
        },
        "status": "final",
        "category": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
                "display": "Vital Signs"
            }]
        }],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "Blood pressure"},
        "subject": {"reference": "Patient/example"},
        "effectiveDateTime": "2024-05-01T09:30:00Z",
        "device": {"reference": "Device/monitor-7", "display": "Bedside monitor"},
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": 120.0,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]"
                }
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {
                    "value": 80,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]"
                },
                "interpretation": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "N"
                    }]
                }]
            }
        ]
    })
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "example",
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter Chalmers</div>"
        },
        "extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "valueAddress": {"city": "Brisbane", "country": "AU"}
        }],
        "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "active": true,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                "valueDateTime": "1974-12-25T14:35:45-05:00"
            }]
        },
        "deceasedBoolean": false,
        "multipleBirthInteger": 2,
        "contact": [{
            "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
            "name": {"family": "du Marché", "_family": {"extension": [{"url": "http://example.org/prefix", "valueString": "VV"}]}}
        }],
        "managingOrganization": {"reference": "Organization/1"}
    })
}

#[test]
fn valid_vital_signs_observation() {
    valid(vital_signs_observation());
}

#[test]
fn valid_patient() {
    valid(patient());
}

#[test]
fn valid_bundle_with_entries() {
    valid(json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"}
            },
            {
                "resource": vital_signs_observation(),
                "request": {"method": "PUT", "url": "Observation/bp-1"}
            }
        ]
    }));
}

#[test]
fn valid_questionnaire_with_nested_items() {
    valid(json!({
        "resourceType": "Questionnaire",
        "status": "active",
        "item": [{
            "linkId": "1",
            "type": "group",
            "item": [{
                "linkId": "1.1",
                "type": "group",
                "item": [{
                    "linkId": "1.1.1",
                    "text": "Weight",
                    "type": "quantity",
                    "enableWhen": [{"question": "1.2", "operator": "exists", "answerBoolean": true}]
                }]
            }, {
                "linkId": "1.2",
                "type": "choice",
                "answerOption": [{"valueCoding": {"code": "a"}}, {"valueString": "b"}]
            }]
        }]
    }));
}

#[test]
fn valid_parameters_with_resource() {
    valid(json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "count", "valueInteger": 3},
            {"name": "patient", "resource": {"resourceType": "Patient", "active": false}},
            {"name": "group", "part": [{"name": "flag", "valueBoolean": true}]}
        ]
    }));
}

#[test]
fn valid_primitive_extension_arrays() {
    valid(json!({
        "resourceType": "Patient",
        "name": [{
            "given": ["Peter", null, "James"],
            "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "hidden"}]}, {"id": "g3"}]
        }],
        "_active": {"extension": [{"url": "http://example.org/absent", "valueCode": "unknown"}]}
    }));
}

// ---------------------------------------------------------------------------------------
// Resource type
// ---------------------------------------------------------------------------------------

#[test]
fn not_an_object() {
    let found = validate(&json!(["Patient"]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, IssueCode::Structure);
    assert!(found[0].expression.is_empty());
}

#[test]
fn missing_resource_type() {
    let found = validate(&json!({"id": "1"}));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, IssueCode::Required);
    assert!(found[0].diagnostics.contains("resourceType"));
}

#[test]
fn unknown_resource_type_is_named() {
    let found = validate(&json!({"resourceType": "Patientt"}));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, IssueCode::NotSupported);
    assert!(found[0].diagnostics.contains("'Patientt'"));
    let found = validate(&json!({"resourceType": "SubscriptionStatus"}));
    assert_eq!(found[0].code, IssueCode::NotSupported);
}

#[test]
fn abstract_resource_type() {
    let found = validate(&json!({"resourceType": "DomainResource"}));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, IssueCode::Invalid);
    assert!(found[0].diagnostics.contains("abstract"));
}

#[test]
fn validate_as_checks_the_type() {
    let found = validate_as(&json!({"resourceType": "Patient"}), "Observation");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, IssueCode::Invalid);
    assert!(validate_as(&json!({"resourceType": "Patient"}), "Patient").is_empty());
}

#[test]
fn minimal_resource_is_valid() {
    valid(json!({"resourceType": "Patient"}));
    valid(json!({"resourceType": "Binary", "contentType": "text/plain"}));
}

// ---------------------------------------------------------------------------------------
// Unknown elements
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_element() {
    one_issue(
        json!({"resourceType": "Patient", "foo": 1}),
        "Patient.foo",
        "Unknown element 'foo'",
    );
}

#[test]
fn unknown_element_wrong_case_is_suggested() {
    one_issue(
        json!({"resourceType": "Patient", "birthdate": "2000-01-01"}),
        "Patient.birthdate",
        "did you mean 'birthDate'?",
    );
}

#[test]
fn unknown_primitive_extension_wrong_case_is_suggested() {
    one_issue(
        json!({"resourceType": "Patient", "_birthdate": {"id": "1"}}),
        "Patient._birthdate",
        "did you mean '_birthDate'?",
    );
}

#[test]
fn choice_without_suffix_is_explained() {
    let mut obs = vital_signs_observation();
    obs["value"] = json!(5);
    let issue = one_issue(obs, "Observation.value", "use one of valueQuantity");
    assert_eq!(issue.code, IssueCode::Structure);
}

#[test]
fn choice_with_unknown_suffix_is_explained() {
    let mut obs = vital_signs_observation();
    obs["valueDecimal"] = json!(5);
    one_issue(
        obs,
        "Observation.valueDecimal",
        "type 'Decimal' is not allowed for value[x]",
    );
}

#[test]
fn choice_with_wrong_case_suffix() {
    let mut obs = vital_signs_observation();
    obs["valuequantity"] = json!({"value": 1});
    one_issue(
        obs,
        "Observation.valuequantity",
        "did you mean 'valueQuantity'?",
    );
}

#[test]
fn unknown_element_in_datatype_and_backbone() {
    let mut obs = vital_signs_observation();
    obs["component"][1]["valueQuantity"]["units"] = json!("mmHg");
    obs["component"][0]["foo"] = json!(true);
    let found = issues(obs);
    assert_eq!(
        found.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        vec![
            "Observation.component[0].foo",
            "Observation.component[1].valueQuantity.units"
        ]
    );
    assert!(found[1].1.contains("Quantity"));
}

#[test]
fn nested_resource_type_is_unknown() {
    one_issue(
        json!({"resourceType": "Patient", "maritalStatus": {"resourceType": "CodeableConcept", "text": "x"}}),
        "Patient.maritalStatus.resourceType",
        "only allowed at the root",
    );
}

// ---------------------------------------------------------------------------------------
// Primitive extensions (_x)
// ---------------------------------------------------------------------------------------

#[test]
fn primitive_extension_without_value_is_valid() {
    valid(json!({
        "resourceType": "Patient",
        "_birthDate": {"extension": [{"url": "http://example.org/dar", "valueCode": "masked"}]}
    }));
}

#[test]
fn primitive_extension_may_not_hold_value() {
    one_issue(
        json!({"resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": {"value": "x"}}),
        "Patient.birthDate.value",
        "may only contain 'id' and 'extension'",
    );
}

#[test]
fn primitive_extension_must_be_object() {
    one_issue(
        json!({"resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": "x"}),
        "Patient.birthDate",
        "must be an object",
    );
}

#[test]
fn primitive_extension_is_validated() {
    one_issue(
        json!({"resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": {"extension": [{"valueString": "x"}]}}),
        "Patient.birthDate.extension[0].url",
        "Missing required element 'url'",
    );
}

#[test]
fn underscore_on_complex_element() {
    one_issue(
        json!({"resourceType": "Patient", "_maritalStatus": {"id": "x"}}),
        "Patient._maritalStatus",
        "only exist for primitive elements",
    );
}

#[test]
fn underscore_on_unknown_element() {
    one_issue(
        json!({"resourceType": "Patient", "_foo": {"id": "x"}}),
        "Patient._foo",
        "Unknown element '_foo'",
    );
}

#[test]
fn primitive_extension_array_length_mismatch() {
    one_issue(
        json!({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [{"id": "1"}]}]}),
        "Patient.name[0].given",
        "same length",
    );
}

#[test]
fn primitive_array_with_null_on_both_sides() {
    one_issue(
        json!({"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [null, null]}]}),
        "Patient.name[0].given[1]",
        "needs a value or an extension",
    );
}

#[test]
fn null_in_primitive_array_without_extension() {
    one_issue(
        json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}),
        "Patient.name[0].given[1]",
        "null is not allowed",
    );
}

#[test]
fn primitive_extension_array_for_single_element() {
    one_issue(
        json!({"resourceType": "Patient", "gender": "male", "_gender": [{"id": "1"}]}),
        "Patient.gender",
        "must be an object, not an array",
    );
}

// ---------------------------------------------------------------------------------------
// JSON shapes
// ---------------------------------------------------------------------------------------

#[test]
fn single_value_for_repeating_element() {
    one_issue(
        json!({"resourceType": "Patient", "name": {"family": "x"}}),
        "Patient.name",
        "must be an array",
    );
}

#[test]
fn array_for_single_element() {
    one_issue(
        json!({"resourceType": "Patient", "gender": ["male"]}),
        "Patient.gender",
        "must not be an array",
    );
}

#[test]
fn string_for_complex_element() {
    one_issue(
        json!({"resourceType": "Patient", "maritalStatus": "married"}),
        "Patient.maritalStatus",
        "must be a JSON object (CodeableConcept)",
    );
}

#[test]
fn object_for_primitive_element() {
    one_issue(
        json!({"resourceType": "Patient", "birthDate": {"value": "2000"}}),
        "Patient.birthDate",
        "must be a JSON string",
    );
}

#[test]
fn boolean_as_string() {
    one_issue(
        json!({"resourceType": "Patient", "active": "true"}),
        "Patient.active",
        "must be a JSON boolean",
    );
}

#[test]
fn decimal_as_string_deep_in_component() {
    let mut obs = vital_signs_observation();
    obs["component"][1]["valueQuantity"]["value"] = json!("80");
    let issue = one_issue(
        obs,
        "Observation.component[1].valueQuantity.value",
        "must be a JSON number",
    );
    assert_eq!(issue.code, IssueCode::Structure);
}

#[test]
fn number_for_string() {
    one_issue(
        json!({"resourceType": "Patient", "name": [{"given": [42]}]}),
        "Patient.name[0].given[0]",
        "must be a JSON string",
    );
}

// ---------------------------------------------------------------------------------------
// FHIR JSON rules: null, empty
// ---------------------------------------------------------------------------------------

#[test]
fn null_value() {
    one_issue(
        json!({"resourceType": "Patient", "gender": null}),
        "Patient.gender",
        "null is not allowed",
    );
    one_issue(
        json!({"resourceType": "Patient", "maritalStatus": null}),
        "Patient.maritalStatus",
        "null is not allowed",
    );
    one_issue(
        json!({"resourceType": "Patient", "name": [{"family": "a"}, null]}),
        "Patient.name[1]",
        "null is not allowed",
    );
}

#[test]
fn empty_object() {
    one_issue(
        json!({"resourceType": "Patient", "maritalStatus": {}}),
        "Patient.maritalStatus",
        "Empty objects are not allowed",
    );
    one_issue(
        json!({"resourceType": "Patient", "_gender": {}}),
        "Patient.gender",
        "Empty objects are not allowed",
    );
}

#[test]
fn empty_array() {
    one_issue(
        json!({"resourceType": "Patient", "name": []}),
        "Patient.name",
        "Empty arrays",
    );
}

#[test]
fn empty_string() {
    let issue = one_issue(
        json!({"resourceType": "Patient", "name": [{"family": ""}]}),
        "Patient.name[0].family",
        "empty strings are not allowed",
    );
    assert_eq!(issue.code, IssueCode::Value);
}

// ---------------------------------------------------------------------------------------
// Primitive values
// ---------------------------------------------------------------------------------------

#[test]
fn resource_id_format() {
    one_issue(
        json!({"resourceType": "Patient", "id": "a_b"}),
        "Patient.id",
        "not a valid id",
    );
    one_issue(
        json!({"resourceType": "Patient", "id": "x".repeat(65)}),
        "Patient.id",
        "not a valid id",
    );
    // Element ids are plain strings.
    valid(json!({"resourceType": "Patient", "name": [{"id": "any thing_goes", "family": "x"}]}));
}

#[test]
fn invalid_dates() {
    one_issue(
        json!({"resourceType": "Patient", "birthDate": "2019-02-29"}),
        "Patient.birthDate",
        "not a valid date",
    );
    one_issue(
        json!({"resourceType": "Patient", "birthDate": "25/12/1974"}),
        "Patient.birthDate",
        "YYYY-MM-DD",
    );
    let mut obs = vital_signs_observation();
    obs["effectiveDateTime"] = json!("2024-05-01T09:30");
    one_issue(obs, "Observation.effectiveDateTime", "not a valid dateTime");
}

#[test]
fn instant_requires_seconds_and_timezone() {
    let mut obs = vital_signs_observation();
    obs["issued"] = json!("2024-05-01T09:30:00");
    one_issue(obs, "Observation.issued", "time zone");
    let mut obs = vital_signs_observation();
    obs["meta"]["lastUpdated"] = json!("2024-05-01");
    one_issue(obs, "Observation.meta.lastUpdated", "not a valid instant");
}

#[test]
fn time_values() {
    let mut obs = vital_signs_observation();
    obs["component"][0]
        .as_object_mut()
        .unwrap()
        .remove("valueQuantity");
    obs["component"][0]["valueTime"] = json!("24:00:00");
    one_issue(
        obs,
        "Observation.component[0].valueTime",
        "not a valid time",
    );
}

#[test]
fn integer_rules() {
    let patient = |n: &str| {
        let mut p: Value = json!({"resourceType": "Patient"});
        p["multipleBirthInteger"] = serde_json::from_str(n).unwrap();
        p
    };
    valid(patient("-3"));
    one_issue(
        patient("1.5"),
        "Patient.multipleBirthInteger",
        "not a valid integer",
    );
    one_issue(
        patient("1e2"),
        "Patient.multipleBirthInteger",
        "not a valid integer",
    );
    one_issue(
        patient("3000000000"),
        "Patient.multipleBirthInteger",
        "out of range",
    );
    one_issue(
        json!({"resourceType": "Patient", "telecom": [{"value": "x", "rank": 0}]}),
        "Patient.telecom[0].rank",
        "not a valid positiveInt",
    );
    one_issue(
        json!({"resourceType": "Bundle", "type": "searchset", "total": -1}),
        "Bundle.total",
        "unsignedInt",
    );
}

#[test]
fn decimal_keeps_lexical_form() {
    let mut obs = vital_signs_observation();
    obs["component"][0]["valueQuantity"]["value"] = serde_json::from_str("1.50").unwrap();
    valid(obs);
}

#[test]
fn uri_code_and_other_strings() {
    one_issue(
        json!({"resourceType": "Patient", "identifier": [{"system": "http://a b", "value": "1"}]}),
        "Patient.identifier[0].system",
        "not a valid uri",
    );
    one_issue(
        json!({"resourceType": "Patient", "language": " en"}),
        "Patient.language",
        "not a valid code",
    );
    one_issue(
        json!({"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": "abc"}]}),
        "Patient.photo[0].data",
        "not a valid base64Binary",
    );
    one_issue(
        json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueOid": "1.2.3"}]}),
        "Patient.extension[0].valueOid",
        "not a valid oid",
    );
    one_issue(
        json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueUuid": "urn:uuid:xyz"}]}),
        "Patient.extension[0].valueUuid",
        "not a valid uuid",
    );
    one_issue(
        json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}}),
        "Patient.text.div",
        "not a valid xhtml",
    );
}

#[test]
fn string_too_long() {
    let issue = one_issue(
        json!({"resourceType": "Patient", "name": [{"text": "x".repeat(1024 * 1024 + 1)}]}),
        "Patient.name[0].text",
        "exceeds",
    );
    assert_eq!(issue.code, IssueCode::TooLong);
}

// ---------------------------------------------------------------------------------------
// Cardinality and required elements
// ---------------------------------------------------------------------------------------

#[test]
fn required_elements_of_resource() {
    let found = validate(&json!({"resourceType": "Observation"}));
    let exprs: Vec<&str> = found.iter().map(|i| i.expression[0].as_str()).collect();
    assert_eq!(exprs, vec!["Observation.status", "Observation.code"]);
    assert!(found.iter().all(|i| i.code == IssueCode::Required));
    one_issue(
        json!({"resourceType": "Bundle"}),
        "Bundle.type",
        "Missing required element 'type'",
    );
}

#[test]
fn required_element_in_backbone() {
    let mut obs = vital_signs_observation();
    obs["component"][1].as_object_mut().unwrap().remove("code");
    one_issue(
        obs,
        "Observation.component[1].code",
        "Missing required element 'code'",
    );
}

#[test]
fn required_element_in_datatype() {
    one_issue(
        json!({"resourceType": "Patient", "text": {"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}}),
        "Patient.text.status",
        "Missing required element 'status'",
    );
    one_issue(
        json!({"resourceType": "Patient", "extension": [{"valueString": "x"}]}),
        "Patient.extension[0].url",
        "Missing required element 'url'",
    );
}

#[test]
fn required_choice_element() {
    one_issue(
        json!({"resourceType": "Questionnaire", "status": "draft", "item": [{
            "linkId": "1", "type": "string",
            "enableWhen": [{"question": "0", "operator": "exists"}]
        }]}),
        "Questionnaire.item[0].enableWhen[0].answer",
        "Missing required element 'answer[x]'",
    );
}

#[test]
fn required_element_in_recursive_item() {
    one_issue(
        json!({"resourceType": "Questionnaire", "status": "draft", "item": [{
            "linkId": "1", "type": "group",
            "item": [{"linkId": "1.1", "type": "group", "item": [{"type": "string"}]}]
        }]}),
        "Questionnaire.item[0].item[0].item[0].linkId",
        "Missing required element 'linkId'",
    );
}

#[test]
fn element_with_only_extension_counts_as_present() {
    let mut obs = vital_signs_observation();
    obs.as_object_mut().unwrap().remove("status");
    obs["_status"] = json!({"extension": [{"url": "http://example.org/x", "valueString": "?"}]});
    valid(obs);
}

// ---------------------------------------------------------------------------------------
// Choice types
// ---------------------------------------------------------------------------------------

#[test]
fn two_choice_variants() {
    let mut obs = vital_signs_observation();
    obs["valueString"] = json!("high");
    obs["valueBoolean"] = json!(true);
    one_issue(
        obs,
        "Observation.valueBoolean",
        "Only one type is allowed for value[x]",
    );
}

#[test]
fn choice_value_and_other_variant_extension() {
    let mut obs = vital_signs_observation();
    obs["valueString"] = json!("high");
    obs["_valueBoolean"] = json!({"id": "1"});
    one_issue(obs, "Observation.valueBoolean", "Only one type is allowed");
}

#[test]
fn choice_value_with_its_own_extension() {
    let mut obs = vital_signs_observation();
    obs["valueString"] = json!("high");
    obs["_valueString"] = json!({"id": "1"});
    valid(obs);
}

// ---------------------------------------------------------------------------------------
// Required bindings
// ---------------------------------------------------------------------------------------

#[test]
fn code_not_in_required_value_set() {
    let mut obs = vital_signs_observation();
    obs["status"] = json!("done");
    let issue = one_issue(obs, "Observation.status", "Invalid code 'done'");
    assert_eq!(issue.code, IssueCode::CodeInvalid);
    assert!(
        issue
            .diagnostics
            .contains("registered, preliminary, final, amended"),
        "{}",
        issue.diagnostics
    );
}

#[test]
fn code_in_backbone_with_required_binding() {
    one_issue(
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "FETCH", "url": "x"}}]}),
        "Bundle.entry[0].request.method",
        "Invalid code 'FETCH'",
    );
}

#[test]
fn codeable_concept_with_required_binding() {
    let condition = |coding: Value| {
        json!({
            "resourceType": "Condition",
            "subject": {"reference": "Patient/1"},
            "clinicalStatus": {"coding": coding}
        })
    };
    let system = "http://terminology.hl7.org/CodeSystem/condition-clinical";
    valid(condition(json!([{"system": system, "code": "active"}])));
    // One matching coding among others is enough.
    valid(condition(
        json!([{"system": "http://example.org", "code": "x"}, {"system": system, "code": "resolved"}]),
    ));
    let issue = one_issue(
        condition(json!([{"system": system, "code": "cured"}])),
        "Condition.clinicalStatus",
        "must have a coding from the required value set",
    );
    assert!(issue.diagnostics.contains("active"));
    // Right code, wrong system.
    one_issue(
        condition(json!([{"system": "http://example.org", "code": "active"}])),
        "Condition.clinicalStatus",
        "required value set",
    );
    // Text only.
    one_issue(
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"text": "active"}}),
        "Condition.clinicalStatus",
        "required value set",
    );
}

#[test]
fn unexpandable_required_binding_is_skipped() {
    // Attachment.contentType is bound (required) to BCP-13 mime types, which cannot be
    // enumerated: anything lexically valid is accepted.
    valid(json!({"resourceType": "Binary", "contentType": "application/x-made-up"}));
}

// ---------------------------------------------------------------------------------------
// Nested resources
// ---------------------------------------------------------------------------------------

#[test]
fn contained_resource_is_validated_as_its_type() {
    one_issue(
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Observation", "id": "o1", "code": {"text": "x"}}]}),
        "Patient.contained[0].status",
        "Missing required element 'status'",
    );
}

#[test]
fn contained_without_resource_type() {
    let issue = one_issue(
        json!({"resourceType": "Patient", "contained": [{"id": "o1"}]}),
        "Patient.contained[0]",
        "resourceType",
    );
    assert_eq!(issue.code, IssueCode::Required);
}

#[test]
fn contained_rules() {
    one_issue(
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Patient", "id": "p",
            "contained": [{"resourceType": "Patient", "id": "q"}]}]}),
        "Patient.contained[0].contained",
        "dom-2",
    );
    one_issue(
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Patient", "id": "p", "meta": {"versionId": "2"}}]}),
        "Patient.contained[0].meta.versionId",
        "dom-4",
    );
}

#[test]
fn contained_security_label() {
    one_issue(
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Patient", "id": "p",
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}]}),
        "Patient.contained[0].meta.security",
        "dom-5",
    );
}

#[test]
fn issue_count_is_capped() {
    let given: Vec<Value> = (0..3000).map(|_| json!(1)).collect();
    let found = validate(&json!({"resourceType": "Patient", "name": [{"given": given}]}));
    assert_eq!(found.len(), MAX_ISSUES + 1);
    assert!(found[MAX_ISSUES]
        .diagnostics
        .contains("2000 further issues"));
}

#[test]
fn bundle_entry_resources_are_validated() {
    let found = issues(json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "gender": "m"}},
            {"resource": {"resourceType": "Nope"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1"}}}
        ]
    }));
    let exprs: Vec<&str> = found.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        exprs,
        vec![
            "Bundle.entry[0].resource.gender",
            "Bundle.entry[1].resource",
            "Bundle.entry[2].resource.valueQuantity.value"
        ]
    );
    assert!(found[1].1.contains("'Nope'"));
}

#[test]
fn parameters_resource_is_validated() {
    one_issue(
        json!({"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {"resourceType": "Patient", "active": 1}}]}),
        "Parameters.parameter[0].resource.active",
        "must be a JSON boolean",
    );
}

// ---------------------------------------------------------------------------------------
// Extensions, meta
// ---------------------------------------------------------------------------------------

#[test]
fn nested_extensions() {
    valid(json!({"resourceType": "Patient", "extension": [{
        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
        "extension": [
            {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}},
            {"url": "text", "valueString": "White"}
        ]
    }]}));
    one_issue(
        json!({"resourceType": "Patient", "extension": [{"url": "http://x", "extension": [{"url": "a", "valueFoo": 1}]}]}),
        "Patient.extension[0].extension[0].valueFoo",
        "is not allowed for value[x]",
    );
    one_issue(
        json!({"resourceType": "Patient", "modifierExtension": [{"url": "http://x", "valueQuantity": {"value": "1"}}]}),
        "Patient.modifierExtension[0].valueQuantity.value",
        "JSON number",
    );
}

#[test]
fn meta_fields() {
    one_issue(
        json!({"resourceType": "Patient", "meta": {"versionId": "a b"}}),
        "Patient.meta.versionId",
        "not a valid id",
    );
    one_issue(
        json!({"resourceType": "Patient", "meta": {"profile": "http://x"}}),
        "Patient.meta.profile",
        "must be an array",
    );
    one_issue(
        json!({"resourceType": "Patient", "meta": {"tag": [{"system": "http://x", "code": "a", "foo": 1}]}}),
        "Patient.meta.tag[0].foo",
        "Unknown element",
    );
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

#[test]
fn every_problem_is_reported() {
    let found = issues(json!({
        "resourceType": "Observation",
        "status": "done",
        "valueQuantity": {"value": "1", "comparator": "~"},
        "component": [{"code": {"text": "a"}}, {"valueString": ""}],
        "foo": true
    }));
    let exprs: Vec<&str> = found.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        exprs,
        vec![
            "Observation.status",
            "Observation.valueQuantity.value",
            "Observation.valueQuantity.comparator",
            "Observation.component[1].valueString",
            "Observation.component[1].code",
            "Observation.foo",
            "Observation.code",
        ],
        "{found:#?}"
    );
}

#[test]
fn issues_are_errors_with_codes() {
    let found = validate(&json!({"resourceType": "Patient", "gender": "x"}));
    assert!(has_errors(&found));
    assert_eq!(found[0].code, IssueCode::CodeInvalid);
    assert!(!has_errors(&validate(&patient())));
}

#[test]
fn deep_nesting_does_not_overflow() {
    let mut ext = json!({"url": "http://x", "valueString": "leaf"});
    for _ in 0..400 {
        ext = json!({"url": "http://x", "extension": [ext]});
    }
    let found = validate(&json!({"resourceType": "Patient", "extension": [ext]}));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, IssueCode::TooCostly);
}

#[test]
fn fuzzish_inputs_do_not_panic() {
    for v in [
        json!(null),
        json!(1),
        json!("Patient"),
        json!({"resourceType": 5}),
        json!({"resourceType": "Patient", "name": [[]]}),
        json!({"resourceType": "Patient", "name": [{"given": {"a": 1}}]}),
        json!({"resourceType": "Patient", "_name": [null]}),
        json!({"resourceType": "Patient", "_": 1, "": 2}),
        json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": []}]}),
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Bundle", "type": "x"}], "text": {"status": "generated", "div": 5}}),
    ] {
        let _ = validate(&v);
        let _ = validate_as(&v, "Patient");
    }
}

// ---------------------------------------------------------------------------------------
// Official examples
// ---------------------------------------------------------------------------------------

/// Official R4 examples that are themselves invalid, with the reason.
const KNOWN_BAD_EXAMPLES: &[(&str, &str)] = &[
    (
        "ImplementationGuide-fhir.json",
        "ImplementationGuide.name and .status are 1..1 but absent",
    ),
    (
        "ig-r4.json",
        "package manifest copy of ImplementationGuide/fhir: name and status (1..1) absent",
    ),
    (
        "Questionnaire-qs1.json",
        "nested items lack Questionnaire.item.linkId, which is 1..1",
    ),
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "id has 67 characters; ids are limited to 64",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "SearchParameter.base (1..*) absent",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "SearchParameter.base (1..*) absent",
    ),
];

/// Validates every official example (from `FHIRGATE_R4_EXAMPLES` or
/// `/tmp/npm/ex/package`); skipped when neither exists.
#[test]
fn official_examples() {
    let dir =
        std::env::var("FHIRGATE_R4_EXAMPLES").unwrap_or_else(|_| "/tmp/npm/ex/package".into());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipping: no examples at {dir}");
        return;
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut checked = 0;
    let mut unexpected = Vec::new();
    let mut known_seen = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if value.get("resourceType").is_none() {
            continue; // package.json
        }
        checked += 1;
        let found: Vec<Issue> = validate(&value)
            .into_iter()
            .filter(Issue::is_error)
            .collect();
        let known = KNOWN_BAD_EXAMPLES.iter().any(|(f, _)| *f == name);
        if found.is_empty() {
            if known {
                eprintln!("{name}: listed as bad but validates");
            }
            continue;
        }
        if known {
            known_seen.push(name.clone());
            continue;
        }
        let lines: Vec<String> = found
            .iter()
            .take(5)
            .map(|i| format!("    {} : {}", i.expression.join(","), i.diagnostics))
            .collect();
        unexpected.push(format!(
            "{name} ({} issues)\n{}",
            found.len(),
            lines.join("\n")
        ));
    }
    eprintln!(
        "validated {checked} examples: {} unexpected failures, {} known-bad",
        unexpected.len(),
        known_seen.len()
    );
    for u in &unexpected {
        eprintln!("{u}");
    }
    assert!(checked > 0, "no examples found in {dir}");
    assert!(
        unexpected.is_empty(),
        "{} examples failed",
        unexpected.len()
    );
}
