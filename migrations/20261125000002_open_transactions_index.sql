-- no-transaction
-- Transactions still waiting for a final status, by when they last changed: what the
-- reconciler looks through for overdue ones. Built CONCURRENTLY: intake keeps writing
-- transactions while it is built, however many there are.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_open_idx
    ON singapay.transactions (updated_at) WHERE status IN ('initiated', 'paying', 'pending');
