-- Customers and their payment methods (a separate schema on PostgreSQL). Personal fields exist only inside `pii`:
-- sealed under the customer's own data key, itself sealed under the tenant data key (which the
-- platform master key wraps). Email and phone are findable through keyed hashes only.

CREATE TABLE customers (
    tenant_id     TEXT NOT NULL,
    environment   TEXT NOT NULL,
    id            TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    email_hash    TEXT,
    phone_hash    TEXT,
    wrapped_key   BLOB,
    pii           BLOB,
    country       TEXT,
    language      TEXT,
    legal_type    TEXT NOT NULL CHECK (legal_type IN ('individual', 'company')),
    status        TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT customers_external_id_key UNIQUE (tenant_id, environment, external_id),
    CONSTRAINT customers_email_key UNIQUE (tenant_id, environment, email_hash),
    CONSTRAINT customers_phone_key UNIQUE (tenant_id, environment, phone_hash)
);

CREATE TABLE payment_methods (
    tenant_id       TEXT NOT NULL,
    environment     TEXT NOT NULL,
    id              TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    storefront_id   TEXT NOT NULL,
    psp_account_id  TEXT NOT NULL,
    token           TEXT NOT NULL,
    brand           TEXT NOT NULL,
    last4           TEXT NOT NULL,
    exp_month       INTEGER NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year        INTEGER NOT NULL,
    fingerprint     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('active', 'inactive', 'deleted')),
    expired         INTEGER NOT NULL,
    is_default      INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, customer_id) REFERENCES customers (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, psp_account_id) REFERENCES psp_accounts (tenant_id, environment, id)
);
CREATE INDEX payment_methods_customer_idx ON payment_methods (tenant_id, environment, customer_id);
CREATE UNIQUE INDEX payment_methods_one_default ON payment_methods (tenant_id, environment, customer_id)
    WHERE is_default AND state <> 'deleted';

