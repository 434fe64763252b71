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

/// A deployment mistake in DATABASE_URL is "not now" for Singapay (it retries a 503 four
/// times, a 500 once) and `/readyz` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_database_credentials_or_name_answer_503_and_readyz_names_the_cause() {
    let (url, db) = crate::helpers::fresh_database().await;
    let mut wrong_role = url::Url::parse(&url).unwrap();
    wrong_role.set_username("no_such_role").unwrap();
    let mut wrong_db = url::Url::parse(&url).unwrap();
    wrong_db.set_path("/no_such_database");
    for (bad, cause) in
        [(wrong_role.to_string(), "database_authentication_failed"), (wrong_db.to_string(), "database_not_found")]
    {
        let app = TestApp::spawn_on(bad, db.clone(), |_| {}).await;
        let r = app.send(&payload("va-transaction")).await;
        assert_eq!((r.status, r.error_code()), (503, "storage_unavailable"), "{cause}: {:?}", r.json);
        assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("60"));
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status().as_u16(), 503);
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["error"]["code"], cause, "{body}");
    }
}

/// A table lock held longer than `lock_timeout` (10 s): the callback is answered 503 with
/// Retry-After, not 500, and Singapay's retry after the lock is gone is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_lock_timeout_answers_503_and_the_retry_is_stored() {
    let app = TestApp::spawn().await;
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE singapay.transactions IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let body = payload("disbursement");
    let ts = now().to_string();
    let sig = sign_php(&app.secret, DEFAULT_PATH, "tok-lock", &body, &ts);
    let r = app.post_raw(DEFAULT_PATH, body.clone(), Some(&sig), Some(&ts), Some("Bearer tok-lock")).await;
    assert_eq!((r.status, r.error_code()), (503, "storage_unavailable"), "{:?}", r.json);
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("60"));
    lock.commit().await.unwrap();
    let r = app.post_raw(DEFAULT_PATH, body, Some(&sig), Some(&ts), Some("Bearer tok-lock")).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(!r.duplicate(), "nothing was stored while the lock was held");
}
