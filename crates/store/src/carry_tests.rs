//! Inserts held for the commit ([`TenantTx::insert_at_commit`]): on PostgreSQL they are written
//! by the statement that writes the transaction's journal entries, with the transaction or not
//! at all; SQLite writes them at once. And statements run together
//! ([`Tx::execute_together`](crate::exec::Tx::execute_together)).

use azotte_domain::tenant::Environment;
use serde_json::json;
use sqlx::Row;

use crate::customers::{self, CustomerRow, Customers};
use crate::exec::renumber;
use crate::exec::Tx;
use crate::journal::{carriable, pg_text, Carried, CARRIABLE};
use crate::testing::{migrated, tenant_scope};
use crate::{Backend, Db, StoreError, TenantScope, TenantTx};

fn customer(id: &str, external_id: &str) -> CustomerRow {
    let now = chrono::Utc::now();
    CustomerRow {
        id: id.into(),
        external_id: external_id.into(),
        email_hash: None,
        phone_hash: None,
        wrapped_key: None,
        pii: None,
        country: Some("DE".into()),
        language: None,
        legal_type: "individual".into(),
        status: "active".into(),
        created_at: now,
        updated_at: now,
    }
}

fn ids(rows: &[CustomerRow]) -> Vec<String> {
    let mut ids: Vec<String> = rows.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    ids
}

async fn stored(db: &Db, scope: &TenantScope, asked: &[&str]) -> Vec<String> {
    let mut tx = db.tenant_read_tx(scope).await.unwrap();
    let asked: Vec<String> = asked.iter().map(|s| s.to_string()).collect();
    let found = customers::get_customers(&mut tx, &asked).await.unwrap();
    tx.commit().await.unwrap();
    ids(&found)
}

/// Journal entries of `type_` in the scope's tenant (PostgreSQL).
async fn entries(db: &Db, scope: &TenantScope, type_: &str) -> i64 {
    let mut tx = db.tenant_read_tx(scope).await.unwrap();
    let Tx::Postgres(t) = &mut tx.tx else { unreachable!("PostgreSQL only") };
    let n = sqlx::query("SELECT count(*) FROM journal_entries WHERE tenant_id = $1 AND type = $2")
        .bind(scope.tenant_id().to_string())
        .bind(type_)
        .fetch_one(t.conn().unwrap())
        .await
        .unwrap()
        .get::<i64, _>(0);
    tx.commit().await.unwrap();
    n
}

async fn journaled_tx(db: &Db, scope: &TenantScope, type_: &str) -> TenantTx {
    let mut tx = db.tenant_tx(scope).await.unwrap();
    tx.action(chrono::Utc::now(), type_, None, json!({})).await.unwrap();
    tx
}

#[tokio::test]
async fn inserts_held_for_the_commit_are_written_with_it() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let (_t, db) = migrated(backend).await;
        let scope = tenant_scope(&db, "carry", Environment::Development).await;
        let mut tx = journaled_tx(&db, &scope, "test.carry").await;
        tx.insert_at_commit();
        let rows = [customer("cus_a", "ext-a"), customer("cus_b", "ext-b")];
        customers::insert_customers(&mut tx, &rows).await.unwrap();
        let inside =
            ids(&customers::get_customers(&mut tx, &["cus_a".into(), "cus_b".into()]).await.unwrap());
        match backend {
            // Held: the transaction itself does not see them before its commit.
            Backend::Postgres => assert!(inside.is_empty(), "written before the commit: {inside:?}"),
            Backend::Sqlite => assert_eq!(inside, ["cus_a", "cus_b"], "SQLite writes them at once"),
        }
        tx.commit().await.unwrap();
        assert_eq!(stored(&db, &scope, &["cus_a", "cus_b"]).await, ["cus_a", "cus_b"], "{backend:?}");
        if backend == Backend::Postgres {
            assert_eq!(entries(&db, &scope, "test.carry").await, 1, "the journal entry with them");
        }
    }
}

#[tokio::test]
async fn a_held_insert_refused_at_the_commit_leaves_nothing_of_the_transaction() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let (_t, db) = migrated(backend).await;
        let scope = tenant_scope(&db, "carry", Environment::Development).await;
        let mut tx = journaled_tx(&db, &scope, "test.first").await;
        customers::insert_customer(&mut tx, &customer("cus_taken", "ext-taken")).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = journaled_tx(&db, &scope, "test.refused").await;
        // Written at once, before the transaction holds its inserts.
        customers::insert_customer(&mut tx, &customer("cus_now", "ext-now")).await.unwrap();
        tx.insert_at_commit();
        let rows = [customer("cus_new", "ext-new"), customer("cus_again", "ext-taken")];
        let refused = match customers::insert_customers(&mut tx, &rows).await {
            // SQLite runs it at once: refused there.
            Err(e) => e,
            Ok(()) => tx.commit().await.expect_err("an external id taken"),
        };
        let named = matches!(&refused, StoreError::UniqueViolation { constraint } if constraint.contains("external_id"));
        assert!(named, "{backend:?}: {refused:?}");
        assert_eq!(
            stored(&db, &scope, &["cus_taken", "cus_now", "cus_new", "cus_again"]).await,
            ["cus_taken"]
        );
        if backend == Backend::Postgres {
            assert_eq!(entries(&db, &scope, "test.refused").await, 0, "no journal entry either");
        }
    }
}

/// The statement's acknowledgement of cache evictions reads, while it runs, what the triggers of
/// the transaction's earlier statements set; a held insert's own trigger would fire after it. So
/// no table whose inserts may be held may notify the caches on insert.
#[tokio::test]
async fn carriable_tables_notify_no_cache_on_insert() {
    let (_t, db) = migrated(Backend::Postgres).await;
    let scope = tenant_scope(&db, "carry", Environment::Development).await;
    let mut tx = db.tenant_read_tx(&scope).await.unwrap();
    let Tx::Postgres(t) = &mut tx.tx else { unreachable!() };
    let notifying: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT event_object_table::text FROM information_schema.triggers \
         WHERE event_manipulation = 'INSERT' AND action_statement LIKE '%azotte_cache_notify%'",
    )
    .fetch_all(t.conn().unwrap())
    .await
    .unwrap();
    assert!(notifying.iter().any(|t| t == "entitlement_grants"), "the query finds them: {notifying:?}");
    for table in CARRIABLE {
        assert!(!notifying.iter().any(|t| t == table), "{table} notifies the caches on insert");
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_name = $1)",
        )
        .bind(table)
        .fetch_one(t.conn().unwrap())
        .await
        .unwrap();
        assert!(exists, "{table} is a table");
    }
    tx.commit().await.unwrap();
}

#[test]
fn parameters_are_renumbered_outside_quotes() {
    assert_eq!(
        renumber(r#"INSERT INTO "a" ("x$1", "y""$2") VALUES ($1, '$2 it''s', $3), ($2, $3)"#, 5, 3)
            .as_deref(),
        Some(r#"INSERT INTO "a" ("x$1", "y""$2") VALUES ($6, '$2 it''s', $8), ($7, $8)"#)
    );
    // The query builder's escaped literals: a backslash escapes the character after it.
    assert_eq!(
        renumber(r#"SELECT $1, E'it\'s $2', e'\\', $2"#, 1, 2).as_deref(),
        Some(r#"SELECT $2, E'it\'s $2', e'\\', $3"#)
    );
    // Not an escaped literal: a word ending in E before the quote.
    assert_eq!(
        renumber(r#"SELECT $1 WHERE a = SOME'\' AND b = $2"#, 1, 2).as_deref(),
        Some(r#"SELECT $2 WHERE a = SOME'\' AND b = $3"#)
    );
    assert_eq!(renumber("SELECT $1", 0, 1).as_deref(), Some("SELECT $1"));
    // Refused: parameters other than $1 to $values, or a text it does not read whole.
    assert_eq!(renumber("SELECT $1, $3", 0, 3), None, "a parameter missing");
    assert_eq!(renumber("SELECT $1, $2", 0, 1), None, "a parameter beyond the values");
    assert_eq!(renumber("SELECT $0", 0, 1), None);
    assert_eq!(renumber("SELECT $$x$$, $1", 0, 1), None, "dollar quotes");
    assert_eq!(renumber("SELECT $1 -- $2", 0, 1), None, "a comment");
    assert_eq!(renumber("SELECT $1 /* $2 */", 0, 1), None, "a comment");
    assert_eq!(renumber("SELECT '$1", 0, 1), None, "a literal left open");
}

#[test]
fn only_inserts_into_carriable_tables_are_carried() {
    assert!(carriable(r#"INSERT INTO "invoices" ("id") VALUES ($1)"#));
    assert!(carriable(r#"INSERT INTO "customer_data"."customers" ("id") VALUES ($1)"#));
    assert!(!carriable(r#"INSERT INTO "entitlement_grants" ("id") VALUES ($1)"#));
    assert!(!carriable(r#"UPDATE "invoices" SET "id" = $1"#));
}

/// The carried inserts' parameters come first, the entries' after them, the acknowledgement's
/// last: every number from 1 to the total once.
#[test]
fn a_statement_with_carried_inserts_numbers_every_parameter_once() {
    let raw = [
        (r#"INSERT INTO "invoices" ("a", "b") VALUES ($1, $2)"#, 2),
        (r#"INSERT INTO "invoice_lines" ("a") VALUES ($1), ($2), ($3)"#, 3),
    ];
    // Numbered one after another, as `PgInsert::carry` numbers them.
    let mut base = 0;
    let carried: Vec<Carried> = raw
        .iter()
        .map(|(sql, n)| {
            let text = renumber(sql, base, *n).unwrap();
            base += n;
            (text, sea_query::Values(vec![1i64.into(); *n]))
        })
        .collect();
    let sql = pg_text(2, 1, true, &carried);
    assert!(sql.contains(r#"c0 AS (INSERT INTO "invoices" ("a", "b") VALUES ($1, $2))"#), "{sql}");
    assert!(sql.contains(r#"c1 AS (INSERT INTO "invoice_lines" ("a") VALUES ($3), ($4), ($5))"#), "{sql}");
    let mut numbers: Vec<usize> = sql
        .split('$')
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let total = 5 + 19 * 2 + 6 + 2;
    assert_eq!(numbers, (1..=total).collect::<Vec<_>>());
    assert!(sql.starts_with("WITH ack AS (SELECT pg_notify($50, $51)"), "{sql}");
}

async fn countries(db: &Db, scope: &TenantScope) -> Vec<(String, Option<String>, Option<String>)> {
    let mut tx = db.tenant_read_tx(scope).await.unwrap();
    let found = customers::get_customers(&mut tx, &["cus_a".into(), "cus_b".into()]).await.unwrap();
    tx.commit().await.unwrap();
    let mut out: Vec<_> = found.into_iter().map(|c| (c.id, c.country, c.language)).collect();
    out.sort();
    out
}

fn update(tx: &TenantTx, ids: &[&str], set: (Customers, &str)) -> sea_query::UpdateStatement {
    use sea_query::{Expr, Query};
    Query::update()
        .table(Customers::Table)
        .values([(set.0, set.1.into())])
        .cond_where(tx.in_scope(Customers::TenantId, Customers::Environment))
        .and_where(Expr::col(Customers::Id).is_in(ids.iter().map(|s| s.to_string())))
        .to_owned()
}

/// Statements run together answer the rows each wrote; a part refused fails the call, and the
/// transaction rolls back with nothing of the parts.
#[tokio::test]
async fn statements_together_answer_each_ones_rows_and_fail_as_one() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let (_t, db) = migrated(backend).await;
        let scope = tenant_scope(&db, "together", Environment::Development).await;
        let mut tx = journaled_tx(&db, &scope, "test.setup").await;
        let rows = [customer("cus_a", "ext-a"), customer("cus_b", "ext-b"), customer("cus_c", "ext-c")];
        customers::insert_customers(&mut tx, &rows).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = journaled_tx(&db, &scope, "test.together").await;
        // Each part its own rows (see below).
        let country = update(&tx, &["cus_a", "cus_c", "cus_missing"], (Customers::Country, "FR"));
        let language = update(&tx, &["cus_b"], (Customers::Language, "de"));
        let counts = tx.tx.execute_together(&[&country, &language]).await.unwrap();
        assert_eq!(counts, [2, 1], "{backend:?}");
        tx.commit().await.unwrap();
        let after = [
            ("cus_a".to_owned(), Some("FR".to_owned()), None),
            ("cus_b".to_owned(), Some("DE".to_owned()), Some("de".to_owned())),
        ];
        assert_eq!(countries(&db, &scope).await, after, "{backend:?}");

        // Why: of a row two parts write, PostgreSQL writes it for one part only.
        let mut tx = journaled_tx(&db, &scope, "test.same_row").await;
        let first = update(&tx, &["cus_c"], (Customers::Language, "fr"));
        let second = update(&tx, &["cus_c"], (Customers::Language, "it"));
        let counts = tx.tx.execute_together(&[&first, &second]).await.unwrap();
        let expected: [u64; 2] = if backend == Backend::Postgres { [1, 0] } else { [1, 1] };
        assert_eq!(counts, expected, "{backend:?}");
        drop(tx);

        let mut tx = journaled_tx(&db, &scope, "test.refused").await;
        let country = update(&tx, &["cus_a"], (Customers::Country, "IT"));
        let taken = update(&tx, &["cus_b"], (Customers::ExternalId, "ext-a"));
        let refused = tx.tx.execute_together(&[&country, &taken]).await.unwrap_err();
        assert!(matches!(refused, StoreError::UniqueViolation { .. }), "{backend:?}: {refused:?}");
        drop(tx);
        assert_eq!(countries(&db, &scope).await, after, "{backend:?}: nothing of the refused statements");
    }
}

/// A fenced transaction's fence: [`Db::after_fence`] begins only once the transaction has
/// ended — committed or rolled back — so that it reads which; it gives up after its wait while
/// the transaction is still open. (PostgreSQL; SQLite's commits are never unconfirmed.)
#[tokio::test]
async fn after_a_fence_the_fenced_transactions_end_is_read() {
    let (_t, db) = migrated(Backend::Postgres).await;
    let scope = tenant_scope(&db, "fence", Environment::Development).await;
    let wait = std::time::Duration::from_secs(10);
    for commit in [true, false] {
        let id = if commit { "cus_fenced_committed" } else { "cus_fenced_rolled_back" };
        let (mut tx, fence) = db.tenant_tx_fenced(&scope).await.unwrap();
        tx.action(chrono::Utc::now(), "customer.create", None, json!({})).await.unwrap();
        customers::insert_customer(&mut tx, &customer(id, id)).await.unwrap();
        // While the transaction is open the fence holds: a short wait gives up.
        let held = db.after_fence(&scope, fence, std::time::Duration::from_millis(100)).await;
        assert!(matches!(held, Err(StoreError::Database(_))), "{:?}", held.err());
        let (db2, scope2) = (db.clone(), scope.clone());
        let reader = tokio::spawn(async move {
            let mut after = db2.after_fence(&scope2, fence, wait).await.unwrap();
            let found = customers::get_customers(&mut after, &[id.to_owned()]).await.unwrap();
            after.commit().await.unwrap();
            found.len()
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!reader.is_finished(), "the reader waits for the fenced transaction");
        if commit {
            tx.commit().await.unwrap();
        } else {
            drop(tx);
        }
        assert_eq!(reader.await.unwrap(), usize::from(commit), "commit {commit}");
    }
    // A session holding its fence open is ended: its transaction rolls back, and the fence is
    // free at once.
    let (mut tx, fence) = db.tenant_tx_fenced(&scope).await.unwrap();
    tx.action(chrono::Utc::now(), "customer.create", None, json!({})).await.unwrap();
    customers::insert_customer(&mut tx, &customer("cus_fenced_ended", "cus_fenced_ended")).await.unwrap();
    assert!(db.end_fence_holder(fence).await.unwrap(), "the holder was ended");
    let mut after = db.after_fence(&scope, fence, std::time::Duration::from_millis(500)).await.unwrap();
    assert!(customers::get_customers(&mut after, &["cus_fenced_ended".into()]).await.unwrap().is_empty());
    after.commit().await.unwrap();
    assert!(tx.commit().await.is_err(), "the ended session's transaction cannot commit");
    assert!(!db.end_fence_holder(fence).await.unwrap(), "nobody holds it any more");
    // Readers of one fence share it: neither waits for the other, and neither is ended.
    let mut a = db.after_fence(&scope, fence, std::time::Duration::from_millis(100)).await.unwrap();
    let mut b = db.after_fence(&scope, fence, std::time::Duration::from_millis(100)).await.unwrap();
    assert!(!db.end_fence_holder(fence).await.unwrap(), "a reader is not the holder");
    for reader in [&mut a, &mut b] {
        assert!(customers::get_customers(reader, &["cus_fenced_ended".into()]).await.unwrap().is_empty());
    }
    a.commit().await.unwrap();
    b.commit().await.unwrap();
    // Another transaction's fence does not hold it up.
    let (_tx, _fence) = db.tenant_tx_fenced(&scope).await.unwrap();
    let (_, other) = db.tenant_tx_fenced(&scope).await.unwrap();
    drop(db.after_fence(&scope, other, wait).await.unwrap());
}
