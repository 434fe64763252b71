//! The queue when it is big and when it is behind: claim latency and drain rate with
//! 200,000 available events on top of a large number of finished ones.
//!
//!   cargo bench --bench queue                                   # 0 and 1,000,000 finished
//!   BENCH_QUEUE_FINISHED=0,1000000,10000000 cargo bench --bench queue
//!
//! For each size, a throwaway durable cluster (fsync on) is filled with set-based SQL under
//! the schema as it was before `20261124000001_event_queue` (100,000 transactions, each
//! with its share of finished versions), and 200,000 events are queued on top (two new
//! versions per transaction, so the per-transaction order check has work to do). Then the
//! rest of the migrations run, timed: the event-queue migration holds an exclusive lock on
//! the events table from its first statement to its commit, so its duration is that
//! lock's, with a 200,000-event backlog to move. Then, each time on 200,000 queued events:
//!
//! - 100 claims of 100 by one consumer, each acknowledged with `ack_events`: claim p50/p99
//!   as the client sees it (with the commit and a round trip), and 100 more under
//!   `EXPLAIN ANALYZE`: the time Postgres spends executing one; then that consumer drains
//!   the remaining 180,000 the same way: events/s;
//! - 4 consumers, claim 100 + `ack_events`, until the queue is empty: events/s;
//! - 4 consumers, claim 100 + `ack_event` per event (the previously documented loop).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use singapay_webhooks::embedded_pg;
use singapay_webhooks::queue;
use singapay_webhooks::store::MIGRATOR;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const TRANSACTIONS: i64 = 100_000;
const LEASE: Duration = Duration::from_secs(300);
/// The first migration this benchmark measures; the table is filled under the ones before.
const MIGRATION: i64 = 20261124000001;

/// `per_transaction` finished versions for each of the transactions, in chunks.
async fn fill_finished(db: &PgPool, per_transaction: i64) {
    sqlx::query(
        "WITH d AS (
            INSERT INTO singapay.deliveries
                (content_sha256, webhook_type, outcome, credential, signature_form, signed_at,
                 request_path, x_signature, access_token, body)
            VALUES (sha256('queue bench'), 'disbursement', 'batch', 'bench', 'raw', now(), '/bench', '', '', '')
            RETURNING id)
         INSERT INTO singapay.transactions (transaction_key, product, status, version, first_delivery_id, last_delivery_id)
         SELECT 'disbursement:bench-' || g, 'disbursement', 'succeeded', $2, d.id, d.id FROM generate_series(1, $1) g, d",
    )
    .bind(TRANSACTIONS)
    .bind(per_transaction.max(1) as i32)
    .execute(db)
    .await
    .unwrap();
    let chunk = 10_000;
    let mut from = 1;
    while per_transaction > 0 && from <= TRANSACTIONS {
        let to = (from + chunk - 1).min(TRANSACTIONS);
        sqlx::query(&format!(
            "INSERT INTO singapay.transaction_events
                 (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code,
                  transaction_status_code, payload, state, attempts, finished_at, created_at, available_at)
             SELECT gen_random_uuid(), 'disbursement:bench-' || g, v, 'disbursement', 'pending', 'succeeded',
                    'SP000', '00', {PAYLOAD}, 'done', 1, now(), now(), now()
               FROM generate_series($1, $2) g, generate_series(1, $3) v
              ORDER BY v, g"
        ))
        .bind(from)
        .bind(to)
        .bind(per_transaction as i32)
        .execute(db)
        .await
        .unwrap();
        from = to + 1;
    }
}

/// An event document of the size intake writes.
const PAYLOAD: &str = "jsonb_build_object('event_id', gen_random_uuid(), 'transaction_key', 'disbursement:bench-' || g,
    'product', 'disbursement', 'version', v, 'from_status', 'pending', 'to_status', 'succeeded',
    'response_code', 'SP000', 'transaction_status_code', '00', 'amount', '250000.00', 'currency', 'IDR',
    'singapay_id', lpad(g::text, 31, '0'), 'merchant_reference', 'BENCH-' || g, 'delivery_id', NULL,
    'processed_at', now(), 'webhook_type', 'disbursement')";

/// Two new versions for every transaction: 200,000 available events. Before the migration
/// they go into the events table as it was; after it, into the log and the queue, as intake
/// writes them.
async fn queue_more(db: &PgPool, migrated: bool) {
    let insert = if migrated {
        "WITH l AS (
            INSERT INTO singapay.event_log
                (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code,
                 transaction_status_code, payload)
            SELECT * FROM new_events
            RETURNING id, transaction_key, version)
         INSERT INTO singapay.event_queue (id, transaction_key, version) SELECT * FROM l"
    } else {
        "INSERT INTO singapay.transaction_events
             (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code,
              transaction_status_code, payload)
         SELECT * FROM new_events"
    };
    let mut tx = db.begin().await.unwrap();
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE new_events ON COMMIT DROP AS
         WITH t AS (
            UPDATE singapay.transactions SET version = version + 2 WHERE transaction_key LIKE 'disbursement:bench-%'
            RETURNING transaction_key, version)
         SELECT gen_random_uuid() AS event_id, t.transaction_key, v AS version, 'disbursement' AS webhook_type,
                'pending' AS from_status, 'succeeded' AS to_status, 'SP000' AS response_code,
                '00' AS transaction_status_code, {PAYLOAD} AS payload
           FROM t, LATERAL (VALUES (t.version - 1), (t.version)) AS x(v),
                LATERAL (SELECT split_part(t.transaction_key, '-', 2)::int AS g) AS k
          ORDER BY t.transaction_key, v"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(insert).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let analyze = if migrated {
        "ANALYZE singapay.event_log, singapay.event_queue"
    } else {
        "ANALYZE singapay.transaction_events"
    };
    sqlx::query(analyze).execute(db).await.unwrap();
}

struct Drain {
    per_sec: f64,
    claim_p99_ms: f64,
}

/// `consumers` drain the queue: claim 100, then acknowledge the batch in one call or one
/// event at a time.
async fn drain(pool: &PgPool, consumers: usize, batch_ack: bool) -> Drain {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.event_queue WHERE state = 'available'")
        .fetch_one(pool)
        .await
        .unwrap();
    let acked = Arc::new(AtomicUsize::new(0));
    let claims = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..consumers)
        .map(|c| {
            let (pool, acked, claims) = (pool.clone(), acked.clone(), claims.clone());
            tokio::spawn(async move {
                let name = format!("bench-{c}");
                let mut mine = Vec::new();
                while (acked.load(Ordering::Relaxed) as i64) < total {
                    let t = Instant::now();
                    let events = queue::claim(&pool, &name, 100, LEASE).await.unwrap();
                    mine.push(t.elapsed().as_secs_f64() * 1000.0);
                    if events.is_empty() {
                        // The rest is held by others, or waits for an earlier version.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
                    if batch_ack {
                        let done = queue::ack_many(&pool, &ids, &name).await.unwrap();
                        assert_eq!(done.len(), ids.len(), "every live lease is acknowledged");
                    } else {
                        for id in &ids {
                            assert!(queue::ack(&pool, *id, &name).await.unwrap());
                        }
                    }
                    acked.fetch_add(ids.len(), Ordering::Relaxed);
                }
                claims.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let mut claims = claims.lock().unwrap().clone();
    claims.sort_by(f64::total_cmp);
    Drain { per_sec: acked.load(Ordering::Relaxed) as f64 / secs, claim_p99_ms: common::percentile(&claims, 0.99) }
}

/// 100 claims of 100 by one consumer on one connection, each acknowledged in one call, timed
/// by the client; then 100 more under `EXPLAIN ANALYZE`, timed by Postgres (execution,
/// without the commit). Returns (client p50, client p99, Postgres p50, Postgres p99).
async fn claim_latency(pool: &PgPool) -> [f64; 4] {
    let mut conn = pool.acquire().await.unwrap();
    let mut client = Vec::new();
    let mut server = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let ids: Vec<i64> = if i % 2 == 0 {
            let events = queue::claim(pool, "latency", 100, LEASE).await.unwrap();
            client.push(t.elapsed().as_secs_f64() * 1000.0);
            events.iter().map(|e| e.id).collect()
        } else {
            let plan: Vec<String> = sqlx::query_scalar(
                "EXPLAIN (ANALYZE, TIMING OFF) SELECT * FROM singapay.claim_events('latency', 100, '5 minutes')",
            )
            .fetch_all(&mut *conn)
            .await
            .unwrap();
            let ms = plan.iter().find_map(|l| l.strip_prefix("Execution Time: ")?.strip_suffix(" ms")?.parse().ok());
            server.push(ms.expect("EXPLAIN ANALYZE reports the execution time"));
            sqlx::query_scalar("SELECT id FROM singapay.event_queue WHERE state = 'running' AND locked_by = 'latency'")
                .fetch_all(&mut *conn)
                .await
                .unwrap()
        };
        assert_eq!(ids.len(), 100);
        assert_eq!(queue::ack_many(pool, &ids, "latency").await.unwrap().len(), 100);
    }
    client.sort_by(f64::total_cmp);
    server.sort_by(f64::total_cmp);
    [
        common::percentile(&client, 0.5),
        common::percentile(&client, 0.99),
        common::percentile(&server, 0.5),
        common::percentile(&server, 0.99),
    ]
}

fn main() {
    let sizes: Vec<i64> = std::env::var("BENCH_QUEUE_FINISHED")
        .unwrap_or_else(|_| "0,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_QUEUE_FINISHED: comma-separated counts"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    for finished in sizes {
        let bench = common::BenchCluster::start("singapay-queue-bench-");
        let cluster = bench.cluster.clone();
        let dir = bench.path();
        let row = rt.block_on(async {
            embedded_pg::ensure_database(&cluster, "bench").await.unwrap();
            let pool = PgPoolOptions::new().max_connections(6).connect(&cluster.url("bench")).await.unwrap();
            common::migrate_before(&pool, &dir.join("old-migrations"), MIGRATION).await;
            let filled = Instant::now();
            fill_finished(&pool, finished / TRANSACTIONS).await;
            sqlx::query("VACUUM ANALYZE singapay.transaction_events").execute(&pool).await.unwrap();
            sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
            eprintln!("{finished} finished events written in {:.0} s", filled.elapsed().as_secs_f64());
            // The migration moves the unfinished events: give it a backlog to move.
            queue_more(&pool, false).await;
            let t = Instant::now();
            MIGRATOR.run(&pool).await.unwrap();
            let migration_ms = t.elapsed().as_secs_f64() * 1000.0;

            let latency = claim_latency(&pool).await;
            // What the latency run left (180,000 events).
            let one = drain(&pool, 1, true).await;
            queue_more(&pool, true).await;
            let four = drain(&pool, 4, true).await;
            queue_more(&pool, true).await;
            let single_acks = drain(&pool, 4, false).await;
            pool.close().await;
            (finished, migration_ms, latency, four, one, single_acks)
        });
        rows.push(row);
    }
    println!("\nqueue benchmark: 200,000 available events per drain, durable PostgreSQL (fsync on), same machine");
    println!(
        "| {:>10} | {:>9} | {:>15} | {:>15} | {:>22} | {:>22} | {:>22} |",
        "finished",
        "migrate",
        "claim p50/p99",
        "in PG p50/p99",
        "4 × batch ack: ev/s",
        "1 × batch ack: ev/s",
        "4 × ack_event: ev/s"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(12),
        "-".repeat(11),
        "-".repeat(17),
        "-".repeat(17),
        "-".repeat(24),
        "-".repeat(24),
        "-".repeat(24)
    );
    for (finished, migration_ms, [p50, p99, pg50, pg99], four, one, single) in rows {
        let drain = |d: &Drain| format!("{:.0} (p99 {:.1} ms)", d.per_sec, d.claim_p99_ms);
        println!(
            "| {:>10} | {:>6.0} ms | {:>5.2}/{:>5.2} ms | {:>5.2}/{:>5.2} ms | {:>22} | {:>22} | {:>22} |",
            finished,
            migration_ms,
            p50,
            p99,
            pg50,
            pg99,
            drain(&four),
            drain(&one),
            drain(&single)
        );
    }
}
