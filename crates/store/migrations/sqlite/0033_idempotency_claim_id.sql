-- Each claim of an Idempotency-Key carries a random id of its own, so that a request whose claim
-- went unconfirmed (the connection failed at its commit) can tell its own claim from a
-- concurrent identical request's (decision 0006, "An unconfirmed claim"). Rows claimed before
-- have none.
ALTER TABLE idempotency_keys ADD COLUMN claim_id TEXT;
