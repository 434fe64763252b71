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
        Err(e) if store::is_transient(&e) => store::unavailable_reason(&e),
        // No `_sqlx_migrations` table: nothing was ever migrated.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
            ("migrations_pending", "Database schema is not initialised; run `singapay-webhooks migrate`.")
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ("storage_unavailable", "Postgres answered the readiness check with an error.")
        }
    };
    let body = json!({
        "status": "error",
        "error": { "type": "api_error", "code": code, "message": message }
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
