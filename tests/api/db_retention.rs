//! `prune` removes only what is old and finished, without disturbing a consumer.

use std::time::Duration;

use singapay_webhooks::{queue, store};

use crate::helpers::{now, payload, TestApp};

fn disbursement(code: &str, n: u32) -> String {
    format!(
        r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"8080","transaction_status":{{"code":"{code}"}},"notes":"{n}"}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_only_old_finished_rows_and_leaves_a_claiming_consumer_alone() {
    let app = TestApp::spawn().await;
    // Old history: a payout that went 01 → 03 → 00, all three events consumed.
    let mut old_ids = Vec::new();
    for (code, n) in [("01", 1), ("03", 2), ("00", 3)] {
        old_ids.push(app.send(&disbursement(code, n)).await.delivery_id());
    }
    for ev in queue::claim(&app.db, "c", 10, Duration::from_secs(60)).await.unwrap() {
        assert!(queue::ack(&app.db, ev.id, "c").await.unwrap());
    }
    for _ in 0..2 {
        for ev in queue::claim(&app.db, "c", 10, Duration::from_secs(60)).await.unwrap() {
            assert!(queue::ack(&app.db, ev.id, "c").await.unwrap());
        }
    }
    // An old VA payment whose event was never consumed, an old dead event, an old rejection.
    let va = app.send(&payload("va-transaction")).await.delivery_id();
    let dead = app.send(&payload("qris-acquirer-transaction")).await.delivery_id();
    sqlx::query("UPDATE singapay.transaction_events SET state = 'dead', finished_at = now() WHERE delivery_id = $1")
        .bind(dead)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(app.send_at(&payload("ewallet-topup"), now() - 3600).await.status, 401);
    sqlx::query("UPDATE singapay.deliveries SET received_at = now() - interval '100 days', last_received_at = now() - interval '100 days'")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE singapay.transaction_events SET created_at = now() - interval '100 days', finished_at = now() - interval '100 days' WHERE finished_at IS NOT NULL")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE singapay.rejected_deliveries SET last_received_at = now() - interval '100 days'")
        .execute(&app.db)
        .await
        .unwrap();
    // New history: a fresh delivery that must stay.
    let fresh = app.send(&payload("direct-debit")).await.delivery_id();

    // A consumer in the middle of a claim (its transaction still open, rows locked).
    let mut consumer = app.db.begin().await.unwrap();
    let claimed: Vec<i64> = sqlx::query_scalar("SELECT id FROM singapay.claim_events('mid-claim', 10, '1 minute')")
        .fetch_all(&mut *consumer)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "the VA and direct-debit events");

    let cutoff = chrono::Utc::now() - chrono::Duration::days(90);
    let dry = store::prune(&app.db, cutoff, 2, true).await.unwrap();
    assert_eq!((dry.events, dry.rejections), (3, 1));
    let report = tokio::time::timeout(Duration::from_secs(20), store::prune(&app.db, cutoff, 2, false))
        .await
        .expect("prune is not blocked by a consumer mid-claim")
        .unwrap();
    assert_eq!(report, store::PruneReport { events: 3, deliveries: 2, rejections: 1 });

    consumer.commit().await.unwrap();
    for id in claimed {
        assert!(queue::ack(&app.db, id, "mid-claim").await.unwrap(), "the consumer's claim survived");
    }
    let remaining: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM singapay.deliveries ORDER BY id").fetch_all(&app.db).await.unwrap();
    // The payout's first two deliveries are gone; its current state's delivery stays, as do
    // the VA (its event was unfinished), the dead event's cause, and the fresh one.
    assert_eq!(remaining, vec![old_ids[2], va, dead, fresh]);
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.transactions").fetch_one(&app.db).await.unwrap();
    assert_eq!(transactions, 4, "no transaction's current state is ever pruned");
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM singapay.transaction_events ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(states, ["done", "dead", "done"], "the dead event stays; only old done rows went");
    assert_eq!(app.count("rejected_deliveries").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_skips_a_locked_candidate_finishes_and_takes_it_next_time() {
    let app = TestApp::spawn().await;
    for (code, n) in [("01", 1), ("03", 2), ("00", 3)] {
        assert_eq!(app.send(&disbursement(code, n)).await.status, 200);
    }
    for _ in 0..3 {
        for ev in queue::claim(&app.db, "c", 10, Duration::from_secs(60)).await.unwrap() {
            assert!(queue::ack(&app.db, ev.id, "c").await.unwrap());
        }
    }
    sqlx::query("UPDATE singapay.transaction_events SET finished_at = now() - interval '100 days'")
        .execute(&app.db)
        .await
        .unwrap();
    // Someone holds a lock on a real prune candidate: an old, finished event.
    let mut holder = app.db.begin().await.unwrap();
    let locked: i64 = sqlx::query_scalar(
        "SELECT id FROM singapay.transaction_events WHERE state = 'done' ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *holder)
    .await
    .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(90);
    let report = tokio::time::timeout(Duration::from_secs(20), store::prune(&app.db, cutoff, 1, false))
        .await
        .expect("prune finishes although a candidate is locked")
        .unwrap();
    assert_eq!(report.events, 2, "the locked event is skipped, the others deleted");
    let left: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM singapay.transaction_events").fetch_all(&app.db).await.unwrap();
    assert_eq!(left, vec![locked]);
    holder.rollback().await.unwrap();
    let again = store::prune(&app.db, cutoff, 1, false).await.unwrap();
    assert_eq!(again.events, 1, "once the lock is gone, the next prune takes it");
    assert_eq!(app.count("transaction_events").await, 0);
}

/// Reconciliation's record: old inquiries go, except the last one of a check still kept;
/// recent ones stay.
#[tokio::test]
async fn prune_removes_old_inquiries_but_keeps_the_last_one_of_a_kept_check() {
    let app = TestApp::spawn().await;
    let insert = |key: &'static str, days: i32| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO singapay.inquiries
                    (asked_at, transaction_key, reason, asked_by, method, path, response_body, answer, elapsed_ms)
                 VALUES (now() - $2 * interval '1 day', $1, 'overdue', 'test', 'GET', '/api', '', 'not_found', 5)
                 RETURNING id",
            )
            .bind(key)
            .bind(days)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let old = insert("va:OLD", 100).await;
    let kept_by_check = insert("va:GAVE-UP", 100).await;
    let recent = insert("va:NEW", 1).await;
    sqlx::query(
        "INSERT INTO singapay.reconcile_checks (transaction_key, reason, state, last_inquiry_id, last_error)
         VALUES ('va:GAVE-UP', 'overdue', 'gave_up', $1, 'not found')",
    )
    .bind(kept_by_check)
    .execute(&app.db)
    .await
    .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(90);
    assert_eq!(store::prune_inquiries(&app.db, cutoff, 1, true).await.unwrap(), 1);
    assert_eq!(store::prune_inquiries(&app.db, cutoff, 1, false).await.unwrap(), 1);
    let left: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM singapay.inquiries ORDER BY id").fetch_all(&app.db).await.unwrap();
    assert_eq!(left, [kept_by_check, recent]);
    assert!(!left.contains(&old));
}
