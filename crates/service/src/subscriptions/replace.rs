//! Plan changes (replace): upgrade, downgrade, plan switch (DESIGN.md section 5, issue 9).
//!
//! A `replace` offer (intent `replace`, naming the subscription) lists the other prices of the
//! subscription's bundle family in its storefront, currency and billing period. [`preview`]
//! quotes a change exactly as [`replace`] applies it at that moment, under the storefront's
//! `lifecycle.replace_policy` (the figures and the rounding rule are in
//! [`azotte_domain::proration`]):
//!
//! - `immediate_prorated`: the change is recorded with its figures (`processing`); an upgrade's
//!   difference is charged off session through routing under the request key
//!   `replace-{subscription}-{price}-{period end}-{change}`, so a retry, or the worker finishing
//!   a change whose request died after charging, finds the same payment and never charges twice.
//!   Once paid (at once when nothing is due: a downgrade never charges) the subscription takes
//!   the new price and bundle and its entitlement grants are swapped for the new bundle's, in one
//!   transaction. The period end and the billing anchor do not move.
//! - `at_period_end`: the change is `scheduled`; the renewal at the period end charges the new
//!   price ([`renewal_amount`]) and applies it ([`apply_scheduled`]).
//!
//! Journal: action `subscription.replace` → decision `replace.proration` (the figures) →
//! outcome `subscription.replaced`, `subscription.replace_scheduled` or
//! `subscription.replace_failed`.

use azotte_domain::catalog::{ActiveStatus, BundleStatus, Currency, ReplacePolicy};
use azotte_domain::id::ReplacementId;
use azotte_domain::permission::Permission;
use azotte_domain::proration::{self, Quote};
use azotte_store::catalog as catalog_store;
use azotte_store::replacements::{self as rstore, ReplacementRow};
use azotte_store::subscriptions::{self as store, SubscriptionRow};
use azotte_store::{StoreError, TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::lifecycle::{load, period_of, state_of};
use super::offers::{invalid, priced_item, Offer, OfferItem};
use crate::catalog::Catalog;
use crate::payments::{self, ChargeInput};
use crate::{Ctx, Result, ServiceError};

/// How long an immediate change may stay `processing` before the worker finishes it.
const STALLED_AFTER: chrono::Duration = chrono::Duration::minutes(2);

fn conflict(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Conflict { code, message: message.into(), field: None }
}

/// `409` with the domain's code unless the subscription may change plans now.
fn check_replaceable(sub: &SubscriptionRow, now: DateTime<Utc>) -> Result<()> {
    proration::replaceable(&state_of(sub)?, now).map_err(|code| {
        let message = match code {
            "renewal_due" => "the period has ended; change plans once the renewal has run".to_owned(),
            _ => format!("a {} subscription cannot change plans", sub.status),
        };
        conflict(code, message)
    })
}

/// The subscription a `replace` offer for this customer, storefront and (if given) currency
/// may replace (for [`super::offers::create`]).
pub(crate) async fn replaceable_of(
    tx: &mut TenantTx,
    scope: &TenantScope,
    subscription_id: &str,
    customer_id: &str,
    storefront_id: &str,
    currency: Option<&Currency>,
    now: DateTime<Utc>,
) -> Result<SubscriptionRow> {
    let sub = store::get_subscription(tx, subscription_id)
        .await?
        .filter(|s| scope.storefront_allowed(&s.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "subscription" })?;
    if sub.customer_id != customer_id {
        return Err(invalid(
            "subscription_id",
            "subscription_customer_mismatch",
            "the subscription belongs to another customer",
        ));
    }
    if sub.storefront_id != storefront_id {
        return Err(invalid(
            "subscription_id",
            "subscription_not_in_storefront",
            "the subscription was bought in another storefront",
        ));
    }
    if currency.is_some_and(|c| !c.as_str().eq_ignore_ascii_case(&sub.currency)) {
        return Err(invalid(
            "currency",
            "currency_mismatch",
            "a plan change keeps the subscription's currency",
        ));
    }
    check_replaceable(&sub, now)?;
    Ok(sub)
}

/// What `sub` may change to in its storefront's catalog: the other prices of its bundle family
/// in its currency and billing period, priced at `rate`, without a trial.
pub(crate) fn candidates(catalog: &Catalog, sub: &SubscriptionRow, rate: u32) -> Vec<OfferItem> {
    let Ok(period) = period_of(sub) else { return vec![] };
    let mut out = Vec::new();
    for item in catalog.items.iter().filter(|i| i.bundle.bundle.family == sub.family) {
        for (price, version) in &item.prices {
            let same_terms = price.currency.as_str().eq_ignore_ascii_case(&sub.currency)
                && price.billing_period == Some(period)
                && price.id != sub.price_id;
            if same_terms {
                let mut priced =
                    priced_item(&item.bundle.bundle, price, version, period, &price.currency, rate);
                priced.trial_reasons = vec!["replace_has_no_trial".to_owned()];
                out.push(priced);
            }
        }
    }
    out
}

/// A change priced before committing.
#[derive(Debug, Clone)]
pub struct Preview {
    pub subscription_id: String,
    pub from_price_id: String,
    pub from_amount: i64,
    pub currency: String,
    pub to: OfferItem,
    pub quote: Quote,
}

/// The exact figures of changing `id` to `price_id` now (permission `subscription.read`):
/// what [`replace`] would credit, charge and when it takes effect.
pub async fn preview(ctx: &Ctx, scope: &TenantScope, id: &str, price_id: &str) -> Result<Preview> {
    crate::security::require(ctx, scope, Permission::SubscriptionRead).await?;
    let now = ctx.clock.now();
    let sub = load(ctx, scope, id).await?;
    check_replaceable(&sub, now)?;
    let (sf, country) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let sf = catalog_store::get_storefront(&mut tx, &sub.storefront_id)
            .await?
            .ok_or(ServiceError::NotFound { resource: "storefront" })?;
        let c = azotte_store::customers::get_customer(&mut tx, &sub.customer_id).await?;
        tx.commit().await?;
        (sf, c.and_then(|c| c.country))
    };
    let catalog =
        crate::catalog::storefront_catalog(ctx, scope, &sub.storefront_id, Some(&sub.currency)).await?;
    let rate = sf.tax.rate_for(country.as_deref());
    let to =
        candidates(&catalog, &sub, rate).into_iter().find(|i| i.price_id == price_id).ok_or_else(|| {
            if price_id == sub.price_id {
                invalid("price_id", "price_is_current", "the subscription already has this price")
            } else {
                invalid(
                    "price_id",
                    "price_not_in_family",
                    "not a price of the subscription's bundle family in its storefront, currency and period",
                )
            }
        })?;
    let quote = proration::quote(
        sf.lifecycle.replace_policy,
        sub.amount,
        to.amount,
        sub.period_start,
        sub.period_end,
        now,
    );
    Ok(Preview {
        subscription_id: sub.id.clone(),
        from_price_id: sub.price_id.clone(),
        from_amount: sub.amount,
        currency: sub.currency.clone(),
        to,
        quote,
    })
}

/// A subscription's plan changes, newest first (permission `subscription.read`): a scheduled
/// one is what the next renewal will apply.
pub async fn list(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<Vec<ReplacementRow>> {
    crate::security::require(ctx, scope, Permission::SubscriptionRead).await?;
    let sub = load(ctx, scope, id).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let rows = rstore::of_subscription(&mut tx, &sub.id, 100).await?;
    tx.commit().await?;
    Ok(rows)
}

/// A plan change and the subscription as it is after it.
#[derive(Debug, Clone)]
pub struct Replaced {
    pub replacement: ReplacementRow,
    pub subscription: SubscriptionRow,
}

/// Changes a subscription to a price of a `replace` offer made for it (permission
/// `subscription.write`; `payment.create` too when something is due now), under the
/// storefront's policy. The same request again returns the same change without charging.
pub async fn replace(
    ctx: &Ctx,
    scope: &TenantScope,
    id: &str,
    offer_id: &str,
    price_id: &str,
) -> Result<Replaced> {
    crate::security::require(ctx, scope, Permission::SubscriptionWrite).await?;
    let now = ctx.clock.now();
    let (sub, offer, sf, open, last) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let sub = store::get_subscription(&mut tx, id)
            .await?
            .filter(|s| scope.storefront_allowed(&s.storefront_id))
            .ok_or(ServiceError::NotFound { resource: "subscription" })?;
        let offer = store::get_offer(&mut tx, offer_id)
            .await?
            .filter(|o| scope.storefront_allowed(&o.storefront_id))
            .ok_or(ServiceError::NotFound { resource: "offer" })?;
        let sf = catalog_store::get_storefront(&mut tx, &sub.storefront_id)
            .await?
            .ok_or(ServiceError::NotFound { resource: "storefront" })?;
        let open = rstore::open_of(&mut tx, &sub.id).await?;
        let last = rstore::of_subscription(&mut tx, &sub.id, 1).await?.pop();
        tx.commit().await?;
        (sub, Offer::from_row(offer)?, sf, open, last)
    };
    if offer.intent != "replace" {
        return Err(invalid("offer_id", "offer_not_for_replace", "ask for an offer with intent replace"));
    }
    if offer.customer_id.as_deref() != Some(sub.customer_id.as_str()) {
        return Err(invalid("offer_id", "offer_customer_mismatch", "the offer was made to another customer"));
    }
    if offer.subscription_id.as_deref() != Some(sub.id.as_str()) {
        return Err(invalid(
            "offer_id",
            "offer_subscription_mismatch",
            "the offer was made for another subscription",
        ));
    }
    // The same request again: the change it made, or finishing it if its charge is in flight.
    let earlier = open.iter().chain(last.iter()).find(|r| {
        r.offer_id == offer.id
            && r.to_price_id == price_id
            && !matches!(r.status.as_str(), "failed" | "superseded")
    });
    if let Some(r) = earlier {
        if r.status == "processing" {
            return finish(ctx, scope, r.clone()).await;
        }
        return Ok(Replaced { replacement: r.clone(), subscription: sub });
    }
    if offer.expires_at <= now {
        return Err(conflict("offer_expired", "the offer has expired; ask for a new one"));
    }
    let item =
        offer.items.iter().find(|i| i.price_id == price_id).cloned().ok_or_else(|| {
            invalid("price_id", "price_not_in_offer", "the offer does not include this price")
        })?;
    check_replaceable(&sub, now)?;
    if item.price_id == sub.price_id {
        return Err(invalid("price_id", "price_is_current", "the subscription already has this price"));
    }
    if open.as_ref().is_some_and(|o| o.status == "processing") {
        return Err(conflict(
            "replace_in_progress",
            "another plan change of this subscription is being charged",
        ));
    }
    check_still_sold(ctx, scope, &item, &sub).await?;
    let policy = sf.lifecycle.replace_policy;
    let q = proration::quote(policy, sub.amount, item.amount, sub.period_start, sub.period_end, now);
    if q.amount_due > 0 {
        crate::security::require(ctx, scope, Permission::PaymentCreate).await?;
    }
    let rid = ReplacementId::new().to_string();
    let mut row = ReplacementRow {
        id: rid.clone(),
        subscription_id: sub.id.clone(),
        offer_id: offer.id.clone(),
        policy: policy.as_str().to_owned(),
        kind: q.kind.as_str().to_owned(),
        status: if policy == ReplacePolicy::AtPeriodEnd { "scheduled" } else { "processing" }.to_owned(),
        from_price_id: sub.price_id.clone(),
        from_bundle_id: sub.bundle_id.clone(),
        from_amount: sub.amount,
        to_price_id: item.price_id.clone(),
        to_price_version: item.price_version,
        to_bundle_id: item.bundle_id.clone(),
        to_amount: item.amount,
        credit: q.credit,
        charge: q.charge,
        amount_due: q.amount_due,
        credit_unused: q.credit_unused,
        period_end: sub.period_end,
        effective_at: q.effective_at,
        request_key: format!("replace-{}-{}-{}-{}", sub.id, item.price_id, sub.period_end.timestamp(), rid),
        payment_id: None,
        failure_code: None,
        created_at: now,
        updated_at: now,
    };
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let r = Some(("subscription", sub.id.as_str()));
    tx.action(
        now,
        "subscription.replace",
        r,
        json!({"replacement_id": rid, "offer_id": offer.id, "price_id": item.price_id, "policy": policy,
               "supersedes": open.as_ref().map(|o| &o.id)}),
    )
    .await?;
    tx.decision(now, "replace.proration", r, figures(&row, &q)).await?;
    if let Some(mut o) = open {
        // A newer change replaces a scheduled one.
        o.status = "superseded".into();
        o.updated_at = now;
        rstore::settle(&mut tx, &o, "scheduled").await?;
    }
    match rstore::insert(&mut tx, &row).await {
        Err(StoreError::UniqueViolation { .. }) => {
            return Err(conflict(
                "replace_in_progress",
                "another plan change of this subscription is under way",
            ))
        }
        other => other?,
    }
    if policy == ReplacePolicy::AtPeriodEnd {
        tx.outcome(
            now,
            "subscription.replace_scheduled",
            r,
            json!({"replacement_id": rid, "to_price_id": row.to_price_id, "effective_at": row.effective_at}),
        )
        .await?;
        tx.commit().await?;
        return Ok(Replaced { replacement: row, subscription: sub });
    }
    if row.amount_due == 0 {
        // Nothing to charge (a downgrade, a switch, or no time left): switch at once.
        let mut sub = sub;
        let expected = sub.updated_at;
        switch(&mut tx, &mut sub, &mut row, "processing", now).await?;
        sub.updated_at = now;
        if !store::update_subscription(&mut tx, &sub, expected).await? {
            return Err(conflict(
                "subscription_changed",
                "the subscription changed meanwhile; read it again",
            ));
        }
        tx.commit().await?;
        return Ok(Replaced { replacement: row, subscription: sub });
    }
    tx.commit().await?;
    finish(ctx, scope, row).await
}

/// The decision's body: every figure of the quote.
fn figures(row: &ReplacementRow, q: &Quote) -> serde_json::Value {
    json!({"kind": q.kind, "policy": q.policy, "from_price_id": row.from_price_id, "to_price_id": row.to_price_id,
           "from_amount": row.from_amount, "to_amount": row.to_amount, "credit": q.credit, "charge": q.charge,
           "amount_due": q.amount_due, "credit_unused": q.credit_unused, "unused_seconds": q.unused_seconds,
           "period_seconds": q.period_seconds, "effective_at": q.effective_at, "period_end": q.period_end,
           "rounding": "half_up"})
}

/// The offered price and its bundle must still be on sale in the subscription's family.
async fn check_still_sold(
    ctx: &Ctx,
    scope: &TenantScope,
    item: &OfferItem,
    sub: &SubscriptionRow,
) -> Result<()> {
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let price = catalog_store::get_price(&mut tx, &item.price_id).await?;
    let bundle = catalog_store::get_bundle(&mut tx, &item.bundle_id).await?;
    let versions = catalog_store::versions_of(&mut tx, std::slice::from_ref(&item.price_id)).await?;
    tx.commit().await?;
    let sold = price.is_some_and(|p| p.status == ActiveStatus::Active)
        && bundle.is_some_and(|b| b.status == BundleStatus::Active && b.family == sub.family)
        && versions.iter().any(|v| v.version == item.price_version);
    if sold {
        Ok(())
    } else {
        Err(conflict("price_not_available", "the offered price is no longer sold; ask for a new offer"))
    }
}

/// Charges an immediate change's amount due under its request key, then switches (paid) or
/// fails it (declined); a payment still in flight leaves it `processing` for a retry or the
/// worker.
async fn finish(ctx: &Ctx, scope: &TenantScope, mut r: ReplacementRow) -> Result<Replaced> {
    let sub = load(ctx, scope, &r.subscription_id).await?;
    let Some(pm) = sub.payment_method_id.clone() else {
        return fail(ctx, scope, r, "payment_method_required").await;
    };
    let p = payments::charge(
        ctx,
        scope,
        ChargeInput {
            customer_id: sub.customer_id.clone(),
            payment_method_id: pm,
            amount: r.amount_due,
            currency: sub.currency.clone(),
            description: format!("subscription {} plan change to {} (prorated)", sub.id, r.to_price_id),
            psp_account_id: None,
            off_session: true,
            request_key: Some(r.request_key.clone()),
        },
    )
    .await;
    let p = match p {
        Ok(p) => p,
        Err(ServiceError::NotFound { .. } | ServiceError::Conflict { .. }) => {
            return fail(ctx, scope, r, "payment_method_not_usable").await
        }
        Err(e) => return Err(e),
    };
    r.payment_id = Some(p.id.clone());
    match p.status.as_str() {
        "captured" => apply_paid(ctx, scope, r).await,
        "failed" | "canceled" => {
            let code = match p.decline_code.as_deref() {
                Some("insufficient_funds") => "insufficient_funds",
                Some("psp_unavailable" | "no_eligible_psp_account") => "psp_unavailable",
                _ => "payment_declined",
            };
            fail(ctx, scope, r, code).await
        }
        // Pending (in flight, or queued in safe mode), unknown: a retry or the worker looks again.
        _ => Ok(Replaced { replacement: r, subscription: sub }),
    }
}

/// A transaction that records what an immediate change's charge came to (action
/// `subscription.replace_charge`).
async fn charge_tx(
    ctx: &Ctx,
    scope: &TenantScope,
    r: &ReplacementRow,
    now: DateTime<Utc>,
) -> Result<TenantTx> {
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let res = Some(("subscription", r.subscription_id.as_str()));
    tx.action(
        now,
        "subscription.replace_charge",
        res,
        json!({"replacement_id": r.id, "payment_id": r.payment_id}),
    )
    .await?;
    Ok(tx)
}

/// Records a failed immediate change and answers `409` with `code`.
async fn fail(ctx: &Ctx, scope: &TenantScope, mut r: ReplacementRow, code: &'static str) -> Result<Replaced> {
    let now = ctx.clock.now();
    let mut tx = charge_tx(ctx, scope, &r, now).await?;
    let res = Some(("subscription", r.subscription_id.as_str()));
    r.status = "failed".into();
    r.failure_code = Some(code.to_owned());
    r.updated_at = now;
    if rstore::settle(&mut tx, &r, "processing").await? {
        tx.outcome(
            now,
            "subscription.replace_failed",
            res,
            json!({"replacement_id": r.id, "failure_code": code, "payment_id": r.payment_id}),
        )
        .await?;
        tx.commit().await?;
    }
    Err(ServiceError::Conflict {
        code,
        message: format!("the plan change was not made ({code})"),
        field: None,
    })
}

/// Fails an immediate change that can no longer be made (`subscription_changed`) and gives its
/// charge back in full, in `tx` (its action recorded): the change is taken from `processing`
/// and the refund reserved in the same transaction, so neither happens without the other. The
/// refund is sent after the commit (or later by reconciliation). `false` (nothing done) when
/// another runner settled the change meanwhile.
async fn refund_and_fail(
    ctx: &Ctx,
    scope: &TenantScope,
    mut tx: TenantTx,
    mut r: ReplacementRow,
    now: DateTime<Utc>,
) -> Result<bool> {
    r.status = "failed".into();
    r.failure_code = Some("subscription_changed".to_owned());
    r.updated_at = now;
    if !rstore::settle(&mut tx, &r, "processing").await? {
        return Ok(false);
    }
    let reason = format!("plan change {} not made: the subscription changed", r.id);
    let refund = match &r.payment_id {
        Some(pid) => payments::reserve_rest_in(&mut tx, pid, &reason, now).await?,
        None => None,
    };
    tx.outcome(
        now,
        "subscription.replace_failed",
        Some(("subscription", r.subscription_id.as_str())),
        json!({"replacement_id": r.id, "failure_code": "subscription_changed", "payment_id": r.payment_id,
               "refund_id": refund.as_ref().map(|(_, f)| f.id.clone())}),
    )
    .await?;
    tx.commit().await?;
    if let Some((p, f)) = refund {
        payments::send_reserved(ctx, scope, &p, f).await?;
    }
    Ok(true)
}

/// Switches a paid immediate change, under optimistic concurrency (a few tries); a change
/// someone else applied first is returned as it is.
async fn apply_paid(ctx: &Ctx, scope: &TenantScope, mut r: ReplacementRow) -> Result<Replaced> {
    for _ in 0..3 {
        let now = ctx.clock.now();
        let mut tx = charge_tx(ctx, scope, &r, now).await?;
        let mut sub = store::get_subscription(&mut tx, &r.subscription_id)
            .await?
            .ok_or(ServiceError::NotFound { resource: "subscription" })?;
        // The subscription moved on while the PSP charged (cancelled, paused, renewed into
        // another period, on another price): the change it paid for cannot be made any more.
        if check_replaceable(&sub, now).is_err()
            || sub.price_id != r.from_price_id
            || sub.period_end != r.period_end
        {
            if refund_and_fail(ctx, scope, tx, r.clone(), now).await? {
                return Err(conflict(
                    "subscription_changed",
                    "the plan change was not made: the subscription changed while it was charged; its charge is refunded",
                ));
            }
            // Settled by another runner meanwhile: as it stands.
            break;
        }
        let expected = sub.updated_at;
        if !switch(&mut tx, &mut sub, &mut r, "processing", now).await? {
            drop(tx);
            break;
        }
        sub.updated_at = now;
        if store::update_subscription(&mut tx, &sub, expected).await? {
            // Last: the invoice number's series row stays locked until the commit.
            proration_invoice(&mut tx, ctx.numbering, &sub, &r, now).await?;
            tx.commit().await?;
            return Ok(Replaced { replacement: r, subscription: sub });
        }
    }
    // Applied (or failed) by someone else meanwhile: as it stands.
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let sub = store::get_subscription(&mut tx, &r.subscription_id)
        .await?
        .ok_or(ServiceError::NotFound { resource: "subscription" })?;
    let now_r = rstore::of_subscription(&mut tx, &sub.id, 20).await?.into_iter().find(|x| x.id == r.id);
    tx.commit().await?;
    match now_r {
        Some(x) if x.status == "applied" => Ok(Replaced { replacement: x, subscription: sub }),
        _ => Err(conflict("subscription_changed", "the subscription changed meanwhile; read it again")),
    }
}

/// In the caller's transaction: the subscription takes the change's price, bundle and amount
/// (the caller writes it), its grants become the new bundle's, and the change moves from
/// `from` to `applied`. `false` (nothing done) when the change was no longer in `from`.
async fn switch(
    tx: &mut TenantTx,
    sub: &mut SubscriptionRow,
    r: &mut ReplacementRow,
    from: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    r.status = "applied".into();
    r.updated_at = now;
    if !rstore::settle(tx, r, from).await? {
        return Ok(false);
    }
    let bundle = catalog_store::get_bundle(tx, &r.to_bundle_id).await?.ok_or_else(|| {
        ServiceError::Internal(format!("bundle {} of change {}", r.to_bundle_id, r.id).into())
    })?;
    let all = catalog_store::all_entitlements(tx).await?;
    let granted = super::checkout::grants(&bundle, &all);
    let before = store::delete_grants(tx, &sub.id).await?;
    store::insert_grants(tx, &sub.id, &sub.customer_id, &granted).await?;
    sub.bundle_id = r.to_bundle_id.clone();
    sub.price_id = r.to_price_id.clone();
    sub.price_version = r.to_price_version;
    sub.amount = r.to_amount;
    let res = Some(("subscription", sub.id.as_str()));
    let keys: Vec<&str> = granted.iter().map(|g| g.entitlement_key.as_str()).collect();
    tx.outcome(
        now,
        "subscription.replaced",
        res,
        json!({"replacement_id": r.id, "kind": r.kind, "from_price_id": r.from_price_id, "to_price_id": r.to_price_id,
               "bundle_id": r.to_bundle_id, "amount": r.to_amount, "amount_due": r.amount_due,
               "payment_id": r.payment_id, "effective_at": r.effective_at}),
    )
    .await?;
    // What the old bundle granted and the new one does not: revoked with the change.
    let revoked: Vec<&str> = before.iter().map(String::as_str).filter(|k| !keys.contains(k)).collect();
    if !revoked.is_empty() {
        tx.outcome(
            now,
            "entitlements.revoked",
            res,
            json!({"customer_id": sub.customer_id, "keys": revoked}),
        )
        .await?;
    }
    tx.outcome(now, "entitlements.granted", res, json!({"customer_id": sub.customer_id, "keys": keys}))
        .await?;
    Ok(true)
}

/// The invoice of an immediate change's charge, paid by it, in the transaction that applies
/// the change: the new price for the rest of the period less the credit for the old one
/// (tax included, as the subscription's amounts are), totalling the amount charged.
async fn proration_invoice(
    tx: &mut TenantTx,
    numbering: crate::invoices::Numbering,
    sub: &SubscriptionRow,
    r: &ReplacementRow,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(payment_id) = r.payment_id.as_deref().filter(|_| r.amount_due > 0) else { return Ok(()) };
    let missing = |what: &str| ServiceError::Internal(format!("proration invoice: no {what}").into());
    let storefront =
        catalog_store::get_storefront(tx, &sub.storefront_id).await?.ok_or_else(|| missing("storefront"))?;
    let country = azotte_store::customers::get_customer(tx, &sub.customer_id).await?.and_then(|c| c.country);
    let currency = Currency::parse("currency", &sub.currency).map_err(|e| missing(&e.message))?;
    let line = |description: String, amount: i64| crate::invoices::LineInput {
        description,
        kind: crate::invoices::LineKind::Proration,
        amount,
        quantity: 1,
        period_start: Some(r.effective_at),
        period_end: Some(r.period_end),
        tax_behaviour: azotte_domain::catalog::TaxKind::Inclusive,
    };
    let name =
        |b: Option<azotte_store::catalog::Bundle>, id: &str| b.map_or_else(|| id.to_owned(), |b| b.name);
    let to = name(catalog_store::get_bundle(tx, &r.to_bundle_id).await?, &r.to_bundle_id);
    let from = name(catalog_store::get_bundle(tx, &r.from_bundle_id).await?, &r.from_bundle_id);
    let lines = [
        line(format!("{to}: rest of the period"), r.charge),
        line(format!("{from}: unused time"), -r.credit),
    ];
    let invoice = crate::invoices::issue(
        tx,
        numbering,
        &storefront,
        &sub.customer_id,
        country.as_deref(),
        Some(&sub.id),
        &currency,
        &lines,
        now,
    )
    .await?;
    crate::invoices::mark_paid(tx, &invoice.id, payment_id, now).await?;
    Ok(())
}

/// What the next renewal of `sub` charges: a scheduled change's new price, else the current one.
pub(crate) async fn renewal_amount(tx: &mut TenantTx, sub: &SubscriptionRow) -> Result<i64> {
    let open = rstore::open_of(tx, &sub.id).await?;
    Ok(open.filter(|r| r.status == "scheduled").map_or(sub.amount, |r| r.to_amount))
}

/// In a successful renewal's transaction, before the period advances: applies the scheduled
/// change if the renewal's payment charged its price (a change scheduled after the charge
/// waits for the next renewal). The caller writes `sub`.
pub(crate) async fn apply_scheduled(
    tx: &mut TenantTx,
    sub: &mut SubscriptionRow,
    payment_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(mut r) = rstore::open_of(tx, &sub.id).await?.filter(|r| r.status == "scheduled") else {
        return Ok(());
    };
    let paid = azotte_store::payments::get(tx, payment_id).await?.map(|p| p.amount);
    if paid != Some(r.to_amount) {
        return Ok(());
    }
    r.effective_at = sub.period_end;
    r.payment_id = Some(payment_id.to_owned());
    switch(tx, sub, &mut r, "scheduled", now).await?;
    Ok(())
}

/// Finishes immediate changes whose request died between charge and switch (the worker runs
/// it each tick): the same request key finds the same payment.
pub async fn run_due(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let now = ctx.clock.now();
    let stalled = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let s = rstore::stalled(&mut tx, now - STALLED_AFTER, 100).await?;
        tx.commit().await?;
        s
    };
    let mut n = 0;
    for r in stalled {
        let id = r.id.clone();
        match finish(ctx, scope, r).await {
            Ok(done) if done.replacement.status == "applied" => n += 1,
            Ok(_) => {}
            Err(ServiceError::Conflict { code, .. }) => {
                tracing::info!(replacement_id = %id, code, "stalled plan change ended");
                n += 1;
            }
            Err(e) => tracing::warn!(replacement_id = %id, error = %e, "stalled plan change; will retry"),
        }
    }
    Ok(n)
}
