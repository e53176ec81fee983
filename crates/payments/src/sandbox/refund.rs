//! Refunds at the sandbox: the ceiling is the domain's rule over the captured amount.

use azotte_domain::payment::{check_refund, PaymentStatus, RefundAmountError, RefundStatus};

use super::{check_key, lost_answer, Behaviour, EntryKind, Fingerprint, LedgerEntry, Outcome, Sandbox};
use crate::connector::{ConnectorResult, PspRefund, RefundRequest, WebhookObject};
use crate::error::{ConnectorError, RetryReason};

impl Sandbox {
    pub(super) async fn do_refund(&self, req: &RefundRequest) -> ConnectorResult<PspRefund> {
        self.gate().await?;
        check_key(&req.idempotency_key)?;
        if req.amount <= 0 {
            return Err(ConnectorError::invalid("amount_invalid", "the amount must be positive"));
        }
        let account = req.account.id;
        let fp = Fingerprint::Refund {
            reference: req.reference,
            payment_psp_id: req.payment_psp_id.clone(),
            amount: req.amount,
            currency: req.currency.clone(),
        };
        let mut st = self.lock();
        if let Some(outcome) = st.replay(&account, &req.idempotency_key, &fp)? {
            return match outcome {
                Outcome::Refund(r) => r,
                Outcome::Payment(_) => {
                    Err(ConnectorError::IdempotencyConflict { key: req.idempotency_key.clone() })
                }
            };
        }
        let p = st.payment_mut(&account, &req.payment_psp_id)?;
        let (behaviour, status, captured) = (p.behaviour, p.payment.status, p.payment.amount_captured);
        let (payment, currency) = (p.payment.reference, p.payment.currency.clone());
        if behaviour == Behaviour::Flaky
            && st.flaky_fails(&account, req.reference.to_string(), self.inner.config.flaky_failures)
        {
            return Err(ConnectorError::Retryable { reason: RetryReason::ServerError, retry_after: None });
        }
        let existing: Vec<(i64, RefundStatus)> = st
            .refunds
            .values()
            .filter(|(a, r)| *a == account && r.payment_psp_id == req.payment_psp_id)
            .map(|(_, r)| (r.amount, r.status))
            .collect();
        let result = if status != PaymentStatus::Captured {
            Err(ConnectorError::invalid("payment_unexpected_state", "only a captured payment is refunded"))
        } else if req.currency != currency {
            Err(ConnectorError::invalid("currency_mismatch", "refund in the payment's currency"))
        } else {
            match check_refund(captured, existing, req.amount) {
                Err(RefundAmountError::ExceedsCaptured { refundable, .. }) => Err(ConnectorError::invalid(
                    "amount_too_large",
                    format!("at most {refundable} is left to refund"),
                )),
                Err(e) => Err(ConnectorError::invalid("amount_invalid", e.to_string())),
                Ok(_) => {
                    let refund = PspRefund {
                        psp_id: st.next_id("sbxref"),
                        reference: req.reference,
                        payment_psp_id: req.payment_psp_id.clone(),
                        amount: req.amount,
                        currency: currency.clone(),
                        status: RefundStatus::Succeeded,
                    };
                    self.inner.ledger.record(LedgerEntry {
                        seq: 0,
                        account,
                        kind: EntryKind::Refund,
                        payment,
                        refund: Some(req.reference),
                        psp_id: refund.psp_id.clone(),
                        amount: req.amount,
                        currency,
                        idempotency_key: req.idempotency_key.clone(),
                    });
                    st.by_reference.entry(req.reference.to_string()).or_default().push(refund.psp_id.clone());
                    st.refunds.insert(refund.psp_id.clone(), (account, refund.clone()));
                    self.emit(&mut st, WebhookObject::Refund(refund.clone()));
                    Ok(refund)
                }
            }
        };
        st.remember(&account, &req.idempotency_key, fp, Outcome::Refund(result.clone()));
        if behaviour == Behaviour::LoseAnswer && result.is_ok() {
            return Err(lost_answer());
        }
        result
    }
}
