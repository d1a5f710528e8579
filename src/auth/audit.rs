//! The audit trail (IHE BALP style AuditEvents): who (client), what (interaction, type,
//! id, query), which patient, the outcome, when. Recorded for every REST interaction and
//! token request while authentication is on; written append-only to `audit_events`
//! (batched with the writer's commits: auditing must not double the cost of a write), and
//! readable only with a scope naming AuditEvent. Tokens and secrets are never recorded.

use base64::Engine;
use sea_orm::{ConnectionTrait, DbBackend, Value};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use crate::error::{FhirError, FhirResult};
use crate::store::sql::{json_value, statement};
use crate::store::time::{instant, now_micros};
use crate::store::write_txn::Table;
use crate::store::Store;

static AUDIT_EVENTS: Table = Table {
    name: "audit_events",
    columns: &[
        ("id", "text"),
        ("recorded", "bigint"),
        ("client_id", "text"),
        ("patient", "text"),
        ("outcome", "integer"),
        ("content", "jsonb"),
    ],
};

/// Most audit records written in one commit.
const BATCH: usize = 512;

/// One thing to audit.
#[derive(Debug, Clone)]
pub struct Record {
    /// The client, when known (a refused token has none).
    pub client_id: Option<String>,
    pub patient: Option<String>,
    /// The HTTP method, or `TOKEN` for a token request.
    pub method: String,
    /// The path and query, without the base.
    pub target: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub status: u16,
    pub address: Option<String>,
}

/// Sends records to the audit writer.
#[derive(Clone)]
pub struct Auditor {
    records: mpsc::UnboundedSender<Record>,
}

impl Auditor {
    /// Starts the task that writes the records of `store`.
    pub fn start(store: Store) -> Auditor {
        let (records, mut queue) = mpsc::unbounded_channel::<Record>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = queue.recv().await {
                batch.push(first);
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(record) => batch.push(record),
                        Err(_) => break,
                    }
                }
                let rows: Vec<Record> = std::mem::take(&mut batch);
                let written = store
                    .writer()
                    .write(move |txn| {
                        Box::pin(async move {
                            let backend = txn.get_database_backend();
                            for record in rows {
                                let (id, recorded, content) = audit_event(&record);
                                txn.defer(
                                    &AUDIT_EVENTS,
                                    vec![
                                        id.into(),
                                        recorded.into(),
                                        record.client_id.clone().into(),
                                        record.patient.clone().into(),
                                        i32::from(record.status).into(),
                                        json_value(backend, &content),
                                    ],
                                )
                                .await;
                            }
                            Ok(())
                        })
                    })
                    .await;
                if let Err(err) = written {
                    tracing::error!("cannot write audit events: {}", err.message());
                }
            }
        });
        Auditor { records }
    }

    pub fn record(&self, record: Record) {
        let _ = self.records.send(record);
    }
}

/// The DICOM action code (C, R, U, D, E) and the R4 `restful-interaction` code of a
/// record, from its method and path.
fn interaction(record: &Record) -> (&'static str, &'static str) {
    if record.method == "TOKEN" {
        return ("E", "login");
    }
    let path = record.target.split('?').next().unwrap_or_default();
    let path = path.strip_prefix("/fhir").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| s.starts_with('$')) {
        return ("E", "operation");
    }
    match (record.method.as_str(), segments.as_slice()) {
        ("GET", ["metadata"]) => ("R", "capabilities"),
        ("GET", ["_history"]) => ("R", "history-system"),
        ("GET", [_, "_history"]) => ("R", "history-type"),
        ("GET", [_, _, "_history"]) => ("R", "history-instance"),
        ("GET", [_, _, "_history", _]) => ("R", "vread"),
        ("GET", []) => ("E", "search-system"),
        ("GET", [_]) | ("POST", [_, "_search"]) | ("GET", [_, _, _]) => ("E", "search-type"),
        ("GET", [_, _]) => ("R", "read"),
        ("POST", []) => ("E", "transaction"),
        ("POST", _) => ("C", "create"),
        ("PUT", _) => ("U", "update"),
        ("PATCH", _) => ("U", "patch"),
        ("DELETE", _) => ("D", "delete"),
        _ => ("E", "operation"),
    }
}

/// The AuditEvent resource for a record: its id, time and content.
fn audit_event(record: &Record) -> (String, i64, Json) {
    let id = uuid::Uuid::now_v7().to_string();
    let recorded = now_micros();
    let token = record.method == "TOKEN";
    let (action, interaction) = interaction(record);
    let outcome = match record.status {
        200..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut entities = Vec::new();
    if let Some(resource_type) = &record.resource_type {
        let reference = match &record.resource_id {
            Some(id) => format!("{resource_type}/{id}"),
            None => resource_type.clone(),
        };
        entities.push(json!({
            "what": {"reference": reference},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "query": base64::engine::general_purpose::STANDARD.encode(record.target.as_bytes())
        }));
    }
    if let Some(patient) = &record.patient {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
        }));
    }
    let mut agent = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
        "who": {"identifier": {"system": "urn:fhirgate:client", "value": record.client_id.clone().unwrap_or_else(|| "(unidentified)".into())}},
        "requestor": true
    });
    if let Some(address) = &record.address {
        agent["network"] = json!({"address": address, "type": "2"});
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "meta": {"profile": ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"]},
        "type": if token {
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"})
        } else {
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"})
        },
        "subtype": [if token {
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"})
        } else {
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": interaction})
        }],
        "action": action,
        "recorded": instant(recorded),
        "outcome": outcome,
        "outcomeDesc": format!("HTTP {}", record.status),
        "agent": [agent],
        "source": {"observer": {"display": "fhirgate"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]}
    });
    if record.patient.is_none() {
        event["meta"]["profile"] =
            json!(["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read"]);
    }
    if !entities.is_empty() {
        event["entity"] = Json::Array(entities);
    }
    (id, recorded, event)
}

/// The newest audit events, optionally of one client or patient, at most `count`.
pub async fn search(
    conn: &impl ConnectionTrait,
    client_id: Option<&str>,
    patient: Option<&str>,
    count: u64,
) -> FhirResult<Vec<Json>> {
    let backend = conn.get_database_backend();
    let mut sql = String::from("SELECT content FROM audit_events WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::new();
    if let Some(client_id) = client_id {
        sql.push_str(" AND client_id = ?");
        values.push(client_id.into());
    }
    if let Some(patient) = patient {
        sql.push_str(" AND patient = ?");
        values.push(patient.into());
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    values.push((count as i64).into());
    let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
    rows.iter().map(|row| content(backend, row)).collect()
}

pub async fn read(conn: &impl ConnectionTrait, id: &str) -> FhirResult<Option<Json>> {
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(statement(
            backend,
            "SELECT content FROM audit_events WHERE id = ?",
            vec![id.into()],
        ))
        .await?;
    row.map(|row| content(backend, &row)).transpose()
}

fn content(backend: DbBackend, row: &sea_orm::QueryResult) -> FhirResult<Json> {
    if backend == DbBackend::Postgres {
        Ok(row.try_get("", "content")?)
    } else {
        let text: String = row.try_get("", "content")?;
        serde_json::from_str(&text).map_err(FhirError::internal)
    }
}
