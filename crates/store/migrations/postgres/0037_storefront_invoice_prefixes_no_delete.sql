-- Least privilege: the application never deletes a storefront's invoice prefixes itself. Rows
-- go only with their storefront, by the foreign key's ON DELETE CASCADE, which PostgreSQL runs
-- as the table's owner; migration 0034 granted DELETE to the application role all the same.
REVOKE DELETE ON storefront_invoice_prefixes FROM azotte_app;
