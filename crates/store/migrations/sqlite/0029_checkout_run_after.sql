-- A checkout's job: `locked_until` is the lease of the runner working on it (the request's own
-- task, the worker, or a PSP webhook's task; one at a time), `run_after` when the worker looks
-- again at a checkout a run left waiting (for its customer's 3-D Secure, or its payment's
-- outcome). A PSP webhook about its payment runs it before that.
ALTER TABLE checkouts ADD COLUMN run_after TEXT;
