//! Walks every operation of the OpenAPI document and checks that each one refuses a missing
//! credential (401), a credential of another tenant (403/404) and a credential without the
//! route's permission (403). Routes added later are covered without touching this file; a
//! public or authenticated-only route must be named in one of the lists below.

use crate::both;
use crate::helpers::{Resp, TestApp, Tokens};
use reqwest::Method;
use serde_json::{json, Value};

/// Operations anyone may call. (`/openapi.json` and `/metrics` are public too, but are not in
/// the document.)
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/.well-known/jwks.json"),
    // The public keys that sign journal checkpoints, for offline verification of exports.
    ("GET", "/v1/journal/keys"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/auth/bootstrap"),
    ("POST", "/v1/auth/refresh"),
    ("POST", "/v1/auth/invitations/accept"),
    // PSPs call it: the signature over the body, checked with the account's webhook secret, is
    // the credential (`payment_ops.rs` proves forged and foreign deliveries are refused).
    ("POST", "/v1/psp-webhooks/{tenant_id}/{environment}/{psp_account_id}"),
];

/// Operations that need a user session but no permission: they act on the caller's own
/// session or account (who am I, log out, enrol in and prove MFA), so every authenticated user
/// may call them.
const AUTHENTICATED_ONLY: &[(&str, &str)] = &[
    ("GET", "/v1/auth/me"),
    ("POST", "/v1/auth/logout"),
    ("POST", "/v1/auth/mfa/totp"),
    ("POST", "/v1/auth/mfa/totp/confirm"),
    ("POST", "/v1/auth/mfa/verify"),
];

/// Known deviations: routes that would decode the body or parse the path id before checking the
/// permission, so a caller lacking the permission would get the validation answer (`status`,
/// for `{}` and the walk's filler id) instead of 403. None remain: mutating routes authorize in
/// an extractor (`Allowed<need::…>`, `KeyManager`) that runs before the body is read. An entry
/// here is asserted to still deviate, and its `retry` (a request that gets past validation) to be
/// refused with 403. A route not listed here must answer 403 straight away.
const VALIDATES_BEFORE_PERMISSION: &[Deviation] = &[];

/// A route that answers a caller lacking its permission with a validation error first.
struct Deviation {
    method: &'static str,
    template: &'static str,
    status: u16,
    retry_path: &'static str,
    /// JSON body of the retry; empty for none.
    retry_body: &'static str,
}

/// Fewer documented operations than this means the walk is not walking what it should.
const MIN_PROTECTED_OPERATIONS: usize = 20;

/// A syntactically valid id that names nothing, for every path parameter.
const UNKNOWN_ID: &str = "ten_01jdq3m9x7e5k4w2c8v6b0n1p2";

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

const PASSWORD: &str = "tenant user password 1";

/// One documented operation.
#[derive(Debug, Clone)]
struct Op {
    method: Method,
    /// The templated path, as documented.
    template: String,
    /// The path with every parameter filled in.
    path: String,
    /// It takes the `x-tn` header.
    tenant_scoped: bool,
}

impl Op {
    fn key(&self) -> (String, String) {
        (self.method.to_string(), self.template.clone())
    }
    fn is(&self, list: &[(&str, &str)]) -> bool {
        list.iter().any(|(m, p)| *m == self.method.as_str() && *p == self.template)
    }
    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
    fn has_body(&self) -> bool {
        matches!(self.method, Method::POST | Method::PUT | Method::PATCH)
    }
}

fn fill_path(template: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') && seg.ends_with('}') { UNKNOWN_ID } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_tenant_header(p: &Value) -> bool {
    p["in"] == "header" && p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("x-tn"))
}

/// Every operation of `azotte_api::openapi()`.
fn operations() -> Vec<Op> {
    let doc = serde_json::to_value(azotte_api::openapi()).unwrap();
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = Vec::new();
    for (template, item) in paths {
        let shared = item["parameters"].as_array().cloned().unwrap_or_default();
        for m in METHODS {
            let Some(op) = item.get(*m) else { continue };
            let own = op["parameters"].as_array().cloned().unwrap_or_default();
            ops.push(Op {
                method: Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(),
                template: template.clone(),
                path: fill_path(template),
                tenant_scoped: shared.iter().chain(&own).any(is_tenant_header),
            });
        }
    }
    ops
}

#[test]
fn the_lists_name_documented_operations_only() {
    let ops = operations();
    let documented: Vec<_> = ops.iter().map(Op::key).collect();
    for (list, entries) in [("PUBLIC", PUBLIC), ("AUTHENTICATED_ONLY", AUTHENTICATED_ONLY)] {
        for (m, p) in entries {
            assert!(
                documented.contains(&(m.to_string(), p.to_string())),
                "stale entry in {list}: {m} {p} is not in the OpenAPI document"
            );
        }
    }
    for d in VALIDATES_BEFORE_PERMISSION {
        assert!(
            documented.contains(&(d.method.to_owned(), d.template.to_owned())),
            "stale entry in VALIDATES_BEFORE_PERMISSION: {} {} is not in the OpenAPI document",
            d.method,
            d.template
        );
    }
    for (m, p) in AUTHENTICATED_ONLY {
        assert!(!PUBLIC.contains(&(*m, *p)), "{m} {p} is both public and authenticated-only");
    }
    let protected = ops.iter().filter(|o| !o.is(PUBLIC)).count();
    assert!(protected >= MIN_PROTECTED_OPERATIONS, "only {protected} protected operations documented");
    for o in &ops {
        assert!(
            !(o.tenant_scoped && o.is(AUTHENTICATED_ONLY)),
            "{}: tenant-scoped yet authenticated-only",
            o.name()
        );
    }
}

/// Collects every failed expectation, so one run reports all offending routes.
#[derive(Default)]
struct Findings {
    failures: Vec<String>,
    checks: usize,
}

impl Findings {
    /// A problem+json answer with one of `statuses` and, unless `codes` is empty, one of `codes`.
    fn problem(&mut self, op: &Op, case: &str, r: &Resp, statuses: &[u16], codes: &[&str]) {
        self.checks += 1;
        let fail = |why: String| format!("{} [{case}]: {why}; got {} {}", op.name(), r.status, r.text());
        if !statuses.contains(&r.status) {
            self.failures.push(fail(format!("expected status {statuses:?}")));
            return;
        }
        if r.header("content-type") != Some("application/problem+json") {
            self.failures
                .push(fail(format!("expected problem+json, content-type {:?}", r.header("content-type"))));
            return;
        }
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let code = body["code"].as_str().unwrap_or_default();
        if body["status"] != json!(r.status) || code.is_empty() {
            self.failures.push(fail("malformed problem document".to_owned()));
        } else if !codes.is_empty() && !codes.contains(&code) {
            self.failures.push(fail(format!("expected code {codes:?}")));
        }
    }

    /// A valid credential got through authentication and authorization.
    fn admitted(&mut self, op: &Op, case: &str, r: &Resp) {
        self.checks += 1;
        if matches!(r.status, 401 | 403) || r.status >= 500 {
            self.failures.push(format!(
                "{} [{case}]: a valid credential must not be refused; got {} {}",
                op.name(),
                r.status,
                r.text()
            ));
        }
    }
}

/// Credentials of the walk.
struct Creds {
    /// API key of tenant B with the tenant_admin role.
    key_b: String,
    /// Session of a tenant_admin of tenant B.
    user_b: String,
    /// API key of tenant A holding only `catalog.read`.
    key_a_catalog: String,
    /// API key of tenant A holding only `audit.read`: the insufficient credential for routes
    /// that `catalog.read` admits.
    key_a_audit: String,
    /// Session of a tenant_admin of tenant A (no platform permission).
    user_a: String,
}

fn secret(key: &Value) -> String {
    key["secret"].as_str().unwrap().to_owned()
}

async fn credentials(app: &TestApp) -> Creds {
    app.create_tenant("tenant-a").await;
    app.create_tenant("tenant-b").await;
    app.admin_mfa().await;
    let key_b = secret(
        &app.api_key("tenant-b", "development", json!({"description": "b", "role": "tenant_admin"})).await,
    );
    let key_a_catalog = secret(
        &app.api_key(
            "tenant-a",
            "development",
            json!({"description": "catalog", "permissions": ["catalog.read"]}),
        )
        .await,
    );
    let key_a_audit = secret(
        &app.api_key(
            "tenant-a",
            "development",
            json!({"description": "audit", "permissions": ["audit.read"]}),
        )
        .await,
    );
    let user_b = app.tenant_user("tenant-b", "admin-b@example.com", &["tenant_admin"]).await.access;
    let user_a = app.tenant_user("tenant-a", "admin-a@example.com", &["tenant_admin"]).await.access;

    // Every credential is live, so the refusals below are about the route, not a dead token.
    app.get("/v1/tenant").token(&key_b).header("x-tn", "tenant-b").expect(200).await;
    app.get("/v1/tenant").token(&user_b).tenant("tenant-b", "development").expect(200).await;
    app.get("/v1/tenant").token(&user_a).tenant("tenant-a", "development").expect(200).await;
    let p =
        app.get("/v1/tenant").token(&key_a_catalog).header("x-tn", "tenant-a").expect(403).await.problem();
    assert_eq!(p.code, "permission_denied", "the catalog key authenticates but lacks tenant.read");
    Creds { key_b, user_b, key_a_catalog, key_a_audit, user_a }
}

/// A fresh session of tenant A's administrator, for routes that may end it.
async fn fresh_session(app: &TestApp) -> String {
    let t: Tokens = app
        .post(
            "/v1/auth/login",
            json!({"email": "admin-a@example.com", "password": PASSWORD, "tenant": "tenant-a"}),
        )
        .anon()
        .expect(200)
        .await
        .json();
    t.access_token
}

async fn send(app: &TestApp, op: &Op, token: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut call = app.request(op.method.clone(), &op.path);
    call = match token {
        Some(t) => call.token(t),
        None => call.anon(),
    };
    for (name, value) in headers {
        call = call.header(name, value);
    }
    if op.has_body() {
        call = call.json(json!({}));
    }
    call.send().await
}

const DENIED: &[&str] = &["permission_denied", "key_management_requires_user"];

/// Check (c), and (b) for a tenant session on a platform route: the credential authenticates
/// but lacks the route's permission, so the answer is 403.
async fn lacks_permission(
    app: &TestApp,
    f: &mut Findings,
    op: &Op,
    case: &str,
    token: &str,
    headers: &[(&str, &str)],
) {
    let r = send(app, op, Some(token), headers).await;
    let known = VALIDATES_BEFORE_PERMISSION
        .iter()
        .find(|d| d.method == op.method.as_str() && d.template == op.template);
    let Some(d) = known else {
        f.problem(op, case, &r, &[403], DENIED);
        return;
    };
    // Still the known deviation (remove the entry once the route checks the permission first).
    let case_known = format!("{case}; listed in VALIDATES_BEFORE_PERMISSION, remove the entry if fixed");
    f.problem(op, &case_known, &r, &[d.status], &[]);
    let mut call = app.request(op.method.clone(), d.retry_path).token(token);
    for (name, value) in headers {
        call = call.header(name, value);
    }
    if !d.retry_body.is_empty() {
        call = call.json(serde_json::from_str(d.retry_body).unwrap());
    }
    let r = call.send().await;
    f.problem(op, &format!("{case}, with a valid request"), &r, &[403], DENIED);
}

const TENANT_A: &[(&str, &str)] = &[("x-tn", "tenant-a"), ("x-env", "development")];

async fn every_documented_route_refuses_missing_foreign_and_insufficient_credentials(app: TestApp) {
    let creds = credentials(&app).await;
    let ops = operations();
    let mut f = Findings::default();
    let mut walked = 0;

    for op in &ops {
        if op.is(PUBLIC) {
            // Public routes answer without credentials (whatever else they say about `{}`).
            let r = send(&app, op, None, &[]).await;
            f.checks += 1;
            if r.status == 401 || r.status >= 500 {
                f.failures.push(format!("{} [public, anonymous]: got {} {}", op.name(), r.status, r.text()));
            }
            continue;
        }
        walked += 1;
        let tenant_headers: &[(&str, &str)] = if op.tenant_scoped { TENANT_A } else { &[] };

        // (a) No credentials.
        let r = send(&app, op, None, tenant_headers).await;
        f.problem(op, "no credentials", &r, &[401], &["unauthenticated"]);

        // (b) Tenant B's API key, naming tenant A.
        let r = send(&app, op, Some(&creds.key_b), TENANT_A).await;
        if op.tenant_scoped {
            f.problem(op, "tenant B's API key for tenant A", &r, &[403, 404], &[]);
        } else {
            f.problem(op, "an API key on a user-session route", &r, &[403], &["user_session_required"]);
        }

        if op.is(AUTHENTICATED_ONLY) {
            // A valid user session is enough; the `{}` body may still be refused (422 etc.).
            let session = fresh_session(&app).await;
            let r = send(&app, op, Some(&session), &[]).await;
            f.admitted(op, "a valid user session", &r);
            continue;
        }

        // (b) Tenant B's user session, naming tenant A.
        if op.tenant_scoped {
            let r = send(&app, op, Some(&creds.user_b), TENANT_A).await;
            f.problem(op, "tenant B's session for tenant A", &r, &[403, 404], &[]);
        } else {
            // A tenant session holds no platform permission.
            lacks_permission(
                &app,
                &mut f,
                op,
                "tenant B's session on a platform route",
                &creds.user_b,
                TENANT_A,
            )
            .await;
        }

        // (c) A credential lacking the route's permission.
        if op.tenant_scoped {
            // Two keys with disjoint permissions: a route that admits the first (it needs
            // `catalog.read`) must refuse the second.
            let a = &[("x-tn", "tenant-a")];
            let r = send(&app, op, Some(&creds.key_a_catalog), a).await;
            if r.status == 403 {
                let case = "tenant A's catalog.read key";
                lacks_permission(&app, &mut f, op, case, &creds.key_a_catalog, a).await;
            } else {
                let case = "tenant A's audit.read key (the route admits catalog.read)";
                lacks_permission(&app, &mut f, op, case, &creds.key_a_audit, a).await;
            }
        } else {
            let case = "a tenant admin's session on a platform route";
            lacks_permission(&app, &mut f, op, case, &creds.user_a, &[]).await;
        }
    }

    assert!(
        walked >= MIN_PROTECTED_OPERATIONS,
        "the walk covered only {walked} protected operations of {}",
        ops.len()
    );
    assert!(
        f.failures.is_empty(),
        "{} of {} checks failed over {walked} protected operations:\n{}",
        f.failures.len(),
        f.checks,
        f.failures.join("\n")
    );
}

both!(every_documented_route_refuses_missing_foreign_and_insufficient_credentials);
