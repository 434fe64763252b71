//! A complete queue consumer: LISTEN for wake-ups (polling as a fallback), claim a batch,
//! handle each event idempotently, acknowledge the batch in one call.
//!
//! Kill it at any moment and start it again: events it had claimed but not acked come
//! back after their lease, and the handler's own record of handled `event_id`s makes the
//! second run a no-op for whatever the first one finished.
//!
//! ```sh
//! DATABASE_URL=postgres://… cargo run --example consumer
//! ```
//! Optional: CONSUMER_NAME (default host-pid; must be unique per running process),
//! BATCH (50), LEASE_SECS (30), POLL_SECS (10), LISTEN (1; 0 behind a transaction-mode
//! pooler), HANDLE_DELAY_MS (0; slows the handler down for demonstrations).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::Notify;

use singapay_webhooks::queue::{self, ClaimedEvent, Waiter};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name}: {v:?} is not valid")),
        Err(_) => Ok(default),
    }
}

/// The business side of a consumer. Whatever it writes goes in the same transaction as the
/// `event_id` it records, so a repeat delivery of the event changes nothing.
async fn handle(pool: &PgPool, ev: &ClaimedEvent, delay: Duration) -> Result<()> {
    tokio::time::sleep(delay).await;
    let mut tx = pool.begin().await?;
    let first_time = sqlx::query(
        "INSERT INTO consumer_example.handled (event_id, transaction_key, version, to_status)
         VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(ev.event_id)
    .bind(&ev.transaction_key)
    .bind(ev.version)
    .bind(&ev.to_status)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    // … update your orders, ledger or read model here, inside `tx` …
    tx.commit().await?;
    println!(
        "{} {} v{} {} -> {} ({})",
        if first_time { "handled" } else { "already-handled" },
        ev.transaction_key,
        ev.version,
        ev.from_status.as_deref().unwrap_or("-"),
        ev.to_status,
        ev.event_id
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is required")?;
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
    let name = std::env::var("CONSUMER_NAME").unwrap_or_else(|_| format!("{host}-{}", std::process::id()));
    let batch: i32 = env_or("BATCH", 50)?;
    let lease = Duration::from_secs(env_or("LEASE_SECS", 30)?);
    let poll = Duration::from_secs(env_or("POLL_SECS", 10)?);
    let listen = env_or::<u8>("LISTEN", 1)? == 1;
    let delay = Duration::from_millis(env_or("HANDLE_DELAY_MS", 0)?);

    let pool = PgPoolOptions::new().max_connections(4).connect(&url).await.context("connecting to DATABASE_URL")?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS consumer_example;
         CREATE TABLE IF NOT EXISTS consumer_example.handled (
             event_id uuid PRIMARY KEY, transaction_key text NOT NULL, version int NOT NULL,
             to_status text NOT NULL, handled_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    let mut waiter = Waiter::new(&pool, listen, poll).await?;
    eprintln!("consumer {name}: batch {batch}, lease {lease:?}, poll {poll:?}, listen {listen}");

    // SIGTERM/SIGINT: finish the event in hand, give the rest of the batch back, exit.
    let stopping = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    {
        let (stopping, wake) = (stopping.clone(), wake.clone());
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            stopping.store(true, Ordering::SeqCst);
            wake.notify_one();
        });
    }
    while !stopping.load(Ordering::SeqCst) {
        let events = queue::claim(&pool, &name, batch, lease).await?;
        let mut handled = Vec::with_capacity(events.len());
        for (i, ev) in events.iter().enumerate() {
            if stopping.load(Ordering::SeqCst) {
                // Hand back what we claimed but did not start, instead of waiting out the lease.
                let rest: Vec<i64> = events[i..].iter().map(|e| e.id).collect();
                queue::nack_many(&pool, &rest, &name, "consumer shutting down", Duration::ZERO).await?;
                break;
            }
            match handle(&pool, ev, delay).await {
                Ok(()) => handled.push(ev.id),
                Err(e) => {
                    queue::nack(&pool, ev.id, &name, &format!("{e:#}"), Duration::from_secs(5)).await?;
                }
            }
        }
        // One acknowledgement for the batch. An id missing from the answer had lost its
        // lease and is someone else's now; since handling is idempotent, their run will be
        // a no-op for it.
        if !handled.is_empty() {
            let acked = queue::ack_many(&pool, &handled, &name).await?;
            for id in handled.iter().filter(|id| !acked.contains(id)) {
                eprintln!("lease on event {id} was lost before the ack");
            }
        }
        if events.is_empty() {
            tokio::select! {
                _ = waiter.wait() => {}
                _ = wake.notified() => {}
            }
        }
    }
    eprintln!("consumer {name}: stopped");
    Ok(())
}
