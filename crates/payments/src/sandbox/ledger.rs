//! The sandbox's own record of money it moved, so tests can prove "charged exactly once".

use std::sync::{Arc, Mutex, MutexGuard};

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{PaymentId, RefundId};

/// What moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Funds held on the card.
    Authorization,
    /// Funds taken: the customer was charged.
    Capture,
    /// An authorization released.
    Void,
    /// Funds given back.
    Refund,
}

/// One money movement at the sandbox PSP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Order of recording, from 1.
    pub seq: u64,
    pub account: PspAccountId,
    pub kind: EntryKind,
    /// Our payment id (for refunds: of the refunded payment).
    pub payment: PaymentId,
    /// Our refund id, for refunds.
    pub refund: Option<RefundId>,
    /// The sandbox's id of the payment or refund.
    pub psp_id: String,
    /// Minor units.
    pub amount: i64,
    pub currency: Currency,
    /// The key of the request that moved the money.
    pub idempotency_key: String,
}

/// A shared handle to the sandbox's ledger; clones see the same entries.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Vec<LedgerEntry>>>);

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Vec<LedgerEntry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, mut entry: LedgerEntry) {
        let mut g = self.lock();
        entry.seq = g.len() as u64 + 1;
        g.push(entry);
    }

    /// Every entry, in order.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.lock().clone()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing ever moved.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every entry about one of our payments (its refunds included).
    pub fn for_payment(&self, payment: &PaymentId) -> Vec<LedgerEntry> {
        self.lock().iter().filter(|e| e.payment == *payment).cloned().collect()
    }

    /// Entries of one kind about a payment.
    pub fn of_kind(&self, payment: &PaymentId, kind: EntryKind) -> Vec<LedgerEntry> {
        self.lock().iter().filter(|e| e.payment == *payment && e.kind == kind).cloned().collect()
    }

    /// The captures of a payment: "charged exactly once" is `captures(p).len() == 1`.
    pub fn captures(&self, payment: &PaymentId) -> Vec<LedgerEntry> {
        self.of_kind(payment, EntryKind::Capture)
    }

    /// Minor units captured for a payment.
    pub fn captured(&self, payment: &PaymentId) -> i64 {
        self.sum(payment, EntryKind::Capture)
    }

    /// Minor units refunded for a payment.
    pub fn refunded(&self, payment: &PaymentId) -> i64 {
        self.sum(payment, EntryKind::Refund)
    }

    fn sum(&self, payment: &PaymentId, kind: EntryKind) -> i64 {
        self.lock().iter().filter(|e| e.payment == *payment && e.kind == kind).map(|e| e.amount).sum()
    }
}
