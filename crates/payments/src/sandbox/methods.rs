//! Sandbox payment methods: any known `tok_sandbox_…` token validates; its display data is
//! derived from the token (`tok_sandbox_mastercard` shows a Mastercard, `tok_sandbox_expired` a
//! card that expired last month). Detaching is recorded so tests can see it happened.

use azotte_domain::id::PspAccountId;
use chrono::{DateTime, Datelike, Utc};

use super::{behaviour, Sandbox};
use crate::connector::{AttachRequest, PspPaymentMethod};
use crate::error::ConnectorError;
use crate::ConnectorResult;

/// Display data of a sandbox token: (brand, last4, expiry month, expiry year).
fn card(token: &str, now: DateTime<Utc>) -> (&'static str, &'static str, u32, i32) {
    if token.contains("mastercard") {
        ("mastercard", "4444", 12, now.year() + 3)
    } else if token.contains("amex") {
        ("amex", "8431", 12, now.year() + 3)
    } else if token.contains("expired") {
        let last = now - chrono::Duration::days(i64::from(now.day()) + 1);
        ("visa", "0069", last.month(), last.year())
    } else {
        ("visa", "4242", 12, now.year() + 3)
    }
}

impl Sandbox {
    pub(super) async fn attach(&self, req: &AttachRequest) -> ConnectorResult<PspPaymentMethod> {
        self.gate().await?;
        if behaviour(&req.token).is_none() {
            return Err(ConnectorError::invalid(
                "resource_missing",
                format!("no such sandbox token: {} (see the README for the tokens)", req.token),
            ));
        }
        let (brand, last4, exp_month, exp_year) = card(&req.token, self.inner.config.clock.now());
        Ok(PspPaymentMethod {
            token: req.token.clone(),
            psp_customer_id: Some(format!("sbxcus_{}", req.customer_reference)),
            brand: brand.into(),
            last4: last4.into(),
            exp_month,
            exp_year,
            fingerprint: format!("sbx{last4}{brand}"),
        })
    }

    pub(super) async fn detach(&self, account: &PspAccountId, token: &str) -> ConnectorResult<()> {
        self.gate().await?;
        self.lock().detached.push((*account, token.to_owned()));
        Ok(())
    }

    /// Every detach the sandbox was asked for, in order: (account, token).
    pub fn detached(&self) -> Vec<(PspAccountId, String)> {
        self.lock().detached.clone()
    }
}
