//! Per-process caches of the hottest reads: verified API keys (with their tenant and resolved
//! permissions), customers' grant states, and the catalog rows a checkout's job re-reads
//! (storefronts, bundles with their entitlements, prices, price versions, a tenant
//! environment's entitlements). See docs/decisions/0011-read-cache.md.
//!
//! An entry is served while it is younger than `max_age` and no change to the rows it was read
//! from has been reported since. Changes are reported by the database itself, so every writer is
//! covered without touching its code: on PostgreSQL by triggers that `pg_notify` at commit and a
//! LISTEN connection per process ([`crate::cache_listen`]); on SQLite by the update hook of the
//! one writer connection (decision 0010), per table. A write transaction of this process returns
//! from its commit only after its changes have been applied here (read-your-writes).
//!
//! A load races with changes: it takes a [`Ticket`] (the change counter) before it reads, and its
//! result is stored only if no change was applied in between; applying a change bumps the counter
//! before evicting, and storing checks the counter under the shard's lock.
//!
//! An API key, or a customer's grants, missed by many requests at once is read once: the first
//! to miss leads a [`Flight`], the others wait for it to end and then look in the cache again,
//! reading themselves only if the leader stored nothing (see
//! [`crate::auth::authenticate_api_key`] and [`crate::subscriptions::grants_of_customer`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use azotte_domain::id::TenantId;
use azotte_domain::permission::PermissionSet;
use azotte_domain::tenant::Environment;
use lru::LruCache;

use crate::api_keys::{ApiKey, KeyHashes};
use crate::subscriptions::GrantState;
use crate::tenants::Tenant;

/// How the caches behave.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// The longest an entry is served; zero disables caching.
    pub max_age: Duration,
    /// Entries per cache (least recently used ones make room).
    pub capacity: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(2), capacity: 20_000 }
    }
}

/// A change to rows some cached entries were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Anything may have changed (a lost listener, a timed-out acknowledgement).
    All,
    /// Some API key, role or tenant changed; which one is not known (SQLite).
    Keys,
    /// Some customer, grant, subscription or storefront changed; which one is not known (SQLite).
    Grants,
    /// Some catalog row (bundle, its entitlements, price, price version, entitlement) changed;
    /// which tenant's is not known (SQLite).
    Catalogs,
    /// A catalog row of one tenant environment changed.
    Catalog { tenant: String, environment: String },
    /// The tenant itself, one of its roles or storefronts: everything cached for it.
    Tenant(String),
    /// One API key, by its public key id.
    ApiKey(String),
    /// One customer's grants or subscriptions.
    Customer { tenant: String, environment: String, customer: String },
}

impl Change {
    /// Parses a notification payload of the PostgreSQL triggers (migrations 0022, 0036):
    /// `t|tenant`, `k|key_id`, `c|tenant|environment|customer`, `g|tenant|environment`.
    pub(crate) fn parse(payload: &str) -> Option<Change> {
        let mut parts = payload.split('|');
        let change = match parts.next()? {
            "t" => Change::Tenant(parts.next()?.to_owned()),
            "k" => Change::ApiKey(parts.next()?.to_owned()),
            "c" => Change::Customer {
                tenant: parts.next()?.to_owned(),
                environment: parts.next()?.to_owned(),
                customer: parts.next()?.to_owned(),
            },
            "g" => {
                Change::Catalog { tenant: parts.next()?.to_owned(), environment: parts.next()?.to_owned() }
            }
            _ => return None,
        };
        parts.next().is_none().then_some(change)
    }

    /// The change a write to `table` on SQLite implies, if any. Inserts of customers,
    /// subscriptions, tenants and keys change no cached answer: only existing customers and
    /// verified keys are cached, and a subscription grants nothing without grant rows. Nor do
    /// inserts of roles: a key may only be given an existing role, and a role in use cannot be
    /// deleted, so a new role is nobody's; should a key still name a role that had no row (a
    /// deletion racing the key's creation), its cached entry lacks the new role's permissions
    /// for at most the max age — it denies, never grants, what it should not. Any write to a
    /// catalog table drops the cached catalog (a new entitlement changes a tenant's list); an
    /// update of a storefront drops grants and catalog alike (rare: everything).
    pub(crate) fn of_sqlite_write(table: &str, insert: bool) -> Option<Change> {
        match (table, insert) {
            ("storefronts", false) => Some(Change::All),
            ("bundles" | "bundle_entitlements" | "prices" | "price_versions" | "entitlements", _) => {
                Some(Change::Catalogs)
            }
            ("entitlement_grants", _) | ("customers" | "subscriptions", false) => Some(Change::Grants),
            ("roles" | "tenants" | "api_keys" | "api_key_directory", false) => Some(Change::Keys),
            _ => None,
        }
    }
}

/// What authenticating an API key reads from the database, kept to check the next
/// presentation of the same key against (the secret is verified every time).
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub tenant: Tenant,
    pub key: ApiKey,
    pub hashes: KeyHashes,
    /// The key's role's permissions and its own, resolved.
    pub permissions: PermissionSet,
}

/// One request's part in a read (an API key, a customer's grants) that several requests missed
/// at once.
pub(crate) enum Flight<'a, K: Hash + Eq> {
    /// This request reads; the others wait until the lead is dropped.
    Lead(FlightLead<'a, K>),
    /// Another request is reading it.
    Wait(FlightWait),
}

impl<'a, K: Hash + Eq> Flight<'a, K> {
    /// Takes part in a read: returns the lead to hold while reading, or waits for the read under
    /// way to end and returns `None` (also for no flight at all); either way the caller then
    /// looks in the cache again and reads only if it is still missing.
    pub(crate) async fn join(flight: Option<Self>) -> Option<FlightLead<'a, K>> {
        match flight? {
            Flight::Lead(lead) => Some(lead),
            Flight::Wait(w) => {
                w.finished().await;
                None
            }
        }
    }
}

/// The reads in flight, by cache key, each led by one request: dropping the sender (with its
/// [`FlightLead`]) wakes the waiters.
struct Flights<K>(Mutex<HashMap<K, tokio::sync::watch::Sender<()>>>);

impl<K: Hash + Eq + Clone> Flights<K> {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    /// Leads the read of `k`, or waits for the one under way.
    fn begin(&self, k: K) -> Flight<'_, K> {
        let mut flights = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match flights.get(&k) {
            Some(leader) => Flight::Wait(FlightWait(leader.subscribe())),
            None => {
                flights.insert(k.clone(), tokio::sync::watch::channel(()).0);
                Flight::Lead(FlightLead { flights: self, key: k })
            }
        }
    }
}

/// Held by a request waiting for another's read.
pub(crate) struct FlightWait(tokio::sync::watch::Receiver<()>);

impl FlightWait {
    /// Until the read is over, whatever its outcome: the leader stored the key, failed, was
    /// overtaken by a change, or its request was dropped.
    pub(crate) async fn finished(mut self) {
        // Nothing is ever sent: this returns when the leader's sender is dropped.
        let _ = self.0.changed().await;
    }
}

/// Held by the request doing a read; dropping it, however the read ended, lets the waiting
/// requests look in the cache again.
pub(crate) struct FlightLead<'a, K: Hash + Eq> {
    flights: &'a Flights<K>,
    key: K,
}

impl<K: Hash + Eq> Drop for FlightLead<'_, K> {
    fn drop(&mut self) {
        self.flights.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// The change counter read before a load: the load may be stored only if it is unchanged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

const SHARDS: usize = 16;

/// A bounded map in shards, each entry stamped with when it was loaded.
struct Shards<K, V> {
    shards: Vec<Mutex<LruCache<K, (Instant, V)>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone, V: Clone> Shards<K, V> {
    fn new(capacity: usize) -> Self {
        let per = NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(LruCache::new(per))).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, k: &K) -> MutexGuard<'_, LruCache<K, (Instant, V)>> {
        let i = (self.hasher.hash_one(k) as usize) % SHARDS;
        // A panic while holding a shard leaves a map that is still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, k: &K, max_age: Duration) -> Option<V> {
        let mut s = self.shard(k);
        match s.get(k) {
            Some((at, v)) if at.elapsed() < max_age => Some(v.clone()),
            Some(_) => {
                s.pop(k);
                None
            }
            None => None,
        }
    }

    fn remove(&self, k: &K) {
        self.shard(k).pop(k);
    }

    fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<K> = s.iter().filter(|(k, (_, v))| !keep(k, v)).map(|(k, _)| k.clone()).collect();
            for k in gone {
                s.pop(&k);
            }
        }
    }

    fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// (tenant reference as presented in `x-tn`, key id).
type KeyKey = (String, String);
/// (tenant, environment, customer).
pub(crate) type GrantsKey = (TenantId, Environment, String);

/// A cached catalog read of one tenant environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum CatalogItem {
    Storefront(String),
    /// With its entitlements.
    Bundle(String),
    Price(String),
    /// Every version of one price.
    Versions(String),
    /// All of the environment's entitlements.
    Entitlements,
    /// A storefront's active prices, their versions and their bundles.
    Offered(String),
}

/// (tenant, environment, what).
pub(crate) type CatalogKey = (TenantId, Environment, CatalogItem);

/// What a [`CatalogItem`] read found (only rows that exist are cached).
#[derive(Debug, Clone)]
pub(crate) enum CatalogEntry {
    Storefront(Arc<crate::catalog::Storefront>),
    Bundle(Arc<crate::catalog::Bundle>),
    Price(Arc<crate::catalog::Price>),
    Versions(Arc<Vec<crate::catalog::PriceVersion>>),
    Entitlements(Arc<Vec<crate::catalog::Entitlement>>),
    Offered(Arc<crate::catalog::Offered>),
}

/// The caches of one [`crate::Db`] (one process, in production).
pub struct ReadCache {
    options: CacheOptions,
    /// False while changes may go unreported (PostgreSQL's listener not connected): nothing is
    /// served or stored then.
    live: AtomicBool,
    changes: AtomicU64,
    keys: Shards<KeyKey, Arc<ApiKeyRecord>>,
    /// The keys being read now, each by one request.
    key_flights: Flights<KeyKey>,
    /// How many times an API key was read from the database (tests count them).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) api_key_loads: AtomicU64,
    grants: Shards<GrantsKey, Arc<Vec<GrantState>>>,
    /// The customers whose grants are being read now, each by one request.
    grant_flights: Flights<GrantsKey>,
    /// How many times a customer's grants were read from the database (tests count them).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) grant_loads: AtomicU64,
    catalog: Shards<CatalogKey, CatalogEntry>,
    /// The change counter of the catalog alone: the frequent changes of customers' grants and
    /// of keys do not turn away catalog loads in flight.
    catalog_changes: AtomicU64,
    /// How many times a catalog item was read from the database for the cache (tests count them).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) catalog_loads: AtomicU64,
    /// SQLite: the changes made by the transaction holding the writer connection, reported by
    /// its update hook; applied once that transaction has committed.
    pub(crate) sqlite_pending: Mutex<Vec<Change>>,
    /// PostgreSQL: this process's commit acknowledgements awaited from the listener, by number.
    acks: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    next_ack: AtomicU64,
    /// Tells this process's acknowledgements apart from other processes' on the channel.
    pub(crate) instance: String,
    /// Dropped with the cache: ends the listener task.
    pub(crate) _stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").field("options", &self.options).field("live", &self.is_live()).finish()
    }
}

impl ReadCache {
    pub(crate) fn new(options: CacheOptions, live: bool) -> Self {
        let capacity = options.capacity.max(1);
        Self {
            options,
            live: AtomicBool::new(live),
            changes: AtomicU64::new(0),
            keys: Shards::new(capacity),
            key_flights: Flights::new(),
            #[cfg(any(test, feature = "testing"))]
            api_key_loads: AtomicU64::new(0),
            grants: Shards::new(capacity),
            grant_flights: Flights::new(),
            #[cfg(any(test, feature = "testing"))]
            grant_loads: AtomicU64::new(0),
            catalog: Shards::new(capacity),
            catalog_changes: AtomicU64::new(0),
            #[cfg(any(test, feature = "testing"))]
            catalog_loads: AtomicU64::new(0),
            sqlite_pending: Mutex::new(Vec::new()),
            acks: Mutex::new(HashMap::new()),
            next_ack: AtomicU64::new(1),
            instance: format!("{:016x}", rand::random::<u64>()),
            _stop: Mutex::new(None),
        }
    }

    /// Whether caching is configured at all.
    pub fn enabled(&self) -> bool {
        !self.options.max_age.is_zero()
    }

    /// Whether entries are served now.
    pub fn is_live(&self) -> bool {
        self.enabled() && self.live.load(Ordering::SeqCst)
    }

    /// Marks the change feed as working (entries served) or not (nothing served); either way
    /// everything cached so far is dropped, since changes may have gone unreported.
    pub(crate) fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.apply(&Change::All);
        if !live {
            // Nobody will acknowledge these: their writers stop waiting.
            self.acks.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The ticket for a load, or `None` when nothing may be stored.
    pub(crate) fn ticket(&self) -> Option<Ticket> {
        self.is_live().then(|| Ticket(self.changes.load(Ordering::SeqCst)))
    }

    fn admits(&self, t: Ticket) -> bool {
        self.is_live() && self.changes.load(Ordering::SeqCst) == t.0
    }

    pub(crate) fn api_key(&self, tenant_ref: &str, key_id: &str) -> Option<Arc<ApiKeyRecord>> {
        if !self.is_live() {
            return None;
        }
        self.keys.get(&(tenant_ref.to_owned(), key_id.to_owned()), self.options.max_age)
    }

    pub(crate) fn store_api_key(&self, t: Ticket, tenant_ref: &str, record: Arc<ApiKeyRecord>) {
        let k = (tenant_ref.to_owned(), record.key.key_id.clone());
        let mut s = self.keys.shard(&k);
        if self.admits(t) {
            s.put(k, (Instant::now(), record));
        }
    }

    /// A read of an API key about to start: the caller leads it, or waits for the one under way.
    /// `None` while nothing may be stored (nobody would find the leader's result).
    pub(crate) fn api_key_flight(&self, tenant_ref: &str, key_id: &str) -> Option<Flight<'_, KeyKey>> {
        self.is_live().then(|| self.key_flights.begin((tenant_ref.to_owned(), key_id.to_owned())))
    }

    /// A read of a customer's grants about to start, as [`ReadCache::api_key_flight`].
    pub(crate) fn grants_flight(&self, k: &GrantsKey) -> Option<Flight<'_, GrantsKey>> {
        self.is_live().then(|| self.grant_flights.begin(k.clone()))
    }

    pub(crate) fn grants(&self, k: &GrantsKey) -> Option<Arc<Vec<GrantState>>> {
        if !self.is_live() {
            return None;
        }
        self.grants.get(k, self.options.max_age)
    }

    pub(crate) fn store_grants(&self, t: Ticket, k: GrantsKey, grants: Arc<Vec<GrantState>>) {
        let mut s = self.grants.shard(&k);
        if self.admits(t) {
            s.put(k, (Instant::now(), grants));
        }
    }

    pub(crate) fn catalog(&self, k: &CatalogKey) -> Option<CatalogEntry> {
        if !self.is_live() {
            return None;
        }
        self.catalog.get(k, self.options.max_age)
    }

    /// The ticket for a catalog load ([`ReadCache::ticket`], on the catalog's own counter).
    pub(crate) fn catalog_ticket(&self) -> Option<Ticket> {
        self.is_live().then(|| Ticket(self.catalog_changes.load(Ordering::SeqCst)))
    }

    pub(crate) fn store_catalog(&self, t: Ticket, k: CatalogKey, entry: CatalogEntry) {
        let mut s = self.catalog.shard(&k);
        if self.is_live() && self.catalog_changes.load(Ordering::SeqCst) == t.0 {
            s.put(k, (Instant::now(), entry));
        }
    }

    /// Drops what a change makes stale. The counter moves first, so a load that read before
    /// the change cannot store its result after the eviction.
    pub fn apply(&self, change: &Change) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if matches!(change, Change::All | Change::Catalogs | Change::Catalog { .. } | Change::Tenant(_)) {
            self.catalog_changes.fetch_add(1, Ordering::SeqCst);
        }
        match change {
            Change::All => {
                self.keys.clear();
                self.grants.clear();
                self.catalog.clear();
            }
            Change::Keys => self.keys.clear(),
            Change::Grants => self.grants.clear(),
            Change::Catalogs => self.catalog.clear(),
            Change::Catalog { tenant, environment } => self
                .catalog
                .retain(|(t, e, _), _| t.to_string() != *tenant || e.as_str() != environment.as_str()),
            Change::Tenant(t) => {
                self.keys.retain(|_, r| r.tenant.id.to_string() != *t);
                self.grants.retain(|(tenant, _, _), _| tenant.to_string() != *t);
                self.catalog.retain(|(tenant, _, _), _| tenant.to_string() != *t);
            }
            Change::ApiKey(key_id) => self.keys.retain(|(_, k), _| k != key_id),
            Change::Customer { tenant, environment, customer } => {
                let (Ok(t), Ok(e)) = (tenant.parse::<TenantId>(), environment.parse::<Environment>()) else {
                    self.grants.clear();
                    return;
                };
                self.grants.remove(&(t, e, customer.clone()));
            }
        }
    }

    /// A new acknowledgement to await (PostgreSQL).
    pub(crate) fn register_ack(&self) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let n = self.next_ack.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).insert(n, tx);
        (n, rx)
    }

    /// The sender of acknowledgement `n`, if still awaited.
    pub(crate) fn take_ack(&self, n: u64) -> Option<tokio::sync::oneshot::Sender<()>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).remove(&n)
    }

    /// SQLite's update hook: a row of `table` changed in the open write transaction.
    pub(crate) fn sqlite_changed(&self, table: &str, insert: bool) {
        if let Some(c) = Change::of_sqlite_write(table, insert) {
            let mut p = self.sqlite_pending.lock().unwrap_or_else(|p| p.into_inner());
            if !p.contains(&c) {
                p.push(c);
            }
        }
    }

    /// SQLite: the changes of the write transaction about to commit (or roll back).
    pub(crate) fn take_sqlite_pending(&self) -> Vec<Change> {
        std::mem::take(&mut *self.sqlite_pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(any(test, feature = "testing"))]
impl crate::Db {
    /// How many times this process read an API key from the database to authenticate it (the
    /// misses not served by another request's read).
    pub fn api_key_loads(&self) -> u64 {
        self.cache.api_key_loads.load(Ordering::SeqCst)
    }

    /// How many times this process read a customer's grants from the database (the misses not
    /// served by another request's read).
    pub fn grant_loads(&self) -> u64 {
        self.cache.grant_loads.load(Ordering::SeqCst)
    }

    /// How many times this process read a catalog item from the database for its cache.
    pub fn catalog_loads(&self) -> u64 {
        self.cache.catalog_loads.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use azotte_domain::catalog::DunningPolicy;

    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(Change::parse("t|ten_1"), Some(Change::Tenant("ten_1".into())));
        assert_eq!(Change::parse("k|abc"), Some(Change::ApiKey("abc".into())));
        assert_eq!(
            Change::parse("c|ten_1|production|cus_1"),
            Some(Change::Customer {
                tenant: "ten_1".into(),
                environment: "production".into(),
                customer: "cus_1".into()
            })
        );
        assert_eq!(Change::parse("c|ten_1|production"), None);
        assert_eq!(
            Change::parse("g|ten_1|test"),
            Some(Change::Catalog { tenant: "ten_1".into(), environment: "test".into() })
        );
        assert_eq!(Change::parse("g|ten_1"), None);
        assert_eq!(Change::parse("k|a|b"), None);
        assert_eq!(Change::parse("x|a"), None);
    }

    #[test]
    fn sqlite_tables() {
        assert_eq!(Change::of_sqlite_write("subscriptions", false), Some(Change::Grants));
        assert_eq!(Change::of_sqlite_write("subscriptions", true), None);
        assert_eq!(Change::of_sqlite_write("entitlement_grants", true), Some(Change::Grants));
        assert_eq!(Change::of_sqlite_write("api_keys", false), Some(Change::Keys));
        assert_eq!(Change::of_sqlite_write("roles", true), None);
        assert_eq!(Change::of_sqlite_write("roles", false), Some(Change::Keys));
        assert_eq!(Change::of_sqlite_write("journal_entries", false), None);
        assert_eq!(Change::of_sqlite_write("storefronts", false), Some(Change::All));
        assert_eq!(Change::of_sqlite_write("storefronts", true), None);
        for t in ["bundles", "bundle_entitlements", "prices", "price_versions", "entitlements"] {
            assert_eq!(Change::of_sqlite_write(t, true), Some(Change::Catalogs), "{t}");
            assert_eq!(Change::of_sqlite_write(t, false), Some(Change::Catalogs), "{t}");
        }
    }

    #[test]
    fn a_load_overtaken_by_a_change_is_not_stored() {
        let c = ReadCache::new(CacheOptions::default(), true);
        let k: GrantsKey = (TenantId::new(), Environment::Production, "cus_1".into());
        let t = c.ticket().unwrap();
        c.apply(&Change::Grants);
        c.store_grants(t, k.clone(), Arc::new(vec![]));
        assert!(c.grants(&k).is_none());
        let t = c.ticket().unwrap();
        c.store_grants(t, k.clone(), Arc::new(vec![]));
        assert!(c.grants(&k).is_some());
        c.apply(&Change::Customer {
            tenant: k.0.to_string(),
            environment: "production".into(),
            customer: "cus_1".into(),
        });
        assert!(c.grants(&k).is_none());
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let c = ReadCache::new(CacheOptions { max_age: Duration::from_millis(30), capacity: 32 }, true);
        let tenant = TenantId::new();
        for i in 0..1000 {
            let t = c.ticket().unwrap();
            c.store_grants(t, (tenant, Environment::Production, format!("cus_{i}")), Arc::new(vec![]));
        }
        let held: usize = c.grants.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 32 + SHARDS, "{held}");
        let k = (tenant, Environment::Production, "cus_999".to_owned());
        assert!(c.grants(&k).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.grants(&k).is_none());
    }

    /// One request per key leads its read; the others wait until the lead is dropped however
    /// the read ended (stored, failed, cancelled), then a new read may be led.
    #[tokio::test]
    async fn one_read_per_key_at_a_time() {
        let c = ReadCache::new(CacheOptions::default(), true);
        let lead = c.api_key_flight("acme", "k1");
        assert!(matches!(lead, Some(Flight::Lead(_))));
        let Some(Flight::Wait(waiter)) = c.api_key_flight("acme", "k1") else { panic!("not waiting") };
        assert!(matches!(c.api_key_flight("acme", "k2"), Some(Flight::Lead(_))), "another key");
        assert!(matches!(c.api_key_flight("other", "k1"), Some(Flight::Lead(_))), "another x-tn");
        let waiting = tokio::spawn(waiter.finished());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waits while the read is under way");
        drop(lead);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert!(matches!(c.api_key_flight("acme", "k1"), Some(Flight::Lead(_))), "not left behind");
        c.set_live(false);
        assert!(c.api_key_flight("acme", "k1").is_none(), "nothing to share while not live");
    }

    /// A customer's grant state as cached: the storefront's dunning policy already decoded.
    fn granted(dunning: DunningPolicy) -> Arc<Vec<GrantState>> {
        let now = chrono::Utc::now();
        Arc::new(vec![GrantState {
            entitlement_key: "hd".into(),
            kind: "boolean".into(),
            quantity: None,
            unit: None,
            subscription_id: "sub_1".into(),
            storefront_id: "sfr_1".into(),
            status: "past_due".into(),
            period_start: now,
            period_end: now,
            periods: 1,
            anchor: now,
            trial_end: None,
            ends_at: None,
            canceled_immediately: false,
            paused_at: None,
            grace_extended_until: None,
            dunning,
        }])
    }

    /// Hits hand out the state loaded, typed policy included (nothing is decoded on a hit); a
    /// storefront change evicts it (PostgreSQL names the tenant, SQLite the grants' tables), and
    /// the next load's policy is the one served.
    #[test]
    fn grant_hits_serve_the_decoded_dunning_policy_until_a_change() {
        let c = ReadCache::new(CacheOptions::default(), true);
        let tenant = TenantId::new();
        let k: GrantsKey = (tenant, Environment::Production, "cus_1".into());
        let loaded = granted(DunningPolicy::default());
        c.store_grants(c.ticket().unwrap(), k.clone(), loaded.clone());
        for _ in 0..2 {
            let hit = c.grants(&k).unwrap();
            assert!(Arc::ptr_eq(&hit, &loaded), "the loaded value itself");
            assert_eq!(hit[0].dunning, DunningPolicy::default());
        }
        let strict = DunningPolicy { access_during_grace: false, ..DunningPolicy::default() };
        for change in [Change::Tenant(tenant.to_string()), Change::Grants] {
            c.apply(&change);
            assert!(c.grants(&k).is_none(), "{change:?}");
            c.store_grants(c.ticket().unwrap(), k.clone(), granted(strict.clone()));
            assert_eq!(c.grants(&k).unwrap()[0].dunning, strict);
        }
    }

    #[test]
    fn not_live_serves_nothing() {
        let c = ReadCache::new(CacheOptions::default(), true);
        let k: GrantsKey = (TenantId::new(), Environment::Production, "cus_1".into());
        c.store_grants(c.ticket().unwrap(), k.clone(), Arc::new(vec![]));
        c.set_live(false);
        assert!(c.ticket().is_none());
        assert!(c.grants(&k).is_none());
        c.set_live(true);
        assert!(c.grants(&k).is_none(), "dropped when the feed was lost");
        let off = ReadCache::new(CacheOptions { max_age: Duration::ZERO, capacity: 10 }, true);
        assert!(off.ticket().is_none());
    }
}
