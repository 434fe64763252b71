//! `sandbox`: a local stand-in for Singapay's REST API (see `tools::sandbox`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::say;
use crate::tools::sandbox::{router, Sandbox, SandboxConfig};

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The client id it accepts (X-CLIENT-ID; SINGAPAY_CLIENT_ID on the receiver's side).
    #[arg(long, default_value = "sandbox-client")]
    pub client_id: String,
    /// The client secret token requests must be signed with (SINGAPAY_CLIENT_SECRET).
    #[arg(long, default_value = "sandbox-secret")]
    pub client_secret: String,
    /// The partner id it accepts (X-PARTNER-ID; SINGAPAY_PARTNER_ID).
    #[arg(long, default_value = "sandbox-partner")]
    pub partner_id: String,
    /// How long the tokens it issues live, in seconds (Singapay's: 216000).
    #[arg(long, default_value_t = 216_000)]
    pub token_ttl_secs: u64,
    /// A sub-account this credential owns (repeatable). Without any, it owns every account
    /// no credential added later (POST /_sandbox/credentials) owns.
    #[arg(long = "account", value_name = "ID")]
    pub accounts: Vec<String>,
}

pub async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("sandbox: cannot listen on {}", args.listen))?;
    let address = super::local(listener.local_addr()?);
    let sb = Sandbox::new(SandboxConfig {
        client_id: args.client_id.clone(),
        client_secret: args.client_secret,
        partner_id: args.partner_id.clone(),
        token_ttl_secs: args.token_ttl_secs,
        clock: Arc::new(chrono::Utc::now),
        accounts: args.accounts.clone(),
    });
    let owns = if args.accounts.is_empty() { "every account".to_owned() } else { args.accounts.join(", ") };
    say(format!(
        "Singapay API sandbox on http://{address} (client id {}, partner id {}, owning {owns}); \
         script answers with POST http://{address}/_sandbox/transactions",
        args.client_id, args.partner_id
    ));
    axum::serve(listener, router(sb))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
