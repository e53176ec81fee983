-- Journal entry hash format v2 (docs/journal.md) hashes the body byte for byte as stored: keep it
-- as the canonical JSON text the service writes, not as JSONB (whose key order and spacing are
-- PostgreSQL's own).
ALTER TABLE journal_entries ALTER COLUMN body TYPE TEXT USING body::text;
