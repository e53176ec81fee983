//! `spawn_app` and a typed test client.
//!
//! Every test gets a fresh database (a temporary SQLite file, or a new database in the
//! throw-away PostgreSQL cluster of `scripts/test`) and a real server on a free loopback port.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use azotte::{Application, Config};
use azotte_domain::Clock;
use azotte_service::mail::MemoryMailer;
use azotte_service::Ctx;
use azotte_store::testing::{fresh_database, TestDatabase};
pub use azotte_store::Backend;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Runs one async test body on both backends: `both!(name);` expands to `name::sqlite` and
/// `name::postgres`, each calling `name(spawn_app(backend).await)`.
#[macro_export]
macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await).await
            }
        }
    )+};
}

/// As [`both!`], and each body again with `invoice_numbering = "deferred"`, where every invoice
/// is numbered by the numbering pass after its issuer commits: `name::sqlite_deferred`,
/// `name::postgres_deferred`.
#[macro_export]
macro_rules! both_numberings {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use $crate::helpers::{spawn_app, spawn_app_with, Backend};
            const DEFERRED: &[(&str, &str)] = &[("invoice_numbering", "deferred")];
            fn deferred() -> Vec<(&'static str, String)> {
                DEFERRED.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(spawn_app(Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(spawn_app(Backend::Postgres).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_deferred() {
                super::$name(spawn_app_with(Backend::Sqlite, &deferred()).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_deferred() {
                super::$name(spawn_app_with(Backend::Postgres, &deferred()).await).await
            }
        }
    )+};
}

/// Everything the test process logged, for assertions on log content.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_buffer() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let writer = buf.clone();
        azotte::telemetry::init(azotte::config::LogFormat::Json, "info,sqlx=warn", move || writer.clone());
        buf
    })
}

/// The logs written so far in this test process.
#[allow(dead_code)]
pub fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().0.lock().unwrap()).into_owned()
}

/// A running server with a platform administrator session.
pub struct TestApp {
    pub base: String,
    /// The services' context: its clock is manual (`app.ctx.clock.advance(…)`).
    pub ctx: Ctx,
    /// Messages the app sent.
    pub mail: Arc<MemoryMailer>,
    /// Refresh token of the administrator's session.
    #[allow(dead_code)]
    pub admin_refresh: String,
    pub client: reqwest::Client,
    pub admin_token: String,
    pub backend: Backend,
    #[allow(dead_code)]
    pub db_url: String,
    stop: Option<oneshot::Sender<()>>,
    _db: TestDatabase,
}

impl TestApp {
    /// Stops the in-process server and its workers; the database stays (for another process).
    #[allow(dead_code)]
    pub fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The master key of test servers (64 hex characters).
pub const TEST_MASTER_KEY: &str = "6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d6d";

/// Builds a configuration for a test database, listening on a free port.
pub fn test_config(db_url: &str, extra: &[(&'static str, String)]) -> Config {
    let mut overrides = vec![
        ("listen", "127.0.0.1:0".to_owned()),
        ("secret_key", "5e".repeat(32)),
        ("master_key", TEST_MASTER_KEY.to_owned()),
        ("database_url", db_url.to_owned()),
        ("database_max_connections", "5".to_owned()),
    ];
    overrides.extend(extra.iter().cloned());
    Config::load(None, Vec::new(), &overrides).expect("test configuration")
}

/// Starts the real server on a fresh database and logs in as the bootstrap administrator.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

/// As [`spawn_app`], with configuration overrides.
pub async fn spawn_app_with(backend: Backend, extra: &[(&'static str, String)]) -> TestApp {
    spawn_app_on(fresh_database(backend).await, None, extra).await
}

/// As [`spawn_app`] on PostgreSQL, the server's every connection to the database going
/// through a [`CutProxy`], which is returned with it.
#[allow(dead_code)]
pub async fn spawn_app_through_cut_proxy() -> (TestApp, CutProxy) {
    let db = fresh_database(Backend::Postgres).await;
    // postgres://user@host:port/name
    let (head, rest) = db.url.split_once('@').expect("user@ in the test database URL");
    let (addr, name) = rest.split_once('/').expect("a database name in the test database URL");
    let proxy = CutProxy::start(addr.to_owned()).await;
    let url = format!("{head}@127.0.0.1:{}/{name}", proxy.port);
    (spawn_app_on(db, Some(url), &[]).await, proxy)
}

async fn spawn_app_on(db: TestDatabase, url: Option<String>, extra: &[(&'static str, String)]) -> TestApp {
    log_buffer();
    let backend = db.backend;
    let config = test_config(url.as_deref().unwrap_or(&db.url), extra);
    let mail = Arc::new(MemoryMailer::default());
    let clock = Clock::manual(chrono::Utc::now());
    let app = Application::build_with(&config, clock, mail.clone()).await.expect("application builds");
    let ctx = app.ctx().clone();
    let secret = app.bootstrap().await.expect("bootstrap").expect("fresh database has no administrator");
    let addr = app.local_addr();
    let (stop_tx, stop_rx) = oneshot::channel();
    tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    let mut test_app = TestApp {
        base: format!("http://{addr}"),
        ctx,
        mail,
        admin_refresh: String::new(),
        client: reqwest::Client::new(),
        admin_token: String::new(),
        backend,
        db_url: db.url.clone(),
        stop: Some(stop_tx),
        _db: db,
    };
    let session: Tokens = test_app
        .post(
            "/v1/auth/bootstrap",
            json!({
                "bootstrap_secret": secret.expose(),
                "email": "admin@example.com",
                "password": "correct horse battery staple",
            }),
        )
        .anon()
        .expect(201)
        .await
        .json();
    test_app.admin_token = session.access_token;
    test_app.admin_refresh = session.refresh_token;
    test_app
}

/// A session's tokens.
#[derive(Debug, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub user_id: String,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// A problem+json answer.
#[derive(Debug, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    pub request_id: Option<String>,
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

/// One field error of a problem.
#[derive(Debug, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    #[allow(dead_code)]
    pub message: String,
}

/// A request being built: authenticated as the administrator unless told otherwise.
pub struct Call {
    req: reqwest::RequestBuilder,
    auth: Option<String>,
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str) -> Call {
        Call {
            req: self.client.request(method, format!("{}{path}", self.base)),
            auth: Some(self.admin_token.clone()),
        }
    }
    pub fn get(&self, path: &str) -> Call {
        self.request(Method::GET, path)
    }
    pub fn post(&self, path: &str, body: Value) -> Call {
        self.request(Method::POST, path).json(body)
    }
    pub fn patch(&self, path: &str, body: Value) -> Call {
        self.request(Method::PATCH, path).json(body)
    }

    /// Creates a tenant and returns its JSON.
    pub async fn create_tenant(&self, slug: &str) -> Value {
        self.post("/v1/platform/tenants", json!({"slug": slug, "name": format!("Tenant {slug}")}))
            .expect(201)
            .await
            .json()
    }
}

impl Call {
    pub fn json(mut self, body: Value) -> Self {
        self.req = self.req.json(&body);
        self
    }
    pub fn body(mut self, content_type: &str, body: impl Into<reqwest::Body>) -> Self {
        self.req = self.req.header(CONTENT_TYPE, content_type).body(body);
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.req = self.req.header(name, value);
        self
    }
    pub fn token(mut self, token: &str) -> Self {
        self.auth = Some(token.to_owned());
        self
    }
    pub fn anon(mut self) -> Self {
        self.auth = None;
        self
    }
    /// Names the tenant and environment of a tenant-scoped call.
    pub fn tenant(self, tenant: &str, env: &str) -> Self {
        self.header("x-tn", tenant).header("x-env", env)
    }

    pub async fn send(self) -> Resp {
        let req = match self.auth {
            Some(t) => self.req.bearer_auth(t),
            None => self.req,
        };
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body read").to_vec();
        Resp { status, headers, body }
    }

    /// Sends and asserts the status, showing the body when it differs.
    pub async fn expect(self, status: u16) -> Resp {
        let resp = self.send().await;
        assert_eq!(resp.status, status, "unexpected status; body: {}", resp.text());
        resp
    }
}

/// A received response.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The problem document; asserts the media type.
    pub fn problem(&self) -> Problem {
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "body: {}", self.text());
        let p: Problem = self.json();
        assert_eq!(p.status, self.status);
        assert_eq!(p.kind, format!("urn:azotte:problem:{}", p.code));
        assert!(!p.title.is_empty() && !p.detail.is_empty());
        assert_eq!(p.request_id.as_deref(), self.header("x-request-id"), "problem carries the request id");
        p
    }
}

/// A user's session.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct UserSession {
    pub access: String,
    pub refresh: String,
    pub user_id: String,
}

#[allow(dead_code)]
impl TestApp {
    /// Invites `email` into tenant `slug` (created if missing) with `roles`, accepts the
    /// invitation with a password, and returns the tenant session.
    pub async fn tenant_user(&self, slug: &str, email: &str, roles: &[&str]) -> UserSession {
        let exists = self.get("/v1/platform/tenants?limit=100").expect(200).await.json::<Value>()["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["slug"] == slug);
        if !exists {
            self.create_tenant(slug).await;
        }
        self.post("/v1/users/invitations", json!({"email": email, "roles": roles}))
            .tenant(slug, "development")
            .expect(201)
            .await;
        let token = self.last_invitation_token(email);
        let t: Tokens = self
            .post(
                "/v1/auth/invitations/accept",
                json!({"tenant": slug, "token": token, "password": "tenant user password 1"}),
            )
            .anon()
            .expect(200)
            .await
            .json();
        UserSession { access: t.access_token, refresh: t.refresh_token, user_id: t.user_id }
    }

    /// The token of the last invitation mailed to `email`.
    pub fn last_invitation_token(&self, email: &str) -> String {
        self.mail
            .sent()
            .into_iter()
            .rev()
            .find_map(|m| match m {
                azotte_service::mail::Mail::Invitation { to, token, .. } if to == email => Some(token),
                _ => None,
            })
            .expect("an invitation was mailed")
    }

    /// The current TOTP code for a base32 secret, by the app's clock.
    pub fn totp_code(&self, secret_base32: &str) -> String {
        let secret = azotte_crypto::totp::TotpSecret::from_base32(secret_base32).unwrap();
        format!("{:06}", azotte_crypto::totp::code_at(&secret, self.ctx.clock.now().timestamp(), 6))
    }

    /// Enrols the administrator in TOTP (which counts as a fresh MFA step); returns the secret.
    pub async fn admin_mfa(&self) -> String {
        let e: Value = self.request(Method::POST, "/v1/auth/mfa/totp").expect(200).await.json();
        let secret = e["secret"].as_str().unwrap().to_owned();
        let code = self.totp_code(&secret);
        self.post("/v1/auth/mfa/totp/confirm", json!({"code": code})).expect(200).await;
        secret
    }

    /// Creates an API key as the administrator (who must have fresh MFA); returns the key JSON.
    pub async fn api_key(&self, tenant: &str, env: &str, body: Value) -> Value {
        self.post("/v1/api-keys", body).tenant(tenant, env).expect(201).await.json()
    }
}

/// Direct database access, bypassing the service: what an attacker with database access (or an
/// auditor) sees.
#[allow(dead_code)]
impl TestApp {
    /// Runs a statement as the database owner; the error text if refused.
    pub async fn raw_exec(&self, sql: &str) -> Result<u64, String> {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.db_url).await.map_err(|e| e.to_string())?;
                sqlx::query(sql).execute(&mut c).await.map(|r| r.rows_affected()).map_err(|e| e.to_string())
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.db_url).await.map_err(|e| e.to_string())?;
                sqlx::query(sql).execute(&mut c).await.map(|r| r.rows_affected()).map_err(|e| e.to_string())
            }
        }
    }

    /// Holds back the service's writes of new subscriptions until [`WritesHeld::release`]: on
    /// SQLite the database's write lock (a transaction begun `IMMEDIATE`), on PostgreSQL a
    /// `SHARE` lock on `subscriptions`; as the owner, on a connection of its own.
    pub async fn hold_subscription_writes(&self) -> WritesHeld {
        self.hold_writes("subscriptions").await
    }

    /// [`TestApp::hold_subscription_writes`] for the writes of `table` (on SQLite: every write).
    pub async fn hold_writes(&self, table: &str) -> WritesHeld {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE").execute(&mut c).await.unwrap();
                WritesHeld::Sqlite(c)
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query(&format!("LOCK TABLE {table} IN SHARE MODE")).execute(&mut c).await.unwrap();
                WritesHeld::Postgres(c)
            }
        }
    }

    /// Holds back every read of `table` on PostgreSQL (an `ACCESS EXCLUSIVE` lock) until
    /// [`WritesHeld::release`]; on SQLite, whose readers no lock holds back, every write.
    pub async fn hold_reads(&self, table: &str) -> WritesHeld {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => self.hold_writes(table).await,
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                    .execute(&mut c)
                    .await
                    .unwrap();
                WritesHeld::Postgres(c)
            }
        }
    }

    /// One text value per row of a query returning a single text column, as the owner.
    pub async fn raw_strings(&self, sql: &str) -> Vec<String> {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
                sqlx::query_scalar::<_, String>(sql).fetch_all(&mut c).await.unwrap()
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                sqlx::query_scalar::<_, String>(sql).fetch_all(&mut c).await.unwrap()
            }
        }
    }

    /// Every journal entry rendered as text, every column included.
    pub async fn raw_journal(&self) -> Vec<String> {
        let cols = "tenant_id, environment, id, kind, type, occurred_at, correlation_id, causation_id, \
                    principal_kind, principal_id, principal_roles, mfa, source, request_id, client_ip, \
                    user_agent, resource_type, resource_id, body";
        let sql = match self.backend {
            Backend::Sqlite => format!("SELECT json_array({cols}) FROM journal_entries ORDER BY id"),
            Backend::Postgres => {
                format!("SELECT json_build_array({cols})::text FROM journal_entries ORDER BY id")
            }
        };
        self.raw_strings(&sql).await
    }
}

#[allow(dead_code)]
impl TestApp {
    /// The bytes of the first row of a query returning one binary column, as the owner.
    pub async fn raw_bytes(&self, sql: &str) -> Vec<u8> {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
                sqlx::query_scalar::<_, Vec<u8>>(sql).fetch_one(&mut c).await.unwrap()
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                sqlx::query_scalar::<_, Vec<u8>>(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }
}

#[allow(dead_code)]
impl TestApp {
    /// Every value of every column of every table (both schemas on PostgreSQL), as text; binary
    /// columns as lower-case hex. What someone with a copy of the database can read.
    pub async fn raw_dump(&self) -> String {
        use sqlx::{Connection, Row};
        let mut out = String::new();
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                for t in tables {
                    let cols: Vec<String> = sqlx::query(&format!("PRAGMA table_info({t})"))
                        .fetch_all(&mut c)
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get::<String, _>("name"))
                        .collect();
                    for col in cols {
                        let sql = format!(
                            "SELECT CASE WHEN typeof({col}) = 'blob' THEN lower(hex({col})) ELSE CAST({col} AS TEXT) END FROM {t} WHERE {col} IS NOT NULL"
                        );
                        for v in sqlx::query_scalar::<_, String>(&sql).fetch_all(&mut c).await.unwrap() {
                            out.push_str(&v);
                            out.push('\n');
                        }
                    }
                }
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                let cols = sqlx::query(
                    "SELECT table_schema::text, table_name::text, column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                for r in cols {
                    let (s, t, col, ty): (String, String, String, String) =
                        (r.get(0), r.get(1), r.get(2), r.get(3));
                    let expr = if ty == "bytea" {
                        format!("encode(\"{col}\", 'hex')")
                    } else {
                        format!("\"{col}\"::text")
                    };
                    let sql = format!("SELECT {expr} FROM \"{s}\".\"{t}\" WHERE \"{col}\" IS NOT NULL");
                    for v in sqlx::query_scalar::<_, String>(&sql).fetch_all(&mut c).await.unwrap() {
                        out.push_str(&v);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

impl TestApp {
    /// What the sandbox PSP has captured in all, by its own ledger (minor units).
    pub fn sandbox_captured(&self) -> i64 {
        self.sandbox_sum(azotte_payments::EntryKind::Capture)
    }

    /// What the sandbox PSP has refunded in all, by its own ledger (minor units).
    pub fn sandbox_refunded(&self) -> i64 {
        self.sandbox_sum(azotte_payments::EntryKind::Refund)
    }

    fn sandbox_sum(&self, kind: azotte_payments::EntryKind) -> i64 {
        let entries = self.ctx.psp.sandbox.ledger().entries();
        entries.iter().filter(|e| e.kind == kind).map(|e| e.amount).sum()
    }

    /// One pass of the subscription jobs the worker runs each tick (checkouts, trial ends,
    /// period ends, plan changes, renewals).
    pub async fn subscription_tick(&self) {
        azotte_service::subscriptions::run_due_everywhere(&self.ctx).await.unwrap();
        self.number_queued_invoices().await;
    }

    /// Numbering passes until no draft is queued, for at most half a second (an unpaid draft
    /// younger than the pass's grace stays queued). A pass leaves alone a draft another pass
    /// holds — the in-process worker's, which runs every 200 ms — and that one numbers it a
    /// moment later: waiting for it keeps a test from reading the draft in between.
    pub async fn number_queued_invoices(&self) {
        for _ in 0..10 {
            self.number_invoices().await;
            if self.raw_strings("SELECT invoice_id FROM invoice_numbering").await.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// One pass of the invoice numbering the worker runs every 200 ms: numbers queued drafts.
    pub async fn number_invoices(&self) -> usize {
        azotte_service::invoices::number_pending_everywhere(&self.ctx).await.unwrap()
    }
}

/// Writes held back by [`TestApp::hold_subscription_writes`].
#[allow(dead_code)]
pub enum WritesHeld {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

#[allow(dead_code)]
impl WritesHeld {
    /// Lets the held writes go on (rolls the holding transaction back).
    pub async fn release(self) {
        match self {
            WritesHeld::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
            WritesHeld::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
        }
    }
}

/// Where [`CutProxy`] cuts a connection at a transaction's `COMMIT`.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The `COMMIT` never reaches the server, which rolls the transaction back when it sees the
    /// connection gone.
    Request,
    /// The server gets the `COMMIT` and commits; its answer never comes back.
    Answer,
    /// The `COMMIT` never reaches the server, and the server never notices the client went (a
    /// half-open connection): its transaction stays open.
    Silent,
}

/// A TCP proxy between the server and PostgreSQL that cuts a connection at a transaction's
/// `COMMIT`, as a network failure would: armed with a marker (bytes the transaction sends
/// before its `COMMIT`, such as a request id its journal entries bind) and a [`Cut`], it cuts
/// the first such transaction, once per arming. Everything else passes unchanged.
#[allow(dead_code)]
pub struct CutProxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    /// Marker, cut, and how many of its transactions still pass before the one cut.
    arms: Mutex<Vec<(Vec<u8>, Cut, usize)>>,
    cuts: std::sync::atomic::AtomicUsize,
    /// The server sides of connections cut silently, kept open.
    silent: Mutex<Vec<tokio::net::tcp::OwnedWriteHalf>>,
}

/// The simple-protocol `COMMIT` and `ROLLBACK` messages (what sqlx sends to end a transaction).
const COMMIT_MESSAGE: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
const ROLLBACK_MESSAGE: &[u8] = b"Q\0\0\0\x0dROLLBACK\0";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[allow(dead_code)]
impl CutProxy {
    async fn start(upstream: String) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (st, upstream) = (st.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(&upstream).await {
                        proxy_connection(client, server, st).await;
                    }
                });
            }
        });
        CutProxy { port, state }
    }

    /// Cuts the next transaction that sends `marker` before its `COMMIT`, at that `COMMIT`.
    pub fn arm(&self, marker: &str, cut: Cut) {
        self.arm_after(marker, cut, 0);
    }

    /// As [`CutProxy::arm`], letting `pass` such transactions through first.
    pub fn arm_after(&self, marker: &str, cut: Cut, pass: usize) {
        self.state.arms.lock().unwrap().push((marker.as_bytes().to_vec(), cut, pass));
    }

    /// How many connections it has cut.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn proxy_connection(client: tokio::net::TcpStream, server: tokio::net::TcpStream, st: Arc<ProxyState>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // Set once the COMMIT to cut went to the server: its answer is dropped, the connection cut.
    let swallow = Arc::new(AtomicBool::new(false));
    let up = {
        let swallow = swallow.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            // What the connection sent since its last COMMIT.
            let mut sent: Vec<u8> = Vec::new();
            loop {
                let n = match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                sent.extend_from_slice(chunk);
                if contains(&sent, COMMIT_MESSAGE) {
                    let armed = {
                        let mut arms = st.arms.lock().unwrap();
                        match arms.iter().position(|(marker, ..)| contains(&sent, marker)) {
                            Some(i) if arms[i].2 > 0 => {
                                arms[i].2 -= 1;
                                None
                            }
                            Some(i) => Some(arms.remove(i).1),
                            None => None,
                        }
                    };
                    sent.clear();
                    match armed {
                        None => {}
                        Some(Cut::Request) => {
                            st.cuts.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Some(Cut::Silent) => {
                            st.cuts.fetch_add(1, Ordering::SeqCst);
                            st.silent.lock().unwrap().push(to_server);
                            return;
                        }
                        Some(Cut::Answer) => {
                            st.cuts.fetch_add(1, Ordering::SeqCst);
                            swallow.store(true, Ordering::SeqCst);
                            let _ = to_server.write_all(chunk).await;
                            // The other direction ends the connection once the answer came.
                            std::future::pending::<()>().await;
                        }
                    }
                } else if contains(&sent, ROLLBACK_MESSAGE) {
                    sent.clear();
                } else if sent.len() > 1 << 20 {
                    sent.drain(..sent.len() - (1 << 16));
                }
                if to_server.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if swallow.load(Ordering::SeqCst) || to_client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either direction ending ends the connection: both sockets close.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
