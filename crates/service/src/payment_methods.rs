//! Payment methods: PSP tokens with display data (brand, last4, expiry, fingerprint), never a
//! card number. A token belongs to the storefront PSP account it was created for and is usable
//! only through it.
//!
//! Sandbox tokens (`tok_sandbox_…`, test environments only) are accepted as they are; their
//! display data is derived from the token (`tok_sandbox_mastercard` shows a Mastercard,
//! `tok_sandbox_expired` a card that expired last month). Tokens of real PSPs are attached only
//! after the connector has validated them with the PSP, which arrives with the payments issue;
//! until then they are refused with `422 connector_unavailable`.

use azotte_crypto::tokens::sha256_hex;
use azotte_domain::id::PaymentMethodId;
use azotte_domain::permission::Permission;
use azotte_domain::tenant::Environment;
use azotte_domain::{FieldError, ValidationErrors};
use azotte_store::customers::{self as store, PaymentMethodRow};
use azotte_store::psp_accounts as psp_store;
use azotte_store::{auth, TenantScope};
use chrono::Datelike;
use serde_json::json;

use crate::{Ctx, Result, ServiceError};

/// A payment method to attach.
#[derive(Debug, Clone)]
pub struct AttachInput {
    pub storefront_id: String,
    pub psp_account_id: String,
    pub token: String,
    pub make_default: bool,
}

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> ServiceError {
    ValidationErrors::from(FieldError::new(field, code, message)).into()
}

/// Display data of a sandbox token: (brand, last4, expiry month, expiry year).
fn sandbox_card(token: &str, now: chrono::DateTime<chrono::Utc>) -> (String, String, i32, i32) {
    if token.contains("mastercard") {
        ("mastercard".into(), "4444".into(), 12, now.year() + 3)
    } else if token.contains("amex") {
        ("amex".into(), "8431".into(), 12, now.year() + 3)
    } else if token.contains("expired") {
        let last = now - chrono::Duration::days(i64::from(now.day()) + 1);
        ("visa".into(), "0069".into(), last.month() as i32, last.year())
    } else {
        ("visa".into(), "4242".into(), 12, now.year() + 3)
    }
}

fn valid_token(s: &str) -> bool {
    (8..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Attaches a PSP token to a customer.
pub async fn attach(
    ctx: &Ctx,
    scope: &TenantScope,
    customer_id: &str,
    input: AttachInput,
) -> Result<PaymentMethodRow> {
    crate::security::require(ctx, scope, Permission::CustomerWrite).await?;
    let now = ctx.clock.now();
    if !valid_token(&input.token) {
        return Err(invalid(
            "token",
            "invalid_token",
            "a PSP token: 8 to 255 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    let mut tx = ctx.db.tenant_tx(scope).await?;
    crate::customers::exists(&mut tx, customer_id).await?;
    if !scope.storefront_allowed(&input.storefront_id) {
        return Err(invalid("storefront_id", "unknown_storefront", "no such storefront"));
    }
    let Some(account) = psp_store::get(&mut tx, &input.storefront_id, &input.psp_account_id).await? else {
        return Err(invalid(
            "psp_account_id",
            "psp_account_not_in_storefront",
            "the token's PSP account must be one of this storefront's accounts",
        ));
    };
    if account.status != "active" {
        return Err(invalid("psp_account_id", "psp_account_inactive", "the PSP account is inactive"));
    }
    let (brand, last4, exp_month, exp_year) = match account.connector.as_str() {
        "sandbox" => {
            if !input.token.starts_with("tok_sandbox_") {
                return Err(invalid("token", "invalid_token", "sandbox tokens start with tok_sandbox_ (see README)"));
            }
            sandbox_card(&input.token, now)
        }
        other => {
            return Err(invalid(
                "token",
                "connector_unavailable",
                format!("{other} tokens are attached only after the {other} connector has validated them; it is not available yet"),
            ))
        }
    };
    let existing = store::payment_methods_of(&mut tx, customer_id, false).await?;
    let make_default = input.make_default || !existing.iter().any(|p| p.is_default);
    let r = Some(("customer", customer_id));
    tx.action(
        now,
        "payment_method.attach",
        r,
        json!({"psp_account_id": account.id, "storefront_id": account.storefront_id}),
    )
    .await?;
    if make_default {
        for mut p in existing.into_iter().filter(|p| p.is_default) {
            p.is_default = false;
            p.updated_at = now;
            store::update_payment_method(&mut tx, &p).await?;
        }
    }
    let pm = PaymentMethodRow {
        id: PaymentMethodId::new().to_string(),
        customer_id: customer_id.to_owned(),
        storefront_id: account.storefront_id.clone(),
        psp_account_id: account.id.clone(),
        fingerprint: sha256_hex(&format!("{}:{}", account.connector, input.token))[..16].to_owned(),
        token: input.token,
        brand,
        last4,
        exp_month,
        exp_year,
        state: "active".into(),
        expired: false,
        is_default: make_default,
        created_at: now,
        updated_at: now,
    };
    store::insert_payment_method(&mut tx, &pm).await?;
    tx.outcome(
        now,
        "payment_method.attached",
        Some(("payment_method", pm.id.as_str())),
        json!({"customer_id": customer_id, "brand": pm.brand, "default": pm.is_default}),
    )
    .await?;
    tx.commit().await?;
    Ok(pm)
}

/// A customer's payment methods (not deleted ones).
pub async fn list(ctx: &Ctx, scope: &TenantScope, customer_id: &str) -> Result<Vec<PaymentMethodRow>> {
    crate::security::require(ctx, scope, Permission::CustomerRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    crate::customers::exists(&mut tx, customer_id).await?;
    let all = store::payment_methods_of(&mut tx, customer_id, false).await?;
    tx.commit().await?;
    Ok(all.into_iter().filter(|p| scope.storefront_allowed(&p.storefront_id)).collect())
}

/// One payment method.
pub async fn get(ctx: &Ctx, scope: &TenantScope, customer_id: &str, id: &str) -> Result<PaymentMethodRow> {
    crate::security::require(ctx, scope, Permission::CustomerRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let pm = store::get_payment_method(&mut tx, customer_id, id)
        .await?
        .filter(|p| p.state != "deleted" && scope.storefront_allowed(&p.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "payment_method" })?;
    tx.commit().await?;
    Ok(pm)
}

/// What to do to a payment method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Activate,
    Inactivate,
    MakeDefault,
    Delete,
}

/// Activates, inactivates, makes default or deletes a payment method. Deleting the default
/// leaves the customer without one.
pub async fn change(
    ctx: &Ctx,
    scope: &TenantScope,
    customer_id: &str,
    id: &str,
    what: Change,
) -> Result<PaymentMethodRow> {
    crate::security::require(ctx, scope, Permission::CustomerWrite).await?;
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let mut pm = store::get_payment_method(&mut tx, customer_id, id)
        .await?
        .filter(|p| p.state != "deleted" && scope.storefront_allowed(&p.storefront_id))
        .ok_or(ServiceError::NotFound { resource: "payment_method" })?;
    let (action, outcome) = match what {
        Change::Activate => {
            pm.state = "active".into();
            ("payment_method.activate", "payment_method.activated")
        }
        Change::Inactivate => {
            pm.state = "inactive".into();
            pm.is_default = false;
            ("payment_method.inactivate", "payment_method.inactivated")
        }
        Change::MakeDefault => {
            if pm.state != "active" || pm.expired {
                return Err(ServiceError::Conflict {
                    code: "payment_method_not_usable",
                    message: "only an active, unexpired method can be the default".into(),
                    field: None,
                });
            }
            for mut p in store::payment_methods_of(&mut tx, customer_id, false).await? {
                if p.is_default && p.id != pm.id {
                    p.is_default = false;
                    p.updated_at = now;
                    store::update_payment_method(&mut tx, &p).await?;
                }
            }
            pm.is_default = true;
            ("payment_method.make_default", "payment_method.default_set")
        }
        Change::Delete => {
            pm.state = "deleted".into();
            pm.is_default = false;
            ("payment_method.delete", "payment_method.deleted")
        }
    };
    pm.updated_at = now;
    let r = Some(("payment_method", id));
    tx.action(now, action, r, json!({"customer_id": customer_id})).await?;
    store::update_payment_method(&mut tx, &pm).await?;
    tx.outcome(now, outcome, r, json!({"state": pm.state, "default": pm.is_default})).await?;
    tx.commit().await?;
    Ok(pm)
}

/// The daily expiry sweep of one tenant environment: marks methods whose card has expired.
pub async fn mark_expired(ctx: &Ctx, scope: &TenantScope) -> Result<Vec<String>> {
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    tx.action(now, "payment_method.expiry_sweep", None, json!({"year": now.year(), "month": now.month()}))
        .await?;
    let ids = store::mark_expired(&mut tx, now.year(), now.month() as i32, now).await?;
    for id in &ids {
        tx.outcome(now, "payment_method.expired", Some(("payment_method", id)), json!({})).await?;
    }
    if ids.is_empty() {
        // Nothing changed: nothing to journal.
        return Ok(ids);
    }
    tx.commit().await?;
    Ok(ids)
}

/// The daily expiry sweep over every tenant environment (the worker runs it).
pub async fn mark_expired_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut total = 0;
    for (tenant, env) in azotte_store::seal::chains(&ctx.db, None).await? {
        let (Ok(tenant_id), Ok(environment)) = (tenant.parse(), env.parse::<Environment>()) else { continue };
        let scope = match auth::system_scope(&ctx.db, tenant_id, environment, "payment_method_expiry").await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "expiry sweep skipped a tenant");
                continue;
            }
        };
        total += mark_expired(ctx, &scope).await?.len();
    }
    Ok(total)
}
