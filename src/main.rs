use clap::Parser;

use singapay_webhooks::cli::{self, Cli, Command};
use singapay_webhooks::config::Env;
use singapay_webhooks::telemetry;

/// A callback is dozens of short-lived allocations (parsed body, canonical forms, rows);
/// mimalloc serves them with about half the CPU of the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // A .env file is optional; real environment variables win over it.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let get = |k: &str| std::env::var(k).ok();
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
                cli::serve(settings, &url, migrate).await
            }
            Command::Dev { data_dir } => {
                let settings = env.settings(false)?;
                telemetry::init(settings.log_format, env.log_filter()?);
                cli::dev(settings, data_dir, env.listen_addr_set()).await
            }
            Command::Prune { dry_run, batch_size } => {
                let url = env.require_database_url()?;
                let days = env.retention_days()?;
                telemetry::init(env.log_format()?, env.log_filter()?);
                cli::prune(&url, days, batch_size, dry_run).await
            }
            Command::Healthcheck => {
                let settings = env.settings(false)?;
                cli::healthcheck(settings.listen_addr).await
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
