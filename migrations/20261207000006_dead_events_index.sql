-- no-transaction
-- Dead events, for /metrics: singapay_queue_events{state="dead"} is counted through this
-- index, which holds one entry per dead event, instead of reading every finished event the
-- log keeps for RETENTION_DAYS (a scrape's cost would grow with the history). Built
-- CONCURRENTLY: intake and consumers keep writing the log while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS event_log_dead_idx ON singapay.event_log (id) WHERE state = 'dead';
