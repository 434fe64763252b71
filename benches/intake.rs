//! Intake throughput, latency, CPU and memory, side by side with pgbench running the same
//! SQL on the same PostgreSQL in the same run (so a noisy machine cancels out).
//!
//!   cargo bench --bench intake                    # 20000 callbacks per scenario
//!   BENCH_REQUESTS=50000 cargo bench --bench intake
//!   BENCH_BASELINE_BIN=/path/to/older/singapay-webhooks cargo bench --bench intake
//!
//! The receiver: the release `serve` binary with its default settings (JSON logs at info
//! included) on a throwaway durable cluster (fsync on). The load: pre-signed callbacks
//! written over keep-alive connections by a minimal HTTP/1.1 client, so that the client
//! costs the two shared cores as little as possible. Signing happens before the clock
//! starts. Scenarios: one client at a time (latency when idle), 16 and 64 clients of new
//! disbursements (each a new transaction: one delivery, one transaction, one queue row), a
//! retry storm (one content again and again), and a mixed stream (money-in, money-out,
//! expiration sweeps, unknown events). The receiver's CPU time per callback comes from
//! `/proc/<pid>/stat` (utime + stime) around each scenario, its peak RSS from `VmHWM`.
//!
//! pgbench runs the statements intake issues for a batch of K new disbursements (lock,
//! duplicate lookup, deliveries, transactions, queue rows, then the consumers' wake-up), as
//! one transaction, with K = 1
//! (one callback per transaction, what the receiver did before group commit) and K = 32
//! (set-based: the limit of the schema on this machine).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use singapay_webhooks::embedded_pg::{self, free_port, Cluster};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::SECRET;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Clone, Copy)]
struct Stats {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Receiver CPU per callback, µs (NaN for pgbench).
    cpu_us: f64,
    /// Callbacks per intake transaction, on average (pgbench: K).
    batch: f64,
    /// PostgreSQL's CPU per callback, µs.
    pg_us: f64,
}

/// Each figure's median over several runs of one scenario.
fn median_of(runs: &[Stats]) -> Stats {
    let median = |f: fn(&Stats) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    Stats {
        per_sec: median(|s| s.per_sec),
        p50_ms: median(|s| s.p50_ms),
        p99_ms: median(|s| s.p99_ms),
        cpu_us: median(|s| s.cpu_us),
        batch: median(|s| s.batch),
        pg_us: median(|s| s.pg_us),
    }
}

/// The cluster's postmaster, for its CPU time.
static POSTMASTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn pg_cpu() -> f64 {
    POSTMASTER.get().map_or(f64::NAN, |&pid| cluster_cpu_seconds(pid))
}

/// (sum, count) of the intake batch-size histogram; zeros for a receiver without it.
async fn batches(port: u16) -> (f64, f64) {
    let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let get = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    (get("singapay_intake_batch_size_sum"), get("singapay_intake_batch_size_count"))
}

fn disbursement(n: usize) -> String {
    format!(
        r#"{{"response_code":"SP000","response_message":"Successfully","event":"disbursement","data":{{"transaction_id":"{n:031}","reference_number":"BENCH-{n}","transaction_status":{{"code":"00","desc":"Success"}},"post_timestamp":"1773645729000","processed_timestamp":"1773645731000","bank":{{"code":"014","name":"BCA","account_name":"CV BENCH","account_number":"1000123456789"}},"gross_amount":{{"currency":"IDR","value":"252500.00"}},"fee":{{"currency":"IDR","value":"2500"}},"net_amount":{{"currency":"IDR","value":"250000.00"}},"balance_after":{{"currency":"IDR","value":"4817300.00"}},"notes":"bench"}}}}"#
    )
}

fn va_payment(n: usize) -> String {
    format!(
        r#"{{"status":200,"success":true,"event":"va-transaction","timestamp":"14 Mar 2026 09:12:07","data":{{"transaction":{{"reff_no":"ORD-{n}","transaction_id":"VA{n:020}","type":"va","status":"paid","amount":{{"value":245000,"currency":"IDR"}},"amount_type":"closed","tip":null,"post_timestamp":"14 Mar 2026 09:12:05","processed_timestamp":"14 Mar 2026 09:12:07"}},"payment":{{"method":"va","additional_info":{{"va_number":"8808123400{n}"}}}}}}}}"#
    )
}

fn expiration_sweep(n: usize) -> String {
    format!(
        r#"{{"status":200,"success":true,"event":"transaction-expiration","timestamp":"22 Mar 2026 04:35:02","data":{{"payment_link_histories":[{{"id":{n},"reff_no":"PL{n:020}","status":"expired"}}],"virtual_account_transactions":[],"qris_histories":[{{"id":{n},"reff_no":"QA{n:020}","status":"expired"}},{{"id":{n},"reff_no":"QB{n:020}","status":"expired"}}],"summary":{{"payment_link_histories":1,"virtual_account_transactions":0,"qris_histories":2}}}}}}"#
    )
}

fn unknown(n: usize) -> String {
    format!(r#"{{"event":"bench.something-new","data":{{"id":{n},"note":"not a known callback"}}}}"#)
}

fn signed(bodies: impl Iterator<Item = (usize, String)>) -> Vec<Vec<u8>> {
    let ts = chrono::Utc::now().timestamp().to_string();
    bodies.map(|(n, b)| common::signed_request(&b, &format!("bench{n}"), &ts)).collect()
}

/// (utime + stime) of `pid` in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("receiver {pid}: {e}"));
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks()
}

/// CPU seconds of the whole PostgreSQL cluster: the postmaster, its reaped children and
/// its live ones.
fn cluster_cpu_seconds(postmaster: u32) -> f64 {
    let fields = |pid: u32| -> Option<Vec<f64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(stat.rsplit_once(')')?.1.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect())
    };
    // After ')': state ppid ... utime(11) stime(12) cutime(13) cstime(14).
    let own = fields(postmaster).unwrap_or_default();
    let mut ticks = own.get(11..15).map_or(0.0, |t| t.iter().sum());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(f) = fields(pid) {
            if f.get(1).copied() == Some(f64::from(postmaster)) {
                ticks += f[11] + f[12];
            }
        }
    }
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

use common::peak_rss_mib;

/// Sends every request over `clients` keep-alive connections; all must be answered 200.
async fn load(port: u16, pid: u32, requests: Vec<Vec<u8>>, clients: usize) -> Stats {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let batches_before = batches(port).await;
    let cpu_before = cpu_seconds(pid);
    let pg_before = pg_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (requests, next) = (requests.clone(), next.clone());
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
                conn.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(8192);
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(i) else { break };
                    let t = Instant::now();
                    conn.write_all(req).await.expect("send");
                    let ok = common::response(&mut conn, &mut buf).await.expect("answer");
                    assert!(ok, "not 200: {}", String::from_utf8_lossy(&buf));
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let pg = pg_cpu() - pg_before;
    let batches_after = batches(port).await;
    let batch = (batches_after.0 - batches_before.0) / (batches_after.1 - batches_before.1);
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats {
        per_sec: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        cpu_us: cpu * 1e6 / all.len() as f64,
        batch,
        pg_us: pg * 1e6 / all.len() as f64,
    }
}

/// The statements intake issues for a batch of K new disbursements, K per transaction (the
/// content locks first, as intake takes them).
fn pgbench_script(k: usize) -> String {
    // pgbench reads `:name` as a variable: no colon in the JSON touches a name or number.
    let body = disbursement(0).replace("\":", "\": ");
    // The look-up reads the days from the one before the bodies' own time (intake's bound).
    let since = "2026-03-15 00:00:00+00";
    format!(
        r#"\set n random(1, 9000000000000000000)
BEGIN;
SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT ('x' || left(encode(sha256(((:n::int8 + g)::text)::bytea), 'hex'), 16))::bit(64)::int8 AS k FROM generate_series(1, {k}) g ORDER BY 1) s;
SELECT transaction_key, status, version FROM singapay.transactions WHERE transaction_key = ANY (ARRAY(SELECT 'disbursement:' || (:n::int8 + g) FROM generate_series(1, {k}) g)) ORDER BY transaction_key FOR UPDATE;
SELECT content_sha256, id, outcome, stored_at FROM singapay.deliveries d WHERE content_sha256 = ANY (ARRAY(SELECT sha256(((:n::int8 + g)::text)::bytea) FROM generate_series(1, {k}) g)) AND (d.stored_at >= '{since}'::timestamptz OR d.stored_at = '-infinity');
INSERT INTO singapay.deliveries (times_received, content_sha256, credential, signature_form, signed_at, x_timestamp, request_path, request_id, partner_id, x_signature, access_token, body, webhook_type, event, transaction_key, response_code, response_message, response_class, transaction_status_code, transaction_status_desc, status, needs_inquiry, outcome, event_at, payload) SELECT 1, sha256(((:n::int8 + g)::text)::bytea), 'bench', 'php', now(), '1773645729', '/webhooks/singapay', NULL, NULL, repeat('a', 128), 'token', convert_to('{body}', 'UTF8'), 'disbursement', 'disbursement', 'disbursement:' || (:n::int8 + g), 'SP000', 'Successfully', 'success', '00', 'Success', 'succeeded', false, 'applied', NULL, '{body}'::jsonb FROM generate_series(1, {k}) g RETURNING content_sha256, id;
INSERT INTO singapay.transactions (transaction_key, product, status, version, transaction_status_code, last_response_code, amount, currency, singapay_id, merchant_reference, processed_at, first_delivery_id, last_delivery_id) SELECT d.transaction_key, 'disbursement', 'succeeded', 1, '00', 'SP000', 250000.00, 'IDR', (:n::int8 + g)::text, 'BENCH', now(), d.id, d.id FROM generate_series(1, {k}) g JOIN singapay.deliveries d ON d.content_sha256 = sha256(((:n::int8 + g)::text)::bytea) ON CONFLICT (transaction_key) DO NOTHING RETURNING transaction_key;
WITH l AS (INSERT INTO singapay.event_log (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code, transaction_status_code, delivery_id, payload) SELECT gen_random_uuid(), 'disbursement:' || (:n::int8 + g), 1, 'disbursement', NULL, 'succeeded', 'SP000', '00', d.id, '{{"schema": "singapay.transaction_event.v1","event_id": "00000000-0000-0000-0000-000000000000","transaction_key": "disbursement:1","product": "disbursement","version": 1,"from_status": null,"to_status": "succeeded","webhook_type": "disbursement","event": "disbursement","singapay_id": "1","merchant_reference": "BENCH","amount": "250000.00","currency": "IDR","response_code": "SP000","transaction_status_code": "00","occurred_at": null,"delivery_id": 1}}'::jsonb FROM generate_series(1, {k}) g JOIN singapay.deliveries d ON d.content_sha256 = sha256(((:n::int8 + g)::text)::bytea) RETURNING id, transaction_key, version, stored_at) INSERT INTO singapay.event_queue (id, transaction_key, version, stored_at) SELECT id, transaction_key, version, stored_at FROM l;
COMMIT;
SELECT set_config('synchronous_commit', 'off', true), pg_notify('singapay_transaction_events', '');
"#
    )
}

/// pgbench with K callbacks per transaction; figures per callback.
fn pgbench(cluster: &Cluster, url: &str, callbacks: usize, k: usize, clients: usize, dir: &std::path::Path) -> Stats {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("intake.sql");
    std::fs::write(&script, pgbench_script(k)).unwrap();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let per_client = callbacks.div_ceil(k * clients).max(1);
    let pg_before = pg_cpu();
    let local = cluster.bin_dir.join("pgbench");
    let program = if local.is_file() { local.display().to_string() } else { "pgbench".into() };
    let out = Command::new(program)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-t",
            &per_client.to_string(),
            "-l",
            "-f",
        ])
        .arg(&script)
        .arg(url)
        .current_dir(&logs)
        .output()
        .expect("pgbench runs");
    assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    let pg = pg_cpu() - pg_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .expect("pgbench reports tps");
    let mut latencies: Vec<f64> = Vec::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        for line in std::fs::read_to_string(entry.unwrap().path()).unwrap().lines() {
            // client_id transaction_no time_us script_no time_epoch time_us
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<f64>().ok()) {
                latencies.push(us / 1000.0);
            }
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats {
        per_sec: tps * k as f64,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        cpu_us: f64::NAN,
        batch: k as f64,
        pg_us: pg * 1e6 / (per_client * clients * k) as f64,
    }
}

struct Receiver {
    child: std::process::Child,
    port: u16,
    /// Log lines above INFO, to show with the figures.
    complaints: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(rt: &tokio::runtime::Runtime, binary: &str, url: &str) -> Receiver {
        let port = free_port().unwrap();
        let mut command = Command::new(binary);
        // /metrics on the callback port (this build's admin listener is on by default; a
        // baseline older than it serves /metrics there already and refuses "off").
        if std::env::var("BENCH_BASELINE_BIN").ok().as_deref() != Some(binary) {
            command.env("ADMIN_LISTEN_ADDR", "off");
        }
        let mut child = command
            .args(["serve", "--migrate"])
            .env("DATABASE_URL", url)
            .env("SINGAPAY_WEBHOOK_SECRETS", format!("bench={SECRET}"))
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("RUST_LOG")
            // Extra settings for experiments, e.g. BENCH_SERVER_ENV="INTAKE_WRITERS=2 TOKIO_WORKER_THREADS=1".
            .envs(
                std::env::var("BENCH_SERVER_ENV")
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve");
        let stderr = child.stderr.take().unwrap();
        let complaints: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let sink = complaints.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"") {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        rt.block_on(async {
            for _ in 0..300 {
                if reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status() == 200) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("serve did not become ready");
        });
        Receiver { child, port, complaints }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Runs a closure when dropped.
struct Defer(Box<dyn FnOnce()>);

impl Drop for Defer {
    fn drop(&mut self) {
        let f = std::mem::replace(&mut self.0, Box::new(|| {}));
        f();
    }
}

fn row(name: &str, s: Stats) {
    let cpu = if s.cpu_us.is_nan() { "-".to_owned() } else { format!("{:.0}", s.cpu_us) };
    let batch = if s.batch.is_nan() { "-".to_owned() } else { format!("{:.1}", s.batch) };
    println!(
        "| {name:<46} | {:>10.0} | {:>8.2} | {:>8.2} | {cpu:>8} | {:>8.0} | {batch:>6} |",
        s.per_sec, s.p50_ms, s.p99_ms, s.pg_us
    );
}

fn main() {
    let n = env_or("BENCH_REQUESTS", 20_000);
    let bench = common::BenchCluster::start("singapay-bench-");
    let cluster = bench.cluster.clone();
    let dir = bench.path();
    let pid_file = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
    POSTMASTER.set(pid_file.lines().next().unwrap().trim().parse().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(embedded_pg::ensure_database(&cluster, "bench")).unwrap();
    let url = cluster.url("bench");

    // BENCH_PG_LOG=path: every statement's duration from here on, in PostgreSQL's log,
    // copied to that path at the end.
    let _copy = std::env::var_os("BENCH_PG_LOG").map(|log| {
        rt.block_on(async {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
            sqlx::query("ALTER SYSTEM SET log_min_duration_statement = 0").execute(&mut c).await.unwrap();
            sqlx::query("SELECT pg_reload_conf()").execute(&mut c).await.unwrap();
        });
        let source = cluster.root.join("postgres.log");
        Defer(Box::new(move || {
            let _ = std::fs::copy(&source, &log);
        }))
    });
    // BENCH_BINARY measures another build (e.g. in BENCH_QUICK mode, alternating runs).
    let binary = std::env::var("BENCH_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_singapay-webhooks").to_owned());
    let server = Receiver::start(&rt, &binary, &url);
    let (port, pid) = (server.port, server.pid());
    let mut next = 0usize;
    let mut fresh = |count: usize, make: &dyn Fn(usize) -> String| {
        let start = next;
        next += count;
        signed((start..start + count).map(|i| (i, make(i))))
    };

    // A checkpoint before each one-client measurement, so that neither pays for the WAL
    // that earlier scenarios left behind.
    let checkpoint = |db: &str| {
        rt.block_on(async {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url(db)).await.unwrap();
            sqlx::query("CHECKPOINT").execute(&mut c).await.unwrap();
        })
    };
    // Warm-up on both sides.
    rt.block_on(load(port, pid, fresh(n / 10, &disbursement), 16));
    checkpoint("bench");

    // The previous build, on a database of its own in the same cluster, started now so that
    // one-client latency is measured in alternating rounds: this machine's speed drifts
    // over minutes, which a before-and-after comparison would take for the code's.
    let old = std::env::var("BENCH_BASELINE_BIN").ok().map(|bin| {
        let db = "baseline";
        rt.block_on(embedded_pg::ensure_database(&cluster, db)).unwrap();
        let old = Receiver::start(&rt, &bin, &cluster.url(db));
        let mut i = 10_000_000;
        let make = move |count: usize| {
            let start = i;
            i += count;
            signed((start..start + count).map(|j| (j, disbursement(j))))
        };
        (old, make)
    });
    let mut old = old.map(|(old, mut make)| {
        rt.block_on(load(old.port, old.pid(), make(n / 10), 16));
        checkpoint("baseline");
        (old, make)
    });
    const ROUNDS: usize = 10;
    let (idle, idle_old) = match &mut old {
        None => (rt.block_on(load(port, pid, fresh(n / 20, &disbursement), 1)), None),
        Some((old, make)) => {
            let (mut new_rounds, mut old_rounds) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                new_rounds.push(rt.block_on(load(port, pid, fresh(n / 20 / ROUNDS, &disbursement), 1)));
                old_rounds.push(rt.block_on(load(old.port, old.pid(), make(n / 20 / ROUNDS), 1)));
            }
            let ratios: Vec<f64> = new_rounds.iter().zip(&old_rounds).map(|(a, b)| a.p50_ms / b.p50_ms).collect();
            (median_of(&new_rounds), Some((median_of(&old_rounds), ratios)))
        }
    };
    if let Some(quick) = std::env::var_os("BENCH_QUICK") {
        // Only one figure, for trying settings: BENCH_QUICK=idle (one client) or anything
        // else (64 clients).
        let clients = if quick == "idle" { 1 } else { 64 };
        if clients == 1 {
            row("receiver, 1 client", idle);
            if let Some((idle_old, mut ratios)) = idle_old {
                row("baseline binary, 1 client", idle_old);
                ratios.sort_by(f64::total_cmp);
                println!("idle p50 ratios, sorted: {ratios:.2?}");
            }
            return;
        }
        let count = if clients == 1 { n / 20 } else { n };
        let stats = rt.block_on(load(port, pid, fresh(count, &disbursement), clients));
        row(&format!("receiver, {clients} clients"), stats);
        return;
    }
    pgbench(&cluster, &url, n / 10, 1, 16, &dir.join("warm1"));
    pgbench(&cluster, &url, n / 10, 32, 16, &dir.join("warm32"));

    let c16 = rt.block_on(load(port, pid, fresh(n, &disbursement), 16));
    let c64 = rt.block_on(load(port, pid, fresh(n, &disbursement), 64));
    let pg1 = pgbench(&cluster, &url, n, 1, 16, &dir.join("k1"));
    let pg32 = pgbench(&cluster, &url, n, 32, 16, &dir.join("k32"));
    let storm_request = fresh(1, &disbursement).pop().unwrap();
    let storm = rt.block_on(load(port, pid, vec![storm_request; n], 64));
    let kinds: [&dyn Fn(usize) -> String; 4] = [&va_payment, &disbursement, &expiration_sweep, &unknown];
    let mixed_requests = fresh(n, &|i| kinds[i % 4](i));
    let mixed = rt.block_on(load(port, pid, mixed_requests, 64));
    let rss = peak_rss_mib(pid);
    let complaints = server.complaints.lock().unwrap().clone();
    drop(server);

    let baseline = old.map(|(old, mut make)| {
        let c64_old = rt.block_on(load(old.port, old.pid(), make(n), 64));
        let (idle_old, ratios) = idle_old.unwrap();
        (idle_old, ratios, c64_old, peak_rss_mib(old.pid()))
    });

    println!("\nintake benchmark: {n} callbacks per scenario, durable PostgreSQL (fsync on), same machine and run");
    println!(
        "| {:<46} | {:>10} | {:>8} | {:>8} | {:>8} | {:>8} | {:>6} |",
        "", "per second", "p50 ms", "p99 ms", "CPU µs", "PG µs", "batch"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(48),
        "-".repeat(12),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(8)
    );
    let idle_name =
        if baseline.is_some() { "receiver, 1 client (median of rounds)" } else { "receiver, 1 client (one at a time)" };
    row(idle_name, idle);
    row("receiver, 16 clients", c16);
    row("receiver, 64 clients", c64);
    row("receiver, 64 clients, retry storm (1 content)", storm);
    row("receiver, 64 clients, mixed stream", mixed);
    row("pgbench, 16 clients, 1 callback/transaction", pg1);
    row("pgbench, 16 clients, 32 callbacks/transaction", pg32);
    if let Some((idle_old, _, c64_old, _)) = &baseline {
        row("baseline binary, 1 client (median of rounds)", *idle_old);
        row("baseline binary, 64 clients", *c64_old);
    }
    println!("receiver peak RSS (VmHWM): {rss:.1} MiB");
    println!("receiver warnings and errors during the run: {}", complaints.len());
    for line in complaints.iter().take(5) {
        println!("  {line}");
    }
    println!(
        "ratios: receiver@64 / pgbench 32-per-tx {:.2}; receiver@64 / pgbench 1-per-tx {:.2}",
        c64.per_sec / pg32.per_sec,
        c64.per_sec / pg1.per_sec
    );
    if let Some((_, mut ratios, c64_old, rss_old)) = baseline {
        ratios.sort_by(f64::total_cmp);
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "against the baseline binary: idle p50 {:.2} (median of {ROUNDS} alternating rounds; each: {}), throughput@64 {:.2}, peak RSS {rss_old:.1} MiB",
            percentile(&ratios, 0.5),
            shown.join(" "),
            c64.per_sec / c64_old.per_sec
        );
    }
}
