//! API keys of a tenant environment. Only keyed hashes of secrets are stored.

use azotte_domain::tenant::Environment;
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::{Result, StoreError, TenantTx};

#[derive(Iden)]
pub(crate) enum ApiKeys {
    Table,
    TenantId,
    Environment,
    Id,
    KeyId,
    SecretHash,
    PreviousSecretHash,
    PreviousValidUntil,
    Role,
    Permissions,
    StorefrontIds,
    Description,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden)]
enum ApiKeyDirectory {
    Table,
    KeyId,
    OwnerTenantId,
}

/// An API key as stored (without its hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub environment: Environment,
    pub key_id: String,
    pub role: Option<String>,
    pub permissions: Vec<String>,
    pub storefront_ids: Vec<String>,
    pub description: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// While a rotation overlaps, the previous secret works until then.
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// The hashes a presented key is checked against.
#[derive(Debug, Clone)]
pub struct KeyHashes {
    pub current: String,
    pub previous: Option<(String, DateTime<Utc>)>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: String,
    environment: String,
    key_id: String,
    secret_hash: String,
    previous_secret_hash: Option<String>,
    previous_valid_until: Option<DateTime<Utc>>,
    role: Option<String>,
    permissions: Json<Vec<String>>,
    storefront_ids: Json<Vec<String>>,
    description: String,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_by: String,
    created_at: DateTime<Utc>,
}

impl ApiKeyRow {
    pub(crate) fn split(self) -> Result<(ApiKey, KeyHashes)> {
        let hashes = KeyHashes {
            current: self.secret_hash,
            previous: self.previous_secret_hash.zip(self.previous_valid_until),
        };
        let key = ApiKey {
            id: self.id,
            environment: self
                .environment
                .parse()
                .map_err(|_| StoreError::Corrupt("api key environment".into()))?,
            key_id: self.key_id,
            role: self.role,
            permissions: self.permissions.0,
            storefront_ids: self.storefront_ids.0,
            description: self.description,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
            created_by: self.created_by,
            created_at: self.created_at,
            previous_valid_until: self.previous_valid_until,
        };
        Ok((key, hashes))
    }
}

fn select() -> sea_query::SelectStatement {
    Query::select()
        .columns([
            ApiKeys::Id,
            ApiKeys::Environment,
            ApiKeys::KeyId,
            ApiKeys::SecretHash,
            ApiKeys::PreviousSecretHash,
            ApiKeys::PreviousValidUntil,
            ApiKeys::Role,
            ApiKeys::Permissions,
            ApiKeys::StorefrontIds,
            ApiKeys::Description,
            ApiKeys::ExpiresAt,
            ApiKeys::LastUsedAt,
            ApiKeys::RevokedAt,
            ApiKeys::CreatedBy,
            ApiKeys::CreatedAt,
        ])
        .from(ApiKeys::Table)
        .to_owned()
}

/// The tenant that owns a key id (platform directory; holds no secret).
pub(crate) async fn owner_of(db: &crate::Db, key_id: &str) -> Result<Option<String>> {
    #[derive(sqlx::FromRow)]
    struct Owner {
        owner_tenant_id: String,
    }
    let q = Query::select()
        .column(ApiKeyDirectory::OwnerTenantId)
        .from(ApiKeyDirectory::Table)
        .and_where(Expr::col(ApiKeyDirectory::KeyId).eq(key_id))
        .to_owned();
    Ok(db.read_optional::<Owner>(&q).await?.map(|o| o.owner_tenant_id))
}

/// A key by its public key id, inside the tenant set on the transaction.
pub(crate) async fn by_key_id(
    tx: &mut Tx,
    tenant_id: &str,
    key_id: &str,
) -> Result<Option<(ApiKey, KeyHashes)>> {
    let q = select()
        .and_where(Expr::col(ApiKeys::TenantId).eq(tenant_id))
        .and_where(Expr::col(ApiKeys::KeyId).eq(key_id))
        .to_owned();
    tx.fetch_optional::<ApiKeyRow>(&q).await?.map(ApiKeyRow::split).transpose()
}

/// Notes that a key was used, at most once a minute so the hot path rarely writes.
pub(crate) async fn touch(tx: &mut Tx, tenant_id: &str, id: &str, now: DateTime<Utc>) -> Result<()> {
    let q = Query::update()
        .table(ApiKeys::Table)
        .value(ApiKeys::LastUsedAt, now)
        .and_where(Expr::col(ApiKeys::TenantId).eq(tenant_id))
        .and_where(Expr::col(ApiKeys::Id).eq(id))
        .and_where(
            Expr::col(ApiKeys::LastUsedAt)
                .is_null()
                .or(Expr::col(ApiKeys::LastUsedAt).lt(now - chrono::Duration::seconds(60))),
        )
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

/// A key to create.
pub struct NewApiKey<'a> {
    pub id: &'a str,
    pub key_id: &'a str,
    pub secret_hash: &'a str,
    pub role: Option<&'a str>,
    pub permissions: &'a [String],
    pub storefront_ids: &'a [String],
    pub description: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: &'a str,
}

/// Creates a key in the scope's environment, and its directory entry.
pub async fn create(tx: &mut TenantTx, k: &NewApiKey<'_>, now: DateTime<Utc>) -> Result<ApiKey> {
    let scope = tx.scope().clone();
    let q = Query::insert()
        .into_table(ApiKeys::Table)
        .columns([
            ApiKeys::TenantId,
            ApiKeys::Environment,
            ApiKeys::Id,
            ApiKeys::KeyId,
            ApiKeys::SecretHash,
            ApiKeys::Role,
            ApiKeys::Permissions,
            ApiKeys::StorefrontIds,
            ApiKeys::Description,
            ApiKeys::ExpiresAt,
            ApiKeys::CreatedBy,
            ApiKeys::CreatedAt,
            ApiKeys::UpdatedAt,
        ])
        .values_panic([
            scope.tenant_id().to_string().into(),
            scope.environment().as_str().into(),
            k.id.into(),
            k.key_id.into(),
            k.secret_hash.into(),
            k.role.map(str::to_owned).into(),
            serde_json::json!(k.permissions).into(),
            serde_json::json!(k.storefront_ids).into(),
            k.description.into(),
            k.expires_at.into(),
            k.created_by.into(),
            now.into(),
            now.into(),
        ])
        .to_owned();
    tx.write(&q).await?;
    let dir = Query::insert()
        .into_table(ApiKeyDirectory::Table)
        .columns([ApiKeyDirectory::KeyId, ApiKeyDirectory::OwnerTenantId])
        .values_panic([k.key_id.into(), scope.tenant_id().to_string().into()])
        .to_owned();
    tx.write(&dir).await?;
    get(tx, k.id).await?.ok_or_else(|| StoreError::Corrupt("api key vanished".into()))
}

fn scoped(tx: &TenantTx) -> sea_query::SelectStatement {
    select()
        .and_where(Expr::col(ApiKeys::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(ApiKeys::Environment).eq(tx.scope().environment().as_str()))
        .to_owned()
}

/// Keys of the scope's environment, newest first.
pub async fn list(tx: &mut TenantTx) -> Result<Vec<ApiKey>> {
    let q = scoped(tx).order_by(ApiKeys::Id, Order::Desc).to_owned();
    tx.tx.fetch_all::<ApiKeyRow>(&q).await?.into_iter().map(|r| r.split().map(|(k, _)| k)).collect()
}

/// One key of the scope's environment.
pub async fn get(tx: &mut TenantTx, id: &str) -> Result<Option<ApiKey>> {
    let q = scoped(tx).and_where(Expr::col(ApiKeys::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<ApiKeyRow>(&q).await?.map(|r| r.split().map(|(k, _)| k)).transpose()
}

fn update_scoped(tx: &TenantTx, id: &str) -> sea_query::UpdateStatement {
    Query::update()
        .table(ApiKeys::Table)
        .and_where(Expr::col(ApiKeys::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(ApiKeys::Environment).eq(tx.scope().environment().as_str()))
        .and_where(Expr::col(ApiKeys::Id).eq(id))
        .and_where(Expr::col(ApiKeys::RevokedAt).is_null())
        .to_owned()
}

/// Replaces a live key's secret; the old one stays valid until `previous_valid_until`.
pub async fn rotate(
    tx: &mut TenantTx,
    id: &str,
    new_hash: &str,
    previous_valid_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<ApiKey>> {
    let q = update_scoped(tx, id)
        .value(ApiKeys::PreviousSecretHash, Expr::col(ApiKeys::SecretHash))
        .value(ApiKeys::PreviousValidUntil, previous_valid_until)
        .value(ApiKeys::SecretHash, new_hash)
        .value(ApiKeys::UpdatedAt, now)
        .to_owned();
    if tx.write(&q).await? == 0 {
        return Ok(None);
    }
    get(tx, id).await
}

/// Revokes a live key; `None` if there is no live key with that id.
pub async fn revoke(tx: &mut TenantTx, id: &str, now: DateTime<Utc>) -> Result<Option<ApiKey>> {
    let q = update_scoped(tx, id).value(ApiKeys::RevokedAt, now).value(ApiKeys::UpdatedAt, now).to_owned();
    if tx.write(&q).await? == 0 {
        return Ok(None);
    }
    get(tx, id).await
}

/// Role names used by live keys of the tenant (any environment).
pub async fn role_names_in_use(tx: &mut TenantTx) -> Result<Vec<String>> {
    #[derive(sqlx::FromRow)]
    struct RoleCol {
        role: Option<String>,
    }
    let q = Query::select()
        .column(ApiKeys::Role)
        .from(ApiKeys::Table)
        .and_where(Expr::col(ApiKeys::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(ApiKeys::RevokedAt).is_null())
        .to_owned();
    Ok(tx.tx.fetch_all::<RoleCol>(&q).await?.into_iter().filter_map(|r| r.role).collect())
}
