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

    /// Writes every entry as one tab-separated line (seq, account, kind, payment, refund or
    /// `-`, PSP id, amount, currency, idempotency key), in order, so that a benchmark can load
    /// the ledger into SQL and compare it with the invoices (bench/renewals.sh).
    pub fn write_tsv(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        for e in self.entries() {
            let kind = match e.kind {
                EntryKind::Authorization => "authorization",
                EntryKind::Capture => "capture",
                EntryKind::Void => "void",
                EntryKind::Refund => "refund",
            };
            let refund = e.refund.map_or_else(|| "-".to_owned(), |r| r.to_string());
            writeln!(
                w,
                "{}\t{}\t{kind}\t{}\t{refund}\t{}\t{}\t{}\t{}",
                e.seq, e.account, e.payment, e.psp_id, e.amount, e.currency, e.idempotency_key
            )?;
        }
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_tab_separated_line_per_entry_in_order() {
        let ledger = Ledger::default();
        let (account, payment) = (PspAccountId::new(), PaymentId::new());
        let currency = Currency::parse("currency", "EUR").unwrap();
        for kind in [EntryKind::Authorization, EntryKind::Capture] {
            ledger.record(LedgerEntry {
                seq: 0,
                account,
                kind,
                payment,
                refund: None,
                psp_id: "sbxpay_00000001".into(),
                amount: 999,
                currency: currency.clone(),
                idempotency_key: "renewal-key".into(),
            });
        }
        let mut out = Vec::new();
        ledger.write_tsv(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            format!("2\t{account}\tcapture\t{payment}\t-\tsbxpay_00000001\t999\tEUR\trenewal-key")
        );
        assert!(lines[0].starts_with(&format!("1\t{account}\tauthorization\t")));
    }
}
