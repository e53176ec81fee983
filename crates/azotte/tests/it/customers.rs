//! Customers with the PII vault, and payment methods: API, validation, isolation, and proof
//! that no personal value is readable in the database, the journal or the logs.

use crate::both;
use crate::helpers::TestApp;
use serde_json::{json, Value};

const T: &str = "people";
const ENV: &str = "development";

/// Distinctive personal values: none of them may appear in clear anywhere.
const EMAIL: &str = "Zelda.Quarrington@Example.org";
const PHONE: &str = "+49 151 9876-5432";
const FIRST: &str = "Zeldavine";
const LAST: &str = "Quarrington";
const STREET: &str = "Hollowbrook Allee 77";
const CITY: &str = "Wunderhausen";
const POSTAL: &str = "PLZ-4711X";
const COMPANY: &str = "Quarrington Widgetworks";
const TAX_ID: &str = "DE999888777";

fn person() -> Value {
    json!({
        "external_id": "crm-1", "email": EMAIL, "phone": PHONE, "first_name": FIRST, "last_name": LAST,
        "address": {"street": STREET, "city": CITY, "postal_code": POSTAL, "country": "DE"},
        "country": "DE", "language": "de", "metadata": {"source": "ads"}
    })
}

async fn post(app: &TestApp, path: &str, body: Value, status: u16) -> Value {
    app.post(path, body).tenant(T, ENV).expect(status).await.json()
}

async fn get(app: &TestApp, path: &str) -> Value {
    app.get(path).tenant(T, ENV).expect(200).await.json()
}

async fn a_customer_round_trips_through_the_vault(app: TestApp) {
    app.create_tenant(T).await;
    let c = post(&app, "/v1/customers", person(), 201).await;
    let id = c["id"].as_str().unwrap();
    assert!(id.starts_with("cus_"));
    assert_eq!(c["email"], EMAIL.to_lowercase(), "normalized");
    assert_eq!(c["phone"], "+4915198765432", "E.164");
    let read = get(&app, &format!("/v1/customers/{id}")).await;
    assert_eq!(read["first_name"], FIRST);
    assert_eq!(read["address"]["city"], CITY);
    assert_eq!(read["metadata"], json!({"source": "ads"}));

    // Exact lookups through the keyed hashes (normalized input).
    let by_email = get(&app, &format!("/v1/customers?email={}", EMAIL.to_uppercase())).await;
    assert_eq!(by_email["data"].as_array().unwrap().len(), 1);
    let by_phone = get(&app, "/v1/customers?phone=%2B4915198765432").await;
    assert_eq!(by_phone["data"][0]["id"], id);
    let none = get(&app, "/v1/customers?email=nobody@example.org").await;
    assert_eq!(none["data"], json!([]));

    // PATCH: partial, null clears, the journal names the fields only.
    let p = app
        .patch(&format!("/v1/customers/{id}"), json!({"last_name": "Quarrington-Voss", "phone": null}))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json::<Value>();
    assert_eq!(
        (p["last_name"].as_str(), p["phone"].as_str(), p["first_name"].as_str()),
        (Some("Quarrington-Voss"), None, Some(FIRST))
    );
    let j = get(&app, &format!("/v1/journal?type=customer.updated&resource_id={id}")).await;
    assert_eq!(j["data"][0]["body"], json!({"changed": ["phone", "last_name"]}));

    // Upsert by external id: 201 creates, 200 replaces the same customer.
    let r = app
        .request(reqwest::Method::PUT, "/v1/customers/by-external-id/crm-2")
        .json(json!({"email": "second@example.org"}))
        .tenant(T, ENV)
        .expect(201)
        .await
        .json::<Value>();
    let again = app
        .request(reqwest::Method::PUT, "/v1/customers/by-external-id/crm-2")
        .json(json!({"email": "second@example.org", "first_name": "Sam"}))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json::<Value>();
    assert_eq!(r["id"], again["id"]);
    assert_eq!(again["first_name"], "Sam");
    let list = get(&app, "/v1/customers?limit=1").await;
    assert_eq!((list["data"].as_array().unwrap().len(), list["has_more"].as_bool()), (1, Some(true)));
}

async fn bad_customer_input_is_refused_with_the_field(app: TestApp) {
    app.create_tenant(T).await;
    post(&app, "/v1/customers", person(), 201).await;
    let with = |k: &str, v: Value| {
        let mut b = json!({"external_id": format!("x-{k}")});
        b[k] = v;
        b
    };
    let cases = [
        (with("email", json!("not-an-email")), 422, "email"),
        (with("phone", json!("0151 1234567")), 422, "phone"),
        (with("country", json!("XX")), 422, "country"),
        (with("language", json!("deutsch")), 422, "language"),
        (with("legal_type", json!("company")), 422, "company_name"),
        (
            with(
                "metadata",
                json!((0..21).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()),
            ),
            422,
            "metadata",
        ),
        (with("email", json!(EMAIL.to_uppercase())), 409, "email"),
        (with("phone", json!("+4915198765432")), 409, "phone"),
        (json!({"external_id": "crm-1"}), 409, "external_id"),
        (json!({"email": "x@example.org"}), 422, "external_id"),
    ];
    for (body, status, field) in cases {
        let r = app.post("/v1/customers", body.clone()).tenant(T, ENV).send().await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let p = r.problem();
        assert_eq!(p.errors.first().map(|e| e.field.as_str()), Some(field), "{body}: {p:?}");
    }
    // The same external id in another tenant is another customer, never a link to this one.
    app.create_tenant("other").await;
    let theirs: Value = app
        .post("/v1/customers", json!({"external_id": "crm-1"}))
        .tenant("other", ENV)
        .expect(201)
        .await
        .json();
    let ours = get(&app, "/v1/customers").await;
    assert!(ours["data"].as_array().unwrap().iter().all(|c| c["id"] != theirs["id"]));
    // A customer id of another tenant (or environment) is 404.
    let id = theirs["id"].as_str().unwrap();
    app.get(&format!("/v1/customers/{id}")).tenant(T, ENV).expect(404).await;
    app.get(&format!("/v1/customers/{id}")).tenant("other", "production").expect(404).await;
    app.patch(&format!("/v1/customers/{id}"), json!({"first_name": "X"})).tenant(T, ENV).expect(404).await;
}

async fn no_personal_value_is_readable_in_the_database_journal_or_logs(app: TestApp) {
    app.create_tenant(T).await;
    let c = post(&app, "/v1/customers", person(), 201).await;
    let id = c["id"].as_str().unwrap();
    let company =
        json!({"external_id": "crm-co", "legal_type": "company", "company_name": COMPANY, "tax_id": TAX_ID});
    post(&app, "/v1/customers", company, 201).await;
    app.patch(&format!("/v1/customers/{id}"), json!({"first_name": format!("{FIRST}x")}))
        .tenant(T, ENV)
        .expect(200)
        .await;
    get(&app, &format!("/v1/customers?email={EMAIL}")).await;
    let dump = app.raw_dump().await;
    let journal = app.raw_journal().await.join("\n");
    let logs = crate::helpers::logs();
    let needles = [
        EMAIL.to_owned(),
        EMAIL.to_lowercase(),
        "+4915198765432".to_owned(),
        "9876-5432".to_owned(),
        FIRST.to_owned(),
        LAST.to_owned(),
        STREET.to_owned(),
        CITY.to_owned(),
        POSTAL.to_owned(),
        COMPANY.to_owned(),
        TAX_ID.to_owned(),
    ];
    for n in &needles {
        let hexed = hex::encode(n.as_bytes());
        for (name, text) in [("database", &dump), ("journal", &journal), ("logs", &logs)] {
            assert!(!text.contains(n.as_str()), "{name} holds {n}");
            assert!(!text.contains(&hexed), "{name} holds {n} as hex");
        }
    }
    // The scan saw the customer rows (and the journal names the customer by id).
    assert!(dump.contains(id) && dump.contains("crm-co"), "the dump covers the customer tables");
    assert!(journal.contains(id));
}

async fn payment_methods_are_tokens_of_one_storefronts_psp_account(app: TestApp) {
    app.create_tenant(T).await;
    let sf = |name: &str| {
        json!({"name": name, "type": "web", "default_currency": "EUR", "default_language": "en", "countries": ["DE"],
               "tax": {"kind": "inclusive", "rate_bp": 1900}})
    };
    let a = post(&app, "/v1/storefronts", sf("A"), 201).await["id"].as_str().unwrap().to_owned();
    let b = post(&app, "/v1/storefronts", sf("B"), 201).await["id"].as_str().unwrap().to_owned();
    let acc = |s: &str| format!("/v1/storefronts/{s}/psp-accounts");
    let psp_a =
        post(&app, &acc(&a), json!({"connector": "sandbox", "display_name": "SA", "mode": "test"}), 201)
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let psp_b =
        post(&app, &acc(&b), json!({"connector": "sandbox", "display_name": "SB", "mode": "test"}), 201)
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let cus = post(&app, "/v1/customers", json!({"external_id": "c1"}), 201).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pms = format!("/v1/customers/{cus}/payment-methods");

    let first = post(
        &app,
        &pms,
        json!({"storefront_id": a, "psp_account_id": psp_a, "token": "tok_sandbox_success"}),
        201,
    )
    .await;
    assert_eq!(
        (first["brand"].as_str(), first["last4"].as_str(), first["default"].as_bool()),
        (Some("visa"), Some("4242"), Some(true))
    );
    let mc = post(&app, &pms, json!({"storefront_id": a, "psp_account_id": psp_a, "token": "tok_sandbox_mastercard", "default": true}), 201).await;
    assert_eq!(mc["default"], true);
    let listed = get(&app, &pms).await;
    let defaults: Vec<&Value> =
        listed["data"].as_array().unwrap().iter().filter(|p| p["default"] == true).collect();
    assert_eq!(defaults.len(), 1, "one default");

    // A token for another storefront's PSP account, a foreign-looking token, Stripe without its connector.
    let r = app
        .post(&pms, json!({"storefront_id": a, "psp_account_id": psp_b, "token": "tok_sandbox_success"}))
        .tenant(T, ENV)
        .expect(422)
        .await;
    assert_eq!(r.problem().errors[0].code, "psp_account_not_in_storefront");
    let r = app
        .post(&pms, json!({"storefront_id": a, "psp_account_id": psp_a, "token": "pm_1Abc2345"}))
        .tenant(T, ENV)
        .expect(422)
        .await;
    assert_eq!(r.problem().errors[0].code, "invalid_token");
    app.post(
        "/v1/customers/cus_01jd0000000000000000000000/payment-methods",
        json!({"storefront_id": a, "psp_account_id": psp_a, "token": "tok_sandbox_success"}),
    )
    .tenant(T, ENV)
    .expect(404)
    .await;

    // Inactivate, make default, delete.
    let id = first["id"].as_str().unwrap();
    app.post(&format!("{pms}/{id}/inactivate"), json!({})).tenant(T, ENV).expect(200).await;
    let r = app.post(&format!("{pms}/{id}/default"), json!({})).tenant(T, ENV).expect(409).await;
    assert_eq!(r.problem().code, "payment_method_not_usable");
    app.post(&format!("{pms}/{id}/activate"), json!({})).tenant(T, ENV).expect(200).await;
    let d =
        app.post(&format!("{pms}/{id}/default"), json!({})).tenant(T, ENV).expect(200).await.json::<Value>();
    assert_eq!(d["default"], true);
    let del = app
        .request(reqwest::Method::DELETE, &format!("{pms}/{id}"))
        .tenant(T, ENV)
        .expect(200)
        .await
        .json::<Value>();
    assert_eq!((del["state"].as_str(), del["default"].as_bool()), (Some("deleted"), Some(false)));
    app.get(&format!("{pms}/{id}")).tenant(T, ENV).expect(404).await;

    // The daily job marks expired cards, once.
    let old = post(
        &app,
        &pms,
        json!({"storefront_id": a, "psp_account_id": psp_a, "token": "tok_sandbox_expired"}),
        201,
    )
    .await;
    assert_eq!(old["expired"], false);
    let n = azotte_service::payment_methods::mark_expired_everywhere(&app.ctx).await.unwrap();
    assert_eq!(n, 1);
    let after = get(&app, &format!("{pms}/{}", old["id"].as_str().unwrap())).await;
    assert_eq!(after["expired"], true);
    assert_eq!(azotte_service::payment_methods::mark_expired_everywhere(&app.ctx).await.unwrap(), 0);
    let j = get(&app, "/v1/journal?type=payment_method.expired").await;
    assert_eq!(j["data"].as_array().unwrap().len(), 1);

    // A key restricted to storefront B sees none of A's methods.
    app.admin_mfa().await;
    let key = app
        .api_key(T, ENV, json!({"description": "B", "role": "service_account", "storefront_ids": [b]}))
        .await;
    let secret = key["secret"].as_str().unwrap();
    let seen: Value = app.get(&pms).token(secret).header("x-tn", T).expect(200).await.json();
    assert_eq!(seen["data"], json!([]));
    app.get(&format!("{pms}/{}", mc["id"].as_str().unwrap()))
        .token(secret)
        .header("x-tn", T)
        .expect(404)
        .await;
}

/// New customers requested at about the same moment are created together, in shared
/// transactions (decision 0007, "Customers and offers written together"), each sealed under its
/// own data key and journaled in its own request's lineage and name exactly as alone. One whose
/// external id is taken (an upsert's update, a create's conflict) or named twice in the batch
/// goes the one-by-one way and gets its own answer; a batch that cannot insert one of its
/// customers (an email another customer has) writes none: each is then written alone, the
/// refused one gets its error and nothing of it is stored or journaled.
async fn customers_requested_together_are_created_together(app: TestApp) {
    use std::time::Duration;
    app.create_tenant(T).await;
    post(&app, "/v1/customers", json!({"external_id": "taken-1", "email": "taken@example.org"}), 201).await;
    let put = |ext: String, body: Value, request_id: String| {
        let app = &app;
        async move {
            app.request(reqwest::Method::PUT, &format!("/v1/customers/by-external-id/{ext}"))
                .json(body)
                .header("x-request-id", &request_id)
                .tenant(T, ENV)
                .send()
                .await
        }
    };
    let create = |body: Value| {
        let app = &app;
        async move { app.post("/v1/customers", body).tenant(T, ENV).send().await }
    };
    let before = azotte_service::customers::created_together();
    // The requests arrive while the first creating transaction cannot insert yet: the others
    // wait for it, together.
    let held = app.hold_writes("customer_data.customers").await;
    let puts = (0..8).map(|i| {
        let body = json!({"email": format!("together-{i}@example.org"), "first_name": format!("Tog{i}")});
        put(format!("together-{i}"), body, format!("req-together-{i}"))
    });
    let (new, existing, twice, ()) = tokio::join!(
        futures::future::join_all(puts),
        put("taken-1".into(), json!({"email": "taken@example.org", "last_name": "Kept"}), "req-taken".into()),
        futures::future::join_all([
            create(json!({"external_id": "twice"})),
            create(json!({"external_id": "twice"}))
        ]),
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            held.release().await;
        }
    );
    let after = azotte_service::customers::created_together();
    let (created, transactions) = (after.0 - before.0, after.1 - before.1);
    assert!(created == 9 && transactions < created, "{created} customers in {transactions} transactions");
    // The existing one updated (the one-by-one path), the second create of one external id refused.
    assert_eq!(existing.status, 200, "{}", existing.text());
    assert_eq!(existing.json::<Value>()["last_name"], "Kept");
    let mut twice: Vec<u16> = twice.iter().map(|a| a.status).collect();
    twice.sort();
    assert_eq!(twice, [201, 409]);
    let mut correlations = std::collections::HashSet::new();
    for (i, a) in new.iter().enumerate() {
        assert_eq!(a.status, 201, "{}", a.text());
        let id = a.json::<Value>()["id"].as_str().unwrap().to_owned();
        // Sealed under its own key: it reads back.
        let read = get(&app, &format!("/v1/customers/{id}")).await;
        assert_eq!(read["email"], format!("together-{i}@example.org"));
        assert_eq!(read["first_name"], format!("Tog{i}"));
        // Its entries, in its own request's lineage and name, in the one-by-one order.
        let j = get(&app, &format!("/v1/journal?type=customer.create&resource_id={id}")).await;
        let entry = &j["data"][0];
        assert_eq!(entry["request_id"], format!("req-together-{i}"), "{j}");
        assert_ne!(entry["principal"]["kind"], "system", "{entry}");
        let correlation = entry["correlation_id"].as_str().unwrap().to_owned();
        let lineage = get(&app, &format!("/v1/journal?correlation_id={correlation}&limit=100")).await;
        let types: Vec<&str> =
            lineage["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["customer.create", "customer.created"], "{lineage}");
        assert_eq!(
            lineage["data"][1]["body"],
            json!({"fields": ["email", "first_name", "legal_type", "status"]})
        );
        assert!(correlations.insert(correlation), "each its own lineage");
    }

    // A batch that cannot insert one of its customers: each alone, the refused one told why.
    let creates = || {
        let app = &app;
        async move {
            get(app, "/v1/journal?type=customer.create&limit=100").await["data"].as_array().unwrap().len()
        }
    };
    let created_before = creates().await;
    let held = app.hold_writes("customer_data.customers").await;
    let (answers, ()) = tokio::join!(
        futures::future::join_all([
            put("good-1".into(), json!({}), "req-good-1".into()),
            put("bad".into(), json!({"email": "TAKEN@example.org"}), "req-bad".into()),
            put("good-2".into(), json!({}), "req-good-2".into()),
        ]),
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            held.release().await;
        }
    );
    assert_eq!((answers[0].status, answers[2].status), (201, 201));
    assert_eq!(answers[1].status, 409, "{}", answers[1].text());
    let problem = answers[1].problem();
    assert_eq!(problem.code, "email_taken");
    assert_eq!(creates().await, created_before + 2, "the refused customer journaled nothing");
    let bad = app.request(reqwest::Method::GET, "/v1/customers?email=taken@example.org").tenant(T, ENV);
    assert_eq!(bad.expect(200).await.json::<Value>()["data"].as_array().unwrap().len(), 1);
}

both!(
    a_customer_round_trips_through_the_vault,
    customers_requested_together_are_created_together,
    bad_customer_input_is_refused_with_the_field,
    no_personal_value_is_readable_in_the_database_journal_or_logs,
    payment_methods_are_tokens_of_one_storefronts_psp_account
);

/// A customer whose creating batch's commit went unconfirmed — the server's connection to
/// PostgreSQL cut at the `COMMIT`, after the server got it or before — is answered as the
/// database then tells: created (only the answer was lost), or not (then created alone). Never
/// refused as its own taken external id.
async fn a_customer_whose_commit_is_cut(cuts: &[crate::helpers::Cut]) {
    let (app, proxy) = crate::helpers::spawn_app_through_cut_proxy().await;
    app.create_tenant(T).await;
    // A first customer: the tenant's data key exists (its creation is a transaction of its own).
    app.post("/v1/customers", json!({"external_id": "warm-up", "email": "warm.up@example.org"}))
        .tenant(T, ENV)
        .expect(201)
        .await;
    // The request id: the customer's journal entries bind it, in its creating transaction.
    let marker = "cut-customer-commit";
    for &cut in cuts {
        proxy.arm(marker, cut);
    }
    let body = json!({"external_id": "cut-1", "email": EMAIL});
    let r = app.post("/v1/customers", body).tenant(T, ENV).header("x-request-id", marker).send().await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(proxy.cuts(), cuts.len(), "every cut armed happened");
    let created: Value = r.json();
    let found: Value = app.get("/v1/customers").tenant(T, ENV).expect(200).await.json();
    assert_eq!(found["data"].as_array().unwrap().len(), 2, "the warm-up's and this one");
    let cut: Vec<&str> = found["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["external_id"] == "cut-1")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(cut, [created["id"].as_str().unwrap()], "one customer, the one answered");
    let entries = app.raw_strings("SELECT type FROM journal_entries WHERE type = 'customer.create'").await;
    assert_eq!(entries.len(), 2, "journaled once (and the warm-up's)");
}

mod a_customer_whose_commit_is_cut {
    use crate::helpers::Cut;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_server_got_it() {
        super::a_customer_whose_commit_is_cut(&[Cut::Answer]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn before_the_server_got_it() {
        super::a_customer_whose_commit_is_cut(&[Cut::Request]).await
    }

    /// The batch's not written, then the customer alone cut after the server got it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn before_then_alone_after() {
        super::a_customer_whose_commit_is_cut(&[Cut::Request, Cut::Answer]).await
    }
}
