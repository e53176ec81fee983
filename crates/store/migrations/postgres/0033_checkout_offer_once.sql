-- An offered item is checked out by one checkout at a time: while a checkout of the same offer
-- and price is in progress, a second one is refused up front (409 `offer_in_checkout`) instead
-- of both charging and one failing `already_subscribed` with a refund (a double click without
-- an Idempotency-Key). Once the first has ended, another checkout of the item is accepted (its
-- job refuses a family already subscribed before charging). Only in-progress rows are
-- indexed; two in-progress checkouts of one item left from before this migration (a double
-- click stuck in 3-D Secure) would make it fail — let them end first.
CREATE UNIQUE INDEX checkouts_offer_once ON checkouts (tenant_id, environment, offer_id, price_id)
    WHERE status IN ('processing', 'requires_action');
