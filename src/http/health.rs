use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::telemetry::Throttled;

/// Liveness: the process answers.
pub async fn live() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: not shutting down, and intake can write: Postgres answers, the database is
/// not read-only, the role holds the privileges intake needs, every embedded migration is
/// applied, and the last write was not refused as a whole (until a write commits again or
/// the probe shows the cause gone). One probe query at most about once a second, however
/// often this is asked ([`crate::intake::READINESS_CACHE`]). A failure is logged as one
/// WARN line, at most once a minute during an outage.
pub async fn ready(State(state): State<AppState>) -> Response {
    let (code, message) = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        ("shutting_down", "This replica is shutting down; send callbacks to another one.")
    } else {
        let (refusal, error) = match state.intake.readiness().check(&state.pool).await {
            Ok(()) => return Json(json!({ "status": "ready" })).into_response(),
            Err(failed) => failed,
        };
        let (code, message) = (refusal.code(), refusal.message());
        static NOT_READY: Throttled = Throttled::new(Duration::from_secs(60));
        let detail = error.map(|e| format!(" ({e})")).unwrap_or_default();
        if let Some(repeats) = NOT_READY.due() {
            tracing::warn!(code, repeats_since_last_warning = repeats, "not ready: {message}{detail}");
        }
        (code, message)
    };
    let body = json!({
        "status": "error",
        "error": { "type": "api_error", "code": code, "message": message }
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
