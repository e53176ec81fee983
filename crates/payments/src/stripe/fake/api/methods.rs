//! Customers and PaymentMethods at the fake: Stripe's test payment methods (`pm_card_visa`, …)
//! are shortcuts that attaching turns into a new PaymentMethod of the customer, with the test
//! card's display data; a detached one can no longer be charged.

use chrono::Utc;
use serde_json::{json, Value};

use super::{card, failure, invalid, metadata, no_such, param, template, Answer, Failure, State};
use crate::stripe::fake::RecordedRequest;

/// A PaymentMethod the fake holds: the object and the test card it came from.
pub(super) struct Method {
    pub(super) object: Value,
    pub(super) card: String,
}

/// Display data of a test card: (brand, last4).
fn display(card: &str) -> (&'static str, &'static str) {
    match card {
        "pm_card_mastercard" => ("mastercard", "4444"),
        "pm_card_amex" => ("amex", "8431"),
        "pm_card_chargeDeclined" => ("visa", "0002"),
        "pm_card_chargeDeclinedInsufficientFunds" => ("visa", "9995"),
        "pm_card_chargeDeclinedLostCard" => ("visa", "9987"),
        "pm_card_chargeDeclinedStolenCard" => ("visa", "9979"),
        "pm_card_chargeDeclinedExpiredCard" => ("visa", "0069"),
        "pm_card_chargeDeclinedIncorrectCvc" => ("visa", "0127"),
        "pm_card_chargeDeclinedFraudulent" => ("visa", "0019"),
        "pm_card_authenticationRequired" => ("visa", "3184"),
        _ => ("visa", "4242"),
    }
}

fn method_object(id: &str, card: &str, customer: Option<&str>) -> Value {
    let (brand, last4) = display(card);
    let mut pm = template("payment_method");
    pm["id"] = json!(id);
    pm["customer"] = json!(customer);
    pm["created"] = json!(Utc::now().timestamp());
    pm["metadata"] = json!({});
    pm["card"]["brand"] = json!(brand);
    pm["card"]["display_brand"] = json!(brand);
    pm["card"]["last4"] = json!(last4);
    pm["card"]["exp_month"] = json!(12);
    pm["card"]["exp_year"] = json!(2034);
    pm["card"]["fingerprint"] = json!(format!("fp{brand}{last4}"));
    pm
}

fn detached(id: &str) -> Failure {
    invalid(
        "payment_method_unexpected_state",
        format!("The PaymentMethod {id} was detached from its customer and can no longer be used."),
        Some("payment_method"),
    )
}

impl State {
    pub(super) fn create_customer(&mut self, key: &str, req: &RecordedRequest) -> Answer {
        let id = self.next_id("cus_fake");
        let mut c = template("customer");
        c["id"] = json!(id);
        c["created"] = json!(Utc::now().timestamp());
        c["metadata"] = Value::Object(metadata(req));
        c["email"] = json!(param(req, "email"));
        self.account(key).customers.push(c.clone());
        Ok(c)
    }

    pub(super) fn get_method(&mut self, key: &str, id: &str) -> Answer {
        if let Some(m) = self.account(key).methods.iter().find(|m| m.object["id"] == id) {
            return Ok(m.object.clone());
        }
        match card(id) {
            Some(_) => Ok(method_object(id, id, None)),
            None => Err(no_such("payment_method", id)),
        }
    }

    pub(super) fn attach_method(&mut self, key: &str, id: &str, req: &RecordedRequest) -> Answer {
        let customer = param(req, "customer").ok_or_else(|| super::missing("customer"))?.to_owned();
        if !self.account(key).customers.iter().any(|c| c["id"] == customer.as_str()) {
            return Err(no_such("customer", &customer));
        }
        if let Some(m) = self.account(key).methods.iter_mut().find(|m| m.object["id"] == id) {
            return match m.object["customer"].as_str() {
                Some(c) if c == customer => Ok(m.object.clone()),
                Some(_) => Err(invalid(
                    "payment_method_unexpected_state",
                    "The payment method you provided has already been attached to a customer.".into(),
                    None,
                )),
                None => Err(detached(id)),
            };
        }
        if card(id).is_none() {
            return Err(no_such("payment_method", id));
        }
        let new_id = self.next_id("pm_fake");
        let object = method_object(&new_id, id, Some(&customer));
        self.account(key).methods.push(Method { object: object.clone(), card: id.to_owned() });
        Ok(object)
    }

    pub(super) fn detach_method(&mut self, key: &str, id: &str) -> Answer {
        let Some(m) = self.account(key).methods.iter_mut().find(|m| m.object["id"] == id) else {
            return Err(no_such("payment_method", id));
        };
        if m.object["customer"].is_null() {
            return Err(invalid(
                "payment_method_unexpected_state",
                "The payment method you provided is not attached to a customer so detachment is impossible."
                    .into(),
                None,
            ));
        }
        m.object["customer"] = Value::Null;
        Ok(m.object.clone())
    }

    /// The test card a PaymentIntent's `payment_method` charges, checking it belongs to the
    /// `customer` given (as Stripe does) and has not been detached.
    pub(super) fn card_of(&mut self, key: &str, pm: &str, customer: Option<&str>) -> Result<String, Failure> {
        if let Some(m) = self.account(key).methods.iter().find(|m| m.object["id"] == pm) {
            let owner = m.object["customer"].as_str();
            return match (owner, customer) {
                (None, _) => Err(detached(pm)),
                (Some(o), Some(c)) if o != c => Err(invalid(
                    "payment_method_unexpected_state",
                    format!("The provided PaymentMethod belongs to a different Customer ({o})."),
                    Some("payment_method"),
                )),
                _ => Ok(m.card.clone()),
            };
        }
        if customer.is_some() && card(pm).is_some() {
            return Err(failure(
                400,
                "invalid_request_error",
                Some("payment_method_unexpected_state"),
                format!("The provided PaymentMethod {pm} is not attached to the customer."),
                Some("payment_method"),
            ));
        }
        Ok(pm.to_owned())
    }
}
