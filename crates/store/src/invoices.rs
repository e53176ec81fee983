//! Invoices, their lines and payments, credit notes, number series and fiscalization records as
//! stored. Numbers come from [`next_number`] (or [`try_next_number`], which does not wait, and
//! [`reserve_numbers`], many at once): one upsert on the series row, inside the caller's
//! transaction, so concurrent issuers serialize on that row and a rollback returns the number.
//! Drafts whose issuer found the row busy wait in `invoice_numbering` for the numbering pass.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, OnConflict, Order, Query, SelectStatement};

use crate::{Result, TenantTx};

// ---------------------------------------------------------------------------------------------
// Number series

#[derive(Iden, Clone, Copy)]
enum InvoiceSeries {
    Table,
    TenantId,
    Environment,
    StorefrontId,
    Series,
    LastNumber,
}

#[derive(sqlx::FromRow)]
struct Taken {
    last_number: i64,
}

/// Takes the next number of a storefront's series (1 for a new series), in the caller's
/// transaction: `INSERT … ON CONFLICT DO UPDATE SET last_number = last_number + 1 RETURNING`.
/// The row stays locked until the transaction ends, so a concurrent issuer of the same series
/// waits and then sees the committed value (or the old one, if this transaction rolls back).
pub async fn next_number(tx: &mut TenantTx, storefront_id: &str, series: &str) -> Result<i64> {
    // One statement text with one parameter type for both: PostgreSQL prepares it once per
    // connection, and a `+ $6` prepared for an INT4 cannot take an INT8 later.
    reserve_numbers(tx, storefront_id, series, 1).await
}

/// Takes `count` consecutive numbers of a storefront's series at once and returns the first:
/// the same upsert as [`next_number`], adding `count`. The numbering pass gives a batch of
/// drafts their numbers with it, holding the series row once for all of them.
pub async fn reserve_numbers(
    tx: &mut TenantTx,
    storefront_id: &str,
    series: &str,
    count: i64,
) -> Result<i64> {
    let q = Query::insert()
        .into_table(InvoiceSeries::Table)
        .columns([
            InvoiceSeries::TenantId,
            InvoiceSeries::Environment,
            InvoiceSeries::StorefrontId,
            InvoiceSeries::Series,
            InvoiceSeries::LastNumber,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            storefront_id.into(),
            series.into(),
            count.into(),
        ])
        .on_conflict(
            OnConflict::columns([
                InvoiceSeries::TenantId,
                InvoiceSeries::Environment,
                InvoiceSeries::StorefrontId,
                InvoiceSeries::Series,
            ])
            .value(
                InvoiceSeries::LastNumber,
                Expr::col((InvoiceSeries::Table, InvoiceSeries::LastNumber)).add(count),
            )
            .to_owned(),
        )
        .returning_col(InvoiceSeries::LastNumber)
        .to_owned();
    tx.writes += 1;
    Ok(tx.tx.fetch_one::<Taken>(&q).await?.last_number - count + 1)
}

#[derive(sqlx::FromRow)]
struct SeriesOf {
    storefront_id: String,
    series: String,
}

/// Every number series the storefronts of the tenant environment have used: `(storefront id,
/// series)`.
pub async fn series_in_use(tx: &mut TenantTx) -> Result<Vec<(String, String)>> {
    let q = Query::select()
        .columns([InvoiceSeries::StorefrontId, InvoiceSeries::Series])
        .from(InvoiceSeries::Table)
        .cond_where(tx.in_scope(InvoiceSeries::TenantId, InvoiceSeries::Environment))
        .to_owned();
    let rows = tx.tx.fetch_all::<SeriesOf>(&q).await?;
    Ok(rows.into_iter().map(|r| (r.storefront_id, r.series)).collect())
}

/// PostgreSQL's [`try_next_number`]: the increment only if the series row can be locked without
/// waiting (`FOR UPDATE SKIP LOCKED`), or the new series' row with 1 if there is none yet.
const TRY_NEXT_NUMBER_PG: &str = "\
WITH up AS (
    UPDATE invoice_series SET last_number = last_number + 1
    WHERE tenant_id = $1 AND environment = $2 AND storefront_id = $3 AND series = $4
      AND EXISTS (SELECT 1 FROM invoice_series
                  WHERE tenant_id = $1 AND environment = $2 AND storefront_id = $3 AND series = $4
                  FOR UPDATE SKIP LOCKED)
    RETURNING last_number),
new AS (
    INSERT INTO invoice_series (tenant_id, environment, storefront_id, series, last_number)
    SELECT $1, $2, $3, $4, 1
    WHERE NOT EXISTS (SELECT 1 FROM invoice_series
                      WHERE tenant_id = $1 AND environment = $2 AND storefront_id = $3 AND series = $4)
    ON CONFLICT DO NOTHING
    RETURNING last_number)
SELECT last_number FROM up UNION ALL SELECT last_number FROM new";

/// [`next_number`] without waiting: `None` when another transaction holds the series row (it
/// is issuing an invoice of the series and has not committed yet). On SQLite a write
/// transaction never meets another (one writer), so this always takes the number.
pub async fn try_next_number(tx: &mut TenantTx, storefront_id: &str, series: &str) -> Result<Option<i64>> {
    let (tenant, env) = (tx.scope().tenant_id().to_string(), tx.scope().environment().as_str());
    match &mut tx.tx {
        crate::exec::Tx::Postgres(t) => {
            let n: Option<i64> = sqlx::query_scalar(TRY_NEXT_NUMBER_PG)
                .bind(tenant)
                .bind(env)
                .bind(storefront_id)
                .bind(series)
                .fetch_optional(t.conn()?)
                .await?;
            tx.writes += 1;
            Ok(n)
        }
        crate::exec::Tx::Sqlite(_) => Ok(Some(next_number(tx, storefront_id, series).await?)),
    }
}

// ---------------------------------------------------------------------------------------------
// Drafts waiting for their number

#[derive(Iden, Clone, Copy)]
enum InvoiceNumbering {
    Table,
    TenantId,
    Environment,
    InvoiceId,
    StorefrontId,
    CorrelationId,
    CausationId,
    Lines,
    RateBp,
    QueuedAt,
}

/// A draft invoice committed without its number, waiting for the numbering pass: who issued it
/// (the lineage its `invoice.issued` outcome joins) and what that outcome tells.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NumberingRow {
    pub invoice_id: String,
    pub storefront_id: String,
    pub correlation_id: String,
    /// The issuing transaction's action.
    pub causation_id: Option<String>,
    pub lines: i32,
    pub rate_bp: i32,
    pub queued_at: DateTime<Utc>,
}

/// Queues a draft of this transaction for the numbering pass.
pub async fn queue_numbering(tx: &mut TenantTx, r: &NumberingRow) -> Result<()> {
    let q = Query::insert()
        .into_table(InvoiceNumbering::Table)
        .columns([
            InvoiceNumbering::TenantId,
            InvoiceNumbering::Environment,
            InvoiceNumbering::InvoiceId,
            InvoiceNumbering::StorefrontId,
            InvoiceNumbering::CorrelationId,
            InvoiceNumbering::CausationId,
            InvoiceNumbering::Lines,
            InvoiceNumbering::RateBp,
            InvoiceNumbering::QueuedAt,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            r.invoice_id.clone().into(),
            r.storefront_id.clone().into(),
            r.correlation_id.clone().into(),
            r.causation_id.clone().into(),
            r.lines.into(),
            r.rate_bp.into(),
            r.queued_at.into(),
        ])
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Drafts waiting for their number, oldest first (`only`: that invoice alone, if it waits).
pub async fn numbering_queue(tx: &mut TenantTx, only: Option<&str>, limit: u64) -> Result<Vec<NumberingRow>> {
    let mut q = Query::select()
        .columns([
            InvoiceNumbering::InvoiceId,
            InvoiceNumbering::StorefrontId,
            InvoiceNumbering::CorrelationId,
            InvoiceNumbering::CausationId,
            InvoiceNumbering::Lines,
            InvoiceNumbering::RateBp,
            InvoiceNumbering::QueuedAt,
        ])
        .from(InvoiceNumbering::Table)
        .cond_where(tx.in_scope(InvoiceNumbering::TenantId, InvoiceNumbering::Environment))
        .order_by(InvoiceNumbering::QueuedAt, Order::Asc)
        .order_by(InvoiceNumbering::InvoiceId, Order::Asc)
        .limit(limit)
        .to_owned();
    if let Some(id) = only {
        q.and_where(Expr::col(InvoiceNumbering::InvoiceId).eq(id));
    }
    tx.tx.fetch_all::<NumberingRow>(&q).await
}

/// Takes numbered drafts off the queue.
pub async fn dequeue_numbering(tx: &mut TenantTx, invoice_ids: &[String]) -> Result<u64> {
    if invoice_ids.is_empty() {
        return Ok(0);
    }
    let q = Query::delete()
        .from_table(InvoiceNumbering::Table)
        .cond_where(tx.in_scope(InvoiceNumbering::TenantId, InvoiceNumbering::Environment))
        .and_where(Expr::col(InvoiceNumbering::InvoiceId).is_in(invoice_ids.iter().cloned()))
        .to_owned();
    tx.write(&q).await
}

/// The tenant environments with drafts waiting for their number, the longest waiting first (a
/// platform read, before the pass enters each).
pub async fn environments_numbering(db: &crate::Db, limit: u64) -> Result<Vec<(String, String)>> {
    #[derive(sqlx::FromRow)]
    struct Env {
        tenant_id: String,
        environment: String,
    }
    let q = Query::select()
        .columns([InvoiceNumbering::TenantId, InvoiceNumbering::Environment])
        .from(InvoiceNumbering::Table)
        .group_by_columns([InvoiceNumbering::TenantId, InvoiceNumbering::Environment])
        .order_by_expr(Expr::col(InvoiceNumbering::QueuedAt).min(), Order::Asc)
        .limit(limit)
        .to_owned();
    let mut tx = db.unscoped_read_tx().await?;
    tx.enter_platform().await?;
    let rows = tx.fetch_all::<Env>(&q).await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(|e| (e.tenant_id, e.environment)).collect())
}

/// The drafts among `ids`, each locked for this transaction (PostgreSQL: `FOR UPDATE`; with
/// `skip_locked`, those another transaction holds are left out rather than waited for). With
/// `unpaid_before`, a draft not paid yet is left out (and not locked) unless it was created
/// before then.
pub async fn lock_drafts(
    tx: &mut TenantTx,
    ids: &[String],
    skip_locked: bool,
    unpaid_before: Option<DateTime<Utc>>,
) -> Result<Vec<InvoiceRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = select(tx)
        .and_where(Expr::col(Invoices::Id).is_in(ids.iter().cloned()))
        .and_where(Expr::col(Invoices::Status).eq("draft"))
        .order_by(Invoices::Id, Order::Asc)
        .to_owned();
    if let Some(t) = unpaid_before {
        q.cond_where(
            sea_query::Cond::any()
                .add(Expr::col(Invoices::PaidAt).is_not_null())
                .add(Expr::col(Invoices::CreatedAt).lt(t)),
        );
    }
    if skip_locked {
        q.lock_with_behavior(sea_query::LockType::Update, sea_query::LockBehavior::SkipLocked);
    } else {
        q.lock(sea_query::LockType::Update);
    }
    tx.tx.fetch_all::<InvoiceRow>(&q).await
}

/// Records a draft as paid in full (`amount_paid`, `paid_at`) while it waits for its number;
/// `false` when it is no longer an unpaid draft.
pub async fn pay_draft(tx: &mut TenantTx, invoice_id: &str, now: DateTime<Utc>) -> Result<bool> {
    let q = Query::update()
        .table(Invoices::Table)
        .value(Invoices::AmountPaid, Expr::col(Invoices::Total))
        .value(Invoices::PaidAt, now)
        .value(Invoices::UpdatedAt, now)
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .and_where(Expr::col(Invoices::Id).eq(invoice_id))
        .and_where(Expr::col(Invoices::Status).eq("draft"))
        .and_where(Expr::col(Invoices::PaidAt).is_null())
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

// ---------------------------------------------------------------------------------------------
// Invoices

#[derive(Iden, Clone, Copy)]
enum Invoices {
    Table,
    TenantId,
    Environment,
    Id,
    StorefrontId,
    CustomerId,
    SubscriptionId,
    Series,
    Sequence,
    Number,
    Status,
    Currency,
    CustomerCountry,
    Net,
    Tax,
    Total,
    AmountPaid,
    AmountCredited,
    FiscalProvider,
    IssuedAt,
    PaidAt,
    VoidedAt,
    UncollectibleAt,
    CreatedAt,
    UpdatedAt,
}

const INVOICE_COLUMNS: [Invoices; 22] = [
    Invoices::Id,
    Invoices::StorefrontId,
    Invoices::CustomerId,
    Invoices::SubscriptionId,
    Invoices::Series,
    Invoices::Sequence,
    Invoices::Number,
    Invoices::Status,
    Invoices::Currency,
    Invoices::CustomerCountry,
    Invoices::Net,
    Invoices::Tax,
    Invoices::Total,
    Invoices::AmountPaid,
    Invoices::AmountCredited,
    Invoices::FiscalProvider,
    Invoices::IssuedAt,
    Invoices::PaidAt,
    Invoices::VoidedAt,
    Invoices::UncollectibleAt,
    Invoices::CreatedAt,
    Invoices::UpdatedAt,
];

/// An invoice as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InvoiceRow {
    pub id: String,
    pub storefront_id: String,
    pub customer_id: String,
    pub subscription_id: Option<String>,
    /// The number series (`INV-2026`) and the position in it; none while `draft`.
    pub series: Option<String>,
    pub sequence: Option<i64>,
    pub number: Option<String>,
    /// `draft`, `open`, `paid`, `void` or `uncollectible`.
    pub status: String,
    pub currency: String,
    /// The customer's country the tax rate was chosen for.
    pub customer_country: Option<String>,
    pub net: i64,
    pub tax: i64,
    pub total: i64,
    pub amount_paid: i64,
    /// Credited by credit notes (refunds).
    pub amount_credited: i64,
    /// The storefront's fiscalization provider when the invoice was issued.
    pub fiscal_provider: String,
    pub issued_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub uncollectible_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Adds an invoice.
pub async fn insert(tx: &mut TenantTx, i: &InvoiceRow) -> Result<()> {
    insert_many(tx, std::slice::from_ref(i)).await
}

/// Adds many invoices in one statement (a renewal batch's).
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_many(tx: &mut TenantTx, rows: &[InvoiceRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert()
        .into_table(Invoices::Table)
        .columns([Invoices::TenantId, Invoices::Environment].into_iter().chain(INVOICE_COLUMNS))
        .to_owned();
    for i in rows {
        q.values_panic(invoice_values(tx, i));
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// An invoice's values in the column order of [`insert_many`].
fn invoice_values(tx: &TenantTx, i: &InvoiceRow) -> Vec<sea_query::SimpleExpr> {
    vec![
        tx.scope().tenant_id().to_string().into(),
        tx.scope().environment().as_str().into(),
        i.id.clone().into(),
        i.storefront_id.clone().into(),
        i.customer_id.clone().into(),
        i.subscription_id.clone().into(),
        i.series.clone().into(),
        i.sequence.into(),
        i.number.clone().into(),
        i.status.clone().into(),
        i.currency.clone().into(),
        i.customer_country.clone().into(),
        i.net.into(),
        i.tax.into(),
        i.total.into(),
        i.amount_paid.into(),
        i.amount_credited.into(),
        i.fiscal_provider.clone().into(),
        i.issued_at.into(),
        i.paid_at.into(),
        i.voided_at.into(),
        i.uncollectible_at.into(),
        i.created_at.into(),
        i.updated_at.into(),
    ]
}

/// Marks many `open` invoices paid in full at `now` in one statement (a renewal batch's
/// settling). Returns how many it marked: fewer than `ids` when one is no longer open (the
/// caller rolls back).
pub async fn pay_many(tx: &mut TenantTx, ids: &[String], now: DateTime<Utc>) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let q = Query::update()
        .table(Invoices::Table)
        .values([
            (Invoices::Status, "paid".into()),
            (Invoices::AmountPaid, Expr::col(Invoices::Total).into()),
            (Invoices::PaidAt, now.into()),
            (Invoices::UpdatedAt, now.into()),
        ])
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .and_where(Expr::col(Invoices::Id).is_in(ids.iter().cloned()))
        .and_where(Expr::col(Invoices::Status).eq("open"))
        .to_owned();
    tx.write(&q).await
}

/// Of `subscription_ids`, those with an unpaid invoice (`draft`, `open` or `uncollectible`).
pub async fn with_unpaid_invoices(tx: &mut TenantTx, subscription_ids: &[String]) -> Result<Vec<String>> {
    if subscription_ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = Query::select()
        .distinct()
        .column(Invoices::SubscriptionId)
        .from(Invoices::Table)
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .and_where(Expr::col(Invoices::SubscriptionId).is_in(subscription_ids.iter().cloned()))
        .and_where(Expr::col(Invoices::Status).is_in(["draft", "open", "uncollectible"]))
        .to_owned();
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(s,)| s).collect())
}

/// Writes an invoice's status and payment fields, only if it is still `expected_status`:
/// `false` when another transaction moved it first.
pub async fn update_status(tx: &mut TenantTx, i: &InvoiceRow, expected_status: &str) -> Result<bool> {
    let q = Query::update()
        .table(Invoices::Table)
        .values([
            (Invoices::Status, i.status.clone().into()),
            (Invoices::AmountPaid, i.amount_paid.into()),
            (Invoices::PaidAt, i.paid_at.into()),
            (Invoices::VoidedAt, i.voided_at.into()),
            (Invoices::UncollectibleAt, i.uncollectible_at.into()),
            (Invoices::UpdatedAt, i.updated_at.into()),
        ])
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .and_where(Expr::col(Invoices::Id).eq(i.id.clone()))
        .and_where(Expr::col(Invoices::Status).eq(expected_status))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

/// Issues a `draft` invoice written earlier in the transaction: its number, status and payment
/// fields as in `i`. `false` when it is no longer a draft.
pub async fn issue_draft(tx: &mut TenantTx, i: &InvoiceRow) -> Result<bool> {
    let q = Query::update()
        .table(Invoices::Table)
        .values([
            (Invoices::Series, i.series.clone().into()),
            (Invoices::Sequence, i.sequence.into()),
            (Invoices::Number, i.number.clone().into()),
            (Invoices::Status, i.status.clone().into()),
            (Invoices::AmountPaid, i.amount_paid.into()),
            (Invoices::IssuedAt, i.issued_at.into()),
            (Invoices::PaidAt, i.paid_at.into()),
            (Invoices::UpdatedAt, i.updated_at.into()),
        ])
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .and_where(Expr::col(Invoices::Id).eq(i.id.clone()))
        .and_where(Expr::col(Invoices::Status).eq("draft"))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

/// Issues many `draft` invoices in one statement: each row's series, sequence, number and
/// status as in `rows` (one `CASE` per column, by id), `issued_at` and `updated_at` = `now`.
/// Returns how many drafts it issued (a row no longer a draft is left alone).
pub async fn issue_drafts(tx: &mut TenantTx, rows: &[InvoiceRow], now: DateTime<Utc>) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let by_id = |col: Invoices, value: &dyn Fn(&InvoiceRow) -> sea_query::SimpleExpr| {
        (col, crate::case_by_id(Invoices::Id, rows, |r| r.id.clone(), value, Expr::col(col).into()))
    };
    let q = Query::update()
        .table(Invoices::Table)
        .values([
            by_id(Invoices::Series, &|r| r.series.clone().into()),
            by_id(Invoices::Sequence, &|r| r.sequence.into()),
            by_id(Invoices::Number, &|r| r.number.clone().into()),
            by_id(Invoices::Status, &|r| r.status.clone().into()),
            (Invoices::IssuedAt, now.into()),
            (Invoices::UpdatedAt, now.into()),
        ])
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .and_where(Expr::col(Invoices::Id).is_in(rows.iter().map(|r| r.id.clone())))
        .and_where(Expr::col(Invoices::Status).eq("draft"))
        .to_owned();
    tx.write(&q).await
}

/// Adds `amount` to what credit notes have credited, atomically within what was paid: `false`
/// (nothing changed) when it would credit more than was paid.
pub async fn add_credited(
    tx: &mut TenantTx,
    invoice_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let q = Query::update()
        .table(Invoices::Table)
        .value(Invoices::AmountCredited, Expr::col(Invoices::AmountCredited).add(amount))
        .value(Invoices::UpdatedAt, now)
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .and_where(Expr::col(Invoices::Id).eq(invoice_id))
        .and_where(
            Expr::expr(Expr::col(Invoices::AmountCredited).add(amount)).lte(Expr::col(Invoices::AmountPaid)),
        )
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

fn select(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(INVOICE_COLUMNS)
        .from(Invoices::Table)
        .cond_where(tx.in_scope(Invoices::TenantId, Invoices::Environment))
        .to_owned()
}

/// One invoice.
pub async fn get(tx: &mut TenantTx, id: &str) -> Result<Option<InvoiceRow>> {
    let q = select(tx).and_where(Expr::col(Invoices::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<InvoiceRow>(&q).await
}

/// Filters of an invoice list.
#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter<'a> {
    pub customer_id: Option<&'a str>,
    pub subscription_id: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Any of these statuses (none: any status).
    pub any_status: &'a [&'a str],
    /// Only these storefronts (a restricted API key).
    pub storefronts: Option<&'a [String]>,
}

/// Invoices in id order after `starting_after`.
pub async fn list(
    tx: &mut TenantTx,
    f: &InvoiceFilter<'_>,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<InvoiceRow>, bool)> {
    let mut q = select(tx).order_by(Invoices::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(a) = starting_after {
        q.and_where(Expr::col(Invoices::Id).gt(a));
    }
    if let Some(c) = f.customer_id {
        q.and_where(Expr::col(Invoices::CustomerId).eq(c));
    }
    if let Some(s) = f.subscription_id {
        q.and_where(Expr::col(Invoices::SubscriptionId).eq(s));
    }
    if let Some(s) = f.status {
        q.and_where(Expr::col(Invoices::Status).eq(s));
    }
    if !f.any_status.is_empty() {
        q.and_where(Expr::col(Invoices::Status).is_in(f.any_status.iter().copied()));
    }
    if let Some(s) = f.storefronts {
        q.and_where(Expr::col(Invoices::StorefrontId).is_in(s.iter().cloned()));
    }
    let mut rows = tx.tx.fetch_all::<InvoiceRow>(&q).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

// ---------------------------------------------------------------------------------------------
// Lines

#[derive(Iden, Clone, Copy)]
enum InvoiceLines {
    Table,
    TenantId,
    Environment,
    InvoiceId,
    LineNo,
    Kind,
    Description,
    UnitAmount,
    Quantity,
    Amount,
    TaxBehaviour,
    RateBp,
    Net,
    Tax,
    Gross,
    PeriodStart,
    PeriodEnd,
}

const LINE_COLUMNS: [InvoiceLines; 14] = [
    InvoiceLines::LineNo,
    InvoiceLines::Kind,
    InvoiceLines::Description,
    InvoiceLines::UnitAmount,
    InvoiceLines::Quantity,
    InvoiceLines::Amount,
    InvoiceLines::TaxBehaviour,
    InvoiceLines::RateBp,
    InvoiceLines::Net,
    InvoiceLines::Tax,
    InvoiceLines::Gross,
    InvoiceLines::PeriodStart,
    InvoiceLines::PeriodEnd,
    InvoiceLines::InvoiceId,
];

/// An invoice line as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LineRow {
    pub line_no: i32,
    /// `subscription`, `proration` or `one_time`.
    pub kind: String,
    pub description: String,
    pub unit_amount: i64,
    pub quantity: i32,
    /// Unit amount × quantity, as priced.
    pub amount: i64,
    /// `inclusive` or `exclusive`.
    pub tax_behaviour: String,
    pub rate_bp: i32,
    pub net: i64,
    pub tax: i64,
    pub gross: i64,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub invoice_id: String,
}

/// Adds an invoice's lines.
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_lines(tx: &mut TenantTx, lines: &[LineRow]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert()
        .into_table(InvoiceLines::Table)
        .columns([InvoiceLines::TenantId, InvoiceLines::Environment].into_iter().chain(LINE_COLUMNS))
        .to_owned();
    for l in lines {
        q.values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            l.line_no.into(),
            l.kind.clone().into(),
            l.description.clone().into(),
            l.unit_amount.into(),
            l.quantity.into(),
            l.amount.into(),
            l.tax_behaviour.clone().into(),
            l.rate_bp.into(),
            l.net.into(),
            l.tax.into(),
            l.gross.into(),
            l.period_start.into(),
            l.period_end.into(),
            l.invoice_id.clone().into(),
        ]);
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// An invoice's lines in order.
pub async fn lines_of(tx: &mut TenantTx, invoice_id: &str) -> Result<Vec<LineRow>> {
    let q = Query::select()
        .columns(LINE_COLUMNS)
        .from(InvoiceLines::Table)
        .cond_where(tx.in_scope(InvoiceLines::TenantId, InvoiceLines::Environment))
        .and_where(Expr::col(InvoiceLines::InvoiceId).eq(invoice_id))
        .order_by(InvoiceLines::LineNo, Order::Asc)
        .to_owned();
    tx.tx.fetch_all::<LineRow>(&q).await
}

// ---------------------------------------------------------------------------------------------
// Payments of invoices

#[derive(Iden, Clone, Copy)]
pub(crate) enum InvoicePayments {
    Table,
    TenantId,
    Environment,
    InvoiceId,
    PaymentId,
    Amount,
    CreatedAt,
}

/// A payment applied to an invoice.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InvoicePaymentRow {
    pub invoice_id: String,
    pub payment_id: String,
    pub amount: i64,
    pub created_at: DateTime<Utc>,
}

/// Records a payment applied to an invoice.
pub async fn insert_payment(tx: &mut TenantTx, p: &InvoicePaymentRow) -> Result<()> {
    insert_payments(tx, std::slice::from_ref(p)).await
}

/// Records many payments applied to invoices, in one statement.
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_payments(tx: &mut TenantTx, rows: &[InvoicePaymentRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert()
        .into_table(InvoicePayments::Table)
        .columns([
            InvoicePayments::TenantId,
            InvoicePayments::Environment,
            InvoicePayments::InvoiceId,
            InvoicePayments::PaymentId,
            InvoicePayments::Amount,
            InvoicePayments::CreatedAt,
        ])
        .to_owned();
    for p in rows {
        q.values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            p.invoice_id.clone().into(),
            p.payment_id.clone().into(),
            p.amount.into(),
            p.created_at.into(),
        ]);
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// Payments applied to an invoice (`invoice_id`) or invoices a payment settled (`payment_id`).
pub async fn invoice_payments(
    tx: &mut TenantTx,
    invoice_id: Option<&str>,
    payment_id: Option<&str>,
) -> Result<Vec<InvoicePaymentRow>> {
    let mut q = Query::select()
        .columns([
            InvoicePayments::InvoiceId,
            InvoicePayments::PaymentId,
            InvoicePayments::Amount,
            InvoicePayments::CreatedAt,
        ])
        .from(InvoicePayments::Table)
        .cond_where(tx.in_scope(InvoicePayments::TenantId, InvoicePayments::Environment))
        .order_by(InvoicePayments::CreatedAt, Order::Asc)
        .order_by(InvoicePayments::InvoiceId, Order::Asc)
        .to_owned();
    if let Some(i) = invoice_id {
        q.and_where(Expr::col(InvoicePayments::InvoiceId).eq(i));
    }
    if let Some(p) = payment_id {
        q.and_where(Expr::col(InvoicePayments::PaymentId).eq(p));
    }
    tx.tx.fetch_all::<InvoicePaymentRow>(&q).await
}

mod credit_notes;
mod fiscal;
pub use credit_notes::*;
pub use fiscal::*;
