//! `Idempotency-Key` (DESIGN.md §8, docs/decisions/0006-idempotency-keys.md): the first
//! response to a tenant POST is kept and replayed to retries that send the same key, the same
//! request and come from the same principal.
//!
//! [`begin`] claims the key in one short transaction before the handler runs; [`complete`]
//! keeps the response (body sealed under the tenant data key: it may hold decrypted personal
//! data) or [`release`] frees the key for a response that is not kept. Records live for the
//! configured retention; expired ones count as absent and the worker purges them.
//!
//! Claims of new keys and responses to keep are gathered per tenant environment (decision 0006,
//! "Claims and responses gathered"), in one queue: the requests of a tenant environment claiming
//! keys and keeping responses at the same time share one transaction, one statement for the
//! claims and one for the responses; anything else (a key with a row, a batch that failed) goes
//! one by one.

use std::collections::HashSet;
use std::time::Duration;

use azotte_crypto::tokens::lookup_hash;
use azotte_domain::idempotency::IdempotencyKey;
use azotte_domain::Secret;
use azotte_store::idempotency::{self as store, IdempotencyRow, COMPLETE};
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::gather::{self, Gather, Tally};
use crate::{vault, Ctx, Result, ServiceError};

/// How long a claim stays its request's. A request runs far shorter (PSP calls are bounded);
/// a claim still in flight after this belonged to a process that died, and the next request
/// with the key takes it over.
pub const LOCK: chrono::Duration = chrono::Duration::minutes(5);

/// Default retention of records (`idempotency_retention_secs`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A response as kept and replayed.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    /// The few headers kept (`content-type`, `location`, `retry-after`), lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body as sent: personal data, masked in `Debug`.
    pub body: Secret<Vec<u8>>,
}

/// A key this request holds while its handler runs.
#[derive(Debug)]
pub struct Claim {
    scope: TenantScope,
    key: IdempotencyKey,
    /// The fence: completing or releasing names it.
    locked_until: DateTime<Utc>,
    /// The claim's own random id, in its row.
    claim_id: String,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// The key is this request's: run it, then [`complete`] or [`release`].
    Claimed(Claim),
    /// Answered before: send this again.
    Replay(StoredResponse),
    /// The key was used with another request or by another principal.
    Reused,
    /// The first request with the key is still running.
    InFlight,
}

/// A keyed hash of the request: SHA-256 over method, path and query, and body, then keyed
/// (HMAC) with an installation key and bound to the tenant environment, so a stored
/// fingerprint cannot confirm a guessed body.
pub fn fingerprint(
    ctx: &Ctx,
    scope: &TenantScope,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    let mut h = Sha256::new();
    for part in [method.as_bytes(), b"\0", path_and_query.as_bytes(), b"\0", body] {
        h.update(part);
    }
    let digest = hex::encode(h.finalize());
    lookup_hash(
        &ctx.keys.idempotency,
        &[&scope.tenant_id().to_string(), scope.environment().as_str(), &digest],
    )
}

/// Associated data of a sealed response body: the tenant environment and key (the row), and
/// the status and headers kept beside it, so none of them can be swapped or edited.
fn aad(scope: &TenantScope, key: &IdempotencyKey, status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut aad = format!(
        "azotte:idempotency-response:v1\0{}\0{}\0{}\0{status}\0",
        scope.tenant_id(),
        scope.environment().as_str(),
        key.as_str()
    )
    .into_bytes();
    aad.extend_from_slice(serde_json::json!(headers).to_string().as_bytes());
    aad
}

/// Whole milliseconds: the fence is compared for equality, and PostgreSQL keeps microseconds.
fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Claims `key` for this request, or says why not. Expired records count as absent; a claim
/// whose lock ran out is taken over. A different fingerprint or principal is checked before
/// the state, so a reused key is reported even while its first request runs.
#[tracing::instrument(skip_all, fields(tenant_id = %scope.tenant_id()))]
pub async fn begin(
    ctx: &Ctx,
    scope: &TenantScope,
    key: &IdempotencyKey,
    fingerprint: &str,
    retention: Duration,
) -> Result<Begin> {
    let now = ctx.clock.now();
    let principal = scope.principal().to_string();
    let retention = chrono::Duration::from_std(retention).map_err(ServiceError::internal)?;
    let claim_id = hex::encode(rand::random::<[u8; 16]>());
    let claim = store::Claim {
        key: key.as_str(),
        fingerprint,
        principal_id: &principal,
        locked_until: millis(now + LOCK),
        created_at: now,
        expires_at: now + retention,
        claim_id: &claim_id,
    };
    let claimed = Begin::Claimed(Claim {
        scope: scope.clone(),
        key: key.clone(),
        locked_until: claim.locked_until,
        claim_id: claim_id.clone(),
    });
    // Commonly the key is new: claimed with the others of the tenant environment claimed now.
    let claiming = Claiming {
        key: key.as_str().to_owned(),
        fingerprint: fingerprint.to_owned(),
        principal_id: principal.clone(),
        locked_until: claim.locked_until,
        created_at: now,
        expires_at: claim.expires_at,
        claim_id: claim_id.clone(),
    };
    let together = |batch: Vec<Record>| {
        let (ctx, scope) = (ctx.clone(), scope.clone());
        async move { write_together(&ctx, &scope, batch).await }
    };
    let written =
        ctx.idempotency_records.submit(gather::at(scope), Record::Claim(claiming), AT_ONCE, together);
    match written.await {
        Some(Written::Claim(true)) => return Ok(claimed),
        // The batch's commit went unconfirmed: the row shows whether it was, by its claim id.
        Some(Written::Unconfirmed(fence))
            if claimed_after(ctx, scope, fence, key, &claim_id).await == Some(true) =>
        {
            return Ok(claimed)
        }
        _ => {}
    }
    // Not claimed together (the key has a row, or the batch failed): one by one, which tells.
    let (mut tx, fence) = ctx.db.tenant_tx_unflushed_fenced(scope).await?;
    let outcome = if store::insert(&mut tx, &claim).await? {
        claimed
    } else {
        let row = store::get(&mut tx, key.as_str()).await?;
        // This request's own claim: its unconfirmed commit had happened.
        if row.as_ref().is_some_and(|r| r.state != COMPLETE && own(r, &claim_id)) {
            // Nothing written here: whatever its end does.
            let _ = tx.commit().await;
            return Ok(claimed);
        }
        // `None`: the row may be taken over.
        let decided = match row {
            // Released between the insert and this read: the client may try again at once.
            None => Some(Begin::InFlight),
            Some(row) if row.expires_at <= now => None,
            Some(row) if row.fingerprint != fingerprint || row.principal_id != principal => {
                Some(Begin::Reused)
            }
            Some(row) if row.state == COMPLETE => Some(Begin::Replay(replay(ctx, &mut tx, key, row).await?)),
            Some(row) if row.locked_until.is_some_and(|t| t <= now) => {
                tracing::warn!(
                    key = key.as_str(),
                    "taking over an idempotency key whose request did not finish"
                );
                None
            }
            Some(_) => Some(Begin::InFlight),
        };
        match decided {
            Some(b) => b,
            None if store::take_over(&mut tx, &claim, now).await? => claimed,
            None => Begin::InFlight,
        }
    };
    match tx.commit().await {
        Ok(()) => Ok(outcome),
        // Only a claim wrote anything: the row shows whether it was, by its claim id.
        Err(e) if e.is_commit_unknown() && matches!(outcome, Begin::Claimed(_)) => {
            match claimed_after(ctx, scope, fence, key, &claim_id).await {
                Some(true) => Ok(outcome),
                // Nothing written: 503, the key as it was.
                Some(false) => Err(e.rolled_back().into()),
                // 503; a retry finds the key in flight until the lock runs out, if it was.
                None => {
                    tracing::error!(
                        key = key.as_str(),
                        "whether this idempotency key was claimed is unknown"
                    );
                    Err(e.into())
                }
            }
        }
        Err(e) if e.is_commit_unknown() => Ok(outcome),
        Err(e) => Err(e.into()),
    }
}

/// Whether `row` is of the claim `claim_id`.
fn own(row: &IdempotencyRow, claim_id: &str) -> bool {
    row.claim_id.as_deref() == Some(claim_id)
}

/// The row of `key` as a transaction (holding `fence`) whose commit went unconfirmed left it:
/// read once that transaction has ended. `None`: the database could not tell.
async fn row_after(
    ctx: &Ctx,
    scope: &TenantScope,
    fence: azotte_store::Fence,
    key: &IdempotencyKey,
    what: &str,
) -> Option<Option<IdempotencyRow>> {
    let key = key.as_str().to_owned();
    crate::unconfirmed::read_back(ctx, scope, fence, what, move |tx| {
        Box::pin(async move { store::get(tx, &key).await })
    })
    .await
}

/// Whether the claim `claim_id` of `key`, written by a transaction (holding `fence`) whose
/// commit went unconfirmed, was written. `None`: the database could not tell.
async fn claimed_after(
    ctx: &Ctx,
    scope: &TenantScope,
    fence: azotte_store::Fence,
    key: &IdempotencyKey,
    claim_id: &str,
) -> Option<bool> {
    let row = row_after(ctx, scope, fence, key, "idempotency claim").await?;
    Some(row.is_some_and(|r| r.state != COMPLETE && own(&r, claim_id)))
}

/// Claims and responses kept in one transaction at most.
const AT_ONCE: usize = 64;

/// A claim waiting to be inserted with the others of its tenant environment.
pub(crate) struct Claiming {
    key: String,
    fingerprint: String,
    principal_id: String,
    locked_until: DateTime<Utc>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    claim_id: String,
}

/// A sealed response waiting to be kept with the others of its tenant environment.
pub(crate) struct Keeping {
    key: String,
    locked_until: DateTime<Utc>,
    status: i32,
    headers: Vec<(String, String)>,
    sealed: Vec<u8>,
}

/// A record waiting to be written with the others of its tenant environment: a claim of a new
/// key, or a response to keep.
pub(crate) enum Record {
    Claim(Claiming),
    Keep(Keeping),
}

/// What became of a [`Record`] written together: a claim, whether the key was claimed (`false`:
/// its request claims it alone, which tells why); a response, whether it was kept (`false`: the
/// claim was taken over), `None` when it was not tried together (the request keeps it alone);
/// either, written by a transaction whose commit went unconfirmed (holding the fence): the
/// request reads its row to find out.
pub(crate) enum Written {
    Claim(bool),
    Keep(Option<bool>),
    Unconfirmed(azotte_store::Fence),
}

/// Claims and responses gathered per tenant environment, in one queue: the claims of requests
/// starting and the responses of requests ending at the same moment share a transaction.
pub(crate) type Records = Gather<Record, Written>;

/// Claims, and kept responses, written together (however many at a time, one included), and
/// the transactions that did; every transaction that wrote either.
static CLAIMS: Tally = Tally::new();
static RESPONSES: Tally = Tally::new();
static RECORDS: Tally = Tally::new();

/// How many claims and responses this process wrote gathered, and in how many transactions:
/// `(claims, transactions with claims, responses, transactions with responses, transactions)`
/// (a transaction may write both). Exported in `/metrics`.
pub fn gathered() -> (u64, u64, u64, u64, u64) {
    let ((claims, claim_txs), (responses, response_txs)) = (CLAIMS.get(), RESPONSES.get());
    (claims, claim_txs, responses, response_txs, RECORDS.get().1)
}

/// Writes the claims and responses of `batch` in one transaction, one statement for the claims
/// and one for the responses, each over its distinct keys: each record's answer as [`Written`]
/// gives it. A key repeated in the batch (of two rows with one key, which one was written would
/// not show) and every record of a batch that failed (logged) go one by one.
///
/// A batch that keeps a response commits durably: the request answers once it is kept. Claims
/// alone commit without waiting for the log flush (their loss a retry recovers from, and any
/// durable commit after them flushes them too).
async fn write_together(ctx: &Ctx, scope: &TenantScope, batch: Vec<Record>) -> Vec<Written> {
    let (mut claimed_keys, mut kept_keys) = (HashSet::new(), HashSet::new());
    let (mut claims, mut kept) = (Vec::new(), Vec::new());
    let mut first = Vec::with_capacity(batch.len());
    for r in &batch {
        first.push(match r {
            Record::Claim(c) if claimed_keys.insert(c.key.as_str()) => {
                claims.push(store::Claim {
                    key: &c.key,
                    fingerprint: &c.fingerprint,
                    principal_id: &c.principal_id,
                    locked_until: c.locked_until,
                    created_at: c.created_at,
                    expires_at: c.expires_at,
                    claim_id: &c.claim_id,
                });
                true
            }
            Record::Keep(k) if kept_keys.insert(k.key.as_str()) => {
                let response =
                    store::Completion { status: k.status, headers: &k.headers, sealed_body: &k.sealed };
                kept.push(store::Kept { key: &k.key, locked_until: k.locked_until, response });
                true
            }
            _ => false,
        });
    }
    let mut unconfirmed = None;
    let written: azotte_store::Result<(Vec<String>, Vec<String>)> = async {
        let (mut tx, fence) = if kept.is_empty() {
            ctx.db.tenant_tx_unflushed_fenced(scope).await?
        } else {
            ctx.db.tenant_tx_fenced(scope).await?
        };
        let claimed =
            if claims.is_empty() { Vec::new() } else { store::insert_many(&mut tx, &claims).await? };
        let completed =
            if kept.is_empty() { Vec::new() } else { store::complete_many(&mut tx, &kept).await? };
        if let Err(e) = tx.commit().await {
            if e.is_commit_unknown() {
                unconfirmed = Some(fence);
            }
            return Err(e);
        }
        Ok((claimed, completed))
    }
    .await;
    if let Some(fence) = unconfirmed {
        tracing::warn!("idempotency records' commit unconfirmed; each request reads its row");
        let each = batch.iter().zip(first).map(|(r, first)| match (r, first) {
            (_, true) => Written::Unconfirmed(fence),
            // Not in the statements: its request writes it alone.
            (Record::Claim(_), false) => Written::Claim(false),
            (Record::Keep(_), false) => Written::Keep(None),
        });
        return each.collect();
    }
    let (claimed, completed) = match written {
        Ok((claimed, completed)) => {
            RECORDS.add(claimed.len() + completed.len());
            if !claims.is_empty() {
                CLAIMS.add(claimed.len());
            }
            if !kept.is_empty() {
                RESPONSES.add(completed.len());
            }
            let set = |keys: Vec<String>| keys.into_iter().collect::<HashSet<String>>();
            (Some(set(claimed)), Some(set(completed)))
        }
        Err(e) => {
            tracing::info!(error = %e, "idempotency records not written together; one by one");
            (None, None)
        }
    };
    batch
        .iter()
        .zip(first)
        .map(|(r, first)| match r {
            Record::Claim(c) => {
                Written::Claim(first && claimed.as_ref().is_some_and(|keys| keys.contains(&c.key)))
            }
            Record::Keep(k) => {
                Written::Keep(completed.as_ref().filter(|_| first).map(|keys| keys.contains(&k.key)))
            }
        })
        .collect()
}

async fn replay(
    ctx: &Ctx,
    tx: &mut TenantTx,
    key: &IdempotencyKey,
    row: IdempotencyRow,
) -> Result<StoredResponse> {
    let corrupt = |what: &str| {
        ServiceError::internal(azotte_store::StoreError::Corrupt(format!("idempotency record: {what}")))
    };
    let status = row.response_status.and_then(|s| u16::try_from(s).ok()).ok_or_else(|| corrupt("status"))?;
    let headers = row.response_headers.map(|h| h.0).ok_or_else(|| corrupt("headers"))?;
    let sealed = row.response_body.ok_or_else(|| corrupt("body"))?;
    let body = vault::open(ctx, tx, &sealed, &aad(tx.scope(), key, status, &headers)).await?;
    Ok(StoredResponse { status, headers, body })
}

/// Keeps the response of a claimed request. `false` when the claim was no longer this
/// request's (its lock ran out and another request took the key over).
#[tracing::instrument(skip_all, fields(tenant_id = %claim.scope.tenant_id()))]
pub async fn complete(ctx: &Ctx, claim: Claim, response: &StoredResponse) -> Result<bool> {
    // Commonly the tenant's data key is known: sealed here, kept with the others of the tenant
    // environment kept now.
    if let Some(data_key) = ctx.vault.active_key(claim.scope.tenant_id()) {
        let aad = aad(&claim.scope, &claim.key, response.status, &response.headers);
        let keeping = Keeping {
            key: claim.key.as_str().to_owned(),
            locked_until: claim.locked_until,
            status: i32::from(response.status),
            headers: response.headers.clone(),
            sealed: vault::encrypt(&data_key, response.body.expose(), &aad)?,
        };
        let together = |batch: Vec<Record>| {
            let (ctx, scope) = (ctx.clone(), claim.scope.clone());
            async move { write_together(&ctx, &scope, batch).await }
        };
        let at = gather::at(&claim.scope);
        let written = ctx.idempotency_records.submit(at, Record::Keep(keeping), AT_ONCE, together);
        match written.await {
            Some(Written::Keep(Some(done))) => {
                if !done {
                    taken_over(&claim.key);
                }
                return Ok(done);
            }
            // The batch's commit went unconfirmed: kept if the row is complete under this claim
            // (otherwise kept alone below, which the claim's fence still guards).
            Some(Written::Unconfirmed(fence)) => {
                let row = row_after(ctx, &claim.scope, fence, &claim.key, "idempotency response").await;
                if row.flatten().is_some_and(|r| r.state == COMPLETE && own(&r, &claim.claim_id)) {
                    return Ok(true);
                }
            }
            _ => {}
        }
    }
    let mut tx = ctx.db.tenant_tx(&claim.scope).await?;
    // The first sealed data of a tenant creates its data key, which is journaled: this record is
    // not, so the key's creation gets an action of its own.
    if !ctx.vault.knows_active(claim.scope.tenant_id())
        && azotte_store::tenant_keys::active(&mut tx).await?.is_none()
    {
        tx.action(
            ctx.clock.now(),
            "tenant_key.create",
            None,
            serde_json::json!({"for": "idempotency_record"}),
        )
        .await?;
    }
    let data_key = vault::tenant_key(ctx, &mut tx).await?;
    let aad = aad(&claim.scope, &claim.key, response.status, &response.headers);
    let sealed = vault::encrypt(&data_key, response.body.expose(), &aad)?;
    let done = store::complete(
        &mut tx,
        claim.key.as_str(),
        claim.locked_until,
        &store::Completion {
            status: i32::from(response.status),
            headers: &response.headers,
            sealed_body: &sealed,
        },
    )
    .await?;
    tx.commit().await?;
    if !done {
        taken_over(&claim.key);
    }
    Ok(done)
}

fn taken_over(key: &IdempotencyKey) {
    tracing::warn!(key = key.as_str(), "idempotency key was taken over before its response was kept");
}

/// Frees a claimed key without keeping the response (the request was refused before it did
/// anything, e.g. 401, 403, 429).
pub async fn release(ctx: &Ctx, claim: Claim) -> Result<()> {
    let mut tx = ctx.db.tenant_tx(&claim.scope).await?;
    store::release(&mut tx, claim.key.as_str(), claim.locked_until).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes expired records everywhere; returns how many went (the worker's housekeeping).
pub async fn purge_expired(ctx: &Ctx) -> Result<u64> {
    Ok(store::purge_expired(&ctx.db, ctx.clock.now()).await?)
}
