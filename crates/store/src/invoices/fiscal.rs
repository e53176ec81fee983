//! Fiscalization records: what a storefront's provider is asked to do with a document, retried
//! until done. `next_attempt_at` is both when the next attempt is due and, while one runs, its
//! lease: a worker claims a record by moving it forward, so two workers never run one attempt.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};

use crate::{Result, TenantTx};

#[derive(Iden, Clone, Copy)]
enum FiscalRecords {
    Table,
    TenantId,
    Environment,
    DocumentId,
    Action,
    InvoiceId,
    Provider,
    Status,
    Attempts,
    NextAttemptAt,
    LastError,
    Reference,
    Document,
    Signature,
    KeyId,
    PublicKey,
    CreatedAt,
    UpdatedAt,
}

const FISCAL_COLUMNS: [FiscalRecords; 16] = [
    FiscalRecords::DocumentId,
    FiscalRecords::Action,
    FiscalRecords::InvoiceId,
    FiscalRecords::Provider,
    FiscalRecords::Status,
    FiscalRecords::Attempts,
    FiscalRecords::NextAttemptAt,
    FiscalRecords::LastError,
    FiscalRecords::Reference,
    FiscalRecords::Document,
    FiscalRecords::Signature,
    FiscalRecords::KeyId,
    FiscalRecords::PublicKey,
    FiscalRecords::CreatedAt,
    FiscalRecords::UpdatedAt,
    FiscalRecords::Environment,
];

/// A fiscalization record as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FiscalRow {
    /// The invoice or credit note.
    pub document_id: String,
    /// `issue`, `cancel` or `credit_note`.
    pub action: String,
    /// The invoice concerned (the credit note's invoice for `credit_note`).
    pub invoice_id: String,
    pub provider: String,
    /// `pending`, `done` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The provider's id for the document.
    pub reference: Option<String>,
    /// The document as the provider received it (canonical JSON), and its signature.
    pub document: Option<String>,
    pub signature: Option<String>,
    pub key_id: Option<String>,
    pub public_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Adds a fiscalization record.
pub async fn insert_fiscal(tx: &mut TenantTx, f: &FiscalRow) -> Result<()> {
    let mut cols = FISCAL_COLUMNS.to_vec();
    cols.push(FiscalRecords::TenantId);
    let q = Query::insert()
        .into_table(FiscalRecords::Table)
        .columns(cols)
        .values_panic([
            f.document_id.clone().into(),
            f.action.clone().into(),
            f.invoice_id.clone().into(),
            f.provider.clone().into(),
            f.status.clone().into(),
            f.attempts.into(),
            f.next_attempt_at.into(),
            f.last_error.clone().into(),
            f.reference.clone().into(),
            f.document.clone().into(),
            f.signature.clone().into(),
            f.key_id.clone().into(),
            f.public_key.clone().into(),
            f.created_at.into(),
            f.updated_at.into(),
            tx.scope().environment().as_str().into(),
            tx.scope().tenant_id().to_string().into(),
        ])
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn key(tx: &TenantTx, q: &mut sea_query::UpdateStatement, document_id: &str, action: &str) {
    q.cond_where(tx.in_scope(FiscalRecords::TenantId, FiscalRecords::Environment))
        .and_where(Expr::col(FiscalRecords::DocumentId).eq(document_id))
        .and_where(Expr::col(FiscalRecords::Action).eq(action));
}

/// Takes a due attempt for this caller: counts it and moves `next_attempt_at` to `lease_until`.
/// `false` when the record is not pending and due (another worker took it, or it is done).
pub async fn claim_fiscal(
    tx: &mut TenantTx,
    document_id: &str,
    action: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<bool> {
    let mut q = Query::update()
        .table(FiscalRecords::Table)
        .value(FiscalRecords::Attempts, Expr::col(FiscalRecords::Attempts).add(1))
        .value(FiscalRecords::NextAttemptAt, lease_until)
        .value(FiscalRecords::UpdatedAt, now)
        .and_where(Expr::col(FiscalRecords::Status).eq("pending"))
        .and_where(Expr::col(FiscalRecords::NextAttemptAt).lte(now))
        .to_owned();
    key(tx, &mut q, document_id, action);
    Ok(tx.write(&q).await? == 1)
}

/// Writes an attempt's result, only while the record is still `pending`: `false` when another
/// attempt (one whose lease ran out under this one) finished it first.
pub async fn update_fiscal(tx: &mut TenantTx, f: &FiscalRow) -> Result<bool> {
    let mut q = Query::update()
        .table(FiscalRecords::Table)
        .values([
            (FiscalRecords::Status, f.status.clone().into()),
            (FiscalRecords::NextAttemptAt, f.next_attempt_at.into()),
            (FiscalRecords::LastError, f.last_error.clone().into()),
            (FiscalRecords::Reference, f.reference.clone().into()),
            (FiscalRecords::Document, f.document.clone().into()),
            (FiscalRecords::Signature, f.signature.clone().into()),
            (FiscalRecords::KeyId, f.key_id.clone().into()),
            (FiscalRecords::PublicKey, f.public_key.clone().into()),
            (FiscalRecords::UpdatedAt, f.updated_at.into()),
        ])
        .and_where(Expr::col(FiscalRecords::Status).eq("pending"))
        .to_owned();
    key(tx, &mut q, &f.document_id, &f.action);
    Ok(tx.write(&q).await? == 1)
}

fn select_fiscal(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(FISCAL_COLUMNS[..15].to_vec())
        .from(FiscalRecords::Table)
        .cond_where(tx.in_scope(FiscalRecords::TenantId, FiscalRecords::Environment))
        .to_owned()
}

/// One record.
pub async fn get_fiscal(tx: &mut TenantTx, document_id: &str, action: &str) -> Result<Option<FiscalRow>> {
    let q = select_fiscal(tx)
        .and_where(Expr::col(FiscalRecords::DocumentId).eq(document_id))
        .and_where(Expr::col(FiscalRecords::Action).eq(action))
        .to_owned();
    tx.tx.fetch_optional::<FiscalRow>(&q).await
}

/// Every record about an invoice (its own and its credit notes'), oldest first.
pub async fn fiscal_of_invoice(tx: &mut TenantTx, invoice_id: &str) -> Result<Vec<FiscalRow>> {
    let q = select_fiscal(tx)
        .and_where(Expr::col(FiscalRecords::InvoiceId).eq(invoice_id))
        .order_by(FiscalRecords::CreatedAt, Order::Asc)
        .order_by(FiscalRecords::DocumentId, Order::Asc)
        .to_owned();
    tx.tx.fetch_all::<FiscalRow>(&q).await
}

/// Pending records whose next attempt has come, oldest first.
pub async fn due_fiscal(tx: &mut TenantTx, now: DateTime<Utc>, limit: u64) -> Result<Vec<FiscalRow>> {
    let q = select_fiscal(tx)
        .and_where(Expr::col(FiscalRecords::Status).eq("pending"))
        .and_where(Expr::col(FiscalRecords::NextAttemptAt).lte(now))
        .order_by(FiscalRecords::NextAttemptAt, Order::Asc)
        .limit(limit)
        .to_owned();
    tx.tx.fetch_all::<FiscalRow>(&q).await
}

/// The `issue` records of some invoices.
pub async fn issue_records(tx: &mut TenantTx, invoice_ids: &[String]) -> Result<Vec<FiscalRow>> {
    if invoice_ids.is_empty() {
        return Ok(vec![]);
    }
    let q = select_fiscal(tx)
        .and_where(Expr::col(FiscalRecords::DocumentId).is_in(invoice_ids.iter().cloned()))
        .and_where(Expr::col(FiscalRecords::Action).eq("issue"))
        .to_owned();
    tx.tx.fetch_all::<FiscalRow>(&q).await
}
