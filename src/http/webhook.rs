//! `POST {WEBHOOK_PATH}`: read (capped), verify, classify, store, and answer only after
//! the commit.

use axum::body::Body as HttpBody;
use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{ApiError, AppState, REQUEST_ID};
use crate::singapay::json::to_jsonb_text;
use crate::singapay::signature::{self, SignedHeaders};
use crate::singapay::webhook::{self, column_text, Subject};
use crate::singapay::Body;
use crate::store::{self, Delivery, Rejection, StoreError};

pub async fn receive(state: AppState, req: Request) -> Response {
    match handle(state, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn read_body(body: HttpBody, headers: &HeaderMap, max: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::BodyTooLarge(max));
    }
    // The cap is enforced while reading, whatever Content-Length claimed.
    match axum::body::to_bytes(body, max).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(ApiError::BodyTooLarge(max))
            } else {
                Err(ApiError::InvalidBody(format!(
                    "body could not be read: {e}"
                )))
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

async fn handle(state: AppState, req: Request) -> Result<Response, ApiError> {
    let settings = state.settings.clone();
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    // ENDPOINT as Singapay signed it: when a proxy rewrote the prefix, sign with the public one.
    let endpoint = match &settings.signed_path_prefix {
        Some(public) => match path_and_query.strip_prefix(&settings.webhook_path) {
            Some(rest) => format!("{public}{rest}"),
            None => path_and_query.clone(),
        },
        None => path_and_query.clone(),
    };

    let raw = read_body(body, &headers, settings.max_body_bytes).await?;
    let signed = SignedHeaders {
        signature: header(&headers, "x-signature"),
        timestamp: header(&headers, "x-timestamp"),
        authorization: header(&headers, header::AUTHORIZATION.as_str()),
    };
    let analysed = Body::analyse(&raw);

    // The dashboard "Test" button posts an unsigned dummy body: proof the URL is reachable.
    let unsigned =
        signed.signature.is_none() && signed.timestamp.is_none() && signed.authorization.is_none();
    if unsigned && analysed.object().is_some_and(webhook::is_dashboard_test) {
        tracing::info!(path = %parts.uri.path(), "dashboard test ping acknowledged, nothing stored");
        return Ok(Json(json!({ "status": "success", "test": true })).into_response());
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
    let content_sha256 = analysed.content_sha256(&raw);
    let signed_at = i64::try_from(verified.timestamp)
        .ok()
        .and_then(|t| DateTime::from_timestamp(t, 0));
    let x_signature = lossy(signed.signature)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let access_token = lossy(signed.authorization.map(signature::bearer_token)).unwrap_or_default();
    let partner_id = lossy(header(&headers, "x-partner-id"));

    if !verified.fresh {
        return stale(
            &state,
            content_sha256,
            &verified,
            signed_at,
            Rejection {
                content_sha256,
                reason: "stale_timestamp",
                x_timestamp: verified.timestamp.to_string(),
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

    let classification = webhook::classify(object);
    let delivery = Delivery {
        content_sha256,
        payload: Some(to_jsonb_text(object)),
        classification,
        partner_id,
        credential: verified.credential.clone(),
        signature_form: verified.form.as_str(),
        // A fresh timestamp is within the tolerance of now, so it is representable.
        signed_at: signed_at.unwrap_or_else(Utc::now),
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
        let result = store::record(&pool, &delivery).await;
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
            tracing::info!(
                webhook_type = c.webhook_type.as_str(),
                transaction_key = key.unwrap_or_default(),
                items,
                outcome = %s.outcome,
                duplicate = s.duplicate,
                delivery_id = s.delivery_id,
                signature_form = verified.form.as_str(),
                credential = %verified.credential,
                needs_inquiry = c.needs_inquiry,
                "delivery stored"
            );
            if s.outcome == "conflict" && !s.duplicate {
                tracing::warn!(transaction_key = key.unwrap_or_default(), status = ?c.single().and_then(|s| s.status.as_deref()),
                    "terminal status contradicts the stored terminal status; stored, not applied");
            }
            Ok(success(s.delivery_id, s.duplicate))
        }
        Err(e) => Err(storage_error(e)),
    }
}

fn success(delivery_id: i64, duplicate: bool) -> Response {
    Json(json!({ "status": "success", "delivery_id": delivery_id, "duplicate": duplicate }))
        .into_response()
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
    content_sha256: [u8; 32],
    verified: &signature::Verified,
    signed_at: Option<DateTime<Utc>>,
    rejection: Rejection,
) -> Result<Response, ApiError> {
    if let Some(id) = store::touch_known(&state.pool, &content_sha256)
        .await
        .map_err(storage_error)?
    {
        tracing::info!(delivery_id = id, credential = %verified.credential, "stale retry of a stored delivery");
        return Ok(success(id, true));
    }
    let id = store::record_rejection(&state.pool, &rejection)
        .await
        .map_err(storage_error)?;
    tracing::warn!(
        rejected_delivery_id = id,
        x_timestamp = verified.timestamp,
        signed_at = ?signed_at,
        credential = %verified.credential,
        "authentic delivery refused: timestamp outside tolerance"
    );
    Err(ApiError::StaleTimestamp)
}
