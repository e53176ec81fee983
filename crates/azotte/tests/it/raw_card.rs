//! Raw card data is refused everywhere (DESIGN.md §6): the detector's rule, then every
//! documented operation walked from the OpenAPI document with a card number in its body and in
//! its query string, then proof that the digits reached neither the database nor the logs.

use crate::both;
use crate::helpers::{Backend, Resp, TestApp};
use azotte_domain::card_number::{contains_card_number, find_in_json, luhn_valid};
use reqwest::Method;
use serde_json::{json, Value};

/// Test card numbers, as sent and as bare digits.
const VISA_16: &str = "4111 1111 1111 1111";
const VISA_16_DIGITS: &str = "4111111111111111";
const PAN_19: &str = "6271-8352-9046-1738-295";
const PAN_19_DIGITS: &str = "6271835290461738295";
/// Luhn-valid, 13 digits.
const PAN_13: &str = "6271835290462";

const JOURNAL_TYPE: &str = "security.raw_card_data_rejected";

fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

// --- The detector -------------------------------------------------------------------------

#[test]
fn luhn_valid_13_16_and_19_digits_are_card_numbers() {
    for pan in [VISA_16_DIGITS, PAN_19_DIGITS, PAN_13, "5555555555554444", "378282246310005"] {
        assert!(luhn_valid(&digits(pan)), "{pan} is a Luhn-valid test number");
        assert!(contains_card_number(pan), "{pan}");
        assert!(contains_card_number(&format!("my card: {pan}, thanks")), "{pan} inside text");
    }
    for spaced in [VISA_16, "4111-1111-1111-1111", PAN_19, "6271 8352 9046 1738 295", "6271-835290-462"] {
        assert!(contains_card_number(spaced), "{spaced}");
    }
    assert!(contains_card_number("4111 1111-1111 1111"), "mixed single separators");
    assert!(contains_card_number("line one\n4111111111111111\nline three"));
    assert!(contains_card_number("\"4111111111111111\""));
    assert!(contains_card_number("-4111111111111111"), "a leading minus is not part of the run");
}

#[test]
fn luhn_invalid_short_and_long_runs_are_not() {
    assert!(!contains_card_number("4111111111111112"), "Luhn-invalid");
    assert!(!contains_card_number("4111 1111 1111 1112"));
    // 12 and 20 digits, both Luhn-valid: outside 13–19.
    assert!(luhn_valid(&digits("432319487570")) && !contains_card_number("432319487570"));
    assert!(luhn_valid(&digits("41111111111111111115")));
    assert!(!contains_card_number("41111111111111111115"), "a 20-digit run is not cut to 16");
    assert!(!contains_card_number("4111 1111 1111 1111 1115"), "separators do not cut a run either");
    assert!(!contains_card_number("99351819093786579750"));
    // Separators count only singly and between digits.
    assert!(!contains_card_number("4111  1111  1111  1111"));
    assert!(!contains_card_number("4111 - 1111 - 1111 - 1111"));
    // Ordinary numbers.
    for s in ["0", "1499", "2026-11-26T01:26:24Z", "1764120384000.5", "+4915112345678", "+49 151 1234 5678"] {
        assert!(!contains_card_number(s), "{s}");
    }
}

#[test]
fn ids_and_tokens_of_the_project_never_match() {
    use azotte_domain::id::{PriceId, RequestId, TenantId};
    // Ids whose body is a Luhn-valid run: still not a card number, the run is part of the id.
    for crafted in
        ["ten_4111111111111111abcdefghjk", "ten_7bcdefghjk4111111111111111", "ten_00000000000000000000000000"]
    {
        let id: TenantId = crafted.parse().unwrap_or_else(|e| panic!("{crafted}: {e}"));
        assert!(!contains_card_number(&id.to_string()), "{crafted}");
        assert!(!contains_card_number(&format!("{{\"id\":\"{id}\"}}")), "{crafted} in JSON");
    }
    for _ in 0..2000 {
        for id in [TenantId::new().to_string(), RequestId::new().to_string(), PriceId::new().to_string()] {
            assert!(!contains_card_number(&id), "{id}");
        }
        let token = azotte_crypto::tokens::random_token("azr_");
        assert!(!contains_card_number(token.expose()));
        let (_, key) = azotte_crypto::tokens::generate_api_key(false);
        assert!(!contains_card_number(key.expose()));
    }
}

#[test]
fn json_documents_are_walked_with_their_paths() {
    let path = |v: Value| find_in_json(&v);
    assert_eq!(path(json!({"metadata": {"note": VISA_16}})).as_deref(), Some("metadata.note"));
    assert_eq!(path(json!({"items": [{"a": 1}, {"pan": PAN_19}]})).as_deref(), Some("items[1].pan"));
    assert_eq!(path(json!([[1, 2], [3, [PAN_13]]])).as_deref(), Some("[1][1][0]"));
    assert_eq!(path(json!({"n": 4111111111111111u64})).as_deref(), Some("n"), "a number");
    assert_eq!(path(json!({"n": -4111111111111111i64})).as_deref(), Some("n"));
    assert_eq!(path(json!({"n": 6271835290461738295u64})).as_deref(), Some("n"), "19 digits");
    assert_eq!(path(json!({"m": {(VISA_16_DIGITS): true}})).as_deref(), Some("m.*"), "a key is not echoed");
    assert_eq!(path(json!(VISA_16)).as_deref(), Some(""), "the document itself");
    let clean = json!({
        "id": "ten_4111111111111111abcdefghjk",
        "amount": 1499,
        "big": 41111111111111111115u128.to_string(),
        "phone": "+4915112345678",
        "nested": [{"n": 12}, [1, 2, 3]],
        "when": "2026-11-26T01:26:24Z",
    });
    assert_eq!(path(clean), None);
}

// --- Every documented operation -------------------------------------------------------------

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];
const UNKNOWN_ID: &str = "ten_01jdq3m9x7e5k4w2c8v6b0n1p2";
const TENANT: &str = "card-co";

struct Op {
    method: Method,
    template: String,
    path: String,
    tenant_scoped: bool,
    public: bool,
    takes_body: bool,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// Every operation of the OpenAPI document, path parameters filled with a well-formed id.
fn operations() -> Vec<Op> {
    let doc = serde_json::to_value(azotte_api::openapi()).unwrap();
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        let shared = item["parameters"].as_array().cloned().unwrap_or_default();
        for m in METHODS {
            let Some(op) = item.get(*m) else { continue };
            let own = op["parameters"].as_array().cloned().unwrap_or_default();
            let tenant_scoped = shared.iter().chain(&own).any(|p| {
                p["in"] == "header" && p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("x-tn"))
            });
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            ops.push(Op {
                takes_body: op.get("requestBody").is_some()
                    || matches!(method, Method::POST | Method::PUT | Method::PATCH),
                public: op.get("security").is_none(),
                method,
                path: template
                    .split('/')
                    .map(|s| if s.starts_with('{') && s.ends_with('}') { UNKNOWN_ID } else { s })
                    .collect::<Vec<_>>()
                    .join("/"),
                template: template.clone(),
                tenant_scoped,
            });
        }
    }
    ops
}

fn call(app: &TestApp, op: &Op, path: &str) -> crate::helpers::Call {
    let c = app.request(op.method.clone(), path);
    let c = if op.public { c.anon() } else { c };
    if op.tenant_scoped {
        c.tenant(TENANT, "development")
    } else {
        c
    }
}

/// The needles that must never show: every card number of this file, bare and as sent, and
/// the bare digits' hex (how a blob column would hold them).
fn needles() -> Vec<String> {
    let mut n = Vec::new();
    for pan in [VISA_16, VISA_16_DIGITS, PAN_19, PAN_19_DIGITS, "6271 8352 9046 1738 295", PAN_13] {
        n.push(pan.to_owned());
    }
    for bare in [VISA_16_DIGITS, PAN_19_DIGITS, PAN_13] {
        n.push(bare.bytes().map(|b| format!("{b:02x}")).collect());
    }
    n
}

fn leaked(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    needles().into_iter().find(|n| lower.contains(&n.to_lowercase()))
}

/// A refusal as specified: 422 problem+json, the code, the field, no digits.
fn refused(failures: &mut Vec<String>, what: &str, r: &Resp, field: &str) {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != 422 || r.header("content-type") != Some("application/problem+json") {
        failures.push(format!("{what}: expected 422 problem+json, got {} {}", r.status, r.text()));
    } else if body["code"] != "raw_card_data_rejected" || body["errors"][0]["field"] != field {
        failures.push(format!("{what}: expected raw_card_data_rejected on `{field}`, got {}", r.text()));
    }
    if let Some(n) = leaked(&r.text()) {
        failures.push(format!("{what}: the answer holds {n:?}"));
    }
    for (name, value) in &r.headers {
        if let Some(n) = leaked(value.to_str().unwrap_or_default()) {
            failures.push(format!("{what}: header {name} holds {n:?}"));
        }
    }
}

/// Journal entries of the refusals: (tenant_id, principal_id, body).
async fn refusals(app: &TestApp) -> Vec<(String, String, Value)> {
    app.raw_journal()
        .await
        .iter()
        .map(|row| serde_json::from_str::<Value>(row).unwrap())
        .filter(|row| row[4] == JOURNAL_TYPE)
        .map(|row| {
            let body = match &row[18] {
                Value::String(s) => serde_json::from_str(s).unwrap(),
                v => v.clone(),
            };
            (row[0].as_str().unwrap().to_owned(), row[9].as_str().unwrap().to_owned(), body)
        })
        .collect()
}

async fn every_route_refuses_card_numbers_in_bodies_and_queries(app: TestApp) {
    let tenant = app.create_tenant(TENANT).await;
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let ops = operations();
    let mut failures = Vec::new();
    let (mut bodies, mut queries) = (0, 0);
    for op in &ops {
        if op.takes_body {
            bodies += 1;
            let cases = [
                (json!({"metadata": {"note": VISA_16}}), "metadata.note"),
                (json!({"name": "x", "items": [{"pan": PAN_19}]}), "items[0].pan"),
                (json!({"n": 4111111111111111u64}), "n"),
            ];
            for (body, field) in cases {
                let r = call(&app, op, &op.path).json(body).send().await;
                refused(&mut failures, &format!("{} body `{field}`", op.name()), &r, field);
            }
        }
        if op.method == Method::GET {
            queries += 1;
            let cases = [("limit=10&note=4111%201111%201111%201111", "note"), ("q=6271835290461738295", "q")];
            for (query, field) in cases {
                let r = call(&app, op, &format!("{}?{query}", op.path)).send().await;
                refused(&mut failures, &format!("{} query `{field}`", op.name()), &r, field);
            }
        }
    }
    assert!(bodies >= 20 && queries >= 15, "only {bodies} body and {queries} query operations walked");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));

    // Every refusal was journaled, in the tenant's journal when the caller was in it, with the
    // route, method and field, never the value; folded repeats are counted, not dropped.
    let entries = refusals(&app).await;
    for op in ops.iter().filter(|o| o.takes_body || o.method == Method::GET) {
        let found =
            entries.iter().find(|(_, _, b)| b["route"] == op.template && b["method"] == op.method.as_str());
        let Some((tenant, principal, body)) = found else {
            panic!("{}: no {JOURNAL_TYPE} entry", op.name());
        };
        assert_eq!(body["decision"], "deny");
        assert_eq!(body["client_ip"], "127.0.0.1");
        if op.tenant_scoped {
            assert_eq!(tenant, &tenant_id, "{}: in the tenant's journal", op.name());
        }
        if op.public {
            assert_eq!(principal, "unauthenticated", "{}", op.name());
        } else {
            assert_ne!(principal, "unauthenticated", "{}: the caller is named", op.name());
        }
    }
    for (_, _, body) in &entries {
        assert!(leaked(&body.to_string()).is_none(), "{body}");
        // Not even the last digits are kept.
        assert!(!body.to_string().contains("8295"), "{body}");
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert!(!keys.iter().any(|k| k.contains("last4") || k.contains("value")), "{body}");
    }
    digits_are_nowhere(&app).await;
}

async fn other_shapes_of_requests_are_refused_too(app: TestApp) {
    let mut failures = Vec::new();
    let post = |ct: &str, body: &str| {
        app.request(Method::POST, "/v1/platform/tenants").body(ct, body.to_owned()).send()
    };
    let r = post("application/json", "{\"slug\": \"acme\", \"note\": \"4111 1111 1111 1111\",\n oops}").await;
    refused(&mut failures, "malformed JSON", &r, "body");
    let r = post("application/json", "{\"slug\": \"acme\", \"n\": 6271835290461738295.0}").await;
    refused(&mut failures, "a float holding 19 digits", &r, "body");
    let r = post("text/plain", "call me about 4111-1111-1111-1111").await;
    refused(&mut failures, "text", &r, "body");
    let r = post("application/x-www-form-urlencoded", "slug=acme&card=4111+1111+1111+1111").await;
    refused(&mut failures, "a form", &r, "card");
    let r = app.get(&format!("/v1/storefronts/{VISA_16_DIGITS}")).tenant("x", "development").send().await;
    refused(&mut failures, "the path", &r, "path");
    let r = app.get("/v1/nothing-here?pan=4111111111111111").send().await;
    refused(&mut failures, "an unknown route", &r, "pan");
    // No credentials: refused all the same, before authentication, on the platform's record.
    let r = app.get("/v1/platform/tenants?pan=4111111111111111").anon().send().await;
    refused(&mut failures, "no credentials", &r, "pan");
    // Headers that are logged or stored drop a card number instead of keeping it.
    let r = app
        .get("/v1/platform/tenants?x=6271835290462")
        .header("x-request-id", "req:4111111111111111")
        .header("user-agent", "agent 6271 8352 9046 1738 295")
        .send()
        .await;
    refused(&mut failures, "headers", &r, "x");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let entries = refusals(&app).await;
    let anon = entries.iter().find(|(_, _, b)| b["route"] == "/v1/platform/tenants" && b["method"] == "GET");
    assert!(anon.is_some(), "{entries:?}");
    assert!(entries.iter().any(|(_, _, b)| b["route"] == "unmatched" && b["location"] == "query"));
    assert!(entries.iter().any(|(_, _, b)| b["location"] == "path" && b["field"] == "path"));
    digits_are_nowhere(&app).await;
}

async fn clean_requests_reach_the_handler_unchanged(app: TestApp) {
    // Long numbers, phone numbers and ids that are not card numbers go through untouched.
    let name = "Order 99351819093786579750 for +4915112345678 (5555555555554445), ref \
                ten_7bcdefghjk5555555555554444, 432319487570";
    let t = app
        .post("/v1/platform/tenants", json!({"slug": "clean-co", "name": name}))
        .expect(201)
        .await
        .json::<Value>();
    assert_eq!(t["name"], name);
    let r = app.get("/v1/platform/tenants?limit=10").expect(200).await.json::<Value>();
    assert!(r["data"].as_array().unwrap().iter().any(|t| t["name"] == name));
    // The body limit still answers 413, and malformed JSON 400, behind the guard.
    let big = format!("{{\"slug\":\"big\",\"name\":\"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let p = app
        .request(Method::POST, "/v1/platform/tenants")
        .body("application/json", big)
        .expect(413)
        .await
        .problem();
    assert_eq!(p.code, "payload_too_large");
    let p = app
        .request(Method::POST, "/v1/platform/tenants")
        .body("application/json", "{\"slug\": \"5555555555554445\",")
        .expect(400)
        .await
        .problem();
    assert_eq!(p.code, "malformed_json");
    // A refusal's problem document has the usual shape.
    let p = app
        .post("/v1/platform/tenants", json!({"slug": "x", "name": "y", "metadata": {"note": VISA_16}}))
        .expect(422)
        .await
        .problem();
    assert_eq!(p.code, "raw_card_data_rejected");
    assert!(p.detail.contains("`metadata.note`"), "{}", p.detail);
    assert_eq!(p.errors[0].code, "raw_card_data_rejected");
}

both!(
    every_route_refuses_card_numbers_in_bodies_and_queries,
    other_shapes_of_requests_are_refused_too,
    clean_requests_reach_the_handler_unchanged
);

// --- Nowhere stored, nowhere logged --------------------------------------------------------

/// Every row of every table of the database, each rendered as text (blobs as hex), read as the
/// owner so row-level security hides nothing.
async fn database_text(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    match app.backend {
        Backend::Postgres => {
            let tables = app
                .raw_strings(
                    "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) \
                     FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
                     AND table_schema NOT IN ('pg_catalog', 'information_schema')",
                )
                .await;
            assert!(tables.len() >= 10, "{tables:?}");
            for t in tables {
                out.extend(app.raw_strings(&format!("SELECT row_to_json(t)::text FROM {t} t")).await);
            }
        }
        Backend::Sqlite => {
            let tables = app.raw_strings("SELECT name FROM sqlite_master WHERE type = 'table'").await;
            assert!(tables.len() >= 10, "{tables:?}");
            for t in tables {
                let cols = app
                    .raw_strings(&format!("SELECT name FROM pragma_table_info('{}')", t.replace('\'', "''")))
                    .await;
                // quote() renders text quoted and blobs as X'…' hex.
                let row = cols
                    .iter()
                    .map(|c| format!("quote(\"{}\")", c.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                out.extend(
                    app.raw_strings(&format!("SELECT {row} FROM \"{}\"", t.replace('"', "\"\""))).await,
                );
            }
        }
    }
    out
}

async fn digits_are_nowhere(app: &TestApp) {
    let rows = database_text(app).await;
    assert!(rows.iter().any(|r| r.contains(JOURNAL_TYPE)), "the scan sees the journal");
    for row in &rows {
        if let Some(n) = leaked(row) {
            panic!("the database holds {n:?}: {row}");
        }
    }
    let logs = crate::helpers::logs();
    assert!(logs.contains("\"status\":422"), "the refusals were logged");
    if let Some(n) = leaked(&logs) {
        let line = logs.lines().find(|l| l.to_lowercase().contains(&n.to_lowercase())).unwrap_or_default();
        panic!("the logs hold {n:?}: {line}");
    }
}
