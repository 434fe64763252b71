use anyhow::{Context, Result};
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::{startup, store};

pub async fn serve(settings: Settings, database_url: &SecretString, migrate: bool) -> Result<()> {
    let pool = store::pool(database_url, settings.db_max_connections).context("DATABASE_URL")?;
    if migrate {
        store::MIGRATOR
            .run(&pool)
            .await
            .context("applying migrations")?;
    }
    let listener = TcpListener::bind(settings.listen_addr)
        .await
        .with_context(|| format!("LISTEN_ADDR: cannot bind {}", settings.listen_addr))?;
    tracing::info!(
        listen_addr = %settings.listen_addr,
        webhook_path = %settings.webhook_path,
        credentials = ?settings.credentials.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
        "receiver listening"
    );
    startup::run(listener, pool.clone(), settings, startup::shutdown_signal()).await?;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}
