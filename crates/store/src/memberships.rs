//! Who belongs to a tenant, with which roles.

use azotte_domain::id::UserId;
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::users::{self, User};
use crate::{Result, StoreError, TenantTx};

#[derive(Iden)]
pub(crate) enum Memberships {
    Table,
    TenantId,
    UserId,
    Roles,
    CreatedAt,
    UpdatedAt,
}

/// A user's membership in the scope's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: User,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    user_id: String,
    roles: Json<Vec<String>>,
    created_at: DateTime<Utc>,
}

/// The roles a user holds in a tenant, if a member.
pub(crate) async fn roles_of(tx: &mut Tx, tenant_id: &str, user_id: UserId) -> Result<Option<Vec<String>>> {
    let q = Query::select()
        .columns([Memberships::UserId, Memberships::Roles, Memberships::CreatedAt])
        .from(Memberships::Table)
        .and_where(Expr::col(Memberships::TenantId).eq(tenant_id))
        .and_where(Expr::col(Memberships::UserId).eq(user_id.to_string()))
        .to_owned();
    Ok(tx.fetch_optional::<MemberRow>(&q).await?.map(|r| r.roles.0))
}

/// Members of the tenant, oldest membership first.
pub async fn list(tx: &mut TenantTx) -> Result<Vec<Member>> {
    let tenant = tx.scope().tenant_id().to_string();
    let q = Query::select()
        .columns([Memberships::UserId, Memberships::Roles, Memberships::CreatedAt])
        .from(Memberships::Table)
        .and_where(Expr::col(Memberships::TenantId).eq(tenant))
        .order_by(Memberships::CreatedAt, Order::Asc)
        .to_owned();
    let rows = tx.tx.fetch_all::<MemberRow>(&q).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: UserId = r.user_id.parse().map_err(|_| StoreError::Corrupt("membership user".into()))?;
        let (user, _) = users::by_id(&mut tx.tx, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("member without user".into()))?;
        out.push(Member { user, roles: r.roles.0, created_at: r.created_at });
    }
    Ok(out)
}

/// One member.
pub async fn get(tx: &mut TenantTx, user_id: UserId) -> Result<Option<Member>> {
    let tenant = tx.scope().tenant_id().to_string();
    let q = Query::select()
        .columns([Memberships::UserId, Memberships::Roles, Memberships::CreatedAt])
        .from(Memberships::Table)
        .and_where(Expr::col(Memberships::TenantId).eq(tenant))
        .and_where(Expr::col(Memberships::UserId).eq(user_id.to_string()))
        .to_owned();
    let Some(r) = tx.tx.fetch_optional::<MemberRow>(&q).await? else { return Ok(None) };
    let (user, _) = users::by_id(&mut tx.tx, user_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("member without user".into()))?;
    Ok(Some(Member { user, roles: r.roles.0, created_at: r.created_at }))
}

/// Adds a member (or replaces the roles of an existing one).
pub async fn put(tx: &mut TenantTx, user_id: UserId, roles: &[String], now: DateTime<Utc>) -> Result<()> {
    let q = Query::insert()
        .into_table(Memberships::Table)
        .columns([
            Memberships::TenantId,
            Memberships::UserId,
            Memberships::Roles,
            Memberships::CreatedAt,
            Memberships::UpdatedAt,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            user_id.to_string().into(),
            serde_json::json!(roles).into(),
            now.into(),
            now.into(),
        ])
        .on_conflict(
            sea_query::OnConflict::columns([Memberships::TenantId, Memberships::UserId])
                .update_columns([Memberships::Roles, Memberships::UpdatedAt])
                .to_owned(),
        )
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Removes a member; true if there was one.
pub async fn remove(tx: &mut TenantTx, user_id: UserId) -> Result<bool> {
    let q = Query::delete()
        .from_table(Memberships::Table)
        .and_where(Expr::col(Memberships::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(Memberships::UserId).eq(user_id.to_string()))
        .to_owned();
    Ok(tx.write(&q).await? > 0)
}

/// Every role name used by a member of the tenant.
pub async fn role_names_in_use(tx: &mut TenantTx) -> Result<Vec<String>> {
    Ok(list(tx).await?.into_iter().flat_map(|m| m.roles).collect())
}

/// Looks up a user by email from inside a tenant transaction (users are platform-level).
pub async fn user_by_email(
    tx: &mut TenantTx,
    email: &str,
) -> Result<Option<(User, crate::users::UserSecrets)>> {
    users::by_email(&mut tx.tx, email).await
}

/// Creates a user from inside a tenant transaction (accepting an invitation).
pub async fn create_user(
    tx: &mut TenantTx,
    email: &str,
    password_hash: &str,
    now: DateTime<Utc>,
) -> Result<UserId> {
    tx.writes += 1;
    users::insert(&mut tx.tx, Some(email), Some(password_hash), None, &[], now).await
}
