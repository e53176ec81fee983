//! The sealer against concurrent writers and other sealers, on both backends: every committed
//! entry ends up sealed exactly once, in a chain that verifies, and the work list empties.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use azotte_crypto::chain;
use azotte_domain::{Principal, PrincipalKind};
use serde_json::json;

use super::{pending_chains, seal_chain, seal_page, unsealed, CheckpointPolicy, PAGE};
use crate::testing::fresh_database;
use crate::{Backend, Db, DbOptions, PlatformScope};

const SEED: [u8; 32] = [7; 32];

fn scope() -> PlatformScope {
    PlatformScope {
        principal: Principal { kind: PrincipalKind::System, id: "system".into(), roles: vec![] },
        permissions: Default::default(),
        credential: crate::Credential::Session {
            family_id: azotte_domain::id::SessionId::new(),
            amr: vec![],
            mfa_at: None,
        },
    }
}

fn sign(msg: &[u8]) -> (String, Vec<u8>) {
    ("test".into(), chain::sign(&SEED, msg).to_vec())
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

const POLICY: CheckpointPolicy = CheckpointPolicy { every: 50, interval: chrono::Duration::seconds(60) };

/// One sealer: passes over the platform chain until told to stop.
async fn sealer(db: Db, stop: Arc<AtomicBool>, wait: bool) -> usize {
    let mut sealed = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(p) = seal_chain(&db, "platform", "platform", &now, POLICY, &sign, wait).await.unwrap() {
            sealed += p.sealed;
        }
        tokio::task::yield_now().await;
    }
    sealed
}

async fn concurrent_writers_and_sealers(backend: Backend) {
    let t = fresh_database(backend).await;
    let opts = DbOptions::new(t.url.clone());
    Db::migrate(&opts).await.unwrap();
    let db = Db::connect(&opts).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sealers = [false, true].map(|wait| tokio::spawn(sealer(db.clone(), stop.clone(), wait)));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    let mut tx = db.platform_tx(&scope()).await.unwrap();
                    tx.action(now(), "test.write", None, json!({"w": w, "i": i})).await.unwrap();
                    tx.outcome(now(), "test.written", None, json!({})).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut sealed: usize = 0;
    for s in sealers {
        sealed += s.await.unwrap();
    }
    // What the sealers left (entries committed after their last pass) takes one more pass.
    sealed +=
        seal_chain(&db, "platform", "platform", &now, POLICY, &sign, true).await.unwrap().unwrap().sealed;
    assert_eq!(sealed, 240, "every entry sealed exactly once");
    assert!(pending_chains(&db, 10).await.unwrap().is_empty(), "the work list is empty");
    assert!(unsealed(&db, "platform", "platform").await.unwrap().is_empty());

    let checkpoints = super::checkpoints(&db, "platform", "platform").await.unwrap();
    let mut v = chain::ChainVerifier::new("platform", "platform", &checkpoints);
    let page = seal_page(&db, "platform", "platform", 0, PAGE).await.unwrap();
    assert_eq!(page.len(), 240);
    for s in &page {
        v.push(s);
    }
    let keys = [("test".to_owned(), chain::public_key(&SEED))].into_iter().collect();
    let report = v.finish(&checkpoints, &keys, &[], now().timestamp(), 30);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, 240);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_sealers_sqlite() {
    concurrent_writers_and_sealers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_sealers_postgres() {
    concurrent_writers_and_sealers(Backend::Postgres).await;
}
