//! Stripe's wire format: the objects we read, and how an HTTP answer becomes a
//! [`ConnectorError`].
//!
//! Only the fields Azotte needs are declared; serde ignores the rest, so Stripe adding fields
//! never breaks parsing.

use std::collections::HashMap;
use std::time::Duration;

use azotte_domain::catalog::Currency;
use azotte_domain::payment::{PaymentId, PaymentStatus, RefundId, RefundStatus};
use serde::Deserialize;

use crate::connector::{PspPayment, PspRefund};
use crate::error::{ConnectorError, DeclineCode, RetryReason};

/// The metadata key carrying our payment id on a PaymentIntent.
pub const PAYMENT_REFERENCE_KEY: &str = "azotte_payment_id";
/// The metadata key carrying our refund id on a Refund.
pub const REFUND_REFERENCE_KEY: &str = "azotte_refund_id";

/// A PaymentIntent (`"object": "payment_intent"`).
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: String,
    pub amount: i64,
    #[serde(default)]
    pub amount_received: i64,
    pub currency: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    #[serde(default)]
    pub last_payment_error: Option<ApiError>,
    #[serde(default)]
    pub next_action: Option<serde_json::Value>,
    #[serde(default)]
    pub latest_charge: Option<serde_json::Value>,
}

/// A Refund (`"object": "refund"`).
#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// A PaymentMethod (`"object": "payment_method"`); only cards are offered.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentMethod {
    pub id: String,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub card: Option<Card>,
}

/// A PaymentMethod's `card`.
#[derive(Debug, Clone, Deserialize)]
pub struct Card {
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: i32,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// A Customer (`"object": "customer"`).
#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
}

/// A list (`"object": "list"`) or search result (`"object": "search_result"`).
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
    /// Search results only: the `page` parameter of the next page.
    #[serde(default)]
    pub next_page: Option<String>,
}

/// Stripe's error object, the `error` of an error answer or a PaymentIntent's
/// `last_payment_error`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

impl ApiError {
    /// The normalized decline code: the issuer's `decline_code` when given, else Stripe's `code`.
    pub fn decline(&self) -> DeclineCode {
        // A failed 3-D Secure is reported with this code (and no decline code).
        if self.code.as_deref() == Some("payment_intent_authentication_failure") {
            return DeclineCode::AuthenticationRequired;
        }
        DeclineCode::normalize(
            self.decline_code.as_deref().or(self.code.as_deref()).unwrap_or("generic_decline"),
        )
    }
}

/// An error answer: `{"error": {…}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ApiError,
}

/// Whether a call may have moved money: it decides how a lost or unreadable answer is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A POST: Stripe may have acted although we cannot tell.
    Write,
    /// A GET: nothing moved, so asking again is always safe.
    Read,
}

/// An answer we could not read. For a write Stripe may have acted (a 200 whose body was cut
/// off is still a charge), so the outcome is unknown and reconciliation must ask; a read moved
/// nothing and is simply asked again.
pub fn malformed(call: Call, what: &str) -> ConnectorError {
    match call {
        Call::Write => ConnectorError::Unknown { reason: format!("unreadable Stripe answer: {what}") },
        Call::Read => ConnectorError::Retryable { reason: RetryReason::ServerError, retry_after: None },
    }
}

/// Parses a JSON body, classifying a malformed one per [`malformed`].
pub fn parse<T: serde::de::DeserializeOwned>(call: Call, body: &[u8]) -> Result<T, ConnectorError> {
    serde_json::from_slice(body).map_err(|e| malformed(call, &e.to_string()))
}

/// `Retry-After` in seconds (Stripe sends seconds, not HTTP dates).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    value.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

/// Classifies a non-2xx answer.
///
/// - 429: rate limiters run before Stripe's idempotency layer, so nothing executed: retryable,
///   honouring `Retry-After`.
/// - 5xx: retryable for a read. For a write Stripe documents the result of a 500 as
///   indeterminate (it may have acted and reconciles such requests later), so it is `Unknown`:
///   failing over to another account could charge twice.
/// - 4xx by the error's `type`: `card_error` is a hard decline; `idempotency_error` a conflict;
///   `invalid_request_error` an invalid request, except a bad or underprivileged key (401/403,
///   a configuration problem) and `idempotency_key_in_use` (409: a concurrent request with the
///   same key is executing and may charge, so the outcome is unknown).
pub fn classify_error(
    call: Call,
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
    idempotency_key: Option<&str>,
) -> ConnectorError {
    if status == 429 {
        return ConnectorError::Retryable {
            reason: RetryReason::RateLimited,
            retry_after: retry_after(retry_after_header),
        };
    }
    if status >= 500 {
        return match call {
            Call::Read => ConnectorError::Retryable {
                reason: if status == 503 { RetryReason::Maintenance } else { RetryReason::ServerError },
                retry_after: retry_after(retry_after_header),
            },
            Call::Write => ConnectorError::Unknown {
                reason: format!("Stripe answered {status} to a write: its result is indeterminate"),
            },
        };
    }
    let err = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) => env.error,
        Err(e) => return malformed(call, &format!("HTTP {status}: {e}")),
    };
    let message = err.message.clone().unwrap_or_default();
    match (err.kind.as_str(), status) {
        ("card_error", _) => ConnectorError::HardDecline { code: err.decline() },
        ("idempotency_error", _) => {
            ConnectorError::IdempotencyConflict { key: idempotency_key.unwrap_or_default().to_owned() }
        }
        (_, 401 | 403) => {
            ConnectorError::Configuration { message: format!("Stripe refused the key: {message}") }
        }
        (_, _) if err.code.as_deref() == Some("idempotency_key_in_use") => ConnectorError::Unknown {
            reason: "a concurrent request with the same idempotency key is executing".into(),
        },
        ("invalid_request_error", _) => ConnectorError::InvalidRequest {
            code: err.code.clone().unwrap_or_else(|| "invalid_request".into()),
            message,
        },
        // `api_error` or a type we do not know, under a 4xx: treat like a server error.
        _ => match call {
            Call::Read => ConnectorError::Retryable { reason: RetryReason::ServerError, retry_after: None },
            Call::Write => ConnectorError::Unknown {
                reason: format!("Stripe answered {status} `{}`: {message}", err.kind),
            },
        },
    }
}

/// Stripe's lower-case currency as ours.
pub fn currency(s: &str) -> Option<Currency> {
    Currency::parse("currency", &s.to_ascii_uppercase()).ok()
}

/// A PaymentIntent's status as ours: `requires_payment_method` after a failed attempt (it has a
/// `last_payment_error`) is a failure, before any attempt it is still pending.
pub fn payment_status(pi: &PaymentIntent) -> PaymentStatus {
    match pi.status.as_str() {
        "succeeded" => PaymentStatus::Captured,
        "requires_capture" => PaymentStatus::Authorized,
        "requires_action" => PaymentStatus::RequiresAction,
        "canceled" => PaymentStatus::Canceled,
        "requires_payment_method" if pi.last_payment_error.is_some() => PaymentStatus::Failed,
        // requires_payment_method, requires_confirmation, processing
        _ => PaymentStatus::Pending,
    }
}

/// A PaymentIntent as a [`PspPayment`]; `None` when it carries no (valid) reference of ours or an
/// unknown currency.
pub fn to_payment(pi: &PaymentIntent) -> Option<PspPayment> {
    let reference: PaymentId = pi.metadata.get(PAYMENT_REFERENCE_KEY)?.parse().ok()?;
    let status = payment_status(pi);
    Some(PspPayment {
        psp_id: pi.id.clone(),
        reference,
        status,
        amount: pi.amount,
        amount_captured: pi.amount_received,
        currency: currency(&pi.currency)?,
        decline_code: match status {
            PaymentStatus::Failed => pi.last_payment_error.as_ref().map(ApiError::decline),
            _ => None,
        },
    })
}

/// A Refund's status as ours (`requires_action` waits like `pending`; `canceled` gave nothing back).
pub fn refund_status(status: &str) -> RefundStatus {
    match status {
        "succeeded" => RefundStatus::Succeeded,
        "failed" | "canceled" => RefundStatus::Failed,
        _ => RefundStatus::Pending,
    }
}

/// A Refund as a [`PspRefund`]; `None` when it carries no reference of ours, no PaymentIntent or
/// an unknown currency.
pub fn to_refund(r: &Refund) -> Option<PspRefund> {
    let reference: RefundId = r.metadata.get(REFUND_REFERENCE_KEY)?.parse().ok()?;
    Some(PspRefund {
        psp_id: r.id.clone(),
        reference,
        payment_psp_id: r.payment_intent.clone()?,
        amount: r.amount,
        currency: currency(&r.currency)?,
        status: refund_status(&r.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str) -> ConnectorError {
        classify_error(Call::Write, status, None, body.as_bytes(), Some("k"))
    }

    #[test]
    fn error_objects_classify() {
        let decline =
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
        assert_eq!(err(402, decline), ConnectorError::HardDecline { code: DeclineCode::InsufficientFunds });
        let expired = r#"{"error":{"type":"card_error","code":"expired_card"}}"#;
        assert_eq!(err(402, expired), ConnectorError::HardDecline { code: DeclineCode::ExpiredCard });
        let idem = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests…"}}"#;
        assert_eq!(err(400, idem), ConnectorError::IdempotencyConflict { key: "k".into() });
        let missing = r#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"id"}}"#;
        assert!(
            matches!(err(404, missing), ConnectorError::InvalidRequest { code, .. } if code == "resource_missing")
        );
        let key = r#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided"}}"#;
        assert!(matches!(err(401, key), ConnectorError::Configuration { .. }));
        let in_use = r#"{"error":{"type":"invalid_request_error","code":"idempotency_key_in_use"}}"#;
        assert!(err(409, in_use).may_have_charged());
        assert!(err(400, "<html>").may_have_charged());
        assert!(err(500, "{}").may_have_charged());
        let read = classify_error(Call::Read, 500, None, b"{}", None);
        assert!(read.is_retryable());
        let limited = classify_error(Call::Write, 429, Some("7"), b"", None);
        assert_eq!(
            limited,
            ConnectorError::Retryable {
                reason: RetryReason::RateLimited,
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }
}
