-- The read caches' change notifications (migration 0022), sent after the commit by the service's
-- own tenant transactions (docs/decisions/0011-read-cache.md, "Sent after the commit").
--
-- A transaction that calls pg_notify takes, at commit, a lock every notifying transaction of
-- the database takes (PostgreSQL serializes the notification queue in commit order) and holds
-- it through its commit's WAL flush, so notifying writers cannot share a flush: every renewal,
-- purchase or cancellation committed alone, one flush after another (seen as `Lock:object` on
-- pg_database at COMMIT). The service's tenant transactions now set `azotte.defer_notify`: in
-- them the trigger only collects its payload in the transaction-local setting
-- `azotte.cache_pending` (one per line, each once); the service reads it in the transaction's
-- last statement and sends the notifications right after the commit, in a transaction that
-- writes nothing (no WAL flush under the lock). Every other writer (manual SQL, other tools)
-- notifies at commit as before.
CREATE OR REPLACE FUNCTION azotte_cache_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    payload text;
    pending text;
BEGIN
    FOREACH r IN ARRAY ARRAY[
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END
    ] LOOP
        CONTINUE WHEN r IS NULL;
        payload := TG_ARGV[0];
        FOR i IN 1 .. TG_NARGS - 1 LOOP
            payload := payload || '|' || (r ->> TG_ARGV[i]);
        END LOOP;
        IF current_setting('azotte.defer_notify', true) = 'on' THEN
            pending := coalesce(current_setting('azotte.cache_pending', true), '');
            IF position(E'\n' || payload || E'\n' IN E'\n' || pending) = 0 THEN
                PERFORM set_config('azotte.cache_pending', pending || payload || E'\n', true);
            END IF;
        ELSE
            PERFORM pg_notify('azotte_cache', payload);
        END IF;
    END LOOP;
    PERFORM set_config('azotte.cache_changed', 'on', true);
    RETURN NULL;
END $$;
