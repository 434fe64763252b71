-- The callback's bearer token is a credential: it is kept only as long as `verify` needs it.
-- Every delivery and rejection gets the token's SHA-256 in the statement that inserts it;
-- `prune` replaces tokens older than BEARER_RETENTION_HOURS with '' and keeps the hash,
-- against which `verify --token` checks a token an operator supplies.
-- New columns are nullable (catalog-only); rows stored before this migration get their
-- hash when prune drops their token.
SET LOCAL lock_timeout = '5s';

ALTER TABLE singapay.deliveries ADD COLUMN access_token_sha256 bytea;
ALTER TABLE singapay.rejected_deliveries ADD COLUMN access_token_sha256 bytea;
