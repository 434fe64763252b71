-- Intake: every verified delivery, the current state per transaction, and the queue of
-- state changes. Idempotency lives in the unique keys below, never in application checks.

CREATE SCHEMA IF NOT EXISTS singapay;

CREATE TABLE singapay.deliveries (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at             timestamptz NOT NULL DEFAULT now(),
    last_received_at        timestamptz NOT NULL DEFAULT now(),
    times_received          integer     NOT NULL DEFAULT 1,
    -- SHA-256 of PHP's canonical form when one exists, else of the raw body: the dedupe key.
    content_sha256          bytea       NOT NULL UNIQUE CHECK (length(content_sha256) = 32),
    webhook_type            text        NOT NULL,
    event                   text,
    transaction_key         text,
    response_code           text,
    response_message        text,
    response_class          text,
    envelope_status         integer,
    envelope_success        boolean,
    transaction_status_code text,
    transaction_status_desc text,
    status                  text,
    needs_inquiry           boolean     NOT NULL DEFAULT false,
    outcome                 text        NOT NULL
        CHECK (outcome IN ('applied', 'unchanged', 'stale', 'conflict', 'batch', 'unrecognised')),
    unrecognised_reason     text,
    partner_id              text,
    credential              text        NOT NULL,
    signature_form          text        NOT NULL CHECK (signature_form IN ('php', 'raw', 'sorted')),
    signed_at               timestamptz NOT NULL,
    event_at                timestamptz,
    request_path            text        NOT NULL,
    request_id              text,
    -- What was signed besides the body, so `verify` can explain a stored delivery later.
    x_signature             text        NOT NULL,
    access_token            text        NOT NULL,
    body                    bytea       NOT NULL,
    payload                 jsonb
);

CREATE INDEX deliveries_transaction_key_idx ON singapay.deliveries (transaction_key);
CREATE INDEX deliveries_received_at_idx ON singapay.deliveries (received_at);
CREATE INDEX deliveries_needs_inquiry_idx ON singapay.deliveries (id) WHERE needs_inquiry;

CREATE TABLE singapay.transactions (
    transaction_key         text        PRIMARY KEY,
    product                 text        NOT NULL,
    singapay_id             text,
    merchant_reference      text,
    status                  text        NOT NULL,
    transaction_status_code text,
    last_response_code      text,
    amount                  numeric,
    currency                text,
    version                 integer     NOT NULL CHECK (version >= 1),
    first_delivery_id       bigint      REFERENCES singapay.deliveries (id) ON DELETE SET NULL,
    last_delivery_id        bigint      NOT NULL REFERENCES singapay.deliveries (id),
    processed_at            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX transactions_merchant_reference_idx ON singapay.transactions (merchant_reference);

CREATE TABLE singapay.transaction_events (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- UUIDv5 of "transaction_key:version": the consumer's idempotency key.
    event_id                uuid        NOT NULL UNIQUE,
    transaction_key         text        NOT NULL REFERENCES singapay.transactions (transaction_key),
    version                 integer     NOT NULL CHECK (version >= 1),
    webhook_type            text        NOT NULL,
    from_status             text,
    to_status               text        NOT NULL,
    response_code           text,
    transaction_status_code text,
    delivery_id             bigint      REFERENCES singapay.deliveries (id) ON DELETE SET NULL,
    payload                 jsonb       NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    state                   text        NOT NULL DEFAULT 'available'
        CHECK (state IN ('available', 'running', 'done', 'dead')),
    attempts                integer     NOT NULL DEFAULT 0,
    max_attempts            integer     NOT NULL DEFAULT 25 CHECK (max_attempts >= 1),
    available_at            timestamptz NOT NULL DEFAULT now(),
    locked_by               text,
    locked_until            timestamptz,
    last_error              text,
    UNIQUE (transaction_key, version)
);

CREATE INDEX transaction_events_claimable_idx
    ON singapay.transaction_events (available_at, id) WHERE state = 'available';
CREATE INDEX transaction_events_running_idx
    ON singapay.transaction_events (locked_until) WHERE state = 'running';
CREATE INDEX transaction_events_delivery_idx ON singapay.transaction_events (delivery_id);

-- Correctly signed deliveries refused for their timestamp alone, kept for `replay`.
CREATE TABLE singapay.rejected_deliveries (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at             timestamptz NOT NULL DEFAULT now(),
    last_received_at        timestamptz NOT NULL DEFAULT now(),
    times_received          integer     NOT NULL DEFAULT 1,
    content_sha256          bytea       NOT NULL UNIQUE CHECK (length(content_sha256) = 32),
    reason                  text        NOT NULL CHECK (reason IN ('stale_timestamp')),
    x_timestamp             text        NOT NULL,
    signed_at               timestamptz,
    partner_id              text,
    credential              text        NOT NULL,
    signature_form          text        NOT NULL CHECK (signature_form IN ('php', 'raw', 'sorted')),
    request_path            text        NOT NULL,
    request_id              text,
    x_signature             text        NOT NULL,
    access_token            text        NOT NULL,
    body                    bytea       NOT NULL,
    replayed_delivery_id    bigint      REFERENCES singapay.deliveries (id) ON DELETE SET NULL
);
