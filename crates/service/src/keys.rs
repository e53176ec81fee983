//! The installation's secret keys and the JWT key ring.
//!
//! Every secret is derived from one root key (`secret_key` in the configuration), by label, so
//! the installation has one secret to keep: the password pepper, the API key hashing key and the
//! sealing key for secrets at rest (TOTP secrets, JWT private keys). Tenant data has its own,
//! rotatable hierarchy under the platform master key: see [`crate::vault`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use azotte_crypto::aead::{self, Key};
use azotte_crypto::jwt::{SigningKey, VerifyingKey};
use azotte_store::{sessions, Db};
use chrono::{DateTime, Utc};

use crate::{Result, ServiceError};

/// Keys derived from the root secret.
#[derive(Debug)]
pub struct Keys {
    /// Pepper mixed into every argon2id password hash.
    pub pepper: Key,
    /// Keyed hash of API key secrets.
    pub api_key_hash: Key,
    /// Seals secrets stored in the database.
    pub seal: Key,
    /// Keyed lookup hashes of customer emails and phones.
    pub customer_lookup: Key,
    /// Keyed fingerprints of requests sent with an `Idempotency-Key`.
    pub idempotency: Key,
    /// Root of the per-tenant Ed25519 seeds that sign fiscal documents (`local` provider).
    pub fiscal_signing: Key,
}

impl Keys {
    /// Derives the working keys from the root secret.
    pub fn from_root(root: &Key) -> Self {
        Self {
            pepper: root.derive("password-pepper"),
            api_key_hash: root.derive("api-key-hash"),
            seal: root.derive("seal-at-rest"),
            customer_lookup: root.derive("customer-lookup"),
            idempotency: root.derive("idempotency-fingerprint"),
            fiscal_signing: root.derive("fiscal-signing"),
        }
    }
}

#[derive(Default)]
struct Ring {
    signing: Option<SigningKey>,
    verifying: HashMap<String, (VerifyingKey, Option<DateTime<Utc>>)>,
}

/// JWT signing and verifying keys, cached from the database.
#[derive(Clone, Default)]
pub struct KeyRing(Arc<RwLock<Ring>>);

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing")
    }
}

const AAD: &[u8] = b"azotte:jwt-signing-key";

impl KeyRing {
    /// Loads the keys from the database, creating the first signing key if there is none.
    pub async fn load(&self, db: &Db, keys: &Keys, now: DateTime<Utc>) -> Result<()> {
        let mut stored = sessions::signing_keys(db).await?;
        if stored.is_empty() {
            rotate(db, keys, now).await?;
            stored = sessions::signing_keys(db).await?;
        }
        let mut ring = Ring::default();
        for k in stored {
            let public: [u8; 32] =
                k.public_key.as_slice().try_into().map_err(|_| corrupt("public key length"))?;
            let vk = VerifyingKey::from_bytes(k.kid.clone(), &public).map_err(|_| corrupt("public key"))?;
            ring.verifying.insert(k.kid.clone(), (vk, k.retired_at));
            if k.retired_at.is_none() && ring.signing.is_none() {
                let seed =
                    aead::open(&keys.seal, &k.private_key, AAD).map_err(|_| corrupt("sealed private key"))?;
                let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| corrupt("private key length"))?;
                ring.signing = Some(SigningKey::from_bytes(k.kid.clone(), &seed));
            }
        }
        if ring.signing.is_none() {
            return Err(corrupt("no live signing key"));
        }
        if let Ok(mut g) = self.0.write() {
            *g = ring;
        }
        Ok(())
    }

    /// The key new tokens are signed with.
    pub fn signing(&self) -> Option<SigningKey> {
        self.0.read().ok().and_then(|r| r.signing.clone())
    }

    /// A verifying key by kid. A retired key still verifies tokens issued before it retired,
    /// until they have all expired (`grace` after retirement).
    pub fn verifying(&self, kid: &str, now: DateTime<Utc>, grace: chrono::Duration) -> Option<VerifyingKey> {
        let r = self.0.read().ok()?;
        let (k, retired) = r.verifying.get(kid)?;
        match retired {
            Some(t) if *t + grace <= now => None,
            _ => Some(k.clone()),
        }
    }

    /// The published keys (JWKS): every key that may still verify a token.
    pub fn jwks(&self, now: DateTime<Utc>, grace: chrono::Duration) -> Vec<serde_json::Value> {
        let Ok(r) = self.0.read() else { return vec![] };
        let mut keys: Vec<_> = r
            .verifying
            .values()
            .filter(|(_, retired)| retired.is_none_or(|t| t + grace > now))
            .map(|(k, _)| k.to_jwk())
            .collect();
        keys.sort_by(|a, b| a["kid"].as_str().cmp(&b["kid"].as_str()));
        keys
    }
}

fn corrupt(what: &str) -> ServiceError {
    ServiceError::Internal(format!("JWT key ring: {what}").into())
}

/// Creates a new signing key and retires the previous one; returns the new kid.
pub async fn rotate(db: &Db, keys: &Keys, now: DateTime<Utc>) -> Result<String> {
    // Date for people, randomness for uniqueness (two rotations may share an instant).
    let kid = format!(
        "k{}-{}",
        now.format("%Y%m%d"),
        &azotte_crypto::tokens::sha256_hex(azotte_crypto::tokens::random_token("").expose())[..12]
    );
    let key = SigningKey::generate(kid.clone());
    let sealed = aead::seal(&keys.seal, key.to_bytes().expose(), AAD).map_err(ServiceError::internal)?;
    sessions::install_signing_key(db, &kid, &sealed, &key.verifying_key().to_bytes(), now).await?;
    Ok(kid)
}
