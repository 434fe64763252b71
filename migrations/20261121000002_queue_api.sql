-- The queue as a consumer API in SQL, so any language can consume state changes, and the
-- views people use to answer "what happened?".

ALTER TABLE singapay.transaction_events ADD COLUMN finished_at timestamptz;

CREATE INDEX transaction_events_unfinished_key_idx
    ON singapay.transaction_events (transaction_key, version) WHERE state IN ('available', 'running');

-- Claims up to `batch` events for `consumer` for `lease`, oldest first.
--
-- Expired leases are reaped here, by the consumers themselves, rather than by a reaper in
-- the receiver: a queue whose consumers run always has a live reaper, and consuming does
-- not depend on the receiver being up. An event whose lease expired on its last allowed
-- attempt goes to 'dead' (a poison message must not crash consumers forever).
--
-- Per-transaction order: an event is handed out only when no earlier version of the same
-- transaction is still available or running, so version N+1 is never processed before N
-- has been acked (or has gone dead). Across transactions there is no order.
CREATE FUNCTION singapay.claim_events(consumer text, batch integer, lease interval)
RETURNS SETOF singapay.transaction_events
LANGUAGE plpgsql AS $$
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
        SELECT e.id FROM singapay.transaction_events e
         WHERE e.state = 'running' AND e.locked_until < now()
         ORDER BY e.id
         FOR UPDATE OF e SKIP LOCKED
    )
    UPDATE singapay.transaction_events e
       SET state = CASE WHEN e.attempts >= e.max_attempts THEN 'dead' ELSE 'available' END,
           last_error = CASE WHEN e.attempts >= e.max_attempts
                             THEN 'lease of ' || coalesce(e.locked_by, '?') || ' expired on the last allowed attempt'
                             ELSE e.last_error END,
           finished_at = CASE WHEN e.attempts >= e.max_attempts THEN now() END,
           available_at = now(),
           locked_by = NULL,
           locked_until = NULL
      FROM expired
     WHERE e.id = expired.id;

    RETURN QUERY
    WITH candidates AS (
        SELECT e.id FROM singapay.transaction_events e
         WHERE e.state = 'available'
           AND e.available_at <= now()
           AND NOT EXISTS (
                SELECT 1 FROM singapay.transaction_events p
                 WHERE p.transaction_key = e.transaction_key
                   AND p.version < e.version
                   AND p.state IN ('available', 'running'))
         ORDER BY e.id
         LIMIT batch
         FOR UPDATE OF e SKIP LOCKED
    ), claimed AS (
        UPDATE singapay.transaction_events e
           SET state = 'running',
               attempts = e.attempts + 1,
               locked_by = consumer,
               locked_until = now() + lease
          FROM candidates
         WHERE e.id = candidates.id
        RETURNING e.*
    )
    SELECT * FROM claimed ORDER BY claimed.id;
END;
$$;

-- Marks a claimed event done. False when `consumer` no longer holds a live lease on it
-- (its lease expired, or another consumer has it): the fence that keeps a stalled
-- consumer from acknowledging work someone else is doing.
CREATE FUNCTION singapay.ack_event(id bigint, consumer text)
RETURNS boolean
LANGUAGE sql AS $$
    WITH done AS (
        UPDATE singapay.transaction_events e
           SET state = 'done', locked_until = NULL, finished_at = now()
         WHERE e.id = ack_event.id
           AND e.state = 'running'
           AND e.locked_by = ack_event.consumer
           AND e.locked_until >= now()
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM done);
$$;

-- Gives a claimed event back after a failure. It becomes claimable again after `delay`
-- doubled for every earlier attempt (delay, 2×delay, 4×delay, …; default base 1 second,
-- capped at one hour or at `delay` if that is longer), or goes 'dead' once it has used
-- max_attempts. Fenced like ack_event.
CREATE FUNCTION singapay.nack_event(id bigint, consumer text, error text, delay interval)
RETURNS boolean
LANGUAGE sql AS $$
    WITH failed AS (
        UPDATE singapay.transaction_events e
           SET state = CASE WHEN e.attempts >= e.max_attempts THEN 'dead' ELSE 'available' END,
               available_at = CASE WHEN e.attempts >= e.max_attempts THEN e.available_at
                  ELSE now() + least(
                        greatest(coalesce(nack_event.delay, interval '1 second'), interval '0')
                            * power(2, least(greatest(e.attempts - 1, 0), 30)),
                        greatest(coalesce(nack_event.delay, interval '0'), interval '1 hour'))
               END,
               finished_at = CASE WHEN e.attempts >= e.max_attempts THEN now() END,
               last_error = left(nack_event.error, 10000),
               locked_by = NULL,
               locked_until = NULL
         WHERE e.id = nack_event.id
           AND e.state = 'running'
           AND e.locked_by = nack_event.consumer
           AND e.locked_until >= now()
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM failed);
$$;

-- A wake-up for LISTENing consumers, sent on commit. Not a delivery guarantee: consumers
-- also poll (a connection through a transaction-mode pooler never hears it).
CREATE FUNCTION singapay.notify_transaction_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('singapay_transaction_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER transaction_events_notify
    AFTER INSERT ON singapay.transaction_events
    FOR EACH STATEMENT EXECUTE FUNCTION singapay.notify_transaction_events();

-- The Debezium outbox event router's shape (id, aggregatetype, aggregateid, type, payload).
CREATE VIEW singapay.outbox AS
SELECT e.event_id                                   AS id,
       'singapay.' || coalesce(e.payload ->> 'product', 'transaction') AS aggregatetype,
       e.transaction_key                            AS aggregateid,
       'transaction.' || e.to_status                AS type,
       e.payload                                    AS payload,
       e.created_at                                 AS "timestamp",
       e.id                                         AS queue_id
  FROM singapay.transaction_events e;

-- Every state change of every transaction, with the delivery that caused it.
CREATE VIEW singapay.transaction_history AS
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

-- Authentic deliveries refused in the last 7 days (bad signatures are never stored; they
-- are in the logs and metrics).
CREATE VIEW singapay.recent_rejections AS
SELECT r.id,
       r.reason,
       r.received_at,
       r.last_received_at,
       r.times_received,
       r.x_timestamp,
       r.signed_at,
       r.received_at - r.signed_at AS clock_skew,
       r.credential,
       r.partner_id,
       r.request_path,
       length(r.body)              AS body_bytes,
       r.replayed_delivery_id
  FROM singapay.rejected_deliveries r
 WHERE r.last_received_at > now() - interval '7 days';

-- Deliveries Singapay says to follow up with an inquiry-status call (SP001/SP002/SP005
-- without a transaction status), with the transaction's current state.
CREATE VIEW singapay.inquiries_needed AS
SELECT d.id          AS delivery_id,
       d.received_at,
       d.webhook_type,
       d.transaction_key,
       d.response_code,
       d.response_message,
       t.status      AS current_status,
       t.version     AS current_version,
       t.updated_at  AS status_updated_at
  FROM singapay.deliveries d
  LEFT JOIN singapay.transactions t ON t.transaction_key = d.transaction_key
 WHERE d.needs_inquiry;

-- Queue depth by state, with the age of the oldest event that is due.
CREATE VIEW singapay.queue_health AS
SELECT s.state,
       count(e.id)                                                         AS events,
       count(e.id) FILTER (WHERE s.state = 'available' AND e.available_at <= now()) AS due,
       count(e.id) FILTER (WHERE s.state = 'available' AND e.available_at > now())  AS delayed,
       count(e.id) FILTER (WHERE s.state = 'running' AND e.locked_until < now())    AS expired_leases,
       now() - min(e.available_at) FILTER (WHERE s.state = 'available' AND e.available_at <= now())
                                                                           AS oldest_due_age,
       min(e.created_at)                                                   AS oldest_created_at
  FROM (VALUES (1, 'available'), (2, 'running'), (3, 'done'), (4, 'dead')) AS s (ord, state)
  LEFT JOIN singapay.transaction_events e ON e.state = s.state
 GROUP BY s.ord, s.state
 ORDER BY s.ord;
