//! Customers with a PII vault.
//!
//! Personal fields (email, phone, names, address, company name, tax id, metadata) are stored
//! only sealed: each customer has a data key of its own, sealed under the tenant data key
//! (itself wrapped by the platform master key); the fields are sealed under the customer key
//! with tenant, environment and customer id as associated data. Email and phone are findable and
//! unique per tenant environment through keyed hashes of their normalized forms. Destroying a
//! customer's key (erasure, a later issue) makes everything personal unreadable at once.
//!
//! Journal entries name customers by id; an update's outcome lists the changed field names,
//! never values.

use std::collections::BTreeMap;

use azotte_crypto::aead::{self, Key};
use azotte_crypto::tokens::lookup_hash;
use azotte_domain::catalog::{parse_country, parse_language};
use azotte_domain::customer::{self as rules, LegalType};
use azotte_domain::email::Email;
use azotte_domain::id::CustomerId;
use azotte_domain::permission::Permission;
use azotte_domain::{FieldError, ValidationErrors};
use azotte_store::customers::{self as store, CustomerRow};
use azotte_store::{journal, StoreError, TenantScope, TenantTx};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{vault, Ctx, Result, ServiceError};

mod together;
pub use together::created_together;
pub(crate) use together::Creates;

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

/// The personal fields, sealed together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Personal {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub address: Option<Address>,
    pub company_name: Option<String>,
    pub tax_id: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A customer, decrypted.
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub external_id: String,
    pub personal: Personal,
    /// Claimed region: country (ISO 3166-1) and language (ISO 639-1).
    pub country: Option<String>,
    pub language: Option<String>,
    pub legal_type: LegalType,
    /// `active` or `inactive`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every field of a customer as given (create, upsert). Strings are validated here.
#[derive(Debug, Clone, Default)]
pub struct CustomerInput {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub address: Option<Address>,
    pub country: Option<String>,
    pub language: Option<String>,
    pub legal_type: Option<LegalType>,
    pub company_name: Option<String>,
    pub tax_id: Option<String>,
    pub active: Option<bool>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Changes: `None` keeps a field, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct CustomerPatch {
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub address: Option<Option<Address>>,
    pub country: Option<Option<String>>,
    pub language: Option<Option<String>>,
    pub legal_type: Option<LegalType>,
    pub company_name: Option<Option<String>>,
    pub tax_id: Option<Option<String>>,
    pub active: Option<bool>,
    pub metadata: Option<BTreeMap<String, String>>,
}

fn opt_text(errors: &mut ValidationErrors, field: &str, v: &Option<String>, max: usize) -> Option<String> {
    v.as_ref().and_then(|s| errors.check(rules::text(field, s, max)))
}

/// Validates and normalizes a whole customer (email lower-cased, phone E.164).
fn normalize(c: &mut Customer) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let p = &mut c.personal;
    p.email = match &p.email {
        Some(e) => errors.check(Email::parse("email", e)).map(|e| e.as_str().to_owned()),
        None => None,
    };
    p.phone = match &p.phone {
        Some(s) => errors.check(rules::parse_phone("phone", s)),
        None => None,
    };
    p.first_name = opt_text(&mut errors, "first_name", &p.first_name, 100);
    p.last_name = opt_text(&mut errors, "last_name", &p.last_name, 100);
    p.company_name = opt_text(&mut errors, "company_name", &p.company_name, 200);
    p.tax_id = opt_text(&mut errors, "tax_id", &p.tax_id, 50);
    if let Some(a) = &mut p.address {
        if let Some(v) = errors.check(rules::text("address.street", &a.street, 200)) {
            a.street = v;
        }
        if let Some(v) = errors.check(rules::text("address.city", &a.city, 100)) {
            a.city = v;
        }
        if let Some(v) = errors.check(rules::text("address.postal_code", &a.postal_code, 20)) {
            a.postal_code = v;
        }
        errors.check(parse_country("address.country", &a.country));
    }
    errors.check(rules::check_metadata(&p.metadata));
    if let Some(country) = &c.country {
        errors.check(parse_country("country", country));
    }
    if let Some(language) = &c.language {
        errors.check(parse_language("language", language));
    }
    if c.legal_type == LegalType::Company && p.company_name.is_none() {
        errors.push(FieldError::new(
            "company_name",
            "missing_field",
            "a company customer needs a company name",
        ));
    }
    errors.finish()
}

fn pii_aad(tx: &TenantTx, id: &str) -> Vec<u8> {
    format!("azotte:customer-pii:v1\0{}\0{}\0{id}", tx.scope().tenant_id(), tx.scope().environment().as_str())
        .into_bytes()
}

fn key_aad(tx: &TenantTx, id: &str) -> Vec<u8> {
    format!("azotte:customer-key:v1\0{}\0{}\0{id}", tx.scope().tenant_id(), tx.scope().environment().as_str())
        .into_bytes()
}

fn hash(ctx: &Ctx, scope: &TenantScope, kind: &str, value: &str) -> String {
    let tenant = scope.tenant_id().to_string();
    lookup_hash(&ctx.keys.customer_lookup, &[&tenant, scope.environment().as_str(), kind, value])
}

/// The customer's data key, opened through the tenant key.
async fn customer_key(ctx: &Ctx, tx: &mut TenantTx, row: &CustomerRow) -> Result<Key> {
    let wrapped = row.wrapped_key.as_deref().ok_or_else(|| ServiceError::Undecryptable {
        code: "customer_key_missing",
        message: format!("customer {} has no data key", row.id),
    })?;
    let aad = key_aad(tx, &row.id);
    let bytes = vault::open(ctx, tx, wrapped, &aad).await?;
    let arr: [u8; 32] = bytes.expose().as_slice().try_into().map_err(|_| ServiceError::Undecryptable {
        code: "customer_key_undecryptable",
        message: format!("customer {} has a malformed data key", row.id),
    })?;
    Ok(Key::from_bytes(arr))
}

async fn decrypt(ctx: &Ctx, tx: &mut TenantTx, row: CustomerRow) -> Result<Customer> {
    let personal = match &row.pii {
        None => Personal::default(),
        Some(sealed) => {
            let key = customer_key(ctx, tx, &row).await?;
            let plain =
                aead::open(&key, sealed, &pii_aad(tx, &row.id)).map_err(|_| ServiceError::Undecryptable {
                    code: "customer_data_undecryptable",
                    message: format!(
                        "personal data of customer {} does not decrypt (moved or altered)",
                        row.id
                    ),
                })?;
            serde_json::from_slice(&plain).map_err(ServiceError::internal)?
        }
    };
    Ok(Customer {
        legal_type: if row.legal_type == "company" { LegalType::Company } else { LegalType::Individual },
        id: row.id,
        external_id: row.external_id,
        personal,
        country: row.country,
        language: row.language,
        status: row.status,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// Seals a customer into its row, with a new data key when it has none.
async fn encrypt(
    ctx: &Ctx,
    tx: &mut TenantTx,
    c: &Customer,
    existing: Option<&CustomerRow>,
) -> Result<CustomerRow> {
    let key = match existing {
        Some(row) if row.wrapped_key.is_some() => {
            (customer_key(ctx, tx, row).await?, row.wrapped_key.clone())
        }
        _ => {
            let k = Key::generate();
            let tenant_key = vault::tenant_key(ctx, tx).await?;
            let wrapped = vault::encrypt(&tenant_key, k.expose(), &key_aad(tx, &c.id))?;
            (k, Some(wrapped))
        }
    };
    let plain = serde_json::to_vec(&c.personal).map_err(ServiceError::internal)?;
    let pii = aead::seal(&key.0, &plain, &pii_aad(tx, &c.id)).map_err(ServiceError::internal)?;
    let scope = tx.scope().clone();
    Ok(CustomerRow {
        id: c.id.clone(),
        external_id: c.external_id.clone(),
        email_hash: c.personal.email.as_deref().map(|e| hash(ctx, &scope, "email", e)),
        phone_hash: c.personal.phone.as_deref().map(|p| hash(ctx, &scope, "phone", p)),
        wrapped_key: key.1,
        pii: Some(pii),
        country: c.country.clone(),
        language: c.language.clone(),
        legal_type: c.legal_type.as_str().to_owned(),
        status: c.status.clone(),
        created_at: c.created_at,
        updated_at: c.updated_at,
    })
}

fn conflict_of(e: StoreError) -> ServiceError {
    match e {
        StoreError::UniqueViolation { constraint } => {
            let (code, field, what) = match constraint.as_str() {
                "customers_email_key" => ("email_taken", "email", "another customer has this email"),
                "customers_phone_key" => ("phone_taken", "phone", "another customer has this phone number"),
                _ => ("external_id_taken", "external_id", "another customer has this external id"),
            };
            ServiceError::Conflict { code, message: what.into(), field: Some(field) }
        }
        other => other.into(),
    }
}

/// Names of the fields set (or changed) in a customer, for the journal.
fn field_names(before: Option<&Customer>, after: &Customer) -> Vec<&'static str> {
    let b = before.cloned();
    let p = |c: &Option<Customer>| c.as_ref().map(|c| c.personal.clone()).unwrap_or_default();
    let (pb, pa) = (p(&b), &after.personal);
    let mut out = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("email", pb.email != pa.email);
    check("phone", pb.phone != pa.phone);
    check("first_name", pb.first_name != pa.first_name);
    check("last_name", pb.last_name != pa.last_name);
    check("address", pb.address != pa.address);
    check("company_name", pb.company_name != pa.company_name);
    check("tax_id", pb.tax_id != pa.tax_id);
    check("metadata", pb.metadata != pa.metadata);
    check(
        "country",
        b.as_ref().map(|c| &c.country) != Some(&after.country) && (b.is_some() || after.country.is_some()),
    );
    check(
        "language",
        b.as_ref().map(|c| &c.language) != Some(&after.language) && (b.is_some() || after.language.is_some()),
    );
    check("legal_type", b.as_ref().map(|c| c.legal_type) != Some(after.legal_type));
    check("status", b.as_ref().map(|c| &c.status) != Some(&after.status));
    out
}

fn from_input(id: String, external_id: String, input: CustomerInput, now: DateTime<Utc>) -> Customer {
    Customer {
        id,
        external_id,
        personal: Personal {
            email: input.email,
            phone: input.phone,
            first_name: input.first_name,
            last_name: input.last_name,
            address: input.address,
            company_name: input.company_name,
            tax_id: input.tax_id,
            metadata: input.metadata.unwrap_or_default(),
        },
        country: input.country,
        language: input.language,
        legal_type: input.legal_type.unwrap_or(LegalType::Individual),
        status: if input.active.unwrap_or(true) { "active" } else { "inactive" }.into(),
        created_at: now,
        updated_at: now,
    }
}

/// Inserts `c`, normalized, new.
async fn insert(ctx: &Ctx, tx: &mut TenantTx, c: Customer) -> Result<Customer> {
    let row = journal_created(ctx, tx, &c).await?;
    store::insert_customer(tx, &row).await.map_err(conflict_of)?;
    Ok(c)
}

/// Journals a new customer (normalized) and seals it into its row, with a new data key, to be
/// inserted in the same transaction.
async fn journal_created(ctx: &Ctx, tx: &mut TenantTx, c: &Customer) -> Result<CustomerRow> {
    let now = c.created_at;
    let r = Some(("customer", c.id.as_str()));
    tx.action(now, "customer.create", r, json!({})).await?;
    let row = encrypt(ctx, tx, c, None).await?;
    tx.outcome(now, "customer.created", r, json!({"fields": field_names(None, c)})).await?;
    Ok(row)
}

/// Creates `c` (normalized, new) with the other new customers of its tenant environment
/// requested at the same time ([`together`]): `(c, true)` when written so, `(c, false)` when not
/// (its external id is taken, or the batch failed), for the one-by-one path to write it or tell
/// why not.
async fn create_together(ctx: &Ctx, scope: &TenantScope, c: Customer) -> Result<(Customer, bool)> {
    let creating = together::Creating { scope: scope.clone(), meta: journal::current_meta(), customer: c };
    Ok(match together::create(ctx, creating).await? {
        together::Created::Done(c) => (*c, true),
        together::Created::Alone(c) => (c.customer, false),
        together::Created::Unconfirmed(c, fence) => {
            match together::written_after(ctx, &c.scope, fence, &c.customer.id).await {
                Some(written) => (c.customer, written),
                None => {
                    tracing::error!(
                        customer_id = %c.customer.id,
                        "whether this customer was created is unknown"
                    );
                    let e =
                        azotte_store::StoreError::commit_unknown("a customer's creation was not confirmed");
                    return Err(ServiceError::Unavailable(e));
                }
            }
        }
    })
}

async fn write_update(
    ctx: &Ctx,
    tx: &mut TenantTx,
    before: &Customer,
    row: &CustomerRow,
    mut c: Customer,
) -> Result<Customer> {
    normalize(&mut c)?;
    let changed = field_names(Some(before), &c);
    if changed.is_empty() {
        return Ok(before.clone());
    }
    c.updated_at = ctx.clock.now();
    let r = Some(("customer", c.id.as_str()));
    tx.action(c.updated_at, "customer.update", r, json!({"fields": changed})).await?;
    let new_row = encrypt(ctx, tx, &c, Some(row)).await?;
    store::update_customer(tx, &new_row).await.map_err(conflict_of)?;
    tx.outcome(c.updated_at, "customer.updated", r, json!({"changed": changed})).await?;
    Ok(c)
}

/// Creates a customer; `external_id` is the tenant's own id, unique in the environment.
pub async fn create(
    ctx: &Ctx,
    scope: &TenantScope,
    external_id: &str,
    input: CustomerInput,
) -> Result<Customer> {
    crate::security::require(ctx, scope, Permission::CustomerWrite).await?;
    let ext = rules::external_id("external_id", external_id).map_err(ValidationErrors::from)?;
    let now = ctx.clock.now();
    let mut c = from_input(CustomerId::new().to_string(), ext, input, now);
    normalize(&mut c)?;
    let (c, written) = create_together(ctx, scope, c).await?;
    if written {
        return Ok(c);
    }
    let (mut tx, fence) = ctx.db.tenant_tx_fenced(scope).await?;
    let c = insert(ctx, &mut tx, c).await?;
    commit_created(ctx, scope, tx, fence, &c.id).await?;
    Ok(c)
}

/// Commits the fenced transaction that created the customer `id` alone; when its commit goes
/// unconfirmed, reads back whether it was (decision 0007, "An unconfirmed commit"): written is
/// done, not written is 503 with nothing written, and a database that cannot tell is 503.
async fn commit_created(
    ctx: &Ctx,
    scope: &TenantScope,
    tx: TenantTx,
    fence: azotte_store::Fence,
    id: &str,
) -> Result<()> {
    match tx.commit().await {
        Ok(()) => Ok(()),
        Err(e) if e.is_commit_unknown() => match together::written_after(ctx, scope, fence, id).await {
            Some(true) => Ok(()),
            Some(false) => Err(e.rolled_back().into()),
            None => {
                tracing::error!(customer_id = id, "whether this customer was created is unknown");
                Err(e.into())
            }
        },
        Err(e) => Err(e.into()),
    }
}

/// Creates or replaces the customer with this external id; `true` when it was created.
pub async fn upsert(
    ctx: &Ctx,
    scope: &TenantScope,
    external_id: &str,
    input: CustomerInput,
) -> Result<(Customer, bool)> {
    crate::security::require(ctx, scope, Permission::CustomerWrite).await?;
    let ext = rules::external_id("external_id", external_id).map_err(ValidationErrors::from)?;
    let now = ctx.clock.now();
    // Commonly the customer is new: created with the others of the tenant environment now.
    let mut new = from_input(CustomerId::new().to_string(), ext, input, now);
    normalize(&mut new)?;
    let (new, written) = create_together(ctx, scope, new).await?;
    if written {
        return Ok((new, true));
    }
    let (mut tx, fence) = ctx.db.tenant_tx_fenced(scope).await?;
    let out = match store::by_external_id(&mut tx, &new.external_id).await? {
        None => {
            let c = insert(ctx, &mut tx, new).await?;
            commit_created(ctx, scope, tx, fence, &c.id).await?;
            return Ok((c, true));
        }
        Some(row) => {
            // The same fields, on the existing customer.
            let before = decrypt(ctx, &mut tx, row.clone()).await?;
            let c = Customer {
                id: before.id.clone(),
                created_at: before.created_at,
                updated_at: before.updated_at,
                ..new
            };
            (write_update(ctx, &mut tx, &before, &row, c).await?, false)
        }
    };
    tx.commit().await?;
    Ok(out)
}

/// Changes a customer.
pub async fn update(ctx: &Ctx, scope: &TenantScope, id: &str, p: CustomerPatch) -> Result<Customer> {
    crate::security::require(ctx, scope, Permission::CustomerWrite).await?;
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let row =
        store::get_customer(&mut tx, id).await?.ok_or(ServiceError::NotFound { resource: "customer" })?;
    let before = decrypt(ctx, &mut tx, row.clone()).await?;
    let mut c = before.clone();
    let pp = &mut c.personal;
    macro_rules! set {
        ($($f:ident),*) => {$( if let Some(v) = p.$f { pp.$f = v; } )*};
    }
    set!(email, phone, first_name, last_name, address, company_name, tax_id);
    if let Some(m) = p.metadata {
        pp.metadata = m;
    }
    if let Some(v) = p.country {
        c.country = v;
    }
    if let Some(v) = p.language {
        c.language = v;
    }
    if let Some(v) = p.legal_type {
        c.legal_type = v;
    }
    if let Some(v) = p.active {
        c.status = if v { "active" } else { "inactive" }.into();
    }
    let c = write_update(ctx, &mut tx, &before, &row, c).await?;
    tx.commit().await?;
    Ok(c)
}

/// One customer, decrypted.
pub async fn get(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<Customer> {
    crate::security::require(ctx, scope, Permission::CustomerRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let row =
        store::get_customer(&mut tx, id).await?.ok_or(ServiceError::NotFound { resource: "customer" })?;
    let c = decrypt(ctx, &mut tx, row).await?;
    tx.commit().await?;
    Ok(c)
}

/// Customers a page at a time; `email` or `phone` find by exact (normalized) match.
pub async fn list(
    ctx: &Ctx,
    scope: &TenantScope,
    limit: u32,
    starting_after: Option<&str>,
    email: Option<&str>,
    phone: Option<&str>,
) -> Result<(Vec<Customer>, bool)> {
    crate::security::require(ctx, scope, Permission::CustomerRead).await?;
    let mut errors = ValidationErrors::default();
    let email_hash = email
        .and_then(|e| errors.check(Email::parse("email", e)))
        .map(|e| hash(ctx, scope, "email", e.as_str()));
    let phone_hash = phone
        .and_then(|p| errors.check(rules::parse_phone("phone", p)))
        .map(|p| hash(ctx, scope, "phone", &p));
    errors.finish()?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let (rows, more) =
        store::list_customers(&mut tx, limit, starting_after, email_hash.as_deref(), phone_hash.as_deref())
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(decrypt(ctx, &mut tx, r).await?);
    }
    tx.commit().await?;
    Ok((out, more))
}

/// The customer row, for other services (payment methods) working in the same transaction.
pub(crate) async fn exists(tx: &mut TenantTx, id: &str) -> Result<CustomerRow> {
    store::get_customer(tx, id).await?.ok_or(ServiceError::NotFound { resource: "customer" })
}
