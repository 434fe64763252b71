-- History by day, step 1 of 3: the columns and constraints that let today's tables become
-- the first partition of time-partitioned ones without rewriting or rescanning them under a
-- lock that holds up callbacks.
--
-- * stored_at, on deliveries, event_log, rejected_deliveries and inquiries: the partition
--   key (which day's partition holds the row). Rows stored before the upgrade read
--   '-infinity' (a constant default: catalog-only, no rewrite); rows written from then on
--   get now().
-- * event_queue.stored_at: the stored_at of its event's row in the log, so that claiming and
--   acknowledging find that row in its own partition instead of probing every day's
--   (looked up by a trigger when an insert does not give it).
-- * history_legacy_range, NOT VALID: stored_at lies before the instant the partitioned
--   tables' first day starts (two UTC midnights from now). Step 2 validates it while
--   callbacks go on; step 3 then attaches each table as the partition for everything
--   before that instant without scanning it.
-- * The foreign keys between these tables go: a key can refer to a partitioned table only
--   through a unique index holding the partition key, and retiring a day must not look up
--   every row that names one of its rows. The ids stay (a retired row's id names nothing).
--   event_log -> transactions goes too: every ATTACH of a new day would otherwise lock
--   singapay.transactions against intake's writes to check it.
--
-- Locks: each ALTER takes its table's ACCESS EXCLUSIVE lock for a catalog change only; the
-- migration gives up after 5 s rather than queue callbacks behind a long transaction.
SET LOCAL lock_timeout = '5s';

CREATE SCHEMA IF NOT EXISTS singapay_history;

-- Partitioning's settings: the length of a partition in days (1: daily; a change applies to
-- partitions created afterwards), and where the pre-upgrade tables' range ends.
CREATE TABLE singapay.history_settings (
    only_row        boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    partition_days  integer     NOT NULL DEFAULT 1 CHECK (partition_days BETWEEN 1 AND 31),
    legacy_until    timestamptz NOT NULL
);
INSERT INTO singapay.history_settings (legacy_until)
VALUES (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '2 days');

ALTER TABLE singapay.transactions DROP CONSTRAINT IF EXISTS transactions_first_delivery_id_fkey;
ALTER TABLE singapay.transactions DROP CONSTRAINT IF EXISTS transactions_last_delivery_id_fkey;
ALTER TABLE singapay.event_log DROP CONSTRAINT IF EXISTS transaction_events_transaction_key_fkey;
ALTER TABLE singapay.event_log DROP CONSTRAINT IF EXISTS transaction_events_delivery_id_fkey;
ALTER TABLE singapay.rejected_deliveries DROP CONSTRAINT IF EXISTS rejected_deliveries_replayed_delivery_id_fkey;
ALTER TABLE singapay.inquiries DROP CONSTRAINT IF EXISTS inquiries_delivery_id_fkey;
ALTER TABLE singapay.reconcile_checks DROP CONSTRAINT IF EXISTS reconcile_checks_delivery_id_fkey;
ALTER TABLE singapay.reconcile_checks DROP CONSTRAINT IF EXISTS reconcile_checks_last_inquiry_id_fkey;

-- Queued events' log rows are all in the old table, where they read '-infinity'. A writer
-- that does not say where its event's log row is (the previous version's, still running
-- during a rolling upgrade) has it looked up.
ALTER TABLE singapay.event_queue ADD COLUMN stored_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE singapay.event_queue ALTER COLUMN stored_at DROP DEFAULT;

CREATE FUNCTION singapay.event_queue_stored_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT l.stored_at INTO NEW.stored_at FROM singapay.event_log l WHERE l.id = NEW.id;
    RETURN NEW;
END
$$;

CREATE TRIGGER event_queue_stored_at BEFORE INSERT ON singapay.event_queue
    FOR EACH ROW WHEN (NEW.stored_at IS NULL) EXECUTE FUNCTION singapay.event_queue_stored_at();

DO $$
DECLARE
    t text;
    until timestamptz := (SELECT legacy_until FROM singapay.history_settings);
BEGIN
    FOREACH t IN ARRAY ARRAY['deliveries', 'event_log', 'rejected_deliveries', 'inquiries'] LOOP
        EXECUTE format('ALTER TABLE singapay.%I ADD COLUMN stored_at timestamptz NOT NULL DEFAULT ''-infinity''', t);
        -- Rows written from now on: the instant they are stored (before the upgrade ends,
        -- still before legacy_until).
        EXECUTE format('ALTER TABLE singapay.%I ALTER COLUMN stored_at SET DEFAULT now()', t);
        EXECUTE format('ALTER TABLE singapay.%I ADD CONSTRAINT history_legacy_range CHECK (stored_at < %L) NOT VALID',
                       t, until);
    END LOOP;
END
$$;
