-- The relay claims rows for a while instead of holding their row locks (and a connection)
-- across the broker's confirms: publishing loops then share a few connections. Nullable and
-- without a default, so adding it is instant and a replica that ignores it works on.
ALTER TABLE outbox ADD COLUMN claimed_until timestamptz;
