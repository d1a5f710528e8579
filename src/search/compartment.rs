//! Compartments (R4 CompartmentDefinitions for Patient, Encounter, RelatedPerson,
//! Practitioner and Device): which resources belong to, say, Patient/123 — those whose
//! listed reference parameters point at it, and the Patient itself.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use sea_orm::Value;
use serde::Deserialize;

use super::criteria::{Condition, Selectivity};
use crate::error::{FhirError, FhirResult};

const DEFINITIONS_GZ: &[u8] =
    include_bytes!("../../fhir-profiles/r4/compartmentdefinitions.json.gz");

/// Compartment type → resource type → the reference parameters that place a resource in
/// the compartment (empty: the type is never in it).
pub struct Compartments {
    by_type: HashMap<String, HashMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
struct Bundle {
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    resource: Definition,
}

#[derive(Deserialize)]
struct Definition {
    code: String,
    #[serde(default)]
    resource: Vec<Member>,
}

#[derive(Deserialize)]
struct Member {
    code: String,
    #[serde(default)]
    param: Vec<String>,
}

impl Compartments {
    pub fn get() -> &'static Compartments {
        static COMPARTMENTS: OnceLock<Compartments> = OnceLock::new();
        COMPARTMENTS.get_or_init(|| {
            Compartments::load().unwrap_or_else(|err| {
                tracing::error!("cannot load the compartment definitions: {err}");
                Compartments {
                    by_type: HashMap::new(),
                }
            })
        })
    }

    fn load() -> Result<Compartments, String> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DEFINITIONS_GZ)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        let bundle: Bundle = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let by_type = bundle
            .entry
            .into_iter()
            .map(|entry| {
                let members = entry
                    .resource
                    .resource
                    .into_iter()
                    .map(|member| (member.code, member.param))
                    .collect();
                (entry.resource.code, members)
            })
            .collect();
        Ok(Compartments { by_type })
    }

    pub fn is_compartment(&self, compartment_type: &str) -> bool {
        self.by_type.contains_key(compartment_type)
    }

    /// The parameters linking `resource_type` to a `compartment_type` compartment.
    pub fn params(&self, compartment_type: &str, resource_type: &str) -> &[String] {
        self.by_type
            .get(compartment_type)
            .and_then(|members| members.get(resource_type))
            .map_or(&[], Vec::as_slice)
    }

    /// The condition (on the `resources` row `r`) for membership of `resource_type`
    /// resources in the compartment `compartment_type/id`.
    pub fn condition(
        &self,
        compartment_type: &str,
        id: &str,
        resource_type: &str,
    ) -> FhirResult<Condition> {
        self.condition_at(compartment_type, id, resource_type, 0)
    }

    /// [`Compartments::condition`] on the row at `depth` (`r1`, … in chains).
    pub fn condition_at(
        &self,
        compartment_type: &str,
        id: &str,
        resource_type: &str,
        depth: usize,
    ) -> FhirResult<Condition> {
        let owner = crate::search::criteria::owner_alias(depth);
        if !self.is_compartment(compartment_type) {
            return Err(FhirError::not_found(format!(
                "{compartment_type} is not a compartment; compartments are {}",
                self.names().join(", ")
            )));
        }
        let params = self.params(compartment_type, resource_type);
        let mut alternatives = Vec::new();
        let mut probes = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        if resource_type == compartment_type {
            alternatives.push(format!("{owner}.id = ?"));
            probes.push(format!("{owner}.id = ?"));
            values.push(id.into());
        }
        if !params.is_empty() {
            let params_sql = vec!["?"; params.len()].join(", ");
            alternatives.push(format!(
                "{owner}.id IN (SELECT c.resource_id FROM search_reference c WHERE c.resource_type = ? \
                 AND c.param IN ({params_sql}) AND c.target_type = ? AND c.target_id = ?)"
            ));
            probes.push(format!(
                "EXISTS (SELECT 1 FROM search_reference c WHERE c.resource_type = ? \
                 AND c.param IN ({params_sql}) AND c.target_type = ? AND c.target_id = ? \
                 AND c.resource_id = {owner}.id)"
            ));
            values.push(resource_type.into());
            values.extend(params.iter().map(|p| Value::from(p.as_str())));
            values.push(compartment_type.into());
            values.push(id.into());
        }
        if alternatives.is_empty() {
            return Err(FhirError::not_found(format!(
                "{resource_type} resources are never in a {compartment_type} compartment"
            )));
        }
        // Members found by reference alone come straight from the reference index.
        let source = (resource_type != compartment_type).then(|| {
            let select = format!(
                "SELECT c.resource_type, c.resource_id AS id FROM search_reference c \
                 WHERE c.resource_type = ? AND c.param IN ({}) AND c.target_type = ? \
                 AND c.target_id = ?",
                vec!["?"; params.len()].join(", ")
            );
            (select, values.clone())
        });
        Ok(Condition {
            sql: format!("({})", alternatives.join(" OR ")),
            values,
            probe: Some(format!("({})", probes.join(" OR "))),
            selectivity: Selectivity::Narrow,
            source,
            reads_row: false,
        })
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_compartment_membership() {
        let compartments = Compartments::get();
        assert!(compartments.is_compartment("Patient"));
        assert!(compartments.is_compartment("Device"));
        let params = compartments.params("Patient", "Observation");
        assert!(params.contains(&"subject".to_string()));
        assert!(compartments
            .condition("Patient", "1", "Observation")
            .is_ok());
        assert!(compartments
            .condition("Patient", "1", "Patient")
            .unwrap()
            .sql
            .contains("r.id = ?"));
        assert!(compartments
            .condition("Observation", "1", "Patient")
            .is_err());
    }
}
