-- Change notifications for the per-process read caches (docs/decisions/0011-read-cache.md).
-- Every change to a row a cached answer was read from sends, at commit, a notification on the
-- channel `azotte_cache` naming what to evict; each azotte process LISTENs and evicts. The
-- triggers cover every writer: request handlers, workers, other processes, manual SQL.
-- Payloads: `t|tenant` (the tenant, its roles or storefronts: everything cached for it),
-- `k|key_id` (one API key), `c|tenant|environment|customer` (one customer's grant states).
-- Identical payloads of one transaction are delivered once. The transaction-local setting
-- `azotte.cache_changed` tells the committing process that it has evictions to wait for.

-- One function for all: the first argument is the payload's kind, the others name the columns
-- whose values follow it, read from the old row (update, delete) and the new one (insert,
-- update).
CREATE FUNCTION azotte_cache_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    payload text;
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
        PERFORM pg_notify('azotte_cache', payload);
    END LOOP;
    PERFORM set_config('azotte.cache_changed', 'on', true);
    RETURN NULL;
END $$;

-- Inserts of customers, subscriptions, tenants and keys change no cached answer: only existing
-- customers and verified keys are cached, and a subscription grants nothing without grants.
CREATE TRIGGER cache_notify AFTER INSERT OR UPDATE OR DELETE ON entitlement_grants
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('c', 'tenant_id', 'environment', 'customer_id');
CREATE TRIGGER cache_notify AFTER UPDATE OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('c', 'tenant_id', 'environment', 'customer_id');
CREATE TRIGGER cache_notify AFTER UPDATE OR DELETE ON customer_data.customers
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('c', 'tenant_id', 'environment', 'id');
CREATE TRIGGER cache_notify AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('t', 'id');
CREATE TRIGGER cache_notify AFTER INSERT OR UPDATE OR DELETE ON roles
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('t', 'tenant_id');
CREATE TRIGGER cache_notify AFTER UPDATE OR DELETE ON storefronts
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('t', 'tenant_id');
CREATE TRIGGER cache_notify AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('k', 'key_id');
CREATE TRIGGER cache_notify AFTER UPDATE OR DELETE ON api_key_directory
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('k', 'key_id');
