//! Postgres going away mid-run: 503 with Retry-After, and recovery without a restart.

use crate::helpers::{database_on, now, payload, private_cluster, sign_php, TestApp, DEFAULT_PATH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_outage_answers_503_and_recovers_by_itself() {
    let (_dir, cluster) = private_cluster();
    let (url, db) = database_on(&cluster, "outage").await;
    let app = TestApp::spawn_on(url, db, |_| {}).await;
    assert_eq!(app.send(&payload("va-transaction")).await.status, 200);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap().unwrap();

    let body = payload("disbursement");
    let ts = now().to_string();
    let sig = sign_php(&app.secret, DEFAULT_PATH, "tok-outage", &body, &ts);
    let r = app.post_raw(DEFAULT_PATH, body.clone(), Some(&sig), Some(&ts), Some("Bearer tok-outage")).await;
    assert_eq!((r.status, r.error_code()), (503, "storage_unavailable"), "{:?}", r.json);
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("60"));
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let live = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(live.status().as_u16(), 200, "the process itself stays up");

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = c;
        c.start()
    })
    .await
    .unwrap()
    .unwrap();

    // Singapay's retry: the same request, still within the time window.
    let r = app.post_raw(DEFAULT_PATH, body, Some(&sig), Some(&ts), Some("Bearer tok-outage")).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(!r.duplicate(), "nothing was stored during the outage");
    let fresh = sqlx::PgPool::connect(&cluster.url("outage")).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.deliveries").fetch_one(&fresh).await.unwrap();
    assert_eq!(n, 2);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap().unwrap();
}
