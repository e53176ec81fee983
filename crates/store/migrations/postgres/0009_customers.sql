-- Customers and their payment methods live apart from tenant and platform data, in their own
-- schema (the serving pool's search_path includes it). Personal fields exist only inside `pii`:
-- sealed under the customer's own data key, itself sealed under the tenant data key (which the
-- platform master key wraps). Email and phone are findable through keyed hashes only.
CREATE SCHEMA customer_data;
GRANT USAGE ON SCHEMA customer_data TO azotte_app;

CREATE TABLE customer_data.customers (
    tenant_id     TEXT NOT NULL,
    environment   TEXT NOT NULL,
    id            TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    email_hash    TEXT,
    phone_hash    TEXT,
    wrapped_key   BYTEA,
    pii           BYTEA,
    country       TEXT,
    language      TEXT,
    legal_type    TEXT NOT NULL CHECK (legal_type IN ('individual', 'company')),
    status        TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT customers_external_id_key UNIQUE (tenant_id, environment, external_id),
    CONSTRAINT customers_email_key UNIQUE (tenant_id, environment, email_hash),
    CONSTRAINT customers_phone_key UNIQUE (tenant_id, environment, phone_hash)
);

CREATE TABLE customer_data.payment_methods (
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
    expired         BOOLEAN NOT NULL,
    is_default      BOOLEAN NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, customer_id) REFERENCES customer_data.customers (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, psp_account_id) REFERENCES psp_accounts (tenant_id, environment, id)
);
CREATE INDEX payment_methods_customer_idx ON customer_data.payment_methods (tenant_id, environment, customer_id);
CREATE UNIQUE INDEX payment_methods_one_default ON customer_data.payment_methods (tenant_id, environment, customer_id)
    WHERE is_default AND state <> 'deleted';

GRANT SELECT, INSERT, UPDATE ON customer_data.customers, customer_data.payment_methods TO azotte_app;

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['customers', 'payment_methods'] LOOP
        EXECUTE format('ALTER TABLE customer_data.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE customer_data.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON customer_data.%I
            USING (tenant_id = current_setting('azotte.tenant_id', true)
                   AND environment = current_setting('azotte.environment', true))
            WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
                   AND environment = current_setting('azotte.environment', true))$p$, t);
    END LOOP;
END
$$;
