//! One module per resource.

pub mod api_keys;
pub mod auth;
pub mod catalog;
pub mod customers;
pub mod health;
pub mod invoices;
pub mod journal;
pub mod payments;
pub mod platform_tenants;
pub mod subscriptions;
pub mod tenant;
pub mod users;
