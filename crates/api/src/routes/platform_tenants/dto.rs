//! Request and response bodies of the tenant administration routes.

use azotte_domain::id::TenantId;
use azotte_domain::tenant::{Environment, Mode, TenantStatus};
use azotte_store::tenants::{EnvironmentRecord, Tenant};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::Patch;

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 3–63 characters: lowercase letters, digits, single hyphens; starts with a letter.
    #[schema(example = "acme")]
    pub slug: String,
    /// Display name, 1–200 characters.
    #[schema(example = "Acme Streaming")]
    pub name: String,
}

/// Changes to a tenant: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// New display name.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub name: Patch<String>,
    /// `suspended` stops all tenant-scoped access; `active` restores it.
    #[serde(default)]
    #[schema(value_type = Option<TenantStatus>)]
    pub status: Patch<TenantStatus>,
}

/// Cursor pagination parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1–100 (default 20).
    pub limit: Option<i64>,
    /// Return items after this id (the previous page's `next_cursor`).
    pub starting_after: Option<String>,
}

/// One environment of a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentView {
    pub name: Environment,
    pub mode: Mode,
    pub created_at: DateTime<Utc>,
}

impl From<EnvironmentRecord> for EnvironmentView {
    fn from(e: EnvironmentRecord) -> Self {
        Self { name: e.environment, mode: e.mode, created_at: e.created_at }
    }
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Present on single-tenant reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<EnvironmentView>>,
}

impl TenantView {
    pub fn new(t: Tenant, envs: Option<Vec<EnvironmentRecord>>) -> Self {
        Self {
            id: t.id,
            slug: t.slug,
            name: t.name,
            status: t.status,
            created_at: t.created_at,
            updated_at: t.updated_at,
            environments: envs.map(|e| e.into_iter().map(Into::into).collect()),
        }
    }
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub data: Vec<TenantView>,
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `starting_after` to get the next page.
    pub next_cursor: Option<TenantId>,
}
