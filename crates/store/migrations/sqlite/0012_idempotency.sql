-- Idempotency-Key records (DESIGN.md §8, docs/decisions/0006-idempotency-keys.md): the first
-- response to a tenant POST that carried `Idempotency-Key`, replayed to retries with the same
-- key. One row per (tenant, environment, key); the primary key makes the claim of a key one
-- atomic INSERT … ON CONFLICT DO NOTHING. `fingerprint` is a keyed hash of the request (method,
-- path and query, body), `principal_id` who sent it. While the handler runs the row is
-- `in_flight` with `locked_until` set (a row whose lock ran out belongs to a crashed process and
-- may be taken over); `complete` rows hold the response: status, a few headers, and the body
-- sealed under the tenant data key (it may hold decrypted personal data). Rows past
-- `expires_at` count as absent and are purged by the worker.
CREATE TABLE idempotency_keys (
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    environment       TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    principal_id      TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('in_flight', 'complete')),
    locked_until      TEXT,
    response_status   INTEGER CHECK (response_status BETWEEN 100 AND 599),
    response_headers  TEXT,
    response_body     BLOB,
    created_at        TEXT NOT NULL,
    expires_at        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, idempotency_key),
    CHECK ((state = 'in_flight') = (locked_until IS NOT NULL)),
    CHECK ((state = 'complete') = (response_status IS NOT NULL AND response_headers IS NOT NULL
                                   AND response_body IS NOT NULL))
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (tenant_id, environment, expires_at);
