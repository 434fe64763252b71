//! Building and running the server, shared by `serve`, `dev` and the tests.

use sqlx::PgPool;
use std::future::Future;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::http::{router, AppState};

/// Serves until `shutdown` resolves, then lets in-flight callbacks finish.
pub async fn run(
    listener: TcpListener,
    pool: PgPool,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(AppState::new(pool, settings));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight callbacks");
}
