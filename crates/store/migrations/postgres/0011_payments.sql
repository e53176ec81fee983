-- Payments and refunds. The refund ceiling lives in the database: `refunded_amount` (the sum of
-- pending and succeeded refunds) can never exceed `captured_amount`.
CREATE TABLE payments (
    tenant_id          TEXT NOT NULL,
    environment        TEXT NOT NULL,
    id                 TEXT NOT NULL,
    storefront_id      TEXT NOT NULL,
    customer_id        TEXT NOT NULL,
    payment_method_id  TEXT NOT NULL,
    psp_account_id     TEXT,
    psp_payment_id     TEXT,
    amount             BIGINT NOT NULL CHECK (amount > 0),
    currency           TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'requires_action', 'authorized', 'captured', 'failed', 'canceled', 'unknown')),
    attempts           INTEGER NOT NULL,
    decline_code       TEXT,
    captured_amount    BIGINT NOT NULL CHECK (captured_amount >= 0 AND captured_amount <= amount),
    refunded_amount    BIGINT NOT NULL CHECK (refunded_amount >= 0 AND refunded_amount <= captured_amount),
    description        TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);
CREATE INDEX payments_customer_idx ON payments (tenant_id, environment, customer_id);

CREATE TABLE refunds (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    id             TEXT NOT NULL,
    payment_id     TEXT NOT NULL,
    amount         BIGINT NOT NULL CHECK (amount > 0),
    status         TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    psp_refund_id  TEXT,
    reason         TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, payment_id) REFERENCES payments (tenant_id, environment, id)
);
CREATE INDEX refunds_payment_idx ON refunds (tenant_id, environment, payment_id);

GRANT SELECT, INSERT, UPDATE ON payments, refunds TO azotte_app;
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['payments', 'refunds'] LOOP
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
