//! Reconciliation on a big database: what its migrations, discovery and claiming cost with
//! 1,000,000 transactions of which 100,000 are still open (overdue), and how fast answers
//! are applied against the local sandbox over HTTP.
//!
//!   cargo bench --bench reconcile
//!   BENCH_RECONCILE_TRANSACTIONS=3000000 cargo bench --bench reconcile
//!
//! A throwaway durable cluster (fsync on) is filled with set-based SQL under the schema as
//! it was before reconciliation; then, timed:
//!
//! - the reconciliation migrations (new tables, and the partial index of open transactions
//!   built `CONCURRENTLY`: intake keeps writing meanwhile);
//! - discovery: the first pass (it adds at most 1,000 checks), then passes until every open
//!   transaction has its check, then the steady state (every open transaction checked,
//!   nothing to add), full (at start and hourly) and incremental (every other pass, every
//!   `RECONCILE_INTERVAL_SECS`);
//! - claiming 4 checks with 100,000 due, as the client sees it (each claim's checks are
//!   settled again at once, so the next claim has the same work);
//! - answers applied end to end: 2,000 overdue disbursements, the sandbox answering `00`,
//!   one reconciler with `RECONCILE_CONCURRENCY` 4 and 16: answers/s (each one a token-cached
//!   HTTP question, the `inquiries` row, the transaction's new version and its queue event,
//!   the check deleted, in one Postgres transaction).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::SecretString;
use singapay_webhooks::embedded_pg;
use singapay_webhooks::reconcile::{ApiCredential, ApiSettings, ReconcileSettings, Reconciler};
use singapay_webhooks::store::inquiries::{self, Next};
use singapay_webhooks::store::MIGRATOR;
use singapay_webhooks::tools::sandbox::{self, Sandbox, SandboxConfig};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The first reconciliation migration; the table is filled under the ones before.
const MIGRATION: i64 = 20261125000001;
const ANSWERED: i64 = 2_000;

/// `n` disbursements, one in ten still `pending` (the rest `succeeded`), last changed two
/// hours ago; each with its own reference.
async fn fill(db: &PgPool, n: i64) {
    sqlx::query(
        "WITH d AS (
            INSERT INTO singapay.deliveries
                (content_sha256, webhook_type, outcome, credential, signature_form, signed_at,
                 request_path, x_signature, access_token, body)
            VALUES (sha256('reconcile bench'), 'disbursement', 'applied', 'bench', 'raw', now(), '/bench', '', '', '')
            RETURNING id)
         INSERT INTO singapay.transactions
             (transaction_key, product, status, version, merchant_reference, first_delivery_id, last_delivery_id, updated_at)
         SELECT 'disbursement:' || g, 'disbursement', CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'succeeded' END, 1,
                'REF-' || g, d.id, d.id, now() - interval '2 hours'
           FROM generate_series(1, $1) g, d",
    )
    .bind(n)
    .execute(db)
    .await
    .unwrap();
}

fn settings(url: &str, concurrency: usize) -> ReconcileSettings {
    ReconcileSettings {
        credentials: vec![ApiCredential {
            label: "default".into(),
            api: ApiSettings {
                base_url: url.to_owned(),
                client_id: "bench-client".into(),
                client_secret: SecretString::from("bench-secret".to_owned()),
                partner_id: "bench-partner".into(),
                timeout: Duration::from_secs(10),
                allow_insecure: true,
            },
            accounts: vec!["BENCHACCOUNT".into()],
        }],
        money_out_overdue: Duration::from_secs(900),
        money_in_overdue: Duration::from_secs(86_400),
        concurrency,
        backoff: Duration::from_secs(3600),
        backoff_max: Duration::from_secs(3600),
        not_found_attempts: 5,
        unreadable_attempts: 10,
        interval: Duration::from_secs(3600),
    }
}

fn main() {
    let n: i64 = std::env::var("BENCH_RECONCILE_TRANSACTIONS").map_or(1_000_000, |v| v.parse().expect("a count"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let bench = common::BenchCluster::start("singapay-reconcile-bench-");
    let cluster = bench.cluster.clone();
    rt.block_on(async {
        embedded_pg::ensure_database(&cluster, "bench").await.unwrap();
        let pool = PgPoolOptions::new().max_connections(20).connect(&cluster.url("bench")).await.unwrap();
        common::migrate_before(&pool, &bench.path().join("old-migrations"), MIGRATION).await;
        fill(&pool, n).await;
        sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
        sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
        let t = Instant::now();
        MIGRATOR.run(&pool).await.unwrap();
        let migration_ms = t.elapsed().as_secs_f64() * 1000.0;

        let overdue = settings("http://127.0.0.1:9", 4).overdue();
        let mut conn = pool.acquire().await.unwrap();
        let t = Instant::now();
        let first = inquiries::discover(&mut conn, &overdue, None).await.unwrap().added;
        let first_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let mut passes = 1;
        while inquiries::discover(&mut conn, &overdue, None).await.unwrap().added > 0 {
            passes += 1;
        }
        let fill_s = t.elapsed().as_secs_f64();
        sqlx::query("VACUUM ANALYZE singapay.reconcile_checks").execute(&mut *conn).await.unwrap();
        // Steady state: a full discovery (at start and once an hour), and the incremental
        // one of every other pass (what became overdue since the previous pass, 30 s ago,
        // less the 5-minute overlap).
        let mut steady = Vec::new();
        let mut incremental = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            assert_eq!(inquiries::discover(&mut conn, &overdue, None).await.unwrap().added, 0);
            steady.push(t.elapsed().as_secs_f64() * 1000.0);
            let since = Utc::now() - chrono::Duration::seconds(30 + 300);
            let t = Instant::now();
            assert_eq!(inquiries::discover(&mut conn, &overdue, Some(since)).await.unwrap().added, 0);
            incremental.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        steady.sort_by(f64::total_cmp);
        incremental.sort_by(f64::total_cmp);
        drop(conn);
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM singapay.reconcile_checks").fetch_one(&pool).await.unwrap();

        let mut claims = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let taken = inquiries::claim(&pool, "bench", 60, 4, None).await.unwrap();
            claims.push(t.elapsed().as_secs_f64() * 1000.0);
            for c in &taken {
                // Back to where it was: due, unleased, uncounted.
                inquiries::settle(
                    &pool,
                    &c.transaction_key,
                    "bench",
                    &Next::Release { after_secs: 0, error: String::new() },
                    "not_asked",
                )
                .await
                .unwrap();
            }
        }
        claims.sort_by(f64::total_cmp);

        // Answers end to end: only ANSWERED checks stay due, each scripted to `00`.
        let sb = Sandbox::new(SandboxConfig {
            client_id: "bench-client".into(),
            client_secret: "bench-secret".into(),
            partner_id: "bench-partner".into(),
            token_ttl_secs: 3600,
            accounts: Vec::new(),
            control_token: "bench-control".into(),
            clock: Arc::new(Utc::now),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, sandbox::router(sb)).await });
        let http = reqwest::Client::new();
        let mut rates = Vec::new();
        for (round, concurrency) in [4usize, 16].into_iter().enumerate() {
            let from = round as i64 * ANSWERED;
            let keys: Vec<String> = (from..from + ANSWERED).map(|i| format!("disbursement:{}", (i + 1) * 10)).collect();
            sqlx::query("UPDATE singapay.reconcile_checks SET due_at = now() + interval '1 day'")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("UPDATE singapay.reconcile_checks SET due_at = now() WHERE transaction_key = ANY($1)")
                .bind(&keys)
                .execute(&pool)
                .await
                .unwrap();
            for i in from..from + ANSWERED {
                let body = serde_json::json!({ "id": format!("REF-{}", (i + 1) * 10), "answers": ["00"] });
                http.post(format!("{url}/_sandbox/transactions")).header("X-Sandbox-Token", "bench-control").json(&body).send().await.unwrap();
            }
            let rec = Reconciler::new(pool.clone(), settings(&url, concurrency), Arc::new(Utc::now), "bench").unwrap();
            let t = Instant::now();
            let report = rec.pass(None).await.unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(report.outcomes.len() as i64, ANSWERED);
            assert!(report.outcomes.iter().all(|o| o.transition.as_deref() == Some("applied")));
            rates.push((concurrency, ANSWERED as f64 / secs));
        }
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.event_log WHERE webhook_type = 'inquiry'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(events, 2 * ANSWERED);
        pool.close().await;

        println!("reconcile benchmark: {n} transactions, {} open (overdue), durable PostgreSQL (fsync on)", n / 10);
        println!("| what | figure |");
        println!("|---|---|");
        println!(
            "| reconciliation migrations (tables, open-transactions index built concurrently) | {migration_ms:.0} ms |"
        );
        println!("| first discovery (adds {first} checks, its limit) | {first_ms:.1} ms |");
        println!(
            "| discovery until every open transaction is checked | {passes} passes, {fill_s:.1} s ({open} checks) |"
        );
        println!(
            "| full discovery, every open transaction already checked (at start, then hourly) p50 / max | {:.0} / {:.0} ms |",
            common::percentile(&steady, 0.5),
            common::percentile(&steady, 1.0)
        );
        println!(
            "| incremental discovery, the same (every other pass) p50 / max | {:.2} / {:.2} ms |",
            common::percentile(&incremental, 0.5),
            common::percentile(&incremental, 1.0)
        );
        println!(
            "| claim 4 of {open} due checks, client p50 / p99 | {:.2} / {:.2} ms |",
            common::percentile(&claims, 0.5),
            common::percentile(&claims, 0.99)
        );
        for (concurrency, rate) in rates {
            println!("| answers applied, RECONCILE_CONCURRENCY={concurrency} | {rate:.0} /s |");
        }
    });
}
