//! Azotte's domain layer: types and rules, no I/O.
//!
//! Everything here is pure: ids, tenants and environments, principals, secrets, the clock
//! abstraction and field-level validation errors. Values are parsed at the edge into these
//! types, which cannot hold invalid data.

pub mod card_number;
pub mod catalog;
pub mod clock;
pub mod customer;
pub mod email;
pub mod id;
pub mod idempotency;
pub mod invoice;
pub mod iso;
pub mod pagination;
pub mod payment;
pub mod permission;
pub mod principal;
pub mod proration;
pub mod secret;
pub mod subscription;
pub mod tenant;
pub mod validation;

pub use clock::Clock;
pub use id::{Id, IdParseError};
pub use principal::{Principal, PrincipalKind};
pub use secret::Secret;
pub use validation::{FieldError, ValidationErrors};
