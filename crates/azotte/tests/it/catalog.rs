//! The catalog end to end: storefronts, entitlements, bundles, prices and the showcase, with
//! validation, versions, references, storefront-restricted keys and the journal.

use crate::both;
use crate::helpers::{Backend, TestApp};
use serde_json::{json, Value};

const T: &str = "shop";
const ENV: &str = "development";

fn storefront_body(name: &str) -> Value {
    json!({
        "name": name, "type": "web", "default_currency": "EUR", "currencies": ["USD", "JPY", "KWD"],
        "default_language": "en", "countries": ["DE", "AT", "FR"],
        "tax": {"kind": "inclusive", "rate_bp": 1900, "overrides": {"AT": 2000}}
    })
}

async fn post(app: &TestApp, path: &str, body: Value, status: u16) -> Value {
    app.post(path, body).tenant(T, ENV).expect(status).await.json()
}

async fn get(app: &TestApp, path: &str) -> Value {
    app.get(path).tenant(T, ENV).expect(200).await.json()
}

/// A storefront, a boolean and a quantity entitlement, an active bundle with both, and a
/// monthly EUR price: (storefront id, bundle id, price id).
async fn shop(app: &TestApp) -> (String, String, String) {
    app.create_tenant(T).await;
    let sf = post(app, "/v1/storefronts", storefront_body("Web DE"), 201).await;
    post(
        app,
        "/v1/entitlements",
        json!({"key": "premium_video", "name": "Premium video", "kind": "boolean"}),
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
    let b = post(
        app,
        "/v1/bundles",
        json!({"key": "premium", "name": "Premium", "type": "subscription", "status": "active",
               "entitlements": [{"key": "premium_video"}, {"key": "screens", "quantity": 4}]}),
        201,
    )
    .await;
    let p = post(
        app,
        "/v1/prices",
        json!({"bundle_id": b["id"], "storefront_id": sf["id"], "currency": "EUR", "amount_decimal": "14.99",
               "billing_period": {"unit": "month", "count": 1}, "trial": {"days": 14, "payment_method_required": true}}),
        201,
    )
    .await;
    let s = |v: &Value| v["id"].as_str().unwrap().to_owned();
    (s(&sf), s(&b), s(&p))
}

async fn a_storefront_sells_a_bundle_and_its_catalog_shows_it(app: TestApp) {
    let (sf, b, p) = shop(&app).await;
    let storefront = get(&app, &format!("/v1/storefronts/{sf}")).await;
    assert_eq!(storefront["currencies"], json!(["EUR", "USD", "JPY", "KWD"]), "default first");
    assert_eq!(storefront["countries"], json!(["AT", "DE", "FR"]));
    assert_eq!(
        storefront["dunning"],
        json!({"retry_offsets_days": [1, 3, 7], "grace_days": 7, "access_during_grace": true, "end_action": "expire"})
    );
    assert_eq!(storefront["invoice_prefix"], "INV-");

    let price = get(&app, &format!("/v1/prices/{p}")).await;
    assert_eq!(
        price["current_version"]["amount"],
        json!({"amount": 1499, "currency": "EUR", "amount_decimal": "14.99"})
    );
    assert_eq!(price["current_version"]["tax_behaviour"], "inclusive", "the storefront's scheme by default");

    let c = get(&app, &format!("/v1/storefronts/{sf}/catalog")).await;
    assert_eq!(c["storefront"]["id"], sf.as_str());
    let bundles = c["bundles"].as_array().unwrap();
    assert_eq!(bundles.len(), 1);
    assert_eq!(bundles[0]["id"], b.as_str());
    assert_eq!(
        bundles[0]["entitlements"],
        json!([
            {"key": "premium_video", "name": "Premium video", "kind": "boolean", "quantity": null, "unit": null},
            {"key": "screens", "name": "Screens", "kind": "quantity", "quantity": 4, "unit": "screens"}
        ])
    );
    let shown = &bundles[0]["prices"][0];
    assert_eq!(shown["price_id"], p.as_str());
    assert_eq!(shown["amount"]["amount"], 1499);
    // 14.99 including 19 % VAT: net 12.60, tax 2.39.
    assert_eq!((shown["net"]["amount"].as_i64(), shown["tax"]["amount"].as_i64()), (Some(1260), Some(239)));
    assert_eq!(shown["trial"], json!({"days": 14, "payment_method_required": true}));
    assert_eq!(shown["billing_period"], json!({"unit": "month", "count": 1}));
    // Austria's override: 20 %.
    let at = get(&app, &format!("/v1/storefronts/{sf}/catalog?country=AT")).await;
    assert_eq!(at["bundles"][0]["prices"][0]["tax_rate_bp"], 2000);
    assert_eq!(at["bundles"][0]["prices"][0]["tax"]["amount"], 250);
    // Only prices in a currency, when asked.
    let usd = get(&app, &format!("/v1/storefronts/{sf}/catalog?currency=USD")).await;
    assert_eq!(usd["bundles"], json!([]));

    // Every mutation left an action and an outcome.
    let j = get(&app, "/v1/journal?limit=100").await;
    let types: Vec<&str> =
        j["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "storefront.create",
        "storefront.created",
        "entitlement.created",
        "bundle.created",
        "price.create",
        "price.created",
    ] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
}

async fn amounts_respect_each_currencys_exponent(app: TestApp) {
    let (sf, b, _) = shop(&app).await;
    let price = |currency: &str, amount: Value| {
        let mut body = json!({"bundle_id": b, "storefront_id": sf, "currency": currency, "billing_period": {"unit": "year", "count": 1}});
        body.as_object_mut().unwrap().extend(amount.as_object().unwrap().clone());
        body
    };
    let jpy = post(&app, "/v1/prices", price("JPY", json!({"amount_decimal": "1500"})), 201).await;
    assert_eq!(
        jpy["current_version"]["amount"],
        json!({"amount": 1500, "currency": "JPY", "amount_decimal": "1500"})
    );
    let kwd = post(&app, "/v1/prices", price("KWD", json!({"amount_decimal": "4.125"})), 201).await;
    assert_eq!(kwd["current_version"]["amount"]["amount"], 4125);
    let usd = post(&app, "/v1/prices", price("USD", json!({"amount": 12000})), 201).await;
    assert_eq!(usd["current_version"]["amount"]["amount_decimal"], "120.00");
}

/// Posts `body` to `path` and returns (status, code, first field) of the problem.
async fn refused(app: &TestApp, path: &str, body: Value) -> (u16, String, String) {
    let r = app.post(path, body).tenant(T, ENV).send().await;
    assert!(r.status >= 400, "{path} accepted: {}", r.text());
    let p = r.problem();
    let field = p.errors.first().map(|e| e.field.clone()).unwrap_or_default();
    let code = p.errors.first().map(|e| e.code.clone()).unwrap_or(p.code.clone());
    (r.status, code, field)
}

async fn bad_input_is_refused_with_the_field_named(app: TestApp) {
    let (sf, b, _) = shop(&app).await;
    let mut sfb = storefront_body("x");
    let with = |k: &str, v: Value| {
        let mut x = sfb.clone();
        x[k] = v;
        x
    };
    let cases = [
        (with("default_currency", json!("EURO")), "unknown_currency", "default_currency"),
        (with("currencies", json!(["USD", "usd"])), "unknown_currency", "currencies[1]"),
        (with("countries", json!([])), "no_countries", "countries"),
        (with("countries", json!(["DE", "XX"])), "unknown_country", "countries[1]"),
        (with("default_language", json!("english")), "unknown_language", "default_language"),
        (
            with("tax", json!({"kind": "inclusive", "rate_bp": 1900, "overrides": {"US": 0}})),
            "country_not_served",
            "tax.overrides.US",
        ),
        (with("tax", json!({"kind": "inclusive", "rate_bp": 10001})), "out_of_range", "tax.rate_bp"),
        (
            with("dunning", json!({"retry_offsets_days": [3, 1]})),
            "not_increasing",
            "dunning.retry_offsets_days",
        ),
        (with("invoice_prefix", json!("inv 1")), "invalid_prefix", "invoice_prefix"),
        (with("name", json!("  ")), "invalid_length", "name"),
    ];
    for (body, code, field) in cases {
        assert_eq!(refused(&app, "/v1/storefronts", body).await, (422, code.into(), field.into()));
    }
    sfb["type"] = json!("kiosk");
    assert_eq!(refused(&app, "/v1/storefronts", sfb).await.0, 422, "an unknown type");

    let price = |extra: Value| {
        let mut body = json!({"bundle_id": b, "storefront_id": sf, "currency": "EUR", "billing_period": {"unit": "month", "count": 1}, "amount": 100});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let cases = [
        (price(json!({"currency": "XYZ"})), "unknown_currency", "currency"),
        (price(json!({"currency": "GBP"})), "currency_not_served", "currency"),
        (price(json!({"amount": -1})), "negative_amount", "amount"),
        // A price charges something: a free period is a trial.
        (price(json!({"amount": 0})), "amount_not_positive", "amount"),
        (price(json!({"amount": null, "amount_decimal": "0.00"})), "amount_not_positive", "amount"),
        (price(json!({"amount": 1_000_000_000_000_000_001_i64})), "amount_too_large", "amount"),
        (price(json!({"amount": null, "amount_decimal": "14.999"})), "too_precise", "amount_decimal"),
        (
            price(json!({"currency": "JPY", "amount": null, "amount_decimal": "1500.5"})),
            "too_precise",
            "amount_decimal",
        ),
        (price(json!({"amount_decimal": "1.00"})), "ambiguous_amount", "amount"),
        (
            price(json!({"billing_period": {"unit": "month", "count": 0}})),
            "zero_period",
            "billing_period.count",
        ),
        (price(json!({"trial": {"days": 366}})), "out_of_range", "trial.days"),
        (price(json!({"billing_period": null})), "missing_field", "billing_period"),
        (
            price(json!({"storefront_id": "sfr_01jd0000000000000000000000"})),
            "unknown_storefront",
            "storefront_id",
        ),
        (price(json!({"bundle_id": "bnd_01jd0000000000000000000000"})), "unknown_bundle", "bundle_id"),
    ];
    for (body, code, field) in cases {
        assert_eq!(refused(&app, "/v1/prices", body).await, (422, code.into(), field.into()));
    }
    // An amount beyond any integer is a type error on the field.
    let r = refused(&app, "/v1/prices", price(json!({"amount": 1e30}))).await;
    assert_eq!((r.0, r.2.as_str()), (422, "amount"));
    // The same bundle, storefront, currency and period is sold once.
    assert_eq!(
        refused(&app, "/v1/prices", price(json!({}))).await,
        (409, "price_exists".into(), String::new())
    );

    let bundle = |entitlements: Value| json!({"key": "b2", "name": "B2", "type": "subscription", "entitlements": entitlements});
    let cases = [
        (bundle(json!([{"key": "nope"}])), "unknown_entitlement", "entitlements[0].key"),
        (
            bundle(json!([{"key": "premium_video"}, {"key": "premium_video"}])),
            "duplicate_entitlement",
            "entitlements[1].key",
        ),
        (bundle(json!([{"key": "screens"}])), "missing_field", "entitlements[0].quantity"),
        (
            bundle(json!([{"key": "premium_video", "quantity": 2}])),
            "quantity_not_allowed",
            "entitlements[0].quantity",
        ),
        (json!({"key": "Bad Key", "name": "x", "type": "one_time"}), "invalid_key", "key"),
    ];
    for (body, code, field) in cases {
        assert_eq!(refused(&app, "/v1/bundles", body).await, (422, code.into(), field.into()));
    }
    assert_eq!(
        refused(&app, "/v1/bundles", json!({"key": "premium", "name": "again", "type": "subscription"}))
            .await,
        (409, "bundle_key_taken".into(), "key".into())
    );
    assert_eq!(
        refused(&app, "/v1/entitlements", json!({"key": "screens", "name": "again", "kind": "boolean"}))
            .await,
        (409, "entitlement_key_taken".into(), "key".into())
    );
    assert_eq!(
        refused(&app, "/v1/entitlements", json!({"key": "seats", "name": "Seats", "kind": "quantity"})).await,
        (422, "missing_field".into(), "unit".into())
    );

    // Cycles: hd includes 4k; making 4k include hd closes a loop.
    let hd =
        post(&app, "/v1/entitlements", json!({"key": "uhd", "name": "4K", "kind": "boolean"}), 201).await;
    post(
        &app,
        "/v1/entitlements",
        json!({"key": "hd", "name": "HD", "kind": "boolean", "includes": ["uhd"]}),
        201,
    )
    .await;
    let r = app
        .patch(&format!("/v1/entitlements/{}", hd["id"].as_str().unwrap()), json!({"includes": ["hd"]}))
        .tenant(T, ENV)
        .expect(422)
        .await
        .problem();
    assert_eq!((r.errors[0].field.as_str(), r.errors[0].code.as_str()), ("includes", "cyclic_entitlements"));
    assert!(r.errors[0].message.contains("uhd → hd → uhd"), "{}", r.errors[0].message);
    assert_eq!(
        refused(
            &app,
            "/v1/entitlements",
            json!({"key": "loop", "name": "L", "kind": "boolean", "includes": ["loop"]})
        )
        .await,
        (422, "cyclic_entitlements".into(), "includes[0]".into())
    );

    // A price for an archived bundle.
    app.patch(&format!("/v1/bundles/{b}"), json!({"status": "archived"})).tenant(T, ENV).expect(200).await;
    assert_eq!(
        refused(&app, "/v1/prices", price(json!({"currency": "USD"}))).await,
        (422, "bundle_archived".into(), "bundle_id".into())
    );
    // Nothing was half-written by any refusal.
    let prices = get(&app, "/v1/prices").await;
    assert_eq!(prices["data"].as_array().unwrap().len(), 1);
}

async fn a_price_change_is_a_new_version_and_versions_are_immutable(app: TestApp) {
    let (sf, _, p) = shop(&app).await;
    let later = app.ctx.clock.now() + chrono::Duration::minutes(10);
    let v = post(
        &app,
        &format!("/v1/prices/{p}/versions"),
        json!({"amount": 1999, "effective_from": later}),
        201,
    )
    .await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert_eq!(v["current_version"]["version"], 1, "the new version is not in effect yet");
    assert_eq!(
        v["versions"][1]["trial"],
        json!({"days": 14, "payment_method_required": true}),
        "kept from v1"
    );
    let c = get(&app, &format!("/v1/storefronts/{sf}/catalog")).await;
    assert_eq!(c["bundles"][0]["prices"][0]["amount"]["amount"], 1499);

    app.ctx.clock.advance(chrono::Duration::minutes(11));
    let c = get(&app, &format!("/v1/storefronts/{sf}/catalog")).await;
    assert_eq!(c["bundles"][0]["prices"][0]["amount"]["amount"], 1999);
    assert_eq!(c["bundles"][0]["prices"][0]["version"], 2);

    // Not before the latest version, not in the past; a trial can be removed.
    let long_ago = later - chrono::Duration::minutes(10);
    let r =
        refused(&app, &format!("/v1/prices/{p}/versions"), json!({"amount": 1, "effective_from": long_ago}))
            .await;
    assert_eq!(r, (422, "in_the_past".into(), "effective_from".into()));
    let r = refused(&app, &format!("/v1/prices/{p}/versions"), json!({"amount": 0})).await;
    assert_eq!(r, (422, "amount_not_positive".into(), "amount".into()));
    let v3 = post(&app, &format!("/v1/prices/{p}/versions"), json!({"trial": null}), 201).await;
    assert_eq!(v3["current_version"]["trial"], Value::Null);
    assert_eq!(v3["current_version"]["amount"]["amount"], 1999);

    // The database refuses to change or remove a version, even for its owner.
    let id = v["versions"][0]["id"].as_str().unwrap();
    assert!(app.raw_exec(&format!("UPDATE price_versions SET amount = 1 WHERE id = '{id}'")).await.is_err());
    assert!(app.raw_exec(&format!("DELETE FROM price_versions WHERE id = '{id}'")).await.is_err());

    // Archived: not sold any more, no new versions, and gone from the showcase.
    app.post(&format!("/v1/prices/{p}/archive"), json!({})).tenant(T, ENV).expect(200).await;
    let r = refused(&app, &format!("/v1/prices/{p}/versions"), json!({"amount": 5})).await;
    assert_eq!((r.0, r.1.as_str()), (409, "price_archived"));
    let c = get(&app, &format!("/v1/storefronts/{sf}/catalog")).await;
    assert_eq!(c["bundles"], json!([]));
}

async fn deletes_only_what_nothing_references(app: TestApp) {
    let (sf, b, _) = shop(&app).await;
    let ents = get(&app, "/v1/entitlements").await;
    let screens =
        ents["data"].as_array().unwrap().iter().find(|e| e["key"] == "screens").unwrap()["id"].clone();
    let del = |path: String| app.request(reqwest::Method::DELETE, &path).tenant(T, ENV);
    let p = del(format!("/v1/entitlements/{}", screens.as_str().unwrap())).expect(409).await.problem();
    assert_eq!(p.code, "entitlement_in_use");
    assert!(p.detail.contains(&b), "names the bundle: {}", p.detail);
    assert_eq!(del(format!("/v1/storefronts/{sf}")).expect(409).await.problem().code, "storefront_in_use");
    assert_eq!(del(format!("/v1/bundles/{b}")).expect(409).await.problem().code, "bundle_not_draft");

    let draft =
        post(&app, "/v1/bundles", json!({"key": "draft", "name": "Draft", "type": "one_time"}), 201).await;
    let lone =
        post(&app, "/v1/entitlements", json!({"key": "lone", "name": "Lone", "kind": "boolean"}), 201).await;
    let sf2 = post(&app, "/v1/storefronts", storefront_body("Empty"), 201).await;
    del(format!("/v1/bundles/{}", draft["id"].as_str().unwrap())).expect(204).await;
    del(format!("/v1/entitlements/{}", lone["id"].as_str().unwrap())).expect(204).await;
    del(format!("/v1/storefronts/{}", sf2["id"].as_str().unwrap())).expect(204).await;
    app.get(&format!("/v1/bundles/{}", draft["id"].as_str().unwrap())).tenant(T, ENV).expect(404).await;
    let j = get(&app, "/v1/journal?type=storefront.deleted").await;
    assert_eq!(j["data"].as_array().unwrap().len(), 1);
}

async fn bundle_status_only_moves_forward(app: TestApp) {
    let (sf, b, _) = shop(&app).await;
    let r =
        app.patch(&format!("/v1/bundles/{b}"), json!({"status": "draft"})).tenant(T, ENV).expect(409).await;
    assert_eq!(r.problem().code, "invalid_status_transition");
    app.patch(&format!("/v1/bundles/{b}"), json!({"status": "archived"})).tenant(T, ENV).expect(200).await;
    let r =
        app.patch(&format!("/v1/bundles/{b}"), json!({"name": "Renamed"})).tenant(T, ENV).expect(409).await;
    assert_eq!(r.problem().code, "bundle_archived");
    // An archived bundle is not for sale; its price stays (existing subscriptions continue).
    let c = get(&app, &format!("/v1/storefronts/{sf}/catalog")).await;
    assert_eq!(c["bundles"], json!([]));
    let prices = get(&app, &format!("/v1/prices?bundle_id={b}")).await;
    assert_eq!(prices["data"][0]["status"], "active");
    // An inactive storefront shows nothing for sale either.
    let sf2 = post(&app, "/v1/storefronts", storefront_body("Off"), 201).await;
    let id = sf2["id"].as_str().unwrap();
    app.patch(&format!("/v1/storefronts/{id}"), json!({"status": "inactive"}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    let c = get(&app, &format!("/v1/storefronts/{id}/catalog")).await;
    assert_eq!(
        (c["storefront"]["status"].as_str(), c["bundles"].as_array().unwrap().len()),
        (Some("inactive"), 0)
    );
}

async fn updates_are_partial_and_journal_the_changed_field_names(app: TestApp) {
    let (sf, _, _) = shop(&app).await;
    let s = app
        .patch(&format!("/v1/storefronts/{sf}"), json!({"name": "Web Germany", "invoice_prefix": "DE-"}))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json::<Value>();
    assert_eq!(
        (s["name"].as_str(), s["invoice_prefix"].as_str(), s["default_currency"].as_str()),
        (Some("Web Germany"), Some("DE-"), Some("EUR"))
    );
    let r =
        app.patch(&format!("/v1/storefronts/{sf}"), json!({"name": null})).tenant(T, ENV).expect(422).await;
    assert_eq!(r.problem().errors[0].code, "null_not_allowed");
    // Removing a currency an active price uses is a conflict.
    let r = app
        .patch(&format!("/v1/storefronts/{sf}"), json!({"default_currency": "USD", "currencies": []}))
        .tenant(T, ENV)
        .expect(409)
        .await;
    assert_eq!(r.problem().code, "currency_in_use");
    let j = get(&app, &format!("/v1/journal?type=storefront.updated&resource_id={sf}")).await;
    let e = &j["data"].as_array().unwrap()[0];
    assert_eq!(e["body"]["changed"], json!(["invoice_prefix", "name"]));
    assert_eq!(j["data"].as_array().unwrap().len(), 1, "the refused changes wrote nothing");
}

async fn a_key_restricted_to_a_storefront_sees_only_that_storefront(app: TestApp) {
    let (sf_a, b, p_a) = shop(&app).await;
    let sf_b =
        post(&app, "/v1/storefronts", storefront_body("Other"), 201).await["id"].as_str().unwrap().to_owned();
    let p_b = post(
        &app,
        "/v1/prices",
        json!({"bundle_id": b, "storefront_id": sf_b, "currency": "EUR", "amount": 999, "billing_period": {"unit": "month", "count": 1}}),
        201,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.admin_mfa().await;
    let key = app
        .api_key(
            T,
            ENV,
            json!({"description": "shop A", "role": "service_account", "storefront_ids": [sf_a]}),
        )
        .await;
    let secret = key["secret"].as_str().unwrap();
    let as_key = |path: String| app.get(&path).token(secret).header("x-tn", T);
    let list: Value = as_key("/v1/storefronts".into()).expect(200).await.json();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [sf_a.as_str()]);
    as_key(format!("/v1/storefronts/{sf_a}/catalog")).expect(200).await;
    as_key(format!("/v1/storefronts/{sf_b}")).expect(404).await;
    as_key(format!("/v1/storefronts/{sf_b}/catalog")).expect(404).await;
    as_key(format!("/v1/prices/{p_b}")).expect(404).await;
    as_key(format!("/v1/prices/{p_a}")).expect(200).await;
    let prices: Value = as_key("/v1/prices".into()).expect(200).await.json();
    assert_eq!(prices["data"].as_array().unwrap().len(), 1);
    // It may read but not write the catalog (service_account lacks catalog.write).
    let r = app.post("/v1/entitlements", json!({})).token(secret).header("x-tn", T).expect(403).await;
    assert_eq!(r.problem().code, "permission_denied");
}

async fn catalogs_are_isolated_by_environment_and_tenant(app: TestApp) {
    let (sf, b, _) = shop(&app).await;
    app.get(&format!("/v1/storefronts/{sf}")).tenant(T, "production").expect(404).await;
    app.get(&format!("/v1/bundles/{b}")).tenant(T, "production").expect(404).await;
    app.create_tenant("other").await;
    app.get(&format!("/v1/storefronts/{sf}")).tenant("other", ENV).expect(404).await;
    let list: Value = app.get("/v1/bundles").tenant("other", ENV).expect(200).await.json();
    assert_eq!(list["data"], json!([]));
    // The same keys are free in another environment.
    app.post("/v1/entitlements", json!({"key": "premium_video", "name": "PV", "kind": "boolean"}))
        .tenant(T, "production")
        .expect(201)
        .await;
    if app.backend == Backend::Postgres {
        // Row-level security covers the new tables (also proven generically in the store).
        let n = app.raw_strings("SELECT relname::text FROM pg_class WHERE relname IN ('storefronts','entitlements','bundles','bundle_entitlements','prices','price_versions') AND relrowsecurity AND relforcerowsecurity").await;
        assert_eq!(n.len(), 6, "{n:?}");
    }
}

async fn lists_are_paginated_by_cursor(app: TestApp) {
    app.create_tenant(T).await;
    for i in 0..5 {
        post(
            &app,
            "/v1/entitlements",
            json!({"key": format!("e{i}"), "name": format!("E{i}"), "kind": "boolean"}),
            201,
        )
        .await;
    }
    let p1 = get(&app, "/v1/entitlements?limit=2").await;
    assert_eq!((p1["data"].as_array().unwrap().len(), p1["has_more"].as_bool()), (2, Some(true)));
    let cur = p1["next_cursor"].as_str().unwrap();
    let p2 = get(&app, &format!("/v1/entitlements?limit=2&starting_after={cur}")).await;
    let p3 = get(
        &app,
        &format!("/v1/entitlements?limit=2&starting_after={}", p2["next_cursor"].as_str().unwrap()),
    )
    .await;
    assert_eq!((p3["data"].as_array().unwrap().len(), p3["has_more"].as_bool()), (1, Some(false)));
    let keys: Vec<String> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(keys, ["e0", "e1", "e2", "e3", "e4"]);
    app.get("/v1/entitlements?limit=0").tenant(T, ENV).expect(422).await;
}

both!(
    a_storefront_sells_a_bundle_and_its_catalog_shows_it,
    amounts_respect_each_currencys_exponent,
    bad_input_is_refused_with_the_field_named,
    a_price_change_is_a_new_version_and_versions_are_immutable,
    deletes_only_what_nothing_references,
    bundle_status_only_moves_forward,
    updates_are_partial_and_journal_the_changed_field_names,
    a_key_restricted_to_a_storefront_sees_only_that_storefront,
    catalogs_are_isolated_by_environment_and_tenant,
    lists_are_paginated_by_cursor
);
