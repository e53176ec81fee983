//! Safe mode: a tenant-level switch that pauses all money movement for the tenant (every
//! environment). Payments and refunds requested meanwhile are queued — recorded, not failed,
//! not sent — and resume when it is lifted: at once for the environment that lifted it, and by
//! the worker's next housekeeping tick everywhere. A resumed payment is sent off session (the
//! customer is no longer waiting for it).

use azotte_domain::permission::Permission;
use azotte_store::customers as customer_store;
use azotte_store::payment_ops::{self, SafeMode};
use azotte_store::payments as store;
use azotte_store::psp_accounts as psp_store;
use azotte_store::TenantScope;
use serde_json::json;

use super::{attempt, currency_of, every_scope, fail_before_sending, refunds, routing};
use crate::{Ctx, Result, ServiceError};

/// Switching safe mode.
#[derive(Debug, Clone)]
pub struct SafeModeChange {
    pub enabled: bool,
    /// Why (required to switch it on; shown to everyone who reads it).
    pub reason: String,
}

/// The tenant's safe mode, if on (permission `payment.read`).
pub async fn safe_mode(ctx: &Ctx, scope: &TenantScope) -> Result<Option<SafeMode>> {
    crate::security::require(ctx, scope, Permission::PaymentRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let mode = payment_ops::safe_mode(&mut tx).await?;
    tx.commit().await?;
    Ok(mode)
}

/// Switches safe mode on or off for the whole tenant (permission `payment.safe_mode`).
/// Idempotent: switching it on again keeps the first reason. Lifting it resumes this
/// environment's queue in the background.
pub async fn set_safe_mode(
    ctx: &Ctx,
    scope: &TenantScope,
    change: SafeModeChange,
) -> Result<Option<SafeMode>> {
    crate::security::require(ctx, scope, Permission::PaymentSafeMode).await?;
    let reason = change.reason.trim().chars().take(500).collect::<String>();
    if change.enabled && reason.is_empty() {
        return Err(azotte_domain::ValidationErrors::from(azotte_domain::FieldError::new(
            "reason",
            "required",
            "say why money movement is paused",
        ))
        .into());
    }
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let tenant = scope.tenant_id().to_string();
    let r = Some(("tenant", tenant.as_str()));
    tx.action(now, "tenant.safe_mode", r, json!({"enabled": change.enabled, "reason": reason})).await?;
    let changed = if change.enabled {
        let mode =
            SafeMode { reason: reason.clone(), enabled_by: scope.principal().id.clone(), enabled_at: now };
        payment_ops::enable_safe_mode(&mut tx, &mode).await?
    } else {
        payment_ops::disable_safe_mode(&mut tx).await?
    };
    if changed {
        let kind = if change.enabled { "tenant.safe_mode_enabled" } else { "tenant.safe_mode_disabled" };
        tx.outcome(now, kind, r, json!({"reason": reason})).await?;
    }
    let mode = payment_ops::safe_mode(&mut tx).await?;
    tx.commit().await?;
    if changed && !change.enabled {
        tracing::info!(tenant = %scope.tenant_id(), "safe mode lifted; resuming queued payments");
        let (ctx, scope) = (ctx.clone(), scope.clone());
        tokio::spawn(async move {
            if let Err(e) = resume(&ctx, &scope).await {
                tracing::warn!(error = %e, "resuming queued payments failed; the worker will retry");
            }
        });
    }
    Ok(mode)
}

/// Sends the environment's queued payments and refunds, unless safe mode is still on. Each is
/// claimed by a conditional update first, so concurrent resumers never send one twice.
/// Returns how many were sent.
pub async fn resume(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let (queued, queued_refunds) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        if payment_ops::safe_mode(&mut tx).await?.is_some() {
            tx.commit().await?;
            return Ok(0);
        }
        let p = store::queued(&mut tx, 200).await?;
        let r = store::pending_refunds(&mut tx, true, None, 200).await?;
        tx.commit().await?;
        (p, r)
    };
    let mut sent = 0;
    for mut row in queued {
        let now = ctx.clock.now();
        let mut tx = ctx.db.tenant_tx(scope).await?;
        let r = Some(("payment", row.id.as_str()));
        tx.action(now, "payment.resume", r, json!({"queued_reason": row.queued_reason})).await?;
        if !store::claim_queued(&mut tx, &row.id, now).await? {
            continue; // Another process took it (the transaction rolls back unjournaled).
        }
        row.queued_reason = None;
        row.updated_at = now;
        let pm = customer_store::get_payment_method(&mut tx, &row.customer_id, &row.payment_method_id)
            .await?
            .filter(|p| p.state == "active" && !p.expired);
        let accounts = psp_store::of_storefront(&mut tx, &row.storefront_id).await?;
        let currency = currency_of(&row)?;
        let Some(pm) = pm else {
            fail_before_sending(&mut tx, &mut row, "payment_method_not_usable", now).await?;
            tx.commit().await?;
            continue;
        };
        let forced = row.psp_account_id.clone();
        let plan = routing::route(ctx, &accounts, &pm, &currency, forced.as_deref(), &row.id, now);
        tx.decision(now, "payment.routed", r, plan.journal()).await?;
        let Some(first) = plan.order.first() else {
            fail_before_sending(&mut tx, &mut row, plan.empty_code(), now).await?;
            tx.commit().await?;
            continue;
        };
        let first_conn = match super::connector_in(ctx, &mut tx, first).await? {
            Ok(c) => c,
            Err(unopened) => {
                drop(tx);
                return Err(unopened.record(ctx, scope).await);
            }
        };
        attempt::start(&mut tx, &mut row, first, now).await?;
        tx.commit().await?;
        let job = attempt::Job {
            token: pm.token,
            psp_customer_id: pm.psp_customer_id,
            currency,
            off_session: true,
        };
        let sending = attempt::Sending { row, order: plan.order, job, first: first_conn };
        let p = attempt::run(ctx, scope, sending).await?.commit().await?;
        // What waited for it goes on (a checkout's job; a conversion's charge that now pays
        // for nothing is refunded).
        crate::subscriptions::payment_moved(ctx, scope, &p);
        sent += 1;
    }
    for refund in queued_refunds {
        let now = ctx.clock.now();
        let mut tx = ctx.db.tenant_tx(scope).await?;
        tx.action(
            now,
            "refund.resume",
            Some(("payment", refund.payment_id.as_str())),
            json!({"refund_id": refund.id}),
        )
        .await?;
        if !store::claim_queued_refund(&mut tx, &refund.id, now).await? {
            continue;
        }
        let p = store::get(&mut tx, &refund.payment_id)
            .await?
            .ok_or_else(|| ServiceError::Internal(format!("refund {} has no payment", refund.id).into()))?;
        tx.commit().await?;
        refunds::send(ctx, scope, &p, refund).await?;
        sent += 1;
    }
    Ok(sent)
}

/// [`resume`] over every tenant environment (the worker runs it).
pub async fn resume_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut total = 0;
    for scope in every_scope(ctx, "payment_resume").await? {
        total += resume(ctx, &scope).await?;
    }
    Ok(total)
}
