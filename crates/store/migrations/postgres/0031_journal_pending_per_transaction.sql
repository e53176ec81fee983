-- One work-list row per transaction and chain rather than per entry: a journaled mutation writes
-- its action and outcome (and any decisions) together, and listing them in one row halves the
-- rows the writer inserts and the sealer deletes (each a heap tuple, a key entry and WAL). The
-- row names the transaction's first entry on the chain (entry_id, entry_hash, as before) and the
-- others in order in two arrays of the same length; a row with no arrays lists one entry, as
-- every row did before.
ALTER TABLE journal_pending ADD COLUMN more_ids TEXT[], ADD COLUMN more_hashes TEXT[];
