-- Every invoice prefix each storefront has had (docs/decisions/0008-invoice-numbering.md, "No
-- number twice in a tenant environment"). Rows go only with their storefront; not unique by prefix
-- (storefronts that shared a prefix before the rule keep it).
CREATE TABLE storefront_invoice_prefixes (
    tenant_id      TEXT NOT NULL,
    environment    TEXT NOT NULL,
    prefix         TEXT NOT NULL,
    storefront_id  TEXT NOT NULL,
    since          TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, prefix, storefront_id),
    FOREIGN KEY (tenant_id, environment, storefront_id) REFERENCES storefronts (tenant_id, environment, id)
        ON DELETE CASCADE
);
INSERT INTO storefront_invoice_prefixes (tenant_id, environment, prefix, storefront_id, since)
    SELECT tenant_id, environment, invoice_prefix, id, created_at FROM storefronts;
