//! Compact JWS access tokens signed with EdDSA (Ed25519), and nothing else.
//!
//! The algorithm is pinned: a token whose header names any other `alg` is refused before a key
//! is even looked up, which rules out `alg: none` and the HS256-with-the-public-key confusion.

use azotte_domain::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Tokens longer than this are refused unparsed, bounding the work an attacker can cause.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The only `alg` we sign with or accept.
const ALG: &str = "EdDSA";

/// An Ed25519 signing key with the `kid` that names it in token headers and the JWKS.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate(kid: impl Into<String>) -> Self {
        Self { kid: kid.into(), key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    /// A key from its 32-byte seed (as returned by [`SigningKey::to_bytes`]).
    pub fn from_bytes(kid: impl Into<String>, seed: &[u8; 32]) -> Self {
        Self { kid: kid.into(), key: ed25519_dalek::SigningKey::from_bytes(seed) }
    }

    /// The 32-byte seed, for storing the key (encrypted).
    pub fn to_bytes(&self) -> Secret<[u8; 32]> {
        Secret::new(self.key.to_bytes())
    }

    /// The key id written in the `kid` header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The matching public key, with the same `kid`.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey { kid: self.kid.clone(), key: self.key.verifying_key() }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// An Ed25519 public key with its `kid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    kid: String,
    key: ed25519_dalek::VerifyingKey,
}

/// The bytes given are not a usable Ed25519 public key.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error("not a valid Ed25519 public key")]
pub struct InvalidVerifyingKey;

impl VerifyingKey {
    /// A public key from its 32-byte compressed form; refuses non-points and small-order points.
    pub fn from_bytes(kid: impl Into<String>, bytes: &[u8; 32]) -> Result<Self, InvalidVerifyingKey> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| InvalidVerifyingKey)?;
        // A small-order key "verifies" forged signatures under lax rules; verify_strict would
        // refuse every token anyway, so fail early where the mistake is made.
        if key.is_weak() {
            return Err(InvalidVerifyingKey);
        }
        Ok(Self { kid: kid.into(), key })
    }

    /// The 32-byte compressed public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key id this key answers to.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a JWK (RFC 8037 `OKP` / `Ed25519`), ready for a JWKS document.
    pub fn to_jwk(&self) -> Value {
        let mut jwk = Map::new();
        for (name, value) in [
            ("kty", "OKP".to_owned()),
            ("crv", "Ed25519".to_owned()),
            ("x", URL_SAFE_NO_PAD.encode(self.key.as_bytes())),
            ("kid", self.kid.clone()),
            ("alg", ALG.to_owned()),
            ("use", "sig".to_owned()),
        ] {
            jwk.insert(name.to_owned(), Value::String(value));
        }
        Value::Object(jwk)
    }
}

/// The claims Azotte puts in an access token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject (the principal id).
    pub sub: String,
    /// Tenant id, absent for platform-level principals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// Roles granted.
    pub roles: Vec<String>,
    /// Authentication methods used (`pwd`, `otp`, …).
    pub amr: Vec<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// Session family id, shared by all tokens refreshed from one login.
    pub sid: String,
}

impl Claims {
    /// The claims as a JSON object, built without a fallible serializer.
    fn to_json(&self) -> Value {
        // Destructured without `..` so that adding a field to `Claims` fails to compile here
        // instead of silently leaving it out of tokens.
        let Claims { iss, aud, sub, tid, roles, amr, iat, nbf, exp, jti, sid } = self;
        let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        let mut m = Map::new();
        m.insert("iss".into(), Value::String(iss.clone()));
        m.insert("aud".into(), Value::String(aud.clone()));
        m.insert("sub".into(), Value::String(sub.clone()));
        if let Some(tid) = tid {
            m.insert("tid".into(), Value::String(tid.clone()));
        }
        m.insert("roles".into(), strings(roles));
        m.insert("amr".into(), strings(amr));
        m.insert("iat".into(), Value::from(*iat));
        m.insert("nbf".into(), Value::from(*nbf));
        m.insert("exp".into(), Value::from(*exp));
        m.insert("jti".into(), Value::String(jti.clone()));
        m.insert("sid".into(), Value::String(sid.clone()));
        Value::Object(m)
    }
}

/// Signs `claims` into a compact JWS with header `{"alg":"EdDSA","typ":"JWT","kid":…}`.
pub fn encode(key: &SigningKey, claims: &Claims) -> String {
    // `Value`'s Display is infallible JSON and escapes the kid properly.
    let header = format!(r#"{{"alg":"{ALG}","typ":"JWT","kid":{}}}"#, Value::String(key.kid.clone()));
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_json().to_string()));
    let signature = key.key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    token
}

/// What a token must satisfy besides a good signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Current time, Unix seconds.
    pub now: i64,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    pub leeway_secs: i64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum JwtError {
    /// Not a well-formed compact JWS with our header and claims.
    #[error("malformed token")]
    Malformed,
    /// The header names an algorithm other than EdDSA.
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// No key is known for the header's `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is not the expected audience.
    #[error("wrong audience")]
    WrongAudience,
}

/// The header fields we look at. Derived, so a repeated `alg`/`kid`/`typ`/`crit` is an error
/// rather than "last one wins" (a classic parser-differential trick).
#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "present")]
    alg: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    kid: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    typ: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<Value>,
}

/// `Some` for any value that is present, `null` included, so that `"typ": null` is not
/// mistaken for an absent `typ`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Verifies `token` with the key that `keys` returns for its `kid`, then checks its claims.
///
/// The signature is checked (strictly) before the payload is parsed.
pub fn decode(
    token: &str,
    keys: impl Fn(&str) -> Option<VerifyingKey>,
    v: &Validation,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let (signing_input, signature_b64) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
    if payload_b64.contains('.') {
        return Err(JwtError::Malformed);
    }

    // All three segments must be strict base64url before anything else is looked at; the
    // payload's bytes are only parsed once the signature over them has been verified.
    let (header_json, payload_json, signature) = (b64(header_b64)?, b64(payload_b64)?, b64(signature_b64)?);
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| JwtError::Malformed)?;
    if header.alg != Some(Value::String(ALG.to_owned())) {
        return Err(JwtError::UnsupportedAlgorithm);
    }
    // `crit` names extensions we would have to understand; we understand none.
    if header.crit.is_some() {
        return Err(JwtError::Malformed);
    }
    match header.typ {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" => {}
        Some(_) => return Err(JwtError::Malformed),
    }
    let Some(Value::String(kid)) = header.kid else {
        return Err(JwtError::Malformed);
    };
    let key = keys(&kid).ok_or(JwtError::UnknownKey)?;

    let signature: [u8; 64] = signature.try_into().map_err(|_| JwtError::Malformed)?;
    // verify_strict refuses small-order keys and R points, and non-canonical S: no malleability.
    key.key
        .verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| JwtError::BadSignature)?;

    let claims: Claims = serde_json::from_slice(&payload_json).map_err(|_| JwtError::Malformed)?;
    if claims.exp <= v.now.saturating_sub(v.leeway_secs) {
        return Err(JwtError::Expired);
    }
    if claims.nbf > v.now.saturating_add(v.leeway_secs) {
        return Err(JwtError::NotYetValid);
    }
    if claims.iss != v.issuer {
        return Err(JwtError::WrongIssuer);
    }
    if claims.aud != v.audience {
        return Err(JwtError::WrongAudience);
    }
    Ok(claims)
}

/// Decodes one segment: URL-safe alphabet, no padding, canonical trailing bits.
fn b64(segment: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| JwtError::Malformed)
}

#[cfg(test)]
mod tests;
