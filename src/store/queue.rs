//! A Rust client for the SQL consumer API (`singapay.claim_events`, `ack_events`,
//! `nack_events` and their one-event forms) and a waiter that wakes on `NOTIFY` and falls back to polling. Consumers
//! in other languages call the same SQL functions; see docs/consuming.md.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

pub const CHANNEL: &str = "singapay_transaction_events";

/// One claimed state change.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedEvent {
    pub id: i64,
    pub event_id: Uuid,
    pub transaction_key: String,
    pub version: i32,
    pub webhook_type: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub response_code: Option<String>,
    pub transaction_status_code: Option<String>,
    pub delivery_id: Option<i64>,
    pub attempts: i32,
    pub max_attempts: i32,
    /// The event document as JSON text.
    pub payload: String,
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis().max(1))
}

pub async fn claim(
    pool: &PgPool,
    consumer: &str,
    batch: i32,
    lease: Duration,
) -> Result<Vec<ClaimedEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, transaction_key, version, webhook_type, from_status, to_status,
                response_code, transaction_status_code, delivery_id, attempts, max_attempts,
                payload::text AS payload
           FROM singapay.claim_events($1, $2, $3::interval)",
    )
    .bind(consumer)
    .bind(batch)
    .bind(interval(lease))
    .fetch_all(pool)
    .await
}

/// False when the lease was lost (expired, or the event was handed to someone else).
pub async fn ack(pool: &PgPool, id: i64, consumer: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT singapay.ack_event($1, $2)").bind(id).bind(consumer).fetch_one(pool).await
}

/// Acknowledges a batch in one statement; returns the ids acknowledged, in id order. An id
/// missing from the answer had lost its lease (see [`ack`]).
pub async fn ack_many(pool: &PgPool, ids: &[i64], consumer: &str) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT * FROM singapay.ack_events($1, $2)").bind(ids).bind(consumer).fetch_all(pool).await
}

/// Gives a batch back (see [`nack`]) in one statement; returns the ids given back, in id
/// order.
pub async fn nack_many(
    pool: &PgPool,
    ids: &[i64],
    consumer: &str,
    error: &str,
    delay: Duration,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT * FROM singapay.nack_events($1, $2, $3, $4::interval)")
        .bind(ids)
        .bind(consumer)
        .bind(error)
        .bind(interval(delay))
        .fetch_all(pool)
        .await
}

/// Gives the event back: claimable again after `delay` doubled per earlier attempt, or
/// dead after max_attempts. False when the lease was lost.
pub async fn nack(pool: &PgPool, id: i64, consumer: &str, error: &str, delay: Duration) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT singapay.nack_event($1, $2, $3, $4::interval)")
        .bind(id)
        .bind(consumer)
        .bind(error)
        .bind(interval(delay))
        .fetch_one(pool)
        .await
}

/// Waits for "there may be work": a notification, or the poll interval passing. Without a
/// listener (e.g. behind a transaction-mode pooler, where LISTEN does not work) it polls.
pub struct Waiter {
    listener: Option<PgListener>,
    poll: Duration,
}

impl Waiter {
    /// `listen = false` makes a polling-only waiter.
    pub async fn new(pool: &PgPool, listen: bool, poll: Duration) -> Result<Waiter, sqlx::Error> {
        let listener = if listen {
            let mut l = PgListener::connect_with(pool).await?;
            l.listen(CHANNEL).await?;
            Some(l)
        } else {
            None
        };
        Ok(Waiter { listener, poll })
    }

    /// Returns true when woken by a notification, false when the poll interval passed.
    pub async fn wait(&mut self) -> bool {
        match &mut self.listener {
            Some(l) => match tokio::time::timeout(self.poll, l.try_recv()).await {
                Ok(Ok(Some(_))) => true,
                // Connection lost: the listener reconnects on the next call; events
                // committed meanwhile are found by the claim that follows.
                Ok(Ok(None)) | Ok(Err(_)) => false,
                Err(_) => false,
            },
            None => {
                tokio::time::sleep(self.poll).await;
                false
            }
        }
    }
}
