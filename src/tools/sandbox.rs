//! A local stand-in for Singapay's REST API, for development and tests (as stripe-mock is
//! for Stripe): it issues access tokens only for a correctly signed v1.1 request (the
//! signature's date is checked against the Asia/Jakarta date), and answers the inquiry
//! endpoints from a script that tests and developers set over HTTP.
//!
//! Control endpoints (JSON):
//! - `POST /_sandbox/transactions` `{"id": "REF-1", "answers": ["03", "00"]}`: what asking
//!   about `id` answers, one entry per ask, the last one repeated. `id` is what the inquiry
//!   names: the `reference_number` of a money-out inquiry, the id or `reff_no` of a money-in
//!   one. An answer is a money-out status code (`00`…`07`), a money-in status (`paid`,
//!   `unpaid`, `expired`…), or a fault: `SP002`, `SP005`, `SP009`, `SP013`, `SP017`, `401`,
//!   `403`, `500`, or `hang` (no answer for a minute); `slow:<answer>` answers after 300 ms.
//! - `POST /_sandbox/revoke`: forgets every token issued (the next inquiry gets 401).
//! - `POST /_sandbox/token-fault` `{"answer": "403"}`: the token endpoint answers that
//!   (`401`, `403`, `500`) until set to `null`.
//! - `GET /_sandbox/requests`: every request so far, in order (`kind` is `token` or
//!   `inquiry`, with the `id` asked about, what was answered, when (`at_ms`), and how many
//!   other inquiries about the same id were still unanswered when it came (`concurrent`)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::singapay::inquiry;
use crate::singapay::status;

/// Who may ask, and when it is.
pub struct SandboxConfig {
    pub client_id: String,
    pub client_secret: String,
    pub partner_id: String,
    /// How long issued tokens live.
    pub token_ttl_secs: u64,
    /// The sandbox's idea of now (tests set it; the signature's date is checked against it).
    pub clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

#[derive(Default)]
struct Script {
    answers: Vec<String>,
    asked: usize,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, DateTime<Utc>>,
    scripts: HashMap<String, Script>,
    token_fault: Option<String>,
    requests: Vec<Logged>,
    /// Inquiries being answered now, by the id they ask about.
    in_flight: HashMap<String, u32>,
}

/// One request the sandbox received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Logged {
    pub kind: String,
    pub path: String,
    pub id: Option<String>,
    pub answered: String,
    /// When it arrived (milliseconds since the Unix epoch, the sandbox's clock).
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
        Arc::new(Sandbox { config, state: Mutex::new(Inner::default()) })
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
        self.state().requests.push(entry);
    }

    /// Counts an inquiry about `id` as in flight until the guard is dropped (answered, or
    /// the asker gave up); returns how many others were.
    fn arrive(&self, id: &str) -> (InFlight<'_>, u32) {
        let mut state = self.state();
        let n = state.in_flight.entry(id.to_owned()).or_default();
        *n += 1;
        let others = *n - 1;
        (InFlight { sandbox: self, id: id.to_owned() }, others)
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

pub fn router(sandbox: Shared) -> Router {
    Router::new()
        .route(inquiry::TOKEN_PATH, post(token))
        .route("/api/v2.0/disbursement/{account}/inquiry-status", post(money_out))
        .route("/api/v2.0/ewallet/{account}/inquiry-status", post(money_out))
        .route("/api/v2.0/qris/status/{account}", post(money_out))
        .route("/api/v1.0/va-transactions/{account}/{id}", get(money_in_by_id))
        .route("/api/v1.0/ewallet-native/{account}/inquiry-status/{id}", get(money_in_by_id))
        .route("/api/v1.0/qris-dynamic/{account}", get(money_in_by_reference))
        .route("/api/v1.0/payment-link-histories/{account}", get(money_in_by_reference))
        .route("/_sandbox/transactions", post(script))
        .route("/_sandbox/revoke", post(revoke))
        .route("/_sandbox/token-fault", post(token_fault))
        .route("/_sandbox/requests", get(requests))
        .with_state(sandbox)
}

fn v1_error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "status": status.as_u16(), "success": false, "error": { "code": status.as_u16(), "message": message } });
    (status, Json(body)).into_response()
}

async fn token(State(sb): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let fault = sb.state().token_fault.clone();
    if let Some(fault) = fault {
        sb.log("token", inquiry::TOKEN_PATH, None, &fault);
        return match fault.as_str() {
            "403" => (StatusCode::FORBIDDEN, "Your IP address (127.0.0.1) is not registered").into_response(),
            "401" => v1_error(StatusCode::UNAUTHORIZED, "Invalid credentials"),
            _ => v1_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        };
    }
    let c = &sb.config;
    let now = (c.clock)();
    let expected = inquiry::token_signature(&c.client_id, &c.client_secret, now);
    let grant = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("grant_type").cloned());
    let refused = if header("x-partner-id") != c.partner_id {
        Some("unknown X-PARTNER-ID")
    } else if header("x-client-id") != c.client_id {
        Some("unknown X-CLIENT-ID")
    } else if header("x-signature") != expected {
        Some("X-Signature does not match (signed with the Asia/Jakarta date?)")
    } else if grant != Some(json!("client_credentials")) {
        Some("grant_type must be client_credentials")
    } else {
        None
    };
    if let Some(why) = refused {
        sb.log("token", inquiry::TOKEN_PATH, None, "401");
        return v1_error(StatusCode::UNAUTHORIZED, &format!("Invalid credentials: {why}"));
    }
    let token: String = {
        let mut rng = rand::thread_rng();
        (0..40).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)])).collect()
    };
    let expires = now + chrono::Duration::seconds(c.token_ttl_secs as i64);
    sb.state().tokens.insert(token.clone(), expires);
    sb.log("token", inquiry::TOKEN_PATH, None, "200");
    let data = json!({ "access_token": token, "token_type": "Bearer", "expires_in": c.token_ttl_secs.to_string() });
    Json(json!({ "status": 200, "success": true, "data": data })).into_response()
}

/// Checks the bearer token and partner id; `Some(response)` refuses the request.
fn refuse(sb: &Sandbox, headers: &HeaderMap) -> Option<Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let partner = headers.get("x-partner-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let now = (sb.config.clock)();
    let live = sb.state().tokens.get(bearer).is_some_and(|expires| *expires > now);
    if !live || partner != sb.config.partner_id {
        let body = json!({ "response_code": "SP013", "response_message": "Unauthorized", "data": null });
        return Some((StatusCode::UNAUTHORIZED, Json(body)).into_response());
    }
    None
}

/// The next scripted answer for `id` (the last one repeats); `None` when nothing is scripted.
fn next_answer(sb: &Sandbox, id: &str) -> Option<String> {
    let mut state = sb.state();
    let script = state.scripts.get_mut(id)?;
    let answer = script.answers.get(script.asked.min(script.answers.len().saturating_sub(1))).cloned();
    script.asked += 1;
    answer
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

/// A fault's response, or `None` when `answer` is a status.
async fn fault(answer: &str) -> Option<Response> {
    let v2 = |status: StatusCode, code: &str, message: &str| {
        (status, Json(json!({ "response_code": code, "response_message": message, "data": null }))).into_response()
    };
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

async fn money_out(
    State(sb): State<Shared>,
    Path(_account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = "money-out inquiry";
    if let Some(r) = refuse(&sb, &headers) {
        sb.log("inquiry", path, None, "401");
        return r;
    }
    let reference = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("reference_number").and_then(Value::as_str).map(str::to_owned));
    let Some(reference) = reference else {
        let body = json!({ "response_code": "SP018", "response_message": "Validation Error", "data": { "errors": { "reference_number": ["required"] } } });
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    };
    let (_in_flight, others) = sb.arrive(&reference);
    let answer = next_answer(&sb, &reference).unwrap_or_else(|| "SP009".into());
    sb.log_concurrent("inquiry", path, Some(reference.clone()), &answer, others);
    let answer = slowly(answer).await;
    if let Some(r) = fault(&answer).await {
        return r;
    }
    let desc = status::status_from_code(&answer).unwrap_or("unknown");
    let data = json!({
        "reference_number": reference,
        "transaction_id": format!("SB{reference}"),
        "transaction_status": { "code": answer, "desc": desc },
        "processed_timestamp": if answer == "00" { Utc::now().timestamp_millis().to_string() } else { String::new() },
    });
    Json(json!({ "response_code": "SP000", "response_message": "Successfully", "data": data })).into_response()
}

async fn money_in(sb: &Sandbox, id: String, headers: &HeaderMap, by_reference: bool) -> Response {
    let path = "money-in inquiry";
    if let Some(r) = refuse(sb, headers) {
        sb.log("inquiry", path, None, "401");
        return r;
    }
    let (_in_flight, others) = sb.arrive(&id);
    let answer = next_answer(sb, &id).unwrap_or_else(|| "SP009".into());
    sb.log_concurrent("inquiry", path, Some(id.clone()), &answer, others);
    let answer = slowly(answer).await;
    if let Some(r) = fault(&answer).await {
        return r;
    }
    let item = json!({ "id": id, "reff_no": id, "status": answer });
    let data = if by_reference { json!([item]) } else { item };
    Json(json!({ "status": 200, "success": true, "data": data })).into_response()
}

async fn money_in_by_id(
    State(sb): State<Shared>,
    Path((_account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    money_in(&sb, id, &headers, false).await
}

async fn money_in_by_reference(
    State(sb): State<Shared>,
    Path(_account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = q.get("reff_no").cloned() else {
        return v1_error(StatusCode::UNPROCESSABLE_ENTITY, "reff_no is required");
    };
    money_in(&sb, id, &headers, true).await
}

#[derive(Deserialize)]
struct ScriptBody {
    id: String,
    answers: Vec<String>,
}

async fn script(State(sb): State<Shared>, Json(body): Json<ScriptBody>) -> Response {
    if body.answers.is_empty() {
        return (StatusCode::UNPROCESSABLE_ENTITY, "answers must not be empty").into_response();
    }
    sb.state().scripts.insert(body.id, Script { answers: body.answers, asked: 0 });
    StatusCode::NO_CONTENT.into_response()
}

async fn revoke(State(sb): State<Shared>) -> StatusCode {
    sb.state().tokens.clear();
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

async fn requests(State(sb): State<Shared>) -> Json<Vec<Logged>> {
    Json(sb.state().requests.clone())
}
