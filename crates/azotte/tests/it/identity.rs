//! Identity and access end to end: sessions, refresh rotation, MFA, API keys, memberships,
//! custom roles and tenant resolution.

use crate::both;
use crate::helpers::{TestApp, Tokens};
use base64::Engine;
use chrono::Duration;
use reqwest::Method;
use serde_json::{json, Value};

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

async fn refresh_rotates_and_reuse_revokes_the_family(app: TestApp) {
    let first: Tokens = app
        .post("/v1/auth/refresh", json!({"refresh_token": app.admin_refresh}))
        .anon()
        .expect(200)
        .await
        .json();
    assert_ne!(first.refresh_token, app.admin_refresh);
    app.get("/v1/platform/tenants").token(&first.access_token).expect(200).await;
    // Replaying the spent token is theft: the whole family goes.
    let p = app
        .post("/v1/auth/refresh", json!({"refresh_token": app.admin_refresh}))
        .anon()
        .expect(401)
        .await
        .problem();
    assert_eq!(p.code, "refresh_token_reused");
    let p = app
        .post("/v1/auth/refresh", json!({"refresh_token": first.refresh_token}))
        .anon()
        .expect(401)
        .await
        .problem();
    assert_eq!(p.code, "unauthenticated");
    let p = app.get("/v1/platform/tenants").token(&first.access_token).expect(401).await.problem();
    assert_eq!(p.code, "session_revoked");
    let p = app.get("/v1/platform/tenants").expect(401).await.problem();
    assert_eq!(p.code, "session_revoked", "the original access token of the family is dead too");
}

async fn access_tokens_carry_the_documented_claims_and_expire(app: TestApp) {
    let c = claims(&app.admin_token);
    for k in ["iss", "aud", "sub", "roles", "amr", "iat", "nbf", "exp", "jti", "sid"] {
        assert!(c.get(k).is_some(), "claim {k}: {c}");
    }
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 15 * 60);
    assert_eq!(c["roles"], json!(["platform_admin"]));
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(app.admin_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let jwks: Value = app.get("/.well-known/jwks.json").anon().expect(200).await.json();
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == header["kid"] && k["crv"] == "Ed25519"));

    app.ctx.clock.advance(Duration::minutes(16));
    let p = app.get("/v1/platform/tenants").expect(401).await.problem();
    assert_eq!(p.code, "token_expired");
    // The refresh token outlives it.
    app.post("/v1/auth/refresh", json!({"refresh_token": app.admin_refresh})).anon().expect(200).await;
}

async fn signing_key_rotation_keeps_old_tokens_until_they_expire(app: TestApp) {
    let old_kid = claims_kid(&app.admin_token);
    let new_kid = azotte_service::auth::rotate_signing_key(&app.ctx).await.unwrap();
    assert_ne!(old_kid, new_kid);
    app.get("/v1/platform/tenants").expect(200).await;
    let fresh: Tokens = app
        .post("/v1/auth/refresh", json!({"refresh_token": app.admin_refresh}))
        .anon()
        .expect(200)
        .await
        .json();
    assert_eq!(claims_kid(&fresh.access_token), new_kid);
    let jwks: Value = app.get("/.well-known/jwks.json").anon().expect(200).await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "both keys published while old tokens live");
    app.ctx.clock.advance(Duration::minutes(16));
    let jwks: Value = app.get("/.well-known/jwks.json").anon().expect(200).await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
}

fn claims_kid(jwt: &str) -> String {
    let h: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwt.split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    h["kid"].as_str().unwrap().to_owned()
}

async fn totp_enrolment_login_replay_and_recovery(app: TestApp) {
    let e: Value = app.request(Method::POST, "/v1/auth/mfa/totp").expect(200).await.json();
    let secret = e["secret"].as_str().unwrap().to_owned();
    assert!(e["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/Azotte:"));
    let p = app.post("/v1/auth/mfa/totp/confirm", json!({"code": "000000"})).expect(401).await.problem();
    assert_eq!(p.code, "invalid_mfa_code");
    let codes: Value = app
        .post("/v1/auth/mfa/totp/confirm", json!({"code": app.totp_code(&secret)}))
        .expect(200)
        .await
        .json();
    let recovery: Vec<String> =
        codes["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(recovery.len(), 10);

    let creds = json!({"email": "admin@example.com", "password": "correct horse battery staple"});
    let p = app.post("/v1/auth/login", creds.clone()).anon().expect(401).await.problem();
    assert_eq!(p.code, "mfa_required");
    app.ctx.clock.advance(Duration::seconds(30));
    let code = app.totp_code(&secret);
    let mut with_code = creds.clone();
    with_code["totp_code"] = json!(code);
    let t: Tokens = app.post("/v1/auth/login", with_code.clone()).anon().expect(200).await.json();
    assert_eq!(claims(&t.access_token)["amr"], json!(["pwd", "otp"]));
    // The same code cannot be used twice.
    let p = app.post("/v1/auth/login", with_code).anon().expect(401).await.problem();
    assert_eq!(p.code, "invalid_credentials");

    let mut with_recovery = creds.clone();
    with_recovery["recovery_code"] = json!(recovery[3]);
    app.post("/v1/auth/login", with_recovery.clone()).anon().expect(200).await;
    app.post("/v1/auth/login", with_recovery).anon().expect(401).await.problem();
}

async fn api_keys_need_fresh_mfa_and_are_bound_to_tenant_and_environment(app: TestApp) {
    app.create_tenant("keyco").await;
    app.create_tenant("otherco").await;
    let body = json!({"description": "backend", "role": "service_account"});
    let p = app.post("/v1/api-keys", body.clone()).tenant("keyco", "development").expect(403).await.problem();
    assert_eq!(p.code, "mfa_required");

    app.admin_mfa().await;
    let k = app.api_key("keyco", "development", body.clone()).await;
    let key = k["secret"].as_str().unwrap().to_owned();
    assert!(key.starts_with("az_test_"));
    assert_eq!(k["environment"], "development");
    let listed: Value = app.get("/v1/api-keys").tenant("keyco", "development").expect(200).await.json();
    assert!(listed["data"][0].get("secret").is_none(), "the secret is shown once");

    let cur: Value = app
        .get("/v1/tenant")
        .anon()
        .header("x-api-key", &key)
        .header("x-tn", "keyco")
        .expect(200)
        .await
        .json();
    assert_eq!(cur["environment"], "development");
    app.get("/v1/tenant")
        .token(&key)
        .header("x-tn", "keyco")
        .header("x-env", "development")
        .expect(200)
        .await;
    let p = app.get("/v1/tenant").token(&key).tenant("keyco", "production").expect(403).await.problem();
    assert_eq!(p.code, "environment_mismatch");
    let p = app.get("/v1/tenant").token(&key).header("x-tn", "otherco").expect(403).await.problem();
    assert_eq!(p.code, "tenant_mismatch");
    let p = app.get("/v1/tenant").token(&key).expect(400).await.problem();
    assert_eq!(p.code, "tenant_required");
    let p = app
        .post("/v1/api-keys", body.clone())
        .token(&key)
        .header("x-tn", "keyco")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "key_management_requires_user");
    let p = app.get("/v1/platform/tenants").token(&key).expect(403).await.problem();
    assert_eq!(p.code, "user_session_required");
    let mut tampered = key.clone();
    tampered.pop();
    tampered.push(if key.ends_with('a') { 'q' } else { 'a' });
    app.get("/v1/tenant").token(&tampered).header("x-tn", "keyco").expect(401).await.problem();

    // A live key for production data; the test key cannot reach it and vice versa.
    let live = app.api_key("keyco", "production", body.clone()).await;
    let live_key = live["secret"].as_str().unwrap();
    assert!(live_key.starts_with("az_live_"));
    let cur: Value = app.get("/v1/tenant").token(live_key).header("x-tn", "keyco").expect(200).await.json();
    assert_eq!(cur["mode"], "live");
    let p = app.get("/v1/tenant").token(live_key).tenant("keyco", "development").expect(403).await.problem();
    assert_eq!(p.code, "environment_mismatch");

    // Rotation with overlap, then revocation.
    let id = k["id"].as_str().unwrap();
    let r: Value = app
        .post(&format!("/v1/api-keys/{id}/rotate"), json!({"overlap_seconds": 60}))
        .tenant("keyco", "development")
        .expect(200)
        .await
        .json();
    let new_key = r["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    app.get("/v1/tenant").token(&key).header("x-tn", "keyco").expect(200).await;
    app.get("/v1/tenant").token(&new_key).header("x-tn", "keyco").expect(200).await;
    app.ctx.clock.advance(Duration::seconds(61));
    app.get("/v1/tenant").token(&key).header("x-tn", "keyco").expect(401).await.problem();
    app.get("/v1/tenant").token(&new_key).header("x-tn", "keyco").expect(200).await;
    let p = app
        .post(&format!("/v1/api-keys/{id}/rotate"), json!({"overlap_seconds": 90000}))
        .tenant("keyco", "development")
        .expect(422)
        .await
        .problem();
    assert_eq!(p.errors[0].field, "overlap_seconds");

    // Ten minutes after the MFA step, key management needs it again.
    app.ctx.clock.advance(Duration::minutes(10));
    let fresh: Tokens = app
        .post("/v1/auth/refresh", json!({"refresh_token": app.admin_refresh}))
        .anon()
        .expect(200)
        .await
        .json();
    let p = app
        .request(Method::POST, &format!("/v1/api-keys/{id}/revoke"))
        .token(&fresh.access_token)
        .tenant("keyco", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "mfa_required");
    app.get("/v1/tenant").token(&new_key).header("x-tn", "keyco").expect(200).await;
}

async fn revoked_and_expired_keys_are_refused(app: TestApp) {
    app.create_tenant("keyco").await;
    app.admin_mfa().await;
    let exp = (app.ctx.clock.now() + Duration::seconds(120)).to_rfc3339();
    let k = app
        .api_key(
            "keyco",
            "staging",
            json!({"description": "short-lived", "permissions": ["tenant.read"], "expires_at": exp}),
        )
        .await;
    let key = k["secret"].as_str().unwrap().to_owned();
    app.get("/v1/tenant").token(&key).header("x-tn", "keyco").expect(200).await;
    let k2 = app
        .api_key("keyco", "staging", json!({"description": "to revoke", "permissions": ["tenant.read"]}))
        .await;
    let key2 = k2["secret"].as_str().unwrap().to_owned();
    let revoked: Value = app
        .request(Method::POST, &format!("/v1/api-keys/{}/revoke", k2["id"].as_str().unwrap()))
        .tenant("keyco", "staging")
        .expect(200)
        .await
        .json();
    assert!(revoked["revoked_at"].is_string());
    let p = app.get("/v1/tenant").token(&key2).header("x-tn", "keyco").expect(401).await.problem();
    assert_eq!(p.code, "api_key_revoked");
    app.ctx.clock.advance(Duration::seconds(121));
    let p = app.get("/v1/tenant").token(&key).header("x-tn", "keyco").expect(401).await.problem();
    assert_eq!(p.code, "api_key_expired");
}

async fn keys_hold_only_their_permissions_and_never_more_than_the_creator(app: TestApp) {
    app.create_tenant("permco").await;
    app.admin_mfa().await;
    let k = app
        .api_key(
            "permco",
            "development",
            json!({"description": "catalog reader", "permissions": ["catalog.read"]}),
        )
        .await;
    let key = k["secret"].as_str().unwrap();
    let p = app.get("/v1/tenant").token(key).header("x-tn", "permco").expect(403).await.problem();
    assert_eq!(p.code, "permission_denied");
    assert!(p.detail.contains("tenant.read"), "names the permission: {}", p.detail);
    let p = app
        .post("/v1/api-keys", json!({"description": "x", "permissions": ["api_key.manage"]}))
        .tenant("permco", "development")
        .expect(422)
        .await
        .problem();
    assert_eq!(p.errors[0].code, "unknown_permission");
    let p = app
        .post("/v1/api-keys", json!({"description": "x", "role": "no_such_role"}))
        .tenant("permco", "development")
        .expect(422)
        .await
        .problem();
    assert_eq!(p.errors[0].code, "unknown_role");
    let p = app
        .post("/v1/api-keys", json!({"description": "x"}))
        .tenant("permco", "development")
        .expect(422)
        .await
        .problem();
    assert_eq!(p.errors[0].field, "role");
}

async fn members_invitations_and_custom_roles(app: TestApp) {
    let support = app.tenant_user("peopleco", "agent@example.com", &["support_agent"]).await;
    let c = claims(&support.access);
    let tenant: Value = app.get("/v1/tenant").tenant("peopleco", "development").expect(200).await.json();
    assert_eq!(c["tid"], tenant["id"]);
    app.get("/v1/tenant").token(&support.access).tenant("peopleco", "staging").expect(200).await;
    // A tenant session is for its tenant only, and has no platform permission.
    app.create_tenant("elsewhere").await;
    let p = app
        .get("/v1/tenant")
        .token(&support.access)
        .tenant("elsewhere", "staging")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "tenant_mismatch");
    let p = app.get("/v1/platform/tenants").token(&support.access).expect(403).await.problem();
    assert_eq!(p.code, "permission_denied");
    let me: Value = app.get("/v1/auth/me").token(&support.access).expect(200).await.json();
    assert_eq!(me["kind"], "user");

    // No escalation through invitations or custom roles.
    let p = app
        .post("/v1/roles", json!({"name": "refunder", "permissions": ["payment.refund"]}))
        .token(&support.access)
        .tenant("peopleco", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "permission_denied", "support agents cannot manage roles at all");
    let role: Value = app
        .post("/v1/roles", json!({"name": "refunder", "description": "refunds only", "permissions": ["payment.refund", "payment.read"]}))
        .tenant("peopleco", "development")
        .expect(201)
        .await
        .json();
    let p = app
        .post("/v1/roles", json!({"name": "refunder", "permissions": ["payment.read"]}))
        .tenant("peopleco", "development")
        .expect(409)
        .await
        .problem();
    assert_eq!(p.code, "role_name_taken");
    let p = app
        .post("/v1/roles", json!({"name": "operator", "permissions": ["payment.read"]}))
        .tenant("peopleco", "development")
        .expect(422)
        .await
        .problem();
    assert_eq!(p.errors[0].code, "reserved");
    let p = app
        .post("/v1/roles", json!({"name": "x1", "permissions": ["platform.tenant.write"]}))
        .tenant("peopleco", "development")
        .expect(422)
        .await
        .problem();
    assert_eq!(p.errors[0].code, "unknown_permission");

    let finance = app.tenant_user("peopleco", "fin@example.com", &["refunder"]).await;
    let members: Value = app.get("/v1/users").tenant("peopleco", "development").expect(200).await.json();
    assert_eq!(members["data"].as_array().unwrap().len(), 2);
    let p = app
        .request(Method::DELETE, &format!("/v1/roles/{}", role["id"].as_str().unwrap()))
        .tenant("peopleco", "development")
        .expect(409)
        .await
        .problem();
    assert_eq!(p.code, "role_in_use");
    // The custom role grants what it says: payment.read yes, tenant.read no.
    let p = app
        .get("/v1/tenant")
        .token(&finance.access)
        .tenant("peopleco", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "permission_denied");

    // Role change takes effect at once; removal ends access at the next request.
    app.patch(&format!("/v1/users/{}", finance.user_id), json!({"roles": ["read_only"]}))
        .tenant("peopleco", "development")
        .expect(200)
        .await;
    app.get("/v1/tenant").token(&finance.access).tenant("peopleco", "development").expect(200).await;
    app.request(Method::DELETE, &format!("/v1/users/{}", finance.user_id))
        .tenant("peopleco", "development")
        .expect(204)
        .await;
    let p = app
        .get("/v1/tenant")
        .token(&finance.access)
        .tenant("peopleco", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "not_a_member");
    app.request(Method::DELETE, &format!("/v1/roles/{}", role["id"].as_str().unwrap()))
        .tenant("peopleco", "development")
        .expect(204)
        .await;

    // Invitations: single use, and the invitee's login works with the tenant named.
    app.post("/v1/users/invitations", json!({"email": "new@example.com", "roles": ["read_only"]}))
        .tenant("peopleco", "development")
        .expect(201)
        .await;
    let token = app.last_invitation_token("new@example.com");
    let accept = json!({"tenant": "peopleco", "token": token, "password": "short"});
    let p = app.post("/v1/auth/invitations/accept", accept).anon().expect(422).await.problem();
    assert_eq!(p.errors[0].field, "password");
    let accept = json!({"tenant": "peopleco", "token": token, "password": "a brand new password"});
    app.post("/v1/auth/invitations/accept", accept.clone()).anon().expect(200).await;
    let p = app.post("/v1/auth/invitations/accept", accept).anon().expect(401).await.problem();
    assert_eq!(p.code, "invalid_invitation");
    let t: Tokens = app
        .post(
            "/v1/auth/login",
            json!({"email": "new@example.com", "password": "a brand new password", "tenant": "peopleco"}),
        )
        .anon()
        .expect(200)
        .await
        .json();
    assert_eq!(t.tenant_id.as_deref(), tenant["id"].as_str());
    app.get("/v1/tenant").token(&t.access_token).tenant("peopleco", "production").expect(200).await;
    let p = app
        .post(
            "/v1/auth/login",
            json!({"email": "new@example.com", "password": "a brand new password", "tenant": "elsewhere"}),
        )
        .anon()
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "not_a_member");
    let p = app
        .post("/v1/users/invitations", json!({"email": "new@example.com", "roles": ["read_only"]}))
        .tenant("peopleco", "development")
        .expect(409)
        .await
        .problem();
    assert_eq!(p.code, "already_a_member");
    let p = app
        .post("/v1/users/invitations", json!({"email": "boss@example.com", "roles": ["tenant_admin"]}))
        .token(&support.access)
        .tenant("peopleco", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "permission_denied");
}

async fn suspended_tenant_refuses_every_credential(app: TestApp) {
    let user = app.tenant_user("frozen", "u@example.com", &["read_only"]).await;
    app.admin_mfa().await;
    let k = app
        .api_key("frozen", "development", json!({"description": "k", "permissions": ["tenant.read"]}))
        .await;
    let key = k["secret"].as_str().unwrap();
    let t: Value = app.get("/v1/tenant").tenant("frozen", "development").expect(200).await.json();
    app.patch(&format!("/v1/platform/tenants/{}", t["id"].as_str().unwrap()), json!({"status": "suspended"}))
        .expect(200)
        .await;
    for call in [
        app.get("/v1/tenant").token(&user.access).tenant("frozen", "development"),
        app.get("/v1/tenant").token(key).header("x-tn", "frozen"),
        app.get("/v1/tenant").tenant("frozen", "development"),
    ] {
        assert_eq!(call.expect(403).await.problem().code, "tenant_suspended");
    }
    let p = app
        .post(
            "/v1/auth/login",
            json!({"email": "u@example.com", "password": "tenant user password 1", "tenant": "frozen"}),
        )
        .anon()
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "tenant_suspended");
}

async fn login_brute_force_is_throttled_then_locked_with_notice(app: TestApp) {
    let wrong = json!({"email": "admin@example.com", "password": "not the password"});
    let mut failures = 0;
    let mut throttled = 0;
    while failures < 10 {
        let r = app.post("/v1/auth/login", wrong.clone()).anon().send().await;
        match r.status {
            401 => failures += 1,
            429 => {
                throttled += 1;
                let wait: i64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!(wait >= 1);
                assert_eq!(r.problem().code, "too_many_attempts");
                // Even the right password is refused while locked.
                let ok = app
                    .post(
                        "/v1/auth/login",
                        json!({"email": "admin@example.com", "password": "correct horse battery staple"}),
                    )
                    .anon()
                    .send()
                    .await;
                assert_eq!(ok.status, 429);
                app.ctx.clock.advance(Duration::seconds(wait));
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(throttled >= 4, "backoff kicked in after 5 failures: {throttled}");
    let locked = app.mail.sent().into_iter().filter(|m| matches!(m, azotte_service::mail::Mail::AccountLocked { to, .. } if to == "admin@example.com")).count();
    assert_eq!(locked, 1, "the owner is told once");
    // Unknown accounts are throttled the same way, so throttling does not reveal existence.
    for _ in 0..6 {
        app.post("/v1/auth/login", json!({"email": "ghost@example.com", "password": "whatever it is"}))
            .anon()
            .send()
            .await;
    }
    assert_eq!(
        app.post("/v1/auth/login", json!({"email": "ghost@example.com", "password": "whatever it is"}))
            .anon()
            .send()
            .await
            .status,
        429
    );
    assert!(!app.mail.sent().iter().any(
        |m| matches!(m, azotte_service::mail::Mail::AccountLocked { to, .. } if to == "ghost@example.com")
    ));
    // After the lock, the right password works and clears the count.
    app.ctx.clock.advance(Duration::minutes(31));
    app.post(
        "/v1/auth/login",
        json!({"email": "admin@example.com", "password": "correct horse battery staple"}),
    )
    .anon()
    .expect(200)
    .await;
}

both!(
    refresh_rotates_and_reuse_revokes_the_family,
    access_tokens_carry_the_documented_claims_and_expire,
    signing_key_rotation_keeps_old_tokens_until_they_expire,
    totp_enrolment_login_replay_and_recovery,
    api_keys_need_fresh_mfa_and_are_bound_to_tenant_and_environment,
    revoked_and_expired_keys_are_refused,
    keys_hold_only_their_permissions_and_never_more_than_the_creator,
    members_invitations_and_custom_roles,
    suspended_tenant_refuses_every_credential,
    login_brute_force_is_throttled_then_locked_with_notice
);

/// One person, two tenants, different roles: each session is for one tenant.
async fn one_person_can_belong_to_several_tenants(app: TestApp) {
    let a = app.tenant_user("multi-a", "both@example.com", &["support_agent"]).await;
    app.create_tenant("multi-b").await;
    app.post("/v1/users/invitations", json!({"email": "both@example.com", "roles": ["finance"]}))
        .tenant("multi-b", "development")
        .expect(201)
        .await;
    let token = app.last_invitation_token("both@example.com");
    // An existing account accepts with its own password, never a new one.
    let p = app
        .post(
            "/v1/auth/invitations/accept",
            json!({"tenant": "multi-b", "token": token, "password": "not my password!!"}),
        )
        .anon()
        .expect(401)
        .await
        .problem();
    assert_eq!(p.code, "invalid_credentials");
    let b: Tokens = app
        .post(
            "/v1/auth/invitations/accept",
            json!({"tenant": "multi-b", "token": token, "password": "tenant user password 1"}),
        )
        .anon()
        .expect(200)
        .await
        .json();
    assert_eq!(b.user_id, a.user_id, "the same person");
    let members_b: Value = app.get("/v1/users").tenant("multi-b", "development").expect(200).await.json();
    assert_eq!(members_b["data"][0]["roles"], json!(["finance"]));
    let members_a: Value = app.get("/v1/users").tenant("multi-a", "development").expect(200).await.json();
    assert_eq!(members_a["data"][0]["roles"], json!(["support_agent"]));
    let p = app
        .get("/v1/tenant")
        .token(&b.access_token)
        .tenant("multi-a", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "tenant_mismatch");
}

both!(one_person_can_belong_to_several_tenants);
