//! Running one sea-query statement on whichever backend a transaction belongs to.
//!
//! This is where "queries written once" happens: a statement is rendered by the backend's
//! query builder and its rows decoded with the same `FromRow` type on both engines.

use sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};
use sea_query_binder::SqlxBinder;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::FromRow;

use crate::Result;

/// A SQLite statement with its values bound.
pub(crate) type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;
/// A PostgreSQL statement with its arguments bound as it is built.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A row type decodable from both backends.
pub(crate) trait DbRow:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> DbRow for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

/// An open transaction on either backend.
pub(crate) enum Tx {
    Sqlite(SqliteTx),
    Postgres(crate::pg_conns::PgTx),
}

/// A SQLite transaction on a pooled connection, begun and ended by plain statements.
///
/// sqlx's own transaction handle sends `BEGIN`, `COMMIT` and `ROLLBACK` as commands of their
/// own to the connection's thread, and its drop always queues a `ROLLBACK` unless its `commit`
/// ran. That rules out committing in the same batch as the transaction's last statements
/// (`INSERT …; COMMIT`) without an extra empty transaction for the handle to roll back — one
/// more wake-up of the connection's thread per write (see [`Tx::commit_sqlite`]). Here the
/// transaction is what SQLite says it is: `BEGIN` and `COMMIT` are statements like any other,
/// so a batch may end with the `COMMIT`.
///
/// A transaction dropped before it committed (an error, a cancelled request) is rolled back
/// before the connection goes back to its pool: the drop hands the connection to a task that
/// runs `ROLLBACK` and then releases it, so no other user can get the connection while the
/// transaction is still open. If that is impossible (no runtime, or the `ROLLBACK` fails for
/// a reason other than there being no transaction), the connection is closed instead of
/// returned.
pub(crate) struct SqliteTx {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>,
    /// Whether the transaction may still be open: set before `BEGIN` is sent, so that a
    /// `BEGIN` cancelled midway is rolled back too.
    open: bool,
}

impl SqliteTx {
    /// Takes a connection from `pool` and runs `begin` on it (`BEGIN` or `BEGIN IMMEDIATE`).
    pub(crate) async fn begin(pool: &sqlx::SqlitePool, begin: &'static str) -> Result<Self> {
        let conn = pool.acquire().await?;
        let mut tx = SqliteTx { conn: Some(conn), open: true };
        sqlx::query(begin).execute(tx.conn()?).await?;
        Ok(tx)
    }

    /// The connection, for running statements in the transaction.
    pub(crate) fn conn(&mut self) -> Result<&mut sqlx::SqliteConnection> {
        // Only the drop takes the connection out.
        self.conn.as_deref_mut().ok_or_else(|| crate::StoreError::Corrupt("SQLite transaction ended".into()))
    }

    /// Runs `q`, a batch that must end with `COMMIT`; the transaction counts as ended once it
    /// has run. On an error the transaction is still open (SQLite stops a batch at its first
    /// failing statement) and the drop rolls it back.
    async fn finish<'q, A>(&mut self, q: sqlx::query::Query<'q, sqlx::Sqlite, A>) -> Result<()>
    where
        A: sqlx::IntoArguments<'q, sqlx::Sqlite> + 'q,
    {
        q.execute(self.conn()?).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take().filter(|_| self.open) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            conn.close_on_drop();
            return;
        };
        rt.spawn(async move {
            match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                Ok(_) => {}
                // SQLite ended it already (a failed COMMIT, or an error that rolls back).
                Err(e) if e.to_string().contains("no transaction is active") => {}
                Err(e) => {
                    tracing::warn!(error = %e, "SQLite ROLLBACK failed; closing the connection");
                    conn.close_on_drop();
                }
            }
        });
    }
}

macro_rules! on_backend {
    ($self:ident, $stmt:ident, |$sql:ident, $values:ident, $conn:ident| $body:expr) => {
        match $self {
            Tx::Sqlite(t) => {
                let ($sql, $values) = $stmt.build_sqlx(SqliteQueryBuilder);
                let $conn = t.conn()?;
                $body
            }
            Tx::Postgres(t) => {
                let ($sql, $values) = $stmt.build_sqlx(PostgresQueryBuilder);
                let $conn = t.conn()?;
                $body
            }
        }
    };
}

impl Tx {
    pub(crate) async fn fetch_all<T: DbRow>(&mut self, stmt: &impl SqlxBinder) -> Result<Vec<T>> {
        Ok(on_backend!(self, stmt, |sql, values, conn| sqlx::query_as_with(&sql, values)
            .fetch_all(conn)
            .await?))
    }

    pub(crate) async fn fetch_optional<T: DbRow>(&mut self, stmt: &impl SqlxBinder) -> Result<Option<T>> {
        Ok(on_backend!(self, stmt, |sql, values, conn| sqlx::query_as_with(&sql, values)
            .fetch_optional(conn)
            .await?))
    }

    pub(crate) async fn fetch_one<T: DbRow>(&mut self, stmt: &impl SqlxBinder) -> Result<T> {
        Ok(on_backend!(self, stmt, |sql, values, conn| sqlx::query_as_with(&sql, values)
            .fetch_one(conn)
            .await?))
    }

    /// Runs a statement and returns the number of rows it affected.
    pub(crate) async fn execute(&mut self, stmt: &impl SqlxBinder) -> Result<u64> {
        Ok(on_backend!(self, stmt, |sql, values, conn| sqlx::query_with(&sql, values)
            .execute(conn)
            .await?
            .rows_affected()))
    }

    /// Runs `parts` — statements that change data, none with a `RETURNING` of its own — and
    /// answers how many rows each wrote. On PostgreSQL they go as one statement in one round
    /// trip, each a data-modifying `WITH` part: every part runs to completion against the
    /// statement's snapshot (no part sees another's rows; of a row two parts would write, only
    /// one part's write happens, so none may write a row another writes), and foreign keys and
    /// `AFTER` triggers are checked and fired at the statement's end; one part refused fails
    /// them all. Too many parameters for one statement, or a text [`renumber`]
    /// does not read whole: one after another, as on SQLite.
    pub(crate) async fn execute_together(&mut self, parts: &[&dyn Part]) -> Result<Vec<u64>> {
        let sqlite = matches!(self, Tx::Sqlite(_));
        let built: Vec<(String, sea_query::Values)> = parts.iter().map(|p| p.built(sqlite)).collect();
        // PostgreSQL: each text's parameters numbered after the previous ones'.
        let together = (!sqlite).then(|| {
            let mut bound = 0;
            let texts: Option<Vec<String>> = built
                .iter()
                .map(|(text, values)| {
                    let text = renumber(text, bound, values.0.len());
                    bound += values.0.len();
                    text
                })
                .collect();
            texts.filter(|t| !t.is_empty() && bound <= MAX_PARAMETERS)
        });
        let Some(texts) = together.flatten() else {
            let mut counts = Vec::with_capacity(built.len());
            for (sql, values) in built {
                counts.push(self.execute_built(&sql, values).await?);
            }
            return Ok(counts);
        };
        let parts: Vec<String> =
            texts.iter().enumerate().map(|(i, t)| format!("w{i} AS ({t} RETURNING 1)")).collect();
        let counts: Vec<String> = (0..parts.len()).map(|i| format!("(SELECT count(*) FROM w{i})")).collect();
        let sql = format!("WITH {} SELECT {}", parts.join(", "), counts.join(", "));
        let values = sea_query::Values(built.into_iter().flat_map(|(_, v)| v.0).collect());
        let Tx::Postgres(t) = self else {
            return Err(crate::StoreError::Corrupt("SQLite parts together".into()));
        };
        let row = sqlx::query_with(&sql, sea_query_binder::SqlxValues(values)).fetch_one(t.conn()?).await?;
        (0..parts.len())
            .map(|i| Ok(u64::try_from(sqlx::Row::try_get::<i64, _>(&row, i)?).unwrap_or_default()))
            .collect()
    }

    /// Runs a statement already built (for this transaction's backend), with its values; the
    /// rows it changed.
    pub(crate) async fn execute_built(&mut self, sql: &str, values: sea_query::Values) -> Result<u64> {
        let values = sea_query_binder::SqlxValues(values);
        Ok(match self {
            Tx::Sqlite(t) => sqlx::query_with(sql, values).execute(t.conn()?).await?.rows_affected(),
            Tx::Postgres(t) => sqlx::query_with(sql, values).execute(t.conn()?).await?.rows_affected(),
        })
    }

    /// Flags the transaction as platform work, which the platform-only row-level security
    /// policies admit (PostgreSQL; SQLite has no row-level security).
    pub(crate) async fn enter_platform(&mut self) -> Result<()> {
        if let Tx::Postgres(t) = self {
            sqlx::query("SELECT set_config('azotte.platform', 'on', true)").execute(t.conn()?).await?;
        }
        Ok(())
    }

    /// Sets the tenant and environment that row-level security admits for the rest of the
    /// transaction (PostgreSQL; SQLite has no row-level security).
    pub(crate) async fn enter_environment(&mut self, tenant_id: &str, environment: &str) -> Result<()> {
        if let Tx::Postgres(t) = self {
            sqlx::query(
                "SELECT set_config('azotte.tenant_id', $1, true), set_config('azotte.environment', $2, true)",
            )
            .bind(tenant_id)
            .bind(environment)
            .execute(t.conn()?)
            .await?;
        }
        Ok(())
    }

    /// SQLite: runs `q`, a batch of statements that return nothing ending with `COMMIT`, and
    /// ends the transaction with it; `before_release` runs once it has committed, while the
    /// connection is still this transaction's.
    ///
    /// On SQLite every statement is a round trip to the connection's own thread, and the
    /// writer connection is held by one transaction at a time (decision 0010), so each round
    /// trip lengthens every writer's wait: a transaction's last writes (its journal entries)
    /// and its `COMMIT` go as one batch ([`SqliteTx`]). A failure before the `COMMIT` leaves
    /// the transaction open, and the drop rolls it back, as for any failed statement.
    pub(crate) async fn commit_sqlite(self, q: SqliteQuery<'_>, before_release: impl FnOnce()) -> Result<()> {
        match self {
            Tx::Sqlite(mut t) => {
                t.finish(q).await?;
                // The connection goes back to its pool when `t` is dropped, after this.
                before_release();
                Ok(())
            }
            Tx::Postgres(_) => Err(crate::StoreError::Corrupt("a SQLite batch on PostgreSQL".into())),
        }
    }

    /// SQLite: runs `sql`, a batch that must end with `COMMIT`, with `values` bound by number
    /// (`?1`, `?2`, … may recur across the batch's statements); the transaction ends with it.
    /// A failure rolls the transaction back, as for [`Tx::commit_sqlite`].
    pub(crate) async fn finish_sqlite(self, sql: &str, values: Vec<sea_query::Value>) -> Result<()> {
        match self {
            Tx::Sqlite(mut t) => {
                t.finish(sqlx::query_with(sql, sea_query_binder::SqlxValues(sea_query::Values(values)))).await
            }
            Tx::Postgres(_) => Err(crate::StoreError::Corrupt("a SQLite batch on PostgreSQL".into())),
        }
    }

    /// Commits. On PostgreSQL a failure other than the database's own answer (the connection
    /// failed, before or after the server got the `COMMIT`) is [`crate::StoreError::CommitUnknown`]:
    /// the transaction may have committed. (SQLite's commit runs in the process: its failure is
    /// a rollback.)
    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(mut t) => t.finish(sqlx::query("COMMIT")).await?,
            Tx::Postgres(t) => t.commit().await.map_err(|e| match e {
                sqlx::Error::Database(_) => crate::StoreError::from(e),
                e => crate::StoreError::CommitUnknown(e),
            })?,
        }
        Ok(())
    }
}

/// Parameters a statement may bind at most (PostgreSQL's protocol allows 65,535).
pub(crate) const MAX_PARAMETERS: usize = 65_535;

/// `sql` — a statement from the query builder binding `values` parameters, `$1` to
/// `$values` — with every parameter `$n` renumbered `$n + by`; quoted literals (`'…'`, and
/// `E'…'` with its backslash escapes) and quoted identifiers are left as they are. `None` when
/// the text is not one this reads whole (a dollar-quoted string, a comment) or its parameters
/// are not exactly `$1` to `$values`: the caller then runs it on its own.
pub(crate) fn renumber(sql: &str, by: usize, values: usize) -> Option<String> {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    // The open quote, and whether a backslash escapes the next character in it (`E'…'`).
    let mut quote: Option<(char, bool)> = None;
    let mut prev = ' ';
    let mut seen = vec![false; values];
    while let Some(c) = chars.next() {
        out.push(c);
        match quote {
            Some((_, true)) if c == '\\' => {
                out.push(chars.next()?);
            }
            // A doubled quote stands for itself, inside the same literal.
            Some((q, _)) if c == q => match chars.peek() {
                Some(&next) if next == q => out.push(chars.next()?),
                _ => quote = None,
            },
            Some(_) => {}
            None => match c {
                '"' => quote = Some(('"', false)),
                '\'' => {
                    let escaped = matches!(prev, 'E' | 'e') && !out[..out.len() - 2].ends_with(is_word);
                    quote = Some(('\'', escaped));
                }
                '$' => {
                    let mut n = String::new();
                    while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                        n.push(*d);
                        chars.next();
                    }
                    let n: usize = n.parse().ok().filter(|n| (1..=values).contains(n))?;
                    *seen.get_mut(n - 1)? = true;
                    out.push_str(&(n + by).to_string());
                }
                '-' if chars.peek() == Some(&'-') => return None,
                '/' if chars.peek() == Some(&'*') => return None,
                _ => {}
            },
        }
        prev = c;
    }
    (seen.iter().all(|s| *s) && quote.is_none()).then_some(out)
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A statement [`Tx::execute_together`] runs: its text and values for SQLite (`true`) or
/// PostgreSQL.
pub(crate) trait Part: Sync {
    fn built(&self, sqlite: bool) -> (String, sea_query::Values);
}

macro_rules! part {
    ($($t:ty),+) => {$(
        impl Part for $t {
            fn built(&self, sqlite: bool) -> (String, sea_query::Values) {
                if sqlite { self.build(SqliteQueryBuilder) } else { self.build(PostgresQueryBuilder) }
            }
        }
    )+};
}
part!(sea_query::InsertStatement, sea_query::UpdateStatement);

#[cfg(test)]
#[path = "sqlite_tx_tests.rs"]
mod sqlite_tx_tests;
