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
    amount             INTEGER NOT NULL CHECK (amount > 0),
    currency           TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'requires_action', 'authorized', 'captured', 'failed', 'canceled', 'unknown')),
    attempts           INTEGER NOT NULL,
    decline_code       TEXT,
    captured_amount    INTEGER NOT NULL CHECK (captured_amount >= 0 AND captured_amount <= amount),
    refunded_amount    INTEGER NOT NULL CHECK (refunded_amount >= 0 AND refunded_amount <= captured_amount),
    description        TEXT NOT NULL,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);
CREATE INDEX payments_customer_idx ON payments (tenant_id, environment, customer_id);

CREATE TABLE refunds (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    id             TEXT NOT NULL,
    payment_id     TEXT NOT NULL,
    amount         INTEGER NOT NULL CHECK (amount > 0),
    status         TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    psp_refund_id  TEXT,
    reason         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, payment_id) REFERENCES payments (tenant_id, environment, id)
);
CREATE INDEX refunds_payment_idx ON refunds (tenant_id, environment, payment_id);

