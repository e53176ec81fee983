//! PSP accounts of storefronts. Credentials are an opaque ciphertext here; the service layer
//! seals and opens them.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};
use sqlx::types::Json;

use crate::{Result, StoreError, TenantTx};

#[derive(Iden, Clone, Copy)]
enum PspAccounts {
    Table,
    TenantId,
    Environment,
    Id,
    StorefrontId,
    Connector,
    DisplayName,
    Mode,
    Credentials,
    ApiSecretFingerprint,
    ApiSecretLast4,
    WebhookSecretFingerprint,
    WebhookSecretLast4,
    Priority,
    Weight,
    Currencies,
    Channels,
    Status,
    CreatedAt,
    UpdatedAt,
}

const COLUMNS: [PspAccounts; 18] = [
    PspAccounts::Id,
    PspAccounts::StorefrontId,
    PspAccounts::Connector,
    PspAccounts::DisplayName,
    PspAccounts::Mode,
    PspAccounts::Credentials,
    PspAccounts::ApiSecretFingerprint,
    PspAccounts::ApiSecretLast4,
    PspAccounts::WebhookSecretFingerprint,
    PspAccounts::WebhookSecretLast4,
    PspAccounts::Priority,
    PspAccounts::Weight,
    PspAccounts::Currencies,
    PspAccounts::Channels,
    PspAccounts::Status,
    PspAccounts::CreatedAt,
    PspAccounts::UpdatedAt,
    PspAccounts::Environment,
];

/// A PSP account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PspAccount {
    pub id: String,
    pub storefront_id: String,
    /// `sandbox`, `stripe`.
    pub connector: String,
    pub display_name: String,
    /// `test` or `live`.
    pub mode: String,
    /// The sealed credentials (None when the connector needs none).
    pub credentials: Option<Vec<u8>>,
    pub api_secret_fingerprint: Option<String>,
    pub api_secret_last4: Option<String>,
    pub webhook_secret_fingerprint: Option<String>,
    pub webhook_secret_last4: Option<String>,
    /// Lower is tried first.
    pub priority: i32,
    /// Share among accounts of the same priority.
    pub weight: i32,
    pub currencies: Vec<String>,
    pub channels: Vec<String>,
    /// `active` or `inactive`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    storefront_id: String,
    connector: String,
    display_name: String,
    mode: String,
    credentials: Option<Vec<u8>>,
    api_secret_fingerprint: Option<String>,
    api_secret_last4: Option<String>,
    webhook_secret_fingerprint: Option<String>,
    webhook_secret_last4: Option<String>,
    priority: i32,
    weight: i32,
    currencies: Json<Vec<String>>,
    channels: Json<Vec<String>>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for PspAccount {
    fn from(r: Row) -> Self {
        PspAccount {
            id: r.id,
            storefront_id: r.storefront_id,
            connector: r.connector,
            display_name: r.display_name,
            mode: r.mode,
            credentials: r.credentials,
            api_secret_fingerprint: r.api_secret_fingerprint,
            api_secret_last4: r.api_secret_last4,
            webhook_secret_fingerprint: r.webhook_secret_fingerprint,
            webhook_secret_last4: r.webhook_secret_last4,
            priority: r.priority,
            weight: r.weight,
            currencies: r.currencies.0,
            channels: r.channels.0,
            status: r.status,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn values(a: &PspAccount) -> Vec<sea_query::SimpleExpr> {
    vec![
        a.id.clone().into(),
        a.storefront_id.clone().into(),
        a.connector.clone().into(),
        a.display_name.clone().into(),
        a.mode.clone().into(),
        a.credentials.clone().into(),
        a.api_secret_fingerprint.clone().into(),
        a.api_secret_last4.clone().into(),
        a.webhook_secret_fingerprint.clone().into(),
        a.webhook_secret_last4.clone().into(),
        a.priority.into(),
        a.weight.into(),
        serde_json::json!(a.currencies).into(),
        serde_json::json!(a.channels).into(),
        a.status.clone().into(),
        a.created_at.into(),
        a.updated_at.into(),
    ]
}

/// Adds an account.
pub async fn insert(tx: &mut TenantTx, a: &PspAccount) -> Result<()> {
    let mut cols = COLUMNS.to_vec();
    cols.push(PspAccounts::TenantId);
    let mut v = values(a);
    v.push(tx.scope().environment().as_str().into());
    v.push(tx.scope().tenant_id().to_string().into());
    let q = Query::insert().into_table(PspAccounts::Table).columns(cols).values_panic(v).to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Writes every mutable field of an account (not its id, storefront, connector or mode).
pub async fn update(tx: &mut TenantTx, a: &PspAccount) -> Result<()> {
    let v = values(a);
    let q = Query::update()
        .table(PspAccounts::Table)
        .values(
            COLUMNS[3..17]
                .iter()
                .copied()
                .zip(v.into_iter().skip(3))
                .filter(|(c, _)| !matches!(c, PspAccounts::Mode)),
        )
        .cond_where(tx.in_scope(PspAccounts::TenantId, PspAccounts::Environment))
        .and_where(Expr::col(PspAccounts::Id).eq(a.id.clone()))
        .to_owned();
    if tx.write(&q).await? != 1 {
        return Err(StoreError::Corrupt(format!("PSP account {} vanished during update", a.id)));
    }
    Ok(())
}

fn select(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(COLUMNS[..17].to_vec())
        .from(PspAccounts::Table)
        .cond_where(tx.in_scope(PspAccounts::TenantId, PspAccounts::Environment))
        .to_owned()
}

/// One account of a storefront.
pub async fn get(tx: &mut TenantTx, storefront_id: &str, id: &str) -> Result<Option<PspAccount>> {
    let q = select(tx)
        .and_where(Expr::col(PspAccounts::StorefrontId).eq(storefront_id))
        .and_where(Expr::col(PspAccounts::Id).eq(id))
        .to_owned();
    Ok(tx.tx.fetch_optional::<Row>(&q).await?.map(Into::into))
}

/// The accounts of `ids` that exist, whatever their storefronts (in no particular order).
pub async fn by_ids(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<PspAccount>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select(tx).and_where(Expr::col(PspAccounts::Id).is_in(ids.iter().cloned())).to_owned();
    Ok(tx.tx.fetch_all::<Row>(&q).await?.into_iter().map(Into::into).collect())
}

/// One account by id, whatever its storefront (webhook URLs name the account alone).
pub async fn by_id(tx: &mut TenantTx, id: &str) -> Result<Option<PspAccount>> {
    let q = select(tx).and_where(Expr::col(PspAccounts::Id).eq(id)).to_owned();
    Ok(tx.tx.fetch_optional::<Row>(&q).await?.map(Into::into))
}

/// The accounts of a storefront, by priority then id.
pub async fn of_storefront(tx: &mut TenantTx, storefront_id: &str) -> Result<Vec<PspAccount>> {
    let q = select(tx)
        .and_where(Expr::col(PspAccounts::StorefrontId).eq(storefront_id))
        .order_by(PspAccounts::Priority, Order::Asc)
        .order_by(PspAccounts::Id, Order::Asc)
        .limit(1000)
        .to_owned();
    Ok(tx.tx.fetch_all::<Row>(&q).await?.into_iter().map(Into::into).collect())
}

/// Removes an account.
pub async fn delete(tx: &mut TenantTx, storefront_id: &str, id: &str) -> Result<bool> {
    let q = Query::delete()
        .from_table(PspAccounts::Table)
        .cond_where(tx.in_scope(PspAccounts::TenantId, PspAccounts::Environment))
        .and_where(Expr::col(PspAccounts::StorefrontId).eq(storefront_id))
        .and_where(Expr::col(PspAccounts::Id).eq(id))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}
