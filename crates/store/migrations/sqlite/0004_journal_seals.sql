-- Tamper evidence: per (tenant, environment) hash chain over journal entries, appended by the
-- sealer, and Ed25519-signed checkpoints. Both append-only.
CREATE TABLE journal_seals (
    tenant_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    entry_id     TEXT NOT NULL,
    entry_hash   TEXT NOT NULL,
    chain_hash   TEXT NOT NULL,
    sealed_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, seq),
    CONSTRAINT journal_seals_entry_key UNIQUE (tenant_id, environment, entry_id)
);
CREATE TABLE journal_checkpoints (
    tenant_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    chain_hash   TEXT NOT NULL,
    signed_at    TEXT NOT NULL,
    kid          TEXT NOT NULL,
    signature    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, seq)
);
CREATE TABLE journal_keys (
    kid          TEXT PRIMARY KEY NOT NULL,
    private_key  BLOB NOT NULL,
    public_key   BLOB NOT NULL,
    created_at   TEXT NOT NULL
);
-- Which chains have entries waiting: a job table of ids for the sealer. Writers pick a random
-- bucket so concurrent writers of one tenant rarely touch the same row.
CREATE TABLE journal_seal_queue (
    owner_tenant_id    TEXT NOT NULL,
    owner_environment  TEXT NOT NULL,
    bucket             INTEGER NOT NULL,
    PRIMARY KEY (owner_tenant_id, owner_environment, bucket)
);

CREATE TRIGGER journal_seals_no_update BEFORE UPDATE ON journal_seals
BEGIN SELECT RAISE(ABORT, 'journal seals are immutable'); END;
CREATE TRIGGER journal_seals_no_delete BEFORE DELETE ON journal_seals
BEGIN SELECT RAISE(ABORT, 'journal seals are immutable'); END;
CREATE TRIGGER journal_checkpoints_no_update BEFORE UPDATE ON journal_checkpoints
BEGIN SELECT RAISE(ABORT, 'journal checkpoints are immutable'); END;
CREATE TRIGGER journal_checkpoints_no_delete BEFORE DELETE ON journal_checkpoints
BEGIN SELECT RAISE(ABORT, 'journal checkpoints are immutable'); END;
