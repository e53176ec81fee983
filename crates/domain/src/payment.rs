//! Payments and refunds: their state machines, the refund ceiling and the idempotency keys sent
//! to PSPs. Pure rules; no I/O.
//!
//! A payment moves `pending → requires_action → authorized → captured`, or ends `failed` or
//! `canceled`. When the answer to an attempt is lost (a timeout after the request left), the
//! payment is `unknown`: the charge may have happened. Only evidence from the PSP — a
//! reconciliation lookup or a verified webhook — moves it on, to `captured`, `authorized`,
//! `failed` or `canceled`; our own attempts never do, so an unknown payment is never charged
//! again. `captured`, `failed` and `canceled` are terminal (refunds are separate objects).
//!
//! Duplicate evidence (the same webhook twice, a reconciliation that learns nothing new) is a
//! no-op: [`transition`] returns the state unchanged. Stale evidence (an `authorized` webhook
//! arriving after `captured`) is an [`IllegalTransition`] that callers record and ignore.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

crate::id_kind!(PaymentKind, PaymentId, "pay");
crate::id_kind!(RefundKind, RefundId, "rfd");

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Created; no attempt has answered yet.
    Pending,
    /// The PSP asked for customer action (3-D Secure).
    RequiresAction,
    /// Funds are held, not yet captured.
    Authorized,
    /// Funds are captured. Terminal.
    Captured,
    /// Declined, or the customer action failed. Terminal.
    Failed,
    /// Voided or abandoned before capture. Terminal.
    Canceled,
    /// The answer was lost; the charge may have happened. Left only on PSP evidence.
    Unknown,
}

impl PaymentStatus {
    /// Every status.
    pub const ALL: [PaymentStatus; 7] = [
        PaymentStatus::Pending,
        PaymentStatus::RequiresAction,
        PaymentStatus::Authorized,
        PaymentStatus::Captured,
        PaymentStatus::Failed,
        PaymentStatus::Canceled,
        PaymentStatus::Unknown,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::RequiresAction => "requires_action",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::Unknown => "unknown",
        }
    }

    /// Whether nothing can move the payment any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, PaymentStatus::Captured | PaymentStatus::Failed | PaymentStatus::Canceled)
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PaymentStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        PaymentStatus::ALL.into_iter().find(|v| v.as_str() == s).ok_or(())
    }
}

/// Who is telling us the payment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The answer to our own call (charge, authorize, capture, void).
    Attempt,
    /// A lookup of the payment at the PSP by our reference.
    Reconciliation,
    /// A verified PSP webhook.
    Webhook,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 3] = [Source::Attempt, Source::Reconciliation, Source::Webhook];

    /// Whether this is PSP evidence rather than the answer to our own call.
    pub fn is_evidence(self) -> bool {
        !matches!(self, Source::Attempt)
    }
}

/// Something learned about a payment: the state the PSP reports, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PaymentEvent {
    /// The state the source reports (`unknown` from an attempt: the answer was lost).
    pub observed: PaymentStatus,
    pub source: Source,
}

impl PaymentEvent {
    /// The answer to one of our calls.
    pub fn attempt(observed: PaymentStatus) -> Self {
        Self { observed, source: Source::Attempt }
    }

    /// A reconciliation lookup's answer.
    pub fn reconciliation(observed: PaymentStatus) -> Self {
        Self { observed, source: Source::Reconciliation }
    }

    /// A verified webhook's report.
    pub fn webhook(observed: PaymentStatus) -> Self {
        Self { observed, source: Source::Webhook }
    }
}

/// An event that cannot apply to a payment in its current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a payment cannot go from {from} to {} on {:?} evidence", .event.observed, .event.source)]
pub struct IllegalTransition {
    pub from: PaymentStatus,
    pub event: PaymentEvent,
}

/// The payment's state after `event`, or why the event does not apply.
///
/// The same state again is a harmless duplicate and returns it unchanged — except that an
/// `unknown` payment accepts nothing at all from an attempt: it is resolved by evidence, never
/// by trying again.
pub fn transition(from: PaymentStatus, event: PaymentEvent) -> Result<PaymentStatus, IllegalTransition> {
    use PaymentStatus::*;
    let to = event.observed;
    let evidence = event.source.is_evidence();
    let legal = match (from, to) {
        (Unknown, _) => evidence && matches!(to, Captured | Authorized | Failed | Canceled | Unknown),
        _ if from == to => true,
        // Only our own call can lose its answer; PSP evidence is knowledge by definition.
        (Pending | RequiresAction | Authorized, Unknown) => !evidence,
        (Pending, RequiresAction | Authorized | Captured | Failed | Canceled) => true,
        (RequiresAction, Authorized | Captured | Failed | Canceled) => true,
        (Authorized, Captured | Canceled) => true,
        _ => false,
    };
    if legal {
        Ok(to)
    } else {
        Err(IllegalTransition { from, event })
    }
}

/// Where a refund stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Requested; the PSP has not confirmed it. Its amount is already reserved.
    Pending,
    /// The money went back. Terminal.
    Succeeded,
    /// The PSP refused or failed it; its amount is free again. Terminal.
    Failed,
}

impl RefundStatus {
    /// Every status.
    pub const ALL: [RefundStatus; 3] = [RefundStatus::Pending, RefundStatus::Succeeded, RefundStatus::Failed];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    /// Whether nothing can move the refund any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RefundStatus::Pending)
    }

    /// Whether the refund's amount counts against the captured amount.
    pub fn reserves_amount(self) -> bool {
        !matches!(self, RefundStatus::Failed)
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RefundStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        RefundStatus::ALL.into_iter().find(|v| v.as_str() == s).ok_or(())
    }
}

/// A refund state change that cannot happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a refund cannot go from {from} to {to}")]
pub struct IllegalRefundTransition {
    pub from: RefundStatus,
    pub to: RefundStatus,
}

/// The refund's state once the PSP reports `to`: `pending → succeeded | failed`; the same state
/// again is a harmless duplicate.
pub fn refund_transition(
    from: RefundStatus,
    to: RefundStatus,
) -> Result<RefundStatus, IllegalRefundTransition> {
    if from == to || (from == RefundStatus::Pending && to.is_terminal()) {
        Ok(to)
    } else {
        Err(IllegalRefundTransition { from, to })
    }
}

/// Why a refund amount is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefundAmountError {
    #[error("a refund amount must be positive")]
    NotPositive,
    #[error("the captured amount is negative")]
    NegativeCaptured,
    #[error("an existing refund has a non-positive amount")]
    InvalidExisting,
    #[error("refund amounts overflow")]
    Overflow,
    #[error("{requested} exceeds the {refundable} still refundable")]
    ExceedsCaptured { requested: i64, refundable: i64 },
}

/// What is still refundable (minor units): the captured amount less every pending or succeeded
/// refund. Failed refunds free their amount.
pub fn refundable(
    captured: i64,
    existing: impl IntoIterator<Item = (i64, RefundStatus)>,
) -> Result<i64, RefundAmountError> {
    if captured < 0 {
        return Err(RefundAmountError::NegativeCaptured);
    }
    let mut reserved: i64 = 0;
    for (amount, status) in existing {
        if amount <= 0 {
            return Err(RefundAmountError::InvalidExisting);
        }
        if status.reserves_amount() {
            reserved = reserved.checked_add(amount).ok_or(RefundAmountError::Overflow)?;
        }
    }
    // More already reserved than captured means the records are corrupt: refuse everything.
    if reserved > captured {
        return Err(RefundAmountError::ExceedsCaptured { requested: reserved, refundable: captured });
    }
    Ok(captured - reserved)
}

/// Checks a new refund of `requested` against the captured amount and the existing refunds;
/// returns what stays refundable once it is reserved.
pub fn check_refund(
    captured: i64,
    existing: impl IntoIterator<Item = (i64, RefundStatus)>,
    requested: i64,
) -> Result<i64, RefundAmountError> {
    if requested <= 0 {
        return Err(RefundAmountError::NotPositive);
    }
    let left = refundable(captured, existing)?;
    if requested > left {
        return Err(RefundAmountError::ExceedsCaptured { requested, refundable: left });
    }
    Ok(left - requested)
}

/// The idempotency key of a payment's attempt towards a PSP: `azotte-{payment_id}-{attempt}`.
///
/// Deterministic, so a retried request (after a timeout, a crash, a restart) carries the same key
/// and the PSP replays its first answer instead of charging twice; a new attempt (failover to the
/// next account) gets a new key. The format is frozen: changing it would let in-flight retries
/// charge again. Ids hold only `[a-z0-9_]`, so keys are unambiguous and well under PSP limits.
pub fn idempotency_key(payment_id: &PaymentId, attempt: u32) -> String {
    format!("azotte-{payment_id}-{attempt}")
}

/// The idempotency key of capturing an authorized payment: `azotte-{payment_id}-capture-{attempt}`.
pub fn capture_idempotency_key(payment_id: &PaymentId, attempt: u32) -> String {
    format!("azotte-{payment_id}-capture-{attempt}")
}

/// The idempotency key of voiding an authorized payment: `azotte-{payment_id}-void-{attempt}`.
pub fn void_idempotency_key(payment_id: &PaymentId, attempt: u32) -> String {
    format!("azotte-{payment_id}-void-{attempt}")
}

/// The idempotency key of a refund's attempt: `azotte-{refund_id}-{attempt}`.
pub fn refund_idempotency_key(refund_id: &RefundId, attempt: u32) -> String {
    format!("azotte-{refund_id}-{attempt}")
}

#[cfg(test)]
#[path = "payment_tests.rs"]
mod tests;
