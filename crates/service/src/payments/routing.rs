//! Routing: which of the storefront's own accounts a payment tries, in which order, and why.

use azotte_domain::catalog::Currency;
use azotte_store::customers::PaymentMethodRow;
use azotte_store::psp_accounts::PspAccount;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::Ctx;

/// The accounts to try, in order, and what was considered.
pub(super) struct Plan {
    pub(super) order: Vec<PspAccount>,
    considered: Vec<Value>,
    forced: bool,
    /// Accounts that were eligible but left out because their circuit breaker is open.
    open: Vec<String>,
}

impl Plan {
    /// The journal decision's body.
    pub(super) fn journal(&self) -> Value {
        let order: Vec<&str> = self.order.iter().map(|a| a.id.as_str()).collect();
        let reason = if self.forced {
            "forced account"
        } else if !self.order.is_empty() {
            "priority, then weight"
        } else if !self.open.is_empty() {
            "every eligible account's circuit breaker is open"
        } else {
            "no eligible account (status, currency, channel, token)"
        };
        json!({"order": order, "candidates": self.considered, "circuit_open": self.open, "reason": reason})
    }

    /// Why there is nothing to try.
    pub(super) fn empty_code(&self) -> &'static str {
        if self.open.is_empty() {
            "no_eligible_psp_account"
        } else {
            "psp_unavailable"
        }
    }
}

/// Whether a token can be used through an account: its own account, or — sandbox test tokens
/// only, like a PSP's test tokens — any sandbox account of the storefront.
fn token_usable(pm: &PaymentMethodRow, a: &PspAccount) -> bool {
    a.id == pm.psp_account_id || (a.connector == "sandbox" && pm.token.starts_with("tok_sandbox_"))
}

/// A deterministic weighted order (Efraimidis–Spirakis keys from a hash of payment and account).
fn weighted_key(payment: &str, account: &str, weight: i32) -> f64 {
    let h = Sha256::digest(format!("{payment}:{account}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    let u = (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    let u = u.max(f64::MIN_POSITIVE);
    -u.ln() / f64::from(weight.max(1))
}

/// Orders the storefront's eligible accounts: rules (status, currency, card channel, token,
/// forced account), then open circuit breakers out, then priority, then weight.
pub(super) fn route(
    ctx: &Ctx,
    accounts: &[PspAccount],
    pm: &PaymentMethodRow,
    currency: &Currency,
    forced: Option<&str>,
    payment_id: &str,
    now: DateTime<Utc>,
) -> Plan {
    let eligible: Vec<&PspAccount> = accounts
        .iter()
        .filter(|a| a.status == "active")
        .filter(|a| a.currencies.iter().any(|c| c == currency.as_str()))
        .filter(|a| a.channels.iter().any(|c| c == "card"))
        .filter(|a| token_usable(pm, a))
        .filter(|a| forced.is_none_or(|f| a.id == f))
        .collect();
    let (mut order, open): (Vec<&PspAccount>, Vec<&PspAccount>) =
        eligible.into_iter().partition(|a| ctx.psp.breakers.routable(&a.id, now));
    order.sort_by(|a, b| {
        a.priority.cmp(&b.priority).then(
            weighted_key(payment_id, &a.id, a.weight)
                .partial_cmp(&weighted_key(payment_id, &b.id, b.weight))
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    let chosen: Vec<&str> = order.iter().map(|a| a.id.as_str()).collect();
    let considered = accounts
        .iter()
        .map(|a| {
            json!({
                "id": a.id, "status": a.status, "priority": a.priority, "weight": a.weight,
                "eligible": chosen.contains(&a.id.as_str()),
                "breaker": ctx.psp.breakers.state(&a.id, now).as_str(),
            })
        })
        .collect();
    Plan {
        order: order.into_iter().cloned().collect(),
        considered,
        forced: forced.is_some(),
        open: open.into_iter().map(|a| a.id.clone()).collect(),
    }
}
