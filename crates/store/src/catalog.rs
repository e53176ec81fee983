//! The catalog's storage: storefronts, entitlements, bundles (with their entitlements), prices
//! and their immutable versions. Everything is in the scope's tenant and environment.

use std::str::FromStr;

use azotte_domain::catalog::{
    ActiveStatus, BillingPeriod, BundleStatus, BundleType, Currency, DunningPolicy, EntitlementKind,
    LifecyclePolicy, PeriodUnit, StorefrontStatus, StorefrontType, TaxKind, TaxScheme, Trial,
};
use azotte_domain::invoice::FiscalProvider;
use chrono::{DateTime, Utc};
use sea_query::{Alias, Expr, Iden, Order, Query, SelectStatement};
use sqlx::types::Json;

use crate::{Result, StoreError, TenantTx};

fn parse<T: FromStr>(what: &str, s: &str) -> Result<T> {
    s.parse().map_err(|_| StoreError::Corrupt(format!("{what} `{s}`")))
}

/// Adds the scope's tenant and environment to a query on `table`.
fn scoped<T: Iden + Copy + 'static>(q: &mut SelectStatement, tx: &TenantTx, tenant_col: T, env_col: T) {
    q.cond_where(tx.in_scope(tenant_col, env_col));
}

/// Cursor pagination: rows after `starting_after` (ids sort by creation), `limit` + 1 fetched to
/// know whether there are more.
fn page<T>(mut rows: Vec<T>, limit: u32) -> (Vec<T>, bool) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    (rows, more)
}

// ---------------------------------------------------------------------------------------------
// Storefronts

#[derive(Iden, Clone, Copy)]
enum Storefronts {
    Table,
    TenantId,
    Environment,
    Id,
    Name,
    Type,
    DefaultCurrency,
    Currencies,
    DefaultLanguage,
    Countries,
    Tax,
    Status,
    Dunning,
    InvoicePrefix,
    CreatedAt,
    UpdatedAt,
    Lifecycle,
    Fiscalization,
}

const STOREFRONT_COLUMNS: [Storefronts; 16] = [
    Storefronts::Id,
    Storefronts::Name,
    Storefronts::Type,
    Storefronts::DefaultCurrency,
    Storefronts::Currencies,
    Storefronts::DefaultLanguage,
    Storefronts::Countries,
    Storefronts::Tax,
    Storefronts::Status,
    Storefronts::Dunning,
    Storefronts::InvoicePrefix,
    Storefronts::CreatedAt,
    Storefronts::UpdatedAt,
    Storefronts::Lifecycle,
    Storefronts::Fiscalization,
    Storefronts::Environment,
];

/// A storefront.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storefront {
    pub id: String,
    pub name: String,
    pub type_: StorefrontType,
    pub default_currency: Currency,
    /// Every currency it sells in, the default first.
    pub currencies: Vec<Currency>,
    pub default_language: String,
    pub countries: Vec<String>,
    pub tax: TaxScheme,
    pub status: StorefrontStatus,
    pub dunning: DunningPolicy,
    pub lifecycle: LifecyclePolicy,
    /// Who fiscalizes its invoices and credit notes (default `none`).
    pub fiscalization: FiscalProvider,
    pub invoice_prefix: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct StorefrontRow {
    id: String,
    name: String,
    #[sqlx(rename = "type")]
    type_: String,
    default_currency: String,
    currencies: Json<Vec<Currency>>,
    default_language: String,
    countries: Json<Vec<String>>,
    tax: Json<TaxScheme>,
    status: String,
    dunning: Json<DunningPolicy>,
    lifecycle: Json<LifecyclePolicy>,
    fiscalization: String,
    invoice_prefix: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<StorefrontRow> for Storefront {
    type Error = StoreError;
    fn try_from(r: StorefrontRow) -> Result<Self> {
        Ok(Storefront {
            type_: parse("storefront type", &r.type_)?,
            default_currency: Currency::parse("default_currency", &r.default_currency)
                .map_err(|e| StoreError::Corrupt(e.message))?,
            status: parse("storefront status", &r.status)?,
            fiscalization: parse("fiscalization provider", &r.fiscalization)?,
            id: r.id,
            name: r.name,
            currencies: r.currencies.0,
            default_language: r.default_language,
            countries: r.countries.0,
            tax: r.tax.0,
            dunning: r.dunning.0,
            lifecycle: r.lifecycle.0,
            invoice_prefix: r.invoice_prefix,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn storefront_values(s: &Storefront) -> [sea_query::SimpleExpr; 15] {
    [
        s.id.clone().into(),
        s.name.clone().into(),
        s.type_.as_str().into(),
        s.default_currency.as_str().into(),
        serde_json::json!(s.currencies).into(),
        s.default_language.clone().into(),
        serde_json::json!(s.countries).into(),
        serde_json::json!(s.tax).into(),
        s.status.as_str().into(),
        serde_json::json!(s.dunning).into(),
        s.invoice_prefix.clone().into(),
        s.created_at.into(),
        s.updated_at.into(),
        serde_json::json!(s.lifecycle).into(),
        s.fiscalization.as_str().into(),
    ]
}

/// Adds a storefront.
pub async fn insert_storefront(tx: &mut TenantTx, s: &Storefront) -> Result<()> {
    let (tenant, env) = (tx.scope().tenant_id().to_string(), tx.scope().environment().as_str());
    let mut values: Vec<sea_query::SimpleExpr> = storefront_values(s).into();
    values.push(env.into());
    values.push(tenant.into());
    let mut cols = STOREFRONT_COLUMNS.to_vec();
    cols.push(Storefronts::TenantId);
    let q = Query::insert().into_table(Storefronts::Table).columns(cols).values_panic(values).to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Writes every field of an existing storefront.
pub async fn update_storefront(tx: &mut TenantTx, s: &Storefront) -> Result<()> {
    let values = storefront_values(s);
    let q = Query::update()
        .table(Storefronts::Table)
        .values(STOREFRONT_COLUMNS[1..15].iter().copied().zip(values.into_iter().skip(1)))
        .cond_where(tx.in_scope(Storefronts::TenantId, Storefronts::Environment))
        .and_where(Expr::col(Storefronts::Id).eq(s.id.clone()))
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn select_storefronts(tx: &TenantTx) -> SelectStatement {
    let mut q =
        Query::select().columns(STOREFRONT_COLUMNS[..15].to_vec()).from(Storefronts::Table).to_owned();
    scoped(&mut q, tx, Storefronts::TenantId, Storefronts::Environment);
    q
}

/// One storefront.
pub async fn get_storefront(tx: &mut TenantTx, id: &str) -> Result<Option<Storefront>> {
    let q = select_storefronts(tx).and_where(Expr::col(Storefronts::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<StorefrontRow>(&q).await?.map(Storefront::try_from).transpose()
}

/// Storefronts in id order after `starting_after`; only `only` when given (a key's restriction).
pub async fn list_storefronts(
    tx: &mut TenantTx,
    limit: u32,
    starting_after: Option<&str>,
    only: Option<&[String]>,
) -> Result<(Vec<Storefront>, bool)> {
    let mut q =
        select_storefronts(tx).order_by(Storefronts::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(after) = starting_after {
        q.and_where(Expr::col(Storefronts::Id).gt(after));
    }
    if let Some(only) = only {
        q.and_where(Expr::col(Storefronts::Id).is_in(only.iter().cloned()));
    }
    let rows = tx.tx.fetch_all::<StorefrontRow>(&q).await?;
    let rows = rows.into_iter().map(Storefront::try_from).collect::<Result<Vec<_>>>()?;
    Ok(page(rows, limit))
}

#[derive(Iden, Clone, Copy)]
enum StorefrontInvoicePrefixes {
    Table,
    TenantId,
    Environment,
    Prefix,
    StorefrontId,
    Since,
}

#[derive(sqlx::FromRow)]
struct PrefixOf {
    storefront_id: String,
    prefix: String,
}

/// Every invoice prefix each storefront of the tenant environment has had, `(storefront id,
/// prefix)`, whatever a key's storefront restriction: invoice numbers must be unique across all
/// of them. On PostgreSQL the call first takes a transaction-scoped advisory lock of the tenant
/// environment's prefixes, so two transactions choosing a prefix cannot both pick the same one
/// (SQLite's one writer already serializes them).
pub async fn invoice_prefixes_locked(tx: &mut TenantTx) -> Result<Vec<(String, String)>> {
    let key =
        format!("azotte.invoice_prefix:{}:{}", tx.scope().tenant_id(), tx.scope().environment().as_str());
    if let crate::exec::Tx::Postgres(t) = &mut tx.tx {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(key).execute(t.conn()?).await?;
    }
    let q = Query::select()
        .columns([StorefrontInvoicePrefixes::StorefrontId, StorefrontInvoicePrefixes::Prefix])
        .from(StorefrontInvoicePrefixes::Table)
        .cond_where(tx.in_scope(StorefrontInvoicePrefixes::TenantId, StorefrontInvoicePrefixes::Environment))
        .to_owned();
    let mut rows: Vec<(String, String)> =
        tx.tx.fetch_all::<PrefixOf>(&q).await?.into_iter().map(|r| (r.storefront_id, r.prefix)).collect();
    // And the current ones, which the record has too; read all the same, so that a record
    // missing rows (written around it) cannot free a prefix in use.
    let current = Query::select()
        .expr_as(Expr::col(Storefronts::Id), Alias::new("storefront_id"))
        .expr_as(Expr::col(Storefronts::InvoicePrefix), Alias::new("prefix"))
        .from(Storefronts::Table)
        .cond_where(tx.in_scope(Storefronts::TenantId, Storefronts::Environment))
        .to_owned();
    rows.extend(
        tx.tx.fetch_all::<PrefixOf>(&current).await?.into_iter().map(|r| (r.storefront_id, r.prefix)),
    );
    Ok(rows)
}

/// Records that a storefront numbers its invoices with `prefix` from now on (kept for good).
pub async fn record_invoice_prefix(
    tx: &mut TenantTx,
    storefront_id: &str,
    prefix: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let q = Query::insert()
        .into_table(StorefrontInvoicePrefixes::Table)
        .columns([
            StorefrontInvoicePrefixes::TenantId,
            StorefrontInvoicePrefixes::Environment,
            StorefrontInvoicePrefixes::Prefix,
            StorefrontInvoicePrefixes::StorefrontId,
            StorefrontInvoicePrefixes::Since,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            prefix.into(),
            storefront_id.into(),
            now.into(),
        ])
        .on_conflict(sea_query::OnConflict::new().do_nothing().to_owned())
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Removes a storefront (the caller has checked that nothing references it); the invoice
/// prefixes recorded for it go with it (`ON DELETE CASCADE`).
pub async fn delete_storefront(tx: &mut TenantTx, id: &str) -> Result<bool> {
    let q = Query::delete()
        .from_table(Storefronts::Table)
        .cond_where(tx.in_scope(Storefronts::TenantId, Storefronts::Environment))
        .and_where(Expr::col(Storefronts::Id).eq(id))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

// ---------------------------------------------------------------------------------------------
// Entitlements

#[derive(Iden, Clone, Copy)]
enum Entitlements {
    Table,
    TenantId,
    Environment,
    Id,
    Key,
    Name,
    Kind,
    Unit,
    Includes,
    Status,
    CreatedAt,
    UpdatedAt,
}

const ENTITLEMENT_COLUMNS: [Entitlements; 9] = [
    Entitlements::Id,
    Entitlements::Key,
    Entitlements::Name,
    Entitlements::Kind,
    Entitlements::Unit,
    Entitlements::Includes,
    Entitlements::Status,
    Entitlements::CreatedAt,
    Entitlements::UpdatedAt,
];

/// An entitlement: what a customer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub id: String,
    pub key: String,
    pub name: String,
    pub kind: EntitlementKind,
    /// The unit of a quantity (`seats`, `GB`); none for a boolean.
    pub unit: Option<String>,
    /// Keys of entitlements this one implies.
    pub includes: Vec<String>,
    pub status: ActiveStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct EntitlementRow {
    id: String,
    key: String,
    name: String,
    kind: String,
    unit: Option<String>,
    includes: Json<Vec<String>>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<EntitlementRow> for Entitlement {
    type Error = StoreError;
    fn try_from(r: EntitlementRow) -> Result<Self> {
        Ok(Entitlement {
            kind: parse("entitlement kind", &r.kind)?,
            status: parse("entitlement status", &r.status)?,
            id: r.id,
            key: r.key,
            name: r.name,
            unit: r.unit,
            includes: r.includes.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn entitlement_values(e: &Entitlement) -> [sea_query::SimpleExpr; 9] {
    [
        e.id.clone().into(),
        e.key.clone().into(),
        e.name.clone().into(),
        e.kind.as_str().into(),
        e.unit.clone().into(),
        serde_json::json!(e.includes).into(),
        e.status.as_str().into(),
        e.created_at.into(),
        e.updated_at.into(),
    ]
}

/// Adds an entitlement (a taken key is `UniqueViolation { entitlements_key_key }`).
pub async fn insert_entitlement(tx: &mut TenantTx, e: &Entitlement) -> Result<()> {
    let mut cols = ENTITLEMENT_COLUMNS.to_vec();
    cols.extend([Entitlements::TenantId, Entitlements::Environment]);
    let mut values: Vec<sea_query::SimpleExpr> = entitlement_values(e).into();
    values.push(tx.scope().tenant_id().to_string().into());
    values.push(tx.scope().environment().as_str().into());
    let q = Query::insert().into_table(Entitlements::Table).columns(cols).values_panic(values).to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Writes the mutable fields of an entitlement (name, unit, includes, status, updated_at).
pub async fn update_entitlement(tx: &mut TenantTx, e: &Entitlement) -> Result<()> {
    let q = Query::update()
        .table(Entitlements::Table)
        .values([
            (Entitlements::Name, e.name.clone().into()),
            (Entitlements::Unit, e.unit.clone().into()),
            (Entitlements::Includes, serde_json::json!(e.includes).into()),
            (Entitlements::Status, e.status.as_str().into()),
            (Entitlements::UpdatedAt, e.updated_at.into()),
        ])
        .cond_where(tx.in_scope(Entitlements::TenantId, Entitlements::Environment))
        .and_where(Expr::col(Entitlements::Id).eq(e.id.clone()))
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn select_entitlements(tx: &TenantTx) -> SelectStatement {
    let mut q = Query::select().columns(ENTITLEMENT_COLUMNS).from(Entitlements::Table).to_owned();
    scoped(&mut q, tx, Entitlements::TenantId, Entitlements::Environment);
    q
}

/// One entitlement by id.
pub async fn get_entitlement(tx: &mut TenantTx, id: &str) -> Result<Option<Entitlement>> {
    let q = select_entitlements(tx).and_where(Expr::col(Entitlements::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<EntitlementRow>(&q).await?.map(Entitlement::try_from).transpose()
}

/// Every entitlement of the environment, by key (for resolving keys and checking cycles).
pub async fn all_entitlements(tx: &mut TenantTx) -> Result<Vec<Entitlement>> {
    let q = select_entitlements(tx).order_by(Entitlements::Key, Order::Asc).to_owned();
    tx.tx.fetch_all::<EntitlementRow>(&q).await?.into_iter().map(Entitlement::try_from).collect()
}

/// Entitlements in id order after `starting_after`, optionally with one status.
pub async fn list_entitlements(
    tx: &mut TenantTx,
    limit: u32,
    starting_after: Option<&str>,
    status: Option<ActiveStatus>,
) -> Result<(Vec<Entitlement>, bool)> {
    let mut q =
        select_entitlements(tx).order_by(Entitlements::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(after) = starting_after {
        q.and_where(Expr::col(Entitlements::Id).gt(after));
    }
    if let Some(s) = status {
        q.and_where(Expr::col(Entitlements::Status).eq(s.as_str()));
    }
    let rows = tx.tx.fetch_all::<EntitlementRow>(&q).await?;
    Ok(page(rows.into_iter().map(Entitlement::try_from).collect::<Result<Vec<_>>>()?, limit))
}

/// Removes an entitlement (the caller has checked that nothing references it).
pub async fn delete_entitlement(tx: &mut TenantTx, id: &str) -> Result<bool> {
    let q = Query::delete()
        .from_table(Entitlements::Table)
        .cond_where(tx.in_scope(Entitlements::TenantId, Entitlements::Environment))
        .and_where(Expr::col(Entitlements::Id).eq(id))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

// ---------------------------------------------------------------------------------------------
// Bundles

#[derive(Iden, Clone, Copy)]
enum Bundles {
    Table,
    TenantId,
    Environment,
    Id,
    Key,
    Name,
    Description,
    Type,
    Family,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden, Clone, Copy)]
enum BundleEntitlements {
    Table,
    TenantId,
    Environment,
    BundleId,
    EntitlementId,
    Quantity,
}

const BUNDLE_COLUMNS: [Bundles; 9] = [
    Bundles::Id,
    Bundles::Key,
    Bundles::Name,
    Bundles::Description,
    Bundles::Type,
    Bundles::Family,
    Bundles::Status,
    Bundles::CreatedAt,
    Bundles::UpdatedAt,
];

/// One entitlement of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntitlement {
    pub entitlement_id: String,
    /// For quantity entitlements: how many.
    pub quantity: Option<i64>,
}

/// A bundle: what is sold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub type_: BundleType,
    /// Groups bundles for trial limits and upgrade paths.
    pub family: String,
    pub status: BundleStatus,
    pub entitlements: Vec<BundleEntitlement>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct BundleRow {
    id: String,
    key: String,
    name: String,
    description: String,
    #[sqlx(rename = "type")]
    type_: String,
    family: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct BundleEntitlementRow {
    bundle_id: String,
    entitlement_id: String,
    quantity: Option<i64>,
}

fn bundle_values(b: &Bundle) -> [sea_query::SimpleExpr; 9] {
    [
        b.id.clone().into(),
        b.key.clone().into(),
        b.name.clone().into(),
        b.description.clone().into(),
        b.type_.as_str().into(),
        b.family.clone().into(),
        b.status.as_str().into(),
        b.created_at.into(),
        b.updated_at.into(),
    ]
}

async fn write_bundle_entitlements(tx: &mut TenantTx, b: &Bundle) -> Result<()> {
    let (tenant, env) = (tx.scope().tenant_id().to_string(), tx.scope().environment().as_str());
    let q = Query::delete()
        .from_table(BundleEntitlements::Table)
        .cond_where(tx.in_scope(BundleEntitlements::TenantId, BundleEntitlements::Environment))
        .and_where(Expr::col(BundleEntitlements::BundleId).eq(b.id.clone()))
        .to_owned();
    tx.write(&q).await?;
    if b.entitlements.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert()
        .into_table(BundleEntitlements::Table)
        .columns([
            BundleEntitlements::TenantId,
            BundleEntitlements::Environment,
            BundleEntitlements::BundleId,
            BundleEntitlements::EntitlementId,
            BundleEntitlements::Quantity,
        ])
        .to_owned();
    for e in &b.entitlements {
        q.values_panic([
            tenant.clone().into(),
            env.into(),
            b.id.clone().into(),
            e.entitlement_id.clone().into(),
            e.quantity.into(),
        ]);
    }
    tx.write(&q).await?;
    Ok(())
}

/// Adds a bundle with its entitlements (a taken key is `UniqueViolation { bundles_key_key }`).
pub async fn insert_bundle(tx: &mut TenantTx, b: &Bundle) -> Result<()> {
    let mut cols = BUNDLE_COLUMNS.to_vec();
    cols.extend([Bundles::TenantId, Bundles::Environment]);
    let mut values: Vec<sea_query::SimpleExpr> = bundle_values(b).into();
    values.push(tx.scope().tenant_id().to_string().into());
    values.push(tx.scope().environment().as_str().into());
    let q = Query::insert().into_table(Bundles::Table).columns(cols).values_panic(values).to_owned();
    tx.write(&q).await?;
    write_bundle_entitlements(tx, b).await
}

/// Writes the mutable fields of a bundle and replaces its entitlements.
pub async fn update_bundle(tx: &mut TenantTx, b: &Bundle) -> Result<()> {
    let q = Query::update()
        .table(Bundles::Table)
        .values([
            (Bundles::Name, b.name.clone().into()),
            (Bundles::Description, b.description.clone().into()),
            (Bundles::Family, b.family.clone().into()),
            (Bundles::Status, b.status.as_str().into()),
            (Bundles::UpdatedAt, b.updated_at.into()),
        ])
        .cond_where(tx.in_scope(Bundles::TenantId, Bundles::Environment))
        .and_where(Expr::col(Bundles::Id).eq(b.id.clone()))
        .to_owned();
    tx.write(&q).await?;
    write_bundle_entitlements(tx, b).await
}

fn select_bundles(tx: &TenantTx) -> SelectStatement {
    let mut q = Query::select().columns(BUNDLE_COLUMNS).from(Bundles::Table).to_owned();
    scoped(&mut q, tx, Bundles::TenantId, Bundles::Environment);
    q
}

async fn with_entitlements(tx: &mut TenantTx, rows: Vec<BundleRow>) -> Result<Vec<Bundle>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select()
        .columns([
            BundleEntitlements::BundleId,
            BundleEntitlements::EntitlementId,
            BundleEntitlements::Quantity,
        ])
        .from(BundleEntitlements::Table)
        .and_where(Expr::col(BundleEntitlements::BundleId).is_in(rows.iter().map(|r| r.id.clone())))
        .order_by(BundleEntitlements::EntitlementId, Order::Asc)
        .to_owned();
    scoped(&mut q, tx, BundleEntitlements::TenantId, BundleEntitlements::Environment);
    let links = tx.tx.fetch_all::<BundleEntitlementRow>(&q).await?;
    rows.into_iter()
        .map(|r| {
            let entitlements = links
                .iter()
                .filter(|l| l.bundle_id == r.id)
                .map(|l| BundleEntitlement { entitlement_id: l.entitlement_id.clone(), quantity: l.quantity })
                .collect();
            Ok(Bundle {
                type_: parse("bundle type", &r.type_)?,
                status: parse("bundle status", &r.status)?,
                id: r.id,
                key: r.key,
                name: r.name,
                description: r.description,
                family: r.family,
                entitlements,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        })
        .collect()
}

/// One bundle by id, with its entitlements.
pub async fn get_bundle(tx: &mut TenantTx, id: &str) -> Result<Option<Bundle>> {
    let q = select_bundles(tx).and_where(Expr::col(Bundles::Id).eq(id)).to_owned();
    let rows: Vec<BundleRow> = tx.tx.fetch_optional::<BundleRow>(&q).await?.into_iter().collect();
    Ok(with_entitlements(tx, rows).await?.pop())
}

/// Bundles by id, with their entitlements.
pub async fn bundles_by_id(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<Bundle>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_bundles(tx)
        .and_where(Expr::col(Bundles::Id).is_in(ids.iter().cloned()))
        .order_by(Bundles::Id, Order::Asc)
        .to_owned();
    let rows = tx.tx.fetch_all::<BundleRow>(&q).await?;
    with_entitlements(tx, rows).await
}

/// Bundles in id order after `starting_after`, optionally with one status.
pub async fn list_bundles(
    tx: &mut TenantTx,
    limit: u32,
    starting_after: Option<&str>,
    status: Option<BundleStatus>,
) -> Result<(Vec<Bundle>, bool)> {
    let mut q = select_bundles(tx).order_by(Bundles::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(after) = starting_after {
        q.and_where(Expr::col(Bundles::Id).gt(after));
    }
    if let Some(s) = status {
        q.and_where(Expr::col(Bundles::Status).eq(s.as_str()));
    }
    let (rows, more) = page(tx.tx.fetch_all::<BundleRow>(&q).await?, limit);
    Ok((with_entitlements(tx, rows).await?, more))
}

/// How many bundles include an entitlement.
pub async fn bundles_using_entitlement(tx: &mut TenantTx, entitlement_id: &str) -> Result<Vec<String>> {
    #[derive(sqlx::FromRow)]
    struct BundleIdRow {
        bundle_id: String,
    }
    let mut q = Query::select()
        .column(BundleEntitlements::BundleId)
        .from(BundleEntitlements::Table)
        .and_where(Expr::col(BundleEntitlements::EntitlementId).eq(entitlement_id))
        .order_by(BundleEntitlements::BundleId, Order::Asc)
        .limit(10)
        .to_owned();
    scoped(&mut q, tx, BundleEntitlements::TenantId, BundleEntitlements::Environment);
    Ok(tx.tx.fetch_all::<BundleIdRow>(&q).await?.into_iter().map(|r| r.bundle_id).collect())
}

/// Removes a bundle and its entitlement links (the caller has checked it has no prices).
pub async fn delete_bundle(tx: &mut TenantTx, id: &str) -> Result<bool> {
    let q = Query::delete()
        .from_table(BundleEntitlements::Table)
        .cond_where(tx.in_scope(BundleEntitlements::TenantId, BundleEntitlements::Environment))
        .and_where(Expr::col(BundleEntitlements::BundleId).eq(id))
        .to_owned();
    tx.write(&q).await?;
    let q = Query::delete()
        .from_table(Bundles::Table)
        .cond_where(tx.in_scope(Bundles::TenantId, Bundles::Environment))
        .and_where(Expr::col(Bundles::Id).eq(id))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

// ---------------------------------------------------------------------------------------------
// Prices

#[derive(Iden, Clone, Copy)]
enum Prices {
    Table,
    TenantId,
    Environment,
    Id,
    BundleId,
    StorefrontId,
    Currency,
    PeriodUnit,
    PeriodCount,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden, Clone, Copy)]
enum PriceVersions {
    Table,
    TenantId,
    Environment,
    Id,
    PriceId,
    Version,
    Amount,
    TrialDays,
    TrialPaymentMethodRequired,
    TaxBehaviour,
    EffectiveFrom,
    CreatedAt,
}

const PRICE_COLUMNS: [Prices; 10] = [
    Prices::Id,
    Prices::BundleId,
    Prices::StorefrontId,
    Prices::Currency,
    Prices::PeriodUnit,
    Prices::PeriodCount,
    Prices::Status,
    Prices::CreatedAt,
    Prices::UpdatedAt,
    Prices::Environment,
];

const VERSION_COLUMNS: [PriceVersions; 9] = [
    PriceVersions::Id,
    PriceVersions::PriceId,
    PriceVersions::Version,
    PriceVersions::Amount,
    PriceVersions::TrialDays,
    PriceVersions::TrialPaymentMethodRequired,
    PriceVersions::TaxBehaviour,
    PriceVersions::EffectiveFrom,
    PriceVersions::CreatedAt,
];

/// A price: a bundle in a storefront, in one currency and billing period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub id: String,
    pub bundle_id: String,
    pub storefront_id: String,
    pub currency: Currency,
    /// None for one-time bundles.
    pub billing_period: Option<BillingPeriod>,
    pub status: ActiveStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One immutable version of a price: what it costs from `effective_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    pub id: String,
    pub price_id: String,
    pub version: i32,
    /// Minor units of the price's currency.
    pub amount: i64,
    pub trial: Option<Trial>,
    pub tax_behaviour: TaxKind,
    pub effective_from: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct PriceRow {
    id: String,
    bundle_id: String,
    storefront_id: String,
    currency: String,
    period_unit: Option<String>,
    period_count: Option<i32>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<PriceRow> for Price {
    type Error = StoreError;
    fn try_from(r: PriceRow) -> Result<Self> {
        let billing_period = match (r.period_unit, r.period_count) {
            (Some(u), Some(c)) => Some(BillingPeriod {
                unit: parse::<PeriodUnit>("period unit", &u)?,
                count: u32::try_from(c).map_err(|_| StoreError::Corrupt("period count".into()))?,
            }),
            (None, None) => None,
            _ => return Err(StoreError::Corrupt(format!("price {} has half a billing period", r.id))),
        };
        Ok(Price {
            currency: Currency::parse("currency", &r.currency).map_err(|e| StoreError::Corrupt(e.message))?,
            status: parse("price status", &r.status)?,
            id: r.id,
            bundle_id: r.bundle_id,
            storefront_id: r.storefront_id,
            billing_period,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    id: String,
    price_id: String,
    version: i32,
    amount: i64,
    trial_days: Option<i32>,
    trial_payment_method_required: Option<bool>,
    tax_behaviour: String,
    effective_from: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl TryFrom<VersionRow> for PriceVersion {
    type Error = StoreError;
    fn try_from(r: VersionRow) -> Result<Self> {
        let trial = match r.trial_days {
            Some(d) => Some(Trial {
                days: u32::try_from(d).map_err(|_| StoreError::Corrupt("trial days".into()))?,
                payment_method_required: r.trial_payment_method_required.unwrap_or(true),
            }),
            None => None,
        };
        Ok(PriceVersion {
            tax_behaviour: parse("tax behaviour", &r.tax_behaviour)?,
            id: r.id,
            price_id: r.price_id,
            version: r.version,
            amount: r.amount,
            trial,
            effective_from: r.effective_from,
            created_at: r.created_at,
        })
    }
}

/// Adds a price (its first version is added with [`insert_price_version`]).
pub async fn insert_price(tx: &mut TenantTx, p: &Price) -> Result<()> {
    let mut cols = PRICE_COLUMNS.to_vec();
    cols.push(Prices::TenantId);
    let values: Vec<sea_query::SimpleExpr> = vec![
        p.id.clone().into(),
        p.bundle_id.clone().into(),
        p.storefront_id.clone().into(),
        p.currency.as_str().into(),
        p.billing_period.map(|b| b.unit.as_str()).into(),
        p.billing_period.map(|b| b.count as i32).into(),
        p.status.as_str().into(),
        p.created_at.into(),
        p.updated_at.into(),
        tx.scope().environment().as_str().into(),
        tx.scope().tenant_id().to_string().into(),
    ];
    let q = Query::insert().into_table(Prices::Table).columns(cols).values_panic(values).to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Adds an immutable version of a price.
pub async fn insert_price_version(tx: &mut TenantTx, v: &PriceVersion) -> Result<()> {
    let mut cols = VERSION_COLUMNS.to_vec();
    cols.extend([PriceVersions::TenantId, PriceVersions::Environment]);
    let values: Vec<sea_query::SimpleExpr> = vec![
        v.id.clone().into(),
        v.price_id.clone().into(),
        v.version.into(),
        v.amount.into(),
        v.trial.map(|t| t.days as i32).into(),
        v.trial.map(|t| t.payment_method_required).into(),
        v.tax_behaviour.as_str().into(),
        v.effective_from.into(),
        v.created_at.into(),
        tx.scope().tenant_id().to_string().into(),
        tx.scope().environment().as_str().into(),
    ];
    let q = Query::insert().into_table(PriceVersions::Table).columns(cols).values_panic(values).to_owned();
    tx.write(&q).await?;
    Ok(())
}

/// Sets a price's status.
pub async fn set_price_status(
    tx: &mut TenantTx,
    id: &str,
    status: ActiveStatus,
    now: DateTime<Utc>,
) -> Result<()> {
    let q = Query::update()
        .table(Prices::Table)
        .values([(Prices::Status, status.as_str().into()), (Prices::UpdatedAt, now.into())])
        .cond_where(tx.in_scope(Prices::TenantId, Prices::Environment))
        .and_where(Expr::col(Prices::Id).eq(id))
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn select_prices(tx: &TenantTx) -> SelectStatement {
    let mut q = Query::select().columns(PRICE_COLUMNS[..9].to_vec()).from(Prices::Table).to_owned();
    scoped(&mut q, tx, Prices::TenantId, Prices::Environment);
    q
}

/// One price by id.
pub async fn get_price(tx: &mut TenantTx, id: &str) -> Result<Option<Price>> {
    let q = select_prices(tx).and_where(Expr::col(Prices::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<PriceRow>(&q).await?.map(Price::try_from).transpose()
}

/// Filters of a price listing.
#[derive(Debug, Clone, Default)]
pub struct PriceFilter {
    pub bundle_id: Option<String>,
    pub storefront_id: Option<String>,
    pub status: Option<ActiveStatus>,
    /// A key's storefront restriction.
    pub storefronts: Option<Vec<String>>,
}

/// Prices in id order after `starting_after`.
pub async fn list_prices(
    tx: &mut TenantTx,
    f: &PriceFilter,
    limit: u32,
    starting_after: Option<&str>,
) -> Result<(Vec<Price>, bool)> {
    let mut q = select_prices(tx).order_by(Prices::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(after) = starting_after {
        q.and_where(Expr::col(Prices::Id).gt(after));
    }
    if let Some(b) = &f.bundle_id {
        q.and_where(Expr::col(Prices::BundleId).eq(b.clone()));
    }
    if let Some(s) = &f.storefront_id {
        q.and_where(Expr::col(Prices::StorefrontId).eq(s.clone()));
    }
    if let Some(s) = f.status {
        q.and_where(Expr::col(Prices::Status).eq(s.as_str()));
    }
    if let Some(only) = &f.storefronts {
        q.and_where(Expr::col(Prices::StorefrontId).is_in(only.iter().cloned()));
    }
    let rows = tx.tx.fetch_all::<PriceRow>(&q).await?;
    Ok(page(rows.into_iter().map(Price::try_from).collect::<Result<Vec<_>>>()?, limit))
}

/// The active price with the same bundle, storefront, currency and period, if any.
pub async fn active_twin(tx: &mut TenantTx, p: &Price) -> Result<Option<Price>> {
    let mut q = select_prices(tx)
        .and_where(Expr::col(Prices::BundleId).eq(p.bundle_id.clone()))
        .and_where(Expr::col(Prices::StorefrontId).eq(p.storefront_id.clone()))
        .and_where(Expr::col(Prices::Currency).eq(p.currency.as_str()))
        .and_where(Expr::col(Prices::Status).eq(ActiveStatus::Active.as_str()))
        .and_where(Expr::col(Prices::Id).ne(p.id.clone()))
        .to_owned();
    match p.billing_period {
        Some(b) => {
            q.and_where(Expr::col(Prices::PeriodUnit).eq(b.unit.as_str()))
                .and_where(Expr::col(Prices::PeriodCount).eq(b.count as i32));
        }
        None => {
            q.and_where(Expr::col(Prices::PeriodUnit).is_null());
        }
    }
    tx.tx.fetch_optional::<PriceRow>(&q.limit(1).to_owned()).await?.map(Price::try_from).transpose()
}

/// Ids of prices (any status) of a bundle, or in a storefront; up to 10, for conflict messages.
pub async fn prices_referencing(
    tx: &mut TenantTx,
    bundle_id: Option<&str>,
    storefront_id: Option<&str>,
) -> Result<Vec<String>> {
    #[derive(sqlx::FromRow)]
    struct IdRow {
        id: String,
    }
    let mut q = Query::select()
        .column(Prices::Id)
        .from(Prices::Table)
        .order_by(Prices::Id, Order::Asc)
        .limit(10)
        .to_owned();
    scoped(&mut q, tx, Prices::TenantId, Prices::Environment);
    if let Some(b) = bundle_id {
        q.and_where(Expr::col(Prices::BundleId).eq(b));
    }
    if let Some(s) = storefront_id {
        q.and_where(Expr::col(Prices::StorefrontId).eq(s));
    }
    Ok(tx.tx.fetch_all::<IdRow>(&q).await?.into_iter().map(|r| r.id).collect())
}

/// Every version of the given prices, oldest first.
pub async fn versions_of(tx: &mut TenantTx, price_ids: &[String]) -> Result<Vec<PriceVersion>> {
    if price_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select()
        .columns(VERSION_COLUMNS)
        .from(PriceVersions::Table)
        .and_where(Expr::col(PriceVersions::PriceId).is_in(price_ids.iter().cloned()))
        .order_by(PriceVersions::PriceId, Order::Asc)
        .order_by(PriceVersions::Version, Order::Asc)
        .to_owned();
    scoped(&mut q, tx, PriceVersions::TenantId, PriceVersions::Environment);
    tx.tx.fetch_all::<VersionRow>(&q).await?.into_iter().map(PriceVersion::try_from).collect()
}

/// The active prices of a storefront whose bundle is active (the storefront's showcase).
pub async fn storefront_active_prices(tx: &mut TenantTx, storefront_id: &str) -> Result<Vec<Price>> {
    let q = select_prices(tx)
        .and_where(Expr::col(Prices::StorefrontId).eq(storefront_id))
        .and_where(Expr::col(Prices::Status).eq(ActiveStatus::Active.as_str()))
        .and_where(
            Expr::col(Prices::BundleId).in_subquery(
                Query::select()
                    .column(Bundles::Id)
                    .from(Bundles::Table)
                    .cond_where(tx.in_scope(Bundles::TenantId, Bundles::Environment))
                    .and_where(Expr::col(Bundles::Status).eq(BundleStatus::Active.as_str()))
                    .to_owned(),
            ),
        )
        .order_by(Prices::Id, Order::Asc)
        .limit(1000)
        .to_owned();
    tx.tx.fetch_all::<PriceRow>(&q).await?.into_iter().map(Price::try_from).collect()
}

/// A catalog read's result as the process's read cache keeps it ([`crate::cache::CatalogEntry`]).
trait Cached: Sized {
    /// What to keep (`None`: nothing, e.g. a row that does not exist).
    fn entry(&self) -> Option<crate::cache::CatalogEntry>;
    /// The result kept as `entry` (its key names the variant).
    fn from_entry(entry: crate::cache::CatalogEntry) -> Option<Self>;
}

/// [`Cached`] for a read of one row that may not exist, kept as entry variant `$v`.
macro_rules! cached_row {
    ($t:ty, $v:ident) => {
        impl Cached for Option<$t> {
            fn entry(&self) -> Option<crate::cache::CatalogEntry> {
                self.clone().map(|r| crate::cache::CatalogEntry::$v(r.into()))
            }
            fn from_entry(entry: crate::cache::CatalogEntry) -> Option<Self> {
                match entry {
                    crate::cache::CatalogEntry::$v(r) => Some(Some((*r).clone())),
                    _ => None,
                }
            }
        }
    };
}

/// [`Cached`] for a read of a whole list or set, kept as entry variant `$v` (when `$keep`).
macro_rules! cached_whole {
    ($t:ty, $v:ident, $keep:expr) => {
        impl Cached for $t {
            fn entry(&self) -> Option<crate::cache::CatalogEntry> {
                let keep: fn(&$t) -> bool = $keep;
                keep(self).then(|| crate::cache::CatalogEntry::$v(self.clone().into()))
            }
            fn from_entry(entry: crate::cache::CatalogEntry) -> Option<Self> {
                match entry {
                    crate::cache::CatalogEntry::$v(r) => Some((*r).clone()),
                    _ => None,
                }
            }
        }
    };
}

cached_row!(Storefront, Storefront);
cached_row!(Bundle, Bundle);
cached_row!(Price, Price);
// A price without versions is not kept.
cached_whole!(Vec<PriceVersion>, Versions, |v| !v.is_empty());
cached_whole!(Vec<Entitlement>, Entitlements, |_| true);
cached_whole!(Offered, Offered, |_| true);

/// A catalog read through the process's read cache, in a write transaction that has not written
/// yet (decision 0011: evicted by the database's change reports, at most the max age old): the
/// cached result for `item`, else `load`'s, then kept. Not cached in a read-only transaction (on
/// SQLite its snapshot may predate changes the cache has applied), nor in one that has written
/// (its own writes reach the cache only at its commit), nor while caching is off or not live.
async fn through_cache<T: Cached>(
    tx: &mut TenantTx,
    item: crate::cache::CatalogItem,
    load: impl AsyncFnOnce(&mut TenantTx) -> Result<T>,
) -> Result<T> {
    let cache = tx.read_cache().filter(|_| tx.writes == 0).cloned();
    let key = (tx.scope().tenant_id(), tx.scope().environment(), item);
    if let Some(found) = cache.as_ref().and_then(|c| c.catalog(&key)).and_then(T::from_entry) {
        return Ok(found);
    }
    let ticket = cache.as_ref().and_then(|c| c.catalog_ticket());
    #[cfg(any(test, feature = "testing"))]
    if let Some(c) = cache.as_ref().filter(|_| ticket.is_some()) {
        c.catalog_loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let found = load(tx).await?;
    if let (Some(c), Some(t), Some(entry)) = (cache, ticket, found.entry()) {
        c.store_catalog(t, key, entry);
    }
    Ok(found)
}

/// [`get_storefront`] through the read cache ([`through_cache`]).
pub async fn get_storefront_cached(tx: &mut TenantTx, id: &str) -> Result<Option<Storefront>> {
    through_cache(tx, crate::cache::CatalogItem::Storefront(id.to_owned()), async |tx| {
        get_storefront(tx, id).await
    })
    .await
}

/// [`get_bundle`] (with its entitlements) through the read cache ([`through_cache`]).
pub async fn get_bundle_cached(tx: &mut TenantTx, id: &str) -> Result<Option<Bundle>> {
    through_cache(tx, crate::cache::CatalogItem::Bundle(id.to_owned()), async |tx| get_bundle(tx, id).await)
        .await
}

/// [`get_price`] through the read cache ([`through_cache`]).
pub async fn get_price_cached(tx: &mut TenantTx, id: &str) -> Result<Option<Price>> {
    through_cache(tx, crate::cache::CatalogItem::Price(id.to_owned()), async |tx| get_price(tx, id).await)
        .await
}

/// [`versions_of`] one price through the read cache ([`through_cache`]).
pub async fn versions_of_cached(tx: &mut TenantTx, price_id: &str) -> Result<Vec<PriceVersion>> {
    let load = async |tx: &mut TenantTx| versions_of(tx, &[price_id.to_owned()]).await;
    through_cache(tx, crate::cache::CatalogItem::Versions(price_id.to_owned()), load).await
}

/// [`all_entitlements`] through the read cache ([`through_cache`]).
pub async fn all_entitlements_cached(tx: &mut TenantTx) -> Result<Vec<Entitlement>> {
    through_cache(tx, crate::cache::CatalogItem::Entitlements, async |tx| all_entitlements(tx).await).await
}

/// What a storefront offers: its active prices, every version of them, and their bundles (with
/// their entitlements), each in id order.
#[derive(Debug, Clone)]
pub struct Offered {
    pub prices: Vec<Price>,
    pub versions: Vec<PriceVersion>,
    pub bundles: Vec<Bundle>,
}

/// [`Offered`] by a storefront (three reads) through the read cache ([`through_cache`]).
pub async fn offered_cached(tx: &mut TenantTx, storefront_id: &str) -> Result<Offered> {
    let load = async |tx: &mut TenantTx| {
        let prices = storefront_active_prices(tx, storefront_id).await?;
        let price_ids: Vec<String> = prices.iter().map(|p| p.id.clone()).collect();
        let versions = versions_of(tx, &price_ids).await?;
        let mut bundle_ids: Vec<String> = prices.iter().map(|p| p.bundle_id.clone()).collect();
        bundle_ids.sort();
        bundle_ids.dedup();
        let bundles = bundles_by_id(tx, &bundle_ids).await?;
        Ok(Offered { prices, versions, bundles })
    };
    through_cache(tx, crate::cache::CatalogItem::Offered(storefront_id.to_owned()), load).await
}
