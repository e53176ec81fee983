//! `/v1/platform/tenants`: tenant administration by platform operators.

mod dto;
mod handlers;

pub use handlers::router;
