use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::store;

/// Liveness: the process answers.
pub async fn live() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: Postgres answers and every embedded migration is applied.
pub async fn ready(State(state): State<AppState>) -> Response {
    let (code, message) = match store::migrations_applied(&state.pool).await {
        Ok(true) => return Json(json!({ "status": "ready" })).into_response(),
        Ok(false) => ("migrations_pending", "Database migrations are not applied; run `singapay-webhooks migrate`."),
        Err(e) if store::is_transient(&e) => ("storage_unavailable", "Postgres is not reachable."),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ("migrations_pending", "Database schema is not initialised; run `singapay-webhooks migrate`.")
        }
    };
    let body = json!({
        "status": "error",
        "error": { "type": "api_error", "code": code, "message": message }
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
