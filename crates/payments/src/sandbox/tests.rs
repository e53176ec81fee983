use std::sync::Arc;

use azotte_domain::payment::{
    capture_idempotency_key, idempotency_key, refund_idempotency_key, void_idempotency_key, RefundStatus,
};
use chrono::{TimeZone, Utc};

use super::*;
use crate::connector::Account;

fn eur() -> Currency {
    Currency::parse("currency", "EUR").unwrap()
}

fn account() -> Account {
    Account::new(PspAccountId::new())
}

fn request(account: &Account, token: &str) -> PaymentRequest {
    let reference = PaymentId::new();
    PaymentRequest {
        account: account.clone(),
        reference,
        amount: 1000,
        currency: eur(),
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
        currency: eur(),
        idempotency_key: refund_idempotency_key(&reference, 1),
    }
}

fn code(e: &ConnectorError) -> &str {
    match e {
        ConnectorError::InvalidRequest { code, .. } => code,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

#[tokio::test]
async fn succeeding_tokens_charge_once() {
    for token in ["tok_sandbox_success", "tok_sandbox_mastercard", "tok_sandbox_amex"] {
        let sb = Sandbox::new();
        let acc = account();
        let req = request(&acc, token);
        let p = sb.charge(&req).await.unwrap();
        assert_eq!((p.status, p.amount, p.amount_captured), (PaymentStatus::Captured, 1000, 1000), "{token}");
        assert_eq!(p.reference, req.reference);
        let ledger = sb.ledger();
        let kinds: Vec<EntryKind> = ledger.for_payment(&req.reference).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EntryKind::Authorization, EntryKind::Capture]);
        assert_eq!(ledger.captures(&req.reference).len(), 1);
        assert_eq!(ledger.captured(&req.reference), 1000);
        assert_eq!(ledger.captures(&req.reference)[0].idempotency_key, req.idempotency_key);
    }
}

#[tokio::test]
async fn authorize_then_capture_or_void() {
    let sb = Sandbox::new();
    let acc = account();
    let req = request(&acc, "tok_sandbox_success");
    let p = sb.authorize(&req).await.unwrap();
    assert_eq!((p.status, p.amount_captured), (PaymentStatus::Authorized, 0));
    assert_eq!(sb.ledger().captured(&req.reference), 0);

    let cap = CaptureRequest {
        account: acc.clone(),
        reference: req.reference,
        psp_id: p.psp_id.clone(),
        amount: Some(700),
        idempotency_key: capture_idempotency_key(&req.reference, 1),
    };
    let c = sb.capture(&cap).await.unwrap();
    assert_eq!((c.status, c.amount_captured), (PaymentStatus::Captured, 700));
    assert_eq!(sb.capture(&cap).await.unwrap(), c, "same key replays");
    let again = CaptureRequest { idempotency_key: capture_idempotency_key(&req.reference, 2), ..cap.clone() };
    assert_eq!(code(&sb.capture(&again).await.unwrap_err()), "payment_unexpected_state");
    let other = CaptureRequest { amount: Some(1000), ..cap };
    assert!(matches!(sb.capture(&other).await, Err(ConnectorError::IdempotencyConflict { .. })));
    assert_eq!(sb.ledger().captures(&req.reference).len(), 1);
    assert_eq!(sb.ledger().captured(&req.reference), 700);

    // Over-capture is refused; void releases the authorization.
    let req = request(&acc, "tok_sandbox_amex");
    let p = sb.authorize(&req).await.unwrap();
    let over = CaptureRequest {
        account: acc.clone(),
        reference: req.reference,
        psp_id: p.psp_id.clone(),
        amount: Some(1001),
        idempotency_key: capture_idempotency_key(&req.reference, 1),
    };
    assert_eq!(code(&sb.capture(&over).await.unwrap_err()), "amount_too_large");
    let void = VoidRequest {
        account: acc.clone(),
        reference: req.reference,
        psp_id: p.psp_id,
        idempotency_key: void_idempotency_key(&req.reference, 1),
    };
    assert_eq!(sb.void(&void).await.unwrap().status, PaymentStatus::Canceled);
    assert_eq!(sb.void(&void).await.unwrap().status, PaymentStatus::Canceled, "replayed");
    let kinds: Vec<EntryKind> = sb.ledger().for_payment(&req.reference).iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EntryKind::Authorization, EntryKind::Void]);
}

#[tokio::test]
async fn declining_tokens_charge_nothing_and_replay_the_decline() {
    for (token, expected) in [
        ("tok_sandbox_decline_insufficient_funds", DeclineCode::InsufficientFunds),
        ("tok_sandbox_decline_stolen", DeclineCode::StolenCard),
        ("tok_sandbox_expired", DeclineCode::ExpiredCard),
    ] {
        let sb = Sandbox::new();
        let acc = account();
        let req = request(&acc, token);
        for _ in 0..2 {
            assert_eq!(sb.charge(&req).await, Err(ConnectorError::HardDecline { code: expected }), "{token}");
        }
        assert!(sb.ledger().is_empty());
        let found = sb.lookup_payment(&acc, &req.reference).await.unwrap();
        assert_eq!(found.len(), 1, "a declined payment is one object, however often replayed");
        assert_eq!((found[0].status, found[0].decline_code), (PaymentStatus::Failed, Some(expected)));
    }
}

#[tokio::test]
async fn requires_action_waits_for_the_customer() {
    let sb = Sandbox::new();
    let acc = account();
    let req = request(&acc, "tok_sandbox_requires_action");
    let Err(ConnectorError::RequiresAction { psp_id, next_action }) = sb.charge(&req).await else {
        panic!("expected requires action");
    };
    assert_eq!(next_action["type"], "redirect_to_url");
    assert!(next_action["redirect_to_url"]["url"].as_str().unwrap().contains(&psp_id));
    assert!(sb.ledger().is_empty());
    assert_eq!(
        sb.lookup_payment(&acc, &req.reference).await.unwrap()[0].status,
        PaymentStatus::RequiresAction
    );
    let done = sb.complete_action(&acc.id, &psp_id, true).unwrap();
    assert_eq!(done.status, PaymentStatus::Captured);
    assert_eq!(sb.ledger().captures(&req.reference).len(), 1);
    assert!(sb.complete_action(&acc.id, &psp_id, true).is_err(), "only once");

    // Authorize only: the action ends in an authorization; a failed action fails the payment.
    let req = request(&acc, "tok_sandbox_requires_action");
    let Err(ConnectorError::RequiresAction { psp_id, .. }) = sb.authorize(&req).await else { panic!() };
    assert_eq!(sb.complete_action(&acc.id, &psp_id, true).unwrap().status, PaymentStatus::Authorized);
    let req = request(&acc, "tok_sandbox_requires_action");
    let Err(ConnectorError::RequiresAction { psp_id, .. }) = sb.charge(&req).await else { panic!() };
    assert!(sb.complete_action(&PspAccountId::new(), &psp_id, true).is_err(), "another account's payment");
    let failed = sb.complete_action(&acc.id, &psp_id, false).unwrap();
    assert_eq!(
        (failed.status, failed.decline_code),
        (PaymentStatus::Failed, Some(DeclineCode::AuthenticationRequired))
    );
    assert_eq!(sb.ledger().captured(&req.reference), 0);

    // Off-session (a renewal) the customer cannot act: a hard decline.
    let req = PaymentRequest { off_session: true, ..request(&acc, "tok_sandbox_requires_action") };
    assert_eq!(
        sb.charge(&req).await,
        Err(ConnectorError::HardDecline { code: DeclineCode::AuthenticationRequired })
    );
}

#[tokio::test]
async fn timeout_is_retryable_and_charges_nothing() {
    let sb = Sandbox::new();
    let acc = account();
    let req = request(&acc, "tok_sandbox_timeout");
    for _ in 0..3 {
        let e = sb.charge(&req).await.unwrap_err();
        assert_eq!(e, ConnectorError::Retryable { reason: RetryReason::Timeout, retry_after: None });
        assert!(e.allows_failover());
    }
    assert!(sb.ledger().is_empty());
    assert!(sb.lookup_payment(&acc, &req.reference).await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_charges_then_lookup_finds_it_and_a_retry_replays() {
    let sb = Sandbox::new();
    let acc = account();
    let req = request(&acc, "tok_sandbox_unknown");
    let e = sb.charge(&req).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unknown { .. }) && e.may_have_charged() && !e.allows_failover());
    assert_eq!(sb.ledger().captures(&req.reference).len(), 1, "the charge happened");
    let found = sb.lookup_payment(&acc, &req.reference).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].status, found[0].amount_captured), (PaymentStatus::Captured, 1000));
    // A retry with the same key gets the stored answer; nothing is charged twice.
    assert_eq!(sb.charge(&req).await.unwrap(), found[0]);
    assert_eq!(sb.ledger().captures(&req.reference).len(), 1);
    // Another account does not see it.
    assert!(sb.lookup_payment(&account(), &req.reference).await.unwrap().is_empty());

    // Capture of an authorized unknown-token payment also loses its answer, after capturing.
    let req = request(&acc, "tok_sandbox_unknown");
    assert!(sb.authorize(&req).await.unwrap_err().may_have_charged());
    let p = sb.lookup_payment(&acc, &req.reference).await.unwrap().remove(0);
    assert_eq!(p.status, PaymentStatus::Authorized);
    let cap = CaptureRequest {
        account: acc.clone(),
        reference: req.reference,
        psp_id: p.psp_id,
        amount: None,
        idempotency_key: capture_idempotency_key(&req.reference, 1),
    };
    assert!(sb.capture(&cap).await.unwrap_err().may_have_charged());
    assert_eq!(sb.capture(&cap).await.unwrap().status, PaymentStatus::Captured);
    assert_eq!(sb.ledger().captured(&req.reference), 1000);
}

#[tokio::test]
async fn flaky_fails_n_times_per_reference_then_succeeds() {
    for n in [0u32, 1, 2, 5] {
        let sb = Sandbox::with_config(SandboxConfig { flaky_failures: n, ..SandboxConfig::default() });
        let acc = account();
        let req = request(&acc, "tok_sandbox_flaky");
        for i in 0..n {
            let e = sb.charge(&req).await.unwrap_err();
            assert_eq!(
                e,
                ConnectorError::Retryable { reason: RetryReason::ServerError, retry_after: None },
                "{i}"
            );
        }
        assert!(sb.ledger().is_empty());
        assert_eq!(sb.charge(&req).await.unwrap().status, PaymentStatus::Captured, "n = {n}");
        assert_eq!(sb.ledger().captures(&req.reference).len(), 1);
        // The count is per reference, whatever the key: a new payment starts again.
        let other = request(&acc, "tok_sandbox_flaky");
        assert_eq!(sb.charge(&other).await.is_err(), n > 0);
    }
    assert_eq!(SandboxConfig::default().flaky_failures, 2);
}

#[tokio::test]
async fn outage_makes_everything_retryable_until_lifted() {
    let sb = Sandbox::new();
    let acc = account();
    let paid = request(&acc, "tok_sandbox_success");
    let p = sb.charge(&paid).await.unwrap();
    sb.set_outage(true);
    assert!(sb.outage());
    let maintenance = |r: Result<(), ConnectorError>| {
        assert!(matches!(
            r,
            Err(ConnectorError::Retryable { reason: RetryReason::Maintenance, retry_after: Some(_) })
        ))
    };
    let req = request(&acc, "tok_sandbox_success");
    maintenance(sb.charge(&req).await.map(drop));
    maintenance(sb.authorize(&req).await.map(drop));
    maintenance(sb.refund(&refund_request(&acc, &p.psp_id, 10)).await.map(drop));
    maintenance(sb.lookup_payment(&acc, &paid.reference).await.map(drop));
    maintenance(sb.lookup_refund(&acc, &RefundId::new()).await.map(drop));
    let void = VoidRequest {
        account: acc.clone(),
        reference: paid.reference,
        psp_id: p.psp_id.clone(),
        idempotency_key: "k".into(),
    };
    maintenance(sb.void(&void).await.map(drop));
    assert_eq!(sb.ledger().len(), 2, "only the charge before the outage");
    sb.set_outage(false);
    // The key was never seen during the outage: it executes now.
    assert_eq!(sb.charge(&req).await.unwrap().status, PaymentStatus::Captured);
    assert_eq!(sb.ledger().captures(&req.reference).len(), 1);
}

#[tokio::test]
async fn same_key_different_request_is_a_conflict_and_keys_are_per_account() {
    let sb = Sandbox::new();
    let acc = account();
    let req = request(&acc, "tok_sandbox_success");
    let p = sb.charge(&req).await.unwrap();
    for changed in [
        PaymentRequest { amount: 1001, ..req.clone() },
        PaymentRequest { token: "tok_sandbox_amex".into(), ..req.clone() },
        PaymentRequest { off_session: true, ..req.clone() },
        PaymentRequest { currency: Currency::parse("c", "USD").unwrap(), ..req.clone() },
        PaymentRequest { reference: PaymentId::new(), ..req.clone() },
    ] {
        assert_eq!(
            sb.charge(&changed).await,
            Err(ConnectorError::IdempotencyConflict { key: req.idempotency_key.clone() })
        );
    }
    // Authorize is a different request than charge.
    assert!(matches!(sb.authorize(&req).await, Err(ConnectorError::IdempotencyConflict { .. })));
    // A refund cannot reuse a charge's key.
    let r =
        RefundRequest { idempotency_key: req.idempotency_key.clone(), ..refund_request(&acc, &p.psp_id, 5) };
    assert!(matches!(sb.refund(&r).await, Err(ConnectorError::IdempotencyConflict { .. })));
    assert_eq!(sb.ledger().captures(&req.reference).len(), 1);
    // Another account's key space is its own (a separate merchant at the PSP).
    let other = PaymentRequest { account: account(), ..req.clone() };
    assert_eq!(sb.charge(&other).await.unwrap().status, PaymentStatus::Captured);
    assert_eq!(sb.ledger().captures(&req.reference).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_charge_exactly_once() {
    let sb =
        Sandbox::with_config(SandboxConfig { latency: Duration::from_millis(3), ..SandboxConfig::default() });
    let acc = account();
    for token in ["tok_sandbox_success", "tok_sandbox_unknown", "tok_sandbox_decline_stolen"] {
        let req = Arc::new(request(&acc, token));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (sb, req) = (sb.clone(), req.clone());
                tokio::spawn(async move { sb.charge(&req).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let first_answer_lost = token == "tok_sandbox_unknown";
        let unknown = results.iter().filter(|r| matches!(r, Err(ConnectorError::Unknown { .. }))).count();
        assert_eq!(
            unknown,
            usize::from(first_answer_lost),
            "{token}: only the executing call loses its answer"
        );
        let answers: Vec<_> =
            results.into_iter().filter(|r| !matches!(r, Err(ConnectorError::Unknown { .. }))).collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{token}: every replay is the same answer");
        let expected_captures = usize::from(token != "tok_sandbox_decline_stolen");
        assert_eq!(sb.ledger().captures(&req.reference).len(), expected_captures, "{token}");
        assert_eq!(sb.lookup_payment(&acc, &req.reference).await.unwrap().len(), 1, "{token}");
    }
}

#[tokio::test]
async fn refunds_partial_full_and_never_over_captured() {
    let sb = Sandbox::new();
    let acc = account();
    let req = request(&acc, "tok_sandbox_success");
    let p = sb.charge(&req).await.unwrap();

    assert_eq!(
        code(&sb.refund(&refund_request(&acc, &p.psp_id, 1001)).await.unwrap_err()),
        "amount_too_large"
    );
    let first = refund_request(&acc, &p.psp_id, 400);
    let r = sb.refund(&first).await.unwrap();
    assert_eq!((r.status, r.amount, r.reference), (RefundStatus::Succeeded, 400, first.reference));
    assert_eq!(sb.refund(&first).await.unwrap(), r, "same key replays");
    let changed = RefundRequest { amount: 300, ..first.clone() };
    assert!(matches!(sb.refund(&changed).await, Err(ConnectorError::IdempotencyConflict { .. })));
    assert_eq!(
        code(&sb.refund(&refund_request(&acc, &p.psp_id, 601)).await.unwrap_err()),
        "amount_too_large"
    );
    sb.refund(&refund_request(&acc, &p.psp_id, 600)).await.unwrap();
    assert_eq!(code(&sb.refund(&refund_request(&acc, &p.psp_id, 1)).await.unwrap_err()), "amount_too_large");
    assert_eq!(sb.ledger().refunded(&req.reference), 1000);
    assert_eq!(sb.ledger().of_kind(&req.reference, EntryKind::Refund).len(), 2);
    assert_eq!(sb.lookup_refund(&acc, &first.reference).await.unwrap(), vec![r]);
    assert!(sb.lookup_refund(&account(), &first.reference).await.unwrap().is_empty());

    // Only captured payments, only in their currency, only on the owning account, positive.
    let auth = request(&acc, "tok_sandbox_success");
    let a = sb.authorize(&auth).await.unwrap();
    assert_eq!(
        code(&sb.refund(&refund_request(&acc, &a.psp_id, 1)).await.unwrap_err()),
        "payment_unexpected_state"
    );
    let usd = RefundRequest {
        currency: Currency::parse("c", "USD").unwrap(),
        ..refund_request(&acc, &p.psp_id, 1)
    };
    assert_eq!(code(&sb.refund(&usd).await.unwrap_err()), "currency_mismatch");
    assert_eq!(
        code(&sb.refund(&refund_request(&account(), &p.psp_id, 1)).await.unwrap_err()),
        "resource_missing"
    );
    assert_eq!(code(&sb.refund(&refund_request(&acc, &p.psp_id, 0)).await.unwrap_err()), "amount_invalid");
    assert_eq!(sb.ledger().refunded(&req.reference), 1000);
}

#[tokio::test]
async fn refunds_of_flaky_and_unknown_payments() {
    let sb = Sandbox::new();
    let acc = account();
    let req = request(&acc, "tok_sandbox_flaky");
    while sb.charge(&req).await.is_err() {}
    let p = sb.lookup_payment(&acc, &req.reference).await.unwrap().remove(0);
    let r = refund_request(&acc, &p.psp_id, 1000);
    assert!(sb.refund(&r).await.unwrap_err().is_retryable());
    assert!(sb.refund(&r).await.unwrap_err().is_retryable());
    assert_eq!(sb.refund(&r).await.unwrap().status, RefundStatus::Succeeded);
    assert_eq!(sb.ledger().refunded(&req.reference), 1000);

    let req = request(&acc, "tok_sandbox_unknown");
    let _ = sb.charge(&req).await;
    let p = sb.lookup_payment(&acc, &req.reference).await.unwrap().remove(0);
    let r = refund_request(&acc, &p.psp_id, 250);
    assert!(sb.refund(&r).await.unwrap_err().may_have_charged());
    let found = sb.lookup_refund(&acc, &r.reference).await.unwrap();
    assert_eq!((found.len(), found[0].status), (1, RefundStatus::Succeeded));
    assert_eq!(sb.refund(&r).await.unwrap(), found[0]);
    assert_eq!(sb.ledger().refunded(&req.reference), 250);
}

#[tokio::test]
async fn invalid_requests() {
    let sb = Sandbox::new();
    let acc = account();
    assert_eq!(
        code(&sb.charge(&request(&acc, "tok_sandbox_nonsense")).await.unwrap_err()),
        "resource_missing"
    );
    assert_eq!(code(&sb.charge(&request(&acc, "pm_card_visa")).await.unwrap_err()), "resource_missing");
    let zero = PaymentRequest { amount: 0, ..request(&acc, "tok_sandbox_success") };
    assert_eq!(code(&sb.charge(&zero).await.unwrap_err()), "amount_invalid");
    let keyless = PaymentRequest { idempotency_key: String::new(), ..request(&acc, "tok_sandbox_success") };
    assert_eq!(code(&sb.charge(&keyless).await.unwrap_err()), "idempotency_key_invalid");
    assert!(sb.ledger().is_empty());
    for t in TOKENS {
        assert!(behaviour(t).is_some(), "{t}");
    }
}

#[tokio::test]
async fn usable_as_a_trait_object() {
    let sb = Sandbox::new();
    let c: Arc<dyn Connector> = Arc::new(sb.clone());
    assert_eq!(c.name(), "sandbox");
    let req = request(&account(), "tok_sandbox_success");
    c.charge(&req).await.unwrap();
    assert_eq!(sb.ledger().captured(&req.reference), 1000);
}

#[tokio::test]
async fn webhooks_are_signed_verified_and_parsed() {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let sb = Sandbox::with_config(SandboxConfig { clock: Clock::manual(t0), ..SandboxConfig::default() });
    let acc = Account { webhook_secret: Some("whsec_acct".to_owned().into()), ..account() };
    let req = request(&acc, "tok_sandbox_success");
    let p = sb.charge(&req).await.unwrap();
    let r = sb.refund(&refund_request(&acc, &p.psp_id, 100)).await.unwrap();
    let events = sb.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].object, WebhookObject::Payment(p));
    assert_eq!(events[1].object, WebhookObject::Refund(r));
    assert_eq!(events[0].created, t0);

    let (headers, body) = webhook::sign(&acc, &events[0], t0);
    let at = |received_at, headers: &[(String, String)], body: &[u8]| {
        sb.parse_webhook(&acc, WebhookRequest { headers, body, received_at })
    };
    assert_eq!(at(t0 + chrono::Duration::seconds(10), &headers, &body).unwrap(), events[0]);
    let upper: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_uppercase(), v.clone())).collect();
    assert!(at(t0, &upper, &body).is_ok(), "header names are case-insensitive");

    let invalid =
        |r: ConnectorResult<WebhookEvent>| assert!(matches!(r, Err(ConnectorError::InvalidWebhook { .. })));
    invalid(at(t0 + chrono::Duration::seconds(301), &headers, &body));
    invalid(at(t0 - chrono::Duration::seconds(301), &headers, &body));
    let mut tampered = body.clone();
    tampered[body.len() / 2] ^= 1;
    invalid(at(t0, &headers, &tampered));
    invalid(at(t0, &[], &body));
    invalid(at(t0, &[(webhook::SIGNATURE_HEADER.into(), "t=x,v1=zz".into())], &body));
    // Signed with the default secret: refused by an account that has its own.
    let (other_headers, _) = webhook::sign(&account(), &events[0], t0);
    invalid(at(t0, &other_headers, &body));
    // Correctly signed but not an event.
    let junk = b"{\"not\":\"an event\"}".to_vec();
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"whsec_acct").unwrap();
    hmac::Mac::update(&mut m, format!("{}.", t0.timestamp()).as_bytes());
    hmac::Mac::update(&mut m, &junk);
    let v1 = hex::encode(hmac::Mac::finalize(m).into_bytes());
    let junk_headers = vec![(webhook::SIGNATURE_HEADER.to_owned(), format!("t={},v1={v1}", t0.timestamp()))];
    assert_eq!(
        at(t0, &junk_headers, &junk),
        Err(ConnectorError::InvalidWebhook { reason: "malformed body".into() })
    );
}
