//! Plan changes (replace) as stored: the figures each was quoted and charged at, and where it
//! stands. At most one open change (`processing` or `scheduled`) per subscription, enforced
//! by a unique index.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};

use crate::{Result, TenantTx};

#[derive(Iden, Clone, Copy)]
enum SubscriptionReplacements {
    Table,
    TenantId,
    Environment,
    Id,
    SubscriptionId,
    OfferId,
    Policy,
    Kind,
    Status,
    FromPriceId,
    FromBundleId,
    FromAmount,
    ToPriceId,
    ToPriceVersion,
    ToBundleId,
    ToAmount,
    Credit,
    Charge,
    AmountDue,
    CreditUnused,
    PeriodEnd,
    EffectiveAt,
    RequestKey,
    PaymentId,
    FailureCode,
    CreatedAt,
    UpdatedAt,
}

use SubscriptionReplacements as R;

const COLUMNS: [R; 25] = [
    R::Id,
    R::SubscriptionId,
    R::OfferId,
    R::Policy,
    R::Kind,
    R::Status,
    R::FromPriceId,
    R::FromBundleId,
    R::FromAmount,
    R::ToPriceId,
    R::ToPriceVersion,
    R::ToBundleId,
    R::ToAmount,
    R::Credit,
    R::Charge,
    R::AmountDue,
    R::CreditUnused,
    R::PeriodEnd,
    R::EffectiveAt,
    R::RequestKey,
    R::PaymentId,
    R::FailureCode,
    R::CreatedAt,
    R::UpdatedAt,
    R::Environment,
];

/// A plan change as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReplacementRow {
    pub id: String,
    pub subscription_id: String,
    pub offer_id: String,
    /// `immediate_prorated` or `at_period_end`.
    pub policy: String,
    /// `upgrade`, `downgrade` or `switch`.
    pub kind: String,
    /// `processing`, `scheduled`, `applied`, `failed` or `superseded`.
    pub status: String,
    pub from_price_id: String,
    pub from_bundle_id: String,
    pub from_amount: i64,
    pub to_price_id: String,
    pub to_price_version: i32,
    pub to_bundle_id: String,
    pub to_amount: i64,
    pub credit: i64,
    pub charge: i64,
    pub amount_due: i64,
    pub credit_unused: i64,
    /// The end of the period the change was quoted in.
    pub period_end: DateTime<Utc>,
    pub effective_at: DateTime<Utc>,
    /// The payment's request key: a retry charges under the same one.
    pub request_key: String,
    pub payment_id: Option<String>,
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Adds a plan change; while the subscription has another open one this is a unique
/// violation (`subscription_replacements_open`).
pub async fn insert(tx: &mut TenantTx, r: &ReplacementRow) -> Result<()> {
    let mut cols = COLUMNS.to_vec();
    cols.push(R::TenantId);
    let v: Vec<sea_query::SimpleExpr> = vec![
        r.id.clone().into(),
        r.subscription_id.clone().into(),
        r.offer_id.clone().into(),
        r.policy.clone().into(),
        r.kind.clone().into(),
        r.status.clone().into(),
        r.from_price_id.clone().into(),
        r.from_bundle_id.clone().into(),
        r.from_amount.into(),
        r.to_price_id.clone().into(),
        r.to_price_version.into(),
        r.to_bundle_id.clone().into(),
        r.to_amount.into(),
        r.credit.into(),
        r.charge.into(),
        r.amount_due.into(),
        r.credit_unused.into(),
        r.period_end.into(),
        r.effective_at.into(),
        r.request_key.clone().into(),
        r.payment_id.clone().into(),
        r.failure_code.clone().into(),
        r.created_at.into(),
        r.updated_at.into(),
        tx.scope().environment().as_str().into(),
        tx.scope().tenant_id().to_string().into(),
    ];
    let q = Query::insert().into_table(R::Table).columns(cols).values_panic(v).to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Moves a plan change from status `from` to the row's status, payment and failure code;
/// `false` when it was no longer in `from` (someone else settled it first).
pub async fn settle(tx: &mut TenantTx, r: &ReplacementRow, from: &str) -> Result<bool> {
    let q = Query::update()
        .table(R::Table)
        .values([
            (R::Status, r.status.clone().into()),
            (R::PaymentId, r.payment_id.clone().into()),
            (R::FailureCode, r.failure_code.clone().into()),
            (R::EffectiveAt, r.effective_at.into()),
            (R::UpdatedAt, r.updated_at.into()),
        ])
        .cond_where(tx.in_scope(R::TenantId, R::Environment))
        .and_where(Expr::col(R::Id).eq(r.id.clone()))
        .and_where(Expr::col(R::Status).eq(from))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

fn select(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(COLUMNS[..24].to_vec())
        .from(R::Table)
        .cond_where(tx.in_scope(R::TenantId, R::Environment))
        .to_owned()
}

/// The subscription's open plan change (`processing` or `scheduled`), if any.
pub async fn open_of(tx: &mut TenantTx, subscription_id: &str) -> Result<Option<ReplacementRow>> {
    let q = select(tx)
        .and_where(Expr::col(R::SubscriptionId).eq(subscription_id))
        .and_where(Expr::col(R::Status).is_in(["processing", "scheduled"]))
        .to_owned();
    tx.tx.fetch_optional::<ReplacementRow>(&q).await
}

/// Of `subscription_ids`, those with an open plan change (`processing` or `scheduled`).
pub async fn with_open(tx: &mut TenantTx, subscription_ids: &[String]) -> Result<Vec<String>> {
    if subscription_ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = Query::select()
        .distinct()
        .column(R::SubscriptionId)
        .from(R::Table)
        .cond_where(tx.in_scope(R::TenantId, R::Environment))
        .and_where(Expr::col(R::SubscriptionId).is_in(subscription_ids.iter().cloned()))
        .and_where(Expr::col(R::Status).is_in(["processing", "scheduled"]))
        .to_owned();
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(s,)| s).collect())
}

/// The subscription's plan changes, newest first.
pub async fn of_subscription(
    tx: &mut TenantTx,
    subscription_id: &str,
    limit: u64,
) -> Result<Vec<ReplacementRow>> {
    let q = select(tx)
        .and_where(Expr::col(R::SubscriptionId).eq(subscription_id))
        .order_by(R::Id, Order::Desc)
        .limit(limit)
        .to_owned();
    tx.tx.fetch_all::<ReplacementRow>(&q).await
}

/// Immediate changes still `processing` that were last touched before `before` (their
/// request died between charge and switch), oldest first.
pub async fn stalled(tx: &mut TenantTx, before: DateTime<Utc>, limit: u64) -> Result<Vec<ReplacementRow>> {
    let q = select(tx)
        .and_where(Expr::col(R::Status).eq("processing"))
        .and_where(Expr::col(R::UpdatedAt).lt(before))
        .order_by(R::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    tx.tx.fetch_all::<ReplacementRow>(&q).await
}
