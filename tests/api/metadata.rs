//! The CapabilityStatement reflects what the server really does.

use super::helpers::*;

#[tokio::test]
async fn capability_statement_lists_every_type_and_interaction() {
    let app = spawn_app().await;
    let statement = json_with_status(app.get("metadata").await, 200).await;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["kind"], "instance");
    let rest = &statement["rest"][0];
    let resources = rest["resource"].as_array().unwrap();
    // The R4 resource-types code system has 148 codes; Resource and DomainResource are abstract.
    assert_eq!(resources.len(), 146, "all concrete R4 resource types");
    let observation = resources
        .iter()
        .find(|r| r["type"] == "Observation")
        .expect("Observation");
    let interactions: Vec<&str> = observation["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    for code in [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
    ] {
        assert!(interactions.contains(&code), "missing {code}");
    }
    assert_eq!(observation["conditionalCreate"], true);
    assert_eq!(observation["conditionalDelete"], "single");
    assert_eq!(observation["versioning"], "versioned-update");
    let system: Vec<&str> = rest["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        system,
        vec!["transaction", "batch", "search-system", "history-system"]
    );
    assert_eq!(
        statement["implementation"]["url"],
        app.base.as_str(),
        "the server names its own base"
    );
    // With authentication on (the test servers'), the security section names SMART on
    // FHIR and the token endpoint.
    let security = &rest["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let token_uri = &security["extension"][0]["extension"][0];
    assert_eq!(token_uri["url"], "token");
    assert_eq!(
        token_uri["valueUri"],
        format!("{}/auth/token", app.base.strip_suffix("/fhir").unwrap())
    );
    // The statement is itself a valid resource.
    let check = json_with_status(
        app.post("CapabilityStatement/$validate", &statement).await,
        200,
    )
    .await;
    assert_eq!(check["issue"][0]["severity"], "information", "{check}");
}
