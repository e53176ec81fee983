//! Envelope encryption: tenant data keys under the platform master key, AAD binding, and
//! `azotte keys rotate-master` end to end.

use std::process::Command;
use std::sync::Arc;

use azotte_crypto::aead::Key;
use azotte_domain::Clock;
use azotte_service::mail::MemoryMailer;
use azotte_service::vault::{self, master_key_id};
use azotte_service::{Ctx, ServiceError};
use azotte_store::TenantScope;
use serde_json::json;

use crate::both;
use crate::helpers::{test_config, TestApp, TEST_MASTER_KEY};

const KEY_B: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const KEY_C: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";

fn kid_of(hex: &str) -> String {
    master_key_id(&Key::from_hex(hex).unwrap())
}

/// The administrator's scope inside a tenant (created if missing), through `ctx`.
async fn scope(app: &TestApp, ctx: &Ctx, slug: &str) -> TenantScope {
    if azotte_store::auth::resolve_tenant(&ctx.db, slug).await.unwrap().is_none() {
        app.create_tenant(slug).await;
    }
    azotte_service::auth::authenticate_tenant(ctx, &app.admin_token, Some(slug), Some("development"))
        .await
        .unwrap()
}

/// A second process's context on the same database: own configuration, empty key cache.
async fn other_ctx(app: &TestApp, extra: &[(&'static str, String)]) -> Ctx {
    let config = test_config(&app.db_url, extra);
    azotte::app::context(&config, Clock::system(), Arc::new(MemoryMailer::default())).await.unwrap()
}

/// Seals `plaintext` under the tenant's key in a journaled transaction; returns the ciphertext.
async fn seal(ctx: &Ctx, scope: &TenantScope, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut tx = ctx.db.tenant_tx(scope).await.unwrap();
    tx.action(ctx.clock.now(), "test.seal", None, json!({})).await.unwrap();
    let key = vault::tenant_key(ctx, &mut tx).await.unwrap();
    let ct = vault::encrypt(&key, plaintext, aad).unwrap();
    tx.commit().await.unwrap();
    ct
}

async fn open(ctx: &Ctx, scope: &TenantScope, ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let mut tx = ctx.db.tenant_read_tx(scope).await.unwrap();
    let r = vault::open(ctx, &mut tx, ct, aad).await.map(|p| p.expose().clone());
    tx.commit().await.unwrap();
    r
}

/// The code of an `Undecryptable` error, and its message.
fn undecryptable<T: std::fmt::Debug>(r: Result<T, ServiceError>) -> (&'static str, String) {
    match r {
        Err(ServiceError::Undecryptable { code, message }) => (code, message),
        other => panic!("expected Undecryptable, got {other:?}"),
    }
}

async fn tenant_id(app: &TestApp, slug: &str) -> String {
    azotte_store::auth::resolve_tenant(&app.ctx.db, slug).await.unwrap().unwrap().id.to_string()
}

both!(
    one_data_key_per_tenant_even_under_concurrent_first_use,
    a_key_created_by_a_rolled_back_transaction_is_never_used,
    round_trip_and_aad_binding,
    a_wrapped_key_copied_to_another_row_does_not_unwrap,
    rotate_master_end_to_end
);

/// The process keeps the tenant's active key once it has read it from a committed row, so later
/// encryptions read nothing; a key created by a transaction that rolled back is never taken for
/// it: the next use creates and commits another, and everything sealed opens in another process.
async fn a_key_created_by_a_rolled_back_transaction_is_never_used(app: TestApp) {
    let scope = scope(&app, &app.ctx, "rolled-back").await;
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(app.ctx.clock.now(), "test.first_use", None, json!({})).await.unwrap();
    let lost = vault::tenant_key(&app.ctx, &mut tx).await.unwrap().kid().to_owned();
    drop(tx);
    // Creates the key; then read from its committed row; then from memory.
    let sealed = [
        seal(&app.ctx, &scope, b"first", b"x").await,
        seal(&app.ctx, &scope, b"second", b"x").await,
        seal(&app.ctx, &scope, b"third", b"x").await,
    ];
    let id = tenant_id(&app, "rolled-back").await;
    let rows = app.raw_strings(&format!("SELECT kid FROM tenant_keys WHERE tenant_id = '{id}'")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_ne!(rows[0], lost, "the rolled-back key is gone");
    let ctx2 = other_ctx(&app, &[]).await;
    for (ct, plain) in sealed.iter().zip([&b"first"[..], b"second", b"third"]) {
        assert_eq!(open(&ctx2, &scope, ct, b"x").await.unwrap(), plain);
    }
}

async fn one_data_key_per_tenant_even_under_concurrent_first_use(app: TestApp) {
    let scope = scope(&app, &app.ctx, "race").await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            // Separate contexts: no shared cache, as in separate processes.
            let (scope, ctx) = (scope.clone(), app.ctx.clone());
            tokio::spawn(async move {
                let mut tx = ctx.db.tenant_tx(&scope).await.unwrap();
                tx.action(ctx.clock.now(), "test.first_use", None, json!({})).await.unwrap();
                let key = vault::tenant_key(&ctx, &mut tx).await.unwrap();
                tx.commit().await.unwrap();
                key.kid().to_owned()
            })
        })
        .collect();
    let mut kids = Vec::new();
    for t in tasks {
        kids.push(t.await.unwrap());
    }
    kids.dedup();
    assert_eq!(kids.len(), 1, "every first use got the same key: {kids:?}");
    let id = tenant_id(&app, "race").await;
    let rows = app.raw_strings(&format!("SELECT kid FROM tenant_keys WHERE tenant_id = '{id}'")).await;
    assert_eq!(rows, kids, "one row");
    let masters = app.raw_strings("SELECT master_kid FROM tenant_keys").await;
    assert_eq!(masters, [kid_of(TEST_MASTER_KEY)]);
    // The creation is journaled in the tenant, caused by the caller's action.
    let created = app
        .raw_strings(&format!(
            "SELECT resource_id FROM journal_entries WHERE tenant_id = '{id}' AND type = 'tenant_key.created'"
        ))
        .await;
    assert_eq!(created, kids);
    // Another tenant gets its own key.
    let other = scope_key(&app, "race-other").await;
    assert_ne!(other, kids[0]);
}

async fn scope_key(app: &TestApp, slug: &str) -> String {
    let scope = scope(app, &app.ctx, slug).await;
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(app.ctx.clock.now(), "test.key", None, json!({})).await.unwrap();
    let key = vault::tenant_key(&app.ctx, &mut tx).await.unwrap();
    tx.commit().await.unwrap();
    key.kid().to_owned()
}

async fn round_trip_and_aad_binding(app: TestApp) {
    let a = scope(&app, &app.ctx, "vault-a").await;
    let b = scope(&app, &app.ctx, "vault-b").await;
    let aad = format!("{}/sf_1/psp_1/api_secret", a.tenant_id());
    let ct = seal(&app.ctx, &a, b"sk_test_4eC39HqLyjWDarjtT1zdp7dc", aad.as_bytes()).await;
    assert!(!String::from_utf8_lossy(&ct).contains("sk_test"), "not in the clear");
    assert_eq!(open(&app.ctx, &a, &ct, aad.as_bytes()).await.unwrap(), b"sk_test_4eC39HqLyjWDarjtT1zdp7dc");

    // Another process (empty cache) reads it too.
    let ctx2 = other_ctx(&app, &[]).await;
    assert_eq!(open(&ctx2, &a, &ct, aad.as_bytes()).await.unwrap(), b"sk_test_4eC39HqLyjWDarjtT1zdp7dc");

    // Other associated data (another row), another tenant, altered bytes: reported, not ignored.
    let other_row = format!("{}/sf_2/psp_1/api_secret", a.tenant_id());
    let (code, _) = undecryptable(open(&app.ctx, &a, &ct, other_row.as_bytes()).await);
    assert_eq!(code, "credential_undecryptable");
    let (code, msg) = undecryptable(open(&app.ctx, &b, &ct, aad.as_bytes()).await);
    assert_eq!(code, "credential_undecryptable");
    assert!(msg.contains("does not have"), "{msg}");
    let mut altered = ct.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert_eq!(
        undecryptable(open(&app.ctx, &a, &altered, aad.as_bytes()).await).0,
        "credential_undecryptable"
    );
    assert_eq!(
        undecryptable(open(&app.ctx, &a, b"garbage", aad.as_bytes()).await).0,
        "credential_undecryptable"
    );
}

async fn a_wrapped_key_copied_to_another_row_does_not_unwrap(app: TestApp) {
    let a = scope(&app, &app.ctx, "copy-a").await;
    let b = scope(&app, &app.ctx, "copy-b").await;
    let c = scope(&app, &app.ctx, "copy-c").await;
    seal(&app.ctx, &a, b"a's secret", b"x").await;
    let ct_b = seal(&app.ctx, &b, b"b's secret", b"x").await;
    let (ida, idb, idc) = (a.tenant_id().to_string(), b.tenant_id().to_string(), c.tenant_id().to_string());

    // B's row gets A's wrapped key; C gets a copy of A's whole row.
    app.raw_exec(&format!(
        "UPDATE tenant_keys SET wrapped_key = (SELECT wrapped_key FROM tenant_keys WHERE tenant_id = '{ida}') \
         WHERE tenant_id = '{idb}'"
    ))
    .await
    .unwrap();
    app.raw_exec(&format!(
        "INSERT INTO tenant_keys (tenant_id, kid, wrapped_key, master_kid, created_at) \
         SELECT '{idc}', kid, wrapped_key, master_kid, created_at FROM tenant_keys WHERE tenant_id = '{ida}'"
    ))
    .await
    .unwrap();

    let ctx2 = other_ctx(&app, &[]).await;
    let (code, msg) = undecryptable(open(&ctx2, &b, &ct_b, b"x").await);
    assert_eq!(code, "tenant_key_undecryptable");
    assert!(msg.contains(&idb), "{msg}");
    let mut tx = ctx2.db.tenant_tx(&c).await.unwrap();
    let (code, _) = undecryptable(vault::tenant_key(&ctx2, &mut tx).await);
    assert_eq!(code, "tenant_key_undecryptable");
    drop(tx);
    // A itself is unharmed.
    let mut tx = ctx2.db.tenant_read_tx(&a).await.unwrap();
    vault::tenant_key(&ctx2, &mut tx).await.unwrap();
}

/// Runs the real binary against the app's database with the given master keys.
fn rotate_master(app: &TestApp, master: &str, previous: &str) -> (Option<i32>, String, String) {
    let out = azotte()
        .args(["keys", "rotate-master"])
        .env("AZOTTE_DATABASE_URL", &app.db_url)
        .env("AZOTTE_SECRET_KEY", "5e".repeat(32))
        .env("AZOTTE_MASTER_KEY", master)
        .env("AZOTTE_PREVIOUS_MASTER_KEYS", previous)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

async fn rotate_master_end_to_end(app: TestApp) {
    // Key A (the test servers' master key) wraps two tenants' keys; a third tenant has none.
    let (a_id, b_id) = (kid_of(TEST_MASTER_KEY), kid_of(KEY_B));
    let mut sealed = Vec::new();
    for slug in ["rot-1", "rot-2"] {
        let s = scope(&app, &app.ctx, slug).await;
        let aad = format!("{}/{slug}", s.tenant_id());
        let ct = seal(&app.ctx, &s, slug.as_bytes(), aad.as_bytes()).await;
        sealed.push((slug, ct, aad));
    }
    scope(&app, &app.ctx, "rot-none").await;
    assert_eq!(app.raw_strings("SELECT master_kid FROM tenant_keys").await, [a_id.clone(), a_id.clone()]);

    // B configured without A: nothing can be re-wrapped; each failure is reported and journaled.
    let (code, out, err) = rotate_master(&app, KEY_B, "");
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(out.contains("rewrapped: 0") && out.contains("failed: 2"), "{out}");
    assert!(out.contains(&format!("master key {a_id}, which is not configured")), "{out}");
    assert!(err.contains("could not be re-wrapped"), "{err}");
    assert_eq!(app.raw_strings("SELECT master_kid FROM tenant_keys").await, [a_id.clone(), a_id.clone()]);

    // B active, A previous.
    let (code, out, err) = rotate_master(&app, KEY_B, TEST_MASTER_KEY);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains(&format!("active master key: {b_id}")), "{out}");
    assert!(
        out.contains("rewrapped: 2") && out.contains("already current: 0") && out.contains("failed: 0"),
        "{out}"
    );
    assert_eq!(app.raw_strings("SELECT master_kid FROM tenant_keys").await, [b_id.clone(), b_id.clone()]);
    let rewrapped_at = app.raw_strings("SELECT kid FROM tenant_keys WHERE rewrapped_at IS NOT NULL").await;
    assert_eq!(rewrapped_at.len(), 2);

    // Only B configured: the old ciphertexts (untouched) still decrypt.
    let only_b = other_ctx(&app, &[("master_key", KEY_B.to_owned())]).await;
    for (slug, ct, aad) in &sealed {
        let s = scope(&app, &only_b, slug).await;
        assert_eq!(open(&only_b, &s, ct, aad.as_bytes()).await.unwrap(), slug.as_bytes());
    }
    // A process with neither key says which master key it lacks.
    let only_c = other_ctx(&app, &[("master_key", KEY_C.to_owned())]).await;
    let (slug, ct, aad) = &sealed[0];
    let s = scope(&app, &only_c, slug).await;
    let (code, msg) = undecryptable(open(&only_c, &s, ct, aad.as_bytes()).await);
    assert_eq!(code, "master_key_missing");
    assert!(msg.contains(&b_id) && msg.contains("previous_master_keys"), "{msg}");

    // A second run has nothing to do.
    let (code, out, err) = rotate_master(&app, KEY_B, TEST_MASTER_KEY);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("rewrapped: 0") && out.contains("already current: 2") && out.contains("failed: 0"),
        "{out}"
    );

    // Journaled in the platform journal: two failures, then action and outcome per key, each
    // run under one correlation id.
    let types = app
        .raw_strings(
            "SELECT type FROM journal_entries WHERE tenant_id = 'platform' AND type LIKE 'tenant_key.%' ORDER BY id",
        )
        .await;
    let count = |t: &str| types.iter().filter(|x| *x == t).count();
    assert_eq!(
        (count("tenant_key.rewrap_failed"), count("tenant_key.rewrap"), count("tenant_key.rewrapped")),
        (2, 2, 2),
        "{types:?}"
    );
    let correlations = app
        .raw_strings(
            "SELECT DISTINCT correlation_id FROM journal_entries WHERE tenant_id = 'platform' \
             AND type IN ('tenant_key.rewrap', 'tenant_key.rewrapped')",
        )
        .await;
    assert_eq!(correlations.len(), 1, "{correlations:?}");
    let bodies = app
        .raw_strings("SELECT CAST(body AS TEXT) FROM journal_entries WHERE tenant_id = 'platform' AND type = 'tenant_key.rewrapped'")
        .await;
    assert!(bodies.iter().all(|b| b.contains(&a_id) && b.contains(&b_id)), "{bodies:?}");
}

fn azotte() -> Command {
    // A scratch working directory, so a generated ./azotte-data/ never lands in the source tree.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = std::env::temp_dir().join(format!("azotte-vault-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_azotte"));
    c.current_dir(&scratch);
    for (k, _) in std::env::vars() {
        if k.starts_with("AZOTTE_") {
            c.env_remove(k);
        }
    }
    c.env("AZOTTE_LOG_FORMAT", "json");
    c
}

#[test]
fn production_without_a_master_key_refuses_to_start() {
    let out = azotte()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("AZOTTE_MODE", "production")
        .env("AZOTTE_SECRET_KEY", "5e".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid configuration: master_key (from defaults): required when mode = production")
            && err.contains("AZOTTE_MASTER_KEY_FILE"),
        "{err}"
    );
}

#[test]
fn a_generated_master_key_is_owner_only_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        azotte()
            .arg("init")
            .current_dir(dir.path())
            .env("AZOTTE_SECRET_KEY", "5e".repeat(32))
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logs = String::from_utf8_lossy(&out.stderr);
    let path = dir.path().join("azotte-data/master.key");
    assert!(logs.contains("generated the platform master key") && logs.contains("back it up"), "{logs}");
    assert!(logs.contains("azotte-data/master.key"), "the warning says where: {logs}");
    let text = std::fs::read_to_string(&path).unwrap();
    let key = Key::from_hex(text.trim()).unwrap();
    assert!(logs.contains(&master_key_id(&key)), "{logs}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // The next start reads it instead of generating another.
    let out = run();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("generated the platform master key"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}
