//! Service-level errors: what went wrong in terms a caller can act on.

use azotte_domain::ValidationErrors;
use azotte_store::StoreError;

/// Errors of the application services.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Input failed validation; each field error names the field.
    #[error("validation failed")]
    Validation(#[from] ValidationErrors),
    /// The resource does not exist in the caller's scope (also for other tenants' ids).
    #[error("{resource} not found")]
    NotFound { resource: &'static str },
    /// The request conflicts with existing state, e.g. a duplicate key.
    #[error("{message}")]
    Conflict { code: &'static str, message: String, field: Option<&'static str> },
    /// Credentials are missing, wrong or expired.
    #[error("authentication failed")]
    Unauthenticated,
    /// The principal may not do this.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// The database is unreachable.
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    /// Anything else: a bug or an unexpected failure. Logged, answered as an opaque 500.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ServiceError::Unavailable(e),
            other => ServiceError::Internal(Box::new(other)),
        }
    }
}

impl ServiceError {
    /// An internal error from anything.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ServiceError::Internal(Box::new(e))
    }
}
