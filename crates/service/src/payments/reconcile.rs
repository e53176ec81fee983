//! Reconciliation: payments whose outcome we do not know — `unknown` ones, and `pending` ones
//! whose attempt was started but never recorded (the process died) — are resolved by asking
//! the PSP for the payment by our reference, never by charging again. Pending refunds whose
//! answer was lost are resolved the same way, and sent again (same idempotency key) when the
//! PSP never received them: a refund once decided is made.

use azotte_domain::payment::{self as rules, PaymentEvent, PaymentStatus, RefundId, Source};
use azotte_payments::ConnectorError;
use azotte_store::payments::{self as store, PaymentRow};
use azotte_store::psp_accounts::{self as psp_store, PspAccount};
use azotte_store::TenantScope;
use serde_json::json;

use super::{connector_for, every_scope, reference, refunds, stored_status};
use crate::{Ctx, Result, ServiceError};

/// How long after its creation a refund the PSP never received is sent again (under its same
/// idempotency key): inside the PSP's idempotency window (Stripe keeps keys 24 hours), so a
/// refund a lookup missed is replayed rather than made twice.
const RESEND_WITHIN: chrono::Duration = chrono::Duration::hours(23);

/// Backoff of reconciliation lookups that fail (the PSP down or erroring): 1, 2, 4 … minutes,
/// at most an hour, per payment or refund, in this process. An empty answer inside the grace
/// period is not a failure (the grace already spaces those out).
fn backing_off(ctx: &Ctx, id: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
    let map = ctx.psp.lookup_backoff.lock().unwrap_or_else(|p| p.into_inner());
    map.get(id).is_some_and(|(_, next)| *next > now)
}

fn lookup_failed(ctx: &Ctx, id: &str, now: chrono::DateTime<chrono::Utc>) {
    let mut map = ctx.psp.lookup_backoff.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() > 100_000 {
        map.retain(|_, (_, next)| *next > now);
    }
    let e = map.entry(id.to_owned()).or_insert((0, now));
    e.0 += 1;
    e.1 =
        now + chrono::Duration::minutes(1i64 << e.0.saturating_sub(1).min(6)).min(chrono::Duration::hours(1));
}

fn lookup_done(ctx: &Ctx, id: &str) {
    ctx.psp.lookup_backoff.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
}

pub(super) async fn account_of(
    ctx: &Ctx,
    scope: &TenantScope,
    storefront: &str,
    id: &str,
) -> Result<Option<PspAccount>> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let a = psp_store::get(&mut tx, storefront, id).await?;
    tx.commit().await?;
    Ok(a)
}

/// Resolves the tenant environment's payments of unknown outcome. Found at the PSP: its state
/// is applied (a second charge for one payment is flagged as a decision). Not found once the
/// grace period ([`super::Connectors::reconcile_grace`]) since the attempt has passed: nothing
/// was charged, the payment fails. Returns how many payments and refunds were resolved.
pub async fn reconcile(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let grace = ctx.psp.reconcile_grace;
    let (payments, refunds) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let p = store::to_reconcile(&mut tx, ctx.clock.now() - grace, 200).await?;
        let r = store::pending_refunds(&mut tx, false, Some(ctx.clock.now() - grace), 200).await?;
        tx.commit().await?;
        (p, r)
    };
    let mut resolved = 0;
    for row in payments {
        if reconcile_payment(ctx, scope, row).await? {
            resolved += 1;
        }
    }
    for refund in refunds {
        // (Past their grace already: `pending_refunds` read only those.)
        if backing_off(ctx, &refund.id, ctx.clock.now()) {
            touch(ctx, scope, &refund.id).await?;
            continue;
        }
        let p = {
            let mut tx = ctx.db.tenant_read_tx(scope).await?;
            let p = store::get(&mut tx, &refund.payment_id).await?;
            tx.commit().await?;
            p.ok_or_else(|| ServiceError::Internal(format!("refund {} has no payment", refund.id).into()))?
        };
        let Some(account) =
            account_of(ctx, scope, &p.storefront_id, p.psp_account_id.as_deref().unwrap_or("")).await?
        else {
            continue;
        };
        let (connector, creds) = connector_for(ctx, scope, &account).await?;
        let rid: RefundId = refund
            .id
            .parse()
            .map_err(|_| ServiceError::Internal(format!("refund id {}", refund.id).into()))?;
        let answer = match connector.lookup_refund(&creds, &rid).await {
            Ok(found) => match found.into_iter().next() {
                Some(f) => Ok(f),
                // Never reached the PSP: nothing was refunded yet. The refund was decided (its
                // amount is reserved; a failed checkout or a charge that paid for nothing may
                // depend on it), so it is sent again under its same idempotency key — a first
                // request the PSP did get after all is replayed, never executed twice. That
                // holds while the PSP remembers the key (Stripe: 24 hours); after that a
                // re-send is still safe when the payment's refunds take all it captured (the
                // platform's own refunds of a charge that paid for nothing do): the PSP refuses
                // to give back more than it charged, so a refund a lookup missed cannot be
                // made twice over. A partial refund past the window fails as before. In safe
                // mode nothing is sent.
                None if ctx.clock.now() - refund.created_at < RESEND_WITHIN
                    || p.refunded_amount >= p.captured_amount =>
                {
                    lookup_done(ctx, &refund.id);
                    if super::safe_mode(ctx, scope).await?.is_none() {
                        let sent = refunds::send(ctx, scope, &p, refund).await?;
                        if sent.status != "pending" {
                            resolved += 1;
                        }
                    } else {
                        touch(ctx, scope, &refund.id).await?;
                    }
                    continue;
                }
                None => Err(ConnectorError::InvalidRequest {
                    code: "not_found".into(),
                    message: "no such refund at the PSP".into(),
                }),
            },
            Err(e) => {
                tracing::warn!(refund_id = %refund.id, error = %e, "refund reconciliation lookup failed; will retry");
                lookup_failed(ctx, &refund.id, ctx.clock.now());
                touch(ctx, scope, &refund.id).await?;
                continue;
            }
        };
        lookup_done(ctx, &refund.id);
        let mut refund = refund;
        refunds::record(ctx, scope, &p, &mut refund, answer, "refund.reconcile").await?;
        if refund.status != "pending" {
            resolved += 1;
        }
    }
    Ok(resolved)
}

/// Moves a pending refund this pass could not settle to the back of the next passes' list
/// (scheduling, not the refund's data: not journaled).
async fn touch(ctx: &Ctx, scope: &TenantScope, refund_id: &str) -> Result<()> {
    let mut tx = ctx.db.tenant_tx(scope).await?;
    store::touch_refund(&mut tx, refund_id, ctx.clock.now()).await?;
    tx.commit().await?;
    Ok(())
}

async fn reconcile_payment(ctx: &Ctx, scope: &TenantScope, mut row: PaymentRow) -> Result<bool> {
    let Some(account_id) = row.psp_account_id.clone() else { return Ok(false) };
    let Some(account) = account_of(ctx, scope, &row.storefront_id, &account_id).await? else {
        return Ok(false);
    };
    let id = reference(&row)?;
    if backing_off(ctx, &row.id, ctx.clock.now()) {
        return Ok(false);
    }
    let (connector, creds) = connector_for(ctx, scope, &account).await?;
    let found = match connector.lookup_payment(&creds, &id).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(payment_id = %row.id, error = %e, "reconciliation lookup failed; backing off");
            lookup_failed(ctx, &row.id, ctx.clock.now());
            return Ok(false);
        }
    };
    lookup_done(ctx, &row.id);
    let now = ctx.clock.now();
    if found.is_empty() && now - row.updated_at < ctx.psp.reconcile_grace {
        return Ok(false);
    }
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let r = Some(("payment", row.id.as_str()));
    tx.action(now, "payment.reconcile", r, json!({"found": found.len(), "stored": row.status})).await?;
    // Re-read under the transaction: an attempt or a webhook may have resolved it meanwhile.
    let Some(current) = store::get(&mut tx, &row.id).await? else { return Ok(false) };
    if current.updated_at != row.updated_at || current.status != row.status {
        return Ok(false);
    }
    if found.len() > 1 {
        tx.decision(
            now,
            "payment.duplicate_charge_detected",
            r,
            json!({"psp_payment_ids": found.iter().map(|p| p.psp_id.clone()).collect::<Vec<_>>()}),
        )
        .await?;
    }
    let observed = match found.first() {
        Some(p) => {
            row.psp_payment_id = Some(p.psp_id.clone());
            row.captured_amount = p.amount_captured;
            row.decline_code = p.decline_code.map(|d| d.as_str().to_owned());
            p.status
        }
        None => {
            row.decline_code = Some("not_charged".into());
            PaymentStatus::Failed
        }
    };
    let from = stored_status(&row)?;
    let to = rules::transition(from, PaymentEvent { observed, source: Source::Reconciliation })
        .map_err(|e| ServiceError::Internal(e.to_string().into()))?;
    row.status = to.as_str().to_owned();
    row.updated_at = now;
    store::update_attempt(&mut tx, &row).await?;
    tx.outcome(
        now,
        "payment.reconciled",
        r,
        json!({"status": row.status, "psp_payment_id": row.psp_payment_id, "was": from}),
    )
    .await?;
    tx.commit().await?;
    crate::subscriptions::payment_moved(ctx, scope, &row);
    Ok(true)
}

/// Reconciliation over every tenant environment (the worker runs it).
pub async fn reconcile_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut total = 0;
    for scope in every_scope(ctx, "payment_reconciliation").await? {
        total += reconcile(ctx, &scope).await?;
    }
    Ok(total)
}
