//! `POST /fhir`: batch and transaction Bundles.
//!
//! Entries are parsed and validated before anything is written. They are then processed
//! in the order the specification sets — DELETE, POST, PUT/PATCH, GET — inside one write
//! job. A transaction is all or nothing: the first failing entry rolls back everything and
//! the response names that entry. A batch runs each entry in its own savepoint and reports
//! each entry's own status. `urn:uuid:` full URLs and conditional references
//! (`Patient?identifier=…`) are resolved to the ids the transaction assigns or finds.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use serde_json::{json, Map, Value as Json};

use super::extract::Caller;
use super::extract::{BaseUrl, FhirJson, Prefer, ReturnPreference};
use super::respond::fhir_json;
use super::AppState;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::Definitions;
use crate::fhir::outcome::{operation_outcome, Issue, IssueCode};
use crate::fhir::resource::{is_valid_id, ValidResource};
use crate::search::visibility::Sight;
use crate::store::matching::find_matches;
use crate::store::repository::{self, new_id, WriteResult};
use crate::store::time::instant;
use crate::store::{versions, StoredResource, WriteTxn};

/// Process a batch or transaction Bundle.
#[utoipa::path(
    post, path = "/fhir", tag = "System interactions",
    request_body(content = Object, content_type = "application/fhir+json", description = "Bundle of type batch or transaction",
        example = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": {"resourceType": "Patient", "identifier": [{"system": "http://acme.org/mrn", "value": "12345"}]},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://acme.org/mrn|12345"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
             "request": {"method": "POST", "url": "Observation"}}]})),
    responses(
        (status = 200, description = "batch-response or transaction-response Bundle", content_type = "application/fhir+json"),
        (status = 400, description = "Not a batch/transaction Bundle, or a transaction entry is invalid (the outcome names the entry)", content_type = "application/fhir+json"),
        (status = 412, description = "A transaction's conditional entry matched several resources", content_type = "application/fhir+json"),
    )
)]
pub async fn batch_or_transaction(
    State(state): State<AppState>,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> FhirResult<Response> {
    let kind = bundle_kind(&body)?;
    let prefer = Prefer::from_headers(&headers).return_;
    let raw_entries = body
        .get("entry")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let mut entries = Vec::with_capacity(raw_entries.len());
    for (index, raw) in raw_entries.into_iter().enumerate() {
        match parse_entry(index, raw) {
            Ok(entry) => entries.push(Ok(entry)),
            Err(err) if kind == Kind::Transaction => return Err(at_entry(err, index)),
            Err(err) => entries.push(Err(err)),
        }
    }
    if kind == Kind::Transaction {
        check_distinct_targets(&entries)?;
    }
    let base_for_job = base.clone();
    let results = state
        .store
        .writer()
        .write_as(caller.0, move |txn| {
            Box::pin(async move {
                match kind {
                    Kind::Transaction => {
                        // Parse errors ended a transaction above: all entries are parsed.
                        let entries = entries.into_iter().filter_map(Result::ok).collect();
                        run_transaction(txn, entries, &base_for_job).await
                    }
                    Kind::Batch => run_batch(txn, entries, &base_for_job).await,
                }
            })
        })
        .await?;
    let response_type = match kind {
        Kind::Transaction => "transaction-response",
        Kind::Batch => "batch-response",
    };
    let entries: Vec<Json> = results
        .iter()
        .map(|result| response_entry(result, prefer, &base))
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": response_type,
    });
    if !entries.is_empty() {
        bundle["entry"] = Json::Array(entries);
    }
    Ok(fhir_json(StatusCode::OK, &bundle))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Transaction,
}

fn bundle_kind(body: &Json) -> FhirResult<Kind> {
    if body.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return Err(FhirError::bad_request(
            "POST to the base URL takes a Bundle of type batch or transaction",
        )
        .at("resourceType"));
    }
    match body.get("type").and_then(Json::as_str) {
        Some("transaction") => Ok(Kind::Transaction),
        Some("batch") => Ok(Kind::Batch),
        Some(other) => Err(FhirError::bad_request(format!(
            "Bundle.type {other:?} cannot be processed; POST a Bundle of type batch or transaction"
        ))
        .at("Bundle.type")),
        None => Err(FhirError::bad_request("Bundle.type is missing").at("Bundle.type")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verb {
    // Declared in processing order.
    Delete,
    Post,
    Put,
    Patch,
    Get,
    Head,
}

/// What an entry's `request.url` addresses.
#[derive(Debug, Clone)]
enum Target {
    Type(String),
    Instance(String, String),
    Version(String, String, i64),
    /// `Type?criteria`
    Search(String, String),
}

impl Target {
    fn resource_type(&self) -> &str {
        match self {
            Target::Type(t)
            | Target::Instance(t, _)
            | Target::Version(t, _, _)
            | Target::Search(t, _) => t,
        }
    }
}

struct Entry {
    index: usize,
    full_url: Option<String>,
    verb: Verb,
    target: Target,
    resource: Option<ValidResource>,
    patch: Option<json_patch::Patch>,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
    /// A POST whose `ifNoneExist` matched an existing resource: nothing is created.
    matched: bool,
}

fn at_entry(mut err: FhirError, index: usize) -> FhirError {
    for issue in &mut err.issues {
        issue.diagnostics = format!("Bundle.entry[{index}]: {}", issue.diagnostics);
        if issue.expression.is_empty() {
            issue.expression.push(format!("Bundle.entry[{index}]"));
        } else {
            for expression in &mut issue.expression {
                if !expression.starts_with("Bundle.entry[") {
                    *expression = format!("Bundle.entry[{index}].resource.{expression}");
                }
            }
        }
    }
    err
}

fn parse_entry(index: usize, raw: Json) -> FhirResult<Entry> {
    let request = raw.get("request").ok_or_else(|| {
        FhirError::bad_request("the entry has no request (method and url)")
            .at(format!("Bundle.entry[{index}].request"))
    })?;
    let method = request.get("method").and_then(Json::as_str).unwrap_or("");
    let verb = match method {
        "GET" => Verb::Get,
        "HEAD" => Verb::Head,
        "POST" => Verb::Post,
        "PUT" => Verb::Put,
        "PATCH" => Verb::Patch,
        "DELETE" => Verb::Delete,
        other => {
            return Err(FhirError::bad_request(format!(
                "request.method {other:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE"
            ))
            .at(format!("Bundle.entry[{index}].request.method")))
        }
    };
    let url = request.get("url").and_then(Json::as_str).ok_or_else(|| {
        FhirError::bad_request("request.url is missing")
            .at(format!("Bundle.entry[{index}].request.url"))
    })?;
    let target =
        parse_target(url).map_err(|e| e.at(format!("Bundle.entry[{index}].request.url")))?;
    let if_match = match request.get("ifMatch").and_then(Json::as_str) {
        Some(text) => Some(parse_version_tag(text).ok_or_else(|| {
            FhirError::bad_request(format!("ifMatch must be W/\"<versionId>\", not {text:?}"))
                .at(format!("Bundle.entry[{index}].request.ifMatch"))
        })?),
        None => None,
    };
    let if_none_exist = request
        .get("ifNoneExist")
        .and_then(Json::as_str)
        .map(str::to_string);
    let mut resource = None;
    let mut patch = None;
    match verb {
        Verb::Post | Verb::Put => {
            let body = raw.get("resource").cloned().ok_or_else(|| {
                FhirError::bad_request(format!("a {method} entry needs a resource"))
                    .at(format!("Bundle.entry[{index}].resource"))
            })?;
            let valid = ValidResource::parse(body, Some(target.resource_type()))?;
            resource = Some(valid);
        }
        Verb::Patch => patch = Some(parse_patch_binary(raw.get("resource"))?),
        _ => {}
    }
    match (verb, &target) {
        (Verb::Post, Target::Type(_))
        | (Verb::Put, Target::Instance(..) | Target::Search(..))
        | (Verb::Patch, Target::Instance(..))
        | (Verb::Delete, Target::Instance(..) | Target::Search(..))
        | (Verb::Get | Verb::Head, _) => {}
        _ => {
            return Err(FhirError::bad_request(format!(
                "{method} {url} is not an interaction this server supports in a Bundle"
            ))
            .at(format!("Bundle.entry[{index}].request")))
        }
    }
    Ok(Entry {
        index,
        full_url: raw
            .get("fullUrl")
            .and_then(Json::as_str)
            .map(str::to_string),
        verb,
        target,
        resource,
        patch,
        if_match,
        if_none_exist,
        matched: false,
    })
}

fn parse_target(url: &str) -> FhirResult<Target> {
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let check = |resource_type: &str| -> FhirResult<String> {
        if Definitions::get().is_resource_type(resource_type) {
            Ok(resource_type.to_string())
        } else {
            Err(FhirError::bad_request(format!(
                "unknown resource type {resource_type:?} in request.url {url:?}"
            )))
        }
    };
    let check_id = |id: &str| -> FhirResult<String> {
        if is_valid_id(id) {
            Ok(id.to_string())
        } else {
            Err(FhirError::bad_request(format!(
                "{id:?} in {url:?} is not a valid id"
            )))
        }
    };
    match (segments.as_slice(), query) {
        ([resource_type], Some(query)) => Ok(Target::Search(check(resource_type)?, query.to_string())),
        ([resource_type], None) => Ok(Target::Type(check(resource_type)?)),
        ([resource_type, id], _) => Ok(Target::Instance(check(resource_type)?, check_id(id)?)),
        ([resource_type, id, "_history", version], _) => {
            let version = version.parse().map_err(|_| {
                FhirError::bad_request(format!("{version:?} in {url:?} is not a version number"))
            })?;
            Ok(Target::Version(check(resource_type)?, check_id(id)?, version))
        }
        _ => Err(FhirError::bad_request(format!(
            "request.url {url:?} must be relative: Type, Type/id, Type/id/_history/vid or Type?criteria"
        ))),
    }
}

fn parse_version_tag(text: &str) -> Option<i64> {
    text.trim()
        .strip_prefix("W/")
        .unwrap_or(text)
        .trim_matches('"')
        .parse()
        .ok()
}

/// A PATCH entry carries its JSON Patch as a Binary resource.
fn parse_patch_binary(resource: Option<&Json>) -> FhirResult<json_patch::Patch> {
    use base64::Engine;
    let resource = resource.ok_or_else(|| {
        FhirError::bad_request("a PATCH entry needs a Binary resource holding a JSON Patch")
    })?;
    let content_type = resource
        .get("contentType")
        .and_then(Json::as_str)
        .unwrap_or("");
    if resource.get("resourceType").and_then(Json::as_str) != Some("Binary")
        || !content_type.starts_with("application/json-patch+json")
    {
        return Err(FhirError::bad_request(
            "a PATCH entry's resource must be a Binary with contentType application/json-patch+json",
        ));
    }
    let data = resource.get("data").and_then(Json::as_str).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| FhirError::bad_request(format!("Binary.data is not base64: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FhirError::bad_request(format!("Binary.data is not a JSON Patch: {e}")))
}

/// A transaction may not touch one resource twice (FHIR R4 transaction rules).
fn check_distinct_targets(entries: &[FhirResult<Entry>]) -> FhirResult<()> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for entry in entries.iter().flatten() {
        let key = match (&entry.verb, &entry.target) {
            (Verb::Get | Verb::Head, _) => continue,
            (_, Target::Instance(t, id)) => format!("{t}/{id}"),
            (_, Target::Search(t, q)) => format!("{t}?{q}"),
            _ => continue,
        };
        if let Some(first) = seen.insert(key.clone(), entry.index) {
            return Err(FhirError::bad_request(format!(
                "Bundle.entry[{first}] and Bundle.entry[{}] both act on {key}; a transaction may touch each resource once",
                entry.index
            )));
        }
    }
    Ok(())
}

/// The outcome of one entry, in request order.
struct EntryResult {
    index: usize,
    outcome: FhirResult<EntryOutcome>,
}

enum EntryOutcome {
    Written(WriteResult),
    Read(StoredResource),
    Searched(Json),
}

async fn run_transaction(
    txn: &WriteTxn<'_>,
    mut entries: Vec<Entry>,
    base: &BaseUrl,
) -> FhirResult<Vec<EntryResult>> {
    entries.sort_by_key(|e| (e.verb, e.index));
    let mut ids = IdMap::default();
    // Decide every id first, so references between entries can be rewritten before any
    // resource is written.
    for entry in entries.iter_mut() {
        assign_id(txn, entry, &mut ids)
            .await
            .map_err(|e| at_entry(e, entry.index))?;
    }
    let mut results = Vec::with_capacity(entries.len());
    for mut entry in entries {
        let index = entry.index;
        ids.rewrite(txn, &mut entry)
            .await
            .map_err(|e| at_entry(e, index))?;
        let outcome = run_entry(txn, entry, base)
            .await
            .map_err(|e| at_entry(e, index))?;
        results.push(EntryResult {
            index,
            outcome: Ok(outcome),
        });
    }
    results.sort_by_key(|r| r.index);
    Ok(results)
}

async fn run_batch(
    txn: &WriteTxn<'_>,
    entries: Vec<FhirResult<Entry>>,
    base: &BaseUrl,
) -> FhirResult<Vec<EntryResult>> {
    let mut results = Vec::with_capacity(entries.len());
    let mut ready = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        match entry {
            Ok(entry) => ready.push(entry),
            Err(err) => results.push(EntryResult {
                index,
                outcome: Err(err),
            }),
        }
    }
    ready.sort_by_key(|e| (e.verb, e.index));
    for mut entry in ready {
        let index = entry.index;
        // Each entry in its own scope: a failure undoes that entry only.
        txn.begin_scope().await;
        let mut ids = IdMap::default();
        let outcome = async {
            assign_id(txn, &mut entry, &mut ids).await?;
            ids.rewrite(txn, &mut entry).await?;
            run_entry(txn, entry, base).await
        }
        .await;
        txn.end_scope(outcome.is_ok()).await?;
        results.push(EntryResult { index, outcome });
    }
    results.sort_by_key(|r| r.index);
    Ok(results)
}

/// fullUrl → `Type/id` for the resources of this Bundle.
#[derive(Default)]
struct IdMap {
    by_full_url: HashMap<String, String>,
}

async fn assign_id(conn: &WriteTxn<'_>, entry: &mut Entry, ids: &mut IdMap) -> FhirResult<()> {
    let resource_type = entry.target.resource_type().to_string();
    let id = match (&entry.verb, &entry.target) {
        (Verb::Post, _) => {
            let mut found = None;
            if let Some(criteria) = &entry.if_none_exist {
                let matches = find_matches(
                    conn,
                    &resource_type,
                    criteria,
                    Sight::of(&conn.caller(), Permission::Search),
                )
                .await?;
                match matches.as_slice() {
                    [] => {}
                    [one] => found = Some(one.id.clone()),
                    _ => {
                        return Err(FhirError::new(
                            StatusCode::PRECONDITION_FAILED,
                            IssueCode::MultipleMatches,
                            format!(
                                "{} {resource_type} resources match ifNoneExist {criteria:?}",
                                matches.len()
                            ),
                        ))
                    }
                }
            }
            match found {
                Some(existing) => {
                    entry.matched = true;
                    existing
                }
                None => new_id(),
            }
        }
        (Verb::Put, Target::Search(_, criteria)) => {
            let matches = find_matches(
                conn,
                &resource_type,
                criteria,
                Sight::of(&conn.caller(), Permission::Search),
            )
            .await?;
            let id = match matches.as_slice() {
                [] => entry
                    .resource
                    .as_ref()
                    .and_then(|r| r.id().map(str::to_string))
                    .unwrap_or_else(new_id),
                [one] => one.id.clone(),
                _ => {
                    return Err(FhirError::new(
                        StatusCode::PRECONDITION_FAILED,
                        IssueCode::MultipleMatches,
                        format!(
                            "{} {resource_type} resources match {criteria:?}",
                            matches.len()
                        ),
                    ))
                }
            };
            entry.target = Target::Instance(resource_type.clone(), id.clone());
            id
        }
        (_, Target::Instance(_, id)) => id.clone(),
        _ => return Ok(()),
    };
    if let Some(resource) = entry.resource.take() {
        entry.resource = Some(resource.with_id(&id));
    }
    if let Some(full_url) = &entry.full_url {
        ids.by_full_url
            .insert(full_url.clone(), format!("{resource_type}/{id}"));
    }
    Ok(())
}

impl IdMap {
    /// Rewrites `urn:uuid:` references to other entries and conditional references
    /// (`Patient?identifier=…`) in the entry's resource.
    async fn rewrite(&self, conn: &WriteTxn<'_>, entry: &mut Entry) -> FhirResult<()> {
        let Some(resource) = entry.resource.take() else {
            return Ok(());
        };
        let mut resource = resource;
        let mut conditional = Vec::new();
        collect_conditional_references_in(resource.json(), &mut conditional);
        let mut resolved = HashMap::new();
        for reference in conditional {
            let (resource_type, criteria) = reference.split_once('?').unwrap_or_default();
            if !Definitions::get().is_resource_type(resource_type) {
                continue;
            }
            let matches = find_matches(
                conn,
                resource_type,
                criteria,
                Sight::of(&conn.caller(), Permission::Search),
            )
            .await?;
            match matches.as_slice() {
                [one] => {
                    resolved.insert(reference.clone(), format!("{resource_type}/{}", one.id));
                }
                _ => {
                    return Err(FhirError::new(
                        StatusCode::PRECONDITION_FAILED,
                        if matches.is_empty() { IssueCode::NotFound } else { IssueCode::MultipleMatches },
                        format!(
                            "the conditional reference {reference:?} matches {} resources; it must match exactly one",
                            matches.len()
                        ),
                    ))
                }
            }
        }
        for value in resource.json_mut().values_mut() {
            replace_strings(value, &self.by_full_url, &resolved);
        }
        entry.resource = Some(resource);
        Ok(())
    }
}

fn collect_conditional_references_in(map: &Map<String, Json>, out: &mut Vec<String>) {
    map.values()
        .for_each(|value| collect_conditional_references(value, out));
}

fn collect_conditional_references(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, child) in map {
                if key == "reference" {
                    // `Type?criteria`: a resource type name directly before the `?`.
                    if let Some(text) = child.as_str() {
                        let prefix = text.split('?').next().unwrap_or_default();
                        if text.contains('?') && Definitions::get().is_resource_type(prefix) {
                            out.push(text.to_string());
                        }
                    }
                } else {
                    collect_conditional_references(child, out);
                }
            }
        }
        Json::Array(items) => items
            .iter()
            .for_each(|item| collect_conditional_references(item, out)),
        _ => {}
    }
}

/// Replaces every string equal to a Bundle full URL (in references, uris, attachments…)
/// and mentions of those URLs in narrative.
fn replace_strings(
    value: &mut Json,
    full_urls: &HashMap<String, String>,
    conditional: &HashMap<String, String>,
) {
    match value {
        Json::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "div" {
                    if let Json::String(text) = child {
                        for (from, to) in full_urls {
                            if text.contains(from.as_str()) {
                                *text = text.replace(from.as_str(), to);
                            }
                        }
                    }
                } else {
                    replace_strings(child, full_urls, conditional);
                }
            }
        }
        Json::Array(items) => items
            .iter_mut()
            .for_each(|item| replace_strings(item, full_urls, conditional)),
        Json::String(text) => {
            if let Some(to) = full_urls
                .get(text.as_str())
                .or_else(|| conditional.get(text.as_str()))
            {
                *text = to.clone();
            }
        }
        _ => {}
    }
}

async fn run_entry(conn: &WriteTxn<'_>, entry: Entry, base: &BaseUrl) -> FhirResult<EntryOutcome> {
    let Entry {
        matched,
        verb,
        target,
        resource,
        patch,
        if_match,
        ..
    } = entry;
    match (verb, target) {
        (Verb::Delete, Target::Instance(t, id)) => {
            match repository::delete(conn, &t, &id, if_match).await {
                Ok(result) => Ok(EntryOutcome::Written(result)),
                // Deleting what does not exist leaves the server as asked: not an error.
                Err(e) if e.status == StatusCode::NOT_FOUND => {
                    Ok(EntryOutcome::Written(WriteResult {
                        status: StatusCode::NO_CONTENT,
                        resource: None,
                    }))
                }
                Err(e) => Err(e),
            }
        }
        (Verb::Delete, Target::Search(t, criteria)) => {
            repository::conditional_delete(conn, &t, &criteria)
                .await
                .map(EntryOutcome::Written)
        }
        (Verb::Post, Target::Type(_)) => {
            let resource =
                resource.ok_or_else(|| FhirError::internal("POST entry without resource"))?;
            let id = resource.id().unwrap_or_default().to_string();
            let resource_type = resource.resource_type().to_string();
            // ifNoneExist matched during id assignment: report the existing resource.
            if matched {
                let existing = versions::read_current(conn, &resource_type, &id).await?;
                return Ok(EntryOutcome::Written(WriteResult {
                    status: StatusCode::OK,
                    resource: existing,
                }));
            }
            repository::create_with_id(conn, resource, &id)
                .await
                .map(EntryOutcome::Written)
        }
        (Verb::Put, Target::Instance(_, id)) => {
            let resource =
                resource.ok_or_else(|| FhirError::internal("PUT entry without resource"))?;
            repository::update(conn, resource, &id, if_match)
                .await
                .map(EntryOutcome::Written)
        }
        (Verb::Patch, Target::Instance(t, id)) => {
            let patch = patch.ok_or_else(|| FhirError::internal("PATCH entry without patch"))?;
            repository::patch(conn, &t, &id, &patch, if_match)
                .await
                .map(EntryOutcome::Written)
        }
        (Verb::Get | Verb::Head, Target::Instance(t, id)) => {
            check_sees(conn, &t, &id).await?;
            match versions::read_current(conn, &t, &id).await? {
                None => Err(FhirError::not_found(format!(
                    "{t}/{id} is not known to this server"
                ))),
                Some(s) if s.deleted => Err(FhirError::gone(format!("{t}/{id} was deleted"))),
                Some(s) => Ok(EntryOutcome::Read(s)),
            }
        }
        (Verb::Get | Verb::Head, Target::Version(t, id, v)) => {
            check_sees(conn, &t, &id).await?;
            match versions::read_version(conn, &t, &id, v).await? {
                None => Err(FhirError::not_found(format!("{t}/{id} has no version {v}"))),
                Some(s) if s.deleted => Err(FhirError::gone(format!(
                    "version {v} of {t}/{id} is a deletion"
                ))),
                Some(s) => Ok(EntryOutcome::Read(s)),
            }
        }
        (Verb::Get | Verb::Head, Target::Search(t, criteria)) => {
            let matches = find_matches(
                conn,
                &t,
                &criteria,
                Sight::of(&conn.caller(), Permission::Search),
            )
            .await?;
            let mut found = Vec::new();
            for m in matches {
                if let Some(stored) = versions::read_current(conn, &t, &m.id).await? {
                    if let Some(content) = stored.content {
                        found.push(json!({
                            "fullUrl": format!("{}/{t}/{}", base.0, m.id),
                            "resource": content,
                            "search": {"mode": "match"}
                        }));
                    }
                }
            }
            let mut bundle =
                json!({"resourceType": "Bundle", "type": "searchset", "total": found.len()});
            if !found.is_empty() {
                bundle["entry"] = Json::Array(found);
            }
            Ok(EntryOutcome::Searched(bundle))
        }
        (_, target) => Err(FhirError::bad_request(format!(
            "{verb:?} on {} is not supported in a Bundle",
            target.resource_type()
        ))),
    }
}

/// A read entry of a caller with limited access: the resource must be within it (judged
/// by its current version).
async fn check_sees(conn: &WriteTxn<'_>, resource_type: &str, id: &str) -> FhirResult<()> {
    let caller = conn.caller();
    let sight = Sight::of(&caller, Permission::Read);
    if !sight.is_limited() || sight.sees(conn, resource_type, id).await? {
        return Ok(());
    }
    Err(super::crud::outside_access(sight, resource_type, id))
}

fn response_entry(result: &EntryResult, prefer: ReturnPreference, base: &BaseUrl) -> Json {
    match &result.outcome {
        Err(err) => json!({
            "response": {
                "status": status_line(err.status),
                "outcome": operation_outcome(&err.issues),
            }
        }),
        Ok(EntryOutcome::Searched(bundle)) => json!({
            "resource": bundle,
            "response": {"status": "200 OK"}
        }),
        Ok(EntryOutcome::Read(stored)) => {
            let mut entry = json!({
                "fullUrl": format!("{}/{}/{}", base.0, stored.resource_type, stored.id),
            });
            if let Some(content) = &stored.content {
                entry["resource"] = content.clone();
            }
            entry["response"] = json!({
                "status": "200 OK",
                "etag": stored.etag(),
                "lastModified": instant(stored.last_updated),
            });
            entry
        }
        Ok(EntryOutcome::Written(written)) => {
            let mut response = Map::new();
            response.insert("status".into(), Json::String(status_line(written.status)));
            let mut entry = Map::new();
            if let Some(stored) = &written.resource {
                entry.insert(
                    "fullUrl".into(),
                    Json::String(format!("{}/{}/{}", base.0, stored.resource_type, stored.id)),
                );
                if let (Some(content), ReturnPreference::Representation) = (&stored.content, prefer)
                {
                    entry.insert("resource".into(), content.clone());
                }
                if stored.content.is_some() {
                    response.insert(
                        "location".into(),
                        Json::String(format!(
                            "{}/{}/_history/{}",
                            stored.resource_type, stored.id, stored.version_id
                        )),
                    );
                }
                response.insert("etag".into(), Json::String(stored.etag()));
                response.insert(
                    "lastModified".into(),
                    Json::String(instant(stored.last_updated)),
                );
                if prefer == ReturnPreference::OperationOutcome {
                    response.insert(
                        "outcome".into(),
                        operation_outcome(&[Issue::information(IssueCode::Informational, "OK")]),
                    );
                }
            }
            entry.insert("response".into(), Json::Object(response));
            Json::Object(entry)
        }
    }
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_string()
}
