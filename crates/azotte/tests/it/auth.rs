//! The bootstrap administrator and platform sessions.

use crate::both;
use crate::helpers::{TestApp, Tokens};
use serde_json::{json, Value};

async fn bootstrap_secret_works_once(app: TestApp) {
    // spawn_app already exchanged the secret; a second exchange of any secret fails.
    let p = app
        .post("/v1/auth/bootstrap", json!({"bootstrap_secret": "azboot_00", "email": "x@example.com", "password": "long enough password"}))
        .anon()
        .expect(401)
        .await
        .problem();
    assert_eq!(p.code, "unauthenticated");
    let me: Value = app.get("/v1/auth/me").expect(200).await.json();
    assert_eq!(me["kind"], "platform_user");
    assert_eq!(me["roles"], json!(["platform_admin"]));
}

async fn login_logout_and_wrong_passwords(app: TestApp) {
    let s: Tokens = app
        .post(
            "/v1/auth/login",
            json!({"email": "ADMIN@example.com", "password": "correct horse battery staple"}),
        )
        .anon()
        .expect(200)
        .await
        .json();
    assert_eq!(s.token_type, "Bearer");
    assert!(
        s.access_token.split('.').count() == 3
            && s.refresh_token.starts_with("azr_")
            && s.user_id.starts_with("usr_")
    );
    app.get("/v1/platform/tenants").token(&s.access_token).expect(200).await;

    for (email, password) in [
        ("admin@example.com", "wrong password!!"),
        ("nobody@example.com", "correct horse battery staple"),
        ("not-an-email", "x"),
    ] {
        let p = app
            .post("/v1/auth/login", json!({"email": email, "password": password}))
            .anon()
            .expect(401)
            .await
            .problem();
        assert_eq!(p.code, "invalid_credentials", "same answer whether or not the account exists");
    }

    app.request(reqwest::Method::POST, "/v1/auth/logout").token(&s.access_token).expect(204).await;
    let p = app.get("/v1/platform/tenants").token(&s.access_token).expect(401).await.problem();
    assert_eq!(p.code, "session_revoked");
    let p = app
        .post("/v1/auth/refresh", json!({"refresh_token": s.refresh_token}))
        .anon()
        .expect(401)
        .await
        .problem();
    assert_eq!(p.code, "unauthenticated");
    // The other session is untouched.
    app.get("/v1/platform/tenants").expect(200).await;
}

both!(bootstrap_secret_works_once, login_logout_and_wrong_passwords);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_validates_email_and_password() {
    use azotte::Application;
    use azotte_domain::Clock;
    let db = azotte_store::testing::fresh_database(azotte_store::Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::helpers::test_config(&db.url, &[("data_dir", dir.path().display().to_string())]);
    let app = Application::build(&cfg, Clock::system()).await.unwrap();
    let secret = app.bootstrap().await.unwrap().unwrap();
    assert!(app.bootstrap().await.unwrap().is_none(), "only one bootstrap administrator");
    let addr = app.local_addr();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/auth/bootstrap");
    let r = client
        .post(&url)
        .json(&json!({"bootstrap_secret": secret.expose(), "email": "nope", "password": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    let fields: Vec<&str> =
        p["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["email", "password"]);
    // The failed attempt did not spend the secret.
    let r = client
        .post(&url)
        .json(&json!({"bootstrap_secret": secret.expose(), "email": "ops@example.com", "password": "a long and fine password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
