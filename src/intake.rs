//! Group commit: verified callbacks wait in a bounded channel; a few writer tasks each take
//! everything that is waiting the moment they are free (no timer, so a lone callback is
//! written at once) and store it in one Postgres transaction. Every request is answered
//! only after the transaction that holds it has committed.
//!
//! Failures are isolated: a batch that fails for a reason belonging to one item (its data)
//! is split in halves until the culprit alone gets the error and every other item is
//! stored; a failure every item would meet (Postgres away, read-only, a privilege revoked,
//! a system error, contention) answers the whole batch "try again", without splitting, and
//! `/readyz` names it ([`Readiness`]). An item whose transaction another session has
//! locked is left out of the batch and tried again alone for about a second while the rest
//! commits at once. A full channel answers "try again" at once instead of queueing without
//! bound.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::histogram;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::store::{self, Attempt, BatchError, Refusal, StoreError, Write, Written};
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
    readiness: Arc<Readiness>,
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
        let readiness = Arc::new(Readiness::default());
        let mut handles: Vec<JoinHandle<()>> = (0..settings.writers.max(1))
            .map(|_| {
                let batch_max = settings.batch_max.max(1);
                tokio::spawn(writer(pool.clone(), rx.clone(), batch_max, wake.clone(), readiness.clone()))
            })
            .collect();
        handles.push(tokio::spawn(waker(pool, wakes)));
        Intake { queue, writers: Writers(Arc::new(std::sync::Mutex::new(handles))), readiness }
    }

    /// What the writers last learned about writing, for `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
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

async fn writer(
    pool: PgPool,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    batch_max: usize,
    wake: mpsc::Sender<()>,
    readiness: Arc<Readiness>,
) {
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
        let (writes, mut replies): (Vec<Write>, Vec<_>) = jobs.drain(..).map(|j| (j.write, Some(j.reply))).unzip();
        write_answering(&pool, &writes, Some(&readiness), Some(&wake), |i, result| {
            if let Some(reply) = replies[i].take() {
                let _ = reply.send(result);
            }
        })
        .await;
    }
}

/// How long a readiness probe's verdict is reused: `/readyz` costs Postgres at most about
/// one query a second, whatever the request rate.
pub const READINESS_CACHE: Duration = Duration::from_secs(1);

/// How long a write refusal the probe cannot see (a disk full, an internal error) keeps
/// `/readyz` at 503 when no write commits meanwhile: about Singapay's retry interval, so
/// that a replica taken out of rotation comes back to try again.
pub const UNPROBED_REFUSAL_HOLD: Duration = Duration::from_secs(60);

/// What `/readyz` says about writing: the cause of the last write Postgres refused as a
/// whole, until a write commits again (or a readiness probe shows the cause gone), and the
/// last probe's verdict, reused for [`READINESS_CACHE`].
#[derive(Default)]
pub struct Readiness {
    refused: std::sync::Mutex<Option<(Refusal, Instant)>>,
    probe: Mutex<Option<(Instant, Verdict)>>,
}

/// A readiness probe's verdict: the cause and what Postgres said.
type Verdict = Result<(), (Refusal, String)>;

impl Readiness {
    fn write_failed(&self, refusal: Refusal) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some((refusal, Instant::now()));
    }

    fn write_committed(&self) {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).take();
        // A commit shows the database reachable, writable and migrated: a failing verdict
        // saying otherwise is not reused. (A missing privilege it does not disprove: the
        // commit may not have needed it.)
        if let Ok(mut probe) = self.probe.try_lock() {
            if matches!(&*probe, Some((_, Err((r, _)))) if *r != Refusal::PermissionDenied) {
                *probe = None;
            }
        }
    }

    /// Whether intake can write: the probe's verdict (one query, reused for
    /// [`READINESS_CACHE`]; concurrent callers wait for the one under way), then the last
    /// write's refusal if no write has committed since (and the probe cannot show it gone).
    pub async fn check(&self, pool: &PgPool) -> Result<(), (Refusal, Option<String>)> {
        {
            let mut probe = self.probe.lock().await;
            let verdict = match &*probe {
                Some((at, verdict)) if at.elapsed() < READINESS_CACHE => verdict.clone(),
                _ => {
                    let started = Instant::now();
                    let verdict = store::probe_writes(pool).await;
                    if verdict.is_ok() {
                        // The probe saw the database writable: a refusal it would have seen,
                        // from a write before it, is gone.
                        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                        if refused.is_some_and(|(r, at)| r.probed() && at <= started) {
                            *refused = None;
                        }
                    }
                    *probe = Some((started, verdict.clone()));
                    verdict
                }
            };
            verdict.map_err(|(r, why)| (r, Some(why)))?;
        }
        match *self.refused.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((r, at)) if r.probed() || at.elapsed() < UNPROBED_REFUSAL_HOLD => Err((r, None)),
            _ => Ok(()),
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

/// Writes `writes` as one transaction and returns one result per item, in order. An
/// error that belongs to one item splits the batch in halves, written in order, until
/// the culprit alone gets it; an error every item would meet (Postgres away, read-only,
/// a privilege revoked, contention) is every item's. An item whose transaction another
/// session has locked is tried again briefly, alone with the items queued behind it.
pub async fn write_batch(pool: &PgPool, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
    let mut results: Vec<Option<Result<Written, StoreError>>> = vec![None; writes.len()];
    write_answering(pool, writes, None, None, |i, result| results[i] = Some(result)).await;
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Internal("item left unwritten".into())))).collect()
}

/// How long to wait before each new try of the items left out because a transaction they
/// change is locked by another session (about a second in all); then they are answered
/// 503. Short at first: the holder is most often another writer, committing within
/// milliseconds.
pub const LOCKED_RETRY_WAITS: [Duration; 8] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
    Duration::from_millis(400),
];

/// [`write_batch`], handing each result to `answer` as soon as its transaction has
/// committed (or failed): the items of a batch are not held back by one that waits for a
/// locked transaction. Records write failures and commits in `readiness`; wakes consumers
/// through `wake` after commits that queued events.
async fn write_answering(
    pool: &PgPool,
    writes: &[Write],
    readiness: Option<&Readiness>,
    wake: Option<&mpsc::Sender<()>>,
    mut answer: impl FnMut(usize, Result<Written, StoreError>),
) {
    let mut pending: Vec<usize> = (0..writes.len()).collect();
    let mut waits = LOCKED_RETRY_WAITS.iter();
    loop {
        let mut queued = false;
        let (left_out, locked) = write_round(pool, writes, pending, readiness, &mut |i, result| {
            queued |= result.as_ref().is_ok_and(Written::queued_events);
            answer(i, result);
        })
        .await;
        if let (true, Some(wake)) = (queued, wake) {
            // The answered requests run first: the wake-up is not worth a moment of their
            // latency. (Woken first, the waker would take their place at the head of this
            // worker's queue.)
            tokio::task::yield_now().await;
            // Full means a wake-up is already pending; it will cover these events too.
            let _ = wake.try_send(());
        }
        if left_out.is_empty() {
            return;
        }
        let Some(wait) = waits.next() else {
            tracing::warn!(
                items = left_out.len(),
                locked = ?locked,
                "transactions locked by another session for about a second; answering 503 for the callbacks that change them"
            );
            let e = StoreError::Unavailable(format!("transaction locked by another session: {}", locked.join(", ")));
            for i in left_out {
                answer(i, Err(e.clone()));
            }
            return;
        };
        tracing::debug!(items = left_out.len(), locked = ?locked, "transactions locked by another session; trying again");
        tokio::time::sleep(*wait).await;
        pending = left_out;
    }
}

/// One pass over `pending` (item indices, ascending): answers every item written or
/// refused; returns the items left out because a transaction they change was locked, in
/// order, and the keys found locked.
async fn write_round(
    pool: &PgPool,
    writes: &[Write],
    pending: Vec<usize>,
    readiness: Option<&Readiness>,
    answer: &mut impl FnMut(usize, Result<Written, StoreError>),
) -> (Vec<usize>, Vec<String>) {
    let mut left_out = Vec::new();
    let mut locked = Vec::new();
    let mut todo: Vec<Vec<usize>> = vec![pending];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        let items = subset(writes, &part);
        let started = Instant::now();
        let result = write_with_retries(pool, &items).await;
        let split = matches!(&result, Err(e) if !e.is_transient() && part.len() > 1);
        if !split {
            // Per delivery: how long the transaction that stored (or failed to store) it took.
            let took = started.elapsed().as_secs_f64();
            let answered = |k: usize| match &result {
                Ok(attempt) => attempt.written[k].is_some(),
                Err(_) => true,
            };
            for (k, w) in items.iter().enumerate() {
                if matches!(w, Write::Deliver(_)) && answered(k) {
                    histogram!(metric::STORAGE_DURATION).record(took);
                }
            }
        }
        match result {
            Ok(attempt) => {
                if let Some(r) = readiness {
                    r.write_committed();
                }
                for (&i, written) in part.iter().zip(attempt.written) {
                    match written {
                        Some(w) => answer(i, Ok(w)),
                        None => left_out.push(i),
                    }
                }
                locked.extend(attempt.locked);
            }
            Err(e) if split => {
                tracing::warn!(items = part.len(), error = %e, "batch refused; writing it in halves to isolate the cause");
                let (first, second) = part.split_at(part.len() / 2);
                todo.push(second.to_vec());
                todo.push(first.to_vec());
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
                    tracing::error!(items = part.len(), error = %e, "storage unavailable; answering 503 so Singapay retries");
                } else {
                    tracing::error!(error = %e, "storing a delivery failed");
                }
                if let (Some(r), Some(refusal)) = (readiness, e.refusal()) {
                    r.write_failed(refusal);
                }
                for i in part {
                    answer(i, Err(e.clone()));
                }
            }
        }
    }
    left_out.sort_unstable();
    (left_out, locked)
}

/// The items at `part` (ascending indices): borrowed when contiguous (a whole batch, a
/// half), copied otherwise (the rare items left out of a transaction for a locked row).
fn subset<'a>(writes: &'a [Write], part: &[usize]) -> Cow<'a, [Write]> {
    match (part.first(), part.last()) {
        (Some(&first), Some(&last)) if last - first + 1 == part.len() => Cow::Borrowed(&writes[first..=last]),
        _ => Cow::Owned(part.iter().map(|&i| writes[i].clone()).collect()),
    }
}

/// Contention (a concurrent writer got there first, a deadlock) and broken connections are
/// retried at once, a few times; anything else is the caller's to handle.
async fn write_with_retries(pool: &PgPool, writes: &[Write]) -> Result<Attempt, StoreError> {
    const ATTEMPTS: usize = 4;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match write_once(pool, writes).await {
            Ok(written) => return Ok(written),
            Err(BatchError::Db(e)) if store::history::is_missing_partition(&e) => {
                // No partition holds today (maintenance has not run for days, the clock
                // jumped, a partition was dropped by hand): create it and write again; if
                // that fails, the callbacks are answered 503 and Singapay sends them again.
                metrics::counter!(crate::telemetry::metric::PARTITIONS_MISSING).increment(1);
                if attempt >= ATTEMPTS {
                    return Err(StoreError::from(e));
                }
                match store::history::ensure_ahead(pool).await {
                    Ok(created) => {
                        tracing::warn!(error = %e, created, "no history partition for the day: created, batch retried");
                    }
                    Err(failed) => {
                        tracing::error!(error = %e, cause = %failed,
                            "no history partition for the day and creating it failed: callbacks answered 503");
                        return Err(StoreError::from(e));
                    }
                }
            }
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
                    // operator's pending step but a schema changed by hand. Every write
                    // meets it: 503, not split.
                    if store::migrations_applied(pool).await.unwrap_or(false) {
                        return Err(StoreError::Refused(Refusal::Failing, why.clone()));
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

async fn write_once(pool: &PgPool, writes: &[Write]) -> Result<Attempt, BatchError> {
    static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut conn = pool.acquire().await?;
    if BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(store::REPREPARE_EVERY) {
        sqlx::Connection::clear_cached_statements(&mut *conn).await?;
    }
    let result = async {
        let mut tx = sqlx::Connection::begin_with(&mut *conn, store::BEGIN_BATCH).await?;
        let written = store::write_available(&mut tx, writes).await?;
        tx.commit().await?;
        Ok(written)
    }
    .await;
    // A connection that failed (Postgres restarted, network cut) or whose session is
    // read-only (a primary since demoted) is not given back to the pool: the next attempt
    // opens a new one instead of failing on the same socket.
    if let Err(BatchError::Db(e)) = &result {
        if store::is_stale_connection(e) {
            conn.close_on_drop();
        }
    }
    result
}
