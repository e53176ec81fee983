//! Finding entries by correlation id and by resource, on both backends: on SQLite through the
//! lookup tables the sealer keeps up to the seal mark plus the unsealed tail after it (migration
//! 0027), on PostgreSQL through the entries' own indexes — the same answers either way.

use azotte_crypto::chain;
use azotte_domain::tenant::Environment;
use serde_json::json;

use super::{by_correlation, list, timeline, Filter};
use crate::exec::Tx;
use crate::testing::{fresh_database, migrated, tenant_scope};
use crate::{Backend, Db, DbOptions, TenantScope};

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn sign(msg: &[u8]) -> (String, Vec<u8>) {
    ("test".into(), chain::sign(&[7; 32], msg).to_vec())
}

/// One transaction of `scope` about widget `widget`: its action and, `with_outcome`, its outcome,
/// under one correlation id. Returns the entries' ids and that correlation id.
async fn write(db: &Db, scope: &TenantScope, widget: &str, with_outcome: bool) -> (Vec<String>, String) {
    let mut tx = db.tenant_tx(scope).await.unwrap();
    let r = Some(("widget", widget));
    let mut ids = vec![tx.action(now(), "widget.touch", r, json!({})).await.unwrap()];
    if with_outcome {
        ids.push(tx.outcome(now(), "widget.touched", r, json!({})).await.unwrap());
    }
    tx.commit().await.unwrap();
    let mut read = db.tenant_read_tx(scope).await.unwrap();
    let (page, _) = list(&mut read, &Filter::default(), 1000, None).await.unwrap();
    read.commit().await.unwrap();
    let correlation = page.iter().find(|e| e.id == ids[0]).unwrap().correlation_id.clone();
    (ids, correlation)
}

/// Seals everything committed so far, every chain.
async fn seal_all(db: &Db, scopes: &[&TenantScope]) {
    let policy = crate::seal::CheckpointPolicy { every: 50, interval: chrono::Duration::seconds(60) };
    for s in scopes {
        let (tenant, env) = (s.tenant_id().to_string(), s.environment().as_str());
        crate::seal::seal_chain(db, &tenant, env, &now, policy, &sign, crate::seal::Pass::Wait)
            .await
            .unwrap();
    }
}

fn ids(entries: Vec<super::Entry>) -> Vec<String> {
    entries.into_iter().map(|e| e.id).collect()
}

fn sorted(parts: &[&[String]]) -> Vec<String> {
    let mut v: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    v.sort();
    v
}

/// SQLite's lookup rows of a tenant (none on PostgreSQL, which has no such tables).
async fn lookup_rows(db: &Db, scope: &TenantScope) -> (i64, i64) {
    let mut tx = db.unscoped_read_tx().await.unwrap();
    let Tx::Sqlite(c) = &mut tx else { return (0, 0) };
    let tenant = scope.tenant_id().to_string();
    let mut n = [0; 2];
    for (i, table) in ["journal_by_correlation", "journal_by_resource"].iter().enumerate() {
        n[i] = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = ?1"))
            .bind(&tenant)
            .fetch_one(c.conn().unwrap())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    (n[0], n[1])
}

async fn lookups_answer_the_same_before_and_after_sealing(backend: Backend) {
    let (_t, db) = migrated(backend).await;
    let a = tenant_scope(&db, "look-a", Environment::Development).await;
    let a_prod = TenantScope { environment: Environment::Production, ..a.clone() };
    let b = tenant_scope(&db, "look-b", Environment::Development).await;
    let (first, c_first) = write(&db, &a, "w1", true).await;
    let (second, _) = write(&db, &a, "w1", false).await;
    let (other_tenant, _) = write(&db, &b, "w1", true).await;
    let (other_widget, _) = write(&db, &a, "w2", false).await;
    let (other_env, c_other_env) = write(&db, &a_prod, "w1", false).await;
    seal_all(&db, &[&a, &a_prod, &b]).await;
    // After the mark: found by scanning the log's tail on SQLite.
    let (tail, c_tail) = write(&db, &a, "w1", true).await;

    for sealed_tail in [false, true] {
        let mut tx = db.tenant_read_tx(&a).await.unwrap();
        let w1 = ids(timeline(&mut tx, "widget", "w1").await.unwrap());
        assert_eq!(w1, sorted(&[&first, &second, &tail]), "tail sealed: {sealed_tail}");
        assert_eq!(ids(timeline(&mut tx, "widget", "w2").await.unwrap()), other_widget);
        assert!(timeline(&mut tx, "widget", "w3").await.unwrap().is_empty());
        assert_eq!(ids(by_correlation(&mut tx, &c_first).await.unwrap()), first);
        assert_eq!(ids(by_correlation(&mut tx, &c_tail).await.unwrap()), tail);
        // Lineage spans the tenant's environments.
        assert_eq!(ids(by_correlation(&mut tx, &c_other_env).await.unwrap()), other_env);
        let f = Filter { correlation_id: Some(c_tail.clone()), ..Filter::default() };
        assert_eq!(ids(list(&mut tx, &f, 50, None).await.unwrap().0), tail);
        let f = Filter { resource_type: Some("widget".into()), ..Filter::default() };
        let (all, more) = list(&mut tx, &f, 50, None).await.unwrap();
        assert_eq!((ids(all), more), (sorted(&[&first, &second, &other_widget, &tail]), false));
        // Paged: the cursor continues where the first page stopped.
        let (page, more) = list(&mut tx, &f, 2, None).await.unwrap();
        assert!(more);
        let (rest, _) = list(&mut tx, &f, 50, Some(&page[1].id)).await.unwrap();
        assert_eq!([ids(page), ids(rest)].concat(), sorted(&[&first, &second, &other_widget, &tail]));
        let f = Filter {
            resource_type: Some("widget".into()),
            resource_id: Some("w2".into()),
            ..Filter::default()
        };
        assert_eq!(ids(list(&mut tx, &f, 50, None).await.unwrap().0), other_widget);
        tx.commit().await.unwrap();

        let mut tx = db.tenant_read_tx(&b).await.unwrap();
        assert_eq!(ids(timeline(&mut tx, "widget", "w1").await.unwrap()), other_tenant);
        assert!(by_correlation(&mut tx, &c_first).await.unwrap().is_empty(), "another tenant's lineage");
        tx.commit().await.unwrap();

        if backend == Backend::Sqlite {
            // Tenant a's development and production entries: 5 then 7 by correlation, all
            // about a widget.
            let expected = if sealed_tail { 7 } else { 5 };
            assert_eq!(lookup_rows(&db, &a).await, (expected, expected));
        }
        seal_all(&db, &[&a]).await;
    }
}

#[tokio::test]
async fn lookups_answer_the_same_before_and_after_sealing_sqlite() {
    lookups_answer_the_same_before_and_after_sealing(Backend::Sqlite).await;
}

#[tokio::test]
async fn lookups_answer_the_same_before_and_after_sealing_postgres() {
    lookups_answer_the_same_before_and_after_sealing(Backend::Postgres).await;
}

/// On SQLite the lookups fetch the entries by position: neither the tenant's whole journal
/// (walked by its id index) nor the whole log is read.
#[tokio::test]
async fn sqlite_lookups_read_entries_by_position() {
    use sea_query::SqliteQueryBuilder;
    use sea_query_binder::SqlxBinder;
    let (_t, db) = migrated(Backend::Sqlite).await;
    let a = tenant_scope(&db, "look-plan", Environment::Development).await;
    let mut tx = db.tenant_read_tx(&a).await.unwrap();
    let queries = [
        ("journal_by_correlation", super::by_correlation_query(&tx, "c")),
        ("journal_by_resource", super::timeline_query(&tx, "widget", "w1")),
    ];
    let Tx::Sqlite(c) = &mut tx.tx else { unreachable!() };
    for (table, q) in queries {
        let (sql, values) = q.build_sqlx(SqliteQueryBuilder);
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as_with(&format!("EXPLAIN QUERY PLAN {sql}"), values)
                .fetch_all(c.conn().unwrap())
                .await
                .unwrap();
        let details: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            details.iter().any(|d| d.starts_with(&format!("SEARCH {table} USING PRIMARY KEY"))),
            "{details:#?}"
        );
        for d in details.iter().filter(|d| d.contains("journal_entries")) {
            assert!(d.contains("USING INTEGER PRIMARY KEY"), "{table}: {d} in {details:#?}");
        }
        assert!(!details.iter().any(|d| d.starts_with("SCAN")), "{details:#?}");
    }
    tx.commit().await.unwrap();
}

/// Migration 0027 fills the lookup tables from the entries an older release wrote, sealed or not,
/// so lineage and timelines of old entries are still found.
#[tokio::test]
async fn sqlite_entries_written_before_migration_0027_are_found() {
    let t = fresh_database(Backend::Sqlite).await;
    let opts = DbOptions::new(t.url.clone());
    Db::migrate_before(&opts, 27).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let a = tenant_scope(&db, "look-old", Environment::Development).await;
    let (sealed, c_sealed) = write(&db, &a, "w1", true).await;
    let (unsealed, c_unsealed) = write(&db, &a, "w1", false).await;
    db.close().await;
    // The first two count as sealed: the mark is past them (this test cannot run the old
    // sealer), so after the migration only the lookup tables can find them.
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
        sqlx::query("UPDATE journal_seal_mark SET pos = (SELECT pos FROM journal_entries WHERE id = ?1)")
            .bind(&sealed[1])
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }

    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    assert_eq!(lookup_rows(&db, &a).await, (3, 3));
    let mut tx = db.tenant_read_tx(&a).await.unwrap();
    assert_eq!(ids(timeline(&mut tx, "widget", "w1").await.unwrap()), sorted(&[&sealed, &unsealed]));
    assert_eq!(ids(by_correlation(&mut tx, &c_sealed).await.unwrap()), sealed);
    assert_eq!(ids(by_correlation(&mut tx, &c_unsealed).await.unwrap()), unsealed);
    tx.commit().await.unwrap();
    // The one after the mark is sealed, its lookup rows already there.
    let pass = crate::seal::seal_log(
        &db,
        &now,
        crate::seal::CheckpointPolicy { every: 50, interval: chrono::Duration::seconds(60) },
        &sign,
    )
    .await
    .unwrap();
    assert_eq!(pass.sealed, 1);
    assert_eq!(lookup_rows(&db, &a).await, (3, 3));
}
