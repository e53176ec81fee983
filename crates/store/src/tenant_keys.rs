//! Tenant data keys for envelope encryption: each tenant's keys, stored wrapped by a platform
//! master key (the service layer wraps and unwraps; this module only stores bytes).
//!
//! Tenant work goes through the caller's [`TenantTx`], so creating a key is journaled by the
//! caller's action. Master-key rotation is platform work across tenants: it reads every tenant's
//! rows tenant by tenant (inside each tenant's row-level-security scope, like the sealer) and
//! re-wraps each key in its own transaction, journaled in the platform journal.

use azotte_domain::id::TenantId;
use azotte_domain::Principal;
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, OnConflict, Order, Query};
use serde_json::{json, Value};

use crate::exec::Tx;
use crate::journal::{self, Kind, NewEntry, PLATFORM};
use crate::{Db, Result, StoreError, TenantTx};

#[derive(Iden)]
enum TenantKeys {
    Table,
    TenantId,
    Kid,
    WrappedKey,
    MasterKid,
    CreatedAt,
    RewrappedAt,
    RetiredAt,
}

/// A tenant data key as stored: wrapped, never in the clear.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredTenantKey {
    pub tenant_id: String,
    pub kid: String,
    /// The data key sealed under the master key named by `master_kid`.
    pub wrapped_key: Vec<u8>,
    pub master_kid: String,
    pub created_at: DateTime<Utc>,
    pub rewrapped_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

const COLUMNS: [TenantKeys; 7] = [
    TenantKeys::TenantId,
    TenantKeys::Kid,
    TenantKeys::WrappedKey,
    TenantKeys::MasterKid,
    TenantKeys::CreatedAt,
    TenantKeys::RewrappedAt,
    TenantKeys::RetiredAt,
];

fn select_of(tenant: &str) -> sea_query::SelectStatement {
    Query::select()
        .columns(COLUMNS)
        .from(TenantKeys::Table)
        .and_where(Expr::col(TenantKeys::TenantId).eq(tenant))
        .to_owned()
}

/// The tenant's active key, if it has one.
pub async fn active(tx: &mut TenantTx) -> Result<Option<StoredTenantKey>> {
    let q = select_of(&tx.scope().tenant_id().to_string())
        .and_where(Expr::col(TenantKeys::RetiredAt).is_null())
        .to_owned();
    tx.tx.fetch_optional(&q).await
}

/// One of the tenant's keys (active or retired) by kid.
pub async fn by_kid(tx: &mut TenantTx, kid: &str) -> Result<Option<StoredTenantKey>> {
    let q = select_of(&tx.scope().tenant_id().to_string())
        .and_where(Expr::col(TenantKeys::Kid).eq(kid))
        .to_owned();
    tx.tx.fetch_optional(&q).await
}

/// Stores `kid` as the tenant's active key unless the tenant already has one, and returns the
/// active key: the new one, or the one a concurrent transaction created first (the partial
/// unique index `tenant_keys_active_key` lets only one in; the loser's insert does nothing and
/// it re-reads the winner's row). The second value says whether this call created it.
///
/// The insert counts as a write of the caller's transaction, so the caller's action covers
/// it; when that action is already recorded, a `tenant_key.created` outcome is added too.
pub async fn insert_active(
    tx: &mut TenantTx,
    kid: &str,
    wrapped_key: &[u8],
    master_kid: &str,
    now: DateTime<Utc>,
) -> Result<(StoredTenantKey, bool)> {
    let tenant = tx.scope().tenant_id().to_string();
    let q = Query::insert()
        .into_table(TenantKeys::Table)
        .columns([
            TenantKeys::TenantId,
            TenantKeys::Kid,
            TenantKeys::WrappedKey,
            TenantKeys::MasterKid,
            TenantKeys::CreatedAt,
        ])
        .values_panic([
            tenant.clone().into(),
            kid.into(),
            wrapped_key.to_vec().into(),
            master_kid.into(),
            now.into(),
        ])
        .on_conflict(
            OnConflict::column(TenantKeys::TenantId)
                .target_and_where(Expr::col(TenantKeys::RetiredAt).is_null())
                .do_nothing()
                .to_owned(),
        )
        .to_owned();
    let created = tx.write(&q).await? == 1;
    let stored = active(tx).await?.ok_or_else(|| StoreError::Corrupt("tenant key vanished".into()))?;
    if created && tx.action_id.is_some() {
        tx.outcome(
            now,
            "tenant_key.created",
            Some(("tenant_key", kid)),
            json!({"kid": kid, "master_kid": master_kid}),
        )
        .await?;
    }
    Ok((stored, created))
}

/// Every tenant's keys (platform work, for master-key rotation): the tenant registry first,
/// then each tenant's rows inside that tenant's row-level-security scope, in one read
/// transaction. Ordered by tenant, then kid.
pub async fn all(db: &Db) -> Result<Vec<StoredTenantKey>> {
    #[derive(sqlx::FromRow)]
    struct Id {
        id: String,
    }
    let mut tx = db.unscoped_read_tx().await?;
    let q = Query::select()
        .column(crate::tenants::Tenants::Id)
        .from(crate::tenants::Tenants::Table)
        .order_by(crate::tenants::Tenants::Id, Order::Asc)
        .to_owned();
    let tenants: Vec<Id> = tx.fetch_all(&q).await?;
    let mut out = Vec::new();
    for t in tenants {
        let id: TenantId = t.id.parse().map_err(|_| StoreError::Corrupt("tenant id".into()))?;
        crate::tenants::enter_tenant(&mut tx, id).await?;
        let q = select_of(&t.id).order_by(TenantKeys::Kid, Order::Asc).to_owned();
        out.extend(tx.fetch_all::<StoredTenantKey>(&q).await?);
    }
    tx.commit().await?;
    Ok(out)
}

/// A re-wrap to apply: `kid` of `tenant_id`, currently wrapped under `from_master_kid`.
#[derive(Debug, Clone)]
pub struct Rewrap<'a> {
    pub tenant_id: &'a str,
    pub kid: &'a str,
    pub from_master_kid: &'a str,
    pub to_master_kid: &'a str,
    pub wrapped_key: &'a [u8],
}

/// Replaces a key's wrapping in its own transaction, if it is still wrapped under
/// `from_master_kid` (compare-and-set: a concurrent or repeated run never applies twice).
/// Journaled in the platform journal (action `tenant_key.rewrap`, outcome
/// `tenant_key.rewrapped`). Returns whether the row was changed.
pub async fn rewrap(db: &Db, principal: &Principal, r: Rewrap<'_>, now: DateTime<Utc>) -> Result<bool> {
    let tenant: TenantId = r.tenant_id.parse().map_err(|_| StoreError::Corrupt("tenant id".into()))?;
    let mut tx = db.unscoped_tx().await?;
    tx.enter_platform().await?;
    crate::tenants::enter_tenant(&mut tx, tenant).await?;
    let q = Query::update()
        .table(TenantKeys::Table)
        .values([
            (TenantKeys::WrappedKey, r.wrapped_key.to_vec().into()),
            (TenantKeys::MasterKid, r.to_master_kid.into()),
            (TenantKeys::RewrappedAt, now.into()),
        ])
        .and_where(Expr::col(TenantKeys::TenantId).eq(r.tenant_id))
        .and_where(Expr::col(TenantKeys::Kid).eq(r.kid))
        .and_where(Expr::col(TenantKeys::MasterKid).eq(r.from_master_kid))
        .to_owned();
    if tx.execute(&q).await? == 0 {
        return Ok(false);
    }
    let resource = Some(("tenant_key", r.kid));
    let body = json!({"tenant_id": r.tenant_id, "kid": r.kid, "from_master_kid": r.from_master_kid,
        "to_master_kid": r.to_master_kid});
    let action = platform_entry(
        &mut tx,
        Kind::Action,
        "tenant_key.rewrap",
        None,
        principal,
        resource,
        body.clone(),
        now,
    )
    .await?;
    platform_entry(
        &mut tx,
        Kind::Outcome,
        "tenant_key.rewrapped",
        Some(&action),
        principal,
        resource,
        body,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
async fn platform_entry(
    tx: &mut Tx,
    kind: Kind,
    type_: &str,
    causation_id: Option<&str>,
    principal: &Principal,
    resource: Option<(&str, &str)>,
    body: Value,
    now: DateTime<Utc>,
) -> Result<String> {
    journal::insert(
        tx,
        PLATFORM,
        PLATFORM,
        NewEntry {
            kind,
            type_,
            occurred_at: now,
            causation_id,
            correlation_id: None,
            principal,
            mfa: false,
            resource,
            body,
        },
    )
    .await
}
