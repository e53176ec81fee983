-- Plan changes (issue 9: replace). A replace offer names the subscription it replaces.
ALTER TABLE offers ADD COLUMN subscription_id TEXT;

-- One row per plan change: the prorated figures it was quoted (and charged) at, and where it
-- stands. `processing` while an immediate change's charge is in flight (a retry or the worker
-- finishes it under the same request key), `scheduled` until the renewal at the period end
-- applies it, then `applied`; `failed` when the charge was declined, `superseded` when a later
-- change replaced a scheduled one. At most one open (processing or scheduled) change per
-- subscription.
CREATE TABLE subscription_replacements (
    tenant_id         TEXT NOT NULL,
    environment       TEXT NOT NULL,
    id                TEXT NOT NULL,
    subscription_id   TEXT NOT NULL,
    offer_id          TEXT NOT NULL,
    policy            TEXT NOT NULL CHECK (policy IN ('immediate_prorated', 'at_period_end')),
    kind              TEXT NOT NULL CHECK (kind IN ('upgrade', 'downgrade', 'switch')),
    status            TEXT NOT NULL CHECK (status IN ('processing', 'scheduled', 'applied', 'failed', 'superseded')),
    from_price_id     TEXT NOT NULL,
    from_bundle_id    TEXT NOT NULL,
    from_amount       BIGINT NOT NULL CHECK (from_amount >= 0),
    to_price_id       TEXT NOT NULL,
    to_price_version  INTEGER NOT NULL,
    to_bundle_id      TEXT NOT NULL,
    to_amount         BIGINT NOT NULL CHECK (to_amount >= 0),
    credit            BIGINT NOT NULL CHECK (credit >= 0),
    charge            BIGINT NOT NULL CHECK (charge >= 0),
    amount_due        BIGINT NOT NULL CHECK (amount_due >= 0),
    credit_unused     BIGINT NOT NULL CHECK (credit_unused >= 0),
    period_end        TIMESTAMPTZ NOT NULL,
    effective_at      TIMESTAMPTZ NOT NULL,
    request_key       TEXT NOT NULL,
    payment_id        TEXT,
    failure_code      TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, subscription_id) REFERENCES subscriptions (tenant_id, environment, id)
);
CREATE INDEX subscription_replacements_subscription_idx
    ON subscription_replacements (tenant_id, environment, subscription_id, id);
CREATE UNIQUE INDEX subscription_replacements_open
    ON subscription_replacements (tenant_id, environment, subscription_id)
    WHERE status IN ('processing', 'scheduled');

GRANT SELECT, INSERT, UPDATE ON subscription_replacements TO azotte_app;
-- A plan change swaps a subscription's grants for the new bundle's.
GRANT DELETE ON entitlement_grants TO azotte_app;
ALTER TABLE subscription_replacements ENABLE ROW LEVEL SECURITY;
ALTER TABLE subscription_replacements FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON subscription_replacements
    USING (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true));
