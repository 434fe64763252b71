//! Settings from the environment (and `.env` when present). A bad value stops start-up
//! with the variable's name; secrets are never printed, not even by `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;

use secrecy::SecretString;

use crate::intake::IntakeSettings;
use crate::singapay::signature::Credential;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.why)
    }
}

impl std::error::Error for ConfigError {}

fn bad(var: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError { var, why: why.into() }
}

pub use crate::telemetry::{LogFormat, DEFAULT_LOG_FILTER};

/// Every environment variable the program reads (`RUST_LOG` through the log filter).
/// `.env.example` lists exactly these; a test keeps the two in step.
/// The drain after SIGTERM unless `SHUTDOWN_DRAIN_SECS` says otherwise: long enough for a
/// load balancer checking every 5 s to see two failed checks, with margin, and for
/// Kubernetes to take the pod out of its endpoints. An orchestrator's grace period should
/// cover the drain plus `SHUTDOWN_TIMEOUT_SECS`.
pub const DEFAULT_DRAIN_SECS: u64 = 15;

pub const VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "SINGAPAY_WEBHOOK_SECRETS",
    "SINGAPAY_WEBHOOK_SECRETS_FILE",
    "LISTEN_ADDR",
    "ADMIN_LISTEN_ADDR",
    "WEBHOOK_PATH",
    "SIGNED_PATH_PREFIX",
    "TIMESTAMP_TOLERANCE_SECS",
    "MAX_BODY_BYTES",
    "ALLOWED_SOURCE_CIDRS",
    "TRUSTED_PROXY_HOPS",
    "TRUSTED_PROXY_CIDRS",
    "DB_MAX_CONNECTIONS",
    "INTAKE_WRITERS",
    "INTAKE_BATCH_MAX",
    "INTAKE_QUEUE_CAPACITY",
    "LOG_FORMAT",
    "RUST_LOG",
    "RETENTION_DAYS",
    "BEARER_RETENTION_HOURS",
    "SHUTDOWN_TIMEOUT_SECS",
    "SHUTDOWN_DRAIN_SECS",
    "MAX_CONNECTIONS",
    "HEADER_READ_TIMEOUT_SECS",
    "BODY_READ_TIMEOUT_SECS",
    "PG_BIN_DIR",
    "SINGAPAY_API_URL",
    "SINGAPAY_API_ALLOW_INSECURE",
    "SINGAPAY_CLIENT_ID",
    "SINGAPAY_CLIENT_SECRET",
    "SINGAPAY_CLIENT_SECRET_FILE",
    "SINGAPAY_PARTNER_ID",
    "SINGAPAY_ACCOUNT_ID",
    "SINGAPAY_API_TIMEOUT_SECS",
    "RECONCILE_MONEY_OUT_OVERDUE_SECS",
    "RECONCILE_MONEY_IN_OVERDUE_SECS",
    "RECONCILE_CONCURRENCY",
    "RECONCILE_BACKOFF_SECS",
    "RECONCILE_BACKOFF_MAX_SECS",
    "RECONCILE_NOT_FOUND_ATTEMPTS",
    "RECONCILE_UNREADABLE_ATTEMPTS",
    "RECONCILE_INTERVAL_SECS",
    "SANDBOX_CONTROL_TOKEN",
    "SANDBOX_CLIENT_SECRET",
];

/// How the receiver behaves; everything `serve` needs except the database URL.
#[derive(Clone)]
pub struct Settings {
    pub credentials: Vec<Credential>,
    pub listen_addr: SocketAddr,
    /// The admin listener: `/metrics`, `/healthz` and `/readyz` for the orchestrator and
    /// scrapers, with no allowlist (keep it private); `127.0.0.1:9090` unless
    /// `ADMIN_LISTEN_ADDR` says otherwise. `None` (`ADMIN_LISTEN_ADDR=off`): no admin
    /// listener, and `/metrics` is served on `listen_addr` behind `ALLOWED_SOURCE_CIDRS`.
    pub admin_listen_addr: Option<SocketAddr>,
    /// Source allowlist for callbacks; `None` allows every source.
    pub allowed_source_cidrs: Option<Vec<IpNet>>,
    /// How many proxies in front of us append to X-Forwarded-For (and are trusted to).
    pub trusted_proxy_hops: usize,
    /// The proxies (load balancers) whose `X-Forwarded-For` is believed; from any other peer
    /// the header is ignored.
    pub trusted_proxy_cidrs: Option<Vec<IpNet>>,
    /// How long shutdown waits for in-flight callbacks.
    pub shutdown_timeout_secs: u64,
    /// After SIGTERM, how long `/readyz` answers 503 while callbacks are still served, so
    /// that load balancers stop sending here before the listener closes.
    pub shutdown_drain_secs: u64,
    /// Open connections allowed on the callback port, and how long a request's headers may
    /// take (also the keep-alive idle timeout).
    pub connections: crate::http::server::ConnectionLimits,
    /// How long a request's body may take to arrive, in full.
    pub body_read_timeout_secs: u64,
    pub webhook_path: String,
    pub signed_path_prefix: Option<String>,
    pub timestamp_tolerance_secs: u64,
    pub max_body_bytes: usize,
    pub db_max_connections: u32,
    /// Group commit: writers, batch size, queue bound.
    pub intake: IntakeSettings,
    pub log_format: LogFormat,
}

impl Settings {
    /// ENDPOINT as Singapay signed it: the path and query as received, with WEBHOOK_PATH
    /// replaced by SIGNED_PATH_PREFIX when a proxy rewrote the public prefix.
    pub fn signed_endpoint(&self, path_and_query: &str) -> String {
        match &self.signed_path_prefix {
            Some(public) => match path_and_query.strip_prefix(&self.webhook_path) {
                Some(rest) => format!("{public}{rest}"),
                None => path_and_query.to_owned(),
            },
            None => path_and_query.to_owned(),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("credentials", &self.credentials.iter().map(|c| &c.label).collect::<Vec<_>>())
            .field("listen_addr", &self.listen_addr)
            .field("admin_listen_addr", &self.admin_listen_addr)
            .field("allowed_source_cidrs", &self.allowed_source_cidrs)
            .field("trusted_proxy_hops", &self.trusted_proxy_hops)
            .field("trusted_proxy_cidrs", &self.trusted_proxy_cidrs)
            .field("shutdown_timeout_secs", &self.shutdown_timeout_secs)
            .field("shutdown_drain_secs", &self.shutdown_drain_secs)
            .field("connections", &self.connections)
            .field("body_read_timeout_secs", &self.body_read_timeout_secs)
            .field("webhook_path", &self.webhook_path)
            .field("signed_path_prefix", &self.signed_path_prefix)
            .field("timestamp_tolerance_secs", &self.timestamp_tolerance_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("db_max_connections", &self.db_max_connections)
            .field("intake", &self.intake)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// Intake writers by default: one per two cores, between 2 and 4, leaving the pool one
/// connection for everything else (so 1 writer with a pool of 2 or fewer). One writer
/// takes the largest batches, which costs Postgres and the receiver the least per callback
/// (measured: `cargo bench --bench intake`); but while a writer waits to try again a
/// callback whose transaction another session has locked (about a second at most), a
/// second writer keeps storing the others. More writers also overlap one batch's commit
/// with the next batch's statements, which pays once there are cores to spare.
pub fn default_writers(db_max_connections: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(2, 4).min((db_max_connections as usize).saturating_sub(1)).max(1)
}

pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8080";
/// `/metrics`, `/healthz` and `/readyz` for this host only, unless `ADMIN_LISTEN_ADDR` says
/// otherwise (the image sets `0.0.0.0:9090`, for the orchestrator's probes and scraper).
pub const DEFAULT_ADMIN_LISTEN_ADDR: &str = "127.0.0.1:9090";
pub const DEFAULT_WEBHOOK_PATH: &str = "/webhooks/singapay";

/// Reads variables through `get`, so tests can supply their own environment.
pub struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Env { get }
    }

    fn raw(&self, var: &'static str) -> Option<String> {
        debug_assert!(VARIABLES.contains(&var), "{var} is missing from config::VARIABLES");
        (self.get)(var).filter(|v| !v.trim().is_empty())
    }

    /// A secret-bearing variable, from `VAR` or from the file named by `VAR_FILE`.
    pub fn secret(&self, var: &'static str, file_var: &'static str) -> Result<Option<String>, ConfigError> {
        match (self.raw(var), self.raw(file_var)) {
            (Some(_), Some(_)) => Err(bad(var, format!("set either {var} or {file_var}, not both"))),
            (Some(v), None) => Ok(Some(v)),
            (None, Some(path)) => std::fs::read_to_string(path.trim())
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| bad(file_var, format!("cannot read {}: {e}", path.trim()))),
            (None, None) => Ok(None),
        }
    }

    fn parsed<T: std::str::FromStr>(&self, var: &'static str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| bad(var, format!("{:?} is not {what}", v.trim()))),
        }
    }

    fn ranged(&self, var: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v: u64 = self.parsed(var, default, "a whole number")?;
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(bad(var, format!("{v} is outside {min}..={max}")))
        }
    }

    pub fn database_url(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(url) = self.secret("DATABASE_URL", "DATABASE_URL_FILE")? else {
            return Ok(None);
        };
        // sqlx accepts any scheme; a mysql:// or typo'd URL must fail here, by name. The
        // message never repeats the URL: it may hold a password.
        let lower = url.trim().to_ascii_lowercase();
        if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
            return Err(bad("DATABASE_URL", "must be a postgres:// or postgresql:// URL"));
        }
        url.trim().parse::<sqlx::postgres::PgConnectOptions>().map_err(|e| {
            bad("DATABASE_URL", format!("is not a valid Postgres URL ({})", e.to_string().replace(url.trim(), "…")))
        })?;
        Ok(Some(SecretString::from(url.trim().to_owned())))
    }

    pub fn require_database_url(&self) -> Result<SecretString, ConfigError> {
        self.database_url()?.ok_or_else(|| bad("DATABASE_URL", "is required (a postgres:// connection string)"))
    }

    /// `prune` keeps this many days.
    pub fn retention_days(&self) -> Result<u32, ConfigError> {
        Ok(self.ranged("RETENTION_DAYS", 90, 1, 36_500)? as u32)
    }

    /// How long `prune` keeps a callback's bearer token (for `verify`) before it keeps only
    /// its SHA-256.
    pub fn bearer_retention_hours(&self) -> Result<u32, ConfigError> {
        Ok(self.ranged("BEARER_RETENTION_HOURS", 24, 1, 876_000)? as u32)
    }

    /// Where `dev` and the tests find PostgreSQL's server binaries, when set.
    pub fn pg_bin_dir(&self) -> Option<String> {
        self.raw("PG_BIN_DIR")
    }

    /// The log filter (`RUST_LOG`), validated.
    pub fn log_filter(&self) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
        log_filter(self.raw("RUST_LOG").as_deref())
    }

    pub fn listen_addr_set(&self) -> bool {
        self.raw("LISTEN_ADDR").is_some()
    }

    pub fn log_format_set(&self) -> bool {
        self.raw("LOG_FORMAT").is_some()
    }

    /// Whether `SHUTDOWN_DRAIN_SECS` was given (`dev` drains only when asked).
    pub fn drain_set(&self) -> bool {
        self.raw("SHUTDOWN_DRAIN_SECS").is_some()
    }

    pub fn log_format(&self) -> Result<LogFormat, ConfigError> {
        match self.raw("LOG_FORMAT").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("json") => Ok(LogFormat::Json),
            Some("text") => Ok(LogFormat::Text),
            Some(other) => Err(bad("LOG_FORMAT", format!("{other:?} is not json or text"))),
        }
    }

    /// All settings; `secrets_required` is false for `dev`, which makes its own.
    pub fn settings(&self, secrets_required: bool) -> Result<Settings, ConfigError> {
        let credentials = match self.secret("SINGAPAY_WEBHOOK_SECRETS", "SINGAPAY_WEBHOOK_SECRETS_FILE")? {
            Some(v) => parse_credentials(&v)?,
            None if secrets_required => {
                return Err(bad(
                    "SINGAPAY_WEBHOOK_SECRETS",
                    "is required: comma-separated label=secret entries (the Client Secret of every credential that may sign)",
                ))
            }
            None => Vec::new(),
        };
        let listen_addr =
            self.parsed("LISTEN_ADDR", DEFAULT_LISTEN_ADDR.parse().expect("valid default"), "host:port")?;
        let webhook_path =
            parse_path("WEBHOOK_PATH", self.raw("WEBHOOK_PATH").as_deref().unwrap_or(DEFAULT_WEBHOOK_PATH))?;
        let signed_path_prefix =
            self.raw("SIGNED_PATH_PREFIX").map(|p| parse_path("SIGNED_PATH_PREFIX", &p)).transpose()?;
        let admin_listen_addr: Option<SocketAddr> = match self.raw("ADMIN_LISTEN_ADDR").map(|v| v.trim().to_owned()) {
            None => Some(DEFAULT_ADMIN_LISTEN_ADDR.parse().expect("valid default")),
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) => {
                Some(v.parse().map_err(|_| bad("ADMIN_LISTEN_ADDR", format!("{v:?} is neither host:port nor off")))?)
            }
        };
        if admin_listen_addr == Some(listen_addr) && listen_addr.port() != 0 {
            return Err(bad("ADMIN_LISTEN_ADDR", "must differ from LISTEN_ADDR"));
        }
        let allowed_source_cidrs =
            self.raw("ALLOWED_SOURCE_CIDRS").map(|v| parse_cidrs("ALLOWED_SOURCE_CIDRS", &v)).transpose()?;
        let trusted_proxy_cidrs =
            self.raw("TRUSTED_PROXY_CIDRS").map(|v| parse_cidrs("TRUSTED_PROXY_CIDRS", &v)).transpose()?;
        let trusted_proxy_hops = self.ranged("TRUSTED_PROXY_HOPS", 0, 0, 10)? as usize;
        if trusted_proxy_hops > 0 && trusted_proxy_cidrs.is_none() {
            return Err(bad(
                "TRUSTED_PROXY_HOPS",
                "needs TRUSTED_PROXY_CIDRS (the proxies' addresses): X-Forwarded-For from anyone else is not believed",
            ));
        }
        let db_max_connections = self.ranged("DB_MAX_CONNECTIONS", 16, 1, 1000)? as u32;
        let intake = IntakeSettings {
            writers: self.ranged("INTAKE_WRITERS", default_writers(db_max_connections) as u64, 1, 64)? as usize,
            batch_max: self.ranged("INTAKE_BATCH_MAX", 256, 1, 10_000)? as usize,
            queue_capacity: self.ranged("INTAKE_QUEUE_CAPACITY", 1024, 1, 1_000_000)? as usize,
        };
        if intake.writers as u32 > db_max_connections {
            return Err(bad(
                "INTAKE_WRITERS",
                format!(
                    "{} writers need as many connections; DB_MAX_CONNECTIONS is {db_max_connections}",
                    intake.writers
                ),
            ));
        }
        Ok(Settings {
            credentials,
            listen_addr,
            admin_listen_addr,
            allowed_source_cidrs,
            trusted_proxy_hops,
            trusted_proxy_cidrs,
            shutdown_timeout_secs: self.ranged("SHUTDOWN_TIMEOUT_SECS", 25, 1, 3600)?,
            shutdown_drain_secs: self.ranged("SHUTDOWN_DRAIN_SECS", DEFAULT_DRAIN_SECS, 0, 3600)?,
            connections: crate::http::server::ConnectionLimits {
                max_connections: self.ranged(
                    "MAX_CONNECTIONS",
                    crate::http::server::default_max_connections(db_max_connections) as u64,
                    1,
                    1_000_000,
                )? as usize,
                header_read_timeout: std::time::Duration::from_secs(self.ranged(
                    "HEADER_READ_TIMEOUT_SECS",
                    65,
                    1,
                    3600,
                )?),
            },
            body_read_timeout_secs: self.ranged("BODY_READ_TIMEOUT_SECS", 15, 1, 3600)?,
            webhook_path,
            signed_path_prefix,
            timestamp_tolerance_secs: self.ranged("TIMESTAMP_TOLERANCE_SECS", 300, 1, 7 * 24 * 3600)?,
            max_body_bytes: self.ranged("MAX_BODY_BYTES", 1_048_576, 1024, 64 * 1024 * 1024)? as usize,
            db_max_connections,
            intake,
            log_format: self.log_format()?,
        })
    }
}

impl Env<'_> {
    /// Reconciliation's settings: `None` when no Singapay API credential is set (it is off),
    /// an error naming the first one missing when only some are. The tuning variables are
    /// checked either way.
    pub fn reconcile(&self) -> Result<Option<crate::reconcile::ReconcileSettings>, ConfigError> {
        use std::time::Duration;
        let timeout = Duration::from_secs(self.ranged("SINGAPAY_API_TIMEOUT_SECS", 15, 1, 300)?);
        let allow_insecure = match self.raw("SINGAPAY_API_ALLOW_INSECURE").as_deref().map(str::trim) {
            None | Some("0") => false,
            Some("1") => true,
            Some(_) => return Err(bad("SINGAPAY_API_ALLOW_INSECURE", "must be 1 or 0")),
        };
        let money_out_overdue =
            Duration::from_secs(self.ranged("RECONCILE_MONEY_OUT_OVERDUE_SECS", 15 * 60, 1, 90 * 86_400)?);
        let money_in_overdue =
            Duration::from_secs(self.ranged("RECONCILE_MONEY_IN_OVERDUE_SECS", 86_400, 1, 90 * 86_400)?);
        let concurrency = self.ranged("RECONCILE_CONCURRENCY", 4, 1, 256)? as usize;
        let backoff = Duration::from_secs(self.ranged("RECONCILE_BACKOFF_SECS", 60, 1, 86_400)?);
        let backoff_max = Duration::from_secs(self.ranged("RECONCILE_BACKOFF_MAX_SECS", 3600, 1, 7 * 86_400)?);
        if backoff_max < backoff {
            return Err(bad("RECONCILE_BACKOFF_MAX_SECS", "must be at least RECONCILE_BACKOFF_SECS"));
        }
        let not_found_attempts = self.ranged("RECONCILE_NOT_FOUND_ATTEMPTS", 5, 1, 1000)? as u32;
        let unreadable_attempts = self.ranged("RECONCILE_UNREADABLE_ATTEMPTS", 10, 1, 1000)? as u32;
        let interval = Duration::from_secs(self.ranged("RECONCILE_INTERVAL_SECS", 30, 1, 3600)?);

        let api_url = self.raw("SINGAPAY_API_URL");
        let client_id = self.raw("SINGAPAY_CLIENT_ID");
        let client_secret = self.secret("SINGAPAY_CLIENT_SECRET", "SINGAPAY_CLIENT_SECRET_FILE")?;
        let partner_id = self.raw("SINGAPAY_PARTNER_ID");
        let account_id = self.raw("SINGAPAY_ACCOUNT_ID");
        let given = [
            ("SINGAPAY_API_URL", api_url.is_some()),
            ("SINGAPAY_CLIENT_ID", client_id.is_some()),
            ("SINGAPAY_CLIENT_SECRET", client_secret.as_deref().is_some_and(|s| !s.is_empty())),
            ("SINGAPAY_PARTNER_ID", partner_id.is_some()),
            ("SINGAPAY_ACCOUNT_ID", account_id.is_some()),
        ];
        let present: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        let missing: Vec<&'static str> = given.iter().filter(|g| !g.1).map(|g| g.0).collect();
        if present.is_empty() {
            return Ok(None);
        }
        if let Some(&first) = missing.first() {
            return Err(bad(
                first,
                format!(
                    "is required for reconciliation, which {} turns on (set all of SINGAPAY_API_URL, SINGAPAY_CLIENT_ID, SINGAPAY_CLIENT_SECRET, SINGAPAY_PARTNER_ID, SINGAPAY_ACCOUNT_ID, or none)",
                    present.join(", ")
                ),
            ));
        }
        let base_url = api_url.unwrap_or_default().trim().trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&base_url) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && u.password().is_none() =>
            {
                // Statuses move money: only Singapay's own hosts, over TLS, unless a
                // developer says otherwise (the local sandbox).
                let singapay = u.host_str().is_some_and(|h| h == "singapay.id" || h.ends_with(".singapay.id"));
                if !allow_insecure && (u.scheme() != "https" || !singapay || u.port().is_some()) {
                    return Err(bad(
                        "SINGAPAY_API_URL",
                        "must be https on Singapay's host (https://payment-b2b.singapay.id, https://sandbox-payment-b2b.singapay.id); any other URL, such as the local sandbox, needs SINGAPAY_API_ALLOW_INSECURE=1 (never in production)",
                    ));
                }
            }
            _ => {
                return Err(bad(
                    "SINGAPAY_API_URL",
                    "must be an https URL such as https://payment-b2b.singapay.id (no query, fragment or user)",
                ))
            }
        }
        let credentials = api_credentials(
            &base_url,
            timeout,
            allow_insecure,
            &client_id.unwrap_or_default(),
            &client_secret.unwrap_or_default(),
            &partner_id.unwrap_or_default(),
            &account_id.unwrap_or_default(),
        )?;
        Ok(Some(crate::reconcile::ReconcileSettings {
            credentials,
            money_out_overdue,
            money_in_overdue,
            concurrency,
            backoff,
            backoff_max,
            not_found_attempts,
            unreadable_attempts,
            interval,
        }))
    }
}

/// The Singapay API credentials, in the style of `SINGAPAY_WEBHOOK_SECRETS`: one bare value
/// per variable is the single credential (labelled `default`); several are `label=value`
/// entries (comma- or newline-separated) with the labels of `SINGAPAY_CLIENT_ID`.
/// `SINGAPAY_CLIENT_SECRET` then holds `label=secret` entries, `SINGAPAY_PARTNER_ID` a bare
/// value for every credential or `label=partner` entries, and `SINGAPAY_ACCOUNT_ID` the
/// accounts each owns (`label=ACCOUNT`, repeatable; bare entries belong to `default`, or
/// to the only credential). A label matches the webhook secret that verifies the same
/// merchant's callbacks. Errors name labels and positions, never a secret.
fn api_credentials(
    base_url: &str,
    timeout: std::time::Duration,
    allow_insecure: bool,
    client_ids: &str,
    client_secrets: &str,
    partner_ids: &str,
    account_ids: &str,
) -> Result<Vec<crate::reconcile::ApiCredential>, ConfigError> {
    const IDS: &str = "SINGAPAY_CLIENT_ID";
    const SECRETS: &str = "SINGAPAY_CLIENT_SECRET";
    const PARTNERS: &str = "SINGAPAY_PARTNER_ID";
    const ACCOUNTS: &str = "SINGAPAY_ACCOUNT_ID";
    let entries = |v: &str| -> Vec<String> {
        v.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect()
    };
    // `label=value` when the part before the first '=' is a label, else a bare value.
    let labelled = |e: &str| -> (Option<String>, String) {
        match e.split_once('=') {
            Some((l, v)) if is_label(l.trim()) && !v.trim().is_empty() => {
                (Some(l.trim().to_owned()), v.trim().to_owned())
            }
            _ => (None, e.to_owned()),
        }
    };
    let ids: Vec<(Option<String>, String)> = entries(client_ids).iter().map(|e| labelled(e)).collect();
    let single = matches!(ids.as_slice(), [(None, _)]);
    if !single && ids.iter().any(|(l, _)| l.is_none()) {
        return Err(bad(IDS, "give one bare client id, or label=client_id entries for several credentials"));
    }
    if ids.is_empty() {
        return Err(bad(IDS, "names no client id"));
    }
    let mut creds: Vec<(String, String)> = Vec::new();
    for (label, id) in ids {
        let label = label.unwrap_or_else(|| "default".to_owned());
        if creds.iter().any(|(l, _)| *l == label) {
            return Err(bad(IDS, format!("label {label:?} appears twice")));
        }
        creds.push((label, id));
    }
    if !single {
        // Every entry is one credential's: a part without a known label is a secret that
        // held a ',' or a typo, never silently dropped (named by position, not content).
        for (n, entry) in entries(client_secrets).iter().enumerate() {
            let known = entry.split_once('=').is_some_and(|(l, _)| creds.iter().any(|(c, _)| c == l.trim()));
            if !known {
                return Err(bad(
                    SECRETS,
                    format!(
                        "entry {} ({} characters) does not start with a label of SINGAPAY_CLIENT_ID and '=' (a secret cannot hold ',' or a line break)",
                        n + 1,
                        entry.chars().count()
                    ),
                ));
            }
        }
    }
    let secret_of = |label: &str| -> Result<String, ConfigError> {
        if single {
            return Ok(client_secrets.trim().to_owned());
        }
        let found: Vec<String> = entries(client_secrets)
            .iter()
            .filter_map(|e| e.split_once('=').filter(|(l, _)| l.trim() == label).map(|(_, s)| s.trim().to_owned()))
            .collect();
        match found.as_slice() {
            [s] if !s.is_empty() => Ok(s.clone()),
            [] | [_] => {
                Err(bad(SECRETS, format!("has no label={{secret}} entry for the credential labelled {label:?}")))
            }
            _ => Err(bad(SECRETS, format!("has {} entries for the credential labelled {label:?}", found.len()))),
        }
    };
    let partners: Vec<(Option<String>, String)> = entries(partner_ids).iter().map(|e| labelled(e)).collect();
    let partner_of = |label: &str| -> Result<String, ConfigError> {
        partners
            .iter()
            .find(|(l, _)| l.as_deref() == Some(label))
            .or_else(|| partners.iter().find(|(l, _)| l.is_none()))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| bad(PARTNERS, format!("has no partner id for the credential labelled {label:?}")))
    };
    let accounts: Vec<(Option<String>, String)> = entries(account_ids).iter().map(|e| labelled(e)).collect();
    for (n, (label, account)) in accounts.iter().enumerate() {
        if !account.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) || account.len() > 128 {
            return Err(bad(ACCOUNTS, format!("entry {} must be letters, digits, '-', '_' or '.' (a sub-account id), with an optional label= before it", n + 1)));
        }
        if let Some(l) = label.as_deref().filter(|l| !creds.iter().any(|(c, _)| c == l)) {
            return Err(bad(
                ACCOUNTS,
                format!("entry {} names the label {l:?}, which SINGAPAY_CLIENT_ID does not have", n + 1),
            ));
        }
    }
    if creds.len() > 1 && !creds.iter().any(|(l, _)| l == "default") {
        if let Some(n) = accounts.iter().position(|(l, _)| l.is_none()) {
            return Err(bad(
                ACCOUNTS,
                format!("entry {} has no label= and no credential is labelled \"default\" to own it", n + 1),
            ));
        }
    }
    let mut out = Vec::new();
    for (label, client_id) in &creds {
        let owned: Vec<String> = accounts
            .iter()
            .filter(|(l, _)| match l {
                Some(l) => l == label,
                None => creds.len() == 1 || label == "default",
            })
            .map(|(_, a)| a.clone())
            .collect();
        if owned.is_empty() {
            return Err(bad(
                ACCOUNTS,
                format!("names no account for the credential labelled {label:?} ({label}=ACCOUNT_ID)"),
            ));
        }
        let secret = secret_of(label)?;
        if secret.is_empty() {
            return Err(bad(SECRETS, format!("the credential labelled {label:?} has an empty secret")));
        }
        out.push(crate::reconcile::ApiCredential {
            label: label.clone(),
            api: crate::reconcile::ApiSettings {
                base_url: base_url.to_owned(),
                client_id: client_id.clone(),
                client_secret: SecretString::from(secret),
                partner_id: partner_of(label)?,
                timeout,
                allow_insecure,
            },
            accounts: owned,
        });
    }
    Ok(out)
}

/// The log filter from `RUST_LOG` (default `info,sqlx=warn`); a malformed one is a
/// start-up error, not a silent fallback.
fn log_filter(rust_log: Option<&str>) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        Some(v) => tracing_subscriber::EnvFilter::try_new(v)
            .map_err(|e| ConfigError { var: "RUST_LOG", why: format!("{v:?}: {e}") }),
    }
}

/// Where the optional settings file is looked for: the working directory only.
pub const ENV_FILE: &str = ".env";

/// The settings a `.env` file gives, consulted after the real environment.
#[derive(Default)]
pub struct EnvFile {
    path: Option<std::path::PathBuf>,
    vars: HashMap<String, String>,
}

impl EnvFile {
    /// Reads `path` when it exists; a file that cannot be parsed is an error, by line.
    pub fn read(path: &Path) -> Result<EnvFile, String> {
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

    pub fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    /// Logs which file was read and which of its variables took effect (names only: values
    /// may be secrets).
    pub fn announce(&self) {
        let Some(path) = &self.path else { return };
        let mut used: Vec<&str> =
            self.vars.keys().map(String::as_str).filter(|k| std::env::var_os(k).is_none()).collect();
        used.sort_unstable();
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        tracing::info!(file = %path.display(), variables = %used.join(","), "settings read from the env file (the environment wins)");
    }
}

/// `10.0.0.0/8, 203.0.113.7, 2001:db8::/32`: a bare address is a single host.
fn parse_cidrs(var: &'static str, v: &str) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::new();
    for entry in v.split([',', ' ', '\n']).map(str::trim).filter(|e| !e.is_empty()) {
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| bad(var, format!("{entry:?} is not an IP address or CIDR block")))?;
        out.push(net.trunc());
    }
    if out.is_empty() {
        return Err(bad(var, "is set but lists no address"));
    }
    Ok(out)
}

fn parse_path(var: &'static str, p: &str) -> Result<String, ConfigError> {
    let p = p.trim();
    if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
        return Err(bad(var, format!("{p:?} must be a path starting with '/' (no query)")));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad(var, "must not be '/' alone"));
    }
    Ok(trimmed.to_owned())
}

/// `label=secret` entries separated by commas or newlines; a bare entry is a secret on its
/// own. Base64 padding (`abc==`) is a bare secret, not the label `abc`.
/// The shortest secret accepted. Singapay's client secrets are longer; anything shorter is
/// a typo, a truncated paste or a placeholder, and would be guessable.
pub const MIN_SECRET_LEN: usize = 16;

pub fn parse_credentials(v: &str) -> Result<Vec<Credential>, ConfigError> {
    const VAR: &str = "SINGAPAY_WEBHOOK_SECRETS";
    let entries: Vec<&str> = v.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty()).collect();
    if entries.is_empty() {
        return Err(bad(VAR, "has no secrets"));
    }
    for (n, entry) in entries.iter().enumerate() {
        refuse_placeholder(n + 1, entry).map_err(|why| bad(VAR, why))?;
    }
    let bare_count = entries.iter().filter(|e| split_label(e).is_none()).count();
    let mut out: Vec<Credential> = Vec::new();
    let mut bare_seen = 0;
    for entry in entries {
        let (label, secret) = match split_label(entry) {
            Some((l, s)) => (l.to_owned(), s),
            None => {
                bare_seen += 1;
                let label = if bare_count == 1 { "default".to_owned() } else { format!("secret-{bare_seen}") };
                (label, entry)
            }
        };
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(bad(
                VAR,
                format!(
                    "the secret labelled {label:?} has {} characters; at least {MIN_SECRET_LEN} are required",
                    secret.chars().count()
                ),
            ));
        }
        if out.iter().any(|c| c.label == label) {
            return Err(bad(VAR, format!("label {label:?} appears twice")));
        }
        out.push(Credential { label, secret: SecretString::from(secret.to_owned()) });
    }
    Ok(out)
}

/// Entries that are evidently not a secret: a label with nothing after `=` (an unset
/// template variable, as in `default=${SECRET}` expanded empty), a `=` with no label, or a
/// template left unexpanded.
fn refuse_placeholder(position: usize, entry: &str) -> Result<(), String> {
    // Named by position and length, never by content: `abc=` may be a label with nothing
    // after it, or a whole base64 secret.
    if entry.strip_suffix('=').is_some_and(is_label) {
        return Err(format!(
            "entry {position} ({} characters) ends in a single '=' with nothing after it: an empty secret (an unset template variable?), or a bare secret ending in '=' that needs a label: label=secret",
            entry.chars().count()
        ));
    }
    if entry.starts_with('=') {
        return Err(format!("entry {position} ({} characters) starts with '=': the label is missing", entry.len()));
    }
    let secret = split_label(entry).map_or(entry, |(_, s)| s);
    if ["${", "$(", "{{", "}}"].iter().any(|t| secret.contains(t)) || (secret.starts_with('<') && secret.ends_with('>'))
    {
        return Err(format!("entry {position} looks like an unexpanded template"));
    }
    Ok(())
}

fn is_label(label: &str) -> bool {
    !label.is_empty() && label.len() <= 64 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn split_label(entry: &str) -> Option<(&str, &str)> {
    let (label, secret) = entry.split_once('=')?;
    let label_ok = is_label(label);
    let secret_ok = !secret.is_empty() && !secret.bytes().all(|b| b == b'=');
    (label_ok && secret_ok).then_some((label, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    #[test]
    fn an_env_file_that_cannot_be_parsed_is_named_by_line_never_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "# settings\nLISTEN_ADDR=127.0.0.1:9\nSINGAPAY_WEBHOOK_SECRETS=default=s3cret with space\n",
        )
        .unwrap();
        let err = EnvFile::read(&path).err().expect("refused");
        assert!(err.contains("line 3 cannot be parsed"), "{err}");
        assert!(!err.contains("s3cret") && !err.contains("with space"), "the value leaked: {err}");
        std::fs::write(&path, "LISTEN_ADDR=127.0.0.1:9\n").unwrap();
        let file = EnvFile::read(&path).unwrap();
        assert_eq!(file.get("LISTEN_ADDR").as_deref(), Some("127.0.0.1:9"));
        assert!(EnvFile::read(&dir.path().join("missing")).unwrap().get("LISTEN_ADDR").is_none());
    }

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let get = move |k: &str| map.get(k).cloned();
        Env::new(&get).settings(true)
    }

    fn reconcile(vars: &[(&str, &str)]) -> Result<Option<crate::reconcile::ReconcileSettings>, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let get = move |k: &str| map.get(k).cloned();
        Env::new(&get).reconcile()
    }

    const API: [(&str, &str); 5] = [
        ("SINGAPAY_API_URL", "https://sandbox-payment-b2b.singapay.id/"),
        ("SINGAPAY_CLIENT_ID", "client-1"),
        ("SINGAPAY_CLIENT_SECRET", "secret-1"),
        ("SINGAPAY_PARTNER_ID", "partner-1"),
        ("SINGAPAY_ACCOUNT_ID", "01JACCOUNT"),
    ];

    #[test]
    fn reconciliation_is_on_with_every_credential_and_off_with_none() {
        assert!(reconcile(&[]).unwrap().is_none());
        let r = reconcile(&API).unwrap().expect("on");
        let c = &r.credentials[0];
        assert_eq!(r.credentials.len(), 1);
        assert_eq!((c.label.as_str(), c.api.base_url.as_str()), ("default", "https://sandbox-payment-b2b.singapay.id"));
        assert_eq!((c.accounts.as_slice(), c.api.partner_id.as_str()), (&["01JACCOUNT".to_owned()][..], "partner-1"));
        assert_eq!((r.money_out_overdue.as_secs(), r.money_in_overdue.as_secs()), (900, 86_400));
        assert_eq!((r.backoff.as_secs(), r.backoff_max.as_secs(), r.concurrency), (60, 3600, 4));
        assert!(!format!("{r:?}").contains("secret-1"), "the secret is never printed");
    }

    #[test]
    fn half_a_reconciliation_configuration_names_what_is_missing() {
        for (missing, (name, _)) in API.iter().enumerate() {
            let vars: Vec<(&str, &str)> =
                API.iter().enumerate().filter(|(i, _)| *i != missing).map(|(_, v)| *v).collect();
            let e = reconcile(&vars).unwrap_err();
            assert_eq!(e.var, *name);
            assert!(e.to_string().contains("SINGAPAY_CLIENT_ID") || missing == 1, "{e}");
        }
        let mut vars = API.to_vec();
        vars[0].1 = "payment-b2b.singapay.id";
        assert_eq!(reconcile(&vars).unwrap_err().var, "SINGAPAY_API_URL");
        vars[0].1 = "https://x.example";
        vars.push(("RECONCILE_BACKOFF_SECS", "600"));
        vars.push(("RECONCILE_BACKOFF_MAX_SECS", "60"));
        assert_eq!(reconcile(&vars).unwrap_err().var, "RECONCILE_BACKOFF_MAX_SECS");
    }

    #[test]
    fn several_credentials_each_own_their_accounts() {
        let vars = [
            ("SINGAPAY_API_URL", "https://payment-b2b.singapay.id"),
            ("SINGAPAY_CLIENT_ID", "default=client-1, shop2=client-2"),
            ("SINGAPAY_CLIENT_SECRET", "default=secret-1=,shop2=secret-2"),
            ("SINGAPAY_PARTNER_ID", "partner-1, shop2=partner-2"),
            ("SINGAPAY_ACCOUNT_ID", "ACC-1, default=ACC-3, shop2=ACC-2"),
        ];
        let r = reconcile(&vars).unwrap().unwrap();
        let c: Vec<(&str, &str, &str, Vec<String>)> = r
            .credentials
            .iter()
            .map(|c| (c.label.as_str(), c.api.client_id.as_str(), c.api.partner_id.as_str(), c.accounts.clone()))
            .collect();
        assert_eq!(
            c,
            [
                ("default", "client-1", "partner-1", vec!["ACC-1".to_owned(), "ACC-3".to_owned()]),
                ("shop2", "client-2", "partner-2", vec!["ACC-2".to_owned()])
            ]
        );
        assert_eq!(r.credentials[0].api.client_secret.expose_secret(), "secret-1=");
        assert_eq!(r.candidates(Some("shop2")), [(1, "ACC-2".to_owned())]);
        assert_eq!(r.candidates(Some("other")).len(), 3, "an unknown owner: every account is tried");
        // A credential without its secret or account is named by label, never by content.
        let mut v = vars.to_vec();
        v[2].1 = "default=secret-1";
        let e = reconcile(&v).unwrap_err();
        assert_eq!(e.var, "SINGAPAY_CLIENT_SECRET");
        assert!(e.why.contains("shop2") && !e.why.contains("secret-1"), "{e}");
        let mut v = vars.to_vec();
        v[4].1 = "ACC-1";
        assert!(reconcile(&v).unwrap_err().why.contains("shop2"));
        let mut v = vars.to_vec();
        v[4].1 = "ACC-1, nobody=ACC-9";
        assert_eq!(reconcile(&v).unwrap_err().var, "SINGAPAY_ACCOUNT_ID");
        // A secret entry without a known label (a ',' inside a secret) is refused, by position.
        let mut v = vars.to_vec();
        v[2].1 = "default=secret-1=,shop2=sec,ret";
        let e = reconcile(&v).unwrap_err();
        assert!(e.why.contains("entry 3 (3 characters)") && !e.why.contains("ret\""), "{e}");
        let mut v = vars.to_vec();
        v[1].1 = " , ";
        assert_eq!(reconcile(&v).unwrap_err().var, "SINGAPAY_CLIENT_ID");
        // A bare account with several credentials and none labelled default has no owner.
        let mut v = vars.to_vec();
        v[1].1 = "main=client-1, shop2=client-2";
        v[2].1 = "main=secret-1,shop2=secret-2";
        v[4].1 = "ACC-1, main=ACC-3, shop2=ACC-2";
        assert!(reconcile(&v).unwrap_err().why.contains("entry 1 has no label="));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        let mut r = reconcile(&API).unwrap().unwrap();
        r.backoff = std::time::Duration::from_secs(60);
        r.backoff_max = std::time::Duration::from_secs(300);
        let waits: Vec<u64> = (1..=6).map(|asked| r.backoff_after(asked)).collect();
        assert_eq!(waits, [60, 120, 240, 300, 300, 300]);
        assert_eq!(r.backoff_after(1000), 300);
    }

    #[test]
    fn credentials_accept_labels_and_bare_secrets() {
        let c = parse_credentials("default=abcdefghijklmnop, specific=d=efghijklmnopqrst").unwrap();
        assert_eq!(c[0].label, "default");
        assert_eq!(c[1].label, "specific");
        assert_eq!(c[1].secret.expose_secret(), "d=efghijklmnopqrst");
        let c = parse_credentials("s3cr3t/with+symbols==").unwrap();
        assert_eq!((c[0].label.as_str(), c[0].secret.expose_secret()), ("default", "s3cr3t/with+symbols=="));
        let c = parse_credentials("abcdefghijklmnop==\nxyzxyzxyzxyzxyzxyz").unwrap();
        assert_eq!(c[0].label, "secret-1");
        assert_eq!(c[0].secret.expose_secret(), "abcdefghijklmnop==");
        assert!(parse_credentials("a=abcdefghijklmnop1,a=abcdefghijklmnop2").is_err());
    }

    /// A base64 secret with one `=` of padding is refused (it reads as a label with an empty
    /// secret) by position and length, never echoed.
    #[test]
    fn a_refused_secret_is_named_by_position_and_length_not_content() {
        let secret = "c2VjcmV0c2VjcmV0c2VjcmV0MTIzNA=";
        let err = parse_credentials(&format!("main=abcdefghijklmnopqr,{secret}")).unwrap_err();
        assert!(err.why.contains("entry 2 (31 characters)"), "{err}");
        assert!(!err.to_string().contains(&secret[..secret.len() - 1]), "{err}");
    }

    #[test]
    fn the_api_is_singapays_over_tls_unless_insecure_is_allowed() {
        let with = |url: &str, insecure: Option<&str>| {
            let mut vars = API.to_vec();
            vars[0].1 = url;
            if let Some(v) = insecure {
                vars.push(("SINGAPAY_API_ALLOW_INSECURE", v));
            }
            reconcile(&vars)
        };
        assert!(with("https://payment-b2b.singapay.id", None).is_ok());
        assert!(with("https://sandbox-payment-b2b.singapay.id/", None).is_ok());
        for url in [
            "http://payment-b2b.singapay.id",
            "https://payment-b2b.singapay.id.evil.example",
            "https://evil.example",
            "http://127.0.0.1:8090",
            "https://payment-b2b.singapay.id:8443",
        ] {
            let e = with(url, None).unwrap_err();
            assert_eq!(e.var, "SINGAPAY_API_URL", "{url}");
            assert!(e.why.contains("SINGAPAY_API_ALLOW_INSECURE=1"), "{e}");
        }
        for url in ["https://payment-b2b.singapay.id#", "https://user:pw@payment-b2b.singapay.id"] {
            assert_eq!(with(url, Some("1")).unwrap_err().var, "SINGAPAY_API_URL", "{url}");
        }
        let dev = with("http://127.0.0.1:8090", Some("1")).unwrap().unwrap();
        assert!(dev.credentials[0].api.allow_insecure);
        assert!(!with("https://payment-b2b.singapay.id", None).unwrap().unwrap().credentials[0].api.allow_insecure);
        assert_eq!(
            with("https://payment-b2b.singapay.id", Some("yes")).unwrap_err().var,
            "SINGAPAY_API_ALLOW_INSECURE"
        );
    }

    #[test]
    fn credentials_refuse_empty_short_and_template_secrets() {
        for (value, says) in [
            ("default=", "empty secret"),
            ("default=,specific=abcdefghijklmnopq", "empty secret"),
            ("=x", "label is missing"),
            ("=abcdefghijklmnopqrstuvwxyz", "label is missing"),
            ("prod=short", "at least 16"),
            ("short", "at least 16"),
            ("default=${SINGAPAY_DEFAULT_SECRET}", "template"),
            ("default={{ .Values.secret }}", "template"),
            ("<client secret of the Default credential>", "template"),
        ] {
            let err = match parse_credentials(value) {
                Err(e) => e,
                Ok(_) => panic!("{value:?} was accepted"),
            };
            assert_eq!(err.var, "SINGAPAY_WEBHOOK_SECRETS");
            assert!(err.to_string().contains(says), "{value:?}: {err}");
            for secret in ["short", "abcdefghijklmnopq", "SINGAPAY_DEFAULT_SECRET"] {
                assert!(!err.to_string().contains(secret) || value.starts_with('<'), "{value:?} leaked: {err}");
            }
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let base = [("SINGAPAY_WEBHOOK_SECRETS", "a-secret-long-enough")];
        for (var, value) in [
            ("TIMESTAMP_TOLERANCE_SECS", "soon"),
            ("TIMESTAMP_TOLERANCE_SECS", "0"),
            ("MAX_BODY_BYTES", "-1"),
            ("LISTEN_ADDR", "localhost"),
            ("WEBHOOK_PATH", "webhooks"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("LOG_FORMAT", "xml"),
            ("ADMIN_LISTEN_ADDR", "9090"),
            ("ALLOWED_SOURCE_CIDRS", "10.0.0.0/33"),
            ("ALLOWED_SOURCE_CIDRS", "example.com"),
            ("TRUSTED_PROXY_HOPS", "-1"),
            ("TRUSTED_PROXY_HOPS", "1"),
            ("TRUSTED_PROXY_CIDRS", "10.0.0.0/40"),
            ("SHUTDOWN_TIMEOUT_SECS", "0"),
            ("SHUTDOWN_DRAIN_SECS", "-1"),
            ("MAX_CONNECTIONS", "0"),
            ("HEADER_READ_TIMEOUT_SECS", "0"),
            ("BODY_READ_TIMEOUT_SECS", "soon"),
        ] {
            let err = settings(&[base[0], (var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{err}");
        }
        assert_eq!(settings(&[]).unwrap_err().var, "SINGAPAY_WEBHOOK_SECRETS");
    }

    #[test]
    fn debug_output_never_contains_a_secret() {
        let s = settings(&[("SINGAPAY_WEBHOOK_SECRETS", "prod=very-secret-value")]).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("very-secret-value"), "{dbg}");
        assert!(dbg.contains("prod"));
    }
}
