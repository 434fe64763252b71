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
-- * request_check, which reopens a flagged check and resets its counts too, is replaced by
--   the next migration (20261207000002_hardening.sql).
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
