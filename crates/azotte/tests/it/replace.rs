//! Plan changes (replace): a `replace` offer lists the other prices of the subscription's
//! family; the preview shows exactly what the change does; an upgrade mid-period charges the
//! prorated difference once (also when the request is repeated) and switches entitlements at
//! once; a downgrade never charges; `at_period_end` leaves the change to the renewal; a charge
//! in flight finishes later without charging twice; bad input gets stable codes.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{Resp, TestApp};

const T: &str = "repl";
const ENV: &str = "development";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// A storefront with a `video` family (basic 4.99, premium 9.99, ultra 19.99 a month; premium
/// adds `hd` and 4 `screens`) and a `music` family, a customer with a card, and an API key
/// (the test clock outlives access tokens).
struct Shop {
    key: String,
    sf: String,
    acc: String,
    cus: String,
    pm: String,
    basic: String,
    premium: String,
    ultra: String,
    music: String,
}

impl Shop {
    async fn send(
        &self,
        app: &TestApp,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Resp {
        let mut c = app.request(method, path).token(&self.key).header("x-tn", T);
        if let Some(b) = body {
            c = c.json(b);
        }
        c.expect(status).await
    }
    async fn call(
        &self,
        app: &TestApp,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        self.send(app, method, path, body, status).await.json()
    }
    async fn post(&self, app: &TestApp, path: &str, body: Value, status: u16) -> Value {
        self.call(app, reqwest::Method::POST, path, Some(body), status).await
    }
    async fn get(&self, app: &TestApp, path: &str, status: u16) -> Value {
        self.call(app, reqwest::Method::GET, path, None, status).await
    }
    /// The code of a refused request (a field error's for `422`).
    async fn refused(
        &self,
        app: &TestApp,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> String {
        let p = self.send(app, method, path, body, status).await.problem();
        if status == 422 {
            p.errors[0].code.clone()
        } else {
            p.code
        }
    }
    async fn replace_offer(&self, app: &TestApp, sub: &str) -> Value {
        self.post(
            app,
            "/v1/offers",
            json!({"customer_id": self.cus, "storefront_id": self.sf, "intent": "replace", "subscription_id": sub}),
            201,
        )
        .await
    }
    /// Changes `sub` to `price` of `offer`.
    async fn replace(&self, app: &TestApp, sub: &str, offer: &Value, price: &str, status: u16) -> Value {
        let body = json!({"offer_id": offer["id"], "price_id": price});
        self.post(app, &format!("/v1/subscriptions/{sub}/replace"), body, status).await
    }
    async fn preview(&self, app: &TestApp, sub: &str, price: &str) -> Value {
        self.get(app, &format!("/v1/subscriptions/{sub}/preview-replace?price_id={price}"), 200).await
    }
    async fn entitlements(&self, app: &TestApp) -> Vec<(String, Value)> {
        let v = self.get(app, &format!("/v1/customers/{}/entitlements", self.cus), 200).await;
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["key"].as_str().unwrap().to_owned(), e["quantity"].clone()))
            .collect()
    }
    async fn journal_types(&self, app: &TestApp, sub: &str) -> Vec<String> {
        let t = self.get(app, &format!("/v1/subscriptions/{sub}/timeline"), 200).await;
        t["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    }

    /// Buys `price` with the shop's card: the subscription's id.
    async fn subscribe(&self, app: &TestApp, price: &str) -> String {
        let offer = self
            .post(app, "/v1/offers", json!({"customer_id": self.cus, "storefront_id": self.sf}), 201)
            .await;
        let c = self
            .post(app, "/v1/checkouts", json!({"customer_id": self.cus, "offer_id": offer["id"], "price_id": price, "payment_method_id": self.pm}), 202)
            .await;
        for _ in 0..200 {
            let v = self.get(app, &format!("/v1/checkouts/{}", id(&c)), 200).await;
            if v["status"] == "succeeded" {
                return v["subscription_id"].as_str().unwrap().to_owned();
            }
            assert_eq!(v["status"], "processing", "{v}");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("checkout did not finish");
    }
}

async fn shop(app: &TestApp) -> Shop {
    app.create_tenant(T).await;
    app.admin_mfa().await;
    let k = app.api_key(T, ENV, json!({"description": "ops", "role": "tenant_admin"})).await;
    let mut s = Shop {
        key: k["secret"].as_str().unwrap().to_owned(),
        sf: String::new(),
        acc: String::new(),
        cus: String::new(),
        pm: String::new(),
        basic: String::new(),
        premium: String::new(),
        ultra: String::new(),
        music: String::new(),
    };
    s.sf = id(&s
        .post(
            app,
            "/v1/storefronts",
            json!({"name": "Web", "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
                   "tax": {"kind": "inclusive", "rate_bp": 1900}}),
            201,
        )
        .await);
    for (key, kind) in
        [("video", "boolean"), ("hd", "boolean"), ("screens", "quantity"), ("audio", "boolean")]
    {
        let mut e = json!({"key": key, "name": key, "kind": kind});
        if kind == "quantity" {
            e["unit"] = json!("screens");
        }
        s.post(app, "/v1/entitlements", e, 201).await;
    }
    let mut bundles = Vec::new();
    for (key, family, ents) in [
        ("basic", "video", json!([{"key": "video"}])),
        ("premium", "video", json!([{"key": "video"}, {"key": "hd"}, {"key": "screens", "quantity": 4}])),
        ("ultra", "video", json!([{"key": "video"}, {"key": "hd"}, {"key": "screens", "quantity": 8}])),
        ("music", "music", json!([{"key": "audio"}])),
    ] {
        let b = json!({"key": key, "name": key, "type": "subscription", "status": "active", "family": family, "entitlements": ents});
        bundles.push(id(&s.post(app, "/v1/bundles", b, 201).await));
    }
    let [basic, premium, ultra, music] = <[String; 4]>::try_from(bundles).unwrap();
    let price = |b: &str, amount: i64| json!({"bundle_id": b, "storefront_id": s.sf, "currency": "EUR", "amount": amount, "billing_period": {"unit": "month", "count": 1}});
    s.basic = id(&s.post(app, "/v1/prices", price(&basic, 499), 201).await);
    s.premium = id(&s.post(app, "/v1/prices", price(&premium, 999), 201).await);
    s.ultra = id(&s.post(app, "/v1/prices", price(&ultra, 1999), 201).await);
    s.music = id(&s.post(app, "/v1/prices", price(&music, 299), 201).await);
    s.acc = id(&s
        .post(
            app,
            &format!("/v1/storefronts/{}/psp-accounts", s.sf),
            json!({"connector": "sandbox", "display_name": "S", "mode": "test"}),
            201,
        )
        .await);
    s.cus = id(&s.post(app, "/v1/customers", json!({"external_id": "switcher", "country": "DE"}), 201).await);
    s.pm = id(&s
        .post(
            app,
            &format!("/v1/customers/{}/payment-methods", s.cus),
            json!({"storefront_id": s.sf, "psp_account_id": s.acc, "token": "tok_sandbox_success"}),
            201,
        )
        .await);
    s
}

fn captured(app: &TestApp) -> i64 {
    app.sandbox_captured()
}

async fn tick(app: &TestApp) {
    app.subscription_tick().await
}

/// The prorated share, computed here independently: `amount × unused / whole`, half up.
fn share(amount: i64, unused: i64, whole: i64) -> i64 {
    let exact = amount as f64 * unused as f64 / whole as f64;
    let floor = (amount * unused) / whole;
    let rem2 = 2 * ((amount * unused) % whole);
    let r = if rem2 >= whole { floor + 1 } else { floor };
    assert!((r as f64 - exact).abs() <= 0.5 + 1e-9);
    r
}

/// The figures both the preview and the change must show.
fn figures(v: &Value) -> Value {
    json!([
        v["kind"],
        v["credit"],
        v["charge"],
        v["amount_due"],
        v["credit_unused"],
        v["effective_at"],
        v["period_end"],
        v["to_price_id"],
        v["to_amount"]
    ])
}

async fn an_upgrade_charges_the_prorated_difference_once_and_switches_at_once(app: TestApp) {
    let s = shop(&app).await;
    let sub = s.subscribe(&app, &s.basic).await;
    assert_eq!(captured(&app), 499);
    app.ctx.clock.advance(chrono::Duration::days(10) + chrono::Duration::seconds(12_345));
    let before = s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await;
    assert!(!s.entitlements(&app).await.iter().any(|(k, _)| k == "hd"));

    // The offer: the other prices of the family, not the current one, not another family's.
    let offer = s.replace_offer(&app, &sub).await;
    assert_eq!(
        (offer["intent"].as_str(), offer["subscription_id"].as_str()),
        (Some("replace"), Some(sub.as_str()))
    );
    let mut offered: Vec<&str> =
        offer["items"].as_array().unwrap().iter().map(|i| i["price_id"].as_str().unwrap()).collect();
    offered.sort_unstable();
    let mut family = vec![s.premium.as_str(), s.ultra.as_str()];
    family.sort_unstable();
    assert_eq!(offered, family);
    assert!(offer["items"].as_array().unwrap().iter().all(|i| i["trial_days"] == 0));

    // The preview: exactly the prorated difference, same period end.
    let p = s.preview(&app, &sub, &s.premium).await;
    let (start, end, now) =
        (at(&before["current_period_start"]), at(&before["current_period_end"]), app.ctx.clock.now());
    let (unused, whole) = ((end - now).num_seconds(), (end - start).num_seconds());
    let (credit, charge) = (share(499, unused, whole), share(999, unused, whole));
    assert_eq!(
        (
            p["kind"].as_str(),
            p["policy"].as_str(),
            p["credit"].as_i64(),
            p["charge"].as_i64(),
            p["amount_due"].as_i64()
        ),
        (Some("upgrade"), Some("immediate_prorated"), Some(credit), Some(charge), Some(charge - credit)),
        "{p}"
    );
    assert!(charge - credit > 0);
    assert_eq!(at(&p["period_end"]), end);
    assert_eq!(at(&p["effective_at"]), now);
    assert_eq!(captured(&app), 499, "a preview changes nothing");

    // The change: what the preview said, charged once, entitlements switched at once.
    let body = json!({"offer_id": offer["id"], "price_id": s.premium});
    let r = s.post(&app, &format!("/v1/subscriptions/{sub}/replace"), body.clone(), 200).await;
    let (rep, after) = (&r["replacement"], &r["subscription"]);
    assert_eq!(rep["status"], "applied", "{r}");
    assert_eq!(figures(rep), figures(&p));
    assert!(rep["payment_id"].is_string());
    assert_eq!((after["price_id"].as_str(), after["amount"].as_i64()), (Some(s.premium.as_str()), Some(999)));
    assert_eq!(after["current_period_end"], before["current_period_end"], "same billing anchor");
    assert_eq!(after["current_period_start"], before["current_period_start"]);
    assert_eq!(captured(&app), 499 + charge - credit);
    let invoices = s.get(&app, &format!("/v1/invoices?subscription_id={sub}"), 200).await;
    let proration: Vec<&Value> = invoices["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["total"] == json!(charge - credit))
        .collect();
    assert_eq!(proration.len(), 1, "{invoices}");
    assert_eq!(proration[0]["status"], "paid");
    let ents = s.entitlements(&app).await;
    assert!(ents.contains(&("hd".to_owned(), Value::Null)), "{ents:?}");
    assert!(ents.contains(&("screens".to_owned(), json!(4))), "{ents:?}");

    // The same request again (a client retry): the same change, nothing charged.
    let again = s.post(&app, &format!("/v1/subscriptions/{sub}/replace"), body.clone(), 200).await;
    assert_eq!(again["replacement"]["id"], rep["id"]);
    assert_eq!(captured(&app), 499 + charge - credit, "charged once");
    // …also with an Idempotency-Key, twice.
    for _ in 0..2 {
        app.post(&format!("/v1/subscriptions/{sub}/replace"), body.clone())
            .token(&s.key)
            .header("x-tn", T)
            .header("idempotency-key", "replace-retry-1")
            .expect(200)
            .await;
    }
    assert_eq!(captured(&app), 499 + charge - credit, "charged once");

    let types = s.journal_types(&app, &sub).await;
    for t in ["subscription.replace", "replace.proration", "subscription.replaced", "entitlements.granted"] {
        assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
    }
    let proration =
        app.raw_strings("SELECT body FROM journal_entries WHERE type = 'replace.proration'").await;
    assert_eq!(proration.len(), 1, "one decision: retries do not quote again");
    let d: Value = serde_json::from_str(&proration[0]).unwrap();
    assert_eq!(
        (d["credit"].as_i64(), d["charge"].as_i64(), d["rounding"].as_str()),
        (Some(credit), Some(charge), Some("half_up"))
    );

    // The renewal charges the new price from the period end on.
    app.ctx.clock.advance(end - app.ctx.clock.now() + chrono::Duration::minutes(1));
    tick(&app).await;
    let renewed = s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await;
    assert_eq!(renewed["current_period_start"], before["current_period_end"]);
    assert_eq!(captured(&app), 499 + charge - credit + 999);
}

async fn a_downgrade_never_charges(app: TestApp) {
    let s = shop(&app).await;
    let sub = s.subscribe(&app, &s.premium).await;
    app.ctx.clock.advance(chrono::Duration::days(5));
    let offer = s.replace_offer(&app, &sub).await;
    let p = s.preview(&app, &sub, &s.basic).await;
    assert_eq!((p["kind"].as_str(), p["amount_due"].as_i64()), (Some("downgrade"), Some(0)));
    assert_eq!(
        p["credit_unused"].as_i64().unwrap(),
        p["credit"].as_i64().unwrap() - p["charge"].as_i64().unwrap()
    );
    assert!(p["credit_unused"].as_i64().unwrap() > 0, "{p}");
    let r = s.replace(&app, &sub, &offer, &s.basic, 200).await;
    assert_eq!(r["replacement"]["status"], "applied");
    assert_eq!(figures(&r["replacement"]), figures(&p));
    assert_eq!(r["replacement"]["payment_id"], Value::Null);
    assert_eq!(r["subscription"]["amount"], 499);
    assert_eq!(captured(&app), 999, "nothing charged, nothing refunded");
    let keys: Vec<String> = s.entitlements(&app).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["video"], "hd and screens went with premium");
    // The journal says what went, with the change.
    let revoked =
        app.raw_strings("SELECT body FROM journal_entries WHERE type = 'entitlements.revoked'").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let body: Value = serde_json::from_str(&revoked[0]).unwrap();
    assert_eq!(
        (body["keys"].clone(), body["customer_id"].as_str()),
        (json!(["hd", "screens"]), Some(s.cus.as_str()))
    );
    app.get(&format!("/v1/customers/{}/entitlements/hd", s.cus))
        .token(&s.key)
        .header("x-tn", T)
        .expect(404)
        .await;
    // The offer was for premium's alternatives; going back up takes a new one, and is charged
    // for the time left.
    let path = format!("/v1/subscriptions/{sub}/replace");
    let code = s
        .refused(
            &app,
            reqwest::Method::POST,
            &path,
            Some(json!({"offer_id": offer["id"], "price_id": s.premium})),
            422,
        )
        .await;
    assert_eq!(code, "price_not_in_offer");
    let offer = s.replace_offer(&app, &sub).await;
    let up = s.preview(&app, &sub, &s.premium).await;
    assert!(up["amount_due"].as_i64().unwrap() > 0);
    s.replace(&app, &sub, &offer, &s.premium, 200).await;
    assert_eq!(captured(&app), 999 + up["amount_due"].as_i64().unwrap());
    let revoked =
        app.raw_strings("SELECT body FROM journal_entries WHERE type = 'entitlements.revoked'").await;
    assert_eq!(revoked.len(), 1, "an upgrade revokes nothing");
}

async fn at_period_end_the_renewal_applies_the_change(app: TestApp) {
    let s = shop(&app).await;
    let sf = s
        .call(
            &app,
            reqwest::Method::PATCH,
            &format!("/v1/storefronts/{}", s.sf),
            Some(json!({"lifecycle": {"replace_policy": "at_period_end"}})),
            200,
        )
        .await;
    assert_eq!(sf["lifecycle"]["replace_policy"], "at_period_end");
    let sub = s.subscribe(&app, &s.basic).await;
    app.ctx.clock.advance(chrono::Duration::days(3));
    let before = s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await;
    let offer = s.replace_offer(&app, &sub).await;
    let p = s.preview(&app, &sub, &s.ultra).await;
    assert_eq!(
        (p["policy"].as_str(), p["amount_due"].as_i64(), p["credit"].as_i64()),
        (Some("at_period_end"), Some(0), Some(0))
    );
    assert_eq!(p["effective_at"], before["current_period_end"]);
    // A first choice, then another: the later one supersedes the scheduled one.
    assert_eq!(s.replace(&app, &sub, &offer, &s.premium, 200).await["replacement"]["status"], "scheduled");
    let r = s.replace(&app, &sub, &offer, &s.ultra, 200).await;
    assert_eq!(r["replacement"]["status"], "scheduled");
    assert_eq!(figures(&r["replacement"]), figures(&p));
    assert_eq!(r["subscription"]["price_id"], s.basic.as_str(), "nothing changes before the period end");
    assert_eq!(captured(&app), 499);
    assert!(!s.entitlements(&app).await.iter().any(|(k, _)| k == "hd"));
    assert!(s.journal_types(&app, &sub).await.iter().any(|t| t == "subscription.replace_scheduled"));

    let listed = s.get(&app, &format!("/v1/subscriptions/{sub}/replacements"), 200).await;
    assert_eq!(listed["data"][0]["status"], "scheduled");
    assert_eq!(listed["data"][0]["to_price_id"], s.ultra.as_str());
    assert_eq!(listed["data"][1]["status"], "superseded");

    // The renewal charges the new price and applies the change.
    app.ctx.clock.advance(chrono::Duration::days(29));
    tick(&app).await;
    let renewed = s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await;
    assert_eq!(
        (renewed["price_id"].as_str(), renewed["amount"].as_i64()),
        (Some(s.ultra.as_str()), Some(1999)),
        "{renewed}"
    );
    assert_eq!(renewed["current_period_start"], before["current_period_end"]);
    assert_eq!(captured(&app), 499 + 1999);
    assert!(s.entitlements(&app).await.contains(&("screens".to_owned(), json!(8))));
    let types = s.journal_types(&app, &sub).await;
    let (replaced, renewed_at) = (
        types.iter().position(|t| t == "subscription.replaced").unwrap(),
        types.iter().position(|t| t == "subscription.renewed").unwrap(),
    );
    assert!(replaced < renewed_at, "{types:?}");
    let listed = s.get(&app, &format!("/v1/subscriptions/{sub}/replacements"), 200).await;
    assert_eq!(listed["data"][0]["status"], "applied");
    assert!(listed["data"][0]["payment_id"].is_string(), "the renewal's payment");
    // The next renewal is just a renewal at the new price.
    app.ctx.clock.advance(chrono::Duration::days(31));
    tick(&app).await;
    assert_eq!(captured(&app), 499 + 2 * 1999);
}

/// Turns the tenant's safe mode on or off.
async fn safe_mode(app: &TestApp, s: &Shop, on: bool) {
    let body =
        if on { json!({"enabled": true, "reason": "PSP incident"}) } else { json!({"enabled": false}) };
    s.call(app, reqwest::Method::PUT, "/v1/tenant/safe-mode", Some(body), 200).await;
}

async fn a_charge_in_flight_finishes_later_without_charging_twice(app: TestApp) {
    let s = shop(&app).await;
    let sub = s.subscribe(&app, &s.basic).await;
    app.ctx.clock.advance(chrono::Duration::days(12));
    let offer = s.replace_offer(&app, &sub).await;
    let p = s.preview(&app, &sub, &s.premium).await;
    // Safe mode: the charge is queued, the change waits (202).
    safe_mode(&app, &s, true).await;
    let body = json!({"offer_id": offer["id"], "price_id": s.premium});
    let r = s.post(&app, &format!("/v1/subscriptions/{sub}/replace"), body.clone(), 202).await;
    assert_eq!(r["replacement"]["status"], "processing");
    assert_eq!(r["subscription"]["price_id"], s.basic.as_str());
    // Retried meanwhile: still waiting, one payment.
    s.post(&app, &format!("/v1/subscriptions/{sub}/replace"), body.clone(), 202).await;
    // Another change meanwhile is refused.
    let other = json!({"offer_id": offer["id"], "price_id": s.ultra});
    assert_eq!(
        s.refused(&app, reqwest::Method::POST, &format!("/v1/subscriptions/{sub}/replace"), Some(other), 409)
            .await,
        "replace_in_progress"
    );
    safe_mode(&app, &s, false).await;
    // Safe mode lifted: the queued payment goes out; the worker finishes the change.
    let mut state = Value::Null;
    for _ in 0..100 {
        app.ctx.clock.advance(chrono::Duration::minutes(1));
        tick(&app).await;
        state = s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await;
        if state["price_id"] == s.premium.as_str() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state["price_id"], s.premium.as_str(), "{state}");
    assert_eq!(captured(&app), 499 + p["amount_due"].as_i64().unwrap(), "charged once");
    let again = s.post(&app, &format!("/v1/subscriptions/{sub}/replace"), body, 200).await;
    assert_eq!(again["replacement"]["status"], "applied");
    assert_eq!(captured(&app), 499 + p["amount_due"].as_i64().unwrap());
    assert!(s.entitlements(&app).await.iter().any(|(k, _)| k == "hd"));
}

/// A plan change whose charge went through only after the subscription was cancelled (the
/// charge queued in safe mode meanwhile): the change is not made, its charge is refunded in
/// full, and the change fails `subscription_changed`.
async fn a_change_paid_after_its_subscription_was_cancelled_is_refunded(app: TestApp) {
    let s = shop(&app).await;
    let sub = s.subscribe(&app, &s.basic).await;
    app.ctx.clock.advance(chrono::Duration::days(12));
    let offer = s.replace_offer(&app, &sub).await;
    let p = s.preview(&app, &sub, &s.premium).await;
    let due = p["amount_due"].as_i64().unwrap();
    safe_mode(&app, &s, true).await;
    let body = json!({"offer_id": offer["id"], "price_id": s.premium});
    let r = s.post(&app, &format!("/v1/subscriptions/{sub}/replace"), body, 202).await;
    assert_eq!(r["replacement"]["status"], "processing");
    let cancelled = s
        .post(
            &app,
            &format!("/v1/subscriptions/{sub}/cancel"),
            json!({"method": "immediate", "reason_code": "other"}),
            200,
        )
        .await;
    assert_eq!(cancelled["status"], "canceled");
    safe_mode(&app, &s, false).await;
    // The queued charge goes out; the worker finds the change can no longer be made.
    let mut change = Value::Null;
    for _ in 0..100 {
        app.ctx.clock.advance(chrono::Duration::minutes(1));
        tick(&app).await;
        change = s.get(&app, &format!("/v1/subscriptions/{sub}/replacements"), 200).await["data"][0].clone();
        if change["status"] != "processing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        (change["status"].as_str(), change["failure_code"].as_str()),
        (Some("failed"), Some("subscription_changed")),
        "{change}"
    );
    let payment = s.get(&app, &format!("/v1/payments/{}", change["payment_id"].as_str().unwrap()), 200).await;
    assert_eq!(
        (payment["captured_amount"].as_i64(), payment["refunded_amount"].as_i64()),
        (Some(due), Some(due)),
        "{payment}"
    );
    let now = s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await;
    assert_eq!(now["price_id"], s.basic.as_str(), "not switched: {now}");
    assert!(matches!(now["status"].as_str(), Some("canceled" | "expired")), "{now}");
}

async fn bad_replacements_get_stable_codes(app: TestApp) {
    use reqwest::Method;
    let s = shop(&app).await;
    let sub = s.subscribe(&app, &s.basic).await;
    let offer = s.replace_offer(&app, &sub).await;
    let replace = |price: &str, offer: &Value| json!({"offer_id": offer["id"], "price_id": price});
    let path = format!("/v1/subscriptions/{sub}/replace");
    let preview = |price: &str| format!("/v1/subscriptions/{sub}/preview-replace?price_id={price}");

    // A price of another family, or the current one.
    assert_eq!(s.refused(&app, Method::GET, &preview(&s.music), None, 422).await, "price_not_in_family");
    assert_eq!(s.refused(&app, Method::GET, &preview(&s.basic), None, 422).await, "price_is_current");
    assert_eq!(
        s.refused(&app, Method::POST, &path, Some(replace(&s.music, &offer)), 422).await,
        "price_not_in_offer"
    );
    // The offer must be a replace offer for this subscription and customer.
    let new_offer =
        s.post(&app, "/v1/offers", json!({"customer_id": s.cus, "storefront_id": s.sf}), 201).await;
    assert_eq!(
        s.refused(&app, Method::POST, &path, Some(replace(&s.premium, &new_offer)), 422).await,
        "offer_not_for_replace"
    );
    let other =
        id(&s.post(&app, "/v1/customers", json!({"external_id": "other", "country": "DE"}), 201).await);
    let other_pm = id(&s
        .post(
            &app,
            &format!("/v1/customers/{other}/payment-methods"),
            json!({"storefront_id": s.sf, "psp_account_id": s.acc, "token": "tok_sandbox_success"}),
            201,
        )
        .await);
    let o = s.post(&app, "/v1/offers", json!({"customer_id": other, "storefront_id": s.sf}), 201).await;
    let c = s
        .post(&app, "/v1/checkouts", json!({"customer_id": other, "offer_id": o["id"], "price_id": s.basic, "payment_method_id": other_pm}), 202)
        .await;
    let mut other_sub = String::new();
    for _ in 0..200 {
        let v = s.get(&app, &format!("/v1/checkouts/{}", id(&c)), 200).await;
        if let Some(x) = v["subscription_id"].as_str() {
            other_sub = x.to_owned();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let others_offer = s
        .post(&app, "/v1/offers", json!({"customer_id": other, "storefront_id": s.sf, "intent": "replace", "subscription_id": other_sub}), 201)
        .await;
    assert_eq!(
        s.refused(&app, Method::POST, &path, Some(replace(&s.premium, &others_offer)), 422).await,
        "offer_customer_mismatch"
    );
    // A replace offer needs the customer's own subscription.
    let bad_offer = |body: Value| {
        let s = &s;
        let app = &app;
        async move { s.refused(app, Method::POST, "/v1/offers", Some(body), 422).await }
    };
    assert_eq!(
        bad_offer(json!({"customer_id": s.cus, "storefront_id": s.sf, "intent": "replace"})).await,
        "required"
    );
    assert_eq!(
        bad_offer(json!({"customer_id": s.cus, "storefront_id": s.sf, "intent": "replace", "subscription_id": other_sub})).await,
        "subscription_customer_mismatch"
    );
    assert_eq!(
        bad_offer(
            json!({"customer_id": s.cus, "storefront_id": s.sf, "intent": "new", "subscription_id": sub})
        )
        .await,
        "not_allowed"
    );
    assert_eq!(
        bad_offer(json!({"customer_id": s.cus, "storefront_id": s.sf, "intent": "upgrade"})).await,
        "invalid_value"
    );
    // Unknown or foreign ids.
    let nobody = "sub_01jdq3m9x7e5k4w2c8v6b0n1p2";
    assert_eq!(
        s.refused(
            &app,
            Method::GET,
            &format!("/v1/subscriptions/{nobody}/preview-replace?price_id={}", s.premium),
            None,
            404
        )
        .await,
        "subscription_not_found"
    );
    assert_eq!(
        s.refused(
            &app,
            Method::POST,
            &format!("/v1/subscriptions/{nobody}/replace"),
            Some(replace(&s.premium, &offer)),
            404
        )
        .await,
        "subscription_not_found"
    );
    assert_eq!(
        s.refused(&app, Method::GET, &format!("/v1/subscriptions/{sub}/preview-replace"), None, 422).await,
        "invalid_value"
    );
    // A card that cannot be charged: the change fails and nothing changes.
    app.request(Method::DELETE, &format!("/v1/customers/{}/payment-methods/{}", s.cus, s.pm))
        .token(&s.key)
        .header("x-tn", T)
        .expect(200)
        .await;
    assert_eq!(
        s.refused(&app, Method::POST, &path, Some(replace(&s.premium, &offer)), 409).await,
        "payment_method_not_usable"
    );
    assert_eq!(s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await["price_id"], s.basic.as_str());
    assert!(s.journal_types(&app, &sub).await.iter().any(|t| t == "subscription.replace_failed"));
    // An expired offer.
    app.ctx.clock.advance(chrono::Duration::minutes(31));
    assert_eq!(
        s.refused(&app, Method::POST, &path, Some(replace(&s.premium, &offer)), 409).await,
        "offer_expired"
    );
    // An expired subscription.
    let offer = s.replace_offer(&app, &sub).await;
    s.post(
        &app,
        &format!("/v1/subscriptions/{sub}/cancel"),
        json!({"method": "immediate", "reason_code": "other"}),
        200,
    )
    .await;
    assert_eq!(s.refused(&app, Method::GET, &preview(&s.premium), None, 409).await, "not_replaceable");
    tick(&app).await;
    assert_eq!(s.get(&app, &format!("/v1/subscriptions/{sub}"), 200).await["status"], "expired");
    assert_eq!(s.refused(&app, Method::GET, &preview(&s.premium), None, 409).await, "expired");
    assert_eq!(s.refused(&app, Method::POST, &path, Some(replace(&s.premium, &offer)), 409).await, "expired");
    let expired_offer =
        json!({"customer_id": s.cus, "storefront_id": s.sf, "intent": "replace", "subscription_id": sub});
    assert_eq!(s.refused(&app, Method::POST, "/v1/offers", Some(expired_offer), 409).await, "expired");
    assert_eq!(captured(&app), 2 * 499, "the two first charges only");
}

both!(
    an_upgrade_charges_the_prorated_difference_once_and_switches_at_once,
    a_downgrade_never_charges,
    at_period_end_the_renewal_applies_the_change,
    a_charge_in_flight_finishes_later_without_charging_twice,
    bad_replacements_get_stable_codes,
    a_change_paid_after_its_subscription_was_cancelled_is_refunded
);
