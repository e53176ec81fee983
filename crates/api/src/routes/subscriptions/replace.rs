//! Plan changes: preview and replace (issue 9).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::catalog::ReplacePolicy;
use azotte_domain::proration::ChangeKind;
use azotte_service::subscriptions::replace::{self, Preview, Replaced};
use azotte_store::replacements::ReplacementRow;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{SubscriptionView, PROBLEM};
use crate::error::ApiError;
use crate::extract::{need, Allowed, ApiJson, ApiQuery};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(preview_replace))
        .routes(routes!(replace_subscription))
        .routes(routes!(list_replacements))
}

/// The price to preview a change to.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// A price of the subscription's bundle family (as a `replace` offer lists them).
    price_id: String,
}

/// What a plan change would cost now, and when it would take effect. Amounts in minor units of
/// `currency`, prorated by the second and rounded half up.
#[derive(Serialize, ToSchema)]
pub struct ReplacePreviewView {
    subscription_id: String,
    /// The storefront's `lifecycle.replace_policy`.
    policy: ReplacePolicy,
    /// `upgrade`, `downgrade` or `switch` (same price per period).
    kind: ChangeKind,
    from_price_id: String,
    to_price_id: String,
    to_bundle_id: String,
    currency: String,
    /// Per period, before and after.
    from_amount: i64,
    to_amount: i64,
    /// Credit for the unused time of the current price.
    credit: i64,
    /// The new price for the rest of the period.
    charge: i64,
    /// Charged now, off session: `charge − credit` for an upgrade, else 0.
    amount_due: i64,
    /// What a downgrade leaves of the credit: not carried over.
    credit_unused: i64,
    /// When the new price and its entitlements take effect.
    effective_at: DateTime<Utc>,
    /// The end of the current period, unchanged: the next renewal charges `to_amount`.
    period_end: DateTime<Utc>,
}

impl From<Preview> for ReplacePreviewView {
    fn from(p: Preview) -> Self {
        ReplacePreviewView {
            subscription_id: p.subscription_id,
            policy: p.quote.policy,
            kind: p.quote.kind,
            from_price_id: p.from_price_id,
            to_price_id: p.to.price_id,
            to_bundle_id: p.to.bundle_id,
            currency: p.currency,
            from_amount: p.from_amount,
            to_amount: p.to.amount,
            credit: p.quote.credit,
            charge: p.quote.charge,
            amount_due: p.quote.amount_due,
            credit_unused: p.quote.credit_unused,
            effective_at: p.quote.effective_at,
            period_end: p.quote.period_end,
        }
    }
}

/// The exact figures of changing the subscription to another price of its bundle family now,
/// under the storefront's replace policy; nothing changes (permission `subscription.read`).
#[utoipa::path(
    get, path = "/v1/subscriptions/{id}/preview-replace", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), PreviewParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = ReplacePreviewView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn preview_replace(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionRead>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<PreviewParams>,
) -> Result<Json<ReplacePreviewView>, ApiError> {
    Ok(Json(replace::preview(&state.ctx, &scope, &id, &p.price_id).await?.into()))
}

/// Changing plans: a price of a `replace` offer made for this subscription.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    offer_id: String,
    price_id: String,
}

/// A plan change: `applied` (the subscription has the new price and entitlements),
/// `scheduled` (at the period end), `processing` (its charge is in flight) or `failed`.
#[derive(Serialize, ToSchema)]
pub struct ReplacementView {
    id: String,
    subscription_id: String,
    offer_id: String,
    /// `immediate_prorated` or `at_period_end`.
    policy: String,
    /// `upgrade`, `downgrade` or `switch`.
    kind: String,
    /// `processing`, `scheduled`, `applied`, `failed` or `superseded`.
    status: String,
    from_price_id: String,
    to_price_id: String,
    to_bundle_id: String,
    from_amount: i64,
    to_amount: i64,
    credit: i64,
    charge: i64,
    amount_due: i64,
    credit_unused: i64,
    effective_at: DateTime<Utc>,
    /// The end of the period the change was quoted in.
    period_end: DateTime<Utc>,
    /// The payment of the amount due (or, at the period end, of the renewal).
    payment_id: Option<String>,
    /// Why it `failed`: `payment_method_required`, `payment_method_not_usable`,
    /// `payment_declined`, `insufficient_funds`, `psp_unavailable`, or `subscription_changed`
    /// (the subscription moved on while the charge ran; the charge was refunded in full).
    failure_code: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<ReplacementRow> for ReplacementView {
    fn from(r: ReplacementRow) -> Self {
        ReplacementView {
            id: r.id,
            subscription_id: r.subscription_id,
            offer_id: r.offer_id,
            policy: r.policy,
            kind: r.kind,
            status: r.status,
            from_price_id: r.from_price_id,
            to_price_id: r.to_price_id,
            to_bundle_id: r.to_bundle_id,
            from_amount: r.from_amount,
            to_amount: r.to_amount,
            credit: r.credit,
            charge: r.charge,
            amount_due: r.amount_due,
            credit_unused: r.credit_unused,
            effective_at: r.effective_at,
            period_end: r.period_end,
            payment_id: r.payment_id,
            failure_code: r.failure_code,
            created_at: r.created_at,
        }
    }
}

/// A plan change and the subscription after it.
#[derive(Serialize, ToSchema)]
pub struct ReplaceResult {
    replacement: ReplacementView,
    subscription: SubscriptionView,
}

/// Changes the subscription to a price of a `replace` offer made for it (permission
/// `subscription.write`, and `payment.create` when something is due now), under the
/// storefront's replace policy: `immediate_prorated` charges an upgrade's prorated difference
/// off session and switches price and entitlements at once (a downgrade never charges);
/// `at_period_end` schedules the change for the renewal. `200` when applied or scheduled, `202`
/// while the charge is in flight (the same request again, or the worker, finishes it); the same
/// request again never charges twice. A declined charge is `409` with its code.
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/replace", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = Replace,
    responses((status = 200, body = ReplaceResult), (status = 202, body = ReplaceResult), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn replace_subscription(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Replace>,
) -> Result<(StatusCode, Json<ReplaceResult>), ApiError> {
    let Replaced { replacement, subscription } =
        replace::replace(&state.ctx, &scope, &id, &b.offer_id, &b.price_id).await?;
    let status = if replacement.status == "processing" { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(ReplaceResult { replacement: replacement.into(), subscription: subscription.into() })))
}

/// A subscription's plan changes.
#[derive(Serialize, ToSchema)]
pub struct ReplacementList {
    /// Newest first, at most 100.
    data: Vec<ReplacementView>,
}

/// The subscription's plan changes, newest first: a `scheduled` one is what the next renewal
/// applies (permission `subscription.read`).
#[utoipa::path(
    get, path = "/v1/subscriptions/{id}/replacements", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = ReplacementList), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn list_replacements(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionRead>,
    Path(id): Path<String>,
) -> Result<Json<ReplacementList>, ApiError> {
    let rows = replace::list(&state.ctx, &scope, &id).await?;
    Ok(Json(ReplacementList { data: rows.into_iter().map(Into::into).collect() }))
}
