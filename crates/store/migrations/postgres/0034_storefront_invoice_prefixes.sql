-- Every invoice prefix each storefront has had (docs/decisions/0008-invoice-numbering.md, "No
-- number twice in a tenant environment"). A storefront may not take a prefix another storefront
-- of its tenant environment has had: the old prefix's invoices (or ones being numbered under it
-- while the prefix changes) keep their numbers. Rows go only with their storefront (which can be
-- deleted only while nothing, so no invoice, refers to it). Not unique by prefix:
-- storefronts that shared a prefix before the rule keep it.
CREATE TABLE storefront_invoice_prefixes (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    prefix         TEXT NOT NULL,
    storefront_id  TEXT NOT NULL,
    since          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, prefix, storefront_id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
        ON DELETE CASCADE
);
-- The current prefixes of the existing storefronts. Row-level security applies to the tables'
-- owner too (FORCE), and this transaction has entered no tenant: the owner reads storefronts
-- past it for this one statement (the new table has no security yet), all inside the
-- migration's transaction.
ALTER TABLE storefronts NO FORCE ROW LEVEL SECURITY;
INSERT INTO storefront_invoice_prefixes (tenant_id, environment, prefix, storefront_id, since)
    SELECT tenant_id, environment, invoice_prefix, id, created_at FROM storefronts;
ALTER TABLE storefronts FORCE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, DELETE ON storefront_invoice_prefixes TO azotte_app;

ALTER TABLE storefront_invoice_prefixes ENABLE ROW LEVEL SECURITY;
ALTER TABLE storefront_invoice_prefixes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON storefront_invoice_prefixes
    USING (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true)
           AND environment = current_setting('azotte.environment', true));
