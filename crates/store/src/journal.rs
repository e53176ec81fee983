//! The journal: every mutation's action, the decisions taken and the outcomes, written in the
//! same transaction as the change.
//!
//! Writing goes through [`TenantTx`] and [`PlatformTx`]: a transaction that changed something
//! refuses to commit unless it recorded an action ([`StoreError::Unjournaled`]), so a mutation
//! cannot land without its entry. Request context (correlation id, client address, user agent)
//! comes from a task-local set by the HTTP layer or the worker running the job.

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;

use azotte_domain::id::JournalId;
use azotte_domain::Principal;
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query};
use serde_json::Value;
use sqlx::types::Json;

use crate::exec::{PgQuery, SqliteQuery, Tx};
use crate::scope::Credential;
use crate::{Db, PlatformTx, Result, StoreError, TenantTx};

/// The pseudo-tenant whose journal holds installation-level records.
pub const PLATFORM: &str = "platform";

/// Where a request came from and how to correlate what it causes.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub correlation_id: String,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// `api`, `console`, `system` or `channel`.
    pub source: &'static str,
    /// For a job: the entry that caused it (the request's action that queued it, or the outcome
    /// it follows up). The job's actions are recorded as caused by it, so the lineage of the
    /// correlation id shows them under their cause.
    pub causation_id: Option<String>,
}

impl RequestMeta {
    /// Context for work the platform starts itself.
    pub fn system() -> Self {
        Self {
            correlation_id: JournalId::new().to_string().replacen("jnl_", "cor_", 1),
            request_id: None,
            client_ip: None,
            user_agent: None,
            source: "system",
            causation_id: None,
        }
    }

    /// Context for a job caused by journal entry `entry_id` of correlation `correlation_id`.
    pub fn caused_by(correlation_id: &str, entry_id: &str) -> Self {
        Self {
            correlation_id: correlation_id.to_owned(),
            causation_id: Some(entry_id.to_owned()),
            ..Self::system()
        }
    }
}

/// Where a transaction's entries sit in the journal, for work that continues them later in
/// another transaction ([`TenantTx::cause`], [`TenantTx::outcome_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub correlation_id: String,
    /// The transaction's action, once recorded.
    pub action_id: Option<String>,
}

tokio::task_local! {
    static META: RequestMeta;
}

/// Runs `f` with `meta` as the request context of every journal entry it writes.
pub async fn with_meta<F: Future>(meta: RequestMeta, f: F) -> F::Output {
    META.scope(meta, f).await
}

/// The correlation id of the running request or job (a fresh one outside any).
pub fn current_correlation_id() -> String {
    current_meta().correlation_id
}

/// The request context of the running request or job (a system one, with a fresh correlation
/// id, outside any): for work done on its behalf by another task (a batch of several requests).
pub fn current_meta() -> RequestMeta {
    META.try_with(Clone::clone).unwrap_or_else(|_| RequestMeta::system())
}

/// The kind of a journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Action,
    Decision,
    Outcome,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Action => "action",
            Kind::Decision => "decision",
            Kind::Outcome => "outcome",
        }
    }
}

/// Every column but `tenant_id`, in one order for writing and reading.
const ENTRY_COLUMNS: [JournalEntries; 18] = [
    JournalEntries::Environment,
    JournalEntries::Id,
    JournalEntries::Kind,
    JournalEntries::Type,
    JournalEntries::OccurredAt,
    JournalEntries::CorrelationId,
    JournalEntries::CausationId,
    JournalEntries::PrincipalKind,
    JournalEntries::PrincipalId,
    JournalEntries::PrincipalRoles,
    JournalEntries::Mfa,
    JournalEntries::Source,
    JournalEntries::RequestId,
    JournalEntries::ClientIp,
    JournalEntries::UserAgent,
    JournalEntries::ResourceType,
    JournalEntries::ResourceId,
    JournalEntries::Body,
];

#[derive(Iden, Clone, Copy)]
enum JournalEntries {
    Table,
    TenantId,
    Environment,
    Id,
    Kind,
    Type,
    OccurredAt,
    CorrelationId,
    CausationId,
    PrincipalKind,
    PrincipalId,
    PrincipalRoles,
    Mfa,
    Source,
    RequestId,
    ClientIp,
    UserAgent,
    ResourceType,
    ResourceId,
    Body,
}

/// One entry to write.
pub(crate) struct NewEntry<'a> {
    pub kind: Kind,
    pub type_: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub causation_id: Option<&'a str>,
    /// Another lineage than the transaction's ([`Cause`]); `None`: the request's or job's.
    pub correlation_id: Option<&'a str>,
    pub principal: &'a Principal,
    pub mfa: bool,
    pub resource: Option<(&'a str, &'a str)>,
    pub body: Value,
}

/// Entries recorded in a transaction and not written yet, oldest first.
#[derive(Default, Clone)]
pub(crate) struct Buffer {
    rows: Vec<Row>,
    /// The request context of the transaction's entries, taken at its first entry: outside a
    /// request or job scope every entry of one transaction still shares one correlation id.
    meta: Option<RequestMeta>,
}

/// One recorded entry: the values of its row, `tenant_id` then [`ENTRY_COLUMNS`].
#[derive(Clone)]
struct Row {
    tenant_id: String,
    environment: String,
    id: String,
    kind: Kind,
    type_: String,
    occurred_at: DateTime<Utc>,
    correlation_id: String,
    causation_id: Option<String>,
    principal_kind: &'static str,
    principal_id: String,
    principal_roles: Vec<String>,
    mfa: bool,
    source: &'static str,
    request_id: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    /// Hashed byte for byte by the sealer: canonical text, written once.
    body: String,
}

/// `q` with a [`Row`]'s 19 values bound in column order (`tenant_id`, then [`ENTRY_COLUMNS`]).
macro_rules! bind_row {
    ($q:expr, $row:expr) => {
        $q.bind($row.tenant_id)
            .bind($row.environment)
            .bind($row.id)
            .bind($row.kind.as_str())
            .bind($row.type_)
            .bind($row.occurred_at)
            .bind($row.correlation_id)
            .bind($row.causation_id)
            .bind($row.principal_kind)
            .bind($row.principal_id)
            .bind(Json($row.principal_roles))
            .bind($row.mfa)
            .bind($row.source)
            .bind($row.request_id)
            .bind($row.client_ip)
            .bind($row.user_agent)
            .bind($row.resource_type)
            .bind($row.resource_id)
            .bind($row.body)
    };
}

impl Row {
    /// The values for a sea-query `INSERT`, in column order.
    fn values(self) -> [sea_query::SimpleExpr; 19] {
        [
            self.tenant_id.into(),
            self.environment.into(),
            self.id.into(),
            self.kind.as_str().into(),
            self.type_.into(),
            self.occurred_at.into(),
            self.correlation_id.into(),
            self.causation_id.into(),
            self.principal_kind.into(),
            self.principal_id.into(),
            serde_json::json!(self.principal_roles).into(),
            self.mfa.into(),
            self.source.into(),
            self.request_id.into(),
            self.client_ip.into(),
            self.user_agent.into(),
            self.resource_type.into(),
            self.resource_id.into(),
            self.body.into(),
        ]
    }

    /// The entry's hash (hex), as the sealer and verification compute it from the stored row
    /// (`store::seal`, `crypto::chain::entry_hash`): PostgreSQL's writer puts it on the sealer's
    /// work list with the entry, so the sealer does not read the entry back. The time is hashed
    /// at the microseconds the database keeps (both truncate).
    fn hash_hex(&self) -> String {
        let occurred_at = self.occurred_at.format(OCCURRED_AT_HASHED).to_string();
        hex::encode(azotte_crypto::chain::fields_hash(&azotte_crypto::chain::EntryFields {
            id: &self.id,
            tenant_id: &self.tenant_id,
            environment: &self.environment,
            kind: self.kind.as_str(),
            type_: &self.type_,
            occurred_at: &occurred_at,
            correlation_id: &self.correlation_id,
            causation_id: self.causation_id.as_deref(),
            principal_kind: self.principal_kind,
            principal_id: &self.principal_id,
            principal_roles: &self.principal_roles,
            mfa: self.mfa,
            source: self.source,
            request_id: self.request_id.as_deref(),
            client_ip: self.client_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            resource_type: self.resource_type.as_deref(),
            resource_id: self.resource_id.as_deref(),
            body: &self.body,
        }))
    }

    /// Binds the values to the next 19 parameters of a SQLite statement, encoded as the
    /// sea-query `INSERT` of [`Row::values`] encodes them (the test
    /// `a_sqlite_batch_writes_what_the_statements_write` compares the two).
    fn bind(self, q: SqliteQuery<'_>) -> SqliteQuery<'_> {
        bind_row!(q, self)
    }

    /// Binds the values to the next 19 parameters of a PostgreSQL statement.
    fn bind_pg(self, q: PgQuery<'_>) -> PgQuery<'_> {
        bind_row!(q, self)
    }
}

/// How an entry's time is written into the bytes its hash covers: RFC 3339 UTC with
/// microseconds (chrono truncates, as the databases do).
pub(crate) const OCCURRED_AT_HASHED: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// Entries per INSERT statement (19 bound values each: well under either engine's limit).
const ROWS_PER_STATEMENT: usize = 500;

/// Records one entry in `buf` for [`flush`] to write, and returns its id. The id (time-sortable)
/// and the request context are taken now, so entries keep the order they were recorded in.
///
/// With the `bench-unjournaled` feature (for `bench/journal_write.sh` only, never for a real
/// deployment) it records nothing and only returns a fresh id, so the benchmark can measure what
/// journaling costs a mutation.
pub(crate) fn record(buf: &mut Buffer, tenant_id: String, environment: &str, e: NewEntry<'_>) -> String {
    let id = JournalId::new().to_string();
    if cfg!(feature = "bench-unjournaled") {
        return id;
    }
    let meta = buf.meta.get_or_insert_with(current_meta).clone();
    buf.rows.push(Row {
        tenant_id,
        environment: environment.to_owned(),
        id: id.clone(),
        kind: e.kind,
        type_: e.type_.to_owned(),
        occurred_at: e.occurred_at,
        correlation_id: e.correlation_id.map_or(meta.correlation_id, str::to_owned),
        // An action of a job is caused by what queued the job.
        causation_id: e.causation_id.map(str::to_owned).or(meta.causation_id),
        principal_kind: e.principal.kind.as_str(),
        principal_id: e.principal.id.clone(),
        principal_roles: e.principal.roles.clone(),
        mfa: e.mfa,
        source: meta.source,
        request_id: meta.request_id,
        client_ip: meta.client_ip,
        user_agent: meta.user_agent,
        resource_type: e.resource.map(|r| r.0.to_owned()),
        resource_id: e.resource.map(|r| r.1.to_owned()),
        body: azotte_crypto::chain::canonical_json(&e.body),
    });
    id
}

/// Writes the recorded entries in `tx`, in recording order, as one multi-row INSERT (per 500
/// entries). On PostgreSQL the same statement puts each on the sealer's work list
/// (`journal_pending`) with its hash ([`pg_statements`]); on SQLite the sealer finds them by log
/// position. Nothing else is written.
pub(crate) async fn flush(tx: &mut Tx, buf: Buffer) -> Result<()> {
    if let Tx::Postgres(_) = tx {
        for q in pg_statements(buf) {
            q.execute(tx).await?;
        }
        return Ok(());
    }
    for q in statements(buf) {
        tx.execute(&q).await?;
    }
    Ok(())
}

/// PostgreSQL: one statement that writes up to [`ROWS_PER_STATEMENT`] entries and, in a
/// data-modifying `WITH`, puts them on the sealer's work list with their hashes
/// ([`Row::hash_hex`]): one work-list row per chain the statement writes to (a transaction's
/// entries are commonly all of one chain), naming its first entry and hash and, in arrays, the
/// others (migration 0031). The work-list row commits with its entries or not at all; the sealer
/// chains the hashes it is given rather than read the entries back, and verification recomputes
/// every hash from the stored entry, so an entry changed after it was written is reported whether
/// or not it was sealed yet.
///
/// The text for a statement of up to [`CACHED_ROWS`] entries of one chain is built once and kept
/// (with and without the cache acknowledgement), and the values are bound straight from the rows,
/// as on SQLite ([`sqlite_commit`]).
pub(crate) struct PgInsert {
    rows: Vec<Row>,
    /// Per chain, in order of first appearance.
    lists: Vec<ChainList>,
    /// The transaction's inserts held for its commit ([`Carried`]), written in this statement's
    /// `WITH`.
    carried: Vec<Carried>,
}

/// An insert held for its transaction's commit (`TenantTx::insert_last`): its text from the
/// query builder, parameters numbered from `$1`, and its values.
pub(crate) type Carried = (String, sea_query::Values);

/// The tables whose inserts may be held for the commit: none of them has a trigger on insert
/// that tells the committing process to wait for cache evictions (migration 0022's
/// `azotte.cache_changed`), which the statement's acknowledgement reads while it runs, before
/// the triggers of its own inserts would fire. `carriable_tables_notify_no_cache` checks this
/// against the migrated database.
pub(crate) const CARRIABLE: [&str; 8] = [
    "invoices",
    "invoice_lines",
    "invoice_payments",
    "checkouts",
    "payments",
    "payment_methods",
    "offers",
    "customers",
];

/// Whether `sql` (from the query builder) is an `INSERT` into one of [`CARRIABLE`] tables.
pub(crate) fn carriable(sql: &str) -> bool {
    let Some(rest) = sql.strip_prefix("INSERT INTO ") else { return false };
    let target = rest.split(' ').next().unwrap_or_default();
    let table = target.rsplit('.').next().unwrap_or_default().trim_matches('"');
    CARRIABLE.contains(&table)
}

/// The entries a statement writes to one chain: tenant, environment, and (id, hash) of each.
type ChainList = (String, String, Vec<(String, String)>);

impl PgInsert {
    fn new(rows: Vec<Row>) -> Self {
        let mut lists: Vec<ChainList> = Vec::new();
        for r in &rows {
            let entry = (r.id.clone(), r.hash_hex());
            match lists.iter_mut().find(|(t, e, _)| *t == r.tenant_id && *e == r.environment) {
                Some(l) => l.2.push(entry),
                None => lists.push((r.tenant_id.clone(), r.environment.clone(), vec![entry])),
            }
        }
        PgInsert { rows, lists, carried: Vec::new() }
    }

    /// Writes `carried` in this statement too, unless that would bind more parameters than a
    /// statement may: then they are handed back, to be run on their own.
    pub(crate) fn carry(&mut self, carried: Vec<Carried>) -> Vec<Carried> {
        let own = 19 * self.rows.len() + 6 * self.lists.len() + 2;
        let theirs: usize = carried.iter().map(|(_, v)| v.0.len()).sum();
        if own + theirs > crate::exec::MAX_PARAMETERS {
            return carried;
        }
        // Numbered after one another, from `$1`.
        let mut base = 0;
        let mut numbered = Vec::with_capacity(carried.len());
        for (sql, values) in &carried {
            let Some(text) = crate::exec::renumber(sql, base, values.0.len()) else { return carried };
            base += values.0.len();
            numbered.push(text);
        }
        self.carried = numbered.into_iter().zip(carried).map(|(text, (_, values))| (text, values)).collect();
        Vec::new()
    }

    /// The statement's text; with `ack`, preceded by the cache acknowledgement
    /// (`ack AS (…)`, [`crate::cache_listen::ACK_SELECT`], its two parameters after the
    /// statement's own) and returning `(SELECT count(*) FROM ack)` per entry.
    pub(crate) fn sql(&self, ack: bool) -> Cow<'static, str> {
        static TEXTS: [[OnceLock<String>; CACHED_ROWS + 1]; 2] =
            [const { [const { OnceLock::new() }; CACHED_ROWS + 1] }; 2];
        let (n, k) = (self.rows.len(), self.lists.len());
        if !self.carried.is_empty() {
            return Cow::Owned(pg_text(n, k, ack, &self.carried));
        }
        let text = || pg_text(n, k, ack, &[]);
        match (k, TEXTS[usize::from(ack)].get(n)) {
            (1, Some(t)) => Cow::Borrowed(t.get_or_init(text).as_str()),
            _ => Cow::Owned(text()),
        }
    }

    /// The statement `sql` ([`PgInsert::sql`]) with its values bound, in the order of its
    /// parameters: the carried inserts' first, then the entries' (the acknowledgement's two
    /// follow, bound by the caller).
    pub(crate) fn query(mut self, sql: &str) -> PgQuery<'_> {
        use sqlx::IntoArguments;
        let carried = std::mem::take(&mut self.carried);
        let values = carried.into_iter().flat_map(|(_, v)| v.0).collect();
        let args: sqlx::postgres::PgArguments = IntoArguments::<sqlx::Postgres>::into_arguments(
            sea_query_binder::SqlxValues(sea_query::Values(values)),
        );
        self.bind(sqlx::query_with(sql, args))
    }

    /// Binds the entries' values to `q`, after those it has.
    fn bind(self, mut q: PgQuery<'_>) -> PgQuery<'_> {
        for row in self.rows {
            q = row.bind_pg(q);
        }
        for (tenant, env, entries) in self.lists {
            let mut entries = entries.into_iter();
            let (first, first_hash) = entries.next().unwrap_or_default();
            let (ids, hashes): (Vec<String>, Vec<String>) = entries.unzip();
            let (ids, hashes) = if ids.is_empty() { (None, None) } else { (Some(ids), Some(hashes)) };
            q = q.bind(tenant).bind(env).bind(first).bind(first_hash).bind(ids).bind(hashes);
        }
        q
    }

    /// Runs the statement.
    pub(crate) async fn execute(self, tx: &mut Tx) -> Result<()> {
        let Tx::Postgres(t) = tx else {
            return Err(StoreError::Corrupt("a PostgreSQL journal statement on SQLite".into()));
        };
        let sql = self.sql(false);
        self.query(&sql).execute(t.conn()?).await?;
        Ok(())
    }
}

/// `WITH [ack,] pending AS (INSERT INTO journal_pending …)[, c0 AS (INSERT …), …] INSERT INTO
/// journal_entries … VALUES …` for `n` entries on `k` chains and the `carried` inserts (their
/// texts numbered one after another from `$1`, [`PgInsert::carry`]): the carried inserts' values
/// first, then the entries' values, six per chain's work-list row, and, with `ack`, the
/// acknowledgement's two.
pub(crate) fn pg_text(n: usize, k: usize, ack: bool, carried: &[Carried]) -> String {
    let mut ctes = String::new();
    let mut base = 0;
    for (i, (sql, values)) in carried.iter().enumerate() {
        ctes.push_str(&format!(", c{i} AS ({sql})"));
        base += values.0.len();
    }
    let columns: Vec<String> = std::iter::once(JournalEntries::TenantId)
        .chain(ENTRY_COLUMNS)
        .map(|c| format!("\"{}\"", c.to_string()))
        .collect();
    let values = (0..n)
        .map(|r| {
            let list = (base + 19 * r + 1..=base + 19 * r + 19).map(|i| format!("${i}")).collect::<Vec<_>>();
            format!("({})", list.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The arrays' type is given: a NULL array has none of its own.
    let lists = (0..k)
        .map(|c| {
            let b = base + 19 * n + 6 * c;
            format!(
                "(${}, ${}, ${}, ${}, ${}::text[], ${}::text[])",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let p = base + 19 * n + 6 * k;
    let pending = format!(
        "pending AS (INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id, entry_hash, \
         more_ids, more_hashes) VALUES {lists}){ctes}"
    );
    let insert = format!(
        "INSERT INTO \"{}\" ({}) VALUES {values}",
        JournalEntries::Table.to_string(),
        columns.join(", ")
    );
    if !ack {
        format!("WITH {pending} {insert}")
    } else {
        let ack = crate::cache_listen::ACK_SELECT
            .replace("$A", &format!("${}", p + 1))
            .replace("$B", &format!("${}", p + 2));
        format!("WITH ack AS ({ack}), {pending} {insert} RETURNING (SELECT count(*) FROM ack)")
    }
}

/// PostgreSQL: the statements that write the recorded entries and their work-list rows (none
/// when nothing was recorded), for a caller that runs them itself.
pub(crate) fn pg_statements(buf: Buffer) -> Vec<PgInsert> {
    batches(buf).map(PgInsert::new).collect()
}

/// The recorded entries in statements of up to [`ROWS_PER_STATEMENT`], in recording order.
fn batches(buf: Buffer) -> impl Iterator<Item = Vec<Row>> {
    let mut rows = buf.rows.into_iter().peekable();
    std::iter::from_fn(move || {
        rows.peek().is_some().then(|| rows.by_ref().take(ROWS_PER_STATEMENT).collect())
    })
}

/// The multi-row `INSERT` of `rows`.
fn entries_insert(rows: Vec<Row>) -> sea_query::InsertStatement {
    let mut q = Query::insert()
        .into_table(JournalEntries::Table)
        .columns(std::iter::once(JournalEntries::TenantId).chain(ENTRY_COLUMNS))
        .to_owned();
    for row in rows {
        q.values_panic(row.values());
    }
    q
}

/// SQLite: the statements that write the recorded entries (none when nothing was recorded).
pub(crate) fn statements(buf: Buffer) -> Vec<sea_query::InsertStatement> {
    batches(buf).map(entries_insert).collect()
}

/// SQLite: the batch that writes the recorded entries and commits — `INSERT …; COMMIT`, or only
/// `COMMIT` when nothing was recorded — and the entries to bind to it ([`EntryRows::bind`]), for
/// [`Tx::commit_sqlite`](crate::exec::Tx::commit_sqlite).
///
/// This is the commit of every journaled write, run while the transaction holds SQLite's one
/// writer connection, so it skips the query builder: the text for up to [`CACHED_ROWS`] entries
/// is built once per count and kept (a transaction commonly records two or three), and the
/// values are bound straight from the rows.
pub(crate) fn sqlite_commit(buf: Buffer) -> (Cow<'static, str>, EntryRows) {
    static TEXTS: [OnceLock<String>; CACHED_ROWS + 1] = [const { OnceLock::new() }; CACHED_ROWS + 1];
    let n = buf.rows.len();
    let sql = match TEXTS.get(n) {
        Some(text) => Cow::Borrowed(text.get_or_init(|| sqlite_commit_text(n)).as_str()),
        None => Cow::Owned(sqlite_commit_text(n)),
    };
    (sql, EntryRows(buf.rows))
}

/// Recorded entries, to bind to the text of [`sqlite_commit`].
pub(crate) struct EntryRows(Vec<Row>);

impl EntryRows {
    /// Binds every entry's values, in order, to the next parameters of `q`.
    pub(crate) fn bind(self, mut q: SqliteQuery<'_>) -> SqliteQuery<'_> {
        for row in self.0 {
            q = row.bind(q);
        }
        q
    }
}

/// Entry counts whose [`sqlite_commit`] text is kept.
const CACHED_ROWS: usize = 8;

/// `INSERT INTO journal_entries (…) VALUES (?, …), …;` per [`ROWS_PER_STATEMENT`] of `n`
/// entries, then `COMMIT`.
fn sqlite_commit_text(n: usize) -> String {
    let columns: Vec<String> = std::iter::once(JournalEntries::TenantId)
        .chain(ENTRY_COLUMNS)
        .map(|c| format!("\"{}\"", c.to_string()))
        .collect();
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    let mut sql = String::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(ROWS_PER_STATEMENT);
        sql.push_str(&format!(
            "INSERT INTO \"{}\" ({}) VALUES {};\n",
            JournalEntries::Table.to_string(),
            columns.join(", "),
            vec![row.as_str(); k].join(", ")
        ));
        left -= k;
    }
    sql.push_str("COMMIT");
    sql
}

/// Writes one entry now, in `tx`; returns the entry's id. For transactions that are not a
/// [`TenantTx`] or [`PlatformTx`], which buffer their entries until commit instead.
pub(crate) async fn insert(
    tx: &mut Tx,
    tenant_id: &str,
    environment: &str,
    e: NewEntry<'_>,
) -> Result<String> {
    let mut buf = Buffer::default();
    let id = record(&mut buf, tenant_id.to_owned(), environment, e);
    flush(tx, buf).await?;
    Ok(id)
}

fn mfa_of(c: &Credential) -> bool {
    matches!(c, Credential::Session { mfa_at: Some(_), .. })
}

/// Where an entry sits in the chain of a request: the action, then what it caused.
macro_rules! journal_methods {
    ($t:ty, $scope:ty, $tenant:expr, $env:expr) => {
        impl $t {
            /// Records the action this transaction performs. Call it before or after the change;
            /// `commit` refuses a transaction that wrote without one. Entries are written at
            /// `commit`, in the same transaction as the change, in the order recorded.
            pub async fn action(
                &mut self,
                now: DateTime<Utc>,
                type_: &str,
                resource: Option<(&str, &str)>,
                body: Value,
            ) -> Result<String> {
                let id = self.record(Kind::Action, now, type_, None, None, resource, body);
                self.action_id = Some(id.clone());
                Ok(id)
            }

            /// Records a decision taken while performing the action (caused by it).
            pub async fn decision(
                &mut self,
                now: DateTime<Utc>,
                type_: &str,
                resource: Option<(&str, &str)>,
                body: Value,
            ) -> Result<String> {
                self.follow_up(Kind::Decision, now, type_, resource, body)
            }

            /// Records an outcome: the domain event with what changed (caused by the action).
            pub async fn outcome(
                &mut self,
                now: DateTime<Utc>,
                type_: &str,
                resource: Option<(&str, &str)>,
                body: Value,
            ) -> Result<String> {
                self.follow_up(Kind::Outcome, now, type_, resource, body)
            }

            fn follow_up(
                &mut self,
                kind: Kind,
                now: DateTime<Utc>,
                type_: &str,
                resource: Option<(&str, &str)>,
                body: Value,
            ) -> Result<String> {
                let cause = self.action_id.clone().ok_or(StoreError::Unjournaled)?;
                Ok(self.record(kind, now, type_, Some(&cause), None, resource, body))
            }

            /// Starts a new lineage within this transaction: the entries recorded from now on
            /// carry `meta`'s correlation and causation, and have no action until the next one is
            /// recorded. A transaction doing the same work for many independent requests at once
            /// (a renewal batch) records each one's entries in its own lineage, as if each had a
            /// transaction of its own.
            pub fn begin_lineage(&mut self, meta: RequestMeta) {
                self.journal.meta = Some(meta);
                self.action_id = None;
            }

            /// Where this transaction's entries sit: their correlation id and its action (once
            /// recorded), for work that continues them later, in another transaction.
            pub fn cause(&self) -> Cause {
                Cause {
                    correlation_id: self
                        .journal
                        .meta
                        .as_ref()
                        .map_or_else(current_correlation_id, |m| m.correlation_id.clone()),
                    action_id: self.action_id.clone(),
                }
            }

            /// Records an outcome of an action of another transaction, in that action's lineage
            /// (`cause`, from [`Self::cause`] there, taken once its action was recorded): work
            /// finished later on its behalf, such as an invoice numbered after its issuer
            /// committed. This transaction's own action must be recorded first, as for any
            /// outcome.
            pub async fn outcome_of(
                &mut self,
                cause: &Cause,
                now: DateTime<Utc>,
                type_: &str,
                resource: Option<(&str, &str)>,
                body: Value,
            ) -> Result<String> {
                if self.action_id.is_none() || cause.action_id.is_none() {
                    return Err(StoreError::Unjournaled);
                }
                Ok(self.record(
                    Kind::Outcome,
                    now,
                    type_,
                    cause.action_id.as_deref(),
                    Some(&cause.correlation_id),
                    resource,
                    body,
                ))
            }

            #[allow(clippy::too_many_arguments)]
            fn record(
                &mut self,
                kind: Kind,
                now: DateTime<Utc>,
                type_: &str,
                causation_id: Option<&str>,
                correlation_id: Option<&str>,
                resource: Option<(&str, &str)>,
                body: Value,
            ) -> String {
                let scope: &$scope = &self.scope;
                record(
                    &mut self.journal,
                    $tenant(scope),
                    $env(scope),
                    NewEntry {
                        kind,
                        type_,
                        occurred_at: now,
                        causation_id,
                        correlation_id,
                        principal: scope.principal(),
                        mfa: mfa_of(scope.credential()),
                        resource,
                        body,
                    },
                )
            }
        }
    };
}

journal_methods!(
    TenantTx,
    crate::TenantScope,
    |s: &crate::TenantScope| s.tenant_id().to_string(),
    |s: &crate::TenantScope| s.environment().as_str()
);
journal_methods!(
    PlatformTx,
    crate::PlatformScope,
    |_: &crate::PlatformScope| PLATFORM.to_owned(),
    |_: &crate::PlatformScope| PLATFORM
);

impl crate::TenantTx {
    /// Goes on as another principal of the same tenant environment (a system job's scope) in a
    /// new lineage: the entries recorded from now on are that principal's, with `meta`'s
    /// correlation and causation, as if it had a transaction of its own — a job's first step
    /// written in the transaction of the request that starts the job. Panics when `scope` is of
    /// another tenant environment (a programming error: the transaction's row-level security
    /// admits this one only).
    pub fn continue_as(&mut self, scope: crate::TenantScope, meta: RequestMeta) {
        assert!(
            scope.tenant_id() == self.scope.tenant_id() && scope.environment() == self.scope.environment(),
            "a transaction goes on in its own tenant environment only"
        );
        self.scope = scope;
        self.begin_lineage(meta);
    }
}

/// A security decision outside any mutation (failed login, denied request, token reuse), in
/// its own transaction. `tenant` None writes to the platform journal.
pub async fn record_security(
    db: &Db,
    tenant: Option<(azotte_domain::id::TenantId, &str)>,
    now: DateTime<Utc>,
    type_: &str,
    principal: &Principal,
    resource: Option<(&str, &str)>,
    body: Value,
) -> Result<()> {
    let mut tx = db.unscoped_tx().await?;
    let (tenant_id, env) = match tenant {
        Some((id, env)) => {
            crate::tenants::enter_tenant(&mut tx, id).await?;
            (id.to_string(), env.to_owned())
        }
        None => {
            tx.enter_platform().await?;
            (PLATFORM.to_owned(), PLATFORM.to_owned())
        }
    };
    insert(
        &mut tx,
        &tenant_id,
        &env,
        NewEntry {
            kind: Kind::Decision,
            type_,
            occurred_at: now,
            causation_id: None,
            correlation_id: None,
            principal,
            mfa: false,
            resource,
            body,
        },
    )
    .await?;
    tx.commit().await
}

/// A journal entry as read back.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Entry {
    pub id: String,
    pub environment: String,
    pub kind: String,
    #[sqlx(rename = "type")]
    pub type_: String,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub principal_kind: String,
    pub principal_id: String,
    pub principal_roles: Json<Vec<String>>,
    pub mfa: bool,
    pub source: String,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Canonical JSON text, as hashed; see [`Entry::body_json`].
    pub body: String,
}

impl Entry {
    /// The body as JSON (it was written by the service as valid JSON; anything else reads as
    /// `null`, and verification reports the entry as modified).
    pub fn body_json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Filters of a journal listing; all optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub kind: Option<String>,
    pub type_: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub principal_id: Option<String>,
    pub correlation_id: Option<String>,
}

fn select_entries() -> sea_query::SelectStatement {
    Query::select().columns(ENTRY_COLUMNS).from(JournalEntries::Table).to_owned()
}

/// On SQLite, the conditions that find a tenant's entries by correlation id
/// (`journal_by_correlation`) or by resource (`journal_by_resource`), to add to the plain column
/// conditions (which stay: a lookup row can narrow the search, never add an entry). The sealer
/// keeps those lookup tables for the entries up to the seal mark, so the entries after it — the
/// few not sealed yet — are found by scanning the log from the mark (migration 0027, decision
/// 0010). The tenant is compared as `+tenant_id`, which keeps SQLite's planner from walking the
/// tenant's whole journal by its id index instead of fetching the positions found; the log's
/// tail is read `NOT INDEXED`, by position.
///
/// `keys` are the lookup table's key columns after `tenant_id`, with their values; table and
/// column names are the code's own (`'static`), only values are bound.
fn sqlite_lookup(
    table: &'static str,
    tenant: &str,
    keys: &[(&'static str, &str)],
) -> [sea_query::SimpleExpr; 2] {
    let cond = std::iter::once("tenant_id")
        .chain(keys.iter().map(|(k, _)| *k))
        .map(|k| format!("{k} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let values = || {
        std::iter::once(sea_query::Value::from(tenant.to_owned()))
            .chain(keys.iter().map(|(_, v)| sea_query::Value::from((*v).to_owned())))
    };
    [
        Expr::cust_with_values("+tenant_id = ?", [tenant.to_owned()]),
        Expr::cust_with_values(
            format!(
                "pos IN (SELECT pos FROM {table} WHERE {cond} UNION ALL SELECT pos FROM journal_entries \
                 NOT INDEXED WHERE pos > COALESCE((SELECT pos FROM journal_seal_mark WHERE id = 1), 0) \
                 AND {cond})"
            ),
            values().chain(values()),
        ),
    ]
}

/// The tenant's entries: on SQLite through a lookup table when `lookup` names one (see
/// [`sqlite_lookup`]), else by the tenant column.
fn tenant_entries(
    tx: &TenantTx,
    lookup: Option<(&'static str, Vec<(&'static str, &str)>)>,
) -> sea_query::SelectStatement {
    let tenant = tx.scope().tenant_id().to_string();
    let mut q = select_entries();
    match lookup {
        Some((table, keys)) if matches!(tx.tx, Tx::Sqlite(_)) => {
            for cond in sqlite_lookup(table, &tenant, &keys) {
                q.and_where(cond);
            }
        }
        _ => {
            q.and_where(Expr::col(JournalEntries::TenantId).eq(tenant));
        }
    }
    q
}

/// Entries of the scope's tenant and environment, oldest first, after `starting_after`.
pub async fn list(
    tx: &mut TenantTx,
    f: &Filter,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<Entry>, bool)> {
    let lookup = match (&f.correlation_id, &f.resource_type) {
        (Some(c), _) => Some(("journal_by_correlation", vec![("correlation_id", c.as_str())])),
        (None, Some(t)) => {
            let mut keys = vec![("resource_type", t.as_str())];
            keys.extend(f.resource_id.as_deref().map(|r| ("resource_id", r)));
            Some(("journal_by_resource", keys))
        }
        (None, None) => None,
    };
    let mut q = tenant_entries(tx, lookup)
        .and_where(Expr::col(JournalEntries::Environment).eq(tx.scope().environment().as_str()))
        .order_by(JournalEntries::Id, Order::Asc)
        .limit(u64::from(limit) + 1)
        .to_owned();
    let eq = |q: &mut sea_query::SelectStatement, col: JournalEntries, v: &Option<String>| {
        if let Some(v) = v {
            q.and_where(Expr::col(col).eq(v.clone()));
        }
    };
    eq(&mut q, JournalEntries::Kind, &f.kind);
    eq(&mut q, JournalEntries::Type, &f.type_);
    eq(&mut q, JournalEntries::ResourceType, &f.resource_type);
    eq(&mut q, JournalEntries::ResourceId, &f.resource_id);
    eq(&mut q, JournalEntries::PrincipalId, &f.principal_id);
    eq(&mut q, JournalEntries::CorrelationId, &f.correlation_id);
    if let Some(from) = f.from {
        q.and_where(Expr::col(JournalEntries::OccurredAt).gte(from));
    }
    if let Some(to) = f.to {
        q.and_where(Expr::col(JournalEntries::OccurredAt).lt(to));
    }
    if let Some(after) = starting_after {
        q.and_where(Expr::col(JournalEntries::Id).gt(after));
    }
    let mut rows = tx.tx.fetch_all::<Entry>(&q).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

/// Every entry of the tenant (any environment) with a correlation id, oldest first.
pub async fn by_correlation(tx: &mut TenantTx, correlation_id: &str) -> Result<Vec<Entry>> {
    let q = by_correlation_query(tx, correlation_id);
    tx.tx.fetch_all::<Entry>(&q).await
}

fn by_correlation_query(tx: &TenantTx, correlation_id: &str) -> sea_query::SelectStatement {
    tenant_entries(tx, Some(("journal_by_correlation", vec![("correlation_id", correlation_id)])))
        .and_where(Expr::col(JournalEntries::CorrelationId).eq(correlation_id))
        .order_by(JournalEntries::Id, Order::Asc)
        .limit(10_000)
        .to_owned()
}

/// Every entry about one resource in the scope's environment, oldest first: its timeline.
pub async fn timeline(tx: &mut TenantTx, resource_type: &str, resource_id: &str) -> Result<Vec<Entry>> {
    let q = timeline_query(tx, resource_type, resource_id);
    tx.tx.fetch_all::<Entry>(&q).await
}

fn timeline_query(tx: &TenantTx, resource_type: &str, resource_id: &str) -> sea_query::SelectStatement {
    let keys = vec![("resource_type", resource_type), ("resource_id", resource_id)];
    tenant_entries(tx, Some(("journal_by_resource", keys)))
        .and_where(Expr::col(JournalEntries::Environment).eq(tx.scope().environment().as_str()))
        .and_where(Expr::col(JournalEntries::ResourceType).eq(resource_type))
        .and_where(Expr::col(JournalEntries::ResourceId).eq(resource_id))
        .order_by(JournalEntries::Id, Order::Asc)
        .limit(10_000)
        .to_owned()
}

#[cfg(test)]
#[path = "journal_lookup_tests.rs"]
mod lookup_tests;

#[cfg(test)]
#[path = "journal_batch_tests.rs"]
mod batch_tests;
