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
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection left mid-transaction may take to roll back before it is closed.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection older than this is closed instead of handed out (sqlx's pool default):
/// a firewall or NAT may have dropped it without a word, and its first statement would wait for
/// TCP to give up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// A connection older than this is closed instead of handed out (sqlx's pool default).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// An idle connection, with when it was opened and when it last went idle.
struct Idle {
    conn: PgConnection,
    opened: Instant,
    since: Instant,
}

/// The idle connections, whether the store was closed (under one lock, so that a connection
/// coming back cannot slip in after `close` emptied the list), and how long a connection may be
/// idle, and open, and still be handed out ([`IDLE_TIMEOUT`], [`MAX_LIFETIME`]; shorter in
/// tests).
struct IdleList {
    conns: Vec<Idle>,
    closed: bool,
    idle_for: Duration,
    open_for: Duration,
}

/// The store's PostgreSQL connections.
pub(crate) struct PgConns {
    options: PgConnectOptions,
    /// Run on every new connection.
    session: Vec<String>,
    idle: Mutex<IdleList>,
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
            idle: Mutex::new(IdleList {
                conns: Vec::new(),
                closed: false,
                idle_for: IDLE_TIMEOUT,
                open_for: MAX_LIFETIME,
            }),
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            max: max.max(1),
            acquire_timeout,
        })
    }

    /// Sets how long a connection may be idle, and open, and still be handed out.
    #[cfg(test)]
    pub(crate) fn set_expiry(&self, idle: Duration, lifetime: Duration) {
        let mut list = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        (list.idle_for, list.open_for) = (idle, lifetime);
    }

    /// An idle connection (the most recently used that is neither idle nor open for too long),
    /// or a new one; waits for one to be free at most the acquire timeout. A new connection that
    /// cannot be opened is an error at once (the caller does not retry it).
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<PgConn, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let (idle, stale) = {
            let mut list = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let (idle_for, open_for) = (list.idle_for, list.open_for);
            // Nothing allocated unless some are stale.
            let stale: Vec<Idle> = list
                .conns
                .extract_if(.., |i| now - i.since >= idle_for || now - i.opened >= open_for)
                .collect();
            (list.conns.pop(), stale)
        };
        // Closed without a goodbye: it may not answer one.
        drop(stale);
        let (conn, opened, reused) = match idle {
            Some(i) => (i.conn, i.opened, true),
            None => (self.open().await?, Instant::now(), false),
        };
        Ok(PgConn {
            conn: Some(conn),
            home: self.clone(),
            permit: Some(permit),
            opened,
            reused,
            in_tx: false,
            clean: false,
        })
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

    /// Closes the idle connections and refuses new acquisitions; a connection in use is closed
    /// when it comes back (it does not wait for those).
    pub(crate) async fn close(&self) {
        self.permits.close();
        let idle = {
            let mut list = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            list.closed = true;
            std::mem::take(&mut list.conns)
        };
        for i in idle {
            let _ = i.conn.close().await;
        }
    }

    fn put_back(&self, conn: PgConnection, opened: Instant) {
        let mut list = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !list.closed {
            list.conns.push(Idle { conn, opened, since: Instant::now() });
        }
    }
}

/// Runs `work` on a connection from `conns`, again on another one while it fails because its
/// connection — one that was idle — was dead (the server restarted, or ended the session, or it
/// does not answer within the acquire timeout): at most once per connection `conns` may hold,
/// plus one. Nothing tests a connection before it is handed out (that would be one more round
/// trip per transaction): `work`'s own first statement is the test, and a connection that failed
/// it is not taken back. Only for work that has changed nothing when it fails there: a `BEGIN`,
/// a read. A new connection that fails is an error at once: retrying it would only hammer a
/// server that is down or starting.
pub(crate) async fn on_live_connection<T, F, Fut>(conns: &Arc<PgConns>, mut work: F) -> Result<T, sqlx::Error>
where
    F: FnMut(PgConn) -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = conns.max.saturating_add(1);
    loop {
        let conn = conns.acquire().await?;
        let reused = conn.reused;
        let error = match tokio::time::timeout(conns.acquire_timeout, work(conn)).await {
            Ok(Err(e)) if reused && connection_lost(&e) => e,
            Ok(done) => return done,
            Err(_) => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "PostgreSQL did not answer a connection's first statement in time",
            )),
        };
        tries -= 1;
        if tries == 0 || !reused {
            return Err(error);
        }
        tracing::info!(error = %error, "a pooled PostgreSQL connection was dead; trying another");
    }
}

/// Whether `e` says the connection it came from is gone: an I/O error, or the server's
/// connection exception (class 08) or operator intervention (57P: the session was terminated,
/// the server is shutting down or restarting).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// A connection taken from [`PgConns`]: back to its idle list on drop if [`PgConn::ended`] was
/// called after its last statement; otherwise rolled back first if a transaction was begun on
/// it, or closed (see the module).
pub(crate) struct PgConn {
    conn: Option<PgConnection>,
    home: Arc<PgConns>,
    permit: Option<OwnedSemaphorePermit>,
    opened: Instant,
    /// Taken from the idle list (not opened for this use).
    reused: bool,
    /// A transaction was begun on it.
    in_tx: bool,
    clean: bool,
}

impl PgConn {
    /// The connection, for a statement: until [`PgConn::ended`] is called again, it does not go
    /// back idle as it is.
    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.clean = false;
        // Only the drop takes the connection out.
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// The last statement sent on this connection was read to its end, outside any transaction:
    /// it may go back as it is.
    pub(crate) fn ended(&mut self) {
        self.clean = true;
        self.in_tx = false;
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let (Some(mut conn), Some(permit)) = (self.conn.take(), self.permit.take()) else { return };
        let opened = self.opened;
        if self.clean {
            self.home.put_back(conn, opened);
            drop(permit);
            return;
        }
        // A statement outside a transaction cut short or failed: closed (rare; nothing to roll
        // back, and whatever it left on the wire goes with it).
        if !self.in_tx {
            drop(conn);
            drop(permit);
            return;
        }
        // Left mid-transaction: rolled back (sqlx first reads what a cut-short statement left
        // on the wire) before anyone else may have it; closed if that fails.
        let home = self.home.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            // Bounded: a connection that does not answer (the network gone) must not keep its
            // place among the open ones.
            let rolled_back = tokio::time::timeout(ROLLBACK_TIMEOUT, conn.execute("ROLLBACK")).await;
            if matches!(rolled_back, Ok(Ok(_))) {
                home.put_back(conn, opened);
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
    /// Runs `begin` on `conn` (`BEGIN …`, possibly with settings, as one simple-protocol
    /// batch).
    pub(crate) async fn begin(mut conn: PgConn, begin: &str) -> Result<Self, sqlx::Error> {
        conn.in_tx = true;
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
