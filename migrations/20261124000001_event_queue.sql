-- The queue's moving parts get a narrow table of their own.
--
-- Claiming and acknowledging change an event's state, attempts and lease. On the wide
-- table (the event's document, its ids and statuses, six indexes) every such change wrote a
-- whole new row version and an entry in every index: about 3.5 ms for a claim of 100 on
-- this schema's reference machine. Now:
--
-- * singapay.event_log is the table that was singapay.transaction_events, renamed: one row
--   per change, written once by intake and once more when its event is finished (done or
--   dead), with the final state, attempts, error and finished_at. Retention prunes it.
-- * singapay.event_queue holds the unfinished events only (available or running): id,
--   transaction key and version (for the per-transaction order), and the queue columns.
--   Claims, acks, nacks and lease expiry work on it; an event leaves it when it is
--   finished. Its indexes hold only unfinished events, however many finished ones are kept.
-- * singapay.transaction_events is now a view over the two with the same columns and the
--   same meaning as before (the queue's live state where an event is unfinished), and it
--   accepts INSERT, UPDATE and DELETE as the table did (re-driving dead events as
--   docs/consuming.md shows, for example). claim_events returns its rows.
--
-- Locks: the rename takes an ACCESS EXCLUSIVE lock on the events table, held until this
-- migration commits. What runs under it is proportional to the unfinished events (they are
-- copied into event_queue through the partial index that holds only them), not to the
-- finished ones kept for RETENTION_DAYS, and no finished row is rewritten. The lock has
-- to wait for transactions that are using the table; rather than queue every callback
-- behind a long one, the migration gives up after 5 s (and `migrate` or `serve --migrate`
-- can simply be run again).
SET LOCAL lock_timeout = '5s';

ALTER TABLE singapay.transaction_events RENAME TO event_log;

CREATE TABLE singapay.event_queue (
    -- The event's id in event_log. Not a foreign key: the check would lock the log's row
    -- (a write to its page) for every event queued, and only this schema's functions and
    -- the view's trigger write here, always together with the log.
    id              bigint      PRIMARY KEY,
    transaction_key text        NOT NULL,
    version         integer     NOT NULL,
    state           text        NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'running')),
    attempts        integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL DEFAULT 25 CHECK (max_attempts >= 1),
    available_at    timestamptz NOT NULL DEFAULT now(),
    locked_by       text,
    locked_until    timestamptz,
    last_error      text
) WITH (
    -- Every event passes through here: inserted, claimed, deleted. Keep the dead row
    -- versions from piling up in front of the claimable index.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000
);

INSERT INTO singapay.event_queue
       (id, transaction_key, version, state, attempts, max_attempts, available_at, locked_by, locked_until, last_error)
SELECT id, transaction_key, version, state, attempts, max_attempts, available_at, locked_by, locked_until, last_error
  FROM singapay.event_log
 WHERE state IN ('available', 'running');

CREATE INDEX event_queue_claimable_idx ON singapay.event_queue (available_at, id) WHERE state = 'available';
CREATE INDEX event_queue_running_idx ON singapay.event_queue (locked_until) WHERE state = 'running';
-- The per-transaction order: an event waits while an earlier version of its transaction is
-- unfinished, that is, in this table.
CREATE UNIQUE INDEX event_queue_transaction_key_version_idx ON singapay.event_queue (transaction_key, version);

-- The log no longer needs the queue's indexes (each was one more entry to write per claim).
DROP INDEX singapay.transaction_events_claimable_idx;
DROP INDEX singapay.transaction_events_running_idx;
DROP INDEX singapay.transaction_events_unfinished_key_idx;

-- The log is now written twice per event (insert, finish) and deleted by retention; the
-- default thresholds are right for it again.
ALTER TABLE singapay.event_log RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);

-- One probe of event_queue's primary key per queue column, and only for events the log
-- does not record as finished (the log's state is final for done and dead events; an
-- event is in event_queue exactly while it is not). No join, so that `SELECT … FOR UPDATE`
-- on the view still locks the event's row (in event_log), as it did on the table.
CREATE VIEW singapay.transaction_events AS
SELECT l.id,
       l.event_id,
       l.transaction_key,
       l.version,
       l.webhook_type,
       l.from_status,
       l.to_status,
       l.response_code,
       l.transaction_status_code,
       l.delivery_id,
       l.payload,
       l.created_at,
       CASE WHEN l.state IN ('done', 'dead') THEN l.state
            ELSE coalesce((SELECT q.state FROM singapay.event_queue q WHERE q.id = l.id), l.state) END AS state,
       CASE WHEN l.state IN ('done', 'dead') THEN l.attempts
            ELSE coalesce((SELECT q.attempts FROM singapay.event_queue q WHERE q.id = l.id), l.attempts) END AS attempts,
       CASE WHEN l.state IN ('done', 'dead') THEN l.max_attempts
            ELSE coalesce((SELECT q.max_attempts FROM singapay.event_queue q WHERE q.id = l.id), l.max_attempts) END AS max_attempts,
       CASE WHEN l.state IN ('done', 'dead') THEN l.available_at
            ELSE coalesce((SELECT q.available_at FROM singapay.event_queue q WHERE q.id = l.id), l.available_at) END AS available_at,
       CASE WHEN l.state IN ('done', 'dead') THEN l.locked_by
            ELSE (SELECT q.locked_by FROM singapay.event_queue q WHERE q.id = l.id) END AS locked_by,
       CASE WHEN l.state IN ('done', 'dead') THEN l.locked_until
            ELSE (SELECT q.locked_until FROM singapay.event_queue q WHERE q.id = l.id) END AS locked_until,
       CASE WHEN l.state IN ('done', 'dead') THEN l.last_error
            ELSE (SELECT q.last_error FROM singapay.event_queue q WHERE q.id = l.id) END AS last_error,
       l.finished_at
  FROM singapay.event_log l;

ALTER VIEW singapay.transaction_events ALTER COLUMN created_at SET DEFAULT now();
ALTER VIEW singapay.transaction_events ALTER COLUMN state SET DEFAULT 'available';
ALTER VIEW singapay.transaction_events ALTER COLUMN attempts SET DEFAULT 0;
ALTER VIEW singapay.transaction_events ALTER COLUMN max_attempts SET DEFAULT 25;
ALTER VIEW singapay.transaction_events ALTER COLUMN available_at SET DEFAULT now();

-- Writes through the view, for SQL written against the table: the log gets every column,
-- the queue holds the event while its state is available or running.
CREATE FUNCTION singapay.transaction_events_write() RETURNS trigger
LANGUAGE plpgsql AS $$
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
        RETURNING id INTO NEW.id;
    ELSE
        UPDATE singapay.event_log l
           SET event_id = NEW.event_id, transaction_key = NEW.transaction_key, version = NEW.version,
               webhook_type = NEW.webhook_type, from_status = NEW.from_status, to_status = NEW.to_status,
               response_code = NEW.response_code, transaction_status_code = NEW.transaction_status_code,
               delivery_id = NEW.delivery_id, payload = NEW.payload, created_at = NEW.created_at,
               state = NEW.state, attempts = NEW.attempts, max_attempts = NEW.max_attempts,
               available_at = NEW.available_at, locked_by = NEW.locked_by, locked_until = NEW.locked_until,
               last_error = NEW.last_error, finished_at = NEW.finished_at
         WHERE l.id = OLD.id;
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            RAISE EXCEPTION 'transaction_events: id cannot be changed' USING ERRCODE = '428C9';
        END IF;
    END IF;
    IF NEW.state IN ('available', 'running') THEN
        INSERT INTO singapay.event_queue
               (id, transaction_key, version, state, attempts, max_attempts, available_at, locked_by, locked_until, last_error)
        VALUES (NEW.id, NEW.transaction_key, NEW.version, NEW.state, NEW.attempts, NEW.max_attempts, NEW.available_at,
                NEW.locked_by, NEW.locked_until, NEW.last_error)
        ON CONFLICT (id) DO UPDATE
           SET transaction_key = EXCLUDED.transaction_key, version = EXCLUDED.version, state = EXCLUDED.state,
               attempts = EXCLUDED.attempts, max_attempts = EXCLUDED.max_attempts,
               available_at = EXCLUDED.available_at, locked_by = EXCLUDED.locked_by,
               locked_until = EXCLUDED.locked_until, last_error = EXCLUDED.last_error;
    ELSIF TG_OP = 'UPDATE' THEN
        DELETE FROM singapay.event_queue q WHERE q.id = OLD.id;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER transaction_events_write
    INSTEAD OF INSERT OR UPDATE OR DELETE ON singapay.transaction_events
    FOR EACH ROW EXECUTE FUNCTION singapay.transaction_events_write();

-- The queue's functions keep their signatures and their meaning; they now work on
-- event_queue, and an event that is finished (acknowledged, or dead) leaves it and has its
-- final state written to event_log.
--
-- claim_events: first, leases that expired go back to the queue (or, on the last allowed
-- attempt, to dead); then up to `batch` available events whose earlier versions are all
-- finished are leased to `consumer`, oldest first.
DROP FUNCTION singapay.claim_events(text, integer, interval);
--
-- The claim must walk event_queue_claimable_idx in order and stop after `batch` events.
-- event_queue is small but churns: after a backlog drains it is mostly empty pages, and
-- from its statistics the planner would then read all of them and sort, per claim. The
-- function therefore plans without sequential and bitmap scans (these settings apply
-- inside it only). It also runs without JIT: the plan's cost estimate (the order check is
-- a subquery per candidate, and the planner does not know the LIMIT stops the scan early)
-- can pass jit_above_cost, and compiling it took 20 ms per claim, ten times the claim.
CREATE FUNCTION singapay.claim_events(consumer text, batch integer, lease interval)
RETURNS SETOF singapay.transaction_events
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
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
     WHERE l.id = died.id;

    RETURN QUERY
    WITH candidates AS (
        SELECT q.id FROM singapay.event_queue q
         WHERE q.state = 'available'
           AND q.available_at <= now()
           -- The earliest unfinished version of its transaction. (A correlated probe of the
           -- (transaction_key, version) index per candidate: written as NOT EXISTS, the
           -- planner may turn it into an anti-join that reads the whole table, which is no
           -- bargain once a drained backlog has left the table mostly empty pages.)
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
      JOIN singapay.event_log l ON l.id = c.id
     ORDER BY l.id;
END;
$$;

CREATE OR REPLACE FUNCTION singapay.ack_event(id bigint, consumer text)
RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT 1 FROM singapay.ack_events(ARRAY[ack_event.id], ack_event.consumer));
$$;

CREATE OR REPLACE FUNCTION singapay.ack_events(ids bigint[], consumer text)
RETURNS SETOF bigint
LANGUAGE sql AS $$
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
         WHERE l.id = a.id
        RETURNING l.id
    )
    SELECT id FROM done ORDER BY id;
$$;

CREATE OR REPLACE FUNCTION singapay.nack_event(id bigint, consumer text, error text, delay interval)
RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT 1 FROM singapay.nack_events(ARRAY[nack_event.id], nack_event.consumer,
                                                      nack_event.error, nack_event.delay));
$$;

CREATE OR REPLACE FUNCTION singapay.nack_events(ids bigint[], consumer text, error text, delay interval)
RETURNS SETOF bigint
LANGUAGE sql AS $$
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
         WHERE l.id = died.id
        RETURNING l.id
    )
    SELECT id FROM retried UNION ALL SELECT id FROM dead ORDER BY id;
$$;

-- The history shows the live queue state; the outbox needs none and reads the log alone.
CREATE OR REPLACE VIEW singapay.transaction_history AS
SELECT e.transaction_key,
       e.version,
       e.from_status,
       e.to_status,
       e.created_at           AS changed_at,
       e.webhook_type,
       e.response_code,
       e.transaction_status_code,
       e.event_id,
       e.state                AS queue_state,
       e.delivery_id,
       d.event,
       d.received_at,
       d.times_received,
       d.credential,
       d.signature_form,
       d.request_path
  FROM singapay.transaction_events e
  LEFT JOIN singapay.deliveries d ON d.id = e.delivery_id;

CREATE OR REPLACE VIEW singapay.queue_health AS
WITH unfinished AS (
    SELECT q.state,
           count(*)                                                         AS events,
           count(*) FILTER (WHERE q.state = 'available' AND q.available_at <= now()) AS due,
           count(*) FILTER (WHERE q.state = 'available' AND q.available_at > now())  AS delayed,
           count(*) FILTER (WHERE q.state = 'running' AND q.locked_until < now())    AS expired_leases,
           now() - min(q.available_at) FILTER (WHERE q.state = 'available' AND q.available_at <= now())
                                                                            AS oldest_due_age,
           min(l.created_at)                                                AS oldest_created_at
      FROM singapay.event_queue q
      JOIN singapay.event_log l ON l.id = q.id
     GROUP BY q.state
), finished AS (
    SELECT l.state, count(*) AS events, min(l.created_at) AS oldest_created_at
      FROM singapay.event_log l
     WHERE l.state IN ('done', 'dead')
     GROUP BY l.state
)
SELECT s.state,
       coalesce(u.events, f.events, 0)       AS events,
       coalesce(u.due, 0)                    AS due,
       coalesce(u.delayed, 0)                AS delayed,
       coalesce(u.expired_leases, 0)         AS expired_leases,
       u.oldest_due_age,
       coalesce(u.oldest_created_at, f.oldest_created_at) AS oldest_created_at
  FROM (VALUES (1, 'available'), (2, 'running'), (3, 'done'), (4, 'dead')) AS s (ord, state)
  LEFT JOIN unfinished u ON u.state = s.state
  LEFT JOIN finished f ON f.state = s.state
 ORDER BY s.ord;
