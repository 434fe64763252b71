//! Postgres: deliveries, transactions and the queue. Everything one callback writes happens
//! in one transaction; idempotency comes from unique keys (`ON CONFLICT`), never from a
//! read followed by a write.

mod batch;
mod columns;
mod deliveries;
mod events;
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

pub use batch::{write, BatchError, Write, Written, BEGIN_BATCH, INQUIRY_WEBHOOK_TYPE, REPREPARE_EVERY};
pub use columns::{column_text, fit_for_columns};
pub use deliveries::{Delivery, Outcome, Rejection, RejectionReason, Signed, Stored};
pub use events::{event_id, EVENT_NAMESPACE_NAME};
pub use jsonb::to_jsonb_text;
pub use lookups::{
    create_database_if_missing, delivery_body, kept_request, lock_rejection, mark_replayed, queue_depth, Kept,
    KeptRequest, QueueDepth, Rejected, RECENT_DELIVERIES,
};
pub use prune::{prune, prune_inquiries, PruneReport};
pub use transactions::StateChange;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why something could not be stored. Cloneable: one failed batch answers every request
/// in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Postgres unreachable, pool exhausted, or contention that outlived our retries:
    /// Singapay should try again later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// More callbacks are waiting to be written than `INTAKE_QUEUE_CAPACITY`.
    #[error("storage busy: the intake queue is full")]
    Busy,
    /// The schema is missing or older than this build (migrations not applied): Singapay
    /// should try again once someone runs `migrate`.
    #[error("the database schema is missing or behind this version; run `singapay-webhooks migrate`: {0}")]
    SchemaBehind(String),
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Internal(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_schema_behind(&e) {
            StoreError::SchemaBehind(e.to_string())
        } else if is_transient(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Internal(e.to_string())
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

/// Errors that say "not now" rather than "never".
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 28: authentication failed and 3D000: no such
            // database (a deployment mistake: once fixed, Singapay's retries get through);
            // 40001/40P01: serialization failure/deadlock; 53: insufficient resources;
            // 55P03: lock_timeout; 57: operator intervention (shutdown, statement timeout).
            c.starts_with("08")
                || c.starts_with("28")
                || c == "3D000"
                || c == "40001"
                || c == "40P01"
                || c == "55P03"
                || c.starts_with("53")
                || c.starts_with("57")
        }),
        _ => false,
    }
}

/// A table, column, function or schema this build uses is missing (42P01 undefined_table,
/// 42703 undefined_column, 42883 undefined_function, 3F000 invalid_schema_name): the
/// migrations have not been applied — or, if they all have, a bug; [`migrations_applied`]
/// tells the two apart.
pub fn is_schema_behind(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| matches!(c.as_ref(), "42P01" | "42703" | "42883" | "3F000")))
}

/// Why Postgres cannot be used right now, as `/readyz` names it.
pub fn unavailable_reason(e: &sqlx::Error) -> (&'static str, &'static str) {
    match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(c) if c.starts_with("28") => {
                ("database_authentication_failed", "Postgres refused the credentials in DATABASE_URL.")
            }
            Some("3D000") => ("database_not_found", "The database named in DATABASE_URL does not exist."),
            _ if is_schema_behind(e) => (
                "migrations_pending",
                "The database schema is not initialised; run `singapay-webhooks migrate` (or `serve --migrate`).",
            ),
            _ => ("storage_unavailable", "Postgres is not reachable."),
        },
        _ => ("storage_unavailable", "Postgres is not reachable."),
    }
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
