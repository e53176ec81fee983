//! The read caches behind the entitlement check (API keys, customers' grants; decision 0011):
//! every change made through the service shows on the very next request; changes made beside it
//! (SQL on another connection, another process) within the max age, and on PostgreSQL at once
//! through NOTIFY; nothing crosses tenants or environments; a cache hit reads nothing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{logs, Backend, TestApp};

const T: &str = "cache";
const ENV: &str = "development";

/// Runs each test on both backends with the given maximum age (milliseconds).
macro_rules! cached {
    ($max_age:expr => $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::spawn(crate::helpers::Backend::Sqlite, $max_age).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::spawn(crate::helpers::Backend::Postgres, $max_age).await).await
            }
        }
    )+};
}

async fn spawn(backend: Backend, max_age_ms: u64) -> TestApp {
    crate::helpers::spawn_app_with(backend, &[("read_cache_max_age_ms", max_age_ms.to_string())]).await
}

async fn post(app: &TestApp, tenant: &str, path: &str, body: Value, status: u16) -> Value {
    app.post(path, body).tenant(tenant, ENV).expect(status).await.json()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// A tenant selling the bundle `premium` (entitlement `hd`) and a customer who bought it.
struct Shop {
    cus: String,
    sub: String,
    sf: String,
    /// The sandbox PSP account.
    acc: String,
    price: String,
    /// The bundle `premium`.
    bundle: String,
}

async fn shop(app: &TestApp, tenant: &str) -> Shop {
    app.admin_mfa().await;
    app.create_tenant(tenant).await;
    let sf = id(&post(
        app,
        tenant,
        "/v1/storefronts",
        json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
        201,
    )
    .await);
    post(app, tenant, "/v1/entitlements", json!({"key": "hd", "name": "HD", "kind": "boolean"}), 201).await;
    let premium = id(&post(
        app,
        tenant,
        "/v1/bundles",
        json!({"key": "premium", "name": "Premium", "type": "subscription", "status": "active", "family": "video",
               "entitlements": [{"key": "hd"}]}),
        201,
    )
    .await);
    let price = id(&post(
        app,
        tenant,
        "/v1/prices",
        json!({"bundle_id": premium, "storefront_id": sf, "currency": "EUR", "amount": 999, "billing_period": {"unit": "month", "count": 1}}),
        201,
    )
    .await);
    let acc = id(&post(
        app,
        tenant,
        &format!("/v1/storefronts/{sf}/psp-accounts"),
        json!({"connector": "sandbox", "display_name": "Sandbox", "mode": "test"}),
        201,
    )
    .await);
    let mut shop =
        Shop { cus: String::new(), sub: String::new(), sf: sf.clone(), acc, price, bundle: premium };
    let (cus, sub) = buyer(app, tenant, &shop, "viewer-1").await;
    shop.cus = cus;
    shop.sub = sub;
    shop
}

/// A new customer with a card: (customer, payment method).
async fn customer(app: &TestApp, tenant: &str, shop: &Shop, external_id: &str) -> (String, String) {
    let cus =
        id(&post(app, tenant, "/v1/customers", json!({"external_id": external_id, "country": "DE"}), 201)
            .await);
    let pm = id(&post(
        app,
        tenant,
        &format!("/v1/customers/{cus}/payment-methods"),
        json!({"storefront_id": shop.sf, "psp_account_id": shop.acc, "token": "tok_sandbox_success"}),
        201,
    )
    .await);
    (cus, pm)
}

async fn buy(app: &TestApp, tenant: &str, shop: &Shop, cus: &str, pm: &str) -> String {
    let o = post(app, tenant, "/v1/offers", json!({"customer_id": cus, "storefront_id": shop.sf}), 201).await;
    let ended = check_out(app, tenant, shop, cus, pm, &o).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    ended["subscription_id"].as_str().unwrap().to_owned()
}

/// Checks out `offer`'s item for `cus` and waits for the checkout to end.
async fn check_out(app: &TestApp, tenant: &str, shop: &Shop, cus: &str, pm: &str, o: &Value) -> Value {
    let c = post(
        app,
        tenant,
        "/v1/checkouts",
        json!({"customer_id": cus, "offer_id": o["id"], "price_id": shop.price, "payment_method_id": pm}),
        202,
    )
    .await;
    for _ in 0..400 {
        let v: Value =
            app.get(&format!("/v1/checkouts/{}", id(&c))).tenant(tenant, ENV).expect(200).await.json();
        if v["status"] != "processing" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("checkout still processing");
}

async fn buyer(app: &TestApp, tenant: &str, shop: &Shop, external_id: &str) -> (String, String) {
    let (cus, pm) = customer(app, tenant, shop, external_id).await;
    let sub = buy(app, tenant, shop, &cus, &pm).await;
    (cus, sub)
}

/// A key of the tenant's development environment with the custom role `checker`
/// (`subscription.read` only), created by the administrator. Returns (key JSON, role id).
async fn checker_key(app: &TestApp, tenant: &str) -> (Value, String) {
    let role =
        post(app, tenant, "/v1/roles", json!({"name": "checker", "permissions": ["subscription.read"]}), 201)
            .await;
    let key = app.api_key(tenant, ENV, json!({"description": "checks", "role": "checker"})).await;
    (key, id(&role))
}

fn secret(key: &Value) -> String {
    key["secret"].as_str().unwrap().to_owned()
}

/// The same key id with another secret (same length, valid base32).
fn forge(k: &str) -> String {
    let mid = k.len() - 10;
    let flipped = if &k[mid..=mid] == "a" { "b" } else { "a" };
    format!("{}{flipped}{}", &k[..mid], &k[mid + 1..])
}

/// The single-entitlement check as a tenant integrates it: `x-api-key` and `x-tn`.
async fn check(app: &TestApp, key: &str, tenant: &str, cus: &str) -> (u16, String) {
    let r = app
        .get(&format!("/v1/customers/{cus}/entitlements/hd"))
        .anon()
        .header("x-api-key", key)
        .header("x-tn", tenant)
        .send()
        .await;
    let code = if r.status == 200 { String::new() } else { r.problem().code };
    (r.status, code)
}

async fn held(app: &TestApp, key: &str, cus: &str) {
    assert_eq!(check(app, key, T, cus).await, (200, String::new()));
}

async fn not_held(app: &TestApp, key: &str, cus: &str) {
    assert_eq!(check(app, key, T, cus).await, (404, "entitlement_not_found".to_owned()));
}

/// Polls the check until it answers `want`; how long that took.
async fn until(app: &TestApp, key: &str, cus: &str, want: (u16, &str), within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, code) = check(app, key, T, cus).await;
        if (status, code.as_str()) == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "still ({status}, {code}) after {within:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn subscription_op(app: &TestApp, sub: &str, op: &str, body: Value) -> Value {
    post(app, T, &format!("/v1/subscriptions/{sub}/{op}"), body, 200).await
}

// ---------------------------------------------------------------------------------------------

/// With a max age of a minute, every lifecycle change made through the service shows on the
/// very next check: pause, resume, cancel, a new checkout's grants; the end of a period needs no
/// change at all (access is decided at read time from the clock).
async fn lifecycle_changes_show_on_the_next_check(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    held(&app, &k, &shop.cus).await;
    held(&app, &k, &shop.cus).await;

    subscription_op(&app, &shop.sub, "pause", json!({})).await;
    not_held(&app, &k, &shop.cus).await;
    subscription_op(&app, &shop.sub, "resume", json!({})).await;
    held(&app, &k, &shop.cus).await;

    // A customer checked before buying holds the entitlement right after the checkout.
    let (cus2, pm2) = customer(&app, T, &shop, "viewer-2").await;
    not_held(&app, &k, &cus2).await;
    let sub2 = buy(&app, T, &shop, &cus2, &pm2).await;
    held(&app, &k, &cus2).await;
    // Canceled immediately: gone on the next check.
    subscription_op(&app, &sub2, "cancel", json!({"method": "immediate", "reason_code": "other"})).await;
    not_held(&app, &k, &cus2).await;

    // Canceled at the period's end: held until then, by the clock alone (the administrator's
    // session does not survive the clock moving; the checks' key does).
    subscription_op(&app, &shop.sub, "cancel", json!({"method": "end_of_period", "reason_code": "other"}))
        .await;
    held(&app, &k, &shop.cus).await;
    app.ctx.clock.advance(chrono::Duration::days(40));
    not_held(&app, &k, &shop.cus).await;
    // The worker expires it: still not held.
    app.subscription_tick().await;
    not_held(&app, &k, &shop.cus).await;
}

/// The secret is verified on every request, cached or not; a revoked key, a rotated-out secret,
/// a role that lost the permission and a suspended tenant are refused on the very next request.
async fn key_changes_apply_on_the_next_request(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, role) = checker_key(&app, T).await;
    let k = secret(&key);
    held(&app, &k, &shop.cus).await;

    // Same key id, another secret: refused although the key is cached.
    assert_eq!(check(&app, &forge(&k), T, &shop.cus).await.0, 401);
    held(&app, &k, &shop.cus).await;

    // The role loses subscription.read, then gets it back.
    app.patch(&format!("/v1/roles/{role}"), json!({"permissions": ["customer.read"]}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    assert_eq!(check(&app, &k, T, &shop.cus).await.0, 403);
    app.patch(&format!("/v1/roles/{role}"), json!({"permissions": ["subscription.read"]}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    held(&app, &k, &shop.cus).await;

    // Rotation without overlap: the old secret is refused at once, the new one works.
    let rotated: Value = app
        .post(&format!("/v1/api-keys/{}/rotate", id(&key)), json!({"overlap_seconds": 0}))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json();
    assert_eq!(check(&app, &k, T, &shop.cus).await.0, 401);
    let k2 = secret(&rotated);
    held(&app, &k2, &shop.cus).await;

    // The tenant suspended, then active again.
    let tid = app.get("/v1/tenant").tenant(T, ENV).expect(200).await.json::<Value>()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.patch(&format!("/v1/platform/tenants/{tid}"), json!({"status": "suspended"})).expect(200).await;
    assert_eq!(check(&app, &k2, T, &shop.cus).await, (403, "tenant_suspended".to_owned()));
    app.patch(&format!("/v1/platform/tenants/{tid}"), json!({"status": "active"})).expect(200).await;
    held(&app, &k2, &shop.cus).await;

    // Revoked: refused on the next request.
    app.post(&format!("/v1/api-keys/{}/revoke", id(&key)), json!({})).tenant(T, ENV).expect(200).await;
    assert_eq!(check(&app, &k2, T, &shop.cus).await.0, 401);
}

/// Many requests presenting one key whose cached entry expired read it from the database once:
/// one leads the read, the others wait for it and use what it cached, each still checking its
/// own secret (forged ones are refused in the same burst). A revocation is seen by the next
/// burst; on PostgreSQL a read that fails fails its waiters' requests too, and the next request
/// after the failure reads the key again.
async fn an_expired_key_is_read_once_by_concurrent_requests(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    let forged = forge(&k);
    // The first use stamps the key's last use, which evicts it; the second caches it.
    held(&app, &k, &shop.cus).await;
    held(&app, &k, &shop.cus).await;
    let expire = || tokio::time::sleep(Duration::from_millis(MAX_AGE_MS + 100));
    let burst = |n: usize| {
        let (app, k, forged, cus) = (&app, &k, &forged, &shop.cus);
        futures::future::join_all((0..n).map(move |i| async move {
            let key = if i % 4 == 3 { forged } else { k };
            (i % 4 == 3, check(app, key, T, cus).await)
        }))
    };
    for _ in 0..2 {
        expire().await;
        let before = app.ctx.db.api_key_loads();
        for (is_forged, answer) in burst(16).await {
            let want = if is_forged { (401, "unauthenticated") } else { (200, "") };
            assert_eq!((answer.0, answer.1.as_str()), want);
        }
        assert_eq!(app.ctx.db.api_key_loads() - before, 1, "one read for the whole burst");
    }

    if app.backend == Backend::Postgres {
        expire().await;
        app.raw_exec("REVOKE SELECT ON api_keys FROM azotte_app").await.unwrap();
        for (_, answer) in burst(8).await {
            assert_eq!(answer.0, 500, "the read failed");
        }
        app.raw_exec("GRANT SELECT ON api_keys TO azotte_app").await.unwrap();
        held(&app, &k, &shop.cus).await;
    }

    app.post(&format!("/v1/api-keys/{}/revoke", id(&key)), json!({})).tenant(T, ENV).expect(200).await;
    for (is_forged, answer) in burst(8).await {
        let want = if is_forged { "unauthenticated" } else { "api_key_revoked" };
        assert_eq!((answer.0, answer.1.as_str()), (401, want));
    }
}

/// Many checks of one customer whose cached grants expired read the grants once: one request
/// leads the read, the others wait for it and answer from what it cached. A customer that does
/// not exist is never cached, so each check of it reads for itself.
async fn expired_grants_are_read_once_by_concurrent_checks(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    // The first use stamps the key's last use (a change, which evicts); the second caches.
    held(&app, &k, &shop.cus).await;
    held(&app, &k, &shop.cus).await;
    let burst = |n: usize, cus: &str| {
        let (app, k, cus) = (&app, &k, cus.to_owned());
        futures::future::join_all((0..n).map(move |_| {
            let cus = cus.clone();
            async move { check(app, k, T, &cus).await }
        }))
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(MAX_AGE_MS + 100)).await;
        let before = app.ctx.db.grant_loads();
        for answer in burst(16, &shop.cus).await {
            assert_eq!(answer, (200, String::new()));
        }
        assert_eq!(app.ctx.db.grant_loads() - before, 1, "one read for the whole burst");
    }
    let before = app.ctx.db.grant_loads();
    for answer in burst(8, "cus_0190c0de0000700080000000000000aa").await {
        assert_eq!(answer.0, 404, "{answer:?}");
    }
    assert_eq!(app.ctx.db.grant_loads() - before, 8, "an unknown customer is read by each check");
}

/// A past-due customer keeps access during grace as the storefront's dunning policy says; the
/// policy is cached decoded with the customer's grants, and a change of it through the service
/// shows on the very next check.
async fn a_changed_dunning_policy_shows_on_the_next_check(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    // The renewal failed (by SQL, before the customer was ever checked, so nothing is cached):
    // past due, within grace. Loaded, then served from the cache.
    app.raw_exec(&format!("UPDATE subscriptions SET status = 'past_due' WHERE id = '{}'", shop.sub))
        .await
        .unwrap();
    held(&app, &k, &shop.cus).await;
    held(&app, &k, &shop.cus).await;
    let dunning = |during_grace: bool| json!({"dunning": {"access_during_grace": during_grace}});
    let storefront = format!("/v1/storefronts/{}", shop.sf);
    app.patch(&storefront, dunning(false)).tenant(T, ENV).expect(200).await;
    not_held(&app, &k, &shop.cus).await;
    not_held(&app, &k, &shop.cus).await;
    app.patch(&storefront, dunning(true)).tenant(T, ENV).expect(200).await;
    held(&app, &k, &shop.cus).await;
}

/// Cache entries are per tenant and environment: another tenant's key, or this tenant's key of
/// another environment, never reaches what the first one cached.
async fn nothing_crosses_tenants_or_environments(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    held(&app, &k, &shop.cus).await;

    app.create_tenant("other").await;
    let (other, _) = checker_key(&app, "other").await;
    let o = secret(&other);
    // The other tenant's key, with its own x-tn: the first tenant's customer does not exist there.
    assert_eq!(check(&app, &o, "other", &shop.cus).await, (404, "customer_not_found".to_owned()));
    // With the first tenant's x-tn: not its key. And the first key with the other x-tn.
    assert_eq!(check(&app, &o, T, &shop.cus).await.0, 403);
    assert_eq!(check(&app, &k, "other", &shop.cus).await.0, 403);
    held(&app, &k, &shop.cus).await;

    // A production key of the same tenant: the development customer does not exist there.
    let prod = app
        .api_key(T, "production", json!({"description": "prod checks", "permissions": ["subscription.read"]}))
        .await;
    assert_eq!(check(&app, &secret(&prod), T, &shop.cus).await, (404, "customer_not_found".to_owned()));
    held(&app, &k, &shop.cus).await;
}

/// Changes made beside the service, by SQL on another connection: on PostgreSQL the triggers'
/// NOTIFY evicts at once (the max age there is a minute); on SQLite the other connection's writes
/// are not seen by this process's hook, so the cached answer stands until the max age (2 s),
/// which also shows that a cache hit reads nothing.
async fn changes_beside_the_service(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    let (cus2, _) = buyer(&app, T, &shop, "viewer-2").await;
    held(&app, &k, &cus2).await;
    let loaded = Instant::now();
    held(&app, &k, &shop.cus).await;

    let revoke = format!("UPDATE subscriptions SET status = 'expired' WHERE customer_id = '{}'", shop.cus);
    match app.backend {
        Backend::Postgres => {
            app.raw_exec(&revoke).await.unwrap();
            let took =
                until(&app, &k, &shop.cus, (404, "entitlement_not_found"), Duration::from_secs(5)).await;
            assert!(took < Duration::from_secs(5), "{took:?}");
            // A key revoked by SQL: refused promptly too.
            app.raw_exec(&format!("UPDATE api_keys SET revoked_at = now() WHERE id = '{}'", id(&key)))
                .await
                .unwrap();
            until(&app, &k, &cus2, (401, "api_key_revoked"), Duration::from_secs(5)).await;
        }
        Backend::Sqlite => {
            app.raw_exec(&revoke).await.unwrap();
            let cached = check(&app, &k, T, &shop.cus).await;
            // Only meaningful while the entry is younger than the max age (a slow machine may
            // take longer than that to get here).
            if loaded.elapsed() < Duration::from_millis(1500) {
                assert_eq!(cached, (200, String::new()), "served from the cache, not read");
            }
            until(&app, &k, &shop.cus, (404, "entitlement_not_found"), Duration::from_secs(5)).await;
            let age = loaded.elapsed();
            assert!(age < Duration::from_secs(5), "{age:?}");
        }
    }
}

/// The catalog rows an offer reads and a checkout's job re-reads (storefront, what it offers,
/// bundle with its entitlements, price, its versions, the environment's entitlements) are
/// cached as well: a second purchase reads none of them, and a change through the service shows
/// on the very next offer and checkout — an entitlement added to the bundle is granted, an
/// archived bundle fails a checkout of an offer made before and is offered no more. A checkout
/// is never refused on cached rows alone (they are read again first), and on PostgreSQL a
/// change by SQL beside the service is seen at once (NOTIFY).
async fn catalog_changes_show_on_the_next_checkout(app: TestApp) {
    let shop = shop(&app, T).await;
    let loads = app.ctx.db.catalog_loads();
    assert!(loads >= 5, "the first purchase read the catalog: {loads}");
    buyer(&app, T, &shop, "viewer-2").await;
    assert_eq!(app.ctx.db.catalog_loads(), loads, "a second purchase reads no catalog row");

    post(&app, T, "/v1/entitlements", json!({"key": "uhd", "name": "UHD", "kind": "boolean"}), 201).await;
    app.patch(
        &format!("/v1/bundles/{}", shop.bundle),
        json!({"entitlements": [{"key": "hd"}, {"key": "uhd"}]}),
    )
    .tenant(T, ENV)
    .expect(200)
    .await;
    let (cus3, _) = buyer(&app, T, &shop, "viewer-3").await;
    let granted: Value =
        app.get(&format!("/v1/customers/{cus3}/entitlements")).tenant(T, ENV).expect(200).await.json();
    let mut keys: Vec<&str> =
        granted["data"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["hd", "uhd"], "{granted}");

    let (cus4, pm4) = customer(&app, T, &shop, "viewer-4").await;
    let o = post(&app, T, "/v1/offers", json!({"customer_id": cus4, "storefront_id": shop.sf}), 201).await;
    let (cus5, pm5) = customer(&app, T, &shop, "viewer-5").await;
    let o5 = post(&app, T, "/v1/offers", json!({"customer_id": cus5, "storefront_id": shop.sf}), 201).await;
    app.patch(&format!("/v1/bundles/{}", shop.bundle), json!({"status": "archived"}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    let failed = check_out(&app, T, &shop, &cus4, &pm4, &o).await;
    assert_eq!(
        (&failed["status"], &failed["failure_code"]),
        (&json!("failed"), &json!("bundle_not_available"))
    );
    // Nor is it offered any more.
    let o = post(&app, T, "/v1/offers", json!({"customer_id": cus4, "storefront_id": shop.sf}), 201).await;
    assert_eq!(o["items"], json!([]), "{o}");

    // Back to active by SQL beside the service. On SQLite this process's cache does not hear of
    // it (another connection's write) and still holds the archived bundle, yet a checkout is
    // never refused on cached rows: they are read again first, and it succeeds.
    app.raw_exec(&format!("UPDATE bundles SET status = 'active' WHERE id = '{}'", shop.bundle))
        .await
        .unwrap();
    let ended = check_out(&app, T, &shop, &cus5, &pm5, &o5).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    if app.backend == Backend::Postgres {
        // On PostgreSQL the trigger's notification evicts the archived bundle the last offer
        // cached (within the max age of a minute nothing else would): it is offered again.
        let started = Instant::now();
        loop {
            let o = post(&app, T, "/v1/offers", json!({"customer_id": cus4, "storefront_id": shop.sf}), 201)
                .await;
            if o["items"].as_array().is_some_and(|i| !i.is_empty()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "still not offered: {o}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// PostgreSQL: with the privileges to read grants and keys taken from the service's role, cached
/// checks still answer (no round trip) while an uncached one fails; and when the LISTEN
/// connection is lost, the cache is dropped rather than left to miss changes.
async fn postgres_hits_read_nothing_and_a_lost_listener_drops_the_cache(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    let (cus2, _) = buyer(&app, T, &shop, "viewer-2").await;
    // The first use stamps the key's last use, which evicts it once more when the stamp's
    // notification arrives; then it stays.
    held(&app, &k, &shop.cus).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    held(&app, &k, &shop.cus).await;

    let tables = "entitlement_grants, api_keys, api_key_directory";
    app.raw_exec(&format!("REVOKE SELECT ON {tables} FROM azotte_app")).await.unwrap();
    for _ in 0..20 {
        held(&app, &k, &shop.cus).await;
    }
    assert_eq!(check(&app, &k, T, &cus2).await.0, 500, "an uncached customer needs the database");
    app.raw_exec(&format!("GRANT SELECT ON {tables} TO azotte_app")).await.unwrap();
    held(&app, &k, &cus2).await;

    // The listener's connection is killed; a change made meanwhile is not missed.
    let killed = app
        .raw_strings(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
             WHERE query = 'LISTEN \"azotte_cache\"' AND datname = current_database()",
        )
        .await;
    assert_eq!(killed, ["true"]);
    app.raw_exec(&format!("UPDATE subscriptions SET status = 'expired' WHERE customer_id = '{}'", shop.cus))
        .await
        .unwrap();
    until(&app, &k, &shop.cus, (404, "entitlement_not_found"), Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs().contains("LISTEN connection") {
        assert!(Instant::now() < deadline, "no warning about the lost listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back to normal: a change through the service shows on the next check.
    held(&app, &k, &cus2).await;
    app.raw_exec(&format!("UPDATE subscriptions SET status = 'expired' WHERE customer_id = '{cus2}'"))
        .await
        .unwrap();
    until(&app, &k, &cus2, (404, "entitlement_not_found"), Duration::from_secs(5)).await;
}

/// `read_cache_max_age_ms = 0`: no caching; SQL on another connection shows at once.
async fn max_age_zero_caches_nothing(app: TestApp) {
    let shop = shop(&app, T).await;
    let (key, _) = checker_key(&app, T).await;
    let k = secret(&key);
    held(&app, &k, &shop.cus).await;
    app.raw_exec(&format!("UPDATE subscriptions SET status = 'expired' WHERE customer_id = '{}'", shop.cus))
        .await
        .unwrap();
    not_held(&app, &k, &shop.cus).await;
}

cached!(60_000 =>
    catalog_changes_show_on_the_next_checkout,
    lifecycle_changes_show_on_the_next_check,
    key_changes_apply_on_the_next_request,
    nothing_crosses_tenants_or_environments
);
mod changes_beside_the_service {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = super::spawn(crate::helpers::Backend::Sqlite, 2_000).await;
        super::changes_beside_the_service(app).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let app = super::spawn(crate::helpers::Backend::Postgres, 60_000).await;
        super::changes_beside_the_service(app).await
    }
}
cached!(0 => max_age_zero_caches_nothing);
/// Long enough for a burst of checks to run within it on a busy machine.
const MAX_AGE_MS: u64 = 2_000;
cached!(super::MAX_AGE_MS =>
    an_expired_key_is_read_once_by_concurrent_requests,
    expired_grants_are_read_once_by_concurrent_checks,
    a_changed_dunning_policy_shows_on_the_next_check
);

mod postgres_hits_read_nothing {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let app = super::spawn(crate::helpers::Backend::Postgres, 60_000).await;
        super::postgres_hits_read_nothing_and_a_lost_listener_drops_the_cache(app).await
    }
}
