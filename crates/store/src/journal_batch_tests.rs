//! SQLite writes a transaction's journal entries with its `COMMIT` in a batch whose text is kept
//! and whose values are bound straight from the rows ([`sqlite_commit`]). Rows it writes must
//! be the rows the query builder's `INSERT` writes ([`flush`]), value for value and type for
//! type: the sealer hashes what it reads back, and verification reads the same columns.

use azotte_domain::{Principal, PrincipalKind};
use chrono::TimeZone;
use serde_json::json;

use super::{flush, record, sqlite_commit, with_meta, Buffer, Kind, NewEntry, RequestMeta, ENTRY_COLUMNS};
use crate::exec::Tx;
use crate::testing::migrated;
use crate::{Backend, Db};

/// `n` entries under one request context: a full action first, then entries with every
/// optional column empty and bodies with quotes, backslashes, control characters and
/// non-ASCII text.
async fn buffer(n: usize) -> Buffer {
    let meta = RequestMeta {
        correlation_id: "cor_batch".into(),
        request_id: Some("req_1".into()),
        client_ip: Some("2001:db8::1".into()),
        user_agent: Some("curl/8 \"quoted\" \u{e9}".into()),
        source: "api",
        causation_id: None,
    };
    let admin = Principal {
        kind: PrincipalKind::ApiKey,
        id: "key_1".into(),
        roles: vec!["tenant_admin".into(), "it's \"odd\"".into()],
    };
    let system = Principal::system();
    with_meta(meta, async {
        let mut buf = Buffer::default();
        let at = chrono::Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap()
            + chrono::Duration::microseconds(123_456);
        for i in 0..n {
            let first = i == 0;
            record(
                &mut buf,
                "ten_batch".into(),
                "live",
                NewEntry {
                    kind: if first { Kind::Action } else { Kind::Outcome },
                    type_: if first { "widget.create" } else { "widget.created" },
                    occurred_at: at + chrono::Duration::milliseconds(i as i64),
                    causation_id: (!first).then_some("jnl_cause"),
                    correlation_id: (i % 3 == 2).then_some("cor_elsewhere"),
                    principal: if first { &admin } else { &system },
                    mfa: first,
                    resource: first.then_some(("widget", "wid_1")),
                    body: json!({"i": i, "text": "a \"b\" \\ c\u{1}\n d \u{1F600}", "n": null}),
                },
            );
        }
        buf
    })
    .await
}

/// Every column of every entry as SQLite holds it: its storage type and its SQL literal.
async fn stored(db: &Db) -> Vec<Vec<String>> {
    let columns: Vec<String> = std::iter::once("tenant_id".to_owned())
        .chain(ENTRY_COLUMNS.iter().map(sea_query::Iden::to_string))
        .map(|c| format!("typeof(\"{c}\") || ' ' || quote(\"{c}\")"))
        .collect();
    let sql = format!(
        "SELECT {} FROM journal_entries WHERE tenant_id = 'ten_batch' ORDER BY pos",
        columns.join(", ")
    );
    let mut tx = db.unscoped_read_tx().await.unwrap();
    let Tx::Sqlite(t) = &mut tx else { unreachable!("SQLite test") };
    let rows = sqlx::query(&sql).fetch_all(t.conn().unwrap()).await.unwrap();
    tx.commit().await.unwrap();
    rows.iter().map(|r| (0..columns.len()).map(|i| sqlx::Row::get::<String, _>(r, i)).collect()).collect()
}

#[tokio::test]
async fn a_sqlite_batch_writes_what_the_statements_write() {
    // One entry and two (cached texts), nine (past the cache) and 501 (two INSERTs).
    for n in [1, 2, 9, 501] {
        let buf = buffer(n).await;
        let (_a, built) = migrated(Backend::Sqlite).await;
        let mut tx = built.unscoped_tx().await.unwrap();
        flush(&mut tx, buf.clone()).await.unwrap();
        tx.commit().await.unwrap();

        let (_b, batched) = migrated(Backend::Sqlite).await;
        let tx = batched.unscoped_tx().await.unwrap();
        let (sql, entries) = sqlite_commit(buf);
        assert_eq!(sql.matches("INSERT INTO").count(), n.div_ceil(500));
        let mut released = false;
        tx.commit_sqlite(entries.bind(sqlx::query(&sql)), || released = true).await.unwrap();
        assert!(released);

        let (want, got) = (stored(&built).await, stored(&batched).await);
        assert_eq!(want.len(), n);
        assert_eq!(got, want, "{n} entries");
        // The full entry and an empty one, as SQLite holds them.
        assert!(want[0].contains(&"integer 1".to_owned()), "mfa: {:?}", want[0]);
        assert!(want[0].contains(&"text 'ten_batch'".to_owned()), "tenant: {:?}", want[0]);
        if n > 1 {
            assert!(want[1].contains(&"null NULL".to_owned()), "empty columns: {:?}", want[1]);
        }
    }
}

#[tokio::test]
async fn a_transaction_with_no_entries_commits_alone() {
    let (sql, _) = sqlite_commit(Buffer::default());
    assert_eq!(sql, "COMMIT");
    let (_t, db) = migrated(Backend::Sqlite).await;
    let tx = db.unscoped_tx().await.unwrap();
    let (sql, entries) = sqlite_commit(Buffer::default());
    tx.commit_sqlite(entries.bind(sqlx::query(&sql)), || {}).await.unwrap();
    // The writer is free again: had the COMMIT not run, this BEGIN IMMEDIATE would wait out
    // the busy timeout on the one writer connection and then fail.
    let tx = db.unscoped_tx().await.unwrap();
    tx.commit().await.unwrap();
}
