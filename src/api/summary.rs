//! `_summary` and `_elements`: returning part of a resource. A subsetted resource is
//! marked with the `SUBSETTED` tag so a client never mistakes it for the whole.

use serde_json::{json, Map, Value as Json};

use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::Definitions;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Summary {
    #[default]
    False,
    True,
    Text,
    Data,
    Count,
}

/// The response-shaping parameters of a read, history or search.
#[derive(Debug, Clone, Default)]
pub struct FormatParams {
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
}

impl FormatParams {
    pub fn parse(query: Option<&str>) -> FhirResult<FormatParams> {
        let mut params = FormatParams::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match name.as_ref() {
                "_summary" => {
                    params.summary = match value.as_ref() {
                        "true" => Summary::True,
                        "text" => Summary::Text,
                        "data" => Summary::Data,
                        "count" => Summary::Count,
                        "false" => Summary::False,
                        other => {
                            return Err(FhirError::bad_request(format!(
                                "_summary must be true, text, data, count or false, not {other:?}"
                            )))
                        }
                    }
                }
                "_elements" => {
                    let names: Vec<String> = value
                        .split(',')
                        .map(|s| s.trim())
                        .filter(|s| !s.is_empty())
                        // `Observation.status` is accepted for `status`.
                        .map(|s| s.rsplit('.').next().unwrap_or(s).to_string())
                        .collect();
                    params.elements = Some(names);
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// True when the resource is returned whole.
    pub fn is_whole(&self) -> bool {
        self.elements.is_none() && matches!(self.summary, Summary::False | Summary::Count)
    }

    pub fn apply(&self, resource: &Json) -> Json {
        if self.is_whole() {
            return resource.clone();
        }
        let Some(object) = resource.as_object() else {
            return resource.clone();
        };
        let resource_type = object
            .get("resourceType")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let type_def = Definitions::get().type_def(resource_type);
        let keep = |key: &str| -> bool {
            if matches!(key, "resourceType" | "id" | "meta") {
                return true;
            }
            let element = type_def.and_then(|t| t.top_level_element(key));
            let name = element.map_or(key, |e| e.name.as_str());
            let mandatory = element.is_some_and(|e| e.min >= 1);
            if let Some(elements) = &self.elements {
                return mandatory || elements.iter().any(|e| e == key || e == name);
            }
            match self.summary {
                Summary::True => element.is_some_and(|e| e.is_summary),
                Summary::Text => key == "text" || mandatory,
                Summary::Data => key != "text",
                Summary::False | Summary::Count => true,
            }
        };
        let mut subset = Map::new();
        for (key, value) in object {
            let bare = key.strip_prefix('_').unwrap_or(key);
            if keep(bare) {
                subset.insert(key.clone(), value.clone());
            }
        }
        mark_subsetted(&mut subset);
        Json::Object(subset)
    }
}

fn mark_subsetted(resource: &mut Map<String, Json>) {
    let meta = resource
        .entry("meta")
        .or_insert_with(|| Json::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| Json::Array(Vec::new()));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "Resource encoded in summary mode"
            }));
        }
    }
}
