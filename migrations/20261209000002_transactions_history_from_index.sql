-- no-transaction
-- Transactions by where their history begins and when they last changed (with their
-- status): a day's retirement reads the range of that day (index-only) and, for the
-- transactions from before history_from existed ('-infinity'), those changed since the
-- cutoff. Built CONCURRENTLY: intake keeps writing transactions while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_history_from_idx
    ON singapay.transactions (history_from, updated_at) INCLUDE (status);
