//! `Idempotency-Key` on tenant POST routes: replays, reuse, concurrency (one charge at the PSP),
//! scoping, expiry and purge, sealing of the kept body, and what is never kept.

use crate::both;
use crate::helpers::{spawn_app_through_cut_proxy, Cut, Resp, TestApp};
use serde_json::{json, Value};

const T: &str = "idem";
const ENV: &str = "development";
const EMAIL: &str = "Replay.Person@Example.org";
const KEY: &str = "Idempotency-Key";

/// A customer whose email (personal data, in the response) starts with the external id.
fn customer(external_id: &str) -> Value {
    json!({"external_id": external_id, "email": format!("{external_id}.{EMAIL}"), "first_name": "Ida"})
}

async fn create_customer(app: &TestApp, key: &str, body: Value) -> Resp {
    app.post("/v1/customers", body).tenant(T, ENV).header(KEY, key).send().await
}

async fn count(app: &TestApp, sql: &str) -> usize {
    app.raw_strings(sql).await.len()
}

async fn records(app: &TestApp) -> Vec<String> {
    app.raw_strings("SELECT idempotency_key FROM idempotency_keys ORDER BY idempotency_key").await
}

fn replayed(r: &Resp) -> bool {
    r.header("idempotent-replayed") == Some("true")
}

/// An API key of the tenant environment (its secret): unlike a session, it outlives a clock
/// moved by a day.
async fn api_key(app: &TestApp, tenant: &str, env: &str, name: &str) -> String {
    let k = app.api_key(tenant, env, json!({"description": name, "role": "service_account"})).await;
    k["secret"].as_str().unwrap().to_owned()
}

async fn a_retry_replays_the_first_response_and_creates_nothing(app: TestApp) {
    app.create_tenant(T).await;
    let first = create_customer(&app, "k-1", customer("crm-1")).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert!(!replayed(&first));
    for _ in 0..2 {
        let again = create_customer(&app, "k-1", customer("crm-1")).await;
        assert_eq!(again.status, 201);
        assert!(replayed(&again), "marked as a replay");
        assert_eq!(again.body, first.body, "the same body, byte for byte");
        assert_eq!(again.header("content-type"), first.header("content-type"));
    }
    let list: Value = app.get("/v1/customers").tenant(T, ENV).expect(200).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "one customer");
    assert_eq!(count(&app, "SELECT id FROM journal_entries WHERE type = 'customer.create'").await, 1);

    // The kept body holds the decrypted email, sealed: a copy of the database does not show it.
    let email = format!("crm-1.{EMAIL}").to_lowercase();
    assert!(first.text().contains(&email));
    assert_eq!(records(&app).await, ["k-1"]);
    let dump = app.raw_dump().await;
    assert!(!dump.to_lowercase().contains(&email), "the email is nowhere in the database");
    let sealed = app.raw_bytes("SELECT response_body FROM idempotency_keys").await;
    assert!(sealed.starts_with(b"azv1"), "sealed under the tenant data key");

    // The same key with another body, path or query is refused and changes nothing.
    let other = [
        ("/v1/customers", customer("crm-2")),
        ("/v1/customers?x=1", customer("crm-1")),
        ("/v1/storefronts", customer("crm-1")),
    ];
    for (path, body) in other {
        let r = app.post(path, body).tenant(T, ENV).header(KEY, "k-1").expect(422).await;
        let p = r.problem();
        assert_eq!(p.code, "idempotency_key_reused", "{path}");
        assert_eq!(p.errors[0].field, KEY);
    }
    let list: Value = app.get("/v1/customers").tenant(T, ENV).expect(200).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Without the key, the same request runs again (and meets the existing customer).
    app.post("/v1/customers", customer("crm-1")).tenant(T, ENV).expect(409).await;
}

async fn another_credential_cannot_use_the_key(app: TestApp) {
    app.create_tenant(T).await;
    app.admin_mfa().await;
    let (a, b) = (api_key(&app, T, ENV, "A").await, api_key(&app, T, ENV, "B").await);
    let send = |token: String| {
        app.post("/v1/customers", customer("crm-1"))
            .token(&token)
            .header("x-tn", T)
            .header(KEY, "shared")
            .send()
    };
    let first = send(a.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let by_b = send(b).await;
    assert_eq!(by_b.status, 422);
    assert_eq!(by_b.problem().code, "idempotency_key_reused");
    let by_admin = create_customer(&app, "shared", customer("crm-1")).await;
    assert_eq!(by_admin.problem().code, "idempotency_key_reused");
    let again = send(a).await;
    assert!(replayed(&again) && again.body == first.body);
}

async fn keys_are_per_tenant_and_environment(app: TestApp) {
    app.create_tenant(T).await;
    app.create_tenant("idem-other").await;
    let mut ids = Vec::new();
    for (tenant, env) in [(T, ENV), (T, "staging"), ("idem-other", ENV)] {
        let r =
            app.post("/v1/customers", customer("crm-1")).tenant(tenant, env).header(KEY, "same").send().await;
        assert_eq!(r.status, 201, "{tenant}/{env}: {}", r.text());
        assert!(!replayed(&r));
        ids.push(r.json::<Value>()["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "three customers");
    assert_eq!(records(&app).await.len(), 3);
}

/// A customer with a sandbox payment method that always succeeds: (customer, payment method).
async fn payer(app: &TestApp) -> (String, String) {
    app.create_tenant(T).await;
    let create = |path: String, body: Value| async move {
        let v: Value = app.post(&path, body).tenant(T, ENV).expect(201).await.json();
        v["id"].as_str().unwrap().to_owned()
    };
    let sf = json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en",
                    "countries": ["DE"], "tax": {"kind": "inclusive", "rate_bp": 1900}});
    let sf = create("/v1/storefronts".into(), sf).await;
    let account = json!({"connector": "sandbox", "display_name": "S", "mode": "test"});
    let account = create(format!("/v1/storefronts/{sf}/psp-accounts"), account).await;
    let cus = create("/v1/customers".into(), json!({"external_id": "payer"})).await;
    let method = json!({"storefront_id": sf, "psp_account_id": account, "token": "tok_sandbox_success"});
    let pm = create(format!("/v1/customers/{cus}/payment-methods"), method).await;
    (cus, pm)
}

async fn concurrent_duplicates_charge_once(app: TestApp) {
    let (cus, pm) = payer(&app).await;
    let body = json!({"customer_id": cus, "payment_method_id": pm, "amount": 1999, "currency": "EUR"});
    let calls = (0..16)
        .map(|_| app.post("/v1/payments", body.clone()).tenant(T, ENV).header(KEY, "pay-order-77").send());
    let results = futures::future::join_all(calls).await;
    let originals: Vec<&Resp> = results.iter().filter(|r| r.status == 201 && !replayed(r)).collect();
    assert_eq!(originals.len(), 1, "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    let original = originals[0];
    for r in &results {
        match r.status {
            201 => assert_eq!(r.body, original.body, "a replay is identical"),
            409 => {
                assert_eq!(r.problem().code, "idempotency_key_in_flight");
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    // A retry after the storm gets the same answer.
    let later = app.post("/v1/payments", body).tenant(T, ENV).header(KEY, "pay-order-77").expect(201).await;
    assert!(replayed(&later) && later.body == original.body);
    let payments: Value = app.get("/v1/payments").tenant(T, ENV).expect(200).await.json();
    assert_eq!(payments["data"].as_array().unwrap().len(), 1, "one payment");
    // The PSP's own ledger: every movement is this payment's, and it was captured once.
    let payment = original.json::<Value>()["id"].as_str().unwrap().parse().unwrap();
    let ledger = app.ctx.psp.sandbox.ledger();
    assert!(ledger.entries().iter().all(|e| e.payment == payment), "{:?}", ledger.entries());
    assert_eq!(ledger.captures(&payment).len(), 1, "charged once");
    assert_eq!(ledger.captured(&payment), 1999);
}

async fn a_running_request_is_in_flight_and_a_dead_one_is_taken_over(app: TestApp) {
    app.create_tenant(T).await;
    create_customer(&app, "k-run", customer("crm-1")).await;
    // As if the first request were still running: in flight, locked for a day.
    let running = "UPDATE idempotency_keys SET state = 'in_flight', locked_until = expires_at, \
                   response_status = NULL, response_headers = NULL, response_body = NULL";
    app.raw_exec(running).await.unwrap();
    let r = create_customer(&app, "k-run", customer("crm-1")).await;
    assert_eq!((r.status, r.problem().code.as_str()), (409, "idempotency_key_in_flight"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // A different request is still a reuse, even while the first runs.
    let r = create_customer(&app, "k-run", customer("crm-2")).await;
    assert_eq!(r.problem().code, "idempotency_key_reused");

    // Its process died: once the lock has run out, the next request takes the key over and runs
    // (here it meets the customer the first one created), and that answer is kept.
    app.raw_exec("UPDATE idempotency_keys SET locked_until = created_at").await.unwrap();
    let taken = create_customer(&app, "k-run", customer("crm-1")).await;
    assert_eq!((taken.status, replayed(&taken)), (409, false));
    assert!(taken.problem().code.ends_with("_taken"), "{}", taken.text());
    let again = create_customer(&app, "k-run", customer("crm-1")).await;
    assert!(replayed(&again) && again.body == taken.body);
}

/// Requests of one tenant environment claiming new keys at the same moment share one
/// transaction and one statement, and so do their responses (decision 0006, "Claims and
/// responses gathered"); each request is answered, kept and replayed exactly as alone, and a
/// key sent twice at once still runs once.
async fn keys_claimed_at_once_are_claimed_together(app: TestApp) {
    app.create_tenant(T).await;
    // The tenant's data key is known from here on: responses are sealed by their requests.
    create_customer(&app, "warm", customer("crm-warm")).await;
    let before = azotte_service::idempotency::gathered();
    // The first claim's transaction waits on the held table; the others queue behind it.
    let held = app.hold_writes("idempotency_keys").await;
    let mut sent: Vec<(String, String)> = (0..8).map(|i| (format!("k-{i}"), format!("crm-{i}"))).collect();
    sent.extend(std::iter::repeat_n(("k-0".to_owned(), "crm-0".to_owned()), 2));
    let calls = sent.iter().map(|(key, external_id)| create_customer(&app, key, customer(external_id)));
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        held.release().await;
    };
    let (results, ()) = tokio::join!(futures::future::join_all(calls), release);
    let after = azotte_service::idempotency::gathered();
    let (claims, claim_txs) = (after.0 - before.0, after.1 - before.1);
    let (responses, response_txs) = (after.2 - before.2, after.3 - before.3);
    assert_eq!(claims, 8, "each new key claimed once, in a shared transaction");
    assert!(claim_txs < claims, "{claims} claims in {claim_txs} transactions");
    assert_eq!(responses, 8, "every response kept in a shared transaction ({response_txs})");
    assert!(response_txs <= responses);

    // The key sent three times at once ran once, whichever of the three claimed it: the others
    // were told it is running, or got its kept answer.
    let k0: Vec<&Resp> = std::iter::once(&results[0]).chain(&results[8..]).collect();
    let ran: Vec<&&Resp> = k0.iter().filter(|r| r.status == 201 && !replayed(r)).collect();
    assert_eq!(ran.len(), 1, "{:?}", k0.iter().map(|r| r.status).collect::<Vec<_>>());
    for r in &k0 {
        match r.status {
            409 => assert_eq!(r.problem().code, "idempotency_key_in_flight"),
            201 => assert_eq!(r.body, ran[0].body, "{}", r.text()),
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    let mut firsts = vec![*ran[0]];
    for (i, r) in results.iter().enumerate().take(8).skip(1) {
        assert_eq!(r.status, 201, "k-{i}: {}", r.text());
        assert!(!replayed(r));
        firsts.push(r);
    }
    for (i, first) in firsts.iter().enumerate() {
        let again = create_customer(&app, &format!("k-{i}"), customer(&format!("crm-{i}"))).await;
        assert!(replayed(&again) && again.body == first.body, "k-{i}: {}", again.text());
    }
    let list: Value = app.get("/v1/customers?limit=100").tenant(T, ENV).expect(200).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 9, "one customer per key");
    let mut keys: Vec<String> = (0..8).map(|i| format!("k-{i}")).collect();
    keys.push("warm".into());
    assert_eq!(records(&app).await, keys);
    assert_eq!(
        count(&app, "SELECT idempotency_key FROM idempotency_keys WHERE state <> 'complete'").await,
        0
    );
}

/// The queue is one for claims and responses: a response kept and a key claimed at the same
/// moment share one transaction (decision 0006, "Claims and responses gathered"). PostgreSQL,
/// whose table locks hold one table's writes and not another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_and_a_claim_of_the_same_moment_share_a_transaction() {
    use std::time::Duration;
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Postgres).await;
    app.create_tenant(T).await;
    create_customer(&app, "warm", customer("crm-warm")).await;
    let before = azotte_service::idempotency::gathered();
    let pause = || tokio::time::sleep(Duration::from_millis(500));
    // B claims its key, then waits on the customers table.
    let customers = app.hold_writes("customer_data.customers").await;
    let b = create_customer(&app, "k-b", customer("crm-b"));
    let rest = async {
        pause().await;
        // C's claim waits on the records table, holding the queue's turn.
        let records = app.hold_writes("idempotency_keys").await;
        let c = create_customer(&app, "k-c", customer("crm-c"));
        let then = async {
            pause().await;
            // B's response queues behind C's claim, then D's claim: both wait for the turn.
            customers.release().await;
            pause().await;
            let d = create_customer(&app, "k-d", customer("crm-d"));
            let release = async {
                pause().await;
                records.release().await;
            };
            tokio::join!(d, release).0
        };
        tokio::join!(c, then)
    };
    let (b, (c, d)) = tokio::join!(b, rest);
    for (r, key) in [(&b, "k-b"), (&c, "k-c"), (&d, "k-d")] {
        assert_eq!(r.status, 201, "{key}: {}", r.text());
        assert!(!replayed(r));
        let again = create_customer(&app, key, customer(&format!("crm-{}", &key[2..]))).await;
        assert!(replayed(&again) && again.body == r.body, "{key}: {}", again.text());
    }
    let after = azotte_service::idempotency::gathered();
    let (claims, claim_txs) = (after.0 - before.0, after.1 - before.1);
    let (responses, response_txs, txs) = (after.2 - before.2, after.3 - before.3, after.4 - before.4);
    assert_eq!((claims, responses), (3, 3), "every claim and response written together");
    assert!(
        txs < claim_txs + response_txs,
        "a transaction wrote a claim and a response: {txs} transactions, {claim_txs} with claims, \
         {response_txs} with responses"
    );
}

async fn records_expire_and_are_purged(app: TestApp) {
    app.create_tenant(T).await;
    app.admin_mfa().await;
    let key = api_key(&app, T, ENV, "clocked").await;
    let send = |body: Value| {
        app.post("/v1/customers", body).token(&key).header("x-tn", T).header(KEY, "k-day").send()
    };
    let first = send(customer("crm-1")).await;
    assert_eq!(first.status, 201, "{}", first.text());
    app.ctx.clock.advance(chrono::Duration::hours(24) - chrono::Duration::minutes(1));
    assert!(replayed(&send(customer("crm-1")).await), "kept for 24 hours");
    assert_eq!(send(customer("crm-2")).await.status, 422);

    // Past the window the record counts as absent: the key starts over, whatever the request.
    app.ctx.clock.advance(chrono::Duration::minutes(2));
    let fresh = send(customer("crm-2")).await;
    assert_eq!((fresh.status, replayed(&fresh)), (201, false), "{}", fresh.text());
    assert_ne!(fresh.json::<Value>()["id"], first.json::<Value>()["id"]);
    assert!(replayed(&send(customer("crm-2")).await));

    // The worker's housekeeping deletes what expired.
    azotte_worker::housekeeping_once(&app.ctx).await.unwrap();
    assert_eq!(records(&app).await, ["k-day"], "not expired yet");
    app.ctx.clock.advance(chrono::Duration::hours(24) + chrono::Duration::seconds(1));
    azotte_worker::housekeeping_once(&app.ctx).await.unwrap();
    assert!(records(&app).await.is_empty(), "purged");
}

async fn refusals_and_invalid_keys_are_not_kept(app: TestApp) {
    app.create_tenant(T).await;
    // Invalid keys.
    for bad in [String::new(), "k".repeat(256), "tab\there".to_owned(), "4111 1111 1111 1111".to_owned()] {
        let r = create_customer(&app, &bad, customer("crm-1")).await;
        assert_eq!(r.status, 422, "{bad:?}: {}", r.text());
        let p = r.problem();
        assert_eq!(
            (p.code.as_str(), p.errors[0].field.as_str()),
            ("idempotency_key_invalid", KEY),
            "{bad:?}"
        );
    }
    // A body with a card number is refused by the guard outside the layer: nothing kept.
    let card = json!({"external_id": "crm-1", "first_name": "4111 1111 1111 1111"});
    let r = create_customer(&app, "k-card", card).await;
    assert_eq!(r.problem().code, "raw_card_data_rejected");
    // A caller without the permission (403), a bad credential (401): nothing kept.
    let reader = app.tenant_user(T, "reader@example.com", &["read_only"]).await;
    let r = app
        .post("/v1/customers", customer("crm-1"))
        .token(&reader.access)
        .tenant(T, ENV)
        .header(KEY, "k-refused")
        .send()
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = app
        .post("/v1/customers", customer("crm-1"))
        .token("nonsense")
        .tenant(T, ENV)
        .header(KEY, "k-refused");
    assert_eq!(r.send().await.status, 401);
    assert!(records(&app).await.is_empty(), "nothing kept: {:?}", records(&app).await);
    // So the key is still free for the request that may use it.
    let ok = create_customer(&app, "k-refused", customer("crm-1")).await;
    assert_eq!((ok.status, replayed(&ok)), (201, false), "{}", ok.text());
}

async fn routes_without_a_tenant_credential_ignore_the_header(app: TestApp) {
    for (slug, key) in [("ign-a", "same"), ("ign-b", "same"), ("ign-c", "")] {
        let body = json!({"slug": slug, "name": "Ignored"});
        let r = app.post("/v1/platform/tenants", body).header(KEY, key).expect(201).await;
        assert!(!replayed(&r));
    }
    let r = app
        .post(
            "/v1/auth/login",
            json!({"email": "admin@example.com", "password": "correct horse battery staple"}),
        )
        .anon()
        .header(KEY, "login")
        .expect(200)
        .await;
    assert!(!replayed(&r));
    assert!(records(&app).await.is_empty());
}

both!(
    a_retry_replays_the_first_response_and_creates_nothing,
    another_credential_cannot_use_the_key,
    keys_are_per_tenant_and_environment,
    concurrent_duplicates_charge_once,
    keys_claimed_at_once_are_claimed_together,
    a_running_request_is_in_flight_and_a_dead_one_is_taken_over,
    records_expire_and_are_purged,
    refusals_and_invalid_keys_are_not_kept,
    routes_without_a_tenant_credential_ignore_the_header,
);

#[test]
fn the_header_is_documented_on_every_tenant_post() {
    let doc: Value = serde_json::from_str(&azotte_api::openapi_json()).unwrap();
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(post) = item.get("post") else { continue };
        let names: Vec<&str> = post["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        let tenant = names.contains(&"x-tn");
        assert_eq!(names.contains(&KEY), tenant, "{path}");
        documented += usize::from(tenant);
    }
    assert!(documented >= 10, "{documented}");
}

/// An `Idempotency-Key` claim or kept response whose transaction's commit went unconfirmed —
/// the server's connection to PostgreSQL cut at the `COMMIT` (each cut after `pass` of the key's
/// transactions let through: 0 cuts the claim's, 1 the kept response's) — is read back by its claim id:
/// the request runs once and answers, and a retry replays it. (Before, a claim whose answer was
/// lost answered `409 idempotency_key_in_flight` until its lock ran out, five minutes.)
async fn an_unconfirmed_idempotency_commit(cuts: &[(Cut, usize)]) {
    let (app, proxy) = spawn_app_through_cut_proxy().await;
    app.create_tenant(T).await;
    // A first customer: the tenant's data key exists, responses are kept together.
    assert_eq!(create_customer(&app, "warm-up-key", customer("crm-0")).await.status, 201);
    // The key: its claim's and its response's statements bind it.
    let key = "cut-idempotency-key";
    for &(cut, pass) in cuts {
        proxy.arm_after(key, cut, pass);
    }
    let first = create_customer(&app, key, customer("crm-1")).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(proxy.cuts(), cuts.len(), "every cut armed happened");
    let again = create_customer(&app, key, customer("crm-1")).await;
    assert_eq!(again.status, 201, "{}", again.text());
    assert!(replayed(&again), "the retry is a replay");
    assert_eq!(again.body, first.body);
    assert_eq!(count(&app, "SELECT id FROM journal_entries WHERE type = 'customer.create'").await, 2);
}

mod an_unconfirmed_idempotency_commit {
    use crate::helpers::Cut;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claim_after_the_server_got_it() {
        super::an_unconfirmed_idempotency_commit(&[(Cut::Answer, 0)]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claim_before_the_server_got_it() {
        super::an_unconfirmed_idempotency_commit(&[(Cut::Request, 0)]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claim_the_server_never_notices() {
        super::an_unconfirmed_idempotency_commit(&[(Cut::Silent, 0)]).await
    }

    /// The batch's claim not written, then the claim alone cut after the server got it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claim_before_then_alone_after() {
        super::an_unconfirmed_idempotency_commit(&[(Cut::Request, 0), (Cut::Answer, 0)]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn response_after_the_server_got_it() {
        super::an_unconfirmed_idempotency_commit(&[(Cut::Answer, 1)]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn response_the_server_never_notices() {
        super::an_unconfirmed_idempotency_commit(&[(Cut::Silent, 1)]).await
    }
}
