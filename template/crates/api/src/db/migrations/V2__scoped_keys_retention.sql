-- Idempotency keys are scoped by method and route: the same key sent to two endpoints is two keys.
-- The default stays: replicas of the previous release, still running during a rollout (or after
-- a rollback), insert without a scope, and theirs is the only route that takes keys.
ALTER TABLE idempotency_keys ADD COLUMN scope text NOT NULL DEFAULT 'POST /v1/items';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (scope, key);

-- Pruning by age (crate::housekeeping) walks these.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE INDEX processed_events_processed ON processed_events (processed_at);
