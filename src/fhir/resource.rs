//! `ValidResource`: a resource that passed validation. The write interactions accept only
//! this type, so nothing can be stored without being validated first.

use serde_json::{Map, Value as Json};

use super::outcome::{Issue, IssueCode};
use super::validation::validate;
use crate::error::{FhirError, FhirResult};

#[derive(Debug, Clone)]
pub struct ValidResource {
    json: Map<String, Json>,
    resource_type: String,
}

impl ValidResource {
    /// Validates `json` against the R4 definitions. `expected_type` is the type named by
    /// the request URL, which the body must agree with.
    pub fn parse(json: Json, expected_type: Option<&str>) -> FhirResult<ValidResource> {
        let Json::Object(map) = json else {
            return Err(FhirError::bad_request(
                "the body must be a JSON object holding a FHIR resource",
            ));
        };
        let resource_type = match map.get("resourceType") {
            Some(Json::String(name)) => name.clone(),
            _ => {
                return Err(FhirError::bad_request(
                    "the resource has no \"resourceType\" string; add e.g. \"resourceType\": \"Observation\"",
                )
                .at("resourceType"))
            }
        };
        if let Some(expected) = expected_type {
            if resource_type != expected {
                return Err(FhirError::bad_request(format!(
                    "the body is a {resource_type} but the URL is for {expected}"
                ))
                .at(format!("{resource_type}.resourceType")));
            }
        }
        let json = Json::Object(map);
        let errors: Vec<Issue> = validate(&json)
            .into_iter()
            .filter(Issue::is_error)
            .collect();
        if !errors.is_empty() {
            return Err(FhirError::invalid(errors));
        }
        if resource_type == "SearchParameter" {
            check_search_parameter(&json)?;
        }
        if resource_type == "Subscription" {
            crate::subscriptions::request::check(&json)?;
        }
        let Json::Object(map) = json else {
            unreachable!("checked above")
        };
        Ok(ValidResource {
            json: map,
            resource_type,
        })
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    pub fn id(&self) -> Option<&str> {
        self.json.get("id").and_then(Json::as_str)
    }

    pub fn json(&self) -> &Map<String, Json> {
        &self.json
    }

    /// Mutable access for changes that keep a resource valid, such as replacing one
    /// reference string with another when a Bundle's references are resolved.
    pub fn json_mut(&mut self) -> &mut Map<String, Json> {
        &mut self.json
    }

    /// Changes the id (a valid resource stays valid when its id is a valid id).
    pub fn with_id(mut self, id: &str) -> Self {
        self.json.insert("id".into(), Json::String(id.to_string()));
        self
    }

    /// The resource to store: `id` set, and `resourceType`, `id`, `meta` first as is
    /// customary in FHIR JSON.
    pub fn into_json_with_id(mut self, id: &str) -> Json {
        let mut ordered = Map::with_capacity(self.json.len() + 2);
        ordered.insert("resourceType".into(), Json::String(self.resource_type));
        ordered.insert("id".into(), Json::String(id.to_string()));
        // `meta` always follows `id`; the store fills in versionId and lastUpdated.
        let meta = self
            .json
            .remove("meta")
            .unwrap_or_else(|| Json::Object(Map::new()));
        ordered.insert("meta".into(), meta);
        for (key, value) in self.json {
            if key != "resourceType" && key != "id" {
                ordered.insert(key, value);
            }
        }
        Json::Object(ordered)
    }
}

/// An active SearchParameter is used by search as soon as it is stored, so its expression
/// and types must be usable: refuse it now rather than ignore it later.
fn check_search_parameter(json: &Json) -> FhirResult<()> {
    if !crate::store::search_parameters::is_active(json) {
        return Ok(());
    }
    crate::search::params::SearchParams::from_resources(std::slice::from_ref(json))
        .map(|_| ())
        .map_err(|err| {
            FhirError::bad_request(format!(
                "this active SearchParameter cannot be used for search: {err}"
            ))
            .at("SearchParameter.expression")
        })
}

/// Checks that a text is a valid FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// 400 for an id in a URL that cannot be a FHIR id.
pub fn check_id(id: &str) -> FhirResult<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(FhirError::new(
            axum::http::StatusCode::BAD_REQUEST,
            IssueCode::Value,
            format!(
                "{id:?} is not a valid resource id: 1-64 characters of A-Z, a-z, 0-9, '-' and '.'"
            ),
        ))
    }
}
