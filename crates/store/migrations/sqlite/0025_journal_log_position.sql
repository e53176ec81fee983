-- SQLite seals the journal in log order instead of through a work list (decision 0010).
--
-- Every entry gets an explicit position, `pos` (INTEGER PRIMARY KEY: the rowid, made explicit so
-- that VACUUM cannot renumber it). SQLite has one writer at a time and entries are never
-- deleted, so a position is taken only by a writer holding the write lock, each is one more than
-- the highest ever written, and a reader's snapshot always holds every position up to the
-- highest it sees: positions are commit order. The sealer keeps one high-water mark,
-- `journal_seal_mark.pos`, the last position it has sealed through, and each pass seals the
-- entries after it and moves it forward, in the transaction that writes the seals.
--
-- That replaces `journal_pending` and its trigger: an entry no longer writes a second row (and
-- index entry) in the writer's transaction, and a pass no longer deletes one per entry. As
-- before, verification never trusts the mark: an entry is unsealed when journal_seals has no row
-- for it. PostgreSQL, with concurrent writers, keeps its work list.

CREATE TABLE journal_entries_by_pos (
    pos              INTEGER PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    id               TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('action', 'decision', 'outcome')),
    type             TEXT NOT NULL,
    occurred_at      TEXT NOT NULL,
    correlation_id   TEXT NOT NULL,
    causation_id     TEXT,
    principal_kind   TEXT NOT NULL,
    principal_id     TEXT NOT NULL,
    principal_roles  TEXT NOT NULL,
    mfa              INTEGER NOT NULL,
    source           TEXT NOT NULL,
    request_id       TEXT,
    client_ip        TEXT,
    user_agent       TEXT,
    resource_type    TEXT,
    resource_id      TEXT,
    body             TEXT NOT NULL,
    CONSTRAINT journal_entries_key UNIQUE (tenant_id, environment, id)
);

-- Existing entries keep their order (the implicit rowid was commit order too).
INSERT INTO journal_entries_by_pos (pos, tenant_id, environment, id, kind, type, occurred_at,
    correlation_id, causation_id, principal_kind, principal_id, principal_roles, mfa, source,
    request_id, client_ip, user_agent, resource_type, resource_id, body)
SELECT rowid, tenant_id, environment, id, kind, type, occurred_at, correlation_id, causation_id,
    principal_kind, principal_id, principal_roles, mfa, source, request_id, client_ip, user_agent,
    resource_type, resource_id, body
FROM journal_entries ORDER BY rowid;

-- The mark starts just before the first entry still waiting on the work list (or after the last
-- entry when nothing waits); a stale work-list row of an entry sealed already does not count.
-- Entries after the mark that are sealed already are skipped by the sealer.
CREATE TABLE journal_seal_mark (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    pos  INTEGER NOT NULL
);
INSERT INTO journal_seal_mark (id, pos) VALUES (1, COALESCE(
    (SELECT MIN(e.rowid) - 1 FROM journal_entries e JOIN journal_pending p
        ON p.owner_tenant_id = e.tenant_id AND p.owner_environment = e.environment
        AND p.entry_id = e.id
        WHERE NOT EXISTS (SELECT 1 FROM journal_seals s WHERE s.tenant_id = e.tenant_id
            AND s.environment = e.environment AND s.entry_id = e.id)),
    (SELECT MAX(rowid) FROM journal_entries),
    0));

DROP TRIGGER journal_entries_pending;
DROP TRIGGER journal_entries_no_update;
DROP TRIGGER journal_entries_no_delete;
DROP TABLE journal_pending;
DROP TABLE journal_entries;
ALTER TABLE journal_entries_by_pos RENAME TO journal_entries;

CREATE INDEX journal_entries_correlation_idx ON journal_entries (tenant_id, correlation_id);
CREATE INDEX journal_entries_resource_idx ON journal_entries (tenant_id, resource_type, resource_id);

CREATE TRIGGER journal_entries_no_update BEFORE UPDATE ON journal_entries
BEGIN
    SELECT RAISE(ABORT, 'journal entries are immutable');
END;
CREATE TRIGGER journal_entries_no_delete BEFORE DELETE ON journal_entries
BEGIN
    SELECT RAISE(ABORT, 'journal entries are immutable');
END;
