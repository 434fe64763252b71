//! A local stand-in for Singapay's REST API, for development and tests (as stripe-mock is
//! for Stripe). It behaves as Singapay documents its API (see the project's INQUIRY notes):
//! access tokens (v1.1 signed with the Asia/Jakarta date, v1.0 with HTTP Basic), one or more
//! credentials each owning sub-accounts, records read by id, partial-match lists of 25 rows
//! newest first, and answers that tests and developers script over HTTP.
//!
//! # Singapay's endpoints
//! - Tokens: `POST /api/v1.1/access-token/b2b` (`X-PARTNER-ID`, `X-CLIENT-ID`, `X-Signature`,
//!   JSON `{"grant_type":"client_credentials"}`) and `POST /api/v1.0/access-token/b2b`
//!   (`Authorization: Basic base64(id:secret)`, `X-PARTNER-ID`, the same body as JSON or
//!   form-encoded). Any configured credential may ask; its token is bound to it and lives
//!   `token_ttl_secs` here whatever the answer says.
//! - Every other call needs `Authorization: Bearer <live token>` and the token's credential's
//!   `X-PARTNER-ID` (else HTTP 401 `SP013`); asking about an `{account}` the token's credential
//!   does not own answers HTTP 403 `SP403` "Access denied to this account.".
//! - Money-out, `POST` with `{"reference_number"}`: `/api/v2.0/disbursement/{account}/inquiry-status`,
//!   `/api/v2.0/ewallet/{account}/inquiry-status`, `/api/v2.0/qris/status/{account}`.
//!   Answers `00`…`07` give `data.transaction_status {code, desc}`; `06` is Singapay's failed
//!   transfer: HTTP 400 `SP001` "Failed". Unknown reference: HTTP 404 `SP009`.
//! - Money-in, `GET`, v1 envelope: `/api/v1.0/va-transactions/{account}/{transaction_id}`,
//!   `/api/v1.0/ewallet-native/{account}/inquiry-status/{id}`,
//!   `/api/v1.0/qris-dynamic/{account}/show/{id}`, `/api/v1.0/payment-link-histories/{account}/{id}`
//!   (unknown: HTTP 404 `{"status":404,"success":false,"error":{"code":404,"message":"Data not found"}}`),
//!   and the lists `/api/v1.0/qris-dynamic/{account}?reff_no=X&page=N` and
//!   `/api/v1.0/payment-link-histories/{account}?reff_no=X&page=N`: `reff_no` contains X,
//!   `id` descending, 25 a page, `pagination {current_page, per_page, total, last_page}`;
//!   no match is `{"status":200,"success":true,"data":[]}`.
//! - Direct debit, `GET`, v2 envelope, no account: `/api/v2.0/direct-debit/binding/{binding_id}`
//!   and `/api/v2.0/direct-debit/transactions/{transaction_id}` (unknown: HTTP 404 `SP009`).
//!
//! # Who may ask
//! - Every answer, whatever it is, carries `X-Singapay-Sandbox: 1` ([`MARK_HEADER`]): the
//!   receiver refuses answers so marked unless `SINGAPAY_API_ALLOW_INSECURE=1`.
//! - A request whose `Host` (or HTTP/2 authority) is not a loopback name or address
//!   (`localhost`, `127.0.0.0/8`, `[::1]`, any port) nor exactly the address the sandbox is
//!   bound to ([`router_at`]) is answered `421 Misdirected Request` (DNS rebinding).
//! - Every `/_sandbox/*` route needs the header `X-Sandbox-Token` ([`TOKEN_HEADER`]) equal to
//!   [`SandboxConfig::control_token`] (else `401`): a cross-site form or page cannot set it.
//!   An empty configured token refuses every control call.
//! - The request log keeps the last [`MAX_LOGGED`] requests; issued tokens are pruned when
//!   expired and at most [`MAX_TOKENS`] live at once (the oldest dropped first).
//!
//! # Control endpoints (JSON, with `X-Sandbox-Token`)
//! - `POST /_sandbox/transactions` `{"id": "REF-1", "answers": ["03", "00"], "product": "qris",
//!   "reff_no": "INV-1", "record_id": 1234, "account": "ACC-1"}` → `201 {"id", "record_id"}`.
//!   Only `id` and `answers` are required. `id` is what a read names: the `reference_number`
//!   of a money-out inquiry, a VA's `transaction_id`, a binding or charge id; QRIS, payment
//!   link and e-wallet reads name the `record_id` (the `id` is accepted too). `product` is one
//!   of `va`, `qris`, `payment_link`, `ewallet`, `disbursement`, `ewallet_topup`,
//!   `qris_issuer`, `direct_debit` (bindings), `direct_debit_charge`; without it the record
//!   answers on every endpoint. `reff_no` defaults to `id`; `record_id` (positive) to `id`
//!   when that is a number no other record has, else to the next of a sequence starting at 1000 and always above every record id so far; without
//!   `account` the record exists on every account. Posting the same `id` and `product` again
//!   replaces the script (and keeps the `record_id` unless one is given). A money-out record
//!   may give `transaction_id` (Singapay's id, the receiver's key): its answers carry it,
//!   and a receiver compares it; without it, money-out answers leave it out.
//!   Each read of a record (by id, money-out, direct debit) takes the next answer, the last one
//!   repeating; lists take none and show each record as of its latest answer taken (the first
//!   before any read; a fault shows as `open` for QRIS, `pending` otherwise). An answer is:
//!   - a money-out code (`00`…`07`), a money-in status (`paid`, `unpaid`, `open`, `expired`…)
//!     or a binding/charge status (`ACTIVE`, `SUCCESS`…), answered as given;
//!   - a fault: `SP002`, `SP005`, `SP009`, `SP013`, `SP017` (v2 bodies), `401`, `403`, `500`
//!     (bare), `hang` (no answer for a minute); `slow:<answer>` answers after 300 ms;
//!   - an object with `status` (`{"status":"open","status_computed":"expired","is_expired":true}`):
//!     its fields appear in the record's data as given;
//!   - a raw answer `{"http_status": 400, "body": <JSON>}` or `{"http_status": 200,
//!     "body_text": "…"}` (optional `content_type`), served verbatim.
//! - `POST /_sandbox/credentials` `{"client_id", "client_secret", "partner_id", "accounts": ["ACC-2"]}`
//!   → `201`: one more credential (or one replaced, by `client_id`) owning those accounts. The
//!   primary credential (the configuration's) owns its `accounts`, or, when that is empty,
//!   every account no other credential owns.
//! - `POST /_sandbox/revoke` → `204`: forgets every token issued (the next inquiry gets 401).
//! - `POST /_sandbox/token-fault` `{"answer": "403"}` → `204`: the token endpoints answer that
//!   until set to `null`: `401` (v1 error), `403` (bare "Your IP address (127.0.0.1) is not
//!   registered"), `500`, `SP017-401` / `SP017-403` (`SP017` "Unauthorized IP" at 401 / 403).
//! - `POST /_sandbox/token-answer` `{"flat": true, "expires_in": 900}` → `204`: tokens are then
//!   answered without the `{status, success, data}` envelope when `flat`, with `expires_in`
//!   written as given (any JSON value), or left out when the key is absent. `{"reset": true}`
//!   goes back to `{"status":200,"success":true,"data":{…,"expires_in":"<ttl>"}}`.
//! - `GET /_sandbox/requests`: the requests so far, in order, the last [`MAX_LOGGED`] of
//!   them (`kind` is `token` or `inquiry`, `path` the path asked, the `id` asked about (a
//!   list's `reff_no`), what was answered (a list: `list:N rows`), when (`at_ms`), and how many
//!   other reads of the same id were still unanswered when it came (`concurrent`)); the header
//!   `X-Sandbox-Dropped` ([`DROPPED_HEADER`]) says how many older ones were dropped.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::singapay::inquiry;

/// The older token endpoint (HTTP Basic).
pub const TOKEN_PATH_V1_0: &str = "/api/v1.0/access-token/b2b";
/// Rows in a page of a list, as Singapay's.
pub const PER_PAGE: usize = 25;
const FIRST_RECORD_ID: u64 = 1000;
/// The header on every answer of the sandbox (value `1`).
pub const MARK_HEADER: &str = "x-singapay-sandbox";
/// The header control calls (`/_sandbox/*`) carry the control token in.
pub const TOKEN_HEADER: &str = "x-sandbox-token";
/// The header of `GET /_sandbox/requests` saying how many older requests were dropped.
pub const DROPPED_HEADER: &str = "x-sandbox-dropped";
/// The request log keeps at most this many (the latest).
pub const MAX_LOGGED: usize = 10_000;
/// At most this many issued tokens live at once; the oldest is dropped first.
pub const MAX_TOKENS: usize = 10_000;

/// Who may ask, and when it is.
pub struct SandboxConfig {
    pub client_id: String,
    pub client_secret: String,
    pub partner_id: String,
    /// How long issued tokens live.
    pub token_ttl_secs: u64,
    /// The sandbox's idea of now (tests set it; the signature's date is checked against it).
    pub clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    /// The accounts this (primary) credential owns; empty: every account no other
    /// credential owns.
    pub accounts: Vec<String>,
    /// What control calls (`/_sandbox/*`) must send as `X-Sandbox-Token`; empty: every
    /// control call is refused.
    pub control_token: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Credential {
    client_id: String,
    client_secret: String,
    partner_id: String,
    #[serde(default)]
    accounts: Vec<String>,
}

/// What a record is, and so which endpoints serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Va,
    Qris,
    PaymentLink,
    Ewallet,
    Disbursement,
    EwalletTopup,
    QrisIssuer,
    DirectDebit,
    DirectDebitCharge,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Va,
        Kind::Qris,
        Kind::PaymentLink,
        Kind::Ewallet,
        Kind::Disbursement,
        Kind::EwalletTopup,
        Kind::QrisIssuer,
        Kind::DirectDebit,
        Kind::DirectDebitCharge,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Va => "va",
            Kind::Qris => "qris",
            Kind::PaymentLink => "payment_link",
            Kind::Ewallet => "ewallet",
            Kind::Disbursement => "disbursement",
            Kind::EwalletTopup => "ewallet_topup",
            Kind::QrisIssuer => "qris_issuer",
            Kind::DirectDebit => "direct_debit",
            Kind::DirectDebitCharge => "direct_debit_charge",
        }
    }

    /// What a list shows for a record whose latest answer is a fault.
    fn quiet_status(self) -> &'static str {
        if self == Kind::Qris {
            "open"
        } else {
            "pending"
        }
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
enum Answer {
    /// A status, a fault, `hang` or `slow:<answer>`.
    Word(String),
    /// A status (`status`) and fields shown as given.
    Fields(Map<String, Value>),
    /// Served verbatim.
    Raw { status: StatusCode, content_type: String, body: Vec<u8> },
}

impl Answer {
    fn parse(v: &Value) -> Result<Answer, String> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(Answer::Word(s.clone())),
            Value::Object(m) if m.contains_key("http_status") => {
                let status = m
                    .get("http_status")
                    .and_then(Value::as_u64)
                    .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
                    .ok_or("http_status must be an HTTP status code")?;
                let given_type = m.get("content_type").and_then(Value::as_str).map(str::to_owned);
                let (body, default_type) = match (m.get("body"), m.get("body_text").and_then(Value::as_str)) {
                    (Some(body), None) => (body.to_string().into_bytes(), "application/json"),
                    (None, Some(text)) if serde_json::from_str::<Value>(text).is_ok() => {
                        (text.as_bytes().to_vec(), "application/json")
                    }
                    (None, Some(text)) => (text.as_bytes().to_vec(), "text/plain; charset=utf-8"),
                    _ => return Err("a raw answer has either body (JSON) or body_text (a string)".into()),
                };
                Ok(Answer::Raw { status, content_type: given_type.unwrap_or_else(|| default_type.into()), body })
            }
            Value::Object(m) if m.get("status").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) => {
                Ok(Answer::Fields(m.clone()))
            }
            _ => Err(format!("an answer is a string, an object with status, or one with http_status: {v}")),
        }
    }

    /// What the log says was answered.
    fn label(&self) -> String {
        match self {
            Answer::Word(w) => w.clone(),
            Answer::Fields(m) => m.get("status").and_then(Value::as_str).unwrap_or_default().to_owned(),
            Answer::Raw { status, .. } => format!("raw:{}", status.as_u16()),
        }
    }

    /// The status a list shows for a record whose latest answer this is.
    fn shown(&self, kind: Kind) -> (String, Map<String, Value>) {
        match self {
            Answer::Word(w) => {
                let w = w.strip_prefix("slow:").unwrap_or(w);
                let status = if is_fault(w) { kind.quiet_status() } else { w };
                (status.to_owned(), Map::new())
            }
            Answer::Fields(m) => (self.label(), m.clone()),
            Answer::Raw { .. } => (kind.quiet_status().to_owned(), Map::new()),
        }
    }
}

struct Record {
    id: String,
    product: Option<Kind>,
    reff_no: String,
    /// Singapay's id of a money-out transaction (the receiver's key), when scripted:
    /// money-out answers carry it.
    transaction_id: Option<String>,
    record_id: u64,
    account: Option<String>,
    answers: Vec<Answer>,
    asked: usize,
}

impl Record {
    fn serves(&self, kind: Kind, account: Option<&str>) -> bool {
        let on_account = match (&self.account, account) {
            (Some(mine), Some(asked)) => mine == asked,
            _ => true,
        };
        on_account && self.product.is_none_or(|p| p == kind)
    }

    /// The latest answer taken (the first before any read).
    fn latest(&self) -> &Answer {
        &self.answers[self.asked.clamp(1, self.answers.len()) - 1]
    }

    fn take(&mut self) -> Answer {
        let answer = self.answers[self.asked.min(self.answers.len() - 1)].clone();
        self.asked += 1;
        answer
    }
}

/// What a read found: the record as it was, and the answer it took.
struct Read {
    id: String,
    reff_no: String,
    transaction_id: Option<String>,
    record_id: u64,
    answer: Answer,
}

#[derive(Clone)]
struct TokenShape {
    flat: bool,
    expires_in: Option<Value>,
}

struct Inner {
    /// The primary credential first.
    credentials: Vec<Credential>,
    /// Live tokens: until when, and whose (an index in `credentials`).
    tokens: HashMap<String, (DateTime<Utc>, usize)>,
    /// The tokens in the order they were issued (some may be gone from `tokens`).
    issued: VecDeque<String>,
    records: Vec<Record>,
    next_record_id: u64,
    token_fault: Option<String>,
    token_shape: Option<TokenShape>,
    /// The latest [`MAX_LOGGED`] requests.
    requests: VecDeque<Logged>,
    /// How many older requests were dropped from `requests`.
    dropped: u64,
    /// Reads being answered now, by the id they ask about.
    in_flight: HashMap<String, u32>,
}

/// One request the sandbox received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Logged {
    pub kind: String,
    pub path: String,
    pub id: Option<String>,
    pub answered: String,
    /// When it arrived (milliseconds since the Unix epoch, wall-clock time).
    #[serde(default)]
    pub at_ms: i64,
    /// Other inquiries about the same id still unanswered when it arrived.
    #[serde(default)]
    pub concurrent: u32,
}

pub struct Sandbox {
    config: SandboxConfig,
    state: Mutex<Inner>,
}

type Shared = Arc<Sandbox>;

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Shared {
        let primary = Credential {
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            partner_id: config.partner_id.clone(),
            accounts: config.accounts.clone(),
        };
        let inner = Inner {
            credentials: vec![primary],
            tokens: HashMap::new(),
            issued: VecDeque::new(),
            records: Vec::new(),
            next_record_id: FIRST_RECORD_ID,
            token_fault: None,
            token_shape: None,
            requests: VecDeque::new(),
            dropped: 0,
            in_flight: HashMap::new(),
        };
        Arc::new(Sandbox { config, state: Mutex::new(inner) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, kind: &str, path: &str, id: Option<String>, answered: &str) {
        self.log_concurrent(kind, path, id, answered, 0);
    }

    fn log_concurrent(&self, kind: &str, path: &str, id: Option<String>, answered: &str, concurrent: u32) {
        let at_ms = Utc::now().timestamp_millis();
        let entry = Logged { kind: kind.into(), path: path.into(), id, answered: answered.into(), at_ms, concurrent };
        let mut state = self.state();
        if state.requests.len() >= MAX_LOGGED {
            state.requests.pop_front();
            state.dropped += 1;
        }
        state.requests.push_back(entry);
    }

    /// How many issued tokens are kept now (expired ones not yet pruned included).
    pub fn live_tokens(&self) -> usize {
        self.state().tokens.len()
    }

    /// Counts a read of `id` as in flight until the guard is dropped (answered, or the asker
    /// gave up); returns how many others were.
    fn arrive(&self, id: &str) -> (InFlight<'_>, u32) {
        let mut state = self.state();
        let n = state.in_flight.entry(id.to_owned()).or_default();
        *n += 1;
        let others = *n - 1;
        (InFlight { sandbox: self, id: id.to_owned() }, others)
    }

    /// Takes the next answer of the record `asked` names on `account`: its `record_id`
    /// first when `by_number`, else (or then) its `id`.
    fn read(&self, kind: Kind, account: Option<&str>, asked: &str, by_number: bool) -> Option<Read> {
        let mut state = self.state();
        let number = asked.parse::<u64>().ok().filter(|_| by_number);
        let records = &mut state.records;
        let at = records
            .iter()
            .position(|r| r.serves(kind, account) && Some(r.record_id) == number)
            .or_else(|| records.iter().position(|r| r.serves(kind, account) && r.id == asked))?;
        let record = &mut records[at];
        let answer = record.take();
        Some(Read {
            id: record.id.clone(),
            reff_no: record.reff_no.clone(),
            transaction_id: record.transaction_id.clone(),
            record_id: record.record_id,
            answer,
        })
    }
}

struct InFlight<'a> {
    sandbox: &'a Sandbox,
    id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.sandbox.state();
        if let Some(n) = state.in_flight.get_mut(&self.id) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The sandbox's routes, answering requests for a loopback `Host` only.
pub fn router(sandbox: Shared) -> Router {
    routes(sandbox, None)
}

/// The sandbox's routes for a listener bound to `bound`: a `Host` naming exactly that
/// address is answered too (besides loopback names and addresses).
pub fn router_at(sandbox: Shared, bound: SocketAddr) -> Router {
    routes(sandbox, Some(bound))
}

fn routes(sandbox: Shared, bound: Option<SocketAddr>) -> Router {
    let control = Router::new()
        .route("/_sandbox/transactions", post(script))
        .route("/_sandbox/credentials", post(add_credential))
        .route("/_sandbox/revoke", post(revoke))
        .route("/_sandbox/token-fault", post(token_fault))
        .route("/_sandbox/token-answer", post(token_answer))
        .route("/_sandbox/requests", get(requests))
        .route_layer(middleware::from_fn_with_state(sandbox.clone(), require_control_token));
    Router::new()
        .route(inquiry::TOKEN_PATH, post(token_v1_1))
        .route(TOKEN_PATH_V1_0, post(token_v1_0))
        .route("/api/v2.0/disbursement/{account}/inquiry-status", post(asked_by_reference(Kind::Disbursement)))
        .route("/api/v2.0/ewallet/{account}/inquiry-status", post(asked_by_reference(Kind::EwalletTopup)))
        .route("/api/v2.0/qris/status/{account}", post(asked_by_reference(Kind::QrisIssuer)))
        .route("/api/v1.0/va-transactions/{account}/{id}", get(read_on_account(Kind::Va)))
        .route("/api/v1.0/ewallet-native/{account}/inquiry-status/{id}", get(read_on_account(Kind::Ewallet)))
        .route("/api/v1.0/qris-dynamic/{account}", get(qris_list))
        .route("/api/v1.0/qris-dynamic/{account}/show/{id}", get(read_on_account(Kind::Qris)))
        .route("/api/v1.0/payment-link-histories/{account}", get(payment_link_list))
        .route("/api/v1.0/payment-link-histories/{account}/{id}", get(read_on_account(Kind::PaymentLink)))
        .route("/api/v2.0/direct-debit/binding/{id}", get(read_without_account(Kind::DirectDebit)))
        .route("/api/v2.0/direct-debit/transactions/{id}", get(read_without_account(Kind::DirectDebitCharge)))
        .merge(control)
        .fallback(|| async { (StatusCode::NOT_FOUND, "sandbox: no such route") })
        .with_state(sandbox)
        .layer(middleware::from_fn(move |request: Request, next: Next| require_local_host(bound, request, next)))
        .layer(middleware::from_fn(mark))
}

/// Every answer says it is the sandbox's.
async fn mark(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(MARK_HEADER, HeaderValue::from_static("1"));
    response
}

/// Whether `host` (a `Host` header or an authority) names this machine by a loopback name or
/// address, or is exactly `bound`.
fn is_local_host(host: &str, bound: Option<SocketAddr>) -> bool {
    if bound.is_some_and(|b| host == b.to_string()) {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, port)) if port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok()) => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            None => host,
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a request whose `Host` is not this machine's (a DNS-rebinding page's).
async fn require_local_host(bound: Option<SocketAddr>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    if host.is_some_and(|h| is_local_host(&h, bound)) {
        return next.run(request).await;
    }
    let why = "sandbox: only Host localhost, 127.0.0.0/8, [::1] or the address it is bound to is answered";
    (StatusCode::MISDIRECTED_REQUEST, why).into_response()
}

/// Equal, in time that does not depend on where they differ.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Control calls need `X-Sandbox-Token`: no cross-site form or page can script the sandbox.
async fn require_control_token(State(sb): State<Shared>, request: Request, next: Next) -> Response {
    let expected = sb.config.control_token.as_bytes();
    let given = request.headers().get(TOKEN_HEADER).map(HeaderValue::as_bytes);
    if !expected.is_empty() && given.is_some_and(|g| same_token(g, expected)) {
        return next.run(request).await;
    }
    let why = "sandbox: /_sandbox/* needs the header X-Sandbox-Token with the control token `sandbox` printed at start";
    (StatusCode::UNAUTHORIZED, why).into_response()
}

fn v1_error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "status": status.as_u16(), "success": false, "error": { "code": status.as_u16(), "message": message } });
    (status, Json(body)).into_response()
}

fn v2(status: StatusCode, code: &str, message: &str, data: Value) -> Response {
    (status, Json(json!({ "response_code": code, "response_message": message, "data": data }))).into_response()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// The token endpoints' fault, if one is set (logged).
fn token_fault_response(sb: &Sandbox, path: &str) -> Option<Response> {
    let fault = sb.state().token_fault.clone()?;
    sb.log("token", path, None, &fault);
    Some(match fault.as_str() {
        "403" => (StatusCode::FORBIDDEN, "Your IP address (127.0.0.1) is not registered").into_response(),
        "401" => v1_error(StatusCode::UNAUTHORIZED, "Invalid credentials"),
        "SP017-401" => v2(StatusCode::UNAUTHORIZED, "SP017", "Unauthorized IP", Value::Null),
        "SP017-403" => v2(StatusCode::FORBIDDEN, "SP017", "Unauthorized IP", Value::Null),
        _ => v1_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    })
}

/// Issues a token to credential `who`, or refuses for `why`.
fn issue(sb: &Sandbox, path: &str, who: Result<usize, &str>) -> Response {
    let who = match who {
        Ok(who) => who,
        Err(why) => {
            sb.log("token", path, None, "401");
            return v1_error(StatusCode::UNAUTHORIZED, &format!("Invalid credentials: {why}"));
        }
    };
    let token: String = {
        let mut rng = rand::thread_rng();
        (0..40).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)])).collect()
    };
    let ttl = sb.config.token_ttl_secs;
    let now = (sb.config.clock)();
    let expires = now + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 1000));
    let shape = {
        let mut state = sb.state();
        let state = &mut *state;
        // Expired tokens go (the oldest first), then the oldest beyond the cap.
        while let Some(oldest) = state.issued.front() {
            if state.tokens.get(oldest).is_some_and(|(until, _)| *until > now) && state.tokens.len() < MAX_TOKENS {
                break;
            }
            if let Some(oldest) = state.issued.pop_front() {
                state.tokens.remove(&oldest);
            }
        }
        state.tokens.insert(token.clone(), (expires, who));
        state.issued.push_back(token.clone());
        state.token_shape.clone()
    };
    sb.log("token", path, None, "200");
    let shape = shape.unwrap_or(TokenShape { flat: false, expires_in: Some(json!(ttl.to_string())) });
    let mut data = json!({ "access_token": token, "token_type": "Bearer" });
    if let Some(expires_in) = shape.expires_in {
        data["expires_in"] = expires_in;
    }
    let body = if shape.flat { data } else { json!({ "status": 200, "success": true, "data": data }) };
    Json(body).into_response()
}

fn grant_is_client_credentials(body: &[u8], form_too: bool) -> bool {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v.get("grant_type") == Some(&json!("client_credentials"));
    }
    form_too
        && std::str::from_utf8(body)
            .is_ok_and(|b| b.trim().split('&').any(|pair| pair == "grant_type=client_credentials"))
}

async fn token_v1_1(State(sb): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = token_fault_response(&sb, inquiry::TOKEN_PATH) {
        return r;
    }
    let now = (sb.config.clock)();
    let who = {
        let state = sb.state();
        match state.credentials.iter().position(|c| c.client_id == header(&headers, "x-client-id")) {
            None => Err("unknown X-CLIENT-ID"),
            Some(i) => {
                let c = &state.credentials[i];
                if header(&headers, "x-partner-id") != c.partner_id {
                    Err("unknown X-PARTNER-ID")
                } else if header(&headers, "x-signature")
                    != inquiry::token_signature(&c.client_id, &c.client_secret, now)
                {
                    Err("X-Signature does not match (signed with the Asia/Jakarta date?)")
                } else if !grant_is_client_credentials(&body, false) {
                    Err("grant_type must be client_credentials")
                } else {
                    Ok(i)
                }
            }
        }
    };
    issue(&sb, inquiry::TOKEN_PATH, who)
}

async fn token_v1_0(State(sb): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = token_fault_response(&sb, TOKEN_PATH_V1_0) {
        return r;
    }
    let basic = header(&headers, "authorization")
        .strip_prefix("Basic ")
        .and_then(|b| base64_decode(b.trim()))
        .and_then(|b| String::from_utf8(b).ok());
    let who = {
        let state = sb.state();
        let found = basic.as_deref().and_then(|b| b.split_once(':')).and_then(|(id, secret)| {
            state.credentials.iter().position(|c| c.client_id == id && c.client_secret == secret)
        });
        match found {
            None => Err("Authorization: Basic base64(client_id:client_secret) does not match"),
            Some(i) if header(&headers, "x-partner-id") != state.credentials[i].partner_id => {
                Err("unknown X-PARTNER-ID")
            }
            Some(_) if !grant_is_client_credentials(&body, true) => Err("grant_type must be client_credentials"),
            Some(i) => Ok(i),
        }
    };
    issue(&sb, TOKEN_PATH_V1_0, who)
}

/// Standard base64 (padding optional); `None` if `s` is not base64.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine;
    STANDARD.decode(s).or_else(|_| STANDARD_NO_PAD.decode(s)).ok()
}

/// Why an inquiry is refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// No live token, or not with its credential's partner id: HTTP 401 `SP013`.
    Token,
    /// The account is not the token's credential's: HTTP 403 `SP403`.
    Account,
}

impl Refusal {
    /// The answer, and what the log says.
    fn answer(self) -> (Response, &'static str) {
        match self {
            Refusal::Token => (v2(StatusCode::UNAUTHORIZED, "SP013", "Unauthorized", Value::Null), "401"),
            Refusal::Account => {
                (v2(StatusCode::FORBIDDEN, "SP403", "Access denied to this account.", Value::Null), "SP403")
            }
        }
    }
}

/// Checks the bearer token, the partner id, and that the token's credential owns `account`.
fn authorize(sb: &Sandbox, headers: &HeaderMap, account: Option<&str>) -> Result<(), Refusal> {
    let bearer = header(headers, "authorization").strip_prefix("Bearer ").unwrap_or_default();
    let now = (sb.config.clock)();
    let state = sb.state();
    let who = state
        .tokens
        .get(bearer)
        .filter(|(expires, who)| {
            *expires > now && header(headers, "x-partner-id") == state.credentials[*who].partner_id
        })
        .map(|(_, who)| *who)
        .ok_or(Refusal::Token)?;
    if let Some(account) = account {
        let credentials = &state.credentials;
        let owner = credentials
            .iter()
            .rposition(|c| c.accounts.iter().any(|a| a == account))
            .or_else(|| credentials[0].accounts.is_empty().then_some(0));
        if owner != Some(who) {
            return Err(Refusal::Account);
        }
    }
    Ok(())
}

/// `slow:<answer>` answers `<answer>` after 300 ms (an exchange that is still in flight
/// when another could start).
async fn slowly(answer: String) -> String {
    match answer.strip_prefix("slow:") {
        Some(rest) => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            rest.to_owned()
        }
        None => answer,
    }
}

fn is_fault(answer: &str) -> bool {
    matches!(answer, "hang" | "SP002" | "SP005" | "SP009" | "SP013" | "SP017" | "401" | "403" | "500")
}

/// A fault's response, or `None` when `answer` is a status.
async fn fault(answer: &str) -> Option<Response> {
    let v2 = |status, code, message| v2(status, code, message, Value::Null);
    Some(match answer {
        "hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            v2(StatusCode::GATEWAY_TIMEOUT, "SP005", "Timeout")
        }
        "SP002" => v2(StatusCode::INTERNAL_SERVER_ERROR, "SP002", "General Failure"),
        "SP005" => v2(StatusCode::BAD_REQUEST, "SP005", "Timeout"),
        "SP009" => v2(StatusCode::NOT_FOUND, "SP009", "Transaction Not Found"),
        "SP013" => v2(StatusCode::UNAUTHORIZED, "SP013", "Unauthorized"),
        "SP017" => v2(StatusCode::FORBIDDEN, "SP017", "Unauthorized IP"),
        "401" => StatusCode::UNAUTHORIZED.into_response(),
        "403" => (StatusCode::FORBIDDEN, "Forbidden").into_response(),
        "500" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => return None,
    })
}

/// Serves a taken answer: a fault or raw answer as it is, a status through `render` (with
/// the fields an object answer gives).
async fn respond(answer: Answer, render: impl FnOnce(&str, &Map<String, Value>) -> Response) -> Response {
    match answer {
        Answer::Word(word) => {
            let word = slowly(word).await;
            match fault(&word).await {
                Some(r) => r,
                None => render(&word, &Map::new()),
            }
        }
        Answer::Fields(fields) => {
            let status = fields.get("status").and_then(Value::as_str).unwrap_or_default().to_owned();
            render(&status, &fields)
        }
        Answer::Raw { status, content_type, body } => {
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
    }
}

fn merge(data: &mut Value, fields: &Map<String, Value>, except: &[&str]) {
    if let Value::Object(data) = data {
        for (k, v) in fields.iter().filter(|(k, _)| !except.contains(&k.as_str())) {
            data.insert(k.clone(), v.clone());
        }
    }
}

/// A QRIS, payment-link or e-wallet record as Singapay shows it.
/// A QRIS, payment-link or e-wallet record as Singapay's docs show it: QRIS amounts are
/// numbers, payment-link amounts strings, e-wallet checkouts carry none here.
fn row(kind: Kind, record_id: u64, reff_no: &str, status: &str, fields: &Map<String, Value>) -> Value {
    let is_expired = fields.get("is_expired").cloned().unwrap_or(Value::Bool(status == "expired"));
    let computed = if is_expired == Value::Bool(true) { "expired" } else { status };
    let mut row = json!({
        "id": record_id,
        "reff_no": reff_no,
        "status": status,
        "status_computed": computed,
        "is_expired": is_expired,
    });
    match kind {
        Kind::Qris => row["amount"] = json!(10000),
        Kind::PaymentLink => row["amount"] = json!("10000.00"),
        _ => {}
    }
    merge(&mut row, fields, &[]);
    row
}

fn v1_ok(data: Value) -> Response {
    Json(json!({ "status": 200, "success": true, "data": data })).into_response()
}

async fn money_out(sb: Shared, kind: Kind, account: String, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path();
    if let Err(refusal) = authorize(&sb, &headers, Some(&account)) {
        let (r, answered) = refusal.answer();
        sb.log("inquiry", path, None, answered);
        return r;
    }
    let reference = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("reference_number").and_then(Value::as_str).map(str::to_owned));
    let Some(reference) = reference else {
        let errors = json!({ "errors": { "reference_number": ["required"] } });
        return v2(StatusCode::UNPROCESSABLE_ENTITY, "SP018", "Validation Error", errors);
    };
    let (_in_flight, others) = sb.arrive(&reference);
    let Some(read) = sb.read(kind, Some(&account), &reference, false) else {
        sb.log_concurrent("inquiry", path, Some(reference), "SP009", others);
        return v2(StatusCode::NOT_FOUND, "SP009", "Transaction Not Found", Value::Null);
    };
    sb.log_concurrent("inquiry", path, Some(reference.clone()), &read.answer.label(), others);
    let now = (sb.config.clock)();
    let transaction_id = read.transaction_id.clone();
    respond(read.answer, |code, fields| {
        let desc = match code {
            "00" => "Success",
            "01" => "Initiated",
            "02" => "Paying",
            "03" => "Pending",
            "04" => "Refunded",
            "05" => "Canceled",
            "06" => "Failed",
            "07" => "Not Found",
            _ => "Unknown",
        };
        let processed = if code == "00" { now.timestamp_millis().to_string() } else { String::new() };
        let mut data = json!({
            "reference_number": reference,
            "transaction_status": { "code": code, "desc": desc },
            "processed_timestamp": processed,
        });
        if let Some(t) = &transaction_id {
            data["transaction_id"] = json!(t);
        }
        let (status, response_code, message) = if code == "06" {
            data["failed_reason"] = json!("Transfer rejected by the beneficiary bank");
            data["failed_code"] = json!("BANK_REJECTED");
            (StatusCode::BAD_REQUEST, "SP001", "Failed")
        } else {
            (StatusCode::OK, "SP000", "Success")
        };
        merge(&mut data, fields, &["status"]);
        v2(status, response_code, message, data)
    })
    .await
}

/// A handler's answer, on its way.
type Answering = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

/// The handler of a money-out inquiry of `kind` (`POST …/{account}…`, the reference in the
/// body).
fn asked_by_reference(
    kind: Kind,
) -> impl Fn(State<Shared>, Path<String>, Uri, HeaderMap, Bytes) -> Answering + Clone + Send + Sync + 'static {
    move |State(sb), Path(account), uri, headers, body| Box::pin(money_out(sb, kind, account, uri, headers, body))
}

/// The handler of a by-id read of `kind` on an account (`GET …/{account}/…/{id}`).
fn read_on_account(
    kind: Kind,
) -> impl Fn(State<Shared>, Path<(String, String)>, Uri, HeaderMap) -> Answering + Clone + Send + Sync + 'static {
    move |State(sb), Path((account, id)), uri, headers| Box::pin(read_by_id(sb, kind, Some(account), id, uri, headers))
}

/// The handler of a by-id read of `kind` without an account (direct debit).
fn read_without_account(
    kind: Kind,
) -> impl Fn(State<Shared>, Path<String>, Uri, HeaderMap) -> Answering + Clone + Send + Sync + 'static {
    move |State(sb), Path(id), uri, headers| Box::pin(read_by_id(sb, kind, None, id, uri, headers))
}

/// A by-id read: money-in (with an account, v1) or direct debit (without, v2).
async fn read_by_id(
    sb: Shared,
    kind: Kind,
    account: Option<String>,
    id: String,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    if let Err(refusal) = authorize(&sb, &headers, account.as_deref()) {
        let (r, answered) = refusal.answer();
        sb.log("inquiry", path, None, answered);
        return r;
    }
    let (_in_flight, others) = sb.arrive(&id);
    let by_number = matches!(kind, Kind::Qris | Kind::PaymentLink | Kind::Ewallet);
    let Some(read) = sb.read(kind, account.as_deref(), &id, by_number) else {
        let v2_kind = matches!(kind, Kind::DirectDebit | Kind::DirectDebitCharge);
        sb.log_concurrent("inquiry", path, Some(id), if v2_kind { "SP009" } else { "404" }, others);
        return if v2_kind {
            v2(StatusCode::NOT_FOUND, "SP009", "Transaction Not Found", Value::Null)
        } else {
            v1_error(StatusCode::NOT_FOUND, "Data not found")
        };
    };
    sb.log_concurrent("inquiry", path, Some(id), &read.answer.label(), others);
    let Read { id, reff_no, record_id, answer, .. } = read;
    respond(answer, move |status, fields| match kind {
        Kind::DirectDebit | Kind::DirectDebitCharge => {
            let key = if kind == Kind::DirectDebit { "binding_id" } else { "transaction_id" };
            let mut data = json!({ key: id, "status": status });
            merge(&mut data, fields, &[]);
            v2(StatusCode::OK, "SP000", "Success", data)
        }
        Kind::Va => {
            let mut data = json!({ "transaction_id": id, "merchant_reff_no": reff_no, "status": status });
            merge(&mut data, fields, &[]);
            v1_ok(data)
        }
        _ => v1_ok(row(kind, record_id, &reff_no, status, fields)),
    })
    .await
}

/// A list: records whose `reff_no` contains the filter, newest first, a page of 25; no
/// answer is taken.
async fn list(
    sb: Shared,
    kind: Kind,
    account: String,
    q: HashMap<String, String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    if let Err(refusal) = authorize(&sb, &headers, Some(&account)) {
        let (r, answered) = refusal.answer();
        sb.log("inquiry", path, None, answered);
        return r;
    }
    let filter = q.get("reff_no").cloned();
    let page = q.get("page").and_then(|p| p.trim().parse::<usize>().ok()).unwrap_or(1).max(1);
    let mut rows: Vec<(u64, Value)> = sb
        .state()
        .records
        .iter()
        .filter(|r| r.serves(kind, Some(&account)) && filter.as_ref().is_none_or(|f| r.reff_no.contains(f.as_str())))
        .map(|r| {
            let (status, fields) = r.latest().shown(kind);
            (r.record_id, row(kind, r.record_id, &r.reff_no, &status, &fields))
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let total = rows.len();
    let shown: Vec<Value> =
        rows.into_iter().skip((page - 1).saturating_mul(PER_PAGE)).take(PER_PAGE).map(|r| r.1).collect();
    sb.log("inquiry", path, filter, &format!("list:{} rows", shown.len()));
    if total == 0 {
        return v1_ok(json!([]));
    }
    let pagination = json!({
        "current_page": page,
        "per_page": PER_PAGE,
        "total": total,
        "last_page": total.div_ceil(PER_PAGE),
    });
    Json(json!({ "status": 200, "success": true, "data": shown, "pagination": pagination })).into_response()
}

async fn qris_list(
    State(sb): State<Shared>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    list(sb, Kind::Qris, account, q, uri, headers).await
}

async fn payment_link_list(
    State(sb): State<Shared>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    list(sb, Kind::PaymentLink, account, q, uri, headers).await
}

fn unprocessable(why: impl Into<String>) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, why.into()).into_response()
}

async fn script(State(sb): State<Shared>, Json(body): Json<Value>) -> Response {
    let text = |key: &str| match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a non-empty string")),
    };
    let (id, reff_no, account, product) = match (text("id"), text("reff_no"), text("account"), text("product")) {
        (Ok(Some(id)), Ok(reff_no), Ok(account), Ok(product)) => (id, reff_no, account, product),
        (Ok(None), ..) => return unprocessable("id is required"),
        (Err(why), ..) | (_, Err(why), ..) | (_, _, Err(why), _) | (.., Err(why)) => return unprocessable(why),
    };
    let product = match product {
        None => None,
        Some(p) => match Kind::ALL.into_iter().find(|k| k.name() == p) {
            Some(k) => Some(k),
            None => {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                return unprocessable(format!("unknown product {p}; one of {}", known.join(", ")));
            }
        },
    };
    let transaction_id = match body.get("transaction_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        Some(_) => return unprocessable("transaction_id must be a non-empty string"),
    };
    let record_id = match body.get("record_id") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => return unprocessable("record_id must be a positive integer"),
        },
    };
    let answers = match body.get("answers").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().map(Answer::parse).collect::<Result<Vec<_>, _>>(),
        _ => return unprocessable("answers must be a non-empty list"),
    };
    let answers = match answers {
        Ok(a) => a,
        Err(why) => return unprocessable(why),
    };
    let mut state = sb.state();
    let existing = state.records.iter().position(|r| r.id == id && r.product == product);
    // A numeric `id` is Singapay's own id of the record (a QRIS or e-wallet id a callback
    // gave): it is the record_id too, unless another record has it.
    let numeric_id = id.parse::<u64>().ok().filter(|n| *n > 0 && !state.records.iter().any(|r| r.record_id == *n));
    let record_id = record_id
        .or_else(|| existing.map(|i| state.records[i].record_id))
        .or(numeric_id)
        .unwrap_or(state.next_record_id);
    let taken = state.records.iter().enumerate().any(|(i, r)| r.record_id == record_id && Some(i) != existing);
    if taken {
        return (StatusCode::CONFLICT, format!("record_id {record_id} is another record's")).into_response();
    }
    state.next_record_id = state.next_record_id.max(record_id.saturating_add(1));
    let record = Record {
        reff_no: reff_no.unwrap_or_else(|| id.clone()),
        id,
        product,
        transaction_id,
        record_id,
        account,
        answers,
        asked: 0,
    };
    let answer = json!({ "id": record.id, "record_id": record_id });
    match existing {
        Some(i) => state.records[i] = record,
        None => state.records.push(record),
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn add_credential(State(sb): State<Shared>, Json(credential): Json<Credential>) -> Response {
    if credential.client_id.is_empty() || credential.partner_id.is_empty() {
        return unprocessable("client_id and partner_id must not be empty");
    }
    let mut state = sb.state();
    let answer = json!({ "client_id": credential.client_id });
    match state.credentials.iter().position(|c| c.client_id == credential.client_id) {
        Some(i) => state.credentials[i] = credential,
        None => state.credentials.push(credential),
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn revoke(State(sb): State<Shared>) -> StatusCode {
    let mut state = sb.state();
    state.tokens.clear();
    state.issued.clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct TokenFault {
    answer: Option<String>,
}

async fn token_fault(State(sb): State<Shared>, Json(body): Json<TokenFault>) -> StatusCode {
    sb.state().token_fault = body.answer;
    StatusCode::NO_CONTENT
}

async fn token_answer(State(sb): State<Shared>, Json(body): Json<Map<String, Value>>) -> StatusCode {
    let shape = if body.get("reset") == Some(&Value::Bool(true)) {
        None
    } else {
        let flat = body.get("flat").and_then(Value::as_bool).unwrap_or(false);
        Some(TokenShape { flat, expires_in: body.get("expires_in").cloned() })
    };
    sb.state().token_shape = shape;
    StatusCode::NO_CONTENT
}

async fn requests(State(sb): State<Shared>) -> Response {
    let (logged, dropped) = {
        let state = sb.state();
        (state.requests.iter().cloned().collect::<Vec<_>>(), state.dropped)
    };
    ([(DROPPED_HEADER, dropped.to_string())], Json(logged)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_decoded_with_or_without_padding() {
        assert_eq!(base64_decode("Y2xpZW50LTE6c2VjcmV0LTE=").unwrap(), b"client-1:secret-1");
        assert_eq!(base64_decode("YWI").unwrap(), b"ab");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn only_loopback_hosts_and_the_bound_address_are_local() {
        let bound: SocketAddr = "192.0.2.7:8090".parse().unwrap();
        for host in ["localhost", "LOCALHOST:8090", "127.0.0.1", "127.1.2.3:1", "[::1]", "[::1]:8090"] {
            assert!(is_local_host(host, None), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8090",
            "localhost.evil.example",
            "192.0.2.7:8090",
            "0.0.0.0:8090",
            "::1",
            "[::ffff:127.0.0.1]:80",
            "127.0.0.1:x",
            "[::1]x",
            "",
        ] {
            assert!(!is_local_host(host, None), "{host}");
        }
        assert!(is_local_host("192.0.2.7:8090", Some(bound)));
        assert!(!is_local_host("192.0.2.7:8091", Some(bound)) && !is_local_host("192.0.2.7", Some(bound)));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc") && !same_token(b"ab", b"abc") && !same_token(b"", b"abc"));
    }
}
