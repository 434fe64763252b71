use crate::config::{Env, EnvFile};
use crate::{store, telemetry};
use anyhow::{Context, Result};

pub async fn migrate(env: &Env<'_>, file: &EnvFile) -> Result<()> {
    let database_url = env.require_database_url()?;
    telemetry::init(env.log_format()?, env.log_filter()?);
    file.announce();
    store::migrate(&database_url).await.context("applying migrations")?;
    let n = store::MIGRATOR.iter().count();
    tracing::info!(migrations = n, "database schema is up to date");
    Ok(())
}
