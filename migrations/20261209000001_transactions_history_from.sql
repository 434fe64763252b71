-- Which days of history a transaction's rows may be in, so that retiring a day finds the
-- transactions whose rows it must keep (changed since the cutoff, still open) among those
-- whose history begins that day, from one index, instead of probing `transactions` once for
-- every key the day's rows name (a cost that grows with the day's size, not its kept rows).
--
-- history_from: no row of the transaction (deliveries, events, inquiries) is stored before
-- it. A new transaction gets now() (its first rows are stored by the same transaction);
-- retiring a day moves it to the day's end for the transactions whose rows were kept; a
-- re-applied old delivery sets it to '-infinity'. Transactions from before this column read
-- '-infinity' (a constant default: catalog-only, no rewrite): retirement finds those
-- through their last change instead.
SET LOCAL lock_timeout = '5s';

ALTER TABLE singapay.transactions ADD COLUMN history_from timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE singapay.transactions ALTER COLUMN history_from SET DEFAULT now();
