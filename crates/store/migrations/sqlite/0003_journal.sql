-- The journal: immutable action → decision → outcome records, per tenant (tenant_id 'platform'
-- holds installation-level records). Rows can be inserted, never changed or removed.
CREATE TABLE journal_entries (
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
    PRIMARY KEY (tenant_id, environment, id)
);
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
