-- Envelope encryption: each tenant's data keys, wrapped (XChaCha20-Poly1305) by the platform
-- master key that master_kid names. At most one active (unretired) key per tenant; the partial
-- unique index makes concurrent first use create one. Ciphertexts name the kid that sealed them,
-- so retired keys stay readable. Tenant-owned: RLS like every tenant table.
CREATE TABLE tenant_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    kid           TEXT NOT NULL,
    wrapped_key   BYTEA NOT NULL,
    master_kid    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    rewrapped_at  TIMESTAMPTZ,
    retired_at    TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, kid)
);
CREATE UNIQUE INDEX tenant_keys_active_key ON tenant_keys (tenant_id) WHERE retired_at IS NULL;
GRANT SELECT, INSERT, UPDATE ON tenant_keys TO azotte_app;
ALTER TABLE tenant_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_keys
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));
