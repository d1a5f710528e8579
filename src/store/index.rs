//! Writes the search index rows of a resource's current version, in the transaction
//! that stores the version, so a search never misses a committed resource and never sees
//! an uncommitted one.

use sea_orm::{ConnectionTrait, Value};
use serde_json::Value as Json;

use super::sql::statement;
use super::write_txn::{Table, WriteTxn};
use crate::error::FhirResult;
use crate::search::extract::{extract, IndexEntry};

/// The index tables. Every one starts with `resource_type, resource_id, param`.
pub static TABLES: [Table; 7] = [
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
];

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
    for entry in extract(content) {
        if FROM_RESOURCE_ROW.contains(&entry.param()) {
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
                text(display),
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
        IndexEntry::Number {
            param,
            value,
            low,
            high,
        } => (
            4,
            vec![
                param.as_ref().into(),
                finite(value).into(),
                finite(low).into(),
                finite(high).into(),
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
        } => (
            5,
            vec![
                param.as_ref().into(),
                Value::Double(value.map(finite)),
                finite(low).into(),
                finite(high).into(),
                text(system),
                text(code),
                text(unit),
            ],
        ),
        IndexEntry::Uri { param, value } => (6, vec![param.as_ref().into(), value.into()]),
        // Composite parameters are matched from their component rows.
        IndexEntry::Composite { .. } => return None,
    })
}

/// Databases store no infinities: open range ends become the largest finite values.
fn finite(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(f64::MIN, f64::MAX)
    }
}
