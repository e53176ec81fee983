-- Journal entry hash format v2 (docs/journal.md) hashes the body byte for byte as stored. SQLite
-- already keeps it as TEXT; the service now writes canonical JSON there. (Kept so both backends
-- have the same migration numbers.)
SELECT 1;
