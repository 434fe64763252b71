//! Building and running the server, shared by `serve` and `dev`.

use std::future::IntoFuture;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::config::Settings;
use crate::http::{admin_router, router, AppState};

/// Serves callbacks on `listener` (and `/metrics` on `admin` when given) until a signal.
///
/// On SIGTERM (an orchestrator stopping this replica) it first drains for
/// `SHUTDOWN_DRAIN_SECS`: `/readyz` answers 503 and every response closes its connection,
/// while callbacks are still served, so that load balancers take the replica out before it
/// stops listening. SIGINT (Ctrl-C), or a second signal during the drain, skips the rest of
/// it. Then it stops accepting, lets in-flight callbacks finish — each is either committed
/// and answered, or rolled back and unanswered — for at most `SHUTDOWN_TIMEOUT_SECS`, and
/// returns.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    state: AppState,
    mut signals: Signals,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(state.settings.shutdown_timeout_secs);
    let drain = Duration::from_secs(state.settings.shutdown_drain_secs);
    let draining = state.draining.clone();
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
    if signals.next().await == Stop::Drain && !drain.is_zero() {
        draining.store(true, Ordering::Relaxed);
        tracing::info!(
            drain_secs = drain.as_secs(),
            "SIGTERM: draining; /readyz answers 503 and callbacks are still served until the drain ends"
        );
        tokio::select! {
            () = tokio::time::sleep(drain) => {}
            _ = signals.next() => tracing::info!("a second signal: the drain ends now"),
        }
    }
    draining.store(true, Ordering::Relaxed);
    tracing::info!("stopping: no new connections; finishing in-flight callbacks");
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

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: drain first (`SHUTDOWN_DRAIN_SECS`), then stop.
    Drain,
    /// SIGINT: stop now.
    Now,
}

/// SIGTERM and SIGINT, registered when created — before anything is announced, so that a
/// signal that arrives early is never fatal.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Drain,
            _ = self.int.recv() => Stop::Now,
        }
    }
}
