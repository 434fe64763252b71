use anyhow::{Context, Result};
use secrecy::SecretString;

use crate::store;

pub async fn migrate(database_url: &SecretString) -> Result<()> {
    let pool = store::pool(database_url, 2)?;
    store::MIGRATOR.run(&pool).await.context("applying migrations")?;
    let n = store::MIGRATOR.iter().count();
    tracing::info!(migrations = n, "database schema is up to date");
    pool.close().await;
    Ok(())
}
