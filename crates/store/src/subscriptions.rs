//! Offers, checkouts, subscriptions and entitlement grants as stored.

use std::sync::Arc;

use azotte_domain::catalog::DunningPolicy;
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};
use serde_json::Value;

use crate::customers::Customers;
use crate::{Result, TenantScope, TenantTx};

// ---------------------------------------------------------------------------------------------
// Offers

#[derive(Iden, Clone, Copy)]
enum Offers {
    Table,
    TenantId,
    Environment,
    Id,
    CustomerId,
    StorefrontId,
    Intent,
    Items,
    CreatedAt,
    ExpiresAt,
    SubscriptionId,
}

/// An offer as stored; `items` is the priced proposal (JSON, shaped by the service).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OfferRow {
    pub id: String,
    pub customer_id: Option<String>,
    pub storefront_id: String,
    /// `new`, `replace`, `winback` or `showcase`.
    pub intent: String,
    #[sqlx(json)]
    pub items: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The subscription a `replace` offer would replace.
    pub subscription_id: Option<String>,
}

/// Adds an offer.
pub async fn insert_offer(tx: &mut TenantTx, o: &OfferRow) -> Result<()> {
    insert_offers(tx, std::slice::from_ref(o)).await
}

/// Stores offers in one statement (none: nothing).
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_offers(tx: &mut TenantTx, rows: &[OfferRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert()
        .into_table(Offers::Table)
        .columns([
            Offers::TenantId,
            Offers::Environment,
            Offers::Id,
            Offers::CustomerId,
            Offers::StorefrontId,
            Offers::Intent,
            Offers::Items,
            Offers::CreatedAt,
            Offers::ExpiresAt,
            Offers::SubscriptionId,
        ])
        .to_owned();
    for o in rows {
        q.values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            o.id.clone().into(),
            o.customer_id.clone().into(),
            o.storefront_id.clone().into(),
            o.intent.clone().into(),
            o.items.clone().into(),
            o.created_at.into(),
            o.expires_at.into(),
            o.subscription_id.clone().into(),
        ]);
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// One offer.
pub async fn get_offer(tx: &mut TenantTx, id: &str) -> Result<Option<OfferRow>> {
    let q = select_offers(tx).and_where(Expr::col(Offers::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<OfferRow>(&q).await
}

/// The offers of `ids` that exist (in no particular order).
pub async fn get_offers(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<OfferRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_offers(tx).and_where(Expr::col(Offers::Id).is_in(ids.iter().cloned())).to_owned();
    tx.tx.fetch_all::<OfferRow>(&q).await
}

fn select_offers(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns([
            Offers::Id,
            Offers::CustomerId,
            Offers::StorefrontId,
            Offers::Intent,
            Offers::Items,
            Offers::CreatedAt,
            Offers::ExpiresAt,
            Offers::SubscriptionId,
        ])
        .from(Offers::Table)
        .cond_where(tx.in_scope(Offers::TenantId, Offers::Environment))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Checkouts

#[derive(Iden, Clone, Copy)]
enum Checkouts {
    Table,
    TenantId,
    Environment,
    Id,
    CustomerId,
    OfferId,
    PriceId,
    PaymentMethodId,
    Status,
    FailureCode,
    SubscriptionId,
    PaymentId,
    NextAction,
    CorrelationId,
    LockedUntil,
    RunAfter,
    CreatedAt,
    UpdatedAt,
}

const CHECKOUT_COLUMNS: [Checkouts; 16] = [
    Checkouts::Id,
    Checkouts::CustomerId,
    Checkouts::OfferId,
    Checkouts::PriceId,
    Checkouts::PaymentMethodId,
    Checkouts::Status,
    Checkouts::FailureCode,
    Checkouts::SubscriptionId,
    Checkouts::PaymentId,
    Checkouts::NextAction,
    Checkouts::CorrelationId,
    Checkouts::LockedUntil,
    Checkouts::RunAfter,
    Checkouts::CreatedAt,
    Checkouts::UpdatedAt,
    Checkouts::Environment,
];

/// A checkout as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckoutRow {
    pub id: String,
    pub customer_id: String,
    pub offer_id: String,
    pub price_id: String,
    pub payment_method_id: Option<String>,
    /// `processing`, `requires_action`, `succeeded` or `failed`.
    pub status: String,
    pub failure_code: Option<String>,
    pub subscription_id: Option<String>,
    pub payment_id: Option<String>,
    /// The PSP's next action while `requires_action` (JSON text).
    pub next_action: Option<String>,
    pub correlation_id: String,
    /// The lease of the runner working on the job: no other runner starts it before this.
    pub locked_until: Option<DateTime<Utc>>,
    /// The worker does not run the job before this (a run left it waiting).
    pub run_after: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Adds a checkout.
pub async fn insert_checkout(tx: &mut TenantTx, c: &CheckoutRow) -> Result<()> {
    insert_checkouts(tx, std::slice::from_ref(c)).await
}

/// Writes new checkouts with one statement (checkouts written together).
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_checkouts(tx: &mut TenantTx, rows: &[CheckoutRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols = CHECKOUT_COLUMNS.to_vec();
    cols.push(Checkouts::TenantId);
    let mut q = Query::insert().into_table(Checkouts::Table).columns(cols).to_owned();
    for c in rows {
        q.values_panic([
            c.id.clone().into(),
            c.customer_id.clone().into(),
            c.offer_id.clone().into(),
            c.price_id.clone().into(),
            c.payment_method_id.clone().into(),
            c.status.clone().into(),
            c.failure_code.clone().into(),
            c.subscription_id.clone().into(),
            c.payment_id.clone().into(),
            c.next_action.clone().into(),
            c.correlation_id.clone().into(),
            c.locked_until.into(),
            c.run_after.into(),
            c.created_at.into(),
            c.updated_at.into(),
            tx.scope().environment().as_str().into(),
            tx.scope().tenant_id().to_string().into(),
        ]);
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// Writes a checkout's progress while it is in progress: `false` (nothing written) when it has
/// ended meanwhile (`succeeded` or `failed` stand).
pub async fn update_checkout(tx: &mut TenantTx, c: &CheckoutRow) -> Result<bool> {
    let q = Query::update()
        .table(Checkouts::Table)
        .values([
            (Checkouts::Status, c.status.clone().into()),
            (Checkouts::FailureCode, c.failure_code.clone().into()),
            (Checkouts::SubscriptionId, c.subscription_id.clone().into()),
            (Checkouts::PaymentId, c.payment_id.clone().into()),
            (Checkouts::NextAction, c.next_action.clone().into()),
            (Checkouts::LockedUntil, c.locked_until.into()),
            (Checkouts::RunAfter, c.run_after.into()),
            (Checkouts::UpdatedAt, c.updated_at.into()),
        ])
        .cond_where(tx.in_scope(Checkouts::TenantId, Checkouts::Environment))
        .and_where(Expr::col(Checkouts::Id).eq(c.id.clone()))
        .and_where(Expr::col(Checkouts::Status).is_in(IN_PROGRESS))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

/// A checkout's states while its job is not done.
const IN_PROGRESS: [&str; 2] = ["processing", "requires_action"];

/// A checkout that succeeded: the subscription it created and the payment that paid for it.
#[derive(Debug, Clone)]
pub struct Succeeded {
    pub checkout_id: String,
    pub subscription_id: String,
    pub payment_id: Option<String>,
}

/// Marks checkouts `succeeded` (`rows` not empty; a batch settled at once): each with its
/// subscription and payment, no next action, `updated_at` = `now`, each only while it is still
/// in progress.
fn succeed_update(tx: &TenantTx, rows: &[Succeeded], now: DateTime<Utc>) -> sea_query::UpdateStatement {
    let by_id = |value: &dyn Fn(&Succeeded) -> sea_query::SimpleExpr, otherwise: Checkouts| {
        crate::case_by_id(Checkouts::Id, rows, |r| r.checkout_id.clone(), value, Expr::col(otherwise).into())
    };
    Query::update()
        .table(Checkouts::Table)
        .values([
            (Checkouts::Status, "succeeded".into()),
            (Checkouts::FailureCode, Option::<String>::None.into()),
            (
                Checkouts::SubscriptionId,
                by_id(&|r| r.subscription_id.clone().into(), Checkouts::SubscriptionId),
            ),
            (Checkouts::PaymentId, by_id(&|r| r.payment_id.clone().into(), Checkouts::PaymentId)),
            (Checkouts::NextAction, Option::<String>::None.into()),
            (Checkouts::UpdatedAt, now.into()),
        ])
        .cond_where(tx.in_scope(Checkouts::TenantId, Checkouts::Environment))
        .and_where(Expr::col(Checkouts::Id).is_in(rows.iter().map(|r| r.checkout_id.clone())))
        .and_where(Expr::col(Checkouts::Status).is_in(IN_PROGRESS))
        .to_owned()
}

/// How [`settle_captured`] found its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleWritten {
    /// Payments recorded `captured` (each only while it was `pending`).
    pub captured: u64,
    /// Checkouts marked `succeeded` (each only while it was in progress).
    pub succeeded: u64,
}

/// The writes of checkouts settled together after their first charges were captured, in one
/// round trip on PostgreSQL ([`crate::exec::Tx::execute_together`]): each payment recorded
/// `captured` as [`crate::payments::captured_many`] does, the subscriptions added, what they
/// grant recorded, and each checkout marked `succeeded` (only while in progress). Answers
/// how many payments and checkouts it moved: the caller rolls back unless it moved every one.
/// A unique violation (a live subscription of the family, a checkout's second) fails the whole
/// statement, as it fails [`insert_subscriptions`]. Every slice but `grants` holds at least one.
pub async fn settle_captured(
    tx: &mut TenantTx,
    payments: &[crate::payments::PaymentRow],
    subscriptions: &[SubscriptionRow],
    grants: &[(&str, &str, &[Grant])],
    succeeded: &[Succeeded],
    now: DateTime<Utc>,
) -> Result<SettleWritten> {
    if payments.is_empty() || subscriptions.is_empty() || succeeded.is_empty() {
        return Err(crate::StoreError::Corrupt("a settle with nothing to settle".into()));
    }
    let captured = crate::payments::captured_update(tx, payments, now);
    let inserted = subscriptions_insert(tx, subscriptions);
    let granted = grants_insert(tx, grants);
    let marked = succeed_update(tx, succeeded, now);
    let mut parts: Vec<&dyn crate::exec::Part> = vec![&captured, &inserted];
    if let Some(g) = &granted {
        parts.push(g);
    }
    parts.push(&marked);
    tx.writes += 1;
    let counts = tx.tx.execute_together(&parts).await?;
    Ok(SettleWritten {
        captured: counts.first().copied().unwrap_or_default(),
        succeeded: counts.last().copied().unwrap_or_default(),
    })
}

/// Takes the lease of a checkout's job until `until`: `false` when it is not in progress or
/// another runner's lease has not run out. A run left waiting ([`defer_checkout`]) may be taken
/// before its `run_after` (a PSP webhook about its payment). Scheduling, not the checkout's
/// data: not journaled.
pub async fn claim_checkout(
    tx: &mut TenantTx,
    id: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool> {
    let q = Query::update()
        .table(Checkouts::Table)
        .value(Checkouts::LockedUntil, until)
        .cond_where(tx.in_scope(Checkouts::TenantId, Checkouts::Environment))
        .and_where(Expr::col(Checkouts::Id).eq(id))
        .and_where(Expr::col(Checkouts::Status).is_in(IN_PROGRESS))
        .cond_where(
            sea_query::Cond::any()
                .add(Expr::col(Checkouts::LockedUntil).is_null())
                .add(Expr::col(Checkouts::LockedUntil).lt(now)),
        )
        .to_owned();
    Ok(tx.tx.execute(&q).await? == 1)
}

fn select_checkouts(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(CHECKOUT_COLUMNS[..CHECKOUT_COLUMNS.len() - 1].to_vec())
        .from(Checkouts::Table)
        .cond_where(tx.in_scope(Checkouts::TenantId, Checkouts::Environment))
        .to_owned()
}

/// One checkout.
pub async fn get_checkout(tx: &mut TenantTx, id: &str) -> Result<Option<CheckoutRow>> {
    let q = select_checkouts(tx).and_where(Expr::col(Checkouts::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<CheckoutRow>(&q).await
}

/// Which of the checkouts `ids` exist (in the transaction's tenant environment).
pub async fn existing_checkouts(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = Query::select()
        .column(Checkouts::Id)
        .from(Checkouts::Table)
        .cond_where(tx.in_scope(Checkouts::TenantId, Checkouts::Environment))
        .and_where(Expr::col(Checkouts::Id).is_in(ids.iter().cloned()))
        .to_owned();
    let rows: Vec<(String,)> = tx.tx.fetch_all(&q).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Leaves a checkout's job until `until` and gives up the lease: the worker does not look at it
/// before (scheduling, not the checkout's data: not journaled).
pub async fn defer_checkout(tx: &mut TenantTx, id: &str, until: DateTime<Utc>) -> Result<()> {
    let q = Query::update()
        .table(Checkouts::Table)
        .value(Checkouts::RunAfter, until)
        .value(Checkouts::LockedUntil, Option::<DateTime<Utc>>::None)
        .cond_where(tx.in_scope(Checkouts::TenantId, Checkouts::Environment))
        .and_where(Expr::col(Checkouts::Id).eq(id))
        // An ended checkout has no job to schedule.
        .and_where(Expr::col(Checkouts::Status).is_in(IN_PROGRESS))
        .to_owned();
    tx.tx.execute(&q).await?;
    Ok(())
}

/// Checkouts whose job is due: in progress, not left until later, and no runner's lease on
/// them (oldest first).
pub async fn due_checkouts(tx: &mut TenantTx, now: DateTime<Utc>, limit: u64) -> Result<Vec<CheckoutRow>> {
    let q = select_checkouts(tx)
        .and_where(Expr::col(Checkouts::Status).is_in(IN_PROGRESS))
        .cond_where(
            sea_query::Cond::any()
                .add(Expr::col(Checkouts::LockedUntil).is_null())
                .add(Expr::col(Checkouts::LockedUntil).lt(now)),
        )
        .cond_where(
            sea_query::Cond::any()
                .add(Expr::col(Checkouts::RunAfter).is_null())
                .add(Expr::col(Checkouts::RunAfter).lt(now)),
        )
        .order_by(Checkouts::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    tx.tx.fetch_all::<CheckoutRow>(&q).await
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

#[derive(Iden, Clone, Copy)]
enum Subscriptions {
    Table,
    TenantId,
    Environment,
    Id,
    CustomerId,
    StorefrontId,
    BundleId,
    Family,
    PriceId,
    PriceVersion,
    Amount,
    Currency,
    PeriodUnit,
    PeriodCount,
    Status,
    Anchor,
    PeriodStart,
    PeriodEnd,
    Periods,
    TrialEnd,
    HadTrial,
    EndsAt,
    CanceledImmediately,
    PausedAt,
    PaymentMethodId,
    CancelReason,
    CheckoutId,
    CreatedAt,
    UpdatedAt,
    DunningAttempts,
    NextRetryAt,
    GraceExtendedUntil,
}

const SUB_COLUMNS: [Subscriptions; 30] = [
    Subscriptions::Id,
    Subscriptions::CustomerId,
    Subscriptions::StorefrontId,
    Subscriptions::BundleId,
    Subscriptions::Family,
    Subscriptions::PriceId,
    Subscriptions::PriceVersion,
    Subscriptions::Amount,
    Subscriptions::Currency,
    Subscriptions::PeriodUnit,
    Subscriptions::PeriodCount,
    Subscriptions::Status,
    Subscriptions::Anchor,
    Subscriptions::PeriodStart,
    Subscriptions::PeriodEnd,
    Subscriptions::Periods,
    Subscriptions::TrialEnd,
    Subscriptions::HadTrial,
    Subscriptions::EndsAt,
    Subscriptions::CanceledImmediately,
    Subscriptions::PausedAt,
    Subscriptions::PaymentMethodId,
    Subscriptions::CancelReason,
    Subscriptions::CheckoutId,
    Subscriptions::CreatedAt,
    Subscriptions::UpdatedAt,
    Subscriptions::DunningAttempts,
    Subscriptions::NextRetryAt,
    Subscriptions::GraceExtendedUntil,
    Subscriptions::Environment,
];

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub id: String,
    pub customer_id: String,
    pub storefront_id: String,
    pub bundle_id: String,
    pub family: String,
    pub price_id: String,
    pub price_version: i32,
    pub amount: i64,
    pub currency: String,
    pub period_unit: String,
    pub period_count: i32,
    pub status: String,
    pub anchor: DateTime<Utc>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub periods: i32,
    pub trial_end: Option<DateTime<Utc>>,
    /// Whether it started with a trial (eligibility: one trial per family).
    pub had_trial: bool,
    pub ends_at: Option<DateTime<Utc>>,
    pub canceled_immediately: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub payment_method_id: Option<String>,
    pub cancel_reason: Option<String>,
    pub checkout_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Failed retries of the current period (dunning).
    pub dunning_attempts: i32,
    /// Past due: when dunning charges again. Active or past due whose renewal was deferred (safe
    /// mode, PSP down): when the scheduler offers it again. Trialing: when a conversion the PSP
    /// could not take is tried again.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Past due with its retry deferred (safe mode, PSP down): access lasts at least until then.
    pub grace_extended_until: Option<DateTime<Utc>>,
}

fn sub_values(s: &SubscriptionRow) -> Vec<sea_query::SimpleExpr> {
    vec![
        s.id.clone().into(),
        s.customer_id.clone().into(),
        s.storefront_id.clone().into(),
        s.bundle_id.clone().into(),
        s.family.clone().into(),
        s.price_id.clone().into(),
        s.price_version.into(),
        s.amount.into(),
        s.currency.clone().into(),
        s.period_unit.clone().into(),
        s.period_count.into(),
        s.status.clone().into(),
        s.anchor.into(),
        s.period_start.into(),
        s.period_end.into(),
        s.periods.into(),
        s.trial_end.into(),
        s.had_trial.into(),
        s.ends_at.into(),
        s.canceled_immediately.into(),
        s.paused_at.into(),
        s.payment_method_id.clone().into(),
        s.cancel_reason.clone().into(),
        s.checkout_id.clone().into(),
        s.created_at.into(),
        s.updated_at.into(),
        s.dunning_attempts.into(),
        s.next_retry_at.into(),
        s.grace_extended_until.into(),
    ]
}

/// Adds a subscription; a second one for the same checkout is a unique violation.
pub async fn insert_subscription(tx: &mut TenantTx, s: &SubscriptionRow) -> Result<()> {
    insert_subscriptions(tx, std::slice::from_ref(s)).await
}

/// Adds many subscriptions in one statement (a batch of checkouts settled at once). Any unique
/// violation (a live subscription of the family, a checkout's second) is
/// [`crate::StoreError::UniqueViolation`] for the whole statement.
pub async fn insert_subscriptions(tx: &mut TenantTx, rows: &[SubscriptionRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    tx.write(&subscriptions_insert(tx, rows)).await?;
    Ok(())
}

/// The `INSERT` of [`insert_subscriptions`] (`rows` not empty).
fn subscriptions_insert(tx: &TenantTx, rows: &[SubscriptionRow]) -> sea_query::InsertStatement {
    let mut cols = SUB_COLUMNS.to_vec();
    cols.push(Subscriptions::TenantId);
    let mut q = Query::insert().into_table(Subscriptions::Table).columns(cols).to_owned();
    for s in rows {
        let mut v = sub_values(s);
        v.push(tx.scope().environment().as_str().into());
        v.push(tx.scope().tenant_id().to_string().into());
        q.values_panic(v);
    }
    q
}

/// Writes a subscription's lifecycle fields and its plan (bundle, price, amount: a replace
/// changes them), only if it is still as `expected_updated_at` says (optimistic concurrency):
/// `false` when someone else changed it first.
pub async fn update_subscription(
    tx: &mut TenantTx,
    s: &SubscriptionRow,
    expected_updated_at: DateTime<Utc>,
) -> Result<bool> {
    let q = Query::update()
        .table(Subscriptions::Table)
        .values([
            (Subscriptions::Status, s.status.clone().into()),
            (Subscriptions::Anchor, s.anchor.into()),
            (Subscriptions::PeriodStart, s.period_start.into()),
            (Subscriptions::PeriodEnd, s.period_end.into()),
            (Subscriptions::Periods, s.periods.into()),
            (Subscriptions::TrialEnd, s.trial_end.into()),
            (Subscriptions::EndsAt, s.ends_at.into()),
            (Subscriptions::CanceledImmediately, s.canceled_immediately.into()),
            (Subscriptions::PausedAt, s.paused_at.into()),
            (Subscriptions::PaymentMethodId, s.payment_method_id.clone().into()),
            (Subscriptions::CancelReason, s.cancel_reason.clone().into()),
            (Subscriptions::UpdatedAt, s.updated_at.into()),
            (Subscriptions::DunningAttempts, s.dunning_attempts.into()),
            (Subscriptions::NextRetryAt, s.next_retry_at.into()),
            (Subscriptions::GraceExtendedUntil, s.grace_extended_until.into()),
            (Subscriptions::BundleId, s.bundle_id.clone().into()),
            (Subscriptions::PriceId, s.price_id.clone().into()),
            (Subscriptions::PriceVersion, s.price_version.into()),
            (Subscriptions::Amount, s.amount.into()),
        ])
        .cond_where(tx.in_scope(Subscriptions::TenantId, Subscriptions::Environment))
        .and_where(Expr::col(Subscriptions::Id).eq(s.id.clone()))
        .and_where(Expr::col(Subscriptions::UpdatedAt).eq(expected_updated_at))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

fn select_subs(tx: &TenantTx) -> SelectStatement {
    Query::select()
        // Every column but the environment (last).
        .columns(SUB_COLUMNS[..SUB_COLUMNS.len() - 1].to_vec())
        .from(Subscriptions::Table)
        .cond_where(tx.in_scope(Subscriptions::TenantId, Subscriptions::Environment))
        .to_owned()
}

/// The subscriptions of `ids` that exist (in no particular order): a renewal batch's, in one
/// statement.
pub async fn get_subscriptions(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<SubscriptionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_subs(tx).and_where(Expr::col(Subscriptions::Id).is_in(ids.iter().cloned())).to_owned();
    tx.tx.fetch_all::<SubscriptionRow>(&q).await
}

/// One subscription of [`renew_many`]: its id, the `updated_at` it must still have, and the end
/// of its new period.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub id: String,
    pub expected_updated_at: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// Renews many `active` subscriptions in one statement: each moves on by one period — its new
/// period starts where the old one ended, ends at its [`Renewal`]'s new
/// end, `periods` one more — stays `active` with no dunning state left, `updated_at` = `now`;
/// each only if it is still `active` and as its expected `updated_at` says (optimistic
/// concurrency, as [`update_subscription`]). Returns the ids of those it renewed (not those
/// someone else changed first). Only the new end differs per row (one `CASE`, and one for the
/// expected `updated_at`), so the statement costs little more than its rows.
pub async fn renew_many(tx: &mut TenantTx, rows: &[Renewal], now: DateTime<Utc>) -> Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let by_id = |value: &dyn Fn(&Renewal) -> sea_query::SimpleExpr, otherwise: sea_query::SimpleExpr| {
        crate::case_by_id(Subscriptions::Id, rows, |r| r.id.clone(), value, otherwise)
    };
    let q =
        Query::update()
            .table(Subscriptions::Table)
            .values([
                (Subscriptions::Status, "active".into()),
                (Subscriptions::PeriodStart, Expr::col(Subscriptions::PeriodEnd).into()),
                (
                    Subscriptions::PeriodEnd,
                    by_id(&|r| r.period_end.into(), Expr::col(Subscriptions::PeriodEnd).into()),
                ),
                (Subscriptions::Periods, Expr::col(Subscriptions::Periods).add(1)),
                (Subscriptions::UpdatedAt, now.into()),
                (Subscriptions::DunningAttempts, 0.into()),
                (Subscriptions::NextRetryAt, Option::<DateTime<Utc>>::None.into()),
                (Subscriptions::GraceExtendedUntil, Option::<DateTime<Utc>>::None.into()),
            ])
            .cond_where(tx.in_scope(Subscriptions::TenantId, Subscriptions::Environment))
            .and_where(Expr::col(Subscriptions::Id).is_in(rows.iter().map(|r| r.id.clone())))
            .and_where(Expr::col(Subscriptions::Status).eq("active"))
            .and_where(Expr::col(Subscriptions::UpdatedAt).eq(by_id(
                &|r| r.expected_updated_at.into(),
                Expr::val(Option::<DateTime<Utc>>::None).into(),
            )))
            .returning_col(Subscriptions::Id)
            .to_owned();
    tx.writes += 1;
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(id,)| id).collect())
}

/// One subscription.
pub async fn get_subscription(tx: &mut TenantTx, id: &str) -> Result<Option<SubscriptionRow>> {
    let q = select_subs(tx).and_where(Expr::col(Subscriptions::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<SubscriptionRow>(&q).await
}

/// The subscription a checkout created.
pub async fn subscription_of_checkout(
    tx: &mut TenantTx,
    checkout_id: &str,
) -> Result<Option<SubscriptionRow>> {
    let q = select_subs(tx).and_where(Expr::col(Subscriptions::CheckoutId).eq(checkout_id)).to_owned();
    tx.tx.fetch_optional::<SubscriptionRow>(&q).await
}

/// Filters of a subscription list.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionFilter<'a> {
    pub customer_id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub storefront_id: Option<&'a str>,
    pub family: Option<&'a str>,
    /// Only these storefronts (a restricted API key).
    pub storefronts: Option<&'a [String]>,
}

/// Every subscription of the customers of `ids` (any family, any state), in id order: what a
/// batch of checkouts of those customers reads their family histories from.
pub async fn subscriptions_of_customers(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<SubscriptionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_subs(tx)
        .and_where(Expr::col(Subscriptions::CustomerId).is_in(ids.iter().cloned()))
        .order_by(Subscriptions::Id, Order::Asc)
        .to_owned();
    tx.tx.fetch_all::<SubscriptionRow>(&q).await
}

/// Subscriptions in id order after `starting_after`.
pub async fn list_subscriptions(
    tx: &mut TenantTx,
    f: &SubscriptionFilter<'_>,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<SubscriptionRow>, bool)> {
    let mut q =
        select_subs(tx).order_by(Subscriptions::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(a) = starting_after {
        q.and_where(Expr::col(Subscriptions::Id).gt(a));
    }
    if let Some(c) = f.customer_id {
        q.and_where(Expr::col(Subscriptions::CustomerId).eq(c));
    }
    if let Some(s) = f.status {
        q.and_where(Expr::col(Subscriptions::Status).eq(s));
    }
    if let Some(s) = f.storefront_id {
        q.and_where(Expr::col(Subscriptions::StorefrontId).eq(s));
    }
    if let Some(s) = f.family {
        q.and_where(Expr::col(Subscriptions::Family).eq(s));
    }
    if let Some(s) = f.storefronts {
        q.and_where(Expr::col(Subscriptions::StorefrontId).is_in(s.iter().cloned()));
    }
    let mut rows = tx.tx.fetch_all::<SubscriptionRow>(&q).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

/// Subscriptions whose renewal is due at `now`, up to `limit`: past-due ones whose retry is due
/// (longest waiting first, up to a quarter of `limit`, so that retries are not starved by a
/// backlog), active ones whose deferred renewal's retry has come (up to half of the rest),
/// then active ones whose period ended and that were never deferred (earliest first, in no set
/// order among equal ends). Each part is a range of an index in the order it reads
/// ([`due_queries`]): a scan ordered by id instead walked every subscription renewed already
/// before it found the due ones (tens of thousands of pages per call in a backlog of 100,000),
/// and one filtering out deferred renewals walked all of them (a whole tenant's in safe mode).
pub async fn due_renewals(tx: &mut TenantTx, now: DateTime<Utc>, limit: u64) -> Result<Vec<SubscriptionRow>> {
    let (tenant, env) = (tx.scope().tenant_id().to_string(), tx.scope().environment().as_str());
    let [mut retries, mut deferred, mut fresh] = due_queries(&tenant, env, now);
    let mut due = tx.tx.fetch_all::<SubscriptionRow>(&retries.limit(limit.div_ceil(4)).to_owned()).await?;
    let rest = limit.saturating_sub(due.len() as u64);
    due.extend(tx.tx.fetch_all::<SubscriptionRow>(&deferred.limit(rest.div_ceil(2)).to_owned()).await?);
    let rest = limit.saturating_sub(due.len() as u64);
    due.extend(tx.tx.fetch_all::<SubscriptionRow>(&fresh.limit(rest).to_owned()).await?);
    Ok(due)
}

/// [`due_renewals`]' three reads, each walking an index in its own order so that it stops at
/// its limit, however many subscriptions wait for a later retry (a safe-mode pause can defer
/// every renewal of a tenant): past-due retries whose time has come (`subscriptions_retry_idx`,
/// by retry time), deferred renewals whose retry has come (the same index), and renewals never
/// deferred whose period has ended (`subscriptions_due_fresh_idx`, by period end — a tie-break
/// on id would sort every due one first: in a backlog they share one period end).
fn due_queries(tenant: &str, env: &str, now: DateTime<Utc>) -> [SelectStatement; 3] {
    let base = || {
        Query::select()
            .columns(SUB_COLUMNS[..SUB_COLUMNS.len() - 1].to_vec())
            .from(Subscriptions::Table)
            .and_where(Expr::col(Subscriptions::TenantId).eq(tenant))
            .and_where(Expr::col(Subscriptions::Environment).eq(env))
            .to_owned()
    };
    let retries = base()
        .and_where(Expr::col(Subscriptions::Status).eq("past_due"))
        .and_where(Expr::col(Subscriptions::NextRetryAt).is_not_null())
        .and_where(Expr::col(Subscriptions::NextRetryAt).lte(now))
        .order_by(Subscriptions::NextRetryAt, Order::Asc)
        .to_owned();
    let deferred = base()
        .and_where(Expr::col(Subscriptions::Status).eq("active"))
        .and_where(Expr::col(Subscriptions::NextRetryAt).is_not_null())
        .and_where(Expr::col(Subscriptions::NextRetryAt).lte(now))
        .and_where(Expr::col(Subscriptions::PeriodEnd).lte(now))
        .order_by(Subscriptions::NextRetryAt, Order::Asc)
        .to_owned();
    let fresh = base()
        .and_where(Expr::col(Subscriptions::Status).eq("active"))
        .and_where(Expr::col(Subscriptions::NextRetryAt).is_null())
        .and_where(Expr::col(Subscriptions::PeriodEnd).lte(now))
        .order_by(Subscriptions::PeriodEnd, Order::Asc)
        .to_owned();
    [retries, deferred, fresh]
}

/// Subscriptions in `status` whose `column` (a date) has come: trial ends, cancellation ends.
/// A trial whose conversion waits for its retry (`next_retry_at` still ahead) is not due yet.
pub async fn due(
    tx: &mut TenantTx,
    status: &str,
    trial: bool,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<SubscriptionRow>> {
    let col = if trial { Subscriptions::TrialEnd } else { Subscriptions::EndsAt };
    let mut q = select_subs(tx)
        .and_where(Expr::col(Subscriptions::Status).eq(status))
        .and_where(Expr::col(col).lte(now))
        .order_by(Subscriptions::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    if trial {
        q.cond_where(
            sea_query::Cond::any()
                .add(Expr::col(Subscriptions::NextRetryAt).is_null())
                .add(Expr::col(Subscriptions::NextRetryAt).lte(now)),
        );
    }
    tx.tx.fetch_all::<SubscriptionRow>(&q).await
}

// ---------------------------------------------------------------------------------------------
// Entitlement grants

#[derive(Iden, Clone, Copy)]
enum EntitlementGrants {
    Table,
    TenantId,
    Environment,
    SubscriptionId,
    CustomerId,
    EntitlementKey,
    Kind,
    Quantity,
    Unit,
}

#[derive(Iden, Clone, Copy)]
enum Storefronts {
    Table,
    TenantId,
    Environment,
    Id,
    Dunning,
}

/// One entitlement a subscription grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub entitlement_key: String,
    /// `boolean` or `quantity`.
    pub kind: String,
    pub quantity: Option<i64>,
    pub unit: Option<String>,
}

/// Records what a subscription grants.
pub async fn insert_grants(
    tx: &mut TenantTx,
    subscription_id: &str,
    customer_id: &str,
    grants: &[Grant],
) -> Result<()> {
    insert_grants_of(tx, &[(subscription_id, customer_id, grants)]).await
}

/// Records what many subscriptions grant, in one statement: (subscription id, its customer's
/// id, its grants) each.
pub async fn insert_grants_of(tx: &mut TenantTx, of: &[(&str, &str, &[Grant])]) -> Result<()> {
    if let Some(q) = grants_insert(tx, of) {
        tx.write(&q).await?;
    }
    Ok(())
}

/// The `INSERT` of [`insert_grants_of`]; `None` when nothing is granted.
fn grants_insert(tx: &TenantTx, of: &[(&str, &str, &[Grant])]) -> Option<sea_query::InsertStatement> {
    if of.iter().all(|(.., grants)| grants.is_empty()) {
        return None;
    }
    let mut q = Query::insert()
        .into_table(EntitlementGrants::Table)
        .columns([
            EntitlementGrants::TenantId,
            EntitlementGrants::Environment,
            EntitlementGrants::SubscriptionId,
            EntitlementGrants::CustomerId,
            EntitlementGrants::EntitlementKey,
            EntitlementGrants::Kind,
            EntitlementGrants::Quantity,
            EntitlementGrants::Unit,
        ])
        .to_owned();
    for (subscription_id, customer_id, grants) in of {
        for g in grants.iter() {
            q.values_panic([
                tx.scope().tenant_id().to_string().into(),
                tx.scope().environment().as_str().into(),
                (*subscription_id).into(),
                (*customer_id).into(),
                g.entitlement_key.clone().into(),
                g.kind.clone().into(),
                g.quantity.into(),
                g.unit.clone().into(),
            ]);
        }
    }
    Some(q)
}

/// Removes what a subscription grants (a plan change grants the new bundle's instead): the
/// entitlement keys it granted, sorted.
pub async fn delete_grants(tx: &mut TenantTx, subscription_id: &str) -> Result<Vec<String>> {
    let q = Query::delete()
        .from_table(EntitlementGrants::Table)
        .cond_where(tx.in_scope(EntitlementGrants::TenantId, EntitlementGrants::Environment))
        .and_where(Expr::col(EntitlementGrants::SubscriptionId).eq(subscription_id))
        .returning_col(EntitlementGrants::EntitlementKey)
        .to_owned();
    tx.writes += 1;
    let mut keys: Vec<String> = tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(k,)| k).collect();
    keys.sort();
    Ok(keys)
}

/// A grant with the state of the subscription behind it and its storefront's dunning policy
/// (what access during `past_due` depends on).
#[derive(Debug, Clone, PartialEq)]
pub struct GrantState {
    pub entitlement_key: String,
    pub kind: String,
    pub quantity: Option<i64>,
    pub unit: Option<String>,
    pub subscription_id: String,
    /// The subscription's storefront (a credential restricted to others does not see it).
    pub storefront_id: String,
    pub status: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub periods: i32,
    pub anchor: DateTime<Utc>,
    pub trial_end: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub canceled_immediately: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub grace_extended_until: Option<DateTime<Utc>>,
    /// Decoded once, when the row is read: cached states are used as they are.
    pub dunning: DunningPolicy,
}

/// A row of [`grants_of`]: the customer, left-joined with a grant (none: nothing granted) and
/// its subscription (none: expired) and storefront.
#[derive(sqlx::FromRow)]
struct GrantRow {
    entitlement_key: Option<String>,
    kind: Option<String>,
    quantity: Option<i64>,
    unit: Option<String>,
    subscription_id: Option<String>,
    storefront_id: Option<String>,
    status: Option<String>,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
    periods: Option<i32>,
    anchor: Option<DateTime<Utc>>,
    trial_end: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    canceled_immediately: Option<bool>,
    paused_at: Option<DateTime<Utc>>,
    grace_extended_until: Option<DateTime<Utc>>,
    #[sqlx(json(nullable))]
    dunning: Option<Value>,
}

impl GrantRow {
    /// The grant, if the row has one whose subscription has not expired.
    fn into_state(self) -> Option<GrantState> {
        Some(GrantState {
            entitlement_key: self.entitlement_key?,
            kind: self.kind?,
            quantity: self.quantity,
            unit: self.unit,
            subscription_id: self.subscription_id?,
            storefront_id: self.storefront_id?,
            status: self.status?,
            period_start: self.period_start?,
            period_end: self.period_end?,
            periods: self.periods?,
            anchor: self.anchor?,
            trial_end: self.trial_end,
            ends_at: self.ends_at,
            canceled_immediately: self.canceled_immediately?,
            paused_at: self.paused_at,
            grace_extended_until: self.grace_extended_until,
            // A policy that no longer decodes counts as the default one.
            dunning: serde_json::from_value(self.dunning?).unwrap_or_default(),
        })
    }
}

/// A customer's grants (one entitlement's, when `key` is given) with their subscriptions'
/// state, in one query, by key then subscription: the hottest read path. `None` if there is no
/// such customer: the query starts from the customer, so an entitlement not held is told from an
/// unknown customer without a second query.
pub async fn grants_of(
    tx: &mut TenantTx,
    customer_id: &str,
    key: Option<&str>,
) -> Result<Option<Vec<GrantState>>> {
    let tenant = tx.scope().tenant_id().to_string();
    let q = grants_query(&tenant, tx.scope().environment().as_str(), customer_id, key);
    let rows = tx.tx.fetch_all::<GrantRow>(&q).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    // Sorted here, not by the query: asked for one key, an ORDER BY (key, subscription) can be
    // served by the primary key's order (tenant, environment, subscription, key), and SQLite
    // then preferred scanning every grant of the environment to the customer's index.
    let mut grants: Vec<GrantState> = rows.into_iter().filter_map(GrantRow::into_state).collect();
    grants.sort_by(|a, b| {
        (&a.entitlement_key, &a.subscription_id).cmp(&(&b.entitlement_key, &b.subscription_id))
    });
    Ok(Some(grants))
}

/// Every grant of a customer with its subscription's state, from this process's cache when it
/// holds them (see [`crate::cache`]), else read in a read-only transaction of the scope; `None`
/// when the customer does not exist (not cached).
///
/// Requests that miss one customer at once read it once: the first leads the read, the others
/// wait for it and take what it stored; if it stored nothing (the read failed, the customer does
/// not exist, a change overtook the read, the request was dropped), each reads for itself.
pub async fn grants_of_customer(
    db: &crate::Db,
    scope: &TenantScope,
    customer_id: &str,
) -> Result<Option<Arc<Vec<GrantState>>>> {
    let key = (scope.tenant_id(), scope.environment(), customer_id.to_owned());
    if let Some(g) = db.cache.grants(&key) {
        return Ok(Some(g));
    }
    // Held until this request's read is over: its waiters then look in the cache.
    let _lead = crate::cache::Flight::join(db.cache.grants_flight(&key)).await;
    // A leader looks again too: the previous leader may have stored them since this missed.
    if let Some(g) = db.cache.grants(&key) {
        return Ok(Some(g));
    }
    let ticket = db.cache.ticket();
    #[cfg(any(test, feature = "testing"))]
    db.cache.grant_loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut tx = db.tenant_read_tx(scope).await?;
    let grants = grants_of(&mut tx, customer_id, None).await?;
    tx.commit().await?;
    let Some(grants) = grants else { return Ok(None) };
    let grants = Arc::new(grants);
    if let Some(t) = ticket {
        db.cache.store_grants(t, key, grants.clone());
    }
    Ok(Some(grants))
}

/// The statement of [`grants_of`].
fn grants_query(tenant: &str, env: &str, customer_id: &str, key: Option<&str>) -> SelectStatement {
    let c = Customers::Table;
    let g = EntitlementGrants::Table;
    let s = Subscriptions::Table;
    let st = Storefronts::Table;
    let mut grant = Expr::col((g, EntitlementGrants::TenantId))
        .equals((c, Customers::TenantId))
        .and(Expr::col((g, EntitlementGrants::Environment)).equals((c, Customers::Environment)))
        .and(Expr::col((g, EntitlementGrants::CustomerId)).equals((c, Customers::Id)));
    if let Some(k) = key {
        grant = grant.and(Expr::col((g, EntitlementGrants::EntitlementKey)).eq(k));
    }
    Query::select()
        .columns([
            (g, EntitlementGrants::EntitlementKey),
            (g, EntitlementGrants::Kind),
            (g, EntitlementGrants::Quantity),
            (g, EntitlementGrants::Unit),
            (g, EntitlementGrants::SubscriptionId),
        ])
        .columns([
            (s, Subscriptions::StorefrontId),
            (s, Subscriptions::Status),
            (s, Subscriptions::PeriodStart),
            (s, Subscriptions::PeriodEnd),
            (s, Subscriptions::Periods),
            (s, Subscriptions::Anchor),
            (s, Subscriptions::TrialEnd),
            (s, Subscriptions::EndsAt),
            (s, Subscriptions::CanceledImmediately),
            (s, Subscriptions::PausedAt),
            (s, Subscriptions::GraceExtendedUntil),
        ])
        .column((st, Storefronts::Dunning))
        .from(c)
        .left_join(g, grant)
        .left_join(
            s,
            Expr::col((s, Subscriptions::TenantId))
                .equals((g, EntitlementGrants::TenantId))
                .and(Expr::col((s, Subscriptions::Environment)).equals((g, EntitlementGrants::Environment)))
                .and(Expr::col((s, Subscriptions::Id)).equals((g, EntitlementGrants::SubscriptionId)))
                .and(Expr::col((s, Subscriptions::Status)).ne("expired")),
        )
        .left_join(
            st,
            Expr::col((st, Storefronts::TenantId))
                .equals((s, Subscriptions::TenantId))
                .and(Expr::col((st, Storefronts::Environment)).equals((s, Subscriptions::Environment)))
                .and(Expr::col((st, Storefronts::Id)).equals((s, Subscriptions::StorefrontId))),
        )
        .and_where(Expr::col((c, Customers::TenantId)).eq(tenant))
        .and_where(Expr::col((c, Customers::Environment)).eq(env))
        .and_where(Expr::col((c, Customers::Id)).eq(customer_id))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use sea_query::SqliteQueryBuilder;
    use sea_query_binder::SqlxBinder;
    use sqlx::Row;

    use azotte_domain::catalog::DunningPolicy;
    use serde_json::json;

    use super::{grants_query, GrantRow, SelectStatement};
    use crate::exec::Tx;
    use crate::testing::migrated;
    use crate::{Backend, Db};

    /// The storefront's dunning policy is decoded when the row is read, into the typed policy the
    /// cache then holds; one that does not decode counts as the default.
    #[test]
    fn grant_rows_decode_the_dunning_policy_once() {
        let row = |dunning: serde_json::Value| {
            let now = chrono::Utc::now();
            GrantRow {
                entitlement_key: Some("hd".into()),
                kind: Some("boolean".into()),
                quantity: None,
                unit: None,
                subscription_id: Some("sub_1".into()),
                storefront_id: Some("sfr_1".into()),
                status: Some("past_due".into()),
                period_start: Some(now),
                period_end: Some(now),
                periods: Some(1),
                anchor: Some(now),
                trial_end: None,
                ends_at: None,
                canceled_immediately: Some(false),
                paused_at: None,
                grace_extended_until: None,
                dunning: Some(dunning),
            }
            .into_state()
            .unwrap()
            .dunning
        };
        let strict = row(json!({"grace_days": 3, "access_during_grace": false}));
        assert_eq!(strict, DunningPolicy { grace_days: 3, access_during_grace: false, ..Default::default() });
        assert_eq!(row(json!({"grace_days": "many"})), DunningPolicy::default());
    }

    /// SQLite's query plan of `q`: the `detail` column of `EXPLAIN QUERY PLAN`.
    async fn sqlite_plan(db: &Db, q: SelectStatement) -> Vec<String> {
        let (sql, values) = q.build_sqlx(SqliteQueryBuilder);
        let mut tx = db.unscoped_read_tx().await.unwrap();
        let Tx::Sqlite(conn) = &mut tx else { unreachable!("SQLite test") };
        sqlx::query_with(&format!("EXPLAIN QUERY PLAN {sql}"), values)
            .fetch_all(conn.conn().unwrap())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect()
    }

    /// The renewal scheduler's three reads each walk their index in the order they read, with
    /// no sort of everything that matches, and the deferred renewals are not in the range of
    /// the never-deferred ones (they used to be walked, and filtered out, at every tick).
    #[tokio::test]
    async fn sqlite_due_renewals_read_index_ranges_in_order() {
        let (_t, db) = migrated(Backend::Sqlite).await;
        let want = ["subscriptions_retry_idx", "subscriptions_retry_idx", "subscriptions_due_fresh_idx"];
        for (q, index) in super::due_queries("ten_x", "development", chrono::Utc::now()).into_iter().zip(want)
        {
            let plan = sqlite_plan(&db, q.to_owned().limit(10).to_owned()).await;
            assert!(
                plan.iter().any(|d| d.starts_with(&format!("SEARCH subscriptions USING INDEX {index}"))),
                "{plan:?}"
            );
            assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:?}");
        }
    }

    /// The entitlement check reads the customer's grants by the customer index, never every
    /// grant of the environment: without statistics SQLite chose the latter, in the primary
    /// key's order, when the query asked for that order (its cost grew with the environment).
    #[tokio::test]
    async fn sqlite_reads_a_customers_grants_by_the_customer_index() {
        let (_t, db) = migrated(Backend::Sqlite).await;
        for key in [Some("hd"), None] {
            let plan = sqlite_plan(&db, grants_query("ten_x", "development", "cus_x", key)).await;
            let grants: Vec<&String> = plan.iter().filter(|d| d.contains(" entitlement_grants ")).collect();
            assert_eq!(grants.len(), 1, "{plan:?}");
            assert!(
                grants[0]
                    .starts_with("SEARCH entitlement_grants USING INDEX entitlement_grants_customer_idx")
                    && grants[0].contains("customer_id=?"),
                "{plan:?}"
            );
        }
    }
}
