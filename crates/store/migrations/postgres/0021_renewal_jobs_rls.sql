-- The renewal job table is platform-wide (ids only; each job then runs in its tenant's scope):
-- only platform transactions (`azotte.platform = on`) see or write it.
ALTER TABLE renewal_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE renewal_jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY platform_only ON renewal_jobs
    USING (current_setting('azotte.platform', true) = 'on')
    WITH CHECK (current_setting('azotte.platform', true) = 'on');
