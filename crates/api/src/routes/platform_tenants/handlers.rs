//! Handlers of the tenant administration routes.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::Json;
use azotte_domain::id::TenantId;
use azotte_domain::pagination::Limit;
use azotte_domain::{FieldError, ValidationErrors};
use azotte_service::tenants::{self, NewTenant, TenantChanges};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::{CreateTenant, ListParams, TenantList, TenantView, UpdateTenant};
use crate::error::ApiError;
use crate::extract::{need, ApiJson, ApiQuery, PlatformAllowed, PlatformAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(get_one, update))
}

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    // Ids are opaque: a malformed one names no tenant, exactly like an unknown one.
    raw.parse().map_err(|_| ApiError::not_found("tenant"))
}

/// Creates a tenant with its development, staging and production environments.
#[utoipa::path(
    post,
    path = "/v1/platform/tenants",
    tag = "platform",
    security(("bearer" = [])),
    request_body = CreateTenant,
    responses(
        (status = 201, body = TenantView),
        (status = 409, description = "Slug taken", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::Problem, content_type = "application/problem+json")
    )
)]
async fn create(
    State(state): State<AppState>,
    PlatformAllowed(scope, _): PlatformAllowed<need::PlatformTenantWrite>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, [(header::HeaderName, HeaderValue); 1], Json<TenantView>), ApiError> {
    let (tenant, envs) =
        tenants::create(&state.ctx, &scope, NewTenant { slug: body.slug, name: body.name }).await?;
    let location = HeaderValue::from_str(&format!("/v1/platform/tenants/{}", tenant.id))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()))?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(TenantView::new(tenant, Some(envs)))))
}

/// Lists tenants, oldest first.
#[utoipa::path(
    get,
    path = "/v1/platform/tenants",
    tag = "platform",
    security(("bearer" = [])),
    params(ListParams),
    responses((status = 200, body = TenantList), (status = 422, body = crate::Problem, content_type = "application/problem+json"))
)]
async fn list(
    State(state): State<AppState>,
    PlatformAuth(scope): PlatformAuth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<TenantList>, ApiError> {
    let mut errors = ValidationErrors::default();
    let limit = errors.check(Limit::parse(params.limit));
    let after = params
        .starting_after
        .as_deref()
        .map(|s| {
            s.parse::<TenantId>()
                .map_err(|_| FieldError::new("starting_after", "invalid_cursor", "is not a tenant id"))
        })
        .transpose();
    let after = errors.check(after);
    errors.finish().map_err(|e| ApiError::validation(e.0))?;
    let page = tenants::list(&state.ctx, &scope, limit.unwrap_or_default(), after.flatten()).await?;
    let next_cursor = if page.has_more { page.items.last().map(|t| t.id) } else { None };
    Ok(Json(TenantList {
        data: page.items.into_iter().map(|t| TenantView::new(t, None)).collect(),
        has_more: page.has_more,
        next_cursor,
    }))
}

/// One tenant with its environments.
#[utoipa::path(
    get,
    path = "/v1/platform/tenants/{id}",
    tag = "platform",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Tenant id (`ten_…`)")),
    responses((status = 200, body = TenantView), (status = 404, body = crate::Problem, content_type = "application/problem+json"))
)]
async fn get_one(
    State(state): State<AppState>,
    PlatformAuth(scope): PlatformAuth,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let (tenant, envs) = tenants::get(&state.ctx, &scope, tenant_id(&id)?).await?;
    Ok(Json(TenantView::new(tenant, Some(envs))))
}

/// Renames, suspends or reactivates a tenant.
#[utoipa::path(
    patch,
    path = "/v1/platform/tenants/{id}",
    tag = "platform",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Tenant id (`ten_…`)")),
    request_body = UpdateTenant,
    responses(
        (status = 200, body = TenantView),
        (status = 404, body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::Problem, content_type = "application/problem+json")
    )
)]
async fn update(
    State(state): State<AppState>,
    PlatformAllowed(scope, _): PlatformAllowed<need::PlatformTenantWrite>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> Result<Json<TenantView>, ApiError> {
    let id = tenant_id(&id)?;
    let mut errors = ValidationErrors::default();
    let name = errors.check(body.name.required("name")).flatten();
    let status = errors.check(body.status.required("status")).flatten();
    errors.finish().map_err(|e| ApiError::validation(e.0))?;
    let (tenant, envs) = tenants::update(&state.ctx, &scope, id, TenantChanges { name, status }).await?;
    Ok(Json(TenantView::new(tenant, Some(envs))))
}
