-- PostgreSQL restricts the platform-wide renewal job table to platform transactions; SQLite has
-- no row-level security (the service is the only client). Kept for matching version numbers.
SELECT 1;
