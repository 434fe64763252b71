use anyhow::{Context, Result};
use secrecy::SecretString;

use crate::store;

pub async fn prune(database_url: &SecretString, retention_days: u32, batch: i64, dry_run: bool) -> Result<()> {
    let pool = store::pool(database_url, 2)?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let report = store::prune(&pool, cutoff, batch, dry_run).await.context("pruning")?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    super::say(format!(
        "prune (RETENTION_DAYS={retention_days}, older than {}): {verb} {} queue rows, {} deliveries, {} rejected deliveries",
        cutoff.format("%Y-%m-%d %H:%M:%S UTC"),
        report.events,
        report.deliveries,
        report.rejections
    ));
    pool.close().await;
    Ok(())
}
