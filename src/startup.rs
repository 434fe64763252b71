//! Building and running the server: one `Application`, run by `serve`, `dev` and the tests.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::config::Settings;
use crate::http::{admin_router, router, AppState, Clock};

/// The receiver, built once the way `serve` and `dev` run it (and the tests, which start it
/// in-process): listeners bound, state made, intake writers started.
pub struct Application {
    listener: TcpListener,
    admin: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Binds `settings`' addresses (naming the variable when one fails) and makes the state:
    /// system clock, Prometheus recorder installed.
    pub async fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Application> {
        let (listener, admin) = bind(&settings).await?;
        if admin.is_none() && settings.allowed_source_cidrs.is_none() && !settings.listen_addr.ip().is_loopback() {
            tracing::warn!(
                listen_addr = %settings.listen_addr,
                "ADMIN_LISTEN_ADDR=off without ALLOWED_SOURCE_CIDRS: /metrics is served to every source on LISTEN_ADDR"
            );
        }
        let mut state = AppState::new(pool, settings);
        state.metrics = Some(crate::telemetry::metrics());
        Ok(Application { listener, admin, state })
    }

    /// Where callbacks arrive (the port chosen, when the setting said 0).
    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served for the orchestrator
    /// (`ADMIN_LISTEN_ADDR`); `None` when the admin listener is off.
    pub fn admin_address(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// Replaces the clock (tests replay a vector at its own timestamp).
    pub fn with_clock(mut self, clock: Clock) -> Application {
        self.state.clock = clock;
        self
    }

    /// Serves until `signals` says stop; see [`run`].
    pub async fn run_until_stopped(self, signals: Signals) -> std::io::Result<()> {
        run(self.listener, self.admin, self.state, signals).await
    }
}

/// Serves callbacks on `listener` (and `/metrics`, health and readiness on `admin` when
/// given) until a signal.
///
/// On SIGTERM (an orchestrator stopping this replica) it first drains for
/// `SHUTDOWN_DRAIN_SECS`: `/readyz` answers 503 and every response closes its connection,
/// while callbacks are still served, so that load balancers take the replica out before it
/// stops listening. SIGINT (Ctrl-C), or a second signal during the drain, skips the rest of
/// it. Then it stops accepting, lets in-flight callbacks finish — each is either committed
/// and answered, or rolled back and unanswered — for at most `SHUTDOWN_TIMEOUT_SECS`, and
/// returns.
async fn run(
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
    let history = tokio::spawn(crate::store::history::maintain(state.pool.clone()));
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
    history.abort();
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
async fn bind(settings: &Settings) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
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
pub struct Signals(Option<(Signal, Signal)>);

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals(Some((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))))
    }

    /// No signal ever: an application that runs until its runtime ends (the tests').
    pub fn never() -> Signals {
        Signals(None)
    }

    /// The next signal.
    pub async fn next(&mut self) -> Stop {
        let Some((term, int)) = &mut self.0 else { return std::future::pending().await };
        tokio::select! {
            _ = term.recv() => Stop::Drain,
            _ = int.recv() => Stop::Now,
        }
    }
}
