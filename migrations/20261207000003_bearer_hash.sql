-- The callback's bearer token is a credential: it is kept only as long as `verify` needs it.
-- Every delivery and rejection gets the token's SHA-256 on insert (a trigger, whatever
-- writes the row); `prune` replaces tokens older than BEARER_RETENTION_HOURS with '' and
-- keeps the hash, against which `verify --token` checks a token an operator supplies.
-- New columns are nullable (catalog-only); rows stored before this migration get their
-- hash when prune drops their token.
SET LOCAL lock_timeout = '5s';

ALTER TABLE singapay.deliveries ADD COLUMN access_token_sha256 bytea;
ALTER TABLE singapay.rejected_deliveries ADD COLUMN access_token_sha256 bytea;

CREATE FUNCTION singapay.hash_access_token() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.access_token <> '' THEN
        NEW.access_token_sha256 := sha256(convert_to(NEW.access_token, 'UTF8'));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER deliveries_hash_access_token BEFORE INSERT OR UPDATE OF access_token ON singapay.deliveries
    FOR EACH ROW EXECUTE FUNCTION singapay.hash_access_token();
CREATE TRIGGER rejected_deliveries_hash_access_token BEFORE INSERT OR UPDATE OF access_token
    ON singapay.rejected_deliveries
    FOR EACH ROW EXECUTE FUNCTION singapay.hash_access_token();
