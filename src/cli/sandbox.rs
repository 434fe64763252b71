//! `sandbox`: a local stand-in for Singapay's REST API (see `tools::sandbox`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use rand::RngCore;

use super::say;
use crate::tools::sandbox::{router_at, Sandbox, SandboxConfig};

/// The client secret when neither `SANDBOX_CLIENT_SECRET` nor `--client-secret-file` gives one.
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-secret";

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Where to listen. Anything but a loopback address is warned about: whoever reaches the
    /// port can take tokens and read what is scripted.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The client id it accepts (X-CLIENT-ID; SINGAPAY_CLIENT_ID on the receiver's side).
    #[arg(long, default_value = "sandbox-client")]
    pub client_id: String,
    /// A file holding the client secret token requests must be signed with
    /// (SINGAPAY_CLIENT_SECRET on the receiver's side). Else the environment's
    /// SANDBOX_CLIENT_SECRET, else `sandbox-secret`. Never on the command line.
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,
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
    /// A file holding the control token /_sandbox/* calls must send as X-Sandbox-Token. Else
    /// the environment's SANDBOX_CONTROL_TOKEN, else a random one each run (printed at start).
    #[arg(long, value_name = "PATH")]
    pub control_token_file: Option<PathBuf>,
}

/// Where the client secret came from, for the receiver's line of the banner.
enum SecretSource {
    Default,
    Env,
    File(PathBuf),
}

/// A variable of the environment: `None` when unset or blank.
fn var(name: &'static str, value: Result<String, std::env::VarError>) -> anyhow::Result<Option<String>> {
    match value {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name}: is not UTF-8"),
    }
}

/// A secret file's contents without the final line break; an empty one is an error.
fn read_secret_file(flag: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.trim().is_empty() {
        bail!("{flag}: {} is empty", path.display());
    }
    Ok(text)
}

fn client_secret(args: &SandboxArgs) -> anyhow::Result<(String, SecretSource)> {
    let from_env = var("SANDBOX_CLIENT_SECRET", std::env::var("SANDBOX_CLIENT_SECRET"))?;
    match (from_env, &args.client_secret_file) {
        (Some(_), Some(_)) => bail!("SANDBOX_CLIENT_SECRET: set either it or --client-secret-file, not both"),
        (Some(secret), None) => Ok((secret, SecretSource::Env)),
        (None, Some(path)) => Ok((read_secret_file("--client-secret-file", path)?, SecretSource::File(path.clone()))),
        (None, None) => Ok((DEFAULT_CLIENT_SECRET.to_owned(), SecretSource::Default)),
    }
}

/// The control token: given (checked) or random.
fn control_token(args: &SandboxArgs) -> anyhow::Result<String> {
    let from_env = var("SANDBOX_CONTROL_TOKEN", std::env::var("SANDBOX_CONTROL_TOKEN"))?;
    let (token, name) = match (from_env, &args.control_token_file) {
        (Some(_), Some(_)) => bail!("SANDBOX_CONTROL_TOKEN: set either it or --control-token-file, not both"),
        (Some(token), None) => (token, "SANDBOX_CONTROL_TOKEN"),
        (None, Some(path)) => (read_secret_file("--control-token-file", path)?, "--control-token-file"),
        (None, None) => {
            let mut bytes = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut bytes);
            return Ok(hex::encode(bytes));
        }
    };
    let printable = token.bytes().all(|b| b.is_ascii_graphic());
    if !printable || !(16..=512).contains(&token.len()) {
        bail!("{name}: the control token must be 16 to 512 visible ASCII characters, without spaces");
    }
    Ok(token)
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

pub async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let (secret, secret_source) = client_secret(&args)?;
    let token = control_token(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("sandbox: cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let address = super::local(bound);
    let base = format!("http://{address}");
    if !bound.ip().is_loopback() {
        eprintln!(
            "WARN sandbox: listening on {bound}, which is not a loopback address: whoever reaches this port \
             can take tokens and read the scripted answers. Only Host localhost, 127.0.0.0/8, [::1] or \
             {bound} is answered, and /_sandbox/* needs the control token."
        );
    }
    let sb = Sandbox::new(SandboxConfig {
        client_id: args.client_id.clone(),
        client_secret: secret,
        partner_id: args.partner_id.clone(),
        token_ttl_secs: args.token_ttl_secs,
        clock: Arc::new(chrono::Utc::now),
        accounts: args.accounts.clone(),
        control_token: token.clone(),
    });
    let owns = if args.accounts.is_empty() { "every account".to_owned() } else { args.accounts.join(", ") };
    let receiver_secret = match &secret_source {
        SecretSource::Default => format!("SINGAPAY_CLIENT_SECRET={DEFAULT_CLIENT_SECRET}"),
        SecretSource::Env => "SINGAPAY_CLIENT_SECRET=\"$SANDBOX_CLIENT_SECRET\"".to_owned(),
        SecretSource::File(path) => format!("SINGAPAY_CLIENT_SECRET_FILE={}", sh_quote(&path.display().to_string())),
    };
    let account = args.accounts.first().map_or("dev-account", String::as_str);
    let script = r#"{"id":"REF-1","answers":["03","00"]}"#;
    say(format!(
        "Singapay API sandbox listening on {bound} (client id {client}, partner id {partner}, owning {owns})\n\
         \x20 control token : {token}  (header X-Sandbox-Token on every /_sandbox/* call)\n\
         \x20 script        : curl -sS -H {header} -H 'Content-Type: application/json' -d '{script}' {base}/_sandbox/transactions\n\
         \x20 send          : SANDBOX_CONTROL_TOKEN={quoted} singapay-webhooks send disbursement --url http://127.0.0.1:8080/webhooks/singapay --status 01 --sandbox {base} --sandbox-answers 03,00\n\
         \x20 receiver      : SINGAPAY_API_URL={base} SINGAPAY_API_ALLOW_INSECURE=1 SINGAPAY_CLIENT_ID={client_word} {receiver_secret} SINGAPAY_PARTNER_ID={partner_word} SINGAPAY_ACCOUNT_ID={account}\n\
         Every answer carries X-Singapay-Sandbox: 1. Ctrl-C stops it.",
        client = args.client_id,
        partner = args.partner_id,
        header = sh_quote(&format!("X-Sandbox-Token: {token}")),
        quoted = sh_quote(&token),
        client_word = sh_quote(&args.client_id),
        partner_word = sh_quote(&args.partner_id),
        account = sh_quote(account),
    ));
    axum::serve(listener, router_at(sb, bound))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
