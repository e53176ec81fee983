//! Journal verification speed, the way `azotte journal verify` runs: the chain is read in pages
//! and each page is verified while it is fresh in memory ([`chain::ChainVerifier`]). Building
//! the entries is not timed; verifying them is. Baseline in the same run: plain SHA-256 over the
//! very bytes each entry hash covers, page by page; and the entry hashes alone (framing the
//! fields as they are hashed, without the chain and the checks).
//! Usage: `verify_bench [N]` (default 1,000,000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use azotte_crypto::chain::{self, ChainVerifier, Checkpoint, EntryRecord, SealedEntry};
use serde_json::json;
use sha2::{Digest, Sha256};

const PAGE: i64 = 256;
const CHECKPOINT_EVERY: i64 = 1000;

/// A realistic mix, in turn: an API action with its request metadata, its outcome, and a
/// renewal outcome written by a job.
fn entry(id: &str, seq: i64) -> EntryRecord {
    let base = EntryRecord {
        id: id.to_owned(),
        tenant_id: "ten_01m8abjzw3e20vvn8zwjmvejh5".into(),
        environment: "production".into(),
        kind: "action".into(),
        type_: "api_key.create".into(),
        occurred_at: "2026-11-25T21:00:00.123456Z".into(),
        correlation_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        causation_id: None,
        principal_kind: "user".into(),
        principal_id: "usr_01m8abjzw3e20vvn8zwjmvejh4".into(),
        principal_roles: vec!["tenant_admin".into()],
        mfa: true,
        source: "api".into(),
        request_id: Some("req_01m8abjzw3e20vvn8zwjmvejh3".into()),
        client_ip: Some("203.0.113.7".into()),
        user_agent: Some("azotte-node/1.4.2 (linux; node 22.11.0)".into()),
        resource_type: Some("api_key".into()),
        resource_id: Some(format!("key_01m8abjzw3e20vvn8z{seq:010}")),
        body: String::new(),
    };
    match seq % 3 {
        1 => EntryRecord {
            body: chain::canonical_json(&json!({
                "role": "service_account", "permissions": ["catalog.read", "customer.read", "customer.write", "checkout.create"]
            })),
            ..base
        },
        2 => EntryRecord {
            kind: "outcome".into(),
            type_: "api_key.created".into(),
            causation_id: Some("jnl_01m8abjzw3e20vvn8zwjmvejh6".into()),
            body: chain::canonical_json(&json!({
                "name": "ci deploy", "mode": "live", "role": "service_account", "expires_at": null,
                "key_id": format!("k{seq:08}")
            })),
            ..base
        },
        _ => EntryRecord {
            kind: "outcome".into(),
            type_: "subscription.renewed".into(),
            causation_id: Some("jnl_01m8abjzw3e20vvn8zwjmvejh6".into()),
            principal_kind: "system".into(),
            principal_id: "system".into(),
            principal_roles: vec![],
            mfa: false,
            source: "system".into(),
            request_id: None,
            client_ip: None,
            user_agent: None,
            resource_type: Some("subscription".into()),
            body: chain::canonical_json(&json!({
                "period_start": "2026-11-25T00:00:00Z", "period_end": "2026-12-25T00:00:00Z",
                "amount": 1499 + seq, "currency": "EUR", "invoice_id": "inv_01m8abjzw3e20vvn8zwjmvejh8",
                "payment_id": "pay_01m8abjzw3e20vvn8zwjmvejha", "attempt": 1
            })),
            ..base
        },
    }
}

fn main() {
    let n: i64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let seed = [9u8; 32];
    let at = "2026-11-25T21:00:00.000000Z";

    // Pass 1 (untimed): the chain's ids, seal hashes and signed checkpoints.
    eprintln!("sealing {n} entries…");
    let mut ids = Vec::with_capacity(n as usize);
    let mut hashes = Vec::with_capacity(n as usize);
    let mut checkpoints = Vec::new();
    let mut prev = [0u8; 32];
    for seq in 1..=n {
        let id = azotte_domain::id::JournalId::new().to_string();
        let h = chain::entry_hash(&entry(&id, seq));
        prev = chain::chain_next(&prev, seq, &h);
        ids.push(id);
        hashes.push((hex::encode(h), hex::encode(prev)));
        if seq % CHECKPOINT_EVERY == 0 || seq == n {
            let sig = chain::sign(&seed, &chain::checkpoint_message("t", "production", seq, &prev, at));
            checkpoints.push(Checkpoint {
                seq,
                chain_hash: hex::encode(prev),
                signed_at: at.into(),
                kid: "j1".into(),
                signature: hex::encode(sig),
            });
        }
    }
    let keys: HashMap<String, [u8; 32]> = [("j1".to_owned(), chain::public_key(&seed))].into_iter().collect();

    // Pass 2: page by page, build (untimed), hash the same bytes (baseline), verify.
    eprintln!("verifying…");
    let (mut base, mut full) = (Duration::ZERO, Duration::ZERO);
    let (mut bytes, mut acc) = (0usize, 0u8);
    let mut verifier = ChainVerifier::new("t", "production", &checkpoints);
    let mut start = 1;
    let mut hashing = Duration::ZERO;
    while start <= n {
        let end = (start + PAGE - 1).min(n);
        let records: Vec<EntryRecord> =
            (start..=end).map(|seq| entry(&ids[(seq - 1) as usize], seq)).collect();
        let framed: Vec<Vec<u8>> = records.iter().map(chain::entry_bytes).collect();
        bytes += framed.iter().map(Vec::len).sum::<usize>();
        let page: Vec<SealedEntry> = records
            .into_iter()
            .zip(start..=end)
            .map(|(e, seq)| {
                let i = (seq - 1) as usize;
                SealedEntry {
                    seq,
                    entry_id: ids[i].clone(),
                    entry_hash: hashes[i].0.clone(),
                    chain_hash: hashes[i].1.clone(),
                    entry: Some(e),
                }
            })
            .collect();
        let t = Instant::now();
        for f in &framed {
            acc ^= Sha256::digest(f)[0];
        }
        base += t.elapsed();
        let t = Instant::now();
        for e in page.iter().filter_map(|s| s.entry.as_ref()) {
            acc ^= chain::entry_hash(e)[0];
        }
        hashing += t.elapsed();
        let t = Instant::now();
        for s in &page {
            verifier.push(s);
        }
        full += t.elapsed();
        start = end + 1;
    }
    let t = Instant::now();
    let report = verifier.finish(&checkpoints, &keys, &[], 0, 0);
    full += t.elapsed();
    assert!(report.findings.is_empty(), "the synthetic chain must verify: {:?}", &report.findings[..1]);
    assert_eq!(report.entries_checked, n as usize);

    let (base, full) = (base.as_secs_f64(), full.as_secs_f64());
    println!("entries:                      {n}");
    println!("average hashed entry:         {} bytes", bytes / n.max(1) as usize);
    println!("checkpoints verified:         {}", checkpoints.len());
    println!("baseline sha256 only:         {:.0} entries/s (1 core)", n as f64 / base);
    println!("entry hashes alone:           {:.0} entries/s (1 core)", n as f64 / hashing.as_secs_f64());
    println!("full verification:            {:.0} entries/s (1 core)", n as f64 / full);
    println!("ratio full / baseline:        {:.2}", base / full);
    std::hint::black_box(acc);
}
