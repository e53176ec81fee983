//! SQLite transactions begun and ended by plain statements ([`SqliteTx`]): one that ends
//! without committing — dropped, or failing inside its commit batch — is rolled back before
//! its connection serves anyone else, and leaves nothing behind.

use sea_query::Query;

use super::Tx;
use crate::testing::migrated;
use crate::{Backend, Db};

const MARKER: &str = "sqlite-tx-test";

/// A row to write: a lookup row (a table with no triggers or foreign keys).
fn row(pos: i64) -> sea_query::InsertStatement {
    Query::insert()
        .into_table(sea_query::Alias::new("journal_by_correlation"))
        .columns([
            sea_query::Alias::new("tenant_id"),
            sea_query::Alias::new("correlation_id"),
            sea_query::Alias::new("pos"),
        ])
        .values_panic(["t".into(), MARKER.into(), pos.into()])
        .to_owned()
}

/// The text of a commit batch writing `n` rows, then `COMMIT`.
fn batch_text(n: usize) -> String {
    let insert = "INSERT INTO journal_by_correlation (tenant_id, correlation_id, pos) VALUES ('t', ?, ?);";
    format!("{}COMMIT", insert.repeat(n))
}

/// `text` with a row per position in `pos` bound.
fn batch<'q>(text: &'q str, pos: &[i64]) -> super::SqliteQuery<'q> {
    pos.iter().fold(sqlx::query(text), |q, p| q.bind(MARKER).bind(*p))
}

async fn rows(db: &Db) -> Vec<i64> {
    let mut tx = db.unscoped_read_tx().await.unwrap();
    let Tx::Sqlite(t) = &mut tx else { unreachable!("SQLite test") };
    let v =
        sqlx::query_scalar("SELECT pos FROM journal_by_correlation WHERE correlation_id = ?1 ORDER BY pos")
            .bind(MARKER)
            .fetch_all(t.conn().unwrap())
            .await
            .unwrap();
    tx.commit().await.unwrap();
    v
}

#[tokio::test]
async fn a_dropped_write_transaction_is_rolled_back_before_its_connection_is_reused() {
    let (_t, db) = migrated(Backend::Sqlite).await;
    for round in 0..3 {
        let mut tx = db.unscoped_tx().await.unwrap();
        tx.execute(&row(round)).await.unwrap();
        drop(tx);
        // The writer pool has one connection: had it come back still inside the dropped
        // transaction, this `BEGIN IMMEDIATE` would fail ("cannot start a transaction within a
        // transaction") or the row would be visible.
        let mut tx = db.unscoped_tx().await.unwrap();
        tx.execute(&row(100 + round)).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(rows(&db).await, vec![100, 101, 102]);
}

#[tokio::test]
async fn a_commit_batch_that_fails_leaves_nothing_and_the_writer_goes_on() {
    let (_t, db) = migrated(Backend::Sqlite).await;
    let mut tx = db.unscoped_tx().await.unwrap();
    tx.execute(&row(1)).await.unwrap();
    // The batch's second statement breaks the primary key: the batch stops there, before its
    // COMMIT, so the first statement of the batch and the write before it go too.
    let two = batch_text(2);
    let err = tx.commit_sqlite(batch(&two, &[2, 1]), || panic!("ran after a failed commit")).await;
    assert!(err.is_err(), "the duplicate key must fail the commit");
    let mut tx = db.unscoped_tx().await.unwrap();
    tx.execute(&row(3)).await.unwrap();
    let mut released = false;
    let one = batch_text(1);
    tx.commit_sqlite(batch(&one, &[4]), || released = true).await.unwrap();
    assert!(released);
    assert_eq!(rows(&db).await, vec![3, 4]);
}

#[tokio::test]
async fn a_read_transaction_ends_without_holding_its_snapshot() {
    let (t, _) = migrated(Backend::Sqlite).await;
    // One reader connection, so that every read below runs on the one the dropped reader had.
    let db = Db::connect(&crate::DbOptions { max_connections: 1, ..crate::DbOptions::new(t.url.clone()) })
        .await
        .unwrap();
    // A reader that is dropped, not committed, must not keep its snapshot on the connection:
    // the next read on the pool sees what was committed after it began.
    for round in 0..3 {
        let mut read = db.unscoped_read_tx().await.unwrap();
        let Tx::Sqlite(c) = &mut read else { unreachable!("SQLite test") };
        // Reading a table takes the snapshot.
        sqlx::query("SELECT count(*) FROM journal_by_correlation").execute(c.conn().unwrap()).await.unwrap();
        drop(read);
        let mut tx = db.unscoped_tx().await.unwrap();
        tx.execute(&row(round)).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(&db).await, (0..=round).collect::<Vec<_>>());
    }
}
