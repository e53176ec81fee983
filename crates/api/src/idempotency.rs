//! The `Idempotency-Key` layer (DESIGN.md §8, docs/decisions/0006-idempotency-keys.md).
//!
//! A POST that carries `Idempotency-Key` and a tenant credential (`x-tn` with an API key or a
//! user session) is authenticated here, before its handler, through the same [`TenantAuth`]
//! extractor the handler uses (which then reuses the scope). Its key is claimed for the tenant
//! environment; the handler runs; the response is kept and replayed, with
//! `Idempotent-Replayed: true`, to a retry with the same key, request and principal. The same key
//! with another request or principal is `422 idempotency_key_reused`; one still running is
//! `409 idempotency_key_in_flight`.
//!
//! Not covered, the header is ignored: other methods, and requests without a tenant credential
//! (login, refresh, invitation acceptance, platform routes). A request whose credential is
//! refused runs on unchanged, so its route answers the refusal as it would without the header.
//! Responses that say the request was refused before it ran (401, 403, 429) are not kept: the
//! key is free again. Every other response is kept, 5xx included (see the decision record).

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use azotte_domain::idempotency::{IdempotencyKey, HEADER};
use azotte_domain::Secret;
use azotte_service::idempotency::{self, Begin, Claim, StoredResponse};
use azotte_service::Ctx;
use futures::FutureExt;

use crate::error::ApiError;
use crate::extract::{has_credential, read_body, TenantAuth};
use crate::AppState;

/// The header that marks a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";

/// The response headers kept with the body; others (request id, rate limits) belong to the
/// request that gets them.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER];

/// State of the layer: the application's, and how long records live.
#[derive(Clone)]
pub struct IdempotencyState {
    pub app: AppState,
    pub retention: Duration,
}

/// The layer; see the module documentation.
pub async fn layer(State(st): State<IdempotencyState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(raw_key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    if !(has_credential(&parts) && parts.headers.contains_key("x-tn")) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let scope = match TenantAuth::from_request_parts(&mut parts, &st.app).await {
        Ok(TenantAuth(scope)) => scope,
        // Our own failure: running the request without its key could run it twice.
        Err(e) if e.status().is_server_error() => return e.into_response(),
        // A refused credential: the route's extractor answers exactly as without the header.
        Err(_) => return next.run(Request::from_parts(parts, body)).await,
    };
    let key = match IdempotencyKey::parse(raw_key.as_bytes()) {
        Ok(k) => k,
        Err(field) => {
            let detail = format!("{HEADER}: {}", field.message);
            let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_invalid", detail);
            e.push_field_error(field);
            return e.into_response();
        }
    };
    let bytes = match read_body(&parts.extensions, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let ctx = &st.app.ctx;
    let target = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str());
    let fingerprint = idempotency::fingerprint(ctx, &scope, parts.method.as_str(), target, &bytes);
    let claim = match idempotency::begin(ctx, &scope, &key, &fingerprint, st.retention).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Begin::Claimed(claim)) => claim,
        Ok(Begin::Replay(stored)) => return replay(stored),
        Ok(Begin::Reused) => return reused().into_response(),
        Ok(Begin::InFlight) => return in_flight().into_response(),
    };
    let run = AssertUnwindSafe(next.run(Request::from_parts(parts, Body::from(bytes)))).catch_unwind();
    match run.await {
        Ok(resp) => finish(ctx, claim, resp).await,
        Err(panic) => {
            // Kept like any 500; the panic goes on to the layer that logs it and answers.
            finish(ctx, claim, internal_error().into_response()).await;
            std::panic::resume_unwind(panic)
        }
    }
}

/// Keeps the handler's response (or frees the key for a refusal) and sends it on.
async fn finish(ctx: &Ctx, claim: Claim, resp: Response) -> Response {
    if matches!(
        resp.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    ) {
        if let Err(e) = idempotency::release(ctx, claim).await {
            tracing::error!(error = %e, "could not free an idempotency key; it is free again when its lock runs out");
        }
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Handlers answer from memory: this only collects what they built.
    let (parts, bytes) = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => (parts, bytes),
        Err(e) => {
            tracing::error!(error = %e, "response body could not be read");
            let (parts, body) = internal_error().into_response().into_parts();
            (parts, axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default())
        }
    };
    let headers = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let v = parts.headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let stored = StoredResponse { status: parts.status.as_u16(), headers, body: Secret::new(bytes.to_vec()) };
    if let Err(e) = idempotency::complete(ctx, claim, &stored).await {
        // The answer stands; a retry finds the key in flight until its lock runs out.
        tracing::error!(error = %e, "could not keep the response of an idempotent request");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn internal_error() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred")
}

fn replay(stored: StoredResponse) -> Response {
    let mut resp = Response::new(Body::from(stored.body.expose().clone()));
    *resp.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &stored.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            resp.headers_mut().append(n, v);
        }
    }
    resp.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

fn reused() -> ApiError {
    let message = "was already used with a different request (method, path, query or body) or by another \
                   credential; send a new key for a new request";
    let mut e = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        format!("this {HEADER} {message}"),
    );
    e.push_field_error(azotte_domain::FieldError::new(HEADER, "idempotency_key_reused", message));
    e
}

fn in_flight() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_flight",
        format!("a request with this {HEADER} is still being processed; retry shortly to get its response"),
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}
