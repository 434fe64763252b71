//! Postgres: deliveries, transactions and the queue. Everything one callback writes happens
//! in one transaction; idempotency comes from unique keys (`ON CONFLICT`), never from a
//! read followed by a write.

mod batch;
mod columns;
mod deliveries;
mod events;
pub mod history;
pub mod inquiries;
mod jsonb;
mod lookups;
mod prune;
pub mod queue;
mod transactions;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use batch::{
    write, write_available, Attempt, BatchError, Write, Written, BEGIN_BATCH, INQUIRY_WEBHOOK_TYPE, REPREPARE_EVERY,
};
pub use columns::{column_text, fit_for_columns};
pub use deliveries::{Delivery, Outcome, Rejection, RejectionReason, Signed, Stored};
pub use events::{event_id, EVENT_NAMESPACE_NAME};
pub use jsonb::to_jsonb_text;
pub use lookups::{
    create_database_if_missing, delivery_body, kept_request, lock_rejection, mark_replayed, queue_gauges, Kept,
    KeptRequest, QueueGauges, Rejected, QUEUE_GAUGES, RECENT_DELIVERIES,
};
pub use prune::{drop_bearers, prune, prune_checks, PruneReport};
pub use transactions::StateChange;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why something could not be stored. Cloneable: one failed batch answers every request
/// in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Contention that outlived our retries (a deadlock, `lock_timeout`, a transaction
    /// locked by another session): Singapay should try again later. Says nothing about
    /// the database as a whole.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Postgres refuses writes as a whole (unreachable, read-only, a privilege revoked, a
    /// system error…): every item, and any retry of one item alone, meets it. Singapay
    /// should try again later; `/readyz` names the cause until a write commits again.
    #[error("storage unavailable ({code}): {detail}", code = .0.code(), detail = .1)]
    Refused(Refusal, String),
    /// More callbacks are waiting to be written than `INTAKE_QUEUE_CAPACITY`.
    #[error("storage busy: the intake queue is full")]
    Busy,
    /// The schema is missing or older than this build (migrations not applied): Singapay
    /// should try again once someone runs `migrate`.
    #[error("the database schema is missing or behind this version; run `singapay-webhooks migrate`: {0}")]
    SchemaBehind(String),
    /// Postgres refused one item's data (or a bug): the item alone is answered 500.
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// "Not now" rather than "never": answered 503 with Retry-After, and never a reason to
    /// split a batch (a retry of one item alone would meet it too).
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Internal(_))
    }

    /// The database-wide cause, for `/readyz`.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            StoreError::Refused(r, _) => Some(*r),
            StoreError::SchemaBehind(_) => Some(Refusal::MigrationsPending),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match failure(&e) {
            Failure::Item => StoreError::Internal(e.to_string()),
            Failure::Contention => StoreError::Unavailable(e.to_string()),
            Failure::Refused(Refusal::MigrationsPending) => StoreError::SchemaBehind(e.to_string()),
            Failure::Refused(r) => StoreError::Refused(r, e.to_string()),
        }
    }
}

impl From<BatchError> for StoreError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Db(e) => e.into(),
            // Still "racing" after every retry: no longer a race but something in the batch
            // (an item Postgres refuses as a duplicate); the batch is split to find it.
            BatchError::Raced(_) => StoreError::Internal(e.to_string()),
        }
    }
}

/// What a failed write says, by SQLSTATE class: whether splitting the batch can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// One item's data: 21 cardinality violation, 22 data exception, 23 integrity
    /// constraint violation (a unique violation is a race, retried, before it gets here),
    /// 44 WITH CHECK OPTION violation, 54 program limit exceeded (a value too large to
    /// index, a statement too complex), and rows that do not decode. The batch is split
    /// until the culprit alone gets it (500).
    Item,
    /// Contention: 40 serialization failure or deadlock (after retries), 55 lock not
    /// available (`lock_timeout`), 57014 statement timeout or cancel. 503, no split; the
    /// database itself is fine.
    Contention,
    /// Every write would meet it: 503, no split, and `/readyz` names it.
    Refused(Refusal),
}

/// Why Postgres refuses writes as a whole, as `/readyz` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 08 connection exception, 57P01–57P03 (shut down, starting up), I/O and TLS
    /// errors, the pool exhausted or closed.
    Unreachable,
    /// 28: DATABASE_URL's credentials refused.
    AuthenticationFailed,
    /// 3D000: DATABASE_URL's database does not exist.
    DatabaseNotFound,
    /// 42P01, 42703, 42883, 3F000: a relation, column, function or schema missing.
    MigrationsPending,
    /// 25006 read_only_sql_transaction: a standby after failover, or
    /// `default_transaction_read_only` set on the database or role.
    ReadOnly,
    /// 42501 insufficient_privilege: the role lost a privilege intake needs.
    PermissionDenied,
    /// 53: disk full, out of memory, too many connections.
    OutOfResources,
    /// Anything else no single item is to blame for: 58 system error, XX internal error,
    /// 57 operator intervention, 25 invalid transaction state, other 42 errors, 0A, P0…
    Failing,
}

impl Refusal {
    /// What `/readyz` answers as `error.code`.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Unreachable => "storage_unavailable",
            Refusal::AuthenticationFailed => "database_authentication_failed",
            Refusal::DatabaseNotFound => "database_not_found",
            Refusal::MigrationsPending => "migrations_pending",
            Refusal::ReadOnly => "database_read_only",
            Refusal::PermissionDenied => "database_permission_denied",
            Refusal::OutOfResources => "database_out_of_resources",
            Refusal::Failing => "database_failing",
        }
    }

    /// What `/readyz` answers as `error.message`.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unreachable => "Postgres is not reachable.",
            Refusal::AuthenticationFailed => "Postgres refused the credentials in DATABASE_URL.",
            Refusal::DatabaseNotFound => "The database named in DATABASE_URL does not exist.",
            Refusal::MigrationsPending => {
                "The database schema is not initialised; run `singapay-webhooks migrate` (or `serve --migrate`)."
            }
            Refusal::ReadOnly => {
                "The database is read-only (a standby, or default_transaction_read_only); callbacks are answered 503."
            }
            Refusal::PermissionDenied => {
                "The database role lacks a privilege intake needs on the singapay tables; callbacks are answered 503."
            }
            Refusal::OutOfResources => {
                "Postgres is out of resources (disk, memory or connections); callbacks are answered 503."
            }
            Refusal::Failing => {
                "Postgres refused the last write with a system or internal error; callbacks are answered 503."
            }
        }
    }

    /// Whether the readiness probe ([`probe_writes`]) sees this cause itself, so that a
    /// probe that passes shows it gone. The others (a disk full, an internal error) only a
    /// write that commits can show gone.
    pub fn probed(self) -> bool {
        !matches!(self, Refusal::OutOfResources | Refusal::Failing)
    }

    /// The cause, for an error that is not contention or one item's (the probe's own errors).
    pub fn of(e: &sqlx::Error) -> Refusal {
        match failure(e) {
            Failure::Refused(r) => r,
            Failure::Contention | Failure::Item => Refusal::Failing,
        }
    }
}

/// Classifies a failed write: every error a one-item retry would also meet is the whole
/// batch's (no split); only errors about one item's data split it.
pub fn failure(e: &sqlx::Error) -> Failure {
    match e {
        // A pool that timed out is also what a database that went away looks like (every
        // connection attempt failing until the acquire timeout).
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Refused(Refusal::Unreachable),
        sqlx::Error::RowNotFound
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_) => Failure::Item,
        // No partition for the row's day: creating it (or a retry once it exists) helps,
        // splitting the batch does not.
        e @ sqlx::Error::Database(_) if history::is_missing_partition(e) => Failure::Contention,
        sqlx::Error::Database(db) => db.code().map_or(Failure::Refused(Refusal::Failing), |c| sqlstate_failure(&c)),
        _ => Failure::Refused(Refusal::Failing),
    }
}

/// [`failure`] for a SQLSTATE.
pub fn sqlstate_failure(code: &str) -> Failure {
    let class = code.get(..2).unwrap_or(code);
    match (class, code) {
        ("21" | "22" | "23" | "44" | "54", _) => Failure::Item,
        ("40" | "55", _) | (_, "57014") => Failure::Contention,
        ("08", _) | (_, "57P01" | "57P02" | "57P03") => Failure::Refused(Refusal::Unreachable),
        ("28", _) => Failure::Refused(Refusal::AuthenticationFailed),
        (_, "3D000") => Failure::Refused(Refusal::DatabaseNotFound),
        (_, "42P01" | "42703" | "42883" | "3F000") => Failure::Refused(Refusal::MigrationsPending),
        (_, "25006") => Failure::Refused(Refusal::ReadOnly),
        (_, "42501") => Failure::Refused(Refusal::PermissionDenied),
        ("53", _) => Failure::Refused(Refusal::OutOfResources),
        _ => Failure::Refused(Refusal::Failing),
    }
}

/// A table, column, function or schema this build uses is missing (42P01 undefined_table,
/// 42703 undefined_column, 42883 undefined_function, 3F000 invalid_schema_name): the
/// migrations have not been applied — or, if they all have, the schema was changed by hand;
/// [`migrations_applied`] tells the two apart.
pub fn is_schema_behind(e: &sqlx::Error) -> bool {
    matches!(failure(e), Failure::Refused(Refusal::MigrationsPending))
}

/// Serialization failures and deadlocks: retrying at once usually succeeds.
pub fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// The connection itself is broken (Postgres restarted, the network cut): a new one may work.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// Not to be used again: a broken connection, or one whose session is read-only (a
/// connection to a primary that has since been demoted, or opened while the database was
/// read-only) — a new connection may reach a writable primary.
pub fn is_stale_connection(e: &sqlx::Error) -> bool {
    is_connection_error(e) || matches!(failure(e), Failure::Refused(Refusal::ReadOnly))
}

/// Privileges intake's writes need, checked by [`probe_writes`].
const WRITES_NEED: &str = "('deliveries', 'INSERT'), ('deliveries', 'UPDATE'), ('transactions', 'INSERT'),
    ('transactions', 'UPDATE'), ('event_log', 'INSERT'), ('event_queue', 'INSERT'),
    ('rejected_deliveries', 'INSERT'), ('rejected_deliveries', 'UPDATE')";

/// Whether intake could write now, in one cheap statement that writes nothing: Postgres
/// answers, the session is not read-only (a standby, `default_transaction_read_only`), the
/// role holds the privileges intake needs, and every embedded migration is applied. A
/// connection found read-only is closed, so that the next one may reach a writable primary.
pub async fn probe_writes(pool: &PgPool) -> Result<(), (Refusal, String)> {
    let failed = |e: sqlx::Error| (Refusal::of(&e), e.to_string());
    let mut conn = pool.acquire().await.map_err(failed)?;
    let probed: Result<(bool, bool, Vec<i64>), sqlx::Error> = sqlx::query_as(&format!(
        "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on',
                (SELECT bool_and(has_table_privilege('singapay.' || t, p)) FROM (VALUES {WRITES_NEED}) AS v(t, p)),
                (SELECT coalesce(array_agg(version), '{{}}') FROM _sqlx_migrations WHERE success)"
    ))
    .fetch_one(&mut *conn)
    .await;
    let (read_only, can_write, applied) = match probed {
        Ok(row) => row,
        Err(e) => {
            if is_stale_connection(&e) {
                conn.close_on_drop();
            }
            return Err(failed(e));
        }
    };
    if read_only {
        conn.close_on_drop();
        return Err((Refusal::ReadOnly, "the session is read-only".into()));
    }
    if !MIGRATOR.iter().all(|m| applied.contains(&m.version)) {
        return Err((Refusal::MigrationsPending, "not every migration is applied".into()));
    }
    if !can_write {
        return Err((Refusal::PermissionDenied, "the role lacks a privilege on the singapay tables".into()));
    }
    Ok(())
}

/// A pool that connects lazily, so the service starts (and keeps running) while Postgres
/// is away and recovers by itself when it returns.
pub fn pool(database_url: &SecretString, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = database_url.expose_secret().parse()?;
    let options =
        options.application_name("singapay-webhooks").options([("statement_timeout", "15s"), ("lock_timeout", "10s")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        // No ping per acquire: a broken connection fails its statement, is closed instead
        // of being returned (intake retries on a new one), and the pool opens replacements.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Applies the embedded migrations on a connection of its own, without the service's
/// statement and lock timeouts: an index built `CONCURRENTLY` on a large table takes as long
/// as it takes (cut off, it would leave an invalid index behind that `IF NOT EXISTS` then
/// takes for done). Each transactional migration sets its own `lock_timeout`.
pub async fn migrate(database_url: &SecretString) -> Result<(), sqlx::migrate::MigrateError> {
    let options: PgConnectOptions = database_url.expose_secret().parse()?;
    let options = options
        .application_name("singapay-webhooks migrate")
        .options([("statement_timeout", "0"), ("lock_timeout", "0")]);
    let pool =
        PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(30)).connect_with(options).await?;
    let result = MIGRATOR.run(&pool).await;
    pool.close().await;
    result
}

/// The channel consumers `LISTEN` on (docs/consuming.md).
pub const WAKE_CHANNEL: &str = "singapay_transaction_events";

/// Wakes listening consumers after new queue rows have committed. Its own transaction,
/// committed asynchronously: a lost wake-up costs a consumer one poll interval, never an
/// event, so it must not wait for a WAL flush or hold up the next batch.
pub async fn wake_consumers(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether every embedded migration has been applied successfully.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?;
    Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
}

#[cfg(test)]
mod tests {
    use super::{sqlstate_failure, Failure, Refusal};

    /// Only what belongs to one item's data splits a batch; whatever a one-item retry would
    /// meet too is the whole batch's (503, no split), and all but contention name a cause
    /// for `/readyz`.
    #[test]
    fn sqlstates_are_classified_by_whether_one_item_is_to_blame() {
        for code in [
            "21000", "22001", "22003", "22007", "22021", "22P02", "22P05", "23502", "23503", "23505", "23514", "44000",
            "54000",
        ] {
            assert_eq!(sqlstate_failure(code), Failure::Item, "{code}");
        }
        for code in ["40001", "40P01", "55P03", "55006", "57014"] {
            assert_eq!(sqlstate_failure(code), Failure::Contention, "{code}");
        }
        let refused = [
            ("08006", Refusal::Unreachable),
            ("57P01", Refusal::Unreachable),
            ("57P03", Refusal::Unreachable),
            ("28P01", Refusal::AuthenticationFailed),
            ("3D000", Refusal::DatabaseNotFound),
            ("42P01", Refusal::MigrationsPending),
            ("3F000", Refusal::MigrationsPending),
            ("25006", Refusal::ReadOnly),
            ("42501", Refusal::PermissionDenied),
            ("53100", Refusal::OutOfResources),
            ("53300", Refusal::OutOfResources),
            ("25P02", Refusal::Failing),
            ("42601", Refusal::Failing),
            ("42804", Refusal::Failing),
            ("57000", Refusal::Failing),
            ("58030", Refusal::Failing),
            ("XX000", Refusal::Failing),
            ("XX001", Refusal::Failing),
            ("0A000", Refusal::Failing),
            ("P0001", Refusal::Failing),
            ("F0000", Refusal::Failing),
        ];
        for (code, refusal) in refused {
            assert_eq!(sqlstate_failure(code), Failure::Refused(refusal), "{code}");
        }
    }
}
