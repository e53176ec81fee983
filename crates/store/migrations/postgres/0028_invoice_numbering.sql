-- Invoices waiting for their number (docs/decisions/0008-invoice-numbering.md, "Numbers taken
-- per batch"). An issuer that finds its storefront series' row locked by another issuer does not
-- wait for it: it commits its invoice as a `draft` with a row here, and the numbering pass gives
-- the drafts of a series their consecutive numbers together, in one transaction that holds the
-- series row once for all of them. The row carries what the pass journals under the issuer's
-- lineage (its correlation id and action) and its `invoice.issued` body (lines, rate).
CREATE TABLE invoice_numbering (
    tenant_id       TEXT NOT NULL,
    environment     TEXT NOT NULL,
    invoice_id      TEXT NOT NULL,
    storefront_id   TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    causation_id    TEXT,
    lines           INTEGER NOT NULL,
    rate_bp         INTEGER NOT NULL,
    queued_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, invoice_id),
    FOREIGN KEY (tenant_id, environment, invoice_id) REFERENCES invoices (tenant_id, environment, id)
);
CREATE INDEX invoice_numbering_queued_idx ON invoice_numbering (tenant_id, environment, queued_at, invoice_id);
GRANT SELECT, INSERT, DELETE ON invoice_numbering TO azotte_app;

ALTER TABLE invoice_numbering ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoice_numbering FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoice_numbering
    USING (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true));
-- The pass lists which tenant environments have drafts waiting from a platform transaction,
-- before it enters each one; it reads nothing else there.
CREATE POLICY platform_lists ON invoice_numbering FOR SELECT
    USING (current_setting('azotte.platform', true) = 'on');
