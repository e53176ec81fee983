//! `Idempotency-Key` records: one row per (tenant, environment, key), claimed atomically by the
//! first request and completed with its response (the service seals the body).
//!
//! These rows are a response cache of the transport, not a change of the tenant's data: they
//! are written without a journal action (the request they guard journals its own), through the
//! transaction directly instead of [`TenantTx::write`]. Every statement is fenced: completing or
//! releasing a claim names the `locked_until` it was claimed with, so a request whose lock ran
//! out and was taken over cannot overwrite the new owner's row.

use chrono::{DateTime, Utc};
use sea_query::{Condition, Expr, Iden, OnConflict, Query};
use sqlx::types::Json;

use crate::{Db, Result, TenantTx};

#[derive(Iden, Clone, Copy)]
enum IdempotencyKeys {
    Table,
    TenantId,
    Environment,
    IdempotencyKey,
    Fingerprint,
    PrincipalId,
    State,
    LockedUntil,
    ResponseStatus,
    ResponseHeaders,
    ResponseBody,
    CreatedAt,
    ExpiresAt,
    ClaimId,
}

/// `state` while the first request runs.
pub const IN_FLIGHT: &str = "in_flight";
/// `state` once the response is stored.
pub const COMPLETE: &str = "complete";

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub idempotency_key: String,
    /// Keyed hash of method, path and query, and body.
    pub fingerprint: String,
    pub principal_id: String,
    /// [`IN_FLIGHT`] or [`COMPLETE`].
    pub state: String,
    /// Set while in flight: until then the claim is its owner's.
    pub locked_until: Option<DateTime<Utc>>,
    pub response_status: Option<i32>,
    /// `(name, value)` pairs of the few headers kept.
    pub response_headers: Option<Json<Vec<(String, String)>>>,
    /// Sealed under the tenant data key.
    pub response_body: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The claim's own random id (none on rows claimed before it was kept).
    pub claim_id: Option<String>,
}

/// What a request claims a key with.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub principal_id: &'a str,
    pub locked_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Random, this claim's alone: how a request whose claim went unconfirmed recognises it.
    pub claim_id: &'a str,
}

/// The response to keep.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    pub status: i32,
    pub headers: &'a [(String, String)],
    pub sealed_body: &'a [u8],
}

fn of_key(tx: &TenantTx, key: &str) -> Condition {
    tx.in_scope(IdempotencyKeys::TenantId, IdempotencyKeys::Environment)
        .add(Expr::col(IdempotencyKeys::IdempotencyKey).eq(key))
}

/// The claim's own row: still in flight under the lock it was claimed with.
fn owned(tx: &TenantTx, key: &str, locked_until: DateTime<Utc>) -> Condition {
    of_key(tx, key)
        .add(Expr::col(IdempotencyKeys::State).eq(IN_FLIGHT))
        .add(Expr::col(IdempotencyKeys::LockedUntil).eq(locked_until))
}

/// Inserts an in-flight row unless the key has one: `true` when this call claimed it. One
/// statement, atomic on both backends (a concurrent insert of the same key waits for the first
/// to commit, then does nothing).
pub async fn insert(tx: &mut TenantTx, c: &Claim<'_>) -> Result<bool> {
    Ok(tx.tx.execute(&claims(tx, std::slice::from_ref(c))).await? == 1)
}

/// [`insert`] for several keys in one statement: the keys this call claimed. The keys must be
/// distinct (of two rows with one key, which one was inserted would not show).
pub async fn insert_many(tx: &mut TenantTx, claimed: &[Claim<'_>]) -> Result<Vec<String>> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let q = claims(tx, claimed).returning_col(IdempotencyKeys::IdempotencyKey).to_owned();
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(k,)| k).collect())
}

fn claims(tx: &TenantTx, claimed: &[Claim<'_>]) -> sea_query::InsertStatement {
    let mut q = Query::insert();
    q.into_table(IdempotencyKeys::Table)
        .columns([
            IdempotencyKeys::TenantId,
            IdempotencyKeys::Environment,
            IdempotencyKeys::IdempotencyKey,
            IdempotencyKeys::Fingerprint,
            IdempotencyKeys::PrincipalId,
            IdempotencyKeys::State,
            IdempotencyKeys::LockedUntil,
            IdempotencyKeys::CreatedAt,
            IdempotencyKeys::ExpiresAt,
            IdempotencyKeys::ClaimId,
        ])
        .on_conflict(
            OnConflict::columns([
                IdempotencyKeys::TenantId,
                IdempotencyKeys::Environment,
                IdempotencyKeys::IdempotencyKey,
            ])
            .do_nothing()
            .to_owned(),
        );
    let (tenant, environment) = (tx.scope().tenant_id().to_string(), tx.scope().environment().as_str());
    for c in claimed {
        q.values_panic([
            tenant.clone().into(),
            environment.into(),
            c.key.into(),
            c.fingerprint.into(),
            c.principal_id.into(),
            IN_FLIGHT.into(),
            c.locked_until.into(),
            c.created_at.into(),
            c.expires_at.into(),
            c.claim_id.into(),
        ]);
    }
    q
}

/// The key's row, whatever its state or age.
pub async fn get(tx: &mut TenantTx, key: &str) -> Result<Option<IdempotencyRow>> {
    let q = Query::select()
        .columns([
            IdempotencyKeys::IdempotencyKey,
            IdempotencyKeys::Fingerprint,
            IdempotencyKeys::PrincipalId,
            IdempotencyKeys::State,
            IdempotencyKeys::LockedUntil,
            IdempotencyKeys::ResponseStatus,
            IdempotencyKeys::ResponseHeaders,
            IdempotencyKeys::ResponseBody,
            IdempotencyKeys::CreatedAt,
            IdempotencyKeys::ExpiresAt,
            IdempotencyKeys::ClaimId,
        ])
        .from(IdempotencyKeys::Table)
        .cond_where(of_key(tx, key))
        .to_owned();
    tx.tx.fetch_optional(&q).await
}

/// Claims a key whose row has expired (`now` past `expires_at`: treated as absent) or whose
/// in-flight lock ran out (its process died): the row starts over as `c`. `true` when this call
/// took it; a concurrent taker re-checks the condition on the row the winner left and gets
/// `false`.
pub async fn take_over(tx: &mut TenantTx, c: &Claim<'_>, now: DateTime<Utc>) -> Result<bool> {
    let stale = Condition::any().add(Expr::col(IdempotencyKeys::ExpiresAt).lte(now)).add(
        Condition::all()
            .add(Expr::col(IdempotencyKeys::State).eq(IN_FLIGHT))
            .add(Expr::col(IdempotencyKeys::LockedUntil).lte(now)),
    );
    let q = Query::update()
        .table(IdempotencyKeys::Table)
        .values([
            (IdempotencyKeys::Fingerprint, c.fingerprint.into()),
            (IdempotencyKeys::PrincipalId, c.principal_id.into()),
            (IdempotencyKeys::State, IN_FLIGHT.into()),
            (IdempotencyKeys::LockedUntil, c.locked_until.into()),
            (IdempotencyKeys::ResponseStatus, Option::<i32>::None.into()),
            (IdempotencyKeys::ResponseHeaders, Option::<serde_json::Value>::None.into()),
            (IdempotencyKeys::ResponseBody, Option::<Vec<u8>>::None.into()),
            (IdempotencyKeys::CreatedAt, c.created_at.into()),
            (IdempotencyKeys::ExpiresAt, c.expires_at.into()),
            (IdempotencyKeys::ClaimId, c.claim_id.into()),
        ])
        .cond_where(of_key(tx, c.key).add(stale))
        .to_owned();
    Ok(tx.tx.execute(&q).await? == 1)
}

/// Stores the response of the claim made with `locked_until`; `false` when the row is no
/// longer that claim's (taken over after its lock ran out).
pub async fn complete(
    tx: &mut TenantTx,
    key: &str,
    locked_until: DateTime<Utc>,
    r: &Completion<'_>,
) -> Result<bool> {
    let q = Query::update()
        .table(IdempotencyKeys::Table)
        .values([
            (IdempotencyKeys::State, COMPLETE.into()),
            (IdempotencyKeys::LockedUntil, Option::<DateTime<Utc>>::None.into()),
            (IdempotencyKeys::ResponseStatus, r.status.into()),
            (IdempotencyKeys::ResponseHeaders, serde_json::json!(r.headers).into()),
            (IdempotencyKeys::ResponseBody, r.sealed_body.to_vec().into()),
        ])
        .cond_where(owned(tx, key, locked_until))
        .to_owned();
    Ok(tx.tx.execute(&q).await? == 1)
}

/// A response to keep for the claim of `key` made with `locked_until`.
#[derive(Debug, Clone)]
pub struct Kept<'a> {
    pub key: &'a str,
    pub locked_until: DateTime<Utc>,
    pub response: Completion<'a>,
}

/// [`complete`] for several claims in one statement: the keys whose responses were stored
/// (the others were no longer their claim's). The keys must be distinct.
pub async fn complete_many(tx: &mut TenantTx, kept: &[Kept<'_>]) -> Result<Vec<String>> {
    if kept.is_empty() {
        return Ok(Vec::new());
    }
    let by_key = |value: &dyn Fn(&Kept<'_>) -> sea_query::SimpleExpr, otherwise: IdempotencyKeys| {
        crate::case_by_id(
            IdempotencyKeys::IdempotencyKey,
            kept,
            |k| k.key.to_owned(),
            value,
            Expr::col(otherwise).into(),
        )
    };
    let q = Query::update()
        .table(IdempotencyKeys::Table)
        .values([
            (IdempotencyKeys::State, COMPLETE.into()),
            (IdempotencyKeys::LockedUntil, Option::<DateTime<Utc>>::None.into()),
            (
                IdempotencyKeys::ResponseStatus,
                by_key(&|k| k.response.status.into(), IdempotencyKeys::ResponseStatus),
            ),
            (
                IdempotencyKeys::ResponseHeaders,
                by_key(&|k| serde_json::json!(k.response.headers).into(), IdempotencyKeys::ResponseHeaders),
            ),
            (
                IdempotencyKeys::ResponseBody,
                by_key(&|k| k.response.sealed_body.to_vec().into(), IdempotencyKeys::ResponseBody),
            ),
        ])
        .cond_where(tx.in_scope(IdempotencyKeys::TenantId, IdempotencyKeys::Environment))
        .and_where(Expr::col(IdempotencyKeys::IdempotencyKey).is_in(kept.iter().map(|k| k.key)))
        .and_where(Expr::col(IdempotencyKeys::State).eq(IN_FLIGHT))
        // Each row still its claim's: the fence it was claimed with.
        .and_where(
            Expr::col(IdempotencyKeys::LockedUntil)
                .eq(by_key(&|k| k.locked_until.into(), IdempotencyKeys::LockedUntil)),
        )
        .returning_col(IdempotencyKeys::IdempotencyKey)
        .to_owned();
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(k,)| k).collect())
}

/// Deletes the claim made with `locked_until`, for a response that is not kept: the key is
/// free again.
pub async fn release(tx: &mut TenantTx, key: &str, locked_until: DateTime<Utc>) -> Result<bool> {
    let q = Query::delete()
        .from_table(IdempotencyKeys::Table)
        .cond_where(owned(tx, key, locked_until))
        .to_owned();
    Ok(tx.tx.execute(&q).await? == 1)
}

/// Deletes every expired record of every tenant environment (suspended tenants included), one
/// transaction per tenant environment; returns how many went. Platform upkeep run by the worker.
pub async fn purge_expired(db: &Db, now: DateTime<Utc>) -> Result<u64> {
    let mut purged = 0;
    for (tenant_id, environment) in crate::seal::chains(db, None).await? {
        if tenant_id == crate::journal::PLATFORM {
            continue;
        }
        let mut tx = db.unscoped_tx().await?;
        tx.enter_environment(&tenant_id, &environment).await?;
        let q = Query::delete()
            .from_table(IdempotencyKeys::Table)
            .and_where(Expr::col(IdempotencyKeys::TenantId).eq(tenant_id.as_str()))
            .and_where(Expr::col(IdempotencyKeys::Environment).eq(environment.as_str()))
            .and_where(Expr::col(IdempotencyKeys::ExpiresAt).lte(now))
            .to_owned();
        purged += tx.execute(&q).await?;
        tx.commit().await?;
    }
    Ok(purged)
}
