-- Invoices, credit notes and their fiscalization (issue 9).
--
-- Numbers are gapless per storefront series: `invoice_series` holds the last number of each
-- series, and a document takes the next one with a single upsert on that row inside the
-- transaction that issues it. Concurrent issuers wait on the row; a rolled-back transaction
-- gives its number back with everything else (docs/decisions/0008-invoice-numbering.md).
CREATE TABLE invoice_series (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    storefront_id  TEXT NOT NULL,
    series         TEXT NOT NULL,
    last_number    INTEGER NOT NULL CHECK (last_number > 0),
    PRIMARY KEY (tenant_id, environment, storefront_id, series),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);

CREATE TABLE invoices (
    tenant_id                TEXT NOT NULL,
    environment              TEXT NOT NULL,
    id                       TEXT NOT NULL,
    storefront_id            TEXT NOT NULL,
    customer_id              TEXT NOT NULL,
    subscription_id          TEXT,
    series                   TEXT,
    sequence                 INTEGER,
    number                   TEXT,
    status                   TEXT NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'void', 'uncollectible')),
    currency                 TEXT NOT NULL,
    customer_country         TEXT,
    net                      INTEGER NOT NULL CHECK (net >= 0),
    tax                      INTEGER NOT NULL CHECK (tax >= 0),
    total                    INTEGER NOT NULL CHECK (total = net + tax),
    amount_paid              INTEGER NOT NULL CHECK (amount_paid >= 0 AND amount_paid <= total),
    amount_credited          INTEGER NOT NULL CHECK (amount_credited >= 0 AND amount_credited <= amount_paid),
    fiscal_provider          TEXT NOT NULL,
    issued_at                TEXT,
    paid_at                  TEXT,
    voided_at                TEXT,
    uncollectible_at         TEXT,
    created_at               TEXT NOT NULL,
    updated_at               TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CHECK ((number IS NULL) = (status = 'draft')),
    CONSTRAINT invoices_number_key UNIQUE (tenant_id, environment, storefront_id, number),
    CONSTRAINT invoices_sequence_key UNIQUE (tenant_id, environment, storefront_id, series, sequence),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
);
CREATE INDEX invoices_customer_idx ON invoices (tenant_id, environment, customer_id, id);
CREATE INDEX invoices_subscription_idx ON invoices (tenant_id, environment, subscription_id, id);

-- Lines are written once with their invoice and never changed.
CREATE TABLE invoice_lines (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    invoice_id     TEXT NOT NULL,
    line_no        INTEGER NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('subscription', 'proration', 'one_time')),
    description    TEXT NOT NULL,
    unit_amount    INTEGER NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    amount         INTEGER NOT NULL,
    tax_behaviour  TEXT NOT NULL CHECK (tax_behaviour IN ('inclusive', 'exclusive')),
    rate_bp        INTEGER NOT NULL CHECK (rate_bp >= 0 AND rate_bp <= 10000),
    net            INTEGER NOT NULL,
    tax            INTEGER NOT NULL,
    gross          INTEGER NOT NULL CHECK (gross = net + tax),
    period_start   TEXT,
    period_end     TEXT,
    PRIMARY KEY (tenant_id, environment, invoice_id, line_no),
    FOREIGN KEY (tenant_id, environment, invoice_id) REFERENCES invoices (tenant_id, environment, id)
);

-- The payments that settled an invoice.
CREATE TABLE invoice_payments (
    tenant_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    invoice_id   TEXT NOT NULL,
    payment_id   TEXT NOT NULL,
    amount       INTEGER NOT NULL CHECK (amount >= 0),
    created_at   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, invoice_id, payment_id),
    FOREIGN KEY (tenant_id, environment, invoice_id) REFERENCES invoices (tenant_id, environment, id),
    FOREIGN KEY (tenant_id, environment, payment_id) REFERENCES payments (tenant_id, environment, id)
);
CREATE INDEX invoice_payments_payment_idx ON invoice_payments (tenant_id, environment, payment_id);

-- One credit note per refund that gave money back for an invoice, numbered in its own series.
CREATE TABLE credit_notes (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    id             TEXT NOT NULL,
    storefront_id  TEXT NOT NULL,
    invoice_id     TEXT NOT NULL,
    payment_id     TEXT NOT NULL,
    refund_id      TEXT NOT NULL,
    series         TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    number         TEXT NOT NULL,
    currency       TEXT NOT NULL,
    net            INTEGER NOT NULL,
    tax            INTEGER NOT NULL,
    total          INTEGER NOT NULL CHECK (total > 0 AND total = net + tax),
    reason         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT credit_notes_number_key UNIQUE (tenant_id, environment, storefront_id, number),
    CONSTRAINT credit_notes_sequence_key UNIQUE (tenant_id, environment, storefront_id, series, sequence),
    CONSTRAINT credit_notes_refund_key UNIQUE (tenant_id, environment, refund_id),
    FOREIGN KEY (tenant_id, environment, invoice_id) REFERENCES invoices (tenant_id, environment, id)
);
CREATE INDEX credit_notes_invoice_idx ON credit_notes (tenant_id, environment, invoice_id);

CREATE TABLE credit_note_lines (
    tenant_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    credit_note_id   TEXT NOT NULL,
    line_no          INTEGER NOT NULL,
    invoice_line_no  INTEGER NOT NULL,
    description      TEXT NOT NULL,
    rate_bp          INTEGER NOT NULL,
    net              INTEGER NOT NULL,
    tax              INTEGER NOT NULL,
    gross            INTEGER NOT NULL CHECK (gross = net + tax),
    PRIMARY KEY (tenant_id, environment, credit_note_id, line_no),
    FOREIGN KEY (tenant_id, environment, credit_note_id) REFERENCES credit_notes (tenant_id, environment, id)
);

-- What the storefront's fiscalization provider is asked to do with a document, retried by the
-- worker until done: attempts and the next attempt's time (also the lease of a running one).
CREATE TABLE fiscal_records (
    tenant_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    document_id      TEXT NOT NULL,
    action           TEXT NOT NULL CHECK (action IN ('issue', 'cancel', 'credit_note')),
    invoice_id       TEXT NOT NULL,
    provider         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts         INTEGER NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    reference        TEXT,
    document         TEXT,
    signature        TEXT,
    key_id           TEXT,
    public_key       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, document_id, action),
    FOREIGN KEY (tenant_id, environment, invoice_id) REFERENCES invoices (tenant_id, environment, id)
);
CREATE INDEX fiscal_records_due_idx ON fiscal_records (tenant_id, environment, status, next_attempt_at);
CREATE INDEX fiscal_records_invoice_idx ON fiscal_records (tenant_id, environment, invoice_id);

-- A storefront's fiscalization provider (`none` or `local`).
ALTER TABLE storefronts ADD COLUMN fiscalization TEXT NOT NULL DEFAULT 'none';
