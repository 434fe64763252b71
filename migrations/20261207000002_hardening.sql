-- Hardening:
--
-- * request_check refuses an identifier that contradicts the stored transaction: asked
--   with another transaction's Singapay id or reference, its answer would be applied to
--   this key (the identity check compares the answer with what was asked). It raises
--   (SQLSTATE 22023) naming which one, instead of acting on the other id's answer.
-- * singapay_consumer: a role for the merchant's consuming services that can call the
--   queue functions (claim, ack, nack), request a check, and read the views, and nothing
--   else (no UPDATE of singapay.transactions, no bearer or body in deliveries). The queue
--   functions and request_check run as their owner (SECURITY DEFINER, with a fixed
--   search_path) so the role needs no table privileges; grant it to each consumer's login
--   role: GRANT singapay_consumer TO orders_service. Roles that already had privileges on
--   the singapay tables keep EXECUTE on these functions (existing consumers go on working);
--   other roles lose it (PUBLIC's is revoked). Roles belong to the cluster: the role
--   is created only when the migrating user may create roles (else a NOTICE; docs/
--   operations.md has the statements for an administrator), and creating it concurrently
--   from two databases is harmless.
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE FUNCTION singapay.request_check(
    p_transaction_key text,
    p_singapay_id text DEFAULT NULL,
    p_merchant_reference text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    stored record;
BEGIN
    SELECT singapay_id, merchant_reference INTO stored
      FROM singapay.transactions WHERE transaction_key = p_transaction_key;
    IF FOUND THEN
        IF p_singapay_id IS NOT NULL AND stored.singapay_id IS NOT NULL AND p_singapay_id <> stored.singapay_id THEN
            RAISE EXCEPTION 'request_check: % has Singapay id %, not %', p_transaction_key, stored.singapay_id, p_singapay_id
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF p_merchant_reference IS NOT NULL AND stored.merchant_reference IS NOT NULL
           AND p_merchant_reference <> stored.merchant_reference THEN
            RAISE EXCEPTION 'request_check: % has reference %, not %', p_transaction_key, stored.merchant_reference,
                p_merchant_reference
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM singapay.deliveries WHERE transaction_key = p_transaction_key)
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

-- The consumer's entry points run as their owner.
ALTER FUNCTION singapay.claim_events(text, integer, interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION singapay.ack_event(bigint, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION singapay.ack_events(bigint[], text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION singapay.nack_event(bigint, text, text, interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION singapay.nack_events(bigint[], text, text, interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION singapay.request_check(text, text, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- Roles that consume today (any privilege on a singapay table) keep calling them; no one
-- else may run them with the owner's rights.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT grantee FROM information_schema.role_table_grants
              WHERE table_schema = 'singapay' AND grantee NOT IN ('PUBLIC', current_user) LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION singapay.claim_events(text, integer, interval),
            singapay.ack_event(bigint, text), singapay.ack_events(bigint[], text),
            singapay.nack_event(bigint, text, text, interval), singapay.nack_events(bigint[], text, text, interval),
            singapay.request_check(text, text, text) TO %I', r.grantee);
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION singapay.claim_events(text, integer, interval), singapay.ack_event(bigint, text),
    singapay.ack_events(bigint[], text), singapay.nack_event(bigint, text, text, interval),
    singapay.nack_events(bigint[], text, text, interval), singapay.request_check(text, text, text) FROM PUBLIC;

DO $$
DECLARE
    v record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'singapay_consumer') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RAISE NOTICE 'singapay_consumer not created: % may not create roles (docs/operations.md)', current_user;
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE singapay_consumer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created meanwhile by a migration of another database
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA singapay TO singapay_consumer');
    EXECUTE 'GRANT EXECUTE ON FUNCTION singapay.claim_events(text, integer, interval), singapay.ack_event(bigint, text),
        singapay.ack_events(bigint[], text), singapay.nack_event(bigint, text, text, interval),
        singapay.nack_events(bigint[], text, text, interval), singapay.request_check(text, text, text)
        TO singapay_consumer';
    FOR v IN SELECT viewname FROM pg_views WHERE schemaname = 'singapay' LOOP
        EXECUTE format('GRANT SELECT ON singapay.%I TO singapay_consumer', v.viewname);
    END LOOP;
END
$$;
