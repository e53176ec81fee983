//! Session families and their rotating refresh tokens; JWT signing keys; login throttling.
//!
//! All of this is authentication bookkeeping, read before any tenant scope exists, so it lives
//! in platform tables.

use azotte_domain::id::{SessionId, TenantId, UserId};
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, OnConflict, Order, Query};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::{Db, Result, StoreError};

#[derive(Iden)]
enum SessionFamilies {
    Table,
    Id,
    UserId,
    ScopeTenantId,
    Amr,
    MfaAt,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
    RevokedReason,
}

#[derive(Iden)]
enum RefreshTokens {
    Table,
    TokenHash,
    FamilyId,
    IssuedAt,
    ExpiresAt,
    SpentAt,
}

/// A login session: one refresh-token lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub id: SessionId,
    pub user_id: UserId,
    /// The tenant the session is for; `None` for a platform session.
    pub tenant_id: Option<TenantId>,
    pub amr: Vec<String>,
    pub mfa_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
}

#[derive(sqlx::FromRow)]
struct FamilyRow {
    id: String,
    user_id: String,
    scope_tenant_id: Option<String>,
    amr: Json<Vec<String>>,
    mfa_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<FamilyRow> for Family {
    type Error = StoreError;
    fn try_from(r: FamilyRow) -> Result<Self> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("session family {what}"));
        Ok(Family {
            id: r.id.parse().map_err(|_| corrupt("id"))?,
            user_id: r.user_id.parse().map_err(|_| corrupt("user"))?,
            tenant_id: r.scope_tenant_id.map(|t| t.parse()).transpose().map_err(|_| corrupt("tenant"))?,
            amr: r.amr.0,
            mfa_at: r.mfa_at,
            expires_at: r.expires_at,
            revoked: r.revoked_at.is_some(),
        })
    }
}

fn select_family() -> sea_query::SelectStatement {
    Query::select()
        .columns([
            (SessionFamilies::Table, SessionFamilies::Id),
            (SessionFamilies::Table, SessionFamilies::UserId),
            (SessionFamilies::Table, SessionFamilies::ScopeTenantId),
            (SessionFamilies::Table, SessionFamilies::Amr),
            (SessionFamilies::Table, SessionFamilies::MfaAt),
            (SessionFamilies::Table, SessionFamilies::ExpiresAt),
            (SessionFamilies::Table, SessionFamilies::RevokedAt),
        ])
        .from(SessionFamilies::Table)
        .to_owned()
}

/// A session to open.
pub struct NewFamily<'a> {
    pub user_id: UserId,
    pub tenant_id: Option<TenantId>,
    pub amr: &'a [String],
    pub mfa_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub refresh_hash: &'a str,
    pub refresh_expires_at: DateTime<Utc>,
}

/// Opens a session family with its first refresh token.
pub async fn open(db: &Db, f: &NewFamily<'_>) -> Result<Family> {
    let mut tx = db.unscoped_tx().await?;
    let id = SessionId::new();
    let q = Query::insert()
        .into_table(SessionFamilies::Table)
        .columns([
            SessionFamilies::Id,
            SessionFamilies::UserId,
            SessionFamilies::ScopeTenantId,
            SessionFamilies::Amr,
            SessionFamilies::MfaAt,
            SessionFamilies::CreatedAt,
            SessionFamilies::ExpiresAt,
        ])
        .values_panic([
            id.to_string().into(),
            f.user_id.to_string().into(),
            f.tenant_id.map(|t| t.to_string()).into(),
            serde_json::json!(f.amr).into(),
            f.mfa_at.into(),
            f.now.into(),
            f.expires_at.into(),
        ])
        .to_owned();
    tx.execute(&q).await?;
    insert_refresh(&mut tx, id, f.refresh_hash, f.now, f.refresh_expires_at).await?;
    tx.commit().await?;
    Ok(Family {
        id,
        user_id: f.user_id,
        tenant_id: f.tenant_id,
        amr: f.amr.to_vec(),
        mfa_at: f.mfa_at,
        expires_at: f.expires_at,
        revoked: false,
    })
}

async fn insert_refresh(
    tx: &mut Tx,
    family: SessionId,
    hash: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    let q = Query::insert()
        .into_table(RefreshTokens::Table)
        .columns([
            RefreshTokens::TokenHash,
            RefreshTokens::FamilyId,
            RefreshTokens::IssuedAt,
            RefreshTokens::ExpiresAt,
        ])
        .values_panic([hash.into(), family.to_string().into(), now.into(), expires_at.into()])
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

async fn family(tx: &mut Tx, id: &str) -> Result<Option<Family>> {
    let q =
        select_family().and_where(Expr::col((SessionFamilies::Table, SessionFamilies::Id)).eq(id)).to_owned();
    tx.fetch_optional::<FamilyRow>(&q).await?.map(Family::try_from).transpose()
}

async fn revoke_in(tx: &mut Tx, id: SessionId, reason: &str, now: DateTime<Utc>) -> Result<bool> {
    let q = Query::update()
        .table(SessionFamilies::Table)
        .value(SessionFamilies::RevokedAt, now)
        .value(SessionFamilies::RevokedReason, reason)
        .and_where(Expr::col(SessionFamilies::Id).eq(id.to_string()))
        .and_where(Expr::col(SessionFamilies::RevokedAt).is_null())
        .to_owned();
    Ok(tx.execute(&q).await? > 0)
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was live: it is spent now and the new one issued.
    Rotated(Family),
    /// The token had been spent before: someone replayed it. The whole family is revoked now.
    Reused(Family),
    /// Unknown, expired, or its family is revoked or expired.
    Invalid,
}

/// Spends a refresh token and issues its successor, in one transaction. Presenting a spent
/// token revokes the family (refresh token reuse detection).
pub async fn rotate(
    db: &Db,
    old_hash: &str,
    new_hash: &str,
    now: DateTime<Utc>,
    new_expires_at: DateTime<Utc>,
) -> Result<RefreshOutcome> {
    #[derive(sqlx::FromRow)]
    struct Tok {
        family_id: String,
        expires_at: DateTime<Utc>,
        spent_at: Option<DateTime<Utc>>,
    }
    let mut tx = db.unscoped_tx().await?;
    let q = Query::select()
        .columns([RefreshTokens::FamilyId, RefreshTokens::ExpiresAt, RefreshTokens::SpentAt])
        .from(RefreshTokens::Table)
        .and_where(Expr::col(RefreshTokens::TokenHash).eq(old_hash))
        .to_owned();
    let Some(tok) = tx.fetch_optional::<Tok>(&q).await? else { return Ok(RefreshOutcome::Invalid) };
    let Some(fam) = family(&mut tx, &tok.family_id).await? else { return Ok(RefreshOutcome::Invalid) };
    if fam.revoked || fam.expires_at <= now {
        return Ok(RefreshOutcome::Invalid);
    }
    if tok.spent_at.is_some() {
        revoke_in(&mut tx, fam.id, "refresh_token_reused", now).await?;
        tx.commit().await?;
        return Ok(RefreshOutcome::Reused(Family { revoked: true, ..fam }));
    }
    if tok.expires_at <= now {
        return Ok(RefreshOutcome::Invalid);
    }
    // Spend it only if nobody else did in the meantime.
    let spend = Query::update()
        .table(RefreshTokens::Table)
        .value(RefreshTokens::SpentAt, now)
        .and_where(Expr::col(RefreshTokens::TokenHash).eq(old_hash))
        .and_where(Expr::col(RefreshTokens::SpentAt).is_null())
        .to_owned();
    if tx.execute(&spend).await? == 0 {
        return Ok(RefreshOutcome::Invalid);
    }
    insert_refresh(&mut tx, fam.id, new_hash, now, new_expires_at.min(fam.expires_at)).await?;
    tx.commit().await?;
    Ok(RefreshOutcome::Rotated(fam))
}

/// Revokes a session family; true if it was live.
pub async fn revoke(db: &Db, id: SessionId, reason: &str, now: DateTime<Utc>) -> Result<bool> {
    let mut tx = db.unscoped_tx().await?;
    let done = revoke_in(&mut tx, id, reason, now).await?;
    tx.commit().await?;
    Ok(done)
}

/// Records a completed MFA step in a session (step-up), adding `otp` to its methods.
pub async fn mark_mfa(db: &Db, id: SessionId, amr: &[String], now: DateTime<Utc>) -> Result<()> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::update()
        .table(SessionFamilies::Table)
        .value(SessionFamilies::MfaAt, now)
        .value(SessionFamilies::Amr, serde_json::json!(amr))
        .and_where(Expr::col(SessionFamilies::Id).eq(id.to_string()))
        .to_owned();
    tx.execute(&q).await?;
    tx.commit().await?;
    Ok(())
}

/// A family that is neither revoked nor expired.
pub async fn live(db: &Db, id: SessionId, now: DateTime<Utc>) -> Result<Option<Family>> {
    let q = select_family()
        .and_where(Expr::col((SessionFamilies::Table, SessionFamilies::Id)).eq(id.to_string()))
        .to_owned();
    let f = db.read_optional::<FamilyRow>(&q).await?.map(Family::try_from).transpose()?;
    Ok(f.filter(|f| !f.revoked && f.expires_at > now))
}

/// Deletes refresh tokens that can no longer be used.
pub async fn purge_expired(db: &Db, now: DateTime<Utc>) -> Result<u64> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::delete()
        .from_table(RefreshTokens::Table)
        .and_where(Expr::col(RefreshTokens::ExpiresAt).lte(now))
        .to_owned();
    let n = tx.execute(&q).await?;
    tx.commit().await?;
    Ok(n)
}

#[derive(Iden)]
enum SigningKeys {
    Table,
    Kid,
    PrivateKey,
    PublicKey,
    CreatedAt,
    RetiredAt,
}

/// A JWT signing key as stored: the private half sealed by the service layer.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSigningKey {
    pub kid: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// Every signing key, newest first.
pub async fn signing_keys(db: &Db) -> Result<Vec<StoredSigningKey>> {
    let mut tx = db.unscoped_read_tx().await?;
    let q = Query::select()
        .columns([
            SigningKeys::Kid,
            SigningKeys::PrivateKey,
            SigningKeys::PublicKey,
            SigningKeys::CreatedAt,
            SigningKeys::RetiredAt,
        ])
        .from(SigningKeys::Table)
        .order_by(SigningKeys::CreatedAt, Order::Desc)
        .to_owned();
    let keys = tx.fetch_all::<StoredSigningKey>(&q).await?;
    tx.commit().await?;
    Ok(keys)
}

/// Adds a signing key and retires every other live one, in one transaction.
pub async fn install_signing_key(
    db: &Db,
    kid: &str,
    sealed_private: &[u8],
    public: &[u8],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = db.unscoped_tx().await?;
    let retire = Query::update()
        .table(SigningKeys::Table)
        .value(SigningKeys::RetiredAt, now)
        .and_where(Expr::col(SigningKeys::RetiredAt).is_null())
        .to_owned();
    tx.execute(&retire).await?;
    let q = Query::insert()
        .into_table(SigningKeys::Table)
        .columns([SigningKeys::Kid, SigningKeys::PrivateKey, SigningKeys::PublicKey, SigningKeys::CreatedAt])
        .values_panic([kid.into(), sealed_private.to_vec().into(), public.to_vec().into(), now.into()])
        .to_owned();
    tx.execute(&q).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Iden)]
enum LoginThrottle {
    Table,
    ThrottleKey,
    Failures,
    LastFailureAt,
    LockedUntil,
}

/// Failed logins counted under one key (an account or a client address).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Throttle {
    pub failures: i32,
    pub last_failure_at: DateTime<Utc>,
    pub locked_until: Option<DateTime<Utc>>,
}

/// The throttle state of a key.
pub async fn throttle(db: &Db, key: &str) -> Result<Option<Throttle>> {
    let mut tx = db.unscoped_read_tx().await?;
    let q = Query::select()
        .columns([LoginThrottle::Failures, LoginThrottle::LastFailureAt, LoginThrottle::LockedUntil])
        .from(LoginThrottle::Table)
        .and_where(Expr::col(LoginThrottle::ThrottleKey).eq(key))
        .to_owned();
    let t = tx.fetch_optional::<Throttle>(&q).await?;
    tx.commit().await?;
    Ok(t)
}

/// Counts one more failure under `key` and sets the lock the policy gives for the new count.
pub async fn record_failure(
    db: &Db,
    key: &str,
    now: DateTime<Utc>,
    lock_for: impl Fn(i32) -> Option<chrono::Duration>,
) -> Result<Throttle> {
    let mut tx = db.unscoped_tx().await?;
    let upsert = Query::insert()
        .into_table(LoginThrottle::Table)
        .columns([LoginThrottle::ThrottleKey, LoginThrottle::Failures, LoginThrottle::LastFailureAt])
        .values_panic([key.into(), 1.into(), now.into()])
        .on_conflict(
            OnConflict::column(LoginThrottle::ThrottleKey)
                .value(
                    LoginThrottle::Failures,
                    Expr::col((LoginThrottle::Table, LoginThrottle::Failures)).add(1),
                )
                .value(LoginThrottle::LastFailureAt, now)
                .to_owned(),
        )
        .to_owned();
    tx.execute(&upsert).await?;
    let q = Query::select()
        .columns([LoginThrottle::Failures, LoginThrottle::LastFailureAt, LoginThrottle::LockedUntil])
        .from(LoginThrottle::Table)
        .and_where(Expr::col(LoginThrottle::ThrottleKey).eq(key))
        .to_owned();
    let mut t = tx.fetch_one::<Throttle>(&q).await?;
    if let Some(d) = lock_for(t.failures) {
        let until = now + d;
        let upd = Query::update()
            .table(LoginThrottle::Table)
            .value(LoginThrottle::LockedUntil, until)
            .and_where(Expr::col(LoginThrottle::ThrottleKey).eq(key))
            .to_owned();
        tx.execute(&upd).await?;
        t.locked_until = Some(until);
    }
    tx.commit().await?;
    Ok(t)
}

/// Forgets the failures under `key` (after a successful login).
pub async fn clear_failures(db: &Db, key: &str) -> Result<()> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::delete()
        .from_table(LoginThrottle::Table)
        .and_where(Expr::col(LoginThrottle::ThrottleKey).eq(key))
        .to_owned();
    tx.execute(&q).await?;
    tx.commit().await?;
    Ok(())
}
