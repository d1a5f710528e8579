//! The Observation operations `$lastn` (the most recent observations per code and subject)
//! and `$stats` (statistics over the quantities of a subject's observations), as the R4
//! OperationDefinitions `Observation-lastn` and `Observation-stats` define them.
//!
//! Both take their parameters from the query string (GET), a form body or a `Parameters`
//! resource (POST).
//!
//! `$lastn` runs the usual search criteria ([`crate::search::criteria::condition`]) and
//! ranks the matches with a SQL window function, per subject and per coding of
//! `Observation.code` (text-only codes by their text), newest effective time first, ties
//! sharing a rank. Codings that occur together on one Observation are the same code
//! (grouping is transitive, as the operation requires): the groups are merged here, and
//! because an Observation among the newest `max` of a merged group is among the newest
//! `max` of each of its codings, the ranked rows always contain the answer.
//!
//! `$stats` reads the stored Observations of one subject that carry the codes (in
//! `Observation.code` or `Observation.component.code`; a panel code stands for its
//! components and `hasMember` Observations) and computes the statistics of
//! [`crate::search::observation_stats`] over their UCUM `valueQuantity` values, one
//! statistics Observation per code (and per unit, when a code was recorded in several).

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use sea_orm::{ConnectionTrait, Value};
use serde_json::{json, Map, Value as Json};

use super::extract::{check_json_content_type, parse_json, BaseUrl, Caller, Prefer};
use super::respond::fhir_json;
use super::summary::{FormatParams, Summary};
use super::AppState;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::{operation_outcome, Issue, IssueCode};
use crate::search::criteria::{
    condition, condition_seen, conjunction, is_known, rows_of_type, split_unescaped, split_values,
    Condition, Selectivity,
};
use crate::search::extract::parse_date_range;
use crate::search::include::fetch_current;
use crate::search::observation_stats::{self, Outcome, Point, Sample, Statistic};
use crate::search::visibility::{Sight, Visible};
use crate::store::sql::statement;
use crate::store::time::{instant, now_micros};
use crate::store::versions::{stored_from_row, StoredResource};

const OBSERVATION: &str = "Observation";
const UCUM: &str = "http://unitsofmeasure.org";
const DATA_ABSENT: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";

/// Ranked rows `$lastn` reads at most (a row per Observation and coding); more is refused
/// with advice to narrow the query.
pub const MAX_LASTN_ROWS: usize = 10_000;
/// Observations `$stats` evaluates at most in one request.
pub const MAX_STATS_OBSERVATIONS: usize = 100_000;
/// Codes one `$stats` request may ask for.
const MAX_STATS_CODES: usize = 100;
/// Longest `duration` (hours): a thousand years.
const MAX_DURATION_HOURS: f64 = 1000.0 * 366.0 * 24.0;

/// Search parameters of Observation that hold a code, one of which `$lastn` requires.
const CODE_PARAMETERS: &[&str] = &[
    "category",
    "code",
    "combo-code",
    "component-code",
    "code-value-concept",
    "code-value-date",
    "code-value-quantity",
    "code-value-string",
    "combo-code-value-concept",
    "combo-code-value-quantity",
    "component-code-value-concept",
    "component-code-value-quantity",
];

// ---------------------------------------------------------------------------------------
// Input: query string, form body or Parameters resource
// ---------------------------------------------------------------------------------------

/// One operation parameter.
#[derive(Debug, Clone)]
pub struct OpParam {
    pub name: String,
    /// The value as a query string carries it (a Coding as `system|code`, a Period as
    /// `start/end`).
    pub text: String,
    /// The JSON value of a complex `value[x]` of a Parameters resource (Coding, Period).
    pub complex: Option<Json>,
}

/// The parameters of an operation request: the query string, then the body (a form or a
/// `Parameters` resource). Every malformed body is a FHIR error.
pub struct OperationInput(pub Vec<OpParam>);

impl FromRequest<AppState> for OperationInput {
    type Rejection = FhirError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let mut params: Vec<OpParam> = req.uri().query().map(form_params).unwrap_or_default();
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let headers = req.headers().clone();
        let limit = state.config.max_body_bytes;
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                FhirError::new(
                    status,
                    IssueCode::TooLong,
                    format!(
                        "the request body is larger than the {limit} bytes this server accepts"
                    ),
                )
            } else {
                FhirError::new(status, IssueCode::Invalid, rejection.body_text())
            }
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OperationInput(params));
        }
        if content_type.as_deref() == Some("application/x-www-form-urlencoded") {
            let form = std::str::from_utf8(&body)
                .map_err(|_| FhirError::bad_request("the form body is not UTF-8"))?;
            params.extend(form_params(form));
        } else {
            check_json_content_type(&headers)?;
            params.extend(parameters_resource(&parse_json(&body)?)?);
        }
        Ok(OperationInput(params))
    }
}

fn form_params(query: &str) -> Vec<OpParam> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .map(|(name, text)| OpParam {
            name,
            text,
            complex: None,
        })
        .collect()
}

/// The parameters of a `Parameters` resource, each `value[x]` as text.
fn parameters_resource(body: &Json) -> FhirResult<Vec<OpParam>> {
    if body.get("resourceType").and_then(Json::as_str) != Some("Parameters") {
        return Err(FhirError::bad_request(
            "the body must be a Parameters resource (application/fhir+json) or a form \
             (application/x-www-form-urlencoded) holding the operation's parameters",
        ));
    }
    let mut params = Vec::new();
    let list = match body.get("parameter") {
        None => return Ok(params),
        Some(Json::Array(list)) => list,
        Some(_) => {
            return Err(
                FhirError::bad_request("Parameters.parameter must be an array")
                    .at("Parameters.parameter"),
            )
        }
    };
    for (i, parameter) in list.iter().enumerate() {
        let at = format!("Parameters.parameter[{i}]");
        let Some(name) = parameter.get("name").and_then(Json::as_str) else {
            return Err(FhirError::bad_request(format!("{at} has no name")).at(at));
        };
        if parameter.get("resource").is_some() || parameter.get("part").is_some() {
            return Err(FhirError::bad_request(format!(
                "the parameter {name} takes a value[x], not a resource or parts"
            ))
            .at(at));
        }
        let Some((key, value)) = parameter
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
        else {
            return Err(
                FhirError::bad_request(format!("the parameter {name} has no value[x]")).at(at),
            );
        };
        let (text, complex) =
            value_text(name, key, value).map_err(|e| e.at(format!("{at}.{key}")))?;
        params.push(OpParam {
            name: name.to_string(),
            text,
            complex,
        });
    }
    Ok(params)
}

fn value_text(name: &str, key: &str, value: &Json) -> FhirResult<(String, Option<Json>)> {
    let wrong = || FhirError::bad_request(format!("the parameter {name} has a malformed {key}"));
    let text = match (key, value) {
        ("valueBoolean", Json::Bool(b)) => b.to_string(),
        (
            "valueInteger" | "valuePositiveInt" | "valueUnsignedInt" | "valueDecimal",
            Json::Number(n),
        ) => n.to_string(),
        ("valueReference", Json::Object(o)) => o
            .get("reference")
            .and_then(Json::as_str)
            .ok_or_else(|| {
                FhirError::bad_request(format!(
                    "the parameter {name} needs valueReference.reference, e.g. Patient/123"
                ))
            })?
            .to_string(),
        ("valueCoding", Json::Object(o)) => {
            let system = o.get("system").and_then(Json::as_str).unwrap_or_default();
            let code = o.get("code").and_then(Json::as_str).unwrap_or_default();
            return Ok((
                format!("{}|{}", escape(system), escape(code)),
                Some(value.clone()),
            ));
        }
        ("valuePeriod", Json::Object(o)) => {
            let start = o.get("start").and_then(Json::as_str).unwrap_or_default();
            let end = o.get("end").and_then(Json::as_str).unwrap_or_default();
            return Ok((format!("{start}/{end}"), Some(value.clone())));
        }
        ("valueQuantity", Json::Object(o)) => {
            let number = o.get("value").map(|v| v.to_string()).unwrap_or_default();
            let system = o.get("system").and_then(Json::as_str).unwrap_or_default();
            let code = o.get("code").and_then(Json::as_str).unwrap_or_default();
            format!("{number}|{system}|{code}")
        }
        (
            "valueString" | "valueCode" | "valueUri" | "valueUrl" | "valueCanonical" | "valueId"
            | "valueOid" | "valueUuid" | "valueDate" | "valueDateTime" | "valueInstant"
            | "valueTime" | "valueMarkdown",
            Json::String(s),
        ) => s.clone(),
        (
            "valueBoolean" | "valueInteger" | "valuePositiveInt" | "valueUnsignedInt"
            | "valueDecimal" | "valueReference" | "valueCoding" | "valuePeriod" | "valueQuantity"
            | "valueString" | "valueCode" | "valueUri" | "valueUrl" | "valueCanonical" | "valueId"
            | "valueOid" | "valueUuid" | "valueDate" | "valueDateTime" | "valueInstant"
            | "valueTime" | "valueMarkdown",
            _,
        ) => return Err(wrong()),
        _ => {
            return Err(FhirError::bad_request(format!(
                "the parameter {name} cannot be given as {key}"
            )))
        }
    };
    Ok((text, None))
}

/// Escapes the search separators `,` and `|`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ',' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The base name of a search parameter: `subject:Patient.name` → `subject`.
fn base_name(name: &str) -> &str {
    let first = name.split('.').next().unwrap_or(name);
    first.split(':').next().unwrap_or(first)
}

fn positive_int(name: &str, text: &str) -> FhirResult<u64> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(FhirError::bad_request(format!(
            "{name} must be a whole number of 1 or more, not {text:?}"
        ))),
    }
}

fn query_string(params: &[(String, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

fn operation_url(base: &BaseUrl, operation: &str, params: &[(String, String)]) -> String {
    let query = query_string(params);
    if query.is_empty() {
        format!("{}/Observation/{operation}", base.0)
    } else {
        format!("{}/Observation/{operation}?{query}", base.0)
    }
}

// ---------------------------------------------------------------------------------------
// $lastn
// ---------------------------------------------------------------------------------------

/// `Observation/$lastn`: the most recent `max` Observations (default 1) per code and
/// subject.
#[utoipa::path(
    get, path = "/fhir/Observation/$lastn", tag = "Operations",
    params(
        ("patient" = Option<String>, Query, description = "The patient (patient or subject is required)", example = "Patient/123"),
        ("subject" = Option<String>, Query, description = "The subject (patient or subject is required)"),
        ("category" = Option<String>, Query, description = "Category; category or a code parameter is required", example = "vital-signs"),
        ("code" = Option<String>, Query, description = "Codes (system|code, comma-separated alternatives)", example = "http://loinc.org|8867-4"),
        ("date" = Option<String>, Query, description = "Effective date with prefix, e.g. ge2024-03-01"),
        ("max" = Option<u64>, Query, description = "Observations per code (default 1); ties in effective time are all returned"),
        ("Prefer" = Option<String>, Header, description = "handling=strict: unknown parameters are errors"),
    ),
    responses(
        (status = 200, description = "searchset Bundle: per subject and code the newest `max` Observations, newest first; any Observation search parameter filters", content_type = "application/fhir+json"),
        (status = 400, description = "No patient/subject, no category/code, or a malformed parameter", content_type = "application/fhir+json"),
    )
)]
pub async fn lastn(
    State(state): State<AppState>,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
    OperationInput(params): OperationInput,
) -> FhirResult<Response> {
    run_lastn(
        &state,
        params,
        &headers,
        &base,
        caller.sight(Permission::Search),
    )
    .await
}

/// `Observation/$lastn` with the parameters in a form body or a Parameters resource.
#[utoipa::path(
    post, path = "/fhir/Observation/$lastn", tag = "Operations",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "The parameters as a form, or a Parameters resource (application/fhir+json) with one valueString/valueCode/valuePositiveInt per parameter",
        example = "patient=Patient/123&category=vital-signs&max=3"),
    responses(
        (status = 200, description = "searchset Bundle", content_type = "application/fhir+json"),
        (status = 400, description = "Missing or malformed parameter", content_type = "application/fhir+json"),
    )
)]
pub async fn lastn_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
    OperationInput(params): OperationInput,
) -> FhirResult<Response> {
    run_lastn(
        &state,
        params,
        &headers,
        &base,
        caller.sight(Permission::Search),
    )
    .await
}

/// The key of a `$lastn` partition: subject and one coding (or the text of a text-only
/// code).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CodeGroupKey {
    subject: String,
    system: Option<String>,
    code: Option<String>,
    text: Option<String>,
}

/// Union-find over partition keys.
#[derive(Default)]
struct Groups {
    index: HashMap<CodeGroupKey, usize>,
    parent: Vec<usize>,
}

impl Groups {
    fn id(&mut self, key: CodeGroupKey) -> usize {
        let next = self.parent.len();
        let id = *self.index.entry(key).or_insert(next);
        if id == next {
            self.parent.push(next);
        }
        id
    }

    fn find(&mut self, mut id: usize) -> usize {
        while self.parent[id] != id {
            self.parent[id] = self.parent[self.parent[id]];
            id = self.parent[id];
        }
        id
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }
}

/// One coding of one matching Observation: the partition it falls in and its time.
struct Keyed {
    id: String,
    eff: Option<i64>,
    key: CodeGroupKey,
}

/// Newest first; Observations without an effective time last.
fn newest_first(a: Option<i64>, b: Option<i64>) -> std::cmp::Ordering {
    b.is_some().cmp(&a.is_some()).then(b.cmp(&a))
}

/// The one subject a `patient` or `subject` parameter names, if it names exactly one:
/// one value, of a known type (`patient` refers to Patients only).
fn one_subject(name: &str, value: &str) -> Option<String> {
    if name.contains('.') {
        return None; // chained: the subjects whose elements match
    }
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let typed = match modifier {
        None => code == "patient" || value.contains('/'),
        Some(target) => crate::fhir::definitions::Definitions::get().is_resource_type(target),
    };
    (typed && split_values(value).len() == 1).then(|| value.to_string())
}

/// Observations a `$lastn` request may weigh (every match of its filters is read from the
/// index, without content).
const MAX_LASTN_MATCHES: usize = 1_000_000;

/// The query of [`keyed_matches`]: one row per coding of each matching Observation,
/// `id, eff, subject_key, code_system, code_code`.
pub(crate) fn keyed_query(
    conditions: Vec<crate::search::criteria::Condition>,
    single_subject: Option<String>,
) -> (String, Vec<Value>) {
    let (from_where, where_values) = rows_of_type(
        (
            "r.resource_type = ? AND r.deleted = ?",
            vec![OBSERVATION.into(), false.into()],
        ),
        conditions,
        false,
    );
    // The matches stay the outer loop (a LEFT JOIN keeps SQLite from starting at the
    // codings of every Observation); time and subject are per-row index lookups, the
    // subject only when the request does not name it.
    let mut values: Vec<Value> = vec![OBSERVATION.into()];
    let subject_sql = match single_subject {
        Some(subject) => {
            values.push(subject.into());
            "CAST(? AS TEXT)"
        }
        None => {
            values.push(OBSERVATION.into());
            "(SELECT MIN(COALESCE(s.target_type || '/' || s.target_id, s.url)) \
               FROM search_reference s WHERE s.resource_type = ? \
               AND s.resource_id = r.id AND s.param = 'subject')"
        }
    };
    let sql = format!(
        "SELECT m.id AS id, m.eff AS eff, m.subject_key AS subject_key, \
           t.system AS code_system, t.code AS code_code \
         FROM (SELECT r.id AS id, \
             (SELECT MAX(d.high) FROM search_date d WHERE d.resource_type = ? \
               AND d.resource_id = r.id AND d.param = 'date') AS eff, \
             {subject_sql} AS subject_key \
           {from_where}) m \
         LEFT JOIN search_token t ON t.resource_type = ? AND t.resource_id = m.id \
           AND t.param = 'code' AND t.code IS NOT NULL \
         ORDER BY m.id LIMIT ?"
    );
    values.extend(where_values);
    values.push(OBSERVATION.into());
    values.push(((MAX_LASTN_MATCHES + 1) as i64).into());
    (sql, values)
}

/// The codings of every Observation matching `conditions`, ordered by Observation, with
/// its effective time and subject, read from the index alone. A code given only as text
/// (no coding) is keyed by that text.
async fn keyed_matches(
    conn: &impl ConnectionTrait,
    conditions: Vec<crate::search::criteria::Condition>,
    single_subject: Option<String>,
) -> FhirResult<Vec<Keyed>> {
    let backend = conn.get_database_backend();
    let (sql, values) = keyed_query(conditions, single_subject);
    let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
    if rows.len() > MAX_LASTN_MATCHES {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::TooCostly,
            format!(
                "$lastn would weigh more than {MAX_LASTN_MATCHES} Observation codings; narrow it with code, category or date"
            ),
        ));
    }
    let mut keyed = Vec::with_capacity(rows.len());
    let mut text_only: Vec<(String, String)> = Vec::new();
    let mut pending: Vec<(String, Option<i64>, String)> = Vec::new();
    for row in &rows {
        let id: String = row.try_get("", "id")?;
        let eff: Option<i64> = row.try_get("", "eff")?;
        let Some(subject): Option<String> = row.try_get("", "subject_key")? else {
            continue;
        };
        let code: Option<String> = row.try_get("", "code_code")?;
        if code.is_none() {
            text_only.push((OBSERVATION.to_string(), id.clone()));
            pending.push((id, eff, subject));
            continue;
        }
        keyed.push(Keyed {
            id,
            eff,
            key: CodeGroupKey {
                subject,
                system: row.try_get("", "code_system")?,
                code,
                text: None,
            },
        });
    }
    if !text_only.is_empty() {
        // Rare: the exact text of a text-only code, from the content.
        let texts: HashMap<String, String> = fetch_current(conn, &text_only)
            .await?
            .into_iter()
            .filter_map(|s| {
                let text = s.content.as_ref()?["code"]["text"].as_str()?.to_string();
                Some((s.id, text))
            })
            .collect();
        for (id, eff, subject) in pending {
            if let Some(text) = texts.get(&id) {
                keyed.push(Keyed {
                    id,
                    eff,
                    key: CodeGroupKey {
                        subject,
                        system: None,
                        code: None,
                        text: Some(text.clone()),
                    },
                });
            }
        }
        keyed.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Ok(keyed)
}

async fn run_lastn(
    state: &AppState,
    params: Vec<OpParam>,
    headers: &HeaderMap,
    base: &BaseUrl,
    sight: Sight<'_>,
) -> FhirResult<Response> {
    let strict = Prefer::from_headers(headers).strict;
    let mut max: u64 = 1;
    let mut used: Vec<(String, String)> = Vec::new();
    let mut format_pairs: Vec<(String, String)> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    let mut conditions = Vec::new();
    let mut has_subject = false;
    // Every match has this subject (a parameter names exactly one).
    let mut single_subject: Option<String> = None;
    let mut has_code = false;
    for OpParam { name, text, .. } in params {
        let base_code = base_name(&name);
        match base_code {
            "max" => max = positive_int("max", &text)?,
            "_format" | "_pretty" | "_summary" | "_elements" => {
                format_pairs.push((name.clone(), text.clone()));
            }
            "_count" | "_total" | "_cursor" | "_sort" => {
                if strict {
                    return Err(FhirError::bad_request(format!(
                        "{name} does not apply to $lastn, which returns the newest `max` Observations of every code (Prefer: handling=strict)"
                    )));
                }
                ignored.push(name);
                continue;
            }
            "_include" | "_revinclude" | "_contained" | "_containedType" => {
                return Err(FhirError::not_supported(
                    StatusCode::BAD_REQUEST,
                    format!("{name} is not supported by $lastn"),
                ))
            }
            _ if !is_known(OBSERVATION, &name) => {
                if strict {
                    return Err(FhirError::bad_request(format!(
                        "{name:?} is not a search parameter of Observation nor a parameter of $lastn (Prefer: handling=strict)"
                    )));
                }
                ignored.push(name);
                continue;
            }
            _ => {
                conditions.extend(condition_seen(OBSERVATION, &name, &text, sight)?);
                if matches!(base_code, "patient" | "subject") {
                    has_subject = true;
                    single_subject = single_subject.or_else(|| one_subject(&name, &text));
                }
                has_code |= CODE_PARAMETERS.contains(&base_code);
            }
        }
        used.push((name, text));
    }
    if !has_subject {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Required,
            "$lastn needs the patient or subject parameter, e.g. patient=Patient/123: it returns the newest Observations of a subject",
        ));
    }
    if !has_code {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Required,
            "$lastn needs a category or code parameter, e.g. category=vital-signs or code=http://loinc.org|8867-4",
        ));
    }
    let format = FormatParams::parse(Some(&query_string(&format_pairs)))?;

    conditions.extend(visible_observations(sight));
    let conn = state.store.connection();
    let keyed = keyed_matches(conn, conditions, single_subject).await?;

    // Codings that occur together on one Observation are one code (transitively).
    let mut groups = Groups::default();
    for codings in keyed.windows(2) {
        let [a, b] = codings else { continue };
        if a.id == b.id && a.key.subject == b.key.subject {
            let (a, b) = (groups.id(a.key.clone()), groups.id(b.key.clone()));
            groups.union(a, b);
        }
    }
    // The newest `max` of every (subject, coding) partition, ties included.
    let mut partitions: HashMap<&CodeGroupKey, Vec<&Keyed>> = HashMap::new();
    for row in &keyed {
        partitions.entry(&row.key).or_default().push(row);
    }
    let mut chosen: Vec<&Keyed> = Vec::new();
    for rows in partitions.values_mut() {
        rows.sort_by(|a, b| newest_first(a.eff, b.eff));
        for (i, row) in rows.iter().enumerate() {
            // RANK(): the position of the first row with the same time.
            let rank = rows[..i].iter().filter(|o| o.eff != row.eff).count() as u64;
            if rank >= max {
                break;
            }
            chosen.push(row);
        }
    }
    let mut wanted: Vec<(String, String)> = chosen
        .iter()
        .map(|row| (OBSERVATION.to_string(), row.id.clone()))
        .collect();
    wanted.sort();
    wanted.dedup();
    if wanted.len() > MAX_LASTN_ROWS {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::TooCostly,
            format!(
                "$lastn would return more than {MAX_LASTN_ROWS} Observations; narrow it with code, category or date, or a smaller max"
            ),
        ));
    }
    let mut stored: HashMap<String, StoredResource> = fetch_current(conn, &wanted)
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();

    struct Candidate {
        eff: Option<i64>,
        stored: StoredResource,
    }
    let mut candidates: HashMap<String, Candidate> = HashMap::new();
    // Group root → (smallest key, ids).
    let mut members: HashMap<usize, (CodeGroupKey, BTreeSet<String>)> = HashMap::new();
    for row in chosen {
        let id = groups.id(row.key.clone());
        let root = groups.find(id);
        let entry = members
            .entry(root)
            .or_insert_with(|| (row.key.clone(), BTreeSet::new()));
        if row.key < entry.0 {
            entry.0 = row.key.clone();
        }
        entry.1.insert(row.id.clone());
        if let Some(found) = stored.remove(&row.id) {
            candidates.insert(
                row.id.clone(),
                Candidate {
                    eff: row.eff,
                    stored: found,
                },
            );
        }
    }
    let mut ordered: Vec<(CodeGroupKey, BTreeSet<String>)> = members.into_values().collect();
    ordered.sort();

    let mut entries = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut total = 0usize;
    for (_, ids) in ordered {
        let mut group: Vec<&Candidate> = ids.iter().filter_map(|id| candidates.get(id)).collect();
        // Newest first; Observations without an effective time last.
        group.sort_by(|a, b| {
            b.eff
                .is_some()
                .cmp(&a.eff.is_some())
                .then(b.eff.cmp(&a.eff))
                .then(a.stored.id.cmp(&b.stored.id))
        });
        for candidate in &group {
            let newer = group
                .iter()
                .filter(|other| match (other.eff, candidate.eff) {
                    (Some(o), Some(c)) => o > c,
                    (Some(_), None) => true,
                    _ => false,
                })
                .count();
            if newer as u64 >= max || !seen.insert(candidate.stored.id.clone()) {
                continue;
            }
            total += 1;
            if format.summary == Summary::Count {
                continue;
            }
            if let Some(content) = &candidate.stored.content {
                entries.push(json!({
                    "fullUrl": format!("{}/Observation/{}", base.0, candidate.stored.id),
                    "resource": format.apply(content),
                    "search": {"mode": "match"}
                }));
            }
        }
    }
    if !ignored.is_empty() {
        let issue = Issue::warning(
            IssueCode::NotSupported,
            format!(
                "ignored parameters: {} (send Prefer: handling=strict to make this an error)",
                ignored.join(", ")
            ),
        );
        entries.push(json!({
            "resource": operation_outcome(&[issue]),
            "search": {"mode": "outcome"}
        }));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": instant(now_micros())},
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": operation_url(base, "$lastn", &used)}],
    });
    if !entries.is_empty() {
        bundle["entry"] = Json::Array(entries);
    }
    Ok(fhir_json(StatusCode::OK, &bundle))
}

// ---------------------------------------------------------------------------------------
// $stats
// ---------------------------------------------------------------------------------------

/// `Observation/$stats`: statistics over the quantities of a subject's Observations.
#[utoipa::path(
    get, path = "/fhir/Observation/$stats", tag = "Operations",
    params(
        ("subject" = String, Query, description = "The subject (or `patient`), as Observation.subject.reference", example = "Patient/123"),
        ("code" = Option<String>, Query, description = "Codes, with `system` (or as system|code); code or coding is required", example = "8867-4"),
        ("system" = Option<String>, Query, description = "The system of the codes", example = "http://loinc.org"),
        ("coding" = Option<String>, Query, description = "Codes as system|code", example = "http://loinc.org|8867-4"),
        ("duration" = Option<f64>, Query, description = "The last N hours (decimal)"),
        ("period" = Option<String>, Query, description = "start/end (ISO 8601 interval; one side may be empty), if no duration", example = "2024-03-01/2024-03-08"),
        ("statistic" = String, Query, description = "Statistic codes, comma-separated: average, maximum, minimum, count, total-count, median, std-dev, sum, variance, 20-percent, 80-percent, 4-lower, 4-upper, 4-dev, 5-1, 5-2, 5-3, 5-4, skew, kurtosis, regression", example = "average,minimum,maximum,count"),
        ("include" = Option<bool>, Query, description = "Also return the source Observations"),
        ("limit" = Option<u64>, Query, description = "With include: at most this many source Observations (spread evenly over time)"),
    ),
    responses(
        (status = 200, description = "Parameters: a `statistics` Observation per code (per unit when a code was recorded in several), one component per statistic; `source` Observations with include=true", content_type = "application/fhir+json"),
        (status = 400, description = "Missing or malformed parameter, unknown statistic", content_type = "application/fhir+json"),
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    OperationInput(params): OperationInput,
) -> FhirResult<Response> {
    run_stats(&state, params, caller.sight(Permission::Search)).await
}

/// `Observation/$stats` with a Parameters resource (valueCoding, valuePeriod…) or a form.
#[utoipa::path(
    post, path = "/fhir/Observation/$stats", tag = "Operations",
    request_body(content = Object, content_type = "application/fhir+json",
        description = "A Parameters resource: subject (valueUri/valueReference), code + system or coding (valueCoding), duration (valueDecimal) or period (valuePeriod), statistic (valueCode, repeated), include, limit. A form body works as well."),
    responses(
        (status = 200, description = "Parameters with `statistics` (and `source`) Observations", content_type = "application/fhir+json"),
        (status = 400, description = "Missing or malformed parameter, unknown statistic", content_type = "application/fhir+json"),
    )
)]
pub async fn stats_post(
    State(state): State<AppState>,
    caller: Caller,
    OperationInput(params): OperationInput,
) -> FhirResult<Response> {
    run_stats(&state, params, caller.sight(Permission::Search)).await
}

/// A code asked for: `system|code`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CodeKey {
    system: String,
    code: String,
}

/// The time window; bounds in microseconds, inclusive.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: Option<i64>,
    end: Option<i64>,
}

impl Window {
    fn contains(&self, time: i64) -> bool {
        self.start.is_none_or(|s| time >= s) && self.end.is_none_or(|e| time <= e)
    }
}

struct StatsRequest {
    /// `subject` or `patient`, and its value.
    subject: (String, String),
    codes: Vec<CodeKey>,
    window: Window,
    statistics: Vec<Statistic>,
    include: bool,
    limit: Option<usize>,
}

fn stats_request(params: Vec<OpParam>) -> FhirResult<StatsRequest> {
    let mut subject: Option<(String, String)> = None;
    let mut plain_codes: Vec<String> = Vec::new();
    let mut codes: Vec<CodeKey> = Vec::new();
    let mut system: Option<String> = None;
    let mut duration: Option<f64> = None;
    let mut period: Option<Window> = None;
    let mut statistics: Vec<Statistic> = Vec::new();
    let mut include = false;
    let mut limit = None;
    for OpParam {
        name,
        text,
        complex,
    } in params
    {
        match name.as_str() {
            "subject" | "patient" => {
                if let Some((previous, _)) = &subject {
                    return Err(FhirError::bad_request(format!(
                        "$stats takes one subject; {previous} and {name} were both given"
                    )));
                }
                let value = text.trim().to_string();
                if value.is_empty() || value.contains(',') {
                    return Err(FhirError::bad_request(format!(
                        "{name} must be one reference such as Patient/123, not {text:?}"
                    )));
                }
                subject = Some((name, value));
            }
            "code" => {
                for code in split_values(&text) {
                    match split_unescaped(&code, '|').as_slice() {
                        [code] if !code.is_empty() => plain_codes.push(code.clone()),
                        [system, code] if !system.is_empty() && !code.is_empty() => {
                            codes.push(CodeKey {
                                system: system.clone(),
                                code: code.clone(),
                            })
                        }
                        _ => {
                            return Err(FhirError::bad_request(format!(
                                "code={code:?} is not a code such as 8867-4 (with system=…) or http://loinc.org|8867-4"
                            )))
                        }
                    }
                }
            }
            "system" => {
                if system.is_some() {
                    return Err(FhirError::bad_request("$stats takes one system"));
                }
                if text.trim().is_empty() {
                    return Err(FhirError::bad_request("system has no value"));
                }
                system = Some(text.trim().to_string());
            }
            "coding" => {
                let key = match &complex {
                    Some(coding) => {
                        let field = |k: &str| {
                            coding
                                .get(k)
                                .and_then(Json::as_str)
                                .filter(|s| !s.is_empty())
                                .map(str::to_string)
                        };
                        field("system")
                            .zip(field("code"))
                            .map(|(system, code)| CodeKey { system, code })
                    }
                    None => match split_unescaped(&text, '|').as_slice() {
                        [system, code] if !system.is_empty() && !code.is_empty() => {
                            Some(CodeKey {
                                system: system.clone(),
                                code: code.clone(),
                            })
                        }
                        _ => None,
                    },
                };
                codes.push(key.ok_or_else(|| {
                    FhirError::bad_request(format!(
                        "coding needs a system and a code, e.g. coding=http://loinc.org|8867-4; got {text:?}"
                    ))
                })?);
            }
            "duration" => {
                let hours: f64 = text.trim().parse().map_err(|_| {
                    FhirError::bad_request(format!(
                        "duration is a number of hours such as 24 or 0.5, not {text:?}"
                    ))
                })?;
                if !(hours > 0.0 && hours <= MAX_DURATION_HOURS) {
                    return Err(FhirError::bad_request(format!(
                        "duration must be a number of hours above 0 (at most {MAX_DURATION_HOURS}), not {text:?}"
                    )));
                }
                if duration.replace(hours).is_some() {
                    return Err(FhirError::bad_request("$stats takes one duration"));
                }
            }
            "period" => {
                let window = parse_period(&text, complex.as_ref())?;
                if period.replace(window).is_some() {
                    return Err(FhirError::bad_request("$stats takes one period"));
                }
            }
            "statistic" => {
                for code in split_values(&text) {
                    let code = code.trim();
                    let statistic = Statistic::parse(code).ok_or_else(|| {
                        FhirError::new(
                            StatusCode::BAD_REQUEST,
                            IssueCode::CodeInvalid,
                            format!(
                                "statistic {code:?} is not a statistic code; use one of {}",
                                Statistic::codes()
                            ),
                        )
                    })?;
                    if !statistics.contains(&statistic) {
                        statistics.push(statistic);
                    }
                }
            }
            "include" => {
                include = match text.trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(FhirError::bad_request(format!(
                            "include is true or false, not {other:?}"
                        )))
                    }
                }
            }
            "limit" => limit = Some(positive_int("limit", &text)?.min(usize::MAX as u64) as usize),
            "_format" | "_pretty" => {}
            other => {
                return Err(FhirError::bad_request(format!(
                    "{other:?} is not a parameter of $stats; its parameters are subject (or patient), code, system, coding, duration, period, statistic, include and limit"
                )))
            }
        }
    }
    let subject = subject.ok_or_else(|| {
        FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Required,
            "$stats needs the subject parameter, e.g. subject=Patient/123",
        )
    })?;
    for code in plain_codes {
        match &system {
            Some(system) => codes.push(CodeKey {
                system: system.clone(),
                code,
            }),
            None => {
                return Err(FhirError::bad_request(format!(
                    "code {code} has no system: add system=http://loinc.org (or the code's system), or send coding=http://loinc.org|{code}"
                )))
            }
        }
    }
    let mut unique = Vec::new();
    for code in codes {
        if !unique.contains(&code) {
            unique.push(code);
        }
    }
    if unique.is_empty() {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Required,
            "$stats needs the codes to evaluate: code with system (code=8867-4&system=http://loinc.org) or coding=http://loinc.org|8867-4",
        ));
    }
    if unique.len() > MAX_STATS_CODES {
        return Err(FhirError::bad_request(format!(
            "$stats takes at most {MAX_STATS_CODES} codes in one request"
        )));
    }
    if statistics.is_empty() {
        return Err(FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Required,
            format!(
                "$stats needs the statistic parameter, e.g. statistic=average,minimum,maximum,count; the codes are {}",
                Statistic::codes()
            ),
        ));
    }
    let window = match (duration, period) {
        (Some(_), Some(_)) => {
            return Err(FhirError::bad_request("give duration or period, not both"))
        }
        (Some(hours), None) => {
            let end = now_micros();
            Window {
                start: Some(end.saturating_sub((hours * 3_600_000_000.0) as i64)),
                end: Some(end),
            }
        }
        (None, Some(window)) => window,
        (None, None) => Window::default(),
    };
    Ok(StatsRequest {
        subject,
        codes: unique,
        window,
        statistics,
        include,
        limit,
    })
}

/// A Period (`valuePeriod`) or its query form `start/end`.
fn parse_period(text: &str, complex: Option<&Json>) -> FhirResult<Window> {
    let (start, end) = match complex {
        Some(period) => (
            period.get("start").and_then(Json::as_str).unwrap_or_default(),
            period.get("end").and_then(Json::as_str).unwrap_or_default(),
        ),
        None => text.split_once('/').ok_or_else(|| {
            FhirError::bad_request(format!(
                "period is start/end, e.g. period=2024-03-01/2024-03-08 (one side may be empty), not {text:?}"
            ))
        })?,
    };
    let bound = |value: &str, which: &str| -> FhirResult<Option<(i64, i64)>> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        parse_date_range(value).map(Some).ok_or_else(|| {
            FhirError::bad_request(format!(
                "the period {which} {value:?} is not a date such as 2024-03-01 or 2024-03-01T10:00:00Z"
            ))
        })
    };
    let window = Window {
        start: bound(start, "start")?.map(|(low, _)| low),
        end: bound(end, "end")?.map(|(_, high)| high),
    };
    match (window.start, window.end) {
        (None, None) => Err(FhirError::bad_request(
            "period needs a start or an end, e.g. period=2024-03-01/2024-03-08",
        )),
        (Some(s), Some(e)) if s > e => Err(FhirError::bad_request(format!(
            "the period starts after it ends ({start} > {end})"
        ))),
        _ => Ok(window),
    }
}

/// One measured value (or a measurement without a usable value) of a code.
struct Measurement {
    /// Value, UCUM code and unit text; `None` when not usable.
    value: Option<(f64, String, Option<String>)>,
    time: Option<i64>,
    /// Index of the Observation in the evaluated list.
    source: usize,
}

struct CodeGroup {
    key: CodeKey,
    display: Option<String>,
    measurements: Vec<Measurement>,
}

#[derive(Default)]
struct CodeGroups {
    groups: Vec<CodeGroup>,
    index: HashMap<CodeKey, usize>,
}

impl CodeGroups {
    fn group(&mut self, key: &CodeKey, display: Option<&str>) -> &mut CodeGroup {
        let next = self.groups.len();
        let i = *self.index.entry(key.clone()).or_insert(next);
        if i == next {
            self.groups.push(CodeGroup {
                key: key.clone(),
                display: None,
                measurements: Vec::new(),
            });
        }
        let group = &mut self.groups[i];
        if group.display.is_none() {
            group.display = display.map(str::to_string);
        }
        group
    }
}

/// The codings of a CodeableConcept: (system, code, display).
fn codings(concept: Option<&Json>) -> Vec<(&str, &str, Option<&str>)> {
    concept
        .and_then(|c| c.get("coding"))
        .and_then(Json::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    Some((
                        c.get("system")?.as_str()?,
                        c.get("code")?.as_str()?,
                        c.get("display").and_then(Json::as_str),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn coding_of<'a>(
    concept: Option<&'a Json>,
    key: &CodeKey,
) -> Option<(&'a str, &'a str, Option<&'a str>)> {
    codings(concept)
        .into_iter()
        .find(|(system, code, _)| *system == key.system && *code == key.code)
}

/// The value of an element with `value[x]`, when it is a usable UCUM quantity: an exact
/// number (no comparator) with a UCUM code, on an element without modifier extensions.
fn ucum_value(element: &Json) -> Option<(f64, String, Option<String>)> {
    if element.get("modifierExtension").is_some() {
        return None;
    }
    let quantity = element.get("valueQuantity")?;
    if quantity.get("comparator").is_some()
        || quantity.get("system").and_then(Json::as_str) != Some(UCUM)
    {
        return None;
    }
    let value = quantity.get("value")?.as_f64().filter(|v| v.is_finite())?;
    let code = quantity.get("code")?.as_str().filter(|c| !c.is_empty())?;
    let unit = quantity
        .get("unit")
        .and_then(Json::as_str)
        .map(str::to_string);
    Some((value, code.to_string(), unit))
}

fn has_value(element: &Json) -> bool {
    element
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k.starts_with("value")))
}

/// The effective time of an Observation (its start), in microseconds.
fn effective_time(observation: &Json) -> Option<i64> {
    let text = observation
        .get("effectiveDateTime")
        .or_else(|| observation.get("effectiveInstant"))
        .and_then(Json::as_str)
        .or_else(|| {
            let period = observation.get("effectivePeriod")?;
            period
                .get("start")
                .or_else(|| period.get("end"))
                .and_then(Json::as_str)
        })?;
    parse_date_range(text).map(|(low, _)| low)
}

/// The id of an Observation a `hasMember` reference points at on this server.
fn member_id(reference: &Json) -> Option<String> {
    let text = reference.get("reference")?.as_str()?;
    let text = text.split("/_history/").next().unwrap_or(text);
    let mut segments = text.rsplit('/');
    let id = segments.next()?;
    (segments.next()? == OBSERVATION && !id.is_empty()).then(|| id.to_string())
}

/// The condition selecting the Observations a caller with limited access sees.
fn visible_observations(sight: Sight<'_>) -> Option<Condition> {
    match sight.visible(OBSERVATION, 0) {
        Visible::All => None,
        Visible::Where(condition) => Some(condition),
        Visible::Nothing => Some(Condition::plain(
            "1 = 0".into(),
            Vec::new(),
            Selectivity::Filter,
        )),
    }
}

async fn run_stats(
    state: &AppState,
    params: Vec<OpParam>,
    sight: Sight<'_>,
) -> FhirResult<Response> {
    let request = stats_request(params)?;
    let conn = state.store.connection();
    let backend = conn.get_database_backend();

    let (subject_param, subject_value) = &request.subject;
    let mut sql = String::from(
        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content \
         FROM resources r WHERE r.resource_type = ? AND r.deleted = ?",
    );
    let mut values: Vec<Value> = vec![OBSERVATION.into(), false.into()];
    let mut conditions = Vec::new();
    for (name, value) in [
        (subject_param.as_str(), subject_value.as_str()),
        ("status:not", "entered-in-error"),
    ] {
        conditions.extend(condition_seen(OBSERVATION, name, value, sight)?);
    }
    conditions.extend(visible_observations(sight));
    let (filter_sql, filter_values) = conjunction(conditions);
    sql.push_str(&filter_sql);
    values.extend(filter_values);
    // The codes, in Observation.code or Observation.component.code.
    let alternatives = vec!["(t.system = ? AND t.code = ?)"; request.codes.len()].join(" OR ");
    sql.push_str(&format!(
        " AND EXISTS (SELECT 1 FROM search_token t WHERE t.resource_type = r.resource_type \
         AND t.resource_id = r.id AND t.param IN ('code', 'component-code') AND ({alternatives}))"
    ));
    for key in &request.codes {
        values.push(key.system.as_str().into());
        values.push(key.code.as_str().into());
    }
    let window = request.window;
    if window.start.is_some() || window.end.is_some() {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM search_date d WHERE d.resource_type = r.resource_type \
             AND d.resource_id = r.id AND d.param = 'date'",
        );
        if let Some(start) = window.start {
            sql.push_str(" AND d.low >= ?");
            values.push(start.into());
        }
        if let Some(end) = window.end {
            sql.push_str(" AND d.low <= ?");
            values.push(end.into());
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY r.id LIMIT ?");
    values.push(((MAX_STATS_OBSERVATIONS + 1) as i64).into());
    let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
    if rows.len() > MAX_STATS_OBSERVATIONS {
        return Err(too_many_observations());
    }
    let mut observations: Vec<Json> = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(content) = stored_from_row(backend, row)?.content {
            observations.push(content);
        }
    }

    let mut groups = CodeGroups::default();
    for key in &request.codes {
        groups.group(key, None);
    }
    let mut panels: HashSet<CodeKey> = HashSet::new();
    // Panel members to read: (member id, panel time).
    let mut wanted_members: Vec<(String, Option<i64>)> = Vec::new();
    for (index, observation) in observations.iter().enumerate() {
        let time = effective_time(observation);
        // A modifier extension may change what the values mean: none of them is used.
        let trusted = observation.get("modifierExtension").is_none();
        let usable = |element: &Json| if trusted { ucum_value(element) } else { None };
        for key in &request.codes {
            if let Some((_, _, display)) = coding_of(observation.get("code"), key) {
                let components = observation.get("component").and_then(Json::as_array);
                let members = observation.get("hasMember").and_then(Json::as_array);
                let is_panel = components.is_some_and(|c| !c.is_empty())
                    || members.is_some_and(|m| !m.is_empty());
                if has_value(observation) || !is_panel {
                    groups.group(key, display).measurements.push(Measurement {
                        value: usable(observation),
                        time,
                        source: index,
                    });
                }
                if is_panel {
                    panels.insert(key.clone());
                    for component in components.into_iter().flatten() {
                        if let Some((system, code, display)) =
                            codings(component.get("code")).into_iter().next()
                        {
                            let member = CodeKey {
                                system: system.into(),
                                code: code.into(),
                            };
                            if !request.codes.contains(&member) {
                                groups
                                    .group(&member, display)
                                    .measurements
                                    .push(Measurement {
                                        value: usable(component),
                                        time,
                                        source: index,
                                    });
                            }
                        }
                    }
                    for reference in members.into_iter().flatten() {
                        if let Some(id) = member_id(reference) {
                            wanted_members.push((id, time));
                        }
                    }
                }
            }
            // A component coded with the code (e.g. systolic pressure in a panel).
            for component in observation
                .get("component")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                if let Some((_, _, display)) = coding_of(component.get("code"), key) {
                    groups.group(key, display).measurements.push(Measurement {
                        value: usable(component),
                        time,
                        source: index,
                    });
                }
            }
        }
    }

    // hasMember Observations of the panels, each counted once.
    let already: HashSet<String> = observations
        .iter()
        .filter_map(|o| o.get("id").and_then(Json::as_str).map(str::to_string))
        .collect();
    let mut member_times: HashMap<String, Option<i64>> = HashMap::new();
    for (id, time) in wanted_members {
        if !already.contains(&id) {
            member_times.entry(id).or_insert(time);
        }
    }
    if observations.len() + member_times.len() > MAX_STATS_OBSERVATIONS {
        return Err(too_many_observations());
    }
    let member_ids: Vec<String> = member_times.keys().cloned().collect();
    for chunk in member_ids.chunks(500) {
        let mut sql = format!(
            "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content \
             FROM resources r WHERE r.resource_type = ? AND r.deleted = ? AND r.id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut values: Vec<Value> = vec![OBSERVATION.into(), false.into()];
        values.extend(chunk.iter().map(|id| Value::from(id.as_str())));
        let checks = condition(OBSERVATION, "status:not", "entered-in-error")?
            .into_iter()
            .chain(visible_observations(sight));
        for condition in checks {
            // Checked per row of the listed ids.
            sql.push_str(" AND ");
            sql.push_str(condition.probe.as_deref().unwrap_or(&condition.sql));
            values.extend(condition.values);
        }
        sql.push_str(" ORDER BY r.id");
        for row in conn.query_all_raw(statement(backend, &sql, values)).await? {
            let Some(member) = stored_from_row(backend, &row)?.content else {
                continue;
            };
            let panel_time = member
                .get("id")
                .and_then(Json::as_str)
                .and_then(|id| member_times.get(id).copied().flatten());
            let time = effective_time(&member).or(panel_time);
            let in_window = match time {
                Some(t) => window.contains(t),
                None => window.start.is_none() && window.end.is_none(),
            };
            let Some((system, code, display)) = codings(member.get("code")).into_iter().next()
            else {
                continue;
            };
            if !in_window {
                continue;
            }
            let key = CodeKey {
                system: system.into(),
                code: code.into(),
            };
            if request.codes.contains(&key) {
                // Evaluated with the code's own Observations when it qualified.
                continue;
            }
            let display = display.map(str::to_string);
            let value = ucum_value(&member);
            observations.push(member);
            groups
                .group(&key, display.as_deref())
                .measurements
                .push(Measurement {
                    value,
                    time,
                    source: observations.len() - 1,
                });
        }
    }

    let now = now_micros();
    let mut parameters = Vec::new();
    let mut used_sources: BTreeSet<usize> = BTreeSet::new();
    for group in &groups.groups {
        if group.measurements.is_empty() && panels.contains(&group.key) {
            // A panel code stands for its members, reported in their own groups.
            continue;
        }
        for observation in statistics_observations(group, &request, now) {
            parameters.push(json!({"name": "statistics", "resource": observation}));
        }
        used_sources.extend(
            group
                .measurements
                .iter()
                .filter(|m| m.value.is_some())
                .map(|m| m.source),
        );
    }
    if request.include {
        let mut sources: Vec<usize> = used_sources.into_iter().collect();
        sources.sort_by_key(|&i| (effective_time(&observations[i]), i));
        for i in spread(sources.len(), request.limit) {
            parameters.push(json!({"name": "source", "resource": observations[sources[i]]}));
        }
    }
    Ok(fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "Parameters",
            "id": uuid::Uuid::new_v4().to_string(),
            "parameter": parameters,
        }),
    ))
}

fn too_many_observations() -> FhirError {
    FhirError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        IssueCode::TooCostly,
        format!(
            "more than {MAX_STATS_OBSERVATIONS} Observations match; narrow the time with duration or period"
        ),
    )
}

/// Indices of `limit` items spread evenly over `len` (first and last included); all when
/// there is no limit or it is not smaller.
fn spread(len: usize, limit: Option<usize>) -> Vec<usize> {
    match limit {
        Some(limit) if limit < len => {
            if limit == 1 {
                return vec![len - 1];
            }
            (0..limit)
                .map(|i| (i * (len - 1) + (limit - 1) / 2) / (limit - 1))
                .collect()
        }
        _ => (0..len).collect(),
    }
}

/// The statistics Observations of one code: one per unit its values were recorded in (one
/// without values when there are none).
fn statistics_observations(group: &CodeGroup, request: &StatsRequest, now: i64) -> Vec<Json> {
    let total = group.measurements.len();
    let unusable = group
        .measurements
        .iter()
        .filter(|m| m.value.is_none())
        .count();
    // Units, most used first.
    let mut units: Vec<(String, Option<String>, Vec<&Measurement>)> = Vec::new();
    for measurement in &group.measurements {
        if let Some((_, code, text)) = &measurement.value {
            match units.iter_mut().find(|(c, _, _)| c == code) {
                Some((_, _, list)) => list.push(measurement),
                None => units.push((code.clone(), text.clone(), vec![measurement])),
            }
        }
    }
    units.sort_by(|a, b| b.2.len().cmp(&a.2.len()).then(a.0.cmp(&b.0)));
    let mut notes = Vec::new();
    if unusable > 0 {
        notes.push(format!(
            "{unusable} of the {total} measurements of {}|{} are not counted: they have no exact valueQuantity with a UCUM unit (http://unitsofmeasure.org), or carry a modifier extension",
            group.key.system, group.key.code
        ));
    }
    if units.len() > 1 {
        let list = units
            .iter()
            .map(|(code, _, values)| format!("{} in {code}", values.len()))
            .collect::<Vec<_>>()
            .join(", ");
        notes.push(format!(
            "the values of {}|{} were recorded in {} units ({list}); each unit has its own statistics Observation",
            group.key.system,
            group.key.code,
            units.len()
        ));
    }
    if units.is_empty() {
        return vec![statistics_observation(
            group,
            None,
            &[],
            total,
            request,
            now,
            &notes,
        )];
    }
    units
        .iter()
        .map(|(code, text, list)| {
            let mut notes = notes.clone();
            if units.len() > 1 {
                notes.push(format!(
                    "this Observation covers the {} values in {code}",
                    list.len()
                ));
            }
            statistics_observation(
                group,
                Some((code.as_str(), text.as_deref())),
                list,
                total,
                request,
                now,
                &notes,
            )
        })
        .collect()
}

fn statistics_observation(
    group: &CodeGroup,
    unit: Option<(&str, Option<&str>)>,
    measurements: &[&Measurement],
    total: usize,
    request: &StatsRequest,
    now: i64,
    notes: &[String],
) -> Json {
    let times: Vec<i64> = measurements.iter().filter_map(|m| m.time).collect();
    let start = request.window.start.or_else(|| times.iter().min().copied());
    let end = request.window.end.or_else(|| times.iter().max().copied());
    let values: Vec<f64> = measurements
        .iter()
        .filter_map(|m| m.value.as_ref().map(|v| v.0))
        .collect();
    let origin = start.unwrap_or(0);
    let points: Vec<Point> = measurements
        .iter()
        .filter_map(|m| {
            Some(Point {
                hours: (m.time? - origin) as f64 / 3_600_000_000.0,
                value: m.value.as_ref()?.0,
            })
        })
        .collect();
    let sample = Sample::new(&values, &points, total);
    let mut components = Vec::new();
    for &statistic in &request.statistics {
        components.extend(statistic_components(
            statistic,
            sample.compute(statistic),
            unit,
            start,
        ));
    }
    let mut coding = Map::new();
    coding.insert("system".into(), json!(group.key.system));
    coding.insert("code".into(), json!(group.key.code));
    if let Some(display) = &group.display {
        coding.insert("display".into(), json!(display));
    }
    let (_, subject) = &request.subject;
    let reference = if request.subject.0 == "patient" && !subject.contains('/') {
        format!("Patient/{subject}")
    } else {
        subject.clone()
    };
    let mut observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [coding]},
        "subject": {"reference": reference},
    });
    let mut period = Map::new();
    if let Some(start) = start {
        period.insert("start".into(), json!(instant(start)));
    }
    if let Some(end) = end {
        period.insert("end".into(), json!(instant(end)));
    }
    if !period.is_empty() {
        observation["effectivePeriod"] = Json::Object(period);
    }
    observation["issued"] = json!(instant(now));
    if !notes.is_empty() {
        observation["note"] = notes.iter().map(|text| json!({"text": text})).collect();
    }
    observation["component"] = Json::Array(components);
    observation
}

fn statistic_code(statistic: Statistic, text: Option<String>) -> Json {
    let mut code = json!({"coding": [{
        "system": observation_stats::SYSTEM,
        "code": statistic.code(),
        "display": statistic.display(),
    }]});
    if let Some(text) = text {
        code["text"] = json!(text);
    }
    code
}

/// The components of one statistic (two for `regression`: gradient and intercept).
fn statistic_components(
    statistic: Statistic,
    outcome: Outcome,
    unit: Option<(&str, Option<&str>)>,
    origin: Option<i64>,
) -> Vec<Json> {
    let quantity = |value: f64| -> Json {
        match unit {
            Some((code, text)) => json!({
                "value": value,
                "unit": text.unwrap_or(code),
                "system": UCUM,
                "code": code,
            }),
            None => json!({"value": value}),
        }
    };
    match outcome {
        Outcome::Count(n) => vec![json!({
            "code": statistic_code(statistic, None),
            "valueInteger": n,
        })],
        Outcome::Number(value) => {
            let value_quantity = if statistic.in_value_unit() {
                quantity(value)
            } else if statistic == Statistic::Variance {
                squared_quantity(value, unit)
            } else {
                json!({"value": value, "unit": "1", "system": UCUM, "code": "1"})
            };
            vec![json!({
                "code": statistic_code(statistic, None),
                "valueQuantity": value_quantity,
            })]
        }
        Outcome::Line {
            gradient,
            intercept,
        } => {
            let at = origin
                .map(instant)
                .unwrap_or_else(|| "the first value".into());
            vec![
                json!({
                    "code": statistic_code(statistic, Some("gradient (change per hour)".into())),
                    "valueRatio": {
                        "numerator": quantity(gradient),
                        "denominator": {"value": 1, "unit": "h", "system": UCUM, "code": "h"},
                    },
                }),
                json!({
                    "code": statistic_code(statistic, Some(format!("intercept (the fitted value at {at})"))),
                    "valueQuantity": quantity(intercept),
                }),
            ]
        }
        Outcome::Undefined(reason) => vec![json!({
            "code": statistic_code(statistic, None),
            "dataAbsentReason": {
                "coding": [{"system": DATA_ABSENT, "code": "not-applicable", "display": "Not Applicable"}],
                "text": reason,
            },
        })],
    }
}

/// UCUM units that cannot be multiplied (temperatures on a scale, logarithmic units).
fn is_special_unit(code: &str) -> bool {
    matches!(
        code,
        "Cel"
            | "[degF]"
            | "[degRe]"
            | "[pH]"
            | "[p'diop]"
            | "%[slope]"
            | "Np"
            | "B"
            | "dB"
            | "bit_s"
    ) || code.starts_with("B[")
        || code.starts_with("[hp'_")
}

/// A variance: the unit squared, `(U).(U)` in UCUM where U can be multiplied.
fn squared_quantity(value: f64, unit: Option<(&str, Option<&str>)>) -> Json {
    match unit {
        Some((code, text)) => {
            let text = format!("({})²", text.unwrap_or(code));
            if is_special_unit(code) {
                json!({"value": value, "unit": text})
            } else {
                let term = if code.starts_with('/') {
                    format!("1{code}")
                } else {
                    code.to_string()
                };
                json!({
                    "value": value,
                    "unit": text,
                    "system": UCUM,
                    "code": format!("({term}).({term})"),
                })
            }
        }
        None => json!({"value": value}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_resources_become_params() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "subject", "valueReference": {"reference": "Patient/1"}},
            {"name": "coding", "valueCoding": {"system": "http://loinc.org", "code": "8867-4"}},
            {"name": "period", "valuePeriod": {"start": "2024-03-01", "end": "2024-03-02"}},
            {"name": "max", "valuePositiveInt": 3},
            {"name": "include", "valueBoolean": true},
        ]});
        let params = parameters_resource(&body).unwrap();
        let texts: Vec<(&str, &str)> = params
            .iter()
            .map(|p| (p.name.as_str(), p.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                ("subject", "Patient/1"),
                ("coding", "http://loinc.org|8867-4"),
                ("period", "2024-03-01/2024-03-02"),
                ("max", "3"),
                ("include", "true"),
            ]
        );
        assert!(parameters_resource(&json!({"resourceType": "Patient"})).is_err());
        let err = parameters_resource(&json!({"resourceType": "Parameters", "parameter": [
            {"name": "max", "valuePositiveInt": "three"}
        ]}))
        .unwrap_err();
        assert!(err.message().contains("max"), "{}", err.message());
        assert!(
            parameters_resource(&json!({"resourceType": "Parameters", "parameter": [
                {"name": "max"}
            ]}))
            .is_err()
        );
    }

    #[test]
    fn periods() {
        let w = parse_period("2024-03-01/2024-03-02", None).unwrap();
        assert_eq!(w.start, parse_date_range("2024-03-01").map(|r| r.0));
        assert_eq!(w.end, parse_date_range("2024-03-02").map(|r| r.1));
        assert!(parse_period("/2024-03-02", None).unwrap().start.is_none());
        assert!(parse_period("2024-03-02/2024-03-01", None).is_err());
        assert!(parse_period("/", None).is_err());
        assert!(parse_period("yesterday/today", None).is_err());
        assert!(parse_period("2024-03-01", None).is_err());
    }

    #[test]
    fn spreads_sources_evenly() {
        assert_eq!(spread(5, None), vec![0, 1, 2, 3, 4]);
        assert_eq!(spread(5, Some(10)), vec![0, 1, 2, 3, 4]);
        assert_eq!(spread(5, Some(3)), vec![0, 2, 4]);
        assert_eq!(spread(10, Some(2)), vec![0, 9]);
        assert_eq!(spread(10, Some(1)), vec![9]);
    }

    #[test]
    fn member_references() {
        assert_eq!(
            member_id(&json!({"reference": "Observation/abc"})),
            Some("abc".into())
        );
        assert_eq!(
            member_id(&json!({"reference": "http://x/fhir/Observation/abc/_history/2"})),
            Some("abc".into())
        );
        assert_eq!(member_id(&json!({"reference": "Patient/abc"})), None);
        assert_eq!(member_id(&json!({"reference": "abc"})), None);
    }

    #[test]
    fn squared_units() {
        let q = squared_quantity(4.0, Some(("/min", Some("beats/minute"))));
        assert_eq!(q["code"], "(1/min).(1/min)");
        assert_eq!(q["unit"], "(beats/minute)²");
        let q = squared_quantity(4.0, Some(("Cel", None)));
        assert!(q.get("code").is_none());
        assert_eq!(q["unit"], "(Cel)²");
    }
}
