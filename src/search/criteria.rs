//! Search criteria to SQL: each `name[:modifier]=value[,value…]` becomes one condition on
//! the `resources` row aliased `r`, usually `r.id IN (…)` over an index table. Values
//! separated by commas are alternatives (OR); repeated parameters must all hold (AND).
//!
//! A condition comes in two forms ([`Condition`]): standalone, to start a query from its
//! index entries, and as a probe of one resource's own entries. A search starts from its
//! most selective condition and probes the others per row ([`conjunction`],
//! [`rows_of_type`]), so its cost follows the smallest set it names (one patient's
//! Observations), not the largest (every heart rate).
//!
//! Used by conditional interactions and by the search API. Matching follows the R4 search
//! specification: a date or decimal search value stands for the range its precision
//! implies; prefixes compare ranges (see [`date_match`], [`number_match`]); composite
//! parameters match all their components on the same combination ([`composite_condition`]).
//!
//! Modifiers: string `:exact`, `:contains`, `:text`; token `:not`, `:text`, `:of-type`,
//! `:in`, `:not-in`; reference `:[type]`, `:identifier`; uri `:above`, `:below`; `:missing`
//! on every type. Refused with 400 and the reason: token and reference `:above`/`:below`
//! (subsumption needs a terminology server, hierarchies a resolver), `:in` with a value set
//! the server cannot expand, `near`, `_text`, `_content`, `_query`.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use sea_orm::Value;

use super::extract::{normalize, parse_date_range};
use super::params::{ParamType, SearchParamDef, SearchParams};
use super::visibility::{Sight, Visible};
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;

/// A SQL condition with its bind values, in `?` placeholder order.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    /// The standalone form, usually `owner.id IN (uncorrelated index subquery)`: the
    /// database can start a query from it.
    pub sql: String,
    pub values: Vec<Value>,
    /// The same test as a lookup of the owner row's own index entries (a correlated
    /// `EXISTS`), with the same bind values in the same order; cheap once per row. `None`
    /// when `sql` already is (a test of the row's own columns).
    pub probe: Option<String>,
    /// How few resources the condition is expected to select.
    pub selectivity: Selectivity,
    /// The matching resources straight from one index table, as `SELECT resource_type,
    /// resource_id AS id FROM …` (a resource may come more than once: see
    /// [`distinct_rows`]), with its own bind values: index rows exist only for current,
    /// undeleted resources, so a search driven by this condition need not read
    /// `resources` at all.
    pub source: Option<(String, Vec<Value>)>,
    /// The condition reads the row's own columns besides `id` (`last_updated`).
    pub reads_row: bool,
}

/// Expected selectivity, from the least selective to the most: the most selective
/// condition of a search drives it (see [`conjunction`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selectivity {
    /// Negations, `:missing`, substring and word matches: never worth starting from.
    #[default]
    Filter,
    /// Date, number and quantity ranges, composites, `_lastUpdated`.
    Range,
    /// One code, string or URI: often a large share of a type (every heart rate).
    Broad,
    /// Chains and `_has`: the resources linked to the matches of another search.
    Linked,
    /// A reference to one resource, an identifier, a compartment: a patient's data.
    Narrow,
    /// `_id`.
    Single,
}

impl Condition {
    /// A condition on the row's own columns, as cheap per row as it is to start from.
    pub fn plain(sql: String, values: Vec<Value>, selectivity: Selectivity) -> Condition {
        Condition {
            sql,
            values,
            selectivity,
            ..Condition::default()
        }
    }

    /// The form used when another condition drives the query.
    fn probe_sql(&self) -> &str {
        self.probe.as_deref().unwrap_or(&self.sql)
    }

    /// Two conditions joined by ` OR ` or ` AND ` (both forms alike).
    pub fn combine(self, other: Condition, joiner: &str) -> Condition {
        let probe = match (&self.probe, &other.probe) {
            (None, None) => None,
            _ => Some(format!(
                "(({}){joiner}({}))",
                self.probe_sql(),
                other.probe_sql()
            )),
        };
        let mut values = self.values;
        values.extend(other.values);
        Condition {
            sql: format!("(({}){joiner}({}))", self.sql, other.sql),
            values,
            probe,
            selectivity: self.selectivity.min(other.selectivity),
            source: None,
            reads_row: self.reads_row || other.reads_row,
        }
    }
}

/// The conditions of one search, all of which must hold, as ` AND …` to append to a WHERE
/// clause on the row `r` (empty for none). The most selective condition keeps its
/// standalone form, so the database starts from its index entries (one patient's
/// Observations); every other one is checked per row of it through its probe. Standalone
/// forms intersected instead would each be built in full first: the two hundred thousand
/// heart rates to keep the few hundred of one patient. When nothing is worth starting from
/// (only negations, say), every condition is a probe on the rows of the searched types.
pub fn conjunction(conditions: Vec<Condition>) -> (String, Vec<Value>) {
    let (driver, probes) = split_driver(conditions);
    let mut sql = String::new();
    let mut values = Vec::new();
    if let Some(driver) = driver {
        sql.push_str(" AND ");
        sql.push_str(&driver.sql);
        values.extend(driver.values);
    }
    let (probe_sql, probe_values) = probes_of(probes);
    sql.push_str(&probe_sql);
    values.extend(probe_values);
    (sql, values)
}

/// Most index entries counted per condition by [`rank_by_entries`].
const ENTRY_COUNT_LIMIT: u64 = 5_000;

/// Where the fixed ranking cannot tell the best conditions apart (a patient and a device
/// are both references to one resource, but one patient may have a thousand Observations
/// and one monitor a hundred thousand), counts their index entries, up to
/// [`ENTRY_COUNT_LIMIT`], and moves the one with the fewest first, so that it drives the
/// query. A few cheap index reads decide between plans that differ a hundredfold.
pub async fn rank_by_entries(
    conn: &impl sea_orm::ConnectionTrait,
    conditions: &mut [Condition],
) -> Result<(), sea_orm::DbErr> {
    let Some(best) = conditions
        .iter()
        .filter(|c| c.source.is_some())
        .map(|c| c.selectivity)
        .max()
        .filter(|s| *s > Selectivity::Filter)
    else {
        return Ok(());
    };
    if conditions.iter().any(|c| c.selectivity > best) {
        return Ok(()); // something without a source (an _id) drives anyway
    }
    let candidates: Vec<usize> = (0..conditions.len())
        .filter(|&i| conditions[i].selectivity == best && conditions[i].source.is_some())
        .collect();
    if candidates.len() < 2 {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let mut fewest: Option<(u64, usize)> = None;
    for i in candidates {
        let Some((source, values)) = &conditions[i].source else {
            continue;
        };
        let sql = format!(
            "SELECT COUNT(*) AS n FROM (SELECT 1 AS one FROM ({source}) s LIMIT {ENTRY_COUNT_LIMIT}) c"
        );
        let row = conn
            .query_one_raw(crate::store::sql::statement(backend, &sql, values.clone()))
            .await?;
        let count = match row {
            Some(row) => row.try_get::<i64>("", "n")?.max(0) as u64,
            None => 0,
        };
        if fewest.is_none_or(|(n, _)| count < n) {
            fewest = Some((count, i));
        }
    }
    if let Some((_, i)) = fewest {
        // First among equals: `split_driver` sorts stably.
        conditions[..=i].rotate_right(1);
    }
    Ok(())
}

/// The condition worth starting from, if any, and the others, most selective first.
fn split_driver(mut conditions: Vec<Condition>) -> (Option<Condition>, Vec<Condition>) {
    // Stable: among equally selective conditions the first one given drives.
    conditions.sort_by_key(|c| std::cmp::Reverse(c.selectivity));
    let drives = conditions
        .first()
        .is_some_and(|c| c.selectivity > Selectivity::Filter);
    let driver = drives.then(|| conditions.remove(0));
    (driver, conditions)
}

/// ` AND probe…` for each condition.
fn probes_of(conditions: Vec<Condition>) -> (String, Vec<Value>) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for condition in conditions {
        sql.push_str(" AND ");
        sql.push_str(condition.probe_sql());
        values.extend(condition.values);
    }
    (sql, values)
}

/// The resources of one type that a search selects, as `FROM … WHERE …` defining the row
/// `r` (with `r.resource_type` and `r.id`), and its bind values. `scope` is the condition
/// on `resources r` of the searched type (current, undeleted resources, of a compartment);
/// `row_needed` says whether the query reads other columns of `r` (sorts by
/// `_lastUpdated`). When the driving condition has a [`Condition::source`] and nothing
/// needs the row, the query runs on index entries alone: the wide `resources` rows, which
/// hold the content, are read for the page only.
pub fn rows_of_type(
    (scope_sql, scope_values): (&str, Vec<Value>),
    conditions: Vec<Condition>,
    row_needed: bool,
) -> (String, Vec<Value>) {
    let row_needed = row_needed || conditions.iter().any(|c| c.reads_row);
    let (driver, probes) = split_driver(conditions);
    match driver {
        Some(Condition {
            source: Some((source, source_values)),
            ..
        }) if !row_needed => {
            let (probe_sql, probe_values) = probes_of(probes);
            let mut values = source_values;
            values.extend(probe_values);
            let rows = distinct_rows(&format!("SELECT u.resource_type, u.id FROM ({source}) u"));
            (format!("FROM ({rows}) r WHERE 1 = 1{probe_sql}"), values)
        }
        driver => {
            let mut conditions: Vec<Condition> = driver.into_iter().collect();
            conditions.extend(probes);
            let (filter_sql, filter_values) = conjunction(conditions);
            let mut values = scope_values;
            values.extend(filter_values);
            (
                format!("FROM resources r WHERE {scope_sql}{filter_sql}"),
                values,
            )
        }
    }
}

/// Parameters that shape results rather than select resources.
pub const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_sort",
    "_format",
    "_pretty",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_total",
    "_contained",
    "_containedType",
    "_cursor",
];

/// True when `name` (with or without a modifier) is a search or result parameter of
/// `resource_type`; unknown parameters are ignored or refused depending on `Prefer:
/// handling`.
pub fn is_known(resource_type: &str, name: &str) -> bool {
    if name.starts_with("_has:") {
        return true;
    }
    let first = name.split('.').next().unwrap_or(name);
    let code = first.split(':').next().unwrap_or(first);
    RESULT_PARAMETERS.contains(&code)
        || code == "_id"
        || code == "_lastUpdated"
        || SearchParams::get().param(resource_type, code).is_some()
}

/// The condition for one query parameter, or `None` for a result parameter.
pub fn condition(resource_type: &str, name: &str, value: &str) -> FhirResult<Option<Condition>> {
    condition_on(resource_type, name, value, 0, Sight::ALL)
}

/// [`condition`] as seen by a caller: the resources its chains and `_has` look at must be
/// visible to it, or a match would reveal what it cannot see.
pub fn condition_seen(
    resource_type: &str,
    name: &str,
    value: &str,
    sight: Sight<'_>,
) -> FhirResult<Option<Condition>> {
    condition_on(resource_type, name, value, 0, sight)
}

/// [`condition`] on the row at `depth` (`r1`, `r2`, …), for conditions nested in chains.
pub fn condition_at(
    resource_type: &str,
    name: &str,
    value: &str,
    depth: usize,
) -> FhirResult<Option<Condition>> {
    condition_on(resource_type, name, value, depth, Sight::ALL)
}

/// The official Observation `combo-X` parameter, which is exactly `X` or `component-X`,
/// unless a custom SearchParameter replaced it. Its values are not indexed separately (see
/// `store::index`), so searches by it are answered from the two parameters it unites.
pub fn is_official_combo(resource_type: &str, code: &str) -> bool {
    resource_type == "Observation"
        && code.starts_with("combo-")
        && SearchParams::get()
            .param(resource_type, code)
            .is_some_and(|d| d.url.starts_with("http://hl7.org/fhir/SearchParameter/"))
}

/// `combo-X[:modifier]=value` as `X=value OR component-X=value` (AND for the negative
/// forms `:not` and `:missing=true`: neither may match).
fn combo_condition(
    resource_type: &str,
    name: &str,
    value: &str,
    depth: usize,
    sight: Sight<'_>,
) -> FhirResult<Option<Condition>> {
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    if !is_official_combo(resource_type, code) {
        return Ok(None);
    }
    let base = &code["combo-".len()..];
    let with_modifier = |c: &str| match modifier {
        Some(m) => format!("{c}:{m}"),
        None => c.to_string(),
    };
    let own = condition_on(resource_type, &with_modifier(base), value, depth, sight)?;
    let component = condition_on(
        resource_type,
        &with_modifier(&format!("component-{base}")),
        value,
        depth,
        sight,
    )?;
    let (Some(own), Some(component)) = (own, component) else {
        return Ok(None);
    };
    let negative = modifier == Some("not") || (modifier == Some("missing") && value == "true");
    let joiner = if negative { " AND " } else { " OR " };
    Ok(Some(own.combine(component, joiner)))
}

/// Chains and `_has` nest at most this deep.
const MAX_DEPTH: usize = 4;

/// The alias of the `resources` row a condition at `depth` applies to (`r` at the top).
pub fn owner_alias(depth: usize) -> String {
    if depth == 0 {
        "r".to_string()
    } else {
        format!("r{depth}")
    }
}

/// [`condition`] for the resource aliased by [`owner_alias`]`(depth)`.
fn condition_on(
    resource_type: &str,
    name: &str,
    value: &str,
    depth: usize,
    sight: Sight<'_>,
) -> FhirResult<Option<Condition>> {
    if depth > MAX_DEPTH {
        return Err(FhirError::bad_request(format!(
            "{name}: chains and _has may nest at most {MAX_DEPTH} levels"
        )));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        return has_condition(resource_type, rest, value, depth, sight).map(Some);
    }
    if let Some((reference, chained)) = name.split_once('.') {
        return chain_condition(resource_type, reference, chained, value, depth, sight).map(Some);
    }
    if let Some(combo) = combo_condition(resource_type, name, value, depth, sight)? {
        return Ok(Some(combo));
    }
    let owner = owner_alias(depth);
    let owner = owner.as_str();
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    if RESULT_PARAMETERS.contains(&code) {
        return Ok(None);
    }
    if value.is_empty() {
        return Err(FhirError::bad_request(format!(
            "the search parameter {name} has no value"
        )));
    }
    if code == "_id" {
        return Ok(Some(id_condition(owner, modifier, value)?));
    }
    if code == "_lastUpdated" {
        return Ok(Some(last_updated_condition(owner, modifier, value)?));
    }
    let definition = SearchParams::get()
        .param(resource_type, code)
        .ok_or_else(|| {
            FhirError::bad_request(format!(
                "{code:?} is not a search parameter of {resource_type}"
            ))
        })?;
    let param_type = definition.param_type;
    if let Some(reason) = unsupported_parameter(definition) {
        return Err(not_supported(format!("{code}: {reason}")));
    }
    if modifier == Some("missing") {
        return Ok(Some(missing_condition(
            owner,
            resource_type,
            param_type,
            code,
            value,
        )?));
    }
    let alternatives = split_values(value);
    check_alternatives(name, alternatives.len())?;
    if param_type == ParamType::Composite {
        return composite_condition(owner, resource_type, definition, modifier, &alternatives)
            .map(Some);
    }
    if param_type == ParamType::String && modifier == Some("text") {
        return string_text_condition(owner, resource_type, code, &alternatives).map(Some);
    }
    let (table, alias) = table_of(param_type).ok_or_else(|| {
        not_supported(format!(
            "searching by the {} parameter {code} is not supported",
            param_type.as_str()
        ))
    })?;
    let mut parts = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut negate = false;
    match (param_type, modifier) {
        (_, None) => {
            for alternative in &alternatives {
                parts.push(value_match(
                    param_type,
                    code,
                    alias,
                    Layout::Typed,
                    alternative,
                    &mut values,
                )?);
            }
        }
        (ParamType::Token, Some("not")) => {
            negate = true;
            for alternative in &alternatives {
                parts.push(token_match(alias, alternative, &mut values));
            }
        }
        (ParamType::Token, Some("text")) => {
            // `display` holds Coding.display and CodeableConcept.text, normalized.
            for alternative in &alternatives {
                parts.push(format!(
                    "{alias}.display IS NOT NULL AND {}",
                    words_match(&format!("{alias}.display"), name, alternative, &mut values)?
                ));
            }
        }
        (ParamType::Token, Some("of-type")) => {
            for alternative in &alternatives {
                parts.push(of_type_match(alias, name, alternative, &mut values)?);
            }
        }
        (ParamType::Token, Some(m @ ("in" | "not-in"))) => {
            negate = m == "not-in";
            for alternative in &alternatives {
                parts.push(value_set_match(alias, name, alternative, &mut values)?);
            }
        }
        (ParamType::Token, Some(m @ ("above" | "below"))) => {
            return Err(not_supported(format!(
                "{name}: :{m} needs subsumption (is-a) testing against a terminology server, \
                 which this server does not have; list the codes of the hierarchy instead \
                 ({code}=system|code1,system|code2) or use {code}:in with a value set"
            )));
        }
        (ParamType::String, Some(m @ ("exact" | "contains"))) => {
            for alternative in &alternatives {
                if m == "exact" {
                    parts.push(format!("{alias}.exact = ?"));
                    values.push(alternative.as_str().into());
                } else {
                    parts.push(format!("{alias}.normalized LIKE ? ESCAPE '\\'"));
                    values.push(format!("%{}%", escape_like(&normalize(alternative))).into());
                }
            }
        }
        (ParamType::Reference, Some("identifier")) => {
            let indexed_param = format!("{code}:identifier");
            return Ok(Some(exists(
                owner,
                "search_token",
                "t",
                resource_type,
                &indexed_param,
                alternatives
                    .iter()
                    .fold((Vec::new(), Vec::new()), |(mut p, mut v), a| {
                        p.push(token_match("t", a, &mut v));
                        (p, v)
                    }),
                false,
                Selectivity::Narrow,
            )));
        }
        (ParamType::Reference, Some(m @ ("above" | "below"))) => {
            return Err(not_supported(format!(
                "{name}: :{m} on references (resources in a hierarchy, such as Location.partOf) \
                 is not supported; search each level with {code}=Type/id"
            )));
        }
        (ParamType::Reference, Some(target_type))
            if crate::fhir::definitions::Definitions::get().is_resource_type(target_type) =>
        {
            for alternative in &alternatives {
                reference_match(
                    alias,
                    alternative,
                    Some(target_type),
                    &mut parts,
                    &mut values,
                );
            }
        }
        (ParamType::Uri, Some(m @ ("above" | "below"))) => {
            for alternative in &alternatives {
                if alternative.starts_with("urn:") {
                    return Err(FhirError::bad_request(format!(
                        "{name}={alternative}: :above and :below apply to URLs, not to URNs \
                         such as OIDs; search {code}={alternative} for the exact value"
                    )));
                }
                if m == "below" {
                    // The stored URL starts with the value.
                    parts.push(format!("{alias}.value LIKE ? ESCAPE '\\'"));
                    values.push(format!("{}%", escape_like(alternative)).into());
                } else {
                    // The stored URL is the value or a prefix of it.
                    parts.push(format!(
                        "{alias}.value <> '' AND {alias}.value = SUBSTR(?, 1, LENGTH({alias}.value))"
                    ));
                    values.push(alternative.as_str().into());
                }
            }
        }
        (_, Some(modifier)) => {
            return Err(not_supported(format!(
                "the modifier :{modifier} is not supported on the {} parameter {code}; {}",
                param_type.as_str(),
                supported_modifiers(param_type)
            )))
        }
    }
    Ok(Some(exists(
        owner,
        table,
        alias,
        resource_type,
        code,
        (parts, values),
        negate,
        selectivity_of(param_type, code, modifier),
    )))
}

/// How selective a plain or modified (but not negated) parameter of `param_type` is.
fn selectivity_of(param_type: ParamType, code: &str, modifier: Option<&str>) -> Selectivity {
    match (param_type, modifier) {
        (ParamType::Reference, _) => Selectivity::Narrow,
        (ParamType::Token, Some("of-type")) => Selectivity::Narrow,
        (ParamType::Token, None) if code.ends_with("identifier") => Selectivity::Narrow,
        (ParamType::Token, Some("text")) | (ParamType::String, Some("contains")) => {
            Selectivity::Filter
        }
        (ParamType::Token | ParamType::String, _) => Selectivity::Broad,
        (ParamType::Uri, None) => Selectivity::Broad,
        _ => Selectivity::Range,
    }
}

fn not_supported(message: String) -> FhirError {
    FhirError::not_supported(StatusCode::BAD_REQUEST, message)
}

/// Why a parameter of the registry cannot be searched, if it cannot.
fn unsupported_parameter(definition: &SearchParamDef) -> Option<&'static str> {
    if definition.param_type == ParamType::Special {
        return Some(
            "special parameters (near: Location.position) need a geographic index, which this \
             server does not have",
        );
    }
    if definition.expression.is_none() {
        return Some(match &*definition.code {
            "_text" | "_content" => {
                "full-text search is not supported; search the string parameters (with \
                 :contains or :text) or the token parameters with :text"
            }
            "_query" => "named queries are not supported",
            _ => "this parameter has no expression to index, so it cannot be searched",
        });
    }
    None
}

/// The modifiers this server supports, per parameter type, for error messages.
fn supported_modifiers(param_type: ParamType) -> &'static str {
    match param_type {
        ParamType::Token => "supported: :missing, :not, :text, :of-type, :in, :not-in",
        ParamType::String => "supported: :missing, :exact, :contains, :text",
        ParamType::Reference => "supported: :missing, :identifier and a resource type (:Patient)",
        ParamType::Uri => "supported: :missing, :above, :below",
        ParamType::Composite => "composite parameters take only :missing",
        _ => "supported: :missing (compare with a prefix such as ge or lt instead)",
    }
}

/// Which index a value is matched against: the per-type table of the parameter, or the
/// component rows of `search_composite` (where dates are in `date_low`/`date_high` and
/// URIs in `url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Typed,
    Composite,
}

/// The condition for one plain value (no modifier) of a parameter of type `param_type`,
/// on the index row aliased `alias`.
fn value_match(
    param_type: ParamType,
    code: &str,
    alias: &str,
    layout: Layout,
    text: &str,
    values: &mut Vec<Value>,
) -> FhirResult<String> {
    Ok(match param_type {
        ParamType::Token => token_match(alias, text, values),
        ParamType::String => {
            values.push(format!("{}%", escape_like(&normalize(text))).into());
            format!("{alias}.normalized LIKE ? ESCAPE '\\'")
        }
        ParamType::Date => {
            let (prefix, date) = split_prefix(text);
            let (low, high) = parse_date_range(date).ok_or_else(|| {
                FhirError::bad_request(format!(
                    "{code}={text} is not a date such as 2024-03-01 or 2024-03-01T10:00:00Z \
                     (with an optional prefix such as ge)"
                ))
            })?;
            let (low_col, high_col) = match layout {
                Layout::Typed => ("low", "high"),
                Layout::Composite => ("date_low", "date_high"),
            };
            date_match(alias, prefix, low_col, high_col, (low, high), values)?
        }
        ParamType::Number => {
            let (prefix, number) = split_prefix(text);
            let range = decimal_range(code, number)?;
            number_match(alias, prefix, range, values)?
        }
        ParamType::Quantity => quantity_match(code, alias, text, values)?,
        ParamType::Reference => {
            let mut parts = Vec::new();
            reference_match(alias, text, None, &mut parts, values);
            parts.join(" OR ")
        }
        ParamType::Uri => {
            let column = match layout {
                Layout::Typed => "value",
                Layout::Composite => "url",
            };
            values.push(text.into());
            format!("{alias}.{column} = ?")
        }
        ParamType::Composite | ParamType::Special => {
            return Err(not_supported(format!(
                "{code}: a {} value cannot be searched here",
                param_type.as_str()
            )))
        }
    })
}

/// `[prefix]number[|system|code]`, on the columns `low`/`high`, `system`, `code`, `unit`.
fn quantity_match(
    code: &str,
    alias: &str,
    text: &str,
    values: &mut Vec<Value>,
) -> FhirResult<String> {
    let mut pieces = split_unescaped(text, '|').into_iter();
    let number = pieces.next().unwrap_or_default();
    let system = pieces.next().filter(|s| !s.is_empty());
    let unit = pieces.next().filter(|s| !s.is_empty());
    let (prefix, number) = split_prefix(&number);
    let range = decimal_range(code, number)?;
    let mut part = number_match(alias, prefix, range, values)?;
    match (system, unit) {
        (Some(system), Some(unit)) => {
            part.push_str(&format!(" AND {alias}.system = ? AND {alias}.code = ?"));
            values.push(system.into());
            values.push(unit.into());
        }
        (None, Some(unit)) => {
            part.push_str(&format!(" AND ({alias}.code = ? OR {alias}.unit = ?)"));
            values.push(unit.clone().into());
            values.push(unit.into());
        }
        (Some(system), None) => {
            part.push_str(&format!(" AND {alias}.system = ?"));
            values.push(system.into());
        }
        (None, None) => {}
    }
    Ok(part)
}

/// The words of a `:text` value, normalized like indexed strings.
fn text_words(name: &str, text: &str) -> FhirResult<Vec<String>> {
    let words: Vec<String> = normalize(text)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if words.is_empty() {
        return Err(FhirError::bad_request(format!(
            "{name}={text:?} has no words to search for"
        )));
    }
    Ok(words)
}

/// Every word of `text` starts a word of `column`, which holds normalized text:
/// `blood press` and `pressure` both match "blood pressure panel".
fn words_match(
    column: &str,
    name: &str,
    text: &str,
    values: &mut Vec<Value>,
) -> FhirResult<String> {
    let parts: Vec<String> = text_words(name, text)?
        .iter()
        .map(|word| word_match(column, word, values))
        .collect();
    Ok(parts.join(" AND "))
}

/// `word` starts `column` or one of its words.
fn word_match(column: &str, word: &str, values: &mut Vec<Value>) -> String {
    let escaped = escape_like(word);
    values.push(format!("{escaped}%").into());
    values.push(format!("% {escaped}%").into());
    format!("({column} LIKE ? ESCAPE '\\' OR {column} LIKE ? ESCAPE '\\')")
}

/// String `:text` (R4: "advanced text handling", left to the server): every word of the
/// value starts a word of some value of the parameter, so `name:text=peter chalm` finds
/// Peter James Chalmers, whose name parts are indexed apart. Case- and
/// accent-insensitive like the default string search; words may come in any order.
fn string_text_condition(
    owner: &str,
    resource_type: &str,
    code: &str,
    alternatives: &[String],
) -> FhirResult<Condition> {
    let name = format!("{code}:text");
    let mut alternative_sql = Vec::with_capacity(alternatives.len());
    let mut alternative_probes = Vec::with_capacity(alternatives.len());
    let mut values: Vec<Value> = Vec::new();
    for alternative in alternatives {
        let mut each = Vec::new();
        let mut each_probe = Vec::new();
        for word in text_words(&name, alternative)? {
            values.push(resource_type.into());
            values.push(code.into());
            let matched = word_match("s.normalized", &word, &mut values);
            each.push(format!(
                "{owner}.id IN (SELECT s.resource_id FROM search_string s \
                 WHERE s.resource_type = ? AND s.param = ? AND {matched})"
            ));
            each_probe.push(format!(
                "EXISTS (SELECT 1 FROM search_string s WHERE s.resource_type = ? \
                 AND s.param = ? AND s.resource_id = {owner}.id AND {matched})"
            ));
        }
        alternative_sql.push(format!("({})", each.join(" AND ")));
        alternative_probes.push(format!("({})", each_probe.join(" AND ")));
    }
    Ok(Condition {
        sql: format!("({})", alternative_sql.join(" OR ")),
        values,
        probe: Some(format!("({})", alternative_probes.join(" OR "))),
        selectivity: Selectivity::Filter,
        source: None,
        reads_row: false,
    })
}

/// Token `:of-type`: `[type system]|[type code]|[identifier value]`, matched against an
/// Identifier's type (its first coding, as indexed) and value.
fn of_type_match(
    alias: &str,
    name: &str,
    text: &str,
    values: &mut Vec<Value>,
) -> FhirResult<String> {
    match split_unescaped(text, '|').as_slice() {
        [system, code, value] if !system.is_empty() && !code.is_empty() && !value.is_empty() => {
            values.push(system.as_str().into());
            values.push(code.as_str().into());
            values.push(value.as_str().into());
            Ok(format!(
                "{alias}.type_system = ? AND {alias}.type_code = ? AND {alias}.code = ?"
            ))
        }
        _ => Err(FhirError::bad_request(format!(
            "{name}={text}: :of-type takes the identifier type's system and code and the \
             identifier value, all three separated by |, e.g. \
             http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345"
        ))),
    }
}

/// Most codes a value set used with `:in`/`:not-in` may expand to.
const MAX_VALUE_SET_CODES: usize = 2000;

/// Token `:in` / `:not-in`: the token is one of the codes of the value set `url` (system
/// and code; a token without a system matches by code alone, as `code` elements without
/// an implicit system are indexed). Value sets are expanded from the R4 definitions the
/// server ships; others would need a terminology server.
fn value_set_match(
    alias: &str,
    name: &str,
    url: &str,
    values: &mut Vec<Value>,
) -> FhirResult<String> {
    let Some(set) = crate::fhir::definitions::Definitions::get().required_codes(url) else {
        return Err(not_supported(format!(
            "{name}={url}: the value set {url} cannot be expanded by this server, which \
             expands the value sets of the FHIR R4 specification whose codes it can enumerate \
             (value sets over LOINC or SNOMED CT, and stored ValueSet resources, need a \
             terminology server); list the codes instead, e.g. code=system|code1,system|code2"
        )));
    };
    if set.len() > MAX_VALUE_SET_CODES {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::TooCostly,
            format!(
                "{name}={url}: the value set has {} codes; :in and :not-in take value sets of \
                 at most {MAX_VALUE_SET_CODES} codes",
                set.len()
            ),
        ));
    }
    if set.is_empty() {
        return Ok("1 = 0".to_string());
    }
    let mut by_system: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut all_codes: BTreeSet<&str> = BTreeSet::new();
    for (system, code) in set.iter() {
        by_system.entry(system).or_default().push(code);
        all_codes.insert(code);
    }
    let mut parts = Vec::with_capacity(by_system.len() + 1);
    for (system, codes) in &by_system {
        values.push((*system).into());
        values.extend(codes.iter().map(|c| Value::from(*c)));
        parts.push(format!(
            "({alias}.system = ? AND {alias}.code IN ({}))",
            vec!["?"; codes.len()].join(", ")
        ));
    }
    values.extend(all_codes.iter().map(|c| Value::from(*c)));
    parts.push(format!(
        "({alias}.system IS NULL AND {alias}.code IN ({}))",
        vec!["?"; all_codes.len()].join(", ")
    ));
    Ok(parts.join(" OR "))
}

/// A composite parameter, `code-value-quantity=http://loinc.org|8480-6$gt100`: each
/// `$`-separated part matches its component, and all of them the *same* combination (the
/// same Observation.component, say). The component rows of `search_composite` are joined
/// on their combination number, one alias per component.
fn composite_condition(
    owner: &str,
    resource_type: &str,
    definition: &SearchParamDef,
    modifier: Option<&str>,
    alternatives: &[String],
) -> FhirResult<Condition> {
    let code = &*definition.code;
    if let Some(modifier) = modifier {
        return Err(not_supported(format!(
            "the modifier :{modifier} is not supported on the composite parameter {code}; \
             composite parameters take only :missing"
        )));
    }
    let types = definition
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| match c.param_type {
            Some(ParamType::Composite | ParamType::Special) | None => Err(not_supported(format!(
                "{code}: component {} ({}) has no searchable type",
                i + 1,
                c.definition
            ))),
            Some(t) => Ok(t),
        })
        .collect::<FhirResult<Vec<ParamType>>>()?;
    if types.is_empty() {
        return Err(not_supported(format!(
            "{code}: the composite parameter has no components"
        )));
    }
    let syntax = types
        .iter()
        .map(|t| match t {
            ParamType::Token => "[system]|[code]",
            ParamType::Quantity => "[prefix][number]|[system]|[unit]",
            ParamType::Number => "[prefix][number]",
            ParamType::Date => "[prefix][date]",
            ParamType::String => "[text]",
            ParamType::Reference => "[type]/[id]",
            _ => "[uri]",
        })
        .collect::<Vec<_>>()
        .join("$");
    let mut parts = Vec::with_capacity(alternatives.len());
    let mut values: Vec<Value> = vec![resource_type.into(), code.into()];
    for alternative in alternatives {
        let pieces = split_unescaped(alternative, '$');
        if pieces.len() != types.len() {
            return Err(FhirError::bad_request(format!(
                "{code}={alternative}: a value of {code} has {} parts separated by $: {syntax} \
                 (e.g. http://loinc.org|8480-6$gt100); write a literal $ as \\$",
                types.len()
            )));
        }
        let mut each = Vec::with_capacity(types.len());
        for (i, (piece, param_type)) in pieces.iter().zip(&types).enumerate() {
            if piece.is_empty() {
                return Err(FhirError::bad_request(format!(
                    "{code}={alternative}: part {} of {syntax} is empty",
                    i + 1
                )));
            }
            let alias = format!("k{i}");
            let matched = value_match(
                *param_type,
                code,
                &alias,
                Layout::Composite,
                piece,
                &mut values,
            )?;
            each.push(format!("({matched})"));
        }
        parts.push(format!("({})", each.join(" AND ")));
    }
    let joins: String = (1..types.len())
        .map(|i| {
            format!(
                " JOIN search_composite k{i} ON k{i}.resource_type = k0.resource_type \
                 AND k{i}.resource_id = k0.resource_id AND k{i}.param = k0.param \
                 AND k{i}.combo = k0.combo AND k{i}.component = {i}"
            )
        })
        .collect();
    let alternatives = parts.join(" OR ");
    Ok(Condition {
        sql: format!(
            "{owner}.id IN (SELECT k0.resource_id FROM search_composite k0{joins} \
             WHERE k0.resource_type = ? AND k0.param = ? AND k0.component = 0 AND ({alternatives}))"
        ),
        values,
        probe: Some(format!(
            "EXISTS (SELECT 1 FROM search_composite k0{joins} WHERE k0.resource_type = ? \
             AND k0.param = ? AND k0.resource_id = {owner}.id AND k0.component = 0 \
             AND ({alternatives}))"
        )),
        selectivity: Selectivity::Range,
        source: None,
        reads_row: false,
    })
}

/// The number of `?` placeholders in an SQL fragment built here (values are always bound,
/// never written into the SQL, so no `?` appears inside a quoted string).
fn placeholders(sql: &str) -> usize {
    sql.matches('?').count()
}

/// `select` (of `resource_type, id`) without duplicate rows, for a
/// [`Condition::source`].
///
/// A UNION, not DISTINCT: SQLite plans a DISTINCT query to read an index already in the
/// order of the distinct columns, and for `resource_id` that is a whole per-resource
/// index, scanned instead of seeking the few matching entries. The branches of a UNION
/// are planned each on its own, then merged without duplicates.
pub fn distinct_rows(select: &str) -> String {
    format!("{select} UNION SELECT NULL, NULL WHERE 1 = 0")
}

/// `owner.id IN (SELECT resource_id FROM table WHERE param = ? AND (p1 OR p2…))`.
/// As the probe, `EXISTS (… WHERE resource_type = ? AND param = ? AND resource_id =
/// owner.id AND (p1 OR p2…))`, a seek in the per-resource index of `table`.
#[allow(clippy::too_many_arguments)]
fn exists(
    owner: &str,
    table: &str,
    alias: &str,
    resource_type: &str,
    param: &str,
    (parts, part_values): (Vec<String>, Vec<Value>),
    negate: bool,
    selectivity: Selectivity,
) -> Condition {
    let alternatives = parts
        .iter()
        .map(|p| format!("({p})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let mut values: Vec<Value> = vec![resource_type.into(), param.into()];
    values.extend(part_values);
    let not = if negate { "NOT " } else { "" };
    let matching = |alternatives: &str| {
        format!(
            "FROM {table} {alias} WHERE {alias}.resource_type = ? AND {alias}.param = ? \
             AND ({alternatives})"
        )
    };
    // The source seeks each alternative apart: one SELECT per alternative (an OR of
    // several would make SQLite read every entry of the parameter).
    let source = (!negate).then(|| {
        let mut selects = Vec::with_capacity(parts.len());
        let mut source_values = Vec::with_capacity(values.len());
        let mut rest = &values[2..];
        for part in &parts {
            let (own, after) = rest.split_at(placeholders(part).min(rest.len()));
            rest = after;
            selects.push(format!(
                "SELECT {alias}.resource_type, {alias}.resource_id AS id {}",
                matching(part)
            ));
            source_values.extend(values[..2].iter().cloned());
            source_values.extend(own.iter().cloned());
        }
        debug_assert!(rest.is_empty(), "placeholders and values disagree");
        (selects.join(" UNION ALL "), source_values)
    });
    Condition {
        sql: format!(
            "{owner}.id {not}IN (SELECT {alias}.resource_id {})",
            matching(&alternatives)
        ),
        source,
        reads_row: false,
        values,
        probe: Some(format!(
            "{not}EXISTS (SELECT 1 FROM {table} {alias} WHERE {alias}.resource_type = ? \
             AND {alias}.param = ? AND {alias}.resource_id = {owner}.id AND ({alternatives}))"
        )),
        selectivity: if negate {
            Selectivity::Filter
        } else {
            selectivity
        },
    }
}

/// A chained parameter, `subject:Patient.name=peter`: some resource this one references
/// through `reference` matches `chained=value` (which may chain further).
fn chain_condition(
    resource_type: &str,
    reference: &str,
    chained: &str,
    value: &str,
    depth: usize,
    sight: Sight<'_>,
) -> FhirResult<Condition> {
    let (code, type_modifier) = match reference.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (reference, None),
    };
    let definition = SearchParams::get()
        .param(resource_type, code)
        .filter(|d| d.param_type == ParamType::Reference)
        .ok_or_else(|| {
            FhirError::bad_request(format!(
                "{reference}.{chained}: {code:?} is not a reference search parameter of {resource_type}"
            ))
        })?;
    let targets: Vec<String> = match type_modifier {
        Some(target) => {
            if !definition.targets.iter().any(|t| t == target) {
                return Err(FhirError::bad_request(format!(
                    "{reference}.{chained}: {code} of {resource_type} cannot refer to a {target}"
                )));
            }
            vec![target.to_string()]
        }
        None => definition.targets.clone(),
    };
    let owner = owner_alias(depth);
    let target = owner_alias(depth + 1);
    let mut alternatives = Vec::new();
    let mut values: Vec<Value> = vec![resource_type.into(), code.into()];
    let mut last_error = None;
    let mut probes = Vec::new();
    // Some target is one the caller cannot see.
    let mut hidden = false;
    for target_type in &targets {
        // Targets without the chained parameter cannot match; skip them.
        // A target the caller cannot see never matches; one it sees in part only matches
        // where it sees it.
        let visible = match sight.visible(target_type, depth + 1) {
            Visible::Nothing => {
                hidden = true;
                continue;
            }
            Visible::All => None,
            Visible::Where(visible) => Some(visible),
        };
        match condition_on(target_type, chained, value, depth + 1, sight) {
            Ok(Some(inner)) => {
                let inner = match visible {
                    Some(visible) => inner.combine(visible, " AND "),
                    None => inner,
                };
                // Standalone: the matching targets are found first, from their index.
                alternatives.push(format!(
                    "(f{depth}.target_type = ? AND f{depth}.target_id IN (SELECT {target}.id \
                     FROM resources {target} WHERE {target}.resource_type = ? \
                     AND {target}.deleted = ? AND {}))",
                    inner.sql
                ));
                // Probe: the owner's references are followed and their targets tested.
                probes.push(format!(
                    "(f{depth}.target_type = ? AND EXISTS (SELECT 1 FROM resources {target} \
                     WHERE {target}.resource_type = ? AND {target}.id = f{depth}.target_id \
                     AND {target}.deleted = ? AND {}))",
                    inner.probe_sql()
                ));
                values.push(target_type.as_str().into());
                values.push(target_type.as_str().into());
                values.push(false.into());
                values.extend(inner.values);
            }
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
    }
    if alternatives.is_empty() && last_error.is_none() && hidden {
        // Only targets the caller cannot see: nothing matches, as if none existed.
        return Ok(Condition::plain(
            "1 = 0".into(),
            Vec::new(),
            Selectivity::Filter,
        ));
    }
    if alternatives.is_empty() {
        return Err(last_error.unwrap_or_else(|| {
            FhirError::bad_request(format!(
                "{reference}.{chained}: no type {code} refers to has that parameter"
            ))
        }));
    }
    Ok(Condition {
        sql: format!(
            "{owner}.id IN (SELECT f{depth}.resource_id FROM search_reference f{depth} \
             WHERE f{depth}.resource_type = ? AND f{depth}.param = ? AND ({}))",
            alternatives.join(" OR ")
        ),
        values,
        probe: Some(format!(
            "EXISTS (SELECT 1 FROM search_reference f{depth} WHERE f{depth}.resource_type = ? \
             AND f{depth}.param = ? AND f{depth}.resource_id = {owner}.id AND ({}))",
            probes.join(" OR ")
        )),
        selectivity: Selectivity::Linked,
        source: None,
        reads_row: false,
    })
}

/// Reverse chaining, `_has:Observation:patient:code=1234-5`: some Observation whose
/// `patient` refers to this resource matches `code=1234-5` (which may be another `_has`).
fn has_condition(
    resource_type: &str,
    rest: &str,
    value: &str,
    depth: usize,
    sight: Sight<'_>,
) -> FhirResult<Condition> {
    let mut parts = rest.splitn(3, ':');
    let (Some(source_type), Some(reference), Some(inner_name)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(FhirError::bad_request(format!(
            "_has:{rest} must have the form _has:Type:reference:parameter, e.g. _has:Observation:patient:code"
        )));
    };
    if !crate::fhir::definitions::Definitions::get().is_resource_type(source_type) {
        return Err(FhirError::bad_request(format!(
            "_has:{rest}: {source_type:?} is not a resource type"
        )));
    }
    let is_reference = SearchParams::get()
        .param(source_type, reference)
        .is_some_and(|d| d.param_type == ParamType::Reference);
    if !is_reference {
        return Err(FhirError::bad_request(format!(
            "_has:{rest}: {reference:?} is not a reference search parameter of {source_type}"
        )));
    }
    let inner =
        condition_on(source_type, inner_name, value, depth + 1, sight)?.ok_or_else(|| {
            FhirError::bad_request(format!(
                "_has:{rest}: {inner_name} does not select resources"
            ))
        })?;
    // Only sources the caller can see count (else a match would reveal one it cannot).
    let inner = match sight.visible(source_type, depth + 1) {
        Visible::All => inner,
        Visible::Where(visible) => inner.combine(visible, " AND "),
        Visible::Nothing => Condition::plain("1 = 0".into(), Vec::new(), Selectivity::Filter),
    };
    let owner = owner_alias(depth);
    let source = owner_alias(depth + 1);
    let mut values: Vec<Value> = vec![
        source_type.into(),
        reference.into(),
        resource_type.into(),
        false.into(),
    ];
    values.extend(inner.values.iter().cloned());
    Ok(Condition {
        sql: format!(
            "{owner}.id IN (SELECT h{depth}.target_id FROM search_reference h{depth} \
             JOIN resources {source} ON {source}.resource_type = h{depth}.resource_type \
             AND {source}.id = h{depth}.resource_id \
             WHERE h{depth}.resource_type = ? AND h{depth}.param = ? AND h{depth}.target_type = ? \
             AND {source}.deleted = ? AND {})",
            inner.sql
        ),
        values,
        probe: Some(format!(
            "EXISTS (SELECT 1 FROM search_reference h{depth} \
             JOIN resources {source} ON {source}.resource_type = h{depth}.resource_type \
             AND {source}.id = h{depth}.resource_id \
             WHERE h{depth}.resource_type = ? AND h{depth}.param = ? AND h{depth}.target_type = ? \
             AND h{depth}.target_id = {owner}.id AND {source}.deleted = ? AND {})",
            inner.probe_sql()
        )),
        selectivity: Selectivity::Linked,
        source: None,
        reads_row: false,
    })
}

fn table_of(param_type: ParamType) -> Option<(&'static str, &'static str)> {
    Some(match param_type {
        ParamType::Token => ("search_token", "t"),
        ParamType::String => ("search_string", "s"),
        ParamType::Date => ("search_date", "d"),
        ParamType::Reference => ("search_reference", "f"),
        ParamType::Number => ("search_number", "n"),
        ParamType::Quantity => ("search_quantity", "q"),
        ParamType::Uri => ("search_uri", "u"),
        ParamType::Composite | ParamType::Special => return None,
    })
}

fn token_match(alias: &str, value: &str, values: &mut Vec<Value>) -> String {
    match split_unescaped(value, '|').as_slice() {
        [system, code] if system.is_empty() => {
            values.push(code.clone().into());
            format!("{alias}.system IS NULL AND {alias}.code = ?")
        }
        [system, code] if code.is_empty() => {
            values.push(system.clone().into());
            format!("{alias}.system = ?")
        }
        [system, code, ..] => {
            values.push(system.clone().into());
            values.push(code.clone().into());
            format!("{alias}.system = ? AND {alias}.code = ?")
        }
        // One part (split always yields at least one).
        parts => {
            values.push(parts.first().cloned().unwrap_or_default().into());
            format!("{alias}.code = ?")
        }
    }
}

fn reference_match(
    alias: &str,
    value: &str,
    target_type: Option<&str>,
    parts: &mut Vec<String>,
    values: &mut Vec<Value>,
) {
    let value = value.split('|').next().unwrap_or(value);
    if value.contains("://") || value.starts_with("urn:") {
        // Absolute: the literal URL, or the type/id at its end when it names a resource.
        let segments: Vec<&str> = value.trim_end_matches('/').rsplit('/').take(2).collect();
        if let [id, resource_type] = segments.as_slice() {
            if crate::fhir::definitions::Definitions::get().is_resource_type(resource_type) {
                parts.push(format!(
                    "{alias}.url = ? OR ({alias}.target_type = ? AND {alias}.target_id = ?)"
                ));
                values.push(value.into());
                values.push((*resource_type).into());
                values.push((*id).into());
                return;
            }
        }
        parts.push(format!("{alias}.url = ?"));
        values.push(value.into());
        return;
    }
    match value.split_once('/') {
        Some((resource_type, id)) => {
            parts.push(format!("{alias}.target_type = ? AND {alias}.target_id = ?"));
            values.push(resource_type.into());
            values.push(id.split('/').next().unwrap_or(id).into());
        }
        None => match target_type {
            Some(resource_type) => {
                parts.push(format!("{alias}.target_type = ? AND {alias}.target_id = ?"));
                values.push(resource_type.into());
                values.push(value.into());
            }
            None => {
                parts.push(format!("{alias}.target_id = ?"));
                values.push(value.into());
            }
        },
    }
}

/// Most comma-separated values one parameter may carry (each becomes a bind value).
const MAX_ALTERNATIVES: usize = 500;

fn check_alternatives(name: &str, count: usize) -> FhirResult<()> {
    if count > MAX_ALTERNATIVES {
        return Err(FhirError::bad_request(format!(
            "{name} has {count} values; at most {MAX_ALTERNATIVES} are allowed in one parameter"
        )));
    }
    Ok(())
}

fn id_condition(owner: &str, modifier: Option<&str>, value: &str) -> FhirResult<Condition> {
    if let Some(modifier) = modifier {
        return Err(FhirError::bad_request(format!(
            "the modifier :{modifier} is not supported on _id"
        )));
    }
    let ids = split_values(value);
    check_alternatives("_id", ids.len())?;
    Ok(Condition::plain(
        format!("{owner}.id IN ({})", vec!["?"; ids.len()].join(", ")),
        ids.into_iter().map(Value::from).collect(),
        Selectivity::Single,
    ))
}

fn last_updated_condition(
    owner: &str,
    modifier: Option<&str>,
    value: &str,
) -> FhirResult<Condition> {
    if let Some(modifier) = modifier {
        return Err(FhirError::bad_request(format!(
            "the modifier :{modifier} is not supported on _lastUpdated"
        )));
    }
    let mut parts = Vec::new();
    let mut values = Vec::new();
    for alternative in split_values(value) {
        let (prefix, text) = split_prefix(&alternative);
        let (low, high) = parse_date_range(text).ok_or_else(|| {
            FhirError::bad_request(format!(
                "_lastUpdated={alternative} is not a date or instant"
            ))
        })?;
        // A version's lastUpdated is a point in time: its range is that microsecond.
        parts.push(date_match(
            owner,
            prefix,
            "last_updated",
            "last_updated",
            (low, high),
            &mut values,
        )?);
    }
    Ok(Condition {
        reads_row: true,
        ..Condition::plain(
            format!(
                "({})",
                parts
                    .iter()
                    .map(|p| format!("({p})"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
            values,
            Selectivity::Range,
        )
    })
}

fn missing_condition(
    owner: &str,
    resource_type: &str,
    param_type: ParamType,
    code: &str,
    value: &str,
) -> FhirResult<Condition> {
    let missing = match value {
        "true" => true,
        "false" => false,
        other => {
            return Err(FhirError::bad_request(format!(
                "{code}:missing takes true or false, not {other:?}"
            )))
        }
    };
    let (table, alias) = match param_type {
        ParamType::Composite => ("search_composite", "k"),
        other => table_of(other)
            .ok_or_else(|| not_supported(format!("{code}:missing is not supported")))?,
    };
    let mut tables = vec![(table, alias, code.to_string())];
    if param_type == ParamType::Reference {
        // A reference given only by its identifier is present too.
        tables.push(("search_token", "t", format!("{code}:identifier")));
    }
    let mut present = Vec::new();
    let mut probes = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    for (table, alias, param) in tables {
        present.push(format!(
            "{owner}.id IN (SELECT {alias}.resource_id FROM {table} {alias} \
             WHERE {alias}.resource_type = ? AND {alias}.param = ?)"
        ));
        probes.push(format!(
            "EXISTS (SELECT 1 FROM {table} {alias} WHERE {alias}.resource_type = ? \
             AND {alias}.param = ? AND {alias}.resource_id = {owner}.id)"
        ));
        values.push(resource_type.into());
        values.push(param.into());
    }
    let not = if missing { "NOT " } else { "" };
    Ok(Condition {
        sql: format!("{not}({})", present.join(" OR ")),
        values,
        probe: Some(format!("{not}({})", probes.join(" OR "))),
        selectivity: Selectivity::Filter,
        source: None,
        reads_row: false,
    })
}

/// A date search value `[low, high]` (inclusive microseconds, the range its precision
/// implies) against a stored range in `low_col`/`high_col`, per prefix (R4 search,
/// "prefixes": `eq` the search range contains the stored one, `gt` the stored range
/// reaches after the search range, `ge` it reaches into or after it, `sa` it starts after
/// it, `ap` it overlaps the search range widened by 10% of the distance to now).
fn date_match(
    alias: &str,
    prefix: &str,
    low_col: &str,
    high_col: &str,
    (low, high): (i64, i64),
    values: &mut Vec<Value>,
) -> FhirResult<String> {
    let (lo, hi) = (format!("{alias}.{low_col}"), format!("{alias}.{high_col}"));
    let sql = match prefix {
        "eq" => {
            values.extend([low.into(), high.into()]);
            format!("{lo} >= ? AND {hi} <= ?")
        }
        "ne" => {
            values.extend([low.into(), high.into()]);
            format!("NOT ({lo} >= ? AND {hi} <= ?)")
        }
        "gt" => {
            values.push(high.into());
            format!("{hi} > ?")
        }
        "lt" => {
            values.push(low.into());
            format!("{lo} < ?")
        }
        "ge" => {
            values.push(low.into());
            format!("{hi} >= ?")
        }
        "le" => {
            values.push(high.into());
            format!("{lo} <= ?")
        }
        "sa" => {
            values.push(high.into());
            format!("{lo} > ?")
        }
        "eb" => {
            values.push(low.into());
            format!("{hi} < ?")
        }
        "ap" => {
            let (from, to) = approximate_dates(low, high, chrono::Utc::now().timestamp_micros());
            values.extend([to.into(), from.into()]);
            format!("{lo} <= ? AND {hi} >= ?")
        }
        other => {
            return Err(FhirError::bad_request(format!("unknown prefix {other:?}")));
        }
    };
    Ok(sql)
}

/// The range `ap` matches for a date: the value's range widened on both sides by 10% of
/// the time between now and the value (R4's recommendation), at least the value's range.
fn approximate_dates(low: i64, high: i64, now: i64) -> (i64, i64) {
    let gap = if now < low {
        i128::from(low) - i128::from(now)
    } else if now > high {
        i128::from(now) - i128::from(high)
    } else {
        0
    };
    let margin = i64::try_from(gap / 10).unwrap_or(i64::MAX);
    (low.saturating_sub(margin), high.saturating_add(margin))
}

/// A number search value: the value itself and the range `[low, high)` its significant
/// digits imply (`100` → 99.5 ≤ x < 100.5).
#[derive(Debug, Clone, Copy, PartialEq)]
struct DecimalRange {
    value: f64,
    low: f64,
    high: f64,
}

/// A number or quantity search value against a stored range in the columns `low`/`high`
/// (a single stored value has `low = high`), per prefix (R4 search, "number" and
/// "prefixes"): `eq`/`ne` use the implicit range of the search value (half-open), the
/// comparisons `gt`, `lt`, `ge`, `le`, `sa`, `eb` the value itself ("treated as if they
/// have arbitrarily high precision"; `gt100` is greater than exactly 100), and `ap` the
/// value ± 10% (at least its implicit range). For a stored range, `gt` means some of it
/// lies above the value, `sa` all of it.
fn number_match(
    alias: &str,
    prefix: &str,
    range: DecimalRange,
    values: &mut Vec<Value>,
) -> FhirResult<String> {
    let (lo, hi) = (format!("{alias}.low"), format!("{alias}.high"));
    let DecimalRange { value, low, high } = range;
    let sql = match prefix {
        "eq" => {
            values.extend([low.into(), high.into()]);
            format!("{lo} >= ? AND {hi} < ?")
        }
        "ne" => {
            values.extend([low.into(), high.into()]);
            format!("NOT ({lo} >= ? AND {hi} < ?)")
        }
        "gt" => {
            values.push(value.into());
            format!("{hi} > ?")
        }
        "lt" => {
            values.push(value.into());
            format!("{lo} < ?")
        }
        "ge" => {
            values.push(value.into());
            format!("{hi} >= ?")
        }
        "le" => {
            values.push(value.into());
            format!("{lo} <= ?")
        }
        "sa" => {
            values.push(value.into());
            format!("{lo} > ?")
        }
        "eb" => {
            values.push(value.into());
            format!("{hi} < ?")
        }
        "ap" => {
            let margin = value.abs() * 0.1;
            let from = low.min(value - margin);
            let to = high.max(value + margin);
            values.extend([to.into(), from.into()]);
            format!("{lo} <= ? AND {hi} >= ?")
        }
        other => {
            return Err(FhirError::bad_request(format!("unknown prefix {other:?}")));
        }
    };
    Ok(sql)
}

/// Splits off a two-letter comparison prefix (`ge2024`, `lt5.4`); `eq` by default.
fn split_prefix(value: &str) -> (&str, &str) {
    const PREFIXES: &[&str] = &["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    match (value.get(..2), value.get(2..)) {
        (Some(prefix), Some(rest)) if !rest.is_empty() && PREFIXES.contains(&prefix) => {
            (prefix, rest)
        }
        _ => ("eq", value),
    }
}

/// The range a decimal search value stands for: `5.4` is 5.35 ≤ x < 5.45, `100` is
/// 99.5 ≤ x < 100.5, `1e2` is 50 ≤ x < 150 (half a unit of the last significant digit
/// either side). The bounds are computed in decimal and then converted, so `5.35` is the
/// same double as a stored 5.35 and matches `5.4`.
fn decimal_range(code: &str, text: &str) -> FhirResult<DecimalRange> {
    let invalid = || {
        FhirError::bad_request(format!(
            "{code}={text} is not a number such as 100, 5.4 or 1.5e-3 (with an optional prefix \
             such as gt)"
        ))
    };
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| invalid())?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((_, "")) => return Err(invalid()),
        Some(parts) => parts,
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(invalid());
    }
    let value: f64 = text.parse().map_err(|_| invalid())?;
    if !value.is_finite() {
        return Err(invalid());
    }
    // value = ±digits × 10^scale; half a unit of the last digit is 5 × 10^(scale − 1).
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let decimals = i32::try_from(fraction.len()).map_err(|_| invalid())?;
    let scale = exponent.checked_sub(decimals).ok_or_else(invalid)?;
    let bound = |n: i128| -> Option<f64> {
        format!("{n}e{}", i64::from(scale) - 1)
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
    };
    let exact = if digits.len() <= 36 {
        let d: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| invalid())?
        };
        let (above, below) = (bound(d * 10 + 5), bound(d * 10 - 5));
        match (above, below) {
            (Some(above), Some(below)) if negative => Some((-above, -below)),
            (Some(above), Some(below)) => Some((below, above)),
            _ => None,
        }
    } else {
        None
    };
    let (low, high) = exact.unwrap_or_else(|| {
        let half = 0.5 * 10f64.powi(scale);
        (value - half, value + half)
    });
    Ok(DecimalRange { value, low, high })
}

/// Comma-separated alternatives, honouring `\,` escapes.
pub fn split_values(value: &str) -> Vec<String> {
    split_unescaped(value, ',')
}

/// Splits on `separator` except where escaped with `\`, and removes the escapes.
pub fn split_unescaped(value: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                if next != separator {
                    parts.last_mut().unwrap().push('\\');
                }
                parts.last_mut().unwrap().push(next);
            }
        } else if c == separator {
            parts.push(String::new());
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(name: &str, value: &str) -> Condition {
        condition("Observation", name, value).unwrap().unwrap()
    }

    #[test]
    fn the_most_selective_condition_drives_and_the_others_probe() {
        let code = observation("code", "http://loinc.org|8867-4");
        let patient = observation("patient", "Patient/1");
        let date = observation("date", "ge2024-03-01");
        assert!(patient.selectivity > code.selectivity);
        assert!(code.selectivity > date.selectivity);
        let (sql, values) = conjunction(vec![code.clone(), date, patient.clone()]);
        // The patient's entries start the query; code and date are looked up per row.
        assert!(sql.starts_with(&format!(" AND {}", patient.sql)), "{sql}");
        assert!(sql.contains(code.probe.as_deref().unwrap()), "{sql}");
        assert!(!sql.contains(&code.sql), "{sql}");
        assert_eq!(values.first(), patient.values.first());
        // Nothing selective: every condition is a probe.
        let negated = observation("code:not", "8867-4");
        let (sql, _) = conjunction(vec![negated.clone()]);
        assert_eq!(sql, format!(" AND {}", negated.probe.unwrap()));
    }

    #[test]
    fn a_search_driven_by_the_index_alone_reads_no_resource_rows() {
        let scope = ("r.resource_type = ?", vec!["Observation".into()]);
        let (sql, _) = rows_of_type(
            scope.clone(),
            vec![
                observation("patient", "Patient/1"),
                observation("code", "8867-4"),
            ],
            false,
        );
        assert!(sql.starts_with("FROM (SELECT u.resource_type"), "{sql}");
        assert!(!sql.contains("FROM resources"), "{sql}");
        // _lastUpdated lives on the resource row.
        let (sql, _) = rows_of_type(
            scope,
            vec![
                observation("patient", "Patient/1"),
                observation("_lastUpdated", "ge2024"),
            ],
            false,
        );
        assert!(
            sql.starts_with("FROM resources r WHERE r.resource_type = ?"),
            "{sql}"
        );
    }

    #[test]
    fn splits_with_escapes() {
        assert_eq!(split_values("a,b\\,c"), vec!["a", "b,c"]);
        assert_eq!(
            split_unescaped("http://x|123", '|'),
            vec!["http://x", "123"]
        );
        assert_eq!(split_unescaped("a\\|b|c", '|'), vec!["a|b", "c"]);
    }

    #[test]
    fn decimal_ranges_follow_precision() {
        let range = |text: &str| {
            let r = decimal_range("x", text).unwrap();
            (r.value, r.low, r.high)
        };
        // The bounds are the doubles of the decimal bounds, exactly.
        assert_eq!(range("5.4"), (5.4, 5.35, 5.45));
        assert_eq!(range("100"), (100.0, 99.5, 100.5));
        assert_eq!(range("100.00"), (100.0, 99.995, 100.005));
        assert_eq!(range("1e2"), (100.0, 50.0, 150.0));
        assert_eq!(range("1.00e2"), (100.0, 99.5, 100.5));
        assert_eq!(range("-5.4"), (-5.4, -5.45, -5.35));
        assert_eq!(range("0"), (0.0, -0.5, 0.5));
        assert_eq!(range("0.8"), (0.8, 0.75, 0.85));
        assert_eq!(range("8e-1"), (0.8, 0.75, 0.85));
        let long = range("1.0000000000000000000000000000000000000001");
        assert_eq!(long.0, 1.0);
        for bad in [
            "abc", "inf", "NaN", "1e", "1e99999", ".5", "5.", "1.2.3", "--1", "1,5",
        ] {
            assert!(decimal_range("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn approximate_dates_widen_by_a_tenth_of_the_distance_to_now() {
        // 100 units before now: ±10.
        assert_eq!(approximate_dates(0, 9, 109), (-10, 19));
        assert_eq!(approximate_dates(200, 209, 100), (190, 219));
        assert_eq!(approximate_dates(0, 9, 5), (0, 9));
        assert_eq!(
            approximate_dates(i64::MIN, i64::MAX, 0),
            (i64::MIN, i64::MAX)
        );
        assert_eq!(
            approximate_dates(i64::MIN + 1, i64::MIN + 2, i64::MAX).0,
            i64::MIN
        );
    }

    #[test]
    fn modifiers_and_composites_build_conditions() {
        let c = condition(
            "Observation",
            "component-code-value-quantity",
            "http://loinc.org|8480-6$gt100",
        )
        .unwrap()
        .unwrap();
        assert!(c.sql.contains("search_composite k1"), "{}", c.sql);
        assert_eq!(c.values.len(), 5);
        for (name, value, message) in [
            ("component-code-value-quantity", "8480-6", "2 parts"),
            ("component-code-value-quantity", "a$b$c", "2 parts"),
            ("component-code-value-quantity", "$100", "part 1"),
            (
                "component-code-value-quantity",
                "8480-6$lots",
                "not a number",
            ),
            (
                "component-code-value-quantity:exact",
                "8480-6$1",
                ":missing",
            ),
            (
                "code:below",
                "http://loinc.org|8480-6",
                "terminology server",
            ),
            (
                "code:in",
                "http://hl7.org/fhir/ValueSet/observation-codes",
                "cannot be expanded",
            ),
            ("identifier:of-type", "MR|123", "all three"),
            ("code:text", "  ", "no words"),
            ("value-quantity:contains", "5", "supported: :missing"),
            ("subject:above", "Patient/1", "not supported"),
        ] {
            let err = condition("Observation", name, value).unwrap_err();
            assert!(
                err.message().contains(message),
                "{name}={value}: {}",
                err.message()
            );
            assert!(err.message().contains(name.split(':').next().unwrap()));
        }
        let err = condition("ValueSet", "url:below", "urn:oid:1.2.3").unwrap_err();
        assert!(err.message().contains("URNs"));
        let err = condition("Location", "near", "42.25|-83.69|10|km").unwrap_err();
        assert!(err.message().contains("geographic"));
        let err = condition("Patient", "_content", "cancer").unwrap_err();
        assert!(err.message().contains("full-text"));
        let c = condition(
            "Observation",
            "code:in",
            "http://hl7.org/fhir/ValueSet/observation-vitalsignresult",
        )
        .unwrap()
        .unwrap();
        // 13 LOINC codes: the system and its codes, then the codes for system-less tokens.
        assert_eq!(c.values.len(), 2 + 1 + 13 + 13);
    }

    #[test]
    fn prefixes() {
        assert_eq!(split_prefix("ge2024-01-01"), ("ge", "2024-01-01"));
        assert_eq!(split_prefix("2024"), ("eq", "2024"));
        // Multi-byte text must not be cut inside a character.
        assert_eq!(split_prefix("j\u{8e}g"), ("eq", "j\u{8e}g"));
        assert_eq!(split_prefix("ge"), ("eq", "ge"));
    }

    #[test]
    fn unknown_parameters_are_errors() {
        let err = condition("Patient", "colour", "red").unwrap_err();
        assert!(err.message().contains("colour"));
        assert!(condition("Patient", "_count", "5").unwrap().is_none());
        let c = condition("Patient", "identifier", "http://x|1")
            .unwrap()
            .unwrap();
        assert!(c.sql.contains("search_token"));
        assert_eq!(c.values.len(), 4);
    }
}
