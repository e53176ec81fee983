//! Customers created together: the new customers of one tenant environment whose requests
//! (`POST /v1/customers`, `PUT /v1/customers/by-external-id/…`) get there at about the same time
//! are written in one transaction — one read of their external ids, one insert — instead of one
//! transaction each (decision 0007, "Customers and offers written together").
//!
//! A request whose input is valid hands its new customer to its tenant environment's queue
//! ([`crate::gather`]); whoever's turn it is takes every customer waiting. The transaction reads
//! which of their external ids are taken; each customer whose external id is free (and not
//! named earlier in the batch) is sealed under a data key of its own and journaled in its own
//! request's lineage and principal with exactly the entries the one-by-one path records
//! (`customer.create`, `customer.created`); then one statement inserts them all.
//!
//! Anything out of the ordinary goes the one-by-one way, which knows every case and answers its
//! request: a customer whose external id is taken (an upsert's update, a create's conflict) or
//! named twice in the batch is handed back untouched; if the insert fails (an email or phone
//! another customer has) or anything else does, the transaction is rolled back and every
//! customer of the batch is handed back, each then written alone. A commit that went
//! unconfirmed (the connection failed meanwhile) hands each customer it wrote back with the
//! transaction's fence: its request reads whether it was written ([`written_after`]) before
//! writing it alone.

use std::collections::HashSet;

use azotte_store::customers as store;
use azotte_store::journal::RequestMeta;
use azotte_store::{Fence, TenantScope};

use super::{journal_created, Customer};
use crate::gather::{self, Gather, Tally};
use crate::{Ctx, Result, ServiceError};

/// Customers created in one transaction at most.
const AT_ONCE: usize = 64;

/// Customers this process created together, and the transactions that did.
static CREATED: Tally = Tally::new();

/// Customers this process created together (however many at a time, one included), and the
/// transactions that did: their ratio is the mean batch. Exported in `/metrics`.
pub fn created_together() -> (u64, u64) {
    CREATED.get()
}

/// A new customer, validated and normalized, to be written.
pub(crate) struct Creating {
    /// The request's scope: its principal journals the customer.
    pub(super) scope: TenantScope,
    /// The request's lineage.
    pub(super) meta: RequestMeta,
    pub(super) customer: Customer,
}

/// How a customer handed to [`create`] came back.
pub(crate) enum Created {
    /// Written, committed.
    Done(Box<Customer>),
    /// Not written (nothing of it): the request goes the one-by-one way.
    Alone(Box<Creating>),
    /// Written by a batch whose commit went unconfirmed (the connection failed meanwhile): it
    /// may have happened. The request finds out ([`written_after`]).
    Unconfirmed(Box<Creating>, Fence),
}

/// The customers waiting to be created, per tenant environment, of this process.
pub(crate) type Creates = Gather<Creating, Created>;

/// Creates a customer with the others of its tenant environment waiting at the same time:
/// [`Created::Done`], handed back to be written alone, or [`Created::Unconfirmed`].
pub(super) async fn create(ctx: &Ctx, creating: Creating) -> Result<Created> {
    let at = gather::at(&creating.scope);
    let together = |batch: Vec<Creating>| {
        let ctx = ctx.clone();
        async move { run(&ctx, batch).await }
    };
    ctx.customer_creates
        .submit(at, creating, AT_ONCE, together)
        .await
        .ok_or_else(|| ServiceError::Internal("a customer's creation was lost".into()))
}

/// Writes what it can of `batch` in one transaction (see the module), in `batch`'s order.
async fn run(ctx: &Ctx, batch: Vec<Creating>) -> Vec<Created> {
    let n = batch.len();
    match create_batch(ctx, &batch).await {
        // Written or not, the database tells once the transaction has ended; each request asks,
        // after this batch's turn.
        Ok((written, Some(fence))) => {
            let out = batch.into_iter().zip(written).map(|(c, written)| match written {
                true => Created::Unconfirmed(Box::new(c), fence),
                false => Created::Alone(Box::new(c)),
            });
            out.collect()
        }
        Ok((written, None)) => {
            CREATED.add(written.iter().filter(|w| **w).count());
            let out = batch.into_iter().zip(written).map(|(c, written)| match written {
                true => Created::Done(Box::new(c.customer)),
                false => Created::Alone(Box::new(c)),
            });
            out.collect()
        }
        Err(e) => {
            tracing::info!(error = %e, customers = n, "customers not created together; creating one by one");
            batch.into_iter().map(|c| Created::Alone(Box::new(c))).collect()
        }
    }
}

/// The creating transaction of `batch`: for each customer, whether it was written (the others
/// are left to the one-by-one path). Nothing is written unless the whole transaction commits;
/// with its fence when its commit went unconfirmed.
async fn create_batch(ctx: &Ctx, batch: &[Creating]) -> Result<(Vec<bool>, Option<Fence>)> {
    let first = batch.first().ok_or_else(|| ServiceError::Internal("an empty batch".into()))?;
    let (mut tx, fence) = ctx.db.tenant_tx_fenced(&first.scope).await?;
    let asked: Vec<String> = batch.iter().map(|c| c.customer.external_id.clone()).collect();
    let mut named: HashSet<String> =
        store::by_external_ids(&mut tx, &asked).await?.into_iter().map(|r| r.external_id).collect();
    let mut rows = Vec::with_capacity(batch.len());
    let mut written = Vec::with_capacity(batch.len());
    for c in batch {
        // Taken, or named earlier in the batch: the one-by-one path tells what follows.
        if !named.insert(c.customer.external_id.clone()) {
            written.push(false);
            continue;
        }
        tx.continue_as(c.scope.clone(), c.meta.clone());
        let row = journal_created(ctx, &mut tx, &c.customer).await?;
        rows.push(row);
        written.push(true);
    }
    // With the commit: a refused row fails the batch as a refused statement would.
    tx.insert_at_commit();
    store::insert_customers(&mut tx, &rows).await?;
    match tx.commit().await {
        Ok(()) => Ok((written, None)),
        Err(e) if e.is_commit_unknown() => {
            tracing::warn!(error = %e, customers = rows.len(), "customers' commit unconfirmed; asking the database");
            Ok((written, Some(fence)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the customer `id`, written by a transaction (holding `fence`) whose commit went
/// unconfirmed, was written: read once that transaction has ended. `None`: the database could
/// not tell.
///
/// Without this, a customer whose commit answer was lost would be created again by the
/// one-by-one path (or the client's retry) and refused as a taken external id (`409`), its own.
pub(super) async fn written_after(ctx: &Ctx, scope: &TenantScope, fence: Fence, id: &str) -> Option<bool> {
    let id = id.to_owned();
    crate::unconfirmed::read_back(ctx, scope, fence, "customers", move |tx| {
        Box::pin(async move { Ok(store::get_customer(tx, &id).await?.is_some()) })
    })
    .await
}
