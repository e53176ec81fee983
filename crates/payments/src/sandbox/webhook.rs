//! Sandbox webhooks: a JSON [`WebhookEvent`] signed like Stripe's, in the header
//! `azotte-sandbox-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::connector::{Account, WebhookEvent, WebhookRequest};
use crate::error::ConnectorError;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "azotte-sandbox-signature";
/// The secret used when the account has none (the sandbox needs no credentials).
pub const DEFAULT_WEBHOOK_SECRET: &str = "whsec_sandbox";
/// How far a signature's timestamp may be from the arrival time, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

fn secret(account: &Account) -> &str {
    account.webhook_secret.as_ref().map(|s| s.expose().as_str()).unwrap_or(DEFAULT_WEBHOOK_SECRET)
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// A signed delivery of `event` for `account`, as the sandbox would send it at `at`:
/// (headers, body).
pub fn sign(account: &Account, event: &WebhookEvent, at: DateTime<Utc>) -> (Vec<(String, String)>, Vec<u8>) {
    let body = serde_json::to_vec(event).unwrap_or_default();
    let t = at.timestamp();
    let sig = hex::encode(mac(secret(account), t, &body).finalize().into_bytes());
    let headers = vec![
        (SIGNATURE_HEADER.to_owned(), format!("t={t},v1={sig}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    (headers, body)
}

fn bad(reason: &str) -> ConnectorError {
    ConnectorError::InvalidWebhook { reason: reason.to_owned() }
}

/// Verifies a delivery's signature and timestamp, then parses its body.
pub fn verify(account: &Account, req: WebhookRequest<'_>) -> Result<WebhookEvent, ConnectorError> {
    let header = req.header(SIGNATURE_HEADER).ok_or_else(|| bad("missing signature header"))?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| bad("missing or malformed timestamp"))?;
    if sigs.is_empty() {
        return Err(bad("no v1 signature"));
    }
    let expected = mac(secret(account), t, req.body);
    // `verify_slice` compares in constant time.
    if !sigs.iter().any(|s| expected.clone().verify_slice(s).is_ok()) {
        return Err(bad("signature mismatch"));
    }
    if (req.received_at.timestamp() - t).abs() > TOLERANCE_SECS {
        return Err(bad("timestamp outside tolerance"));
    }
    serde_json::from_slice(req.body).map_err(|_| bad("malformed body"))
}
