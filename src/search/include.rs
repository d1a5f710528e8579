//! `_include` and `_revinclude`: the resources a page of matches refers to, and those
//! that refer to it, followed further with `:iterate`. Only current, non-deleted
//! resources are included, each once.

use std::collections::HashSet;

use super::visibility::Sight;
use sea_orm::{ConnectionTrait, Value};

use super::params::{ParamType, SearchParams};
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::Definitions;
use crate::store::sql::statement;
use crate::store::versions::stored_from_row;
use crate::store::StoredResource;

/// At most this many resources are included in one page.
pub const MAX_INCLUDED: usize = 1000;
/// `:iterate` follows references at most this many steps.
const MAX_ITERATIONS: usize = 4;
/// Ids per `IN (…)` list.
const IDS_PER_QUERY: usize = 400;

/// One `_include` or `_revinclude` value, e.g. `Observation:subject:Patient`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludeSpec {
    /// `_revinclude` (resources referring to the matches) rather than `_include`.
    pub reverse: bool,
    pub iterate: bool,
    /// `None` for `*` (every reference parameter of every source).
    pub source_type: Option<String>,
    pub param: Option<String>,
    pub target_type: Option<String>,
}

impl IncludeSpec {
    /// Parses `name` (`_include`, `_include:iterate`, `_revinclude`, …) and its value.
    pub fn parse(name: &str, value: &str) -> FhirResult<IncludeSpec> {
        let (base, modifier) = name.split_once(':').unwrap_or((name, ""));
        let reverse = base == "_revinclude";
        let iterate = match modifier {
            "" => false,
            "iterate" | "recurse" => true,
            other => {
                return Err(FhirError::bad_request(format!(
                    "{base}:{other} is not a modifier of {base}; use {base}:iterate"
                )))
            }
        };
        if value == "*" {
            return Ok(IncludeSpec {
                reverse,
                iterate,
                source_type: None,
                param: None,
                target_type: None,
            });
        }
        let mut parts = value.split(':');
        let (Some(source_type), Some(param)) = (parts.next(), parts.next()) else {
            return Err(FhirError::bad_request(format!(
                "{name}={value} must be Type:parameter[:TargetType], e.g. Observation:subject"
            )));
        };
        let target_type = parts.next().map(str::to_string);
        let definitions = Definitions::get();
        if !definitions.is_resource_type(source_type) {
            return Err(FhirError::bad_request(format!(
                "{name}={value}: {source_type:?} is not a resource type"
            )));
        }
        if param != "*" {
            let is_reference = SearchParams::get()
                .param(source_type, param)
                .is_some_and(|d| d.param_type == ParamType::Reference);
            if !is_reference {
                return Err(FhirError::bad_request(format!(
                    "{name}={value}: {param:?} is not a reference search parameter of {source_type}"
                )));
            }
        }
        if let Some(target) = &target_type {
            if !definitions.is_resource_type(target) {
                return Err(FhirError::bad_request(format!(
                    "{name}={value}: {target:?} is not a resource type"
                )));
            }
        }
        Ok(IncludeSpec {
            reverse,
            iterate,
            source_type: Some(source_type.to_string()),
            param: (param != "*").then(|| param.to_string()),
            target_type,
        })
    }
}

/// The resources to include for `matches` (type, id), and whether the limit cut the list.
pub async fn resolve(
    conn: &impl ConnectionTrait,
    specs: &[IncludeSpec],
    matches: &[(String, String)],
    sight: Sight<'_>,
) -> FhirResult<(Vec<StoredResource>, bool)> {
    let mut seen: HashSet<(String, String)> = matches.iter().cloned().collect();
    let mut frontier: Vec<(String, String)> = matches.to_vec();
    let mut included = Vec::new();
    for round in 0..=MAX_ITERATIONS {
        let active: Vec<&IncludeSpec> = specs.iter().filter(|s| round == 0 || s.iterate).collect();
        if active.is_empty() || frontier.is_empty() {
            break;
        }
        let mut found: Vec<(String, String)> = Vec::new();
        for spec in active {
            let keys = if spec.reverse {
                referring(conn, spec, &frontier).await?
            } else {
                referred(conn, spec, &frontier).await?
            };
            for key in keys {
                if seen.insert(key.clone()) {
                    found.push(key);
                }
            }
        }
        let truncated = included.len() + found.len() > MAX_INCLUDED;
        found.truncate(MAX_INCLUDED.saturating_sub(included.len()));
        // What the caller cannot see is left out (and not followed further).
        let resources = fetch_visible(conn, &found, sight).await?;
        frontier = resources
            .iter()
            .map(|r| (r.resource_type.clone(), r.id.clone()))
            .collect();
        included.extend(resources);
        if truncated {
            return Ok((included, true));
        }
    }
    Ok((included, false))
}

/// Targets of the references of `sources` selected by an `_include`.
async fn referred(
    conn: &impl ConnectionTrait,
    spec: &IncludeSpec,
    sources: &[(String, String)],
) -> FhirResult<Vec<(String, String)>> {
    let mut keys = Vec::new();
    for (source_type, ids) in by_type(sources) {
        if spec.source_type.as_ref().is_some_and(|t| *t != source_type) {
            continue;
        }
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let mut sql = format!(
                "SELECT DISTINCT target_type, target_id FROM search_reference \
                 WHERE resource_type = ? AND resource_id IN ({}) \
                 AND target_type IS NOT NULL AND target_id IS NOT NULL",
                placeholders(chunk.len())
            );
            let mut values: Vec<Value> = vec![source_type.as_str().into()];
            values.extend(chunk.iter().map(|id| Value::from(id.as_str())));
            if let Some(param) = &spec.param {
                sql.push_str(" AND param = ?");
                values.push(param.as_str().into());
            }
            if let Some(target) = &spec.target_type {
                sql.push_str(" AND target_type = ?");
                values.push(target.as_str().into());
            }
            keys.extend(pairs(conn, &sql, values, "target_type", "target_id").await?);
        }
    }
    Ok(keys)
}

/// Resources whose references selected by a `_revinclude` point at `targets`.
async fn referring(
    conn: &impl ConnectionTrait,
    spec: &IncludeSpec,
    targets: &[(String, String)],
) -> FhirResult<Vec<(String, String)>> {
    let mut keys = Vec::new();
    for (target_type, ids) in by_type(targets) {
        if spec.target_type.as_ref().is_some_and(|t| *t != target_type) {
            continue;
        }
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let mut sql = format!(
                "SELECT DISTINCT resource_type, resource_id FROM search_reference \
                 WHERE target_type = ? AND target_id IN ({})",
                placeholders(chunk.len())
            );
            let mut values: Vec<Value> = vec![target_type.as_str().into()];
            values.extend(chunk.iter().map(|id| Value::from(id.as_str())));
            if let Some(source) = &spec.source_type {
                sql.push_str(" AND resource_type = ?");
                values.push(source.as_str().into());
            }
            if let Some(param) = &spec.param {
                sql.push_str(" AND param = ?");
                values.push(param.as_str().into());
            }
            keys.extend(pairs(conn, &sql, values, "resource_type", "resource_id").await?);
        }
    }
    Ok(keys)
}

/// Current, non-deleted resources by (type, id).
pub async fn fetch_current(
    conn: &impl ConnectionTrait,
    keys: &[(String, String)],
) -> FhirResult<Vec<StoredResource>> {
    fetch_visible(conn, keys, Sight::ALL).await
}

/// [`fetch_current`], keeping only what `sight` sees.
pub async fn fetch_visible(
    conn: &impl ConnectionTrait,
    keys: &[(String, String)],
    sight: Sight<'_>,
) -> FhirResult<Vec<StoredResource>> {
    let backend = conn.get_database_backend();
    let mut resources = Vec::with_capacity(keys.len());
    for (resource_type, ids) in by_type(keys) {
        let Some((filter, filter_values)) = sight.filter(&resource_type) else {
            continue;
        };
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let sql = format!(
                "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, \
                 r.content FROM resources r WHERE r.resource_type = ? AND r.deleted = ? \
                 AND r.id IN ({}){filter}",
                placeholders(chunk.len())
            );
            let mut values: Vec<Value> = vec![resource_type.as_str().into(), false.into()];
            values.extend(chunk.iter().map(|id| Value::from(id.as_str())));
            values.extend(filter_values.iter().cloned());
            for row in conn.query_all_raw(statement(backend, &sql, values)).await? {
                resources.push(stored_from_row(backend, &row)?);
            }
        }
    }
    Ok(resources)
}

async fn pairs(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
    type_column: &str,
    id_column: &str,
) -> FhirResult<Vec<(String, String)>> {
    let backend = conn.get_database_backend();
    let rows = conn.query_all_raw(statement(backend, sql, values)).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", type_column)?, row.try_get("", id_column)?)))
        .collect()
}

/// Groups (type, id) keys by type, keeping first-seen order.
fn by_type(keys: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (resource_type, id) in keys {
        match groups.iter_mut().find(|(t, _)| t == resource_type) {
            Some((_, ids)) => ids.push(id.clone()),
            None => groups.push((resource_type.clone(), vec![id.clone()])),
        }
    }
    groups
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_include_values() {
        let spec = IncludeSpec::parse("_include", "Observation:subject:Patient").unwrap();
        assert_eq!(spec.source_type.as_deref(), Some("Observation"));
        assert_eq!(spec.param.as_deref(), Some("subject"));
        assert_eq!(spec.target_type.as_deref(), Some("Patient"));
        assert!(!spec.reverse && !spec.iterate);
        let spec = IncludeSpec::parse("_revinclude:iterate", "Observation:patient").unwrap();
        assert!(spec.reverse && spec.iterate);
        assert!(IncludeSpec::parse("_include", "*")
            .unwrap()
            .source_type
            .is_none());
        assert!(IncludeSpec::parse("_include", "Observation:status").is_err());
        assert!(IncludeSpec::parse("_include", "Observation").is_err());
        assert!(IncludeSpec::parse("_include:deep", "Observation:subject").is_err());
    }
}
