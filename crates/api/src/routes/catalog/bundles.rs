//! `/v1/bundles`: what is sold, as a set of entitlements.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::catalog::{BundleStatus, BundleType, EntitlementKind};
use azotte_domain::ValidationErrors;
use azotte_service::catalog::{self, BundleInput, BundleItem, BundlePatch, BundleView as Resolved};
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
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(get_one, update, delete))
}

/// An entitlement in a bundle, by key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleItemInput {
    key: String,
    /// How many, for a `quantity` entitlement; absent for `boolean`.
    #[serde(default)]
    quantity: Option<i64>,
}

/// A bundle to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBundle {
    /// Stable key, unique in the environment.
    key: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    type_: BundleType,
    /// Bundle family for trial limits and upgrade paths (default: the key).
    #[serde(default)]
    family: Option<String>,
    /// `draft` (default) or `active`.
    #[serde(default)]
    status: Option<BundleStatus>,
    #[serde(default)]
    entitlements: Vec<BundleItemInput>,
}

/// Changes to a bundle. `status` moves draft → active → archived (an archived bundle is no
/// longer sold; existing subscriptions continue) and never back.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBundle {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    name: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    family: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<BundleStatus>)]
    status: Patch<BundleStatus>,
    /// Replaces the bundle's entitlements.
    #[serde(default)]
    #[schema(value_type = Option<Vec<BundleItemInput>>)]
    entitlements: Patch<Vec<BundleItemInput>>,
}

/// An entitlement a bundle grants.
#[derive(Serialize, ToSchema)]
pub struct EntitlementGrant {
    pub key: String,
    pub name: String,
    pub kind: EntitlementKind,
    pub quantity: Option<i64>,
    pub unit: Option<String>,
}

/// A bundle.
#[derive(Serialize, ToSchema)]
pub struct BundleView {
    pub id: String,
    key: String,
    name: String,
    description: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    type_: BundleType,
    family: String,
    status: BundleStatus,
    entitlements: Vec<EntitlementGrant>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Resolved> for BundleView {
    fn from(v: Resolved) -> Self {
        let b = v.bundle;
        BundleView {
            id: b.id,
            key: b.key,
            name: b.name,
            description: b.description,
            type_: b.type_,
            family: b.family,
            status: b.status,
            entitlements: v
                .entitlements
                .into_iter()
                .map(|(e, quantity)| EntitlementGrant {
                    key: e.key,
                    name: e.name,
                    kind: e.kind,
                    quantity,
                    unit: e.unit,
                })
                .collect(),
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
}

page_of!(BundleList, BundleView);

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BundleParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    starting_after: Option<String>,
    status: Option<BundleStatus>,
}

fn items(v: Vec<BundleItemInput>) -> Vec<BundleItem> {
    v.into_iter().map(|i| BundleItem { key: i.key, quantity: i.quantity }).collect()
}

/// Creates a bundle (permission `catalog.write`).
#[utoipa::path(
    post, path = "/v1/bundles", tag = "catalog", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreateBundle,
    responses(
        (status = 201, body = BundleView),
        (status = 409, description = "`bundle_key_taken`", body = crate::Problem, content_type = PROBLEM),
        (status = 422, description = "`unknown_entitlement`, `duplicate_entitlement`, …", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn create(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    ApiJson(b): ApiJson<CreateBundle>,
) -> Result<(StatusCode, Json<BundleView>), ApiError> {
    let v = catalog::create_bundle(
        &state.ctx,
        &scope,
        BundleInput {
            key: b.key,
            name: b.name,
            description: b.description,
            type_: b.type_,
            family: b.family,
            status: b.status,
            entitlements: items(b.entitlements),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v.into())))
}

/// Bundles of the environment.
#[utoipa::path(
    get, path = "/v1/bundles", tag = "catalog", security(("bearer" = [])),
    params(BundleParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = BundleList))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<BundleParams>,
) -> Result<Json<BundleList>, ApiError> {
    let limit = super::limit(p.limit)?;
    let (rows, more) =
        catalog::list_bundles(&state.ctx, &scope, limit, p.starting_after.as_deref(), p.status).await?;
    Ok(Json(BundleList::new(rows.into_iter().map(Into::into).collect(), more)))
}

/// One bundle.
#[utoipa::path(
    get, path = "/v1/bundles/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = BundleView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<BundleView>, ApiError> {
    Ok(Json(catalog::get_bundle(&state.ctx, &scope, &id).await?.into()))
}

/// Changes a bundle (`409 bundle_archived`, `409 invalid_status_transition`).
#[utoipa::path(
    patch, path = "/v1/bundles/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = UpdateBundle,
    responses((status = 200, body = BundleView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn update(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateBundle>,
) -> Result<Json<BundleView>, ApiError> {
    let mut e = ValidationErrors::default();
    let patch = BundlePatch {
        name: e.check(b.name.required("name")).flatten(),
        // Null clears the description.
        description: match b.description {
            Patch::Absent => None,
            Patch::Null => Some(String::new()),
            Patch::Value(d) => Some(d),
        },
        family: e.check(b.family.required("family")).flatten(),
        status: e.check(b.status.required("status")).flatten(),
        entitlements: e.check(b.entitlements.required("entitlements")).flatten().map(items),
    };
    e.finish().map_err(|e| ApiError::validation(e.0))?;
    Ok(Json(catalog::update_bundle(&state.ctx, &scope, &id, patch).await?.into()))
}

/// Deletes a draft bundle without prices (`409 bundle_not_draft`, `409 bundle_in_use`).
#[utoipa::path(
    delete, path = "/v1/bundles/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 204), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn delete(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    catalog::delete_bundle(&state.ctx, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
