use anyhow::{Context, Result};
use secrecy::SecretString;

use crate::config::{Env, EnvFile, Settings};
use crate::reconcile::{self, ReconcileSettings};
use crate::{startup, store, telemetry};

/// `serve [--migrate]`.
pub async fn serve(env: &Env<'_>, file: &EnvFile, migrate: bool) -> Result<()> {
    let settings = env.settings(true)?;
    let url = env.require_database_url()?;
    let reconcile = env.reconcile()?;
    telemetry::init(settings.log_format, env.log_filter()?);
    file.announce();
    run(settings, reconcile, &url, migrate).await
}

async fn run(
    settings: Settings,
    reconcile: Option<ReconcileSettings>,
    database_url: &SecretString,
    migrate: bool,
) -> Result<()> {
    let signals = startup::Signals::install()?;
    let pool = store::pool(database_url, settings.db_max_connections).context("DATABASE_URL")?;
    if migrate {
        store::migrate(database_url).await.context("applying migrations")?;
    } else {
        // Said once at start (in the background: Postgres may be away, and start-up does
        // not wait for it); intake repeats it at most once a minute while callbacks get 503.
        let pool = pool.clone();
        tokio::spawn(async move {
            let pending = match store::migrations_applied(&pool).await {
                Ok(applied) => !applied,
                Err(e) => store::is_schema_behind(&e),
            };
            if pending {
                tracing::warn!(
                    "database migrations are pending: callbacks are answered 503 (Singapay retries) until `singapay-webhooks migrate` runs, or start with `serve --migrate`"
                );
            }
        });
    }
    let app = startup::Application::build(settings.clone(), pool.clone()).await?;
    tracing::info!(
        listen_addr = %settings.listen_addr,
        admin_listen_addr = settings.admin_listen_addr.map(|a| a.to_string()),
        webhook_path = %settings.webhook_path,
        credentials = settings.credentials.iter().map(|c| c.label.as_str()).collect::<Vec<_>>().join(","),
        source_allowlist = settings.allowed_source_cidrs.is_some(),
        "receiver listening"
    );
    let reconciler = reconcile::start(&pool, reconcile)?;
    app.run_until_stopped(signals).await?;
    if let Some(task) = reconciler {
        task.abort();
    }
    // Connections still busy after the shutdown timeout (a callback stuck on a lock) are not
    // waited for: leaving closes them, and Postgres rolls their transactions back.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), pool.close()).await;
    tracing::info!("stopped");
    Ok(())
}
