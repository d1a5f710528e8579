//! Content negotiation: FHIR JSON is the only format served. A request that asks for
//! something else (`Accept` or `_format`) gets 406 with an OperationOutcome rather than
//! JSON it did not ask for.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::FhirError;

pub async fn check_accept(request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/fhir") {
        if let Some(format) = format_param(request.uri().query()) {
            if !is_json_format(&format) {
                return not_acceptable(&format!(
                    "_format={format} is not supported; this server speaks FHIR JSON (_format=json)"
                ));
            }
        } else if let Some(accept) = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
        {
            if !accepts_json(accept) {
                return not_acceptable(&format!(
                    "Accept: {accept} cannot be served; this server returns application/fhir+json"
                ));
            }
        }
    }
    next.run(request).await
}

fn not_acceptable(message: &str) -> Response {
    FhirError::not_supported(StatusCode::NOT_ACCEPTABLE, message).into_response()
}

fn format_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "_format")
        .map(|(_, value)| value.into_owned())
}

fn is_json_format(format: &str) -> bool {
    let media = format.split(';').next().unwrap_or_default().trim();
    matches!(
        media,
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
    )
}

/// True when any media range in `Accept` covers FHIR JSON.
fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let media = range.split(';').next().unwrap_or_default().trim();
        media.is_empty()
            || matches!(
                media,
                "*/*"
                    | "application/*"
                    | "application/json"
                    | "application/fhir+json"
                    | "application/json+fhir"
                    | "application/json-patch+json"
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_ranges() {
        assert!(accepts_json("application/fhir+json"));
        assert!(accepts_json("text/html, */*;q=0.1"));
        assert!(accepts_json("application/json; charset=utf-8"));
        assert!(!accepts_json("application/fhir+xml"));
        assert!(!accepts_json("text/html"));
        assert!(is_json_format("json"));
        assert!(!is_json_format("xml"));
    }
}
