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

/// A row type decodable from both backends.
pub(crate) trait DbRow:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> DbRow for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

/// An open transaction on either backend.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

macro_rules! on_backend {
    ($self:ident, $stmt:ident, |$sql:ident, $values:ident, $conn:ident| $body:expr) => {
        match $self {
            Tx::Sqlite(t) => {
                let ($sql, $values) = $stmt.build_sqlx(SqliteQueryBuilder);
                let $conn = &mut **t;
                $body
            }
            Tx::Postgres(t) => {
                let ($sql, $values) = $stmt.build_sqlx(PostgresQueryBuilder);
                let $conn = &mut **t;
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

    /// Sets the tenant and environment that row-level security admits for the rest of the
    /// transaction (PostgreSQL; SQLite has no row-level security).
    pub(crate) async fn enter_environment(&mut self, tenant_id: &str, environment: &str) -> Result<()> {
        if let Tx::Postgres(t) = self {
            sqlx::query(
                "SELECT set_config('azotte.tenant_id', $1, true), set_config('azotte.environment', $2, true)",
            )
            .bind(tenant_id)
            .bind(environment)
            .execute(&mut **t)
            .await?;
        }
        Ok(())
    }

    /// Runs `stmts` (inserts that return nothing), then commits; `before_release` runs once
    /// they have committed, while the connection is still this transaction's.
    ///
    /// On SQLite every statement is a round trip to the connection's own thread, and the
    /// writer connection is held by one transaction at a time (decision 0010), so each round
    /// trip lengthens every writer's wait. Here the statements and the `COMMIT` go as one
    /// batch: `stmts…; COMMIT; BEGIN`. The trailing deferred `BEGIN` (no lock, no I/O) leaves
    /// the connection in the transaction sqlx still counts as open; dropping sqlx's handle
    /// queues its `ROLLBACK` of that empty transaction on the connection's thread, ahead of
    /// anything the next user of the connection sends. A failure before the `COMMIT` leaves
    /// the real transaction open, and the drop rolls it back, as for any failed statement.
    pub(crate) async fn commit_after<S: SqlxBinder>(
        self,
        stmts: &[S],
        before_release: impl FnOnce(),
    ) -> Result<()> {
        match self {
            Tx::Sqlite(mut t) if !stmts.is_empty() => {
                let mut sql = String::new();
                let mut values = Vec::new();
                for stmt in stmts {
                    let (q, v) = stmt.build_sqlx(SqliteQueryBuilder);
                    sql.push_str(&q);
                    sql.push_str(";\n");
                    // Unnumbered `?` parameters are bound in order across the batch.
                    values.extend(v.0 .0);
                }
                sql.push_str("COMMIT;\nBEGIN");
                sqlx::query_with(&sql, sea_query_binder::SqlxValues(sea_query::Values(values)))
                    .execute(&mut *t)
                    .await?;
                before_release();
                drop(t);
                Ok(())
            }
            mut tx => {
                for stmt in stmts {
                    tx.execute(stmt).await?;
                }
                tx.commit().await?;
                before_release();
                Ok(())
            }
        }
    }

    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}
