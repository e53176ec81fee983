-- A new role changes no cached answer (docs/decisions/0011-read-cache.md): a key may only be
-- given an existing role and a role in use cannot be deleted, so a new role is nobody's. Role
-- inserts no longer evict everything cached for the tenant; updates and deletes still do.
DROP TRIGGER cache_notify ON roles;
CREATE TRIGGER cache_notify AFTER UPDATE OR DELETE ON roles
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('t', 'tenant_id');
