//! Every bad request gets a problem document with a stable code.

use crate::both;
use crate::helpers::{spawn_app_with, Backend, TestApp};
use serde_json::{json, Value};

async fn tenant_headers_are_required_and_checked(app: TestApp) {
    app.create_tenant("headers-co").await;
    let p = app.get("/v1/tenant").anon().tenant("headers-co", "production").expect(401).await.problem();
    assert_eq!(p.code, "unauthenticated");
    let p = app.get("/v1/tenant").expect(400).await.problem();
    assert_eq!(p.code, "tenant_required");
    let p =
        app.get("/v1/tenant").header("x-tn", "   ").header("x-env", "production").expect(400).await.problem();
    assert_eq!(p.code, "tenant_required");
    let p = app.get("/v1/tenant").tenant("no-such-tenant", "production").expect(404).await.problem();
    assert_eq!(p.code, "tenant_not_found");
    let p = app.get("/v1/tenant").header("x-tn", "headers-co").expect(400).await.problem();
    assert_eq!(p.code, "environment_required");
    let p = app.get("/v1/tenant").tenant("headers-co", "prod").expect(400).await.problem();
    assert_eq!(p.code, "invalid_environment");
}

async fn credentials_are_checked(app: TestApp) {
    let r = app.get("/v1/platform/tenants").anon().expect(401).await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.problem().code, "unauthenticated");
    app.get("/v1/platform/tenants").token("azs_0000").expect(401).await.problem();
    app.get("/v1/platform/tenants").token("garbage").expect(401).await.problem();
    let p = app
        .get("/v1/platform/tenants")
        .anon()
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .expect(401)
        .await
        .problem();
    assert_eq!(p.code, "unauthenticated");
    // x-api-key is accepted as a credential header too.
    let admin = app.admin_token.clone();
    app.get("/v1/platform/tenants").anon().header("x-api-key", &admin).expect(200).await;
}

async fn malformed_json_is_400_with_position(app: TestApp) {
    let p = app
        .request(reqwest::Method::POST, "/v1/platform/tenants")
        .body("application/json", "{\"slug\": \"acme\",\n \"name\": }")
        .expect(400)
        .await
        .problem();
    assert_eq!(p.code, "malformed_json");
    assert!(p.detail.contains("line 2 column"), "{}", p.detail);
    let p = app
        .request(reqwest::Method::POST, "/v1/platform/tenants")
        .body("application/json", "{\"slug\": \"acme\", \"name\": \"A\"} {}")
        .expect(400)
        .await
        .problem();
    assert_eq!(p.code, "malformed_json");
}

async fn unknown_fields_are_rejected(app: TestApp) {
    let p = app
        .post("/v1/platform/tenants", json!({"slug": "acme", "name": "A", "plan": "gold"}))
        .expect(422)
        .await
        .problem();
    assert_eq!(p.code, "validation_failed");
    assert_eq!((p.errors[0].field.as_str(), p.errors[0].code.as_str()), ("plan", "unknown_field"));
    let list: Value = app.get("/v1/platform/tenants").expect(200).await.json();
    assert!(list["data"].as_array().unwrap().is_empty(), "nothing was created");
}

async fn wrong_content_type_is_415(app: TestApp) {
    let p = app
        .request(reqwest::Method::POST, "/v1/platform/tenants")
        .body("text/plain", "{\"slug\":\"acme\",\"name\":\"A\"}")
        .expect(415)
        .await
        .problem();
    assert_eq!(p.code, "unsupported_media_type");
}

async fn oversized_body_is_413(app: TestApp) {
    let big = format!("{{\"slug\":\"acme\",\"name\":\"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let p = app
        .request(reqwest::Method::POST, "/v1/platform/tenants")
        .body("application/json", big)
        .expect(413)
        .await
        .problem();
    assert_eq!(p.code, "payload_too_large");
}

async fn unknown_route_and_wrong_method(app: TestApp) {
    let p = app.get("/v1/nothing-here").expect(404).await.problem();
    assert_eq!(p.code, "route_not_found");
    let r = app.request(reqwest::Method::DELETE, "/v1/platform/tenants").expect(405).await;
    let allow = r.header("allow").unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(r.problem().code, "method_not_allowed");
}

both!(
    tenant_headers_are_required_and_checked,
    credentials_are_checked,
    malformed_json_is_400_with_position,
    unknown_fields_are_rejected,
    wrong_content_type_is_415,
    oversized_body_is_413,
    unknown_route_and_wrong_method
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_is_configurable() {
    let app = spawn_app_with(Backend::Sqlite, &[("body_limit_bytes", "2048".into())]).await;
    let body = json!({"slug": "small", "name": "x".repeat(3000)});
    let p = app.post("/v1/platform/tenants", body).expect(413).await.problem();
    assert_eq!(p.code, "payload_too_large");
    app.create_tenant("small").await;
}

/// Clients that hang up mid-request (timeouts, closed tabs) must not leave a pooled connection
/// inside a half-begun transaction: every later request still works, and nothing half-written
/// shows up.
async fn client_disconnects_do_not_poison_the_pool(app: TestApp) {
    app.create_tenant("hangup").await;
    let mut calls = Vec::new();
    for i in 0..300u64 {
        // Timeouts from 0.5 to 6 ms land at every stage of a request, BEGIN included.
        let impatient = reqwest::Client::builder()
            .timeout(std::time::Duration::from_micros(500 + (i % 12) * 500))
            .build()
            .unwrap();
        let (c, base, token) = (impatient, app.base.clone(), app.admin_token.clone());
        calls.push(tokio::spawn(async move {
            let _ = c
                .post(format!("{base}/v1/roles"))
                .bearer_auth(&token)
                .header("x-tn", "hangup")
                .header("x-env", "development")
                .json(&json!({"name": format!("role_{i}"), "permissions": ["audit.read"]}))
                .send()
                .await;
            let _ = c
                .get(format!("{base}/v1/tenant"))
                .bearer_auth(&token)
                .header("x-tn", "hangup")
                .header("x-env", "development")
                .send()
                .await;
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    for _ in 0..20 {
        app.get("/v1/tenant").tenant("hangup", "development").expect(200).await;
    }
    app.post("/v1/roles", json!({"name": "after_hangups", "permissions": ["audit.read"]}))
        .tenant("hangup", "development")
        .expect(201)
        .await;
    app.get("/readyz").anon().expect(200).await;
    // Every role that exists was journaled with its action and outcome, none half-way.
    let roles: Value = app.get("/v1/roles").tenant("hangup", "development").expect(200).await.json();
    let created: Value = app
        .get("/v1/journal?type=role.created&limit=100")
        .tenant("hangup", "development")
        .expect(200)
        .await
        .json();
    assert_eq!(roles["data"].as_array().unwrap().len(), created["data"].as_array().unwrap().len());
}

both!(client_disconnects_do_not_poison_the_pool);
