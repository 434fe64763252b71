use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::store;
use crate::telemetry::Throttled;

/// Liveness: the process answers.
pub async fn live() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: not shutting down, Postgres answers, and every embedded migration is
/// applied. A failure is logged as one WARN line, at most once a minute during an outage.
pub async fn ready(State(state): State<AppState>) -> Response {
    let (code, message) = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        ("shutting_down", "This replica is shutting down; send callbacks to another one.")
    } else {
        let (code, message, error) = match store::migrations_applied(&state.pool).await {
            Ok(true) => return Json(json!({ "status": "ready" })).into_response(),
            Ok(false) => {
                ("migrations_pending", "Database migrations are not applied; run `singapay-webhooks migrate`.", None)
            }
            // No `_sqlx_migrations` table: nothing was ever migrated.
            Err(e) if store::is_transient(&e) || store::is_schema_behind(&e) => {
                let (code, message) = store::unavailable_reason(&e);
                (code, message, Some(e))
            }
            Err(e) => ("storage_unavailable", "Postgres answered the readiness check with an error.", Some(e)),
        };
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
