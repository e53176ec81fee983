//! Journal verification speed: builds N realistic sealed entries in memory, then times
//! `verify_chain` on one thread, and, as a baseline in the same run, plain SHA-256 over the same
//! canonical bytes. Usage: `verify_bench [N]` (default 1,000,000).

use std::collections::HashMap;
use std::time::Instant;

use azotte_crypto::chain::{self, ChainData, Checkpoint, SealedEntry};
use serde_json::json;
use sha2::{Digest, Sha256};

fn main() {
    let n: i64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    eprintln!("building {n} entries…");
    let mut prev = [0u8; 32];
    let mut seals = Vec::with_capacity(n as usize);
    let mut checkpoints = Vec::new();
    let seed = [9u8; 32];
    for seq in 1..=n {
        let id = azotte_domain::id::JournalId::new().to_string();
        let entry = json!({
            "tenant_id": "ten_01m8abjzw3e20vvn8zwjmvejh5", "environment": "production", "id": id,
            "kind": "outcome", "type": "subscription.renewed", "occurred_at": "2026-11-25T21:00:00.123456Z",
            "correlation_id": "4bf92f3577b34da6a3ce929d0e0e4736", "causation_id": "jnl_01m8abjzw3e20vvn8zwjmvejh6",
            "principal": {"kind": "system", "id": "system", "roles": [], "mfa": false}, "source": "system",
            "request_id": null, "client_ip": null, "user_agent": null, "resource_type": "subscription",
            "resource_id": "sub_01m8abjzw3e20vvn8zwjmvejh7",
            "body": {"period_start": "2026-11-25T00:00:00Z", "period_end": "2026-12-25T00:00:00Z", "amount": 1499, "currency": "EUR", "invoice_id": "inv_01m8abjzw3e20vvn8zwjmvejh8"}
        });
        let h = chain::entry_hash(&entry);
        prev = chain::chain_next(&prev, seq, &h);
        seals.push(SealedEntry {
            seq,
            entry_id: id,
            entry_hash: hex::encode(h),
            chain_hash: hex::encode(prev),
            entry: Some(entry),
        });
        if seq % 1000 == 0 || seq == n {
            let at = "2026-11-25T21:00:00.000000Z";
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

    let canon: Vec<String> =
        seals.iter().map(|s| chain::canonical_json(s.entry.as_ref().unwrap_or(&json!(null)))).collect();
    let bytes: usize = canon.iter().map(String::len).sum();
    let t = Instant::now();
    let mut acc = 0u8;
    for c in &canon {
        acc ^= Sha256::digest(c.as_bytes())[0];
    }
    let base = t.elapsed().as_secs_f64();

    let data = ChainData {
        tenant_id: "t",
        environment: "production",
        seals: &seals,
        checkpoints: &checkpoints,
        unsealed: &[],
    };
    let t = Instant::now();
    let report = chain::verify_chain(data, &keys, 0, 0);
    let full = t.elapsed().as_secs_f64();
    assert!(report.findings.is_empty(), "the synthetic chain must verify");

    println!("entries:                      {n}");
    println!("average canonical entry:      {} bytes", bytes / n.max(1) as usize);
    println!("checkpoints verified:         {}", checkpoints.len());
    println!("baseline sha256 only:         {:.0} entries/s (1 core)", n as f64 / base);
    println!("verify_chain (full):          {:.0} entries/s (1 core)", n as f64 / full);
    println!("ratio full / baseline:        {:.2}", base / full);
    std::hint::black_box(acc);
}
