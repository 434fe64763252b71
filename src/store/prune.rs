//! Retention: old finished queue rows, old deliveries nothing refers to any more, old
//! rejections. Deletes run in small batches, each its own short transaction, and skip rows
//! someone else has locked, so intake and consumers are never held up.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub events: u64,
    pub deliveries: u64,
    pub rejections: u64,
}

/// Queue rows that are `done` and finished before the cutoff. `available`, `running` and
/// `dead` rows are never touched: unfinished work, or failures someone must look at.
const EVENTS: &str = "FROM singapay.event_log e WHERE e.state = 'done' AND e.finished_at < $1";

/// Deliveries last received before the cutoff that are neither a transaction's current
/// state nor the cause of a queue row still kept.
const DELIVERIES: &str = "FROM singapay.deliveries d
    WHERE d.last_received_at < $1
      AND NOT EXISTS (SELECT 1 FROM singapay.transactions t WHERE t.last_delivery_id = d.id)
      AND NOT EXISTS (SELECT 1 FROM singapay.event_log e WHERE e.delivery_id = d.id)";

const REJECTIONS: &str = "FROM singapay.rejected_deliveries r WHERE r.last_received_at < $1";

/// Reconciliation's record of questions asked before the cutoff, except the last one of a
/// check still kept (what an operator looks at for a given-up check).
const INQUIRIES: &str = "FROM singapay.inquiries i WHERE i.asked_at < $1
      AND NOT EXISTS (SELECT 1 FROM singapay.reconcile_checks c WHERE c.last_inquiry_id = i.id)";

async fn delete_in_batches(
    pool: &PgPool,
    table: &str,
    alias: &str,
    from: &str,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (SELECT {alias}.id {from} ORDER BY {alias}.id LIMIT $2 FOR UPDATE OF {alias} SKIP LOCKED)"
    );
    let mut total = 0;
    loop {
        let n = sqlx::query(&sql).bind(cutoff).bind(batch).execute(pool).await?.rows_affected();
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

async fn count(pool: &PgPool, from: &str, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) {from}")).bind(cutoff).fetch_one(pool).await?;
    Ok(n as u64)
}

pub async fn prune(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
    dry_run: bool,
) -> Result<PruneReport, sqlx::Error> {
    if dry_run {
        // Deliveries freed by deleting their old events are counted only on a real run.
        return Ok(PruneReport {
            events: count(pool, EVENTS, cutoff).await?,
            deliveries: count(pool, DELIVERIES, cutoff).await?,
            rejections: count(pool, REJECTIONS, cutoff).await?,
        });
    }
    // Events first: deleting them is what frees their deliveries.
    let events = delete_in_batches(pool, "singapay.event_log", "e", EVENTS, cutoff, batch).await?;
    let deliveries = delete_in_batches(pool, "singapay.deliveries", "d", DELIVERIES, cutoff, batch).await?;
    let rejections = delete_in_batches(pool, "singapay.rejected_deliveries", "r", REJECTIONS, cutoff, batch).await?;
    Ok(PruneReport { events, deliveries, rejections })
}

/// Deletes (or with `dry_run` counts) the inquiries older than the cutoff.
pub async fn prune_inquiries(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
    dry_run: bool,
) -> Result<u64, sqlx::Error> {
    if dry_run {
        return count(pool, INQUIRIES, cutoff).await;
    }
    delete_in_batches(pool, "singapay.inquiries", "i", INQUIRIES, cutoff, batch).await
}
