//! Checkout reads gathered: the reads of a checkout request — its customer, its offer, and its
//! stored payment method or what attaching its new token needs (the PSP account, the customer's
//! methods, the account's credentials) — done for the checkout requests of one tenant
//! environment that get there at about the same time in one read transaction, with one
//! statement per table, instead of one transaction each (decision 0007, "Checkouts written
//! together").
//!
//! Each request's reads are then checked on their own, exactly as its own transaction would
//! check them ([`super::offer_read`], [`super::payment_read`]): a request refused (an unknown
//! customer, an expired offer, a method of another storefront…) gets its own error, and the
//! others of the batch are not affected. A batch whose transaction fails (a database error)
//! hands every request back to read alone ([`super::read_alone`]).

use std::collections::BTreeSet;

use azotte_store::customers::{self as customer_store, PaymentMethodRow};
use azotte_store::psp_accounts as psp_store;
use azotte_store::subscriptions as store;
use azotte_store::TenantScope;
use chrono::{DateTime, Utc};

use super::{offer_read, payment_read, CheckoutInput, OfferRead};
use crate::gather::{self, Gather, Tally};
use crate::payment_methods::{AttachInput, Prepared};
use crate::payments;
use crate::{Ctx, Result, ServiceError};

/// Checkout requests read in one transaction at most.
const AT_ONCE: usize = 64;

/// Checkout requests this process read together, and the transactions that read them.
static READ: Tally = Tally::new();

/// Checkout requests this process read together (however many at a time, one included), and
/// the transactions that did: their ratio is the mean batch. Exported in `/metrics`.
pub fn read_together() -> (u64, u64) {
    READ.get()
}

/// A checkout request, its reads to do.
pub(crate) struct Asked {
    /// The request's scope: what its credential may see.
    pub(super) scope: TenantScope,
    pub(super) input: CheckoutInput,
    /// When the request started.
    pub(super) now: DateTime<Utc>,
}

/// A checkout request's reads, checked.
pub(crate) struct ReadDone {
    pub(super) input: CheckoutInput,
    pub(super) read: OfferRead,
    /// The stored method it pays with, usable.
    pub(super) stored: Option<PaymentMethodRow>,
    /// The new token it pays with, ready for the PSP to validate.
    pub(super) prepared: Option<(AttachInput, Prepared)>,
}

/// How a request handed to [`read`] came back.
pub(crate) enum Read {
    /// Read and checked: its reads, or its error.
    Done(Box<Result<ReadDone>>),
    /// Not read (the batch's transaction failed): the request reads alone.
    Alone(Box<Asked>),
}

/// The checkout requests waiting to be read, per tenant environment, of this process.
pub(crate) type Reads = Gather<Asked, Read>;

/// Reads a checkout request's rows with the others of its tenant environment waiting at the
/// same time.
pub(super) async fn read(ctx: &Ctx, scope: &TenantScope, asked: Asked) -> Result<Read> {
    let together = |batch: Vec<Asked>| {
        let ctx = ctx.clone();
        async move { run(&ctx, batch).await }
    };
    ctx.checkout_reads
        .submit(gather::at(scope), asked, AT_ONCE, together)
        .await
        .ok_or_else(|| ServiceError::Internal("a checkout's reads were lost".into()))
}

/// Reads `batch` in one transaction: each request's reads or error, or (the transaction
/// failed) all `Alone`, in `batch`'s order.
async fn run(ctx: &Ctx, batch: Vec<Asked>) -> Vec<Read> {
    let n = batch.len();
    match read_batch(ctx, &batch).await {
        Ok(found) => {
            READ.add(n);
            let done = batch.into_iter().zip(found).map(|(a, found)| {
                let done =
                    found.map(|(read, stored, prepared)| ReadDone { input: a.input, read, stored, prepared });
                Read::Done(Box::new(done))
            });
            done.collect()
        }
        Err(e) => {
            tracing::info!(error = %e, checkouts = n, "checkout reads not done together; reading one by one");
            batch.into_iter().map(|a| Read::Alone(Box::new(a))).collect()
        }
    }
}

/// One request's reads, checked: its offer and item, its stored method, its new token's attach.
type Found = Result<(OfferRead, Option<PaymentMethodRow>, Option<(AttachInput, Prepared)>)>;

/// Every distinct value of `f` over `batch`.
fn distinct<'a>(batch: &'a [Asked], f: impl Fn(&'a Asked) -> Option<&'a String>) -> Vec<String> {
    batch.iter().filter_map(f).cloned().collect::<BTreeSet<_>>().into_iter().collect()
}

/// The read transaction of `batch` (see the module): each request's reads or its own error, in
/// `batch`'s order. `Err`: the transaction failed.
async fn read_batch(ctx: &Ctx, batch: &[Asked]) -> Result<Vec<Found>> {
    let first = batch.first().ok_or_else(|| ServiceError::Internal("an empty batch".into()))?;
    let mut tx = ctx.db.tenant_read_tx(&first.scope).await?;
    let customers =
        customer_store::get_customers(&mut tx, &distinct(batch, |a| Some(&a.input.customer_id))).await?;
    let offers = store::get_offers(&mut tx, &distinct(batch, |a| Some(&a.input.offer_id))).await?;
    let stored_ids =
        distinct(batch, |a| a.input.payment_method_id.as_ref().filter(|_| a.input.token.is_none()));
    let stored = customer_store::get_payment_methods(&mut tx, &stored_ids).await?;
    let accounts =
        psp_store::by_ids(&mut tx, &distinct(batch, |a| a.input.token.as_ref().map(|(acc, _)| acc))).await?;
    let paying_with_tokens = distinct(batch, |a| a.input.token.as_ref().map(|_| &a.input.customer_id));
    let methods = customer_store::payment_methods_of_customers(&mut tx, &paying_with_tokens).await?;
    let mut out = Vec::with_capacity(batch.len());
    for a in batch {
        let input = &a.input;
        let checked = (|| {
            let customer = customers.iter().find(|c| c.id == input.customer_id);
            let offer = offers.iter().find(|o| o.id == input.offer_id).cloned();
            let read = offer_read(&a.scope, input, customer, offer, a.now)?;
            let own = |m: &&PaymentMethodRow| m.customer_id == input.customer_id;
            let pm = input
                .payment_method_id
                .as_ref()
                .and_then(|id| stored.iter().filter(own).find(|m| &m.id == id));
            let account = input.token.as_ref().and_then(|(id, _)| accounts.iter().find(|acc| &acc.id == id));
            let theirs: Vec<PaymentMethodRow> = methods.iter().filter(own).cloned().collect();
            let (pm, attaching) =
                payment_read(&a.scope, input, &read, pm.cloned(), account.cloned(), &theirs)?;
            Ok((read, pm, attaching))
        })();
        out.push(match checked {
            Err(e) => Err(e),
            Ok((read, pm, Some((attach, found)))) => {
                // A database error spoils the batch's transaction: every request reads alone.
                let connector = payments::connector_in(ctx, &mut tx, &found.account).await?;
                Ok((read, pm, Some((attach, found.with(connector)))))
            }
            Ok((read, pm, None)) => Ok((read, pm, None)),
        });
    }
    tx.commit().await?;
    Ok(out)
}
