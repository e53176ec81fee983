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
    credentials                 BLOB,
    api_secret_fingerprint      TEXT,
    api_secret_last4            TEXT,
    webhook_secret_fingerprint  TEXT,
    webhook_secret_last4        TEXT,
    priority                    INTEGER NOT NULL,
    weight                      INTEGER NOT NULL,
    currencies                  TEXT NOT NULL,
    channels                    TEXT NOT NULL,
    status                      TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at                  TEXT NOT NULL,
    updated_at                  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);
CREATE INDEX psp_accounts_storefront_idx ON psp_accounts (tenant_id, environment, storefront_id);
