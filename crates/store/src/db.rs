//! The database handle, connection setup per backend, migrations and scoped transactions.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use azotte_domain::Secret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor, PgPool, SqlitePool};

use crate::cache::{CacheOptions, ReadCache};
use crate::exec::Tx;
use crate::pg_conns::{on_live_connection, PgConns, PgTx};
use crate::scope::{PlatformScope, TenantScope};
use crate::{Result, StoreError};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// The role the service runs its PostgreSQL queries as. It owns no table, so row-level
/// security applies to it, and it has no UPDATE/DELETE grant on append-only tables.
pub const APP_ROLE: &str = "azotte_app";

/// Which database engine is behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (the default, no configuration).
    Sqlite,
    /// PostgreSQL (production).
    Postgres,
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// `sqlite://path` or `postgres://…`; a secret because it may hold a password.
    pub url: Secret<String>,
    /// Pool size. On SQLite, the readers' pool: writes go through one more connection.
    pub max_connections: u32,
    /// How long to wait for a connection before reporting the database unavailable.
    pub acquire_timeout: Duration,
    /// The read caches (API keys, grants) and their staleness bound.
    pub cache: CacheOptions,
}

impl DbOptions {
    /// Options for a URL with default pool settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url.into()),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            cache: CacheOptions::default(),
        }
    }

    /// The backend the URL names, or an error naming what was wrong.
    pub fn backend(&self) -> std::result::Result<Backend, String> {
        let url = self.url.expose();
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err("must start with sqlite:// or postgres://".into())
        }
    }

    /// The URL with any password masked, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

fn redact_url(url: &str) -> String {
    // scheme://user:password@host → scheme://user:***@host
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            let user = creds.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_owned()
}

#[derive(Clone)]
enum Pool {
    /// SQLite admits one writer at a time. Every write transaction takes the one connection of
    /// `write`, so a writer waits in that pool's queue and is woken the moment the previous one
    /// commits; on SQLite's own lock it would poll, asleep for up to 100 ms between tries (the
    /// busy handler), while the lock may sit free. Read transactions use `read`.
    Sqlite { read: SqlitePool, write: SqlitePool },
    /// The store's own connections (`pg_conns`: none pinged when it comes back), and, for
    /// tests that run raw SQL, a sqlx pool that opens connections only if used; and how to
    /// connect as the login role itself, without the session settings (`end_fence_holder`).
    Postgres { conns: Arc<PgConns>, raw: PgPool, login: Arc<sqlx::postgres::PgConnectOptions> },
}

/// A connection pool to one database, with this process's read caches. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    pub(crate) cache: Arc<ReadCache>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({:?})", self.backend())
    }
}

impl Db {
    /// Runs pending migrations. On PostgreSQL this uses the configured login role, which owns
    /// the tables; the serving pool from [`Db::connect`] then switches to [`APP_ROLE`].
    pub async fn migrate(opts: &DbOptions) -> Result<()> {
        match opts.backend().map_err(StoreError::InvalidUrl)? {
            Backend::Sqlite => {
                let pool = sqlite_pool(opts, 1, opts.acquire_timeout, None).await?;
                SQLITE_MIGRATOR.run(&pool).await?;
                pool.close().await;
            }
            Backend::Postgres => {
                let mut conn = pg_options(opts)?.connect().await?;
                POSTGRES_MIGRATOR.run(&mut conn).await?;
                conn.close().await?;
            }
        }
        Ok(())
    }

    /// Runs the backend's migrations before `version` only: a database as an older release left
    /// it, for tests of a later migration.
    #[cfg(test)]
    pub(crate) async fn migrate_before(opts: &DbOptions, version: i64) -> Result<()> {
        let older = |m: &Migrator| Migrator {
            migrations: m.migrations.iter().filter(|m| m.version < version).cloned().collect(),
            ..Migrator::DEFAULT
        };
        match opts.backend().map_err(StoreError::InvalidUrl)? {
            Backend::Sqlite => {
                let pool = sqlite_pool(opts, 1, opts.acquire_timeout, None).await?;
                older(&SQLITE_MIGRATOR).run(&pool).await?;
                pool.close().await;
            }
            Backend::Postgres => {
                let mut conn = pg_options(opts)?.connect().await?;
                older(&POSTGRES_MIGRATOR).run(&mut conn).await?;
                conn.close().await?;
            }
        }
        Ok(())
    }

    /// Opens the serving pool. Migrations must have run (see [`Db::migrate`]).
    pub async fn connect(opts: &DbOptions) -> Result<Db> {
        let backend = opts.backend().map_err(StoreError::InvalidUrl)?;
        // On SQLite every write of this process goes through the hooked writer connection: the
        // change feed works from the start. PostgreSQL's starts with its LISTEN connection.
        let cache = Arc::new(ReadCache::new(opts.cache, backend == Backend::Sqlite));
        let pool = match backend {
            Backend::Sqlite => {
                let read = sqlite_pool(opts, opts.max_connections, opts.acquire_timeout, None).await?;
                // A writer may wait for the others as long as it waited for SQLite's lock before.
                let write =
                    sqlite_pool(opts, 1, opts.acquire_timeout + SQLITE_BUSY_TIMEOUT, Some(cache.clone()))
                        .await?;
                spawn_checkpointer(read.clone(), write.clone(), Arc::downgrade(&cache));
                Pool::Sqlite { read, write }
            }
            Backend::Postgres => {
                let options = pg_options(opts)?;
                let session = vec![
                    format!("SET ROLE {APP_ROLE}"),
                    // Customer data has its own schema; queries name tables unqualified.
                    "SET search_path = public, customer_data".to_owned(),
                    // Every transaction READ COMMITTED, whatever the server's
                    // `default_transaction_isolation`: locking reads and conditional updates rely
                    // on each statement seeing what committed before it (decision 0007).
                    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED".to_owned(),
                ];
                let login = Arc::new(options.clone());
                let conns = PgConns::new(
                    options.clone(),
                    session.clone(),
                    opts.max_connections,
                    opts.acquire_timeout,
                );
                // Connected once now, as the pool did: a wrong URL fails at start-up.
                let mut first = conns.acquire().await?;
                first.ended();
                drop(first);
                let raw = PgPoolOptions::new()
                    .max_connections(2)
                    .after_connect(move |conn, _| {
                        let session = session.clone();
                        Box::pin(async move {
                            for s in &session {
                                conn.execute(s.as_str()).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options);
                if cache.enabled() {
                    crate::cache_listen::spawn(&cache, pg_options(opts)?);
                }
                Pool::Postgres { conns, raw, login }
            }
        };
        Ok(Db { pool, cache })
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite { .. } => Backend::Sqlite,
            Pool::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite { read: p, .. } => p.execute("SELECT 1").await.map(drop)?,
            Pool::Postgres { conns, .. } => {
                on_live_connection(conns, |mut c| async move {
                    c.conn()?.execute("SELECT 1").await?;
                    c.ended();
                    Ok(())
                })
                .await?
            }
        }
        Ok(())
    }

    /// How many of the migrations this build knows have not been applied (successfully).
    pub async fn pending_migrations(&self) -> Result<usize> {
        let (migrator, applied): (&Migrator, Vec<(i64, bool)>) = match &self.pool {
            Pool::Sqlite { read: p, .. } => (
                &SQLITE_MIGRATOR,
                sqlx::query_as("SELECT version, success FROM _sqlx_migrations").fetch_all(p).await?,
            ),
            Pool::Postgres { conns, .. } => (&POSTGRES_MIGRATOR, {
                let mut c = conns.acquire().await?;
                let rows = sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
                    .fetch_all(c.conn()?)
                    .await?;
                c.ended();
                rows
            }),
        };
        Ok(migrator.iter().filter(|m| !applied.iter().any(|(v, ok)| *v == m.version && *ok)).count())
    }

    /// Closes the pool. SQLite: waits for connections in use to be returned; PostgreSQL: closes
    /// the idle connections now and each one in use when it comes back.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite { read, write } => {
                write.close().await;
                read.close().await;
            }
            Pool::Postgres { conns, raw, .. } => {
                conns.close().await;
                raw.close().await;
            }
        }
    }

    /// One read of platform tables outside any transaction: a single round trip, for the
    /// authentication hot path.
    pub(crate) async fn read_optional<T: crate::exec::DbRow>(
        &self,
        stmt: &impl sea_query_binder::SqlxBinder,
    ) -> Result<Option<T>> {
        Ok(match &self.pool {
            Pool::Sqlite { read: p, .. } => {
                let (sql, values) = stmt.build_sqlx(sea_query::SqliteQueryBuilder);
                sqlx::query_as_with(&sql, values).fetch_optional(p).await?
            }
            Pool::Postgres { conns, .. } => {
                let (sql, values) = stmt.build_sqlx(sea_query::PostgresQueryBuilder);
                on_live_connection(conns, |mut c| {
                    let (sql, values) = (&sql, values.clone());
                    async move {
                        let row = sqlx::query_as_with(sql, values).fetch_optional(c.conn()?).await?;
                        c.ended();
                        Ok(row)
                    }
                })
                .await?
            }
        })
    }

    /// A read-only transaction with no tenant set: sees only platform tables.
    pub(crate) async fn unscoped_read_tx(&self) -> Result<Tx> {
        Ok(match &self.pool {
            Pool::Sqlite { read, .. } => Tx::Sqlite(crate::exec::SqliteTx::begin(read, "BEGIN").await?),
            Pool::Postgres { conns, .. } => {
                Tx::Postgres(on_live_connection(conns, |c| PgTx::begin(c, "BEGIN")).await?)
            }
        })
    }

    /// A transaction with no tenant set: sees only platform tables. For authentication writes.
    pub(crate) async fn unscoped_tx(&self) -> Result<Tx> {
        Ok(match &self.pool {
            // IMMEDIATE takes SQLite's write lock up front: a deferred transaction that reads
            // and then writes can fail with SQLITE_BUSY instead of waiting for the lock.
            Pool::Sqlite { write, .. } => {
                let tx = crate::exec::SqliteTx::begin(write, "BEGIN IMMEDIATE").await?;
                // Changes a writer before this one left unapplied (its commit not journaled, or
                // cancelled after SQLite committed it): applied before anything reads the cache
                // under this writer. Over-applying (a rolled-back writer's) only evicts more.
                for ch in self.cache.take_sqlite_pending() {
                    self.cache.apply(&ch);
                }
                Tx::Sqlite(tx)
            }
            Pool::Postgres { conns, .. } => {
                Tx::Postgres(on_live_connection(conns, |c| PgTx::begin(c, "BEGIN")).await?)
            }
        })
    }

    /// A write transaction with only the tenant set (no environment, no principal): for the
    /// authentication layer's own bookkeeping on tenant tables, such as stamping key use.
    pub(crate) async fn tenant_write_tx_for(&self, tenant_id: azotte_domain::id::TenantId) -> Result<Tx> {
        let mut tx = self.unscoped_tx().await?;
        crate::tenants::enter_tenant(&mut tx, tenant_id).await?;
        Ok(tx)
    }

    /// A transaction for platform work (tenants, platform users), flagged as such for RLS.
    pub async fn platform_tx(&self, scope: &PlatformScope) -> Result<PlatformTx> {
        let mut tx = self.unscoped_tx().await?;
        tx.enter_platform().await?;
        Ok(PlatformTx {
            tx,
            scope: scope.clone(),
            action_id: None,
            writes: 0,
            journal: Default::default(),
            at_commit: None,
            cache: Some(self.cache.clone()),
        })
    }

    /// A transaction inside one tenant environment. On PostgreSQL, row-level security limits
    /// every statement in it to that tenant and environment.
    pub async fn tenant_tx(&self, scope: &TenantScope) -> Result<TenantTx> {
        Ok(self.tenant_tx_inner(scope, Begin::Write, false).await?.0)
    }

    /// [`Db::tenant_tx`] holding a fence until it ends: on PostgreSQL an advisory lock of a
    /// random key of its own, taken in its `BEGIN`'s round trip. When its commit fails
    /// unconfirmed ([`StoreError::CommitUnknown`]: the connection went while the `COMMIT` or its
    /// answer was on the way), [`Db::after_fence`] waits for the transaction's end — its commit,
    /// or the server's rollback of a transaction whose connection went — after which a read
    /// shows which it was.
    pub async fn tenant_tx_fenced(&self, scope: &TenantScope) -> Result<(TenantTx, Fence)> {
        let (tx, fence) = self.tenant_tx_inner(scope, Begin::Write, true).await?;
        Ok((tx, fence.unwrap_or_else(Fence::new)))
    }

    /// A read-only transaction that begins once the transaction holding `fence` has ended
    /// ([`Db::tenant_tx_fenced`]), so that what it reads shows whether that transaction
    /// committed: PostgreSQL makes a commit visible before it releases the transaction's locks,
    /// and each statement after the lock's in this READ COMMITTED transaction (every
    /// connection's session default) reads a snapshot taken after it. Waits at most `wait`
    /// for the fence: [`StoreError::Database`] (PostgreSQL's lock timeout) when the server
    /// still holds the transaction open then ([`Db::end_fence_holder`]). It takes the fence
    /// shared: the readers of one fence (the requests of one batch) do not wait for each other.
    /// SQLite, whose commits are never unconfirmed, waits for nothing.
    pub async fn after_fence(&self, scope: &TenantScope, fence: Fence, wait: Duration) -> Result<TenantTx> {
        let mut tx = self.tenant_read_tx(scope).await?;
        if let Tx::Postgres(t) = &mut tx.tx {
            let ms = wait.as_millis().clamp(1, i32::MAX as u128).to_string();
            sqlx::query("SELECT set_config('lock_timeout', $1, true)").bind(ms).execute(t.conn()?).await?;
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
                .bind(fence.0)
                .bind(fence.1)
                .execute(t.conn()?)
                .await?;
        }
        Ok(tx)
    }

    /// Ends the server session still holding `fence` for its transaction (exclusively; the
    /// readers of [`Db::after_fence`] share it and are left alone) — one whose client connection
    /// went without the server noticing (a half-open connection keeps its transaction open until
    /// TCP gives up) — so its transaction rolls back and [`Db::after_fence`] can tell: for a
    /// caller whose own connection to that session failed, which nothing else uses. On a
    /// connection of its own as the login role (the service role may not end the login role's
    /// sessions), closed after. Whether a session was ended (`false`: none held the fence).
    pub async fn end_fence_holder(&self, fence: Fence) -> Result<bool> {
        let Pool::Postgres { login, .. } = &self.pool else { return Ok(false) };
        // Bounded: the database may be as unreachable as the connection that failed.
        let connect =
            tokio::time::timeout(Duration::from_secs(5), sqlx::ConnectOptions::connect(login.as_ref()));
        let mut conn = connect.await.map_err(|_| {
            StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no connection to end a fence's holder in time",
            )))
        })??;
        // pg_locks shows the two keys as unsigned; `objsubid` 2 is the two-key form. Only the
        // fenced transaction holds it exclusively (readers waiting on it share it).
        let ended: std::result::Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(
            "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND mode = 'ExclusiveLock' \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid = $1::int8::oid AND objid = $2::int8::oid AND pid <> pg_backend_pid()",
        )
        .bind(i64::from(fence.0 as u32))
        .bind(i64::from(fence.1 as u32))
        .fetch_one(&mut conn)
        .await;
        let _ = sqlx::Connection::close(conn).await;
        Ok(ended?.unwrap_or(false))
    }

    /// [`Db::tenant_tx`] whose commit returns without waiting for the write-ahead log to reach
    /// the disk (PostgreSQL's `synchronous_commit = off` for this transaction only; SQLite is
    /// unchanged). Other transactions see it committed at once; a crash of the database within
    /// a fraction of a second may lose it, never half of it, and never a later transaction
    /// without it: any transaction that commits durably afterwards flushes it too. Only for rows
    /// whose loss a retry recovers from, such as an `Idempotency-Key` claim (decision 0006).
    pub async fn tenant_tx_unflushed(&self, scope: &TenantScope) -> Result<TenantTx> {
        Ok(self.tenant_tx_inner(scope, Begin::Unflushed, false).await?.0)
    }

    /// [`Db::tenant_tx_unflushed`] holding a fence, as [`Db::tenant_tx_fenced`].
    pub async fn tenant_tx_unflushed_fenced(&self, scope: &TenantScope) -> Result<(TenantTx, Fence)> {
        let (tx, fence) = self.tenant_tx_inner(scope, Begin::Unflushed, true).await?;
        Ok((tx, fence.unwrap_or_else(Fence::new)))
    }

    /// A read-only transaction inside one tenant environment: on SQLite it does not take the
    /// write lock, on PostgreSQL the database refuses any write in it.
    pub async fn tenant_read_tx(&self, scope: &TenantScope) -> Result<TenantTx> {
        Ok(self.tenant_tx_inner(scope, Begin::Read, false).await?.0)
    }

    /// A tenant transaction, and its fence when `fenced` (PostgreSQL).
    async fn tenant_tx_inner(
        &self,
        scope: &TenantScope,
        begin: Begin,
        fenced: bool,
    ) -> Result<(TenantTx, Option<Fence>)> {
        let (tenant, environment) = (scope.tenant_id.to_string(), scope.environment.as_str());
        let mut fence = None;
        let tx = match &self.pool {
            // One round trip: `BEGIN`, the settings row-level security reads and the fence, as
            // one simple-protocol batch (which cannot bind parameters: see
            // `begin_in_environment`). A fence of its own for each try: a dead connection's
            // server session may still hold the last one.
            Pool::Postgres { conns, .. } if plain(&tenant) && plain(environment) => {
                let tx = on_live_connection(conns, |c| {
                    fence = fenced.then(Fence::new);
                    let batch = begin_in_environment(begin, &tenant, environment, fence).unwrap_or_default();
                    async move { PgTx::begin(c, &batch).await }
                })
                .await?;
                Tx::Postgres(tx)
            }
            Pool::Postgres { conns, .. } => {
                let mut tx =
                    Tx::Postgres(on_live_connection(conns, |c| PgTx::begin(c, pg_begin(begin))).await?);
                tx.enter_environment(&tenant, environment).await?;
                if let (true, Tx::Postgres(t)) = (fenced, &mut tx) {
                    let f = Fence::new();
                    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                        .bind(f.0)
                        .bind(f.1)
                        .execute(t.conn()?)
                        .await?;
                    fence = Some(f);
                }
                tx
            }
            Pool::Sqlite { .. } if begin == Begin::Read => self.unscoped_read_tx().await?,
            Pool::Sqlite { .. } => self.unscoped_tx().await?,
        };
        let tx = TenantTx {
            tx,
            scope: scope.clone(),
            action_id: None,
            writes: 0,
            journal: Default::default(),
            at_commit: None,
            cache: (begin != Begin::Read).then(|| self.cache.clone()),
        };
        Ok((tx, fence))
    }

    /// The store's PostgreSQL connections, for tests in this crate.
    #[cfg(test)]
    pub(crate) fn pg_conns(&self) -> Option<&PgConns> {
        match &self.pool {
            Pool::Postgres { conns, .. } => Some(conns),
            Pool::Sqlite { .. } => None,
        }
    }

    /// The PostgreSQL pool, for tests in this crate that must run raw SQL.
    #[cfg(test)]
    pub(crate) fn pg_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres { raw, .. } => Some(raw),
            Pool::Sqlite { .. } => None,
        }
    }
}

/// How long a SQLite connection waits for a lock another process holds.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite pool; `changes`, for the writer's, gets every row change its connection makes.
async fn sqlite_pool(
    opts: &DbOptions,
    max: u32,
    acquire_timeout: Duration,
    changes: Option<Arc<ReadCache>>,
) -> Result<SqlitePool> {
    let url = opts.url.expose();
    let options = SqliteConnectOptions::from_str(url)
        .map_err(StoreError::Unavailable)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    // The writer never checkpoints: [`spawn_checkpointer`] does, beside it.
    let options = if changes.is_some() { options.pragma("wal_autocheckpoint", "0") } else { options };
    let path = options.get_filename();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
    }
    let mut pool = SqlitePoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        // An embedded database does not hang up: no ping (a round trip) on every acquire.
        .test_before_acquire(false);
    if let Some(cache) = changes.filter(|c| c.enabled()) {
        pool = pool.after_connect(move |conn, _| {
            let cache = cache.clone();
            Box::pin(async move {
                conn.lock_handle().await?.set_update_hook(move |r| {
                    cache
                        .sqlite_changed(r.table, matches!(r.operation, sqlx::sqlite::SqliteOperation::Insert))
                });
                Ok(())
            })
        });
    }
    Ok(pool.connect_with(options).await?)
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// A WAL this long (in 4 KiB frames) has not been restarted since the last pass: see
/// [`spawn_checkpointer`]. Lower in tests, which write less.
#[cfg(not(test))]
const WAL_RESTART_FRAMES: i64 = 4096;
#[cfg(test)]
const WAL_RESTART_FRAMES: i64 = 64;

/// How long a checkpoint on the writer connection may take before it is logged as a warning.
const SLOW_WRITER_CHECKPOINT: std::time::Duration = std::time::Duration::from_millis(200);

/// Copies SQLite's write-ahead log into the database file, off the writer connection, for as
/// long as `alive` (the process's read cache, which lives as long as the [`Db`]) does.
///
/// SQLite's automatic checkpoint runs on the connection that commits, after its commit: on the
/// one writer connection (decision 0010) every writer waited for it — copying the pages and two
/// fsyncs, a few ms each time the log passed 1,000 pages, which journaling makes it do about
/// twice as often. So the writer has `wal_autocheckpoint = 0`, and this task runs a PASSIVE
/// checkpoint on a reader connection every [`CHECKPOINT_EVERY`]: it takes no lock writers need,
/// and copies what no reader still needs. The log restarts from its beginning when a writer
/// starts while everything in it has been copied. Under unbroken writes a reader-side pass may
/// never end with the log fully copied (commits land while it runs); so when the log has reached
/// [`WAL_RESTART_FRAMES`], the pass runs on the writer connection instead, where no commit of
/// this process can land meanwhile, and the next writer restarts the log. That pass copies only
/// what the previous ones left, so writers wait for little more than its fsyncs.
fn spawn_checkpointer(read: SqlitePool, write: SqlitePool, alive: std::sync::Weak<ReadCache>) {
    tokio::spawn(async move {
        let mut on_writer = false;
        loop {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            if alive.upgrade().is_none() || read.is_closed() || write.is_closed() {
                return;
            }
            let pool = if on_writer { &write } else { &read };
            let started = std::time::Instant::now();
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool).await
            {
                Ok((_busy, log, copied)) => {
                    // A checkpoint on the writer connection holds every write meanwhile: say so
                    // when that is long enough to show in request latency.
                    let took = started.elapsed();
                    if on_writer && took >= SLOW_WRITER_CHECKPOINT {
                        tracing::warn!(
                            ms = took.as_millis() as u64,
                            log_frames = log,
                            copied_frames = copied,
                            "SQLite checkpoint on the writer connection held writes"
                        );
                    }
                    on_writer = !on_writer && log >= WAL_RESTART_FRAMES;
                }
                Err(_) if read.is_closed() || write.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed; retrying"),
            }
        }
    });
}

fn pg_options(opts: &DbOptions) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(opts.url.expose()).map_err(StoreError::Unavailable)
}

macro_rules! journaled_tx {
    ($(#[$m:meta])* $name:ident, $scope:ty) => {
        $(#[$m])*
        pub struct $name {
            pub(crate) tx: Tx,
            pub(crate) scope: $scope,
            /// The action recorded in this transaction, parent of its decisions and outcomes.
            pub(crate) action_id: Option<String>,
            /// Statements that changed data.
            pub(crate) writes: u32,
            /// Journal entries recorded, written at commit.
            pub(crate) journal: crate::journal::Buffer,
            /// PostgreSQL, once [`Self::insert_at_commit`] was asked for: the inserts held for
            /// the commit.
            at_commit: Option<Vec<crate::journal::Carried>>,
            /// A write transaction's read caches: its changes are applied to them before its
            /// commit returns.
            cache: Option<Arc<ReadCache>>,
        }

        impl $name {
            /// The scope the transaction was opened for.
            pub fn scope(&self) -> &$scope {
                &self.scope
            }

            /// Runs a statement that changes data.
            pub(crate) async fn write(&mut self, stmt: &impl sea_query_binder::SqlxBinder) -> Result<u64> {
                self.writes += 1;
                self.tx.execute(stmt).await
            }

            /// Writes the journal entries recorded and commits; a transaction that changed data
            /// without recording its action is refused and rolled back.
            pub async fn commit(mut self) -> Result<()> {
                if self.writes > 0 && self.action_id.is_none() {
                    return Err(StoreError::Unjournaled);
                }
                let journal = std::mem::take(&mut self.journal);
                if let Tx::Sqlite(_) = &self.tx {
                    // The entries go with the COMMIT in one round trip. What the update hook saw
                    // of this transaction is applied to the caches once it has committed and
                    // while the writer connection is still its own: the next writer cannot
                    // begin (and read a stale entry) before that.
                    let cache = self.cache.take();
                    let (sql, entries) = crate::journal::sqlite_commit(journal);
                    self.tx
                        .commit_sqlite(entries.bind(sqlx::query(&sql)), || {
                            if let Some(c) = &cache {
                                for ch in c.take_sqlite_pending() {
                                    c.apply(&ch);
                                }
                            }
                        })
                        .await?;
                    return Ok(());
                }
                let mut statements = crate::journal::pg_statements(journal);
                let mut last = statements.pop();
                let held = self.at_commit.take().unwrap_or_default();
                let alone = match &mut last {
                    Some(q) => q.carry(held),
                    None => held,
                };
                for (sql, values) in alone {
                    self.tx.execute_built(&sql, values).await?;
                }
                for q in statements {
                    q.execute(&mut self.tx).await?;
                }
                // A write transaction's acknowledgement goes with the entries' last statement,
                // in one round trip.
                let Some(cache) = self.cache.take().filter(|_| self.writes > 0) else {
                    if let Some(q) = last {
                        q.execute(&mut self.tx).await?;
                    }
                    return self.tx.commit().await;
                };
                let ack = crate::cache_listen::request_ack(&cache, &mut self.tx, last).await?;
                if let Err(e) = self.tx.commit().await {
                    if let Some(ack) = ack {
                        crate::cache_listen::forget_ack(&cache, ack);
                    }
                    return Err(e);
                }
                if let Some(ack) = ack {
                    crate::cache_listen::await_ack(&cache, ack).await;
                }
                Ok(())
            }
        }
    };
}

journaled_tx!(
    /// A platform transaction: the only way to reach platform tables for writing.
    PlatformTx,
    PlatformScope
);
journaled_tx!(
    /// A transaction inside one tenant environment; every tenant repository function takes one.
    TenantTx,
    TenantScope
);

impl TenantTx {
    /// From here on, on PostgreSQL, rows the transaction inserts last — nothing in it
    /// reads them back — go with its commit, in the statement that writes its journal
    /// entries, instead of a round trip each (SQLite, whose round trips stay in the
    /// process, writes them at once). Their failure (a constraint refusing a row) is
    /// then the commit's, and rolls the whole transaction back as any failure does: for
    /// callers that handle every failure alike, such as a gathered batch that goes one
    /// by one when anything fails.
    pub fn insert_at_commit(&mut self) {
        if matches!(self.tx, Tx::Postgres(_)) {
            self.at_commit.get_or_insert_with(Vec::new);
        }
    }

    /// Runs an insert whose rows nothing in the transaction reads back afterwards, or,
    /// after [`Self::insert_at_commit`], holds it for the commit (only into the tables
    /// [`crate::journal::CARRIABLE`] names; others run at once).
    pub(crate) async fn insert_last(&mut self, stmt: &sea_query::InsertStatement) -> Result<()> {
        if let Some(held) = &mut self.at_commit {
            let (sql, values) = stmt.build(sea_query::PostgresQueryBuilder);
            if crate::journal::carriable(&sql) {
                self.writes += 1;
                held.push((sql, values));
                return Ok(());
            }
        }
        self.write(stmt).await.map(drop)
    }

    /// Whether this transaction has run a write counted as journaled ([`TenantTx::write`]; every
    /// insert of business rows, `tenant_keys` included, goes through it). Bookkeeping writes
    /// made without it — idempotency records, checkout leases — are not counted.
    pub fn has_written(&self) -> bool {
        self.writes > 0
    }

    /// A write transaction's read caches (none for a read-only one: on SQLite its snapshot may
    /// predate changes the cache has applied since).
    pub(crate) fn read_cache(&self) -> Option<&Arc<ReadCache>> {
        self.cache.as_ref()
    }

    /// The condition that keeps a statement inside the scope's tenant and environment, for
    /// tables keyed by (`tenant_col`, `env_col`, …).
    pub(crate) fn in_scope<T: sea_query::Iden + Copy + 'static>(
        &self,
        tenant_col: T,
        env_col: T,
    ) -> sea_query::Condition {
        use sea_query::Expr;
        sea_query::Condition::all()
            .add(Expr::col(tenant_col).eq(self.scope().tenant_id().to_string()))
            .add(Expr::col(env_col).eq(self.scope().environment().as_str()))
    }
}

/// PostgreSQL: `BEGIN` (read-only or not) and the tenant environment row-level security admits
/// for the transaction, as one batch of the simple query protocol, so that a tenant transaction
/// starts in one round trip instead of two. That protocol cannot bind parameters, so the values
/// are written into the text: only when both consist of ASCII letters, digits, `_` and `-`
/// (every tenant id and environment name does), which cannot leave the quoted literal; `None`
/// for anything else, and the caller binds them in a statement of their own.
pub(crate) fn begin_in_environment(
    begin: Begin,
    tenant_id: &str,
    environment: &str,
    fence: Option<Fence>,
) -> Option<String> {
    if !plain(tenant_id) || !plain(environment) {
        return None;
    }
    let fence = fence.map_or_else(String::new, |Fence(a, b)| format!(", pg_advisory_xact_lock({a}, {b})"));
    Some(format!(
        "{}; SELECT set_config('azotte.tenant_id', '{tenant_id}', true), \
         set_config('azotte.environment', '{environment}', true){fence}",
        pg_begin(begin)
    ))
}

/// Whether `v` may be written into a `BEGIN` batch's quoted literal (see
/// [`begin_in_environment`]).
fn plain(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A fenced transaction's fence ([`Db::tenant_tx_fenced`]): the two keys of its advisory lock,
/// random (the store's other advisory locks use the one-key form, which PostgreSQL keeps apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(i32, i32);

impl Fence {
    fn new() -> Self {
        Fence(rand::random(), rand::random())
    }
}

/// How a tenant transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    Read,
    Write,
    /// A write transaction whose commit does not wait for the log flush.
    Unflushed,
}

/// PostgreSQL's `BEGIN` for a tenant transaction (READ COMMITTED: every connection's session
/// default, set when it connects), with the transaction's own settings.
fn pg_begin(begin: Begin) -> &'static str {
    match begin {
        Begin::Read => "BEGIN READ ONLY",
        Begin::Write => "BEGIN",
        Begin::Unflushed => "BEGIN; SET LOCAL synchronous_commit TO OFF",
    }
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod checkpoint_tests;

#[cfg(test)]
#[path = "pool_tests.rs"]
mod pool_tests;

#[cfg(test)]
#[path = "carry_tests.rs"]
mod carry_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/azotte"), "postgres://app:***@db:5432/azotte");
        assert_eq!(redact_url("sqlite://./azotte-data/azotte.db"), "sqlite://./azotte-data/azotte.db");
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(DbOptions::new("sqlite://x.db").backend(), Ok(Backend::Sqlite));
        assert_eq!(DbOptions::new("postgresql://h/db").backend(), Ok(Backend::Postgres));
        assert!(DbOptions::new("mysql://h/db").backend().is_err());
    }

    #[test]
    fn only_plain_values_are_written_into_the_begin_batch() {
        let b = begin_in_environment(Begin::Read, "ten_0192ab-x", "live", None).expect("plain");
        assert_eq!(
            b,
            "BEGIN READ ONLY; SELECT set_config('azotte.tenant_id', 'ten_0192ab-x', true), \
             set_config('azotte.environment', 'live', true)"
        );
        assert!(begin_in_environment(Begin::Write, "t", "test", None)
            .expect("plain")
            .starts_with("BEGIN; SELECT"));
        assert!(begin_in_environment(Begin::Unflushed, "t", "test", None)
            .expect("plain")
            .starts_with("BEGIN; SET LOCAL synchronous_commit TO OFF; SELECT"));
        // A fence: its advisory lock, in the same round trip.
        assert!(begin_in_environment(Begin::Write, "t", "test", Some(Fence(3, -7)))
            .expect("plain")
            .ends_with("set_config('azotte.environment', 'test', true), pg_advisory_xact_lock(3, -7)"));
        for bad in ["", "t'; DROP TABLE x; --", "t\\", "t x", "tén", &"t".repeat(65)] {
            assert_eq!(begin_in_environment(Begin::Write, bad, "live", None), None, "{bad:?}");
            assert_eq!(begin_in_environment(Begin::Write, "t", bad, None), None, "{bad:?}");
        }
    }
}
