//! `/v1/prices`: a bundle's price in one storefront, with immutable versions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::catalog::{ActiveStatus, BillingPeriod, Money, PeriodUnit, TaxKind, Trial};
use azotte_service::catalog::{self, PriceInput, PriceView as Resolved, VersionInput};
use azotte_store::catalog::{PriceFilter, PriceVersion};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{page_of, PROBLEM};
use crate::error::ApiError;
use crate::extract::{need, Allowed, ApiJson, ApiQuery, Patch, TenantAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one))
        .routes(routes!(add_version))
        .routes(routes!(archive))
}

/// A billing period.
#[derive(Serialize, ToSchema)]
pub struct PeriodView {
    unit: PeriodUnit,
    count: u32,
}

impl From<BillingPeriod> for PeriodView {
    fn from(p: BillingPeriod) -> Self {
        PeriodView { unit: p.unit, count: p.count }
    }
}

/// A trial.
#[derive(Serialize, ToSchema)]
pub struct TrialView {
    days: u32,
    payment_method_required: bool,
}

impl From<Trial> for TrialView {
    fn from(t: Trial) -> Self {
        TrialView { days: t.days, payment_method_required: t.payment_method_required }
    }
}

/// A price to create, with its first version.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrice {
    bundle_id: String,
    storefront_id: String,
    /// ISO 4217; one the storefront sells in.
    currency: String,
    /// Minor units (cents for EUR, yen for JPY, fils for KWD). Give this or `amount_decimal`.
    #[serde(default)]
    amount: Option<i64>,
    /// Major units as a decimal string (`"14.99"`); more decimals than the currency has is
    /// `422 too_precise`.
    #[serde(default)]
    amount_decimal: Option<String>,
    /// Required for subscription and add-on bundles; none for one-time bundles.
    #[serde(default)]
    billing_period: Option<BillingPeriod>,
    #[serde(default)]
    trial: Option<Trial>,
    /// Default: the storefront's tax scheme.
    #[serde(default)]
    tax_behaviour: Option<TaxKind>,
    /// When the first version takes effect (default now).
    #[serde(default)]
    effective_from: Option<DateTime<Utc>>,
}

/// A new version of a price. Absent fields keep the latest version's values.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVersion {
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    amount_decimal: Option<String>,
    /// `null` removes the trial.
    #[serde(default)]
    #[schema(value_type = Option<Trial>)]
    trial: Patch<Trial>,
    #[serde(default)]
    tax_behaviour: Option<TaxKind>,
    /// When it takes effect for new sales (default now; not before the latest version).
    #[serde(default)]
    effective_from: Option<DateTime<Utc>>,
}

/// One immutable version of a price.
#[derive(Serialize, ToSchema)]
pub struct VersionView {
    id: String,
    version: i32,
    amount: Money,
    trial: Option<TrialView>,
    tax_behaviour: TaxKind,
    effective_from: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

/// A price with its versions.
#[derive(Serialize, ToSchema)]
pub struct PriceView {
    pub id: String,
    bundle_id: String,
    storefront_id: String,
    currency: String,
    billing_period: Option<PeriodView>,
    status: ActiveStatus,
    /// The version in effect now (none when every version takes effect later).
    current_version: Option<VersionView>,
    /// Every version, oldest first.
    versions: Vec<VersionView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn version_view(v: &PriceVersion, currency: &azotte_domain::catalog::Currency) -> VersionView {
    VersionView {
        id: v.id.clone(),
        version: v.version,
        amount: Money::new(v.amount, currency.clone()),
        trial: v.trial.map(Into::into),
        tax_behaviour: v.tax_behaviour,
        effective_from: v.effective_from,
        created_at: v.created_at,
    }
}

impl PriceView {
    fn new(r: Resolved, now: DateTime<Utc>) -> Self {
        let c = &r.price.currency;
        let current_version = r.version_at(now).map(|v| version_view(v, c));
        let versions = r.versions.iter().map(|v| version_view(v, c)).collect();
        let p = r.price;
        PriceView {
            id: p.id,
            bundle_id: p.bundle_id,
            storefront_id: p.storefront_id,
            currency: p.currency.to_string(),
            billing_period: p.billing_period.map(Into::into),
            status: p.status,
            current_version,
            versions,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

page_of!(PriceList, PriceView);

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PriceParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    starting_after: Option<String>,
    bundle_id: Option<String>,
    storefront_id: Option<String>,
    status: Option<ActiveStatus>,
}

/// Creates a price with its first version (permission `catalog.write`).
#[utoipa::path(
    post, path = "/v1/prices", tag = "catalog", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreatePrice,
    responses(
        (status = 201, body = PriceView),
        (status = 409, description = "`price_exists`", body = crate::Problem, content_type = PROBLEM),
        (status = 422, description = "`currency_not_served`, `too_precise`, `bundle_archived`, `zero_period`, …", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn create(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    ApiJson(b): ApiJson<CreatePrice>,
) -> Result<(StatusCode, Json<PriceView>), ApiError> {
    let p = catalog::create_price(
        &state.ctx,
        &scope,
        PriceInput {
            bundle_id: b.bundle_id,
            storefront_id: b.storefront_id,
            currency: b.currency,
            amount: b.amount,
            amount_decimal: b.amount_decimal,
            billing_period: b.billing_period,
            trial: b.trial,
            tax_behaviour: b.tax_behaviour,
            effective_from: b.effective_from,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(PriceView::new(p, state.ctx.clock.now()))))
}

/// Prices of the environment (an API key restricted to storefronts sees only theirs).
#[utoipa::path(
    get, path = "/v1/prices", tag = "catalog", security(("bearer" = [])),
    params(PriceParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = PriceList))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<PriceParams>,
) -> Result<Json<PriceList>, ApiError> {
    let limit = super::limit(p.limit)?;
    let filter = PriceFilter {
        bundle_id: p.bundle_id,
        storefront_id: p.storefront_id,
        status: p.status,
        storefronts: None,
    };
    let (rows, more) =
        catalog::list_prices(&state.ctx, &scope, filter, limit, p.starting_after.as_deref()).await?;
    let now = state.ctx.clock.now();
    Ok(Json(PriceList::new(rows.into_iter().map(|r| PriceView::new(r, now)).collect(), more)))
}

/// One price with every version.
#[utoipa::path(
    get, path = "/v1/prices/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = PriceView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<PriceView>, ApiError> {
    let p = catalog::get_price(&state.ctx, &scope, &id).await?;
    Ok(Json(PriceView::new(p, state.ctx.clock.now())))
}

/// "Changes" a price: adds an immutable version taking effect at `effective_from` for new
/// sales. Existing subscriptions keep their version.
#[utoipa::path(
    post, path = "/v1/prices/{id}/versions", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreateVersion,
    responses(
        (status = 201, body = PriceView),
        (status = 404, body = crate::Problem, content_type = PROBLEM),
        (status = 409, description = "`price_archived`", body = crate::Problem, content_type = PROBLEM),
        (status = 422, body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn add_version(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<CreateVersion>,
) -> Result<(StatusCode, Json<PriceView>), ApiError> {
    let input = VersionInput {
        amount: b.amount,
        amount_decimal: b.amount_decimal,
        trial: match b.trial {
            Patch::Absent => None,
            Patch::Null => Some(None),
            Patch::Value(t) => Some(Some(t)),
        },
        tax_behaviour: b.tax_behaviour,
        effective_from: b.effective_from,
    };
    let p = catalog::add_price_version(&state.ctx, &scope, &id, input).await?;
    Ok((StatusCode::CREATED, Json(PriceView::new(p, state.ctx.clock.now()))))
}

/// Archives a price: no longer sold; subscriptions on it continue.
#[utoipa::path(
    post, path = "/v1/prices/{id}/archive", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = PriceView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn archive(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
) -> Result<Json<PriceView>, ApiError> {
    let p = catalog::archive_price(&state.ctx, &scope, &id).await?;
    Ok(Json(PriceView::new(p, state.ctx.clock.now())))
}
