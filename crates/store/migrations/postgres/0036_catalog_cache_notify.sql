-- The catalog rows a checkout's job re-reads are cached per process too (docs/decisions/
-- 0011-read-cache.md): any change to a bundle, its entitlements, a price, a price version or an
-- entitlement notifies `g|tenant|environment` at commit, and every process drops what it cached
-- of that tenant environment's catalog. Inserts notify as well: a new entitlement changes the
-- environment's list, a new version its price's. (Storefronts notify `t|tenant` since 0022,
-- which drops everything cached for the tenant, its catalog included.)
CREATE TRIGGER cache_notify AFTER INSERT OR UPDATE OR DELETE ON bundles
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('g', 'tenant_id', 'environment');
CREATE TRIGGER cache_notify AFTER INSERT OR UPDATE OR DELETE ON bundle_entitlements
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('g', 'tenant_id', 'environment');
CREATE TRIGGER cache_notify AFTER INSERT OR UPDATE OR DELETE ON prices
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('g', 'tenant_id', 'environment');
CREATE TRIGGER cache_notify AFTER INSERT OR UPDATE OR DELETE ON price_versions
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('g', 'tenant_id', 'environment');
CREATE TRIGGER cache_notify AFTER INSERT OR UPDATE OR DELETE ON entitlements
    FOR EACH ROW EXECUTE FUNCTION azotte_cache_notify('g', 'tenant_id', 'environment');
