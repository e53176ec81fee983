//! Platform operators and their sessions.

use azotte_domain::id::{SessionId, UserId};
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Query};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::{Result, StoreError};

#[derive(Iden)]
pub(crate) enum PlatformUsers {
    Table,
    Id,
    Email,
    PasswordHash,
    BootstrapSecretHash,
    Roles,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden)]
pub(crate) enum PlatformSessions {
    Table,
    Id,
    TokenHash,
    UserId,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
}

/// A platform operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformUser {
    pub id: UserId,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub active: bool,
}

#[derive(sqlx::FromRow)]
pub(crate) struct PlatformUserRow {
    id: String,
    email: Option<String>,
    roles: Json<Vec<String>>,
    status: String,
    password_hash: Option<String>,
}

impl PlatformUserRow {
    pub(crate) fn into_user(self) -> Result<(PlatformUser, Option<String>)> {
        let user = PlatformUser {
            id: self.id.parse().map_err(|_| StoreError::Corrupt(format!("platform user id {}", self.id)))?,
            email: self.email,
            roles: self.roles.0,
            active: self.status == "active",
        };
        Ok((user, self.password_hash))
    }
}

pub(crate) fn select_users() -> sea_query::SelectStatement {
    Query::select()
        .columns([
            (PlatformUsers::Table, PlatformUsers::Id),
            (PlatformUsers::Table, PlatformUsers::Email),
            (PlatformUsers::Table, PlatformUsers::Roles),
            (PlatformUsers::Table, PlatformUsers::Status),
            (PlatformUsers::Table, PlatformUsers::PasswordHash),
        ])
        .from(PlatformUsers::Table)
        .to_owned()
}

pub(crate) async fn count(tx: &mut Tx) -> Result<i64> {
    #[derive(sqlx::FromRow)]
    struct N {
        n: i64,
    }
    let q = Query::select()
        .expr_as(Expr::col(PlatformUsers::Id).count(), sea_query::Alias::new("n"))
        .from(PlatformUsers::Table)
        .to_owned();
    Ok(tx.fetch_one::<N>(&q).await?.n)
}

pub(crate) async fn insert_bootstrap_admin(
    tx: &mut Tx,
    secret_hash: &str,
    now: DateTime<Utc>,
) -> Result<UserId> {
    let id = UserId::new();
    let q = Query::insert()
        .into_table(PlatformUsers::Table)
        .columns([
            PlatformUsers::Id,
            PlatformUsers::BootstrapSecretHash,
            PlatformUsers::Roles,
            PlatformUsers::Status,
            PlatformUsers::CreatedAt,
            PlatformUsers::UpdatedAt,
        ])
        .values_panic([
            id.to_string().into(),
            secret_hash.into(),
            serde_json::json!(["platform_admin"]).into(),
            "active".into(),
            now.into(),
            now.into(),
        ])
        .to_owned();
    tx.execute(&q).await?;
    Ok(id)
}

pub(crate) async fn insert_session(
    tx: &mut Tx,
    user_id: UserId,
    token_hash: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<SessionId> {
    let id = SessionId::new();
    let q = Query::insert()
        .into_table(PlatformSessions::Table)
        .columns([
            PlatformSessions::Id,
            PlatformSessions::TokenHash,
            PlatformSessions::UserId,
            PlatformSessions::CreatedAt,
            PlatformSessions::ExpiresAt,
        ])
        .values_panic([
            id.to_string().into(),
            token_hash.into(),
            user_id.to_string().into(),
            now.into(),
            expires_at.into(),
        ])
        .to_owned();
    tx.execute(&q).await?;
    Ok(id)
}
