//! Application services: one function per use case, each inside one database transaction.
//!
//! The HTTP layer and the workers both call these; neither talks to the store directly for
//! anything that changes state.

pub mod auth;
mod error;
pub mod housekeeping;
pub mod tenants;

use azotte_domain::Clock;
use azotte_store::Db;

pub use error::ServiceError;

/// Result of a service call.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What every service needs: the database and the clock.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The database.
    pub db: Db,
    /// "Now", injectable for tests.
    pub clock: Clock,
}

impl Ctx {
    /// A context over a database with the system clock.
    pub fn new(db: Db, clock: Clock) -> Self {
        Self { db, clock }
    }
}
