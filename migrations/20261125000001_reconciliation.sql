-- Reconciliation: the transactions to ask Singapay about, and every exchange with its API.
--
-- * singapay.reconcile_checks: one row per transaction to ask about, with why
--   (needs_inquiry, overdue, requested), when it is due, how often it was asked, and a
--   lease (locked_by, locked_until) so that of several replicas exactly one asks at a time.
--   A check is deleted once Singapay gave a final status; a check that cannot be answered
--   (no inquiry for the product, not found after RECONCILE_NOT_FOUND_ATTEMPTS) stays with
--   state = 'gave_up' and its last_error, for an operator.
-- * singapay.inquiries: every question and its raw answer, what it was read as and what
--   it did to the transaction (transition, version): the audit of reconciliation.
-- * singapay.request_check(transaction_key): asks for a check now.
--
-- New tables and a function only: no lock on anything intake writes.
SET LOCAL lock_timeout = '5s';

CREATE TABLE singapay.inquiries (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asked_at                timestamptz NOT NULL DEFAULT now(),
    transaction_key         text        NOT NULL,
    reason                  text        NOT NULL CHECK (reason IN ('needs_inquiry', 'overdue', 'requested')),
    -- The delivery that needed the inquiry, when one did.
    delivery_id             bigint      REFERENCES singapay.deliveries (id) ON DELETE SET NULL,
    asked_by                text        NOT NULL,
    method                  text        NOT NULL,
    path                    text        NOT NULL,
    request_body            jsonb,
    -- NULL when no answer came (timeout, connection refused).
    http_status             integer,
    response_body           bytea       NOT NULL,
    answer                  text        NOT NULL
        CHECK (answer IN ('status', 'not_found', 'retry_later', 'token_rejected', 'forbidden', 'unreadable')),
    detail                  text,
    status                  text,
    transaction_status_code text,
    response_code           text,
    transition              text        CHECK (transition IN ('applied', 'unchanged', 'stale', 'conflict')),
    -- The transaction's version after the answer was applied.
    version                 integer,
    elapsed_ms              integer     NOT NULL,
    retried_with_new_token  boolean     NOT NULL DEFAULT false
);

CREATE INDEX inquiries_transaction_key_idx ON singapay.inquiries (transaction_key, id);
CREATE INDEX inquiries_asked_at_idx ON singapay.inquiries (asked_at);
-- For the foreign keys' ON DELETE when retention deletes a delivery.
CREATE INDEX inquiries_delivery_idx ON singapay.inquiries (delivery_id) WHERE delivery_id IS NOT NULL;

CREATE TABLE singapay.reconcile_checks (
    transaction_key         text        PRIMARY KEY,
    reason                  text        NOT NULL CHECK (reason IN ('needs_inquiry', 'overdue', 'requested')),
    -- The order checks are taken in: callbacks that need an inquiry, then overdue, then requested.
    priority                smallint    NOT NULL GENERATED ALWAYS AS
        (CASE reason WHEN 'needs_inquiry' THEN 0 WHEN 'overdue' THEN 1 ELSE 2 END) STORED,
    delivery_id             bigint      REFERENCES singapay.deliveries (id) ON DELETE SET NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    due_at                  timestamptz NOT NULL DEFAULT now(),
    asked                   integer     NOT NULL DEFAULT 0,
    not_found               integer     NOT NULL DEFAULT 0,
    state                   text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'gave_up')),
    locked_by               text,
    locked_until            timestamptz,
    last_inquiry_id         bigint      REFERENCES singapay.inquiries (id) ON DELETE SET NULL,
    last_error              text
);

-- Claiming reads this in order and stops after the few it takes, however many are waiting.
CREATE INDEX reconcile_checks_due_idx ON singapay.reconcile_checks (priority, due_at) WHERE state = 'open';
-- For the foreign keys' ON DELETE when retention deletes a delivery or an inquiry.
CREATE INDEX reconcile_checks_delivery_idx ON singapay.reconcile_checks (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX reconcile_checks_last_inquiry_idx ON singapay.reconcile_checks (last_inquiry_id)
    WHERE last_inquiry_id IS NOT NULL;

-- Asks for transaction_key to be checked at once (by the next reconciler pass). False when
-- the key is neither a stored transaction nor named by a stored delivery.
CREATE FUNCTION singapay.request_check(p_transaction_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM singapay.transactions WHERE transaction_key = p_transaction_key)
       AND NOT EXISTS (SELECT 1 FROM singapay.deliveries WHERE transaction_key = p_transaction_key) THEN
        RETURN false;
    END IF;
    INSERT INTO singapay.reconcile_checks (transaction_key, reason, delivery_id)
    VALUES (p_transaction_key, 'requested',
            (SELECT max(id) FROM singapay.deliveries WHERE transaction_key = p_transaction_key AND needs_inquiry))
    ON CONFLICT (transaction_key) DO UPDATE
       SET due_at = now(), state = 'open', not_found = 0, last_error = NULL;
    RETURN true;
END
$$;
