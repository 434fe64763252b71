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

-- The partitions' ranges are read from the catalog without opening each partition (a
-- partition bound names no column, so it needs no relation to be printed), and each bound
-- is printed and parsed once per partition: listing them cost a lock and a relation-cache
-- entry per partition and four prints of its bound, tens of milliseconds a listing with a
-- year of days under load, and every retirement and ensure_partitions lists them.
CREATE OR REPLACE VIEW singapay.history_partitions AS
SELECT p.relname::text                 AS table_name,
       c.oid::regclass                 AS partition,
       b.from_at,
       b.to_at,
       i.inhdetachpending              AS detaching
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_class p ON p.oid = i.inhparent
  JOIN pg_namespace n ON n.oid = p.relnamespace
 CROSS JOIN LATERAL (
    SELECT CASE WHEN r.m[1] = 'MINVALUE' THEN '-infinity'::timestamptz ELSE btrim(r.m[1], '''')::timestamptz END AS from_at,
           CASE WHEN r.m[2] = 'MAXVALUE' THEN 'infinity'::timestamptz ELSE btrim(r.m[2], '''')::timestamptz END AS to_at
      FROM (SELECT regexp_match(pg_get_expr(c.relpartbound, 0), 'FROM \((.*)\) TO \((.*)\)') AS m OFFSET 0) r
     OFFSET 0) b
 WHERE n.nspname = 'singapay' AND p.relname = ANY (singapay_history.tables());
