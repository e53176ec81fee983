//! `/v1/storefronts` and the showcase `/v1/storefronts/{id}/catalog`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::catalog::{
    DunningPolicy, EntitlementKind, LifecyclePolicy, Money, StorefrontStatus, StorefrontType, TaxScheme,
};
use azotte_domain::invoice::FiscalProvider;
use azotte_domain::ValidationErrors;
use azotte_service::catalog::{self, StorefrontInput, StorefrontPatch};
use azotte_store::catalog::Storefront;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::bundles::EntitlementGrant;
use super::prices::{PeriodView, TrialView};
use super::{page_of, PageParams, PROBLEM};
use crate::error::ApiError;
use crate::extract::{need, Allowed, ApiJson, ApiQuery, Patch, TenantAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, update, delete))
        .routes(routes!(showcase))
}

/// A storefront to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStorefront {
    name: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    type_: StorefrontType,
    /// ISO 4217, e.g. `EUR`.
    default_currency: String,
    /// More ISO 4217 currencies it sells in.
    #[serde(default)]
    currencies: Vec<String>,
    /// ISO 639-1, e.g. `en`.
    default_language: String,
    /// ISO 3166-1 alpha-2 codes; at least one.
    countries: Vec<String>,
    tax: TaxScheme,
    /// `active` (default) or `inactive`.
    #[serde(default)]
    status: Option<StorefrontStatus>,
    /// Retry offsets, grace and end action; sane defaults (1, 3, 7 days; 7 days of grace with
    /// access; then expire).
    #[serde(default)]
    dunning: Option<DunningPolicy>,
    /// Trial cooldown (default 180 days) and whether trials may be paused (default no).
    #[serde(default)]
    lifecycle: Option<LifecyclePolicy>,
    /// Who fiscalizes its invoices: `none` (default) or `local` (Azotte signs each document).
    #[serde(default)]
    fiscalization: Option<FiscalProvider>,
    /// Prefix of invoice numbers (default: the first of `INV-`, `INV-2-`, … no other storefront of
    /// the environment uses). One another storefront numbers with, now or before, is
    /// `409 invoice_prefix_in_use`.
    #[serde(default)]
    invoice_prefix: Option<String>,
}

/// Changes to a storefront; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStorefront {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    name: Patch<String>,
    #[serde(default, rename = "type")]
    #[schema(value_type = Option<StorefrontType>, rename = "type")]
    type_: Patch<StorefrontType>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    default_currency: Patch<String>,
    /// Replaces the additional currencies.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    currencies: Patch<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    default_language: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    countries: Patch<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<TaxScheme>)]
    tax: Patch<TaxScheme>,
    #[serde(default)]
    #[schema(value_type = Option<StorefrontStatus>)]
    status: Patch<StorefrontStatus>,
    #[serde(default)]
    #[schema(value_type = Option<DunningPolicy>)]
    dunning: Patch<DunningPolicy>,
    #[serde(default)]
    #[schema(value_type = Option<LifecyclePolicy>)]
    lifecycle: Patch<LifecyclePolicy>,
    #[serde(default)]
    #[schema(value_type = Option<FiscalProvider>)]
    fiscalization: Patch<FiscalProvider>,
    /// A new prefix of invoice numbers; one another storefront numbers with, now or before, is
    /// `409 invoice_prefix_in_use`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    invoice_prefix: Patch<String>,
}

/// A storefront.
#[derive(Serialize, ToSchema)]
pub struct StorefrontView {
    pub id: String,
    name: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    type_: StorefrontType,
    default_currency: String,
    /// Every currency it sells in, the default first.
    currencies: Vec<String>,
    default_language: String,
    countries: Vec<String>,
    tax: TaxScheme,
    status: StorefrontStatus,
    dunning: DunningPolicy,
    lifecycle: LifecyclePolicy,
    /// `none` or `local`.
    fiscalization: FiscalProvider,
    invoice_prefix: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Storefront> for StorefrontView {
    fn from(s: Storefront) -> Self {
        StorefrontView {
            id: s.id,
            name: s.name,
            type_: s.type_,
            default_currency: s.default_currency.to_string(),
            currencies: s.currencies.iter().map(ToString::to_string).collect(),
            default_language: s.default_language,
            countries: s.countries,
            tax: s.tax,
            status: s.status,
            dunning: s.dunning,
            lifecycle: s.lifecycle,
            fiscalization: s.fiscalization,
            invoice_prefix: s.invoice_prefix,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

page_of!(StorefrontList, StorefrontView);

/// Creates a storefront (permission `catalog.write`).
#[utoipa::path(
    post, path = "/v1/storefronts", tag = "catalog", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreateStorefront,
    responses(
        (status = 201, body = StorefrontView),
        (status = 403, body = crate::Problem, content_type = PROBLEM),
        (status = 409, description = "`invoice_prefix_in_use`", body = crate::Problem, content_type = PROBLEM),
        (status = 422, description = "`unknown_currency`, `unknown_country`, `no_countries`, `unknown_language`, …", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn create(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    ApiJson(b): ApiJson<CreateStorefront>,
) -> Result<(StatusCode, Json<StorefrontView>), ApiError> {
    let s = catalog::create_storefront(
        &state.ctx,
        &scope,
        StorefrontInput {
            name: b.name,
            type_: b.type_,
            default_currency: b.default_currency,
            currencies: b.currencies,
            default_language: b.default_language,
            countries: b.countries,
            tax: b.tax,
            status: b.status,
            dunning: b.dunning,
            lifecycle: b.lifecycle,
            fiscalization: b.fiscalization,
            invoice_prefix: b.invoice_prefix,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(s.into())))
}

/// Storefronts of the environment (an API key restricted to storefronts sees only those).
#[utoipa::path(
    get, path = "/v1/storefronts", tag = "catalog", security(("bearer" = [])),
    params(PageParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = StorefrontList))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<StorefrontList>, ApiError> {
    let (rows, more) =
        catalog::list_storefronts(&state.ctx, &scope, super::limit(p.limit)?, p.starting_after.as_deref())
            .await?;
    Ok(Json(StorefrontList::new(rows.into_iter().map(Into::into).collect(), more)))
}

/// One storefront.
#[utoipa::path(
    get, path = "/v1/storefronts/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = StorefrontView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<StorefrontView>, ApiError> {
    Ok(Json(catalog::get_storefront(&state.ctx, &scope, &id).await?.into()))
}

/// Changes a storefront. Removing a currency that active prices use is `409 currency_in_use`.
#[utoipa::path(
    patch, path = "/v1/storefronts/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = UpdateStorefront,
    responses(
        (status = 200, body = StorefrontView),
        (status = 404, body = crate::Problem, content_type = PROBLEM),
        (status = 409, description = "`currency_in_use`, `invoice_prefix_in_use`", body = crate::Problem, content_type = PROBLEM),
        (status = 422, body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn update(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateStorefront>,
) -> Result<Json<StorefrontView>, ApiError> {
    let mut e = ValidationErrors::default();
    let patch = StorefrontPatch {
        name: e.check(b.name.required("name")).flatten(),
        type_: e.check(b.type_.required("type")).flatten(),
        default_currency: e.check(b.default_currency.required("default_currency")).flatten(),
        currencies: e.check(b.currencies.required("currencies")).flatten(),
        default_language: e.check(b.default_language.required("default_language")).flatten(),
        countries: e.check(b.countries.required("countries")).flatten(),
        tax: e.check(b.tax.required("tax")).flatten(),
        status: e.check(b.status.required("status")).flatten(),
        dunning: e.check(b.dunning.required("dunning")).flatten(),
        lifecycle: e.check(b.lifecycle.required("lifecycle")).flatten(),
        fiscalization: e.check(b.fiscalization.required("fiscalization")).flatten(),
        invoice_prefix: e.check(b.invoice_prefix.required("invoice_prefix")).flatten(),
    };
    e.finish().map_err(|e| ApiError::validation(e.0))?;
    Ok(Json(catalog::update_storefront(&state.ctx, &scope, &id, patch).await?.into()))
}

/// Deletes a storefront that nothing references (`409 storefront_in_use` names what does; set
/// it `inactive` instead).
#[utoipa::path(
    delete, path = "/v1/storefronts/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 204), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn delete(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    catalog::delete_storefront(&state.ctx, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Narrows a showcase.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowcaseParams {
    /// Only prices in this ISO 4217 currency.
    currency: Option<String>,
    /// Country of the viewer (ISO 3166-1 alpha-2): selects the tax rate of the displayed
    /// net/tax/gross; default the storefront's default rate.
    country: Option<String>,
}

/// The storefront as a showcase shows it.
#[derive(Serialize, ToSchema)]
pub struct ShowcaseStorefront {
    id: String,
    name: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    type_: StorefrontType,
    status: StorefrontStatus,
    default_currency: String,
    default_language: String,
    countries: Vec<String>,
}

/// A price as a showcase shows it: the version in effect now, with tax worked out.
#[derive(Serialize, ToSchema)]
pub struct ShowcasePrice {
    /// The price (pass it to offers and checkout).
    price_id: String,
    /// The version in effect now.
    version_id: String,
    version: i32,
    /// What the customer is charged per period (tax included when `tax_behaviour` is
    /// `inclusive`).
    amount: Money,
    tax_behaviour: azotte_domain::catalog::TaxKind,
    tax_rate_bp: u32,
    net: Money,
    tax: Money,
    gross: Money,
    billing_period: Option<PeriodView>,
    trial: Option<TrialView>,
}

/// A bundle as a showcase shows it.
#[derive(Serialize, ToSchema)]
pub struct ShowcaseBundle {
    id: String,
    key: String,
    name: String,
    description: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    type_: azotte_domain::catalog::BundleType,
    family: String,
    entitlements: Vec<EntitlementGrant>,
    prices: Vec<ShowcasePrice>,
}

/// What a showcase page needs.
#[derive(Serialize, ToSchema)]
pub struct Showcase {
    storefront: ShowcaseStorefront,
    bundles: Vec<ShowcaseBundle>,
}

/// The storefront's catalog: its active bundles with the prices in effect now and their
/// entitlements, by bundle key (permission `catalog.read`). An inactive storefront lists
/// nothing for sale.
#[utoipa::path(
    get, path = "/v1/storefronts/{id}/catalog", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ShowcaseParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = Showcase), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn showcase(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ShowcaseParams>,
) -> Result<Json<Showcase>, ApiError> {
    let c = catalog::storefront_catalog(&state.ctx, &scope, &id, q.currency.as_deref()).await?;
    let country = match q.country {
        Some(country) => {
            let code = azotte_domain::catalog::parse_country("country", &country)
                .map_err(|e| ApiError::validation(vec![e]))?;
            Some(code)
        }
        None => None,
    };
    let rate = c.storefront.tax.rate_for(country.as_deref());
    let s = c.storefront;
    Ok(Json(Showcase {
        storefront: ShowcaseStorefront {
            id: s.id,
            name: s.name,
            type_: s.type_,
            status: s.status,
            default_currency: s.default_currency.to_string(),
            default_language: s.default_language,
            countries: s.countries,
        },
        bundles: c
            .items
            .into_iter()
            .map(|item| {
                let b = item.bundle.bundle;
                ShowcaseBundle {
                    id: b.id,
                    key: b.key,
                    name: b.name,
                    description: b.description,
                    type_: b.type_,
                    family: b.family,
                    entitlements: item
                        .bundle
                        .entitlements
                        .into_iter()
                        .map(|(e, quantity)| EntitlementGrant {
                            key: e.key,
                            name: e.name,
                            kind: e.kind,
                            quantity: if e.kind == EntitlementKind::Quantity { quantity } else { None },
                            unit: e.unit,
                        })
                        .collect(),
                    prices: item
                        .prices
                        .into_iter()
                        .map(|(p, v)| {
                            let (net, tax, gross) =
                                azotte_domain::catalog::tax_split(v.amount, v.tax_behaviour, rate);
                            ShowcasePrice {
                                price_id: p.id,
                                version_id: v.id,
                                version: v.version,
                                amount: Money::new(v.amount, p.currency.clone()),
                                tax_behaviour: v.tax_behaviour,
                                tax_rate_bp: rate,
                                net: Money::new(net, p.currency.clone()),
                                tax: Money::new(tax, p.currency.clone()),
                                gross: Money::new(gross, p.currency.clone()),
                                billing_period: p.billing_period.map(Into::into),
                                trial: v.trial.map(Into::into),
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }))
}
