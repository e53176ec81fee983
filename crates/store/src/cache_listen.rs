//! PostgreSQL: the LISTEN connection that applies the change notifications of the triggers
//! (migration 0022) to this process's [`ReadCache`], and the commit acknowledgements that give
//! this process's own writes read-your-writes.
//!
//! While the connection is down nothing is served from the cache; when it comes back (or was
//! lost and re-established in between), everything cached is dropped, since notifications sent
//! meanwhile are lost.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::cache::{Change, ReadCache};
use crate::exec::Tx;
use crate::Result;

/// The notification channel of the triggers and acknowledgements.
pub(crate) const CHANNEL: &str = "azotte_cache";

/// How long a committing write waits for its acknowledgement before dropping the whole cache.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the listener task; it ends when `cache` is dropped.
pub(crate) fn spawn(cache: &Arc<ReadCache>, options: PgConnectOptions) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    *cache._stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop_tx);
    let weak = Arc::downgrade(cache);
    tokio::spawn(async move {
        tokio::select! {
            _ = stop_rx => {}
            _ = run(weak, options) => {}
        }
    });
}

async fn run(weak: Weak<ReadCache>, options: PgConnectOptions) {
    // Its own pool of one, so the listener never takes a serving connection.
    let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        match connected {
            Ok(mut listener) => {
                backoff = Duration::from_millis(100);
                let Some(cache) = weak.upgrade() else { return };
                cache.set_live(true);
                drop(cache);
                loop {
                    let received = listener.try_recv().await;
                    let Some(cache) = weak.upgrade() else { return };
                    match received {
                        Ok(Some(n)) => handle(&cache, n.payload()),
                        Ok(None) => {
                            // Lost and already re-established: what was sent meanwhile is lost.
                            tracing::warn!("read cache: the LISTEN connection was lost; cache dropped");
                            cache.set_live(true);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "read cache: LISTEN connection failed; caching off until it is back");
                            cache.set_live(false);
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                let Some(cache) = weak.upgrade() else { return };
                tracing::warn!(error = %e, "read cache: cannot LISTEN; caching off until it can");
                cache.set_live(false);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn handle(cache: &ReadCache, payload: &str) {
    if let Some(rest) = payload.strip_prefix("s|") {
        if let Some((instance, n)) = rest.split_once('|') {
            if instance == cache.instance {
                if let Some(ack) = n.parse::<u64>().ok().and_then(|n| cache.take_ack(n)) {
                    let _ = ack.send(());
                }
            }
        }
        return;
    }
    match Change::parse(payload) {
        Some(c) => cache.apply(&c),
        None => {
            tracing::warn!(payload, "read cache: unknown change notification; cache dropped");
            cache.apply(&Change::All);
        }
    }
}

/// A commit acknowledgement awaited from the listener.
pub(crate) struct Ack {
    n: u64,
    rx: tokio::sync::oneshot::Receiver<()>,
}

/// The acknowledgement: a notification on [`CHANNEL`] (`$A`) with the payload `$B`, sent only
/// if a trigger flagged a change.
pub(crate) const ACK_SELECT: &str =
    "SELECT pg_notify($A, $B) WHERE current_setting('azotte.cache_changed', true) = 'on'";

/// Inside a write transaction about to commit: if its writes made the triggers notify and the
/// cache is being served, queues an acknowledgement behind those notifications (one
/// transaction's notifications are delivered together, in order).
///
/// `last`, the transaction's last statement before its commit (the journal's entries and their
/// work-list rows, [`crate::journal::PgInsert`]), is run in the same round trip:
/// `WITH ack AS (SELECT pg_notify(…) WHERE …), pending AS (…) INSERT … RETURNING (SELECT count(*)
/// FROM ack)`; the acknowledgement is still queued after every change the transaction made.
pub(crate) async fn request_ack(
    cache: &ReadCache,
    tx: &mut Tx,
    last: Option<crate::journal::PgInsert>,
) -> Result<Option<Ack>> {
    if !(cache.is_live() && matches!(tx, Tx::Postgres(_))) {
        if let Some(q) = last {
            q.execute(tx).await?;
        }
        return Ok(None);
    }
    let Tx::Postgres(t) = tx else { return Ok(None) };
    let (n, rx) = cache.register_ack();
    let payload = format!("s|{}|{n}", cache.instance);
    let sent = match last {
        None => {
            let notify = ACK_SELECT.replace("$A", "$1").replace("$B", "$2");
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM ({notify}) n"))
                .bind(CHANNEL)
                .bind(payload)
                .fetch_one(t.conn()?)
                .await
        }
        Some(q) => {
            // The notification's two parameters follow the statement's own.
            let sql = q.sql(true);
            let rows = q.query(&sql).bind(CHANNEL).bind(payload).fetch_all(t.conn()?).await;
            rows.map(|r| r.first().map_or(0, |r| sqlx::Row::get::<i64, _>(r, 0)))
        }
    };
    match sent {
        Ok(1) => Ok(Some(Ack { n, rx })),
        Ok(_) => {
            cache.take_ack(n);
            Ok(None)
        }
        Err(e) => {
            cache.take_ack(n);
            Err(e.into())
        }
    }
}

/// After the commit: waits until the listener has applied the transaction's changes. Should it
/// not answer in time, everything cached is dropped instead.
pub(crate) async fn await_ack(cache: &ReadCache, ack: Ack) {
    if !matches!(tokio::time::timeout(ACK_TIMEOUT, ack.rx).await, Ok(Ok(()))) {
        cache.take_ack(ack.n);
        tracing::warn!("read cache: no acknowledgement from the listener in time; cache dropped");
        cache.apply(&Change::All);
    }
}

/// After a failed commit: nothing to wait for.
pub(crate) fn forget_ack(cache: &ReadCache, ack: Ack) {
    cache.take_ack(ack.n);
}
