//! Periodic upkeep run by the workers.

use crate::{Ctx, Result};

/// Deletes expired platform sessions; returns how many went.
pub async fn purge_expired_sessions(ctx: &Ctx) -> Result<u64> {
    Ok(azotte_store::auth::purge_expired_sessions(&ctx.db, ctx.clock.now()).await?)
}
