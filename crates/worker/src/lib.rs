//! Background workers. They call the same services as the API.
//!
//! Each task has a `run_once` that tests call directly to drain work without sleeping; the
//! supervisor runs them on intervals and stops them when shutdown is signalled.

use std::time::Duration;

use azotte_service::{housekeeping, Ctx};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the workers run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Interval of the housekeeping pass (expired sessions and idempotency records, later:
    /// retention).
    pub housekeeping_every: Duration,
    /// Interval of the journal sealer (seal lag stays under about this plus one pass).
    pub seal_every: Duration,
    /// Interval of the invoice numbering pass (how long a queued draft waits for its number).
    pub number_every: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            housekeeping_every: Duration::from_secs(60),
            seal_every: Duration::from_millis(200),
            number_every: Duration::from_millis(200),
        }
    }
}

/// What one housekeeping pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HousekeepingReport {
    /// Expired sessions deleted.
    pub sessions_purged: u64,
    /// Expired `Idempotency-Key` records deleted.
    pub idempotency_purged: u64,
}

/// One housekeeping pass.
pub async fn housekeeping_once(ctx: &Ctx) -> azotte_service::Result<HousekeepingReport> {
    Ok(HousekeepingReport {
        sessions_purged: housekeeping::purge_expired_sessions(ctx).await?,
        idempotency_purged: azotte_service::idempotency::purge_expired(ctx).await?,
    })
}

/// Starts the workers; they stop when `shutdown` turns true, finishing the pass in progress.
pub fn spawn(ctx: Ctx, config: WorkerConfig, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let sealer = tokio::spawn(every(ctx.clone(), config.seal_every, shutdown.clone(), |ctx| async move {
        if let Err(e) = azotte_service::seal::seal_tick(&ctx).await {
            tracing::warn!(error = %e, "journal sealing failed; will retry");
        }
    }));
    let numbering =
        tokio::spawn(every(ctx.clone(), config.number_every, shutdown.clone(), |ctx| async move {
            if let Err(e) = azotte_service::invoices::number_pending_everywhere(&ctx).await {
                tracing::warn!(error = %e, "invoice numbering failed; will retry");
            }
        }));
    let housekeeping = tokio::spawn(housekeeping(ctx, config, shutdown));
    tokio::spawn(async move {
        let _ = tokio::join!(sealer, numbering, housekeeping);
        tracing::info!("workers stopped");
    })
}

/// Runs `pass` every `period` (a pass that overruns delays the next) until shutdown: the
/// journal sealer, the invoice numbering pass.
async fn every<F, Fut>(ctx: Ctx, period: Duration, mut shutdown: watch::Receiver<bool>, pass: F)
where
    F: Fn(Ctx) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => pass(ctx.clone()).await,
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
}

async fn housekeeping(ctx: Ctx, config: WorkerConfig, mut shutdown: watch::Receiver<bool>) {
    {
        let mut tick = tokio::time::interval(config.housekeeping_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The card expiry sweep runs once per UTC day (and at start).
        let mut swept_on = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match housekeeping_once(&ctx).await {
                        Ok(r) => {
                            if r.sessions_purged > 0 {
                                tracing::info!(purged = r.sessions_purged, "expired sessions purged");
                            }
                            if r.idempotency_purged > 0 {
                                tracing::info!(purged = r.idempotency_purged, "expired idempotency records purged");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "housekeeping failed; will retry"),
                    }
                    match azotte_service::payments::resume_everywhere(&ctx).await {
                        Ok(n) if n > 0 => tracing::info!(sent = n, "queued payments and refunds resumed"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "resuming queued payments failed; will retry"),
                    }
                    match azotte_service::subscriptions::run_due_everywhere(&ctx).await {
                        Ok(n) if n > 0 => tracing::info!(moved = n, "checkouts and subscriptions advanced"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "subscription jobs failed; will retry"),
                    }
                    match azotte_service::invoices::fiscal::run_due_everywhere(&ctx).await {
                        Ok(n) if n > 0 => tracing::info!(attempts = n, "invoices sent to fiscalization"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "fiscalization failed; will retry"),
                    }
                    match azotte_service::payments::reconcile_everywhere(&ctx).await {
                        Ok(n) if n > 0 => tracing::info!(resolved = n, "unknown payments reconciled"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "payment reconciliation failed; will retry"),
                    }
                    let today = ctx.clock.now().date_naive();
                    if swept_on != Some(today) {
                        match azotte_service::payment_methods::mark_expired_everywhere(&ctx).await {
                            Ok(n) => {
                                swept_on = Some(today);
                                if n > 0 {
                                    tracing::info!(marked = n, "expired payment methods marked");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "payment method expiry sweep failed; will retry"),
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
    }
}
