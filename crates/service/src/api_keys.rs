//! API key management: only people with a fresh MFA session may create, rotate or revoke keys,
//! and a key can never hold more than its creator.

use azotte_crypto::tokens::{self, generate_api_key};
use azotte_domain::permission::{Permission, PermissionSet};
use azotte_domain::tenant::Mode;
use azotte_domain::{FieldError, Secret, ValidationErrors};
use azotte_store::api_keys::{self, ApiKey, NewApiKey};
use azotte_store::{roles, Credential, StoreError, TenantScope};
use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::mfa::FRESH_MFA;
use crate::{Ctx, Result, ServiceError};

/// Longest overlap of old and new secret on rotation.
pub const MAX_OVERLAP: Duration = Duration::hours(24);

/// A key to create, as asked for.
#[derive(Debug, Clone, Default)]
pub struct KeyRequest {
    pub description: String,
    pub role: Option<String>,
    pub permissions: Vec<String>,
    pub storefront_ids: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key with its plaintext, shown once.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: Secret<String>,
}

/// Whether the scope may manage keys: a person (never a key) with MFA in the last 10 minutes,
/// holding `api_key.manage`. The HTTP layer calls this before it reads the request body.
pub async fn authorize_management(ctx: &Ctx, scope: &TenantScope) -> Result<()> {
    require_fresh_human(ctx, scope)?;
    crate::security::require(ctx, scope, Permission::ApiKeyManage).await
}

/// Key management needs a person (never a key) who completed MFA within the last 10 minutes.
fn require_fresh_human(ctx: &Ctx, scope: &TenantScope) -> Result<()> {
    match scope.credential() {
        Credential::ApiKey { .. } | Credential::Invitation | Credential::System { .. } => {
            Err(ServiceError::Forbidden {
                code: "key_management_requires_user",
                message: "API keys cannot create, rotate or revoke keys; use a user session".into(),
            })
        }
        Credential::Session { mfa_at, .. } => match mfa_at {
            Some(t) if *t + FRESH_MFA > ctx.clock.now() => Ok(()),
            _ => Err(ServiceError::Forbidden {
                code: "mfa_required",
                message: "key management needs MFA within the last 10 minutes: POST /v1/auth/mfa/verify"
                    .into(),
            }),
        },
    }
}

/// Creates a key in the scope's environment.
pub async fn create(ctx: &Ctx, scope: &TenantScope, req: KeyRequest) -> Result<IssuedKey> {
    require_fresh_human(ctx, scope)?;
    crate::security::require(ctx, scope, Permission::ApiKeyManage).await?;
    let now = ctx.clock.now();
    let mut errors = ValidationErrors::default();
    let description = req.description.trim().to_owned();
    if description.is_empty() || description.chars().count() > 200 {
        errors.push(FieldError::new("description", "invalid_length", "must be 1 to 200 characters long"));
    }
    let mut explicit = PermissionSet::new();
    for (i, p) in req.permissions.iter().enumerate() {
        match p.parse::<Permission>() {
            Ok(p) if !p.is_platform() && p != Permission::ApiKeyManage => {
                explicit.insert(p);
            }
            _ => errors.push(FieldError::new(
                format!("permissions[{i}]"),
                "unknown_permission",
                format!("`{p}` is not a tenant permission a key may hold"),
            )),
        }
    }
    if req.role.is_none() && explicit.is_empty() {
        errors.push(FieldError::new("role", "missing_field", "give a role or a list of permissions"));
    }
    if req.expires_at.is_some_and(|e| e <= now) {
        errors.push(FieldError::new("expires_at", "in_the_past", "must be in the future"));
    }
    if req.storefront_ids.len() > 100 {
        errors.push(FieldError::new("storefront_ids", "too_many", "at most 100 storefronts"));
    }
    errors.finish()?;

    let mut tx = ctx.db.tenant_tx(scope).await?;
    let mut effective = explicit.clone();
    if let Some(role) = &req.role {
        let perms = roles::permissions_of(&mut tx, std::slice::from_ref(role)).await?;
        if perms.is_empty() {
            return Err(ValidationErrors::from(FieldError::new(
                "role",
                "unknown_role",
                format!("no role named `{role}`"),
            ))
            .into());
        }
        effective.extend(perms);
    }
    effective.remove(&Permission::ApiKeyManage);
    if let Some(p) = effective.iter().find(|p| !scope.can(**p)) {
        return Err(ServiceError::Forbidden {
            code: "permission_escalation",
            message: format!("a key cannot hold {p}, which you do not hold"),
        });
    }
    let (key_id, plaintext) = generate_api_key(scope.mode() == Mode::Live);
    let hash = tokens::hash_api_key(&ctx.keys.api_key_hash, plaintext.expose());
    let id = format!("key_{}", azotte_domain::id::RequestId::new().to_string().trim_start_matches("req_"));
    let permissions: Vec<String> = explicit.iter().map(|p| p.as_str().to_owned()).collect();
    let key = api_keys::create(
        &mut tx,
        &NewApiKey {
            id: &id,
            key_id: &key_id,
            secret_hash: hash.as_str(),
            role: req.role.as_deref(),
            permissions: &permissions,
            storefront_ids: &req.storefront_ids,
            description: &description,
            expires_at: req.expires_at,
            created_by: &scope.principal().id,
        },
        now,
    )
    .await?;
    let r = Some(("api_key", key.id.as_str()));
    tx.action(now, "api_key.create", r, json!({"role": key.role, "permissions": key.permissions})).await?;
    tx.outcome(
        now,
        "api_key.created",
        r,
        json!({"key_id": key.key_id, "environment": key.environment, "role": key.role, "permissions": key.permissions,
               "storefront_ids": key.storefront_ids, "expires_at": key.expires_at}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(api_key = %key.id, "api key created");
    Ok(IssuedKey { key, secret: Secret::new(plaintext.expose().to_owned()) })
}

/// Keys of the scope's environment.
pub async fn list(ctx: &Ctx, scope: &TenantScope) -> Result<Vec<ApiKey>> {
    crate::security::require(ctx, scope, Permission::ApiKeyRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let keys = api_keys::list(&mut tx).await?;
    tx.commit().await?;
    Ok(keys)
}

/// One key.
pub async fn get(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<ApiKey> {
    crate::security::require(ctx, scope, Permission::ApiKeyRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let key = api_keys::get(&mut tx, id).await?.ok_or(ServiceError::NotFound { resource: "api_key" })?;
    tx.commit().await?;
    Ok(key)
}

/// Gives a key a new secret; the old one keeps working for `overlap` (at most 24 hours).
pub async fn rotate(ctx: &Ctx, scope: &TenantScope, id: &str, overlap: Duration) -> Result<IssuedKey> {
    require_fresh_human(ctx, scope)?;
    crate::security::require(ctx, scope, Permission::ApiKeyManage).await?;
    if overlap < Duration::zero() || overlap > MAX_OVERLAP {
        return Err(ValidationErrors::from(FieldError::new(
            "overlap_seconds",
            "out_of_range",
            "must be between 0 and 86400",
        ))
        .into());
    }
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let existing = api_keys::get(&mut tx, id).await?.ok_or(ServiceError::NotFound { resource: "api_key" })?;
    if existing.revoked_at.is_some() {
        return Err(ServiceError::Conflict {
            code: "api_key_revoked",
            message: "a revoked key cannot be rotated".into(),
            field: None,
        });
    }
    // Same key id, new secret: the format keeps the public part so logs still match the key.
    let (_, fresh) = generate_api_key(scope.mode() == Mode::Live);
    let secret_part = fresh.expose().rsplit('_').next().unwrap_or_default().to_owned();
    let plaintext = format!(
        "az_{}_{}_{}",
        if scope.mode() == Mode::Live { "live" } else { "test" },
        existing.key_id,
        secret_part
    );
    let hash = tokens::hash_api_key(&ctx.keys.api_key_hash, &plaintext);
    let key = api_keys::rotate(&mut tx, id, hash.as_str(), now + overlap, now)
        .await?
        .ok_or(ServiceError::NotFound { resource: "api_key" })?;
    tx.action(
        now,
        "api_key.rotate",
        Some(("api_key", id)),
        json!({"overlap_seconds": overlap.num_seconds()}),
    )
    .await?;
    tx.outcome(
        now,
        "api_key.rotated",
        Some(("api_key", id)),
        json!({"previous_valid_until": key.previous_valid_until}),
    )
    .await?;
    tx.commit().await?;
    Ok(IssuedKey { key, secret: Secret::new(plaintext) })
}

/// Revokes a key at once.
pub async fn revoke(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<ApiKey> {
    require_fresh_human(ctx, scope)?;
    crate::security::require(ctx, scope, Permission::ApiKeyManage).await?;
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let key = api_keys::revoke(&mut tx, id, ctx.clock.now())
        .await
        .map_err(|e: StoreError| ServiceError::from(e))?;
    let key = key.ok_or(ServiceError::NotFound { resource: "api_key" })?;
    let now = ctx.clock.now();
    tx.action(now, "api_key.revoke", Some(("api_key", id)), json!({})).await?;
    tx.outcome(now, "api_key.revoked", Some(("api_key", id)), json!({"revoked_at": key.revoked_at})).await?;
    tx.commit().await?;
    Ok(key)
}
