//! The authentication layer's storage side: the only code that builds scopes.
//!
//! Credentials are checked here against stored state (hashes are computed and compared by the
//! service layer through the closures it passes); a [`PlatformScope`] or [`TenantScope`] comes
//! out only when everything matches.

use std::sync::Arc;

use azotte_domain::id::{SessionId, UserId};
use azotte_domain::permission::{platform_role_permissions, Permission, PermissionSet};
use azotte_domain::tenant::{Environment, TenantStatus};
use azotte_domain::{Principal, PrincipalKind};
use chrono::{DateTime, Utc};
use sea_query::{Expr, Query};

use crate::cache::{ApiKeyRecord, Flight};
use crate::exec::Tx;
use crate::scope::Credential;
use crate::sessions::Family;
use crate::tenants::{self, Tenant};
use crate::users::{self, User, UserSecrets, Users};
use crate::{api_keys, memberships, roles, sessions, Db, PlatformScope, Result, StoreError, TenantScope};

/// Why authentication or tenant entry failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown, wrong, expired or revoked credential.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The session was revoked or has expired.
    #[error("session revoked or expired")]
    SessionRevoked,
    /// The API key was revoked.
    #[error("api key revoked")]
    ApiKeyRevoked,
    /// The API key has expired.
    #[error("api key expired")]
    ApiKeyExpired,
    /// `x-tn` names no tenant.
    #[error("tenant not found")]
    TenantNotFound,
    /// The tenant is suspended.
    #[error("tenant suspended")]
    TenantSuspended,
    /// The credential belongs to another tenant than `x-tn` names.
    #[error("credential belongs to another tenant")]
    TenantMismatch,
    /// `x-env` disagrees with the API key's environment.
    #[error("credential belongs to another environment")]
    EnvironmentMismatch,
    /// The user is not (or no longer) a member of the tenant.
    #[error("not a member of the tenant")]
    NotAMember,
    /// A platform principal lacks `platform.tenant.access`.
    #[error("missing permission {0}")]
    Denied(Permission),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the first platform administrator, holding only a one-time bootstrap secret, if
/// the installation has no user yet. Returns the new user's id, or `None`.
pub async fn bootstrap_admin_if_empty(
    db: &Db,
    secret_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<UserId>> {
    let mut tx = db.unscoped_tx().await?;
    if let Tx::Postgres(t) = &mut tx {
        // Two processes starting at once must not both create an administrator.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('azotte.bootstrap'))").execute(t.conn()?).await?;
    }
    if users::count(&mut tx).await? > 0 {
        return Ok(None);
    }
    let id =
        users::insert(&mut tx, None, None, Some(secret_hash), &["platform_admin".to_owned()], now).await?;
    tx.commit().await?;
    Ok(Some(id))
}

/// Exchanges a bootstrap secret for an email and password hash, forgetting the secret.
/// `None` if no user holds the secret.
pub async fn exchange_bootstrap_secret(
    db: &Db,
    secret_hash: &str,
    email: &str,
    password_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<User>> {
    let mut tx = db.unscoped_tx().await?;
    let Some((mut user, _)) =
        users::find(&mut tx, Expr::col((Users::Table, Users::BootstrapSecretHash)).eq(secret_hash)).await?
    else {
        return Ok(None);
    };
    users::update(
        &mut tx,
        user.id,
        vec![
            (Users::Email, email.into()),
            (Users::PasswordHash, password_hash.into()),
            (Users::BootstrapSecretHash, Option::<String>::None.into()),
        ],
        now,
    )
    .await?;
    tx.commit().await?;
    user.email = Some(email.to_owned());
    Ok(Some(user))
}

/// A user and their factors, by normalized email.
pub async fn user_by_email(db: &Db, email: &str) -> Result<Option<(User, UserSecrets)>> {
    let mut tx = db.unscoped_read_tx().await?;
    let u = users::by_email(&mut tx, email).await?;
    tx.commit().await?;
    Ok(u)
}

/// A user and their factors, by id.
pub async fn user_by_id(db: &Db, id: UserId) -> Result<Option<(User, UserSecrets)>> {
    let q =
        users::select_users().and_where(Expr::col((Users::Table, Users::Id)).eq(id.to_string())).to_owned();
    db.read_optional::<users::UserRow>(&q).await?.map(users::UserRow::split).transpose()
}

/// Stores a sealed TOTP secret awaiting confirmation (replacing an unconfirmed one). Refused
/// (false) when TOTP is already enabled.
pub async fn set_pending_totp(db: &Db, user_id: UserId, sealed: &[u8], now: DateTime<Utc>) -> Result<bool> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::update()
        .table(Users::Table)
        .value(Users::TotpSecret, sealed.to_vec())
        .value(Users::TotpLastStep, Option::<i64>::None)
        .value(Users::UpdatedAt, now)
        .and_where(Expr::col(Users::Id).eq(user_id.to_string()))
        .and_where(Expr::col(Users::TotpEnabledAt).is_null())
        .to_owned();
    let n = tx.execute(&q).await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// Enables TOTP after a confirmed code, storing the hashed recovery codes. False if there was
/// no pending secret or TOTP was already enabled.
pub async fn enable_totp(
    db: &Db,
    user_id: UserId,
    step: i64,
    recovery_hashes: &[String],
    now: DateTime<Utc>,
) -> Result<bool> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::update()
        .table(Users::Table)
        .value(Users::TotpEnabledAt, now)
        .value(Users::TotpLastStep, step)
        .value(Users::UpdatedAt, now)
        .and_where(Expr::col(Users::Id).eq(user_id.to_string()))
        .and_where(Expr::col(Users::TotpEnabledAt).is_null())
        .and_where(Expr::col(Users::TotpSecret).is_not_null())
        .to_owned();
    if tx.execute(&q).await? == 0 {
        return Ok(false);
    }
    let mut ins = Query::insert()
        .into_table(users::RecoveryCodes::Table)
        .columns([users::RecoveryCodes::UserId, users::RecoveryCodes::CodeHash])
        .to_owned();
    for h in recovery_hashes {
        ins.values_panic([user_id.to_string().into(), h.clone().into()]);
    }
    tx.execute(&ins).await?;
    tx.commit().await?;
    Ok(true)
}

/// Records that a TOTP step was used, only if it is newer than the last one (no replay).
pub async fn advance_totp_step(db: &Db, user_id: UserId, step: i64) -> Result<bool> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::update()
        .table(Users::Table)
        .value(Users::TotpLastStep, step)
        .and_where(Expr::col(Users::Id).eq(user_id.to_string()))
        .and_where(Expr::col(Users::TotpLastStep).is_null().or(Expr::col(Users::TotpLastStep).lt(step)))
        .to_owned();
    let n = tx.execute(&q).await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// Spends a recovery code; true if it existed unused.
pub async fn use_recovery_code(
    db: &Db,
    user_id: UserId,
    code_hash: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::update()
        .table(users::RecoveryCodes::Table)
        .value(users::RecoveryCodes::UsedAt, now)
        .and_where(Expr::col(users::RecoveryCodes::UserId).eq(user_id.to_string()))
        .and_where(Expr::col(users::RecoveryCodes::CodeHash).eq(code_hash))
        .and_where(Expr::col(users::RecoveryCodes::UsedAt).is_null())
        .to_owned();
    let n = tx.execute(&q).await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// A tenant by id (`ten_…`) or slug.
pub async fn resolve_tenant(db: &Db, tenant_ref: &str) -> Result<Option<Tenant>> {
    let mut tx = db.unscoped_read_tx().await?;
    let found = find_tenant(&mut tx, tenant_ref).await?;
    tx.commit().await?;
    Ok(found)
}

async fn find_tenant(tx: &mut Tx, tenant_ref: &str) -> Result<Option<Tenant>> {
    match tenant_ref.parse() {
        Ok(id) => tenants::find_by_id(tx, id).await,
        Err(_) => tenants::find_by_slug(tx, tenant_ref).await,
    }
}

/// The live session family behind an access token, and its active user. The token's claims
/// (user, tenant) must match the family.
pub async fn session(
    db: &Db,
    family_id: SessionId,
    user_id: UserId,
    tenant_claim: Option<&str>,
    now: DateTime<Utc>,
) -> std::result::Result<(Family, User), AuthError> {
    let family = sessions::live(db, family_id, now).await?.ok_or(AuthError::SessionRevoked)?;
    if family.user_id != user_id || family.tenant_id.map(|t| t.to_string()).as_deref() != tenant_claim {
        return Err(AuthError::InvalidCredentials);
    }
    let (user, _) = user_by_id(db, user_id).await?.ok_or(AuthError::InvalidCredentials)?;
    if !user.active {
        return Err(AuthError::InvalidCredentials);
    }
    Ok((family, user))
}

fn user_principal(user: &User, roles: Vec<String>) -> Principal {
    Principal {
        kind: if user.platform_roles.is_empty() { PrincipalKind::User } else { PrincipalKind::PlatformUser },
        id: user.id.to_string(),
        roles,
    }
}

fn session_credential(family: &Family) -> Credential {
    Credential::Session { family_id: family.id, amr: family.amr.clone(), mfa_at: family.mfa_at }
}

/// The platform scope of a session: platform roles grant platform permissions; a tenant
/// user's session has none, but may still call routes that need only authentication.
pub fn platform_scope(family: &Family, user: &User) -> PlatformScope {
    let roles = if family.tenant_id.is_some() { vec![] } else { user.platform_roles.clone() };
    let permissions =
        roles.iter().filter_map(|r| platform_role_permissions(r)).flat_map(|(p, _)| p).collect();
    PlatformScope {
        principal: user_principal(user, roles),
        permissions,
        credential: session_credential(family),
    }
}

async fn open_tenant(db: &Db, tenant_ref: &str) -> std::result::Result<(Tx, Tenant), AuthError> {
    let mut tx = db.unscoped_read_tx().await?;
    let tenant = find_tenant(&mut tx, tenant_ref).await?.ok_or(AuthError::TenantNotFound)?;
    if tenant.status == TenantStatus::Suspended {
        return Err(AuthError::TenantSuspended);
    }
    // From here on, row-level security admits this tenant's rows.
    crate::tenants::enter_tenant(&mut tx, tenant.id).await?;
    Ok((tx, tenant))
}

/// Enters the tenant named by `x-tn` with a user session: a tenant session must be for that
/// tenant and its user still a member; a platform session needs `platform.tenant.access`.
pub async fn enter_tenant(
    db: &Db,
    family: &Family,
    user: &User,
    tenant_ref: &str,
    environment: Environment,
) -> std::result::Result<(TenantScope, Tenant), AuthError> {
    let (mut tx, tenant) = open_tenant(db, tenant_ref).await?;
    let tenant_key = tenant.id.to_string();
    let (roles, permissions, platform_access) = match family.tenant_id {
        Some(t) if t != tenant.id => return Err(AuthError::TenantMismatch),
        Some(_) => {
            let roles =
                memberships::roles_of(&mut tx, &tenant_key, user.id).await?.ok_or(AuthError::NotAMember)?;
            let perms = roles::resolve(&mut tx, &tenant_key, &roles).await?;
            (roles, perms, false)
        }
        None => {
            let mut platform = PermissionSet::new();
            let mut tenant_perms = PermissionSet::new();
            for (p, t) in user.platform_roles.iter().filter_map(|r| platform_role_permissions(r)) {
                platform.extend(p);
                tenant_perms.extend(t);
            }
            if !platform.contains(&Permission::PlatformTenantAccess) {
                return Err(AuthError::Denied(Permission::PlatformTenantAccess));
            }
            (user.platform_roles.clone(), tenant_perms, true)
        }
    };
    tx.commit().await?;
    let scope = TenantScope {
        tenant_id: tenant.id,
        environment,
        principal: user_principal(user, roles),
        permissions,
        credential: session_credential(family),
        platform_access,
    };
    Ok((scope, tenant))
}

/// Authenticates an API key presented with `x-tn`: its record comes from this process's cache
/// when it holds one (see [`crate::cache`]), else from the database; the presented secret is
/// checked either way, by `matches` against the stored hashes: `current`, or `previous` while
/// its overlap lasts.
pub async fn authenticate_api_key(
    db: &Db,
    key_id: &str,
    tenant_ref: &str,
    environment_header: Option<Environment>,
    matches: impl Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> std::result::Result<(TenantScope, Tenant), AuthError> {
    let record = match db.cache.api_key(tenant_ref, key_id) {
        Some(r) => r,
        None => load_api_key_once(db, key_id, tenant_ref).await?,
    };
    let scope = api_key_scope(&record, environment_header, matches, now)?;
    let key = &record.key;
    if key.last_used_at.is_none_or(|t| t < now - chrono::Duration::seconds(60)) {
        // Best effort and off the request's transaction: a lost update only delays the stamp.
        let owner = record.tenant.id.to_string();
        let mut w = db.tenant_write_tx_for(record.tenant.id).await?;
        api_keys::touch(&mut w, &owner, &key.id, now).await?;
        w.commit().await?;
        // The cached record still has the old stamp: read it again next time.
        db.cache.apply(&crate::cache::Change::ApiKey(key.key_id.clone()));
    }
    Ok((scope, record.tenant.clone()))
}

/// A cache miss. While the cache is live, one request per key reads it and the others presenting
/// the same key wait for that read, then take what it stored; if it stored nothing (the read
/// failed, the key is unknown, a change overtook the read, the request was dropped) each reads
/// for itself, as every request did before. What is shared is only the cached record: each
/// request still checks its own secret against it.
async fn load_api_key_once(
    db: &Db,
    key_id: &str,
    tenant_ref: &str,
) -> std::result::Result<Arc<ApiKeyRecord>, AuthError> {
    // Held until this request's read is over: its waiters then look in the cache.
    let _lead = Flight::join(db.cache.api_key_flight(tenant_ref, key_id)).await;
    // A leader looks again too: the previous leader may have stored it since this request missed.
    if let Some(r) = db.cache.api_key(tenant_ref, key_id) {
        return Ok(r);
    }
    let ticket = db.cache.ticket();
    #[cfg(any(test, feature = "testing"))]
    db.cache.api_key_loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let r = Arc::new(load_api_key(db, key_id, tenant_ref).await?);
    if let Some(t) = ticket {
        db.cache.store_api_key(t, tenant_ref, r.clone());
    }
    Ok(r)
}

/// Reads what authenticating an API key needs: the key's tenant (which `x-tn` must name), the
/// key with its hashes, and its permissions.
async fn load_api_key(
    db: &Db,
    key_id: &str,
    tenant_ref: &str,
) -> std::result::Result<ApiKeyRecord, AuthError> {
    let owner = api_keys::owner_of(db, key_id).await?.ok_or(AuthError::InvalidCredentials)?;
    let (mut tx, tenant) = match open_tenant(db, tenant_ref).await {
        Err(AuthError::TenantNotFound) => return Err(AuthError::TenantMismatch),
        other => other?,
    };
    if tenant.id.to_string() != owner {
        return Err(AuthError::TenantMismatch);
    }
    let (key, hashes) =
        api_keys::by_key_id(&mut tx, &owner, key_id).await?.ok_or(AuthError::InvalidCredentials)?;
    let role_names: Vec<String> = key.role.iter().cloned().collect();
    let mut permissions = roles::resolve(&mut tx, &owner, &role_names).await?;
    permissions.extend(key.permissions.iter().filter_map(|p| p.parse::<Permission>().ok()));
    // Key management is for people with fresh MFA, never for keys.
    permissions.remove(&Permission::ApiKeyManage);
    tx.commit().await?;
    Ok(ApiKeyRecord { tenant, key, hashes, permissions })
}

/// The scope an API key grants, once the presented secret matches and the key is usable now.
fn api_key_scope(
    record: &ApiKeyRecord,
    environment_header: Option<Environment>,
    matches: impl Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> std::result::Result<TenantScope, AuthError> {
    let (key, hashes) = (&record.key, &record.hashes);
    let current = matches(&hashes.current);
    let previous = hashes.previous.as_ref().is_some_and(|(h, until)| *until > now && matches(h));
    if !(current || previous) {
        return Err(AuthError::InvalidCredentials);
    }
    if key.revoked_at.is_some() {
        return Err(AuthError::ApiKeyRevoked);
    }
    if key.expires_at.is_some_and(|e| e <= now) {
        return Err(AuthError::ApiKeyExpired);
    }
    if environment_header.is_some_and(|e| e != key.environment) {
        return Err(AuthError::EnvironmentMismatch);
    }
    Ok(TenantScope {
        tenant_id: record.tenant.id,
        environment: key.environment,
        principal: Principal {
            kind: PrincipalKind::ApiKey,
            id: key.id.clone(),
            roles: key.role.iter().cloned().collect(),
        },
        permissions: record.permissions.clone(),
        credential: Credential::ApiKey { id: key.id.clone(), storefront_ids: key.storefront_ids.clone() },
        platform_access: false,
    })
}

/// The roles a user holds in a tenant, read inside that tenant's row-level-security scope.
pub async fn membership_roles(
    db: &Db,
    tenant_id: azotte_domain::id::TenantId,
    user_id: UserId,
) -> Result<Option<Vec<String>>> {
    let mut tx = db.unscoped_read_tx().await?;
    crate::tenants::enter_tenant(&mut tx, tenant_id).await?;
    let roles = memberships::roles_of(&mut tx, &tenant_id.to_string(), user_id).await?;
    tx.commit().await?;
    Ok(roles)
}

/// The scope in which an invitation token is redeemed: the token is the credential, checked by
/// the caller inside this scope's transaction; the scope itself grants no permission.
pub async fn invitation_scope(db: &Db, tenant_ref: &str) -> std::result::Result<TenantScope, AuthError> {
    let (tx, tenant) = open_tenant(db, tenant_ref).await?;
    tx.commit().await?;
    Ok(TenantScope {
        tenant_id: tenant.id,
        // Memberships are per tenant, not per environment; production is as good as any.
        environment: Environment::Production,
        principal: Principal { kind: PrincipalKind::System, id: "invitation".into(), roles: vec![] },
        permissions: PermissionSet::new(),
        credential: Credential::Invitation,
        platform_access: false,
    })
}

/// The scope of a platform job working in one tenant environment (`job` names it in the
/// journal). It holds every tenant permission; only workers build it, for tenants they read
/// from the job tables.
pub async fn system_scope(
    db: &Db,
    tenant_id: azotte_domain::id::TenantId,
    environment: Environment,
    job: &str,
) -> std::result::Result<TenantScope, AuthError> {
    let (tx, tenant) = open_tenant(db, &tenant_id.to_string()).await?;
    tx.commit().await?;
    Ok(TenantScope {
        tenant_id: tenant.id,
        environment,
        principal: Principal { kind: PrincipalKind::System, id: job.to_owned(), roles: vec![] },
        permissions: azotte_domain::permission::tenant_role_permissions("tenant_admin").unwrap_or_default(),
        credential: Credential::System { job: job.to_owned() },
        platform_access: false,
    })
}
