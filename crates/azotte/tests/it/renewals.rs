//! Renewals and dunning, moved through time by the test clock: each period is charged once
//! (also when catching up after downtime), failures enter dunning per the storefront's policy
//! and recover or end, a new payment method retries at once, and safe mode defers renewals
//! without taking access away.

use serde_json::{json, Value};

use crate::both_numberings;
use crate::helpers::TestApp;

const T: &str = "renew";
const ENV: &str = "development";

struct Sub {
    key: String,
    sf: String,
    acc: String,
    cus: String,
    pm: String,
    sub: String,
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

impl Sub {
    async fn post(&self, app: &TestApp, path: &str, body: Value, status: u16) -> Value {
        app.post(path, body).token(&self.key).header("x-tn", T).expect(status).await.json()
    }
    async fn get(&self, app: &TestApp, path: &str) -> Value {
        app.get(path).token(&self.key).header("x-tn", T).expect(200).await.json()
    }
    async fn state(&self, app: &TestApp) -> Value {
        self.get(app, &format!("/v1/subscriptions/{}", self.sub)).await
    }
    /// Attaches a new card (`token`) to the customer (a past-due subscription retries with it).
    async fn attach(&self, app: &TestApp, token: &str) -> Value {
        let body = json!({"storefront_id": self.sf, "psp_account_id": self.acc, "token": token});
        self.post(app, &format!("/v1/customers/{}/payment-methods", self.cus), body, 201).await
    }
}

/// A monthly 9.99 EUR subscription bought with `token`, and an API key (time travel outlives
/// access tokens).
async fn subscribe(app: &TestApp) -> Sub {
    app.create_tenant(T).await;
    app.admin_mfa().await;
    let k = app.api_key(T, ENV, json!({"description": "ops", "role": "tenant_admin"})).await;
    let mut s = Sub {
        key: k["secret"].as_str().unwrap().to_owned(),
        sf: String::new(),
        acc: String::new(),
        cus: String::new(),
        pm: String::new(),
        sub: String::new(),
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
    s.post(app, "/v1/entitlements", json!({"key": "video", "name": "Video", "kind": "boolean"}), 201).await;
    let b = id(&s
        .post(app, "/v1/bundles", json!({"key": "premium", "name": "Premium", "type": "subscription", "status": "active", "entitlements": [{"key": "video"}]}), 201)
        .await);
    let price = id(&s
        .post(app, "/v1/prices", json!({"bundle_id": b, "storefront_id": s.sf, "currency": "EUR", "amount": 999, "billing_period": {"unit": "month", "count": 1}}), 201)
        .await);
    s.acc = id(&s
        .post(
            app,
            &format!("/v1/storefronts/{}/psp-accounts", s.sf),
            json!({"connector": "sandbox", "display_name": "S", "mode": "test"}),
            201,
        )
        .await);
    s.cus = id(&s.post(app, "/v1/customers", json!({"external_id": "renewer"}), 201).await);
    s.pm = id(&s
        .post(
            app,
            &format!("/v1/customers/{}/payment-methods", s.cus),
            json!({"storefront_id": s.sf, "psp_account_id": s.acc, "token": "tok_sandbox_success"}),
            201,
        )
        .await);
    let offer = s.post(app, "/v1/offers", json!({"customer_id": s.cus, "storefront_id": s.sf}), 201).await;
    let c = s
        .post(app, "/v1/checkouts", json!({"customer_id": s.cus, "offer_id": offer["id"], "price_id": price, "payment_method_id": s.pm}), 202)
        .await;
    for _ in 0..200 {
        let v = s.get(app, &format!("/v1/checkouts/{}", id(&c))).await;
        if v["status"] == "succeeded" {
            s.sub = v["subscription_id"].as_str().unwrap().to_owned();
            return s;
        }
        assert_eq!(v["status"], "processing", "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("checkout did not finish");
}

/// The subscription's invoices, oldest first: (status, number, total, amount paid).
async fn invoices_of(app: &TestApp, s: &Sub) -> Vec<(String, String, i64, i64)> {
    let v = s.get(app, &format!("/v1/invoices?subscription_id={}", s.sub)).await;
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["status"].as_str().unwrap().to_owned(),
                i["number"].as_str().unwrap_or_default().to_owned(),
                i["total"].as_i64().unwrap(),
                i["amount_paid"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn captured(app: &TestApp) -> i64 {
    app.sandbox_captured()
}

async fn tick(app: &TestApp) {
    app.subscription_tick().await
}

/// The customer deletes the subscription's card.
async fn remove_card(app: &TestApp, s: &Sub) {
    app.request(reqwest::Method::DELETE, &format!("/v1/customers/{}/payment-methods/{}", s.cus, s.pm))
        .token(&s.key)
        .header("x-tn", T)
        .expect(200)
        .await;
}

/// The card is gone: the renewal a month on fails and dunning starts.
async fn past_due(app: &TestApp, s: &Sub) {
    remove_card(app, s).await;
    app.ctx.clock.advance(chrono::Duration::days(31));
    tick(app).await;
    assert_eq!(s.state(app).await["status"], "past_due");
}

/// The one payment whose answer was lost (`unknown`), once there is one (a retry runs in the
/// background of the request that attached its card).
async fn lost_answers(app: &TestApp) -> Vec<String> {
    let mut unknown = Vec::new();
    for _ in 0..100 {
        unknown = app.raw_strings("SELECT id FROM payments WHERE status = 'unknown'").await;
        if !unknown.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert_eq!(unknown.len(), 1, "the retry's answer was lost");
    unknown
}

async fn each_period_is_charged_once_also_after_downtime(app: TestApp) {
    let s = subscribe(&app).await;
    let first = s.state(&app).await;
    assert_eq!(captured(&app), 999);
    app.ctx.clock.advance(chrono::Duration::days(31));
    tick(&app).await;
    tick(&app).await;
    let renewed = s.state(&app).await;
    assert_eq!(renewed["status"], "active");
    assert_eq!(renewed["current_period_start"], first["current_period_end"], "no gap, no overlap");
    assert_eq!(captured(&app), 2 * 999, "the second period, once");
    // A worker stopped after renewing but before its batch of jobs was marked done: the jobs
    // run again (here at once, as if their lock had expired) and find nothing left to do.
    let again = app
        .raw_exec("UPDATE renewal_jobs SET status = 'queued', locked_until = NULL WHERE status = 'done'")
        .await
        .unwrap();
    assert!(again >= 1, "jobs made due again: {again}");
    tick(&app).await;
    assert_eq!(captured(&app), 2 * 999, "a job run again charges nothing");
    assert_eq!(s.state(&app).await["current_period_end"], renewed["current_period_end"]);
    let open =
        app.raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM renewal_jobs WHERE status <> 'done'").await;
    assert_eq!(open, ["0"], "every job is done again");
    // The scheduler was down for three months: each missed period is charged once.
    app.ctx.clock.advance(chrono::Duration::days(92));
    tick(&app).await;
    tick(&app).await;
    let caught_up = s.state(&app).await;
    let end: chrono::DateTime<chrono::Utc> =
        caught_up["current_period_end"].as_str().unwrap().parse().unwrap();
    assert!(end > app.ctx.clock.now(), "caught up to the present: {caught_up}");
    assert_eq!(captured(&app), 5 * 999, "periods 3, 4 and 5, once each");
    let t: Value = s.get(&app, &format!("/v1/subscriptions/{}/timeline", s.sub)).await;
    let renewals =
        t["data"].as_array().unwrap().iter().filter(|e| e["type"] == "subscription.renewed").count();
    assert_eq!(renewals, 4);
    // Each renewal is one correlation: its invoice, charge and outcome share it.
    let renewed = t["data"].as_array().unwrap().iter().find(|e| e["type"] == "subscription.renewed").unwrap();
    let cor = renewed["correlation_id"].as_str().unwrap();
    let lineage = s.get(&app, &format!("/v1/lineage/{cor}")).await.to_string();
    for t in
        ["subscription.renew", "invoice.issued", "payment.captured", "invoice.paid", "subscription.renewed"]
    {
        assert!(lineage.contains(t), "{t} in the renewal's lineage: {lineage}");
    }
    // An invoice per charged period, each paid.
    let invoices = s.get(&app, &format!("/v1/invoices?subscription_id={}", s.sub)).await;
    let invoices = invoices["data"].as_array().unwrap();
    assert_eq!(invoices.len(), 5, "{invoices:?}");
    assert!(invoices.iter().all(|i| i["status"] == "paid"), "{invoices:?}");
}

async fn dunning_retries_recovers_with_a_new_method_or_ends(app: TestApp) {
    let s = subscribe(&app).await;
    // The card is gone: the renewal fails and dunning starts; access continues during grace.
    past_due(&app, &s).await;
    assert_eq!(s.get(&app, &format!("/v1/customers/{}/entitlements/video", s.cus)).await["access"], "full");
    // The period's invoice was issued before the charge and stays open while dunning runs.
    // (With deferred numbering the pass issues an unpaid draft once it is a second old.)
    app.ctx.clock.advance(chrono::Duration::seconds(2));
    app.number_queued_invoices().await;
    let invoices = invoices_of(&app, &s).await;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    assert_eq!((invoices[1].0.as_str(), invoices[1].2, invoices[1].3), ("open", 999, 0));
    // Its renewal is due and invoiced: it can be neither deferred nor extended (the invoice
    // would be for dates the subscription no longer has), and nothing changes.
    let before = s.state(&app).await;
    for op in ["defer", "extend"] {
        let p = app
            .post(&format!("/v1/subscriptions/{}/{op}", s.sub), json!({"days": 5}))
            .token(&s.key)
            .header("x-tn", T)
            .expect(409)
            .await
            .problem();
        assert_eq!(p.code, "renewal_unpaid", "{op}");
    }
    assert_eq!(s.state(&app).await, before);
    // Retries on day 1 and 3 fail too, against that same invoice.
    for days in [1, 2] {
        app.ctx.clock.advance(chrono::Duration::days(days));
        tick(&app).await;
        assert_eq!(s.state(&app).await["status"], "past_due");
        assert_eq!(invoices_of(&app, &s).await, invoices);
    }
    // A new payment method retries at once and recovers.
    s.attach(&app, "tok_sandbox_mastercard").await;
    let mut state = Value::Null;
    for _ in 0..100 {
        state = s.state(&app).await;
        if state["status"] == "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert_eq!(state["status"], "active", "{state}");
    assert_eq!(captured(&app), 2 * 999);
    // Recovery paid the open invoice: same number, nothing new issued.
    let after = invoices_of(&app, &s).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!((after[1].0.as_str(), &after[1].1, after[1].3), ("paid", &invoices[1].1, 999));
    let t: Value = s.get(&app, &format!("/v1/subscriptions/{}/timeline", s.sub)).await;
    let types: Vec<&str> =
        t["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"subscription.recovered") && types.contains(&"dunning.retry_scheduled"),
        "{types:?}"
    );
}

async fn exhausted_dunning_ends_the_subscription(app: TestApp) {
    let s = subscribe(&app).await;
    past_due(&app, &s).await;
    // Retries at 1, 3 and 7 days after the period end, then the end action (expire).
    for _ in 0..4 {
        app.ctx.clock.advance(chrono::Duration::days(3));
        tick(&app).await;
    }
    let ended = s.state(&app).await;
    assert_eq!(ended["status"], "expired", "{ended}");
    app.get(&format!("/v1/customers/{}/entitlements/video", s.cus))
        .token(&s.key)
        .header("x-tn", T)
        .expect(404)
        .await;
    assert_eq!(captured(&app), 999, "nothing more was charged");
    // The period's invoice, open during dunning, is given up as uncollectible.
    let invoices = invoices_of(&app, &s).await;
    let statuses: Vec<&str> = invoices.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(statuses, ["paid", "uncollectible"], "{invoices:?}");
}

/// The dunning retries scheduled so far (`dunning.retry_scheduled` decisions).
async fn retries_scheduled(app: &TestApp) -> usize {
    app.raw_strings("SELECT id FROM journal_entries WHERE type = 'dunning.retry_scheduled'").await.len()
}

/// A renewal that runs late (the worker was down ten days) and fails: its retries keep the
/// policy's gaps from when it ran — a day, then two more — instead of falling due at once one
/// after the other and using up dunning within minutes.
async fn retries_after_downtime_keep_their_gaps(app: TestApp) {
    let s = subscribe(&app).await;
    remove_card(&app, &s).await;
    app.ctx.clock.advance(chrono::Duration::days(41));
    tick(&app).await;
    assert_eq!(s.state(&app).await["status"], "past_due");
    assert_eq!(retries_scheduled(&app).await, 1);
    // Minutes later: no retry is due yet (the first is a day after the late renewal).
    for _ in 0..3 {
        app.ctx.clock.advance(chrono::Duration::minutes(20));
        tick(&app).await;
    }
    assert_eq!(retries_scheduled(&app).await, 1, "no retry ran yet");
    app.ctx.clock.advance(chrono::Duration::days(1));
    tick(&app).await;
    assert_eq!(retries_scheduled(&app).await, 2, "the first retry ran a day later");
    // The next is two days after that, not at once.
    app.ctx.clock.advance(chrono::Duration::days(1));
    tick(&app).await;
    assert_eq!(retries_scheduled(&app).await, 2);
    app.ctx.clock.advance(chrono::Duration::days(1));
    tick(&app).await;
    assert_eq!(retries_scheduled(&app).await, 3);
    assert_eq!(s.state(&app).await["status"], "past_due");
}

/// A storefront whose policy has no retries (`retry_offsets_days: []`): the first failed
/// renewal ends collection at once with the policy's end action (expire); the period's invoice
/// is uncollectible.
async fn no_retries_in_the_policy_end_dunning_at_the_first_failure(app: TestApp) {
    let s = subscribe(&app).await;
    app.patch(&format!("/v1/storefronts/{}", s.sf), json!({"dunning": {"retry_offsets_days": []}}))
        .token(&s.key)
        .header("x-tn", T)
        .expect(200)
        .await;
    remove_card(&app, &s).await;
    app.ctx.clock.advance(chrono::Duration::days(31));
    tick(&app).await;
    let ended = s.state(&app).await;
    assert_eq!(ended["status"], "expired", "{ended}");
    assert_eq!(retries_scheduled(&app).await, 0);
    let exhausted =
        app.raw_strings("SELECT body FROM journal_entries WHERE type = 'dunning.exhausted'").await;
    assert_eq!(exhausted.len(), 1, "{exhausted:?}");
    app.ctx.clock.advance(chrono::Duration::seconds(2));
    app.number_queued_invoices().await;
    let statuses: Vec<String> = invoices_of(&app, &s).await.into_iter().map(|i| i.0).collect();
    assert_eq!(statuses, ["paid", "uncollectible"]);
    // Nothing runs later.
    app.ctx.clock.advance(chrono::Duration::days(2));
    tick(&app).await;
    assert_eq!(s.state(&app).await["status"], "expired");
}

async fn safe_mode_defers_renewals_and_keeps_access(app: TestApp) {
    let s = subscribe(&app).await;
    app.request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": true, "reason": "PSP incident"}))
        .token(&s.key)
        .header("x-tn", T)
        .expect(200)
        .await;
    app.ctx.clock.advance(chrono::Duration::days(31));
    tick(&app).await;
    assert_eq!(s.state(&app).await["status"], "active");
    assert_eq!(s.get(&app, &format!("/v1/customers/{}/entitlements/video", s.cus)).await["access"], "full");
    assert_eq!(captured(&app), 999, "nothing charged while paused");
    let journal = app.raw_strings("SELECT type FROM journal_entries").await;
    assert!(journal.iter().any(|t| t == "renewal.deferred"));
    // Deferred: the scheduler leaves it alone until its retry, so deferred renewals cannot
    // crowd the others out of the due range.
    let tenant = app.raw_strings(&format!("SELECT id FROM tenants WHERE slug = '{T}'")).await.remove(0);
    let scope =
        azotte_store::auth::system_scope(&app.ctx.db, tenant.parse().unwrap(), ENV.parse().unwrap(), "test")
            .await
            .unwrap();
    let due = |at: chrono::DateTime<chrono::Utc>| {
        let (app, scope) = (&app, &scope);
        async move {
            let mut tx = app.ctx.db.tenant_read_tx(scope).await.unwrap();
            let d = azotte_store::subscriptions::due_renewals(&mut tx, at, 10).await.unwrap();
            tx.commit().await.unwrap();
            d.len()
        }
    };
    assert_eq!(due(app.ctx.clock.now()).await, 0, "not offered again before its retry");
    assert_eq!(
        due(app.ctx.clock.now() + chrono::Duration::minutes(16)).await,
        1,
        "offered again at its retry"
    );
    app.request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": false}))
        .token(&s.key)
        .header("x-tn", T)
        .expect(200)
        .await;
    app.ctx.clock.advance(chrono::Duration::minutes(16));
    tick(&app).await;
    assert_eq!(captured(&app), 2 * 999, "renewed once the pause was lifted");
    assert_eq!(s.state(&app).await["status"], "active");
}

/// Moves the test clock forward to `t`.
fn advance_to(app: &TestApp, t: chrono::DateTime<chrono::Utc>) {
    let d = t - app.ctx.clock.now();
    assert!(d > chrono::Duration::zero(), "the clock only moves forward");
    app.ctx.clock.advance(d);
}

/// Whether the customer may use `video` now (200 with full access, or 404).
async fn has_video(app: &TestApp, s: &Sub) -> bool {
    let r = app
        .get(&format!("/v1/customers/{}/entitlements/video", s.cus))
        .token(&s.key)
        .header("x-tn", T)
        .send()
        .await;
    match r.status {
        200 => r.json::<Value>()["access"] == "full",
        404 => false,
        other => panic!("entitlement check answered {other}"),
    }
}

/// Safe mode during dunning: the last retry falls due as the policy's grace ends; it is deferred
/// and the customer keeps access past the grace (journaled with the extension) for as long as the
/// deferral lasts; once the pause is lifted the retry runs and dunning ends per policy.
async fn deferred_dunning_retries_extend_the_grace(app: TestApp) {
    let s = subscribe(&app).await;
    remove_card(&app, &s).await;
    let pe: chrono::DateTime<chrono::Utc> =
        s.state(&app).await["current_period_end"].as_str().unwrap().parse().unwrap();
    let minute = chrono::Duration::minutes(1);
    // The renewal and the retries on days 1 and 3 fail (no payment method).
    for day in [0, 1, 3] {
        advance_to(&app, pe + chrono::Duration::days(day) + minute);
        tick(&app).await;
        assert_eq!(s.state(&app).await["status"], "past_due");
    }
    app.request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": true, "reason": "PSP incident"}))
        .token(&s.key)
        .header("x-tn", T)
        .expect(200)
        .await;
    // Day 7: the grace (7 days) is over and the last retry is due.
    advance_to(&app, pe + chrono::Duration::days(7) + minute);
    assert!(!has_video(&app, &s).await, "the policy's grace is over");
    tick(&app).await;
    assert!(has_video(&app, &s).await, "deferred: the grace is extended");
    // Deferred again and again while the pause lasts: access stays.
    for _ in 0..3 {
        app.ctx.clock.advance(chrono::Duration::minutes(20));
        tick(&app).await;
        assert!(has_video(&app, &s).await);
        assert_eq!(s.state(&app).await["status"], "past_due");
    }
    let deferred =
        app.raw_strings("SELECT body FROM journal_entries WHERE type = 'renewal.deferred' ORDER BY id").await;
    assert!(deferred.len() >= 4, "{deferred:?}");
    assert!(deferred.iter().all(|b| b.contains("grace_extended_until")), "{deferred:?}");
    // Lifted: the retry runs, fails, and dunning ends (expire); access ends with it.
    app.request(reqwest::Method::PUT, "/v1/tenant/safe-mode")
        .json(json!({"enabled": false}))
        .token(&s.key)
        .header("x-tn", T)
        .expect(200)
        .await;
    app.ctx.clock.advance(chrono::Duration::minutes(16));
    tick(&app).await;
    assert_eq!(s.state(&app).await["status"], "expired");
    assert!(!has_video(&app, &s).await);
    assert_eq!(captured(&app), 999, "nothing charged but the first period");
}

/// A subscription cancelled while the PSP is charging its renewal: the charge is refunded in
/// full, the period is not advanced, the period's invoice is void, and the subscription's
/// timeline says why.
async fn a_renewal_charged_while_the_subscription_was_cancelled_is_refunded(app: TestApp) {
    let s = subscribe(&app).await;
    app.ctx.clock.advance(chrono::Duration::days(31));
    app.ctx.psp.sandbox.set_extra_latency(std::time::Duration::from_millis(1500));
    let cancel = async {
        // Once the renewal's attempt is recorded (before the PSP is called), cancel.
        for _ in 0..500 {
            let n = app.raw_strings("SELECT id FROM payments WHERE status = 'pending'").await.len();
            if n > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        s.post(
            &app,
            &format!("/v1/subscriptions/{}/cancel", s.sub),
            json!({"method": "immediate", "reason_code": "other"}),
            200,
        )
        .await
    };
    let (_, cancelled) = tokio::join!(tick(&app), cancel);
    app.ctx.psp.sandbox.set_extra_latency(std::time::Duration::ZERO);
    assert_eq!(cancelled["status"], "canceled", "{cancelled}");
    let ledger = app.ctx.psp.sandbox.ledger();
    let refunds: i64 = ledger
        .entries()
        .iter()
        .filter(|e| matches!(e.kind, azotte_payments::EntryKind::Refund))
        .map(|e| e.amount)
        .sum();
    assert_eq!((captured(&app), refunds), (2 * 999, 999), "the renewal's charge went back");
    let after = s.state(&app).await;
    assert_eq!(after["current_period_end"], cancelled["current_period_end"], "not advanced: {after}");
    // The renewal's invoice, issued before the charge, is void (its number stays used).
    let invoices = invoices_of(&app, &s).await;
    let statuses: Vec<&str> = invoices.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(statuses, ["paid", "void"], "{invoices:?}");
    let t = s.get(&app, &format!("/v1/subscriptions/{}/timeline", s.sub)).await;
    let refunded = t["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "subscription.renewal_refunded")
        .cloned()
        .unwrap_or_else(|| panic!("no refund recorded: {t:#}"));
    let payment =
        s.get(&app, &format!("/v1/payments/{}", refunded["body"]["payment_id"].as_str().unwrap())).await;
    assert_eq!(
        (payment["captured_amount"].as_i64(), payment["refunded_amount"].as_i64()),
        (Some(999), Some(999))
    );
    // Later ticks change nothing.
    tick(&app).await;
    assert_eq!(captured(&app), 2 * 999);
}

/// A dunning retry whose answer was lost (the PSP charged; the payment is `unknown`) is looked
/// at again later. The customer cancels meanwhile, and reconciliation then finds the charge
/// captured: the job's next run finds its subscription changed, refunds the charge in full and
/// voids the period's invoice, instead of keeping money that paid for nothing.
async fn a_late_captured_renewal_charge_of_a_changed_subscription_is_refunded(app: TestApp) {
    let s = subscribe(&app).await;
    past_due(&app, &s).await;
    // A new method retries at once; the PSP charges it but its answer is lost.
    s.attach(&app, "tok_sandbox_unknown").await;
    let unknown = lost_answers(&app).await;
    assert_eq!(captured(&app), 2 * 999, "the PSP did charge");
    let cancelled = s
        .post(
            &app,
            &format!("/v1/subscriptions/{}/cancel", s.sub),
            json!({"method": "immediate", "reason_code": "other"}),
            200,
        )
        .await;
    assert_eq!(cancelled["status"], "canceled", "{cancelled}");
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    let payment = s.get(&app, &format!("/v1/payments/{}", unknown[0])).await;
    assert_eq!(payment["status"], "captured", "{payment}");
    // The job's next run: the charge goes back, the invoice is void.
    app.ctx.clock.advance(chrono::Duration::minutes(3));
    tick(&app).await;
    let payment = s.get(&app, &format!("/v1/payments/{}", unknown[0])).await;
    assert_eq!(
        (payment["captured_amount"].as_i64(), payment["refunded_amount"].as_i64()),
        (Some(999), Some(999)),
        "{payment}"
    );
    assert_eq!(app.sandbox_refunded(), 999);
    // Not renewed: the period stays, and the tick's period-end job expired the cancelled
    // subscription.
    let after = s.state(&app).await;
    assert_eq!(
        (after["status"].as_str(), &after["current_period_end"]),
        (Some("expired"), &cancelled["current_period_end"]),
        "{after}"
    );
    let invoices = invoices_of(&app, &s).await;
    let statuses: Vec<&str> = invoices.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(statuses, ["paid", "void"], "{invoices:?}");
    let t = s.get(&app, &format!("/v1/subscriptions/{}/timeline", s.sub)).await;
    assert!(
        t["data"].as_array().unwrap().iter().any(|e| e["type"] == "subscription.renewal_refunded"
            && e["body"]["payment_id"] == unknown[0].as_str()),
        "{t:#}"
    );
    // Later runs refund nothing more.
    app.ctx.clock.advance(chrono::Duration::minutes(3));
    tick(&app).await;
    assert_eq!(app.ctx.psp.sandbox.ledger().refunded(&unknown[0].parse().unwrap()), 999);
}

/// One checkout job that cannot run (here its row names an offer that does not exist) is
/// logged and retried, and holds up nothing else: the same worker tick still renews the
/// subscriptions that are due.
async fn a_broken_checkout_does_not_stop_renewals(app: TestApp) {
    let s = subscribe(&app).await;
    // Another customer's checkout, waiting for 3-D Secure.
    let price = s.state(&app).await["price_id"].as_str().unwrap().to_owned();
    let cus = id(&s.post(&app, "/v1/customers", json!({"external_id": "other"}), 201).await);
    let pm = id(&s
        .post(
            &app,
            &format!("/v1/customers/{cus}/payment-methods"),
            json!({"storefront_id": s.sf, "psp_account_id": s.acc, "token": "tok_sandbox_requires_action"}),
            201,
        )
        .await);
    let offer = s.post(&app, "/v1/offers", json!({"customer_id": cus, "storefront_id": s.sf}), 201).await;
    let c = s
        .post(
            &app,
            "/v1/checkouts",
            json!({"customer_id": cus, "offer_id": offer["id"], "price_id": price, "payment_method_id": pm}),
            202,
        )
        .await;
    let mut status = Value::Null;
    for _ in 0..200 {
        status = s.get(&app, &format!("/v1/checkouts/{}", id(&c))).await["status"].clone();
        if status != "processing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "requires_action");
    app.raw_exec(&format!("UPDATE checkouts SET offer_id = 'off_gone' WHERE id = '{}'", id(&c)))
        .await
        .unwrap();
    let before = s.state(&app).await;
    app.ctx.clock.advance(chrono::Duration::days(31));
    let ran = azotte_service::subscriptions::run_due_everywhere(&app.ctx).await;
    assert!(ran.is_err(), "the broken checkout's failure is reported: {ran:?}");
    app.number_queued_invoices().await;
    let after = s.state(&app).await;
    assert_eq!(after["status"], "active", "{after}");
    assert_eq!(after["current_period_start"], before["current_period_end"], "renewed: {after}");
    assert_eq!(captured(&app), 2 * 999);
    assert_eq!(s.get(&app, &format!("/v1/checkouts/{}", id(&c))).await["status"], "requires_action");
}

/// A new card given during dunning while the retry's answer is lost: the PSP did charge the old
/// card, so that charge settles the period once reconciliation finds it captured, and the new
/// card is not charged for the same period.
async fn a_new_card_while_a_retry_is_unknown_charges_the_period_once(app: TestApp) {
    let s = subscribe(&app).await;
    past_due(&app, &s).await;
    s.attach(&app, "tok_sandbox_unknown").await;
    lost_answers(&app).await;
    // The customer gives another card before the answer is known.
    let new_card = id(&s.attach(&app, "tok_sandbox_mastercard").await);
    let mut method = Value::Null;
    for _ in 0..100 {
        method = s.state(&app).await["payment_method_id"].clone();
        if method == new_card.as_str() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert_eq!(method, new_card.as_str(), "the subscription switched to the new card");
    app.ctx.clock.advance(chrono::Duration::minutes(3));
    tick(&app).await;
    assert_eq!(s.state(&app).await["status"], "past_due", "still waiting for the lost answer");
    azotte_service::payments::reconcile_everywhere(&app.ctx).await.unwrap();
    app.ctx.clock.advance(chrono::Duration::minutes(3));
    tick(&app).await;
    let after = s.state(&app).await;
    assert_eq!(after["status"], "active", "recovered by the charge that went through: {after}");
    assert_eq!(captured(&app), 2 * 999, "the period was charged once");
    let invoices = invoices_of(&app, &s).await;
    assert_eq!((invoices.len(), invoices[1].0.as_str(), invoices[1].3), (2, "paid", 999), "{invoices:?}");
    let payments = app.raw_strings("SELECT status FROM payments WHERE status <> 'failed' ORDER BY id").await;
    assert_eq!(payments, ["captured", "captured"], "no charge of the new card");
}

/// Another customer of `s`'s storefront subscribed to the same price with `token`: the
/// subscription's id.
async fn another(app: &TestApp, s: &Sub, n: usize, token: &str) -> String {
    let price = s.state(app).await["price_id"].as_str().unwrap().to_owned();
    let cus = id(&s.post(app, "/v1/customers", json!({"external_id": format!("renewer-{n}")}), 201).await);
    let body = json!({"storefront_id": s.sf, "psp_account_id": s.acc, "token": token});
    let pm = id(&s.post(app, &format!("/v1/customers/{cus}/payment-methods"), body, 201).await);
    let offer = s.post(app, "/v1/offers", json!({"customer_id": cus, "storefront_id": s.sf}), 201).await;
    let body =
        json!({"customer_id": cus, "offer_id": offer["id"], "price_id": price, "payment_method_id": pm});
    let c = s.post(app, "/v1/checkouts", body, 202).await;
    for _ in 0..200 {
        let v = s.get(app, &format!("/v1/checkouts/{}", id(&c))).await;
        if v["status"] == "succeeded" {
            return v["subscription_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("checkout did not finish");
}

/// Many subscriptions due at once renew as one batch (set-based statements, decision 0007's
/// "Renewal batches"), each exactly once and each in its own lineage with the entries a renewal
/// one by one has; what is out of the ordinary in the same batch — a card that now declines, a
/// PSP answer that is lost, a payment method that is gone — goes the one-by-one way. Invoice
/// numbers stay gapless, and a second pass charges nothing.
async fn a_batch_renews_many_each_once_in_its_own_lineage(app: TestApp) {
    let s = subscribe(&app).await;
    let mut subs = vec![s.sub.clone()];
    for n in 0..10 {
        subs.push(another(&app, &s, n, "tok_sandbox_success").await);
    }
    // The card of one now declines, one's answer will be lost, and one's method is deleted.
    let declines = another(&app, &s, 100, "tok_sandbox_success").await;
    let lost = another(&app, &s, 101, "tok_sandbox_success").await;
    let sub_pm = |sub: &str| format!("(SELECT payment_method_id FROM subscriptions WHERE id = '{sub}')");
    let methods = match app.backend {
        crate::helpers::Backend::Postgres => "customer_data.payment_methods",
        crate::helpers::Backend::Sqlite => "payment_methods",
    };
    for (sub, token) in
        [(&declines, "tok_sandbox_decline_insufficient_funds"), (&lost, "tok_sandbox_unknown")]
    {
        let sql = format!("UPDATE {methods} SET token = '{token}' WHERE id = {}", sub_pm(sub));
        assert_eq!(app.raw_exec(&sql).await.unwrap(), 1);
    }
    let gone = another(&app, &s, 102, "tok_sandbox_success").await;
    let sql = format!("UPDATE {methods} SET state = 'deleted' WHERE id = {}", sub_pm(&gone));
    assert_eq!(app.raw_exec(&sql).await.unwrap(), 1);
    assert_eq!(captured(&app), 14 * 999);
    let before = s.state(&app).await;
    let (batched, one_by_one) = azotte_service::subscriptions::renewals::jobs_ended();

    app.ctx.clock.advance(chrono::Duration::days(31));
    tick(&app).await;
    let (batched_now, one_by_one_now) = azotte_service::subscriptions::renewals::jobs_ended();
    if app.ctx.numbering == azotte_service::invoices::Numbering::Auto {
        assert_eq!(batched_now - batched, 11, "the ordinary renewals ran as a batch");
    }
    assert!(one_by_one_now - one_by_one >= 2, "the declined and the method-less one by one");
    // The PSP took the lost one's money too (its answer is what was lost).
    assert_eq!(captured(&app), 14 * 999 + 12 * 999, "each renewal charged once");
    let mut correlations = std::collections::HashSet::new();
    for sub in &subs {
        let v = s.get(&app, &format!("/v1/subscriptions/{sub}")).await;
        assert_eq!(v["status"], "active", "{v}");
        assert_eq!(v["current_period_start"], before["current_period_end"], "{v}");
        let t = s.get(&app, &format!("/v1/subscriptions/{sub}/timeline")).await;
        let renewed = t["data"].as_array().unwrap().iter().find(|e| e["type"] == "subscription.renewed");
        let cor = renewed.expect("renewed")["correlation_id"].as_str().unwrap().to_owned();
        let lineage = s.get(&app, &format!("/v1/lineage/{cor}")).await;
        let text = lineage.to_string();
        for t in [
            "subscription.renew",
            "payment.create",
            "payment.routed",
            "payment.attempt",
            "invoice.issued",
            "payment.attempt_result",
            "payment.captured",
            "invoice.paid",
            "subscription.renewed",
        ] {
            assert!(text.contains(&format!("\"{t}\"")), "{t} in the renewal's lineage: {text}");
        }
        // Its lineage is its own: no other subscription's entries.
        for other in subs.iter().filter(|o| *o != sub) {
            assert!(!text.contains(other.as_str()), "{other} in {sub}'s lineage");
        }
        assert!(correlations.insert(cor), "a correlation of its own");
    }
    for (sub, status) in [(&declines, "past_due"), (&gone, "past_due"), (&lost, "active")] {
        let v = s.get(&app, &format!("/v1/subscriptions/{sub}")).await;
        assert_eq!(v["status"], status, "{sub}: {v}");
    }
    let unknown = app.raw_strings("SELECT status FROM payments WHERE status = 'unknown'").await;
    assert_eq!(unknown.len(), 1, "the lost answer waits for reconciliation");

    // Gapless numbers, one paid invoice per ordinary renewal (deferred numbering: once the
    // pass has numbered the drafts, the unpaid ones after their grace).
    app.ctx.clock.advance(chrono::Duration::seconds(5));
    let numbering_pass_done = async {
        for _ in 0..100 {
            let drafts = app.raw_strings("SELECT id FROM invoices WHERE status = 'draft'").await;
            if drafts.is_empty() {
                return;
            }
            azotte_service::invoices::number_pending_everywhere(&app.ctx).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("drafts left unnumbered");
    };
    numbering_pass_done.await;
    let seqs = app.raw_strings("SELECT CAST(sequence AS TEXT) FROM invoices ORDER BY sequence").await;
    let mut seqs: Vec<i64> = seqs.iter().map(|s| s.parse().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gapless");
    let paid = app
        .raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM invoices WHERE status = 'paid' AND total = 999")
        .await;
    assert_eq!(paid, [(14 + 11).to_string()]);

    // Nothing runs twice: the jobs made due again charge nothing.
    app.raw_exec("UPDATE renewal_jobs SET status = 'queued', locked_until = NULL WHERE status = 'done'")
        .await
        .unwrap();
    tick(&app).await;
    assert_eq!(captured(&app), 14 * 999 + 12 * 999, "a second pass charges nothing");
}

/// A subscription of a batch is cancelled while the PSP charges it: the batch's settling
/// transaction records both captures and renews the other; the cancelled one settles one by one
/// from its recorded capture — its charge goes back and its invoice is voided.
async fn a_batch_whose_subscription_changes_during_the_charge_settles_one_by_one(app: TestApp) {
    let s = subscribe(&app).await;
    let other = another(&app, &s, 0, "tok_sandbox_success").await;
    app.ctx.clock.advance(chrono::Duration::days(31));
    let (batched, one_by_one) = azotte_service::subscriptions::renewals::jobs_ended();
    app.ctx.psp.sandbox.set_extra_latency(std::time::Duration::from_millis(1500));
    let cancel = async {
        for _ in 0..500 {
            let n = app.raw_strings("SELECT id FROM payments WHERE status = 'pending'").await.len();
            if n == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let body = json!({"method": "immediate", "reason_code": "other"});
        s.post(&app, &format!("/v1/subscriptions/{}/cancel", s.sub), body, 200).await
    };
    let (_, cancelled) = tokio::join!(tick(&app), cancel);
    app.ctx.psp.sandbox.set_extra_latency(std::time::Duration::ZERO);
    assert_eq!(cancelled["status"], "canceled", "{cancelled}");
    let (batched_now, one_by_one_now) = azotte_service::subscriptions::renewals::jobs_ended();
    let expected = match app.ctx.numbering {
        azotte_service::invoices::Numbering::Auto => (1, 1),
        azotte_service::invoices::Numbering::Deferred => (0, 2),
    };
    assert_eq!((batched_now - batched, one_by_one_now - one_by_one), expected, "the cancelled one alone");
    let v = s.get(&app, &format!("/v1/subscriptions/{other}")).await;
    assert_eq!(v["status"], "active");
    assert_eq!(v["current_period_start"], cancelled["current_period_end"], "renewed: {v}");
    let refunds: i64 = app
        .ctx
        .psp
        .sandbox
        .ledger()
        .entries()
        .iter()
        .filter(|e| matches!(e.kind, azotte_payments::EntryKind::Refund))
        .map(|e| e.amount)
        .sum();
    assert_eq!((captured(&app), refunds), (4 * 999, 999), "the cancelled one's charge went back");
    let statuses: Vec<String> = invoices_of(&app, &s).await.into_iter().map(|i| i.0).collect();
    assert_eq!(statuses, ["paid", "void"]);
    tick(&app).await;
    assert_eq!(captured(&app), 4 * 999, "later ticks charge nothing");
}

/// A payment of a batch is moved while the PSP charges it (as a PSP webhook reporting the
/// capture first would): the batch's settling transaction renews the other, and that one settles
/// one by one — its answer recorded against the payment as it stands, the subscription renewed
/// once, nothing charged twice.
async fn a_batch_payment_moved_during_the_charge_settles_one_by_one(app: TestApp) {
    let s = subscribe(&app).await;
    let other = another(&app, &s, 0, "tok_sandbox_success").await;
    app.ctx.clock.advance(chrono::Duration::days(31));
    let (batched, one_by_one) = azotte_service::subscriptions::renewals::jobs_ended();
    app.ctx.psp.sandbox.set_extra_latency(std::time::Duration::from_millis(1500));
    let webhook = async {
        let mut pending = Vec::new();
        for _ in 0..500 {
            pending = app.raw_strings("SELECT id FROM payments WHERE status = 'pending' ORDER BY id").await;
            if pending.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(pending.len(), 2, "{pending:?}");
        let sql = format!(
            "UPDATE payments SET status = 'captured', captured_amount = amount WHERE id = '{}'",
            pending[0]
        );
        assert_eq!(app.raw_exec(&sql).await.unwrap(), 1);
    };
    tokio::join!(tick(&app), webhook);
    app.ctx.psp.sandbox.set_extra_latency(std::time::Duration::ZERO);
    let (batched_now, one_by_one_now) = azotte_service::subscriptions::renewals::jobs_ended();
    let expected = match app.ctx.numbering {
        azotte_service::invoices::Numbering::Auto => (1, 1),
        azotte_service::invoices::Numbering::Deferred => (0, 2),
    };
    assert_eq!((batched_now - batched, one_by_one_now - one_by_one), expected, "the moved one alone");
    let first = s.state(&app).await;
    let now = app.ctx.clock.now();
    for sub in [&s.sub, &other] {
        let v = s.get(&app, &format!("/v1/subscriptions/{sub}")).await;
        assert_eq!(v["status"], "active", "{v}");
        let end: chrono::DateTime<chrono::Utc> = v["current_period_end"].as_str().unwrap().parse().unwrap();
        assert!(end > now && end < now + chrono::Duration::days(32), "renewed once: {v}");
        assert_eq!(v["current_period_end"], first["current_period_end"], "{v}");
    }
    assert_eq!(captured(&app), 4 * 999, "each charged once");
    let paid = app.raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM invoices WHERE status = 'paid'").await;
    assert_eq!(paid, ["4"], "two checkouts' and two renewals' invoices paid");
    tick(&app).await;
    assert_eq!(captured(&app), 4 * 999, "later ticks charge nothing");
}

both_numberings!(
    a_batch_payment_moved_during_the_charge_settles_one_by_one,
    a_batch_renews_many_each_once_in_its_own_lineage,
    a_batch_whose_subscription_changes_during_the_charge_settles_one_by_one,
    a_new_card_while_a_retry_is_unknown_charges_the_period_once,
    a_broken_checkout_does_not_stop_renewals,
    a_late_captured_renewal_charge_of_a_changed_subscription_is_refunded,
    a_renewal_charged_while_the_subscription_was_cancelled_is_refunded,
    deferred_dunning_retries_extend_the_grace,
    each_period_is_charged_once_also_after_downtime,
    dunning_retries_recovers_with_a_new_method_or_ends,
    exhausted_dunning_ends_the_subscription,
    safe_mode_defers_renewals_and_keeps_access,
    retries_after_downtime_keep_their_gaps,
    no_retries_in_the_policy_end_dunning_at_the_first_failure
);
