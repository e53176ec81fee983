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
                c.execute("SELECT 1").await.unwrap();
                tx.commit().await.unwrap();
            }
            _ => {
                let mut tx = db.unscoped_tx().await.unwrap();
                let crate::exec::Tx::Postgres(c) = &mut tx else { unreachable!() };
                c.execute("SELECT 1").await.unwrap();
                tx.commit().await.unwrap();
            }
        }
    }
}
