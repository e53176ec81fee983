//! The base OpenAPI document: info, security schemes and shared components.

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Azotte API",
        description = "Subscription orchestration platform and transaction trust center.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(Problem)),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "auth", description = "Sessions of platform users"),
        (name = "platform", description = "Installation-wide administration"),
        (name = "tenant", description = "The caller's tenant"),
        (name = "api_keys", description = "Machine credentials of one tenant environment"),
        (name = "users", description = "Members, invitations and custom roles of a tenant"),
        (name = "journal", description = "The audit trail: actions, decisions, outcomes"),
        (name = "catalog", description = "Storefronts, entitlements, bundles and prices"),
        (name = "customers", description = "End customers (personal data in the PII vault) and payment methods"),
        (name = "payments", description = "Charges through the storefront's PSP accounts, and refunds")
    )
)]
struct BaseDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Session token or API key"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// The base document that routes are added to.
pub fn base() -> utoipa::openapi::OpenApi {
    BaseDoc::openapi()
}

/// Serves the generated document.
pub async fn serve(doc: Arc<utoipa::openapi::OpenApi>) -> Response {
    let body = doc.to_pretty_json().unwrap_or_default();
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
