//! `/v1/tenant`: the tenant and environment the request acts in.

use axum::extract::State;
use axum::Json;
use azotte_domain::id::TenantId;
use azotte_domain::tenant::{Environment, Mode, TenantStatus};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::TenantAuth;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(current))
}

/// The tenant and environment of the request.
#[derive(Serialize, ToSchema)]
pub struct CurrentTenant {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    pub environment: Environment,
    pub mode: Mode,
}

/// Reads the tenant named by `x-tn` in the environment named by `x-env`.
#[utoipa::path(
    get,
    path = "/v1/tenant",
    tag = "tenant",
    security(("bearer" = [])),
    params(
        ("x-tn" = String, Header, description = "Tenant id or slug"),
        ("x-env" = Environment, Header, description = "Environment")
    ),
    responses(
        (status = 200, body = CurrentTenant),
        (status = 400, description = "x-tn or x-env missing or invalid", body = crate::Problem, content_type = "application/problem+json"),
        (status = 401, body = crate::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Tenant suspended", body = crate::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::Problem, content_type = "application/problem+json")
    )
)]
async fn current(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<CurrentTenant>, ApiError> {
    let (tenant, env) = azotte_service::tenants::current(&state.ctx, &scope).await?;
    Ok(Json(CurrentTenant {
        id: tenant.id,
        slug: tenant.slug,
        name: tenant.name,
        status: tenant.status,
        environment: env.environment,
        mode: env.mode,
    }))
}
