//! What a customer may use now: the hottest read path. One query joins the customer's grants
//! with their subscriptions' state and storefront dunning policy (kept in the store's read
//! cache); access is then decided by the domain's rules per subscription at `now`, and the best
//! grant per entitlement wins.

use azotte_domain::permission::Permission;
use azotte_domain::subscription::{self as life, Access, SubscriptionStatus};
use azotte_store::subscriptions::{self as store, GrantState};
use azotte_store::TenantScope;
use chrono::{DateTime, Utc};

use crate::{Ctx, Result, ServiceError};

/// One entitlement the customer holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    /// `boolean` or `quantity`.
    pub kind: String,
    /// The sum over the subscriptions granting it (quantities).
    pub quantity: Option<i64>,
    pub unit: Option<String>,
    pub access: Access,
    /// The subscription it comes from (the one whose access lasts longest).
    pub subscription_id: String,
    /// Until when, if the access is known to end.
    pub until: Option<DateTime<Utc>>,
}

fn state(g: &GrantState) -> Option<life::State> {
    Some(life::State {
        status: g.status.parse::<SubscriptionStatus>().ok()?,
        period_start: g.period_start,
        period_end: g.period_end,
        anchor: g.anchor,
        periods: g.periods as u32,
        trial_end: g.trial_end,
        ends_at: g.ends_at,
        canceled_immediately: g.canceled_immediately,
        paused_at: g.paused_at,
    })
}

/// The customer's entitlements now (one, when `key` is given), permission `subscription.read`.
pub async fn of_customer(
    ctx: &Ctx,
    scope: &TenantScope,
    customer_id: &str,
    key: Option<&str>,
) -> Result<Vec<Held>> {
    crate::security::require(ctx, scope, Permission::SubscriptionRead).await?;
    let now = ctx.clock.now();
    // Cached per customer (all keys); access is decided here, from `now`, on every read.
    let grants = store::grants_of_customer(&ctx.db, scope, customer_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "customer" })?;
    let mut held: Vec<Held> = Vec::new();
    // A credential restricted to some storefronts sees only their subscriptions' grants.
    let visible = |g: &&GrantState| scope.storefront_allowed(&g.storefront_id);
    for g in grants.iter().filter(visible).filter(|g| key.is_none_or(|k| g.entitlement_key == k)) {
        let Some(s) = state(g) else { continue };
        let until = life::access_until_extended(&s, now, &g.dunning, g.grace_extended_until);
        let access = if until.is_some() { Access::Full } else { Access::None };
        if access == Access::None {
            continue;
        }
        match held.iter_mut().find(|h| h.key == g.entitlement_key) {
            Some(h) => {
                h.quantity = match (h.quantity, g.quantity) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    (a, b) => a.or(b),
                };
                if until.is_none() || h.until.is_some_and(|u| until.is_some_and(|n| n > u)) {
                    h.until = until;
                    h.subscription_id = g.subscription_id.clone();
                }
            }
            None => held.push(Held {
                key: g.entitlement_key.clone(),
                kind: g.kind.clone(),
                quantity: g.quantity,
                unit: g.unit.clone(),
                access,
                subscription_id: g.subscription_id.clone(),
                until,
            }),
        }
    }
    if key.is_some() && held.is_empty() {
        return Err(ServiceError::NotFound { resource: "entitlement" });
    }
    Ok(held)
}
