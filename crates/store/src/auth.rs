//! The authentication layer's storage side: the only code that builds scopes.
//!
//! Credentials are checked here against stored hashes (the hashing itself happens in the
//! service layer); a [`PlatformScope`] or [`TenantScope`] comes out only when they match.

use azotte_domain::id::{SessionId, UserId};
use azotte_domain::tenant::{Environment, TenantStatus};
use azotte_domain::{Principal, PrincipalKind};
use chrono::{DateTime, Utc};
use sea_query::{Expr, Query};

use crate::exec::Tx;
use crate::platform_users::{self, PlatformSessions, PlatformUser, PlatformUsers};
use crate::tenants::{self, Tenant};
use crate::{Db, PlatformScope, Result, StoreError, TenantScope};

/// Why a principal may not enter a tenant.
#[derive(Debug, thiserror::Error)]
pub enum EnterTenantError {
    /// No tenant has that id or slug.
    #[error("tenant not found")]
    NotFound,
    /// The tenant is suspended.
    #[error("tenant suspended")]
    Suspended,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the first platform administrator, holding only a one-time bootstrap secret, if
/// the installation has no platform user yet. Returns the new user's id, or `None`.
pub async fn bootstrap_admin_if_empty(
    db: &Db,
    secret_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<UserId>> {
    let mut tx = db.unscoped_tx().await?;
    if let Tx::Postgres(t) = &mut tx {
        // Two processes starting at once must not both create an administrator.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('azotte.bootstrap'))").execute(&mut **t).await?;
    }
    if platform_users::count(&mut tx).await? > 0 {
        return Ok(None);
    }
    let id = platform_users::insert_bootstrap_admin(&mut tx, secret_hash, now).await?;
    tx.commit().await?;
    Ok(Some(id))
}

/// Exchanges a bootstrap secret for real credentials in one transaction: sets the email and
/// password hash, forgets the secret and opens a session. `None` if no user holds the secret.
pub async fn exchange_bootstrap_secret(
    db: &Db,
    secret_hash: &str,
    email: &str,
    password_hash: &str,
    session: &NewSession<'_>,
) -> Result<Option<(PlatformUser, SessionId)>> {
    let mut tx = db.unscoped_tx().await?;
    let q = platform_users::select_users()
        .and_where(Expr::col(PlatformUsers::BootstrapSecretHash).eq(secret_hash))
        .to_owned();
    let Some(row) = tx.fetch_optional::<platform_users::PlatformUserRow>(&q).await? else {
        return Ok(None);
    };
    let (mut user, _) = row.into_user()?;
    let upd = Query::update()
        .table(PlatformUsers::Table)
        .value(PlatformUsers::Email, email)
        .value(PlatformUsers::PasswordHash, password_hash)
        .value(PlatformUsers::BootstrapSecretHash, Option::<String>::None)
        .value(PlatformUsers::UpdatedAt, session.now)
        .and_where(Expr::col(PlatformUsers::Id).eq(user.id.to_string()))
        .to_owned();
    tx.execute(&upd).await?;
    user.email = Some(email.to_owned());
    let sid =
        platform_users::insert_session(&mut tx, user.id, session.token_hash, session.now, session.expires_at)
            .await?;
    tx.commit().await?;
    Ok(Some((user, sid)))
}

/// A session to open.
pub struct NewSession<'a> {
    pub token_hash: &'a str,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The user with this email and their password hash, for login.
pub async fn user_by_email(db: &Db, email: &str) -> Result<Option<(PlatformUser, Option<String>)>> {
    let mut tx = db.unscoped_read_tx().await?;
    let q = platform_users::select_users().and_where(Expr::col(PlatformUsers::Email).eq(email)).to_owned();
    let row = tx.fetch_optional::<platform_users::PlatformUserRow>(&q).await?;
    tx.commit().await?;
    row.map(|r| r.into_user()).transpose()
}

/// Opens a session for a user whose password the caller has verified.
pub async fn open_session(db: &Db, user_id: UserId, session: &NewSession<'_>) -> Result<SessionId> {
    let mut tx = db.unscoped_tx().await?;
    let sid =
        platform_users::insert_session(&mut tx, user_id, session.token_hash, session.now, session.expires_at)
            .await?;
    tx.commit().await?;
    Ok(sid)
}

/// The platform scope of a live session token, if the token is known, unexpired, unrevoked
/// and its user active.
pub async fn authenticate_session(
    db: &Db,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<PlatformScope>> {
    let mut tx = db.unscoped_read_tx().await?;
    let q = platform_users::select_users()
        .inner_join(
            PlatformSessions::Table,
            Expr::col((PlatformSessions::Table, PlatformSessions::UserId))
                .equals((PlatformUsers::Table, PlatformUsers::Id)),
        )
        .and_where(Expr::col((PlatformSessions::Table, PlatformSessions::TokenHash)).eq(token_hash))
        .and_where(Expr::col((PlatformSessions::Table, PlatformSessions::ExpiresAt)).gt(now))
        .and_where(Expr::col((PlatformSessions::Table, PlatformSessions::RevokedAt)).is_null())
        .to_owned();
    let row = tx.fetch_optional::<platform_users::PlatformUserRow>(&q).await?;
    tx.commit().await?;
    let Some(row) = row else { return Ok(None) };
    let (user, _) = row.into_user()?;
    if !user.active {
        return Ok(None);
    }
    Ok(Some(PlatformScope {
        principal: Principal {
            kind: PrincipalKind::PlatformUser,
            id: user.id.to_string(),
            roles: user.roles,
        },
    }))
}

/// Revokes a session by token hash; true if one was live.
pub async fn revoke_session(db: &Db, token_hash: &str, now: DateTime<Utc>) -> Result<bool> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::update()
        .table(PlatformSessions::Table)
        .value(PlatformSessions::RevokedAt, now)
        .and_where(Expr::col(PlatformSessions::TokenHash).eq(token_hash))
        .and_where(Expr::col(PlatformSessions::RevokedAt).is_null())
        .to_owned();
    let n = tx.execute(&q).await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// Deletes sessions that expired before `now`; returns how many.
pub async fn purge_expired_sessions(db: &Db, now: DateTime<Utc>) -> Result<u64> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::delete()
        .from_table(PlatformSessions::Table)
        .and_where(Expr::col(PlatformSessions::ExpiresAt).lte(now))
        .to_owned();
    let n = tx.execute(&q).await?;
    tx.commit().await?;
    Ok(n)
}

/// Resolves `x-tn` (a tenant id or slug) for a platform principal and builds the tenant scope
/// for one environment. Unknown tenants are `NotFound`, suspended ones `Suspended`.
pub async fn enter_tenant_as_platform(
    db: &Db,
    platform: &PlatformScope,
    tenant_ref: &str,
    environment: Environment,
) -> std::result::Result<(TenantScope, Tenant), EnterTenantError> {
    let tenant = resolve_tenant(db, tenant_ref).await?.ok_or(EnterTenantError::NotFound)?;
    if tenant.status == TenantStatus::Suspended {
        return Err(EnterTenantError::Suspended);
    }
    let scope = TenantScope { tenant_id: tenant.id, environment, principal: platform.principal.clone() };
    Ok((scope, tenant))
}

/// A tenant by id (`ten_…`) or slug.
pub async fn resolve_tenant(db: &Db, tenant_ref: &str) -> Result<Option<Tenant>> {
    let mut tx = db.unscoped_read_tx().await?;
    let found = match tenant_ref.parse() {
        Ok(id) => tenants::find_by_id(&mut tx, id).await?,
        Err(_) => tenants::find_by_slug(&mut tx, tenant_ref).await?,
    };
    tx.commit().await?;
    Ok(found)
}
