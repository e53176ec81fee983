//! Payments through a storefront's own PSP accounts: routing, failover before any possible
//! charge, circuit breakers, safe mode, refunds under the captured amount, reconciliation and
//! PSP webhooks — every step journaled.
//!
//! A payment is created `pending` and routed in one transaction (the routing decision is
//! journaled), which also records its first attempt as started: attempt number and account are
//! durable before the PSP hears of it. That can be the caller's transaction ([`prepare`]: a
//! renewal's, with its invoice). The PSP is called outside any transaction, with an idempotency
//! key derived from the payment id and the attempt number, and its final answer is recorded in
//! a transaction left open for the caller's writes that follow from it ([`attempt::Sent`]; a
//! plain [`charge`] commits it at once), recorded again alone if those do not commit
//! ([`attempt::Redo::record_alone`]). Only a
//! retryable failure (nothing was charged) moves on to the next account — that transaction
//! records the next attempt as started and commits before the next call. An unknown outcome
//! stops there, `unknown`, for reconciliation — never charged again. A process that dies
//! mid-attempt leaves a `pending` payment with a recorded attempt: reconciliation asks the PSP
//! about it like an unknown one (decision 0007).

pub(crate) mod attempt;
pub(crate) mod batch;
mod breaker;
mod cancel;
mod reconcile;
mod refunds;
mod routing;
mod safe_mode;
mod webhooks;

use std::sync::Arc;

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{PaymentId, PaymentStatus};
use azotte_domain::permission::Permission;
use azotte_domain::{FieldError, Secret, ValidationErrors};
use azotte_payments::stripe::{StripeConfig, StripeConnector};
use azotte_payments::{Account, Connector, Sandbox};
use azotte_store::customers as customer_store;
use azotte_store::payments::{self as store, PaymentRow, RefundRow};
use azotte_store::psp_accounts::{self as psp_store, PspAccount};
use azotte_store::{TenantScope, TenantTx};
use serde_json::json;

use crate::psp_accounts::Unopened;
use crate::{Ctx, Result, ServiceError};

pub use breaker::{BreakerConfig, BreakerState, Breakers};
pub(crate) use cancel::cancel_waiting;
pub use reconcile::{reconcile, reconcile_everywhere};
pub use refunds::refund;
pub(crate) use refunds::{refund_rest, reserve_rest_in, send_reserved};
pub use safe_mode::{resume, resume_everywhere, safe_mode, set_safe_mode, SafeModeChange};
pub use webhooks::{receive_webhook, WebhookReceipt};

/// The connectors of this process, with their circuit breakers.
#[derive(Clone)]
pub struct Connectors {
    /// The built-in sandbox PSP (test environments only); its ledger is inspectable.
    pub sandbox: Sandbox,
    /// Stripe, when its HTTP client could be built.
    pub stripe: Option<StripeConnector>,
    /// One circuit breaker per PSP account.
    pub breakers: Breakers,
    /// Reconciliation lookups that failed, by payment or refund id: (failures, next try).
    pub(crate) lookup_backoff: Arc<std::sync::Mutex<Backoff>>,
    /// How long after an attempt an empty PSP lookup still proves nothing (PSP search indexes
    /// lag), and how long an attempt may stay unrecorded before reconciliation asks the PSP.
    pub reconcile_grace: chrono::Duration,
}

impl Default for Connectors {
    fn default() -> Self {
        Self::new(StripeConfig::default(), RECONCILE_GRACE)
    }
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connectors")
    }
}

impl Connectors {
    /// The sandbox, Stripe through `stripe`, default breakers.
    pub fn new(stripe: StripeConfig, reconcile_grace: chrono::Duration) -> Self {
        let stripe = match StripeConnector::with_config(stripe) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "the Stripe connector is unavailable");
                None
            }
        };
        Self {
            sandbox: Sandbox::new(),
            stripe,
            breakers: Breakers::default(),
            lookup_backoff: Arc::default(),
            reconcile_grace,
        }
    }

    /// Stripe at `stripe_base_url` with default timeouts; `reconcile_grace` as configured.
    pub fn configured(stripe_base_url: &str, reconcile_grace: std::time::Duration) -> Self {
        let stripe = StripeConfig { base_url: stripe_base_url.to_owned(), ..StripeConfig::default() };
        Self::new(stripe, chrono::Duration::from_std(reconcile_grace).unwrap_or(RECONCILE_GRACE))
    }

    fn for_account(&self, a: &PspAccount) -> Result<Arc<dyn Connector>> {
        match a.connector.as_str() {
            "sandbox" => Ok(Arc::new(self.sandbox.clone())),
            "stripe" if self.stripe.is_some() => {
                Ok(Arc::new(self.stripe.clone().ok_or_else(|| ServiceError::Internal("stripe".into()))?))
            }
            other => Err(ServiceError::Conflict {
                code: "connector_unavailable",
                message: format!("the {other} connector is not available in this process"),
                field: None,
            }),
        }
    }
}

/// Failed reconciliation lookups by payment or refund id: (failures, next try).
pub(crate) type Backoff = std::collections::HashMap<String, (u32, chrono::DateTime<chrono::Utc>)>;

/// The default of [`Connectors::reconcile_grace`].
pub const RECONCILE_GRACE: chrono::Duration = chrono::Duration::minutes(10);

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
    /// The request's `Idempotency-Key`: one payment per key, whatever happens to the process.
    pub request_key: Option<String>,
}

/// The connector and the opened credentials of an account, read in a transaction of its own.
pub(crate) async fn connector_for(
    ctx: &Ctx,
    scope: &TenantScope,
    a: &PspAccount,
) -> Result<(Arc<dyn Connector>, Account)> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let c = connector_in(ctx, &mut tx, a).await?;
    tx.commit().await?;
    match c {
        Ok(c) => Ok(c),
        Err(unopened) => Err(unopened.record(ctx, scope).await),
    }
}

/// [`connector_for`] in the caller's transaction. Credentials that do not open come back as
/// [`Unopened`], to be recorded once `tx` has ended.
pub(crate) async fn connector_in(
    ctx: &Ctx,
    tx: &mut TenantTx,
    a: &PspAccount,
) -> Result<std::result::Result<(Arc<dyn Connector>, Account), Unopened>> {
    let connector = ctx.psp.for_account(a)?;
    let c = match crate::psp_accounts::open_credentials(ctx, tx, a).await? {
        Ok(c) => c,
        Err(unopened) => return Ok(Err(unopened)),
    };
    let id: PspAccountId =
        a.id.parse().map_err(|_| ServiceError::Internal(format!("account id {}", a.id).into()))?;
    let account = Account {
        id,
        api_secret: c.api_secret.map(Secret::new),
        webhook_secret: c.webhook_secret.map(Secret::new),
    };
    Ok(Ok((connector, account)))
}

/// What the PSP reports of a payment, copied onto its row moving to `to` (a transition the
/// domain allowed): status, next action (kept only while waiting for the customer), amount
/// captured (never below what was refunded), decline code (kept when the PSP gives none).
fn apply_observed(
    row: &mut PaymentRow,
    to: PaymentStatus,
    psp: &azotte_payments::PspPayment,
    now: chrono::DateTime<chrono::Utc>,
) {
    row.status = to.as_str().to_owned();
    if to != PaymentStatus::RequiresAction {
        row.next_action = None;
    }
    row.captured_amount = psp.amount_captured.max(row.refunded_amount);
    row.decline_code = psp.decline_code.map(|d| d.as_str().to_owned()).or(row.decline_code.take());
    row.updated_at = now;
}

/// The stored status of a payment (a value outside the domain's is corrupt data).
fn stored_status(row: &PaymentRow) -> Result<PaymentStatus> {
    row.status
        .parse()
        .map_err(|_| ServiceError::Internal(format!("payment {} has status {:?}", row.id, row.status).into()))
}

fn reference(row: &PaymentRow) -> Result<PaymentId> {
    row.id.parse().map_err(|_| ServiceError::Internal(format!("payment id {}", row.id).into()))
}

fn currency_of(row: &PaymentRow) -> Result<Currency> {
    Currency::parse("currency", &row.currency).map_err(|_| {
        ServiceError::Internal(format!("payment {} has currency {:?}", row.id, row.currency).into())
    })
}

/// Charges a customer's payment method (permission `payment.create`). In safe mode the payment
/// is queued (`pending`, `queued_reason: safe_mode`) and nothing is sent to any PSP until safe
/// mode is lifted.
pub async fn charge(ctx: &Ctx, scope: &TenantScope, input: ChargeInput) -> Result<PaymentRow> {
    crate::security::require(ctx, scope, Permission::PaymentCreate).await?;
    let tx = ctx.db.tenant_tx(scope).await?;
    charge_in(ctx, scope, tx, &input).await?.commit().await
}

/// How far a charge got in one call. One per charge, matched at once: the variants' sizes do
/// not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Charged {
    /// Nothing was sent by this call — the payment an earlier request with the same key
    /// created, one queued in safe mode, one that failed before sending — and it is committed.
    Recorded(PaymentRow),
    /// The PSP answered; the answer is recorded in a transaction left open for the caller's
    /// writes that follow from it ([`attempt::Sent`]).
    Answered(attempt::Sent),
}

impl Charged {
    /// The payment as this call left it.
    pub(crate) fn payment(&self) -> &PaymentRow {
        match self {
            Charged::Recorded(p) => p,
            Charged::Answered(s) => s.payment(),
        }
    }

    /// Commits the answer alone (nothing follows in its transaction): the payment.
    pub(crate) async fn commit(self) -> Result<PaymentRow> {
        match self {
            Charged::Recorded(p) => Ok(p),
            Charged::Answered(s) => s.commit().await,
        }
    }

    /// The payment, and the answer's open transaction with what records the answer again
    /// without it, when there is one.
    pub(crate) fn into_parts(self) -> (PaymentRow, Option<(TenantTx, attempt::Redo)>) {
        match self {
            Charged::Recorded(p) => (p, None),
            Charged::Answered(s) => {
                let (tx, p, redo) = s.split();
                (p, Some((tx, redo)))
            }
        }
    }
}

/// [`charge`] starting in the caller's write transaction `tx` (which may have read what the
/// charge is for; it commits before the PSP is called). The caller has checked permission
/// `payment.create`, before `tx`.
pub(crate) async fn charge_in(
    ctx: &Ctx,
    scope: &TenantScope,
    mut tx: TenantTx,
    input: &ChargeInput,
) -> Result<Charged> {
    match prepare(ctx, scope, &mut tx, input).await? {
        Prepared::Ended(row) => {
            tx.commit().await?;
            Ok(Charged::Recorded(row))
        }
        Prepared::Raced => {
            drop(tx);
            Ok(Charged::Recorded(raced(ctx, scope, input).await?))
        }
        Prepared::Unopened(unopened) => {
            drop(tx);
            Err(unopened.record(ctx, scope).await)
        }
        Prepared::Send(sending) => {
            tx.commit().await?;
            Ok(Charged::Answered(attempt::run(ctx, scope, sending).await?))
        }
    }
}

/// A charge prepared in the caller's transaction ([`prepare`]). One per charge, matched at
/// once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prepared {
    /// Nothing to send: the payment an earlier request with the same key created, one queued in
    /// safe mode, or one that failed before anything was sent. Commit the transaction.
    Ended(PaymentRow),
    /// A concurrent request with the same key created the payment first: the transaction is
    /// spoilt (roll it back) and [`raced`] reads that payment.
    Raced,
    /// The first account's credentials do not open: nothing may be sent. Roll the transaction
    /// back, then record the finding ([`Unopened::record`]), which gives the error to return.
    Unopened(Unopened),
    /// The payment is recorded with its first attempt started: commit the transaction, then
    /// [`attempt::run`] makes the PSP calls.
    Send(attempt::Sending),
}

/// The payment a concurrent request with the same key created ([`Prepared::Raced`]).
pub(crate) async fn raced(ctx: &Ctx, scope: &TenantScope, input: &ChargeInput) -> Result<PaymentRow> {
    created_under_key(ctx, scope, input)
        .await?
        .ok_or_else(|| ServiceError::Internal("payment of a request key vanished".into()))
}

/// The first half of [`charge`], in the caller's transaction, so that a caller writing before
/// the charge (a renewal's invoice) commits both at once: checks, then creates and routes the
/// payment and starts its first attempt (attempt number and account durable before the PSP
/// hears of it, once the transaction commits) — unless an earlier request with the same key
/// created it (read in the same transaction). The first account's credentials are read here
/// too. The caller has checked permission `payment.create` (before its transaction: a denial
/// is journaled in a transaction of its own).
pub(crate) async fn prepare(
    ctx: &Ctx,
    scope: &TenantScope,
    tx: &mut TenantTx,
    input: &ChargeInput,
) -> Result<Prepared> {
    let now = ctx.clock.now();
    let mut errors = ValidationErrors::default();
    let currency = errors.check(Currency::parse("currency", &input.currency));
    if !amount_in_range(input.amount) {
        errors.push(FieldError::new("amount", "out_of_range", "a positive amount in minor units"));
    }
    errors.finish()?;
    let currency = currency.ok_or_else(|| ServiceError::Internal("validated".into()))?;

    if let Some(existing) = under_key(tx, input).await? {
        return Ok(Prepared::Ended(existing));
    }
    customer_store::get_customer(tx, &input.customer_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "customer" })?;
    let pm = customer_store::get_payment_method(tx, &input.customer_id, &input.payment_method_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "payment_method" })?;
    chargeable(scope, &pm)?;
    let accounts = psp_store::of_storefront(tx, &pm.storefront_id).await?;
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
    let sid = id.to_string();
    let mut row = new_row(sid.clone(), &pm, input, &currency, now);
    let r = Some(("payment", sid.as_str()));
    tx.action(
        now,
        "payment.create",
        r,
        json!({"customer_id": row.customer_id, "amount": row.amount, "currency": row.currency, "off_session": input.off_session}),
    )
    .await?;
    let safe_mode = azotte_store::payment_ops::safe_mode(tx).await?;
    row.queued_reason = safe_mode.as_ref().map(|_| "safe_mode".to_owned());
    if let Some(mode) = safe_mode {
        if !insert_new(tx, &row, input).await? {
            return Ok(Prepared::Raced);
        }
        tx.decision(
            now,
            "payment.queued",
            r,
            json!({"reason": "safe_mode", "safe_mode_since": mode.enabled_at}),
        )
        .await?;
        return Ok(Prepared::Ended(row));
    }
    let plan = routing::route(ctx, &accounts, &pm, &currency, input.psp_account_id.as_deref(), &sid, now);
    tx.decision(now, "payment.routed", r, plan.journal()).await?;
    let Some(first) = plan.order.first() else {
        if !insert_new(tx, &row, input).await? {
            return Ok(Prepared::Raced);
        }
        fail_before_sending(tx, &mut row, plan.empty_code(), now).await?;
        return Ok(Prepared::Ended(row));
    };
    let first_conn = match connector_in(ctx, tx, first).await? {
        Ok(c) => c,
        Err(unopened) => return Ok(Prepared::Unopened(unopened)),
    };
    // Written with its first attempt started: one statement.
    attempt::started(tx, &mut row, first, now).await?;
    if !insert_new(tx, &row, input).await? {
        return Ok(Prepared::Raced);
    }
    let job = attempt::Job {
        token: pm.token.clone(),
        psp_customer_id: pm.psp_customer_id.clone(),
        currency,
        off_session: input.off_session,
    };
    Ok(Prepared::Send(attempt::Sending { row, order: plan.order, job, first: first_conn }))
}

/// Writes a new payment: `false` when a concurrent request with the same key wrote its payment
/// first (the transaction is then spoilt: [`Prepared::Raced`]).
async fn insert_new(tx: &mut TenantTx, row: &PaymentRow, input: &ChargeInput) -> Result<bool> {
    match store::insert(tx, row).await {
        Err(azotte_store::StoreError::UniqueViolation { .. }) if input.request_key.is_some() => Ok(false),
        other => Ok(other.map(|()| true)?),
    }
}

/// Request-key prefixes of the platform's own charges (a checkout's, a renewal's or trial
/// conversion's, a plan change's). A client's `Idempotency-Key` must not start with one: it
/// could be taken for one of those charges.
const PLATFORM_KEY_PREFIXES: [&str; 3] = ["checkout-", "renewal-", "replace-"];

/// Whether `key` lies in the platform's own request-key space ([`PLATFORM_KEY_PREFIXES`]).
pub fn is_platform_key(key: &str) -> bool {
    PLATFORM_KEY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether a charge of `amount` minor units may be asked for.
fn amount_in_range(amount: i64) -> bool {
    amount > 0 && amount <= azotte_domain::catalog::MAX_AMOUNT
}

/// Whether this caller may charge `pm`: not found when it is deleted or of a storefront the
/// scope may not use; `payment_method_not_usable` when it is inactive or expired.
fn chargeable(scope: &TenantScope, pm: &customer_store::PaymentMethodRow) -> Result<()> {
    if pm.state == "deleted" || !scope.storefront_allowed(&pm.storefront_id) {
        return Err(ServiceError::NotFound { resource: "payment_method" });
    }
    if pm.state != "active" || pm.expired {
        return Err(ServiceError::Conflict {
            code: "payment_method_not_usable",
            message: "the payment method is inactive or expired".into(),
            field: Some("payment_method_id"),
        });
    }
    Ok(())
}

/// A new payment of `input` with `pm`, `pending`, no attempt started yet.
fn new_row(
    id: String,
    pm: &customer_store::PaymentMethodRow,
    input: &ChargeInput,
    currency: &Currency,
    now: chrono::DateTime<chrono::Utc>,
) -> PaymentRow {
    PaymentRow {
        id,
        storefront_id: pm.storefront_id.clone(),
        customer_id: input.customer_id.clone(),
        payment_method_id: pm.id.clone(),
        psp_account_id: input.psp_account_id.clone(),
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
        queued_reason: None,
        request_key: input.request_key.clone(),
        next_action: None,
    }
}

/// The payment an earlier request with the same `Idempotency-Key` created, if any; a key
/// reused for a different charge is refused.
async fn created_under_key(
    ctx: &Ctx,
    scope: &TenantScope,
    input: &ChargeInput,
) -> Result<Option<PaymentRow>> {
    if input.request_key.is_none() {
        return Ok(None);
    }
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let existing = under_key(&mut tx, input).await?;
    tx.commit().await?;
    Ok(existing)
}

/// [`created_under_key`] in the caller's transaction.
async fn under_key(tx: &mut TenantTx, input: &ChargeInput) -> Result<Option<PaymentRow>> {
    let Some(key) = &input.request_key else { return Ok(None) };
    let Some(p) = store::by_request_key(tx, key).await? else { return Ok(None) };
    let same = p.customer_id == input.customer_id
        && p.payment_method_id == input.payment_method_id
        && p.amount == input.amount
        && p.currency.eq_ignore_ascii_case(&input.currency);
    if !same {
        return Err(ValidationErrors::from(FieldError::new(
            "Idempotency-Key",
            "idempotency_key_reused",
            "this key created a different payment",
        ))
        .into());
    }
    Ok(Some(p))
}

/// A failed payment whose decline says nothing was charged because of the PSP or this platform,
/// not the customer's card: every account down or none eligible, a request the PSP never
/// received (a lost answer reconciled as `not_charged`, or a renewal batch's charge not sent in
/// time), or a renewal batch's charge not sent because safe mode began (`safe_mode`). A renewal
/// defers instead of dunning.
pub(crate) fn failed_on_our_side(p: &PaymentRow) -> bool {
    p.status == "failed"
        && matches!(
            p.decline_code.as_deref(),
            Some("psp_unavailable" | "no_eligible_psp_account" | "not_charged" | "safe_mode")
        )
}

/// Fails a payment nothing was sent for, with `code`, in the caller's transaction.
pub(super) async fn fail_before_sending(
    tx: &mut TenantTx,
    row: &mut PaymentRow,
    code: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    row.status = "failed".into();
    row.decline_code = Some(code.to_owned());
    store::update_attempt(tx, row).await?;
    tx.outcome(now, "payment.failed", Some(("payment", row.id.as_str())), json!({"decline_code": code}))
        .await?;
    Ok(())
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

/// Every tenant environment the workers visit, as system scopes for `job`.
pub(crate) async fn every_scope(ctx: &Ctx, job: &str) -> Result<Vec<TenantScope>> {
    let mut scopes = Vec::new();
    for (tenant, env) in azotte_store::seal::chains(&ctx.db, None).await? {
        let (Ok(tenant_id), Ok(environment)) =
            (tenant.parse(), env.parse::<azotte_domain::tenant::Environment>())
        else {
            continue;
        };
        match azotte_store::auth::system_scope(&ctx.db, tenant_id, environment, job).await {
            Ok(s) => scopes.push(s),
            Err(e) => tracing::warn!(tenant = %tenant, job, error = %e, "tenant skipped"),
        }
    }
    Ok(scopes)
}
