-- Renewals and dunning (issue 9). The job table is platform-wide and holds ids only: each job
-- runs in its tenant's scope. One job per subscription, period end and dunning attempt, so however many
-- schedulers see a due subscription, its period is enqueued once; workers claim a job by
-- `locked_until`, and the charge itself is keyed per subscription and period (one payment).
CREATE TABLE renewal_jobs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    subscription_id  TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    period_end       TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'done')),
    runs             INTEGER NOT NULL,
    run_after        TEXT NOT NULL,
    locked_until     TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    CONSTRAINT renewal_jobs_period_key UNIQUE (tenant_id, environment, subscription_id, period_end, attempt)
);
CREATE INDEX renewal_jobs_due_idx ON renewal_jobs (status, run_after);

-- Dunning: how many retries of the current period failed, and when the next one is due.
ALTER TABLE subscriptions ADD COLUMN dunning_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN next_retry_at TEXT;
