-- Indexes `prune` needs to find old rows and to know which deliveries are still referenced.

CREATE INDEX transactions_last_delivery_idx ON singapay.transactions (last_delivery_id);
CREATE INDEX transactions_first_delivery_idx ON singapay.transactions (first_delivery_id);
CREATE INDEX transaction_events_done_idx ON singapay.transaction_events (finished_at) WHERE state = 'done';
CREATE INDEX deliveries_last_received_at_idx ON singapay.deliveries (last_received_at);
CREATE INDEX rejected_deliveries_last_received_at_idx ON singapay.rejected_deliveries (last_received_at);
CREATE INDEX rejected_deliveries_replayed_idx ON singapay.rejected_deliveries (replayed_delivery_id);
