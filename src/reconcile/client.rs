//! A client for Singapay's REST API, as the reconciler needs it: v1.1 access tokens
//! (signed with the Asia/Jakarta date, cached until a minute before they expire) and the
//! inquiry endpoints. A 401 or `SP013` drops the token, fetches a new one and asks once
//! more; a second refusal is reported, never looped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::singapay::inquiry::{self, Answer, InquiryRequest, ListPage, Lookup, Method, Reading, Token, TokenRefused};
use crate::singapay::status::Product;

/// Where and as whom to ask.
#[derive(Clone)]
pub struct ApiSettings {
    /// `https://sandbox-payment-b2b.singapay.id`, `https://payment-b2b.singapay.id`, or
    /// any URL (the local `sandbox`).
    pub base_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub partner_id: String,
    /// Each request's limit, connecting included.
    pub timeout: Duration,
    /// `SINGAPAY_API_ALLOW_INSECURE=1`: any URL, plain http, and answers the local `sandbox`
    /// marks as its own (`X-Singapay-Sandbox`) are taken. Off, such answers are refused.
    pub allow_insecure: bool,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("partner_id", &self.partner_id)
            .field("timeout", &self.timeout)
            .field("allow_insecure", &self.allow_insecure)
            .finish()
    }
}

/// The largest answer read from the API; a longer one is cut off there and read as
/// `unreadable`: a misbehaving endpoint cannot fill this process's memory.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Reads at most [`MAX_ANSWER_BYTES`] of a response's body; true when there was more.
async fn bounded_body(mut response: reqwest::Response) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// A token is used until this long before Singapay says it expires (half its life for a
/// short-lived one).
pub const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// One exchange with the API, as it is recorded.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: Method,
    pub path: String,
    pub request_body: Option<serde_json::Value>,
    /// `None` when no answer came (timeout, connection refused).
    pub http_status: Option<u16>,
    pub response_body: Vec<u8>,
    pub answer: Answer,
    pub elapsed: Duration,
    /// Whether the token was refreshed and the question asked a second time.
    pub retried_with_new_token: bool,
    /// The list pages a search read before this exchange: path, HTTP status, rows and the
    /// ids of the rows whose `reff_no` equals ours.
    pub steps: Vec<serde_json::Value>,
}

/// Why a question could not be asked at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    #[error("Singapay refused the token request (HTTP 401): {0}")]
    Credentials(String),
    #[error("Singapay refused this machine's IP address at the token endpoint: {0}")]
    Forbidden(String),
    #[error("no access token: {0}")]
    TokenUnavailable(String),
    /// The answer came from the local `sandbox`, which any process on its port can script.
    #[error("{0}")]
    Untrusted(String),
}

/// The header the local `sandbox` puts on every answer.
pub const SANDBOX_MARK: &str = "x-singapay-sandbox";

fn untrusted(base_url: &str) -> String {
    format!(
        "the API at {base_url} is the local sandbox (its answers say X-Singapay-Sandbox): set SINGAPAY_API_ALLOW_INSECURE=1 to develop against it, never in production"
    )
}

pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// What came back for one request.
struct Raw {
    http_status: Option<u16>,
    body: Vec<u8>,
    truncated: bool,
    /// Why nothing came back.
    failed: Option<String>,
    retried_with_new_token: bool,
}

pub struct ApiClient {
    settings: ApiSettings,
    http: reqwest::Client,
    clock: Clock,
    token: Mutex<Option<(SecretString, Instant)>>,
}

impl ApiClient {
    pub fn new(settings: ApiSettings, clock: Clock) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // An answer is Singapay's or nobody's: a redirect is an answer (recorded,
            // never followed, so the token and signature go nowhere else).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("singapay-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ApiClient { settings, http, clock, token: Mutex::new(None) })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.settings.base_url.trim_end_matches('/'), path)
    }

    /// A token: the cached one while it is good, else a new one.
    pub async fn token(&self) -> Result<SecretString, AskError> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let s = &self.settings;
        let signature = inquiry::token_signature(&s.client_id, s.client_secret.expose_secret(), (self.clock)());
        let sent = self
            .http
            .post(self.url(inquiry::TOKEN_PATH))
            .header("X-PARTNER-ID", &s.partner_id)
            .header("X-CLIENT-ID", &s.client_id)
            .header("X-Signature", signature)
            .header("Accept", "application/json")
            .json(&inquiry::token_body())
            .send()
            .await;
        let response = sent.map_err(|e| AskError::TokenUnavailable(without_url(&e)))?;
        if !s.allow_insecure && response.headers().contains_key(SANDBOX_MARK) {
            return Err(AskError::Untrusted(untrusted(&s.base_url)));
        }
        let status = response.status().as_u16();
        let (body, truncated) =
            bounded_body(response).await.map_err(|e| AskError::TokenUnavailable(without_url(&e)))?;
        if truncated {
            return Err(AskError::TokenUnavailable(format!("HTTP {status}: the answer was longer than the limit")));
        }
        let Token { access_token, expires_in_secs } = inquiry::read_token(status, &body).map_err(|e| match e {
            TokenRefused::Credentials(m) => AskError::Credentials(m),
            TokenRefused::Forbidden(m) => AskError::Forbidden(m),
            TokenRefused::Other(m) => AskError::TokenUnavailable(m),
        })?;
        let life = Duration::from_secs(expires_in_secs);
        let life = life.saturating_sub(TOKEN_MARGIN.min(life / 2));
        let token = SecretString::from(access_token);
        // Checked: a life too long for this clock is cut to the longest it can hold.
        let until = Instant::now().checked_add(life).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// Drops the cached token (Singapay refused it).
    async fn forget_token(&self, refused: &SecretString) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| t.expose_secret() == refused.expose_secret()) {
            *cached = None;
        }
    }

    /// Asks `request` once, read with `reading` against `identity` (a question built by hand:
    /// the `sandbox` tests, the tools).
    pub async fn ask(&self, product: Product, request: &InquiryRequest) -> Result<Exchange, AskError> {
        let started = Instant::now();
        let mut exchange = self.read(Reading::of(product), request, &[]).await?;
        exchange.elapsed = started.elapsed();
        Ok(exchange)
    }

    /// Finds a record's status: one read, or a search through a partial-match list for the
    /// row whose `reff_no` equals ours and then a read of that row by its id.
    pub async fn look_up(&self, reading: Reading, lookup: &Lookup) -> Result<Exchange, AskError> {
        let started = Instant::now();
        let mut exchange = match lookup {
            Lookup::Read { request, identity } => self.read(reading, request, identity).await?,
            Lookup::Search { list, reff_no, read_prefix } => self.search(reading, list, reff_no, read_prefix).await?,
        };
        exchange.elapsed = started.elapsed();
        Ok(exchange)
    }

    async fn read(
        &self,
        reading: Reading,
        request: &InquiryRequest,
        identity: &[(&'static str, String)],
    ) -> Result<Exchange, AskError> {
        let raw = self.call(request).await?;
        let answer = match (raw.http_status, &raw.failed) {
            (Some(status), None) => inquiry::read_answer_bounded(reading, identity, status, &raw.body, raw.truncated),
            // A redirect: an answer that cannot be applied.
            (Some(_), Some(why)) => Answer::Unreadable { reason: why.clone() },
            (None, why) => Answer::RetryLater { reason: why.clone().unwrap_or_else(|| "no answer".into()) },
        };
        Ok(exchange_of(request, raw, answer))
    }

    async fn search(
        &self,
        reading: Reading,
        list: &str,
        reff_no: &str,
        read_prefix: &str,
    ) -> Result<Exchange, AskError> {
        let mut steps = Vec::new();
        let mut exact: Vec<String> = Vec::new();
        let mut capped = false;
        let mut last = None;
        for page in 1..=inquiry::MAX_LIST_PAGES {
            let request = InquiryRequest { method: Method::Get, path: inquiry::list_page(list, page), body: None };
            let raw = self.call(&request).await?;
            let read = match (&raw.failed, raw.http_status) {
                (Some(why), Some(_)) => ListPage::Other(Answer::Unreadable { reason: why.clone() }),
                (Some(why), None) => ListPage::Other(Answer::RetryLater { reason: why.clone() }),
                (None, None) => ListPage::Other(Answer::RetryLater { reason: "no answer".into() }),
                (None, Some(status)) => inquiry::read_list(status, &raw.body, reff_no, raw.truncated),
            };
            match read {
                ListPage::Other(answer) => {
                    let mut exchange = exchange_of(&request, raw, answer);
                    exchange.steps = steps;
                    return Ok(exchange);
                }
                ListPage::Rows { exact: found, rows, more } => {
                    steps.push(serde_json::json!({
                        "path": request.path, "http_status": raw.http_status, "rows": rows, "exact": found,
                    }));
                    exact.extend(found);
                    let done = !more || rows == 0;
                    last = Some((request, raw));
                    if done {
                        break;
                    }
                    capped = page == inquiry::MAX_LIST_PAGES;
                }
            }
        }
        // A row seen on two pages (the list moved between reads) is one row.
        exact.sort();
        exact.dedup();
        let answer = match exact.as_slice() {
            [id] => match inquiry::read_found(read_prefix, id, reff_no) {
                Some(Lookup::Read { request, identity }) => {
                    let mut exchange = self.read(reading, &request, &identity).await?;
                    exchange.steps = steps;
                    return Ok(exchange);
                }
                _ => Answer::Unreadable {
                    reason: format!(
                        "the row with reff_no {reff_no:?} has an id that cannot be asked: {:?}",
                        inquiry::bounded(id)
                    ),
                },
            },
            [] if capped => Answer::Ambiguous {
                reason: format!(
                    "no row with reff_no {reff_no:?} in the first {} pages of the list",
                    inquiry::MAX_LIST_PAGES
                ),
            },
            [] => Answer::NotFound { response_code: None },
            many => Answer::Ambiguous {
                reason: format!(
                    "{} rows have reff_no {reff_no:?} (ids {}{})",
                    many.len(),
                    many.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                    if many.len() > 5 { ", …" } else { "" }
                ),
            },
        };
        let (request, raw) = last.expect("a page was read");
        let mut exchange = exchange_of(&request, raw, answer);
        exchange.steps = steps;
        Ok(exchange)
    }

    /// Sends one request; on a refused token, once more with a new one.
    async fn call(&self, request: &InquiryRequest) -> Result<Raw, AskError> {
        let token = self.token().await?;
        let raw = self.send(request, &token).await;
        let refused = raw.http_status.is_some_and(|s| {
            raw.failed.is_none()
                && inquiry::read_answer_bounded(Reading::MoneyIn, &[], s, &raw.body, raw.truncated)
                    == Answer::TokenRejected
        });
        if !refused {
            return Ok(raw);
        }
        self.forget_token(&token).await;
        let token = self.token().await?;
        let mut raw = self.send(request, &token).await;
        raw.retried_with_new_token = true;
        Ok(raw)
    }

    async fn send(&self, request: &InquiryRequest, token: &SecretString) -> Raw {
        let url = self.url(&request.path);
        let builder = match request.method {
            Method::Get => self.http.get(url),
            Method::Post => self.http.post(url),
        };
        let mut builder = builder
            .bearer_auth(token.expose_secret())
            .header("X-PARTNER-ID", &self.settings.partner_id)
            .header("Accept", "application/json");
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let received = async {
            let response = builder.send().await?;
            let status = response.status().as_u16();
            let marked = response.headers().contains_key(SANDBOX_MARK);
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|l| inquiry::bounded(&String::from_utf8_lossy(l.as_bytes())));
            let (body, truncated) = bounded_body(response).await?;
            Ok::<_, reqwest::Error>((status, body, truncated, location, marked))
        };
        match received.await {
            Ok((status, body, truncated, _, true)) if !self.settings.allow_insecure => Raw {
                http_status: Some(status),
                body,
                truncated,
                failed: Some(untrusted(&self.settings.base_url)),
                retried_with_new_token: false,
            },
            // A redirect is not followed and not read: recorded with where it pointed.
            Ok((status @ 300..=399, body, truncated, location, _)) => Raw {
                http_status: Some(status),
                body,
                truncated,
                failed: Some(format!(
                    "HTTP {status}: a redirect to {}, not followed",
                    location.as_deref().unwrap_or("(no Location)")
                )),
                retried_with_new_token: false,
            },
            Ok((status, body, truncated, _, _)) => {
                Raw { http_status: Some(status), body, truncated, failed: None, retried_with_new_token: false }
            }
            Err(e) => {
                let what = if e.is_timeout() { "no answer in time" } else { "no answer" };
                let failed = Some(format!("{what}: {}", without_url(&e)));
                Raw { http_status: None, body: Vec::new(), truncated: false, failed, retried_with_new_token: false }
            }
        }
    }
}

fn exchange_of(request: &InquiryRequest, raw: Raw, answer: Answer) -> Exchange {
    Exchange {
        method: request.method,
        path: request.path.clone(),
        request_body: request.body.clone(),
        http_status: raw.http_status,
        response_body: raw.body,
        answer,
        elapsed: Duration::ZERO,
        retried_with_new_token: raw.retried_with_new_token,
        steps: Vec::new(),
    }
}

/// A reqwest error's text without its URL (which names the account).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "…");
    }
    inquiry::bounded(&s)
}
