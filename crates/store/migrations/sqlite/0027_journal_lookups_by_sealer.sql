-- SQLite: the journal's two lookup indexes — by correlation id (lineage) and by resource
-- (timelines, listing filters) — are kept by the sealer instead of by every writer (decision
-- 0010). They were two of the four B-trees a journaled commit wrote an entry into; each commit
-- rewrote a page of each. The sealer adds the lookup rows of the entries it seals, in the
-- transaction that seals them and moves the mark, a few hundred at a time; reads find entries
-- through these tables up to the mark and by scanning the short unsealed tail after it
-- (`store::journal`). The rows are derived data: verification never reads them.
--
-- PostgreSQL keeps its indexes on journal_entries.

CREATE TABLE journal_by_correlation (
    tenant_id       TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    pos             INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, correlation_id, pos)
) WITHOUT ROWID;

CREATE TABLE journal_by_resource (
    tenant_id      TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    pos            INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, resource_id, pos)
) WITHOUT ROWID;

-- Every entry written so far, sealed or not (the sealer's rows are INSERT OR IGNORE).
INSERT INTO journal_by_correlation (tenant_id, correlation_id, pos)
SELECT tenant_id, correlation_id, pos FROM journal_entries;
INSERT INTO journal_by_resource (tenant_id, resource_type, resource_id, pos)
SELECT tenant_id, resource_type, resource_id, pos FROM journal_entries
WHERE resource_type IS NOT NULL AND resource_id IS NOT NULL;

DROP INDEX journal_entries_correlation_idx;
DROP INDEX journal_entries_resource_idx;
