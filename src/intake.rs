//! Group commit: verified callbacks wait in a bounded channel; a few writer tasks each take
//! everything that is waiting the moment they are free (no timer, so a lone callback is
//! written at once) and store it in one Postgres transaction. Every request is answered
//! only after the transaction that holds it has committed.
//!
//! Failures are isolated: a batch that fails for a reason belonging to one item is split
//! in halves until the culprit alone gets the error and every other item is stored; a
//! transient failure (Postgres away, connection lost, contention) answers the whole batch
//! "try again". A full channel answers "try again" at once instead of queueing without
//! bound.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::histogram;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::store::{self, BatchError, StoreError, Write, Written};
use crate::telemetry::{metric, Throttled};

/// How intake writes: `INTAKE_WRITERS`, `INTAKE_BATCH_MAX`, `INTAKE_QUEUE_CAPACITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeSettings {
    pub writers: usize,
    pub batch_max: usize,
    pub queue_capacity: usize,
}

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// The handle requests submit through. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<Job>,
    writers: Writers,
}

/// The writer tasks, to wait for once every [`Intake`] handle is gone.
#[derive(Clone)]
pub struct Writers(Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>);

impl Writers {
    /// Resolves when every writer has written what was queued and stopped; that happens
    /// once every `Intake` handle has been dropped.
    pub async fn finished(self) {
        let handles = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }
}

impl Intake {
    /// Starts the writers on the current Tokio runtime.
    pub fn start(pool: PgPool, settings: IntakeSettings) -> Intake {
        let (queue, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        // Wake-ups for listening consumers, coalesced: one pending at most.
        let (wake, wakes) = mpsc::channel(1);
        let mut handles: Vec<JoinHandle<()>> = (0..settings.writers.max(1))
            .map(|_| tokio::spawn(writer(pool.clone(), rx.clone(), settings.batch_max.max(1), wake.clone())))
            .collect();
        handles.push(tokio::spawn(waker(pool, wakes)));
        Intake { queue, writers: Writers(Arc::new(std::sync::Mutex::new(handles))) }
    }

    /// Callbacks waiting for a writer right now.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    pub fn writers(&self) -> Writers {
        self.writers.clone()
    }

    /// Queues `write` and waits for the commit that stores it. The write happens even if
    /// the caller stops waiting: a callback is committed or rolled back, never cut off.
    pub async fn submit(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Job { write, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable("intake is shutting down".into()),
        })?;
        answer.await.unwrap_or_else(|_| Err(StoreError::Internal("the intake writer stopped".into())))
    }
}

async fn writer(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Job>>>, batch_max: usize, wake: mpsc::Sender<()>) {
    let mut jobs = Vec::with_capacity(batch_max);
    loop {
        {
            // One writer waits for work at a time; the others are writing.
            let mut rx = queue.lock().await;
            if rx.recv_many(&mut jobs, batch_max).await == 0 {
                return;
            }
        }
        histogram!(metric::INTAKE_BATCH_SIZE).record(jobs.len() as f64);
        let (writes, replies): (Vec<Write>, Vec<_>) = jobs.drain(..).map(|j| (j.write, j.reply)).unzip();
        if commit(&pool, &writes, replies).await {
            // The answered requests run first: the wake-up is not worth a moment of their
            // latency. (Woken last, the waker would take their place at the head of this
            // worker's queue.)
            tokio::task::yield_now().await;
            // Full means a wake-up is already pending; it will cover these events too.
            let _ = wake.try_send(());
        }
    }
}

/// At most one wake-up per this period: the first commit after a quiet spell wakes the
/// consumers at once, and a stream of commits wakes them once per period instead of once per
/// commit. (A `pg_notify` is a transaction of its own on a second backend: sent after every
/// one-callback batch, it cost a sequential sender about a fifth of its latency here.)
pub const WAKE_EVERY: Duration = Duration::from_millis(100);

/// Sends the consumers' wake-up off the writers' path, so that a writer is free for the
/// next batch at once, and at most once per [`WAKE_EVERY`]: wake-ups asked for meanwhile
/// are covered by the next one, sent when the period is over (none is lost: it is sent
/// after the commits it announces). Stops once every writer has stopped.
async fn waker(pool: PgPool, mut wakes: mpsc::Receiver<()>) {
    let mut last: Option<Instant> = None;
    while wakes.recv().await.is_some() {
        if let Some(next) = last.map(|t| t + WAKE_EVERY).filter(|next| *next > Instant::now()) {
            tokio::time::sleep_until(next.into()).await;
        }
        // Commits that asked while we waited are announced by this one too.
        while wakes.try_recv().is_ok() {}
        last = Some(Instant::now());
        let woken = async { store::wake_consumers(&mut *pool.acquire().await?).await };
        if let Err(e) = woken.await {
            tracing::debug!(error = %e, "consumers not woken; they poll");
        }
    }
}

/// Writes `writes` and answers each request; true when the batch queued events.
async fn commit(pool: &PgPool, writes: &[Write], replies: Vec<oneshot::Sender<Result<Written, StoreError>>>) -> bool {
    let mut queued = false;
    for (reply, result) in replies.into_iter().zip(write_batch(pool, writes).await) {
        queued |= result.as_ref().is_ok_and(Written::queued_events);
        let _ = reply.send(result);
    }
    queued
}

/// Writes `writes` as one transaction and returns one result per item, in order. An
/// error that belongs to one item splits the batch in halves, written in order, until
/// the culprit alone gets it; a transient error is every item's.
pub async fn write_batch(pool: &PgPool, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
    let mut results: Vec<Option<Result<Written, StoreError>>> = vec![None; writes.len()];
    let mut todo: Vec<Range<usize>> = Vec::new();
    todo.push(0..writes.len());
    while let Some(range) = todo.pop() {
        let started = Instant::now();
        let result = write_with_retries(pool, &writes[range.clone()]).await;
        let split = matches!(&result, Err(e) if !e.is_transient() && range.len() > 1);
        if !split {
            // Per delivery: how long the transaction that stored (or failed to store) it took.
            let took = started.elapsed().as_secs_f64();
            let deliveries = writes[range.clone()].iter().filter(|w| matches!(w, Write::Deliver(_))).count();
            for _ in 0..deliveries {
                histogram!(metric::STORAGE_DURATION).record(took);
            }
        }
        match result {
            Ok(written) => {
                for (slot, w) in results[range].iter_mut().zip(written) {
                    *slot = Some(Ok(w));
                }
            }
            Err(e) if split => {
                tracing::warn!(items = range.len(), error = %e, "batch refused; writing it in halves to isolate the cause");
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
            Err(e) => {
                if let StoreError::SchemaBehind(_) = e {
                    // An outage of its own kind, reported once a minute rather than per batch.
                    static SCHEMA: Throttled = Throttled::new(Duration::from_secs(60));
                    if let Some(repeats) = SCHEMA.due() {
                        tracing::warn!(
                            repeats_since_last_warning = repeats,
                            "the database schema is missing or behind this version: callbacks are answered 503 (Singapay retries) until `singapay-webhooks migrate` runs"
                        );
                    }
                } else if e.is_transient() {
                    tracing::error!(items = range.len(), error = %e, "storage unavailable; answering 503 so Singapay retries");
                } else {
                    tracing::error!(error = %e, "storing a delivery failed");
                }
                for slot in &mut results[range] {
                    *slot = Some(Err(e.clone()));
                }
            }
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Internal("item left unwritten".into())))).collect()
}

/// Contention (a concurrent writer got there first, a deadlock) and broken connections are
/// retried at once, a few times; anything else is the caller's to handle.
async fn write_with_retries(pool: &PgPool, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
    const ATTEMPTS: usize = 4;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match write_once(pool, writes).await {
            Ok(written) => return Ok(written),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                tracing::debug!(error = %e, attempt, "batch retried");
                if matches!(e, BatchError::Raced(_)) {
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
            }
            Err(e) => {
                let e = StoreError::from(e);
                if let StoreError::SchemaBehind(why) = &e {
                    // Every migration applied and still a relation missing: not an
                    // operator's pending step but a bug, answered as one.
                    if store::migrations_applied(pool).await.unwrap_or(false) {
                        return Err(StoreError::Internal(why.clone()));
                    }
                }
                return Err(e);
            }
        }
    }
}

fn retryable(e: &BatchError) -> bool {
    match e {
        BatchError::Raced(_) => true,
        BatchError::Db(e) => store::is_retryable_conflict(e) || store::is_connection_error(e),
    }
}

async fn write_once(pool: &PgPool, writes: &[Write]) -> Result<Vec<Written>, BatchError> {
    static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut conn = pool.acquire().await?;
    if BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(store::REPREPARE_EVERY) {
        sqlx::Connection::clear_cached_statements(&mut *conn).await?;
    }
    let result = async {
        let mut tx = sqlx::Connection::begin_with(&mut *conn, store::BEGIN_BATCH).await?;
        let written = store::write(&mut tx, writes).await?;
        tx.commit().await?;
        Ok(written)
    }
    .await;
    // A connection that failed (Postgres restarted, network cut) is not given back to the
    // pool: the next attempt opens a new one instead of failing on the same socket.
    if let Err(BatchError::Db(e)) = &result {
        if store::is_connection_error(e) {
            conn.close_on_drop();
        }
    }
    result
}
