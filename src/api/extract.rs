//! Request extractors that turn every malformed input into a FHIR error: the body
//! (media type, size, JSON syntax), `If-Match`, `Prefer` and the base URL.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::Value as Json;

use super::AppState;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;

/// A FHIR JSON request body (`application/fhir+json` or `application/json`).
pub struct FhirJson(pub Json);

impl FromRequest<AppState> for FhirJson {
    type Rejection = FhirError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_json_content_type(req.headers())?;
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(FhirJson)
    }
}

/// A PATCH body: JSON Patch (`application/json-patch+json`).
pub struct PatchBody(pub json_patch::Patch);

impl FromRequest<AppState> for PatchBody {
    type Rejection = FhirError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let media = media_type(req.headers());
        match media.as_deref() {
            Some("application/json-patch+json") => {}
            Some("application/fhir+json") | Some("application/json") => {
                return Err(FhirError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "FHIRPath Patch (a Parameters resource) is not supported yet; send a JSON Patch with Content-Type: application/json-patch+json",
                ))
            }
            Some(other) => {
                return Err(FhirError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("PATCH bodies must be application/json-patch+json, not {other}"),
                ))
            }
            None => {
                return Err(FhirError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "PATCH needs Content-Type: application/json-patch+json",
                ))
            }
        }
        let bytes = read_body(req, state).await?;
        let json = parse_json(&bytes)?;
        let patch: json_patch::Patch = serde_json::from_value(json).map_err(|e| {
            FhirError::bad_request(format!(
                "the body is not a JSON Patch document (an array of operations such as {{\"op\":\"replace\",\"path\":\"/status\",\"value\":\"final\"}}): {e}"
            ))
        })?;
        Ok(PatchBody(patch))
    }
}

/// A DICOM Part-10 file (`application/dicom`), within the server's body limit.
pub struct DicomBody(pub Bytes);

impl FromRequest<AppState> for DicomBody {
    type Rejection = FhirError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match media_type(req.headers()).as_deref() {
            Some("application/dicom") => {}
            other => {
                return Err(FhirError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "{} is not accepted here; send one DICOM Part-10 file as application/dicom",
                        other.map_or("a body without Content-Type".to_string(), |t| format!(
                            "Content-Type {t}"
                        ))
                    ),
                ))
            }
        }
        Ok(DicomBody(read_body(req, state).await?))
    }
}

/// The media type of the body without parameters, lower-cased; `None` when absent.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

pub fn check_json_content_type(headers: &HeaderMap) -> FhirResult<()> {
    match media_type(headers).as_deref() {
        // A missing Content-Type is taken as JSON: many device clients omit it.
        None
        | Some("application/fhir+json")
        | Some("application/json")
        | Some("application/json+fhir") => Ok(()),
        Some(xml) if xml.contains("xml") => Err(FhirError::not_supported(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{xml} is not supported yet; send FHIR JSON (application/fhir+json)"),
        )),
        Some(other) => Err(FhirError::not_supported(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Type {other}; send FHIR JSON (application/fhir+json)"),
        )),
    }
}

async fn read_body(req: Request, state: &AppState) -> FhirResult<Bytes> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            FhirError::new(
                status,
                IssueCode::TooLong,
                format!(
                    "the request body is larger than the {} bytes this server accepts",
                    state.config.max_body_bytes
                ),
            )
        } else {
            FhirError::new(status, IssueCode::Invalid, rejection.body_text())
        }
    })
}

pub fn parse_json(bytes: &[u8]) -> FhirResult<Json> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(FhirError::bad_request(
            "the request body is empty; send a FHIR resource as JSON",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        FhirError::new(
            StatusCode::BAD_REQUEST,
            IssueCode::Structure,
            format!(
                "the body is not valid JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

/// `If-Match: W/"3"` (also `"3"` and `3`) as a version number.
pub fn if_match(headers: &HeaderMap) -> FhirResult<Option<i64>> {
    parse_etag_header(headers, header::IF_MATCH)
}

/// `If-None-Match: W/"3"` as a version number (`*` is `None`).
pub fn if_none_match(headers: &HeaderMap) -> FhirResult<Option<i64>> {
    match headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        Some("*") => Ok(None),
        _ => parse_etag_header(headers, header::IF_NONE_MATCH),
    }
}

fn parse_etag_header(headers: &HeaderMap, name: header::HeaderName) -> FhirResult<Option<i64>> {
    let Some(value) = headers.get(&name) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let bare = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    bare.parse::<i64>().map(Some).map_err(|_| {
        FhirError::bad_request(format!(
            "{name} must name a version as W/\"<versionId>\", e.g. W/\"3\"; got {text:?}"
        ))
    })
}

/// What the client asked for in `Prefer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Prefer {
    pub return_: ReturnPreference,
    /// `handling=strict`: unknown search parameters are errors.
    pub strict: bool,
}

impl Prefer {
    pub fn from_headers(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer::default();
        for value in headers.get_all("prefer") {
            for item in value.to_str().unwrap_or_default().split([',', ';']) {
                let item = item.trim().replace(' ', "");
                match item.as_str() {
                    "return=minimal" => prefer.return_ = ReturnPreference::Minimal,
                    "return=representation" => prefer.return_ = ReturnPreference::Representation,
                    "return=OperationOutcome" => {
                        prefer.return_ = ReturnPreference::OperationOutcome
                    }
                    "handling=strict" => prefer.strict = true,
                    "handling=lenient" => prefer.strict = false,
                    _ => {}
                }
            }
        }
        prefer
    }
}

/// The FHIR base URL as the client sees it, for `Location` and `fullUrl`.
#[derive(Debug, Clone)]
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = FhirError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(base) = &state.config.base_url {
            return Ok(BaseUrl(base.clone()));
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        let scheme = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .filter(|p| *p == "https")
            .unwrap_or("http");
        Ok(BaseUrl(format!("{scheme}://{host}/fhir")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn etags() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"3\""));
        assert_eq!(if_match(&headers).unwrap(), Some(3));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"4\""));
        assert_eq!(if_match(&headers).unwrap(), Some(4));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"x\""));
        assert!(if_match(&headers).is_err());
    }

    #[test]
    fn prefer() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, handling=strict"),
        );
        let p = Prefer::from_headers(&headers);
        assert_eq!(p.return_, ReturnPreference::Minimal);
        assert!(p.strict);
    }
}

/// The caller's access to resources, as the authentication left it: `None` inside when
/// authentication is off (everything is reachable).
#[derive(Clone, Default)]
pub struct Caller(pub Option<std::sync::Arc<dyn crate::search::visibility::Access>>);

impl Caller {
    /// What the caller reaches for `permission`.
    pub fn sight(
        &self,
        permission: crate::auth::scopes::Permission,
    ) -> crate::search::visibility::Sight<'_> {
        crate::search::visibility::Sight::of(&self.0, permission)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = FhirError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.config.auth != crate::config::AuthMode::Smart {
            return Ok(Caller(None));
        }
        // With authentication on, a handler reached without a checked token reaches
        // nothing (it should not happen: the authentication sets it for every route that
        // reads data).
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| {
                Caller(Some(std::sync::Arc::new(
                    crate::search::visibility::NoAccess,
                )))
            }))
    }
}
