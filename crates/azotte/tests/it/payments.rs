//! Payments through the sandbox PSP: routing, failover only before any charge, unknown
//! outcomes left for reconciliation, refunds under the captured amount (also concurrently),
//! storefront isolation — checked against the sandbox's own ledger.

use crate::both;
use crate::helpers::TestApp;
use azotte_domain::payment::PaymentId;
use serde_json::{json, Value};

const T: &str = "money";
const ENV: &str = "development";

async fn post(app: &TestApp, path: &str, body: Value, status: u16) -> Value {
    app.post(path, body).tenant(T, ENV).expect(status).await.json()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// A storefront with `accounts` sandbox accounts (priorities 10, 20, …) and a customer with a
/// payment method for `token`: (storefront, account ids, customer, payment method).
async fn setup(app: &TestApp, accounts: usize, token: &str) -> (String, Vec<String>, String, String) {
    app.create_tenant(T).await;
    let sf = id(&post(
        app,
        "/v1/storefronts",
        json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
        201,
    )
    .await);
    let mut accs = Vec::new();
    for i in 0..accounts {
        let a = post(
            app,
            &format!("/v1/storefronts/{sf}/psp-accounts"),
            json!({"connector": "sandbox", "display_name": format!("S{i}"), "mode": "test", "priority": 10 * (i + 1)}),
            201,
        )
        .await;
        accs.push(id(&a));
    }
    let cus = id(&post(app, "/v1/customers", json!({"external_id": "payer"}), 201).await);
    let pm = id(&post(
        app,
        &format!("/v1/customers/{cus}/payment-methods"),
        json!({"storefront_id": sf, "psp_account_id": accs[0], "token": token}),
        201,
    )
    .await);
    (sf, accs, cus, pm)
}

async fn charge(app: &TestApp, cus: &str, pm: &str, amount: i64) -> Value {
    post(
        app,
        "/v1/payments",
        json!({"customer_id": cus, "payment_method_id": pm, "amount": amount, "currency": "EUR"}),
        201,
    )
    .await
}

fn pid(v: &Value) -> PaymentId {
    v["id"].as_str().unwrap().parse().unwrap()
}

async fn timeline_types(app: &TestApp, p: &str) -> Vec<String> {
    let t: Value = app.get(&format!("/v1/payments/{p}/timeline")).tenant(T, ENV).expect(200).await.json();
    t["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

async fn a_charge_is_captured_exactly_once_and_journaled(app: TestApp) {
    let (_, accs, cus, pm) = setup(&app, 2, "tok_sandbox_success").await;
    let p = charge(&app, &cus, &pm, 1499).await;
    assert_eq!(
        (p["status"].as_str(), p["captured_amount"].as_i64(), p["attempts"].as_i64()),
        (Some("captured"), Some(1499), Some(1))
    );
    assert_eq!(p["psp_account_id"], accs[0].as_str(), "priority 10 first");
    let ledger = app.ctx.psp.sandbox.ledger();
    assert_eq!(ledger.captures(&pid(&p)).len(), 1);
    let types = timeline_types(&app, p["id"].as_str().unwrap()).await;
    for t in ["payment.create", "payment.routed", "payment.attempt", "payment.captured"] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }
    let got: Value = app.get(&format!("/v1/payments/{}", id(&p))).tenant(T, ENV).expect(200).await.json();
    assert_eq!(got["status"], "captured");
}

async fn a_decline_fails_without_charging(app: TestApp) {
    let (_, _, cus, pm) = setup(&app, 2, "tok_sandbox_decline_insufficient_funds").await;
    let p = charge(&app, &cus, &pm, 1499).await;
    assert_eq!(
        (p["status"].as_str(), p["decline_code"].as_str(), p["attempts"].as_i64()),
        (Some("failed"), Some("insufficient_funds"), Some(1))
    );
    assert!(app.ctx.psp.sandbox.ledger().captures(&pid(&p)).is_empty());
}

async fn soft_failures_fail_over_and_charge_once(app: TestApp) {
    // tok_sandbox_flaky fails softly twice per payment, then succeeds: the third account charges.
    let (_, accs, cus, pm) = setup(&app, 3, "tok_sandbox_flaky").await;
    let p = charge(&app, &cus, &pm, 2500).await;
    assert_eq!((p["status"].as_str(), p["attempts"].as_i64()), (Some("captured"), Some(3)));
    assert_eq!(p["psp_account_id"], accs[2].as_str());
    assert_eq!(app.ctx.psp.sandbox.ledger().captures(&pid(&p)).len(), 1, "charged exactly once");
    let types = timeline_types(&app, p["id"].as_str().unwrap()).await;
    assert_eq!(types.iter().filter(|t| *t == "payment.failover").count(), 2, "{types:?}");
}

async fn an_unknown_outcome_is_never_retried_elsewhere(app: TestApp) {
    let (_, _, cus, pm) = setup(&app, 3, "tok_sandbox_unknown").await;
    let p = charge(&app, &cus, &pm, 990).await;
    assert_eq!((p["status"].as_str(), p["attempts"].as_i64()), (Some("unknown"), Some(1)));
    // The sandbox did charge; nothing charged a second time.
    assert_eq!(app.ctx.psp.sandbox.ledger().captures(&pid(&p)).len(), 1);
    // Reconciliation asks the PSP by our reference and applies what it finds — no new charge.
    assert_eq!(azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap(), 1);
    let got: Value = app.get(&format!("/v1/payments/{}", id(&p))).tenant(T, ENV).expect(200).await.json();
    assert_eq!((got["status"].as_str(), got["captured_amount"].as_i64()), (Some("captured"), Some(990)));
    assert_eq!(app.ctx.psp.sandbox.ledger().captures(&pid(&p)).len(), 1, "still charged exactly once");
    assert!(timeline_types(&app, p["id"].as_str().unwrap()).await.iter().any(|t| t == "payment.reconciled"));
    assert_eq!(azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap(), 0, "nothing left");
}

async fn refunds_never_exceed_the_captured_amount(app: TestApp) {
    let (_, _, cus, pm) = setup(&app, 1, "tok_sandbox_success").await;
    let p = id(&charge(&app, &cus, &pm, 1499).await);
    let refunds = format!("/v1/payments/{p}/refunds");
    let r = post(&app, &refunds, json!({"amount": 500, "reason": "goodwill"}), 201).await;
    assert_eq!(r["status"], "succeeded");
    let too_much = app.post(&refunds, json!({"amount": 1000})).tenant(T, ENV).expect(409).await.problem();
    assert_eq!(too_much.code, "refund_exceeds_captured");
    let rest = post(&app, &refunds, json!({}), 201).await;
    assert_eq!(rest["amount"], 999);
    app.post(&refunds, json!({"amount": 1})).tenant(T, ENV).expect(409).await;
    let got: Value = app.get(&format!("/v1/payments/{p}")).tenant(T, ENV).expect(200).await.json();
    assert_eq!((got["refunded_amount"].as_i64(), got["refunds"].as_array().unwrap().len()), (Some(1499), 2));
    assert_eq!(app.ctx.psp.sandbox.ledger().refunded(&p.parse().unwrap()), 1499);

    // Concurrent refunds of 300 on a fresh 1499 payment: at most four land.
    let p2 = id(&charge(&app, &cus, &pm, 1499).await);
    let calls = (0..10).map(|_| {
        app.post(&format!("/v1/payments/{p2}/refunds"), json!({"amount": 300})).tenant(T, ENV).send()
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 201).count();
    assert!(
        results.iter().all(|r| r.status == 201 || r.status == 409),
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(ok, 4, "1499 / 300 = 4 refunds fit");
    let got: Value = app.get(&format!("/v1/payments/{p2}")).tenant(T, ENV).expect(200).await.json();
    assert_eq!(got["refunded_amount"], 1200);
    assert_eq!(app.ctx.psp.sandbox.ledger().refunded(&p2.parse().unwrap()), 1200);
    // The database refuses a refunded total above the captured amount even for its owner.
    assert!(app
        .raw_exec(&format!("UPDATE payments SET refunded_amount = 5000 WHERE id = '{p2}'"))
        .await
        .is_err());
}

async fn a_payment_never_touches_another_storefronts_accounts(app: TestApp) {
    let (_, accs, cus, pm) = setup(&app, 1, "tok_sandbox_success").await;
    // Storefront B with its own healthy-looking account.
    let b = id(&post(
        &app,
        "/v1/storefronts",
        json!({"name": "B", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
        201,
    )
    .await);
    let acc_b = id(&post(
        &app,
        &format!("/v1/storefronts/{b}/psp-accounts"),
        json!({"connector": "sandbox", "display_name": "B", "mode": "test"}),
        201,
    )
    .await);
    // A's only account is down: the payment fails (nothing charged), B's account is never tried.
    app.ctx.psp.sandbox.set_outage(true);
    let p = charge(&app, &cus, &pm, 700).await;
    app.ctx.psp.sandbox.set_outage(false);
    assert_eq!(
        (p["status"].as_str(), p["decline_code"].as_str(), p["attempts"].as_i64()),
        (Some("failed"), Some("psp_unavailable"), Some(1))
    );
    assert_eq!(p["psp_account_id"], accs[0].as_str());
    assert!(app.ctx.psp.sandbox.ledger().for_payment(&pid(&p)).is_empty());
    let t: Value =
        app.get(&format!("/v1/payments/{}/timeline", id(&p))).tenant(T, ENV).expect(200).await.json();
    assert!(
        !t.to_string().contains(&acc_b),
        "storefront B's account appears nowhere in the payment's journal"
    );
    // Forcing another storefront's account is refused.
    let r = app
        .post("/v1/payments", json!({"customer_id": cus, "payment_method_id": pm, "amount": 1, "currency": "EUR", "psp_account_id": acc_b}))
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!(r.errors[0].code, "psp_account_not_in_storefront");
}

/// The platform keys its own charges `checkout-…`, `renewal-…`, `replace-…`: a client's
/// `Idempotency-Key` in that space is refused, so it can never be taken for one of them.
async fn a_clients_key_cannot_be_one_of_the_platforms(app: TestApp) {
    let (_, _, cus, pm) = setup(&app, 1, "tok_sandbox_success").await;
    for key in ["renewal-sub_x-1", "checkout-chk_x", "replace-sub_x-1"] {
        let r = app
            .post(
                "/v1/payments",
                json!({"customer_id": cus, "payment_method_id": pm, "amount": 100, "currency": "EUR"}),
            )
            .tenant(T, ENV)
            .header("Idempotency-Key", key)
            .expect(422)
            .await
            .problem();
        assert_eq!(
            (r.errors[0].field.as_str(), r.errors[0].code.as_str()),
            ("Idempotency-Key", "idempotency_key_reserved")
        );
    }
    assert!(app.ctx.psp.sandbox.ledger().entries().is_empty(), "nothing charged");
    // Any other key is the client's.
    let ok = app
        .post(
            "/v1/payments",
            json!({"customer_id": cus, "payment_method_id": pm, "amount": 100, "currency": "EUR"}),
        )
        .tenant(T, ENV)
        .header("Idempotency-Key", "order-renewal-7")
        .expect(201)
        .await
        .json::<Value>();
    assert_eq!(ok["status"], "captured");
}

/// A refund sent while the PSP is down stays `pending` with its amount reserved; once the PSP
/// is back, reconciliation finds it never arrived and sends it again under the same
/// idempotency key, so the money does go back — once.
async fn a_refund_the_psp_never_received_is_sent_again(app: TestApp) {
    let (_, _, cus, pm) = setup(&app, 1, "tok_sandbox_success").await;
    let p = id(&charge(&app, &cus, &pm, 1499).await);
    app.ctx.psp.sandbox.set_outage(true);
    let r = post(&app, &format!("/v1/payments/{p}/refunds"), json!({"reason": "goodwill"}), 201).await;
    assert_eq!(r["status"], "pending", "{r}");
    // Still down at the first reconciliation: left pending, nothing refunded.
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().refunded(&p.parse().unwrap()), 0);
    app.ctx.psp.sandbox.set_outage(false);
    // Back (after the lookup's backoff): not at the PSP, so sent again, and it succeeds.
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    let got = app
        .raw_strings(&format!(
            "SELECT r.status || ' ' || p.refunded_amount FROM refunds r JOIN payments p ON p.id = r.payment_id \
             WHERE p.id = '{p}'"
        ))
        .await;
    assert_eq!(got, vec!["succeeded 1499".to_owned()]);
    assert_eq!(app.ctx.psp.sandbox.ledger().refunded(&p.parse().unwrap()), 1499);
    // Later passes change nothing.
    app.ctx.clock.advance(chrono::Duration::hours(1));
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().refunded(&p.parse().unwrap()), 1499);
}

both!(
    a_charge_is_captured_exactly_once_and_journaled,
    a_decline_fails_without_charging,
    soft_failures_fail_over_and_charge_once,
    an_unknown_outcome_is_never_retried_elsewhere,
    refunds_never_exceed_the_captured_amount,
    a_payment_never_touches_another_storefronts_accounts,
    a_refund_the_psp_never_received_is_sent_again,
    a_clients_key_cannot_be_one_of_the_platforms
);
