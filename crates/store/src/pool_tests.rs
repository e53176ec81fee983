//! PostgreSQL connections that died while idle in the pool (the server restarted, or an
//! operator ended the sessions): the pool does not ping a connection before handing it out, so
//! the first round trip of each kind of work must find a live one by itself.

use std::time::Duration;

use sqlx::{Connection, Executor, Row};

use crate::testing::fresh_database;
use crate::{Backend, Db, DbOptions};

/// Ends every session of the test database but the caller's, as a restart would; how many.
async fn end_sessions(url: &str) -> i64 {
    let mut owner = sqlx::PgConnection::connect(url).await.unwrap();
    let ended = sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap()
    .get::<i64, _>(0);
    // Ended once their backends are gone.
    for _ in 0..100 {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_one(&mut owner)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ended
}

#[tokio::test]
async fn work_after_every_pooled_connection_died_finds_a_live_one() {
    let t = fresh_database(Backend::Postgres).await;
    let opts = DbOptions { max_connections: 3, ..DbOptions::new(t.url.clone()) };
    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let kinds = ["ping", "read outside a transaction", "read-only transaction", "write transaction"];
    for kind in kinds {
        // Three connections opened, then idle in the pool.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(db.unscoped_read_tx().await.unwrap());
        }
        drop(held);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The three, and the read cache's listening connection.
        assert!(end_sessions(&t.url).await >= 3, "{kind}");
        match kind {
            "ping" => db.ping().await.unwrap(),
            "read outside a transaction" => {
                let q = sea_query::Query::select().expr(sea_query::Expr::val(1)).to_owned();
                let one: Option<(i32,)> = db.read_optional(&q).await.unwrap();
                assert_eq!(one, Some((1,)));
            }
            "read-only transaction" => {
                let mut tx = db.unscoped_read_tx().await.unwrap();
                let crate::exec::Tx::Postgres(c) = &mut tx else { unreachable!() };
                c.conn().unwrap().execute("SELECT 1").await.unwrap();
                tx.commit().await.unwrap();
            }
            _ => {
                let mut tx = db.unscoped_tx().await.unwrap();
                let crate::exec::Tx::Postgres(c) = &mut tx else { unreachable!() };
                c.conn().unwrap().execute("SELECT 1").await.unwrap();
                tx.commit().await.unwrap();
            }
        }
    }
}

async fn pg_db(max: u32) -> (crate::testing::TestDatabase, Db) {
    let t = fresh_database(Backend::Postgres).await;
    let opts = DbOptions { max_connections: max, ..DbOptions::new(t.url.clone()) };
    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    (t, db)
}

/// Whether the connection `tx` runs on is inside a transaction block, and its backend's pid.
async fn state(tx: &mut crate::exec::Tx) -> (bool, i32) {
    let crate::exec::Tx::Postgres(t) = tx else { unreachable!("PostgreSQL test") };
    // `now()` is the transaction's start: equal to the statement's clock only in a block begun
    // by this very statement.
    let row = sqlx::query("SELECT now() <> statement_timestamp(), pg_backend_pid()")
        .fetch_one(t.conn().unwrap())
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A transaction dropped before its commit — an error, a cancelled request — is rolled back
/// before its connection serves anyone else; one that committed goes back as it is, and is
/// reused.
#[tokio::test]
async fn a_connection_goes_back_only_once_its_transaction_ended() {
    let (_t, db) = pg_db(1).await;
    let mut tx = db.unscoped_tx().await.unwrap();
    let (_, pid) = state(&mut tx).await;
    let crate::exec::Tx::Postgres(t) = &mut tx else { unreachable!() };
    t.conn()
        .unwrap()
        .execute("CREATE TEMP TABLE left_open (x int); INSERT INTO left_open VALUES (1)")
        .await
        .unwrap();
    drop(tx);
    // The one connection: the next transaction waits until the rollback gave it back.
    let mut next = db.unscoped_read_tx().await.unwrap();
    let crate::exec::Tx::Postgres(t) = &mut next else { unreachable!() };
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = 'left_open'")
        .fetch_one(t.conn().unwrap())
        .await
        .unwrap();
    assert_eq!(gone, 0, "the dropped transaction was rolled back");
    assert_eq!(state(&mut next).await, (true, pid), "the same connection, in a transaction of its own");
    next.commit().await.unwrap();
    // Committed: back as it is, reused.
    let mut again = db.unscoped_read_tx().await.unwrap();
    assert_eq!(state(&mut again).await.1, pid);
    again.commit().await.unwrap();
}

/// A statement cut short (its future dropped while the server still runs it) leaves its
/// answer on the wire: the connection is read to its end and rolled back before it is reused,
/// and the next user gets its own answers.
#[tokio::test]
async fn a_statement_cut_short_does_not_leak_into_the_next_user() {
    let (_t, db) = pg_db(1).await;
    let mut tx = db.unscoped_tx().await.unwrap();
    let crate::exec::Tx::Postgres(t) = &mut tx else { unreachable!() };
    let slow = sqlx::query_scalar::<_, i32>("SELECT 41 FROM pg_sleep(0.3)").fetch_one(t.conn().unwrap());
    assert!(tokio::time::timeout(Duration::from_millis(50), slow).await.is_err(), "cut short");
    drop(tx);
    let mut next = db.unscoped_read_tx().await.unwrap();
    let crate::exec::Tx::Postgres(t) = &mut next else { unreachable!() };
    let answer: i32 = sqlx::query_scalar("SELECT 42").fetch_one(t.conn().unwrap()).await.unwrap();
    assert_eq!(answer, 42);
    assert!(state(&mut next).await.0);
    next.commit().await.unwrap();
}

/// At most `max_connections` are open at once: one more waits for one to be free, and gives
/// up after the acquire timeout.
#[tokio::test]
async fn no_more_connections_than_the_maximum() {
    let t = fresh_database(Backend::Postgres).await;
    let opts = DbOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_millis(300),
        ..DbOptions::new(t.url.clone())
    };
    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let (a, b) = (db.unscoped_read_tx().await.unwrap(), db.unscoped_read_tx().await.unwrap());
    assert!(db.unscoped_read_tx().await.is_err(), "a third waits, then times out");
    a.commit().await.unwrap();
    let c = db.unscoped_read_tx().await.unwrap();
    c.commit().await.unwrap();
    b.commit().await.unwrap();
}

/// An idle connection idle too long, or open too long, is closed instead of handed out (a
/// firewall may have dropped it without a word); one within both limits is reused.
#[tokio::test]
async fn connections_idle_or_open_too_long_are_not_handed_out() {
    let (_t, db) = pg_db(1).await;
    let pid = |db: &Db| {
        let db = db.clone();
        async move {
            let mut tx = db.unscoped_read_tx().await.unwrap();
            let (_, pid) = state(&mut tx).await;
            tx.commit().await.unwrap();
            pid
        }
    };
    let first = pid(&db).await;
    assert_eq!(pid(&db).await, first, "within both limits: reused");
    let conns = db.pg_conns().unwrap();
    conns.set_expiry(Duration::from_millis(100), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = pid(&db).await;
    assert_ne!(second, first, "idle too long: a new connection");
    conns.set_expiry(Duration::from_secs(3600), Duration::from_millis(1500));
    assert_eq!(pid(&db).await, second, "within both limits again");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_ne!(pid(&db).await, second, "open too long: a new connection");
}
