//! Stripe webhooks: signature verification and parsing of the events the fake Stripe emits
//! (shaped from Stripe's example `event` object).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{
    capture_idempotency_key, idempotency_key, refund_idempotency_key, void_idempotency_key, PaymentId,
    PaymentStatus, RefundId, RefundStatus,
};
use azotte_domain::Secret;
use azotte_payments::stripe::fake::FakeStripe;
use azotte_payments::stripe::webhook::{parse_event, sign, verify_signature, SIGNATURE_HEADER};
use azotte_payments::stripe::StripeConnector;
use azotte_payments::{
    Account, CaptureRequest, Connector, ConnectorError, DeclineCode, PaymentRequest, RefundRequest,
    VoidRequest, WebhookEvent, WebhookObject, WebhookRequest,
};
use chrono::{Duration as Span, TimeZone, Utc};
use serde_json::{json, Value};

const SECRET: &str = "whsec_test_secret";

fn account() -> Account {
    let id = PspAccountId::new();
    Account {
        id,
        api_secret: Some(Secret::new(format!("sk_test_{id}"))),
        webhook_secret: Some(Secret::new(SECRET.into())),
    }
}

fn request(account: &Account, token: &str) -> PaymentRequest {
    let reference = PaymentId::new();
    PaymentRequest {
        account: account.clone(),
        reference,
        amount: 1000,
        currency: Currency::parse("currency", "EUR").unwrap(),
        token: token.to_owned(),
        off_session: false,
        psp_customer_id: None,
        idempotency_key: idempotency_key(&reference, 1),
    }
}

fn deliver(stripe: &StripeConnector, acc: &Account, event: &Value) -> Result<WebhookEvent, ConnectorError> {
    let now = Utc::now();
    let (headers, body) = FakeStripe::signed(event, SECRET, now);
    stripe.parse_webhook(acc, WebhookRequest { headers: &headers, body: &body, received_at: now })
}

fn event_of<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events.iter().rev().find(|e| e["type"] == kind).unwrap_or_else(|| panic!("no {kind} event"))
}

fn payment(e: WebhookEvent) -> azotte_payments::PspPayment {
    match e.object {
        WebhookObject::Payment(p) => p,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_followed_event_type_parses() {
    let fake = FakeStripe::start().await.unwrap();
    let stripe = fake.connector(Duration::from_secs(5)).unwrap();
    let acc = account();

    let charge = request(&acc, "pm_card_visa");
    let paid = stripe.charge(&charge).await.unwrap();
    let e = event_of(&fake.events(), "payment_intent.succeeded").clone();
    let parsed = deliver(&stripe, &acc, &e).unwrap();
    assert_eq!(parsed.id, e["id"].as_str().unwrap());
    assert_eq!(parsed.created.timestamp(), e["created"].as_i64().unwrap());
    assert_eq!(payment(parsed), paid);

    let declined = request(&acc, "pm_card_chargeDeclinedInsufficientFunds");
    stripe.charge(&declined).await.unwrap_err();
    let p =
        payment(deliver(&stripe, &acc, event_of(&fake.events(), "payment_intent.payment_failed")).unwrap());
    assert_eq!((p.reference, p.status), (declined.reference, PaymentStatus::Failed));
    assert_eq!(p.decline_code, Some(DeclineCode::InsufficientFunds));

    let three_ds = request(&acc, "pm_card_authenticationRequired");
    stripe.charge(&three_ds).await.unwrap_err();
    let p =
        payment(deliver(&stripe, &acc, event_of(&fake.events(), "payment_intent.requires_action")).unwrap());
    assert_eq!((p.reference, p.status), (three_ds.reference, PaymentStatus::RequiresAction));

    let auth = request(&acc, "pm_card_visa");
    let a = stripe.authorize(&auth).await.unwrap();
    let e = event_of(&fake.events(), "payment_intent.amount_capturable_updated").clone();
    let p = payment(deliver(&stripe, &acc, &e).unwrap());
    assert_eq!((p.reference, p.status, p.amount_captured), (auth.reference, PaymentStatus::Authorized, 0));
    let void = VoidRequest {
        account: acc.clone(),
        reference: auth.reference,
        psp_id: a.psp_id.clone(),
        idempotency_key: void_idempotency_key(&auth.reference, 1),
    };
    stripe.void(&void).await.unwrap();
    let p = payment(deliver(&stripe, &acc, event_of(&fake.events(), "payment_intent.canceled")).unwrap());
    assert_eq!((p.reference, p.status), (auth.reference, PaymentStatus::Canceled));

    let auth = request(&acc, "pm_card_visa");
    let a = stripe.authorize(&auth).await.unwrap();
    let capture = CaptureRequest {
        account: acc.clone(),
        reference: auth.reference,
        psp_id: a.psp_id,
        amount: None,
        idempotency_key: capture_idempotency_key(&auth.reference, 1),
    };
    stripe.capture(&capture).await.unwrap();
    let p = payment(deliver(&stripe, &acc, event_of(&fake.events(), "payment_intent.succeeded")).unwrap());
    assert_eq!((p.reference, p.status, p.amount_captured), (auth.reference, PaymentStatus::Captured, 1000));

    let reference = RefundId::new();
    let refund = RefundRequest {
        account: acc.clone(),
        reference,
        payment_psp_id: paid.psp_id.clone(),
        amount: 250,
        currency: Currency::parse("currency", "EUR").unwrap(),
        idempotency_key: refund_idempotency_key(&reference, 1),
    };
    let r = stripe.refund(&refund).await.unwrap();
    for kind in ["refund.created", "charge.refunded"] {
        match deliver(&stripe, &acc, event_of(&fake.events(), kind)).unwrap().object {
            WebhookObject::Refund(got) => assert_eq!(got, r, "{kind}"),
            other => panic!("{kind}: {other:?}"),
        }
    }
    // refund.updated / refund.failed carry the refund too.
    let mut failed = event_of(&fake.events(), "refund.created").clone();
    failed["type"] = json!("refund.failed");
    failed["data"]["object"]["status"] = json!("failed");
    match deliver(&stripe, &acc, &failed).unwrap().object {
        WebhookObject::Refund(got) => {
            assert_eq!((got.reference, got.status), (reference, RefundStatus::Failed))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn events_azotte_does_not_follow_are_ignored() {
    // Stripe's example event (a plan.created) is not ours.
    let fixture: Value = serde_json::from_str(include_str!("../src/stripe/fake/fixtures.json")).unwrap();
    let plan = serde_json::to_vec(&fixture["event"]).unwrap();
    assert_eq!(parse_event(&plan).unwrap(), None);
    // A PaymentIntent made outside Azotte carries no reference of ours.
    let mut foreign = fixture["event"].clone();
    foreign["type"] = json!("payment_intent.succeeded");
    foreign["data"]["object"] = fixture["payment_intent"].clone();
    assert_eq!(parse_event(&serde_json::to_vec(&foreign).unwrap()).unwrap(), None);
    let stripe = StripeConnector::new().unwrap();
    match deliver(&stripe, &account(), &foreign) {
        Err(ConnectorError::InvalidWebhook { reason }) => assert!(reason.starts_with("ignored"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse_event(b"{not json"), Err(ConnectorError::InvalidWebhook { .. })));
}

fn check(header: Option<&str>, body: &[u8], received_offset_secs: i64) -> Result<(), ConnectorError> {
    let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    verify_signature(SECRET, header, body, t + Span::seconds(received_offset_secs))
}

#[test]
fn signatures_are_verified_with_tolerance() {
    let body = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let good = sign(SECRET, body, t);
    assert!(good.starts_with("t=1700000000,v1="));
    assert_eq!(check(Some(&good), body, 0), Ok(()));
    assert_eq!(check(Some(&good), body, 300), Ok(()));
    assert_eq!(check(Some(&good), body, -300), Ok(()));
    let reason = |r: Result<(), ConnectorError>| match r {
        Err(ConnectorError::InvalidWebhook { reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(check(Some(&good), body, 301)), "timestamp outside tolerance");
    assert_eq!(reason(check(Some(&good), body, -301)), "timestamp outside tolerance");

    // Tampered body, wrong secret, timestamp changed without re-signing.
    let tampered = br#"{"id":"evt_1","type":"payment_intent.succeeded "}"#;
    assert_eq!(reason(check(Some(&good), tampered, 0)), "signature mismatch");
    let other_secret = sign("whsec_other", body, t);
    assert_eq!(reason(check(Some(&other_secret), body, 0)), "signature mismatch");
    let moved = good.replace("t=1700000000", "t=1700000100");
    assert_eq!(reason(check(Some(&moved), body, 100)), "signature mismatch");

    // Several v1 signatures (a secret being rolled): one match suffices; v0 is ignored.
    let sig = good.split_once(",v1=").unwrap().1;
    let rolled = format!("t=1700000000,v1={},v0=deadbeef,v1={sig}", "ab".repeat(32));
    assert_eq!(check(Some(&rolled), body, 0), Ok(()));
    let only_v0 = format!("t=1700000000,v0={sig}");
    assert_eq!(reason(check(Some(&only_v0), body, 0)), "no v1 signature");
    assert_eq!(reason(check(Some(&format!("v1={sig}")), body, 0)), "missing or malformed timestamp");
    assert_eq!(reason(check(Some(&format!("t=abc,v1={sig}")), body, 0)), "missing or malformed timestamp");
    assert_eq!(reason(check(None, body, 0)), "missing Stripe-Signature header");
}

#[test]
fn the_connector_uses_the_accounts_secret_and_the_arrival_time() {
    let stripe = StripeConnector::new().unwrap();
    let body = br#"{"id":"evt_1","object":"event","created":1700000000,"type":"customer.created","data":{"object":{}}}"#;
    let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let headers = vec![(SIGNATURE_HEADER.to_ascii_uppercase(), sign(SECRET, body, t))];
    let at = |received_at| WebhookRequest { headers: &headers, body, received_at };
    // Verified (then ignored, as a type Azotte does not follow).
    match stripe.parse_webhook(&account(), at(t + Span::seconds(10))) {
        Err(ConnectorError::InvalidWebhook { reason }) => assert!(reason.starts_with("ignored")),
        other => panic!("{other:?}"),
    }
    match stripe.parse_webhook(&account(), at(t + Span::seconds(400))) {
        Err(ConnectorError::InvalidWebhook { reason }) => assert_eq!(reason, "timestamp outside tolerance"),
        other => panic!("{other:?}"),
    }
    let wrong = Account { webhook_secret: Some(Secret::new("whsec_wrong".into())), ..account() };
    match stripe.parse_webhook(&wrong, at(t)) {
        Err(ConnectorError::InvalidWebhook { reason }) => assert_eq!(reason, "signature mismatch"),
        other => panic!("{other:?}"),
    }
    let none = Account::new(PspAccountId::new());
    assert!(matches!(stripe.parse_webhook(&none, at(t)), Err(ConnectorError::Configuration { .. })));
}
