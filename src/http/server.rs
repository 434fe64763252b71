//! Accepting connections on a public port: a cap on open connections, a deadline for
//! each request's headers (which is also how long an idle keep-alive connection stays
//! open), and accept errors survived.
//!
//! At the cap, the oldest connection that has not sent a single byte makes way for the
//! new one, as nginx does: strangers who open sockets and say nothing cannot lock real
//! callers out. When every open connection is busy, new ones wait in the listen backlog.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

use crate::telemetry::{metric, Throttled};

/// `MAX_CONNECTIONS` and `HEADER_READ_TIMEOUT_SECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Connections that have not sent a byte yet, oldest first, each with the means to close it.
#[derive(Default)]
struct Silent(Mutex<BTreeMap<u64, oneshot::Sender<()>>>);

impl Silent {
    fn evict_oldest(&self) -> bool {
        let oldest = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_first();
        oldest.is_some_and(|(_, close)| close.send(()).is_ok())
    }

    fn spoke(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish
/// (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let silent = Arc::new(Silent::default());
    let graceful = GracefulShutdown::new();
    let warnings = Throttled::new(Duration::from_secs(10));
    let mut next_id = 0u64;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                counter!(metric::CONNECTION_LIMIT_HITS).increment(1);
                if let Some(repeats) = warnings.due() {
                    tracing::warn!(
                        repeats_since_last_warning = repeats,
                        "connection limit reached; closing connections that sent nothing"
                    );
                }
                silent.evict_oldest();
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was
                    // accepted: make room if we can, else pause briefly; carry on.
                    counter!(metric::ACCEPT_ERRORS).increment(1);
                    if let Some(repeats) = warnings.due() {
                        tracing::warn!(repeats_since_last_warning = repeats, error = %e, "accepting a connection failed");
                    }
                    if !silent.evict_oldest() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let (close, closed) = oneshot::channel();
        silent.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id, close);
        let io = FirstByte { stream, id, silent: silent.clone(), spoke: AtomicBool::new(false) };
        // The peer address on every request, as `into_make_service_with_connect_info` does.
        let service = app.clone().map_request(move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        let silent = silent.clone();
        gauge!(metric::OPEN_CONNECTIONS).increment(1.0);
        // Resolves only when told to make way (a connection that has spoken drops its sender).
        let evicted = async move {
            if closed.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = evicted => {}
            }
            silent.spoke(id);
            gauge!(metric::OPEN_CONNECTIONS).decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The connection's socket, which leaves the silent list once the client has sent a byte.
struct FirstByte {
    stream: TcpStream,
    id: u64,
    silent: Arc<Silent>,
    spoke: AtomicBool,
}

impl AsyncRead for FirstByte {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before && !this.spoke.swap(true, Ordering::Relaxed) {
            this.silent.spoke(this.id);
        }
        poll
    }
}

impl AsyncWrite for FirstByte {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The default connection cap: what the descriptor limit leaves after a margin for the
/// database pool, listeners and logs (at most 10,000).
pub fn default_max_connections(db_max_connections: u32) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3).and_then(|v| v.parse::<usize>().ok()))
        })
        .unwrap_or(1024);
    soft.saturating_sub(64 + db_max_connections as usize).clamp(16, 10_000)
}
