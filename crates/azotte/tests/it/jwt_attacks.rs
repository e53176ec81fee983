//! Forged and otherwise unacceptable access tokens: every one is refused with 401 problem+json,
//! while a token forged the same way with the real key and valid claims is accepted.
//!
//! Tokens that need the real signing key are built with `azotte_crypto::jwt::encode`, taking
//! `sub` and `sid` from the administrator's real token so that only the attacked property
//! differs. Tokens that no key of ours could sign (`alg: none`, HS256, tampered payloads) are
//! assembled by hand: base64url without padding of the header and claims JSON.

use crate::both;
use crate::helpers::TestApp;
use azotte_crypto::jwt::{self, Claims, SigningKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Duration;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

/// The route every forged token is tried on: it needs a platform administrator.
const PROBE: &str = "/v1/platform/tenants";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JSON of one segment of a compact JWS.
fn segment(jwt: &str, index: usize) -> Value {
    let seg = jwt.split('.').nth(index).expect("segment present");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
}

/// `header.payload.signature`, each base64url without padding; `None` drops the third segment.
fn compact(header: &[u8], payload: &[u8], signature: Option<&[u8]>) -> String {
    let mut token = format!("{}.{}", b64(header), b64(payload));
    if let Some(sig) = signature {
        token.push('.');
        token.push_str(&b64(sig));
    }
    token
}

fn hs256(key: &[u8], signing_input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The app's real signing key.
fn real_key(app: &TestApp) -> SigningKey {
    app.ctx.ring.signing().expect("the app has a signing key")
}

/// Valid claims for the administrator's session, as of the app's clock: `sub` and `sid` come
/// from the administrator's real token.
fn valid_claims(app: &TestApp) -> Claims {
    let real: Claims = serde_json::from_value(segment(&app.admin_token, 1)).unwrap();
    let now = app.ctx.clock.now().timestamp();
    Claims {
        iss: app.ctx.issuer.clone(),
        aud: azotte_service::auth::AUDIENCE.to_owned(),
        sub: real.sub,
        tid: None,
        roles: vec!["platform_admin".to_owned()],
        amr: vec!["pwd".to_owned()],
        iat: now,
        nbf: now,
        exp: now + 5 * 60,
        jti: "forged-token-1".to_owned(),
        sid: real.sid,
    }
}

fn claims_json(c: &Claims) -> Vec<u8> {
    serde_json::to_vec(c).unwrap()
}

/// Sends the token on the probe route and asserts a 401 problem with `code`.
async fn refused(app: &TestApp, what: &str, token: &str, code: &str) {
    let r = app.get(PROBE).token(token).send().await;
    assert_eq!(r.status, 401, "{what}: GET {PROBE} with a forged token must be 401; body: {}", r.text());
    let p = r.problem();
    assert_eq!(p.code, code, "{what}: {}", p.detail);
}

// --- Controls: the forging code is known to produce acceptable tokens. ---

async fn control_real_key_and_valid_claims_are_accepted(app: TestApp) {
    let token = jwt::encode(&real_key(&app), &valid_claims(&app));
    let r = app.get(PROBE).token(&token).send().await;
    assert_eq!(r.status, 200, "a correctly signed token with valid claims is accepted: {}", r.text());
    // The hand-assembly path: the real token taken apart and put back together byte for byte.
    let mut parts = app.admin_token.split('.');
    let (h, p, s) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let dec = |x: &str| URL_SAFE_NO_PAD.decode(x).unwrap();
    let rebuilt = compact(&dec(h), &dec(p), Some(&dec(s)));
    assert_eq!(rebuilt, app.admin_token);
    app.get(PROBE).token(&rebuilt).expect(200).await;
}

/// The HMAC-SHA256 used for the algorithm-confusion tokens reproduces RFC 7515 appendix A.1.
#[test]
fn control_hs256_signing_matches_rfc7515_a1() {
    let key = URL_SAFE_NO_PAD
        .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
        .unwrap();
    let header = b"{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
    let payload = b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
    let input = compact(header, payload, None);
    assert_eq!(
        input,
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
         eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    );
    assert_eq!(b64(hs256(&key, &input)), "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
}

// --- Attacks. ---

async fn alg_none_is_refused(app: TestApp) {
    let claims = claims_json(&valid_claims(&app));
    let kid = real_key(&app).kid().to_owned();
    for alg in ["none", "None", "NONE"] {
        for header in [json!({"alg": alg, "typ": "JWT"}), json!({"alg": alg, "typ": "JWT", "kid": kid})] {
            let header = serde_json::to_vec(&header).unwrap();
            let empty_signature = compact(&header, &claims, Some(&[]));
            assert!(empty_signature.ends_with('.'));
            refused(&app, &format!("alg {alg}, empty signature"), &empty_signature, "unauthenticated").await;
            let two_segments = compact(&header, &claims, None);
            assert_eq!(two_segments.matches('.').count(), 1);
            refused(&app, &format!("alg {alg}, no signature segment"), &two_segments, "unauthenticated")
                .await;
        }
    }
}

async fn hs256_with_the_public_key_as_secret_is_refused(app: TestApp) {
    let key = real_key(&app);
    let jwks: Value = app.get("/.well-known/jwks.json").anon().expect(200).await.json();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == key.kid()).expect("key published");
    let x = jwk["x"].as_str().unwrap().to_owned();
    let raw = URL_SAFE_NO_PAD.decode(&x).unwrap();
    assert_eq!(raw, key.verifying_key().to_bytes(), "the JWK x is the raw public key");
    let claims = claims_json(&valid_claims(&app));
    for header in
        [json!({"alg": "HS256", "typ": "JWT", "kid": key.kid()}), json!({"alg": "HS256", "typ": "JWT"})]
    {
        let header = serde_json::to_vec(&header).unwrap();
        let input = compact(&header, &claims, None);
        for (secret_name, secret) in
            [("raw public key", raw.clone()), ("JWK x string", x.clone().into_bytes())]
        {
            let token = format!("{input}.{}", b64(hs256(&secret, &input)));
            refused(&app, &format!("HS256 keyed with the {secret_name}"), &token, "unauthenticated").await;
        }
    }
}

async fn unknown_kid_is_refused(app: TestApp) {
    let attacker = SigningKey::generate("k-attacker-0001");
    let jwks: Value = app.get("/.well-known/jwks.json").anon().expect(200).await.json();
    assert!(!jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == attacker.kid()));
    let token = jwt::encode(&attacker, &valid_claims(&app));
    refused(&app, "signed by an unpublished key", &token, "unauthenticated").await;
    app.get(PROBE).expect(200).await;
}

async fn published_kid_signed_by_another_key_is_refused(app: TestApp) {
    let impostor = SigningKey::generate(real_key(&app).kid());
    assert_eq!(segment(&jwt::encode(&impostor, &valid_claims(&app)), 0)["kid"], real_key(&app).kid());
    let token = jwt::encode(&impostor, &valid_claims(&app));
    refused(&app, "real kid, another Ed25519 key", &token, "unauthenticated").await;
}

async fn tampered_payload_is_refused(app: TestApp) {
    let other = app.tenant_user("tamperco", "victim@example.com", &["tenant_admin"]).await;
    let mut parts = app.admin_token.split('.');
    let (header, _payload, signature) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let original = segment(&app.admin_token, 1);
    let mut variants = Vec::new();
    let mut roles = original.clone();
    roles["roles"] = json!(["platform_admin", "platform_owner"]);
    variants.push(("roles changed", roles));
    let mut sub = original.clone();
    sub["sub"] = json!(other.user_id);
    variants.push(("sub changed to another user", sub));
    let mut amr = original.clone();
    amr["amr"] = json!(["pwd", "otp"]);
    variants.push(("amr claims MFA", amr));
    for (what, claims) in variants {
        let token = format!("{header}.{}.{signature}", b64(serde_json::to_vec(&claims).unwrap()));
        assert_ne!(token, app.admin_token);
        refused(&app, what, &token, "unauthenticated").await;
    }
    // The untouched token still works: the refusals were about the payload.
    app.get(PROBE).expect(200).await;
}

async fn expired_token_is_refused(app: TestApp) {
    let mut c = valid_claims(&app);
    c.iat -= 25 * 60;
    c.nbf = c.iat;
    c.exp = c.iat + 15 * 60;
    assert!(c.exp < app.ctx.clock.now().timestamp() - 60);
    refused(&app, "exp in the past", &jwt::encode(&real_key(&app), &c), "token_expired").await;
}

async fn not_yet_valid_token_is_refused(app: TestApp) {
    let mut c = valid_claims(&app);
    c.nbf += 10 * 60;
    c.exp = c.nbf + 15 * 60;
    refused(&app, "nbf 10 minutes ahead", &jwt::encode(&real_key(&app), &c), "unauthenticated").await;
}

async fn wrong_audience_is_refused(app: TestApp) {
    for aud in ["azotte-admin", "", "AZOTTE-API"] {
        let mut c = valid_claims(&app);
        c.aud = aud.to_owned();
        refused(&app, &format!("aud {aud:?}"), &jwt::encode(&real_key(&app), &c), "unauthenticated").await;
    }
}

async fn wrong_issuer_is_refused(app: TestApp) {
    for iss in ["https://evil.example".to_owned(), format!("{}/", app.ctx.issuer), String::new()] {
        let mut c = valid_claims(&app);
        c.iss = iss.clone();
        refused(&app, &format!("iss {iss:?}"), &jwt::encode(&real_key(&app), &c), "unauthenticated").await;
    }
}

async fn token_of_a_logged_out_session_is_refused(app: TestApp) {
    app.get(PROBE).expect(200).await;
    app.request(Method::POST, "/v1/auth/logout").expect(204).await;
    refused(&app, "the real token after logout", &app.admin_token, "session_revoked").await;
    // A fresh, correctly signed token of the same session is refused as well.
    let token = jwt::encode(&real_key(&app), &valid_claims(&app));
    refused(&app, "a new token of the revoked session", &token, "session_revoked").await;
}

async fn token_of_a_removed_member_is_refused(app: TestApp) {
    let leaver = app.tenant_user("memberco", "leaver@example.com", &["read_only"]).await;
    app.get("/v1/tenant").token(&leaver.access).tenant("memberco", "development").expect(200).await;
    app.request(Method::DELETE, &format!("/v1/users/{}", leaver.user_id))
        .tenant("memberco", "development")
        .expect(204)
        .await;
    let p = app
        .get("/v1/tenant")
        .token(&leaver.access)
        .tenant("memberco", "development")
        .expect(403)
        .await
        .problem();
    assert_eq!(p.code, "not_a_member");
}

/// The clock moves too: a token that was fine stops being accepted once `exp` passes.
async fn real_key_token_expires_by_the_apps_clock(app: TestApp) {
    let token = jwt::encode(&real_key(&app), &valid_claims(&app));
    app.get(PROBE).token(&token).expect(200).await;
    app.ctx.clock.advance(Duration::minutes(6));
    refused(&app, "five-minute token after six minutes", &token, "token_expired").await;
}

both!(
    control_real_key_and_valid_claims_are_accepted,
    alg_none_is_refused,
    hs256_with_the_public_key_as_secret_is_refused,
    unknown_kid_is_refused,
    published_kid_signed_by_another_key_is_refused,
    tampered_payload_is_refused,
    expired_token_is_refused,
    not_yet_valid_token_is_refused,
    wrong_audience_is_refused,
    wrong_issuer_is_refused,
    token_of_a_logged_out_session_is_refused,
    token_of_a_removed_member_is_refused,
    real_key_token_expires_by_the_apps_clock
);
