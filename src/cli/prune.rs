use crate::config::{Env, EnvFile};
use crate::{store, telemetry};
use anyhow::{Context, Result};

pub async fn prune(env: &Env<'_>, file: &EnvFile, batch: i64, dry_run: bool) -> Result<()> {
    let database_url = env.require_database_url()?;
    let retention_days = env.retention_days()?;
    telemetry::init(env.log_format()?, env.log_filter()?);
    file.announce();
    let pool = store::pool(&database_url, 2)?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let report = store::prune(&pool, cutoff, batch, dry_run).await.context("pruning")?;
    let inquiries = store::prune_inquiries(&pool, cutoff, batch, dry_run).await.context("pruning inquiries")?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    super::say(format!(
        "prune (RETENTION_DAYS={retention_days}, older than {}): {verb} {} queue rows, {} deliveries, {} rejected deliveries, {inquiries} inquiries",
        cutoff.format("%Y-%m-%d %H:%M:%S UTC"),
        report.events,
        report.deliveries,
        report.rejections
    ));
    pool.close().await;
    Ok(())
}
