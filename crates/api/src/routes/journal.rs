//! `/v1/journal` and `/v1/lineage`: reading the audit trail.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use azotte_domain::pagination::Limit;
use azotte_domain::{FieldError, ValidationErrors};
use azotte_service::journal;
use azotte_store::journal::{Entry, Filter};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{ApiQuery, TenantAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(lineage))
        .routes(routes!(verify))
        .routes(routes!(keys))
        .routes(routes!(export))
        .routes(routes!(checkpoints))
}

const PROBLEM: &str = "application/problem+json";

/// Journal filters and pagination.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JournalParams {
    /// Entries at or after this instant (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Entries before this instant.
    to: Option<DateTime<Utc>>,
    /// `action`, `decision` or `outcome`.
    kind: Option<String>,
    /// Entry type, e.g. `api_key.created`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    type_: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    principal_id: Option<String>,
    correlation_id: Option<String>,
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    starting_after: Option<String>,
}

/// Who acted.
#[derive(Serialize, ToSchema)]
pub struct PrincipalView {
    kind: String,
    id: String,
    roles: Vec<String>,
    mfa: bool,
}

/// A journal entry.
#[derive(Serialize, ToSchema)]
pub struct EntryView {
    id: String,
    environment: String,
    /// `action`, `decision` or `outcome`.
    kind: String,
    #[serde(rename = "type")]
    type_: String,
    occurred_at: DateTime<Utc>,
    correlation_id: String,
    causation_id: Option<String>,
    principal: PrincipalView,
    source: String,
    request_id: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    #[schema(value_type = Object)]
    body: serde_json::Value,
    /// In a lineage tree: the entries this one caused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    children: Option<Vec<EntryView>>,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        let body = e.body_json();
        Self {
            id: e.id,
            environment: e.environment,
            kind: e.kind,
            type_: e.type_,
            occurred_at: e.occurred_at,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            principal: PrincipalView {
                kind: e.principal_kind,
                id: e.principal_id,
                roles: e.principal_roles.0,
                mfa: e.mfa,
            },
            source: e.source,
            request_id: e.request_id,
            client_ip: e.client_ip,
            user_agent: e.user_agent,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            body,
            children: None,
        }
    }
}

impl EntryList {
    /// A whole timeline as one page.
    pub fn timeline(entries: Vec<Entry>) -> Self {
        Self { data: entries.into_iter().map(Into::into).collect(), has_more: false, next_cursor: None }
    }
}

/// A page of entries.
#[derive(Serialize, ToSchema)]
pub struct EntryList {
    data: Vec<EntryView>,
    has_more: bool,
    next_cursor: Option<String>,
}

/// What one correlation id led to: actions with their decisions and outcomes nested.
#[derive(Serialize, ToSchema)]
pub struct Lineage {
    correlation_id: String,
    roots: Vec<EntryView>,
}

/// Journal entries of the environment, oldest first (permission `audit.read`).
#[utoipa::path(
    get, path = "/v1/journal", tag = "journal", security(("bearer" = [])),
    params(JournalParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = EntryList), (status = 403, body = crate::Problem, content_type = PROBLEM))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<JournalParams>,
) -> Result<Json<EntryList>, ApiError> {
    let mut errors = ValidationErrors::default();
    let limit = errors.check(Limit::parse(p.limit));
    if let Some(k) = &p.kind {
        if !["action", "decision", "outcome"].contains(&k.as_str()) {
            errors.push(FieldError::new("kind", "invalid_value", "must be action, decision or outcome"));
        }
    }
    errors.finish().map_err(|e| ApiError::validation(e.0))?;
    let filter = Filter {
        from: p.from,
        to: p.to,
        kind: p.kind,
        type_: p.type_,
        resource_type: p.resource_type,
        resource_id: p.resource_id,
        principal_id: p.principal_id,
        correlation_id: p.correlation_id,
    };
    let limit = limit.unwrap_or_default().get();
    let (entries, has_more) =
        journal::list(&state.ctx, &scope, &filter, limit, p.starting_after.as_deref()).await?;
    let next_cursor = if has_more { entries.last().map(|e| e.id.clone()) } else { None };
    Ok(Json(EntryList { data: entries.into_iter().map(Into::into).collect(), has_more, next_cursor }))
}

/// The tree of everything one request (or job) caused: action → decisions → outcomes.
#[utoipa::path(
    get, path = "/v1/lineage/{correlation_id}", tag = "journal", security(("bearer" = [])),
    params(("correlation_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = Lineage), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn lineage(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(correlation_id): Path<String>,
) -> Result<Json<Lineage>, ApiError> {
    let entries = journal::lineage(&state.ctx, &scope, &correlation_id).await?;
    if entries.is_empty() {
        return Err(ApiError::not_found("lineage"));
    }
    Ok(Json(Lineage { correlation_id, roots: tree(entries) }))
}

/// Nests entries under their causes; entries whose cause is absent are roots.
fn tree(entries: Vec<Entry>) -> Vec<EntryView> {
    let ids: std::collections::HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
    let mut children: HashMap<String, Vec<EntryView>> = HashMap::new();
    let mut roots = Vec::new();
    // Entries are oldest first; build bottom-up by walking newest first.
    let mut views: Vec<EntryView> = entries.into_iter().map(Into::into).collect();
    views.reverse();
    let mut pending = Vec::new();
    for mut v in views {
        v.children = Some(
            children
                .remove(&v.id)
                .map(|mut c| {
                    c.reverse();
                    c
                })
                .unwrap_or_default(),
        );
        match v.causation_id.clone().filter(|c| ids.contains(c)) {
            Some(parent) => children.entry(parent).or_default().push(v),
            None => pending.push(v),
        }
    }
    pending.reverse();
    roots.extend(pending);
    roots
}

/// Verification of the tenant's chains.
#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    /// True when no chain has a problem.
    ok: bool,
    /// One report per chain (environment): entries checked, last verified checkpoint, problems.
    #[schema(value_type = Vec<Object>)]
    chains: Vec<azotte_crypto::chain::Report>,
}

/// Recomputes the tenant's hash chains and checkpoint signatures and reports every problem.
#[utoipa::path(
    get, path = "/v1/journal/verify", tag = "journal", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = VerifyResponse), (status = 403, body = crate::Problem, content_type = PROBLEM))
)]
async fn verify(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<VerifyResponse>, ApiError> {
    let chains = azotte_service::seal::verify_tenant(&state.ctx, &scope).await?;
    Ok(Json(VerifyResponse { ok: chains.iter().all(|c| c.findings.is_empty()), chains }))
}

/// Public keys of journal checkpoints (kid → hex Ed25519 public key).
#[derive(Serialize, ToSchema)]
pub struct JournalKeys {
    keys: std::collections::BTreeMap<String, String>,
}

/// The keys that sign journal checkpoints, for offline verification.
#[utoipa::path(get, path = "/v1/journal/keys", tag = "journal", responses((status = 200, body = JournalKeys)))]
async fn keys(State(state): State<AppState>) -> Result<Json<JournalKeys>, ApiError> {
    Ok(Json(JournalKeys { keys: azotte_service::seal::public_keys(&state.ctx).await? }))
}

/// A self-contained export of the environment's chain (entries, seals, checkpoints, keys),
/// verifiable offline with `azotte journal verify-export`.
#[utoipa::path(
    get, path = "/v1/journal/export", tag = "journal", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, description = "An `azotte-journal-export/v2` document", body = Object))
)]
async fn export(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<azotte_crypto::chain::Export>, ApiError> {
    Ok(Json(azotte_service::seal::export_tenant(&state.ctx, &scope).await?))
}

/// Signed checkpoints of a chain.
#[derive(Serialize, ToSchema)]
pub struct CheckpointList {
    /// Oldest first: position, chain value, signing time, key id, hex signature.
    #[schema(value_type = Vec<Object>)]
    data: Vec<azotte_crypto::chain::Checkpoint>,
}

/// The environment chain's signed checkpoints (verify them with `GET /v1/journal/keys`).
#[utoipa::path(
    get, path = "/v1/journal/checkpoints", tag = "journal", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = CheckpointList), (status = 403, body = crate::Problem, content_type = PROBLEM))
)]
async fn checkpoints(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<CheckpointList>, ApiError> {
    Ok(Json(CheckpointList { data: azotte_service::seal::checkpoints_tenant(&state.ctx, &scope).await? }))
}
