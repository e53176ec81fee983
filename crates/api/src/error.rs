//! Errors as RFC 9457 problem details, with one mapping from service errors to HTTP.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use azotte_domain::FieldError;
use azotte_service::ServiceError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::middleware::current_request_id;

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document, as sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// URI naming the problem type: `urn:azotte:problem:{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation of this occurrence.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The id of the request, as in the `x-request-id` header.
    pub request_id: Option<String>,
    /// Field-level problems, for validation failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    detail: String,
    errors: Vec<FieldError>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with a status, a stable code and a detail message.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self { status, code: code.into(), detail: detail.into(), errors: vec![], headers: vec![] }
    }

    /// 422 with field errors.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self { errors, ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", detail) }
    }

    /// 400 for a malformed request (headers, query, body syntax).
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401 with a `WWW-Authenticate` challenge.
    pub fn unauthenticated(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 404 for a resource that does not exist in the caller's scope.
    pub fn not_found(resource: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{resource}_not_found"), format!("no such {resource}"))
    }

    /// Adds a field-level problem.
    pub fn push_field_error(&mut self, e: FieldError) {
        self.errors.push(e);
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Validation(v) => ApiError::validation(v.0),
            ServiceError::NotFound { resource } => ApiError::not_found(resource),
            ServiceError::Conflict { code, message, field } => {
                let mut err = ApiError::new(StatusCode::CONFLICT, code, message.clone());
                if let Some(f) = field {
                    err.errors.push(FieldError::new(f, code, message));
                }
                err
            }
            ServiceError::Unauthenticated { code, message } => ApiError::unauthenticated(code, message),
            ServiceError::BadRequest { code, message } => ApiError::bad_request(code, message),
            ServiceError::Throttled { retry_after_secs } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many attempts; try again later",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs)),
            ServiceError::Forbidden { code, message } => ApiError::new(StatusCode::FORBIDDEN, code, message),
            ServiceError::Undecryptable { code, message } => {
                tracing::error!(code, error = %message, "stored encrypted data could not be decrypted");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    "stored encrypted data could not be decrypted; an operator has to look at it",
                )
            }
            ServiceError::PspUnavailable { message } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "psp_unavailable", message)
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
            }
            ServiceError::Unavailable(source) => {
                tracing::error!(error = %error_chain(&source), "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "the service is temporarily unavailable",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
            }
            ServiceError::Internal(source) => {
                tracing::error!(error = %error_chain(source.as_ref()), "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "an internal error occurred",
                )
            }
        }
    }
}

/// An error and all its sources, joined with `: `.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("urn:azotte:problem:{}", self.code),
            title: self.title().to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.into_owned(),
            request_id: current_request_id(),
            errors: self.errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        resp
    }
}
