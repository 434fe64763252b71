-- History by day, step 3 of 3: deliveries, event_log, rejected_deliveries and inquiries
-- become range-partitioned by stored_at, one partition per day (UTC; the length is
-- singapay.history_settings.partition_days), so that retention drops whole days
-- (`prune`) instead of deleting row by row.
--
-- * Each table keeps its name, columns and meaning; its rows from before this migration
--   stay where they are: the old table becomes the partition singapay_history.<name>_legacy
--   for everything before history_settings.legacy_until (proven by step 2's constraint, so
--   attaching it reads nothing). On a new install it is empty and dropped instead.
-- * New partitions are made from singapay_history.<name>_template (its columns, checks and
--   indexes) and attached (a SHARE UPDATE EXCLUSIVE lock of the parent: inserts, updates and
--   reads go on). singapay.ensure_partitions(from_date, to_date) creates the missing ones;
--   `serve` and `prune` keep at least 7 days ready ahead. There is no DEFAULT partition.
-- * A partition's unique indexes hold within the day. Uniqueness across days is intake's:
--   it serialises each content on a transaction-scoped advisory lock and looks it up in
--   every retained day before storing it (docs/schema.md); versions are numbered under the
--   transaction's row lock.
-- * Every view over these tables is re-pointed at the partitioned tables (views follow the
--   table they were created on; other schemas' views too), and every privilege granted on
--   a table is granted on its partitioned successor.
-- * The queue's functions find an event's log row by (id, stored_at): its own partition.
--
-- Locks: ACCESS EXCLUSIVE on the four tables and event_queue, for catalog changes only
-- (nothing is copied or scanned); the migration gives up after 5 s rather than queue
-- callbacks behind a long transaction, and can be run again.
SET LOCAL lock_timeout = '5s';
-- pg_get_viewdef qualifies every name not on the search_path.
SET LOCAL search_path = pg_catalog, pg_temp;

LOCK TABLE singapay.deliveries, singapay.event_log, singapay.event_queue, singapay.rejected_deliveries,
    singapay.inquiries IN ACCESS EXCLUSIVE MODE;

CREATE FUNCTION singapay_history.tables() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$ SELECT ARRAY['deliveries', 'event_log', 'rejected_deliveries', 'inquiries'] $$;

DO $$
DECLARE
    t text;
    legacy regclass;
    seq text;
    last bigint;
    called boolean;
    until timestamptz := (SELECT legacy_until FROM singapay.history_settings);
    v record;
    def text;
    g record;
    legacies oid[] := '{}';
BEGIN
    FOREACH t IN ARRAY singapay_history.tables() LOOP
        EXECUTE format('ALTER TABLE singapay.%I SET SCHEMA singapay_history', t);
        EXECUTE format('ALTER TABLE singapay_history.%I RENAME TO %I', t, t || '_legacy');
        legacy := format('singapay_history.%I', t || '_legacy')::regclass;
        legacies := legacies || legacy::oid;

        EXECUTE format('CREATE TABLE singapay.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
                        INCLUDING COMMENTS) PARTITION BY RANGE (stored_at)', t, legacy);
        EXECUTE format('ALTER TABLE singapay.%I DROP CONSTRAINT history_legacy_range', t);
        EXECUTE format('ALTER TABLE singapay.%I ALTER COLUMN stored_at SET DEFAULT now()', t);
        -- Ids go on from the old table's sequence.
        seq := pg_get_serial_sequence(legacy::text, 'id');
        EXECUTE format('SELECT last_value, is_called FROM %s', seq) INTO last, called;
        EXECUTE format('ALTER TABLE singapay.%I ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY', t);
        PERFORM setval(pg_get_serial_sequence(format('singapay.%I', t), 'id'), last, called);

        FOR g IN SELECT grantee, privilege_type FROM information_schema.role_table_grants
                  WHERE table_schema = 'singapay_history' AND table_name = t || '_legacy'
                    AND grantee <> current_user LOOP
            EXECUTE format('GRANT %s ON singapay.%I TO %s', g.privilege_type, t,
                           CASE WHEN g.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(g.grantee) END);
        END LOOP;
    END LOOP;

    -- Views over the old tables (ours and anyone's) now read the partitioned ones.
    FOR v IN SELECT DISTINCT r.ev_class::regclass AS view
               FROM pg_depend d
               JOIN pg_rewrite r ON r.oid = d.objid
               JOIN pg_class c ON c.oid = r.ev_class
              WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = ANY (legacies)
                AND r.ev_class <> d.refobjid AND c.relkind = 'v' LOOP
        def := pg_get_viewdef(v.view, false);
        FOREACH t IN ARRAY singapay_history.tables() LOOP
            def := replace(def, format('singapay_history.%I', t || '_legacy'), format('singapay.%I', t));
        END LOOP;
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', v.view, def);
    END LOOP;

    FOREACH t IN ARRAY singapay_history.tables() LOOP
        legacy := format('singapay_history.%I', t || '_legacy')::regclass;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', legacy) INTO called;
        IF called THEN
            EXECUTE format('ALTER TABLE singapay.%I ATTACH PARTITION %s FOR VALUES FROM (MINVALUE) TO (%L)',
                           t, legacy, until);
        ELSE
            EXECUTE format('DROP TABLE %s', legacy);
        END IF;
    END LOOP;
END
$$;

-- What a new day's partition is made of.
CREATE TABLE singapay_history.deliveries_template
    (LIKE singapay.deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);
ALTER TABLE singapay_history.deliveries_template ADD PRIMARY KEY (id);
ALTER TABLE singapay_history.deliveries_template ADD UNIQUE (content_sha256);
CREATE INDEX ON singapay_history.deliveries_template (transaction_key);
CREATE INDEX ON singapay_history.deliveries_template (received_at);
CREATE INDEX ON singapay_history.deliveries_template (id) WHERE needs_inquiry;
-- Bearer tokens still kept (prune drops them after BEARER_RETENTION_HOURS).
CREATE INDEX ON singapay_history.deliveries_template (received_at) WHERE access_token <> '';
-- Received again after the first time: retention keeps those received again lately.
CREATE INDEX ON singapay_history.deliveries_template (last_received_at) WHERE times_received > 1;

CREATE TABLE singapay_history.event_log_template
    (LIKE singapay.event_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);
ALTER TABLE singapay_history.event_log_template ADD PRIMARY KEY (id);
ALTER TABLE singapay_history.event_log_template ADD UNIQUE (event_id);
ALTER TABLE singapay_history.event_log_template ADD UNIQUE (transaction_key, version);
CREATE INDEX ON singapay_history.event_log_template (delivery_id);
CREATE INDEX ON singapay_history.event_log_template (id) WHERE state = 'dead';

CREATE TABLE singapay_history.rejected_deliveries_template
    (LIKE singapay.rejected_deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);
ALTER TABLE singapay_history.rejected_deliveries_template ADD PRIMARY KEY (id);
ALTER TABLE singapay_history.rejected_deliveries_template ADD UNIQUE (content_sha256);
CREATE INDEX ON singapay_history.rejected_deliveries_template (received_at) WHERE access_token <> '';
CREATE INDEX ON singapay_history.rejected_deliveries_template (last_received_at) WHERE times_received > 1;

CREATE TABLE singapay_history.inquiries_template
    (LIKE singapay.inquiries INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);
ALTER TABLE singapay_history.inquiries_template ADD PRIMARY KEY (id);
CREATE INDEX ON singapay_history.inquiries_template (transaction_key, id);
CREATE INDEX ON singapay_history.inquiries_template (asked_at);

-- Every partition of the four tables and the range it holds (UTC), from the catalog.
CREATE VIEW singapay.history_partitions AS
SELECT p.relname::text                 AS table_name,
       c.oid::regclass                 AS partition,
       CASE WHEN b.m[1] = 'MINVALUE' THEN '-infinity'::timestamptz ELSE btrim(b.m[1], '''')::timestamptz END AS from_at,
       CASE WHEN b.m[2] = 'MAXVALUE' THEN 'infinity'::timestamptz ELSE btrim(b.m[2], '''')::timestamptz END AS to_at,
       i.inhdetachpending              AS detaching
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_class p ON p.oid = i.inhparent
  JOIN pg_namespace n ON n.oid = p.relnamespace
 CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \((.*)\) TO \((.*)\)') AS m) b
 WHERE n.nspname = 'singapay' AND p.relname = ANY (singapay_history.tables());

-- Creates the partitions, of every partitioned history table, that the days from_date to
-- to_date (inclusive, UTC) need and do not have; returns how many it created. Idempotent.
-- Partitions are partition_days long on a grid from 2000-01-01 (UTC), clipped to the gaps
-- between existing partitions (whatever their length). Imports, restores from an archive
-- and hand-made fixes of old dates call it first; `serve` and `prune` call it for the days
-- ahead. Runs as its owner (the schema's owner, who may create tables in singapay_history).
CREATE FUNCTION singapay.ensure_partitions(from_date date, to_date date) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    days integer := (SELECT partition_days FROM singapay.history_settings);
    grid constant date := date '2000-01-01';
    t text;
    d date;
    lo timestamptz;
    hi timestamptz;
    gap timestamptz;
    froms timestamptz[];
    tos timestamptz[];
    created integer := 0;
BEGIN
    IF from_date IS NULL OR to_date IS NULL OR to_date < from_date THEN
        RAISE EXCEPTION 'ensure_partitions: from_date must be a date on or before to_date' USING ERRCODE = '22023';
    END IF;
    IF to_date - from_date > 3660 THEN
        RAISE EXCEPTION 'ensure_partitions: at most ten years at a time, got % days', to_date - from_date + 1
            USING ERRCODE = '22023';
    END IF;
    -- One caller at a time (intake writers meeting a missing day together, serve, prune): the
    -- next finds the gaps filled.
    PERFORM pg_advisory_xact_lock(hashtext('singapay.ensure_partitions'));
    FOREACH t IN ARRAY singapay_history.tables() LOOP
        d := grid + (floor((from_date - grid)::numeric / days) * days)::integer;
        -- The table's partitions that meet the range, read from the catalog once.
        SELECT coalesce(array_agg(p.from_at ORDER BY p.from_at), '{}'), coalesce(array_agg(p.to_at ORDER BY p.from_at), '{}')
          INTO froms, tos
          FROM singapay.history_partitions p
         WHERE p.table_name = t AND p.to_at > d::timestamp AT TIME ZONE 'UTC'
           AND p.from_at < (to_date + days)::timestamp AT TIME ZONE 'UTC';
        WHILE d <= to_date LOOP
            lo := d::timestamp AT TIME ZONE 'UTC';
            hi := (d + days)::timestamp AT TIME ZONE 'UTC';
            gap := lo;
            FOR i IN 1 .. coalesce(array_length(froms, 1), 0) LOOP
                CONTINUE WHEN tos[i] <= lo OR froms[i] >= hi;
                IF froms[i] > gap THEN
                    PERFORM singapay_history.create_partition(t, gap, froms[i]);
                    created := created + 1;
                END IF;
                gap := greatest(gap, tos[i]);
            END LOOP;
            IF gap < hi THEN
                PERFORM singapay_history.create_partition(t, gap, hi);
                created := created + 1;
            END IF;
            d := d + days;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;
REVOKE EXECUTE ON FUNCTION singapay.ensure_partitions(date, date) FROM PUBLIC;

-- One partition of `t` for [lo, hi), made from its template and attached.
CREATE FUNCTION singapay_history.create_partition(t text, lo timestamptz, hi timestamptz) RETURNS regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    base text := t || '_' || to_char(lo, CASE WHEN lo = date_trunc('day', lo) THEN 'YYYYMMDD' ELSE 'YYYYMMDD"_"HH24MISS' END);
    name text := base;
    n integer := 1;
BEGIN
    -- A table left by an interrupted retirement keeps its name until prune drops it.
    WHILE to_regclass(format('singapay_history.%I', name)) IS NOT NULL LOOP
        n := n + 1;
        name := base || '_' || n;
    END LOOP;
    EXECUTE format('CREATE TABLE singapay_history.%I (LIKE singapay_history.%I INCLUDING ALL)', name, t || '_template');
    EXECUTE format('ALTER TABLE singapay.%I ATTACH PARTITION singapay_history.%I FOR VALUES FROM (%L) TO (%L)',
                   t, name, lo, hi);
    RETURN format('singapay_history.%I', name)::regclass;
END
$$;
REVOKE EXECUTE ON FUNCTION singapay_history.create_partition(text, timestamptz, timestamptz) FROM PUBLIC;

SELECT singapay.ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 8);

-- The queue's functions find an event's log row in its own partition: a probe of that
-- partition's primary key per event (a nested loop; joined by hash or merge, a claim of ten
-- would read every day's index whole).
CREATE OR REPLACE FUNCTION singapay.claim_events(consumer text, batch integer, lease interval)
RETURNS SETOF singapay.transaction_events
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET jit = off
AS $$
BEGIN
    IF consumer IS NULL OR length(btrim(consumer)) = 0 THEN
        RAISE EXCEPTION 'claim_events: consumer must be a non-empty name' USING ERRCODE = '22023';
    END IF;
    IF batch IS NULL OR batch < 1 OR batch > 10000 THEN
        RAISE EXCEPTION 'claim_events: batch must be between 1 and 10000, got %', batch USING ERRCODE = '22023';
    END IF;
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'claim_events: lease must be a positive interval' USING ERRCODE = '22023';
    END IF;

    WITH expired AS (
        SELECT q.id FROM singapay.event_queue q
         WHERE q.state = 'running' AND q.locked_until < now()
         ORDER BY q.locked_until, q.id
         FOR UPDATE OF q SKIP LOCKED
    ), requeued AS (
        UPDATE singapay.event_queue q
           SET state = 'available', available_at = now(), locked_by = NULL, locked_until = NULL
          FROM expired
         WHERE q.id = expired.id AND q.attempts < q.max_attempts
    ), died AS (
        DELETE FROM singapay.event_queue q
         USING expired
         WHERE q.id = expired.id AND q.attempts >= q.max_attempts
        RETURNING q.*
    )
    UPDATE singapay.event_log l
       SET state = 'dead', attempts = died.attempts, max_attempts = died.max_attempts,
           available_at = now(), locked_by = NULL, locked_until = NULL, finished_at = now(),
           last_error = 'lease of ' || coalesce(died.locked_by, '?') || ' expired on the last allowed attempt'
      FROM died
     WHERE l.id = died.id AND l.stored_at = died.stored_at;

    RETURN QUERY
    WITH candidates AS (
        SELECT q.id FROM singapay.event_queue q
         WHERE q.state = 'available'
           AND q.available_at <= now()
           AND q.version = (SELECT min(p.version) FROM singapay.event_queue p
                             WHERE p.transaction_key = q.transaction_key)
         ORDER BY q.available_at, q.id
         LIMIT batch
         FOR UPDATE OF q SKIP LOCKED
    ), claimed AS (
        UPDATE singapay.event_queue q
           SET state = 'running',
               attempts = q.attempts + 1,
               locked_by = consumer,
               locked_until = now() + lease
          FROM candidates
         WHERE q.id = candidates.id
        RETURNING q.*
    )
    SELECT l.id, l.event_id, l.transaction_key, l.version, l.webhook_type, l.from_status, l.to_status,
           l.response_code, l.transaction_status_code, l.delivery_id, l.payload, l.created_at,
           c.state, c.attempts, c.max_attempts, c.available_at, c.locked_by, c.locked_until, c.last_error,
           l.finished_at
      FROM claimed c
      JOIN singapay.event_log l ON l.id = c.id AND l.stored_at = c.stored_at
     ORDER BY l.id;
END;
$$;

CREATE OR REPLACE FUNCTION singapay.ack_events(ids bigint[], consumer text)
RETURNS SETOF bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
    WITH acked AS (
        DELETE FROM singapay.event_queue q
         WHERE q.id = ANY (ack_events.ids)
           AND q.state = 'running'
           AND q.locked_by = ack_events.consumer
           AND q.locked_until >= now()
        RETURNING q.*
    ), done AS (
        UPDATE singapay.event_log l
           SET state = 'done', attempts = a.attempts, max_attempts = a.max_attempts,
               available_at = a.available_at, locked_by = a.locked_by, locked_until = NULL,
               last_error = a.last_error, finished_at = now()
          FROM acked a
         WHERE l.id = a.id AND l.stored_at = a.stored_at
        RETURNING l.id
    )
    SELECT id FROM done ORDER BY id;
$$;

CREATE OR REPLACE FUNCTION singapay.nack_events(ids bigint[], consumer text, error text, delay interval)
RETURNS SETOF bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
    WITH held AS (
        SELECT q.id, q.attempts >= q.max_attempts AS last
          FROM singapay.event_queue q
         WHERE q.id = ANY (nack_events.ids)
           AND q.state = 'running'
           AND q.locked_by = nack_events.consumer
           AND q.locked_until >= now()
           FOR UPDATE OF q
    ), retried AS (
        UPDATE singapay.event_queue q
           SET state = 'available',
               available_at = now() + least(
                    greatest(coalesce(nack_events.delay, interval '1 second'), interval '0')
                        * power(2, least(greatest(q.attempts - 1, 0), 30)),
                    greatest(coalesce(nack_events.delay, interval '0'), interval '1 hour')),
               last_error = left(nack_events.error, 10000),
               locked_by = NULL,
               locked_until = NULL
          FROM held
         WHERE q.id = held.id AND NOT held.last
        RETURNING q.id
    ), died AS (
        DELETE FROM singapay.event_queue q
         USING held
         WHERE q.id = held.id AND held.last
        RETURNING q.*
    ), dead AS (
        UPDATE singapay.event_log l
           SET state = 'dead', attempts = died.attempts, max_attempts = died.max_attempts,
               available_at = died.available_at, locked_by = NULL, locked_until = NULL,
               last_error = left(nack_events.error, 10000), finished_at = now()
          FROM died
         WHERE l.id = died.id AND l.stored_at = died.stored_at
        RETURNING l.id
    )
    SELECT id FROM retried UNION ALL SELECT id FROM dead ORDER BY id;
$$;

-- Writes through the view: the queue row carries its log row's stored_at.
CREATE OR REPLACE FUNCTION singapay.transaction_events_write() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stored timestamptz;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM singapay.event_queue q WHERE q.id = OLD.id;
        DELETE FROM singapay.event_log l WHERE l.id = OLD.id;
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO singapay.event_log
               (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code,
                transaction_status_code, delivery_id, payload, created_at, state, attempts, max_attempts,
                available_at, locked_by, locked_until, last_error, finished_at)
        VALUES (NEW.event_id, NEW.transaction_key, NEW.version, NEW.webhook_type, NEW.from_status, NEW.to_status,
                NEW.response_code, NEW.transaction_status_code, NEW.delivery_id, NEW.payload, NEW.created_at,
                NEW.state, NEW.attempts, NEW.max_attempts, NEW.available_at, NEW.locked_by, NEW.locked_until,
                NEW.last_error, NEW.finished_at)
        RETURNING id, stored_at INTO NEW.id, stored;
    ELSE
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            RAISE EXCEPTION 'transaction_events: id cannot be changed' USING ERRCODE = '428C9';
        END IF;
        UPDATE singapay.event_log l
           SET event_id = NEW.event_id, transaction_key = NEW.transaction_key, version = NEW.version,
               webhook_type = NEW.webhook_type, from_status = NEW.from_status, to_status = NEW.to_status,
               response_code = NEW.response_code, transaction_status_code = NEW.transaction_status_code,
               delivery_id = NEW.delivery_id, payload = NEW.payload, created_at = NEW.created_at,
               state = NEW.state, attempts = NEW.attempts, max_attempts = NEW.max_attempts,
               available_at = NEW.available_at, locked_by = NEW.locked_by, locked_until = NEW.locked_until,
               last_error = NEW.last_error, finished_at = NEW.finished_at
         WHERE l.id = OLD.id
        RETURNING l.stored_at INTO stored;
    END IF;
    IF NEW.state IN ('available', 'running') THEN
        INSERT INTO singapay.event_queue
               (id, transaction_key, version, state, attempts, max_attempts, available_at, locked_by, locked_until,
                last_error, stored_at)
        VALUES (NEW.id, NEW.transaction_key, NEW.version, NEW.state, NEW.attempts, NEW.max_attempts, NEW.available_at,
                NEW.locked_by, NEW.locked_until, NEW.last_error, stored)
        ON CONFLICT (id) DO UPDATE
           SET transaction_key = EXCLUDED.transaction_key, version = EXCLUDED.version, state = EXCLUDED.state,
               attempts = EXCLUDED.attempts, max_attempts = EXCLUDED.max_attempts,
               available_at = EXCLUDED.available_at, locked_by = EXCLUDED.locked_by,
               locked_until = EXCLUDED.locked_until, last_error = EXCLUDED.last_error,
               stored_at = EXCLUDED.stored_at;
    ELSIF TG_OP = 'UPDATE' THEN
        DELETE FROM singapay.event_queue q WHERE q.id = OLD.id;
    END IF;
    RETURN NEW;
END;
$$;

-- The consumers' role (where the migrations could create it) may read the partition list.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'singapay_consumer') THEN
        GRANT SELECT ON singapay.history_partitions TO singapay_consumer;
    END IF;
END
$$;

-- Back to the session's search_path (sqlx records the migration next, unqualified).
RESET search_path;
