//! The sealer's storage side: the queue of chains with new entries, appending seals and
//! checkpoints, and reading a chain back for verification or export.
//!
//! Each (tenant, environment) chain is sealed by one sealer at a time (an advisory lock on
//! PostgreSQL; SQLite serializes writers anyway). Writers never wait for it: they only add a
//! queue row, in a random bucket.

use azotte_crypto::chain::{self, Checkpoint, EntryRecord, SealedEntry, Unsealed};
use chrono::{DateTime, Utc};
use rand::Rng;
use sea_query::{Expr, Iden, LockBehavior, LockType, OnConflict, Order, Query};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::{Db, Result, StoreError};

#[derive(Iden)]
enum JournalSealQueue {
    Table,
    OwnerTenantId,
    OwnerEnvironment,
    Bucket,
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
    SealedAt,
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

const BUCKETS: i32 = 16;

/// Notes that a chain has a new entry (called in the writer's transaction).
pub(crate) async fn enqueue(tx: &mut Tx, tenant: &str, env: &str) -> Result<()> {
    let bucket = rand::thread_rng().gen_range(0..BUCKETS);
    let q = Query::insert()
        .into_table(JournalSealQueue::Table)
        .columns([
            JournalSealQueue::OwnerTenantId,
            JournalSealQueue::OwnerEnvironment,
            JournalSealQueue::Bucket,
        ])
        .values_panic([tenant.into(), env.into(), bucket.into()])
        .on_conflict(
            OnConflict::columns([
                JournalSealQueue::OwnerTenantId,
                JournalSealQueue::OwnerEnvironment,
                JournalSealQueue::Bucket,
            ])
            .do_nothing()
            .to_owned(),
        )
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

/// Takes up to `limit` queued chains (skipping rows another sealer holds) and removes them
/// from the queue; returns the distinct chains.
pub async fn claim(db: &Db, limit: u64) -> Result<Vec<(String, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        owner_tenant_id: String,
        owner_environment: String,
        bucket: i32,
    }
    let mut tx = db.unscoped_tx().await?;
    let q = Query::select()
        .columns([
            JournalSealQueue::OwnerTenantId,
            JournalSealQueue::OwnerEnvironment,
            JournalSealQueue::Bucket,
        ])
        .from(JournalSealQueue::Table)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .to_owned();
    let rows = tx.fetch_all::<Row>(&q).await?;
    let mut chains = Vec::new();
    for r in rows {
        let d = Query::delete()
            .from_table(JournalSealQueue::Table)
            .and_where(Expr::col(JournalSealQueue::OwnerTenantId).eq(r.owner_tenant_id.clone()))
            .and_where(Expr::col(JournalSealQueue::OwnerEnvironment).eq(r.owner_environment.clone()))
            .and_where(Expr::col(JournalSealQueue::Bucket).eq(r.bucket))
            .to_owned();
        tx.execute(&d).await?;
        let c = (r.owner_tenant_id, r.owner_environment);
        if !chains.contains(&c) {
            chains.push(c);
        }
    }
    tx.commit().await?;
    Ok(chains)
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
            occurred_at: self.occurred_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
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

async fn enter(tx: &mut Tx, tenant: &str) -> Result<()> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT set_config('azotte.tenant_id', $1, true)").bind(tenant).execute(&mut **t).await?;
    }
    Ok(())
}

/// Entries of a chain that have no seal yet, oldest first.
async fn unsealed_entries(tx: &mut Tx, tenant: &str, env: &str, limit: i64) -> Result<Vec<RawEntry>> {
    // Positional parameters work on both engines ($n is accepted by SQLite too).
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM journal_entries e WHERE e.tenant_id = $1 AND e.environment = $2 \
         AND NOT EXISTS (SELECT 1 FROM journal_seals s WHERE s.tenant_id = e.tenant_id \
           AND s.environment = e.environment AND s.entry_id = e.id) ORDER BY e.id LIMIT $3"
    );
    Ok(match tx {
        Tx::Sqlite(t) => sqlx::query_as(&sql).bind(tenant).bind(env).bind(limit).fetch_all(&mut **t).await?,
        Tx::Postgres(t) => {
            sqlx::query_as(&sql).bind(tenant).bind(env).bind(limit).fetch_all(&mut **t).await?
        }
    })
}

/// Entries of a chain by id.
async fn entries_by_id(tx: &mut Tx, tenant: &str, env: &str, ids: &[String]) -> Result<Vec<RawEntry>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = (0..ids.len()).map(|i| format!("${}", i + 3)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM journal_entries e WHERE e.tenant_id = $1 AND e.environment = $2 \
         AND e.id IN ({list})"
    );
    Ok(match tx {
        Tx::Sqlite(t) => {
            let mut q = sqlx::query_as(&sql).bind(tenant).bind(env);
            for id in ids {
                q = q.bind(id);
            }
            q.fetch_all(&mut **t).await?
        }
        Tx::Postgres(t) => {
            let mut q = sqlx::query_as(&sql).bind(tenant).bind(env);
            for id in ids {
                q = q.bind(id);
            }
            q.fetch_all(&mut **t).await?
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
    let q = Query::select()
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
        .order_by(JournalCheckpoints::Seq, Order::Asc)
        .to_owned();
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
    pub checkpoint: Option<i64>,
}

/// When to sign a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// After this many new positions.
    pub every: i64,
    /// Or when the last checkpoint is older than this and new positions exist.
    pub interval: chrono::Duration,
}

/// An empty multi-row insert into the seal table.
fn seal_insert() -> sea_query::InsertStatement {
    Query::insert()
        .into_table(JournalSeals::Table)
        .columns([
            JournalSeals::TenantId,
            JournalSeals::Environment,
            JournalSeals::Seq,
            JournalSeals::EntryId,
            JournalSeals::EntryHash,
            JournalSeals::ChainHash,
            JournalSeals::SealedAt,
        ])
        .to_owned()
}

/// Signs a checkpoint message, returning (kid, signature).
pub type CheckpointSigner = dyn Fn(&[u8]) -> (String, Vec<u8>) + Send + Sync;

/// Seals the unsealed entries of one chain, in id order, and signs a checkpoint when due.
/// `sign` returns (kid, signature) for a checkpoint message.
pub async fn seal_chain(
    db: &Db,
    tenant: &str,
    env: &str,
    now: DateTime<Utc>,
    policy: CheckpointPolicy,
    sign: &CheckpointSigner,
) -> Result<SealPass> {
    let mut tx = db.unscoped_tx().await?;
    enter(&mut tx, tenant).await?;
    if let Tx::Postgres(t) = &mut tx {
        // One sealer per chain at a time. Waiting (rather than skipping) means that when a pass
        // returns, everything that was queued before it started is sealed.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('azotte.seal:' || $1 || ':' || $2))")
            .bind(tenant)
            .bind(env)
            .execute(&mut **t)
            .await?;
    }
    let pending = unsealed_entries(&mut tx, tenant, env, 10_000).await?;
    if pending.is_empty() {
        return Ok(SealPass::default());
    }
    let last = last_seal(&mut tx, tenant, env).await?;
    let (mut seq, mut prev) = match &last {
        Some(s) => (
            s.seq,
            hex::decode(&s.chain_hash)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("seal chain hash".into()))?,
        ),
        None => (0, [0u8; 32]),
    };
    let mut insert = seal_insert();
    let sealed = pending.len();
    for (i, e) in pending.into_iter().enumerate() {
        seq += 1;
        let e = e.record();
        let h = chain::entry_hash(&e);
        prev = chain::chain_next(&prev, seq, &h);
        insert.values_panic([
            tenant.into(),
            env.into(),
            seq.into(),
            e.id.into(),
            hex::encode(h).into(),
            hex::encode(prev).into(),
            now.into(),
        ]);
        // Keep statements bounded in size.
        if (i + 1) % 500 == 0 {
            tx.execute(&insert).await?;
            insert = seal_insert();
        }
    }
    if sealed % 500 != 0 {
        tx.execute(&insert).await?;
    }
    let cps = checkpoints_of(&mut tx, tenant, env).await?;
    let last_cp = cps.last();
    let last_cp_seq = last_cp.map(|c| c.seq).unwrap_or(0);
    let last_cp_at =
        last_cp.and_then(|c| DateTime::parse_from_rfc3339(&c.signed_at).ok()).map(|d| d.with_timezone(&Utc));
    let due = seq - last_cp_seq >= policy.every || last_cp_at.is_none_or(|t| now - t >= policy.interval);
    let mut checkpoint = None;
    if due && seq > last_cp_seq {
        let signed_at = now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let msg = chain::checkpoint_message(tenant, env, seq, &prev, &signed_at);
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
                hex::encode(prev).into(),
                signed_at.into(),
                kid.into(),
                hex::encode(sig).into(),
            ])
            .to_owned();
        tx.execute(&q).await?;
        checkpoint = Some(seq);
    }
    tx.commit().await?;
    Ok(SealPass { sealed, checkpoint })
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

/// Reads a whole chain into memory (for export); verification streams with
/// [`seal_page`] instead.
///
/// Pieces are read in commit-dependency order so a sealer committing meanwhile cannot make a
/// consistent journal look broken: checkpoints first (a checkpoint's seals commit with or before
/// it), then the seals page by page, each page's entries after its seals (an entry commits
/// before its seal), then the unsealed entries; every read sees at least what the previous one
/// saw.
pub async fn chain_state(db: &Db, tenant: &str, env: &str) -> Result<ChainState> {
    let checkpoints = checkpoints(db, tenant, env).await?;
    let mut seals = Vec::new();
    loop {
        let page = seal_page(db, tenant, env, seals.last().map_or(0, |s: &SealedEntry| s.seq), PAGE).await?;
        if page.is_empty() {
            break;
        }
        seals.extend(page);
    }
    let unsealed = unsealed(db, tenant, env).await?;
    Ok(ChainState { seals, checkpoints, unsealed })
}

/// Up to `limit` seals of a chain after position `after`, in order, each with its entry as it
/// is now (`None` if the row is gone).
pub async fn seal_page(db: &Db, tenant: &str, env: &str, after: i64, limit: u64) -> Result<Vec<SealedEntry>> {
    let mut tx = db.unscoped_read_tx().await?;
    enter(&mut tx, tenant).await?;
    let rows = seals(&mut tx, tenant, env, after, limit).await?;
    let ids: Vec<String> = rows.iter().map(|r| r.entry_id.clone()).collect();
    let mut by_id: std::collections::HashMap<String, RawEntry> =
        entries_by_id(&mut tx, tenant, env, &ids).await?.into_iter().map(|e| (e.id.clone(), e)).collect();
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

/// The entries of a chain that have no seal yet (id and time), oldest first.
pub async fn unsealed(db: &Db, tenant: &str, env: &str) -> Result<Vec<Unsealed>> {
    let mut tx = db.unscoped_read_tx().await?;
    enter(&mut tx, tenant).await?;
    let rows = unsealed_entries(&mut tx, tenant, env, i64::MAX).await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|e| Unsealed { entry_id: e.id, occurred_at: e.occurred_at.timestamp() })
        .collect())
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
