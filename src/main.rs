use clap::Parser;

use singapay_webhooks::cli::{self, Cli, Command};
use singapay_webhooks::config::Env;
use singapay_webhooks::telemetry;

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
                telemetry::init(settings.log_format);
                cli::serve(settings, &url, migrate).await
            }
            Command::Dev { data_dir } => {
                let settings = env.settings(false)?;
                telemetry::init(settings.log_format);
                cli::dev(settings, data_dir, env.listen_addr_set()).await
            }
            Command::Migrate => {
                let url = env.require_database_url()?;
                telemetry::init(env.log_format()?);
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
