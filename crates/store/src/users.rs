//! People: platform operators and tenant users share one table.

use azotte_domain::id::UserId;
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Query, SelectStatement};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::{Result, StoreError};

#[derive(Iden)]
pub(crate) enum Users {
    Table,
    Id,
    Email,
    PasswordHash,
    BootstrapSecretHash,
    PlatformRoles,
    Status,
    TotpSecret,
    TotpEnabledAt,
    TotpLastStep,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden)]
pub(crate) enum RecoveryCodes {
    Table,
    UserId,
    CodeHash,
    UsedAt,
}

/// A person who can log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Option<String>,
    pub platform_roles: Vec<String>,
    pub active: bool,
    pub totp_enabled: bool,
}

/// What authentication needs to check a user's factors. Never leaves the auth path.
#[derive(Clone)]
pub struct UserSecrets {
    pub password_hash: Option<String>,
    /// The TOTP secret, sealed (see the service layer); present during enrolment too.
    pub totp_secret: Option<Vec<u8>>,
    pub totp_last_step: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    email: Option<String>,
    platform_roles: Json<Vec<String>>,
    status: String,
    password_hash: Option<String>,
    totp_secret: Option<Vec<u8>>,
    totp_enabled_at: Option<DateTime<Utc>>,
    totp_last_step: Option<i64>,
}

impl UserRow {
    pub(crate) fn split(self) -> Result<(User, UserSecrets)> {
        let user = User {
            id: self.id.parse().map_err(|_| StoreError::Corrupt(format!("user id {}", self.id)))?,
            email: self.email,
            platform_roles: self.platform_roles.0,
            active: self.status == "active",
            totp_enabled: self.totp_enabled_at.is_some(),
        };
        let secrets = UserSecrets {
            password_hash: self.password_hash,
            totp_secret: self.totp_secret,
            totp_last_step: self.totp_last_step,
        };
        Ok((user, secrets))
    }
}

pub(crate) fn select_users() -> SelectStatement {
    Query::select()
        .columns([
            (Users::Table, Users::Id),
            (Users::Table, Users::Email),
            (Users::Table, Users::PlatformRoles),
            (Users::Table, Users::Status),
            (Users::Table, Users::PasswordHash),
            (Users::Table, Users::TotpSecret),
            (Users::Table, Users::TotpEnabledAt),
            (Users::Table, Users::TotpLastStep),
        ])
        .from(Users::Table)
        .to_owned()
}

pub(crate) async fn find(tx: &mut Tx, cond: sea_query::SimpleExpr) -> Result<Option<(User, UserSecrets)>> {
    let q = select_users().and_where(cond).to_owned();
    tx.fetch_optional::<UserRow>(&q).await?.map(UserRow::split).transpose()
}

pub(crate) async fn by_id(tx: &mut Tx, id: UserId) -> Result<Option<(User, UserSecrets)>> {
    find(tx, Expr::col((Users::Table, Users::Id)).eq(id.to_string())).await
}

pub(crate) async fn by_email(tx: &mut Tx, email: &str) -> Result<Option<(User, UserSecrets)>> {
    find(tx, Expr::col((Users::Table, Users::Email)).eq(email)).await
}

pub(crate) async fn count(tx: &mut Tx) -> Result<i64> {
    #[derive(sqlx::FromRow)]
    struct N {
        n: i64,
    }
    let q = Query::select()
        .expr_as(Expr::col(Users::Id).count(), sea_query::Alias::new("n"))
        .from(Users::Table)
        .to_owned();
    Ok(tx.fetch_one::<N>(&q).await?.n)
}

/// Inserts a user. `password_hash` None means the user must still set one.
pub(crate) async fn insert(
    tx: &mut Tx,
    email: Option<&str>,
    password_hash: Option<&str>,
    bootstrap_secret_hash: Option<&str>,
    platform_roles: &[String],
    now: DateTime<Utc>,
) -> Result<UserId> {
    let id = UserId::new();
    let q = Query::insert()
        .into_table(Users::Table)
        .columns([
            Users::Id,
            Users::Email,
            Users::PasswordHash,
            Users::BootstrapSecretHash,
            Users::PlatformRoles,
            Users::Status,
            Users::CreatedAt,
            Users::UpdatedAt,
        ])
        .values_panic([
            id.to_string().into(),
            email.map(str::to_owned).into(),
            password_hash.map(str::to_owned).into(),
            bootstrap_secret_hash.map(str::to_owned).into(),
            serde_json::json!(platform_roles).into(),
            "active".into(),
            now.into(),
            now.into(),
        ])
        .to_owned();
    tx.execute(&q).await?;
    Ok(id)
}

pub(crate) async fn update(
    tx: &mut Tx,
    id: UserId,
    values: Vec<(Users, sea_query::SimpleExpr)>,
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut q = Query::update();
    q.table(Users::Table).value(Users::UpdatedAt, now).and_where(Expr::col(Users::Id).eq(id.to_string()));
    for (col, v) in values {
        q.value(col, v);
    }
    tx.execute(&q).await
}
