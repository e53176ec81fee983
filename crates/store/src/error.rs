//! Storage errors, with constraint violations named so callers can map them to conflicts.

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or a connection could not be had in time.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A unique constraint was violated; `constraint` is its name (the same on both backends).
    #[error("unique constraint `{constraint}` violated")]
    UniqueViolation { constraint: String },
    /// A foreign key constraint was violated.
    #[error("foreign key constraint violated")]
    ForeignKeyViolation(#[source] sqlx::Error),
    /// PostgreSQL row-level security refused a row outside the transaction's tenant.
    #[error("row refused by the tenant isolation policy")]
    IsolationViolation(#[source] sqlx::Error),
    /// A row holds a value the domain cannot accept; someone wrote it behind our back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A transaction changed data without recording its action in the journal (a bug).
    #[error("a mutation was about to commit without its journal entry")]
    Unjournaled,
    /// The database URL names no supported backend.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// Migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

/// Unique constraints by name, with the table and columns SQLite reports for them
/// ("UNIQUE constraint failed: tenants.slug"), so both backends give the same name.
const UNIQUE_CONSTRAINTS: &[(&str, &str)] = &[
    ("tenants_slug_key", "tenants.slug"),
    ("users_email_key", "users.email"),
    ("roles_tenant_name_key", "roles.tenant_id, roles.name"),
    ("api_keys_key_id_key", "api_keys.key_id"),
    ("invitations_token_hash_key", "invitations.token_hash"),
    ("entitlements_key_key", "entitlements.tenant_id, entitlements.environment, entitlements.key"),
    ("bundles_key_key", "bundles.tenant_id, bundles.environment, bundles.key"),
    ("customers_external_id_key", "customers.tenant_id, customers.environment, customers.external_id"),
    ("customers_email_key", "customers.tenant_id, customers.environment, customers.email_hash"),
    ("customers_phone_key", "customers.tenant_id, customers.environment, customers.phone_hash"),
    ("subscriptions_checkout_key", "subscriptions.tenant_id, subscriptions.environment, subscriptions.checkout_id"),
    ("credit_notes_refund_key", "credit_notes.tenant_id, credit_notes.environment, credit_notes.refund_id"),
    ("price_versions_version_key", "price_versions.tenant_id, price_versions.environment, price_versions.price_id, price_versions.version"),
];

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            sqlx::Error::Database(db) => {
                // SQLSTATE 42501 with this message is PostgreSQL's RLS refusal.
                if db.code().as_deref() == Some("42501") && db.message().contains("row-level security") {
                    return StoreError::IsolationViolation(e);
                }
                if db.is_unique_violation() {
                    let name = db.constraint().map(str::to_owned).or_else(|| sqlite_constraint(db.message()));
                    return StoreError::UniqueViolation {
                        constraint: name.unwrap_or_else(|| "unknown".into()),
                    };
                }
                if db.is_foreign_key_violation() {
                    return StoreError::ForeignKeyViolation(e);
                }
                StoreError::Database(e)
            }
            _ => StoreError::Database(e),
        }
    }
}

fn sqlite_constraint(message: &str) -> Option<String> {
    let cols = message.strip_prefix("UNIQUE constraint failed: ")?;
    // Expression and partial indexes are reported by name.
    if let Some(name) = cols.strip_prefix("index '").and_then(|c| c.strip_suffix('\'')) {
        return Some(name.to_owned());
    }
    UNIQUE_CONSTRAINTS.iter().find(|(_, c)| *c == cols).map(|(n, _)| (*n).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_unique_messages_map_to_constraint_names() {
        assert_eq!(
            sqlite_constraint("UNIQUE constraint failed: tenants.slug").as_deref(),
            Some("tenants_slug_key")
        );
        assert_eq!(sqlite_constraint("UNIQUE constraint failed: other.x"), None);
    }
}
