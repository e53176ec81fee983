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

/// The date-driven jobs of every tenant environment: due checkouts, trial ends, ends of
/// cancelled periods, plan changes left half done (the worker runs it each tick).
pub async fn run_due_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut n = 0;
    for scope in crate::payments::every_scope(ctx, "subscriptions").await? {
        n += checkout::run_due(ctx, &scope).await?;
        n += lifecycle::run_due(ctx, &scope).await?;
        n += replace::run_due(ctx, &scope).await?;
    }
    n += renewals::tick(ctx).await?;
    Ok(n)
}
