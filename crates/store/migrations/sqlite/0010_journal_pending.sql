-- The sealer's work list: one row per journal entry not sealed yet. A trigger adds it in the
-- writer's own statement and transaction (so every entry row has one, however it was written);
-- the sealer reads it joined to journal_entries, in id order and bounded, and deletes the rows of
-- what it sealed in the transaction that writes the seals. A pass touches only what is new,
-- instead of searching the whole chain for entries without a seal. It replaces the per-chain
-- queue. Verification never trusts it: an entry is unsealed when journal_seals has no row for
-- it, whatever this table says.
CREATE TABLE journal_pending (
    owner_tenant_id    TEXT NOT NULL,
    owner_environment  TEXT NOT NULL,
    entry_id           TEXT NOT NULL,
    PRIMARY KEY (owner_tenant_id, owner_environment, entry_id)
) WITHOUT ROWID;

CREATE TRIGGER journal_entries_pending AFTER INSERT ON journal_entries
BEGIN
    INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id)
        VALUES (NEW.tenant_id, NEW.environment, NEW.id);
END;

-- Entries committed but not sealed yet join the work list.
INSERT INTO journal_pending (owner_tenant_id, owner_environment, entry_id)
    SELECT e.tenant_id, e.environment, e.id FROM journal_entries e
    WHERE NOT EXISTS (SELECT 1 FROM journal_seals s
        WHERE s.tenant_id = e.tenant_id AND s.environment = e.environment AND s.entry_id = e.id);

DROP TABLE journal_seal_queue;
