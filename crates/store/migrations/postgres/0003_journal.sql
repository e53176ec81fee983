-- The journal: immutable action → decision → outcome records, per tenant (tenant_id 'platform'
-- holds installation-level records). Rows can be inserted, never changed or removed: the service
-- role has no UPDATE or DELETE grant, and a trigger refuses them for everyone else too.
CREATE TABLE journal_entries (
    tenant_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    id               TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('action', 'decision', 'outcome')),
    type             TEXT NOT NULL,
    occurred_at      TIMESTAMPTZ NOT NULL,
    correlation_id   TEXT NOT NULL,
    causation_id     TEXT,
    principal_kind   TEXT NOT NULL,
    principal_id     TEXT NOT NULL,
    principal_roles  JSONB NOT NULL,
    mfa              BOOLEAN NOT NULL,
    source           TEXT NOT NULL,
    request_id       TEXT,
    client_ip        TEXT,
    user_agent       TEXT,
    resource_type    TEXT,
    resource_id      TEXT,
    body             JSONB NOT NULL,
    PRIMARY KEY (tenant_id, environment, id)
);
CREATE INDEX journal_entries_correlation_idx ON journal_entries (tenant_id, correlation_id);
CREATE INDEX journal_entries_resource_idx ON journal_entries (tenant_id, resource_type, resource_id);
GRANT SELECT, INSERT ON journal_entries TO azotte_app;

CREATE FUNCTION journal_entries_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'journal entries are immutable' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER journal_entries_no_update BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal_entries_immutable();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION journal_entries_immutable();

ALTER TABLE journal_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE journal_entries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON journal_entries
    USING (tenant_id = current_setting('azotte.tenant_id', true)
           OR (tenant_id = 'platform' AND current_setting('azotte.platform', true) = 'on'))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
           OR (tenant_id = 'platform' AND current_setting('azotte.platform', true) = 'on'));
