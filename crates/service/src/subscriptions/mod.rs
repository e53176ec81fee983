//! Offers, asynchronous checkout, the subscription lifecycle and the entitlements it grants
//! (DESIGN.md sections 2 and 5). The rules live in `azotte_domain::subscription`; this module
//! applies them to stored subscriptions, one journaled transaction per change.

pub mod checkout;
pub mod entitlements;
pub mod lifecycle;
pub mod offers;
pub mod renewals;
pub mod replace;

use crate::{Ctx, Result};

/// A payment moved on PSP evidence (a verified webhook, a reconciliation), committed: what
/// waited for it goes on at once, in a task of its own — a checkout's job
/// ([`checkout::payment_moved`]), or the refund of a trial conversion's charge that paid for
/// nothing ([`lifecycle::conversion_charge_moved`]). A failure is logged; the worker's own
/// passes catch up.
pub(crate) fn payment_moved(
    ctx: &Ctx,
    scope: &azotte_store::TenantScope,
    p: &azotte_store::payments::PaymentRow,
) {
    checkout::payment_moved(ctx, scope, p.request_key.as_deref());
    if p.status == "captured" && p.request_key.as_deref().and_then(lifecycle::converting).is_some() {
        let (ctx, scope, p) = (ctx.clone(), scope.for_job("trial_conversion"), p.clone());
        tokio::spawn(async move {
            if let Err(e) = lifecycle::conversion_charge_moved(&ctx, &scope, &p, true).await {
                tracing::warn!(payment_id = %p.id, error = %e, "refunding a trial conversion's charge failed");
            }
        });
    }
}

/// The date-driven jobs of every tenant environment: due checkouts, trial ends, ends of
/// cancelled periods, plan changes left half done, then renewals (the worker runs it each tick).
/// One failing job, kind of job or tenant environment does not stop the others: each failure is
/// logged, everything else still runs, and the first failure is returned at the end.
pub async fn run_due_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut n = 0;
    let mut failure = None;
    let mut count = |what: &str, r: Result<usize>| match r {
        Ok(k) => n += k,
        Err(e) => {
            tracing::warn!(jobs = what, error = %e, "subscription jobs failed; the others went on");
            failure.get_or_insert(e);
        }
    };
    let sweep = lifecycle::conversion_sweep_due(ctx);
    for scope in crate::payments::every_scope(ctx, "subscriptions").await? {
        count("checkouts", checkout::run_due(ctx, &scope).await);
        count("lifecycle", lifecycle::run_due(ctx, &scope).await);
        count("replacements", replace::run_due(ctx, &scope).await);
        if sweep {
            count("conversion charges", lifecycle::sweep_conversion_charges(ctx, &scope).await);
        }
    }
    count("renewals", renewals::tick(ctx).await);
    match failure {
        Some(e) => Err(e),
        None => Ok(n),
    }
}
