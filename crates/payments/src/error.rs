//! What a connector call can end in, classified for routing, retries and reconciliation.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A decline code normalized across PSPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineCode {
    InsufficientFunds,
    StolenCard,
    LostCard,
    ExpiredCard,
    IncorrectCvc,
    DoNotHonor,
    Fraudulent,
    /// The issuer wants 3-D Secure but the customer is not present (`off_session`).
    AuthenticationRequired,
    CardNotSupported,
    CurrencyNotSupported,
    /// Anything the PSP did not explain, or that has no better name.
    GenericDecline,
}

impl DeclineCode {
    /// Every code.
    pub const ALL: [DeclineCode; 11] = [
        DeclineCode::InsufficientFunds,
        DeclineCode::StolenCard,
        DeclineCode::LostCard,
        DeclineCode::ExpiredCard,
        DeclineCode::IncorrectCvc,
        DeclineCode::DoNotHonor,
        DeclineCode::Fraudulent,
        DeclineCode::AuthenticationRequired,
        DeclineCode::CardNotSupported,
        DeclineCode::CurrencyNotSupported,
        DeclineCode::GenericDecline,
    ];

    /// The normalized name (Stripe's spelling where one exists).
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineCode::InsufficientFunds => "insufficient_funds",
            DeclineCode::StolenCard => "stolen_card",
            DeclineCode::LostCard => "lost_card",
            DeclineCode::ExpiredCard => "expired_card",
            DeclineCode::IncorrectCvc => "incorrect_cvc",
            DeclineCode::DoNotHonor => "do_not_honor",
            DeclineCode::Fraudulent => "fraudulent",
            DeclineCode::AuthenticationRequired => "authentication_required",
            DeclineCode::CardNotSupported => "card_not_supported",
            DeclineCode::CurrencyNotSupported => "currency_not_supported",
            DeclineCode::GenericDecline => "generic_decline",
        }
    }

    /// Normalizes a PSP's decline code; anything unrecognized is `generic_decline`.
    pub fn normalize(psp_code: &str) -> Self {
        match psp_code {
            "card_velocity_exceeded" | "withdrawal_count_limit_exceeded" => DeclineCode::InsufficientFunds,
            "pickup_card" | "restricted_card" => DeclineCode::StolenCard,
            "invalid_expiry_month" | "invalid_expiry_year" => DeclineCode::ExpiredCard,
            "invalid_cvc" => DeclineCode::IncorrectCvc,
            "merchant_blacklist" | "fraudulent" => DeclineCode::Fraudulent,
            "authentication_not_handled" => DeclineCode::AuthenticationRequired,
            other => DeclineCode::ALL
                .into_iter()
                .find(|c| c.as_str() == other)
                .unwrap_or(DeclineCode::GenericDecline),
        }
    }
}

impl fmt::Display for DeclineCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    /// The PSP was not reached in time (connect timeout: the request never left).
    Timeout,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx answered before the PSP acted.
    ServerError,
    /// The PSP is down for maintenance, or the sandbox's outage switch is on.
    Maintenance,
    /// The connection failed before the request was sent.
    Network,
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RetryReason::Timeout => "timeout",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::ServerError => "server_error",
            RetryReason::Maintenance => "maintenance",
            RetryReason::Network => "network",
        })
    }
}

/// A connector call that did not succeed, classified.
///
/// The classification is a promise about money: `HardDecline`, `Retryable`, `RequiresAction`,
/// `InvalidRequest`, `IdempotencyConflict`, `Configuration` and `InvalidWebhook` mean nothing was
/// charged by this call; `Unknown` means it may have been.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConnectorError {
    /// The issuer or PSP refused; retrying the same card will not help.
    #[error("declined: {code}")]
    HardDecline { code: DeclineCode },
    /// A soft failure before anything was charged; the same request may be retried (with the
    /// same idempotency key) or failed over to another account.
    #[error("retryable failure: {reason}")]
    Retryable { reason: RetryReason, retry_after: Option<Duration> },
    /// The customer must act (3-D Secure); `next_action` is the PSP's instruction, passed on.
    #[error("customer action required")]
    RequiresAction { psp_id: String, next_action: serde_json::Value },
    /// The answer was lost after the request may have been acted on: the charge may have
    /// happened. Resolve by looking the payment up, never by charging again.
    #[error("outcome unknown: {reason}")]
    Unknown { reason: String },
    /// The same idempotency key came with a different request.
    #[error("idempotency key `{key}` was used for a different request")]
    IdempotencyConflict { key: String },
    /// The PSP refused the request itself (missing object, wrong state, amount too large).
    #[error("invalid request ({code}): {message}")]
    InvalidRequest { code: String, message: String },
    /// The account's credentials or settings are wrong or missing.
    #[error("connector configuration: {message}")]
    Configuration { message: String },
    /// A webhook whose signature, timestamp or body does not verify.
    #[error("invalid webhook: {reason}")]
    InvalidWebhook { reason: String },
}

impl ConnectorError {
    /// Whether the same request may be sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectorError::Retryable { .. })
    }

    /// Whether routing may try the next account: only when nothing can have been charged and
    /// the failure is the PSP's, not the card's — a retryable failure, or the account's
    /// credentials or settings refused before anything executed (a revoked key).
    pub fn allows_failover(&self) -> bool {
        self.is_retryable() || matches!(self, ConnectorError::Configuration { .. })
    }

    /// Whether money may have moved although the call did not say so.
    pub fn may_have_charged(&self) -> bool {
        matches!(self, ConnectorError::Unknown { .. })
    }

    pub(crate) fn invalid(code: &str, message: impl Into<String>) -> Self {
        ConnectorError::InvalidRequest { code: code.to_owned(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decline_codes_normalize() {
        for c in DeclineCode::ALL {
            assert_eq!(DeclineCode::normalize(c.as_str()), c);
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(c.as_str()));
        }
        assert_eq!(DeclineCode::normalize("pickup_card"), DeclineCode::StolenCard);
        assert_eq!(DeclineCode::normalize("something_new"), DeclineCode::GenericDecline);
    }

    #[test]
    fn retryable_and_refused_credentials_fail_over_and_only_unknown_may_have_charged() {
        let retry = ConnectorError::Retryable { reason: RetryReason::Timeout, retry_after: None };
        let revoked = ConnectorError::Configuration { message: "api_key_expired".into() };
        assert!(revoked.allows_failover() && !revoked.may_have_charged() && !revoked.is_retryable());
        let unknown = ConnectorError::Unknown { reason: "lost".into() };
        let decline = ConnectorError::HardDecline { code: DeclineCode::DoNotHonor };
        assert!(retry.allows_failover() && !retry.may_have_charged());
        assert!(!unknown.allows_failover() && unknown.may_have_charged() && !unknown.is_retryable());
        assert!(!decline.allows_failover() && !decline.may_have_charged());
    }
}
