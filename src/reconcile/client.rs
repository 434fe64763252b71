//! A client for Singapay's REST API, as the reconciler needs it: v1.1 access tokens
//! (signed with the Asia/Jakarta date, cached until a minute before they expire) and the
//! inquiry endpoints. A 401 or `SP013` drops the token, fetches a new one and asks once
//! more; a second refusal is reported, never looped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::singapay::inquiry::{self, Answer, InquiryRequest, Method, Token, TokenRefused};
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
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("partner_id", &self.partner_id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The largest answer read from the API; a longer one is cut off there (and is then not
/// the JSON it should be): a misbehaving endpoint cannot fill this process's memory.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Reads at most [`MAX_ANSWER_BYTES`] of a response's body.
async fn bounded_body(mut response: reqwest::Response) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(body)
}

/// A token is used until this long before Singapay says it expires.
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
}

/// Why a question could not be asked at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    #[error("Singapay refused the token request (HTTP 401): {0}")]
    Credentials(String),
    #[error("Singapay refused this machine (HTTP 403 at the token endpoint): {0}")]
    Forbidden(String),
    #[error("no access token: {0}")]
    TokenUnavailable(String),
}

pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub struct ApiClient {
    settings: ApiSettings,
    http: reqwest::Client,
    clock: Clock,
    token: Mutex<Option<(String, Instant)>>,
}

impl ApiClient {
    pub fn new(settings: ApiSettings, clock: Clock) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("singapay-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ApiClient { settings, http, clock, token: Mutex::new(None) })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.settings.base_url.trim_end_matches('/'), path)
    }

    /// A token: the cached one while it is good, else a new one.
    pub async fn token(&self) -> Result<String, AskError> {
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
        let status = response.status().as_u16();
        let body = bounded_body(response).await.map_err(|e| AskError::TokenUnavailable(without_url(&e)))?;
        let Token { access_token, expires_in_secs } = inquiry::read_token(status, &body).map_err(|e| match e {
            TokenRefused::Credentials(m) => AskError::Credentials(m),
            TokenRefused::Forbidden(m) => AskError::Forbidden(m),
            TokenRefused::Other(m) => AskError::TokenUnavailable(m),
        })?;
        let life = Duration::from_secs(expires_in_secs).saturating_sub(TOKEN_MARGIN);
        *cached = Some((access_token.clone(), Instant::now() + life));
        Ok(access_token)
    }

    /// Drops the cached token (Singapay refused it).
    async fn forget_token(&self, refused: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| t == refused) {
            *cached = None;
        }
    }

    /// Asks `request`; on a refused token, once more with a new one.
    pub async fn ask(&self, product: Product, request: &InquiryRequest) -> Result<Exchange, AskError> {
        let started = Instant::now();
        let token = self.token().await?;
        let mut exchange = self.send(product, request, &token).await;
        if exchange.answer == Answer::TokenRejected {
            self.forget_token(&token).await;
            let token = self.token().await?;
            exchange = self.send(product, request, &token).await;
            exchange.retried_with_new_token = true;
        }
        exchange.elapsed = started.elapsed();
        Ok(exchange)
    }

    async fn send(&self, product: Product, request: &InquiryRequest, token: &str) -> Exchange {
        let url = self.url(&request.path);
        let builder = match request.method {
            Method::Get => self.http.get(url),
            Method::Post => self.http.post(url),
        };
        let mut builder = builder
            .bearer_auth(token)
            .header("X-PARTNER-ID", &self.settings.partner_id)
            .header("Accept", "application/json");
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let mut exchange = Exchange {
            method: request.method,
            path: request.path.clone(),
            request_body: request.body.clone(),
            http_status: None,
            response_body: Vec::new(),
            answer: Answer::RetryLater { reason: String::new() },
            elapsed: Duration::ZERO,
            retried_with_new_token: false,
        };
        let received = async {
            let response = builder.send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>((status, bounded_body(response).await?))
        };
        match received.await {
            Ok((status, body)) => {
                exchange.answer = inquiry::read_answer(product, status, &body);
                exchange.http_status = Some(status);
                exchange.response_body = body;
            }
            Err(e) => {
                let what = if e.is_timeout() { "no answer in time" } else { "no answer" };
                exchange.answer = Answer::RetryLater { reason: format!("{what}: {}", without_url(&e)) };
            }
        }
        exchange
    }
}

/// A reqwest error's text without its URL (which names the account).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "…");
    }
    s
}
