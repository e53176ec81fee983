//! Envelope encryption of tenant data: platform master key → tenant data key → (later)
//! customer key. See `docs/decisions/0004-envelope-encryption.md`.
//!
//! Master keys come from the configuration and never reach the database; each has an id derived
//! from the key itself (`mk_…`). A tenant's data key is random, stored wrapped
//! (XChaCha20-Poly1305) under a master key, with the tenant id and key id as associated data.
//! Data is sealed under the tenant key with the caller's associated data (for example the
//! tenant, storefront and PSP account ids), in a self-describing ciphertext that names the
//! tenant key it needs. `azotte keys rotate-master` re-wraps tenant keys; ciphertexts stay.

use std::collections::HashMap;
use std::sync::RwLock;

use azotte_crypto::aead::{self, Key};
use azotte_domain::id::TenantId;
use azotte_domain::{Principal, Secret};
use azotte_store::journal::{self as store_journal, RequestMeta};
use azotte_store::tenant_keys::{self, Rewrap, StoredTenantKey};
use azotte_store::TenantTx;
use sha2::{Digest, Sha256};

use crate::{Ctx, Result, ServiceError};

/// The first bytes of every ciphertext [`encrypt`] produces (format version 1).
const MAGIC: &[u8; 4] = b"azv1";
/// Unwrapped tenant keys kept per process before the cache is emptied.
const CACHE_LIMIT: usize = 100_000;

/// The id of a master key: `mk_` and 16 hex digits of SHA-256 over a key derived from it for
/// this purpose only, so configurations need no names and the id reveals nothing of the key.
pub fn master_key_id(key: &Key) -> String {
    let digest = Sha256::digest(key.derive("master-key-id").expose());
    format!("mk_{}", &hex::encode(digest)[..16])
}

/// One platform master key: its id and the key that wraps tenant keys (derived from it, so
/// the configured bytes are used for nothing else).
#[derive(Clone, Debug)]
pub struct MasterKey {
    id: String,
    wrap: Key,
}

impl MasterKey {
    /// A master key from its configured bytes.
    pub fn new(key: &Key) -> Self {
        Self { id: master_key_id(key), wrap: key.derive("tenant-key-wrap") }
    }

    /// Its id (`mk_…`).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The configured master keys: the active one wraps new and re-wrapped tenant keys; previous
/// ones only unwrap, until `azotte keys rotate-master` has moved everything to the active one.
#[derive(Clone, Debug)]
pub struct MasterKeys {
    active: MasterKey,
    previous: Vec<MasterKey>,
}

impl MasterKeys {
    /// The active key and the previous ones (duplicates and a repeat of the active key are
    /// dropped).
    pub fn new(active: &Key, previous: &[Key]) -> Self {
        let active = MasterKey::new(active);
        let mut prev: Vec<MasterKey> = Vec::new();
        for k in previous.iter().map(MasterKey::new) {
            if k.id != active.id && !prev.iter().any(|p| p.id == k.id) {
                prev.push(k);
            }
        }
        Self { active, previous: prev }
    }

    /// The id of the active master key.
    pub fn active_id(&self) -> &str {
        &self.active.id
    }

    /// Every configured id, the active one first.
    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(&self.active).chain(&self.previous).map(|k| k.id.as_str()).collect()
    }

    fn get(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.active).chain(&self.previous).find(|k| k.id == id)
    }
}

/// The master keys and this process's cache of unwrapped tenant keys; held in [`Ctx`].
#[derive(Debug)]
pub struct Vault {
    master: MasterKeys,
    /// (tenant, kid) → key. A kid's key never changes (re-wrapping changes only its wrapping),
    /// so entries never go stale; they are filled only from rows read in that tenant's scope.
    cache: RwLock<HashMap<(TenantId, String), Key>>,
    /// tenant → the kid of its active data key, as read from a committed row. A tenant's active
    /// key never changes once created (there is no tenant key rotation; a master key rotation
    /// re-wraps it under the same kid), so this saves reading it for every encryption. A tenant
    /// key rotation, if one is ever added, must clear it in every process.
    active: RwLock<HashMap<TenantId, String>>,
}

impl Vault {
    /// A vault with empty cache.
    pub fn new(master: MasterKeys) -> Self {
        Self { master, cache: RwLock::default(), active: RwLock::default() }
    }

    /// The configured master keys.
    pub fn master(&self) -> &MasterKeys {
        &self.master
    }

    fn cached(&self, tenant: TenantId, kid: &str) -> Option<Key> {
        self.cache.read().ok()?.get(&(tenant, kid.to_owned())).cloned()
    }

    /// The tenant's active data key, when this process knows it.
    pub(crate) fn active_key(&self, tenant: TenantId) -> Option<DataKey> {
        let kid = self.active.read().ok()?.get(&tenant).cloned()?;
        let key = self.cached(tenant, &kid)?;
        Some(DataKey { tenant_id: tenant, kid, key })
    }

    /// Whether this process knows the tenant's active data key exists (committed).
    pub(crate) fn knows_active(&self, tenant: TenantId) -> bool {
        self.active.read().is_ok_and(|a| a.contains_key(&tenant))
    }

    fn remember_active(&self, tenant: TenantId, kid: &str) {
        if let Ok(mut a) = self.active.write() {
            if a.len() >= CACHE_LIMIT {
                a.clear();
            }
            a.insert(tenant, kid.to_owned());
        }
    }

    fn remember(&self, tenant: TenantId, kid: &str, key: &Key) {
        if let Ok(mut c) = self.cache.write() {
            if c.len() >= CACHE_LIMIT {
                c.clear();
            }
            c.insert((tenant, kid.to_owned()), key.clone());
        }
    }
}

/// A tenant data key in the clear (its `Debug` is masked). Get one with [`tenant_key`].
#[derive(Clone, Debug)]
pub struct DataKey {
    tenant_id: TenantId,
    kid: String,
    key: Key,
}

impl DataKey {
    /// The key's id (`tk_…`), recorded in every ciphertext it seals.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The tenant it belongs to.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
}

fn undecryptable(code: &'static str, message: String) -> ServiceError {
    ServiceError::Undecryptable { code, message }
}

/// Associated data of a wrapped tenant key: a wrapped key copied to another tenant's row, or
/// to another kid, does not unwrap.
fn wrap_aad(tenant: &str, kid: &str) -> Vec<u8> {
    format!("azotte:tenant-key:v1\0{tenant}\0{kid}").into_bytes()
}

fn unwrap(ctx: &Ctx, tenant: TenantId, stored: &StoredTenantKey) -> Result<Key> {
    let Some(mk) = ctx.vault.master.get(&stored.master_kid) else {
        return Err(undecryptable(
            "master_key_missing",
            format!(
                "tenant key {} of tenant {tenant} is wrapped under master key {}, which is not configured \
                 (configured: {}); add it to previous_master_keys",
                stored.kid,
                stored.master_kid,
                ctx.vault.master.ids().join(", ")
            ),
        ));
    };
    let bytes = aead::open(&mk.wrap, &stored.wrapped_key, &wrap_aad(&tenant.to_string(), &stored.kid))
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            undecryptable(
                "tenant_key_undecryptable",
                format!(
                    "tenant key {} of tenant {tenant} does not unwrap under master key {}",
                    stored.kid, mk.id
                ),
            )
        })?;
    Ok(Key::from_bytes(bytes))
}

fn unwrap_cached(ctx: &Ctx, tenant: TenantId, stored: &StoredTenantKey) -> Result<DataKey> {
    let key = match ctx.vault.cached(tenant, &stored.kid) {
        Some(k) => k,
        None => {
            let k = unwrap(ctx, tenant, stored)?;
            ctx.vault.remember(tenant, &stored.kid, &k);
            k
        }
    };
    Ok(DataKey { tenant_id: tenant, kid: stored.kid.clone(), key })
}

/// The tenant's active data key, created (wrapped under the active master key) on first use
/// inside the caller's transaction. The creation is journaled by the caller's action (a
/// transaction with a write cannot commit without one); if that action is already recorded, a
/// `tenant_key.created` outcome is added. Concurrent first uses end with one key.
pub async fn tenant_key(ctx: &Ctx, tx: &mut TenantTx) -> Result<DataKey> {
    let tenant = tx.scope().tenant_id();
    if let Some(key) = ctx.vault.active_key(tenant) {
        return Ok(key);
    }
    // A row read before this transaction wrote anything is committed: its kid may be kept.
    let committed = !tx.has_written();
    let stored = match tenant_keys::active(tx).await? {
        Some(s) => {
            let key = unwrap_cached(ctx, tenant, &s)?;
            if committed {
                ctx.vault.remember_active(tenant, &s.kid);
            }
            return Ok(key);
        }
        None => {
            let kid = format!("tk_{}", hex::encode(rand::random::<[u8; 10]>()));
            let key = Key::generate();
            let mk = &ctx.vault.master.active;
            let wrapped = aead::seal(&mk.wrap, key.expose(), &wrap_aad(&tenant.to_string(), &kid))
                .map_err(ServiceError::internal)?;
            let (stored, created) =
                tenant_keys::insert_active(tx, &kid, &wrapped, &mk.id, ctx.clock.now()).await?;
            if created {
                ctx.vault.remember(tenant, &kid, &key);
                tracing::info!(tenant_id = %tenant, kid, master_kid = %mk.id, "tenant data key created");
            }
            stored
        }
    };
    unwrap_cached(ctx, tenant, &stored)
}

/// One of the tenant's data keys by kid (active or retired), for reading old ciphertexts.
/// Another tenant's kid is unknown here.
pub async fn tenant_key_by_kid(ctx: &Ctx, tx: &mut TenantTx, kid: &str) -> Result<DataKey> {
    let tenant = tx.scope().tenant_id();
    if let Some(key) = ctx.vault.cached(tenant, kid) {
        return Ok(DataKey { tenant_id: tenant, kid: kid.to_owned(), key });
    }
    let stored = tenant_keys::by_kid(tx, kid).await?.ok_or_else(|| {
        undecryptable(
            "credential_undecryptable",
            format!("the ciphertext names tenant key {kid}, which tenant {tenant} does not have"),
        )
    })?;
    unwrap_cached(ctx, tenant, &stored)
}

/// Associated data actually authenticated: the format, tenant and kid (so the header cannot be
/// edited), then the caller's.
fn data_aad(tenant: TenantId, kid: &str, aad: &[u8]) -> Vec<u8> {
    let mut full = format!("azotte:vault:v1\0{tenant}\0{kid}\0").into_bytes();
    full.extend_from_slice(aad);
    full
}

/// Seals `plaintext` under a tenant data key, bound to `aad` (the caller names the row, e.g.
/// tenant, storefront and PSP account ids, and the field). The result records the key's kid:
/// `azv1 || kid length (1 byte) || kid || XChaCha20-Poly1305 sealed data`.
pub fn encrypt(key: &DataKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let sealed = aead::seal(&key.key, plaintext, &data_aad(key.tenant_id, &key.kid, aad))
        .map_err(ServiceError::internal)?;
    let kid = key.kid.as_bytes();
    let kid_len = u8::try_from(kid.len()).map_err(ServiceError::internal)?;
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + kid.len() + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(kid_len);
    out.extend_from_slice(kid);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The tenant key id a ciphertext of [`encrypt`] names, and the sealed rest.
fn split(ciphertext: &[u8]) -> Result<(&str, &[u8])> {
    let bad = || undecryptable("credential_undecryptable", "the ciphertext is not in a known format".into());
    let rest = ciphertext.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
    let (&len, rest) = rest.split_first().ok_or_else(bad)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(bad());
    }
    let (kid, sealed) = rest.split_at(len);
    Ok((std::str::from_utf8(kid).map_err(|_| bad())?, sealed))
}

/// The tenant key id a ciphertext names.
pub fn ciphertext_kid(ciphertext: &[u8]) -> Result<&str> {
    split(ciphertext).map(|(kid, _)| kid)
}

/// Opens what [`encrypt`] sealed with `key` and the same `aad`. Any failure (another key,
/// another row's associated data, altered bytes) is `ServiceError::Undecryptable` with code
/// `credential_undecryptable`: report it, never treat it as an empty credential.
pub fn decrypt(key: &DataKey, ciphertext: &[u8], aad: &[u8]) -> Result<Secret<Vec<u8>>> {
    let (kid, sealed) = split(ciphertext)?;
    if kid != key.kid {
        return Err(undecryptable(
            "credential_undecryptable",
            format!("the ciphertext names tenant key {kid}, not {}", key.kid),
        ));
    }
    aead::open(&key.key, sealed, &data_aad(key.tenant_id, kid, aad)).map(Secret::new).map_err(|_| {
        undecryptable(
            "credential_undecryptable",
            format!(
                "a ciphertext under tenant key {kid} of tenant {} does not decrypt with its associated data \
                 (moved to another row, or altered)",
                key.tenant_id
            ),
        )
    })
}

/// Opens a ciphertext with whichever of the tenant's keys it names (looked up in the caller's
/// transaction, which may be read-only).
pub async fn open(ctx: &Ctx, tx: &mut TenantTx, ciphertext: &[u8], aad: &[u8]) -> Result<Secret<Vec<u8>>> {
    let kid = ciphertext_kid(ciphertext)?.to_owned();
    let key = tenant_key_by_kid(ctx, tx, &kid).await?;
    decrypt(&key, ciphertext, aad)
}

/// A tenant key that could not be re-wrapped.
#[derive(Debug, Clone)]
pub struct RewrapFailure {
    pub tenant_id: String,
    pub kid: String,
    pub master_kid: String,
    pub reason: String,
}

/// What a master-key rotation did.
#[derive(Debug, Clone)]
pub struct RotationReport {
    /// The master key everything is now wrapped under.
    pub active_master_kid: String,
    /// Keys moved to the active master key by this run.
    pub rewrapped: usize,
    /// Keys that were already under the active master key.
    pub already_current: usize,
    /// Keys left as they were (their master key is not configured, or they do not unwrap).
    pub failed: Vec<RewrapFailure>,
}

/// Re-wraps every tenant key that is not under the active master key: unwrap with the
/// previous key its `master_kid` names, wrap with the active one, each in its own transaction,
/// journaled in the platform journal (`tenant_key.rewrap` → `tenant_key.rewrapped`; failures
/// as `tenant_key.rewrap_failed` decisions), all under one correlation id. Ciphertexts under
/// tenant keys are not touched. Idempotent and restartable: a run after a complete one finds
/// nothing to do; a key changed meanwhile by a concurrent run is counted as current.
pub async fn rotate_master(ctx: &Ctx) -> Result<RotationReport> {
    store_journal::with_meta(RequestMeta::system(), rotate_master_inner(ctx)).await
}

async fn rotate_master_inner(ctx: &Ctx) -> Result<RotationReport> {
    let principal = Principal::system();
    let active = &ctx.vault.master.active;
    let mut report = RotationReport {
        active_master_kid: active.id.clone(),
        rewrapped: 0,
        already_current: 0,
        failed: Vec::new(),
    };
    for stored in tenant_keys::all(&ctx.db).await? {
        if stored.master_kid == active.id {
            report.already_current += 1;
            continue;
        }
        let tenant: TenantId = stored
            .tenant_id
            .parse()
            .map_err(|_| ServiceError::internal(azotte_store::StoreError::Corrupt("tenant id".into())))?;
        let key = match unwrap(ctx, tenant, &stored) {
            Ok(k) => k,
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(tenant_id = %tenant, kid = %stored.kid, master_kid = %stored.master_kid, %reason, "tenant key not re-wrapped");
                store_journal::record_security(
                    &ctx.db,
                    None,
                    ctx.clock.now(),
                    "tenant_key.rewrap_failed",
                    &principal,
                    Some(("tenant_key", &stored.kid)),
                    serde_json::json!({"tenant_id": stored.tenant_id, "kid": stored.kid,
                        "master_kid": stored.master_kid, "reason": reason}),
                )
                .await?;
                report.failed.push(RewrapFailure {
                    tenant_id: stored.tenant_id,
                    kid: stored.kid,
                    master_kid: stored.master_kid,
                    reason,
                });
                continue;
            }
        };
        let wrapped = aead::seal(&active.wrap, key.expose(), &wrap_aad(&stored.tenant_id, &stored.kid))
            .map_err(ServiceError::internal)?;
        let changed = tenant_keys::rewrap(
            &ctx.db,
            &principal,
            Rewrap {
                tenant_id: &stored.tenant_id,
                kid: &stored.kid,
                from_master_kid: &stored.master_kid,
                to_master_kid: &active.id,
                wrapped_key: &wrapped,
            },
            ctx.clock.now(),
        )
        .await?;
        if changed {
            report.rewrapped += 1;
            tracing::info!(tenant_id = %tenant, kid = %stored.kid, from = %stored.master_kid, to = %active.id, "tenant key re-wrapped");
        } else {
            report.already_current += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_ids_are_stable_and_distinct() {
        let a = Key::from_bytes([1; 32]);
        let id = master_key_id(&a);
        assert!(id.starts_with("mk_") && id.len() == 19, "{id}");
        assert_eq!(id, master_key_id(&Key::from_bytes([1; 32])));
        assert_ne!(id, master_key_id(&Key::from_bytes([2; 32])));
        // Not a plain hash of the key bytes.
        assert!(!hex::encode(Sha256::digest([1u8; 32])).starts_with(&id[3..]));
    }

    #[test]
    fn master_keys_drop_repeats() {
        let (a, b) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
        let m = MasterKeys::new(&a, &[b.clone(), a.clone(), b.clone()]);
        assert_eq!(m.ids(), vec![master_key_id(&a), master_key_id(&b)]);
        assert_eq!(m.active_id(), master_key_id(&a));
    }

    #[test]
    fn ciphertexts_name_their_key_and_bind_their_aad() {
        let key = DataKey { tenant_id: TenantId::new(), kid: "tk_0123".into(), key: Key::generate() };
        let ct = encrypt(&key, b"sk_live_secret", b"psp:1").unwrap();
        assert_eq!(ciphertext_kid(&ct).unwrap(), "tk_0123");
        assert_eq!(decrypt(&key, &ct, b"psp:1").unwrap().expose(), b"sk_live_secret");
        let code = |r: Result<Secret<Vec<u8>>>| match r {
            Err(ServiceError::Undecryptable { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(decrypt(&key, &ct, b"psp:2")), "credential_undecryptable");
        let other_tenant = DataKey { tenant_id: TenantId::new(), ..key.clone() };
        assert_eq!(code(decrypt(&other_tenant, &ct, b"psp:1")), "credential_undecryptable");
        let mut edited = ct.clone();
        edited[6] ^= 1; // a letter of the kid
        assert_eq!(code(decrypt(&key, &edited, b"psp:1")), "credential_undecryptable");
        assert_eq!(code(decrypt(&key, b"azv", b"psp:1")), "credential_undecryptable");
        assert_eq!(code(decrypt(&key, &ct[..ct.len() - 1], b"psp:1")), "credential_undecryptable");
    }
}
