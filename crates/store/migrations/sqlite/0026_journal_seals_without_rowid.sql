-- SQLite: journal_seals is stored in its primary key's B-tree (WITHOUT ROWID) instead of a rowid
-- table plus a separate primary-key index, so a seal is written into two B-trees (the chain
-- position and the entry's id), not three (decision 0010). Same columns, keys and immutability
-- triggers; existing seals are copied in chain order. PostgreSQL's heap tables are unaffected.

CREATE TABLE journal_seals_new (
    tenant_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    entry_id     TEXT NOT NULL,
    entry_hash   TEXT NOT NULL,
    chain_hash   TEXT NOT NULL,
    sealed_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, seq),
    CONSTRAINT journal_seals_entry_key UNIQUE (tenant_id, environment, entry_id)
) WITHOUT ROWID;

INSERT INTO journal_seals_new (tenant_id, environment, seq, entry_id, entry_hash, chain_hash, sealed_at)
SELECT tenant_id, environment, seq, entry_id, entry_hash, chain_hash, sealed_at
FROM journal_seals ORDER BY tenant_id, environment, seq;

-- Dropping the table drops its triggers.
DROP TABLE journal_seals;
ALTER TABLE journal_seals_new RENAME TO journal_seals;

CREATE TRIGGER journal_seals_no_update BEFORE UPDATE ON journal_seals
BEGIN SELECT RAISE(ABORT, 'journal seals are immutable'); END;
CREATE TRIGGER journal_seals_no_delete BEFORE DELETE ON journal_seals
BEGIN SELECT RAISE(ABORT, 'journal seals are immutable'); END;
