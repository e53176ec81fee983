//! The catalog: storefronts, entitlements, bundles and prices, and the catalog a storefront
//! shows. Price is the contract, entitlements are the promise: one bundle is sold in many
//! storefronts at different prices without being duplicated.
//!
//! Every mutation is one transaction with its journal action and outcome; reads need
//! `catalog.read`, changes `catalog.write`. API keys restricted to some storefronts see only
//! those storefronts and their prices (anything else answers 404, like another tenant's ids).

use std::collections::{BTreeMap, BTreeSet};

use azotte_domain::catalog::{
    self as rules, ActiveStatus, BillingPeriod, BundleStatus, BundleType, Currency, DunningPolicy,
    EntitlementKind, LifecyclePolicy, StorefrontStatus, StorefrontType, TaxKind, TaxScheme, Trial,
};
use azotte_domain::id::{BundleId, EntitlementId, PriceId, PriceVersionId, StorefrontId};
use azotte_domain::invoice::FiscalProvider;
use azotte_domain::permission::Permission;
use azotte_domain::{FieldError, ValidationErrors};
use azotte_store::catalog::{
    self as store, Bundle, BundleEntitlement, Entitlement, Price, PriceFilter, PriceVersion, Storefront,
};
use azotte_store::{StoreError, TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{Ctx, Result, ServiceError};

fn not_found(resource: &'static str) -> ServiceError {
    ServiceError::NotFound { resource }
}

fn conflict(code: &'static str, message: impl Into<String>, field: Option<&'static str>) -> ServiceError {
    ServiceError::Conflict { code, message: message.into(), field }
}

/// Maps a unique violation of `constraint` to a 409 with `code`.
fn unique_as(
    e: StoreError,
    constraint: &str,
    code: &'static str,
    message: &str,
    field: &'static str,
) -> ServiceError {
    match e {
        StoreError::UniqueViolation { constraint: c } if c == constraint => {
            conflict(code, message, Some(field))
        }
        other => other.into(),
    }
}

async fn read_tx(ctx: &Ctx, scope: &TenantScope) -> Result<TenantTx> {
    crate::security::require(ctx, scope, Permission::CatalogRead).await?;
    Ok(ctx.db.tenant_read_tx(scope).await?)
}

async fn write_tx(ctx: &Ctx, scope: &TenantScope) -> Result<TenantTx> {
    crate::security::require(ctx, scope, Permission::CatalogWrite).await?;
    Ok(ctx.db.tenant_tx(scope).await?)
}

/// Names of the fields that differ between two JSON renderings of a resource.
fn changed_fields(before: &serde_json::Value, after: &serde_json::Value) -> Vec<String> {
    let (Some(b), Some(a)) = (before.as_object(), after.as_object()) else { return vec![] };
    a.iter().filter(|(k, v)| b.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Storefronts

/// A storefront to create. Strings are validated here (ISO codes, lengths).
#[derive(Debug, Clone)]
pub struct StorefrontInput {
    pub name: String,
    pub type_: StorefrontType,
    pub default_currency: String,
    /// More currencies it sells in, besides the default.
    pub currencies: Vec<String>,
    pub default_language: String,
    pub countries: Vec<String>,
    pub tax: TaxScheme,
    pub status: Option<StorefrontStatus>,
    pub dunning: Option<DunningPolicy>,
    pub lifecycle: Option<LifecyclePolicy>,
    /// Default `none`.
    pub fiscalization: Option<FiscalProvider>,
    pub invoice_prefix: Option<String>,
}

/// Changes to a storefront; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct StorefrontPatch {
    pub name: Option<String>,
    pub type_: Option<StorefrontType>,
    pub default_currency: Option<String>,
    pub currencies: Option<Vec<String>>,
    pub default_language: Option<String>,
    pub countries: Option<Vec<String>>,
    pub tax: Option<TaxScheme>,
    pub status: Option<StorefrontStatus>,
    pub dunning: Option<DunningPolicy>,
    pub lifecycle: Option<LifecyclePolicy>,
    pub fiscalization: Option<FiscalProvider>,
    pub invoice_prefix: Option<String>,
}

const DEFAULT_INVOICE_PREFIX: &str = "INV-";

/// The invoice prefixes the tenant environment's storefronts other than `except` have had —
/// recorded with each storefront (a storefront whose prefix changed keeps its old numbers, and
/// invoices being numbered under the old prefix meanwhile), and read from the number series for
/// prefixes older than that record: a prefix in this set would repeat invoice numbers of another
/// storefront. Holds the environment's prefix lock until the transaction ends.
async fn prefixes_in_use(tx: &mut TenantTx, except: Option<&str>) -> Result<BTreeSet<String>> {
    let others = |id: &str| except != Some(id);
    let mut used: BTreeSet<String> = store::invoice_prefixes_locked(tx)
        .await?
        .into_iter()
        .filter(|(id, _)| others(id))
        .map(|(_, p)| p)
        .collect();
    for (id, series) in azotte_store::invoices::series_in_use(tx).await? {
        if let Some(p) = azotte_domain::invoice::prefix_of_series(&series).filter(|_| others(&id)) {
            used.insert(p.to_owned());
        }
    }
    Ok(used)
}

/// Refuses a prefix another storefront numbers with (see [`prefixes_in_use`]).
fn prefix_free(prefix: &str, used: &BTreeSet<String>) -> Result<()> {
    if used.contains(prefix) {
        return Err(conflict(
            "invoice_prefix_in_use",
            format!(
                "another storefront of this environment numbers its invoices with {prefix}; invoice numbers \
                 must not repeat, so give this storefront a prefix of its own"
            ),
            Some("invoice_prefix"),
        ));
    }
    Ok(())
}

/// The default prefix of a new storefront: `INV-`, or `INV-2-`, `INV-3-`, … when that is in use.
fn default_prefix(used: &BTreeSet<String>) -> String {
    std::iter::once(DEFAULT_INVOICE_PREFIX.to_owned())
        .chain((2..).map(|n| format!("INV-{n}-")))
        .find(|p| !used.contains(p))
        .unwrap_or_else(|| DEFAULT_INVOICE_PREFIX.to_owned())
}

fn validate_prefix(s: &str) -> Result<(), FieldError> {
    let ok = (1..=16).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "invoice_prefix",
            "invalid_prefix",
            "1 to 16 characters: A-Z, 0-9 and -, not starting with -",
        ))
    }
}

/// Validates and normalizes every field of a storefront (currencies: default first, no
/// duplicates; countries: sorted, no duplicates).
fn check_storefront(
    s: &mut Storefront,
    default_currency: &str,
    currencies: &[String],
    countries: &[String],
) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if let Some(n) = errors.check(rules::validate_name("name", &s.name, 100)) {
        s.name = n;
    }
    let default = errors.check(Currency::parse("default_currency", default_currency));
    let mut all: Vec<Currency> = default.iter().cloned().collect();
    for (i, c) in currencies.iter().enumerate() {
        if let Some(c) = errors.check(Currency::parse(&format!("currencies[{i}]"), c)) {
            if !all.contains(&c) {
                all.push(c);
            }
        }
    }
    if all.len() > 20 {
        errors.push(FieldError::new("currencies", "too_many", "at most 20 currencies"));
    }
    if let Some(d) = default {
        s.default_currency = d;
    }
    s.currencies = all;
    errors.check(rules::parse_language("default_language", &s.default_language));
    if countries.is_empty() {
        errors.push(FieldError::new("countries", "no_countries", "a storefront serves at least one country"));
    }
    let mut set = BTreeSet::new();
    for (i, c) in countries.iter().enumerate() {
        if let Some(c) = errors.check(rules::parse_country(&format!("countries[{i}]"), c)) {
            set.insert(c);
        }
    }
    s.countries = set.iter().cloned().collect();
    s.tax.validate(&set, &mut errors.0);
    s.dunning.validate(&mut errors.0);
    s.lifecycle.validate(&mut errors.0);
    errors.check(validate_prefix(&s.invoice_prefix));
    errors.finish()
}

fn storefront_json(s: &Storefront) -> serde_json::Value {
    json!({
        "name": s.name, "type": s.type_, "default_currency": s.default_currency, "currencies": s.currencies,
        "default_language": s.default_language, "countries": s.countries, "tax": s.tax, "status": s.status,
        "dunning": s.dunning, "lifecycle": s.lifecycle, "fiscalization": s.fiscalization, "invoice_prefix": s.invoice_prefix,
    })
}

fn check_storefront_allowed(scope: &TenantScope, id: &str) -> Result<()> {
    if scope.storefront_allowed(id) {
        Ok(())
    } else {
        Err(not_found("storefront"))
    }
}

async fn load_storefront(tx: &mut TenantTx, id: &str) -> Result<Storefront> {
    check_storefront_allowed(tx.scope(), id)?;
    store::get_storefront(tx, id).await?.ok_or_else(|| not_found("storefront"))
}

/// Creates a storefront.
pub async fn create_storefront(ctx: &Ctx, scope: &TenantScope, input: StorefrontInput) -> Result<Storefront> {
    if scope.storefront_restriction().is_some() {
        return Err(ServiceError::Forbidden {
            code: "storefront_restricted",
            message: "an API key restricted to storefronts cannot create storefronts".into(),
        });
    }
    let now = ctx.clock.now();
    let mut s = Storefront {
        id: StorefrontId::new().to_string(),
        name: input.name,
        type_: input.type_,
        default_currency: Currency::parse("c", "EUR")
            .map_err(|e| ServiceError::Internal(e.message.into()))?,
        currencies: vec![],
        default_language: input.default_language,
        countries: vec![],
        tax: input.tax,
        status: input.status.unwrap_or(StorefrontStatus::Active),
        dunning: input.dunning.unwrap_or_default(),
        lifecycle: input.lifecycle.unwrap_or_default(),
        fiscalization: input.fiscalization.unwrap_or(FiscalProvider::None),
        invoice_prefix: input.invoice_prefix.clone().unwrap_or_else(|| DEFAULT_INVOICE_PREFIX.into()),
        created_at: now,
        updated_at: now,
    };
    check_storefront(&mut s, &input.default_currency, &input.currencies, &input.countries)?;
    let mut tx = write_tx(ctx, scope).await?;
    let used = prefixes_in_use(&mut tx, None).await?;
    match input.invoice_prefix {
        Some(_) => prefix_free(&s.invoice_prefix, &used)?,
        None => s.invoice_prefix = default_prefix(&used),
    }
    store::insert_storefront(&mut tx, &s).await?;
    store::record_invoice_prefix(&mut tx, &s.id, &s.invoice_prefix, now).await?;
    let r = Some(("storefront", s.id.as_str()));
    tx.action(now, "storefront.create", r, json!({})).await?;
    tx.outcome(now, "storefront.created", r, storefront_json(&s)).await?;
    tx.commit().await?;
    Ok(s)
}

/// Changes a storefront. Removing a currency that active prices use is a conflict.
pub async fn update_storefront(
    ctx: &Ctx,
    scope: &TenantScope,
    id: &str,
    p: StorefrontPatch,
) -> Result<Storefront> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let before = load_storefront(&mut tx, id).await?;
    let mut s = before.clone();
    if let Some(v) = p.name {
        s.name = v;
    }
    if let Some(v) = p.type_ {
        s.type_ = v;
    }
    if let Some(v) = p.default_language {
        s.default_language = v;
    }
    if let Some(v) = p.tax {
        s.tax = v;
    }
    if let Some(v) = p.status {
        s.status = v;
    }
    if let Some(v) = p.dunning {
        s.dunning = v;
    }
    if let Some(v) = p.lifecycle {
        s.lifecycle = v;
    }
    if let Some(v) = p.fiscalization {
        s.fiscalization = v;
    }
    if let Some(v) = p.invoice_prefix {
        s.invoice_prefix = v;
    }
    let default = p.default_currency.unwrap_or_else(|| before.default_currency.to_string());
    let currencies =
        p.currencies.unwrap_or_else(|| before.currencies.iter().map(ToString::to_string).collect());
    let countries = p.countries.unwrap_or_else(|| before.countries.clone());
    check_storefront(&mut s, &default, &currencies, &countries)?;
    if s.invoice_prefix != before.invoice_prefix {
        prefix_free(&s.invoice_prefix, &prefixes_in_use(&mut tx, Some(id)).await?)?;
    }
    let removed: Vec<&Currency> = before.currencies.iter().filter(|c| !s.currencies.contains(c)).collect();
    if !removed.is_empty() {
        let f = PriceFilter {
            storefront_id: Some(id.to_owned()),
            status: Some(ActiveStatus::Active),
            ..Default::default()
        };
        let (prices, _) = store::list_prices(&mut tx, &f, 100, None).await?;
        if let Some(p) = prices.iter().find(|p| removed.contains(&&p.currency)) {
            return Err(conflict(
                "currency_in_use",
                format!(
                    "active price {} is in {}; archive it before removing the currency",
                    p.id, p.currency
                ),
                Some("currencies"),
            ));
        }
    }
    s.updated_at = now;
    let (b, a) = (storefront_json(&before), storefront_json(&s));
    let changed = changed_fields(&b, &a);
    if changed.is_empty() {
        return Ok(before);
    }
    store::update_storefront(&mut tx, &s).await?;
    if s.invoice_prefix != before.invoice_prefix {
        store::record_invoice_prefix(&mut tx, id, &s.invoice_prefix, now).await?;
    }
    let r = Some(("storefront", id));
    tx.action(now, "storefront.update", r, json!({"fields": changed})).await?;
    tx.outcome(now, "storefront.updated", r, json!({"changed": changed, "storefront": a})).await?;
    tx.commit().await?;
    Ok(s)
}

/// One storefront.
pub async fn get_storefront(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<Storefront> {
    let mut tx = read_tx(ctx, scope).await?;
    let s = load_storefront(&mut tx, id).await?;
    tx.commit().await?;
    Ok(s)
}

/// Storefronts (those a restricted key may see), a page at a time.
pub async fn list_storefronts(
    ctx: &Ctx,
    scope: &TenantScope,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<Storefront>, bool)> {
    let mut tx = read_tx(ctx, scope).await?;
    let only = scope.storefront_restriction().map(<[String]>::to_vec);
    let page = store::list_storefronts(&mut tx, limit, starting_after, only.as_deref()).await?;
    tx.commit().await?;
    Ok(page)
}

/// Deletes a storefront that nothing references (409 naming what does).
pub async fn delete_storefront(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<()> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let s = load_storefront(&mut tx, id).await?;
    let prices = store::prices_referencing(&mut tx, None, Some(id)).await?;
    if !prices.is_empty() {
        return Err(conflict(
            "storefront_in_use",
            format!(
                "prices reference this storefront ({}); archive the storefront instead (status inactive)",
                prices.join(", ")
            ),
            None,
        ));
    }
    let psp = crate::psp_accounts::count_for_storefront(&mut tx, id).await?;
    if psp > 0 {
        return Err(conflict(
            "storefront_in_use",
            format!("{psp} PSP account(s) belong to this storefront; delete them first, or set the storefront inactive"),
            None,
        ));
    }
    store::delete_storefront(&mut tx, id).await?;
    let r = Some(("storefront", id));
    tx.action(now, "storefront.delete", r, json!({})).await?;
    tx.outcome(now, "storefront.deleted", r, json!({"name": s.name})).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Entitlements

/// An entitlement to create.
#[derive(Debug, Clone)]
pub struct EntitlementInput {
    pub key: String,
    pub name: String,
    pub kind: EntitlementKind,
    pub unit: Option<String>,
    pub includes: Vec<String>,
}

/// Changes to an entitlement; `unit: Some(None)` clears the unit.
#[derive(Debug, Clone, Default)]
pub struct EntitlementPatch {
    pub name: Option<String>,
    pub unit: Option<Option<String>>,
    pub includes: Option<Vec<String>>,
    pub status: Option<ActiveStatus>,
}

/// Checks unit and includes of `e` against every other entitlement of the environment.
fn check_entitlement(e: &mut Entitlement, others: &[Entitlement]) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if let Some(n) = errors.check(rules::validate_name("name", &e.name, 100)) {
        e.name = n;
    }
    match (e.kind, &e.unit) {
        (EntitlementKind::Quantity, None) => errors.push(FieldError::new(
            "unit",
            "missing_field",
            "a quantity entitlement has a unit (e.g. seats)",
        )),
        (EntitlementKind::Quantity, Some(u)) => {
            if let Some(u) = errors.check(rules::validate_name("unit", u, 32)) {
                e.unit = Some(u);
            }
        }
        (EntitlementKind::Boolean, Some(_)) => {
            errors.push(FieldError::new("unit", "unit_not_allowed", "a boolean entitlement has no unit"))
        }
        (EntitlementKind::Boolean, None) => {}
    }
    if e.includes.len() > 50 {
        errors.push(FieldError::new("includes", "too_many", "at most 50 included entitlements"));
    }
    let mut seen = BTreeSet::new();
    for (i, k) in e.includes.iter().enumerate() {
        let f = format!("includes[{i}]");
        if !seen.insert(k.clone()) {
            errors.push(FieldError::new(f, "duplicate_entitlement", format!("`{k}` is listed twice")));
        } else if *k == e.key {
            errors.push(FieldError::new(f, "cyclic_entitlements", "an entitlement cannot include itself"));
        } else if !others.iter().any(|o| o.key == *k) {
            errors.push(FieldError::new(f, "unknown_entitlement", format!("no entitlement with key `{k}`")));
        }
    }
    if errors.0.is_empty() {
        let mut graph: BTreeMap<String, Vec<String>> =
            others.iter().filter(|o| o.key != e.key).map(|o| (o.key.clone(), o.includes.clone())).collect();
        graph.insert(e.key.clone(), e.includes.clone());
        if let Some(cycle) = rules::find_cycle_from(&graph, Some(&e.key)) {
            errors.push(FieldError::new(
                "includes",
                "cyclic_entitlements",
                format!("entitlements would include each other: {}", cycle.join(" → ")),
            ));
        }
    }
    errors.finish()
}

fn entitlement_json(e: &Entitlement) -> serde_json::Value {
    json!({"key": e.key, "name": e.name, "kind": e.kind, "unit": e.unit, "includes": e.includes, "status": e.status})
}

async fn load_entitlement(tx: &mut TenantTx, id: &str) -> Result<Entitlement> {
    store::get_entitlement(tx, id).await?.ok_or_else(|| not_found("entitlement"))
}

/// Creates an entitlement.
pub async fn create_entitlement(
    ctx: &Ctx,
    scope: &TenantScope,
    input: EntitlementInput,
) -> Result<Entitlement> {
    let now = ctx.clock.now();
    let mut errors = ValidationErrors::default();
    errors.check(rules::validate_key("key", &input.key));
    errors.finish()?;
    let mut e = Entitlement {
        id: EntitlementId::new().to_string(),
        key: input.key,
        name: input.name,
        kind: input.kind,
        unit: input.unit,
        includes: input.includes,
        status: ActiveStatus::Active,
        created_at: now,
        updated_at: now,
    };
    let mut tx = write_tx(ctx, scope).await?;
    let all = store::all_entitlements(&mut tx).await?;
    check_entitlement(&mut e, &all)?;
    store::insert_entitlement(&mut tx, &e).await.map_err(|err| {
        unique_as(
            err,
            "entitlements_key_key",
            "entitlement_key_taken",
            "an entitlement with this key exists",
            "key",
        )
    })?;
    let r = Some(("entitlement", e.id.as_str()));
    tx.action(now, "entitlement.create", r, json!({"key": e.key})).await?;
    tx.outcome(now, "entitlement.created", r, entitlement_json(&e)).await?;
    tx.commit().await?;
    Ok(e)
}

/// Changes an entitlement (its key and kind are fixed).
pub async fn update_entitlement(
    ctx: &Ctx,
    scope: &TenantScope,
    id: &str,
    p: EntitlementPatch,
) -> Result<Entitlement> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let before = load_entitlement(&mut tx, id).await?;
    let mut e = before.clone();
    if let Some(v) = p.name {
        e.name = v;
    }
    if let Some(v) = p.unit {
        e.unit = v;
    }
    if let Some(v) = p.includes {
        e.includes = v;
    }
    if let Some(v) = p.status {
        e.status = v;
    }
    let all = store::all_entitlements(&mut tx).await?;
    check_entitlement(&mut e, &all)?;
    let changed = changed_fields(&entitlement_json(&before), &entitlement_json(&e));
    if changed.is_empty() {
        return Ok(before);
    }
    e.updated_at = now;
    store::update_entitlement(&mut tx, &e).await?;
    let r = Some(("entitlement", id));
    tx.action(now, "entitlement.update", r, json!({"fields": changed})).await?;
    tx.outcome(
        now,
        "entitlement.updated",
        r,
        json!({"changed": changed, "entitlement": entitlement_json(&e)}),
    )
    .await?;
    tx.commit().await?;
    Ok(e)
}

/// One entitlement.
pub async fn get_entitlement(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<Entitlement> {
    let mut tx = read_tx(ctx, scope).await?;
    let e = load_entitlement(&mut tx, id).await?;
    tx.commit().await?;
    Ok(e)
}

/// Entitlements, a page at a time.
pub async fn list_entitlements(
    ctx: &Ctx,
    scope: &TenantScope,
    limit: u32,
    starting_after: Option<&str>,
    status: Option<ActiveStatus>,
) -> Result<(Vec<Entitlement>, bool)> {
    let mut tx = read_tx(ctx, scope).await?;
    let page = store::list_entitlements(&mut tx, limit, starting_after, status).await?;
    tx.commit().await?;
    Ok(page)
}

/// Deletes an entitlement no bundle uses and no entitlement includes.
pub async fn delete_entitlement(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<()> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let e = load_entitlement(&mut tx, id).await?;
    let bundles = store::bundles_using_entitlement(&mut tx, id).await?;
    if !bundles.is_empty() {
        return Err(conflict(
            "entitlement_in_use",
            format!("bundles use this entitlement ({}); archive it instead", bundles.join(", ")),
            None,
        ));
    }
    let all = store::all_entitlements(&mut tx).await?;
    let includers: Vec<&str> =
        all.iter().filter(|o| o.includes.contains(&e.key)).map(|o| o.key.as_str()).collect();
    if !includers.is_empty() {
        return Err(conflict(
            "entitlement_in_use",
            format!("entitlements include this one ({})", includers.join(", ")),
            None,
        ));
    }
    store::delete_entitlement(&mut tx, id).await?;
    let r = Some(("entitlement", id));
    tx.action(now, "entitlement.delete", r, json!({})).await?;
    tx.outcome(now, "entitlement.deleted", r, json!({"key": e.key})).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bundles

/// An entitlement of a bundle, by key.
#[derive(Debug, Clone)]
pub struct BundleItem {
    pub key: String,
    pub quantity: Option<i64>,
}

/// A bundle to create.
#[derive(Debug, Clone)]
pub struct BundleInput {
    pub key: String,
    pub name: String,
    pub description: String,
    pub type_: BundleType,
    /// Defaults to the key.
    pub family: Option<String>,
    /// `draft` (default) or `active`.
    pub status: Option<BundleStatus>,
    pub entitlements: Vec<BundleItem>,
}

/// Changes to a bundle.
#[derive(Debug, Clone, Default)]
pub struct BundlePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub family: Option<String>,
    pub status: Option<BundleStatus>,
    pub entitlements: Option<Vec<BundleItem>>,
}

/// A bundle with its entitlements resolved.
#[derive(Debug, Clone)]
pub struct BundleView {
    pub bundle: Bundle,
    /// The bundle's entitlements with their definitions, in key order.
    pub entitlements: Vec<(Entitlement, Option<i64>)>,
}

const MAX_QUANTITY: i64 = 1_000_000_000;

fn resolve_items(
    items: &[BundleItem],
    all: &[Entitlement],
) -> Result<Vec<BundleEntitlement>, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if items.len() > 100 {
        errors.push(FieldError::new("entitlements", "too_many", "at most 100 entitlements"));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let f = format!("entitlements[{i}]");
        if !seen.insert(it.key.clone()) {
            errors.push(FieldError::new(
                format!("{f}.key"),
                "duplicate_entitlement",
                format!("`{}` is listed twice", it.key),
            ));
            continue;
        }
        let Some(e) = all.iter().find(|e| e.key == it.key) else {
            errors.push(FieldError::new(
                format!("{f}.key"),
                "unknown_entitlement",
                format!("no entitlement with key `{}`", it.key),
            ));
            continue;
        };
        if e.status == ActiveStatus::Archived {
            errors.push(FieldError::new(
                format!("{f}.key"),
                "entitlement_archived",
                format!("`{}` is archived", it.key),
            ));
        }
        match (e.kind, it.quantity) {
            (EntitlementKind::Quantity, None) => errors.push(FieldError::new(
                format!("{f}.quantity"),
                "missing_field",
                format!("`{}` is a quantity entitlement: give how many", it.key),
            )),
            (EntitlementKind::Quantity, Some(q)) if !(1..=MAX_QUANTITY).contains(&q) => errors.push(
                FieldError::new(format!("{f}.quantity"), "out_of_range", format!("1 to {MAX_QUANTITY}")),
            ),
            (EntitlementKind::Boolean, Some(_)) => errors.push(FieldError::new(
                format!("{f}.quantity"),
                "quantity_not_allowed",
                format!("`{}` is a boolean entitlement", it.key),
            )),
            _ => {}
        }
        out.push(BundleEntitlement { entitlement_id: e.id.clone(), quantity: it.quantity });
    }
    errors.finish()?;
    Ok(out)
}

fn check_bundle_text(b: &mut Bundle) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if let Some(n) = errors.check(rules::validate_name("name", &b.name, 100)) {
        b.name = n;
    }
    b.description = b.description.trim().to_owned();
    if b.description.chars().count() > 2000 {
        errors.push(FieldError::new("description", "invalid_length", "at most 2000 characters"));
    }
    errors.check(rules::validate_key("family", &b.family));
    errors.finish()
}

fn view(bundle: Bundle, all: &[Entitlement]) -> BundleView {
    let mut entitlements: Vec<(Entitlement, Option<i64>)> = bundle
        .entitlements
        .iter()
        .filter_map(|l| all.iter().find(|e| e.id == l.entitlement_id).map(|e| (e.clone(), l.quantity)))
        .collect();
    entitlements.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    BundleView { bundle, entitlements }
}

fn bundle_json(v: &BundleView) -> serde_json::Value {
    let b = &v.bundle;
    json!({
        "key": b.key, "name": b.name, "description": b.description, "type": b.type_, "family": b.family,
        "status": b.status,
        "entitlements": v.entitlements.iter().map(|(e, q)| json!({"key": e.key, "quantity": q})).collect::<Vec<_>>(),
    })
}

async fn load_bundle(tx: &mut TenantTx, id: &str) -> Result<Bundle> {
    store::get_bundle(tx, id).await?.ok_or_else(|| not_found("bundle"))
}

/// Creates a bundle (as a draft unless `status: active`).
pub async fn create_bundle(ctx: &Ctx, scope: &TenantScope, input: BundleInput) -> Result<BundleView> {
    let now = ctx.clock.now();
    let mut errors = ValidationErrors::default();
    errors.check(rules::validate_key("key", &input.key));
    let status = input.status.unwrap_or(BundleStatus::Draft);
    if status == BundleStatus::Archived {
        errors.push(FieldError::new("status", "invalid_status", "a new bundle is draft or active"));
    }
    errors.finish()?;
    let mut b = Bundle {
        id: BundleId::new().to_string(),
        family: input.family.unwrap_or_else(|| input.key.clone()),
        key: input.key,
        name: input.name,
        description: input.description,
        type_: input.type_,
        status,
        entitlements: vec![],
        created_at: now,
        updated_at: now,
    };
    check_bundle_text(&mut b)?;
    let mut tx = write_tx(ctx, scope).await?;
    let all = store::all_entitlements(&mut tx).await?;
    b.entitlements = resolve_items(&input.entitlements, &all)?;
    store::insert_bundle(&mut tx, &b).await.map_err(|e| {
        unique_as(e, "bundles_key_key", "bundle_key_taken", "a bundle with this key exists", "key")
    })?;
    let v = view(b, &all);
    let r = Some(("bundle", v.bundle.id.as_str()));
    tx.action(now, "bundle.create", r, json!({"key": v.bundle.key})).await?;
    tx.outcome(now, "bundle.created", r, bundle_json(&v)).await?;
    tx.commit().await?;
    Ok(v)
}

/// Changes a bundle: text, family, entitlements, and status along draft → active → archived.
/// An archived bundle cannot change.
pub async fn update_bundle(ctx: &Ctx, scope: &TenantScope, id: &str, p: BundlePatch) -> Result<BundleView> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let before = load_bundle(&mut tx, id).await?;
    let all = store::all_entitlements(&mut tx).await?;
    if before.status == BundleStatus::Archived {
        return Err(conflict("bundle_archived", "an archived bundle cannot change", None));
    }
    let mut b = before.clone();
    if let Some(v) = p.name {
        b.name = v;
    }
    if let Some(v) = p.description {
        b.description = v;
    }
    if let Some(v) = p.family {
        b.family = v;
    }
    if let Some(to) = p.status {
        if to != b.status && !b.status.can_become(to) {
            return Err(conflict(
                "invalid_status_transition",
                format!("a {} bundle cannot become {to}", b.status),
                Some("status"),
            ));
        }
        b.status = to;
    }
    check_bundle_text(&mut b)?;
    if let Some(items) = &p.entitlements {
        b.entitlements = resolve_items(items, &all)?;
    }
    let (vb, mut va) = (view(before, &all), view(b, &all));
    let changed = changed_fields(&bundle_json(&vb), &bundle_json(&va));
    if changed.is_empty() {
        return Ok(vb);
    }
    va.bundle.updated_at = now;
    store::update_bundle(&mut tx, &va.bundle).await?;
    let r = Some(("bundle", id));
    tx.action(now, "bundle.update", r, json!({"fields": changed})).await?;
    tx.outcome(now, "bundle.updated", r, json!({"changed": changed, "bundle": bundle_json(&va)})).await?;
    tx.commit().await?;
    Ok(va)
}

/// One bundle.
pub async fn get_bundle(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<BundleView> {
    let mut tx = read_tx(ctx, scope).await?;
    let b = load_bundle(&mut tx, id).await?;
    let all = store::all_entitlements(&mut tx).await?;
    tx.commit().await?;
    Ok(view(b, &all))
}

/// Bundles, a page at a time.
pub async fn list_bundles(
    ctx: &Ctx,
    scope: &TenantScope,
    limit: u32,
    starting_after: Option<&str>,
    status: Option<BundleStatus>,
) -> Result<(Vec<BundleView>, bool)> {
    let mut tx = read_tx(ctx, scope).await?;
    let (rows, more) = store::list_bundles(&mut tx, limit, starting_after, status).await?;
    let all = store::all_entitlements(&mut tx).await?;
    tx.commit().await?;
    Ok((rows.into_iter().map(|b| view(b, &all)).collect(), more))
}

/// Deletes a draft bundle that has no prices.
pub async fn delete_bundle(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<()> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let b = load_bundle(&mut tx, id).await?;
    if b.status != BundleStatus::Draft {
        return Err(conflict(
            "bundle_not_draft",
            format!("a {} bundle may have been sold; archive it instead", b.status),
            None,
        ));
    }
    let prices = store::prices_referencing(&mut tx, Some(id), None).await?;
    if !prices.is_empty() {
        return Err(conflict(
            "bundle_in_use",
            format!("prices reference this bundle ({})", prices.join(", ")),
            None,
        ));
    }
    store::delete_bundle(&mut tx, id).await?;
    let r = Some(("bundle", id));
    tx.action(now, "bundle.delete", r, json!({})).await?;
    tx.outcome(now, "bundle.deleted", r, json!({"key": b.key})).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prices

/// A price to create, with its first version.
#[derive(Debug, Clone)]
pub struct PriceInput {
    pub bundle_id: String,
    pub storefront_id: String,
    pub currency: String,
    pub amount: Option<i64>,
    pub amount_decimal: Option<String>,
    pub billing_period: Option<BillingPeriod>,
    pub trial: Option<Trial>,
    /// Defaults to the storefront's tax scheme.
    pub tax_behaviour: Option<TaxKind>,
    /// Defaults to now.
    pub effective_from: Option<DateTime<Utc>>,
}

/// A new version of a price; absent fields keep the latest version's values.
#[derive(Debug, Clone, Default)]
pub struct VersionInput {
    pub amount: Option<i64>,
    pub amount_decimal: Option<String>,
    /// `Some(None)` removes the trial.
    pub trial: Option<Option<Trial>>,
    pub tax_behaviour: Option<TaxKind>,
    pub effective_from: Option<DateTime<Utc>>,
}

/// A price with its versions (oldest first) and the one in effect now.
#[derive(Debug, Clone)]
pub struct PriceView {
    pub price: Price,
    pub versions: Vec<PriceVersion>,
}

impl PriceView {
    /// The version in effect at `at`: the highest version whose `effective_from` has come.
    pub fn version_at(&self, at: DateTime<Utc>) -> Option<&PriceVersion> {
        self.versions.iter().filter(|v| v.effective_from <= at).max_by_key(|v| v.version)
    }
}

/// How far in the past an `effective_from` may lie (clock skew between client and server).
const EFFECTIVE_SKEW: chrono::Duration = chrono::Duration::minutes(5);

fn check_trial(trial: &Option<Trial>, period: &Option<BillingPeriod>, errors: &mut ValidationErrors) {
    if let Some(t) = trial {
        errors.check(t.validate("trial"));
        if period.is_none() {
            errors.push(FieldError::new("trial", "trial_not_allowed", "only recurring prices have trials"));
        }
    }
}

fn version_json(v: &PriceVersion, currency: &Currency) -> serde_json::Value {
    json!({
        "version_id": v.id, "version": v.version, "amount": v.amount, "currency": currency,
        "trial": v.trial, "tax_behaviour": v.tax_behaviour, "effective_from": v.effective_from,
    })
}

async fn load_price(tx: &mut TenantTx, id: &str) -> Result<PriceView> {
    let price = store::get_price(tx, id).await?.ok_or_else(|| not_found("price"))?;
    if !tx.scope().storefront_allowed(&price.storefront_id) {
        return Err(not_found("price"));
    }
    let versions = store::versions_of(tx, std::slice::from_ref(&price.id)).await?;
    Ok(PriceView { price, versions })
}

/// Creates a price and its first version.
pub async fn create_price(ctx: &Ctx, scope: &TenantScope, input: PriceInput) -> Result<PriceView> {
    let now = ctx.clock.now();
    let mut errors = ValidationErrors::default();
    let currency = errors.check(Currency::parse("currency", &input.currency));
    let amount = currency.as_ref().and_then(|c| {
        errors.check(rules::parse_amount("amount", input.amount, input.amount_decimal.as_deref(), c))
    });
    errors.check(rules::price_amount_positive("amount", amount));
    if let Some(p) = &input.billing_period {
        errors.check(p.validate("billing_period"));
    }
    check_trial(&input.trial, &input.billing_period, &mut errors);
    let effective_from = input.effective_from.unwrap_or(now);
    if effective_from < now - EFFECTIVE_SKEW {
        errors.push(FieldError::new("effective_from", "in_the_past", "a price takes effect now or later"));
    }
    errors.finish()?;
    let (Some(currency), Some(amount)) = (currency, amount) else {
        return Err(ServiceError::Internal("validated above".into()));
    };

    let mut tx = write_tx(ctx, scope).await?;
    let field = |f: &'static str, code: &'static str, m: String| -> ServiceError {
        ValidationErrors::from(FieldError::new(f, code, m)).into()
    };
    if !scope.storefront_allowed(&input.storefront_id) {
        return Err(field("storefront_id", "unknown_storefront", "no such storefront".into()));
    }
    let Some(storefront) = store::get_storefront(&mut tx, &input.storefront_id).await? else {
        return Err(field("storefront_id", "unknown_storefront", "no such storefront".into()));
    };
    let Some(bundle) = store::get_bundle(&mut tx, &input.bundle_id).await? else {
        return Err(field("bundle_id", "unknown_bundle", "no such bundle".into()));
    };
    if bundle.status == BundleStatus::Archived {
        return Err(field("bundle_id", "bundle_archived", "an archived bundle cannot get new prices".into()));
    }
    if !storefront.currencies.contains(&currency) {
        return Err(field(
            "currency",
            "currency_not_served",
            format!(
                "storefront {} sells in {}",
                storefront.id,
                storefront.currencies.iter().map(Currency::as_str).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    match (bundle.type_, &input.billing_period) {
        (BundleType::OneTime, Some(_)) => {
            return Err(field(
                "billing_period",
                "period_not_allowed",
                "a one-time bundle has no billing period".into(),
            ))
        }
        (BundleType::Subscription | BundleType::AddOn, None) => {
            return Err(field(
                "billing_period",
                "missing_field",
                format!("a {} bundle needs a billing period", bundle.type_),
            ))
        }
        _ => {}
    }
    let price = Price {
        id: PriceId::new().to_string(),
        bundle_id: bundle.id.clone(),
        storefront_id: storefront.id.clone(),
        currency: currency.clone(),
        billing_period: input.billing_period,
        status: ActiveStatus::Active,
        created_at: now,
        updated_at: now,
    };
    if let Some(twin) = store::active_twin(&mut tx, &price).await? {
        return Err(conflict(
            "price_exists",
            format!("active price {} already sells this bundle in this storefront, currency and period; add a version to it", twin.id),
            None,
        ));
    }
    let version = PriceVersion {
        id: PriceVersionId::new().to_string(),
        price_id: price.id.clone(),
        version: 1,
        amount,
        trial: input.trial,
        tax_behaviour: input.tax_behaviour.unwrap_or(storefront.tax.kind),
        effective_from,
        created_at: now,
    };
    store::insert_price(&mut tx, &price).await.map_err(|e| {
        unique_as(
            e,
            "prices_active_key",
            "price_exists",
            "an active price already sells this bundle in this storefront, currency and period",
            "bundle_id",
        )
    })?;
    store::insert_price_version(&mut tx, &version).await?;
    let r = Some(("price", price.id.as_str()));
    tx.action(
        now,
        "price.create",
        r,
        json!({"bundle_id": price.bundle_id, "storefront_id": price.storefront_id}),
    )
    .await?;
    tx.outcome(
        now,
        "price.created",
        r,
        json!({"bundle_id": price.bundle_id, "storefront_id": price.storefront_id, "billing_period": price.billing_period,
               "first_version": version_json(&version, &currency)}),
    )
    .await?;
    tx.commit().await?;
    Ok(PriceView { price, versions: vec![version] })
}

/// Adds a version to a price: the price changes from `effective_from` for new sales;
/// subscriptions keep the version they have until a price change is applied to them.
pub async fn add_price_version(
    ctx: &Ctx,
    scope: &TenantScope,
    id: &str,
    input: VersionInput,
) -> Result<PriceView> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let mut pv = load_price(&mut tx, id).await?;
    if pv.price.status == ActiveStatus::Archived {
        return Err(conflict("price_archived", "an archived price gets no new versions", None));
    }
    let latest = pv
        .versions
        .last()
        .cloned()
        .ok_or_else(|| StoreError::Corrupt(format!("price {id} has no version")))?;
    let mut errors = ValidationErrors::default();
    let amount = if input.amount.is_none() && input.amount_decimal.is_none() {
        Some(latest.amount)
    } else {
        errors.check(rules::parse_amount(
            "amount",
            input.amount,
            input.amount_decimal.as_deref(),
            &pv.price.currency,
        ))
    };
    errors.check(rules::price_amount_positive("amount", amount));
    let trial = input.trial.unwrap_or(latest.trial);
    check_trial(&trial, &pv.price.billing_period, &mut errors);
    let effective_from = input.effective_from.unwrap_or(now);
    if effective_from < now - EFFECTIVE_SKEW {
        errors.push(FieldError::new("effective_from", "in_the_past", "a version takes effect now or later"));
    } else if effective_from < latest.effective_from {
        errors.push(FieldError::new(
            "effective_from",
            "before_latest_version",
            format!(
                "version {} takes effect at {}; a new version cannot take effect earlier",
                latest.version, latest.effective_from
            ),
        ));
    }
    errors.finish()?;
    let version = PriceVersion {
        id: PriceVersionId::new().to_string(),
        price_id: id.to_owned(),
        version: latest.version + 1,
        amount: amount.unwrap_or(latest.amount),
        trial,
        tax_behaviour: input.tax_behaviour.unwrap_or(latest.tax_behaviour),
        effective_from,
        created_at: now,
    };
    store::insert_price_version(&mut tx, &version).await.map_err(|e| {
        unique_as(
            e,
            "price_versions_version_key",
            "concurrent_version",
            "another version was added at the same time; retry",
            "version",
        )
    })?;
    let r = Some(("price", id));
    tx.action(now, "price.version.create", r, json!({"version": version.version})).await?;
    tx.outcome(
        now,
        "price.version.created",
        r,
        json!({"previous": version_json(&latest, &pv.price.currency), "new": version_json(&version, &pv.price.currency)}),
    )
    .await?;
    tx.commit().await?;
    pv.versions.push(version);
    Ok(pv)
}

/// Archives a price: no longer sold; subscriptions on it continue.
pub async fn archive_price(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<PriceView> {
    let now = ctx.clock.now();
    let mut tx = write_tx(ctx, scope).await?;
    let mut pv = load_price(&mut tx, id).await?;
    if pv.price.status == ActiveStatus::Archived {
        return Ok(pv);
    }
    store::set_price_status(&mut tx, id, ActiveStatus::Archived, now).await?;
    let r = Some(("price", id));
    tx.action(now, "price.archive", r, json!({})).await?;
    tx.outcome(now, "price.archived", r, json!({"status": "archived"})).await?;
    tx.commit().await?;
    pv.price.status = ActiveStatus::Archived;
    pv.price.updated_at = now;
    Ok(pv)
}

/// One price with its versions.
pub async fn get_price(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<PriceView> {
    let mut tx = read_tx(ctx, scope).await?;
    let p = load_price(&mut tx, id).await?;
    tx.commit().await?;
    Ok(p)
}

/// Prices, a page at a time, with their versions.
pub async fn list_prices(
    ctx: &Ctx,
    scope: &TenantScope,
    mut filter: PriceFilter,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<PriceView>, bool)> {
    let mut tx = read_tx(ctx, scope).await?;
    filter.storefronts = scope.storefront_restriction().map(<[String]>::to_vec);
    let (prices, more) = store::list_prices(&mut tx, &filter, limit, starting_after).await?;
    let ids: Vec<String> = prices.iter().map(|p| p.id.clone()).collect();
    let mut versions = store::versions_of(&mut tx, &ids).await?;
    tx.commit().await?;
    let views = prices
        .into_iter()
        .map(|price| {
            let (mine, rest): (Vec<_>, Vec<_>) = versions.drain(..).partition(|v| v.price_id == price.id);
            versions = rest;
            PriceView { price, versions: mine }
        })
        .collect();
    Ok((views, more))
}

// ---------------------------------------------------------------------------------------------
// The catalog a storefront shows

/// One bundle as a storefront sells it: its entitlements and its prices in effect now.
#[derive(Debug, Clone)]
pub struct CatalogItem {
    pub bundle: BundleView,
    /// (price, version in effect now)
    pub prices: Vec<(Price, PriceVersion)>,
}

/// What a showcase page needs: the storefront and its active bundles with current prices.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub storefront: Storefront,
    pub items: Vec<CatalogItem>,
}

/// The catalog of a storefront: active bundles that have an active price in effect now, by
/// bundle key. An inactive storefront shows nothing for sale. `currency` narrows the prices.
pub async fn storefront_catalog(
    ctx: &Ctx,
    scope: &TenantScope,
    storefront_id: &str,
    currency: Option<&str>,
) -> Result<Catalog> {
    let currency = match currency {
        Some(c) => Some(Currency::parse("currency", c).map_err(ValidationErrors::from)?),
        None => None,
    };
    let mut tx = read_tx(ctx, scope).await?;
    let catalog = storefront_catalog_in(&mut tx, ctx.clock.now(), storefront_id, currency.as_ref()).await?;
    tx.commit().await?;
    Ok(catalog)
}

/// [`storefront_catalog`] read in the caller's transaction (which has checked `catalog.read`).
pub(crate) async fn storefront_catalog_in(
    tx: &mut TenantTx,
    now: DateTime<Utc>,
    storefront_id: &str,
    currency: Option<&Currency>,
) -> Result<Catalog> {
    // From the process's read cache in a write transaction (an offer's; decision 0011).
    check_storefront_allowed(tx.scope(), storefront_id)?;
    let storefront =
        store::get_storefront_cached(tx, storefront_id).await?.ok_or_else(|| not_found("storefront"))?;
    if storefront.status == StorefrontStatus::Inactive {
        return Ok(Catalog { storefront, items: vec![] });
    }
    let store::Offered { prices, versions, bundles } = store::offered_cached(tx, storefront_id).await?;
    let prices: Vec<Price> =
        prices.into_iter().filter(|p| currency.is_none_or(|c| *c == p.currency)).collect();
    let all = store::all_entitlements_cached(tx).await?;
    let mut items: Vec<CatalogItem> = bundles
        .into_iter()
        .filter_map(|b| {
            let mine: Vec<(Price, PriceVersion)> = prices
                .iter()
                .filter(|p| p.bundle_id == b.id)
                .filter_map(|p| {
                    let pv = PriceView {
                        price: p.clone(),
                        versions: versions.iter().filter(|v| v.price_id == p.id).cloned().collect(),
                    };
                    pv.version_at(now).cloned().map(|v| (p.clone(), v))
                })
                .collect();
            (!mine.is_empty()).then(|| CatalogItem { bundle: view(b, &all), prices: mine })
        })
        .collect();
    items.sort_by(|a, b| a.bundle.bundle.key.cmp(&b.bundle.bundle.key));
    Ok(Catalog { storefront, items })
}
