//! The Stripe connector: PaymentIntents and Refunds over HTTPS, and `Stripe-Signature` webhooks.
//!
//! - A charge is `POST /v1/payment_intents` with `confirm=true` (`capture_method=manual` to
//!   authorize only, `off_session=true` for renewals) and our payment id in
//!   `metadata[azotte_payment_id]`; a refund is `POST /v1/refunds` with our refund id in
//!   `metadata[azotte_refund_id]`. Every POST carries the request's `Idempotency-Key`.
//! - Lookups by our reference: payments through the Search API, refunds through the refund list
//!   filtered on that metadata.
//! - Answers are classified as the trait promises (see [`wire::classify_error`]): nothing that
//!   may have charged is ever reported retryable. A request that may have reached Stripe and
//!   whose answer was lost (timeout, dropped connection, unreadable body, 5xx) is `Unknown`; only
//!   a failure to connect at all, a 429 or a failed read is `Retryable`.
//!
//! The API version is pinned ([`API_VERSION`]) so the shapes we parse do not follow the
//! account's default version.

pub mod webhook;
pub mod wire;

#[cfg(feature = "testing")]
pub mod fake;

use std::time::Duration;

use azotte_domain::payment::{PaymentId, PaymentStatus, RefundId};
use reqwest::Method;

use crate::connector::{
    Account, AttachRequest, BoxFuture, CaptureRequest, Connector, ConnectorResult, PaymentRequest,
    PspPayment, PspPaymentMethod, PspRefund, RefundRequest, VoidRequest, WebhookEvent, WebhookRequest,
};
use crate::error::{ConnectorError, DeclineCode, RetryReason};
use wire::{Call, List, PaymentIntent, Refund, PAYMENT_REFERENCE_KEY, REFUND_REFERENCE_KEY};

/// Stripe's API.
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
/// The `Stripe-Version` every request pins.
pub const API_VERSION: &str = "2024-06-20";
/// Pages a lookup follows at most (100 objects each).
const MAX_PAGES: usize = 20;

/// How the connector reaches Stripe.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or a test server.
    pub base_url: String,
    /// Bound on a whole request; past it a write's outcome is unknown.
    pub timeout: Duration,
    /// Bound on connecting; past it nothing was sent, so the call is retryable.
    pub connect_timeout: Duration,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The Stripe connector. Cheap to clone (one shared connection pool).
#[derive(Debug, Clone)]
pub struct StripeConnector {
    http: reqwest::Client,
    base_url: String,
}

/// A request's parameters, form-encoded in order.
type Form = Vec<(String, String)>;

fn pair(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

impl StripeConnector {
    /// A connector to Stripe's API with the default timeouts.
    pub fn new() -> ConnectorResult<Self> {
        Self::with_config(StripeConfig::default())
    }

    /// A connector with its own base URL and timeouts.
    pub fn with_config(config: StripeConfig) -> ConnectorResult<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("azotte/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConnectorError::Configuration { message: format!("HTTP client: {e}") })?;
        Ok(Self { http, base_url: config.base_url.trim_end_matches('/').to_owned() })
    }

    /// Sends one request and returns the body of a 2xx answer; anything else is classified.
    async fn send(
        &self,
        account: &Account,
        method: Method,
        path: &str,
        query: &[(String, String)],
        form: Option<(&Form, &str)>,
    ) -> ConnectorResult<Vec<u8>> {
        let call = if method == Method::GET { Call::Read } else { Call::Write };
        let key = api_key(account)?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(key)
            .header("Stripe-Version", API_VERSION)
            .query(query);
        let mut idempotency_key = None;
        if let Some((form, key)) = form {
            req = req.header("Idempotency-Key", key).form(form);
            idempotency_key = Some(key);
        }
        let resp = req.send().await.map_err(|e| transport(call, &e))?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| transport(call, &e))?;
        if (200..300).contains(&status) {
            Ok(body.to_vec())
        } else {
            Err(wire::classify_error(call, status, retry_after.as_deref(), &body, idempotency_key))
        }
    }

    async fn post_intent(
        &self,
        account: &Account,
        path: &str,
        form: &Form,
        key: &str,
    ) -> ConnectorResult<PaymentIntent> {
        check_key(key)?;
        let body = self.send(account, Method::POST, path, &[], Some((form, key))).await?;
        wire::parse(Call::Write, &body)
    }

    async fn pay(&self, req: &PaymentRequest, capture: bool) -> ConnectorResult<PspPayment> {
        if req.amount <= 0 {
            return Err(ConnectorError::invalid("amount_invalid", "the amount must be positive"));
        }
        let mut form = vec![
            pair("amount", req.amount),
            pair("currency", req.currency.as_str().to_ascii_lowercase()),
            pair("payment_method", &req.token),
            pair("confirm", true),
            pair("capture_method", if capture { "automatic" } else { "manual" }),
            // Cards (with 3-D Secure) need no return URL; redirect-only methods are not offered.
            pair("automatic_payment_methods[enabled]", true),
            pair("automatic_payment_methods[allow_redirects]", "never"),
            pair(&format!("metadata[{PAYMENT_REFERENCE_KEY}]"), req.reference),
        ];
        if let Some(c) = &req.psp_customer_id {
            form.push(pair("customer", c));
        }
        if req.off_session {
            form.push(pair("off_session", true));
        }
        let pi = self.post_intent(&req.account, "/v1/payment_intents", &form, &req.idempotency_key).await?;
        let payment = written_payment(&pi)?;
        match payment.status {
            PaymentStatus::RequiresAction => Err(ConnectorError::RequiresAction {
                psp_id: pi.id,
                next_action: pi.next_action.unwrap_or(serde_json::Value::Null),
            }),
            PaymentStatus::Failed => Err(ConnectorError::HardDecline {
                code: payment.decline_code.unwrap_or(DeclineCode::GenericDecline),
            }),
            _ => Ok(payment),
        }
    }

    /// Creates the Stripe customer of our customer when there is none yet, then attaches the
    /// token to it (Stripe answers 404 for a token it does not know: nothing is attached).
    async fn attach(&self, req: &AttachRequest) -> ConnectorResult<PspPaymentMethod> {
        check_key(&req.idempotency_key)?;
        let token = path_id(&req.token)?;
        let customer = match &req.psp_customer_id {
            Some(c) => c.clone(),
            None => {
                let form = vec![pair("metadata[azotte_customer_id]", &req.customer_reference)];
                // Keyed by our customer and account, not by this attach: a failed attach and its
                // retry, or two concurrent first attaches, make one Stripe customer.
                let key = format!("azotte-customer-{}-{}", req.customer_reference, req.account.id);
                let body =
                    self.send(&req.account, Method::POST, "/v1/customers", &[], Some((&form, &key))).await?;
                wire::parse::<wire::Customer>(Call::Write, &body)?.id
            }
        };
        let form = vec![pair("customer", &customer)];
        let path = format!("/v1/payment_methods/{token}/attach");
        let key = format!("{}-attach", req.idempotency_key);
        let body = self.send(&req.account, Method::POST, &path, &[], Some((&form, &key))).await?;
        let pm: wire::PaymentMethod = wire::parse(Call::Write, &body)?;
        let card = pm.card.ok_or_else(|| {
            ConnectorError::invalid("payment_method_not_card", "only card payment methods are accepted")
        })?;
        Ok(PspPaymentMethod {
            token: pm.id,
            psp_customer_id: pm.customer.or(Some(customer)),
            brand: card.brand,
            last4: card.last4,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
            fingerprint: card.fingerprint.unwrap_or_default(),
        })
    }

    /// `POST /v1/payment_methods/{id}/detach`; one Stripe no longer knows, or that is not
    /// attached, is detached already.
    async fn detach(&self, account: &Account, token: &str) -> ConnectorResult<()> {
        let path = format!("/v1/payment_methods/{}/detach", path_id(token)?);
        let key = format!("azotte-detach-{token}");
        match self.send(account, Method::POST, &path, &[], Some((&Form::new(), &key))).await {
            Ok(_) => Ok(()),
            Err(ConnectorError::InvalidRequest { code, .. })
                if code == "resource_missing" || code == "payment_method_unexpected_state" =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Every refund of one PaymentIntent carrying our reference, oldest first — cheaper than
    /// [`Connector::lookup_refund`] when the payment's Stripe id is known.
    pub async fn lookup_refund_of(
        &self,
        account: &Account,
        payment_psp_id: &str,
        reference: &RefundId,
    ) -> ConnectorResult<Vec<PspRefund>> {
        self.list_refunds(account, Some(payment_psp_id), reference).await
    }

    async fn list_refunds(
        &self,
        account: &Account,
        payment_intent: Option<&str>,
        reference: &RefundId,
    ) -> ConnectorResult<Vec<PspRefund>> {
        let wanted = reference.to_string();
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![pair("limit", 100)];
            if let Some(pi) = payment_intent {
                query.push(pair("payment_intent", pi));
            }
            if let Some(a) = &after {
                query.push(pair("starting_after", a));
            }
            let body = self.send(account, Method::GET, "/v1/refunds", &query, None).await?;
            let page: List<Refund> = wire::parse(Call::Read, &body)?;
            after = page.data.last().map(|r| r.id.clone());
            found.extend(
                page.data.into_iter().filter(|r| r.metadata.get(REFUND_REFERENCE_KEY) == Some(&wanted)),
            );
            if !page.has_more || after.is_none() {
                break;
            }
        }
        sorted(found, |r| (r.created, r.id.clone()), wire::to_refund)
    }
}

/// Oldest first; an object that does not map (no reference, unknown currency) is an unreadable
/// answer to a read.
fn sorted<T, K: Ord, U>(
    mut v: Vec<T>,
    key: impl Fn(&T) -> K,
    map: impl Fn(&T) -> Option<U>,
) -> ConnectorResult<Vec<U>> {
    v.sort_by_key(|x| key(x));
    v.iter()
        .map(|x| map(x).ok_or_else(|| wire::malformed(Call::Read, "object without our reference")))
        .collect()
}

/// The payment a write answered with; one we cannot read is an unknown outcome.
fn written_payment(pi: &PaymentIntent) -> ConnectorResult<PspPayment> {
    wire::to_payment(pi).ok_or_else(|| wire::malformed(Call::Write, "payment_intent without our reference"))
}

fn api_key(account: &Account) -> ConnectorResult<&str> {
    match account.api_secret.as_ref().map(|s| s.expose().as_str()) {
        Some(k) if k.starts_with("sk_") || k.starts_with("rk_") => Ok(k),
        Some(_) => Err(ConnectorError::Configuration {
            message: "the Stripe API secret must be a secret (sk_) or restricted (rk_) key".into(),
        }),
        None => Err(ConnectorError::Configuration { message: "the Stripe account has no API secret".into() }),
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

/// A failure of the transport itself. Only a failed connection proves the request never left;
/// after that, a write may have been received and acted on.
fn transport(call: Call, e: &reqwest::Error) -> ConnectorError {
    let reason = if e.is_timeout() { RetryReason::Timeout } else { RetryReason::Network };
    if e.is_connect() || call == Call::Read {
        return ConnectorError::Retryable { reason, retry_after: None };
    }
    if e.is_builder() {
        return ConnectorError::Configuration { message: format!("request: {e}") };
    }
    ConnectorError::Unknown {
        reason: format!("the request may have reached Stripe but its answer was lost: {e}"),
    }
}

impl Connector for StripeConnector {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn charge<'a>(&'a self, req: &'a PaymentRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        Box::pin(self.pay(req, true))
    }

    fn authorize<'a>(&'a self, req: &'a PaymentRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        Box::pin(self.pay(req, false))
    }

    fn capture<'a>(&'a self, req: &'a CaptureRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        Box::pin(async move {
            let mut form = Form::new();
            if let Some(amount) = req.amount {
                form.push(pair("amount_to_capture", amount));
            }
            let path = format!("/v1/payment_intents/{}/capture", path_id(&req.psp_id)?);
            let pi = self.post_intent(&req.account, &path, &form, &req.idempotency_key).await?;
            written_payment(&pi)
        })
    }

    fn void<'a>(&'a self, req: &'a VoidRequest) -> BoxFuture<'a, ConnectorResult<PspPayment>> {
        Box::pin(async move {
            let path = format!("/v1/payment_intents/{}/cancel", path_id(&req.psp_id)?);
            let pi = self.post_intent(&req.account, &path, &Form::new(), &req.idempotency_key).await?;
            written_payment(&pi)
        })
    }

    fn refund<'a>(&'a self, req: &'a RefundRequest) -> BoxFuture<'a, ConnectorResult<PspRefund>> {
        Box::pin(async move {
            if req.amount <= 0 {
                return Err(ConnectorError::invalid("amount_invalid", "the amount must be positive"));
            }
            check_key(&req.idempotency_key)?;
            let form = vec![
                pair("payment_intent", &req.payment_psp_id),
                pair("amount", req.amount),
                pair(&format!("metadata[{REFUND_REFERENCE_KEY}]"), req.reference),
            ];
            let key = req.idempotency_key.as_str();
            let body = self.send(&req.account, Method::POST, "/v1/refunds", &[], Some((&form, key))).await?;
            let refund: Refund = wire::parse(Call::Write, &body)?;
            wire::to_refund(&refund)
                .ok_or_else(|| wire::malformed(Call::Write, "refund without our reference"))
        })
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
        Box::pin(self.detach(account, token))
    }

    /// Through Stripe's Search API, which is eventually consistent (Stripe states that new
    /// objects can take up to a minute to appear): reconciliation must not read "none" as "never
    /// charged" until that long after the attempt.
    fn lookup_payment<'a>(
        &'a self,
        account: &'a Account,
        reference: &'a PaymentId,
    ) -> BoxFuture<'a, ConnectorResult<Vec<PspPayment>>> {
        Box::pin(async move {
            // Our ids hold only [a-z0-9_], so quoting them needs no escaping.
            let search = format!("metadata['{PAYMENT_REFERENCE_KEY}']:'{reference}'");
            let mut found = Vec::new();
            let mut page: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let mut query = vec![pair("query", &search), pair("limit", 100)];
                if let Some(p) = &page {
                    query.push(pair("page", p));
                }
                let body =
                    self.send(account, Method::GET, "/v1/payment_intents/search", &query, None).await?;
                let result: List<PaymentIntent> = wire::parse(Call::Read, &body)?;
                found.extend(result.data);
                page = result.next_page.filter(|_| result.has_more);
                if page.is_none() {
                    break;
                }
            }
            sorted(found, |p| (p.created, p.id.clone()), wire::to_payment)
        })
    }

    /// Pages through the account's refunds, newest first, up to 2,000 of them: Stripe's Search
    /// API does not cover refunds and the trait does not give us the payment. Prefer
    /// [`StripeConnector::lookup_refund_of`] when the payment's Stripe id is at hand.
    fn lookup_refund<'a>(
        &'a self,
        account: &'a Account,
        reference: &'a RefundId,
    ) -> BoxFuture<'a, ConnectorResult<Vec<PspRefund>>> {
        Box::pin(self.list_refunds(account, None, reference))
    }

    fn parse_webhook(&self, account: &Account, req: WebhookRequest<'_>) -> ConnectorResult<WebhookEvent> {
        webhook::verify_and_parse(account, req)
    }
}

/// A Stripe id placed in a path: ids are `[A-Za-z0-9_]`, anything else is refused rather than
/// escaped.
fn path_id(id: &str) -> ConnectorResult<&str> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(ConnectorError::invalid("resource_missing", "not a Stripe object id"))
    }
}
