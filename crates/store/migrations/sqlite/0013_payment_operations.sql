-- Payment operations: Stripe customers of payment methods, payments and refunds queued while
-- money movement is paused, the tenant safe-mode switch, and PSP webhook events received
-- (their ids make redelivered events harmless).
ALTER TABLE payment_methods ADD COLUMN psp_customer_id TEXT;
ALTER TABLE payments ADD COLUMN queued_reason TEXT CHECK (queued_reason IN ('safe_mode'));
ALTER TABLE refunds ADD COLUMN queued_reason TEXT CHECK (queued_reason IN ('safe_mode'));
CREATE INDEX payments_status_idx ON payments (tenant_id, environment, status, updated_at);

-- One row per tenant in safe mode (all of its environments): no money moves while it exists.
CREATE TABLE tenant_safe_mode (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants (id),
    reason      TEXT NOT NULL,
    enabled_by  TEXT NOT NULL,
    enabled_at  TEXT NOT NULL
);

CREATE TABLE psp_webhook_events (
    tenant_id       TEXT NOT NULL,
    environment     TEXT NOT NULL,
    psp_account_id  TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    event_created   TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, psp_account_id, event_id),
    FOREIGN KEY (tenant_id, environment, psp_account_id) REFERENCES psp_accounts (tenant_id, environment, id)
);
