//! Reading the journal: filtered listings and lineage trees.

use azotte_domain::permission::Permission;
use azotte_store::journal::{self, Entry, Filter, RequestMeta};
use azotte_store::TenantScope;
use serde_json::json;

use crate::{Ctx, Result};

/// A platform principal reading a tenant's journal is itself journaled, in that tenant.
async fn note_platform_read(ctx: &Ctx, scope: &TenantScope, what: &str) -> Result<()> {
    if scope.is_platform_access() {
        journal::record_security(
            &ctx.db,
            Some((scope.tenant_id(), scope.environment().as_str())),
            ctx.clock.now(),
            "audit.platform_access",
            scope.principal(),
            None,
            json!({"read": what}),
        )
        .await?;
    }
    Ok(())
}

/// Entries of the scope's environment matching `filter`, oldest first.
pub async fn list(
    ctx: &Ctx,
    scope: &TenantScope,
    filter: &Filter,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<Entry>, bool)> {
    crate::security::require(ctx, scope, Permission::AuditRead).await?;
    note_platform_read(ctx, scope, "journal").await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let page = journal::list(&mut tx, filter, limit, starting_after).await?;
    tx.commit().await?;
    Ok(page)
}

/// Every entry of one correlation id in the tenant, oldest first.
pub async fn lineage(ctx: &Ctx, scope: &TenantScope, correlation_id: &str) -> Result<Vec<Entry>> {
    crate::security::require(ctx, scope, Permission::AuditRead).await?;
    note_platform_read(ctx, scope, "lineage").await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let entries = journal::by_correlation(&mut tx, correlation_id).await?;
    tx.commit().await?;
    Ok(entries)
}

/// The timeline of one resource: every journal entry about it, oldest first. Callers check
/// the resource exists in the scope first, so another tenant's id answers 404.
pub async fn timeline(
    ctx: &Ctx,
    scope: &TenantScope,
    resource_type: &str,
    resource_id: &str,
) -> Result<Vec<Entry>> {
    crate::security::require(ctx, scope, Permission::AuditRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let entries = journal::timeline(&mut tx, resource_type, resource_id).await?;
    tx.commit().await?;
    Ok(entries)
}

/// The latest entry about a resource that `is_cause` accepts: what a job continues (its
/// correlation id) and is caused by (its id), when the job did not carry them itself (a retry
/// by the worker). No permission check: for jobs running as the system.
pub(crate) async fn cause(
    ctx: &Ctx,
    scope: &TenantScope,
    resource: (&str, &str),
    is_cause: impl Fn(&Entry) -> bool,
) -> Result<Option<Entry>> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let entries = journal::timeline(&mut tx, resource.0, resource.1).await?;
    tx.commit().await?;
    Ok(entries.into_iter().rev().find(is_cause))
}

/// The request context of a job caused by `cause`, or a fresh system context without one.
pub(crate) fn job_meta(cause: Option<Entry>) -> RequestMeta {
    match cause {
        Some(e) => RequestMeta::caused_by(&e.correlation_id, &e.id),
        None => RequestMeta::system(),
    }
}
