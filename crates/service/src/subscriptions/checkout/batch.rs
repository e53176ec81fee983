//! Checkout settles gathered: the common end of a checkout's job — its first charge captured at
//! once — settled for the checkouts of one tenant environment that get there at about the same
//! time in one transaction, with one statement per table, instead of one transaction each
//! (decision 0007, "Checkouts settled together").
//!
//! A checkout whose capture arrives while another settling transaction of its tenant environment
//! runs waits for it, and is settled with whatever else arrived meanwhile (at most [`AT_ONCE`]):
//! under load each statement serves several checkouts, with no load a checkout is settled alone
//! at once. One transaction records every capture, writes every subscription and its grants and
//! marks every checkout `succeeded` (`settle_captured`: one statement on PostgreSQL), then — the
//! series rows locked only from there to the commit (decision 0008) — reserves the invoice numbers
//! and writes the invoices, their lines and their payment links (with the journal entries, in the
//! commit's statement). Each checkout is journaled in its own lineage
//! with exactly the entries the one-by-one path records, in its order (`payment.attempt_result`,
//! `payment.captured`, `checkout.complete`, `subscription.created`, `entitlements.granted`,
//! `invoice.issued`, `invoice.paid`, `checkout.succeeded`).
//!
//! Anything out of the ordinary goes the one-by-one way, which knows every case: deferred
//! invoice numbering, a storefront with fiscalization — left out before anything is written —
//! and, if the transaction cannot settle every checkout of the batch as read (a payment a
//! webhook moved first, a live subscription of the family another checkout won, a checkout
//! another runner ended, any error), the transaction is rolled back and each checkout of the
//! batch settles alone, its answer recorded then.

use std::collections::BTreeMap;

use azotte_domain::invoice::FiscalProvider;
use azotte_store::journal::RequestMeta;
use azotte_store::payments::PaymentRow;
use azotte_store::subscriptions::{self as store, CheckoutRow, Succeeded};
use azotte_store::TenantScope;
use serde_json::json;

use super::{created_outcomes, grants, new_subscription, Checked};
use crate::gather::{self, Gather, Tally};
use crate::payments::attempt::{Answer, Sending};
use crate::{Ctx, Result, ServiceError};

/// Checkouts settled in one transaction at most.
const AT_ONCE: usize = 64;

/// Checkouts this process settled together, and the transactions that settled them.
static SETTLED: Tally = Tally::new();

/// Checkouts this process settled together (however many at a time, one included), and the
/// transactions that did: their ratio is the mean batch. Exported in `/metrics`.
pub fn settled_together() -> (u64, u64) {
    SETTLED.get()
}

/// A checkout whose first charge the PSP captured, its answer not recorded yet.
pub(crate) struct Captured {
    /// As its job holds it (its `payment_id` set).
    pub(super) checkout: CheckoutRow,
    pub(super) checked: Checked,
    pub(super) sending: Sending,
    pub(super) answer: Answer,
    /// The payment as the capture leaves it ([`Sending::captured`]).
    pub(super) payment: PaymentRow,
    /// The job's lineage: every entry of this checkout carries it.
    pub(super) meta: RequestMeta,
}

/// How a checkout handed to [`settle`] came back.
pub(crate) enum Settled {
    /// Settled: `succeeded`, as written.
    Done(Box<CheckoutRow>),
    /// Not settled (nothing of it written): the job settles it alone, recording the answer.
    Alone(Box<Captured>),
}

/// The checkouts waiting to be settled, per tenant environment, of this process.
pub(crate) type Settles = Gather<Captured, Settled>;

/// Settles a checkout whose first charge was captured, with the others of its tenant
/// environment waiting at the same time: [`Settled::Done`], or handed back to settle alone.
/// `scope` is the job's (system job `checkout`).
pub(super) async fn settle(ctx: &Ctx, scope: &TenantScope, captured: Captured) -> Result<Settled> {
    if !takes(ctx, &captured) {
        return Ok(Settled::Alone(Box::new(captured)));
    }
    let together = |batch: Vec<Captured>| {
        let (ctx, scope) = (ctx.clone(), scope.clone());
        async move { run(&ctx, &scope, batch).await }
    };
    // The task that took it panicked: the payment's attempt stays started and unanswered, as
    // after a crash (reconciliation asks the PSP); the worker runs the job again.
    ctx.checkout_settles
        .submit(gather::at(scope), captured, AT_ONCE, together)
        .await
        .ok_or_else(|| ServiceError::Internal("a checkout's settle was lost".into()))
}

/// Whether a batch may settle it: numbers given at once, no fiscalization. (A payment moved
/// meanwhile — refunded, say — is not `pending` any more: the batch then settles nothing.)
fn takes(ctx: &Ctx, c: &Captured) -> bool {
    ctx.numbering == crate::invoices::Numbering::Auto
        && c.checked.sold.storefront.fiscalization == FiscalProvider::None
}

/// Settles `batch` in one transaction: all `Done`, or (the transaction rolled back) all
/// `Alone`, in `batch`'s order.
async fn run(ctx: &Ctx, scope: &TenantScope, batch: Vec<Captured>) -> Vec<Settled> {
    let n = batch.len();
    let outcome = {
        let captured: Vec<&Captured> = batch.iter().collect();
        settle_batch(ctx, scope, &captured).await
    };
    match outcome {
        Ok(rows) => {
            SETTLED.add(n);
            rows.into_iter().map(|row| Settled::Done(Box::new(row))).collect()
        }
        Err(e) => {
            tracing::info!(error = %e, checkouts = n, "checkouts not settled together; settling one by one");
            batch.into_iter().map(|c| Settled::Alone(Box::new(c))).collect()
        }
    }
}

/// The settling transaction of `batch` (see the module): the checkouts as written, in `batch`'s
/// order. Nothing is written unless every one of them is settled.
async fn settle_batch(ctx: &Ctx, scope: &TenantScope, batch: &[&Captured]) -> Result<Vec<CheckoutRow>> {
    let changed =
        |what: String| ServiceError::Conflict { code: "checkout_batch_changed", message: what, field: None };
    let mut tx = ctx.db.tenant_tx(scope).await?;
    // Read once the transaction is open (on SQLite, holding the one writer).
    let now = ctx.clock.now();
    let payments: Vec<PaymentRow> = batch.iter().map(|c| c.payment.clone()).collect();
    let mut subs = Vec::with_capacity(batch.len());
    let mut granted = Vec::with_capacity(batch.len());
    let mut checkouts = Vec::with_capacity(batch.len());
    for c in batch {
        let row = new_subscription(&c.checkout, &c.checked, now);
        granted.push(grants(&c.checked.sold.bundle, &c.checked.all));
        let mut checkout = c.checkout.clone();
        checkout.status = "succeeded".into();
        checkout.subscription_id = Some(row.id.clone());
        checkout.next_action = None;
        checkout.updated_at = now;
        checkouts.push(checkout);
        subs.push(row);
    }
    let of: Vec<(&str, &str, &[store::Grant])> = subs
        .iter()
        .zip(&granted)
        .map(|(s, g)| (s.id.as_str(), s.customer_id.as_str(), g.as_slice()))
        .collect();
    let succeeded: Vec<Succeeded> = checkouts
        .iter()
        .map(|c| Succeeded {
            checkout_id: c.id.clone(),
            subscription_id: c.subscription_id.clone().unwrap_or_default(),
            payment_id: c.payment_id.clone(),
        })
        .collect();
    // The captures, the subscriptions and their grants, the checkouts `succeeded`: one round trip
    // on PostgreSQL. A live subscription of the family (another checkout of the customer won
    // it), or one of the checkout already, fails it: the one-by-one path tells which.
    let written = store::settle_captured(&mut tx, &payments, &subs, &of, &succeeded, now).await?;
    let n = batch.len() as u64;
    if written.captured != n {
        return Err(changed(format!("recorded {} of {n} captures: a payment moved", written.captured)));
    }
    if written.succeeded != n {
        return Err(changed(format!("{} of {n} checkouts ended meanwhile", n - written.succeeded)));
    }
    // The invoices: numbered from one reservation per series, the series rows locked from here
    // to the commit, in (storefront, series) order as every locker of them takes them.
    let mut billed = Vec::with_capacity(batch.len());
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (c, sub) in batch.iter().zip(&subs) {
        let Checked { item, sold, country, .. } = &c.checked;
        let b = crate::invoices::bill_checkout(
            sub,
            item,
            &sold.storefront,
            &sold.version,
            country.as_deref(),
            now,
        )?;
        *counts.entry((sub.storefront_id.clone(), b.series.clone())).or_default() += 1;
        billed.push(b);
    }
    let mut next = BTreeMap::new();
    for ((storefront, series), n) in counts {
        let first = azotte_store::invoices::reserve_numbers(&mut tx, &storefront, &series, n).await?;
        next.insert((storefront, series), first);
    }
    // Issued now, once the numbers are this transaction's: whoever took the numbers before
    // them committed before this moment, so numbers still follow issue dates (decision 0008).
    let issued = ctx.clock.now();
    // Each checkout's entries in its own lineage, as the one-by-one path records them.
    let mut paid = Vec::with_capacity(batch.len());
    for ((((c, sub), b), checkout), g) in
        batch.iter().zip(&subs).zip(&mut billed).zip(&checkouts).zip(&granted)
    {
        tx.begin_lineage(c.meta.clone());
        c.sending.record_captured(&mut tx, &c.answer, &c.payment).await?;
        let r = Some(("checkout", checkout.id.as_str()));
        tx.action(now, "checkout.complete", r, json!({"payment_id": checkout.payment_id})).await?;
        created_outcomes(&mut tx, now, checkout, sub, g).await?;
        let sequence = next
            .get_mut(&(sub.storefront_id.clone(), b.series.clone()))
            .ok_or_else(|| ServiceError::Internal("a series without a reservation".into()))?;
        paid.push(b.issue_paid(&mut tx, *sequence, &c.payment, issued).await?);
        *sequence += 1;
        tx.outcome(now, "checkout.succeeded", r, json!({"subscription_id": sub.id})).await?;
    }
    let (invoices, lines): (Vec<_>, Vec<_>) = billed.into_iter().map(|b| (b.row, b.lines)).unzip();
    // With the commit (a refused row fails the batch as a refused statement would).
    tx.insert_at_commit();
    azotte_store::invoices::insert_many(&mut tx, &invoices).await?;
    azotte_store::invoices::insert_lines(&mut tx, &lines.concat()).await?;
    azotte_store::invoices::insert_payments(&mut tx, &paid).await?;
    tx.commit().await?;
    Ok(checkouts)
}
