-- no-transaction
-- Deliveries whose bearer token is still kept, by age: what prune walks to drop old tokens,
-- without reading the rows it already dropped them from. Built CONCURRENTLY: intake keeps
-- writing while it is built (one statement per file: CONCURRENTLY runs outside any
-- transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_bearer_kept_idx
    ON singapay.deliveries (received_at) WHERE access_token <> '';
