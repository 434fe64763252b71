//! One file per subcommand.

mod dev;
mod healthcheck;
mod migrate;
mod prune;
mod reconcile;
mod replay;
mod sandbox;
mod send;
mod serve;
mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Env, EnvFile};

pub use dev::dev;
pub use healthcheck::healthcheck;
pub use migrate::migrate;
pub use prune::prune;
pub use reconcile::{reconcile, ReconcileArgs};
pub use replay::{replay, ReplayArgs};
pub use sandbox::{sandbox, SandboxArgs};
pub use send::{send, SendArgs};
pub use serve::serve;
pub use verify::{verify, VerifyArgs};

impl Command {
    /// `.env` configures the commands run against a deployment; never `dev`, which runs
    /// its own database with its own secret, nor `sandbox`, which stands in for Singapay.
    pub fn reads_env_file(&self) -> bool {
        !matches!(self, Command::Dev { .. } | Command::Sandbox(_))
    }

    /// Runs the command, each doing its own setup; false: it ran and its answer is "no"
    /// (`verify`'s mismatch), exit status 1.
    pub async fn run(self, env: &Env<'_>, file: &EnvFile) -> anyhow::Result<bool> {
        match self {
            Command::Serve { migrate } => serve(env, file, migrate).await?,
            Command::Dev { data_dir } => dev(env, data_dir).await?,
            Command::Prune { dry_run, batch_size, archive } => prune(env, file, batch_size, dry_run, archive).await?,
            Command::Healthcheck { live } => healthcheck(env, live).await?,
            Command::Send(args) => send(env, *args).await?,
            Command::Verify(args) => return verify(env, args).await,
            Command::Replay(args) => replay(env, args).await?,
            Command::Migrate => migrate(env, file).await?,
            Command::Sandbox(args) => sandbox(args).await?,
            Command::Reconcile(args) => reconcile(env, file, args).await?,
        }
        Ok(true)
    }
}

/// Where to reach a listener on this machine: a wildcard address (`0.0.0.0`, `[::]`)
/// becomes the loopback address of its family.
pub(crate) fn local(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

/// Prints a line to stdout. A closed stdout (`… | head`) loses the output, never the
/// command: exit codes (verify's match/mismatch, send's 2xx check) must still hold.
pub(crate) fn say(text: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

#[derive(Debug, Parser)]
#[command(name = "singapay-webhooks", version, about = "Receives, verifies and durably records Singapay callbacks.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the receiver (configuration from the environment; see .env.example).
    Serve {
        /// Apply pending database migrations before accepting callbacks.
        #[arg(long)]
        migrate: bool,
    },
    /// Run everything locally: a private PostgreSQL under --data-dir, migrations, a dev
    /// secret, and the receiver.
    Dev {
        /// Where the cluster, its log and the dev secret live (kept across restarts).
        #[arg(long, default_value = ".data")]
        data_dir: PathBuf,
    },
    /// Apply the embedded database migrations to DATABASE_URL and exit.
    Migrate,
    /// Retire the history older than RETENTION_DAYS a whole day at a time: the rows that must
    /// outlive their day are kept (docs/operations.md), the day's partitions are detached
    /// and dropped. Also drops bearer tokens older than BEARER_RETENTION_HOURS and retires
    /// given-up reconciliation checks.
    Prune {
        /// Count what would be retired, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Before dropping a day, write each of its partitions to DIR as
        /// `<partition>.copy.gz` (COPY text, gzip; row count checked) with a manifest
        /// `<partition>.json` that says how to restore it.
        #[arg(long, value_name = "DIR")]
        archive: Option<PathBuf>,
        /// Rows per delete statement (each its own short transaction).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch_size: i64,
    },
    /// Build, sign and POST a realistic callback of any type and status (a local Singapay
    /// simulator); exits non-zero unless every answer is 2xx.
    Send(Box<SendArgs>),
    /// Show every intermediate value of a signature check and which part mismatched, for a
    /// captured request or a stored delivery/rejection. Exits 1 on a mismatch.
    Verify(VerifyArgs),
    /// Re-run a stored or rejected delivery through classification and the state machine,
    /// with the same idempotency as live traffic.
    Replay(ReplayArgs),
    /// Exit 0 when the local receiver (LISTEN_ADDR) answers /readyz with 200 (with --live:
    /// /healthz, the process is up), for a container HEALTHCHECK or a probe.
    Healthcheck {
        /// Ask /healthz (liveness) instead of /readyz: a Postgres outage or a drain, which
        /// the receiver rides out, does not fail it. What a container HEALTHCHECK should use.
        #[arg(long)]
        live: bool,
    },
    /// Run a local stand-in for Singapay's REST API: access tokens (v1.1, signed with the
    /// Asia/Jakarta date) and the inquiry endpoints, answering what is scripted over HTTP
    /// (POST /_sandbox/transactions). For developing and testing reconciliation.
    Sandbox(SandboxArgs),
    /// Ask Singapay's API now about every due check (callbacks that need an inquiry,
    /// overdue transactions, requested checks), once, and apply the answers
    /// (docs/reconciling.md).
    Reconcile(ReconcileArgs),
}
