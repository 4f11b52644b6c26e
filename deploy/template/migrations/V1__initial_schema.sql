-- The example's schema. Never edit a migration once it ran anywhere: every change is the next
-- file (V2__..., V3__...), written so that the release before it still works on the result
-- (docs/migrations.md).

-- Items: ids are UUIDv7, so ordering by id is ordering by creation (keyset pagination).
CREATE TABLE items (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: written in the same transaction as the change it announces. The relay
-- claims rows for a while (claimed_until) instead of holding their row locks across the
-- broker's confirms.
CREATE TABLE outbox (
    seq            bigserial PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    routing_key    text NOT NULL,
    payload        jsonb NOT NULL,
    headers        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz,
    claimed_until  timestamptz
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Idempotency-Key: the first response of a key, replayed for the same request. Keys are scoped
-- by method and route: the same key sent to two endpoints is two keys.
CREATE TABLE idempotency_keys (
    key          text NOT NULL,
    request      jsonb NOT NULL,
    status       smallint NOT NULL,
    body         jsonb NOT NULL,
    location     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    scope        text NOT NULL,
    PRIMARY KEY (scope, key)
);
-- Pruning by age (crate::housekeeping) walks it.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Consumer side: processed event ids make redelivery harmless (pruned by age, so indexed by
-- it); the projection is observable.
CREATE TABLE processed_events (
    event_id      uuid PRIMARY KEY,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_processed ON processed_events (processed_at);
CREATE TABLE event_counts (
    event_type  text PRIMARY KEY,
    count       bigint NOT NULL DEFAULT 0
);
