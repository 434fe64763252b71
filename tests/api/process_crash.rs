//! SIGKILL in the middle of a concurrent load: every callback answered 200 was committed,
//! exactly once with its queue row, and clients retrying the rest end with everything
//! stored exactly once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{fresh_database, now, random_hex, sign_php, DEFAULT_PATH};
use crate::process::{self, env, Server};

const CLIENTS: usize = 16;
const ROUNDS: usize = 5;

fn body(n: usize) -> String {
    json!({
        "response_code": "SP000",
        "event": "disbursement",
        "data": {
            "transaction_id": format!("66{n:029}"),
            "transaction_status": { "code": "00" },
            "net_amount": { "currency": "IDR", "value": "5000.00" }
        }
    })
    .to_string()
}

/// Posts callback `n`; `Some(delivery_id)` when answered 200.
async fn post(client: &reqwest::Client, port: u16, secret: &str, n: usize) -> Option<i64> {
    let body = body(n);
    let ts = now().to_string();
    let token = format!("tok{n}");
    let sig = sign_php(secret, DEFAULT_PATH, &token, &body, &ts);
    let r = client
        .post(format!("http://127.0.0.1:{port}{DEFAULT_PATH}"))
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("authorization", format!("Bearer {token}"))
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json::<serde_json::Value>().await.ok()?["delivery_id"].as_i64()
}

fn start(vars: &[(String, String)], port: u16) -> Server {
    process::serve(&["serve"], vars, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_callback_and_retries_store_the_rest_once() {
    let (db_url, db) = fresh_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let vars = env(&[
        ("DATABASE_URL", &db_url),
        ("SINGAPAY_WEBHOOK_SECRETS", &secret),
        ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
        ("LOG_FORMAT", "text"),
        ("RUST_LOG", "warn"),
    ]);
    let client = reqwest::Client::new();
    // Callback number → the delivery id it was acknowledged with.
    let acked: Arc<Mutex<HashMap<usize, i64>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    for round in 0..ROUNDS {
        let mut server = start(&vars, port);
        server.wait_ready().await;
        let before = acked.lock().unwrap().len();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, secret, acked, next, stop) =
                    (client.clone(), secret.clone(), acked.clone(), next.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        match post(&client, port, &secret, n).await {
                            Some(id) => {
                                acked.lock().unwrap().insert(n, id);
                            }
                            None => return,
                        }
                    }
                })
            })
            .collect();
        // Kill once this round has had callbacks acknowledged, in the middle of the load.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 200 + round * 50 {
            assert!(Instant::now() < deadline, "round {round}: the load made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.signal("KILL");
        server.wait_exit(Duration::from_secs(10)).await;
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }

        // Every acknowledged callback is stored exactly once, with its queue row.
        let acked_now = acked.lock().unwrap().clone();
        let rows: Vec<(i64, String, i32, i64)> = sqlx::query_as(
            "SELECT d.id, d.transaction_key, d.times_received,
                    (SELECT count(*) FROM singapay.transaction_events e WHERE e.delivery_id = d.id)
               FROM singapay.deliveries d",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        let by_id: HashMap<i64, (String, i32, i64)> = rows.into_iter().map(|(id, k, t, e)| (id, (k, t, e))).collect();
        for (n, id) in &acked_now {
            let (key, times, events) = by_id.get(id).unwrap_or_else(|| panic!("round {round}: callback {n} lost"));
            assert_eq!(key, &format!("disbursement:66{n:029}"), "round {round}: callback {n} stored as another");
            assert_eq!((*times, *events), (1, 1), "round {round}: callback {n}");
        }
    }

    // Singapay retries what was never answered 200: everything ends stored exactly once.
    let mut server = start(&vars, port);
    server.wait_ready().await;
    let sent = next.load(Ordering::SeqCst);
    let unanswered: Vec<usize> = (0..sent).filter(|n| !acked.lock().unwrap().contains_key(n)).collect();
    assert!(!unanswered.is_empty(), "a SIGKILL mid-load leaves callbacks unanswered");
    for n in &unanswered {
        assert!(post(&client, port, &secret, *n).await.is_some(), "retry of callback {n} answered 200");
    }
    let (deliveries, keys, events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM singapay.deliveries), (SELECT count(DISTINCT transaction_key) FROM singapay.deliveries),
                (SELECT count(*) FROM singapay.transaction_events)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((deliveries, keys, events), (sent as i64, sent as i64, sent as i64));
    let versions: BTreeSet<i32> = sqlx::query_scalar("SELECT DISTINCT version FROM singapay.transactions")
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(versions, BTreeSet::from([1]));
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).await.success());
}
