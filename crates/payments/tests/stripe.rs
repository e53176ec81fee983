//! The Stripe connector against the fake Stripe server: wire format, every error mapping,
//! idempotent retries and lookups after lost answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{
    capture_idempotency_key, idempotency_key, refund_idempotency_key, void_idempotency_key, PaymentId,
    PaymentStatus, RefundId, RefundStatus,
};
use azotte_domain::Secret;
use azotte_payments::stripe::fake::{FakeStripe, Fault, MovementKind};
use azotte_payments::stripe::{StripeConfig, StripeConnector, API_VERSION};
use azotte_payments::{
    Account, CaptureRequest, Connector, ConnectorError, DeclineCode, PaymentRequest, RefundRequest,
    RetryReason, VoidRequest,
};

fn account() -> Account {
    let id = PspAccountId::new();
    Account {
        id,
        api_secret: Some(Secret::new(format!("sk_test_{id}"))),
        webhook_secret: Some(Secret::new("whsec_test".into())),
    }
}

fn request(account: &Account, token: &str, amount: i64) -> PaymentRequest {
    let reference = PaymentId::new();
    PaymentRequest {
        account: account.clone(),
        reference,
        amount,
        currency: Currency::parse("currency", "EUR").unwrap(),
        token: token.to_owned(),
        off_session: false,
        psp_customer_id: None,
        idempotency_key: idempotency_key(&reference, 1),
    }
}

fn refund_request(account: &Account, psp_id: &str, amount: i64) -> RefundRequest {
    let reference = RefundId::new();
    RefundRequest {
        account: account.clone(),
        reference,
        payment_psp_id: psp_id.to_owned(),
        amount,
        currency: Currency::parse("currency", "EUR").unwrap(),
        idempotency_key: refund_idempotency_key(&reference, 1),
    }
}

async fn setup() -> (FakeStripe, StripeConnector, Account) {
    let fake = FakeStripe::start().await.unwrap();
    let stripe = fake.connector(Duration::from_secs(5)).unwrap();
    (fake, stripe, account())
}

#[tokio::test]
async fn a_charge_speaks_stripes_wire_format() {
    let (fake, stripe, acc) = setup().await;
    let req = request(&acc, "pm_card_visa", 1499);
    let p = stripe.charge(&req).await.unwrap();
    assert_eq!((p.status, p.amount, p.amount_captured), (PaymentStatus::Captured, 1499, 1499));
    assert_eq!((p.reference, p.currency.as_str()), (req.reference, "EUR"));
    assert!(p.psp_id.starts_with("pi_"));

    let sent = fake.requests().pop().unwrap();
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/payment_intents"));
    assert_eq!(sent.header("authorization"), Some(format!("Bearer sk_test_{}", acc.id).as_str()));
    assert_eq!(sent.header("idempotency-key"), Some(req.idempotency_key.as_str()));
    assert_eq!(sent.header("stripe-version"), Some(API_VERSION));
    assert!(sent.header("content-type").unwrap().starts_with("application/x-www-form-urlencoded"));
    for (k, v) in [
        ("amount", "1499"),
        ("currency", "eur"),
        ("payment_method", "pm_card_visa"),
        ("confirm", "true"),
        ("capture_method", "automatic"),
    ] {
        assert_eq!(sent.param(k), Some(v), "{k}");
    }
    assert_eq!(sent.param("metadata[azotte_payment_id]"), Some(req.reference.to_string().as_str()));
    assert_eq!(sent.param("off_session"), None);

    let moves = fake.movements();
    assert_eq!(moves.len(), 1);
    assert_eq!(
        (moves[0].kind, moves[0].amount, moves[0].currency.as_str()),
        (MovementKind::Charge, 1499, "eur")
    );

    // A renewal is off session.
    let renewal = PaymentRequest { off_session: true, ..request(&acc, "pm_card_visa", 500) };
    stripe.charge(&renewal).await.unwrap();
    assert_eq!(fake.requests().pop().unwrap().param("off_session"), Some("true"));
}

#[tokio::test]
async fn authorize_then_capture_or_void() {
    let (fake, stripe, acc) = setup().await;
    let req = request(&acc, "pm_card_mastercard", 2000);
    let p = stripe.authorize(&req).await.unwrap();
    assert_eq!((p.status, p.amount_captured), (PaymentStatus::Authorized, 0));
    assert_eq!(fake.requests().pop().unwrap().param("capture_method"), Some("manual"));

    let capture = CaptureRequest {
        account: acc.clone(),
        reference: req.reference,
        psp_id: p.psp_id.clone(),
        amount: Some(1500),
        idempotency_key: capture_idempotency_key(&req.reference, 1),
    };
    let c = stripe.capture(&capture).await.unwrap();
    assert_eq!((c.status, c.amount_captured), (PaymentStatus::Captured, 1500));
    let sent = fake.requests().pop().unwrap();
    assert_eq!(sent.path, format!("/v1/payment_intents/{}/capture", p.psp_id));
    assert_eq!(sent.param("amount_to_capture"), Some("1500"));
    assert_eq!(sent.header("idempotency-key"), Some(capture.idempotency_key.as_str()));
    assert_eq!(stripe.capture(&capture).await.unwrap(), c, "a retried capture replays");
    let again = CaptureRequest { idempotency_key: capture_idempotency_key(&req.reference, 2), ..capture };
    match stripe.capture(&again).await {
        Err(ConnectorError::InvalidRequest { code, .. }) => {
            assert_eq!(code, "payment_intent_unexpected_state")
        }
        other => panic!("{other:?}"),
    }

    let req2 = request(&acc, "pm_card_visa", 700);
    let p2 = stripe.authorize(&req2).await.unwrap();
    let void = VoidRequest {
        account: acc.clone(),
        reference: req2.reference,
        psp_id: p2.psp_id.clone(),
        idempotency_key: void_idempotency_key(&req2.reference, 1),
    };
    let v = stripe.void(&void).await.unwrap();
    assert_eq!(v.status, PaymentStatus::Canceled);
    assert_eq!(fake.requests().pop().unwrap().path, format!("/v1/payment_intents/{}/cancel", p2.psp_id));

    let kinds: Vec<_> = fake.movements().iter().map(|m| (m.kind, m.amount)).collect();
    assert_eq!(
        kinds,
        [
            (MovementKind::Authorization, 2000),
            (MovementKind::Capture, 1500),
            (MovementKind::Authorization, 700),
            (MovementKind::Void, 700)
        ]
    );
}

#[tokio::test]
async fn card_errors_are_hard_declines_with_normalized_codes() {
    let (fake, stripe, acc) = setup().await;
    for (token, code) in [
        ("pm_card_chargeDeclined", DeclineCode::GenericDecline),
        ("pm_card_chargeDeclinedInsufficientFunds", DeclineCode::InsufficientFunds),
        ("pm_card_chargeDeclinedLostCard", DeclineCode::LostCard),
        ("pm_card_chargeDeclinedStolenCard", DeclineCode::StolenCard),
        ("pm_card_chargeDeclinedExpiredCard", DeclineCode::ExpiredCard),
        ("pm_card_chargeDeclinedIncorrectCvc", DeclineCode::IncorrectCvc),
        ("pm_card_chargeDeclinedFraudulent", DeclineCode::Fraudulent),
    ] {
        let req = request(&acc, token, 1000);
        assert_eq!(stripe.charge(&req).await, Err(ConnectorError::HardDecline { code }), "{token}");
        // The declined PaymentIntent exists at Stripe and looks failed.
        let found = stripe.lookup_payment(&acc, &req.reference).await.unwrap();
        assert_eq!(
            (found.len(), found[0].status, found[0].decline_code),
            (1, PaymentStatus::Failed, Some(code))
        );
    }
    // A scripted decline, with a code Stripe spells differently from ours.
    fake.fail_next(Fault::Decline { code: "card_declined".into(), decline_code: Some("pickup_card".into()) });
    let req = request(&acc, "pm_card_visa", 1000);
    assert_eq!(stripe.charge(&req).await, Err(ConnectorError::HardDecline { code: DeclineCode::StolenCard }));
    // The decline is replayed for the same key, not retried against the card.
    assert_eq!(stripe.charge(&req).await, Err(ConnectorError::HardDecline { code: DeclineCode::StolenCard }));
    assert!(fake.movements().is_empty());
}

#[tokio::test]
async fn three_d_secure_requires_action_on_session_and_declines_off_session() {
    let (fake, stripe, acc) = setup().await;
    let req = request(&acc, "pm_card_authenticationRequired", 1000);
    let psp_id = match stripe.charge(&req).await {
        Err(ConnectorError::RequiresAction { psp_id, next_action }) => {
            assert_eq!(next_action["type"], "use_stripe_sdk");
            psp_id
        }
        other => panic!("{other:?}"),
    };
    assert!(fake.movements().is_empty());
    fake.complete_action(&psp_id, true).unwrap();
    let found = stripe.lookup_payment(&acc, &req.reference).await.unwrap();
    assert_eq!(found[0].status, PaymentStatus::Captured);

    let renewal =
        PaymentRequest { off_session: true, ..request(&acc, "pm_card_authenticationRequired", 1000) };
    assert_eq!(
        stripe.charge(&renewal).await,
        Err(ConnectorError::HardDecline { code: DeclineCode::AuthenticationRequired })
    );
}

#[tokio::test]
async fn retries_with_the_same_key_never_charge_twice() {
    let (fake, stripe, acc) = setup().await;
    let req = request(&acc, "pm_card_visa", 1000);
    let first = stripe.charge(&req).await.unwrap();
    assert_eq!(stripe.charge(&req).await.unwrap(), first);
    assert_eq!(fake.captured(&req.reference.to_string()), 1000);

    // The same key with different parameters is refused, as Stripe does.
    let changed = PaymentRequest { amount: 1001, ..req.clone() };
    assert_eq!(
        stripe.charge(&changed).await,
        Err(ConnectorError::IdempotencyConflict { key: req.idempotency_key.clone() })
    );

    // Many concurrent submissions of one payment: one charge.
    let req = request(&acc, "pm_card_visa", 2500);
    let answers = submit_concurrently(&stripe, &req, 12).await;
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(fake.captured(&req.reference.to_string()), 2500);
    assert_eq!(fake.movements().len(), 2);
}

async fn submit_concurrently(
    stripe: &StripeConnector,
    req: &PaymentRequest,
    n: usize,
) -> Vec<Result<azotte_payments::PspPayment, ConnectorError>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (stripe, req) = (stripe.clone(), req.clone());
        tasks.push(tokio::spawn(async move { stripe.charge(&req).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn rate_limits_are_retryable_and_honour_retry_after() {
    let (fake, stripe, acc) = setup().await;
    let req = request(&acc, "pm_card_visa", 1000);
    fake.fail_next(Fault::RateLimit { retry_after_secs: 7 });
    assert_eq!(
        stripe.charge(&req).await,
        Err(ConnectorError::Retryable {
            reason: RetryReason::RateLimited,
            retry_after: Some(Duration::from_secs(7))
        })
    );
    assert!(fake.movements().is_empty());
    stripe.charge(&req).await.unwrap();
    assert_eq!(fake.captured(&req.reference.to_string()), 1000);
}

#[tokio::test]
async fn server_errors_are_unknown_for_writes_and_retryable_for_reads() {
    let (fake, stripe, acc) = setup().await;
    let req = request(&acc, "pm_card_visa", 1000);
    fake.fail_next(Fault::ServerError);
    let e = stripe.charge(&req).await.unwrap_err();
    assert!(e.may_have_charged() && !e.allows_failover(), "{e:?}");
    fake.fail_next(Fault::ServerError);
    assert_eq!(
        stripe.lookup_payment(&acc, &req.reference).await,
        Err(ConnectorError::Retryable { reason: RetryReason::ServerError, retry_after: None })
    );
    assert_eq!(stripe.lookup_payment(&acc, &req.reference).await, Ok(vec![]));
}

#[tokio::test]
async fn a_timeout_after_the_charge_is_unknown_and_the_lookup_finds_the_charge() {
    let fake = FakeStripe::start().await.unwrap();
    let stripe = fake.connector(Duration::from_millis(400)).unwrap();
    let acc = account();
    let req = request(&acc, "pm_card_visa", 1000);
    fake.fail_next(Fault::Hang);
    let e = stripe.charge(&req).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unknown { .. }), "{e:?}");
    assert_eq!(fake.captured(&req.reference.to_string()), 1000, "the charge happened");

    let found = stripe.lookup_payment(&acc, &req.reference).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].status, found[0].amount_captured), (PaymentStatus::Captured, 1000));
    // Even a retry with the same key replays instead of charging again.
    assert_eq!(stripe.charge(&req).await.unwrap().psp_id, found[0].psp_id);
    assert_eq!(fake.movements().len(), 1);
}

#[tokio::test]
async fn dropped_connections_and_unreadable_answers_are_unknown_for_writes() {
    let (fake, stripe, acc) = setup().await;
    for fault in [Fault::CloseAfterExecuting, Fault::MalformedJson] {
        let req = request(&acc, "pm_card_visa", 1000);
        fake.fail_next(fault.clone());
        let e = stripe.charge(&req).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Unknown { .. }), "{fault:?}: {e:?}");
        let found = stripe.lookup_payment(&acc, &req.reference).await.unwrap();
        assert_eq!(found.len(), 1, "{fault:?}: the charge is found");
    }
    // Closed before executing: the client cannot tell, so it is unknown too; nothing was charged.
    let req = request(&acc, "pm_card_visa", 1000);
    fake.fail_next(Fault::CloseBeforeExecuting);
    assert!(stripe.charge(&req).await.unwrap_err().may_have_charged());
    assert_eq!(stripe.lookup_payment(&acc, &req.reference).await, Ok(vec![]));

    // A read whose answer is unreadable is simply asked again.
    fake.fail_next(Fault::MalformedJson);
    assert!(stripe.lookup_payment(&acc, &req.reference).await.unwrap_err().is_retryable());
    fake.fail_next(Fault::CloseAfterExecuting);
    assert!(stripe.lookup_payment(&acc, &req.reference).await.unwrap_err().is_retryable());
}

#[tokio::test]
async fn a_connection_that_never_opens_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stripe = StripeConnector::with_config(StripeConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        ..StripeConfig::default()
    })
    .unwrap();
    let acc = account();
    let e = stripe.charge(&request(&acc, "pm_card_visa", 1000)).await.unwrap_err();
    assert_eq!(e, ConnectorError::Retryable { reason: RetryReason::Network, retry_after: None });
    assert!(e.allows_failover());
}

#[tokio::test]
async fn invalid_requests_and_configuration() {
    let (_fake, stripe, acc) = setup().await;
    match stripe.charge(&request(&acc, "pm_nonexistent", 1000)).await {
        Err(ConnectorError::InvalidRequest { code, .. }) => assert_eq!(code, "resource_missing"),
        other => panic!("{other:?}"),
    }
    let no_key = Account::new(PspAccountId::new());
    assert!(matches!(
        stripe.charge(&request(&no_key, "pm_card_visa", 1000)).await,
        Err(ConnectorError::Configuration { .. })
    ));
    let publishable = Account { api_secret: Some(Secret::new("pk_test_123".into())), ..account() };
    assert!(matches!(
        stripe.charge(&request(&publishable, "pm_card_visa", 1000)).await,
        Err(ConnectorError::Configuration { .. })
    ));
}

#[tokio::test]
async fn refunds_and_their_lookups() {
    let (fake, stripe, acc) = setup().await;
    let p = stripe.charge(&request(&acc, "pm_card_visa", 1000)).await.unwrap();
    let r1 = refund_request(&acc, &p.psp_id, 400);
    let refund = stripe.refund(&r1).await.unwrap();
    assert_eq!(
        (refund.status, refund.amount, refund.reference),
        (RefundStatus::Succeeded, 400, r1.reference)
    );
    assert_eq!(refund.payment_psp_id, p.psp_id);
    let sent = fake.requests().pop().unwrap();
    assert_eq!((sent.path.as_str(), sent.param("payment_intent")), ("/v1/refunds", Some(p.psp_id.as_str())));
    assert_eq!(sent.param("metadata[azotte_refund_id]"), Some(r1.reference.to_string().as_str()));
    assert_eq!(sent.header("idempotency-key"), Some(r1.idempotency_key.as_str()));
    assert_eq!(stripe.refund(&r1).await.unwrap(), refund, "a retried refund replays");

    match stripe.refund(&refund_request(&acc, &p.psp_id, 601)).await {
        Err(ConnectorError::InvalidRequest { code, .. }) => assert_eq!(code, "amount_too_large"),
        other => panic!("{other:?}"),
    }
    assert_eq!(stripe.lookup_refund(&acc, &r1.reference).await.unwrap(), vec![refund.clone()]);
    assert_eq!(stripe.lookup_refund_of(&acc, &p.psp_id, &r1.reference).await.unwrap(), vec![refund]);
    assert_eq!(stripe.lookup_refund(&acc, &RefundId::new()).await.unwrap(), vec![]);
    let refunded: i64 =
        fake.movements().iter().filter(|m| m.kind == MovementKind::Refund).map(|m| m.amount).sum();
    assert_eq!(refunded, 400);
}

#[tokio::test]
async fn lookups_follow_pages_and_list_oldest_first() {
    let (_fake, stripe, acc) = setup().await;
    let p = stripe.charge(&request(&acc, "pm_card_visa", 10_000)).await.unwrap();
    let first = refund_request(&acc, &p.psp_id, 1);
    stripe.refund(&first).await.unwrap();
    for _ in 0..104 {
        stripe.refund(&refund_request(&acc, &p.psp_id, 1)).await.unwrap();
    }
    // The oldest refund is on the second page of the newest-first list.
    assert_eq!(stripe.lookup_refund(&acc, &first.reference).await.unwrap().len(), 1);

    // The same reference charged under two keys (a double charge): both, oldest first.
    let req = request(&acc, "pm_card_visa", 300);
    let a = stripe.charge(&req).await.unwrap();
    let b = stripe
        .charge(&PaymentRequest { idempotency_key: idempotency_key(&req.reference, 2), ..req.clone() })
        .await
        .unwrap();
    let ids: Vec<_> =
        stripe.lookup_payment(&acc, &req.reference).await.unwrap().into_iter().map(|p| p.psp_id).collect();
    assert_eq!(ids, [a.psp_id, b.psp_id]);
}
