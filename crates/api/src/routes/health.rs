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

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    let (batch, one_by_one) = azotte_service::subscriptions::renewals::jobs_ended();
    text.push_str(
        "# HELP azotte_renewal_jobs_ended_total Renewal jobs this process ran to their end, by path.\n",
    );
    text.push_str("# TYPE azotte_renewal_jobs_ended_total counter\n");
    text.push_str(&format!("azotte_renewal_jobs_ended_total{{path=\"batch\"}} {batch}\n"));
    text.push_str(&format!("azotte_renewal_jobs_ended_total{{path=\"one_by_one\"}} {one_by_one}\n"));
    let (settled, transactions) = azotte_service::subscriptions::checkout::settled_together();
    text.push_str(
        "# HELP azotte_checkouts_settled_together_total Checkouts this process settled in a shared settling transaction (one alone included).\n",
    );
    text.push_str("# TYPE azotte_checkouts_settled_together_total counter\n");
    text.push_str(&format!("azotte_checkouts_settled_together_total {settled}\n"));
    text.push_str(
        "# HELP azotte_checkout_settle_transactions_total Transactions that settled checkouts together.\n",
    );
    text.push_str("# TYPE azotte_checkout_settle_transactions_total counter\n");
    text.push_str(&format!("azotte_checkout_settle_transactions_total {transactions}\n"));
    let (written, transactions) = azotte_service::subscriptions::checkout::written_together();
    text.push_str(
        "# HELP azotte_checkouts_written_together_total Checkouts this process wrote (with their new payment method and first charge) in a shared transaction (one alone included).\n",
    );
    text.push_str("# TYPE azotte_checkouts_written_together_total counter\n");
    text.push_str(&format!("azotte_checkouts_written_together_total {written}\n"));
    text.push_str(
        "# HELP azotte_checkout_write_transactions_total Transactions that wrote checkouts together.\n",
    );
    text.push_str("# TYPE azotte_checkout_write_transactions_total counter\n");
    text.push_str(&format!("azotte_checkout_write_transactions_total {transactions}\n"));
    let (claims, claim_txs, responses, response_txs) = azotte_service::idempotency::gathered();
    text.push_str(
        "# HELP azotte_idempotency_records_gathered_total Idempotency keys claimed, and responses kept, in a shared transaction (one alone included).\n",
    );
    text.push_str("# TYPE azotte_idempotency_records_gathered_total counter\n");
    text.push_str(&format!("azotte_idempotency_records_gathered_total{{what=\"claim\"}} {claims}\n"));
    text.push_str(&format!("azotte_idempotency_records_gathered_total{{what=\"response\"}} {responses}\n"));
    text.push_str(
        "# HELP azotte_idempotency_gathered_transactions_total Transactions that claimed keys, or kept responses, together.\n",
    );
    text.push_str("# TYPE azotte_idempotency_gathered_transactions_total counter\n");
    text.push_str(&format!("azotte_idempotency_gathered_transactions_total{{what=\"claim\"}} {claim_txs}\n"));
    text.push_str(&format!(
        "azotte_idempotency_gathered_transactions_total{{what=\"response\"}} {response_txs}\n"
    ));
    let mut resp = text.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}
