//! Payment methods: PSP tokens with display data (brand, last4, expiry, fingerprint), never a
//! card number. A token belongs to the storefront PSP account it was created for and is usable
//! only through it.
//!
//! A token is attached only after the account's connector has validated it with the PSP: the
//! PSP answers the display data (and, for Stripe, attaches the method to a Stripe customer of
//! ours, reused for the customer's later methods on that account, so renewals can charge it off
//! session). Deleting a method detaches it at the PSP first. Sandbox tokens (`tok_sandbox_…`,
//! test environments only) are validated by the sandbox, which derives their display data from
//! the token.

use azotte_crypto::tokens::sha256_hex;
use azotte_domain::id::PaymentMethodId;
use azotte_domain::permission::Permission;
use azotte_domain::tenant::Environment;
use azotte_domain::{FieldError, ValidationErrors};
use std::sync::Arc;

use azotte_payments::{Account, AttachRequest, Connector, ConnectorError, PspPaymentMethod};
use azotte_store::customers::{self as store, PaymentMethodRow};
use azotte_store::psp_accounts as psp_store;
use azotte_store::subscriptions::SubscriptionFilter;
use azotte_store::{auth, TenantScope, TenantTx};
use chrono::{DateTime, Datelike, Utc};
use serde_json::json;

use crate::psp_accounts::Unopened;
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
    check_token(&input)?;
    // 1. What to attach to: the customer, the storefront's account, the PSP customer if any.
    let found = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        crate::customers::exists(&mut tx, customer_id).await?;
        let found = prepare(ctx, &mut tx, customer_id, &input).await?;
        tx.commit().await?;
        found
    };
    // 2. The PSP validates the token and attaches it (outside any transaction).
    let validated = validate(ctx, scope, found, customer_id, &input).await?;
    // 3. Record it.
    let mut tx = ctx.db.tenant_tx(scope).await?;
    crate::customers::exists(&mut tx, customer_id).await?;
    let recorded = record(ctx, &mut tx, customer_id, input.make_default, validated).await?;
    tx.commit().await?;
    attached(ctx, scope, &recorded);
    Ok(recorded.pm)
}

/// What attaching a token found before the PSP is called ([`prepare`]).
pub(crate) struct Prepared {
    account: psp_store::PspAccount,
    psp_customer_id: Option<String>,
    /// Whether the customer had a default method (not deleted) when read.
    has_default: bool,
    connector: std::result::Result<(Arc<dyn Connector>, Account), Unopened>,
}

/// A token the PSP validated and attached ([`validate`]), to record.
pub(crate) struct Validated {
    id: PaymentMethodId,
    account: psp_store::PspAccount,
    psp: PspPaymentMethod,
    /// Whether the customer had a default method when [`prepare`] read its methods.
    pub(crate) had_default: bool,
}

/// Refuses a token that is not of a PSP token's form.
fn check_token(input: &AttachInput) -> Result<()> {
    if valid_token(&input.token) {
        Ok(())
    } else {
        Err(invalid("token", "invalid_token", "a PSP token: 8 to 255 characters of A-Z, a-z, 0-9, _ and -"))
    }
}

/// Attaching, step 1, in the caller's transaction (the caller has checked `customer.write` and
/// found the customer): checks the token's form and the storefront's account, and reads the
/// account's credentials and the PSP customer the customer already has there, if any.
pub(crate) async fn prepare(
    ctx: &Ctx,
    tx: &mut TenantTx,
    customer_id: &str,
    input: &AttachInput,
) -> Result<Prepared> {
    let account = psp_store::get(tx, &input.storefront_id, &input.psp_account_id).await?;
    let methods = match account {
        Some(_) => store::payment_methods_of(tx, customer_id, true).await?,
        None => Vec::new(),
    };
    let found = attachable(tx.scope(), input, account, &methods)?;
    let connector = crate::payments::connector_in(ctx, tx, &found.account).await?;
    Ok(found.with(connector))
}

/// What [`attachable`] found: the account, and what the customer has there.
pub(crate) struct Attachable {
    pub(crate) account: psp_store::PspAccount,
    psp_customer_id: Option<String>,
    has_default: bool,
}

impl Attachable {
    /// [`Prepared`], with the account's connector and credentials as they opened.
    pub(crate) fn with(
        self,
        connector: std::result::Result<(Arc<dyn Connector>, Account), Unopened>,
    ) -> Prepared {
        let Attachable { account, psp_customer_id, has_default } = self;
        Prepared { account, psp_customer_id, has_default, connector }
    }
}

/// Attaching, step 1's checks on what was read for `input` by a caller with `scope`: the
/// storefront's account `account` (as found by its storefront and id), the customer's
/// `methods` (deleted ones too).
pub(crate) fn attachable(
    scope: &TenantScope,
    input: &AttachInput,
    account: Option<psp_store::PspAccount>,
    methods: &[PaymentMethodRow],
) -> Result<Attachable> {
    check_token(input)?;
    if !scope.storefront_allowed(&input.storefront_id) {
        return Err(invalid("storefront_id", "unknown_storefront", "no such storefront"));
    }
    let Some(account) = account.filter(|a| a.storefront_id == input.storefront_id) else {
        return Err(invalid(
            "psp_account_id",
            "psp_account_not_in_storefront",
            "the token's PSP account must be one of this storefront's accounts",
        ));
    };
    let has_default = methods.iter().any(|p| p.is_default && p.state != "deleted");
    let psp_customer_id =
        methods.iter().filter(|p| p.psp_account_id == account.id).find_map(|p| p.psp_customer_id.clone());
    if account.status != "active" {
        return Err(invalid("psp_account_id", "psp_account_inactive", "the PSP account is inactive"));
    }
    if account.connector == "sandbox" && !input.token.starts_with("tok_sandbox_") {
        return Err(invalid("token", "invalid_token", "sandbox tokens start with tok_sandbox_ (see README)"));
    }
    Ok(Attachable { account, psp_customer_id, has_default })
}

/// Attaching, step 2, outside any transaction (the one of [`prepare`] has ended): the PSP
/// validates the token and attaches it.
pub(crate) async fn validate(
    ctx: &Ctx,
    scope: &TenantScope,
    found: Prepared,
    customer_id: &str,
    input: &AttachInput,
) -> Result<Validated> {
    let Prepared { account, psp_customer_id, has_default, connector } = found;
    let (connector, creds) = match connector {
        Ok(c) => c,
        Err(unopened) => return Err(unopened.record(ctx, scope).await),
    };
    let id = PaymentMethodId::new();
    let req = AttachRequest {
        account: creds,
        token: input.token.clone(),
        customer_reference: customer_id.to_owned(),
        psp_customer_id,
        idempotency_key: format!("azotte-{id}-attach"),
    };
    let psp = match connector.attach_payment_method(&req).await {
        Ok(p) => p,
        Err(ConnectorError::InvalidRequest { code, message }) => {
            let detail = if code == "resource_missing" {
                "the PSP does not know this token".to_owned()
            } else {
                format!("the PSP refused the token: {message}")
            };
            return Err(invalid("token", "invalid_token", detail));
        }
        Err(ConnectorError::Configuration { message }) => {
            return Err(invalid("psp_account_id", "psp_account_misconfigured", message));
        }
        Err(e) => {
            return Err(ServiceError::PspUnavailable {
                message: format!(
                    "the PSP could not validate the token ({e}); nothing was attached, try again"
                ),
            })
        }
    };
    Ok(Validated { id, account, psp, had_default: has_default })
}

/// A method [`record`] wrote, and whether the customer has past-due subscriptions of its
/// storefront (to retry with it once committed: [`attached`]).
pub(crate) struct Recorded {
    pub pm: PaymentMethodRow,
    pub(crate) past_due: bool,
}

impl Validated {
    /// What [`discard`] needs, kept before [`record`] takes the method.
    pub(crate) fn handle(&self) -> Discard {
        Discard { account: self.account.clone(), token: self.psp.token.clone() }
    }

    /// The PSP account the method was validated by.
    pub(crate) fn account(&self) -> &psp_store::PspAccount {
        &self.account
    }

    /// The method's row as recorded for `customer_id`, active, the customer's default or not.
    pub(crate) fn row(&self, customer_id: &str, is_default: bool, now: DateTime<Utc>) -> PaymentMethodRow {
        let (account, psp) = (&self.account, &self.psp);
        PaymentMethodRow {
            id: self.id.to_string(),
            customer_id: customer_id.to_owned(),
            storefront_id: account.storefront_id.clone(),
            psp_account_id: account.id.clone(),
            // Keyed by the PSP account: the same card at two PSPs is not linkable through it.
            fingerprint: sha256_hex(&format!("{}:{}", account.id, psp.fingerprint))[..16].to_owned(),
            token: psp.token.clone(),
            brand: psp.brand.clone(),
            last4: psp.last4.clone(),
            exp_month: psp.exp_month as i32,
            exp_year: psp.exp_year,
            psp_customer_id: psp.psp_customer_id.clone(),
            state: "active".into(),
            expired: false,
            is_default,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The action of attaching a method (before the method is written).
pub(crate) async fn journal_attach(
    tx: &mut TenantTx,
    now: DateTime<Utc>,
    customer_id: &str,
    account: &psp_store::PspAccount,
) -> Result<()> {
    tx.action(
        now,
        "payment_method.attach",
        Some(("customer", customer_id)),
        json!({"psp_account_id": account.id, "storefront_id": account.storefront_id}),
    )
    .await?;
    Ok(())
}

/// The outcome of attaching `pm` (once it is written).
pub(crate) async fn journal_attached(
    tx: &mut TenantTx,
    now: DateTime<Utc>,
    pm: &PaymentMethodRow,
) -> Result<()> {
    tx.outcome(
        now,
        "payment_method.attached",
        Some(("payment_method", pm.id.as_str())),
        json!({"customer_id": pm.customer_id, "brand": pm.brand, "default": pm.is_default}),
    )
    .await?;
    Ok(())
}

/// A validated token to detach at its PSP if it is not recorded after all ([`discard`]).
pub(crate) struct Discard {
    account: psp_store::PspAccount,
    token: String,
}

/// Detaches at its PSP a token validated (and attached there) whose recording was refused or
/// rolled back: a method the PSP still holds could be charged by anyone with the account's
/// keys, and nothing here would know it. Unless a stored method holds the same token — the
/// same card sent twice (a double click): the PSP answers the one method it already had, and
/// detaching it would break the stored one. Best effort: a failure is logged.
pub(crate) async fn discard(ctx: &Ctx, scope: &TenantScope, d: Discard) {
    let detached = async {
        let stored = {
            let mut tx = ctx.db.tenant_read_tx(scope).await?;
            let stored = store::token_in_use(&mut tx, &d.account.id, &d.token).await?;
            tx.commit().await?;
            stored
        };
        if stored {
            return Ok(());
        }
        let (connector, creds) = crate::payments::connector_for(ctx, scope, &d.account).await?;
        connector.detach_payment_method(&creds, &d.token).await.map_err(|e| ServiceError::PspUnavailable {
            message: format!("the PSP could not detach the token ({e})"),
        })
    };
    if let Err(e) = detached.await {
        tracing::warn!(psp_account_id = %d.account.id, error = %e, "a validated token that was not recorded could not be detached at its PSP");
    }
}

/// Attaching, step 3, in the caller's write transaction (which has found the customer): the
/// validated method, journaled; the customer's default when asked or when it has none. Once
/// the transaction has committed, the caller calls [`attached`].
pub(crate) async fn record(
    ctx: &Ctx,
    tx: &mut TenantTx,
    customer_id: &str,
    make_default: bool,
    validated: Validated,
) -> Result<Recorded> {
    let now = ctx.clock.now();
    let existing = store::payment_methods_of(tx, customer_id, false).await?;
    let make_default = make_default || !existing.iter().any(|p| p.is_default);
    journal_attach(tx, now, customer_id, &validated.account).await?;
    if make_default {
        for mut p in existing.into_iter().filter(|p| p.is_default) {
            p.is_default = false;
            p.updated_at = now;
            store::update_payment_method(tx, &p).await?;
        }
    }
    let pm = validated.row(customer_id, make_default, now);
    store::insert_payment_method(tx, &pm).await?;
    journal_attached(tx, now, &pm).await?;
    let filter = SubscriptionFilter {
        customer_id: Some(customer_id),
        status: Some("past_due"),
        storefront_id: Some(&pm.storefront_id),
        ..Default::default()
    };
    let (past_due, _) = azotte_store::subscriptions::list_subscriptions(tx, &filter, 1, None).await?;
    Ok(Recorded { pm, past_due: !past_due.is_empty() })
}

/// After a recorded method's transaction committed: the customer's past-due subscriptions of
/// its storefront, if it had any, retry with it now (dunning), in the background.
pub(crate) fn attached(ctx: &Ctx, scope: &TenantScope, recorded: &Recorded) {
    if !recorded.past_due {
        return;
    }
    let pm = &recorded.pm;
    let (ctx2, job_scope) = (ctx.clone(), scope.for_job("dunning"));
    let (customer, storefront, pm_id) = (pm.customer_id.clone(), pm.storefront_id.clone(), pm.id.clone());
    tokio::spawn(async move {
        let retried = crate::subscriptions::renewals::retry_with_new_method(
            &ctx2,
            &job_scope,
            &customer,
            &storefront,
            &pm_id,
        )
        .await;
        if let Err(e) = retried {
            tracing::warn!(customer_id = %customer, error = %e, "retry with the new payment method failed; dunning continues");
        }
    });
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
    if what == Change::Delete {
        detach(ctx, scope, customer_id, id).await?;
    }
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

/// Detaches a method at its PSP before it is deleted here: a method the PSP still holds could
/// be charged by anyone with the account's keys. Nothing is deleted if the PSP cannot be
/// reached.
async fn detach(ctx: &Ctx, scope: &TenantScope, customer_id: &str, id: &str) -> Result<()> {
    let (pm, account) = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let pm = store::get_payment_method(&mut tx, customer_id, id)
            .await?
            .filter(|p| p.state != "deleted" && scope.storefront_allowed(&p.storefront_id))
            .ok_or(ServiceError::NotFound { resource: "payment_method" })?;
        let account = psp_store::get(&mut tx, &pm.storefront_id, &pm.psp_account_id).await?;
        tx.commit().await?;
        (pm, account)
    };
    // An account deleted since holds nothing we can reach.
    let Some(account) = account else { return Ok(()) };
    let (connector, creds) = crate::payments::connector_for(ctx, scope, &account).await?;
    match connector.detach_payment_method(&creds, &pm.token).await {
        Ok(()) => Ok(()),
        Err(ConnectorError::Configuration { message }) => {
            Err(invalid("psp_account_id", "psp_account_misconfigured", message))
        }
        Err(e) => Err(ServiceError::PspUnavailable {
            message: format!(
                "the PSP could not detach the payment method ({e}); nothing was deleted, try again"
            ),
        }),
    }
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
