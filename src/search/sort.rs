//! `_sort` and keyset paging. Results are ordered by the sort keys, missing values last,
//! then by id; the `next` link carries the last row's keys (an opaque cursor), and the
//! next page continues strictly after them; the `previous` link carries the first row's
//! keys, and that page ends strictly before them. Unlike OFFSET paging, writes between
//! pages never shift rows onto or off a page.

use base64::Engine;
use sea_orm::{QueryResult, Value};
use serde_json::Value as Json;

use super::params::{ParamType, SearchParams};
use crate::error::{FhirError, FhirResult};

/// How a sort key's values are read back from a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Integer,
    Float,
    Text,
}

/// One `_sort` parameter as an SQL expression on the `resources` row `r`.
#[derive(Debug, Clone)]
pub struct SortKey {
    pub descending: bool,
    expression: String,
    values: Vec<Value>,
    kind: KeyKind,
}

impl SortKey {
    /// The key reads the `resources` row's own columns (`_lastUpdated`), not only its id.
    pub fn reads_row(&self) -> bool {
        self.expression.starts_with("r.") && self.expression != "r.id"
    }
}

/// Parses `_sort=date,-code`.
pub fn parse_sort(resource_type: &str, value: &str) -> FhirResult<Vec<SortKey>> {
    let mut keys = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (descending, code) = match item.strip_prefix('-') {
            Some(code) => (true, code),
            None => (false, item),
        };
        keys.push(sort_key(resource_type, code, descending)?);
    }
    if keys.len() > 4 {
        return Err(FhirError::bad_request("_sort takes at most 4 parameters"));
    }
    Ok(keys)
}

fn sort_key(resource_type: &str, code: &str, descending: bool) -> FhirResult<SortKey> {
    match code {
        "_id" => {
            return Ok(SortKey {
                descending,
                expression: "r.id".into(),
                values: Vec::new(),
                kind: KeyKind::Text,
            })
        }
        "_lastUpdated" => {
            return Ok(SortKey {
                descending,
                expression: "r.last_updated".into(),
                values: Vec::new(),
                kind: KeyKind::Integer,
            })
        }
        _ => {}
    }
    let definition = SearchParams::get()
        .param(resource_type, code)
        .ok_or_else(|| {
            FhirError::bad_request(format!(
                "_sort: {code:?} is not a search parameter of {resource_type}"
            ))
        })?;
    // Ascending order uses the smallest value of a resource, descending the largest.
    let pick = if descending { "MAX" } else { "MIN" };
    let (table, column, kind) = match definition.param_type {
        ParamType::Date => (
            "search_date",
            if descending { "high" } else { "low" },
            KeyKind::Integer,
        ),
        ParamType::Number => ("search_number", "value", KeyKind::Float),
        ParamType::Quantity => ("search_quantity", "value", KeyKind::Float),
        ParamType::String => ("search_string", "normalized", KeyKind::Text),
        ParamType::Token => ("search_token", "code", KeyKind::Text),
        ParamType::Uri => ("search_uri", "value", KeyKind::Text),
        other => {
            return Err(FhirError::bad_request(format!(
                "_sort: sorting by the {} parameter {code} is not supported",
                other.as_str()
            )))
        }
    };
    Ok(SortKey {
        descending,
        expression: format!(
            "(SELECT {pick}(x.{column}) FROM {table} x WHERE x.resource_type = r.resource_type \
             AND x.resource_id = r.id AND x.param = ?)"
        ),
        values: vec![code.into()],
        kind,
    })
}

/// A position between rows: after the last row of a page (a `next` link), or before the
/// first one (`backward`, a `previous` link); the row's sort key values, then its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    keys: Vec<Json>,
    id: String,
    pub backward: bool,
}

impl Cursor {
    /// Forward cursors are `[keys…, id]`, backward ones `{"before": [keys…, id]}`.
    pub fn encode(&self) -> String {
        let mut items = self.keys.clone();
        items.push(Json::String(self.id.clone()));
        let json = if self.backward {
            serde_json::json!({ "before": items })
        } else {
            Json::Array(items)
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    /// The position before `row`, for a `previous` link.
    pub fn before_row(row: &QueryResult, keys: &[SortKey]) -> FhirResult<Cursor> {
        Ok(Cursor {
            backward: true,
            ..Cursor::after_row(row, keys)?
        })
    }

    pub fn decode(text: &str, keys: &[SortKey]) -> FhirResult<Cursor> {
        let invalid = || {
            FhirError::bad_request(
                "the paging cursor is not valid for this search; follow the next link as given",
            )
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| invalid())?;
        let (mut items, backward) = match serde_json::from_slice::<Json>(&bytes) {
            Ok(Json::Array(items)) => (items, false),
            Ok(Json::Object(mut object)) if object.len() == 1 => match object.remove("before") {
                Some(Json::Array(items)) => (items, true),
                _ => return Err(invalid()),
            },
            _ => return Err(invalid()),
        };
        if items.len() != keys.len() + 1 {
            return Err(invalid());
        }
        let Some(Json::String(id)) = items.pop() else {
            return Err(invalid());
        };
        for (item, key) in items.iter().zip(keys) {
            let fits = match key.kind {
                _ if item.is_null() => true,
                KeyKind::Integer => item.as_i64().is_some(),
                KeyKind::Float => item.as_f64().is_some(),
                KeyKind::Text => item.is_string(),
            };
            if !fits {
                return Err(invalid());
            }
        }
        Ok(Cursor {
            keys: items,
            id,
            backward,
        })
    }

    /// The cursor after `row` of a page query.
    pub fn after_row(row: &QueryResult, keys: &[SortKey]) -> FhirResult<Cursor> {
        let mut values = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let column = format!("s{i}");
            values.push(
                match key.kind {
                    KeyKind::Integer => row.try_get::<Option<i64>>("", &column)?.map(Json::from),
                    KeyKind::Float => row
                        .try_get::<Option<f64>>("", &column)?
                        .and_then(serde_json::Number::from_f64)
                        .map(Json::Number),
                    KeyKind::Text => row
                        .try_get::<Option<String>>("", &column)?
                        .map(Json::String),
                }
                .unwrap_or(Json::Null),
            );
        }
        Ok(Cursor {
            keys: values,
            id: row.try_get("", "id")?,
            backward: false,
        })
    }
}

/// The page query: `from_where` is `FROM resources r WHERE …` with its bind values. It
/// returns `resource_type`, `id` and the sort keys `s0…` of at most `limit` rows: the
/// first ones after a forward cursor, or the last ones before a backward cursor, in
/// reverse order (the caller turns them around).
pub fn page_query(
    from_where: &str,
    filter_values: &[Value],
    keys: &[SortKey],
    cursor: Option<&Cursor>,
    limit: u64,
) -> (String, Vec<Value>) {
    let mut values = Vec::new();
    // Ids and sort keys only: bodies are read for the page alone, not for every row the
    // database has to order.
    let mut select = String::from("SELECT r.resource_type, r.id");
    for (i, key) in keys.iter().enumerate() {
        select.push_str(&format!(", {} AS s{i}", key.expression));
        values.extend(key.values.iter().cloned());
    }
    values.extend(filter_values.iter().cloned());
    let mut sql = format!("SELECT q.* FROM ({select} {from_where}) q");
    let backward = cursor.is_some_and(|c| c.backward);
    if let Some(cursor) = cursor {
        sql.push_str(" WHERE ");
        sql.push_str(&beyond(keys, cursor, 0, &mut values));
    }
    // Page order; a backward page reads it from the end.
    let (asc, desc) = if backward {
        ("DESC", "ASC")
    } else {
        ("ASC", "DESC")
    };
    let mut order: Vec<String> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // Missing values last whatever the direction, the same on both databases.
        order.push(format!("(q.s{i} IS NULL) {asc}"));
        order.push(format!(
            "q.s{i} {}",
            if key.descending { desc } else { asc }
        ));
    }
    order.push(format!("q.id {asc}"));
    sql.push_str(&format!(" ORDER BY {} LIMIT ?", order.join(", ")));
    values.push((limit as i64).into());
    (sql, values)
}

/// Rows strictly after a forward cursor, or strictly before a backward one, in the page
/// order, from sort key `i` on.
fn beyond(keys: &[SortKey], cursor: &Cursor, i: usize, values: &mut Vec<Value>) -> String {
    let (later, earlier) = if cursor.backward {
        ("<", ">")
    } else {
        (">", "<")
    };
    if i == keys.len() {
        values.push(cursor.id.as_str().into());
        return format!("q.id {later} ?");
    }
    let column = format!("q.s{i}");
    let key = &keys[i];
    match &cursor.keys[i] {
        // In the group of missing values, which comes last: only the rest can differ,
        // or, going backward, any row with a value comes before.
        Json::Null => {
            let rest = beyond(keys, cursor, i + 1, values);
            if cursor.backward {
                format!("({column} IS NOT NULL OR ({column} IS NULL AND {rest}))")
            } else {
                format!("({column} IS NULL AND {rest})")
            }
        }
        value => {
            let op = if key.descending { earlier } else { later };
            let bind = || -> Value {
                match key.kind {
                    KeyKind::Integer => value.as_i64().into(),
                    KeyKind::Float => value.as_f64().into(),
                    KeyKind::Text => value.as_str().map(str::to_string).into(),
                }
            };
            values.push(bind());
            values.push(bind());
            let rest = beyond(keys, cursor, i + 1, values);
            let compared = format!("{column} {op} ? OR ({column} = ? AND {rest})");
            if cursor.backward {
                format!("({compared})")
            } else {
                // Missing values come after every value.
                format!("({column} IS NULL OR {compared})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let keys = parse_sort("Observation", "-date,code").unwrap();
        let cursor = Cursor {
            keys: vec![Json::from(1_700_000_000_000_000i64), Json::Null],
            id: "abc".into(),
            backward: false,
        };
        assert_eq!(Cursor::decode(&cursor.encode(), &keys).unwrap(), cursor);
        let before = Cursor {
            backward: true,
            ..cursor.clone()
        };
        assert_eq!(Cursor::decode(&before.encode(), &keys).unwrap(), before);
        assert_ne!(before.encode(), cursor.encode());
        assert!(Cursor::decode("not-base64!", &keys).is_err());
        let other = parse_sort("Observation", "date").unwrap();
        assert!(Cursor::decode(&cursor.encode(), &other).is_err());
    }

    #[test]
    fn unknown_or_unsortable_parameters_are_refused() {
        assert!(parse_sort("Observation", "colour").is_err());
        assert!(parse_sort("Observation", "subject").is_err());
        assert_eq!(
            parse_sort("Observation", "_lastUpdated,-_id")
                .unwrap()
                .len(),
            2
        );
    }
}
