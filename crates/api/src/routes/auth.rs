//! Sessions: bootstrap exchange, login, refresh, logout, who am I, TOTP MFA, and the JWKS.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::{Principal, Secret};
use azotte_service::auth::{self, LoginRequest as ServiceLogin, Tokens};
use azotte_service::mfa;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{ApiJson, ClientIp, PlatformAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(bootstrap))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(totp_start))
        .routes(routes!(totp_confirm))
        .routes(routes!(mfa_verify))
        .routes(routes!(jwks))
}

/// Exchange of the one-time bootstrap secret for real credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    /// The secret `azotte serve` or `azotte init` printed on first start.
    bootstrap_secret: String,
    /// The administrator's email, used to log in from now on.
    email: String,
    /// At least 12 characters, not a common password.
    password: String,
}

/// Password login, for the platform (no `tenant`) or for one tenant.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    password: String,
    /// Tenant id or slug to log into; a session is for one tenant or for the platform.
    #[serde(default)]
    tenant: Option<String>,
    /// Six-digit TOTP code, required when the account has MFA enabled.
    #[serde(default)]
    totp_code: Option<String>,
    /// A recovery code, instead of a TOTP code.
    #[serde(default)]
    recovery_code: Option<String>,
}

/// A refresh token to spend.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// A TOTP code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    code: String,
}

/// A session's tokens. Shown only in this answer.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// EdDSA JWT, valid 15 minutes; send as `Authorization: Bearer <access_token>`.
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// When the access token expires.
    expires_at: DateTime<Utc>,
    /// Opaque, single use: spend it at `/v1/auth/refresh` for new tokens.
    refresh_token: String,
    user_id: String,
    /// The tenant of a tenant session.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
}

impl From<Tokens> for TokenResponse {
    fn from(t: Tokens) -> Self {
        Self {
            access_token: t.access_token.expose().clone(),
            token_type: "Bearer",
            expires_at: t.expires_at,
            refresh_token: t.refresh_token.expose().clone(),
            user_id: t.user_id.to_string(),
            tenant_id: t.tenant_id,
        }
    }
}

/// A started TOTP enrolment.
#[derive(Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// Base32 secret, for manual entry.
    secret: String,
    /// `otpauth://` URI, for a QR code.
    otpauth_uri: String,
}

/// Recovery codes, shown only now.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// JSON Web Key Set.
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    #[schema(value_type = Vec<Object>)]
    keys: Vec<serde_json::Value>,
}

const PROBLEM: &str = "application/problem+json";

/// Sets the first administrator's email and password with the bootstrap secret, once.
#[utoipa::path(
    post,
    path = "/v1/auth/bootstrap",
    tag = "auth",
    request_body = BootstrapRequest,
    responses(
        (status = 201, body = TokenResponse),
        (status = 401, description = "Unknown or already used bootstrap secret", body = crate::Problem, content_type = PROBLEM),
        (status = 422, body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn bootstrap(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<BootstrapRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let t = auth::exchange_bootstrap(
        &state.ctx,
        Secret::new(req.bootstrap_secret),
        &req.email,
        Secret::new(req.password),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// Logs in with email and password (and a TOTP code when MFA is enabled).
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "`invalid_credentials` or `mfa_required`", body = crate::Problem, content_type = PROBLEM),
        (status = 403, description = "`not_a_member` or `tenant_suspended`", body = crate::Problem, content_type = PROBLEM),
        (status = 429, description = "Throttled after repeated failures; see Retry-After", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let t = auth::login(
        &state.ctx,
        ServiceLogin {
            email: req.email,
            password: Secret::new(req.password),
            tenant: req.tenant,
            totp_code: req.totp_code,
            recovery_code: req.recovery_code.map(Secret::new),
            client_ip: ip,
        },
    )
    .await?;
    Ok(Json(t.into()))
}

/// Spends a refresh token for new tokens. A reused refresh token revokes the whole session.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "`unauthenticated` or `refresh_token_reused`", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    Ok(Json(auth::refresh(&state.ctx, &req.refresh_token).await?.into()))
}

/// Ends the current session (its access and refresh tokens stop working).
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = crate::Problem, content_type = PROBLEM))
)]
async fn logout(
    State(state): State<AppState>,
    PlatformAuth(scope): PlatformAuth,
) -> Result<StatusCode, ApiError> {
    if let azotte_store::Credential::Session { family_id, .. } = scope.credential() {
        auth::logout(&state.ctx, scope.principal(), *family_id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The authenticated user.
#[utoipa::path(
    get,
    path = "/v1/auth/me",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = Principal), (status = 401, body = crate::Problem, content_type = PROBLEM))
)]
async fn me(PlatformAuth(scope): PlatformAuth) -> Json<Principal> {
    Json(scope.principal().clone())
}

/// Starts TOTP enrolment: returns the secret and an `otpauth://` URI for a QR code.
#[utoipa::path(
    post,
    path = "/v1/auth/mfa/totp",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = TotpEnrolment), (status = 409, description = "Already enabled", body = crate::Problem, content_type = PROBLEM))
)]
async fn totp_start(
    State(state): State<AppState>,
    PlatformAuth(scope): PlatformAuth,
) -> Result<Json<TotpEnrolment>, ApiError> {
    let e = mfa::start_enrolment(&state.ctx, &scope).await?;
    Ok(Json(TotpEnrolment {
        secret: e.secret_base32.expose().clone(),
        otpauth_uri: e.otpauth_uri.expose().clone(),
    }))
}

/// Confirms TOTP enrolment with a first code; returns ten one-time recovery codes.
#[utoipa::path(
    post,
    path = "/v1/auth/mfa/totp/confirm",
    tag = "auth",
    security(("bearer" = [])),
    request_body = CodeRequest,
    responses((status = 200, body = RecoveryCodes), (status = 401, description = "`invalid_mfa_code`", body = crate::Problem, content_type = PROBLEM))
)]
async fn totp_confirm(
    State(state): State<AppState>,
    PlatformAuth(scope): PlatformAuth,
    ApiJson(req): ApiJson<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let codes = mfa::confirm_enrolment(&state.ctx, &scope, &req.code).await?;
    Ok(Json(RecoveryCodes { recovery_codes: codes.into_iter().map(|c| c.expose().clone()).collect() }))
}

/// Step-up: proves MFA again in this session (key management needs it within 10 minutes).
#[utoipa::path(
    post,
    path = "/v1/auth/mfa/verify",
    tag = "auth",
    security(("bearer" = [])),
    request_body = CodeRequest,
    responses((status = 204), (status = 401, description = "`invalid_mfa_code`", body = crate::Problem, content_type = PROBLEM))
)]
async fn mfa_verify(
    State(state): State<AppState>,
    PlatformAuth(scope): PlatformAuth,
    ApiJson(req): ApiJson<CodeRequest>,
) -> Result<StatusCode, ApiError> {
    mfa::verify_session(&state.ctx, &scope, &req.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, body = Jwks)))]
async fn jwks(State(state): State<AppState>) -> Json<Jwks> {
    Json(Jwks { keys: auth::jwks(&state.ctx) })
}
