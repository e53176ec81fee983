//! End-to-end tests: the real server on a loopback port, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod auth;
mod catalog;
mod cli;
mod crash;
mod customers;
mod entitlement_cache;
mod health;
mod http_errors;
mod idempotency;
mod identity;
mod invoices;
mod journal;
mod jwt_attacks;
mod openapi;
mod payment_ops;
mod payments;
mod psp_accounts;
mod raw_card;
mod renewals;
mod replace;
mod route_walk;
mod subscriptions;
mod tamper;
mod tenants;
mod vault;
