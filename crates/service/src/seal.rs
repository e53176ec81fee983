//! Sealing the journal into signed hash chains, and verifying them.

use std::collections::{BTreeMap, HashMap};

use azotte_crypto::aead;
use azotte_crypto::chain::{self, Export, Report};
use azotte_domain::permission::Permission;
use azotte_store::seal::{self as store_seal, CheckpointPolicy, Pass};
use azotte_store::TenantScope;

use crate::{Ctx, Result, ServiceError};

/// Checkpoint every this many positions…
pub const CHECKPOINT_EVERY: i64 = 1000;
/// …or this often when there is anything new.
pub const CHECKPOINT_INTERVAL: chrono::Duration = chrono::Duration::seconds(60);
/// An entry unsealed for longer than this is reported by verification.
pub const MAX_SEAL_LAG_SECS: i64 = 30;

const AAD: &[u8] = b"azotte:journal-signing-key";

/// The journal signing key (kid, seed), created on first use.
async fn signer(ctx: &Ctx) -> Result<(String, [u8; 32])> {
    ctx.journal_key
        .get_or_try_init(|| async {
            let keys = store_seal::journal_keys(&ctx.db).await?;
            if let Some(k) = keys.first() {
                let seed = aead::open(&ctx.keys.seal, &k.private_key, AAD)
                    .map_err(|_| ServiceError::Internal("journal key does not decrypt".into()))?;
                let seed: [u8; 32] =
                    seed.try_into().map_err(|_| ServiceError::Internal("journal key length".into()))?;
                return Ok((k.kid.clone(), seed));
            }
            let seed = *aead::Key::generate().expose();
            let kid = format!("j{}", ctx.clock.now().format("%Y%m%d%H%M%S"));
            let sealed = aead::seal(&ctx.keys.seal, &seed, AAD).map_err(ServiceError::internal)?;
            store_seal::insert_journal_key(
                &ctx.db,
                &kid,
                &sealed,
                &chain::public_key(&seed),
                ctx.clock.now(),
            )
            .await?;
            // Another process may have raced us: use whatever is newest now.
            let keys = store_seal::journal_keys(&ctx.db).await?;
            let k = keys.first().ok_or_else(|| ServiceError::Internal("journal key vanished".into()))?;
            if k.kid == kid {
                Ok((kid, seed))
            } else {
                let seed = aead::open(&ctx.keys.seal, &k.private_key, AAD)
                    .map_err(|_| ServiceError::Internal("journal key".into()))?;
                Ok((
                    k.kid.clone(),
                    seed.try_into().map_err(|_| ServiceError::Internal("journal key length".into()))?,
                ))
            }
        })
        .await
        .cloned()
}

/// Seals every entry waiting; returns how many were sealed, and when this returns every entry
/// committed before it started is sealed.
///
/// On SQLite, passes over the log ([`store_seal::seal_log`]) until one is not full. On
/// PostgreSQL, one sweep over the chains with pending entries, repeated only while a listing or a
/// pass was full, so entries written during the sweep wait for the next call (the worker's tick)
/// and are sealed in larger batches; a chain another sealer (another process) is working on is
/// skipped at first and waited for at the end, so sealers share the work.
pub async fn seal_once(ctx: &Ctx) -> Result<usize> {
    sweep(ctx, Pass::Skip).await
}

/// The worker's pass every `seal_every`: [`seal_once`], except that on PostgreSQL a chain's work
/// list is read from just before its last sealed entry (`store::seal::Pass::Tick`), past
/// the rows earlier passes deleted, and whole only every few seconds — so an entry whose
/// transaction committed long after it was recorded may be sealed a few seconds late; and a chain
/// another process is sealing is left to it, not waited for.
pub async fn seal_tick(ctx: &Ctx) -> Result<usize> {
    sweep(ctx, Pass::Tick).await
}

/// One sweep over the chains with work, each sealed as `pass` says ([`Pass::Skip`] or
/// [`Pass::Tick`]).
async fn sweep(ctx: &Ctx, pass: Pass) -> Result<usize> {
    const CHAINS: u64 = 200;
    let (kid, seed) = signer(ctx).await?;
    let sign = move |msg: &[u8]| (kid.clone(), chain::sign(&seed, msg).to_vec());
    let clock = ctx.clock.clone();
    let now = move || clock.now();
    let policy = CheckpointPolicy { every: CHECKPOINT_EVERY, interval: CHECKPOINT_INTERVAL };
    let mut total = 0;
    if ctx.db.backend() == azotte_store::Backend::Sqlite {
        loop {
            let p = store_seal::seal_log(&ctx.db, &now, policy, &sign).await?;
            total += p.sealed;
            if !p.more {
                return Ok(total);
            }
        }
    }
    loop {
        let chains = store_seal::pending_chains(&ctx.db, CHAINS).await?;
        let mut again = chains.len() as u64 == CHAINS;
        let mut progress = false;
        let mut busy = Vec::new();
        let mut count = |p: store_seal::SealPass| {
            total += p.sealed;
            progress |= p.sealed > 0 || p.stale > 0;
            again |= p.more;
        };
        for (tenant, env) in chains {
            match store_seal::seal_chain(&ctx.db, &tenant, &env, &now, policy, &sign, pass).await? {
                Some(p) => count(p),
                // Another process's sealer holds the chain: a thorough pass waits for it below and
                // seals what is left; the tick leaves it to that sealer and to the next tick
                // rather than hold a connection waiting.
                None if pass == Pass::Tick => {}
                None => busy.push((tenant, env)),
            }
        }
        for (tenant, env) in busy {
            let p = store_seal::seal_chain(&ctx.db, &tenant, &env, &now, policy, &sign, Pass::Wait).await?;
            count(p.unwrap_or_default());
        }
        // A full listing whose chains had nothing left was sealed by another sealer meanwhile.
        if !(again && progress) {
            return Ok(total);
        }
    }
}

/// The published checkpoint keys: kid → hex public key.
pub async fn public_keys(ctx: &Ctx) -> Result<BTreeMap<String, String>> {
    signer(ctx).await?;
    Ok(store_seal::journal_keys(&ctx.db)
        .await?
        .into_iter()
        .map(|k| (k.kid, hex::encode(k.public_key)))
        .collect())
}

async fn key_map(ctx: &Ctx) -> Result<HashMap<String, [u8; 32]>> {
    Ok(public_keys(ctx)
        .await?
        .into_iter()
        .filter_map(|(k, v)| hex::decode(v).ok().and_then(|b| b.try_into().ok()).map(|b| (k, b)))
        .collect())
}

/// Verifies every chain (or one tenant's) straight from the database.
pub async fn verify(ctx: &Ctx, tenant: Option<&str>) -> Result<Vec<Report>> {
    let keys = key_map(ctx).await?;
    let now = ctx.clock.now().timestamp();
    let mut reports = Vec::new();
    for (t, e) in store_seal::chains(&ctx.db, tenant).await? {
        // Streaming, in the read order `ChainReader` documents (an entry a sealer seals
        // meanwhile is still seen): memory stays bounded by one page however long the chain is.
        let mut reader = store_seal::ChainReader::open(&ctx.db, &t, &e).await?;
        let mut v = chain::ChainVerifier::new(&t, &e, &reader.checkpoints);
        loop {
            let page = reader.next_page().await?;
            if page.is_empty() {
                break;
            }
            for s in &page {
                v.push(s);
            }
        }
        reports.push(v.finish(&reader.checkpoints, &keys, &reader.unsealed, now, MAX_SEAL_LAG_SECS));
    }
    Ok(reports)
}

/// Verifies the scope's tenant (all its environments); permission `audit.read`.
pub async fn verify_tenant(ctx: &Ctx, scope: &TenantScope) -> Result<Vec<Report>> {
    crate::security::require(ctx, scope, Permission::AuditRead).await?;
    verify(ctx, Some(&scope.tenant_id().to_string())).await
}

/// A self-contained export of one chain.
pub async fn export(ctx: &Ctx, tenant: &str, environment: &str) -> Result<Export> {
    let keys = public_keys(ctx).await?;
    let s = store_seal::chain_state(&ctx.db, tenant, environment).await?;
    Ok(Export {
        format: "azotte-journal-export/v2".into(),
        tenant_id: tenant.to_owned(),
        environment: environment.to_owned(),
        exported_at: ctx.clock.now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        keys,
        seals: s.seals,
        checkpoints: s.checkpoints,
    })
}

/// The export of the scope's chain; permission `audit.read`.
pub async fn export_tenant(ctx: &Ctx, scope: &TenantScope) -> Result<Export> {
    crate::security::require(ctx, scope, Permission::AuditRead).await?;
    export(ctx, &scope.tenant_id().to_string(), scope.environment().as_str()).await
}

/// The signed checkpoints of the scope's chain; permission `audit.read`.
pub async fn checkpoints_tenant(ctx: &Ctx, scope: &TenantScope) -> Result<Vec<chain::Checkpoint>> {
    crate::security::require(ctx, scope, Permission::AuditRead).await?;
    Ok(store_seal::checkpoints(&ctx.db, &scope.tenant_id().to_string(), scope.environment().as_str()).await?)
}
