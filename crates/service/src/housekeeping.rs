//! Periodic upkeep run by the workers.

use crate::{Ctx, Result};

/// Deletes refresh tokens that can no longer be used; returns how many went.
pub async fn purge_expired_sessions(ctx: &Ctx) -> Result<u64> {
    Ok(azotte_store::sessions::purge_expired(&ctx.db, ctx.clock.now()).await?)
}
