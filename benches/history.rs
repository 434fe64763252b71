//! Retention by day on a large history: what retiring one day costs (time, WAL) and what it
//! does to callbacks and consumers running at the same time, at two history sizes, side by
//! side with the row-by-row DELETE path it replaces (on an identical copy).
//!
//!   cargo bench --bench history                      # 10 M then 30 M history rows, 60 days
//!   BENCH_HISTORY_ROWS=200000 BENCH_HISTORY_DAYS=10 BENCH_HISTORY_WINDOW_SECS=5 cargo bench --bench history
//!
//! Settings (environment):
//! - `BENCH_HISTORY_ROWS` (default `10000000,30000000`): history sizes, ascending: rows of
//!   `deliveries` plus `event_log`. The first is spread over `BENCH_HISTORY_DAYS` days.
//! - `BENCH_HISTORY_DAYS` (60): daily partitions of the first size (today-64 … today-5).
//! - `BENCH_HISTORY_GROW` (`rows`): how a larger size is reached: `rows` tops up the days
//!   already there (more rows per day); `days` adds older days of the same size (more days).
//! - `BENCH_HISTORY_RATE` (1000): callbacks per second during the measurements.
//! - `BENCH_HISTORY_WINDOW_SECS` (30): length of each measured window.
//! - `BENCH_HISTORY_SKIP_DELETE=1`: skips the DELETE path (part 3).
//! - `BENCH_HISTORY_MIN_FREE_GB`: free disk required before filling (default 1.5 GB per
//!   million rows of the largest size: 45 GB for 30 M).
//!
//! The cluster: throwaway, durable (fsync on), shared_buffers=2GB, max_wal_size=8GB,
//! checkpoint_timeout=30min (no checkpoint inside a measurement), pg_stat_statements loaded.
//!
//! The history (set-based SQL, one statement per day and chunk): each transaction is a
//! payout's lifecycle inside its day: two deliveries (pending, then succeeded; body ≈ 600
//! bytes of JSON, payload its jsonb), two finished (`done`) events (payload ≈ 350 bytes) and
//! its `transactions` row (final `succeeded`, updated within the day). Per 2,000
//! transactions one was updated yesterday and one is still open (`initiated` → `pending`),
//! so retirement keeps ≈ 0.1 % of a day; the first five transactions of each day end in a
//! `dead` event. After each fill: VACUUM ANALYZE and a CHECKPOINT.
//!
//! The measurement, at each size: the `serve` binary (release, defaults) receives signed
//! callbacks (new disbursements, distinct bodies) from an open-loop pacer at
//! `BENCH_HISTORY_RATE`/s over 64 keep-alive connections (latency counted from each
//! request's scheduled instant, so a stall is not hidden by the pacer waiting for it), and
//! 4 consumers claim (`claim_events`, 100, 5 minutes) and acknowledge (`ack_events`) in a
//! loop (10 ms pause when a claim comes back short). Three windows of the same length: without
//! retention, with retention (`store::history::retire` with a cutoff just past the end of
//! the oldest day, called a quarter into the window: exactly one day), without retention
//! again (noise). WAL: `pg_current_wal_lsn()` around the retire call (other traffic
//! included), the WAL of retire's own statements (pg_stat_statements, retire connects as a
//! role of its own), and the retention window's WAL less the windows' without it.
//!
//! The DELETE path: a second database on the schema before `20261208000001`, filled by the
//! same generator at the first size (same rows per day); the history migrations are
//! run and timed (the upgrade procedure on that install); then `store::prune` (batches of
//! 1,000) deletes the oldest day from the `_legacy` partitions, timed with its WAL, and the
//! VACUUM that the deletes leave to do is timed too. The database is dropped afterwards.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate, Utc};
use futures::StreamExt;
use singapay_webhooks::embedded_pg::{self, free_port, Cluster};
use singapay_webhooks::store::{self, history, MIGRATOR};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::{PATH, SECRET};
/// The history migrations: partitioning (three), then where transactions' histories begin
/// (a column and two indexes built concurrently).
const HISTORY_MIGRATIONS: [i64; 6] =
    [20261208000001, 20261208000002, 20261208000003, 20261209000001, 20261209000002, 20261209000003];
/// Most transactions one fill statement writes.
const CHUNK: i64 = 25_000;
/// History rows per transaction: two deliveries, two events.
const ROWS_PER_TX: i64 = 4;
const CONNECTIONS: usize = 64;
const CONSUMERS: usize = 4;

struct Settings {
    sizes: Vec<i64>,
    days: i64,
    grow_days: bool,
    rate: f64,
    window: Duration,
    skip_delete: bool,
    min_free_gb: f64,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let sizes: Vec<i64> = var("BENCH_HISTORY_ROWS")
            .unwrap_or_else(|| "10000000,30000000".into())
            .split(',')
            .map(|s| s.trim().replace('_', "").parse().expect("BENCH_HISTORY_ROWS: comma-separated row counts"))
            .collect();
        assert!(!sizes.is_empty() && sizes.windows(2).all(|w| w[0] < w[1]), "BENCH_HISTORY_ROWS: ascending sizes");
        let days: i64 = var("BENCH_HISTORY_DAYS").map_or(60, |v| v.parse().expect("BENCH_HISTORY_DAYS: a number"));
        assert!(days >= 2, "BENCH_HISTORY_DAYS: at least 2");
        let grow_days = match var("BENCH_HISTORY_GROW").as_deref() {
            None | Some("rows") => false,
            Some("days") => true,
            Some(other) => panic!("BENCH_HISTORY_GROW: rows or days, not {other}"),
        };
        let rate: f64 = var("BENCH_HISTORY_RATE").map_or(1000.0, |v| v.parse().expect("BENCH_HISTORY_RATE: a number"));
        let window = var("BENCH_HISTORY_WINDOW_SECS").map_or(30.0, |v| v.parse().expect("BENCH_HISTORY_WINDOW_SECS"));
        let largest = *sizes.last().unwrap() as f64;
        let min_free_gb = var("BENCH_HISTORY_MIN_FREE_GB")
            .map_or(1.5 * largest / 1e6, |v| v.parse().expect("BENCH_HISTORY_MIN_FREE_GB: a number"));
        Settings {
            sizes,
            days,
            grow_days,
            rate,
            window: Duration::from_secs_f64(window),
            skip_delete: var("BENCH_HISTORY_SKIP_DELETE").is_some_and(|v| v != "0"),
            min_free_gb,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The history generator.

/// Transactions of one day, numbered `g` from `from` to `to` (inclusive): the payout
/// lifecycles described in the header, in one statement. `partitioned`: the schema has
/// `stored_at` (set to the delivery's instant); before the upgrade it has not.
fn fill_sql(partitioned: bool) -> String {
    let (stored_col, stored_val) = if partitioned { (", stored_at", ", at") } else { ("", "") };
    let (ev_stored_col, ev_stored_val) = if partitioned { (", stored_at", ", d.received_at") } else { ("", "") };
    // Where each transaction's history begins: its first delivery's day.
    let (from_col, from_val) = if partitioned { (", history_from", ", min(d.received_at)") } else { ("", "") };
    format!(
        r#"WITH g AS (
    SELECT g, $2::bigint + g AS n,
           $1::timestamptz + (g * 0.6180339887498949 - floor(g * 0.6180339887498949)) * interval '86000 seconds' AS t0
      FROM generate_series($3::bigint, $4::bigint) g
), s AS (
    SELECT g.g, g.n, k AS step, g.t0 + (k - 1) * interval '60 seconds' AS at,
           CASE WHEN g.g % 2000 = 1000 THEN (ARRAY['initiated', 'pending'])[k]
                ELSE (ARRAY['pending', 'succeeded'])[k] END AS status,
           CASE WHEN g.g % 2000 <> 1000 AND k = 2 THEN '00' ELSE '09' END AS code
      FROM g, generate_series(1, 2) k
), b AS (
    SELECT s.*, 'disbursement:HB' || s.n AS key,
           convert_to(format('{{"response_code":"SP000","response_message":"Successfully","event":"disbursement","data":{{"transaction_id":"%s","reference_number":"HB-%s","transaction_status":{{"code":"%s","desc":"%s"}},"post_timestamp":"%s","processed_timestamp":"%s","bank":{{"code":"014","name":"BCA","account_name":"CV HB %s","account_number":"%s"}},"gross_amount":{{"currency":"IDR","value":"%s.00"}},"net_amount":{{"currency":"IDR","value":"%s.00"}}}}}}',
                   lpad(s.n::text, 31, '0'), s.n, s.code, initcap(s.status),
                   (extract(epoch FROM s.at) * 1000)::bigint, (extract(epoch FROM s.at) * 1000)::bigint + 1500,
                   s.n % 997, 1000000000000 + s.n % 8999999999, 252500 + s.n % 100000, 250000 + s.n % 100000), 'UTF8') AS body
      FROM s
), d AS (
    INSERT INTO singapay.deliveries
        (received_at, last_received_at, content_sha256, webhook_type, event, transaction_key, response_code,
         response_message, response_class, transaction_status_code, transaction_status_desc, status, outcome,
         credential, signature_form, signed_at, x_timestamp, request_path, request_id, x_signature, access_token,
         access_token_sha256, body, payload{stored_col})
    SELECT at, at, sha256(body), 'disbursement', 'disbursement', key, 'SP000', 'Successfully', 'success', code,
           initcap(status), status, 'applied', 'bench', 'php', at, extract(epoch FROM at)::bigint::text, '{PATH}',
           n || '-' || step, encode(sha512(body), 'hex'), '', sha256(convert_to('token-' || n, 'UTF8')), body,
           convert_from(body, 'UTF8')::jsonb{stored_val}
      FROM b
    RETURNING id, transaction_key, request_id, received_at, status, transaction_status_code
), t AS (
    INSERT INTO singapay.transactions
        (transaction_key, product, singapay_id, merchant_reference, status, transaction_status_code, last_response_code,
         amount, currency, version, first_delivery_id, last_delivery_id, processed_at, created_at, updated_at{from_col})
    SELECT d.transaction_key, 'disbursement', lpad(split_part(d.request_id, '-', 1), 31, '0'),
           'HB-' || split_part(d.request_id, '-', 1),
           max(d.status) FILTER (WHERE split_part(d.request_id, '-', 2) = '2'),
           max(d.transaction_status_code) FILTER (WHERE split_part(d.request_id, '-', 2) = '2'), 'SP000', 250000.00,
           'IDR', 2, min(d.id) FILTER (WHERE split_part(d.request_id, '-', 2) = '1'),
           min(d.id) FILTER (WHERE split_part(d.request_id, '-', 2) = '2'), max(d.received_at), min(d.received_at),
           CASE WHEN (split_part(d.request_id, '-', 1)::bigint - $2) % 2000 = 0 THEN now() - interval '1 day'
                ELSE max(d.received_at) END{from_val}
      FROM d
     GROUP BY d.transaction_key, split_part(d.request_id, '-', 1)
    RETURNING 1
), e AS (
    INSERT INTO singapay.event_log
        (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code,
         transaction_status_code, delivery_id, payload, created_at, state, attempts, max_attempts, available_at,
         locked_by, locked_until, last_error, finished_at{ev_stored_col})
    SELECT d.eid, d.transaction_key, d.step, 'disbursement', d.prev, d.status, 'SP000', d.transaction_status_code,
           d.id,
           jsonb_build_object('event_id', d.eid, 'transaction_key', d.transaction_key, 'version', d.step,
               'from_status', d.prev, 'to_status', d.status, 'singapay_id', d.n::text,
               'amount', '250000.00', 'currency', 'IDR',
               'response_code', 'SP000', 'transaction_status_code', d.transaction_status_code,
               'occurred_at', d.received_at, 'delivery_id', d.id),
           d.received_at, CASE WHEN d.dead THEN 'dead' ELSE 'done' END, CASE WHEN d.dead THEN 25 ELSE 1 END, 25,
           d.received_at, 'consumer-' || d.n % 4, NULL,
           CASE WHEN d.dead THEN 'bench: the consumer gave up (HTTP 500 from the ledger)' END,
           d.received_at + interval '1 second'{ev_stored_val}
      FROM (SELECT d.*, gen_random_uuid() AS eid, split_part(d.request_id, '-', 1)::bigint AS n,
                   split_part(d.request_id, '-', 2)::int AS step,
                   CASE WHEN split_part(d.request_id, '-', 2) = '1' THEN NULL
                        WHEN d.status = 'pending' THEN 'initiated' ELSE 'pending' END AS prev,
                   split_part(d.request_id, '-', 2) = '2' AND split_part(d.request_id, '-', 1)::bigint - $2 <= 5 AS dead
              FROM d) d
    RETURNING 1
)
SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM e) AS rows, (SELECT count(*) FROM t) AS transactions"#
    )
}

/// One day's share of a fill: transactions `from` to `to` of `day`.
#[derive(Clone, Copy)]
struct Slice {
    day: NaiveDate,
    from: i64,
    to: i64,
}

/// The transactions of each day so far (the numbering goes on from there).
type Days = BTreeMap<NaiveDate, i64>;

/// Writes `slices` with two connections at once; the history rows written.
async fn fill(pool: &PgPool, slices: Vec<Slice>, partitioned: bool, label: &str) -> i64 {
    let total: i64 = slices.iter().map(|s| (s.to - s.from + 1) * ROWS_PER_TX).sum();
    if total == 0 {
        return 0;
    }
    if partitioned {
        let first = slices.iter().map(|s| s.day).min().unwrap();
        let last = slices.iter().map(|s| s.day).max().unwrap();
        history::ensure_partitions(pool, first, last).await.expect("ensure_partitions");
    }
    let sql = fill_sql(partitioned);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut chunks = Vec::new();
    for s in slices {
        let mut from = s.from;
        while from <= s.to {
            let to = (from + CHUNK - 1).min(s.to);
            chunks.push(Slice { day: s.day, from, to });
            from = to + 1;
        }
    }
    let printed = Arc::new(Mutex::new(Instant::now()));
    // A checkpoint every GB of WAL, so that the fill does not keep max_wal_size of it on disk.
    let checkpointed = Arc::new(AtomicI64::new(lsn(pool).await));
    // Stops short (measuring what is there) rather than fill the disk.
    let short = Arc::new(AtomicBool::new(false));
    let dir = std::env::temp_dir();
    futures::stream::iter(chunks)
        .map(|c| {
            let (pool, sql, done, printed) = (pool.clone(), sql.clone(), done.clone(), printed.clone());
            let (checkpointed, short, dir) = (checkpointed.clone(), short.clone(), dir.clone());
            async move {
                let start = c.day.and_hms_opt(0, 0, 0).unwrap().and_utc();
                if short.load(Ordering::Relaxed) {
                    return;
                }
                // Numbers unique across days: the day's ordinal, then the transaction.
                let base = i64::from(c.day.num_days_from_ce()) * 10_000_000;
                let row = sqlx::query(&sql)
                    .bind(start)
                    .bind(base)
                    .bind(c.from)
                    .bind(c.to)
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("filling {}: {e}", c.day));
                let rows: i64 = row.get("rows");
                let free = free_gb(&dir);
                if free < 3.0 && !short.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "  {label}: STOPPED SHORT, {free:.1} GB free on {}: measuring what is there",
                        dir.display()
                    );
                }
                let at = lsn(&pool).await;
                let last = checkpointed.load(Ordering::Relaxed);
                if at - last > 1_000_000_000
                    && checkpointed.compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
                }
                let now = done.fetch_add(rows as u64, Ordering::Relaxed) as i64 + rows;
                let mut last = printed.lock().unwrap();
                if last.elapsed() >= Duration::from_secs(20) || now == total {
                    *last = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "  {label}: {now} / {total} rows ({:.0} %), {:.0} s, {:.0} rows/s (last: {} g {}..{})",
                        100.0 * now as f64 / total as f64,
                        secs,
                        now as f64 / secs,
                        c.day,
                        c.from,
                        c.to
                    );
                }
            }
        })
        .buffer_unordered(2)
        .collect::<Vec<()>>()
        .await;
    done.load(Ordering::Relaxed) as i64
}

fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The slices that bring `days` (the transactions per day so far) to `target` history rows.
/// `None` for `days` empty: the first fill, `first_days` days ending 5 days ago.
/// `floor`: the oldest day filled so far, retired or not (a retired day's transactions are
/// still stored: new days go before it).
fn plan(
    days: &mut Days,
    target: i64,
    first_days: i64,
    grow_days: bool,
    today: NaiveDate,
    floor: Option<NaiveDate>,
) -> Vec<Slice> {
    let present: i64 = days.values().sum::<i64>() * ROWS_PER_TX;
    let wanted_tx = ceil_div((target - present).max(0), ROWS_PER_TX);
    let mut slices = Vec::new();
    if days.is_empty() || grow_days {
        // New days of the first size's length, older than those there.
        let per_day = if days.is_empty() {
            ceil_div(ceil_div(target, first_days), ROWS_PER_TX)
        } else {
            *days.values().next_back().unwrap()
        };
        let mut day = days.keys().next().copied().unwrap_or(today - chrono::Days::new(5) + chrono::Days::new(1));
        if let Some(floor) = floor {
            day = day.min(floor);
        }
        let mut left = wanted_tx;
        while left > 0 {
            day = day - chrono::Days::new(1);
            let n = per_day.min(left);
            slices.push(Slice { day, from: 1, to: n });
            days.insert(day, n);
            left -= n;
        }
    } else {
        // The same days, each topped up to the same share.
        let count = days.len() as i64;
        let total_tx = days.values().sum::<i64>() + wanted_tx;
        let share = ceil_div(total_tx, count);
        let mut left = wanted_tx;
        for (day, n) in days.iter_mut() {
            let more = (share - *n).clamp(0, left);
            if more > 0 {
                slices.push(Slice { day: *day, from: *n + 1, to: *n + more });
                *n += more;
                left -= more;
            }
        }
    }
    slices.sort_by_key(|s| s.day);
    slices
}

async fn settle(pool: &PgPool, tables: &str) {
    let t = Instant::now();
    sqlx::query(&format!("VACUUM (ANALYZE) {tables}")).execute(pool).await.unwrap();
    sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
    eprintln!("  VACUUM ANALYZE + CHECKPOINT: {:.0} s", t.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// Load: signed callbacks, consumers.

/// A payout that succeeded just now (Singapay stamps a callback with its own time, epoch
/// milliseconds for disbursements).
fn disbursement(n: u64) -> String {
    let processed = Utc::now().timestamp_millis();
    let posted = processed - 2000;
    format!(
        r#"{{"response_code":"SP000","response_message":"Successfully","event":"disbursement","data":{{"transaction_id":"{n:031}","reference_number":"LIVE-{n}","transaction_status":{{"code":"00","desc":"Success"}},"post_timestamp":"{posted}","processed_timestamp":"{processed}","bank":{{"code":"014","name":"BCA","account_name":"CV BENCH","account_number":"1000123456789"}},"gross_amount":{{"currency":"IDR","value":"252500.00"}},"fee":{{"currency":"IDR","value":"2500"}},"net_amount":{{"currency":"IDR","value":"250000.00"}},"balance_after":{{"currency":"IDR","value":"4817300.00"}},"notes":"bench"}}}}"#
    )
}

/// A complete HTTP/1.1 request, signed as Singapay signs (PHP's canonical form), now.
fn request(n: u64) -> Vec<u8> {
    common::signed_request(&disbursement(n), &format!("live{n}"), &Utc::now().timestamp().to_string())
}

/// (seconds since the load's start, milliseconds, answered 200).
type Samples = Arc<Mutex<Vec<(f64, f64, bool)>>>;

/// What runs during a measurement: the callbacks and the consumers.
struct Traffic {
    start: Instant,
    stop: Arc<AtomicBool>,
    intake: Samples,
    claims: Samples,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Callbacks at `rate`/s from `first` on (open loop: request i is due at start + i/rate,
    /// its latency counted from then), and the consumers.
    fn start(port: u16, consumers: &PgPool, rate: f64, first: u64) -> Traffic {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let intake: Samples = Arc::default();
        let claims: Samples = Arc::default();
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let (stop, next, intake) = (stop.clone(), next.clone(), intake.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<TcpStream> = None;
                let mut buf = Vec::with_capacity(8192);
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let req = request(first + i);
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut ok = false;
                    for _ in 0..3 {
                        if conn.is_none() {
                            let c = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
                            c.set_nodelay(true).unwrap();
                            conn = Some(c);
                        }
                        let c = conn.as_mut().unwrap();
                        let sent = async {
                            c.write_all(&req).await?;
                            common::response(c, &mut buf).await
                        };
                        match sent.await {
                            Ok(answer) => {
                                ok = answer;
                                break;
                            }
                            Err(_) => conn = None,
                        }
                    }
                    let ms = due.elapsed().as_secs_f64() * 1000.0;
                    mine.push(((due - start).as_secs_f64(), ms, ok));
                }
                intake.lock().unwrap().extend(mine);
            }));
        }
        for c in 0..CONSUMERS {
            let (stop, claims, pool) = (stop.clone(), claims.clone(), consumers.clone());
            tasks.push(tokio::spawn(async move {
                let name = format!("history-bench-{c}");
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let rows = sqlx::query("SELECT * FROM singapay.claim_events($1, 100, '5 minutes')")
                        .bind(&name)
                        .fetch_all(&pool)
                        .await;
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let rows = match rows {
                        Ok(rows) => rows,
                        Err(e) => {
                            eprintln!("  claim_events failed: {e}");
                            mine.push(((t - start).as_secs_f64(), ms, false));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    mine.push(((t - start).as_secs_f64(), ms, true));
                    let ids: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>("id")).collect();
                    if !ids.is_empty() {
                        let acked: Vec<i64> = sqlx::query_scalar("SELECT * FROM singapay.ack_events($1, $2)")
                            .bind(&ids)
                            .bind(&name)
                            .fetch_all(&pool)
                            .await
                            .expect("ack_events");
                        assert_eq!(acked.len(), ids.len(), "every claimed event is acknowledged");
                    }
                    if ids.len() < 100 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                claims.lock().unwrap().extend(mine);
            }));
        }
        Traffic { start, stop, intake, claims, tasks }
    }

    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    async fn finish(self) -> (Vec<(f64, f64, bool)>, Vec<(f64, f64, bool)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let intake = std::mem::take(&mut *self.intake.lock().unwrap());
        let claims = std::mem::take(&mut *self.claims.lock().unwrap());
        (intake, claims)
    }
}

/// p99 (and count, failures, max) of the samples in [from, to).
#[derive(Clone, Copy, Default)]
struct Latency {
    count: usize,
    failed: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn latency(samples: &[(f64, f64, bool)], from: f64, to: f64) -> Latency {
    let inside: Vec<&(f64, f64, bool)> = samples.iter().filter(|s| s.0 >= from && s.0 < to).collect();
    let mut ms: Vec<f64> = inside.iter().map(|s| s.1).collect();
    ms.sort_by(f64::total_cmp);
    Latency {
        count: inside.len(),
        failed: inside.iter().filter(|s| !s.2).count(),
        p50: common::percentile(&ms, 0.5),
        p99: common::percentile(&ms, 0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

async fn lsn(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8").fetch_one(pool).await.unwrap()
}

/// Samples, every 20 ms until `watching` is cleared, the sessions waiting for a lock and the
/// session blocking each: (waiter's query, blocker's query) → times seen.
async fn lock_waits(pool: PgPool, watching: Arc<AtomicBool>) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    while watching.load(Ordering::Relaxed) {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT regexp_replace(left(a.query, 90), '\\s+', ' ', 'g'),
                    coalesce((SELECT regexp_replace(left(b.query, 90), '\\s+', ' ', 'g') || ' (' || b.state || ')'
                                FROM pg_stat_activity b WHERE b.pid = (pg_blocking_pids(a.pid))[1]), '?')
               FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock'",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        for r in rows {
            *seen.entry(r).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// retire's statements as pg_stat_statements saw them (its role's), slowest first.
async fn retire_statements(pool: &PgPool) -> Vec<(f64, i64, f64, String)> {
    sqlx::query_as(
        "SELECT total_exec_time, calls, wal_bytes::float8, regexp_replace(left(query, 110), '\\s+', ' ', 'g')
           FROM pg_stat_statements WHERE userid = 'bench_retire'::regrole ORDER BY total_exec_time DESC LIMIT 8",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The receiver.

struct Receiver {
    child: std::process::Child,
    port: u16,
    complaints: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start(url: &str) -> Receiver {
        use std::io::BufRead;
        let port = free_port().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_singapay-webhooks"))
            .args(["serve", "--migrate"])
            .env("DATABASE_URL", url)
            .env("SINGAPAY_WEBHOOK_SECRETS", format!("bench={SECRET}"))
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_LISTEN_ADDR", "off")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve");
        let stderr = child.stderr.take().unwrap();
        let complaints: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = complaints.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"") {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        for _ in 0..300 {
            if reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status() == 200) {
                return Receiver { child, port, complaints };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve did not become ready");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Measurements.

/// One size's figures.
struct Measured {
    rows: i64,
    days: usize,
    rows_per_day: f64,
    db_gb: f64,
    retired_rows: u64,
    retired_partitions: usize,
    kept: history::Kept,
    retire_secs: f64,
    wal_call: f64,
    wal_own: f64,
    wal_window_diff: f64,
    base: [Latency; 2],
    with: [Latency; 2],
    after: [Latency; 2],
    during_retire: Latency,
    rates: [f64; 3],
    /// retire's statements: (ms, calls, WAL bytes, query), slowest first.
    statements: Vec<(f64, i64, f64, String)>,
    /// Sessions seen waiting for a lock during the retire call: (waiter, blocker) → samples.
    waits: BTreeMap<(String, String), usize>,
}

/// The windows without, with and again without retention, under load.
/// The main database's pools: the bench's own, retire's (a role of its own), the consumers'.
struct Pools {
    main: PgPool,
    retirer: PgPool,
    consumers: PgPool,
}

async fn measure(
    pools: &Pools,
    receiver: &Receiver,
    s: &Settings,
    rows: i64,
    days: usize,
    first_callback: u64,
) -> Measured {
    let (pool, retirer, consumers) = (&pools.main, &pools.retirer, &pools.consumers);
    let w = s.window.as_secs_f64();
    let parts = history::partitions(pool).await.unwrap();
    let oldest = parts
        .iter()
        .filter(|p| p.table_name == "deliveries" && !p.partition.ends_with("_legacy"))
        .min_by_key(|p| p.from_at)
        .expect("a day to retire")
        .clone();
    let cutoff = oldest.to_at + chrono::Duration::seconds(1);
    let db_bytes: i64 =
        sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(pool).await.unwrap();
    let day_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM singapay.deliveries WHERE stored_at >= $1 AND stored_at < $2)
              + (SELECT count(*) FROM singapay.event_log WHERE stored_at >= $1 AND stored_at < $2)",
    )
    .bind(oldest.from_at)
    .bind(oldest.to_at)
    .fetch_one(pool)
    .await
    .unwrap();
    eprintln!(
        "measuring at {rows} history rows over {days} days: the oldest ({} … {}) holds {day_rows} rows; windows of {w:.0} s at {:.0} callbacks/s",
        oldest.from_at,
        oldest.to_at,
        s.rate
    );
    let pgss = sqlx::query("SELECT pg_stat_statements_reset()").execute(pool).await.is_ok();

    let traffic = Traffic::start(receiver.port, consumers, s.rate, first_callback);
    let warmup = w.clamp(3.0, 10.0);
    let sleep_to = |t: f64| {
        let at = traffic.start + Duration::from_secs_f64(t);
        tokio::time::sleep_until(at.into())
    };
    sleep_to(warmup).await;
    let b0 = (traffic.now(), lsn(pool).await);
    sleep_to(b0.0 + w).await;
    let b1 = (traffic.now(), lsn(pool).await);
    sleep_to(b1.0 + w / 4.0).await;
    if pgss {
        sqlx::query("SELECT pg_stat_statements_reset()").execute(pool).await.unwrap();
    }
    let r0 = (traffic.now(), lsn(pool).await);
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(lock_waits(pool.clone(), watching.clone()));
    let report = history::retire(retirer, cutoff, None, false).await.unwrap_or_else(|e| panic!("retire: {e}"));
    let r1 = (traffic.now(), lsn(pool).await);
    watching.store(false, Ordering::Relaxed);
    let waits = watcher.await.unwrap();
    let statements = if pgss { retire_statements(pool).await } else { Vec::new() };
    let wal_own = if pgss {
        sqlx::query_scalar::<_, Option<f64>>(
            "SELECT sum(wal_bytes)::float8 FROM pg_stat_statements WHERE userid = 'bench_retire'::regrole",
        )
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(0.0)
    } else {
        f64::NAN
    };
    // The window goes on for its length, or until a second after a longer retirement.
    sleep_to((b1.0 + w).max(r1.0 + 1.0)).await;
    let b2 = (traffic.now(), lsn(pool).await);
    sleep_to(b2.0 + w).await;
    let b3 = (traffic.now(), lsn(pool).await);
    let (intake, claims) = traffic.finish().await;

    let per_sec = |a: (f64, i64), b: (f64, i64)| (b.1 - a.1) as f64 / (b.0 - a.0);
    let base_rate = (per_sec(b0, b1) + per_sec(b2, b3)) / 2.0;
    let wal_window_diff = (b2.1 - b1.1) as f64 - base_rate * (b2.0 - b1.0);
    let pair = |a: f64, b: f64| [latency(&intake, a, b), latency(&claims, a, b)];
    let rate_of = |a: f64, b: f64| latency(&intake, a, b).count as f64 / (b - a);
    let m = Measured {
        rows,
        days,
        rows_per_day: day_rows as f64,
        db_gb: db_bytes as f64 / 1e9,
        retired_rows: report.retired.iter().map(|r| r.rows).sum(),
        retired_partitions: report.retired.len(),
        kept: report.kept,
        retire_secs: r1.0 - r0.0,
        wal_call: (r1.1 - r0.1) as f64,
        wal_own,
        wal_window_diff,
        base: pair(b0.0, b1.0),
        with: pair(b1.0, b2.0),
        after: pair(b2.0, b3.0),
        during_retire: latency(&intake, r0.0, r1.0),
        rates: [rate_of(b0.0, b1.0), rate_of(b1.0, b2.0), rate_of(b2.0, b3.0)],
        statements,
        waits,
    };
    if !report.postponed.is_empty() {
        eprintln!("  retire postponed {} day(s): {:?}", report.postponed.len(), report.postponed);
    }
    let mut ranges: Vec<_> = report.retired.iter().map(|r| (r.from_at, r.to_at)).collect();
    ranges.dedup();
    eprintln!(
        "  retired {} partition(s) of {} day(s) ({:?}), {} rows, kept {:?}, in {:.3} s; WAL: {:.1} MB around the call, {:.1} MB its own statements, {:.1} MB window difference",
        m.retired_partitions,
        ranges.len(),
        ranges.iter().map(|r| r.0.date_naive().to_string()).collect::<Vec<_>>(),
        m.retired_rows,
        m.kept,
        m.retire_secs,
        m.wal_call / 1e6,
        m.wal_own / 1e6,
        m.wal_window_diff / 1e6
    );
    for (ms, calls, wal, query) in &m.statements {
        eprintln!("    retire statement: {ms:>9.1} ms {calls:>3} call(s) {:>8.2} MB WAL  {query}", wal / 1e6);
    }
    for ((waiter, blocker), n) in &m.waits {
        eprintln!("    lock wait seen {n} time(s): [{waiter}] waiting behind [{blocker}]");
    }
    assert_eq!(ranges.len(), 1, "exactly one day retired");
    for (name, l) in [("without", &m.base), ("with", &m.with), ("without, after", &m.after)] {
        eprintln!(
            "  window {name}: intake {} callbacks ({} failed) p50 {:.2} p99 {:.2} max {:.1} ms; claims {} p50 {:.2} p99 {:.2} max {:.1} ms",
            l[0].count, l[0].failed, l[0].p50, l[0].p99, l[0].max, l[1].count, l[1].p50, l[1].p99, l[1].max
        );
    }
    m
}

/// The DELETE path's figures.
struct Deleted {
    rows: i64,
    fill_secs: f64,
    migrations: Vec<(i64, f64)>,
    deleted: store::PruneReport,
    secs: f64,
    wal: f64,
    vacuum_secs: f64,
    vacuum_wal: f64,
}

/// Part 3: the same history on the schema before partitioning, upgraded, then pruned row by row.
async fn delete_path(cluster: &Cluster, dir: &std::path::Path, days: &Days) -> Deleted {
    embedded_pg::ensure_database(cluster, "legacy").await.unwrap();
    let pool = PgPoolOptions::new().max_connections(4).connect(&cluster.url("legacy")).await.unwrap();
    common::migrate_before(&pool, &dir.join("before-history"), HISTORY_MIGRATIONS[0]).await;
    let slices: Vec<Slice> = days.iter().map(|(&day, &n)| Slice { day, from: 1, to: n }).collect();
    let oldest = *days.keys().next().unwrap();
    let t = Instant::now();
    let rows = fill(&pool, slices, false, "legacy fill").await;
    let fill_secs = t.elapsed().as_secs_f64();
    settle(&pool, "singapay.deliveries, singapay.event_log, singapay.transactions").await;

    let mut migrations = Vec::new();
    for v in HISTORY_MIGRATIONS {
        let t = Instant::now();
        common::migrate_before(&pool, &dir.join(format!("upto-{v}")), v + 1).await;
        migrations.push((v, t.elapsed().as_secs_f64()));
        eprintln!("  migration {v}: {:.2} s", t.elapsed().as_secs_f64());
    }
    // The rest from the same files (not the copy compiled into this binary, which an edit of
    // the migrations since the build would make refuse as changed).
    common::migrate_before(&pool, &dir.join("all"), i64::MAX).await;
    let legacy: Vec<String> = history::legacy_tables(&pool).await.unwrap();
    eprintln!("  legacy partitions: {legacy:?}");
    sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();

    let cutoff = (oldest + chrono::Days::new(1)).and_hms_opt(0, 0, 0).unwrap().and_utc();
    let w0 = lsn(&pool).await;
    let t = Instant::now();
    let deleted = store::prune(&pool, cutoff, 1000, false).await.expect("prune");
    let secs = t.elapsed().as_secs_f64();
    let wal = (lsn(&pool).await - w0) as f64;
    eprintln!("  prune: {deleted:?} in {secs:.1} s, {:.1} MB WAL", wal / 1e6);

    let w0 = lsn(&pool).await;
    let t = Instant::now();
    let tables: Vec<String> = legacy.iter().map(|t| format!("singapay_history.{t}_legacy")).collect();
    sqlx::query(&format!("VACUUM {}", tables.join(", "))).execute(&pool).await.unwrap();
    let vacuum_secs = t.elapsed().as_secs_f64();
    let vacuum_wal = (lsn(&pool).await - w0) as f64;
    eprintln!("  VACUUM of the legacy partitions: {vacuum_secs:.1} s, {:.1} MB WAL", vacuum_wal / 1e6);
    pool.close().await;

    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url("postgres")).await.unwrap();
    sqlx::query("DROP DATABASE legacy WITH (FORCE)").execute(&mut c).await.unwrap();
    Deleted { rows, fill_secs, migrations, deleted, secs, wal, vacuum_secs, vacuum_wal }
}

fn free_gb(path: &std::path::Path) -> f64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: f64 = text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df's answer");
    bytes / 1e9
}

fn main() {
    // retire's own account of each day (its phases), on stderr with the rest.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("singapay_webhooks::store::history=debug"))
        .with_writer(std::io::stderr)
        .try_init();
    let s = Settings::from_env();
    let tmp = std::env::temp_dir();
    let free = free_gb(&tmp);
    if free < s.min_free_gb {
        eprintln!(
            "history bench: {free:.1} GB free on {} (its temporary directory; TMPDIR moves it), {:.0} GB needed for {} rows: \
             not started (free some disk, point TMPDIR elsewhere, lower BENCH_HISTORY_ROWS, or set BENCH_HISTORY_MIN_FREE_GB)",
            tmp.display(),
            s.min_free_gb,
            s.sizes.last().unwrap()
        );
        std::process::exit(2);
    }
    eprintln!("history bench: {free:.1} GB free on {} ({:.0} GB needed)", tmp.display(), s.min_free_gb);

    let mut bench = common::BenchCluster::start("singapay-history-bench-");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&bench.cluster.url("postgres")).await.unwrap();
        for (name, value) in [
            ("shared_buffers", "2GB"),
            ("max_wal_size", "8GB"),
            ("checkpoint_timeout", "30min"),
            ("maintenance_work_mem", "512MB"),
            ("shared_preload_libraries", "pg_stat_statements"),
        ] {
            sqlx::query(&format!("ALTER SYSTEM SET {name} = '{value}'")).execute(&mut c).await.unwrap();
        }
    });
    bench.cluster.stop().unwrap();
    bench.cluster.start().unwrap();
    let cluster = bench.cluster.clone();
    let dir = bench.path().to_path_buf();

    let (rows, deleted, complaints) = rt.block_on(async {
        embedded_pg::ensure_database(&cluster, "history").await.unwrap();
        let url = cluster.url("history");
        let pool = PgPoolOptions::new().max_connections(6).connect(&url).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        if let Err(e) = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&pool).await {
            eprintln!("pg_stat_statements unavailable ({e}): retire's own WAL is not reported");
        }
        sqlx::query("CREATE ROLE bench_retire LOGIN SUPERUSER").execute(&pool).await.unwrap();
        let retirer = PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!("postgres://bench_retire@127.0.0.1:{}/history", cluster.port))
            .await
            .unwrap();
        let consumers = PgPoolOptions::new().max_connections(CONSUMERS as u32).connect(&url).await.unwrap();
        let pools = Pools { main: pool.clone(), retirer, consumers };
        let today: NaiveDate =
            sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date").fetch_one(&pool).await.unwrap();

        let mut days = Days::new();
        let mut floor: Option<NaiveDate> = None;
        let mut present = 0i64;
        let mut rows = Vec::new();
        let mut deleted = None;
        let mut receiver: Option<Receiver> = None;
        let mut callbacks = 1_000_000_000u64;
        for (i, &size) in s.sizes.iter().enumerate() {
            let slices = plan(&mut days, size, s.days, s.grow_days, today, floor);
            let t = Instant::now();
            present += fill(&pool, slices, true, &format!("fill to {size}")).await;
            eprintln!(
                "filled to {present} history rows over {} days in {:.0} s",
                days.len(),
                t.elapsed().as_secs_f64()
            );
            settle(&pool, "singapay.deliveries, singapay.event_log, singapay.transactions").await;
            if receiver.is_none() {
                receiver = Some(Receiver::start(&url).await);
            }
            let m = measure(&pools, receiver.as_ref().unwrap(), &s, present, days.len(), callbacks).await;
            callbacks += 10_000_000;
            // The retired day is gone from the history (its kept rows now belong to today's).
            let oldest = *days.keys().next().unwrap();
            floor = Some(floor.map_or(oldest, |f| f.min(oldest)));
            let retired = days.remove(&oldest).unwrap();
            present -= retired * ROWS_PER_TX;
            rows.push(m);
            if i == 0 && !s.skip_delete {
                let mut first = days.clone();
                first.insert(oldest, retired);
                eprintln!("the DELETE path: the same {} days on the schema before partitioning", first.len());
                deleted = Some(delete_path(&cluster, &dir, &first).await);
            }
        }
        let complaints = receiver.as_ref().map(|r| r.complaints.lock().unwrap().clone()).unwrap_or_default();
        drop(receiver);
        pools.retirer.close().await;
        pools.consumers.close().await;
        pool.close().await;
        (rows, deleted, complaints)
    });
    report(&s, &rows, deleted.as_ref(), &complaints);
}

/// A markdown table, each column as wide as its widest cell (first column left-aligned).
fn table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap())
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i] - c.chars().count());
                if i == 0 {
                    format!(" {c}{pad} ")
                } else {
                    format!(" {pad}{c} ")
                }
            })
            .collect();
        println!("|{}|", padded.join("|"));
    };
    line(header.iter().map(|h| h.to_string()).collect());
    println!(
        "|{}|",
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let dashes = "-".repeat(*w);
                if i == 0 {
                    format!(":{dashes}-")
                } else {
                    format!("-{dashes}:")
                }
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
}

fn report(s: &Settings, rows: &[Measured], deleted: Option<&Deleted>, complaints: &[String]) {
    let mb = |b: f64| if b.is_nan() { "-".to_owned() } else { format!("{:.1}", b / 1e6) };
    let lat = |l: &[Latency; 2], i: usize| format!("{:.1}", l[i].p99);
    println!(
        "\nhistory benchmark: retiring the oldest day under {:.0} callbacks/s and 4 consumers; windows of {:.0} s; durable PostgreSQL (fsync on), same machine and run",
        s.rate,
        s.window.as_secs_f64()
    );
    let header = [
        "path",
        "history rows",
        "days",
        "DB GB",
        "rows in day",
        "rows gone",
        "kept",
        "seconds",
        "WAL MB call",
        "WAL MB own",
        "WAL MB Δwin",
        "intake p99 ms −/+/−",
        "claim p99 ms −/+/−",
        "intake p99 (max) in call ms",
    ];
    let mut cells: Vec<Vec<String>> = Vec::new();
    for m in rows {
        let k = m.kept;
        cells.push(vec![
            format!("retire: keep, detach + drop the day ({} partitions)", m.retired_partitions),
            m.rows.to_string(),
            m.days.to_string(),
            format!("{:.1}", m.db_gb),
            format!("{:.0}", m.rows_per_day),
            m.retired_rows.to_string(),
            (k.events + k.deliveries + k.rejections + k.inquiries).to_string(),
            format!("{:.3}", m.retire_secs),
            mb(m.wal_call),
            mb(m.wal_own),
            mb(m.wal_window_diff),
            format!("{} / {} / {}", lat(&m.base, 0), lat(&m.with, 0), lat(&m.after, 0)),
            format!("{} / {} / {}", lat(&m.base, 1), lat(&m.with, 1), lat(&m.after, 1)),
            format!("{:.1} ({:.0})", m.during_retire.p99, m.during_retire.max),
        ]);
    }
    if let Some(d) = deleted {
        let p = d.deleted;
        let first = rows.first();
        let mut row = vec![
            "prune: row-by-row DELETE on _legacy (batches of 1,000)".to_owned(),
            d.rows.to_string(),
            first.map_or(String::new(), |m| m.days.to_string()),
            "-".to_owned(),
            first.map_or(String::new(), |m| format!("{:.0}", m.rows_per_day)),
            (p.events + p.deliveries + p.rejections + p.inquiries).to_string(),
            "-".to_owned(),
            format!("{:.3}", d.secs),
            mb(d.wal),
        ];
        row.extend(["-", "-", "no load", "no load", "-"].map(String::from));
        cells.push(row);
        let mut row = vec!["+ the VACUUM those deletes leave (legacy partitions)".to_owned()];
        row.extend(["", "", "", "", "", ""].map(String::from));
        row.extend([format!("{:.3}", d.vacuum_secs), mb(d.vacuum_wal)]);
        row.extend(["-", "-", "no load", "no load", "-"].map(String::from));
        cells.push(row);
    }
    table(&header, &cells);
    println!();
    println!("columns: −/+/− = window without retention / with it / without it again (noise); WAL MB call: pg_current_wal_lsn() around the retire call, other traffic included; own: retire's statements (pg_stat_statements); Δwin: the window with retention less the mean of the two without, per second. Latency from each callback's scheduled instant (open loop).");
    for m in rows {
        println!(
            "at {} rows: callbacks/s achieved {:.0} / {:.0} / {:.0}, failed {} / {} / {}; intake p50 {:.1} / {:.1} / {:.1} ms; claim p50 {:.2} / {:.2} / {:.2} ms; kept {:?}",
            m.rows,
            m.rates[0],
            m.rates[1],
            m.rates[2],
            m.base[0].failed,
            m.with[0].failed,
            m.after[0].failed,
            m.base[0].p50,
            m.with[0].p50,
            m.after[0].p50,
            m.base[1].p50,
            m.with[1].p50,
            m.after[1].p50,
            m.kept
        );
    }
    if let Some(d) = deleted {
        let total: f64 = d.migrations.iter().map(|m| m.1).sum();
        let each: Vec<String> = d.migrations.iter().map(|(v, s)| format!("{v} {s:.2} s")).collect();
        println!(
            "upgrade on a {}-row install (filled in {:.0} s): {} (total {total:.2} s); prune deleted {:?}",
            d.rows,
            d.fill_secs,
            each.join(", "),
            d.deleted
        );
    }
    println!("targets:");
    for m in rows {
        let within = |a: f64, b: f64| if b <= a * 1.1 { "yes" } else { "NO" };
        println!(
            "  at {} rows: day retired in < 1 s: {} ({:.3} s); < 10 MB WAL: {} (own {} MB, Δwindow {} MB); intake p99 within 10 %: {} ({:.1} vs {:.1} ms); claim p99 within 10 %: {} ({:.2} vs {:.2} ms)",
            m.rows,
            if m.retire_secs < 1.0 { "yes" } else { "NO" },
            m.retire_secs,
            if m.wal_own.max(m.wal_window_diff) < 10e6 { "yes" } else { "NO" },
            mb(m.wal_own),
            mb(m.wal_window_diff),
            within(m.base[0].p99, m.with[0].p99),
            m.with[0].p99,
            m.base[0].p99,
            within(m.base[1].p99, m.with[1].p99),
            m.with[1].p99,
            m.base[1].p99
        );
    }
    if rows.len() >= 2 {
        let (a, b) = (&rows[0], rows.last().unwrap());
        println!(
            "  retire time at {} vs {} rows: {:.3} vs {:.3} s (ratio {:.2}); rows per day {:.0} vs {:.0}",
            a.rows,
            b.rows,
            a.retire_secs,
            b.retire_secs,
            b.retire_secs / a.retire_secs,
            a.rows_per_day,
            b.rows_per_day
        );
    }
    for m in rows {
        println!("retire's statements at {} rows (pg_stat_statements, slowest first):", m.rows);
        for (ms, calls, wal, query) in &m.statements {
            println!("  {ms:>9.1} ms {calls:>3} call(s) {:>8.2} MB WAL  {query}", wal / 1e6);
        }
        for ((waiter, blocker), n) in &m.waits {
            println!("  lock wait seen in {n} sample(s) of 20 ms: [{waiter}] behind [{blocker}]");
        }
    }
    println!("receiver warnings and errors: {}", complaints.len());
    for line in complaints.iter().take(5) {
        println!("  {line}");
    }
}
