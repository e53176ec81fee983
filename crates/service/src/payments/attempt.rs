//! Attempts: the PSP call of one attempt and the transaction that records its answer (and,
//! when failing over, starts the next attempt).

use std::sync::Arc;

use azotte_domain::catalog::Currency;
use azotte_domain::payment::{self as rules, PaymentEvent, PaymentStatus, Source};
use azotte_payments::{Account, Connector, ConnectorError, ConnectorResult, PaymentRequest, PspPayment};
use azotte_store::payments::{self as store, PaymentRow};
use azotte_store::psp_accounts::PspAccount;
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::breaker::BreakerChange;
use super::{reference, stored_status};
use crate::psp_accounts::Unopened;
use crate::{Ctx, Result, ServiceError};

/// What every attempt of one payment sends.
pub(crate) struct Job {
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
    started(tx, row, account, now).await?;
    store::update_attempt(tx, row).await?;
    Ok(())
}

/// [`start`] on a payment not written yet: its row as the caller then writes it, and the
/// journal entry.
pub(super) async fn started(
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
    Ok(())
}

/// Whether an answer says the PSP account is usable (`None`: it says nothing about it). An
/// account whose credentials the PSP refuses (a rolled or revoked key) counts as failing: its
/// breaker opens (`psp.degraded`) and routing goes around it until a probe succeeds.
fn healthy(answer: &ConnectorResult<PspPayment>) -> Option<bool> {
    match answer {
        Ok(_) | Err(ConnectorError::HardDecline { .. } | ConnectorError::RequiresAction { .. }) => Some(true),
        Err(
            ConnectorError::Retryable { .. }
            | ConnectorError::Unknown { .. }
            | ConnectorError::Configuration { .. },
        ) => Some(false),
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
        // Nothing charged, and not because of the card (also the account's credentials refused):
        // the next account may take it; with none left the payment fails `psp_unavailable` (a
        // renewal defers instead of dunning).
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

/// A prepared charge's payment, recorded with its first attempt started, and what its PSP
/// calls need: sent once the transaction that recorded it has committed ([`run`]).
pub(crate) struct Sending {
    pub(super) row: PaymentRow,
    pub(super) order: Vec<PspAccount>,
    pub(super) job: Job,
    /// The first account's connector and credentials, read in the recording transaction.
    pub(super) first: (Arc<dyn Connector>, Account),
}

impl Sending {
    /// The payment as written: `pending`, its first attempt started.
    pub(crate) fn payment(&self) -> &PaymentRow {
        &self.row
    }

    /// When the payment was created (committed with its first attempt started).
    pub(crate) fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }

    /// The first attempt's PSP call, its answer not recorded yet (a renewal batch records the
    /// answers of many at once: [`Sending::captured`], [`Sending::record_captured`]).
    pub(crate) async fn first_call(&self, ctx: &Ctx) -> Result<Answer> {
        call(ctx, &self.row, 0, &self.order[0], &self.first, &self.job).await
    }

    /// The payment as `answer` (to its first attempt) leaves it, when that answer is a capture;
    /// `None` for any other answer (the one-by-one path records it: [`run_answered`]).
    pub(crate) fn captured(&self, answer: &Answer) -> Option<PaymentRow> {
        let Some(Ok(p)) = &answer.result else { return None };
        if p.status != PaymentStatus::Captured || answer.index != 0 || p.decline_code.is_some() {
            return None;
        }
        let from = stored_status(&self.row).ok()?;
        let to =
            rules::transition(from, PaymentEvent { observed: p.status, source: Source::Attempt }).ok()?;
        let mut row = self.row.clone();
        row.psp_payment_id = Some(p.psp_id.clone());
        row.captured_amount = p.amount_captured;
        row.decline_code = p.decline_code.map(|d| d.as_str().to_owned());
        row.status = to.as_str().to_owned();
        row.updated_at = answer.at;
        (to == PaymentStatus::Captured).then_some(row)
    }

    /// Records a capture ([`Sending::captured`]) in the transaction's current lineage, as
    /// [`record`] would (action `payment.attempt_result`, a breaker change, outcome
    /// `payment.captured`); the caller writes the payment row.
    pub(crate) async fn record_captured(
        &self,
        tx: &mut TenantTx,
        answer: &Answer,
        captured: &PaymentRow,
    ) -> Result<()> {
        let (now, account) = (answer.at, &self.order[answer.index]);
        let r = Some(("payment", self.row.id.as_str()));
        tx.action(
            now,
            "payment.attempt_result",
            r,
            json!({"attempt": answer.attempt, "psp_account_id": account.id, "sent": answer.sent}),
        )
        .await?;
        journal_breaker(tx, account, answer.change, now).await?;
        tx.outcome(
            now,
            "payment.captured",
            r,
            json!({"attempt": answer.attempt, "psp_payment_id": captured.psp_payment_id}),
        )
        .await?;
        Ok(())
    }

    /// What records `answer` (final) alone, in a transaction of its own.
    pub(crate) fn redo(self, answer: Answer) -> Redo {
        Redo { payment_id: self.row.id, answer, order: self.order }
    }
}

/// One attempt's answer, as it is recorded (and recorded again if the transaction it was first
/// recorded in does not commit: [`Redo::record_alone`]).
pub(crate) struct Answer {
    /// Which of the order's accounts took the call.
    index: usize,
    attempt: i32,
    sent: bool,
    /// `None`: not sent (the breaker opened since routing).
    result: Option<ConnectorResult<PspPayment>>,
    change: Option<BreakerChange>,
    at: DateTime<Utc>,
}

/// What recording an answer led to.
enum Recorded {
    /// The payment as it stands after this attempt: captured, failed, unknown, …
    Final(PaymentRow),
    /// Failing over: the next attempt is recorded as started (commit before its call), with its
    /// account's connector and credentials.
    Next(PaymentRow, (Arc<dyn Connector>, Account)),
    /// Failing over, but the next account's credentials do not open: roll back (the payment
    /// stays `pending` with the attempt it had, for reconciliation) and record the finding.
    Unopened(Unopened),
}

/// A charge's final answer, recorded in a transaction left open for the caller's own writes
/// (the subscription it pays for, the invoice it settles): committing it records both at
/// once. A caller that drops it instead — its own writes failed or turned out not to apply —
/// records the answer alone with [`Redo::record_alone`], so the PSP's answer is never lost.
/// Its payment is as stored, and its transaction holds the row (read locked) until it ends.
pub(crate) struct Sent {
    tx: TenantTx,
    payment: PaymentRow,
    redo: Redo,
}

/// What [`Redo::record_alone`] needs once the transaction is gone.
pub(crate) struct Redo {
    payment_id: String,
    answer: Answer,
    order: Vec<PspAccount>,
}

impl Sent {
    /// The payment as the answer left it.
    pub(crate) fn payment(&self) -> &PaymentRow {
        &self.payment
    }

    /// Commits the answer alone: the payment as recorded.
    pub(crate) async fn commit(self) -> Result<PaymentRow> {
        self.tx.commit().await?;
        Ok(self.payment)
    }

    /// The open transaction, the payment, and what records the answer again without it.
    pub(crate) fn split(self) -> (TenantTx, PaymentRow, Redo) {
        (self.tx, self.payment, self.redo)
    }
}

impl Redo {
    /// Records the answer in a transaction of its own (the one it was recorded in was dropped):
    /// the payment as it stands then.
    pub(crate) async fn record_alone(self, ctx: &Ctx, scope: &TenantScope) -> Result<PaymentRow> {
        let mut tx = ctx.db.tenant_tx(scope).await?;
        match record(ctx, &mut tx, &self.answer, &self.order, &self.payment_id).await? {
            Recorded::Final(p) => {
                tx.commit().await?;
                Ok(p)
            }
            // Only a final answer is ever handed over in a `Sent`.
            Recorded::Next(..) | Recorded::Unopened(_) => {
                Err(ServiceError::Internal("a failover answer recorded again".into()))
            }
        }
    }
}

/// Makes one attempt's PSP call (unless the account's breaker opened since routing).
async fn call(
    ctx: &Ctx,
    row: &PaymentRow,
    index: usize,
    account: &PspAccount,
    conn: &(Arc<dyn Connector>, Account),
    job: &Job,
) -> Result<Answer> {
    let id = reference(row)?;
    let attempt = row.attempts;
    // A breaker may have opened since routing; a half-open one lets one probe through.
    let sent = ctx.psp.breakers.permit(&account.id, ctx.clock.now());
    let result = if sent {
        let req = PaymentRequest {
            account: conn.1.clone(),
            reference: id,
            amount: row.amount,
            currency: job.currency.clone(),
            token: job.token.clone(),
            off_session: job.off_session,
            psp_customer_id: job.psp_customer_id.clone(),
            idempotency_key: rules::idempotency_key(&id, attempt as u32),
        };
        Some(conn.0.charge(&req).await)
    } else {
        None
    };
    let at = ctx.clock.now();
    let change = result.as_ref().and_then(healthy).and_then(|h| ctx.psp.breakers.record(&account.id, at, h));
    Ok(Answer { index, attempt, sent, result, change, at })
}

/// Records an attempt's answer in `tx`: the outcome, or — when failing over — the next attempt
/// started.
async fn record(
    ctx: &Ctx,
    tx: &mut TenantTx,
    answer: &Answer,
    order: &[PspAccount],
    payment_id: &str,
) -> Result<Recorded> {
    let (now, attempt, account) = (answer.at, answer.attempt, &order[answer.index]);
    let r = Some(("payment", payment_id));
    tx.action(
        now,
        "payment.attempt_result",
        r,
        json!({"attempt": attempt, "psp_account_id": account.id, "sent": answer.sent}),
    )
    .await?;
    journal_breaker(tx, account, answer.change, now).await?;
    // A webhook or reconciliation may have moved the payment meanwhile: apply to what is
    // stored now, held from here (the writes that follow from the answer — an invoice it pays —
    // rely on it not moving before the commit).
    let mut current = store::get_locked(tx, payment_id)
        .await?
        .ok_or_else(|| ServiceError::Internal(format!("payment {payment_id} vanished").into()))?;
    current.updated_at = now;
    match classify(&mut current, attempt, answer.result.as_ref()) {
        Some((observed, outcome, body)) => {
            let from = stored_status(&current)?;
            match rules::transition(from, PaymentEvent { observed, source: Source::Attempt }) {
                Ok(to) => {
                    current.status = to.as_str().to_owned();
                    store::update_attempt(tx, &current).await?;
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
                    current = store::get(tx, payment_id).await?.unwrap_or(current);
                }
            }
            Ok(Recorded::Final(current))
        }
        None => {
            let reason = match &answer.result {
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
            if current.status != "pending" {
                // Resolved elsewhere meanwhile (reconciliation, a webhook): stop here.
                return Ok(Recorded::Final(current));
            }
            if let Some(following) = order.get(answer.index + 1) {
                let conn = match super::connector_in(ctx, tx, following).await? {
                    Ok(c) => c,
                    Err(unopened) => return Ok(Recorded::Unopened(unopened)),
                };
                start(tx, &mut current, following, now).await?;
                return Ok(Recorded::Next(current, conn));
            }
            // Every account failed softly: nothing was charged.
            current.status = "failed".into();
            current.decline_code = Some("psp_unavailable".into());
            store::update_attempt(tx, &current).await?;
            tx.outcome(
                now,
                "payment.failed",
                r,
                json!({"decline_code": "psp_unavailable", "attempts": current.attempts}),
            )
            .await?;
            Ok(Recorded::Final(current))
        }
    }
}

/// Runs a prepared charge's attempts through its order, starting with the one already recorded
/// as started (`order[0]`), failing over only while nothing can have been charged; each next
/// attempt is committed as started before its call. The final answer is recorded in a
/// transaction returned open ([`Sent`]).
pub(crate) async fn run(ctx: &Ctx, scope: &TenantScope, s: Sending) -> Result<Sent> {
    run_from(ctx, scope, s, None).await
}

/// [`run`] for a charge whose first attempt's call was made already ([`Sending::first_call`]):
/// its answer is recorded first, then as [`run`] goes on.
pub(crate) async fn run_answered(ctx: &Ctx, scope: &TenantScope, s: Sending, first: Answer) -> Result<Sent> {
    run_from(ctx, scope, s, Some(first)).await
}

async fn run_from(ctx: &Ctx, scope: &TenantScope, s: Sending, mut answered: Option<Answer>) -> Result<Sent> {
    let Sending { mut row, order, job, first } = s;
    let (mut index, mut conn) = (0, first);
    loop {
        let answer = match answered.take() {
            Some(a) => a,
            None => call(ctx, &row, index, &order[index], &conn, &job).await?,
        };
        let mut tx = ctx.db.tenant_tx(scope).await?;
        match record(ctx, &mut tx, &answer, &order, &row.id).await? {
            Recorded::Final(payment) => {
                let redo = Redo { payment_id: row.id, answer, order };
                return Ok(Sent { tx, payment, redo });
            }
            Recorded::Next(next, c) => {
                tx.commit().await?;
                (row, conn, index) = (next, c, index + 1);
            }
            Recorded::Unopened(unopened) => {
                drop(tx);
                return Err(unopened.record(ctx, scope).await);
            }
        }
    }
}
