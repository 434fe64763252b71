//! Duplicates and competing statuses sent at the same instant.

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{now, payload, sign_php, TestApp, DEFAULT_PATH};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_deliveries_at_once_store_one_row_and_one_event() {
    let app = TestApp::spawn().await;
    let body = payload("qris-acquirer-transaction");
    let ts = now().to_string();
    let sig = sign_php(&app.secret, DEFAULT_PATH, "same-token", &body, &ts);
    let replies = join_all(
        (0..50).map(|_| app.post_raw(DEFAULT_PATH, body.clone(), Some(&sig), Some(&ts), Some("Bearer same-token"))),
    )
    .await;
    assert!(replies.iter().all(|r| r.status == 200), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    let fresh = replies.iter().filter(|r| !r.duplicate()).count();
    assert_eq!(fresh, 1, "exactly one delivery is new");
    let ids: std::collections::HashSet<i64> = replies.iter().map(|r| r.delivery_id()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("deliveries").await, 1);
    let times: i32 =
        sqlx::query_scalar("SELECT times_received FROM singapay.deliveries").fetch_one(&app.db).await.unwrap();
    assert_eq!(times, 50);
    assert_eq!(app.count("transaction_events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_statuses_for_one_transaction_get_gap_free_versions() {
    let app = TestApp::spawn().await;
    let id = "1400000000000000000000000000777";
    let codes = ["01", "02", "03", "00", "06", "04", "03", "01", "02", "00"];
    let bodies: Vec<String> = (0..20)
        .map(|i| {
            json!({
                "response_code": "SP000",
                "event": "disbursement",
                "data": {
                    "transaction_id": id,
                    "transaction_status": { "code": codes[i % codes.len()] },
                    "notes": format!("attempt {i}")
                }
            })
            .to_string()
        })
        .collect();
    let replies = join_all(bodies.iter().map(|b| app.send(b))).await;
    assert!(
        replies.iter().all(|r| r.status == 200 && !r.duplicate()),
        "{:?}",
        replies.iter().map(|r| &r.json).collect::<Vec<_>>()
    );

    let events: Vec<(i32, Option<String>, String)> =
        sqlx::query_as("SELECT version, from_status, to_status FROM singapay.transaction_events ORDER BY version")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let n = events.len();
    assert!(n >= 1);
    let versions: Vec<i32> = events.iter().map(|e| e.0).collect();
    assert_eq!(versions, (1..=n as i32).collect::<Vec<_>>(), "versions are 1..n without gaps");
    assert_eq!(events[0].1, None);
    for pair in events.windows(2) {
        assert_eq!(pair[1].1.as_deref(), Some(pair[0].2.as_str()), "each change starts where the last ended");
    }
    let (status, version): (String, i32) =
        sqlx::query_as("SELECT status, version FROM singapay.transactions").fetch_one(&app.db).await.unwrap();
    assert_eq!((version as usize, status.as_str()), (n, events[n - 1].2.as_str()));
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.deliveries WHERE outcome = 'applied'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(applied as usize, n, "one queue row per applied delivery");
    assert_eq!(app.count("deliveries").await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_expiration_batches_do_not_deadlock() {
    let app = TestApp::spawn().await;
    // Two sweeps listing the same items in opposite orders, many times at once.
    let items: Vec<serde_json::Value> = (0..30).map(|i| json!({ "id": i, "reff_no": format!("Q-{i:03}") })).collect();
    let mut reversed = items.clone();
    reversed.reverse();
    let bodies: Vec<String> = (0..12)
        .map(|i| {
            let list = if i % 2 == 0 { &items } else { &reversed };
            json!({ "event": "transaction-expiration", "timestamp": format!("2{i} Mar 2026 04:35:02"), "data": { "qris_histories": list } })
                .to_string()
        })
        .collect();
    let replies = join_all(bodies.iter().map(|b| app.send(b))).await;
    assert!(replies.iter().all(|r| r.status == 200), "{:?}", replies.iter().map(|r| &r.json).collect::<Vec<_>>());
    assert_eq!(app.count("transaction_events").await, 30, "each item expires once");
}
