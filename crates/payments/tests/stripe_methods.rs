//! Payment methods through the Stripe connector against the fake: a token is validated and
//! attached to a Stripe customer before use, charged with that customer (off session too), and
//! detached at Stripe on delete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use azotte_domain::catalog::Currency;
use azotte_domain::id::PspAccountId;
use azotte_domain::payment::{idempotency_key, PaymentId, PaymentStatus};
use azotte_domain::Secret;
use azotte_payments::stripe::fake::FakeStripe;
use azotte_payments::{Account, AttachRequest, Connector, ConnectorError, PaymentRequest, Sandbox};

fn account() -> Account {
    let id = PspAccountId::new();
    Account { id, api_secret: Some(Secret::new(format!("sk_test_{id}"))), webhook_secret: None }
}

fn attach_request(account: &Account, token: &str, customer: Option<String>) -> AttachRequest {
    AttachRequest {
        account: account.clone(),
        token: token.into(),
        customer_reference: "cus_01ours".into(),
        psp_customer_id: customer,
        idempotency_key: format!("azotte-pm-{token}"),
    }
}

fn charge(account: &Account, token: &str, customer: Option<String>, off_session: bool) -> PaymentRequest {
    let reference = PaymentId::new();
    PaymentRequest {
        account: account.clone(),
        reference,
        amount: 990,
        currency: Currency::parse("currency", "EUR").unwrap(),
        token: token.into(),
        off_session,
        psp_customer_id: customer,
        idempotency_key: idempotency_key(&reference, 1),
    }
}

#[tokio::test]
async fn a_token_is_validated_attached_charged_off_session_and_detached() {
    let fake = FakeStripe::start().await.unwrap();
    let stripe = fake.connector(Duration::from_secs(5)).unwrap();
    let acc = account();

    let pm = stripe.attach_payment_method(&attach_request(&acc, "pm_card_mastercard", None)).await.unwrap();
    assert!(pm.token.starts_with("pm_fake"), "{pm:?}");
    assert_eq!((pm.brand.as_str(), pm.last4.as_str()), ("mastercard", "4444"));
    assert!((1..=12).contains(&pm.exp_month) && pm.exp_year > 2000 && !pm.fingerprint.is_empty());
    let customer = pm.psp_customer_id.clone().unwrap();
    assert!(customer.starts_with("cus_fake"));
    let created = fake.requests().into_iter().find(|r| r.path == "/v1/customers").unwrap();
    assert_eq!(created.param("metadata[azotte_customer_id]"), Some("cus_01ours"));
    assert!(created.header("idempotency-key").is_some());

    // A second method of the same customer reuses the Stripe customer.
    let second = stripe
        .attach_payment_method(&attach_request(&acc, "pm_card_visa", Some(customer.clone())))
        .await
        .unwrap();
    assert_eq!(second.psp_customer_id.as_deref(), Some(customer.as_str()));
    assert_eq!(fake.requests().iter().filter(|r| r.path == "/v1/customers").count(), 1);

    // Renewal: off session, with the customer.
    let paid = stripe.charge(&charge(&acc, &pm.token, Some(customer.clone()), true)).await.unwrap();
    assert_eq!(paid.status, PaymentStatus::Captured);
    let sent = fake.requests().into_iter().rfind(|r| r.path == "/v1/payment_intents").unwrap();
    assert_eq!(sent.param("customer"), Some(customer.as_str()));
    assert_eq!(sent.param("off_session"), Some("true"));

    // Detached: never charged again; detaching again is fine.
    stripe.detach_payment_method(&acc, &pm.token).await.unwrap();
    stripe.detach_payment_method(&acc, &pm.token).await.unwrap();
    let err = stripe.charge(&charge(&acc, &pm.token, Some(customer), true)).await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::InvalidRequest { code, .. } if code == "payment_method_unexpected_state"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unknown_token_is_refused_and_nothing_is_attached() {
    let fake = FakeStripe::start().await.unwrap();
    let stripe = fake.connector(Duration::from_secs(5)).unwrap();
    let acc = account();
    let err = stripe.attach_payment_method(&attach_request(&acc, "pm_doesnotexist", None)).await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::InvalidRequest { code, .. } if code == "resource_missing"),
        "{err:?}"
    );
    // Another account's method is unknown here.
    let other = account();
    let pm = stripe.attach_payment_method(&attach_request(&other, "pm_card_visa", None)).await.unwrap();
    let err = stripe.attach_payment_method(&attach_request(&acc, &pm.token, None)).await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::InvalidRequest { code, .. } if code == "resource_missing"),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_sandbox_validates_its_tokens_and_records_detaches() {
    let sandbox = Sandbox::new();
    let acc = Account::new(PspAccountId::new());
    let pm = sandbox.attach_payment_method(&attach_request(&acc, "tok_sandbox_amex", None)).await.unwrap();
    assert_eq!(
        (pm.brand.as_str(), pm.last4.as_str(), pm.token.as_str()),
        ("amex", "8431", "tok_sandbox_amex")
    );
    let err =
        sandbox.attach_payment_method(&attach_request(&acc, "tok_sandbox_nope", None)).await.unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidRequest { .. }));
    sandbox.detach_payment_method(&acc, "tok_sandbox_amex").await.unwrap();
    assert_eq!(sandbox.detached(), vec![(acc.id, "tok_sandbox_amex".to_owned())]);
}
