use clap::Parser;

use singapay_webhooks::cli::{self, Cli, Command};
use std::collections::HashMap;
use std::path::Path;

use singapay_webhooks::config::{Env, LogFormat};
use singapay_webhooks::telemetry;

/// A callback is dozens of short-lived allocations (parsed body, canonical forms, rows);
/// mimalloc serves them with about half the CPU of the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    // `.env` in the working directory configures the commands that run against a
    // deployment; real environment variables win over it. `dev` never reads it: it runs
    // its own database with its own secret, whatever a `.env` meant for production says.
    let file = match cli.command {
        Command::Dev { .. } => EnvFile::default(),
        _ => EnvFile::read(Path::new(ENV_FILE)).unwrap_or_else(|e| fail(&e)),
    };
    let get = |k: &str| std::env::var(k).ok().or_else(|| file.get(k));
    let env = Env::new(&get);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { migrate } => {
                let settings = env.settings(true)?;
                let url = env.require_database_url()?;
                telemetry::init(settings.log_format, env.log_filter()?);
                file.announce();
                cli::serve(settings, &url, migrate).await
            }
            Command::Dev { data_dir } => {
                let mut settings = env.settings(false)?;
                if !env.drain_set() {
                    // No load balancer in front of a laptop.
                    settings.shutdown_drain_secs = 0;
                }
                if !env.log_format_set() {
                    settings.log_format = LogFormat::Text;
                }
                telemetry::init(settings.log_format, env.log_filter()?);
                cli::dev(settings, data_dir, env.listen_addr_set()).await
            }
            Command::Prune { dry_run, batch_size } => {
                let url = env.require_database_url()?;
                let days = env.retention_days()?;
                telemetry::init(env.log_format()?, env.log_filter()?);
                file.announce();
                cli::prune(&url, days, batch_size, dry_run).await
            }
            Command::Healthcheck { live } => {
                let settings = env.settings(false)?;
                cli::healthcheck(settings.listen_addr, live).await
            }
            Command::Send(args) => {
                let settings = env.settings(false)?;
                let configured = settings.credentials.first().map(|c| c.secret.clone());
                cli::send(*args, configured).await
            }
            Command::Verify(args) => {
                let settings = env.settings(true)?;
                let url = env.database_url()?;
                if !cli::verify(args, &settings, url).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Replay(args) => {
                let url = env.require_database_url()?;
                cli::replay(args, &url).await
            }
            Command::Migrate => {
                let url = env.require_database_url()?;
                telemetry::init(env.log_format()?, env.log_filter()?);
                file.announce();
                cli::migrate(&url).await
            }
        }
    });
    if let Err(e) = result {
        fail(&format!("{e:#}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("singapay-webhooks: {msg}");
    std::process::exit(1);
}

/// Where the optional settings file is looked for: the working directory only.
const ENV_FILE: &str = ".env";

/// The settings a `.env` file gives, consulted after the real environment.
#[derive(Default)]
struct EnvFile {
    path: Option<std::path::PathBuf>,
    vars: HashMap<String, String>,
}

impl EnvFile {
    /// Reads `path` when it exists; a file that cannot be parsed is an error, by line.
    fn read(path: &Path) -> Result<EnvFile, String> {
        let iter = match dotenvy::from_path_iter(path) {
            Ok(iter) => iter,
            Err(e) if e.not_found() => return Ok(EnvFile::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut vars = HashMap::new();
        for item in iter {
            let (k, v) = item.map_err(|e| match e {
                // Never the line itself: it may hold a secret.
                dotenvy::Error::LineParse(text, _) => {
                    let number = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|all| all.lines().position(|l| l.contains(text.as_str())))
                        .map_or_else(|| "a line".to_owned(), |i| format!("line {}", i + 1));
                    format!("{}: {number} cannot be parsed (quote values that contain spaces)", path.display())
                }
                e => format!("{}: {e}", path.display()),
            })?;
            vars.insert(k, v);
        }
        Ok(EnvFile { path: Some(path.to_owned()), vars })
    }

    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    /// Logs which file was read and which of its variables took effect (names only: values
    /// may be secrets).
    fn announce(&self) {
        let Some(path) = &self.path else { return };
        let mut used: Vec<&str> =
            self.vars.keys().map(String::as_str).filter(|k| std::env::var_os(k).is_none()).collect();
        used.sort_unstable();
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        tracing::info!(file = %path.display(), variables = %used.join(","), "settings read from the env file (the environment wins)");
    }
}
