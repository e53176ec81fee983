//! Tenant administration (platform) and the tenant's view of itself.

use azotte_domain::id::TenantId;
use azotte_domain::pagination::Limit;
use azotte_domain::permission::Permission;
use azotte_domain::tenant::{TenantName, TenantSlug, TenantStatus};
use azotte_domain::ValidationErrors;
use azotte_store::tenants::{self, EnvironmentRecord, Page, Tenant};
use azotte_store::{PlatformScope, StoreError, TenantScope};
use serde_json::json;
use tracing::instrument;

use crate::{Ctx, Result, ServiceError};

/// A new tenant as asked for, unvalidated.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub slug: String,
    pub name: String,
}

/// Changes to a tenant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub status: Option<TenantStatus>,
}

/// Creates a tenant with its development, staging and production environments.
#[instrument(skip_all, fields(slug = %input.slug))]
pub async fn create(
    ctx: &Ctx,
    scope: &PlatformScope,
    input: NewTenant,
) -> Result<(Tenant, Vec<EnvironmentRecord>)> {
    crate::security::require_platform(ctx, scope, Permission::PlatformTenantWrite).await?;
    let mut errors = ValidationErrors::default();
    let slug = errors.check(TenantSlug::parse(&input.slug));
    let name = errors.check(TenantName::parse(&input.name));
    errors.finish()?;
    let (Some(slug), Some(name)) = (slug, name) else { unreachable!("errors were checked") };

    let mut tx = ctx.db.platform_tx(scope).await?;
    let created = tenants::create(&mut tx, &slug, &name, ctx.clock.now()).await.map_err(|e| match e {
        StoreError::UniqueViolation { constraint } if constraint == "tenants_slug_key" => {
            ServiceError::Conflict {
                code: "tenant_slug_taken",
                message: format!("a tenant with slug `{slug}` already exists"),
                field: Some("slug"),
            }
        }
        other => other.into(),
    })?;
    let now = ctx.clock.now();
    let id = created.0.id.to_string();
    let resource = Some(("tenant", id.as_str()));
    tx.action(now, "tenant.create", resource, json!({"slug": slug.as_str()})).await?;
    let envs: Vec<_> = created.1.iter().map(|e| json!({"name": e.environment, "mode": e.mode})).collect();
    tx.outcome(
        now,
        "tenant.created",
        resource,
        json!({"slug": slug.as_str(), "status": "active", "environments": envs}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant_id = %created.0.id, "tenant created");
    Ok(created)
}

/// Tenants in creation order.
pub async fn list(
    ctx: &Ctx,
    scope: &PlatformScope,
    limit: Limit,
    starting_after: Option<TenantId>,
) -> Result<Page<Tenant>> {
    crate::security::require_platform(ctx, scope, Permission::PlatformTenantRead).await?;
    let mut tx = ctx.db.platform_tx(scope).await?;
    let page = tenants::list(&mut tx, limit.get(), starting_after).await?;
    tx.commit().await?;
    Ok(page)
}

/// One tenant with its environments.
pub async fn get(ctx: &Ctx, scope: &PlatformScope, id: TenantId) -> Result<(Tenant, Vec<EnvironmentRecord>)> {
    crate::security::require_platform(ctx, scope, Permission::PlatformTenantRead).await?;
    let mut tx = ctx.db.platform_tx(scope).await?;
    let tenant = tenants::get(&mut tx, id).await?.ok_or(ServiceError::NotFound { resource: "tenant" })?;
    let envs = tenants::environments(&mut tx, id).await?;
    tx.commit().await?;
    Ok((tenant, envs))
}

/// Renames, suspends or reactivates a tenant.
#[instrument(skip_all, fields(tenant_id = %id))]
pub async fn update(
    ctx: &Ctx,
    scope: &PlatformScope,
    id: TenantId,
    changes: TenantChanges,
) -> Result<(Tenant, Vec<EnvironmentRecord>)> {
    crate::security::require_platform(ctx, scope, Permission::PlatformTenantWrite).await?;
    let name = changes.name.as_deref().map(TenantName::parse).transpose().map_err(ValidationErrors::from)?;
    let mut tx = ctx.db.platform_tx(scope).await?;
    let tenant = tenants::update(&mut tx, id, name.as_ref(), changes.status, ctx.clock.now())
        .await?
        .ok_or(ServiceError::NotFound { resource: "tenant" })?;
    let envs = tenants::environments(&mut tx, id).await?;
    let now = ctx.clock.now();
    let rid = id.to_string();
    let mut changed = vec![];
    if name.is_some() {
        changed.push("name");
    }
    if changes.status.is_some() {
        changed.push("status");
    }
    tx.action(now, "tenant.update", Some(("tenant", &rid)), json!({"fields": changed})).await?;
    tx.outcome(
        now,
        "tenant.updated",
        Some(("tenant", &rid)),
        json!({"changed": changed, "status": tenant.status}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(status = %tenant.status, "tenant updated");
    Ok((tenant, envs))
}

/// The caller's own tenant and environment.
pub async fn current(ctx: &Ctx, scope: &TenantScope) -> Result<(Tenant, EnvironmentRecord)> {
    crate::security::require(ctx, scope, Permission::TenantRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let current = tenants::current(&mut tx).await?;
    tx.commit().await?;
    Ok(current)
}
