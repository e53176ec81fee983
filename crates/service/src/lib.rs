//! Application services: one function per use case, each inside one database transaction.
//!
//! The HTTP layer and the workers both call these; neither talks to the store directly for
//! anything that changes state.

pub mod api_keys;
pub mod auth;
pub mod catalog;
pub mod customers;
mod error;
mod gather;
pub mod housekeeping;
pub mod idempotency;
pub mod invoices;
pub mod journal;
pub mod keys;
pub mod mail;
pub mod mfa;
pub mod payment_methods;
pub mod payments;
pub mod psp_accounts;
pub mod seal;
pub mod security;
pub mod subscriptions;
pub mod tenants;
mod unconfirmed;
pub mod users;
pub mod vault;

use std::sync::Arc;

use azotte_crypto::aead::Key;
use azotte_domain::Clock;
use azotte_store::Db;

pub use error::ServiceError;
use keys::{KeyRing, Keys};
use mail::Mailer;

/// Result of a service call.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What every service needs.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The database.
    pub db: Db,
    /// "Now", injectable for tests.
    pub clock: Clock,
    /// Keys derived from the installation's root secret.
    pub keys: Arc<Keys>,
    /// JWT signing and verifying keys.
    pub ring: KeyRing,
    /// Where messages to people go.
    pub mailer: Arc<dyn Mailer>,
    /// `iss` of issued tokens.
    pub issuer: String,
    /// Folds repeated security events.
    pub flood: Arc<security::FloodGuard>,
    /// The journal checkpoint signing key, loaded on first use.
    pub journal_key: Arc<tokio::sync::OnceCell<(String, [u8; 32])>>,
    /// Platform master keys and unwrapped tenant data keys (envelope encryption).
    pub vault: Arc<vault::Vault>,
    /// PSP connectors of this process.
    pub psp: payments::Connectors,
    /// Fiscalization providers of this process.
    pub fiscal: invoices::fiscal::Providers,
    /// When invoices get their number (configuration `invoice_numbering`).
    pub numbering: invoices::Numbering,
    /// When this process last swept for conversion charges that paid for nothing (unix seconds
    /// by [`Ctx::clock`]; `i64::MIN`: never).
    pub(crate) conversion_sweep: Arc<std::sync::atomic::AtomicI64>,
    /// Checkouts waiting to be settled together, per tenant environment.
    pub(crate) checkout_settles: Arc<subscriptions::checkout::Settles>,
    /// Checkout requests waiting to be read together, per tenant environment.
    pub(crate) checkout_reads: Arc<subscriptions::checkout::Reads>,
    /// Checkouts waiting to be written together, per tenant environment.
    pub(crate) checkout_writes: Arc<subscriptions::checkout::Writes>,
    /// New customers waiting to be created together, per tenant environment.
    pub(crate) customer_creates: Arc<customers::Creates>,
    /// Offers waiting to be made together, per tenant environment.
    pub(crate) offer_makes: Arc<subscriptions::offers::Makes>,
    /// Idempotency claims and responses waiting to be written together, per tenant environment.
    pub(crate) idempotency_records: Arc<idempotency::Records>,
}

impl Ctx {
    /// A context; call [`Ctx::init`] before serving.
    pub fn new(
        db: Db,
        clock: Clock,
        root: &Key,
        master: vault::MasterKeys,
        mailer: Arc<dyn Mailer>,
        issuer: String,
    ) -> Self {
        Self {
            db,
            clock,
            keys: Arc::new(Keys::from_root(root)),
            ring: KeyRing::default(),
            mailer,
            issuer,
            flood: Default::default(),
            journal_key: Default::default(),
            vault: Arc::new(vault::Vault::new(master)),
            psp: Default::default(),
            fiscal: Default::default(),
            numbering: Default::default(),
            conversion_sweep: Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
            checkout_settles: Default::default(),
            checkout_reads: Default::default(),
            checkout_writes: Default::default(),
            customer_creates: Default::default(),
            offer_makes: Default::default(),
            idempotency_records: Default::default(),
        }
    }

    /// Loads (or creates) the JWT keys.
    pub async fn init(&self) -> Result<()> {
        self.ring.load(&self.db, &self.keys, self.clock.now()).await
    }
}
