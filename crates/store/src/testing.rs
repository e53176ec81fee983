//! Fresh databases for tests: a temporary SQLite file, or a new database in the throw-away
//! PostgreSQL cluster that `scripts/test` starts (its URL in `AZOTTE_TEST_POSTGRES_URL`).

use sqlx::{Connection, Executor, PgConnection};

use crate::Backend;

/// The variable naming the test cluster's administrative connection.
pub const POSTGRES_URL_VAR: &str = "AZOTTE_TEST_POSTGRES_URL";

/// A database that exists for one test.
pub struct TestDatabase {
    /// Connection URL of the fresh database.
    pub url: String,
    /// Which backend.
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh database of `backend`, migrated and connected.
pub async fn migrated(backend: Backend) -> (TestDatabase, crate::Db) {
    let t = fresh_database(backend).await;
    let opts = crate::DbOptions::new(t.url.clone());
    crate::Db::migrate(&opts).await.unwrap_or_else(|e| panic!("migrate: {e}"));
    let db = crate::Db::connect(&opts).await.unwrap_or_else(|e| panic!("connect: {e}"));
    (t, db)
}

/// Creates a fresh, empty database (not migrated).
pub async fn fresh_database(backend: Backend) -> TestDatabase {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
            let url = format!("sqlite://{}/azotte.db", dir.path().display());
            TestDatabase { url, backend, _dir: Some(dir) }
        }
        Backend::Postgres => {
            let admin = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
                panic!(
                    "{POSTGRES_URL_VAR} is not set: run the tests with `scripts/test`, which starts a \
                     throw-away PostgreSQL cluster and sets it"
                )
            });
            let name = format!("azt_{}", uuid::Uuid::now_v7().simple());
            let mut conn = PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to the test cluster at {admin}: {e}"));
            conn.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
            let _ = conn.close().await;
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
            TestDatabase { url: format!("{base}/{name}"), backend, _dir: None }
        }
    }
}

/// A platform scope acting as the system, for tests that write journaled platform transactions.
pub fn system_platform_scope() -> crate::PlatformScope {
    use azotte_domain::{Principal, PrincipalKind};
    crate::PlatformScope {
        principal: Principal { kind: PrincipalKind::System, id: "system".into(), roles: vec![] },
        permissions: Default::default(),
        credential: crate::Credential::Session {
            family_id: azotte_domain::id::SessionId::new(),
            amr: vec![],
            mfa_at: None,
        },
    }
}

/// Creates a tenant (journaled by the system) and returns a scope acting in one of its
/// environments as the system.
pub async fn tenant_scope(
    db: &crate::Db,
    slug: &str,
    environment: azotte_domain::tenant::Environment,
) -> crate::TenantScope {
    use azotte_domain::tenant::{TenantName, TenantSlug};
    let now = chrono::Utc::now();
    let platform = system_platform_scope();
    let mut tx = db.platform_tx(&platform).await.unwrap_or_else(|e| panic!("platform tx: {e}"));
    let (t, _) = crate::tenants::create(
        &mut tx,
        &TenantSlug::parse(slug).unwrap_or_else(|e| panic!("slug: {e:?}")),
        &TenantName::parse(slug).unwrap_or_else(|e| panic!("name: {e:?}")),
        now,
    )
    .await
    .unwrap_or_else(|e| panic!("create tenant: {e}"));
    tx.action(now, "tenant.create", None, serde_json::json!({})).await.unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
    crate::TenantScope {
        tenant_id: t.id,
        environment,
        principal: platform.principal,
        permissions: Default::default(),
        credential: platform.credential,
        platform_access: true,
    }
}
