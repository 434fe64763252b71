-- The X-Timestamp header exactly as received: it is signed as text, so `verify` needs the
-- original string, not only the instant it denotes.
ALTER TABLE singapay.deliveries ADD COLUMN x_timestamp text;
UPDATE singapay.deliveries SET x_timestamp = extract(epoch FROM signed_at)::bigint::text WHERE x_timestamp IS NULL;
