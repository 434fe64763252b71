-- History by day, step 2 of 3: proves that every row of today's tables lies before the
-- partitioned tables' first day (the constraints step 1 added NOT VALID), so that step 3
-- attaches them without a scan. Each VALIDATE reads its table whole, under a SHARE UPDATE
-- EXCLUSIVE lock: callbacks, consumers and reconciliation go on reading and writing while
-- it runs (only other schema changes, VACUUM and ANALYZE of the table wait).
ALTER TABLE singapay.deliveries VALIDATE CONSTRAINT history_legacy_range;
ALTER TABLE singapay.event_log VALIDATE CONSTRAINT history_legacy_range;
ALTER TABLE singapay.rejected_deliveries VALIDATE CONSTRAINT history_legacy_range;
ALTER TABLE singapay.inquiries VALIDATE CONSTRAINT history_legacy_range;
