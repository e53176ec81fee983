//! Operations on a subscription, each one domain transition ([`azotte_domain::subscription`])
//! applied under optimistic concurrency and journaled as action → outcome; and the jobs that
//! move subscriptions when a date comes (trial end, end of a canceled period).

use azotte_domain::catalog::{BillingPeriod, PeriodUnit};
use azotte_domain::permission::Permission;
use azotte_domain::subscription::{self as life, CancelMethod, Event, SubscriptionStatus};
use azotte_store::subscriptions::{self as store, SubscriptionFilter, SubscriptionRow};
use azotte_store::TenantScope;
use serde_json::json;

use super::checkout::apply_state;
use crate::payments::{self, ChargeInput};
use crate::{Ctx, Result, ServiceError};

/// The reasons a customer may give for cancelling (stable codes).
pub const CANCEL_REASONS: &[&str] =
    &["too_expensive", "not_using", "missing_features", "technical_issues", "switching_service", "other"];

/// The subscription's billing period.
pub fn period_of(row: &SubscriptionRow) -> Result<BillingPeriod> {
    let unit: PeriodUnit = row
        .period_unit
        .parse()
        .map_err(|_| ServiceError::Internal(format!("subscription {} period unit", row.id).into()))?;
    Ok(BillingPeriod { unit, count: row.period_count as u32 })
}

/// The lifecycle state of a stored subscription.
pub fn state_of(row: &SubscriptionRow) -> Result<life::State> {
    let status: SubscriptionStatus = row.status.parse().map_err(|_| {
        ServiceError::Internal(format!("subscription {} has status {:?}", row.id, row.status).into())
    })?;
    Ok(life::State {
        status,
        period_start: row.period_start,
        period_end: row.period_end,
        anchor: row.anchor,
        periods: row.periods as u32,
        trial_end: row.trial_end,
        ends_at: row.ends_at,
        canceled_immediately: row.canceled_immediately,
        paused_at: row.paused_at,
    })
}

/// A subscription the caller may see (its storefront allowed), else `404`.
pub(crate) async fn load(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<SubscriptionRow> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let row = store::get_subscription(&mut tx, id)
        .await?
        .filter(|s| scope.storefront_allowed(&s.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "subscription" })?;
    tx.commit().await?;
    Ok(row)
}

/// One subscription (permission `subscription.read`).
pub async fn get(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<SubscriptionRow> {
    crate::security::require(ctx, scope, Permission::SubscriptionRead).await?;
    load(ctx, scope, id).await
}

/// Subscriptions a page at a time (permission `subscription.read`).
pub async fn list(
    ctx: &Ctx,
    scope: &TenantScope,
    filter: SubscriptionFilter<'_>,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<SubscriptionRow>, bool)> {
    crate::security::require(ctx, scope, Permission::SubscriptionRead).await?;
    let filter = SubscriptionFilter { storefronts: scope.storefront_restriction(), ..filter };
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let page = store::list_subscriptions(&mut tx, &filter, limit, starting_after).await?;
    tx.commit().await?;
    Ok(page)
}

/// Applies `event` to the stored subscription as it is now; an illegal transition is a `409`
/// with the domain's reason as code. `extra` goes into the journal and may set fields.
async fn transition(
    ctx: &Ctx,
    scope: &TenantScope,
    row: SubscriptionRow,
    event: Event,
    action: &str,
    body: serde_json::Value,
    edit: impl FnOnce(&mut SubscriptionRow),
) -> Result<SubscriptionRow> {
    transition_paid(ctx, scope, row, event, action, body, edit, None).await
}

/// [`transition`], and when `paid_by` names the payment that paid the new period, its invoice
/// (issued and marked paid in the same transaction).
#[allow(clippy::too_many_arguments)]
async fn transition_paid(
    ctx: &Ctx,
    scope: &TenantScope,
    mut row: SubscriptionRow,
    event: Event,
    action: &str,
    body: serde_json::Value,
    edit: impl FnOnce(&mut SubscriptionRow),
    paid_by: Option<&str>,
) -> Result<SubscriptionRow> {
    let now = ctx.clock.now();
    let before = state_of(&row)?;
    let after = life::apply(&before, &event, now, period_of(&row)?).map_err(|e| ServiceError::Conflict {
        code: e.reason,
        message: e.to_string(),
        field: None,
    })?;
    let expected = row.updated_at;
    apply_state(&mut row, &after);
    edit(&mut row);
    row.updated_at = now;
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let r = Some(("subscription", row.id.as_str()));
    tx.action(now, action, r, body).await?;
    if !store::update_subscription(&mut tx, &row, expected).await? {
        return Err(ServiceError::Conflict {
            code: "subscription_changed",
            message: "the subscription changed meanwhile; read it again".into(),
            field: None,
        });
    }
    if let Some(payment_id) = paid_by {
        let description = format!("subscription {}, period from {}", row.id, row.period_start.date_naive());
        let period = (row.period_start, row.period_end);
        crate::invoices::for_subscription_charge(
            &mut tx,
            ctx.numbering,
            &row,
            &description,
            row.amount,
            period,
            Some(payment_id),
            now,
        )
        .await?;
    }
    let outcome = if before.status == after.status {
        format!("subscription.{}", event.name())
    } else {
        format!("subscription.{}", after.status)
    };
    tx.outcome(
        now,
        &outcome,
        r,
        json!({"from": before.status, "to": after.status, "event": event.name(),
               "period_end": row.period_end, "ends_at": row.ends_at, "trial_end": row.trial_end}),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// What a cancellation may look like for this subscription.
#[derive(Debug, Clone)]
pub struct CancelOptions {
    pub methods: Vec<CancelMethod>,
    pub reason_codes: &'static [&'static str],
    /// A campaign's retention offer, when one applies (campaigns arrive later: none yet).
    pub retention_offer: Option<serde_json::Value>,
    /// Access lasts until then when cancelled at the end of the period.
    pub ends_at_end_of_period: chrono::DateTime<chrono::Utc>,
}

/// Step one of cancelling (permission `subscription.cancel`): the allowed methods and reason
/// codes. Journaled as a decision; nothing changes.
pub async fn cancel_request(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<CancelOptions> {
    crate::security::require(ctx, scope, Permission::SubscriptionCancel).await?;
    let row = load(ctx, scope, id).await?;
    let state = state_of(&row)?;
    let now = ctx.clock.now();
    let period = period_of(&row)?;
    let methods: Vec<CancelMethod> = [CancelMethod::EndOfPeriod, CancelMethod::Immediate]
        .into_iter()
        .filter(|m| life::apply(&state, &Event::Cancel(*m), now, period).is_ok())
        .collect();
    if methods.is_empty() {
        return Err(ServiceError::Conflict {
            code: "not_cancelable",
            message: format!("a {} subscription cannot be cancelled", row.status),
            field: None,
        });
    }
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let r = Some(("subscription", id));
    tx.action(now, "subscription.cancel_request", r, json!({})).await?;
    tx.decision(now, "subscription.cancel_options", r, json!({"methods": methods, "retention_offer": null}))
        .await?;
    tx.commit().await?;
    let ends = if state.status == SubscriptionStatus::Trialing {
        state.trial_end.unwrap_or(state.period_end)
    } else {
        state.period_end
    };
    Ok(CancelOptions {
        methods,
        reason_codes: CANCEL_REASONS,
        retention_offer: None,
        ends_at_end_of_period: ends,
    })
}

/// Step two (permission `subscription.cancel`): cancel at the end of the period (access until
/// then) or immediately (access ends now).
pub async fn cancel(
    ctx: &Ctx,
    scope: &TenantScope,
    id: &str,
    method: CancelMethod,
    reason_code: &str,
    survey: serde_json::Value,
) -> Result<SubscriptionRow> {
    crate::security::require(ctx, scope, Permission::SubscriptionCancel).await?;
    if !CANCEL_REASONS.contains(&reason_code) {
        return Err(azotte_domain::ValidationErrors::from(azotte_domain::FieldError::new(
            "reason_code",
            "unknown_reason",
            format!("one of {}", CANCEL_REASONS.join(", ")),
        ))
        .into());
    }
    let row = load(ctx, scope, id).await?;
    let body = json!({"method": method, "reason_code": reason_code, "survey": survey});
    let reason = reason_code.to_owned();
    transition(ctx, scope, row, Event::Cancel(method), "subscription.cancel", body, |r| {
        r.cancel_reason = Some(reason)
    })
    .await
}

/// What support can do (permission `subscription.write`).
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    Reactivate,
    Pause,
    Resume,
    /// Move the next renewal later by this many days.
    Defer(u32),
    /// Goodwill: extend the period (and a cancellation's end) by this many days.
    Extend(u32),
}

/// Reactivates, pauses, resumes, defers or extends a subscription.
pub async fn operate(ctx: &Ctx, scope: &TenantScope, id: &str, op: Operation) -> Result<SubscriptionRow> {
    crate::security::require(ctx, scope, Permission::SubscriptionWrite).await?;
    let row = load(ctx, scope, id).await?;
    let days = |d: u32| chrono::Duration::days(i64::from(d));
    let (event, action) = match op {
        Operation::Reactivate => (Event::Reactivate, "subscription.reactivate"),
        Operation::Pause => {
            if row.status == "trialing" && !pause_trials(ctx, scope, &row.storefront_id).await? {
                return Err(ServiceError::Conflict {
                    code: "trial_pause_not_allowed",
                    message: "the storefront's policy does not allow pausing a trial".into(),
                    field: None,
                });
            }
            (Event::Pause, "subscription.pause")
        }
        Operation::Resume => (Event::Resume, "subscription.resume"),
        Operation::Defer(d) => (Event::Defer(days(d)), "subscription.defer"),
        Operation::Extend(d) => (Event::Extend(days(d)), "subscription.extend"),
    };
    let body = json!({"event": event.to_string()});
    transition(ctx, scope, row, event, action, body, |_| {}).await
}

/// The jobs of one tenant environment whose date has come: trials that end convert (the first
/// charge, off session, one payment per subscription and period) or lapse; cancelled
/// subscriptions whose end has come expire. Returns how many subscriptions moved.
pub async fn run_due(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let now = ctx.clock.now();
    let (trials, ending) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let t = store::due(&mut tx, "trialing", true, now, 200).await?;
        let e = store::due(&mut tx, "canceled", false, now, 200).await?;
        tx.commit().await?;
        (t, e)
    };
    let mut moved = 0;
    for row in ending {
        let body = json!({"job": "period_end"});
        if transition(ctx, scope, row, Event::PeriodEnded, "subscription.period_end", body, |_| {})
            .await
            .is_ok()
        {
            moved += 1;
        }
    }
    for row in trials {
        let mut paid_by = None;
        let event = match &row.payment_method_id {
            None => Event::TrialLapsed,
            Some(pm) => {
                // A retry after a charge the PSP never took waits for its time.
                let Some(request_key) = conversion_charge_key(ctx, scope, &row, now).await? else { continue };
                let p = payments::charge(
                    ctx,
                    scope,
                    ChargeInput {
                        customer_id: row.customer_id.clone(),
                        payment_method_id: pm.clone(),
                        amount: row.amount,
                        currency: row.currency.clone(),
                        description: format!("subscription {} first period", row.id),
                        psp_account_id: None,
                        off_session: true,
                        request_key: Some(request_key),
                    },
                )
                .await;
                // Nothing charged, and not because of the card (the PSP down, no account
                // eligible, the request never received): the trial goes on and the conversion
                // is tried again later under a new key.
                if let Some(p) = p.as_ref().ok().filter(|p| payments::failed_on_our_side(p)) {
                    conversion_deferred(ctx, scope, &row, p).await?;
                    continue;
                }
                match p.as_ref().map(|p| p.status.as_str()) {
                    Ok("captured") => {
                        paid_by = p.as_ref().ok().map(|p| p.id.clone());
                        Event::TrialConverted
                    }
                    Ok("failed") | Err(ServiceError::NotFound { .. } | ServiceError::Conflict { .. }) => {
                        Event::TrialLapsed
                    }
                    // Pending, queued, unknown: the next tick looks again.
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(subscription_id = %row.id, error = %e, "trial conversion charge failed; will retry");
                        continue;
                    }
                }
            }
        };
        let body = json!({"job": "trial_end"});
        let id = row.id.clone();
        let ended = transition_paid(
            ctx,
            scope,
            row,
            event,
            "subscription.trial_end",
            body,
            |r| r.next_retry_at = None,
            paid_by.as_deref(),
        );
        match (ended.await, paid_by) {
            (Ok(_), _) => moved += 1,
            // The conversion was charged but the trial changed meanwhile (cancelled, paused):
            // the charge converts nothing, so it goes back. A trial still running converts at
            // the next tick, with this same payment (same request key).
            (Err(e), Some(payment_id)) => {
                let current = {
                    let mut tx = ctx.db.tenant_read_tx(scope).await?;
                    let c = store::get_subscription(&mut tx, &id).await?;
                    tx.commit().await?;
                    c
                };
                if current.is_some_and(|c| c.status != "trialing") {
                    refund_conversion(ctx, scope, &id, &payment_id).await?;
                } else {
                    tracing::warn!(subscription_id = %id, error = %e, "trial conversion failed after its charge; will retry");
                }
            }
            (Err(_), None) => {}
        }
    }
    Ok(moved)
}

/// When a trial conversion whose charge the PSP never took (every account down, none eligible,
/// the request never received) is tried again. The trial goes on meanwhile.
const CONVERSION_RETRY: chrono::Duration = chrono::Duration::minutes(15);

/// The request key of a trial's conversion charge: one per subscription and first paid period.
/// Retries — after a charge the PSP never took, or one given back because the trial changed
/// while it was charged — are `{key}-r{n}`.
fn conversion_key(row: &SubscriptionRow) -> String {
    format!("{}{}-{}", super::renewals::KEY_PREFIX, row.id, row.periods + 1)
}

/// The subscription whose trial conversion `request_key` charges ([`conversion_key`] and its
/// retries), if it is one.
pub(crate) fn converting(request_key: &str) -> Option<&str> {
    let (sid, rest) = request_key.strip_prefix(super::renewals::KEY_PREFIX)?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match rest.split_once("-r") {
        Some((n, k)) => digits(n) && digits(k),
        None => digits(rest),
    };
    ok.then_some(sid)
}

/// Under which key to charge (or look at the charge of) a trial's conversion now; `None` while
/// a retry is not due yet.
async fn conversion_charge_key(
    ctx: &Ctx,
    scope: &TenantScope,
    row: &SubscriptionRow,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<String>> {
    let key = conversion_key(row);
    let tried = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let t = azotte_store::payments::under_key_and_retries(&mut tx, &key).await?;
        tx.commit().await?;
        t
    };
    let Some(last) = tried.last() else { return Ok(Some(key)) };
    let retry = format!("{key}-r{}", tried.len());
    if payments::failed_on_our_side(last) {
        return Ok((now - last.updated_at >= CONVERSION_RETRY).then_some(retry));
    }
    // Captured and given back in full: it paid for nothing, so it cannot pay the conversion. (A
    // charge refunded in part pays it, and the invoice credits what was given back.)
    if last.status == "captured" && last.refunded_amount >= last.captured_amount {
        return Ok(Some(retry));
    }
    Ok(Some(last.request_key.clone().unwrap_or(key)))
}

/// Journals that a trial's conversion was not charged because of the PSP or this platform and
/// waits for its retry (decision `subscription.conversion_deferred`, access kept), and keeps
/// the trial out of the due list until then (`next_retry_at`), so that deferred trials do not
/// crowd out the others.
async fn conversion_deferred(
    ctx: &Ctx,
    scope: &TenantScope,
    sub: &SubscriptionRow,
    p: &azotte_store::payments::PaymentRow,
) -> Result<()> {
    let now = ctx.clock.now();
    let retry_at = p.updated_at + CONVERSION_RETRY;
    let r = Some(("subscription", sub.id.as_str()));
    let mut tx = ctx.db.tenant_tx(scope).await?;
    tx.action(now, "subscription.trial_end", r, json!({"job": "trial_end", "step": "defer"})).await?;
    let mut row = sub.clone();
    row.next_retry_at = Some(retry_at);
    row.updated_at = now;
    // Changed meanwhile (cancelled, extended): the retry time only matters to a trial still due.
    store::update_subscription(&mut tx, &row, sub.updated_at).await?;
    tx.decision(
        now,
        "subscription.conversion_deferred",
        r,
        json!({"payment_id": p.id, "decline_code": p.decline_code, "retry_at": retry_at, "access": "kept"}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How far back [`sweep_conversion_charges`] looks (captures), and how often it runs.
const SWEEP_BACK: chrono::Duration = chrono::Duration::days(7);
const SWEEP_EVERY: chrono::Duration = chrono::Duration::minutes(10);
/// Captured conversion charges paying no invoice that one sweep looks at, most recently
/// changed first (where a late answer is likeliest; those it refunded are not among them
/// any more).
const SWEEP_AT_MOST: u64 = 2000;

/// Whether [`sweep_conversion_charges`] is due in this pass (every [`SWEEP_EVERY`] per
/// process, `Ctx::conversion_sweep`); marks it done when it is.
pub(crate) fn conversion_sweep_due(ctx: &Ctx) -> bool {
    use std::sync::atomic::Ordering;
    let now = ctx.clock.now().timestamp();
    let last = ctx.conversion_sweep.load(Ordering::Relaxed);
    if last != i64::MIN && (last..last + SWEEP_EVERY.num_seconds()).contains(&now) {
        return false;
    }
    ctx.conversion_sweep.store(now, Ordering::Relaxed);
    true
}

/// The safety net of [`conversion_charge_moved`], which runs in a task after the payment moved
/// and is lost if that task fails or the process stops: trial conversion charges captured in
/// the last [`SWEEP_BACK`] that pay no invoice — one read walking that window's captures on
/// the status index, however many trials a tenant has — are checked, and those whose trial ended without converting are refunded in full. Returns
/// how many were refunded.
pub(crate) async fn sweep_conversion_charges(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let now = ctx.clock.now();
    // Captured, not refunded, paying no invoice: a conversion that used its charge pays its
    // invoice with it, so what is left is what may have paid for nothing (or is converting
    // right now, which the check below leaves alone).
    let candidates = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        // Renewal keys, but not a regular renewal's (`…-a{attempt}-r{run}`; subscription ids
        // hold no `-`): a conversion's is `renewal-{subscription}-{period}[-r{retry}]`.
        let c = azotte_store::payments::captured_unlinked(
            &mut tx,
            super::renewals::KEY_PREFIX,
            super::renewals::ATTEMPT_MARK,
            now - SWEEP_BACK,
            SWEEP_AT_MOST,
        )
        .await?;
        tx.commit().await?;
        c
    };
    let mut refunded = 0;
    for p in candidates.iter().filter(|p| p.request_key.as_deref().and_then(converting).is_some()) {
        // A paused trial is left to the payment's own move: it may resume and convert with
        // this very charge while the sweep refunds it.
        if conversion_charge_moved(ctx, scope, p, false).await? {
            refunded += 1;
        }
    }
    Ok(refunded)
}

/// A payment moved on PSP evidence (a webhook, a reconciliation). When it is a trial
/// conversion's charge that is now captured but paid for nothing — its trial was cancelled,
/// paused or ended while the answer was unknown or pending, so no conversion used it — it is
/// refunded in full (`subscription.conversion_refunded`). A trial still running converts with
/// it at the next tick instead.
pub(crate) async fn conversion_charge_moved(
    ctx: &Ctx,
    scope: &TenantScope,
    p: &azotte_store::payments::PaymentRow,
    paused_too: bool,
) -> Result<bool> {
    let Some(sid) = p.request_key.as_deref().and_then(converting) else { return Ok(false) };
    if p.status != "captured" || p.refunded_amount >= p.captured_amount {
        return Ok(false);
    }
    let (sub, paid) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let s = store::get_subscription(&mut tx, sid).await?;
        let paid = azotte_store::invoices::invoice_payments(&mut tx, None, Some(&p.id)).await?;
        tx.commit().await?;
        (s, paid)
    };
    match sub {
        Some(s) if s.status != "trialing" && (paused_too || s.status != "paused") && paid.is_empty() => {
            refund_conversion(ctx, scope, sid, &p.id).await
        }
        _ => Ok(false),
    }
}

/// Refunds in full a trial conversion's charge whose trial changed before it converted, and
/// records why on the subscription (outcome `subscription.conversion_refunded`); `false` when
/// nothing was refunded.
async fn refund_conversion(
    ctx: &Ctx,
    scope: &TenantScope,
    subscription_id: &str,
    payment_id: &str,
) -> Result<bool> {
    let reason = "subscription changed before its trial conversion settled";
    // Nothing left (refunded already, at an earlier tick), or the charge pays the conversion
    // after all (it committed after this looked).
    let Some(refund) = payments::refund_rest(ctx, scope, payment_id, reason).await? else { return Ok(false) };
    let now = ctx.clock.now();
    let r = Some(("subscription", subscription_id));
    let mut tx = ctx.db.tenant_tx(scope).await?;
    tx.action(now, "subscription.trial_end", r, json!({"job": "trial_end", "step": "refund"})).await?;
    tx.outcome(
        now,
        "subscription.conversion_refunded",
        r,
        json!({"payment_id": payment_id, "refund_id": refund.id, "reason": "subscription_changed_during_conversion"}),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The storefront's policy: may a trial be paused?
async fn pause_trials(ctx: &Ctx, scope: &TenantScope, storefront_id: &str) -> Result<bool> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let sf = azotte_store::catalog::get_storefront(&mut tx, storefront_id).await?;
    tx.commit().await?;
    Ok(sf.is_some_and(|s| s.lifecycle.pause_trials))
}
