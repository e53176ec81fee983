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
    tx.enter_platform().await?;
    Ok(tx)
}

/// The columns of a [`RenewalJob`].
const JOB_COLUMNS: [RenewalJobs; 8] = [
    RenewalJobs::Id,
    RenewalJobs::TenantId,
    RenewalJobs::Environment,
    RenewalJobs::SubscriptionId,
    RenewalJobs::Attempt,
    RenewalJobs::PeriodEnd,
    RenewalJobs::Runs,
    RenewalJobs::LockedUntil,
];

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
    /// Until when its claimer holds it, as claimed ([`claim_due`]): the claim's mark.
    /// [`later`] and [`finish_many`] change a job only while this claim still holds it, so a
    /// claimer whose lock ran out (another worker claimed the job since) changes nothing.
    pub locked_until: Option<DateTime<Utc>>,
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
    Ok(enqueue_many(db, tenant_id, environment, &[(subscription_id, attempt, period_end)], now).await? == 1)
}

/// Rows per `INSERT` of [`enqueue_many`] (11 parameters each).
const JOBS_PER_STATEMENT: usize = 500;

/// Enqueues the jobs for (subscription, attempt, period end) triples of one tenant environment
/// in one transaction, skipping those that exist; returns how many were new. A scheduler pass
/// offers every due subscription, most of them queued by an earlier pass: one commit for all of
/// them instead of one each.
pub async fn enqueue_many(
    db: &Db,
    tenant_id: &str,
    environment: &str,
    jobs: &[(&str, i32, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Result<u64> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let mut tx = job_tx(db).await?;
    let mut new = 0;
    for chunk in jobs.chunks(JOBS_PER_STATEMENT) {
        let mut q = Query::insert()
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
        for &(subscription_id, attempt, period_end) in chunk {
            let id = JournalId::new().to_string().replacen("jnl_", "rnj_", 1);
            q.values_panic([
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
            ]);
        }
        new += tx.execute(&q).await?;
    }
    tx.commit().await?;
    Ok(new)
}

/// Claims up to `limit` due jobs for `lock_for`: each is held by this caller only.
pub async fn claim_due(
    db: &Db,
    now: DateTime<Utc>,
    lock_for: chrono::Duration,
    limit: u64,
) -> Result<Vec<RenewalJob>> {
    let due = Query::select()
        .columns(JOB_COLUMNS)
        .from(RenewalJobs::Table)
        .and_where(Expr::col(RenewalJobs::Status).eq("queued"))
        .and_where(Expr::col(RenewalJobs::RunAfter).lte(now))
        .cond_where(
            sea_query::Cond::any()
                .add(Expr::col(RenewalJobs::LockedUntil).is_null())
                .add(Expr::col(RenewalJobs::LockedUntil).lt(now)),
        )
        // A total order: concurrent claimers lock rows in the same order (no deadlock).
        .order_by(RenewalJobs::RunAfter, Order::Asc)
        .order_by(RenewalJobs::Id, Order::Asc)
        .limit(limit)
        .to_owned();
    let candidates: Vec<RenewalJob> = {
        let mut tx = job_tx(db).await?;
        let rows = tx.fetch_all::<RenewalJob>(&due).await?;
        tx.commit().await?;
        rows
    };
    // One statement claims them all; each row's condition still lets only one claimer have it.
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let q = Query::update()
        .table(RenewalJobs::Table)
        .value(RenewalJobs::LockedUntil, now + lock_for)
        .value(RenewalJobs::UpdatedAt, now)
        .and_where(Expr::col(RenewalJobs::Id).is_in(candidates.iter().map(|j| j.id.clone())))
        .and_where(Expr::col(RenewalJobs::Status).eq("queued"))
        .and_where(Expr::col(RenewalJobs::RunAfter).lte(now))
        .cond_where(
            sea_query::Cond::any()
                .add(Expr::col(RenewalJobs::LockedUntil).is_null())
                .add(Expr::col(RenewalJobs::LockedUntil).lt(now)),
        )
        // The rows as claimed: another worker may have run and released one since it was read
        // (its `runs` moved on).
        .returning(Query::returning().columns(JOB_COLUMNS))
        .to_owned();
    let mut tx = job_tx(db).await?;
    let mut claimed = tx.fetch_all::<RenewalJob>(&q).await?;
    tx.commit().await?;
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(claimed)
}

/// Marks jobs done in one transaction (a worker's batch: one commit for many renewals), each
/// only while its claim still holds it. A job left unfinished by a crash before this runs again
/// once its lock expires and finds nothing left to do (its period settled), so finishing late
/// never renews twice.
pub async fn finish_many(db: &Db, jobs: &[RenewalJob], now: DateTime<Utc>) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    // One statement per claim (the jobs of one claim share its lock's end).
    let mut claims: std::collections::BTreeMap<Option<DateTime<Utc>>, Vec<String>> = Default::default();
    for j in jobs {
        claims.entry(j.locked_until).or_default().push(j.id.clone());
    }
    let mut tx = job_tx(db).await?;
    for (held, ids) in claims {
        for chunk in ids.chunks(500) {
            let q = Query::update()
                .table(RenewalJobs::Table)
                .value(RenewalJobs::Status, "done")
                .value(RenewalJobs::LockedUntil, Option::<DateTime<Utc>>::None)
                .value(RenewalJobs::UpdatedAt, now)
                .and_where(Expr::col(RenewalJobs::Id).is_in(chunk.iter().cloned()))
                .and_where(held_by(held))
                .to_owned();
            tx.execute(&q).await?;
        }
    }
    tx.commit().await
}

/// The condition that a job is still held by the claim that set its lock to `held`.
fn held_by(held: Option<DateTime<Utc>>) -> sea_query::SimpleExpr {
    match held {
        Some(t) => Expr::col(RenewalJobs::LockedUntil).eq(t),
        None => Expr::col(RenewalJobs::LockedUntil).is_null(),
    }
}

/// Releases a job to run again after `run_after`, only while `job`'s claim still holds it;
/// `new_run` counts a run whose request was refused before any charge (the next run may send a
/// new one).
pub async fn later(
    db: &Db,
    job: &RenewalJob,
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
        .and_where(Expr::col(RenewalJobs::Id).eq(job.id.clone()))
        .and_where(held_by(job.locked_until))
        .to_owned();
    let mut tx = job_tx(db).await?;
    tx.execute(&q).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fresh_database;
    use crate::{Backend, DbOptions};

    /// A scheduler pass offers every due subscription, most already queued: only the new jobs
    /// are added, each (subscription, period end, attempt) once per tenant environment, and each
    /// claimed by one claimer.
    async fn offered_jobs_are_queued_once_and_claimed_once(backend: Backend) {
        let t = fresh_database(backend).await;
        let opts = DbOptions::new(t.url.clone());
        Db::migrate(&opts).await.unwrap();
        let db = Db::connect(&opts).await.unwrap();
        let now = Utc::now();
        let end = now - chrono::Duration::minutes(1);
        assert!(enqueue(&db, "ten_1", "production", "sub_a", 0, end, now).await.unwrap());
        assert!(!enqueue(&db, "ten_1", "production", "sub_a", 0, end, now).await.unwrap());
        // Over three statements: sub_a's renewal is queued already, its first retry is new.
        let ids: Vec<String> = (0..1200).map(|i| format!("sub_{i}")).collect();
        let mut offered = vec![("sub_a", 0, end), ("sub_a", 1, end)];
        offered.extend(ids.iter().map(|id| (id.as_str(), 0, end)));
        assert_eq!(enqueue_many(&db, "ten_1", "production", &offered, now).await.unwrap(), 1201);
        assert_eq!(enqueue_many(&db, "ten_1", "production", &offered, now).await.unwrap(), 0);
        assert_eq!(enqueue_many(&db, "ten_1", "development", &offered[..2], now).await.unwrap(), 2);
        assert_eq!(enqueue_many(&db, "ten_1", "development", &[], now).await.unwrap(), 0);

        // Two claimers at once: every job goes to exactly one of them.
        let lock = chrono::Duration::minutes(5);
        let (a, b) = tokio::join!(claim_due(&db, now, lock, 5000), claim_due(&db, now, lock, 5000));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut all: Vec<_> = a.iter().chain(&b).map(|j| j.id.clone()).collect();
        all.sort();
        all.dedup();
        assert_eq!(a.len() + b.len(), 1204, "claimed {} and {}", a.len(), b.len());
        assert_eq!(all.len(), 1204, "no job claimed twice");
        assert!(claim_due(&db, now, lock, 5000).await.unwrap().is_empty(), "all are held");

        // A's locks run out and C claims its jobs: A, finishing late, changes nothing; C's claim
        // finishes them, and a release by A after that changes nothing either.
        let later_on = now + chrono::Duration::minutes(6);
        let c = claim_due(&db, later_on, lock, 5000).await.unwrap();
        assert_eq!(c.len(), a.len() + b.len(), "every lock ran out");
        let queued = |db: Db| async move {
            let mut tx = job_tx(&db).await.unwrap();
            let q = Query::select()
                .expr(Expr::col(RenewalJobs::Id).count())
                .from(RenewalJobs::Table)
                .and_where(Expr::col(RenewalJobs::Status).eq("queued"))
                .to_owned();
            let (n,): (i64,) = tx.fetch_one(&q).await.unwrap();
            tx.commit().await.unwrap();
            n
        };
        finish_many(&db, &a, later_on).await.unwrap();
        assert_eq!(queued(db.clone()).await, 1204, "a stale claim finishes nothing");
        finish_many(&db, &c, later_on).await.unwrap();
        assert_eq!(queued(db.clone()).await, 0, "the holding claim finishes them");
        let first = a.first().or(b.first()).unwrap();
        later(&db, first, later_on, later_on, true).await.unwrap();
        assert_eq!(queued(db.clone()).await, 0, "a stale release changes nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offered_jobs_are_queued_once_and_claimed_once_sqlite() {
        offered_jobs_are_queued_once_and_claimed_once(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offered_jobs_are_queued_once_and_claimed_once_postgres() {
        offered_jobs_are_queued_once_and_claimed_once(Backend::Postgres).await;
    }
}
