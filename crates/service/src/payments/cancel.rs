//! Cancelling a payment that waits for its customer (`requires_action`, 3-D Secure) and will
//! not be finished any more: the PSP voids it, so the customer can no longer complete it and
//! nothing is charged.

use azotte_domain::payment::{self as rules, PaymentEvent, PaymentStatus, Source};
use azotte_payments::{ConnectorError, VoidRequest};
use azotte_store::payments::{self as store, PaymentRow};
use azotte_store::TenantScope;
use serde_json::json;

use super::reconcile::account_of;
use super::{connector_for, reference, stored_status};
use crate::{Ctx, Result, ServiceError};

/// How long one idempotency key of a payment's void is used. A PSP keeps the answer of a
/// request that failed once it began executing (Stripe keeps a `500` for the key for 24 hours),
/// so a void retried later goes under a new key: the number in `…-void-{n}` is one more per
/// this long since the payment was created (which, unlike its last change, never moves back). Voiding twice is harmless: the PSP refuses to
/// void a payment voided already, and the payment is then looked up.
const VOID_KEY_EVERY: chrono::Duration = chrono::Duration::minutes(10);

/// Cancels at the PSP the payment `payment_id` while it waits for its customer, for `reason`
/// (journaled). Returns the payment as it stands afterwards: `canceled`; or, when the PSP
/// refuses because the payment moved on meanwhile (the customer finished just now and its
/// webhook has not arrived), as the PSP reports it, looked up by our reference and applied as
/// reconciliation evidence. A payment not (or no longer) waiting is returned as it is. A PSP
/// that cannot be reached, or answers neither way, is an error and changes nothing: the caller
/// tries again later (the void's idempotency key makes that safe).
pub(crate) async fn cancel_waiting(
    ctx: &Ctx,
    scope: &TenantScope,
    payment_id: &str,
    reason: &str,
) -> Result<PaymentRow> {
    let row = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let p = store::get(&mut tx, payment_id).await?;
        tx.commit().await?;
        p.ok_or(ServiceError::NotFound { resource: "payment" })?
    };
    if row.status != PaymentStatus::RequiresAction.as_str() {
        return Ok(row);
    }
    let unreachable =
        |why: String| ServiceError::PspUnavailable { message: format!("payment {payment_id}: {why}") };
    let account_id = row.psp_account_id.clone().unwrap_or_default();
    let account = account_of(ctx, scope, &row.storefront_id, &account_id)
        .await?
        .ok_or_else(|| unreachable("its PSP account is gone".into()))?;
    let psp_id = row.psp_payment_id.clone().ok_or_else(|| unreachable("no PSP payment id".into()))?;
    let pid = reference(&row)?;
    let (connector, creds) = connector_for(ctx, scope, &account).await?;
    let req = VoidRequest {
        account: creds.clone(),
        reference: pid,
        psp_id,
        idempotency_key: rules::void_idempotency_key(&pid, void_round(&row, ctx.clock.now())),
    };
    let (psp, source) = match connector.void(&req).await {
        Ok(p) => (p, Source::Attempt),
        // Refused: the payment is no longer waiting at the PSP. What it is now is evidence:
        // this payment's PSP object (a second one under our reference is reconciliation's to
        // flag).
        Err(ConnectorError::InvalidRequest { .. }) => match connector.lookup_payment(&creds, &pid).await {
            Ok(found) => match found.into_iter().find(|p| p.psp_id == req.psp_id) {
                Some(p) => (p, Source::Reconciliation),
                None => {
                    return Err(unreachable("the PSP refused the void and does not know the payment".into()))
                }
            },
            Err(e) => return Err(unreachable(format!("lookup after a refused void: {e}"))),
        },
        Err(e) => return Err(unreachable(format!("void: {e}"))),
    };
    let from = stored_status(&row)?;
    // Still waiting, or between the customer's action and its result (`pending`): nothing to
    // record yet; the caller looks again later.
    let Ok(to) = rules::transition(from, PaymentEvent { observed: psp.status, source }) else {
        return Ok(row);
    };
    if to == from {
        return Ok(row);
    }
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let r = Some(("payment", payment_id));
    tx.action(now, "payment.cancel", r, json!({"reason": reason})).await?;
    let mut current = row.clone();
    super::apply_observed(&mut current, to, &psp, now);
    // A webhook moved it meanwhile: that stands.
    if !store::update_attempt_from(&mut tx, &current, from.as_str()).await? {
        drop(tx);
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let p = store::get(&mut tx, payment_id).await?;
        tx.commit().await?;
        return p.ok_or(ServiceError::NotFound { resource: "payment" });
    }
    let source = if source == Source::Attempt { "void" } else { "reconciliation" };
    tx.outcome(now, &format!("payment.{to}"), r, json!({"source": source, "was": from, "reason": reason}))
        .await?;
    tx.commit().await?;
    Ok(current)
}

/// The number of a void's idempotency key now ([`VOID_KEY_EVERY`]): 1 in the first ten minutes
/// after the payment was created, 2 in the next ten, …
fn void_round(row: &PaymentRow, now: chrono::DateTime<chrono::Utc>) -> u32 {
    let rounds = (now - row.created_at).num_seconds().max(0) / VOID_KEY_EVERY.num_seconds();
    u32::try_from(rounds).unwrap_or(u32::MAX - 1) + 1
}
