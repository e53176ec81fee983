//! `/v1/payments`: charges through the storefront's own PSP accounts, and refunds.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_service::payments::{self, ChargeInput};
use azotte_store::payments::{PaymentRow, RefundRow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{need, Allowed, ApiJson, ApiQuery, TenantAuth};
use crate::AppState;

const PROBLEM: &str = "application/problem+json";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one))
        .routes(routes!(refund))
        .routes(routes!(timeline))
        .routes(routes!(get_safe_mode, put_safe_mode))
        .routes(routes!(psp_webhook))
}

/// A charge of a customer's stored payment method.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    customer_id: String,
    payment_method_id: String,
    /// Minor units.
    amount: i64,
    /// ISO 4217.
    currency: String,
    #[serde(default)]
    description: String,
    /// Force one of the storefront's PSP accounts (default: routing).
    #[serde(default)]
    psp_account_id: Option<String>,
    /// The customer is not present (no 3-D Secure possible).
    #[serde(default)]
    off_session: bool,
}

/// A refund to make.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    /// Minor units (default: everything not yet refunded).
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    reason: String,
}

/// A refund.
#[derive(Serialize, ToSchema)]
pub struct RefundView {
    id: String,
    payment_id: String,
    amount: i64,
    /// `pending`, `succeeded` or `failed`.
    status: String,
    reason: String,
    /// `safe_mode` while the refund waits, reserved but not sent, for safe mode to be lifted.
    queued_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<RefundRow> for RefundView {
    fn from(r: RefundRow) -> Self {
        RefundView {
            id: r.id,
            payment_id: r.payment_id,
            amount: r.amount,
            status: r.status,
            reason: r.reason,
            queued_reason: r.queued_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A payment.
#[derive(Serialize, ToSchema)]
pub struct PaymentView {
    id: String,
    storefront_id: String,
    customer_id: String,
    payment_method_id: String,
    /// The account of the latest attempt.
    psp_account_id: Option<String>,
    amount: i64,
    currency: String,
    /// `pending`, `requires_action`, `authorized`, `captured`, `failed`, `canceled` or `unknown`.
    status: String,
    attempts: i32,
    decline_code: Option<String>,
    captured_amount: i64,
    refunded_amount: i64,
    description: String,
    /// `safe_mode` while the payment waits, not sent to any PSP, for safe mode to be lifted.
    queued_reason: Option<String>,
    refunds: Vec<RefundView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl PaymentView {
    fn new(p: PaymentRow, refunds: Vec<RefundRow>) -> Self {
        PaymentView {
            id: p.id,
            storefront_id: p.storefront_id,
            customer_id: p.customer_id,
            payment_method_id: p.payment_method_id,
            psp_account_id: p.psp_account_id,
            amount: p.amount,
            currency: p.currency,
            status: p.status,
            attempts: p.attempts,
            decline_code: p.decline_code,
            captured_amount: p.captured_amount,
            refunded_amount: p.refunded_amount,
            description: p.description,
            queued_reason: p.queued_reason,
            refunds: refunds.into_iter().map(Into::into).collect(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A page of payments.
#[derive(Serialize, ToSchema)]
pub struct PaymentList {
    data: Vec<PaymentView>,
    has_more: bool,
    next_cursor: Option<String>,
}

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PaymentParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    starting_after: Option<String>,
    customer_id: Option<String>,
}

/// Charges a customer's stored payment method through the storefront's PSP accounts
/// (permission `payment.create`). Declines answer 201 with status `failed` and a decline code.
/// In safe mode the payment is queued and answers 202 (`pending`, `queued_reason: safe_mode`).
/// An `Idempotency-Key` starting with `checkout-`, `renewal-` or `replace-` is refused
/// (`422 idempotency_key_reserved`): those are the keys of the platform's own charges.
#[utoipa::path(
    post, path = "/v1/payments", tag = "payments", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreatePayment,
    responses((status = 201, body = PaymentView), (status = 202, body = PaymentView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn create(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::PaymentCreate>,
    headers: axum::http::HeaderMap,
    ApiJson(b): ApiJson<CreatePayment>,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    // Validated by the idempotency layer; the payment remembers it too (one payment per key).
    let request_key =
        headers.get(azotte_domain::idempotency::HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // A client's key in the platform's own key space could be taken for one of its charges
    // (and, say, refunded as a trial conversion that paid for nothing).
    if let Some(k) = &request_key {
        if payments::is_platform_key(k) {
            return Err(ApiError::validation(vec![azotte_domain::FieldError::new(
                "Idempotency-Key",
                "idempotency_key_reserved",
                "keys starting with checkout-, renewal- or replace- are the platform's own",
            )]));
        }
    }
    let p = payments::charge(
        &state.ctx,
        &scope,
        ChargeInput {
            customer_id: b.customer_id,
            payment_method_id: b.payment_method_id,
            amount: b.amount,
            currency: b.currency,
            description: b.description,
            psp_account_id: b.psp_account_id,
            off_session: b.off_session,
            request_key,
        },
    )
    .await?;
    let status = if p.queued_reason.is_some() { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(PaymentView::new(p, vec![]))))
}

/// Payments of the environment (permission `payment.read`).
#[utoipa::path(
    get, path = "/v1/payments", tag = "payments", security(("bearer" = [])),
    params(PaymentParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = PaymentList))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<PaymentParams>,
) -> Result<Json<PaymentList>, ApiError> {
    let limit =
        azotte_domain::pagination::Limit::parse(p.limit).map_err(|e| ApiError::validation(vec![e]))?.get();
    let (rows, has_more) =
        payments::list(&state.ctx, &scope, limit, p.starting_after.as_deref(), p.customer_id.as_deref())
            .await?;
    let data: Vec<PaymentView> = rows.into_iter().map(|p| PaymentView::new(p, vec![])).collect();
    let next_cursor = if has_more { data.last().map(|p| p.id.clone()) } else { None };
    Ok(Json(PaymentList { data, has_more, next_cursor }))
}

/// One payment with its refunds (permission `payment.read`).
#[utoipa::path(
    get, path = "/v1/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = PaymentView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let (p, refunds) = payments::get(&state.ctx, &scope, &id).await?;
    Ok(Json(PaymentView::new(p, refunds)))
}

/// Refunds part or all of a captured payment (permission `payment.refund`); the refunded total
/// can never exceed the captured amount (`409 refund_exceeds_captured`).
#[utoipa::path(
    post, path = "/v1/payments/{id}/refunds", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreateRefund,
    responses((status = 201, body = RefundView), (status = 202, body = RefundView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn refund(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::PaymentRefund>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<CreateRefund>,
) -> Result<(StatusCode, Json<RefundView>), ApiError> {
    let r = payments::refund(&state.ctx, &scope, &id, b.amount, &b.reason).await?;
    let status = if r.queued_reason.is_some() { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(r.into())))
}

/// The payment's timeline: every journal entry about it, oldest first (permission `audit.read`).
#[utoipa::path(
    get, path = "/v1/payments/{id}/timeline", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = super::journal::EntryList), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn timeline(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<super::journal::EntryList>, ApiError> {
    payments::get(&state.ctx, &scope, &id).await?;
    let entries = azotte_service::journal::timeline(&state.ctx, &scope, "payment", &id).await?;
    Ok(Json(super::journal::EntryList::timeline(entries)))
}

/// The tenant's safe mode.
#[derive(Serialize, ToSchema)]
pub struct SafeModeView {
    /// While on, no money moves for any environment of the tenant: payments and refunds are
    /// queued and sent once it is lifted.
    enabled: bool,
    reason: Option<String>,
    enabled_by: Option<String>,
    enabled_at: Option<DateTime<Utc>>,
}

impl From<Option<azotte_store::payment_ops::SafeMode>> for SafeModeView {
    fn from(m: Option<azotte_store::payment_ops::SafeMode>) -> Self {
        match m {
            Some(m) => SafeModeView {
                enabled: true,
                reason: Some(m.reason),
                enabled_by: Some(m.enabled_by),
                enabled_at: Some(m.enabled_at),
            },
            None => SafeModeView { enabled: false, reason: None, enabled_by: None, enabled_at: None },
        }
    }
}

/// Switching safe mode.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSafeMode {
    enabled: bool,
    /// Why (required to switch it on).
    #[serde(default)]
    reason: String,
}

/// Whether the tenant is in safe mode (permission `payment.read`).
#[utoipa::path(
    get, path = "/v1/tenant/safe-mode", tag = "payments", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = SafeModeView))
)]
async fn get_safe_mode(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<SafeModeView>, ApiError> {
    Ok(Json(payments::safe_mode(&state.ctx, &scope).await?.into()))
}

/// Switches safe mode on or off for the whole tenant (permission `payment.safe_mode`). On:
/// every payment and refund is queued instead of sent. Off: the queue is sent. Idempotent.
#[utoipa::path(
    put, path = "/v1/tenant/safe-mode", tag = "payments", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = SetSafeMode,
    responses((status = 200, body = SafeModeView), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn put_safe_mode(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::PaymentSafeMode>,
    ApiJson(b): ApiJson<SetSafeMode>,
) -> Result<Json<SafeModeView>, ApiError> {
    let change = payments::SafeModeChange { enabled: b.enabled, reason: b.reason };
    Ok(Json(payments::set_safe_mode(&state.ctx, &scope, change).await?.into()))
}

/// What became of a webhook delivery.
#[derive(Serialize, ToSchema)]
pub struct WebhookAck {
    /// `processed`, `duplicate` (received before; nothing changed) or `ignored` (an event type
    /// Azotte does not follow).
    status: &'static str,
}

/// Receives a PSP's webhook for one of a tenant environment's PSP accounts. No credential: the
/// PSP's signature (`Stripe-Signature`, or the sandbox's `azotte-sandbox-signature`) over the raw
/// body is verified with the account's webhook secret, with a timestamp tolerance. Redeliveries
/// and out-of-order events are harmless. Configure this URL at the PSP.
#[utoipa::path(
    post, path = "/v1/psp-webhooks/{tenant_id}/{environment}/{psp_account_id}", tag = "payments",
    params(("tenant_id" = String, Path), ("environment" = String, Path), ("psp_account_id" = String, Path)),
    request_body(content = String, content_type = "application/json", description = "The PSP's event, byte for byte"),
    responses((status = 200, body = WebhookAck), (status = 400, body = crate::Problem, content_type = PROBLEM), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn psp_webhook(
    State(state): State<AppState>,
    Path((tenant_id, environment, account_id)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<WebhookAck>, ApiError> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let receipt =
        payments::receive_webhook(&state.ctx, &tenant_id, &environment, &account_id, &headers, &body).await?;
    let status = match receipt {
        payments::WebhookReceipt::Processed => "processed",
        payments::WebhookReceipt::Duplicate => "duplicate",
        payments::WebhookReceipt::Ignored => "ignored",
    };
    Ok(Json(WebhookAck { status }))
}
