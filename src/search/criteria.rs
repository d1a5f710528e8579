//! Search criteria to SQL: each `name[:modifier]=value[,value…]` becomes one condition on
//! the `resources` row aliased `r`, usually `r.id IN (…)` over an index table. Values
//! separated by commas are alternatives (OR); repeated parameters must all hold (AND).
//!
//! Used by conditional interactions now and by the search API; the implicit ranges follow
//! the R4 search specification (a date or decimal matches the range its precision
//! implies).

use sea_orm::Value;

use super::extract::{normalize, parse_date_range};
use super::params::{ParamType, SearchParams};
use crate::error::{FhirError, FhirResult};

/// A SQL condition with its bind values, in `?` placeholder order.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    pub sql: String,
    pub values: Vec<Value>,
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
    condition_on(resource_type, name, value, 0)
}

/// Chains and `_has` nest at most this deep.
const MAX_DEPTH: usize = 4;

/// The alias of the `resources` row a condition at `depth` applies to (`r` at the top).
fn owner_alias(depth: usize) -> String {
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
) -> FhirResult<Option<Condition>> {
    if depth > MAX_DEPTH {
        return Err(FhirError::bad_request(format!(
            "{name}: chains and _has may nest at most {MAX_DEPTH} levels"
        )));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        return has_condition(resource_type, rest, value, depth).map(Some);
    }
    if let Some((reference, chained)) = name.split_once('.') {
        return chain_condition(resource_type, reference, chained, value, depth).map(Some);
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
    if modifier == Some("missing") {
        return Ok(Some(missing_condition(owner, param_type, code, value)?));
    }
    let alternatives = split_values(value);
    check_alternatives(name, alternatives.len())?;
    let (table, alias) = table_of(param_type).ok_or_else(|| {
        FhirError::bad_request(format!(
            "searching by the {} parameter {code} is not supported yet",
            param_type.as_str()
        ))
    })?;
    let mut indexed_param = code.to_string();
    let mut parts = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut negate = false;
    match (param_type, modifier) {
        (ParamType::Token, None | Some("not")) => {
            negate = modifier == Some("not");
            for alternative in &alternatives {
                token_match(alias, alternative, &mut parts, &mut values);
            }
        }
        (ParamType::Token, Some("text")) => {
            for alternative in &alternatives {
                parts.push(format!(
                    "{alias}.display IS NOT NULL AND LOWER({alias}.display) LIKE ? ESCAPE '\\'"
                ));
                values.push(format!("{}%", escape_like(&alternative.to_lowercase())).into());
            }
        }
        (ParamType::String, None | Some("exact") | Some("contains")) => {
            for alternative in &alternatives {
                match modifier {
                    Some("exact") => {
                        parts.push(format!("{alias}.exact = ?"));
                        values.push(alternative.as_str().into());
                    }
                    Some("contains") => {
                        parts.push(format!("{alias}.normalized LIKE ? ESCAPE '\\'"));
                        values.push(format!("%{}%", escape_like(&normalize(alternative))).into());
                    }
                    _ => {
                        parts.push(format!("{alias}.normalized LIKE ? ESCAPE '\\'"));
                        values.push(format!("{}%", escape_like(&normalize(alternative))).into());
                    }
                }
            }
        }
        (ParamType::Reference, Some("identifier")) => {
            indexed_param = format!("{code}:identifier");
            return Ok(Some(exists(
                owner,
                "search_token",
                "t",
                resource_type,
                &indexed_param,
                alternatives
                    .iter()
                    .fold((Vec::new(), Vec::new()), |(mut p, mut v), a| {
                        token_match("t", a, &mut p, &mut v);
                        (p, v)
                    }),
                false,
            )));
        }
        (ParamType::Reference, target_type) => {
            if let Some(t) = target_type {
                if !crate::fhir::definitions::Definitions::get().is_resource_type(t) {
                    return Err(FhirError::bad_request(format!(
                        "unsupported modifier :{t} on {code}; use a resource type such as :Patient or :identifier"
                    )));
                }
            }
            for alternative in &alternatives {
                reference_match(alias, alternative, target_type, &mut parts, &mut values);
            }
        }
        (ParamType::Uri, None | Some("below")) => {
            for alternative in &alternatives {
                if modifier == Some("below") {
                    parts.push(format!("{alias}.value LIKE ? ESCAPE '\\'"));
                    values.push(format!("{}%", escape_like(alternative)).into());
                } else {
                    parts.push(format!("{alias}.value = ?"));
                    values.push(alternative.as_str().into());
                }
            }
        }
        (ParamType::Date, None) => {
            for alternative in &alternatives {
                let (prefix, text) = split_prefix(alternative);
                let (low, high) = parse_date_range(text).ok_or_else(|| {
                    FhirError::bad_request(format!(
                        "{code}={alternative} is not a date such as 2024-03-01 or 2024-03-01T10:00:00Z"
                    ))
                })?;
                parts.push(range_match(
                    alias,
                    prefix,
                    "low",
                    "high",
                    &mut values,
                    low.into(),
                    high.into(),
                )?);
            }
        }
        (ParamType::Number, None) => {
            for alternative in &alternatives {
                let (prefix, text) = split_prefix(alternative);
                let (low, high) = decimal_range(code, text)?;
                parts.push(range_match(
                    alias,
                    prefix,
                    "low",
                    "high",
                    &mut values,
                    low.into(),
                    high.into(),
                )?);
            }
        }
        (ParamType::Quantity, None) => {
            for alternative in &alternatives {
                let mut pieces = split_unescaped(alternative, '|').into_iter();
                let number = pieces.next().unwrap_or_default();
                let system = pieces.next().filter(|s| !s.is_empty());
                let unit = pieces.next().filter(|s| !s.is_empty());
                let (prefix, text) = split_prefix(&number);
                let (low, high) = decimal_range(code, text)?;
                let mut part = range_match(
                    alias,
                    prefix,
                    "low",
                    "high",
                    &mut values,
                    low.into(),
                    high.into(),
                )?;
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
                parts.push(part);
            }
        }
        (_, Some(modifier)) => {
            return Err(FhirError::bad_request(format!(
                "the modifier :{modifier} is not supported on the {} parameter {code}",
                param_type.as_str()
            )))
        }
        (ParamType::Composite | ParamType::Special, None) => {
            return Err(FhirError::bad_request(format!(
                "searching by the {} parameter {code} is not supported yet",
                param_type.as_str()
            )))
        }
    }
    Ok(Some(exists(
        owner,
        table,
        alias,
        resource_type,
        &indexed_param,
        (parts, values),
        negate,
    )))
}

/// `owner.id IN (SELECT resource_id FROM table WHERE param = ? AND (p1 OR p2…))`.
fn exists(
    owner: &str,
    table: &str,
    alias: &str,
    resource_type: &str,
    param: &str,
    (parts, part_values): (Vec<String>, Vec<Value>),
    negate: bool,
) -> Condition {
    let alternatives = parts
        .iter()
        .map(|p| format!("({p})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let mut values: Vec<Value> = vec![resource_type.into(), param.into()];
    values.extend(part_values);
    // `id IN (uncorrelated subquery)` lets both databases start from the index entries
    // (a correlated EXISTS would visit every resource of the type).
    Condition {
        sql: format!(
            "{owner}.id {}IN (SELECT {alias}.resource_id FROM {table} {alias} \
             WHERE {alias}.resource_type = ? AND {alias}.param = ? AND ({alternatives}))",
            if negate { "NOT " } else { "" }
        ),
        values,
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
    for target_type in &targets {
        // Targets without the chained parameter cannot match; skip them.
        match condition_on(target_type, chained, value, depth + 1) {
            Ok(Some(inner)) => {
                // Uncorrelated: the matching targets are found first, from their index.
                alternatives.push(format!(
                    "(f{depth}.target_type = ? AND f{depth}.target_id IN (SELECT {target}.id \
                     FROM resources {target} WHERE {target}.resource_type = ? \
                     AND {target}.deleted = ? AND {}))",
                    inner.sql
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
    })
}

/// Reverse chaining, `_has:Observation:patient:code=1234-5`: some Observation whose
/// `patient` refers to this resource matches `code=1234-5` (which may be another `_has`).
fn has_condition(
    resource_type: &str,
    rest: &str,
    value: &str,
    depth: usize,
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
    let inner = condition_on(source_type, inner_name, value, depth + 1)?.ok_or_else(|| {
        FhirError::bad_request(format!(
            "_has:{rest}: {inner_name} does not select resources"
        ))
    })?;
    let owner = owner_alias(depth);
    let source = owner_alias(depth + 1);
    let mut values: Vec<Value> = vec![
        source_type.into(),
        reference.into(),
        resource_type.into(),
        false.into(),
    ];
    values.extend(inner.values);
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

fn token_match(alias: &str, value: &str, parts: &mut Vec<String>, values: &mut Vec<Value>) {
    match split_unescaped(value, '|').as_slice() {
        [code] => {
            parts.push(format!("{alias}.code = ?"));
            values.push(code.clone().into());
        }
        [system, code] if system.is_empty() => {
            parts.push(format!("{alias}.system IS NULL AND {alias}.code = ?"));
            values.push(code.clone().into());
        }
        [system, code] if code.is_empty() => {
            parts.push(format!("{alias}.system = ?"));
            values.push(system.clone().into());
        }
        [system, code, ..] => {
            parts.push(format!("{alias}.system = ? AND {alias}.code = ?"));
            values.push(system.clone().into());
            values.push(code.clone().into());
        }
        [] => {}
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
    Ok(Condition {
        sql: format!("{owner}.id IN ({})", vec!["?"; ids.len()].join(", ")),
        values: ids.into_iter().map(Value::from).collect(),
    })
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
        parts.push(range_match(
            owner,
            prefix,
            "last_updated",
            "last_updated",
            &mut values,
            low.into(),
            high.into(),
        )?);
    }
    Ok(Condition {
        sql: format!(
            "({})",
            parts
                .iter()
                .map(|p| format!("({p})"))
                .collect::<Vec<_>>()
                .join(" OR ")
        ),
        values,
    })
}

fn missing_condition(
    owner: &str,
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
    let (table, alias) = table_of(param_type)
        .ok_or_else(|| FhirError::bad_request(format!("{code}:missing is not supported")))?;
    Ok(Condition {
        sql: format!(
            "{owner}.id {}IN (SELECT {alias}.resource_id FROM {table} {alias} \
             WHERE {alias}.resource_type = {owner}.resource_type AND {alias}.param = ?)",
            if missing { "NOT " } else { "" }
        ),
        values: vec![code.into()],
    })
}

/// The condition for a search value range `[low, high]` against a stored range in the
/// columns `low_col`/`high_col`, per prefix (R4 search, "prefixes").
fn range_match(
    alias: &str,
    prefix: &str,
    low_col: &str,
    high_col: &str,
    values: &mut Vec<Value>,
    low: Value,
    high: Value,
) -> FhirResult<String> {
    let (lo, hi) = (format!("{alias}.{low_col}"), format!("{alias}.{high_col}"));
    let sql = match prefix {
        // The stored range lies within the search range.
        "eq" => {
            values.extend([low, high]);
            format!("{lo} >= ? AND {hi} <= ?")
        }
        "ne" => {
            values.extend([low, high]);
            format!("NOT ({lo} >= ? AND {hi} <= ?)")
        }
        // Some of the stored range lies above / below the search range.
        "gt" => {
            values.push(high);
            format!("{hi} > ?")
        }
        "lt" => {
            values.push(low);
            format!("{lo} < ?")
        }
        "ge" => {
            values.push(low);
            format!("{hi} >= ?")
        }
        "le" => {
            values.push(high);
            format!("{lo} <= ?")
        }
        // Starts after / ends before the search range.
        "sa" => {
            values.push(high);
            format!("{lo} > ?")
        }
        "eb" => {
            values.push(low);
            format!("{hi} < ?")
        }
        // Approximately: the ranges overlap.
        "ap" => {
            values.extend([high, low]);
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
/// 99.5 ≤ x < 100.5 (half a unit of the last significant digit either side).
fn decimal_range(code: &str, text: &str) -> FhirResult<(f64, f64)> {
    let value: f64 = text
        .parse()
        .map_err(|_| FhirError::bad_request(format!("{code}={text} is not a number")))?;
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let exponent: i32 = text
        .split_once(['e', 'E'])
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len() as i32);
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Ok((value - half, value + half))
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
        let (low, high) = decimal_range("x", "5.4").unwrap();
        assert!((low - 5.35).abs() < 1e-9 && (high - 5.45).abs() < 1e-9);
        let (low, high) = decimal_range("x", "100").unwrap();
        assert!((low - 99.5).abs() < 1e-9 && (high - 100.5).abs() < 1e-9);
        assert!(decimal_range("x", "abc").is_err());
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
