//! PSP connectors: the [`Connector`] trait, its classified [`ConnectorError`], and the built-in
//! [`Sandbox`] PSP.
//!
//! # Sandbox tokens
//!
//! The sandbox (test environments only) behaves by payment-method token, deterministically:
//!
//! | Token | Behaviour |
//! |---|---|
//! | `tok_sandbox_success` | succeeds (Visa 4242) |
//! | `tok_sandbox_mastercard` | succeeds (Mastercard 4444) |
//! | `tok_sandbox_amex` | succeeds (American Express) |
//! | `tok_sandbox_decline_insufficient_funds` | hard decline `insufficient_funds` |
//! | `tok_sandbox_decline_stolen` | hard decline `stolen_card` |
//! | `tok_sandbox_expired` | hard decline `expired_card` |
//! | `tok_sandbox_requires_action` | `RequiresAction` (3-D Secure) with a `next_action`; finish it with [`Sandbox::complete_action`]. Off-session: hard decline `authentication_required` |
//! | `tok_sandbox_timeout` | `Retryable` (timeout); nothing is charged |
//! | `tok_sandbox_unknown` | the charge happens (ledger and lookups show it) but the call answers `Unknown`; so do capture, void and refund of that payment |
//! | `tok_sandbox_flaky` | `Retryable` (server error) the first N times per reference (N = [`SandboxConfig::flaky_failures`], default 2), then succeeds |
//!
//! Any other token is an invalid request. [`Sandbox::set_outage`] makes every call answer
//! `Retryable` (maintenance) until switched off. Every money movement is in the sandbox's
//! [`Ledger`]. Idempotency keys behave like a real PSP's: see [`sandbox`].
//!
//! ```
//! use azotte_domain::{catalog::Currency, id::PspAccountId, payment::{idempotency_key, PaymentId}};
//! use azotte_payments::{Account, Connector, PaymentRequest, Sandbox};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let sandbox = Sandbox::new();
//! let pay = PaymentId::new();
//! let req = PaymentRequest {
//!     account: Account::new(PspAccountId::new()),
//!     reference: pay,
//!     amount: 1499,
//!     currency: Currency::parse("currency", "EUR").unwrap(),
//!     token: "tok_sandbox_success".into(),
//!     off_session: false,
//!     psp_customer_id: None,
//!     idempotency_key: idempotency_key(&pay, 1),
//! };
//! let first = sandbox.charge(&req).await.unwrap();
//! let again = sandbox.charge(&req).await.unwrap(); // same key: replayed, not charged again
//! assert_eq!(first, again);
//! assert_eq!(sandbox.ledger().captures(&pay).len(), 1);
//! # });
//! ```

pub mod connector;
pub mod error;
pub mod sandbox;
pub mod stripe;

pub use connector::{
    Account, AttachRequest, BoxFuture, CaptureRequest, Connector, ConnectorResult, PaymentRequest,
    PspPayment, PspPaymentMethod, PspRefund, RefundRequest, VoidRequest, WebhookEvent, WebhookObject,
    WebhookRequest,
};
pub use error::{ConnectorError, DeclineCode, RetryReason};
pub use sandbox::{EntryKind, Ledger, LedgerEntry, Sandbox, SandboxConfig};
