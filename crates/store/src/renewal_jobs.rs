//! The platform-wide renewal job table: ids only, each job run in its tenant's scope. One job
//! per subscription, period end and dunning attempt (a unique constraint), claimed by
//! `locked_until` so that several worker processes never run one job at the same time.

use azotte_domain::id::JournalId;
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, OnConflict, Order, Query};

use crate::exec::Tx;
use crate::{Db, Result};

#[derive(Iden, Clone, Copy)]
enum RenewalJobs {
    Table,
    Id,
    TenantId,
    Environment,
    SubscriptionId,
    Attempt,
    PeriodEnd,
    Status,
    Runs,
    RunAfter,
    LockedUntil,
    CreatedAt,
    UpdatedAt,
}

/// A transaction on the job table: a platform transaction (PostgreSQL's policy admits only
/// those).
async fn job_tx(db: &Db) -> Result<Tx> {
    let mut tx = db.unscoped_tx().await?;
    if let Tx::Postgres(t) = &mut tx {
        sqlx::query("SELECT set_config('azotte.platform', 'on', true)").execute(&mut **t).await?;
    }
    Ok(tx)
}

/// A renewal job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RenewalJob {
    pub id: String,
    pub tenant_id: String,
    pub environment: String,
    pub subscription_id: String,
    /// The dunning attempt it runs (0: the renewal itself).
    pub attempt: i32,
    pub period_end: DateTime<Utc>,
    /// Times it ran without finishing (PSP pending, deferred).
    pub runs: i32,
}

/// Enqueues the job for a subscription's period and attempt; `false` if it exists already.
pub async fn enqueue(
    db: &Db,
    tenant_id: &str,
    environment: &str,
    subscription_id: &str,
    attempt: i32,
    period_end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let id = JournalId::new().to_string().replacen("jnl_", "rnj_", 1);
    let q = Query::insert()
        .into_table(RenewalJobs::Table)
        .columns([
            RenewalJobs::Id,
            RenewalJobs::TenantId,
            RenewalJobs::Environment,
            RenewalJobs::SubscriptionId,
            RenewalJobs::Attempt,
            RenewalJobs::PeriodEnd,
            RenewalJobs::Status,
            RenewalJobs::Runs,
            RenewalJobs::RunAfter,
            RenewalJobs::CreatedAt,
            RenewalJobs::UpdatedAt,
        ])
        .values_panic([
            id.into(),
            tenant_id.into(),
            environment.into(),
            subscription_id.into(),
            attempt.into(),
            period_end.into(),
            "queued".into(),
            0.into(),
            now.into(),
            now.into(),
            now.into(),
        ])
        .on_conflict(
            OnConflict::columns([
                RenewalJobs::TenantId,
                RenewalJobs::Environment,
                RenewalJobs::SubscriptionId,
                RenewalJobs::PeriodEnd,
                RenewalJobs::Attempt,
            ])
            .do_nothing()
            .to_owned(),
        )
        .to_owned();
    let mut tx = job_tx(db).await?;
    let n = tx.execute(&q).await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// Claims up to `limit` due jobs for `lock_for`: each is held by this caller only.
pub async fn claim_due(
    db: &Db,
    now: DateTime<Utc>,
    lock_for: chrono::Duration,
    limit: u64,
) -> Result<Vec<RenewalJob>> {
    let due = Query::select()
        .columns([
            RenewalJobs::Id,
            RenewalJobs::TenantId,
            RenewalJobs::Environment,
            RenewalJobs::SubscriptionId,
            RenewalJobs::Attempt,
            RenewalJobs::PeriodEnd,
            RenewalJobs::Runs,
        ])
        .from(RenewalJobs::Table)
        .and_where(Expr::col(RenewalJobs::Status).eq("queued"))
        .and_where(Expr::col(RenewalJobs::RunAfter).lte(now))
        .cond_where(
            sea_query::Cond::any()
                .add(Expr::col(RenewalJobs::LockedUntil).is_null())
                .add(Expr::col(RenewalJobs::LockedUntil).lt(now)),
        )
        .order_by(RenewalJobs::RunAfter, Order::Asc)
        .limit(limit)
        .to_owned();
    let candidates: Vec<RenewalJob> = {
        let mut tx = job_tx(db).await?;
        let rows = tx.fetch_all::<RenewalJob>(&due).await?;
        tx.commit().await?;
        rows
    };
    let mut claimed = Vec::new();
    for job in candidates {
        let q = Query::update()
            .table(RenewalJobs::Table)
            .value(RenewalJobs::LockedUntil, now + lock_for)
            .value(RenewalJobs::UpdatedAt, now)
            .and_where(Expr::col(RenewalJobs::Id).eq(job.id.clone()))
            .and_where(Expr::col(RenewalJobs::Status).eq("queued"))
            .cond_where(
                sea_query::Cond::any()
                    .add(Expr::col(RenewalJobs::LockedUntil).is_null())
                    .add(Expr::col(RenewalJobs::LockedUntil).lt(now)),
            )
            .to_owned();
        let mut tx = job_tx(db).await?;
        let n = tx.execute(&q).await?;
        tx.commit().await?;
        if n == 1 {
            claimed.push(job);
        }
    }
    Ok(claimed)
}

/// Marks a job done.
pub async fn finish(db: &Db, id: &str, now: DateTime<Utc>) -> Result<()> {
    let q = Query::update()
        .table(RenewalJobs::Table)
        .value(RenewalJobs::Status, "done")
        .value(RenewalJobs::LockedUntil, Option::<DateTime<Utc>>::None)
        .value(RenewalJobs::UpdatedAt, now)
        .and_where(Expr::col(RenewalJobs::Id).eq(id))
        .to_owned();
    let mut tx = job_tx(db).await?;
    tx.execute(&q).await?;
    tx.commit().await
}

/// Releases a job to run again after `run_after`; `new_run` counts a run whose request was
/// refused before any charge (the next run may send a new one).
pub async fn later(
    db: &Db,
    id: &str,
    run_after: DateTime<Utc>,
    now: DateTime<Utc>,
    new_run: bool,
) -> Result<()> {
    let q = Query::update()
        .table(RenewalJobs::Table)
        .value(RenewalJobs::RunAfter, run_after)
        .value(RenewalJobs::Runs, Expr::col(RenewalJobs::Runs).add(i32::from(new_run)))
        .value(RenewalJobs::LockedUntil, Option::<DateTime<Utc>>::None)
        .value(RenewalJobs::UpdatedAt, now)
        .and_where(Expr::col(RenewalJobs::Id).eq(id))
        .to_owned();
    let mut tx = job_tx(db).await?;
    tx.execute(&q).await?;
    tx.commit().await
}
