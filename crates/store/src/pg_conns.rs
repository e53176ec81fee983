//! PostgreSQL connections kept by the store itself, and transactions on them.
//!
//! sqlx's pool sends a ping — a round trip to the server — every time a connection goes back to
//! it (sqlx 0.8: not configurable), to find connections left mid-statement by a cancelled
//! future. Here a connection goes back to the idle list without one, but only when the last
//! thing it did is known to have ended: a transaction's `COMMIT` or `ROLLBACK` answered, or a
//! single statement read to its end. Anything else — a transaction dropped open (an error, a
//! cancelled request), a statement cut short — is rolled back in a task of its own (sqlx first
//! reads whatever the cut-short statement left on the wire) before the connection is idle
//! again, or closed if that fails. A connection is not tested before it is handed out either:
//! its first statement is the test (`db::on_live_connection`).
//!
//! At most `max` connections are open at once (a semaphore); one is opened when none is idle,
//! with the session settings every connection gets (`SET ROLE`, `search_path`, READ COMMITTED).
//! Idle connections are kept until they fail or the pool is closed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection left mid-transaction may take to roll back before it is closed.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The store's PostgreSQL connections.
pub(crate) struct PgConns {
    options: PgConnectOptions,
    /// Run on every new connection.
    session: Vec<String>,
    idle: Mutex<Vec<PgConnection>>,
    permits: Arc<Semaphore>,
    max: u32,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for PgConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConns").field("max", &self.max).finish_non_exhaustive()
    }
}

impl PgConns {
    pub(crate) fn new(
        options: PgConnectOptions,
        session: Vec<String>,
        max: u32,
        acquire_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            options,
            session,
            idle: Mutex::default(),
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            max: max.max(1),
            acquire_timeout,
        })
    }

    /// At most this many connections are open at once.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// An idle connection, or a new one; waits for one to be free at most the acquire timeout.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<PgConn, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open().await?,
        };
        Ok(PgConn { conn: Some(conn), home: self.clone(), permit: Some(permit), clean: false })
    }

    async fn open(&self) -> Result<PgConnection, sqlx::Error> {
        let mut conn = tokio::time::timeout(self.acquire_timeout, self.options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        for s in &self.session {
            conn.execute(s.as_str()).await?;
        }
        Ok(conn)
    }

    /// Closes the idle connections and refuses new acquisitions; connections in use are closed
    /// when they come back.
    pub(crate) async fn close(&self) {
        self.permits.close();
        let idle: Vec<PgConnection> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for c in idle {
            let _ = c.close().await;
        }
    }

    fn put_back(&self, conn: PgConnection) {
        if self.permits.is_closed() {
            return;
        }
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
    }
}

/// A connection taken from [`PgConns`]: back to its idle list on drop if [`PgConn::ended`] was
/// called after its last statement, otherwise rolled back first (see the module).
pub(crate) struct PgConn {
    conn: Option<PgConnection>,
    home: Arc<PgConns>,
    permit: Option<OwnedSemaphorePermit>,
    clean: bool,
}

impl PgConn {
    /// The connection, for a statement: until [`PgConn::ended`] is called again, it is rolled
    /// back before it goes back idle.
    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.clean = false;
        // Only the drop takes the connection out.
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// The last statement sent on this connection was read to its end, outside any transaction:
    /// it may go back as it is.
    pub(crate) fn ended(&mut self) {
        self.clean = true;
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let (Some(mut conn), Some(permit)) = (self.conn.take(), self.permit.take()) else { return };
        if self.clean {
            self.home.put_back(conn);
            drop(permit);
            return;
        }
        // Left mid-transaction or mid-statement: rolled back (sqlx first reads what the
        // statement left on the wire) before anyone else may have it; closed if that fails.
        let home = self.home.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            // Bounded: a connection that does not answer (the network gone) must not keep its
            // place among the open ones.
            let rolled_back = tokio::time::timeout(ROLLBACK_TIMEOUT, conn.execute("ROLLBACK")).await;
            if matches!(rolled_back, Ok(Ok(_))) {
                home.put_back(conn);
            }
            drop(permit);
        });
    }
}

/// A PostgreSQL transaction on a [`PgConn`], begun and ended by plain statements.
pub(crate) struct PgTx {
    conn: PgConn,
}

impl PgTx {
    /// Takes a connection and runs `begin` on it (`BEGIN …`, possibly with settings, as one
    /// simple-protocol batch).
    pub(crate) async fn begin(conns: &Arc<PgConns>, begin: &str) -> Result<Self, sqlx::Error> {
        let mut conn = conns.acquire().await?;
        conn.conn()?.execute(begin).await?;
        Ok(PgTx { conn })
    }

    /// The connection, for a statement in the transaction.
    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.conn.conn()
    }

    /// Commits; the connection goes back idle.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.conn.conn()?.execute("COMMIT").await?;
        self.conn.ended();
        Ok(())
    }
}
