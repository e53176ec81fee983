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
    from_amount       INTEGER NOT NULL CHECK (from_amount >= 0),
    to_price_id       TEXT NOT NULL,
    to_price_version  INTEGER NOT NULL,
    to_bundle_id      TEXT NOT NULL,
    to_amount         INTEGER NOT NULL CHECK (to_amount >= 0),
    credit            INTEGER NOT NULL CHECK (credit >= 0),
    charge            INTEGER NOT NULL CHECK (charge >= 0),
    amount_due        INTEGER NOT NULL CHECK (amount_due >= 0),
    credit_unused     INTEGER NOT NULL CHECK (credit_unused >= 0),
    period_end        TEXT NOT NULL,
    effective_at      TEXT NOT NULL,
    request_key       TEXT NOT NULL,
    payment_id        TEXT,
    failure_code      TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, subscription_id) REFERENCES subscriptions (tenant_id, environment, id)
);
CREATE INDEX subscription_replacements_subscription_idx
    ON subscription_replacements (tenant_id, environment, subscription_id, id);
CREATE UNIQUE INDEX subscription_replacements_open
    ON subscription_replacements (tenant_id, environment, subscription_id)
    WHERE status IN ('processing', 'scheduled');
