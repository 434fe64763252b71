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
-- * singapay.request_check(transaction_key [, singapay_id, merchant_reference]): asks for a
--   check now, also of a transaction nothing stored names yet (an e-wallet checkout that
--   never called back), given what its inquiry needs.
-- * transactions.last_delivery_id may be NULL: a transaction known only from an inquiry's
--   answer has no delivery. Dropping NOT NULL changes the catalog only (no rewrite, no
--   scan), under a brief exclusive lock; like the other migrations this one gives up after
--   5 s rather than queue callbacks behind a long transaction, and can be run again.
SET LOCAL lock_timeout = '5s';

ALTER TABLE singapay.transactions ALTER COLUMN last_delivery_id DROP NOT NULL;

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
    -- What a requested check of an unknown transaction was given to ask with.
    singapay_id             text,
    merchant_reference      text,
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

-- Asks for transaction_key to be checked at once (by the next reconciler pass). A key that
-- is neither a stored transaction nor named by a stored delivery is accepted when its
-- product has an inquiry, with the identifiers the inquiry needs when the key does not hold
-- them (an e-wallet checkout: Singapay's id); false otherwise.
CREATE FUNCTION singapay.request_check(
    p_transaction_key text,
    p_singapay_id text DEFAULT NULL,
    p_merchant_reference text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM singapay.transactions WHERE transaction_key = p_transaction_key)
       AND NOT EXISTS (SELECT 1 FROM singapay.deliveries WHERE transaction_key = p_transaction_key)
       AND NOT (split_part(p_transaction_key, ':', 1) IN
                    ('va', 'qris', 'payment_link', 'ewallet', 'disbursement', 'ewallet_topup', 'qris_issuer',
                     'direct_debit')
                AND length(p_transaction_key) > length(split_part(p_transaction_key, ':', 1)) + 1) THEN
        RETURN false;
    END IF;
    INSERT INTO singapay.reconcile_checks (transaction_key, reason, delivery_id, singapay_id, merchant_reference)
    VALUES (p_transaction_key, 'requested',
            (SELECT max(id) FROM singapay.deliveries WHERE transaction_key = p_transaction_key AND needs_inquiry),
            p_singapay_id, p_merchant_reference)
    ON CONFLICT (transaction_key) DO UPDATE
       SET due_at = now(), state = 'open', not_found = 0, last_error = NULL,
           singapay_id = coalesce(excluded.singapay_id, singapay.reconcile_checks.singapay_id),
           merchant_reference = coalesce(excluded.merchant_reference, singapay.reconcile_checks.merchant_reference);
    RETURN true;
END
$$;
