//! `verify`: every intermediate value of a signature check for a captured request or a
//! stored delivery/rejection, and which part mismatched. Secrets are never printed.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use secrecy::SecretString;

use crate::config::Env;
use crate::store::{self, Kept};
use crate::tools::explain::{self, Verdict};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["request", "headers", "delivery", "rejection"])))]
pub struct VerifyArgs {
    /// A captured request as an HTTP/1.1 message: request line, headers, blank line, body
    /// (what `send --save` writes).
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// The request's headers, one `Name: value` per line (a request line such as
    /// `POST /webhooks/singapay?src=sp HTTP/1.1` may come first); with --body.
    #[arg(long, requires = "body")]
    pub headers: Option<PathBuf>,
    /// The request body exactly as received; with --headers.
    #[arg(long, requires = "headers")]
    pub body: Option<PathBuf>,
    /// The path and query the request arrived at, when the headers file has no request
    /// line (default: WEBHOOK_PATH).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A stored delivery (needs DATABASE_URL).
    #[arg(long)]
    pub delivery: Option<i64>,
    /// A rejected (stale) delivery (needs DATABASE_URL).
    #[arg(long)]
    pub rejection: Option<i64>,
    /// Judge freshness at this Unix time instead of now.
    #[arg(long)]
    pub at: Option<i64>,
    /// With --delivery/--rejection whose bearer token `prune` dropped (after
    /// BEARER_RETENTION_HOURS): the token, checked against the SHA-256 kept in its place.
    #[arg(long)]
    pub token: Option<String>,
}

struct Captured {
    path_and_query: String,
    signature: Option<Vec<u8>>,
    timestamp: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
    partner_id: Option<String>,
    body: Vec<u8>,
}

/// Headers (optionally after a request line) and a separate body.
fn parse_parts(head: &str, body: Vec<u8>, default_target: &str) -> Result<Captured> {
    let mut lines = head.lines().peekable();
    let mut target = default_target.to_owned();
    if let Some(first) = lines.peek() {
        if !first.contains(':') || first.starts_with("POST ") {
            let mut parts = first.split_whitespace();
            let (method, t) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if method != "POST" || !t.starts_with('/') {
                bail!("the first line must be like `POST /webhooks/singapay HTTP/1.1`, got {first:?}");
            }
            target = t.to_owned();
            lines.next();
        }
    }
    let mut c = Captured {
        path_and_query: target,
        signature: None,
        timestamp: None,
        authorization: None,
        partner_id: None,
        body,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim().as_bytes().to_vec();
        match name.trim().to_ascii_lowercase().as_str() {
            "x-signature" => c.signature = Some(value),
            "x-timestamp" => c.timestamp = Some(value),
            "authorization" => c.authorization = Some(value),
            "x-partner-id" => c.partner_id = Some(String::from_utf8_lossy(&value).into_owned()),
            _ => {}
        }
    }
    Ok(c)
}

fn parse_message(bytes: &[u8]) -> Result<Captured> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| bytes.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .context("no blank line between headers and body")?;
    let head = String::from_utf8_lossy(&bytes[..split.0]).into_owned();
    let body = bytes[split.0 + split.1..].to_vec();
    if !head.starts_with("POST ") {
        bail!("a request file starts with its request line, like `POST /webhooks/singapay HTTP/1.1`");
    }
    parse_parts(&head, body, "")
}

async fn from_database(database_url: &SecretString, kept: Kept, id: i64, token: Option<&str>) -> Result<Captured> {
    use sha2::{Digest, Sha256};
    let pool = store::pool(database_url, 1)?;
    let row = store::kept_request(&pool, kept, id).await.context("reading the stored request")?;
    pool.close().await;
    let row = row.with_context(|| format!("no row {id} in singapay.{}", kept.table()))?;
    let bearer = match (row.access_token.is_empty(), token) {
        (false, _) => row.access_token,
        (true, None) => bail!(
            "the bearer token of {} {id} was dropped (tokens are kept BEARER_RETENTION_HOURS); pass the token with --token to check it against its stored SHA-256",
            kept.table()
        ),
        (true, Some(t)) => {
            let given = Sha256::digest(t.as_bytes()).to_vec();
            if row.access_token_sha256.as_deref() != Some(given.as_slice()) {
                bail!("the token given with --token is not the one {} {id} arrived with (its SHA-256 differs)", kept.table());
            }
            t.to_owned()
        }
    };
    Ok(Captured {
        path_and_query: row.request_path,
        signature: Some(row.x_signature.into_bytes()),
        timestamp: row.x_timestamp.map(String::into_bytes),
        authorization: Some(format!("Bearer {bearer}").into_bytes()),
        partner_id: row.partner_id,
        body: row.body,
    })
}

/// Prints the report; true when the signature matches.
pub async fn verify(env: &Env<'_>, args: VerifyArgs) -> Result<bool> {
    let settings = &env.settings(true)?;
    let database_url = env.database_url()?;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let captured = match (&args.request, args.delivery, args.rejection) {
        (Some(path), _, _) => parse_message(&read(path)?)?,
        (None, None, None) if args.headers.is_some() => {
            let (headers, body) =
                (args.headers.as_ref().unwrap_or(&PathBuf::new()).clone(), args.body.clone().unwrap_or_default());
            let default_target = args.endpoint.clone().unwrap_or_else(|| settings.webhook_path.clone());
            parse_parts(&String::from_utf8_lossy(&read(&headers)?), read(&body)?, &default_target)?
        }
        (None, Some(id), _) => {
            let url = database_url.context("DATABASE_URL is required for --delivery")?;
            from_database(&url, Kept::Delivery, id, args.token.as_deref()).await?
        }
        (None, None, Some(id)) => {
            let url = database_url.context("DATABASE_URL is required for --rejection")?;
            from_database(&url, Kept::Rejection, id, args.token.as_deref()).await?
        }
        _ => bail!("give --request, --headers with --body, --delivery or --rejection"),
    };
    let endpoint = settings.signed_endpoint(&captured.path_and_query);
    let report = explain::explain(
        &explain::Request {
            endpoint: &endpoint,
            signature: captured.signature.as_deref(),
            timestamp: captured.timestamp.as_deref(),
            authorization: captured.authorization.as_deref(),
            partner_id: captured.partner_id.as_deref(),
            body: &captured.body,
        },
        &settings.credentials,
        args.at.unwrap_or_else(|| chrono::Utc::now().timestamp()),
        settings.timestamp_tolerance_secs,
    );
    super::say(report.text.trim_end());
    Ok(matches!(report.verdict, Verdict::Match { .. }))
}
