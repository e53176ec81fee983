-- PSP accounts: each belongs to exactly one storefront. Credentials are stored only as a
-- ciphertext under the tenant's data key (docs/decisions/0004-envelope-encryption.md), bound to
-- tenant, environment, storefront and account; reads show a fingerprint and the last four
-- characters.
CREATE TABLE psp_accounts (
    tenant_id                   TEXT NOT NULL,
    environment                 TEXT NOT NULL,
    id                          TEXT NOT NULL,
    storefront_id               TEXT NOT NULL,
    connector                   TEXT NOT NULL CHECK (connector IN ('sandbox', 'stripe')),
    display_name                TEXT NOT NULL,
    mode                        TEXT NOT NULL CHECK (mode IN ('test', 'live')),
    credentials                 BYTEA,
    api_secret_fingerprint      TEXT,
    api_secret_last4            TEXT,
    webhook_secret_fingerprint  TEXT,
    webhook_secret_last4        TEXT,
    priority                    INTEGER NOT NULL,
    weight                      INTEGER NOT NULL,
    currencies                  JSONB NOT NULL,
    channels                    JSONB NOT NULL,
    status                      TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at                  TIMESTAMPTZ NOT NULL,
    updated_at                  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);
CREATE INDEX psp_accounts_storefront_idx ON psp_accounts (tenant_id, environment, storefront_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON psp_accounts TO azotte_app;
ALTER TABLE psp_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE psp_accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON psp_accounts
    USING (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true));
