//! Credit notes and their lines.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};

use crate::{Result, TenantTx};

#[derive(Iden, Clone, Copy)]
enum CreditNotes {
    Table,
    TenantId,
    Environment,
    Id,
    StorefrontId,
    InvoiceId,
    PaymentId,
    RefundId,
    Series,
    Sequence,
    Number,
    Currency,
    Net,
    Tax,
    Total,
    Reason,
    CreatedAt,
}

const CREDIT_NOTE_COLUMNS: [CreditNotes; 15] = [
    CreditNotes::Id,
    CreditNotes::StorefrontId,
    CreditNotes::InvoiceId,
    CreditNotes::PaymentId,
    CreditNotes::RefundId,
    CreditNotes::Series,
    CreditNotes::Sequence,
    CreditNotes::Number,
    CreditNotes::Currency,
    CreditNotes::Net,
    CreditNotes::Tax,
    CreditNotes::Total,
    CreditNotes::Reason,
    CreditNotes::CreatedAt,
    CreditNotes::Environment,
];

/// A credit note as stored: money given back for (part of) a paid invoice.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CreditNoteRow {
    pub id: String,
    pub storefront_id: String,
    pub invoice_id: String,
    pub payment_id: String,
    /// The refund it documents (one credit note per refund).
    pub refund_id: String,
    pub series: String,
    pub sequence: i64,
    pub number: String,
    pub currency: String,
    pub net: i64,
    pub tax: i64,
    pub total: i64,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// Adds a credit note; a second one for the same refund is the unique violation
/// `credit_notes_refund_key`.
pub async fn insert_credit_note(tx: &mut TenantTx, c: &CreditNoteRow) -> Result<()> {
    let mut cols = CREDIT_NOTE_COLUMNS.to_vec();
    cols.push(CreditNotes::TenantId);
    let q = Query::insert()
        .into_table(CreditNotes::Table)
        .columns(cols)
        .values_panic([
            c.id.clone().into(),
            c.storefront_id.clone().into(),
            c.invoice_id.clone().into(),
            c.payment_id.clone().into(),
            c.refund_id.clone().into(),
            c.series.clone().into(),
            c.sequence.into(),
            c.number.clone().into(),
            c.currency.clone().into(),
            c.net.into(),
            c.tax.into(),
            c.total.into(),
            c.reason.clone().into(),
            c.created_at.into(),
            tx.scope().environment().as_str().into(),
            tx.scope().tenant_id().to_string().into(),
        ])
        .to_owned();
    tx.write(&q).await?;
    Ok(())
}

fn select_credit_notes(tx: &TenantTx) -> SelectStatement {
    Query::select()
        .columns(CREDIT_NOTE_COLUMNS[..14].to_vec())
        .from(CreditNotes::Table)
        .cond_where(tx.in_scope(CreditNotes::TenantId, CreditNotes::Environment))
        .order_by(CreditNotes::Id, Order::Asc)
        .to_owned()
}

/// The credit note of a refund.
pub async fn credit_note_of_refund(tx: &mut TenantTx, refund_id: &str) -> Result<Option<CreditNoteRow>> {
    let q = select_credit_notes(tx).and_where(Expr::col(CreditNotes::RefundId).eq(refund_id)).to_owned();
    tx.tx.fetch_optional::<CreditNoteRow>(&q).await
}

/// One credit note.
pub async fn get_credit_note(tx: &mut TenantTx, id: &str) -> Result<Option<CreditNoteRow>> {
    let q = select_credit_notes(tx).and_where(Expr::col(CreditNotes::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<CreditNoteRow>(&q).await
}

/// An invoice's credit notes, oldest first.
pub async fn credit_notes_of(tx: &mut TenantTx, invoice_id: &str) -> Result<Vec<CreditNoteRow>> {
    let q = select_credit_notes(tx).and_where(Expr::col(CreditNotes::InvoiceId).eq(invoice_id)).to_owned();
    tx.tx.fetch_all::<CreditNoteRow>(&q).await
}

#[derive(Iden, Clone, Copy)]
enum CreditNoteLines {
    Table,
    TenantId,
    Environment,
    CreditNoteId,
    LineNo,
    InvoiceLineNo,
    Description,
    RateBp,
    Net,
    Tax,
    Gross,
}

const CN_LINE_COLUMNS: [CreditNoteLines; 8] = [
    CreditNoteLines::CreditNoteId,
    CreditNoteLines::LineNo,
    CreditNoteLines::InvoiceLineNo,
    CreditNoteLines::Description,
    CreditNoteLines::RateBp,
    CreditNoteLines::Net,
    CreditNoteLines::Tax,
    CreditNoteLines::Gross,
];

/// A credit note line: what it credits of one invoice line.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CreditNoteLineRow {
    pub credit_note_id: String,
    pub line_no: i32,
    pub invoice_line_no: i32,
    pub description: String,
    pub rate_bp: i32,
    pub net: i64,
    pub tax: i64,
    pub gross: i64,
}

/// Adds a credit note's lines.
pub async fn insert_credit_note_lines(tx: &mut TenantTx, lines: &[CreditNoteLineRow]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert()
        .into_table(CreditNoteLines::Table)
        .columns([CreditNoteLines::TenantId, CreditNoteLines::Environment].into_iter().chain(CN_LINE_COLUMNS))
        .to_owned();
    for l in lines {
        q.values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            l.credit_note_id.clone().into(),
            l.line_no.into(),
            l.invoice_line_no.into(),
            l.description.clone().into(),
            l.rate_bp.into(),
            l.net.into(),
            l.tax.into(),
            l.gross.into(),
        ]);
    }
    tx.write(&q).await?;
    Ok(())
}

/// The lines of some credit notes, by credit note then line.
pub async fn credit_note_lines(
    tx: &mut TenantTx,
    credit_note_ids: &[String],
) -> Result<Vec<CreditNoteLineRow>> {
    if credit_note_ids.is_empty() {
        return Ok(vec![]);
    }
    let q = Query::select()
        .columns(CN_LINE_COLUMNS)
        .from(CreditNoteLines::Table)
        .cond_where(tx.in_scope(CreditNoteLines::TenantId, CreditNoteLines::Environment))
        .and_where(Expr::col(CreditNoteLines::CreditNoteId).is_in(credit_note_ids.iter().cloned()))
        .order_by(CreditNoteLines::CreditNoteId, Order::Asc)
        .order_by(CreditNoteLines::LineNo, Order::Asc)
        .to_owned();
    tx.tx.fetch_all::<CreditNoteLineRow>(&q).await
}

/// The refunds that have succeeded, of the payments paying any of `invoice_ids`, without a credit
/// note yet: (payment, refund, amount), oldest first. The numbering pass credits them once it has
/// numbered the invoices (a refund that succeeded before its payment paid a queued draft).
pub async fn uncredited_refunds(
    tx: &mut TenantTx,
    invoice_ids: &[String],
) -> Result<Vec<(String, String, i64)>> {
    use super::InvoicePayments as Ip;
    use crate::payments::Refunds as R;
    if invoice_ids.is_empty() {
        return Ok(Vec::new());
    }
    let credited = Query::select()
        .expr(Expr::val(1))
        .from(CreditNotes::Table)
        .and_where(Expr::col((CreditNotes::Table, CreditNotes::TenantId)).equals((R::Table, R::TenantId)))
        .and_where(
            Expr::col((CreditNotes::Table, CreditNotes::Environment)).equals((R::Table, R::Environment)),
        )
        .and_where(Expr::col((CreditNotes::Table, CreditNotes::RefundId)).equals((R::Table, R::Id)))
        .to_owned();
    let q = Query::select()
        .columns([(R::Table, R::PaymentId), (R::Table, R::Id), (R::Table, R::Amount)])
        .from(R::Table)
        .inner_join(
            Ip::Table,
            Expr::col((Ip::Table, Ip::TenantId))
                .equals((R::Table, R::TenantId))
                .and(Expr::col((Ip::Table, Ip::Environment)).equals((R::Table, R::Environment)))
                .and(Expr::col((Ip::Table, Ip::PaymentId)).equals((R::Table, R::PaymentId))),
        )
        .and_where(Expr::col((R::Table, R::TenantId)).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col((R::Table, R::Environment)).eq(tx.scope().environment().as_str()))
        .and_where(Expr::col((R::Table, R::Status)).eq("succeeded"))
        .and_where(Expr::col((Ip::Table, Ip::InvoiceId)).is_in(invoice_ids.iter().cloned()))
        .and_where(Expr::exists(credited).not())
        .order_by((R::Table, R::CreatedAt), Order::Asc)
        .order_by((R::Table, R::Id), Order::Asc)
        .to_owned();
    tx.tx.fetch_all::<(String, String, i64)>(&q).await
}
