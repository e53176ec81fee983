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
                .fetch_one(&mut **t)
                .await
        }
        Some(q) => {
            // The notification's two parameters follow the statement's own.
            let sql = q.sql(crate::journal::Tail::Ack);
            let rows = q.bind(sqlx::query(&sql)).bind(CHANNEL).bind(payload).fetch_all(&mut **t).await;
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

/// The read caches' notifications a deferring transaction's triggers collected so far (one per
/// line), as an expression (migration 0032).
pub(crate) const PENDING_SELECT: &str = "current_setting('azotte.cache_pending', true)";

/// Inside a transaction that set `azotte.defer_notify`, about to commit: runs `last`, its
/// journal statement ([`crate::journal::PgInsert`]), returning the notifications its triggers
/// collected; with no journal statement, reads them alone.
pub(crate) async fn take_pending(tx: &mut Tx, last: Option<crate::journal::PgInsert>) -> Result<String> {
    let Tx::Postgres(t) = tx else { return Ok(String::new()) };
    let pending: Option<String> = match last {
        Some(q) => {
            let sql = q.sql(crate::journal::Tail::Pending);
            let rows = q.bind(sqlx::query(&sql)).fetch_all(&mut **t).await?;
            match rows.first() {
                Some(r) => sqlx::Row::try_get(r, 0)?,
                None => None,
            }
        }
        None => sqlx::query_scalar(&format!("SELECT {PENDING_SELECT}")).fetch_one(&mut **t).await?,
    };
    Ok(pending.unwrap_or_default())
}

/// After the commit of a transaction that deferred its notifications: sends them (`pending`,
/// one per line) in one statement that writes nothing — so, unlike a notifying write
/// transaction's commit, it holds PostgreSQL's notification lock for no WAL flush — followed,
/// when this process's cache is being served, by the acknowledgement it then waits for, as
/// [`await_ack`]. Should the notifications not go out, every process's entries for them stay
/// until the max age; this process drops its whole cache at once.
pub(crate) async fn notify_after_commit(pool: &sqlx::PgPool, cache: Option<&ReadCache>, pending: &str) {
    let mut payloads: Vec<String> = Vec::new();
    for p in pending.split('\n').filter(|p| !p.is_empty()) {
        if !payloads.iter().any(|q| q == p) {
            payloads.push(p.to_owned());
        }
    }
    if payloads.is_empty() {
        return;
    }
    let ack = cache.filter(|c| c.is_live()).map(|c| {
        let (n, rx) = c.register_ack();
        payloads.push(format!("s|{}|{n}", c.instance));
        Ack { n, rx }
    });
    let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(pool)
        .await;
    match (sent, cache) {
        (Ok(_), Some(cache)) => {
            if let Some(ack) = ack {
                await_ack(cache, ack).await;
            }
        }
        (Ok(_), None) => {}
        (Err(e), cache) => {
            tracing::warn!(error = %e, "read cache: change notifications not sent after a commit; other processes may serve the old answer until the max age");
            if let Some(cache) = cache {
                if let Some(ack) = ack {
                    forget_ack(cache, ack);
                }
                cache.apply(&Change::All);
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use azotte_domain::permission::PermissionSet;
    use azotte_domain::tenant::Environment;
    use sqlx::postgres::PgListener;

    use super::CHANNEL;
    use crate::exec::Tx;
    use crate::{testing, Backend};

    async fn next(l: &mut PgListener, within: Duration) -> Option<String> {
        match tokio::time::timeout(within, l.recv()).await {
            Ok(Ok(n)) => Some(n.payload().to_owned()),
            _ => None,
        }
    }

    /// A tenant transaction's triggers collect the read caches' notifications instead of
    /// sending them at its commit (which holds PostgreSQL's notification lock through the
    /// commit's WAL flush, so notifying writers never share a flush); its commit sends them
    /// after, each once. A writer outside the service still notifies at its commit.
    #[tokio::test]
    async fn a_tenant_transaction_sends_its_cache_notifications_after_its_commit() {
        let (_t, db) = testing::migrated(Backend::Postgres).await;
        let scope = testing::tenant_scope(&db, "deferred", Environment::Development).await;
        let tenant = scope.tenant_id().to_string();
        let pool = db.pg_pool().unwrap_or_else(|| panic!("PostgreSQL")).clone();
        let mut listener = PgListener::connect_with(&pool).await.unwrap();
        listener.listen(CHANNEL).await.unwrap();
        let now = chrono::Utc::now();

        // A role: its insert evicts nothing (migration 0024).
        let mut tx = db.tenant_tx(&scope).await.unwrap();
        tx.action(now, "role.create", None, serde_json::json!({})).await.unwrap();
        crate::roles::create(&mut tx, "rol_1", "viewer", "", &PermissionSet::default(), now).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(next(&mut listener, Duration::from_millis(300)).await, None);

        // Two updates of it: one payload, collected in the transaction, not queued by it.
        let mut tx = db.tenant_tx(&scope).await.unwrap();
        tx.action(now, "role.update", None, serde_json::json!({})).await.unwrap();
        for d in ["a", "b"] {
            crate::roles::update(&mut tx, "rol_1", Some(d), None, now).await.unwrap().unwrap();
        }
        let Tx::Postgres(t) = &mut tx.tx else { panic!("PostgreSQL") };
        let pending: Option<String> =
            sqlx::query_scalar("SELECT current_setting('azotte.cache_pending', true)")
                .fetch_one(&mut **t)
                .await
                .unwrap();
        assert_eq!(pending.as_deref(), Some(format!("t|{tenant}\n").as_str()));
        let queued: f64 =
            sqlx::query_scalar("SELECT pg_notification_queue_usage()").fetch_one(&mut **t).await.unwrap();
        assert_eq!(queued, 0.0);
        tx.commit().await.unwrap();
        // Sent after the commit, once, then the acknowledgement the commit waited for (this
        // database's cache is being served).
        assert_eq!(next(&mut listener, Duration::from_secs(5)).await, Some(format!("t|{tenant}")));
        let ack = next(&mut listener, Duration::from_secs(5)).await.unwrap_or_default();
        assert!(ack.starts_with("s|"), "{ack:?}");
        assert_eq!(next(&mut listener, Duration::from_millis(300)).await, None);

        // The same change by SQL beside the service: notified by its own commit.
        let mut raw = pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('azotte.tenant_id', $1, true)")
            .bind(&tenant)
            .execute(&mut *raw)
            .await
            .unwrap();
        let n = sqlx::query("UPDATE roles SET description = 'c' WHERE id = 'rol_1'")
            .execute(&mut *raw)
            .await
            .unwrap();
        assert_eq!(n.rows_affected(), 1);
        raw.commit().await.unwrap();
        assert_eq!(next(&mut listener, Duration::from_secs(5)).await, Some(format!("t|{tenant}")));
    }
}
