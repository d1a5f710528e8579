//! Query plans on SQLite, which keeps no statistics, so its plans depend on the query and
//! the indexes alone: the searches the benchmarks time must seek in indexes, never read a
//! whole index or every entry of a type.

use sea_orm::{ConnectionTrait, DatabaseConnection, Value};

use super::criteria::{condition, rows_of_type, Condition};
use super::sort::{page_query, parse_sort};
use crate::store::sql::statement;

struct Database {
    connection: DatabaseConnection,
    path: std::path::PathBuf,
}

impl Drop for Database {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

async fn database() -> Database {
    let path = std::env::temp_dir().join(format!("fhirgate-plans-{}.db", uuid::Uuid::now_v7()));
    let connection = crate::db::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    crate::db::migrate(&connection).await.unwrap();
    Database { connection, path }
}

/// The page query of `Observation?{query}` as the search API builds it.
fn observation_search(query: &str, sort: &str) -> (String, Vec<Value>) {
    let conditions: Vec<Condition> = form_urlencoded::parse(query.as_bytes())
        .filter_map(|(name, value)| condition("Observation", &name, &value).unwrap())
        .collect();
    let keys = parse_sort("Observation", sort).unwrap();
    let (from_where, values) = rows_of_type(
        (
            "r.deleted = ? AND r.resource_type = ?",
            vec![false.into(), "Observation".into()],
        ),
        conditions,
        keys.iter().any(|k| k.reads_row()),
    );
    page_query(&from_where, &values, &keys, None, 51)
}

async fn plan(db: &Database, (sql, values): (String, Vec<Value>)) -> Vec<String> {
    let backend = db.connection.get_database_backend();
    db.connection
        .query_all_raw(statement(
            backend,
            &format!("EXPLAIN QUERY PLAN {sql}"),
            values,
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "detail").unwrap())
        .collect()
}

/// Every table is reached by a seek on more than its type and parameter; nothing reads a
/// whole index.
fn assert_seeks(plan: &[String], what: &str) {
    for line in plan {
        let whole_index = line.starts_with("SCAN ") && line.contains(" INDEX ");
        let whole_type =
            line.ends_with("(resource_type=?)") || line.ends_with("(resource_type=? AND param=?)");
        let whole_table = line.starts_with("SCAN ")
            && ["resources", "search_"]
                .iter()
                .any(|t| line[5..].starts_with(t));
        assert!(
            !(whole_index || whole_type || whole_table),
            "{what}: {line}\n{}",
            plan.join("\n")
        );
    }
}

#[tokio::test]
async fn benchmark_searches_seek_in_indexes() {
    let db = database().await;
    for (query, sort) in [
        (
            "patient=Patient/1&code=http://loinc.org|8867-4&date=ge2024-03-01T10:00:00Z",
            "",
        ),
        ("subject=Patient/1&category=vital-signs", "-date"),
        ("patient=Patient/1&_lastUpdated=ge2024", "-_lastUpdated"),
        ("code=http://loinc.org|8867-4&device=Device/1", ""),
        ("identifier=http://example.org|o1", ""),
        ("patient=Patient/1,Patient/2&code=8867-4,59408-5", ""),
        (
            "code=http://loinc.org|8867-4,http://loinc.org|59408-5",
            "-date",
        ),
        (
            "subject:Patient.identifier=http://example.org|p1&code=8867-4",
            "",
        ),
    ] {
        let sql = observation_search(query, sort);
        assert_seeks(&plan(&db, sql).await, query);
    }
}

#[tokio::test]
async fn compartment_members_are_found_by_reference() {
    let db = database().await;
    let member = crate::search::compartment::Compartments::get()
        .condition("Patient", "1", "Observation")
        .unwrap();
    let (source, values) = member.source.clone().unwrap();
    let rows =
        super::criteria::distinct_rows(&format!("SELECT u.resource_type, u.id FROM ({source}) u"));
    let sql = (format!("SELECT COUNT(*) FROM ({rows}) r"), values);
    assert_seeks(&plan(&db, sql).await, "Patient/1/Observation");
}

#[tokio::test]
async fn lastn_reads_one_patients_observations() {
    let db = database().await;
    for (query, subject) in [
        ("patient=Patient/1&category=vital-signs", Some("Patient/1")),
        ("patient=Patient/1,Patient/2&code=8867-4", None),
    ] {
        let conditions: Vec<Condition> = form_urlencoded::parse(query.as_bytes())
            .filter_map(|(name, value)| condition("Observation", &name, &value).unwrap())
            .collect();
        let sql = crate::api::observation_ops::keyed_query(conditions, subject.map(String::from));
        assert_seeks(&plan(&db, sql).await, query);
    }
}

#[tokio::test]
async fn the_condition_with_fewer_entries_drives_among_equals() {
    let db = database().await;
    let backend = db.connection.get_database_backend();
    // One monitor with fifty Observations, one patient with three.
    for i in 0..50 {
        let mut rows = vec![(format!("o{i}"), "device", "Device", "d1")];
        if i < 3 {
            rows.push((format!("o{i}"), "patient", "Patient", "p1"));
        }
        for (id, param, target_type, target_id) in rows {
            db.connection
                .execute_raw(statement(
                    backend,
                    "INSERT INTO search_reference (resource_type, resource_id, param, \
                     target_type, target_id, url) VALUES ('Observation', ?, ?, ?, ?, ?)",
                    vec![
                        id.into(),
                        param.into(),
                        target_type.into(),
                        target_id.into(),
                        format!("{target_type}/{target_id}").into(),
                    ],
                ))
                .await
                .unwrap();
        }
    }
    let mut conditions = vec![
        condition("Observation", "device", "Device/d1")
            .unwrap()
            .unwrap(),
        condition("Observation", "patient", "Patient/p1")
            .unwrap()
            .unwrap(),
    ];
    super::criteria::rank_by_entries(&db.connection, &mut conditions)
        .await
        .unwrap();
    let (from_where, values) = rows_of_type(
        ("r.resource_type = ?", vec!["Observation".into()]),
        conditions,
        false,
    );
    assert!(
        from_where.starts_with("FROM (SELECT u.resource_type"),
        "{from_where}"
    );
    assert_eq!(
        values[1],
        Value::from("patient"),
        "the patient's entries drive"
    );
}
