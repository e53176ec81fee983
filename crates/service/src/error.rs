//! Service-level errors: what went wrong in terms a caller can act on.

use azotte_domain::ValidationErrors;
use azotte_store::auth::AuthError;
use azotte_store::{Denied, StoreError};

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
    /// Credentials are missing, wrong, expired or revoked; `code` says which, as far as it is
    /// safe to say.
    #[error("authentication failed: {code}")]
    Unauthenticated { code: &'static str, message: &'static str },
    /// The principal may not do this.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// The request is malformed (a header, a parameter outside the body).
    #[error("{message}")]
    BadRequest { code: &'static str, message: &'static str },
    /// Too many attempts; try again after this many seconds.
    #[error("too many attempts")]
    Throttled { retry_after_secs: u64 },
    /// Encrypted data could not be opened: `credential_undecryptable` (a ciphertext moved to
    /// another row, altered, or naming an unknown tenant key), `tenant_key_undecryptable` (a
    /// wrapped tenant key altered or moved) or `master_key_missing` (a tenant key is wrapped
    /// under a master key that is not configured). Logged; answered as 500 with that code.
    #[error("{message}")]
    Undecryptable { code: &'static str, message: String },
    /// A PSP did not answer usably (timeout, outage, lost answer); nothing was changed here.
    /// Answered as 503 `psp_unavailable`.
    #[error("{message}")]
    PspUnavailable { message: String },
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
            StoreError::Unavailable(_) | StoreError::CommitUnknown(_) => ServiceError::Unavailable(e),
            other => ServiceError::Internal(Box::new(other)),
        }
    }
}

impl From<Denied> for ServiceError {
    fn from(d: Denied) -> Self {
        ServiceError::Forbidden { code: "permission_denied", message: format!("missing permission {}", d.0) }
    }
}

impl From<AuthError> for ServiceError {
    fn from(e: AuthError) -> Self {
        let forbidden = |code, message: &str| ServiceError::Forbidden { code, message: message.to_owned() };
        match e {
            AuthError::InvalidCredentials => ServiceError::unauthenticated(),
            AuthError::SessionRevoked => ServiceError::Unauthenticated {
                code: "session_revoked",
                message: "the session was revoked or has expired",
            },
            AuthError::ApiKeyRevoked => {
                ServiceError::Unauthenticated { code: "api_key_revoked", message: "the API key was revoked" }
            }
            AuthError::ApiKeyExpired => {
                ServiceError::Unauthenticated { code: "api_key_expired", message: "the API key has expired" }
            }
            AuthError::TenantNotFound => ServiceError::NotFound { resource: "tenant" },
            AuthError::TenantSuspended => forbidden("tenant_suspended", "the tenant is suspended"),
            AuthError::TenantMismatch => {
                forbidden("tenant_mismatch", "the credential belongs to another tenant than x-tn names")
            }
            AuthError::EnvironmentMismatch => forbidden(
                "environment_mismatch",
                "the API key belongs to another environment than x-env names",
            ),
            AuthError::NotAMember => forbidden("not_a_member", "the user is not a member of this tenant"),
            AuthError::Denied(p) => Denied(p).into(),
            AuthError::Store(s) => s.into(),
        }
    }
}

impl ServiceError {
    /// An internal error from anything.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ServiceError::Internal(Box::new(e))
    }

    /// The generic authentication failure.
    pub fn unauthenticated() -> Self {
        ServiceError::Unauthenticated {
            code: "unauthenticated",
            message: "missing, invalid or expired credentials",
        }
    }
}
