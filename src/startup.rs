//! Building and running the server, shared by `serve`, `dev` and the tests.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::http::{admin_router, router, AppState};

/// Serves callbacks on `listener` (and `/metrics` on `admin` when given) until `shutdown`
/// resolves. Then it stops accepting, lets in-flight callbacks finish — each is either
/// committed and answered, or rolled back and unanswered — for at most
/// `SHUTDOWN_TIMEOUT_SECS`, and returns.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(state.settings.shutdown_timeout_secs);
    let writers = state.intake.writers();
    let (stop, stopped) = watch::channel(false);
    let when_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let main = tokio::spawn(crate::http::server::serve(
        listener,
        router(state.clone()),
        state.settings.connections,
        when_stopped(stopped.clone()),
    ));
    let admin = admin.map(|l| {
        tokio::spawn(
            axum::serve(l, admin_router(state.clone()).into_make_service())
                .with_graceful_shutdown(when_stopped(stopped.clone()))
                .into_future(),
        )
    });
    drop(state);
    shutdown.await;
    let _ = stop.send(true);
    let finished = async {
        let main = main.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        // The servers are gone and with them every handle to intake: the writers finish
        // what is queued (a callback whose caller hung up is still committed) and stop.
        writers.finished().await;
        main
    };
    match tokio::time::timeout(grace, finished).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight callbacks did not finish in time; unanswered ones will be retried by Singapay"
            );
            Ok(())
        }
    }
}

/// Binds the listeners `settings` asks for, naming the variable when one fails.
pub async fn bind(settings: &Settings) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    use anyhow::Context;
    let main = TcpListener::bind(settings.listen_addr)
        .await
        .with_context(|| format!("LISTEN_ADDR: cannot bind {}", settings.listen_addr))?;
    let admin = match settings.admin_listen_addr {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("ADMIN_LISTEN_ADDR: cannot bind {addr}"))?)
        }
        None => None,
    };
    Ok((main, admin))
}

/// The state `serve` and `dev` run with: system clock, Prometheus recorder installed.
pub fn production_state(pool: PgPool, settings: Settings) -> AppState {
    let mut state = AppState::new(pool, settings);
    state.metrics = Some(crate::telemetry::metrics());
    state
}

/// Registers SIGTERM and SIGINT handlers now — before anything is announced, so a signal
/// that arrives early is never fatal — and resolves when one arrives.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutdown signal received; finishing in-flight callbacks");
    })
}
