-- The writer puts each entry on the sealer's work list itself, in the statement that writes the
-- entry (a data-modifying WITH), together with the entry's hash as the sealer and verification
-- compute it from the stored row. The sealer then chains that hash instead of reading every new
-- entry back, which was most of its cost; it still reads the entry of a row without a hash (rows
-- listed before this migration, or put there by hand).
--
-- Trusting the writer's hash is safe: verification recomputes every entry's hash from the stored
-- row and compares it with the seal, so an entry changed between its write and its seal is
-- reported as modified, as one changed afterwards always was; and a work-list row naming an
-- entry that does not exist leaves a seal without its entry, reported as deleted.
--
-- The trigger that listed each new entry goes: the writer's statement lists it now (a second row
-- would collide). An entry inserted some other way is not listed and so never sealed, and
-- verification reports it as unsealed once it is older than the allowed lag. Stop processes of
-- an older release before migrating: they rely on the trigger to list their entries.
ALTER TABLE journal_pending ADD COLUMN entry_hash TEXT;
DROP TRIGGER journal_entries_pending ON journal_entries;
DROP FUNCTION journal_entries_pending();
