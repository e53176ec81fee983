//! Security decisions that are not part of a mutation (denied requests, failed logins, token
//! reuse), journaled with flood protection: per key, at most one entry a minute, the next one
//! saying how many were folded into it — so an attacker cannot fill the disk.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use azotte_domain::id::TenantId;
use azotte_domain::permission::Permission;
use azotte_domain::Principal;
use azotte_store::journal;
use azotte_store::{PlatformScope, TenantScope};
use serde_json::{json, Value};

use crate::{Ctx, Result, ServiceError};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_KEYS: usize = 100_000;

/// Counts repeats of a security event per key.
#[derive(Debug, Default)]
pub struct FloodGuard(Mutex<HashMap<String, (Instant, u64)>>);

impl FloodGuard {
    /// `Some(n)` if an entry should be written now, `n` being the repeats folded since the last;
    /// `None` if this one is folded into the next.
    fn admit(&self, key: &str) -> Option<u64> {
        let Ok(mut map) = self.0.lock() else { return Some(0) };
        let now = Instant::now();
        if map.len() > MAX_KEYS {
            map.retain(|_, (t, _)| now.duration_since(*t) < WINDOW);
        }
        match map.get_mut(key) {
            Some((t, n)) if now.duration_since(*t) < WINDOW => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let folded = *n;
                *t = now;
                *n = 0;
                Some(folded)
            }
            None => {
                map.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Journals a security decision, folded with its repeats.
pub async fn record(
    ctx: &Ctx,
    tenant: Option<(TenantId, &str)>,
    type_: &str,
    principal: &Principal,
    flood_key: &str,
    mut body: Value,
) -> Result<()> {
    let Some(folded) = ctx.flood.admit(&format!("{type_}|{flood_key}")) else { return Ok(()) };
    if let Value::Object(m) = &mut body {
        m.insert("repeats_folded".into(), json!(folded));
    }
    journal::record_security(&ctx.db, tenant, ctx.clock.now(), type_, principal, None, body).await?;
    Ok(())
}

/// Authorization inside a tenant: allow, or journal the denial and refuse.
pub async fn require(ctx: &Ctx, scope: &TenantScope, p: Permission) -> Result<()> {
    if let Err(denied) = scope.require(p) {
        let principal = scope.principal();
        record(
            ctx,
            Some((scope.tenant_id(), scope.environment().as_str())),
            "authz.denied",
            principal,
            &format!("{}|{}", principal.id, p),
            json!({"permission": p.as_str(), "decision": "deny"}),
        )
        .await?;
        return Err(denied.into());
    }
    Ok(())
}

/// Authorization on the platform: allow, or journal the denial and refuse.
pub async fn require_platform(ctx: &Ctx, scope: &PlatformScope, p: Permission) -> Result<()> {
    if let Err(denied) = scope.require(p) {
        let principal = scope.principal();
        record(
            ctx,
            None,
            "authz.denied",
            principal,
            &format!("{}|{}", principal.id, p),
            json!({"permission": p.as_str(), "decision": "deny"}),
        )
        .await?;
        return Err(ServiceError::from(denied));
    }
    Ok(())
}
