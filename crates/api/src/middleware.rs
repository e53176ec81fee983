//! Request context (ids, span, access log), fallbacks and the problem safety net.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use azotte_domain::id::RequestId;
use tracing::Instrument;

use crate::error::{ApiError, PROBLEM_JSON};

/// Ids of the request being served.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// `x-request-id` as received (if well-formed) or generated.
    pub request_id: String,
    /// The W3C trace id of an incoming `traceparent`, else the request id.
    pub correlation_id: String,
}

tokio::task_local! {
    static REQUEST: RequestInfo;
}

/// The id of the request this task serves, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST.try_with(|r| r.request_id.clone()).ok()
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The trace id of a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match parts.as_slice() {
        [ver, trace, parent, flags]
            if hex(ver, 2)
                && *ver != "ff"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && parent.bytes().any(|b| b != b'0') =>
        {
            Some(trace)
        }
        _ => None,
    }
}

/// Gives every request an id and a span, logs its completion, and echoes `x-request-id`.
pub async fn request_context(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let headers = req.headers();
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v) && crate::raw_card::loggable_header(v).is_some())
        .map(str::to_owned)
        .unwrap_or_else(|| RequestId::new().to_string());
    let correlation_id = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id)
        .map(str::to_owned)
        .unwrap_or_else(|| request_id.clone());
    let info = RequestInfo { request_id: request_id.clone(), correlation_id };
    let span = tracing::info_span!(
        "request",
        request_id = %info.request_id,
        correlation_id = %info.correlation_id,
        method = %req.method(),
        // The path only: the query string may hold values (and a card number, see raw_card).
        path = %crate::raw_card::loggable_path(req.uri().path()),
        tenant_id = tracing::field::Empty,
        environment = tracing::field::Empty,
        principal = tracing::field::Empty,
    );
    let meta = azotte_store::journal::RequestMeta {
        correlation_id: info.correlation_id.clone(),
        request_id: Some(info.request_id.clone()),
        client_ip: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect::<String>())
            // Stored in the journal: never one holding a card number.
            .filter(|v| crate::raw_card::loggable_header(v).is_some()),
        source: "api",
        causation_id: None,
    };
    req.extensions_mut().insert(info.clone());
    let mut resp = REQUEST
        .scope(
            info,
            azotte_store::journal::with_meta(meta, async move {
                let resp = next.run(req).await;
                let resp = ensure_problem(resp);
                tracing::info!(
                    status = resp.status().as_u16(),
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "request completed"
                );
                resp
            })
            .instrument(span),
        )
        .await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Turns an error response that is not yet a problem document into one, so every error the
/// API gives has the same shape whatever produced it.
fn ensure_problem(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return resp;
    }
    let (parts, _) = resp.into_parts();
    let code = match status {
        StatusCode::NOT_FOUND => "route_not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    };
    let mut err = ApiError::new(status, code, status.canonical_reason().unwrap_or("error").to_lowercase());
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        err = err.with_header(header::ALLOW, allow.clone());
    }
    err.into_response()
}

/// Runs the rest of the request in its own task, so a client that disconnects cannot cancel a
/// handler halfway: a transaction always commits or rolls back instead of leaving a pooled
/// connection inside a half-begun transaction (sqlx does not recover from a cancelled BEGIN).
pub async fn run_to_completion(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred")
                .into_response()
        }
    }
}

/// 404 for paths no route matches.
pub async fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no route matches this path")
}

/// 405 for a known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path does not take this method")
}

/// A panicking handler answers an opaque 500, and the panic is logged.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id("abc-123_x.y:z"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id(&"a".repeat(129)));
    }
}
