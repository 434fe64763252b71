-- no-transaction
-- Transactions by where their history begins and when they last changed, with status and
-- key, for retiring a day: the day's range is read index-only (the transactions of the day
-- that must be kept are a few among tens of thousands), and the transactions from before
-- history_from ('-infinity') changed since the cutoff are one range. Built CONCURRENTLY:
-- intake keeps writing transactions while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_history_from_idx
    ON singapay.transactions (history_from, updated_at) INCLUDE (status, transaction_key);
