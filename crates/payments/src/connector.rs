//! The connector trait every PSP implements, and the requests and answers it speaks.
//!
//! Methods return boxed futures so that routing can hold `Arc<dyn Connector>` for a storefront's
//! accounts of different PSPs (native `async fn` in traits is not object-safe).

use std::future::Future;
use std::pin::Pin;

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{PaymentId, PaymentStatus, RefundId, RefundStatus};
use azotte_domain::Secret;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, DeclineCode};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connector call's result.
pub type ConnectorResult<T> = Result<T, ConnectorError>;

/// The PSP account a call goes through: our id for it and its credentials in the clear.
#[derive(Debug, Clone)]
pub struct Account {
    /// Our id of the account; PSP objects and idempotency keys are scoped to it.
    pub id: PspAccountId,
    /// The PSP's API secret (the sandbox needs none).
    pub api_secret: Option<Secret<String>>,
    /// The secret webhooks are signed with.
    pub webhook_secret: Option<Secret<String>>,
}

impl Account {
    /// An account with no secrets (enough for the sandbox).
    pub fn new(id: PspAccountId) -> Self {
        Self { id, api_secret: None, webhook_secret: None }
    }
}

/// A charge (authorize + capture) or an authorization.
#[derive(Debug, Clone)]
pub struct PaymentRequest {
    pub account: Account,
    /// Our payment id; the PSP object carries it, so it can be looked up after a lost answer.
    pub reference: PaymentId,
    /// Minor units, positive.
    pub amount: i64,
    pub currency: Currency,
    /// The PSP's payment-method token.
    pub token: String,
    /// The customer is not present (a renewal): the PSP must not ask for customer action.
    pub off_session: bool,
    /// The PSP's customer the payment method is attached to (Stripe needs it to reuse a
    /// method, off session above all).
    pub psp_customer_id: Option<String>,
    /// From [`azotte_domain::payment::idempotency_key`].
    pub idempotency_key: String,
}

/// Capturing an authorized payment.
#[derive(Debug, Clone)]
pub struct CaptureRequest {
    pub account: Account,
    pub reference: PaymentId,
    /// The PSP's id of the payment.
    pub psp_id: String,
    /// Minor units to capture; `None` captures the whole authorization.
    pub amount: Option<i64>,
    pub idempotency_key: String,
}

/// Releasing an authorization (or abandoning a payment awaiting customer action).
#[derive(Debug, Clone)]
pub struct VoidRequest {
    pub account: Account,
    pub reference: PaymentId,
    pub psp_id: String,
    pub idempotency_key: String,
}

/// Refunding (part of) a captured payment.
#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub account: Account,
    /// Our refund id.
    pub reference: RefundId,
    /// The PSP's id of the captured payment.
    pub payment_psp_id: String,
    /// Minor units, positive.
    pub amount: i64,
    pub currency: Currency,
    pub idempotency_key: String,
}

/// Attaching a payment-method token to a customer: the PSP validates the token and answers
/// its display data.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub account: Account,
    /// The token the client created with the PSP's own fields.
    pub token: String,
    /// Our customer id (the PSP customer carries it).
    pub customer_reference: String,
    /// The PSP customer of our customer on this account, when one exists already.
    pub psp_customer_id: Option<String>,
    /// Derived from our payment-method id.
    pub idempotency_key: String,
}

/// A payment method as the PSP holds it: display data only, never a card number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PspPaymentMethod {
    /// The token to charge from now on (a PSP may answer a new one on attach).
    pub token: String,
    /// The PSP customer it is attached to.
    pub psp_customer_id: Option<String>,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: i32,
    /// The PSP's fingerprint of the card (the same card has the same fingerprint).
    pub fingerprint: String,
}

/// A payment as the PSP sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PspPayment {
    /// The PSP's id.
    pub psp_id: String,
    /// Our payment id.
    pub reference: PaymentId,
    pub status: PaymentStatus,
    /// Minor units requested (authorized, once authorized).
    pub amount: i64,
    /// Minor units captured.
    pub amount_captured: i64,
    pub currency: Currency,
    /// Why it failed, when it did.
    pub decline_code: Option<DeclineCode>,
}

/// A refund as the PSP sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PspRefund {
    pub psp_id: String,
    /// Our refund id.
    pub reference: RefundId,
    /// The PSP's id of the refunded payment.
    pub payment_psp_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub status: RefundStatus,
}

/// What a webhook reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "object", rename_all = "snake_case")]
pub enum WebhookObject {
    Payment(PspPayment),
    Refund(PspRefund),
}

/// A verified webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The PSP's event id: deliveries of the same event share it, so duplicates are harmless.
    pub id: String,
    /// When the PSP created the event (events may arrive out of order).
    pub created: DateTime<Utc>,
    #[serde(flatten)]
    pub object: WebhookObject,
}

/// A webhook delivery as received over HTTP.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// Header names and values; names are matched case-insensitively.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// When it arrived, for the signature's timestamp tolerance.
    pub received_at: DateTime<Utc>,
}

impl WebhookRequest<'_> {
    /// A header's value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A payment service provider.
///
/// Every write carries an idempotency key: sending the same request again with the same key
/// never moves money twice. Lookups by our reference answer what the PSP holds, so an unknown
/// outcome is resolved by asking, never by charging again.
pub trait Connector: Send + Sync {
    /// The connector's name as stored on PSP accounts (`sandbox`, `stripe`).
    fn name(&self) -> &'static str;

    /// Authorizes and captures in one step.
    fn charge<'a>(&'a self, req: &'a PaymentRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>>;

    /// Authorizes only; capture or void follows.
    fn authorize<'a>(&'a self, req: &'a PaymentRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>>;

    /// Captures an authorized payment.
    fn capture<'a>(&'a self, req: &'a CaptureRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>>;

    /// Releases an authorization.
    fn void<'a>(&'a self, req: &'a VoidRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>>;

    /// Refunds (part of) a captured payment.
    fn refund<'a>(&'a self, req: &'a RefundRequest) -> BoxFuture<'a, ConnectorResult<PspRefund>>;

    /// Validates a token with the PSP and attaches it to (a PSP customer of) our customer.
    fn attach_payment_method<'a>(
        &'a self,
        req: &'a AttachRequest,
    ) -> BoxFuture<'a, ConnectorResult<PspPaymentMethod>>;

    /// Detaches a payment method at the PSP: it can never be charged again. Detaching one the
    /// PSP no longer knows succeeds.
    fn detach_payment_method<'a>(
        &'a self,
        account: &'a Account,
        token: &'a str,
    ) -> BoxFuture<'a, ConnectorResult<()>>;

    /// Every PSP payment carrying our reference, oldest first (more than one is a double charge
    /// that reconciliation must flag; none means the PSP never acted).
    fn lookup_payment<'a>(
        &'a self,
        account: &'a Account,
        reference: &'a PaymentId,
    ) -> BoxFuture<'a, ConnectorResult<Vec<PspPayment>>>;

    /// Every PSP refund carrying our reference, oldest first.
    fn lookup_refund<'a>(
        &'a self,
        account: &'a Account,
        reference: &'a RefundId,
    ) -> BoxFuture<'a, ConnectorResult<Vec<PspRefund>>>;

    /// Verifies a webhook's signature and timestamp and parses it.
    fn parse_webhook(&self, account: &Account, req: WebhookRequest<'_>) -> ConnectorResult<WebhookEvent>;
}
