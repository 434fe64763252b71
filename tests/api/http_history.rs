//! History partitioned by day, under callbacks: the same content on both sides of a
//! partition boundary is stored once, and a day's partition taken away mid-run is made
//! again by intake without a callback acknowledged and lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::helpers::{disbursement, lock_waiters, payload, TestApp};

/// The partitioned history tables.
const TABLES: [&str; 4] = ["deliveries", "event_log", "rejected_deliveries", "inquiries"];

/// The partition of `singapay.<table>` holding `at`, as `schema.name`.
async fn partition_at(db: &PgPool, table: &str, at: DateTime<Utc>) -> Option<String> {
    sqlx::query_scalar(
        "SELECT partition::text FROM singapay.history_partitions
          WHERE table_name = $1 AND from_at <= $2 AND $2 < to_at AND NOT detaching",
    )
    .bind(table)
    .bind(at)
    .fetch_optional(db)
    .await
    .unwrap()
}

/// Replaces, for every history table, the partition holding a moment about two seconds
/// from now by two partitions meeting at that moment; returns it (the boundary B). In one
/// transaction: intake never sees the day without a partition.
async fn split_at_a_boundary_ahead(db: &PgPool) -> DateTime<Utc> {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut *tx).await.unwrap();
    // A boundary at midnight would leave one side empty: a millisecond later then.
    let boundary: DateTime<Utc> = sqlx::query_scalar(
        "SELECT CASE WHEN b = date_trunc('day', b, 'UTC') THEN b + interval '1 millisecond' ELSE b END
           FROM (SELECT date_trunc('milliseconds', clock_timestamp() + interval '2 seconds') AS b) x",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    for table in TABLES {
        let (partition, from, to): (String, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
            "SELECT partition::text, from_at, to_at FROM singapay.history_partitions
              WHERE table_name = $1 AND from_at <= $2 AND $2 < to_at",
        )
        .bind(table)
        .bind(boundary)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query(&format!("ALTER TABLE singapay.{table} DETACH PARTITION {partition}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(&format!("DROP TABLE {partition}")).execute(&mut *tx).await.unwrap();
        for (lo, hi) in [(from, boundary), (boundary, to)] {
            sqlx::query("SELECT singapay_history.create_partition($1, $2, $3)")
                .bind(table)
                .bind(lo)
                .bind(hi)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    boundary
}

/// One content sent 500 times around a partition boundary B, in waves every 50 ms from
/// B − 0.8 s to B + 0.8 s: the copies after B (whose transactions would store them in the
/// partition after B, where the unique index does not see the first copy) count on the
/// row stored before B. One delivery, received 500 times; one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_storm_straddling_a_partition_boundary_stores_one_row_and_one_event() {
    let app = TestApp::spawn().await;
    let boundary = split_at_a_boundary_ahead(&app.db).await;
    for table in TABLES {
        let before = partition_at(&app.db, table, boundary - chrono::Duration::milliseconds(1)).await;
        let after = partition_at(&app.db, table, boundary).await;
        assert!(before.is_some() && after.is_some() && before != after, "{table} is split at {boundary}");
    }

    let body = payload("va-transaction");
    const COPIES: usize = 500;
    const WAVES: usize = 33;
    const EVERY: Duration = Duration::from_millis(50);
    // B − 0.8 s on this process's clock (the database's: same machine).
    let lead = (boundary - Utc::now() - chrono::Duration::milliseconds(800)).to_std().unwrap_or(Duration::ZERO);
    let first_wave = tokio::time::Instant::now() + lead;
    let replies = join_all((0..COPIES).map(|i| {
        let body = &body;
        let app = &app;
        async move {
            tokio::time::sleep_until(first_wave + EVERY * (i % WAVES) as u32).await;
            let sent = Utc::now();
            let reply = app.send(body).await;
            (sent, Utc::now(), reply)
        }
    }))
    .await;

    assert!(replies.iter().any(|(sent, ..)| *sent < boundary), "a copy was sent before the boundary");
    assert!(replies.iter().any(|(sent, ..)| *sent > boundary), "a copy was sent after the boundary");
    assert!(replies.iter().any(|(_, done, _)| *done > boundary), "a copy was answered after the boundary");
    let statuses: Vec<u16> = replies.iter().map(|(.., r)| r.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let ids: HashSet<i64> = replies.iter().map(|(.., r)| r.delivery_id()).collect();
    assert_eq!(ids.len(), 1, "every copy is answered with the same delivery: {ids:?}");
    let fresh = replies.iter().filter(|(.., r)| !r.duplicate()).count();
    assert_eq!(fresh, 1, "exactly one copy is new");

    assert_eq!(app.count("deliveries").await, 1);
    let (id, times, stored_at, partition): (i64, i32, DateTime<Utc>, String) =
        sqlx::query_as("SELECT id, times_received, stored_at, tableoid::regclass::text FROM singapay.deliveries")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(Some(&id), ids.iter().next());
    assert_eq!(times, COPIES as i32);
    assert!(stored_at < boundary, "the first copy was stored before the boundary, at {stored_at}");
    assert_eq!(
        Some(partition),
        partition_at(&app.db, "deliveries", stored_at).await,
        "the row is in the partition before the boundary"
    );
    assert_eq!(app.count("transaction_events").await, 1);
    let (event_stored_at, event_partition): (DateTime<Utc>, String) =
        sqlx::query_as("SELECT stored_at, tableoid::regclass::text FROM singapay.event_log")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(event_stored_at, stored_at, "stored by the same transaction");
    assert_eq!(Some(event_partition), partition_at(&app.db, "event_log", stored_at).await);
}

/// Polls `condition` every 5 ms, for at most 10 s.
async fn until<F: std::future::Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The race the storm above may not hit: one copy whose transaction began before the
/// boundary B, not yet committed, and a second whose transaction began after it. Each
/// would store the content in its own partition, where the other's unique index does not
/// see it; the second must wait for the first and count on its row. (The writers are held
/// by a lock on `transactions`, which every batch's look-up takes, until both wait.) The
/// content names no transaction: no row lock of `transactions` orders the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_content_racing_across_a_partition_boundary_is_stored_once() {
    let app = TestApp::spawn_with(|s| s.intake.writers = 2).await;
    let boundary = split_at_a_boundary_ahead(&app.db).await;
    let body = r#"{"event":"history-boundary-probe","data":{"note":"the same content twice"}}"#;

    let mut locker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE singapay.transactions IN EXCLUSIVE MODE").execute(&mut *locker).await.unwrap();
    let first = app.send(body);
    let rest = async {
        until("the first copy's writer waits", || async { lock_waiters(&app.db).await == 1 }).await;
        assert!(Utc::now() < boundary, "the first copy's transaction began before the boundary");
        let wait = (boundary - Utc::now() + chrono::Duration::milliseconds(50)).to_std().unwrap();
        tokio::time::sleep(wait).await;
        let second = app.send(body);
        let release = async {
            until("the second copy's writer waits too", || async { lock_waiters(&app.db).await == 2 }).await;
            locker.commit().await.unwrap();
        };
        tokio::join!(second, release).0
    };
    let (first, second) = tokio::join!(first, rest);

    for r in [&first, &second] {
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    assert_eq!(first.delivery_id(), second.delivery_id(), "the second copy counts on the first's row");
    assert!(!first.duplicate() && second.duplicate());
    let rows: Vec<(i32, DateTime<Utc>)> =
        sqlx::query_as("SELECT times_received, stored_at FROM singapay.deliveries").fetch_all(&app.db).await.unwrap();
    assert_eq!(rows.len(), 1, "one row, not one per partition: {rows:?}");
    assert_eq!(rows[0].0, 2);
    assert!(rows[0].1 < boundary, "stored by the transaction begun before the boundary");
}

/// What one callback of the sender got.
struct Answer {
    status: u16,
    delivery_id: Option<i64>,
    sent: Instant,
    json: serde_json::Value,
}

/// Today's partitions of `deliveries` and `event_log` detached by hand while 300 distinct
/// callbacks come in, 8 at a time: intake makes the day again and goes on. Nothing is
/// answered 500; every callback answered 200 is stored (in the new partition or the
/// detached one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intake_survives_its_day_partition_dropped_mid_run() {
    let app = TestApp::spawn().await;
    const CALLBACKS: usize = 300;
    const DETACH_AFTER: usize = 100;
    let answered = AtomicUsize::new(0);
    let reached = Notify::new();

    let sender = futures::stream::iter(0..CALLBACKS)
        .map(|i| {
            let (app, answered, reached) = (&app, &answered, &reached);
            async move {
                let body = disbursement(&format!("63{i:029}"), &format!("HIST-{i}"), "SP000", Some("00"));
                let sent = Instant::now();
                let r = app.send(&body).await;
                let delivery_id = (r.status == 200).then(|| r.delivery_id());
                if answered.fetch_add(1, Ordering::SeqCst) + 1 == DETACH_AFTER {
                    reached.notify_one();
                }
                Answer { status: r.status, delivery_id, sent, json: r.json }
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<Answer>>();

    let detacher = async {
        reached.notified().await;
        let mut detached = Vec::new();
        for table in ["deliveries", "event_log"] {
            let partition = partition_at(&app.db, table, Utc::now()).await.expect("today has a partition");
            sqlx::query(&format!("ALTER TABLE singapay.{table} DETACH PARTITION {partition}"))
                .execute(&app.db)
                .await
                .unwrap();
            detached.push(partition);
        }
        (Instant::now(), detached)
    };

    let (answers, (detached_at, detached)) = tokio::join!(sender, detacher);
    let (deliveries_old, event_log_old) = (&detached[0], &detached[1]);

    assert_eq!(answers.len(), CALLBACKS);
    let unexpected: Vec<(u16, &serde_json::Value)> =
        answers.iter().filter(|a| a.status != 200 && a.status != 503).map(|a| (a.status, &a.json)).collect();
    assert!(unexpected.is_empty(), "every callback is answered 200 or 503: {unexpected:?}");
    let after = answers.iter().filter(|a| a.status == 200 && a.sent > detached_at).count();
    assert!(after > 0, "callbacks sent after the detach are stored");
    let refused = answers.iter().filter(|a| a.status == 503).count();
    eprintln!("{} answered 200 ({after} sent after the detach), {refused} answered 503", CALLBACKS - refused);

    let acknowledged: Vec<i64> = answers.iter().filter_map(|a| a.delivery_id).collect();
    let stored: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT id FROM singapay.deliveries WHERE id = ANY($1) UNION ALL SELECT id FROM {deliveries_old} WHERE id = ANY($1)"
    ))
    .bind(&acknowledged)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let stored: HashSet<i64> = stored.into_iter().collect();
    let lost: Vec<i64> = acknowledged.iter().copied().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged and not stored: {lost:?}");
    // Each payout's event was written with its delivery, in the same transaction.
    let with_event: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT delivery_id FROM singapay.event_log WHERE delivery_id = ANY($1)
         UNION ALL SELECT delivery_id FROM {event_log_old} WHERE delivery_id = ANY($1)"
    ))
    .bind(&acknowledged)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let with_event: HashSet<i64> = with_event.into_iter().collect();
    let eventless: Vec<i64> = acknowledged.iter().copied().filter(|id| !with_event.contains(id)).collect();
    assert!(eventless.is_empty(), "acknowledged without their event: {eventless:?}");

    for (table, old) in [("deliveries", deliveries_old), ("event_log", event_log_old)] {
        let now = partition_at(&app.db, table, Utc::now()).await;
        assert!(now.is_some(), "{table} has a partition for today again");
        assert_ne!(now.as_ref(), Some(old), "a new partition, not the detached one");
    }

    for old in [deliveries_old, event_log_old] {
        sqlx::query(&format!("DROP TABLE {old}")).execute(&app.db).await.unwrap();
    }
}

/// A VA payment stamped `at` (its `timestamp`, in Jakarta time as Singapay writes it).
fn va_payment_stamped(transaction_id: &str, at: DateTime<Utc>) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&payload("va-transaction")).unwrap();
    let jakarta = at + chrono::Duration::hours(7);
    body["timestamp"] = jakarta.format("%d %b %Y %H:%M:%S").to_string().into();
    body["data"]["transaction"]["transaction_id"] = transaction_id.into();
    body.to_string()
}

/// Intake looks a content up only in the days that can hold an earlier copy of it (from a
/// day before the body's own time): a callback of today goes through while an old day's
/// partitions are locked exclusively (a restore, a long DDL), which it would otherwise wait
/// behind for `lock_timeout`; and a retry of a body stamped days ago still finds its first
/// copy in that day's partition and counts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contents_are_looked_up_only_in_the_days_their_time_allows() {
    let app = TestApp::spawn().await;
    sqlx::query("SELECT singapay.ensure_partitions(current_date - 12, current_date)").execute(&app.db).await.unwrap();
    let now = Utc::now();
    let day = |days_ago: i64| now - chrono::Duration::days(days_ago);

    // A body stamped three days ago, first stored then (its rows moved to that day).
    let old = va_payment_stamped("3211120260314091200003", day(3));
    let first = app.send(&old).await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    for table in ["deliveries", "event_log"] {
        sqlx::query(&format!("UPDATE singapay.{table} SET stored_at = stored_at - interval '3 days'"))
            .execute(&app.db)
            .await
            .unwrap();
    }
    let part = partition_at(&app.db, "deliveries", day(3)).await.unwrap();
    let held: String = sqlx::query_scalar("SELECT tableoid::regclass::text FROM singapay.deliveries")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(held, part, "the first copy is in the partition of three days ago");

    // Ten days ago, every history table's partition locked exclusively.
    let mut locker = app.db.begin().await.unwrap();
    for table in TABLES {
        let p = partition_at(&app.db, table, day(10)).await.unwrap();
        sqlx::query(&format!("LOCK TABLE {p} IN ACCESS EXCLUSIVE MODE")).execute(&mut *locker).await.unwrap();
    }

    let today = va_payment_stamped("3211120260314091200004", now);
    let reply = tokio::time::timeout(Duration::from_secs(5), app.send(&today))
        .await
        .expect("a callback of today does not wait for a day ten days back");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(!reply.duplicate());

    let retry = tokio::time::timeout(Duration::from_secs(5), app.send(&old))
        .await
        .expect("a retry stamped three days ago does not wait for a day ten days back");
    assert_eq!(retry.status, 200, "{:?}", retry.json);
    assert!(retry.duplicate(), "the retry counts on the copy stored three days ago");
    assert_eq!(retry.delivery_id(), first.delivery_id());
    locker.rollback().await.unwrap();

    let (times, partition): (i32, String) =
        sqlx::query_as("SELECT times_received, tableoid::regclass::text FROM singapay.deliveries WHERE id = $1")
            .bind(first.delivery_id())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((times, partition), (2, part));
    assert_eq!(app.count("deliveries").await, 2);
}
