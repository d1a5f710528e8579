//! Small helpers to write one SQL text for both backends.

use sea_orm::{DbBackend, Statement, Value};

/// Builds a statement from SQL written with `?` placeholders, numbering them `$1, $2…`
/// for PostgreSQL. Our SQL never contains a literal `?`.
pub fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    if backend == DbBackend::Postgres {
        let mut numbered = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                numbered.push('$');
                numbered.push_str(&n.to_string());
            } else {
                numbered.push(ch);
            }
        }
        Statement::from_sql_and_values(backend, numbered, values)
    } else {
        Statement::from_sql_and_values(backend, sql, values)
    }
}

/// A resource body as a bind value: JSONB on PostgreSQL, JSON text on SQLite.
pub fn json_value(backend: DbBackend, content: &serde_json::Value) -> Value {
    if backend == DbBackend::Postgres {
        Value::Json(Some(Box::new(content.clone())))
    } else {
        Value::String(Some(content.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_for_postgres() {
        let s = statement(DbBackend::Postgres, "a = ? AND b = ?", vec![]);
        assert_eq!(s.sql, "a = $1 AND b = $2");
        let s = statement(DbBackend::Sqlite, "a = ? AND b = ?", vec![]);
        assert_eq!(s.sql, "a = ? AND b = ?");
    }
}
