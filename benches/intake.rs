//! Intake throughput and latency, as ratios against pgbench running the same SQL on the
//! same PostgreSQL in the same run (so a noisy machine cancels out), with prepared
//! statements as the receiver uses them.
//!
//!   cargo bench --bench intake                      # 4000 callbacks, 16 concurrent
//!   BENCH_REQUESTS=20000 BENCH_CLIENTS=32 cargo bench --bench intake
//!
//! The receiver side: the release `serve` binary on a throwaway durable cluster, fed signed
//! disbursement callbacks (each a new transaction: one delivery, one transaction row, one
//! queue row, one NOTIFY) over HTTP keep-alive connections. Signing happens before the
//! clock starts. The pgbench side: one transaction per callback with the statements
//! `store::record` issues for a new transaction, at the same concurrency.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use singapay_webhooks::embedded_pg::{self, free_port, Cluster};
use singapay_webhooks::singapay::signature;
use singapay_webhooks::singapay::Body;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Stats {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn body(n: usize) -> String {
    format!(
        r#"{{"response_code":"SP000","response_message":"Successfully","event":"disbursement","data":{{"transaction_id":"{:031}","reference_number":"BENCH-{n}","transaction_status":{{"code":"00","desc":"Success"}},"post_timestamp":"1773645729000","processed_timestamp":"1773645731000","bank":{{"code":"014","name":"BCA","account_name":"CV BENCH","account_number":"1000123456789"}},"gross_amount":{{"currency":"IDR","value":"252500.00"}},"fee":{{"currency":"IDR","value":"2500"}},"net_amount":{{"currency":"IDR","value":"250000.00"}},"balance_after":{{"currency":"IDR","value":"4817300.00"}},"notes":"bench"}}}}"#,
        n
    )
}

async fn receiver(port: u16, secret: &str, first: usize, count: usize, clients: usize) -> Stats {
    let url = format!("http://127.0.0.1:{port}/webhooks/singapay");
    let key = SecretString::from(secret.to_owned());
    let now = chrono::Utc::now().timestamp().to_string();
    let requests: Vec<(String, String, String)> = (first..first + count)
        .map(|n| {
            let b = body(n);
            let php = Body::analyse(b.as_bytes()).php.expect("canonical form");
            let token = format!("bench{n}");
            let sig = signature::sign(&key, b"/webhooks/singapay", token.as_bytes(), php.as_bytes(), now.as_bytes());
            (b, token, sig)
        })
        .collect();
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, queue, now) = (client.clone(), url.clone(), queue.clone(), now.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some((b, token, sig)) = queue.lock().unwrap().pop() else { break };
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("x-signature", sig)
                    .header("x-timestamp", &now)
                    .header("authorization", format!("Bearer {token}"))
                    .body(b)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats { per_sec: all.len() as f64 / elapsed, p50_ms: percentile(&all, 0.5), p99_ms: percentile(&all, 0.99) }
}

/// The statements `store::record` runs for a callback about a new transaction.
const PGBENCH_SCRIPT: &str = r#"\set n random(1, 9000000000000000000)
BEGIN;
INSERT INTO singapay.deliveries (content_sha256, webhook_type, event, transaction_key, response_code, response_message, response_class, envelope_status, envelope_success, transaction_status_code, transaction_status_desc, status, needs_inquiry, outcome, unrecognised_reason, partner_id, credential, signature_form, signed_at, event_at, request_path, request_id, x_signature, access_token, body, payload, x_timestamp) VALUES (sha256(:n::text::bytea), 'disbursement', 'disbursement', 'disbursement:' || :n, 'SP000', 'Successfully', 'success', NULL, NULL, '00', 'Success', 'succeeded', false, 'applied', NULL, 'bench', 'bench', 'php', now(), now(), '/webhooks/singapay', 'req', repeat('a', 128), 'token', convert_to(repeat('x', 640), 'UTF8'), '{"data":{"transaction_id":"1","net_amount":{"currency":"IDR","value":"250000.00"}},"event":"disbursement","response_code":"SP000"}'::jsonb, '1773645729') ON CONFLICT (content_sha256) DO UPDATE SET times_received = singapay.deliveries.times_received + 1, last_received_at = now() RETURNING id AS delivery_id, (xmax = 0) AS inserted, outcome \gset
SELECT status, version FROM singapay.transactions WHERE transaction_key = 'disbursement:' || :n FOR UPDATE;
INSERT INTO singapay.transactions (transaction_key, product, singapay_id, merchant_reference, status, transaction_status_code, last_response_code, amount, currency, version, first_delivery_id, last_delivery_id, processed_at) VALUES ('disbursement:' || :n, 'disbursement', :n, 'BENCH', 'succeeded', '00', 'SP000', 250000.00, 'IDR', 1, :delivery_id, :delivery_id, now()) ON CONFLICT (transaction_key) DO NOTHING RETURNING version;
INSERT INTO singapay.transaction_events (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code, transaction_status_code, delivery_id, payload) VALUES (gen_random_uuid(), 'disbursement:' || :n, 1, 'disbursement', NULL, 'succeeded', 'SP000', '00', :delivery_id, '{"schema":"singapay.transaction_event.v1","amount":"250000.00"}'::jsonb);
COMMIT;
"#;

fn pgbench(cluster: &Cluster, url: &str, count: usize, clients: usize, dir: &std::path::Path) -> Stats {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("intake.sql");
    std::fs::write(&script, PGBENCH_SCRIPT).unwrap();
    let logs = dir.join("pgbench-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let per_client = count.div_ceil(clients);
    let pgbench = ["pgbench".into(), cluster.bin_dir.join("pgbench").display().to_string()];
    let program = if cluster.bin_dir.join("pgbench").is_file() { &pgbench[1] } else { &pgbench[0] };
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
    Stats { per_sec: tps, p50_ms: percentile(&latencies, 0.5), p99_ms: percentile(&latencies, 0.99) }
}

fn main() {
    let requests = env_or("BENCH_REQUESTS", 4000);
    let clients = env_or("BENCH_CLIENTS", 16);
    let dir = tempfile::Builder::new().prefix("singapay-bench-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cluster = Cluster::open(&dir.path().join("pg"), true).expect("cluster");
    cluster.start().expect("start PostgreSQL");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(embedded_pg::ensure_database(&cluster, "bench")).unwrap();
    let url = cluster.url("bench");

    let port = free_port().unwrap();
    let secret = "bench-secret";
    let mut server = Command::new(env!("CARGO_BIN_EXE_singapay-webhooks"))
        .args(["serve", "--migrate"])
        .env("DATABASE_URL", &url)
        .env("SINGAPAY_WEBHOOK_SECRETS", format!("bench={secret}"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("DB_MAX_CONNECTIONS", (clients + 4).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    // Whatever happens below, the server and the cluster go away with the bench.
    struct Cleanup(std::process::Child, Cluster);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
            let _ = self.1.stop();
        }
    }
    let stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    let guard = Cleanup(server, cluster.clone());
    rt.block_on(async {
        for _ in 0..300 {
            if reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("serve did not become ready");
    });

    // Warm-up on both sides, then the measured runs back to back.
    rt.block_on(receiver(port, secret, 0, requests / 10, clients));
    pgbench(&cluster, &url, requests / 10, clients, &dir.path().join("warm"));
    let ours = rt.block_on(receiver(port, secret, requests, requests, clients));
    let sql = pgbench(&cluster, &url, requests, clients, &dir.path().join("run"));

    drop(guard);

    println!("intake benchmark: {requests} callbacks, {clients} concurrent, durable PostgreSQL, same machine and run");
    println!("{:<28} {:>12} {:>10} {:>10}", "", "per second", "p50 ms", "p99 ms");
    println!(
        "{:<28} {:>12.0} {:>10.2} {:>10.2}",
        "receiver (HTTP, verify, SQL)", ours.per_sec, ours.p50_ms, ours.p99_ms
    );
    println!("{:<28} {:>12.0} {:>10.2} {:>10.2}", "pgbench (the same SQL)", sql.per_sec, sql.p50_ms, sql.p99_ms);
    println!(
        "ratio receiver/pgbench: throughput {:.2}, p50 latency {:.2}, p99 latency {:.2}",
        ours.per_sec / sql.per_sec,
        ours.p50_ms / sql.p50_ms,
        ours.p99_ms / sql.p99_ms
    );
}
