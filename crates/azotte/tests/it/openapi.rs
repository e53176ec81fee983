//! The committed OpenAPI document equals the generated one, and the server serves it.

use crate::both;
use crate::helpers::TestApp;
use serde_json::Value;

fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json")
}

#[test]
fn committed_openapi_json_is_current() {
    let generated = azotte_api::openapi_json();
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p azotte --test it openapi` \
         (or `cargo run -q -- openapi > openapi.json`) and commit it"
    );
}

async fn served_document_matches(app: TestApp) {
    let served: Value = app.get("/openapi.json").anon().expect(200).await.json();
    let generated: Value = serde_json::from_str(&azotte_api::openapi_json()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/v1/platform/tenants",
        "/v1/platform/tenants/{id}",
        "/v1/tenant",
        "/healthz",
        "/readyz",
        "/v1/auth/login",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(served["components"]["securitySchemes"]["bearer"].is_object());
}

both!(served_document_matches);
