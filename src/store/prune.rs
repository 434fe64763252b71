//! Retention row by row: what whole-day retirement ([`super::history::retire`]) does not
//! cover. The history stored before the upgrade to partitioned tables (the `_legacy`
//! partitions) is pruned as it was before, until it can be retired whole; bearer tokens are
//! dropped after `BEARER_RETENTION_HOURS`; given-up checks are retired. Deletes run in
//! small batches, each its own short transaction, and skip rows someone else has locked, so
//! intake and consumers are never held up.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub events: u64,
    pub deliveries: u64,
    pub rejections: u64,
    pub inquiries: u64,
}

/// Queue rows that are `done` and finished before the cutoff. `available`, `running` and
/// `dead` rows are never touched: unfinished work, or failures someone must look at.
const EVENTS: &str = "FROM {event_log} e WHERE e.state = 'done' AND e.finished_at < $1";

/// Deliveries last received before the cutoff that are neither a transaction's current
/// state nor the cause of a queue row still kept.
const DELIVERIES: &str = "FROM {deliveries} d
    WHERE d.last_received_at < $1
      AND NOT EXISTS (SELECT 1 FROM singapay.transactions t WHERE t.last_delivery_id = d.id)
      AND NOT EXISTS (SELECT 1 FROM singapay.event_log e WHERE e.delivery_id = d.id)";

const REJECTIONS: &str = "FROM {rejected_deliveries} r WHERE r.last_received_at < $1";

/// Reconciliation's record of questions asked before the cutoff, except the last one of a
/// check still kept (what an operator looks at for a given-up check).
const INQUIRIES: &str = "FROM {inquiries} i WHERE i.asked_at < $1
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
    until_none_left(pool, &sql, cutoff, batch).await
}

/// Runs `sql` (one batch of `$2` rows older than `$1`, each its own transaction) until it
/// touches no row; the rows touched.
async fn until_none_left(pool: &PgPool, sql: &str, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql).bind(cutoff).bind(batch).execute(pool).await?.rows_affected();
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

/// Prunes, row by row with the rules of the version before partitioning, the history stored
/// before the upgrade (the `_legacy` partitions), until [`super::history::retire`] can
/// retire it whole. Nothing when there is none (a new install, or once it is retired).
pub async fn prune(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
    dry_run: bool,
) -> Result<PruneReport, sqlx::Error> {
    let legacy = super::history::legacy_tables(pool).await?;
    let table = |name: &str| legacy.iter().any(|t| t == name).then(|| format!("singapay_history.{name}_legacy"));
    let mut report = PruneReport::default();
    // Events first: deleting them is what frees their deliveries.
    let steps: [(&str, &str, &str, &mut u64); 4] = [
        ("event_log", "e", EVENTS, &mut report.events),
        ("deliveries", "d", DELIVERIES, &mut report.deliveries),
        ("rejected_deliveries", "r", REJECTIONS, &mut report.rejections),
        ("inquiries", "i", INQUIRIES, &mut report.inquiries),
    ];
    for (name, alias, from, n) in steps {
        let Some(t) = table(name) else { continue };
        let from = from
            .replace(&format!("{{{name}}}"), &t)
            .replace("{event_log}", "singapay.event_log")
            .replace("{deliveries}", "singapay.deliveries");
        *n = if dry_run {
            count(pool, &from, cutoff).await?
        } else {
            delete_in_batches(pool, &t, alias, &from, cutoff, batch).await?
        };
    }
    Ok(report)
}

/// Drops the bearer tokens of deliveries and rejections that arrived before `cutoff` (their
/// SHA-256 stays, for `verify --token`): (deliveries, rejections). Batches through the
/// partial indexes of rows whose token is still kept, skipping rows someone has locked.
pub async fn drop_bearers(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
    dry_run: bool,
) -> Result<(u64, u64), sqlx::Error> {
    let mut out = [0u64; 2];
    for (n, table) in ["singapay.deliveries", "singapay.rejected_deliveries"].into_iter().enumerate() {
        let kept = format!("FROM {table} x WHERE x.access_token <> '' AND x.received_at < $1");
        if dry_run {
            out[n] = count(pool, &kept, cutoff).await?;
            continue;
        }
        let sql = format!(
            "UPDATE {table} SET access_token = '',
                    access_token_sha256 = coalesce(access_token_sha256, sha256(convert_to(access_token, 'UTF8')))
              WHERE id IN (SELECT x.id {kept} ORDER BY x.received_at LIMIT $2 FOR UPDATE OF x SKIP LOCKED)"
        );
        out[n] = until_none_left(pool, &sql, cutoff, batch).await?;
    }
    Ok((out[0], out[1]))
}

/// Checks given up (Singapay did not know the transaction, or it has no inquiry) whose last
/// answer, or creation when never answered, is older than the cutoff: retired so they do
/// not grow the checks' scans. Flagged checks stay: a person must look at them.
const GAVE_UP: &str = "FROM singapay.reconcile_checks c WHERE c.state = 'gave_up' AND c.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM singapay.inquiries i WHERE i.id = c.last_inquiry_id AND i.asked_at >= $1)";

/// Deletes (or with `dry_run` counts) the given-up checks older than the cutoff; before
/// [`prune_inquiries`], whose last inquiries they keep.
pub async fn prune_checks(pool: &PgPool, cutoff: DateTime<Utc>, batch: i64, dry_run: bool) -> Result<u64, sqlx::Error> {
    if dry_run {
        return count(pool, GAVE_UP, cutoff).await;
    }
    let sql = format!(
        "DELETE FROM singapay.reconcile_checks WHERE transaction_key IN
           (SELECT c.transaction_key {GAVE_UP} ORDER BY c.transaction_key LIMIT $2 FOR UPDATE OF c SKIP LOCKED)"
    );
    until_none_left(pool, &sql, cutoff, batch).await
}
