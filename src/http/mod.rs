//! The HTTP surface: callbacks under `WEBHOOK_PATH`, health and readiness, metrics.

mod error;
mod health;
pub mod metrics;
pub mod server;
pub mod source;
mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use error::{ApiError, RETRY_AFTER_SECS};

use crate::config::Settings;
use crate::intake::Intake;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Seconds since the epoch. Only the HTTP layer reads the clock; tests replace it to
/// replay a vector at its own timestamp.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub clock: Clock,
    /// The Prometheus recorder's handle, when this process records metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Where verified callbacks go to be stored (group commit).
    pub intake: Intake,
    /// When `/metrics` last read the queue's depth from Postgres (see [`metrics`]).
    pub queue_gauges_read: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
    /// Turns for analysing large bodies: one per two cores (at least one), so that memory
    /// and CPU spent on bodies nobody has authenticated yet stay bounded however many
    /// arrive, and a core stays free for real callbacks.
    pub analysis: Arc<tokio::sync::Semaphore>,
    /// Set on SIGTERM: `/readyz` answers 503 and responses close their connections, so
    /// that load balancers move traffic elsewhere while callbacks are still served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    /// Starts the intake writers on the current Tokio runtime.
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        let intake = Intake::start(pool.clone(), settings.intake);
        AppState {
            pool,
            settings: Arc::new(settings),
            clock: Arc::new(|| chrono::Utc::now().timestamp()),
            metrics: None,
            intake,
            queue_gauges_read: Arc::default(),
            draining: Arc::default(),
            analysis: Arc::new(tokio::sync::Semaphore::new(
                (std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) / 2).max(1),
            )),
        }
    }
}

/// The admin listener (`ADMIN_LISTEN_ADDR`, 127.0.0.1:9090 by default): `/metrics`, health
/// and readiness for the orchestrator and its scraper. No allowlist: the port is private.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .with_state(state)
}

/// The public port (`LISTEN_ADDR`): callbacks, and health and readiness for a load balancer.
/// Everything here is behind `ALLOWED_SOURCE_CIDRS`, callbacks or not: a load balancer's
/// health check must come from an allowed address (or use the admin port). `/metrics` is
/// here only when the admin listener is off (`ADMIN_LISTEN_ADDR=off`).
pub fn router(state: AppState) -> Router {
    let state_for_drain = state.draining.clone();
    let mut r = Router::new().route("/healthz", get(health::live)).route("/readyz", get(health::ready));
    if state.settings.admin_listen_addr.is_none() {
        r = r.route("/metrics", get(metrics::render));
    }
    // Only on the routes above (an unknown path is a 404 whoever asks).
    let r = r.route_layer(from_fn_with_state(state.clone(), source::allowlist));
    // The callback handler with the layers every callback passes: observation outermost,
    // then the source allowlist.
    let callbacks: Router = Router::new()
        .fallback(webhook::receive)
        .layer(from_fn_with_state(state.clone(), source::allowlist))
        .layer(from_fn(webhook::observe))
        .with_state(state.clone());
    r
        // Callbacks are matched by hand so that no trailing-slash rule can ever redirect,
        // and every sub-path under WEBHOOK_PATH is accepted.
        .fallback(move |State(state): State<AppState>, req: Request| dispatch(state, callbacks.clone(), req))
        .with_state(state)
        // A bug answers 500 `internal` (Singapay retries once) instead of dropping the
        // connection; nothing was committed for that request.
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            tracing::error!("handler panicked");
            ApiError::Internal.into_response()
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(from_fn_with_state(state_for_drain, close_while_draining))
}

/// While draining, every response closes its connection: a keep-alive client (a load
/// balancer's pool, Singapay's sender) opens its next connection to a replica that stays.
async fn close_while_draining(State(draining): State<Arc<AtomicBool>>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    if draining.load(Ordering::Relaxed) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn dispatch(state: AppState, callbacks: Router, req: Request) -> Response {
    let prefix = state.settings.webhook_path.as_str();
    let path = req.uri().path();
    let under_prefix = path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    if !under_prefix {
        return ApiError::NotFound.into_response();
    }
    if req.method() != Method::POST {
        return ApiError::MethodNotAllowed.into_response();
    }
    match callbacks.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
