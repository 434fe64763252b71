//! The embedded default: a private PostgreSQL cluster under `.data/`, migrations, a
//! generated dev secret, and the receiver, in one command. Data survives restarts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Env, LogFormat, Settings};
use crate::embedded_pg::{self, Cluster};
use crate::singapay::signature::Credential;
use crate::{startup, store, telemetry};

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
    write_private(&path, &secret)?;
    Ok(secret)
}

/// Writes a file only its owner can read, from the moment it exists (it holds a secret).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
        // An older file keeps its mode on open: narrow it too.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents.as_bytes())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// `dev`: never reads `.env` (its caller passes an environment without it).
pub async fn dev(env: &Env<'_>, data_dir: PathBuf) -> Result<()> {
    let mut settings = env.settings(false)?;
    let reconcile = env.reconcile()?;
    if !env.drain_set() {
        // No load balancer in front of a laptop.
        settings.shutdown_drain_secs = 0;
    }
    if !env.log_format_set() {
        settings.log_format = LogFormat::Text;
    }
    telemetry::init(settings.log_format, env.log_filter()?);
    let listen_addr_set = env.listen_addr_set();
    // Installed first: a Ctrl-C during start-up must still stop the cluster it started.
    let signals = startup::Signals::install()?;
    fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = fs::canonicalize(&data_dir)?;
    let cluster_root = data_dir.join("postgres");
    let cluster = tokio::task::spawn_blocking(move || -> Result<Cluster> {
        let mut cluster = Cluster::open(&cluster_root, true)?;
        cluster.start()?;
        Ok(cluster)
    })
    .await??;
    let result = run(&mut settings, reconcile, &data_dir, &cluster, listen_addr_set, signals).await;
    let stopping = cluster.clone();
    let stopped = tokio::task::spawn_blocking(move || stopping.stop()).await?;
    result.and(stopped)
}

async fn run(
    settings: &mut Settings,
    reconcile: Option<crate::reconcile::ReconcileSettings>,
    data_dir: &Path,
    cluster: &Cluster,
    listen_addr_set: bool,
    signals: startup::Signals,
) -> Result<()> {
    embedded_pg::ensure_database(cluster, DATABASE).await?;
    let url = cluster.url(DATABASE);
    store::migrate(&SecretString::from(url.clone())).await.context("applying migrations")?;
    let pool = store::pool(&SecretString::from(url.clone()), settings.db_max_connections)?;

    let generated = settings.credentials.is_empty();
    if generated {
        settings.credentials =
            vec![Credential { label: "dev".into(), secret: SecretString::from(dev_secret(data_dir)?) }];
    }
    if !listen_addr_set {
        settings.listen_addr = "127.0.0.1:8080".parse().expect("valid address");
    }
    let app =
        startup::Application::build(settings.clone(), pool.clone()).await.context("set LISTEN_ADDR to another port")?;
    let addr = super::local(app.address()?);
    let receiver = format!("http://{addr}{}", settings.webhook_path);
    let psql_url = cluster.url(DATABASE);
    let secret_file = data_dir.join("dev-secret");
    let exe = std::env::current_exe().context("finding this program's path")?;
    // What a second terminal needs, written fresh at every start (the ports may change).
    let env_file = data_dir.join("dev.env");
    let mut exports = format!(
        "# Written by `singapay-webhooks dev` at start; `. {}` in another shell.\n\
         export PATH={}:\"$PATH\"\n\
         export SP_URL={}\n\
         export PGURL={}\n",
        sh_quote(&env_file.display().to_string()),
        sh_quote(&exe.parent().unwrap_or(Path::new("/")).display().to_string()),
        sh_quote(&receiver),
        sh_quote(&psql_url),
    );
    // The generated credential, as SINGAPAY_WEBHOOK_SECRETS spells it.
    let generated_entry = generated.then(|| format!("dev={}", settings.credentials[0].secret.expose_secret()));
    if let Some(entry) = &generated_entry {
        exports.push_str(&format!("export SINGAPAY_WEBHOOK_SECRETS={}\n", sh_quote(entry)));
    }
    write_private(&env_file, &exports)?;
    let (secret_line, send_secret) = match &generated_entry {
        Some(entry) => (
            format!("SINGAPAY_WEBHOOK_SECRETS={entry}"),
            format!("SINGAPAY_WEBHOOK_SECRETS=dev=$(cat {}) ", sh_quote(&secret_file.display().to_string())),
        ),
        None => ("from SINGAPAY_WEBHOOK_SECRETS".to_owned(), String::new()),
    };
    let banner = format!(
        "singapay-webhooks dev\n\
         \x20 receiver : {receiver}  (POST; any sub-path too)\n\
         \x20 secret   : {secret_line}\n\
         \x20 database : {data}  (PostgreSQL on 127.0.0.1:{port}, kept across restarts)\n\
         \x20 psql     : psql {psql_url}\n\
         \x20 send     : {send_secret}{exe} send va-transaction --url {receiver}\n\
         \x20 try      : psql {psql_url} -c '{recent}'\n\
         \x20 env      : . {env}  (SP_URL, PGURL, the secret and PATH, in another shell)\n\
         Ctrl-C stops the receiver and the database.",
        data = cluster.root.display(),
        port = cluster.port,
        exe = sh_quote(&exe.display().to_string()),
        env = sh_quote(&env_file.display().to_string()),
        recent = store::RECENT_DELIVERIES,
    );
    // One write, and a closed stdout (`dev | head`) must never take the receiver down.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{banner}").and_then(|()| out.flush());
    }
    let reconciler = crate::reconcile::start(&pool, reconcile)?;
    app.run_until_stopped(signals).await?;
    if let Some(task) = reconciler {
        task.abort();
    }
    // As in `serve`: connections still stuck after the shutdown timeout are not waited for.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), pool.close()).await;
    Ok(())
}

/// `text` as one shell word: unchanged when it is plainly safe, else single-quoted.
fn sh_quote(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:@=,+%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
