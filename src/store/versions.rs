//! Rows of `resources` (current versions) and `resource_versions` (every version).

use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Value};
use serde_json::Value as Json;

use super::sql::{json_value, statement};
use super::time::instant;
use super::write_txn::{Table, WriteTxn};
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::search::visibility::{Access, Sight, Visible};
use crate::subscriptions::topics::Interaction;
use axum::http::StatusCode;

/// One stored version of a resource.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    /// Microseconds since the Unix epoch.
    pub last_updated: i64,
    pub deleted: bool,
    /// The resource with `id` and `meta.versionId`/`meta.lastUpdated` set; `None` for a
    /// deletion.
    pub content: Option<Json>,
}

impl StoredResource {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version_id)
    }
}

/// The HTTP method that produced a version, kept for history bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn parse(text: &str) -> Method {
        match text {
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Put,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub seq: i64,
    pub method: Method,
    pub resource: StoredResource,
}

#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// `seq` to continue from (exclusive) when there are more entries.
    pub next_before_seq: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

const CURRENT_COLUMNS: &str = "resource_type, id, version_id, last_updated, deleted, content";

pub async fn read_current(
    conn: &impl ConnectionTrait,
    resource_type: &str,
    id: &str,
) -> FhirResult<Option<StoredResource>> {
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(statement(
            backend,
            &format!("SELECT {CURRENT_COLUMNS} FROM resources WHERE resource_type = ? AND id = ?"),
            vec![resource_type.into(), id.into()],
        ))
        .await?;
    row.map(|row| stored_from_row(backend, &row)).transpose()
}

pub async fn read_version(
    conn: &impl ConnectionTrait,
    resource_type: &str,
    id: &str,
    version_id: i64,
) -> FhirResult<Option<StoredResource>> {
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(statement(
            backend,
            &format!(
                "SELECT {CURRENT_COLUMNS} FROM resource_versions \
                 WHERE resource_type = ? AND id = ? AND version_id = ?"
            ),
            vec![resource_type.into(), id.into(), version_id.into()],
        ))
        .await?;
    row.map(|row| stored_from_row(backend, &row)).transpose()
}

/// Version number and deletion flag of the current version, locking the row on
/// PostgreSQL so concurrent writers to one resource take turns.
pub async fn current_version(
    conn: &impl ConnectionTrait,
    resource_type: &str,
    id: &str,
) -> FhirResult<Option<(i64, bool)>> {
    let backend = conn.get_database_backend();
    let lock = if backend == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let row = conn
        .query_one_raw(statement(
            backend,
            &format!(
                "SELECT version_id, deleted FROM resources WHERE resource_type = ? AND id = ?{lock}"
            ),
            vec![resource_type.into(), id.into()],
        ))
        .await?;
    match row {
        Some(row) => Ok(Some((
            row.try_get::<i64>("", "version_id")?,
            row.try_get::<bool>("", "deleted")?,
        ))),
        None => Ok(None),
    }
}

/// The current version of each resource.
pub static RESOURCES: Table = Table {
    name: "resources",
    columns: &[
        ("resource_type", "text"),
        ("id", "text"),
        ("version_id", "bigint"),
        ("last_updated", "bigint"),
        ("deleted", "boolean"),
        ("content", "jsonb"),
    ],
};

/// Every version ever written.
pub static RESOURCE_VERSIONS: Table = Table {
    name: "resource_versions",
    columns: &[
        ("resource_type", "text"),
        ("id", "text"),
        ("version_id", "bigint"),
        ("last_updated", "bigint"),
        ("method", "text"),
        ("deleted", "boolean"),
        ("content", "jsonb"),
    ],
};

/// Writes a new version of a resource: `previous` is the current version number
/// (`None` when the resource never existed). `content` must already carry `id`; this
/// sets `meta.versionId` and `meta.lastUpdated` and rewrites the search index.
pub async fn write_version(
    conn: &WriteTxn<'_>,
    resource_type: &str,
    id: &str,
    previous: Option<i64>,
    method: Method,
    mut content: Option<Json>,
    last_updated: i64,
) -> FhirResult<StoredResource> {
    let backend = conn.get_database_backend();
    let version_id = previous.unwrap_or(0) + 1;
    let caller = conn.caller();
    if let (Some(access), Some(_)) = (&caller, previous) {
        check_replaced(conn, access.as_ref(), resource_type, id, content.is_none()).await?;
    }
    let signing_secret = match (resource_type, content.as_mut()) {
        ("Subscription", Some(resource)) => {
            crate::subscriptions::outbox::prepare_subscription(conn, resource)?
        }
        _ => None,
    };
    if let Some(resource) = content.as_mut() {
        set_meta(resource, version_id, last_updated)?;
    }
    let deleted = content.is_none();
    let body = match &content {
        Some(resource) => json_value(backend, resource),
        None => null_json(backend),
    };
    if previous.is_some() {
        conn.execute_raw(statement(
            backend,
            "UPDATE resources SET version_id = ?, last_updated = ?, deleted = ?, content = ? \
             WHERE resource_type = ? AND id = ?",
            vec![
                version_id.into(),
                last_updated.into(),
                deleted.into(),
                body.clone(),
                resource_type.into(),
                id.into(),
            ],
        ))
        .await?;
    } else {
        // A new resource: nothing reads this row back within the job, so it can travel
        // with the other deferred inserts.
        conn.defer(
            &RESOURCES,
            vec![
                resource_type.into(),
                id.into(),
                version_id.into(),
                last_updated.into(),
                deleted.into(),
                body.clone(),
            ],
        )
        .await;
    }
    conn.defer(
        &RESOURCE_VERSIONS,
        vec![
            resource_type.into(),
            id.into(),
            version_id.into(),
            last_updated.into(),
            method.as_str().into(),
            deleted.into(),
            body,
        ],
    )
    .await;
    super::index::reindex(
        conn,
        resource_type,
        id,
        content.as_ref(),
        previous.is_some(),
    )
    .await?;
    if resource_type == "Subscription" {
        crate::subscriptions::outbox::subscription_written(
            conn,
            id,
            content.as_ref(),
            signing_secret,
        )
        .await?;
    }
    // After the subscription's state: a patient/ token's own subscriptions are the ones
    // its client wrote.
    if let (Some(access), Some(written)) = (&caller, &content) {
        check_written(conn, access.as_ref(), resource_type, id, previous.is_some()).await?;
        if resource_type == "Subscription" {
            check_subscribed_types(access.as_ref(), written)?;
        }
    }
    let interaction = match (&content, previous) {
        (None, _) => Interaction::Delete,
        (Some(_), None) => Interaction::Create,
        (Some(_), Some(_)) => Interaction::Update,
    };
    crate::subscriptions::outbox::record_events(
        conn,
        resource_type,
        id,
        version_id,
        interaction,
        content.as_ref(),
        last_updated,
    )
    .await?;
    // Creating a draft SearchParameter changes nothing for search; creating an active one,
    // or changing or deleting any, may.
    if resource_type == "SearchParameter"
        && (previous.is_some()
            || content
                .as_ref()
                .is_some_and(super::search_parameters::is_active))
    {
        conn.search_parameters_changed().await;
    }
    Ok(StoredResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version_id,
        last_updated,
        deleted,
        content,
    })
}

/// A caller with limited access changes only what it may: the current version of an
/// update or delete must be within its access for that change.
async fn check_replaced(
    conn: &WriteTxn<'_>,
    access: &dyn Access,
    resource_type: &str,
    id: &str,
    deleting: bool,
) -> FhirResult<()> {
    let permission = match deleting {
        true => Permission::Delete,
        false => Permission::Update,
    };
    let sight = Sight::new(Some(access), permission);
    if !sight.is_limited() || sight.sees(conn, resource_type, id).await? {
        return Ok(());
    }
    // A deleted resource has no content to judge by; re-creating it is judged by what is
    // written.
    if matches!(
        current_version(conn, resource_type, id).await?,
        Some((_, true)) | None
    ) {
        return Ok(());
    }
    Err(FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        format!(
            "{resource_type}/{id} is outside what the token may {}: {}",
            if deleting { "delete" } else { "change" },
            sight.limits(resource_type)
        ),
    ))
}

/// ... and the version it stores must be within its access too (a `patient/` token writes
/// only its patient's data).
async fn check_written(
    conn: &WriteTxn<'_>,
    access: &dyn Access,
    resource_type: &str,
    id: &str,
    replaced: bool,
) -> FhirResult<()> {
    let permission = match replaced {
        true => Permission::Update,
        false => Permission::Create,
    };
    let sight = Sight::new(Some(access), permission);
    if !sight.is_limited() || sight.sees(conn, resource_type, id).await? {
        return Ok(());
    }
    let why = match sight.visible(resource_type, 0) {
        Visible::Nothing => format!("the token's scopes do not grant writing {resource_type}"),
        _ => format!(
            "the {resource_type} would be outside what the token may write: {} (a patient/ \
             token writes only its patient's data, e.g. with subject referring to its patient)",
            sight.limits(resource_type)
        ),
    };
    Err(FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        why,
    ))
}

/// A subscription delivers only what its owner may read: one to types the owner cannot
/// read at all would never deliver anything, and is refused.
fn check_subscribed_types(access: &dyn Access, subscription: &Json) -> FhirResult<()> {
    let Some(live) = crate::subscriptions::registry::LiveSubscription::compile(subscription) else {
        return Ok(());
    };
    let sight = Sight::new(Some(access), Permission::Read);
    let types: Vec<&str> = live.resource_types().collect();
    let readable = types.iter().any(|t| {
        *t == crate::subscriptions::topics::ANY_RESOURCE
            || !matches!(sight.visible(t, 0), Visible::Nothing)
    });
    if readable {
        return Ok(());
    }
    Err(FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        format!(
            "the subscription is about {}, which the token's scopes do not grant reading; \
             notifications carry only what the subscriber may read",
            types.join(", ")
        ),
    )
    .at("Subscription.criteria"))
}

pub async fn history(
    conn: &impl ConnectionTrait,
    scope: &HistoryScope,
    since: Option<i64>,
    count: u64,
    before_seq: Option<i64>,
    visible: Option<(String, Vec<Value>)>,
) -> FhirResult<HistoryPage> {
    let backend = conn.get_database_backend();
    let mut conditions: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some((sql, visible_values)) = &visible {
        conditions.push(sql);
        values.extend(visible_values.iter().cloned());
    }
    match scope {
        HistoryScope::System => {}
        HistoryScope::Type(resource_type) => {
            conditions.push("resource_type = ?");
            values.push(resource_type.as_str().into());
        }
        HistoryScope::Instance(resource_type, id) => {
            conditions.push("resource_type = ?");
            conditions.push("id = ?");
            values.push(resource_type.as_str().into());
            values.push(id.as_str().into());
        }
    }
    if let Some(since) = since {
        conditions.push("last_updated >= ?");
        values.push(since.into());
    }
    if let Some(before) = before_seq {
        conditions.push("seq < ?");
        values.push(before.into());
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    values.push(((count + 1) as i64).into());
    let rows = conn
        .query_all_raw(statement(
            backend,
            &format!(
                "SELECT seq, method, {CURRENT_COLUMNS} FROM resource_versions {filter} \
                 ORDER BY seq DESC LIMIT ?"
            ),
            values,
        ))
        .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows.iter().take(count as usize) {
        entries.push(HistoryEntry {
            seq: row.try_get::<i64>("", "seq")?,
            method: Method::parse(&row.try_get::<String>("", "method")?),
            resource: stored_from_row(backend, row)?,
        });
    }
    let next_before_seq = if rows.len() as u64 > count {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(HistoryPage {
        entries,
        next_before_seq,
    })
}

pub fn stored_from_row(backend: DbBackend, row: &QueryResult) -> FhirResult<StoredResource> {
    let deleted: bool = row.try_get("", "deleted")?;
    let content = if deleted {
        None
    } else if backend == DbBackend::Postgres {
        row.try_get::<Option<Json>>("", "content")?
    } else {
        match row.try_get::<Option<String>>("", "content")? {
            Some(text) => Some(serde_json::from_str(&text).map_err(FhirError::internal)?),
            None => None,
        }
    };
    Ok(StoredResource {
        resource_type: row.try_get("", "resource_type")?,
        id: row.try_get("", "id")?,
        version_id: row.try_get("", "version_id")?,
        last_updated: row.try_get("", "last_updated")?,
        deleted,
        content,
    })
}

fn null_json(backend: DbBackend) -> Value {
    if backend == DbBackend::Postgres {
        Value::Json(None)
    } else {
        Value::String(None)
    }
}

/// Sets the server-managed `meta.versionId` and `meta.lastUpdated`, keeping the other
/// meta elements (profile, tag, security, source) the client sent.
fn set_meta(resource: &mut Json, version_id: i64, last_updated: i64) -> FhirResult<()> {
    let object = resource
        .as_object_mut()
        .ok_or_else(|| FhirError::internal("resource to store is not a JSON object"))?;
    let meta = object
        .entry("meta")
        .or_insert_with(|| Json::Object(Default::default()));
    if !meta.is_object() {
        *meta = Json::Object(Default::default());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), Json::String(version_id.to_string()));
        meta.insert("lastUpdated".into(), Json::String(instant(last_updated)));
    }
    Ok(())
}
