//! `/v1/invoices`: invoices with their lines, payments, credit notes and fiscalization.

use axum::extract::{Path, State};
use axum::Json;
use azotte_domain::invoice::{self as rules, Amounts, InvoiceStatus};
use azotte_service::invoices::{self, fiscal, InvoiceDetail, InvoiceRow, ListFilter};
use azotte_store::invoices::{CreditNoteLineRow, CreditNoteRow, FiscalRow, InvoicePaymentRow, LineRow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{ApiQuery, TenantAuth};
use crate::AppState;

const PROBLEM: &str = "application/problem+json";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(verification))
        .routes(routes!(customer_invoices))
}

/// An invoice, without its lines (see `GET /v1/invoices/{id}`).
#[derive(Serialize, ToSchema)]
pub struct InvoiceView {
    id: String,
    /// Gapless per storefront series (`INV-2026-000042`); none while `draft`.
    number: Option<String>,
    /// `draft`, `open`, `paid`, `void` or `uncollectible`.
    status: String,
    storefront_id: String,
    customer_id: String,
    subscription_id: Option<String>,
    currency: String,
    /// The country the tax rate was chosen for.
    customer_country: Option<String>,
    /// Sums of the lines, minor units: `total = net + tax`.
    net: i64,
    tax: i64,
    total: i64,
    amount_paid: i64,
    amount_due: i64,
    /// Credited by credit notes (refunds).
    amount_credited: i64,
    /// The storefront's fiscalization provider when issued: `none` or `local`.
    fiscal_provider: String,
    /// `not_required` (provider `none`), `not_sent` (not paid yet), `pending`, `done` or
    /// `failed`.
    fiscal_status: String,
    issued_at: Option<DateTime<Utc>>,
    paid_at: Option<DateTime<Utc>>,
    voided_at: Option<DateTime<Utc>>,
    uncollectible_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl InvoiceView {
    fn new(i: InvoiceRow, fiscal_status: String) -> Self {
        InvoiceView {
            amount_due: i.total - i.amount_paid,
            id: i.id,
            number: i.number,
            status: i.status,
            storefront_id: i.storefront_id,
            customer_id: i.customer_id,
            subscription_id: i.subscription_id,
            currency: i.currency,
            customer_country: i.customer_country,
            net: i.net,
            tax: i.tax,
            total: i.total,
            amount_paid: i.amount_paid,
            amount_credited: i.amount_credited,
            fiscal_provider: i.fiscal_provider,
            fiscal_status,
            issued_at: i.issued_at,
            paid_at: i.paid_at,
            voided_at: i.voided_at,
            uncollectible_at: i.uncollectible_at,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

/// One line: the amount as priced, and its net, tax and gross at the line's rate.
#[derive(Serialize, ToSchema)]
pub struct LineView {
    line_no: i32,
    /// `subscription`, `proration` or `one_time`.
    kind: String,
    description: String,
    unit_amount: i64,
    quantity: i32,
    /// Unit amount × quantity, as priced.
    amount: i64,
    /// `inclusive` (the amount includes tax) or `exclusive` (tax is added).
    tax_behaviour: String,
    /// Basis points (1900 = 19 %).
    tax_rate_bp: i32,
    net: i64,
    tax: i64,
    gross: i64,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
}

impl From<LineRow> for LineView {
    fn from(l: LineRow) -> Self {
        LineView {
            line_no: l.line_no,
            kind: l.kind,
            description: l.description,
            unit_amount: l.unit_amount,
            quantity: l.quantity,
            amount: l.amount,
            tax_behaviour: l.tax_behaviour,
            tax_rate_bp: l.rate_bp,
            net: l.net,
            tax: l.tax,
            gross: l.gross,
            period_start: l.period_start,
            period_end: l.period_end,
        }
    }
}

/// Net and tax at one rate.
#[derive(Serialize, ToSchema)]
pub struct TaxRateView {
    tax_rate_bp: u32,
    net: i64,
    tax: i64,
}

/// A payment that settled the invoice.
#[derive(Serialize, ToSchema)]
pub struct InvoicePaymentView {
    payment_id: String,
    amount: i64,
    applied_at: DateTime<Utc>,
}

impl From<InvoicePaymentRow> for InvoicePaymentView {
    fn from(p: InvoicePaymentRow) -> Self {
        InvoicePaymentView { payment_id: p.payment_id, amount: p.amount, applied_at: p.created_at }
    }
}

/// What a credit note credits of one invoice line.
#[derive(Serialize, ToSchema)]
pub struct CreditNoteLineView {
    line_no: i32,
    invoice_line_no: i32,
    description: String,
    tax_rate_bp: i32,
    net: i64,
    tax: i64,
    gross: i64,
}

/// A credit note: money given back by a refund, numbered in its own gapless series.
#[derive(Serialize, ToSchema)]
pub struct CreditNoteView {
    id: String,
    number: String,
    refund_id: String,
    payment_id: String,
    currency: String,
    net: i64,
    tax: i64,
    total: i64,
    reason: String,
    lines: Vec<CreditNoteLineView>,
    created_at: DateTime<Utc>,
}

impl CreditNoteView {
    fn new(n: CreditNoteRow, lines: Vec<CreditNoteLineRow>) -> Self {
        CreditNoteView {
            id: n.id,
            number: n.number,
            refund_id: n.refund_id,
            payment_id: n.payment_id,
            currency: n.currency,
            net: n.net,
            tax: n.tax,
            total: n.total,
            reason: n.reason,
            lines: lines
                .into_iter()
                .map(|l| CreditNoteLineView {
                    line_no: l.line_no,
                    invoice_line_no: l.invoice_line_no,
                    description: l.description,
                    tax_rate_bp: l.rate_bp,
                    net: l.net,
                    tax: l.tax,
                    gross: l.gross,
                })
                .collect(),
            created_at: n.created_at,
        }
    }
}

/// A request to the fiscalization provider about the invoice or one of its credit notes.
#[derive(Serialize, ToSchema)]
pub struct FiscalRecordView {
    document_id: String,
    /// `issue`, `cancel` or `credit_note`.
    action: String,
    provider: String,
    /// `pending`, `done` or `failed`.
    status: String,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    reference: Option<String>,
    /// The document as signed (canonical JSON), with the hex Ed25519 signature over
    /// `azotte-fiscal-document/v1\n` followed by it (`local`).
    document: Option<String>,
    signature: Option<String>,
    key_id: Option<String>,
    public_key: Option<String>,
    updated_at: DateTime<Utc>,
}

impl From<FiscalRow> for FiscalRecordView {
    fn from(f: FiscalRow) -> Self {
        let pending = f.status == "pending";
        FiscalRecordView {
            document_id: f.document_id,
            action: f.action,
            provider: f.provider,
            status: f.status,
            attempts: f.attempts,
            next_attempt_at: pending.then_some(f.next_attempt_at),
            last_error: f.last_error,
            reference: f.reference,
            document: f.document,
            signature: f.signature,
            key_id: f.key_id,
            public_key: f.public_key,
            updated_at: f.updated_at,
        }
    }
}

/// An invoice with its lines, tax per rate, payments, credit notes and fiscalization.
#[derive(Serialize, ToSchema)]
pub struct InvoiceDetailView {
    #[serde(flatten)]
    invoice: InvoiceView,
    lines: Vec<LineView>,
    tax_summary: Vec<TaxRateView>,
    payments: Vec<InvoicePaymentView>,
    credit_notes: Vec<CreditNoteView>,
    fiscalization: Vec<FiscalRecordView>,
}

impl From<InvoiceDetail> for InvoiceDetailView {
    fn from(d: InvoiceDetail) -> Self {
        let status = invoices::fiscal_status(&d.invoice, &d.fiscal);
        let invoice = InvoiceView::new(d.invoice.clone(), status);
        let amounts: Vec<(u32, Amounts)> = d
            .lines
            .iter()
            .map(|l| (l.rate_bp as u32, Amounts { net: l.net, tax: l.tax, gross: l.gross }))
            .collect();
        let tax_summary = rules::tax_summary(amounts.iter().map(|(r, a)| (*r, a)))
            .into_iter()
            .map(|(tax_rate_bp, a)| TaxRateView { tax_rate_bp, net: a.net, tax: a.tax })
            .collect();
        InvoiceDetailView {
            invoice,
            lines: d.lines.into_iter().map(Into::into).collect(),
            tax_summary,
            payments: d.payments.into_iter().map(Into::into).collect(),
            credit_notes: d.credit_notes.into_iter().map(|(n, l)| CreditNoteView::new(n, l)).collect(),
            fiscalization: d.fiscal.into_iter().map(Into::into).collect(),
        }
    }
}

/// A page of invoices.
#[derive(Serialize, ToSchema)]
pub struct InvoiceList {
    data: Vec<InvoiceView>,
    has_more: bool,
    next_cursor: Option<String>,
}

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InvoiceParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    starting_after: Option<String>,
    customer_id: Option<String>,
    subscription_id: Option<String>,
    /// `draft`, `open`, `paid`, `void` or `uncollectible`.
    status: Option<String>,
}

/// Listing parameters of a customer's invoices.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustomerInvoiceParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    starting_after: Option<String>,
    subscription_id: Option<String>,
    status: Option<String>,
}

fn parse_status(s: Option<&str>) -> Result<Option<InvoiceStatus>, ApiError> {
    s.map(|s| {
        s.parse::<InvoiceStatus>().map_err(|_| {
            ApiError::validation(vec![azotte_domain::FieldError::new(
                "status",
                "invalid_value",
                "one of draft, open, paid, void, uncollectible",
            )])
        })
    })
    .transpose()
}

async fn page(
    state: &AppState,
    scope: &azotte_store::TenantScope,
    filter: ListFilter,
    limit: Option<i64>,
    starting_after: Option<&str>,
) -> Result<Json<InvoiceList>, ApiError> {
    let limit =
        azotte_domain::pagination::Limit::parse(limit).map_err(|e| ApiError::validation(vec![e]))?.get();
    let (rows, has_more) = invoices::list(&state.ctx, scope, &filter, limit, starting_after).await?;
    let data: Vec<InvoiceView> = rows.into_iter().map(|(i, s)| InvoiceView::new(i, s)).collect();
    let next_cursor = if has_more { data.last().map(|i| i.id.clone()) } else { None };
    Ok(Json(InvoiceList { data, has_more, next_cursor }))
}

/// Invoices, filtered by customer, subscription or status (permission `payment.read`).
#[utoipa::path(
    get, path = "/v1/invoices", tag = "invoices", security(("bearer" = [])),
    params(InvoiceParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = InvoiceList), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<InvoiceParams>,
) -> Result<Json<InvoiceList>, ApiError> {
    let filter = ListFilter {
        status: parse_status(p.status.as_deref())?,
        customer_id: p.customer_id,
        subscription_id: p.subscription_id,
    };
    page(&state, &scope, filter, p.limit, p.starting_after.as_deref()).await
}

/// A customer's invoices (permission `payment.read`).
#[utoipa::path(
    get, path = "/v1/customers/{id}/invoices", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path), CustomerInvoiceParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = InvoiceList), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn customer_invoices(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<CustomerInvoiceParams>,
) -> Result<Json<InvoiceList>, ApiError> {
    let filter = ListFilter {
        status: parse_status(p.status.as_deref())?,
        customer_id: Some(id),
        subscription_id: p.subscription_id,
    };
    page(&state, &scope, filter, p.limit, p.starting_after.as_deref()).await
}

/// One invoice with its lines (amount as priced, net, tax, gross and rate each), tax per rate,
/// the payments that settled it, its credit notes and its fiscalization (permission
/// `payment.read`).
#[utoipa::path(
    get, path = "/v1/invoices/{id}", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = InvoiceDetailView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<InvoiceDetailView>, ApiError> {
    Ok(Json(invoices::get(&state.ctx, &scope, &id).await?.into()))
}

/// One signed document's check.
#[derive(Serialize, ToSchema)]
pub struct DocumentCheck {
    document_id: String,
    /// `issue`, `cancel` or `credit_note`.
    action: String,
    key_id: Option<String>,
    /// Signed by the tenant's fiscal key, over the document as signed.
    signature_valid: bool,
    /// What is stored now is what was signed.
    document_matches: bool,
}

/// The integrity of an invoice's signed documents.
#[derive(Serialize, ToSchema)]
pub struct InvoiceVerification {
    /// Every signed document checks out (false when nothing is signed yet).
    valid: bool,
    /// The tenant's fiscal key: verify `signature` over `azotte-fiscal-document/v1\n` +
    /// `document` with Ed25519.
    key_id: String,
    public_key: String,
    documents: Vec<DocumentCheck>,
}

/// Checks the signatures of the invoice's fiscalized documents (`local` provider) and that the
/// invoice and its credit notes still read as they were signed (permission `payment.read`).
#[utoipa::path(
    get, path = "/v1/invoices/{id}/verification", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = InvoiceVerification), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn verification(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<InvoiceVerification>, ApiError> {
    let checks = fiscal::verify(&state.ctx, &scope, &id).await?;
    let (key_id, public_key) = fiscal::public_key(&state.ctx, &scope);
    Ok(Json(InvoiceVerification {
        valid: !checks.is_empty() && checks.iter().all(fiscal::Verification::valid),
        key_id,
        public_key,
        documents: checks
            .into_iter()
            .map(|c| DocumentCheck {
                document_id: c.document_id,
                action: c.action,
                key_id: c.key_id,
                signature_valid: c.signature_valid,
                document_matches: c.document_matches,
            })
            .collect(),
    }))
}
