//! PSP webhooks: verified with the account's webhook secret, recorded by event id (a
//! redelivery is acknowledged and changes nothing), then applied through the same state
//! machine as everything else — an event older than what we know (out of order) is a legal
//! no-op or refused by the transition table and journaled as stale, never applied backwards.

use azotte_domain::id::TenantId;
use azotte_domain::payment::{self as rules, PaymentEvent, RefundStatus, Source};
use azotte_domain::tenant::Environment;
use azotte_payments::{ConnectorError, PspPayment, PspRefund, WebhookEvent, WebhookObject, WebhookRequest};
use azotte_store::payment_ops;
use azotte_store::payments::{self as store, PaymentRow};
use azotte_store::psp_accounts::{self as psp_store, PspAccount};
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{connector_for, stored_status};
use crate::{Ctx, Result, ServiceError};

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookReceipt {
    /// Verified and applied (or found stale and ignored).
    Processed,
    /// Verified, and received before: nothing changed.
    Duplicate,
    /// Verified, but an event type Azotte does not follow.
    Ignored,
}

fn not_found() -> ServiceError {
    ServiceError::NotFound { resource: "psp_account" }
}

/// Receives one delivery for a tenant environment's PSP account. The URL names tenant,
/// environment and account; nothing else is trusted until the signature verifies.
pub async fn receive_webhook(
    ctx: &Ctx,
    tenant: &str,
    environment: &str,
    account_id: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<WebhookReceipt> {
    let (Ok(tenant_id), Ok(environment)) = (tenant.parse::<TenantId>(), environment.parse::<Environment>())
    else {
        return Err(not_found());
    };
    let scope = azotte_store::auth::system_scope(&ctx.db, tenant_id, environment, "psp_webhook")
        .await
        .map_err(|_| not_found())?;
    let account = {
        let mut tx = ctx.db.tenant_read_tx(&scope).await?;
        let a = psp_store::by_id(&mut tx, account_id).await?;
        tx.commit().await?;
        a.ok_or_else(not_found)?
    };
    let (connector, creds) = connector_for(ctx, &scope, &account).await?;
    let now = ctx.clock.now();
    let event = match connector.parse_webhook(&creds, WebhookRequest { headers, body, received_at: now }) {
        Ok(e) => e,
        Err(ConnectorError::InvalidWebhook { reason }) if reason.starts_with("ignored") => {
            return Ok(WebhookReceipt::Ignored)
        }
        Err(e) => {
            let code = if matches!(e, ConnectorError::Configuration { .. }) {
                "webhook_secret_missing"
            } else {
                "webhook_signature_invalid"
            };
            crate::security::record(
                ctx,
                Some((scope.tenant_id(), scope.environment().as_str())),
                "psp_webhook.rejected",
                scope.principal(),
                &account.id,
                json!({"psp_account_id": account.id, "code": code, "reason": e.to_string()}),
            )
            .await?;
            return Err(ServiceError::BadRequest { code, message: "the webhook does not verify" });
        }
    };
    apply(ctx, &scope, &account, &event, now).await
}

fn event_type(e: &WebhookEvent) -> String {
    match &e.object {
        WebhookObject::Payment(p) => format!("payment.{}", p.status),
        WebhookObject::Refund(r) => format!("refund.{}", r.status),
    }
}

async fn apply(
    ctx: &Ctx,
    scope: &TenantScope,
    account: &PspAccount,
    event: &WebhookEvent,
    now: DateTime<Utc>,
) -> Result<WebhookReceipt> {
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let kind = event_type(event);
    let r = Some(("psp_account", account.id.as_str()));
    tx.action(now, "psp_webhook.receive", r, json!({"event_id": event.id, "event_type": kind})).await?;
    if !payment_ops::record_webhook_event(&mut tx, &account.id, &event.id, &kind, event.created, now).await? {
        tx.outcome(now, "psp_webhook.duplicate", r, json!({"event_id": event.id})).await?;
        tx.commit().await?;
        return Ok(WebhookReceipt::Duplicate);
    }
    let moved = match &event.object {
        WebhookObject::Payment(p) => apply_payment(&mut tx, account, &event.id, p, now).await?,
        WebhookObject::Refund(rf) => {
            apply_refund(&mut tx, account, &event.id, rf, now).await?;
            None
        }
    };
    tx.commit().await?;
    if let Some(moved) = moved {
        crate::subscriptions::payment_moved(ctx, scope, &moved);
    }
    Ok(WebhookReceipt::Processed)
}

async fn stale(
    tx: &mut TenantTx,
    resource: (&str, &str),
    event_id: &str,
    why: String,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.decision(now, "psp_webhook.stale", Some(resource), json!({"event_id": event_id, "reason": why}))
        .await?;
    Ok(())
}

/// Applies a payment event: the payment when the event moved it.
async fn apply_payment(
    tx: &mut TenantTx,
    account: &PspAccount,
    event_id: &str,
    p: &PspPayment,
    now: DateTime<Utc>,
) -> Result<Option<PaymentRow>> {
    let id = p.reference.to_string();
    // Only a payment routed through this very account can be moved by its events.
    let Some(mut row) =
        store::get(tx, &id).await?.filter(|row| row.psp_account_id.as_deref() == Some(&account.id))
    else {
        stale(tx, ("psp_account", &account.id), event_id, format!("no payment {id} on this account"), now)
            .await?;
        return Ok(None);
    };
    let from = stored_status(&row)?;
    match rules::transition(from, PaymentEvent { observed: p.status, source: Source::Webhook }) {
        Ok(to) if to == from => {
            stale(tx, ("payment", &id), event_id, format!("already {from}"), now).await?;
            Ok(None)
        }
        Ok(to) => {
            row.psp_payment_id = Some(p.psp_id.clone());
            super::apply_observed(&mut row, to, p, now);
            store::update_attempt(tx, &row).await?;
            tx.outcome(
                now,
                &format!("payment.{to}"),
                Some(("payment", &id)),
                json!({"source": "webhook", "event_id": event_id, "was": from}),
            )
            .await?;
            Ok(Some(row))
        }
        Err(e) => {
            stale(tx, ("payment", &id), event_id, e.to_string(), now).await?;
            Ok(None)
        }
    }
}

async fn apply_refund(
    tx: &mut TenantTx,
    account: &PspAccount,
    event_id: &str,
    rf: &PspRefund,
    now: DateTime<Utc>,
) -> Result<()> {
    let id = rf.reference.to_string();
    let refund = store::get_refund(tx, Some(&id), None).await?;
    let payment = match &refund {
        Some(r) => store::get(tx, &r.payment_id).await?,
        None => None,
    };
    let (Some(mut refund), Some(payment)) = (refund, payment) else {
        return stale(tx, ("psp_account", &account.id), event_id, format!("no refund {id}"), now).await;
    };
    if payment.psp_account_id.as_deref() != Some(&account.id) {
        return stale(
            tx,
            ("psp_account", &account.id),
            event_id,
            format!("refund {id} is not on this account"),
            now,
        )
        .await;
    }
    if refund.status != RefundStatus::Pending.as_str() || rf.status == RefundStatus::Pending {
        let why = format!("refund is {}, event says {}", refund.status, rf.status);
        return stale(tx, ("payment", &payment.id), event_id, why, now).await;
    }
    refund.status = rf.status.as_str().to_owned();
    refund.psp_refund_id = Some(rf.psp_id.clone());
    refund.queued_reason = None;
    refund.updated_at = now;
    if rf.status == RefundStatus::Failed {
        store::release_refund(tx, &payment.id, refund.amount, now).await?;
    }
    store::update_refund(tx, &refund).await?;
    if rf.status == RefundStatus::Succeeded {
        crate::invoices::credit_note_for_refund(tx, &payment.id, &refund.id, refund.amount, now).await?;
    }
    tx.outcome(
        now,
        &format!("refund.{}", rf.status),
        Some(("payment", &payment.id)),
        json!({"refund_id": refund.id, "source": "webhook", "event_id": event_id}),
    )
    .await?;
    Ok(())
}
