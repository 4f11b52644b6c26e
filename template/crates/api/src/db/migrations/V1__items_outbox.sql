-- Items: ids are UUIDv7, so ordering by id is ordering by creation (keyset pagination).
CREATE TABLE items (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: written in the same transaction as the change it announces.
CREATE TABLE outbox (
    seq          bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    routing_key  text NOT NULL,
    payload      jsonb NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Idempotency-Key: the first response of a key, replayed for the same request.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request      jsonb NOT NULL,
    status       smallint NOT NULL,
    body         jsonb NOT NULL,
    location     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Consumer side: processed event ids make redelivery harmless; the projection is observable.
CREATE TABLE processed_events (
    event_id      uuid PRIMARY KEY,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE event_counts (
    event_type  text PRIMARY KEY,
    count       bigint NOT NULL DEFAULT 0
);
