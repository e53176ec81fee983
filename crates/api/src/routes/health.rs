//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// Health answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    status: &'static str,
}

/// Readiness answer.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    database: &'static str,
    /// Migrations known to this build but not applied.
    pending_migrations: usize,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The database answers and its migrations are current.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = crate::Problem, content_type = "application/problem+json"))
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let db = &state.ctx.db;
    let not_ready = |detail: String| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", detail)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
    };
    db.ping().await.map_err(|_| not_ready("the database does not answer".into()))?;
    let pending =
        db.pending_migrations().await.map_err(|_| not_ready("cannot read the migration state".into()))?;
    if pending > 0 {
        return Err(not_ready(format!("{pending} migration(s) not applied")));
    }
    let database = match db.backend() {
        azotte_store::Backend::Sqlite => "sqlite",
        azotte_store::Backend::Postgres => "postgres",
    };
    Ok(Json(Readiness { status: "ready", database, pending_migrations: 0 }))
}

/// Appends a counter to a Prometheus text exposition: its help, its type, and one sample per
/// `(labels, value)` (`labels` as written between braces, or empty).
fn counter(text: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    for (labels, value) in samples {
        match labels {
            &"" => text.push_str(&format!("{name} {value}\n")),
            labels => text.push_str(&format!("{name}{{{labels}}} {value}\n")),
        }
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    use azotte_service::subscriptions::checkout;
    let mut text = state.metrics.render();
    let (batch, one_by_one) = azotte_service::subscriptions::renewals::jobs_ended();
    counter(
        &mut text,
        "azotte_renewal_jobs_ended_total",
        "Renewal jobs this process ran to their end, by path.",
        &[("path=\"batch\"", batch), ("path=\"one_by_one\"", one_by_one)],
    );
    // Work of concurrent requests gathered per tenant environment (decisions 0006 and 0007): the
    // items done in shared transactions (one alone included), and the transactions.
    let gathered = [
        (
            "checkouts_read_together",
            "checkout_read",
            "Checkout requests this process read (customer, offer, payment method)",
            checkout::read_together(),
        ),
        (
            "checkouts_written_together",
            "checkout_write",
            "Checkouts this process wrote (with their new payment method and first charge)",
            checkout::written_together(),
        ),
        (
            "checkouts_settled_together",
            "checkout_settle",
            "Checkouts this process settled",
            checkout::settled_together(),
        ),
        (
            "customers_created_together",
            "customer_create",
            "New customers this process created",
            azotte_service::customers::created_together(),
        ),
        (
            "offers_made_together",
            "offer_make",
            "Offers this process made (new, winback, showcase)",
            azotte_service::subscriptions::offers::made_together(),
        ),
    ];
    for (items, transactions, what, (n, t)) in gathered {
        counter(
            &mut text,
            &format!("azotte_{items}_total"),
            &format!("{what} in a shared transaction (one alone included)."),
            &[("", n)],
        );
        counter(
            &mut text,
            &format!("azotte_{transactions}_transactions_total"),
            "Transactions that did them together.",
            &[("", t)],
        );
    }
    let (claims, claim_txs, responses, response_txs, txs) = azotte_service::idempotency::gathered();
    counter(
        &mut text,
        "azotte_idempotency_records_gathered_total",
        "Idempotency keys claimed, and responses kept, in a shared transaction (one alone included).",
        &[("what=\"claim\"", claims), ("what=\"response\"", responses)],
    );
    counter(
        &mut text,
        "azotte_idempotency_gathered_transactions_total",
        "Transactions that claimed keys, or kept responses, together.",
        &[("what=\"claim\"", claim_txs), ("what=\"response\"", response_txs)],
    );
    counter(
        &mut text,
        "azotte_idempotency_record_transactions_total",
        "Transactions that wrote idempotency records together: claims, responses or both.",
        &[("", txs)],
    );
    let mut resp = text.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}
