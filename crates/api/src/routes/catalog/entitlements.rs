//! `/v1/entitlements`: what customers receive, decoupled from price.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::catalog::{ActiveStatus, EntitlementKind};
use azotte_domain::ValidationErrors;
use azotte_service::catalog::{self, EntitlementInput, EntitlementPatch};
use azotte_store::catalog::Entitlement;
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

/// An entitlement to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEntitlement {
    /// Stable key, unique in the environment: `a-z`, `0-9`, `_` (e.g. `premium_video`).
    key: String,
    name: String,
    kind: EntitlementKind,
    /// The unit of a `quantity` entitlement (`seats`, `GB`); none for `boolean`.
    #[serde(default)]
    unit: Option<String>,
    /// Keys of entitlements this one implies (no cycles).
    #[serde(default)]
    includes: Vec<String>,
}

/// Changes to an entitlement (key and kind are fixed).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEntitlement {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    name: Patch<String>,
    /// `null` clears it (only valid for a boolean entitlement).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    unit: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    includes: Patch<Vec<String>>,
    /// `archived` keeps it on existing bundles but it cannot be added to bundles.
    #[serde(default)]
    #[schema(value_type = Option<ActiveStatus>)]
    status: Patch<ActiveStatus>,
}

/// An entitlement.
#[derive(Serialize, ToSchema)]
pub struct EntitlementView {
    pub id: String,
    key: String,
    name: String,
    kind: EntitlementKind,
    unit: Option<String>,
    includes: Vec<String>,
    status: ActiveStatus,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Entitlement> for EntitlementView {
    fn from(e: Entitlement) -> Self {
        EntitlementView {
            id: e.id,
            key: e.key,
            name: e.name,
            kind: e.kind,
            unit: e.unit,
            includes: e.includes,
            status: e.status,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

page_of!(EntitlementList, EntitlementView);

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntitlementParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    starting_after: Option<String>,
    status: Option<ActiveStatus>,
}

/// Creates an entitlement (permission `catalog.write`); a taken key is `409 entitlement_key_taken`.
#[utoipa::path(
    post, path = "/v1/entitlements", tag = "catalog", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreateEntitlement,
    responses(
        (status = 201, body = EntitlementView),
        (status = 409, body = crate::Problem, content_type = PROBLEM),
        (status = 422, description = "`invalid_key`, `unknown_entitlement`, `cyclic_entitlements`, …", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn create(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    ApiJson(b): ApiJson<CreateEntitlement>,
) -> Result<(StatusCode, Json<EntitlementView>), ApiError> {
    let e = catalog::create_entitlement(
        &state.ctx,
        &scope,
        EntitlementInput { key: b.key, name: b.name, kind: b.kind, unit: b.unit, includes: b.includes },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(e.into())))
}

/// Entitlements of the environment.
#[utoipa::path(
    get, path = "/v1/entitlements", tag = "catalog", security(("bearer" = [])),
    params(EntitlementParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = EntitlementList))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<EntitlementParams>,
) -> Result<Json<EntitlementList>, ApiError> {
    let limit = super::limit(p.limit)?;
    let (rows, more) =
        catalog::list_entitlements(&state.ctx, &scope, limit, p.starting_after.as_deref(), p.status).await?;
    Ok(Json(EntitlementList::new(rows.into_iter().map(Into::into).collect(), more)))
}

/// One entitlement.
#[utoipa::path(
    get, path = "/v1/entitlements/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = EntitlementView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<EntitlementView>, ApiError> {
    Ok(Json(catalog::get_entitlement(&state.ctx, &scope, &id).await?.into()))
}

/// Changes an entitlement.
#[utoipa::path(
    patch, path = "/v1/entitlements/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = UpdateEntitlement,
    responses((status = 200, body = EntitlementView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn update(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateEntitlement>,
) -> Result<Json<EntitlementView>, ApiError> {
    let mut e = ValidationErrors::default();
    let patch = EntitlementPatch {
        name: e.check(b.name.required("name")).flatten(),
        unit: match b.unit {
            Patch::Absent => None,
            Patch::Null => Some(None),
            Patch::Value(u) => Some(Some(u)),
        },
        includes: e.check(b.includes.required("includes")).flatten(),
        status: e.check(b.status.required("status")).flatten(),
    };
    e.finish().map_err(|e| ApiError::validation(e.0))?;
    Ok(Json(catalog::update_entitlement(&state.ctx, &scope, &id, patch).await?.into()))
}

/// Deletes an entitlement that no bundle uses and no entitlement includes
/// (`409 entitlement_in_use`; archive it instead).
#[utoipa::path(
    delete, path = "/v1/entitlements/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 204), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn delete(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CatalogWrite>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    catalog::delete_entitlement(&state.ctx, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
