-- Consumers are woken after intake commits, not by a trigger inside the transaction.
--
-- A NOTIFY inside a transaction takes a database-wide lock at commit and holds it until
-- the commit is flushed, so every transaction that notifies commits strictly one after
-- the other, each paying its own WAL flush: intake writers could never share a flush.
-- Intake now commits without notifying and then sends the wake-up on its own
-- (`store::wake_consumers`, asynchronously committed). The notification stays what it
-- was documented to be: a wake-up without content that consumers back up by polling.
DROP TRIGGER transaction_events_notify ON singapay.transaction_events;
DROP FUNCTION singapay.notify_transaction_events();
