//! Attempts: the PSP call of one attempt and the transaction that records its answer (and,
//! when failing over, starts the next attempt).

use azotte_domain::catalog::Currency;
use azotte_domain::payment::{self as rules, PaymentEvent, PaymentStatus, Source};
use azotte_payments::{ConnectorError, ConnectorResult, PaymentRequest, PspPayment};
use azotte_store::payments::{self as store, PaymentRow};
use azotte_store::psp_accounts::PspAccount;
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::breaker::BreakerChange;
use super::{connector_for, reference, stored_status};
use crate::{Ctx, Result, ServiceError};

/// What every attempt of one payment sends.
pub(super) struct Job {
    pub(super) token: String,
    pub(super) psp_customer_id: Option<String>,
    pub(super) currency: Currency,
    pub(super) off_session: bool,
}

/// Records the next attempt, through `account`, as started — in the caller's transaction, so
/// it is durable before the PSP hears of it.
pub(super) async fn start(
    tx: &mut TenantTx,
    row: &mut PaymentRow,
    account: &PspAccount,
    now: DateTime<Utc>,
) -> Result<()> {
    row.attempts += 1;
    row.psp_account_id = Some(account.id.clone());
    row.updated_at = now;
    tx.action(
        now,
        "payment.attempt",
        Some(("payment", row.id.as_str())),
        json!({"attempt": row.attempts, "psp_account_id": account.id}),
    )
    .await?;
    store::update_attempt(tx, row).await?;
    Ok(())
}

/// Whether an answer says the PSP is healthy (`None`: it says nothing about the PSP).
fn healthy(answer: &ConnectorResult<PspPayment>) -> Option<bool> {
    match answer {
        Ok(_) | Err(ConnectorError::HardDecline { .. } | ConnectorError::RequiresAction { .. }) => Some(true),
        Err(ConnectorError::Retryable { .. } | ConnectorError::Unknown { .. }) => Some(false),
        Err(_) => None,
    }
}

/// Journals a breaker opening (`psp.degraded`) or closing (`psp.recovered`).
pub(super) async fn journal_breaker(
    tx: &mut TenantTx,
    account: &PspAccount,
    change: Option<BreakerChange>,
    now: DateTime<Utc>,
) -> Result<()> {
    let r = Some(("psp_account", account.id.as_str()));
    match change {
        Some(BreakerChange::Opened { failures, calls }) => {
            tracing::warn!(psp_account_id = %account.id, failures, calls, "PSP account degraded: circuit breaker open");
            tx.outcome(
                now,
                "psp.degraded",
                r,
                json!({"storefront_id": account.storefront_id, "connector": account.connector, "failures": failures, "calls": calls}),
            )
            .await?;
        }
        Some(BreakerChange::Closed) => {
            tracing::info!(psp_account_id = %account.id, "PSP account recovered: circuit breaker closed");
            tx.outcome(now, "psp.recovered", r, json!({"storefront_id": account.storefront_id})).await?;
        }
        None => {}
    }
    Ok(())
}

/// Where an answer leads: the status observed, the outcome's type and body — or `None` to fail
/// over (nothing was charged).
fn classify(
    row: &mut PaymentRow,
    attempt: i32,
    answer: Option<&ConnectorResult<PspPayment>>,
) -> Option<(PaymentStatus, String, Value)> {
    let answer = answer?;
    Some(match answer {
        Ok(p) => {
            row.psp_payment_id = Some(p.psp_id.clone());
            row.captured_amount = p.amount_captured;
            row.decline_code = p.decline_code.map(|d| d.as_str().to_owned());
            (
                p.status,
                format!("payment.{}", p.status),
                json!({"attempt": attempt, "psp_payment_id": p.psp_id}),
            )
        }
        Err(ConnectorError::HardDecline { code }) => {
            row.decline_code = Some(code.as_str().to_owned());
            (
                PaymentStatus::Failed,
                "payment.failed".into(),
                json!({"attempt": attempt, "decline_code": code.as_str()}),
            )
        }
        Err(ConnectorError::RequiresAction { psp_id, next_action }) => {
            row.psp_payment_id = Some(psp_id.clone());
            row.next_action = Some(next_action.to_string());
            (
                PaymentStatus::RequiresAction,
                "payment.requires_action".into(),
                json!({"attempt": attempt, "next_action": next_action}),
            )
        }
        Err(e) if e.may_have_charged() => (
            PaymentStatus::Unknown,
            "payment.unknown".into(),
            json!({"attempt": attempt, "reason": e.to_string()}),
        ),
        Err(e) if e.allows_failover() => return None,
        Err(e) => {
            row.decline_code = Some("psp_error".into());
            (
                PaymentStatus::Failed,
                "payment.failed".into(),
                json!({"attempt": attempt, "error": e.to_string()}),
            )
        }
    })
}

/// Runs the payment's attempts through `order`, starting with the one already recorded as
/// started (`order[0]`), failing over only while nothing can have been charged.
pub(super) async fn run(
    ctx: &Ctx,
    scope: &TenantScope,
    mut row: PaymentRow,
    order: Vec<PspAccount>,
    job: &Job,
) -> Result<PaymentRow> {
    let id = reference(&row)?;
    let mut next = 0;
    loop {
        let account = &order[next];
        let attempt = row.attempts;
        // A breaker may have opened since routing; a half-open one lets one probe through.
        let sent = ctx.psp.breakers.permit(&account.id, ctx.clock.now());
        let answer = if sent {
            let (connector, creds) = connector_for(ctx, scope, account).await?;
            let req = PaymentRequest {
                account: creds,
                reference: id,
                amount: row.amount,
                currency: job.currency.clone(),
                token: job.token.clone(),
                off_session: job.off_session,
                psp_customer_id: job.psp_customer_id.clone(),
                idempotency_key: rules::idempotency_key(&id, attempt as u32),
            };
            Some(connector.charge(&req).await)
        } else {
            None
        };
        let now = ctx.clock.now();
        let change =
            answer.as_ref().and_then(healthy).and_then(|h| ctx.psp.breakers.record(&account.id, now, h));

        let mut tx = ctx.db.tenant_tx(scope).await?;
        let r = Some(("payment", row.id.as_str()));
        tx.action(
            now,
            "payment.attempt_result",
            r,
            json!({"attempt": attempt, "psp_account_id": account.id, "sent": sent}),
        )
        .await?;
        journal_breaker(&mut tx, account, change, now).await?;
        // A webhook or reconciliation may have moved the payment meanwhile: apply to what is
        // stored now.
        let mut current = store::get(&mut tx, &row.id)
            .await?
            .ok_or_else(|| ServiceError::Internal(format!("payment {} vanished", row.id).into()))?;
        current.updated_at = now;
        match classify(&mut current, attempt, answer.as_ref()) {
            Some((observed, outcome, body)) => {
                let from = stored_status(&current)?;
                match rules::transition(from, PaymentEvent { observed, source: Source::Attempt }) {
                    Ok(to) => {
                        current.status = to.as_str().to_owned();
                        store::update_attempt(&mut tx, &current).await?;
                        tx.outcome(now, &outcome, r, body).await?;
                    }
                    Err(e) => {
                        tx.decision(
                            now,
                            "payment.attempt_superseded",
                            r,
                            json!({"attempt": attempt, "stored": from, "observed": observed, "reason": e.to_string()}),
                        )
                        .await?;
                        current = store::get(&mut tx, &row.id).await?.unwrap_or(current);
                    }
                }
                tx.commit().await?;
                return Ok(current);
            }
            None => {
                let reason = match &answer {
                    Some(Err(e)) => e.to_string(),
                    _ => "circuit breaker open".to_owned(),
                };
                tx.decision(
                    now,
                    "payment.failover",
                    r,
                    json!({"attempt": attempt, "psp_account_id": account.id, "reason": reason}),
                )
                .await?;
                next += 1;
                if current.status != "pending" {
                    // Resolved elsewhere meanwhile (reconciliation, a webhook): stop here.
                    tx.commit().await?;
                    return Ok(current);
                }
                if let Some(following) = order.get(next) {
                    start(&mut tx, &mut current, following, now).await?;
                    tx.commit().await?;
                    row = current;
                    continue;
                }
                // Every account failed softly: nothing was charged.
                current.status = "failed".into();
                current.decline_code = Some("psp_unavailable".into());
                store::update_attempt(&mut tx, &current).await?;
                tx.outcome(
                    now,
                    "payment.failed",
                    r,
                    json!({"decline_code": "psp_unavailable", "attempts": current.attempts}),
                )
                .await?;
                tx.commit().await?;
                return Ok(current);
            }
        }
    }
}
