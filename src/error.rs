//! The one error type of the server. Every failure, from a bad header to a database
//! outage, becomes a `FhirError`, which renders as an OperationOutcome with the right
//! HTTP status. Internal details are logged, never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::fhir::outcome::{operation_outcome, Issue, IssueCode};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug, Clone)]
pub struct FhirError {
    pub status: StatusCode,
    pub issues: Vec<Issue>,
}

pub type FhirResult<T> = Result<T, FhirError>;

impl FhirError {
    pub fn new(status: StatusCode, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        FhirError {
            status,
            issues: vec![Issue::error(code, diagnostics)],
        }
    }

    /// 400 with a list of problems (validation).
    pub fn invalid(issues: Vec<Issue>) -> Self {
        FhirError {
            status: StatusCode::BAD_REQUEST,
            issues,
        }
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueCode::NotFound, diagnostics)
    }

    pub fn gone(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, IssueCode::Deleted, diagnostics)
    }

    pub fn conflict(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, IssueCode::Conflict, diagnostics)
    }

    pub fn precondition_failed(diagnostics: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            IssueCode::Conflict,
            diagnostics,
        )
    }

    pub fn not_supported(status: StatusCode, diagnostics: impl Into<String>) -> Self {
        Self::new(status, IssueCode::NotSupported, diagnostics)
    }

    pub fn unprocessable(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, diagnostics)
    }

    /// A failure that is our fault. The cause goes to the log with a reference the client
    /// can quote; the client sees only the reference.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4();
        tracing::error!(%reference, "internal error: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueCode::Exception,
            format!(
                "internal server error (reference {reference}); the details are in the server log"
            ),
        )
    }

    /// Adds the FHIRPath location to the first issue.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(first) = self.issues.first_mut() {
            first.expression.push(expression.into());
        }
        self
    }

    /// The first issue's text, for logs and batch entry outcomes.
    pub fn message(&self) -> String {
        self.issues
            .first()
            .map(|i| i.diagnostics.clone())
            .unwrap_or_default()
    }

    pub fn outcome(&self) -> serde_json::Value {
        operation_outcome(&self.issues)
    }
}

impl std::fmt::Display for FhirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message())
    }
}

impl std::error::Error for FhirError {}

impl From<sea_orm::DbErr> for FhirError {
    fn from(err: sea_orm::DbErr) -> Self {
        let text = err.to_string();
        // A concurrent writer created the same row first: the client may retry.
        if text.contains("UNIQUE constraint failed") || text.contains("duplicate key value") {
            return FhirError::conflict(
                "the resource was changed by a concurrent request; retry the request",
            );
        }
        FhirError::internal(text)
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.outcome()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        response
    }
}
