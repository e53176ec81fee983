-- An offered item is checked out once: while a checkout of the same offer and price is in
-- progress or has succeeded, a second one is refused up front (409 `offer_in_checkout`)
-- instead of charging and then failing `already_subscribed` with a refund (a double click
-- without an Idempotency-Key). A checkout that failed (a declined card) frees the item for
-- another try; other items of the offer (other families) stay open.
CREATE UNIQUE INDEX checkouts_offer_once ON checkouts (tenant_id, environment, offer_id, price_id)
    WHERE status <> 'failed';
