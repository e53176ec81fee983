//! Offers: what a customer may buy in a storefront right now, priced (tax per the storefront's
//! scheme and the customer's country), with the trial each bundle family allows them. Stored,
//! bound to the customer, and valid for [`OFFER_TTL`]; checkout accepts nothing else. A
//! `replace` offer lists what a live subscription may change to (see [`super::replace`]).

use std::collections::HashMap;

use azotte_domain::catalog::{tax_split, Currency};
use azotte_domain::id::OfferId;
use azotte_domain::permission::Permission;
use azotte_domain::subscription::{trial_eligibility, FamilyHistory};
use azotte_domain::{FieldError, ValidationErrors};
use azotte_store::customers::{self as customer_store, CustomerRow};
use azotte_store::subscriptions::{self as store, OfferRow, SubscriptionFilter};
use azotte_store::{journal, TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::catalog::Catalog;
use crate::{Ctx, Result, ServiceError};

mod together;
pub use together::made_together;
pub(crate) use together::Makes;

/// How long an offer can be checked out.
pub const OFFER_TTL: chrono::Duration = chrono::Duration::minutes(30);

/// Why the offer is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A first purchase in a family.
    New,
    /// Coming back after a subscription ended: no trial.
    Winback,
    /// A plan change of the customer's live subscription: the other prices of its family.
    Replace,
}

impl Intent {
    fn as_str(self) -> &'static str {
        match self {
            Intent::New => "new",
            Intent::Winback => "winback",
            Intent::Replace => "replace",
        }
    }
}

/// Asking for an offer. Without a customer it is a showcase: display prices, no checkout.
#[derive(Debug, Clone)]
pub struct OfferInput {
    pub customer_id: Option<String>,
    pub storefront_id: String,
    pub intent: Intent,
    pub promotion_code: Option<String>,
    /// Defaults to the storefront's default currency.
    pub currency: Option<String>,
    /// The subscription a `replace` offer replaces.
    pub subscription_id: Option<String>,
}

/// One priced item of an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferItem {
    pub price_id: String,
    pub price_version: i32,
    pub bundle_id: String,
    pub bundle_key: String,
    pub bundle_name: String,
    pub family: String,
    pub currency: String,
    /// What the customer pays per period, tax included, minor units.
    pub amount: i64,
    pub net: i64,
    pub tax: i64,
    pub tax_rate_bp: u32,
    pub period_unit: String,
    pub period_count: u32,
    /// Trial days applied to this customer (0: none).
    pub trial_days: u32,
    pub trial_payment_method_required: bool,
    /// Why the trial is or is not applied.
    pub trial_reasons: Vec<String>,
}

/// An offer.
#[derive(Debug, Clone)]
pub struct Offer {
    pub id: String,
    pub customer_id: Option<String>,
    pub storefront_id: String,
    pub intent: String,
    pub items: Vec<OfferItem>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The subscription a `replace` offer replaces.
    pub subscription_id: Option<String>,
}

impl Offer {
    pub(crate) fn from_row(r: OfferRow) -> Result<Self> {
        let items: Vec<OfferItem> = serde_json::from_value(r.items).map_err(ServiceError::internal)?;
        Ok(Offer {
            id: r.id,
            customer_id: r.customer_id,
            storefront_id: r.storefront_id,
            intent: r.intent,
            items,
            created_at: r.created_at,
            expires_at: r.expires_at,
            subscription_id: r.subscription_id,
        })
    }
}

pub(crate) fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> ServiceError {
    ValidationErrors::from(FieldError::new(field, code, message)).into()
}

/// The customer's history in every bundle family it has had a subscription of (a family not in
/// the map: none), for trial eligibility: one read for a whole offer, however many bundles.
pub(crate) async fn family_histories(
    tx: &mut TenantTx,
    customer_id: &str,
) -> Result<HashMap<String, FamilyHistory>> {
    histories(tx, &SubscriptionFilter { customer_id: Some(customer_id), ..Default::default() }).await
}

/// The customer's history in a bundle family, for trial eligibility.
pub(crate) async fn family_history(
    tx: &mut TenantTx,
    customer_id: &str,
    family: &str,
) -> Result<FamilyHistory> {
    let filter =
        SubscriptionFilter { customer_id: Some(customer_id), family: Some(family), ..Default::default() };
    Ok(histories(tx, &filter).await?.remove(family).unwrap_or_default())
}

/// The histories by family of the subscriptions `filter` selects (all of them, page by page).
async fn histories(
    tx: &mut TenantTx,
    filter: &SubscriptionFilter<'_>,
) -> Result<HashMap<String, FamilyHistory>> {
    let mut out: HashMap<String, FamilyHistory> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let (subs, more) = store::list_subscriptions(tx, filter, 500, after.as_deref()).await?;
        add_to_histories(&mut out, &subs);
        match (more, subs.last()) {
            (true, Some(last)) => after = Some(last.id.clone()),
            _ => return Ok(out),
        }
    }
}

/// Adds `subs` (of one customer) to its histories by family.
pub(crate) fn add_to_histories<'a>(
    out: &mut HashMap<String, FamilyHistory>,
    subs: impl IntoIterator<Item = &'a store::SubscriptionRow>,
) {
    for s in subs {
        let h = out.entry(s.family.clone()).or_default();
        h.had_trial |= s.had_trial;
        h.has_live_subscription |= s.status != "expired";
        h.last_ended_at = h.last_ended_at.max(s.ends_at);
    }
}

/// Builds, stores and journals an offer (permission `subscription.write`; a showcase needs only
/// `catalog.read`).
pub async fn create(ctx: &Ctx, scope: &TenantScope, input: OfferInput) -> Result<Offer> {
    let showcase = input.customer_id.is_none();
    let needed = if showcase { Permission::CatalogRead } else { Permission::SubscriptionWrite };
    crate::security::require(ctx, scope, needed).await?;
    if input.promotion_code.is_some() {
        return Err(invalid(
            "promotion_code",
            "promotion_code_invalid",
            "no campaign with this promotion code applies",
        ));
    }
    let now = ctx.clock.now();
    let asked = match &input.currency {
        Some(c) => Some(Currency::parse("currency", c).map_err(ValidationErrors::from)?),
        None => None,
    };
    if !showcase {
        crate::security::require(ctx, scope, Permission::CatalogRead).await?;
    }
    let mut asking =
        together::Asking { scope: scope.clone(), meta: journal::current_meta(), input, asked, now };
    if asking.input.intent != Intent::Replace && asking.input.subscription_id.is_none() {
        // Commonly: made with the others of the tenant environment asked for now.
        match together::make(ctx, asking).await? {
            together::Offered::Done(offer) => return Ok(*offer),
            together::Offered::Alone(back) => asking = *back,
        }
    }
    let together::Asking { input, asked, now, .. } = asking;
    // One transaction reads the catalog and the customer and writes the offer.
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let catalog =
        crate::catalog::storefront_catalog_in(&mut tx, now, &input.storefront_id, asked.as_ref()).await?;
    let currency = served(&catalog, asked)?;
    let customer = match &input.customer_id {
        Some(id) => Some(present(customer_store::get_customer(&mut tx, id).await?)?),
        None => None,
    };
    let replaced = match (input.intent, &customer, &input.subscription_id) {
        (Intent::Replace, Some(c), Some(sid)) => {
            let asked = input.currency.as_ref().map(|_| &currency);
            let sf = &catalog.storefront.id;
            Some(super::replace::replaceable_of(&mut tx, scope, sid, &c.id, sf, asked, now).await?)
        }
        (Intent::Replace, _, _) => {
            let field = if showcase { "customer_id" } else { "subscription_id" };
            return Err(invalid(field, "required", "a replace offer is for a customer's subscription"));
        }
        (_, _, Some(_)) => {
            return Err(invalid(
                "subscription_id",
                "not_allowed",
                "only a replace offer names a subscription",
            ))
        }
        _ => None,
    };
    let histories = match (&customer, &replaced) {
        (Some(c), None) => Some(family_histories(&mut tx, &c.id).await?),
        _ => None,
    };
    let basis =
        Basis { catalog: &catalog, currency, customer: customer.as_ref(), replaced: replaced.as_ref() };
    let made = compose(&input, basis, histories.as_ref(), now)?;
    journal_made(&mut tx, &made, now).await?;
    store::insert_offer(&mut tx, &made.row).await?;
    tx.commit().await?;
    Ok(made.into_offer())
}

/// The currency an offer is in (the asked one, else the storefront's default), if the
/// storefront sells in it.
pub(super) fn served(catalog: &Catalog, asked: Option<Currency>) -> Result<Currency> {
    let sf = &catalog.storefront;
    let currency = asked.unwrap_or_else(|| sf.default_currency.clone());
    if !sf.currencies.contains(&currency) {
        return Err(invalid(
            "currency",
            "currency_not_served",
            "the storefront does not sell in this currency",
        ));
    }
    Ok(currency)
}

/// The customer an offer is for, if it exists and is not erased.
pub(super) fn present(customer: Option<CustomerRow>) -> Result<CustomerRow> {
    customer.filter(|c| c.status != "erased").ok_or(ServiceError::NotFound { resource: "customer" })
}

/// What an offer is made from, read.
pub(super) struct Basis<'a> {
    pub(super) catalog: &'a Catalog,
    pub(super) currency: Currency,
    pub(super) customer: Option<&'a CustomerRow>,
    /// The subscription a `replace` offer replaces.
    pub(super) replaced: Option<&'a store::SubscriptionRow>,
}

/// An offer as made, to be journaled and stored.
pub(super) struct Made {
    pub(super) row: OfferRow,
    /// `row`'s items, as made.
    items: Vec<OfferItem>,
    action: serde_json::Value,
    /// The trial eligibility of each item (an offer for a customer).
    decision: Option<serde_json::Value>,
}

impl Made {
    /// The offer as its request answers it (its items as made, not read back from the row).
    pub(super) fn into_offer(self) -> Offer {
        let r = self.row;
        Offer {
            id: r.id,
            customer_id: r.customer_id,
            storefront_id: r.storefront_id,
            intent: r.intent,
            items: self.items,
            created_at: r.created_at,
            expires_at: r.expires_at,
            subscription_id: r.subscription_id,
        }
    }
}

/// Makes the offer asked by `input` from what was read (`histories`: the customer's family
/// histories, for an offer that replaces nothing).
pub(super) fn compose(
    input: &OfferInput,
    basis: Basis<'_>,
    histories: Option<&HashMap<String, FamilyHistory>>,
    now: DateTime<Utc>,
) -> Result<Made> {
    let Basis { catalog, currency, customer, replaced } = basis;
    let sf = &catalog.storefront;
    let showcase = input.customer_id.is_none();
    let country = customer.and_then(|c| c.country.clone());
    let rate = sf.tax.rate_for(country.as_deref());
    let oid = OfferId::new().to_string();
    let intent = if showcase { "showcase" } else { input.intent.as_str() };
    let action = json!({"customer_id": input.customer_id, "storefront_id": sf.id, "intent": intent, "currency": currency});
    let mut items = Vec::new();
    if let Some(sub) = replaced {
        items = super::replace::candidates(catalog, sub, rate);
    }
    for item in catalog.items.iter().filter(|_| replaced.is_none()) {
        let b = &item.bundle.bundle;
        let history = histories.map(|h| h.get(&b.family).cloned().unwrap_or_default());
        if history.as_ref().is_some_and(|h| h.has_live_subscription) {
            // Already subscribed in this family: a plan change, not a new purchase.
            continue;
        }
        for (price, version) in item.prices.iter().filter(|(p, _)| p.currency == currency) {
            let Some(period) = price.billing_period else { continue };
            let (trial_days, reasons) = match (&version.trial, &history, input.intent) {
                (None, _, _) => (0, vec!["no_trial_on_price".to_owned()]),
                (Some(_), _, Intent::Winback) => (0, vec!["winback_has_no_trial".to_owned()]),
                (Some(_), _, Intent::Replace) => (0, vec!["replace_has_no_trial".to_owned()]),
                (Some(t), None, _) => (t.days, vec!["showcase".to_owned()]),
                (Some(t), Some(h), Intent::New) => {
                    let d = trial_eligibility(h, now, sf.lifecycle.trial_cooldown_days);
                    let reasons = d.reasons.iter().map(|r| (*r).to_owned()).collect();
                    (if d.eligible { t.days } else { 0 }, reasons)
                }
            };
            let mut priced = priced_item(b, price, version, period, &currency, rate);
            priced.trial_days = trial_days;
            priced.trial_reasons = reasons;
            items.push(priced);
        }
    }
    let decision = customer.map(|_| {
        let decisions: Vec<_> = items
            .iter()
            .map(|i| json!({"price_id": i.price_id, "family": i.family, "trial_days": i.trial_days, "reasons": i.trial_reasons}))
            .collect();
        json!({"items": decisions, "cooldown_days": sf.lifecycle.trial_cooldown_days})
    });
    let row = OfferRow {
        id: oid,
        customer_id: input.customer_id.clone(),
        storefront_id: sf.id.clone(),
        intent: intent.to_owned(),
        items: serde_json::to_value(&items).map_err(ServiceError::internal)?,
        created_at: now,
        expires_at: now + OFFER_TTL,
        subscription_id: replaced.map(|s| s.id.clone()),
    };
    Ok(Made { row, items, action, decision })
}

/// Journals a made offer: `offer.create`, `offer.eligibility` (for a customer), `offer.created`.
pub(super) async fn journal_made(tx: &mut TenantTx, made: &Made, now: DateTime<Utc>) -> Result<()> {
    let r = Some(("offer", made.row.id.as_str()));
    tx.action(now, "offer.create", r, made.action.clone()).await?;
    if let Some(d) = &made.decision {
        tx.decision(now, "offer.eligibility", r, d.clone()).await?;
    }
    let body = json!({"items": made.items.len(), "expires_at": made.row.expires_at});
    tx.outcome(now, "offer.created", r, body).await?;
    Ok(())
}

/// A price as offered to a customer taxed at `rate`, without a trial.
pub(crate) fn priced_item(
    b: &azotte_store::catalog::Bundle,
    price: &azotte_store::catalog::Price,
    version: &azotte_store::catalog::PriceVersion,
    period: azotte_domain::catalog::BillingPeriod,
    currency: &Currency,
    rate: u32,
) -> OfferItem {
    let (net, tax, gross) = tax_split(version.amount, version.tax_behaviour, rate);
    OfferItem {
        price_id: price.id.clone(),
        price_version: version.version,
        bundle_id: b.id.clone(),
        bundle_key: b.key.clone(),
        bundle_name: b.name.clone(),
        family: b.family.clone(),
        currency: currency.to_string(),
        amount: gross,
        net,
        tax,
        tax_rate_bp: rate,
        period_unit: period.unit.as_str().to_owned(),
        period_count: period.count,
        trial_days: 0,
        trial_payment_method_required: version.trial.is_some_and(|t| t.payment_method_required),
        trial_reasons: vec![],
    }
}

/// One offer (permission `subscription.read`).
pub async fn get(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<Offer> {
    crate::security::require(ctx, scope, Permission::SubscriptionRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let row = store::get_offer(&mut tx, id)
        .await?
        .filter(|o| scope.storefront_allowed(&o.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "offer" })?;
    tx.commit().await?;
    Offer::from_row(row)
}
