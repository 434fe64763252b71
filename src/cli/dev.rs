//! The embedded default: a private PostgreSQL cluster under `.data/`, migrations, a
//! generated dev secret, and the receiver, in one command. Data survives restarts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use crate::config::Settings;
use crate::embedded_pg::{self, Cluster};
use crate::singapay::signature::Credential;
use crate::{startup, store};

const DATABASE: &str = "singapay";

/// The dev secret, generated once and kept in the data directory.
fn dev_secret(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("dev-secret");
    if let Ok(s) = fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_owned());
        }
    }
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("dev_{}", hex::encode(bytes));
    fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    Ok(secret)
}

pub async fn dev(mut settings: Settings, data_dir: PathBuf, listen_addr_set: bool) -> Result<()> {
    // Installed first: a Ctrl-C during start-up must still stop the cluster it started.
    let shutdown = startup::shutdown_signal()?;
    fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = fs::canonicalize(&data_dir)?;
    let cluster_root = data_dir.join("postgres");
    let cluster = tokio::task::spawn_blocking(move || -> Result<Cluster> {
        let mut cluster = Cluster::open(&cluster_root, true)?;
        cluster.start()?;
        Ok(cluster)
    })
    .await??;
    let result = run(&mut settings, &data_dir, &cluster, listen_addr_set, shutdown).await;
    let stopping = cluster.clone();
    let stopped = tokio::task::spawn_blocking(move || stopping.stop()).await?;
    result.and(stopped)
}

async fn run(
    settings: &mut Settings,
    data_dir: &Path,
    cluster: &Cluster,
    listen_addr_set: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    embedded_pg::ensure_database(cluster, DATABASE).await?;
    let url = cluster.url(DATABASE);
    let pool = store::pool(&SecretString::from(url.clone()), settings.db_max_connections)?;
    store::MIGRATOR.run(&pool).await.context("applying migrations")?;

    let generated = settings.credentials.is_empty();
    if generated {
        settings.credentials =
            vec![Credential { label: "dev".into(), secret: SecretString::from(dev_secret(data_dir)?) }];
    }
    if !listen_addr_set {
        settings.listen_addr = "127.0.0.1:8080".parse().expect("valid address");
    }
    let (listener, admin) = startup::bind(settings).await.context("set LISTEN_ADDR to another port")?;
    let addr = listener.local_addr()?;
    let secret_line = if generated {
        format!("SINGAPAY_WEBHOOK_SECRETS=dev={}", settings.credentials[0].secret.expose_secret())
    } else {
        "from SINGAPAY_WEBHOOK_SECRETS".to_owned()
    };
    let banner = format!(
        "singapay-webhooks dev\n\
         \x20 receiver : http://{addr}{path}  (POST; any sub-path too)\n\
         \x20 secret   : {secret_line}\n\
         \x20 database : {data}  (PostgreSQL on 127.0.0.1:{port}, kept across restarts)\n\
         \x20 psql     : psql {url}\n\
         \x20 send     : SINGAPAY_WEBHOOK_SECRETS=dev=$(cat {secret_file}) singapay-webhooks send va-transaction --url http://{addr}{path}\n\
         \x20 try      : psql {url} -c 'SELECT id, webhook_type, transaction_key, status, outcome FROM singapay.deliveries ORDER BY id DESC LIMIT 10'\n\
         Ctrl-C stops the receiver and the database.",
        path = settings.webhook_path,
        data = cluster.root.display(),
        port = cluster.port,
        secret_file = data_dir.join("dev-secret").display(),
    );
    // One write, and a closed stdout (`dev | head`) must never take the receiver down.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{banner}").and_then(|()| out.flush());
    }
    let state = startup::production_state(pool.clone(), settings.clone());
    startup::run(listener, admin, state, shutdown).await?;
    // As in `serve`: connections still stuck after the shutdown timeout are not waited for.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), pool.close()).await;
    Ok(())
}
