//! Stripe webhooks: `Stripe-Signature` verification and the events Azotte follows.
//!
//! The header is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the endpoint's
//! whsec_ secret>`, with several `v1` entries while a secret is being rolled. A delivery is
//! accepted when any `v1` matches (compared in constant time) and `t` is within
//! [`TOLERANCE_SECS`] of the delivery's arrival, which bounds replays of a captured delivery.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::wire::{self, PaymentIntent, Refund};
use crate::connector::{Account, WebhookEvent, WebhookObject, WebhookRequest};
use crate::error::ConnectorError;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "stripe-signature";
/// How far a signature's timestamp may be from the arrival time, in seconds (Stripe's default).
pub const TOLERANCE_SECS: i64 = 300;

/// The `payment_intent.*` events that report a PaymentIntent's state.
const PAYMENT_EVENTS: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.requires_action",
    "payment_intent.amount_capturable_updated",
    "payment_intent.processing",
];

/// The refund events; `charge.refunded` carries the refunds inside the charge.
const REFUND_EVENTS: &[&str] =
    &["refund.created", "refund.updated", "refund.failed", "charge.refund.updated"];

fn mac(secret: &str, t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

fn bad(reason: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidWebhook { reason: reason.into() }
}

/// The `Stripe-Signature` value Stripe would send for `body` at `at` (for tests and fakes).
pub fn sign(secret: &str, body: &[u8], at: DateTime<Utc>) -> String {
    let t = at.timestamp();
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).finalize().into_bytes()))
}

/// Checks a `Stripe-Signature` header against the raw body.
pub fn verify_signature(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<(), ConnectorError> {
    let header = header.ok_or_else(|| bad("missing Stripe-Signature header"))?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.extend(hex::decode(v).ok()),
            // v0 (test-mode legacy) and future schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let t = t.ok_or_else(|| bad("missing or malformed timestamp"))?;
    if sigs.is_empty() {
        return Err(bad("no v1 signature"));
    }
    let expected = mac(secret, t, body);
    // `verify_slice` compares in constant time.
    if !sigs.iter().any(|s| expected.clone().verify_slice(s).is_ok()) {
        return Err(bad("signature mismatch"));
    }
    if (received_at.timestamp() - t).abs() > TOLERANCE_SECS {
        return Err(bad("timestamp outside tolerance"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct Charge {
    #[serde(default)]
    refunds: Option<wire::List<Refund>>,
}

fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ConnectorError> {
    serde_json::from_value(v).map_err(|e| bad(format!("malformed event object: {e}")))
}

/// Parses a verified event body. `Ok(None)` is an event Azotte does not follow (another type,
/// or an object that does not carry our reference, such as a payment made outside Azotte): it
/// should be acknowledged and dropped, or Stripe keeps redelivering it.
pub fn parse_event(body: &[u8]) -> Result<Option<WebhookEvent>, ConnectorError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| bad(format!("malformed event: {e}")))?;
    let created = Utc.timestamp_opt(event.created, 0).single().ok_or_else(|| bad("malformed created"))?;
    let kind = event.kind.as_str();
    let found = if PAYMENT_EVENTS.contains(&kind) {
        wire::to_payment(&object::<PaymentIntent>(event.data.object)?).map(WebhookObject::Payment)
    } else if REFUND_EVENTS.contains(&kind) {
        wire::to_refund(&object::<Refund>(event.data.object)?).map(WebhookObject::Refund)
    } else if kind == "charge.refunded" {
        // The newest of our refunds in the charge (the list is newest first); API versions
        // since 2022-11-15 leave the list out, and the refund.* events carry the refund then.
        let charge: Charge = object(event.data.object)?;
        charge.refunds.and_then(|l| l.data.iter().find_map(wire::to_refund)).map(WebhookObject::Refund)
    } else {
        None
    };
    Ok(found.map(|object| WebhookEvent { id: event.id, created, object }))
}

/// Verifies a delivery with the account's webhook secret and parses it; an event Azotte does not
/// follow is an `InvalidWebhook` whose reason starts with `ignored` (use [`verify_signature`] and
/// [`parse_event`] directly to tell it apart).
pub fn verify_and_parse(account: &Account, req: WebhookRequest<'_>) -> Result<WebhookEvent, ConnectorError> {
    let secret = account.webhook_secret.as_ref().ok_or_else(|| ConnectorError::Configuration {
        message: "the Stripe account has no webhook secret".into(),
    })?;
    verify_signature(secret.expose(), req.header(SIGNATURE_HEADER), req.body, req.received_at)?;
    parse_event(req.body)?.ok_or_else(|| bad("ignored: an event Azotte does not follow"))
}
