-- Invoices waiting for their number (docs/decisions/0008-invoice-numbering.md, "Numbers taken
-- per batch"): drafts committed without a number, numbered by the numbering pass. SQLite's one
-- writer never finds a series row busy, so only `invoice_numbering = "deferred"` fills it here.
CREATE TABLE invoice_numbering (
    tenant_id       TEXT NOT NULL,
    environment     TEXT NOT NULL,
    invoice_id      TEXT NOT NULL,
    storefront_id   TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    causation_id    TEXT,
    lines           INTEGER NOT NULL,
    rate_bp         INTEGER NOT NULL,
    queued_at       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, invoice_id),
    FOREIGN KEY (tenant_id, environment, invoice_id) REFERENCES invoices (tenant_id, environment, id)
);
CREATE INDEX invoice_numbering_queued_idx ON invoice_numbering (tenant_id, environment, queued_at, invoice_id);
