//! Invitations of people into a tenant.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Query};

use crate::{Result, TenantTx};

#[derive(Iden)]
enum Invitations {
    Table,
    TenantId,
    Id,
    Email,
    Roles,
    TokenHash,
    InvitedBy,
    CreatedAt,
    ExpiresAt,
    AcceptedAt,
}

/// An invitation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Invitation {
    pub id: String,
    pub email: String,
    #[sqlx(json)]
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
}

/// Records an invitation whose token hashes to `token_hash`.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    tx: &mut TenantTx,
    id: &str,
    email: &str,
    roles: &[String],
    token_hash: &str,
    invited_by: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Invitation> {
    let q = Query::insert()
        .into_table(Invitations::Table)
        .columns([
            Invitations::TenantId,
            Invitations::Id,
            Invitations::Email,
            Invitations::Roles,
            Invitations::TokenHash,
            Invitations::InvitedBy,
            Invitations::CreatedAt,
            Invitations::ExpiresAt,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            id.into(),
            email.into(),
            serde_json::json!(roles).into(),
            token_hash.into(),
            invited_by.into(),
            now.into(),
            expires_at.into(),
        ])
        .to_owned();
    tx.write(&q).await?;
    Ok(Invitation {
        id: id.to_owned(),
        email: email.to_owned(),
        roles: roles.to_vec(),
        created_at: now,
        expires_at,
        accepted_at: None,
    })
}

/// The invitation with this token hash in the scope's tenant.
pub async fn by_token(tx: &mut TenantTx, token_hash: &str) -> Result<Option<Invitation>> {
    let q = Query::select()
        .columns([
            Invitations::Id,
            Invitations::Email,
            Invitations::Roles,
            Invitations::CreatedAt,
            Invitations::ExpiresAt,
            Invitations::AcceptedAt,
        ])
        .from(Invitations::Table)
        .and_where(Expr::col(Invitations::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(Invitations::TokenHash).eq(token_hash))
        .to_owned();
    tx.tx.fetch_optional::<Invitation>(&q).await
}

/// Marks an invitation accepted, once; false if it already was.
pub async fn accept(tx: &mut TenantTx, id: &str, now: DateTime<Utc>) -> Result<bool> {
    let q = Query::update()
        .table(Invitations::Table)
        .value(Invitations::AcceptedAt, now)
        .and_where(Expr::col(Invitations::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(Invitations::Id).eq(id))
        .and_where(Expr::col(Invitations::AcceptedAt).is_null())
        .to_owned();
    Ok(tx.write(&q).await? > 0)
}
