//! The raw card data guard: every request is inspected before any extractor or handler runs,
//! and one that carries a card number — in the body, a query parameter or the path — is refused
//! with `422 raw_card_data_rejected` and journaled, without the digits (DESIGN.md §6).
//!
//! What counts as a card number is `azotte_domain::card_number`. Where it is looked for:
//! a JSON body's keys, strings and numbers at any depth (with the field path in the answer);
//! any body's text as a whole (malformed JSON, text, numbers in float form); a form body's
//! decoded names and values; every decoded query parameter; the percent-decoded path.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use azotte_domain::card_number::{contains_card_number, find_in_json};
use azotte_domain::{FieldError, Principal, PrincipalKind};
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{has_credential, read_body, PlatformAuth, TenantAuth};
use crate::AppState;

/// The journal entry type of a refusal.
pub const JOURNAL_TYPE: &str = "security.raw_card_data_rejected";

/// Where a card number was found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hit {
    /// `body`, `query` or `path`.
    location: &'static str,
    /// The field path, parameter name or route; never the value.
    field: String,
}

/// Refuses requests that carry a card number; passes the others on with their body unchanged.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let mut hit = in_path(parts.uri.path()).or_else(|| parts.uri.query().and_then(in_query));
    // Buffer the body under the limit `DefaultBodyLimit` set, exactly as the `Bytes` extractor
    // of the handlers would (413 when too large), so the handler still gets it.
    let bytes = match read_body(&parts.extensions, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if hit.is_none() && !bytes.is_empty() {
        hit = in_body(&bytes, is_form(&parts));
    }
    match hit {
        None => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Some(hit) => {
            journal(&state, &mut parts, &hit).await;
            refusal(&hit).into_response()
        }
    }
}

fn is_form(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

fn in_body(bytes: &[u8], form: bool) -> Option<Hit> {
    let body = |field: String| Some(Hit { location: "body", field });
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Some(path) = find_in_json(&value) {
            return body(if path.is_empty() { "body".to_owned() } else { path });
        }
    }
    // Any body as text, JSON included: this also sees numbers that JSON decoding would round
    // (19 digits in float form) and bodies that are not JSON at all.
    let text = String::from_utf8_lossy(bytes);
    if form {
        if let Some(name) = in_pairs(&text) {
            return body(name);
        }
    }
    contains_card_number(&text).then(|| "body".to_owned()).and_then(body)
}

/// The name of the first form pair whose name or value holds a card number.
fn in_pairs(text: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text).ok()?;
    pairs.into_iter().find_map(|(k, v)| {
        if contains_card_number(&k) {
            Some("*".to_owned())
        } else if contains_card_number(&v) {
            Some(if k.chars().count() > 64 { "*".to_owned() } else { k })
        } else {
            None
        }
    })
}

fn in_query(query: &str) -> Option<Hit> {
    let field = in_pairs(query)
        .or_else(|| contains_card_number(&percent_decode(query)).then(|| "query".to_owned()))?;
    Some(Hit { location: "query", field })
}

fn in_path(path: &str) -> Option<Hit> {
    path_has_card(path).then(|| Hit { location: "path", field: "path".to_owned() })
}

fn path_has_card(path: &str) -> bool {
    contains_card_number(path) || path.split('/').any(|seg| contains_card_number(&percent_decode(seg)))
}

/// `%XX` sequences decoded (`+` stays a plus), invalid UTF-8 replaced.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The path as it may be logged: redacted when it carries a card number.
pub(crate) fn loggable_path(path: &str) -> &str {
    if path_has_card(path) {
        "[redacted: card number]"
    } else {
        path
    }
}

/// A header value as it may be logged or stored, `None` when it carries a card number.
pub(crate) fn loggable_header(value: &str) -> Option<&str> {
    (!contains_card_number(value)).then_some(value)
}

fn refusal(hit: &Hit) -> ApiError {
    let place = match hit.location {
        "body" if hit.field == "body" => "the request body".to_owned(),
        "body" => format!("field `{}`", hit.field),
        "query" if hit.field == "query" => "the query string".to_owned(),
        "query" => format!("query parameter `{}`", hit.field),
        _ => "the request path".to_owned(),
    };
    let detail = format!(
        "{place} holds what looks like a card number; card numbers must never be sent to Azotte: \
         collect cards with your PSP's own fields and send its token"
    );
    let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "raw_card_data_rejected", detail);
    err.push_field_error(FieldError::new(
        hit.field.clone(),
        "raw_card_data_rejected",
        "looks like a card number; send a PSP token instead",
    ));
    err
}

/// Journals the refusal as a security decision: in the tenant's journal when the request
/// carries a valid credential for the tenant it names, else in the platform journal. Folded
/// per caller, route and field, so a flood of attempts writes one entry a minute.
async fn journal(state: &AppState, parts: &mut Parts, hit: &Hit) {
    let route = parts.extensions.get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let route = route.as_deref().unwrap_or("unmatched");
    let method = parts.method.as_str().to_owned();
    let client_ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let mut tenant = None;
    let mut principal = Principal { kind: PrincipalKind::User, id: "unauthenticated".into(), roles: vec![] };
    if has_credential(parts) {
        if parts.headers.contains_key("x-tn") {
            if let Ok(TenantAuth(scope)) = TenantAuth::from_request_parts(parts, state).await {
                principal = scope.principal().clone();
                tenant = Some((scope.tenant_id(), scope.environment()));
            }
        }
        if tenant.is_none() {
            if let Ok(PlatformAuth(scope)) = PlatformAuth::from_request_parts(parts, state).await {
                principal = scope.principal().clone();
            }
        }
    }
    let body = json!({
        "decision": "deny",
        "location": hit.location,
        "field": hit.field,
        "method": method,
        "route": route,
        "client_ip": client_ip,
    });
    let who = if principal.id == "unauthenticated" {
        client_ip.clone().unwrap_or_default()
    } else {
        principal.id.clone()
    };
    let flood_key = format!("{who}|{method} {route}|{}|{}", hit.location, hit.field);
    let result = azotte_service::security::record(
        &state.ctx,
        tenant.as_ref().map(|(id, env)| (*id, env.as_str())),
        JOURNAL_TYPE,
        &principal,
        &flood_key,
        body,
    )
    .await;
    if let Err(e) = result {
        // The refusal stands; only the record is missing. The error names no request data.
        tracing::error!(error = %e, "could not journal a raw card data refusal");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let f = |b: &str, form: bool| in_body(b.as_bytes(), form).map(|h| h.field);
        assert_eq!(
            f(r#"{"metadata":{"note":"4111 1111 1111 1111"}}"#, false).as_deref(),
            Some("metadata.note")
        );
        assert_eq!(f(r#"{"n": 6271835290461738295.0}"#, false).as_deref(), Some("body"), "float form");
        assert_eq!(f(r#"{"n": "4111111111111111", oops"#, false).as_deref(), Some("body"), "malformed");
        assert_eq!(f("pan=4111+1111+1111+1111&x=1", true).as_deref(), Some("pan"));
        assert_eq!(f("pan=4111%201111%201111%201111", true).as_deref(), Some("pan"));
        assert_eq!(f(r#"{"id":"ten_01jdq3m9x7e5k4w2c8v6b0n1p2","phone":"+4915112345678"}"#, false), None);
    }

    #[test]
    fn queries_and_paths() {
        assert_eq!(in_query("limit=10&q=4111%201111%201111%201111").map(|h| h.field).as_deref(), Some("q"));
        assert_eq!(in_query("q=4111+1111+1111+1111").map(|h| h.field).as_deref(), Some("q"));
        assert_eq!(in_query("limit=10&cursor=ten_01jdq3m9x7e5k4w2c8v6b0n1p2"), None);
        assert!(in_path("/v1/storefronts/4111111111111111").is_some());
        assert!(in_path("/v1/storefronts/4111%201111%201111%201111/catalog").is_some());
        assert!(in_path("/v1/storefronts/sfr_01jdq3m9x7e5k4w2c8v6b0n1p2").is_none());
        assert_eq!(loggable_path("/v1/x/4111111111111111"), "[redacted: card number]");
    }
}
