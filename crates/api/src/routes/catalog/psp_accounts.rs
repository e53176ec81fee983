//! `/v1/storefronts/{storefront_id}/psp-accounts`: a storefront's own PSP accounts, with
//! write-only credentials.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::tenant::Mode;
use azotte_domain::{Secret, ValidationErrors};
use azotte_service::psp_accounts::{self, AccountInput, AccountPatch, CredentialsInput};
use azotte_store::psp_accounts::PspAccount;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::PROBLEM;
use crate::error::ApiError;
use crate::extract::{need, Allowed, ApiJson, Patch, TenantAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, update, delete))
        .routes(routes!(check))
}

/// Secrets of an account. Write-only: never returned.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsBody {
    /// The PSP's secret API key (Stripe: `sk_test_…`/`sk_live_…` or a restricted `rk_…` key).
    #[serde(default)]
    api_secret: Option<String>,
    /// The webhook signing secret (Stripe: `whsec_…`).
    #[serde(default)]
    webhook_secret: Option<String>,
}

impl From<CredentialsBody> for CredentialsInput {
    fn from(c: CredentialsBody) -> Self {
        CredentialsInput {
            api_secret: c.api_secret.map(Secret::new),
            webhook_secret: c.webhook_secret.map(Secret::new),
        }
    }
}

/// An account to add to the storefront.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// `sandbox` (test environments only) or `stripe`.
    connector: String,
    display_name: String,
    /// Must be the environment's mode: `test` in development and staging, `live` in production.
    mode: Mode,
    /// Required for Stripe; the sandbox needs none.
    #[serde(default)]
    credentials: Option<CredentialsBody>,
    /// Lower is tried first (default 100).
    #[serde(default)]
    priority: Option<i32>,
    /// Share among accounts of the same priority (default 100).
    #[serde(default)]
    weight: Option<i32>,
    /// Currencies it serves, among the storefront's (default: all of them).
    #[serde(default)]
    currencies: Option<Vec<String>>,
    /// Payment channels it serves (default `card`).
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// Default true.
    #[serde(default)]
    active: Option<bool>,
}

/// Changes to an account. `credentials` replaces both secrets.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    display_name: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<CredentialsBody>)]
    credentials: Patch<CredentialsBody>,
    #[serde(default)]
    #[schema(value_type = Option<i32>)]
    priority: Patch<i32>,
    #[serde(default)]
    #[schema(value_type = Option<i32>)]
    weight: Patch<i32>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    currencies: Patch<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    channels: Patch<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    active: Patch<bool>,
}

/// What can be shown of a secret.
#[derive(Serialize, ToSchema)]
pub struct SecretHint {
    /// First 16 hex digits of its SHA-256: compare with what you configured.
    fingerprint: String,
    last4: String,
}

/// What can be shown of an account's credentials.
#[derive(Serialize, ToSchema)]
pub struct CredentialsView {
    api_secret: Option<SecretHint>,
    webhook_secret: Option<SecretHint>,
}

/// A PSP account.
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    id: String,
    storefront_id: String,
    connector: String,
    display_name: String,
    mode: String,
    credentials: CredentialsView,
    priority: i32,
    weight: i32,
    currencies: Vec<String>,
    channels: Vec<String>,
    /// `active` or `inactive`.
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn hint(f: Option<String>, l: Option<String>) -> Option<SecretHint> {
    Some(SecretHint { fingerprint: f?, last4: l? })
}

impl From<PspAccount> for AccountView {
    fn from(a: PspAccount) -> Self {
        AccountView {
            credentials: CredentialsView {
                api_secret: hint(a.api_secret_fingerprint, a.api_secret_last4),
                webhook_secret: hint(a.webhook_secret_fingerprint, a.webhook_secret_last4),
            },
            id: a.id,
            storefront_id: a.storefront_id,
            connector: a.connector,
            display_name: a.display_name,
            mode: a.mode,
            priority: a.priority,
            weight: a.weight,
            currencies: a.currencies,
            channels: a.channels,
            status: a.status,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// The accounts of a storefront.
#[derive(Serialize, ToSchema)]
pub struct AccountList {
    data: Vec<AccountView>,
}

/// Result of a credentials check.
#[derive(Serialize, ToSchema)]
pub struct CheckResult {
    /// `decrypted`.
    credentials: String,
    api_secret_present: bool,
    webhook_secret_present: bool,
}

/// Adds a PSP account to the storefront (permission `psp.manage`).
#[utoipa::path(
    post, path = "/v1/storefronts/{storefront_id}/psp-accounts", tag = "catalog", security(("bearer" = [])),
    params(("storefront_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CreateAccount,
    responses(
        (status = 201, body = AccountView),
        (status = 404, body = crate::Problem, content_type = PROBLEM),
        (status = 422, description = "`sandbox_in_live_environment`, `live_account_in_test_environment`, `invalid_secret`, `currency_not_served`, …", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn create(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::PspManage>,
    Path(storefront_id): Path<String>,
    ApiJson(b): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let a = psp_accounts::create(
        &state.ctx,
        &scope,
        &storefront_id,
        AccountInput {
            connector: b.connector,
            display_name: b.display_name,
            mode: b.mode,
            credentials: b.credentials.map(Into::into).unwrap_or_default(),
            priority: b.priority,
            weight: b.weight,
            currencies: b.currencies,
            channels: b.channels,
            active: b.active,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(a.into())))
}

/// The storefront's accounts, by priority.
#[utoipa::path(
    get, path = "/v1/storefronts/{storefront_id}/psp-accounts", tag = "catalog", security(("bearer" = [])),
    params(("storefront_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = AccountList), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(storefront_id): Path<String>,
) -> Result<Json<AccountList>, ApiError> {
    let a = psp_accounts::list(&state.ctx, &scope, &storefront_id).await?;
    Ok(Json(AccountList { data: a.into_iter().map(Into::into).collect() }))
}

/// One account (credentials shown as fingerprint and last four characters only).
#[utoipa::path(
    get, path = "/v1/storefronts/{storefront_id}/psp-accounts/{id}", tag = "catalog", security(("bearer" = [])),
    params(("storefront_id" = String, Path), ("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = AccountView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path((storefront_id, id)): Path<(String, String)>,
) -> Result<Json<AccountView>, ApiError> {
    Ok(Json(psp_accounts::get(&state.ctx, &scope, &storefront_id, &id).await?.into()))
}

/// Changes an account; `credentials` replaces both secrets (permission `psp.manage`).
#[utoipa::path(
    patch, path = "/v1/storefronts/{storefront_id}/psp-accounts/{id}", tag = "catalog", security(("bearer" = [])),
    params(("storefront_id" = String, Path), ("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = UpdateAccount,
    responses((status = 200, body = AccountView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn update(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::PspManage>,
    Path((storefront_id, id)): Path<(String, String)>,
    ApiJson(b): ApiJson<UpdateAccount>,
) -> Result<Json<AccountView>, ApiError> {
    let mut e = ValidationErrors::default();
    let patch = AccountPatch {
        display_name: e.check(b.display_name.required("display_name")).flatten(),
        credentials: e.check(b.credentials.required("credentials")).flatten().map(Into::into),
        priority: e.check(b.priority.required("priority")).flatten(),
        weight: e.check(b.weight.required("weight")).flatten(),
        currencies: e.check(b.currencies.required("currencies")).flatten(),
        channels: e.check(b.channels.required("channels")).flatten(),
        active: e.check(b.active.required("active")).flatten(),
    };
    e.finish().map_err(|e| ApiError::validation(e.0))?;
    Ok(Json(psp_accounts::update(&state.ctx, &scope, &storefront_id, &id, patch).await?.into()))
}

/// Removes an account (permission `psp.manage`).
#[utoipa::path(
    delete, path = "/v1/storefronts/{storefront_id}/psp-accounts/{id}", tag = "catalog", security(("bearer" = [])),
    params(("storefront_id" = String, Path), ("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 204), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn delete(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::PspManage>,
    Path((storefront_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    psp_accounts::delete(&state.ctx, &scope, &storefront_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Opens the account's credentials to prove they are usable; a ciphertext that does not
/// decrypt answers `500 credential_undecryptable` and is journaled (permission `psp.manage`).
#[utoipa::path(
    post, path = "/v1/storefronts/{storefront_id}/psp-accounts/{id}/check", tag = "catalog", security(("bearer" = [])),
    params(("storefront_id" = String, Path), ("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = CheckResult), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 500, description = "`credential_undecryptable`", body = crate::Problem, content_type = PROBLEM))
)]
async fn check(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::PspManage>,
    Path((storefront_id, id)): Path<(String, String)>,
) -> Result<Json<CheckResult>, ApiError> {
    let r = psp_accounts::check(&state.ctx, &scope, &storefront_id, &id).await?;
    Ok(Json(CheckResult {
        credentials: "decrypted".into(),
        api_secret_present: r.api_secret_present,
        webhook_secret_present: r.webhook_secret_present,
    }))
}
