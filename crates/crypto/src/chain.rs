//! The journal's tamper evidence: canonical JSON, entry hashes, the hash chain and signed
//! checkpoints. Everything a third party needs to verify an export offline is here.
//!
//! - `entry_hash = SHA-256(canonical_json(entry))`, where canonical JSON sorts object keys
//!   (by UTF-8 bytes), has no insignificant whitespace and uses serde_json's escaping.
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

/// SHA-256 of an entry's canonical JSON.
pub fn entry_hash(entry: &Value) -> [u8; 32] {
    let mut buf = Vec::with_capacity(1024);
    entry_hash_with(&mut buf, entry)
}

/// As [`entry_hash`], reusing `buf`.
pub fn entry_hash_with(buf: &mut Vec<u8>, entry: &Value) -> [u8; 32] {
    buf.clear();
    canonical_into(buf, entry);
    Sha256::digest(&buf[..]).into()
}

/// The chain value after appending `entry_hash` at position `seq` (1-based).
pub fn chain_next(prev: &[u8; 32], seq: i64, entry_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"azotte-journal-chain/v1");
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(entry_hash);
    h.finalize().into()
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
        assert_eq!(entry_hash(&a), entry_hash(&b));
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

    #[test]
    fn chain_depends_on_order_position_and_content() {
        let (h1, h2) = (entry_hash(&json!({"n": 1})), entry_hash(&json!({"n": 2})));
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
    /// The entry as it is now (canonical form); `None` if the row is gone.
    pub entry: Option<Value>,
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

fn id_millis(id: &str) -> Option<u64> {
    let id: azotte_domain::id::JournalId = id.parse().ok()?;
    let (secs, nanos) = id.uuid().get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
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
    let ChainData { tenant_id, environment, seals, checkpoints, unsealed } = data;
    let mut findings = Vec::new();
    let mut sorted: Vec<&SealedEntry> = seals.iter().collect();
    sorted.sort_by_key(|s| s.seq);
    let mut prev = [0u8; 32];
    let mut expected = 1;
    // Chain values are kept only where a checkpoint needs them.
    let wanted: std::collections::HashSet<i64> = checkpoints.iter().map(|c| c.seq).collect();
    let mut chain_at = std::collections::HashMap::new();
    let mut newest_ms = 0u64;
    let mut buf = Vec::with_capacity(2048);
    for s in &sorted {
        while expected < s.seq {
            findings.push(Finding::MissingPosition { seq: expected });
            expected += 1;
        }
        expected = s.seq + 1;
        match &s.entry {
            None => findings.push(Finding::DeletedEntry { seq: s.seq, entry_id: s.entry_id.clone() }),
            Some(e) => {
                let same_id = e.get("id").and_then(Value::as_str) == Some(s.entry_id.as_str());
                if !same_id || unhex32(&s.entry_hash) != Some(entry_hash_with(&mut buf, e)) {
                    findings.push(Finding::ModifiedEntry { seq: s.seq, entry_id: s.entry_id.clone() });
                }
            }
        }
        let recorded = unhex32(&s.entry_hash).unwrap_or([0; 32]);
        let chain = chain_next(&prev, s.seq, &recorded);
        let stored = unhex32(&s.chain_hash);
        if stored != Some(chain) {
            findings.push(Finding::ChainBroken { seq: s.seq, entry_id: s.entry_id.clone() });
        }
        prev = stored.unwrap_or(chain);
        if wanted.contains(&s.seq) {
            chain_at.insert(s.seq, s.chain_hash.clone());
        }
        if let Some(ms) = id_millis(&s.entry_id) {
            if ms + REORDER_TOLERANCE_MS < newest_ms {
                findings.push(Finding::InsertedEntry { seq: s.seq, entry_id: s.entry_id.clone() });
            }
            newest_ms = newest_ms.max(ms);
        }
    }
    let last_seq = sorted.last().map(|s| s.seq).unwrap_or(0);
    let mut last_checkpoint_verified = None;
    for c in checkpoints {
        let Some(key) = keys.get(&c.kid) else {
            findings.push(Finding::UnknownCheckpointKey { seq: c.seq, kid: c.kid.clone() });
            continue;
        };
        let chain = unhex32(&c.chain_hash).unwrap_or([0; 32]);
        let msg = checkpoint_message(tenant_id, environment, c.seq, &chain, &c.signed_at);
        let sig = hex::decode(&c.signature).unwrap_or_default();
        if !verify(key, &msg, &sig) {
            findings.push(Finding::BadCheckpointSignature { seq: c.seq });
            continue;
        }
        if c.seq > last_seq {
            findings.push(Finding::TruncatedAfterCheckpoint { seq: c.seq });
            continue;
        }
        match chain_at.get(&c.seq) {
            Some(h) if *h == c.chain_hash => {
                last_checkpoint_verified =
                    Some(last_checkpoint_verified.map_or(c.seq, |v: i64| v.max(c.seq)));
            }
            _ => findings.push(Finding::CheckpointMismatch { seq: c.seq }),
        }
    }
    for u in unsealed {
        if u.occurred_at + max_lag_secs < now {
            findings.push(Finding::UnsealedTooLong { entry_id: u.entry_id.clone() });
        }
    }
    Report {
        tenant_id: tenant_id.to_owned(),
        environment: environment.to_owned(),
        entries_checked: sorted.len(),
        last_checkpoint_verified,
        findings,
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
    use serde_json::json;

    fn build(n: i64) -> (Vec<SealedEntry>, Vec<Checkpoint>, std::collections::HashMap<String, [u8; 32]>) {
        let mut prev = [0u8; 32];
        let mut seals = vec![];
        for seq in 1..=n {
            let id = azotte_domain::id::JournalId::new().to_string();
            let entry = json!({"id": id, "type": "t", "n": seq});
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
        m[2].entry.as_mut().unwrap()["n"] = json!(99);
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
