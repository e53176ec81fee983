//! Offers, checkouts, subscriptions and customers' entitlements; plan changes in [`replace`].

mod replace;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use azotte_domain::subscription::CancelMethod;
use azotte_service::subscriptions::checkout::{self, CheckoutInput};
use azotte_service::subscriptions::entitlements::{self, Held};
use azotte_service::subscriptions::lifecycle::{self, Operation};
use azotte_service::subscriptions::offers::{self, Intent, Offer, OfferInput, OfferItem};
use azotte_store::subscriptions::{CheckoutRow, SubscriptionFilter, SubscriptionRow};
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
        .routes(routes!(create_offer))
        .routes(routes!(get_offer))
        .routes(routes!(create_checkout))
        .routes(routes!(get_checkout))
        .routes(routes!(list_subscriptions))
        .routes(routes!(get_subscription))
        .routes(routes!(timeline))
        .routes(routes!(cancel_request))
        .routes(routes!(cancel))
        .routes(routes!(reactivate))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(defer))
        .routes(routes!(extend))
        .routes(routes!(customer_entitlements))
        .routes(routes!(customer_entitlement))
        .merge(replace::router())
}

// ---------------------------------------------------------------------------------------------
// Offers

/// Asking for an offer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOffer {
    /// Omit for a showcase: display prices only, no checkout.
    #[serde(default)]
    customer_id: Option<String>,
    storefront_id: String,
    /// `new` (default), `winback` or `replace` (with `subscription_id`: the other prices of
    /// the subscription's bundle family).
    #[serde(default)]
    intent: Option<String>,
    /// The customer's subscription a `replace` offer replaces.
    #[serde(default)]
    subscription_id: Option<String>,
    #[serde(default)]
    promotion_code: Option<String>,
    /// ISO 4217; default the storefront's.
    #[serde(default)]
    currency: Option<String>,
}

/// One priced item of an offer.
#[derive(Serialize, ToSchema)]
pub struct OfferItemView {
    price_id: String,
    price_version: i32,
    bundle_id: String,
    bundle_key: String,
    bundle_name: String,
    family: String,
    currency: String,
    /// Per period, tax included, minor units.
    amount: i64,
    net: i64,
    tax: i64,
    tax_rate_bp: u32,
    period_unit: String,
    period_count: u32,
    /// Trial days applied for this customer (0: none).
    trial_days: u32,
    trial_payment_method_required: bool,
    /// Why the trial is or is not applied (stable codes).
    trial_reasons: Vec<String>,
}

impl From<OfferItem> for OfferItemView {
    fn from(i: OfferItem) -> Self {
        OfferItemView {
            price_id: i.price_id,
            price_version: i.price_version,
            bundle_id: i.bundle_id,
            bundle_key: i.bundle_key,
            bundle_name: i.bundle_name,
            family: i.family,
            currency: i.currency,
            amount: i.amount,
            net: i.net,
            tax: i.tax,
            tax_rate_bp: i.tax_rate_bp,
            period_unit: i.period_unit,
            period_count: i.period_count,
            trial_days: i.trial_days,
            trial_payment_method_required: i.trial_payment_method_required,
            trial_reasons: i.trial_reasons,
        }
    }
}

/// An offer: bound to its customer, valid until `expires_at`.
#[derive(Serialize, ToSchema)]
pub struct OfferView {
    id: String,
    customer_id: Option<String>,
    storefront_id: String,
    /// `new`, `winback`, `replace` or `showcase`.
    intent: String,
    /// The subscription a `replace` offer replaces.
    subscription_id: Option<String>,
    items: Vec<OfferItemView>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl From<Offer> for OfferView {
    fn from(o: Offer) -> Self {
        OfferView {
            id: o.id,
            customer_id: o.customer_id,
            storefront_id: o.storefront_id,
            intent: o.intent,
            subscription_id: o.subscription_id,
            items: o.items.into_iter().map(Into::into).collect(),
            created_at: o.created_at,
            expires_at: o.expires_at,
        }
    }
}

/// Prices what a customer may buy in a storefront, with the trial their history allows
/// (journaled as a decision with its reasons). Needs `subscription.write` with a customer,
/// `catalog.read` for a showcase.
#[utoipa::path(
    post, path = "/v1/offers", tag = "subscriptions", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreateOffer,
    responses((status = 201, body = OfferView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn create_offer(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogRead>,
    ApiJson(b): ApiJson<CreateOffer>,
) -> Result<(StatusCode, Json<OfferView>), ApiError> {
    let intent = match b.intent.as_deref() {
        None | Some("new") => Intent::New,
        Some("winback") => Intent::Winback,
        Some("replace") => Intent::Replace,
        Some(_) => {
            return Err(ApiError::validation(vec![azotte_domain::FieldError::new(
                "intent",
                "invalid_value",
                "one of new, winback, replace",
            )]))
        }
    };
    let o = offers::create(
        &state.ctx,
        &scope,
        OfferInput {
            customer_id: b.customer_id,
            storefront_id: b.storefront_id,
            intent,
            promotion_code: b.promotion_code,
            currency: b.currency,
            subscription_id: b.subscription_id,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(o.into())))
}

/// One offer (permission `subscription.read`).
#[utoipa::path(
    get, path = "/v1/offers/{id}", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = OfferView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_offer(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<OfferView>, ApiError> {
    Ok(Json(offers::get(&state.ctx, &scope, &id).await?.into()))
}

// ---------------------------------------------------------------------------------------------
// Checkouts

/// A new PSP token to pay with (attached to the customer first).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMethod {
    psp_account_id: String,
    token: String,
}

/// Buying one item of an offer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCheckout {
    customer_id: String,
    offer_id: String,
    price_id: String,
    /// A stored payment method of the customer…
    #[serde(default)]
    payment_method_id: Option<String>,
    /// …or a new PSP token.
    #[serde(default)]
    payment_method: Option<NewMethod>,
}

/// A checkout: `processing` (poll again after `Retry-After`), `requires_action` (the PSP's
/// `next_action` for the customer), `succeeded` (with the subscription) or `failed` (a code).
#[derive(Serialize, ToSchema)]
pub struct CheckoutView {
    id: String,
    customer_id: String,
    offer_id: String,
    price_id: String,
    status: String,
    /// Why it `failed`: `offer_invalid`, `bundle_not_available`, `price_not_available`,
    /// `price_not_recurring`, `storefront_not_available`, `already_subscribed`, `trial_not_eligible`,
    /// `payment_method_required`, `payment_method_not_usable`, `payment_declined`,
    /// `insufficient_funds`, `psp_unavailable` (no PSP account could take the charge, or it was
    /// never sent; nothing was charged), `payment_refunded` (the charge was refunded in
    /// full before the subscription was created), or `checkout_expired` (the customer did not
    /// complete 3-D Secure within an hour; the payment was cancelled, nothing charged).
    failure_code: Option<String>,
    subscription_id: Option<String>,
    payment_id: Option<String>,
    next_action: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<CheckoutRow> for CheckoutView {
    fn from(c: CheckoutRow) -> Self {
        CheckoutView {
            id: c.id,
            customer_id: c.customer_id,
            offer_id: c.offer_id,
            price_id: c.price_id,
            status: c.status,
            failure_code: c.failure_code,
            subscription_id: c.subscription_id,
            payment_id: c.payment_id,
            next_action: c.next_action.and_then(|s| serde_json::from_str(&s).ok()),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

fn checkout_response(status: StatusCode, c: CheckoutRow) -> Response {
    let processing = c.status == "processing";
    let mut resp = (status, Json(CheckoutView::from(c))).into_response();
    if processing {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// The longest `Prefer: wait` honoured on `POST /v1/checkouts`.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The `wait` preference of a request (RFC 7240: `Prefer: wait=5`, seconds), at most
/// [`MAX_WAIT`]; none when absent, malformed, zero, or beside `respond-async` (the client asked
/// for the asynchronous answer).
fn prefer_wait(headers: &axum::http::HeaderMap) -> Option<std::time::Duration> {
    let mut wait = None;
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for pref in value.split(',') {
            // A preference may carry parameters after `;`; `wait` has none of interest.
            let token = pref.split(';').next().unwrap_or("").trim();
            let (name, v) = token.split_once('=').map_or((token, ""), |(n, v)| (n.trim(), v.trim()));
            if name.eq_ignore_ascii_case("respond-async") {
                return None;
            }
            if name.eq_ignore_ascii_case("wait") && wait.is_none() {
                wait = v.trim_matches('"').parse::<u64>().ok().filter(|s| *s > 0);
            }
        }
    }
    wait.map(|s| std::time::Duration::from_secs(s).min(MAX_WAIT))
}

/// Starts a checkout of one item of an offer (permission `subscription.write`): `202` with
/// the tracking id; the purchase runs as a job. Use `Idempotency-Key`.
///
/// With `Prefer: wait=N` (RFC 7240; seconds, at most 10) the request waits up to N seconds for
/// the job and answers `201` with the checkout as the job left it — `succeeded`, `failed` or
/// `requires_action` — so the client does not poll; a job not done by then (a slow PSP, a
/// payment still pending) is answered `202` with `processing` as without the preference, and
/// the job goes on in the background either way.
///
/// An offered item is checked out by one checkout at a time: while a checkout of the same offer
/// and price is in progress, another is refused with `409 offer_in_checkout` before anything is
/// charged.
#[utoipa::path(
    post, path = "/v1/checkouts", tag = "subscriptions", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)"),
           ("prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds (at most 10) for the job and answer 201 with its result")),
    request_body = CreateCheckout,
    responses((status = 201, body = CheckoutView, description = "With `Prefer: wait`: the job finished in time (`succeeded`, `failed` or `requires_action`)"),
              (status = 202, body = CheckoutView, description = "`processing`: poll `GET /v1/checkouts/{id}` after `Retry-After`"),
              (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn create_checkout(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionWrite>,
    headers: axum::http::HeaderMap,
    ApiJson(b): ApiJson<CreateCheckout>,
) -> Result<Response, ApiError> {
    let wait = prefer_wait(&headers);
    let c = checkout::start(
        &state.ctx,
        &scope,
        CheckoutInput {
            customer_id: b.customer_id,
            offer_id: b.offer_id,
            price_id: b.price_id,
            payment_method_id: b.payment_method_id,
            token: b.payment_method.map(|m| (m.psp_account_id, m.token)),
        },
        wait,
    )
    .await?;
    let status = if c.status == "processing" { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok(checkout_response(status, c))
}

/// Where a checkout stands (permission `subscription.read`).
#[utoipa::path(
    get, path = "/v1/checkouts/{id}", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = CheckoutView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_checkout(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(checkout_response(StatusCode::OK, checkout::get(&state.ctx, &scope, &id).await?))
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// A subscription.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionView {
    id: String,
    customer_id: String,
    storefront_id: String,
    bundle_id: String,
    family: String,
    price_id: String,
    price_version: i32,
    amount: i64,
    currency: String,
    period_unit: String,
    period_count: i32,
    /// `trialing`, `active`, `past_due`, `paused`, `canceled` or `expired`.
    status: String,
    current_period_start: DateTime<Utc>,
    current_period_end: DateTime<Utc>,
    trial_end: Option<DateTime<Utc>>,
    /// When a canceled subscription ends (access until then unless canceled immediately).
    ends_at: Option<DateTime<Utc>>,
    canceled_immediately: bool,
    paused_at: Option<DateTime<Utc>>,
    payment_method_id: Option<String>,
    cancel_reason: Option<String>,
    checkout_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<SubscriptionRow> for SubscriptionView {
    fn from(s: SubscriptionRow) -> Self {
        SubscriptionView {
            id: s.id,
            customer_id: s.customer_id,
            storefront_id: s.storefront_id,
            bundle_id: s.bundle_id,
            family: s.family,
            price_id: s.price_id,
            price_version: s.price_version,
            amount: s.amount,
            currency: s.currency,
            period_unit: s.period_unit,
            period_count: s.period_count,
            status: s.status,
            current_period_start: s.period_start,
            current_period_end: s.period_end,
            trial_end: s.trial_end,
            ends_at: s.ends_at,
            canceled_immediately: s.canceled_immediately,
            paused_at: s.paused_at,
            payment_method_id: s.payment_method_id,
            cancel_reason: s.cancel_reason,
            checkout_id: s.checkout_id,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A page of subscriptions.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionList {
    data: Vec<SubscriptionView>,
    has_more: bool,
    next_cursor: Option<String>,
}

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscriptionParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    starting_after: Option<String>,
    customer_id: Option<String>,
    status: Option<String>,
    storefront_id: Option<String>,
}

/// Subscriptions, filtered by customer, status or storefront (permission `subscription.read`).
#[utoipa::path(
    get, path = "/v1/subscriptions", tag = "subscriptions", security(("bearer" = [])),
    params(SubscriptionParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = SubscriptionList), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn list_subscriptions(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<SubscriptionParams>,
) -> Result<Json<SubscriptionList>, ApiError> {
    let limit =
        azotte_domain::pagination::Limit::parse(p.limit).map_err(|e| ApiError::validation(vec![e]))?.get();
    if let Some(s) = &p.status {
        s.parse::<azotte_domain::subscription::SubscriptionStatus>().map_err(|_| {
            ApiError::validation(vec![azotte_domain::FieldError::new(
                "status",
                "invalid_value",
                "one of trialing, active, past_due, paused, canceled, expired",
            )])
        })?;
    }
    let filter = SubscriptionFilter {
        customer_id: p.customer_id.as_deref(),
        status: p.status.as_deref(),
        storefront_id: p.storefront_id.as_deref(),
        ..Default::default()
    };
    let (rows, has_more) =
        lifecycle::list(&state.ctx, &scope, filter, limit, p.starting_after.as_deref()).await?;
    let data: Vec<SubscriptionView> = rows.into_iter().map(Into::into).collect();
    let next_cursor = if has_more { data.last().map(|s| s.id.clone()) } else { None };
    Ok(Json(SubscriptionList { data, has_more, next_cursor }))
}

/// One subscription (permission `subscription.read`).
#[utoipa::path(
    get, path = "/v1/subscriptions/{id}", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = SubscriptionView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_subscription(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(lifecycle::get(&state.ctx, &scope, &id).await?.into()))
}

/// The subscription's timeline: every journal entry about it, oldest first (permission
/// `audit.read`).
#[utoipa::path(
    get, path = "/v1/subscriptions/{id}/timeline", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = super::journal::EntryList), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn timeline(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<super::journal::EntryList>, ApiError> {
    lifecycle::get(&state.ctx, &scope, &id).await?;
    let entries = azotte_service::journal::timeline(&state.ctx, &scope, "subscription", &id).await?;
    Ok(Json(super::journal::EntryList::timeline(entries)))
}

/// How a subscription may be cancelled.
#[derive(Serialize, ToSchema)]
pub struct CancelOptionsView {
    /// `end_of_period` and/or `immediate`.
    methods: Vec<CancelMethod>,
    reason_codes: Vec<&'static str>,
    /// A retention offer when a campaign applies (none yet).
    retention_offer: Option<serde_json::Value>,
    /// When access ends if cancelled at the end of the period.
    ends_at_end_of_period: DateTime<Utc>,
}

/// Step one of cancelling: the allowed methods and reasons (permission `subscription.cancel`).
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/cancel-request", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = CancelOptionsView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn cancel_request(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionCancel>,
    Path(id): Path<String>,
) -> Result<Json<CancelOptionsView>, ApiError> {
    let o = lifecycle::cancel_request(&state.ctx, &scope, &id).await?;
    Ok(Json(CancelOptionsView {
        methods: o.methods,
        reason_codes: o.reason_codes.to_vec(),
        retention_offer: o.retention_offer,
        ends_at_end_of_period: o.ends_at_end_of_period,
    }))
}

/// Confirming a cancellation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    method: CancelMethod,
    /// One of the codes from the cancel request.
    reason_code: String,
    /// Free answers of the exit survey (journaled).
    #[serde(default)]
    survey: Option<serde_json::Value>,
}

/// Step two: cancels at the end of the period (access until then) or immediately (permission
/// `subscription.cancel`).
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/cancel", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = Cancel,
    responses((status = 200, body = SubscriptionView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn cancel(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionCancel>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Cancel>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let survey = b.survey.unwrap_or(serde_json::Value::Null);
    Ok(Json(lifecycle::cancel(&state.ctx, &scope, &id, b.method, &b.reason_code, survey).await?.into()))
}

async fn operate(
    state: &AppState,
    scope: &azotte_store::TenantScope,
    id: &str,
    op: Operation,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(lifecycle::operate(&state.ctx, scope, id, op).await?.into()))
}

/// Reactivates a cancelled subscription inside its paid period (permission `subscription.write`).
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/reactivate", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = SubscriptionView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn reactivate(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionWrite>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    operate(&state, &scope, &id, Operation::Reactivate).await
}

/// Pauses a subscription: no access, and the paused time is added to the period when it
/// resumes (permission `subscription.write`).
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/pause", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = SubscriptionView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn pause(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionWrite>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    operate(&state, &scope, &id, Operation::Pause).await
}

/// Resumes a paused subscription (permission `subscription.write`).
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/resume", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = SubscriptionView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn resume(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionWrite>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    operate(&state, &scope, &id, Operation::Resume).await
}

/// Days to move a date by.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Days {
    /// 1 to 365.
    days: u32,
}

fn days(d: u32) -> Result<u32, ApiError> {
    if (1..=365).contains(&d) {
        Ok(d)
    } else {
        Err(ApiError::validation(vec![azotte_domain::FieldError::new(
            "days",
            "out_of_range",
            "1 to 365 days",
        )]))
    }
}

/// Moves the next renewal later (permission `subscription.write`).
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/defer", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = Days,
    responses((status = 200, body = SubscriptionView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, description = "`not_deferrable`, `renewal_unpaid` (past due: its renewal is invoiced and unpaid)", body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn defer(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Days>,
) -> Result<Json<SubscriptionView>, ApiError> {
    operate(&state, &scope, &id, Operation::Defer(days(b.days)?)).await
}

/// Goodwill extension: the period (and a cancellation's end) moves later at no charge
/// (permission `subscription.write`).
#[utoipa::path(
    post, path = "/v1/subscriptions/{id}/extend", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = Days,
    responses((status = 200, body = SubscriptionView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, description = "`not_extendable`, `period_ended`, `renewal_unpaid` (past due: its renewal is invoiced and unpaid)", body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn extend(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::SubscriptionWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<Days>,
) -> Result<Json<SubscriptionView>, ApiError> {
    operate(&state, &scope, &id, Operation::Extend(days(b.days)?)).await
}

// ---------------------------------------------------------------------------------------------
// Entitlements

/// An entitlement the customer may use now.
#[derive(Serialize, ToSchema)]
pub struct EntitlementView {
    key: String,
    /// `boolean` or `quantity`.
    kind: String,
    /// Summed over the subscriptions granting it.
    quantity: Option<i64>,
    unit: Option<String>,
    /// `full` (or `limited`).
    access: azotte_domain::subscription::Access,
    subscription_id: String,
    /// When the access ends, if known.
    until: Option<DateTime<Utc>>,
}

impl From<Held> for EntitlementView {
    fn from(h: Held) -> Self {
        EntitlementView {
            key: h.key,
            kind: h.kind,
            quantity: h.quantity,
            unit: h.unit,
            access: h.access,
            subscription_id: h.subscription_id,
            until: h.until,
        }
    }
}

/// A customer's entitlements.
#[derive(Serialize, ToSchema)]
pub struct EntitlementList {
    data: Vec<EntitlementView>,
}

/// What the customer may use now, from which subscription, until when (permission
/// `subscription.read`).
#[utoipa::path(
    get, path = "/v1/customers/{id}/entitlements", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = EntitlementList), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn customer_entitlements(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<EntitlementList>, ApiError> {
    let held = entitlements::of_customer(&state.ctx, &scope, &id, None).await?;
    Ok(Json(EntitlementList { data: held.into_iter().map(Into::into).collect() }))
}

/// One entitlement, if the customer may use it now (404 `entitlement_not_found` otherwise);
/// permission `subscription.read`.
#[utoipa::path(
    get, path = "/v1/customers/{id}/entitlements/{key}", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path), ("key" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = EntitlementView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn customer_entitlement(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<EntitlementView>, ApiError> {
    let mut held = entitlements::of_customer(&state.ctx, &scope, &id, Some(&key)).await?;
    Ok(Json(held.remove(0).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use std::time::Duration;

    fn wait_of(values: &[&str]) -> Option<Duration> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        prefer_wait(&h)
    }

    #[test]
    fn prefer_wait_is_parsed_per_rfc_7240() {
        assert_eq!(wait_of(&[]), None);
        assert_eq!(wait_of(&["wait=5"]), Some(Duration::from_secs(5)));
        assert_eq!(wait_of(&["return=minimal, Wait = 3"]), Some(Duration::from_secs(3)));
        assert_eq!(wait_of(&["handling=lenient", "wait=\"2\""]), Some(Duration::from_secs(2)));
        assert_eq!(wait_of(&["wait=3600"]), Some(MAX_WAIT));
        assert_eq!(wait_of(&["wait=0"]), None);
        assert_eq!(wait_of(&["wait=soon"]), None);
        assert_eq!(wait_of(&["wait=-1"]), None);
        // The client asked for the asynchronous answer.
        assert_eq!(wait_of(&["respond-async, wait=5"]), None);
    }
}
