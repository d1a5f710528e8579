//! Writes the search index rows of a resource's current version, in the transaction
//! that stores the version, so a search never misses a committed resource and never sees
//! an uncommitted one.

use sea_orm::{ConnectionTrait, Value};
use serde_json::Value as Json;

use super::sql::statement;
use super::write_txn::{Table, WriteTxn};
use crate::error::FhirResult;
use crate::search::extract::{extract_where, normalize, IndexEntry};
use crate::search::params::{SearchParamDef, SearchParams};

/// The index tables. Every one starts with `resource_type, resource_id, param`.
///
/// What the rows hold (where it differs from the extracted entry):
/// - a number or quantity that is a single value is stored as that value (`low = high =
///   value`): per R4 search ("number"), the precision of the *search* value decides a match
///   (`100` matches 99.5 ≤ x < 100.5), so a stored 99.5 equals 100. A `Range` keeps its
///   bounds; a quantity with a comparator (`<=5`) is open on that side.
/// - token `display` (Coding.display, CodeableConcept.text) is normalized like strings
///   (lower case, no accents, single spaces), for `:text`.
/// - composite parameters go to `search_composite`, one row per component of each
///   combination (see the migration `m20261124_000003_search_composite`).
pub static TABLES: [Table; 8] = [
    Table {
        name: "search_token",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("system", "text"),
            ("code", "text"),
            ("display", "text"),
            ("type_system", "text"),
            ("type_code", "text"),
        ],
    },
    Table {
        name: "search_string",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("normalized", "text"),
            ("exact", "text"),
        ],
    },
    Table {
        name: "search_date",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("low", "bigint"),
            ("high", "bigint"),
        ],
    },
    Table {
        name: "search_reference",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("target_type", "text"),
            ("target_id", "text"),
            ("version", "text"),
            ("url", "text"),
        ],
    },
    Table {
        name: "search_number",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("value", "double precision"),
            ("low", "double precision"),
            ("high", "double precision"),
        ],
    },
    Table {
        name: "search_quantity",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("value", "double precision"),
            ("low", "double precision"),
            ("high", "double precision"),
            ("system", "text"),
            ("code", "text"),
            ("unit", "text"),
        ],
    },
    Table {
        name: "search_uri",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("value", "text"),
        ],
    },
    Table {
        name: "search_composite",
        columns: &[
            ("resource_type", "text"),
            ("resource_id", "text"),
            ("param", "text"),
            ("combo", "integer"),
            ("component", "integer"),
            ("system", "text"),
            ("code", "text"),
            ("unit", "text"),
            ("normalized", "text"),
            ("exact", "text"),
            ("target_type", "text"),
            ("target_id", "text"),
            ("url", "text"),
            ("low", "double precision"),
            ("high", "double precision"),
            ("date_low", "bigint"),
            ("date_high", "bigint"),
        ],
    },
];

/// Index of `search_composite` in [`TABLES`].
const COMPOSITE: usize = 7;

/// Parameters served from the `resources` table itself, not indexed again.
const FROM_RESOURCE_ROW: &[&str] = &["_id", "_lastUpdated"];

/// Replaces the index rows of `resource_type/id` with those of `content` (none for a
/// deletion). `existed` is false for a brand-new resource, which has no rows to remove.
pub async fn reindex(
    conn: &WriteTxn<'_>,
    resource_type: &str,
    id: &str,
    content: Option<&Json>,
    existed: bool,
) -> FhirResult<()> {
    let backend = conn.get_database_backend();
    if existed {
        for table in &TABLES {
            conn.execute_raw(statement(
                backend,
                &format!(
                    "DELETE FROM {} WHERE resource_type = ? AND resource_id = ?",
                    table.name
                ),
                vec![resource_type.into(), id.into()],
            ))
            .await?;
        }
    }
    let Some(content) = content else {
        return Ok(());
    };
    // Combinations are numbered within the resource; the number ties a combination's
    // component rows together.
    let mut combo: i32 = 0;
    // `_id`/`_lastUpdated` live in `resources`; Observation `combo-*` values are those of
    // the plain and `component-*` parameters, searched there. Neither is evaluated here.
    let wanted = |def: &SearchParamDef| {
        !FROM_RESOURCE_ROW.contains(&def.code.as_ref())
            && !crate::search::criteria::is_official_combo(resource_type, &def.code)
    };
    for entry in extract_where(SearchParams::get(), content, wanted) {
        if let IndexEntry::Composite { param, components } = entry {
            combo = combo.saturating_add(1);
            for (position, component) in components.into_iter().enumerate() {
                let Some(row) = composite_row(component) else {
                    continue;
                };
                let mut values = Vec::with_capacity(row.len() + 5);
                values.push(resource_type.into());
                values.push(id.into());
                values.push(param.as_ref().into());
                values.push(combo.into());
                values.push(i32::try_from(position).unwrap_or(i32::MAX).into());
                values.extend(row);
                conn.defer(&TABLES[COMPOSITE], values).await;
            }
            continue;
        }
        if let Some((table, row)) = row_of(entry) {
            let mut values = Vec::with_capacity(row.len() + 2);
            values.push(resource_type.into());
            values.push(id.into());
            values.extend(row);
            conn.defer(&TABLES[table], values).await;
        }
    }
    Ok(())
}

/// Rewrites the index rows of many current resources at once (`$reindex`): one DELETE per
/// table for the lot, then the new rows as deferred inserts.
pub async fn reindex_many(
    conn: &WriteTxn<'_>,
    resources: &[crate::store::StoredResource],
) -> FhirResult<()> {
    let backend = conn.get_database_backend();
    let mut by_type: Vec<(&str, Vec<&str>)> = Vec::new();
    for resource in resources {
        match by_type
            .iter_mut()
            .find(|(t, _)| *t == resource.resource_type)
        {
            Some((_, ids)) => ids.push(&resource.id),
            None => by_type.push((&resource.resource_type, vec![&resource.id])),
        }
    }
    for (resource_type, ids) in &by_type {
        for table in &TABLES {
            let mut values: Vec<Value> = vec![(*resource_type).into()];
            values.extend(ids.iter().map(|id| Value::from(*id)));
            conn.execute_raw(statement(
                backend,
                &format!(
                    "DELETE FROM {} WHERE resource_type = ? AND resource_id IN ({})",
                    table.name,
                    vec!["?"; ids.len()].join(", ")
                ),
                values,
            ))
            .await?;
        }
    }
    for resource in resources {
        if let Some(content) = &resource.content {
            reindex(
                conn,
                &resource.resource_type,
                &resource.id,
                Some(content),
                false,
            )
            .await?;
        }
    }
    Ok(())
}

/// The table (index into [`TABLES`]) and the values of `param` and the table's columns.
fn row_of(entry: IndexEntry) -> Option<(usize, Vec<Value>)> {
    let text = |s: Option<String>| Value::String(s);
    Some(match entry {
        IndexEntry::Token {
            param,
            system,
            code,
            display,
            type_system,
            type_code,
        } => (
            0,
            vec![
                param.as_ref().into(),
                text(system),
                text(code),
                text(display.map(|d| normalize(&d))),
                text(type_system),
                text(type_code),
            ],
        ),
        IndexEntry::ReferenceIdentifier {
            param,
            system,
            code,
        } => (
            0,
            vec![
                format!("{param}:identifier").into(),
                text(system),
                text(code),
                text(None),
                text(None),
                text(None),
            ],
        ),
        IndexEntry::String {
            param,
            normalized,
            exact,
        } => (
            1,
            vec![param.as_ref().into(), normalized.into(), exact.into()],
        ),
        IndexEntry::Date { param, low, high } => {
            (2, vec![param.as_ref().into(), low.into(), high.into()])
        }
        IndexEntry::Reference {
            param,
            target_type,
            target_id,
            version,
            url,
        } => (
            3,
            vec![
                param.as_ref().into(),
                text(target_type),
                text(target_id),
                text(version),
                url.into(),
            ],
        ),
        IndexEntry::Number { param, value, .. } => (
            4,
            vec![
                param.as_ref().into(),
                finite(value).into(),
                finite(value).into(),
                finite(value).into(),
            ],
        ),
        IndexEntry::Quantity {
            param,
            value,
            low,
            high,
            system,
            code,
            unit,
        } => {
            let (low, high) = quantity_bounds(value, low, high);
            (
                5,
                vec![
                    param.as_ref().into(),
                    Value::Double(value.map(finite)),
                    low.into(),
                    high.into(),
                    text(system),
                    text(code),
                    text(unit),
                ],
            )
        }
        IndexEntry::Uri { param, value } => (6, vec![param.as_ref().into(), value.into()]),
        // Composite entries are written by `reindex`, one row per component.
        IndexEntry::Composite { .. } => return None,
    })
}

/// The stored range of a quantity: its value when it is a single value, the open end of a
/// `<`/`>` comparator, the bounds of a Range (no value).
fn quantity_bounds(value: Option<f64>, low: f64, high: f64) -> (f64, f64) {
    match value {
        Some(v) => (
            if low == f64::MIN { low } else { finite(v) },
            if high == f64::MAX { high } else { finite(v) },
        ),
        None => (finite(low), finite(high)),
    }
}

/// The `search_composite` columns after `component` for one component value, or `None`
/// for an entry that is no component value.
fn composite_row(entry: IndexEntry) -> Option<Vec<Value>> {
    // system, code, unit, normalized, exact, target_type, target_id, url, then low, high,
    // date_low, date_high.
    const SYSTEM: usize = 0;
    const CODE: usize = 1;
    const UNIT: usize = 2;
    const NORMALIZED: usize = 3;
    const EXACT: usize = 4;
    const TARGET_TYPE: usize = 5;
    const TARGET_ID: usize = 6;
    const URL: usize = 7;
    let mut texts: [Option<String>; 8] = Default::default();
    let mut floats: [Option<f64>; 2] = [None, None];
    let mut dates: [Option<i64>; 2] = [None, None];
    match entry {
        IndexEntry::Token { system, code, .. } => {
            texts[SYSTEM] = system;
            texts[CODE] = code;
        }
        IndexEntry::Quantity {
            value,
            low,
            high,
            system,
            code,
            unit,
            ..
        } => {
            let (low, high) = quantity_bounds(value, low, high);
            floats = [Some(low), Some(high)];
            texts[SYSTEM] = system;
            texts[CODE] = code;
            texts[UNIT] = unit;
        }
        IndexEntry::Number { value, .. } => floats = [Some(finite(value)), Some(finite(value))],
        IndexEntry::Date { low, high, .. } => dates = [Some(low), Some(high)],
        IndexEntry::String {
            normalized, exact, ..
        } => {
            texts[NORMALIZED] = Some(normalized);
            texts[EXACT] = Some(exact);
        }
        IndexEntry::Reference {
            target_type,
            target_id,
            url,
            ..
        } => {
            texts[TARGET_TYPE] = target_type;
            texts[TARGET_ID] = target_id;
            texts[URL] = Some(url);
        }
        IndexEntry::Uri { value, .. } => texts[URL] = Some(value),
        IndexEntry::ReferenceIdentifier { .. } | IndexEntry::Composite { .. } => return None,
    }
    let mut row: Vec<Value> = texts.into_iter().map(Value::String).collect();
    row.extend(floats.into_iter().map(Value::Double));
    row.extend(dates.into_iter().map(Value::BigInt));
    Some(row)
}

/// Databases store no infinities: open range ends become the largest finite values.
fn finite(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(f64::MIN, f64::MAX)
    }
}
