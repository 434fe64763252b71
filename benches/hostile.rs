//! The receiver while strangers attack its public port: how long real callbacks wait and
//! how much memory the receiver takes. The release `serve` binary with its default
//! settings, on a throwaway durable cluster.
//!
//!   cargo bench --bench hostile                 # 20 s per scenario
//!   BENCH_SECONDS=5 cargo bench --bench hostile
//!
//! Scenarios, each with one signed callback every 100 ms meanwhile (latency p50/p99/max):
//! 1. 32 senders of ~1 MiB JSON arrays (`[0,0,…]`), half unsigned, half with made-up
//!    signature headers (which cost a parse before they can be refused); peak RSS.
//! 2. 64 `/metrics` scrapers in a loop on the callback port; how many queue-depth queries
//!    reached Postgres (counted in its statement log).
//! 3. 2,000 connections that send nothing, against the receiver started with 1,024 file
//!    descriptors (`prlimit`): how long one callback takes to get through.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use singapay_webhooks::embedded_pg::{self, free_port};

use common::{PATH, SECRET};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Receiver {
    child: std::process::Child,
    port: u16,
}

impl Receiver {
    async fn start(url: &str, fd_limit: Option<u32>) -> Receiver {
        let port = free_port().unwrap();
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(env!("CARGO_BIN_EXE_singapay-webhooks"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_singapay-webhooks")),
        };
        let mut child = cmd
            .args(["serve", "--migrate"])
            .env("DATABASE_URL", url)
            .env("SINGAPAY_WEBHOOK_SECRETS", format!("bench={SECRET}"))
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_LISTEN_ADDR", "off")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve");
        for _ in 0..300 {
            if reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status() == 200) {
                return Receiver { child, port };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve did not become ready");
    }

    fn peak_rss_mib(&self) -> f64 {
        common::peak_rss_mib(self.child.id())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// One signed disbursement, as Singapay would send it.
async fn callback(client: &reqwest::Client, port: u16, n: usize) -> (u16, f64) {
    let body = format!(
        r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"{n:031}","transaction_status":{{"code":"00","desc":"Success"}}}}}}"#
    );
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = common::sign(&body, "tok", &ts);
    let started = Instant::now();
    let status = client
        .post(format!("http://127.0.0.1:{port}{PATH}"))
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("authorization", "Bearer tok")
        .body(body)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    (status, started.elapsed().as_secs_f64() * 1000.0)
}

/// A signed callback every 100 ms until `stop`; their latencies, all of which must be 200.
async fn callbacks_meanwhile(port: u16, first: usize, stop: Arc<AtomicBool>) -> Vec<f64> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut n = first;
    while !stop.load(Ordering::Relaxed) {
        let (status, ms) = callback(&client, port, n).await;
        assert_eq!(status, 200, "a real callback was refused");
        latencies.push(ms);
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

fn report(name: &str, latencies: &[f64], extra: &str) {
    println!(
        "| {name:<58} | {:>5} | {:>7.1} | {:>7.1} | {:>7.1} | {extra}",
        latencies.len(),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let bench = common::BenchCluster::start("singapay-hostile-bench-");
    let cluster = bench.cluster.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        embedded_pg::ensure_database(&cluster, "bench").await.unwrap();
        let url = cluster.url("bench");
        println!("\nhostile-traffic benchmark: {seconds} s per scenario, a signed callback every 100 ms meanwhile");
        println!("| {:<58} | {:>5} | {:>7} | {:>7} | {:>7} | other", "scenario", "sent", "p50 ms", "p99 ms", "max ms");

        // 1. Large bodies.
        let server = Receiver::start(&url, None).await;
        let port = server.port;
        let quiet = callbacks_for(port, 0, Duration::from_secs(seconds.min(5))).await;
        report("no attack (baseline)", &quiet, &format!("peak RSS {:.0} MiB", server.peak_rss_mib()));
        let array = format!("[{}0]", "0,".repeat(520_000));
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..32)
            .map(|i| {
                let (stop, body) = (stop.clone(), array.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut sent = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let mut req = client.post(format!("http://127.0.0.1:{port}{PATH}")).body(body.clone());
                        if i % 2 == 1 {
                            req = req
                                .header("x-signature", "0".repeat(128))
                                .header("x-timestamp", chrono::Utc::now().timestamp().to_string())
                                .header("authorization", "Bearer stranger");
                        }
                        if req.send().await.is_ok() {
                            sent += 1;
                        }
                    }
                    sent
                })
            })
            .collect();
        let during = callbacks_for(port, 100_000, Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut refused = 0;
        for s in senders {
            refused += s.await.unwrap();
        }
        report(
            "32 senders of 1 MiB arrays (half with made-up signatures)",
            &during,
            &format!("{refused} bodies refused; peak RSS {:.0} MiB", server.peak_rss_mib()),
        );

        // 2. Scrapers.
        let log = cluster.root.join("postgres.log");
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
        for s in ["ALTER SYSTEM SET log_min_duration_statement = 0", "SELECT pg_reload_conf()"] {
            sqlx::query(s).execute(&mut admin).await.unwrap();
        }
        let count_queue_reads = || {
            std::fs::read_to_string(&log).map_or(0, |t| {
                // One "execute" line per query; its text starts on the same line.
                t.lines().filter(|l| l.contains("execute") && l.contains("SELECT state, events, due")).count()
            })
        };
        let before = count_queue_reads();
        let stop = Arc::new(AtomicBool::new(false));
        let scrapers: Vec<_> = (0..64)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        if client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let during = callbacks_for(port, 200_000, Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut scrapes = 0;
        for s in scrapers {
            scrapes += s.await.unwrap();
        }
        let queue_reads = count_queue_reads() - before;
        for s in ["ALTER SYSTEM RESET log_min_duration_statement", "SELECT pg_reload_conf()"] {
            sqlx::query(s).execute(&mut admin).await.unwrap();
        }
        report(
            "64 /metrics scrapers in a loop",
            &during,
            &format!("{scrapes} scrapes; {queue_reads} queue-depth queries reached Postgres in {seconds} s"),
        );
        drop(server);

        // 3. Silent connections past the descriptor limit.
        let server = Receiver::start(&url, Some(1024)).await;
        let port = server.port;
        let opening: Vec<_> = (0..2000)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(("127.0.0.1", port)))
                        .await
                })
            })
            .collect();
        let mut silent = Vec::new();
        for o in opening {
            if let Ok(Ok(Ok(c))) = o.await {
                silent.push(c);
            }
        }
        let client = reqwest::Client::new();
        let mut latencies = Vec::new();
        for n in 0..20 {
            let (status, ms) = callback(&client, port, 300_000 + n).await;
            assert_eq!(status, 200);
            latencies.push(ms);
            // New silent connections keep arriving, as they would in an attack.
            for _ in 0..50 {
                if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    silent.push(c);
                }
            }
        }
        latencies.sort_by(f64::total_cmp);
        report(
            "2,000+ silent connections, receiver limited to 1,024 fds",
            &latencies,
            &format!("{} silent connections opened; one new connection per callback", silent.len()),
        );
    });
}

async fn callbacks_for(port: u16, first: usize, how_long: Duration) -> Vec<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(callbacks_meanwhile(port, first, stop.clone()));
    tokio::time::sleep(how_long).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap()
}
