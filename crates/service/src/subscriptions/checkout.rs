//! Checkout: asynchronous and idempotent. `POST /v1/checkouts` checks what it can at once and
//! records a `processing` checkout (202) — normally with its charge's payment, the job's first
//! step ([`first_charge`], decision 0007); the work runs as a job — in a task started right after
//! the commit, and again from the worker until it is done, so a crash only delays it:
//! re-check the offer, the bundle, the price and trial eligibility, charge through payment
//! routing (none for a trial), create the subscription and grant its entitlements, all under the
//! checkout's correlation id. Running the job twice is harmless: the charge carries the request
//! key `checkout-{id}` (one payment per key), and a checkout creates at most one subscription
//! (unique in the database).

use azotte_domain::catalog::{BillingPeriod, PeriodUnit};
use azotte_domain::id::{CheckoutId, SubscriptionId};
use azotte_domain::permission::Permission;
use azotte_domain::subscription::{self as life, trial_eligibility};
use azotte_domain::{FieldError, ValidationErrors};
use azotte_store::catalog::{self as catalog_store, Bundle, Entitlement, PriceVersion, Storefront};
use azotte_store::customers as customer_store;
use azotte_store::journal::{self, RequestMeta};
use azotte_store::payments::PaymentRow;
use azotte_store::subscriptions::{self as store, CheckoutRow, Grant, SubscriptionRow};
use azotte_store::{Fence, StoreError, TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::offers::{family_history, Offer, OfferItem};
use crate::payments::attempt::Redo;
use crate::payments::{self, ChargeInput};
use crate::{Ctx, Result, ServiceError};

mod batch;
mod read;
mod write;
pub use batch::settled_together;
pub(crate) use batch::Settles;
pub use read::read_together;
pub(crate) use read::Reads;
pub use write::written_together;
pub(crate) use write::Writes;

/// How long a checkout waits for its customer's action (3-D Secure) before it expires: its
/// payment is cancelled at the PSP, so the customer can no longer complete it, and the checkout
/// fails `checkout_expired`. (A payment the customer did complete meanwhile goes on as paid.)
pub const ACTION_TTL: chrono::Duration = chrono::Duration::hours(1);

/// How long a runner of a checkout's job holds it (its lease): the request's own task, the
/// worker or a PSP webhook's task — one at a time. A runner that dies leaves the job to the
/// worker once this has run out.
const LEASE: chrono::Duration = chrono::Duration::minutes(2);

/// How soon the worker looks again at a checkout its last run left waiting for its customer: a
/// verified PSP webhook about its payment runs it at once, and the worker's look after this
/// long notices lost webhooks and the expiry ([`ACTION_TTL`]).
const RECHECK_ACTION: chrono::Duration = chrono::Duration::minutes(5);

/// How soon the worker looks again at a checkout left waiting for its payment's outcome (queued
/// in safe mode, or unknown until reconciliation finds out).
const RECHECK_PAYMENT: chrono::Duration = chrono::Duration::minutes(1);

/// A checkout to start.
#[derive(Debug, Clone)]
pub struct CheckoutInput {
    pub customer_id: String,
    pub offer_id: String,
    pub price_id: String,
    /// A stored payment method of the customer…
    pub payment_method_id: Option<String>,
    /// …or a new PSP token for one of the storefront's accounts, attached first.
    pub token: Option<(String, String)>,
}

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> ServiceError {
    ValidationErrors::from(FieldError::new(field, code, message)).into()
}

fn conflict(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Conflict { code, message: message.into(), field: None }
}

/// Checks an offer for a checkout by this customer of this price: the item it offers.
fn offered_item(offer: &Offer, customer_id: &str, price_id: &str, now: DateTime<Utc>) -> Result<OfferItem> {
    if offer.customer_id.is_none() {
        return Err(conflict(
            "offer_not_checkoutable",
            "a showcase offer shows prices only; ask for an offer for the customer",
        ));
    }
    if offer.customer_id.as_deref() != Some(customer_id) {
        return Err(invalid("offer_id", "offer_customer_mismatch", "the offer was made to another customer"));
    }
    if offer.expires_at <= now {
        return Err(conflict("offer_expired", "the offer has expired; ask for a new one"));
    }
    offer
        .items
        .iter()
        .find(|i| i.price_id == price_id)
        .cloned()
        .ok_or_else(|| invalid("price_id", "price_not_in_offer", "the offer does not include this price"))
}

/// Starts a checkout (permission `subscription.write`): `processing`, with the job started.
/// With `wait`, the caller waits up to that long for the job's first run and gets the checkout
/// as that run left it (`succeeded`, `failed`, `requires_action`, or still `processing` when
/// the PSP has not answered for good); after `wait` it gets the `processing` checkout and the
/// job goes on in the background as without `wait`.
///
/// The reads have a transaction of their own, shared with the other checkouts of the tenant
/// environment reading at the same moment ([`read`]); a new token is validated by the PSP
/// between them and the write; the checkout is then written with the others of its tenant
/// environment written at the same moment ([`write`]; decision 0007, "Checkouts written
/// together").
pub async fn start(
    ctx: &Ctx,
    scope: &TenantScope,
    input: CheckoutInput,
    wait: Option<std::time::Duration>,
) -> Result<CheckoutRow> {
    crate::security::require(ctx, scope, Permission::SubscriptionWrite).await?;
    let now = ctx.clock.now();
    match (&input.payment_method_id, &input.token) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "token",
                "conflicting_fields",
                "give a payment_method_id or a token, not both",
            ))
        }
        (None, Some(_)) => crate::security::require(ctx, scope, Permission::CustomerWrite).await?,
        _ => {}
    }
    let asked = read::Asked { scope: scope.clone(), input, now };
    let read::ReadDone { input, read, stored, prepared } = match read::read(ctx, scope, asked).await? {
        read::Read::Done(done) => (*done)?,
        read::Read::Alone(asked) => read_alone(ctx, *asked).await?,
    };
    // A new token: validated by the PSP between the reads and the write, and recorded in the
    // checkout's own transaction.
    let validated = match prepared {
        Some((a, found)) => {
            Some(crate::payment_methods::validate(ctx, scope, found, &input.customer_id, &a).await?)
        }
        None => None,
    };
    // A token the PSP validated is detached there again if the checkout is not written.
    let discard = validated.as_ref().map(crate::payment_methods::Validated::handle);
    let pending = write::Pending {
        scope: scope.clone(),
        meta: journal::current_meta(),
        input,
        read,
        stored,
        validated,
        now,
    };
    let written = match write::write(ctx, scope, pending).await {
        Ok(write::Written::Done(wrote)) => Ok(*wrote),
        Ok(write::Written::Alone(pending)) => write_alone(ctx, *pending).await,
        // Found out here, not in the batch's turn: the others of the tenant environment
        // waiting to write do not wait for it.
        Ok(write::Written::Unconfirmed(both, fence)) => {
            let (wrote, pending) = *both;
            match were_written(ctx, scope, fence, std::slice::from_ref(&wrote.row.id)).await {
                Some(true) => Ok(wrote),
                Some(false) => write_alone(ctx, pending).await,
                None => Err(unconfirmed()),
            }
        }
        Err(e) => Err(e),
    };
    let Wrote { row, action_id, attached, charging, read: OfferRead { offer, country, .. } } = match written {
        Ok(w) => w,
        Err(e) => {
            // A checkout that may have been written may pay with the token: it stays.
            let maybe_written = matches!(&e, ServiceError::Unavailable(s) if s.is_commit_unknown());
            if let Some(d) = discard.filter(|_| !maybe_written) {
                crate::payment_methods::discard(ctx, scope, d).await;
            }
            return Err(e);
        }
    };
    if let Some(recorded) = &attached {
        crate::payment_methods::attached(ctx, scope, recorded);
    }
    let known = Known { checkout: row.clone(), offer, country };
    let done = spawn(ctx, scope, known, charging, &action_id);
    if let Some(wait) = wait {
        if let Ok(Ok(ended)) = tokio::time::timeout(wait, done).await {
            return Ok(ended);
        }
    }
    Ok(row)
}

/// A stored payment method a checkout of `offer` may pay with: the customer's (found), not
/// deleted, of the offer's storefront, active and not expired.
fn usable_method(
    pm: Option<azotte_store::customers::PaymentMethodRow>,
    offer: &Offer,
) -> Result<azotte_store::customers::PaymentMethodRow> {
    let pm =
        pm.filter(|p| p.state != "deleted").ok_or(ServiceError::NotFound { resource: "payment_method" })?;
    if pm.storefront_id != offer.storefront_id {
        return Err(invalid(
            "payment_method_id",
            "payment_method_not_in_storefront",
            "the payment method belongs to another storefront's PSP account",
        ));
    }
    if pm.state != "active" || pm.expired {
        return Err(invalid(
            "payment_method_id",
            "payment_method_not_usable",
            "the payment method is inactive or expired",
        ));
    }
    Ok(pm)
}

/// A checkout as its request writes it: `processing`, its job's lease held by the request's
/// task (which runs the job first), in the request's lineage (`correlation_id`).
fn new_checkout(
    input: &CheckoutInput,
    read: &OfferRead,
    pm: Option<&azotte_store::customers::PaymentMethodRow>,
    correlation_id: String,
    now: DateTime<Utc>,
) -> CheckoutRow {
    CheckoutRow {
        id: CheckoutId::new().to_string(),
        customer_id: input.customer_id.clone(),
        offer_id: read.offer.id.clone(),
        price_id: read.item.price_id.clone(),
        payment_method_id: pm.map(|p| p.id.clone()),
        status: "processing".into(),
        failure_code: None,
        subscription_id: None,
        payment_id: None,
        next_action: None,
        correlation_id,
        locked_until: Some(now + LEASE),
        run_after: None,
        created_at: now,
        updated_at: now,
    }
}

/// Journals a checkout being written (action `checkout.create`, outcome `checkout.processing`)
/// in `tx`'s current lineage: the action's id.
async fn journal_created(tx: &mut TenantTx, row: &CheckoutRow, now: DateTime<Utc>) -> Result<String> {
    let r = Some(("checkout", row.id.as_str()));
    let action_id = tx
        .action(
            now,
            "checkout.create",
            r,
            json!({"customer_id": row.customer_id, "offer_id": row.offer_id, "price_id": row.price_id}),
        )
        .await?;
    tx.outcome(now, "checkout.processing", r, json!({})).await?;
    Ok(action_id)
}

/// A checkout as its request wrote it, and what its job is handed.
pub(crate) struct Wrote {
    row: CheckoutRow,
    /// The request's action `checkout.create`: the job's cause.
    action_id: String,
    /// The new token's method, recorded with the checkout.
    attached: Option<crate::payment_methods::Recorded>,
    /// The job's first step, done with the write.
    charging: Option<Charging>,
    read: OfferRead,
}

/// The refusal of a second checkout of an offered item while one is in progress (a double
/// click without an Idempotency-Key): before anything is charged.
fn offer_in_checkout() -> ServiceError {
    conflict("offer_in_checkout", "this offered item is already being checked out; follow that checkout")
}

/// Whether the checkouts `ids`, written by one transaction (holding `fence`) whose commit went
/// unconfirmed — the connection failed while the `COMMIT` or its answer was on the way — were
/// written: all of them (`Some(true)`) or none (`Some(false)`), read once that transaction has
/// ended ([`crate::unconfirmed::read_back`], twice at most). `None` (logged with the ids): the
/// database could not tell.
///
/// Without this, a checkout whose commit's answer was lost would be written again, refused as
/// a second checkout of its offered item, and answered `409 offer_in_checkout` while the first
/// one's job charges the customer.
pub(crate) async fn were_written(
    ctx: &Ctx,
    scope: &TenantScope,
    fence: Fence,
    ids: &[String],
) -> Option<bool> {
    for _ in 0..2 {
        let asked = ids.to_vec();
        let Some(found) = crate::unconfirmed::read_back(ctx, scope, fence, "checkouts", move |tx| {
            Box::pin(async move { store::existing_checkouts(tx, &asked).await })
        })
        .await
        else {
            continue;
        };
        match found.len() {
            n if n == ids.len() => {
                tracing::warn!(checkouts = n, "the unconfirmed commit of checkouts had happened");
                return Some(true);
            }
            0 => {
                tracing::warn!(checkouts = ids.len(), "the unconfirmed commit of checkouts had not happened");
                return Some(false);
            }
            n => {
                tracing::error!(found = n, of = ids.len(), "part of one transaction's checkouts found");
                break;
            }
        }
    }
    tracing::error!(
        checkouts = ?ids,
        "whether these checkouts were written is unknown; if they were, the worker runs their jobs"
    );
    None
}

/// The answer to a checkout whose write may or may not have committed: 503, retry later.
fn unconfirmed() -> ServiceError {
    ServiceError::Unavailable(StoreError::commit_unknown("a checkout's commit was not confirmed"))
}

/// Writes a checkout alone, in a transaction of its own, re-reading what the request read (as
/// a batch that could not write it together with others left it, [`write`]).
async fn write_alone(ctx: &Ctx, pending: write::Pending) -> Result<Wrote> {
    let write::Pending { scope, meta, input, read, stored: _, validated, now } = pending;
    let (mut tx, fence) = ctx.db.tenant_tx_fenced(&scope).await?;
    tx.begin_lineage(meta.clone());
    // Before any write: the catalog rows come from the read cache only then.
    let ready = ready_to_charge(ctx, &mut tx, &input.customer_id, &read.offer, &read.item, now).await?;
    let (pm, attached) = match (&input.payment_method_id, validated) {
        (_, Some(validated)) => {
            // Still there (not erased meanwhile).
            crate::customers::exists(&mut tx, &input.customer_id).await?;
            let recorded =
                crate::payment_methods::record(ctx, &mut tx, &input.customer_id, false, validated).await?;
            (Some(recorded.pm.clone()), Some(recorded))
        }
        (Some(id), None) => {
            let pm = customer_store::get_payment_method(&mut tx, &input.customer_id, id).await?;
            (Some(usable_method(pm, &read.offer)?), None)
        }
        (None, None) => (None, None),
    };
    let row = new_checkout(&input, &read, pm.as_ref(), meta.correlation_id.clone(), now);
    let action_id = journal_created(&mut tx, &row, now).await?;
    match store::insert_checkout(&mut tx, &row).await {
        Err(StoreError::UniqueViolation { constraint }) if constraint == "checkouts_offer_once" => {
            return Err(offer_in_checkout());
        }
        other => other?,
    }
    let charging = match (ready, &pm) {
        (Some(ready), Some(pm)) => {
            let planned = first_charge(ctx, &mut tx, ready, &row, &read.item, pm, &action_id, &read.country);
            match planned.await? {
                Some(charging) => {
                    azotte_store::payments::insert(&mut tx, charging.sending.payment()).await?;
                    Some(charging)
                }
                None => None,
            }
        }
        _ => None,
    };
    match tx.commit().await {
        Ok(()) => {}
        Err(e) if e.is_commit_unknown() => {
            match were_written(ctx, &scope, fence, std::slice::from_ref(&row.id)).await {
                Some(true) => {}
                // Nothing written: the client may try again.
                Some(false) => return Err(e.rolled_back().into()),
                None => return Err(unconfirmed()),
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Wrote { row, action_id, attached, charging, read })
}

/// What a checkout reads of its offer and customer.
#[derive(Clone)]
struct OfferRead {
    offer: Offer,
    /// The offered item checked out.
    item: OfferItem,
    /// The customer's country (for the invoice's tax).
    country: Option<String>,
}

/// Checks what a checkout request read — its `customer` and `offer`, as found — for a caller
/// with `scope`: the item it takes from the offer.
fn offer_read(
    scope: &TenantScope,
    input: &CheckoutInput,
    customer: Option<&azotte_store::customers::CustomerRow>,
    offer: Option<azotte_store::subscriptions::OfferRow>,
    now: DateTime<Utc>,
) -> Result<OfferRead> {
    let customer = customer.ok_or(ServiceError::NotFound { resource: "customer" })?;
    let o = offer
        .filter(|o| scope.storefront_allowed(&o.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "offer" })?;
    let offer = Offer::from_row(o)?;
    let item = offered_item(&offer, &input.customer_id, &input.price_id, now)?;
    Ok(OfferRead { offer, item, country: customer.country.clone() })
}

/// Checks how a checkout request pays, from what it read: its stored method (`stored`, the
/// customer's as found), or what attaching its new token needs (`account` as found by id, the
/// customer's `methods`). The stored method, or the token's attach found ready.
fn payment_read(
    scope: &TenantScope,
    input: &CheckoutInput,
    read: &OfferRead,
    stored: Option<azotte_store::customers::PaymentMethodRow>,
    account: Option<azotte_store::psp_accounts::PspAccount>,
    methods: &[azotte_store::customers::PaymentMethodRow],
) -> Result<(Option<azotte_store::customers::PaymentMethodRow>, Option<Attaching>)> {
    let needs_method = read.item.trial_days == 0 || read.item.trial_payment_method_required;
    match (&input.payment_method_id, &input.token) {
        (_, Some((account_id, token))) => {
            let a = crate::payment_methods::AttachInput {
                storefront_id: read.offer.storefront_id.clone(),
                psp_account_id: account_id.clone(),
                token: token.clone(),
                make_default: false,
            };
            let found = crate::payment_methods::attachable(scope, &a, account, methods)?;
            Ok((None, Some((a, found))))
        }
        (Some(_), None) => Ok((Some(usable_method(stored, &read.offer)?), None)),
        (None, None) if needs_method => Err(invalid(
            "payment_method_id",
            "payment_method_required",
            "this purchase needs a payment method",
        )),
        (None, None) => Ok((None, None)),
    }
}

/// A new token's attach as checked, its account's credentials not opened yet.
type Attaching = (crate::payment_methods::AttachInput, crate::payment_methods::Attachable);

/// A checkout request's reads alone, in a read transaction of its own (as a batch that could
/// not read them together with others left them, [`read`]).
async fn read_alone(ctx: &Ctx, asked: read::Asked) -> Result<read::ReadDone> {
    let read::Asked { scope, input, now } = asked;
    let mut tx = ctx.db.tenant_read_tx(&scope).await?;
    let customer = customer_store::get_customer(&mut tx, &input.customer_id).await?;
    let offer = match customer {
        Some(_) => store::get_offer(&mut tx, &input.offer_id).await?,
        None => None,
    };
    let read = offer_read(&scope, &input, customer.as_ref(), offer, now)?;
    let stored = match &input.payment_method_id {
        Some(id) if input.token.is_none() => {
            customer_store::get_payment_method(&mut tx, &input.customer_id, id).await?
        }
        _ => None,
    };
    let (account, methods) = match &input.token {
        Some((account_id, _)) => (
            azotte_store::psp_accounts::get(&mut tx, &read.offer.storefront_id, account_id).await?,
            customer_store::payment_methods_of(&mut tx, &input.customer_id, true).await?,
        ),
        None => (None, Vec::new()),
    };
    let (stored, attaching) = payment_read(&scope, &input, &read, stored, account, &methods)?;
    let prepared = match attaching {
        Some((a, found)) => {
            let connector = payments::connector_in(ctx, &mut tx, &found.account).await?;
            Some((a, found.with(connector)))
        }
        None => None,
    };
    tx.commit().await?;
    Ok(read::ReadDone { input, read, stored, prepared })
}

/// Runs a checkout's job in the background, under its correlation id, caused by the request's
/// action `cause`, as the system job `checkout` of the request's tenant environment: the
/// checkout as its run left it, once it has run (nothing if it failed or another runner got
/// there first). The task runs to its end even when nobody waits for it any more.
fn spawn(
    ctx: &Ctx,
    scope: &TenantScope,
    known: Known,
    charging: Option<Charging>,
    cause: &str,
) -> tokio::sync::oneshot::Receiver<CheckoutRow> {
    let (ctx, job_scope, id) = (ctx.clone(), scope.for_job("checkout"), known.checkout.id.clone());
    let meta = RequestMeta::caused_by(&known.checkout.correlation_id, cause);
    let (done, ended) = tokio::sync::oneshot::channel();
    let lineage = meta.clone();
    tokio::spawn(async move {
        let run = async {
            match charging {
                Some(charging) => charged(&ctx, &job_scope, known.checkout, charging, lineage).await,
                None => process(&ctx, &job_scope, &id, Some(known)).await,
            }
        };
        match journal::with_meta(meta, run).await {
            Ok(Some(row)) => {
                let _ = done.send(row); // nobody waiting any more: fine
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(checkout_id = %id, error = %e, "checkout job failed; the worker will retry")
            }
        }
    });
    ended
}

/// One checkout (permission `subscription.read`); one of a storefront the credential may not
/// see (an API key restricted to other storefronts) is not found.
pub async fn get(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<CheckoutRow> {
    crate::security::require(ctx, scope, Permission::SubscriptionRead).await?;
    let not_found = || ServiceError::NotFound { resource: "checkout" };
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let row = store::get_checkout(&mut tx, id).await?.ok_or_else(not_found)?;
    if scope.storefront_restriction().is_some() {
        // The checkout's storefront is its offer's.
        let offer = store::get_offer(&mut tx, &row.offer_id).await?;
        if !offer.is_some_and(|o| scope.storefront_allowed(&o.storefront_id)) {
            return Err(not_found());
        }
    }
    tx.commit().await?;
    Ok(row)
}

/// What the request that just created a checkout hands its job: nothing to read again.
struct Known {
    /// The checkout, as written (its job has run nowhere yet: it has no subscription, and
    /// the request's task holds its lease).
    checkout: CheckoutRow,
    offer: Offer,
    /// The customer's country as the request read it (for the invoice's tax).
    country: Option<String>,
}

/// A checkout's charge started in the transaction that wrote the checkout ([`first_charge`]):
/// its job's first step, done.
struct Charging {
    checked: Checked,
    sending: payments::attempt::Sending,
}

/// What [`first_charge`] reads before the request's transaction writes anything.
struct ReadyToCharge {
    /// The job's scope, whose name the charge is recorded in.
    job: TenantScope,
    sold: Sold,
    all: Vec<Entitlement>,
    accounts: Vec<azotte_store::psp_accounts::PspAccount>,
    connectors: payments::batch::Connectors,
}

/// The reads of [`first_charge`], in the request's transaction before it writes (the catalog
/// rows then come from the read cache): the offered item checked as the job checks it, and the
/// storefront's PSP accounts with their credentials. `None` when the job is to take the
/// checkout from the start: a trial, a refusal (the job reads the rows again and decides),
/// safe mode.
async fn ready_to_charge(
    ctx: &Ctx,
    tx: &mut TenantTx,
    customer_id: &str,
    offer: &Offer,
    item: &OfferItem,
    now: DateTime<Utc>,
) -> Result<Option<ReadyToCharge>> {
    let Some(job) = charging_job(tx.scope(), item) else { return Ok(None) };
    let history = family_history(tx, customer_id, &item.family).await?;
    let Some((sold, all)) = sold_cached(tx, item, &offer.storefront_id, &history, now).await? else {
        return Ok(None);
    };
    if azotte_store::payment_ops::safe_mode(tx).await?.is_some() {
        return Ok(None);
    }
    let accounts = azotte_store::psp_accounts::of_storefront(tx, &offer.storefront_id).await?;
    let connectors = payments::batch::connectors(ctx, tx, &accounts).await?;
    Ok(Some(ReadyToCharge { job, sold, all, accounts, connectors }))
}

/// The job's scope, when the request that starts a checkout of `item` may charge it at once
/// (`scope` is the request's): not a trial, and the job may create payments.
fn charging_job(scope: &TenantScope, item: &OfferItem) -> Option<TenantScope> {
    let job = scope.for_job("checkout");
    (item.trial_days == 0 && job.require(Permission::PaymentCreate).is_ok()).then_some(job)
}

/// What `item` sells as the catalog rows in the read cache allow it to a customer with
/// `history`, with the environment's entitlements; `None` when they refuse it (the job then
/// reads the rows again and decides). In a transaction that has not written yet.
async fn sold_cached(
    tx: &mut TenantTx,
    item: &OfferItem,
    storefront_id: &str,
    history: &life::FamilyHistory,
    now: DateTime<Utc>,
) -> Result<Option<(Sold, Vec<Entitlement>)>> {
    let rows = CatalogRows::cached(tx, item, storefront_id).await?;
    let Ok(sold) = rows.sellable(item, history, now) else { return Ok(None) };
    Ok(Some((sold, catalog_store::all_entitlements_cached(tx).await?)))
}

/// The first step of the job of a checkout being written, in the request's transaction `tx`
/// (one transaction fewer per checkout): journals the payment with its first attempt started,
/// in the job's name and lineage (caused by the request's action `cause`), as the job would in
/// a transaction of its own; the caller writes the payment ([`Sending::payment`]) after the
/// checkout. `None`, having recorded nothing, when routing cannot plan the charge at once (the
/// job then takes the checkout from the start, [`process`]).
///
/// [`Sending::payment`]: payments::attempt::Sending::payment
#[allow(clippy::too_many_arguments)]
async fn first_charge(
    ctx: &Ctx,
    tx: &mut TenantTx,
    ready: ReadyToCharge,
    checkout: &CheckoutRow,
    item: &OfferItem,
    pm: &azotte_store::customers::PaymentMethodRow,
    cause: &str,
    country: &Option<String>,
) -> Result<Option<Charging>> {
    let ReadyToCharge { job, sold, all, accounts, connectors } = ready;
    // Not the request's first reading of the clock: attaching a new token may have taken a
    // while, and the payment's age is what reconciliation goes by.
    let now = ctx.clock.now();
    let input = charge_input(checkout, item, pm.id.clone());
    let Some(planned) = payments::batch::plan(ctx, tx, &input, pm, &accounts, &connectors, now) else {
        return Ok(None);
    };
    tx.continue_as(job, RequestMeta::caused_by(&checkout.correlation_id, cause));
    let sending = planned.start(tx, now).await?;
    let checked = Checked { item: item.clone(), sold, all, country: country.clone() };
    Ok(Some(Charging { checked, sending }))
}

/// The rest of the job of a checkout whose charge [`first_charge`] started: the PSP calls, then
/// as [`process`] goes on from a charge. A capture at the first call is settled with the other
/// checkouts of the tenant environment captured at the same time ([`batch`]); `meta` is the
/// job's lineage.
async fn charged(
    ctx: &Ctx,
    scope: &TenantScope,
    mut checkout: CheckoutRow,
    charging: Charging,
    meta: RequestMeta,
) -> Result<Option<CheckoutRow>> {
    let Charging { checked, sending } = charging;
    // As a renewal batch does: a payment committed longer ago than half of reconciliation's
    // grace is not sent (reconciliation could take it for lost while the call is in flight).
    if ctx.clock.now() - sending.created_at() > ctx.psp.reconcile_grace / 2 {
        let sent = payments::batch::withhold(ctx, scope, &sending, "not_charged").await;
        return from_charge(ctx, scope, checkout, &checked, sent.map(payments::Charged::Recorded)).await;
    }
    let answer = match sending.first_call(ctx).await {
        Ok(answer) => answer,
        Err(e) => return from_charge(ctx, scope, checkout, &checked, Err(e)).await,
    };
    let (checkout, checked, sending, answer) = match sending.captured(&answer) {
        None => (checkout, checked, sending, answer),
        Some(payment) => {
            checkout.payment_id = Some(payment.id.clone());
            let captured = batch::Captured { checkout, checked, sending, answer, payment, meta };
            match batch::settle(ctx, scope, captured).await? {
                batch::Settled::Done(row) => return Ok(Some(*row)),
                batch::Settled::Alone(c) => {
                    let c = *c;
                    (c.checkout, c.checked, c.sending, c.answer)
                }
            }
        }
    };
    let sent = payments::attempt::run_answered(ctx, scope, sending, answer).await;
    from_charge(ctx, scope, checkout, &checked, sent.map(payments::Charged::Answered)).await
}

/// Goes on from a checkout's charge as far as it got, and ends this run of its job there.
async fn from_charge(
    ctx: &Ctx,
    scope: &TenantScope,
    mut checkout: CheckoutRow,
    checked: &Checked,
    charged: Result<payments::Charged>,
) -> Result<Option<CheckoutRow>> {
    let step = after_charge(ctx, scope, &mut checkout, checked, charged, ctx.clock.now()).await?;
    conclude(ctx, scope, checkout, step).await
}

/// Where the job ended this time.
enum Step {
    Failed(&'static str),
    Waiting,
    /// Waited for its customer longer than [`ACTION_TTL`]: its payment is to be cancelled.
    Expired(String),
    Done,
}

/// Does (or continues) a checkout's work; `Ok` also when it is left waiting for the PSP. With
/// `known`, the checkout just started and its offer (nothing to read again). Returns the
/// checkout as this run left it, or `None` when there was nothing to do.
async fn process(
    ctx: &Ctx,
    scope: &TenantScope,
    id: &str,
    known: Option<Known>,
) -> Result<Option<CheckoutRow>> {
    let now = ctx.clock.now();
    // The job may charge: checked before its transaction (a denial is journaled in one of its own).
    crate::security::require(ctx, scope, Permission::PaymentCreate).await?;
    // One transaction reads what the job needs and then writes the payment (committed before
    // the PSP is called) or, for a trial, the subscription.
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let (mut checkout, offer, country) = match known {
        Some(Known { checkout, offer, country }) => (checkout, offer, Some(country)),
        None => {
            let Some(checkout) = store::get_checkout(&mut tx, id).await? else { return Ok(None) };
            if !matches!(checkout.status.as_str(), "processing" | "requires_action") {
                return Ok(None);
            }
            let offer = store::get_offer(&mut tx, &checkout.offer_id)
                .await?
                .ok_or(ServiceError::NotFound { resource: "offer" })?;
            (checkout, Offer::from_row(offer)?, None)
        }
    };
    // The job's reads share this transaction.
    let step = check_and_charge(ctx, scope, tx, &mut checkout, &offer, country, now).await?;
    conclude(ctx, scope, checkout, step).await
}

/// Ends a run of a checkout's job where its step left it: failed, waiting, expired or done.
async fn conclude(
    ctx: &Ctx,
    scope: &TenantScope,
    checkout: CheckoutRow,
    step: std::result::Result<Step, &'static str>,
) -> Result<Option<CheckoutRow>> {
    let step = step.unwrap_or_else(Step::Failed);
    let (now, id) = (ctx.clock.now(), checkout.id.clone());
    let id = id.as_str();
    match step {
        Step::Expired(payment_id) => {
            match payments::cancel_waiting(ctx, scope, &payment_id, "checkout_expired").await {
                // Cancelled: nothing was charged, the checkout expires.
                Ok(p) if p.status == "canceled" => fail(ctx, scope, checkout, "checkout_expired").await,
                // Finished by the customer meanwhile (its webhook lost): the checkout goes on
                // as its payment now stands.
                Ok(p) if p.status != "requires_action" => Box::pin(process(ctx, scope, id, None)).await,
                Ok(_) => wait(ctx, scope, checkout, now).await,
                Err(e) => {
                    tracing::warn!(checkout_id = %id, error = %e, "cancelling an expired checkout's payment failed; will retry");
                    wait(ctx, scope, checkout, now).await
                }
            }
        }
        Step::Waiting => wait(ctx, scope, checkout, now).await,
        Step::Failed(code) => fail(ctx, scope, checkout, code).await,
        Step::Done => Ok((checkout.status == "succeeded").then_some(checkout)),
    }
}

/// Leaves a checkout waiting — for its customer or its payment's outcome — as this run found
/// it (journaled when that changed), and not to be looked at again by the worker for a while
/// ([`RECHECK_ACTION`], [`RECHECK_PAYMENT`]).
async fn wait(
    ctx: &Ctx,
    scope: &TenantScope,
    mut checkout: CheckoutRow,
    now: DateTime<Utc>,
) -> Result<Option<CheckoutRow>> {
    let recheck = if checkout.status == "requires_action" { RECHECK_ACTION } else { RECHECK_PAYMENT };
    checkout.run_after = Some(now + recheck);
    checkout.locked_until = None;
    let r = Some(("checkout", checkout.id.as_str()));
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let current = store::get_checkout(&mut tx, &checkout.id).await?;
    // Another runner ended it meanwhile: its end stands.
    if let Some(ended) = current.as_ref().filter(|c| is_final(c)) {
        return Ok(Some(ended.clone()));
    }
    if current.as_ref().map(|c| (&c.status, &c.payment_id)) != Some((&checkout.status, &checkout.payment_id))
    {
        tx.action(now, "checkout.progress", r, json!({"payment_id": checkout.payment_id})).await?;
        checkout.updated_at = now;
        if !store::update_checkout(&mut tx, &checkout).await? {
            drop(tx);
            return stored_checkout(ctx, scope, &checkout.id).await;
        }
        tx.outcome(
            now,
            &format!("checkout.{}", checkout.status),
            r,
            json!({"payment_id": checkout.payment_id}),
        )
        .await?;
    } else {
        store::defer_checkout(&mut tx, &checkout.id, now + recheck).await?;
    }
    tx.commit().await?;
    Ok(Some(checkout))
}

/// A checkout that ended: `succeeded` or `failed`.
fn is_final(c: &CheckoutRow) -> bool {
    matches!(c.status.as_str(), "succeeded" | "failed")
}

/// The checkout as stored (as another runner ended it, when one did).
async fn stored_checkout(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<Option<CheckoutRow>> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let c = store::get_checkout(&mut tx, id).await?;
    tx.commit().await?;
    Ok(c)
}

/// Ends a checkout `failed` with `code`. A charge it took is refunded in full first (the refund
/// is recorded — reserved against the payment — before the checkout fails, so a failure to
/// refund leaves the checkout running and the worker tries again); a charge waiting for the
/// customer (3-D Secure) is cancelled at the PSP first; a charge still in flight may yet be
/// captured, so the checkout waits for it to end. Nothing is written when another runner ended
/// the checkout meanwhile.
async fn fail(
    ctx: &Ctx,
    scope: &TenantScope,
    mut checkout: CheckoutRow,
    code: &'static str,
) -> Result<Option<CheckoutRow>> {
    let (current, payment) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let c = store::get_checkout(&mut tx, &checkout.id).await?;
        let p = azotte_store::payments::by_request_key(&mut tx, &charge_key(&checkout.id)).await?;
        tx.commit().await?;
        (c, p)
    };
    if let Some(ended) = current.filter(is_final) {
        return Ok(Some(ended));
    }
    let mut refund_id = None;
    if let Some(p) = &payment {
        checkout.payment_id = Some(p.id.clone());
        match p.status.as_str() {
            "captured" => {
                let reason = format!("checkout {} failed: {code}", checkout.id);
                refund_id = payments::refund_rest(ctx, scope, &p.id, &reason).await?.map(|r| r.id);
            }
            "failed" | "canceled" => {}
            "requires_action" => {
                // Nobody should complete it any more: cancelled at the PSP, the checkout ends as
                // its payment then stands (refunded if the customer finished just before).
                match payments::cancel_waiting(ctx, scope, &p.id, code).await {
                    Ok(p) if p.status != "requires_action" => {
                        return Box::pin(fail(ctx, scope, checkout, code)).await
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(checkout_id = %checkout.id, error = %e, "cancelling a failed checkout's payment failed; will retry")
                    }
                }
                return wait(ctx, scope, checkout, ctx.clock.now()).await;
            }
            // Pending, authorized, unknown: not ended yet.
            _ => return wait(ctx, scope, checkout, ctx.clock.now()).await,
        }
    }
    let now = ctx.clock.now();
    let r = Some(("checkout", checkout.id.as_str()));
    let mut tx = ctx.db.tenant_tx(scope).await?;
    if let Some(ended) = store::get_checkout(&mut tx, &checkout.id).await?.filter(is_final) {
        return Ok(Some(ended));
    }
    tx.action(now, "checkout.process", r, json!({})).await?;
    checkout.status = "failed".into();
    checkout.failure_code = Some(code.to_owned());
    checkout.next_action = None;
    checkout.updated_at = now;
    if !store::update_checkout(&mut tx, &checkout).await? {
        drop(tx);
        return stored_checkout(ctx, scope, &checkout.id).await;
    }
    tx.outcome(
        now,
        "checkout.failed",
        r,
        json!({"failure_code": code, "payment_id": checkout.payment_id, "refund_id": refund_id}),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(checkout))
}

/// The request key of a checkout's charge: one payment per checkout, whoever runs the job.
fn charge_key(checkout_id: &str) -> String {
    format!("checkout-{checkout_id}")
}

/// Re-checks everything, charges if needed and, once paid (or for a trial), creates the
/// subscription. The inner `Err` is a failure code for the checkout. `fresh`: the checkout was
/// just created ([`Known`]), with its customer's country as then read.
#[allow(clippy::too_many_arguments)]
async fn check_and_charge(
    ctx: &Ctx,
    scope: &TenantScope,
    mut tx: TenantTx,
    checkout: &mut CheckoutRow,
    offer: &Offer,
    fresh: Option<Option<String>>,
    now: DateTime<Utc>,
) -> Result<std::result::Result<Step, &'static str>> {
    let Ok(item) = offered_item(offer, &checkout.customer_id, &checkout.price_id, checkout.created_at) else {
        return Ok(Err("offer_invalid"));
    };
    let history = family_history(&mut tx, &checkout.customer_id, &item.family).await?;
    // A checkout just created has no subscription yet (nothing else has run its job).
    if fresh.is_none() && store::subscription_of_checkout(&mut tx, &checkout.id).await?.is_some() {
        return Ok(Ok(Step::Done));
    }
    // The catalog rows come from the process's read cache when it holds them (decision 0011).
    let rows = CatalogRows::cached(&mut tx, &item, &offer.storefront_id).await?;
    let mut all = catalog_store::all_entitlements_cached(&mut tx).await?;
    let sold = match rows.sellable(&item, &history, now) {
        Err(code) if code != "already_subscribed" => {
            // Refused only on rows read now: a cached one may be older than the offer (another
            // process changed the catalog a moment ago and its notice is on its way). All of
            // them are read again, so that what is granted matches the bundle read.
            let rows = CatalogRows::read(&mut tx, &item, &offer.storefront_id).await?;
            all = catalog_store::all_entitlements(&mut tx).await?;
            rows.sellable(&item, &history, now)
        }
        checked => checked,
    };
    let sold = match sold {
        Ok(sold) => sold,
        Err(code) => return Ok(Err(code)),
    };
    // For the invoice: the country its tax was quoted for.
    let country = match fresh {
        Some(country) => country,
        None => customer_store::get_customer(&mut tx, &checkout.customer_id).await?.and_then(|c| c.country),
    };
    let checked = Checked { item, sold, all, country };
    // The charge (none for a trial): one payment per checkout, whoever runs the job. A trial's
    // subscription is written in this transaction.
    if checked.item.trial_days > 0 {
        return create_subscription(ctx, scope, checkout, &checked, None, Some((tx, None))).await;
    }
    let Some(pm) = checkout.payment_method_id.clone() else { return Ok(Err("payment_method_required")) };
    let charged = payments::charge_in(ctx, scope, tx, &charge_input(checkout, &checked.item, pm)).await;
    after_charge(ctx, scope, checkout, &checked, charged, now).await
}

/// What a checkout charges: its offered item, under the checkout's request key.
fn charge_input(checkout: &CheckoutRow, item: &OfferItem, payment_method_id: String) -> ChargeInput {
    ChargeInput {
        customer_id: checkout.customer_id.clone(),
        payment_method_id,
        amount: item.amount,
        currency: item.currency.clone(),
        description: format!("checkout {} ({})", checkout.id, item.bundle_key),
        psp_account_id: None,
        off_session: false,
        request_key: Some(charge_key(&checkout.id)),
    }
}

/// Goes on from a checkout's charge as far as it got: the subscription once it is captured
/// (written in the transaction its answer is recorded in), else the failure code or the wait.
async fn after_charge(
    ctx: &Ctx,
    scope: &TenantScope,
    checkout: &mut CheckoutRow,
    checked: &Checked,
    charged: Result<payments::Charged>,
    now: DateTime<Utc>,
) -> Result<std::result::Result<Step, &'static str>> {
    let charged = match charged {
        Ok(charged) => charged,
        Err(ServiceError::NotFound { .. }) => return Ok(Err("payment_method_not_usable")),
        Err(ServiceError::Conflict { code, .. }) => return Ok(Err(code)),
        Err(e) => return Err(e),
    };
    // Only a captured payment's answer has writes to follow it in its transaction.
    let (p, sent) = if charged.payment().status == "captured" {
        charged.into_parts()
    } else {
        (charged.commit().await?, None)
    };
    checkout.payment_id = Some(p.id.clone());
    let open = sent.map(|(tx, redo)| (tx, Some(redo)));
    match p.status.as_str() {
        "captured" => create_subscription(ctx, scope, checkout, checked, Some(&p), open).await,
        "failed" | "canceled" => Ok(Err(failure_code(&p))),
        "requires_action" => {
            checkout.status = "requires_action".into();
            checkout.next_action = p.next_action.clone();
            if now - p.updated_at >= ACTION_TTL {
                return Ok(Ok(Step::Expired(p.id.clone())));
            }
            Ok(Ok(Step::Waiting))
        }
        // pending (queued in safe mode, or in flight), unknown, authorized: wait.
        _ => {
            checkout.status = "processing".into();
            Ok(Ok(Step::Waiting))
        }
    }
}

/// The failure code of a checkout whose charge failed (or was cancelled) as `p`. Failed on the
/// platform's or the PSP's side — nothing charged: no account up, a call never sent or taken for
/// lost — is not the card's decline.
fn failure_code(p: &PaymentRow) -> &'static str {
    if payments::failed_on_our_side(p) {
        return "psp_unavailable";
    }
    match p.decline_code.as_deref() {
        Some("insufficient_funds") => "insufficient_funds",
        _ => "payment_declined",
    }
}

/// What a checkout's job found it sells, checked before it charges.
struct Checked {
    item: OfferItem,
    sold: Sold,
    all: Vec<Entitlement>,
    /// The customer's country, for the invoice: the one its tax was quoted for.
    country: Option<String>,
}

/// The catalog rows a checkout's job checks the offered item against.
struct CatalogRows {
    bundle: Option<Bundle>,
    price: Option<azotte_store::catalog::Price>,
    versions: Vec<PriceVersion>,
    storefront: Option<Storefront>,
}

/// What the checkout sells, as the catalog allows it.
struct Sold {
    bundle: Bundle,
    version: PriceVersion,
    storefront: Storefront,
    period: BillingPeriod,
}

impl CatalogRows {
    /// The rows of `item` (sold in storefront `storefront_id`) from the process's read cache
    /// when it holds them (decision 0011).
    async fn cached(tx: &mut TenantTx, item: &OfferItem, storefront_id: &str) -> Result<Self> {
        Ok(CatalogRows {
            bundle: catalog_store::get_bundle_cached(tx, &item.bundle_id).await?,
            price: catalog_store::get_price_cached(tx, &item.price_id).await?,
            versions: catalog_store::versions_of_cached(tx, &item.price_id).await?,
            storefront: catalog_store::get_storefront_cached(tx, storefront_id).await?,
        })
    }

    /// The rows of `item` as the database holds them now.
    async fn read(tx: &mut TenantTx, item: &OfferItem, storefront_id: &str) -> Result<Self> {
        Ok(CatalogRows {
            bundle: catalog_store::get_bundle(tx, &item.bundle_id).await?,
            price: catalog_store::get_price(tx, &item.price_id).await?,
            versions: catalog_store::versions_of(tx, std::slice::from_ref(&item.price_id)).await?,
            storefront: catalog_store::get_storefront(tx, storefront_id).await?,
        })
    }

    /// The offered item as these rows let it be sold to a customer with `history`, or the
    /// checkout's failure code.
    fn sellable(
        self,
        item: &OfferItem,
        history: &life::FamilyHistory,
        now: DateTime<Utc>,
    ) -> std::result::Result<Sold, &'static str> {
        let storefront = self.storefront.ok_or("storefront_not_available")?;
        let bundle = (self.bundle)
            .filter(|b| b.status == azotte_domain::catalog::BundleStatus::Active)
            .ok_or("bundle_not_available")?;
        let price = (self.price)
            .filter(|p| p.status == azotte_domain::catalog::ActiveStatus::Active)
            .ok_or("price_not_available")?;
        let version = self
            .versions
            .into_iter()
            .find(|v| v.version == item.price_version)
            .ok_or("price_not_available")?;
        let period = price.billing_period.ok_or("price_not_recurring")?;
        if history.has_live_subscription {
            return Err("already_subscribed");
        }
        if item.trial_days > 0
            && !trial_eligibility(history, now, storefront.lifecycle.trial_cooldown_days).eligible
        {
            return Err("trial_not_eligible");
        }
        Ok(Sold { bundle, version, storefront, period })
    }
}

/// What a bundle grants, with `includes` expanded (an included entitlement is granted without
/// a quantity of its own; the bundle's own quantity wins when it lists it too).
pub(crate) fn grants(bundle: &Bundle, all: &[Entitlement]) -> Vec<Grant> {
    let mut out: Vec<Grant> = Vec::new();
    let mut todo: Vec<(String, Option<i64>)> = bundle
        .entitlements
        .iter()
        .filter_map(|be| all.iter().find(|e| e.id == be.entitlement_id).map(|e| (e.key.clone(), be.quantity)))
        .collect();
    let listed: Vec<String> = todo.iter().map(|(k, _)| k.clone()).collect();
    while let Some((key, quantity)) = todo.pop() {
        if out.iter().any(|g| g.entitlement_key == key) {
            continue;
        }
        let Some(e) = all.iter().find(|e| e.key == key) else { continue };
        for inc in &e.includes {
            if !listed.contains(inc) {
                todo.push((inc.clone(), None));
            }
        }
        out.push(Grant {
            entitlement_key: key,
            kind: e.kind.as_str().to_owned(),
            quantity,
            unit: e.unit.clone(),
        });
    }
    out.sort_by(|a, b| a.entitlement_key.cmp(&b.entitlement_key));
    out
}

fn unit_str(u: PeriodUnit) -> &'static str {
    u.as_str()
}

/// Subscription row fields from a lifecycle state.
pub(crate) fn apply_state(row: &mut SubscriptionRow, s: &life::State) {
    row.status = s.status.as_str().to_owned();
    row.anchor = s.anchor;
    row.period_start = s.period_start;
    row.period_end = s.period_end;
    row.periods = s.periods as i32;
    row.trial_end = s.trial_end;
    row.ends_at = s.ends_at;
    row.canceled_immediately = s.canceled_immediately;
    row.paused_at = s.paused_at;
}

/// The subscription a checkout creates of what `checked` sells, starting `now`.
fn new_subscription(checkout: &CheckoutRow, checked: &Checked, now: DateTime<Utc>) -> SubscriptionRow {
    let Checked { item, sold: Sold { bundle, storefront, period, .. }, .. } = checked;
    let (period, trial_days) = (*period, item.trial_days);
    let state = life::start(now, period, trial_days);
    let sid = SubscriptionId::new().to_string();
    let mut row = SubscriptionRow {
        id: sid.clone(),
        customer_id: checkout.customer_id.clone(),
        storefront_id: storefront.id.clone(),
        bundle_id: bundle.id.clone(),
        family: bundle.family.clone(),
        price_id: item.price_id.clone(),
        price_version: item.price_version,
        amount: item.amount,
        currency: item.currency.clone(),
        period_unit: unit_str(period.unit).to_owned(),
        period_count: period.count as i32,
        status: String::new(),
        anchor: now,
        period_start: now,
        period_end: now,
        periods: 0,
        trial_end: None,
        had_trial: trial_days > 0,
        ends_at: None,
        canceled_immediately: false,
        paused_at: None,
        payment_method_id: checkout.payment_method_id.clone(),
        cancel_reason: None,
        checkout_id: checkout.id.clone(),
        created_at: now,
        updated_at: now,
        dunning_attempts: 0,
        next_retry_at: None,
        grace_extended_until: None,
    };
    apply_state(&mut row, &state);
    row
}

/// Records the outcomes of a subscription a checkout created, in the transaction's current
/// lineage: `subscription.created` and `entitlements.granted`.
async fn created_outcomes(
    tx: &mut TenantTx,
    now: DateTime<Utc>,
    checkout: &CheckoutRow,
    row: &SubscriptionRow,
    granted: &[Grant],
) -> Result<()> {
    let sr = Some(("subscription", row.id.as_str()));
    tx.outcome(
        now,
        "subscription.created",
        sr,
        json!({"status": row.status, "customer_id": row.customer_id, "bundle_id": row.bundle_id, "price_id": row.price_id,
               "period_start": row.period_start, "period_end": row.period_end, "trial_end": row.trial_end,
               "checkout_id": checkout.id, "payment_id": checkout.payment_id}),
    )
    .await?;
    let keys: Vec<&str> = granted.iter().map(|g| g.entitlement_key.as_str()).collect();
    tx.outcome(now, "entitlements.granted", sr, json!({"customer_id": row.customer_id, "keys": keys}))
        .await?;
    Ok(())
}

/// How [`create_subscription`]'s transaction ended when it did not commit.
enum NotCreated {
    /// Another checkout of the customer won the family meanwhile.
    Family,
    /// Another runner of this checkout created it.
    Raced,
    /// Its charge was refunded in full meanwhile.
    Refunded,
}

/// Creates the subscription of what `checked` sells, its grants and — paid by `payment` (none
/// for a trial: no invoice) — its first invoice, and marks the checkout `succeeded`, in one
/// transaction: `open`'s, when given (the job's, for a trial; the one the
/// charge's answer is recorded in, with what records it again), else one of its own. Its last
/// write is the invoice's number: the series row it locks is held only for the commit
/// (decision 0008). When it does not commit, the charge's answer is recorded alone first; a
/// family another checkout won fails the checkout (and [`fail`] refunds the charge): the
/// inner `Err` is the checkout's failure code.
async fn create_subscription(
    ctx: &Ctx,
    scope: &TenantScope,
    checkout: &mut CheckoutRow,
    checked: &Checked,
    payment: Option<&PaymentRow>,
    open: Option<(TenantTx, Option<Redo>)>,
) -> Result<std::result::Result<Step, &'static str>> {
    let Checked { item, sold: Sold { bundle, version, storefront, .. }, all, country } = checked;
    let (mut tx, redo) = match open {
        Some(open) => open,
        None => (ctx.db.tenant_tx(scope).await?, None),
    };
    // The charge's answer was recorded in `tx`, which read and holds the payment since.
    let held = redo.is_some();
    // Committed when it ends in `Ok(Ok(()))`.
    let created: Result<std::result::Result<(), NotCreated>> = async {
        let now = ctx.clock.now();
        let row = new_subscription(checkout, checked, now);
        let sid = row.id.clone();
        let r = Some(("checkout", checkout.id.as_str()));
        tx.action(now, "checkout.complete", r, json!({"payment_id": checkout.payment_id})).await?;
        match store::insert_subscription(&mut tx, &row).await {
            Err(StoreError::UniqueViolation { constraint }) if constraint == "subscriptions_live_family" => {
                return Ok(Err(NotCreated::Family));
            }
            Err(StoreError::UniqueViolation { .. }) => return Ok(Err(NotCreated::Raced)),
            other => other?,
        }
        let granted = grants(bundle, all);
        store::insert_grants(&mut tx, &sid, &row.customer_id, &granted).await?;
        // The first charge's invoice, paid by it (a trial charged nothing: no invoice), written as a
        // draft now and numbered last.
        // Held from here, and read as it now stands, so that a refund cannot slip in before the
        // invoice records it (decision 0007).
        let locked = match payment {
            // Its answer recorded in this transaction, which holds it since: as it stands.
            Some(p) if held => Some(p.clone()),
            Some(p) => Some(
                azotte_store::payments::get_locked(&mut tx, &p.id)
                    .await?
                    .ok_or(ServiceError::NotFound { resource: "payment" })?,
            ),
            None => None,
        };
        // Refunded in full meanwhile (another runner of this checkout failing it): it pays for
        // nothing, and the checkout fails.
        if locked.as_ref().is_some_and(|p| p.refunded_amount >= p.captured_amount) {
            return Ok(Err(NotCreated::Refunded));
        }
        let invoice = match &locked {
            Some(p) => Some(
                crate::invoices::for_checkout(
                    &mut tx,
                    &row,
                    item,
                    storefront,
                    version,
                    country.as_deref(),
                    p,
                    now,
                )
                .await?,
            ),
            None => None,
        };
        checkout.status = "succeeded".into();
        checkout.subscription_id = Some(sid.clone());
        checkout.next_action = None;
        checkout.updated_at = now;
        // Another runner ended it meanwhile (a lease that ran out): its end stands.
        if !store::update_checkout(&mut tx, checkout).await? {
            return Ok(Err(NotCreated::Raced));
        }
        created_outcomes(&mut tx, now, checkout, &row, &granted).await?;
        if let Some(invoice) = invoice {
            invoice.issue(&mut tx, ctx.numbering, now).await?;
        }
        tx.outcome(now, "checkout.succeeded", r, json!({"subscription_id": sid})).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
    .await;
    if !matches!(created, Ok(Ok(()))) {
        if let Some(redo) = redo {
            redo.record_alone(ctx, scope).await?;
        }
    }
    match created? {
        Ok(()) => Ok(Ok(Step::Done)),
        // Another runner ended it: the checkout as that runner left it, not as this one would
        // have.
        Err(NotCreated::Raced) => {
            if let Some(stored) = stored_checkout(ctx, scope, &checkout.id).await? {
                *checkout = stored;
            }
            Ok(Ok(Step::Done))
        }
        // The checkout fails; its charge is refunded as it does ([`fail`]).
        Err(NotCreated::Family) => Ok(Err("already_subscribed")),
        Err(NotCreated::Refunded) => Ok(Err("payment_refunded")),
    }
}

/// Runs every due checkout job of the tenant environment (the worker calls it each tick): the
/// checkouts in progress that no run has left waiting until later (oldest first).
pub async fn run_due(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let now = ctx.clock.now();
    let due = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let d = store::due_checkouts(&mut tx, now, 200).await?;
        tx.commit().await?;
        d
    };
    let mut n = 0;
    let mut failure = None;
    for c in due {
        // One checkout that cannot run (a bad row, a PSP or database error) does not hold up
        // the others, nor the worker's other jobs: logged, retried at the next tick.
        match run_one(ctx, scope, &c).await {
            Ok(_) => n += 1,
            Err(e) => {
                tracing::warn!(checkout_id = %c.id, error = %e, "checkout job failed; will retry");
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// Runs a checkout's job again, once it holds its lease (`None` when another runner holds it or
/// it has ended): the retry continues the request's lineage, caused by its action.
async fn run_one(ctx: &Ctx, scope: &TenantScope, c: &CheckoutRow) -> Result<Option<CheckoutRow>> {
    if !claim(ctx, scope, &c.id).await? {
        return Ok(None);
    }
    run_claimed(ctx, scope, c).await
}

/// Takes a checkout's lease for this runner: `false` when another runner holds it or the
/// checkout has ended.
async fn claim(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<bool> {
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let claimed = store::claim_checkout(&mut tx, id, now, now + LEASE).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Runs a checkout's job whose lease this runner holds ([`claim`]).
async fn run_claimed(ctx: &Ctx, scope: &TenantScope, c: &CheckoutRow) -> Result<Option<CheckoutRow>> {
    let cause =
        crate::journal::cause(ctx, scope, ("checkout", &c.id), |e| e.type_ == "checkout.create").await?;
    let meta = match cause {
        Some(_) => crate::journal::job_meta(cause),
        None => RequestMeta { correlation_id: c.correlation_id.clone(), ..RequestMeta::system() },
    };
    journal::with_meta(meta, process(ctx, scope, &c.id, None)).await
}

/// A checkout's charge moved (a verified webhook, a reconciliation, a queued charge sent when
/// safe mode was lifted): while the checkout is in progress its job runs at once, in a task of
/// its own, so a customer back from 3-D Secure sees the subscription without waiting for the
/// worker. When another runner holds the checkout, it may have read the payment before this
/// news and be about to leave the checkout waiting for minutes: the task takes the checkout as
/// soon as that runner lets go (within its lease), unless it has ended by then.
pub(crate) fn payment_moved(ctx: &Ctx, scope: &TenantScope, request_key: Option<&str>) {
    let Some(id) = request_key.and_then(|k| k.strip_prefix("checkout-")) else { return };
    let (ctx, scope, id) = (ctx.clone(), scope.for_job("checkout"), id.to_owned());
    tokio::spawn(async move {
        let ran = async {
            let give_up = tokio::time::Instant::now() + LEASE.to_std().unwrap_or_default();
            let mut pause = std::time::Duration::from_millis(50);
            loop {
                let Some(c) = stored_checkout(&ctx, &scope, &id).await?.filter(|c| !is_final(c)) else {
                    return Ok(());
                };
                // Held as read: only a look (a read) until the holder lets go, then the claim
                // (a write, which may still lose to another runner).
                let held = c.locked_until.is_some_and(|l| l >= ctx.clock.now());
                if !held && claim(&ctx, &scope, &id).await? {
                    return run_claimed(&ctx, &scope, &c).await.map(|_| ());
                }
                if tokio::time::Instant::now() + pause > give_up {
                    // The holder's lease has run out by now, or it is stuck: the worker's
                    // next look takes the checkout.
                    return Ok(());
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        };
        if let Err(e) = ran.await {
            tracing::warn!(checkout_id = %id, error = %e, "checkout job after a payment webhook failed; the worker will retry");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: Option<&str>) -> PaymentRow {
        PaymentRow {
            id: "pay_1".into(),
            storefront_id: "sf_1".into(),
            customer_id: "cus_1".into(),
            payment_method_id: "pm_1".into(),
            psp_account_id: None,
            psp_payment_id: None,
            amount: 999,
            currency: "EUR".into(),
            status: "failed".into(),
            attempts: 1,
            decline_code: code.map(str::to_owned),
            captured_amount: 0,
            refunded_amount: 0,
            description: String::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            queued_reason: None,
            request_key: None,
            next_action: None,
        }
    }

    #[test]
    fn a_charge_the_platform_or_the_psp_never_took_is_no_decline() {
        for code in ["psp_unavailable", "no_eligible_psp_account", "not_charged", "safe_mode"] {
            assert_eq!(failure_code(&failed(Some(code))), "psp_unavailable", "{code}");
        }
        assert_eq!(failure_code(&failed(Some("insufficient_funds"))), "insufficient_funds");
        for code in [Some("stolen_card"), Some("expired_card"), None] {
            assert_eq!(failure_code(&failed(code)), "payment_declined", "{code:?}");
        }
        let mut canceled = failed(None);
        canceled.status = "canceled".into();
        assert_eq!(failure_code(&canceled), "payment_declined");
    }
}
