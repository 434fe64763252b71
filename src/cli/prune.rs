use crate::config::{Env, EnvFile};
use crate::{store, telemetry};
use anyhow::{Context, Result};

pub async fn prune(env: &Env<'_>, file: &EnvFile, batch: i64, dry_run: bool) -> Result<()> {
    let database_url = env.require_database_url()?;
    let retention_days = env.retention_days()?;
    let bearer_hours = env.bearer_retention_hours()?;
    telemetry::init(env.log_format()?, env.log_filter()?);
    file.announce();
    let pool = store::pool(&database_url, 2)?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let report = store::prune(&pool, cutoff, batch, dry_run).await.context("pruning")?;
    let bearer_cutoff = chrono::Utc::now() - chrono::Duration::hours(i64::from(bearer_hours));
    let (bearers, rejected_bearers) =
        store::drop_bearers(&pool, bearer_cutoff, batch, dry_run).await.context("dropping old bearer tokens")?;
    let checks = store::prune_checks(&pool, cutoff, batch, dry_run).await.context("pruning given-up checks")?;
    let inquiries = store::prune_inquiries(&pool, cutoff, batch, dry_run).await.context("pruning inquiries")?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    super::say(format!(
        "prune (RETENTION_DAYS={retention_days}, older than {}): {verb} {} queue rows, {} deliveries, {} rejected deliveries, {inquiries} inquiries, {checks} given-up checks; bearer tokens older than {bearer_hours} h: {verb} {bearers} of deliveries, {rejected_bearers} of rejections (their SHA-256 kept)",
        cutoff.format("%Y-%m-%d %H:%M:%S UTC"),
        report.events,
        report.deliveries,
        report.rejections
    ));
    pool.close().await;
    Ok(())
}
