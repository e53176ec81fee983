-- Offers, checkouts, subscriptions and the entitlements they grant (issue 8).
-- An offer is stored (not only signed): bound to its customer and storefront, with the priced
-- items it proposes, until it expires. Showcase offers have no customer and cannot be checked out.
CREATE TABLE offers (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    id             TEXT NOT NULL,
    customer_id    TEXT,
    storefront_id  TEXT NOT NULL,
    intent         TEXT NOT NULL CHECK (intent IN ('new', 'replace', 'winback', 'showcase')),
    items          JSONB NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id)
);

-- A checkout is its own job: `processing` until a worker (or the request's own task) has
-- created the subscription and charged; claimed through `locked_until`.
CREATE TABLE checkouts (
    tenant_id          TEXT NOT NULL,
    environment        TEXT NOT NULL,
    id                 TEXT NOT NULL,
    customer_id        TEXT NOT NULL,
    offer_id           TEXT NOT NULL,
    price_id           TEXT NOT NULL,
    payment_method_id  TEXT,
    status             TEXT NOT NULL CHECK (status IN ('processing', 'requires_action', 'succeeded', 'failed')),
    failure_code       TEXT,
    subscription_id    TEXT,
    payment_id         TEXT,
    next_action        TEXT,
    correlation_id     TEXT NOT NULL,
    locked_until       TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id)
);
CREATE INDEX checkouts_status_idx ON checkouts (tenant_id, environment, status);

CREATE TABLE subscriptions (
    tenant_id             TEXT NOT NULL,
    environment           TEXT NOT NULL,
    id                    TEXT NOT NULL,
    customer_id           TEXT NOT NULL,
    storefront_id         TEXT NOT NULL,
    bundle_id             TEXT NOT NULL,
    family                TEXT NOT NULL,
    price_id              TEXT NOT NULL,
    price_version         INTEGER NOT NULL,
    amount                BIGINT NOT NULL CHECK (amount >= 0),
    currency              TEXT NOT NULL,
    period_unit           TEXT NOT NULL CHECK (period_unit IN ('day', 'week', 'month', 'year')),
    period_count          INTEGER NOT NULL CHECK (period_count > 0),
    status                TEXT NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'paused', 'canceled', 'expired')),
    anchor                TIMESTAMPTZ NOT NULL,
    period_start          TIMESTAMPTZ NOT NULL,
    period_end            TIMESTAMPTZ NOT NULL,
    periods               INTEGER NOT NULL,
    trial_end             TIMESTAMPTZ,
    had_trial             BOOLEAN NOT NULL,
    ends_at               TIMESTAMPTZ,
    canceled_immediately  BOOLEAN NOT NULL,
    paused_at             TIMESTAMPTZ,
    payment_method_id     TEXT,
    cancel_reason         TEXT,
    checkout_id           TEXT NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CHECK (period_start < period_end),
    CONSTRAINT subscriptions_checkout_key UNIQUE (tenant_id, environment, checkout_id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);
CREATE INDEX subscriptions_customer_idx ON subscriptions (tenant_id, environment, customer_id);
CREATE INDEX subscriptions_due_idx ON subscriptions (tenant_id, environment, status, period_end);
-- One live subscription per customer and bundle family: two checkouts racing for the same
-- family cannot both create one (the loser's payment is refunded).
CREATE UNIQUE INDEX subscriptions_live_family ON subscriptions (tenant_id, environment, customer_id, family)
    WHERE status <> 'expired';

-- What a subscription grants, expanded (includes resolved) when it is created: the hot read
-- joins these with the subscription's state.
CREATE TABLE entitlement_grants (
    tenant_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    subscription_id  TEXT NOT NULL,
    customer_id      TEXT NOT NULL,
    entitlement_key  TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('boolean', 'quantity')),
    quantity         BIGINT,
    unit             TEXT,
    PRIMARY KEY (tenant_id, environment, subscription_id, entitlement_key),
    FOREIGN KEY (tenant_id, environment, subscription_id) REFERENCES subscriptions (tenant_id, environment, id)
);
CREATE INDEX entitlement_grants_customer_idx ON entitlement_grants (tenant_id, environment, customer_id, entitlement_key);

GRANT SELECT, INSERT, UPDATE ON offers, checkouts, subscriptions, entitlement_grants TO azotte_app;
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['offers', 'checkouts', 'subscriptions', 'entitlement_grants'] LOOP
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

-- The PSP's instruction while a payment awaits customer action (3-D Secure), for the client.
ALTER TABLE payments ADD COLUMN next_action TEXT;
