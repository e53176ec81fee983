//! Platform sessions: bootstrap exchange, login, logout, who am I.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::{Principal, Secret};
use azotte_service::auth::{self, IssuedSession};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{ApiJson, BearerToken, PlatformAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(bootstrap))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// Exchange of the one-time bootstrap secret for real credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    /// The secret `azotte serve` or `azotte init` printed on first start.
    bootstrap_secret: String,
    /// The administrator's email, used to log in from now on.
    email: String,
    /// At least 12 characters.
    password: String,
}

/// Password login.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    password: String,
}

/// A new session. The token is shown only here.
#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    /// Send as `Authorization: Bearer <token>`.
    token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    expires_at: DateTime<Utc>,
    user_id: String,
}

impl From<IssuedSession> for SessionResponse {
    fn from(s: IssuedSession) -> Self {
        Self {
            token: s.token.expose().clone(),
            token_type: "Bearer",
            expires_at: s.expires_at,
            user_id: s.user_id,
        }
    }
}

/// Sets the first administrator's email and password with the bootstrap secret, once.
#[utoipa::path(
    post,
    path = "/v1/auth/bootstrap",
    tag = "auth",
    request_body = BootstrapRequest,
    responses(
        (status = 201, body = SessionResponse),
        (status = 401, description = "Unknown or already used bootstrap secret", body = crate::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::Problem, content_type = "application/problem+json")
    )
)]
async fn bootstrap(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<BootstrapRequest>,
) -> Result<(StatusCode, Json<SessionResponse>), ApiError> {
    let session = auth::exchange_bootstrap(
        &state.ctx,
        Secret::new(req.bootstrap_secret),
        &req.email,
        Secret::new(req.password),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(session.into())))
}

/// Logs in with email and password.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = SessionResponse),
        (status = 401, body = crate::Problem, content_type = "application/problem+json")
    )
)]
async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let session =
        auth::login(&state.ctx, &req.email, Secret::new(req.password)).await.map_err(|e| match e {
            azotte_service::ServiceError::Unauthenticated => {
                ApiError::unauthenticated("invalid_credentials", "the email or password is wrong")
            }
            other => other.into(),
        })?;
    Ok(Json(session.into()))
}

/// Ends the current session.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = crate::Problem, content_type = "application/problem+json"))
)]
async fn logout(
    State(state): State<AppState>,
    _auth: PlatformAuth,
    BearerToken(token): BearerToken,
) -> Result<StatusCode, ApiError> {
    auth::logout(&state.ctx, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The authenticated principal.
#[utoipa::path(
    get,
    path = "/v1/auth/me",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = Principal), (status = 401, body = crate::Problem, content_type = "application/problem+json"))
)]
async fn me(PlatformAuth(scope): PlatformAuth) -> Json<Principal> {
    Json(scope.principal().clone())
}
