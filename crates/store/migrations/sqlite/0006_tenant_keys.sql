-- Envelope encryption: each tenant's data keys, wrapped (XChaCha20-Poly1305) by the platform
-- master key that master_kid names. At most one active (unretired) key per tenant.
CREATE TABLE tenant_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    kid           TEXT NOT NULL,
    wrapped_key   BLOB NOT NULL,
    master_kid    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    rewrapped_at  TEXT,
    retired_at    TEXT,
    PRIMARY KEY (tenant_id, kid)
);
CREATE UNIQUE INDEX tenant_keys_active_key ON tenant_keys (tenant_id) WHERE retired_at IS NULL;
