use std::path::Path;

use clap::Parser;

use singapay_webhooks::cli::Cli;
use singapay_webhooks::config::{Env, EnvFile, ENV_FILE};

/// A callback is dozens of short-lived allocations (parsed body, canonical forms, rows);
/// mimalloc serves them with about half the CPU of the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let file = if cli.command.reads_env_file() {
        EnvFile::read(Path::new(ENV_FILE)).unwrap_or_else(|e| fail(&e))
    } else {
        EnvFile::default()
    };
    let get = |k: &str| std::env::var(k).ok().or_else(|| file.get(k));
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(&format!("no async runtime: {e}")));
    match runtime.block_on(cli.command.run(&Env::new(&get), &file)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("singapay-webhooks: {msg}");
    std::process::exit(1);
}
