//! Checkouts written together: the write of a checkout request — its new token's payment method,
//! the checkout, and its job's first step (the payment with its first attempt started) — done
//! for the checkouts of one tenant environment whose requests get there at about the same time
//! in one transaction, with one statement per table, instead of one transaction each (decision
//! 0007, "Checkouts written together").
//!
//! A request whose reads are done (and whose new token the PSP validated) hands its checkout to
//! its tenant environment's queue ([`crate::gather`]); whoever's turn it is writes every checkout
//! waiting. The transaction first reads, once for the batch, what each request's own
//! transaction read before writing — safe mode, the storefronts' PSP accounts and their
//! credentials, the customers (still there, not erased), their subscriptions (each one's family
//! history and past-due subscriptions), the stored payment methods (still usable), the catalog
//! rows from the read cache — then journals each checkout in its own request's lineage and
//! principal with exactly the entries the one-by-one path records, in its order
//! (`payment_method.attach`, `payment_method.attached`, `checkout.create`,
//! `checkout.processing`, then in the job's name `payment.create`, `payment.routed`,
//! `payment.attempt`), and writes the methods, the checkouts and the payments, one statement
//! each.
//!
//! Anything out of the ordinary goes the one-by-one way, which knows every case and answers its
//! request's error: if the transaction cannot write every checkout of the batch as read (a
//! customer erased meanwhile, a stored method deleted or expired meanwhile, a second checkout of
//! an offered item, two new defaults for one customer, any error), it is rolled back and each
//! checkout of the batch is written alone ([`super::write_alone`]), in a transaction of its
//! own that reads again what it needs.

use std::collections::{BTreeSet, HashMap};

use azotte_store::customers::{self as customer_store, PaymentMethodRow};
use azotte_store::journal::RequestMeta;
use azotte_store::psp_accounts::PspAccount;
use azotte_store::subscriptions::{self as store, CheckoutRow, SubscriptionRow};
use azotte_store::{Fence, TenantScope, TenantTx};
use chrono::{DateTime, Utc};

use super::{
    charging_job, first_charge, journal_created, new_checkout, sold_cached, Charging, CheckoutInput,
    OfferRead, ReadyToCharge, Wrote,
};
use crate::gather::{self, Gather, Tally};
use crate::payment_methods::{self as methods, Recorded, Validated};
use crate::payments;
use crate::subscriptions::offers::add_to_histories;
use crate::{Ctx, Result, ServiceError};

/// Checkouts written in one transaction at most.
const AT_ONCE: usize = 64;

/// Checkouts this process wrote together, and the transactions that wrote them.
static WRITTEN: Tally = Tally::new();

/// Checkouts this process wrote together (however many at a time, one included), and the
/// transactions that did: their ratio is the mean batch. Exported in `/metrics`.
pub fn written_together() -> (u64, u64) {
    WRITTEN.get()
}

/// A checkout request whose reads are done, to be written.
pub(crate) struct Pending {
    /// The request's scope: its principal journals the checkout.
    pub(super) scope: TenantScope,
    /// The request's lineage.
    pub(super) meta: RequestMeta,
    pub(super) input: CheckoutInput,
    pub(super) read: OfferRead,
    /// The stored method it pays with, as read (usable then).
    pub(super) stored: Option<PaymentMethodRow>,
    /// The new token it pays with, validated by the PSP.
    pub(super) validated: Option<Validated>,
    /// When the request started.
    pub(super) now: DateTime<Utc>,
}

/// How a checkout handed to [`write`] came back.
pub(crate) enum Written {
    /// Written, committed.
    Done(Box<Wrote>),
    /// Not written (nothing of it): the request writes it alone.
    Alone(Box<Pending>),
    /// Written by a batch whose commit went unconfirmed (the connection failed meanwhile): it
    /// may have happened. The request finds out ([`super::were_written`]): written as this, or
    /// to write alone as that.
    Unconfirmed(Box<(Wrote, Pending)>, Fence),
}

/// The checkouts waiting to be written, per tenant environment, of this process.
pub(crate) type Writes = Gather<Pending, Written>;

/// Writes a checkout with the others of its tenant environment waiting at the same time:
/// [`Written::Done`], or handed back to be written alone.
pub(super) async fn write(ctx: &Ctx, scope: &TenantScope, pending: Pending) -> Result<Written> {
    let together = |batch: Vec<Pending>| {
        let ctx = ctx.clone();
        async move { run(&ctx, batch).await }
    };
    ctx.checkout_writes
        .submit(gather::at(scope), pending, AT_ONCE, together)
        .await
        .ok_or_else(|| ServiceError::Internal("a checkout's write was lost".into()))
}

/// Writes `batch` in one transaction: all `Done`, or (the transaction rolled back) all `Alone`,
/// in `batch`'s order.
async fn run(ctx: &Ctx, batch: Vec<Pending>) -> Vec<Written> {
    let n = batch.len();
    let done = |batch: Vec<Pending>, wrote: Vec<Row>| {
        WRITTEN.add(n);
        let done = batch.into_iter().zip(wrote).map(|(p, (row, action_id, attached, charging))| {
            Written::Done(Box::new(Wrote { row, action_id, attached, charging, read: p.read }))
        });
        done.collect()
    };
    let alone = |batch: Vec<Pending>| batch.into_iter().map(|p| Written::Alone(Box::new(p))).collect();
    match write_batch(ctx, &batch).await {
        Ok(Ended::Committed(wrote)) => done(batch, wrote),
        // Written or not, the database tells once the transaction has ended; each request asks,
        // after this batch's turn.
        Ok(Ended::Unconfirmed(wrote, fence)) => {
            let unconfirmed =
                batch.into_iter().zip(wrote).map(|(p, (row, action_id, attached, charging))| {
                    let wrote = Wrote { row, action_id, attached, charging, read: p.read.clone() };
                    Written::Unconfirmed(Box::new((wrote, p)), fence)
                });
            unconfirmed.collect()
        }
        Err(e) => {
            tracing::info!(error = %e, checkouts = n, "checkouts not written together; writing one by one");
            alone(batch)
        }
    }
}

/// How a batch's writing transaction ended.
enum Ended {
    Committed(Vec<Row>),
    /// The commit went unconfirmed (the connection failed meanwhile): it may have happened.
    Unconfirmed(Vec<Row>, Fence),
}

/// What a batch reads once for all its checkouts.
struct Shared {
    /// Money movement is stopped: no checkout is charged at once.
    safe_mode: bool,
    /// Every subscription of the batch's customers.
    subscriptions: Vec<SubscriptionRow>,
    /// The PSP accounts of each storefront, and the connectors of those whose credentials open.
    accounts: HashMap<String, (Vec<PspAccount>, payments::batch::Connectors)>,
}

/// A checkout as written (its row, its action, its new method, its job's first step).
type Row = (CheckoutRow, String, Option<Recorded>, Option<Charging>);

/// The writing transaction of `batch` (see the module): each checkout as written, in `batch`'s
/// order. Nothing is written unless every one of them is.
async fn write_batch(ctx: &Ctx, batch: &[Pending]) -> Result<Ended> {
    let changed =
        |what: String| ServiceError::Conflict { code: "checkout_batch_changed", message: what, field: None };
    let first = batch.first().ok_or_else(|| ServiceError::Internal("an empty batch".into()))?;
    let (mut tx, fence) = ctx.db.tenant_tx_fenced(&first.scope).await?;
    // The reads, before anything is written (the catalog rows come from the read cache only
    // then).
    let customers: Vec<String> =
        batch.iter().map(|p| p.input.customer_id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let found = customer_store::get_customers(&mut tx, &customers).await?;
    if found.len() != customers.len() {
        return Err(changed(format!(
            "{} of {} customers are gone",
            customers.len() - found.len(),
            customers.len()
        )));
    }
    let stored_ids: Vec<String> =
        batch.iter().filter_map(|p| p.stored.as_ref().map(|m| m.id.clone())).collect();
    let stored = customer_store::get_payment_methods(&mut tx, &stored_ids).await?;
    for p in batch {
        if let Some(read) = &p.stored {
            let now = stored.iter().find(|m| m.id == read.id);
            let usable = now.is_some_and(|m| {
                m.customer_id == read.customer_id
                    && m.storefront_id == read.storefront_id
                    && m.state == "active"
                    && !m.expired
            });
            if !usable {
                return Err(changed(format!("payment method {} changed", read.id)));
            }
        }
    }
    let mut shared = Shared {
        safe_mode: azotte_store::payment_ops::safe_mode(&mut tx).await?.is_some(),
        subscriptions: store::subscriptions_of_customers(&mut tx, &customers).await?,
        accounts: HashMap::new(),
    };
    let mut ready = Vec::with_capacity(batch.len());
    for p in batch {
        ready.push(ready_to_charge(ctx, &mut tx, p, &mut shared).await?);
    }
    // The writes: each checkout journaled in its own request's lineage, the rows at the end.
    let at = ctx.clock.now();
    let (mut methods_rows, mut checkouts, mut payments) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(batch.len());
    for (p, ready) in batch.iter().zip(ready) {
        tx.continue_as(p.scope.clone(), p.meta.clone());
        let customer = p.input.customer_id.as_str();
        let (pm, attached) = match (&p.validated, &p.stored) {
            (Some(v), _) => {
                methods::journal_attach(&mut tx, at, customer, v.account()).await?;
                let pm = v.row(customer, !v.had_default, at);
                methods::journal_attached(&mut tx, at, &pm).await?;
                let past_due = shared.subscriptions.iter().any(|s| {
                    s.customer_id == customer && s.status == "past_due" && s.storefront_id == pm.storefront_id
                });
                methods_rows.push(pm.clone());
                (Some(pm.clone()), Some(Recorded { pm, past_due }))
            }
            (None, Some(pm)) => (Some(pm.clone()), None),
            (None, None) => (None, None),
        };
        let row = new_checkout(&p.input, &p.read, pm.as_ref(), p.meta.correlation_id.clone(), p.now);
        let action_id = journal_created(&mut tx, &row, p.now).await?;
        let charging = match (ready, &pm) {
            (Some(ready), Some(pm)) => {
                let (item, country) = (&p.read.item, &p.read.country);
                first_charge(ctx, &mut tx, ready, &row, item, pm, &action_id, country).await?
            }
            _ => None,
        };
        if let Some(c) = &charging {
            payments.push(c.sending.payment().clone());
        }
        checkouts.push(row.clone());
        out.push((row, action_id, attached, charging));
    }
    // Methods before the checkouts and payments that pay with them. A second checkout of an
    // offered item in progress, or two defaults of one customer: refused by the database, the
    // one-by-one path tells which.
    // With the commit, in its statement: refused there, the batch fails as it would here.
    tx.insert_at_commit();
    customer_store::insert_payment_methods(&mut tx, &methods_rows).await?;
    store::insert_checkouts(&mut tx, &checkouts).await?;
    azotte_store::payments::insert_many(&mut tx, &payments).await?;
    match tx.commit().await {
        Ok(()) => Ok(Ended::Committed(out)),
        Err(e) if e.is_commit_unknown() => {
            tracing::warn!(error = %e, checkouts = out.len(), "checkouts' commit unconfirmed; asking the database");
            Ok(Ended::Unconfirmed(out, fence))
        }
        Err(e) => Err(e.into()),
    }
}

/// [`super::ready_to_charge`] for one checkout of a batch, from what the batch reads once.
async fn ready_to_charge(
    ctx: &Ctx,
    tx: &mut TenantTx,
    p: &Pending,
    shared: &mut Shared,
) -> Result<Option<ReadyToCharge>> {
    let (item, storefront) = (&p.read.item, &p.read.offer.storefront_id);
    let Some(job) = charging_job(&p.scope, item).filter(|_| !shared.safe_mode) else { return Ok(None) };
    let mut histories = HashMap::new();
    add_to_histories(
        &mut histories,
        shared.subscriptions.iter().filter(|s| s.customer_id == p.input.customer_id),
    );
    let history = histories.remove(&item.family).unwrap_or_default();
    let Some((sold, all)) = sold_cached(tx, item, storefront, &history, p.now).await? else {
        return Ok(None);
    };
    if !shared.accounts.contains_key(storefront) {
        let accounts = azotte_store::psp_accounts::of_storefront(tx, storefront).await?;
        let connectors = payments::batch::connectors(ctx, tx, &accounts).await?;
        shared.accounts.insert(storefront.clone(), (accounts, connectors));
    }
    let (accounts, connectors) = shared.accounts[storefront].clone();
    Ok(Some(ReadyToCharge { job, sold, all, accounts, connectors }))
}
