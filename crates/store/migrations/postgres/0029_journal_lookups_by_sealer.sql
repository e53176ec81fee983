-- PostgreSQL, as SQLite did in its migration 0027: the journal's two lookup indexes — by
-- correlation id (lineage) and by resource (timelines, listing filters) — are kept by the sealer
-- instead of by every writer (decision 0010). They were two of the three B-trees each entry went
-- into in the writer's statement (with its work-list row, five index entries per entry). The
-- sealer adds the lookup rows of the entries it seals in the transaction that writes their seals
-- and deletes their work-list rows; readers find entries through these tables once sealed and
-- through the work list (`journal_pending`) before (`store::journal`), in one statement, so an
-- entry is found from the moment it commits, as before. The rows are derived data: verification
-- never reads them.
--
-- Keyed so that each reader's conditions are a prefix: lineage crosses the tenant's
-- environments, timelines and listing filters stay in one.
CREATE TABLE journal_by_correlation (
    tenant_id       TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    environment     TEXT NOT NULL,
    entry_id        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, correlation_id, environment, entry_id)
);
CREATE TABLE journal_by_resource (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    entry_id       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, resource_type, resource_id, entry_id)
);
GRANT SELECT, INSERT ON journal_by_correlation, journal_by_resource TO azotte_app;

ALTER TABLE journal_by_correlation ENABLE ROW LEVEL SECURITY;
ALTER TABLE journal_by_correlation FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON journal_by_correlation
    USING (tenant_id = current_setting('azotte.tenant_id', true)
           OR (tenant_id = 'platform' AND current_setting('azotte.platform', true) = 'on'))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
           OR (tenant_id = 'platform' AND current_setting('azotte.platform', true) = 'on'));
ALTER TABLE journal_by_resource ENABLE ROW LEVEL SECURITY;
ALTER TABLE journal_by_resource FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON journal_by_resource
    USING (tenant_id = current_setting('azotte.tenant_id', true)
           OR (tenant_id = 'platform' AND current_setting('azotte.platform', true) = 'on'))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
           OR (tenant_id = 'platform' AND current_setting('azotte.platform', true) = 'on'));

-- Every entry written so far, sealed or not (the sealer's rows are ON CONFLICT DO NOTHING).
-- Row-level security applies to the tables' owner too (FORCE), so enter each tenant in turn.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOR t IN SELECT id FROM tenants UNION ALL SELECT 'platform' LOOP
        PERFORM set_config('azotte.tenant_id', t, true);
        INSERT INTO journal_by_correlation (tenant_id, correlation_id, environment, entry_id)
            SELECT tenant_id, correlation_id, environment, id FROM journal_entries WHERE tenant_id = t;
        INSERT INTO journal_by_resource (tenant_id, environment, resource_type, resource_id, entry_id)
            SELECT tenant_id, environment, resource_type, resource_id, id FROM journal_entries
            WHERE tenant_id = t AND resource_type IS NOT NULL AND resource_id IS NOT NULL;
    END LOOP;
    PERFORM set_config('azotte.tenant_id', '', true);
END
$$;

DROP INDEX journal_entries_correlation_idx;
DROP INDEX journal_entries_resource_idx;
