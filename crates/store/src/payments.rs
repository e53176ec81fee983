//! Payments and refunds as stored. The refund ceiling is enforced here, in the statement that
//! reserves a refund (and by a CHECK constraint behind it), not only in code.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};

use crate::{Result, TenantTx};

#[derive(Iden, Clone, Copy)]
enum Payments {
    Table,
    TenantId,
    Environment,
    Id,
    StorefrontId,
    CustomerId,
    PaymentMethodId,
    PspAccountId,
    PspPaymentId,
    Amount,
    Currency,
    Status,
    Attempts,
    DeclineCode,
    CapturedAmount,
    RefundedAmount,
    Description,
    CreatedAt,
    UpdatedAt,
    QueuedReason,
    RequestKey,
    NextAction,
}

const PAYMENT_COLUMNS: [Payments; 20] = [
    Payments::Id,
    Payments::StorefrontId,
    Payments::CustomerId,
    Payments::PaymentMethodId,
    Payments::PspAccountId,
    Payments::PspPaymentId,
    Payments::Amount,
    Payments::Currency,
    Payments::Status,
    Payments::Attempts,
    Payments::DeclineCode,
    Payments::CapturedAmount,
    Payments::RefundedAmount,
    Payments::Description,
    Payments::CreatedAt,
    Payments::UpdatedAt,
    Payments::QueuedReason,
    Payments::RequestKey,
    Payments::NextAction,
    Payments::Environment,
];

/// A payment row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: String,
    pub storefront_id: String,
    pub customer_id: String,
    pub payment_method_id: String,
    /// The account of the latest attempt.
    pub psp_account_id: Option<String>,
    pub psp_payment_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub attempts: i32,
    pub decline_code: Option<String>,
    pub captured_amount: i64,
    /// Pending and succeeded refunds.
    pub refunded_amount: i64,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the payment waits without having been sent to any PSP (`safe_mode`), if it does.
    pub queued_reason: Option<String>,
    /// The `Idempotency-Key` it was created under, unique per tenant environment.
    pub request_key: Option<String>,
    /// The PSP's instruction (JSON) while the payment awaits customer action.
    pub next_action: Option<String>,
}

/// Adds a payment. A second payment with the same `request_key` is
/// [`crate::StoreError::UniqueViolation`].
pub async fn insert(tx: &mut TenantTx, p: &PaymentRow) -> Result<()> {
    let mut cols = PAYMENT_COLUMNS.to_vec();
    cols.push(Payments::TenantId);
    let v = payment_values(tx, p);
    let q = Query::insert().into_table(Payments::Table).columns(cols).values_panic(v).to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// A payment's values in the column order of [`insert`].
fn payment_values(tx: &TenantTx, p: &PaymentRow) -> Vec<sea_query::SimpleExpr> {
    vec![
        p.id.clone().into(),
        p.storefront_id.clone().into(),
        p.customer_id.clone().into(),
        p.payment_method_id.clone().into(),
        p.psp_account_id.clone().into(),
        p.psp_payment_id.clone().into(),
        p.amount.into(),
        p.currency.clone().into(),
        p.status.clone().into(),
        p.attempts.into(),
        p.decline_code.clone().into(),
        p.captured_amount.into(),
        p.refunded_amount.into(),
        p.description.clone().into(),
        p.created_at.into(),
        p.updated_at.into(),
        p.queued_reason.clone().into(),
        p.request_key.clone().into(),
        p.next_action.clone().into(),
        tx.scope().environment().as_str().into(),
        tx.scope().tenant_id().to_string().into(),
    ]
}

/// Adds many payments in one statement (a renewal batch's). A `request_key` taken already is
/// [`crate::StoreError::UniqueViolation`] for the whole statement.
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_many(tx: &mut TenantTx, rows: &[PaymentRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols = PAYMENT_COLUMNS.to_vec();
    cols.push(Payments::TenantId);
    let mut q = Query::insert().into_table(Payments::Table).columns(cols).to_owned();
    for p in rows {
        q.values_panic(payment_values(tx, p));
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// Of `keys`, those a payment was created under already.
pub async fn taken_request_keys(tx: &mut TenantTx, keys: &[String]) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let q = Query::select()
        .column(Payments::RequestKey)
        .from(Payments::Table)
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .and_where(Expr::col(Payments::RequestKey).is_in(keys.iter().cloned()))
        .to_owned();
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(k,)| k).collect())
}

/// Records many payments captured in one statement — `captured`, each row's PSP id and captured
/// amount, no decline code, `updated_at` = `now` — each only if it is still `pending` (a webhook
/// or reconciliation may have moved it). Returns the ids of those it wrote.
pub async fn captured_many(
    tx: &mut TenantTx,
    rows: &[PaymentRow],
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let q = captured_update(tx, rows, now).returning_col(Payments::Id).to_owned();
    tx.writes += 1;
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(id,)| id).collect())
}

/// The `UPDATE` of [`captured_many`] (`rows` not empty), without its `RETURNING`.
pub(crate) fn captured_update(
    tx: &TenantTx,
    rows: &[PaymentRow],
    now: DateTime<Utc>,
) -> sea_query::UpdateStatement {
    let by_id = |value: &dyn Fn(&PaymentRow) -> sea_query::SimpleExpr, otherwise: Payments| {
        crate::case_by_id(Payments::Id, rows, |p| p.id.clone(), value, Expr::col(otherwise).into())
    };
    // Commonly each captured exactly its amount: no second `CASE`.
    let captured = if rows.iter().all(|p| p.captured_amount == p.amount) {
        Expr::col(Payments::Amount).into()
    } else {
        by_id(&|p| p.captured_amount.into(), Payments::CapturedAmount)
    };
    Query::update()
        .table(Payments::Table)
        .values([
            (Payments::Status, "captured".into()),
            (Payments::PspPaymentId, by_id(&|p| p.psp_payment_id.clone().into(), Payments::PspPaymentId)),
            (Payments::DeclineCode, Option::<String>::None.into()),
            (Payments::CapturedAmount, captured),
            (Payments::UpdatedAt, now.into()),
        ])
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .and_where(Expr::col(Payments::Id).is_in(rows.iter().map(|p| p.id.clone())))
        .and_where(Expr::col(Payments::Status).eq("pending"))
        .to_owned()
}

/// Writes the outcome of an attempt: status, account, PSP id, attempts, decline code, captured
/// amount.
pub async fn update_attempt(tx: &mut TenantTx, p: &PaymentRow) -> Result<()> {
    tx.write(&attempt_update(tx, p)).await?;
    Ok(())
}

/// [`update_attempt`] only while the stored payment is still `expected` (its status): `false`,
/// nothing written, when something else moved it meanwhile.
pub async fn update_attempt_from(tx: &mut TenantTx, p: &PaymentRow, expected: &str) -> Result<bool> {
    let q = attempt_update(tx, p).and_where(Expr::col(Payments::Status).eq(expected)).to_owned();
    Ok(tx.write(&q).await? == 1)
}

fn attempt_update(tx: &TenantTx, p: &PaymentRow) -> sea_query::UpdateStatement {
    Query::update()
        .table(Payments::Table)
        .values([
            (Payments::Status, p.status.clone().into()),
            (Payments::PspAccountId, p.psp_account_id.clone().into()),
            (Payments::PspPaymentId, p.psp_payment_id.clone().into()),
            (Payments::Attempts, p.attempts.into()),
            (Payments::DeclineCode, p.decline_code.clone().into()),
            (Payments::CapturedAmount, p.captured_amount.into()),
            (Payments::UpdatedAt, p.updated_at.into()),
            (Payments::QueuedReason, p.queued_reason.clone().into()),
            (Payments::NextAction, p.next_action.clone().into()),
        ])
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .and_where(Expr::col(Payments::Id).eq(p.id.clone()))
        .to_owned()
}

/// Takes a queued payment off the queue for this caller only: `false` when another process
/// took it first (or it is not queued).
pub async fn claim_queued(tx: &mut TenantTx, id: &str, now: DateTime<Utc>) -> Result<bool> {
    let q = Query::update()
        .table(Payments::Table)
        .value(Payments::QueuedReason, Option::<String>::None)
        .value(Payments::UpdatedAt, now)
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .and_where(Expr::col(Payments::Id).eq(id))
        .and_where(Expr::col(Payments::QueuedReason).is_not_null())
        .and_where(Expr::col(Payments::Status).eq("pending"))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

/// Queued payments, oldest first.
pub async fn queued(tx: &mut TenantTx, limit: u64) -> Result<Vec<PaymentRow>> {
    let q = select(tx)
        .and_where(Expr::col(Payments::Status).eq("pending"))
        .and_where(Expr::col(Payments::QueuedReason).is_not_null())
        .order_by(Payments::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    tx.tx.fetch_all::<PaymentRow>(&q).await
}

/// Payments whose outcome must be asked of the PSP: `unknown` ones, and `pending` ones whose
/// attempt was sent but not recorded before `stale_before` (the process died mid-attempt).
pub async fn to_reconcile(
    tx: &mut TenantTx,
    stale_before: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<PaymentRow>> {
    let q = select(tx)
        .cond_where(
            sea_query::Cond::any().add(Expr::col(Payments::Status).eq("unknown")).add(
                sea_query::Cond::all()
                    .add(Expr::col(Payments::Status).eq("pending"))
                    .add(Expr::col(Payments::QueuedReason).is_null())
                    .add(Expr::col(Payments::Attempts).gt(0))
                    .add(Expr::col(Payments::UpdatedAt).lt(stale_before)),
            ),
        )
        .order_by(Payments::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    tx.tx.fetch_all::<PaymentRow>(&q).await
}

/// Reserves `amount` of the payment's captured amount for a refund, atomically: `false` (and
/// nothing changed) when it would take the refunded total above the captured amount.
pub async fn reserve_refund(
    tx: &mut TenantTx,
    payment_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let q = Query::update()
        .table(Payments::Table)
        .value(Payments::RefundedAmount, Expr::col(Payments::RefundedAmount).add(amount))
        .value(Payments::UpdatedAt, now)
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .and_where(Expr::col(Payments::Id).eq(payment_id))
        .and_where(Expr::col(Payments::Status).eq("captured"))
        .and_where(
            Expr::expr(Expr::col(Payments::RefundedAmount).add(amount))
                .lte(Expr::col(Payments::CapturedAmount)),
        )
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

/// A payment, locked for the rest of this transaction (PostgreSQL: `FOR NO KEY UPDATE`, which
/// conflicts with updates of the row but not with inserts of rows referencing it; SQLite has
/// one writer). A charge is recorded as paying an invoice only under this lock, and a refund of
/// a charge that must pay nothing reads the payment's invoices after its reservation (an update
/// of the same row): whichever comes second waits for the first and then sees what it did.
pub async fn get_locked(tx: &mut TenantTx, id: &str) -> Result<Option<PaymentRow>> {
    let q = select(tx)
        .and_where(Expr::col(Payments::Id).eq(id))
        .lock(sea_query::LockType::NoKeyUpdate)
        .to_owned();
    tx.tx.fetch_optional::<PaymentRow>(&q).await
}

/// Of the payments `ids`, those this transaction could lock without waiting (PostgreSQL:
/// `FOR NO KEY UPDATE SKIP LOCKED`; SQLite has one writer: all that exist).
pub async fn lock_free(tx: &mut TenantTx, ids: &[String]) -> Result<std::collections::HashSet<String>> {
    let q = Query::select()
        .column(Payments::Id)
        .from(Payments::Table)
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .and_where(Expr::col(Payments::Id).is_in(ids.iter().cloned()))
        .order_by(Payments::Id, Order::Asc)
        .lock_with_behavior(sea_query::LockType::NoKeyUpdate, sea_query::LockBehavior::SkipLocked)
        .to_owned();
    Ok(tx.tx.fetch_all::<(String,)>(&q).await?.into_iter().map(|(id,)| id).collect())
}

/// Gives back a failed refund's reservation.
pub async fn release_refund(
    tx: &mut TenantTx,
    payment_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let q = Query::update()
        .table(Payments::Table)
        .value(Payments::RefundedAmount, Expr::col(Payments::RefundedAmount).sub(amount))
        .value(Payments::UpdatedAt, now)
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .and_where(Expr::col(Payments::Id).eq(payment_id))
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn select(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(PAYMENT_COLUMNS[..19].to_vec())
        .from(Payments::Table)
        .cond_where(tx.in_scope(Payments::TenantId, Payments::Environment))
        .to_owned()
}

/// One payment.
pub async fn get(tx: &mut TenantTx, id: &str) -> Result<Option<PaymentRow>> {
    let q = select(tx).and_where(Expr::col(Payments::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<PaymentRow>(&q).await
}

/// Payments in id order after `starting_after`; optionally of one customer, within storefronts.
pub async fn list(
    tx: &mut TenantTx,
    limit: u32,
    starting_after: Option<&str>,
    customer_id: Option<&str>,
    storefronts: Option<&[String]>,
) -> Result<(Vec<PaymentRow>, bool)> {
    let mut q = select(tx).order_by(Payments::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(a) = starting_after {
        q.and_where(Expr::col(Payments::Id).gt(a));
    }
    if let Some(c) = customer_id {
        q.and_where(Expr::col(Payments::CustomerId).eq(c));
    }
    if let Some(s) = storefronts {
        q.and_where(Expr::col(Payments::StorefrontId).is_in(s.iter().cloned()));
    }
    let mut rows = tx.tx.fetch_all::<PaymentRow>(&q).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

// ---------------------------------------------------------------------------------------------

#[derive(Iden, Clone, Copy)]
pub(crate) enum Refunds {
    Table,
    TenantId,
    Environment,
    Id,
    PaymentId,
    Amount,
    Status,
    PspRefundId,
    Reason,
    CreatedAt,
    UpdatedAt,
    QueuedReason,
}

const REFUND_COLUMNS: [Refunds; 9] = [
    Refunds::Id,
    Refunds::PaymentId,
    Refunds::Amount,
    Refunds::Status,
    Refunds::PspRefundId,
    Refunds::Reason,
    Refunds::CreatedAt,
    Refunds::UpdatedAt,
    Refunds::QueuedReason,
];

/// A refund row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefundRow {
    pub id: String,
    pub payment_id: String,
    pub amount: i64,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub psp_refund_id: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `safe_mode` while the refund waits without having been sent to the PSP.
    pub queued_reason: Option<String>,
}

/// Adds a refund.
pub async fn insert_refund(tx: &mut TenantTx, r: &RefundRow) -> Result<()> {
    let q = Query::insert()
        .into_table(Refunds::Table)
        .columns([Refunds::TenantId, Refunds::Environment].into_iter().chain(REFUND_COLUMNS))
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            r.id.clone().into(),
            r.payment_id.clone().into(),
            r.amount.into(),
            r.status.clone().into(),
            r.psp_refund_id.clone().into(),
            r.reason.clone().into(),
            r.created_at.into(),
            r.updated_at.into(),
            r.queued_reason.clone().into(),
        ])
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Writes a refund's status and PSP id.
pub async fn update_refund(tx: &mut TenantTx, r: &RefundRow) -> Result<()> {
    let q = Query::update()
        .table(Refunds::Table)
        .values([
            (Refunds::Status, r.status.clone().into()),
            (Refunds::PspRefundId, r.psp_refund_id.clone().into()),
            (Refunds::UpdatedAt, r.updated_at.into()),
            (Refunds::QueuedReason, r.queued_reason.clone().into()),
        ])
        .cond_where(tx.in_scope(Refunds::TenantId, Refunds::Environment))
        .and_where(Expr::col(Refunds::Id).eq(r.id.clone()))
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// A payment's refunds, oldest first.
pub async fn refunds_of(tx: &mut TenantTx, payment_id: &str) -> Result<Vec<RefundRow>> {
    let q = select_refunds(tx).and_where(Expr::col(Refunds::PaymentId).eq(payment_id)).to_owned();
    tx.tx.fetch_all::<RefundRow>(&q).await
}

fn select_refunds(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(REFUND_COLUMNS)
        .from(Refunds::Table)
        .cond_where(tx.in_scope(Refunds::TenantId, Refunds::Environment))
        .order_by(Refunds::Id, Order::Asc)
        .to_owned()
}

/// Refunds still `pending`, oldest first: queued ones (`queued` true) or sent ones whose
/// answer was lost or not final.
pub async fn pending_refunds(
    tx: &mut TenantTx,
    queued: bool,
    updated_before: Option<DateTime<Utc>>,
    limit: u64,
) -> Result<Vec<RefundRow>> {
    let mut q = select_refunds(tx)
        .and_where(Expr::col(Refunds::Status).eq("pending"))
        .and_where(if queued {
            Expr::col(Refunds::QueuedReason).is_not_null()
        } else {
            Expr::col(Refunds::QueuedReason).is_null()
        })
        // Least recently looked at first: refunds that stay pending (a PSP down for long)
        // cannot hide the others.
        .order_by(Refunds::UpdatedAt, Order::Asc)
        .order_by(Refunds::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    if let Some(before) = updated_before {
        q.and_where(Expr::col(Refunds::UpdatedAt).lt(before));
    }
    tx.tx.fetch_all::<RefundRow>(&q).await
}

/// Marks a pending refund looked at now, so refunds that stay pending take turns (scheduling,
/// not the refund's data: not journaled).
pub async fn touch_refund(tx: &mut TenantTx, id: &str, now: DateTime<Utc>) -> Result<()> {
    let q = Query::update()
        .table(Refunds::Table)
        .value(Refunds::UpdatedAt, now)
        .cond_where(tx.in_scope(Refunds::TenantId, Refunds::Environment))
        .and_where(Expr::col(Refunds::Id).eq(id))
        .and_where(Expr::col(Refunds::Status).eq("pending"))
        .to_owned();
    tx.tx.execute(&q).await?;
    Ok(())
}

/// One refund by our id, or by the PSP's id.
pub async fn get_refund(
    tx: &mut TenantTx,
    id: Option<&str>,
    psp_refund_id: Option<&str>,
) -> Result<Option<RefundRow>> {
    let mut q = select_refunds(tx);
    if let Some(id) = id {
        q.and_where(Expr::col(Refunds::Id).eq(id));
    }
    if let Some(p) = psp_refund_id {
        q.and_where(Expr::col(Refunds::PspRefundId).eq(p));
    }
    tx.tx.fetch_optional::<RefundRow>(&q).await
}

/// Takes a queued refund off the queue for this caller only.
pub async fn claim_queued_refund(tx: &mut TenantTx, id: &str, now: DateTime<Utc>) -> Result<bool> {
    let q = Query::update()
        .table(Refunds::Table)
        .value(Refunds::QueuedReason, Option::<String>::None)
        .value(Refunds::UpdatedAt, now)
        .cond_where(tx.in_scope(Refunds::TenantId, Refunds::Environment))
        .and_where(Expr::col(Refunds::Id).eq(id))
        .and_where(Expr::col(Refunds::QueuedReason).is_not_null())
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

/// The payment created under an `Idempotency-Key`.
pub async fn by_request_key(tx: &mut TenantTx, key: &str) -> Result<Option<PaymentRow>> {
    let q = select(tx).and_where(Expr::col(Payments::RequestKey).eq(key)).to_owned();
    tx.tx.fetch_optional::<PaymentRow>(&q).await
}

/// The payments of a request key and of its retries (`{key}-r{n}`), oldest first.
pub async fn under_key_and_retries(tx: &mut TenantTx, key: &str) -> Result<Vec<PaymentRow>> {
    let q = select(tx)
        .cond_where(
            sea_query::Cond::any().add(Expr::col(Payments::RequestKey).eq(key)).add(
                sea_query::Cond::all()
                    .add(Expr::col(Payments::RequestKey).gt(format!("{key}-r")))
                    .add(Expr::col(Payments::RequestKey).lt(format!("{key}-s"))),
            ),
        )
        .order_by(Payments::CreatedAt, Order::Asc)
        .order_by(Payments::Id, Order::Asc)
        .to_owned();
    let retry = |k: &str| {
        k.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix("-r"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let rows = tx.tx.fetch_all::<PaymentRow>(&q).await?;
    Ok(rows.into_iter().filter(|p| p.request_key.as_deref().is_some_and(|k| k == key || retry(k))).collect())
}

/// Captured payments not refunded in full, whose request key starts with `key_prefix` and does
/// not contain `not_containing`, that changed since `since` and pay no invoice, most recently
/// changed first, up to `limit` (the sweep for trial conversion charges that paid for nothing).
/// Both strings must hold no `LIKE` wildcard (`%`, `_`).
pub async fn captured_unlinked(
    tx: &mut TenantTx,
    key_prefix: &str,
    not_containing: &str,
    since: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<PaymentRow>> {
    use crate::invoices::InvoicePayments as Ip;
    let linked = Query::select()
        .expr(Expr::val(1))
        .from(Ip::Table)
        .and_where(Expr::col((Ip::Table, Ip::TenantId)).equals((Payments::Table, Payments::TenantId)))
        .and_where(Expr::col((Ip::Table, Ip::Environment)).equals((Payments::Table, Payments::Environment)))
        .and_where(Expr::col((Ip::Table, Ip::PaymentId)).equals((Payments::Table, Payments::Id)))
        .to_owned();
    let q = select(tx)
        .and_where(Expr::col(Payments::Status).eq("captured"))
        .and_where(Expr::col(Payments::UpdatedAt).gte(since))
        .and_where(Expr::col(Payments::RefundedAmount).lt(Expr::col(Payments::CapturedAmount)))
        .and_where(Expr::col(Payments::RequestKey).like(format!("{key_prefix}%")))
        .and_where(Expr::col(Payments::RequestKey).not_like(format!("%{not_containing}%")))
        .and_where(Expr::exists(linked).not())
        .order_by(Payments::UpdatedAt, Order::Desc)
        .limit(limit)
        .to_owned();
    tx.tx.fetch_all::<PaymentRow>(&q).await
}
