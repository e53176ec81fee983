-- The Idempotency-Key a payment was created under: one payment per key and tenant environment,
-- enforced here, so a retry after a crash (when the HTTP layer's record may be lost or its lock
-- expired) finds the payment instead of charging again.
ALTER TABLE payments ADD COLUMN request_key TEXT;
CREATE UNIQUE INDEX payments_request_key ON payments (tenant_id, environment, request_key)
    WHERE request_key IS NOT NULL;
