//! `send`: a local Singapay simulator. Builds a realistic callback, signs it exactly as
//! Singapay does (PHP canonical form, a random bearer token, X-Timestamp, X-PARTNER-ID,
//! User-Agent) with the verifier's own signing code, POSTs it, and prints the answer.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::{Args, ValueEnum};
use rand::Rng;
use rand::RngCore;
use secrecy::SecretString;

use crate::config::Env;
use crate::singapay::signature::{self, BodyForm};
use crate::singapay::webhook::WebhookType;
use crate::singapay::Body;
use crate::tools::simulate::{self, Spec};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Form {
    Php,
    Raw,
    Sorted,
}

pub fn parse_type(s: &str) -> Result<WebhookType, String> {
    WebhookType::from_name(s).ok_or_else(|| {
        format!(
            "not a webhook type; one of: {}",
            WebhookType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        )
    })
}

fn type_help() -> String {
    let names: Vec<&str> = WebhookType::ALL.iter().map(|t| t.as_str()).collect();
    format!("The webhook type, one of: {}", names.join(", "))
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[arg(value_parser = parse_type, help = type_help())]
    pub webhook_type: WebhookType,
    /// Where to POST, e.g. http://127.0.0.1:8080/webhooks/singapay. Signing with the secret
    /// of SINGAPAY_WEBHOOK_SECRETS (not one `dev` made), only this machine (localhost,
    /// 127.0.0.0/8, ::1) unless --i-mean-production.
    #[arg(long)]
    pub url: String,
    /// The secret to sign with (default: the first of SINGAPAY_WEBHOOK_SECRETS).
    #[arg(long)]
    pub secret: Option<String>,
    /// Sign with the secret of SINGAPAY_WEBHOOK_SECRETS (the environment or .env) for a --url
    /// that is not this machine: a callback that production would accept.
    #[arg(long)]
    pub i_mean_production: bool,
    /// Sign with a random secret instead (the receiver must answer 401).
    #[arg(long)]
    pub wrong_secret: bool,
    /// Payment status: money-in `paid`/`pending`/…, money-out code `00`–`07`, settlement
    /// `completed`/`refunded`/`refund_cancelled`, subscription `payment_success`/
    /// `payment_failed`/a plan status, direct debit `ACTIVE`/… (default: a success).
    #[arg(long)]
    pub status: Option<String>,
    /// Money-out response_code (default SP000, SP001 for status 06).
    #[arg(long)]
    pub response_code: Option<String>,
    /// The id the transaction key is made of (default: random).
    #[arg(long)]
    pub transaction_id: Option<String>,
    /// The merchant reference (default: random).
    #[arg(long)]
    pub reference: Option<String>,
    /// Amount in whole rupiah (default: random).
    #[arg(long)]
    pub amount: Option<u64>,
    /// Items per list in expiration sweeps (default 2).
    #[arg(long)]
    pub items: Option<usize>,
    /// Send the callback once for each of these statuses, in order, for one transaction
    /// (e.g. 01,03,00).
    #[arg(long, value_delimiter = ',')]
    pub sequence: Vec<String>,
    /// Then send the same body this many more times, re-signed with a fresh timestamp and
    /// token (Singapay's retries).
    #[arg(long, default_value_t = 0)]
    pub repeat: u32,
    /// Date X-Timestamp this many seconds in the past.
    #[arg(long, value_name = "SECONDS")]
    pub stale: Option<u64>,
    /// The body form the signature covers.
    #[arg(long, value_enum, default_value = "php")]
    pub form: Form,
    /// Sign for this path and query instead of the URL's (what a rewriting proxy changes).
    #[arg(long)]
    pub signed_path: Option<String>,
    #[arg(long, default_value = "sim-partner-id")]
    pub partner_id: String,
    /// Live deliveries carried GuzzleHttp/7; the docs say SingaPaymentGateway/1.0.
    #[arg(long, default_value = "GuzzleHttp/7")]
    pub user_agent: String,
    /// Also write each request, as an HTTP message, into this directory (for `verify`).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Print the requests instead of sending them.
    #[arg(long)]
    pub dry_run: bool,
    /// Also script a local `sandbox` (its URL, e.g. http://127.0.0.1:8090): what Singapay's
    /// API answers when asked about this transaction (see --sandbox-answers).
    #[arg(long, requires = "sandbox_answers")]
    pub sandbox: Option<String>,
    /// The sandbox's answers, one per question, the last repeated (e.g. 03,00; a status or
    /// a fault such as SP005, SP009, hang).
    #[arg(long, value_delimiter = ',', requires = "sandbox")]
    pub sandbox_answers: Vec<String>,
    /// The sandbox's control token (it prints it at start), sent as X-Sandbox-Token; else the
    /// environment's SANDBOX_CONTROL_TOKEN.
    #[arg(long, value_name = "TOKEN", requires = "sandbox")]
    pub sandbox_token: Option<String>,
}

/// Whether `url` names this machine: `localhost`, `127.0.0.0/8` or `::1`.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A secret `dev` generated (`dev=dev_<48 hex digits>` in SINGAPAY_WEBHOOK_SECRETS): it
/// signs for nothing but a local receiver.
fn is_dev_secret(credential: &crate::singapay::signature::Credential) -> bool {
    use secrecy::ExposeSecret;
    let secret = credential.secret.expose_secret();
    credential.label == "dev"
        && secret.strip_prefix("dev_").is_some_and(|h| h.len() == 48 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

struct Signed {
    endpoint: String,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn sign(args: &SendArgs, secret: &SecretString, endpoint: &str, body: &str) -> Result<Signed> {
    let analysed = Body::analyse(body.as_bytes());
    let hashed: &[u8] = match args.form {
        Form::Php => analysed.php.as_deref().context("PHP cannot canonicalise this body")?.as_bytes(),
        Form::Raw => body.as_bytes(),
        Form::Sorted => analysed.sorted().context("not JSON")?.as_bytes(),
    };
    let ts = (Utc::now().timestamp() - args.stale.map_or(0, |s| s as i64)).to_string();
    let token = random_hex(16);
    let sig = signature::sign(secret, endpoint.as_bytes(), token.as_bytes(), hashed, ts.as_bytes());
    Ok(Signed {
        endpoint: endpoint.to_owned(),
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("Accept", "application/json".into()),
            ("User-Agent", args.user_agent.clone()),
            ("X-Partner-ID", args.partner_id.clone()),
            ("X-Timestamp", ts),
            ("Authorization", format!("Bearer {token}")),
            ("X-Signature", sig),
        ],
        body: body.to_owned(),
    })
}

fn http_message(s: &Signed, host: &str) -> String {
    let mut m = format!("POST {} HTTP/1.1\r\nHost: {host}\r\n", s.endpoint);
    for (k, v) in &s.headers {
        m.push_str(&format!("{k}: {v}\r\n"));
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{}", s.body.len(), s.body));
    m
}

pub async fn send(env: &Env<'_>, args: SendArgs) -> Result<()> {
    let configured = env.settings(false)?.credentials.into_iter().next();
    let url = reqwest::Url::parse(&args.url).with_context(|| format!("--url {:?} is not a URL", args.url))?;
    // The configured secret is production's unless `dev` made it: it signs for this machine
    // only, unless asked in so many words. Checked before anything is built or sent.
    let production_secret =
        !args.wrong_secret && args.secret.is_none() && configured.as_ref().is_some_and(|c| !is_dev_secret(c));
    if production_secret && !is_loopback(&url) && !args.i_mean_production {
        bail!(
            "refusing to sign with the secret of SINGAPAY_WEBHOOK_SECRETS (from the environment or .env) \
             for --url {}, which is not this machine (localhost, 127.0.0.0/8, ::1): pass --i-mean-production \
             to send a callback production would accept, or --secret with a test secret",
            url.host_str().map_or_else(|| url.as_str().to_owned(), |h| format!("{}://{h}", url.scheme()))
        );
    }
    let configured = configured.map(|c| c.secret);
    let mut endpoint = url.path().to_owned();
    if let Some(q) = url.query() {
        endpoint = format!("{endpoint}?{q}");
    }
    let endpoint = args.signed_path.clone().unwrap_or(endpoint);
    let secret = if args.wrong_secret {
        SecretString::from(format!("wrong-{}", random_hex(8)))
    } else {
        match (&args.secret, configured) {
            (Some(s), _) => SecretString::from(s.clone()),
            (None, Some(s)) => s,
            (None, None) => bail!("no secret: pass --secret or set SINGAPAY_WEBHOOK_SECRETS"),
        }
    };
    let mut rng = rand::thread_rng();
    let statuses: Vec<Option<String>> = if args.sequence.is_empty() {
        vec![args.status.clone()]
    } else {
        args.sequence.iter().cloned().map(Some).collect()
    };
    let mut spec = Spec {
        status: None,
        response_code: args.response_code.clone(),
        transaction_id: args.transaction_id.clone(),
        reference: args.reference.clone(),
        // One amount for the whole sequence.
        amount: Some(args.amount.unwrap_or_else(|| rng.gen_range(10..5000) * 1000)),
        items: args.items,
    };
    let mut bodies = Vec::new();
    for status in statuses {
        spec.status = status;
        let built = simulate::build(args.webhook_type, &spec, Utc::now(), &mut rng).map_err(anyhow::Error::msg)?;
        // One transaction across a sequence: later steps reuse the ids of the first.
        spec.transaction_id = Some(built.transaction_id.clone());
        spec.reference = Some(built.reference.clone());
        // Pretty-printed like Singapay's documented samples: what arrives is never already
        // in canonical form, so the receiver's canonicalisation is exercised.
        bodies.push((built.status.clone(), serde_json::to_string_pretty(&built.body)?));
    }
    if let Some((status, body)) = bodies.last().cloned() {
        for _ in 0..args.repeat {
            bodies.push((status.clone(), body.clone()));
        }
    }

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    if let (Some(sandbox), Some((_, body))) = (&args.sandbox, bodies.first()) {
        let token = match &args.sandbox_token {
            Some(token) => Some(token.clone()),
            None => std::env::var("SANDBOX_CONTROL_TOKEN").ok().filter(|t| !t.trim().is_empty()),
        };
        let to = SandboxAt { url: sandbox, token: token.as_deref() };
        script_sandbox(&client, &to, body, &args.sandbox_answers, args.dry_run).await?;
    }
    let host = url.host_str().unwrap_or("localhost").to_owned();
    let mut all_ok = true;
    for (n, (status, body)) in bodies.iter().enumerate() {
        let signed = sign(&args, &secret, &endpoint, body)?;
        if let Some(dir) = &args.save {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{}.http", n + 1));
            std::fs::write(&path, http_message(&signed, &host))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if args.dry_run {
            super::say(format!("{}\n", http_message(&signed, &host)));
            continue;
        }
        let mut req = client.post(url.clone()).body(signed.body.clone());
        for (k, v) in &signed.headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        let code = resp.status();
        let answer = resp.text().await.unwrap_or_default();
        super::say(format!(
            "{} {} status={status} -> {} {}",
            args.webhook_type.as_str(),
            form_name(args.form),
            code.as_u16(),
            answer.trim()
        ));
        all_ok &= code.is_success();
    }
    if !all_ok {
        bail!("the receiver did not answer every callback with 2xx");
    }
    Ok(())
}

/// A local `sandbox` and its control token.
struct SandboxAt<'a> {
    url: &'a str,
    token: Option<&'a str>,
}

/// Tells the sandbox what to answer about the transaction `body` is about, under the
/// identifier an inquiry about it names.
async fn script_sandbox(
    client: &reqwest::Client,
    sandbox: &SandboxAt<'_>,
    body: &str,
    answers: &[String],
    dry_run: bool,
) -> Result<()> {
    use crate::singapay::status::Product;
    use crate::singapay::{inquiry, json, webhook};
    let parsed = json::parse(body.as_bytes()).map_err(|e| anyhow::anyhow!("the built body is not JSON: {e:?}"))?;
    let classified = webhook::classify(&parsed.value);
    let change = classified.single().context("--sandbox needs a callback about one transaction")?;
    let id = inquiry::identifier(&inquiry::Subject::of(change))
        .with_context(|| format!("Singapay has no inquiry for {}", change.product.as_str()))?;
    let line = format!("sandbox: asked about {id} ({}), answers {}", change.transaction_key, answers.join(", "));
    if dry_run {
        super::say(format!("would tell the {line}"));
        return Ok(());
    }
    // Singapay's record names the merchant's reff_no too: the reconciler checks it.
    let mut script = serde_json::json!({ "id": id, "product": change.product.as_str(), "answers": answers });
    if matches!(change.product, Product::Qris | Product::PaymentLink | Product::Ewallet) {
        script["reff_no"] = webhook::key_id(&change.transaction_key).into();
    }
    // Money-out answers carry Singapay's transaction_id, which the reconciler compares.
    if change.product.is_money_out() {
        script["transaction_id"] = webhook::key_id(&change.transaction_key).into();
    }
    let url = format!("{}/_sandbox/transactions", sandbox.url.trim_end_matches('/'));
    let mut request = client.post(&url).json(&script);
    if let Some(token) = sandbox.token {
        request = request.header(crate::tools::sandbox::TOKEN_HEADER, token);
    }
    let resp = request.send().await.with_context(|| format!("POST {url}"))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "the sandbox refused the script (401): pass its control token (printed when it started) with \
             --sandbox-token or SANDBOX_CONTROL_TOKEN{}",
            if sandbox.token.is_some() { "; the one given is not it" } else { "" }
        );
    }
    if !resp.status().is_success() {
        bail!("the sandbox refused the script: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    super::say(line);
    Ok(())
}

fn form_name(f: Form) -> &'static str {
    match f {
        Form::Php => BodyForm::Php.as_str(),
        Form::Raw => BodyForm::Raw.as_str(),
        Form::Sorted => BodyForm::Sorted.as_str(),
    }
}
