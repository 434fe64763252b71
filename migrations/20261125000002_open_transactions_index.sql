-- no-transaction
-- Transactions still waiting for a final status, by product and when they last changed:
-- what the reconciler looks through for overdue ones (one range per product). Built
-- CONCURRENTLY: intake keeps writing transactions while it is built, however many there are.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_open_idx
    ON singapay.transactions (product, updated_at) WHERE status IN ('initiated', 'paying', 'pending');
