-- Reconciler fidelity: which credential and account each question went to, which record a
-- status came from, the list pages a search read, answers about another record, and
-- checks flagged for a person.
--
-- * inquiries: credential (the label of the API credential asked with), account_id,
--   identified_by (`field=value` of the answer that named the record its status came
--   from), steps (the partial-match list pages read before a by-id read); `answer` may
--   now also be 'mismatch' (the answer was about another record: never applied) or
--   'ambiguous' (a search found several records with our reff_no, or none in its pages).
-- * reconcile_checks: unreadable counts the answers that could not be applied; at
--   RECONCILE_UNREADABLE_ATTEMPTS the check is 'flagged' and asked no more.
-- * singapay.reconcile_attention: the checks a person must look at (gave up, flagged).
-- * request_check reopens a flagged check and resets its counts.
--
-- New columns are nullable or have constant defaults (catalog-only). Replacing the two
-- CHECKs validates them under an exclusive lock of inquiries and reconcile_checks (tables
-- only reconciliation writes; callbacks are not held up); the migration gives up after 5 s
-- rather than queue behind a long transaction.
SET LOCAL lock_timeout = '5s';

ALTER TABLE singapay.inquiries
    ADD COLUMN credential    text,
    ADD COLUMN account_id    text,
    ADD COLUMN identified_by text,
    ADD COLUMN steps         jsonb;

ALTER TABLE singapay.inquiries DROP CONSTRAINT inquiries_answer_check;
ALTER TABLE singapay.inquiries ADD CONSTRAINT inquiries_answer_check
    CHECK (answer IN ('status', 'mismatch', 'ambiguous', 'not_found', 'retry_later', 'token_rejected',
                      'forbidden', 'unreadable'));

ALTER TABLE singapay.reconcile_checks ADD COLUMN unreadable integer NOT NULL DEFAULT 0;
ALTER TABLE singapay.reconcile_checks DROP CONSTRAINT reconcile_checks_state_check;
ALTER TABLE singapay.reconcile_checks ADD CONSTRAINT reconcile_checks_state_check
    CHECK (state IN ('open', 'gave_up', 'flagged'));

CREATE VIEW singapay.reconcile_attention AS
SELECT c.transaction_key,
       c.state,
       c.reason,
       c.asked,
       c.not_found,
       c.unreadable,
       c.last_error,
       c.created_at,
       t.status            AS transaction_status,
       t.updated_at        AS transaction_updated_at,
       i.answer            AS last_answer,
       i.asked_at          AS last_asked_at,
       i.credential        AS last_credential,
       i.account_id        AS last_account_id,
       i.detail            AS last_detail
  FROM singapay.reconcile_checks c
  LEFT JOIN singapay.transactions t ON t.transaction_key = c.transaction_key
  LEFT JOIN singapay.inquiries i ON i.id = c.last_inquiry_id
 WHERE c.state IN ('gave_up', 'flagged');

CREATE OR REPLACE FUNCTION singapay.request_check(
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
       SET due_at = now(), state = 'open', not_found = 0, unreadable = 0, last_error = NULL,
           singapay_id = coalesce(excluded.singapay_id, singapay.reconcile_checks.singapay_id),
           merchant_reference = coalesce(excluded.merchant_reference, singapay.reconcile_checks.merchant_reference);
    RETURN true;
END
$$;
