//! Invoices: the checkout's paid invoice with tax per the storefront's scheme and the customer's
//! country, credit notes for refunds, gapless numbers under concurrency and rollback, the status
//! table, `local` fiscalization (signed, retried, tampering detected), filters and other tenants.

use std::time::Duration;

use azotte_domain::catalog::{Currency, TaxKind};
use azotte_domain::tenant::Environment;
use azotte_service::invoices::{self, LineInput, LineKind, Numbering::Auto};
use azotte_store::TenantScope;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{spawn_app_with, TestApp};

const T: &str = "inv";
const ENV: &str = "development";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

async fn post(app: &TestApp, path: &str, body: Value, status: u16) -> Value {
    app.post(path, body).tenant(T, ENV).expect(status).await.json()
}

async fn get(app: &TestApp, path: &str) -> Value {
    app.get(path).tenant(T, ENV).expect(200).await.json()
}

/// A storefront selling one monthly price, with a customer and a payment method.
struct Shop {
    sf: String,
    price: String,
    cus: String,
    pm: String,
}

/// The tenant and its one entitlement.
async fn tenant(app: &TestApp) -> Value {
    let t = app.create_tenant(T).await;
    post(app, "/v1/entitlements", json!({"key": "video", "name": "Video", "kind": "boolean"}), 201).await;
    t
}

/// `key` names the shop's bundle, price and customer; `tax` is the storefront's scheme.
async fn shop(app: &TestApp, key: &str, prefix: &str, tax: Value, amount: i64, country: &str) -> Shop {
    let sf = id(&post(
        app,
        "/v1/storefronts",
        json!({"name": key, "type": "web", "default_currency": "EUR", "default_language": "en",
               "countries": ["DE", "AT", "FR"], "tax": tax, "invoice_prefix": prefix}),
        201,
    )
    .await);
    let bundle = id(&post(
        app,
        "/v1/bundles",
        json!({"key": key, "name": format!("Plan {key}"), "type": "subscription", "status": "active",
               "family": key, "entitlements": [{"key": "video"}]}),
        201,
    )
    .await);
    let price = id(&post(
        app,
        "/v1/prices",
        json!({"bundle_id": bundle, "storefront_id": sf, "currency": "EUR", "amount": amount,
               "billing_period": {"unit": "month", "count": 1}}),
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
    let cus = id(&post(app, "/v1/customers", json!({"external_id": key, "country": country}), 201).await);
    let pm = id(&post(
        app,
        &format!("/v1/customers/{cus}/payment-methods"),
        json!({"storefront_id": sf, "psp_account_id": acc, "token": "tok_sandbox_success"}),
        201,
    )
    .await);
    Shop { sf, price, cus, pm }
}

/// Buys the shop's price; the succeeded checkout.
async fn buy(app: &TestApp, s: &Shop) -> Value {
    let o = post(app, "/v1/offers", json!({"customer_id": s.cus, "storefront_id": s.sf}), 201).await;
    let c = post(
        app,
        "/v1/checkouts",
        json!({"customer_id": s.cus, "offer_id": o["id"], "price_id": s.price, "payment_method_id": s.pm}),
        202,
    )
    .await;
    for _ in 0..200 {
        let v = get(app, &format!("/v1/checkouts/{}", id(&c))).await;
        if v["status"] != "processing" {
            assert_eq!(v["status"], "succeeded", "{v}");
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("checkout still processing");
}

/// The one invoice of a subscription.
async fn invoice_of(app: &TestApp, subscription: &Value) -> Value {
    let list = get(app, &format!("/v1/invoices?subscription_id={}", subscription.as_str().unwrap())).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    get(app, &format!("/v1/invoices/{}", id(&list["data"][0]))).await
}

fn year(app: &TestApp) -> i32 {
    use chrono::Datelike;
    app.ctx.clock.now().year()
}

fn amounts(v: &Value) -> (i64, i64, i64) {
    (
        v["net"].as_i64().unwrap(),
        v["tax"].as_i64().unwrap(),
        v["total"].as_i64().unwrap_or_else(|| v["gross"].as_i64().unwrap()),
    )
}

async fn checkout_invoices_carry_the_tax_of_the_scheme_and_country(app: TestApp) {
    tenant(&app).await;
    // Inclusive 19 %, 20 % in Austria: an Austrian customer pays 9.99 with 20 % inside.
    let incl = shop(
        &app,
        "incl",
        "INV-",
        json!({"kind": "inclusive", "rate_bp": 1900, "overrides": {"AT": 2000}}),
        999,
        "AT",
    )
    .await;
    // Exclusive 19 %, 5.5 % in France: 10.00 + 0.55.
    let excl = shop(
        &app,
        "excl",
        "EX-",
        json!({"kind": "exclusive", "rate_bp": 1900, "overrides": {"FR": 550}}),
        1000,
        "FR",
    )
    .await;

    let done = buy(&app, &incl).await;
    let inv = invoice_of(&app, &done["subscription_id"]).await;
    assert_eq!(inv["number"], format!("INV-{}-000001", year(&app)));
    assert_eq!((inv["status"].as_str(), inv["currency"].as_str()), (Some("paid"), Some("EUR")));
    assert_eq!(amounts(&inv), (833, 166, 999));
    assert_eq!((inv["amount_paid"].as_i64(), inv["amount_due"].as_i64()), (Some(999), Some(0)));
    assert_eq!(inv["customer_country"], "AT");
    let line = &inv["lines"][0];
    assert_eq!(
        (line["tax_behaviour"].as_str(), line["tax_rate_bp"].as_i64()),
        (Some("inclusive"), Some(2000))
    );
    assert_eq!((line["amount"].as_i64(), line["kind"].as_str()), (Some(999), Some("subscription")));
    assert_eq!(amounts(line), (833, 166, 999));
    assert_eq!(inv["tax_summary"], json!([{"tax_rate_bp": 2000, "net": 833, "tax": 166}]));
    assert_eq!(inv["payments"][0]["payment_id"], done["payment_id"]);
    assert_eq!(inv["payments"][0]["amount"], 999);
    assert_eq!(inv["fiscal_status"], "not_required");
    assert_eq!(inv["subscription_id"], done["subscription_id"]);

    let done = buy(&app, &excl).await;
    let inv = invoice_of(&app, &done["subscription_id"]).await;
    // Its own series: the storefront's prefix, numbered from 1.
    assert_eq!(inv["number"], format!("EX-{}-000001", year(&app)));
    assert_eq!(amounts(&inv), (1000, 55, 1055));
    let line = &inv["lines"][0];
    assert_eq!(
        (line["tax_behaviour"].as_str(), line["tax_rate_bp"].as_i64()),
        (Some("exclusive"), Some(550))
    );
    let payment = done["payment_id"].as_str().unwrap();
    assert_eq!(
        app.ctx.psp.sandbox.ledger().captured(&payment.parse().unwrap()),
        1055,
        "charged what is invoiced"
    );

    // A free trial charges nothing and has no invoice.
    let bundle = id(&post(
        &app,
        "/v1/bundles",
        json!({"key": "trialplan", "name": "Trial plan", "type": "subscription", "status": "active",
               "family": "trialplan", "entitlements": [{"key": "video"}]}),
        201,
    )
    .await);
    let trial = id(&post(
        &app,
        "/v1/prices",
        json!({"bundle_id": bundle, "storefront_id": incl.sf, "currency": "EUR", "amount": 499,
               "billing_period": {"unit": "month", "count": 1}, "trial": {"days": 14, "payment_method_required": false}}),
        201,
    )
    .await);
    let other =
        id(&post(&app, "/v1/customers", json!({"external_id": "trialist", "country": "DE"}), 201).await);
    let o = post(&app, "/v1/offers", json!({"customer_id": other, "storefront_id": incl.sf}), 201).await;
    let c = post(
        &app,
        "/v1/checkouts",
        json!({"customer_id": other, "offer_id": o["id"], "price_id": trial}),
        202,
    )
    .await;
    let mut c = c;
    while c["status"] == "processing" {
        tokio::time::sleep(Duration::from_millis(25)).await;
        c = get(&app, &format!("/v1/checkouts/{}", id(&c))).await;
    }
    assert_eq!(c["status"], "succeeded", "{c}");
    let none = get(&app, &format!("/v1/customers/{other}/invoices")).await;
    assert!(none["data"].as_array().unwrap().is_empty(), "{none}");

    // Filters, the customer's list, bad filters.
    let paid = get(&app, "/v1/invoices?status=paid").await;
    assert_eq!(paid["data"].as_array().unwrap().len(), 2);
    assert!(get(&app, "/v1/invoices?status=void").await["data"].as_array().unwrap().is_empty());
    let mine = get(&app, &format!("/v1/customers/{}/invoices", excl.cus)).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    assert_eq!(mine["data"][0]["id"], inv["id"]);
    let page = get(&app, "/v1/invoices?limit=1").await;
    assert_eq!((page["has_more"].as_bool(), page["data"].as_array().unwrap().len()), (Some(true), 1));
    let next =
        get(&app, &format!("/v1/invoices?limit=1&starting_after={}", page["next_cursor"].as_str().unwrap()))
            .await;
    assert_eq!((next["has_more"].as_bool(), next["data"].as_array().unwrap().len()), (Some(false), 1));
    assert_ne!(next["data"][0]["id"], page["data"][0]["id"]);
    let p = app.get("/v1/invoices?status=late").tenant(T, ENV).expect(422).await.problem();
    assert_eq!(p.errors[0].field, "status");
    app.get("/v1/customers/cus_01jdq3m9x7e5k4w2c8v6b0n1p2/invoices").tenant(T, ENV).expect(404).await;

    // Another tenant sees none of it.
    app.create_tenant("other").await;
    for path in [
        format!("/v1/invoices/{}", id(&inv)),
        format!("/v1/invoices/{}/verification", id(&inv)),
        format!("/v1/customers/{}/invoices", excl.cus),
    ] {
        app.get(&path).tenant("other", ENV).expect(404).await;
    }
    assert!(app.get("/v1/invoices").tenant("other", ENV).expect(200).await.json::<Value>()["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

async fn refunds_get_credit_notes_that_add_up(app: TestApp) {
    tenant(&app).await;
    let s = shop(
        &app,
        "plan",
        "INV-",
        json!({"kind": "inclusive", "rate_bp": 1900, "overrides": {"AT": 2000}}),
        999,
        "AT",
    )
    .await;
    let done = buy(&app, &s).await;
    let payment = done["payment_id"].as_str().unwrap();
    let r = post(
        &app,
        &format!("/v1/payments/{payment}/refunds"),
        json!({"amount": 300, "reason": "goodwill"}),
        201,
    )
    .await;
    assert_eq!(r["status"], "succeeded");
    let inv = invoice_of(&app, &done["subscription_id"]).await;
    let cn = &inv["credit_notes"][0];
    assert_eq!(cn["number"], format!("INV-{}-CN-000001", year(&app)));
    assert_eq!((cn["refund_id"].as_str(), cn["reason"].as_str()), (r["id"].as_str(), Some("goodwill")));
    assert_eq!(cn["total"], 300);
    assert_eq!(cn["net"].as_i64().unwrap() + cn["tax"].as_i64().unwrap(), 300);
    assert_eq!(cn["lines"][0]["invoice_line_no"], 1);
    assert_eq!(inv["amount_credited"], 300);
    // The rest: the two credit notes credit exactly the invoice's net and tax.
    post(&app, &format!("/v1/payments/{payment}/refunds"), json!({"reason": "cancelled"}), 201).await;
    let inv = invoice_of(&app, &done["subscription_id"]).await;
    let notes = inv["credit_notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[1]["number"], format!("INV-{}-CN-000002", year(&app)));
    let sum = |k: &str| notes.iter().map(|n| n[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!((sum("net"), sum("tax"), sum("total")), amounts(&inv));
    assert_eq!(inv["amount_credited"], 999);
    assert_eq!(inv["status"], "paid", "a paid invoice stays paid; credit notes correct it");
    // A payment that settled no invoice gets no credit note.
    let direct = post(
        &app,
        "/v1/payments",
        json!({"customer_id": s.cus, "payment_method_id": s.pm, "amount": 500, "currency": "EUR"}),
        201,
    )
    .await;
    post(&app, &format!("/v1/payments/{}/refunds", id(&direct)), json!({}), 201).await;
    assert_eq!(get(&app, "/v1/invoices").await["data"].as_array().unwrap().len(), 1);
}

/// A system scope in the test tenant.
async fn scope(app: &TestApp, tenant: &Value) -> TenantScope {
    let tid = tenant["id"].as_str().unwrap().parse().unwrap();
    azotte_store::auth::system_scope(&app.ctx.db, tid, Environment::Development, "invoice-test")
        .await
        .unwrap()
}

pub(crate) async fn storefront(
    app: &TestApp,
    scope: &TenantScope,
    id: &str,
) -> azotte_store::catalog::Storefront {
    let mut tx = app.ctx.db.tenant_read_tx(scope).await.unwrap();
    let s = azotte_store::catalog::get_storefront(&mut tx, id).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    s
}

pub(crate) fn line(amount: i64) -> LineInput {
    LineInput {
        description: "Monthly".into(),
        kind: LineKind::Subscription,
        amount,
        quantity: 1,
        period_start: None,
        period_end: None,
        tax_behaviour: TaxKind::Inclusive,
    }
}

async fn numbers_are_gapless_under_concurrency_and_rollback(app: TestApp) {
    let t = tenant(&app).await;
    let s = shop(&app, "plan", "GL-", json!({"kind": "inclusive", "rate_bp": 1900}), 999, "DE").await;
    let scope = scope(&app, &t).await;
    let sf = storefront(&app, &scope, &s.sf).await;
    let eur = Currency::parse("currency", "EUR").unwrap();
    // 32 issuers at once; every fourth rolls back after taking its number. On PostgreSQL an
    // issuer that finds the series row held by another does not wait: its invoice commits as a
    // queued draft, numbered by the pass below (SQLite's one writer never finds it held).
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (ctx, scope, sf, eur, cus) =
            (app.ctx.clone(), scope.clone(), sf.clone(), eur.clone(), s.cus.clone());
        tasks.push(tokio::spawn(async move {
            let now = ctx.clock.now();
            let mut tx = ctx.db.tenant_tx(&scope).await.unwrap();
            tx.action(now, "test.bill", None, json!({"task": i})).await.unwrap();
            let inv =
                invoices::issue(&mut tx, Auto, &sf, &cus, Some("DE"), None, &eur, &[line(100 + i)], now)
                    .await
                    .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            if i % 4 == 3 {
                drop(tx);
                return None;
            }
            tx.commit().await.unwrap();
            Some(inv)
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.extend(t.await.unwrap());
    }
    let queued = kept.iter().filter(|i| i.number.is_none()).count();
    if app.backend == crate::helpers::Backend::Sqlite {
        assert_eq!(queued, 0, "one writer: every issuer numbers its own");
    }
    // The pass (the worker's runs too, every 200 ms: each leaves what the other holds), once
    // the unpaid drafts are older than its grace.
    app.ctx.clock.advance(chrono::Duration::seconds(2));
    for _ in 0..100 {
        invoices::number_pending(&app.ctx, &scope).await.unwrap();
        if app.raw_strings("SELECT invoice_id FROM invoice_numbering").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut taken: Vec<(i64, String)> = Vec::new();
    let mut tx = app.ctx.db.tenant_read_tx(&scope).await.unwrap();
    for inv in &kept {
        let now = azotte_store::invoices::get(&mut tx, &inv.id).await.unwrap().unwrap();
        assert_eq!(now.status, "open", "{inv:?}");
        if inv.number.is_some() {
            assert_eq!((&now.number, now.sequence), (&inv.number, inv.sequence), "a number never changes");
        }
        taken.push((now.sequence.unwrap(), now.number.unwrap()));
    }
    tx.commit().await.unwrap();
    taken.sort();
    let seqs: Vec<i64> = taken.iter().map(|(n, _)| *n).collect();
    assert_eq!(seqs, (1..=24).collect::<Vec<_>>(), "no gap, no duplicate ({queued} numbered by the pass)");
    for (n, number) in &taken {
        assert_eq!(number, &format!("GL-{}-{n:06}", year(&app)));
    }
    // A rolled-back issuer gives its number back: the next one gets 25.
    let now = app.ctx.clock.now();
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.bill", None, json!({})).await.unwrap();
    let burnt = invoices::issue(&mut tx, Auto, &sf, &s.cus, None, None, &eur, &[line(1)], now).await.unwrap();
    assert_eq!(burnt.sequence, Some(25));
    drop(tx);
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.bill", None, json!({})).await.unwrap();
    let kept = invoices::issue(&mut tx, Auto, &sf, &s.cus, None, None, &eur, &[line(1)], now).await.unwrap();
    tx.commit().await.unwrap();
    // A dropped transaction's ROLLBACK goes out when its connection returns to the pool: until
    // then the series row may still be held, and `kept` is queued for the pass instead (still
    // no gap: it takes 25 there).
    let kept = if kept.number.is_some() {
        kept
    } else {
        app.ctx.clock.advance(chrono::Duration::seconds(2));
        invoices::number_pending(&app.ctx, &scope).await.unwrap();
        let mut tx = app.ctx.db.tenant_read_tx(&scope).await.unwrap();
        let now = azotte_store::invoices::get(&mut tx, &kept.id).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        now
    };
    assert_eq!(kept.number, Some(format!("GL-{}-000025", year(&app))));
    let listed = get(&app, &format!("/v1/customers/{}/invoices?limit=100&status=open", s.cus)).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 25);
}

async fn open_invoices_move_by_the_table(app: TestApp) {
    let t = tenant(&app).await;
    let s = shop(&app, "plan", "ST-", json!({"kind": "exclusive", "rate_bp": 1000}), 999, "DE").await;
    let scope = scope(&app, &t).await;
    let sf = storefront(&app, &scope, &s.sf).await;
    let eur = Currency::parse("currency", "EUR").unwrap();
    let now = app.ctx.clock.now();
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.bill", None, json!({})).await.unwrap();
    // 2 × 4.50 + 10 % = 9.90; a proration credit of 1.00 + 10 % = -1.10.
    let lines =
        [LineInput { quantity: 2, ..line(450) }, LineInput { kind: LineKind::Proration, ..line(-100) }];
    let lines = lines.map(|l| LineInput { tax_behaviour: TaxKind::Exclusive, ..l });
    let a = invoices::issue(&mut tx, Auto, &sf, &s.cus, Some("DE"), None, &eur, &lines, now).await.unwrap();
    assert_eq!((a.net, a.tax, a.total), (800, 80, 880));
    let b =
        invoices::issue(&mut tx, Auto, &sf, &s.cus, Some("DE"), None, &eur, &[line(500)], now).await.unwrap();
    // A credit larger than the charge is refused.
    let err = invoices::issue(
        &mut tx,
        Auto,
        &sf,
        &s.cus,
        None,
        None,
        &eur,
        &[LineInput { kind: LineKind::Proration, ..line(-900) }, line(100)],
        now,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("validation"), "{err}");
    invoices::mark_uncollectible(&mut tx, &a.id, now).await.unwrap();
    invoices::void(&mut tx, &b.id, now).await.unwrap();
    tx.commit().await.unwrap();

    // Paid late, by a captured payment of the customer covering it; again with it: unchanged.
    let p = post(
        &app,
        "/v1/payments",
        json!({"customer_id": s.cus, "payment_method_id": s.pm, "amount": 880, "currency": "EUR"}),
        201,
    )
    .await;
    let small = post(
        &app,
        "/v1/payments",
        json!({"customer_id": s.cus, "payment_method_id": s.pm, "amount": 100, "currency": "EUR"}),
        201,
    )
    .await;
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.pay", None, json!({})).await.unwrap();
    let e = invoices::mark_paid(&mut tx, &a.id, &id(&small), now).await.unwrap_err();
    assert!(
        matches!(e, azotte_service::ServiceError::Conflict { code: "payment_does_not_settle_invoice", .. }),
        "{e}"
    );
    let paid = invoices::mark_paid(&mut tx, &a.id, &id(&p), now).await.unwrap();
    assert_eq!((paid.status.as_str(), paid.amount_paid), ("paid", 880));
    assert_eq!(invoices::mark_paid(&mut tx, &a.id, &id(&p), now).await.unwrap(), paid);
    let e = invoices::void(&mut tx, &a.id, now).await.unwrap_err();
    assert!(
        matches!(e, azotte_service::ServiceError::Conflict { code: "invoice_status_conflict", .. }),
        "{e}"
    );
    let e = invoices::mark_paid(&mut tx, &b.id, &id(&p), now).await.unwrap_err();
    assert!(matches!(e, azotte_service::ServiceError::Conflict { .. }), "{e}");
    tx.commit().await.unwrap();

    let a = get(&app, &format!("/v1/invoices/{}", a.id)).await;
    assert_eq!(a["lines"][1]["kind"], "proration");
    assert_eq!(amounts(&a["lines"][1]), (-100, -10, -110));
    assert!(a["uncollectible_at"].is_string());
    assert_eq!(get(&app, &format!("/v1/invoices/{}", b.id)).await["status"], "void");
    assert_eq!(get(&app, "/v1/invoices?status=void").await["data"].as_array().unwrap().len(), 1);
    // A renewal's invoice: the subscription's price as priced (exclusive) when it adds up to
    // the charge, else the charge itself, tax included.
    let done = buy(&app, &s).await;
    let sid = done["subscription_id"].as_str().unwrap();
    let renewal = post(
        &app,
        "/v1/payments",
        json!({"customer_id": s.cus, "payment_method_id": s.pm, "amount": 1099, "currency": "EUR"}),
        201,
    )
    .await;
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.renew", None, json!({})).await.unwrap();
    let sub = azotte_store::subscriptions::get_subscription(&mut tx, sid).await.unwrap().unwrap();
    let period = (sub.period_end, sub.period_end + chrono::Duration::days(30));
    let r = invoices::for_subscription_charge(
        &mut tx,
        Auto,
        &sub,
        "Renewal",
        1099,
        period,
        Some(&id(&renewal)),
        now,
    )
    .await
    .unwrap();
    let odd = invoices::for_subscription_charge(&mut tx, Auto, &sub, "Renewal", 1000, period, None, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((r.status.as_str(), r.net, r.tax, r.total), ("paid", 999, 100, 1099));
    assert_eq!(r.number, Some(format!("ST-{}-000004", year(&app))), "after a, b and the checkout's");
    let line = &get(&app, &format!("/v1/invoices/{}", r.id)).await["lines"][0];
    assert_eq!((line["tax_behaviour"].as_str(), line["amount"].as_i64()), (Some("exclusive"), Some(999)));
    assert_eq!((odd.status.as_str(), odd.net, odd.tax, odd.total), ("open", 909, 91, 1000));

    // Each move is a journal outcome about the invoice.
    let sql = format!("SELECT type FROM journal_entries WHERE resource_id = '{}' ORDER BY id", id(&a));
    assert_eq!(app.raw_strings(&sql).await, ["invoice.issued", "invoice.uncollectible", "invoice.paid"]);
}

async fn local_fiscalization_signs_retries_and_detects_tampering(app: TestApp) {
    tenant(&app).await;
    app.admin_mfa().await;
    let key = app.api_key(T, ENV, json!({"description": "ops", "role": "tenant_admin"})).await;
    let key = key["secret"].as_str().unwrap().to_owned();
    let s = shop(&app, "plan", "INV-", json!({"kind": "inclusive", "rate_bp": 1900}), 999, "DE").await;
    let sf = app
        .patch(&format!("/v1/storefronts/{}", s.sf), json!({"fiscalization": "local"}))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json::<Value>();
    assert_eq!(sf["fiscalization"], "local");

    // The provider is down at first: the attempt is recorded and retried later.
    app.ctx.fiscal.set_outage(true);
    let done = buy(&app, &s).await;
    let inv = invoice_of(&app, &done["subscription_id"]).await;
    let iid = id(&inv);
    assert_eq!(inv["fiscal_status"], "pending");
    assert_eq!(invoices::fiscal::run_due_everywhere(&app.ctx).await.unwrap(), 1);
    let inv: Value =
        app.get(&format!("/v1/invoices/{iid}")).token(&key).header("x-tn", T).expect(200).await.json();
    let rec = &inv["fiscalization"][0];
    assert_eq!((rec["status"].as_str(), rec["attempts"].as_i64()), (Some("pending"), Some(1)));
    assert!(rec["last_error"].as_str().unwrap().contains("unavailable"));
    assert_eq!(invoices::fiscal::run_due_everywhere(&app.ctx).await.unwrap(), 0, "not due yet");
    app.ctx.fiscal.set_outage(false);
    app.ctx.clock.advance(chrono::Duration::minutes(2));
    assert_eq!(invoices::fiscal::run_due_everywhere(&app.ctx).await.unwrap(), 1);

    let get_k = |path: String| {
        let (app, key) = (&app, key.clone());
        async move { app.get(&path).token(&key).header("x-tn", T).expect(200).await.json::<Value>() }
    };
    let inv = get_k(format!("/v1/invoices/{iid}")).await;
    assert_eq!(inv["fiscal_status"], "done");
    let rec = inv["fiscalization"][0].clone();
    assert_eq!((rec["action"].as_str(), rec["attempts"].as_i64()), (Some("issue"), Some(2)));
    let document = rec["document"].as_str().unwrap();
    let doc: Value = serde_json::from_str(document).unwrap();
    assert_eq!((doc["number"].as_str(), doc["total"].as_i64()), (inv["number"].as_str(), Some(999)));
    let v = get_k(format!("/v1/invoices/{iid}/verification")).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["public_key"], rec["public_key"]);
    // Anyone with the public key can check it offline.
    let (pk, sig) = (rec["public_key"].as_str().unwrap(), rec["signature"].as_str().unwrap());
    assert!(invoices::fiscal::verify_signature(pk, document, sig));
    assert!(!invoices::fiscal::verify_signature(pk, &document.replace("999", "998"), sig));

    // A refund's credit note is fiscalized too.
    let payment = done["payment_id"].as_str().unwrap();
    post(&app, &format!("/v1/payments/{payment}/refunds"), json!({"amount": 100}), 201).await;
    assert_eq!(invoices::fiscal::run_due_everywhere(&app.ctx).await.unwrap(), 1);
    let v = get_k(format!("/v1/invoices/{iid}/verification")).await;
    let actions: Vec<&str> =
        v["documents"].as_array().unwrap().iter().map(|d| d["action"].as_str().unwrap()).collect();
    assert_eq!((v["valid"].as_bool(), actions), (Some(true), vec!["issue", "credit_note"]));
    // Each fiscalization attempt (a job) continues the lineage of what queued it: caused by the
    // invoice's `invoice.paid` or its `credit_note.issued`, in that entry's correlation.
    let entries =
        get_k(format!("/v1/journal?resource_type=invoice&resource_id={iid}&limit=100")).await["data"].clone();
    let entries = entries.as_array().unwrap();
    let of_type = |t: &str| entries.iter().filter(|e| e["type"] == t).cloned().collect::<Vec<Value>>();
    let (paid, noted, attempts) =
        (of_type("invoice.paid"), of_type("credit_note.issued"), of_type("fiscal.attempt"));
    assert_eq!((paid.len(), noted.len(), attempts.len()), (1, 1, 3), "{entries:#?}");
    for (attempt, cause) in [(&attempts[0], &paid[0]), (&attempts[1], &paid[0]), (&attempts[2], &noted[0])] {
        assert_eq!(attempt["causation_id"], cause["id"]);
        assert_eq!(attempt["correlation_id"], cause["correlation_id"]);
    }

    // Tampering with the invoice after signing: the document no longer matches.
    app.raw_exec(&format!(
        "UPDATE invoice_lines SET description = 'Cheaper plan' WHERE invoice_id = '{iid}'"
    ))
    .await
    .unwrap();
    let v = get_k(format!("/v1/invoices/{iid}/verification")).await;
    assert_eq!(v["valid"], false);
    let issue = &v["documents"][0];
    assert_eq!(
        (issue["signature_valid"].as_bool(), issue["document_matches"].as_bool()),
        (Some(true), Some(false))
    );
    // Rewriting the signed document as well breaks the signature.
    let forged = document.replace("\"description\":\"Plan plan\"", "\"description\":\"Cheaper plan\"");
    assert_ne!(forged, document);
    app.raw_exec(&format!(
        "UPDATE fiscal_records SET document = '{}' WHERE document_id = '{iid}' AND action = 'issue'",
        forged.replace('\'', "''")
    ))
    .await
    .unwrap();
    let v = get_k(format!("/v1/invoices/{iid}/verification")).await;
    let issue = &v["documents"][0];
    assert_eq!(
        (issue["signature_valid"].as_bool(), issue["document_matches"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(v["valid"], false);
}

/// A refund's credit note is not sent to the provider before the invoice it credits: while the
/// invoice's `issue` is being retried, the credit note waits (no attempt counted), then follows.
async fn a_credit_note_waits_for_its_invoice_at_the_provider(app: TestApp) {
    tenant(&app).await;
    let s = shop(&app, "plan", "INV-", json!({"kind": "inclusive", "rate_bp": 1900}), 999, "DE").await;
    app.patch(&format!("/v1/storefronts/{}", s.sf), json!({"fiscalization": "local"}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    app.ctx.fiscal.set_outage(true);
    let done = buy(&app, &s).await;
    let iid = id(&invoice_of(&app, &done["subscription_id"]).await);
    assert_eq!(invoices::fiscal::run_due_everywhere(&app.ctx).await.unwrap(), 1, "the issue fails");
    app.ctx.fiscal.set_outage(false);
    let payment = done["payment_id"].as_str().unwrap();
    post(&app, &format!("/v1/payments/{payment}/refunds"), json!({"amount": 100}), 201).await;
    let records = || async {
        app.raw_strings(&format!(
            "SELECT action || ':' || status || ':' || attempts FROM fiscal_records WHERE invoice_id = '{iid}' ORDER BY action"
        ))
        .await
    };
    // The credit note is due, the issue not yet (backing off): nothing is sent.
    assert_eq!(invoices::fiscal::run_due_everywhere(&app.ctx).await.unwrap(), 0);
    assert_eq!(records().await, ["credit_note:pending:0", "issue:pending:1"]);
    // Once the issue is through, the credit note follows.
    app.ctx.clock.advance(chrono::Duration::minutes(2));
    let mut sent = 0;
    for _ in 0..3 {
        sent += invoices::fiscal::run_due_everywhere(&app.ctx).await.unwrap();
    }
    assert_eq!(sent, 2);
    assert_eq!(records().await, ["credit_note:done:1", "issue:done:2"]);
}

/// Invoice numbers never repeat across a tenant environment's storefronts: a prefix another
/// storefront numbers with — now, or in a series it used before its prefix changed — is refused
/// on create and on update, and a new storefront's default prefix is the first free of `INV-`,
/// `INV-2-`, …
async fn storefronts_never_share_an_invoice_prefix(app: TestApp) {
    tenant(&app).await;
    let tax = json!({"kind": "inclusive", "rate_bp": 1900});
    let a = shop(&app, "first", "INV-", tax.clone(), 999, "DE").await;
    let done = buy(&app, &a).await;
    let first = invoice_of(&app, &done["subscription_id"]).await;
    assert_eq!(first["number"], format!("INV-{}-000001", year(&app)));

    let body = |prefix: Option<&str>| {
        let mut b = json!({"name": "second", "type": "web", "default_currency": "EUR", "default_language": "en",
                           "countries": ["DE"], "tax": tax});
        if let Some(p) = prefix {
            b["invoice_prefix"] = json!(p);
        }
        b
    };
    // Without a prefix: the first free default.
    let b = post(&app, "/v1/storefronts", body(None), 201).await;
    assert_eq!(b["invoice_prefix"], "INV-2-");
    // Created at once: each its own.
    let (c1, c2, c3) = tokio::join!(
        post(&app, "/v1/storefronts", body(None), 201),
        post(&app, "/v1/storefronts", body(None), 201),
        post(&app, "/v1/storefronts", body(None), 201)
    );
    let mut at_once: Vec<&str> =
        [&c1, &c2, &c3].iter().map(|c| c["invoice_prefix"].as_str().unwrap()).collect();
    at_once.sort_unstable();
    assert_eq!(at_once, ["INV-3-", "INV-4-", "INV-5-"]);
    // Given one in use: refused, naming the field, and nothing is created.
    let refused = |r: crate::helpers::Resp| {
        let p = r.problem();
        assert_eq!(p.code, "invoice_prefix_in_use");
        assert_eq!(p.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["invoice_prefix"]);
    };
    refused(app.post("/v1/storefronts", body(Some("INV-2-"))).tenant(T, ENV).expect(409).await);
    let all = get(&app, "/v1/storefronts").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 5, "{all}");
    // Changing to one in use: refused.
    let (sa, sb) = (a.sf.clone(), id(&b));
    refused(
        app.patch(&format!("/v1/storefronts/{sb}"), json!({"invoice_prefix": "INV-"}))
            .tenant(T, ENV)
            .expect(409)
            .await,
    );
    // The first storefront moves to a new prefix; the invoices it numbered with INV- stay, so
    // nobody else may take INV- …
    let moved = app
        .patch(&format!("/v1/storefronts/{sa}"), json!({"invoice_prefix": "DE-"}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    assert_eq!(moved.json::<Value>()["invoice_prefix"], "DE-");
    refused(
        app.patch(&format!("/v1/storefronts/{sb}"), json!({"invoice_prefix": "INV-"}))
            .tenant(T, ENV)
            .expect(409)
            .await,
    );
    let d = post(&app, "/v1/storefronts", body(None), 201).await;
    assert_eq!(d["invoice_prefix"], "INV-6-", "INV- is still taken by the old series");
    // A prefix a storefront had is kept for it even before it numbered anything with it
    // (invoices being numbered under it while it changes keep their numbers).
    let c1 = [&c1, &c2, &c3].into_iter().find(|c| c["invoice_prefix"] == "INV-3-").unwrap();
    app.patch(&format!("/v1/storefronts/{}", id(c1)), json!({"invoice_prefix": "THREE-"}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    refused(
        app.patch(&format!("/v1/storefronts/{}", id(&d)), json!({"invoice_prefix": "INV-3-"}))
            .tenant(T, ENV)
            .expect(409)
            .await,
    );
    // A deleted storefront (nothing referred to it) frees its prefixes.
    let gone = post(&app, "/v1/storefronts", body(Some("GONE-")), 201).await;
    app.request(reqwest::Method::DELETE, &format!("/v1/storefronts/{}", id(&gone)))
        .tenant(T, ENV)
        .expect(204)
        .await;
    post(&app, "/v1/storefronts", body(Some("GONE-")), 201).await;
    // … but it may go back to its own, and continue that series.
    app.patch(&format!("/v1/storefronts/{sa}"), json!({"invoice_prefix": "INV-"}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    let cus2 = id(&post(&app, "/v1/customers", json!({"external_id": "second", "country": "DE"}), 201).await);
    let pm2 = id(&post(
        &app,
        &format!("/v1/customers/{cus2}/payment-methods"),
        json!({"storefront_id": a.sf, "psp_account_id": first_account(&app, &a.sf).await, "token": "tok_sandbox_success"}),
        201,
    )
    .await);
    let again = buy(&app, &Shop { cus: cus2, pm: pm2, ..a }).await;
    let second = invoice_of(&app, &again["subscription_id"]).await;
    assert_eq!(second["number"], format!("INV-{}-000002", year(&app)));
}

/// The id of a storefront's first PSP account.
async fn first_account(app: &TestApp, sf: &str) -> String {
    let list = get(app, &format!("/v1/storefronts/{sf}/psp-accounts")).await;
    id(&list["data"][0])
}

both!(
    storefronts_never_share_an_invoice_prefix,
    a_credit_note_waits_for_its_invoice_at_the_provider,
    checkout_invoices_carry_the_tax_of_the_scheme_and_country,
    refunds_get_credit_notes_that_add_up,
    numbers_are_gapless_under_concurrency_and_rollback,
    open_invoices_move_by_the_table,
    local_fiscalization_signs_retries_and_detects_tampering
);

/// Deferred numbering, the pass left to the test (`invoice_numbering_interval_ms` an hour).
const DEFERRED: &[(&str, &str)] =
    &[("invoice_numbering", "deferred"), ("invoice_numbering_interval_ms", "3600000")];

fn config(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn journal_of(iid: &str) -> String {
    format!("SELECT type FROM journal_entries WHERE resource_id = '{iid}' ORDER BY id")
}

/// A checkout's invoice commits as a paid draft, queued; the numbering pass issues it `paid`
/// with the next number, its `invoice.issued` in the checkout's lineage. Paying, voiding and
/// crediting a queued draft: voiding and crediting number it first; a paid one is issued paid.
async fn queued_drafts_are_numbered_by_the_pass(app: TestApp) {
    let t = tenant(&app).await;
    let s = shop(&app, "plan", "DF-", json!({"kind": "inclusive", "rate_bp": 1900}), 999, "DE").await;
    let done = buy(&app, &s).await;
    let inv = invoice_of(&app, &done["subscription_id"]).await;
    let iid = id(&inv);
    assert_eq!(
        (inv["status"].as_str(), inv["number"].as_str(), inv["amount_paid"].as_i64()),
        (Some("draft"), None, Some(999)),
        "{inv}"
    );
    assert_eq!(inv["payments"].as_array().unwrap().len(), 1, "{inv}");
    assert_eq!(app.raw_strings(&journal_of(&iid)).await, ["invoice.paid"]);
    assert_eq!(app.number_invoices().await, 1);
    assert_eq!(app.number_invoices().await, 0, "nothing left");
    let inv = get(&app, &format!("/v1/invoices/{iid}")).await;
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["number"].as_str(), Some(format!("DF-{}-000001", year(&app)).as_str()));
    assert!(inv["issued_at"].is_string(), "{inv}");
    assert_eq!(app.raw_strings(&journal_of(&iid)).await, ["invoice.paid", "invoice.issued"]);
    // Both outcomes are the checkout's: one correlation id, caused by its action.
    let lineage = format!(
        "SELECT correlation_id || ' ' || causation_id FROM journal_entries WHERE resource_id = '{iid}'"
    );
    let rows = app.raw_strings(&lineage).await;
    assert_eq!(rows[0], rows[1]);
    let cause = rows[0].split(' ').nth(1).unwrap();
    let action = app
        .raw_strings(&format!("SELECT kind || ' ' || type FROM journal_entries WHERE id = '{cause}'"))
        .await;
    assert_eq!(action.len(), 1);
    assert!(action[0].starts_with("action "), "{action:?}");

    // Drafts queued by a transaction, then paid, voided and credited before any pass.
    let scope = scope(&app, &t).await;
    let sf = storefront(&app, &scope, &s.sf).await;
    let eur = Currency::parse("currency", "EUR").unwrap();
    let deferred = invoices::Numbering::Deferred;
    let now = app.ctx.clock.now();
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.bill", None, json!({})).await.unwrap();
    let to_pay = invoices::issue(&mut tx, deferred, &sf, &s.cus, Some("DE"), None, &eur, &[line(999)], now)
        .await
        .unwrap();
    let to_void = invoices::issue(&mut tx, deferred, &sf, &s.cus, Some("DE"), None, &eur, &[line(500)], now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((to_pay.status.as_str(), &to_pay.number), ("draft", &None));
    let p = post(
        &app,
        "/v1/payments",
        json!({"customer_id": s.cus, "payment_method_id": s.pm, "amount": 999, "currency": "EUR"}),
        201,
    )
    .await;
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.pay", None, json!({})).await.unwrap();
    let paid = invoices::mark_paid(&mut tx, &to_pay.id, &id(&p), now).await.unwrap();
    assert_eq!((paid.status.as_str(), paid.amount_paid, &paid.number), ("draft", 999, &None));
    assert_eq!(
        invoices::mark_paid(&mut tx, &to_pay.id, &id(&p), now).await.unwrap(),
        paid,
        "again: unchanged"
    );
    let void = invoices::void(&mut tx, &to_void.id, now).await.unwrap();
    assert_eq!(void.status, "void");
    assert_eq!(
        void.number.as_deref(),
        Some(format!("DF-{}-000002", year(&app)).as_str()),
        "numbered, then void"
    );
    tx.commit().await.unwrap();
    // A refund of the payment credits the paid draft: it is numbered first.
    post(&app, &format!("/v1/payments/{}/refunds", id(&p)), json!({"amount": 100}), 201).await;
    let credited = get(&app, &format!("/v1/invoices/{}", to_pay.id)).await;
    assert_eq!(credited["status"], "paid", "{credited}");
    assert_eq!(credited["number"].as_str(), Some(format!("DF-{}-000003", year(&app)).as_str()));
    assert_eq!(credited["credit_notes"].as_array().unwrap().len(), 1, "{credited}");
    assert_eq!(app.number_invoices().await, 0, "nothing left");
    assert_eq!(
        app.raw_strings(&journal_of(&to_pay.id)).await,
        ["invoice.paid", "invoice.issued", "credit_note.issued"]
    );
    let left = app.raw_strings("SELECT invoice_id FROM invoice_numbering").await;
    assert!(left.is_empty(), "{left:?}");
}

mod queued_drafts_are_numbered_by_the_pass {
    use crate::helpers::{spawn_app_with, Backend};
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::queued_drafts_are_numbered_by_the_pass(
            spawn_app_with(Backend::Sqlite, &super::config(super::DEFERRED)).await,
        )
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::queued_drafts_are_numbered_by_the_pass(
            spawn_app_with(Backend::Postgres, &super::config(super::DEFERRED)).await,
        )
        .await
    }
}

/// PostgreSQL, `auto`: an issuer that finds the series row held by another transaction does not
/// wait for it; its invoice commits as a queued draft and the pass gives it the next number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_series_queues_the_draft_instead_of_waiting() {
    let app = spawn_app_with(
        crate::helpers::Backend::Postgres,
        &config(&[("invoice_numbering_interval_ms", "3600000")]),
    )
    .await;
    let t = tenant(&app).await;
    let s = shop(&app, "plan", "BZ-", json!({"kind": "inclusive", "rate_bp": 1900}), 999, "DE").await;
    let scope = scope(&app, &t).await;
    let sf = storefront(&app, &scope, &s.sf).await;
    let eur = Currency::parse("currency", "EUR").unwrap();
    let now = app.ctx.clock.now();
    // The series' first invoice creates its row (a second issuer would wait for that insert).
    let mut tx = app.ctx.db.tenant_tx(&scope).await.unwrap();
    tx.action(now, "test.bill", None, json!({})).await.unwrap();
    invoices::issue(&mut tx, Auto, &sf, &s.cus, None, None, &eur, &[line(50)], now).await.unwrap();
    tx.commit().await.unwrap();
    let mut holder = app.ctx.db.tenant_tx(&scope).await.unwrap();
    holder.action(now, "test.bill", None, json!({})).await.unwrap();
    let first =
        invoices::issue(&mut holder, Auto, &sf, &s.cus, None, None, &eur, &[line(100)], now).await.unwrap();
    assert_eq!(first.sequence, Some(2), "the series row is free: numbered at once, and now held");
    let mut other = app.ctx.db.tenant_tx(&scope).await.unwrap();
    other.action(now, "test.bill", None, json!({})).await.unwrap();
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        invoices::issue(&mut other, Auto, &sf, &s.cus, None, None, &eur, &[line(200)], now),
    )
    .await
    .expect("the second issuer does not wait for the first")
    .unwrap();
    assert_eq!((second.status.as_str(), second.number.as_deref()), ("draft", None));
    other.commit().await.unwrap();
    holder.commit().await.unwrap();
    assert_eq!(app.number_invoices().await, 0, "an unpaid draft is left alone for a second");
    app.ctx.clock.advance(chrono::Duration::seconds(2));
    assert_eq!(app.number_invoices().await, 1);
    let listed = get(&app, &format!("/v1/customers/{}/invoices?limit=10", s.cus)).await;
    let mut numbers: Vec<String> =
        listed["data"].as_array().unwrap().iter().map(|i| i["number"].as_str().unwrap().to_owned()).collect();
    numbers.sort();
    let y = year(&app);
    assert_eq!(numbers, [1, 2, 3].map(|n| format!("BZ-{y}-{n:06}")));
    let second = get(&app, &format!("/v1/invoices/{}", second.id)).await;
    assert_eq!(
        (second["status"].as_str(), second["number"].as_str()),
        (Some("open"), Some(format!("BZ-{y}-000003").as_str()))
    );
}
