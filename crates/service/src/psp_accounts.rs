//! PSP accounts: each belongs to exactly one storefront, with write-only credentials sealed
//! under the tenant's data key and bound to tenant, environment, storefront and account.
//!
//! Rules: a live account only in a live environment and a test account only in a test one; the
//! built-in `sandbox` connector only in test environments. Reading an account shows a
//! fingerprint and the last four characters of each secret, never the secret. Managing accounts
//! takes `psp.manage`; reading them `catalog.read`. An API key restricted to storefronts reaches
//! only their accounts.

use std::collections::BTreeSet;

use azotte_crypto::tokens::sha256_hex;
use azotte_domain::catalog::{self as rules, Currency};
use azotte_domain::id::PspAccountId;
use azotte_domain::permission::Permission;
use azotte_domain::tenant::Mode;
use azotte_domain::{FieldError, Secret, ValidationErrors};
use azotte_store::catalog as catalog_store;
use azotte_store::psp_accounts::{self as store, PspAccount};
use azotte_store::{TenantScope, TenantTx};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{vault, Ctx, Result, ServiceError};

/// The connectors Azotte speaks.
pub const CONNECTORS: &[&str] = &["sandbox", "stripe"];
/// Payment channels an account may serve.
pub const CHANNELS: &[&str] = &["card", "sepa_debit", "apple_pay", "google_pay", "paypal", "carrier_billing"];

/// The secrets of an account, in the clear only inside the service.
#[derive(Serialize, Deserialize)]
pub struct Credentials {
    pub api_secret: Option<String>,
    pub webhook_secret: Option<String>,
}

/// Secrets given to create or replace credentials.
#[derive(Debug, Clone, Default)]
pub struct CredentialsInput {
    pub api_secret: Option<Secret<String>>,
    pub webhook_secret: Option<Secret<String>>,
}

/// An account to create.
#[derive(Debug, Clone)]
pub struct AccountInput {
    pub connector: String,
    pub display_name: String,
    /// `test` or `live`; must be the environment's mode.
    pub mode: Mode,
    pub credentials: CredentialsInput,
    pub priority: Option<i32>,
    pub weight: Option<i32>,
    /// Default: every currency of the storefront.
    pub currencies: Option<Vec<String>>,
    /// Default: `card`.
    pub channels: Option<Vec<String>>,
    pub active: Option<bool>,
}

/// Changes to an account; `credentials` replaces both secrets.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    pub display_name: Option<String>,
    pub credentials: Option<CredentialsInput>,
    pub priority: Option<i32>,
    pub weight: Option<i32>,
    pub currencies: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub active: Option<bool>,
}

/// Associated data of an account's credentials: a ciphertext copied to another row (another
/// account, storefront, environment or tenant) does not decrypt.
fn aad(tx: &TenantTx, storefront_id: &str, account_id: &str) -> Vec<u8> {
    format!(
        "azotte:psp-credentials:v1\0{}\0{}\0{storefront_id}\0{account_id}",
        tx.scope().tenant_id(),
        tx.scope().environment().as_str()
    )
    .into_bytes()
}

fn fingerprint(secret: &str) -> String {
    sha256_hex(secret)[..16].to_owned()
}

fn last4(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

fn check_secret(field: &'static str, s: &str, prefixes: &[&str], errors: &mut ValidationErrors) {
    let ok_chars = s.chars().all(|c| c.is_ascii_graphic());
    if !(8..=512).contains(&s.len()) || !ok_chars {
        errors.push(FieldError::new(field, "invalid_secret", "8 to 512 printable ASCII characters"));
    } else if !prefixes.is_empty() && !prefixes.iter().any(|p| s.starts_with(p)) {
        errors.push(FieldError::new(
            field,
            "invalid_secret",
            format!("must start with {}", prefixes.join(" or ")),
        ));
    }
}

/// Checks the secrets for the connector and mode.
fn check_credentials(connector: &str, mode: Mode, c: &CredentialsInput, errors: &mut ValidationErrors) {
    match connector {
        "stripe" => {
            let api = match mode {
                Mode::Live => ["sk_live_", "rk_live_"],
                Mode::Test => ["sk_test_", "rk_test_"],
            };
            match &c.api_secret {
                Some(s) => check_secret("credentials.api_secret", s.expose(), &api, errors),
                None => errors.push(FieldError::new(
                    "credentials.api_secret",
                    "missing_field",
                    "Stripe needs its secret API key",
                )),
            }
            match &c.webhook_secret {
                Some(s) => check_secret("credentials.webhook_secret", s.expose(), &["whsec_"], errors),
                None => errors.push(FieldError::new(
                    "credentials.webhook_secret",
                    "missing_field",
                    "Stripe needs the webhook signing secret of the endpoint",
                )),
            }
        }
        _ => {
            // The sandbox needs no secret; any given is still validated and sealed.
            if let Some(s) = &c.api_secret {
                check_secret("credentials.api_secret", s.expose(), &[], errors);
            }
            if let Some(s) = &c.webhook_secret {
                check_secret("credentials.webhook_secret", s.expose(), &[], errors);
            }
        }
    }
}

/// Seals the credentials into the account (fingerprints and last-4 for display).
async fn seal(ctx: &Ctx, tx: &mut TenantTx, a: &mut PspAccount, c: &CredentialsInput) -> Result<()> {
    let clear = Credentials {
        api_secret: c.api_secret.as_ref().map(|s| s.expose().clone()),
        webhook_secret: c.webhook_secret.as_ref().map(|s| s.expose().clone()),
    };
    a.api_secret_fingerprint = clear.api_secret.as_deref().map(fingerprint);
    a.api_secret_last4 = clear.api_secret.as_deref().map(last4);
    a.webhook_secret_fingerprint = clear.webhook_secret.as_deref().map(fingerprint);
    a.webhook_secret_last4 = clear.webhook_secret.as_deref().map(last4);
    if clear.api_secret.is_none() && clear.webhook_secret.is_none() {
        a.credentials = None;
        return Ok(());
    }
    let key = vault::tenant_key(ctx, tx).await?;
    let plain = Secret::new(serde_json::to_vec(&clear).map_err(ServiceError::internal)?);
    a.credentials = Some(vault::encrypt(&key, plain.expose(), &aad(tx, &a.storefront_id, &a.id))?);
    Ok(())
}

/// Validates the routing fields against the storefront.
fn check_routing(
    a: &mut PspAccount,
    currencies: Option<Vec<String>>,
    channels: Option<Vec<String>>,
    storefront: &catalog_store::Storefront,
    errors: &mut ValidationErrors,
) {
    if let Some(n) = errors.check(rules::validate_name("display_name", &a.display_name, 100)) {
        a.display_name = n;
    }
    if !(0..=1000).contains(&a.priority) {
        errors.push(FieldError::new("priority", "out_of_range", "0 to 1000 (lower is tried first)"));
    }
    if !(1..=1000).contains(&a.weight) {
        errors.push(FieldError::new("weight", "out_of_range", "1 to 1000"));
    }
    if let Some(list) = currencies {
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let f = format!("currencies[{i}]");
            match Currency::parse(&f, c) {
                Err(e) => errors.push(e),
                Ok(c) if !storefront.currencies.contains(&c) => errors.push(FieldError::new(
                    f,
                    "currency_not_served",
                    format!("storefront {} does not sell in {c}", storefront.id),
                )),
                Ok(c) if !out.contains(&c.to_string()) => out.push(c.to_string()),
                Ok(_) => {}
            }
        }
        if out.is_empty() {
            errors.push(FieldError::new("currencies", "empty", "an account serves at least one currency"));
        }
        a.currencies = out;
    }
    if let Some(list) = channels {
        let mut set = BTreeSet::new();
        for (i, c) in list.iter().enumerate() {
            if CHANNELS.contains(&c.as_str()) {
                set.insert(c.clone());
            } else {
                errors.push(FieldError::new(
                    format!("channels[{i}]"),
                    "unknown_channel",
                    format!("one of {}", CHANNELS.join(", ")),
                ));
            }
        }
        if list.is_empty() {
            errors.push(FieldError::new("channels", "empty", "an account serves at least one channel"));
        }
        a.channels = set.into_iter().collect();
    }
}

fn account_json(a: &PspAccount) -> serde_json::Value {
    json!({
        "storefront_id": a.storefront_id, "connector": a.connector, "display_name": a.display_name, "mode": a.mode,
        "api_secret_fingerprint": a.api_secret_fingerprint, "webhook_secret_fingerprint": a.webhook_secret_fingerprint,
        "priority": a.priority, "weight": a.weight, "currencies": a.currencies, "channels": a.channels, "status": a.status,
    })
}

async fn storefront(tx: &mut TenantTx, id: &str) -> Result<catalog_store::Storefront> {
    if !tx.scope().storefront_allowed(id) {
        return Err(ServiceError::NotFound { resource: "storefront" });
    }
    catalog_store::get_storefront(tx, id).await?.ok_or(ServiceError::NotFound { resource: "storefront" })
}

async fn load(tx: &mut TenantTx, storefront_id: &str, id: &str) -> Result<PspAccount> {
    storefront(tx, storefront_id).await?;
    store::get(tx, storefront_id, id).await?.ok_or(ServiceError::NotFound { resource: "psp_account" })
}

/// Adds an account to a storefront.
pub async fn create(
    ctx: &Ctx,
    scope: &TenantScope,
    storefront_id: &str,
    input: AccountInput,
) -> Result<PspAccount> {
    crate::security::require(ctx, scope, Permission::PspManage).await?;
    let now = ctx.clock.now();
    let env_mode = scope.environment().mode();
    let mut errors = ValidationErrors::default();
    if !CONNECTORS.contains(&input.connector.as_str()) {
        errors.push(FieldError::new(
            "connector",
            "unknown_connector",
            format!("one of {}", CONNECTORS.join(", ")),
        ));
    } else if input.connector == "sandbox" && env_mode == Mode::Live {
        errors.push(FieldError::new(
            "connector",
            "sandbox_in_live_environment",
            "the sandbox connector exists only in test environments (development, staging)",
        ));
    }
    if input.mode != env_mode {
        let (code, msg) = match input.mode {
            Mode::Live => (
                "live_account_in_test_environment",
                "a live PSP account belongs in a live environment (production)",
            ),
            Mode::Test => {
                ("test_account_in_live_environment", "a test PSP account belongs in a test environment")
            }
        };
        errors.push(FieldError::new("mode", code, msg));
    }
    check_credentials(&input.connector, input.mode, &input.credentials, &mut errors);
    errors.finish()?;

    let mut tx = ctx.db.tenant_tx(scope).await?;
    let sf = storefront(&mut tx, storefront_id).await?;
    let mut a = PspAccount {
        id: PspAccountId::new().to_string(),
        storefront_id: sf.id.clone(),
        connector: input.connector,
        display_name: input.display_name,
        mode: input.mode.as_str().to_owned(),
        credentials: None,
        api_secret_fingerprint: None,
        api_secret_last4: None,
        webhook_secret_fingerprint: None,
        webhook_secret_last4: None,
        priority: input.priority.unwrap_or(100),
        weight: input.weight.unwrap_or(100),
        currencies: sf.currencies.iter().map(ToString::to_string).collect(),
        channels: vec!["card".into()],
        status: if input.active.unwrap_or(true) { "active" } else { "inactive" }.into(),
        created_at: now,
        updated_at: now,
    };
    let mut errors = ValidationErrors::default();
    check_routing(&mut a, input.currencies, input.channels, &sf, &mut errors);
    errors.finish()?;
    let r = Some(("psp_account", a.id.clone()));
    tx.action(
        now,
        "psp_account.create",
        r.as_ref().map(|(t, i)| (*t, i.as_str())),
        json!({"storefront_id": sf.id}),
    )
    .await?;
    seal(ctx, &mut tx, &mut a, &input.credentials).await?;
    store::insert(&mut tx, &a).await?;
    tx.outcome(now, "psp_account.created", r.as_ref().map(|(t, i)| (*t, i.as_str())), account_json(&a))
        .await?;
    tx.commit().await?;
    Ok(a)
}

/// Changes an account. New credentials replace the old ones (both secrets).
pub async fn update(
    ctx: &Ctx,
    scope: &TenantScope,
    storefront_id: &str,
    id: &str,
    p: AccountPatch,
) -> Result<PspAccount> {
    crate::security::require(ctx, scope, Permission::PspManage).await?;
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let sf = storefront(&mut tx, storefront_id).await?;
    let before = load(&mut tx, storefront_id, id).await?;
    let mut a = before.clone();
    if let Some(v) = p.display_name {
        a.display_name = v;
    }
    if let Some(v) = p.priority {
        a.priority = v;
    }
    if let Some(v) = p.weight {
        a.weight = v;
    }
    if let Some(v) = p.active {
        a.status = if v { "active" } else { "inactive" }.into();
    }
    let mut errors = ValidationErrors::default();
    check_routing(&mut a, p.currencies, p.channels, &sf, &mut errors);
    let mode = if a.mode == "live" { Mode::Live } else { Mode::Test };
    if let Some(c) = &p.credentials {
        check_credentials(&a.connector, mode, c, &mut errors);
    }
    errors.finish()?;
    let r = Some(("psp_account", id));
    tx.action(now, "psp_account.update", r, json!({"credentials_replaced": p.credentials.is_some()})).await?;
    if let Some(c) = &p.credentials {
        seal(ctx, &mut tx, &mut a, c).await?;
    }
    let (b, after) = (account_json(&before), account_json(&a));
    let changed: Vec<String> = after
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    a.updated_at = now;
    store::update(&mut tx, &a).await?;
    tx.outcome(now, "psp_account.updated", r, json!({"changed": changed, "account": after})).await?;
    tx.commit().await?;
    Ok(a)
}

/// One account of a storefront.
pub async fn get(ctx: &Ctx, scope: &TenantScope, storefront_id: &str, id: &str) -> Result<PspAccount> {
    crate::security::require(ctx, scope, Permission::CatalogRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let a = load(&mut tx, storefront_id, id).await?;
    tx.commit().await?;
    Ok(a)
}

/// The accounts of a storefront, by priority.
pub async fn list(ctx: &Ctx, scope: &TenantScope, storefront_id: &str) -> Result<Vec<PspAccount>> {
    crate::security::require(ctx, scope, Permission::CatalogRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    storefront(&mut tx, storefront_id).await?;
    let a = store::of_storefront(&mut tx, storefront_id).await?;
    tx.commit().await?;
    Ok(a)
}

/// Removes an account.
pub async fn delete(ctx: &Ctx, scope: &TenantScope, storefront_id: &str, id: &str) -> Result<()> {
    crate::security::require(ctx, scope, Permission::PspManage).await?;
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let a = load(&mut tx, storefront_id, id).await?;
    store::delete(&mut tx, storefront_id, id).await?;
    let r = Some(("psp_account", id));
    tx.action(now, "psp_account.delete", r, json!({})).await?;
    tx.outcome(
        now,
        "psp_account.deleted",
        r,
        json!({"storefront_id": a.storefront_id, "connector": a.connector}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How many accounts a storefront has (a storefront with accounts cannot be deleted).
pub async fn count_for_storefront(tx: &mut TenantTx, storefront_id: &str) -> Result<usize> {
    Ok(store::of_storefront(tx, storefront_id).await?.len())
}

/// The account's credentials in the clear, for the connector. A ciphertext that does not open
/// (moved from another row, altered, or under a missing key) is an error, recorded in the
/// journal as a security decision and logged; it never reads as "no credentials". `tx` must be
/// read-only: the finding is recorded in a transaction of its own, which on SQLite waits for
/// the writer (in a write transaction use [`open_credentials`]).
pub async fn credentials(ctx: &Ctx, tx: &mut TenantTx, a: &PspAccount) -> Result<Credentials> {
    match open_credentials(ctx, tx, a).await? {
        Ok(c) => Ok(c),
        Err(unopened) => Err(unopened.record(ctx, tx.scope()).await),
    }
}

/// Credentials that did not open: the error, and the security finding to record — after the
/// transaction they were read in has ended ([`Unopened::record`]).
pub(crate) struct Unopened {
    error: ServiceError,
    account_id: String,
    storefront_id: String,
}

impl Unopened {
    /// Logs and journals the finding (a security decision, in a transaction of its own); the
    /// error to return.
    pub(crate) async fn record(self, ctx: &Ctx, scope: &TenantScope) -> ServiceError {
        let code = match &self.error {
            ServiceError::Undecryptable { code, .. } => *code,
            _ => "credential_undecryptable",
        };
        let (id, storefront_id, e) = (&self.account_id, &self.storefront_id, &self.error);
        tracing::error!(psp_account_id = %id, storefront_id = %storefront_id, code, error = %e, "PSP credentials do not decrypt");
        if let Err(failed) = azotte_store::journal::record_security(
            &ctx.db,
            Some((scope.tenant_id(), scope.environment().as_str())),
            ctx.clock.now(),
            "psp_account.credentials_undecryptable",
            scope.principal(),
            Some(("psp_account", id)),
            json!({"storefront_id": storefront_id, "code": code}),
        )
        .await
        {
            return failed.into();
        }
        self.error
    }
}

/// [`credentials`] for any transaction: a ciphertext that does not open is returned as
/// [`Unopened`], for the caller to record once `tx` has ended.
pub(crate) async fn open_credentials(
    ctx: &Ctx,
    tx: &mut TenantTx,
    a: &PspAccount,
) -> Result<std::result::Result<Credentials, Unopened>> {
    let Some(sealed) = &a.credentials else {
        return Ok(Ok(Credentials { api_secret: None, webhook_secret: None }));
    };
    let aad = aad(tx, &a.storefront_id, &a.id);
    match vault::open(ctx, tx, sealed, &aad).await {
        Ok(plain) => Ok(Ok(serde_json::from_slice(plain.expose()).map_err(ServiceError::internal)?)),
        Err(error) => {
            Ok(Err(Unopened { error, account_id: a.id.clone(), storefront_id: a.storefront_id.clone() }))
        }
    }
}

/// What a credentials check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckResult {
    pub api_secret_present: bool,
    pub webhook_secret_present: bool,
}

/// Opens an account's credentials to prove they are usable (and, once the connector exists,
/// that the PSP accepts them); reports what it found.
pub async fn check(ctx: &Ctx, scope: &TenantScope, storefront_id: &str, id: &str) -> Result<CheckResult> {
    crate::security::require(ctx, scope, Permission::PspManage).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let a = load(&mut tx, storefront_id, id).await?;
    let c = credentials(ctx, &mut tx, &a).await?;
    tx.commit().await?;
    let consistent = c.api_secret.as_deref().map(fingerprint) == a.api_secret_fingerprint
        && c.webhook_secret.as_deref().map(fingerprint) == a.webhook_secret_fingerprint;
    if !consistent {
        return Err(ServiceError::Undecryptable {
            code: "credential_undecryptable",
            message: format!("PSP account {} credentials decrypt but do not match their fingerprints", a.id),
        });
    }
    Ok(CheckResult {
        api_secret_present: c.api_secret.is_some(),
        webhook_secret_present: c.webhook_secret.is_some(),
    })
}
