//! Azotte's HTTP API: axum routers, DTOs, extractors, errors and the OpenAPI document.
//!
//! Transport only: handlers parse input into domain values, call a service and shape the
//! answer. Nothing depends on this crate except the binary.

mod error;
mod extract;
mod idempotency;
mod metrics;
mod middleware;
mod openapi;
mod raw_card;
mod routes;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use azotte_service::Ctx;
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, Problem};
pub use metrics::Metrics;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// How long `Idempotency-Key` records are kept and replayed.
    pub idempotency_retention: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            idempotency_retention: azotte_service::idempotency::DEFAULT_RETENTION,
        }
    }
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    /// Services' context.
    pub ctx: Ctx,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(routes::health::router())
        .merge(routes::auth::router())
        .merge(routes::platform_tenants::router())
        .merge(routes::tenant::router())
        .merge(routes::api_keys::router())
        .merge(routes::users::router())
        .merge(routes::journal::router())
        .merge(routes::catalog::router())
        .merge(routes::customers::router())
        .merge(routes::payments::router())
        .merge(routes::subscriptions::router())
        .merge(routes::invoices::router())
}

/// The OpenAPI document of every documented route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    document(api_router()).1
}

/// The routes and their document, with what is added to every operation.
fn document(api: OpenApiRouter<AppState>) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = api.split_for_parts();
    utoipa::Modify::modify(&openapi::IdempotencyKeyHeader, &mut doc);
    (routes, doc)
}

/// The OpenAPI document as the pretty JSON committed in `openapi.json`.
pub fn openapi_json() -> String {
    let mut s = openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// The complete application router with its middleware.
pub fn router(ctx: Ctx, config: &ApiConfig) -> Router {
    let metrics = Arc::new(Metrics::default());
    let state = AppState { ctx, metrics: metrics.clone() };
    let (routes, doc) = document(api_router());
    let doc = Arc::new(doc);
    let idempotency =
        idempotency::IdempotencyState { app: state.clone(), retention: config.idempotency_retention };
    routes
        .route("/openapi.json", get(move || openapi::serve(doc.clone())))
        .route("/metrics", get(routes::health::metrics))
        .fallback(middleware::route_not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        // Inside the raw-card guard (a refused body is never kept) and the body limit.
        .layer(axum::middleware::from_fn_with_state(idempotency, idempotency::layer))
        // Inside the body limit (it buffers the body under it), before every extractor.
        .layer(axum::middleware::from_fn_with_state(state.clone(), raw_card::guard))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .layer(axum::middleware::from_fn(middleware::run_to_completion))
        .with_state(state)
}
