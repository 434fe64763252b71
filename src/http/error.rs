//! One error type for the HTTP surface, rendered as the PaySG-style error object with
//! Singapay's `status` field. 5xx bodies are opaque; the cause is logged once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::singapay::signature::VerifyError;

/// Seconds Singapay should wait before retrying a 503 (it retries about once a minute).
pub const RETRY_AFTER_SECS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("missing X-Signature, X-Timestamp or Authorization")]
    MissingSignatureHeaders,
    #[error("X-Timestamp is not digits")]
    InvalidTimestamp,
    #[error("no secret and body form match the signature")]
    SignatureInvalid,
    #[error("valid signature, timestamp outside tolerance, content not stored before")]
    StaleTimestamp,
    #[error("source address not allowed")]
    IpNotAllowed,
    #[error("signed body is not usable: {0}")]
    InvalidBody(String),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("body not received within BODY_READ_TIMEOUT_SECS")]
    BodyTimeout,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("storage unavailable")]
    StorageUnavailable,
    #[error("internal error")]
    Internal,
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::MissingHeaders => ApiError::MissingSignatureHeaders,
            VerifyError::InvalidTimestamp => ApiError::InvalidTimestamp,
            VerifyError::SignatureInvalid => ApiError::SignatureInvalid,
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingSignatureHeaders
            | ApiError::InvalidTimestamp
            | ApiError::SignatureInvalid
            | ApiError::StaleTimestamp => StatusCode::UNAUTHORIZED,
            ApiError::IpNotAllowed => StatusCode::FORBIDDEN,
            ApiError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingSignatureHeaders => "missing_signature_headers",
            ApiError::InvalidTimestamp => "invalid_timestamp",
            ApiError::SignatureInvalid => "signature_invalid",
            ApiError::StaleTimestamp => "stale_timestamp",
            ApiError::IpNotAllowed => "ip_not_allowed",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::StorageUnavailable => "storage_unavailable",
            ApiError::Internal => "internal",
        }
    }

    fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            s if s.is_server_error() => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// What the caller is told: never which check failed beyond the code.
    fn message(&self) -> String {
        match self {
            ApiError::MissingSignatureHeaders => "Missing webhook signature headers.".into(),
            ApiError::InvalidTimestamp => "Invalid X-Timestamp header.".into(),
            ApiError::SignatureInvalid => "Invalid webhook signature.".into(),
            ApiError::StaleTimestamp => "Webhook timestamp outside the accepted window.".into(),
            ApiError::IpNotAllowed => "Source address not allowed.".into(),
            ApiError::InvalidBody(_) => "Webhook body must be a JSON object nested at most 511 deep.".into(),
            ApiError::BodyTooLarge(max) => format!("Webhook body exceeds {max} bytes."),
            ApiError::BodyTimeout => "Webhook body not received in time.".into(),
            ApiError::NotFound => "No such endpoint.".into(),
            ApiError::MethodNotAllowed => "Method not allowed.".into(),
            ApiError::StorageUnavailable => "Storage temporarily unavailable; retry later.".into(),
            ApiError::Internal => "Internal error.".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": "error",
            "error": { "type": self.kind(), "code": self.code(), "message": self.message() }
        });
        let mut resp = (self.status(), Json(body)).into_response();
        // For the layers that count and log refusals (`webhook::observe`).
        resp.extensions_mut().insert(self.clone());
        match self {
            ApiError::StorageUnavailable => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ApiError::MethodNotAllowed => {
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            // What is left of the upload is not read: the connection ends with this answer.
            ApiError::BodyTooLarge(_) | ApiError::BodyTimeout => {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
