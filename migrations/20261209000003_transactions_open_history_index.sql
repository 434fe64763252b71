-- no-transaction
-- The open transactions by where their history begins: retiring a day reads the few whose
-- history began before the days still kept (index-only). Built CONCURRENTLY.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_open_history_idx
    ON singapay.transactions (history_from) INCLUDE (transaction_key)
    WHERE status IN ('initiated', 'paying', 'pending');
