//! Crash safety of payments: the real `azotte serve` process is killed with SIGKILL at random
//! moments during a stream of payments through Stripe (the fake Stripe server lives in this test
//! process, so it outlives the kills, like a real PSP), restarted, and left to reconcile. No
//! payment may be lost, charged twice, or left `pending`/`unknown`; the PSP's ledger and
//! Azotte's records must agree exactly.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azotte_payments::stripe::fake::{FakeStripe, MovementKind};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp, TEST_MASTER_KEY};

const T: &str = "crash";
const ENV: &str = "development";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `azotte serve` on the test database; returns it and its base URL once it answers.
async fn start(app: &TestApp, fake: &FakeStripe, data: &std::path::Path) -> (Child, String) {
    let port = free_port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_azotte"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AZOTTE_") {
            c.env_remove(k);
        }
    }
    let mut child = c
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(data)
        .env("AZOTTE_DATABASE_URL", &app.db_url)
        .env("AZOTTE_SECRET_KEY", "5e".repeat(32))
        .env("AZOTTE_MASTER_KEY", TEST_MASTER_KEY)
        .env("AZOTTE_DATA_DIR", data)
        .env("AZOTTE_STRIPE_BASE_URL", fake.base_url())
        .env("AZOTTE_RECONCILE_GRACE_SECS", "2")
        .env("AZOTTE_HOUSEKEEPING_INTERVAL_SECS", "1")
        .env("AZOTTE_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = app.client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return (child, base);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("azotte serve did not start");
}

async fn setup(app: &TestApp) -> (String, String) {
    app.create_tenant(T).await;
    let post = |path: &str, body: Value| app.post(path, body).tenant(T, ENV).expect(201);
    let sf: Value = post(
        "/v1/storefronts",
        json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
    )
    .await
    .json();
    let sf = sf["id"].as_str().unwrap().to_owned();
    let acc: Value = post(
        &format!("/v1/storefronts/{sf}/psp-accounts"),
        json!({"connector": "stripe", "display_name": "Stripe", "mode": "test",
               "credentials": {"api_secret": "sk_test_crash0123456789", "webhook_secret": "whsec_crash0123456789"}}),
    )
    .await
    .json();
    let cus: Value = post("/v1/customers", json!({"external_id": "crash"})).await.json();
    let cus = cus["id"].as_str().unwrap().to_owned();
    let pm: Value = post(
        &format!("/v1/customers/{cus}/payment-methods"),
        json!({"storefront_id": sf, "psp_account_id": acc["id"], "token": "pm_card_visa"}),
    )
    .await
    .json();
    (cus, pm["id"].as_str().unwrap().to_owned())
}

/// What the clients were told: payment id → status of a 201 answer.
type Answers = Arc<Mutex<HashMap<String, String>>>;

async fn client_loop(
    client: reqwest::Client,
    base: String,
    token: String,
    cus: String,
    pm: String,
    answers: Answers,
    n: u64,
) {
    let mut i = 0u64;
    loop {
        i += 1;
        let body = json!({"customer_id": cus, "payment_method_id": pm, "amount": 100 + (n * 1000 + i) % 900, "currency": "EUR"});
        let sent = client
            .post(format!("{base}/v1/payments"))
            .bearer_auth(&token)
            .header("x-tn", T)
            .header("x-env", ENV)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 201 => {
                if let Ok(v) = r.json::<Value>().await {
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    answers.lock().unwrap().insert(id, v["status"].as_str().unwrap_or_default().to_owned());
                }
            }
            Ok(r) => panic!("unexpected answer {}: {}", r.status(), r.text().await.unwrap_or_default()),
            // The server died under the request: the client does not know what happened.
            Err(_) => return,
        }
    }
}

async fn payments_survive_sigkill_and_reconcile(backend: Backend) {
    let fake = FakeStripe::start().await.unwrap();
    let mut app = spawn_app_with(backend, &[("stripe_base_url", fake.base_url())]).await;
    let (cus, pm) = setup(&app).await;
    app.stop_server();
    // A slow PSP, so that kills land while attempts are in flight at Stripe.
    fake.set_latency(Duration::from_millis(40));
    let data = tempfile::tempdir().unwrap();
    let answers: Answers = Arc::default();

    for round in 0..5u64 {
        let (mut child, base) = start(&app, &fake, data.path()).await;
        let clients: Vec<_> = (0..4)
            .map(|n| {
                tokio::spawn(client_loop(
                    app.client.clone(),
                    base.clone(),
                    app.admin_token.clone(),
                    cus.clone(),
                    pm.clone(),
                    answers.clone(),
                    round * 10 + n,
                ))
            })
            .collect();
        // A random moment: 0.3 to 1.2 s into the stream.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let wait = 300 + u64::from(nanos % 900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for c in clients {
            c.await.unwrap();
        }
    }

    // Restart and let reconciliation (grace 2 s, every second) resolve what was in flight.
    let (mut child, _base) = start(&app, &fake, data.path()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open =
            app.raw_strings("SELECT id FROM payments WHERE status NOT IN ('captured', 'failed')").await;
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still unresolved after 60 s: {open:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Azotte's records and Stripe's ledger agree, payment by payment.
    let rows = app
        .raw_strings("SELECT id || ' ' || status || ' ' || CAST(captured_amount AS TEXT) || ' ' || CAST(amount AS TEXT) FROM payments")
        .await;
    let mut charged: HashMap<String, Vec<i64>> = HashMap::new();
    for m in fake.movements() {
        assert_eq!(m.kind, MovementKind::Charge);
        charged
            .entry(m.reference.clone().expect("every charge carries our reference"))
            .or_default()
            .push(m.amount);
    }
    let mut stored = HashMap::new();
    let (mut captured, mut failed) = (0, 0);
    for row in &rows {
        let f: Vec<&str> = row.split(' ').collect();
        let (id, status, captured_amount, amount) =
            (f[0], f[1], f[2].parse::<i64>().unwrap(), f[3].parse::<i64>().unwrap());
        stored.insert(id.to_owned(), status.to_owned());
        let at_psp = charged.get(id).cloned().unwrap_or_default();
        match status {
            "captured" => {
                captured += 1;
                assert_eq!(at_psp, vec![amount], "{id}: charged exactly once, for its amount");
                assert_eq!(captured_amount, amount);
            }
            "failed" => {
                failed += 1;
                assert!(at_psp.is_empty(), "{id} failed but Stripe charged {at_psp:?}");
            }
            other => panic!("{id} left {other}"),
        }
    }
    for reference in charged.keys() {
        assert!(stored.contains_key(reference), "Stripe charged {reference}, which Azotte does not know");
    }
    // Nothing a client was told is contradicted.
    for (id, status) in answers.lock().unwrap().iter() {
        if status == "captured" || status == "failed" {
            assert_eq!(stored.get(id), Some(status), "{id} was answered {status}");
        }
    }
    assert!(captured > 20, "the stream made progress ({captured} captured, {failed} failed)");
    eprintln!(
        "crash test: {} payments, {captured} captured, {failed} failed, {} answered",
        rows.len(),
        answers.lock().unwrap().len()
    );
}

mod payments_survive_sigkill_and_reconcile {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::payments_survive_sigkill_and_reconcile(crate::helpers::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::payments_survive_sigkill_and_reconcile(crate::helpers::Backend::Postgres).await
    }
}

/// Operators switch safe mode with the CLI, against the same database as the running service.
async fn safe_mode_from_the_cli(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    app.create_tenant("clisafe").await;
    let tenant = app.raw_strings("SELECT id FROM tenants WHERE slug = 'clisafe'").await.remove(0);
    let data = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_azotte"));
        for (k, _) in std::env::vars() {
            if k.starts_with("AZOTTE_") {
                c.env_remove(k);
            }
        }
        let out = c
            .args(args)
            .current_dir(data.path())
            .env("AZOTTE_DATABASE_URL", &app.db_url)
            .env("AZOTTE_SECRET_KEY", "5e".repeat(32))
            .env("AZOTTE_MASTER_KEY", TEST_MASTER_KEY)
            .env("AZOTTE_DATA_DIR", data.path())
            .env("AZOTTE_LOG_LEVEL", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = cli(&["safe-mode", "--tenant", &tenant, "on", "--reason", "PSP incident INC-7"]);
    assert!(ok && out.contains("safe mode: on") && out.contains("INC-7"), "{out}");
    let state: Value =
        app.get("/v1/tenant/safe-mode").tenant("clisafe", "production").expect(200).await.json();
    assert_eq!(
        (state["enabled"].as_bool(), state["reason"].as_str()),
        (Some(true), Some("PSP incident INC-7"))
    );
    let (ok, out) = cli(&["safe-mode", "--tenant", &tenant, "status"]);
    assert!(ok && out.contains("safe mode: on"), "{out}");
    let (ok, out) = cli(&["safe-mode", "--tenant", &tenant, "off"]);
    assert!(ok && out.contains("safe mode: off"), "{out}");
    let (ok, out) = cli(&["safe-mode", "--tenant", "ten_01jdq3m9x7e5k4w2c8v6b0n1p2", "status"]);
    assert!(!ok, "an unknown tenant is an error: {out}");
    let journal = app.raw_strings("SELECT type FROM journal_entries").await;
    assert!(
        journal.iter().any(|t| t == "tenant.safe_mode_enabled")
            && journal.iter().any(|t| t == "tenant.safe_mode_disabled")
    );
}

mod safe_mode_from_the_cli {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::safe_mode_from_the_cli(crate::helpers::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::safe_mode_from_the_cli(crate::helpers::Backend::Postgres).await
    }
}

/// Horizontal safety: two `azotte serve` processes (each with its workers) on one PostgreSQL
/// renew a batch of due subscriptions; each is renewed — and charged at Stripe — exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_renew_each_subscription_once() {
    const N: usize = 12;
    let fake = FakeStripe::start().await.unwrap();
    let mut app = spawn_app_with(Backend::Postgres, &[("stripe_base_url", fake.base_url())]).await;
    app.create_tenant(T).await;
    let post = |path: String, body: Value| {
        let app = &app;
        async move { app.post(&path, body).tenant(T, ENV).expect(201).await.json::<Value>() }
    };
    let sf = post(
        "/v1/storefronts".into(),
        json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let acc = post(
        format!("/v1/storefronts/{sf}/psp-accounts"),
        json!({"connector": "stripe", "display_name": "Stripe", "mode": "test",
               "credentials": {"api_secret": "sk_test_workers0123456789", "webhook_secret": "whsec_workers0123456789"}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    post("/v1/entitlements".into(), json!({"key": "video", "name": "Video", "kind": "boolean"})).await;
    let bundle = post(
        "/v1/bundles".into(),
        json!({"key": "premium", "name": "Premium", "type": "subscription", "status": "active", "entitlements": [{"key": "video"}]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 30-day periods: shifting every date back by 30 days keeps the anchor arithmetic exact.
    let price = post(
        "/v1/prices".into(),
        json!({"bundle_id": bundle, "storefront_id": sf, "currency": "EUR", "amount": 700, "billing_period": {"unit": "day", "count": 30}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..N {
        let cus = post("/v1/customers".into(), json!({"external_id": format!("w{i}")})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let pm = post(
            format!("/v1/customers/{cus}/payment-methods"),
            json!({"storefront_id": sf, "psp_account_id": acc, "token": "pm_card_visa"}),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let offer = post("/v1/offers".into(), json!({"customer_id": cus, "storefront_id": sf})).await;
        let c = app
            .post("/v1/checkouts", json!({"customer_id": cus, "offer_id": offer["id"], "price_id": price, "payment_method_id": pm}))
            .tenant(T, ENV)
            .expect(202)
            .await
            .json::<Value>();
        let cid = c["id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Value = app.get(&format!("/v1/checkouts/{cid}")).tenant(T, ENV).expect(200).await.json();
            if v["status"] == "succeeded" {
                break;
            }
            assert!(v["status"] == "processing" && Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    app.stop_server();
    let shifted = app
        .raw_exec(
            "UPDATE subscriptions SET anchor = anchor - interval '30 days', \
             period_start = period_start - interval '30 days', period_end = period_end - interval '30 days'",
        )
        .await
        .unwrap();
    assert_eq!(shifted as usize, N);

    let data = tempfile::tempdir().unwrap();
    let (mut a, _) = start(&app, &fake, data.path()).await;
    let (mut b, _) = start(&app, &fake, data.path()).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = app.raw_strings("SELECT id FROM subscriptions WHERE periods < 2").await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not renewed after 90 s: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let both keep ticking a little: nothing more may happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let renewals = app
        .raw_strings(
            "SELECT request_key FROM payments WHERE request_key LIKE 'renewal-%' ORDER BY request_key",
        )
        .await;
    assert_eq!(renewals.len(), N, "one renewal payment per subscription: {renewals:?}");
    let charges: Vec<_> = fake.movements().into_iter().filter(|m| m.kind == MovementKind::Charge).collect();
    assert_eq!(charges.len(), 2 * N, "N first charges and N renewals at Stripe, nothing twice");
    let mut per_reference: HashMap<String, usize> = HashMap::new();
    for m in &charges {
        *per_reference.entry(m.reference.clone().unwrap()).or_default() += 1;
    }
    assert!(per_reference.values().all(|n| *n == 1), "{per_reference:?}");
    let statuses = app.raw_strings("SELECT status FROM subscriptions").await;
    assert!(statuses.iter().all(|s| s == "active"), "{statuses:?}");
}
