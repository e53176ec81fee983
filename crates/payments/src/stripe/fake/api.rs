//! The fake's Stripe semantics: PaymentIntents, Refunds, search and lists, idempotency, events.

mod methods;

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::Utc;
use serde_json::{json, Map, Value};

use super::http::Response;
use super::{Fault, Movement, MovementKind, RecordedRequest, Shared};
use crate::stripe::wire::{PAYMENT_REFERENCE_KEY, REFUND_REFERENCE_KEY};

/// Stripe's example objects, the templates of everything the fake answers.
static FIXTURES: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(include_str!("fixtures.json")).unwrap_or(Value::Null));

fn template(name: &str) -> Value {
    FIXTURES.get(name).cloned().unwrap_or_else(|| json!({}))
}

/// An error answer, and whether Stripe's idempotency layer would keep it.
struct Failure {
    status: u16,
    error: Value,
    /// Validation failures happen before execution: Stripe does not keep them.
    kept: bool,
}

fn failure(status: u16, kind: &str, code: Option<&str>, message: String, param: Option<&str>) -> Failure {
    let error = json!({
        "type": kind, "code": code, "message": message, "param": param,
        "doc_url": code.map(|c| format!("https://stripe.com/docs/error-codes/{c}")),
    });
    Failure { status, error, kept: true }
}

fn invalid(code: &str, message: String, param: Option<&str>) -> Failure {
    failure(400, "invalid_request_error", Some(code), message, param)
}

fn missing(param: &str) -> Failure {
    Failure {
        kept: false,
        ..invalid("parameter_missing", format!("Missing required param: {param}."), Some(param))
    }
}

fn no_such(kind: &str, id: &str) -> Failure {
    failure(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        format!("No such {kind}: '{id}'"),
        Some("id"),
    )
}

type Answer = Result<Value, Failure>;

#[derive(Default)]
struct Account {
    /// PaymentIntents and Refunds in creation order.
    intents: Vec<Value>,
    refunds: Vec<Value>,
    customers: Vec<Value>,
    methods: Vec<methods::Method>,
    /// Idempotency key → (method + path + sorted parameters, status, body).
    idempotency: HashMap<String, (String, u16, Value)>,
}

#[derive(Default)]
pub(crate) struct State {
    seq: u64,
    accounts: HashMap<String, Account>,
    pub(super) movements: Vec<Movement>,
    pub(super) events: Vec<Value>,
    pub(super) requests: Vec<RecordedRequest>,
    /// API keys rolled or revoked in the Dashboard: refused with `401 api_key_expired`.
    pub(super) revoked: std::collections::HashSet<String>,
}

/// Card behaviour of Stripe's test payment methods: `Ok(true)` needs 3-D Secure.
fn card(pm: &str) -> Option<Result<bool, (&'static str, &'static str)>> {
    Some(match pm {
        "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" => Ok(false),
        "pm_card_authenticationRequired" => Ok(true),
        "pm_card_chargeDeclined" => Err(("card_declined", "generic_decline")),
        "pm_card_chargeDeclinedInsufficientFunds" => Err(("card_declined", "insufficient_funds")),
        "pm_card_chargeDeclinedLostCard" => Err(("card_declined", "lost_card")),
        "pm_card_chargeDeclinedStolenCard" => Err(("card_declined", "stolen_card")),
        "pm_card_chargeDeclinedExpiredCard" => Err(("expired_card", "expired_card")),
        "pm_card_chargeDeclinedIncorrectCvc" => Err(("incorrect_cvc", "incorrect_cvc")),
        "pm_card_chargeDeclinedFraudulent" => Err(("card_declined", "fraudulent")),
        _ => return None,
    })
}

fn param<'a>(req: &'a RecordedRequest, name: &str) -> Option<&'a str> {
    req.param(name)
}

fn metadata(req: &RecordedRequest) -> Map<String, Value> {
    req.form
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_owned(), json!(v))))
        .collect()
}

fn amount(req: &RecordedRequest, name: &str) -> Result<Option<i64>, Failure> {
    match param(req, name) {
        None => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Failure {
                kept: false,
                ..invalid("parameter_invalid_integer", format!("Invalid integer: {v}"), Some(name))
            }),
        },
    }
}

fn s(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_owned()
}

fn i(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or(0)
}

/// Dispatches one request and records it.
pub(super) fn handle(shared: &Shared, req: RecordedRequest, fault: Option<&Fault>) -> Response {
    let mut st = shared.state();
    st.requests.push(req.clone());
    let request_id = st.next_id("req_fake");
    let mut headers = vec![("Request-Id".to_owned(), request_id)];
    let key = match req.header("authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        Some(k) if k.starts_with("sk_") || k.starts_with("rk_") => k.to_owned(),
        _ => {
            let f = failure(401, "invalid_request_error", None, "Invalid API Key provided".into(), None);
            return Response { status: 401, headers, body: envelope(&f) };
        }
    };
    if st.revoked.contains(&key) {
        let message = format!(
            "Expired API Key provided: {}***{}",
            &key[..8.min(key.len())],
            &key[key.len().saturating_sub(4)..]
        );
        let f = failure(401, "invalid_request_error", Some("api_key_expired"), message, None);
        return Response { status: 401, headers, body: envelope(&f) };
    }
    match fault {
        Some(Fault::RateLimit { retry_after_secs }) => {
            headers.push(("Retry-After".to_owned(), retry_after_secs.to_string()));
            let message = "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.";
            let f = failure(429, "invalid_request_error", Some("rate_limit"), message.into(), None);
            return Response { status: 429, headers, body: envelope(&f) };
        }
        Some(Fault::ServerError) => {
            let f = failure(500, "api_error", None, "An unknown error occurred".into(), None);
            return Response { status: 500, headers, body: envelope(&f) };
        }
        _ => {}
    }
    let idempotency_key =
        (req.method == "POST").then(|| req.header("idempotency-key").map(str::to_owned)).flatten();
    let mut fingerprint = req.form.clone();
    fingerprint.sort();
    let fingerprint = format!("{} {} {fingerprint:?}", req.method, req.path);
    if let Some(k) = &idempotency_key {
        if let Some((fp, status, body)) = st.accounts.entry(key.clone()).or_default().idempotency.get(k) {
            if *fp == fingerprint {
                headers.push(("Idempotent-Replayed".to_owned(), "true".to_owned()));
                return Response { status: *status, headers, body: body.to_string().into_bytes() };
            }
            let message = format!(
                "Keys for idempotent requests can only be used with the same parameters they were first \
                 used with. Try using a key other than '{k}' if you meant to execute a different request."
            );
            let f = failure(400, "idempotency_error", None, message, None);
            return Response { status: 400, headers, body: envelope(&f) };
        }
    }
    let decline = match fault {
        Some(Fault::Decline { code, decline_code }) => Some((code.clone(), decline_code.clone())),
        _ => None,
    };
    let answer = if fault == Some(&Fault::ServerErrorKept) {
        Err(failure(500, "api_error", None, "An unknown error occurred".into(), None))
    } else {
        st.route(&key, &req, idempotency_key.as_deref(), decline)
    };
    let (status, body, kept) = match answer {
        Ok(v) => (200, v, true),
        Err(f) => (f.status, json!({ "error": f.error }), f.kept),
    };
    if let (Some(k), true) = (&idempotency_key, kept) {
        let stored = (fingerprint, status, body.clone());
        st.accounts.entry(key).or_default().idempotency.insert(k.clone(), stored);
    }
    Response { status, headers, body: body.to_string().into_bytes() }
}

fn envelope(f: &Failure) -> Vec<u8> {
    json!({ "error": f.error }).to_string().into_bytes()
}

impl State {
    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{:014}", self.seq)
    }

    fn route(
        &mut self,
        key: &str,
        req: &RecordedRequest,
        idem: Option<&str>,
        decline: Option<(String, Option<String>)>,
    ) -> Answer {
        let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("POST", ["v1", "payment_intents"]) => self.create_intent(key, req, idem, decline),
            ("GET", ["v1", "payment_intents", "search"]) => self.search(key, req),
            ("GET", ["v1", "payment_intents", id]) => self
                .account(key)
                .intents
                .iter()
                .find(|p| p["id"] == *id)
                .cloned()
                .ok_or_else(|| no_such("payment_intent", id)),
            ("POST", ["v1", "payment_intents", id, "capture"]) => self.capture(key, id, req, idem),
            ("POST", ["v1", "payment_intents", id, "cancel"]) => self.cancel(key, id, idem),
            ("POST", ["v1", "refunds"]) => self.create_refund(key, req, idem),
            ("GET", ["v1", "refunds"]) => self.list_refunds(key, req),
            ("POST", ["v1", "customers"]) => self.create_customer(key, req),
            ("GET", ["v1", "payment_methods", id]) => self.get_method(key, id),
            ("POST", ["v1", "payment_methods", id, "attach"]) => self.attach_method(key, id, req),
            ("POST", ["v1", "payment_methods", id, "detach"]) => self.detach_method(key, id),
            _ => Err(failure(
                404,
                "invalid_request_error",
                None,
                format!("Unrecognized request URL ({} {})", req.method, req.path),
                None,
            )),
        }
    }

    fn account(&mut self, key: &str) -> &mut Account {
        self.accounts.entry(key.to_owned()).or_default()
    }

    pub(super) fn intent(&self, id: &str) -> Option<&Value> {
        self.accounts.values().flat_map(|a| &a.intents).find(|p| p["id"] == id)
    }

    fn intent_mut(&mut self, key: &str, id: &str) -> Result<&mut Value, Failure> {
        self.account(key)
            .intents
            .iter_mut()
            .find(|p| p["id"] == id)
            .ok_or_else(|| no_such("payment_intent", id))
    }

    fn emit(&mut self, kind: &str, object: &Value, idem: Option<&str>) {
        let mut e = template("event");
        e["id"] = json!(self.next_id("evt_fake"));
        e["created"] = json!(Utc::now().timestamp());
        e["type"] = json!(kind);
        e["data"] = json!({ "object": object });
        e["request"] = json!({ "id": null, "idempotency_key": idem });
        self.events.push(e);
    }

    fn movement(&mut self, key: &str, kind: MovementKind, object: &Value, amount: i64, idem: Option<&str>) {
        let reference_key =
            if kind == MovementKind::Refund { REFUND_REFERENCE_KEY } else { PAYMENT_REFERENCE_KEY };
        self.movements.push(Movement {
            account: key.to_owned(),
            kind,
            object: s(object, "id"),
            reference: object["metadata"][reference_key].as_str().map(str::to_owned),
            amount,
            currency: s(object, "currency"),
            idempotency_key: idem.map(str::to_owned),
        });
    }

    fn create_intent(
        &mut self,
        key: &str,
        req: &RecordedRequest,
        idem: Option<&str>,
        decline: Option<(String, Option<String>)>,
    ) -> Answer {
        let amount = amount(req, "amount")?.ok_or_else(|| missing("amount"))?;
        let currency = param(req, "currency").ok_or_else(|| missing("currency"))?;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(invalid(
                "parameter_invalid_string",
                format!("Invalid currency: {currency}"),
                Some("currency"),
            ));
        }
        let pm = param(req, "payment_method").ok_or_else(|| missing("payment_method"))?;
        let test_card = self.card_of(key, pm, param(req, "customer"))?;
        let Some(behaviour) = card(&test_card) else {
            return Err(invalid(
                "resource_missing",
                format!("No such PaymentMethod: '{pm}'"),
                Some("payment_method"),
            ));
        };
        let manual = param(req, "capture_method") == Some("manual");
        let off_session = param(req, "off_session") == Some("true");
        let mut pi = template("payment_intent");
        let id = self.next_id("pi_fake");
        let charge = self.next_id("ch_fake");
        for (k, v) in [
            ("id", json!(id)),
            ("amount", json!(amount)),
            ("currency", json!(currency)),
            ("payment_method", json!(pm)),
            ("capture_method", json!(if manual { "manual" } else { "automatic" })),
            ("metadata", Value::Object(metadata(req))),
            ("created", json!(Utc::now().timestamp())),
            ("client_secret", json!(format!("{id}_secret_fake"))),
            ("amount_received", json!(0)),
            ("amount_capturable", json!(0)),
            ("canceled_at", Value::Null),
            ("last_payment_error", Value::Null),
            ("next_action", Value::Null),
            ("latest_charge", Value::Null),
            ("processing", Value::Null),
            ("transfer_data", Value::Null),
        ] {
            pi[k] = v;
        }
        let behaviour = match decline {
            Some((code, decline_code)) => Err((code, decline_code)),
            None => match behaviour {
                Err((code, dc)) => Err((code.to_owned(), Some(dc.to_owned()))),
                Ok(true) if off_session => {
                    Err(("authentication_required".to_owned(), Some("authentication_required".to_owned())))
                }
                Ok(three_ds) => Ok(three_ds),
            },
        };
        let result = match behaviour {
            Err((code, decline_code)) => {
                let message = if code == "authentication_required" {
                    "Your card was declined. This transaction requires authentication."
                } else {
                    "Your card was declined."
                };
                let mut f = failure(402, "card_error", Some(&code), message.into(), None);
                f.error["decline_code"] = json!(decline_code);
                f.error["charge"] = json!(charge);
                pi["status"] = json!("requires_payment_method");
                pi["latest_charge"] = json!(charge);
                pi["last_payment_error"] = f.error.clone();
                f.error["payment_intent"] = pi.clone();
                self.emit("payment_intent.payment_failed", &pi, idem);
                Err(f)
            }
            Ok(true) => {
                pi["status"] = json!("requires_action");
                pi["next_action"] = json!({
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": { "type": "three_d_secure_redirect", "stripe_js": format!("https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={id}") },
                });
                self.emit("payment_intent.requires_action", &pi, idem);
                Ok(pi.clone())
            }
            Ok(false) => {
                self.succeed(key, &mut pi, manual, &charge, idem);
                Ok(pi.clone())
            }
        };
        self.account(key).intents.push(pi);
        result
    }

    /// Authorizes (and captures, unless manual) a PaymentIntent, with its movements and event.
    fn succeed(&mut self, key: &str, pi: &mut Value, manual: bool, charge: &str, idem: Option<&str>) {
        let amount = i(pi, "amount");
        pi["latest_charge"] = json!(charge);
        pi["next_action"] = Value::Null;
        if manual {
            pi["status"] = json!("requires_capture");
            pi["amount_capturable"] = json!(amount);
            self.movement(key, MovementKind::Authorization, pi, amount, idem);
            self.emit("payment_intent.amount_capturable_updated", pi, idem);
        } else {
            pi["status"] = json!("succeeded");
            pi["amount_received"] = json!(amount);
            self.movement(key, MovementKind::Charge, pi, amount, idem);
            self.emit("payment_intent.succeeded", pi, idem);
        }
    }

    pub(super) fn complete_action(&mut self, id: &str, succeed: bool) -> Option<Value> {
        let (key, pos) = self.accounts.iter().find_map(|(k, a)| {
            a.intents
                .iter()
                .position(|p| p["id"] == id && p["status"] == "requires_action")
                .map(|i| (k.clone(), i))
        })?;
        let mut pi = self.account(&key).intents[pos].clone();
        if succeed {
            let charge = self.next_id("ch_fake");
            let manual = pi["capture_method"] == "manual";
            self.succeed(&key, &mut pi, manual, &charge, None);
        } else {
            pi["status"] = json!("requires_payment_method");
            pi["next_action"] = Value::Null;
            pi["last_payment_error"] = json!({
                "type": "invalid_request_error", "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication.",
            });
            self.emit("payment_intent.payment_failed", &pi, None);
        }
        self.account(&key).intents[pos] = pi.clone();
        Some(pi)
    }

    fn capture(&mut self, key: &str, id: &str, req: &RecordedRequest, idem: Option<&str>) -> Answer {
        let to_capture = amount(req, "amount_to_capture")?;
        let pi = self.intent_mut(key, id)?;
        if pi["status"] != "requires_capture" {
            return Err(unexpected_state(pi, "captured", "requires_capture"));
        }
        let capturable = i(pi, "amount_capturable");
        let amount = to_capture.unwrap_or(capturable);
        if amount > capturable {
            return Err(invalid(
                "amount_too_large",
                format!(
                    "The amount to capture ({amount}) is greater than the amount capturable ({capturable})."
                ),
                Some("amount_to_capture"),
            ));
        }
        pi["status"] = json!("succeeded");
        pi["amount_received"] = json!(amount);
        pi["amount_capturable"] = json!(0);
        let pi = pi.clone();
        self.movement(key, MovementKind::Capture, &pi, amount, idem);
        self.emit("payment_intent.succeeded", &pi, idem);
        Ok(pi)
    }

    fn cancel(&mut self, key: &str, id: &str, idem: Option<&str>) -> Answer {
        let pi = self.intent_mut(key, id)?;
        let status = s(pi, "status");
        if matches!(status.as_str(), "succeeded" | "canceled") {
            return Err(unexpected_state(pi, "canceled", "requires_payment_method, requires_capture, requires_confirmation, requires_action, processing"));
        }
        let held = i(pi, "amount_capturable");
        pi["status"] = json!("canceled");
        pi["canceled_at"] = json!(Utc::now().timestamp());
        pi["cancellation_reason"] = json!("requested_by_customer");
        pi["amount_capturable"] = json!(0);
        pi["next_action"] = Value::Null;
        let pi = pi.clone();
        if status == "requires_capture" {
            self.movement(key, MovementKind::Void, &pi, held, idem);
        }
        self.emit("payment_intent.canceled", &pi, idem);
        Ok(pi)
    }

    fn create_refund(&mut self, key: &str, req: &RecordedRequest, idem: Option<&str>) -> Answer {
        let pi_id = param(req, "payment_intent").ok_or_else(|| missing("payment_intent"))?.to_owned();
        let asked = amount(req, "amount")?;
        let pi = self.intent_mut(key, &pi_id)?.clone();
        if pi["status"] != "succeeded" {
            return Err(invalid(
                "charge_not_refundable",
                format!("PaymentIntent {pi_id} does not have a successful charge to refund."),
                Some("payment_intent"),
            ));
        }
        let refunded: i64 = self
            .account(key)
            .refunds
            .iter()
            .filter(|r| r["payment_intent"] == pi_id.as_str())
            .map(|r| i(r, "amount"))
            .sum();
        let left = i(&pi, "amount_received") - refunded;
        if left <= 0 {
            return Err(invalid(
                "charge_already_refunded",
                format!("Charge {} has already been refunded.", s(&pi, "latest_charge")),
                None,
            ));
        }
        let amount = asked.unwrap_or(left);
        if amount > left {
            return Err(invalid(
                "amount_too_large",
                format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"),
                Some("amount"),
            ));
        }
        let mut r = template("refund");
        for (k, v) in [
            ("id", json!(self.next_id("re_fake"))),
            ("amount", json!(amount)),
            ("currency", pi["currency"].clone()),
            ("charge", pi["latest_charge"].clone()),
            ("payment_intent", json!(pi_id)),
            ("metadata", Value::Object(metadata(req))),
            ("created", json!(Utc::now().timestamp())),
            ("status", json!("succeeded")),
        ] {
            r[k] = v;
        }
        self.account(key).refunds.push(r.clone());
        self.movement(key, MovementKind::Refund, &r, amount, idem);
        self.emit("refund.created", &r, idem);
        let mut charge = template("charge");
        let refunds: Vec<Value> = self
            .account(key)
            .refunds
            .iter()
            .rev()
            .filter(|x| x["payment_intent"] == pi_id.as_str())
            .cloned()
            .collect();
        for (k, v) in [
            ("id", pi["latest_charge"].clone()),
            ("amount", pi["amount"].clone()),
            ("amount_captured", pi["amount_received"].clone()),
            ("amount_refunded", json!(refunded + amount)),
            ("refunded", json!(refunded + amount == i(&pi, "amount_received"))),
            ("captured", json!(true)),
            ("currency", pi["currency"].clone()),
            ("payment_intent", json!(pi_id)),
            ("metadata", pi["metadata"].clone()),
            (
                "refunds",
                json!({ "object": "list", "data": refunds, "has_more": false, "url": format!("/v1/charges/{}/refunds", s(&pi, "latest_charge")) }),
            ),
        ] {
            charge[k] = v;
        }
        self.emit("charge.refunded", &charge, idem);
        Ok(r)
    }

    fn search(&mut self, key: &str, req: &RecordedRequest) -> Answer {
        let query = req.query.iter().find(|(k, _)| k == "query").map(|(_, v)| v.as_str()).unwrap_or("");
        let parsed = query
            .strip_prefix("metadata['")
            .and_then(|q| q.split_once("']:'"))
            .and_then(|(k, v)| Some((k, v.strip_suffix('\'')?)));
        let Some((field, value)) = parsed else {
            return Err(invalid(
                "parameter_invalid_string",
                format!("Invalid search query: {query}"),
                Some("query"),
            ));
        };
        let limit = limit(req);
        let from: usize =
            query_param(req, "page").and_then(|p| p.strip_prefix("page_")?.parse().ok()).unwrap_or(0);
        // Newest first, as Stripe's search answers by default.
        let hits: Vec<Value> = self
            .account(key)
            .intents
            .iter()
            .rev()
            .filter(|p| p["metadata"][field] == value)
            .cloned()
            .collect();
        let page: Vec<Value> = hits.iter().skip(from).take(limit).cloned().collect();
        let has_more = from + page.len() < hits.len();
        Ok(json!({
            "object": "search_result", "url": "/v1/payment_intents/search", "data": page, "has_more": has_more,
            "next_page": has_more.then(|| format!("page_{}", from + limit)), "total_count": null,
        }))
    }

    fn list_refunds(&mut self, key: &str, req: &RecordedRequest) -> Answer {
        let limit = limit(req);
        let pi = query_param(req, "payment_intent").map(str::to_owned);
        let all: Vec<Value> = self
            .account(key)
            .refunds
            .iter()
            .rev()
            .filter(|r| pi.as_ref().is_none_or(|p| r["payment_intent"] == p.as_str()))
            .cloned()
            .collect();
        let from = match query_param(req, "starting_after") {
            Some(after) => all.iter().position(|r| r["id"] == after).map(|i| i + 1).unwrap_or(all.len()),
            None => 0,
        };
        let page: Vec<Value> = all.iter().skip(from).take(limit).cloned().collect();
        Ok(
            json!({ "object": "list", "url": "/v1/refunds", "data": page, "has_more": from + page.len() < all.len() }),
        )
    }
}

fn query_param<'a>(req: &'a RecordedRequest, name: &str) -> Option<&'a str> {
    req.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn limit(req: &RecordedRequest) -> usize {
    query_param(req, "limit").and_then(|l| l.parse().ok()).unwrap_or(10).clamp(1, 100)
}

fn unexpected_state(pi: &Value, verb: &str, allowed: &str) -> Failure {
    let message = format!(
        "This PaymentIntent could not be {verb} because it has a status of {}. Only a PaymentIntent with one of the following statuses may be {verb}: {allowed}.",
        s(pi, "status")
    );
    let mut f = invalid("payment_intent_unexpected_state", message, None);
    f.error["payment_intent"] = pi.clone();
    f
}
