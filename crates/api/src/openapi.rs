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
        (name = "payments", description = "Charges through the storefront's PSP accounts, and refunds"),
        (name = "invoices", description = "Invoices with gapless numbers, credit notes and fiscalization")
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

/// Documents the `Idempotency-Key` header on every POST operation that takes a tenant
/// credential (declares `x-tn`): the operations the idempotency layer covers. Other POSTs
/// (login, refresh, platform routes) ignore the header, so it is not offered there.
pub struct IdempotencyKeyHeader;

impl Modify for IdempotencyKeyHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        for item in openapi.paths.paths.values_mut() {
            let Some(params) = item.post.as_mut().and_then(|op| op.parameters.as_mut()) else { continue };
            if !params.iter().any(|p| p.name == "x-tn" && p.parameter_in == ParameterIn::Header) {
                continue;
            }
            let schema =
                ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(255));
            params.push(
                ParameterBuilder::new()
                    .name(azotte_domain::idempotency::HEADER)
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "A unique value (e.g. a UUID) of 1 to 255 printable ASCII characters. The first \
                         response is kept for the retention window (24 h by default) and replayed, with \
                         `Idempotent-Replayed: true`, to a retry with the same key, request and credential; \
                         the same key with another request or credential is 422 `idempotency_key_reused`, \
                         while the first is still running 409 `idempotency_key_in_flight`.",
                    ))
                    .schema(Some(schema))
                    .build(),
            );
        }
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
