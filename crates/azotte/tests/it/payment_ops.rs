//! Operating payments end to end: Stripe tokens validated, attached and detached at the PSP
//! (against the fake Stripe server), circuit breakers, tenant safe mode with queueing, and PSP
//! webhooks (verified, deduplicated, order-independent).

use std::time::Duration;

use azotte_domain::id::PspAccountId;
use azotte_payments::sandbox::webhook as sandbox_webhook;
use azotte_payments::stripe::fake::FakeStripe;
use azotte_payments::Account;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{spawn_app_with, Backend, TestApp};

const T: &str = "ops";
const ENV: &str = "development";

async fn post(app: &TestApp, path: &str, body: Value, status: u16) -> Value {
    app.post(path, body).tenant(T, ENV).expect(status).await.json()
}

async fn get(app: &TestApp, path: &str) -> Value {
    app.get(path).tenant(T, ENV).expect(200).await.json()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

async fn storefront(app: &TestApp) -> String {
    app.create_tenant(T).await;
    id(&post(
        app,
        "/v1/storefronts",
        json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
        201,
    )
    .await)
}

async fn account(app: &TestApp, sf: &str, body: Value) -> String {
    id(&post(app, &format!("/v1/storefronts/{sf}/psp-accounts"), body, 201).await)
}

async fn method(app: &TestApp, sf: &str, acc: &str, cus: &str, token: &str) -> Value {
    post(
        app,
        &format!("/v1/customers/{cus}/payment-methods"),
        json!({"storefront_id": sf, "psp_account_id": acc, "token": token}),
        201,
    )
    .await
}

async fn pay(app: &TestApp, cus: &str, pm: &str, amount: i64, status: u16) -> Value {
    post(
        app,
        "/v1/payments",
        json!({"customer_id": cus, "payment_method_id": pm, "amount": amount, "currency": "EUR"}),
        status,
    )
    .await
}

async fn timeline(app: &TestApp, p: &str) -> Vec<Value> {
    get(app, &format!("/v1/payments/{p}/timeline")).await["data"].as_array().unwrap().clone()
}

fn types(t: &[Value]) -> Vec<String> {
    t.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

async fn journal_types(app: &TestApp) -> Vec<String> {
    app.raw_strings("SELECT type FROM journal_entries ORDER BY id").await
}

// ---------------------------------------------------------------------------------------------
// Stripe, against the fake server.

/// A fake Stripe, an app using it, a storefront and its Stripe account with these
/// credentials: (fake, app, storefront, account).
async fn stripe_shop(
    backend: Backend,
    api_secret: &str,
    webhook_secret: &str,
) -> (FakeStripe, TestApp, String, String) {
    let fake = FakeStripe::start().await.unwrap();
    let app = spawn_app_with(backend, &[("stripe_base_url", fake.base_url())]).await;
    let sf = storefront(&app).await;
    let acc = account(
        &app,
        &sf,
        json!({"connector": "stripe", "display_name": "Stripe", "mode": "test",
               "credentials": {"api_secret": api_secret, "webhook_secret": webhook_secret}}),
    )
    .await;
    (fake, app, sf, acc)
}

async fn stripe_methods_are_validated_attached_charged_and_detached(backend: Backend) {
    let (fake, app, sf, acc) = stripe_shop(backend, "sk_test_ops0123456789", "whsec_ops0123456789").await;
    let cus = id(&post(&app, "/v1/customers", json!({"external_id": "s1"}), 201).await);

    // A token Stripe does not know is refused; nothing is stored.
    let r = app
        .post(
            &format!("/v1/customers/{cus}/payment-methods"),
            json!({"storefront_id": sf, "psp_account_id": acc, "token": "pm_doesnotexist"}),
        )
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!((r.errors[0].field.as_str(), r.errors[0].code.as_str()), ("token", "invalid_token"));
    assert_eq!(get(&app, &format!("/v1/customers/{cus}/payment-methods")).await["data"], json!([]));

    // A test card: Stripe answers the display data and attaches it to a Stripe customer.
    let pm = method(&app, &sf, &acc, &cus, "pm_card_mastercard").await;
    assert_eq!((pm["brand"].as_str(), pm["last4"].as_str()), (Some("mastercard"), Some("4444")));
    let second = method(&app, &sf, &acc, &cus, "pm_card_visa").await;
    let created = fake.requests().into_iter().find(|r| r.path == "/v1/customers").unwrap();
    assert_eq!(created.param("metadata[azotte_customer_id]"), Some(cus.as_str()));
    let mut attached_to: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/attach"))
        .filter_map(|r| r.param("customer").map(str::to_owned))
        .collect();
    attached_to.dedup();
    assert_eq!(attached_to.len(), 1, "one Stripe customer per customer and account: {attached_to:?}");

    // A renewal-style charge: off session, with the Stripe customer.
    let p = post(
        &app,
        "/v1/payments",
        json!({"customer_id": cus, "payment_method_id": id(&pm), "amount": 1299, "currency": "EUR", "off_session": true}),
        201,
    )
    .await;
    assert_eq!(p["status"], "captured", "{p}");
    let sent = fake.requests().into_iter().rfind(|r| r.path == "/v1/payment_intents").unwrap();
    assert_eq!(sent.param("customer"), Some(attached_to[0].as_str()));
    assert_eq!(sent.param("off_session"), Some("true"));
    assert_eq!(fake.captured(&id(&p)), 1299);

    // Delete detaches at Stripe first; the method can no longer be charged anywhere.
    app.request(reqwest::Method::DELETE, &format!("/v1/customers/{cus}/payment-methods/{}", id(&pm)))
        .tenant(T, ENV)
        .expect(200)
        .await;
    let detach =
        fake.requests().into_iter().rfind(|r| r.path.ends_with("/detach")).expect("detached at Stripe");
    assert!(detach.path.contains("pm_fake"), "{}", detach.path);
    pay(&app, &cus, &id(&pm), 100, 404).await;
    // The other method still works.
    assert_eq!(pay(&app, &cus, &id(&second), 100, 201).await["status"], "captured");
}

async fn stripe_webhooks_are_verified_deduplicated_and_order_independent(backend: Backend) {
    let secret = "whsec_hook0123456789";
    let (fake, app, sf, acc) = stripe_shop(backend, "sk_test_hook0123456789", secret).await;
    let cus = id(&post(&app, "/v1/customers", json!({"external_id": "s2"}), 201).await);
    let pm = id(&method(&app, &sf, &acc, &cus, "pm_card_authenticationRequired").await);
    let p = pay(&app, &cus, &pm, 4200, 201).await;
    assert_eq!(p["status"], "requires_action");
    // The customer completes 3-D Secure at Stripe; Stripe tells us by webhook.
    let psp_id = fake
        .events()
        .iter()
        .rev()
        .find_map(|e| e["data"]["object"]["id"].as_str().map(str::to_owned))
        .unwrap();
    fake.complete_action(&psp_id, true).unwrap();
    let events = fake.events();
    let succeeded = events.iter().rfind(|e| e["type"] == "payment_intent.succeeded").unwrap().clone();
    let requires = events.iter().find(|e| e["type"] == "payment_intent.requires_action").unwrap().clone();
    let tenant = app.raw_strings(&format!("SELECT id FROM tenants WHERE slug = '{T}'")).await.remove(0);
    let url = format!("/v1/psp-webhooks/{tenant}/{ENV}/{acc}");
    let deliver = |event: Value, secret: &'static str| {
        let (headers, body) = FakeStripe::signed(&event, secret, app.ctx.clock.now());
        let mut call = app.post(&url, json!(null)).anon().body("application/json", body);
        for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-type")) {
            call = call.header(k, v);
        }
        call
    };
    let ack: Value = deliver(succeeded.clone(), secret).expect(200).await.json();
    assert_eq!(ack["status"], "processed");
    let got = get(&app, &format!("/v1/payments/{}", id(&p))).await;
    assert_eq!((got["status"].as_str(), got["captured_amount"].as_i64()), (Some("captured"), Some(4200)));
    // Redelivered: nothing changes. Late (older) event: does not move the payment back.
    let ack: Value = deliver(succeeded, secret).expect(200).await.json();
    assert_eq!(ack["status"], "duplicate");
    let ack: Value = deliver(requires, secret).expect(200).await.json();
    assert_eq!(ack["status"], "processed");
    assert_eq!(get(&app, &format!("/v1/payments/{}", id(&p))).await["status"], "captured");
    let t = types(&timeline(&app, &id(&p)).await);
    assert!(t.iter().any(|x| x == "psp_webhook.stale"), "{t:?}");
    // A forged signature is refused and journaled.
    let forged = deliver(events[0].clone(), "whsec_wrong").expect(400).await.problem();
    assert_eq!(forged.code, "webhook_signature_invalid");
    assert!(journal_types(&app).await.iter().any(|t| t == "psp_webhook.rejected"));
    // Unknown tenant, environment or account: 404, nothing learned.
    for bad in [
        format!("/v1/psp-webhooks/{tenant}/{ENV}/{}", PspAccountId::new()),
        format!("/v1/psp-webhooks/ten_01jdq3m9x7e5k4w2c8v6b0n1p2/{ENV}/{acc}"),
        format!("/v1/psp-webhooks/{tenant}/nowhere/{acc}"),
    ] {
        app.post(&bad, json!({})).anon().expect(404).await;
    }
}

/// A Stripe key rolled or revoked in the Dashboard: Stripe refuses it before anything executes,
/// so nothing is charged and it is not the card's fault. The payment fails `psp_unavailable` (on
/// our side: a renewal defers instead of entering dunning, a trial conversion waits), the
/// failover decision names the refusal, and after enough refusals the account's breaker opens
/// (`psp.degraded`): payments fail fast without calling Stripe until the key is fixed.
async fn a_revoked_stripe_key_fails_payments_on_our_side_and_opens_the_breaker(backend: Backend) {
    let secret = "sk_test_revoked0123456789";
    let (fake, app, sf, acc) = stripe_shop(backend, secret, "whsec_ops0123456789").await;
    let cus = id(&post(&app, "/v1/customers", json!({"external_id": "s1"}), 201).await);
    let pm = method(&app, &sf, &acc, &cus, "pm_card_visa").await;
    fake.revoke_key(secret);
    let p = pay(&app, &cus, &id(&pm), 1299, 201).await;
    assert_eq!(
        (p["status"].as_str(), p["decline_code"].as_str()),
        (Some("failed"), Some("psp_unavailable")),
        "{p}"
    );
    assert_eq!(fake.captured(&id(&p)), 0);
    let failover =
        timeline(&app, &id(&p)).await.into_iter().find(|e| e["type"] == "payment.failover").unwrap();
    assert!(
        failover["body"]["reason"].as_str().unwrap().contains("api_key_expired")
            || failover["body"]["reason"].as_str().unwrap().contains("Expired API Key"),
        "{failover}"
    );
    // Four more refusals open the breaker; then payments fail without reaching Stripe.
    for _ in 0..4 {
        pay(&app, &cus, &id(&pm), 1299, 201).await;
    }
    assert!(journal_types(&app).await.iter().any(|t| t == "psp.degraded"));
    let sent = fake.requests().iter().filter(|r| r.path == "/v1/payment_intents").count();
    let fast = pay(&app, &cus, &id(&pm), 1299, 201).await;
    assert_eq!(
        (fast["status"].as_str(), fast["decline_code"].as_str()),
        (Some("failed"), Some("psp_unavailable")),
        "{fast}"
    );
    assert_eq!(fake.requests().iter().filter(|r| r.path == "/v1/payment_intents").count(), sent);
}

/// A Stripe checkout whose customer never completes 3-D Secure: after an hour the worker
/// cancels the PaymentIntent at Stripe (`POST /v1/payment_intents/{id}/cancel`, with an
/// idempotency key), nothing is charged, and the checkout fails `checkout_expired`. A first
/// cancel that fails while executing (Stripe keeps that `500` for its key) is retried under the
/// same key for ten minutes, then under a new one.
async fn an_abandoned_stripe_3ds_checkout_cancels_its_payment_intent(backend: Backend) {
    let (fake, app, sf, acc) = stripe_shop(backend, "sk_test_3ds0123456789", "whsec_3ds0123456789").await;
    post(&app, "/v1/entitlements", json!({"key": "hd", "name": "HD", "kind": "boolean"}), 201).await;
    let bundle = id(&post(
        &app,
        "/v1/bundles",
        json!({"key": "premium", "name": "Premium", "type": "subscription", "status": "active", "entitlements": [{"key": "hd"}]}),
        201,
    )
    .await);
    let price = id(&post(
        &app,
        "/v1/prices",
        json!({"bundle_id": bundle, "storefront_id": sf, "currency": "EUR", "amount": 999, "billing_period": {"unit": "month", "count": 1}}),
        201,
    )
    .await);
    let cus = id(&post(&app, "/v1/customers", json!({"external_id": "s3ds"}), 201).await);
    let pm = method(&app, &sf, &acc, &cus, "pm_card_authenticationRequired").await;
    let offer = post(&app, "/v1/offers", json!({"customer_id": cus, "storefront_id": sf}), 201).await;
    let waiting: Value = app
        .post("/v1/checkouts", json!({"customer_id": cus, "offer_id": offer["id"], "price_id": price, "payment_method_id": id(&pm)}))
        .tenant(T, ENV)
        .header("Prefer", "wait=5")
        .expect(201)
        .await
        .json();
    assert_eq!(waiting["status"], "requires_action", "{waiting}");
    let intent_id = app
        .raw_strings(&format!(
            "SELECT psp_payment_id FROM payments WHERE id = '{}'",
            waiting["payment_id"].as_str().unwrap()
        ))
        .await
        .remove(0);
    assert_eq!(fake.payment_intent(&intent_id).unwrap()["status"], "requires_action");
    let cancels = || {
        fake.requests()
            .into_iter()
            .filter(|r| r.path == format!("/v1/payment_intents/{intent_id}/cancel"))
            .map(|r| r.header("idempotency-key").unwrap_or_default().rsplit('-').next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let checkout_status = || async {
        app.raw_strings(&format!(
            "SELECT status || ' ' || COALESCE(failure_code, '-') FROM checkouts WHERE id = '{}'",
            id(&waiting)
        ))
        .await
    };
    fake.fail_next(azotte_payments::stripe::fake::Fault::ServerErrorKept);
    app.ctx.clock.advance(chrono::Duration::minutes(61));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(cancels(), ["7"], "the seventh ten minutes of waiting");
    assert_eq!(fake.payment_intent(&intent_id).unwrap()["status"], "requires_action");
    assert_eq!(checkout_status().await, vec!["requires_action -".to_owned()]);
    // At the next look (the checkout waits five minutes): the same key, and Stripe's kept 500
    // again.
    app.ctx.clock.advance(chrono::Duration::minutes(6));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(cancels(), ["7", "7"]);
    assert_eq!(checkout_status().await, vec!["requires_action -".to_owned()]);
    // In the next ten minutes: a new key, and the cancel goes through.
    app.ctx.clock.advance(chrono::Duration::minutes(6));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(cancels(), ["7", "7", "8"]);
    assert_eq!(fake.payment_intent(&intent_id).unwrap()["status"], "canceled");
    assert_eq!(fake.captured(waiting["payment_id"].as_str().unwrap()), 0);
    assert_eq!(checkout_status().await, vec!["failed checkout_expired".to_owned()]);
}

macro_rules! both_stripe {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )+};
}

both_stripe!(
    stripe_methods_are_validated_attached_charged_and_detached,
    stripe_webhooks_are_verified_deduplicated_and_order_independent,
    a_revoked_stripe_key_fails_payments_on_our_side_and_opens_the_breaker,
    an_abandoned_stripe_3ds_checkout_cancels_its_payment_intent
);

// ---------------------------------------------------------------------------------------------
// The sandbox: breakers, safe mode, webhooks.

async fn sandbox_setup(app: &TestApp, accounts: usize, token: &str) -> (String, Vec<String>, String, String) {
    let sf = storefront(app).await;
    let mut accs = Vec::new();
    for i in 0..accounts {
        accs.push(
            account(
                app,
                &sf,
                json!({"connector": "sandbox", "display_name": format!("S{i}"), "mode": "test", "priority": 10 * (i + 1)}),
            )
            .await,
        );
    }
    let cus = id(&post(app, "/v1/customers", json!({"external_id": "payer"}), 201).await);
    let pm = id(&method(app, &sf, &accs[0], &cus, token).await);
    (sf, accs, cus, pm)
}

async fn a_failing_account_opens_its_breaker_and_a_probe_restores_it(app: TestApp) {
    let (sf, accs, cus, timeout_pm) = sandbox_setup(&app, 1, "tok_sandbox_timeout").await;
    let ok_pm = id(&method(&app, &sf, &accs[0], &cus, "tok_sandbox_success").await);
    // Five timeouts in a minute: the breaker opens, journaled once as psp.degraded.
    for _ in 0..5 {
        let p = pay(&app, &cus, &timeout_pm, 100, 201).await;
        assert_eq!(
            (p["status"].as_str(), p["decline_code"].as_str()),
            (Some("failed"), Some("psp_unavailable"))
        );
    }
    let degraded = journal_types(&app).await.iter().filter(|t| *t == "psp.degraded").count();
    assert_eq!(degraded, 1);
    // While open, routing leaves the account out: nothing is sent, nothing charged.
    let p = pay(&app, &cus, &ok_pm, 700, 201).await;
    assert_eq!(
        (p["status"].as_str(), p["decline_code"].as_str(), p["attempts"].as_i64()),
        (Some("failed"), Some("psp_unavailable"), Some(0))
    );
    let routed = timeline(&app, &id(&p)).await.into_iter().find(|e| e["type"] == "payment.routed").unwrap();
    assert_eq!(routed["body"]["circuit_open"], json!([accs[0]]), "{routed}");
    assert!(app.ctx.psp.sandbox.ledger().captures(&id(&p).parse().unwrap()).is_empty());
    // After the open period one probe goes through; a healthy answer closes the breaker.
    app.ctx.clock.advance(chrono::Duration::seconds(31));
    let p = pay(&app, &cus, &ok_pm, 700, 201).await;
    assert_eq!(p["status"], "captured");
    assert!(journal_types(&app).await.iter().any(|t| t == "psp.recovered"));
    assert_eq!(pay(&app, &cus, &ok_pm, 700, 201).await["status"], "captured");
}

async fn an_open_breaker_routes_to_the_next_account(app: TestApp) {
    let (sf, accs, cus, _) = sandbox_setup(&app, 2, "tok_sandbox_success").await;
    // Trip the first account's breaker through a forced account and timeouts.
    let timeout_pm = id(&method(&app, &sf, &accs[0], &cus, "tok_sandbox_timeout").await);
    for _ in 0..5 {
        post(
            &app,
            "/v1/payments",
            json!({"customer_id": cus, "payment_method_id": timeout_pm, "amount": 100, "currency": "EUR", "psp_account_id": accs[0]}),
            201,
        )
        .await;
    }
    let ok_pm = id(&method(&app, &sf, &accs[0], &cus, "tok_sandbox_success").await);
    let p = pay(&app, &cus, &ok_pm, 900, 201).await;
    assert_eq!((p["status"].as_str(), p["attempts"].as_i64()), (Some("captured"), Some(1)));
    assert_eq!(p["psp_account_id"], accs[1].as_str(), "the open account was skipped");
}

async fn safe_mode_queues_money_movement_and_lifting_it_resumes(app: TestApp) {
    let (_, _, cus, pm) = sandbox_setup(&app, 1, "tok_sandbox_success").await;
    let before = pay(&app, &cus, &pm, 5000, 201).await;
    // Switching on needs a reason, and the permission.
    let r = app
        .request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": true}))
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!(r.errors[0].field, "reason");
    app.admin_mfa().await;
    let key = app.api_key(T, ENV, json!({"description": "reader", "role": "read_only"})).await;
    app.request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": true, "reason": "x"}))
        .token(key["secret"].as_str().unwrap())
        .header("x-tn", T)
        .expect(403)
        .await;
    let on: Value = app
        .request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": true, "reason": "PSP incident INC-42"}))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json();
    assert_eq!((on["enabled"].as_bool(), on["reason"].as_str()), (Some(true), Some("PSP incident INC-42")));

    // Payments and refunds are queued (202), not failed, not sent.
    let queued = pay(&app, &cus, &pm, 1200, 202).await;
    assert_eq!(
        (queued["status"].as_str(), queued["queued_reason"].as_str()),
        (Some("pending"), Some("safe_mode"))
    );
    let refund =
        post(&app, &format!("/v1/payments/{}/refunds", id(&before)), json!({"amount": 1000}), 202).await;
    assert_eq!(
        (refund["status"].as_str(), refund["queued_reason"].as_str()),
        (Some("pending"), Some("safe_mode"))
    );
    let ledger = app.ctx.psp.sandbox.ledger();
    assert!(ledger.captures(&id(&queued).parse().unwrap()).is_empty());
    // The whole tenant: another environment queues too. The worker resumes nothing meanwhile.
    assert_eq!(azotte_service::payments::resume_everywhere(&app.ctx).await.unwrap(), 0);
    let state: Value = get(&app, "/v1/tenant/safe-mode").await;
    assert_eq!(state["enabled"], true);

    // Lifted: the queue is sent, each payment once.
    app.request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": false}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    let mut done = Value::Null;
    for _ in 0..100 {
        done = get(&app, &format!("/v1/payments/{}", id(&queued))).await;
        if done["status"] == "captured" && done["refunds"].as_array().is_some_and(|r| r.is_empty()) {
            let b = get(&app, &format!("/v1/payments/{}", id(&before))).await;
            if b["refunds"][0]["status"] == "succeeded" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((done["status"].as_str(), done["queued_reason"].as_str()), (Some("captured"), None));
    let b = get(&app, &format!("/v1/payments/{}", id(&before))).await;
    assert_eq!(b["refunds"][0]["status"], "succeeded", "{b}");
    assert_eq!(azotte_service::payments::resume_everywhere(&app.ctx).await.unwrap(), 0, "nothing sent twice");
    assert_eq!(ledger.captures(&id(&queued).parse().unwrap()).len(), 1);
    let t = journal_types(&app).await;
    for x in [
        "tenant.safe_mode_enabled",
        "payment.queued",
        "refund.queued",
        "tenant.safe_mode_disabled",
        "payment.resume",
    ] {
        assert!(t.iter().any(|y| y == x), "{x} in {t:?}");
    }
}

async fn sandbox_webhooks_advance_payments_and_refuse_other_accounts(app: TestApp) {
    let (_, accs, cus, pm) = sandbox_setup(&app, 2, "tok_sandbox_requires_action").await;
    let p = pay(&app, &cus, &pm, 3100, 201).await;
    assert_eq!(p["status"], "requires_action");
    let account_id: PspAccountId = p["psp_account_id"].as_str().unwrap().parse().unwrap();
    let psp_id = app.ctx.psp.sandbox.events().last().map(|e| match &e.object {
        azotte_payments::WebhookObject::Payment(p) => p.psp_id.clone(),
        azotte_payments::WebhookObject::Refund(r) => r.psp_id.clone(),
    });
    app.ctx.psp.sandbox.complete_action(&account_id, &psp_id.unwrap(), true).unwrap();
    let event = app.ctx.psp.sandbox.events().pop().unwrap();
    let tenant = app.raw_strings(&format!("SELECT id FROM tenants WHERE slug = '{T}'")).await.remove(0);
    let send = |acc: &str, event: &azotte_payments::WebhookEvent| {
        let (headers, body) = sandbox_webhook::sign(&Account::new(account_id), event, app.ctx.clock.now());
        let mut call = app
            .post(&format!("/v1/psp-webhooks/{tenant}/{ENV}/{acc}"), json!(null))
            .anon()
            .body("application/json", body);
        for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-type")) {
            call = call.header(k, v);
        }
        call
    };
    // The event delivered to the other account's URL cannot touch this payment.
    let other = accs.iter().find(|a| **a != account_id.to_string()).unwrap();
    send(other, &event).expect(200).await;
    assert_eq!(get(&app, &format!("/v1/payments/{}", id(&p))).await["status"], "requires_action");
    // To its own account: captured.
    send(&account_id.to_string(), &event).expect(200).await;
    let got = get(&app, &format!("/v1/payments/{}", id(&p))).await;
    assert_eq!((got["status"].as_str(), got["captured_amount"].as_i64()), (Some("captured"), Some(3100)));
    assert_eq!(app.ctx.psp.sandbox.ledger().captures(&id(&p).parse().unwrap()).len(), 1);
}

async fn a_payment_remembers_its_idempotency_key_beyond_the_http_record(app: TestApp) {
    let (_, _, cus, pm) = sandbox_setup(&app, 1, "tok_sandbox_success").await;
    let body = json!({"customer_id": cus, "payment_method_id": pm, "amount": 1999, "currency": "EUR"});
    let first: Value = app
        .post("/v1/payments", body.clone())
        .tenant(T, ENV)
        .header("Idempotency-Key", "order-77")
        .expect(201)
        .await
        .json();
    // The HTTP layer's record is gone (a crash before it was stored, or its lock expired): the
    // retry still finds the payment, and nothing is charged again.
    assert!(app.raw_exec("DELETE FROM idempotency_keys").await.unwrap() > 0, "the HTTP record is gone");
    let again: Value = app
        .post("/v1/payments", body.clone())
        .tenant(T, ENV)
        .header("Idempotency-Key", "order-77")
        .expect(201)
        .await
        .json();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.ctx.psp.sandbox.ledger().captures(&id(&first).parse().unwrap()).len(), 1);
    assert_eq!(get(&app, "/v1/payments").await["data"].as_array().unwrap().len(), 1);
    // The same key for another charge is refused.
    assert!(app.raw_exec("DELETE FROM idempotency_keys").await.unwrap() > 0, "the HTTP record is gone");
    let mut other = body;
    other["amount"] = json!(2999);
    let r = app
        .post("/v1/payments", other)
        .tenant(T, ENV)
        .header("Idempotency-Key", "order-77")
        .expect(422)
        .await
        .problem();
    assert_eq!(r.errors[0].code, "idempotency_key_reused");
}

both!(
    a_payment_remembers_its_idempotency_key_beyond_the_http_record,
    a_failing_account_opens_its_breaker_and_a_probe_restores_it,
    an_open_breaker_routes_to_the_next_account,
    safe_mode_queues_money_movement_and_lifting_it_resumes,
    sandbox_webhooks_advance_payments_and_refuse_other_accounts
);

/// Every sandbox token, submitted by many tasks at once under one `Idempotency-Key`, then
/// reconciled: one payment per key, and the sandbox's ledger and Azotte's records agree.
async fn every_token_is_charged_at_most_once_under_concurrent_duplicates(app: TestApp) {
    // Three accounts: tok_sandbox_flaky fails softly twice per payment, then succeeds.
    let (sf, accs, cus, _) = sandbox_setup(&app, 3, "tok_sandbox_success").await;
    let mut payments = Vec::new();
    for token in azotte_payments::sandbox::TOKENS {
        let pm = id(&method(&app, &sf, &accs[0], &cus, token).await);
        let body = json!({"customer_id": cus, "payment_method_id": pm, "amount": 1234, "currency": "EUR"});
        let key = format!("dup-{token}");
        let answers = futures::future::join_all((0..8).map(|_| {
            app.post("/v1/payments", body.clone()).tenant(T, ENV).header("Idempotency-Key", &key).send()
        }))
        .await;
        let mut ids: Vec<String> = Vec::new();
        for a in &answers {
            match a.status {
                201 => ids.push(a.json::<Value>()["id"].as_str().unwrap().to_owned()),
                409 => assert_eq!(a.problem().code, "idempotency_key_in_flight"),
                other => panic!("{token}: {other} {}", a.text()),
            }
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{token}: one payment per key, got {ids:?}");
        payments.push((token, ids.remove(0)));
    }
    // Unknown outcomes resolve by lookup once the grace period has passed; nothing is resent.
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    let ledger = app.ctx.psp.sandbox.ledger();
    for (token, p) in &payments {
        let row = get(&app, &format!("/v1/payments/{p}")).await;
        let status = row["status"].as_str().unwrap();
        let captures = ledger.captures(&p.parse().unwrap());
        assert!(captures.len() <= 1, "{token}: charged {} times", captures.len());
        match status {
            "captured" => {
                assert_eq!(captures.len(), 1, "{token}");
                assert_eq!(row["captured_amount"], 1234);
            }
            "failed" | "requires_action" => {
                assert!(captures.is_empty(), "{token} is {status} but was charged")
            }
            other => panic!("{token} left {other}"),
        }
        let expected = match **token {
            "tok_sandbox_success"
            | "tok_sandbox_mastercard"
            | "tok_sandbox_amex"
            | "tok_sandbox_unknown"
            | "tok_sandbox_flaky" => "captured",
            "tok_sandbox_requires_action" => "requires_action",
            _ => "failed",
        };
        assert_eq!(status, expected, "{token}");
    }
    let all = get(&app, "/v1/payments?limit=100").await["data"].as_array().unwrap().len();
    assert_eq!(all, payments.len(), "no payment beyond one per key");
}

async fn failing_reconciliation_lookups_back_off(app: TestApp) {
    let (_, _, cus, pm) = sandbox_setup(&app, 1, "tok_sandbox_unknown").await;
    let p = pay(&app, &cus, &pm, 800, 201).await;
    assert_eq!(p["status"], "unknown");
    // The PSP is down: the lookup fails and the payment waits a minute before the next one.
    app.ctx.psp.sandbox.set_outage(true);
    assert_eq!(azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap(), 0);
    app.ctx.psp.sandbox.set_outage(false);
    assert_eq!(azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap(), 0, "backing off");
    app.ctx.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap(), 1);
    let k = get(&app, &format!("/v1/payments/{}", id(&p))).await;
    assert_eq!(k["status"], "captured");
}

both!(
    every_token_is_charged_at_most_once_under_concurrent_duplicates,
    failing_reconciliation_lookups_back_off
);
