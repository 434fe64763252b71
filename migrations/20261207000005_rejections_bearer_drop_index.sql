-- no-transaction
-- The same for rejected deliveries (see 20261207000004).
CREATE INDEX CONCURRENTLY IF NOT EXISTS rejected_deliveries_bearer_kept_idx
    ON singapay.rejected_deliveries (received_at) WHERE access_token <> '';
