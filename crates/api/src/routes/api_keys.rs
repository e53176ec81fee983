//! `/v1/api-keys`: machine credentials of one tenant environment.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_service::api_keys::{self, IssuedKey, KeyRequest};
use azotte_store::api_keys::ApiKey;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{ApiJson, KeyManager, TenantAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one))
        .routes(routes!(rotate))
        .routes(routes!(revoke))
        .routes(routes!(timeline))
}

/// A key to create. Give a `role`, explicit `permissions`, or both (their union); a key never
/// holds more than its creator, and never `api_key.manage`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    description: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    /// Restrict the key to these storefronts (empty: all).
    #[serde(default)]
    storefront_ids: Vec<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

/// Rotation parameters.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old secret keeps working, 0 to 86400 seconds (default 0).
    #[serde(default)]
    overlap_seconds: i64,
}

/// An API key (never its secret, except once at creation and rotation).
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    id: String,
    /// The public part of the key, as it appears in the key itself.
    key_id: String,
    environment: azotte_domain::tenant::Environment,
    description: String,
    role: Option<String>,
    permissions: Vec<String>,
    storefront_ids: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    /// Until then the secret before the last rotation still works.
    previous_secret_valid_until: Option<DateTime<Utc>>,
    created_by: String,
    created_at: DateTime<Utc>,
    /// The full key: present only in the answer that created or rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl KeyView {
    fn new(k: ApiKey, secret: Option<String>) -> Self {
        Self {
            id: k.id,
            key_id: k.key_id,
            environment: k.environment,
            description: k.description,
            role: k.role,
            permissions: k.permissions,
            storefront_ids: k.storefront_ids,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
            previous_secret_valid_until: k.previous_valid_until,
            created_by: k.created_by,
            created_at: k.created_at,
            secret,
        }
    }
}

impl From<IssuedKey> for KeyView {
    fn from(i: IssuedKey) -> Self {
        KeyView::new(i.key, Some(i.secret.expose().clone()))
    }
}

/// A list of keys.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    data: Vec<KeyView>,
}

const PROBLEM: &str = "application/problem+json";

/// Creates a key in the environment named by `x-env` (needs MFA within 10 minutes).
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api_keys", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    request_body = CreateKey,
    responses(
        (status = 201, body = KeyView),
        (status = 403, description = "`mfa_required`, `key_management_requires_user`, `permission_denied`, `permission_escalation`", body = crate::Problem, content_type = PROBLEM),
        (status = 422, body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn create(
    State(state): State<AppState>,
    KeyManager(scope): KeyManager,
    ApiJson(b): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let issued = api_keys::create(
        &state.ctx,
        &scope,
        KeyRequest {
            description: b.description,
            role: b.role,
            permissions: b.permissions,
            storefront_ids: b.storefront_ids,
            expires_at: b.expires_at,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued.into())))
}

/// Keys of the environment.
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api_keys", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = KeyList))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<KeyList>, ApiError> {
    let keys = api_keys::list(&state.ctx, &scope).await?;
    Ok(Json(KeyList { data: keys.into_iter().map(|k| KeyView::new(k, None)).collect() }))
}

/// One key.
#[utoipa::path(
    get, path = "/v1/api-keys/{id}", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = KeyView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(KeyView::new(api_keys::get(&state.ctx, &scope, &id).await?, None)))
}

/// Gives a key a new secret; the old one keeps working for `overlap_seconds`.
#[utoipa::path(
    post, path = "/v1/api-keys/{id}/rotate", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    request_body = RotateKey,
    responses((status = 200, body = KeyView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn rotate(
    State(state): State<AppState>,
    KeyManager(scope): KeyManager,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<RotateKey>,
) -> Result<Json<KeyView>, ApiError> {
    let issued =
        api_keys::rotate(&state.ctx, &scope, &id, chrono::Duration::seconds(b.overlap_seconds)).await?;
    Ok(Json(issued.into()))
}

/// Revokes a key at once.
#[utoipa::path(
    post, path = "/v1/api-keys/{id}/revoke", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = KeyView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn revoke(
    State(state): State<AppState>,
    KeyManager(scope): KeyManager,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(KeyView::new(api_keys::revoke(&state.ctx, &scope, &id).await?, None)))
}

/// The key's timeline: every journal entry about it, oldest first (permission `audit.read`).
#[utoipa::path(
    get, path = "/v1/api-keys/{id}/timeline", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = super::journal::EntryList), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn timeline(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<super::journal::EntryList>, ApiError> {
    api_keys::get(&state.ctx, &scope, &id).await?;
    let entries = azotte_service::journal::timeline(&state.ctx, &scope, "api_key", &id).await?;
    Ok(Json(super::journal::EntryList::timeline(entries)))
}
