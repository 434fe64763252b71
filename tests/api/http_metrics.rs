//! `/metrics`' queue gauges cost the same however much history the event log keeps: a
//! refresh reads the unfinished events and the dead ones, never the finished events kept
//! for RETENTION_DAYS.

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;
use sqlx::PgPool;

use singapay_webhooks::store::QUEUE_GAUGES;

use crate::helpers::{fresh_database, seed_events, TestApp};

/// What Postgres's statistics say was read from `tables` (the event log's partitions that
/// hold rows: a day's partition without any is planned as a sequential scan of nothing, and
/// is checked by [`rows_read_sequentially`]): (sequential scans, rows they read, index
/// scans, index entries read through any of its indexes).
async fn reads(db: &PgPool, tables: &[String]) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(t.seq_scan), 0)::int8, coalesce(sum(t.seq_tup_read), 0)::int8,
                coalesce(sum(t.idx_scan), 0)::int8,
                (SELECT coalesce(sum(i.idx_tup_read), 0)::int8 FROM pg_stat_user_indexes i
                  WHERE i.relid = ANY (SELECT x::regclass FROM unnest($1::text[]) x))
           FROM pg_stat_user_tables t
          WHERE t.relid = ANY (SELECT x::regclass FROM unnest($1::text[]) x)",
    )
    .bind(tables)
    .fetch_one(db)
    .await
    .unwrap()
}

/// The partitions of `table` that hold rows (have pages: found without reading them).
async fn holding(db: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT partition::text FROM singapay.history_partitions
          WHERE table_name = $1 AND pg_relation_size(partition) > 0",
    )
    .bind(table)
    .fetch_all(db)
    .await
    .unwrap()
}

/// Rows every sequential scan of `table`'s partitions read, whether they hold rows or not.
async fn rows_read_sequentially(db: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(t.seq_tup_read), 0)::int8 FROM pg_stat_user_tables t
          WHERE t.relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = format('singapay.%I', $1::text)::regclass)",
    )
    .bind(table)
    .fetch_one(db)
    .await
    .unwrap()
}

/// The value of `name{state="…"}` in Prometheus text.
fn events(text: &str, state: &str) -> f64 {
    let prefix = format!("singapay_queue_events{{state=\"{state}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok()).unwrap_or_else(|| panic!("{text}"))
}

/// Every plan node that reads `relation`: (node type, rows it returned, loops).
fn nodes_reading(plan: &serde_json::Value, relation: &str, out: &mut Vec<(String, f64, f64)>) {
    let name = plan["Relation Name"].as_str().unwrap_or_default();
    if name == relation || name.strip_prefix(relation).is_some_and(|day| day.starts_with('_')) {
        // Rows a scan read and dropped count as read.
        let removed = plan["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
        out.push((
            plan["Node Type"].as_str().unwrap().to_owned(),
            plan["Actual Rows"].as_f64().unwrap() + removed,
            plan["Actual Loops"].as_f64().unwrap(),
        ));
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes_reading(child, relation, out);
    }
}

/// 200,000 finished events kept (and a backlog of 2,000, ten of them running, and seven
/// dead): a metrics refresh reads the backlog and the dead events, and not one finished
/// event — no sequential scan of the log, and no more index entries than there are dead
/// events — while every gauge is right (`done` within the statistics' estimate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_do_not_read_the_finished_events() {
    let (url, seeding) = fresh_database().await;
    // The backlog, through the queue as intake writes it: 2,000 transactions, one event each.
    seed_events(&seeding, 2000, 1).await;
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.claim_events('metrics-test', 10, '1 hour')")
        .fetch_one(&seeding)
        .await
        .unwrap();
    assert_eq!(claimed, 10);
    // The history: each transaction's earlier events, finished long ago, and seven dead.
    sqlx::query(
        "INSERT INTO singapay.event_log
                (event_id, transaction_key, version, webhook_type, to_status, payload, state, attempts, finished_at)
         SELECT gen_random_uuid(), 'disbursement:seed-' || g, v, 'disbursement', 'succeeded', '{}'::jsonb,
                'done', 1, now() - interval '30 days'
           FROM generate_series(1, 2000) g, generate_series(2, 100) v
         UNION ALL
         SELECT gen_random_uuid(), 'disbursement:seed-1', v, 'disbursement', 'failed', '{}'::jsonb, 'dead', 25,
                now() - interval '1 day'
           FROM generate_series(101, 107) v",
    )
    .execute(&seeding)
    .await
    .unwrap();
    let log_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.event_log").fetch_one(&seeding).await.unwrap();
    assert_eq!(log_rows, 2000 + 198_000 + 7);
    // Closing the seeding connections writes their statistics (their reads included);
    // ANALYZE then sets the log's row estimate, as autovacuum would. From here on, nothing
    // but the refresh reads the event log until its counters are compared.
    let log = holding(&seeding, "event_log").await;
    seeding.close().await;
    // A backend reports what it read when it exits, or when idle up to 10 s later: end the
    // seeding sessions and wait until they have gone, so that their reading of the log is
    // counted before the refresh's is measured.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND backend_type = 'client backend'";
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) {others}")).execute(&mut admin).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) {others}")).fetch_one(&mut admin).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the seeding sessions never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin.close().await.unwrap();
    let db = PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    sqlx::query("ANALYZE singapay.event_log").execute(&db).await.unwrap();

    let queue = vec!["singapay.event_queue".to_string()];
    let app = TestApp::spawn_on(url, db.clone(), |_| {}).await;
    let log_before = reads(&db, &log).await;
    let sequential_before = rows_read_sequentially(&db, "event_log").await;
    let queue_before = reads(&db, &queue).await;
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(events(&text, "available"), 1990.0, "{text}");
    assert_eq!(events(&text, "running"), 10.0);
    assert_eq!(events(&text, "dead"), 7.0);
    assert_eq!(crate::helpers::metric(&text, "singapay_queue_due_events"), 1990.0);
    assert!(crate::helpers::metric(&text, "singapay_queue_oldest_due_age_seconds") >= 0.0);
    let done = events(&text, "done");
    assert!((done - 198_000.0).abs() <= 198_000.0 * 0.05, "done {done}: an estimate, but not a wild one");

    // The refresh's backend reports what it read when it is next idle (within seconds):
    // wait until its reading of the queue shows, then compare the log's counters.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = reads(&db, &queue).await;
        if now.0 + now.2 > queue_before.0 + queue_before.2 {
            break;
        }
        assert!(Instant::now() < deadline, "the refresh's statistics never arrived: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log_after = reads(&db, &log).await;
    assert_eq!(log_after.0 - log_before.0, 0, "a sequential scan of the event log");
    assert_eq!(log_after.1 - log_before.1, 0, "rows of the event log read sequentially");
    assert_eq!(rows_read_sequentially(&db, "event_log").await, sequential_before, "in any day's partition");
    let entries = log_after.3 - log_before.3;
    assert!(entries <= 7, "{entries} index entries of the event log read for 7 dead events");

    // The query itself, as Postgres runs it: the log is read only through the dead events'
    // index, and only for them.
    let plan: serde_json::Value =
        sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {QUEUE_GAUGES}")).fetch_one(&db).await.unwrap();
    let mut log_nodes = Vec::new();
    nodes_reading(&plan[0]["Plan"], "event_log", &mut log_nodes);
    assert!(!log_nodes.is_empty(), "{plan}");
    for (node, rows, loops) in &log_nodes {
        // A day's partition holding no row is planned as a sequential scan of nothing.
        assert!(node.starts_with("Index") || *rows == 0.0, "{node} on the event log: {plan}");
        assert!(rows * loops <= 7.0, "{node} returned {rows} × {loops} rows of the event log: {plan}");
    }
}
