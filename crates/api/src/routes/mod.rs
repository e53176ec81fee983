//! One module per resource.

pub mod auth;
pub mod health;
pub mod platform_tenants;
pub mod tenant;
