use std::path::PathBuf;

use crate::config::{Env, EnvFile};
use crate::{store, telemetry};
use anyhow::{Context, Result};

pub async fn prune(env: &Env<'_>, file: &EnvFile, batch: i64, dry_run: bool, archive: Option<PathBuf>) -> Result<()> {
    let database_url = env.require_database_url()?;
    let retention_days = env.retention_days()?;
    let bearer_hours = env.bearer_retention_hours()?;
    telemetry::init(env.log_format()?, env.log_filter()?);
    file.announce();
    let pool = store::pool(&database_url, 2)?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let retired =
        store::history::retire(&pool, cutoff, archive.as_deref(), dry_run).await.context("retiring old days")?;
    let report =
        store::prune(&pool, cutoff, batch, dry_run).await.context("pruning the history from before partitioning")?;
    let bearer_cutoff = chrono::Utc::now() - chrono::Duration::hours(i64::from(bearer_hours));
    let (bearers, rejected_bearers) =
        store::drop_bearers(&pool, bearer_cutoff, batch, dry_run).await.context("dropping old bearer tokens")?;
    let checks = store::prune_checks(&pool, cutoff, batch, dry_run).await.context("pruning given-up checks")?;
    let (verb, moved) = if dry_run { ("would retire", "would keep") } else { ("retired", "kept") };
    let mut days: Vec<_> = retired.retired.iter().map(|r| (r.from_at, r.to_at)).collect();
    days.dedup();
    let rows: u64 = retired.retired.iter().map(|r| r.rows).sum();
    let archived = retired.retired.iter().filter(|r| r.archive.is_some()).count();
    let k = retired.kept;
    let delete = if dry_run { "would delete" } else { "deleted" };
    super::say(format!(
        "prune (RETENTION_DAYS={retention_days}, older than {}): {verb} {} day(s), {} partition(s), {rows} rows{}{}; \
         {moved} {} events, {} deliveries, {} rejected deliveries, {} inquiries that outlive their day; \
         history from before partitioning: {delete} {} queue rows, {} deliveries, {} rejected deliveries, {} inquiries; \
         {delete} {checks} given-up checks; bearer tokens older than {bearer_hours} h: {delete} {bearers} of deliveries, \
         {rejected_bearers} of rejections (their SHA-256 kept)",
        cutoff.format("%Y-%m-%d %H:%M:%S UTC"),
        days.len(),
        retired.retired.len(),
        if archived > 0 { format!(" ({archived} archived)") } else { String::new() },
        if retired.postponed.is_empty() {
            String::new()
        } else {
            format!(" ({} day(s) postponed: events stored then are still unfinished)", retired.postponed.len())
        },
        k.events,
        k.deliveries,
        k.rejections,
        k.inquiries,
        report.events,
        report.deliveries,
        report.rejections,
        report.inquiries,
    ));
    for r in &retired.retired {
        tracing::info!(partition = %r.partition, from = %r.from_at, to = %r.to_at, rows = r.rows,
            archive = ?r.archive, dry_run, "history partition retired");
    }
    pool.close().await;
    Ok(())
}
