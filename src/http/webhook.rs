//! `POST {WEBHOOK_PATH}`: read (capped), verify, classify, store, and answer only after
//! the commit.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body as HttpBody;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use metrics::{counter, histogram};
use serde_json::json;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{source, ApiError, AppState, REQUEST_ID};
use crate::singapay::json::to_jsonb_text;
use crate::singapay::signature::{self, SignedHeaders};
use crate::singapay::webhook::{self, column_text, Subject};
use crate::singapay::Body;
use crate::store::{self, Delivery, Rejection, StoreError};
use crate::telemetry::metric;

/// What a callback was answered with, for the metrics.
enum Answer {
    Stored { delivery_id: i64, duplicate: bool },
    TestPing,
}

pub async fn receive(state: AppState, req: Request) -> Response {
    let started = Instant::now();
    // One span per callback; its fields are filled in as they become known and appear on
    // every log line the callback produces. Never a secret, signature or token.
    let span = tracing::info_span!(
        "callback",
        webhook_type = Empty,
        transaction_key = Empty,
        outcome = Empty,
        duplicate = Empty,
        signature_form = Empty,
        credential = Empty,
        delivery_id = Empty,
    );
    let result = handle(state, req).instrument(span).await;
    let (label, response) = match result {
        Ok(Answer::Stored { delivery_id, duplicate }) => (
            if duplicate { "duplicate" } else { "stored" },
            Json(json!({ "status": "success", "delivery_id": delivery_id, "duplicate": duplicate })).into_response(),
        ),
        Ok(Answer::TestPing) => {
            counter!(metric::TEST_PINGS).increment(1);
            ("test", Json(json!({ "status": "success", "test": true })).into_response())
        }
        Err(e) => {
            counter!(metric::REJECTIONS, "code" => e.code()).increment(1);
            ("rejected", e.into_response())
        }
    };
    histogram!(metric::CALLBACK_DURATION, "result" => label).record(started.elapsed().as_secs_f64());
    response
}

async fn read_body(body: HttpBody, headers: &HeaderMap, max: usize) -> Result<Vec<u8>, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::BodyTooLarge(max));
    }
    // The cap is enforced while reading, whatever Content-Length claimed.
    match axum::body::to_bytes(body, max).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(ApiError::BodyTooLarge(max))
            } else {
                Err(ApiError::InvalidBody(format!("body could not be read: {e}")))
            }
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

fn lossy(b: Option<&[u8]>) -> Option<String> {
    b.map(|b| column_text(&String::from_utf8_lossy(b)))
}

async fn handle(state: AppState, req: Request) -> Result<Answer, ApiError> {
    let settings = state.settings.clone();
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    if let Some(allowlist) = &settings.allowed_source_cidrs {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let client = peer.and_then(|p| source::client_ip(p, &headers, settings.trusted_proxy_hops));
        if !client.is_some_and(|ip| source::allowed(allowlist, ip)) {
            tracing::warn!(peer = ?peer, client = ?client, "callback from a source outside ALLOWED_SOURCE_CIDRS refused");
            return Err(ApiError::IpNotAllowed);
        }
    }
    let request_id = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path_and_query =
        parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let endpoint = settings.signed_endpoint(&path_and_query);

    let raw = read_body(body, &headers, settings.max_body_bytes).await?;
    let signed = SignedHeaders {
        signature: header(&headers, "x-signature"),
        timestamp: header(&headers, "x-timestamp"),
        authorization: header(&headers, header::AUTHORIZATION.as_str()),
    };
    // Parsing and canonicalising a large body is milliseconds of CPU: off the async workers.
    let (raw, analysed) = if raw.len() > 64 * 1024 {
        tokio::task::spawn_blocking(move || {
            let analysed = Body::analyse(&raw);
            (raw, analysed)
        })
        .await
        .map_err(|_| ApiError::Internal)?
    } else {
        let analysed = Body::analyse(&raw);
        (raw, analysed)
    };

    // The dashboard "Test" button posts an unsigned dummy body: proof the URL is reachable.
    let unsigned = signed.signature.is_none() && signed.timestamp.is_none() && signed.authorization.is_none();
    if unsigned && analysed.object().is_some_and(webhook::is_dashboard_test) {
        tracing::info!(path = %parts.uri.path(), "dashboard test ping acknowledged, nothing stored");
        return Ok(Answer::TestPing);
    }

    let now = (state.clock)();
    let verified = signature::verify(
        signed,
        endpoint.as_bytes(),
        analysed.forms(&raw),
        &settings.credentials,
        now,
        settings.timestamp_tolerance_secs,
    )
    .map_err(|e| {
        tracing::warn!(reason = e.code(), endpoint = %endpoint, body_bytes = raw.len(), "delivery refused");
        ApiError::from(e)
    })?;

    let Some(object) = analysed.object() else {
        let why = match &analysed.parsed {
            Err(e) => e.to_string(),
            Ok(_) => "top level is not a JSON object".to_owned(),
        };
        tracing::warn!(reason = %why, credential = %verified.credential, "authentic delivery with unusable body");
        return Err(ApiError::InvalidBody(why));
    };
    let span = Span::current();
    span.record("signature_form", verified.form.as_str());
    span.record("credential", verified.credential.as_str());
    let content_sha256 = analysed.content_sha256(&raw);
    let classification = webhook::classify(object);
    let webhook_type = classification.webhook_type.as_str();
    span.record("webhook_type", webhook_type);
    if let Some(key) = classification.single().map(|c| c.transaction_key.as_str()) {
        span.record("transaction_key", key);
    }
    let signed_at = i64::try_from(verified.timestamp).ok().and_then(|t| DateTime::from_timestamp(t, 0));
    let x_signature = lossy(signed.signature).unwrap_or_default().to_ascii_lowercase();
    let access_token = lossy(signed.authorization.map(signature::bearer_token)).unwrap_or_default();
    let partner_id = lossy(header(&headers, "x-partner-id"));

    if !verified.fresh {
        return stale(
            &state,
            webhook_type,
            content_sha256,
            &verified,
            signed_at,
            Rejection {
                content_sha256,
                reason: "stale_timestamp",
                x_timestamp: verified.timestamp_text.clone(),
                signed_at,
                partner_id,
                credential: verified.credential.clone(),
                signature_form: verified.form.as_str(),
                request_path: column_text(&path_and_query),
                request_id,
                x_signature,
                access_token,
                body: raw,
            },
        )
        .await;
    }

    let delivery = Delivery {
        content_sha256,
        payload: Some(to_jsonb_text(object)),
        classification,
        partner_id,
        credential: verified.credential.clone(),
        signature_form: verified.form.as_str(),
        // A fresh timestamp is within the tolerance of now, so it is representable.
        signed_at: signed_at.unwrap_or_else(Utc::now),
        x_timestamp: verified.timestamp_text.clone(),
        request_path: column_text(&path_and_query),
        request_id,
        x_signature,
        access_token,
        body: raw,
    };

    // Storage runs to completion even if Singapay hangs up: the callback is either
    // committed or rolled back, never cut off half-way.
    let pool = state.pool.clone();
    let stored = tokio::spawn(async move {
        let started = Instant::now();
        let result = store::record(&pool, &delivery).await;
        histogram!(metric::STORAGE_DURATION).record(started.elapsed().as_secs_f64());
        (result, delivery)
    })
    .await;
    let (result, delivery) = stored.map_err(|e| {
        tracing::error!(error = %e, "storage task failed");
        ApiError::Internal
    })?;
    let c = &delivery.classification;
    let key = c.single().map(|s| s.transaction_key.as_str());
    let items = match &c.subject {
        Subject::Batch(items) => items.len(),
        _ => usize::from(key.is_some()),
    };
    match result {
        Ok(s) => {
            span.record("outcome", s.outcome.as_str());
            span.record("duplicate", s.duplicate);
            span.record("delivery_id", s.delivery_id);
            if s.duplicate {
                counter!(metric::DUPLICATES, "webhook_type" => webhook_type).increment(1);
            } else {
                counter!(metric::DELIVERIES, "webhook_type" => webhook_type, "outcome" => s.outcome.clone(),
                    "signature_form" => verified.form.as_str())
                .increment(1);
            }
            tracing::info!(items, needs_inquiry = c.needs_inquiry, "delivery stored");
            if s.outcome == "conflict" && !s.duplicate {
                tracing::warn!(status = ?c.single().and_then(|s| s.status.as_deref()),
                    "terminal status contradicts the stored terminal status; stored, not applied");
            }
            Ok(Answer::Stored { delivery_id: s.delivery_id, duplicate: s.duplicate })
        }
        Err(e) => Err(storage_error(e)),
    }
}

fn storage_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(cause) => {
            tracing::error!(error = %cause, "storage unavailable; answering 503 so Singapay retries");
            ApiError::StorageUnavailable
        }
        StoreError::Internal(cause) => {
            tracing::error!(error = %cause, "storage failed");
            ApiError::Internal
        }
    }
}

/// Authentic but outside the time window: a retry of stored content is harmless; new
/// content is refused and kept for an operator to `replay`.
async fn stale(
    state: &AppState,
    webhook_type: &'static str,
    content_sha256: [u8; 32],
    verified: &signature::Verified,
    signed_at: Option<DateTime<Utc>>,
    rejection: Rejection,
) -> Result<Answer, ApiError> {
    if let Some(id) = store::touch_known(&state.pool, &content_sha256).await.map_err(storage_error)? {
        Span::current().record("duplicate", true).record("delivery_id", id);
        counter!(metric::DUPLICATES, "webhook_type" => webhook_type).increment(1);
        tracing::info!("stale retry of a stored delivery acknowledged");
        return Ok(Answer::Stored { delivery_id: id, duplicate: true });
    }
    let id = store::record_rejection(&state.pool, &rejection).await.map_err(storage_error)?;
    tracing::warn!(
        rejected_delivery_id = id,
        x_timestamp = verified.timestamp,
        signed_at = ?signed_at,
        "authentic delivery refused: timestamp outside tolerance"
    );
    Err(ApiError::StaleTimestamp)
}
