-- The renewal scheduler's reads (store::subscriptions::due_renewals), each an index range in
-- the order it reads, so that it stops at its limit however many renewals wait for a later
-- retry: safe mode can defer every renewal of a tenant, and the reads used to walk all of them
-- (the due index ordered by period end, filtered on next_retry_at) at every tick.
-- Never deferred: by period end.
CREATE INDEX subscriptions_due_fresh_idx ON subscriptions (tenant_id, environment, status, period_end)
    WHERE next_retry_at IS NULL;
-- Past-due retries and deferred renewals: by retry time.
CREATE INDEX subscriptions_retry_idx ON subscriptions (tenant_id, environment, status, next_retry_at)
    WHERE next_retry_at IS NOT NULL;
