//! The built-in sandbox PSP: deterministic by token, in memory, with its own ledger. Test
//! environments only. The tokens are listed in the crate documentation.
//!
//! It honours idempotency keys the way a real PSP does: keys are scoped to the account; the same
//! key with the same request replays the first answer (declines included) without moving money
//! again; the same key with a different request is [`ConnectorError::IdempotencyConflict`].
//! Retryable failures are not remembered (nothing happened), so a retry executes afresh.
//! Every call runs under one lock once past the simulated latency, so concurrent requests with
//! one key are serialized: the first executes, the others replay it.

mod ledger;
mod methods;
mod refund;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{PaymentId, PaymentStatus, RefundId};
use azotte_domain::Clock;
use serde_json::json;

pub use ledger::{EntryKind, Ledger, LedgerEntry};

use crate::connector::{
    Account, AttachRequest, BoxFuture, CaptureRequest, Connector, ConnectorResult, PaymentRequest,
    PspPayment, PspPaymentMethod, PspRefund, RefundRequest, VoidRequest, WebhookEvent, WebhookObject,
    WebhookRequest,
};
use crate::error::{ConnectorError, DeclineCode, RetryReason};

/// Every token the sandbox knows.
pub const TOKENS: &[&str] = &[
    "tok_sandbox_success",
    "tok_sandbox_mastercard",
    "tok_sandbox_amex",
    "tok_sandbox_decline_insufficient_funds",
    "tok_sandbox_decline_stolen",
    "tok_sandbox_expired",
    "tok_sandbox_requires_action",
    "tok_sandbox_timeout",
    "tok_sandbox_unknown",
    "tok_sandbox_flaky",
];

/// How the sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// How many times `tok_sandbox_flaky` fails soft per reference (counted across accounts)
    /// before succeeding.
    pub flaky_failures: u32,
    /// Simulated PSP latency of every call.
    pub latency: Duration,
    /// Timestamps of webhook events.
    pub clock: Clock,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self { flaky_failures: 2, latency: Duration::ZERO, clock: Clock::system() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Succeed,
    Decline(DeclineCode),
    RequiresAction,
    Timeout,
    /// Acts, then loses the answer — on every write about the payment.
    LoseAnswer,
    Flaky,
}

fn behaviour(token: &str) -> Option<Behaviour> {
    Some(match token {
        "tok_sandbox_success" | "tok_sandbox_mastercard" | "tok_sandbox_amex" => Behaviour::Succeed,
        "tok_sandbox_decline_insufficient_funds" => Behaviour::Decline(DeclineCode::InsufficientFunds),
        "tok_sandbox_decline_stolen" => Behaviour::Decline(DeclineCode::StolenCard),
        "tok_sandbox_expired" => Behaviour::Decline(DeclineCode::ExpiredCard),
        "tok_sandbox_requires_action" => Behaviour::RequiresAction,
        "tok_sandbox_timeout" => Behaviour::Timeout,
        "tok_sandbox_unknown" => Behaviour::LoseAnswer,
        "tok_sandbox_flaky" => Behaviour::Flaky,
        _ => return None,
    })
}

/// What a request was, to tell a replay from a conflicting reuse of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Payment {
        capture: bool,
        reference: PaymentId,
        amount: i64,
        currency: Currency,
        token: String,
        off_session: bool,
    },
    Capture {
        psp_id: String,
        amount: Option<i64>,
    },
    Void {
        psp_id: String,
    },
    Refund {
        reference: RefundId,
        payment_psp_id: String,
        amount: i64,
        currency: Currency,
    },
}

#[derive(Debug, Clone)]
enum Outcome {
    Payment(ConnectorResult<PspPayment>),
    Refund(ConnectorResult<PspRefund>),
}

#[derive(Debug)]
struct PaymentObject {
    account: PspAccountId,
    behaviour: Behaviour,
    /// Charge (capture on authorization) rather than authorize only.
    capture: bool,
    payment: PspPayment,
}

#[derive(Debug, Default)]
struct State {
    seq: u64,
    payments: BTreeMap<String, PaymentObject>,
    refunds: BTreeMap<String, (PspAccountId, PspRefund)>,
    /// Our reference → PSP ids, oldest first.
    by_reference: HashMap<String, Vec<String>>,
    idempotency: HashMap<(PspAccountId, String), (Fingerprint, Outcome)>,
    /// Soft failures so far per reference, across accounts (a PSP-wide glitch for that payment,
    /// so failover to another account meets it too until it clears).
    flaky: HashMap<String, u32>,
    events: Vec<WebhookEvent>,
    /// Detached (account, token) pairs, in order.
    detached: Vec<(PspAccountId, String)>,
}

impl State {
    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}_{:08}", self.seq)
    }

    fn payment_mut(&mut self, account: &PspAccountId, psp_id: &str) -> ConnectorResult<&mut PaymentObject> {
        match self.payments.get_mut(psp_id) {
            Some(p) if p.account == *account => Ok(p),
            _ => Err(ConnectorError::invalid("resource_missing", format!("no such payment: {psp_id}"))),
        }
    }

    /// The stored answer for a key, or a conflict when the key came with another request.
    fn replay(
        &self,
        account: &PspAccountId,
        key: &str,
        fp: &Fingerprint,
    ) -> ConnectorResult<Option<Outcome>> {
        match self.idempotency.get(&(*account, key.to_owned())) {
            None => Ok(None),
            Some((stored, _)) if stored != fp => {
                Err(ConnectorError::IdempotencyConflict { key: key.to_owned() })
            }
            Some((_, outcome)) => Ok(Some(outcome.clone())),
        }
    }

    fn remember(&mut self, account: &PspAccountId, key: &str, fp: Fingerprint, outcome: Outcome) {
        self.idempotency.insert((*account, key.to_owned()), (fp, outcome));
    }

    /// Whether a flaky reference fails this time (counting the failure).
    fn flaky_fails(&mut self, _account: &PspAccountId, reference: String, limit: u32) -> bool {
        let n = self.flaky.entry(reference).or_insert(0);
        if *n < limit {
            *n += 1;
            true
        } else {
            false
        }
    }
}

struct Inner {
    config: SandboxConfig,
    outage: AtomicBool,
    /// Latency added to the configured one at run time, in microseconds.
    extra_latency_us: AtomicU64,
    state: Mutex<State>,
    ledger: Ledger,
}

/// The sandbox PSP. Clones share state, ledger and outage switch.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

fn lost_answer() -> ConnectorError {
    ConnectorError::Unknown {
        reason: "the sandbox acted but the answer was lost (tok_sandbox_unknown)".into(),
    }
}

fn check_key(key: &str) -> ConnectorResult<()> {
    if key.is_empty() || key.len() > 255 {
        return Err(ConnectorError::invalid(
            "idempotency_key_invalid",
            "an idempotency key of 1 to 255 bytes",
        ));
    }
    Ok(())
}

impl Sandbox {
    /// A sandbox with the default configuration (flaky tokens fail twice, no latency).
    pub fn new() -> Self {
        Self::with_config(SandboxConfig::default())
    }

    /// A sandbox with its own configuration.
    pub fn with_config(config: SandboxConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                outage: AtomicBool::new(false),
                extra_latency_us: AtomicU64::new(0),
                state: Mutex::new(State::default()),
                ledger: Ledger::default(),
            }),
        }
    }

    /// The ledger of every money movement.
    pub fn ledger(&self) -> Ledger {
        self.inner.ledger.clone()
    }

    /// Turns the outage on or off: while on, every call answers `Retryable` (maintenance).
    pub fn set_outage(&self, on: bool) {
        self.inner.outage.store(on, Ordering::SeqCst);
    }

    /// Sets latency added to every call from now on (a slow PSP; tests use it to act while a
    /// call is in flight).
    pub fn set_extra_latency(&self, latency: Duration) {
        self.inner.extra_latency_us.store(latency.as_micros().min(u64::MAX as u128) as u64, Ordering::SeqCst);
    }

    /// Whether the outage is on.
    pub fn outage(&self) -> bool {
        self.inner.outage.load(Ordering::SeqCst)
    }

    /// Every webhook event the sandbox emitted, in order (sign one with [`webhook::sign`]).
    pub fn events(&self) -> Vec<WebhookEvent> {
        self.lock().events.clone()
    }

    /// The customer finishes (or fails) the action a `tok_sandbox_requires_action` payment waits
    /// for: it becomes captured (charge) or authorized (authorize), or failed.
    pub fn complete_action(
        &self,
        account: &PspAccountId,
        psp_id: &str,
        succeed: bool,
    ) -> ConnectorResult<PspPayment> {
        let mut st = self.lock();
        let p = st.payment_mut(account, psp_id)?;
        if p.payment.status != PaymentStatus::RequiresAction {
            return Err(ConnectorError::invalid("payment_unexpected_state", "the payment awaits no action"));
        }
        let (capture, key) = (p.capture, format!("action-{psp_id}"));
        if succeed {
            self.authorize_object(p, &key);
            if capture {
                let amount = p.payment.amount;
                self.capture_object(p, amount, &key);
            }
        } else {
            p.payment.status = PaymentStatus::Failed;
            p.payment.decline_code = Some(DeclineCode::AuthenticationRequired);
        }
        let out = p.payment.clone();
        self.emit(&mut st, WebhookObject::Payment(out.clone()));
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, st: &mut State, object: WebhookObject) {
        let id = st.next_id("sbxevt");
        st.events.push(WebhookEvent { id, created: self.inner.config.clock.now(), object });
    }

    /// The network and the PSP's front door: latency, then the outage switch.
    async fn gate(&self) -> ConnectorResult<()> {
        let latency = self.inner.config.latency
            + Duration::from_micros(self.inner.extra_latency_us.load(Ordering::SeqCst));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.outage() {
            return Err(ConnectorError::Retryable {
                reason: RetryReason::Maintenance,
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        Ok(())
    }

    fn entry(&self, account: PspAccountId, kind: EntryKind, p: &PspPayment, amount: i64, key: &str) {
        self.inner.ledger.record(LedgerEntry {
            seq: 0,
            account,
            kind,
            payment: p.reference,
            refund: None,
            psp_id: p.psp_id.clone(),
            amount,
            currency: p.currency.clone(),
            idempotency_key: key.to_owned(),
        });
    }

    fn authorize_object(&self, p: &mut PaymentObject, key: &str) {
        p.payment.status = PaymentStatus::Authorized;
        self.entry(p.account, EntryKind::Authorization, &p.payment, p.payment.amount, key);
    }

    fn capture_object(&self, p: &mut PaymentObject, amount: i64, key: &str) {
        p.payment.status = PaymentStatus::Captured;
        p.payment.amount_captured = amount;
        self.entry(p.account, EntryKind::Capture, &p.payment, amount, key);
    }

    async fn pay(&self, req: &PaymentRequest, capture: bool) -> ConnectorResult<PspPayment> {
        self.gate().await?;
        check_key(&req.idempotency_key)?;
        if req.amount <= 0 {
            return Err(ConnectorError::invalid("amount_invalid", "the amount must be positive"));
        }
        let Some(behaviour) = behaviour(&req.token) else {
            return Err(ConnectorError::invalid(
                "resource_missing",
                "no such sandbox token (see the tokens list)",
            ));
        };
        let account = req.account.id;
        let fp = Fingerprint::Payment {
            capture,
            reference: req.reference,
            amount: req.amount,
            currency: req.currency.clone(),
            token: req.token.clone(),
            off_session: req.off_session,
        };
        let mut st = self.lock();
        if let Some(outcome) = st.replay(&account, &req.idempotency_key, &fp)? {
            return payment_outcome(outcome);
        }
        match behaviour {
            Behaviour::Timeout => {
                return Err(ConnectorError::Retryable { reason: RetryReason::Timeout, retry_after: None })
            }
            Behaviour::Flaky
                if st.flaky_fails(&account, req.reference.to_string(), self.inner.config.flaky_failures) =>
            {
                return Err(ConnectorError::Retryable { reason: RetryReason::ServerError, retry_after: None })
            }
            _ => {}
        }
        let psp_id = st.next_id("sbxpay");
        let mut p = PaymentObject {
            account,
            behaviour,
            capture,
            payment: PspPayment {
                psp_id: psp_id.clone(),
                reference: req.reference,
                status: PaymentStatus::Pending,
                amount: req.amount,
                amount_captured: 0,
                currency: req.currency.clone(),
                decline_code: None,
            },
        };
        let result = match behaviour {
            Behaviour::Decline(code) => Err(code),
            Behaviour::RequiresAction if req.off_session => Err(DeclineCode::AuthenticationRequired),
            _ => Ok(()),
        };
        let result = match result {
            Err(code) => {
                p.payment.status = PaymentStatus::Failed;
                p.payment.decline_code = Some(code);
                Err(ConnectorError::HardDecline { code })
            }
            Ok(()) if behaviour == Behaviour::RequiresAction => {
                p.payment.status = PaymentStatus::RequiresAction;
                let next_action = json!({
                    "type": "redirect_to_url",
                    "redirect_to_url": { "url": format!("https://sandbox.azotte.invalid/3ds/{psp_id}") },
                });
                Err(ConnectorError::RequiresAction { psp_id: psp_id.clone(), next_action })
            }
            Ok(()) => {
                self.authorize_object(&mut p, &req.idempotency_key);
                if capture {
                    self.capture_object(&mut p, req.amount, &req.idempotency_key);
                }
                Ok(p.payment.clone())
            }
        };
        let snapshot = p.payment.clone();
        st.by_reference.entry(req.reference.to_string()).or_default().push(psp_id.clone());
        st.payments.insert(psp_id, p);
        self.emit(&mut st, WebhookObject::Payment(snapshot));
        st.remember(&account, &req.idempotency_key, fp, Outcome::Payment(result.clone()));
        if behaviour == Behaviour::LoseAnswer {
            return Err(lost_answer());
        }
        result
    }

    /// Capture (`Some(amount)` request) or void (`None`) of an existing payment.
    async fn follow_up(
        &self,
        account: &Account,
        psp_id: &str,
        key: &str,
        fp: Fingerprint,
        capture: Option<Option<i64>>,
    ) -> ConnectorResult<PspPayment> {
        self.gate().await?;
        check_key(key)?;
        let mut st = self.lock();
        if let Some(outcome) = st.replay(&account.id, key, &fp)? {
            return payment_outcome(outcome);
        }
        let p = st.payment_mut(&account.id, psp_id)?;
        let lose = p.behaviour == Behaviour::LoseAnswer;
        let result = match capture {
            Some(amount) => {
                let amount = amount.unwrap_or(p.payment.amount);
                if p.payment.status != PaymentStatus::Authorized {
                    Err(ConnectorError::invalid(
                        "payment_unexpected_state",
                        "only an authorized payment is captured",
                    ))
                } else if amount <= 0 || amount > p.payment.amount {
                    Err(ConnectorError::invalid("amount_too_large", "capture at most the authorized amount"))
                } else {
                    self.capture_object(p, amount, key);
                    Ok(p.payment.clone())
                }
            }
            None => match p.payment.status {
                PaymentStatus::Authorized | PaymentStatus::RequiresAction => {
                    if p.payment.status == PaymentStatus::Authorized {
                        self.entry(p.account, EntryKind::Void, &p.payment, p.payment.amount, key);
                    }
                    p.payment.status = PaymentStatus::Canceled;
                    Ok(p.payment.clone())
                }
                _ => Err(ConnectorError::invalid(
                    "payment_unexpected_state",
                    "only an uncaptured payment is voided",
                )),
            },
        };
        if let Ok(p) = &result {
            self.emit(&mut st, WebhookObject::Payment(p.clone()));
        }
        st.remember(&account.id, key, fp, Outcome::Payment(result.clone()));
        if lose && result.is_ok() {
            return Err(lost_answer());
        }
        result
    }

    fn referenced(&self, account: &PspAccountId, reference: String) -> (Vec<PspPayment>, Vec<PspRefund>) {
        let st = self.lock();
        let ids = st.by_reference.get(&reference).cloned().unwrap_or_default();
        let payments = ids
            .iter()
            .filter_map(|id| st.payments.get(id))
            .filter(|p| p.account == *account)
            .map(|p| p.payment.clone())
            .collect();
        let refunds = ids
            .iter()
            .filter_map(|id| st.refunds.get(id))
            .filter(|(a, _)| a == account)
            .map(|(_, r)| r.clone())
            .collect();
        (payments, refunds)
    }
}

fn payment_outcome(outcome: Outcome) -> ConnectorResult<PspPayment> {
    match outcome {
        Outcome::Payment(r) => r,
        Outcome::Refund(_) => {
            Err(ConnectorError::invalid("idempotency_key_in_use", "the key belongs to a refund"))
        }
    }
}

impl Connector for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn charge<'a>(&'a self, req: &'a PaymentRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        Box::pin(self.pay(req, true))
    }

    fn authorize<'a>(&'a self, req: &'a PaymentRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        Box::pin(self.pay(req, false))
    }

    fn capture<'a>(&'a self, req: &'a CaptureRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        let fp = Fingerprint::Capture { psp_id: req.psp_id.clone(), amount: req.amount };
        Box::pin(self.follow_up(&req.account, &req.psp_id, &req.idempotency_key, fp, Some(req.amount)))
    }

    fn void<'a>(&'a self, req: &'a VoidRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        let fp = Fingerprint::Void { psp_id: req.psp_id.clone() };
        Box::pin(self.follow_up(&req.account, &req.psp_id, &req.idempotency_key, fp, None))
    }

    fn refund<'a>(&'a self, req: &'a RefundRequest) -> BoxFuture<'a, ConnectorResult<PspRefund>> {
        Box::pin(self.do_refund(req))
    }

    fn attach_payment_method<'a>(
        &'a self,
        req: &'a AttachRequest,
    ) -> BoxFuture<'a, ConnectorResult<PspPaymentMethod>> {
        Box::pin(self.attach(req))
    }

    fn detach_payment_method<'a>(
        &'a self,
        account: &'a Account,
        token: &'a str,
    ) -> BoxFuture<'a, ConnectorResult<()>> {
        Box::pin(self.detach(&account.id, token))
    }

    fn lookup_payment<'a>(
        &'a self,
        account: &'a Account,
        reference: &'a PaymentId,
    ) -> BoxFuture<'a, ConnectorResult<Vec<PspPayment>>> {
        Box::pin(async move {
            self.gate().await?;
            Ok(self.referenced(&account.id, reference.to_string()).0)
        })
    }

    fn lookup_refund<'a>(
        &'a self,
        account: &'a Account,
        reference: &'a RefundId,
    ) -> BoxFuture<'a, ConnectorResult<Vec<PspRefund>>> {
        Box::pin(async move {
            self.gate().await?;
            Ok(self.referenced(&account.id, reference.to_string()).1)
        })
    }

    fn parse_webhook(&self, account: &Account, req: WebhookRequest<'_>) -> ConnectorResult<WebhookEvent> {
        webhook::verify(account, req)
    }
}

#[cfg(test)]
mod tests;
