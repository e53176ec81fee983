//! Customers and payment methods as stored: personal data only as ciphertext (`pii`, sealed by
//! the service layer), email and phone as keyed hashes. Tables live in the `customer_data`
//! schema on PostgreSQL.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};

use crate::{Result, TenantTx};

#[derive(Iden, Clone, Copy)]
pub(crate) enum Customers {
    Table,
    TenantId,
    Environment,
    Id,
    ExternalId,
    EmailHash,
    PhoneHash,
    WrappedKey,
    Pii,
    Country,
    Language,
    LegalType,
    Status,
    CreatedAt,
    UpdatedAt,
}

const CUSTOMER_COLUMNS: [Customers; 13] = [
    Customers::Id,
    Customers::ExternalId,
    Customers::EmailHash,
    Customers::PhoneHash,
    Customers::WrappedKey,
    Customers::Pii,
    Customers::Country,
    Customers::Language,
    Customers::LegalType,
    Customers::Status,
    Customers::CreatedAt,
    Customers::UpdatedAt,
    Customers::Environment,
];

/// A customer row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: String,
    pub external_id: String,
    pub email_hash: Option<String>,
    pub phone_hash: Option<String>,
    /// The customer's data key, sealed under the tenant data key.
    pub wrapped_key: Option<Vec<u8>>,
    /// Personal fields, sealed under the customer's data key.
    pub pii: Option<Vec<u8>>,
    pub country: Option<String>,
    pub language: Option<String>,
    pub legal_type: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn customer_values(c: &CustomerRow) -> Vec<sea_query::SimpleExpr> {
    vec![
        c.id.clone().into(),
        c.external_id.clone().into(),
        c.email_hash.clone().into(),
        c.phone_hash.clone().into(),
        c.wrapped_key.clone().into(),
        c.pii.clone().into(),
        c.country.clone().into(),
        c.language.clone().into(),
        c.legal_type.clone().into(),
        c.status.clone().into(),
        c.created_at.into(),
        c.updated_at.into(),
    ]
}

/// Adds a customer (taken external id, email or phone: `UniqueViolation` naming
/// `customers_external_id_key`, `customers_email_key` or `customers_phone_key`).
pub async fn insert_customer(tx: &mut TenantTx, c: &CustomerRow) -> Result<()> {
    insert_customers(tx, std::slice::from_ref(c)).await
}

/// Adds customers in one statement (none: nothing); a taken external id, email or phone fails
/// it as [`insert_customer`] does.
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_customers(tx: &mut TenantTx, rows: &[CustomerRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols = CUSTOMER_COLUMNS.to_vec();
    cols.push(Customers::TenantId);
    let mut q = Query::insert().into_table(Customers::Table).columns(cols).to_owned();
    for c in rows {
        let mut v = customer_values(c);
        v.push(tx.scope().environment().as_str().into());
        v.push(tx.scope().tenant_id().to_string().into());
        q.values_panic(v);
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// Writes every mutable column of a customer.
pub async fn update_customer(tx: &mut TenantTx, c: &CustomerRow) -> Result<()> {
    let v = customer_values(c);
    let q = Query::update()
        .table(Customers::Table)
        .values(
            CUSTOMER_COLUMNS[2..12]
                .iter()
                .copied()
                .zip(v.into_iter().skip(2))
                .filter(|(c, _)| !matches!(c, Customers::CreatedAt)),
        )
        .cond_where(tx.in_scope(Customers::TenantId, Customers::Environment))
        .and_where(Expr::col(Customers::Id).eq(c.id.clone()))
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn select_customers(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(CUSTOMER_COLUMNS[..12].to_vec())
        .from(Customers::Table)
        .cond_where(tx.in_scope(Customers::TenantId, Customers::Environment))
        .to_owned()
}

/// One customer by id.
pub async fn get_customer(tx: &mut TenantTx, id: &str) -> Result<Option<CustomerRow>> {
    let q = select_customers(tx).and_where(Expr::col(Customers::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<CustomerRow>(&q).await
}

/// The customers of `ids` that exist (in no particular order).
pub async fn get_customers(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<CustomerRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_customers(tx).and_where(Expr::col(Customers::Id).is_in(ids.iter().cloned())).to_owned();
    tx.tx.fetch_all::<CustomerRow>(&q).await
}

/// One customer by the tenant's external id.
pub async fn by_external_id(tx: &mut TenantTx, external_id: &str) -> Result<Option<CustomerRow>> {
    let q = select_customers(tx).and_where(Expr::col(Customers::ExternalId).eq(external_id)).to_owned();
    tx.tx.fetch_optional::<CustomerRow>(&q).await
}

/// The customers of the tenant's `external_ids` that exist (in no particular order).
pub async fn by_external_ids(tx: &mut TenantTx, external_ids: &[String]) -> Result<Vec<CustomerRow>> {
    if external_ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_customers(tx)
        .and_where(Expr::col(Customers::ExternalId).is_in(external_ids.iter().cloned()))
        .to_owned();
    tx.tx.fetch_all::<CustomerRow>(&q).await
}

/// Customers in id order after `starting_after`, optionally those with an email or phone hash.
pub async fn list_customers(
    tx: &mut TenantTx,
    limit: u32,
    starting_after: Option<&str>,
    email_hash: Option<&str>,
    phone_hash: Option<&str>,
) -> Result<(Vec<CustomerRow>, bool)> {
    let mut q =
        select_customers(tx).order_by(Customers::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(a) = starting_after {
        q.and_where(Expr::col(Customers::Id).gt(a));
    }
    if let Some(h) = email_hash {
        q.and_where(Expr::col(Customers::EmailHash).eq(h));
    }
    if let Some(h) = phone_hash {
        q.and_where(Expr::col(Customers::PhoneHash).eq(h));
    }
    let mut rows = tx.tx.fetch_all::<CustomerRow>(&q).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

// ---------------------------------------------------------------------------------------------
// Payment methods

#[derive(Iden, Clone, Copy)]
enum PaymentMethods {
    Table,
    TenantId,
    Environment,
    Id,
    CustomerId,
    StorefrontId,
    PspAccountId,
    Token,
    Brand,
    Last4,
    ExpMonth,
    ExpYear,
    Fingerprint,
    State,
    Expired,
    IsDefault,
    CreatedAt,
    UpdatedAt,
    PspCustomerId,
}

const PM_COLUMNS: [PaymentMethods; 17] = [
    PaymentMethods::Id,
    PaymentMethods::CustomerId,
    PaymentMethods::StorefrontId,
    PaymentMethods::PspAccountId,
    PaymentMethods::Token,
    PaymentMethods::Brand,
    PaymentMethods::Last4,
    PaymentMethods::ExpMonth,
    PaymentMethods::ExpYear,
    PaymentMethods::Fingerprint,
    PaymentMethods::State,
    PaymentMethods::Expired,
    PaymentMethods::IsDefault,
    PaymentMethods::CreatedAt,
    PaymentMethods::UpdatedAt,
    PaymentMethods::PspCustomerId,
    PaymentMethods::Environment,
];

/// A payment method: a PSP token and what can be shown of the card.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentMethodRow {
    pub id: String,
    pub customer_id: String,
    pub storefront_id: String,
    /// The PSP account the token was created for; it is usable only through it.
    pub psp_account_id: String,
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i32,
    pub exp_year: i32,
    pub fingerprint: String,
    /// `active`, `inactive` or `deleted`.
    pub state: String,
    pub expired: bool,
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The PSP's customer the token is attached to (Stripe), if any.
    pub psp_customer_id: Option<String>,
}

/// Adds a payment method.
pub async fn insert_payment_method(tx: &mut TenantTx, p: &PaymentMethodRow) -> Result<()> {
    insert_payment_methods(tx, std::slice::from_ref(p)).await
}

/// Writes new payment methods with one statement (checkouts written together).
///
/// After [`TenantTx::insert_at_commit`], held for the commit (PostgreSQL).
pub async fn insert_payment_methods(tx: &mut TenantTx, rows: &[PaymentMethodRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols = PM_COLUMNS.to_vec();
    cols.push(PaymentMethods::TenantId);
    let mut q = Query::insert().into_table(PaymentMethods::Table).columns(cols).to_owned();
    for p in rows {
        q.values_panic([
            p.id.clone().into(),
            p.customer_id.clone().into(),
            p.storefront_id.clone().into(),
            p.psp_account_id.clone().into(),
            p.token.clone().into(),
            p.brand.clone().into(),
            p.last4.clone().into(),
            p.exp_month.into(),
            p.exp_year.into(),
            p.fingerprint.clone().into(),
            p.state.clone().into(),
            p.expired.into(),
            p.is_default.into(),
            p.created_at.into(),
            p.updated_at.into(),
            p.psp_customer_id.clone().into(),
            tx.scope().environment().as_str().into(),
            tx.scope().tenant_id().to_string().into(),
        ]);
    }
    tx.insert_last(&q).await?;
    Ok(())
}

/// Writes a payment method's state, default flag and expiry mark.
pub async fn update_payment_method(tx: &mut TenantTx, p: &PaymentMethodRow) -> Result<()> {
    let q = Query::update()
        .table(PaymentMethods::Table)
        .values([
            (PaymentMethods::State, p.state.clone().into()),
            (PaymentMethods::IsDefault, p.is_default.into()),
            (PaymentMethods::Expired, p.expired.into()),
            (PaymentMethods::UpdatedAt, p.updated_at.into()),
        ])
        .cond_where(tx.in_scope(PaymentMethods::TenantId, PaymentMethods::Environment))
        .and_where(Expr::col(PaymentMethods::Id).eq(p.id.clone()))
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn select_pms(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(PM_COLUMNS[..16].to_vec())
        .from(PaymentMethods::Table)
        .cond_where(tx.in_scope(PaymentMethods::TenantId, PaymentMethods::Environment))
        .to_owned()
}

/// One payment method of a customer.
pub async fn get_payment_method(
    tx: &mut TenantTx,
    customer_id: &str,
    id: &str,
) -> Result<Option<PaymentMethodRow>> {
    let q = select_pms(tx)
        .and_where(Expr::col(PaymentMethods::CustomerId).eq(customer_id))
        .and_where(Expr::col(PaymentMethods::Id).eq(id))
        .to_owned();
    tx.tx.fetch_optional::<PaymentMethodRow>(&q).await
}

/// Whether a payment method not deleted, of any customer, holds `token` at the PSP account.
pub async fn token_in_use(tx: &mut TenantTx, psp_account_id: &str, token: &str) -> Result<bool> {
    let q = select_pms(tx)
        .and_where(Expr::col(PaymentMethods::PspAccountId).eq(psp_account_id))
        .and_where(Expr::col(PaymentMethods::Token).eq(token))
        .and_where(Expr::col(PaymentMethods::State).ne("deleted"))
        .limit(1)
        .to_owned();
    Ok(tx.tx.fetch_optional::<PaymentMethodRow>(&q).await?.is_some())
}

/// The payment methods of `ids` that exist, whoever's (in no particular order): the caller
/// checks each one's customer.
pub async fn get_payment_methods(tx: &mut TenantTx, ids: &[String]) -> Result<Vec<PaymentMethodRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_pms(tx).and_where(Expr::col(PaymentMethods::Id).is_in(ids.iter().cloned())).to_owned();
    tx.tx.fetch_all::<PaymentMethodRow>(&q).await
}

/// The payment methods of the customers of `ids`, deleted ones too, oldest first.
pub async fn payment_methods_of_customers(
    tx: &mut TenantTx,
    ids: &[String],
) -> Result<Vec<PaymentMethodRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let q = select_pms(tx)
        .and_where(Expr::col(PaymentMethods::CustomerId).is_in(ids.iter().cloned()))
        .order_by(PaymentMethods::Id, Order::Asc)
        .to_owned();
    tx.tx.fetch_all::<PaymentMethodRow>(&q).await
}

/// A customer's payment methods (deleted ones too when asked), oldest first.
pub async fn payment_methods_of(
    tx: &mut TenantTx,
    customer_id: &str,
    with_deleted: bool,
) -> Result<Vec<PaymentMethodRow>> {
    let mut q = select_pms(tx)
        .and_where(Expr::col(PaymentMethods::CustomerId).eq(customer_id))
        .order_by(PaymentMethods::Id, Order::Asc)
        .limit(500)
        .to_owned();
    if !with_deleted {
        q.and_where(Expr::col(PaymentMethods::State).ne("deleted"));
    }
    tx.tx.fetch_all::<PaymentMethodRow>(&q).await
}

/// Marks as expired every method of the environment whose card expired before (year, month).
/// Returns the ids marked.
pub async fn mark_expired(
    tx: &mut TenantTx,
    year: i32,
    month: i32,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    #[derive(sqlx::FromRow)]
    struct IdRow {
        id: String,
    }
    let due = Expr::col(PaymentMethods::ExpYear)
        .lt(year)
        .or(Expr::col(PaymentMethods::ExpYear).eq(year).and(Expr::col(PaymentMethods::ExpMonth).lt(month)));
    let mut q = Query::select()
        .column(PaymentMethods::Id)
        .from(PaymentMethods::Table)
        .cond_where(tx.in_scope(PaymentMethods::TenantId, PaymentMethods::Environment))
        .and_where(Expr::col(PaymentMethods::Expired).eq(false))
        .and_where(Expr::col(PaymentMethods::State).ne("deleted"))
        .order_by(PaymentMethods::Id, Order::Asc)
        .to_owned();
    q.and_where(due.clone());
    let ids: Vec<String> = tx.tx.fetch_all::<IdRow>(&q).await?.into_iter().map(|r| r.id).collect();
    if ids.is_empty() {
        return Ok(ids);
    }
    let u = Query::update()
        .table(PaymentMethods::Table)
        .values([(PaymentMethods::Expired, true.into()), (PaymentMethods::UpdatedAt, now.into())])
        .cond_where(tx.in_scope(PaymentMethods::TenantId, PaymentMethods::Environment))
        .and_where(Expr::col(PaymentMethods::Id).is_in(ids.clone()))
        .to_owned();
    tx.write(&u).await?;
    Ok(ids)
}
