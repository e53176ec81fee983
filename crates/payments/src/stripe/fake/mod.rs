//! A fake Stripe API on a loopback port, for tests (cargo feature `testing`).
//!
//! It speaks Stripe's wire format — form-encoded requests, JSON answers shaped from Stripe's own
//! example objects (`fixtures.json`, MIT, Stripe, Inc.) — and behaves like Stripe where Azotte
//! depends on it:
//!
//! - `Authorization: Bearer sk_…`; each key is its own account (objects, idempotency keys).
//! - `Idempotency-Key`: the same key with the same parameters replays the first answer
//!   (`Idempotent-Replayed: true`) without moving money; with other parameters it answers
//!   `400 idempotency_error`. Validation failures and injected pre-execution faults are not
//!   remembered, as at Stripe.
//! - Stripe's test payment methods: `pm_card_visa`, `pm_card_mastercard`, `pm_card_amex`
//!   succeed; `pm_card_chargeDeclined`, `…InsufficientFunds`, `…LostCard`, `…StolenCard`,
//!   `…ExpiredCard`, `…IncorrectCvc`, `…Fraudulent` decline (402 `card_error`);
//!   `pm_card_authenticationRequired` needs 3-D Secure (`requires_action` on session, a 402
//!   `authentication_required` decline off session; finish it with [`FakeStripe::complete_action`]).
//! - A ledger of every money movement ([`FakeStripe::movements`]) and the events Stripe would
//!   send ([`FakeStripe::events`], signed with [`FakeStripe::signed`]).
//!
//! Faults are scripted per test with [`FakeStripe::fail_next`]: each applies to one request.

mod api;
mod http;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{StripeConfig, StripeConnector};
use crate::connector::ConnectorResult;
use api::State;

/// One scripted misbehaviour, applied to the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `429` with `Retry-After`, before anything executes.
    RateLimit { retry_after_secs: u64 },
    /// `500 api_error`, before anything executes.
    ServerError,
    /// `500 api_error` once the endpoint began executing, nothing done: Stripe keeps that answer
    /// for the idempotency key (24 h), so a retry with the same key gets the `500` again.
    ServerErrorKept,
    /// Executes the request (money moves, the idempotent answer is kept), then never answers.
    Hang,
    /// Executes the request, then closes the connection without answering.
    CloseAfterExecuting,
    /// Reads the request and closes the connection without executing it.
    CloseBeforeExecuting,
    /// Executes the request, then answers with its JSON body cut in half.
    MalformedJson,
    /// Declines with this `card_error` `code` and `decline_code`, whatever the payment method
    /// (meant for a request creating a PaymentIntent; other requests ignore it).
    Decline { code: String, decline_code: Option<String> },
}

/// A kind of money movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovementKind {
    /// Authorized and captured at once.
    Charge,
    Authorization,
    Capture,
    /// An authorization released.
    Void,
    Refund,
}

/// One money movement at the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    /// The API key of the account it happened on.
    pub account: String,
    pub kind: MovementKind,
    /// The PaymentIntent (or Refund) id.
    pub object: String,
    /// Our reference from the object's metadata (`azotte_payment_id` / `azotte_refund_id`).
    pub reference: Option<String>,
    pub amount: i64,
    /// Lower case, as Stripe spells it.
    pub currency: String,
    pub idempotency_key: Option<String>,
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// A header's value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A form parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    faults: Mutex<VecDeque<Fault>>,
    latency: Mutex<Duration>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn latency(&self) -> Duration {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_fault(&self) -> Option<Fault> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

/// A running fake Stripe; it stops when dropped.
pub struct FakeStripe {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl FakeStripe {
    /// Starts a fake on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            faults: Mutex::default(),
            latency: Mutex::new(Duration::ZERO),
        });
        let server = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(Self { shared, addr, server })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connector to this fake whose requests time out after `timeout`.
    pub fn connector(&self, timeout: Duration) -> ConnectorResult<StripeConnector> {
        StripeConnector::with_config(StripeConfig {
            base_url: self.base_url(),
            timeout,
            connect_timeout: Duration::from_secs(2),
        })
    }

    /// Delays every request by `latency` after reading it and before executing it (a slow
    /// PSP: a process killed meanwhile leaves attempts in flight).
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// Applies `fault` to the next request (faults queue up in order).
    pub fn fail_next(&self, fault: Fault) {
        self.shared.faults.lock().unwrap_or_else(|p| p.into_inner()).push_back(fault);
    }

    /// Rolls or revokes an API key, as in the Dashboard: every later request with it is
    /// refused (`401`, `api_key_expired`) before anything executes.
    pub fn revoke_key(&self, key: &str) {
        self.shared.state().revoked.insert(key.to_owned());
    }

    /// Every money movement, in order.
    pub fn movements(&self) -> Vec<Movement> {
        self.shared.state().movements.clone()
    }

    /// Minor units captured (charged, or captured after authorization) for our payment reference.
    pub fn captured(&self, reference: &str) -> i64 {
        self.movements()
            .iter()
            .filter(|m| m.reference.as_deref() == Some(reference))
            .filter(|m| matches!(m.kind, MovementKind::Charge | MovementKind::Capture))
            .map(|m| m.amount)
            .sum()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    /// Every event Stripe would have sent, in order (Stripe's `event` objects).
    pub fn events(&self) -> Vec<Value> {
        self.shared.state().events.clone()
    }

    /// A PaymentIntent as the fake holds it.
    pub fn payment_intent(&self, id: &str) -> Option<Value> {
        self.shared.state().intent(id).cloned()
    }

    /// The customer finishes (or fails) the 3-D Secure a PaymentIntent waits for.
    pub fn complete_action(&self, id: &str, succeed: bool) -> Option<Value> {
        self.shared.state().complete_action(id, succeed)
    }

    /// A delivery of `event` as Stripe would send it at `at`, signed with `secret`:
    /// (headers, body).
    pub fn signed(event: &Value, secret: &str, at: DateTime<Utc>) -> (Vec<(String, String)>, Vec<u8>) {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let headers = vec![
            (super::webhook::SIGNATURE_HEADER.to_owned(), super::webhook::sign(secret, &body, at)),
            ("content-type".to_owned(), "application/json; charset=utf-8".to_owned()),
        ];
        (headers, body)
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.server.abort();
    }
}
