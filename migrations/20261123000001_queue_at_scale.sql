-- The queue at scale: finished events stay in place but off the claiming path, and
-- consumers acknowledge a batch in one call.
--
-- No data is rewritten and no index is built: on a populated table this migration takes
-- only catalogue locks (the functions) and a SHARE UPDATE EXCLUSIVE lock on the table
-- (its vacuum settings), which does not block reads, inserts, claims or acks.

-- Claiming walks transaction_events_claimable_idx, (available_at, id) WHERE state =
-- 'available': it holds only claimable rows, in the order they are handed out, so the cost
-- of a claim does not grow with the finished events kept for RETENTION_DAYS. (The previous
-- version ordered by id, which Postgres answered from the primary key, stepping over
-- every finished event from the lowest id up.) The per-transaction order check is a probe
-- of transaction_events_unfinished_key_idx; expired leases are found through
-- transaction_events_running_idx.
CREATE OR REPLACE FUNCTION singapay.claim_events(consumer text, batch integer, lease interval)
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
         ORDER BY e.locked_until, e.id
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
         ORDER BY e.available_at, e.id
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

-- Marks claimed events done, in one statement; returns the ids it acknowledged, in id
-- order. Fenced like ack_event: an id that `consumer` no longer holds a live lease on is
-- left as it is and is missing from the result.
CREATE FUNCTION singapay.ack_events(ids bigint[], consumer text)
RETURNS SETOF bigint
LANGUAGE sql AS $$
    WITH done AS (
        UPDATE singapay.transaction_events e
           SET state = 'done', locked_until = NULL, finished_at = now()
         WHERE e.id = ANY (ack_events.ids)
           AND e.state = 'running'
           AND e.locked_by = ack_events.consumer
           AND e.locked_until >= now()
        RETURNING e.id
    )
    SELECT id FROM done ORDER BY id;
$$;

-- Gives claimed events back, as nack_event does for one (same backoff, same dead-lettering,
-- same fence); returns the ids it gave back, in id order.
CREATE FUNCTION singapay.nack_events(ids bigint[], consumer text, error text, delay interval)
RETURNS SETOF bigint
LANGUAGE sql AS $$
    WITH failed AS (
        UPDATE singapay.transaction_events e
           SET state = CASE WHEN e.attempts >= e.max_attempts THEN 'dead' ELSE 'available' END,
               available_at = CASE WHEN e.attempts >= e.max_attempts THEN e.available_at
                  ELSE now() + least(
                        greatest(coalesce(nack_events.delay, interval '1 second'), interval '0')
                            * power(2, least(greatest(e.attempts - 1, 0), 30)),
                        greatest(coalesce(nack_events.delay, interval '0'), interval '1 hour'))
               END,
               finished_at = CASE WHEN e.attempts >= e.max_attempts THEN now() END,
               last_error = left(nack_events.error, 10000),
               locked_by = NULL,
               locked_until = NULL
         WHERE e.id = ANY (nack_events.ids)
           AND e.state = 'running'
           AND e.locked_by = nack_events.consumer
           AND e.locked_until >= now()
        RETURNING e.id
    )
    SELECT id FROM failed ORDER BY id;
$$;

-- Every claim and every ack leaves a dead row version behind, and the claimable index keeps
-- pointing at it until a vacuum. With the default thresholds (20 % of the table) a table
-- holding 90 days of finished events would be vacuumed once per millions of claims, and
-- every claim in between would step over the index entries of everything claimed since.
-- Vacuum after every 10,000 changed rows instead, whatever the table's size.
ALTER TABLE singapay.transaction_events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000
);
