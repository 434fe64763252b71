//! `POST {WEBHOOK_PATH}`: the callback as a pipeline of named steps. The source allowlist,
//! the latency histogram, rejection counters and error logs are layers around it
//! ([`observe`], [`super::source::allowlist`]); this module is only the flow.

use std::time::Instant;

use axum::body::Body as HttpBody;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::DateTime;
use metrics::{counter, histogram};
use serde_json::json;

use super::{ApiError, AppState, REQUEST_ID};
use crate::config::Settings;
use crate::singapay::signature::{self, SignedHeaders, Verified};
use crate::singapay::status::Transition;
use crate::singapay::webhook::{self, Subject};
use crate::singapay::Body;
use crate::store::{
    self, column_text, to_jsonb_text, Delivery, Rejection, RejectionReason, Signed, StoreError, Stored, Write, Written,
};
use crate::telemetry::metric;

/// Bodies larger than this are analysed on the blocking pool, so a large callback cannot
/// stall the others, and only as many at once as [`AppState::analysis`] allows, so that
/// large bodies (anyone can send them, with any signature) wait their turn instead of
/// multiplying memory. Real callbacks are a few KB and are analysed at once.
const ANALYSE_INLINE_MAX: usize = 64 * 1024;

/// The largest unsigned body looked at (the dashboard's test ping is about 70 bytes);
/// larger unsigned bodies are refused unparsed.
const TEST_PING_MAX: usize = 4 * 1024;

/// The callback's flow, step by step.
pub async fn receive(
    State(state): State<AppState>,
    Extension(notes): Extension<Notes>,
    req: Request,
) -> Result<Answer, ApiError> {
    let (parts, body) = req.into_parts();
    let arrival = Arrival::read(&parts, &state.settings);
    let signed = match signature::check_headers(arrival.headers()) {
        Ok(signed) => signed,
        Err(e) => return Err(refused_unread(body, e.into()).await),
    };
    let raw = read_body(body, &parts.headers, &state.settings).await?;
    if !signed {
        return dashboard_test(&raw);
    }
    let (raw, body) = analyse(raw, &state).await?;
    let verified = verify(&state, &arrival, &raw, &body, &notes)?;
    let delivery = classify(arrival.signed(&verified, &body, raw), &body, &notes)?;
    if !verified.fresh {
        return refuse_stale(&state, delivery, &notes).await;
    }
    store(&state, delivery, &notes).await
}

/// What a callback was answered with when it was not refused.
pub enum Answer {
    Stored(Stored),
    TestPing,
}

/// The `result` label of the latency histogram, left on the response for [`observe`].
#[derive(Clone, Copy)]
struct Handled(&'static str);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (label, body) = match self {
            Answer::Stored(s) => (
                if s.duplicate { "duplicate" } else { "stored" },
                json!({ "status": "success", "delivery_id": s.delivery_id, "duplicate": s.duplicate }),
            ),
            Answer::TestPing => ("test", json!({ "status": "success", "test": true })),
        };
        let mut response = Json(body).into_response();
        response.extensions_mut().insert(Handled(label));
        response
    }
}

/// What the steps learned about one callback. [`observe`] logs it once, as the fields of
/// the `callback` span (never a secret, signature or token).
#[derive(Debug, Default)]
pub struct Facts {
    pub webhook_type: Option<&'static str>,
    pub transaction_key: Option<String>,
    pub signature_form: Option<&'static str>,
    pub credential: Option<String>,
    pub outcome: Option<&'static str>,
    pub duplicate: Option<bool>,
    pub delivery_id: Option<i64>,
    pub rejected_delivery_id: Option<i64>,
    pub items: Option<usize>,
    pub needs_inquiry: Option<bool>,
    /// Changes that contradicted a stored terminal status (`key: status`), not applied.
    pub conflicts: Vec<String>,
    pub stale_retry: bool,
    pub client: Option<String>,
}

/// A request's [`Facts`], shared by the layers and the steps.
#[derive(Clone, Default)]
pub struct Notes(Arc<Mutex<Facts>>);

impl Notes {
    pub fn note(&self, f: impl FnOnce(&mut Facts)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn take(&self) -> Facts {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The layer around every callback: the latency histogram, the refusal counters, and one
/// log line per callback carrying everything the steps learned.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let notes = Notes::default();
    req.extensions_mut().insert(notes.clone());
    let response = next.run(req).await;
    let refused = response.extensions().get::<ApiError>();
    let label = match refused {
        Some(e) => {
            counter!(metric::REJECTIONS, "code" => e.code()).increment(1);
            "rejected"
        }
        None => response.extensions().get::<Handled>().map_or("rejected", |r| r.0),
    };
    if label == "test" {
        counter!(metric::TEST_PINGS).increment(1);
    }
    let f = notes.take();
    let span = tracing::info_span!(
        "callback",
        request_id,
        webhook_type = f.webhook_type,
        transaction_key = f.transaction_key.as_deref(),
        outcome = f.outcome,
        duplicate = f.duplicate,
        signature_form = f.signature_form,
        credential = f.credential.as_deref(),
        delivery_id = f.delivery_id,
        rejected_delivery_id = f.rejected_delivery_id,
        client = f.client.as_deref(),
    );
    let _in_span = span.enter();
    match (refused, label) {
        (Some(e), _) if e.status().is_server_error() => {
            tracing::error!(code = e.code(), error = %e, "callback not stored");
        }
        (Some(e), _) => tracing::warn!(code = e.code(), error = %e, "callback refused"),
        (None, "test") => tracing::info!("dashboard test ping acknowledged, nothing stored"),
        (None, _) if f.stale_retry => tracing::info!("stale retry of a stored delivery acknowledged"),
        (None, _) => {
            tracing::info!(items = f.items, needs_inquiry = f.needs_inquiry, "delivery stored");
            if !f.conflicts.is_empty() {
                tracing::warn!(
                    conflicts = %f.conflicts.join(", "),
                    "terminal status contradicts the stored terminal status; stored, not applied"
                );
            }
        }
    }
    histogram!(metric::CALLBACK_DURATION, "result" => label).record(started.elapsed().as_secs_f64());
    response
}

/// The request as it arrived: what was signed besides the body, and its metadata.
struct Arrival {
    path_and_query: String,
    endpoint: String,
    request_id: Option<String>,
    partner_id: Option<String>,
    signature: Option<HeaderValue>,
    timestamp: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
}

impl Arrival {
    fn read(parts: &Parts, settings: &Settings) -> Arrival {
        let h = &parts.headers;
        let path_and_query = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str()).to_owned();
        Arrival {
            endpoint: settings.signed_endpoint(&path_and_query),
            path_and_query,
            request_id: h.get(REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned),
            partner_id: lossy(h.get("x-partner-id").map(HeaderValue::as_bytes)),
            signature: h.get("x-signature").cloned(),
            timestamp: h.get("x-timestamp").cloned(),
            authorization: h.get(header::AUTHORIZATION).cloned(),
        }
    }

    fn headers(&self) -> SignedHeaders<'_> {
        SignedHeaders {
            signature: self.signature.as_ref().map(HeaderValue::as_bytes),
            timestamp: self.timestamp.as_ref().map(HeaderValue::as_bytes),
            authorization: self.authorization.as_ref().map(HeaderValue::as_bytes),
        }
    }

    /// What was signed, built once for a delivery or a rejection.
    fn signed(self, verified: &Verified, body: &Body, raw: Vec<u8>) -> Signed {
        let headers = self.headers();
        Signed {
            content_sha256: body.content_sha256(&raw),
            credential: verified.credential.clone(),
            signature_form: verified.form,
            signed_at: i64::try_from(verified.timestamp).ok().and_then(|t| DateTime::from_timestamp(t, 0)),
            x_timestamp: verified.timestamp_text.clone(),
            request_path: column_text(&self.path_and_query),
            x_signature: lossy(headers.signature).unwrap_or_default().to_ascii_lowercase(),
            access_token: lossy(headers.authorization.map(signature::bearer_token)).unwrap_or_default(),
            request_id: self.request_id,
            partner_id: self.partner_id,
            body: raw,
        }
    }
}

fn lossy(b: Option<&[u8]>) -> Option<String> {
    b.map(|b| column_text(&String::from_utf8_lossy(b)))
}

/// The body, at most `MAX_BODY_BYTES` (enforced while reading, whatever Content-Length
/// claims), in full within `BODY_READ_TIMEOUT_SECS`.
async fn read_body(body: HttpBody, headers: &HeaderMap, settings: &Settings) -> Result<Vec<u8>, ApiError> {
    let deadline = std::time::Duration::from_secs(settings.body_read_timeout_secs);
    tokio::time::timeout(deadline, read_capped(body, headers, settings.max_body_bytes))
        .await
        .unwrap_or(Err(ApiError::BodyTimeout))
}

async fn read_capped(mut body: HttpBody, headers: &HeaderMap, max: usize) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_none_or(|n| n <= max as u64) {
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        loop {
            match body.frame().await {
                None => return Ok(buf),
                Some(Err(e)) => return Err(ApiError::InvalidBody(format!("body could not be read: {e}"))),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if buf.len() + data.len() > max {
                        break;
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    drain(body).await;
    Err(ApiError::BodyTooLarge(max))
}

/// Reads and discards what a client is still uploading after its body was refused (at most
/// [`DRAIN_MAX`] bytes, for at most [`DRAIN_DEADLINE`]), as nginx's lingering close does:
/// closing on a client in mid-upload resets the connection, and the client then sees a
/// broken pipe instead of the 413. The 413 closes the connection.
async fn drain(mut body: HttpBody) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_DEADLINE, async {
        let mut drained = 0;
        while let Some(Ok(frame)) = body.frame().await {
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
}

/// A refusal decided before the body was read; the body is drained first (see [`drain`]).
pub(super) async fn refused_unread(body: HttpBody, e: ApiError) -> ApiError {
    drain(body).await;
    e
}

const DRAIN_MAX: usize = 16 * 1024 * 1024;
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The dashboard "Test" button posts an unsigned dummy body: proof the URL is reachable.
/// Any other unsigned request is refused, and a large one without being parsed.
fn dashboard_test(raw: &[u8]) -> Result<Answer, ApiError> {
    if raw.len() <= TEST_PING_MAX && Body::analyse(raw).object().is_some_and(webhook::is_dashboard_test) {
        Ok(Answer::TestPing)
    } else {
        Err(ApiError::MissingSignatureHeaders)
    }
}

/// Parses the body and builds every form a signer may have hashed. A body nested deeper
/// than PHP's `json_decode` goes is refused whatever it was signed over: no PHP signer can
/// have produced it.
async fn analyse(raw: Vec<u8>, state: &AppState) -> Result<(Vec<u8>, Body), ApiError> {
    let (raw, body) = if raw.len() <= ANALYSE_INLINE_MAX {
        let body = Body::analyse(&raw);
        (raw, body)
    } else {
        let _turn = state.analysis.acquire().await.map_err(|_| ApiError::Internal)?;
        tokio::task::spawn_blocking(move || {
            let body = Body::analyse(&raw);
            (raw, body)
        })
        .await
        .map_err(|_| ApiError::Internal)?
    };
    if let Err(e @ crate::singapay::json::ParseError::TooDeep) = &body.parsed {
        return Err(ApiError::InvalidBody(e.to_string()));
    }
    Ok((raw, body))
}

fn verify(state: &AppState, arrival: &Arrival, raw: &[u8], body: &Body, notes: &Notes) -> Result<Verified, ApiError> {
    let s = &state.settings;
    let now = (state.clock)();
    let forms = body.forms(raw);
    let verified = signature::verify(
        arrival.headers(),
        arrival.endpoint.as_bytes(),
        forms,
        &s.credentials,
        now,
        s.timestamp_tolerance_secs,
    )?;
    notes.note(|f| {
        f.signature_form = Some(verified.form.as_str());
        f.credential = Some(verified.credential.clone());
    });
    Ok(verified)
}

/// What the body says; an authentic body that is not a JSON object is refused, and so is
/// one with a lone UTF-16 surrogate escape (`"\ud800"`), which PHP's `json_decode` refuses
/// as it refuses invalid UTF-8.
fn classify(signed: Signed, body: &Body, notes: &Notes) -> Result<Delivery, ApiError> {
    let Some(object) = body.object() else {
        let why = match &body.parsed {
            Err(e) => e.to_string(),
            Ok(_) => "top level is not a JSON object".to_owned(),
        };
        return Err(ApiError::InvalidBody(why));
    };
    if let Some(why) = body.php_refusal() {
        return Err(ApiError::InvalidBody(why));
    }
    let classification = store::fit_for_columns(webhook::classify(object));
    notes.note(|f| {
        f.webhook_type = Some(classification.webhook_type.as_str());
        f.transaction_key = classification.single().map(|c| c.transaction_key.clone());
    });
    Ok(Delivery { signed, classification, payload: Some(to_jsonb_text(object)) })
}

/// Hands the delivery to intake and answers once it is committed.
async fn store(state: &AppState, delivery: Delivery, notes: &Notes) -> Result<Answer, ApiError> {
    let webhook_type = delivery.classification.webhook_type.as_str();
    let form = delivery.signed.signature_form;
    let items = match &delivery.classification.subject {
        Subject::Batch(items) => items.len(),
        Subject::Single(_) => 1,
        Subject::Unrecognised(_) => 0,
    };
    let needs_inquiry = delivery.classification.needs_inquiry;
    let Written::Stored(s) = state.intake.submit(Write::Deliver(Box::new(delivery))).await.map_err(storage_error)?
    else {
        return Err(ApiError::Internal);
    };
    if s.duplicate {
        counter!(metric::DUPLICATES, "webhook_type" => webhook_type).increment(1);
    } else {
        counter!(metric::DELIVERIES, "webhook_type" => webhook_type, "outcome" => s.outcome.as_str(),
            "signature_form" => form.as_str())
        .increment(1);
    }
    notes.note(|f| {
        f.outcome = Some(s.outcome.as_str());
        f.duplicate = Some(s.duplicate);
        f.delivery_id = Some(s.delivery_id);
        f.items = Some(items);
        f.needs_inquiry = Some(needs_inquiry);
        f.conflicts = s
            .changes
            .iter()
            .filter(|c| c.transition == Transition::Conflict)
            .map(|c| format!("{}: {}", c.transaction_key, c.to_status))
            .collect();
    });
    Ok(Answer::Stored(s))
}

fn storage_error(e: StoreError) -> ApiError {
    if e.is_transient() {
        ApiError::StorageUnavailable
    } else {
        ApiError::Internal
    }
}

/// Authentic but outside the time window: a retry of stored content is harmless; new
/// content is refused and kept for an operator to `replay`.
async fn refuse_stale(state: &AppState, delivery: Delivery, notes: &Notes) -> Result<Answer, ApiError> {
    let webhook_type = delivery.classification.webhook_type.as_str();
    let rejection = Rejection {
        signed: delivery.signed,
        reason: RejectionReason::StaleTimestamp,
        event_at: delivery.classification.event_at,
    };
    match state.intake.submit(Write::Stale(rejection)).await.map_err(storage_error)? {
        Written::Stored(s) => {
            counter!(metric::DUPLICATES, "webhook_type" => webhook_type).increment(1);
            notes.note(|f| {
                f.duplicate = Some(true);
                f.delivery_id = Some(s.delivery_id);
                f.stale_retry = true;
            });
            Ok(Answer::Stored(s))
        }
        Written::Rejected { rejection_id } => {
            notes.note(|f| f.rejected_delivery_id = Some(rejection_id));
            Err(ApiError::StaleTimestamp)
        }
        Written::Inquired { .. } => Err(ApiError::Internal),
    }
}
