//! One file per subcommand.

mod dev;
mod migrate;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use dev::dev;
pub use migrate::migrate;
pub use serve::serve;

#[derive(Debug, Parser)]
#[command(
    name = "singapay-webhooks",
    version,
    about = "Receives, verifies and durably records Singapay callbacks."
)]
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
}
