-- Tamper evidence: per (tenant, environment) hash chain over journal entries, appended by the
-- sealer, and Ed25519-signed checkpoints. Both append-only.
CREATE TABLE journal_seals (
    tenant_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    entry_id     TEXT NOT NULL,
    entry_hash   TEXT NOT NULL,
    chain_hash   TEXT NOT NULL,
    sealed_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, seq),
    CONSTRAINT journal_seals_entry_key UNIQUE (tenant_id, environment, entry_id)
);
CREATE TABLE journal_checkpoints (
    tenant_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    chain_hash   TEXT NOT NULL,
    signed_at    TEXT NOT NULL,
    kid          TEXT NOT NULL,
    signature    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, seq)
);
GRANT SELECT, INSERT ON journal_seals, journal_checkpoints TO azotte_app;

CREATE FUNCTION journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is immutable', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER journal_seals_append_only BEFORE UPDATE OR DELETE ON journal_seals
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();
CREATE TRIGGER journal_checkpoints_append_only BEFORE UPDATE OR DELETE ON journal_checkpoints
    FOR EACH ROW EXECUTE FUNCTION journal_append_only();

ALTER TABLE journal_seals ENABLE ROW LEVEL SECURITY;
ALTER TABLE journal_seals FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON journal_seals
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));
ALTER TABLE journal_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE journal_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON journal_checkpoints
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));

CREATE TABLE journal_keys (
    kid          TEXT PRIMARY KEY,
    private_key  BYTEA NOT NULL,
    public_key   BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
GRANT SELECT, INSERT ON journal_keys TO azotte_app;

-- Which chains have entries waiting: a job table of ids for the sealer. Writers pick a random
-- bucket so concurrent writers of one tenant rarely touch the same row.
CREATE TABLE journal_seal_queue (
    owner_tenant_id    TEXT NOT NULL,
    owner_environment  TEXT NOT NULL,
    bucket             INTEGER NOT NULL,
    PRIMARY KEY (owner_tenant_id, owner_environment, bucket)
);
-- FOR UPDATE SKIP LOCKED needs the UPDATE privilege.
GRANT SELECT, INSERT, UPDATE, DELETE ON journal_seal_queue TO azotte_app;
