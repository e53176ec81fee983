//! After a commit that went unconfirmed — the connection to PostgreSQL failed while a fenced
//! transaction's `COMMIT`, or its answer, was on the way ([`azotte_store::StoreError::CommitUnknown`])
//! — what did it write? [`read_back`] reads it in a transaction that begins once the fenced one
//! has ended ([`azotte_store::Db::after_fence`]). Decisions 0007, "An
//! unconfirmed commit", and 0006, "An unconfirmed claim".

use std::time::Duration;

use azotte_store::{Fence, StoreError, TenantScope, TenantTx};

use crate::Ctx;

/// How long each attempt waits for the database to end the fenced transaction.
const WAIT: Duration = Duration::from_secs(5);

/// Attempts before giving up (about 20 s in all, at most).
const ATTEMPTS: u32 = 3;

/// A read transaction that begins once the transaction holding `fence` has ended (committed, or
/// rolled back by the server for its lost connection), so that what is read in it shows what
/// that transaction did ([`read_back`]). A server session that still holds the
/// fence after the first wait — it has not noticed its client went (a half-open connection keeps
/// its transaction open until TCP gives up) — is ended, which rolls its transaction back: the
/// caller's own connection to it failed, and nothing else uses it (the other readers of the
/// fence are not ended: they hold it shared). `None` (logged, with `what`):
/// the database could not tell in [`ATTEMPTS`] attempts, each bounded.
async fn after(ctx: &Ctx, scope: &TenantScope, fence: Fence, what: &str) -> Option<TenantTx> {
    for attempt in 1..=ATTEMPTS {
        // Bounded: a statement on a connection the network dropped could wait for TCP.
        let tx = tokio::time::timeout(WAIT + Duration::from_secs(1), ctx.db.after_fence(scope, fence, WAIT))
            .await
            .unwrap_or_else(|_| Err(StoreError::commit_unknown("no answer in time")));
        match tx {
            Ok(tx) => return Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, attempt, what, "could not read what an unconfirmed commit wrote");
                if attempt == 1 {
                    // The fence still held, most likely, by a session whose client went.
                    match ctx.db.end_fence_holder(fence).await {
                        Ok(ended) => tracing::warn!(ended, what, "ended the session holding the fence"),
                        Err(e) => {
                            tracing::warn!(error = %e, what, "could not end the session holding the fence")
                        }
                    }
                } else if attempt < ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    tracing::error!(what, "what an unconfirmed commit wrote is unknown");
    None
}

/// What `read` finds, in a transaction from [`after`]: what the transaction holding `fence`
/// wrote, read once it has ended. Bounded; `None` (logged, with `what`) when the database could
/// not tell.
pub(crate) async fn read_back<T>(
    ctx: &Ctx,
    scope: &TenantScope,
    fence: Fence,
    what: &str,
    read: impl for<'t> FnOnce(&'t mut TenantTx) -> Read<'t, T>,
) -> Option<T> {
    let mut tx = after(ctx, scope, fence, what).await?;
    let found = match tokio::time::timeout(WAIT, read(&mut tx)).await {
        Ok(Ok(found)) => Some(found),
        Ok(Err(e)) => {
            tracing::error!(error = %e, what, "what an unconfirmed commit wrote is unknown");
            None
        }
        Err(_) => {
            tracing::error!(what, "what an unconfirmed commit wrote is unknown: no answer in time");
            None
        }
    };
    // Read: whatever the read-only transaction's end does.
    let _ = tx.commit().await;
    found
}

/// A read of [`read_back`], in the transaction it is given.
pub(crate) type Read<'t, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = azotte_store::Result<T>> + Send + 't>>;
