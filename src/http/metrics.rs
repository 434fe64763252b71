//! `GET /metrics`: Prometheus text, on the admin listener (or, with `ADMIN_LISTEN_ADDR=off`,
//! on the public port behind `ALLOWED_SOURCE_CIDRS`). Counters and histograms are recorded
//! as callbacks are handled; pool usage is read at scrape time, and the queue's depth from
//! Postgres at most once every [`QUEUE_GAUGES_EVERY`], however often and however many
//! scrapers ask, by a query whose cost does not grow with the history kept.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::gauge;

use super::AppState;
use crate::telemetry::metric;

pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics.as_ref() else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled in this process\n").into_response();
    };
    let pool = &state.pool;
    let idle = pool.num_idle() as f64;
    gauge!(metric::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    gauge!(metric::DB_POOL_CONNECTIONS, "state" => "in_use").set(f64::from(pool.size()) - idle);
    gauge!(metric::DB_POOL_MAX).set(f64::from(state.settings.db_max_connections));
    gauge!(metric::INTAKE_QUEUED).set(state.intake.queued() as f64);
    read_queue_gauges(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// How stale the queue gauges may be. Reading them costs Postgres a little (see
/// [`crate::store::QUEUE_GAUGES`]); a scrape, or 64 at once, must not turn into that much work each.
pub const QUEUE_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// Refreshes the queue gauges when they are older than [`QUEUE_GAUGES_EVERY`]. One scrape
/// reads; scrapes meanwhile render the values as they are instead of waiting.
async fn read_queue_gauges(state: &AppState) {
    let Ok(mut read_at) = state.queue_gauges_read.try_lock() else { return };
    if read_at.is_some_and(|t| t.elapsed() < QUEUE_GAUGES_EVERY) {
        return;
    }
    *read_at = Some(Instant::now());
    let query = crate::store::queue_gauges(&state.pool);
    // A scrape must not hang on an unreachable database; the series keep their last values.
    match tokio::time::timeout(Duration::from_secs(2), query).await {
        Ok(Ok(g)) => {
            gauge!(metric::QUEUE_DUE).set(g.due as f64);
            gauge!(metric::QUEUE_OLDEST_DUE_AGE).set(g.oldest_due_secs);
            for (state, events) in
                [("available", g.available), ("running", g.running), ("done", g.done), ("dead", g.dead)]
            {
                gauge!(metric::QUEUE_EVENTS, "state" => state).set(events as f64);
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "queue depth not available for /metrics"),
        Err(_) => tracing::debug!("queue depth query timed out for /metrics"),
    }
}
