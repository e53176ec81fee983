//! Charges of a renewal batch: many payments prepared in one transaction of the caller's and
//! written with one statement ([`azotte_store::payments::insert_many`]), each journaled in its
//! own lineage as [`super::prepare`] journals one; their first attempts are then called
//! together ([`super::attempt::Sending::first_call`]). Anything out of the ordinary — no route,
//! credentials that do not open, a method that cannot be charged — is left to the one-by-one
//! path, which knows every case: [`plan`] then returns `None` having recorded nothing.

use std::collections::HashMap;
use std::sync::Arc;

use azotte_domain::catalog::Currency;
use azotte_domain::payment::PaymentId;
use azotte_payments::{Account, Connector};
use azotte_store::customers::PaymentMethodRow;
use azotte_store::payments::PaymentRow;
use azotte_store::psp_accounts::PspAccount;
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::attempt::{Job, Sending};
use super::{connector_in, routing, ChargeInput};
use crate::{Ctx, Result};

/// The connectors and opened credentials of accounts, by account id.
pub(crate) type Connectors = HashMap<String, (Arc<dyn Connector>, Account)>;

/// The connectors and opened credentials of `accounts` (those active), read once for a batch;
/// an account whose credentials do not open is left out (its charges take the one-by-one path,
/// which records the finding).
pub(crate) async fn connectors(ctx: &Ctx, tx: &mut TenantTx, accounts: &[PspAccount]) -> Result<Connectors> {
    let mut opened = HashMap::new();
    for a in accounts.iter().filter(|a| a.status == "active") {
        // A database error ends the batch's transaction (on PostgreSQL it is spoilt).
        if let Ok(c) = connector_in(ctx, tx, a).await? {
            opened.insert(a.id.clone(), c);
        }
    }
    Ok(opened)
}

/// A charge of a batch, routed and ready to be started ([`Planned::start`]).
pub(crate) struct Planned {
    row: PaymentRow,
    order: Vec<PspAccount>,
    routed: serde_json::Value,
    job: Job,
    first: (Arc<dyn Connector>, Account),
}

/// Plans one charge of a batch, recording nothing: `None` for a charge the one-by-one path must
/// take — a method not usable by this caller, no eligible account, or a first account whose
/// credentials did not open.
pub(crate) fn plan(
    ctx: &Ctx,
    tx: &TenantTx,
    input: &ChargeInput,
    pm: &PaymentMethodRow,
    accounts: &[PspAccount],
    connectors: &Connectors,
    now: DateTime<Utc>,
) -> Option<Planned> {
    let currency = Currency::parse("currency", &input.currency).ok()?;
    let usable = pm.customer_id == input.customer_id
        && pm.id == input.payment_method_id
        && super::chargeable(tx.scope(), pm).is_ok()
        && super::amount_in_range(input.amount)
        && input.psp_account_id.is_none();
    if !usable {
        return None;
    }
    let sid = PaymentId::new().to_string();
    let plan = routing::route(ctx, accounts, pm, &currency, None, &sid, now);
    let first = plan.order.first()?;
    let conn = connectors.get(&first.id)?.clone();
    let mut row = super::new_row(sid, pm, input, &currency, now);
    // Its first attempt, started once the caller writes it.
    row.psp_account_id = Some(first.id.clone());
    row.attempts = 1;
    let job = Job {
        token: pm.token.clone(),
        psp_customer_id: pm.psp_customer_id.clone(),
        currency,
        off_session: input.off_session,
    };
    let routed = plan.journal();
    Some(Planned { row, order: plan.order, routed, job, first: conn })
}

impl Planned {
    /// The payment as it is written: `pending`, its first attempt started.
    pub(crate) fn payment(&self) -> &PaymentRow {
        &self.row
    }

    /// Records in `tx`'s current lineage what [`super::prepare`] records for a charge sent at
    /// once (action `payment.create`, decision `payment.routed`, action `payment.attempt`), and
    /// returns it with its first attempt started. The caller writes every started payment's
    /// row at once ([`Sending::payment`]) before committing.
    pub(crate) async fn start(self, tx: &mut TenantTx, now: DateTime<Utc>) -> Result<Sending> {
        let Planned { row, order, routed, job, first } = self;
        let r = Some(("payment", row.id.as_str()));
        tx.action(
            now,
            "payment.create",
            r,
            json!({"customer_id": row.customer_id, "amount": row.amount, "currency": row.currency, "off_session": job.off_session}),
        )
        .await?;
        tx.decision(now, "payment.routed", r, routed).await?;
        let account = row.psp_account_id.clone();
        tx.action(now, "payment.attempt", r, json!({"attempt": row.attempts, "psp_account_id": account}))
            .await?;
        Ok(Sending { row, order, job, first })
    }
}

/// Fails a batch's payment whose first attempt was started but never sent — money movement
/// stopped (`safe_mode`), or it waited too long to be sent safely (`not_charged`) — in the
/// caller's lineage: action `payment.attempt_result` (`sent: false`, the reason), outcome
/// `payment.failed` with the reason as its decline code. Nothing was charged. Returns the
/// payment as it then stands (as it was, if something else moved it first).
pub(crate) async fn withhold(
    ctx: &Ctx,
    scope: &TenantScope,
    s: &Sending,
    reason: &str,
) -> Result<PaymentRow> {
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let id = s.row.id.clone();
    let mut current = azotte_store::payments::get(&mut tx, &id)
        .await?
        .ok_or_else(|| crate::ServiceError::Internal(format!("payment {id} vanished").into()))?;
    if current.status != "pending" {
        return Ok(current); // dropped: nothing written
    }
    tx.action(
        now,
        "payment.attempt_result",
        Some(("payment", id.as_str())),
        json!({"attempt": current.attempts, "psp_account_id": current.psp_account_id, "sent": false, "reason": reason}),
    )
    .await?;
    current.updated_at = now;
    super::fail_before_sending(&mut tx, &mut current, reason, now).await?;
    tx.commit().await?;
    Ok(current)
}
