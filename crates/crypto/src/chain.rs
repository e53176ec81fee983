//! The journal's tamper evidence: canonical JSON, entry hashes, the hash chain and signed
//! checkpoints. Everything a third party needs to verify an export offline is here.
//!
//! - `entry_hash = SHA-256(framed fields)` ([`entry_hash`]); the body inside is canonical JSON
//!   text, written once when the entry is recorded: object keys sorted (by UTF-8 bytes), no
//!   insignificant whitespace, serde_json's escaping. Verification never re-serializes JSON.
//! - `chain(0) = 32 zero bytes`; `chain(n) = SHA-256("azotte-journal-chain/v1" || seq as 8-byte
//!   big-endian || chain(n-1) || entry_hash(n))`.
//! - A checkpoint signs, with Ed25519, the UTF-8 bytes of
//!   `azotte-journal-checkpoint/v1\n{tenant}\n{environment}\n{seq}\n{chain hex}\n{signed_at}`.

use ed25519_dalek::{Signer, Verifier};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON text of a value: sorted keys, no whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    canonical_into(&mut out, v);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the canonical JSON of `v` to `out` (no allocation per value; verification reuses
/// one buffer for every entry).
pub fn canonical_into(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut fields: Vec<(&String, &Value)> = m.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, x)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                canonical_into(out, x);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_into(out, x);
            }
            out.push(b']');
        }
        Value::String(s) => write_str(out, s),
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            use std::io::Write;
            let _ = write!(out, "{n}");
        }
    }
}

/// A JSON string with serde_json's escaping: `"` `\` and control characters only.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// One journal entry exactly as it is hashed and exported. `body` is the entry's JSON body as
/// stored: canonical JSON text (see [`canonical_json`]) written once, hashed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryRecord {
    pub id: String,
    pub tenant_id: String,
    pub environment: String,
    pub kind: String,
    #[serde(rename = "type")]
    pub type_: String,
    /// RFC 3339 UTC with microseconds, e.g. `2026-11-25T21:00:00.123456Z`.
    pub occurred_at: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub principal_kind: String,
    pub principal_id: String,
    pub principal_roles: Vec<String>,
    pub mfa: bool,
    pub source: String,
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub body: String,
}

/// The domain prefix of an entry hash.
pub const ENTRY_HASH_PREFIX: &[u8] = b"azotte-entry/v2";

/// Where framed entry bytes go: straight into the hasher, or into a buffer for inspection.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Sha256 {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// LEB128: 7 bits per byte, least significant first, high bit set on every byte but the last.
#[inline(always)]
fn varint(out: &mut impl Sink, mut n: u64) {
    let mut b = [0u8; 10];
    let mut i = 0;
    while n >= 0x80 {
        b[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    b[i] = n as u8;
    out.put(&b[..=i]);
}

#[inline(always)]
fn frame_str(out: &mut impl Sink, s: &str) {
    varint(out, s.len() as u64 + 1);
    out.put(s.as_bytes());
}

#[inline(always)]
fn frame_opt(out: &mut impl Sink, s: Option<&str>) {
    match s {
        Some(s) => frame_str(out, s),
        None => out.put(&[0]),
    }
}

/// An entry's fields as they are hashed, borrowed: from an [`EntryRecord`]
/// ([`EntryRecord::fields`]), or from a writer's own values, which need not be copied into a
/// record to be hashed ([`fields_hash`]).
#[derive(Debug, Clone, Copy)]
pub struct EntryFields<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub environment: &'a str,
    pub kind: &'a str,
    pub type_: &'a str,
    /// RFC 3339 UTC with microseconds, as in [`EntryRecord::occurred_at`].
    pub occurred_at: &'a str,
    pub correlation_id: &'a str,
    pub causation_id: Option<&'a str>,
    pub principal_kind: &'a str,
    pub principal_id: &'a str,
    pub principal_roles: &'a [String],
    pub mfa: bool,
    pub source: &'a str,
    pub request_id: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub body: &'a str,
}

impl EntryRecord {
    /// The record's fields, borrowed.
    #[inline(always)]
    pub fn fields(&self) -> EntryFields<'_> {
        EntryFields {
            id: &self.id,
            tenant_id: &self.tenant_id,
            environment: &self.environment,
            kind: &self.kind,
            type_: &self.type_,
            occurred_at: &self.occurred_at,
            correlation_id: &self.correlation_id,
            causation_id: self.causation_id.as_deref(),
            principal_kind: &self.principal_kind,
            principal_id: &self.principal_id,
            principal_roles: &self.principal_roles,
            mfa: self.mfa,
            source: &self.source,
            request_id: self.request_id.as_deref(),
            client_ip: self.client_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            resource_type: self.resource_type.as_deref(),
            resource_id: self.resource_id.as_deref(),
            body: &self.body,
        }
    }
}

/// Writes an entry's framed fields: the prefix, then every field in declaration order — a
/// string as LEB128(byte length + 1) followed by its UTF-8 bytes; an absent value as `0x00`; the
/// roles as LEB128(count) then each role as a string; `mfa` as one byte `0x00`/`0x01`.
#[inline(always)]
fn frame(out: &mut impl Sink, e: &EntryFields<'_>) {
    out.put(ENTRY_HASH_PREFIX);
    for s in [e.id, e.tenant_id, e.environment, e.kind, e.type_, e.occurred_at, e.correlation_id] {
        frame_str(out, s);
    }
    frame_opt(out, e.causation_id);
    frame_str(out, e.principal_kind);
    frame_str(out, e.principal_id);
    varint(out, e.principal_roles.len() as u64);
    for r in e.principal_roles {
        frame_str(out, r);
    }
    out.put(&[u8::from(e.mfa)]);
    frame_str(out, e.source);
    for s in [e.request_id, e.client_ip, e.user_agent, e.resource_type, e.resource_id] {
        frame_opt(out, s);
    }
    frame_str(out, e.body);
}

/// The bytes an entry hash covers (see [`entry_hash`]).
pub fn entry_bytes(e: &EntryRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    frame(&mut out, &e.fields());
    out
}

/// `SHA-256(entry_bytes(e))`, computed without building the bytes.
pub fn entry_hash(e: &EntryRecord) -> [u8; 32] {
    fields_hash(&e.fields())
}

/// [`entry_hash`] of borrowed fields.
pub fn fields_hash(e: &EntryFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    frame(&mut h, e);
    h.finalize().into()
}

const CHAIN_PREFIX: &[u8; 23] = b"azotte-journal-chain/v1";

/// The chain value after appending `entry_hash` at position `seq` (1-based). The 95 input bytes
/// fit two SHA-256 blocks, compressed directly (same result as hashing them the usual way).
pub fn chain_next(prev: &[u8; 32], seq: i64, entry_hash: &[u8; 32]) -> [u8; 32] {
    const IV: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut blocks =
        [sha2::digest::generic_array::GenericArray::<u8, sha2::digest::consts::U64>::default(); 2];
    let (b0, b1) = blocks.split_at_mut(1);
    let (b0, b1) = (&mut b0[0], &mut b1[0]);
    b0[..23].copy_from_slice(CHAIN_PREFIX);
    b0[23..31].copy_from_slice(&seq.to_be_bytes());
    b0[31..63].copy_from_slice(prev);
    b0[63] = entry_hash[0];
    b1[..31].copy_from_slice(&entry_hash[1..]);
    b1[31] = 0x80;
    b1[56..].copy_from_slice(&(95u64 * 8).to_be_bytes());
    let mut state = IV;
    sha2::compress256(&mut state, &blocks);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The chain value the plain way; [`chain_next`] must always agree with it.
#[cfg(test)]
fn chain_next_reference(prev: &[u8; 32], seq: i64, entry_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHAIN_PREFIX);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(entry_hash);
    h.finalize().into()
}

/// Lowercase hex digit pairs for every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    t
};

/// Whether `hex` is the lowercase hex of `bytes` (one table lookup per byte, one comparison).
fn hex_is(hex: &str, bytes: &[u8; 32]) -> bool {
    let mut enc = [0u8; 64];
    for (pair, b) in enc.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[*b as usize]);
    }
    hex.as_bytes() == enc
}

/// The bytes a checkpoint signs.
pub fn checkpoint_message(
    tenant: &str,
    environment: &str,
    seq: i64,
    chain: &[u8; 32],
    signed_at: &str,
) -> Vec<u8> {
    format!(
        "azotte-journal-checkpoint/v1\n{tenant}\n{environment}\n{seq}\n{}\n{signed_at}",
        hex::encode(chain)
    )
    .into_bytes()
}

/// Signs a checkpoint message with an Ed25519 seed.
pub fn sign(seed: &[u8; 32], message: &[u8]) -> [u8; 64] {
    ed25519_dalek::SigningKey::from_bytes(seed).sign(message).to_bytes()
}

/// The public key of an Ed25519 seed.
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// Verifies a checkpoint signature (strictly: no malleable or small-order keys).
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public) else { return false };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else { return false };
    key.verify_strict(message, &sig).is_ok() && key.verify(message, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": "é"}], "c": null}});
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"z":[1,{"x":"é","y":2}]},"b":1}"#);
        let b: Value = serde_json::from_str(r#"{"a":{"z":[1,{"x":"é","y":2}],"c":null},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn canonical_strings_escape_like_serde_json() {
        for s in ["plain", "quote\" back\\slash", "ctl\u{1}\u{1f}\n\r\t\u{8}\u{c}", "ünïcødé ✓", "/"] {
            let v = Value::String(s.to_owned());
            assert_eq!(canonical_json(&v), serde_json::to_string(&v).unwrap());
        }
        let n = json!([1, -2, 3.5, 1e20, u64::MAX]);
        assert_eq!(canonical_json(&n), serde_json::to_string(&n).unwrap());
    }

    pub(super) fn record(id: &str, body: &str) -> EntryRecord {
        EntryRecord {
            id: id.into(),
            tenant_id: "ten".into(),
            environment: "production".into(),
            kind: "action".into(),
            type_: "t".into(),
            occurred_at: "2026-01-01T00:00:00.000000Z".into(),
            correlation_id: "c".into(),
            causation_id: None,
            principal_kind: "user".into(),
            principal_id: "usr".into(),
            principal_roles: vec!["tenant_admin".into()],
            mfa: false,
            source: "api".into(),
            request_id: None,
            client_ip: None,
            user_agent: None,
            resource_type: None,
            resource_id: None,
            body: body.into(),
        }
    }

    #[test]
    fn every_field_is_hashed_and_framing_is_unambiguous() {
        let base = record("jnl_1", r#"{"n":1}"#);
        let h = entry_hash(&base);
        type Change = Box<dyn Fn(&mut EntryRecord)>;
        let variants: Vec<Change> = vec![
            Box::new(|e| e.id.push('x')),
            Box::new(|e| e.tenant_id.push('x')),
            Box::new(|e| e.environment.push('x')),
            Box::new(|e| e.kind.push('x')),
            Box::new(|e| e.type_.push('x')),
            Box::new(|e| e.occurred_at.push('x')),
            Box::new(|e| e.correlation_id.push('x')),
            Box::new(|e| e.causation_id = Some(String::new())),
            Box::new(|e| e.principal_kind.push('x')),
            Box::new(|e| e.principal_id.push('x')),
            Box::new(|e| e.principal_roles.push(String::new())),
            Box::new(|e| e.mfa = true),
            Box::new(|e| e.source.push('x')),
            Box::new(|e| e.request_id = Some(String::new())),
            Box::new(|e| e.client_ip = Some(String::new())),
            Box::new(|e| e.user_agent = Some(String::new())),
            Box::new(|e| e.resource_type = Some(String::new())),
            Box::new(|e| e.resource_id = Some(String::new())),
            Box::new(|e| e.body.push(' ')),
            // A character moved from one field to the next must not hash the same.
            Box::new(|e| {
                e.principal_kind = "use".into();
                e.principal_id = "rusr".into();
            }),
        ];
        let mut seen = std::collections::HashSet::from([h]);
        for (i, change) in variants.iter().enumerate() {
            let mut e = base.clone();
            change(&mut e);
            assert!(seen.insert(entry_hash(&e)), "variant {i} collides");
        }
    }

    #[test]
    fn direct_compression_matches_plain_sha256() {
        for seq in [1, 2, 255, 256, i64::MAX] {
            let prev: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(seq as u8));
            let h: [u8; 32] = std::array::from_fn(|i| (i as u8) ^ 0xa5);
            assert_eq!(chain_next(&prev, seq, &h), chain_next_reference(&prev, seq, &h));
        }
    }

    #[test]
    fn hex_is_compares_lowercase_hex_exactly() {
        let b: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert!(hex_is(&hex::encode(b), &b));
        assert!(!hex_is(&hex::encode_upper(b), &b));
        assert!(!hex_is(&hex::encode(&b[..31]), &b));
        let mut other = b;
        other[31] ^= 1;
        assert!(!hex_is(&hex::encode(other), &b));
    }

    #[test]
    fn chain_depends_on_order_position_and_content() {
        let (h1, h2) = (entry_hash(&record("a", "{}")), entry_hash(&record("b", "{}")));
        let zero = [0u8; 32];
        let ab = chain_next(&chain_next(&zero, 1, &h1), 2, &h2);
        let ba = chain_next(&chain_next(&zero, 1, &h2), 2, &h1);
        assert_ne!(ab, ba);
        assert_ne!(chain_next(&zero, 1, &h1), chain_next(&zero, 2, &h1));
    }

    #[test]
    fn checkpoints_sign_and_verify() {
        let seed = [7u8; 32];
        let msg = checkpoint_message("ten_x", "production", 42, &[1; 32], "2026-01-01T00:00:00.000000Z");
        let sig = sign(&seed, &msg);
        assert!(verify(&public_key(&seed), &msg, &sig));
        let mut bad = msg.clone();
        bad[40] ^= 1;
        assert!(!verify(&public_key(&seed), &bad, &sig));
        assert!(!verify(&public_key(&[8u8; 32]), &msg, &sig));
        assert!(!verify(&public_key(&seed), &msg, &sig[..63]));
    }
}

/// One sealed position of a chain, as stored or exported.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SealedEntry {
    pub seq: i64,
    pub entry_id: String,
    /// Hex SHA-256 recorded when sealed.
    pub entry_hash: String,
    /// Hex chain value recorded when sealed.
    pub chain_hash: String,
    /// The entry as it is now; `None` if the row is gone.
    pub entry: Option<EntryRecord>,
}

/// A signed checkpoint, as stored or exported.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub chain_hash: String,
    pub signed_at: String,
    pub kid: String,
    /// Hex Ed25519 signature.
    pub signature: String,
}

/// An entry that has no seal.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Unsealed {
    pub entry_id: String,
    /// Unix seconds of `occurred_at`.
    pub occurred_at: i64,
}

/// A problem found by verification, naming the entry or position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Finding {
    /// The entry's content no longer matches its sealed hash.
    ModifiedEntry { seq: i64, entry_id: String },
    /// A sealed entry is missing.
    DeletedEntry { seq: i64, entry_id: String },
    /// A position of the chain is missing (a seal was removed).
    MissingPosition { seq: i64 },
    /// The chain does not link at this position (seals reordered, replaced or forged).
    ChainBroken { seq: i64, entry_id: String },
    /// An entry sealed after entries much newer than itself: inserted after the fact.
    InsertedEntry { seq: i64, entry_id: String },
    /// An entry older than the allowed lag that is still unsealed.
    UnsealedTooLong { entry_id: String },
    /// A checkpoint whose signature does not verify.
    BadCheckpointSignature { seq: i64 },
    /// A checkpoint signed by a key that is not published.
    UnknownCheckpointKey { seq: i64, kid: String },
    /// A checkpoint whose chain value differs from the recomputed chain.
    CheckpointMismatch { seq: i64 },
    /// A checkpoint past the end of the chain: positions after it were removed.
    TruncatedAfterCheckpoint { seq: i64 },
}

/// The result of verifying one chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub tenant_id: String,
    pub environment: String,
    pub entries_checked: usize,
    pub last_checkpoint_verified: Option<i64>,
    pub findings: Vec<Finding>,
}

/// How far apart (ms) a later-sealed entry's id time may precede an earlier-sealed one before it
/// counts as inserted after the fact; transactions commit in a different order than they start.
pub const REORDER_TOLERANCE_MS: u64 = 60_000;

/// The millisecond timestamp of a journal id (`jnl_` + Crockford base32 of a UUIDv7, whose top
/// 48 bits are Unix milliseconds: exactly the first 10 characters).
fn id_millis(id: &str) -> Option<u64> {
    let body = id.strip_prefix("jnl_")?.as_bytes();
    if body.len() != 26 {
        return None;
    }
    let mut ms = 0u64;
    for &c in &body[..10] {
        let v = B32[c as usize];
        if v == 0xff {
            return None;
        }
        ms = (ms << 5) | u64::from(v);
    }
    Some(ms)
}

const B32: [u8; 256] = {
    let alphabet = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[alphabet[i] as usize] = i as u8;
        t[alphabet[i].to_ascii_uppercase() as usize] = i as u8;
        i += 1;
    }
    t
};

const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// One chain's stored state, as verification reads it.
#[derive(Debug, Clone, Copy)]
pub struct ChainData<'a> {
    pub tenant_id: &'a str,
    pub environment: &'a str,
    pub seals: &'a [SealedEntry],
    pub checkpoints: &'a [Checkpoint],
    pub unsealed: &'a [Unsealed],
}

/// Recomputes a chain and checks every seal, entry and checkpoint; unsealed entries older than
/// `max_lag_secs` at `now` are reported.
pub fn verify_chain(
    data: ChainData<'_>,
    keys: &std::collections::HashMap<String, [u8; 32]>,
    now: i64,
    max_lag_secs: i64,
) -> Report {
    let mut sorted: Vec<&SealedEntry> = data.seals.iter().collect();
    sorted.sort_by_key(|s| s.seq);
    let mut v = ChainVerifier::new(data.tenant_id, data.environment, data.checkpoints);
    for s in sorted {
        v.push(s);
    }
    v.finish(data.checkpoints, keys, data.unsealed, now, max_lag_secs)
}

/// Streaming verification of one chain: construct with the chain's checkpoints, [`push`] every
/// seal in position order (so a chain of any length verifies in bounded memory), then
/// [`finish`].
///
/// [`push`]: ChainVerifier::push
/// [`finish`]: ChainVerifier::finish
pub struct ChainVerifier {
    tenant_id: String,
    environment: String,
    findings: Vec<Finding>,
    checked: usize,
    prev: [u8; 32],
    expected: i64,
    last_seq: i64,
    /// Checkpoint positions, ascending; chain values are kept only there.
    wanted: Vec<i64>,
    next_wanted: usize,
    chain_at: std::collections::HashMap<i64, String>,
    newest_ms: u64,
}

impl ChainVerifier {
    pub fn new(tenant_id: &str, environment: &str, checkpoints: &[Checkpoint]) -> Self {
        let mut wanted: Vec<i64> = checkpoints.iter().map(|c| c.seq).collect();
        wanted.sort_unstable();
        wanted.dedup();
        ChainVerifier {
            tenant_id: tenant_id.to_owned(),
            environment: environment.to_owned(),
            findings: Vec::new(),
            checked: 0,
            prev: [0; 32],
            expected: 1,
            last_seq: 0,
            wanted,
            next_wanted: 0,
            chain_at: std::collections::HashMap::new(),
            newest_ms: 0,
        }
    }

    /// The next seal of the chain (positions ascending).
    pub fn push(&mut self, s: &SealedEntry) {
        self.checked += 1;
        self.last_seq = self.last_seq.max(s.seq);
        while self.expected < s.seq {
            self.findings.push(Finding::MissingPosition { seq: self.expected });
            self.expected += 1;
        }
        self.expected = s.seq + 1;
        // The recorded entry hash feeds the chain; when the entry matches it, that is the hash
        // just computed (no hex decoding on the common path).
        let matched = match &s.entry {
            None => {
                self.findings.push(Finding::DeletedEntry { seq: s.seq, entry_id: s.entry_id.clone() });
                None
            }
            Some(e) => {
                let h = entry_hash(e);
                if e.id == s.entry_id && hex_is(&s.entry_hash, &h) {
                    Some(h)
                } else {
                    self.findings.push(Finding::ModifiedEntry { seq: s.seq, entry_id: s.entry_id.clone() });
                    None
                }
            }
        };
        let recorded = matched.or_else(|| unhex32(&s.entry_hash));
        let chain = chain_next(&self.prev, s.seq, &recorded.unwrap_or([0; 32]));
        if hex_is(&s.chain_hash, &chain) {
            self.prev = chain;
        } else {
            self.findings.push(Finding::ChainBroken { seq: s.seq, entry_id: s.entry_id.clone() });
            // Go on from what is stored, so one break is reported once.
            self.prev = unhex32(&s.chain_hash).unwrap_or(chain);
        }
        while self.next_wanted < self.wanted.len() && self.wanted[self.next_wanted] < s.seq {
            self.next_wanted += 1;
        }
        if self.wanted.get(self.next_wanted) == Some(&s.seq) {
            self.chain_at.insert(s.seq, s.chain_hash.clone());
        }
        if let Some(ms) = id_millis(&s.entry_id) {
            if ms + REORDER_TOLERANCE_MS < self.newest_ms {
                self.findings.push(Finding::InsertedEntry { seq: s.seq, entry_id: s.entry_id.clone() });
            }
            self.newest_ms = self.newest_ms.max(ms);
        }
    }

    /// Checks the checkpoints' signatures and chain values, and the unsealed entries' age.
    pub fn finish(
        mut self,
        checkpoints: &[Checkpoint],
        keys: &std::collections::HashMap<String, [u8; 32]>,
        unsealed: &[Unsealed],
        now: i64,
        max_lag_secs: i64,
    ) -> Report {
        let mut last_checkpoint_verified = None;
        for c in checkpoints {
            let Some(key) = keys.get(&c.kid) else {
                self.findings.push(Finding::UnknownCheckpointKey { seq: c.seq, kid: c.kid.clone() });
                continue;
            };
            let chain = unhex32(&c.chain_hash).unwrap_or([0; 32]);
            let msg = checkpoint_message(&self.tenant_id, &self.environment, c.seq, &chain, &c.signed_at);
            let sig = hex::decode(&c.signature).unwrap_or_default();
            if !verify(key, &msg, &sig) {
                self.findings.push(Finding::BadCheckpointSignature { seq: c.seq });
                continue;
            }
            if c.seq > self.last_seq {
                self.findings.push(Finding::TruncatedAfterCheckpoint { seq: c.seq });
                continue;
            }
            match self.chain_at.get(&c.seq) {
                Some(h) if *h == c.chain_hash => {
                    last_checkpoint_verified =
                        Some(last_checkpoint_verified.map_or(c.seq, |v: i64| v.max(c.seq)));
                }
                _ => self.findings.push(Finding::CheckpointMismatch { seq: c.seq }),
            }
        }
        for u in unsealed {
            if u.occurred_at + max_lag_secs < now {
                self.findings.push(Finding::UnsealedTooLong { entry_id: u.entry_id.clone() });
            }
        }
        Report {
            tenant_id: self.tenant_id,
            environment: self.environment,
            entries_checked: self.checked,
            last_checkpoint_verified,
            findings: self.findings,
        }
    }
}

/// A self-contained export of one chain, verifiable offline with [`verify_export`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Export {
    /// `azotte-journal-export/v1`.
    pub format: String,
    pub tenant_id: String,
    pub environment: String,
    pub exported_at: String,
    /// Published checkpoint keys: kid → hex public key.
    pub keys: std::collections::BTreeMap<String, String>,
    pub seals: Vec<SealedEntry>,
    pub checkpoints: Vec<Checkpoint>,
}

/// Verifies an export: the chain, every entry against its seal, every checkpoint signature.
pub fn verify_export(e: &Export) -> Report {
    let keys = e.keys.iter().filter_map(|(k, v)| unhex32(v).map(|b| (k.clone(), b))).collect();
    let data = ChainData {
        tenant_id: &e.tenant_id,
        environment: &e.environment,
        seals: &e.seals,
        checkpoints: &e.checkpoints,
        unsealed: &[],
    };
    verify_chain(data, &keys, 0, 0)
}

#[cfg(test)]
mod verify_tests {
    use super::*;

    fn build(n: i64) -> (Vec<SealedEntry>, Vec<Checkpoint>, std::collections::HashMap<String, [u8; 32]>) {
        let mut prev = [0u8; 32];
        let mut seals = vec![];
        for seq in 1..=n {
            let id = azotte_domain::id::JournalId::new().to_string();
            let entry = super::tests::record(&id, &format!(r#"{{"n":{seq}}}"#));
            let h = entry_hash(&entry);
            prev = chain_next(&prev, seq, &h);
            seals.push(SealedEntry {
                seq,
                entry_id: id,
                entry_hash: hex::encode(h),
                chain_hash: hex::encode(prev),
                entry: Some(entry),
            });
        }
        let seed = [3u8; 32];
        let msg = checkpoint_message("ten", "production", n, &prev, "2026-01-01T00:00:00.000000Z");
        let cp = Checkpoint {
            seq: n,
            chain_hash: hex::encode(prev),
            signed_at: "2026-01-01T00:00:00.000000Z".into(),
            kid: "j1".into(),
            signature: hex::encode(sign(&seed, &msg)),
        };
        let keys = [("j1".to_owned(), public_key(&seed))].into_iter().collect();
        (seals, vec![cp], keys)
    }

    fn run(s: &[SealedEntry], c: &[Checkpoint], k: &std::collections::HashMap<String, [u8; 32]>) -> Report {
        let data = ChainData {
            tenant_id: "ten",
            environment: "production",
            seals: s,
            checkpoints: c,
            unsealed: &[],
        };
        verify_chain(data, k, 0, 0)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (s, c, k) = build(5);
        let r = run(&s, &c, &k);
        assert!(r.findings.is_empty(), "{r:?}");
        assert_eq!((r.entries_checked, r.last_checkpoint_verified), (5, Some(5)));
    }

    #[test]
    fn each_tampering_is_named() {
        let (s, c, k) = build(5);
        let mut m = s.clone();
        m[2].entry.as_mut().unwrap().body = r#"{"n":99}"#.into();
        assert_eq!(
            run(&m, &c, &k).findings,
            [Finding::ModifiedEntry { seq: 3, entry_id: s[2].entry_id.clone() }]
        );
        let mut d = s.clone();
        d[1].entry = None;
        assert_eq!(
            run(&d, &c, &k).findings,
            [Finding::DeletedEntry { seq: 2, entry_id: s[1].entry_id.clone() }]
        );
        let mut g = s.clone();
        g.remove(3);
        assert!(run(&g, &c, &k).findings.contains(&Finding::MissingPosition { seq: 4 }));
        let mut sw = s.clone();
        sw.swap(1, 2);
        let (a, b) = (sw[1].seq, sw[2].seq);
        sw[1].seq = b;
        sw[2].seq = a;
        let f = run(&sw, &c, &k).findings;
        assert!(f.iter().any(|x| matches!(x, Finding::ChainBroken { .. })), "{f:?}");
        let mut bad = c.clone();
        bad[0].signed_at = "2027-01-01T00:00:00.000000Z".into();
        assert_eq!(run(&s, &bad, &k).findings, [Finding::BadCheckpointSignature { seq: 5 }]);
        let t = &s[..3];
        assert_eq!(run(t, &c, &k).findings, [Finding::TruncatedAfterCheckpoint { seq: 5 }]);
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn id_millis_is_the_uuid_v7_timestamp() {
        for _ in 0..100 {
            let id = azotte_domain::id::JournalId::new();
            let (secs, nanos) = id.uuid().get_timestamp().expect("v7").to_unix();
            let want = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert_eq!(id_millis(&id.to_string()), Some(want));
            assert_eq!(id_millis(&id.to_string().to_uppercase().replace("JNL_", "jnl_")), Some(want));
        }
        assert_eq!(id_millis("jnl_short"), None);
        assert_eq!(id_millis("usr_01m8abjzw3e20vvn8zwjmvejh5"), None);
        assert_eq!(id_millis("jnl_01m8abjzwue20vvn8zwjmvejh5"), None);
    }

    #[test]
    fn unhex32_accepts_exactly_64_hex_digits() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(unhex32(&hex::encode(bytes)), Some(bytes));
        assert_eq!(unhex32(&hex::encode_upper(bytes)), Some(bytes));
        assert_eq!(unhex32(&hex::encode(&bytes[..31])), None);
        let mut bad = hex::encode(bytes);
        bad.replace_range(10..11, "g");
        assert_eq!(unhex32(&bad), None);
    }
}

#[cfg(test)]
mod vector_tests {
    use super::*;

    /// The test vector published in docs/journal.md: a verifier in another language can check
    /// its framing against it.
    #[test]
    fn published_test_vector() {
        let mut e = tests::record("jnl_01m8abjzw3e20vvn8zwjmvejh6", r#"{"name":"ci"}"#);
        e.request_id = Some("req_1".into());
        let bytes = entry_bytes(&e);
        assert_eq!(
            hex::encode(&bytes),
            "617a6f7474652d656e7472792f76321f6a6e6c5f30316d3861626a7a773365323076766e387a776a6d76656a68360474\
             656e0b70726f64756374696f6e07616374696f6e02741c323032362d30312d30315430303a30303a30302e3030303030\
             305a026300057573657204757372010d74656e616e745f61646d696e0004617069067265715f31000000000e7b226e61\
             6d65223a226369227d"
        );
        assert_eq!(
            hex::encode(entry_hash(&e)),
            "cba1505bb49cb22b36908a831cfa4f9fc52a15ac65db5fe9ce64d61bc1808e25"
        );
        assert_eq!(entry_hash(&e), <[u8; 32]>::from(Sha256::digest(&bytes)));
    }
}
