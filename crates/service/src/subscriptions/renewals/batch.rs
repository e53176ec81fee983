//! Renewal batches: the common renewal — an `active` subscription whose period ended, charged
//! for the first time for that period with its payment method, nothing else pending on it — run
//! for many subscriptions of one tenant environment at once, with set-based statements: one
//! transaction before the PSP calls writes every invoice (numbered from one reservation of its
//! series), line and payment with one statement each; the first attempts are then called
//! together; one transaction after them records every capture, renews every subscription and
//! pays every invoice, again one statement each. Each renewal is journaled in its own lineage
//! (its own correlation id), with exactly the entries the one-by-one path records, so a batch
//! renewal reads in the journal as any other.
//!
//! Anything out of the ordinary goes the one-by-one way ([`super::run_one`]), which knows every
//! case: a job whose subscription is past due, changed or missing, a key already used (a rerun),
//! an unpaid invoice or plan change on the subscription, safe mode, a PSP whose breakers are all
//! open, a storefront with fiscalization, a method that cannot be charged — left out before
//! anything is written. After the charges, every answer but a capture (declines, failovers,
//! unknowns, pending) is recorded and settled one by one; and if the settling transaction cannot
//! renew every captured one as read (a subscription or payment changed meanwhile), it is rolled
//! back and each is settled one by one, its answer recorded alone first. Nothing is charged twice:
//! the batch's payments carry the same request keys as the one-by-one path's.

use std::collections::{BTreeMap, HashMap, HashSet};

use azotte_domain::invoice::FiscalProvider;
use azotte_domain::permission::Permission;
use azotte_domain::subscription::{self as life, Event};
use azotte_store::invoices::InvoiceRow;
use azotte_store::journal::{self, RequestMeta};
use azotte_store::payments::PaymentRow;
use azotte_store::renewal_jobs::{self as jobs, RenewalJob};
use azotte_store::subscriptions::{self as store, SubscriptionRow};
use azotte_store::TenantScope;
use serde_json::json;

use super::{
    charge_key, conclude, concluded, invoice_description, job_attempt, renew_body, renewal_charge, Ran,
};
use crate::payments::attempt::{self, Answer, Sending};
use crate::payments::{self, Charged};
use crate::subscriptions::checkout::apply_state;
use crate::subscriptions::lifecycle::{period_of, state_of};
use crate::{Ctx, Result, ServiceError};

/// PSP calls of one batch in flight at once.
const CALLS_AT_ONCE: usize = 16;

/// One renewal of a batch, its invoice and payment committed.
struct Item {
    job: RenewalJob,
    sub: SubscriptionRow,
    storefront: azotte_store::catalog::Storefront,
    /// Its lineage: every entry of this renewal, in either transaction, carries it.
    meta: RequestMeta,
    invoice: InvoiceRow,
    sending: Sending,
}

/// Runs what it can of `jobs` (all of `scope`'s tenant environment) as one batch. Returns how
/// each job it ran ended, and the jobs it left for the one-by-one path.
pub(super) async fn run(
    ctx: &Ctx,
    scope: &TenantScope,
    jobs: Vec<RenewalJob>,
) -> (Vec<Result<Ran>>, Vec<RenewalJob>) {
    let (items, rest) = match prepare(ctx, scope, jobs).await {
        Ok(p) => p,
        Err((e, jobs)) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "renewal batch not prepared; renewing one by one");
            return (Vec::new(), jobs);
        }
    };
    if items.is_empty() {
        return (Vec::new(), rest);
    }
    let mut ran = Vec::new();
    let (mut captured, mut others) = (Vec::new(), Vec::new());
    for (item, called) in call_all(ctx, scope, items).await {
        match called {
            Called::Answered(a) => match item.sending.captured(&a) {
                Some(row) => captured.push((item, a, row)),
                None => others.push((item, Called::Answered(a))),
            },
            other => others.push((item, other)),
        }
    }
    // The captures first: until they are recorded they exist only here.
    ran.extend(settle_all(ctx, scope, captured).await);
    for (item, called) in others {
        ran.push(match called {
            Called::Answered(a) => answered_alone(ctx, scope, item, a).await,
            Called::Withheld(reason) => withheld(ctx, scope, item, reason).await,
            // Nothing recorded (the payment stays pending with its attempt, for reconciliation):
            // the job looks again later, as the one-by-one path's does.
            Called::Failed(e) => concluded(ctx, item.job, Err(e)).await,
        });
    }
    (ran, rest)
}

/// The batch's first transaction: reads what every job needs with one statement per table,
/// leaves out the jobs the one-by-one path must run, and writes the others' invoices, lines and
/// payments, each renewal journaled in its own lineage. On an error nothing is written and every
/// job is handed back.
async fn prepare(
    ctx: &Ctx,
    scope: &TenantScope,
    jobs: Vec<RenewalJob>,
) -> std::result::Result<(Vec<Item>, Vec<RenewalJob>), (ServiceError, Vec<RenewalJob>)> {
    // A denial, deferred numbering: the one-by-one path journals or handles them.
    if ctx.numbering != crate::invoices::Numbering::Auto
        || crate::security::require(ctx, scope, Permission::PaymentCreate).await.is_err()
    {
        return Ok((Vec::new(), jobs));
    }
    let picking = match pick(ctx, scope, &jobs).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok((Vec::new(), jobs)),
        Err(e) => return Err((e, jobs)),
    };
    let taken: HashSet<String> = picking.picked.iter().map(|p| p.job.id.clone()).collect();
    let items = match write(picking).await {
        Ok(items) => items,
        Err(e) => return Err((e, jobs)),
    };
    let rest = jobs.into_iter().filter(|j| !taken.contains(&j.id)).collect();
    Ok((items, rest))
}

/// A job the batch takes, priced and routed, nothing recorded yet.
struct Picked {
    job: RenewalJob,
    sub: SubscriptionRow,
    storefront: azotte_store::catalog::Storefront,
    billed: crate::invoices::Billed,
    planned: payments::batch::Planned,
}

/// The open first transaction and the jobs it takes, priced at `now` (their invoices are
/// issued at that time too, in that year's series).
struct Picking {
    tx: azotte_store::TenantTx,
    picked: Vec<Picked>,
    now: chrono::DateTime<chrono::Utc>,
}

/// Opens the first transaction and picks the jobs the batch takes (`None`: none).
async fn pick(ctx: &Ctx, scope: &TenantScope, jobs: &[RenewalJob]) -> Result<Option<Picking>> {
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    if azotte_store::payment_ops::safe_mode(&mut tx).await?.is_some() {
        return Ok(None);
    }
    let ids: Vec<String> = jobs.iter().map(|j| j.subscription_id.clone()).collect();
    let subs: HashMap<String, SubscriptionRow> =
        store::get_subscriptions(&mut tx, &ids).await?.into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut candidates: Vec<(&RenewalJob, &SubscriptionRow)> = jobs
        .iter()
        .filter_map(|j| subs.get(&j.subscription_id).map(|s| (j, s)))
        .filter(|(j, s)| {
            s.status == "active"
                && j.attempt == 0
                && job_attempt(s) == 0
                && s.period_end == j.period_end
                && s.payment_method_id.is_some()
        })
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    // A key used already (a rerun), an unpaid invoice, a plan change: one by one.
    let keys: Vec<String> = candidates.iter().map(|(j, s)| charge_key(&s.id, j)).collect();
    let used: HashSet<String> =
        azotte_store::payments::taken_request_keys(&mut tx, &keys).await?.into_iter().collect();
    let sub_ids: Vec<String> = candidates.iter().map(|(_, s)| s.id.clone()).collect();
    let mut busy: HashSet<String> =
        azotte_store::invoices::with_unpaid_invoices(&mut tx, &sub_ids).await?.into_iter().collect();
    busy.extend(azotte_store::replacements::with_open(&mut tx, &sub_ids).await?);
    candidates.retain(|(j, s)| !used.contains(&charge_key(&s.id, j)) && !busy.contains(&s.id));

    // Each storefront once: gone, fiscalized, or every account's breaker open → one by one.
    let mut storefronts = HashMap::new();
    for (_, s) in &candidates {
        if storefronts.contains_key(&s.storefront_id) {
            continue;
        }
        let found = azotte_store::catalog::get_storefront(&mut tx, &s.storefront_id).await?;
        let entry = match found {
            Some(sf) if sf.fiscalization == FiscalProvider::None => {
                let accounts = azotte_store::psp_accounts::of_storefront(&mut tx, &s.storefront_id).await?;
                let usable: Vec<_> = accounts.iter().filter(|a| a.status == "active").collect();
                if usable.is_empty() || usable.iter().all(|a| !ctx.psp.breakers.routable(&a.id, now)) {
                    None
                } else {
                    let conns = payments::batch::connectors(ctx, &mut tx, &accounts).await?;
                    Some((sf, accounts, conns))
                }
            }
            _ => None,
        };
        storefronts.insert(s.storefront_id.clone(), entry);
    }
    let customer_ids: Vec<String> = candidates.iter().map(|(_, s)| s.customer_id.clone()).collect();
    let customers: HashMap<String, azotte_store::customers::CustomerRow> =
        azotte_store::customers::get_customers(&mut tx, &customer_ids)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
    let pm_ids: Vec<String> = candidates.iter().filter_map(|(_, s)| s.payment_method_id.clone()).collect();
    let pms: HashMap<String, azotte_store::customers::PaymentMethodRow> =
        azotte_store::customers::get_payment_methods(&mut tx, &pm_ids)
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
    let price_ids: Vec<String> = candidates.iter().map(|(_, s)| s.price_id.clone()).collect();
    let versions = azotte_store::catalog::versions_of(&mut tx, &price_ids).await?;

    let mut picked = Vec::new();
    for (job, sub) in candidates {
        let Some(Some((storefront, accounts, conns))) = storefronts.get(&sub.storefront_id) else { continue };
        let (Some(customer), Some(pm)) =
            (customers.get(&sub.customer_id), sub.payment_method_id.as_ref().and_then(|id| pms.get(id)))
        else {
            continue;
        };
        if pm.storefront_id != sub.storefront_id {
            continue;
        }
        let Ok(next) = life::apply(&state_of(sub)?, &Event::RenewalSucceeded, now, period_of(sub)?) else {
            continue;
        };
        let description = invoice_description(sub, next.period_start);
        let charge = crate::invoices::SubscriptionCharge {
            storefront,
            subscription: sub,
            country: customer.country.as_deref(),
            versions: &versions,
            description: &description,
            amount: sub.amount,
            period: (next.period_start, next.period_end),
        };
        let Ok(billed) = charge.bill(now) else { continue };
        let input = renewal_charge(sub, job, &pm.id, billed.row.total, &billed.row.id);
        let Some(planned) = payments::batch::plan(ctx, &tx, &input, pm, accounts, conns, now) else {
            continue;
        };
        picked.push(Picked {
            job: job.clone(),
            sub: sub.clone(),
            storefront: storefront.clone(),
            billed,
            planned,
        });
    }
    if picked.is_empty() {
        return Ok(None);
    }
    Ok(Some(Picking { tx, picked, now }))
}

/// Numbers, journals and writes the picked renewals in the first transaction, and commits it:
/// the payments (their first attempts started), one reservation of numbers per series, then the
/// invoices and their lines, one statement each.
async fn write(picking: Picking) -> Result<Vec<Item>> {
    let Picking { mut tx, picked, now } = picking;
    // The payments first: the series rows stay locked from the reservation to the commit, and
    // other batches of the storefront wait for them meanwhile.
    let payment_rows: Vec<_> = picked.iter().map(|p| p.planned.payment().clone()).collect();
    azotte_store::payments::insert_many(&mut tx, &payment_rows).await?;
    // In (storefront, series) order: every locker of series rows takes them in one order
    // (the numbering pass does too), so two never wait for each other in a cycle.
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for p in &picked {
        *counts.entry((p.sub.storefront_id.clone(), p.billed.series.clone())).or_default() += 1;
    }
    let mut next = BTreeMap::new();
    for ((storefront, series), n) in counts {
        let first = azotte_store::invoices::reserve_numbers(&mut tx, &storefront, &series, n).await?;
        next.insert((storefront, series), first);
    }
    let mut items = Vec::with_capacity(picked.len());
    let (mut invoices, mut lines) = (Vec::new(), Vec::new());
    for Picked { job, sub, storefront, mut billed, planned } in picked {
        let meta = RequestMeta::system();
        tx.begin_lineage(meta.clone());
        tx.action(
            now,
            "subscription.renew",
            Some(("subscription", sub.id.as_str())),
            renew_body(&sub, "invoice"),
        )
        .await?;
        let sending = planned.start(&mut tx, now).await?;
        let sequence = next
            .get_mut(&(sub.storefront_id.clone(), billed.series.clone()))
            .ok_or_else(|| ServiceError::Internal("a series without a reservation".into()))?;
        billed.issue(&mut tx, *sequence, now).await?;
        *sequence += 1;
        invoices.push(billed.row.clone());
        lines.extend(billed.lines);
        items.push(Item { job, sub, storefront, meta, invoice: billed.row, sending });
    }
    azotte_store::invoices::insert_many(&mut tx, &invoices).await?;
    azotte_store::invoices::insert_lines(&mut tx, &lines).await?;
    tx.commit().await?;
    Ok(items)
}

/// How an item's first PSP call went.
enum Called {
    Answered(Answer),
    /// Not sent, and why: money movement stopped (`safe_mode`), or the payment waited so long
    /// that reconciliation could take it for a lost request and fail it while it is in flight
    /// (`not_charged`).
    Withheld(&'static str),
    /// The call could not be made (nothing recorded).
    Failed(ServiceError),
}

/// How often, at most, a batch's calls look at safe mode again.
const SAFE_MODE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Makes every item's first PSP call, [`CALLS_AT_ONCE`] at a time. Before each call it makes
/// sure money may still move: safe mode is read again (at most every [`SAFE_MODE_EVERY`]), and a
/// payment committed longer ago than half of reconciliation's grace is not sent (reconciliation
/// takes an attempt that old and unanswered for lost, and could fail it while the call is in
/// flight). A call that panicked leaves its job to run again later.
async fn call_all(ctx: &Ctx, scope: &TenantScope, items: Vec<Item>) -> Vec<(Item, Called)> {
    let mut out = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut jobs_of = HashMap::new();
    let mut checked: Option<(std::time::Instant, bool)> = None;
    let too_old = ctx.psp.reconcile_grace / 2;
    loop {
        while running.len() < CALLS_AT_ONCE {
            let Some(item) = items.next() else { break };
            if checked.is_none_or(|(at, _)| at.elapsed() >= SAFE_MODE_EVERY) {
                checked = Some((std::time::Instant::now(), safe_mode(ctx, scope).await));
            }
            if checked.is_some_and(|(_, on)| on) {
                out.push((item, Called::Withheld("safe_mode")));
                continue;
            }
            if ctx.clock.now() - item.sending.created_at() > too_old {
                out.push((item, Called::Withheld("not_charged")));
                continue;
            }
            let ctx = ctx.clone();
            let job = item.job.clone();
            let handle = running.spawn(async move {
                let called = match item.sending.first_call(&ctx).await {
                    Ok(a) => Called::Answered(a),
                    Err(e) => Called::Failed(e),
                };
                (item, called)
            });
            jobs_of.insert(handle.id(), job);
        }
        match running.join_next().await {
            None => break,
            Some(Ok(called)) => out.push(called),
            Some(Err(e)) => {
                tracing::error!(error = %e, "a renewal batch's PSP call panicked; its job runs again later");
                if let Some(job) = jobs_of.remove(&e.id()) {
                    let failed = ServiceError::Internal("the PSP call panicked".into());
                    if let Err(e) = concluded(ctx, job, Err(failed)).await {
                        tracing::warn!(error = %e, "a panicked renewal's job not released; its lock expires");
                    }
                }
            }
        }
    }
    out
}

/// Whether money movement is paused in the tenant (read failures count as paused: nothing is
/// sent on a guess).
async fn safe_mode(ctx: &Ctx, scope: &TenantScope) -> bool {
    let read = async {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let on = azotte_store::payment_ops::safe_mode(&mut tx).await?.is_some();
        tx.commit().await?;
        Ok::<_, ServiceError>(on)
    };
    read.await.unwrap_or(true)
}

/// Fails an item's payment that was not sent (nothing was charged) and concludes its renewal one
/// by one, in its lineage: deferred, to run again with a new request key.
async fn withheld(ctx: &Ctx, scope: &TenantScope, item: Item, reason: &'static str) -> Result<Ran> {
    let Item { job, sub, storefront, meta, invoice, sending } = item;
    let r = journal::with_meta(meta, async {
        let p = payments::batch::withhold(ctx, scope, &sending, reason).await?;
        Box::pin(conclude(ctx, scope, sub, &storefront, Ok((Charged::Recorded(p), invoice.id)))).await
    })
    .await;
    concluded(ctx, job, r).await
}

/// Records an answer that is not a capture and concludes its renewal one by one, in its lineage.
async fn answered_alone(ctx: &Ctx, scope: &TenantScope, item: Item, answer: Answer) -> Result<Ran> {
    let Item { job, sub, storefront, meta, invoice, sending } = item;
    let r = journal::with_meta(meta, async {
        let sent = attempt::run_answered(ctx, scope, sending, answer).await?;
        Box::pin(conclude(ctx, scope, sub, &storefront, Ok((Charged::Answered(sent), invoice.id)))).await
    })
    .await;
    concluded(ctx, job, r).await
}

/// Settles the captured renewals in one transaction ([`settle_batch`]): those it renews end
/// there; one whose capture it recorded but whose subscription changed meanwhile settles one by
/// one from the recorded payment (renewed, or refunded); one whose payment had moved already (a
/// webhook recorded the capture first), or all of them if that transaction fails, one by one
/// with the answer recorded alone first.
async fn settle_all(
    ctx: &Ctx,
    scope: &TenantScope,
    captured: Vec<(Item, Answer, PaymentRow)>,
) -> Vec<Result<Ran>> {
    if captured.is_empty() {
        return Vec::new();
    }
    let settled = match settle_batch(ctx, scope, &captured).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, renewals = captured.len(), "renewal batch not settled at once; settling one by one");
            Settled::default()
        }
    };
    // Catch-up: a period already over is enqueued at once (else the scheduler finds it).
    let now = ctx.clock.now();
    let due: Vec<_> = settled
        .renewed
        .iter()
        .filter(|s| s.period_end <= now && s.status == "active")
        .map(|s| (s.id.as_str(), 0, s.period_end))
        .collect();
    let (tenant, env) = (scope.tenant_id().to_string(), scope.environment().as_str());
    if let Err(e) = jobs::enqueue_many(&ctx.db, &tenant, env, &due, now).await {
        tracing::warn!(error = %e, "catch-up renewals not enqueued; the scheduler will find them");
    }
    let renewed: HashSet<&str> = settled.renewed.iter().map(|s| s.id.as_str()).collect();
    super::ENDED_IN_BATCH.fetch_add(renewed.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::with_capacity(captured.len());
    for (item, answer, payment) in captured {
        if renewed.contains(item.sub.id.as_str()) {
            out.push(Ok(Ran::Finished { job: item.job, renewed: true }));
            continue;
        }
        let recorded = settled.recorded.contains(&payment.id);
        let Item { job, sub, storefront, meta, invoice, sending } = item;
        let r = journal::with_meta(meta, async {
            let p = if recorded { payment } else { sending.redo(answer).record_alone(ctx, scope).await? };
            Box::pin(conclude(ctx, scope, sub, &storefront, Ok((Charged::Recorded(p), invoice.id)))).await
        })
        .await;
        out.push(concluded(ctx, job, r).await);
    }
    out
}

/// What the settling transaction wrote.
#[derive(Default)]
struct Settled {
    /// Payments whose capture it recorded.
    recorded: HashSet<String>,
    /// Subscriptions it renewed (their invoices paid).
    renewed: Vec<SubscriptionRow>,
}

/// The batch's second transaction: records the captures of the payments still `pending`, renews
/// the subscriptions of those still as the batch read them and pays their invoices, each renewal
/// journaled in its lineage as the one-by-one path's settling is (`payment.attempt_result`,
/// `payment.captured`, `subscription.renew`, `invoice.paid`, `subscription.renewed`), with one
/// statement per table. What it leaves (a payment moved by a webhook, a subscription changed
/// meanwhile) the caller settles one by one. An invoice no longer open fails the whole
/// transaction (nothing written).
async fn settle_batch(
    ctx: &Ctx,
    scope: &TenantScope,
    captured: &[(Item, Answer, PaymentRow)],
) -> Result<Settled> {
    let now = ctx.clock.now();
    let illegal = |e: life::IllegalTransition| ServiceError::Internal(e.to_string().into());
    // Each renewal's new row, checked to be what `renew_many` writes.
    let mut next = Vec::with_capacity(captured.len());
    for (item, ..) in captured {
        let after = life::apply(&state_of(&item.sub)?, &Event::RenewalSucceeded, now, period_of(&item.sub)?)
            .map_err(illegal)?;
        let mut sub = item.sub.clone();
        sub.dunning_attempts = 0;
        sub.next_retry_at = None;
        sub.grace_extended_until = None;
        apply_state(&mut sub, &after);
        sub.updated_at = now;
        // What `renew_many` writes: the next period, contiguous, nothing else changed.
        let mut expected = item.sub.clone();
        (expected.period_start, expected.period_end, expected.periods) =
            (item.sub.period_end, sub.period_end, item.sub.periods + 1);
        (expected.dunning_attempts, expected.next_retry_at, expected.grace_extended_until) = (0, None, None);
        expected.updated_at = now;
        if sub != expected {
            return Err(ServiceError::Internal("a batch renewal that is not the next period".into()));
        }
        next.push((sub, after));
    }
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let payments: Vec<PaymentRow> = captured.iter().map(|(.., p)| p.clone()).collect();
    let recorded: HashSet<String> =
        azotte_store::payments::captured_many(&mut tx, &payments, now).await?.into_iter().collect();
    if recorded.is_empty() {
        return Ok(Settled::default()); // nothing written: dropped
    }
    let renewals: Vec<store::Renewal> = captured
        .iter()
        .zip(&next)
        .filter(|((.., p), _)| recorded.contains(&p.id))
        .map(|((item, ..), (sub, _))| store::Renewal {
            id: sub.id.clone(),
            expected_updated_at: item.sub.updated_at,
            period_end: sub.period_end,
        })
        .collect();
    let renewed: HashSet<String> = store::renew_many(&mut tx, &renewals, now).await?.into_iter().collect();

    let invoice_ids: Vec<String> = captured
        .iter()
        .filter(|(item, ..)| renewed.contains(&item.sub.id))
        .map(|(item, ..)| item.invoice.id.clone())
        .collect();
    let paid_now = azotte_store::invoices::pay_many(&mut tx, &invoice_ids, now).await?;
    if paid_now != invoice_ids.len() as u64 {
        // Dropped: rolled back.
        return Err(ServiceError::Conflict {
            code: "renewal_batch_changed",
            message: format!("paid {paid_now} of {} invoices: one is no longer open", invoice_ids.len()),
            field: None,
        });
    }
    let mut paid = Vec::with_capacity(invoice_ids.len());
    let mut renewed_rows = Vec::with_capacity(renewed.len());
    for ((item, answer, payment), (sub, after)) in captured.iter().zip(next) {
        if !recorded.contains(&payment.id) {
            continue;
        }
        tx.begin_lineage(item.meta.clone());
        item.sending.record_captured(&mut tx, answer, payment).await?;
        if !renewed.contains(&item.sub.id) {
            continue;
        }
        let r = Some(("subscription", item.sub.id.as_str()));
        tx.action(now, "subscription.renew", r, renew_body(&item.sub, "settle")).await?;
        paid.push(crate::invoices::record_batch_paid(&mut tx, &item.invoice, payment, now).await?);
        tx.outcome(
            now,
            "subscription.renewed",
            r,
            json!({"payment_id": payment.id, "period_start": after.period_start, "period_end": after.period_end}),
        )
        .await?;
        renewed_rows.push(sub);
    }
    azotte_store::invoices::insert_payments(&mut tx, &paid).await?;
    tx.commit().await?;
    Ok(Settled { recorded, renewed: renewed_rows })
}
