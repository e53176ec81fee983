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
    /// PostgreSQL: the connection failed while the transaction's `COMMIT` was on its way or its
    /// answer was — the transaction may have committed or not. A transaction begun with a
    /// fence ([`crate::Db::tenant_tx_fenced`]) can find out ([`crate::Db::after_fence`]).
    #[error("the database did not confirm the commit")]
    CommitUnknown(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether this is [`StoreError::CommitUnknown`].
    pub fn is_commit_unknown(&self) -> bool {
        matches!(self, StoreError::CommitUnknown(_))
    }

    /// [`StoreError::CommitUnknown`] for a commit known to be unconfirmed by other means
    /// (`what` says how).
    pub fn commit_unknown(what: &str) -> Self {
        StoreError::CommitUnknown(sqlx::Error::Io(std::io::Error::other(what.to_owned())))
    }

    /// A [`StoreError::CommitUnknown`] found out to have been a rollback: the database was
    /// unavailable, nothing was written ([`StoreError::Unavailable`]). Other errors unchanged.
    pub fn rolled_back(self) -> Self {
        match self {
            StoreError::CommitUnknown(e) => StoreError::Unavailable(e),
            other => other,
        }
    }
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
    ("invoices_number_key", "invoices.tenant_id, invoices.environment, invoices.storefront_id, invoices.number"),
    ("invoices_sequence_key", "invoices.tenant_id, invoices.environment, invoices.storefront_id, invoices.series, invoices.sequence"),
    ("credit_notes_number_key", "credit_notes.tenant_id, credit_notes.environment, credit_notes.storefront_id, credit_notes.number"),
    ("credit_notes_sequence_key", "credit_notes.tenant_id, credit_notes.environment, credit_notes.storefront_id, credit_notes.series, credit_notes.sequence"),
    ("renewal_jobs_period_key", "renewal_jobs.tenant_id, renewal_jobs.environment, renewal_jobs.subscription_id, renewal_jobs.period_end, renewal_jobs.attempt"),
    ("journal_seals_entry_key", "journal_seals.tenant_id, journal_seals.environment, journal_seals.entry_id"),
    // SQLite's entries table is keyed by log position; PostgreSQL's primary key is this.
    ("journal_entries_pkey", "journal_entries.tenant_id, journal_entries.environment, journal_entries.id"),
    // Partial unique indexes: SQLite reports them by their columns too (only an index on an
    // expression is reported by name).
    ("tenant_keys_active_key", "tenant_keys.tenant_id"),
    ("payment_methods_one_default", "payment_methods.tenant_id, payment_methods.environment, payment_methods.customer_id"),
    ("payments_request_key", "payments.tenant_id, payments.environment, payments.request_key"),
    ("subscriptions_live_family", "subscriptions.tenant_id, subscriptions.environment, subscriptions.customer_id, subscriptions.family"),
    ("subscription_replacements_open", "subscription_replacements.tenant_id, subscription_replacements.environment, subscription_replacements.subscription_id"),
    ("checkouts_offer_once", "checkouts.tenant_id, checkouts.environment, checkouts.offer_id, checkouts.price_id"),
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

    /// Every unique index SQLite reports by its columns — a `UNIQUE` constraint or a unique
    /// index, partial or not — is mapped to its name, so that code matching a constraint by name
    /// works on SQLite as on PostgreSQL.
    #[tokio::test]
    async fn every_sqlite_unique_index_on_columns_has_a_name() {
        use sqlx::{Connection, Row};
        let t = crate::testing::fresh_database(crate::Backend::Sqlite).await;
        crate::Db::migrate(&crate::DbOptions::new(t.url.clone())).await.unwrap();
        let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let (mut checked, mut unnamed) = (0, Vec::new());
        for table in tables {
            let indexes =
                sqlx::query(&format!("PRAGMA index_list('{table}')")).fetch_all(&mut c).await.unwrap();
            for ix in indexes {
                let (name, unique, origin): (String, i64, String) =
                    (ix.get("name"), ix.get("unique"), ix.get("origin"));
                if unique == 0 || origin == "pk" {
                    continue;
                }
                let cols =
                    sqlx::query(&format!("PRAGMA index_info('{name}')")).fetch_all(&mut c).await.unwrap();
                let cols: Vec<Option<String>> = cols.iter().map(|r| r.get("name")).collect();
                if cols.iter().any(Option::is_none) {
                    continue; // on an expression: reported by name
                }
                let reported =
                    cols.iter().flatten().map(|col| format!("{table}.{col}")).collect::<Vec<_>>().join(", ");
                checked += 1;
                let message = format!("UNIQUE constraint failed: {reported}");
                if sqlite_constraint(&message).is_none() {
                    unnamed.push(format!("{name}: {reported}"));
                }
            }
        }
        assert!(checked >= 15, "only {checked} unique indexes found");
        assert!(unnamed.is_empty(), "unique indexes SQLite reports without a name: {unnamed:#?}");
    }
}
