-- The sealer's work list: one row per journal entry not sealed yet. A trigger adds it in the
-- writer's own statement and transaction (so every entry row has one, however it was written);
-- the sealer reads it joined to journal_entries, in id order and bounded, and deletes the rows of
-- what it sealed in the transaction that writes the seals. A pass touches only what is new,
-- instead of searching the whole chain for entries without a seal.
--
-- Platform-level, like the per-chain queue it replaces (owner_tenant_id, no row-level security):
-- the sealer lists the chains with work before it enters any tenant. Verification never trusts
-- it: an entry is unsealed when journal_seals has no row for it, whatever this table says.
CREATE TABLE journal_pending (
    owner_tenant_id    TEXT NOT NULL,
    owner_environment  TEXT NOT NULL,
    entry_id           TEXT NOT NULL,
    PRIMARY KEY (owner_tenant_id, owner_environment, entry_id)
);
GRANT SELECT, INSERT, DELETE ON journal_pending TO azotte_app;

-- One statement-level trigger: a multi-row insert of entries adds its pending rows in one go.
CREATE FUNCTION journal_entries_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id)
        SELECT tenant_id, environment, id FROM new_entries;
    RETURN NULL;
END
$$;
CREATE TRIGGER journal_entries_pending AFTER INSERT ON journal_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION journal_entries_pending();

-- Entries committed but not sealed yet join the work list. Row-level security applies to the
-- tables' owner too (FORCE), so enter each tenant in turn.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOR t IN SELECT id FROM tenants UNION ALL SELECT 'platform' LOOP
        PERFORM set_config('azotte.tenant_id', t, true);
        INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id)
            SELECT e.tenant_id, e.environment, e.id FROM journal_entries e
            WHERE e.tenant_id = t AND NOT EXISTS (SELECT 1 FROM journal_seals s
                WHERE s.tenant_id = e.tenant_id AND s.environment = e.environment AND s.entry_id = e.id);
    END LOOP;
    PERFORM set_config('azotte.tenant_id', '', true);
END
$$;

DROP TABLE journal_seal_queue;
