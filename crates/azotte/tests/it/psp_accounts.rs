//! PSP accounts: storefront-scoped, credentials write-only and sealed under the tenant key,
//! mode rules per environment, isolation between storefronts, and a moved ciphertext reported.

use crate::both;
use crate::helpers::TestApp;
use serde_json::{json, Value};

const T: &str = "pay";

async fn storefront(app: &TestApp, env: &str, name: &str) -> String {
    let b = json!({"name": name, "type": "web", "default_currency": "EUR", "currencies": ["USD"],
                   "default_language": "en", "countries": ["DE"], "tax": {"kind": "inclusive", "rate_bp": 1900}});
    let v: Value = app.post("/v1/storefronts", b).tenant(T, env).expect(201).await.json();
    v["id"].as_str().unwrap().to_owned()
}

fn accounts(sf: &str) -> String {
    format!("/v1/storefronts/{sf}/psp-accounts")
}

const API_SECRET: &str = "sk_live_51HxTopSecretValue0000AbCd";
const WEBHOOK_SECRET: &str = "whsec_TopSecretSigningValue9876";

async fn credentials_are_write_only_and_sealed(app: TestApp) {
    app.create_tenant(T).await;
    let sf = storefront(&app, "production", "Live web").await;
    let a: Value = app
        .post(
            &accounts(&sf),
            json!({"connector": "stripe", "display_name": "Stripe EU", "mode": "live",
                   "credentials": {"api_secret": API_SECRET, "webhook_secret": WEBHOOK_SECRET},
                   "currencies": ["EUR"], "channels": ["card", "apple_pay"]}),
        )
        .tenant(T, "production")
        .expect(201)
        .await
        .json();
    let id = a["id"].as_str().unwrap();
    assert_eq!(a["credentials"]["api_secret"]["last4"], "AbCd");
    assert_eq!(a["credentials"]["webhook_secret"]["last4"], "9876");
    assert_eq!(a["credentials"]["api_secret"]["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!((a["priority"].as_i64(), a["weight"].as_i64()), (Some(100), Some(100)));
    assert_eq!(a["channels"], json!(["apple_pay", "card"]));
    let read = app.get(&format!("{}/{id}", accounts(&sf))).tenant(T, "production").expect(200).await;
    let listed = app.get(&accounts(&sf)).tenant(T, "production").expect(200).await;
    for text in [read.text(), listed.text()] {
        assert!(!text.contains(API_SECRET) && !text.contains(WEBHOOK_SECRET), "{text}");
    }
    // Nowhere in the database in the clear: not in the account row, not in the journal.
    let cols = app
        .raw_strings(&format!(
            "SELECT COALESCE(api_secret_fingerprint, '') || api_secret_last4 || currencies || channels FROM psp_accounts WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(cols.len(), 1);
    let all = app.raw_journal().await.join("\n");
    for secret in [API_SECRET, WEBHOOK_SECRET, "TopSecret"] {
        assert!(!all.contains(secret), "journal holds {secret}");
        assert!(!cols[0].contains(secret));
    }
    let sealed = app.raw_bytes(&format!("SELECT credentials FROM psp_accounts WHERE id = '{id}'")).await;
    assert!(sealed.len() > 60, "a ciphertext is stored");
    assert!(!sealed.windows(9).any(|w| w == b"TopSecret"), "the stored bytes are not the secret");
    // The credentials decrypt for the account they belong to.
    let c: Value = app
        .post(&format!("{}/{id}/check", accounts(&sf)), json!({}))
        .tenant(T, "production")
        .expect(200)
        .await
        .json();
    assert_eq!(
        c,
        json!({"credentials": "decrypted", "api_secret_present": true, "webhook_secret_present": true})
    );
    // Replacing them changes the fingerprint; the journal says they were replaced, not what to.
    let new_secret = "sk_live_51HxAnotherSecret1111WxYz";
    let b: Value = app
        .patch(
            &format!("{}/{id}", accounts(&sf)),
            json!({"credentials": {"api_secret": new_secret, "webhook_secret": WEBHOOK_SECRET}}),
        )
        .tenant(T, "production")
        .expect(200)
        .await
        .json();
    assert_eq!(b["credentials"]["api_secret"]["last4"], "WxYz");
    assert_ne!(b["credentials"]["api_secret"]["fingerprint"], a["credentials"]["api_secret"]["fingerprint"]);
    assert!(!app.raw_journal().await.join("\n").contains(new_secret));
}

async fn modes_and_connectors_follow_the_environment(app: TestApp) {
    app.create_tenant(T).await;
    let (dev, prod) =
        (storefront(&app, "development", "Dev").await, storefront(&app, "production", "Prod").await);
    let create = |env: &'static str, sf: String, body: Value| {
        let call = app.post(&accounts(&sf), body).tenant(T, env);
        async move { call.send().await }
    };
    let stripe = |mode: &str, key: &str| {
        json!({"connector": "stripe", "display_name": "S", "mode": mode,
               "credentials": {"api_secret": key, "webhook_secret": "whsec_abcdefghij"}})
    };
    let sandbox = |mode: &str| json!({"connector": "sandbox", "display_name": "Sandbox", "mode": mode});

    assert_eq!(create("development", dev.clone(), sandbox("test")).await.status, 201);
    let cases = [
        ("production", prod.clone(), sandbox("live"), "sandbox_in_live_environment", "connector"),
        (
            "development",
            dev.clone(),
            stripe("live", "sk_live_abcdefghij"),
            "live_account_in_test_environment",
            "mode",
        ),
        (
            "production",
            prod.clone(),
            stripe("test", "sk_test_abcdefghij"),
            "test_account_in_live_environment",
            "mode",
        ),
        (
            "production",
            prod.clone(),
            stripe("live", "sk_test_abcdefghij"),
            "invalid_secret",
            "credentials.api_secret",
        ),
        (
            "development",
            dev.clone(),
            json!({"connector": "adyenx", "display_name": "A", "mode": "test"}),
            "unknown_connector",
            "connector",
        ),
        (
            "development",
            dev.clone(),
            json!({"connector": "sandbox", "display_name": "A", "mode": "test", "currencies": ["GBP"]}),
            "currency_not_served",
            "currencies[0]",
        ),
        (
            "development",
            dev.clone(),
            json!({"connector": "sandbox", "display_name": "A", "mode": "test", "channels": ["cash"]}),
            "unknown_channel",
            "channels[0]",
        ),
        (
            "development",
            dev.clone(),
            json!({"connector": "stripe", "display_name": "A", "mode": "test"}),
            "missing_field",
            "credentials.api_secret",
        ),
    ];
    for (env, sf, body, code, field) in cases {
        let r = create(env, sf, body).await;
        let p = r.problem();
        assert_eq!((r.status, p.errors[0].code.as_str(), p.errors[0].field.as_str()), (422, code, field));
    }
    assert_eq!(create("production", prod.clone(), stripe("live", "sk_live_abcdefghij")).await.status, 201);
    // A storefront with accounts cannot be deleted.
    let r = app
        .request(reqwest::Method::DELETE, &format!("/v1/storefronts/{dev}"))
        .tenant(T, "development")
        .expect(409)
        .await;
    assert_eq!(r.problem().code, "storefront_in_use");
}

async fn a_key_restricted_to_one_storefront_cannot_reach_anothers_accounts(app: TestApp) {
    app.create_tenant(T).await;
    let (a, b) = (storefront(&app, "development", "A").await, storefront(&app, "development", "B").await);
    let acc_b: Value = app
        .post(&accounts(&b), json!({"connector": "sandbox", "display_name": "B", "mode": "test"}))
        .tenant(T, "development")
        .expect(201)
        .await
        .json();
    app.admin_mfa().await;
    let key = app
        .api_key(
            T,
            "development",
            json!({"description": "A only", "role": "tenant_admin", "storefront_ids": [a]}),
        )
        .await;
    let secret = key["secret"].as_str().unwrap();
    let id_b = acc_b["id"].as_str().unwrap();
    app.get(&accounts(&a)).token(secret).header("x-tn", T).expect(200).await;
    app.get(&accounts(&b)).token(secret).header("x-tn", T).expect(404).await;
    app.get(&format!("{}/{id_b}", accounts(&b))).token(secret).header("x-tn", T).expect(404).await;
    app.post(&format!("{}/{id_b}/check", accounts(&b)), json!({}))
        .token(secret)
        .header("x-tn", T)
        .expect(404)
        .await;
    app.post(&accounts(&b), json!({"connector": "sandbox", "display_name": "X", "mode": "test"}))
        .token(secret)
        .header("x-tn", T)
        .expect(404)
        .await;
    // Another storefront's account id under this storefront's path is not found either.
    app.get(&format!("{}/{id_b}", accounts(&a))).token(secret).header("x-tn", T).expect(404).await;
    // Without psp.manage, a key may read accounts but not manage them.
    let reader = app.api_key(T, "development", json!({"description": "ops", "role": "operator"})).await;
    let r = app
        .post(&accounts(&a), json!({"connector": "sandbox", "display_name": "X", "mode": "test"}))
        .token(reader["secret"].as_str().unwrap())
        .header("x-tn", T)
        .expect(403)
        .await;
    assert_eq!(r.problem().code, "permission_denied");
}

async fn a_ciphertext_moved_to_another_storefront_does_not_decrypt_and_is_reported(app: TestApp) {
    app.create_tenant(T).await;
    let (a, b) = (storefront(&app, "development", "A").await, storefront(&app, "development", "B").await);
    let body = |s: &str| {
        json!({"connector": "sandbox", "display_name": "Sandbox", "mode": "test",
               "credentials": {"api_secret": format!("sandbox_secret_{s}"), "webhook_secret": format!("sandbox_hook_{s}")}})
    };
    let acc_a: Value = app.post(&accounts(&a), body("a")).tenant(T, "development").expect(201).await.json();
    let acc_b: Value = app.post(&accounts(&b), body("b")).tenant(T, "development").expect(201).await.json();
    let (ia, ib) = (acc_a["id"].as_str().unwrap(), acc_b["id"].as_str().unwrap());
    app.post(&format!("{}/{ia}/check", accounts(&a)), json!({})).tenant(T, "development").expect(200).await;
    // A customer with a card on A, attached while A's credentials still opened.
    let cus: Value = app
        .post("/v1/customers", json!({"external_id": "payer"}))
        .tenant(T, "development")
        .expect(201)
        .await
        .json();
    let cus = cus["id"].as_str().unwrap().to_owned();
    let pm: Value = app
        .post(
            &format!("/v1/customers/{cus}/payment-methods"),
            json!({"storefront_id": a, "psp_account_id": ia, "token": "tok_sandbox_success"}),
        )
        .tenant(T, "development")
        .expect(201)
        .await
        .json();
    // An attacker with database access copies B's ciphertext onto A's row.
    let n = app
        .raw_exec(&format!("UPDATE psp_accounts SET credentials = (SELECT credentials FROM psp_accounts WHERE id = '{ib}') WHERE id = '{ia}'"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let r = app
        .post(&format!("{}/{ia}/check", accounts(&a)), json!({}))
        .tenant(T, "development")
        .expect(500)
        .await;
    assert_eq!(r.problem().code, "credential_undecryptable");
    // Reported: a security decision in the journal, naming the account, and an error in the log.
    let app = &app;
    let journal = |type_: &'static str| async move {
        let j: Value =
            app.get(&format!("/v1/journal?type={type_}")).tenant(T, "development").expect(200).await.json();
        j
    };
    let j = journal("psp_account.credentials_undecryptable").await;
    assert_eq!(j["data"][0]["resource_id"], ia);
    assert_eq!(j["data"][0]["kind"], "decision");
    assert!(crate::helpers::logs().contains("PSP credentials do not decrypt"));
    // A charge through A is refused before anything is written or sent: the credentials are
    // read in the transaction that would record the payment, which rolls back, and the
    // finding is journaled after it (on SQLite, whose one writer that transaction held).
    let r = app
        .post(
            "/v1/payments",
            json!({"customer_id": cus, "payment_method_id": pm["id"], "amount": 500, "currency": "EUR"}),
        )
        .tenant(T, "development")
        .expect(500)
        .await;
    assert_eq!(r.problem().code, "credential_undecryptable");
    let payments: Value =
        app.get(&format!("/v1/payments?customer_id={cus}")).tenant(T, "development").expect(200).await.json();
    assert_eq!(payments["data"], json!([]), "no payment was recorded");
    let j = journal("psp_account.credentials_undecryptable").await;
    assert_eq!(j["data"].as_array().unwrap().len(), 2, "{j}");
    assert!(j["data"].as_array().unwrap().iter().all(|e| e["resource_id"] == ia));
    let created = journal("payment.create").await;
    assert_eq!(created["data"], json!([]), "no payment action was committed");
    // B's own credentials still decrypt.
    app.post(&format!("{}/{ib}/check", accounts(&b)), json!({})).tenant(T, "development").expect(200).await;
}

both!(
    credentials_are_write_only_and_sealed,
    modes_and_connectors_follow_the_environment,
    a_key_restricted_to_one_storefront_cannot_reach_anothers_accounts,
    a_ciphertext_moved_to_another_storefront_does_not_decrypt_and_is_reported
);
