//! API keys and opaque random tokens.
//!
//! An API key reads `az_{test|live}_{key_id}_{secret}`. The `key_id` (10 random bytes, 16
//! base32 characters) is public and finds the stored row; the secret (32 random bytes, 52
//! characters) is only ever stored as a keyed hash, a [`HashedApiKey`]. Plaintext and hashed
//! keys are distinct types so that a plaintext key cannot be stored by mistake.

use azotte_domain::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::aead;
use crate::base32::{self, Case};

/// Random bytes behind an API key's `key_id`.
const KEY_ID_BYTES: usize = 10;
/// Characters in an API key's `key_id`.
pub const KEY_ID_LEN: usize = 16;
/// Random bytes behind an API key's secret and behind [`random_token`].
const SECRET_BYTES: usize = 32;
/// Characters in an API key's secret part.
pub const SECRET_LEN: usize = 52;

/// Lower-case base32 of 32 fresh random bytes.
fn random_secret() -> String {
    base32::encode_lower(&crate::random_bytes::<SECRET_BYTES>())
}

/// `prefix` followed by 32 random bytes in lower-case unpadded base32 (52 characters).
pub fn random_token(prefix: &str) -> Secret<String> {
    Secret::new(format!("{prefix}{}", random_secret()))
}

/// Lower-case hex SHA-256, for looking up high-entropy opaque tokens (refresh tokens, invite
/// links) without storing them; a slow or keyed hash adds nothing at 256 bits of entropy.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A full API key as shown to its owner once, at creation.
#[derive(Debug)]
pub struct PlaintextApiKey(Secret<String>);

impl PlaintextApiKey {
    /// The key text; call sites that reveal it are easy to grep for.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// The keyed hash of an API key: the only form that is stored.
///
/// No `PartialEq`: comparisons go through [`verify_api_key`], which is constant-time.
#[derive(Clone, Debug)]
pub struct HashedApiKey(String);

impl HashedApiKey {
    /// The hash as lower-case hex, for storing.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a hash read back from storage.
    pub fn from_stored(hash: String) -> Self {
        Self(hash)
    }
}

/// The public parts of a well-formed API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedApiKey {
    /// `true` for `az_live_…`, `false` for `az_test_…`.
    pub live: bool,
    /// The public lookup id.
    pub key_id: String,
}

/// A new API key: its public `key_id` and the full plaintext key.
pub fn generate_api_key(live: bool) -> (String, PlaintextApiKey) {
    let key_id = base32::encode_lower(&crate::random_bytes::<KEY_ID_BYTES>());
    let mode = if live { "live" } else { "test" };
    let key = format!("az_{mode}_{key_id}_{}", random_secret());
    (key_id, PlaintextApiKey(Secret::new(key)))
}

/// Parses an API key strictly (prefix, mode, exact lengths, canonical lower-case base32), or
/// `None`. Cheap, so malformed keys are refused before any lookup.
pub fn parse_api_key(s: &str) -> Option<ParsedApiKey> {
    let rest = s.strip_prefix("az_")?;
    let (live, rest) = if let Some(rest) = rest.strip_prefix("live_") {
        (true, rest)
    } else {
        (false, rest.strip_prefix("test_")?)
    };
    let (key_id, secret) = rest.split_once('_')?;
    if key_id.len() != KEY_ID_LEN || secret.len() != SECRET_LEN {
        return None;
    }
    // Decoding also rejects a secret whose last character carries stray bits, so exactly one
    // spelling of each key is accepted.
    base32::decode(key_id, Case::Lower)?;
    base32::decode(secret, Case::Lower)?;
    Some(ParsedApiKey { live, key_id: key_id.to_owned() })
}

/// HMAC-SHA256 of the whole key under `hash_key` (use a key derived for this purpose alone,
/// e.g. `master.derive("api-key-hash")`), as lower-case hex.
pub fn hash_api_key(hash_key: &aead::Key, key: &str) -> HashedApiKey {
    HashedApiKey(hex::encode(crate::mac::hmac_sha256(hash_key.expose(), &[key.as_bytes()])))
}

/// Whether `key` hashes to `stored`, compared in constant time.
pub fn verify_api_key(hash_key: &aead::Key, key: &str, stored: &HashedApiKey) -> bool {
    ct_eq_str(hash_api_key(hash_key, key).as_str(), stored.as_str())
}

/// Constant-time equality; a length difference is revealed, which is public here (hex of a
/// fixed-size hash).
fn ct_eq_str(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_lower_base32(s: &str) -> bool {
        s.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    }

    #[test]
    fn random_token_shape() {
        let t = random_token("rt_");
        let body = t.expose().strip_prefix("rt_").unwrap();
        assert_eq!(body.len(), SECRET_LEN);
        assert!(is_lower_base32(body));
        assert_ne!(t.expose(), random_token("rt_").expose());
        assert_eq!(format!("{t:?}"), "[redacted]");
    }

    #[test]
    fn api_key_format() {
        for live in [false, true] {
            let (key_id, key) = generate_api_key(live);
            let mode = if live { "live" } else { "test" };
            let text = key.expose();
            assert_eq!(text.len(), 3 + 5 + KEY_ID_LEN + 1 + SECRET_LEN);
            assert!(text.starts_with(&format!("az_{mode}_{key_id}_")), "{text}");
            assert_eq!(key_id.len(), KEY_ID_LEN);
            assert!(is_lower_base32(&key_id));
            assert!(is_lower_base32(&text[text.len() - SECRET_LEN..]));
            assert_eq!(parse_api_key(text), Some(ParsedApiKey { live, key_id }));
            assert_eq!(format!("{key:?}"), "PlaintextApiKey([redacted])");
        }
    }

    #[test]
    fn parse_is_strict() {
        let (_, key) = generate_api_key(true);
        let good = key.expose();
        let (head, secret) = good.rsplit_once('_').unwrap();
        let key_id = &head["az_live_".len()..];
        let bad = [
            good.replacen("az_", "ax_", 1),
            good.replacen("az_", "AZ_", 1),
            good.replacen("az_", "", 1),
            good.replacen("live", "prod", 1),
            good.replacen("live", "LIVE", 1),
            good.replacen("live_", "", 1),
            format!("az_live_{}_{secret}", &key_id[1..]),
            format!("az_live_{key_id}a_{secret}"),
            format!("{head}_{}", &secret[1..]),
            format!("{good}a"),
            format!("{good}_"),
            format!(" {good}"),
            format!("az_live_{}_{secret}", key_id.to_uppercase()),
            format!("{head}_{}", secret.to_uppercase()),
            format!("az_live_{}1_{secret}", &key_id[1..]),
            format!("{head}_{}=", &secret[1..]),
            format!("az_live_{key_id}-{secret}"),
            format!("az_live_{key_id}__{}", &secret[1..]),
            format!("{head}_{}é", &secret[..SECRET_LEN - 2]),
            String::new(),
        ];
        for s in &bad {
            assert_eq!(parse_api_key(s), None, "{s}");
        }
        // The 52nd character holds one bit of the key and four zero bits: "a" and "q" are the
        // only canonical endings, anything else is a second spelling.
        let stem = &secret[..SECRET_LEN - 1];
        assert!(parse_api_key(&format!("{head}_{stem}a")).is_some());
        assert!(parse_api_key(&format!("{head}_{stem}q")).is_some());
        assert_eq!(parse_api_key(&format!("{head}_{stem}b")), None);
    }

    #[test]
    fn hash_and_verify() {
        let hash_key = aead::Key::generate().derive("api-key-hash");
        let (_, key) = generate_api_key(false);
        let stored = hash_api_key(&hash_key, key.expose());
        assert_eq!(stored.as_str().len(), 64);
        assert!(!stored.as_str().contains(key.expose()));
        assert_eq!(hash_api_key(&hash_key, key.expose()).as_str(), stored.as_str(), "deterministic");
        let reloaded = HashedApiKey::from_stored(stored.as_str().to_owned());
        assert!(verify_api_key(&hash_key, key.expose(), &reloaded));

        let (_, other) = generate_api_key(false);
        assert!(!verify_api_key(&hash_key, other.expose(), &reloaded));
        assert!(!verify_api_key(&aead::Key::generate(), key.expose(), &reloaded), "another hash key");
        let mut last_char_off = stored.as_str().to_owned();
        let flipped = if last_char_off.ends_with('0') { "1" } else { "0" };
        last_char_off.replace_range(63.., flipped);
        assert!(!verify_api_key(&hash_key, key.expose(), &HashedApiKey::from_stored(last_char_off)));
        assert!(!verify_api_key(&hash_key, key.expose(), &HashedApiKey::from_stored(String::new())));
        let truncated = HashedApiKey::from_stored(stored.as_str()[..63].to_owned());
        assert!(!verify_api_key(&hash_key, key.expose(), &truncated));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq_str("", ""));
        assert!(ct_eq_str("abc", "abc"));
        assert!(!ct_eq_str("abc", "abd"));
        assert!(!ct_eq_str("abc", "ab"));
        assert!(!ct_eq_str("abc", "abcd"));
        // verify_api_key goes through ct_eq_str: an upper-case copy of a stored hash, which a
        // naive case-insensitive compare would accept, is refused.
        let hash_key = aead::Key::from_bytes([1; 32]);
        let stored = hash_api_key(&hash_key, "k");
        let upper = HashedApiKey::from_stored(stored.as_str().to_uppercase());
        assert!(!verify_api_key(&hash_key, "k", &upper));
    }

    #[test]
    fn sha256_hex_vector() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

/// A keyed lookup hash (HMAC-SHA256, lower-case hex) of `parts` joined by NUL bytes: lets a
/// value (a normalized email, a phone number) be found and kept unique without storing it.
/// Use a key derived for this purpose alone.
pub fn lookup_hash(key: &aead::Key, parts: &[&str]) -> String {
    let mut joined: Vec<&[u8]> = Vec::with_capacity(parts.len() * 2);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            joined.push(b"\0");
        }
        joined.push(p.as_bytes());
    }
    hex::encode(crate::mac::hmac_sha256(key.expose(), &joined))
}

#[cfg(test)]
mod lookup_tests {
    use super::*;

    #[test]
    fn lookup_hashes_depend_on_key_and_every_part() {
        let k = aead::Key::from_bytes([1; 32]);
        let h = lookup_hash(&k, &["ten", "development", "email", "a@b.c"]);
        assert_eq!(h.len(), 64);
        assert_eq!(h, lookup_hash(&k, &["ten", "development", "email", "a@b.c"]));
        assert_ne!(h, lookup_hash(&k, &["ten", "production", "email", "a@b.c"]));
        assert_ne!(h, lookup_hash(&k, &["ten", "development", "emai", "la@b.c"]));
        assert_ne!(
            h,
            lookup_hash(&aead::Key::from_bytes([2; 32]), &["ten", "development", "email", "a@b.c"])
        );
    }
}
