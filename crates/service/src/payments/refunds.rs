//! Refunds: the amount is reserved against the captured amount in the database first (a
//! refund can never take the refunded total above it); a failed refund gives it back. In safe
//! mode the refund is queued, reserved but not sent.

use azotte_domain::payment::{self as rules, RefundId};
use azotte_domain::permission::Permission;
use azotte_domain::{FieldError, ValidationErrors};
use azotte_payments::{ConnectorResult, PspRefund, RefundRequest};
use azotte_store::payments::{self as store, PaymentRow, RefundRow};
use azotte_store::psp_accounts as psp_store;
use azotte_store::{TenantScope, TenantTx};
use serde_json::json;

use super::{connector_for, currency_of};
use crate::{Ctx, Result, ServiceError};

/// Refunds part or all of a captured payment (permission `payment.refund`).
pub async fn refund(
    ctx: &Ctx,
    scope: &TenantScope,
    payment_id: &str,
    amount: Option<i64>,
    reason: &str,
) -> Result<RefundRow> {
    refund_some(ctx, scope, payment_id, amount, reason, false).await?.ok_or_else(|| nothing_left().into())
}

/// Gives back all that is left of a captured payment whose charge paid for nothing (a checkout
/// that failed after it, a renewal or trial conversion whose subscription changed meanwhile):
/// the refund, or `None` when nothing is left to refund — refunded before, or by a concurrent
/// caller (whose reservation came first) — or when the charge pays an invoice after all (a
/// conversion or renewal that used it committed after the caller looked; checked under the
/// payment's lock, see [`store::get_locked`]). Permission `payment.refund`.
pub(crate) async fn refund_rest(
    ctx: &Ctx,
    scope: &TenantScope,
    payment_id: &str,
    reason: &str,
) -> Result<Option<RefundRow>> {
    match refund_some(ctx, scope, payment_id, None, reason, true).await {
        Err(ServiceError::Conflict { code: "refund_exceeds_captured", .. }) => Ok(None),
        other => other,
    }
}

fn nothing_left() -> ValidationErrors {
    ValidationErrors::from(FieldError::new(
        "amount",
        "out_of_range",
        "a positive amount, at most what is left to refund",
    ))
}

/// [`refund`]; `None` when no amount is given and nothing is left to refund, or with
/// `pays_nothing` when the payment pays an invoice.
async fn refund_some(
    ctx: &Ctx,
    scope: &TenantScope,
    payment_id: &str,
    amount: Option<i64>,
    reason: &str,
    pays_nothing: bool,
) -> Result<Option<RefundRow>> {
    crate::security::require(ctx, scope, Permission::PaymentRefund).await?;
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let p = store::get(&mut tx, payment_id)
        .await?
        .filter(|p| scope.storefront_allowed(&p.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "payment" })?;
    if p.status != "captured" {
        return Err(ServiceError::Conflict {
            code: "payment_not_captured",
            message: format!("only a captured payment can be refunded; this one is {}", p.status),
            field: None,
        });
    }
    let amount = match amount {
        Some(a) if a <= 0 => return Err(nothing_left().into()),
        Some(a) => a,
        None if p.captured_amount <= p.refunded_amount => return Ok(None),
        None => p.captured_amount - p.refunded_amount,
    };
    let rid = RefundId::new();
    let r = Some(("payment", payment_id));
    tx.action(now, "refund.create", r, json!({"refund_id": rid.to_string(), "amount": amount})).await?;
    if !store::reserve_refund(&mut tx, payment_id, amount, now).await? {
        return Err(ServiceError::Conflict {
            code: "refund_exceeds_captured",
            message: format!(
                "{} of {} is left to refund",
                p.captured_amount - p.refunded_amount,
                p.captured_amount
            ),
            field: Some("amount"),
        });
    }
    // The reservation holds the payment's row: an invoice that records it as paid by now has
    // committed, and none can from here until this transaction ends.
    if pays_nothing
        && !azotte_store::invoices::invoice_payments(&mut tx, None, Some(payment_id)).await?.is_empty()
    {
        return Ok(None);
    }
    let refund = record_reserved(&mut tx, rid, payment_id, amount, reason, now).await?;
    tx.commit().await?;
    if refund.queued_reason.is_some() {
        return Ok(Some(refund));
    }
    send(ctx, scope, &p, refund).await.map(Some)
}

/// In the caller's transaction, once `amount` of payment `payment_id` is reserved: the refund,
/// `pending` (outcome `refund.pending`) or queued while money movement is paused (decision
/// `refund.queued`).
async fn record_reserved(
    tx: &mut TenantTx,
    id: RefundId,
    payment_id: &str,
    amount: i64,
    reason: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RefundRow> {
    let safe_mode = azotte_store::payment_ops::safe_mode(tx).await?;
    let refund = new_refund(id, payment_id, amount, reason, safe_mode.is_some(), now);
    store::insert_refund(tx, &refund).await?;
    let r = Some(("payment", payment_id));
    if safe_mode.is_some() {
        tx.decision(now, "refund.queued", r, json!({"refund_id": refund.id, "reason": "safe_mode"})).await?;
    } else {
        tx.outcome(now, "refund.pending", r, json!({"refund_id": refund.id, "amount": amount})).await?;
    }
    Ok(refund)
}

/// In the caller's transaction (its action recorded): reserves and records a refund of all that
/// is left of captured payment `payment_id`, `pending` — or queued in safe mode — with the
/// payment; `None` when nothing is left. The caller sends it once its transaction has committed
/// ([`send_reserved`]); one that is not sent then (the process stopped) is sent by
/// reconciliation. No permission check: the platform decided it, not the caller.
pub(crate) async fn reserve_rest_in(
    tx: &mut TenantTx,
    payment_id: &str,
    reason: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<(PaymentRow, RefundRow)>> {
    let Some(p) = store::get(tx, payment_id).await? else { return Ok(None) };
    if p.status != "captured" || p.captured_amount <= p.refunded_amount {
        return Ok(None);
    }
    let amount = p.captured_amount - p.refunded_amount;
    if !store::reserve_refund(tx, payment_id, amount, now).await? {
        return Ok(None);
    }
    let refund = record_reserved(tx, RefundId::new(), payment_id, amount, reason, now).await?;
    Ok(Some((p, refund)))
}

/// Sends a refund [`reserve_rest_in`] recorded, unless it is queued in safe mode.
pub(crate) async fn send_reserved(
    ctx: &Ctx,
    scope: &TenantScope,
    p: &PaymentRow,
    refund: RefundRow,
) -> Result<()> {
    if refund.queued_reason.is_none() {
        send(ctx, scope, p, refund).await?;
    }
    Ok(())
}

/// A new `pending` refund of `amount`, queued (`safe_mode`) when money movement is paused.
fn new_refund(
    id: RefundId,
    payment_id: &str,
    amount: i64,
    reason: &str,
    queued: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> RefundRow {
    RefundRow {
        id: id.to_string(),
        payment_id: payment_id.to_owned(),
        amount,
        status: "pending".into(),
        psp_refund_id: None,
        reason: reason.chars().take(500).collect(),
        created_at: now,
        updated_at: now,
        queued_reason: queued.then(|| "safe_mode".to_owned()),
    }
}

/// Sends a pending refund to the PSP and records the answer.
pub(super) async fn send(
    ctx: &Ctx,
    scope: &TenantScope,
    p: &PaymentRow,
    mut refund: RefundRow,
) -> Result<RefundRow> {
    let account = {
        let account_id = p.psp_account_id.clone().unwrap_or_default();
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let a = psp_store::get(&mut tx, &p.storefront_id, &account_id).await?;
        tx.commit().await?;
        a.ok_or_else(|| ServiceError::Internal(format!("payment {} has no account", p.id).into()))?
    };
    let (connector, creds) = connector_for(ctx, scope, &account).await?;
    let rid: RefundId =
        refund.id.parse().map_err(|_| ServiceError::Internal(format!("refund id {}", refund.id).into()))?;
    let req = RefundRequest {
        account: creds,
        reference: rid,
        payment_psp_id: p.psp_payment_id.clone().unwrap_or_default(),
        amount: refund.amount,
        currency: currency_of(p)?,
        idempotency_key: rules::refund_idempotency_key(&rid, 1),
    };
    let answer = connector.refund(&req).await;
    record(ctx, scope, p, &mut refund, answer, "refund.attempt").await?;
    Ok(refund)
}

/// Records a PSP answer about a refund: its status, and the reservation given back if it
/// failed. A lost or retryable answer leaves it pending for reconciliation.
pub(super) async fn record(
    ctx: &Ctx,
    scope: &TenantScope,
    p: &PaymentRow,
    refund: &mut RefundRow,
    answer: ConnectorResult<PspRefund>,
    action: &str,
) -> Result<()> {
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let r = Some(("payment", p.id.as_str()));
    tx.action(now, action, r, json!({"refund_id": refund.id})).await?;
    let before = refund.status.clone();
    match answer {
        Ok(psp) => {
            refund.status = psp.status.as_str().into();
            refund.psp_refund_id = Some(psp.psp_id);
        }
        // Left pending: reconciliation finds out what the PSP did, and sends it again if the
        // PSP never got it; the amount stays reserved. Credentials the PSP refused (a revoked
        // key) executed nothing either: the refund waits for them to be fixed.
        Err(e) if e.may_have_charged() || e.allows_failover() => {}
        Err(_) => refund.status = "failed".into(),
    }
    refund.updated_at = now;
    if refund.status == "failed" && before != "failed" {
        store::release_refund(&mut tx, &p.id, refund.amount, now).await?;
    }
    store::update_refund(&mut tx, refund).await?;
    if refund.status == "succeeded" && before != "succeeded" {
        // Money given back for an invoice is documented by a credit note.
        crate::invoices::credit_note_for_refund(&mut tx, &p.id, &refund.id, refund.amount, now).await?;
    }
    tx.outcome(
        now,
        &format!("refund.{}", refund.status),
        r,
        json!({"refund_id": refund.id, "amount": refund.amount}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
