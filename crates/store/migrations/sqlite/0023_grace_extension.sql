-- A past-due subscription whose renewal retry was deferred (tenant safe mode, every PSP account
-- degraded) keeps access until this instant even past its policy's grace, so an outage does not
-- churn customers (issue 9). Cleared when the subscription is renewed.
ALTER TABLE subscriptions ADD COLUMN grace_extended_until TEXT;
