//! The sealer's storage side: finding the entries not sealed yet, appending seals and
//! checkpoints, and reading a chain back for verification or export.
//!
//! On PostgreSQL every new entry gets a row in `journal_pending` (a trigger, in the writer's
//! statement). The sealer reads a chain's pending entries, hashes them onto the chain, appends
//! the seals and deletes those rows, so a pass touches only what is new; each (tenant,
//! environment) chain is sealed by one sealer at a time, in one transaction under an advisory
//! lock that writers never take.
//!
//! SQLite has one writer at a time, so an entry's log position is its commit order and one mark
//! says how far the journal is sealed ([`seal_log`]): writers write nothing but the entry. The
//! reading and hashing happen in a read transaction beside the writers, and the write lock is
//! taken only to append the seals and move the mark.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use azotte_crypto::chain::{self, Checkpoint, EntryRecord, SealedEntry, Unsealed};
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::{Db, Result, StoreError};

#[derive(Iden)]
enum JournalPending {
    Table,
    OwnerTenantId,
    OwnerEnvironment,
    EntryId,
    EntryHash,
    MoreIds,
    MoreHashes,
}

#[derive(Iden)]
enum JournalEntries {
    Table,
    TenantId,
    Environment,
    Id,
    OccurredAt,
}

#[derive(Iden)]
enum JournalSeals {
    Table,
    TenantId,
    Environment,
    Seq,
    EntryId,
    EntryHash,
    ChainHash,
}

#[derive(Iden)]
enum JournalCheckpoints {
    Table,
    TenantId,
    Environment,
    Seq,
    ChainHash,
    SignedAt,
    Kid,
    Signature,
}

#[derive(Iden)]
enum JournalKeys {
    Table,
    Kid,
    PrivateKey,
    PublicKey,
    CreatedAt,
}

/// Up to `limit` chains that have entries waiting for their seal: on the work list
/// (PostgreSQL), or after the seal mark (SQLite).
pub async fn pending_chains(db: &Db, limit: u64) -> Result<Vec<(String, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        owner_tenant_id: String,
        owner_environment: String,
    }
    let mut tx = db.unscoped_read_tx().await?;
    let rows = match &mut tx {
        Tx::Sqlite(t) => {
            sqlx::query_as::<_, Row>(
                "SELECT DISTINCT tenant_id AS owner_tenant_id, environment AS owner_environment \
                 FROM journal_entries \
                 WHERE pos > COALESCE((SELECT pos FROM journal_seal_mark WHERE id = 1), 0) LIMIT ?1",
            )
            .bind(limit as i64)
            .fetch_all(t.conn()?)
            .await?
        }
        Tx::Postgres(t) => {
            // One probe of the work list's key per chain, each from just before the chain after
            // it (a loose index scan, backwards): a chain's first row met is its newest, live
            // while the chain has work, so the probe does not walk the rows sealed and deleted
            // before (the oldest ids; autovacuum clears them once a minute at best), which
            // `SELECT DISTINCT` over the table did on every tick. Chains come in descending
            // key order.
            sqlx::query_as::<_, Row>(
                "WITH RECURSIVE c (t, e) AS ( \
                     (SELECT owner_tenant_id, owner_environment FROM journal_pending \
                      ORDER BY owner_tenant_id DESC, owner_environment DESC, entry_id DESC LIMIT 1) \
                     UNION ALL \
                     SELECT n.t, n.e FROM c, LATERAL (SELECT p.owner_tenant_id, p.owner_environment \
                         FROM journal_pending p WHERE (p.owner_tenant_id, p.owner_environment) < (c.t, c.e) \
                         ORDER BY p.owner_tenant_id DESC, p.owner_environment DESC, p.entry_id DESC LIMIT 1) \
                         AS n (t, e)) \
                 SELECT t AS owner_tenant_id, e AS owner_environment FROM c LIMIT $1",
            )
            .bind(limit as i64)
            .fetch_all(t.conn()?)
            .await?
        }
    };
    tx.commit().await?;
    Ok(rows.into_iter().map(|r| (r.owner_tenant_id, r.owner_environment)).collect())
}

/// A journal row with every column, for hashing.
#[derive(Clone, sqlx::FromRow)]
struct RawEntry {
    tenant_id: String,
    environment: String,
    id: String,
    kind: String,
    #[sqlx(rename = "type")]
    type_: String,
    occurred_at: DateTime<Utc>,
    correlation_id: String,
    causation_id: Option<String>,
    principal_kind: String,
    principal_id: String,
    principal_roles: Json<Vec<String>>,
    mfa: bool,
    source: String,
    request_id: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    body: String,
}

impl RawEntry {
    /// The record that is hashed: every column, times as RFC 3339 UTC microseconds.
    fn record(self) -> EntryRecord {
        EntryRecord {
            id: self.id,
            tenant_id: self.tenant_id,
            environment: self.environment,
            kind: self.kind,
            type_: self.type_,
            occurred_at: self.occurred_at.format(crate::journal::OCCURRED_AT_HASHED).to_string(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            principal_kind: self.principal_kind,
            principal_id: self.principal_id,
            principal_roles: self.principal_roles.0,
            mfa: self.mfa,
            source: self.source,
            request_id: self.request_id,
            client_ip: self.client_ip,
            user_agent: self.user_agent,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            body: self.body,
        }
    }
}

const ENTRY_COLUMNS: &str = "tenant_id, environment, id, kind, type, occurred_at, correlation_id, causation_id, \
     principal_kind, principal_id, principal_roles, mfa, source, request_id, client_ip, user_agent, resource_type, \
     resource_id, body";

/// SQLite: every column of an entry but `occurred_at` as one JSON array, in [`Packed`]'s order,
/// for the sealer reading the log ([`plan_log`]). sqlx copies each value of a row out of SQLite
/// into an allocation of its own and frees it on the other side of its connection thread; one
/// value per entry instead of eighteen was most of what reading the log cost. Every text column
/// is cast to text and `mfa` to an integer, as sqlx's own decoding reads them, so an entry is
/// hashed from the same values as when verification reads it column by column.
const PACKED_COLUMNS: &str = "json_array(CAST(tenant_id AS TEXT), CAST(environment AS TEXT), \
     CAST(id AS TEXT), CAST(kind AS TEXT), CAST(type AS TEXT), CAST(correlation_id AS TEXT), \
     CAST(causation_id AS TEXT), CAST(principal_kind AS TEXT), CAST(principal_id AS TEXT), \
     CAST(principal_roles AS TEXT), CAST(mfa AS INTEGER), CAST(source AS TEXT), \
     CAST(request_id AS TEXT), CAST(client_ip AS TEXT), CAST(user_agent AS TEXT), \
     CAST(resource_type AS TEXT), CAST(resource_id AS TEXT), CAST(body AS TEXT))";

/// An entry read as [`PACKED_COLUMNS`] (a JSON array decodes into a struct field by field).
#[derive(serde::Deserialize)]
struct Packed {
    tenant_id: String,
    environment: String,
    id: String,
    kind: String,
    type_: String,
    correlation_id: String,
    causation_id: Option<String>,
    principal_kind: String,
    principal_id: String,
    principal_roles: String,
    mfa: i64,
    source: String,
    request_id: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    body: String,
}

impl Packed {
    /// The entry, decoded as sqlx decodes the columns (`mfa` non-zero, the roles as JSON text).
    fn entry(packed: &str, occurred_at: DateTime<Utc>) -> Result<RawEntry> {
        let bad = |e: serde_json::Error| StoreError::Corrupt(format!("journal entry read for sealing: {e}"));
        let p: Packed = serde_json::from_str(packed).map_err(bad)?;
        Ok(RawEntry {
            tenant_id: p.tenant_id,
            environment: p.environment,
            id: p.id,
            kind: p.kind,
            type_: p.type_,
            occurred_at,
            correlation_id: p.correlation_id,
            causation_id: p.causation_id,
            principal_kind: p.principal_kind,
            principal_id: p.principal_id,
            principal_roles: Json(serde_json::from_str(&p.principal_roles).map_err(bad)?),
            mfa: p.mfa != 0,
            source: p.source,
            request_id: p.request_id,
            client_ip: p.client_ip,
            user_agent: p.user_agent,
            resource_type: p.resource_type,
            resource_id: p.resource_id,
            body: p.body,
        })
    }
}

async fn enter(tx: &mut Tx, tenant: &str) -> Result<()> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT set_config('azotte.tenant_id', $1, true)")
            .bind(tenant)
            .execute(t.conn()?)
            .await?;
    }
    Ok(())
}

/// Up to `limit` entries of a chain (id and time) after the id `after`, in id order: one range
/// of the primary key.
async fn entry_page(
    tx: &mut Tx,
    tenant: &str,
    env: &str,
    after: &str,
    limit: u64,
) -> Result<Vec<(String, DateTime<Utc>)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        occurred_at: DateTime<Utc>,
    }
    let q = Query::select()
        .columns([JournalEntries::Id, JournalEntries::OccurredAt])
        .from(JournalEntries::Table)
        .and_where(Expr::col(JournalEntries::TenantId).eq(tenant))
        .and_where(Expr::col(JournalEntries::Environment).eq(env))
        .and_where(Expr::col(JournalEntries::Id).gt(after))
        .order_by(JournalEntries::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    Ok(tx.fetch_all::<Row>(&q).await?.into_iter().map(|r| (r.id, r.occurred_at)).collect())
}

/// The ids of the chain's sealed entries whose id lies in `lo..=hi`: one range of the seals'
/// unique key on the entry.
async fn sealed_ids_between(
    tx: &mut Tx,
    tenant: &str,
    env: &str,
    lo: &str,
    hi: &str,
) -> Result<HashSet<String>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        entry_id: String,
    }
    let q = Query::select()
        .column(JournalSeals::EntryId)
        .from(JournalSeals::Table)
        .and_where(Expr::col(JournalSeals::TenantId).eq(tenant))
        .and_where(Expr::col(JournalSeals::Environment).eq(env))
        .and_where(Expr::col(JournalSeals::EntryId).gte(lo))
        .and_where(Expr::col(JournalSeals::EntryId).lte(hi))
        .to_owned();
    Ok(tx.fetch_all::<Row>(&q).await?.into_iter().map(|r| r.entry_id).collect())
}

/// One row of a chain's work list: an entry and, when the writer gave it, its hash in hex; and
/// the other entries of the same transaction and chain, with theirs (migration 0031).
#[derive(sqlx::FromRow)]
struct PendingRow {
    entry_id: String,
    entry_hash: Option<String>,
    more_ids: Option<Vec<String>>,
    more_hashes: Option<Vec<String>>,
}

impl PendingRow {
    /// Every entry the row lists, with its hash when given.
    fn entries(self) -> impl Iterator<Item = (String, Option<String>)> {
        let hashes = self.more_hashes.unwrap_or_default();
        let more = self
            .more_ids
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(move |(i, id)| (id, hashes.get(i).cloned()));
        std::iter::once((self.entry_id, self.entry_hash)).chain(more)
    }
}

/// Up to `limit` rows of a chain's work list, in order of their (first) entry id, from `from` on
/// if given. One table, no join: the plan cannot degrade into a scan of the chain, whatever the
/// planner's statistics.
async fn pending_ids(
    tx: &mut Tx,
    tenant: &str,
    env: &str,
    from: Option<&str>,
    limit: u64,
) -> Result<Vec<PendingRow>> {
    let mut q = Query::select()
        .columns([
            JournalPending::EntryId,
            JournalPending::EntryHash,
            JournalPending::MoreIds,
            JournalPending::MoreHashes,
        ])
        .from(JournalPending::Table)
        .and_where(Expr::col(JournalPending::OwnerTenantId).eq(tenant))
        .and_where(Expr::col(JournalPending::OwnerEnvironment).eq(env))
        .order_by(JournalPending::EntryId, Order::Asc)
        .limit(limit)
        .to_owned();
    if let Some(from) = from {
        q.and_where(Expr::col(JournalPending::EntryId).gte(from));
    }
    let Tx::Postgres(t) = tx else {
        return Err(StoreError::Corrupt("a work-list pass is PostgreSQL's".into()));
    };
    use sea_query_binder::SqlxBinder;
    let (sql, values) = q.build_sqlx(sea_query::PostgresQueryBuilder);
    Ok(sqlx::query_as_with::<_, PendingRow, _>(&sql, values).fetch_all(t.conn()?).await?)
}

/// Which of `ids` (ascending) have a seal already (PostgreSQL): probes of the seals' unique key
/// on the entry, bounded by the lowest and highest id.
async fn sealed_among(tx: &mut Tx, tenant: &str, env: &str, ids: &[String]) -> Result<HashSet<String>> {
    let (Some(lo), Some(hi)) = (ids.first(), ids.last()) else {
        return Ok(Default::default());
    };
    let Tx::Postgres(t) = tx else {
        return Err(StoreError::Corrupt("a work-list pass is PostgreSQL's".into()));
    };
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT entry_id FROM journal_seals WHERE tenant_id = $1 AND environment = $2 \
         AND entry_id >= $3 AND entry_id <= $4 AND entry_id = ANY($5)",
    )
    .bind(tenant)
    .bind(env)
    .bind(lo)
    .bind(hi)
    .bind(ids)
    .fetch_all(t.conn()?)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Entries of a chain by id, in id order; with `unsealed_only`, only those that have no seal
/// yet.
///
/// Both lookups are also bounded by the lowest and highest id asked for. Ids sort by time, so
/// that range holds only the entries (and seals) written around those: on PostgreSQL, a table
/// too young to have statistics makes the planner believe a chain has one row and filter the
/// whole chain with the id list (seconds at 20,000 entries, growing); the range keeps the scan
/// to the range whatever the plan.
async fn entries_by_id(
    tx: &mut Tx,
    tenant: &str,
    env: &str,
    ids: &[String],
    unsealed_only: bool,
) -> Result<Vec<RawEntry>> {
    let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(Vec::new());
    };
    let unsealed = if unsealed_only {
        " AND e.id NOT IN (SELECT s.entry_id FROM journal_seals s WHERE s.tenant_id = $1 \
           AND s.environment = $2 AND s.entry_id >= $3 AND s.entry_id <= $4)"
    } else {
        ""
    };
    let sql = |list: &str| {
        format!(
            "SELECT {ENTRY_COLUMNS} FROM journal_entries e WHERE e.tenant_id = $1 AND e.environment = $2 \
             AND e.id >= $3 AND e.id <= $4 AND e.id {list}{unsealed} ORDER BY e.id"
        )
    };
    Ok(match tx {
        Tx::Sqlite(t) => {
            let list = (0..ids.len()).map(|i| format!("${}", i + 5)).collect::<Vec<_>>().join(", ");
            let sql = sql(&format!("IN ({list})"));
            let mut q = sqlx::query_as(&sql).bind(tenant).bind(env).bind(lo).bind(hi);
            for id in ids {
                q = q.bind(id);
            }
            q.fetch_all(t.conn()?).await?
        }
        Tx::Postgres(t) => {
            // One array: one statement text for any number of ids, prepared once per connection.
            static SQL: [OnceLock<String>; 2] = [const { OnceLock::new() }; 2];
            let sql = SQL[usize::from(unsealed_only)].get_or_init(|| sql("= ANY($5)"));
            sqlx::query_as(sql)
                .bind(tenant)
                .bind(env)
                .bind(lo)
                .bind(hi)
                .bind(ids)
                .fetch_all(t.conn()?)
                .await?
        }
    })
}

#[derive(sqlx::FromRow)]
struct SealRow {
    seq: i64,
    entry_id: String,
    entry_hash: String,
    chain_hash: String,
}

async fn seals(tx: &mut Tx, tenant: &str, env: &str, after: i64, limit: u64) -> Result<Vec<SealRow>> {
    let q = Query::select()
        .columns([JournalSeals::Seq, JournalSeals::EntryId, JournalSeals::EntryHash, JournalSeals::ChainHash])
        .from(JournalSeals::Table)
        .and_where(Expr::col(JournalSeals::TenantId).eq(tenant))
        .and_where(Expr::col(JournalSeals::Environment).eq(env))
        .and_where(Expr::col(JournalSeals::Seq).gt(after))
        .order_by(JournalSeals::Seq, Order::Asc)
        .limit(limit)
        .to_owned();
    tx.fetch_all::<SealRow>(&q).await
}

async fn last_seal(tx: &mut Tx, tenant: &str, env: &str) -> Result<Option<SealRow>> {
    let q = Query::select()
        .columns([JournalSeals::Seq, JournalSeals::EntryId, JournalSeals::EntryHash, JournalSeals::ChainHash])
        .from(JournalSeals::Table)
        .and_where(Expr::col(JournalSeals::TenantId).eq(tenant))
        .and_where(Expr::col(JournalSeals::Environment).eq(env))
        .order_by(JournalSeals::Seq, Order::Desc)
        .limit(1)
        .to_owned();
    tx.fetch_optional::<SealRow>(&q).await
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    seq: i64,
    chain_hash: String,
    signed_at: String,
    kid: String,
    signature: String,
}

async fn checkpoints_of(tx: &mut Tx, tenant: &str, env: &str) -> Result<Vec<Checkpoint>> {
    checkpoints_query(tx, tenant, env, false).await
}

/// A chain's checkpoints, oldest first; or only its newest one when `last_only`.
async fn checkpoints_query(tx: &mut Tx, tenant: &str, env: &str, last_only: bool) -> Result<Vec<Checkpoint>> {
    let mut q = Query::select()
        .columns([
            JournalCheckpoints::Seq,
            JournalCheckpoints::ChainHash,
            JournalCheckpoints::SignedAt,
            JournalCheckpoints::Kid,
            JournalCheckpoints::Signature,
        ])
        .from(JournalCheckpoints::Table)
        .and_where(Expr::col(JournalCheckpoints::TenantId).eq(tenant))
        .and_where(Expr::col(JournalCheckpoints::Environment).eq(env))
        .to_owned();
    if last_only {
        q.order_by(JournalCheckpoints::Seq, Order::Desc).limit(1);
    } else {
        q.order_by(JournalCheckpoints::Seq, Order::Asc);
    }
    Ok(tx
        .fetch_all::<CheckpointRow>(&q)
        .await?
        .into_iter()
        .map(|c| Checkpoint {
            seq: c.seq,
            chain_hash: c.chain_hash,
            signed_at: c.signed_at,
            kid: c.kid,
            signature: c.signature,
        })
        .collect())
}

/// What one sealing pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealPass {
    pub sealed: usize,
    /// The position of a checkpoint signed by the pass (on SQLite, whose passes cover every
    /// chain, of the last chain that got one).
    pub checkpoint: Option<i64>,
    /// Work-list rows removed that named no entry or an entry already sealed (PostgreSQL), or
    /// entries after the mark that had a seal already (SQLite).
    pub stale: u64,
    /// The pass took as many entries as one pass may: more may be waiting.
    pub more: bool,
}

/// When to sign a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// After this many new positions.
    pub every: i64,
    /// Or when the last checkpoint is older than this and new positions exist.
    pub interval: chrono::Duration,
}

/// Signs a checkpoint message, returning (kid, signature).
pub type CheckpointSigner = dyn Fn(&[u8]) -> (String, Vec<u8>) + Send + Sync;

/// The time now (the service's clock, which tests control).
pub type Now = dyn Fn() -> DateTime<Utc> + Send + Sync;

/// Entries sealed per pass (of one chain on PostgreSQL, of the log on SQLite), and entries read per
/// statement by a PostgreSQL pass (its writes are one statement, see [`apply`]).
const PASS_LIMIT: u64 = 10_000;
const SEALS_PER_STATEMENT: usize = 500;

/// What a sealing pass over one chain's work list writes (PostgreSQL): the chain head it extends
/// and the seals that follow it.
struct Plan {
    /// The work-list rows read, ascending; all are removed when the plan is applied.
    pending: Vec<String>,
    /// The chain's last position and chain value when the plan was made.
    head: (i64, [u8; 32]),
    /// (entry id, entry hash, chain value) for the positions after `head`, in order.
    seals: Vec<(String, [u8; 32], [u8; 32])>,
    /// Work-list rows that name no entry or an entry already sealed.
    stale: u64,
}

/// The chain's last position and chain value (0 and zeros for an empty chain).
async fn head(tx: &mut Tx, tenant: &str, env: &str) -> Result<(i64, [u8; 32])> {
    head_of(last_seal(tx, tenant, env).await?.as_ref())
}

fn head_of(last: Option<&SealRow>) -> Result<(i64, [u8; 32])> {
    match last {
        Some(s) => Ok((
            s.seq,
            hex::decode(&s.chain_hash)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("seal chain hash".into()))?,
        )),
        None => Ok((0, [0u8; 32])),
    }
}

/// How far before the chain's last sealed entry (by the time in its id) a pass starts reading the
/// work list, and how often it reads the whole list instead (PostgreSQL, [`Pass::Tick`]; other
/// passes always read the whole list).
///
/// The sealer deletes each work-list row it seals, and autovacuum clears the dead rows at most
/// once a minute, so a chain's list is a long run of dead rows (everything sealed lately, in id
/// order) before the live ones; reading it from its first row walked all of them on every pass
/// (hundreds to thousands of buffers at a few thousand entries a second). New entries have ids
/// from about the time they were recorded, a moment before their commit, so they sort after the
/// last sealed one or just before it. An entry whose transaction committed more than
/// [`LATE_WINDOW_MS`] after it was recorded sorts lower: the whole list is read every
/// [`FULL_READ_EVERY`] for each chain and when nothing is found near the head, so such an entry is
/// sealed at most a few seconds late — never missed (and verification, which ignores
/// the work list, would report it if it were). The window is well inside verification's
/// tolerance for commit order ([`chain::REORDER_TOLERANCE_MS`], 60 s).
const LATE_WINDOW_MS: u64 = 5_000;
const FULL_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a near-head pass over a chain reads its whole work list this time (and if so, notes
/// when).
fn full_read_due(tenant: &str, env: &str) -> bool {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<BTreeMap<(String, String), Instant>> = Mutex::new(BTreeMap::new());
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let key = (tenant.to_owned(), env.to_owned());
    let due = last.get(&key).is_none_or(|t| now.duration_since(*t) >= FULL_READ_EVERY);
    if due {
        last.insert(key, now);
    }
    due
}

/// The lowest work-list id a pass reads after the chain's last sealed entry `last_sealed`: the
/// smallest id of the millisecond [`LATE_WINDOW_MS`] before the one in its id. `None` (read from
/// the start) if the id has no time in it.
fn read_floor(last_sealed: &str) -> Option<String> {
    use azotte_domain::id::JournalId;
    let id: JournalId = last_sealed.parse().ok()?;
    let ms = id.unix_ms().checked_sub(LATE_WINDOW_MS)?;
    Some(JournalId::first_of_unix_ms(ms).to_string())
}

/// Reads a chain's pending entries (up to [`PASS_LIMIT`]) and hashes them onto its head; `None`
/// when the work list has nothing to read. Writes nothing. Reads from just before the chain's
/// last sealed entry unless `full` (see [`LATE_WINDOW_MS`]).
async fn plan(tx: &mut Tx, tenant: &str, env: &str, full: bool) -> Result<Option<Plan>> {
    let last = last_seal(tx, tenant, env).await?;
    let floor = if full { None } else { last.as_ref().and_then(|s| read_floor(&s.entry_id)) };
    let mut rows = pending_ids(tx, tenant, env, floor.as_deref(), PASS_LIMIT).await?;
    if rows.is_empty() && floor.is_some() {
        // Nothing new near the head, yet the chain was listed as having work: what waits is
        // below it. Read the whole list now rather than at the next whole read.
        rows = pending_ids(tx, tenant, env, None, PASS_LIMIT).await?;
    }
    if rows.is_empty() {
        return Ok(None);
    }
    // The rows' keys, removed when the plan is applied; their entries in id order (the entries
    // of one row are in order, but another transaction's may fall between them).
    let pending: Vec<String> = rows.iter().map(|r| r.entry_id.clone()).collect();
    let mut listed: Vec<(String, Option<String>)> = rows.into_iter().flat_map(PendingRow::entries).collect();
    listed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // An entry listed twice (not the journal's doing: the writer lists each once) is sealed once.
    let listed_all = listed.len();
    listed.dedup_by(|a, b| a.0 == b.0);
    let mut stale = (listed_all - listed.len()) as u64;
    let (ids, hashes): (Vec<String>, Vec<Option<String>>) = listed.into_iter().unzip();
    let head = head_of(last.as_ref())?;
    let (mut seq, mut prev) = head;
    let mut seals = Vec::with_capacity(pending.len());
    for (ids, hashes) in ids.chunks(SEALS_PER_STATEMENT).zip(hashes.chunks(SEALS_PER_STATEMENT)) {
        // The writer lists an entry with its hash, chained as given (verification recomputes it
        // from the row). A row without one — listed before migration 0030, or by hand — is read
        // back and hashed here.
        let given: Vec<Option<[u8; 32]>> =
            hashes.iter().map(|h| h.as_deref().and_then(|h| hex::decode(h).ok()?.try_into().ok())).collect();
        let unhashed: Vec<String> =
            ids.iter().zip(&given).filter(|(_, h)| h.is_none()).map(|(id, _)| id.clone()).collect();
        let mut read: HashMap<String, RawEntry> = entries_by_id(tx, tenant, env, &unhashed, true)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        // A listed entry that has a seal already, or (read back) no row, is not the journal's
        // doing (the work-list row commits with its entry and goes with its seal); such rows are
        // dropped with the others.
        let sealed = if given.iter().any(Option::is_some) {
            sealed_among(tx, tenant, env, ids).await?
        } else {
            HashSet::new()
        };
        for (id, h) in ids.iter().zip(given) {
            let h = match h {
                Some(_) if sealed.contains(id) => None,
                Some(h) => Some(h),
                None => read.remove(id).map(|e| chain::entry_hash(&e.record())),
            };
            let Some(h) = h else {
                stale += 1;
                continue;
            };
            seq += 1;
            prev = chain::chain_next(&prev, seq, &h);
            seals.push((id.clone(), h, prev));
        }
    }
    Ok(Some(Plan { pending, head, seals, stale }))
}

/// Writes a plan's seals, removes its work-list rows and signs a checkpoint when due. The caller
/// holds the chain and has checked its head.
///
/// The seals and the removal are one statement (a data-modifying `WITH` over arrays bound
/// whole): one round trip and one statement text for any number of entries, prepared once per
/// connection, where multi-row `VALUES` and `IN` lists of a new length each pass were parsed and
/// planned anew.
async fn apply(
    tx: &mut Tx,
    tenant: &str,
    env: &str,
    plan: Plan,
    now: &Now,
    policy: CheckpointPolicy,
    sign: &CheckpointSigner,
) -> Result<SealPass> {
    let Tx::Postgres(t) = &mut *tx else {
        return Err(StoreError::Corrupt("a work-list pass is PostgreSQL's".into()));
    };
    let pass = SealPass {
        sealed: plan.seals.len(),
        stale: plan.stale,
        more: plan.pending.len() as u64 == PASS_LIMIT,
        checkpoint: None,
    };
    let (mut seq, mut last) = plan.head;
    let (mut seqs, mut ids, mut hashes, mut chains) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, h, c) in &plan.seals {
        seq += 1;
        last = *c;
        seqs.push(seq);
        ids.push(id.as_str());
        hashes.push(hex::encode(h));
        chains.push(hex::encode(c));
    }
    // Exactly the work-list rows read (ascending: the range bounds the scan as in
    // `entries_by_id`); one committed meanwhile stays for the next pass.
    let (lo, hi) = (plan.pending.first(), plan.pending.last());
    sqlx::query(
        "WITH seals AS (
             INSERT INTO journal_seals (tenant_id, environment, seq, entry_id, entry_hash, chain_hash, sealed_at)
             SELECT $1, $2, s, i, h, c, $3 FROM unnest($4::int8[], $5::text[], $6::text[], $7::text[]) AS u(s, i, h, c)
         )
         DELETE FROM journal_pending WHERE owner_tenant_id = $1 AND owner_environment = $2
             AND entry_id >= $8 AND entry_id <= $9 AND entry_id = ANY($10::text[])",
    )
    .bind(tenant)
    .bind(env)
    .bind(now())
    .bind(&seqs)
    .bind(&ids)
    .bind(&hashes)
    .bind(&chains)
    .bind(lo)
    .bind(hi)
    .bind(&plan.pending)
    .execute(t.conn()?)
    .await?;
    if plan.seals.is_empty() {
        return Ok(pass);
    }
    let checkpoint = checkpoint_if_due(tx, tenant, env, seq, last, now, policy, sign).await?;
    Ok(SealPass { checkpoint, ..pass })
}

/// SQLite: appends `seals` to a chain after `head` (`sealed_at` read from `now`) and signs a
/// checkpoint when due, returning its position. The caller holds the writer and has checked the
/// mark.
#[allow(clippy::too_many_arguments)]
async fn append(
    tx: &mut Tx,
    tenant: &str,
    env: &str,
    head: (i64, [u8; 32]),
    seals: &[(String, [u8; 32], [u8; 32])],
    now: &Now,
    policy: CheckpointPolicy,
    sign: &CheckpointSigner,
) -> Result<Option<i64>> {
    if seals.is_empty() {
        return Ok(None);
    }
    let (mut seq, mut last) = head;
    let Tx::Sqlite(t) = &mut *tx else { return Err(StoreError::Corrupt("the seal log is SQLite's".into())) };
    // One statement of one text for any number of seals: prepared once and kept, where a
    // multi-row VALUES list of a different length each pass was parsed anew each time, while the
    // sealer held the writer.
    let rows: Vec<_> = seals
        .iter()
        .map(|(id, h, c)| {
            seq += 1;
            last = *c;
            serde_json::json!([seq, id, hex::encode(h), hex::encode(c)])
        })
        .collect();
    sqlx::query(
        "INSERT INTO journal_seals (tenant_id, environment, seq, entry_id, entry_hash, chain_hash, \
         sealed_at) SELECT ?1, ?2, value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?3 \
         FROM json_each(?4)",
    )
    .bind(tenant)
    .bind(env)
    .bind(now())
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(t.conn()?)
    .await?;
    checkpoint_if_due(tx, tenant, env, seq, last, now, policy, sign).await
}

/// Signs a checkpoint of a chain whose last position is `seq` with chain value `last`, when the
/// policy says one is due; returns its position.
#[allow(clippy::too_many_arguments)]
async fn checkpoint_if_due(
    tx: &mut Tx,
    tenant: &str,
    env: &str,
    seq: i64,
    last: [u8; 32],
    now: &Now,
    policy: CheckpointPolicy,
    sign: &CheckpointSigner,
) -> Result<Option<i64>> {
    let last_cp = checkpoints_query(tx, tenant, env, true).await?.pop();
    let last_cp_seq = last_cp.as_ref().map(|c| c.seq).unwrap_or(0);
    let last_cp_at = last_cp
        .as_ref()
        .and_then(|c| DateTime::parse_from_rfc3339(&c.signed_at).ok())
        .map(|d| d.with_timezone(&Utc));
    let signed_at = now();
    let due =
        seq - last_cp_seq >= policy.every || last_cp_at.is_none_or(|t| signed_at - t >= policy.interval);
    if !(due && seq > last_cp_seq) {
        return Ok(None);
    }
    let signed_at = signed_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let msg = chain::checkpoint_message(tenant, env, seq, &last, &signed_at);
    let (kid, sig) = sign(&msg);
    let q = Query::insert()
        .into_table(JournalCheckpoints::Table)
        .columns([
            JournalCheckpoints::TenantId,
            JournalCheckpoints::Environment,
            JournalCheckpoints::Seq,
            JournalCheckpoints::ChainHash,
            JournalCheckpoints::SignedAt,
            JournalCheckpoints::Kid,
            JournalCheckpoints::Signature,
        ])
        .values_panic([
            tenant.into(),
            env.into(),
            seq.into(),
            hex::encode(last).into(),
            signed_at.into(),
            kid.into(),
            hex::encode(sig).into(),
        ])
        .to_owned();
    tx.execute(&q).await?;
    Ok(Some(seq))
}

/// How a sealing pass over one chain treats another sealer and the chain's work list
/// (PostgreSQL; on SQLite every pass is one pass over the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Waits for another sealer of the chain to finish, then seals what is left: when the call
    /// returns, every entry committed before it started is sealed.
    Wait,
    /// Returns `None` at once if another sealer holds the chain.
    Skip,
    /// The worker's frequent tick: as [`Pass::Skip`], and reads the work list from just before
    /// the chain's last sealed entry (see [`LATE_WINDOW_MS`]), so an entry whose transaction
    /// committed late may wait a few seconds for the next whole read.
    Tick,
}

/// Seals the pending entries of one chain, in id order, removes them from the work list and
/// signs a checkpoint when due. `sealed_at` is read from `now` when each statement of seals is
/// built, while the chain is held for writing.
///
/// On PostgreSQL everything happens in one transaction holding the chain's advisory lock, taken
/// as [`Pass`] says; writers never wait for it (MVCC).
///
/// On SQLite, whose journal is sealed as one log ([`seal_log`]), this is one pass of
/// [`seal_log`]: it seals every chain's new entries, this one's among them, and `pass` does not
/// apply (the result is never `None`).
pub async fn seal_chain(
    db: &Db,
    tenant: &str,
    env: &str,
    now: &Now,
    policy: CheckpointPolicy,
    sign: &CheckpointSigner,
    pass: Pass,
) -> Result<Option<SealPass>> {
    if db.backend() == crate::Backend::Sqlite {
        return seal_log(db, now, policy, sign).await.map(Some);
    }
    let mut tx = db.unscoped_tx().await?;
    enter(&mut tx, tenant).await?;
    if let Tx::Postgres(t) = &mut tx {
        // One sealer per chain at a time; writers never take this lock.
        const KEY: &str = "hashtext('azotte.seal:' || $1 || ':' || $2)";
        if pass == Pass::Wait {
            let sql = format!("SELECT pg_advisory_xact_lock({KEY})");
            sqlx::query(&sql).bind(tenant).bind(env).execute(t.conn()?).await?;
        } else {
            let sql = format!("SELECT pg_try_advisory_xact_lock({KEY})");
            let got: bool = sqlx::query_scalar(&sql).bind(tenant).bind(env).fetch_one(t.conn()?).await?;
            if !got {
                return Ok(None);
            }
        }
    }
    let whole = pass != Pass::Tick || full_read_due(tenant, env);
    let started = std::time::Instant::now();
    let planned = plan(&mut tx, tenant, env, whole).await?;
    let plan_done = started.elapsed();
    let pass = match planned {
        Some(p) => apply(&mut tx, tenant, env, p, now, policy, sign).await?,
        None => SealPass::default(),
    };
    let apply_done = started.elapsed();
    tx.commit().await?;
    let total = started.elapsed();
    if total >= SLOW_PASS {
        // Seal lag is this plus the tick: say which part of the pass took the time.
        tracing::warn!(
            tenant,
            env,
            sealed = pass.sealed,
            plan_ms = plan_done.as_millis() as u64,
            write_ms = (apply_done - plan_done).as_millis() as u64,
            commit_ms = (total - apply_done).as_millis() as u64,
            "slow journal sealing pass"
        );
    }
    Ok(Some(pass))
}

/// A PostgreSQL sealing pass over one chain that takes this long is logged as a warning with the
/// time of its reads, its writes and its commit: the seal lag target is 1 s, ticks included.
const SLOW_PASS: std::time::Duration = std::time::Duration::from_millis(500);

/// What a pass over SQLite's log writes: for each chain with new entries, its head and the
/// seals that follow it, and how far the mark moves.
struct LogPlan {
    /// The mark the plan starts after.
    mark: i64,
    /// The position the entries were read after: the mark, or 0 when the log was read again.
    from: i64,
    /// The last position read: the mark once the plan is applied.
    upto: i64,
    /// Entries read (sealed ones included).
    read: u64,
    chains: Vec<ChainPlan>,
    /// Entries after the mark that had a seal already.
    stale: u64,
}

struct ChainPlan {
    tenant: String,
    env: String,
    head: (i64, [u8; 32]),
    seals: Vec<(String, [u8; 32], [u8; 32])>,
}

/// SQLite's seal mark: the last log position sealed through.
///
/// A missing mark row counts as 0: every entry is read again, and those sealed already are passed
/// over, so sealing goes on instead of failing every pass.
async fn mark(tx: &mut Tx) -> Result<i64> {
    let Tx::Sqlite(t) = tx else { return Err(StoreError::Corrupt("the seal mark is SQLite's".into())) };
    let m: Option<i64> = sqlx::query_scalar("SELECT pos FROM journal_seal_mark WHERE id = 1")
        .fetch_optional(t.conn()?)
        .await?;
    Ok(m.unwrap_or(0))
}

/// Reads up to [`PASS_LIMIT`] entries after the mark, in log order, and hashes each onto its
/// chain's head; `None` when there is nothing after the mark. Writes nothing.
///
/// An entry that has a seal already (only after tampering with the mark) is skipped and counted
/// as stale; the mark still moves past it.
async fn plan_log(tx: &mut Tx) -> Result<Option<LogPlan>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        pos: i64,
        sealed: bool,
        occurred_at: DateTime<Utc>,
        packed: String,
    }
    let mark = mark(tx).await?;
    let sql = format!(
        "SELECT pos, EXISTS (SELECT 1 FROM journal_seals s WHERE s.tenant_id = e.tenant_id \
           AND s.environment = e.environment AND s.entry_id = e.id) AS sealed, occurred_at, \
           {PACKED_COLUMNS} AS packed \
         FROM journal_entries e WHERE pos > ?1 ORDER BY pos LIMIT ?2"
    );
    let Tx::Sqlite(t) = &mut *tx else { return Err(StoreError::Corrupt("the seal log is SQLite's".into())) };
    // The log ends below the mark only if entries were deleted behind the database's triggers
    // and their positions taken again by new ones, which would then never be sealed: read the
    // whole log again (what is sealed is passed over). Verification reports the deletion.
    let last: Option<i64> =
        sqlx::query_scalar("SELECT MAX(pos) FROM journal_entries").fetch_one(t.conn()?).await?;
    let from = if last.unwrap_or(0) < mark {
        tracing::warn!(
            mark,
            last,
            "the journal's log ends before the seal mark; reading it again from the start"
        );
        0
    } else {
        mark
    };
    let rows: Vec<Row> = sqlx::query_as(&sql).bind(from).bind(PASS_LIMIT as i64).fetch_all(t.conn()?).await?;
    let Some(upto) = rows.last().map(|r| r.pos) else {
        return Ok(None);
    };
    let mut plan = LogPlan { mark, from, upto, read: rows.len() as u64, chains: Vec::new(), stale: 0 };
    let mut index = HashMap::<(String, String), usize>::new();
    // Each chain's running (position, chain value), beside `plan.chains`.
    let mut tips = Vec::<(i64, [u8; 32])>::new();
    for row in rows {
        if row.sealed {
            plan.stale += 1;
            continue;
        }
        let entry = Packed::entry(&row.packed, row.occurred_at)?;
        let key = (entry.tenant_id.clone(), entry.environment.clone());
        let i = match index.get(&key) {
            Some(&i) => i,
            None => {
                let head = head(tx, &key.0, &key.1).await?;
                plan.chains.push(ChainPlan {
                    tenant: key.0.clone(),
                    env: key.1.clone(),
                    head,
                    seals: Vec::new(),
                });
                tips.push(head);
                index.insert(key, plan.chains.len() - 1);
                plan.chains.len() - 1
            }
        };
        let e = entry.record();
        let (seq, prev) = &mut tips[i];
        *seq += 1;
        let h = chain::entry_hash(&e);
        *prev = chain::chain_next(prev, *seq, &h);
        plan.chains[i].seals.push((e.id, h, *prev));
    }
    Ok(Some(plan))
}

/// One sealing pass over SQLite's journal, which is sealed as one log: every entry committed
/// after the seal mark, in commit order, is appended to its own chain, checkpoints are signed
/// where due, and the mark moves past what was read, all in one write transaction.
///
/// SQLite has one writer at a time, so the log position of an entry is commit order and a
/// reader's snapshot holds every position up to the highest it sees (migration 0025): the mark
/// alone says what is sealed, with no per-entry work list for writers to fill. The entries are
/// read and hashed in a read transaction beside the writers (WAL); the write lock is taken only
/// to append, after checking that the mark has not moved (seals are append-only and every pass
/// that appends moves the mark, so an unchanged mark means no other sealer, in another process,
/// sealed anything meanwhile); if it moved, the pass is planned again under the lock.
pub async fn seal_log(
    db: &Db,
    now: &Now,
    policy: CheckpointPolicy,
    sign: &CheckpointSigner,
) -> Result<SealPass> {
    let mut read = db.unscoped_read_tx().await?;
    let planned = plan_log(&mut read).await?;
    read.commit().await?;
    match planned {
        Some(p) => apply_log_checked(db, p, now, policy, sign).await,
        None => Ok(SealPass::default()),
    }
}

/// Applies a log plan made in a read transaction: takes the write lock and, if the mark moved
/// meanwhile, plans again under it.
async fn apply_log_checked(
    db: &Db,
    planned: LogPlan,
    now: &Now,
    policy: CheckpointPolicy,
    sign: &CheckpointSigner,
) -> Result<SealPass> {
    let mut tx = db.unscoped_tx().await?;
    let planned =
        if mark(&mut tx).await? == planned.mark { Some(planned) } else { plan_log(&mut tx).await? };
    let Some(plan) = planned else {
        tx.commit().await?;
        return Ok(SealPass::default());
    };
    let mut pass = SealPass { stale: plan.stale, more: plan.read == PASS_LIMIT, ..SealPass::default() };
    for c in &plan.chains {
        pass.sealed += c.seals.len();
        if let Some(cp) = append(&mut tx, &c.tenant, &c.env, c.head, &c.seals, now, policy, sign).await? {
            pass.checkpoint = Some(cp);
        }
    }
    // The lookup rows of what was read (migration 0027): readers find entries up to the mark
    // through them, and scan the log after it. Then the mark moves, and the pass commits: one
    // batch, one round trip while the sealer holds the writer.
    tx.finish_sqlite(
        "INSERT OR IGNORE INTO journal_by_correlation (tenant_id, correlation_id, pos) \
         SELECT tenant_id, correlation_id, pos FROM journal_entries WHERE pos > ?1 AND pos <= ?2;
         INSERT OR IGNORE INTO journal_by_resource (tenant_id, resource_type, resource_id, pos) \
         SELECT tenant_id, resource_type, resource_id, pos FROM journal_entries \
         WHERE pos > ?1 AND pos <= ?2 AND resource_type IS NOT NULL AND resource_id IS NOT NULL;
         INSERT INTO journal_seal_mark (id, pos) VALUES (1, ?2) \
         ON CONFLICT (id) DO UPDATE SET pos = excluded.pos;
         COMMIT",
        vec![plan.from.into(), plan.upto.into()],
    )
    .await?;
    Ok(pass)
}

/// Seals per page when a chain is read back.
pub const PAGE: u64 = 1000;

/// A chain read back: its seals with the entries as they are now, checkpoints, and entries
/// still unsealed.
pub struct ChainState {
    pub seals: Vec<SealedEntry>,
    pub checkpoints: Vec<Checkpoint>,
    pub unsealed: Vec<Unsealed>,
}

/// Reads a whole chain into memory (for export); verification streams with [`ChainReader`]
/// instead.
pub async fn chain_state(db: &Db, tenant: &str, env: &str) -> Result<ChainState> {
    let mut reader = ChainReader::open(db, tenant, env).await?;
    let mut seals = Vec::new();
    loop {
        let page = reader.next_page().await?;
        if page.is_empty() {
            break;
        }
        seals.extend(page);
    }
    Ok(ChainState { seals, checkpoints: reader.checkpoints, unsealed: reader.unsealed })
}

/// A chain being read back, its seals a page at a time, in an order that lets sealers commit at
/// any moment without hiding an entry or making a consistent journal look broken:
///
/// 1. the entries without a seal, first: an entry sealed after that read gets a position after
///    the ones already there, so the seal pages read next include it. (Read after the seals, an
///    entry sealed in between is in neither: a forged entry was once missed that way.)
/// 2. the checkpoints: a checkpoint's seals commit with or before it;
/// 3. the seals page by page, each page's entries after its seals: an entry commits before its
///    seal.
///
/// Every read sees at least what the previous one saw, so each entry committed before
/// [`ChainReader::open`] is either in `unsealed` or in a page.
pub struct ChainReader<'a> {
    db: &'a Db,
    tenant: &'a str,
    env: &'a str,
    after: i64,
    /// The entries that had no seal when the chain was opened, oldest id first.
    pub unsealed: Vec<Unsealed>,
    /// The chain's checkpoints, oldest first.
    pub checkpoints: Vec<Checkpoint>,
}

impl<'a> ChainReader<'a> {
    /// Reads the unsealed entries, then the checkpoints; the seals follow with
    /// [`next_page`](Self::next_page).
    pub async fn open(db: &'a Db, tenant: &'a str, env: &'a str) -> Result<Self> {
        let unsealed = unsealed(db, tenant, env).await?;
        let checkpoints = checkpoints(db, tenant, env).await?;
        Ok(ChainReader { db, tenant, env, after: 0, unsealed, checkpoints })
    }

    /// The next [`PAGE`] seals, in position order, each with its entry as it is now; empty at
    /// the end of the chain.
    pub async fn next_page(&mut self) -> Result<Vec<SealedEntry>> {
        let page = seal_page(self.db, self.tenant, self.env, self.after, PAGE).await?;
        if let Some(last) = page.last() {
            self.after = last.seq;
        }
        Ok(page)
    }
}

/// Up to `limit` seals of a chain after position `after`, in order, each with its entry as it
/// is now (`None` if the row is gone).
async fn seal_page(db: &Db, tenant: &str, env: &str, after: i64, limit: u64) -> Result<Vec<SealedEntry>> {
    let mut tx = db.unscoped_read_tx().await?;
    enter(&mut tx, tenant).await?;
    let rows = seals(&mut tx, tenant, env, after, limit).await?;
    let ids: Vec<String> = rows.iter().map(|r| r.entry_id.clone()).collect();
    let mut by_id: HashMap<String, RawEntry> = entries_by_id(&mut tx, tenant, env, &ids, false)
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|s| SealedEntry {
            entry: by_id.remove(&s.entry_id).map(RawEntry::record),
            seq: s.seq,
            entry_id: s.entry_id,
            entry_hash: s.entry_hash,
            chain_hash: s.chain_hash,
        })
        .collect())
}

/// The entries of a chain that have no seal yet (id and time), oldest first. Verification
/// must not trust the work list or the seal mark (deleting a row there, or moving the mark, hides
/// nothing), so this reads the chain itself.
///
/// It streams the chain by id range, [`PAGE`] entries at a time: each page is one range of the
/// entries' primary key, compared with one range of the seals' key on the entry id, in the same
/// transaction and in that order (an entry commits before its seal). Neither query can turn into
/// a scan of the whole chain per entry, whatever the planner's statistics: a whole-chain
/// `NOT EXISTS` took seconds on a young PostgreSQL table of a few thousand entries (no
/// statistics yet, nested loops over all seals).
async fn unsealed(db: &Db, tenant: &str, env: &str) -> Result<Vec<Unsealed>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let mut tx = db.unscoped_read_tx().await?;
        enter(&mut tx, tenant).await?;
        let page = entry_page(&mut tx, tenant, env, &after, PAGE).await?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            tx.commit().await?;
            return Ok(out);
        };
        let sealed = sealed_ids_between(&mut tx, tenant, env, &first.0, &last.0).await?;
        tx.commit().await?;
        let full = page.len() as u64 == PAGE;
        after = last.0.clone();
        out.extend(
            page.into_iter()
                .filter(|(id, _)| !sealed.contains(id))
                .map(|(entry_id, at)| Unsealed { entry_id, occurred_at: at.timestamp() }),
        );
        if !full {
            return Ok(out);
        }
    }
}

/// Every chain that has entries: the platform's and each tenant environment's.
pub async fn chains(db: &Db, tenant: Option<&str>) -> Result<Vec<(String, String)>> {
    #[derive(sqlx::FromRow)]
    struct Id {
        id: String,
    }
    let mut tx = db.unscoped_read_tx().await?;
    let mut tenants: Vec<String> = match tenant {
        Some(t) => vec![t.to_owned()],
        None => {
            let q = Query::select()
                .column(crate::tenants::Tenants::Id)
                .from(crate::tenants::Tenants::Table)
                .to_owned();
            let mut v: Vec<String> = tx.fetch_all::<Id>(&q).await?.into_iter().map(|i| i.id).collect();
            v.insert(0, crate::journal::PLATFORM.to_owned());
            v
        }
    };
    tx.commit().await?;
    tenants.dedup();
    let mut out = Vec::new();
    for t in tenants {
        let envs: &[&str] = if t == crate::journal::PLATFORM {
            &["platform"]
        } else {
            &["development", "staging", "production"]
        };
        for e in envs {
            out.push((t.clone(), (*e).to_owned()));
        }
    }
    Ok(out)
}

/// Journal signing keys as stored (private halves sealed by the service layer).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredJournalKey {
    pub kid: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// Every journal key, newest first.
pub async fn journal_keys(db: &Db) -> Result<Vec<StoredJournalKey>> {
    let mut tx = db.unscoped_read_tx().await?;
    let q = Query::select()
        .columns([JournalKeys::Kid, JournalKeys::PrivateKey, JournalKeys::PublicKey, JournalKeys::CreatedAt])
        .from(JournalKeys::Table)
        .order_by(JournalKeys::CreatedAt, Order::Desc)
        .to_owned();
    let k = tx.fetch_all::<StoredJournalKey>(&q).await?;
    tx.commit().await?;
    Ok(k)
}

/// Adds a journal signing key.
pub async fn insert_journal_key(
    db: &Db,
    kid: &str,
    sealed_private: &[u8],
    public: &[u8],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = db.unscoped_tx().await?;
    let q = Query::insert()
        .into_table(JournalKeys::Table)
        .columns([JournalKeys::Kid, JournalKeys::PrivateKey, JournalKeys::PublicKey, JournalKeys::CreatedAt])
        .values_panic([kid.into(), sealed_private.to_vec().into(), public.to_vec().into(), now.into()])
        .to_owned();
    tx.execute(&q).await?;
    tx.commit().await
}

/// The signed checkpoints of one chain, oldest first.
pub async fn checkpoints(db: &Db, tenant: &str, env: &str) -> Result<Vec<Checkpoint>> {
    let mut tx = db.unscoped_read_tx().await?;
    enter(&mut tx, tenant).await?;
    let c = checkpoints_of(&mut tx, tenant, env).await?;
    tx.commit().await?;
    Ok(c)
}

#[cfg(test)]
#[path = "seal_tests.rs"]
mod tests;
