//! Azotte's storage layer: the only crate that speaks SQL.
//!
//! Queries are built once with sea-query and run on SQLite or PostgreSQL. Tenant data is reached
//! only through a [`TenantTx`], which is opened from a [`TenantScope`] that only the
//! authentication code in [`auth`] can build; on PostgreSQL the transaction also sets the tenant
//! for row-level security, so a query that forgets its filter sees nothing.

pub mod api_keys;
pub mod auth;
pub mod cache;
mod cache_listen;
pub mod catalog;
pub mod customers;
mod db;
mod error;
mod exec;
pub mod idempotency;
pub mod invitations;
pub mod invoices;
#[cfg(test)]
mod isolation_tests;
pub mod journal;
pub mod memberships;
pub mod payment_ops;
pub mod payments;
mod pg_conns;
pub mod psp_accounts;
pub mod renewal_jobs;
pub mod replacements;
pub mod roles;
mod scope;
pub mod seal;
pub mod sessions;
pub mod subscriptions;
pub mod tenant_keys;
pub mod tenants;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod users;

pub use cache::CacheOptions;
pub use db::{Backend, Db, DbOptions, Fence, PlatformTx, TenantTx};
pub use error::StoreError;
pub use scope::{Credential, Denied, PlatformScope, TenantScope};

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `CASE WHEN id_col = id(r) THEN value(r) … ELSE otherwise END` over `rows`: one column of a
/// set-based update that gives each row its own value.
pub(crate) fn case_by_id<T, C: sea_query::IntoColumnRef + Copy>(
    id_col: C,
    rows: &[T],
    id: impl Fn(&T) -> String,
    value: impl Fn(&T) -> sea_query::SimpleExpr,
    otherwise: sea_query::SimpleExpr,
) -> sea_query::SimpleExpr {
    rows.iter()
        .fold(sea_query::CaseStatement::new(), |c, r| {
            c.case(sea_query::Expr::col(id_col).eq(id(r)), value(r))
        })
        .finally(otherwise)
        .into()
}
