//! Renewals and dunning (issue 9).
//!
//! Each tick, a scheduler looks at every tenant environment for subscriptions whose renewal is
//! due (active ones past `period_end`, past-due ones past `next_retry_at`) and enqueues one job
//! per subscription, period and dunning attempt in the platform-wide job table (a unique key:
//! however many schedulers run, a period is enqueued once). Workers claim jobs (several
//! processes may) and run each in its tenant's scope: charge the subscription's payment method
//! off session through routing, under a request key per subscription, period and attempt — a
//! rerun finds the same payment and never charges again — then advance the period (`active`
//! again after dunning: `subscription.recovered`), or enter / continue dunning per the
//! storefront's policy, or end it when retries are exhausted.
//!
//! Money movement paused (tenant safe mode) or the PSP down (every account's breaker open, or
//! every account failing softly) defers the renewal with the reason journaled; the customer
//! keeps access meanwhile (an overdue `active` subscription keeps full access) and the
//! renewal runs once the PSP is back. A missed stretch of periods (the scheduler was stopped)
//! is caught up period by period, each with its own key.

use azotte_domain::catalog::DunningPolicy;
use azotte_domain::permission::Permission;
use azotte_domain::subscription::{self as life, Event, SubscriptionStatus};
use azotte_domain::tenant::Environment;
use azotte_store::journal::{self, RequestMeta};
use azotte_store::payment_ops;
use azotte_store::psp_accounts as psp_store;
use azotte_store::renewal_jobs::{self as jobs, RenewalJob};
use azotte_store::subscriptions::{self as store, SubscriptionRow};
use azotte_store::{TenantScope, TenantTx};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

mod batch;

use super::checkout::apply_state;
use super::lifecycle::{period_of, state_of};
use crate::payments::attempt::Redo;
use crate::payments::{self, ChargeInput, Charged, Prepared};
use crate::{Ctx, Result, ServiceError};

/// How long a worker holds a claimed job.
const LOCK_FOR: Duration = Duration::minutes(5);
/// When a deferred renewal (safe mode, PSP down) is tried again.
const DEFER_FOR: Duration = Duration::minutes(15);
/// When a renewal whose payment is still pending at the PSP is looked at again.
const WAIT_FOR: Duration = Duration::minutes(2);

/// The job attempt a subscription's next charge is: 0 for the renewal itself, then one per
/// dunning retry.
fn job_attempt(s: &SubscriptionRow) -> i32 {
    if s.status == "past_due" {
        s.dunning_attempts + 1
    } else {
        0
    }
}

/// Enqueues the due renewals of one tenant environment; returns how many jobs were new.
pub async fn schedule(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let now = ctx.clock.now();
    let due = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let d = store::due_renewals(&mut tx, now, 1000).await?;
        tx.commit().await?;
        d
    };
    let (tenant, env) = (scope.tenant_id().to_string(), scope.environment().as_str());
    let offered: Vec<_> = due.iter().map(|s| (s.id.as_str(), job_attempt(s), s.period_end)).collect();
    Ok(jobs::enqueue_many(&ctx.db, &tenant, env, &offered, now).await? as usize)
}

/// How long one tick goes on renewing while renewals are due (the worker's other housekeeping
/// waits meanwhile).
const TICK_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// The worker's tick: a scheduler pass over every tenant environment, then worker passes until
/// no queued job is left to claim, and again while that renewed something, for up to
/// [`TICK_BUDGET`]. A backlog (a busy first of the month, a catch-up after downtime) is worked
/// off at the database's pace rather than a few hundred per tick, and the scheduler reads the
/// due subscriptions once per queue it fills, not once per worker pass.
pub async fn tick(ctx: &Ctx) -> Result<usize> {
    let started = std::time::Instant::now();
    let mut renewed = 0;
    loop {
        for scope in crate::payments::every_scope(ctx, "renewal_scheduler").await? {
            schedule(ctx, &scope).await?;
        }
        let mut ran = 0;
        loop {
            let n = run_jobs(ctx).await?;
            ran += n;
            if n == 0 || started.elapsed() >= TICK_BUDGET {
                break;
            }
        }
        renewed += ran;
        if ran == 0 || started.elapsed() >= TICK_BUDGET {
            return Ok(renewed);
        }
    }
}

/// Renewal jobs a worker claims at once: one renewal batch per tenant environment among them
/// ([`batch`]). Larger batches spread each statement's fixed cost over more renewals; the
/// journal writes a batch's entries of one transaction (five per renewal) in one statement of
/// at most 500 rows.
const CLAIM_AT_ONCE: u64 = 100;

/// Renewal jobs one process runs at once. A job waits mostly on the PSP and on its commits'
/// flushes, so several in flight keep the database busy; each is claimed by this process alone.
const JOBS_AT_ONCE: usize = 8;

/// Claims and runs due jobs until none is left (at most a few hundred per call), up to
/// [`JOBS_AT_ONCE`] at a time, each under its own correlation id. The jobs of a claimed batch
/// that ended are marked done together, in one transaction, once the batch has run.
pub async fn run_jobs(ctx: &Ctx) -> Result<usize> {
    let mut done = 0;
    let mut failure = None;
    for _ in 0..5 {
        let claimed = jobs::claim_due(&ctx.db, ctx.clock.now(), LOCK_FOR, CLAIM_AT_ONCE).await?;
        if claimed.is_empty() {
            break;
        }
        // The batch's tenant environments, each looked up once (most batches have one).
        let mut scopes = std::collections::HashMap::new();
        for job in &claimed {
            let key = (job.tenant_id.clone(), job.environment.clone());
            if let std::collections::hash_map::Entry::Vacant(v) = scopes.entry(key) {
                v.insert(job_scope(ctx, &job.tenant_id, &job.environment).await);
            }
        }
        let mut finished = Vec::new();
        let mut tally = |r: Result<Ran>| match r {
            Ok(Ran::Finished { job, renewed }) => {
                finished.push(job);
                done += usize::from(renewed);
            }
            Ok(Ran::Released) => {}
            Err(e) => failure = failure.take().or(Some(e)),
        };
        // Each tenant environment's jobs run as a batch first; what the batch leaves (anything
        // out of the ordinary) runs one by one.
        let mut groups: Vec<((String, String), Vec<RenewalJob>)> = Vec::new();
        for job in claimed {
            let key = (job.tenant_id.clone(), job.environment.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push(job),
                None => groups.push((key, vec![job])),
            }
        }
        let mut one_by_one = Vec::new();
        for (key, group) in groups {
            match scopes.get(&key) {
                Some(JobScope::Scope(scope)) => {
                    // Boxed: a batch's future is large, and the one-by-one path's sits inside it.
                    let (ran, rest) = Box::pin(batch::run(ctx, scope, group)).await;
                    ran.into_iter().for_each(&mut tally);
                    one_by_one.extend(rest);
                }
                _ => one_by_one.extend(group),
            }
        }
        let mut claimed = one_by_one.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < JOBS_AT_ONCE {
                let Some(job) = claimed.next() else { break };
                let ctx = ctx.clone();
                let scope = scopes.get(&(job.tenant_id.clone(), job.environment.clone())).cloned();
                let scope = scope.unwrap_or(JobScope::Invalid);
                running.spawn(journal::with_meta(RequestMeta::system(), async move {
                    run_one(&ctx, job, scope).await
                }));
            }
            // Every job started is awaited, even after a failure: none is cut off midway.
            match running.join_next().await {
                None => break,
                Some(Ok(r)) => tally(r),
                Some(Err(e)) => tally(Err(ServiceError::Internal(e.to_string().into()))),
            }
        }
        jobs::finish_many(&ctx.db, &finished, ctx.clock.now()).await?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
    }
    Ok(done)
}

/// How a claimed job's run ended.
enum Ran {
    /// Nothing is left to do: the job is to be marked done (`renewed` when this run renewed).
    Finished { job: RenewalJob, renewed: bool },
    /// Released to run again later (recorded already).
    Released,
}

/// The scope a batch's jobs of one tenant environment run in.
#[derive(Clone)]
enum JobScope {
    Scope(TenantScope),
    /// The job names no valid tenant environment: nothing to do.
    Invalid,
    /// The tenant cannot be entered now (suspended, gone, the database): why.
    Unavailable(String),
}

/// Looks up the system scope renewal jobs of a tenant environment run in.
async fn job_scope(ctx: &Ctx, tenant: &str, environment: &str) -> JobScope {
    let (Ok(tenant), Ok(env)) = (tenant.parse(), environment.parse::<Environment>()) else {
        return JobScope::Invalid;
    };
    match azotte_store::auth::system_scope(&ctx.db, tenant, env, "renewal").await {
        Ok(s) => JobScope::Scope(s),
        Err(e) => JobScope::Unavailable(e.to_string()),
    }
}

/// Runs one claimed job in its tenant environment's scope (looked up for its batch); a job
/// that is to run again is released here, one that ended is left for its batch to mark done.
async fn run_one(ctx: &Ctx, job: RenewalJob, scope: JobScope) -> Result<Ran> {
    let scope = match scope {
        JobScope::Scope(s) => s,
        JobScope::Invalid => return Ok(Ran::Finished { job, renewed: false }),
        JobScope::Unavailable(e) => {
            tracing::warn!(job = %job.id, error = %e, "renewal job's tenant unavailable");
            jobs::later(&ctx.db, &job, ctx.clock.now() + DEFER_FOR, ctx.clock.now(), false).await?;
            return Ok(Ran::Released);
        }
    };
    let r = renew(ctx, &scope, &job).await;
    concluded(ctx, job, r).await
}

/// Renewal jobs this process ran to their end: settled in a batch's settling transaction, and
/// one by one (also those a batch handed over after charging). Exported in `/metrics`.
static ENDED_IN_BATCH: AtomicU64 = AtomicU64::new(0);
static ENDED_ONE_BY_ONE: AtomicU64 = AtomicU64::new(0);

/// Renewal jobs this process ran to their end: (in a batch, one by one).
pub fn jobs_ended() -> (u64, u64) {
    (ENDED_IN_BATCH.load(Ordering::Relaxed), ENDED_ONE_BY_ONE.load(Ordering::Relaxed))
}

/// What a job's run that ended in `r` leaves: done, or released to run again later.
async fn concluded(ctx: &Ctx, job: RenewalJob, r: Result<End>) -> Result<Ran> {
    match r {
        Ok(End::Done) => {
            ENDED_ONE_BY_ONE.fetch_add(1, Ordering::Relaxed);
            Ok(Ran::Finished { job, renewed: true })
        }
        Ok(End::Later { after, new_key }) => {
            jobs::later(&ctx.db, &job, ctx.clock.now() + after, ctx.clock.now(), new_key).await?;
            Ok(Ran::Released)
        }
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "renewal failed; will retry");
            jobs::later(&ctx.db, &job, ctx.clock.now() + WAIT_FOR, ctx.clock.now(), false).await?;
            Ok(Ran::Released)
        }
    }
}

/// How a job run ended.
enum End {
    Done,
    /// Run again after this long; `new_key` when the last payment was refused before any
    /// charge (the next run may send a new request).
    Later {
        after: Duration,
        new_key: bool,
    },
}

fn policy_of(storefront: &azotte_store::catalog::Storefront) -> DunningPolicy {
    storefront.dunning.clone()
}

async fn defer(
    ctx: &Ctx,
    scope: &TenantScope,
    sub: &SubscriptionRow,
    reason: &str,
    new_key: bool,
) -> Result<End> {
    let now = ctx.clock.now();
    let r = Some(("subscription", sub.id.as_str()));
    let mut tx = renew_tx(ctx, scope, sub, "defer", now).await?;
    // The scheduler leaves the subscription alone until the retry (`next_retry_at`): renewals
    // deferred again and again (one storefront's PSP down for hours) must not fill the front of
    // the due range and hide the tenant environment's other due renewals.
    let mut row = sub.clone();
    row.next_retry_at = Some(row.next_retry_at.map_or(now + DEFER_FOR, |r| r.max(now + DEFER_FOR)));
    // A past-due customer keeps access while the retry waits, even past the policy's grace: the
    // extension outlasts the next deferral, which extends it again; the renewal clears it.
    let mut extended = None;
    if sub.status == "past_due" {
        let until = now + DEFER_FOR * 2;
        if sub.grace_extended_until.is_none_or(|e| e < until) {
            row.grace_extended_until = Some(until);
            extended = Some(until);
        }
    }
    row.updated_at = now;
    // Changed meanwhile: the next deferral (in DEFER_FOR) extends it.
    if !store::update_subscription(&mut tx, &row, sub.updated_at).await? {
        extended = None;
    }
    tx.decision(
        now,
        "renewal.deferred",
        r,
        json!({"reason": reason, "retry_at": now + DEFER_FOR, "access": "kept",
               "grace_extended_until": extended.or(sub.grace_extended_until)}),
    )
    .await?;
    if let Some(until) = extended {
        tx.outcome(
            now,
            "subscription.grace_extended",
            r,
            json!({"grace_extended_until": until, "reason": reason}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(End::Later { after: DEFER_FOR, new_key })
}

async fn renew(ctx: &Ctx, scope: &TenantScope, job: &RenewalJob) -> Result<End> {
    let now = ctx.clock.now();
    // The renewal may charge: checked before its transaction (a denial is journaled in one of
    // its own).
    crate::security::require(ctx, scope, Permission::PaymentCreate).await?;
    // One transaction reads the subscription and writes the period's invoice and the payment;
    // it commits before the PSP is called. Paths that write nothing drop it (rolled back).
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let Some(sub) = store::get_subscription(&mut tx, &job.subscription_id).await? else {
        return Ok(End::Done);
    };
    let storefront = azotte_store::catalog::get_storefront(&mut tx, &sub.storefront_id).await?;
    let accounts = psp_store::of_storefront(&mut tx, &sub.storefront_id).await?;
    let safe_mode = payment_ops::safe_mode(&mut tx).await?;
    // A plan change scheduled for the period end: the next period costs the new price.
    let amount = super::replace::renewal_amount(&mut tx, &sub).await?;
    // A stale job (the period moved on, or another run settled it) has nothing left to do.
    let due_status = matches!(sub.status.as_str(), "active" | "past_due");
    if !due_status || sub.period_end != job.period_end || job_attempt(&sub) != job.attempt {
        drop(tx);
        return stale(ctx, scope, &sub, job).await;
    }
    let Some(storefront) = storefront else { return Ok(End::Done) };
    if safe_mode.is_some() {
        drop(tx);
        return defer(ctx, scope, &sub, "safe_mode", false).await;
    }
    let usable = accounts.iter().filter(|a| a.status == "active").collect::<Vec<_>>();
    if !usable.is_empty() && usable.iter().all(|a| !ctx.psp.breakers.routable(&a.id, now)) {
        drop(tx);
        return defer(ctx, scope, &sub, "psp_degraded", false).await;
    }
    // The period's invoice first (open until paid) and the payment that charges what it bills
    // (a dunning retry: what it still bills), in one transaction; the PSP is called once that
    // has committed, and its answer is recorded in the transaction that settles the renewal.
    let key = charge_key(&sub.id, job);
    let invoice = period_invoice(ctx, &mut tx, &sub, amount).await?;
    let (invoice_id, billed) = (invoice.id.clone(), invoice.due);
    let charged: ChargeResult = match &sub.payment_method_id {
        None => {
            invoice.issue(ctx, &mut tx).await?;
            tx.commit().await?;
            Err(("no_payment_method", invoice_id))
        }
        Some(pm) => {
            let mut input = renewal_charge(&sub, job, pm, billed, &invoice_id);
            let mut prepared = payments::prepare(ctx, scope, &mut tx, &input).await;
            // This run's charge was made with another method than the subscription's now (a
            // new card given during dunning while the retry's answer was pending or lost):
            // that charge stands while it may have gone through, and is settled as it ends;
            // one that failed makes way for a new run, which charges the new method.
            let key_reused = matches!(&prepared, Err(ServiceError::Validation(v))
                if v.0.iter().any(|f| f.code == "idempotency_key_reused"));
            if key_reused {
                if let Some(earlier) = azotte_store::payments::by_request_key(&mut tx, &key).await? {
                    if matches!(earlier.status.as_str(), "failed" | "canceled") {
                        return Ok(End::Later { after: Duration::zero(), new_key: true });
                    }
                    input.payment_method_id = earlier.payment_method_id;
                    prepared = payments::prepare(ctx, scope, &mut tx, &input).await;
                }
            }
            match prepared {
                Ok(Prepared::Ended(p)) => {
                    invoice.issue(ctx, &mut tx).await?;
                    tx.commit().await?;
                    Ok((Charged::Recorded(p), invoice_id))
                }
                Ok(Prepared::Send(sending)) => {
                    invoice.issue(ctx, &mut tx).await?;
                    tx.commit().await?;
                    Ok((Charged::Answered(payments::attempt::run(ctx, scope, sending).await?), invoice_id))
                }
                // Another run of this job charged at the same moment: look again later.
                Ok(Prepared::Raced) => return Ok(End::Later { after: WAIT_FOR, new_key: false }),
                Ok(Prepared::Unopened(unopened)) => {
                    drop(tx);
                    return Err(unopened.record(ctx, scope).await);
                }
                // The method cannot be charged: nothing was sent. The invoice is kept, in a
                // transaction of its own (this one may hold the refused payment's writes).
                Err(ServiceError::NotFound { .. } | ServiceError::Conflict { .. }) => {
                    drop((tx, invoice));
                    let mut tx = ctx.db.tenant_tx(scope).await?;
                    let invoice = period_invoice(ctx, &mut tx, &sub, amount).await?;
                    let invoice_id = invoice.id.clone();
                    invoice.issue(ctx, &mut tx).await?;
                    tx.commit().await?;
                    Err(("payment_method_not_usable", invoice_id))
                }
                Err(e) => return Err(e),
            }
        }
    };
    conclude(ctx, scope, sub, &storefront, charged).await
}

/// What a renewal's charge came to, with the period's invoice: the charge as far as it got, or
/// why nothing could be charged.
type ChargeResult = std::result::Result<(Charged, String), (&'static str, String)>;

/// A renewal after its charge: deferred (nothing charged, not because of the card), looked at
/// later (no final answer yet), or settled — renewed, or dunning entered, continued or ended.
async fn conclude(
    ctx: &Ctx,
    scope: &TenantScope,
    sub: SubscriptionRow,
    storefront: &azotte_store::catalog::Storefront,
    charged: ChargeResult,
) -> Result<End> {
    let (outcome, invoice_id, mut open) = match charged {
        Ok((charged, invoice_id)) => {
            let p = charged.payment();
            // Nothing was charged, and not because of the card: the PSP is down, no account
            // could take it, or the PSP never received the request.
            if payments::failed_on_our_side(p) {
                charged.commit().await?;
                return defer(ctx, scope, &sub, "psp_unavailable", true).await;
            }
            // Pending, unknown, requires_action (off session it should not), queued: look later.
            if !matches!(p.status.as_str(), "captured" | "failed") {
                charged.commit().await?;
                return Ok(End::Later { after: WAIT_FOR, new_key: false });
            }
            let (p, open) = charged.into_parts();
            let outcome = match p.status.as_str() {
                "captured" => Ok(p.id),
                _ => Err(p.decline_code.unwrap_or_else(|| "declined".into())),
            };
            (outcome, invoice_id, open)
        }
        Err((code, invoice_id)) => (Err(code.to_owned()), invoice_id, None),
    };
    let policy = policy_of(storefront);
    let (job_period, mut sub) = (sub.period_end, sub);
    // The subscription may change between the charge and the settling transaction (a new
    // payment method, a support action): settle against what is stored then, a few times.
    for _ in 0..5 {
        let settled =
            settle(ctx, scope, sub.clone(), &policy, &invoice_id, outcome.clone(), open.take()).await?;
        if let Some(end) = settled {
            return Ok(end);
        }
        let fresh = {
            let mut tx = ctx.db.tenant_read_tx(scope).await?;
            let f = store::get_subscription(&mut tx, &sub.id).await?;
            tx.commit().await?;
            f
        };
        match fresh {
            Some(f) if f.period_end == job_period && matches!(f.status.as_str(), "active" | "past_due") => {
                sub = f
            }
            // Settled by another run (with this same payment: one per request key), or changed
            // while the PSP was charging it — cancelled, paused, its period deferred — so that
            // this charge will not pay for the period it was taken for: the money goes back.
            Some(f) => {
                if let Ok(payment_id) = &outcome {
                    let settled = {
                        let mut tx = ctx.db.tenant_read_tx(scope).await?;
                        let i =
                            azotte_store::invoices::invoice_payments(&mut tx, None, Some(payment_id)).await?;
                        tx.commit().await?;
                        !i.is_empty()
                    };
                    if !settled {
                        refund_unused(ctx, scope, &f, payment_id, Some(&invoice_id)).await?;
                    }
                }
                return Ok(End::Done);
            }
            None => return Ok(End::Done),
        }
    }
    Ok(End::Later { after: WAIT_FOR, new_key: false })
}

/// The invoice of the period a renewal charges for: written before the first charge of the
/// period, in the caller's transaction (with the charge's payment), and found again by every
/// later attempt (dunning retries, reruns) by its subscription line's period start. The
/// renewal's end pays it, makes it uncollectible (dunning exhausted) or voids it (the
/// subscription changed meanwhile).
struct PeriodInvoice {
    id: String,
    /// What it still bills.
    due: i64,
    /// A new invoice, written as a draft: [`PeriodInvoice::issue`] numbers it (open) as the
    /// transaction's last write (the series row stays locked from the number to the commit).
    draft: Option<crate::invoices::Draft>,
}

impl PeriodInvoice {
    /// Issues a new invoice (the transaction's last write); nothing for one found again.
    async fn issue(self, ctx: &Ctx, tx: &mut TenantTx) -> Result<()> {
        if let Some(draft) = self.draft {
            draft.issue(tx, ctx.numbering, ctx.clock.now()).await?;
        }
        Ok(())
    }
}

async fn period_invoice(
    ctx: &Ctx,
    tx: &mut TenantTx,
    sub: &SubscriptionRow,
    amount: i64,
) -> Result<PeriodInvoice> {
    let now = ctx.clock.now();
    if let Some((id, due)) = unpaid_period_invoice(tx, &sub.id, sub.period_end).await? {
        return Ok(PeriodInvoice { id, due, draft: None });
    }
    let illegal = |e: life::IllegalTransition| ServiceError::Internal(e.to_string().into());
    let next =
        life::apply(&state_of(sub)?, &Event::RenewalSucceeded, now, period_of(sub)?).map_err(illegal)?;
    // This transaction read the invoices first; its action is recorded now that it writes.
    tx.action(now, "subscription.renew", Some(("subscription", sub.id.as_str())), renew_body(sub, "invoice"))
        .await?;
    let description = invoice_description(sub, next.period_start);
    let period = (next.period_start, next.period_end);
    let draft =
        crate::invoices::draft_for_subscription_charge(tx, sub, &description, amount, period, now).await?;
    Ok(PeriodInvoice { id: draft.id().to_owned(), due: draft.total(), draft: Some(draft) })
}

/// The unpaid invoice (its id and what it still bills) of a subscription's period starting at
/// `period_start`, if one was written. A draft waits for its number (decision 0008): it is the
/// period's invoice all the same.
async fn unpaid_period_invoice(
    tx: &mut TenantTx,
    subscription_id: &str,
    period_start: DateTime<Utc>,
) -> Result<Option<(String, i64)>> {
    let filter = azotte_store::invoices::InvoiceFilter {
        subscription_id: Some(subscription_id),
        any_status: &["open", "uncollectible", "draft"],
        ..Default::default()
    };
    let (unpaid, _) = azotte_store::invoices::list(tx, &filter, 100, None).await?;
    for inv in unpaid {
        let lines = azotte_store::invoices::lines_of(tx, &inv.id).await?;
        if lines.iter().any(|l| l.kind == "subscription" && l.period_start == Some(period_start)) {
            return Ok(Some((inv.id, inv.total - inv.amount_paid)));
        }
    }
    Ok(None)
}

/// The off-session charge of a renewal job: `amount` (what the period's invoice bills) with
/// `payment_method_id`, under the job's request key.
fn renewal_charge(
    sub: &SubscriptionRow,
    job: &RenewalJob,
    payment_method_id: &str,
    amount: i64,
    invoice_id: &str,
) -> ChargeInput {
    ChargeInput {
        customer_id: sub.customer_id.clone(),
        payment_method_id: payment_method_id.to_owned(),
        amount,
        currency: sub.currency.clone(),
        description: format!(
            "subscription {} renewal, period ending {}, invoice {invoice_id}",
            sub.id, sub.period_end
        ),
        psp_account_id: None,
        off_session: true,
        request_key: Some(charge_key(&sub.id, job)),
    }
}

/// The line description of a renewal's invoice for the period starting at `period_start`.
fn invoice_description(sub: &SubscriptionRow, period_start: DateTime<Utc>) -> String {
    format!("subscription {}, period from {}", sub.id, period_start.date_naive())
}

/// Where the request keys of a subscription's later charges start: a renewal's
/// ([`charge_key`]) and a trial conversion's (`lifecycle::conversion_key`).
pub(crate) const KEY_PREFIX: &str = "renewal-";

/// What only a regular renewal's request key holds (subscription ids hold no `-`): the
/// dunning attempt's mark.
pub(crate) const ATTEMPT_MARK: &str = "-a";

/// The request key of a job's charge: one per subscription, period, dunning attempt and run
/// (a run starts a new key only when the last one was refused before anything was charged).
fn charge_key(subscription_id: &str, job: &RenewalJob) -> String {
    format!(
        "{KEY_PREFIX}{}-{}{ATTEMPT_MARK}{}-r{}",
        subscription_id,
        job.period_end.timestamp(),
        job.attempt,
        job.runs
    )
}

/// A job whose subscription moved on — settled by another run, cancelled, paused, its period
/// deferred or extended — has nothing left to charge. But a charge this job did take, and that
/// paid no invoice, is the customer's money for nothing: answered late (a lost answer
/// reconciled as captured after the run that sent it left), or taken by a run that stopped
/// before settling. It is refunded in full and the period's unpaid invoice voided; a charge not
/// ended yet (pending, unknown) is looked at again later.
async fn stale(ctx: &Ctx, scope: &TenantScope, sub: &SubscriptionRow, job: &RenewalJob) -> Result<End> {
    let (payment, settled, invoice) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let p = azotte_store::payments::by_request_key(&mut tx, &charge_key(&sub.id, job)).await?;
        let (mut settled, mut invoice) = (false, None);
        if let Some(p) = &p {
            settled = !azotte_store::invoices::invoice_payments(&mut tx, None, Some(&p.id)).await?.is_empty();
            if !settled {
                invoice = unpaid_period_invoice(&mut tx, &sub.id, job.period_end).await?.map(|(id, _)| id);
            }
        }
        tx.commit().await?;
        (p, settled, invoice)
    };
    let Some(p) = payment else { return Ok(End::Done) };
    match p.status.as_str() {
        "captured" if !settled => {
            refund_unused(ctx, scope, sub, &p.id, invoice.as_deref()).await?;
            Ok(End::Done)
        }
        "pending" | "unknown" | "authorized" | "requires_action" => {
            Ok(End::Later { after: WAIT_FOR, new_key: false })
        }
        _ => Ok(End::Done),
    }
}

/// The body of a renewal's `subscription.renew` action: which period, attempt and step.
fn renew_body(sub: &SubscriptionRow, step: &str) -> serde_json::Value {
    json!({"period_end": sub.period_end, "attempt": sub.dunning_attempts, "step": step})
}

/// When dunning retry `attempt` (0: the first after the renewal failed) runs: the policy's offsets
/// count days from the period's end, and each retry follows the attempt before it by their gap
/// (1, 3, 7 → a day, two more, four more). An attempt that ran late — the worker was down, the
/// renewal deferred — moves the rest along from when it did run, so retries never bunch up and
/// use up dunning within minutes after an outage.
fn retry_after(
    offsets: &[u32],
    attempt: usize,
    sub: &SubscriptionRow,
    status: SubscriptionStatus,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let previous = if attempt == 0 { 0 } else { offsets.get(attempt - 1).copied().unwrap_or(0) };
    let gap = offsets.get(attempt).copied().unwrap_or(1).saturating_sub(previous).max(1);
    // When the attempt that just failed was due: the period's end, or its own retry time.
    let scheduled = match status {
        SubscriptionStatus::PastDue => sub.next_retry_at.unwrap_or(sub.period_end),
        _ => sub.period_end,
    };
    let base = if now - scheduled > Duration::hours(1) { now } else { scheduled };
    (base + Duration::days(i64::from(gap))).max(now)
}

/// A write transaction of a renewal step, its `subscription.renew` action recorded.
async fn renew_tx(
    ctx: &Ctx,
    scope: &TenantScope,
    sub: &SubscriptionRow,
    step: &str,
    now: DateTime<Utc>,
) -> Result<azotte_store::TenantTx> {
    let mut tx = ctx.db.tenant_tx(scope).await?;
    tx.action(now, "subscription.renew", Some(("subscription", sub.id.as_str())), renew_body(sub, step))
        .await?;
    Ok(tx)
}

/// Refunds in full a renewal charge whose subscription changed (ended, paused, deferred) before
/// the renewal settled, voids the period's invoice, and records why on the subscription.
async fn refund_unused(
    ctx: &Ctx,
    scope: &TenantScope,
    sub: &SubscriptionRow,
    payment_id: &str,
    invoice_id: Option<&str>,
) -> Result<()> {
    let reason = "subscription changed before its renewal settled";
    // Nothing left (another run refunded it, and recorded why), or the charge pays the period
    // after all (its settling committed after this looked).
    let Some(refund) = payments::refund_rest(ctx, scope, payment_id, reason).await? else { return Ok(()) };
    let now = ctx.clock.now();
    let r = Some(("subscription", sub.id.as_str()));
    let mut tx = renew_tx(ctx, scope, sub, "refund", now).await?;
    tx.outcome(
        now,
        "subscription.renewal_refunded",
        r,
        json!({"payment_id": payment_id, "refund_id": refund.id, "status": sub.status,
               "invoice_id": invoice_id, "reason": "subscription_changed_during_renewal"}),
    )
    .await?;
    if let Some(invoice_id) = invoice_id {
        crate::invoices::void(&mut tx, invoice_id, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Applies a renewal's result to the subscription in one transaction: `open`'s, when given (the
/// charge's answer is recorded in it), else one of its own. `None` when the subscription changed
/// meanwhile: the caller settles again against the new row. Whenever that transaction does not
/// commit, the charge's answer it held is recorded alone first.
async fn settle(
    ctx: &Ctx,
    scope: &TenantScope,
    mut sub: SubscriptionRow,
    policy: &DunningPolicy,
    invoice_id: &str,
    outcome: std::result::Result<String, String>,
    open: Option<(TenantTx, Redo)>,
) -> Result<Option<End>> {
    let now = ctx.clock.now();
    let (mut tx, redo) = match open {
        Some((tx, redo)) => (tx, Some(redo)),
        None => (ctx.db.tenant_tx(scope).await?, None),
    };
    // Committed when it ends in `Some`.
    let settled: Result<Option<End>> = async {
        let r_id = sub.id.clone();
        let r = Some(("subscription", r_id.as_str()));
        tx.action(now, "subscription.renew", r, renew_body(&sub, "settle")).await?;
        let period = period_of(&sub)?;
        let before = state_of(&sub)?;
        let expected = sub.updated_at;
        let illegal = |e: life::IllegalTransition| ServiceError::Internal(e.to_string().into());
        let (after, kind, body) = match &outcome {
            Ok(payment_id) => {
                let after = life::apply(&before, &Event::RenewalSucceeded, now, period).map_err(illegal)?;
                let kind = if before.status == SubscriptionStatus::PastDue {
                    "subscription.recovered"
                } else {
                    "subscription.renewed"
                };
                sub.dunning_attempts = 0;
                sub.next_retry_at = None;
                sub.grace_extended_until = None;
                super::replace::apply_scheduled(&mut tx, &mut sub, payment_id, now).await?;
                let body = json!({"payment_id": payment_id, "period_start": after.period_start, "period_end": after.period_end});
                (after, kind, body)
            }
            Err(code) => {
                let offsets = &policy.retry_offsets_days;
                let attempt =
                    if before.status == SubscriptionStatus::PastDue { sub.dunning_attempts + 1 } else { 0 };
                // Retries used up — or none at all in the policy: collection ends at the first
                // failure (past due for an instant, then the policy's end).
                if attempt as usize >= offsets.len() {
                    let past_due = life::apply(&before, &Event::RenewalFailed, now, period).map_err(illegal)?;
                    let after = life::apply(&past_due, &Event::DunningExhausted(policy.end_action), now, period)
                        .map_err(illegal)?;
                    sub.next_retry_at = None;
                    sub.dunning_attempts = attempt;
                    tx.decision(
                        now,
                        "dunning.exhausted",
                        r,
                        json!({"attempts": attempt, "end_action": policy.end_action, "decline_code": code,
                               "invoice_id": invoice_id}),
                    )
                    .await?;
                    let body = json!({"status": after.status});
                    (after, "subscription.dunning_ended", body)
                } else {
                    let after = life::apply(&before, &Event::RenewalFailed, now, period).map_err(illegal)?;
                    let retry_at = retry_after(offsets, attempt as usize, &sub, before.status, now);
                    sub.dunning_attempts = attempt;
                    sub.next_retry_at = Some(retry_at);
                    tx.decision(
                        now,
                        "dunning.retry_scheduled",
                        r,
                        json!({"attempt": attempt + 1, "retry_at": sub.next_retry_at, "decline_code": code,
                               "invoice_id": invoice_id,
                               "grace_until": sub.period_end + Duration::days(i64::from(policy.grace_days)),
                               "access_during_grace": policy.access_during_grace}),
                    )
                    .await?;
                    let body = json!({"decline_code": code, "status": after.status});
                    (after, "subscription.renewal_failed", body)
                }
            }
        };
        apply_state(&mut sub, &after);
        sub.updated_at = now;
        if !store::update_subscription(&mut tx, &sub, expected).await? {
            return Ok(None); // changed meanwhile: the caller settles again against the new row
        }
        match &outcome {
            // The renewed period's invoice, paid by this charge, in the same transaction.
            Ok(payment_id) => {
                crate::invoices::mark_paid(&mut tx, invoice_id, payment_id, now).await?;
            }
            // Collection given up: the invoice stays on record as uncollectible (a later payment
            // may still settle it).
            Err(_) if after.status != SubscriptionStatus::PastDue => {
                crate::invoices::mark_uncollectible(&mut tx, invoice_id, now).await?;
            }
            Err(_) => {}
        }
        tx.outcome(now, kind, r, body).await?;
        tx.commit().await?;
        Ok(Some(End::Done))
    }
    .await;
    if !matches!(settled, Ok(Some(_))) {
        if let Some(redo) = redo {
            redo.record_alone(ctx, scope).await?;
        }
        return settled;
    }
    // Catch-up: a period already over is enqueued at once.
    if outcome.is_ok() && sub.period_end <= now && sub.status == "active" {
        let (tenant, env) = (scope.tenant_id().to_string(), scope.environment().as_str());
        jobs::enqueue(&ctx.db, &tenant, env, &sub.id, 0, sub.period_end, now).await?;
    }
    settled
}

/// A customer updated their payment method: their past-due subscriptions of that storefront
/// switch to it and retry now.
pub async fn retry_with_new_method(
    ctx: &Ctx,
    scope: &TenantScope,
    customer_id: &str,
    storefront_id: &str,
    payment_method_id: &str,
) -> Result<usize> {
    let now = ctx.clock.now();
    let filter = store::SubscriptionFilter {
        customer_id: Some(customer_id),
        status: Some("past_due"),
        storefront_id: Some(storefront_id),
        ..Default::default()
    };
    let subs = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let (s, _) = store::list_subscriptions(&mut tx, &filter, 100, None).await?;
        tx.commit().await?;
        s
    };
    let mut n = 0;
    for mut sub in subs {
        let expected = sub.updated_at;
        sub.payment_method_id = Some(payment_method_id.to_owned());
        sub.next_retry_at = Some(now);
        sub.updated_at = now;
        let mut tx = ctx.db.tenant_tx(scope).await?;
        let r = Some(("subscription", sub.id.as_str()));
        tx.action(
            now,
            "subscription.payment_method_update",
            r,
            json!({"payment_method_id": payment_method_id}),
        )
        .await?;
        if !store::update_subscription(&mut tx, &sub, expected).await? {
            continue;
        }
        tx.decision(
            now,
            "dunning.retry_scheduled",
            r,
            json!({"retry_at": now, "reason": "payment_method_updated"}),
        )
        .await?;
        tx.outcome(
            now,
            "subscription.payment_method_updated",
            r,
            json!({"payment_method_id": payment_method_id}),
        )
        .await?;
        tx.commit().await?;
        n += 1;
    }
    if n > 0 {
        schedule(ctx, scope).await?;
        run_jobs(ctx).await?;
    }
    Ok(n)
}

/// When a grace period ends (for reads that explain access), extensions included.
pub fn grace_until(sub: &SubscriptionRow, policy: &DunningPolicy) -> DateTime<Utc> {
    let by_policy = sub.period_end + Duration::days(i64::from(policy.grace_days));
    sub.grace_extended_until.map_or(by_policy, |e| e.max(by_policy))
}
