//! Offers made together: the offers (`new`, `winback`, showcase) of one tenant environment whose
//! requests get there at about the same time are made in one transaction — one read of their
//! customers, one of those customers' subscriptions, one insert — instead of one transaction
//! each (decision 0007, "Customers and offers written together").
//!
//! A request whose input is valid hands its asking to its tenant environment's queue
//! ([`crate::gather`]); whoever's turn it is takes every one waiting. The transaction reads the
//! batch's customers and every subscription of theirs once; then, for each asking in its own
//! request's scope (the storefronts its key may use) and lineage, it reads the storefront's
//! catalog from the read cache, makes the offer exactly as the one-by-one path does
//! ([`super::compose`], the trial eligibility from the customer's family histories) and journals
//! it with the same entries (`offer.create`, `offer.eligibility`, `offer.created`); one
//! statement stores them all.
//!
//! Anything out of the ordinary goes the one-by-one way, which knows every case and answers its
//! request: an asking that cannot be made as read (an unknown or erased customer, a storefront
//! the key may not use or that does not sell in the currency) is handed back untouched, with
//! nothing of it journaled; if the transaction fails, it is rolled back and every asking of the
//! batch is handed back, each then made alone. A `replace` offer is always made alone.

use std::collections::{BTreeSet, HashMap};

use azotte_domain::catalog::Currency;
use azotte_store::customers::{self as customer_store, CustomerRow};
use azotte_store::journal::RequestMeta;
use azotte_store::subscriptions::{self as store, SubscriptionRow};
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, Utc};

use super::{add_to_histories, compose, journal_made, present, served, Basis, Made, Offer, OfferInput};
use crate::gather::{self, Gather, Tally};
use crate::{Ctx, Result, ServiceError};

/// Offers made in one transaction at most.
const AT_ONCE: usize = 64;

/// Offers this process made together, and the transactions that did.
static MADE: Tally = Tally::new();

/// Offers this process made together (however many at a time, one included), and the
/// transactions that did: their ratio is the mean batch. Exported in `/metrics`.
pub fn made_together() -> (u64, u64) {
    MADE.get()
}

/// An offer asked for, its input checked, to be made.
pub(crate) struct Asking {
    /// The request's scope: the storefronts it may use, the principal that journals the offer.
    pub(super) scope: TenantScope,
    /// The request's lineage.
    pub(super) meta: RequestMeta,
    pub(super) input: OfferInput,
    /// The currency asked for, parsed.
    pub(super) asked: Option<Currency>,
    /// When the request started.
    pub(super) now: DateTime<Utc>,
}

/// How an asking handed to [`make`] came back.
pub(crate) enum Offered {
    /// Made, committed.
    Done(Box<Offer>),
    /// Not made (nothing of it): the request goes the one-by-one way.
    Alone(Box<Asking>),
}

/// The offers waiting to be made, per tenant environment, of this process.
pub(crate) type Makes = Gather<Asking, Offered>;

/// Makes an offer with the others of its tenant environment asked for at the same time:
/// [`Offered::Done`], or handed back to be made alone.
pub(super) async fn make(ctx: &Ctx, asking: Asking) -> Result<Offered> {
    let at = gather::at(&asking.scope);
    let together = |batch: Vec<Asking>| {
        let ctx = ctx.clone();
        async move { run(&ctx, batch).await }
    };
    ctx.offer_makes
        .submit(at, asking, AT_ONCE, together)
        .await
        .ok_or_else(|| ServiceError::Internal("an offer was lost".into()))
}

/// Makes what it can of `batch` in one transaction (see the module), in `batch`'s order.
async fn run(ctx: &Ctx, batch: Vec<Asking>) -> Vec<Offered> {
    let n = batch.len();
    let made = match make_batch(ctx, &batch).await {
        Ok(made) => made,
        Err(e) => {
            tracing::info!(error = %e, offers = n, "offers not made together; making one by one");
            return batch.into_iter().map(|a| Offered::Alone(Box::new(a))).collect();
        }
    };
    MADE.add(made.iter().filter(|m| m.is_some()).count());
    let offered = batch.into_iter().zip(made).map(|(a, made)| match made {
        Some(m) => Offered::Done(Box::new(m.into_offer())),
        None => Offered::Alone(Box::new(a)),
    });
    offered.collect()
}

/// What a batch reads once for all its offers.
struct Shared {
    /// The batch's customers that exist.
    customers: Vec<CustomerRow>,
    /// Every subscription of those customers.
    subscriptions: Vec<SubscriptionRow>,
}

/// The transaction of `batch`: each asking's offer as made and stored, or `None` for one left to the
/// one-by-one path. Nothing is stored unless the whole transaction commits.
async fn make_batch(ctx: &Ctx, batch: &[Asking]) -> Result<Vec<Option<Made>>> {
    let first = batch.first().ok_or_else(|| ServiceError::Internal("an empty batch".into()))?;
    let mut tx = ctx.db.tenant_tx(&first.scope).await?;
    let ids: Vec<String> = batch
        .iter()
        .filter_map(|a| a.input.customer_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let customers = customer_store::get_customers(&mut tx, &ids).await?;
    let found: Vec<String> = customers.iter().map(|c| c.id.clone()).collect();
    let shared =
        Shared { customers, subscriptions: store::subscriptions_of_customers(&mut tx, &found).await? };
    // Each made in its request's scope, which decides the storefronts it may use. One refused as
    // read is left to the one-by-one path, which reads again and tells why (a database error
    // here fails the transaction's next statement, and with it the batch).
    let mut made = Vec::with_capacity(batch.len());
    for a in batch {
        tx.continue_as(a.scope.clone(), a.meta.clone());
        made.push(make_one(&mut tx, a, &shared).await.ok());
    }
    // Each journaled in its request's lineage and name.
    let mut rows = Vec::with_capacity(batch.len());
    for (a, m) in batch.iter().zip(&made) {
        if let Some(m) = m {
            tx.continue_as(a.scope.clone(), a.meta.clone());
            journal_made(&mut tx, m, a.now).await?;
            rows.push(m.row.clone());
        }
    }
    tx.insert_at_commit();
    store::insert_offers(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(made)
}

/// The offer `a` asks for, made from the batch's reads and its storefront's catalog (read
/// cache) as the one-by-one path makes it.
async fn make_one(tx: &mut TenantTx, a: &Asking, shared: &Shared) -> Result<Made> {
    let catalog =
        crate::catalog::storefront_catalog_in(tx, a.now, &a.input.storefront_id, a.asked.as_ref()).await?;
    let currency = served(&catalog, a.asked.clone())?;
    let customer = match &a.input.customer_id {
        Some(id) => Some(present(shared.customers.iter().find(|c| &c.id == id).cloned())?),
        None => None,
    };
    let histories = customer.as_ref().map(|c| {
        let mut h = HashMap::new();
        add_to_histories(&mut h, shared.subscriptions.iter().filter(|s| s.customer_id == c.id));
        h
    });
    let basis = Basis { catalog: &catalog, currency, customer: customer.as_ref(), replaced: None };
    compose(&a.input, basis, histories.as_ref(), a.now)
}
