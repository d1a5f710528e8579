//! The FHIR write interactions (create, update, patch, delete and their conditional
//! forms), run on a transaction. REST handlers, transaction Bundles and device adapters
//! all call these, so validation, versioning and indexing cannot be bypassed.

use axum::http::StatusCode;
use serde_json::Value as Json;

use super::matching::{find_matches, Match};
use super::time::now_micros;
use super::versions::{self, current_version, write_version, Method, StoredResource};
use super::write_txn::WriteTxn;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::fhir::resource::ValidResource;
use crate::search::visibility::Sight;

/// What a write did, for the status code and headers of the response.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub status: StatusCode,
    /// The version written (or found, for a conditional create that matched).
    pub resource: Option<StoredResource>,
}

impl WriteResult {
    fn created(resource: StoredResource) -> Self {
        WriteResult {
            status: StatusCode::CREATED,
            resource: Some(resource),
        }
    }

    fn ok(resource: StoredResource) -> Self {
        WriteResult {
            status: StatusCode::OK,
            resource: Some(resource),
        }
    }
}

/// `POST [type]`, optionally conditional (`If-None-Exist`). A client `id` is ignored:
/// the server assigns ids on create.
pub async fn create(
    conn: &WriteTxn<'_>,
    resource: ValidResource,
    if_none_exist: Option<&str>,
) -> FhirResult<WriteResult> {
    let resource_type = resource.resource_type().to_string();
    if let Some(criteria) = if_none_exist {
        let matches = find_matches(
            conn,
            &resource_type,
            criteria,
            Sight::of(&conn.caller(), Permission::Search),
        )
        .await?;
        match matches.as_slice() {
            [] => {}
            [one] => {
                let existing = versions::read_current(conn, &resource_type, &one.id)
                    .await?
                    .ok_or_else(|| FhirError::internal("matched resource vanished"))?;
                return Ok(WriteResult::ok(existing));
            }
            _ => return Err(multiple_matches(&resource_type, criteria, matches.len())),
        }
    }
    let id = new_id();
    create_with_id(conn, resource, &id).await
}

/// Stores `resource` as version 1 under `id` (a new resource).
pub async fn create_with_id(
    conn: &WriteTxn<'_>,
    resource: ValidResource,
    id: &str,
) -> FhirResult<WriteResult> {
    let resource_type = resource.resource_type().to_string();
    let mut content = resource.into_json_with_id(id);
    own_elements(&resource_type, &mut content, None);
    let stored = write_version(
        conn,
        &resource_type,
        id,
        None,
        Method::Post,
        Some(content),
        now_micros(),
    )
    .await?;
    Ok(WriteResult::created(stored))
}

/// `PUT [type]/[id]`: update, or create with the client's id when it does not exist.
pub async fn update(
    conn: &WriteTxn<'_>,
    resource: ValidResource,
    id: &str,
    if_match: Option<i64>,
) -> FhirResult<WriteResult> {
    let resource_type = resource.resource_type().to_string();
    match resource.id() {
        None => {
            return Err(FhirError::bad_request(format!(
            "the resource has no id; an update of {resource_type}/{id} must carry \"id\": \"{id}\""
        ))
            .at(format!("{resource_type}.id")))
        }
        Some(body_id) if body_id != id => {
            return Err(FhirError::bad_request(format!(
                "the resource id {body_id:?} does not match the id {id:?} in the URL"
            ))
            .at(format!("{resource_type}.id")))
        }
        Some(_) => {}
    }
    let current = current_version(conn, &resource_type, id).await?;
    check_if_match(&resource_type, id, current, if_match)?;
    let mut content = resource.into_json_with_id(id);
    if resource_type == "Subscription" && current.is_some_and(|(_, deleted)| !deleted) {
        let stored = versions::read_current(conn, &resource_type, id).await?;
        own_elements(
            &resource_type,
            &mut content,
            stored.as_ref().and_then(|s| s.content.as_ref()),
        );
    } else {
        own_elements(&resource_type, &mut content, None);
    }
    let stored = write_version(
        conn,
        &resource_type,
        id,
        current.map(|(version, _)| version),
        Method::Put,
        Some(content),
        now_micros(),
    )
    .await?;
    // A resource that did not exist, or had been deleted, is (re)created.
    let created = current.is_none_or(|(_, deleted)| deleted);
    Ok(if created {
        WriteResult::created(stored)
    } else {
        WriteResult::ok(stored)
    })
}

/// Sets the elements the server owns, whatever the client sent: `Subscription.status`
/// and `Subscription.error` (`stored` is the current version, if any).
fn own_elements(resource_type: &str, content: &mut Json, stored: Option<&Json>) {
    if resource_type != "Subscription" {
        return;
    }
    let status = crate::subscriptions::request::server_status(
        content["status"].as_str(),
        stored.and_then(|s| s["status"].as_str()),
    );
    content["status"] = Json::from(status);
    // `Subscription.error` reports the server's last delivery error: kept while the
    // subscription stays in error, gone once it is asked for again.
    let error = stored
        .filter(|_| status == "error")
        .and_then(|s| s.get("error"))
        .cloned();
    if let Some(object) = content.as_object_mut() {
        match error {
            Some(error) => {
                object.insert("error".into(), error);
            }
            None => {
                object.remove("error");
            }
        }
    }
}

/// `PUT [type]?criteria`: update the one match, create when nothing matches.
pub async fn conditional_update(
    conn: &WriteTxn<'_>,
    resource: ValidResource,
    criteria: &str,
    if_match: Option<i64>,
) -> FhirResult<WriteResult> {
    let resource_type = resource.resource_type().to_string();
    let matches = find_matches(
        conn,
        &resource_type,
        criteria,
        Sight::of(&conn.caller(), Permission::Search),
    )
    .await?;
    match matches.as_slice() {
        [] => match resource.id().map(str::to_string) {
            // No match and a client id: update-as-create with that id.
            Some(id) => update(conn, resource, &id, if_match).await,
            None => create_with_id(conn, resource, &new_id()).await,
        },
        [one] => {
            if let Some(body_id) = resource.id() {
                if body_id != one.id {
                    return Err(FhirError::bad_request(format!(
                        "the resource id {body_id:?} differs from the id {:?} of the resource matching {criteria:?}",
                        one.id
                    ))
                    .at(format!("{resource_type}.id")));
                }
            }
            let id = one.id.clone();
            update(conn, resource.with_id(&id), &id, if_match).await
        }
        _ => Err(multiple_matches(&resource_type, criteria, matches.len())),
    }
}

/// `PATCH [type]/[id]` with a JSON Patch document.
pub async fn patch(
    conn: &WriteTxn<'_>,
    resource_type: &str,
    id: &str,
    patch: &json_patch::Patch,
    if_match: Option<i64>,
) -> FhirResult<WriteResult> {
    let current = versions::read_current(conn, resource_type, id).await?;
    let Some(current) = current else {
        return Err(FhirError::not_found(format!(
            "{resource_type}/{id} does not exist"
        )));
    };
    if current.deleted {
        return Err(FhirError::gone(format!(
            "{resource_type}/{id} was deleted (version {})",
            current.version_id
        )));
    }
    check_if_match(
        resource_type,
        id,
        Some((current.version_id, false)),
        if_match,
    )?;
    let mut content = current.content.clone().unwrap_or(Json::Null);
    json_patch::patch(&mut content, patch).map_err(|e| {
        FhirError::unprocessable(
            IssueCode::Processing,
            format!("the JSON Patch cannot be applied to {resource_type}/{id}: {e}"),
        )
    })?;
    let patched = ValidResource::parse(content, Some(resource_type)).map_err(|mut err| {
        // The document was well-formed but produced an invalid resource.
        err.status = StatusCode::UNPROCESSABLE_ENTITY;
        err
    })?;
    if patched.id() != Some(id) {
        return Err(FhirError::unprocessable(
            IssueCode::Processing,
            "a patch may not change or remove the resource id",
        )
        .at(format!("{resource_type}.id")));
    }
    let mut content = patched.into_json_with_id(id);
    own_elements(resource_type, &mut content, current.content.as_ref());
    let stored = write_version(
        conn,
        resource_type,
        id,
        Some(current.version_id),
        Method::Patch,
        Some(content),
        now_micros(),
    )
    .await?;
    Ok(WriteResult::ok(stored))
}

/// `DELETE [type]/[id]`: writes a tombstone version. Deleting what is already deleted
/// changes nothing.
pub async fn delete(
    conn: &WriteTxn<'_>,
    resource_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> FhirResult<WriteResult> {
    let current = current_version(conn, resource_type, id).await?;
    check_if_match(resource_type, id, current, if_match)?;
    match current {
        None => Err(FhirError::not_found(format!(
            "{resource_type}/{id} does not exist"
        ))),
        Some((_, true)) => Ok(WriteResult {
            status: StatusCode::NO_CONTENT,
            resource: None,
        }),
        Some((version, false)) => {
            let stored = write_version(
                conn,
                resource_type,
                id,
                Some(version),
                Method::Delete,
                None,
                now_micros(),
            )
            .await?;
            Ok(WriteResult {
                status: StatusCode::NO_CONTENT,
                resource: Some(stored),
            })
        }
    }
}

/// `DELETE [type]?criteria`: deletes the one match; nothing to do when none matches;
/// 412 when several match (conditionalDelete = single).
pub async fn conditional_delete(
    conn: &WriteTxn<'_>,
    resource_type: &str,
    criteria: &str,
) -> FhirResult<WriteResult> {
    let matches = find_matches(
        conn,
        resource_type,
        criteria,
        Sight::of(&conn.caller(), Permission::Search),
    )
    .await?;
    match matches.as_slice() {
        [] => Ok(WriteResult {
            status: StatusCode::NO_CONTENT,
            resource: None,
        }),
        [Match { id, .. }] => delete(conn, resource_type, &id.clone(), None).await,
        _ => Err(multiple_matches(resource_type, criteria, matches.len())),
    }
}

fn check_if_match(
    resource_type: &str,
    id: &str,
    current: Option<(i64, bool)>,
    if_match: Option<i64>,
) -> FhirResult<()> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    match current {
        Some((version, _)) if version == expected => Ok(()),
        Some((version, _)) => Err(FhirError::precondition_failed(format!(
            "version conflict: If-Match asks for version {expected} of {resource_type}/{id}, \
             but the current version is {version}; read it again and retry"
        ))),
        None => Err(FhirError::precondition_failed(format!(
            "If-Match asks for version {expected} of {resource_type}/{id}, which does not exist"
        ))),
    }
}

fn multiple_matches(resource_type: &str, criteria: &str, count: usize) -> FhirError {
    FhirError::new(
        StatusCode::PRECONDITION_FAILED,
        IssueCode::MultipleMatches,
        format!(
            "{count} {resource_type} resources match {criteria:?}; the criteria must select at most one"
        ),
    )
}

/// Server-assigned ids are UUIDs (version 7: time-ordered, so new rows land together in
/// the primary-key index).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
