//! The flow every tenant integrates first: customer → offer → checkout (202, poll) →
//! subscription → entitlements; trials, eligibility, the lifecycle operations and bad input.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_app_through_cut_proxy, Cut, TestApp};
use crate::{both, both_numberings};

const T: &str = "subs";
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

struct Shop {
    sf: String,
    cus: String,
    pm: String,
    /// Monthly 9.99 EUR, no trial.
    monthly: String,
    /// Monthly 4.99 EUR with a 14-day trial (no payment method required).
    trial: String,
}

async fn shop(app: &TestApp, token: &str) -> Shop {
    app.create_tenant(T).await;
    let sf = id(&post(
        app,
        "/v1/storefronts",
        json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE", "AT"],
               "tax": {"kind": "inclusive", "rate_bp": 1900, "overrides": {"AT": 2000}}}),
        201,
    )
    .await);
    post(app, "/v1/entitlements", json!({"key": "hd", "name": "HD", "kind": "boolean"}), 201).await;
    post(
        app,
        "/v1/entitlements",
        json!({"key": "video", "name": "Video", "kind": "boolean", "includes": ["hd"]}),
        201,
    )
    .await;
    post(
        app,
        "/v1/entitlements",
        json!({"key": "screens", "name": "Screens", "kind": "quantity", "unit": "screens"}),
        201,
    )
    .await;
    let premium = id(&post(
        app,
        "/v1/bundles",
        json!({"key": "premium", "name": "Premium", "type": "subscription", "status": "active", "family": "video",
               "entitlements": [{"key": "video"}, {"key": "screens", "quantity": 4}]}),
        201,
    )
    .await);
    let basic = id(&post(
        app,
        "/v1/bundles",
        json!({"key": "basic", "name": "Basic", "type": "subscription", "status": "active", "family": "music",
               "entitlements": [{"key": "hd"}]}),
        201,
    )
    .await);
    let monthly = id(&post(
        app,
        "/v1/prices",
        json!({"bundle_id": premium, "storefront_id": sf, "currency": "EUR", "amount": 999, "billing_period": {"unit": "month", "count": 1}}),
        201,
    )
    .await);
    let trial = id(&post(
        app,
        "/v1/prices",
        json!({"bundle_id": basic, "storefront_id": sf, "currency": "EUR", "amount": 499, "billing_period": {"unit": "month", "count": 1},
               "trial": {"days": 14, "payment_method_required": false}}),
        201,
    )
    .await);
    let acc = id(&post(
        app,
        &format!("/v1/storefronts/{sf}/psp-accounts"),
        json!({"connector": "sandbox", "display_name": "Sandbox", "mode": "test"}),
        201,
    )
    .await);
    let cus = id(&post(app, "/v1/customers", json!({"external_id": "viewer-1", "country": "AT"}), 201).await);
    let pm = id(&post(
        app,
        &format!("/v1/customers/{cus}/payment-methods"),
        json!({"storefront_id": sf, "psp_account_id": acc, "token": token}),
        201,
    )
    .await);
    Shop { sf, cus, pm, monthly, trial }
}

/// An API key of the tenant's development environment (access tokens do not survive the clock
/// moving by days).
async fn key(app: &TestApp) -> String {
    app.admin_mfa().await;
    let k = app.api_key(T, ENV, json!({"description": "ops", "role": "tenant_admin"})).await;
    k["secret"].as_str().unwrap().to_owned()
}

async fn offer(app: &TestApp, shop: &Shop) -> Value {
    post(app, "/v1/offers", json!({"customer_id": shop.cus, "storefront_id": shop.sf}), 201).await
}

/// Polls a checkout until it leaves `processing` (checking `Retry-After` while it is).
async fn settle(app: &TestApp, checkout: &str) -> Value {
    for _ in 0..200 {
        let r = app.get(&format!("/v1/checkouts/{checkout}")).tenant(T, ENV).expect(200).await;
        let v: Value = r.json();
        if v["status"] != "processing" {
            return v;
        }
        assert_eq!(r.header("retry-after"), Some("1"));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("checkout {checkout} still processing");
}

async fn checkout(app: &TestApp, shop: &Shop, offer: &Value, price: &str) -> Value {
    let c = post(
        app,
        "/v1/checkouts",
        json!({"customer_id": shop.cus, "offer_id": offer["id"], "price_id": price, "payment_method_id": shop.pm}),
        202,
    )
    .await;
    assert_eq!(c["status"], "processing");
    settle(app, &id(&c)).await
}

async fn from_offer_to_entitlements(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    let items = o["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let monthly = items.iter().find(|i| i["price_id"] == shop.monthly.as_str()).unwrap();
    // Austria: 20 % VAT included in 9.99.
    assert_eq!((monthly["amount"].as_i64(), monthly["tax_rate_bp"].as_i64()), (Some(999), Some(2000)));
    assert_eq!(monthly["net"].as_i64().unwrap() + monthly["tax"].as_i64().unwrap(), 999);
    let trial = items.iter().find(|i| i["price_id"] == shop.trial.as_str()).unwrap();
    assert_eq!(
        (trial["trial_days"].as_i64(), trial["trial_reasons"][0].as_str()),
        (Some(14), Some("eligible"))
    );

    let done = checkout(&app, &shop, &o, &shop.monthly).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let sub = get(&app, &format!("/v1/subscriptions/{}", done["subscription_id"].as_str().unwrap())).await;
    assert_eq!((sub["status"].as_str(), sub["amount"].as_i64()), (Some("active"), Some(999)));
    let payment = done["payment_id"].as_str().unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().captured(&payment.parse().unwrap()), 999);

    // Entitlements: the bundle's, with includes expanded.
    let ents = get(&app, &format!("/v1/customers/{}/entitlements", shop.cus)).await;
    let keys: Vec<&str> =
        ents["data"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["hd", "screens", "video"]);
    let screens = get(&app, &format!("/v1/customers/{}/entitlements/screens", shop.cus)).await;
    assert_eq!(
        (screens["quantity"].as_i64(), screens["unit"].as_str(), screens["access"].as_str()),
        (Some(4), Some("screens"), Some("full"))
    );
    assert_eq!(screens["subscription_id"], sub["id"]);
    let missing = app
        .get(&format!("/v1/customers/{}/entitlements/4k", shop.cus))
        .tenant(T, ENV)
        .expect(404)
        .await
        .problem();
    assert_eq!(missing.code, "entitlement_not_found");
    // A customer without subscriptions holds nothing; an unknown customer is not found.
    let other =
        id(&post(&app, "/v1/customers", json!({"external_id": "viewer-2", "country": "DE"}), 201).await);
    assert_eq!(get(&app, &format!("/v1/customers/{other}/entitlements")).await["data"], json!([]));
    for (cus, code) in
        [(other.as_str(), "entitlement_not_found"), ("cus_00000000000000000000000000", "customer_not_found")]
    {
        let p = app
            .get(&format!("/v1/customers/{cus}/entitlements/hd"))
            .tenant(T, ENV)
            .expect(404)
            .await
            .problem();
        assert_eq!(p.code, code);
    }
    let p =
        app.get("/v1/customers/cus_00000000000000000000000000/entitlements").tenant(T, ENV).expect(404).await;
    assert_eq!(p.problem().code, "customer_not_found");

    // One correlation id from the checkout request to the subscription's outcomes.
    let timeline = get(&app, &format!("/v1/subscriptions/{}/timeline", id(&sub))).await;
    let created = timeline["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "subscription.created")
        .unwrap()
        .clone();
    let cor = created["correlation_id"].as_str().unwrap();
    let lineage: Value = get(&app, &format!("/v1/lineage/{cor}")).await;
    // The job's entries hang under the request's action that queued it (causation ids): one tree.
    let roots = lineage["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{lineage:#}");
    assert_eq!(roots[0]["type"], "checkout.create");
    let job_actions: Vec<&Value> =
        roots[0]["children"].as_array().unwrap().iter().filter(|e| e["kind"] == "action").collect();
    assert!(!job_actions.is_empty(), "{lineage:#}");
    assert!(job_actions.iter().all(|e| e["causation_id"] == roots[0]["id"]));
    let text = lineage.to_string();
    for t in [
        "checkout.create",
        "payment.routed",
        "payment.captured",
        "subscription.created",
        "entitlements.granted",
        "checkout.succeeded",
    ] {
        assert!(text.contains(t), "{t} in the lineage of {cor}");
    }

    // Already subscribed in this family: the next offer leaves the family out.
    let again = offer(&app, &shop).await;
    assert!(again["items"].as_array().unwrap().iter().all(|i| i["family"] != "video"));
}

async fn a_trial_needs_no_charge_and_is_offered_once_per_family(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    let c = post(
        &app,
        "/v1/checkouts",
        json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.trial}),
        202,
    )
    .await;
    let done = settle(&app, &id(&c)).await;
    assert_eq!((done["status"].as_str(), done["payment_id"].as_str()), (Some("succeeded"), None));
    let sub = get(&app, &format!("/v1/subscriptions/{}", done["subscription_id"].as_str().unwrap())).await;
    assert_eq!(sub["status"], "trialing");
    assert!(app.ctx.psp.sandbox.ledger().is_empty(), "a trial charges nothing");
    // Cancel immediately: access ends; the family's trial is used.
    let opts = post(&app, &format!("/v1/subscriptions/{}/cancel-request", id(&sub)), json!({}), 200).await;
    assert_eq!(opts["methods"], json!(["end_of_period", "immediate"]));
    let canceled = post(
        &app,
        &format!("/v1/subscriptions/{}/cancel", id(&sub)),
        json!({"method": "immediate", "reason_code": "not_using", "survey": {"comment": "too busy"}}),
        200,
    )
    .await;
    assert_eq!(
        (canceled["status"].as_str(), canceled["canceled_immediately"].as_bool()),
        (Some("canceled"), Some(true))
    );
    app.get(&format!("/v1/customers/{}/entitlements/hd", shop.cus)).tenant(T, ENV).expect(404).await;
    let r = app
        .post(&format!("/v1/subscriptions/{}/reactivate", id(&sub)), json!({}))
        .tenant(T, ENV)
        .expect(409)
        .await
        .problem();
    assert_eq!(r.code, "canceled_immediately");
    // The worker expires it; no new trial for the family, and the decision says why.
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(get(&app, &format!("/v1/subscriptions/{}", id(&sub))).await["status"], "expired");
    let again = offer(&app, &shop).await;
    let item = again["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["price_id"] == shop.trial.as_str())
        .unwrap()
        .clone();
    assert_eq!(item["trial_days"], 0);
    assert!(item["trial_reasons"].as_array().unwrap().contains(&json!("trial_already_used")), "{item}");
    // The other family has no history: its price is offered as it is.
    let other = again["items"].as_array().unwrap().iter().find(|i| i["price_id"] == shop.monthly.as_str());
    assert_eq!(other.map(|i| i["trial_reasons"].clone()), Some(json!(["no_trial_on_price"])), "{again}");
}

async fn end_of_period_cancel_keeps_access_and_can_be_undone(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    let done = checkout(&app, &shop, &o, &shop.monthly).await;
    let sid = done["subscription_id"].as_str().unwrap().to_owned();
    // Subscribed in the video family: a new offer leaves it out, and offers the music family's
    // trial still.
    let next = offer(&app, &shop).await;
    let prices: Vec<&str> =
        next["items"].as_array().unwrap().iter().map(|i| i["price_id"].as_str().unwrap()).collect();
    assert_eq!(prices, [shop.trial.as_str()], "{next}");
    assert_eq!(next["items"][0]["trial_days"], 14);
    let sub = get(&app, &format!("/v1/subscriptions/{sid}")).await;
    let c = post(
        &app,
        &format!("/v1/subscriptions/{sid}/cancel"),
        json!({"method": "end_of_period", "reason_code": "too_expensive"}),
        200,
    )
    .await;
    assert_eq!(
        (c["status"].as_str(), c["ends_at"].as_str()),
        (Some("canceled"), sub["current_period_end"].as_str())
    );
    assert_eq!(
        get(&app, &format!("/v1/customers/{}/entitlements/video", shop.cus)).await["until"],
        c["ends_at"]
    );
    let back = post(&app, &format!("/v1/subscriptions/{sid}/reactivate"), json!({}), 200).await;
    assert_eq!((back["status"].as_str(), back["ends_at"].as_str()), (Some("active"), None));
    // Pause, resume, defer, extend; a bad cancel reason; after the period the reactivation is refused.
    assert_eq!(
        post(&app, &format!("/v1/subscriptions/{sid}/pause"), json!({}), 200).await["status"],
        "paused"
    );
    app.get(&format!("/v1/customers/{}/entitlements/video", shop.cus)).tenant(T, ENV).expect(404).await;
    assert_eq!(
        post(&app, &format!("/v1/subscriptions/{sid}/resume"), json!({}), 200).await["status"],
        "active"
    );
    let before = get(&app, &format!("/v1/subscriptions/{sid}")).await["current_period_end"].clone();
    let deferred = post(&app, &format!("/v1/subscriptions/{sid}/defer"), json!({"days": 3}), 200).await;
    assert_ne!(deferred["current_period_end"], before);
    app.post(&format!("/v1/subscriptions/{sid}/extend"), json!({"days": 0})).tenant(T, ENV).expect(422).await;
    let bad = app
        .post(
            &format!("/v1/subscriptions/{sid}/cancel"),
            json!({"method": "immediate", "reason_code": "because"}),
        )
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!(bad.errors[0].field, "reason_code");
    post(
        &app,
        &format!("/v1/subscriptions/{sid}/cancel"),
        json!({"method": "end_of_period", "reason_code": "other"}),
        200,
    )
    .await;
    let k = key(&app).await;
    app.ctx.clock.advance(chrono::Duration::days(40));
    let r = app
        .post(&format!("/v1/subscriptions/{sid}/reactivate"), json!({}))
        .token(&k)
        .header("x-tn", T)
        .expect(409)
        .await
        .problem();
    assert_eq!(r.code, "period_ended");
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let ended: Value =
        app.get(&format!("/v1/subscriptions/{sid}")).token(&k).header("x-tn", T).expect(200).await.json();
    assert_eq!(ended["status"], "expired");
    let r = app
        .post(
            &format!("/v1/subscriptions/{sid}/cancel"),
            json!({"method": "immediate", "reason_code": "other"}),
        )
        .token(&k)
        .header("x-tn", T)
        .expect(409)
        .await
        .problem();
    assert_eq!(r.code, "expired");
    app.get(&format!("/v1/customers/{}/entitlements/video", shop.cus))
        .token(&k)
        .header("x-tn", T)
        .expect(404)
        .await;
    let list: Value = app
        .get(&format!("/v1/subscriptions?customer_id={}&status=expired", shop.cus))
        .token(&k)
        .header("x-tn", T)
        .expect(200)
        .await
        .json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

async fn concurrent_duplicate_checkouts_charge_once(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    let earlier = offer(&app, &shop).await;
    let body = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let answers = futures::future::join_all((0..8).map(|_| {
        app.post("/v1/checkouts", body.clone()).tenant(T, ENV).header("Idempotency-Key", "buy-1").send()
    }))
    .await;
    let mut ids: Vec<String> =
        answers.iter().filter(|a| a.status == 202).map(|a| id(&a.json::<Value>())).collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one checkout per key");
    assert!(answers.iter().all(|a| a.status == 202 || a.status == 409));
    let done = settle(&app, &ids[0]).await;
    assert_eq!(done["status"], "succeeded");
    // A second checkout of the family with another key — of the same offer, or of another made
    // before the purchase — cannot subscribe or charge twice.
    let again = post(&app, "/v1/checkouts", body.clone(), 202).await;
    assert_eq!(settle(&app, &id(&again)).await["failure_code"], "already_subscribed");
    let other = post(
        &app,
        "/v1/checkouts",
        json!({"customer_id": shop.cus, "offer_id": earlier["id"], "price_id": shop.monthly, "payment_method_id": shop.pm}),
        202,
    )
    .await;
    let failed = settle(&app, &id(&other)).await;
    assert_eq!(
        (failed["status"].as_str(), failed["failure_code"].as_str()),
        (Some("failed"), Some("already_subscribed"))
    );
    let ledger = app.ctx.psp.sandbox.ledger();
    let charged: i64 = ledger
        .entries()
        .iter()
        .filter(|e| matches!(e.kind, azotte_payments::EntryKind::Capture))
        .map(|e| e.amount)
        .sum();
    assert_eq!(charged, 999, "charged once in all");
    assert_eq!(
        get(&app, &format!("/v1/subscriptions?customer_id={}", shop.cus)).await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn a_declined_card_fails_the_checkout_with_its_reason(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_decline_insufficient_funds").await;
    let o = offer(&app, &shop).await;
    let done = checkout(&app, &shop, &o, &shop.monthly).await;
    assert_eq!(
        (done["status"].as_str(), done["failure_code"].as_str()),
        (Some("failed"), Some("insufficient_funds"))
    );
    assert_eq!(get(&app, &format!("/v1/subscriptions?customer_id={}", shop.cus)).await["data"], json!([]));
}

async fn bad_checkouts_get_stable_codes(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    let refused = |body: Value, status: u16| {
        let app = &app;
        async move { app.post("/v1/checkouts", body).tenant(T, ENV).expect(status).await.problem() }
    };
    let base = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    assert_eq!(
        refused(with("offer_id", json!("ofr_01jdq3m9x7e5k4w2c8v6b0n1p2")), 404).await.code,
        "offer_not_found"
    );
    assert_eq!(
        refused(with("customer_id", json!("cus_01jdq3m9x7e5k4w2c8v6b0n1p2")), 404).await.code,
        "customer_not_found"
    );
    let other = id(&post(&app, "/v1/customers", json!({"external_id": "viewer-2"}), 201).await);
    assert_eq!(
        refused(with("customer_id", json!(other)), 422).await.errors[0].code,
        "offer_customer_mismatch"
    );
    assert_eq!(
        refused(with("price_id", json!("prc_01jdq3m9x7e5k4w2c8v6b0n1p2")), 422).await.errors[0].code,
        "price_not_in_offer"
    );
    assert_eq!(
        refused(with("payment_method_id", Value::Null), 422).await.errors[0].code,
        "payment_method_required"
    );
    let showcase = post(&app, "/v1/offers", json!({"storefront_id": shop.sf}), 201).await;
    assert_eq!(showcase["intent"], "showcase");
    assert_eq!(refused(with("offer_id", showcase["id"].clone()), 409).await.code, "offer_not_checkoutable");
    let promo = app
        .post(
            "/v1/offers",
            json!({"customer_id": shop.cus, "storefront_id": shop.sf, "promotion_code": "FREE"}),
        )
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!(promo.errors[0].code, "promotion_code_invalid");
    let k = key(&app).await;
    app.ctx.clock.advance(chrono::Duration::minutes(31));
    let expired = app.post("/v1/checkouts", base).token(&k).header("x-tn", T).expect(409).await.problem();
    assert_eq!(expired.code, "offer_expired");
}

/// Checkout requests arriving together are read together (decision 0007, "Checkouts written
/// together"), and each is checked on its own: in one batch, every bad request gets its own
/// stable code and the good ones go through.
async fn checkouts_read_together_each_get_their_own_answer(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let acc = id(&get(&app, &format!("/v1/storefronts/{}/psp-accounts", shop.sf)).await["data"][0]);
    let o = offer(&app, &shop).await;
    let base = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let with = |b: &Value, k: &str, v: Value| {
        let mut b = b.clone();
        b[k] = v;
        b
    };
    let other = id(&post(&app, "/v1/customers", json!({"external_id": "viewer-2"}), 201).await);
    let o2 = post(&app, "/v1/offers", json!({"customer_id": other, "storefront_id": shop.sf}), 201).await;
    let third = id(&post(&app, "/v1/customers", json!({"external_id": "viewer-3"}), 201).await);
    let o3 = post(&app, "/v1/offers", json!({"customer_id": third, "storefront_id": shop.sf}), 201).await;
    let showcase = post(&app, "/v1/offers", json!({"storefront_id": shop.sf}), 201).await;
    let unknown = json!("cus_01jdq3m9x7e5k4w2c8v6b0n1p2");
    let others = json!({"customer_id": other, "offer_id": o2["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let token = |account: &str| {
        json!({"customer_id": third, "offer_id": o3["id"], "price_id": shop.monthly,
                                      "payment_method": {"psp_account_id": account, "token": "tok_sandbox_success"}})
    };
    // (body, status, code): the code of the problem, or of its first field error.
    let cases = [
        (base.clone(), 202, ""),
        (with(&base, "offer_id", json!("ofr_01jdq3m9x7e5k4w2c8v6b0n1p2")), 404, "offer_not_found"),
        (with(&base, "customer_id", unknown), 404, "customer_not_found"),
        (with(&base, "customer_id", json!(other)), 422, "offer_customer_mismatch"),
        (with(&base, "price_id", json!("prc_01jdq3m9x7e5k4w2c8v6b0n1p2")), 422, "price_not_in_offer"),
        (with(&base, "payment_method_id", Value::Null), 422, "payment_method_required"),
        (with(&base, "offer_id", showcase["id"].clone()), 409, "offer_not_checkoutable"),
        (others, 404, "payment_method_not_found"),
        (token("psp_01jdq3m9x7e5k4w2c8v6b0n1p2"), 422, "psp_account_not_in_storefront"),
        (token(&acc), 202, ""),
    ];
    let before = azotte_service::subscriptions::checkout::read_together();
    let held = app.hold_reads("offers").await;
    let send = |b: &Value| {
        let (app, b) = (&app, b.clone());
        async move { app.post("/v1/checkouts", b).tenant(T, ENV).send().await }
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(cases.iter().map(|c| send(&c.0))), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        held.release().await;
    });
    let after = azotte_service::subscriptions::checkout::read_together();
    for ((body, status, code), a) in cases.iter().zip(&answers) {
        assert_eq!(a.status, *status, "{body}: {}", a.text());
        if a.status == 202 {
            assert_eq!(settle(&app, &id(&a.json())).await["status"], "succeeded", "{body}");
        } else {
            let p = a.problem();
            let got = p.errors.first().map_or(p.code.as_str(), |e| e.code.as_str());
            assert_eq!(got, *code, "{body}: {}", a.text());
        }
    }
    let (read, transactions) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(read, cases.len() as u64, "every request read in a batch");
    if app.backend == crate::helpers::Backend::Postgres {
        // The offers' reads held: the requests waited for the first batch, together.
        assert!(transactions < read, "{read} requests in {transactions} transactions");
    }
}

/// A double click without an `Idempotency-Key`: while the first checkout of an offered item is
/// in progress, a second is refused up front (409 `offer_in_checkout`) and nothing more is
/// charged; once the first has ended, the item may be checked out again.
async fn a_second_checkout_of_an_item_in_progress_is_refused(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    let body = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    app.ctx.psp.sandbox.set_extra_latency(Duration::from_millis(800));
    let first = post(&app, "/v1/checkouts", body.clone(), 202).await;
    let second = app.post("/v1/checkouts", body.clone()).tenant(T, ENV).expect(409).await.problem();
    assert_eq!(second.code, "offer_in_checkout");
    app.ctx.psp.sandbox.set_extra_latency(Duration::ZERO);
    assert_eq!(settle(&app, &id(&first)).await["status"], "succeeded");
    assert_eq!(app.sandbox_captured(), 999, "charged once");
    // Ended: accepted again (and refused by its job, the family being subscribed, unpaid).
    let later = post(&app, "/v1/checkouts", body, 202).await;
    assert_eq!(settle(&app, &id(&later)).await["failure_code"], "already_subscribed");
    assert_eq!(app.sandbox_captured(), 999);
}

/// A checkout with a new PSP token: the PSP validates it between the checkout's reads and its
/// write, and it is recorded — the customer's default, as its first method — in the checkout's
/// own transaction, journaled in the checkout's lineage; the subscription is paid and renews
/// with it. A token of the wrong form is refused before anything is sent, and a checkout
/// refused after the PSP validated its token (its item already in checkout) records no method.
async fn a_checkout_with_a_new_token_attaches_it_in_the_checkouts_transaction(app: TestApp) {
    // The shop's customer's stored method needs 3-D Secure: its checkout stays in progress.
    let shop = shop(&app, "tok_sandbox_requires_action").await;
    let acc = id(&get(&app, &format!("/v1/storefronts/{}/psp-accounts", shop.sf)).await["data"][0]);
    let methods = |cus: String| {
        let app = &app;
        async move {
            get(app, &format!("/v1/customers/{cus}/payment-methods")).await["data"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let with_token = |cus: &str, o: &Value, token: &str| {
        json!({"customer_id": cus, "offer_id": o["id"], "price_id": shop.monthly,
               "payment_method": {"psp_account_id": acc, "token": token}})
    };
    let o = offer(&app, &shop).await;
    let waiting = checkout(&app, &shop, &o, &shop.monthly).await;
    assert_eq!(waiting["status"], "requires_action", "{waiting}");
    let refused = app
        .post("/v1/checkouts", with_token(&shop.cus, &o, "tok_sandbox_success"))
        .tenant(T, ENV)
        .expect(409)
        .await
        .problem();
    assert_eq!(refused.code, "offer_in_checkout");
    assert_eq!(methods(shop.cus.clone()).await.len(), 1, "the validated token was not recorded");
    // … and the PSP, which validated and attached it, was told to let it go.
    let detached: Vec<String> =
        app.ctx.psp.sandbox.detached().into_iter().map(|(a, _)| a.to_string()).collect();
    assert_eq!(detached, std::slice::from_ref(&acc));
    // The card of the stored method sent again (a double click): refused as well, and not
    // detached — the stored method holds it.
    let again = app
        .post("/v1/checkouts", with_token(&shop.cus, &o, "tok_sandbox_requires_action"))
        .tenant(T, ENV)
        .expect(409)
        .await
        .problem();
    assert_eq!(again.code, "offer_in_checkout");
    assert_eq!(app.ctx.psp.sandbox.detached().len(), 1, "the stored method's token stays attached");

    // A new customer pays with a new token.
    let cus =
        id(&post(&app, "/v1/customers", json!({"external_id": "viewer-2", "country": "DE"}), 201).await);
    let o2 = post(&app, "/v1/offers", json!({"customer_id": cus, "storefront_id": shop.sf}), 201).await;
    let bad = app
        .post("/v1/checkouts", with_token(&cus, &o2, "pm_card_visa"))
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!((bad.errors[0].field.as_str(), bad.errors[0].code.as_str()), ("token", "invalid_token"));
    let both_given = {
        let mut b = with_token(&cus, &o2, "tok_sandbox_success");
        b["payment_method_id"] = json!(shop.pm);
        app.post("/v1/checkouts", b).tenant(T, ENV).expect(422).await.problem()
    };
    assert_eq!(both_given.errors[0].code, "conflicting_fields");
    assert!(methods(cus.clone()).await.is_empty(), "nothing recorded by refused checkouts");
    let c = post(&app, "/v1/checkouts", with_token(&cus, &o2, "tok_sandbox_mastercard"), 202).await;
    let done = settle(&app, &id(&c)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let pms = methods(cus.clone()).await;
    assert_eq!(pms.len(), 1, "{pms:?}");
    assert_eq!(app.ctx.psp.sandbox.detached().len(), 1, "a recorded method stays attached");
    let pm = &pms[0];
    assert_eq!(
        (pm["brand"].as_str(), pm["last4"].as_str(), pm["default"].as_bool()),
        (Some("mastercard"), Some("4444"), Some(true))
    );
    let sub = get(&app, &format!("/v1/subscriptions/{}", done["subscription_id"].as_str().unwrap())).await;
    assert_eq!(sub["payment_method_id"], pm["id"]);
    let payment = get(&app, &format!("/v1/payments/{}", done["payment_id"].as_str().unwrap())).await;
    assert_eq!(
        (payment["status"].as_str(), payment["payment_method_id"].as_str()),
        (Some("captured"), pm["id"].as_str())
    );
    // Journaled in the checkout's lineage.
    let attached =
        get(&app, &format!("/v1/journal?type=payment_method.attached&resource_id={}", id(pm))).await;
    let created = get(&app, &format!("/v1/journal?type=checkout.create&resource_id={}", id(&c))).await;
    assert_eq!(
        attached["data"][0]["correlation_id"], created["data"][0]["correlation_id"],
        "{attached} {created}"
    );
}

/// A checkout's charge is recorded in the transaction that writes the checkout, as its job's
/// first step: in the job's name (the system job `checkout`, not the caller) and lineage
/// (caused by the request's `checkout.create`), its first attempt started — then sent by the
/// job. A checkout the job must take from the start (here: safe mode, lifted later) records
/// its charge in the job's own transaction, in the same name and lineage.
async fn a_checkouts_charge_is_recorded_with_the_checkout_in_its_jobs_name(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let done = checkout(&app, &shop, &offer(&app, &shop).await, &shop.monthly).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let pid = charged_by_its_job(&app, &done).await;
    let attempt = only_entry(&app, "payment.attempt", &pid).await;
    let by = (attempt["principal"]["kind"].as_str(), attempt["principal"]["id"].as_str());
    assert_eq!(by, (Some("system"), Some("checkout")), "{attempt}");
    let payment = get(&app, &format!("/v1/payments/{pid}")).await;
    assert_eq!(payment["attempts"], 1, "{payment}");

    // Safe mode: the checkout is written without a charge; its job queues the charge, and it
    // is sent once safe mode is lifted.
    let cus =
        id(&post(&app, "/v1/customers", json!({"external_id": "viewer-2", "country": "DE"}), 201).await);
    let pm = post(
        &app,
        &format!("/v1/customers/{cus}/payment-methods"),
        json!({"storefront_id": shop.sf,
               "psp_account_id": id(&get(&app, &format!("/v1/storefronts/{}/psp-accounts", shop.sf)).await["data"][0]),
               "token": "tok_sandbox_success"}),
        201,
    )
    .await;
    let o = post(&app, "/v1/offers", json!({"customer_id": cus, "storefront_id": shop.sf}), 201).await;
    app.admin_mfa().await;
    let safe_mode = |on: bool| {
        let app = &app;
        async move {
            app.request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
                .json(json!({"enabled": on, "reason": "PSP incident INC-7"}))
                .tenant(T, ENV)
                .expect(200)
                .await;
        }
    };
    safe_mode(true).await;
    let c = post(
        &app,
        "/v1/checkouts",
        json!({"customer_id": cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": id(&pm)}),
        202,
    )
    .await;
    let queued = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let c = get(&app, &format!("/v1/checkouts/{}", id(&c))).await;
            if c["payment_id"].is_string() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the job records the queued charge");
    let payment = get(&app, &format!("/v1/payments/{}", queued["payment_id"].as_str().unwrap())).await;
    assert_eq!(
        (payment["status"].as_str(), payment["attempts"].as_i64()),
        (Some("pending"), Some(0)),
        "{payment}"
    );
    safe_mode(false).await;
    let done = settle(&app, &id(&c)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    charged_by_its_job(&app, &done).await;
}

/// Checkouts whose charges the PSP captures at about the same moment are settled together, in
/// shared transactions (decision 0007, "Checkouts settled together"), and each ends exactly as
/// it would alone: active subscription, its grants, an invoice paid by its payment with a
/// number of its own (the storefront's series without a gap), and the same journal entries in
/// its own lineage.
async fn checkouts_captured_together_are_settled_together(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let psp = id(&get(&app, &format!("/v1/storefronts/{}/psp-accounts", shop.sf)).await["data"][0]);
    let mut bodies = Vec::new();
    for i in 0..8 {
        let cus = id(&post(
            &app,
            "/v1/customers",
            json!({"external_id": format!("together-{i}"), "country": "DE"}),
            201,
        )
        .await);
        let pm = id(&post(
            &app,
            &format!("/v1/customers/{cus}/payment-methods"),
            json!({"storefront_id": shop.sf, "psp_account_id": psp, "token": "tok_sandbox_success"}),
            201,
        )
        .await);
        let o = post(&app, "/v1/offers", json!({"customer_id": cus, "storefront_id": shop.sf}), 201).await;
        bodies.push(json!({"customer_id": cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": pm}));
    }
    let before = azotte_service::subscriptions::checkout::settled_together();
    // A slow PSP: the charges are in flight together. Their captures arrive while the first
    // settling transaction cannot write its subscriptions yet: they wait for it, together.
    app.ctx.psp.sandbox.set_extra_latency(Duration::from_millis(300));
    let started =
        futures::future::join_all(bodies.iter().map(|b| post(&app, "/v1/checkouts", b.clone(), 202))).await;
    let held = app.hold_subscription_writes().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    held.release().await;
    let mut done = Vec::new();
    for c in &started {
        done.push(settle(&app, &id(c)).await);
    }
    app.ctx.psp.sandbox.set_extra_latency(Duration::ZERO);
    let after = azotte_service::subscriptions::checkout::settled_together();
    let (settled, transactions) = (after.0 - before.0, after.1 - before.1);
    // Every one settled in a shared transaction, and at least one transaction settled several.
    assert!(settled >= 8 && transactions < settled, "{settled} checkouts in {transactions} transactions");

    let mut numbers = Vec::new();
    for (d, body) in done.iter().zip(&bodies) {
        assert_eq!(d["status"], "succeeded", "{d}");
        let sid = d["subscription_id"].as_str().unwrap();
        let sub = get(&app, &format!("/v1/subscriptions/{sid}")).await;
        assert_eq!((sub["status"].as_str(), sub["amount"].as_i64()), (Some("active"), Some(999)), "{sub}");
        let cus = body["customer_id"].as_str().unwrap();
        let ents = get(&app, &format!("/v1/customers/{cus}/entitlements")).await;
        let keys: Vec<&str> =
            ents["data"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["hd", "screens", "video"], "{ents}");
        let pid = charged_by_its_job(&app, d).await;
        let invoices = get(&app, &format!("/v1/invoices?subscription_id={sid}")).await;
        let inv = invoices["data"].as_array().unwrap();
        assert_eq!(inv.len(), 1, "{invoices}");
        assert_eq!(
            (inv[0]["status"].as_str(), inv[0]["total"].as_i64()),
            (Some("paid"), Some(999)),
            "{invoices}"
        );
        let detail = get(&app, &format!("/v1/invoices/{}", id(&inv[0]))).await;
        assert_eq!(detail["payments"][0]["payment_id"].as_str(), Some(pid.as_str()), "{detail}");
        numbers.push(inv[0]["number"].as_str().unwrap().to_owned());
        // The checkout's journal entries, in its lineage, in the one-by-one path's order.
        let correlation = only_entry(&app, "checkout.create", &id(d)).await["correlation_id"].clone();
        let page =
            get(&app, &format!("/v1/journal?correlation_id={}&limit=100", correlation.as_str().unwrap()))
                .await;
        let types: Vec<&str> =
            page["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "checkout.create",
                "checkout.processing",
                "payment.create",
                "payment.routed",
                "payment.attempt",
                "payment.attempt_result",
                "payment.captured",
                "checkout.complete",
                "subscription.created",
                "entitlements.granted",
                "invoice.issued",
                "invoice.paid",
                "checkout.succeeded"
            ],
            "{page}"
        );
    }
    // One series, no gap, no number twice.
    numbers.sort();
    let sequences: Vec<i64> =
        numbers.iter().map(|n| n.rsplit('-').next().unwrap().parse().unwrap()).collect();
    let first = sequences[0];
    assert_eq!(sequences, (first..first + 8).collect::<Vec<_>>(), "{numbers:?}");
}

/// Offers asked for at about the same moment are made together, in shared transactions
/// (decision 0007, "Customers and offers written together"), each exactly as alone — priced,
/// with the trial its own customer's family history allows — and journaled in its own request's
/// lineage and name. One that cannot be made as read (unknown customer, currency not sold, a
/// storefront its key may not use) gets its own error and journals nothing; the others are made.
async fn offers_asked_together_are_made_together(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    // shop.cus holds a live subscription in the trial price's family: no second purchase there.
    let o = offer(&app, &shop).await;
    assert_eq!(checkout(&app, &shop, &o, &shop.trial).await["status"], "succeeded");
    let mut fresh = Vec::new();
    for i in 0..5 {
        fresh.push(id(&post(&app, "/v1/customers", json!({"external_id": format!("asked-{i}")}), 201).await));
    }
    let sf2 = id(&post(
        &app,
        "/v1/storefronts",
        json!({"name": "Other", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
        201,
    )
    .await);
    app.admin_mfa().await;
    let other_shop_key = app
        .api_key(
            T,
            ENV,
            json!({"description": "other shop", "role": "tenant_admin", "storefront_ids": [sf2]}),
        )
        .await;
    let other_shop_key = other_shop_key["secret"].as_str().unwrap().to_owned();
    let ask = |body: Value, request_id: String| {
        let app = &app;
        async move { app.post("/v1/offers", body).header("x-request-id", &request_id).tenant(T, ENV).send().await }
    };
    let made_entries = || {
        let app = &app;
        async move { get(app, "/v1/journal?type=offer.create&limit=100").await["data"].as_array().unwrap().len() }
    };
    let entries_before = made_entries().await;
    let before = azotte_service::subscriptions::offers::made_together();
    // The requests arrive while the first transaction cannot store its offer yet: the others
    // wait for it, together.
    let held = app.hold_writes("offers").await;
    let sf = shop.sf.as_str();
    let asks = fresh
        .iter()
        .enumerate()
        .map(|(i, c)| ask(json!({"customer_id": c, "storefront_id": sf}), format!("req-asked-{i}")));
    let (fresh_answers, others, ()) = tokio::join!(
        futures::future::join_all(asks),
        futures::future::join_all([
            ask(json!({"customer_id": shop.cus, "storefront_id": sf}), "req-subscribed".into()),
            ask(json!({"storefront_id": sf}), "req-showcase".into()),
            ask(
                json!({"customer_id": "cus_01jdq3m9x7e5k4w2c8v6b0n1p2", "storefront_id": sf}),
                "req-unknown".into()
            ),
            ask(json!({"customer_id": fresh[0], "storefront_id": sf, "currency": "USD"}), "req-usd".into()),
        ]),
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            held.release().await;
        }
    );
    let after = azotte_service::subscriptions::offers::made_together();
    let (made, transactions) = (after.0 - before.0, after.1 - before.1);
    assert!(made == 7 && transactions < made, "{made} offers in {transactions} transactions");
    // Each refused as alone, with nothing journaled.
    assert_eq!(others[2].status, 404, "{}", others[2].text());
    assert_eq!(others[2].problem().code, "customer_not_found");
    assert_eq!(others[3].status, 422, "{}", others[3].text());
    assert_eq!(others[3].problem().errors[0].code, "currency_not_served");
    assert_eq!(made_entries().await, entries_before + 7);
    // Each made offer as its customer's history allows.
    for (i, a) in fresh_answers.iter().enumerate() {
        assert_eq!(a.status, 201, "{}", a.text());
        let o: Value = a.json();
        let items = o["items"].as_array().unwrap();
        let trial = items.iter().find(|i| i["price_id"] == shop.trial.as_str()).expect("the trial price");
        assert_eq!((items.len(), trial["trial_days"].as_u64()), (2, Some(14)), "{o}");
        let created = only_entry(&app, "offer.create", &id(&o)).await;
        assert_eq!(created["request_id"], format!("req-asked-{i}"), "{created}");
        assert_ne!(created["principal"]["kind"], "system", "{created}");
        let correlation = created["correlation_id"].as_str().unwrap();
        let page = get(&app, &format!("/v1/journal?correlation_id={correlation}&limit=100")).await;
        let types: Vec<&str> =
            page["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["offer.create", "offer.eligibility", "offer.created"], "{page}");
    }
    let subscribed: Value = others[0].json();
    assert_eq!(others[0].status, 201, "{subscribed}");
    let items: Vec<&str> =
        subscribed["items"].as_array().unwrap().iter().map(|i| i["price_id"].as_str().unwrap()).collect();
    assert_eq!(items, [shop.monthly.as_str()], "only the family it has no subscription in: {subscribed}");
    let showcase: Value = others[1].json();
    assert_eq!((others[1].status, showcase["intent"].as_str()), (201, Some("showcase")), "{showcase}");
    let created = only_entry(&app, "offer.create", &id(&showcase)).await;
    let page =
        get(&app, &format!("/v1/journal?correlation_id={}", created["correlation_id"].as_str().unwrap()))
            .await;
    let types: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["offer.create", "offer.created"], "{page}");

    // A request refused last in a batch after a good one: the good one is still made together;
    // a key for another storefront is refused as alone.
    let before = azotte_service::subscriptions::offers::made_together();
    let held = app.hold_writes("offers").await;
    let later = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    let ask_as = |customer: &str, key: Option<&str>, ms: u64| {
        let (app, body) = (&app, json!({"customer_id": customer, "storefront_id": sf}));
        let key = key.map(str::to_owned);
        async move {
            later(ms).await;
            match key {
                Some(k) => app.post("/v1/offers", body).token(&k).header("x-tn", T).send().await,
                None => app.post("/v1/offers", body).tenant(T, ENV).send().await,
            }
        }
    };
    let (first, good, unknown, other_shop, ()) = tokio::join!(
        ask_as(&fresh[2], None, 0),
        ask_as(&fresh[4], None, 100),
        ask_as("cus_01jdq3m9x7e5k4w2c8v6b0n1p2", None, 200),
        ask_as(&fresh[1], Some(&other_shop_key), 300),
        async {
            later(700).await;
            held.release().await;
        }
    );
    assert_eq!((first.status, good.status), (201, 201), "{} {}", first.text(), good.text());
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(other_shop.status, 404, "{}", other_shop.text());
    assert_eq!(other_shop.problem().code, "storefront_not_found");
    let after = azotte_service::subscriptions::offers::made_together();
    assert_eq!(after.0 - before.0, 2, "both good ones made together ({} transactions)", after.1 - before.1);
    // An offer made together checks out like any other.
    let o: Value = fresh_answers[3].json();
    let c = post(
        &app,
        "/v1/checkouts",
        json!({"customer_id": fresh[3], "offer_id": o["id"], "price_id": shop.trial}),
        202,
    )
    .await;
    assert_eq!(settle(&app, &id(&c)).await["status"], "succeeded");
}

/// Checkouts requested at about the same moment are written together, in shared transactions
/// (decision 0007, "Checkouts written together") — new tokens' methods, checkouts and first
/// charges — and each ends exactly as it would alone, journaled in its own request's lineage and
/// name. A batch that cannot write one of its checkouts (a second checkout of an offered item in
/// progress) writes none: each is then written alone, the refused one gets its error and
/// nothing of it is stored.
async fn checkouts_requested_together_are_written_together(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let acc = id(&get(&app, &format!("/v1/storefronts/{}/psp-accounts", shop.sf)).await["data"][0]);
    let customer = |i: usize, stored: Option<&'static str>| {
        let (app, shop, acc) = (&app, &shop, &acc);
        async move {
            let cus = id(&post(
                app,
                "/v1/customers",
                json!({"external_id": format!("written-{i}"), "country": "DE"}),
                201,
            )
            .await);
            let o = post(app, "/v1/offers", json!({"customer_id": cus, "storefront_id": shop.sf}), 201).await;
            let mut body = json!({"customer_id": cus, "offer_id": o["id"], "price_id": shop.monthly});
            if let Some(token) = stored {
                let pm = post(
                    app,
                    &format!("/v1/customers/{cus}/payment-methods"),
                    json!({"storefront_id": shop.sf, "psp_account_id": acc, "token": token}),
                    201,
                )
                .await;
                body["payment_method_id"] = pm["id"].clone();
            } else {
                body["payment_method"] = json!({"psp_account_id": acc, "token": "tok_sandbox_mastercard"});
            }
            body
        }
    };
    let mut bodies = Vec::new();
    for i in 0..8 {
        bodies.push(customer(i, (i % 2 == 0).then_some("tok_sandbox_success")).await);
    }
    let before = azotte_service::subscriptions::checkout::written_together();
    // The requests arrive while the first writing transaction cannot write its checkout yet:
    // the others wait for it, together.
    let held = app.hold_writes("checkouts").await;
    let send = |b: &Value| {
        let (app, b) = (&app, b.clone());
        async move { app.post("/v1/checkouts", b).tenant(T, ENV).send().await }
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(bodies.iter().map(send)), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        held.release().await;
    });
    let after = azotte_service::subscriptions::checkout::written_together();
    let (written, transactions) = (after.0 - before.0, after.1 - before.1);
    assert!(written == 8 && transactions < written, "{written} checkouts in {transactions} transactions");
    for (a, body) in answers.iter().zip(&bodies) {
        assert_eq!(a.status, 202, "{}", a.text());
        let done = settle(&app, &id(&a.json())).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        let pid = charged_by_its_job(&app, &done).await;
        let cus = body["customer_id"].as_str().unwrap();
        let pms = get(&app, &format!("/v1/customers/{cus}/payment-methods")).await;
        let pms = pms["data"].as_array().unwrap();
        // The stored method, or the new token's, recorded once: the customer's default, paid with.
        assert_eq!(pms.len(), 1, "{pms:?}");
        let payment = get(&app, &format!("/v1/payments/{pid}")).await;
        assert_eq!(payment["payment_method_id"], pms[0]["id"], "{payment}");
        assert_eq!(pms[0]["default"], true, "{pms:?}");
        // Its entries, in its request's lineage and name, in the one-by-one path's order; its
        // charge in its job's name.
        let created = only_entry(&app, "checkout.create", &id(&done)).await;
        let correlation = created["correlation_id"].as_str().unwrap();
        let page = get(&app, &format!("/v1/journal?correlation_id={correlation}&limit=100")).await;
        let entries = page["data"].as_array().unwrap();
        let types: Vec<&str> = entries.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let mut expected = if body.get("payment_method").is_some() {
            vec!["payment_method.attach", "payment_method.attached"]
        } else {
            vec![]
        };
        expected.extend([
            "checkout.create",
            "checkout.processing",
            "payment.create",
            "payment.routed",
            "payment.attempt",
        ]);
        assert_eq!(types[..expected.len()], expected[..], "{page}");
        for e in &entries[..expected.len() - 3] {
            assert_eq!(e["principal"], created["principal"], "{e}");
        }
        assert_ne!(created["principal"]["kind"], "system", "{created}");
        for e in &entries[expected.len() - 3..] {
            let by = (e["principal"]["kind"].as_str(), e["principal"]["id"].as_str());
            assert_eq!(by, (Some("system"), Some("checkout")), "{e}");
        }
    }

    // A batch with a second checkout of an offered item in progress (waiting for its customer's
    // 3-D Secure): each written alone, the second refused.
    let twice = customer(8, Some("tok_sandbox_requires_action")).await;
    let other = customer(9, None).await;
    let creates = || {
        let app = &app;
        async move {
            get(app, "/v1/journal?type=checkout.create&limit=100").await["data"].as_array().unwrap().len()
        }
    };
    let created_before = creates().await;
    let held = app.hold_writes("checkouts").await;
    let sent = [twice.clone(), twice.clone(), other.clone()];
    let (answers, ()) = tokio::join!(futures::future::join_all(sent.iter().map(send)), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        held.release().await;
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses[..2].contains(&202) && statuses[..2].contains(&409), "{statuses:?}");
    let refused = answers[..2].iter().find(|a| a.status == 409).unwrap().problem();
    assert_eq!(refused.code, "offer_in_checkout");
    assert_eq!(statuses[2], 202, "{}", answers[2].text());
    let waiting = answers[..2].iter().find(|a| a.status == 202).unwrap();
    assert_eq!(settle(&app, &id(&waiting.json())).await["status"], "requires_action");
    assert_eq!(settle(&app, &id(&answers[2].json())).await["status"], "succeeded");
    assert_eq!(creates().await, created_before + 2, "the refused checkout journaled nothing");
    let offer_id = twice["offer_id"].as_str().unwrap();
    let rows = app.raw_strings(&format!("SELECT id FROM checkouts WHERE offer_id = '{offer_id}'")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cus = other["customer_id"].as_str().unwrap();
    let pms = get(&app, &format!("/v1/customers/{cus}/payment-methods")).await;
    assert_eq!(pms["data"].as_array().unwrap().len(), 1, "{pms}");
}

/// The journal entry of `type_` about `resource` (exactly one).
async fn only_entry(app: &TestApp, type_: &str, resource: &str) -> Value {
    let page = get(app, &format!("/v1/journal?type={type_}&resource_id={resource}")).await;
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{type_} of {resource}: {page}");
    data[0].clone()
}

/// A succeeded checkout's charge was created by its job, in its lineage, and captured: its id.
async fn charged_by_its_job(app: &TestApp, done: &Value) -> String {
    let created = only_entry(app, "checkout.create", &id(done)).await;
    assert_ne!(created["principal"]["kind"], "system", "{created}");
    let pid = done["payment_id"].as_str().unwrap();
    let e = only_entry(app, "payment.create", pid).await;
    let by = (e["principal"]["kind"].as_str(), e["principal"]["id"].as_str());
    assert_eq!(by, (Some("system"), Some("checkout")), "{e}");
    assert_eq!(
        (&e["correlation_id"], &e["causation_id"]),
        (&created["correlation_id"], &created["id"]),
        "{e}"
    );
    let payment = get(app, &format!("/v1/payments/{pid}")).await;
    assert_eq!(payment["status"], "captured", "{payment}");
    pid.to_owned()
}

/// Two checkouts of one family whose jobs both pass the eligibility check before either has
/// subscribed (the PSP is slow): one subscribes; the other's subscription is refused by the
/// database, and its charge — whose answer was to be recorded in that refused transaction — is
/// recorded captured all the same, then refunded in full.
async fn a_checkout_that_loses_its_family_records_its_charge_and_refunds_it(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    // Two offers (one offer is checked out once).
    let (o1, o2) = (offer(&app, &shop).await, offer(&app, &shop).await);
    let body = |o: &Value| json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    app.ctx.psp.sandbox.set_extra_latency(Duration::from_millis(400));
    let (a, b) = tokio::join!(
        post(&app, "/v1/checkouts", body(&o1), 202),
        post(&app, "/v1/checkouts", body(&o2), 202)
    );
    let (a, b) = (settle(&app, &id(&a)).await, settle(&app, &id(&b)).await);
    app.ctx.psp.sandbox.set_extra_latency(Duration::ZERO);
    let mut outcomes = [
        (a["status"].as_str().unwrap().to_owned(), a["failure_code"].as_str().map(str::to_owned)),
        (b["status"].as_str().unwrap().to_owned(), b["failure_code"].as_str().map(str::to_owned)),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [("failed".to_owned(), Some("already_subscribed".to_owned())), ("succeeded".to_owned(), None)],
        "{a} {b}"
    );
    let lost = if a["status"] == "failed" { &a } else { &b };
    let p = get(&app, &format!("/v1/payments/{}", lost["payment_id"].as_str().unwrap())).await;
    assert_eq!(
        (
            p["status"].as_str(),
            p["captured_amount"].as_i64(),
            p["refunded_amount"].as_i64(),
            p["attempts"].as_i64()
        ),
        (Some("captured"), Some(999), Some(999), Some(1)),
        "{p}"
    );
    let ledger = app.ctx.psp.sandbox.ledger();
    let sum = |kind: fn(&azotte_payments::EntryKind) -> bool| -> i64 {
        ledger.entries().iter().filter(|e| kind(&e.kind)).map(|e| e.amount).sum()
    };
    assert_eq!(
        (
            sum(|k| matches!(k, azotte_payments::EntryKind::Capture)),
            sum(|k| matches!(k, azotte_payments::EntryKind::Refund))
        ),
        (2 * 999, 999)
    );
    let subs = get(&app, &format!("/v1/subscriptions?customer_id={}", shop.cus)).await;
    assert_eq!(subs["data"].as_array().unwrap().len(), 1);
}

both!(
    from_offer_to_entitlements,
    a_trial_needs_no_charge_and_is_offered_once_per_family,
    end_of_period_cancel_keeps_access_and_can_be_undone,
    concurrent_duplicate_checkouts_charge_once,
    a_second_checkout_of_an_item_in_progress_is_refused,
    a_checkout_with_a_new_token_attaches_it_in_the_checkouts_transaction,
    a_checkouts_charge_is_recorded_with_the_checkout_in_its_jobs_name,
    checkouts_captured_together_are_settled_together,
    checkouts_requested_together_are_written_together,
    offers_asked_together_are_made_together,
    checkouts_read_together_each_get_their_own_answer,
    a_checkout_that_loses_its_family_records_its_charge_and_refunds_it,
    a_declined_card_fails_the_checkout_with_its_reason,
    bad_checkouts_get_stable_codes
);

/// A checkout whose writing transaction's commit went unconfirmed — the server's connection to
/// PostgreSQL cut at the `COMMIT`, before the server got it or after — is answered as the
/// database then tells: written (only the answer was lost), or not (then written alone, whose
/// commit may be cut too). Never written twice (the second write refused as a second checkout
/// of the offered item, `409`, while the first one's job charges), never answered as failed
/// while it was written.
async fn a_checkout_whose_commit_is_cut(cuts: &[Cut]) {
    let (app, proxy) = spawn_app_through_cut_proxy().await;
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    // The request id: the checkout's journal entries bind it, in its writing transaction.
    let marker = "cut-checkout-commit";
    for &cut in cuts {
        proxy.arm(marker, cut);
    }
    let body = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let r = app.post("/v1/checkouts", body).tenant(T, ENV).header("x-request-id", marker).send().await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(proxy.cuts(), cuts.len(), "every cut armed happened");
    let c: Value = r.json();
    let done = settle(&app, &id(&c)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let of_offer = app.raw_strings(&format!("SELECT id FROM checkouts WHERE offer_id = '{}'", id(&o))).await;
    assert_eq!(of_offer, vec![id(&c)], "one checkout of the offer");
    assert_eq!(app.sandbox_captured(), 999, "charged once");
    let created = app.raw_strings("SELECT type FROM journal_entries WHERE type = 'checkout.create'").await;
    assert_eq!(created.len(), 1, "journaled once: {created:?}");
}

mod a_checkout_whose_commit_is_cut {
    use crate::helpers::Cut;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_server_got_it() {
        super::a_checkout_whose_commit_is_cut(&[Cut::Answer]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn before_the_server_got_it() {
        super::a_checkout_whose_commit_is_cut(&[Cut::Request]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn before_then_alone_after() {
        super::a_checkout_whose_commit_is_cut(&[Cut::Request, Cut::Answer]).await
    }

    /// The server never notices: its session, holding the transaction open, is ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn before_the_server_got_it_and_it_never_notices() {
        super::a_checkout_whose_commit_is_cut(&[Cut::Silent]).await
    }
}

/// The shop's trial bought with the customer's card: the subscription's id.
async fn trial_with_card(app: &TestApp, shop: &Shop) -> String {
    let o = offer(app, shop).await;
    let c = post(
        app,
        "/v1/checkouts",
        json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.trial, "payment_method_id": shop.pm}),
        202,
    )
    .await;
    settle(app, &id(&c)).await["subscription_id"].as_str().unwrap().to_owned()
}

async fn trials_convert_with_a_charge_or_lapse_without_a_method(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    // With a payment method: charged off session at trial end, then active.
    let sid = trial_with_card(&app, &shop).await;
    // Pausing a trial is against the storefront's policy.
    let r = app
        .post(&format!("/v1/subscriptions/{sid}/pause"), json!({}))
        .tenant(T, ENV)
        .expect(409)
        .await
        .problem();
    assert_eq!(r.code, "trial_pause_not_allowed");
    // The storefront may allow it.
    let sf = app
        .patch(&format!("/v1/storefronts/{}", shop.sf), json!({"lifecycle": {"pause_trials": true}}))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json::<Value>();
    assert_eq!(
        sf["lifecycle"],
        json!({"trial_cooldown_days": 180, "pause_trials": true, "replace_policy": "immediate_prorated"})
    );
    assert_eq!(
        post(&app, &format!("/v1/subscriptions/{sid}/pause"), json!({}), 200).await["status"],
        "paused"
    );
    assert_eq!(
        post(&app, &format!("/v1/subscriptions/{sid}/resume"), json!({}), 200).await["status"],
        "trialing"
    );
    // Another customer without a payment method lapses.
    let cus2 = id(&post(&app, "/v1/customers", json!({"external_id": "viewer-3"}), 201).await);
    let o2 = post(&app, "/v1/offers", json!({"customer_id": cus2, "storefront_id": shop.sf}), 201).await;
    let c2 = post(
        &app,
        "/v1/checkouts",
        json!({"customer_id": cus2, "offer_id": o2["id"], "price_id": shop.trial}),
        202,
    )
    .await;
    let sid2 = settle(&app, &id(&c2)).await["subscription_id"].as_str().unwrap().to_owned();

    let k = key(&app).await;
    app.ctx.clock.advance(chrono::Duration::days(14) + chrono::Duration::minutes(1));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let read = |sid: String| {
        let (app, k) = (&app, k.clone());
        async move {
            app.get(&format!("/v1/subscriptions/{sid}"))
                .token(&k)
                .header("x-tn", T)
                .expect(200)
                .await
                .json::<Value>()
        }
    };
    let converted = read(sid.clone()).await;
    assert_eq!(converted["status"], "active", "{converted}");
    assert!(converted["current_period_start"].as_str() == converted["trial_end"].as_str());
    let charges: Vec<_> = app.ctx.psp.sandbox.ledger().entries();
    let captured: i64 = charges
        .iter()
        .filter(|e| matches!(e.kind, azotte_payments::EntryKind::Capture))
        .map(|e| e.amount)
        .sum();
    assert_eq!(captured, 499, "one charge, the first period");
    let invoices: Value = app
        .get(&format!("/v1/invoices?subscription_id={sid}"))
        .token(&k)
        .header("x-tn", T)
        .expect(200)
        .await
        .json();
    assert_eq!(
        invoices["data"].as_array().unwrap().len(),
        1,
        "the first paid period is invoiced: {invoices}"
    );
    assert_eq!(read(sid2).await["status"], "expired");
    // Running the jobs again changes nothing and charges nothing.
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().entries().len(), charges.len());
}

/// The customer completes the 3-D Secure step of a checkout waiting for it (`requires_action`),
/// and the PSP's signed webhook reports the capture: the checkout's payment as it then is.
async fn complete_3ds(app: &TestApp, waiting: &Value) -> Value {
    let payment = get(app, &format!("/v1/payments/{}", waiting["payment_id"].as_str().unwrap())).await;
    let account: azotte_domain::id::PspAccountId =
        payment["psp_account_id"].as_str().unwrap().parse().unwrap();
    let psp_id = app.ctx.psp.sandbox.events().iter().rev().find_map(|e| match &e.object {
        azotte_payments::WebhookObject::Payment(p) => Some(p.psp_id.clone()),
        _ => None,
    });
    app.ctx.psp.sandbox.complete_action(&account, &psp_id.unwrap(), true).unwrap();
    let event = app.ctx.psp.sandbox.events().pop().unwrap();
    let (headers, body) = azotte_payments::sandbox::webhook::sign(
        &azotte_payments::Account::new(account),
        &event,
        app.ctx.clock.now(),
    );
    let tenant = app.raw_strings(&format!("SELECT id FROM tenants WHERE slug = '{T}'")).await.remove(0);
    let mut call = app
        .post(&format!("/v1/psp-webhooks/{tenant}/{ENV}/{account}"), json!(null))
        .anon()
        .body("application/json", body);
    for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-type")) {
        call = call.header(k, v);
    }
    call.expect(200).await;
    get(app, &format!("/v1/payments/{}", id(&payment))).await
}

/// Polls a checkout until it has ended (`succeeded` or `failed`): a job started by a PSP
/// webhook runs in a task of its own.
async fn ended(app: &TestApp, k: &str, checkout: &str) -> Value {
    for _ in 0..500 {
        let v = get_k(app, k, &format!("/v1/checkouts/{checkout}")).await;
        if v["status"] == "succeeded" || v["status"] == "failed" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("checkout {checkout} did not end");
}

/// A shop whose customer's card needs 3-D Secure, an API key, and the customer's checkout of the
/// monthly price, left `requires_action`.
async fn waiting_3ds(app: &TestApp) -> (Shop, String, Value) {
    let shop = shop(app, "tok_sandbox_requires_action").await;
    let k = key(app).await;
    let o = offer(app, &shop).await;
    let waiting = checkout(app, &shop, &o, &shop.monthly).await;
    assert_eq!(waiting["status"], "requires_action", "{waiting}");
    (shop, k, waiting)
}

/// `GET` with an API key (`k`), which outlives the test user's session when the clock moves on.
async fn get_k(app: &TestApp, k: &str, path: &str) -> Value {
    app.get(path).token(k).header("x-tn", T).expect(200).await.json()
}

/// The entries of type `kind` on a subscription's timeline.
async fn timeline_entries(app: &TestApp, k: &str, sid: &str, kind: &str) -> Vec<Value> {
    let t = get_k(app, k, &format!("/v1/subscriptions/{sid}/timeline")).await;
    t["data"].as_array().unwrap().iter().filter(|e| e["type"] == kind).cloned().collect()
}

/// The sandbox PSP account of a checkout's payment, and the payment's id there.
async fn psp_payment(app: &TestApp, waiting: &Value) -> (azotte_domain::id::PspAccountId, String) {
    let pid = waiting["payment_id"].as_str().unwrap();
    let row = app
        .raw_strings(&format!(
            "SELECT psp_account_id || ' ' || psp_payment_id FROM payments WHERE id = '{pid}'"
        ))
        .await;
    let (account, psp_id) = row[0].split_once(' ').unwrap();
    (account.parse().unwrap(), psp_id.to_owned())
}

/// A system scope of the test tenant's environment.
async fn system_scope(app: &TestApp) -> azotte_store::TenantScope {
    let tenant = app.raw_strings(&format!("SELECT id FROM tenants WHERE slug = '{T}'")).await.remove(0);
    azotte_store::auth::system_scope(&app.ctx.db, tenant.parse().unwrap(), ENV.parse().unwrap(), "test")
        .await
        .unwrap()
}

/// A checkout that can no longer succeed (its price archived while the customer was in 3-D
/// Secure) whose charge the customer completed before the worker looked: the PSP's webhook runs
/// the job at once, which fails the checkout and gives the money back in full. Later runs
/// change nothing.
async fn a_checkout_that_fails_after_its_charge_is_refunded(app: TestApp) {
    let (shop, k, waiting) = waiting_3ds(&app).await;
    assert_eq!(waiting["status"], "requires_action");
    app.post(&format!("/v1/prices/{}/archive", shop.monthly), json!({})).tenant(T, ENV).expect(200).await;
    // Captured: the checkout fails, the charge refunded in full.
    let payment = complete_3ds(&app, &waiting).await;
    assert_eq!(payment["status"], "captured", "{payment}");
    let failed = ended(&app, &k, &id(&waiting)).await;
    assert_eq!(
        (failed["status"].as_str(), failed["failure_code"].as_str(), failed["subscription_id"].as_str()),
        (Some("failed"), Some("price_not_available"), None),
        "{failed}"
    );
    let payment = get_k(&app, &k, &format!("/v1/payments/{}", id(&payment))).await;
    assert_eq!(
        (payment["captured_amount"].as_i64(), payment["refunded_amount"].as_i64()),
        (Some(999), Some(999))
    );
    let pid: azotte_domain::payment::PaymentId = id(&payment).parse().unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().captured(&pid), 999);
    assert_eq!(app.sandbox_refunded(), 999, "the charge went back");
    let subs =
        app.raw_strings(&format!("SELECT id FROM subscriptions WHERE customer_id = '{}'", shop.cus)).await;
    assert!(subs.is_empty(), "no subscription: {subs:?}");
    // The failure names the refund.
    let entry = app
        .raw_strings(&format!(
            "SELECT body FROM journal_entries WHERE type = 'checkout.failed' AND resource_id = '{}'",
            id(&waiting)
        ))
        .await;
    assert_eq!(entry.len(), 1, "{entry:?}");
    let body: Value = serde_json::from_str(&entry[0]).unwrap();
    assert!(body["refund_id"].is_string(), "{body}");
    // Later runs change nothing.
    app.ctx.clock.advance(chrono::Duration::hours(2));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let entries = app.ctx.psp.sandbox.ledger().entries().len();
    assert_eq!(get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await["status"], "failed");
    assert_eq!(app.ctx.psp.sandbox.ledger().entries().len(), entries);
}

/// A checkout that can no longer succeed while its customer is still in 3-D Secure does not
/// wait for them: its payment is cancelled at the PSP, so nothing is charged and nothing needs
/// refunding, and the checkout fails with its reason.
async fn a_checkout_failing_during_3ds_cancels_its_payment(app: TestApp) {
    let (shop, k, waiting) = waiting_3ds(&app).await;
    app.post(&format!("/v1/prices/{}/archive", shop.monthly), json!({})).tenant(T, ENV).expect(200).await;
    // The worker's next look at the waiting checkout.
    app.ctx.clock.advance(chrono::Duration::minutes(6));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let failed = get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await;
    assert_eq!(
        (failed["status"].as_str(), failed["failure_code"].as_str()),
        (Some("failed"), Some("price_not_available")),
        "{failed}"
    );
    let payment = get_k(&app, &k, &format!("/v1/payments/{}", waiting["payment_id"].as_str().unwrap())).await;
    assert_eq!(
        (payment["status"].as_str(), payment["captured_amount"].as_i64()),
        (Some("canceled"), Some(0))
    );
    // The customer can no longer complete it at the PSP.
    let (account, psp_id) = psp_payment(&app, &waiting).await;
    let late = app.ctx.psp.sandbox.complete_action(&account, &psp_id, true);
    assert!(late.is_err(), "{late:?}");
    assert_eq!(app.sandbox_refunded(), 0);
    let entries = app
        .raw_strings(&format!(
            "SELECT body FROM journal_entries WHERE type = 'payment.canceled' AND resource_id = '{}'",
            id(&payment)
        ))
        .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let body: Value = serde_json::from_str(&entries[0]).unwrap();
    assert_eq!(
        (body["source"].as_str(), body["reason"].as_str()),
        (Some("void"), Some("price_not_available"))
    );
}

/// A checkout's job has one runner at a time: a runner takes its lease, and no other may
/// start it until the lease runs out or the runner leaves it waiting — then the worker waits
/// for its next look, while a PSP webhook's task may take it at once.
async fn a_checkouts_job_has_one_runner_at_a_time(app: TestApp) {
    use azotte_store::subscriptions as store;
    let (_, k, waiting) = waiting_3ds(&app).await;
    let cid = id(&waiting);
    let scope = system_scope(&app).await;
    let now = app.ctx.clock.now();
    let lease = chrono::Duration::minutes(2);
    let claim = |at: chrono::DateTime<chrono::Utc>| {
        let (app, scope, cid) = (&app, &scope, cid.clone());
        async move {
            let mut tx = app.ctx.db.tenant_tx(scope).await.unwrap();
            let ok = store::claim_checkout(&mut tx, &cid, at, at + lease).await.unwrap();
            tx.commit().await.unwrap();
            ok
        }
    };
    let due = |at: chrono::DateTime<chrono::Utc>| {
        let (app, scope) = (&app, &scope);
        async move {
            let mut tx = app.ctx.db.tenant_read_tx(scope).await.unwrap();
            let d = store::due_checkouts(&mut tx, at, 10).await.unwrap();
            tx.commit().await.unwrap();
            d.into_iter().map(|c| c.id).collect::<Vec<_>>()
        }
    };
    // The request's run left it waiting: no lease, the worker's next look in five minutes.
    let row = {
        let mut tx = app.ctx.db.tenant_read_tx(&scope).await.unwrap();
        let c = store::get_checkout(&mut tx, &cid).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        c
    };
    assert_eq!((row.locked_until, row.run_after.map(|r| r > now)), (None, Some(true)), "{row:?}");
    assert!(due(now).await.is_empty(), "not due before its next look");
    // A webhook's task takes it at once; nobody else may meanwhile.
    assert!(claim(now).await, "a waiting checkout may be taken before its next look");
    assert!(!claim(now + chrono::Duration::seconds(30)).await, "leased: one runner at a time");
    assert!(due(now + chrono::Duration::minutes(1)).await.is_empty());
    // A runner that died: once its lease ran out (and the next look has come), the worker's.
    assert_eq!(due(now + chrono::Duration::minutes(6)).await, vec![cid.clone()]);
    assert!(claim(now + chrono::Duration::minutes(6)).await);
    // An ended checkout is nobody's.
    app.ctx.clock.advance(chrono::Duration::hours(2));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(get_k(&app, &k, &format!("/v1/checkouts/{cid}")).await["status"], "failed");
    assert!(!claim(app.ctx.clock.now()).await);
    assert!(due(app.ctx.clock.now()).await.is_empty());
}

/// A checkout that can no longer succeed, whose customer completed 3-D Secure just before the
/// worker cancelled the payment (the webhook not yet arrived): the PSP refuses the void, the
/// lookup shows the charge captured, and it is refunded in full before the checkout fails.
async fn a_checkout_failing_as_its_3ds_completes_refunds_the_charge(app: TestApp) {
    let (shop, k, waiting) = waiting_3ds(&app).await;
    app.post(&format!("/v1/prices/{}/archive", shop.monthly), json!({})).tenant(T, ENV).expect(200).await;
    let (account, psp_id) = psp_payment(&app, &waiting).await;
    app.ctx.psp.sandbox.complete_action(&account, &psp_id, true).unwrap();
    app.ctx.clock.advance(chrono::Duration::minutes(6));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let failed = get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await;
    assert_eq!(
        (failed["status"].as_str(), failed["failure_code"].as_str()),
        (Some("failed"), Some("price_not_available")),
        "{failed}"
    );
    let payment = get_k(&app, &k, &format!("/v1/payments/{}", waiting["payment_id"].as_str().unwrap())).await;
    assert_eq!(
        (
            payment["status"].as_str(),
            payment["captured_amount"].as_i64(),
            payment["refunded_amount"].as_i64()
        ),
        (Some("captured"), Some(999), Some(999)),
        "{payment}"
    );
    assert_eq!((app.sandbox_captured(), app.sandbox_refunded()), (999, 999));
    let subs =
        app.raw_strings(&format!("SELECT id FROM subscriptions WHERE customer_id = '{}'", shop.cus)).await;
    assert!(subs.is_empty(), "no subscription: {subs:?}");
}

/// A customer who never completes 3-D Secure: the worker leaves the checkout alone between
/// its looks (a webhook would wake it), and after an hour the checkout expires — its payment
/// cancelled at the PSP, nothing charged, failure `checkout_expired`.
async fn an_abandoned_3ds_checkout_expires_and_its_payment_is_cancelled(app: TestApp) {
    let (shop, k, waiting) = waiting_3ds(&app).await;
    assert_eq!(waiting["status"], "requires_action");
    let scope = system_scope(&app).await;
    let run = || azotte_service::subscriptions::checkout::run_due(&app.ctx, &scope);
    // The request's run left it waiting: the worker looks again five minutes later, not at
    // every tick.
    app.ctx.clock.advance(chrono::Duration::seconds(10));
    assert_eq!(run().await.unwrap(), 0, "not looked at again so soon");
    app.ctx.clock.advance(chrono::Duration::minutes(5));
    assert_eq!(run().await.unwrap(), 1, "looked at again");
    app.ctx.clock.advance(chrono::Duration::minutes(3));
    assert_eq!(run().await.unwrap(), 0, "left waiting again");
    app.ctx.clock.advance(chrono::Duration::minutes(3));
    assert_eq!(run().await.unwrap(), 1);
    assert_eq!(
        get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await["status"],
        "requires_action"
    );
    // An hour after it started: expired.
    app.ctx.clock.advance(chrono::Duration::minutes(50));
    assert_eq!(run().await.unwrap(), 1);
    let expired = get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await;
    assert_eq!(
        (expired["status"].as_str(), expired["failure_code"].as_str(), expired["next_action"].as_object()),
        (Some("failed"), Some("checkout_expired"), None),
        "{expired}"
    );
    let payment = get_k(&app, &k, &format!("/v1/payments/{}", waiting["payment_id"].as_str().unwrap())).await;
    assert_eq!(payment["status"], "canceled", "{payment}");
    let (account, psp_id) = psp_payment(&app, &waiting).await;
    assert!(
        app.ctx.psp.sandbox.complete_action(&account, &psp_id, true).is_err(),
        "cannot be completed any more"
    );
    let pid: azotte_domain::payment::PaymentId = id(&payment).parse().unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().captured(&pid), 0);
    let subs =
        app.raw_strings(&format!("SELECT id FROM subscriptions WHERE customer_id = '{}'", shop.cus)).await;
    assert!(subs.is_empty(), "no subscription: {subs:?}");
    // The cancellation is in the checkout's lineage.
    let cor = app
        .raw_strings(&format!(
            "SELECT correlation_id FROM journal_entries WHERE type = 'payment.canceled' AND resource_id = '{}'",
            id(&payment)
        ))
        .await;
    let lineage: Value = get_k(&app, &k, &format!("/v1/lineage/{}", cor[0])).await;
    let roots = lineage["roots"].as_array().unwrap();
    assert_eq!((roots.len(), roots[0]["type"].as_str()), (1, Some("checkout.create")), "{lineage:#}");
    assert!(lineage.to_string().contains("checkout.failed"), "{lineage:#}");
    // Nothing left to do.
    app.ctx.clock.advance(chrono::Duration::hours(1));
    assert_eq!(run().await.unwrap(), 0);
}

/// A customer who completed 3-D Secure whose webhook never arrived: at the expiry the PSP
/// refuses to cancel a captured payment, the lookup shows it captured, and the checkout
/// succeeds as paid — the customer is not left charged without a subscription.
async fn a_completed_3ds_checkout_whose_webhook_was_lost_succeeds_at_expiry(app: TestApp) {
    let (_, k, waiting) = waiting_3ds(&app).await;
    let (account, psp_id) = psp_payment(&app, &waiting).await;
    app.ctx.psp.sandbox.complete_action(&account, &psp_id, true).unwrap();
    // No webhook: the worker sees the payment still waiting until the expiry.
    app.ctx.clock.advance(chrono::Duration::minutes(30));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(
        get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await["status"],
        "requires_action"
    );
    app.ctx.clock.advance(chrono::Duration::minutes(31));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let done = get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let sub =
        get_k(&app, &k, &format!("/v1/subscriptions/{}", done["subscription_id"].as_str().unwrap())).await;
    assert_eq!(sub["status"], "active");
    let payment = get_k(&app, &k, &format!("/v1/payments/{}", waiting["payment_id"].as_str().unwrap())).await;
    assert_eq!(
        (payment["status"].as_str(), payment["refunded_amount"].as_i64()),
        (Some("captured"), Some(0))
    );
    let pid: azotte_domain::payment::PaymentId = id(&payment).parse().unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().captured(&pid), 999);
    let outcome = app
        .raw_strings(&format!(
            "SELECT body FROM journal_entries WHERE type = 'payment.captured' AND resource_id = '{}'",
            id(&payment)
        ))
        .await;
    assert_eq!(outcome.len(), 1, "{outcome:?}");
    assert!(outcome[0].contains("reconciliation"), "{outcome:?}");
}

/// A trial cancelled while the PSP is charging its conversion: the conversion does not happen,
/// and its charge, which pays for nothing, is refunded in full and recorded on the
/// subscription.
async fn a_trial_cancelled_while_its_conversion_is_charged_is_refunded(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let sid = trial_with_card(&app, &shop).await;
    let k = key(&app).await;
    app.ctx.clock.advance(chrono::Duration::days(14) + chrono::Duration::minutes(1));
    app.ctx.psp.sandbox.set_extra_latency(Duration::from_millis(1500));
    let cancel = async {
        // Once the conversion's payment is recorded (before the PSP is called), cancel.
        for _ in 0..500 {
            if !app.raw_strings("SELECT id FROM payments WHERE status = 'pending'").await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        app.post(
            &format!("/v1/subscriptions/{sid}/cancel"),
            json!({"method": "immediate", "reason_code": "other"}),
        )
        .token(&k)
        .header("x-tn", T)
        .expect(200)
        .await
        .json::<Value>()
    };
    let (_, cancelled) = tokio::join!(azotte_service::subscriptions::run_due_everywhere(&app.ctx), cancel);
    app.ctx.psp.sandbox.set_extra_latency(Duration::ZERO);
    assert_eq!(cancelled["status"], "canceled", "{cancelled}");
    let ledger = app.ctx.psp.sandbox.ledger();
    assert_eq!(
        (app.sandbox_captured(), app.sandbox_refunded()),
        (499, 499),
        "the conversion's charge went back"
    );
    let t: Value = app
        .get(&format!("/v1/subscriptions/{sid}/timeline"))
        .token(&k)
        .header("x-tn", T)
        .expect(200)
        .await
        .json();
    assert!(
        t["data"].as_array().unwrap().iter().any(|e| e["type"] == "subscription.conversion_refunded"),
        "{t:#}"
    );
    let now: Value =
        app.get(&format!("/v1/subscriptions/{sid}")).token(&k).header("x-tn", T).expect(200).await.json();
    // Not converted (the period-end job may have expired it since).
    assert!(matches!(now["status"].as_str(), Some("canceled" | "expired")), "not converted: {now}");
    assert_eq!(now["current_period_start"], cancelled["current_period_start"], "{now}");
    // Later ticks charge and refund nothing more.
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(app.ctx.psp.sandbox.ledger().entries().len(), ledger.entries().len());
}

/// A trial conversion the PSP could not take (an outage: nothing charged, not the card's
/// fault) does not lapse the trial: the customer keeps access, the deferral is journaled, and
/// the conversion is tried again after 15 minutes under a new key — once, however many ticks
/// run meanwhile — and converts when the PSP is back.
async fn a_trial_whose_conversion_the_psp_could_not_take_converts_later(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let sid = trial_with_card(&app, &shop).await;
    let k = key(&app).await;
    async fn payment_rows(app: &TestApp, customer: &str) -> Vec<String> {
        app.raw_strings(&format!(
            "SELECT request_key || ' ' || status || ' ' || COALESCE(decline_code, '-') FROM payments \
             WHERE customer_id = '{customer}' ORDER BY created_at, id"
        ))
        .await
    }
    app.ctx.clock.advance(chrono::Duration::days(14) + chrono::Duration::minutes(1));
    app.ctx.psp.sandbox.set_outage(true);
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let sub = get_k(&app, &k, &format!("/v1/subscriptions/{sid}")).await;
    assert_eq!(sub["status"], "trialing", "not lapsed: {sub}");
    let ent = get_k(&app, &k, &format!("/v1/customers/{}/entitlements/hd", shop.cus)).await;
    assert_eq!(ent["access"], "full", "{ent}");
    let first = payment_rows(&app, &shop.cus).await;
    assert_eq!(first, vec![format!("renewal-{sid}-1 failed psp_unavailable")]);
    let deferred = timeline_entries(&app, &k, &sid, "subscription.conversion_deferred").await;
    assert_eq!(deferred.len(), 1, "{deferred:#?}");
    assert_eq!(deferred[0]["body"]["access"], "kept", "{deferred:#?}");
    // Ticks before the retry is due charge nothing: the trial is not even due (deferred trials
    // do not crowd the others out of the due list).
    app.ctx.clock.advance(chrono::Duration::minutes(5));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(payment_rows(&app, &shop.cus).await, first);
    let scope = system_scope(&app).await;
    let due_trials = |at: chrono::DateTime<chrono::Utc>| {
        let (app, scope) = (&app, &scope);
        async move {
            let mut tx = app.ctx.db.tenant_read_tx(scope).await.unwrap();
            let d = azotte_store::subscriptions::due(&mut tx, "trialing", true, at, 10).await.unwrap();
            tx.commit().await.unwrap();
            d.into_iter().map(|s| s.id).collect::<Vec<_>>()
        }
    };
    assert!(due_trials(app.ctx.clock.now()).await.is_empty());
    assert_eq!(due_trials(app.ctx.clock.now() + chrono::Duration::minutes(11)).await, vec![sid.clone()]);
    // The PSP is back; the retry converts.
    app.ctx.psp.sandbox.set_outage(false);
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let sub = get_k(&app, &k, &format!("/v1/subscriptions/{sid}")).await;
    assert_eq!(sub["status"], "active", "{sub}");
    assert_eq!(
        payment_rows(&app, &shop.cus).await,
        vec![format!("renewal-{sid}-1 failed psp_unavailable"), format!("renewal-{sid}-1-r1 captured -")]
    );
    assert_eq!(app.sandbox_captured(), 499);
    // Nothing more.
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(payment_rows(&app, &shop.cus).await.len(), 2);
}

/// A trial whose conversion's answer was lost (`unknown`, the sandbox did charge): (shop,
/// subscription, API key, the unknown payment).
async fn unknown_conversion(app: &TestApp) -> (Shop, String, String, String) {
    let shop = shop(app, "tok_sandbox_unknown").await;
    let sid = trial_with_card(app, &shop).await;
    let k = key(app).await;
    app.ctx.clock.advance(chrono::Duration::days(14) + chrono::Duration::minutes(1));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    let unknown = app
        .raw_strings(&format!(
            "SELECT id FROM payments WHERE status = 'unknown' AND customer_id = '{}'",
            shop.cus
        ))
        .await;
    assert_eq!(unknown.len(), 1, "the conversion's answer was lost");
    (shop, sid, k, unknown[0].clone())
}

/// [`unknown_conversion`], then the trial cancelled at once.
async fn unknown_conversion_then_cancelled(app: &TestApp) -> (Shop, String, String, String) {
    let (shop, sid, k, unknown) = unknown_conversion(app).await;
    let cancelled = app
        .post(
            &format!("/v1/subscriptions/{sid}/cancel"),
            json!({"method": "immediate", "reason_code": "other"}),
        )
        .token(&k)
        .header("x-tn", T)
        .expect(200)
        .await
        .json::<Value>();
    assert_eq!(cancelled["status"], "canceled", "{cancelled}");
    assert_eq!((app.sandbox_captured(), app.sandbox_refunded()), (499, 0), "the PSP did charge");
    (shop, sid, k, unknown)
}

/// A trial cancelled while its conversion's charge has an unknown outcome: when reconciliation
/// later finds the charge captured, nothing used it, so it is refunded in full at once.
async fn a_trial_cancelled_while_its_conversion_is_unknown_is_refunded_when_it_resolves(app: TestApp) {
    let (_, sid, k, unknown) = unknown_conversion_then_cancelled(&app).await;
    // Reconciliation finds the charge captured; nothing uses it: refunded.
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    for _ in 0..500 {
        if app.sandbox_refunded() == 499 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.sandbox_refunded(), 499, "the charge went back");
    let mut refunded = Vec::new();
    for _ in 0..500 {
        refunded = timeline_entries(&app, &k, &sid, "subscription.conversion_refunded")
            .await
            .iter()
            .map(|e| e["body"]["payment_id"].clone())
            .collect();
        if !refunded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(refunded, vec![json!(unknown)]);
    let sub = get_k(&app, &k, &format!("/v1/subscriptions/{sid}")).await;
    assert!(matches!(sub["status"].as_str(), Some("canceled" | "expired")), "not converted: {sub}");
}

/// The same, when the task that refunds right after the payment moved never ran (the process
/// stopped just after recording the capture): the worker's sweep of trials that ended without
/// converting finds the captured conversion charge and refunds it.
async fn a_conversion_charge_captured_after_its_trial_ended_is_swept_and_refunded(app: TestApp) {
    let (_, sid, k, pid) = unknown_conversion_then_cancelled(&app).await;
    captured_as_reconciled(&app, &pid).await;
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    assert_eq!(app.sandbox_refunded(), 499, "the sweep gave the charge back");
    let refunded = timeline_entries(&app, &k, &sid, "subscription.conversion_refunded").await;
    assert!(!refunded.is_empty(), "the refund is recorded on the subscription");
}

/// PostgreSQL: a refund of a charge that must pay nothing (here the sweep's, for a conversion
/// charge whose trial was cancelled) and a transaction recording that very charge as paying an
/// invoice exclude each other. The paying transaction holds the payment's row and links it; the
/// sweep, which read the charge as paying nothing before that committed, waits on the row for
/// its reservation, then sees the link and gives up: nothing is refunded.
async fn a_refund_of_a_charge_that_pays_nothing_waits_for_a_payment_of_it_and_gives_up(app: TestApp) {
    use sqlx::Connection;
    let (shop, _sid, _k, pid) = unknown_conversion_then_cancelled(&app).await;
    captured_as_reconciled(&app, &pid).await;
    // An open invoice of the customer for the charge to pay.
    let scope = system_scope(&app).await;
    let sf = crate::invoices::storefront(&app, &scope, &shop.sf).await;
    let now = app.ctx.clock.now();
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.bill", None, json!({})).await.unwrap();
    let eur = azotte_domain::catalog::Currency::parse("currency", "EUR").unwrap();
    let invoice = azotte_service::invoices::issue(
        &mut tx,
        azotte_service::invoices::Numbering::Auto,
        &sf,
        &shop.cus,
        Some("DE"),
        None,
        &eur,
        &[crate::invoices::line(499)],
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // The paying transaction: the payment's row held, the link written, not committed yet.
    let mut paying = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    let payer: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut paying).await.unwrap();
    let mut paying = paying.begin().await.unwrap();
    sqlx::query(&format!("SELECT id FROM payments WHERE id = '{pid}' FOR NO KEY UPDATE"))
        .execute(&mut *paying)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO invoice_payments (tenant_id, environment, invoice_id, payment_id, amount, created_at) \
         SELECT tenant_id, environment, '{}', id, 499, now() FROM payments WHERE id = '{pid}'",
        invoice.id
    ))
    .execute(&mut *paying)
    .await
    .unwrap();
    // The sweep reads the charge as paying nothing, and waits on its row to reserve the refund.
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    let sweep = tokio::spawn({
        let ctx = app.ctx.clone();
        async move { azotte_service::subscriptions::run_due_everywhere(&ctx).await }
    });
    // A backend of this test's database blocked by the paying transaction, reserving a refund.
    let waiting = format!(
        "SELECT count(*)::text FROM pg_stat_activity WHERE datname = current_database() \
         AND {payer} = ANY(pg_blocking_pids(pid)) \
         AND query LIKE 'UPDATE \"payments\" SET \"refunded_amount\"%'"
    );
    let mut waited = false;
    for _ in 0..500 {
        if app.raw_strings(&waiting).await == ["1"] {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waited, "the sweep's reservation waits for the paying transaction");
    paying.commit().await.unwrap();
    sweep.await.unwrap().unwrap();
    assert_eq!(app.sandbox_refunded(), 0, "a charge that pays an invoice is not refunded");
    let refunds = app.raw_strings(&format!("SELECT id FROM refunds WHERE payment_id = '{pid}'")).await;
    assert!(refunds.is_empty(), "{refunds:?}");
    let payment =
        app.raw_strings(&format!("SELECT refunded_amount::text FROM payments WHERE id = '{pid}'")).await;
    assert_eq!(payment, ["0"], "the reservation rolled back");
}

mod a_refund_of_a_charge_that_pays_nothing_waits_for_a_payment_of_it_and_gives_up {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let app = crate::helpers::spawn_app(crate::helpers::Backend::Postgres).await;
        super::a_refund_of_a_charge_that_pays_nothing_waits_for_a_payment_of_it_and_gives_up(app).await
    }
}

/// A trial conversion's charge that support refunded in part before the conversion used it (its
/// answer lost, the trial extended meanwhile, the charge reconciled as captured, the refund
/// done): when the extended trial ends the conversion is paid by it, and the invoice credits
/// what was given back, as it would had the refund come after — one credit note for the
/// refund. The PSP keeps 399 and nothing is charged again.
async fn a_partly_refunded_conversion_charge_pays_the_conversion_and_is_credited(app: TestApp) {
    let (shop, sid, k, pid) = unknown_conversion(&app).await;
    let post_k = |path: String, body: Value, status: u16| {
        let req = app.post(&path, body).token(&k).header("x-tn", T).expect(status);
        async move { req.await.json::<Value>() }
    };
    let extended = post_k(format!("/v1/subscriptions/{sid}/extend"), json!({"days": 7}), 200).await;
    assert_eq!(extended["status"], "trialing", "{extended}");
    captured_as_reconciled(&app, &pid).await;
    let refund =
        post_k(format!("/v1/payments/{pid}/refunds"), json!({"amount": 100, "reason": "goodwill"}), 201)
            .await;
    // The sandbox loses this card's answers: reconciliation finds the refund done.
    assert_eq!(refund["status"], "pending", "{refund}");
    app.ctx.clock.advance(chrono::Duration::minutes(11));
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    let refunds = app.raw_strings(&format!("SELECT status FROM refunds WHERE payment_id = '{pid}'")).await;
    assert_eq!(refunds, vec!["succeeded".to_owned()], "refunded before the conversion");
    app.ctx.clock.advance(chrono::Duration::days(7));
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    // With deferred numbering the invoice is queued: the pass numbers it and then credits.
    app.number_queued_invoices().await;
    assert_eq!(get_k(&app, &k, &format!("/v1/subscriptions/{sid}")).await["status"], "active");
    let payments = app
        .raw_strings(&format!(
            "SELECT request_key || ' ' || status || ' ' || refunded_amount FROM payments WHERE customer_id = '{}'",
            shop.cus
        ))
        .await;
    assert_eq!(payments, vec![format!("renewal-{sid}-1 captured 100")], "nothing charged again");
    let invoice = app
        .raw_strings(&format!(
            "SELECT i.id || ' ' || i.status || ' ' || i.amount_paid || ' ' || i.amount_credited FROM invoices i \
             JOIN invoice_payments p ON p.invoice_id = i.id AND p.tenant_id = i.tenant_id WHERE p.payment_id = '{pid}'"
        ))
        .await;
    assert_eq!(invoice.len(), 1, "{invoice:?}");
    let (invoice_id, rest) = invoice[0].split_once(' ').unwrap();
    assert_eq!(rest, "paid 499 100", "paid by the charge, the refund credited");
    let notes = app
        .raw_strings(&format!(
            "SELECT refund_id || ' ' || total FROM credit_notes WHERE invoice_id = '{invoice_id}'"
        ))
        .await;
    assert_eq!(notes, vec![format!("{} 100", refund["id"].as_str().unwrap())]);
    assert_eq!((app.sandbox_captured(), app.sandbox_refunded()), (499, 100));
    // Later ticks change nothing.
    azotte_service::subscriptions::run_due_everywhere(&app.ctx).await.unwrap();
    app.number_queued_invoices().await;
    assert_eq!(app.sandbox_refunded(), 100);
    let notes =
        app.raw_strings(&format!("SELECT id FROM credit_notes WHERE invoice_id = '{invoice_id}'")).await;
    assert_eq!(notes.len(), 1, "one credit note for the refund");
}

/// Records payment `pid` as captured (499), as reconciliation would once it found the charge the
/// sandbox took, and nothing else happens (no task after the move).
async fn captured_as_reconciled(app: &TestApp, pid: &str) {
    let psp_id = app
        .ctx
        .psp
        .sandbox
        .events()
        .iter()
        .rev()
        .find_map(|e| match &e.object {
            azotte_payments::WebhookObject::Payment(p) => Some(p.psp_id.clone()),
            _ => None,
        })
        .unwrap();
    app.raw_exec(&format!(
        "UPDATE payments SET status = 'captured', captured_amount = 499, psp_payment_id = '{psp_id}' WHERE id = '{pid}'"
    ))
    .await
    .unwrap();
}

async fn three_d_secure_checkout_waits_for_the_customer(app: TestApp) {
    let (_, k, waiting) = waiting_3ds(&app).await;
    assert_eq!(waiting["status"], "requires_action");
    assert!(waiting["next_action"].is_object(), "{waiting}");
    // The customer authenticates; the PSP's webhook settles the payment and runs the job at
    // once (no worker needed): the job's run continues the request's lineage.
    let payment = complete_3ds(&app, &waiting).await;
    let done = ended(&app, &k, &id(&waiting)).await;
    assert_eq!((done["status"].as_str(), done["next_action"].as_object()), (Some("succeeded"), None));
    assert_eq!(app.ctx.psp.sandbox.ledger().captured(&id(&payment).parse().unwrap()), 999);
    // The webhook's run continues the request's lineage: its actions are caused by the
    // request's `checkout.create`, as the first run's were.
    let cor = payment["correlation_id"].as_str().map(str::to_owned);
    let timeline =
        get(&app, &format!("/v1/subscriptions/{}/timeline", done["subscription_id"].as_str().unwrap())).await;
    let cor = cor.unwrap_or_else(|| timeline["data"][0]["correlation_id"].as_str().unwrap().to_owned());
    let lineage: Value = get(&app, &format!("/v1/lineage/{cor}")).await;
    let roots = lineage["roots"].as_array().unwrap();
    assert_eq!((roots.len(), roots[0]["type"].as_str()), (1, Some("checkout.create")), "{lineage:#}");
    let text = lineage.to_string();
    assert!(text.contains("subscription.created") && text.contains("checkout.succeeded"), "{lineage:#}");
}

/// The PSP's news about a checkout's payment arrives while another runner holds the checkout
/// (the worker re-checking it, say, having read the payment just before, and about to leave it
/// waiting for minutes): the webhook's task takes the checkout as soon as that runner lets go,
/// and the customer sees the subscription then, not at the worker's next look.
async fn a_webhook_during_another_run_finishes_the_checkout_when_that_run_lets_go(app: TestApp) {
    let (_, k, waiting) = waiting_3ds(&app).await;
    assert_eq!(waiting["status"], "requires_action");
    let hold =
        |until: &str| format!("UPDATE checkouts SET locked_until = {until} WHERE id = '{}'", id(&waiting));
    // Another runner holds it…
    assert_eq!(app.raw_exec(&hold("'9999-01-01T00:00:00+00:00'")).await, Ok(1));
    complete_3ds(&app, &waiting).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let still = get_k(&app, &k, &format!("/v1/checkouts/{}", id(&waiting))).await;
    assert_eq!(still["status"], "requires_action", "nobody but the holder may run it");
    // … and lets go, as a run leaving it waiting does (no worker runs here).
    assert_eq!(app.raw_exec(&hold("NULL")).await, Ok(1));
    let done = ended(&app, &k, &id(&waiting)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

async fn foreign_ids_and_methods_are_refused(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    // A payment method of another storefront's PSP account.
    let sf2 = id(&post(
        &app,
        "/v1/storefronts",
        json!({"name": "App", "type": "mobile", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}}),
        201,
    )
    .await);
    let acc2 = id(&post(
        &app,
        &format!("/v1/storefronts/{sf2}/psp-accounts"),
        json!({"connector": "sandbox", "display_name": "S2", "mode": "test"}),
        201,
    )
    .await);
    let pm2 = id(&post(
        &app,
        &format!("/v1/customers/{}/payment-methods", shop.cus),
        json!({"storefront_id": sf2, "psp_account_id": acc2, "token": "tok_sandbox_success"}),
        201,
    )
    .await);
    let r = app
        .post("/v1/checkouts", json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": pm2}))
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!(r.errors[0].code, "payment_method_not_in_storefront");
    // A checkout, and the entitlements its subscription grants, are seen only by credentials
    // that may see its storefront.
    let c = checkout(&app, &shop, &o, &shop.monthly).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    app.admin_mfa().await;
    for (sf, status, held) in [(&sf2, 404, 0), (&shop.sf, 200, 3)] {
        let k = app
            .api_key(
                T,
                ENV,
                json!({"description": "one shop", "role": "tenant_admin", "storefront_ids": [sf]}),
            )
            .await;
        let as_key = |path: String| app.get(&path).token(k["secret"].as_str().unwrap()).header("x-tn", T);
        as_key(format!("/v1/checkouts/{}", id(&c))).expect(status).await;
        let e: Value = as_key(format!("/v1/customers/{}/entitlements", shop.cus)).expect(200).await.json();
        assert_eq!(e["data"].as_array().map(Vec::len), Some(held), "{e}");
        as_key(format!("/v1/customers/{}/entitlements/video", shop.cus))
            .expect(if held > 0 { 200 } else { 404 })
            .await;
    }
    // Another tenant sees none of it.
    app.create_tenant("other").await;
    for path in [
        format!("/v1/offers/{}", id(&o)),
        format!("/v1/customers/{}/entitlements", shop.cus),
        format!("/v1/checkouts/{}", id(&c)),
    ] {
        app.get(&path).tenant("other", ENV).expect(404).await;
    }
    let r = app
        .post("/v1/offers", json!({"customer_id": shop.cus, "storefront_id": shop.sf}))
        .tenant("other", ENV)
        .expect(404)
        .await
        .problem();
    assert!(r.code.ends_with("_not_found"), "{}", r.code);
}

/// `POST /v1/checkouts` with `Prefer: wait=N`: the answer is the job's result (201), so the client
/// need not poll; the same key replays it; `respond-async` keeps the 202.
async fn prefer_wait_answers_with_the_checkouts_result(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_success").await;
    let o = offer(&app, &shop).await;
    let body = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let send = || {
        app.post("/v1/checkouts", body.clone())
            .tenant(T, ENV)
            .header("Prefer", "wait=5")
            .header("Idempotency-Key", "buy-and-wait")
    };
    let r = send().expect(201).await;
    assert_eq!(r.header("retry-after"), None);
    let done: Value = r.json();
    assert_eq!(done["status"], "succeeded", "{done}");
    let stored = get(&app, &format!("/v1/checkouts/{}", id(&done))).await;
    for field in ["status", "subscription_id", "payment_id", "failure_code", "next_action"] {
        assert_eq!(stored[field], done[field], "{field}");
    }
    let sub = get(&app, &format!("/v1/subscriptions/{}", done["subscription_id"].as_str().unwrap())).await;
    assert_eq!(sub["status"], "active");
    assert_eq!(
        app.ctx.psp.sandbox.ledger().captured(&done["payment_id"].as_str().unwrap().parse().unwrap()),
        999
    );
    // Its invoice: numbered (the first of the series), paid by the checkout's payment.
    let invoices = get(&app, &format!("/v1/invoices?subscription_id={}", id(&sub))).await;
    let inv = &invoices["data"].as_array().unwrap()[0];
    assert_eq!(inv["status"], "paid");
    let number = inv["number"].as_str().unwrap();
    assert!(number.starts_with("INV-") && number.ends_with("-000001"), "{number}");
    // The same key again: the same answer, marked as a replay; nothing charged twice.
    let again = send().expect(201).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json::<Value>()["id"], done["id"]);
    let captures = app
        .ctx
        .psp
        .sandbox
        .ledger()
        .entries()
        .into_iter()
        .filter(|e| matches!(e.kind, azotte_payments::EntryKind::Capture));
    assert_eq!(captures.map(|e| e.amount).sum::<i64>(), 999, "charged once");
    // A client that asks for the asynchronous answer gets the 202 and polls, as without `wait`.
    let trial = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.trial});
    let r = app
        .post("/v1/checkouts", trial)
        .tenant(T, ENV)
        .header("Prefer", "respond-async, wait=5")
        .expect(202)
        .await;
    assert_eq!(r.header("retry-after"), Some("1"));
    let c: Value = r.json();
    assert_eq!(c["status"], "processing");
    assert_eq!(settle(&app, &id(&c)).await["status"], "succeeded");
}

/// With `Prefer: wait`, a declined card answers 201 `failed` with its reason.
async fn prefer_wait_answers_a_decline(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_decline_insufficient_funds").await;
    let o = offer(&app, &shop).await;
    let body = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let done: Value =
        app.post("/v1/checkouts", body).tenant(T, ENV).header("Prefer", "wait=5").expect(201).await.json();
    assert_eq!(
        (done["status"].as_str(), done["failure_code"].as_str()),
        (Some("failed"), Some("insufficient_funds"))
    );
    assert_eq!(get(&app, &format!("/v1/checkouts/{}", id(&done))).await["status"], "failed");
}

/// With `Prefer: wait`, 3-D Secure answers 201 `requires_action` with the PSP's next action; a
/// PSP slower than the wait leaves the answer `processing` (202) and the job finishes anyway.
async fn prefer_wait_answers_requires_action_or_processing(app: TestApp) {
    let shop = shop(&app, "tok_sandbox_requires_action").await;
    let o = offer(&app, &shop).await;
    let body = json!({"customer_id": shop.cus, "offer_id": o["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    let waiting: Value = app
        .post("/v1/checkouts", body.clone())
        .tenant(T, ENV)
        .header("Prefer", "wait=5")
        .expect(201)
        .await
        .json();
    assert_eq!(waiting["status"], "requires_action");
    assert!(waiting["next_action"].is_object(), "{waiting}");

    // (A new offer: the first's item is being checked out.)
    let o2 = offer(&app, &shop).await;
    let body = json!({"customer_id": shop.cus, "offer_id": o2["id"], "price_id": shop.monthly, "payment_method_id": shop.pm});
    app.ctx.psp.sandbox.set_extra_latency(Duration::from_millis(1500));
    let c: Value =
        app.post("/v1/checkouts", body).tenant(T, ENV).header("Prefer", "wait=1").expect(202).await.json();
    assert_eq!(c["status"], "processing");
    // The job goes on without the request.
    assert_eq!(settle(&app, &id(&c)).await["status"], "requires_action");
}

both!(
    trials_convert_with_a_charge_or_lapse_without_a_method,
    three_d_secure_checkout_waits_for_the_customer,
    a_webhook_during_another_run_finishes_the_checkout_when_that_run_lets_go,
    a_checkout_that_fails_after_its_charge_is_refunded,
    a_checkout_failing_during_3ds_cancels_its_payment,
    an_abandoned_3ds_checkout_expires_and_its_payment_is_cancelled,
    a_checkouts_job_has_one_runner_at_a_time,
    a_checkout_failing_as_its_3ds_completes_refunds_the_charge,
    a_completed_3ds_checkout_whose_webhook_was_lost_succeeds_at_expiry,
    a_trial_cancelled_while_its_conversion_is_charged_is_refunded,
    a_trial_whose_conversion_the_psp_could_not_take_converts_later,
    a_trial_cancelled_while_its_conversion_is_unknown_is_refunded_when_it_resolves,
    a_conversion_charge_captured_after_its_trial_ended_is_swept_and_refunded,
    foreign_ids_and_methods_are_refused,
    prefer_wait_answers_with_the_checkouts_result,
    prefer_wait_answers_a_decline,
    prefer_wait_answers_requires_action_or_processing
);

both_numberings!(a_partly_refunded_conversion_charge_pays_the_conversion_and_is_credited);
