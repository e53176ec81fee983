-- The catalog: storefronts, entitlements, bundles and prices (with immutable price versions).
-- Every table is tenant- and environment-owned: RLS matches both, so a query that forgets either
-- filter sees nothing of another tenant or environment.

CREATE TABLE storefronts (
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    environment       TEXT NOT NULL,
    id                TEXT NOT NULL,
    name              TEXT NOT NULL,
    type              TEXT NOT NULL CHECK (type IN ('web', 'mobile', 'partner', 'ott', 'telecom')),
    default_currency  TEXT NOT NULL,
    currencies        JSONB NOT NULL,
    default_language  TEXT NOT NULL,
    countries         JSONB NOT NULL,
    tax               JSONB NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    dunning           JSONB NOT NULL,
    invoice_prefix    TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id)
);

CREATE TABLE entitlements (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    environment  TEXT NOT NULL,
    id           TEXT NOT NULL,
    key          TEXT NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('boolean', 'quantity')),
    unit         TEXT,
    includes     JSONB NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT entitlements_key_key UNIQUE (tenant_id, environment, key)
);

CREATE TABLE bundles (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    environment  TEXT NOT NULL,
    id           TEXT NOT NULL,
    key          TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('subscription', 'one_time', 'add_on')),
    family       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('draft', 'active', 'archived')),
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT bundles_key_key UNIQUE (tenant_id, environment, key)
);

CREATE TABLE bundle_entitlements (
    tenant_id       TEXT NOT NULL,
    environment     TEXT NOT NULL,
    bundle_id       TEXT NOT NULL,
    entitlement_id  TEXT NOT NULL,
    quantity        BIGINT,
    PRIMARY KEY (tenant_id, environment, bundle_id, entitlement_id),
    FOREIGN KEY (tenant_id, environment, bundle_id) REFERENCES bundles (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, entitlement_id) REFERENCES entitlements (tenant_id, environment, id)
);
CREATE INDEX bundle_entitlements_entitlement_idx ON bundle_entitlements (tenant_id, environment, entitlement_id);

-- A price: one bundle in one storefront, one currency and billing period. What it costs lives in
-- its versions.
CREATE TABLE prices (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    id             TEXT NOT NULL,
    bundle_id      TEXT NOT NULL,
    storefront_id  TEXT NOT NULL,
    currency       TEXT NOT NULL,
    period_unit    TEXT CHECK (period_unit IN ('day', 'week', 'month', 'year')),
    period_count   INTEGER CHECK (period_count > 0),
    status         TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, bundle_id) REFERENCES bundles (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);
CREATE UNIQUE INDEX prices_active_key ON prices
    (tenant_id, environment, bundle_id, storefront_id, currency, COALESCE(period_unit, ''), COALESCE(period_count, 0))
    WHERE status = 'active';
CREATE INDEX prices_storefront_idx ON prices (tenant_id, environment, storefront_id);
CREATE INDEX prices_bundle_idx ON prices (tenant_id, environment, bundle_id);

-- Immutable: "changing" a price adds a version with an effective date; subscriptions keep the
-- version they were sold.
CREATE TABLE price_versions (
    tenant_id                      TEXT NOT NULL,
    environment                    TEXT NOT NULL,
    id                             TEXT NOT NULL,
    price_id                       TEXT NOT NULL,
    version                        INTEGER NOT NULL CHECK (version > 0),
    amount                         BIGINT NOT NULL CHECK (amount >= 0),
    trial_days                     INTEGER CHECK (trial_days BETWEEN 1 AND 365),
    trial_payment_method_required  BOOLEAN,
    tax_behaviour                  TEXT NOT NULL CHECK (tax_behaviour IN ('inclusive', 'exclusive')),
    effective_from                 TIMESTAMPTZ NOT NULL,
    created_at                     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT price_versions_version_key UNIQUE (tenant_id, environment, price_id, version),
    FOREIGN KEY (tenant_id, environment, price_id) REFERENCES prices (tenant_id, environment, id)
);

CREATE FUNCTION price_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'price versions are immutable; add a version instead' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER price_versions_no_update BEFORE UPDATE OR DELETE ON price_versions
    FOR EACH ROW EXECUTE FUNCTION price_versions_immutable();

GRANT SELECT, INSERT, UPDATE, DELETE ON storefronts, entitlements, bundles, bundle_entitlements, prices TO azotte_app;
GRANT SELECT, INSERT ON price_versions TO azotte_app;

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['storefronts', 'entitlements', 'bundles', 'bundle_entitlements', 'prices', 'price_versions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = current_setting('azotte.tenant_id', true)
                   AND environment = current_setting('azotte.environment', true))
            WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
                   AND environment = current_setting('azotte.environment', true))$p$, t);
    END LOOP;
END
$$;
