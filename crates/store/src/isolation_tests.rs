//! PostgreSQL row-level security: the second wall of tenant isolation, proven with raw SQL
//! that forgets its tenant filter on purpose.

use azotte_domain::tenant::{Environment, TenantName, TenantSlug};
use azotte_domain::{Principal, PrincipalKind};
use sqlx::Row;

use crate::exec::Tx;
use crate::testing::fresh_database;
use crate::{tenants, Backend, Db, DbOptions, PlatformScope, StoreError, TenantScope};

async fn pg_db() -> Db {
    let t = fresh_database(Backend::Postgres).await;
    let opts = DbOptions::new(t.url);
    Db::migrate(&opts).await.unwrap();
    Db::connect(&opts).await.unwrap()
}

fn platform() -> PlatformScope {
    PlatformScope {
        principal: Principal {
            kind: PrincipalKind::PlatformUser,
            id: "usr_test".into(),
            roles: vec!["platform_admin".into()],
        },
        permissions: Default::default(),
        credential: credential(),
    }
}

fn credential() -> crate::Credential {
    crate::Credential::Session { family_id: azotte_domain::id::SessionId::new(), amr: vec![], mfa_at: None }
}

async fn tenant(db: &Db, slug: &str) -> TenantScope {
    let mut tx = db.platform_tx(&platform()).await.unwrap();
    let (t, _) = tenants::create(
        &mut tx,
        &TenantSlug::parse(slug).unwrap(),
        &TenantName::parse(slug).unwrap(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    tx.action(chrono::Utc::now(), "tenant.create", None, serde_json::json!({})).await.unwrap();
    tx.commit().await.unwrap();
    TenantScope {
        tenant_id: t.id,
        environment: Environment::Development,
        principal: platform().principal,
        permissions: Default::default(),
        credential: credential(),
        platform_access: true,
    }
}

fn pg(tx: &mut Tx) -> &mut sqlx::PgConnection {
    match tx {
        Tx::Postgres(t) => t.conn().unwrap(),
        Tx::Sqlite(_) => unreachable!("PostgreSQL test"),
    }
}

#[tokio::test]
async fn unfiltered_select_sees_only_own_tenant_and_foreign_insert_is_refused() {
    let db = pg_db().await;
    let a = tenant(&db, "tenant-a").await;
    let b = tenant(&db, "tenant-b").await;

    let mut tx = db.tenant_tx(&a).await.unwrap();
    // No WHERE clause: only row-level security stands between A and B's rows.
    let rows = sqlx::query("SELECT tenant_id FROM environments").fetch_all(pg(&mut tx.tx)).await.unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    assert_eq!(ids.len(), 3, "A sees its own three environments");
    assert!(ids.iter().all(|id| *id == a.tenant_id.to_string()), "A sees none of B's rows: {ids:?}");

    let err = sqlx::query("INSERT INTO environments (tenant_id, environment, mode, created_at) VALUES ($1, 'staging', 'test', now())")
        .bind(b.tenant_id.to_string())
        .execute(pg(&mut tx.tx))
        .await
        .unwrap_err();
    assert!(
        matches!(StoreError::from(err), StoreError::IsolationViolation(_)),
        "insert for B from A's transaction is refused"
    );
}

/// An unflushed transaction is a tenant transaction like any other (row-level security holds)
/// whose commit alone does not wait for the log flush; the next transaction waits again.
#[tokio::test]
async fn an_unflushed_transaction_relaxes_only_its_own_commit() {
    use sqlx::Connection;
    let t = fresh_database(Backend::Postgres).await;
    // The test cluster runs without flushes for speed: this database flushes, as production does.
    let mut c = sqlx::PgConnection::connect(&t.url).await.unwrap();
    let flush = "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', current_database()); END $$";
    sqlx::query(flush).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
    let opts = DbOptions::new(t.url);
    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let a = tenant(&db, "tenant-a").await;
    tenant(&db, "tenant-b").await;
    async fn setting(tx: &mut crate::TenantTx) -> String {
        sqlx::query_scalar("SHOW synchronous_commit").fetch_one(pg(&mut tx.tx)).await.unwrap()
    }
    for _ in 0..2 {
        let mut tx = db.tenant_tx_unflushed(&a).await.unwrap();
        assert_eq!(setting(&mut tx).await, "off");
        let rows = sqlx::query("SELECT tenant_id FROM environments").fetch_all(pg(&mut tx.tx)).await.unwrap();
        assert_eq!(rows.len(), 3, "only its tenant's rows");
        tx.commit().await.unwrap();
        let mut tx = db.tenant_tx(&a).await.unwrap();
        assert_eq!(setting(&mut tx).await, "on", "the connection's next transaction flushes again");
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn a_mutation_without_its_journal_entry_cannot_commit() {
    let db = pg_db().await;
    let mut tx = db.platform_tx(&platform()).await.unwrap();
    tenants::create(
        &mut tx,
        &TenantSlug::parse("sneaky").unwrap(),
        &TenantName::parse("S").unwrap(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(matches!(tx.commit().await, Err(StoreError::Unjournaled)));
    let mut tx = db.platform_tx(&platform()).await.unwrap();
    let page = tenants::list(&mut tx, 10, None).await.unwrap();
    assert!(page.items.is_empty(), "the refused transaction was rolled back");
}

#[tokio::test]
async fn a_transaction_without_tenant_sees_no_tenant_rows() {
    let db = pg_db().await;
    tenant(&db, "tenant-a").await;
    let mut tx = db.unscoped_read_tx().await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM environments").fetch_one(pg(&mut tx)).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn service_role_owns_nothing_and_every_tenant_table_forces_rls() {
    let db = pg_db().await;
    let pool = db.pg_pool().unwrap();
    let who: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(pool).await.unwrap();
    assert_eq!(who, crate::db::APP_ROLE);
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(!superuser && !bypass, "the service role must be bound by RLS");

    // Every table with a tenant_id column: RLS enabled and forced, a policy, not owned by the app.
    let rows = sqlx::query(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner)::text,
                (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        let table: String = r.get(0);
        assert!(r.get::<bool, _>(1) && r.get::<bool, _>(2), "{table}: RLS must be enabled and forced");
        assert_ne!(
            r.get::<String, _>(3),
            crate::db::APP_ROLE,
            "{table} must not be owned by the service role"
        );
        assert!(r.get::<i64, _>(4) > 0, "{table} needs a policy");
    }
    // Rows that go only by a cascade from their parent: the service role cannot delete them.
    for table in ["storefront_invoice_prefixes"] {
        let q = "SELECT has_table_privilege(current_user, $1, 'DELETE')";
        let can: bool = sqlx::query_scalar(q).bind(table).fetch_one(pool).await.unwrap();
        assert!(!can, "{table}: the service role may not delete its rows");
    }
}

/// Migration 0034 records the current invoice prefix of every existing storefront, also when
/// the migrating role is an ordinary owner bound by the forced row-level security of
/// `storefronts` (not a superuser, which the test cluster's login role is).
#[tokio::test]
async fn migration_0034_records_existing_prefixes_as_an_ordinary_owner() {
    use sqlx::{Connection, Executor};
    let t = fresh_database(Backend::Postgres).await;
    let opts = DbOptions::new(t.url.clone());
    Db::migrate_before(&opts, 34).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();
    let a = crate::testing::tenant_scope(&db, "prefix-old-a", Environment::Development).await;
    let b = crate::testing::tenant_scope(&db, "prefix-old-b", Environment::Production).await;
    db.close().await;
    // As the test cluster's superuser: two storefronts, then an ordinary owner of what 0034
    // touches.
    let owner = format!("own_{}", uuid::Uuid::now_v7().simple());
    let database = t.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&t.url).await.unwrap();
    for (scope, id, prefix) in [(&a, "sf_a", "AAA-"), (&b, "sf_b", "BBB-")] {
        let sql = format!(
            "INSERT INTO storefronts (tenant_id, environment, id, name, type, default_currency, currencies,
               default_language, countries, tax, status, dunning, invoice_prefix, created_at, updated_at)
             VALUES ('{}', '{}', '{id}', 'Web', 'web', 'EUR', '[\"EUR\"]', 'en', '[\"DE\"]',
               '{{\"kind\": \"inclusive\", \"rate_bp\": 1900}}', 'active', '{{}}', '{prefix}', now(), now())",
            scope.tenant_id,
            scope.environment.as_str()
        );
        admin.execute(sql.as_str()).await.unwrap();
    }
    for sql in [
        format!("CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("ALTER DATABASE {database} OWNER TO {owner}"),
        format!("ALTER TABLE storefronts OWNER TO {owner}"),
        format!("ALTER TABLE _sqlx_migrations OWNER TO {owner}"),
        format!("GRANT azotte_app TO {owner}"),
    ] {
        admin.execute(sql.as_str()).await.unwrap();
    }
    let (base, _) = t.url.split_once("://").unwrap();
    let rest = t.url.split_once('@').unwrap().1;
    let as_owner = DbOptions::new(format!("{base}://{owner}@{rest}"));
    // 0034 alone: later migrations touch tables this owner was not given.
    Db::migrate_before(&as_owner, 35).await.unwrap();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT tenant_id, environment, storefront_id, prefix FROM storefront_invoice_prefixes ORDER BY storefront_id",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let want = |s: &TenantScope, id: &str, p: &str| {
        (s.tenant_id.to_string(), s.environment.as_str().to_owned(), id.to_owned(), p.to_owned())
    };
    assert_eq!(rows, [want(&a, "sf_a", "AAA-"), want(&b, "sf_b", "BBB-")]);
    // … and storefronts is forced again.
    let forced: bool =
        sqlx::query_scalar("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'storefronts'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(forced);
    admin.close().await.unwrap();
}
