//! Validating extractors: strict JSON bodies, query strings, credentials and tenant scope.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, Extensions, StatusCode};
use azotte_domain::FieldError;
use azotte_service::auth;
use azotte_store::{PlatformScope, TenantScope};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::ApiError;
use crate::AppState;

/// A JSON body that must be `application/json`, well-formed, and match `T` exactly (DTOs
/// deny unknown fields). Decode failures name the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON with Content-Type: application/json",
            ));
        }
        let (parts, body) = req.into_parts();
        decode_json(&read_body(&parts.extensions, body).await?).map(ApiJson)
    }
}

/// The whole body, read under the limit `DefaultBodyLimit` set in the request's `extensions`
/// (413 when larger), as the `Bytes` extractor reads it.
pub(crate) async fn read_body(extensions: &Extensions, body: Body) -> Result<Bytes, ApiError> {
    let mut req = Request::new(body);
    *req.extensions_mut() = extensions.clone();
    Bytes::from_request(req, &()).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
        } else {
            ApiError::bad_request("unreadable_body", "the request body could not be read")
        }
    })
}

/// Decodes a JSON document strictly; public for the extractor's tests.
pub(crate) fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "malformed_json",
            format!(
                "the body is not valid JSON: {} at line {} column {}",
                syntax_reason(e),
                e.line(),
                e.column()
            ),
        ),
        Category::Data => ApiError::validation(vec![data_field_error(path, e)]),
    }
}

fn syntax_reason(e: &serde_json::Error) -> String {
    // serde_json's message ends with " at line L column C", which we state separately.
    let msg = e.to_string();
    msg.split(" at line ").next().unwrap_or(&msg).to_owned()
}

fn data_field_error(path: &str, e: &serde_json::Error) -> FieldError {
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    let base = if path == "." { String::new() } else { path.to_owned() };
    let join = |name: &str| if base.is_empty() { name.to_owned() } else { format!("{base}.{name}") };
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_owned);
    if let Some(name) = msg.strip_prefix("unknown field ").and_then(quoted) {
        // serde_path_to_error's path already ends with the unknown key.
        let field = if base.is_empty() { name } else { base };
        return FieldError::new(field, "unknown_field", "is not a known field");
    }
    if let Some(name) = msg.strip_prefix("missing field ").and_then(quoted) {
        return FieldError::new(join(&name), "missing_field", "is required");
    }
    let field = if base.is_empty() { "body".to_owned() } else { base };
    if msg.starts_with("invalid type") {
        return FieldError::new(field, "invalid_type", msg);
    }
    FieldError::new(field, "invalid_value", msg)
}

/// A query string decoded into `T` (DTOs deny unknown parameters).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q).map(ApiQuery).map_err(|e| {
            let msg = e.to_string();
            let field = msg.split('`').nth(1).unwrap_or("query").to_owned();
            let code = if msg.starts_with("unknown field") { "unknown_parameter" } else { "invalid_value" };
            ApiError::validation(vec![FieldError::new(field, code, msg)])
        })
    }
}

/// Whether the request offers a credential at all (`Authorization` or `x-api-key`).
pub(crate) fn has_credential(parts: &Parts) -> bool {
    parts.headers.contains_key(header::AUTHORIZATION) || parts.headers.contains_key("x-api-key")
}

/// The bearer credential of a request: `Authorization: Bearer …` or `x-api-key: …`.
fn credential(parts: &Parts) -> Result<&str, ApiError> {
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| bad_credentials())?;
        let (scheme, token) = v.split_once(' ').ok_or_else(bad_credentials)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(bad_credentials());
        }
        return Ok(token.trim());
    }
    if let Some(v) = parts.headers.get("x-api-key") {
        return v.to_str().map(str::trim).map_err(|_| bad_credentials());
    }
    Err(ApiError::unauthenticated(
        "unauthenticated",
        "this route requires credentials (Authorization: Bearer …)",
    ))
}

fn bad_credentials() -> ApiError {
    ApiError::unauthenticated("unauthenticated", "malformed Authorization header; expected `Bearer <token>`")
}

/// An authenticated user session, on a route that is not tenant-scoped.
pub struct PlatformAuth(pub PlatformScope);

impl FromRequestParts<AppState> for PlatformAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = credential(parts)?;
        let scope = auth::authenticate_platform(&state.ctx, token).await?;
        tracing::Span::current().record("principal", tracing::field::display(scope.principal()));
        Ok(PlatformAuth(scope))
    }
}

/// An authenticated principal inside the tenant named by `x-tn`, in the environment named by
/// `x-env` (implied by an API key). Credentials are checked first (401), then the headers (400),
/// then the tenant (404 unknown, 403 suspended or another tenant's credential).
///
/// The scope is kept in the request's extensions: a later extraction in the same request (the
/// idempotency layer authenticates before the handler's own extractors) reuses it instead of
/// authenticating twice. Only this extractor puts it there.
pub struct TenantAuth(pub TenantScope);

/// The scope [`TenantAuth`] established for this request.
#[derive(Clone)]
struct Authenticated(TenantScope);

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(Authenticated(scope)) = parts.extensions.get::<Authenticated>() {
            return Ok(TenantAuth(scope.clone()));
        }
        let token = credential(parts)?;
        let tenant_ref = header_str(parts, "x-tn")?;
        let env = header_str(parts, "x-env")?;
        let scope = auth::authenticate_tenant(&state.ctx, token, tenant_ref, env).await?;
        let span = tracing::Span::current();
        span.record("tenant_id", tracing::field::display(scope.tenant_id()));
        span.record("environment", scope.environment().as_str());
        span.record("principal", tracing::field::display(scope.principal()));
        parts.extensions.insert(Authenticated(scope.clone()));
        Ok(TenantAuth(scope))
    }
}

/// A permission an extractor checks, as a type (`Allowed<need::UserInvite>`).
pub trait Need: Send + Sync + 'static {
    /// The permission.
    const PERMISSION: azotte_domain::permission::Permission;
}

/// Permission markers for [`Allowed`] and [`PlatformAllowed`].
pub mod need {
    macro_rules! needs {
        ($($name:ident),+ $(,)?) => {$(
            #[doc = concat!("Needs `", stringify!($name), "`.")]
            pub struct $name;
            impl super::Need for $name {
                const PERMISSION: azotte_domain::permission::Permission = azotte_domain::permission::Permission::$name;
            }
        )+};
    }
    needs!(
        PlatformTenantWrite,
        UserInvite,
        UserManage,
        RoleManage,
        CatalogWrite,
        PspManage,
        CustomerWrite,
        PaymentCreate,
        PaymentRefund,
        PaymentSafeMode,
        CatalogRead,
        SubscriptionRead,
        SubscriptionWrite,
        SubscriptionCancel
    );
}

/// A tenant scope that holds permission `N`, checked (and a denial journaled) before the
/// request body is read, so a caller without the permission learns nothing from validation.
pub struct Allowed<N: Need>(pub TenantScope, pub std::marker::PhantomData<N>);

impl<N: Need> FromRequestParts<AppState> for Allowed<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let TenantAuth(scope) = TenantAuth::from_request_parts(parts, state).await?;
        azotte_service::security::require(&state.ctx, &scope, N::PERMISSION).await?;
        Ok(Allowed(scope, std::marker::PhantomData))
    }
}

/// A platform scope that holds permission `N`, checked before the request body is read.
pub struct PlatformAllowed<N: Need>(pub PlatformScope, pub std::marker::PhantomData<N>);

impl<N: Need> FromRequestParts<AppState> for PlatformAllowed<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let PlatformAuth(scope) = PlatformAuth::from_request_parts(parts, state).await?;
        azotte_service::security::require_platform(&state.ctx, &scope, N::PERMISSION).await?;
        Ok(PlatformAllowed(scope, std::marker::PhantomData))
    }
}

/// A tenant scope allowed to manage API keys (a person with fresh MFA and `api_key.manage`),
/// checked before the request body is read.
pub struct KeyManager(pub TenantScope);

impl FromRequestParts<AppState> for KeyManager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let TenantAuth(scope) = TenantAuth::from_request_parts(parts, state).await?;
        azotte_service::api_keys::authorize_management(&state.ctx, &scope).await?;
        Ok(KeyManager(scope))
    }
}

/// The client's address as the socket saw it.
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip()),
        ))
    }
}

fn header_str<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ApiError> {
    match parts.headers.get(name) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_request("invalid_header", format!("{name} is not valid text")))?;
            Ok(Some(s.trim()).filter(|s| !s.is_empty()))
        }
    }
}

/// A PATCH field: absent (leave as is), `null` (clear) or a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Patch<T> {
    /// The field was not sent.
    #[default]
    Absent,
    /// The field was sent as `null`.
    Null,
    /// The field was sent with a value.
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Patch::Null,
            Some(v) => Patch::Value(v),
        })
    }
}

impl<T> Patch<T> {
    /// For fields that cannot be cleared: absent → `None`, value → `Some`, null → an error.
    pub fn required(self, field: &str) -> Result<Option<T>, FieldError> {
        match self {
            Patch::Absent => Ok(None),
            Patch::Value(v) => Ok(Some(v)),
            Patch::Null => Err(FieldError::new(field, "null_not_allowed", "cannot be null")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        #[serde(default)]
        nested: Option<Inner>,
        #[serde(default)]
        label: Patch<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn malformed_json_is_400_with_position() {
        let e = decode_json::<Body>(b"{\"name\": \"x\",\n  oops}").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code(), "malformed_json");
        let e = decode_json::<Body>(b"{\"name\": \"x\"} trailing").unwrap_err();
        assert_eq!(e.code(), "malformed_json");
    }

    #[test]
    fn unknown_missing_and_mistyped_fields_name_the_field() {
        let r = |b: &str| format!("{:?}", decode_json::<Body>(b.as_bytes()).unwrap_err());
        assert!(r(r#"{"name":"x","extra":1}"#).contains("field: \"extra\", code: \"unknown_field\""));
        assert!(r(r#"{}"#).contains("field: \"name\", code: \"missing_field\""));
        assert!(r(r#"{"name":"x","nested":{"count":"many"}}"#)
            .contains("field: \"nested.count\", code: \"invalid_type\""));
        assert!(r(r#"{"name":"x","nested":{"count":1,"zzz":2}}"#)
            .contains("field: \"nested.zzz\", code: \"unknown_field\""));
    }

    #[test]
    fn patch_is_three_state() {
        let b: Body = decode_json(br#"{"name":"x"}"#).unwrap();
        assert_eq!(b.label, Patch::Absent);
        let b: Body = decode_json(br#"{"name":"x","label":null}"#).unwrap();
        assert_eq!(b.label, Patch::Null);
        let b: Body = decode_json(br#"{"name":"x","label":"y"}"#).unwrap();
        assert_eq!(b.label, Patch::Value("y".into()));
        assert!(Patch::<String>::Null.required("label").is_err());
    }
}
