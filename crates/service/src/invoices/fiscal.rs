//! Fiscalization: after an invoice is paid (or credited, or voided after fiscalization), the
//! storefront's provider is told, by a job the worker runs each housekeeping tick, retried with
//! backoff until it succeeds or its attempts run out — every attempt and result journaled.
//!
//! Providers: `none` (nothing to do; no job is queued) and `local`, which signs the document's
//! canonical JSON (sorted keys, no whitespace; `azotte_crypto::chain::canonical_json`) with the
//! tenant's Ed25519 fiscal key, derived from the installation's root secret. The signed bytes
//! are `azotte-fiscal-document/v1\n` followed by the canonical JSON. [`verify`] checks the
//! signature against the tenant's key and that the document still matches what is stored, so
//! an invoice changed after it was signed fails verification.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use azotte_crypto::chain;
use azotte_domain::invoice::{FiscalAction, FiscalProvider, FiscalStatus};
use azotte_domain::permission::Permission;
use azotte_store::invoices::{self as store, FiscalRow, InvoiceRow};
use azotte_store::journal;
use azotte_store::{TenantScope, TenantTx};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::{Ctx, Result, ServiceError};

/// A future a provider returns (dyn-compatible trait).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Attempts before a record is given up (`failed`).
pub const MAX_ATTEMPTS: i32 = 10;
/// How long a running attempt holds its record.
const LEASE: chrono::Duration = chrono::Duration::minutes(2);
/// Domain separation of the signed bytes.
const SIGNED_PREFIX: &[u8] = b"azotte-fiscal-document/v1\n";

/// What a provider is given.
#[derive(Debug, Clone)]
pub struct FiscalDocument {
    pub tenant_id: String,
    pub environment: String,
    pub document_id: String,
    pub action: FiscalAction,
    /// The document, canonical JSON.
    pub canonical: String,
    /// The same for every attempt of one record: a provider must not register it twice.
    pub idempotency_key: String,
}

/// What a provider answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id of the document.
    pub reference: Option<String>,
    /// Hex signature, its key id and hex public key (`local`).
    pub signature: Option<String>,
    pub key_id: Option<String>,
    pub public_key: Option<String>,
}

/// Why a provider failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Try again later (unavailable, timeout).
    #[error("{0}")]
    Retryable(String),
    /// The provider refused the document; retrying will not help.
    #[error("{0}")]
    Rejected(String),
}

type Answer<'a> = BoxFuture<'a, std::result::Result<Receipt, ProviderError>>;

/// A fiscalization provider (one per storefront, by its `fiscalization` setting).
pub trait Provider: Send + Sync {
    /// Registers a paid invoice.
    fn issue<'a>(&'a self, doc: &'a FiscalDocument) -> Answer<'a>;
    /// Cancels a registered invoice.
    fn cancel<'a>(&'a self, doc: &'a FiscalDocument) -> Answer<'a>;
    /// Registers a credit note.
    fn credit_note<'a>(&'a self, doc: &'a FiscalDocument) -> Answer<'a>;
}

/// `none`: nothing to register.
pub struct NoneProvider;

impl Provider for NoneProvider {
    fn issue<'a>(&'a self, _: &'a FiscalDocument) -> Answer<'a> {
        Box::pin(async { Ok(Receipt::default()) })
    }
    fn cancel<'a>(&'a self, _: &'a FiscalDocument) -> Answer<'a> {
        Box::pin(async { Ok(Receipt::default()) })
    }
    fn credit_note<'a>(&'a self, _: &'a FiscalDocument) -> Answer<'a> {
        Box::pin(async { Ok(Receipt::default()) })
    }
}

/// `local`: signs each document with the tenant's Ed25519 fiscal key.
pub struct LocalProvider {
    seed: [u8; 32],
}

impl LocalProvider {
    /// The provider of a tenant: its key is derived from the installation's fiscal root.
    pub fn for_tenant(keys: &crate::keys::Keys, tenant_id: &str) -> Self {
        LocalProvider { seed: *keys.fiscal_signing.derive(tenant_id).expose() }
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(chain::public_key(&self.seed))
    }

    /// The key id: `fk_` and the public key's first 8 bytes, hex.
    pub fn key_id(&self) -> String {
        format!("fk_{}", &self.public_key_hex()[..16])
    }

    fn sign(&self, doc: &FiscalDocument) -> Receipt {
        let sig = chain::sign(&self.seed, &signed_bytes(&doc.canonical));
        Receipt {
            reference: Some(format!("local:{}:{}", doc.action, doc.document_id)),
            signature: Some(hex::encode(sig)),
            key_id: Some(self.key_id()),
            public_key: Some(self.public_key_hex()),
        }
    }
}

impl Provider for LocalProvider {
    fn issue<'a>(&'a self, doc: &'a FiscalDocument) -> Answer<'a> {
        Box::pin(async move { Ok(self.sign(doc)) })
    }
    fn cancel<'a>(&'a self, doc: &'a FiscalDocument) -> Answer<'a> {
        Box::pin(async move { Ok(self.sign(doc)) })
    }
    fn credit_note<'a>(&'a self, doc: &'a FiscalDocument) -> Answer<'a> {
        Box::pin(async move { Ok(self.sign(doc)) })
    }
}

/// A provider that is down (the [`Providers::set_outage`] switch).
struct Unavailable;

impl Provider for Unavailable {
    fn issue<'a>(&'a self, _: &'a FiscalDocument) -> Answer<'a> {
        Box::pin(async { Err(ProviderError::Retryable("fiscalization provider unavailable".into())) })
    }
    fn cancel<'a>(&'a self, d: &'a FiscalDocument) -> Answer<'a> {
        self.issue(d)
    }
    fn credit_note<'a>(&'a self, d: &'a FiscalDocument) -> Answer<'a> {
        self.issue(d)
    }
}

/// The providers of this process, with an outage switch (operations drills and tests).
#[derive(Debug, Clone, Default)]
pub struct Providers {
    outage: Arc<AtomicBool>,
}

impl Providers {
    /// While on, every provider answers "unavailable" (retried later).
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }

    fn get(&self, ctx: &Ctx, tenant_id: &str, kind: FiscalProvider) -> Box<dyn Provider> {
        if self.outage.load(Ordering::SeqCst) {
            return Box::new(Unavailable);
        }
        match kind {
            FiscalProvider::None => Box::new(NoneProvider),
            FiscalProvider::Local => Box::new(LocalProvider::for_tenant(&ctx.keys, tenant_id)),
        }
    }
}

/// The bytes a `local` signature covers.
pub fn signed_bytes(canonical: &str) -> Vec<u8> {
    [SIGNED_PREFIX, canonical.as_bytes()].concat()
}

/// Checks a `local` signature (hex) over a document (canonical JSON) with a public key (hex):
/// what a third party holding the tenant's public key runs offline.
pub fn verify_signature(public_key_hex: &str, canonical: &str, signature_hex: &str) -> bool {
    let (Ok(pk), Ok(sig)) = (hex::decode(public_key_hex), hex::decode(signature_hex)) else { return false };
    let Ok(pk): std::result::Result<[u8; 32], _> = pk.try_into() else { return false };
    chain::verify(&pk, &signed_bytes(canonical), &sig)
}

/// Queues a provider request for a document of `invoice`, in the caller's transaction (outcome
/// `fiscal.queued`); nothing for the `none` provider, nothing twice.
pub(crate) async fn enqueue(
    tx: &mut TenantTx,
    invoice: &InvoiceRow,
    document_id: &str,
    action: FiscalAction,
    now: DateTime<Utc>,
) -> Result<()> {
    let provider: FiscalProvider = invoice.fiscal_provider.parse().map_err(|_| {
        ServiceError::Internal(
            format!("invoice {} has provider {:?}", invoice.id, invoice.fiscal_provider).into(),
        )
    })?;
    if provider == FiscalProvider::None
        || store::get_fiscal(tx, document_id, action.as_str()).await?.is_some()
    {
        return Ok(());
    }
    let row = FiscalRow {
        document_id: document_id.to_owned(),
        action: action.as_str().to_owned(),
        invoice_id: invoice.id.clone(),
        provider: provider.as_str().to_owned(),
        status: FiscalStatus::Pending.as_str().to_owned(),
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        reference: None,
        document: None,
        signature: None,
        key_id: None,
        public_key: None,
        created_at: now,
        updated_at: now,
    };
    store::insert_fiscal(tx, &row).await?;
    tx.outcome(
        now,
        "fiscal.queued",
        Some(("invoice", &invoice.id)),
        json!({"document_id": document_id, "action": action, "provider": provider}),
    )
    .await?;
    Ok(())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Value {
    t.map(ts).map(Value::String).unwrap_or(Value::Null)
}

/// The document a record is about, as the provider gets it, from what is stored now.
async fn document(tx: &mut TenantTx, rec: &FiscalRow) -> Result<Value> {
    let scope = tx.scope().clone();
    let head =
        json!({"tenant_id": scope.tenant_id().to_string(), "environment": scope.environment().as_str()});
    let gone =
        || ServiceError::Internal(format!("fiscal record of a missing document {}", rec.document_id).into());
    let d = super::detail(tx, &scope, &rec.invoice_id).await.map_err(|_| gone())?;
    let i = &d.invoice;
    let invoice = json!({
        "type": "invoice", "id": i.id, "number": i.number, "storefront_id": i.storefront_id,
        "customer_id": i.customer_id, "customer_country": i.customer_country, "subscription_id": i.subscription_id,
        "currency": i.currency, "issued_at": opt_ts(i.issued_at), "paid_at": opt_ts(i.paid_at),
        "net": i.net, "tax": i.tax, "total": i.total,
        "lines": d.lines.iter().map(|l| json!({
            "line_no": l.line_no, "kind": l.kind, "description": l.description, "unit_amount": l.unit_amount,
            "quantity": l.quantity, "amount": l.amount, "tax_behaviour": l.tax_behaviour, "rate_bp": l.rate_bp,
            "net": l.net, "tax": l.tax, "gross": l.gross,
            "period_start": opt_ts(l.period_start), "period_end": opt_ts(l.period_end),
        })).collect::<Vec<_>>(),
        "payments": d.payments.iter().map(|p| json!({"payment_id": p.payment_id, "amount": p.amount})).collect::<Vec<_>>(),
    });
    let body = match rec.action.parse::<FiscalAction>() {
        Ok(FiscalAction::Issue) => invoice,
        Ok(FiscalAction::Cancel) => {
            json!({"type": "invoice_cancellation", "invoice": invoice, "voided_at": opt_ts(i.voided_at)})
        }
        Ok(FiscalAction::CreditNote) => {
            let (n, lines) = d.credit_notes.iter().find(|(n, _)| n.id == rec.document_id).ok_or_else(gone)?;
            json!({
                "type": "credit_note", "id": n.id, "number": n.number, "storefront_id": n.storefront_id,
                "invoice_id": i.id, "invoice_number": i.number, "customer_id": i.customer_id,
                "payment_id": n.payment_id, "refund_id": n.refund_id, "currency": n.currency,
                "issued_at": ts(n.created_at), "reason": n.reason, "net": n.net, "tax": n.tax, "total": n.total,
                "lines": lines.iter().map(|l| json!({
                    "line_no": l.line_no, "invoice_line_no": l.invoice_line_no, "description": l.description,
                    "rate_bp": l.rate_bp, "net": l.net, "tax": l.tax, "gross": l.gross,
                })).collect::<Vec<_>>(),
            })
        }
        Err(()) => return Err(ServiceError::Internal(format!("fiscal action {:?}", rec.action).into())),
    };
    let mut doc = head;
    if let (Some(h), Value::Object(b)) = (doc.as_object_mut(), body) {
        h.extend(b);
    }
    Ok(doc)
}

/// Runs every due fiscalization attempt of the tenant environment; a failing one is logged and
/// the others still run (the first failure is returned at the end).
pub async fn run_due(ctx: &Ctx, scope: &TenantScope) -> Result<usize> {
    let due = {
        let mut tx = ctx.db.tenant_read_tx(scope).await?;
        let d = store::due_fiscal(&mut tx, ctx.clock.now(), 100).await?;
        tx.commit().await?;
        d
    };
    let mut n = 0;
    let mut failure = None;
    for rec in due {
        // One record that cannot be attempted does not hold up the others: logged, and tried
        // again at the next tick.
        let (record, invoice) = (rec.document_id.clone(), rec.invoice_id.clone());
        let attempted = async {
            // The attempt continues the lineage of what queued it: the invoice paid or voided,
            // or the credit note issued.
            let (doc, wanted) = (rec.document_id.clone(), rec.action.clone());
            let cause = crate::journal::cause(ctx, scope, ("invoice", &rec.invoice_id), |e| {
                match (wanted.as_str(), e.type_.as_str()) {
                    ("issue", "invoice.paid") | ("cancel", "invoice.voided") => true,
                    ("credit_note", "credit_note.issued") => {
                        e.body_json().get("credit_note_id").and_then(|v| v.as_str()) == Some(doc.as_str())
                    }
                    _ => false,
                }
            })
            .await?;
            journal::with_meta(crate::journal::job_meta(cause), attempt(ctx, scope, rec)).await
        };
        match attempted.await {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(invoice_id = %invoice, document_id = %record, error = %e, "fiscalization attempt failed; will retry");
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// [`run_due`] in every tenant environment (the worker's housekeeping tick). A failing tenant
/// environment does not hold up the others: each failure is logged, and the first is returned
/// once all have had their turn.
pub async fn run_due_everywhere(ctx: &Ctx) -> Result<usize> {
    let mut n = 0;
    let mut failure = None;
    for scope in crate::payments::every_scope(ctx, "fiscalization").await? {
        match run_due(ctx, &scope).await {
            Ok(k) => n += k,
            Err(e) => {
                tracing::warn!(tenant = %scope.tenant_id(), error = %e, "fiscalization failed; the other tenants went on");
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// The delay before attempt `attempts + 1`: one minute doubled per failure, at most six hours,
/// plus up to a fifth more at random so retries of many documents spread out.
fn backoff(attempts: i32) -> chrono::Duration {
    let base = 60i64 << attempts.clamp(1, 10).saturating_sub(1);
    let secs = base.min(6 * 3600);
    chrono::Duration::seconds(secs + rand::random::<u32>() as i64 % (secs / 5 + 1))
}

/// One attempt: claim (journaled), call the provider outside any transaction, record the
/// answer (journaled). `false` when another worker had claimed it.
async fn attempt(ctx: &Ctx, scope: &TenantScope, rec: FiscalRow) -> Result<bool> {
    let bad =
        |what: &str| ServiceError::Internal(format!("fiscal record {}: {what}", rec.document_id).into());
    let action: FiscalAction = rec.action.parse().map_err(|_| bad("action"))?;
    let kind: FiscalProvider = rec.provider.parse().map_err(|_| bad("provider"))?;
    let r = Some(("invoice", rec.invoice_id.as_str()));
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    // A credit note or a cancellation of an invoice the provider has not registered yet (its
    // `issue` still being retried) waits for it, without counting an attempt: a provider
    // refuses a credit note for an invoice it does not know.
    if action != FiscalAction::Issue {
        let issue = store::get_fiscal(&mut tx, &rec.invoice_id, FiscalAction::Issue.as_str()).await?;
        if issue.is_some_and(|i| i.status == FiscalStatus::Pending.as_str()) {
            return Ok(false);
        }
    }
    if !store::claim_fiscal(&mut tx, &rec.document_id, &rec.action, now, now + LEASE).await? {
        return Ok(false);
    }
    tx.action(
        now,
        "fiscal.attempt",
        r,
        json!({"document_id": rec.document_id, "action": action, "provider": kind, "attempt": rec.attempts + 1}),
    )
    .await?;
    let canonical = chain::canonical_json(&document(&mut tx, &rec).await?);
    tx.commit().await?;

    let tenant_id = scope.tenant_id().to_string();
    let doc = FiscalDocument {
        tenant_id: tenant_id.clone(),
        environment: scope.environment().as_str().to_owned(),
        document_id: rec.document_id.clone(),
        action,
        canonical: canonical.clone(),
        idempotency_key: format!("{}:{}", rec.document_id, rec.action),
    };
    let provider = ctx.fiscal.get(ctx, &tenant_id, kind);
    let answer = match action {
        FiscalAction::Issue => provider.issue(&doc).await,
        FiscalAction::Cancel => provider.cancel(&doc).await,
        FiscalAction::CreditNote => provider.credit_note(&doc).await,
    };

    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    tx.action(now, "fiscal.record", r, json!({"document_id": rec.document_id, "action": action})).await?;
    let mut row = rec.clone();
    row.attempts += 1;
    row.updated_at = now;
    let body =
        json!({"document_id": rec.document_id, "action": action, "provider": kind, "attempt": row.attempts});
    let (kind_of, event) = match action {
        FiscalAction::Issue => ("invoice", "invoice.fiscalized"),
        FiscalAction::Cancel => ("invoice", "invoice.fiscal_canceled"),
        FiscalAction::CreditNote => ("credit_note", "credit_note.fiscalized"),
    };
    match answer {
        Ok(receipt) => {
            row.status = FiscalStatus::Done.as_str().to_owned();
            row.last_error = None;
            row.document = Some(canonical);
            row.reference = receipt.reference;
            row.signature = receipt.signature;
            row.key_id = receipt.key_id;
            row.public_key = receipt.public_key;
            if !store::update_fiscal(&mut tx, &row).await? {
                return Ok(false);
            }
            let mut b = body;
            b["reference"] = json!(row.reference);
            b["key_id"] = json!(row.key_id);
            tx.outcome(now, event, Some((kind_of, &rec.document_id)), b).await?;
        }
        Err(ProviderError::Retryable(e)) if row.attempts < MAX_ATTEMPTS => {
            row.next_attempt_at = now + backoff(row.attempts);
            row.last_error = Some(e.chars().take(500).collect());
            if !store::update_fiscal(&mut tx, &row).await? {
                return Ok(false);
            }
            let mut b = body;
            b["error"] = json!(row.last_error);
            b["next_attempt_at"] = json!(row.next_attempt_at);
            tx.decision(now, "fiscal.retry_scheduled", r, b).await?;
        }
        Err(e) => {
            row.status = FiscalStatus::Failed.as_str().to_owned();
            row.last_error = Some(e.to_string().chars().take(500).collect());
            if !store::update_fiscal(&mut tx, &row).await? {
                return Ok(false);
            }
            let mut b = body;
            b["error"] = json!(row.last_error);
            tx.outcome(now, "fiscal.failed", r, b).await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// The result of checking one signed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub document_id: String,
    pub action: String,
    pub key_id: Option<String>,
    /// The signature is the tenant's key's, over the document as signed.
    pub signature_valid: bool,
    /// The document rebuilt from what is stored now is the one that was signed.
    pub document_matches: bool,
}

impl Verification {
    /// Both hold.
    pub fn valid(&self) -> bool {
        self.signature_valid && self.document_matches
    }
}

/// Verifies every signed document of an invoice (its own and its credit notes') (permission
/// `payment.read`). Empty when nothing was signed.
pub async fn verify(ctx: &Ctx, scope: &TenantScope, invoice_id: &str) -> Result<Vec<Verification>> {
    crate::security::require(ctx, scope, Permission::PaymentRead).await?;
    let trusted = LocalProvider::for_tenant(&ctx.keys, &scope.tenant_id().to_string()).public_key_hex();
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let d = super::detail(&mut tx, scope, invoice_id).await?;
    let mut out = Vec::new();
    for rec in d.fiscal.iter().filter(|r| r.signature.is_some()) {
        let signed = rec.document.as_deref().unwrap_or_default();
        let signature_valid = rec.public_key.as_deref() == Some(trusted.as_str())
            && verify_signature(&trusted, signed, rec.signature.as_deref().unwrap_or_default());
        let current = match document(&mut tx, rec).await {
            Ok(v) => Some(chain::canonical_json(&v)),
            Err(_) => None,
        };
        out.push(Verification {
            document_id: rec.document_id.clone(),
            action: rec.action.clone(),
            key_id: rec.key_id.clone(),
            signature_valid,
            document_matches: current.as_deref() == Some(signed),
        });
    }
    tx.commit().await?;
    Ok(out)
}

/// The tenant's fiscal public key (hex) and key id, for verifying signed documents offline.
pub fn public_key(ctx: &Ctx, scope: &TenantScope) -> (String, String) {
    let p = LocalProvider::for_tenant(&ctx.keys, &scope.tenant_id().to_string());
    (p.key_id(), p.public_key_hex())
}
