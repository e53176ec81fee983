//! Invoices and credit notes (DESIGN.md section 2; issue 9).
//!
//! An invoice is issued `open`, with its number, inside the transaction of whatever bills the
//! customer (the checkout's first charge, a renewal, a proration), and is marked `paid` in the
//! transaction that records the payment settling it. Numbers are gapless per storefront series
//! (see `docs/decisions/0008-invoice-numbering.md`): [`issue`] takes the next number with one
//! upsert on the series row, which that row then keeps locked until the caller commits or rolls
//! back — so call it late in the transaction and never hold the transaction across a PSP call.
//!
//! When another transaction holds the series row ([`Numbering::Auto`]), or always
//! ([`Numbering::Deferred`]), the issuer does not wait: the invoice commits as a `draft` without
//! a number, queued, and the numbering pass ([`number_pending`], run by the worker every 200 ms)
//! gives the queued drafts of a series consecutive numbers in one transaction — one hold of the
//! series row for the whole batch. Meanwhile the draft can be paid (it is then issued `paid`);
//! voiding it, giving up on it or crediting it numbers it first.
//!
//! A refund that succeeds for a payment that settled an invoice gets a credit note, in the
//! refund's transaction ([`credit_note_for_refund`]), numbered in the storefront's credit note
//! series. A checkout that starts with a free trial charges nothing and issues no invoice: the
//! first invoice is the one for the first charge.
//!
//! Every function here that writes expects the caller to have recorded its journal action in
//! the transaction; the invoice's own outcomes (`invoice.issued`, `invoice.paid`,
//! `invoice.voided`, `invoice.uncollectible`, `credit_note.issued`) follow it.

pub mod fiscal;

use azotte_domain::catalog::{Currency, TaxKind};
use azotte_domain::id::{CreditNoteId, InvoiceId};
use azotte_domain::invoice::{
    self as rules, Amounts, DocumentKind, FiscalAction, FiscalProvider, InvoiceError, InvoiceEvent,
    InvoiceStatus,
};
use azotte_domain::permission::Permission;
use azotte_domain::{FieldError, ValidationErrors};
use azotte_store::catalog::{self as catalog_store, Storefront};
use azotte_store::invoices::{
    self as store, CreditNoteLineRow, InvoiceFilter, InvoicePaymentRow, LineRow, NumberingRow,
};
use azotte_store::journal::Cause;
use azotte_store::payments as payment_store;
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, Datelike, Utc};
use serde_json::json;

use crate::subscriptions::offers::OfferItem;
use crate::{Ctx, Result, ServiceError};

pub use azotte_domain::invoice::LineKind;
pub use azotte_store::invoices::{CreditNoteRow, FiscalRow, InvoiceRow};

/// One line to bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput {
    pub description: String,
    pub kind: LineKind,
    /// The unit amount as priced, per `tax_behaviour` (tax included or not), minor units.
    /// Negative only for a proration credit.
    pub amount: i64,
    pub quantity: u32,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub tax_behaviour: TaxKind,
}

/// When an invoice gets its gapless number (configuration `invoice_numbering`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Numbering {
    /// In the issuing transaction, unless another transaction holds the series row: then the
    /// invoice commits as a queued `draft` and the numbering pass numbers it, with the others
    /// queued meanwhile, shortly after. (SQLite's one writer never finds the row held.)
    #[default]
    Auto,
    /// Always by the numbering pass: issuers never touch the series row.
    Deferred,
}

/// Drafts one numbering transaction numbers at most.
const NUMBERING_BATCH: u64 = 500;

/// How long the pass leaves an unpaid queued draft alone: a renewal queues its invoice just
/// before charging and pays it a moment later, and the pass then issues it `paid` at once
/// instead of holding it while the renewal's settling transaction waits to pay it.
const UNPAID_GRACE: chrono::Duration = chrono::Duration::seconds(1);

fn invalid(e: InvoiceError) -> ServiceError {
    let code = match e {
        InvoiceError::NoLines => "invoice_without_lines",
        InvoiceError::ZeroQuantity => "zero_quantity",
        InvoiceError::RateOutOfRange => "rate_out_of_range",
        InvoiceError::NegativeLine => "negative_line",
        InvoiceError::TooLarge => "amount_too_large",
        InvoiceError::NegativeTotal => "negative_total",
        InvoiceError::CreditOutOfRange | InvoiceError::IllegalTransition { .. } => "invalid_credit",
    };
    ValidationErrors::from(FieldError::new("lines", code, e.to_string())).into()
}

fn conflict(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Conflict { code, message: message.into(), field: None }
}

fn status_of(row: &InvoiceRow) -> Result<InvoiceStatus> {
    row.status
        .parse()
        .map_err(|_| ServiceError::Internal(format!("invoice {} has status {:?}", row.id, row.status).into()))
}

/// Issues an open invoice with a number, in the caller's transaction (journaled outcome
/// `invoice.issued`) — or, when the series is busy ([`Numbering`]), a queued `draft` that the
/// numbering pass numbers after the commit. The tax rate is the storefront's for the customer's
/// country.
#[allow(clippy::too_many_arguments)]
pub async fn issue(
    tx: &mut TenantTx,
    numbering: Numbering,
    storefront: &Storefront,
    customer_id: &str,
    customer_country: Option<&str>,
    subscription_id: Option<&str>,
    currency: &Currency,
    lines: &[LineInput],
    now: DateTime<Utc>,
) -> Result<InvoiceRow> {
    let rate = storefront.tax.rate_for(customer_country);
    issue_at_rate(
        tx,
        numbering,
        storefront,
        customer_id,
        customer_country,
        subscription_id,
        currency,
        lines,
        rate,
        now,
    )
    .await
}

/// [`issue`] at a given tax rate: the rate an offer quoted, so that the invoice bills exactly
/// what was charged even if the storefront's rates changed since.
#[allow(clippy::too_many_arguments)]
pub async fn issue_at_rate(
    tx: &mut TenantTx,
    numbering: Numbering,
    storefront: &Storefront,
    customer_id: &str,
    customer_country: Option<&str>,
    subscription_id: Option<&str>,
    currency: &Currency,
    lines: &[LineInput],
    rate_bp: u32,
    now: DateTime<Utc>,
) -> Result<InvoiceRow> {
    // Written as a draft, then numbered: the series row stays locked from the number until the
    // caller commits, so callers issue last.
    draft_at_rate(
        tx,
        storefront,
        customer_id,
        customer_country,
        subscription_id,
        currency,
        lines,
        rate_bp,
        now,
    )
    .await?
    .issue(tx, numbering, now)
    .await
}

/// An invoice priced and written as a `draft` (no number yet) in the caller's transaction, so
/// that [`Draft::issue`] can take the number — which keeps the series row locked until the
/// transaction ends — as the transaction's last write. It commits issued, or queued for the
/// numbering pass when the series row is busy ([`Numbering`]), or not at all.
#[derive(Debug)]
pub(crate) struct Draft {
    row: InvoiceRow,
    lines: usize,
    rate_bp: u32,
    prefix: String,
    /// The captured payment recorded as settling it in full.
    paid_by: Option<String>,
    /// What was refunded of that payment before (credited on the invoice once issued).
    refunded_before: i64,
}

/// Writes a [`Draft`] invoice and its lines at a given tax rate, in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn draft_at_rate(
    tx: &mut TenantTx,
    storefront: &Storefront,
    customer_id: &str,
    customer_country: Option<&str>,
    subscription_id: Option<&str>,
    currency: &Currency,
    lines: &[LineInput],
    rate_bp: u32,
    now: DateTime<Utc>,
) -> Result<Draft> {
    let (row, line_rows) =
        priced(storefront, customer_id, customer_country, subscription_id, currency, lines, rate_bp, now)?;
    write_draft(tx, storefront, row, &line_rows, rate_bp).await
}

/// Writes a priced invoice ([`priced`]) and its lines as a [`Draft`].
async fn write_draft(
    tx: &mut TenantTx,
    storefront: &Storefront,
    row: InvoiceRow,
    line_rows: &[LineRow],
    rate_bp: u32,
) -> Result<Draft> {
    store::insert(tx, &row).await?;
    store::insert_lines(tx, line_rows).await?;
    Ok(Draft {
        row,
        lines: line_rows.len(),
        rate_bp,
        prefix: storefront.invoice_prefix.clone(),
        paid_by: None,
        refunded_before: 0,
    })
}

impl Draft {
    /// The invoice's id.
    pub(crate) fn id(&self) -> &str {
        &self.row.id
    }

    /// What it bills in all.
    pub(crate) fn total(&self) -> i64 {
        self.row.total
    }

    /// Records `payment` as settling the invoice in full (it must be captured, of the invoice's
    /// customer, storefront and currency, and cover the total); [`Draft::issue`] then issues it
    /// paid, and credits on it what was refunded of the payment before. `payment` is as this
    /// transaction holds it ([`payment_store::get_locked`]).
    pub(crate) async fn pay_with(
        &mut self,
        tx: &mut TenantTx,
        payment: &payment_store::PaymentRow,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if !settles(payment, &self.row) {
            return Err(conflict(
                "payment_does_not_settle_invoice",
                "the payment must be captured, of the invoice's customer, storefront and currency, and cover what is due",
            ));
        }
        store::insert_payment(
            tx,
            &InvoicePaymentRow {
                invoice_id: self.row.id.clone(),
                payment_id: payment.id.clone(),
                amount: self.row.total,
                created_at: now,
            },
        )
        .await?;
        self.paid_by = Some(payment.id.clone());
        self.refunded_before = payment.refunded_amount;
        Ok(())
    }

    /// Takes the next number of the series and issues the draft — `open`, or `paid` after
    /// [`Draft::pay_with`] — journaled as [`issue`] and [`mark_paid`] are (outcomes
    /// `invoice.issued`, `invoice.paid`; fiscalization queued once paid). Call it as the last
    /// write before commit: from here the series row is locked until the transaction ends.
    ///
    /// If another transaction holds the series row ([`Numbering::Auto`]) or numbering is
    /// [`Numbering::Deferred`], the draft is queued for the numbering pass instead and returned
    /// as a `draft` (paid already when it was, `invoice.paid` journaled now).
    pub(crate) async fn issue(
        self,
        tx: &mut TenantTx,
        numbering: Numbering,
        now: DateTime<Utc>,
    ) -> Result<InvoiceRow> {
        let Draft { mut row, lines, rate_bp, prefix, paid_by, refunded_before } = self;
        let series = rules::series(&prefix, now.year(), DocumentKind::Invoice);
        let sequence = match numbering {
            Numbering::Auto => store::try_next_number(tx, &row.storefront_id, &series).await?,
            Numbering::Deferred => None,
        };
        // Queued: the numbering pass credits earlier refunds once it has numbered it.
        let Some(sequence) = sequence else {
            return queue(tx, row, lines, rate_bp, paid_by, now).await;
        };
        let status = issued_status(paid_by.is_some())?;
        number_row(&mut row, series, sequence, status, now);
        if paid_by.is_some() {
            row.amount_paid = row.total;
            row.paid_at = Some(now);
        }
        if !store::issue_draft(tx, &row).await? {
            return Err(ServiceError::Internal(format!("draft invoice {} vanished", row.id).into()));
        }
        issued_outcome(tx, &row, lines, rate_bp, now).await?;
        if let Some(payment_id) = paid_by {
            tx.outcome(
                now,
                "invoice.paid",
                Some(("invoice", &row.id)),
                json!({"payment_id": payment_id, "amount": row.total, "number": row.number}),
            )
            .await?;
            fiscal::enqueue(tx, &row, &row.id, FiscalAction::Issue, now).await?;
            return credited(tx, row, refunded_before, now).await;
        }
        Ok(row)
    }
}

/// The status a draft is issued in: `open`, or `paid` when a payment settled it.
fn issued_status(paid: bool) -> Result<InvoiceStatus> {
    let open = rules::transition(InvoiceStatus::Draft, InvoiceEvent::Finalize)
        .map_err(|e| conflict("invoice_status_conflict", e.to_string()))?;
    if !paid {
        return Ok(open);
    }
    rules::transition(open, InvoiceEvent::Pay).map_err(|e| conflict("invoice_status_conflict", e.to_string()))
}

/// Leaves a draft of this transaction for the numbering pass: recorded paid if `paid_by` settled
/// it (outcome `invoice.paid`, without a number yet), and queued with this transaction's lineage,
/// which its `invoice.issued` outcome will join.
async fn queue(
    tx: &mut TenantTx,
    mut row: InvoiceRow,
    lines: usize,
    rate_bp: u32,
    paid_by: Option<String>,
    now: DateTime<Utc>,
) -> Result<InvoiceRow> {
    if let Some(payment_id) = paid_by {
        if !paid_while_queued(tx, &mut row, &payment_id, now).await? {
            return Err(ServiceError::Internal(format!("draft invoice {} vanished", row.id).into()));
        }
    }
    let cause = tx.cause();
    // The pass journals `invoice.issued` as caused by this transaction's action.
    if cause.action_id.is_none() {
        return Err(azotte_store::StoreError::Unjournaled.into());
    }
    store::queue_numbering(
        tx,
        &NumberingRow {
            invoice_id: row.id.clone(),
            storefront_id: row.storefront_id.clone(),
            correlation_id: cause.correlation_id,
            causation_id: cause.action_id,
            lines: lines as i32,
            rate_bp: rate_bp as i32,
            queued_at: now,
        },
    )
    .await?;
    Ok(row)
}

/// Numbers queued drafts in the caller's transaction, oldest first: per storefront, one
/// reservation of consecutive numbers in the current year's series, then each draft issued
/// (`paid` if it was paid while queued, fiscalization then queued) with its `invoice.issued`
/// outcome in its issuer's lineage. `only`: that invoice alone, waiting for the series row and
/// for the draft if another transaction holds them (a caller about to void, give up on or credit
/// it); otherwise drafts another transaction holds are left for the next pass. A transaction
/// without an action records `invoice.number` first. Returns how many it numbered.
pub(crate) async fn number_queued(
    tx: &mut TenantTx,
    only: Option<&str>,
    now: DateTime<Utc>,
) -> Result<usize> {
    let queued = store::numbering_queue(tx, only, NUMBERING_BATCH).await?;
    if queued.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = queued.iter().map(|q| q.invoice_id.clone()).collect();
    let (skip_locked, unpaid_before) = match only {
        Some(_) => (false, None),
        None => (true, Some(now - UNPAID_GRACE)),
    };
    let mut drafts: std::collections::HashMap<String, InvoiceRow> =
        store::lock_drafts(tx, &ids, skip_locked, unpaid_before)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    // Another pass numbered what is missing (and dequeued it), or holds it now, or it is an
    // unpaid draft younger than the grace.
    let queued: Vec<NumberingRow> =
        queued.into_iter().filter(|q| drafts.contains_key(&q.invoice_id)).collect();
    if queued.is_empty() {
        return Ok(0);
    }
    // Off the queue first: from the series row's lock on, only the numbers and the commit.
    let kept: Vec<String> = queued.iter().map(|q| q.invoice_id.clone()).collect();
    store::dequeue_numbering(tx, &kept).await?;
    let numbering_action = match tx.cause().action_id {
        Some(a) => a,
        None => tx.action(now, "invoice.number", None, json!({"invoices": queued.len()})).await?,
    };
    // Series rows are locked in storefront id order: two passes (two worker processes) that
    // hold drafts of the same storefronts wait for each other's series in one order, never in
    // a cycle.
    let mut storefronts: Vec<&str> = queued.iter().map(|q| q.storefront_id.as_str()).collect();
    storefronts.sort_unstable();
    storefronts.dedup();
    let mut numbered = Vec::with_capacity(queued.len());
    let mut paid = Vec::new();
    for sf in storefronts {
        let storefront = catalog_store::get_storefront(tx, sf)
            .await?
            .ok_or_else(|| ServiceError::Internal(format!("storefront {sf} of a queued invoice").into()))?;
        let series = rules::series(&storefront.invoice_prefix, now.year(), DocumentKind::Invoice);
        let mine: Vec<&NumberingRow> = queued.iter().filter(|q| q.storefront_id == sf).collect();
        let first = store::reserve_numbers(tx, sf, &series, mine.len() as i64).await?;
        let mut rows = Vec::with_capacity(mine.len());
        for (i, q) in mine.iter().enumerate() {
            // Each kept draft once: a number reserved and not given would be a gap.
            let mut row = drafts.remove(&q.invoice_id).ok_or_else(|| {
                ServiceError::Internal(format!("queued invoice {} listed twice", q.invoice_id).into())
            })?;
            let paid = row.paid_at.is_some();
            number_row(&mut row, series.clone(), first + i as i64, issued_status(paid)?, now);
            rows.push(row);
        }
        // One statement for the whole batch: the drafts and the series row are held briefly.
        if store::issue_drafts(tx, &rows, now).await? != rows.len() as u64 {
            return Err(ServiceError::Internal("a queued invoice left its draft state".into()));
        }
        for (q, row) in mine.into_iter().zip(rows) {
            let cause = Cause { correlation_id: q.correlation_id.clone(), action_id: q.causation_id.clone() };
            let mut body = issued_body(&row, q.lines as usize, q.rate_bp as u32);
            body["status"] = json!(row.status);
            body["numbered_by"] = json!(numbering_action);
            tx.outcome_of(&cause, now, "invoice.issued", Some(("invoice", &row.id)), body).await?;
            if row.paid_at.is_some() {
                fiscal::enqueue(tx, &row, &row.id, FiscalAction::Issue, now).await?;
                paid.push(row.id.clone());
            }
            numbered.push(row.id);
        }
    }
    // Refunds that succeeded before their payment paid one of these drafts had no invoice to
    // credit then: credited now that it has its number ([`credit_earlier_refunds`]) — those of
    // payments this pass can hold without waiting. A payment held elsewhere is held by a
    // refund's completion, which credits all of its refunds once it has its own note, or by a
    // payment of another invoice; waiting for it here, with the series rows held, could close a
    // cycle with a refund completion waiting for one of these drafts.
    let uncredited = store::uncredited_refunds(tx, &paid).await?;
    if !uncredited.is_empty() {
        let ids: Vec<String> = uncredited.iter().map(|(p, _, _)| p.clone()).collect();
        let held = payment_store::lock_free(tx, &ids).await?;
        let mine = uncredited.into_iter().filter(|(p, _, _)| held.contains(p)).collect();
        Box::pin(write_credit_notes(tx, mine, now)).await?;
    }
    Ok(numbered.len())
}

/// The numbering pass over one tenant environment: numbers its queued drafts in transactions of
/// up to 500 until none is left (or the rest is held by other transactions). Returns how many.
pub async fn number_pending(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = ctx.db.tenant_tx(scope).await?;
        let n = number_queued(&mut tx, None, ctx.clock.now()).await?;
        tx.commit().await?;
        total += n;
        if n < NUMBERING_BATCH as usize {
            return Ok(total);
        }
    }
}

/// [`number_pending`] in every tenant environment with queued drafts, longest waiting first
/// (the worker's pass). A failure in one environment is logged and the others still run; the
/// first failure is returned once all have had their turn.
pub async fn number_pending_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut total = 0;
    let mut failure = None;
    for (tenant, env) in store::environments_numbering(&ctx.db, 1000).await? {
        let (Ok(tenant_id), Ok(environment)) = (tenant.parse(), env.parse()) else { continue };
        let scope = match azotte_store::auth::system_scope(
            &ctx.db,
            tenant_id,
            environment,
            "invoice_numbering",
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "invoice numbering: tenant skipped");
                continue;
            }
        };
        match number_pending(ctx, &scope).await {
            Ok(n) => total += n,
            Err(e) => {
                tracing::warn!(tenant = %tenant, environment = %env, error = %e, "invoice numbering failed; will retry");
                failure = failure.or(Some(e));
            }
        }
    }
    match failure {
        Some(e) if total == 0 => Err(e),
        _ => Ok(total),
    }
}

/// A committed draft is one waiting for its number: numbers it now, in the caller's
/// transaction, and returns the invoice as it then is.
async fn numbered_now(tx: &mut TenantTx, row: InvoiceRow, now: DateTime<Utc>) -> Result<InvoiceRow> {
    if row.status != InvoiceStatus::Draft.as_str() {
        return Ok(row);
    }
    number_queued(tx, Some(&row.id), now).await?;
    store::get(tx, &row.id).await?.ok_or(ServiceError::NotFound { resource: "invoice" })
}

/// An invoice's row (a `draft`, no number) and lines, priced at `rate_bp`.
#[allow(clippy::too_many_arguments)]
fn priced(
    storefront: &Storefront,
    customer_id: &str,
    customer_country: Option<&str>,
    subscription_id: Option<&str>,
    currency: &Currency,
    lines: &[LineInput],
    rate_bp: u32,
    now: DateTime<Utc>,
) -> Result<(InvoiceRow, Vec<LineRow>)> {
    let priced = lines
        .iter()
        .map(|l| rules::price_line(l.kind, l.amount, l.quantity, l.tax_behaviour, rate_bp))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let totals = rules::totals(priced.iter().map(|p| &p.amounts)).map_err(invalid)?;
    let id = InvoiceId::new().to_string();
    let line_rows: Vec<LineRow> = lines
        .iter()
        .zip(&priced)
        .enumerate()
        .map(|(i, (l, p))| LineRow {
            line_no: i as i32 + 1,
            kind: l.kind.as_str().to_owned(),
            description: l.description.chars().take(500).collect(),
            unit_amount: l.amount,
            quantity: l.quantity as i32,
            amount: p.amount,
            tax_behaviour: p.tax_behaviour.as_str().to_owned(),
            rate_bp: p.rate_bp as i32,
            net: p.amounts.net,
            tax: p.amounts.tax,
            gross: p.amounts.gross,
            period_start: l.period_start,
            period_end: l.period_end,
            invoice_id: id.clone(),
        })
        .collect();
    let row = InvoiceRow {
        id,
        storefront_id: storefront.id.clone(),
        customer_id: customer_id.to_owned(),
        subscription_id: subscription_id.map(str::to_owned),
        series: None,
        sequence: None,
        number: None,
        status: InvoiceStatus::Draft.as_str().to_owned(),
        currency: currency.to_string(),
        customer_country: customer_country.map(str::to_owned),
        net: totals.net,
        tax: totals.tax,
        total: totals.gross,
        amount_paid: 0,
        amount_credited: 0,
        fiscal_provider: storefront.fiscalization.as_str().to_owned(),
        issued_at: None,
        paid_at: None,
        voided_at: None,
        uncollectible_at: None,
        created_at: now,
        updated_at: now,
    };
    Ok((row, line_rows))
}

/// Gives a row its number in `series` and the status it is issued in.
fn number_row(
    row: &mut InvoiceRow,
    series: String,
    sequence: i64,
    status: InvoiceStatus,
    now: DateTime<Utc>,
) {
    row.number = Some(rules::number(&series, sequence));
    row.series = Some(series);
    row.sequence = Some(sequence);
    row.status = status.as_str().to_owned();
    row.issued_at = Some(now);
    row.updated_at = now;
}

fn issued_body(row: &InvoiceRow, lines: usize, rate_bp: u32) -> serde_json::Value {
    json!({"number": row.number, "customer_id": row.customer_id, "subscription_id": row.subscription_id,
           "currency": row.currency, "net": row.net, "tax": row.tax, "total": row.total,
           "lines": lines, "rate_bp": rate_bp})
}

async fn issued_outcome(
    tx: &mut TenantTx,
    row: &InvoiceRow,
    lines: usize,
    rate_bp: u32,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.outcome(now, "invoice.issued", Some(("invoice", &row.id)), issued_body(row, lines, rate_bp)).await?;
    Ok(())
}

/// Whether a payment settles what is due on an invoice.
/// A refund made before the payment settled the invoice does not stop it, even one of it all:
/// it is credited on the invoice once it does ([`credit_earlier_refunds`]). (A checkout whose
/// charge was refunded in full meanwhile fails before it gets here.)
fn settles(p: &payment_store::PaymentRow, invoice: &InvoiceRow) -> bool {
    p.status == "captured"
        && p.customer_id == invoice.customer_id
        && p.storefront_id == invoice.storefront_id
        && p.currency == invoice.currency
        && p.captured_amount >= invoice.total - invoice.amount_paid
}

/// Refunds that succeeded before their payment paid one of `invoice_ids` had no invoice to
/// credit then: each is credited now ([`write_credit_note`], once per refund), as it would have
/// been had it come after. The caller holds the payments. Refunds still pending are credited
/// when they succeed, as any are.
async fn credit_earlier_refunds(tx: &mut TenantTx, invoice_ids: &[String], now: DateTime<Utc>) -> Result<()> {
    let uncredited = store::uncredited_refunds(tx, invoice_ids).await?;
    write_credit_notes(tx, uncredited, now).await
}

/// A credit note for each (payment, refund, amount) of `refunds` ([`write_credit_note`]),
/// whose payments the caller holds; a refund listed twice (its payment pays several of the
/// invoices they were found for) once.
async fn write_credit_notes(
    tx: &mut TenantTx,
    refunds: Vec<(String, String, i64)>,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut done = std::collections::HashSet::new();
    for (payment_id, refund_id, amount) in refunds {
        if done.insert(refund_id.clone()) {
            // (Boxed: crediting may number a draft, and numbering credits.)
            Box::pin(write_credit_note(tx, &payment_id, &refund_id, amount, now)).await?;
        }
    }
    Ok(())
}

/// Moves an invoice by `event`, writing it only if nobody moved it meanwhile.
async fn apply(
    tx: &mut TenantTx,
    invoice_id: &str,
    event: InvoiceEvent,
    now: DateTime<Utc>,
    change: impl FnOnce(&mut InvoiceRow),
) -> Result<(InvoiceRow, InvoiceStatus)> {
    let row = store::get(tx, invoice_id).await?.ok_or(ServiceError::NotFound { resource: "invoice" })?;
    let mut row = numbered_now(tx, row, now).await?;
    let from = status_of(&row)?;
    let to =
        rules::transition(from, event).map_err(|e| conflict("invoice_status_conflict", e.to_string()))?;
    row.status = to.as_str().to_owned();
    row.updated_at = now;
    change(&mut row);
    if !store::update_status(tx, &row, from.as_str()).await? {
        return Err(conflict("invoice_changed", "the invoice changed meanwhile; read it again"));
    }
    Ok((row, from))
}

/// Marks an open (or uncollectible) invoice paid by a captured payment of the same customer,
/// storefront and currency, in the caller's transaction (outcome `invoice.paid`), and queues its
/// fiscalization. Paying it again with the same payment returns it unchanged.
pub async fn mark_paid(
    tx: &mut TenantTx,
    invoice_id: &str,
    payment_id: &str,
    now: DateTime<Utc>,
) -> Result<InvoiceRow> {
    let mut current =
        store::get(tx, invoice_id).await?.ok_or(ServiceError::NotFound { resource: "invoice" })?;
    if current.status == InvoiceStatus::Draft.as_str() {
        if let Some(paid) = pay_queued(tx, &current, payment_id, now).await? {
            return Ok(paid);
        }
        // Numbered meanwhile: paid as any open invoice. (Paid meanwhile by another payment: the
        // status checks below refuse it.)
        current = store::get(tx, invoice_id).await?.ok_or(ServiceError::NotFound { resource: "invoice" })?;
    }
    if current.status == InvoiceStatus::Paid.as_str() {
        let paid_by = store::invoice_payments(tx, Some(invoice_id), None).await?;
        if paid_by.iter().any(|p| p.payment_id == payment_id) {
            return Ok(current);
        }
    }
    // Locked: a refund of it waits until this transaction ends ([`payment_store::get_locked`]).
    let p = payment_store::get_locked(tx, payment_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "payment" })?;
    let due = current.total - current.amount_paid;
    if !settles(&p, &current) {
        return Err(conflict(
            "payment_does_not_settle_invoice",
            "the payment must be captured, of the invoice's customer, storefront and currency, and cover what is due",
        ));
    }
    let (row, _) = apply(tx, invoice_id, InvoiceEvent::Pay, now, |r| {
        r.amount_paid = r.total;
        r.paid_at = Some(now);
    })
    .await?;
    store::insert_payment(
        tx,
        &InvoicePaymentRow {
            invoice_id: invoice_id.to_owned(),
            payment_id: payment_id.to_owned(),
            amount: due,
            created_at: now,
        },
    )
    .await?;
    tx.outcome(
        now,
        "invoice.paid",
        Some(("invoice", invoice_id)),
        json!({"payment_id": payment_id, "amount": due, "number": row.number}),
    )
    .await?;
    fiscal::enqueue(tx, &row, invoice_id, FiscalAction::Issue, now).await?;
    credited(tx, row, p.refunded_amount, now).await
}

/// `invoice`, just paid by a payment of which `refunded` was refunded before, once that is
/// credited on it ([`credit_earlier_refunds`]; nothing read when nothing was refunded).
async fn credited(
    tx: &mut TenantTx,
    invoice: InvoiceRow,
    refunded: i64,
    now: DateTime<Utc>,
) -> Result<InvoiceRow> {
    if refunded == 0 {
        return Ok(invoice);
    }
    credit_earlier_refunds(tx, std::slice::from_ref(&invoice.id), now).await?;
    store::get(tx, &invoice.id).await?.ok_or(ServiceError::NotFound { resource: "invoice" })
}

/// [`mark_paid`] for a draft waiting for its number: records the payment (outcome
/// `invoice.paid` without a number; the numbering pass issues it `paid` and queues its
/// fiscalization). `None` when it was numbered meanwhile.
async fn pay_queued(
    tx: &mut TenantTx,
    draft: &InvoiceRow,
    payment_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<InvoiceRow>> {
    if draft.paid_at.is_some() {
        let paid_by = store::invoice_payments(tx, Some(&draft.id), None).await?;
        if paid_by.iter().any(|p| p.payment_id == payment_id) {
            return Ok(Some(draft.clone()));
        }
        return Err(conflict("invoice_status_conflict", "the invoice is paid already"));
    }
    // Locked: a refund of it waits until this transaction ends ([`payment_store::get_locked`]).
    let p = payment_store::get_locked(tx, payment_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "payment" })?;
    if !settles(&p, draft) {
        return Err(conflict(
            "payment_does_not_settle_invoice",
            "the payment must be captured, of the invoice's customer, storefront and currency, and cover what is due",
        ));
    }
    let mut row = draft.clone();
    if !paid_while_queued(tx, &mut row, payment_id, now).await? {
        return Ok(None);
    }
    store::insert_payment(
        tx,
        &InvoicePaymentRow {
            invoice_id: draft.id.clone(),
            payment_id: payment_id.to_owned(),
            amount: draft.total,
            created_at: now,
        },
    )
    .await?;
    // Earlier refunds of the payment are credited by the numbering pass, once it is numbered.
    Ok(Some(row))
}

/// Records a queued draft as paid in full by `payment_id` (outcome `invoice.paid`, no number
/// yet): `false` when it is no longer an unpaid draft.
async fn paid_while_queued(
    tx: &mut TenantTx,
    row: &mut InvoiceRow,
    payment_id: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    if !store::pay_draft(tx, &row.id, now).await? {
        return Ok(false);
    }
    row.amount_paid = row.total;
    row.paid_at = Some(now);
    row.updated_at = now;
    tx.outcome(
        now,
        "invoice.paid",
        Some(("invoice", &row.id)),
        json!({"payment_id": payment_id, "amount": row.total, "number": null, "numbering": "queued"}),
    )
    .await?;
    Ok(true)
}

/// Gives up collecting an open invoice (outcome `invoice.uncollectible`); it may still be paid.
pub async fn mark_uncollectible(
    tx: &mut TenantTx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<InvoiceRow> {
    let (row, from) =
        apply(tx, invoice_id, InvoiceEvent::MarkUncollectible, now, |r| r.uncollectible_at = Some(now))
            .await?;
    tx.outcome(now, "invoice.uncollectible", Some(("invoice", invoice_id)), json!({"was": from.as_str()}))
        .await?;
    Ok(row)
}

/// Voids an invoice that was not paid (outcome `invoice.voided`). Its number stays used: a
/// void invoice is kept, so the series has no gap. If it was fiscalized, the provider is asked
/// to cancel it.
pub async fn void(tx: &mut TenantTx, invoice_id: &str, now: DateTime<Utc>) -> Result<InvoiceRow> {
    let (row, from) = apply(tx, invoice_id, InvoiceEvent::Void, now, |r| r.voided_at = Some(now)).await?;
    tx.outcome(now, "invoice.voided", Some(("invoice", invoice_id)), json!({"was": from.as_str()})).await?;
    if store::get_fiscal(tx, invoice_id, FiscalAction::Issue.as_str()).await?.is_some() {
        fiscal::enqueue(tx, &row, invoice_id, FiscalAction::Cancel, now).await?;
    }
    Ok(row)
}

/// A credit note for a refund of a payment that settled an invoice, in the refund's
/// transaction (outcome `credit_note.issued`): `None` when the payment settled no invoice (or
/// the invoice is fully credited). At most what is left to credit on the invoice; the amount is
/// spread over its lines by `azotte_domain::invoice::allocate_credit`. Once per refund.
pub async fn credit_note_for_refund(
    tx: &mut TenantTx,
    payment_id: &str,
    refund_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<Option<CreditNoteRow>> {
    // Held, so that a payment paying an invoice meanwhile either committed before (its link is
    // read below) or waits and then credits this refund itself ([`credit_earlier_refunds`]).
    let held = payment_store::get_locked(tx, payment_id).await?;
    // Credited already — perhaps by whoever held it just now (the same refund recorded twice: a
    // webhook and reconciliation).
    if let Some(existing) = store::credit_note_of_refund(tx, refund_id).await? {
        return Ok(Some(existing));
    }
    let note = write_credit_note(tx, payment_id, refund_id, amount, now).await?;
    // Other refunds of the payment that succeeded before it paid the invoice, and were left by a
    // numbering pass that found the payment held (by this transaction), are credited too.
    if let (Some(n), Some(p)) = (&note, held) {
        if p.refunded_amount > amount {
            credit_earlier_refunds(tx, std::slice::from_ref(&n.invoice_id), now).await?;
        }
    }
    Ok(note)
}

/// [`credit_note_for_refund`]'s note, the payment held by the caller.
async fn write_credit_note(
    tx: &mut TenantTx,
    payment_id: &str,
    refund_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<Option<CreditNoteRow>> {
    let settled = store::invoice_payments(tx, None, Some(payment_id)).await?;
    let mut invoice = None;
    for s in &settled {
        let i = store::get(tx, &s.invoice_id).await?;
        if let Some(i) = i.filter(|i| i.amount_paid > i.amount_credited) {
            invoice = Some(i);
            break;
        }
    }
    let Some(inv) = invoice else { return Ok(None) };
    // A credit note names the invoice it credits: a draft waiting for its number gets it first
    // — and numbering it credits its payment's refunds that succeeded before, this one among
    // them when it has succeeded already.
    let queued = inv.status == InvoiceStatus::Draft.as_str();
    let inv = numbered_now(tx, inv, now).await?;
    if queued {
        if let Some(existing) = store::credit_note_of_refund(tx, refund_id).await? {
            return Ok(Some(existing));
        }
    }
    let amount = amount.min(inv.amount_paid - inv.amount_credited);
    if amount <= 0 {
        return Ok(None);
    }
    // Reserve the amount first: the update locks the invoice, so a concurrent credit note of
    // the same invoice waits here and then reads this one's lines.
    if !store::add_credited(tx, &inv.id, amount, now).await? {
        return Err(conflict("invoice_fully_credited", "the invoice has no more to credit"));
    }
    let lines = store::lines_of(tx, &inv.id).await?;
    let notes = store::credit_notes_of(tx, &inv.id).await?;
    let ids: Vec<String> = notes.iter().map(|n| n.id.clone()).collect();
    let mut credited = vec![Amounts::default(); lines.len()];
    for l in store::credit_note_lines(tx, &ids).await? {
        if let Some(c) = credited.get_mut(l.invoice_line_no as usize - 1) {
            *c = Amounts { net: c.net + l.net, tax: c.tax + l.tax, gross: c.gross + l.gross };
        }
    }
    let original: Vec<(u32, Amounts)> = lines
        .iter()
        .map(|l| (l.rate_bp as u32, Amounts { net: l.net, tax: l.tax, gross: l.gross }))
        .collect();
    let parts = rules::allocate_credit(&rules::remaining(&original, &credited), amount).map_err(invalid)?;
    let totals = parts.iter().fold(Amounts::default(), |a, p| Amounts {
        net: a.net + p.net,
        tax: a.tax + p.tax,
        gross: a.gross + p.gross,
    });
    let id = CreditNoteId::new().to_string();
    let cn_lines: Vec<CreditNoteLineRow> = lines
        .iter()
        .zip(&parts)
        .filter(|(_, p)| **p != Amounts::default())
        .enumerate()
        .map(|(i, (l, p))| CreditNoteLineRow {
            credit_note_id: id.clone(),
            line_no: i as i32 + 1,
            invoice_line_no: l.line_no,
            description: l.description.clone(),
            rate_bp: l.rate_bp,
            net: p.net,
            tax: p.tax,
            gross: p.gross,
        })
        .collect();
    let reason =
        payment_store::get_refund(tx, Some(refund_id), None).await?.map(|r| r.reason).unwrap_or_default();
    let storefront = catalog_store::get_storefront(tx, &inv.storefront_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "storefront" })?;
    let series = rules::series(&storefront.invoice_prefix, now.year(), DocumentKind::CreditNote);
    let sequence = store::next_number(tx, &storefront.id, &series).await?;
    let note = CreditNoteRow {
        id: id.clone(),
        storefront_id: inv.storefront_id.clone(),
        invoice_id: inv.id.clone(),
        payment_id: payment_id.to_owned(),
        refund_id: refund_id.to_owned(),
        number: rules::number(&series, sequence),
        series,
        sequence,
        currency: inv.currency.clone(),
        net: totals.net,
        tax: totals.tax,
        total: totals.gross,
        reason,
        created_at: now,
    };
    store::insert_credit_note(tx, &note).await?;
    store::insert_credit_note_lines(tx, &cn_lines).await?;
    tx.outcome(
        now,
        "credit_note.issued",
        Some(("invoice", &inv.id)),
        json!({"credit_note_id": id, "number": note.number, "refund_id": refund_id, "payment_id": payment_id,
               "net": note.net, "tax": note.tax, "total": note.total}),
    )
    .await?;
    fiscal::enqueue(tx, &inv, &id, FiscalAction::CreditNote, now).await?;
    Ok(Some(note))
}

/// The initial invoice of a checkout that charged (none for a trial): a [`Draft`] at the
/// offer's quoted rate for the price version bought, settled by the checkout's captured
/// payment, in the transaction that creates the subscription — whose last write is then
/// [`Draft::issue`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn for_checkout(
    tx: &mut TenantTx,
    subscription: &azotte_store::subscriptions::SubscriptionRow,
    item: &OfferItem,
    storefront: &Storefront,
    version: &catalog_store::PriceVersion,
    customer_country: Option<&str>,
    payment: &payment_store::PaymentRow,
    now: DateTime<Utc>,
) -> Result<Draft> {
    let billed = bill_checkout(subscription, item, storefront, version, customer_country, now)?;
    let mut draft = write_draft(tx, storefront, billed.row, &billed.lines, billed.rate_bp).await?;
    draft.pay_with(tx, payment, now).await?;
    Ok(draft)
}

/// The line and currency of a checkout's first invoice: the price version sold, over the
/// subscription's first period.
fn checkout_line(
    subscription: &azotte_store::subscriptions::SubscriptionRow,
    item: &OfferItem,
    version: &catalog_store::PriceVersion,
) -> Result<(LineInput, Currency)> {
    let currency = Currency::parse("currency", &item.currency)
        .map_err(|e| ServiceError::Internal(format!("checkout invoice: {}", e.message).into()))?;
    let line = LineInput {
        description: item.bundle_name.clone(),
        kind: LineKind::Subscription,
        amount: version.amount,
        quantity: 1,
        period_start: Some(subscription.period_start),
        period_end: Some(subscription.period_end),
        tax_behaviour: version.tax_behaviour,
    };
    Ok((line, currency))
}

/// A checkout's first invoice priced as [`for_checkout`] prices it, not written: a batch of
/// checkouts settled at once writes its invoices, lines and payments with one statement each
/// ([`Billed::issue_paid`]).
pub(crate) fn bill_checkout(
    subscription: &azotte_store::subscriptions::SubscriptionRow,
    item: &OfferItem,
    storefront: &Storefront,
    version: &catalog_store::PriceVersion,
    customer_country: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Billed> {
    let (line, currency) = checkout_line(subscription, item, version)?;
    let (row, lines) = priced(
        storefront,
        &subscription.customer_id,
        customer_country,
        Some(&subscription.id),
        &currency,
        &[line],
        item.tax_rate_bp,
        now,
    )?;
    let series = rules::series(&storefront.invoice_prefix, now.year(), DocumentKind::Invoice);
    Ok(Billed { row, lines, rate_bp: item.tax_rate_bp, series })
}

/// The invoice of a later charge of a subscription (a renewal, a trial's conversion), in the
/// caller's transaction: issued for `amount` (what is charged, tax included, as the
/// subscription's amount is) over the period, and paid by `payment_id` when given (a captured
/// payment). The line is the subscription's price version when that prices to exactly `amount`
/// at the storefront's current rate for the customer (so an exclusive price shows its net as
/// priced); otherwise `amount` itself, tax included.
#[allow(clippy::too_many_arguments)]
pub async fn for_subscription_charge(
    tx: &mut TenantTx,
    numbering: Numbering,
    subscription: &azotte_store::subscriptions::SubscriptionRow,
    description: &str,
    amount: i64,
    period: (DateTime<Utc>, DateTime<Utc>),
    payment_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<InvoiceRow> {
    let invoice = draft_for_subscription_charge(tx, subscription, description, amount, period, now)
        .await?
        .issue(tx, numbering, now)
        .await?;
    match payment_id {
        Some(p) => mark_paid(tx, &invoice.id, p, now).await,
        None => Ok(invoice),
    }
}

/// [`for_subscription_charge`] as a [`Draft`], unpaid, for the caller to issue as its
/// transaction's last write.
pub(crate) async fn draft_for_subscription_charge(
    tx: &mut TenantTx,
    subscription: &azotte_store::subscriptions::SubscriptionRow,
    description: &str,
    amount: i64,
    period: (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
) -> Result<Draft> {
    let storefront = catalog_store::get_storefront(tx, &subscription.storefront_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "storefront" })?;
    let country =
        azotte_store::customers::get_customer(tx, &subscription.customer_id).await?.and_then(|c| c.country);
    let versions = catalog_store::versions_of(tx, std::slice::from_ref(&subscription.price_id)).await?;
    let charge = SubscriptionCharge {
        storefront: &storefront,
        subscription,
        country: country.as_deref(),
        versions: &versions,
        description,
        amount,
        period,
    };
    let (line, rate, currency) = charge.line()?;
    draft_at_rate(
        tx,
        &storefront,
        &subscription.customer_id,
        country.as_deref(),
        Some(&subscription.id),
        &currency,
        &[line],
        rate,
        now,
    )
    .await
}

/// A later charge of a subscription to invoice ([`for_subscription_charge`]): `amount` (tax
/// included, as the subscription's amount is) over `period`, for a customer of `country`;
/// `versions` holds the subscription's price version (and may hold others).
pub(crate) struct SubscriptionCharge<'a> {
    pub(crate) storefront: &'a Storefront,
    pub(crate) subscription: &'a azotte_store::subscriptions::SubscriptionRow,
    pub(crate) country: Option<&'a str>,
    pub(crate) versions: &'a [catalog_store::PriceVersion],
    pub(crate) description: &'a str,
    pub(crate) amount: i64,
    pub(crate) period: (DateTime<Utc>, DateTime<Utc>),
}

impl SubscriptionCharge<'_> {
    /// Its line, with the rate and currency it is billed at: the price version as priced when
    /// that prices to exactly `amount` at the storefront's rate for the customer's country, else
    /// `amount` tax included.
    fn line(&self) -> Result<(LineInput, u32, Currency)> {
        let (sub, amount) = (self.subscription, self.amount);
        let rate = self.storefront.tax.rate_for(self.country);
        let as_priced = self.versions.iter().find(|v| {
            v.price_id == sub.price_id
                && v.version == sub.price_version
                && rules::price_line(LineKind::Subscription, v.amount, 1, v.tax_behaviour, rate)
                    .is_ok_and(|l| l.amounts.gross == amount)
        });
        let (unit, behaviour) =
            as_priced.map_or((amount, TaxKind::Inclusive), |v| (v.amount, v.tax_behaviour));
        let currency = Currency::parse("currency", &sub.currency)
            .map_err(|e| ServiceError::Internal(e.message.into()))?;
        let line = LineInput {
            description: self.description.to_owned(),
            kind: LineKind::Subscription,
            amount: unit,
            quantity: 1,
            period_start: Some(self.period.0),
            period_end: Some(self.period.1),
            tax_behaviour: behaviour,
        };
        Ok((line, rate, currency))
    }

    /// Prices its invoice, written by the caller (a renewal batch: [`Billed`]).
    pub(crate) fn bill(&self, now: DateTime<Utc>) -> Result<Billed> {
        let (line, rate, currency) = self.line()?;
        let (sub, country) = (self.subscription, self.country);
        let (row, lines) =
            priced(self.storefront, &sub.customer_id, country, Some(&sub.id), &currency, &[line], rate, now)?;
        let series = rules::series(&self.storefront.invoice_prefix, now.year(), DocumentKind::Invoice);
        Ok(Billed { row, lines, rate_bp: rate, series })
    }
}

// ---------------------------------------------------------------------------------------------
// Renewal batches: many invoices written, numbered and paid with one statement each

/// A renewal batch's invoice of a subscription's period, priced but not written: the batch
/// writes all of its invoices and lines at once ([`store::insert_many`]), numbered from one
/// reservation of its series ([`store::reserve_numbers`]), in the transaction that records the
/// payments charging them.
pub(crate) struct Billed {
    pub(crate) row: InvoiceRow,
    pub(crate) lines: Vec<LineRow>,
    rate_bp: u32,
    /// The series it is numbered in (this year's, of the storefront's prefix).
    pub(crate) series: String,
}

impl Billed {
    /// Gives the invoice `sequence` of its series, `open`, and records `invoice.issued` in the
    /// transaction's current lineage (the caller writes the row).
    pub(crate) async fn issue(&mut self, tx: &mut TenantTx, sequence: i64, now: DateTime<Utc>) -> Result<()> {
        number_row(&mut self.row, self.series.clone(), sequence, issued_status(false)?, now);
        issued_outcome(tx, &self.row, self.lines.len(), self.rate_bp, now).await
    }

    /// Gives the invoice `sequence` of its series, issued `paid` in full by `payment` (captured,
    /// nothing refunded of it), and records `invoice.issued` and `invoice.paid` in the
    /// transaction's current lineage, as [`Draft::issue`] does after [`Draft::pay_with`]. The
    /// caller writes the row and the returned payment link. Fiscalization is not queued:
    /// batches only take invoices whose storefront has none.
    pub(crate) async fn issue_paid(
        &mut self,
        tx: &mut TenantTx,
        sequence: i64,
        payment: &payment_store::PaymentRow,
        now: DateTime<Utc>,
    ) -> Result<InvoicePaymentRow> {
        if !settles(payment, &self.row)
            || payment.refunded_amount != 0
            || self.row.fiscal_provider != FiscalProvider::None.as_str()
        {
            return Err(conflict(
                "payment_does_not_settle_invoice",
                "the payment must be captured, of the invoice's customer, storefront and currency, and cover what is due",
            ));
        }
        number_row(&mut self.row, self.series.clone(), sequence, issued_status(true)?, now);
        self.row.amount_paid = self.row.total;
        self.row.paid_at = Some(now);
        issued_outcome(tx, &self.row, self.lines.len(), self.rate_bp, now).await?;
        tx.outcome(
            now,
            "invoice.paid",
            Some(("invoice", &self.row.id)),
            json!({"payment_id": payment.id, "amount": self.row.total, "number": self.row.number}),
        )
        .await?;
        Ok(InvoicePaymentRow {
            invoice_id: self.row.id.clone(),
            payment_id: payment.id.clone(),
            amount: self.row.total,
            created_at: now,
        })
    }
}

/// Records, in the transaction's current lineage, that a batch paid an open invoice in full
/// with a captured payment (outcome `invoice.paid`, as [`mark_paid`] records it); the caller
/// writes it ([`store::pay_many`], [`store::insert_payments`]). Fiscalization is not queued:
/// batches only take invoices whose storefront has none.
pub(crate) async fn record_batch_paid(
    tx: &mut TenantTx,
    invoice: &InvoiceRow,
    payment: &payment_store::PaymentRow,
    now: DateTime<Utc>,
) -> Result<InvoicePaymentRow> {
    if !settles(payment, invoice) || invoice.status != InvoiceStatus::Open.as_str() {
        return Err(conflict(
            "payment_does_not_settle_invoice",
            "the payment must be captured, of the invoice's customer, storefront and currency, and cover what is due",
        ));
    }
    let due = invoice.total - invoice.amount_paid;
    tx.outcome(
        now,
        "invoice.paid",
        Some(("invoice", &invoice.id)),
        json!({"payment_id": payment.id, "amount": due, "number": invoice.number}),
    )
    .await?;
    Ok(InvoicePaymentRow {
        invoice_id: invoice.id.clone(),
        payment_id: payment.id.clone(),
        amount: due,
        created_at: now,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading

/// An invoice with everything about it.
#[derive(Debug, Clone)]
pub struct InvoiceDetail {
    pub invoice: InvoiceRow,
    pub lines: Vec<LineRow>,
    pub payments: Vec<InvoicePaymentRow>,
    pub credit_notes: Vec<(CreditNoteRow, Vec<CreditNoteLineRow>)>,
    pub fiscal: Vec<FiscalRow>,
}

/// One invoice with its lines, payments, credit notes and fiscalization (permission
/// `payment.read`).
pub async fn get(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<InvoiceDetail> {
    crate::security::require(ctx, scope, Permission::PaymentRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let d = detail(&mut tx, scope, id).await?;
    tx.commit().await?;
    Ok(d)
}

pub(crate) async fn detail(tx: &mut TenantTx, scope: &TenantScope, id: &str) -> Result<InvoiceDetail> {
    let invoice = store::get(tx, id)
        .await?
        .filter(|i| scope.storefront_allowed(&i.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "invoice" })?;
    let lines = store::lines_of(tx, id).await?;
    let payments = store::invoice_payments(tx, Some(id), None).await?;
    let notes = store::credit_notes_of(tx, id).await?;
    let ids: Vec<String> = notes.iter().map(|n| n.id.clone()).collect();
    let mut note_lines = store::credit_note_lines(tx, &ids).await?;
    let credit_notes = notes
        .into_iter()
        .map(|n| {
            let (mine, rest) = note_lines.drain(..).partition(|l| l.credit_note_id == n.id);
            note_lines = rest;
            (n, mine)
        })
        .collect();
    let fiscal = store::fiscal_of_invoice(tx, id).await?;
    Ok(InvoiceDetail { invoice, lines, payments, credit_notes, fiscal })
}

/// Filters of an invoice list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub status: Option<InvoiceStatus>,
}

/// Where an invoice's fiscalization stands: `not_required` (provider `none`), `not_sent` (not
/// paid yet), or its `issue` request's status (`pending`, `done`, `failed`).
pub fn fiscal_status(invoice: &InvoiceRow, records: &[FiscalRow]) -> String {
    if invoice.fiscal_provider == FiscalProvider::None.as_str() {
        return "not_required".into();
    }
    records
        .iter()
        .find(|r| r.document_id == invoice.id && r.action == FiscalAction::Issue.as_str())
        .map_or_else(|| "not_sent".into(), |r| r.status.clone())
}

/// Invoices, a page at a time, each with its [`fiscal_status`] (permission `payment.read`).
/// With a customer filter, an unknown customer is 404.
pub async fn list(
    ctx: &Ctx,
    scope: &TenantScope,
    f: &ListFilter,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<(InvoiceRow, String)>, bool)> {
    crate::security::require(ctx, scope, Permission::PaymentRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    if let Some(c) = &f.customer_id {
        azotte_store::customers::get_customer(&mut tx, c)
            .await?
            .ok_or(ServiceError::NotFound { resource: "customer" })?;
    }
    let filter = InvoiceFilter {
        customer_id: f.customer_id.as_deref(),
        subscription_id: f.subscription_id.as_deref(),
        status: f.status.map(InvoiceStatus::as_str),
        any_status: &[],
        storefronts: scope.storefront_restriction(),
    };
    let (rows, more) = store::list(&mut tx, &filter, limit, starting_after).await?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let records = store::issue_records(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok((
        rows.into_iter()
            .map(|r| {
                let s = fiscal_status(&r, &records);
                (r, s)
            })
            .collect(),
        more,
    ))
}
