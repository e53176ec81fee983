//! Payments through a storefront's own PSP accounts: routing, failover before any possible
//! charge, refunds under the captured amount, every step journaled.
//!
//! A payment is created `pending` and routed in one transaction (the routing decision is
//! journaled), then attempted account by account outside any transaction, each attempt with an
//! idempotency key derived from the payment id and the attempt number, and its answer recorded
//! in a transaction of its own. Only a retryable failure (nothing was charged) moves on to the
//! next account; an unknown outcome stops there, `unknown`, for reconciliation — never charged
//! again.

use std::sync::Arc;

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{self as rules, PaymentEvent, PaymentId, PaymentStatus, RefundId, Source};
use azotte_domain::permission::Permission;
use azotte_domain::{FieldError, Secret, ValidationErrors};
use azotte_payments::{Account, Connector, ConnectorError, PaymentRequest, RefundRequest, Sandbox};
use azotte_store::customers as customer_store;
use azotte_store::payments::{self as store, PaymentRow, RefundRow};
use azotte_store::psp_accounts::{self as psp_store, PspAccount};
use azotte_store::TenantScope;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Ctx, Result, ServiceError};

/// The connectors of this process.
#[derive(Clone, Default)]
pub struct Connectors {
    /// The built-in sandbox PSP (test environments only); its ledger is inspectable.
    pub sandbox: Sandbox,
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connectors")
    }
}

impl Connectors {
    fn for_account(&self, a: &PspAccount) -> Result<Arc<dyn Connector>> {
        match a.connector.as_str() {
            "sandbox" => Ok(Arc::new(self.sandbox.clone())),
            other => Err(ServiceError::Conflict {
                code: "connector_unavailable",
                message: format!("the {other} connector is not available yet"),
                field: None,
            }),
        }
    }
}

/// A charge to make.
#[derive(Debug, Clone)]
pub struct ChargeInput {
    pub customer_id: String,
    pub payment_method_id: String,
    pub amount: i64,
    pub currency: String,
    pub description: String,
    /// Force one of the storefront's accounts.
    pub psp_account_id: Option<String>,
    pub off_session: bool,
}

/// Whether a token can be used through an account: its own account, or — sandbox test tokens
/// only, like a PSP's test tokens — any sandbox account.
fn token_usable(pm: &customer_store::PaymentMethodRow, a: &PspAccount) -> bool {
    a.id == pm.psp_account_id || (a.connector == "sandbox" && pm.token.starts_with("tok_sandbox_"))
}

/// A deterministic weighted order (Efraimidis–Spirakis keys from a hash of payment and account).
fn weighted_key(payment: &str, account: &str, weight: i32) -> f64 {
    let h = Sha256::digest(format!("{payment}:{account}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    let u = (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    let u = u.max(f64::MIN_POSITIVE);
    -u.ln() / f64::from(weight.max(1))
}

async fn credentials(ctx: &Ctx, scope: &TenantScope, a: &PspAccount) -> Result<Account> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let c = crate::psp_accounts::credentials(ctx, &mut tx, a).await?;
    tx.commit().await?;
    let id: PspAccountId =
        a.id.parse().map_err(|_| ServiceError::Internal(format!("account id {}", a.id).into()))?;
    Ok(Account {
        id,
        api_secret: c.api_secret.map(Secret::new),
        webhook_secret: c.webhook_secret.map(Secret::new),
    })
}

/// The stored status of a payment (a value outside the domain's is corrupt data).
fn stored_status(row: &PaymentRow) -> Result<PaymentStatus> {
    row.status
        .parse()
        .map_err(|_| ServiceError::Internal(format!("payment {} has status {:?}", row.id, row.status).into()))
}

/// Charges a customer's payment method (permission `payment.create`).
pub async fn charge(ctx: &Ctx, scope: &TenantScope, input: ChargeInput) -> Result<PaymentRow> {
    crate::security::require(ctx, scope, Permission::PaymentCreate).await?;
    let now = ctx.clock.now();
    let mut errors = ValidationErrors::default();
    let currency = errors.check(Currency::parse("currency", &input.currency));
    if input.amount <= 0 || input.amount > azotte_domain::catalog::MAX_AMOUNT {
        errors.push(FieldError::new("amount", "out_of_range", "a positive amount in minor units"));
    }
    errors.finish()?;
    let currency = currency.ok_or_else(|| ServiceError::Internal("validated".into()))?;

    // 1. Create and route, in one transaction.
    let mut tx = ctx.db.tenant_tx(scope).await?;
    customer_store::get_customer(&mut tx, &input.customer_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "customer" })?;
    let pm = customer_store::get_payment_method(&mut tx, &input.customer_id, &input.payment_method_id)
        .await?
        .filter(|p| p.state != "deleted" && scope.storefront_allowed(&p.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "payment_method" })?;
    if pm.state != "active" || pm.expired {
        return Err(ServiceError::Conflict {
            code: "payment_method_not_usable",
            message: "the payment method is inactive or expired".into(),
            field: Some("payment_method_id"),
        });
    }
    let accounts = psp_store::of_storefront(&mut tx, &pm.storefront_id).await?;
    if let Some(forced) = &input.psp_account_id {
        if !accounts.iter().any(|a| &a.id == forced) {
            return Err(ValidationErrors::from(FieldError::new(
                "psp_account_id",
                "psp_account_not_in_storefront",
                "a forced account must be one of the payment method's storefront's accounts",
            ))
            .into());
        }
    }
    let id = PaymentId::new();
    let mut candidates: Vec<&PspAccount> = accounts
        .iter()
        .filter(|a| a.status == "active")
        .filter(|a| a.currencies.iter().any(|c| c == currency.as_str()))
        .filter(|a| a.channels.iter().any(|c| c == "card"))
        .filter(|a| token_usable(&pm, a))
        .filter(|a| input.psp_account_id.as_ref().is_none_or(|f| &a.id == f))
        .collect();
    let sid = id.to_string();
    candidates.sort_by(|a, b| {
        a.priority.cmp(&b.priority).then(
            weighted_key(&sid, &a.id, a.weight)
                .partial_cmp(&weighted_key(&sid, &b.id, b.weight))
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    let mut row = PaymentRow {
        id: sid.clone(),
        storefront_id: pm.storefront_id.clone(),
        customer_id: input.customer_id.clone(),
        payment_method_id: pm.id.clone(),
        psp_account_id: None,
        psp_payment_id: None,
        amount: input.amount,
        currency: currency.to_string(),
        status: "pending".into(),
        attempts: 0,
        decline_code: None,
        captured_amount: 0,
        refunded_amount: 0,
        description: input.description.chars().take(500).collect(),
        created_at: now,
        updated_at: now,
    };
    let r = Some(("payment", sid.as_str()));
    tx.action(
        now,
        "payment.create",
        r,
        json!({"customer_id": row.customer_id, "amount": row.amount, "currency": row.currency}),
    )
    .await?;
    store::insert(&mut tx, &row).await?;
    let order: Vec<&str> = candidates.iter().map(|a| a.id.as_str()).collect();
    let considered: Vec<serde_json::Value> = accounts
        .iter()
        .map(|a| json!({"id": a.id, "status": a.status, "priority": a.priority, "weight": a.weight, "eligible": order.contains(&a.id.as_str())}))
        .collect();
    let reason = if input.psp_account_id.is_some() {
        "forced account"
    } else if candidates.is_empty() {
        "no eligible account (status, currency, channel, token)"
    } else {
        "priority, then weight"
    };
    tx.decision(
        now,
        "payment.routed",
        r,
        json!({"order": order, "candidates": considered, "reason": reason}),
    )
    .await?;
    if candidates.is_empty() {
        row.status = "failed".into();
        row.decline_code = Some("no_eligible_psp_account".into());
        store::update_attempt(&mut tx, &row).await?;
        tx.outcome(now, "payment.failed", r, json!({"decline_code": row.decline_code})).await?;
        tx.commit().await?;
        return Ok(row);
    }
    tx.commit().await?;

    // 2. Attempt account by account.
    let candidates: Vec<PspAccount> = candidates.into_iter().cloned().collect();
    for account in candidates {
        row.attempts += 1;
        let attempt = row.attempts as u32;
        let connector = ctx.psp.for_account(&account)?;
        let creds = credentials(ctx, scope, &account).await?;
        let req = PaymentRequest {
            account: creds,
            reference: id,
            amount: row.amount,
            currency: currency.clone(),
            token: pm.token.clone(),
            off_session: input.off_session,
            idempotency_key: rules::idempotency_key(&id, attempt),
        };
        let answer = connector.charge(&req).await;
        let now = ctx.clock.now();
        let mut tx = ctx.db.tenant_tx(scope).await?;
        let r = Some(("payment", sid.as_str()));
        tx.action(now, "payment.attempt", r, json!({"attempt": attempt, "psp_account_id": account.id}))
            .await?;
        row.psp_account_id = Some(account.id.clone());
        row.updated_at = now;
        let (observed, outcome, body, stop) = match &answer {
            Ok(p) => {
                row.psp_payment_id = Some(p.psp_id.clone());
                row.captured_amount = p.amount_captured;
                row.decline_code = p.decline_code.map(|d| d.as_str().to_owned());
                (
                    p.status,
                    format!("payment.{}", p.status),
                    json!({"attempt": attempt, "psp_payment_id": p.psp_id}),
                    true,
                )
            }
            Err(ConnectorError::HardDecline { code }) => {
                row.decline_code = Some(code.as_str().to_owned());
                (
                    PaymentStatus::Failed,
                    "payment.failed".into(),
                    json!({"attempt": attempt, "decline_code": code.as_str()}),
                    true,
                )
            }
            Err(ConnectorError::RequiresAction { psp_id, next_action }) => {
                row.psp_payment_id = Some(psp_id.clone());
                (
                    PaymentStatus::RequiresAction,
                    "payment.requires_action".into(),
                    json!({"attempt": attempt, "next_action": next_action}),
                    true,
                )
            }
            Err(e) if e.may_have_charged() => (
                PaymentStatus::Unknown,
                "payment.unknown".into(),
                json!({"attempt": attempt, "reason": e.to_string()}),
                true,
            ),
            Err(e) if e.allows_failover() => {
                tx.decision(
                    now,
                    "payment.failover",
                    r,
                    json!({"attempt": attempt, "psp_account_id": account.id, "reason": e.to_string()}),
                )
                .await?;
                (PaymentStatus::Pending, String::new(), json!({}), false)
            }
            Err(e) => {
                row.decline_code = Some("psp_error".into());
                (
                    PaymentStatus::Failed,
                    "payment.failed".into(),
                    json!({"attempt": attempt, "error": e.to_string()}),
                    true,
                )
            }
        };
        if stop {
            let from = stored_status(&row)?;
            let to = rules::transition(from, PaymentEvent { observed, source: Source::Attempt })
                .map_err(|e| ServiceError::Internal(e.to_string().into()))?;
            row.status = to.as_str().to_owned();
            store::update_attempt(&mut tx, &row).await?;
            tx.outcome(now, &outcome, r, body).await?;
            tx.commit().await?;
            return Ok(row);
        }
        store::update_attempt(&mut tx, &row).await?;
        tx.commit().await?;
    }
    // Every eligible account failed softly: nothing was charged.
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let r = Some(("payment", sid.as_str()));
    tx.action(now, "payment.give_up", r, json!({"attempts": row.attempts})).await?;
    row.status = "failed".into();
    row.decline_code = Some("psp_unavailable".into());
    row.updated_at = now;
    store::update_attempt(&mut tx, &row).await?;
    tx.outcome(
        now,
        "payment.failed",
        r,
        json!({"decline_code": "psp_unavailable", "attempts": row.attempts}),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// One payment with its refunds (permission `payment.read`).
pub async fn get(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<(PaymentRow, Vec<RefundRow>)> {
    crate::security::require(ctx, scope, Permission::PaymentRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let p = store::get(&mut tx, id)
        .await?
        .filter(|p| scope.storefront_allowed(&p.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "payment" })?;
    let refunds = store::refunds_of(&mut tx, id).await?;
    tx.commit().await?;
    Ok((p, refunds))
}

/// Payments, a page at a time (permission `payment.read`).
pub async fn list(
    ctx: &Ctx,
    scope: &TenantScope,
    limit: u32,
    starting_after: Option<&str>,
    customer_id: Option<&str>,
) -> Result<(Vec<PaymentRow>, bool)> {
    crate::security::require(ctx, scope, Permission::PaymentRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let page =
        store::list(&mut tx, limit, starting_after, customer_id, scope.storefront_restriction()).await?;
    tx.commit().await?;
    Ok(page)
}

/// Refunds part or all of a captured payment (permission `payment.refund`). The amount is
/// reserved against the captured amount in the database first; a failed refund gives it back.
pub async fn refund(
    ctx: &Ctx,
    scope: &TenantScope,
    payment_id: &str,
    amount: Option<i64>,
    reason: &str,
) -> Result<RefundRow> {
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
    let amount = amount.unwrap_or(p.captured_amount - p.refunded_amount);
    if amount <= 0 {
        return Err(ValidationErrors::from(FieldError::new(
            "amount",
            "out_of_range",
            "a positive amount, at most what is left to refund",
        ))
        .into());
    }
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
    let mut refund = RefundRow {
        id: rid.to_string(),
        payment_id: payment_id.to_owned(),
        amount,
        status: "pending".into(),
        psp_refund_id: None,
        reason: reason.chars().take(500).collect(),
        created_at: now,
        updated_at: now,
    };
    store::insert_refund(&mut tx, &refund).await?;
    tx.outcome(now, "refund.pending", r, json!({"refund_id": refund.id, "amount": amount})).await?;
    tx.commit().await?;

    let account = {
        let account_id = p.psp_account_id.clone().unwrap_or_default();
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let a = psp_store::get(&mut tx, &p.storefront_id, &account_id).await?;
        tx.commit().await?;
        a.ok_or_else(|| ServiceError::Internal(format!("payment {payment_id} has no account").into()))?
    };
    let connector = ctx.psp.for_account(&account)?;
    let req = RefundRequest {
        account: credentials(ctx, scope, &account).await?,
        reference: rid,
        payment_psp_id: p.psp_payment_id.clone().unwrap_or_default(),
        amount,
        currency: Currency::parse("currency", &p.currency).map_err(ValidationErrors::from)?,
        idempotency_key: rules::refund_idempotency_key(&rid, 1),
    };
    let answer = connector.refund(&req).await;
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    tx.action(now, "refund.attempt", r, json!({"refund_id": refund.id})).await?;
    refund.updated_at = now;
    match answer {
        Ok(psp) => {
            refund.status = psp.status.as_str().into();
            refund.psp_refund_id = Some(psp.psp_id);
        }
        Err(e) if e.may_have_charged() || e.is_retryable() => {
            // Left pending: reconciliation finds out what the PSP did; the amount stays reserved.
        }
        Err(_) => refund.status = "failed".into(),
    }
    if refund.status == "failed" {
        store::release_refund(&mut tx, payment_id, amount, now).await?;
    }
    store::update_refund(&mut tx, &refund).await?;
    tx.outcome(
        now,
        &format!("refund.{}", refund.status),
        r,
        json!({"refund_id": refund.id, "amount": amount}),
    )
    .await?;
    tx.commit().await?;
    Ok(refund)
}

/// How long after an attempt an empty lookup still proves nothing (PSP search indexes lag).
pub const RECONCILE_GRACE: chrono::Duration = chrono::Duration::minutes(10);

/// Resolves the tenant environment's `unknown` payments by asking the PSP for each by our
/// reference — never by charging again. Found: the PSP's state is applied (a second charge for
/// one payment is flagged as a decision). Not found after [`RECONCILE_GRACE`]: nothing was
/// charged, the payment fails. Returns how many payments were resolved.
pub async fn reconcile(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let unknown = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let rows = store::with_status(&mut tx, "unknown", 200).await?;
        tx.commit().await?;
        rows
    };
    let mut resolved = 0;
    for mut row in unknown {
        let Some(account_id) = row.psp_account_id.clone() else { continue };
        let account = {
            let mut tx = ctx.db.tenant_read_tx(scope).await?;
            let a = psp_store::get(&mut tx, &row.storefront_id, &account_id).await?;
            tx.commit().await?;
            a
        };
        let Some(account) = account else { continue };
        let reference: PaymentId =
            row.id.parse().map_err(|_| ServiceError::Internal(format!("payment id {}", row.id).into()))?;
        let connector = ctx.psp.for_account(&account)?;
        let creds = credentials(ctx, scope, &account).await?;
        let found = match connector.lookup_payment(&creds, &reference).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(payment_id = %row.id, error = %e, "reconciliation lookup failed; will retry");
                continue;
            }
        };
        let now = ctx.clock.now();
        if found.is_empty() && now - row.updated_at < RECONCILE_GRACE {
            continue;
        }
        let mut tx = ctx.db.tenant_tx(scope).await?;
        let r = Some(("payment", row.id.as_str()));
        tx.action(now, "payment.reconcile", r, json!({"found": found.len()})).await?;
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
        let to = rules::transition(
            PaymentStatus::Unknown,
            PaymentEvent { observed, source: Source::Reconciliation },
        )
        .map_err(|e| ServiceError::Internal(e.to_string().into()))?;
        row.status = to.as_str().to_owned();
        row.updated_at = now;
        store::update_attempt(&mut tx, &row).await?;
        tx.outcome(
            now,
            "payment.reconciled",
            r,
            json!({"status": row.status, "psp_payment_id": row.psp_payment_id}),
        )
        .await?;
        tx.commit().await?;
        resolved += 1;
    }
    Ok(resolved)
}

/// Reconciliation over every tenant environment (the worker runs it).
pub async fn reconcile_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut total = 0;
    for (tenant, env) in azotte_store::seal::chains(&ctx.db, None).await? {
        let (Ok(tenant_id), Ok(environment)) =
            (tenant.parse(), env.parse::<azotte_domain::tenant::Environment>())
        else {
            continue;
        };
        let Ok(scope) =
            azotte_store::auth::system_scope(&ctx.db, tenant_id, environment, "payment_reconciliation").await
        else {
            continue;
        };
        total += reconcile(ctx, &scope).await?;
    }
    Ok(total)
}
