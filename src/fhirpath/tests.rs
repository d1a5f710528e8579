//! Evaluator tests on small realistic resources.

use super::*;
use serde_json::json;

fn eval_values(expr: &str, res: &Value) -> Vec<Value> {
    compile(expr)
        .unwrap()
        .evaluate(res)
        .into_iter()
        .map(|n| n.value.into_owned())
        .collect()
}

fn eval_types(expr: &str, res: &Value) -> Vec<String> {
    let e = compile(expr).unwrap();
    e.evaluate(res)
        .iter()
        .map(|n| n.type_str().to_string())
        .collect()
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/example"},
        "device": {"reference": "http://example.org/fhir/Device/dev1/_history/3"},
        "performer": [{"reference": "urn:uuid:1234"}, {"reference": "Practitioner/p1"}],
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {"value": 72, "unit": "bpm"},
        "component": [
            {"code": {"text": "sys"}, "valueQuantity": {"value": 120.5}},
            {"code": {"text": "flag"}, "valueString": "high"}
        ],
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "focus": [{"reference": "#p"}]
    })
}

#[test]
fn paths_and_types() {
    let o = observation();
    assert_eq!(eval_types("Observation.code", &o), ["CodeableConcept"]);
    assert_eq!(eval_types("Observation.code.coding", &o), ["Coding"]);
    assert_eq!(eval_types("Observation.value", &o), ["Quantity"]);
    assert_eq!(
        eval_types("Observation.component.value", &o),
        ["Quantity", "string"]
    );
    assert_eq!(
        eval_types("Observation.component", &o),
        ["BackboneElement"; 2]
    );
    assert_eq!(eval_types("Resource.id", &o), ["id"]);
    assert_eq!(
        eval_types(
            "Observation.meta.lastUpdated | Observation.code.coding.system",
            &json!({"resourceType":"Observation","meta":{"lastUpdated":"2020"}})
        ),
        ["instant"]
    );
    assert_eq!(eval_types("Observation.effective", &o), ["dateTime"]);
    assert_eq!(eval_types("Resource.id", &o).len(), 1);
    assert_eq!(eval_values("Observation.id", &o), [json!("bp")]);
    assert!(eval_values("Patient.id", &o).is_empty());
    assert_eq!(eval_values("Observation.value.value", &o), [json!(72)]);
    assert_eq!(eval_types("Observation.contained", &o), ["Patient"]);
}

#[test]
fn type_operators() {
    let o = observation();
    assert_eq!(
        eval_values("(Observation.value as Quantity).unit", &o),
        [json!("bpm")]
    );
    assert!(eval_values("Observation.value as CodeableConcept", &o).is_empty());
    assert_eq!(
        eval_values("Observation.component.value.ofType(Quantity).value", &o),
        [json!(120.5)]
    );
    assert_eq!(
        eval_values("Observation.component.value.as(string)", &o),
        [json!("high")]
    );
    assert_eq!(
        eval_values("Observation.value is Quantity", &o),
        [json!(true)]
    );
    assert_eq!(
        eval_values("Observation.effective.as(DateTime)", &o),
        [json!("2024-03-01T10:00:00Z")]
    );
    assert_eq!(
        eval_values("Observation.status is string", &o),
        [json!(true)]
    );
    // Age derives from Quantity.
    let c = json!({"resourceType": "Condition", "onsetAge": {"value": 3, "unit": "a"}});
    assert_eq!(
        eval_types("Condition.onset.as(Age) | Condition.onset.as(Range)", &c),
        ["Age"]
    );
    assert_eq!(eval_types("Condition.onset as Quantity", &c), ["Age"]);
}

#[test]
fn resolve_and_where() {
    let o = observation();
    assert_eq!(
        eval_values("Observation.subject.where(resolve() is Patient)", &o),
        [json!({"reference": "Patient/example"})]
    );
    assert_eq!(
        eval_values(
            "Observation.device.where(resolve() is Device).reference",
            &o
        )
        .len(),
        1
    );
    assert!(eval_values("Observation.performer.where(resolve() is Patient)", &o).is_empty());
    assert_eq!(
        eval_values(
            "Observation.performer.where(resolve() is Practitioner).reference",
            &o
        ),
        [json!("Practitioner/p1")]
    );
    assert_eq!(eval_types("Observation.focus.resolve()", &o), ["Patient"]);
    assert_eq!(
        eval_values("Observation.component.where(code.text = 'flag').value", &o),
        [json!("high")]
    );
}

#[test]
fn logic_and_functions() {
    let p = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01",
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
        "name": [{"given": ["A", "B"], "_given": [null, {"extension": []}]}]});
    let e = "Patient.deceased.exists() and Patient.deceased != false";
    assert_eq!(eval_values(e, &p), [json!(true)]);
    assert_eq!(
        eval_values(e, &json!({"resourceType": "Patient"})),
        [json!(false)]
    );
    assert_eq!(
        eval_values(
            e,
            &json!({"resourceType": "Patient", "deceasedBoolean": false})
        ),
        [json!(false)]
    );
    assert_eq!(
        eval_values("Patient.telecom.where(system='email').value", &p),
        [json!("a@b")]
    );
    assert_eq!(
        eval_values("Patient.name.given", &p),
        [json!("A"), json!("B")]
    );
    assert_eq!(eval_values("Patient.name.given.first()", &p), [json!("A")]);
    assert_eq!(eval_values("Patient.name.given[1]", &p), [json!("B")]);
    assert_eq!(
        eval_values("Patient.name.given.count() = 2", &p),
        [json!(true)]
    );
    assert_eq!(
        eval_values("Patient.telecom.empty().not()", &p),
        [json!(true)]
    );
    assert_eq!(eval_values("1 + 2 * 3", &p), [json!(7)]);
    assert_eq!(eval_values("'a' & 'b'", &p), [json!("ab")]);
    assert_eq!(
        eval_values("Patient.name.given | Patient.name.given", &p).len(),
        2
    );
    assert_eq!(
        eval_values("%resource.telecom.value.first()", &p),
        [json!("1")]
    );
    assert_eq!(
        eval_values("iif(Patient.active.exists(), 1, 2)", &p),
        [json!(2)]
    );
    assert!(compile("Patient.deceased.exists()")
        .unwrap()
        .evaluate_bool(&p));
    assert!(!compile("Patient.active").unwrap().evaluate_bool(&p));
}

#[test]
fn extension_function() {
    let p = json!({"resourceType": "Patient", "extension": [
        {"url": "http://a", "valueString": "x"}, {"url": "http://b", "valueCode": "y"}]});
    assert_eq!(
        eval_values("Patient.extension('http://b').value", &p),
        [json!("y")]
    );
    assert_eq!(
        eval_types("Patient.extension('http://b').value", &p),
        ["code"]
    );
}

#[test]
fn variables() {
    let cur = json!({"resourceType": "Encounter", "status": "finished"});
    let prev = json!({"resourceType": "Encounter", "status": "in-progress"});
    let e = compile("%previous.status != status and status = 'finished'").unwrap();
    let env = Env::new(&cur).with_var("previous", vec![Node::resource(&prev)]);
    assert!(e.evaluate_bool_in(&env));
}

#[test]
fn untrusted_input_never_panics() {
    let weird = json!({"resourceType": "Observation", "valueQuantity": [1, null, {"value": "x"}],
        "code": 5, "component": "nope", "subject": {"reference": 3}});
    for e in [
        "Observation.value.value",
        "Observation.code.coding.code",
        "Observation.component.value",
        "Observation.subject.where(resolve() is Patient)",
        "Observation.descendants()",
        "Observation.value.value > 1",
        "(1/0)",
        "Observation.value[5]",
    ] {
        let _ = compile(e).unwrap().evaluate(&weird);
    }
    let _ = compile("x").unwrap().evaluate(&json!([1, 2]));
    let _ = compile("x.y").unwrap().evaluate(&json!({"x": {"y": 1}}));
}

#[test]
fn deepest_accepted_expressions_evaluate() {
    let r = json!({"resourceType": "Basic"});
    let sum = vec!["1"; 250].join(" + ");
    assert_eq!(eval_values(&sum, &r), [json!(250)]);
    let path = vec!["a"; 250].join(".");
    assert!(eval_values(&path, &r).is_empty());
    let nested = format!("{}1{}", "(".repeat(60), ")".repeat(60));
    assert_eq!(eval_values(&nested, &r), [json!(1)]);
}

#[test]
fn collection_and_string_functions() {
    let r = json!({"resourceType": "Basic", "id": "abc-def"});
    assert_eq!(eval_values("(1 | 2).union(2 | 3).count()", &r), [json!(3)]);
    assert_eq!(
        eval_values("(1 | 2).combine(2 | 3).count()", &r),
        [json!(4)]
    );
    assert_eq!(
        eval_values("(1 | 2 | 3).intersect(2 | 3 | 4)", &r),
        [json!(2), json!(3)]
    );
    assert_eq!(
        eval_values("(1 | 2 | 3).exclude(2)", &r),
        [json!(1), json!(3)]
    );
    assert_eq!(
        eval_values("(1 | 2).subsetOf(1 | 2 | 3)", &r),
        [json!(true)]
    );
    assert_eq!(
        eval_values("(1 | 2).supersetOf(1 | 2 | 3)", &r),
        [json!(false)]
    );
    assert_eq!(eval_values("id.substring(4)", &r), [json!("def")]);
    assert_eq!(eval_values("id.substring(0, 3)", &r), [json!("abc")]);
    assert!(eval_values("id.substring(40)", &r).is_empty());
    assert_eq!(eval_values("id.indexOf('-')", &r), [json!(3)]);
    assert_eq!(eval_values("id.replace('-', '')", &r), [json!("abcdef")]);
    assert_eq!(eval_values("'42'.toInteger() + 1", &r), [json!(43)]);
    assert_eq!(eval_values("'4.5'.toDecimal() > 4", &r), [json!(true)]);
    assert!(eval_values("'x'.toDecimal()", &r).is_empty());
    assert_eq!(
        eval_values("id.startsWith('abc') and id.matches('^[a-z-]+$')", &r),
        [json!(true)]
    );
    assert_eq!(eval_values("id.upper().lower().length()", &r), [json!(7)]);
}
